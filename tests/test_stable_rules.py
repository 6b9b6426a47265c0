"""Stable derivative rules and kinks by one convention (issue 12, items 2 and 3).

Each example of the issue with its right value, then the same kind of input elsewhere: float32,
stacks of matrices, empty arrays. Every result made here is also checked by conftest: its formula
parses back and evaluates to the same values, and the generated code agrees with the IR
interpreter; `evaluate_ir` is compared here too where the select or guard is the point.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv

INF = np.inf
VEC = {"x": ("n",)}


def close(actual, expected, rtol=1e-12, atol=1e-12):
    actual = np.asarray(actual)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def both_paths(result, **arrays):
    """The generated code's value, after checking that the IR interpreter gives the same."""
    value = result(**arrays)
    close(result.evaluate_ir(**arrays), value, rtol=1e-6 if value.dtype == np.float32 else 1e-12)
    return value


def cofactors(X: np.ndarray) -> np.ndarray:
    """The cofactor matrix from its definition, by minors (independent of any inverse)."""
    n = X.shape[0]
    C = np.empty_like(X)
    for i in range(n):
        for j in range(n):
            minor = np.delete(np.delete(X, i, axis=0), j, axis=1)
            C[i, j] = (-1) ** (i + j) * (np.linalg.det(minor) if n > 1 else 1.0)
    return C


def second_cofactors(X: np.ndarray) -> np.ndarray:
    """d2 det(X) / dX[i,j] dX[k,l] from its definition: X[k,l] in the minor of X[i,j] is the
    entry (k', l') of that minor, so the value is that minor's cofactor of (k', l'), a signed
    minor of X without rows i, k and columns j, l; 0 where i == k or j == l."""
    n = X.shape[0]
    H = np.zeros((n, n, n, n))
    for i, j, k, l in np.ndindex(n, n, n, n):
        if i != k and j != l:
            rest = np.delete(np.delete(X, [i, k], axis=0), [j, l], axis=1)
            kk, ll = k - (k > i), l - (l > j)
            H[i, j, k, l] = (-1) ** (i + j + kk + ll) * (np.linalg.det(rest) if n > 2 else 1.0)
    return H


# -- softmax's -inf guard ----------------------------------------------------------------------

def test_logsumexp_gradient_at_all_minus_inf_is_zero():
    g = einderiv.grad("logsumexp(x)", "x", VEC)
    close(both_paths(g, x=np.array([-INF, -INF])), [0.0, 0.0])


def test_logsumexp_value_and_gradient_at_other_infinite_inputs():
    vg = einderiv.value_and_grad("logsumexp(x)", "x", VEC)
    value, g = vg(x=np.array([-INF, -INF]))
    assert value == -INF
    close(g, [0.0, 0.0])
    value, g = vg(x=np.array([-INF, 2.0]))
    assert value == 2.0
    close(g, [0.0, 1.0])
    value, g = vg(x=np.array([INF, 0.0, INF]))  # the +inf entries share the mass
    assert value == INF
    close(g, [0.5, 0.0, 0.5])


def test_logsumexp_gradient_by_rows_with_an_all_minus_inf_row_float32():
    g = einderiv.grad("sum(logsumexp(X, axis=1))", "X", {"X": ("m", "n")})
    X = np.array([[-INF, -INF, -INF], [0.0, 0.0, 1000.0], [1.0, 1.0, -INF]], np.float32)
    out = both_paths(g, X=X)
    assert out.dtype == np.float32
    close(out, [[0, 0, 0], [0, 0, 1], [0.5, 0.5, 0]], rtol=1e-6)


def test_softmax_and_its_jacobian_at_all_minus_inf():
    f = einderiv.compile("softmax(x)", VEC)
    close(f(x=np.array([-INF, -INF, -INF])), [0.0, 0.0, 0.0])
    close(f(x=np.array([-1000.0, -1000.0])), [0.5, 0.5])  # finite: the ordinary softmax
    J = einderiv.jacobian("softmax(x)", "x", VEC)
    close(both_paths(J, x=np.array([-INF, -INF])), np.zeros((2, 2)))


def test_logsumexp_hessian_at_all_minus_inf_is_zero():
    H = einderiv.hessian("logsumexp(x)", "x", VEC)
    close(H(x=np.array([-INF, -INF])), np.zeros((2, 2)))


def test_softmax_of_no_entries():
    g = einderiv.grad("logsumexp(x)", "x", VEC)
    assert g(x=np.zeros(0)).shape == (0,)


# -- det through the adjugate ------------------------------------------------------------------

MAT = {"X": ("n", "n")}


def test_det_gradient_at_a_singular_matrix_is_the_cofactor_matrix():
    g = einderiv.grad("det(X)", "X", MAT)
    close(both_paths(g, X=np.array([[1.0, 2.0], [2.0, 4.0]])), [[4, -2], [-2, 1]], atol=1e-14)


@pytest.mark.parametrize("X", [
    np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),   # rank 2
    np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 5.0]]),   # a zero row
    np.outer([1.0, 2.0, -1.0], [3.0, 1.0, 2.0]),                     # rank 1: adj(X) = 0
    np.zeros((3, 3)),
    np.array([[2.0, -1.0, 0.5], [0.3, 1.0, 4.0], [-2.0, 0.0, 1.0]]),  # regular
], ids=["rank2", "zero-row", "rank1", "zero", "regular"])
def test_det_gradient_is_the_cofactor_matrix_3x3(X):
    g = einderiv.grad("det(X)", "X", MAT)
    close(both_paths(g, X=X), cofactors(X), atol=1e-13)


def test_det_gradient_of_a_stack_singular_and_regular_float32():
    g = einderiv.grad("sum(det(X))", "X", {"X": ("b", "n", "n")})
    X = np.array([[[1.0, 2.0], [2.0, 4.0]], [[3.0, 1.0], [-1.0, 2.0]], [[0, 0], [0, 0]]])
    expected = [[[4, -2], [-2, 1]], [[2, 1], [-1, 3]], [[0, 0], [0, 0]]]
    close(both_paths(g, X=X), expected, atol=1e-14)
    out = both_paths(g, X=X.astype(np.float32))
    assert out.dtype == np.float32
    close(out, expected, rtol=1e-5, atol=1e-5)


def test_det_gradient_of_small_matrices():
    g = einderiv.grad("det(X)", "X", MAT)
    close(g(X=np.array([[0.0]])), [[1.0]])  # det([[a]]) = a, singular at 0 too
    close(g(X=np.array([[5.0]])), [[1.0]])
    assert g(X=np.zeros((0, 0))).shape == (0, 0)


def test_adj_is_a_function_of_the_language():
    f = einderiv.compile("adj(X)", MAT)
    close(f(X=np.array([[1.0, 2.0], [2.0, 4.0]])), [[4, -2], [-2, 1]], atol=1e-14)
    X = np.array([[2.0, -1.0, 0.5], [0.3, 1.0, 4.0], [-2.0, 0.0, 1.0]])
    close(f(X=X), np.linalg.det(X) * np.linalg.inv(X))


SINGULAR = {
    "singular_2x2": np.array([[1.0, 2.0], [2.0, 4.0]]),
    "rank2": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),
    "zero-row": np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 5.0]]),
    "rank1": np.outer([1.0, 2.0, -1.0], [3.0, 1.0, 2.0]),
    "zero": np.zeros((3, 3)),
    "rank2_4x4": (np.outer([1.0, 0, 2, -1], [1.0, 1, 0, 2])
                  + np.outer([0.0, 1, 1, 0], [3.0, 0, 1, 1])),
    "regular": np.array([[2.0, -1.0, 0.5], [0.3, 1.0, 4.0], [-2.0, 0.0, 1.0]]),
}


@pytest.mark.parametrize("X", SINGULAR.values(), ids=SINGULAR)
def test_det_hessian_is_the_second_cofactors(X):
    """Exact at any rank: the second cofactors are a polynomial (products of singular values
    in det_hessian's kernel, no inverse)."""
    H = einderiv.hessian("det(X)", "X", MAT)
    assert H.formula == "det_hessian(X)"
    close(both_paths(H, X=X), second_cofactors(X), atol=1e-13)


def test_det_hessian_of_a_stack_singular_and_regular_float32():
    H = einderiv.hessian("sum(det(X))", "X", {"X": ("b", "n", "n")})
    X = np.stack([SINGULAR["rank2"], SINGULAR["regular"], SINGULAR["zero"]])
    expected = np.zeros((3, 3, 3, 3, 3, 3))
    for b in range(3):  # no second derivative across two matrices of the stack
        expected[b, :, :, b] = second_cofactors(X[b])
    close(both_paths(H, X=X), expected, atol=1e-13)
    out = both_paths(H, X=X.astype(np.float32))
    assert out.dtype == np.float32
    close(out, expected, rtol=1e-5, atol=1e-5)


def test_det_hessian_of_small_matrices():
    H = einderiv.hessian("det(X)", "X", MAT)
    close(both_paths(H, X=np.array([[0.0]])), np.zeros((1, 1, 1, 1)))  # det is linear
    assert H(X=np.zeros((0, 0))).shape == (0, 0, 0, 0)
    assert H.evaluate_ir(X=np.zeros((0, 0))).shape == (0, 0, 0, 0)


def test_adj_jacobian_at_a_singular_matrix():
    """d adj(X)[i,j] / dX[k,l] is the second cofactor of (j, i), (k, l)."""
    J = einderiv.jacobian("adj(X)", "X", MAT)
    X = SINGULAR["rank1"]
    close(both_paths(J, X=X), second_cofactors(X).transpose(1, 0, 2, 3), atol=1e-13)


def test_det_hessian_is_a_function_of_the_language():
    f = einderiv.compile("det_hessian(X)", {"X": ("b", "n", "n")})
    X = np.stack([SINGULAR["singular_2x2"], np.eye(2)])
    close(f(X=X), np.stack([second_cofactors(x) for x in X]), atol=1e-14)
    with pytest.raises(einderiv.ShapeError, match="takes a square matrix"):
        einderiv.compile("det_hessian(X)", {"X": ("n", "m")})


def test_det_third_derivative_at_a_regular_matrix():
    """det_hessian's own rule (det_third(X), exact at any X): the gradient of a weighted sum of
    det's second derivatives against finite differences."""
    shapes = {"X": ("n", "n"), "C": ("n", "n", "n", "n")}
    g = einderiv.grad("sum(det_hessian(X) * C)", "X", shapes)
    rng = np.random.default_rng(4)
    X, C = SINGULAR["regular"], rng.normal(size=(3, 3, 3, 3))
    f = einderiv.compile("sum(det_hessian(X) * C)", shapes)
    h = 1e-6
    numeric = np.zeros((3, 3))
    for p, q in np.ndindex(3, 3):
        E = np.zeros((3, 3))
        E[p, q] = h
        numeric[p, q] = (f(X=X + E, C=C) - f(X=X - E, C=C)) / (2 * h)
    close(both_paths(g, X=X, C=C), numeric, rtol=1e-7, atol=1e-7)


def test_det_hessian_at_regular_matrices():
    H = einderiv.hessian("det(X)", "X", MAT)
    # det of 2x2 is x00 x11 - x01 x10: the Hessian is constant
    expected = np.zeros((2, 2, 2, 2))
    expected[0, 0, 1, 1] = expected[1, 1, 0, 0] = 1.0
    expected[0, 1, 1, 0] = expected[1, 0, 0, 1] = -1.0
    close(H(X=np.array([[3.0, 1.0], [-1.0, 2.0]])), expected, atol=1e-14)
    X = np.array([[2.0, -1.0, 0.5], [0.3, 1.0, 4.0], [-2.0, 0.0, 1.0]])
    d, A = np.linalg.det(X), np.linalg.inv(X)
    # d2 det / dX[i,j] dX[k,l] = det (inv[j,i] inv[l,k] - inv[l,i] inv[j,k])
    expected = d * (np.einsum("ji,lk->ijkl", A, A) - np.einsum("li,jk->ijkl", A, A))
    close(H(X=X), expected, rtol=1e-10, atol=1e-12)


# -- a ** b by b where a == 0 ------------------------------------------------------------------

POW = {"a": ("n",), "b": ("n",)}


def test_power_gradient_by_the_exponent_at_a_zero_base():
    g = einderiv.grad("sum(a ** b)", "b", POW)
    close(both_paths(g, a=np.array([0.0, 2.0]), b=np.array([1.0, 1.0])), [0.0, 2 * np.log(2)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_power_gradient_by_the_exponent_elsewhere(dtype):
    g = einderiv.grad("sum(a ** b)", "b", POW)
    a = np.array([0.0, 0.0, 0.5, 3.0], dtype)
    b = np.array([0.5, 2.0, 1.5, -1.0], dtype)
    out = both_paths(g, a=a, b=b)
    assert out.dtype == dtype
    expected = np.array([0.0, 0.0, np.log(0.5) * 0.5 ** 1.5, np.log(3.0) / 3.0])
    close(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    scalar = einderiv.grad("sum(a ** b)", "b", {"a": ("n",), "b": ()})
    close(scalar(a=np.array([0.0, 2.0]), b=1.0), 2 * np.log(2))


def test_power_derivatives_by_the_base_at_a_zero_base():
    g = einderiv.grad("sum(a ** b)", "a", POW)
    out = both_paths(g, a=np.zeros(3), b=np.array([0.0, 1.0, 2.0]))
    assert out.tolist() == [0.0, 1.0, 0.0]  # a ** 0 is 1 for every a: 0, not 0 * inf
    assert g(a=np.zeros(1), b=np.array([0.5]))[0] == INF  # sqrt's derivative at 0
    H = einderiv.hessian("sum(a ** b)", "a", POW)
    # b * (b - 1) * a ** (b - 2): 0 where b == 1 (a ** 1 is a), 2 where b == 2, 0 where b == 3
    close(both_paths(H, a=np.zeros(3), b=np.array([1.0, 2.0, 3.0])), np.diag([0.0, 2.0, 0.0]))


def test_power_of_a_constant_base_reads_as_before():
    g = einderiv.grad("sum(2 ** x)", "x", VEC)
    assert "where" not in g.formula, g.formula
    close(g(x=np.array([0.0, 1.0])), [np.log(2), 2 * np.log(2)])
    g = einderiv.grad("sum(x ** 3)", "x", VEC)  # a constant exponent: no select either
    assert g.formula == "3 * x ** 2", g.formula


# -- a masked product is a select --------------------------------------------------------------

def test_sqrt_of_relu_gradient_is_zero_where_relu_is_flat():
    g = einderiv.grad("sum(sqrt(relu(x)))", "x", VEC)
    close(both_paths(g, x=np.array([-1.0, 4.0])), [0.0, 0.25])
    assert "where(step(x)" in g.formula, g.formula


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sqrt_of_relu_gradient_at_zero_and_in_float32(dtype):
    g = einderiv.grad("sum(sqrt(relu(x)))", "x", VEC)
    out = both_paths(g, x=np.array([-3.0, 0.0, 1.0, 4.0], dtype))
    assert out.dtype == dtype
    close(out, [0.0, 0.0, 0.5, 0.25])  # relu'(0) = 0, as JAX and PyTorch
    assert g(x=np.zeros(0, dtype)).shape == (0,)


def test_sqrt_of_relu_jacobian_and_hessian():
    x = np.array([-1.0, 4.0])
    J = einderiv.jacobian("sqrt(relu(x))", "x", VEC)
    close(both_paths(J, x=x), np.diag([0.0, 0.25]))
    H = einderiv.hessian("sum(sqrt(relu(x)))", "x", VEC)
    close(both_paths(H, x=x), np.diag([0.0, -1 / 32]))  # -x ** -1.5 / 4 at 4


def test_masked_products_of_other_kinks():
    x = np.array([-1.0, 0.0, 4.0])
    g = einderiv.grad("sum(sqrt(maximum(x, 0)))", "x", VEC)
    close(both_paths(g, x=np.array([-1.0, 4.0])), [0.0, 0.25])
    g = einderiv.grad("sum(sqrt(-minimum(x, 0)))", "x", VEC)
    close(both_paths(g, x=np.array([-4.0, 1.0])), [-0.25, 0.0])
    # a product the user wrote: step(x) is 0 at x <= 0, where sqrt's derivative is inf
    g = einderiv.grad("sum(sqrt(step(x) * x))", "x", VEC)
    close(both_paths(g, x=x), [0.0, 0.0, 0.25])
    # abs'(0) = sign(0) = 0 by the convention, a 0 that stays 0 against sqrt's inf
    g = einderiv.grad("sum(sqrt(abs(x)))", "x", VEC)
    close(both_paths(g, x=x), [-0.5, 0.0, 0.25])


def test_masked_product_through_a_layer_and_a_matrix():
    shapes = {"W": ("m", "n"), "x": ("n",)}
    g = einderiv.grad("sum(sqrt(relu(W @ x)))", "W", shapes)
    W, x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]), np.array([4.0, 2.0])
    u = W @ x  # [4, -4, 4]
    expected = np.outer(np.where(u > 0, 0.5 / np.sqrt(np.maximum(u, 1)), 0.0), x)
    close(both_paths(g, W=W, x=x), expected)


def test_a_product_of_finite_factors_stays_a_product():
    J = einderiv.jacobian("relu(x)", "x", VEC)
    assert J.formula == "diag(step(x))"
    g = einderiv.grad("sum(relu(x) * w)", "x", {"x": ("n",), "w": ("n",)})
    assert "where" not in g.formula, g.formula


def test_where_is_a_function_of_the_language():
    f = einderiv.compile("where(c, a, b)", {"c": ("n",), "a": ("n",), "b": ("n",)})
    out = f(c=np.array([0.0, 2.0, -1.0]), a=np.array([INF, 1.0, 2.0]), b=np.array([5.0, 6, 7]))
    close(out, [5.0, 1.0, 2.0])
    g = einderiv.grad("sum(where(c, a * a, b))", ["a", "b"],
                      {"c": ("n",), "a": ("n",), "b": ("n",)})
    da, db = g(c=np.array([0.0, 2.0]), a=np.array([3.0, 3.0]), b=np.array([1.0, 1.0]))
    close(da, [0.0, 6.0])
    close(db, [1.0, 0.0])


# -- norm at zero ------------------------------------------------------------------------------

def test_norm_gradient_at_zero_is_the_zero_subgradient():
    g = einderiv.grad("norm(x)", "x", VEC)
    close(both_paths(g, x=np.zeros(3)), np.zeros(3))
    close(g(x=np.array([3.0, 4.0])), [0.6, 0.8])


def test_norm_of_a_residual_at_an_exact_fit():
    shapes = {"A": ("m", "n"), "X": ("n", "k"), "B": ("m", "k")}
    g = einderiv.grad("norm(A @ X - B)", "X", shapes)
    A = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    X = np.array([[1.0, -2.0], [0.5, 4.0]])
    close(both_paths(g, A=A, X=X, B=A @ X), np.zeros((2, 2)))
    B = A @ X
    B[0, 0] += 3.0  # a residual of norm 3, in one entry: -3
    close(g(A=A, X=X, B=B), -np.outer(A[0], [1.0, 0.0]))


def test_norm_gradient_float32_matrix_and_rows():
    g = einderiv.grad("norm(X)", "X", {"X": ("m", "n")})
    out = both_paths(g, X=np.zeros((2, 3), np.float32))
    assert out.dtype == np.float32
    close(out, np.zeros((2, 3)))
    g = einderiv.grad("sum(norm(X, axis=1))", "X", {"X": ("m", "n")})
    close(both_paths(g, X=np.array([[0.0, 0.0], [3.0, -4.0]])), [[0, 0], [0.6, -0.8]])


def test_norm_value_does_not_overflow_and_of_a_scalar_and_of_nothing():
    f = einderiv.compile("norm(x)", VEC)
    close(f(x=np.array([3e200, 4e200])), 5e200, rtol=1e-15)
    close(f(x=np.array([3e-200, 4e-200])), 5e-200, rtol=1e-15, atol=0)
    assert f(x=np.array([INF, 1.0])) == INF
    assert f(x=np.zeros(0)) == 0.0
    c = {"c": ()}
    close(einderiv.compile("norm(c)", c)(c=-2.0), 2.0)
    close(einderiv.grad("norm(c)", "c", c)(c=-2.0), -1.0)
    close(einderiv.grad("norm(c)", "c", c)(c=0.0), 0.0)
    assert einderiv.grad("norm(x)", "x", VEC)(x=np.zeros(0)).shape == (0,)


def test_norm_hessian_at_a_regular_point():
    H = einderiv.hessian("norm(x)", "x", VEC)
    x = np.array([1.0, -2.0, 2.0])
    r = np.linalg.norm(x)
    close(H(x=x), (np.eye(3) - np.outer(x, x) / r ** 2) / r)


# -- softplus's Hessian ------------------------------------------------------------------------

def test_softplus_hessian_is_finite_at_800():
    H = einderiv.hessian("sum(softplus(u))", "u", {"u": ("n",)})
    assert H.formula == "diag(dsigmoid(u))"  # sigmoid'(u), exact at every u
    u = np.array([-800.0, -30.0, 0.0, 800.0])
    s = 1 / (1 + np.exp(30.0))
    close(both_paths(H, u=u), np.diag([0.0, s * (1 - s), 0.25, 0.0]), atol=1e-300)
    out = H(u=np.array([-100.0, 0.0, 100.0], np.float32))
    assert out.dtype == np.float32
    close(out, np.diag([0.0, 0.25, 0.0]), atol=1e-30)


# -- the sigmoid family's kernels: exact down to the subnormals, on every array library ---------

# Per function and dtype: ordinary points, where 1 - sigmoid and 1 - tanh ** 2 would cancel,
# where sigmoid(-x) and sech2(x) are subnormal, and where they underflow to 0 (past the
# overflow of exp and cosh).
FAMILY_X = {
    "sigmoid": {np.float64: [0.0, 1e-8, -1.0, 30.0, -100.0, 709.0, 720.0, -740.0, 800.0, INF,
                             -INF],
                np.float32: [0.0, 1e-8, -1.0, 30.0, -50.0, 88.0, 95.0, -103.0, 110.0, INF,
                             -INF]},
    "sech2": {np.float64: [0.0, 1e-8, -1.0, 30.0, -100.0, 360.0, -370.0, 720.0, INF, -INF],
              np.float32: [0.0, 1e-8, -1.0, 30.0, -45.0, 50.0, 95.0, INF, -INF]},
    # sigmoid's derivative, e^-|x| from |x| = 40 on: subnormal from 709 (88), 0 past 745
    # (104) and where cosh(x / 2) overflows (past 1420, 178)
    "dsigmoid": {np.float64: [0.0, 1e-8, -1.0, 30.0, -100.0, 720.0, -740.0, 800.0, 1500.0,
                              INF, -INF],
                 np.float32: [0.0, 1e-8, -1.0, 30.0, -50.0, 95.0, -103.0, 110.0, 200.0, INF,
                              -INF]}}


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "cupy", "dask"])
@pytest.mark.parametrize("name", ["sigmoid", "sech2", "dsigmoid"])
def test_sigmoid_and_sech2_kernels_down_to_the_subnormals(name, backend):
    """Exact to a few ulps, and absolutely below the smallest normal number (subnormals have
    fewer bits): scipy's expit, numpy's fast path, is 0 where exp(-x) overflows, where
    sigmoid(x) is still subnormal (down to 4.9e-324); the kernel fills those in."""
    mp = pytest.importorskip("mpmath")
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    if backend == "jax":  # else jax makes float32 of every float64 input (as test_backends)
        import jax
        jax.config.update("jax_enable_x64", True)
    ref = {"sigmoid": lambda t: 1 / (1 + mp.exp(t)),  # sigmoid(-t)
           "sech2": lambda t: mp.sech(t) ** 2,
           "dsigmoid": lambda t: mp.sech(t / 2) ** 2 / 4}[name]
    f = einderiv.compile("sigmoid(-x)" if name == "sigmoid" else f"{name}(x)", VEC,
                         backend=backend)
    for dtype, xs in FAMILY_X[name].items():
        out = f(x=np.array(xs, dtype))
        out = np.asarray(out.cpu() if hasattr(out, "cpu") else out)
        assert out.dtype == dtype
        with mp.workdps(30):
            want = np.array([float(ref(mp.mpf(float(t)))) for t in xs])
        err = np.abs(out - want) / np.maximum(np.abs(want), np.finfo(dtype).tiny)
        if backend == "jax":
            # XLA on CPU flushes subnormal results to zero (FTZ), whatever the formula: a
            # subnormal value may come back as 0 there.
            err[(np.abs(want) < np.finfo(dtype).tiny) & (out == 0)] = 0
        # XLA's own cosh and exp on CPU are good to a few ulps, not numpy's one: sech2's
        # 1 / cosh(x) ** 2 is 16 ulps off at x = 30 under jax with the same formula.
        ulps = 32 if backend == "jax" else 8
        assert np.max(err) < ulps * np.finfo(dtype).eps, (dtype, out, want)


# -- kinks: maximum and minimum split ties evenly, abs/relu/sign as before ----------------------

AB = {"a": ("n",), "b": ("n",)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maximum_and_minimum_split_ties_evenly(dtype):
    a = np.array([1.0, 2.0, 3.0], dtype)
    b = np.array([1.0, 3.0, 2.0], dtype)
    g = einderiv.grad("sum(maximum(a, b))", ["a", "b"], AB)
    da, db = g(a=a, b=b)
    assert da.dtype == dtype
    close(da, [0.5, 0.0, 1.0])
    close(db, [0.5, 1.0, 0.0])
    g = einderiv.grad("sum(minimum(a, b))", ["a", "b"], AB)
    da, db = g(a=a, b=b)
    close(da, [0.5, 1.0, 0.0])
    close(db, [0.5, 0.0, 1.0])


def test_maximum_of_a_tie_with_itself_and_with_a_constant():
    g = einderiv.grad("sum(maximum(x, x))", "x", VEC)
    close(g(x=np.array([1.0, -2.0])), [1.0, 1.0])  # maximum(x, x) = x
    g = einderiv.grad("sum(maximum(x, 0))", "x", VEC)
    close(both_paths(g, x=np.array([-1.0, 0.0, 2.0])), [0.0, 0.5, 1.0])
    g = einderiv.grad("sum(minimum(x, 0))", "x", VEC)
    close(both_paths(g, x=np.array([-1.0, 0.0, 2.0])), [1.0, 0.5, 0.0])


def test_abs_relu_sign_step_at_zero():
    x = np.array([-2.0, 0.0, 3.0])
    close(einderiv.grad("sum(abs(x))", "x", VEC)(x=x), [-1.0, 0.0, 1.0])
    close(einderiv.grad("sum(relu(x))", "x", VEC)(x=x), [0.0, 0.0, 1.0])
    close(einderiv.grad("sum(sign(x))", "x", VEC)(x=x), [0.0, 0.0, 0.0])
    close(einderiv.grad("sum(step(x))", "x", VEC)(x=x), [0.0, 0.0, 0.0])
    close(einderiv.hessian("sum(relu(x) ** 2)", "x", VEC)(x=x), np.diag([0.0, 0.0, 2.0]))


def test_heaviside_is_numpys():
    f = einderiv.compile("heaviside(x, h)", {"x": ("n",), "h": ()})
    x = np.array([-1.0, 0.0, 2.0])
    close(f(x=x, h=0.25), np.heaviside(x, 0.25))
    g = einderiv.grad("sum(heaviside(x, h))", "h", {"x": ("n",), "h": ()})
    close(g(x=x, h=0.25), 1.0)  # only the entry at 0 takes h


# -- the kernels and selects on the other array libraries -----------------------------------------

OTHER_BACKENDS = ["torch", "jax", "cupy", "dask"]
CASES_ON_BACKENDS = [
    ("sum(sqrt(relu(x)))", "x", VEC, {"x": [-1.0, 4.0]}, [0.0, 0.25]),
    ("norm(x)", "x", VEC, {"x": [0.0, 0.0]}, [0.0, 0.0]),
    ("logsumexp(x)", "x", VEC, {"x": [-INF, -INF]}, [0.0, 0.0]),
    ("sum(a ** b)", "b", POW, {"a": [0.0, 2.0], "b": [1.0, 1.0]}, [0.0, 2 * np.log(2)]),
    ("sum(maximum(a, b))", "a", AB, {"a": [1.0, 2.0], "b": [1.0, 3.0]}, [0.5, 0.0]),
    ("sum(det(X))", "X", {"X": ("b", "n", "n")}, {"X": [[[1.0, 2.0], [2.0, 4.0]]]},
     [[[4.0, -2.0], [-2.0, 1.0]]]),
    # adj(a, b; c, d) = (d, -b; -c, a): its sum's gradient, through det_hessian's kernel
    ("sum(adj(X))", "X", {"X": ("b", "n", "n")}, {"X": [[[1.0, 2.0], [2.0, 4.0]]]},
     [[[1.0, -1.0], [-1.0, 1.0]]]),
]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("expr, wrt, shapes, arrays, expected", CASES_ON_BACKENDS,
                         ids=[c[0] for c in CASES_ON_BACKENDS])
def test_on_other_backends(backend, expr, wrt, shapes, arrays, expected):
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    if backend == "dask" and ("det" in expr or "adj" in expr):
        pytest.skip("dask.array has no det (an EvaluationError, see test_backends)")
    if backend == "jax":  # else jax makes float32 of every float64 input (as test_backends)
        import jax
        jax.config.update("jax_enable_x64", True)
    g = einderiv.grad(expr, wrt, shapes, backend=backend)
    for dtype in (np.float64, np.float32):
        out = g(**{k: np.asarray(v, dtype) for k, v in arrays.items()})
        if hasattr(out, "cpu"):  # torch
            out = out.cpu()
        elif type(out).__module__.startswith("cupy"):  # no implicit copy to the host
            out = out.get()
        out = np.asarray(out)
        assert out.dtype == dtype
        close(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU")
@pytest.mark.parametrize("expr, wrt, shapes, arrays, expected", CASES_ON_BACKENDS,
                         ids=[c[0] for c in CASES_ON_BACKENDS])
def test_on_a_cuda_device(expr, wrt, shapes, arrays, expected):
    """The kernels make their constants (adjugate's mask, the selects' numbers) on the inputs'
    device."""
    import torch
    g = einderiv.grad(expr, wrt, shapes, backend="torch")
    out = g(**{k: torch.as_tensor(v, dtype=torch.float64, device="cuda")
               for k, v in arrays.items()})
    assert out.device.type == "cuda"
    close(out.cpu().numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("backend", ["dask", "torch", "jax"])
@pytest.mark.parametrize("name", ["sech2", "dsigmoid", "logcosh"])
def test_no_overflow_where_a_lazy_library_computes(name, backend):
    """A lazy array library computes outside the kernels' errstate: cosh and sinh are never
    given what overflows (|x| = 1500 and 2000), so no warning escapes (an error under
    `-W error`), and the values are numpy's."""
    import warnings
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    x = np.array([-2000.0, -1500.0, -800.0, -1.0, 0.0, 1e-9, 30.0, 800.0, 1500.0, 2000.0])
    want = einderiv.compile(f"x: [n]; {name}(x)")(x=x)
    f = einderiv.compile(f"x: [n]; {name}(x)", backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = f(x=x)
        got = np.asarray(got.cpu() if hasattr(got, "cpu") else got)
    np.testing.assert_allclose(got, want, rtol=1e-6 if backend == "jax" else 1e-15)
