"""Kinks written without their function, rewritten to it (rules/rewrites.rules).

- `sqrt(u ** 2)`, `(u ** 2) ** 0.5` (and with `u * u` or `square(u)`) are `abs(u)`: their
  derivative written out, u / sqrt(u ** 2), is 0 / 0 at 0, where abs's documented one is
  sign(0) = 0; and u ** 2 overflows past 1.3e154 where |u| does not.
- `sqrt(a ** 2 + b ** 2)` and its spellings are `hypot(a, b)`, with its zero subgradient at 0
  and finite values and derivatives where the squares overflow; `sum(x ** 2) ** 0.5` and its
  spellings are `norm(x)`, as `sqrt(sum(x ** 2))` already was.
- `maximum(u, -u)` is `abs(u)`, `minimum(u, -u)` is `-abs(u)`, `relu(u) + relu(-u)` is
  `abs(u)` and `relu(u) - relu(-u)` is `u`: their squares (and the sum of the squares of the
  relus) are `u ** 2`, whose Hessian is 2 at 0 too, where the kinks' conventions gave 0; and
  `relu(u) - relu(-u)` has the derivative 1 at 0, not relu's 0 + 0.
- `norm(x) ** 0.5` and `hypot(a, b) ** 0.5` keep a nan gradient at 0, and `norm(x) ** 1.5` a
  nan Hessian, as JAX and PyTorch: the true derivatives are infinite there (documented,
  docs/language.md, Derivatives at kinks).

Every value is checked on the generated code, the IR interpreter, and the printed formula
compiled back; references are JAX (float64), numpy by hand, the mathematics, or mpmath.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import einderiv
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.verify import check_rewrite

SHAPES = {"x": ("n",), "y": ("n",), "w": ("n",), "X": ("n", "m")}


def _shapes(expr: str) -> dict:
    names = set(re.findall(r"[A-Za-z_]\w*", expr))
    return {k: v for k, v in SHAPES.items() if k in names}


def _quiet(f, *args, **kwargs):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


def _three(result, **arrays):
    """The values of the generated code, the IR interpreter and the printed formula compiled
    back, as float64 arrays."""
    arrays = {k: v for k, v in arrays.items() if k in result.inputs}
    back = einderiv.compile(result.formula, {k: SHAPES[k] for k in result.inputs})
    return {"generated code": np.asarray(_quiet(result, **arrays), np.float64),
            "IR interpreter": np.asarray(_quiet(result.evaluate_ir, **arrays), np.float64),
            "formula compiled back": np.asarray(_quiet(back, **arrays), np.float64)}


def _assert_all(result, want, rtol=1e-13, atol=1e-15, **arrays):
    for where, got in _three(result, **arrays).items():
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                   err_msg=f"{where}: {result.formula}")


Z3 = np.zeros(3)
X3 = np.array([0.5, -1.25, 2.0])
Y3 = np.array([-0.75, 0.0, 3.0])
MIXED = np.array([0.0, -1.25, 2.0])  # a kink entry and ordinary ones together


# -- the formula each spelling becomes ---------------------------------------------------------

ABS_FORMS = ["sqrt(x ** 2)", "sqrt(x * x)", "sqrt(square(x))", "(x ** 2) ** 0.5",
             "(x * x) ** 0.5", "square(x) ** 0.5", "sqrt(abs(x) ** 2)", "maximum(x, -x)",
             "relu(x) + relu(-x)"]
HYPOT_FORMS = ["sqrt(x ** 2 + y ** 2)", "sqrt(x * x + y * y)", "sqrt(square(x) + square(y))",
               "(x ** 2 + y ** 2) ** 0.5", "(x * x + y * y) ** 0.5",
               "(square(x) + square(y)) ** 0.5"]
NORM_FORMS = ["sqrt(sum(x ** 2))", "sqrt(sum(x * x))", "sqrt(sum(square(x)))",
              "sum(x ** 2) ** 0.5", "sum(x * x) ** 0.5", "sum(square(x)) ** 0.5",
              "sqrt(x @ x)", "(x @ x) ** 0.5", "sqrt(dot(x, x))"]
SQUARE_FORMS = {"maximum(x, -x) ** 2": "x ** 2", "minimum(x, -x) ** 2": "x ** 2",
                "square(maximum(x, -x))": "square(x)", "square(minimum(x, -x))": "square(x)",
                "minimum(x, -x) * minimum(x, -x)": "x ** 2",
                "maximum(x, -x) * maximum(x, -x)": "x ** 2",
                "relu(x) ** 2 + relu(-x) ** 2": "x ** 2",
                "square(relu(x)) + square(relu(-x))": "square(x)",
                "relu(x) * relu(x) + relu(-x) * relu(-x)": "x ** 2",
                "(relu(x) + relu(-x)) ** 2": "x ** 2", "sqrt(x ** 2) ** 2": "x ** 2"}


@pytest.mark.parametrize("expr,formula", [
    *[(f"sum({e})", "sum(abs(x))") for e in ABS_FORMS],
    ("sum(maximum(-x, x))", "sum(abs(-x))"),  # maximum(u, -u) with u = -x
    ("sum(minimum(x, -x))", "-sum(abs(x))"),
    ("sum(relu(x) - relu(-x))", "sum(x)"),
    *[(f"sum({e})", "sum(hypot(x, y))") for e in HYPOT_FORMS],
    ("sum(sqrt(y ** 2 + x ** 2))", "sum(hypot(y, x))"),
    *[(e, "norm(x)") for e in NORM_FORMS],
    ("sum(X ** 2, axis=1) ** 0.5", "norm(X, axis=1)"),
    *[(f"sum({e})", f"sum({f})") for e, f in SQUARE_FORMS.items()],
])
def test_each_spelling_becomes_its_function(expr, formula):
    assert einderiv.compile(expr, _shapes(expr)).formula == formula


@pytest.mark.parametrize("expr", [
    "sum(sqrt(x ** 2 + y ** 2 + w ** 2))",  # three squares: no hypot
    "sum(sqrt(x ** 2 + 1))",                 # a number is no square
    "sum(sqrt(x ** 2 - y ** 2))",
    "sum(sqrt(x ** 2 + y))",
    "sum((x ** 2) ** 1.5)",
    "sum(sqrt(x ** 3))",
    "sum(maximum(x, -y))",                   # not the same variable
    "sum(maximum(x, -0.5))",
    "sum(minimum(x, y))",
    "sum(relu(x) + relu(-y))",
    "sum(relu(x) - relu(y))",
    "sum(relu(x) ** 2 + relu(-y) ** 2)",
    "sum(relu(x) ** 2 + relu(-x) ** 3)",
    "sqrt(sum(x ** 2 + y ** 2))",
    "sqrt(sum(x ** 3))",
])
def test_no_rewrite_where_it_is_not_the_identity(expr):
    """What is not one of the identities is left as written (so are its values)."""
    f = einderiv.compile(expr, _shapes(expr))
    for name in ("abs", "hypot", "norm"):
        assert name not in f.formula or name in expr, f.formula


def test_the_new_rewrites_pass_their_check():
    """Each rewrite of these kinks passes `einderiv rules check` (both sides agree at random
    points of every range, the replacement is finite where the pattern is and no less
    precise, and the pattern, lowered, becomes the replacement)."""
    book = default_rulebook()
    mine = [r for r in book.rewrites.values()
            if r.replacement in ("abs(u)", "-abs(u)", "hypot(a, b)", "norm(x, axis)")
            or "relu(-u)" in r.pattern or "-abs(u)" in r.pattern]
    assert len(mine) >= 25
    for rule in mine:
        check = check_rewrite(rule, book)
        assert check.ok, (rule.origin, rule.pattern, check.message)


# -- abs(x) written out ------------------------------------------------------------------------

@pytest.mark.parametrize("form", ABS_FORMS)
def test_abs_forms_gradient_at_zero_and_beside(jax, form):
    """sign(x): 0 at 0 (abs's documented derivative; JAX and PyTorch give nan for
    sqrt(x ** 2) there), and JAX's gradient of the form as written beside 0."""
    jnp = jax.numpy
    expr = f"sum({form})"
    g = einderiv.grad(expr, "x", _shapes(expr))
    _assert_all(g, np.zeros(3), x=Z3)
    _assert_all(g, [0.0, -1.0, 1.0], x=MIXED)
    ref = lambda x: jnp.sum(jnp.sqrt(x ** 2))  # noqa: E731 - the same function away from 0
    _assert_all(g, np.asarray(jax.grad(ref)(X3)), x=X3)
    H = einderiv.hessian(expr, "x", _shapes(expr))
    _assert_all(H, np.zeros((3, 3)), x=MIXED)


@pytest.mark.parametrize("form", ABS_FORMS[:6])
def test_abs_forms_do_not_overflow(form):
    """|x| at 1e200 and 1e-200, where x ** 2 is inf and 0."""
    x = np.array([1e200, -1e200, 1e-200, -5e-324, 1.7e308])
    f = einderiv.compile(f"{form}", _shapes(form))
    _assert_all(f, np.abs(x), rtol=0, atol=0, x=x)
    g = einderiv.grad(f"sum({form})", "x", _shapes(form))
    _assert_all(g, np.sign(x), rtol=0, atol=0, x=x)


def test_minimum_of_x_and_minus_x_is_minus_abs(jax):
    jnp = jax.numpy
    g = einderiv.grad("sum(minimum(x, -x))", "x", _shapes("x"))
    _assert_all(g, [0.0, 1.0, -1.0], x=MIXED)
    _assert_all(g, np.asarray(jax.grad(lambda x: jnp.sum(jnp.minimum(x, -x)))(X3)), x=X3)


@pytest.mark.parametrize("expr", ["sum(relu(x) - relu(-x))", "sum(-relu(-x) + relu(x))"])
def test_relu_difference_is_x_at_zero_too(jax, expr):
    """relu(x) - relu(-x) is x: the derivative 1 everywhere (JAX and PyTorch give 0 at 0, by
    relu's convention twice)."""
    jnp = jax.numpy
    g = einderiv.grad(expr, "x", _shapes(expr))
    _assert_all(g, np.ones(3), x=MIXED)
    _assert_all(g, np.ones(3), x=Z3)
    ref = lambda x: jnp.sum(jax.nn.relu(x) - jax.nn.relu(-x))  # noqa: E731
    _assert_all(g, np.asarray(jax.grad(ref)(X3)), x=X3)
    f = einderiv.compile(expr, _shapes(expr))
    x = np.array([1e308, -1e308, 0.0])
    _assert_all(f, 0.0, rtol=0, atol=0, x=x)


# -- squares of those kinks --------------------------------------------------------------------

@pytest.mark.parametrize("form", list(SQUARE_FORMS))
def test_squares_hessian_two_at_zero_and_jax_beside(jax, form):
    """x ** 2: the Hessian 2 I at 0 too (the kinks' conventions gave 0, as JAX and PyTorch do
    for maximum(x, -x) ** 2 and relu(x) ** 2 + relu(-x) ** 2), and JAX's gradient of the form
    as written beside 0."""
    jnp = jax.numpy
    expr = f"sum({form})"
    H = einderiv.hessian(expr, "x", _shapes(expr))
    for x in (Z3, MIXED, X3):
        _assert_all(H, 2 * np.eye(3), x=x)
    g = einderiv.grad(expr, "x", _shapes(expr))
    _assert_all(g, np.zeros(3), x=Z3)
    relu = jax.nn.relu
    refs = {"maximum(x, -x)": lambda x: jnp.maximum(x, -x) ** 2,
            "minimum(x, -x)": lambda x: jnp.minimum(x, -x) ** 2,
            "relu(x)": lambda x: relu(x) ** 2 + relu(-x) ** 2,
            "sqrt(x ** 2)": lambda x: jnp.sqrt(x ** 2) ** 2}
    (ref,) = [r for k, r in refs.items() if k in form]
    _assert_all(g, np.asarray(jax.grad(lambda x: jnp.sum(ref(x)))(X3)), x=X3)


def test_squares_at_huge_entries_are_x_squared():
    """The values are x ** 2's: inf past 1.3e154, as numpy's maximum(x, -x) ** 2; the
    gradient 2 x is finite there."""
    x = np.array([1e200, -1e200, 1e150, -3.0])
    for form in ("maximum(x, -x) ** 2", "relu(x) ** 2 + relu(-x) ** 2"):
        f = einderiv.compile(form, _shapes(form))
        _assert_all(f, _quiet(lambda: x ** 2), rtol=1e-15, atol=0, x=x)
        g = einderiv.grad(f"sum({form})", "x", _shapes(form))
        _assert_all(g, 2 * x, rtol=1e-15, atol=0, x=x)


# -- hypot written out -------------------------------------------------------------------------

def _mp_hypot(x, y):
    import mpmath as mp
    with mp.workdps(50):
        return np.array([float(mp.sqrt(mp.mpf(float(a)) ** 2 + mp.mpf(float(b)) ** 2))
                         for a, b in zip(x, y)])


@pytest.mark.parametrize("form", HYPOT_FORMS)
def test_hypot_forms_gradient_at_zero_and_beside(jax, form):
    """The zero subgradient at x = y = 0 (JAX and PyTorch give nan for sqrt(x ** 2 + y ** 2)
    there), x / |y| at x = 0 beside y != 0, and JAX's gradient of the form as written."""
    jnp = jax.numpy
    expr = f"sum({form})"
    g = einderiv.grad(expr, "x", _shapes(expr))
    _assert_all(g, np.zeros(3), x=Z3, y=Z3)
    ref = lambda x, y: jnp.sum(jnp.sqrt(x ** 2 + y ** 2))  # noqa: E731
    for x, y in ((X3, Y3), (Z3, X3), (X3, Z3)):
        _assert_all(g, np.asarray(jax.grad(ref)(x, y)), x=x, y=y)
    H = einderiv.hessian(expr, "x", _shapes(expr))
    _assert_all(H, np.asarray(jax.hessian(ref)(X3, Y3 + 1.0)), x=X3, y=Y3 + 1.0)


@pytest.mark.parametrize("form", HYPOT_FORMS)
def test_hypot_forms_past_overflow_and_underflow(form):
    """sqrt(x ** 2 + y ** 2) is inf at 1e200 and 0 at 1e-200; hypot is exact (mpmath)."""
    pytest.importorskip("mpmath")  # the reference
    x = np.array([1e200, -3e-200, 1e300, 5e-324, 3.0])
    y = np.array([-1e200, 4e-200, 0.0, 0.0, -4.0])
    f = einderiv.compile(form, _shapes(form))
    h = _mp_hypot(x, y)
    _assert_all(f, h, rtol=1e-15, atol=0, x=x, y=y)
    g = einderiv.grad(f"sum({form})", "x", _shapes(form))
    _assert_all(g, x / h, rtol=1e-15, atol=0, x=x, y=y)


def test_hypot_forms_of_expressions_and_columns(jax):
    """a and b may be any expressions: the distance of 2-D points given as columns, a
    difference and a sum."""
    jnp = jax.numpy
    X = np.array([[0.0, 0.0], [3.0, -4.0], [1e200, 1e200]])
    g = einderiv.grad("sum(sqrt(X[:, 0] ** 2 + X[:, 1] ** 2))", "X", _shapes("X"))
    assert "hypot(" in g.formula
    _assert_all(g, [[0.0, 0.0], [0.6, -0.8], [2 ** -0.5, 2 ** -0.5]], X=X)
    g = einderiv.grad("sum(sqrt((x - y) ** 2 + (x + y) ** 2))", "x", _shapes("x y"))
    assert "hypot(x - y, x + y)" in g.formula or "hypot(t" in g.formula
    _assert_all(g, np.zeros(3), x=Z3, y=Z3)
    ref = lambda x, y: jnp.sum(jnp.sqrt((x - y) ** 2 + (x + y) ** 2))  # noqa: E731
    _assert_all(g, np.asarray(jax.grad(ref)(X3, Y3)), x=X3, y=Y3)


def test_squared_hypot_form_hessian_at_origin():
    """sqrt(x ** 2 + y ** 2) ** 2 is x ** 2 + y ** 2 (through hypot(x, y) ** 2)."""
    H = einderiv.hessian("sum(sqrt(x ** 2 + y ** 2) ** 2)", "x", _shapes("x y"))
    _assert_all(H, 2 * np.eye(3), x=Z3, y=Z3)


# -- norm written out --------------------------------------------------------------------------

@pytest.mark.parametrize("form", NORM_FORMS)
def test_norm_forms_gradient_at_zero_beside_and_past_overflow(jax, form):
    """norm's zero subgradient at 0 (JAX gives nan for sqrt(sum(x ** 2)) there), JAX's
    gradient beside 0, and the exact norm where the squares overflow (mpmath)."""
    mp = pytest.importorskip("mpmath")
    jnp = jax.numpy
    g = einderiv.grad(form, "x", _shapes(form))
    _assert_all(g, np.zeros(3), x=Z3)
    _assert_all(g, np.asarray(jax.grad(lambda x: jnp.sqrt(jnp.sum(x ** 2)))(X3)), x=X3)
    x = np.array([1e200, -2e200, 2e200])
    with mp.workdps(50):
        n = float(mp.sqrt(sum(mp.mpf(float(v)) ** 2 for v in x)))
    _assert_all(einderiv.compile(form, _shapes(form)), n, rtol=1e-15, atol=0, x=x)
    _assert_all(g, x / n, rtol=1e-15, atol=0, x=x)


def test_row_norm_form_at_zero_rows(jax):
    jnp = jax.numpy
    X = np.array([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]])
    g = einderiv.grad("sum(sum(X ** 2, axis=1) ** 0.5)", "X", _shapes("X"))
    want = np.asarray(jax.grad(lambda X: jnp.sum(jnp.sqrt(jnp.sum(X ** 2, axis=1))))(X[1:]))
    _assert_all(g, np.vstack([np.zeros((1, 2)), want]), X=X)


# -- roots of norm and hypot at 0: nan, as JAX and PyTorch (documented) -----------------------

@pytest.mark.parametrize("expr,order,ref", [
    ("norm(x) ** 0.5", 1, lambda jnp, x: jnp.linalg.norm(x) ** 0.5),
    ("sum(hypot(x, y) ** 0.5)", 1, lambda jnp, x: jnp.sum(jnp.hypot(x, Y3 + 1) ** 0.5)),
    ("norm(x) ** 1.5", 2, lambda jnp, x: jnp.linalg.norm(x) ** 1.5),
])
def test_roots_of_norm_at_zero_are_nan_and_jax_beside(jax, expr, order, ref):
    """The gradient of ||x|| ** 0.5 and the Hessian of ||x|| ** 1.5 are infinite at 0 (no
    subgradient), and are nan there, as in JAX and PyTorch: norm's zero subgradient is a
    ratio, x / where(n, n, 1), and p n ** (p - 1) is inf there (docs/language.md,
    Derivatives at kinks). Beside 0 they are JAX's."""
    jnp = jax.numpy
    take = einderiv.grad if order == 1 else einderiv.hessian
    d = take(expr, "x", _shapes(expr))
    for got in _three(d, x=Z3, y=Z3).values():
        assert np.isnan(got).any()
    jd = jax.grad if order == 1 else jax.hessian
    assert np.isnan(np.asarray(jd(lambda x: jnp.linalg.norm(x) ** (0.5 * order))(Z3))).any()
    _assert_all(d, np.asarray(jd(lambda x: ref(jnp, x))(X3)), rtol=1e-12, x=X3, y=Y3 + 1)
