"""Shape functions (issue 14, item 1): transpose, swapaxes, concatenate, stack with an axis.

Each is a relabelling or a sum of pads, so its value matches numpy's, its gradient matches finite
differences, the generated code, the IR interpreter and the printed formula compiled back agree,
and no gradient builds a dense selection matrix (`eye(`).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference
from einderiv import EinderivError, ParseError, ShapeError


def _arrays(shapes, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0.5, 1.5, tuple(d if isinstance(d, int) else sizes[d] for d in s))
            for n, s in shapes.items()}


def _all_ways(made, shapes, arrays):
    """The generated code, the IR interpreter, and the printed formula compiled back."""
    again = einderiv.compile(made.formula, shapes)
    return [made(**arrays), made.evaluate_ir(**arrays), again(**arrays)]


def _check(expr, shapes, sizes, reference, wrt, weight="W", weight_shapes=None):
    """expr's value against numpy's `reference`; the gradient of sum(log(1 + expr) * weight)
    by `wrt` against finite differences; every evaluation of both agrees. The weight is W, of
    the result's shape, or an expression of the arrays `weight_shapes` declares (a shape like
    n + 2 cannot be declared)."""
    arrays = _arrays(shapes, sizes)
    value = einderiv.compile(expr, shapes)
    expected = reference(**arrays)
    for got in _all_ways(value, shapes, arrays):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # A nonlinear loss weighted entry by entry, so every entry's place in the result matters.
    if weight_shapes is None:
        weight_shapes = {"W": tuple(d.offset if d.is_concrete else str(d)
                                    for d in value.lowered.root.shape)}
    loss_shapes = {**shapes, **weight_shapes}
    arrays.update(_arrays(weight_shapes, sizes, seed=1))
    loss_text = f"sum(log(1 + {expr}) * {weight})"
    g = einderiv.grad(loss_text, wrt, loss_shapes)
    if "stack(" not in expr:  # stack's formula picks entries with unit vectors, eye(2)[0]
        assert "eye(" not in g.formula and "eye(" not in g.source, g.formula
    fd = finite_difference(einderiv.compile(loss_text, loss_shapes), arrays, wrt)
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


# -- concatenate -----------------------------------------------------------------------------

# (expression, shapes, sizes, numpy, the weight: the same concatenation of arrays of its own)
CONCATENATES = [
    ("concatenate((x, y))", {"x": ("n",), "y": (2,)}, {"n": 3},
     lambda x, y: np.concatenate((x, y)), "concatenate((u, v))"),
    ("concatenate((y, x, y))", {"x": ("n",), "y": (2,)}, {"n": 3},
     lambda x, y: np.concatenate((y, x, y)), "concatenate((v, u, v2))"),
    ("concatenate((x, y), axis=0)", {"x": (3,), "y": (2,)}, {},
     lambda x, y: np.concatenate((x, y)), "concatenate((u, v))"),
    ("concatenate((A, B), axis=1)", {"A": ("k", 3), "B": ("k", "m")}, {"k": 2, "m": 4},
     lambda A, B: np.concatenate((A, B), axis=1), "concatenate((U, V), axis=1)"),
    ("concatenate((A, B), axis=-1)", {"A": ("k", 3), "B": ("k", "m")}, {"k": 2, "m": 4},
     lambda A, B: np.concatenate((A, B), axis=-1), "concatenate((U, V), axis=1)"),
    ("concatenate((A, B, A), axis=0)", {"A": (2, "k"), "B": (1, "k")}, {"k": 3},
     lambda A, B: np.concatenate((A, B, A)), "concatenate((U, V, U2))"),
    ("concatenate((X, 2 * X), axis=-2)", {"X": ("b", 2, "c")}, {"b": 2, "c": 3},
     lambda X: np.concatenate((X, 2 * X), axis=-2), "concatenate((U, V), axis=1)"),
]
@pytest.mark.parametrize("expr, shapes, sizes, reference, weight", CONCATENATES,
                         ids=[c[0] for c in CONCATENATES])
def test_concatenates(expr, shapes, sizes, reference, weight):
    names = tuple(shapes)
    if names == ("x", "y"):
        weights = {"u": shapes["x"], "v": shapes["y"], "v2": shapes["y"]}
    elif names == ("A", "B"):
        weights = {"U": shapes["A"], "V": shapes["B"], "U2": shapes["A"]}
    else:
        weights = {"U": shapes["X"], "V": shapes["X"]}
    weights = {k: v for k, v in weights.items() if k in weight}
    for wrt in names:
        _check(expr, shapes, sizes, reference, wrt, weight, weights)


def test_concatenate_gradient_is_slices():
    # by an operand: a slice of what meets it
    g = einderiv.grad("sum(log(concatenate((y, x, y))) * concatenate((u, x, u)))", "x",
                      {"x": ("n",), "y": (2,), "u": (2,)})
    assert "eye(" not in g.formula
    assert g.formula.splitlines()[-1].endswith(")[2:-2]"), g.formula


@pytest.mark.parametrize("expr, error, message", [
    ("concatenate((x, z))", ShapeError, r"the sizes along axis 0, n \+ m, do not add up to a "
                                        r"dimension"),
    ("concatenate((x, z, x))", ShapeError, r"do not add up to a dimension"),
    ("concatenate((A, x))", ShapeError, r"\[n\] does not match \[2, n\] but along axis 0"),
    ("concatenate((A, A.T), axis=1)", ShapeError, r"does not match \[2, n\] but along axis 1"),
    ("concatenate((A, A), axis=2)", ShapeError, r"axis 2 is out of bounds for concatenate"),
    ("concatenate((A, A), axis=(0, 1))", ParseError, r"takes one axis"),
    ("concatenate(x, x)", ParseError, r"takes a tuple of tensors"),
    ("concatenate((s, s))", ShapeError, r"zero-dimensional"),
    ("concatenate((x, x), dim=0)", ParseError, r"unexpected keyword argument 'dim'"),
])
def test_concatenate_errors(expr, error, message):
    with pytest.raises(error, match=message):
        einderiv.compile(expr, {"x": ("n",), "z": ("m",), "A": (2, "n"), "s": ()})


# -- stack with an axis ----------------------------------------------------------------------

STACKS = [
    ("stack(x, y)", lambda x, y: np.stack((x, y))),
    ("stack((x, y))", lambda x, y: np.stack((x, y))),
    ("stack((x, y, x), axis=1)", lambda x, y: np.stack((x, y, x), axis=1)),
    ("stack((x, y), axis=-1)", lambda x, y: np.stack((x, y), axis=-1)),
    ("stack(x, y, axis=2)", lambda x, y: np.stack((x, y), axis=2)),
]


@pytest.mark.parametrize("expr, reference", STACKS, ids=[s[0] for s in STACKS])
def test_stacks(expr, reference):
    shapes = {"x": ("n", 3), "y": ("n", 3)}
    for wrt in shapes:
        _check(expr, shapes, {"n": 2}, reference, wrt)


@pytest.mark.parametrize("expr, message", [
    ("stack((x, y), axis=3)", r"axis 3 is out of bounds for stack"),
    ("stack((x, y), dim=1)", r"unexpected keyword argument 'dim'"),
])
def test_stack_errors(expr, message):
    with pytest.raises(EinderivError, match=message):
        einderiv.compile(expr, {"x": ("n", 3), "y": ("n", 3)})
