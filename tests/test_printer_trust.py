"""The printers and the back-translation never say something other than what was derived (issue 10).

Each result is checked three ways, against numpy: the generated code, `evaluate_ir` (the IR
interpreter), and the `.formula` parsed back through `einderiv.compile` with the same shapes.
"""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference
from einderiv.generate.formula import format_formula
from einderiv.generate.latex import format_latex
from einderiv.generate.python import generate
from einderiv.ir.dims import Dim
from einderiv.ir.nodes import Map, Var
from einderiv.parse import ast
from einderiv.vectorize import VectorProgram
from einderiv.vectorize.share import MAX_PRINT_HEIGHT, cut_deep, share_repeats


def _flat(values) -> list:
    if isinstance(values, tuple):
        return [v for item in values for v in _flat(item)]
    return [values]


def formula_values(result, arrays: dict) -> list:
    """Each output of `result` computed by its `.formula` parsed back: the temporaries, then
    that output's line (all of it when there is one output)."""
    text = result.formula
    shapes = {name: tuple(d.offset if d.name is None else d.name for d in shape)
              for name, shape in result.lowered.declared.items()}
    labels = [name for name, _ in result.program.outputs]
    if len(labels) == 1:
        return [einderiv.compile(text, shapes)(**arrays)]
    lines = text.split("\n")
    values = []
    for label in labels:
        end = next(i for i, line in enumerate(lines) if line.startswith(f"{label} = "))
        values.append(einderiv.compile("\n".join(lines[:end + 1]), shapes)(**arrays))
    return values


def three_ways(result, arrays: dict) -> list:
    """The outputs by generated code, checked equal to `evaluate_ir` and to the parsed-back
    formula; the formula has no elision."""
    assert "..." not in result.formula
    generated = _flat(result(**arrays))
    for other in (_flat(result.evaluate_ir(**arrays)), formula_values(result, arrays)):
        assert len(other) == len(generated)
        for a, b in zip(generated, other):
            assert np.shape(a) == np.shape(b)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    return generated


# -- 2: every form of slice bound -------------------------------------------------------------

# (source, wrt, sizes of the inputs, the same function in numpy)
SLICES = [
    ("x: [n]; sum(x[n:] ** 2) + sum(x)", "x", {"x": (3,)},
     lambda x: np.sum(x[3:] ** 2) + np.sum(x)),
    ("x: [n]; sum(x[n:n] ** 2) + sum(x)", "x", {"x": (3,)},
     lambda x: np.sum(x[3:3] ** 2) + np.sum(x)),
    ("X: [n, m]; sum(X[n:, 1:] ** 2) + sum(X)", "X", {"X": (3, 4)},
     lambda X: np.sum(X[3:, 1:] ** 2) + np.sum(X)),
    ("X: [n, m]; sum(X[1:, m:] ** 2) + sum(X * X)", "X", {"X": (3, 4)},
     lambda X: np.sum(X[1:, 4:] ** 2) + np.sum(X * X)),
    ("x: [n]; sum(x[:0] ** 2) + sum(x)", "x", {"x": (3,)},
     lambda x: np.sum(x[:0] ** 2) + np.sum(x)),
    ("x: [n]; sum(x[0:0] ** 2) + sum(x)", "x", {"x": (3,)},
     lambda x: np.sum(x[0:0] ** 2) + np.sum(x)),
    ("x: [n]; sum(x[-2:] ** 2)", "x", {"x": (4,)}, lambda x: np.sum(x[-2:] ** 2)),
    ("x: [n]; sum(x[:-1] ** 3)", "x", {"x": (4,)}, lambda x: np.sum(x[:-1] ** 3)),
    ("x: [n]; sum(x[-1:] ** 2)", "x", {"x": (4,)}, lambda x: np.sum(x[-1:] ** 2)),
    ("x: [n]; x[-1] * sum(x[:-1])", "x", {"x": (4,)}, lambda x: x[-1] * np.sum(x[:-1])),
    ("x: [n]; y: [p]; sum(x[:p] ** 2) + sum(y)", "x", {"x": (5,), "y": (2,)},
     lambda x, y: np.sum(x[:2] ** 2) + np.sum(y)),
    ("x: [n]; sum(x[1:n] ** 2)", "x", {"x": (4,)}, lambda x: np.sum(x[1:] ** 2)),
    ("x: [n]; sum(x[1:-1] * x[2:n] * x[:n - 2])", "x", {"x": (5,)},
     lambda x: np.sum(x[1:-1] * x[2:] * x[:-2])),
    # Bounds on a padded axis, of length n + 2: n is 2 short of its end, n + 2 is its end.
    ("x: [n]; z = pad(x, (0, 2)); sum(z[n:] ** 2) + sum(z[n + 2:]) + sum(x)", "x",
     {"x": (3,)}, lambda x: np.sum(np.pad(x, (0, 2))[3:] ** 2) + np.sum(x)),
    ("x: [n]; z = pad(x * x, (1, 0)); sum(z[n:] ** 2) + sum(z[n + 1:] * 3)", "x",
     {"x": (3,)}, lambda x: np.sum(np.pad(x * x, (1, 0))[3:] ** 2)),
]


@pytest.mark.parametrize("source, wrt, sizes, reference", SLICES, ids=[s[0] for s in SLICES])
def test_slice_bounds_value_and_grad(source, wrt, sizes, reference):
    rng = np.random.default_rng(1)
    arrays = {name: rng.normal(size=size) for name, size in sizes.items()}
    f = einderiv.value_and_grad(source, wrt)
    value, grad = three_ways(f, arrays)
    np.testing.assert_allclose(value, reference(**arrays), rtol=1e-12)
    expected = finite_difference(reference, arrays, wrt)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)


def test_empty_tail_slice_is_empty():
    """The issue's example: `x[n:]` was printed `x[0:]`, the whole array."""
    f = einderiv.value_and_grad("x: [n]; sum(x[n:] ** 2) + sum(x)", "x")
    value, grad = f(x=np.ones(3))
    assert value == 3.0
    np.testing.assert_array_equal(grad, [1.0, 1.0, 1.0])
    assert "x[0:]" not in f.formula and "x[0:]" not in f.source
    assert "x[n:]" in f.formula


JACOBIAN_SLICES = [
    ("x: [n]; x[n:] * 2", {"x": (3,)}, lambda x: x[3:] * 2),
    ("x: [n]; x[:0] + 1", {"x": (3,)}, lambda x: x[:0] + 1),
    ("x: [n]; x[-2:] ** 2", {"x": (4,)}, lambda x: x[-2:] ** 2),
    ("x: [n]; x[:-1] * x[1:]", {"x": (4,)}, lambda x: x[:-1] * x[1:]),
    ("x: [n]; x[-1:] * x[:1]", {"x": (4,)}, lambda x: x[-1:] * x[:1]),
    ("X: [n, m]; X[n:, 1:] * 2", {"X": (3, 4)}, lambda X: X[3:, 1:] * 2),
    ("X: [n, m]; X[1:, :-1] ** 2", {"X": (3, 4)}, lambda X: X[1:, :-1] ** 2),
    ("x: [n]; y: [p]; x[:p] * y", {"x": (5,), "y": (2,)}, lambda x, y: x[:2] * y),
]


@pytest.mark.parametrize("source, sizes, reference", JACOBIAN_SLICES,
                         ids=[s[0] for s in JACOBIAN_SLICES])
def test_slice_bounds_jacobian(source, sizes, reference):
    rng = np.random.default_rng(2)
    arrays = {name: rng.normal(size=size) for name, size in sizes.items()}
    wrt = next(iter(sizes))
    value = three_ways(einderiv.compile(source), arrays)[0]
    np.testing.assert_allclose(value, reference(**arrays), rtol=1e-12)
    (jac,) = three_ways(einderiv.jacobian(source, wrt), arrays)
    np.testing.assert_allclose(jac, finite_difference(reference, arrays, wrt), rtol=1e-6,
                               atol=1e-8)


def test_named_start_that_is_no_dimension_is_a_clear_error():
    with pytest.raises(einderiv.ShapeError, match="cannot slice from p to n"):
        einderiv.value_and_grad("x: [n]; y: [p]; sum(x[p:] ** 2) + sum(y)", "x")


@pytest.mark.no_roundtrip  # the call fails on purpose
def test_negative_bound_on_too_short_an_axis_is_an_error():
    """`x[-2:]` relies on numpy counting from the end: an axis shorter than 2 must not slip
    through as numpy's clipped `x[0:]`."""
    f = einderiv.value_and_grad("x: [n]; sum(x[-2:] ** 2)", "x")
    with pytest.raises(einderiv.ShapeError):
        f(x=np.ones(1))
    with pytest.raises(einderiv.ShapeError):
        f.evaluate_ir(x=np.ones(1))


# Negative integer bounds next to named ones (breaker C1): `x[-2:n]` is `x[n-2:n]`, as in numpy.
# (form, the sizes n at which einderiv must give numpy's value; at the others it may refuse
# with a ShapeError where numpy would clip, never answer something else)
MIXED_BOUNDS = [
    ("x[-1:n]", range(1, 6)), ("x[-2:n]", range(2, 6)), ("x[-3:n - 1]", range(3, 6)),
    ("x[-2:n - 1]", range(2, 6)), ("x[n - 3:-1]", range(3, 6)), ("x[n - 2:-1]", range(2, 6)),
    ("x[1:-1]", range(2, 6)), ("x[-1:-3]", range(1, 6)), ("x[-2:n - 2]", range(2, 6)),
    ("x[-2:n + 3]", range(2, 6)),
    # A named bound past the end of its own axis stops at the end, as numpy clips it.
    ("x[:n + 1]", range(0, 6)), ("x[n + 1:]", range(0, 6)), ("x[2:][:n - 1]", range(2, 6)),
    ("x[2:][-1:n]", range(3, 6)),
]


def _numpy_slice(form: str, n: int):
    """The form as numpy reads it at size n (every `n` replaced by the number)."""
    return lambda x: eval(form.replace("n", str(n)), {"x": x})


@pytest.mark.no_roundtrip  # the refused sizes fail on purpose; the others are checked here
@pytest.mark.parametrize("form, sizes", MIXED_BOUNDS, ids=[m[0] for m in MIXED_BOUNDS])
def test_negative_bound_with_a_named_one(form, sizes):
    f = einderiv.value_and_grad(f"x: [n]; sum({form} ** 3) + sum(x)", "x")
    j = einderiv.jacobian(f"x: [n]; {form} ** 2", "x")
    rng = np.random.default_rng(7)
    for n in range(0, 6):
        x = rng.normal(size=n)
        window = _numpy_slice(form, n)
        if n not in sizes:
            for call in (f, f.evaluate_ir, j, j.evaluate_ir):
                with pytest.raises(einderiv.ShapeError):
                    call(x=x)
            continue
        value, grad = three_ways(f, {"x": x})
        np.testing.assert_allclose(value, np.sum(window(x) ** 3) + np.sum(x), rtol=1e-12)
        expected = finite_difference(lambda x: np.sum(window(x) ** 3) + np.sum(x), {"x": x}, "x")
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)
        (jac,) = three_ways(j, {"x": x})
        np.testing.assert_allclose(jac, finite_difference(lambda x: window(x) ** 2, {"x": x},
                                                          "x"), rtol=1e-6, atol=1e-8)


def test_negative_start_with_named_end_from_the_issue():
    """`x[-1:n]` raised 'dimension -1 is negative' at every size, and the formula of the
    gradient of `x[-2:n]` had a pad width of -2 that does not parse."""
    assert einderiv.compile("x: [n]; sum(x[-1:n])")(x=np.arange(1.0, 5.0)) == 4.0
    g = einderiv.grad("x: [n]; sum(x[-2:n] ** 2)", "x")
    assert g.formula == "2 * pad(x[-2:], ((n - 2, 0),))"
    np.testing.assert_array_equal(three_ways(g, {"x": np.arange(1.0, 5.0)})[0], [0, 0, 6, 8])


def test_named_stop_before_the_start_is_refused():
    """numpy counts `n - 3` from the end where it is negative (n = 2: `x[0:-1]`, not empty),
    so a named stop before the start is an error, not an empty slice."""
    for source in ("x: [n]; sum(x[-2:n - 3])", "x: [n]; sum(x[n - 1:n - 2])"):
        with pytest.raises(einderiv.ShapeError, match="stops before it starts"):
            einderiv.compile(source)


# -- A1: a compound dimension (`n - 1`) pasted into a larger expression -----------------------

# x: [n]; (expression, the same in numpy at size n)
COMPOUND_DIMENSIONS = [
    ("eye(n)[1:][1]", lambda x, n: np.eye(n)[1:][1]),
    ("eye(n - 1)[1]", lambda x, n: np.eye(n - 1)[1]),
    ("eye(n + 2)[-1]", lambda x, n: np.eye(n + 2)[-1]),
    ("eye(n)[2:n - 1][0] * x", lambda x, n: np.eye(n)[2:n - 1][0] * x),
    ("diag(x[1:])[1]", lambda x, n: np.diag(x[1:])[1]),
    ("diag(x[1:])[-2] * x[:-1]", lambda x, n: np.diag(x[1:])[-2] * x[:-1]),
    ("x[2:n - 1][0] * x", lambda x, n: x[2:n - 1][0] * x),
    ("stack(x[1:], x[:-1])[1][2] * x", lambda x, n: np.stack([x[1:], x[:-1]])[1][2] * x),
    ("outer(x[1:], x[:-2])[-1]", lambda x, n: np.outer(x[1:], x[:-2])[-1]),
    ("ones(n - 1) * x[1:]", lambda x, n: np.ones(n - 1) * x[1:]),
    ("zeros(n + 2) + pad(x * x, (1, 1))", lambda x, n: np.pad(x * x, (1, 1))),
    ("pad(x[:2] ** 2, (n - 3, 1)) * x", lambda x, n: np.pad(x[:2] ** 2, (n - 3, 1)) * x),
    ("size(n - 1) * x", lambda x, n: (n - 1) * x),
    ("x / size(n + 2)", lambda x, n: x / (n + 2)),
    ("-size(n - 1) * x", lambda x, n: -(n - 1) * x),
    ("x ** size(n - 3)", lambda x, n: x ** (n - 3)),
    ("eye(n - 1, n) @ (x * x)", lambda x, n: np.eye(n - 1, n) @ (x * x)),
    ("x[n - 3:n - 1] * x[1:3]", lambda x, n: x[n - 3:n - 1] * x[1:3]),
    ("mean(x[1:] ** 2) * x", lambda x, n: np.mean(x[1:] ** 2) * x),
]


@pytest.mark.parametrize("expression, reference", COMPOUND_DIMENSIONS,
                         ids=[c[0] for c in COMPOUND_DIMENSIONS])
def test_compound_dimensions(expression, reference):
    """`eye(n - 1)[k]` was generated as `arange(_dim_n - 1) == (k) % _dim_n - 1`."""
    source = f"x: [n]; {expression}"
    f, j = einderiv.compile(source), einderiv.jacobian(source, "x")
    rng = np.random.default_rng(8)
    for n in (5, 7):
        x = rng.normal(size=n)
        (value,) = three_ways(f, {"x": x})
        np.testing.assert_allclose(value, reference(x, n), rtol=1e-12)
        (jac,) = three_ways(j, {"x": x})
        np.testing.assert_allclose(jac, finite_difference(lambda x: reference(x, n), {"x": x},
                                                          "x"), rtol=1e-6, atol=1e-8)


def test_one_hot_rows_from_the_issue():
    x = np.arange(1.0, 6.0)
    g = einderiv.grad("x: [n]; sum(diag(x[1:])[1] * x[1:])", "x")
    np.testing.assert_array_equal(three_ways(g, {"x": x})[0], [0, 0, 6, 0, 0])
    g = einderiv.grad("x: [n]; sum(x[2:n-1][0] * x)", "x")
    (grad,) = three_ways(g, {"x": x})
    np.testing.assert_array_equal(grad, [3, 3, 18, 3, 3])
    np.testing.assert_array_equal(einderiv.compile(g.formula, {"x": ("n",)})(x=x), grad)


# -- C2: dimensions print as integers ---------------------------------------------------------

def test_large_dimensions_print_as_integers():
    g = einderiv.grad("sum(x)", "x", {"x": (10**15,)})
    assert g.formula == "ones(1000000000000000)"
    assert "1000000000000000}" in g.latex and "e+" not in g.latex and ".0" not in g.latex
    assert einderiv.compile(g.formula).formula == g.formula  # parses back as itself


def test_a_dimension_no_float_holds_exactly_is_refused(capsys):
    """`--shape x=10**23` printed `ones(1e+23)`, which does not parse back."""
    from einderiv.cli import main
    with pytest.raises(einderiv.ShapeError, match="too large"):
        einderiv.grad("sum(x)", "x", {"x": (10**23,)})
    with pytest.raises(einderiv.ShapeError, match="too large"):
        einderiv.compile("x: [10000000000000000]; sum(x)")
    assert main(["grad", "sum(x)", "--wrt", "x", "--shape",
                 "x=100000000000000000000000"]) == 2
    assert "too large" in capsys.readouterr().err
    # An index the parser cannot hold exactly (2**53 + 1 reads as 2**53) is refused too.
    with pytest.raises(einderiv.ParseError, match="integer"):
        einderiv.compile("x: [n]; x[9007199254740993]")


# -- 4: outputs and temporaries never take a user's name ---------------------------------------

def _lhs(text: str) -> list[str]:
    return [re.match(r"\s*([^\s\[=]+)", line)[1] for line in text.split("\n") if " = " in line]


def test_output_label_does_not_rebind_a_users_binding():
    """`dx` is the user's tanh(x * y); the gradient by x must not be printed `dx = ...`."""
    g = einderiv.grad("x: [n]; y: [n]; dx = tanh(x * y); sum(dx * dx * y)", ["x", "y"])
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 4))
    t = np.tanh(x * y)
    gx, gy = three_ways(g, {"x": x, "y": y})
    np.testing.assert_allclose(gx, 2 * t * (1 - t ** 2) * y * y, rtol=1e-12)
    np.testing.assert_allclose(gy, t * t + 2 * t * (1 - t ** 2) * x * y, rtol=1e-12)
    for text in (g.formula, g.einstein, g.einsum):
        names = _lhs(text)
        assert len(names) == len(set(names)), text  # every name bound once
        assert names.count("dx") <= 1
    assert [n for n, _ in g.program.outputs] != ["dx", "dy"]


def test_cli_output_lines_parse_back(capsys):
    from einderiv.cli import main
    assert main(["grad", "x: [n]; y: [n]; dx = tanh(x * y); sum(dx * dx * y)",
                 "--wrt", "x", "--wrt", "y"]) == 0
    text = capsys.readouterr().out.strip()
    lines = text.split("\n")
    x = np.array([0.3, -1.2, 0.7])
    y = np.array([1.1, 0.4, -0.6])
    t = np.tanh(x * y)
    dy_line = next(i for i, line in enumerate(lines) if line.startswith("dy = "))
    dy = einderiv.compile("\n".join(lines[:dy_line + 1]), {"x": ("n",), "y": ("n",)})
    np.testing.assert_allclose(dy(x=x, y=y), t * t + 2 * t * (1 - t ** 2) * x * y,
                               rtol=1e-12)


def test_binding_named_out():
    f = einderiv.value_and_grad("x: [n]; out = tanh(x); sum(out * out * x)", "x")
    x = np.array([0.5, -0.25, 1.5])
    t = np.tanh(x)
    value, grad = three_ways(f, {"x": x})
    np.testing.assert_allclose(value, np.sum(t * t * x), rtol=1e-12)
    np.testing.assert_allclose(grad, t * t + 2 * t * (1 - t ** 2) * x, rtol=1e-12)
    assert _lhs(f.formula).count("out") <= 1


def test_user_names_like_ours():
    """Variables, a binding and a dimension named like temporaries and generated names."""
    source = ("x: [t2]; t0: [t2]; _v0: [t2]; _dim_n: [t2]; _xp: [t2]; _c0: [t2]; "
              "t3 = exp(x) * t0; t1 = t3 * t3; "
              "sum(t1 * _v0 * _dim_n * _xp * _c0) + sum(exp(x) * exp(x)) * size(t2)")
    g = einderiv.grad(source, ["x", "t0", "_v0"])
    rng = np.random.default_rng(4)
    names = ["x", "t0", "_v0", "_dim_n", "_xp", "_c0"]
    arrays = dict(zip(names, rng.normal(size=(6, 3)) * 0.5))
    x, t0, v0, dn, xp, c0 = (arrays[n] for n in names)
    e = np.exp(x)
    rest = v0 * dn * xp * c0
    expected = [2 * (e * t0) ** 2 * rest + 2 * e * e * 3,
                2 * e * e * t0 * rest,
                (e * t0) ** 2 * dn * xp * c0]
    for got, want in zip(three_ways(g, arrays), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for text in (g.formula, g.einstein, g.einsum):
        bound = _lhs(text)
        assert len(bound) == len(set(bound))
        assert not set(bound) & {"x", "t0", "_v0", "_dim_n", "_xp", "_c0", "t2"}


def test_output_labels_of_a_hessian_with_prefix_sharing_names():
    """An output label that is a user's variable name (`dx`) is renamed, not the variable."""
    shapes = {"x": ("n",), "dx": ("n",)}
    g = einderiv.grad("sum(x * x * dx) + sum(dx ** 3)", ["x", "dx"], shapes)
    x, dx = np.array([0.5, 2.0]), np.array([1.5, -1.0])
    gx, gdx = three_ways(g, {"x": x, "dx": dx})
    np.testing.assert_allclose(gx, 2 * x * dx)
    np.testing.assert_allclose(gdx, x * x + 3 * dx ** 2)
    assert "dx" not in _lhs(g.formula)


def test_latex_names_do_not_fold_together():
    """`W1` and `W_1` both typeset as `W_{1}` by themselves; the second gives way."""
    g = einderiv.grad("sum(W1 * W_1 * exp(t_0) * exp(t_0))", ["W1", "W_1"],
                      {"W1": ("n",), "W_1": ("n",), "t_0": ("n",)})
    body = g.latex.split("\n")[1:-1]
    left = [row.split(" &= ")[0] for row in body]
    assert len(left) == len(set(left))
    assert "t_{0}" not in left  # the user's t_0 keeps that form; our t0 is another


# -- 5 and 11: structural CSE keys, no elision, no recursion ----------------------------------

def _chain(first: str, terms: int) -> ast.Expr:
    e = ast.Name(first)
    for k in range(terms):
        e = ast.BinOp("+", e, ast.Call("tanh", (ast.BinOp("*", ast.Number(k + 0.5),
                                                          ast.Name("x")),)))
    return e


def _program(temporaries, outputs, names) -> VectorProgram:
    variables = {n: Var(n, ("n",)) for n in names}
    return VectorProgram(temporaries, outputs, variables, {n: v.shape for n, v in
                                                           variables.items()})


def test_cse_keys_are_not_truncated():
    """dx = p + S and dy = q + S, S a sum of 420 terms: keyed by a printout cut at depth 400,
    both became the same temporary and dy silently equalled dx."""
    outputs = [("dx", _chain("p", 420)), ("dy", _chain("q", 420))]
    taken = {"p", "q", "x", "dx", "dy"}
    temps, outs = share_repeats([], outputs, taken)
    temps, outs = cut_deep(temps, outs, taken)
    program = _program(temps, outs, ["p", "q", "x"])
    text = format_formula(program)
    assert "..." not in text
    rng = np.random.default_rng(5)
    arrays = dict(zip("pqx", rng.normal(size=(3, 4))))
    shared = sum(np.tanh((k + 0.5) * arrays["x"]) for k in range(420))
    lines = text.split("\n")
    for label, first in (("dx", "p"), ("dy", "q")):
        end = next(i for i, line in enumerate(lines) if line.startswith(f"{label} = "))
        f = einderiv.compile("\n".join(lines[:end + 1]), {n: ("n",) for n in "pqx"})
        np.testing.assert_allclose(f(**arrays), arrays[first] + shared, rtol=1e-12)
    module = generate(program, "f")
    scope: dict = {}
    exec(module.source, scope)
    dx, dy = scope["f"](*[arrays[n] for n in module.arguments])
    np.testing.assert_allclose(dx, arrays["p"] + shared, rtol=1e-12)
    np.testing.assert_allclose(dy, arrays["q"] + shared, rtol=1e-12)


@contextmanager
def _little_stack(frames: int = 60):
    """Fail with RecursionError if the code recurses more than `frames` deeper than here."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def test_sharing_and_cutting_do_not_recurse():
    outputs = [("dx", _chain("p", 3000)), ("dy", _chain("q", 3000))]
    taken = {"p", "q", "x", "dx", "dy"}
    with _little_stack():
        temps, outs = share_repeats([], outputs, taken)
        temps, outs = cut_deep(temps, outs, taken)
    assert len(outs) == 2
    heights = []
    for _, expr in [*temps, *outs]:
        stack, deepest = [(expr, 1)], 0
        while stack:
            e, h = stack.pop()
            deepest = max(deepest, h)
            stack.extend((c, h + 1) for c in e.children())
        heights.append(deepest)
    assert max(heights) <= MAX_PRINT_HEIGHT + 2


def test_deep_gradient_prints_whole():
    """A sum of 500 terms: the formula printed `... + ... * (...)` and the CLI exited 0."""
    source = "x: [n]; " + " + ".join(f"sum(tanh(x * {k + 0.5}))" for k in range(500))
    g = einderiv.grad(source, "x")
    x = np.array([0.01, -0.02, 0.005])
    expected = sum((k + 0.5) * (1 - np.tanh(x * (k + 0.5)) ** 2) for k in range(500))
    (grad,) = three_ways(g, {"x": x})
    np.testing.assert_allclose(grad, expected, rtol=1e-10)
    assert "..." not in g.latex and "..." not in g.source and "..." not in g.einsum
    assert "..." not in g.einstein


def test_long_shared_sum_in_two_outputs():
    """The shape of issue 10's example through the API: two long gradients that share S."""
    source = "x: [n]; y: [n]; sum(x * y) + " + " + ".join(
        f"sum(tanh({k + 0.5} * (x + y)))" for k in range(200))
    g = einderiv.grad(source, ["x", "y"])
    x = np.array([0.001, -0.002, 0.0005])
    y = np.array([0.002, 0.001, -0.003])
    shared = sum((k + 0.5) * (1 - np.tanh((k + 0.5) * (x + y)) ** 2) for k in range(200))
    gx, gy = three_ways(g, {"x": x, "y": y})
    np.testing.assert_allclose(gx - shared, y, atol=1e-8)
    np.testing.assert_allclose(gy - shared, x, atol=1e-8)


# -- 7 and friends: names in the generated module -----------------------------------------------

def test_names_python_folds_together_stay_apart():
    """Python reads identifiers NFKC-normalized: a user's bold `𝐭0` *is* `t0` in Python."""
    bold = "\U0001d42d0"  # MATHEMATICAL BOLD SMALL T, then 0
    v = Var(bold, (Dim("n"),))
    program = VectorProgram([("t0", ast.Call("tanh", (ast.Name(bold),)))],
                            [("out", ast.BinOp("*", ast.Name("t0"), ast.Name(bold)))],
                            {bold: v}, {bold: v.shape})
    module = generate(program, "f")
    assert bold not in module.source
    scope: dict = {}
    exec(module.source, scope)
    a = np.array([0.5, -2.0])
    np.testing.assert_allclose(scope["f"](a), np.tanh(a) * a)


def test_dimension_names_python_folds_together_stay_apart():
    bold_n = "\U0001d427"  # MATHEMATICAL BOLD SMALL N
    x, y = Var("x", (Dim(bold_n),)), Var("y", (Dim("n"),))
    program = VectorProgram(
        [], [("a", ast.Call("ones", (ast.Name(bold_n),))), ("b", ast.Call("ones", (ast.Name("n"),)))],
        {}, {"x": x.shape, "y": y.shape})
    module = generate(program, "f")
    scope: dict = {}
    exec(module.source, scope)
    a, b = scope["f"](*[np.zeros(2) if name == "x" else np.zeros(5) for name in module.arguments])
    assert a.shape == (2,) and b.shape == (5,)


def test_variables_named_self_and_float():
    shapes = {"self": ("n",), "float": ("n",)}
    g = einderiv.grad("sum(self * float) + sum(float ** 2) / size(n)", ["self", "float"], shapes)
    s, f = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    gs, gf = three_ways(g, {"self": s, "float": f})
    np.testing.assert_allclose(gs, f)
    np.testing.assert_allclose(gf, s + f)
    c = einderiv.compile("sum(float) * 1e999 + sum(self)", shapes)
    assert c(self=s, float=np.ones(2)) == np.inf


def test_rank_above_eighteen():
    dims = tuple("abcdefghij")
    j = einderiv.jacobian("v * v", "v", {"v": dims})
    assert "def jacobian" in j.source
    v = np.random.default_rng(6).normal(size=(2, 1, 2, 1, 1, 2, 1, 1, 1, 2))
    (jac,) = three_ways(j, {"v": v})
    assert jac.shape == v.shape * 2
    np.testing.assert_allclose(jac.reshape(v.size, v.size), np.diag(2 * v.ravel()))
