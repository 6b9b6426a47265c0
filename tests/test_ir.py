"""Stage 2, the indexed Einstein IR: hash-consing, immutability, lowering, and its printout.

Nodes are unique (hash-consed): in `(x + y) + x * (x + y)` the sum `x + y` must be one node that
both uses point to, and the same text lowered twice must give the very same root object.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import einderiv
from einderiv import fn
from einderiv.ir.einstein import format_program
from einderiv.ir.nodes import Add, Const, Contract, Var, topological
from einderiv.lower.lower import lower
from einderiv.parse import parse

SHAPES = {
    "x": ("n",), "y": ("n",), "z": ("n",), "X": ("n", "d"), "w": ("d",), "A": ("n", "n"),
    "B": ("n", "p"), "W": ("m", "n"), "b": ("m",), "c": (), "T": ("k", "n", "n"),
}


def root_of(source: str, shapes=SHAPES):
    return lower(parse(source), shapes).root


def einstein(source: str, shapes=SHAPES) -> str:
    return einderiv.compile(source, shapes).einstein


# -- hash-consing ---------------------------------------------------------------------------------

def test_seed_001_shared_sum_is_one_node():
    root = root_of("(x + y) + x * (x + y)")
    nodes = topological(root)
    assert len({id(n) for n in nodes}) == len(nodes)  # each reachable node listed once

    x, y = Var("x", ("n",)), Var("y", ("n",))
    sums_of_x_and_y = [n for n in nodes
                       if isinstance(n, Add) and {id(t) for _, t in n.terms} == {id(x), id(y)}]
    assert len(sums_of_x_and_y) == 1
    shared = sums_of_x_and_y[0]

    # The outer sum uses it directly, and the product x * (x + y) uses the same object.
    assert isinstance(root, Add)
    assert any(t is shared for _, t in root.terms)
    products = [n for n in nodes if isinstance(n, Contract)]
    assert len(products) == 1
    assert any(op is shared for op, _ in products[0].operands)
    assert any(op is x for op, _ in products[0].operands)
    # x and y themselves are single nodes too
    assert [n for n in nodes if isinstance(n, Var)] in ([x, y], [y, x])


def test_same_text_lowered_twice_is_the_same_object():
    first = root_of("(x + y) + x * (x + y)")
    second = root_of("(x + y) + x * (x + y)")
    assert first is second
    assert root_of("sum(tanh(W @ x + b))") is root_of("sum(tanh(W @ x + b))")


def test_spelling_does_not_matter_structure_does():
    """Index names and surface syntax are not part of a node: equal structure is one node."""
    matvec = root_of("W @ x")
    assert root_of("einsum('ij,j->i', W, x)") is matvec
    assert root_of("einsum('ab,b->a', W, x)") is matvec
    assert root_of("((W) @ (x))") is matvec
    assert root_of("h = W @ x\nh") is matvec
    assert root_of("x @ y") is root_of("dot(x, y)") is root_of("sum(x * y)")
    assert root_of("A.T.T") is root_of("A")
    assert root_of("x + y") is not root_of("x - y")
    assert root_of("W @ x", {"W": ("m", "n"), "x": ("n",)}) is not root_of(
        "W @ x", {"W": ("m", "q"), "x": ("q",)})


def test_python_built_expressions_share_nodes_with_parsed_ones():
    x, y = einderiv.var("x", ("n",)), einderiv.var("y", ("n",))
    built = einderiv.compile((x + y) + x * (x + y)).lowered.root
    assert built is root_of("(x + y) + x * (x + y)")


def test_leaves_are_interned():
    assert Var("x", ("n",)) is Var("x", ["n"])
    assert Var("x", ("n",)) is not Var("x", ("m",))
    assert Const(2) is Const(2.0)
    assert Const(-0.0) is Const(0.0)


def test_nodes_are_immutable():
    root = root_of("W @ x + b")
    with pytest.raises(AttributeError):
        root.terms = ()
    with pytest.raises(AttributeError):
        root.shape = ()
    with pytest.raises(AttributeError):
        Var("x", ("n",)).name = "y"


def test_topological_order_children_first():
    root = root_of("a = tanh(W @ x + b)\nsum(a * a) + sum(a)")
    order = topological(root)
    position = {id(n): k for k, n in enumerate(order)}
    for n in order:
        for c in n.children():
            assert position[id(c)] < position[id(n)]
    assert order[-1] is root


def test_shapes_of_lowered_nodes():
    assert [str(d) for d in root_of("W @ x").shape] == ["m"]
    assert [str(d) for d in root_of("T @ A").shape] == ["k", "n", "n"]
    assert [str(d) for d in root_of("x[:, None] * w").shape] == ["n", "d"]
    assert root_of("sum(X)").shape == ()
    assert [str(d) for d in root_of("x[1:-1]").shape] == ["n-2"]


# -- lowering of deep and shared structures ------------------------------------------------------

def test_deep_python_built_chain_lowers_without_recursion():
    # 2,000 levels of three nodes: six times the depth a pass recursing once per node reaches
    # at the default recursion limit (test_errors builds 5,000 levels, through every stage).
    W, x = einderiv.var("W", ("h", "h")), einderiv.var("x", ("h",))
    h = x
    for _ in range(2000):
        h = fn.tanh(W @ h) + x
    start = time.perf_counter()
    f = einderiv.compile(h)
    text = f.einstein
    Wv, xv = np.eye(3) * 0.5, np.full(3, 0.1)
    got = f(W=Wv, x=xv)
    assert time.perf_counter() - start < 20
    expected = xv
    for _ in range(2000):
        expected = np.tanh(Wv @ expected) + xv
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert text.splitlines()[-1].startswith("out[i] = ")


def test_shared_python_dag_is_lowered_once():
    """`h = tanh(h) * h` 1000 times is a tree of 2**1000 paths but a DAG of 2000 nodes, twice
    as deep as the default recursion limit."""
    x = einderiv.var("x", ("n",))
    h = x
    for _ in range(1000):
        h = fn.tanh(h) * h
    start = time.perf_counter()
    f = einderiv.compile(h)
    nodes = topological(f.lowered.root)
    assert len(nodes) < 3 * 1000 + 10
    assert time.perf_counter() - start < 10
    xv = np.array([0.5, -0.25])
    expected = xv
    for _ in range(1000):
        expected = np.tanh(expected) * expected
    np.testing.assert_allclose(f(x=xv), expected, atol=1e-300)


def test_repeated_squaring_stays_small():
    """`a = a * a` repeated must not double a flattened product at every step."""
    source = "a = x\n" + "a = a * a\n" * 200 + "a"
    start = time.perf_counter()
    f = einderiv.compile(source, {"x": ("n",)})
    assert len(topological(f.lowered.root)) < 1000
    assert len(f.einstein) < 200_000
    assert time.perf_counter() - start < 5
    np.testing.assert_allclose(f(x=np.array([1.0, -1.0])), [1.0, 1.0])


# -- Einstein printout ---------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    # matrix products
    ("W @ x + b", "out[i] = W[i,j]*x[j] + b[i]"),
    ("A @ B", "out[i,j] = A[i,k]*B[k,j]"),
    ("x @ A", "out[i] = x[j]*A[j,i]"),
    ("x @ y", "out = x[i]*y[i]"),
    ("T @ A", "out[i,j,k] = T[i,j,l]*A[l,k]"),
    ("X.T", "out[i,j] = X[j,i]"),
    ("A @ A + A", "out[i,j] = A[i,k]*A[k,j] + A[i,j]"),
    # broadcasting
    ("X * w", "out[i,j] = X[i,j]*w[j]"),
    ("X + w", "out[i,j] = X[i,j] + w[j]"),
    ("x[:, None] * w", "out[i,j] = x[i]*w[j]"),
    ("outer(x, w)", "out[i,j] = x[i]*w[j]"),
    ("c * x + 1", "out[i] = c*x[i] + 1"),
    # sums: a repeated index is summed, an index that occurs once is summed with sum[...]
    ("sum(x * y)", "out = x[i]*y[i]"),
    ("sum(X)", "out = sum[i,j](X[i,j])"),
    ("sum(X, axis=0)", "out[i] = sum[j](X[j,i])"),
    ("sum(X, axis=1)", "out[i] = sum[j](X[i,j])"),
    ("sum(X @ w)", "out = sum[i](X[i,j]*w[j])"),
    ("tr(A)", "out = A[i,i]"),
    ("einsum('ij,jk->ik', A, B)", "out[i,j] = A[i,k]*B[k,j]"),
    # elementwise operators and functions, with Python precedence
    ("x - y", "out[i] = x[i] - y[i]"),
    ("-x", "out[i] = -x[i]"),
    ("x / y", "out[i] = x[i]/y[i]"),
    ("-x ** 2", "out[i] = -x[i]**2"),
    ("(-x) ** 2", "out[i] = (-x[i])**2"),
    ("(x - y) ** 2", "out[i] = (x[i] - y[i])**2"),
    ("x ** -1", "out[i] = x[i]**-1"),
    ("x - (y - z)", "out[i] = x[i] - (y[i] - z[i])"),
    ("x / (y * z)", "out[i] = x[i]/(y[i]*z[i])"),
    ("2 * x - 3 * y", "out[i] = 2*x[i] - 3*y[i]"),
    ("tanh(W @ x + b)", "out[i] = tanh(W[i,j]*x[j] + b[i])"),
    ("exp(-x)", "out[i] = exp(-x[i])"),
    ("maximum(x, 0)", "out[i] = maximum(x[i], 0)"),
    # deltas
    ("eye(n)", "out[i,j] = delta[i,j]"),
    ("diag(x)", "out[i,j] = x[i]*delta[i,j]"),
    # an input as the output
    ("x", "out[i] = x[i]"),
])
def test_einstein_printout(source, expected):
    assert einstein(source) == expected


def test_str_of_ir_is_einstein_notation():
    root = root_of("W @ x + b")
    assert str(root) == "out[i] = W[i,j]*x[j] + b[i]"
    assert format_program(root, output="y") == "y[i] = W[i,j]*x[j] + b[i]"
    assert repr(root).endswith("W[i,j]*x[j] + b[i]>")


def test_api_example_from_the_issue():
    f = einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)})
    assert f.einstein == "out[i] = W[i,j]*x[j] + b[i]"


def test_bindings_print_as_named_lines():
    assert einstein("h = W @ x\nsum(h * h)") == "h[i] = W[i,j]*x[j]\nout = h[i]*h[i]"
    # (tanh, not exp: exp(x) / sum(exp(x)) is rewritten to softmax(x), see rules/rewrites.rules)
    assert einstein("u = tanh(x)\nu / sum(u)") == "u[i] = tanh(x[i])\nout[i] = u[i]/sum[j](u[j])"


def test_last_binding_names_the_output():
    assert einstein("a = x + y\nb = a * a") == "a[i] = x[i] + y[i]\nb[i] = a[i]*a[i]"
    assert einstein("a = x + y\nb = a * a\nb") == "a[i] = x[i] + y[i]\nout[i] = a[i]*a[i]"


def test_shared_subexpressions_print_as_temporaries():
    assert einstein("(x + y) + x * (x + y)") == "t0[i] = x[i] + y[i]\nout[i] = t0[i] + x[i]*t0[i]"
    text = einstein("exp(A @ x) * (A @ x) + sum(x * y) * (x + y) / sum(x * y)")
    assert text.splitlines() == [
        "t0[i] = A[i,j]*x[j]",
        "t1 = x[i]*y[i]",
        "out[i] = exp(t0[i])*t0[i] + t1*(x[i] + y[i])/t1",
    ]


def test_temporaries_do_not_clash_with_user_names():
    text = einstein("t0 = x * y\nt0 + (x + y) * (x + y)")
    lines = text.splitlines()
    assert lines[0] == "t0[i] = x[i]*y[i]"
    assert lines[1] == "t1[i] = x[i] + y[i]"
    assert lines[2] == "out[i] = t0[i] + t1[i]*t1[i]"


def test_deep_expression_prints_in_bounded_lines():
    source = "x" + " + y * z" * 3000  # nested sums, each a new node
    start = time.perf_counter()
    text = einstein(source)
    assert time.perf_counter() - start < 10
    lines = text.splitlines()
    assert lines[-1].startswith("out[i] = ")
    assert max(line.count("(") for line in lines) < 100


def test_nonfinite_constants_print():
    assert einstein("1e999 * x") == "out[i] = inf*x[i]"
    x = einderiv.var("x", ("n",))
    assert "nan" in einderiv.compile(x * float("nan")).einstein
