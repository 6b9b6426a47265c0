"""Algebraic tidying (issue 13.2): derivatives written the way a person writes them.

Like terms are collected as the IR is built (einderiv/ir/build.py: `add` collects one product
written differently, constants fold, division by a number is a scale), and the vectorized
program's syntax tree is tidied (einderiv/vectorize/tidy.py: signs, reciprocals, powers, the
user's `mean`, temporaries numbered in order). Each golden formula is exact, parses back to the
values of the result (tests/conftest.py checks that for every result too) and matches central
finite differences of the forward expression.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import einderiv
from einderiv import fn
from einderiv.check import finite_difference, random_inputs, relative_error
from einderiv.parse import parse
from einderiv.parse.unparse import unparse
from einderiv.vectorize.tidy import renumber, tidy

SIZES = {"n": 5, "d": 3, "m": 4, "b": 2}

GOLDEN = [
    # The three terms X[j,k] X[k,i], X[l,i] X[j,l] (factors in another order) and (X @ X).T
    # are one product: was `t0 = X @ X` and `t0.T + t0.T + t0.T`.
    ("trace-cube", "grad", "tr(X @ X @ X)", "X", {"X": ("n", "n")}, "3 * (X @ X).T"),
    # Was `-log(p) + -1`.
    ("entropy", "grad", "-sum(p * log(p))", "p", {"p": ("n",)}, "-log(p) - 1"),
    # Was `-1 + log(x) + 1`: a constant broadcast over a vector folds as a scalar one does.
    ("broadcast-constants", "grad", "sum(x * log(x) - x)", "x", {"x": ("n",)}, "log(x)"),
    # Was `sigmoid(x) - -(x / t1) / t1 * t0`.
    ("double-minus", "grad", "sum(x / (1 + exp(-x)))", "x", {"x": ("n",)},
     "t0 = exp(-x)\nt1 = 1 + t0\nsigmoid(x) + x / t1 / t1 * t0"),
    # Was `-(1 / x) / x`; `a / b / b` stays (a / b ** 2 would overflow with b ** 2).
    ("minus-reciprocal", "grad", "sum(1 / x)", "x", {"x": ("n",)}, "-1 / x / x"),
    # Was `-(-(1 / x) / x)`.
    ("minus-minus-reciprocal", "grad", "sum(-(1 / x))", "x", {"x": ("n",)}, "1 / x / x"),
    # Was `0.5 * (1 / sqrt(x))`.
    ("times-reciprocal", "grad", "sum(sqrt(x))", "x", {"x": ("n",)}, "0.5 / sqrt(x)"),
    # Was `2 * (lam / 2 * w)`: division by a number is a scale, folded with the 2.
    ("constants-fold", "grad", "lam / 2 * sum(w * w)", "w", {"w": ("n",), "lam": ()}, "lam * w"),
    ("constants-fold-dot", "grad", "lam / 2 * (w @ w)", "w", {"w": ("n",), "lam": ()}, "lam * w"),
    # Were `y * y` and `2 * (x * y * y)`. A factor is joined to its power only where it
    # multiplies itself first: `y * x * y` keeps its order (tidy.py: joined as `y ** 2 * x`, two
    # small factors meet before the large one between them; at extremes that under- or
    # overflows where the derivation's order does not).
    ("square", "grad", "sum(y * x * y)", "x", {"x": ("n",), "y": ("n",)}, "y ** 2"),
    ("square-in-product", "grad", "sum(x * y * x * y)", "x", {"x": ("n",), "y": ("n",)},
     "2 * y * x * y"),
    # Was `-4 * (x * t0 * x)`-like: a power of a factor under a minus, written where it is
    # a square (`-x * x`), the order of a product kept.
    ("gaussian-hessian", "hessian", "sum(exp(-x * x))", "x", {"x": ("n",)},
     "t0 = exp(-x ** 2)\ndiag(4 * x * t0 * x - 2 * t0)"),
    # The user's mean, not `sum(X, axis=1) / size(d)`.
    ("mean-kept", "grad", "sum(y * mean(X, axis=1))", "y", {"X": ("n", "d"), "y": ("n",)},
     "mean(X, axis=1)"),
    # Was `sigmoid(-x) * diag(sigmoid(x))`: the diagonal holds the whole vector.
    ("sigmoid-jacobian", "jacobian", "sigmoid(x)", "x", {"x": ("n",)},
     "diag(dsigmoid(x))"),
    ("tanh-jacobian", "jacobian", "tanh(x)", "x", {"x": ("n",)}, "diag(sech2(x))"),
    ("diag-of-two-vectors", "jacobian", "a * exp(-x)", "x", {"a": ("n",), "x": ("n",)},
     "-diag(a * exp(-x))"),
]


@pytest.fixture(scope="module")
def results():
    made = {}

    def get(case):
        if case[0] not in made:
            _, kind, expr, wrt, shapes, _ = case
            made[case[0]] = getattr(einderiv, kind)(expr, wrt, shapes)
        return made[case[0]]
    return get


@pytest.mark.parametrize("case", GOLDEN, ids=[c[0] for c in GOLDEN])
def test_golden_formula(case, results):
    assert results(case).formula == case[5]


@pytest.mark.parametrize("case", GOLDEN, ids=[c[0] for c in GOLDEN])
def test_golden_formula_values(case, results):
    """The formula, parsed back, gives the derivative: central finite differences of the
    forward expression (of its gradient, for a Hessian)."""
    _, kind, expr, wrt, shapes, _ = case
    arrays = random_inputs(results(case).lowered.declared, np.random.default_rng(3), SIZES)
    again = einderiv.compile(results(case).formula, shapes)(**arrays)
    forward = einderiv.grad(expr, wrt, shapes) if kind == "hessian" else \
        einderiv.compile(expr, shapes)
    err = relative_error(again, finite_difference(forward, arrays, wrt))
    assert err < 1e-6, f"relative error {err:.2g} of:\n{results(case).formula}"


def test_minus_signs_cancel_through_a_matrix_product():
    """Was `-(X.T @ (-(X @ tangent) * ...))`: the logistic loss's Hessian-vector product."""
    shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    loss = "sum(log(1 + exp(-y * (X @ w))))"
    hv = einderiv.hvp(loss, "w", shapes)
    assert hv.formula == "X.T @ (X @ tangent * y * dsigmoid(-y * (X @ w)) * y)"
    arrays = random_inputs(dict(shapes), np.random.default_rng(4), SIZES)
    v = np.random.default_rng(5).normal(size=SIZES["d"])
    H = einderiv.hessian(loss, "w", shapes)(**arrays)
    np.testing.assert_allclose(hv(**arrays, tangent=v), H @ v, rtol=1e-12)


def test_mean_and_norm_print_as_written():
    shapes = {"x": ("n",), "X": ("n", "d")}
    assert einderiv.compile("mean(x)", shapes).formula == "mean(x)"
    assert einderiv.compile("mean(X, axis=0)", shapes).formula == "mean(X, axis=0)"
    assert einderiv.compile("mean(X)", shapes).formula == "mean(X)"
    # A number of entries: the sum is scaled by 1 / 3, not divided by a size.
    assert einderiv.compile("mean(x)", {"x": (3,)}).formula == "mean(x)"
    assert einderiv.compile("mean(x[1:])", shapes).formula == "mean(x[1:])"
    # Divided by another size than the summed axis has: not a mean.
    assert einderiv.compile("sum(x[1:]) / size(n)", shapes).formula == "sum(x[1:]) / size(n)"
    # norm is a primitive: nothing expands it.
    assert einderiv.compile("norm(X, axis=1)", shapes).formula == "norm(X, axis=1)"


def test_division_by_a_number_prints_as_written():
    """`x / 3` is the scale 0.3333333333333333 in the IR; it prints back as `x / 3`."""
    shapes = {"x": ("n",)}
    assert einderiv.compile("x / 3", shapes).formula == "x / 3"
    assert einderiv.compile("-x / 3", shapes).formula == "-x / 3"


def test_temporaries_are_numbered_in_order():
    """The gradient of an unrolled RNN: sharing adds temporaries after the others were named
    (was t19, t25 before t10, ...)."""
    W, x = einderiv.var("W", ("h", "h")), einderiv.var("x", ("h",))
    h = x
    for _ in range(8):
        h = fn.tanh(W @ h)
    formula = einderiv.grad(fn.sum(h), "W").formula
    names = re.findall(r"^(t\d+) = ", formula, re.M)
    assert names == [f"t{k}" for k in range(len(names))] and len(names) > 20, formula


def test_renumbering_keeps_the_users_names():
    """Ours are renamed in order of definition, at once (t3 -> t1 while t1 -> t2); the user's
    names (an input t0, a bound h) stay."""
    lines = [(name, parse(text).statements[0])
             for name, text in [("t3", "x + t0"), ("h", "t3 * t3"), ("t1", "h + t3")]]
    outs = [("out", parse("t1 - t3").statements[0])]
    temps, outs = renumber(lines, outs, reserved={"x", "t0", "h", "out"})
    assert [(n, unparse(e)) for n, e in temps] == [
        ("t1", "x + t0"), ("h", "t1 * t1"), ("t2", "h + t1")]
    assert unparse(outs[0][1]) == "t2 - t1"


@pytest.mark.parametrize("text, tidied", [
    ("a + -b", "a - b"),
    ("a - -b", "a + b"),
    ("a + -1", "a - 1"),
    ("-a + b", "b - a"),
    ("-(-a)", "a"),
    ("-(a * b)", "-a * b"),
    ("-(1 / x)", "-1 / x"),
    ("-(-(1 / x) / x)", "1 / x / x"),
    ("-(A @ -u)", "A @ u"),
    ("-(A @ (-u * v))", "A @ (u * v)"),
    ("-((-B) @ u)", "B @ u"),
    ("v - A @ -u", "v + A @ u"),
    ("A @ -u + v", "v - A @ u"),
    ("v + A @ (-u / w)", "v - A @ (u / w)"),
    ("0.5 * (1 / sqrt(x))", "0.5 / sqrt(x)"),
    ("x * (1 / y)", "x / y"),
    ("2 * (y * x)", "2 * y * x"),
    ("2 * -x", "-2 * x"),
    ("2 * (-1 / x)", "-2 / x"),
    ("0.3333333333333333 * x", "x / 3"),
    ("-0.3333333333333333 * x", "-x / 3"),
    ("y * y", "y ** 2"),
    ("y * y * x", "y ** 2 * x"),
    ("y ** 2 * y * x", "y ** 3 * x"),
    ("-y * y", "-y ** 2"),
    ("2 * y * y", "2 * y ** 2"),
    ("-0.5 * y * y * x", "-0.5 * y ** 2 * x"),
    ("t0[:, None] * t0[:, None] * X", "t0[:, None] ** 2 * X"),
    # Left alone: a factor repeated across others (joined, the multiplications would come in
    # another order: see tidy.py), a dot product, different factors, powers that are not
    # whole, a / b / b.
    ("y * x * y", "y * x * y"),
    ("2 * y * x * y", "2 * y * x * y"),
    ("y ** 2 * x * y", "y ** 2 * x * y"),
    ("-y * x * y", "-y * x * y"),
    ("x * y / z * y", "x * y / z * y"),
    ("x @ x", "x @ x"),
    ("x * y", "x * y"),
    ("x ** 0.5 * x ** 0.5", "x ** 0.5 * x ** 0.5"),
    ("a / b / b", "a / b / b"),
    ("-(X.T @ y)", "-(X.T @ y)"),
    ("A @ -u", "A @ -u"),  # (the minus stays on the smaller operand)
    ("x * (A @ -u)", "x * (A @ -u)"),
    ("0.5 * x", "0.5 * x"),
])
def test_rules(text, tidied):
    _, ((_, expr),) = tidy([], [("out", parse(text).statements[0])])
    assert unparse(expr) == tidied


def test_long_sums_and_products_without_recursion():
    """Linear and iterative: a sum of 20,000 terms and a product of 3,000 factors (left-deep
    chains, as the translation writes them) at the default recursion limit."""
    assert sys.getrecursionlimit() <= 1000
    from einderiv.parse import ast
    total = ast.Name("x0")
    for k in range(1, 20000):
        total = ast.BinOp("+", total, ast.UnaryOp("-", ast.Name(f"x{k}")))
    product = ast.Name("y")
    for k in range(3000):
        product = ast.BinOp("*", product, ast.Name("y" if k % 2 else f"z{k}"))
    _, ((_, s), (_, p)) = tidy([], [("s", total), ("p", product)])
    assert isinstance(s, ast.BinOp) and s.op == "-" and s.right.id == "x19999"
    assert isinstance(p, ast.BinOp) and p.op == "*"


# -- a broadcast of -1 (helper-76's note: it printed `-1 * ones(n)`) ------------------------

@pytest.mark.parametrize("expr, wrt, formula", [("-sum(x)", "x", "-ones(n)"),
                                                ("sum(-x)", "x", "-ones(n)"),
                                                ("-sum(X)", "X", "-ones(n, m)")])
def test_the_gradient_of_a_negated_sum_is_minus_ones(expr, wrt, formula):
    g = einderiv.grad(expr, wrt, {"x": ("n",), "X": ("n", "m")})
    assert g.formula == formula
    assert "broadcast_copy(_xp.asarray(-1.0" in g.source  # one array of -1, not ones negated
    arrays = {"x": np.ones(3), "X": np.ones((3, 2))}
    np.testing.assert_array_equal(g(**arrays), -np.ones_like(arrays[wrt]))
