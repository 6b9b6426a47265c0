"""Higher derivatives of `einderiv.jax.function` and `einderiv.torch.function` are einderiv's own
(issue 15 item 5; fault 4 of tests/test_det_products_breaker.py).

The framework differentiates none of einderiv's generated code: a second derivative is
einderiv's vjp or jvp of the backward program, a third one of that (einderiv/pullback.py). So
each second derivative is compared, in every mode JAX has (`jax.hessian`: forward over reverse;
`jax.grad` of `jax.grad` along a direction: reverse over reverse; `jax.jvp` of `jax.grad`), with
the same computation written in pure JAX (x64) for smooth expressions whose generated code
uses stable forms that JAX's own derivative of them would not reproduce (softplus, logsumexp,
log_softmax, a tanh network); and for `det(X)` and `sum(adj(X) * A)`, whose kernels are
SVD-based (JAX's derivative of them is NaN at X = I), with exact references: second
differences of `np.linalg.det` (det is linear in each entry) and central differences of
`kernels.det_hessian` (a polynomial of degree n - 2: exact at unit steps for n <= 4). Third
derivatives in three modes for one case; `jax.jit` and `jax.vmap` over them; what is derived
when (nothing past the vjp for a first derivative). The same for PyTorch's double backward.
Tests of a framework that is not installed are skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
import einderiv.pullback
from einderiv.evaluate import kernels


def _close(actual, expected, tol=1e-9):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.all(np.isfinite(actual)), actual
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


# -- the expressions: text, shapes, inputs (the one differentiated last), references ----------

def _inputs(name, rng):
    if name == "logistic":
        return [rng.normal(size=(6, 3)), np.sign(rng.normal(size=6)), rng.normal(size=3)]
    if name == "logsumexp":
        return [rng.normal(size=(5, 3)), rng.normal(size=3)]
    if name == "softmax cross-entropy":
        return [rng.normal(size=(6, 4)), np.eye(3)[rng.integers(0, 3, size=6)],
                rng.normal(size=(4, 3))]
    return [rng.normal(size=(6, 3)), rng.normal(size=4), rng.normal(size=6),
            rng.normal(size=(3, 4))]


SMOOTH = {
    "logistic": ("sum(softplus(-y * (X @ w)))", {"X": ("n", "d"), "y": ("n",), "w": ("d",)}),
    "logsumexp": ("logsumexp(A @ x)", {"A": ("m", "n"), "x": ("n",)}),
    "softmax cross-entropy": ("-sum(Y * log(softmax(X @ W)))",
                              {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k")}),
    "tanh MLP": ("sum((tanh(X @ W1) @ w2 - y) ** 2)",
                 {"X": ("n", "d"), "w2": ("h",), "y": ("n",), "W1": ("d", "h")}),
}


def _jax_reference(name, jnp, jax):
    return {
        "logistic": lambda X, y, w: jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))),
        "logsumexp": lambda A, x: jax.scipy.special.logsumexp(A @ x),
        "softmax cross-entropy": lambda X, Y, W: -jnp.sum(Y * jax.nn.log_softmax(X @ W)),
        "tanh MLP": lambda X, w2, y, W1: jnp.sum((jnp.tanh(X @ W1) @ w2 - y) ** 2),
    }[name]


def _torch_reference(name, torch):
    return {
        "logistic": lambda X, y, w: torch.nn.functional.softplus(-y * (X @ w)).sum(),
        "logsumexp": lambda A, x: torch.logsumexp(A @ x, 0),
        "softmax cross-entropy": lambda X, Y, W: -(Y * torch.log_softmax(X @ W, -1)).sum(),
        "tanh MLP": lambda X, w2, y, W1: ((torch.tanh(X @ W1) @ w2 - y) ** 2).sum(),
    }[name]


def _jax_second(jax, f, args, V):
    """f's second derivative by its last input, three ways: the whole Hessian (forward over
    reverse), along V by reverse over reverse, along V by forward over reverse."""
    jnp = jax.numpy
    *rest, x = args

    def g(x):
        return jax.grad(lambda x: f(*rest, x))(x)

    @jax.jit
    def run(x, V):
        hessian = jax.hessian(lambda x: f(*rest, x))(x)
        reverse = jax.grad(lambda x: jnp.sum(g(x) * V))(x)
        forward = jax.jvp(g, (x,), (V,))[1]
        return hessian, reverse, forward
    return run(x, V)


def _check_second(hessian, reverse, forward, expected_hessian, V, tol=1e-9):
    _close(hessian, expected_hessian, tol)
    along = np.tensordot(np.asarray(expected_hessian), V, axes=V.ndim)
    _close(reverse, along, tol)
    _close(forward, along, tol)


# -- JAX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SMOOTH))
def test_jax_second_derivatives_match_pure_jax(jax, name):
    rng = np.random.default_rng(1)
    expr, shapes = SMOOTH[name]
    f = einderiv.jax.function(expr, shapes)
    args = _inputs(name, rng)
    V = rng.normal(size=args[-1].shape)
    reference = _jax_reference(name, jax.numpy, jax)
    theirs = jax.jit(jax.hessian(reference, argnums=len(args) - 1))(*args)
    _check_second(*_jax_second(jax, f, args, V), theirs, V)


def _brute_det_hessian(X):
    """det's Hessian by second differences of np.linalg.det, exact: det is linear in each
    entry (0 where i == k or j == l: one row or column twice)."""
    n = X.shape[-1]
    H = np.zeros((n,) * 4)
    for i, j, k, l in np.ndindex(n, n, n, n):
        if i != k and j != l:
            Eij, Ekl = np.zeros((n, n)), np.zeros((n, n))
            Eij[i, j] = Ekl[k, l] = 1.0
            H[i, j, k, l] = (np.linalg.det(X + Eij + Ekl) - np.linalg.det(X + Eij)
                             - np.linalg.det(X + Ekl) + np.linalg.det(X))
    return H


def _adj_hessian(X, A):
    """The Hessian of sum(adj(X) * A), d/dX[p, q] of its gradient einsum('ij,jikl->kl', A,
    det_hessian(X)): central differences at unit steps, exact for a polynomial of degree
    n - 2 <= 2."""
    n = X.shape[-1]
    out = np.zeros((n,) * 4)
    for p, q in np.ndindex(n, n):
        E = np.zeros((n, n))
        E[p, q] = 1.0
        out[:, :, p, q] = (np.einsum("ij,jikl->kl", A, kernels.det_hessian(X + E))
                           - np.einsum("ij,jikl->kl", A, kernels.det_hessian(X - E))) / 2
    return out


def _rank(rng, n, rank):
    U, s, Vh = np.linalg.svd(rng.normal(size=(n, n)))
    s[rank:] = 0.0
    return (U * s) @ Vh


def _det_points(rng):
    """4 x 4 matrices where an SVD-based kernel's JAX derivative is NaN (I, a permutation:
    every singular value repeated) or det's derivatives are read from a singular X."""
    return np.stack([np.eye(4), np.eye(4)[[1, 0, 3, 2]], _rank(rng, 4, 3), _rank(rng, 4, 2)])


def _jax_second_at_points(jax, f, rest, points, V):
    """_jax_second at each of a stack of points, under jax.vmap: one compilation."""
    return jax.jit(jax.vmap(lambda x: _jax_second(jax, f, [*rest, x], V)))(points)


def test_jax_hessian_of_det_at_repeated_singular_values_and_singular(jax):
    """JAX's derivative of the SVD-based adjugate kernel (det's backward) is NaN at X = I."""
    rng = np.random.default_rng(2)
    points, V = _det_points(rng), rng.normal(size=(4, 4))
    f = einderiv.jax.function("det(X)", {"X": ("n", "n")})
    got = _jax_second_at_points(jax, f, [], points, V)
    for k, X in enumerate(points):
        _check_second(*(a[k] for a in got), _brute_det_hessian(X), V)


def test_jax_hessian_of_sum_adj_times_a(jax):
    """det's third derivative: the backward is det_hvp(X, A.T), SVD-based."""
    rng = np.random.default_rng(3)
    points, A, V = _det_points(rng), rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    f = einderiv.jax.function("sum(adj(X) * A)", {"A": ("n", "n"), "X": ("n", "n")})
    got = _jax_second_at_points(jax, f, [A], points, V)
    for k, X in enumerate(points):
        _check_second(*(a[k] for a in got), _adj_hessian(X, A), V)


def test_jax_derivatives_never_differentiate_generated_code(jax):
    """The traced Hessian of det is einderiv primitives: no SVD of JAX's to differentiate."""
    f = einderiv.jax.function("det(X)", {"X": ("n", "n")})
    jaxpr = str(jax.make_jaxpr(jax.hessian(f))(np.eye(3)))
    assert "einderiv" in jaxpr and "svd" not in jaxpr


def test_jax_third_derivatives(jax):
    jnp = jax.numpy
    rng = np.random.default_rng(4)
    expr, shapes = SMOOTH["tanh MLP"]
    f = einderiv.jax.function(expr, shapes)
    X, w2, y, W1 = _inputs("tanh MLP", rng)
    V = rng.normal(size=W1.shape)

    @jax.jit
    def ours(W1):
        g = jax.grad(lambda W: f(X, w2, y, W))
        along = lambda W: jnp.sum(g(W) * V)  # noqa: E731
        pushed = lambda W: jax.jvp(lambda W: f(X, w2, y, W), (W,), (V,))[1]  # noqa: E731
        return (jax.jacrev(jax.jacrev(along))(W1),   # reverse, reverse, reverse
                jax.jacfwd(jax.jacrev(along))(W1),   # forward, reverse, reverse
                jax.jacfwd(jax.jacfwd(pushed))(W1))  # forward, forward, forward
    reference = _jax_reference("tanh MLP", jnp, jax)
    # d^3 f [V, ., .], the reference's own third derivative
    theirs = jax.jit(jax.hessian(lambda W: jnp.sum(jax.grad(reference, argnums=3)(X, w2, y, W)
                                                   * V)))(W1)
    assert np.abs(np.asarray(theirs)).max() > 1e-3  # not a vacuous 0
    for a in ours(W1):
        _close(a, theirs)


def test_jax_vmap_and_jit_over_higher_derivatives(jax):
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    expr, shapes = SMOOTH["logistic"]
    f = einderiv.jax.function(expr, shapes)
    reference = _jax_reference("logistic", jnp, jax)
    X, y, _ = _inputs("logistic", rng)
    ws = rng.normal(size=(4, 3))
    ours, theirs = (jax.jit(lambda ws: (
        jax.vmap(jax.hessian(g, argnums=2), in_axes=(None, None, 0))(X, y, ws),  # batched
        jax.hessian(lambda ws: jnp.sum(jax.vmap(g, in_axes=(None, None, 0))(X, y, ws)))(ws),
        jax.vmap(lambda X: jax.grad(lambda X: jnp.sum(jax.grad(g)(X, y, ws[0]) ** 2))(X))(
            np.stack([X, 2 * X]))))(ws) for g in (f, reference))
    for a, b in zip(ours, theirs):
        _close(a, b)


def test_jax_derives_only_what_is_asked_for(jax, monkeypatch):
    """A first derivative derives the vjp and nothing more (jax.grad transposes the jvp rule's
    program without deriving it); a second derives one program more; each once."""
    asked = []
    for name in ("_vjp", "_jvp", "vjp"):
        original = getattr(einderiv.pullback, name)

        def spy(*args, name=name, original=original, **kwargs):
            asked.append(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(einderiv.pullback, name, spy)
    expr, shapes = SMOOTH["logistic"]
    f = einderiv.jax.function(expr, shapes)
    X, y, w = _inputs("logistic", np.random.default_rng(6))
    labels = y.astype(np.int64)  # an integer input: no derivative by it at any order
    # Under jit: eagerly, jax.hessian's forward pass also takes the tangent of f's value
    # (f's own jvp), which jit drops unused.
    for _ in range(2):
        jax.jit(jax.grad(f, argnums=2))(X, labels, w)
    assert asked == ["vjp"]
    for _ in range(2):
        H = jax.jit(jax.hessian(f, argnums=2))(X, labels, w)  # the vjp's jvp
    assert asked == ["vjp", "_jvp"]
    for _ in range(2):
        jax.jit(jax.grad(lambda w: jax.numpy.sum(jax.grad(f, argnums=2)(X, labels, w))))(w)
    assert asked == ["vjp", "_jvp", "_vjp"]  # the vjp's vjp
    reference = _jax_reference("logistic", jax.numpy, jax)
    _close(H, jax.hessian(reference, argnums=2)(X, y, w))


# -- PyTorch -----------------------------------------------------------------------------------

def _torch_hessian(torch, f, args):
    *rest, x = (torch.tensor(a) for a in args)
    return torch.autograd.functional.hessian(lambda x: f(*rest, x), x).numpy()


@pytest.mark.parametrize("name", list(SMOOTH))
def test_torch_double_backward_matches_autograd(torch, name):
    rng = np.random.default_rng(7)
    expr, shapes = SMOOTH[name]
    F = einderiv.torch.function(expr, shapes)
    args = _inputs(name, rng)
    _close(_torch_hessian(torch, F, args), _torch_hessian(torch, _torch_reference(name, torch),
                                                           args))


def test_torch_hessian_of_det_and_of_sum_adj_times_a(torch):
    rng = np.random.default_rng(8)
    A = rng.normal(size=(4, 4))
    det = einderiv.torch.function("det(X)", {"X": ("n", "n")})
    adj = einderiv.torch.function("sum(adj(X) * A)", {"A": ("n", "n"), "X": ("n", "n")})
    for X in _det_points(rng):
        _close(_torch_hessian(torch, det, [X]), _brute_det_hessian(X))
        _close(_torch_hessian(torch, adj, [A, X]), _adj_hessian(X, A))


def test_torch_third_derivative_and_gradgradcheck(torch):
    rng = np.random.default_rng(10)
    expr, shapes = SMOOTH["tanh MLP"]
    F = einderiv.torch.function(expr, shapes)
    X, w2, y, W1 = (torch.tensor(a) for a in _inputs("tanh MLP", rng))
    V = torch.tensor(rng.normal(size=tuple(W1.shape)))

    def third(f):
        W = W1.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(X, w2, y, W), W, create_graph=True)
        (h,) = torch.autograd.grad((g * V).sum(), W, create_graph=True)
        (t,) = torch.autograd.grad((h * V).sum(), W)
        return t
    _close(third(F), third(_torch_reference("tanh MLP", torch)))
    # a Python number among the inputs, and every input's second derivative at once
    L = einderiv.torch.function("sum(softplus(-y * (X @ w))) + lam / 2 * (w @ w)",
                                {**SMOOTH["logistic"][1], "lam": ()})
    inputs = [torch.tensor(a, requires_grad=True) for a in _inputs("logistic", rng)]
    assert torch.autograd.gradgradcheck(lambda X, y, w: L(X, y, w, 0.5), inputs)
