"""How the generated code multiplies and adds matrices: numpy's dot for products of arrays of one
or two axes (matmul stays for stacks of matrices), and `A.T + A` through kernels.transpose_plus.

Both are speed choices (see generate/python.py and evaluate/kernels.py); these tests hold them
to the values numpy's own operators give, on every backend the code runs on, and at the edges
where the dot or the kernel's fast path must not apply (stack axes, broadcasts, dtypes, sizes).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels

rng = np.random.default_rng(31)


# -- numpy's dot where the operands have one or two axes ---------------------------------------

def test_a_matrix_times_a_vector_is_numpys_dot_with_matmuls_values():
    X, y, w = rng.normal(size=(7, 4)), rng.choice([-1.0, 1.0], size=7), rng.normal(size=4)
    g = einderiv.grad("sum(log(1 + exp(-y * (X @ w))))", "w",
                      {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
    assert "_xp.dot(" in g.source and " @ " not in g.source
    want = -X.T @ (y / (1 + np.exp(y * (X @ w))))
    np.testing.assert_allclose(g(X=X, y=y, w=w), want, rtol=1e-13)
    np.testing.assert_allclose(g.evaluate_ir(X=X, y=y, w=w), want, rtol=1e-13)


def test_stacks_of_matrices_stay_matmul():
    # numpy's dot of 3-D arrays is not matmul's stacked product: a stack must never reach it
    A, B, C = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    g = einderiv.grad("sum((A @ B - C) ** 2)", ["A", "B"],
                      {"A": ("b", "n", "k"), "B": ("b", "k", "m"), "C": ("b", "n", "m")})
    assert "_xp.dot(" not in g.source
    R = 2 * (A @ B - C)
    dA, dB = g(A=A, B=B, C=C)
    np.testing.assert_allclose(dA, R @ B.swapaxes(-1, -2), rtol=1e-12)
    np.testing.assert_allclose(dB, A.swapaxes(-1, -2) @ R, rtol=1e-12)


_A, _x, _M, _v = (rng.normal(size=(3, 4, 5)), rng.normal(size=5), rng.normal(size=(5, 2)),
                  rng.normal(size=4))


@pytest.mark.parametrize("expr, wrt, want", [
    # a stack on the left, a vector on the right
    ("sum(A @ x)", "x", _A.sum(axis=(0, 1))),
    # a stack on the left, a matrix on the right
    ("sum(A @ M)", "M", np.repeat(_A.sum(axis=(0, 1))[:, None], 2, axis=1)),
    # a vector on the left of a stack
    ("sum((v @ A) ** 2)", "v", sum(2 * _A[b] @ (_v @ _A[b]) for b in range(3))),
])
def test_a_stack_on_one_side_only_is_matmul_and_right(expr, wrt, want):
    arrays = {"A": _A, "x": _x, "M": _M, "v": _v}
    g = einderiv.grad(expr, wrt, {"A": ("b", "n", "m"), "x": ("m",), "M": ("m", "k"),
                                  "v": ("n",)})
    used = {k: v for k, v in arrays.items() if k in expr}
    np.testing.assert_allclose(g(**used), want, rtol=1e-12)
    np.testing.assert_allclose(g.evaluate_ir(**used), want, rtol=1e-12)


def test_dot_on_strided_and_transposed_operands():
    # the gradient's products read slices and transposes of the inputs (views, not copies)
    X = rng.normal(size=(9, 12))[:, ::2]
    W = np.asfortranarray(rng.normal(size=(6, 6)))
    g = einderiv.grad("sum(tanh(X @ W) ** 2)", "W", {"X": ("n", "d"), "W": ("d", "d")})
    T = np.tanh(X @ W)
    np.testing.assert_allclose(g(X=X, W=W), X.T @ (2 * T * (1 - T ** 2)), rtol=1e-12)


def test_torch_backend_takes_the_dot_as_its_matmul():
    torch = pytest.importorskip("torch")
    X, w = rng.normal(size=(6, 3)), rng.normal(size=3)
    g = einderiv.grad("sum((X @ w) ** 2)", "w", {"X": ("n", "d"), "w": ("d",)},
                      backend="torch")
    got = g(X=torch.as_tensor(X), w=torch.as_tensor(w))
    np.testing.assert_allclose(got.numpy(), 2 * X.T @ (X @ w), rtol=1e-12)


# -- A.T + A: kernels.transpose_plus ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (100, 100), (30, 7), (7, 30)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transpose_plus_is_numpys_sum_bit_for_bit(shape, dtype):
    a = rng.normal(size=shape).astype(dtype)
    b = rng.normal(size=shape[::-1]).astype(dtype)
    for x, y in ((a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b))):
        got = kernels.transpose_plus(x, y)
        want = x.T + y
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
        assert not np.shares_memory(got, x) and not np.shares_memory(got, y)
    square = rng.normal(size=(shape[0], shape[0])).astype(dtype)
    assert np.array_equal(kernels.transpose_plus(square, square), square + square.T)


@pytest.mark.parametrize("a, b", [
    (np.ones((3, 4), np.float32), np.ones((4, 3), np.float64)),   # mixed dtypes: promoted
    (np.arange(12.0).reshape(3, 4), np.arange(3.0)),              # a broadcast row
    (np.arange(12).reshape(3, 4), np.arange(12).reshape(4, 3)),   # integers
    (np.ones((2, 3, 4)), np.ones((4, 3, 2))),                     # .T of 3 axes reverses them
    (np.ones((3, 4)), 2.0),                                       # a Python number
    (np.ones(4), np.ones(4)),                                     # a vector's .T is itself
])
def test_transpose_plus_takes_numpys_sum_for_anything_else(a, b):
    got, want = kernels.transpose_plus(a, b), a.T + b
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_transpose_plus_past_its_size_bound_and_with_nan_and_inf():
    n = int(np.sqrt(kernels._TRANSPOSE_COPIED)) + 1  # past the bound: numpy's sum itself
    a = rng.normal(size=(n, n))
    assert np.array_equal(kernels.transpose_plus(a, a), a.T + a)
    b = np.array([[np.inf, 1.0], [np.nan, -np.inf]])
    assert np.array_equal(kernels.transpose_plus(b, b), b.T + b, equal_nan=True)


def test_the_hessian_of_a_quadratic_form_is_the_transpose_sum():
    for A in (rng.normal(size=(6, 6)), np.asfortranarray(rng.normal(size=(6, 6))),
              rng.normal(size=(6, 6)).astype(np.float32)):
        x = np.ones(6, A.dtype)
        H = einderiv.hessian("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)})
        assert "transpose_plus" in H.source
        got = H(A=A, x=x)
        assert got.dtype == A.dtype
        assert np.array_equal(got, A + A.T)
        assert not np.shares_memory(got, A)
        got[0, 0] = 123.0  # the caller's own array
        assert np.array_equal(H(A=A, x=x), A + A.T)
