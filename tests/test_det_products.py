"""Products with det's Hessian never form it (issue 15, item 1: hvp, jvp and vjp).

adj's derivative rule is det's Hessian, `det_hessian(X)[j,i,k,l]` (n^4 entries); a tangent or a
cotangent meets it on one pair of its axes, which the rewrite pass makes `det_hvp(X, V)`
(simplify/det_products.py), O(n^3) time and O(n^2) memory from an SVD. Each product is checked
against JAX (x64; a forward-over-reverse pass for hvp), where JAX is installed, and against the
old contraction with `kernel.det_hessian` or central finite differences of the gradient, at
regular and singular matrices (rank n - 1 and n - 2, where the products are exact and finite:
JAX's det differentiates through an LU solve there), stacks of matrices and n = 0, 1, 2.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels

SQUARE = {"X": ("n", "n")}
WITH_A = {"X": ("n", "n"), "A": ("n", "n")}


def _close(actual, expected, tol=1e-9):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _matrix(rng, n, rank=None, batch=()):
    """A random [*batch, n, n] matrix of the given rank (full by default)."""
    X = rng.normal(size=(*batch, n, n))
    if rank is None or rank >= n:
        return X
    U, s, Vh = np.linalg.svd(X)
    s[..., rank:] = 0.0
    return (U * s[..., None, :]) @ Vh


def _hessian_times(X, V):
    """The old path: the whole Hessian, contracted with V on its second pair of axes."""
    return np.einsum("...ijkl,...kl->...ij", kernels.det_hessian(X), V)


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, pytest.importorskip("jax.numpy")


def _jax_hvp(f, X, V):
    jax, _ = _jax()
    return np.asarray(jax.jvp(jax.grad(f), (X,), (V,))[1])


def _jax_adj(X):
    """adj(X) = grad(det)(X).T (regular X: JAX's det differentiates through a solve)."""
    jax, jnp = _jax()
    return jnp.swapaxes(jax.grad(lambda Y: jnp.sum(jnp.linalg.det(Y)))(X), -1, -2)


RANKS = [None, -1, -2]  # full, n - 1, n - 2


def _ranked(rng, n, r, batch=()):
    return _matrix(rng, n, None if r is None else n + r, batch)


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_hvp_of_det(rank):
    hv = einderiv.hvp("det(X)", "X", SQUARE)
    assert hv.formula == "det_hvp(X, tangent)"
    rng = np.random.default_rng(1)
    X, V = _ranked(rng, 5, rank), rng.normal(size=(5, 5))
    got = hv(X=X, tangent=V)
    assert np.isfinite(got).all()
    _close(got, _hessian_times(X, V))
    # central differences of det's gradient, adj(X).T (a polynomial: exact at any rank)
    e = 1e-5
    fd = (kernels.adjugate(X + e * V) - kernels.adjugate(X - e * V)).T / (2 * e)
    _close(got, fd, 1e-7)
    if rank is None:
        _, jnp = _jax()
        _close(got, _jax_hvp(jnp.linalg.det, X, V))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_hvp_of_det_of_small_matrices(n):
    hv = einderiv.hvp("det(X)", "X", SQUARE)
    rng = np.random.default_rng(n)
    X, V = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    got = hv(X=X, tangent=V)
    assert got.shape == (n, n)
    _close(got, _hessian_times(X, V))
    if n == 2:  # det = ad - bc: its Hessian along V is (V[1,1], -V[1,0]; -V[0,1], V[0,0])
        _close(got, [[V[1, 1], -V[1, 0]], [-V[0, 1], V[0, 0]]])


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_jvp_of_adj(rank):
    f = einderiv.jvp("adj(X)", "X", SQUARE)
    assert "det_hessian" not in f.formula and "det_hvp(X, tangent)" in f.formula
    rng = np.random.default_rng(2)
    X, V = _ranked(rng, 5, rank), rng.normal(size=(5, 5))
    value, tangent = f(X=X, tangent=V)
    _close(value, kernels.adjugate(X))
    # d adj(X)[i,j] / dX[k,l] = det_hessian(X)[j,i,k,l]
    _close(tangent, np.einsum("jikl,kl->ij", kernels.det_hessian(X), V))
    if rank is None:
        jax, _ = _jax()
        _close(tangent, np.asarray(jax.jvp(_jax_adj, (X,), (V,))[1]))


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_vjp_of_adj(rank):
    f = einderiv.vjp("adj(X)", "X", SQUARE)
    assert f.formula == "det_hvp(X, cotangent.T)"
    rng = np.random.default_rng(3)
    X, G = _ranked(rng, 5, rank), rng.normal(size=(5, 5))
    got = f(X=X, cotangent=G)
    assert np.isfinite(got).all()
    _close(got, np.einsum("ij,jikl->kl", G, kernels.det_hessian(X)))
    if rank is None:
        jax, _ = _jax()
        _, pullback = jax.vjp(_jax_adj, X)
        _close(got, np.asarray(pullback(G)[0]))


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_grad_of_a_weighted_sum_of_adj(rank):
    g = einderiv.grad("sum(adj(X) * A)", "X", WITH_A)
    assert g.formula == "det_hvp(X, A.T)"
    rng = np.random.default_rng(4)
    X, A = _ranked(rng, 5, rank), rng.normal(size=(5, 5))
    got = g(X=X, A=A)
    _close(got, np.einsum("ij,jikl->kl", A, kernels.det_hessian(X)))
    if rank is None:
        jax, jnp = _jax()
        _close(got, np.asarray(jax.grad(lambda Y: jnp.sum(_jax_adj(Y) * A))(X)))


def test_hvp_of_a_weighted_sum_of_adj_is_the_third_derivative():
    """The gradient is det_hvp(X, A.T); its derivative by X, det's third, goes through inv
    (det_hvp's rule by X): right where X is regular."""
    hv = einderiv.hvp("sum(adj(X) * A)", "X", WITH_A)
    assert "det_hessian" not in hv.formula
    rng = np.random.default_rng(5)
    X, A, V = rng.normal(size=(5, 5)) + 2 * np.eye(5), rng.normal(size=(5, 5)), \
        rng.normal(size=(5, 5))
    got = hv(X=X, A=A, tangent=V)
    g = einderiv.grad("sum(adj(X) * A)", "X", WITH_A)
    e = 1e-5
    _close(got, (g(X=X + e * V, A=A) - g(X=X - e * V, A=A)) / (2 * e), 1e-6)
    jax, jnp = _jax()
    _close(got, _jax_hvp(lambda Y: jnp.sum(_jax_adj(Y) * A), X, V))


def test_hessian_of_a_weighted_sum_of_adj():
    """The whole Hessian of sum(adj(X) * A), det's third derivative contracted with A, where X
    is regular: against central differences of its gradient, the contraction of kernel.det_hessian
    with A (exact at any X)."""
    H = einderiv.hessian("sum(adj(X) * A)", "X", WITH_A)
    rng = np.random.default_rng(6)
    X, A = rng.normal(size=(4, 4)) + 2 * np.eye(4), rng.normal(size=(4, 4))
    got, e = H(X=X, A=A), 1e-5
    for k, l in np.ndindex(4, 4):
        step = e * (np.arange(16).reshape(4, 4) == 4 * k + l)
        fd = (np.einsum("ij,jipq->pq", A, kernels.det_hessian(X + step))
              - np.einsum("ij,jipq->pq", A, kernels.det_hessian(X - step))) / (2 * e)
        _close(got[:, :, k, l], fd, 1e-7)


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_hvp_of_det_squared(rank):
    hv = einderiv.hvp("det(X) ** 2", "X", SQUARE)
    assert "det_hessian" not in hv.formula
    rng = np.random.default_rng(7)
    X, V = _ranked(rng, 5, rank), rng.normal(size=(5, 5))
    got = hv(X=X, tangent=V)
    # d2 det^2 = 2 (grad det . V) grad det + 2 det(X) H V, with grad det = adj(X).T
    grad = kernels.adjugate(X).T
    _close(got, 2 * np.sum(grad * V) * grad + 2 * np.linalg.det(X) * _hessian_times(X, V))
    if rank is None:
        _, jnp = _jax()
        _close(got, _jax_hvp(lambda Y: jnp.linalg.det(Y) ** 2, X, V))


@pytest.mark.parametrize("rank", RANKS, ids=["regular", "rank n-1", "rank n-2"])
def test_hvp_of_det_of_a_product(rank):
    hv = einderiv.hvp("det(A @ X) + 3 * det(X)", "X", WITH_A)
    assert "det_hessian" not in hv.formula
    rng = np.random.default_rng(8)
    X, A, V = _ranked(rng, 5, rank), rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    got = hv(X=X, A=A, tangent=V)
    # chain rule: by X, det(A X)'s Hessian along V is A^T H(A X) (A V)
    _close(got, A.T @ _hessian_times(A @ X, A @ V) + 3 * _hessian_times(X, V))
    if rank is None:
        _, jnp = _jax()
        _close(got, _jax_hvp(lambda Y: jnp.linalg.det(A @ Y) + 3 * jnp.linalg.det(Y), X, V))


def test_stacked_matrices():
    shapes = {"X": ("b", "n", "n")}
    rng = np.random.default_rng(9)
    X = np.stack([_matrix(rng, 4), _matrix(rng, 4, 3), _matrix(rng, 4, 2)])
    V = rng.normal(size=X.shape)
    hv = einderiv.hvp("sum(det(X))", "X", shapes)
    got = hv(X=X, tangent=V)
    _close(got, _hessian_times(X, V))
    vjp = einderiv.vjp("adj(X)", "X", shapes)
    _close(vjp(X=X, cotangent=V), np.einsum("bij,bjikl->bkl", V, kernels.det_hessian(X)))
    jax, jnp = _jax()
    regular = X[:1]
    _close(got[:1], _jax_hvp(lambda Y: jnp.sum(jnp.linalg.det(Y)), regular, V[:1]))


def test_the_whole_hessian_is_still_det_hessian():
    H = einderiv.hessian("det(X)", "X", SQUARE)
    assert H.formula == "det_hessian(X)"
    rng = np.random.default_rng(10)
    X = _matrix(rng, 4, 3)
    _close(H(X=X), kernels.det_hessian(X))
    e, V = 1e-5, rng.normal(size=(4, 4))
    fd = (kernels.adjugate(X + e * V) - kernels.adjugate(X - e * V)).T / (2 * e)
    _close(np.einsum("ijkl,kl->ij", H(X=X), V), fd, 1e-7)


@pytest.mark.parametrize("source, reference", [
    ('einsum("ijkl,kl->ij", det_hessian(X), V)', "ijkl,kl->ij"),
    ('einsum("ijkl,ij->kl", det_hessian(X), V)', "ijkl,ij->kl"),
    ('einsum("ijkl,il->kj", det_hessian(X), V)', "ijkl,il->kj"),
    ('einsum("ijkl,jk->il", det_hessian(X), V)', "ijkl,jk->il"),
    ("sum(det_hessian(X), axis=(2, 3))", "ijkl->ij"),
])
def test_a_hessian_summed_on_a_pair_of_axes_is_a_product(source, reference):
    """Either pair, either orientation (a crossed pair by the Hessian's antisymmetry, with a
    minus), and a pair summed alone (the direction of ones)."""
    f = einderiv.compile(source, {"X": ("n", "n"), "V": ("n", "n")})
    assert "det_hessian" not in f.formula and "det_hvp" in f.formula
    rng = np.random.default_rng(11)
    X, V = _matrix(rng, 4, 3), rng.normal(size=(4, 4))
    H = kernels.det_hessian(X)
    expected = np.einsum(reference, H, V) if "," in reference else np.einsum(reference, H)
    _close(f(X=X, V=V) if "V" in source else f(X=X), expected)


def test_a_hessian_summed_on_no_pair_stays_whole():
    """A sum over i and k is no product with a direction: the Hessian, summed."""
    f = einderiv.compile('einsum("ijkl,ik->jl", det_hessian(X), V)', {"X": ("n", "n"),
                                                                      "V": ("n", "n")})
    assert "det_hessian" in f.formula
    rng = np.random.default_rng(12)
    X, V = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    _close(f(X=X, V=V), np.einsum("ijkl,ik->jl", kernels.det_hessian(X), V))


def test_det_hvp_is_a_function_of_the_language():
    shapes = {"X": ("b", "n", "n"), "V": ("b", "n", "n")}
    f = einderiv.compile("det_hvp(X, V)", shapes)
    rng = np.random.default_rng(13)
    X, V = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 3))
    _close(f(X=X, V=V), _hessian_times(X, V))
    with pytest.raises(einderiv.ShapeError):
        einderiv.compile("det_hvp(X, V)", {"X": ("n", "n"), "V": ("n", "m")})
    with pytest.raises(einderiv.ShapeError):
        einderiv.compile("det_hvp(X, V)", {"X": ("n", "m"), "V": ("n", "m")})


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_on_other_backends(backend):
    pytest.importorskip(backend)
    if backend == "jax":
        _jax()
    hv = einderiv.hvp("det(X)", "X", SQUARE, backend=backend)
    rng = np.random.default_rng(14)
    X, V = _matrix(rng, 4, 3), rng.normal(size=(4, 4))
    if backend == "torch":
        import torch
        got = hv(X=torch.tensor(X), tangent=torch.tensor(V)).numpy()
    else:
        import jax.numpy as jnp
        got = np.asarray(hv(X=jnp.asarray(X), tangent=jnp.asarray(V)))
    _close(got, _hessian_times(X, V))


@pytest.mark.parametrize("make, call", [
    (lambda: einderiv.hvp("det(X)", "X", SQUARE), lambda f, X, V: f(X=X, tangent=V)),
    (lambda: einderiv.jvp("adj(X)", "X", SQUARE), lambda f, X, V: f(X=X, tangent=V)),
    (lambda: einderiv.vjp("adj(X)", "X", SQUARE), lambda f, X, V: f(X=X, cotangent=V)),
    (lambda: einderiv.grad("sum(adj(X) * A)", "X", WITH_A), lambda f, X, V: f(X=X, A=V)),
    (lambda: einderiv.hvp("sum(adj(X) * A)", "X", WITH_A),
     lambda f, X, V: f(X=X, A=V, tangent=V)),
], ids=["hvp det", "jvp adj", "vjp adj", "grad sum(adj * A)", "hvp sum(adj * A)"])
def test_memory_is_that_of_a_few_matrices(make, call, peak_bytes):
    """O(n^2): the Hessian at n = 60 is 13M floats (100 MB), 3,600 matrices of n x n."""
    n = 60
    f = make()
    rng = np.random.default_rng(15)
    X, V = rng.normal(size=(n, n)) + n * np.eye(n), rng.normal(size=(n, n))
    call(f, X, V)
    peak = peak_bytes(lambda: call(f, X, V))
    assert peak < 50 * 8 * n * n, f"peak {peak / (8 * n * n):.0f} matrices of n x n"
