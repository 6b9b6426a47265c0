"""Smooth functions written with a non-smooth part, at the kink (breaker session 26, faults 1,
2 and 5, and the other forms of the same kinds).

- A smooth square of a function with a kink (`abs`, `norm`, `hypot`, which take the zero
  subgradient at 0) has the Hessian 2 (2 I) at 0, which the chain rule through that
  convention loses (2 h H_h + 2 g g^T = 0 there): such squares are rewritten to their smooth
  forms before anything is derived (rules/rewrites.rules). `square(hypot(a, b))` cannot be,
  and stays a strict xfail.
- With a variable exponent, `abs(u) ** p` at 0 and p = 2 keeps the chain rule's 0 (documented
  in docs/language.md; the strict xfail is in test_breaker_s26_constructs.py). The tests
  here pin what does hold: every other p, the gradients at 0, and every point beside 0.
- gelu's derivatives are finite over the whole float range (the rule clips x in x phi(x)).

References are never computed by einderiv: JAX (float64), numpy by hand, the mathematics,
or mpmath at 50 digits.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import einderiv
from einderiv.api import parse_rules

M = pytest.importorskip("mpmath")

SHAPES = {"x": ("n",), "y": ("n",), "w": ("n",), "a": (), "p": (), "X": ("n", "m")}


def _shapes(expr: str) -> dict:
    """The shapes of the inputs `expr` names (every declared input must be used)."""
    names = set(re.findall(r"[A-Za-z_]\w*", expr))
    return {k: v for k, v in SHAPES.items() if k in names}


def _quiet(f, *args, **kwargs):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


def _both(result, **arrays):
    """(generated code, IR interpreter) values, as float64 arrays (of the arrays given, those
    the result takes: one table of points serves several expressions)."""
    arrays = {k: v for k, v in arrays.items() if k in result.inputs}
    return (np.asarray(_quiet(result, **arrays), np.float64),
            np.asarray(_quiet(result.evaluate_ir, **arrays), np.float64))


def _assert_both(result, want, rtol=1e-12, atol=1e-14, **arrays):
    gen, ir = _both(result, **arrays)
    np.testing.assert_allclose(gen, want, rtol=rtol, atol=atol, err_msg="generated code")
    np.testing.assert_allclose(ir, want, rtol=rtol, atol=atol, err_msg="IR interpreter")


Z3 = np.zeros(3)
X3 = np.array([0.5, -1.25, 2.0])
Y3 = np.array([-0.75, 0.0, 3.0])


# -- squares of hypot ------------------------------------------------------------------------

HYPOT_SQUARES = ["sum(hypot(x, y) ** 2)", "sum(hypot(x, y) * hypot(x, y))",
                 "hypot(x, y) @ hypot(x, y)", "sum(hypot(y, x) ** 2)"]


@pytest.mark.parametrize("expr", HYPOT_SQUARES)
def test_hypot_square_hessian_at_origin_and_beside(expr):
    """x ** 2 + y ** 2 has the Hessian 2 I everywhere, the origin included."""
    H = einderiv.hessian(expr, "x", _shapes(expr))
    _assert_both(H, 2 * np.eye(3), x=Z3, y=Z3)
    _assert_both(H, 2 * np.eye(3), x=X3, y=Y3)
    _assert_both(H, 2 * np.eye(3), x=Z3, y=Y3)  # x = 0 where y is not: hypot is smooth there


@pytest.mark.parametrize("expr", HYPOT_SQUARES)
def test_hypot_square_gradient_matches_jax(jax, expr):
    jnp = jax.numpy
    g = einderiv.grad(expr, "x", _shapes(expr))
    reference = jax.jit(jax.grad(lambda x, y: jnp.sum(x ** 2 + y ** 2)))  # (compiled once)
    for x, y in ((X3, Y3), (Z3, Y3), (Z3, Z3)):
        want = np.asarray(reference(x, y))
        _assert_both(g, want, x=x, y=y)


def test_hypot_square_of_a_scalar_and_weighted():
    """Broadcasting a number or a 0-d input, and a weight outside the square."""
    H = einderiv.hessian("sum(w * hypot(x, a) ** 2)", "x", _shapes("w x a"))
    w = np.array([1.0, -2.0, 0.5])
    _assert_both(H, np.diag(2 * w), x=Z3, w=w, a=np.array(0.0))
    H = einderiv.hessian("sum(hypot(x, 1.5) * hypot(x, 1.5))", "x", _shapes("x"))
    _assert_both(H, 2 * np.eye(3), x=Z3)


def test_hypot_square_is_rewritten_and_keeps_its_values():
    """The rewrite is an identity: values equal numpy's hypot squared, at huge entries (both
    inf past 1.3e154) and tiny ones (both 0) too."""
    f = einderiv.compile("hypot(x, y) ** 2", _shapes("x y"))
    assert f.formula == "square(x) + square(y)"
    x = np.array([0.0, 3.0, -1e-200, 1e150, 1e154, 2e154, -1e300, 5e-324])
    y = np.array([0.0, 4.0, 1e-200, -1e150, 1e154, 0.0, 1.0, 0.0])
    want = _quiet(lambda: np.hypot(x, y) ** 2)
    np.testing.assert_allclose(_quiet(f, x=x, y=y), want, rtol=1e-15, atol=0)
    f = einderiv.compile("hypot(x, y) * hypot(x, y)", _shapes("x y"))
    assert f.formula == "square(x) + square(y)"


@pytest.mark.xfail(strict=True, reason="square(hypot(a, b)) has no rewrite: square(a) + square(b) "
                   "calls as many functions with as many leaves, so the termination check of "
                   "rewrites (rulebook/table.py) cannot show that rewriting ends; the chain "
                   "rule through hypot's zero subgradient gives 0 at the origin "
                   "(documented: docs/language.md, Derivatives at kinks)")
def test_square_of_hypot_hessian_at_origin():
    H = einderiv.hessian("sum(square(hypot(x, y)))", "x", _shapes("sum(square(hypot(x, y)))"))
    _assert_both(H, 2 * np.eye(3), x=Z3, y=Z3)


# -- the other smooth squares of kinks, which hold ---------------------------------------------

@pytest.mark.parametrize("expr", ["sum(square(abs(x)))", "sum(abs(x) * abs(x))",
                                  "square(norm(x))", "norm(x) ** 2", "std(x) * std(x) * n",
                                  "sum(square(std(x))) * n"])
def test_squares_of_kinks_hessian_at_their_kink(jax, expr):
    """Each is sum(x ** 2) (std(x) ** 2 * n: n var(x), the Hessian 2 (I - 1 1^T / n)), smooth at
    0 or at a constant x, where the kink is."""
    jnp = jax.numpy
    H = einderiv.hessian(expr.replace("* n", "* size(n)"), "x", _shapes("x"))
    n = 3
    smooth = (lambda x: n * jnp.var(x)) if "std" in expr else (lambda x: jnp.sum(x ** 2))
    reference = jax.jit(jax.hessian(smooth))  # (compiled once for the three points)
    for x in (Z3, np.full(3, 0.75), X3):
        _assert_both(H, np.asarray(reference(x)), x=x)


def test_squared_row_norms_hessian_at_zero_rows():
    X = np.array([[0.0, 0.0], [1.0, -2.0], [0.0, 0.0]])
    H = einderiv.hessian("sum(norm(X, axis=1) ** 2)", "X", _shapes("sum(norm(X, axis=1) ** 2)"))
    _assert_both(H, 2 * np.eye(6).reshape(3, 2, 3, 2), X=X)


@pytest.mark.parametrize("expr", ["sum(sqrt(x) ** 2)", "sum(sqrt(x) * sqrt(x))",
                                  "sum(square(sqrt(x)))"])
def test_squares_of_sqrt_are_x_at_zero_too(expr):
    """sqrt(x) ** 2 is x for x >= 0: gradient 1 and Hessian 0, at 0 as well (the textbook
    chain 2 sqrt(x) * 0.5 / sqrt(x) is 0 * inf there; the algebra cancels it first)."""
    x = np.array([0.0, 0.25, 4.0])
    _assert_both(einderiv.grad(expr, "x", _shapes(expr)), np.ones(3), x=x)
    _assert_both(einderiv.hessian(expr, "x", _shapes(expr)), np.zeros((3, 3)), x=x)


# -- the termination check that lets hypot(a, b) ** 2 be rewritten ----------------------------

def test_a_rewrite_may_remove_the_number_of_a_power():
    (rule,) = parse_rules("rewrite hypot(a, b) ** 2 = square(a) + square(b)\n", "mine.rules")
    assert rule.pattern == "hypot(a, b) ** 2"


@pytest.mark.parametrize("text", [
    # as many calls, as many leaves: that it ends could not be shown
    "rewrite square(hypot(a, b)) = square(a) + square(b)\n",
    # a negation or a scale is no leaf a rule can count on: the matcher gives a variable the
    # negated value (cos(-u) matches cos(w) with u = -w), so only a power's number counts
    "rewrite cos(-u) = cos(u)\n",
    # the power's number goes, but two others come
    "rewrite hypot(a, b) ** 2 = 0.5 * (square(a) + square(b)) * 2\n",
])
def test_a_rewrite_that_could_not_be_shown_to_end_is_an_error(text):
    with pytest.raises(einderiv.RuleError, match="so that rewriting ends"):
        parse_rules(text, "mine.rules")


# -- a variable exponent (fault 2 of session 26: p = 2 at 0 stays a strict xfail there) -------

@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("expr,ref", [
    ("sum(abs(x) ** p)", lambda jnp, x, p: jnp.sum(jnp.abs(x) ** p)),
    ("norm(x) ** p", lambda jnp, x, p: jnp.linalg.norm(x) ** p),
    ("sum(hypot(x, y) ** p)", lambda jnp, x, p: jnp.sum(jnp.hypot(x, Y3) ** p)),
])
def test_variable_exponent_beside_zero_matches_jax(jax, expr, ref, p):
    jnp = jax.numpy
    pa = np.array(p)
    x = np.array([0.5, -1.25, 2.0])
    want_g, want_H = (np.asarray(w) for w in jax.jit(lambda x: (
        jax.grad(lambda x: ref(jnp, x, pa))(x), jax.hessian(lambda x: ref(jnp, x, pa))(x)))(x))
    _assert_both(einderiv.grad(expr, "x", _shapes(expr)), want_g, rtol=1e-11, x=x, y=Y3, p=pa)
    _assert_both(einderiv.hessian(expr, "x", _shapes(expr)), want_H, rtol=1e-11, x=x, y=Y3, p=pa)


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 3.0, 4.0])
def test_variable_exponent_of_abs_at_zero_keeps_the_convention(p):
    """The documented values at 0 (docs/language.md, Derivatives at kinks): gradient 0, the
    kink's convention, and Hessian 0 (the value for p > 2, the convention for p <= 1), the same
    as with the number p written in."""
    x = np.array([0.0, 0.0, 1.5])
    for expr in ("sum(abs(x) ** p)", f"sum(abs(x) ** {p})"):
        g = einderiv.grad(expr, "x", _shapes(expr))
        gen, ir = _both(g, x=x, p=np.array(p))
        want = p * 1.5 ** (p - 1)
        np.testing.assert_allclose(gen, [0.0, 0.0, want], rtol=1e-14, atol=0)
        np.testing.assert_allclose(ir, [0.0, 0.0, want], rtol=1e-14, atol=0)
        H = einderiv.hessian(expr, "x", _shapes(expr))
        gen, ir = _both(H, x=x, p=np.array(p))
        want = np.diag([0.0, 0.0, p * (p - 1) * 1.5 ** (p - 2)])
        np.testing.assert_allclose(gen, want, rtol=1e-14, atol=0)
        np.testing.assert_allclose(ir, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("expr", ["sum(abs(x) ** p)", "norm(x) ** p", "sum(hypot(x, y) ** p)"])
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_variable_exponent_gradient_at_zero_is_zero(expr, p):
    _assert_both(einderiv.grad(expr, "x", _shapes(expr)), Z3, x=Z3, y=Z3, p=np.array(p))


# -- gelu over the whole range ------------------------------------------------------------------

def _gelu_derivative(t, order):
    """gelu's first or second derivative at the float t, at 50 digits: Phi + t phi and
    (2 - t ** 2) phi (mpmath's erfc, inside ncdf, cannot take |t| beyond ~1e4, where Phi is
    0 or 1 to every digit a float keeps)."""
    with M.workdps(50):
        t = M.mpf(float(t))
        phi = M.exp(-t * t / 2) / M.sqrt(2 * M.pi)
        Phi = M.ncdf(t) if abs(t) < 1e4 else M.mpf(t > 0)
        return float(Phi + t * phi if order == 1 else (2 - t * t) * phi)


GELU_POINTS = np.array([0.0, 5e-324, -1e-300, 0.5, -1.3, 3.0, -7.5, 20.0, -30.0, 37.0, 38.5,
                        -38.7, 39.9, 40.0, -40.0, 40.1, 1e3, -1e5, 1e100, 1.3e154, 2e154,
                        -2e154, 1e200, 1.7e308, -1.7e308])


@pytest.mark.parametrize("order", [1, 2])
def test_gelu_derivatives_against_mpmath_over_the_whole_range(order):
    """Relative to the exact value (absolutely below the smallest normal float), on both
    paths: no nan where the textbook second derivative (2 - x ** 2) phi(x) is inf * 0."""
    R = (einderiv.grad if order == 1 else einderiv.hessian)("sum(gelu(x))", "x", _shapes("x"))
    want = np.array([_gelu_derivative(t, order) for t in GELU_POINTS])
    for got in _both(R, x=GELU_POINTS):
        got = got if order == 1 else np.diag(got)
        assert np.all(np.isfinite(got)), GELU_POINTS[~np.isfinite(got)]
        err = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
        assert err.max() < 1e-10, (GELU_POINTS[err.argmax()], got[err.argmax()])
    if order == 2:  # off the diagonal, exact zeros
        gen, ir = _both(R, x=GELU_POINTS)
        for H in (gen, ir):
            np.testing.assert_array_equal(H - np.diag(np.diag(H)), 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_derivatives_at_infinity_are_the_limits(dtype):
    """gelu' is 1 at +inf and 0 at -inf, gelu'' 0 at both (x phi(x) was inf * 0 there)."""
    x = np.array([np.inf, -np.inf, 3e38, -3e38], dtype)
    g = einderiv.grad("sum(gelu(x))", "x", _shapes("x"))
    H = einderiv.hessian("sum(gelu(x))", "x", _shapes("x"))
    for got in _both(g, x=x):
        np.testing.assert_array_equal(got, [1.0, 0.0, 1.0, 0.0])
    for got in _both(H, x=x):
        np.testing.assert_array_equal(got, np.zeros((4, 4)))


def test_gelu_derivatives_match_jax_at_ordinary_points(jax):
    jnp = jax.numpy
    x = np.array([-5.0, -1.5, -0.25, 0.0, 0.7, 2.0, 6.0])
    f = lambda x: jnp.sum(jax.nn.gelu(x, approximate=False))  # noqa: E731
    shapes = _shapes("x")
    want_g, want_H = (np.asarray(w) for w in jax.jit(
        lambda x: (jax.grad(f)(x), jax.hessian(f)(x)))(x))
    _assert_both(einderiv.grad("sum(gelu(x))", "x", shapes), want_g, rtol=1e-12, x=x)
    _assert_both(einderiv.hessian("sum(gelu(x))", "x", shapes), want_H, rtol=1e-12, x=x)


def test_gelu_float32_second_derivative_past_float32_overflow_of_x_squared():
    """In float32 x ** 2 overflows from 1.8e19 on: the clipped rule is finite there too."""
    x = np.array([0.0, 1.0, -3.0, 1e19, 3e19, -1e30], np.float32)
    H = einderiv.hessian("sum(gelu(x))", "x", _shapes("x"))
    want = np.array([_gelu_derivative(t, 2) for t in x])
    for got in _both(H, x=x):
        np.testing.assert_allclose(np.diag(got), want, rtol=1e-6, atol=1e-30)
