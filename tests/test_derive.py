"""Derivatives: textbook identities, every function of SPEC §1, the API of SPEC §2, the CLI.

References are independent of einderiv's symbolic machinery: closed forms (Matrix Cookbook
style) computed with numpy, and central finite differences of forward functions written here in
numpy. Only the Hessian tests difference einderiv's own gradient, which the other tests check.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference

ROOT = Path(__file__).resolve().parents[1]

# Concrete sizes of the dimension names below (all different, so a mix-up of axes shows).
SIZES = {"n": 3, "m": 4, "d": 3, "p": 2, "b": 2, "k": 5}

FD_TOL = 1e-6  # finite differences against an exact derivative, relative to its scale
CLOSED_RTOL = 1e-9  # einderiv against a closed form: only rounding differs


# -- helpers ---------------------------------------------------------------------------------------

def concrete(shape):
    return tuple(SIZES[d] if isinstance(d, str) else d for d in shape)


def make_array(rng, shape, kind="normal"):
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":  # inside (-1, 1): tan, arctan away from trouble
        return rng.uniform(-0.9, 0.9, shape)
    if kind == "small":
        return rng.uniform(-0.5, 0.5, shape)
    if kind == "away":  # at least 0.2 from zero: abs, sign, relu away from their kink
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 1.5, shape)
    if kind in ("gridA", "gridB"):  # two grids 0.15 apart: maximum/minimum never tie
        size = int(np.prod(shape))
        values = np.linspace(-1.2, 1.2, size) + (0.15 if kind == "gridB" else 0.0)
        return rng.permutation(values).reshape(shape)
    if kind == "invertible":  # well conditioned square matrices (or stacks of them)
        return rng.standard_normal(shape) + 3.0 * np.eye(shape[-1])
    if kind == "spd":
        a = rng.standard_normal(shape)
        return a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])
    raise ValueError(kind)


def make_arrays(shapes, kinds=None, seed=0):
    rng = np.random.default_rng(seed)
    kinds = kinds or {}
    return {name: make_array(rng, concrete(shape), kinds.get(name, "normal"))
            for name, shape in shapes.items()}


# Central differences of a numpy function f(**arrays): shape f.shape + wrt.shape. The check
# module only evaluates the function it is given, so the reference stays independent.
fd = finite_difference


def assert_fd(actual, expected, tol=FD_TOL):
    """`actual` matches a finite-difference estimate to `tol` relative to the largest entry."""
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return
    assert np.all(np.isfinite(actual)), actual
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err < tol, f"relative error {err:.2e}\nactual\n{actual}\nexpected\n{expected}"


def assert_closed(actual, expected):
    expected = np.asarray(expected, dtype=float)
    assert np.shape(actual) == expected.shape, (np.shape(actual), expected.shape)
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=CLOSED_RTOL,
                               atol=1e-11)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z, axis=-1):
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def logsumexp(z, axis=None):
    m = np.max(z, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def transpose_last(X):
    return np.swapaxes(X, -1, -2)


# -- textbook identities: closed forms and finite differences --------------------------------------

def identity(id, expr, shapes, wrt, forward, closed, kinds=None):
    return pytest.param(expr, shapes, wrt, forward, closed, kinds or {}, id=id)


def _neg_det(rng_seed=3):
    """A well-conditioned matrix with a negative determinant (two rows of one swapped)."""
    X = make_array(np.random.default_rng(rng_seed), (3, 3), "invertible")
    X = X[[1, 0, 2]]
    assert np.linalg.det(X) < 0
    return X


IDENTITIES = [
    identity("tr-AXB", "tr(A @ X @ B)", {"A": ("p", "m"), "X": ("m", "n"), "B": ("n", "p")}, "X",
             lambda A, X, B: np.trace(A @ X @ B), lambda A, X, B: A.T @ B.T),
    identity("quadratic-form", "x @ A @ x", {"x": ("n",), "A": ("n", "n")}, "x",
             lambda x, A: x @ A @ x, lambda x, A: (A + A.T) @ x),
    identity("logdet", "logdet(X)", {"X": ("n", "n")}, "X",
             lambda X: np.linalg.slogdet(X)[1], lambda X: np.linalg.inv(X).T,
             {"X": "invertible"}),
    identity("det", "det(X)", {"X": ("n", "n")}, "X",
             lambda X: np.linalg.det(X), lambda X: np.linalg.det(X) * np.linalg.inv(X).T,
             {"X": "invertible"}),
    identity("inv-weighted", "sum(inv(X) * C)", {"X": ("n", "n"), "C": ("n", "n")}, "X",
             lambda X, C: np.sum(np.linalg.inv(X) * C),
             lambda X, C: -np.linalg.inv(X).T @ C @ np.linalg.inv(X).T, {"X": "invertible"}),
    identity("frobenius-norm", "norm(X)", {"X": ("n", "m")}, "X",
             lambda X: np.linalg.norm(X), lambda X: X / np.linalg.norm(X)),
    identity("vector-norm", "norm(x)", {"x": ("m",)}, "x",
             lambda x: np.linalg.norm(x), lambda x: x / np.linalg.norm(x)),
    identity("bilinear", "a @ X @ b", {"a": ("n",), "X": ("n", "m"), "b": ("m",)}, "X",
             lambda a, X, b: a @ X @ b, lambda a, X, b: np.outer(a, b)),
    identity("softmax-cross-entropy", "-sum(y * log(softmax(W @ x)))",
             {"y": ("k",), "W": ("k", "d"), "x": ("d",)}, "W",
             lambda y, W, x: -np.sum(y * np.log(softmax(W @ x))),
             lambda y, W, x: np.outer(softmax(W @ x) * np.sum(y) - y, x), {"y": "positive"}),
    identity("least-squares", "sum((X @ w - y) ** 2)", {"X": ("k", "d"), "w": ("d",),
                                                       "y": ("k",)}, "w",
             lambda X, w, y: np.sum((X @ w - y) ** 2), lambda X, w, y: 2 * X.T @ (X @ w - y)),
    identity("logistic-regression", "sum(log(1 + exp(-y * (X @ w))))",
             {"X": ("k", "d"), "y": ("k",), "w": ("d",)}, "w",
             lambda X, y, w: np.sum(np.log1p(np.exp(-y * (X @ w)))),
             lambda X, y, w: -X.T @ (y * sigmoid(-y * (X @ w)))),
    identity("tr-XX", "tr(X @ X)", {"X": ("n", "n")}, "X",
             lambda X: np.trace(X @ X), lambda X: 2 * X.T),
    identity("sum-XXT", "sum(X @ X.T)", {"X": ("n", "m")}, "X",
             lambda X: np.sum(X @ X.T), lambda X: 2 * np.ones((X.shape[0],) * 2) @ X),
    identity("tr-XTAX", "tr(X.T @ A @ X)", {"X": ("n", "m"), "A": ("n", "n")}, "X",
             lambda X, A: np.trace(X.T @ A @ X), lambda X, A: (A + A.T) @ X),
    identity("tr-inv", "tr(inv(X))", {"X": ("n", "n")}, "X",
             lambda X: np.trace(np.linalg.inv(X)),
             lambda X: -(np.linalg.inv(X) @ np.linalg.inv(X)).T, {"X": "invertible"}),
    identity("batched-det", "sum(det(T))", {"T": ("b", "n", "n")}, "T",
             lambda T: np.sum(np.linalg.det(T)),
             lambda T: np.linalg.det(T)[:, None, None] * transpose_last(np.linalg.inv(T)),
             {"T": "invertible"}),
    identity("batched-logdet", "sum(logdet(T) * c)", {"T": ("b", "n", "n"), "c": ("b",)}, "T",
             lambda T, c: np.sum(np.linalg.slogdet(T)[1] * c),
             lambda T, c: c[:, None, None] * transpose_last(np.linalg.inv(T)),
             {"T": "invertible"}),
    identity("batched-inv", "sum(inv(T) * C)", {"T": ("b", "n", "n"), "C": ("b", "n", "n")}, "T",
             lambda T, C: np.sum(np.linalg.inv(T) * C),
             lambda T, C: -transpose_last(np.linalg.inv(T)) @ C @ transpose_last(np.linalg.inv(T)),
             {"T": "invertible"}),
]


@pytest.mark.parametrize("expr, shapes, wrt, forward, closed, kinds", IDENTITIES)
def test_identity(expr, shapes, wrt, forward, closed, kinds):
    arrays = make_arrays(shapes, kinds)
    g = einderiv.grad(expr, wrt, shapes)(**arrays)
    assert_closed(g, closed(**arrays))
    assert_fd(g, fd(forward, arrays, wrt))


def test_logistic_regression_with_labels_pm1():
    shapes = {"X": ("k", "d"), "y": ("k",), "w": ("d",)}
    arrays = make_arrays(shapes)
    arrays["y"] = np.array([1.0, -1.0, -1.0, 1.0, 1.0])
    X, y, w = arrays["X"], arrays["y"], arrays["w"]
    expr = "sum(log(1 + exp(-y * (X @ w))))"
    s = sigmoid(X @ w)
    # With y in {-1, 1}: dL/dw = X.T @ (s - (y + 1) / 2), d2L/dw2 = X.T @ diag(s (1 - s)) @ X.
    grad = einderiv.grad(expr, "w", shapes)(**arrays)
    assert_closed(grad, X.T @ (s - (y + 1) / 2))
    hess = einderiv.hessian(expr, "w", shapes)(**arrays)
    assert_closed(hess, X.T @ np.diag(s * (1 - s)) @ X)
    forward_grad = lambda X, y, w: -X.T @ (y * sigmoid(-y * (X @ w)))  # noqa: E731
    assert_fd(hess, fd(forward_grad, arrays, "w"))


@pytest.mark.parametrize("sign", [1, -1], ids=["positive-det", "negative-det"])
def test_logdet_gradient_is_inverse_transpose(sign):
    X = make_array(np.random.default_rng(3), (3, 3), "invertible") if sign > 0 else _neg_det()
    assert np.sign(np.linalg.det(X)) == sign
    shapes = {"X": ("n", "n")}
    g = einderiv.grad("logdet(X)", "X", shapes)(X=X)
    assert_closed(g, np.linalg.inv(X).T)
    assert_fd(g, fd(lambda X: np.linalg.slogdet(X)[1], {"X": X}, "X"))
    value = einderiv.compile("logdet(X)", shapes)(X=X)
    assert_closed(value, np.log(abs(np.linalg.det(X))))


def test_det_gradient_with_negative_determinant():
    X = _neg_det()
    g = einderiv.grad("det(X)", "X", {"X": ("n", "n")})(X=X)
    assert_closed(g, np.linalg.det(X) * np.linalg.inv(X).T)
    assert_fd(g, fd(lambda X: np.linalg.det(X), {"X": X}, "X"))


def test_quadratic_form_hessian():
    shapes = {"x": ("n",), "A": ("n", "n")}
    arrays = make_arrays(shapes)
    H = einderiv.hessian("x @ A @ x", "x", shapes)(**arrays)
    assert_closed(H, arrays["A"] + arrays["A"].T)


def test_least_squares_hessian():
    shapes = {"X": ("k", "d"), "w": ("d",), "y": ("k",)}
    arrays = make_arrays(shapes)
    H = einderiv.hessian("sum((X @ w - y) ** 2)", "w", shapes)(**arrays)
    assert_closed(H, 2 * arrays["X"].T @ arrays["X"])


def test_hessian_of_exp_sum_is_diagonal():
    arrays = make_arrays({"x": ("n",)})
    H = einderiv.hessian("sum(exp(x))", "x", {"x": ("n",)})(**arrays)
    assert_closed(H, np.diag(np.exp(arrays["x"])))


# -- Jacobians -------------------------------------------------------------------------------------

def test_jacobian_of_exp_is_diagonal():
    arrays = make_arrays({"x": ("n",)})
    J = einderiv.jacobian("exp(x)", "x", {"x": ("n",)})
    assert_closed(J(**arrays), np.diag(np.exp(arrays["x"])))
    assert "delta" in J.einstein  # the diagonal stays a Kronecker delta


def test_jacobian_of_matrix_vector_product():
    shapes = {"W": ("m", "n"), "x": ("n",)}
    arrays = make_arrays(shapes)
    assert_closed(einderiv.jacobian("W @ x", "x", shapes)(**arrays), arrays["W"])
    # d (W x)[i] / d W[k, l] = delta[i, k] x[l]
    JW = einderiv.jacobian("W @ x", "W", shapes)(**arrays)
    expected = np.einsum("ik,l->ikl", np.eye(SIZES["m"]), arrays["x"])
    assert_closed(JW, expected)


@pytest.mark.parametrize("expr, axis", [("softmax(x)", -1), ("softmax(x, axis=0)", 0)])
def test_jacobian_of_softmax(expr, axis):
    arrays = make_arrays({"x": ("k",)})
    s = softmax(arrays["x"])
    J = einderiv.jacobian(expr, "x", {"x": ("k",)})(**arrays)
    assert_closed(J, np.diag(s) - np.outer(s, s))
    assert_fd(J, fd(lambda x: softmax(x), arrays, "x"))


def test_jacobian_of_inverse_is_4d():
    shapes = {"X": ("n", "n")}
    arrays = make_arrays(shapes, {"X": "invertible"})
    Xi = np.linalg.inv(arrays["X"])
    J = einderiv.jacobian("inv(X)", "X", shapes)(**arrays)
    assert J.shape == (3, 3, 3, 3)
    assert_closed(J, -np.einsum("ik,lj->ijkl", Xi, Xi))
    assert_fd(J, fd(lambda X: np.linalg.inv(X), arrays, "X"))


def test_jacobian_of_batched_inverse():
    shapes = {"T": ("b", "n", "n")}
    arrays = make_arrays(shapes, {"T": "invertible"})
    J = einderiv.jacobian("inv(T)", "T", shapes)(**arrays)
    assert J.shape == (2, 3, 3, 2, 3, 3)
    assert_fd(J, fd(lambda T: np.linalg.inv(T), arrays, "T"))


def test_jacobian_of_batched_det():
    shapes = {"T": ("b", "n", "n")}
    arrays = make_arrays(shapes, {"T": "invertible"})
    J = einderiv.jacobian("det(T)", "T", shapes)(**arrays)
    assert J.shape == (2, 2, 3, 3)
    assert_fd(J, fd(lambda T: np.linalg.det(T), arrays, "T"))


def test_jacobian_of_scalar_output_is_gradient():
    shapes = {"x": ("n",)}
    arrays = make_arrays(shapes)
    J = einderiv.jacobian("sum(sin(x))", "x", shapes)(**arrays)
    assert_closed(J, np.cos(arrays["x"]))


# -- every function and operator of SPEC §1 --------------------------------------------------------

def fcase(id, expr, shapes, wrt, forward, kinds=None):
    return pytest.param(expr, shapes, wrt, forward, kinds or {}, id=id)


V = {"x": ("n",)}
XY = {"x": ("n",), "y": ("n",)}
MAT = {"X": ("n", "m")}

FUNCTION_CASES = [
    # elementwise functions
    fcase("exp", "exp(x)", V, ["x"], lambda x: np.exp(x)),
    fcase("log", "log(x)", V, ["x"], lambda x: np.log(x), {"x": "positive"}),
    fcase("log1p", "log1p(x)", V, ["x"], lambda x: np.log1p(x), {"x": "positive"}),
    fcase("expm1", "expm1(x)", V, ["x"], lambda x: np.expm1(x)),
    fcase("sqrt", "sqrt(x)", V, ["x"], lambda x: np.sqrt(x), {"x": "positive"}),
    fcase("square", "square(x)", V, ["x"], lambda x: np.square(x)),
    fcase("abs", "abs(x)", V, ["x"], lambda x: np.abs(x), {"x": "away"}),
    fcase("sign", "sign(x) * x", V, ["x"], lambda x: np.sign(x) * x, {"x": "away"}),
    fcase("sin", "sin(x)", V, ["x"], lambda x: np.sin(x)),
    fcase("cos", "cos(x)", V, ["x"], lambda x: np.cos(x)),
    fcase("tan", "tan(x)", V, ["x"], lambda x: np.tan(x), {"x": "unit"}),
    fcase("sinh", "sinh(x)", V, ["x"], lambda x: np.sinh(x)),
    fcase("cosh", "cosh(x)", V, ["x"], lambda x: np.cosh(x)),
    fcase("tanh", "tanh(x)", V, ["x"], lambda x: np.tanh(x)),
    fcase("arctan", "arctan(x)", V, ["x"], lambda x: np.arctan(x)),
    fcase("sigmoid", "sigmoid(x)", V, ["x"], lambda x: sigmoid(x)),
    fcase("relu", "relu(x)", V, ["x"], lambda x: np.maximum(x, 0), {"x": "away"}),
    fcase("softplus", "softplus(x)", V, ["x"], lambda x: np.logaddexp(0, x)),
    fcase("maximum", "maximum(x, y)", XY, ["x", "y"], lambda x, y: np.maximum(x, y),
          {"x": "gridA", "y": "gridB"}),
    fcase("minimum", "minimum(x, y)", XY, ["x", "y"], lambda x, y: np.minimum(x, y),
          {"x": "gridA", "y": "gridB"}),
    fcase("maximum-broadcast", "maximum(X, v)", {"X": ("n", "m"), "v": ("m",)}, ["X", "v"],
          lambda X, v: np.maximum(X, v), {"X": "gridA", "v": "gridB"}),
    fcase("minimum-const", "minimum(x, 0.05)", V, ["x"], lambda x: np.minimum(x, 0.05),
          {"x": "away"}),
    fcase("composed", "tanh(sigmoid(x) * exp(-x * x))", V, ["x"],
          lambda x: np.tanh(sigmoid(x) * np.exp(-x * x))),
    # operators and broadcasting
    fcase("add", "x + y", XY, ["x", "y"], lambda x, y: x + y),
    fcase("sub", "x - y", XY, ["x", "y"], lambda x, y: x - y),
    fcase("mul", "x * y", XY, ["x", "y"], lambda x, y: x * y),
    fcase("div", "x / y", XY, ["x", "y"], lambda x, y: x / y, {"y": "positive"}),
    fcase("pow-variable-exponent", "x ** y", XY, ["x", "y"], lambda x, y: x ** y,
          {"x": "positive"}),
    fcase("pow-const", "x ** 3", V, ["x"], lambda x: x ** 3),
    fcase("pow-negative-exponent", "x ** -1.5", V, ["x"], lambda x: x ** -1.5,
          {"x": "positive"}),
    fcase("pow-const-base", "2 ** x", V, ["x"], lambda x: 2.0 ** x),
    fcase("pow-scalar-exponent", "x ** c", {"x": ("n",), "c": ()}, ["x", "c"],
          lambda x, c: x ** c, {"x": "positive"}),
    fcase("neg-pow", "-x ** 2 + +x", V, ["x"], lambda x: -x ** 2 + x),
    fcase("scalar-broadcast", "c * x + c / 2", {"x": ("n",), "c": ()}, ["x", "c"],
          lambda x, c: c * x + c / 2),
    fcase("row-broadcast", "X * v", {"X": ("n", "m"), "v": ("m",)}, ["X", "v"],
          lambda X, v: X * v),
    fcase("column-broadcast", "u[:, None] * X - X / v", {"X": ("n", "m"), "u": ("n",),
                                                         "v": ("m",)},
          ["X", "u", "v"], lambda X, u, v: u[:, None] * X - X / v, {"v": "positive"}),
    fcase("outer-broadcast", "u[:, None] + v[None, :]", {"u": ("n",), "v": ("m",)},
          ["u", "v"], lambda u, v: u[:, None] + v[None, :]),
    fcase("scalar-to-matrix", "X * 0 + c", {"X": ("n", "m"), "c": ()}, ["c"],
          lambda X, c: X * 0 + c),
    fcase("transpose", "X.T", MAT, ["X"], lambda X: X.T),
    fcase("transpose-vector", "x.T * x", V, ["x"], lambda x: x * x),
    fcase("transpose-3d", "T.T", {"T": ("b", "n", "m")}, ["T"], lambda T: T.T),
    # matmul in every form
    fcase("matmul-mm", "X @ Y", {"X": ("n", "m"), "Y": ("m", "p")}, ["X", "Y"],
          lambda X, Y: X @ Y),
    fcase("matmul-mv", "X @ v", {"X": ("n", "m"), "v": ("m",)}, ["X", "v"],
          lambda X, v: X @ v),
    fcase("matmul-vm", "u @ X", {"X": ("n", "m"), "u": ("n",)}, ["X", "u"],
          lambda X, u: u @ X),
    fcase("matmul-vv", "u @ w", {"u": ("n",), "w": ("n",)}, ["u", "w"], lambda u, w: u @ w),
    fcase("matmul-batched", "T @ S", {"T": ("b", "n", "m"), "S": ("b", "m", "p")}, ["T", "S"],
          lambda T, S: T @ S),
    fcase("matmul-batch-broadcast", "T @ X", {"T": ("b", "p", "n"), "X": ("n", "m")},
          ["T", "X"], lambda T, X: T @ X),
    fcase("matmul-batched-vector", "T @ v", {"T": ("b", "n", "m"), "v": ("m",)}, ["T", "v"],
          lambda T, v: T @ v),
    # indexing and slicing
    fcase("index-row", "X[1]", MAT, ["X"], lambda X: X[1]),
    fcase("index-column", "X[:, -1]", MAT, ["X"], lambda X: X[:, -1]),
    fcase("index-element", "X[2, 1] * X[0, 3]", MAT, ["X"], lambda X: X[2, 1] * X[0, 3]),
    fcase("slice", "X[1:3, :]", MAT, ["X"], lambda X: X[1:3, :]),
    fcase("slice-both", "X[1:, 1:3] * 2", MAT, ["X"], lambda X: X[1:, 1:3] * 2),
    fcase("slice-negative", "x[:-1] * x[1:]", V, ["x"], lambda x: x[:-1] * x[1:]),
    fcase("new-axis", "x[None, :] * x[:, None]", V, ["x"], lambda x: x[None, :] * x[:, None]),
    fcase("index-3d", "T[1, :, 0:2]", {"T": ("b", "n", "m")}, ["T"], lambda T: T[1, :, 0:2]),
    # reductions
    fcase("sum-all", "sum(X * X)", MAT, ["X"], lambda X: np.sum(X * X)),
    fcase("sum-axis0", "sum(X * X, axis=0)", MAT, ["X"], lambda X: np.sum(X * X, axis=0)),
    fcase("sum-axis-neg", "sum(X * X, axis=-1)", MAT, ["X"], lambda X: np.sum(X * X, axis=-1)),
    fcase("sum-axis-tuple", "sum(T ** 2, axis=(0, 2))", {"T": ("b", "n", "m")}, ["T"],
          lambda T: np.sum(T ** 2, axis=(0, 2))),
    fcase("mean-all", "mean(X ** 2)", MAT, ["X"], lambda X: np.mean(X ** 2)),
    fcase("mean-axis", "mean(X ** 2, axis=1)", MAT, ["X"], lambda X: np.mean(X ** 2, axis=1)),
    fcase("mean-axis-tuple", "mean(exp(T), axis=(1, 2))", {"T": ("b", "n", "m")}, ["T"],
          lambda T: np.mean(np.exp(T), axis=(1, 2))),
    fcase("logsumexp-all", "logsumexp(X)", MAT, ["X"], lambda X: logsumexp(X)),
    fcase("logsumexp-axis0", "logsumexp(X, axis=0)", MAT, ["X"], lambda X: logsumexp(X, 0)),
    fcase("logsumexp-axis1", "logsumexp(X, axis=1)", MAT, ["X"], lambda X: logsumexp(X, 1)),
    fcase("logsumexp-axis-tuple", "logsumexp(T, axis=(0, 2))", {"T": ("b", "n", "m")}, ["T"],
          lambda T: logsumexp(T, (0, 2))),
    fcase("softmax-default-axis", "softmax(X)", MAT, ["X"], lambda X: softmax(X, -1)),
    fcase("softmax-axis0", "softmax(X, axis=0)", MAT, ["X"], lambda X: softmax(X, 0)),
    fcase("softmax-axis-tuple", "softmax(T, axis=(0, 2))", {"T": ("b", "n", "m")}, ["T"],
          lambda T: softmax(T, (0, 2))),
    # linear algebra
    fcase("dot-vv", "dot(u, w)", {"u": ("n",), "w": ("n",)}, ["u", "w"],
          lambda u, w: np.dot(u, w)),
    fcase("dot-mv", "dot(X, v)", {"X": ("n", "m"), "v": ("m",)}, ["X", "v"],
          lambda X, v: np.dot(X, v)),
    fcase("dot-mm", "dot(X, Y)", {"X": ("n", "m"), "Y": ("m", "p")}, ["X", "Y"],
          lambda X, Y: np.dot(X, Y)),
    fcase("dot-3d", "dot(T, v)", {"T": ("b", "n", "m"), "v": ("m",)}, ["T", "v"],
          lambda T, v: np.dot(T, v)),
    fcase("dot-scalar", "dot(c, x)", {"c": (), "x": ("n",)}, ["c", "x"],
          lambda c, x: np.dot(c, x)),
    fcase("outer", "outer(u, v)", {"u": ("n",), "v": ("m",)}, ["u", "v"],
          lambda u, v: np.outer(u, v)),
    fcase("diag-vector", "diag(x) @ A", {"x": ("n",), "A": ("n", "m")}, ["x", "A"],
          lambda x, A: np.diag(x) @ A),
    fcase("diag-matrix", "diag(A) * diag(A)", {"A": ("n", "n")}, ["A"],
          lambda A: np.diag(A) * np.diag(A)),
    fcase("tr", "tr(A @ B)", {"A": ("n", "m"), "B": ("m", "n")}, ["A", "B"],
          lambda A, B: np.trace(A @ B)),
    fcase("trace-alias", "trace(A) * trace(A)", {"A": ("n", "n")}, ["A"],
          lambda A: np.trace(A) ** 2),
    fcase("eye-named", "A + eye(n) * c", {"A": ("n", "n"), "c": ()}, ["A", "c"],
          lambda A, c: A + np.eye(3) * c),
    fcase("eye-concrete", "sum(eye(3) * (A @ A))", {"A": (3, 3)}, ["A"],
          lambda A: np.sum(np.eye(3) * (A @ A))),
    fcase("eye-rectangular", "eye(3, 4) * X", {"X": (3, 4)}, ["X"],
          lambda X: np.eye(3, 4) * X),
    fcase("det", "det(A)", {"A": ("n", "n")}, ["A"], lambda A: np.linalg.det(A),
          {"A": "invertible"}),
    fcase("logdet", "logdet(A)", {"A": ("n", "n")}, ["A"], lambda A: np.linalg.slogdet(A)[1],
          {"A": "invertible"}),
    fcase("inv", "inv(A)", {"A": ("n", "n")}, ["A"], lambda A: np.linalg.inv(A),
          {"A": "invertible"}),
    fcase("inv-of-spd-expression", "inv(X @ X.T + eye(n)) @ v",
          {"X": ("n", "m"), "v": ("n",)}, ["X", "v"],
          lambda X, v: np.linalg.inv(X @ X.T + np.eye(3)) @ v),
    fcase("batched-inv", "inv(T)", {"T": ("b", "n", "n")}, ["T"], lambda T: np.linalg.inv(T),
          {"T": "invertible"}),
    fcase("batched-det", "det(T) * logdet(T)", {"T": ("b", "n", "n")}, ["T"],
          lambda T: np.linalg.det(T) * np.linalg.slogdet(T)[1], {"T": "invertible"}),
    fcase("norm-vector", "norm(x)", V, ["x"], lambda x: np.linalg.norm(x)),
    fcase("norm-matrix", "norm(X) * X", MAT, ["X"], lambda X: np.linalg.norm(X) * X),
    # einsum
    fcase("einsum-matmul", 'einsum("ij,jk->ik", X, Y)', {"X": ("n", "m"), "Y": ("m", "p")},
          ["X", "Y"], lambda X, Y: np.einsum("ij,jk->ik", X, Y)),
    fcase("einsum-implicit", 'einsum("ij,jk", X, Y)', {"X": ("n", "m"), "Y": ("m", "p")},
          ["X", "Y"], lambda X, Y: np.einsum("ij,jk", X, Y)),
    fcase("einsum-trace", 'einsum("ii->", A)', {"A": ("n", "n")}, ["A"],
          lambda A: np.einsum("ii->", A)),
    fcase("einsum-diagonal", 'einsum("ii->i", A) * x', {"A": ("n", "n"), "x": ("n",)},
          ["A", "x"], lambda A, x: np.einsum("ii->i", A) * x),
    fcase("einsum-three", 'einsum("i,ij,j->", u, X, v)', {"u": ("n",), "X": ("n", "m"),
                                                         "v": ("m",)},
          ["u", "X", "v"], lambda u, X, v: np.einsum("i,ij,j->", u, X, v)),
    fcase("einsum-transpose-repeat", 'einsum("ij,ij->j", X, X)', MAT, ["X"],
          lambda X: np.einsum("ij,ij->j", X, X)),
    # temporaries and shared subexpressions
    fcase("temporaries", "h = tanh(W @ x + b); sum(h * h) + h @ b",
          {"W": ("m", "n"), "x": ("n",), "b": ("m",)}, ["W", "x", "b"],
          lambda W, x, b: np.sum(np.tanh(W @ x + b) ** 2) + np.tanh(W @ x + b) @ b),
    fcase("inline-declarations", "u: [n]; v: [n]; q = u * v; q * q + u", {}, ["u", "v"],
          lambda u, v: (u * v) ** 2 + u),
]


def _shapes_of(expr, shapes):
    """The shapes to make arrays for: `shapes`, or the inline declarations."""
    if shapes:
        return shapes
    declared = einderiv.compile(expr).lowered.declared
    return {name: tuple(str(d) for d in shape) for name, shape in declared.items()}


@pytest.mark.parametrize("expr, shapes, wrt, forward, kinds", FUNCTION_CASES)
def test_function_jacobian(expr, shapes, wrt, forward, kinds):
    arrays = make_arrays(_shapes_of(expr, shapes), kinds)
    value = einderiv.compile(expr, shapes or None)(**arrays)
    np.testing.assert_allclose(value, forward(**arrays), rtol=1e-10, atol=1e-12)
    for name in wrt:
        J = einderiv.jacobian(expr, name, shapes or None)(**arrays)
        assert_fd(J, fd(forward, arrays, name))
    Js = einderiv.jacobian(expr, wrt, shapes or None)(**arrays)
    assert isinstance(Js, tuple) and len(Js) == len(wrt)
    for name, J in zip(wrt, Js):
        assert J.shape == np.shape(value) + arrays[name].shape


@pytest.mark.parametrize("expr, shapes, wrt, forward, kinds", FUNCTION_CASES)
def test_function_gradient(expr, shapes, wrt, forward, kinds):
    """grad of the output weighted by a random C (a vector-Jacobian product)."""
    shapes = _shapes_of(expr, shapes)
    arrays = make_arrays(shapes, kinds)
    out_shape = einderiv.compile(expr, shapes).shape
    if not all(d.isidentifier() or d.isdigit() for d in out_shape):
        # An output dimension such as n-1 (a slice): give every shape as concrete sizes.
        shapes = {name: concrete(shape) for name, shape in shapes.items()}
        out_shape = einderiv.compile(expr, shapes).shape
    if ";" in expr:
        *head, last = expr.split(";")
        wrapped = ";".join(head) + f"; sum(({last}) * C)"
    else:
        wrapped = f"sum(({expr}) * C)"
    wshapes = {**shapes, "C": tuple(int(d) if d.isdigit() else d for d in out_shape)}
    C = make_array(np.random.default_rng(7), concrete(wshapes["C"]))
    weighted = lambda C, **a: np.sum(forward(**a) * C)  # noqa: E731
    grads = einderiv.grad(wrapped, wrt, wshapes)(**arrays, C=C)
    for name, g in zip(wrt, grads):
        assert g.shape == arrays[name].shape
        assert_fd(g, fd(weighted, {**arrays, "C": C}, name))


SCALAR_CASES = [c for c in FUNCTION_CASES if c.id in {
    "norm-vector", "logdet", "det", "sum-all", "mean-all", "logsumexp-all", "dot-vv",
    "einsum-trace", "einsum-three", "trace-alias", "tr", "index-element", "matmul-vv",
    "eye-concrete", "temporaries"}]


@pytest.mark.parametrize("expr, shapes, wrt, forward, kinds", SCALAR_CASES)
def test_function_hessian(expr, shapes, wrt, forward, kinds):
    """Every Hessian block against finite differences of the (separately checked) gradient."""
    arrays = make_arrays(shapes, kinds)
    H = einderiv.hessian(expr, wrt, shapes)(**arrays)
    assert len(H) == len(wrt) and all(len(row) == len(wrt) for row in H)
    for i, a in enumerate(wrt):
        g = einderiv.grad(expr, a, shapes)
        for j, b in enumerate(wrt):
            assert H[i][j].shape == arrays[a].shape + arrays[b].shape
            assert_fd(H[i][j], fd(g, arrays, b), tol=1e-5)


# -- the API of SPEC §2 ----------------------------------------------------------------------------

MLP = "sum(tanh(W @ x + b))"
MLP_SHAPES = {"W": ("m", "n"), "x": ("n",), "b": ("m",)}


def mlp_grads(W, x, b):
    t = 1 - np.tanh(W @ x + b) ** 2
    return {"W": np.outer(t, x), "x": W.T @ t, "b": t}


def test_gradient_is_shaped_like_wrt():
    arrays = make_arrays(MLP_SHAPES)
    closed = mlp_grads(**arrays)
    for name in MLP_SHAPES:
        g = einderiv.grad(MLP, name, MLP_SHAPES)(**arrays)
        assert isinstance(g, np.ndarray) and g.shape == arrays[name].shape
        assert_closed(g, closed[name])


def test_gradient_with_respect_to_a_scalar():
    shapes = {"x": ("n",), "c": ()}
    arrays = make_arrays(shapes)
    g = einderiv.grad("sum(exp(c * x))", "c", shapes)(x=arrays["x"], c=0.3)
    assert np.shape(g) == ()
    assert_closed(g, np.sum(arrays["x"] * np.exp(0.3 * arrays["x"])))


def test_list_wrt_returns_tuple_in_order():
    arrays = make_arrays(MLP_SHAPES)
    closed = mlp_grads(**arrays)
    order = ["b", "W", "x"]
    grads = einderiv.grad(MLP, order, MLP_SHAPES)(**arrays)
    assert isinstance(grads, tuple) and len(grads) == 3
    for name, g in zip(order, grads):
        assert_closed(g, closed[name])
    single = einderiv.grad(MLP, ["x"], MLP_SHAPES)(**arrays)
    assert isinstance(single, tuple) and len(single) == 1
    assert_closed(single[0], closed["x"])


def test_jacobian_shape_is_output_plus_wrt():
    shapes = {"X": ("k", "d"), "w": ("d",)}
    arrays = make_arrays(shapes)
    JX, Jw = einderiv.jacobian("tanh(X @ w)", ["X", "w"], shapes)(**arrays)
    assert JX.shape == (5, 5, 3) and Jw.shape == (5, 3)
    forward = lambda X, w: np.tanh(X @ w)  # noqa: E731
    assert_fd(JX, fd(forward, arrays, "X"))
    assert_fd(Jw, fd(forward, arrays, "w"))
    M = einderiv.jacobian("X * 2", "X", shapes)(**arrays)
    assert M.shape == (5, 3, 5, 3)
    assert_closed(M, 2 * np.einsum("ik,jl->ijkl", np.eye(5), np.eye(3)))


def test_hessian_shape_is_wrt_plus_wrt():
    shapes = {"X": ("n", "m")}
    arrays = make_arrays(shapes)
    H = einderiv.hessian("sum(X ** 3)", "X", shapes)(**arrays)
    assert H.shape == (3, 4, 3, 4)
    expected = np.einsum("ik,jl->ijkl", np.eye(3), np.eye(4)) * 6 * arrays["X"][:, :, None, None]
    assert_closed(H, expected)


def test_hessian_blocks_for_a_list_of_names():
    arrays = make_arrays(MLP_SHAPES)
    order = ["W", "x", "b"]
    H = einderiv.hessian(MLP, order, MLP_SHAPES)(**arrays)
    assert isinstance(H, tuple) and len(H) == 3
    for i, a in enumerate(order):
        assert isinstance(H[i], tuple) and len(H[i]) == 3
        for j, b in enumerate(order):
            block = H[i][j]
            assert block.shape == arrays[a].shape + arrays[b].shape
            # block [i][j] = d (dL/d a) / d b, differenced from the numpy closed-form gradient
            ref = fd(lambda **kw: mlp_grads(**kw)[a], arrays, b)
            assert_fd(block, ref, tol=1e-5)
    # symmetry of the full Hessian: block [i][j] is block [j][i] transposed
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            ra, rb = arrays[a].ndim, arrays[b].ndim
            perm = tuple(range(rb, rb + ra)) + tuple(range(rb))
            np.testing.assert_allclose(H[i][j], np.transpose(H[j][i], perm), atol=1e-12)


def test_value_and_grad():
    arrays = make_arrays(MLP_SHAPES)
    closed = mlp_grads(**arrays)
    value, g = einderiv.value_and_grad(MLP, "W", MLP_SHAPES)(**arrays)
    assert_closed(value, einderiv.compile(MLP, MLP_SHAPES)(**arrays))
    assert_closed(value, np.sum(np.tanh(arrays["W"] @ arrays["x"] + arrays["b"])))
    assert_closed(g, closed["W"])
    value2, grads = einderiv.value_and_grad(MLP, ["x", "b"], MLP_SHAPES)(**arrays)
    assert_closed(value2, value)
    assert isinstance(grads, tuple) and len(grads) == 2
    assert_closed(grads[0], closed["x"])
    assert_closed(grads[1], closed["b"])


def test_unused_wrt_gives_zeros():
    shapes = {"x": ("n",), "y": ("m",)}
    arrays = make_arrays(shapes)
    gx, gy = einderiv.grad("sum(x * x)", ["x", "y"], shapes)(**arrays)
    assert_closed(gx, 2 * arrays["x"])
    assert gy.shape == (4,) and np.all(gy == 0)
    J = einderiv.jacobian("x * 2", "y", shapes)(**arrays)
    assert J.shape == (3, 4) and np.all(J == 0)
    H = einderiv.hessian("sum(x * x)", ["x", "y"], shapes)(**arrays)
    assert H[0][1].shape == (3, 4) and np.all(H[0][1] == 0)
    assert H[1][1].shape == (4, 4) and np.all(H[1][1] == 0)
    assert_closed(H[0][0], 2 * np.eye(3))


def test_inputs_the_result_does_not_need_may_be_omitted():
    shapes = {"x": ("n",), "y": ("n",)}
    arrays = make_arrays(shapes)
    g = einderiv.grad("sum(x * x) + sum(y)", "x", shapes)
    assert_closed(g(x=arrays["x"]), 2 * arrays["x"])
    assert_closed(g(**arrays), 2 * arrays["x"])
    gy = einderiv.grad("sum(x * x) + sum(y)", "y", shapes)
    assert_closed(gy(y=arrays["y"]), np.ones(3))
    H = einderiv.hessian("sum(x ** 2) * 3 + sum(y)", "x", shapes)
    assert_closed(H(x=arrays["x"]), 6 * np.eye(3))


def test_scalars_as_python_floats():
    shapes = {"x": ("n",), "c": (), "s": ()}
    x = make_arrays({"x": ("n",)})["x"]
    g = einderiv.grad("sum(c * x * x) + s * c", "x", shapes)(x=x, c=1.5, s=2.0)
    assert_closed(g, 3.0 * x)
    gc = einderiv.grad("sum(c * x * x) + s * c", "c", shapes)(x=x, c=1.5, s=2.0)
    assert np.shape(gc) == ()
    assert_closed(gc, np.sum(x * x) + 2.0)
    gs = einderiv.grad("s ** 2 * c", ["s", "c"], {"s": (), "c": ()})(s=3.0, c=np.array(0.5))
    assert_closed(gs[0], 3.0)
    assert_closed(gs[1], 9.0)
    value, g = einderiv.value_and_grad("s ** 3", "s", {"s": ()})(s=2.0)
    assert_closed(value, 8.0)
    assert_closed(g, 12.0)


def test_shared_temporaries_and_inline_declarations():
    expr = "w: [d]; X: [k, d]; z = X @ w; p = sigmoid(z); sum(p * p) + sum(z)"
    arrays = make_arrays({"X": ("k", "d"), "w": ("d",)})
    X, w = arrays["X"], arrays["w"]
    p = sigmoid(X @ w)
    g = einderiv.grad(expr, "w")(**arrays)
    assert_closed(g, X.T @ (2 * p * p * (1 - p) + 1))


def test_derivative_objects_print_einstein():
    g = einderiv.grad("sum(log(1 + exp(-y * (X @ w))))", "w",
                      {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
    assert g.einstein.splitlines()[-1].startswith("dw")
    J = einderiv.jacobian("exp(x)", "x", {"x": ("n",)})
    assert "delta" in J.einstein


def test_repeated_calls_and_different_sizes():
    g = einderiv.grad("sum(x * x) * c", "x", {"x": ("n",), "c": ()})
    for n in (2, 3, 5, 3):
        x = np.arange(n, dtype=float)
        assert_closed(g(x=x, c=2.0), 4 * x)


# -- bad input -------------------------------------------------------------------------------------

def test_grad_of_non_scalar_points_to_jacobian():
    with pytest.raises(einderiv.ShapeError) as info:
        einderiv.grad("W @ x", "x", {"W": ("m", "n"), "x": ("n",)})
    assert "jacobian" in str(info.value)
    for f in (einderiv.hessian, einderiv.value_and_grad):
        with pytest.raises(einderiv.ShapeError):
            f("exp(x)", "x", {"x": ("n",)})


def test_wrt_a_bound_temporary():
    with pytest.raises(einderiv.EinderivError) as info:
        einderiv.grad("h = x * x; sum(h)", "h", {"x": ("n",)})
    assert "h" in str(info.value)


def test_wrt_an_unknown_name_suggests_the_right_one():
    with pytest.raises(einderiv.EinderivError) as info:
        einderiv.grad("sum(weight * x)", "wieght", {"weight": ("n",), "x": ("n",)})
    message = str(info.value)
    assert "did you mean" in message and "weight" in message
    with pytest.raises(einderiv.EinderivError):
        einderiv.jacobian("x * 2", "zzz", {"x": ("n",)})
    with pytest.raises(einderiv.EinderivError):
        einderiv.hessian("sum(x * x)", ["x", "q"], {"x": ("n",)})


def test_missing_shapes():
    with pytest.raises(einderiv.EinderivError):
        einderiv.grad("sum(x * x)", "x")
    with pytest.raises(einderiv.EinderivError):
        einderiv.grad("sum(x * y)", "x", {"x": ("n",)})


@pytest.mark.parametrize("wrt", [3, None, ["x", 1], [], b"x", {"x": 1}, 2.5],
                         ids=["int", "none", "mixed-list", "empty-list", "bytes", "dict", "float"])
def test_non_string_wrt(wrt):
    for f in (einderiv.grad, einderiv.jacobian, einderiv.hessian, einderiv.value_and_grad):
        with pytest.raises(einderiv.EinderivError):
            f("sum(x * x)", wrt, {"x": ("n",)})


def test_bad_expression_for_a_derivative():
    with pytest.raises(einderiv.ParseError):
        einderiv.grad("sum(x *", "x", {"x": ("n",)})
    with pytest.raises(einderiv.ShapeError):
        einderiv.grad("sum(x + y)", "x", {"x": ("n",), "y": ("m",)})
    with pytest.raises(einderiv.EinderivError):
        einderiv.grad(42, "x", {"x": ("n",)})


def test_bad_call_arguments_for_a_derivative():
    g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)})
    with pytest.raises(einderiv.EinderivError):
        g()
    with pytest.raises(einderiv.EinderivError):
        g(x=np.ones(3), q=np.ones(3))
    with pytest.raises(einderiv.ShapeError):
        g(x=np.ones((3, 2)))


# -- command line ----------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "einderiv", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


LOGISTIC_CLI = ["sum(log(1 + exp(-y * (X @ w))))", "--wrt", "w", "--shape", "X=n,d",
                "--shape", "y=n", "--shape", "w=d"]


def test_cli_grad():
    result = run_cli("grad", *LOGISTIC_CLI)  # default format: the vectorized formula
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "Traceback" not in result.stderr
    result = run_cli("grad", *LOGISTIC_CLI, "--format", "einstein")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("dw") for line in result.stdout.splitlines()), result.stdout


def _check_error(stdout: str) -> float:
    """The first number after 'error' on the line that reports the check."""
    lines = [l for l in stdout.splitlines() if "error" in l.lower()]
    assert lines, stdout
    tail = lines[-1][lines[-1].lower().index("error"):]
    number = re.search(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", tail)
    assert number, lines[-1]
    return float(number.group())


@pytest.mark.parametrize("kind, args", [
    ("grad", LOGISTIC_CLI),
    ("grad", ["tr(A @ X @ B)", "--wrt", "X", "--shape", "A=p,m", "--shape", "X=m,n",
              "--shape", "B=n,p"]),
    ("jacobian", ["softmax(x)", "--wrt", "x", "--shape", "x=n"]),
    ("hessian", ["x @ A @ x", "--wrt", "x", "--shape", "A=n,n", "--shape", "x=n"]),
    ("grad", ["sum(W @ x * c)", "--wrt", "W", "--wrt", "c", "--shape", "W=m,n",
              "--shape", "x=n", "--shape", "c="]),
], ids=["grad-logistic", "grad-trace", "jacobian-softmax", "hessian-quadratic", "grad-two"])
def test_cli_check(kind, args):
    result = run_cli(kind, *args, "--check")
    assert result.returncode == 0, result.stderr
    assert _check_error(result.stdout) < 1e-6, result.stdout


def test_cli_grad_of_non_scalar_fails_cleanly():
    result = run_cli("grad", "W @ x", "--wrt", "x", "--shape", "W=m,n", "--shape", "x=n")
    assert result.returncode == 2
    assert "einderiv: error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "jacobian" in result.stderr


def test_cli_unknown_wrt_fails_cleanly():
    result = run_cli("grad", "sum(x * x)", "--wrt", "y", "--shape", "x=n")
    assert result.returncode == 2
    assert "einderiv: error:" in result.stderr
    assert "Traceback" not in result.stderr


# -- regressions -----------------------------------------------------------------------------------

def test_sum_over_a_broadcast_scalar_counts_its_size():
    """A scalar broadcast to a vector and summed again: the sum multiplies by the size
    (build.contract once dropped that factor when it inlined the broadcast)."""
    shapes = {"x": ("n",), "c": ()}
    x = make_arrays({"x": ("n",)})["x"]
    assert_closed(einderiv.compile("sum(x - x + c)", shapes)(x=x, c=0.5), 1.5)
    assert_closed(einderiv.grad("sum(x - c)", "c", shapes)(x=x, c=0.5), -3.0)
    assert_closed(einderiv.grad("sum((x - c) ** 2)", "c", shapes)(x=x, c=0.5),
                  -2 * np.sum(x - 0.5))
    assert_closed(einderiv.hessian("sum((x - c) ** 2)", "c", shapes)(x=x, c=0.5), 6.0)
    assert_closed(einderiv.hessian("mean((x - c) ** 2)", ["x", "c"], shapes)(x=x, c=0.5)[1][1],
                  2.0)


def test_summed_identity_counts_its_size():
    """delta[i,j] summed over both indices, with nothing else carrying them, is n
    (build._eliminate_deltas once dropped it: d tr(S + c)/dc came out 1)."""
    shapes = {"S": ("n", "n"), "c": ()}
    S = make_arrays({"S": ("n", "n")})["S"]
    assert_closed(einderiv.grad("tr(S + c)", "c", shapes)(S=S, c=0.5), 3.0)
    assert_closed(einderiv.grad("sum(eye(n) * c)", "c", shapes)(S=S, c=0.5), 3.0)
    assert_closed(einderiv.grad("tr(S * c)", "c", shapes)(S=S, c=0.5), np.trace(S))
    assert_closed(einderiv.hessian("tr(S + c) ** 2", "c", shapes)(S=S, c=0.5), 18.0)
