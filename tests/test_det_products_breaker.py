"""Faults found by trying det_hvp and the det_products rewrite (issue 15, item 1: hvp of det, jvp
and vjp through adj never form the n^4 Hessian) as a new user would and with hostile inputs.

Each expected failure states the right value from an independent reference: the contraction of
`kernels.det_hessian` (itself checked here against second differences of `np.linalg.det`, exact
for the multilinear det), central finite differences of an exact gradient, or JAX (x64) where X
is regular. They are strict: a fix turns them into errors, so that the marker is removed. The
plain tests are checks that held, kept because they are fast and cover what the rewrite's own
tests do not (every pairing of the Hessian's axes with a stack, composite expressions against
JAX, singular and empty matrices on every backend, user errors, pickling and threads).
"""
from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels
from test_det_products import SQUARE, WITH_A, _close, _matrix  # the same helpers

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow interop check (a sample runs in CI): set EINDERIV_SLOW=1")


def _brute_hessian(X):
    """det's Hessian by second differences of np.linalg.det: det is linear in each entry, so
    det(X + E_ij + E_kl) - det(X + E_ij) - det(X + E_kl) + det(X) is the mixed second derivative
    exactly (0 where i == k or j == l: one row or column twice)."""
    n = X.shape[-1]
    H = np.zeros((n,) * 4)
    d0 = np.linalg.det(X)
    for i, j, k, l in np.ndindex(n, n, n, n):
        if i == k or j == l:
            continue
        Eij, Ekl = np.zeros((n, n)), np.zeros((n, n))
        Eij[i, j] = Ekl[k, l] = 1.0
        H[i, j, k, l] = (np.linalg.det(X + Eij + Ekl) - np.linalg.det(X + Eij)
                         - np.linalg.det(X + Ekl) + d0)
    return H


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, pytest.importorskip("jax.numpy")


# == faults ===================================================================================

# -- 1. a diagonal on one pair of det_hessian's axes is a product with the identity -----------
# det_products.into_product skips any det_hessian operand with a repeated label ("a diagonal of
# the Hessian"), but a diagonal within one pair, H[i, i, k, l] summed over i, is H contracted
# with the identity on that pair, det_hvp(X, eye(n)); and H[i, i, k, l] V[k, l] (the other pair
# summed with a direction) is diag(det_hvp(X, V)). So the gradient of tr(adj(X)), the jvp and
# vjp of diag(adj(X)) and adj(X) * eye(n) form the whole n^4 Hessian.

def _diag_cases():
    # (make, call, expected from the Hessian H and the direction V)
    return [
        (lambda: einderiv.grad("tr(adj(X))", "X", SQUARE),
         lambda f, X, V: f(X=X), lambda H, V: np.einsum("iikl->kl", H)),
        (lambda: einderiv.grad("sum(adj(X) * eye(n))", "X", SQUARE),
         lambda f, X, V: f(X=X), lambda H, V: np.einsum("iikl->kl", H)),
        (lambda: einderiv.jvp("diag(adj(X))", "X", SQUARE),
         lambda f, X, V: f(X=X, tangent=V)[1], lambda H, V: np.einsum("iikl,kl->i", H, V)),
        (lambda: einderiv.vjp("diag(adj(X))", "X", SQUARE),
         lambda f, X, V: f(X=X, cotangent=V[0]), lambda H, V: np.einsum("i,iikl->kl", V[0], H)),
        (lambda: einderiv.compile('einsum("ijkk->ij", det_hessian(X))', SQUARE),
         lambda f, X, V: f(X=X), lambda H, V: np.einsum("ijkk->ij", H)),
    ]


@pytest.mark.parametrize("case", range(5), ids=["grad tr(adj(X))", "grad sum(adj(X) * eye(n))",
                                                "jvp diag(adj(X))", "vjp diag(adj(X))",
                                                "einsum ijkk->ij"])
def test_a_diagonal_on_one_pair_is_a_product(case):
    make, call, expected = _diag_cases()[case]
    f = make()
    rng = np.random.default_rng(1)
    X, V = _matrix(rng, 4, 3), rng.normal(size=(4, 4))
    _close(call(f, X, V), expected(kernels.det_hessian(X), V))  # the values are right today
    assert "det_hessian" not in f.formula, f.formula


def test_hvp_of_the_trace_of_adj_is_not_n_to_the_sixth(peak_bytes):
    hv = einderiv.hvp("tr(adj(X))", "X", SQUARE)
    n = 12
    rng = np.random.default_rng(2)
    X, V = rng.normal(size=(n, n)) + n * np.eye(n), rng.normal(size=(n, n))
    # right value: central differences of the exact gradient, einsum('iikl->kl', det_hessian)
    e = 1e-5
    fd = (np.einsum("iikl->kl", kernels.det_hessian(X + e * V))
          - np.einsum("iikl->kl", kernels.det_hessian(X - e * V))) / (2 * e)
    _close(hv(X=X, tangent=V), fd, 1e-6)
    peak = peak_bytes(lambda: hv(X=X, tangent=V))
    # n^6 is 3M floats (24 MB) at n = 12; the product path is tens of n x n matrices
    assert peak < 200 * 8 * n * n, f"peak {peak / (8 * n * n):.0f} matrices of n x n"


# -- 2. det_hessian permuted and added before it meets the direction --------------------------
# The derivative of det(X + X.T) (or of det(X) + det(X.T), adj(X + X.T)) is a sum of two
# transposes of det_hessian, einsum('ijkl->klji', H) + einsum('ijkl->lkji', H), and only then
# contracted with the tangent: into_product sees a Contract whose operand is an Add, not a
# det_hessian, and the n^4 Hessian is formed. det of a symmetric part, (X + X.T) / 2, is the
# common case (a covariance, a Gram matrix).

def _sym_cases():
    # (make, call, expected(X, V)); Hv(S, W) = det_hessian(S) contracted with W on (k, l)
    def Hv(S, W):
        return np.einsum("ijkl,kl->ij", kernels.det_hessian(S), W)

    def sym(X, V):  # hvp of det(X + X.T): D + D.T with D = H(S) (V + V.T)
        D = Hv(X + X.T, V + V.T)
        return D + D.T

    return [
        (lambda: einderiv.hvp("det(X + X.T)", "X", SQUARE),
         lambda f, X, V: f(X=X, tangent=V), sym),
        (lambda: einderiv.hvp("det((X + X.T) / 2)", "X", SQUARE),
         lambda f, X, V: f(X=X, tangent=V),
         lambda X, V: (lambda D: (D + D.T) / 4)(Hv((X + X.T) / 2, V + V.T))),
        (lambda: einderiv.hvp("det(X) + det(X.T)", "X", SQUARE),
         lambda f, X, V: f(X=X, tangent=V), lambda X, V: Hv(X, V) + Hv(X.T, V.T).T),
        (lambda: einderiv.jvp("adj(X + X.T)", "X", SQUARE),
         lambda f, X, V: f(X=X, tangent=V)[1], lambda X, V: Hv(X + X.T, V + V.T).T),
        (lambda: einderiv.vjp("adj(X + X.T)", "X", SQUARE),
         lambda f, X, V: f(X=X, cotangent=V),
         lambda X, V: (lambda D: D + D.T)(np.einsum("ij,jikl->kl", V,
                                                    kernels.det_hessian(X + X.T)))),
    ]


@pytest.mark.parametrize("case", range(5), ids=["hvp det(X + X.T)", "hvp det((X + X.T) / 2)",
                                                "hvp det(X) + det(X.T)", "jvp adj(X + X.T)",
                                                "vjp adj(X + X.T)"])
def test_a_sum_of_transposed_hessians_is_a_product(case):
    make, call, expected = _sym_cases()[case]
    f = make()
    rng = np.random.default_rng(3)
    X, V = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    _close(call(f, X, V), expected(X, V))  # the values are right today
    assert "det_hessian" not in f.formula, f.formula


# -- 3. det's third derivative at a singular X: silent garbage --------------------------------
# det_hvp's (and det_hessian's) rule by X is det(X) times products of inv(X) (README: "needs a
# regular X"). At a rank n - 1 matrix made in floating point, inv(X) does not raise: hvp of
# sum(adj(X) * A) returns entries of 1e16 to 1e17 with no error or warning, where the value, a
# polynomial's derivative, is finite and O(1). At an exactly singular X it is an
# EvaluationError, even for n = 2, where adj is linear and the third derivative is 0.

@pytest.mark.parametrize("expr, n, exact", [
    ("sum(adj(X) * A)", 4, False),
    ("det(X) * sum(adj(X) * A)", 4, False),
    ("sum(adj(X) * A)", 2, True),
], ids=["sum(adj * A) rank n-1", "det * sum(adj * A) rank n-1", "sum(adj * A) n=2 singular"])
def test_third_derivative_at_a_singular_matrix(expr, n, exact):
    rng = np.random.default_rng(4)
    X = np.array([[1.0, 2.0], [2.0, 4.0]]) if exact else _matrix(rng, n, n - 1)
    A, V = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    hv = einderiv.hvp(expr, "X", WITH_A)
    g = einderiv.grad(expr, "X", WITH_A)  # exact at any rank (det_hvp and adj)
    e = 1e-4  # central differences of a polynomial: error O(e^2) times its 4th derivative
    fd = (g(X=X + e * V, A=A) - g(X=X - e * V, A=A)) / (2 * e)
    if n == 2:  # adj is linear for n = 2: the Hessian of sum(adj(X) * A) is 0
        fd = np.zeros((2, 2))
    _close(hv(X=X, A=A, tangent=V), fd, 1e-6)


# -- 4. JAX's second derivative of einderiv.jax.function at X = I ------------------------------
# einderiv.jax.function's vjp rule is einderiv's backward code, for sum(adj(X) * A) det_hvp(X,
# A.T), from an SVD; jax.hessian differentiates that SVD, whose derivative is NaN at repeated
# singular values: at the identity (or any orthogonal or scaled-orthogonal X, a common starting
# point) the Hessian is all NaN where the true one is finite. (det(X) alone is NaN there too:
# its backward is kernel.adjugate, from the same SVD.)

def test_jax_hessian_of_a_jax_function_at_the_identity():
    jax, jnp = _jax()
    import einderiv.jax as ej
    rng = np.random.default_rng(5)
    A, V = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    f = ej.function("sum(adj(X) * A)", WITH_A)
    X = np.eye(3)
    # the Hessian along V, reverse over reverse (jax.hessian's forward-over-reverse is JAX's
    # TypeError for a custom_vjp function), jitted: the same NaN, in a fraction of the time
    grad = jax.grad(lambda Y: f(X=Y, A=A))
    got = np.asarray(jax.jit(jax.grad(lambda Y: jnp.sum(grad(Y) * V)))(X))
    # d/dX[p, q] of the gradient einsum('ij,jikl->kl', A, det_hessian(X)): central differences
    # of the exact det_hessian, a polynomial of degree n - 2 = 1 in X (exact differences)
    expected = np.zeros((3, 3, 3, 3))
    for p, q in np.ndindex(3, 3):
        E = np.zeros((3, 3))
        E[p, q] = 1.0
        expected[:, :, p, q] = (np.einsum("ij,jikl->kl", A, kernels.det_hessian(X + E))
                                - np.einsum("ij,jikl->kl", A, kernels.det_hessian(X - E))) / 2
    _close(got, np.einsum("klpq,kl->pq", expected, V))


# == checks that held =========================================================================

def test_det_hvp_kernel_against_second_differences_of_det():
    """kernel.det_hvp and kernel.det_hessian against an independent Hessian (second differences
    of np.linalg.det), n = 1..4 at every rank, the zero matrix and permutations; float32 keeps
    its dtype; empty stacks and n = 0."""
    rng = np.random.default_rng(6)
    for n in range(1, 5):
        for rank in range(n + 1):
            X, V = _matrix(rng, n, rank), rng.normal(size=(n, n))
            H = _brute_hessian(X)
            _close(kernels.det_hessian(X), H)
            _close(kernels.det_hvp(X, V), np.einsum("ijkl,kl->ij", H, V))
            _close(kernels.det_hvp(X, V), np.einsum("ijkl,ij->kl", H, V))  # symmetric
    for X in (np.zeros((3, 3)), -np.eye(3), np.eye(3)[[1, 0, 2]], np.diag([2.0, 0.0, 0.0])):
        V = rng.normal(size=X.shape)
        _close(kernels.det_hvp(X, V), np.einsum("ijkl,kl->ij", _brute_hessian(X), V))
    X32 = rng.normal(size=(4, 4)).astype(np.float32)
    V32 = rng.normal(size=(4, 4)).astype(np.float32)
    got = kernels.det_hvp(X32, V32)
    assert got.dtype == np.float32
    _close(got, np.einsum("ijkl,kl->ij", _brute_hessian(X32.astype(float)), V32), 1e-5)
    assert kernels.det_hvp(np.zeros((0, 3, 3)), np.zeros((0, 3, 3))).shape == (0, 3, 3)
    assert kernels.det_hvp(np.zeros((2, 0, 0)), np.zeros((2, 0, 0))).shape == (2, 0, 0)


def _pairings():
    """Every pair of det_hessian's four axes summed with V in either orientation, the other two
    kept in either order, and some multi-factor directions."""
    specs = []
    L = "ijkl"
    for a in range(4):
        for b in range(a + 1, 4):
            rest = [c for c in range(4) if c not in (a, b)]
            for o in ((a, b), (b, a)):
                for r in (rest, rest[::-1]):
                    specs.append(f"ijkl,{L[o[0]]}{L[o[1]]}->{L[r[0]]}{L[r[1]]}")
    return specs + ["ijkl,k,l->ij", "ijkl,i,l->jk", "ijkl,kl,ij->", "ijkl,kl->i",
                    "ijkl,km,ml->ji", "ijkl,kk->ij", "ijkl,kl,ij,j->i"]


def test_every_pairing_of_the_hessians_axes_against_its_einsum():
    """The rewrite's sign and transposes for each pairing (the crossed pairs i-l and j-k with a
    minus), at a rank n - 1 matrix: equal to numpy's einsum with det_hessian; a pair the product
    cannot take (i-k, j-l) stays the Hessian."""
    rng = np.random.default_rng(7)
    X = _matrix(rng, 4, 3)
    H = kernels.det_hessian(X)
    arrays = {2: [rng.normal(size=(4, 4)), rng.normal(size=(4, 4))],
              1: [rng.normal(size=4), rng.normal(size=4)]}
    names = {2: ["V", "W"], 1: ["u", "w"]}
    shapes = {"X": ("n", "n"), "V": ("n", "n"), "W": ("n", "n"), "u": ("n",), "w": ("n",)}
    for spec in _pairings():
        operands = spec.split("->")[0].split(",")[1:]
        used, values, count = [], [], {1: 0, 2: 0}
        for o in operands:
            used.append(names[len(o)][count[len(o)] % 2])
            values.append(arrays[len(o)][count[len(o)] % 2])
            count[len(o)] += 1
        f = einderiv.compile(f'einsum("{spec}", det_hessian(X), {", ".join(used)})', shapes)
        _close(f(X=X, **dict(zip(used, values))), np.einsum(spec, H, *values))
        summed = set(spec.split(",")[0]) - set(spec.split("->")[1])
        if summed in ({"i", "k"}, {"j", "l"}):
            assert "det_hessian" in f.formula, spec
        else:
            assert "det_hessian" not in f.formula, (spec, f.formula)


def test_pairings_on_stacks_of_two_batch_axes():
    rng = np.random.default_rng(8)
    X = _matrix(rng, 3, 2, (2, 3))
    V, W, w = rng.normal(size=(2, 3, 3, 3)), rng.normal(size=(3, 3, 3)), rng.normal(size=2)
    H = kernels.det_hessian(X)
    shapes = {"X": ("b", "c", "n", "n"), "V": ("b", "c", "n", "n"), "W": ("c", "n", "n"),
              "w": ("b",)}
    for spec, names in [("bcijkl,bcil->bckj", "V"), ("bcijkl,bcjk->bcli", "V"),
                        ("bcijkl,ckl->bcij", "W"), ("bcijkl,cil->bkj", "W"),
                        ("bcijkl,bckl,b->cij", "V, w"), ("bcijkl,bcjk,ckj->bcil", "V, W")]:
        f = einderiv.compile(f'einsum("{spec}", det_hessian(X), {names})', shapes)
        assert "det_hessian" not in f.formula, spec
        arrays = {"V": V, "W": W, "w": w}
        values = [arrays[k.strip()] for k in names.split(",")]
        _close(f(X=X, V=V, W=W, w=w), np.einsum(spec, H, *values))


@slow
def test_composite_hvp_and_gradients_against_jax():
    """det and adj of transposes, products and adjugates, with X elsewhere too (one expression:
    JAX's eager second derivative takes a second or two whatever its size)."""
    jax, jnp = _jax()
    expr = ("det(X.T) * det(A @ X) + exp(det(X)) + sum(adj(X) @ adj(X.T) * A) "
            "+ sum(adj(adj(X))) + tr(adj(X) @ A) + logdet(X) * det(X) "
            "+ sum(solve(X, A)) * det(X)")
    rng = np.random.default_rng(9)
    X, A, V = rng.normal(size=(4, 4)) + np.eye(4), rng.normal(size=(4, 4)), \
        rng.normal(size=(4, 4))

    def adj(Y):
        return jnp.linalg.det(Y) * jnp.linalg.inv(Y)

    env = {"det": jnp.linalg.det, "adj": adj, "tr": jnp.trace, "exp": jnp.exp,
           "sum": jnp.sum, "solve": jnp.linalg.solve,
           "logdet": lambda Y: jnp.linalg.slogdet(Y)[1]}
    f = lambda Y: eval(expr, dict(env, X=Y, A=A))  # noqa: E731 - the same text in JAX
    hv = einderiv.hvp(expr, "X", WITH_A)
    assert "det_hessian" not in hv.formula
    _close(einderiv.grad(expr, "X", WITH_A)(X=X, A=A), jax.grad(f)(X))
    _close(hv(X=X, A=A, tangent=V), jax.jvp(jax.grad(f), (X,), (V,))[1], 1e-8)


@slow
def test_batch_broadcasting_against_jax():
    """X [1, n, n] against A [b, n, n], X [n, n] inside a stack of A, hvp by two arguments."""
    jax, jnp = _jax()
    rng = np.random.default_rng(10)
    adj = lambda Y: jnp.linalg.det(Y)[..., None, None] * jnp.linalg.inv(Y)  # noqa: E731
    X1, As, V1 = rng.normal(size=(1, 3, 3)), rng.normal(size=(4, 3, 3)), rng.normal(size=(1, 3, 3))
    shapes = {"X": (1, "n", "n"), "A": ("b", "n", "n")}
    f = lambda Y: jnp.sum(adj(Y) @ As)  # noqa: E731
    _close(einderiv.grad("sum(adj(X) @ A)", "X", shapes)(X=X1, A=As), jax.jit(jax.grad(f))(X1))
    _close(einderiv.hvp("sum(adj(X) @ A)", "X", shapes)(X=X1, A=As, tangent=V1),
           jax.jit(lambda Y, T: jax.jvp(jax.grad(f), (Y,), (T,))[1])(X1, V1), 1e-8)
    X, V, W = rng.normal(size=(3, 3)), rng.normal(size=(3, 3)), rng.normal(size=(4, 3, 3))
    g = lambda Y, B: jnp.sum(adj(B * Y) * B) + jnp.sum(jnp.linalg.det(B + Y))  # noqa: E731
    shapes = {"X": ("n", "n"), "A": ("b", "n", "n")}
    hv = einderiv.hvp("sum(adj(A * X) * A) + sum(det(A + X))", ["X", "A"], shapes)
    got = hv(X=X, A=As, tangent=(V, W))
    ref = jax.jit(lambda *a: jax.jvp(jax.grad(g, argnums=(0, 1)), a[:2], a[2:])[1])(X, As, V, W)
    _close(got[0], ref[0], 1e-8)
    _close(got[1], ref[1], 1e-8)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_singular_empty_and_float32_on_every_backend(backend):
    if backend != "numpy":
        pytest.importorskip(backend)
    if backend == "jax":
        _jax()
    if backend == "torch":
        import torch
        conv, back = torch.tensor, lambda t: t.numpy()
    elif backend == "jax":
        import jax.numpy as jnp
        conv, back = jnp.asarray, np.asarray
    else:
        conv, back = np.asarray, np.asarray
    rng = np.random.default_rng(11)
    shapes = {"X": ("b", "n", "n")}
    hv = einderiv.hvp("sum(det(X))", "X", shapes, backend=backend)
    vjp = einderiv.vjp("adj(X)", "X", shapes, backend=backend)
    arrays = [np.stack([_matrix(rng, 4, 4), _matrix(rng, 4, 3), _matrix(rng, 4, 2),
                        np.zeros((4, 4))])]  # ranks n, n - 1, n - 2 and 0
    if backend != "jax":  # (JAX's eager dispatch per shape is slow: the same kernel code)
        arrays += [np.zeros((0, 3, 3)), rng.normal(size=(2, 1, 1)), np.zeros((2, 0, 0))]
    for X in arrays:
        V = rng.normal(size=X.shape)
        H = kernels.det_hessian(X)
        _close(back(hv(X=conv(X), tangent=conv(V))), np.einsum("...ijkl,...kl->...ij", H, V))
        _close(back(vjp(X=conv(X), cotangent=conv(V))),
               np.einsum("...ij,...jikl->...kl", V, H))
        got32 = back(hv(X=conv(X.astype(np.float32)), tangent=conv(V.astype(np.float32))))
        assert got32.dtype == np.float32
        _close(got32, np.einsum("...ijkl,...kl->...ij", H, V), 1e-4)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("source, shapes, kind", [
    ("det_hvp(X)", SQUARE, einderiv.ParseError),
    ("det_hvp(X, X, X)", SQUARE, einderiv.ParseError),
    ("det_hvp(X, V=X)", SQUARE, einderiv.ParseError),
    ("det_hvp(X, 1.0)", SQUARE, einderiv.ShapeError),
    ("det_hvp(1.0, X)", SQUARE, einderiv.ShapeError),
    ("det_hvp(X, X[0])", SQUARE, einderiv.ShapeError),
    ("det_hvp(X, V)", {"X": ("n", "n"), "V": ("b", "n", "n")}, einderiv.ShapeError),
    ("det_hvp(X, V)", {"X": ("n", "n - 1"), "V": ("n", "n - 1")}, einderiv.ShapeError),
    ("det_hvp(X, V)", {"X": ("n", "n"), "V": ("m", "m")}, einderiv.ShapeError),
    ("det_hvp(X, (X, X))", SQUARE, einderiv.ParseError),
])
def test_det_hvp_written_wrong_is_a_clear_error(source, shapes, kind):
    with pytest.raises(kind) as info:
        einderiv.compile(source, shapes)
    message = str(info.value)
    assert "^" in message, message  # a caret under the offending argument or call
    assert "det_hvp" in message or "tuple" in message, message


@pytest.mark.no_roundtrip
def test_det_hvp_called_with_mismatched_arrays_is_a_clear_error():
    f = einderiv.compile("det_hvp(X, V)", {"X": ("n", "n"), "V": ("n", "n")})
    with pytest.raises(einderiv.ShapeError):
        f(X=np.zeros((3, 3)), V=np.zeros((4, 4)))
    with pytest.raises(einderiv.InputError):
        f(X=np.eye(3) * 1j, V=np.eye(3))


def test_pickled_and_threaded_results_with_det_hvp():
    rng = np.random.default_rng(12)
    results = [einderiv.hvp("det(X)", "X", SQUARE), einderiv.vjp("adj(X)", "X", SQUARE),
               einderiv.grad("sum(adj(X) * A)", "X", WITH_A)]
    X, V = _matrix(rng, 5, 4), rng.normal(size=(5, 5))
    expected = np.einsum("ijkl,kl->ij", kernels.det_hessian(X), V)
    calls = [lambda f, X, V: f(X=X, tangent=V), lambda f, X, V: f(X=X, cotangent=V.T),
             lambda f, X, V: f(X=X, A=V.T)]
    for f, call in zip(results, calls):
        g = pickle.loads(pickle.dumps(f))
        assert g.formula == f.formula and "det_hvp" in g.formula
        _close(call(g, X, V), expected)
    hv = results[0]
    Xs = [_matrix(rng, 8, 7) for _ in range(8)]
    Vs = [rng.normal(size=(8, 8)) for _ in range(8)]
    out, errors = [None] * 8, []

    def work(i):
        try:
            for _ in range(3):
                out[i] = hv(X=Xs[i], tangent=Vs[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for X, V, got in zip(Xs, Vs, out):
        _close(got, np.einsum("ijkl,kl->ij", kernels.det_hessian(X), V))


def test_the_whole_hessian_of_det_at_every_rank_and_small_n():
    H = einderiv.hessian("det(X)", "X", SQUARE)
    rng = np.random.default_rng(13)
    for n in (1, 2, 3):
        for rank in range(n + 1):
            X = _matrix(rng, n, rank)
            _close(H(X=X), _brute_hessian(X))
    assert H(X=np.zeros((0, 0))).shape == (0, 0, 0, 0)


def test_latex_of_det_hvp_results_renders(mathtext):
    results = [einderiv.hvp("det(X)", "X", SQUARE), einderiv.vjp("adj(X)", "X", SQUARE),
               einderiv.grad("sum(adj(X) * A)", "X", {"X": ("b", "n", "n"), "A": ("n", "n")}),
               einderiv.compile('einsum("ijkl,il->kj", det_hessian(X), V)',
                                {"X": ("n", "n"), "V": ("n", "n")}),
               einderiv.grad("adj(X)[0, 1]", "X", SQUARE)]
    for r in results:
        assert "det" in r.latex
        assert not mathtext(r.latex)
