"""Three exact forms (breaker s29's faults 4a, 4b and 2), each on all three paths (generated
code, `.evaluate_ir`, `.formula` compiled back) against mpmath or jitted float64 JAX:

- `log(exp(a))` is `a`, and `log(c / exp(a))` is `log(c) - a` (rules/rewrites.rules): the round
  trip is inf past 709, and `log(exp(x) / exp(y))` was half rewritten, `x - log(exp(y))`;
- `log(p / q)` is `log(p) - log(q)` where p or q is a softmax or a sigmoid, known positive, so
  the textbook KL divergence of two softmaxes is a difference of log_softmax (nan at logits of
  +-1000 before); a quotient of any other two is left as written (`log(-1 / -2)` is finite);
- the chain rule through `where` is a select of everything that carries only the select's axes
  (derive/masks.py `product`): data of the branch not taken, a nan or inf target where a mask
  is 0, never multiplies its 0 (the gradient of a masked squared loss was nan there).
"""
from __future__ import annotations


import mpmath as mp
import numpy as np
import pytest

import einderiv
from three_paths import paths as _paths, quiet as _quiet

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

mp.mp.dps = 50




def _same(got, want, rtol=1e-12, atol=1e-300):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want)) and \
        np.allclose(np.nan_to_num(got, posinf=9e99, neginf=-9e99),
                    np.nan_to_num(want, posinf=9e99, neginf=-9e99), rtol=rtol, atol=atol)


def _all_paths(result, want, rtol=1e-12, atol=1e-300, dtype=None, **arrays):
    for path, got in _paths(result, **arrays).items():
        assert _same(got, want, rtol, atol), (path, got, want)
        if dtype is not None:
            assert got.dtype == dtype, (path, got.dtype)


def _jit(f):
    return jax.jit(f)


def _jax_grad(f, wrt, arrays):
    return np.asarray(_jit(lambda **a: jax.grad(lambda v: f(**{**a, wrt: v}))(a[wrt]))(**arrays))


def _jax_hessian(f, wrt, arrays):
    return np.asarray(_jit(lambda **a: jax.hessian(lambda v: f(**{**a, wrt: v}))(a[wrt]))(
        **arrays))


def _mp_vec(f, *columns):
    return np.array([float(f(*(mp.mpf(float(c)) for c in cs))) for cs in zip(*columns)])


VEC = {"x": ("n",), "y": ("n",)}
EXTREME = np.array([-800.0, -40.0, -1e-300, 0.0, 0.5, 37.0, 800.0, 1e300])


# ---------------------------------------------------------------- log(exp(a)) and log(c / e^a)

def test_log_of_exp_is_the_argument_on_every_path():
    f = einderiv.compile("log(exp(x))", {"x": ("n",)})
    assert f.formula == "x"
    _all_paths(f, EXTREME, x=EXTREME)


def test_log_of_exp_of_a_product_and_float32():
    shapes = {"W": ("m", "n"), "x": ("n",)}
    W, x = np.array([[400.0, 500.0], [-600.0, -300.0]]), np.array([1.0, 1.0])
    f = einderiv.compile("log(exp(W @ x))", shapes)
    assert f.formula == "W @ x"
    _all_paths(f, W @ x, W=W, x=x)
    x32 = EXTREME[:-1].astype(np.float32)  # 1e300 is no float32
    _all_paths(einderiv.compile("log(exp(x))", {"x": ("n",)}), x32, dtype=np.float32, x=x32)


def test_log_of_a_quotient_of_exponentials_is_their_difference():
    x = np.array([800.0, -800.0, 1.0, 1000.0])
    y = np.array([800.0, 900.0, -2.0, -1000.0])
    f = einderiv.compile("log(exp(x) / exp(y))", VEC)
    assert f.formula == "x - y"
    _all_paths(f, x - y, x=x, y=y)
    g = einderiv.grad("sum(log(exp(x) / exp(y)) ** 2)", "y", VEC)
    _all_paths(g, -2 * (x - y), x=x, y=y)


def test_log_of_a_number_over_an_exponential():
    # c of any sign: nan where c < 0 on both sides of the rewrite, as the true value
    c = np.array([2.0, 1e-300, -1.0, 0.0, 3.0])
    x = np.array([800.0, -800.0, 1.0, 5.0, -1000.0])
    f = einderiv.compile("log(y / exp(x))", VEC)
    assert f.formula == "log(y) - x"
    want = _mp_vec(lambda c_, x_: mp.log(c_) - x_ if c_ > 0 else mp.mpf("-inf") if c_ == 0
                   else mp.nan, c, x)
    _all_paths(f, want, y=c, x=x)
    g = einderiv.grad("sum(log(y / exp(x)) * y)", "x", VEC)
    _all_paths(g, -c, y=c, x=x)


def test_log_of_exp_in_a_batch_with_its_hessian():
    shapes = {"X": ("b", "n"), "w": ("n",)}
    X = np.array([[-800.0, 2.0, 700.0], [0.1, 900.0, -3.0]])
    w = np.array([0.5, -1.0, 2.0])
    expr = "sum(log(exp(X * w)) ** 2)"
    want_g = _jax_grad(lambda X, w: jnp.sum((X * w) ** 2), "w", dict(X=X, w=w))
    _all_paths(einderiv.grad(expr, "w", shapes), want_g, X=X, w=w)
    want_h = _jax_hessian(lambda X, w: jnp.sum((X * w) ** 2), "w", dict(X=X, w=w))
    _all_paths(einderiv.hessian(expr, "w", shapes), want_h, X=X, w=w)


# ---------------------------------------------------------------- log(p / q), p or q positive

SOFT = {"A": ("b", "k"), "B": ("b", "k")}


def _kl_rows_mp(A, B, axis):
    A, B = np.moveaxis(A, axis, -1), np.moveaxis(B, axis, -1)
    total = mp.mpf(0)
    for a, b in zip(A.reshape(-1, A.shape[-1]), B.reshape(-1, B.shape[-1])):
        la = [mp.mpf(float(v)) for v in a]
        lb = [mp.mpf(float(v)) for v in b]
        za, zb = mp.log(mp.fsum(mp.exp(v) for v in la)), mp.log(mp.fsum(mp.exp(v) for v in lb))
        total += mp.fsum(mp.exp(u - za) * ((u - za) - (v - zb)) for u, v in zip(la, lb))
    return float(total)


def _kl_jax(axis):
    def f(A, B):
        return jnp.sum(jax.nn.softmax(A, axis=axis) * (jax.nn.log_softmax(A, axis=axis)
                                                       - jax.nn.log_softmax(B, axis=axis)))
    return f


@pytest.mark.parametrize("axis", [1, 0])
def test_textbook_kl_of_batched_softmaxes_at_large_logits(axis):
    A = np.array([[0.0, 1000.0, -1000.0], [3.0, -1.0, 0.5], [-900.0, 900.0, 0.0]])
    B = np.array([[1000.0, -1000.0, 0.0], [0.0, 2.0, -1.0], [800.0, -800.0, 1.0]])
    expr = (f"sum(softmax(A, axis={axis}) * log(softmax(A, axis={axis}) / "
            f"softmax(B, axis={axis})))")
    f = einderiv.compile(expr, SOFT)
    assert "log_softmax(B" in f.formula and "/" not in f.formula
    _all_paths(f, _kl_rows_mp(A, B, axis), rtol=1e-13, A=A, B=B)
    arrays = dict(A=A, B=B)
    for wrt in ("A", "B"):
        want = _jax_grad(_kl_jax(axis), wrt, arrays)
        assert np.all(np.isfinite(want))
        _all_paths(einderiv.grad(expr, wrt, SOFT), want, 1e-12, 1e-12, **arrays)


def test_textbook_kl_hessian_and_float32():
    shapes = {"a": ("k",), "b": ("k",)}
    a, b = np.array([0.3, -1.2, 2.0, 0.1]), np.array([1.0, 0.0, -0.5, 0.7])
    expr = "sum(softmax(a) * log(softmax(a) / softmax(b)))"
    f = lambda a, b: _kl_jax(-1)(a, b)  # noqa: E731
    for wrt in ("a", "b"):
        _all_paths(einderiv.hessian(expr, wrt, shapes), _jax_hessian(f, wrt, dict(a=a, b=b)),
                   1e-10, 1e-12, a=a, b=b)
    a32, b32 = np.array([0.0, 80.0, -80.0], np.float32), np.array([80.0, -80.0, 0.0], np.float32)
    want = _kl_rows_mp(a32[None].astype(float), b32[None].astype(float), 1)
    _all_paths(einderiv.compile(expr, shapes), want, 1e-6, dtype=np.float32, a=a32, b=b32)
    _all_paths(einderiv.grad(expr, "b", shapes), [1.0, -1.0, 0.0], 1e-6, 1e-6,
               dtype=np.float32, a=a32, b=b32)


def test_log_of_a_softmax_over_anything_and_anything_over_a_softmax():
    # the other side of any sign: nan where it is negative, on both sides of the rewrite
    x = np.array([0.0, 1000.0, -1000.0, 2.0])
    q = np.array([2.0, -1.0, 1e-300, 0.5])
    lx = [mp.mpf(float(v)) for v in x]
    z = mp.log(mp.fsum(mp.exp(v) for v in lx))
    ls = [v - z for v in lx]
    want1 = np.array([float(s - mp.log(mp.mpf(float(c)))) if c > 0 else np.nan
                      for s, c in zip(ls, q)])
    want2 = np.array([float(mp.log(mp.mpf(float(c))) - s) if c > 0 else np.nan
                      for s, c in zip(ls, q)])
    f1 = einderiv.compile("log(softmax(x) / y)", VEC)
    f2 = einderiv.compile("log(y / softmax(x))", VEC)
    assert f1.formula == "log_softmax(x) - log(y)" and f2.formula == "log(y) - log_softmax(x)"
    _all_paths(f1, want1, 1e-13, x=x, y=q)
    _all_paths(f2, want2, 1e-13, x=x, y=q)


def test_log_of_a_quotient_of_sigmoids():
    x = np.array([-800.0, 800.0, 0.5, -40.0, 0.0])
    y = np.array([800.0, -800.0, 1.0, -45.0, 0.0])
    f = einderiv.compile("log(sigmoid(x) / sigmoid(y))", VEC)
    assert "sigmoid" not in f.formula and "/" not in f.formula
    sp = lambda t: mp.log1p(mp.exp(t))  # noqa: E731
    _all_paths(f, _mp_vec(lambda a, b: sp(-b) - sp(-a), x, y), 1e-13, x=x, y=y)
    want = _jax_grad(lambda x, y: jnp.sum((jax.nn.log_sigmoid(x) - jax.nn.log_sigmoid(y)) ** 2),
                     "y", dict(x=x, y=y))
    _all_paths(einderiv.grad("sum(log(sigmoid(x) / sigmoid(y)) ** 2)", "y", VEC), want, 1e-12,
               1e-12, x=x, y=y)
    g = einderiv.compile("log(y / sigmoid(x))", VEC)
    assert g.formula == "log(y) + softplus(-x)"
    _all_paths(g, _mp_vec(lambda a, b: mp.log(b) + sp(-a) if b > 0 else mp.nan, x,
                          np.array([1.0, 2.0, -1.0, 1e-300, 3.0])),
               1e-13, x=x, y=np.array([1.0, 2.0, -1.0, 1e-300, 3.0]))


def test_a_quotient_of_values_of_any_sign_is_not_split():
    # log(p) - log(q) would be nan where log(p / q) is finite (both negative)
    f = einderiv.compile("log(x / y)", VEC)
    assert f.formula == "log(x / y)"
    _all_paths(f, [np.log(0.5)], x=np.array([-1.0]), y=np.array([-2.0]))
    g = einderiv.compile("log(softmax(x) * y)", VEC)  # a product is not a quotient: left
    assert "log_softmax" not in g.formula


# ---------------------------------------------------------------- the chain rule through where

VM = {"x": ("n",), "r": ("n",), "m": ("n",)}
XM = dict(x=np.array([1.0, 2.0, -0.5, 3.0]), r=np.array([0.0, np.nan, 0.25, np.inf]),
          m=np.array([1.0, 0.0, 1.0, 0.0]))
XM_CLEAN = dict(XM, r=np.where(XM["m"] > 0, XM["r"], 0.0))


@pytest.mark.parametrize("expr,f", [
    ("sum(where(m > 0, (x - r) ** 2, 0))",
     lambda x, r, m: jnp.sum(jnp.where(m > 0, (x - r) ** 2, 0.0))),
    ("sum(where(m <= 0, 0, (x - r) ** 2))",
     lambda x, r, m: jnp.sum(jnp.where(m <= 0, 0.0, (x - r) ** 2))),
    ("sum(where(m > 0, sin(x * r), 0))",
     lambda x, r, m: jnp.sum(jnp.where(m > 0, jnp.sin(x * r), 0.0))),
    ("sum(where(m > 0, exp(-(x - r) ** 2) * r, 0)) * 3",
     lambda x, r, m: 3 * jnp.sum(jnp.where(m > 0, jnp.exp(-(x - r) ** 2) * r, 0.0))),
    ("mean(where(m > 0, abs(x - r) ** 3, 0))",
     lambda x, r, m: jnp.mean(jnp.where(m > 0, jnp.abs(x - r) ** 3, 0.0))),
    ("sum(where(m > 0, abs(x - r), 0))",
     lambda x, r, m: jnp.sum(jnp.where(m > 0, jnp.abs(x - r), 0.0))),
    ("sum(where(m > 0, relu(x - r) ** 2, 0))",
     lambda x, r, m: jnp.sum(jnp.where(m > 0, jax.nn.relu(x - r) ** 2, 0.0))),
], ids=["squared", "other_branch", "sin", "gaussian", "cubed_abs", "abs", "relu"])
def test_masked_loss_with_nan_and_inf_targets(expr, f):
    # the reference: the same loss at targets replaced where the mask is 0 (they are never read)
    value = einderiv.compile(expr, VM)
    _all_paths(value, np.asarray(_jit(f)(**XM_CLEAN)), 1e-12, **XM)
    _all_paths(einderiv.grad(expr, "x", VM), _jax_grad(f, "x", XM_CLEAN), 1e-12, 1e-14, **XM)
    _all_paths(einderiv.hessian(expr, "x", VM), _jax_hessian(f, "x", XM_CLEAN), 1e-12, 1e-14,
               **XM)


def test_masked_matrix_factorisation_with_missing_ratings():
    shapes = {"U": ("n", "r"), "V": ("d", "r"), "R": ("n", "d"), "M": ("n", "d")}
    rng = np.random.default_rng(5)
    U, V = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    M = (rng.random((4, 5)) > 0.4).astype(float)
    M[0, 0], M[1, 1] = 0.0, 1.0
    R = np.where(M > 0, rng.standard_normal((4, 5)), np.nan)
    R[2, np.flatnonzero(M[2] == 0)[:1]] = np.inf
    clean = dict(U=U, V=V, R=np.where(M > 0, R, 0.0), M=M)
    arrays = dict(U=U, V=V, R=R, M=M)
    expr = "sum(where(M > 0, (U @ V.T - R) ** 2, 0)) + 0.1 * sum(U ** 2)"

    def f(U, V, R, M):
        return jnp.sum(jnp.where(M > 0, (U @ V.T - R) ** 2, 0.0)) + 0.1 * jnp.sum(U ** 2)
    assert _same(_quiet(einderiv.compile(expr, shapes), **arrays), np.asarray(_jit(f)(**clean)))
    for wrt in ("U", "V"):
        g = einderiv.grad(expr, wrt, shapes)
        assert "where(M > 0, U @ V.T - R, 0)" in g.formula, g.formula
        _all_paths(g, _jax_grad(f, wrt, clean), 1e-12, 1e-13, **arrays)
        _all_paths(einderiv.hessian(expr, wrt, shapes), _jax_hessian(f, wrt, clean), 1e-12,
                   1e-13, **arrays)
    hv = einderiv.hvp(expr, "U", shapes)
    t = rng.standard_normal(U.shape)
    want = np.tensordot(_jax_hessian(f, "U", clean), t, axes=2)
    assert _same(_quiet(hv, **arrays, tangent=t), want, 1e-12, 1e-13)


def test_masked_rows_and_batches_float32():
    shapes = {"X": ("b", "n", "d"), "R": ("b", "n", "d"), "m": ("b", "n"), "W": ("d", "d")}
    rng = np.random.default_rng(9)
    X, W = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 4)) * 0.5
    m = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    R = rng.standard_normal((2, 3, 4))
    R[m == 0] = np.nan
    expr = "sum(where(m[:, :, None] > 0, (X @ W - R) ** 2, 0))"

    def f(X, R, m, W):
        return jnp.sum(jnp.where(m[:, :, None] > 0, (X @ W - R) ** 2, 0.0))
    clean = dict(X=X, R=np.where(m[:, :, None] > 0, R, 0.0), m=m, W=W)
    arrays = dict(X=X, R=R, m=m, W=W)
    for wrt in ("W", "X"):
        want = _jax_grad(f, wrt, clean)
        _all_paths(einderiv.grad(expr, wrt, shapes), want, 1e-12, 1e-13, **arrays)
        a32 = {k: v.astype(np.float32) for k, v in arrays.items()}
        _all_paths(einderiv.grad(expr, wrt, shapes), want, 1e-4, 1e-4, dtype=np.float32, **a32)
    _all_paths(einderiv.hessian(expr, "W", shapes), _jax_hessian(f, "W", clean), 1e-12, 1e-13,
               **arrays)


def test_masked_regression_through_a_matrix_keeps_the_select_narrow():
    # the select runs over the rows (its condition's axes), the partner X stays out of it
    shapes = {"X": ("n", "d"), "w": ("d",), "y": ("n",), "m": ("n",)}
    rng = np.random.default_rng(3)
    X, w = rng.standard_normal((5, 3)), rng.standard_normal(3)
    m = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    y = np.where(m > 0, rng.standard_normal(5), np.nan)
    expr = "sum(where(m > 0, (X @ w - y) ** 2, 0))"

    def f(X, w, y, m):
        return jnp.sum(jnp.where(m > 0, (X @ w - y) ** 2, 0.0))
    clean = dict(X=X, w=w, y=np.where(m > 0, y, 0.0), m=m)
    g = einderiv.grad(expr, "w", shapes)
    assert g.formula == "2 * (X.T @ where(m > 0, X @ w - y, 0))", g.formula
    _all_paths(g, _jax_grad(f, "w", clean), 1e-12, 1e-13, X=X, w=w, y=y, m=m)
    _all_paths(einderiv.grad(expr, "X", shapes), _jax_grad(f, "X", clean), 1e-12, 1e-13,
               X=X, w=w, y=y, m=m)
    _all_paths(einderiv.hessian(expr, "w", shapes), _jax_hessian(f, "w", clean), 1e-12, 1e-13,
               X=X, w=w, y=y, m=m)
