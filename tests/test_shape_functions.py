"""Shape functions (issue 14, item 1): transpose, swapaxes, concatenate, stack with an axis.

Each is a relabelling or a sum of pads, so its value matches numpy's, its gradient matches finite
differences, the generated code, the IR interpreter and the printed formula compiled back agree,
and no gradient builds a dense selection matrix (`eye(`).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import EinderivError, ParseError, ShapeError


def _arrays(shapes, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0.5, 1.5, tuple(d if isinstance(d, int) else sizes[d] for d in s))
            for n, s in shapes.items()}


def _finite_differences(f, arrays, wrt, eps=1e-6):
    out = np.zeros_like(arrays[wrt])
    for i in np.ndindex(out.shape):
        up, down = arrays[wrt].copy(), arrays[wrt].copy()
        up[i] += eps
        down[i] -= eps
        out[i] = (f(**{**arrays, wrt: up}) - f(**{**arrays, wrt: down})) / (2 * eps)
    return out


def _all_ways(made, shapes, arrays):
    """The generated code, the IR interpreter, and the printed formula compiled back."""
    again = einderiv.compile(made.formula, shapes)
    return [made(**arrays), made.evaluate_ir(**arrays), again(**arrays)]


def _check(expr, shapes, sizes, reference, wrt):
    """expr's value against numpy's `reference`; the gradient of sum(log(1 + expr) * W) by
    `wrt` against finite differences; every evaluation of both agrees."""
    arrays = _arrays(shapes, sizes)
    value = einderiv.compile(expr, shapes)
    expected = reference(**arrays)
    for got in _all_ways(value, shapes, arrays):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # A nonlinear loss weighted entry by entry, so every entry's place in the result matters.
    W = np.random.default_rng(1).uniform(0.5, 1.5, expected.shape)
    loss_shapes = {**shapes, "W": tuple(d.offset if d.is_concrete else str(d)
                                        for d in value.lowered.root.shape)}
    loss_text = f"sum(log(1 + {expr}) * W)"
    arrays["W"] = W
    g = einderiv.grad(loss_text, wrt, loss_shapes)
    assert "eye(" not in g.formula and "eye(" not in g.source, g.formula
    fd = _finite_differences(einderiv.compile(loss_text, loss_shapes), arrays, wrt)
    for got in _all_ways(g, loss_shapes, arrays):
        np.testing.assert_allclose(got, fd, atol=1e-6)


# -- transpose and swapaxes --------------------------------------------------------------------

XYZ = {"X": ("a", "b", "c")}
SIZES = {"a": 2, "b": 3, "c": 4}
TRANSPOSES = [
    ("transpose(X)", lambda X: np.transpose(X)),
    ("transpose(X, (1, 0, 2))", lambda X: np.transpose(X, (1, 0, 2))),
    ("transpose(X, (2, 0, 1))", lambda X: np.transpose(X, (2, 0, 1))),
    ("transpose(X, axes=(-1, 0, -2))", lambda X: np.transpose(X, (-1, 0, -2))),
    ("transpose(X, None)", lambda X: np.transpose(X)),
    ("swapaxes(X, 0, 2)", lambda X: np.swapaxes(X, 0, 2)),
    ("swapaxes(X, -1, -2)", lambda X: np.swapaxes(X, -1, -2)),
    ("swapaxes(X, 1, 1)", lambda X: np.swapaxes(X, 1, 1)),
    ("transpose(swapaxes(X, 0, 1), (2, 1, 0))",
     lambda X: np.transpose(np.swapaxes(X, 0, 1), (2, 1, 0))),
]


@pytest.mark.parametrize("expr, reference", TRANSPOSES, ids=[t[0] for t in TRANSPOSES])
def test_transposes(expr, reference):
    _check(expr, XYZ, SIZES, reference, "X")


def test_transpose_of_a_matrix_and_a_vector():
    A = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(einderiv.compile("A: [n, m]; transpose(A, (1, 0))")(A=A), A.T)
    np.testing.assert_array_equal(einderiv.compile("A: [n, m]; swapaxes(A, 0, 1)")(A=A), A.T)
    x = np.arange(3.0)
    np.testing.assert_array_equal(einderiv.compile("x: [n]; transpose(x, (0,))")(x=x), x)
    np.testing.assert_array_equal(einderiv.compile("x: [n]; transpose(x)")(x=x), x)


@pytest.mark.parametrize("expr, error, message", [
    ("transpose(X, (0, 0, 1))", ShapeError, r"transpose\(\): axis 0 repeats"),
    ("transpose(X, (0, -3, 1))", ShapeError, r"transpose\(\): axis -3 repeats"),
    ("transpose(X, (0, 1))", ShapeError, r"2 axes given for a rank-3 tensor"),
    ("transpose(X, (0, 1, 2, 3))", ShapeError, r"axis 3 is out of bounds for transpose\(\)"),
    ("transpose(X, (0, 1, -4))", ShapeError, r"axis -4 is out of bounds"),
    ("transpose(X, (0, 1.5, 2))", ParseError, r"an axis must be an integer constant"),
    ("transpose(X, (0, 1, 2), (0, 1, 2))", ParseError, r"takes 1 to 2 arguments"),
    ("transpose(X, order=(0, 1, 2))", ParseError, r"unexpected keyword argument 'order'"),
    ("swapaxes(X, 0, 3)", ShapeError, r"axis 3 is out of bounds for swapaxes\(\)"),
    ("swapaxes(X, 0)", ParseError, r"swapaxes\(\) takes 3 arguments, 2 given"),
    ("swapaxes(X, 0, n)", ParseError, r"an axis must be an integer constant"),
    ("swapaxes(X, 0, axis2=1)", ParseError, r"takes no keyword arguments"),
])
def test_transpose_errors(expr, error, message):
    with pytest.raises(error, match=message):
        einderiv.compile(expr, XYZ)
