"""Breaker s31: machine-learning objectives, written as a researcher who would use einderiv instead
of JAX writes them, compared with float64 JAX (`jax.grad`, `jax.hessian`, `jax.jvp`, `jax.vjp`),
with mpmath or scipy where JAX's own derivative cancels, and pushed to extremes (logits of 1e3,
temperatures of 1e-3, float32, size-1 dimensions, ties at kinks, threads, positional arrays).
Every result a test calls is also checked by tests/conftest.py on the formula round trip and
against `.evaluate_ir`.

Covered and holding: Gaussian-process NLML (solve + logdet, inv, cholesky; n = 1) and its
minimisation through `einderiv.flat`; Gaussian-mixture log-likelihood with logsumexp and
log_softmax weights (far outliers, one component); VAE ELBO with a reparameterised Gaussian KL
(saturated decoder logits); Poisson regression (integer counts); softmax regression with label
smoothing (Hessian at logits of 1e3 exact to 2e-16 where JAX's has no digit); InfoNCE with a
temperature of 1e-3 (gradient to 1e-13 of mpmath, JAX's is 12% off); causal attention through
`where(M > 0, S, -1e999)` with a fully padded query row and a boolean mask; a multi-head
transformer block (reshape + einsum + layer norm + relu MLP); layer and batch norm; focal loss
(Hessian at margins of 300 exact where JAX's is 6e6 relative off); hinge and squared hinge at
the margin; Student-t likelihood by w, nu and s; elastic-net logistic regression; matrix
factorisation; Tikhonov least squares; KL between Gaussians; Crammer-Singer hinge; triplet and
contrastive losses; mixture density network; PPO clipped objective; distillation KL with a
temperature; Dice loss; RankNet; a RealNVP coupling log-likelihood; weight-tied residual
networks unrolled (4 steps here, 3 and 10 by hand); `1 - softmax` on a fully padded row; entropy bonus at logits of 1e3; the hand-written "stable" cross-entropy
(max subtracted) exact at a lead of 40 and 100; float32 in / float32 out; jvp / vjp / hvp /
hessian with lists of `wrt`; results called from six threads, positionally and by keyword;
pickled and deep-copied results.

Faults found (all fixed, in the rewrite pass, einderiv/simplify/; the tests below hold), each a
stable form the docs name that was not used when its operands are laid out in a way the matcher
did not see (tests/test_rewrites_through_selections.py has more of each kind):

1. An elementwise rewrite is not seen through a diagonal, a strided slice or a reversal:
   `log(diag(softmax(L, axis=1)))` (the CLIP / InfoNCE loss with labels arange(n)) stays
   `log(diag(softmax(L)))`, -inf where a logit leads its row by 750 (the value is inf; its
   gradient is right), and so do `log(softmax(x)[::2])`, `log(softmax(x)[::-1])`,
   `log(flip(softmax(x)))`, `log(sigmoid(x)[::-1])`, while `log(softmax(x)[1:])`,
   `log(softmax(L)[:, 0])` and `log(softmax(L).T)` are rewritten (README: "A pattern whose top
   is an elementwise function also matches it applied to a pick, a slice, a transpose or a
   broadcast"). `_seen_through` in einderiv/simplify/rewrite.py takes Unit picks and Delta
   windows of a Contract with distinct labels: a diagonal repeats a label, and steps and
   reversals are other nodes.
2. `log(exp(a) + exp(b))` is not `logaddexp(a, b)` where a and b have different shapes that
   broadcast (`log(exp(p)[:, None] + exp(N))`, `log(exp(a) + exp(N))` with a scalar a): inf,
   and a nan gradient, where logaddexp (which broadcasts) is finite.
3. `exp(u) / (exp(u) + exp(v))` is not `sigmoid(u - v)` where u and v broadcast: nan; a scalar
   u is rewritten, a scalar v is not.
4. `log(sum(w * exp(x), axis))` is not `logsumexp_weighted` where the weights broadcast against
   x: the mixture log-likelihood `log(sum(pi * exp(L), axis=1))` with pi [k] and L [n, k], and
   a Cox partial likelihood `log(sum(R * exp(eta), axis=1))` with a risk-set matrix R, lower to
   `log(exp(L) @ pi)` and `log(R @ exp(eta))`, +-inf with a nan gradient, while the vector
   `log(v @ exp(eta))` is rewritten. (`logsumexp_weighted` itself takes only weights shaped
   like x, unlike scipy's `b=`.) Also `log(mean(w * exp(x)))` with w shaped like x: the
   quotient form of the rule exists for the unweighted sum only.

Not faults (documented conventions, or JAX's own failure): `abs` has the derivative 0 at 0
(JAX 1); `xlogy(p, p)` has a nan gradient at p = 0 (as JAX, documented); the Hessian of
`sqrt(r ** 2 + e ** 2)` at |r| >> e is 1 / t - r ** 2 / t ** 3, which cancels (JAX's too);
float32 Hessians of logistic losses underflow where the margin is 1e5.
"""
from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

import einderiv
from three_paths import close as _close, paths, quiet
from three_paths import three as three_paths

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
from jax.scipy.special import gammaln as jgammaln  # noqa: E402
from jax.scipy.special import logsumexp as jlogsumexp  # noqa: E402

mpmath = pytest.importorskip("mpmath")


def entrywise(actual, expected, rtol=1e-9):
    """Every nonzero entry to rtol of itself."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    denom = np.where(expected == 0, 1.0, np.abs(expected))
    err = float(np.max(np.abs(actual - expected) / denom))
    assert err <= rtol, f"entrywise relative error {err:.3g}\n{actual}\nvs\n{expected}"


def close(actual, expected, rtol=1e-9):
    """three_paths.close at this file's tolerance."""
    _close(actual, expected, rtol)


def three(result, expected, rtol=1e-9, **arrays):
    """three_paths.three at this file's tolerance."""
    three_paths(result, expected, rtol, **arrays)


# ---------------------------------------------------------------------------------------------
# The models: (expression, shapes, the JAX function of the arrays in `shapes` order, arrays)
# ---------------------------------------------------------------------------------------------

def _gp():
    rng = np.random.default_rng(0)
    expr = """D = sum((Xg[:, None, :] - Xg[None, :, :]) ** 2, axis=2)
K = exp(p[0]) * exp(-0.5 * D * exp(-2 * p[1])) + exp(p[2]) * eye(n)
0.5 * yg @ solve(K, yg) + 0.5 * logdet(K)"""

    def f(Xg, yg, p):
        D = jnp.sum((Xg[:, None, :] - Xg[None, :, :]) ** 2, axis=2)
        K = jnp.exp(p[0]) * jnp.exp(-0.5 * D * jnp.exp(-2 * p[1])) \
            + jnp.exp(p[2]) * jnp.eye(Xg.shape[0])
        return 0.5 * yg @ jnp.linalg.solve(K, yg) + 0.5 * jnp.linalg.slogdet(K)[1]
    arrays = dict(Xg=rng.standard_normal((5, 2)), yg=rng.standard_normal(5),
                  p=np.array([0.3, -0.2, -1.0]))
    return expr, {"Xg": ("n", 2), "yg": ("n",), "p": (3,)}, f, arrays


def _gp_cholesky():
    expr, shapes, f, arrays = _gp()
    expr = expr.replace("0.5 * logdet(K)", "sum(log(diag(cholesky(K))))")
    return expr, shapes, f, arrays


def _gmm():
    rng = np.random.default_rng(1)
    expr = """s2 = exp(2 * ls)
ll = -0.5 * sum((Z[:, None, :] - mu[None]) ** 2, axis=2) / s2[None] - 2 * ls[None] - 1.8378770664093453 + log_softmax(a)[None]
-sum(logsumexp(ll, axis=1))"""

    def f(Z, mu, ls, a):
        s2 = jnp.exp(2 * ls)
        ll = -0.5 * jnp.sum((Z[:, None, :] - mu[None]) ** 2, axis=2) / s2[None] - 2 * ls[None] \
            - jnp.log(2 * jnp.pi) + jax.nn.log_softmax(a)[None]
        return -jnp.sum(jlogsumexp(ll, axis=1))
    Z = rng.standard_normal((7, 2))
    Z[0] = [300.0, -200.0]  # a far outlier: every component's density underflows
    arrays = dict(Z=Z, mu=rng.standard_normal((3, 2)), ls=0.3 * rng.standard_normal(3),
                  a=rng.standard_normal(3))
    return expr, {"Z": ("n", 2), "mu": ("k", 2), "ls": ("k",), "a": ("k",)}, f, arrays


def _vae():
    rng = np.random.default_rng(2)
    expr = """z = mu + exp(0.5 * lv) * eps
logits = Wd @ z
rec = sum(x * log(sigmoid(logits)) + (1 - x) * log(1 - sigmoid(logits)))
kl = -0.5 * sum(1 + lv - mu ** 2 - exp(lv))
-rec + kl"""

    def f(x, eps, Wd, mu, lv):
        z = mu + jnp.exp(0.5 * lv) * eps
        logits = Wd @ z
        rec = jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits))
        return -rec - 0.5 * jnp.sum(1 + lv - mu ** 2 - jnp.exp(lv))
    arrays = dict(x=(rng.random(5) > 0.5).astype(float), eps=rng.standard_normal(2),
                  Wd=500 * rng.standard_normal((5, 2)),  # saturated decoder logits
                  mu=rng.standard_normal(2), lv=rng.standard_normal(2))
    shapes = {"x": ("p",), "eps": ("l",), "Wd": ("p", "l"), "mu": ("l",), "lv": ("l",)}
    return expr, shapes, f, arrays


def _poisson():
    rng = np.random.default_rng(3)
    expr = "eta = X @ w\nsum(exp(eta) - y * eta + lgamma(y + 1))"

    def f(X, y, w):
        eta = X @ w
        return jnp.sum(jnp.exp(eta) - y * eta + jgammaln(y + 1.0))
    arrays = dict(X=rng.standard_normal((6, 3)), y=rng.poisson(2, 6),  # integer counts
                  w=0.3 * rng.standard_normal(3))
    return expr, {"X": ("n", "d"), "y": ("n",), "w": ("d",)}, f, arrays


def _huber():
    rng = np.random.default_rng(4)
    expr = "r = X @ w - y\nsum(where(abs(r) <= delta, 0.5 * r ** 2, delta * (abs(r) - 0.5 * delta)))"

    def f(X, y, w, delta):
        r = X @ w - y
        return jnp.sum(jnp.where(jnp.abs(r) <= delta, 0.5 * r ** 2, delta * (jnp.abs(r) - 0.5 * delta)))
    arrays = dict(X=rng.standard_normal((6, 3)), y=rng.standard_normal(6), w=rng.standard_normal(3),
                  delta=0.7)
    return expr, {"X": ("n", "d"), "y": ("n",), "w": ("d",), "delta": ()}, f, arrays


def _pseudo_huber():
    expr, shapes, _, arrays = _huber()
    expr = "r = X @ w - y\nsum(delta ** 2 * (sqrt(1 + (r / delta) ** 2) - 1))"

    def f(X, y, w, delta):
        r = X @ w - y
        return jnp.sum(delta ** 2 * (jnp.sqrt(1 + (r / delta) ** 2) - 1))
    return expr, shapes, f, arrays


def _attention():
    rng = np.random.default_rng(5)
    expr = """Sc = Q @ K.T / sqrt(size(d))
P = softmax(where(M > 0, Sc, -1e999), axis=1)
sum((P @ V - Y) ** 2)"""
    T = 4
    M = np.tril(np.ones((T, T)))
    M[2] = 0  # a fully padded query: its row of P is 0 (documented), JAX's softmax is nan

    def f(Q, K, V, M, Y):
        keep = jnp.array([0, 1, 3])
        S = jnp.where(M > 0, Q @ K.T / jnp.sqrt(Q.shape[1]), -jnp.inf)[keep]
        return jnp.sum((jax.nn.softmax(S, axis=1) @ V - Y[keep]) ** 2) + jnp.sum(Y[2] ** 2)
    arrays = dict(Q=rng.standard_normal((T, 3)), K=rng.standard_normal((T, 3)),
                  V=rng.standard_normal((T, 3)), M=M, Y=rng.standard_normal((T, 3)))
    shapes = {"Q": ("t", "d"), "K": ("t", "d"), "V": ("t", "d"), "M": ("t", "t"), "Y": ("t", "d")}
    return expr, shapes, f, arrays


def _layer_norm():
    rng = np.random.default_rng(6)
    expr = """h = W @ x
z = (h - mean(h)) / sqrt(var(h) + 1e-5) * g + b
sum((x + tanh(z)) ** 2)"""

    def f(x, W, g, b):
        h = W @ x
        z = (h - jnp.mean(h)) / jnp.sqrt(jnp.var(h) + 1e-5) * g + b
        return jnp.sum((x + jnp.tanh(z)) ** 2)
    arrays = dict(x=rng.standard_normal(4), W=rng.standard_normal((4, 4)),
                  g=rng.standard_normal(4), b=rng.standard_normal(4))
    return expr, {"x": ("d",), "W": ("d", "d"), "g": ("d",), "b": ("d",)}, f, arrays


def _batch_norm():
    rng = np.random.default_rng(7)
    expr = "Z = (H - mean(H, axis=0)) / sqrt(var(H, axis=0) + 1e-5) * g + b\nsum(tanh(Z) * T)"

    def f(H, g, b, T):
        Z = (H - H.mean(0)) / jnp.sqrt(H.var(0) + 1e-5) * g + b
        return jnp.sum(jnp.tanh(Z) * T)
    arrays = dict(H=rng.standard_normal((5, 3)), g=rng.standard_normal(3),
                  b=rng.standard_normal(3), T=rng.standard_normal((5, 3)))
    return expr, {"H": ("n", "c"), "g": ("c",), "b": ("c",), "T": ("n", "c")}, f, arrays


def _student_t():
    rng = np.random.default_rng(8)
    expr = ("r = (y - X @ w) / s\nsum(-lgamma((nu + 1) / 2) + lgamma(nu / 2) + "
            "0.5 * log(nu * 3.141592653589793) + log(s) + (nu + 1) / 2 * log1p(r ** 2 / nu))")

    def f(X, y, w, nu, s):
        r = (y - X @ w) / s
        return jnp.sum(-jgammaln((nu + 1) / 2) + jgammaln(nu / 2) + 0.5 * jnp.log(nu * jnp.pi)
                       + jnp.log(s) + (nu + 1) / 2 * jnp.log1p(r ** 2 / nu))
    arrays = dict(X=rng.standard_normal((6, 3)), y=rng.standard_normal(6),
                  w=rng.standard_normal(3), nu=3.5, s=0.8)
    return expr, {"X": ("n", "d"), "y": ("n",), "w": ("d",), "nu": (), "s": ()}, f, arrays


def _elastic_net():
    rng = np.random.default_rng(9)
    expr = "sum(log(1 + exp(-y * (X @ w)))) + a * norm(w, 1) + 0.5 * b * norm(w) ** 2"

    def f(X, y, w, a, b):
        return jnp.sum(jax.nn.softplus(-y * (X @ w))) + a * jnp.sum(jnp.abs(w)) \
            + 0.5 * b * jnp.sum(w ** 2)
    arrays = dict(X=rng.standard_normal((6, 3)), y=np.sign(rng.standard_normal(6)),
                  w=1e3 * rng.standard_normal(3), a=0.1, b=0.2)  # margins of 1e3
    return expr, {"X": ("n", "d"), "y": ("n",), "w": ("d",), "a": (), "b": ()}, f, arrays


def _matrix_factorisation():
    rng = np.random.default_rng(10)
    expr = "sum(M * (R - U @ V.T) ** 2) + lam * (sum(U ** 2) + sum(V ** 2))"

    def f(R, M, U, V, lam):
        return jnp.sum(M * (R - U @ V.T) ** 2) + lam * (jnp.sum(U ** 2) + jnp.sum(V ** 2))
    arrays = dict(R=rng.standard_normal((4, 5)), M=(rng.random((4, 5)) > 0.3).astype(float),
                  U=rng.standard_normal((4, 2)), V=rng.standard_normal((5, 2)), lam=0.1)
    shapes = {"R": ("n", "m"), "M": ("n", "m"), "U": ("n", "r"), "V": ("m", "r"), "lam": ()}
    return expr, shapes, f, arrays


def _gauss_kl():
    rng = np.random.default_rng(11)
    expr = ("0.5 * (tr(solve(S2, S1)) + (m2 - m1) @ solve(S2, m2 - m1) - size(k) "
            "+ logdet(S2) - logdet(S1))")

    def f(m1, m2, S1, S2):
        return 0.5 * (jnp.trace(jnp.linalg.solve(S2, S1)) + (m2 - m1) @ jnp.linalg.solve(S2, m2 - m1)
                      - m1.shape[0] + jnp.linalg.slogdet(S2)[1] - jnp.linalg.slogdet(S1)[1])
    B1, B2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    arrays = dict(m1=rng.standard_normal(3), m2=rng.standard_normal(3),
                  S1=B1 @ B1.T + np.eye(3), S2=B2 @ B2.T + np.eye(3))
    return expr, {"m1": ("k",), "m2": ("k",), "S1": ("k", "k"), "S2": ("k", "k")}, f, arrays


def _contrastive():
    rng = np.random.default_rng(12)
    expr = "dd = norm(A - B, axis=1)\nsum((1 - y) * dd ** 2 + y * relu(m - dd) ** 2)"

    def f(A, B, y, m):
        dd = jnp.linalg.norm(A - B, axis=1)
        return jnp.sum((1 - y) * dd ** 2 + y * jax.nn.relu(m - dd) ** 2)
    arrays = dict(A=rng.standard_normal((4, 3)), B=rng.standard_normal((4, 3)),
                  y=np.array([0.0, 1.0, 1.0, 0.0]), m=3.0)
    return expr, {"A": ("n", "d"), "B": ("n", "d"), "y": ("n",), "m": ()}, f, arrays


def _mdn():
    rng = np.random.default_rng(13)
    expr = """ll = log_softmax(A) - log(sig) - 0.5 * ((y[:, None] - mu) / sig) ** 2
-sum(logsumexp(ll, axis=1))"""

    def f(A, mu, sig, y):
        ll = jax.nn.log_softmax(A, axis=-1) - jnp.log(sig) - 0.5 * ((y[:, None] - mu) / sig) ** 2
        return -jnp.sum(jlogsumexp(ll, axis=1))
    arrays = dict(A=rng.standard_normal((4, 3)), mu=rng.standard_normal((4, 3)),
                  sig=np.exp(rng.standard_normal((4, 3))), y=rng.standard_normal(4))
    return expr, {"A": ("n", "k"), "mu": ("n", "k"), "sig": ("n", "k"), "y": ("n",)}, f, arrays


def _distillation():
    rng = np.random.default_rng(14)
    expr = ("T ** 2 * sum(softmax(Zt / T, axis=1) * "
            "log(softmax(Zt / T, axis=1) / softmax(Zs / T, axis=1)))")

    def f(Zt, Zs, T):
        return T ** 2 * jnp.sum(jax.nn.softmax(Zt / T, axis=1)
                                * (jax.nn.log_softmax(Zt / T, axis=1) - jax.nn.log_softmax(Zs / T, axis=1)))
    arrays = dict(Zt=3 * rng.standard_normal((3, 4)), Zs=3 * rng.standard_normal((3, 4)), T=2.0)
    return expr, {"Zt": ("n", "k"), "Zs": ("n", "k"), "T": ()}, f, arrays


def _ppo():
    rng = np.random.default_rng(15)
    expr = "r = exp(lp - lpo)\n-mean(minimum(r * adv, clip(r, 1 - e, 1 + e) * adv))"

    def f(lp, lpo, adv, e):
        r = jnp.exp(lp - lpo)
        return -jnp.mean(jnp.minimum(r * adv, jnp.clip(r, 1 - e, 1 + e) * adv))
    lpo = rng.standard_normal(6)
    arrays = dict(lp=lpo + 0.3 * rng.standard_normal(6), lpo=lpo, adv=rng.standard_normal(6), e=0.2)
    return expr, {"lp": ("n",), "lpo": ("n",), "adv": ("n",), "e": ()}, f, arrays


def _realnvp():
    rng = np.random.default_rng(16)
    expr = """s = tanh(W @ x1 + b)
y2 = x2 * exp(s) + V @ x1
0.5 * sum(y2 ** 2) + 0.5 * sum(x1 ** 2) - sum(s)"""

    def f(x1, x2, W, b, V):
        s = jnp.tanh(W @ x1 + b)
        y2 = x2 * jnp.exp(s) + V @ x1
        return 0.5 * jnp.sum(y2 ** 2) + 0.5 * jnp.sum(x1 ** 2) - jnp.sum(s)
    arrays = dict(x1=rng.standard_normal(3), x2=rng.standard_normal(3), W=rng.standard_normal((3, 3)),
                  b=rng.standard_normal(3), V=rng.standard_normal((3, 3)))
    shapes = {"x1": ("d",), "x2": ("d",), "W": ("d", "d"), "b": ("d",), "V": ("d", "d")}
    return expr, shapes, f, arrays


def _ranknet():
    rng = np.random.default_rng(17)
    expr = "sum(M * softplus(s[:, None] - s[None, :]))"

    def f(s, M):
        return jnp.sum(M * jax.nn.softplus(s[:, None] - s[None, :]))
    arrays = dict(s=2 * rng.standard_normal(5),
                  M=np.triu((rng.random((5, 5)) > 0.4).astype(float), 1))
    return expr, {"s": ("n",), "M": ("n", "n")}, f, arrays


MODELS = {
    "gp_nlml/p": (_gp, "p", True),
    "gp_cholesky/p": (_gp_cholesky, "p", False),
    "gmm_outlier/mu": (_gmm, "mu", True),
    "vae_saturated/lv": (_vae, "lv", True),
    "poisson_int_counts/w": (_poisson, "w", True),
    "huber/w": (_huber, "w", True),
    "pseudo_huber/delta": (_pseudo_huber, "delta", True),
    "attention_padded_row/Q": (_attention, "Q", True),
    "layer_norm/W": (_layer_norm, "W", True),
    "batch_norm/H": (_batch_norm, "H", True),
    "student_t/nu": (_student_t, "nu", True),
    "elastic_net_margin_1e3/w": (_elastic_net, "w", True),
    "matrix_factorisation/U": (_matrix_factorisation, "U", True),
    "gauss_kl/S2": (_gauss_kl, "S2", True),
    "contrastive/A": (_contrastive, "A", True),
    "mdn/sig": (_mdn, "sig", True),
    "distillation/T": (_distillation, "T", True),
    "ppo/lp": (_ppo, "lp", False),
    "realnvp/W": (_realnvp, "W", True),
    "ranknet/s": (_ranknet, "s", True),
}


def _jax_reference(f, k, with_hessian):
    """f's value, gradient and (where asked) Hessian by argument k, in one jitted call."""
    def all_of(*args):
        out = (f(*args), jax.grad(f, argnums=k)(*args))
        return out + (jax.hessian(f, argnums=k)(*args),) if with_hessian else out
    return jax.jit(all_of)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_against_jax(name):
    """Value, gradient, Hessian (where the flag says) and hvp against float64 JAX."""
    make, wrt, with_hessian = MODELS[name]
    expr, shapes, f, arrays = make()
    order = list(shapes)
    args = [jnp.asarray(arrays[k]) for k in order]
    k = order.index(wrt)
    expected = [np.asarray(e) for e in _jax_reference(f, k, with_hessian)(*args)]
    close(quiet(einderiv.compile(expr, shapes), **arrays), expected[0])
    three(einderiv.grad(expr, wrt, shapes), expected[1], **arrays)
    if with_hessian:
        three(einderiv.hessian(expr, wrt, shapes), expected[2], **arrays)
        v = np.random.default_rng(99).standard_normal(np.shape(arrays[wrt]))
        got = quiet(einderiv.hvp(expr, wrt, shapes), **arrays, tangent=v)
        close(got, np.tensordot(expected[2], v, axes=v.ndim))


# ---------------------------------------------------------------------------------------------
# Where JAX's own derivative cancels: mpmath
# ---------------------------------------------------------------------------------------------

def test_label_smoothing_hessian_at_logits_1e3_matches_mpmath():
    """The Hessian of label-smoothed cross-entropy at logits ~1e3 is exact (its largest entries
    are 1.7e-152, the runner-up's softmax): JAX's `s - s ** 2` gives 4e-305 there."""
    rng = np.random.default_rng(20)
    n, d, k = 6, 3, 4
    X = rng.standard_normal((n, d))
    Y = np.eye(k)[rng.integers(0, k, n)]
    W = 1e3 * rng.standard_normal((k, d))
    expr = "Ys = (1 - eps) * Y + eps / size(k)\n-sum(Ys * log_softmax(X @ W.T, axis=1))"
    shapes = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("k", "d"), "eps": ()}
    mpmath.mp.dps = 50
    Z = X @ W.T
    expected = np.zeros((k, d, k, d))
    for i in range(n):
        z = [mpmath.mpf(float(v)) for v in Z[i]]
        m = max(z)
        e = [mpmath.exp(v - m) for v in z]
        s = [v / sum(e) for v in e]
        for a in range(k):
            for b in range(k):
                # 1 - s[a] as the sum of the others: 50 digits do not hold 1 - (1 - 1e-152)
                c = s[a] * sum(s[j] for j in range(k) if j != a) if a == b else -s[a] * s[b]
                expected[a, :, b, :] += float(c) * np.outer(X[i], X[i])
    three(einderiv.hessian(expr, "W", shapes), expected, rtol=1e-12, X=X, Y=Y, W=W, eps=0.1)


def test_infonce_tiny_temperature_gradient_matches_mpmath():
    """InfoNCE on normalised embeddings at tau = 1e-3: the value is 2.65e-94 and the gradient's
    entries are 1e-92 to 1e-174, each to 1e-12 of mpmath (JAX's value is -0.0 and its gradient
    12% off)."""
    rng = np.random.default_rng(1)
    rng.standard_normal(15)  # the draws of another model first: these A and B
    A = rng.standard_normal((5, 3))
    B = A + 0.1 * rng.standard_normal((5, 3))
    expr = """An = A / norm(A, axis=1)[:, None]
Bn = B / norm(B, axis=1)[:, None]
L = An @ Bn.T / tau
-sum(diag(log_softmax(L, axis=1)))"""
    shapes = {"A": ("n", "d"), "B": ("n", "d"), "tau": ()}
    mpmath.mp.dps = 400
    tau = mpmath.mpf(1e-3)
    n, d = A.shape
    Am = [[mpmath.mpf(float(v)) for v in r] for r in A]
    Bm = [[mpmath.mpf(float(v)) for v in r] for r in B]
    na = [mpmath.sqrt(sum(v ** 2 for v in r)) for r in Am]
    nb = [mpmath.sqrt(sum(v ** 2 for v in r)) for r in Bm]
    An = [[v / na[i] for v in Am[i]] for i in range(n)]
    Bn = [[v / nb[i] for v in Bm[i]] for i in range(n)]
    L = [[sum(An[i][j] * Bn[m][j] for j in range(d)) / tau for m in range(n)] for i in range(n)]
    value, G = 0, [[0] * n for _ in range(n)]
    for i in range(n):
        top = max(L[i])
        lse = top + mpmath.log(sum(mpmath.exp(v - top) for v in L[i]))
        value += lse - L[i][i]
        for m in range(n):
            G[i][m] = mpmath.exp(L[i][m] - lse) - (1 if i == m else 0)
    dAn = [[sum(G[i][m] * Bn[m][j] for m in range(n)) / tau for j in range(d)] for i in range(n)]
    dA = np.array([[float((dAn[i][j] - An[i][j] * sum(An[i][q] * dAn[i][q] for q in range(d))) / na[i])
                    for j in range(d)] for i in range(n)])
    got_value = float(einderiv.compile(expr, shapes)(A=A, B=B, tau=1e-3))
    assert abs(got_value - float(value)) <= 1e-12 * float(value)
    g = einderiv.grad(expr, "A", shapes)
    for path, got in paths(g, A=A, B=B, tau=1e-3).items():
        entrywise(got, dA, rtol=1e-12)


def test_focal_loss_hessian_at_margin_300_matches_mpmath():
    """Focal loss (gamma 2) at margins up to 361: the Hessian is 1e-56 and exact; JAX's is
    1e-63 with the wrong sign."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 3))
    w = 300 * rng.standard_normal(3)
    y = (rng.random(6) > 0.5).astype(float)
    expr = "p = sigmoid(X @ w)\n-sum(y * (1 - p) ** 2 * log(p) + (1 - y) * p ** 2 * log(1 - p))"
    shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    mpmath.mp.dps = 80

    def loss(t, label):
        p = 1 / (1 + mpmath.exp(-t))
        return -(label * (1 - p) ** 2 * mpmath.log(p) + (1 - label) * p ** 2 * mpmath.log(1 - p))
    z = X @ w
    H, G = np.zeros((3, 3)), np.zeros(3)
    for i in range(6):
        t = mpmath.mpf(float(z[i]))
        H += float(mpmath.diff(lambda u: loss(u, y[i]), t, 2)) * np.outer(X[i], X[i])
        G += float(mpmath.diff(lambda u: loss(u, y[i]), t, 1)) * X[i]
    three(einderiv.grad(expr, "w", shapes), G, rtol=1e-12, X=X, y=y, w=w)
    three(einderiv.hessian(expr, "w", shapes), H, rtol=1e-12, X=X, y=y, w=w)


@pytest.mark.parametrize("form", [
    "m = max(Z, axis=1, keepdims=True)\n-sum(Y * (Z - m - log(sum(exp(Z - m), axis=1, keepdims=True))))",
    "-sum(Y * (Z - logsumexp(Z, axis=1, keepdims=True)))",
    "-sum(Y * log(exp(Z) / sum(exp(Z), axis=1, keepdims=True)))",
    "mean(logsumexp(Z, axis=1) - sum(Y * Z, axis=1)) * size(n)",
])
def test_confident_cross_entropy_as_written_is_exact(form):
    """Cross-entropy written four ways, the right class leading by 40 and 100: the gradient
    softmax - Y is exact at the right class (-4e-18 there, where 1 - s cancels to 0), and the
    Hessian diag(s) - s s^T too."""
    Z = np.array([[40.0, 0.0, -3.0, 1.0], [0.0, 100.0, 2.0, 1.0]])
    Y = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    shapes = {"Z": ("n", "k"), "Y": ("n", "k")}
    mpmath.mp.dps = 60
    G = np.zeros_like(Z)
    for i in range(2):
        z = [mpmath.mpf(v) for v in Z[i]]
        s = [mpmath.exp(v) / sum(mpmath.exp(u) for u in z) for v in z]
        G[i] = [float(s[j] - Y[i, j]) for j in range(4)]
    for path, got in paths(einderiv.grad(form, "Z", shapes), Z=Z, Y=Y).items():
        entrywise(got, G, rtol=1e-14)
    z = [mpmath.mpf(v) for v in Z[0]]
    s = [mpmath.exp(v) / sum(mpmath.exp(u) for u in z) for v in z]
    H0 = np.array([[float(s[i] * ((i == j) - s[j])) for j in range(4)] for i in range(4)])
    got = quiet(einderiv.hessian(form, "Z", shapes), Z=Z[:1], Y=Y[:1])
    entrywise(got.reshape(4, 4), H0, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Dtypes, size-1 dimensions, several wrt, products, threads, calls
# ---------------------------------------------------------------------------------------------

def test_softmax_regression_float32_in_float32_out():
    rng = np.random.default_rng(21)
    X = rng.standard_normal((6, 3)).astype(np.float32)
    Y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    W = (30 * rng.standard_normal((4, 3))).astype(np.float32)
    expr = "-sum(Y * log_softmax(X @ W.T, axis=1))"
    shapes = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("k", "d")}

    def f(X, Y, W):
        return -jnp.sum(Y * jax.nn.log_softmax(X @ W.T, axis=1))
    args = [jnp.asarray(a, dtype=jnp.float64) for a in (X, Y, W)]
    value, dW = einderiv.value_and_grad(expr, "W", shapes)(X, Y, W)
    H = einderiv.hessian(expr, "W", shapes)(X=X, Y=Y, W=W)
    assert np.asarray(value).dtype == dW.dtype == H.dtype == np.float32
    _, grad, hessian = _jax_reference(f, 2, True)(*args)
    close(dW, grad, rtol=1e-6)
    close(H, hessian, rtol=1e-5)


@pytest.mark.parametrize("case", ["k=1", "n=1,d=1", "gp n=1", "layer norm d=1"])
def test_size_one_dimensions(case):
    rng = np.random.default_rng(22)
    if case.startswith("gp"):
        expr, shapes, f, _ = _gp()
        arrays = dict(Xg=rng.standard_normal((1, 2)), yg=rng.standard_normal(1),
                      p=np.array([0.3, -0.2, -1.0]))
        wrt = "p"
    elif case.startswith("layer"):
        expr, shapes, f, _ = _layer_norm()
        arrays = dict(x=rng.standard_normal(1), W=rng.standard_normal((1, 1)),
                      g=rng.standard_normal(1), b=rng.standard_normal(1))
        wrt = "W"
    else:
        expr = "sum(logsumexp(X @ W.T, axis=1)) - sum(Y * (X @ W.T))"
        shapes = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("k", "d")}

        def f(X, Y, W):
            return -jnp.sum(Y * jax.nn.log_softmax(X @ W.T, axis=1))
        if case == "k=1":
            arrays = dict(X=rng.standard_normal((4, 3)), Y=np.ones((4, 1)), W=rng.standard_normal((1, 3)))
        else:
            arrays = dict(X=rng.standard_normal((1, 1)), Y=np.eye(3)[[1]], W=rng.standard_normal((3, 1)))
        wrt = "W"
    order = list(shapes)
    args = [jnp.asarray(arrays[k]) for k in order]
    _, grad, hessian = _jax_reference(f, order.index(wrt), True)(*args)
    three(einderiv.grad(expr, wrt, shapes), np.asarray(grad), **arrays)
    three(einderiv.hessian(expr, wrt, shapes), np.asarray(hessian), **arrays)


def _mlp():
    rng = np.random.default_rng(23)
    expr = "h = tanh(W1 @ x + b1)\n-sum(y * log_softmax(W2 @ h))"
    shapes = {"W1": ("h", "d"), "b1": ("h",), "W2": ("k", "h"), "x": ("d",), "y": ("k",)}
    arrays = dict(W1=rng.standard_normal((4, 3)), b1=rng.standard_normal(4),
                  W2=rng.standard_normal((5, 4)), x=rng.standard_normal(3), y=np.eye(5)[2])

    def f(W1, b1, W2, x, y):
        return -jnp.sum(y * jax.nn.log_softmax(W2 @ jnp.tanh(W1 @ x + b1)))
    return expr, shapes, arrays, f


def test_products_and_hessian_with_lists_of_wrt_positional_and_keyword():
    expr, shapes, A, f = _mlp()
    rng = np.random.default_rng(24)
    order = list(shapes)
    # vjp of the log-probabilities by three weights
    out_expr = "h = tanh(W1 @ x + b1)\nlog_softmax(W2 @ h)"
    u = rng.standard_normal(5)
    expected = jax.jit(lambda W1, b1, W2, u: jax.vjp(
        lambda W1, b1, W2: jax.nn.log_softmax(W2 @ jnp.tanh(W1 @ A["x"] + b1)), W1, b1, W2)[1](u))(
        A["W1"], A["b1"], A["W2"], u)
    vjp = einderiv.vjp(out_expr, ["W1", "b1", "W2"], shapes)
    for got in (vjp(**A, cotangent=u), vjp(*[A[k] for k in order], u)):
        for g, e in zip(got, expected):
            close(g, e)
    # jvp along W1 and x together
    t = (rng.standard_normal((4, 3)), rng.standard_normal(3))
    jvp = einderiv.jvp(out_expr, ["W1", "x"], shapes)
    jo, jt = jax.jit(lambda t: jax.jvp(
        lambda W1, x: jax.nn.log_softmax(A["W2"] @ jnp.tanh(W1 @ x + A["b1"])), (A["W1"], A["x"]), t))(t)
    for out, tangent in (jvp(**A, tangent=t), jvp(*[A[k] for k in order], *t)):
        close(out, jo)
        close(tangent, jt)
    # hvp by two weights
    v = (rng.standard_normal((4, 3)), rng.standard_normal((5, 4)))
    _, expected = jax.jit(lambda v: jax.jvp(
        lambda W1, W2: jax.grad(f, argnums=(0, 2))(W1, A["b1"], W2, A["x"], A["y"]),
        (A["W1"], A["W2"]), v))(v)
    for g, e in zip(einderiv.hvp(expr, ["W1", "W2"], shapes)(**A, tangent=v), expected):
        close(g, e)
    # the Hessian blocks of (W1, b1)
    H = einderiv.hessian(expr, ["W1", "b1"], shapes)(**A)
    expected = jax.jit(jax.hessian(f, argnums=(0, 1)))(*[A[k] for k in order])
    for i in range(2):
        for j in range(2):
            close(H[i][j], expected[i][j])


def test_gradient_from_six_threads_positional_and_keyword():
    expr, shapes, A, f = _mlp()
    order = list(shapes)
    g = einderiv.grad(expr, ["W1", "b1", "W2"], shapes)
    cases = []
    reference = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
    for seed in range(6):
        r = np.random.default_rng(seed)
        B = {k: v + 0.01 * r.standard_normal(np.shape(v)) for k, v in A.items()}
        B["y"] = A["y"]
        cases.append((B, [np.asarray(e) for e in reference(*[B[k] for k in order])]))
    errors = []

    def worker(i):
        B, expected = cases[i]
        try:
            for rep in range(20):
                got = g(**B) if rep % 2 else g(*[B[k] for k in order])
                for a, e in zip(got, expected):
                    close(a, e)
        except Exception as e:  # reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_gp_hyperparameters_through_flat_pickle_and_deepcopy():
    from scipy.optimize import minimize
    rng = np.random.default_rng(25)
    expr = """D = sum((Xg[:, None, :] - Xg[None, :, :]) ** 2, axis=2)
K = exp(a) * exp(-0.5 * D * exp(-2 * l)) + exp(s) * eye(n)
0.5 * yg @ solve(K, yg) + 0.5 * logdet(K)"""
    shapes = {"Xg": ("n", 2), "yg": ("n",), "a": (), "l": (), "s": ()}
    Xg = rng.standard_normal((12, 2))
    yg = np.sin(Xg[:, 0]) + 0.1 * rng.standard_normal(12)

    def f(p):
        D = jnp.sum((Xg[:, None, :] - Xg[None, :, :]) ** 2, axis=2)
        K = jnp.exp(p[0]) * jnp.exp(-0.5 * D * jnp.exp(-2 * p[1])) + jnp.exp(p[2]) * jnp.eye(12)
        return 0.5 * yg @ jnp.linalg.solve(K, yg) + 0.5 * jnp.linalg.slogdet(K)[1]
    reference = _jax_reference(f, 0, True)
    problem = einderiv.flat(expr, ["a", "l", "s"], shapes, data=dict(Xg=Xg, yg=yg))
    fun, jac, hess, hessp = problem
    x0 = problem.pack(a=0.0, l=0.0, s=-1.0)
    value, grad, hessian = reference(x0)
    close(fun(x0), value)
    close(jac(x0), grad)
    close(hess(x0), hessian)
    close(hessp(x0, np.array([1.0, -1.0, 0.5])), hessian @ np.array([1.0, -1.0, 0.5]))
    result = minimize(fun, x0, jac=jac, hess=hess, method="trust-exact")
    assert result.success
    assert np.max(np.abs(np.asarray(reference(result.x)[1]))) < 1e-5
    vg = einderiv.value_and_grad(expr, ["a", "l", "s"], shapes)
    arrays = dict(Xg=Xg, yg=yg, a=0.0, l=0.0, s=-1.0)
    v1, d1 = vg(**arrays)
    for other in (pickle.loads(pickle.dumps(vg)), copy.deepcopy(vg)):
        v2, d2 = other(*[arrays[k] for k in shapes])
        assert v1 == v2 and all(np.array_equal(a, b) for a, b in zip(d1, d2))
    close(np.array(d1, dtype=float), grad)


def test_tied_residual_network_unrolled():
    """A weight-tied residual network with layer norm, unrolled 4 steps (the vectorizer's
    lanes), by the shared weight and by the per-step scales."""
    rng = np.random.default_rng(26)
    L, d, k = 4, 4, 3
    lines = ["h0 = x"]
    for i in range(L):
        lines.append(f"u{i} = W @ h{i} + b + c[{i}] * v")
        lines.append(f"h{i + 1} = h{i} + 0.1 * tanh((u{i} - mean(u{i})) / sqrt(var(u{i}) + 1e-5)) * g")
    lines.append(f"-sum(y * log_softmax(U @ h{L}))")
    expr = "\n".join(lines)
    shapes = {"x": ("d",), "y": ("k",), "W": ("d", "d"), "b": ("d",), "v": ("d",), "c": (L,),
              "g": ("d",), "U": ("k", "d")}
    A = dict(x=rng.standard_normal(d), y=np.eye(k)[1], W=0.5 * rng.standard_normal((d, d)),
             b=rng.standard_normal(d), v=rng.standard_normal(d), c=rng.standard_normal(L),
             g=rng.standard_normal(d), U=rng.standard_normal((k, d)))

    def f(x, y, W, b, v, c, g, U):
        h = x
        for i in range(L):
            u = W @ h + b + c[i] * v
            h = h + 0.1 * jnp.tanh((u - u.mean()) / jnp.sqrt(u.var() + 1e-5)) * g
        return -jnp.sum(y * jax.nn.log_softmax(U @ h))
    args = [A[k] for k in shapes]
    three(einderiv.grad(expr, "W", shapes), np.asarray(jax.jit(jax.grad(f, argnums=2))(*args)), **A)
    three(einderiv.hessian(expr, "c", shapes), np.asarray(jax.jit(jax.hessian(f, argnums=5))(*args)), **A)


def test_complement_of_softmax_on_a_fully_padded_row():
    """`1 - softmax(...)` is rewritten to `complement(softmax(...))`; on a row whose entries are
    all -inf (softmax 0 there, documented) it stays 1, and the unlikelihood term
    `log(1 - softmax(...))` is 0 there with a 0 gradient."""
    Z = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    M = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    shapes = {"Z": ("n", "k"), "M": ("n", "k")}
    s = np.exp(Z[0, :2] - np.logaddexp(Z[0, 0], Z[0, 1]))
    three(einderiv.compile("1 - softmax(where(M > 0, Z, -1e999), axis=1)", shapes),
          np.array([[1 - s[0], 1 - s[1], 1.0], [1.0, 1.0, 1.0]]), Z=Z, M=M)
    loss = "sum(M * log(1 - softmax(where(M > 0, Z, -1e999), axis=1)))"

    def f(Z):
        p = jax.nn.softmax(jnp.where(M[:1] > 0, Z[:1], -jnp.inf), axis=1)
        return jnp.sum(M[:1] * jnp.log1p(-jnp.where(M[:1] > 0, p, 0.0)))
    expected = np.asarray(jax.grad(f)(Z))
    three(einderiv.grad(loss, "Z", shapes), expected, Z=Z, M=M)


# ---------------------------------------------------------------------------------------------
# Faults (fixed): documented stable forms that were not used
# ---------------------------------------------------------------------------------------------

def _log_softmax(Z, axis=-1):
    from scipy.special import log_softmax
    return log_softmax(Z, axis=axis)


def test_clip_loss_log_of_diagonal_softmax_is_finite():
    rng = np.random.default_rng(16)
    L = 1000 * rng.standard_normal((4, 4))
    shapes = {"L": ("n", "n")}
    expr = "-0.5 * (mean(log(diag(softmax(L, axis=1)))) + mean(log(diag(softmax(L, axis=0)))))"
    expected = -0.5 * (np.mean(np.diag(_log_softmax(L, 1))) + np.mean(np.diag(_log_softmax(L, 0))))
    assert np.isfinite(expected)  # 1208.0998832732362
    got = quiet(einderiv.compile(expr, shapes), L=L)
    close(got, expected, rtol=1e-12)


def test_clip_loss_gradient_is_right_already():
    """(The gradient of the same loss never takes the log of the diagonal: it is right.)"""
    rng = np.random.default_rng(16)
    L = 1000 * rng.standard_normal((4, 4))
    expr = "-0.5 * (mean(log(diag(softmax(L, axis=1)))) + mean(log(diag(softmax(L, axis=0)))))"

    def f(L):
        return -0.5 * (jnp.mean(jnp.diag(jax.nn.log_softmax(L, axis=1)))
                       + jnp.mean(jnp.diag(jax.nn.log_softmax(L, axis=0))))
    three(einderiv.grad(expr, "L", {"L": ("n", "n")}), np.asarray(jax.grad(f)(L)), L=L)


@pytest.mark.parametrize("expr, expected", [
    ("log(softmax(x)[::2])", lambda x: _log_softmax(x)[::2]),
    ("log(softmax(x)[::-1])", lambda x: _log_softmax(x)[::-1]),
    ("log(flip(softmax(x)))", lambda x: _log_softmax(x)[::-1]),
    ("log(sigmoid(x)[::-1])", lambda x: -np.logaddexp(0, -x[::-1])),
])
def test_log_of_strided_or_reversed_softmax_is_finite(expr, expected):
    x = np.array([-900.0, 3.0, 800.0, -1000.0, 0.5, 40.0])
    want = expected(x)
    assert np.all(np.isfinite(want))
    close(quiet(einderiv.compile(expr, {"x": ("m",)}), x=x), want, rtol=1e-12)


def test_log_of_unit_step_slice_softmax_is_rewritten():
    """(The same with a slice of step 1, a pick and a transpose: rewritten, finite.)"""
    x = 1000 * np.random.default_rng(16).standard_normal(6)
    L = x[:4, None] - x[None, 2:]
    shapes = {"x": ("m",), "L": (4, 4)}
    close(quiet(einderiv.compile("log(softmax(x)[1:])", shapes), x=x), _log_softmax(x)[1:], 1e-12)
    close(quiet(einderiv.compile("log(softmax(L, axis=1)[:, 0])", shapes), L=L),
          _log_softmax(L, 1)[:, 0], 1e-12)
    close(quiet(einderiv.compile("log(softmax(L, axis=1).T)", shapes), L=L),
          _log_softmax(L, 1).T, 1e-12)


def test_logaddexp_of_broadcast_operands():
    N = np.array([[800.0, -5.0, 3.0], [-900.0, 2.0, 750.0]])
    p = np.array([790.0, -800.0])
    shapes = {"N": ("n", "k"), "p": ("n",), "a": ()}
    close(quiet(einderiv.compile("log(exp(p)[:, None] + exp(N))", shapes), N=N, p=p),
          np.logaddexp(p[:, None], N), 1e-12)
    close(quiet(einderiv.compile("log(exp(a) + exp(N))", shapes), N=N, a=760.0),
          np.logaddexp(760.0, N), 1e-12)
    # one positive logit per row against each negative: a logistic loss written by hand
    loss = "sum(log(exp(p)[:, None] + exp(N)) - p[:, None])"

    def f(N, p):
        return jnp.sum(jnp.logaddexp(p[:, None], N) - p[:, None])
    close(quiet(einderiv.grad(loss, "N", shapes), N=N, p=p), jax.grad(f)(N, p))


def test_logaddexp_of_same_shape_operands_is_rewritten():
    """(With a and b of one shape, even made so by `+ 0 * N`, it is logaddexp and finite.)"""
    N = np.array([[800.0, -5.0, 3.0], [-900.0, 2.0, 750.0]])
    p = np.array([790.0, -800.0])
    shapes = {"N": ("n", "k"), "p": ("n",)}
    close(quiet(einderiv.compile("log(exp(N) + exp(p[:, None] + 0 * N))", shapes), N=N, p=p),
          np.logaddexp(p[:, None], N), 1e-12)


def test_sigmoid_of_a_difference_of_broadcast_operands():
    from scipy.special import expit
    N = np.array([[800.0, -5.0, 3.0], [-900.0, 2.0, 750.0]])
    p = np.array([790.0, -800.0])
    shapes = {"N": ("n", "k"), "p": ("n",), "a": ()}
    close(quiet(einderiv.compile("exp(a) / (exp(a) + exp(N))", shapes), N=N, a=760.0),
          expit(760.0 - N), 1e-12)  # this one holds
    close(quiet(einderiv.compile("exp(N) / (exp(N) + exp(a))", shapes), N=N, a=760.0),
          expit(N - 760.0), 1e-12)
    close(quiet(einderiv.compile("exp(p[:, None]) / (exp(p[:, None]) + exp(N))", shapes), N=N, p=p),
          expit(p[:, None] - N), 1e-12)


def test_mixture_log_likelihood_with_broadcast_weights():
    from scipy.special import logsumexp
    L = np.array([[-1000.0, -1001.0, -1003.0], [-2.0, -1.0, -3.0], [700.0, 712.0, 690.0]])
    pi = np.array([0.2, 0.5, 0.3])
    shapes = {"L": ("n", "k"), "pi": ("k",)}
    expr = "-sum(log(sum(pi * exp(L), axis=1)))"
    expected = -np.sum(logsumexp(L, b=np.broadcast_to(pi, L.shape), axis=1))  # 291.0997...

    def f(L, pi):
        return -jnp.sum(jlogsumexp(L, b=jnp.broadcast_to(pi, L.shape), axis=1))
    close(quiet(einderiv.compile(expr, shapes), L=L, pi=pi), expected, 1e-12)
    close(quiet(einderiv.grad(expr, "L", shapes), L=L, pi=pi), jax.grad(f)(L, pi))


def test_mixture_log_likelihood_with_full_weights_is_rewritten():
    """(Weights shaped like L, or a vector dot `v @ exp(x)`: logsumexp_weighted, finite.)"""
    from scipy.special import logsumexp
    L = np.array([[-1000.0, -1001.0, -1003.0], [-2.0, -1.0, -3.0], [700.0, 712.0, 690.0]])
    P = np.tile([0.2, 0.5, 0.3], (3, 1))
    shapes = {"L": ("n", "k"), "P": ("n", "k"), "v": ("k",), "x": ("k",)}
    close(quiet(einderiv.compile("log(sum(P * exp(L), axis=1))", shapes), L=L, P=P),
          logsumexp(L, b=P, axis=1), 1e-12)
    close(quiet(einderiv.compile("log(v @ exp(x))", shapes), v=P[0], x=L[2]),
          logsumexp(L[2], b=P[0]), 1e-12)


def test_cox_partial_likelihood_with_risk_set_matrix():
    rng = np.random.default_rng(14)
    n = 6
    X = rng.standard_normal((n, 3))
    w = 300 * rng.standard_normal(3)
    d = (rng.random(n) > 0.3).astype(float)
    R = np.triu(np.ones((n, n)))
    expr = "eta = X @ w\nsum(d * (log(sum(R * exp(eta), axis=1)) - eta))"
    shapes = {"X": ("n", "p"), "w": ("p",), "d": ("n",), "R": ("n", "n")}

    def f(X, w, d, R):
        eta = X @ w
        return jnp.sum(d * (jlogsumexp(jnp.broadcast_to(eta, R.shape), b=R, axis=1) - eta))
    args = (X, w, d, R)
    close(quiet(einderiv.compile(expr, shapes), X=X, w=w, d=d, R=R), f(*args), 1e-12)
    close(quiet(einderiv.grad(expr, "w", shapes), X=X, w=w, d=d, R=R), jax.grad(f, argnums=1)(*args))


def test_log_of_weighted_mean_of_exponentials():
    from scipy.special import logsumexp
    x = np.array([800.0, 1.0, 805.0])
    w = np.array([0.2, 0.5, 0.3])
    got = quiet(einderiv.compile("log(mean(w * exp(x)))", {"x": ("n",), "w": ("n",)}), x=x, w=w)
    close(got, logsumexp(x, b=w) - np.log(3), 1e-12)  # 802.7018968129098
