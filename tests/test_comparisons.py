"""Comparisons as masks, argmax and argmin (issue 14, item 3), and the operator `//`.

`a > b`, `a <= b`, `==`, `!=`, `<`, `>=` are masks: 1 where the comparison holds and 0 elsewhere,
of the operands' broadcast shape and float dtype, with derivative 0 (rule-table functions
`greater`, `less_equal`, ...). They bind more loosely than arithmetic, as in Python and numpy,
and do not chain. Masks are used in `where(cond, a, b)` and in products (`x * (x > 0)`), where
the chain rule takes them as selects. argmax and argmin are values (a position, as a float),
not indices, with derivative 0.

Each is compared with numpy (values) and JAX (gradients and Hessians of losses that use them,
with x64 on), and with central finite differences; tests/conftest.py checks for every result
that the printed formula parses back to the same values and that the generated code agrees
with the IR interpreter.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

OPERATORS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
             "==": np.equal, "!=": np.not_equal}
MATRIX = {"X": ("b", "n"), "y": ("n",)}


def draw(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.linspace(-1.7, 1.7, int(np.prod(shape)))).reshape(shape)


def jax_modules():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jax, jnp


# -- syntax ----------------------------------------------------------------------------------

def test_comparisons_bind_more_loosely_than_arithmetic():
    """`x + 1 > 2 * y` is `(x + 1) > (2 * y)`, and `-x ** 2 < y` compares `-(x ** 2)`."""
    x, y = np.array([0.0, 1.0, 3.0]), np.array([0.4, 1.1, 1.0])
    shapes = {"x": ("n",), "y": ("n",)}
    f = einderiv.compile("x + 1 > 2 * y", shapes)
    assert np.array_equal(f(x=x, y=y), (x + 1 > 2 * y).astype(float))
    assert f.formula == "x + 1 > 2 * y"
    g = einderiv.compile("-x ** 2 < y - 1", shapes)
    assert np.array_equal(g(x=x, y=y), (-x ** 2 < y - 1).astype(float))


@pytest.mark.parametrize("op", list(OPERATORS))
def test_each_operator_is_numpys_as_a_mask(op):
    """Broadcast [b, n] against [n], in the inputs' float dtype; ties included (== and !=)."""
    X = np.round(draw(1, (3, 4)), 1)
    y = X[1].copy()
    y[0] += 0.5
    f = einderiv.compile(f"X {op} y", MATRIX)
    out = f(X=X, y=y)
    assert out.dtype == np.float64
    assert np.array_equal(out, OPERATORS[op](X, y).astype(float))
    single = f(X=X.astype(np.float32), y=y.astype(np.float32))
    assert single.dtype == np.float32
    assert np.array_equal(single, OPERATORS[op](X, y).astype(np.float32))


def test_chained_comparisons_are_an_error_with_a_caret():
    with pytest.raises(einderiv.ParseError) as e:
        einderiv.compile("x: [n]; 0 < x < 1")
    assert "comparisons do not chain" in str(e.value)
    assert "^" in str(e.value) and "(a < b) * (b < c)" in str(e.value)
    # Bracketed, a mask is compared like any value: (x > 0) == 1 is x > 0.
    f = einderiv.compile("x: [n]; ((x > 0) == 1) + (0 < x) * (x < 1)")
    assert np.array_equal(f(x=np.array([-1.0, 0.5, 2.0])), [0.0, 2.0, 1.0])


def test_formula_and_latex():
    f = einderiv.compile("x: [n]; y: [n]; where(x <= y, x, y) * (x != 0) + ((x > 0) < (y >= 1))")
    assert f.formula == "where(x <= y, x, y) * (x != 0) + ((x > 0) < (y >= 1))"
    assert re.search(r"\\left\[x \\leq? y\\right\]", f.latex), f.latex  # Iverson's bracket
    assert "_kernels.less_equal(x, y)" in f.source


# -- masks in arithmetic and selects -----------------------------------------------------------

def test_mask_times_value_is_relu():
    x = draw(2, (7,))
    relu = einderiv.compile("x: [n]; x * (x > 0)")
    assert np.array_equal(relu(x=x), np.maximum(x, 0))
    g = einderiv.grad("sum(x * (x > 0))", "x", {"x": ("n",)})
    assert g.formula == "x > 0"
    assert np.array_equal(g(x=x), (x > 0).astype(float))


def test_a_mask_selects_past_an_infinite_factor():
    """`sqrt(x) * (x > 0)` at x = 0 and x < 0: the gradient takes the mask as a select, 0
    there, not 0 * inf = nan (as JAX's `where` gives, the branch not taken ignored)."""
    shapes = {"x": ("n",)}
    g = einderiv.grad("sum(sqrt(x) * (x > 0))", "x", shapes)
    assert g.formula == "0.5 * where(x > 0, 1 / sqrt(x), 0)"
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.array_equal(g(x=np.array([-1.0, 0.0, 4.0])), [0.0, 0.0, 0.25])


LOSSES = [
    # (text, wrt): masks of one and two inputs, in where and in products, broadcast rows
    ("sum(where(X > y, X ** 2, sin(y)) * (X != 0.5))", "X"),
    ("sum(where(X > y, X ** 2, sin(y)) * (X != 0.5))", "y"),
    ("sum(exp(X) * (X >= -0.5) * (X < y))", "X"),
    ("sum(tanh(X) * (X <= mean(X, axis=1)[:, None]))", "X"),
    ("sum((X @ y > 0) * (X @ y) ** 2)", "X"),
    ("sum((X == y) * X + (X // 0.5) * y)", "y"),
]


@pytest.mark.parametrize("text,wrt", LOSSES)
def test_gradient_and_hessian_against_jax(text, wrt):
    jax, jnp = jax_modules()
    X, y = draw(3, (3, 4)), draw(4, (4,))
    X[0, 1] = 0.5  # a point where `X != 0.5` is 0
    y[2] = X[1, 2]  # a tie: `X == y` holds there

    def loss(X, y):
        m = jnp.mean(X, axis=1)[:, None]
        return eval(text.replace("where", "jnp.where").replace("sin", "jnp.sin")
                    .replace("exp", "jnp.exp").replace("tanh", "jnp.tanh")
                    .replace("sum", "jnp.sum").replace("mean(X, axis=1)[:, None]", "m"),
                    {"jnp": jnp, "X": X, "y": y, "m": m})

    index = "Xy".index(wrt)
    arrays = {"X": X, "y": y}
    assert relative_error(einderiv.compile(text, MATRIX)(**arrays), float(loss(X, y))) < 1e-14
    g = einderiv.grad(text, wrt, MATRIX)
    expected = np.asarray(jax.jit(jax.grad(loss, argnums=index))(jnp.asarray(X),
                                                                jnp.asarray(y)))
    assert relative_error(g(**arrays), expected) < 1e-12
    h = einderiv.hessian(text, wrt, MATRIX)
    expected = np.asarray(jax.jit(jax.hessian(loss, argnums=index))(jnp.asarray(X),
                                                                   jnp.asarray(y)))
    assert relative_error(h(**arrays), expected) < 1e-12
    # and against finite differences, away from the ties (the masks' jumps)
    moved = {"X": X + 1e-3 * draw(5, X.shape), "y": y}
    value = einderiv.compile(text, MATRIX)
    assert relative_error(g(**moved), finite_difference(value, moved, wrt)) < 1e-6


# -- argmax and argmin ---------------------------------------------------------------------------

AXES = [(None, None), ("axis=1", 1), ("axis=0", 0), ("axis=-1", -1)]


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("axis_text,axis", AXES)
def test_argmax_and_argmin_are_numpys(name, axis_text, axis):
    """A position as a float: over every entry of x flattened, or along an axis; the first at
    a tie, as numpy's."""
    X = draw(6, (3, 5))
    X[2, 4] = X[2, 1] = X.max() + 1  # a tie for the largest: the first is taken
    X[1, 3] = X[1, 0] = X.min() - 1
    text = f"{name}(X)" if axis_text is None else f"{name}(X, {axis_text})"
    f = einderiv.compile(text, {"X": ("b", "n")})
    expected = getattr(np, name)(X, axis=axis)
    assert np.array_equal(f(X=X), np.asarray(expected, dtype=float))
    assert f(X=X.astype(np.float32)).dtype == np.float32


def test_argmax_over_several_axes_is_its_position_in_them_flattened():
    T = draw(7, (2, 3, 4))
    f = einderiv.compile("argmax(T, axis=(1, 2))", {"T": ("a", "b", "c")})
    expected = np.argmax(T.reshape(2, 12), axis=1)
    assert np.array_equal(f(T=T), expected.astype(float))


def test_argmax_has_derivative_zero_as_in_jax():
    """argmax is piecewise constant: `x * argmax(x)` has the gradient argmax(x) (JAX takes the
    integer argmax as a constant), and a loss of argmax alone has the gradient 0."""
    jax, jnp = jax_modules()
    x = draw(8, (6,))
    shapes = {"x": ("n",)}
    g = einderiv.grad("sum(x * argmax(x) + argmin(x) ** 2)", "x", shapes)
    loss = lambda x: jnp.sum(x * jnp.argmax(x) + jnp.argmin(x) ** 2)  # noqa: E731
    assert np.array_equal(g(x=x), np.asarray(jax.grad(loss)(jnp.asarray(x))))
    assert g.formula == "argmax(x) * ones(n)"
    zero = einderiv.grad("argmax(x) * argmin(x)", "x", shapes)
    assert np.array_equal(zero(x=x), np.zeros(6))


def test_argmax_is_a_value_not_an_index():
    """Indices are constants: the entry at the argmax is picked with argmax_onehot."""
    x = np.array([0.5, 3.0, -1.0])
    with pytest.raises(einderiv.ParseError, match="an index must be an integer constant"):
        einderiv.compile("x: [n]; x[argmax(x)]")
    pick = einderiv.compile("x: [n]; y: [n]; sum(y * argmax_onehot(x))")
    assert float(pick(x=x, y=np.array([10.0, 20.0, 30.0]))) == 20.0


def test_argmax_errors():
    with pytest.raises(einderiv.ShapeError, match="axis 2 is out of bounds"):
        einderiv.compile("x: [n, m]; argmax(x, axis=2)")
    with pytest.raises(einderiv.ParseError, match="argmax\\(\\) got an unexpected keyword"):
        einderiv.compile("x: [n]; argmax(x, out=1)")
    with pytest.raises(einderiv.ParseError, match="keepdims must be True or False"):
        einderiv.compile("x: [n]; argmax(x, keepdims=1)")


# -- floor division ------------------------------------------------------------------------------

def test_floor_divide_is_numpys_with_derivative_zero():
    x, y = np.array([3.5, -3.5, 7.0, 1.0]), np.array([2.0, 2.0, -2.0, 0.3])
    shapes = {"x": ("n",), "y": ("n",)}
    f = einderiv.compile("x // y + x // 2", shapes)
    assert np.array_equal(f(x=x, y=y), np.floor_divide(x, y) + np.floor_divide(x, 2))
    assert f.formula == "x // y + x // 2"
    assert np.array_equal(einderiv.grad("sum(x * (x // y))", "x", shapes)(x=x, y=y),
                          np.floor_divide(x, y))
