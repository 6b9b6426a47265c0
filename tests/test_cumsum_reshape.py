"""cumsum, reversals (`x[::-1]`, `flip`) and the other linear index maps of issue 14 (items 1
and 3), whose Jacobians are dense structured matrices that the derivation never builds.

Each is compared with numpy (values) and JAX (gradients, Jacobians and Hessians, x64 on), and
with central finite differences, over vectors, stacks of rows and 3-D tensors, along each axis.
The gradient of a cumsum is the running sum from the other end, in O(n): at n = 10^6 it takes
the memory of a few vectors in the generated code and in the IR interpreter, where a triangle
of ones would take 8 TB. tests/conftest.py checks for every result that its formula parses back
to the same values and that the generated code agrees with the IR interpreter.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

VECTOR = {"x": ("n",), "w": ("n",)}
MATRIX = {"X": ("b", "n"), "W": ("b", "n")}
CUBE = {"T": ("a", "b", "c"), "U": ("a", "b", "c")}


def draw(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=shape)


def jax_modules():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jax, jnp


def against_jax(text, shapes, arrays, wrt, loss, hessian=True):
    """Value, gradient and (optionally) Hessian of the scalar `text` against the JAX function
    `loss` of the same arrays (keyword arguments), and the gradient against differences."""
    jax, jnp = jax_modules()
    names = list(arrays)
    index = names.index(wrt)
    f = lambda *a: loss(**dict(zip(names, a)))  # noqa: E731
    values = [jnp.asarray(arrays[k]) for k in names]
    value = einderiv.compile(text, shapes)
    assert relative_error(value(**arrays), float(f(*values))) < 1e-13
    g = einderiv.grad(text, wrt, shapes)
    assert relative_error(g(**arrays), np.asarray(jax.grad(f, index)(*values))) < 1e-12
    assert relative_error(g(**arrays), finite_difference(value, arrays, wrt)) < 1e-7
    if hessian:
        h = einderiv.hessian(text, wrt, shapes)
        assert relative_error(h(**arrays), np.asarray(jax.hessian(f, index)(*values))) < 1e-12
    return g


# -- cumsum ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,axis", [("cumsum(X, axis=0)", 0), ("cumsum(X, axis=1)", 1),
                                       ("cumsum(X, -1)", -1), ("cumsum(X, axis=-2)", -2)])
def test_cumsum_is_numpys(text, axis):
    X = draw(1, (3, 4))
    f = einderiv.compile(text, MATRIX)
    assert relative_error(f(X=X), np.cumsum(X, axis=axis)) < 1e-15
    assert f(X=X.astype(np.float32)).dtype == np.float32


def test_cumsum_of_a_vector_needs_no_axis():
    x = draw(2, (5,))
    f = einderiv.compile("x: [n]; cumsum(x) + cumsum(x, axis=None)")
    assert relative_error(f(x=x), 2 * np.cumsum(x)) < 1e-15
    assert f.formula == "2 * cumsum(x)"


@pytest.mark.parametrize("axis", [0, 1])
def test_cumsum_gradient_and_hessian_against_jax(axis):
    _, jnp = jax_modules()
    X, W = draw(3, (3, 4)), draw(4, (3, 4))
    text = f"sum(W * sin(cumsum(X, axis={axis}))) + sum(cumsum(X ** 2, axis={axis}))"
    against_jax(text, MATRIX, {"X": X, "W": W}, "X",
                lambda X, W: jnp.sum(W * jnp.sin(jnp.cumsum(X, axis=axis)))
                + jnp.sum(jnp.cumsum(X ** 2, axis=axis)))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cumsum_of_a_stack_along_each_axis(axis):
    _, jnp = jax_modules()
    T, U = draw(5, (2, 3, 4)), draw(6, (2, 3, 4))
    text = f"sum(U * cumsum(T, axis={axis}) ** 2)"
    g = against_jax(text, CUBE, {"T": T, "U": U}, "T",
                    lambda T, U: jnp.sum(U * jnp.cumsum(T, axis=axis) ** 2), hessian=False)
    assert "cumsum" in g.formula and "eye" not in g.formula


def test_jacobian_of_cumsum_is_the_triangle():
    jax, jnp = jax_modules()
    x = draw(7, (4,))
    J = einderiv.jacobian("cumsum(x)", "x", {"x": ("n",)})
    assert np.array_equal(J(x=x), np.tril(np.ones((4, 4))))
    J2 = einderiv.jacobian("cumsum(exp(x)) * x", "x", {"x": ("n",)})
    expected = jax.jacfwd(lambda x: jnp.cumsum(jnp.exp(x)) * x)(jnp.asarray(x))
    assert relative_error(J2(x=x), np.asarray(expected)) < 1e-13


def test_the_gradient_is_a_running_sum_from_the_end():
    g = einderiv.grad("sum(w * cumsum(x))", "x", VECTOR)
    assert g.formula == "cumsum(w[::-1])[::-1]"
    assert "_xp.cumsum(_xp.flip(w, axis=0), axis=0)" in g.source
    h = einderiv.grad("sum(cumsum(x) ** 2)", "x", VECTOR)
    assert h.formula == "cumsum((2 * cumsum(x))[::-1])[::-1]"


def test_cumsum_gradient_at_a_million_is_linear(peak_bytes):
    """O(n) time and memory, in the generated code and the IR interpreter (a triangle of ones
    would be 8 TB at n = 10^6)."""
    n = 10 ** 6
    x = np.random.default_rng(8).uniform(0, 1, n)
    g = einderiv.grad("sum(cumsum(x) ** 2) + sum(x[::-1] * cumsum(x))", "x", {"x": ("n",)})
    c = np.cumsum(x)
    expected = np.cumsum((2 * c + x[::-1])[::-1])[::-1] + c[::-1]
    for run in (g, g.evaluate_ir):
        assert relative_error(run(x=x), expected) < 1e-12
        assert peak_bytes(lambda: run(x=x)) < 6 * 8 * n


def test_cumsum_errors():
    with pytest.raises(einderiv.ParseError, match="cumsum\\(\\) takes one axis"):
        einderiv.compile("X: [n, m]; cumsum(X, axis=(0, 1))")
    with pytest.raises(einderiv.ShapeError, match="axis 2 is out of bounds"):
        einderiv.compile("X: [n, m]; cumsum(X, axis=2)")
    with pytest.raises(einderiv.ParseError, match="cumsum\\(\\) got an unexpected keyword"):
        einderiv.compile("x: [n]; cumsum(x, dtype=1)")


# -- reversals ------------------------------------------------------------------------------------

REVERSALS = ["x[::-1]", "x[-1::-1]", "x[:0:-1]", "x[3::-1]", "x[:-4:-1]", "x[4:1:-1]",
             "x[-2:-5:-1]", "x[::-1][1:]"]


@pytest.mark.parametrize("text", REVERSALS)
def test_negative_steps_are_numpys(text):
    """Of a named dimension and of a fixed one, as numpy's slices with step -1."""
    x = draw(9, (6,))
    expected = eval(text, {"x": x})
    if text != "x[-2:-5:-1]":  # counted from both ends: its length is no dimension of n
        assert np.array_equal(einderiv.compile(f"x: [n]; {text}")(x=x), expected)
    assert np.array_equal(einderiv.compile(f"x: [6]; {text}")(x=x), expected)


def test_reversals_of_axes_and_flip():
    X = draw(10, (3, 4))
    shapes = {"X": ("b", "n")}
    for text, expected in [("X[::-1]", X[::-1]), ("X[:, ::-1]", X[:, ::-1]),
                           ("X[::-1, ::-1]", X[::-1, ::-1]), ("flip(X)", np.flip(X)),
                           ("flip(X, axis=1)", np.flip(X, axis=1)),
                           ("flip(X, (0, 1))", np.flip(X, (0, 1))), ("X[1, ::-1]", X[1, ::-1])]:
        assert np.array_equal(einderiv.compile(text, shapes)(X=X), expected), text
    assert einderiv.compile("flip(flip(X, 1), 1) + X[::-1][::-1]", shapes).formula == "2 * X"


def test_reversal_gradient_and_hessian_against_jax():
    _, jnp = jax_modules()
    X, V = draw(11, (3, 4)), draw(12, (3, 3))
    text = "sum(V * exp(X[::-1, 1:]) ** 2) + sum(X[:, ::-1] * X)"
    against_jax(text, {"X": ("b", 4), "V": ("b", 3)}, {"X": X, "V": V}, "X",
                lambda X, V: jnp.sum(V * jnp.exp(X[::-1, 1:]) ** 2) + jnp.sum(X[:, ::-1] * X))


def test_the_reversal_of_an_elementwise_result_cancels():
    """The adjoint of `x[::-1]` reverses the cotangent: no reversal is left where the
    cotangent is itself made of the reversed value."""
    g = einderiv.grad("sum(sin(x[::-1]))", "x", {"x": ("n",)})
    assert g.formula == "cos(x)"


def test_slice_step_errors():
    with pytest.raises(einderiv.ShapeError, match="step cannot be zero"):
        einderiv.compile("x: [n]; x[::0]")
    with pytest.raises(einderiv.ShapeError, match="negative step takes integer bounds"):
        einderiv.compile("x: [n]; m: []; x[n:0:-1]")
    with pytest.raises(einderiv.ParseError, match="a slice step must be an integer constant"):
        einderiv.compile("x: [n]; x[::1.5]")
