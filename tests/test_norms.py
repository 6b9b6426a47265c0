"""norm(x, ord, axis) as numpy's linalg.norm (issue 14, item 3: `norm(x, axis=k)` and
`norm(x, 1)`): the order is the second argument when it is a number (numpy's), the axes
are given with axis= (or as a tuple). Vector orders along one axis, matrix orders over two;
values against numpy, gradients and Hessians against JAX (x64) and finite differences.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

SHAPES = {"x": ("n",), "X": ("m", "n")}
INF = float("inf")

CASES = [
    # (text, numpy's arguments: (ord, axis))
    ("norm(x)", "x", (None, None)), ("norm(x, 1)", "x", (1, None)),
    ("norm(x, 2)", "x", (2, None)), ("norm(x, 3)", "x", (3, None)),
    ("norm(x, 0.5)", "x", (0.5, None)), ("norm(x, 1e999)", "x", (INF, None)),
    ("norm(x, -1e999)", "x", (-INF, None)), ("norm(x, 0)", "x", (0, None)),
    ("norm(x, ord=1)", "x", (1, None)),
    ("norm(X)", "X", (None, None)), ("norm(X, 'fro')", "X", ("fro", None)),
    ("norm(X, 1)", "X", (1, None)), ("norm(X, -1)", "X", (-1, None)),
    ("norm(X, 1e999)", "X", (INF, None)), ("norm(X, -1e999)", "X", (-INF, None)),
    ("norm(X, axis=0)", "X", (None, 0)), ("norm(X, 1, axis=1)", "X", (1, 1)),
    ("norm(X, 1, 0)", "X", (1, 0)), ("norm(X, 3, axis=-1)", "X", (3, -1)),
    ("norm(X, ord=1, axis=(1, 0))", "X", (1, (1, 0))), ("norm(X, (0, 1))", "X", (None, (0, 1))),
    ("norm(X, 1e999, axis=0)", "X", (INF, 0)),
]


def draw(seed: int, shape) -> np.ndarray:
    """Entries of either sign, apart from each other and from 0 (no kinks, no ties)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.linspace(0.3, 1.7, int(np.prod(shape)))).reshape(shape) * \
        rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("text,name,numpy_args", CASES)
def test_norm_is_numpys(text, name, numpy_args):
    arrays = {"x": draw(1, (5,)), "X": draw(2, (3, 4))}
    f = einderiv.compile(text, {name: SHAPES[name]})
    order, axis = numpy_args
    expected = np.linalg.norm(arrays[name], order, axis)
    assert relative_error(f(**{name: arrays[name]}), expected) < 1e-14


@pytest.mark.parametrize("text,name,numpy_args",
                         [c for c in CASES if c[2][0] != 0])  # the count of nonzeros: flat
def test_norm_gradient_and_hessian_against_jax(text, name, numpy_args):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    a = {"x": draw(3, (5,)), "X": draw(4, (3, 4))}[name]
    order, axis = numpy_args
    loss_text = f"sum(sin({text}))"
    loss = lambda v: jnp.sum(jnp.sin(jnp.linalg.norm(v, order, axis)))  # noqa: E731
    shapes = {name: SHAPES[name]}
    g = einderiv.grad(loss_text, name, shapes)
    assert relative_error(g(**{name: a}), np.asarray(jax.jit(jax.grad(loss))(a))) < 1e-12
    value = einderiv.compile(loss_text, shapes)
    assert relative_error(g(**{name: a}), finite_difference(value, {name: a}, name)) < 1e-7
    h = einderiv.hessian(loss_text, name, shapes)
    assert relative_error(h(**{name: a}), np.asarray(jax.jit(jax.hessian(loss))(a))) < 1e-10


def test_norm_formulas_are_what_a_person_writes():
    assert einderiv.grad("norm(x, 1)", "x", {"x": ("n",)}).formula == "sign(x)"
    assert einderiv.compile("norm(X, 1)", {"X": ("m", "n")}).formula == \
        "max(sum(abs(X), axis=0))"
    assert einderiv.compile("norm(X, 2, axis=1)", {"X": ("m", "n")}).formula == \
        "norm(X, axis=1)"


def test_an_axis_name_as_the_second_argument_is_still_the_axis():
    """The rewrites pass axes positionally (`sqrt(sum(x ** 2, axis)) = norm(x, axis)`)."""
    f = einderiv.compile("sqrt(sum(X ** 2, axis=1))", {"X": ("m", "n")})
    assert f.formula == "norm(X, axis=1)"


@pytest.mark.parametrize("text,message", [
    ("norm(X, 2)", "matrix norm of order 2 needs singular values"),
    ("norm(X, 'nuc')", "matrix norm of order 'nuc' needs singular values"),
    ("norm(X, 3)", "invalid order 3 for a matrix norm"),
    ("norm(T, 1)", "norm\\(\\) with an order takes a vector or a matrix"),
    ("norm(X, 1, axis=(0, 1, 0))", "norm\\(\\): axis 0 repeats"),
    ("norm(T, 1, axis=(0, 1, 2))", "one axis \\(a vector norm\\) or two"),
    ("norm(X, 1, axis=2)", "axis 2 is out of bounds"),
    ("norm(x, 1, 0, 0)", "norm\\(\\) takes 1 to 3 arguments"),
    ("norm(x, 1, ord=2)", "unexpected or repeated keyword argument 'ord'"),
])
def test_norm_errors(text, message):
    with pytest.raises(einderiv.EinderivError, match=message) as e:
        einderiv.compile(text, {"x": ("n",), "X": ("m", "n"), "T": ("a", "b", "c")})
    assert "^" in str(e.value)
