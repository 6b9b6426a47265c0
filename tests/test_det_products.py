"""Products with det's Hessian never form it (issue 15, item 1: hvp, jvp and vjp).

adj's derivative rule is det's Hessian, `det_hessian(X)[j,i,k,l]` (n^4 entries); a tangent or a
cotangent meets it on one pair of its axes, which the rewrite pass makes `det_hvp(X, V)`
(simplify/det_products.py), O(n^3) time and O(n^2) memory from an SVD. Each product is checked
against JAX (x64; a forward-over-reverse pass for hvp), where JAX is installed, and against the
old contraction with `kernel.det_hessian` or central finite differences of the gradient, at
regular and singular matrices (rank n - 1 and n - 2, where the products are exact and finite:
JAX's det differentiates through an LU solve there), stacks of matrices and n = 0, 1, 2.

det's third derivatives (det_third, det_third_v, det_third_vv: the hvp of `sum(adj(X) * A)`)
are checked likewise against third differences of np.linalg.det (exact: det is affine in each
entry) at every rank, and each pairing of their axes with a direction is made a product; the
fourth, through inv_regular, against differences of the third where X is regular, and an
EvaluationError where it is singular to working precision.
"""
from __future__ import annotations

import itertools

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
    """The gradient is det_hvp(X, A.T); its derivative by X, det's third, is det_third_vv
    (det_hvp's rule by X, det_third_v, met by the tangent): here at a regular X, against
    differences and JAX (at singular ones: test_hvp_of_a_weighted_sum_of_adj_at_any_rank)."""
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


# -- det's third derivatives: exact at any rank, products where a direction meets them --------

def _third_differences(X):
    """det's third derivatives by third differences of np.linalg.det: det is affine in each
    entry, so the mixed difference over three entries of distinct rows and columns is the
    derivative exactly (to rounding); it is 0 where two share a row or a column."""
    n = X.shape[-1]
    T = np.zeros((n,) * 6)
    triples = list(itertools.permutations(range(n), 3))
    cases = [(r, c) for r in triples for c in triples]
    if not cases:
        return T
    corners = list(itertools.product((0, 1), repeat=3))
    stack = np.repeat(X[None, None], len(cases), 0).repeat(8, 1)
    for t, (r, c) in enumerate(cases):
        for s, on in enumerate(corners):
            for o, i, j in zip(on, r, c):
                stack[t, s, i, j] += o
    values = np.linalg.det(stack) @ np.array([(-1) ** (3 - sum(on)) for on in corners])
    for (r, c), v in zip(cases, values):
        T[r[0], c[0], r[1], c[1], r[2], c[2]] = v
    return T


def test_third_derivative_kernels_against_third_differences_of_det():
    """kernel.det_third, det_third_v and det_third_vv at every rank of n = 1..5, the zero
    matrix, a permutation and diagonal matrices with zeros; stacks; float32; n = 0."""
    rng = np.random.default_rng(16)
    cases = [_matrix(rng, n, rank) for n in range(1, 6) for rank in range(n + 1)]
    cases += [np.zeros((4, 4)), -np.eye(4), np.eye(4)[[1, 0, 3, 2]], np.diag([2.0, 0, 0, 1]),
              np.diag([2.0, 3, 0, 1])]
    for X in cases:
        V, W = rng.normal(size=X.shape), rng.normal(size=X.shape)
        T = _third_differences(X)
        _close(kernels.det_third(X), T, 1e-12)
        _close(kernels.det_third_v(X, V), np.einsum("ijklpq,pq->ijkl", T, V), 1e-12)
        _close(kernels.det_third_vv(X, V, W), np.einsum("ijklpq,kl,pq->ij", T, V, W), 1e-12)
        _close(kernels.det_third_vv(X, V, W), kernels.det_third_vv(X, W, V), 1e-12)
    X = np.stack([np.stack([_matrix(rng, 4, r) for r in (4, 3, 2)]) for _ in range(2)])
    V, W = rng.normal(size=X.shape), rng.normal(size=X.shape)
    T3, T3v, T3vv = kernels.det_third(X), kernels.det_third_v(X, V), kernels.det_third_vv(X, V, W)
    for b in np.ndindex(2, 3):
        T = _third_differences(X[b])
        _close(T3[b], T, 1e-12)
        _close(T3v[b], np.einsum("ijklpq,pq->ijkl", T, V[b]), 1e-12)
        _close(T3vv[b], np.einsum("ijklpq,kl,pq->ij", T, V[b], W[b]), 1e-12)
    X32, V32 = X[0, 1].astype(np.float32), V[0, 1].astype(np.float32)
    T = _third_differences(X32.astype(float))
    for got, want in [(kernels.det_third(X32), T),
                      (kernels.det_third_v(X32, V32), np.einsum("ijklpq,pq->ijkl", T, V32)),
                      (kernels.det_third_vv(X32, V32, V32),
                       np.einsum("ijklpq,kl,pq->ij", T, V32, V32))]:
        assert got.dtype == np.float32
        _close(got, want, 1e-4)
    assert kernels.det_third(np.zeros((0, 2, 2))).shape == (0, 2, 2, 2, 2, 2, 2)
    assert kernels.det_third(np.zeros((0, 0))).shape == (0,) * 6
    assert kernels.det_third_v(np.zeros((2, 0, 0)), np.zeros((2, 0, 0))).shape == (2, 0, 0, 0, 0)
    empty = np.zeros((0, 3, 3))
    assert kernels.det_third_vv(empty, empty, empty).shape == (0, 3, 3)


def test_third_derivative_kernels_against_jax():
    """At a regular matrix, JAX's third derivative (forward over forward over reverse) along
    two directions; under jax.jit, at every rank, kernel.det_third_vv on JAX arrays as on numpy
    (and the three kernels on torch)."""
    jax, jnp = _jax()
    rng = np.random.default_rng(17)
    X, V, W = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    along = jax.jvp(lambda Y: jax.jvp(jax.grad(jnp.linalg.det), (Y,), (V,))[1], (X,), (W,))[1]
    _close(kernels.det_third_vv(X, V, W), np.asarray(along))
    X = np.stack([_matrix(rng, 4), _matrix(rng, 4, 3), _matrix(rng, 4, 2), np.zeros((4, 4))])
    V, W = rng.normal(size=X.shape), rng.normal(size=X.shape)
    _close(np.asarray(jax.jit(kernels.det_third_vv)(*map(jnp.asarray, (X, V, W)))),
           kernels.det_third_vv(X, V, W))
    torch = pytest.importorskip("torch")
    _close(kernels.det_third_vv(*map(torch.tensor, (X, V, W))).numpy(),
           kernels.det_third_vv(X, V, W))
    _close(kernels.det_third_v(torch.tensor(X), torch.tensor(V)).numpy(),
           kernels.det_third_v(X, V))
    _close(kernels.det_third(torch.tensor(X[:2])).numpy(), kernels.det_third(X[:2]))


@pytest.mark.parametrize("rank", RANKS + [-4], ids=["regular", "rank n-1", "rank n-2", "zero"])
def test_hvp_of_a_weighted_sum_of_adj_at_any_rank(rank):
    """det's third derivative along A.T and the tangent, det_third_vv: exact at singular X
    (det_hvp's rule by X went through inv(X): 1e17 at rank n - 1), and O(n^3)."""
    hv = einderiv.hvp("sum(adj(X) * A)", "X", WITH_A)
    assert hv.formula == "det_third_vv(X, A.T, tangent)"
    rng = np.random.default_rng(19)
    X, A, V = _ranked(rng, 4, rank), rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    expected = np.einsum("ij,jiklpq,pq->kl", A, _third_differences(X), V)
    _close(hv(X=X, A=A, tangent=V), expected, 1e-12)
    # the whole Hessian, det_third_v(X, A.T): the same at any rank
    H = einderiv.hessian("sum(adj(X) * A)", "X", WITH_A)
    assert H.formula == "det_third_v(X, A.T)"
    _close(np.einsum("klpq,pq->kl", H(X=X, A=A), V), expected, 1e-12)


def test_hvp_of_a_weighted_sum_of_adj_at_an_exactly_singular_two_by_two():
    hv = einderiv.hvp("sum(adj(X) * A)", "X", WITH_A)
    X = np.array([[1.0, 2.0], [2.0, 4.0]])
    _close(hv(X=X, A=np.ones((2, 2)), tangent=np.eye(2)), np.zeros((2, 2)))  # adj is linear


def test_hvp_of_a_stack_against_jax_and_differences():
    shapes = {"X": ("b", "n", "n"), "A": ("n", "n")}
    hv = einderiv.hvp("sum(adj(X) @ A) + sum(det(X) ** 2)", "X", shapes)
    assert "det_hessian" not in hv.formula and "inv" not in hv.formula
    rng = np.random.default_rng(20)
    X = np.stack([_matrix(rng, 4), _matrix(rng, 4, 3), _matrix(rng, 4, 2)])
    A, V = rng.normal(size=(4, 4)), rng.normal(size=X.shape)
    got = hv(X=X, A=A, tangent=V)
    g = einderiv.grad("sum(adj(X) @ A) + sum(det(X) ** 2)", "X", shapes)
    e = 1e-4  # a polynomial of degree 4 in each step: central differences to O(e^2)
    _close(got, (g(X=X + e * V, A=A) - g(X=X - e * V, A=A)) / (2 * e), 1e-6)
    _, jnp = _jax()

    def f(Y):
        adj = jnp.linalg.det(Y)[:, None, None] * jnp.linalg.inv(Y)
        return jnp.sum(adj @ A) + jnp.sum(jnp.linalg.det(Y) ** 2)
    _close(got[:1], _jax_hvp(f, X[:1], V[:1]))


@pytest.mark.parametrize("make, call", [
    (lambda: einderiv.hvp("sum(adj(X) * A)", "X", WITH_A),
     lambda f, X, V: f(X=X, A=V, tangent=V)),
    (lambda: einderiv.hvp("tr(adj(X))", "X", SQUARE), lambda f, X, V: f(X=X, tangent=V)),
    (lambda: einderiv.hvp("det(X + X.T)", "X", SQUARE), lambda f, X, V: f(X=X, tangent=V)),
], ids=["hvp sum(adj * A) n = 100", "hvp tr(adj(X)) n = 100", "hvp det(X + X.T) n = 100"])
def test_memory_of_third_derivative_products(make, call, peak_bytes):
    """det_third_vv keeps O(n^2) memory (its n^3 products of singular values taken a row at a
    time): det_third_v would be 10^8 floats at n = 100, det_third 10^12."""
    n = 100
    f = make()
    rng = np.random.default_rng(21)
    X, V = _matrix(rng, n, n - 1), rng.normal(size=(n, n))
    call(f, X, V)
    peak = peak_bytes(lambda: call(f, X, V))
    assert peak < 50 * 8 * n * n, f"peak {peak / (8 * n * n):.0f} matrices of n x n"


# -- det's fourth derivative: through inv_regular, right where X is regular, refused elsewhere -

def test_fourth_derivative_at_a_regular_matrix():
    """det's fourth derivative (det_third_vv's, det_third's rule by X) against central
    differences of the exact third derivatives: at n = 5 (n = 4) they are polynomials of
    degree 2 (1) in X, so the differences are exact but for rounding."""
    shapes = {"X": ("n", "n"), "A": ("n", "n"), "B": ("n", "n")}
    hv = einderiv.hvp("sum(det_hvp(X, A) * B)", "X", shapes)
    assert "inv_regular" in hv.formula and "det_third_v(" not in hv.formula
    rng = np.random.default_rng(22)
    X, A, B, V = (rng.normal(size=(5, 5)) for _ in range(4))
    e = 1e-2
    third = kernels.det_third_vv(X + e * V, A, B) - kernels.det_third_vv(X - e * V, A, B)
    _close(hv(X=X, A=A, B=B, tangent=V), third / (2 * e), 1e-8)
    # the whole third derivative, differentiated: det_third's own rule by X
    J = einderiv.jacobian("det_hessian(X)", "X", SQUARE)
    assert J.formula == "det_third(X)"
    shapes = {"X": ("n", "n"), "C": ("n",) * 6}
    K = einderiv.grad("sum(det_third(X) * C)", "X", shapes)
    X, C = X[:4, :4], rng.normal(size=(4,) * 6)
    expected = np.zeros((4, 4))
    for r, s in np.ndindex(4, 4):
        E = np.zeros((4, 4))
        E[r, s] = 1.0
        expected[r, s] = np.sum((kernels.det_third(X + E) - kernels.det_third(X - E)) * C) / 2
    _close(K(X=X, C=C), expected, 1e-9)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("X", [np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 1.0, 3.0]]),
                               _matrix(np.random.default_rng(23), 3, 2)],
                         ids=["exactly singular", "rank n-1 in floating point"])
def test_fourth_derivative_at_a_singular_matrix_is_an_error(X):
    """Not the rounding noise that the cancellation through inv(X) gives there."""
    shapes = {"X": ("n", "n"), "A": ("n", "n"), "B": ("n", "n")}
    hv = einderiv.hvp("sum(det_hvp(X, A) * B)", "X", shapes)
    rng = np.random.default_rng(24)
    A, B, V = (rng.normal(size=(3, 3)) for _ in range(3))
    with pytest.raises(einderiv.EvaluationError, match="singular to working precision"):
        hv(X=X, A=A, B=B, tangent=V)
    with pytest.raises(einderiv.EvaluationError, match="singular to working precision"):
        hv.evaluate_ir(X=X, A=A, B=B, tangent=V)


def test_inv_regular():
    rng = np.random.default_rng(25)
    X = rng.normal(size=(2, 4, 4))
    f = einderiv.compile("inv_regular(X)", {"X": ("b", "n", "n")})
    _close(f(X=X), np.linalg.inv(X))
    assert f(X=X.astype(np.float32)).dtype == np.float32
    assert f(X=np.zeros((0, 4, 4))).shape == (0, 4, 4)
    with pytest.raises(einderiv.EvaluationError, match="condition number"):
        f(X=np.stack([X[0], _matrix(rng, 4, 3)]))
    ill = np.diag([1.0, 1.0, 1.0, 1e-6])  # condition number 1e6: fine in float64, not float32
    _close(f(X=ill[None]), np.linalg.inv(ill)[None])
    with pytest.raises(einderiv.EvaluationError, match="condition number"):
        f(X=ill[None].astype(np.float32))
    jax, jnp = _jax()
    jitted = jax.jit(kernels.inv_regular)  # no value to test: NaN where refused
    got = np.asarray(jitted(jnp.asarray(np.stack([X[0], np.zeros((4, 4))]))))
    _close(got[0], np.linalg.inv(X[0]))
    assert np.isnan(got[1]).all()


# -- the rewrite: diagonals, zeros, sums of transposes, every pairing of the third derivatives -

@pytest.mark.parametrize("spec, made", [
    ("iikl->kl", "det_hvp(X, eye(n))"), ("ijkk->ij", "det_hvp(X, eye(n))"),
    ("ijki->jk", "-det_hvp(X, eye(n)).T"), ("iijj->", None), ("iikl->ikl", None),
    ("ijil->jl", "zeros(n, n)"), ("ijkj->ik", "zeros(n, n)"),
])
def test_a_diagonal_of_the_hessian(spec, made):
    """A label on a row and a column is a product with a delta (summed, the direction eye(n));
    two rows (or columns) with one label are 0; a diagonal kept on both axes of a pair and
    another open axis stays the Hessian."""
    f = einderiv.compile(f'einsum("{spec}", det_hessian(X))', SQUARE)
    rng = np.random.default_rng(26)
    X = _matrix(rng, 4, 3)
    _close(f(X=X), np.einsum(spec, kernels.det_hessian(X)))
    if made is not None:
        assert f.formula == made
    elif spec == "iijj->":
        assert "det_hessian" not in f.formula
    else:
        assert "det_hessian" in f.formula


def _third_pairings():
    """Each row and column of det_third's six axes summed with V (the others kept), two pairs
    summed with V and W, and det_third_v's four axes with V; diagonals too."""
    L = "ijklpq"
    specs = []
    for r in (0, 2, 4):
        for c in (1, 3, 5):
            kept = "".join(L[a] for a in range(6) if a not in (r, c))
            specs.append((f"ijklpq,{L[r]}{L[c]}->{kept}", "det_third"))
    specs += [("ijklpq,kl,pq->ij", "det_third"), ("ijklpq,il,kq->jp", "det_third"),
              ("ijkkpq->ijpq", "det_third"), ("ijklpp,kl->ij", "det_third"),
              ("ijkl,kl->ij", "det_third_v"), ("ijkl,il->kj", "det_third_v"),
              ("ijkl,jk->il", "det_third_v"), ("iikl->kl", "det_third_v"),
              ("ijkl,kl,ij->", "det_third_v")]
    return specs


@pytest.mark.parametrize("spec, tensor", _third_pairings())
def test_every_pairing_of_the_third_derivatives_axes(spec, tensor):
    shapes = {"X": ("n", "n"), "U": ("n", "n"), "V": ("n", "n"), "W": ("n", "n")}
    rng = np.random.default_rng(27)
    X, U, V, W = _matrix(rng, 4, 3), *(rng.normal(size=(4, 4)) for _ in range(3))
    operands = spec.split("->")[0].split(",")[1:]
    names = ["V", "W"][:len(operands)]
    call = f"{tensor}(X)" if tensor == "det_third" else f"{tensor}(X, U)"
    f = einderiv.compile(f'einsum("{spec}", {", ".join([call, *names])})', shapes)
    full = kernels.det_third(X)
    value = full if tensor == "det_third" else np.einsum("ijklpq,pq->ijkl", full, U)
    _close(f(X=X, U=U, V=V, W=W), np.einsum(spec, value, *[{"V": V, "W": W}[k] for k in names]),
           1e-12)
    assert tensor + "(" not in f.formula, f.formula  # made the next, never formed


@pytest.mark.parametrize("expr", ["sum(adj(X + X.T) * A)", "sum(adj(X) * A) + sum(adj(X.T) * A)",
                                  "sum(adj(2 * X - X.T) * A)"])
def test_a_sum_of_transposed_third_derivatives_is_a_sum_of_products(expr):
    """The hvp's third derivatives come as a sum of transposes of det_third_v(S, .) met by the
    tangent: each term is made det_third_vv, none formed."""
    hv = einderiv.hvp(expr, "X", WITH_A)
    assert "det_third_v(" not in hv.formula and "det_hessian" not in hv.formula, hv.formula
    rng = np.random.default_rng(28)
    X, A, V = _matrix(rng, 4, 3), rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    g = einderiv.grad(expr, "X", WITH_A)
    e = 1e-4
    _close(hv(X=X, A=A, tangent=V), (g(X=X + e * V, A=A) - g(X=X - e * V, A=A)) / (2 * e), 1e-6)
    jax, jnp = _jax()
    Xr = X + 2 * np.eye(4)

    def adj(Y):
        return jnp.linalg.det(Y) * jnp.linalg.inv(Y)
    f = eval("lambda X: " + expr.replace("sum", "jnp.sum"), {"jnp": jnp, "adj": adj, "A": A})
    _close(hv(X=Xr, A=A, tangent=V), _jax_hvp(f, Xr, V))


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("source, shapes, kind", [
    ("det_third_vv(X, X)", SQUARE, einderiv.ParseError),
    ("det_third_v(X)", SQUARE, einderiv.ParseError),
    ("det_third(X, X)", SQUARE, einderiv.ParseError),
    ("det_third_vv(X, X, V)", {"X": ("n", "n"), "V": ("m", "m")}, einderiv.ShapeError),
    ("det_third_v(X, V)", {"X": ("n", "n"), "V": ("b", "n", "n")}, einderiv.ShapeError),
    ("det_third(X)", {"X": ("n", "m")}, einderiv.ShapeError),
    ("inv_regular(X)", {"X": ("n", "m")}, einderiv.ShapeError),
])
def test_third_derivatives_written_wrong_are_clear_errors(source, shapes, kind):
    with pytest.raises(kind) as info:
        einderiv.compile(source, shapes)
    assert "^" in str(info.value)
    if "V" in shapes and kind is einderiv.ShapeError and "vv" in source:
        assert "third argument" in str(info.value)


def test_third_derivatives_are_functions_of_the_language():
    shapes = {"X": ("b", "n", "n"), "V": ("b", "n", "n"), "W": ("b", "n", "n")}
    rng = np.random.default_rng(29)
    X, V, W = (rng.normal(size=(2, 3, 3)) for _ in range(3))
    f = einderiv.compile("det_third_vv(X, V, W) + sum(det_third_v(X, V), axis=(3, 4)) "
                         "+ sum(det_third(X), axis=(3, 4, 5, 6))", shapes)
    T = kernels.det_third(X)
    _close(f(X=X, V=V, W=W), np.einsum("bijklpq,bkl,bpq->bij", T, V, W)
           + np.einsum("bijklpq,bpq->bij", T, V) + np.einsum("bijklpq->bij", T))
