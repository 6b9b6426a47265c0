"""Faults found by using issue 14's language (comparisons, where, argmax, cumsum, steps,
reshape, norms, max/min/prod, solve, matrix_power, ...) as a numpy/JAX user would and then with
hostile inputs. Each test states the right behaviour from an independent reference (exact
integer arithmetic, numpy, the language reference's own claim), and is an expected failure
until the fault is fixed (strict: a fix turns it into an error, so that the marker is removed).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import EinderivError

# -- matrix_power with a negative exponent ----------------------------------------------------
# A = [[2, 1], [1, 1]] has det 1 and the integer inverse [[1, -1], [-1, 2]] (condition number
# 6.9), so A^-k = inv(A)^k is an integer matrix, exact in float64 for these k (numpy's
# matrix_power, which inverts first, returns it exactly). einderiv lowers matrix_power(A, -k)
# to inv(A^k) (lower/calls.py, _matrix_power: `Prim("inv", (_power(x, -k),))`): A^k has
# condition number 6.9^k, so the inverse of the power loses about k * 0.84 digits, and at
# k = 20 numpy reports A^20 singular.

POWER_A = np.array([[2.0, 1.0], [1.0, 1.0]])


def _inverse_power(k: int) -> np.ndarray:
    """inv(POWER_A) ** k in exact integers."""
    inverse = np.array([[1, -1], [-1, 2]], dtype=object)
    result = np.eye(2, dtype=int).astype(object)
    for _ in range(k):
        result = result.dot(inverse)
    return result.astype(float)


@pytest.mark.parametrize("k", [10, 20])
def test_matrix_power_of_a_negative_exponent_inverts_first(k):
    f = einderiv.compile(f"matrix_power(A, {-k})", {"A": ("n", "n")})
    expected = _inverse_power(k)
    np.testing.assert_allclose(np.linalg.matrix_power(POWER_A, -k), expected, rtol=1e-14)
    np.testing.assert_allclose(f(A=POWER_A), expected, rtol=1e-12)


def test_matrix_power_of_a_negative_exponent_gradient():
    k = 15
    g = einderiv.grad(f"tr(matrix_power(A, {-k}))", "A", {"A": ("n", "n")})
    # d tr(A^-k) / dA = -k (A^(-k-1))^T
    np.testing.assert_allclose(g(A=POWER_A), -k * _inverse_power(k + 1).T, rtol=1e-10)


# -- max, min and prod on the torch backend ---------------------------------------------------
# rules/tensor.rules implements max, min and prod as xp.max, xp.min and xp.prod; on torch,
# backends._TorchNumpy forwards them to torch.max / torch.min / torch.prod, whose signatures are
# not numpy's: torch.max(x, axis=None) is refused, torch.max(x, axis=1) returns a
# (values, indices) pair, torch.prod takes one dim only. So every max, min, prod over all axes,
# norm(X, 1) of a matrix and the usual `X - max(X, axis=1)[:, None]` fail on torch (their
# gradients, max_weights and prod_others, run).

TORCH_X = np.array([[1.0, 5.0, 2.0], [4.0, 0.0, 3.0]])


@pytest.mark.parametrize("expr,expected", [
    ("max(X)", lambda X: np.max(X)),
    ("max(X, axis=1)", lambda X: np.max(X, axis=1)),
    ("min(X, axis=0)", lambda X: np.min(X, axis=0)),
    ("min(X, axis=(0, 1))", lambda X: np.min(X)),
    ("prod(X + 1)", lambda X: np.prod(X + 1)),
    ("norm(X, 1)", lambda X: np.linalg.norm(X, 1)),
    ("X - max(X, axis=-1)[:, None]", lambda X: X - np.max(X, axis=-1)[:, None]),
], ids=["max", "max-axis", "min-axis", "min-axes", "prod", "norm1", "centered"])
def test_max_min_prod_on_torch(expr, expected):
    torch = pytest.importorskip("torch")
    f = einderiv.compile(expr, {"X": ("n", "m")}, backend="torch")
    value = f(X=torch.as_tensor(TORCH_X))
    np.testing.assert_allclose(value.numpy(), expected(TORCH_X), rtol=1e-12)


# -- argmax over a nonempty axis of an array with an empty one --------------------------------

@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_along_a_full_axis_of_an_empty_array(name):
    f = einderiv.compile(f"{name}(X, axis=0)", {"X": ("n", "m")})
    X = np.zeros((3, 0))
    expected = getattr(np, name)(X, axis=0).astype(float)  # shape (0,)
    value = f(X=X)
    assert np.shape(value) == expected.shape == (0,)


def test_prod_gradient_along_a_full_axis_of_an_empty_array():
    # kernels.prod_others reshaped to (*rest, -1) as _argbest did: the same fault (the
    # derivative of prod(X, axis=0) of a 3 x 0 X is 3 x 0, as the gradient of an empty sum)
    g = einderiv.grad("sum(prod(X, axis=0))", "X", {"X": ("n", "m")})
    assert np.shape(g(X=np.zeros((3, 0)))) == (3, 0)


# -- dask: a raw ZeroDivisionError -------------------------------------------------------------

def test_concatenate_with_an_empty_operand_on_dask():
    pytest.importorskip("dask.array")
    f = einderiv.compile("x: [n]; y: [0]; concatenate((x, y))", backend="dask")
    x = np.array([1.0, 2.0])
    try:
        value = f(x=x, y=np.zeros(0))
    except EinderivError:
        return  # a clear error is acceptable
    np.testing.assert_array_equal(np.asarray(value.compute()), x)  # numpy's concatenate


# -- the gradient of a solve's column sum is an inverse ---------------------------------------

def test_gradient_of_the_sum_of_a_solve_is_a_solve():
    import scipy.linalg
    g = einderiv.grad("sum(solve(A, b))", "b", {"A": ("n", "n"), "b": ("n",)})
    assert "inv(" not in g.formula
    A = scipy.linalg.hilbert(9)
    value = g(A=A, b=np.ones(9))
    # the gradient is the solution of A^T g = 1; a solve's residual is ~1e-11 here, the
    # inverse's column sums leave ~1e-7
    assert np.max(np.abs(A.T @ value - 1)) < 1e-9


# -- one-axis functions given axis=None, () or several axes -----------------------------------
# lower/calls.py's _concatenate, _stack and _dilate take `_axes(...)[0]`: _axes returns None
# for axis=None (every axis) and () for an empty tuple, so these are a raw TypeError or
# IndexError from the lowering; _stack never checks that one axis is given, so
# stack(..., axis=(0, 1)) is silently a stack on axis 0 (numpy: TypeError).

@pytest.mark.parametrize("expr", [
    "concatenate((A, A), axis=None)",
    "concatenate((A, A), axis=())",
    "stack((A, A), axis=None)",
    "stack((A, A), axis=())",
    "dilate(A, 2, 3, axis=None)",
], ids=["concatenate-None", "concatenate-empty", "stack-None", "stack-empty", "dilate-None"])
def test_one_axis_functions_refuse_no_axis_cleanly(expr):
    A = np.arange(6.0).reshape(2, 3)
    try:
        f = einderiv.compile(expr, {"A": (2, 3)})
    except EinderivError as e:
        assert "^" in str(e)  # a caret under the place
        return
    # numpy's concatenate with axis=None joins the operands flattened
    assert expr.startswith("concatenate((A, A), axis=None)")
    np.testing.assert_array_equal(f(A=A), np.concatenate((A, A), axis=None))


def test_concatenate_with_no_axis_flattens_and_its_gradient_is_slices():
    A, B = np.arange(6.0).reshape(2, 3), np.array([7.0, 8.0])
    shapes = {"A": (2, 3), "B": ("k",), "w": ("k + 6",)}
    f = einderiv.compile("concatenate((A, B), axis=None)", shapes)
    np.testing.assert_array_equal(f(A=A, B=B), np.concatenate((A, B), axis=None))
    w = np.arange(1.0, 9.0)
    g = einderiv.grad("sum(w * concatenate((A, B), axis=None))", "A", shapes)
    np.testing.assert_array_equal(g(A=A, B=B, w=w), w[:6].reshape(2, 3))


def test_stack_refuses_several_axes():
    with pytest.raises(EinderivError):
        einderiv.compile("stack((A, A), axis=(0, 1))", {"A": (2, 3)})
