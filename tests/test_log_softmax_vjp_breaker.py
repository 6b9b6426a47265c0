"""Breaker checks of log_softmax_vjp (commit 4e3fbdd): reverse mode pulls back through
log_softmax with one call, `log_softmax_vjp(x, g, axis) = g - softmax(x) * sum(g)`.

Each behaviour that held is a test, and so is each fault found (a strict xfail until fixed):

- the kernel against mpmath at 100 digits (confident slices led by 30, 40, 100, 800, ties,
  -inf entries, every axis, float32), and the non-finite rows as the rule's split;
- cross-entropy gradients through the API against JAX and mpmath: axis 0, 1, -1, -2, tuples,
  None, 1-D, 3-D batches, label smoothing, several CE terms sharing logits, broadcast labels;
  Hessians, hvp, mixed Hessians, vjp, unrolled RNNs (lanes lift the vjp), torch and jax
  backends and function wrappers, pickling, threads, empty and scalar shapes, dtypes;
- the language, the CLI and the rule check (user rule files with their own `_vjp`).

Faults found and fixed: lanes lifted a convolution as if it were a vjp (a silent wrong value);
`log_softmax_vjp(Z)` was a raw ValueError; the LaTeX of a vjp along a non-default axis dropped
the cotangent; a user `_vjp` without an axis keyword printed `None=0` and raised a raw
SyntaxError (now a RuleError at load); the kernel overflowed `sum(g)` where the rule's split
did not; a user `_vjp` with an axis keyword other than `axis` passed the rule check but failed
every call (the check and the interpreter now pass the axes by the declared keyword).
"""
from __future__ import annotations

import os
import pickle
import textwrap

import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv import cli, fn
from einderiv.errors import EinderivError, RuleError
from einderiv.evaluate import kernels
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import using_rules

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow interop check (a sample runs in CI): set EINDERIV_SLOW=1")
from test_log_softmax_vjp import reference, ulps  # the same references

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

CE_SHAPES = {"Z": ("n", "k"), "Y": ("n", "k")}


def confident_logits():
    """Rows led by 30, 40, 100 and 800 (softmax rounds to 1), a tie, -inf entries, plain."""
    return np.array([[30.0, 0.0, 0.0, -1.0], [1.0, 40.0, -1.0, 0.5], [0.0, 2.0, 100.0, 1.0],
                     [800.0, 0.0, 1.0, 2.0], [3.0, 3.0, 0.0, -2.0], [-np.inf, 5.0, -np.inf, 0.0],
                     [0.3, -1.2, 2.0, 0.7]])


def one_hot_at_argmax(x):
    return np.eye(x.shape[1])[np.argmax(x, axis=1)]


# -- the kernel --------------------------------------------------------------------------------

def test_kernel_confident_rows_few_ulps_against_100_digits():
    x = confident_logits()
    for g in (-one_hot_at_argmax(x), -(0.9 * one_hot_at_argmax(x) + 0.025),
              np.random.default_rng(1).normal(size=x.shape)):
        got = kernels.log_softmax_vjp(x, g, axis=-1)
        want = reference(x, g, 1)
        # at the argmax of a confident row (1 - s_m cancels in the textbook form): a few ulps
        for r in range(4):
            m = int(np.argmax(x[r]))
            assert ulps(got[r, m], want[r, m]) <= 4, (r, got[r], want[r])
        # elsewhere a few roundings of the terms g and s * sum(g)
        scale = np.abs(g) + np.abs(g).sum(axis=1, keepdims=True)
        assert np.all(np.abs(got - want) <= 8 * np.finfo(float).eps * scale)


def test_kernel_along_every_axis_and_strided_views():
    x = confident_logits()[:4]
    g = -one_hot_at_argmax(x)
    for a, xx, gg in ((0, x.T, g.T), (-2, x.T, g.T), (1, x, g), (-1, x, g)):
        assert ulps(kernels.log_softmax_vjp(xx, gg, axis=a), reference(xx, gg, a)) <= 4
    # Fortran order, reversed views, a stride-0 cotangent
    xf = np.asfortranarray(x)
    assert ulps(kernels.log_softmax_vjp(xf, np.asfortranarray(g), axis=1), reference(x, g, 1)) <= 4
    xr, gr = x[:, ::-1], g[:, ::-1]
    assert ulps(kernels.log_softmax_vjp(xr, gr, axis=1), reference(xr, gr, 1)) <= 4
    gb = np.broadcast_to(-np.eye(4)[0], x.shape)
    assert ulps(kernels.log_softmax_vjp(x, gb, axis=1), reference(x, gb, 1)) <= 4
    # a 3-D batch along the middle axis, and over a tuple of axes (the rule's split)
    x3 = np.random.default_rng(2).normal(size=(2, 5, 3)) * 3
    x3[1, 2, 0] += 50
    g3 = np.random.default_rng(3).normal(size=x3.shape)
    for a in (1, (0, 2), (0, 1, 2)):
        got, want = kernels.log_softmax_vjp(x3, g3, axis=a), reference(x3, g3, a)
        assert np.all(np.abs(got - want) <= 1e-14 * (np.abs(g3).sum() + np.abs(want)))


def test_kernel_inputs_untouched_and_dtypes():
    x, g = confident_logits(), -one_hot_at_argmax(confident_logits())
    x0, g0 = x.copy(), g.copy()
    kernels.log_softmax_vjp(x, g, axis=1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)
    x32 = np.array([[20.0, 0.0, 0.0], [1.0, 30.0, -1.0]], np.float32)
    g32 = -np.eye(3, dtype=np.float32)[[0, 1]]
    got = kernels.log_softmax_vjp(x32, g32, axis=1)
    assert got.dtype == np.float32
    want = reference(x32, g32, 1)
    assert np.all(np.abs(got - want) <= 4 * np.spacing(np.abs(want).astype(np.float32)))
    # mixed float32 / float64 and integer cotangents take the rule's split: still exact
    assert ulps(kernels.log_softmax_vjp(x32.astype(float), g32.astype(int), axis=1), want) <= 4


def test_kernel_non_finite_rows():
    inf, nan = np.inf, np.nan
    x = np.array([[100.0, 0, 0], [40.0, 1, -1], [nan, 0, 1], [inf, 0, 1], [inf, inf, 1],
                  [-inf, -inf, -inf], [-inf, 3.0, -inf]])
    g = np.array([[-1.0, 0, 0], [-1, 0, 0], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3],
                  [1, 2, 3]])
    with np.errstate(all="ignore"):
        got = kernels.log_softmax_vjp(x, g, axis=-1)
    # finite rows stay exact when another row sends the array down the rule's split
    assert ulps(got[:2], reference(x[:2], g[:2], 1)) <= 4
    assert np.all(np.isnan(got[2]))  # a nan logit: no value is right
    np.testing.assert_array_equal(got[3], [-5.0, 2, 3])  # softmax [1, 0, 0]
    np.testing.assert_array_equal(got[4], [-2.0, -1, 3])  # softmax [1/2, 1/2, 0]
    np.testing.assert_array_equal(got[5], [1.0, 2, 3])  # softmax 0 (the README's convention)
    np.testing.assert_array_equal(got[6], [1.0, -4, 3])
    # a nan cotangent spoils its own row only
    g2 = g[:2].copy()
    g2[0, 1] = nan
    got = kernels.log_softmax_vjp(x[:2], g2, axis=1)
    assert np.all(np.isnan(got[0])) and ulps(got[1], reference(x[1:2], g[1:2], 1)[0]) <= 4


def test_kernel_sum_of_cotangent_overflow():
    x = np.array([[1.0, 3.0, 2.0]])
    g = np.array([[1e308, 1e308, 0.0]])
    with np.errstate(all="ignore"):
        got = kernels.log_softmax_vjp(x, g, axis=1)
    want = reference(x, g, 1)  # [8.2e307, -3.3e307, -4.9e307]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_gradient_with_huge_cotangent_is_finite():
    g = einderiv.grad("sum(G * log_softmax(Z))", "Z", {"Z": ("k",), "G": ("k",)})
    Z, G = np.array([1.0, 3.0, 2.0]), np.array([1e308, 1e308, 0.0])
    with np.errstate(all="ignore"):
        got = g(Z=Z, G=G)
    np.testing.assert_allclose(got, reference(Z[None], G[None], 1)[0], rtol=1e-14)


# -- gradients through the API ---------------------------------------------------------------

@pytest.mark.parametrize("src,shapes,axis", [
    ("-sum(Y * log(softmax(Z, axis=1)))", CE_SHAPES, 1),
    ("-sum(Y * log_softmax(Z))", CE_SHAPES, 1),
    ("-sum(Y * log_softmax(Z, axis=0))", CE_SHAPES, 0),
    ("-sum(Y * log_softmax(Z, axis=-2))", CE_SHAPES, 0),
    ("-sum(Y.T * log_softmax(Z.T, axis=0))", CE_SHAPES, 1),
])
def test_cross_entropy_gradient_exact_at_confident_rows(src, shapes, axis):
    g = einderiv.grad(src, "Z", shapes)
    assert "log_softmax_vjp(" in g.formula and "complement" not in g.formula
    x = confident_logits()
    Z = x if axis == 1 else x.T.copy()
    Y = one_hot_at_argmax(x) if axis == 1 else one_hot_at_argmax(x).T.copy()
    assert ulps(g(Z=Z, Y=Y), reference(Z, -Y, axis)) <= 4
    # soft labels (label smoothing): the confident rows to a few ulps, the others to a few
    # roundings of the terms g and s * sum(g) (a genuine difference where they cancel)
    Ys = 0.9 * Y + 0.1 / Y.shape[axis]
    got, want = np.moveaxis(g(Z=Z, Y=Ys), axis, 1), np.moveaxis(reference(Z, -Ys, axis), axis, 1)
    assert ulps(got[:4], want[:4]) <= 4
    scale = np.moveaxis(Ys, axis, 1).sum(axis=1, keepdims=True) + np.moveaxis(Ys, axis, 1)
    assert np.all(np.abs(got - want) <= 8 * np.finfo(float).eps * scale)


def test_several_cross_entropy_terms_sharing_logits_one_call():
    shapes = {**CE_SHAPES, "Q": ("n", "k")}
    g = einderiv.grad("-sum(Y * log_softmax(Z, axis=1)) - 0.5 * sum(Q * log(softmax(Z, axis=1)))",
                      "Z", shapes)
    assert g.formula.count("log_softmax_vjp") == 1
    x = confident_logits()[:4]
    Y, Q = one_hot_at_argmax(x), np.full(x.shape, 0.25)
    want = reference(x, -Y - 0.5 * Q, 1)
    got = g(Z=x, Y=Y, Q=Q)
    for r in range(4):  # at the argmax of a confident row, a few ulps
        m = int(np.argmax(x[r]))
        assert ulps(got[r, m], want[r, m]) <= 8
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("src,shapes,ref", [
    ("-sum(Y * log_softmax(Z, axis=(0, 2)))", {"Z": (2, 4, 3), "Y": (2, 4, 3)},
     lambda j, Z, Y: -j.numpy.sum(Y * j.nn.log_softmax(Z, axis=(0, 2)))),
    ("-sum(Y * log_softmax(Z, axis=1))", {"Z": (2, 4, 3), "Y": (2, 4, 3)},
     lambda j, Z, Y: -j.numpy.sum(Y * j.nn.log_softmax(Z, axis=1))),
    ("-sum(Y * log_softmax(Z, axis=None))", {"Z": (3, 4), "Y": (3, 4)},
     lambda j, Z, Y: -j.numpy.sum(Y * j.nn.log_softmax(Z, axis=(0, 1)))),
    ("-sum(Y * log_softmax(Z))", {"Z": (5,), "Y": (5,)},
     lambda j, Z, Y: -j.numpy.sum(Y * j.nn.log_softmax(Z))),
    ("-sum(Y * log_softmax(Z, axis=1)) - sum(Y * log_softmax(Z, axis=0))",
     {"Z": (3, 4), "Y": (3, 4)},
     lambda j, Z, Y: -j.numpy.sum(Y * j.nn.log_softmax(Z, axis=1))
     - j.numpy.sum(Y * j.nn.log_softmax(Z, axis=0))),
    ("sum(log_softmax(log_softmax(Z, axis=1), axis=0) * Y)", {"Z": (3, 4), "Y": (3, 4)},
     lambda j, Z, Y: j.numpy.sum(j.nn.log_softmax(j.nn.log_softmax(Z, axis=1), axis=0) * Y)),
    ("sum(log_softmax(Z + Y, axis=1) * Y)", {"Z": (3, 4), "Y": (3, 4)},
     lambda j, Z, Y: j.numpy.sum(j.nn.log_softmax(Z + Y, axis=1) * Y)),
])
def test_gradients_and_hessians_match_jax(jax, src, shapes, ref):
    rng = np.random.default_rng(4)
    arrays = {k: rng.normal(size=v) * 3 for k, v in shapes.items()}
    value, (dZ, dY) = einderiv.value_and_grad(src, ["Z", "Y"], shapes)(**arrays)
    args = [jax.numpy.asarray(arrays[k]) for k in ("Z", "Y")]
    jv, (jz, jy) = jax.jit(jax.value_and_grad(lambda Z, Y: ref(jax, Z, Y), argnums=(0, 1)))(
        *args)
    np.testing.assert_allclose(value, jv, rtol=1e-12)
    np.testing.assert_allclose(dZ, jz, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dY, jy, rtol=1e-11, atol=1e-13)
    if "(0, 2)" in src:  # (JAX's Hessians take a second each to trace)
        H = einderiv.hessian(src, "Z", shapes)(**arrays)
        want = jax.jit(jax.hessian(lambda Z: ref(jax, Z, args[1])))(args[0])
        np.testing.assert_allclose(H, want, rtol=1e-11, atol=1e-13)


def test_broadcast_labels_and_scalar_weights_match_jax(jax):
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    Z, y, c = rng.normal(size=(3, 4)), rng.random(4), 1.7
    g = einderiv.grad("-c * sum(y * log_softmax(Z, axis=0))", ["Z", "y"],
                      {"Z": (3, 4), "y": (4,), "c": ()})
    dZ, dy = g(Z=Z, y=y, c=c)
    jz, jy = jax.jit(jax.grad(lambda Z, y: -c * jnp.sum(y * jax.nn.log_softmax(Z, axis=0)),
                              argnums=(0, 1)))(jnp.asarray(Z), jnp.asarray(y))
    np.testing.assert_allclose(dZ, jz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dy, jy, rtol=1e-12, atol=1e-15)


def _softmax_100(z):
    with mp.workdps(100):
        e = [mp.exp(mp.mpf(float(v))) for v in z]
        t = sum(e)
        return [v / t for v in e]


def test_hessian_hvp_and_mixed_second_derivatives_exact_at_lead_40():
    shapes = {"z": ("k",), "y": ("k",)}
    src = "-sum(y * log_softmax(z))"
    z, y = np.array([40.0, 0.0, 1.0]), np.array([0.8, 0.1, 0.1])
    s = _softmax_100(z)
    with mp.workdps(100):
        sy = sum(mp.mpf(float(v)) for v in y)
        want = np.array([[float(sy * ((s[i] if i == j else 0) - s[i] * s[j])) for j in range(3)]
                         for i in range(3)])
        mixed = np.array([[float(-((1 if i == j else 0) - s[i])) for j in range(3)]
                          for i in range(3)])
    H = einderiv.hessian(src, "z", shapes)(z=z, y=y)
    np.testing.assert_allclose(H, want, rtol=1e-14)  # the top's s (1 - s) is e^-40, exact
    v = np.array([1.0, -1.0, 0.5])
    np.testing.assert_allclose(einderiv.hvp(src, "z", shapes)(z=z, y=y, tangent=v), want @ v,
                               rtol=1e-13)
    (Hzz, Hzy), (Hyz, Hyy) = einderiv.hessian(src, ["z", "y"], shapes)(z=z, y=y)
    np.testing.assert_allclose(Hzy, mixed, rtol=1e-14, atol=0)
    np.testing.assert_allclose(Hyz, mixed.T, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(Hyy, np.zeros((3, 3)))


def test_vjp_of_log_softmax_is_the_one_call_and_exact():
    u = einderiv.vjp("log(softmax(Z, axis=0))", "Z", CE_SHAPES)
    assert u.formula == "log_softmax_vjp(Z, cotangent, axis=0)"
    x = confident_logits()[:4].T.copy()
    c = -one_hot_at_argmax(x.T).T
    assert ulps(u(Z=x, cotangent=c), reference(x, c, 0)) <= 4
    # the Jacobian keeps the rule: no vjp call, the top's 1 - s exact
    j = einderiv.jacobian("log_softmax(z)", "z", {"z": ("k",)})
    assert "log_softmax_vjp" not in j.formula


def test_its_own_derivatives_match_jax_along_tuple_axes(jax):
    jnp = jax.numpy

    def jvjp(Z, G):
        return jax.vjp(lambda z: jax.nn.log_softmax(z, axis=(0, 2)), Z)[1](G)[0]
    shapes = {n: ("a", "b", "c") for n in "ZGC"}
    rng = np.random.default_rng(6)
    arrays = {n: rng.normal(size=(2, 3, 4)) for n in "ZGC"}
    src = "sum(C * log_softmax_vjp(Z, G, axis=(0, 2)))"
    _, (dZ, dG) = einderiv.value_and_grad(src, ["Z", "G"], shapes)(**arrays)
    jz, jg = jax.jit(jax.grad(lambda Z, G: jnp.sum(arrays["C"] * jvjp(Z, G)), argnums=(0, 1)))(
        jnp.asarray(arrays["Z"]), jnp.asarray(arrays["G"]))
    np.testing.assert_allclose(dZ, jz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dG, jg, rtol=1e-12, atol=1e-15)


# -- unrolled networks (lanes lift the vjp) ------------------------------------------------

def _rnn(T, axis, batch):
    W, U = einderiv.var("W", ("H", "H")), einderiv.var("U", ("H", "V"))
    b = einderiv.var("b", ("H",))
    Wy, by = einderiv.var("Wy", ("V", "H")), einderiv.var("by", ("V",))
    X = einderiv.var("X", ("T", "V", "B") if batch else ("T", "V"))
    Y = einderiv.var("Y", ("T", "V", "B") if batch else ("T", "V"))
    h = loss = None
    for t in range(T):
        z = U @ X[t] + (b[:, None] if batch else b)
        h = fn.tanh(z if h is None else W @ h + z)
        logits = Wy @ h + (by[:, None] if batch else by)
        step = -fn.sum(Y[t] * fn.log_softmax(logits, axis=axis))
        loss = step if loss is None else loss + step
    return loss


@pytest.mark.parametrize("axis,batch", [(0, False), pytest.param(-2, True, marks=slow),
                                        pytest.param((0, 1), True, marks=slow)])
def test_rnn_cross_entropy_matches_jax(jax, axis, batch):
    jnp = jax.numpy
    T, H, V, B = 4, 3, 5, 2
    g = einderiv.grad(_rnn(T, axis, batch), ["W", "U", "b", "Wy", "by"])
    assert g.formula.count("log_softmax_vjp") == 1  # one call on all steps
    rng = np.random.default_rng(7)
    p = {"W": rng.normal(size=(H, H)), "U": rng.normal(size=(H, V)), "b": rng.normal(size=H),
         "Wy": 8 * rng.normal(size=(V, H)), "by": rng.normal(size=V)}
    shape = (T, V, B) if batch else (T, V)
    X, Y = rng.normal(size=shape), rng.random(size=shape)

    def loss(p):
        h, total = None, 0.0
        for t in range(T):
            z = p["U"] @ X[t] + (p["b"][:, None] if batch else p["b"])
            h = jnp.tanh(z if h is None else p["W"] @ h + z)
            logits = p["Wy"] @ h + (p["by"][:, None] if batch else p["by"])
            total = total - jnp.sum(Y[t] * jax.nn.log_softmax(logits, axis=axis))
        return total
    want = jax.jit(jax.grad(loss))({k: jnp.asarray(v) for k, v in p.items()})
    for name, got in zip(["W", "U", "b", "Wy", "by"], g(**p, X=X, Y=Y)):
        np.testing.assert_allclose(got, want[name], rtol=1e-10, atol=1e-12)


def test_lifted_vjp_with_a_cotangent_shared_by_every_step():
    shapes = {"Z": ("T", "k", "b"), "G": ("k", "b"), "C": ("k", "b")}
    rng = np.random.default_rng(8)
    arrays = {"Z": rng.normal(size=(3, 4, 2)) * 5, "G": rng.normal(size=(4, 2)),
              "C": rng.normal(size=(4, 2))}
    for ax, axv in (("0", 0), ("-1", -1), ("(0, 1)", (0, 1))):
        src = " + ".join(f"sum(tanh(log_softmax_vjp(Z[{t}], G, axis={ax})) * C)" for t in range(3))
        f = einderiv.compile(src, shapes)
        want = sum(np.sum(np.tanh(kernels.log_softmax_vjp(arrays["Z"][t], arrays["G"], axis=axv))
                          * arrays["C"]) for t in range(3))
        assert f(**arrays) == pytest.approx(want, rel=1e-13)


def test_lanes_do_not_lift_a_correlation_as_a_vjp():
    src = "sum(correlate(X[0], w) ** 2) + sum(correlate(X[1], w) ** 2) + " \
          "sum(correlate(X[2], w) ** 2)"
    shapes = {"X": (3, 1), "w": (1,)}
    X, w = np.array([[1.0], [2.0], [3.0]]), np.array([0.5])
    value = einderiv.compile(src, shapes)(X=X, w=w)
    assert np.shape(value) == () and value == pytest.approx(0.25 * 14)  # 10.5, shaped (1,)
    dw = einderiv.grad(src, "w", shapes)(X=X, w=w)
    np.testing.assert_allclose(dw, [14.0])  # a [3, 3, 1] array


def test_lanes_do_not_lift_a_conv1d_as_a_vjp():
    src = " + ".join(f"sum(conv1d(X[{t}], W) ** 2)" for t in range(3))
    shapes = {"X": (3, 2, 2, 1), "W": (2, 2, 1)}
    rng = np.random.default_rng(9)
    X, W = rng.normal(size=(3, 2, 2, 1)), rng.normal(size=(2, 2, 1))
    # conv1d(x [B, C, 1], w [O, C, 1])[b, o, 0] = sum_c x[b, c, 0] w[o, c, 0]
    want = sum(np.sum(np.einsum("bc,oc->bo", X[t, :, :, 0], W[:, :, 0]) ** 2) for t in range(3))
    value = einderiv.compile(src, shapes)(X=X, W=W)
    assert np.shape(value) == () and value == pytest.approx(want, rel=1e-12)


# -- backends, wrappers, pickling, threads, shapes -------------------------------------------

@slow
def test_backends_and_function_wrappers_exact_at_confident_rows(jax, torch):
    import einderiv.jax as ej
    import einderiv.torch as et
    src = "-sum(Y * log_softmax(Z, axis=1))"
    Z = np.array([[40.0, 0, 1], [1, 2, 3.0], [100.0, 0, -1]])
    Y = np.eye(3)[[0, 1, 0]]
    want = reference(Z, -Y, 1)
    for backend in ("jax", "torch"):
        got = einderiv.grad(src, "Z", CE_SHAPES, backend=backend)(Z=Z, Y=Y)
        got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
        assert ulps(got, want) <= 4, backend
    F = ej.function(src, CE_SHAPES)
    jz = jax.grad(F, argnums=0)(jax.numpy.asarray(Z), jax.numpy.asarray(Y))
    assert ulps(np.asarray(jz), want) <= 4
    G = et.function(src, CE_SHAPES)
    Zt = torch.tensor(Z, requires_grad=True)
    G(Zt, torch.tensor(Y)).backward()
    assert ulps(Zt.grad.numpy(), want) <= 4
    per_sample = torch.func.vmap(torch.func.grad(G), (0, None))(
        torch.tensor(np.stack([Z, Z[::-1].copy()])), torch.tensor(Y))
    assert ulps(per_sample[1].numpy(), reference(Z[::-1], -Y, 1)) <= 4


def test_pickled_and_threaded_gradients(run_threads):
    g = einderiv.grad("-sum(Y * log(softmax(Z, axis=1)))", "Z", CE_SHAPES)
    x = confident_logits()[:4]
    Y = one_hot_at_argmax(x)
    want = reference(x, -Y, 1)
    assert ulps(pickle.loads(pickle.dumps(g))(Z=x, Y=Y), want) <= 4
    bad = []

    def work(seed):
        rng = np.random.default_rng(seed)
        Z, Yr = rng.normal(size=(40, 6)) * 20, rng.random((40, 6))
        expect = kernels.log_softmax_vjp(Z, -Yr, axis=1)
        for _ in range(20):
            if not np.array_equal(g(Z=Z, Y=Yr), expect):
                bad.append(seed)
    run_threads(*[(work, s) for s in range(4)])
    assert bad == []


def test_empty_scalar_and_integer_inputs():
    g = einderiv.grad("-sum(Y * log_softmax(Z, axis=1))", "Z", CE_SHAPES)
    for shape in ((0, 3), (3, 0), (2, 1)):
        got = g(Z=np.ones(shape), Y=np.ones(shape))
        assert got.shape == shape and np.all(got == 0)
    s = einderiv.grad("-Y * log_softmax(Z)", "Z", {"Z": (), "Y": ()})
    assert s(Z=3.0, Y=2.0) == 0.0
    e = einderiv.grad("-sum(Y * log_softmax(Z, axis=()))", "Z", CE_SHAPES)
    np.testing.assert_array_equal(e(Z=np.ones((2, 3)), Y=np.ones((2, 3))), np.zeros((2, 3)))
    Zi, Yi = np.array([[30, 0, 0], [1, 2, 3]]), np.eye(3, dtype=int)[[0, 2]]
    got = g(Z=Zi, Y=Yi)
    assert got.dtype == np.float64 and ulps(got, reference(Zi, -Yi, 1)) <= 4
    Z32, Y32 = Zi.astype(np.float32), Yi.astype(np.float32)
    got = g(Z=Z32, Y=Y32)
    assert got.dtype == np.float32
    want = reference(Z32, -Y32, 1)
    assert np.all(np.abs(got - want) <= 4 * np.spacing(np.abs(want).astype(np.float32)))


# -- the language and the CLI --------------------------------------------------------------

@pytest.mark.parametrize("src", [
    "log_softmax_vjp(Z, G, 1, 2)", "log_softmax_vjp(Z, G, axis=2)",
    "log_softmax_vjp(Z, G, axis=-3)",
    "log_softmax_vjp(Z, G, axis=(0, 0))", "log_softmax_vjp(Z, G, axis=(1, -1))",
    "log_softmax_vjp(Z, G, axis=1.5)", "log_softmax_vjp(Z, G, axis=c)",
    "log_softmax_vjp(Z, v)", "log_softmax_vjp(Z, c)", "log_softmax_vjp(Z, G.T)",
    "log_softmax_vjp(Z, G, g=1)", "log_softmax_vjp(Z, G, keepdims=True)",
    "log_softmax_vjp(c, c, axis=0)", "log_softmax_vjp((Z, G))",
])
@pytest.mark.no_roundtrip
def test_bad_calls_are_clear_errors_with_a_caret(src):
    with pytest.raises(EinderivError) as e:
        einderiv.compile(src, {"Z": ("n", "k"), "G": ("n", "k"), "v": ("k",), "c": ()})
    assert "^" in str(e.value)


@pytest.mark.parametrize("src", ["log_softmax_vjp(Z)", "log_softmax_vjp()",
                                 "log_softmax_vjp(x=Z, g=G)"])
@pytest.mark.no_roundtrip
def test_too_few_arguments_is_a_clear_error(src):
    with pytest.raises(EinderivError, match="arguments") as e:
        einderiv.compile(src, {"Z": ("n", "k"), "G": ("n", "k")})
    assert "^" in str(e.value)


@pytest.mark.no_roundtrip
def test_cli_too_few_arguments(capsys):
    code = cli.main(["einstein", "log_softmax_vjp(Z)", "--shape", "Z=n,k"])
    err = capsys.readouterr().err
    assert code == 2 and "^" in err and "Traceback" not in err


def test_cli_grad_all_formats_and_check(capsys):
    code = cli.main(["grad", "-sum(Y * log(softmax(Z, axis=0)))", "--wrt", "Z", "--shape",
                     "Z=n,k", "--shape", "Y=n,k", "--format", "json", "--check"])
    import json
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["check"]["ok"]
    assert out["formula"] == "log_softmax_vjp(Z, -Y, axis=0)"
    assert "_kernels.log_softmax_vjp(Z, -Y, axis=0)" in out["python"]


@pytest.mark.parametrize("src,shapes", [
    ("-sum(Y * log_softmax(Z, axis=0))", CE_SHAPES),
    ("-sum(Y * log_softmax(Z, axis=1))", {"Z": ("b", "n", "k"), "Y": ("b", "n", "k")}),
    ("-sum(Y * log_softmax(Z, axis=(0, 1)))", CE_SHAPES),
])
def test_latex_keeps_the_cotangent(src, shapes):
    latex = einderiv.grad(src, "Z", shapes).latex
    assert "Y" in latex


def test_latex_keeps_the_cotangent_along_the_default_axis():
    latex = einderiv.grad("-sum(Y * log_softmax(Z, axis=1))", "Z", CE_SHAPES).latex
    assert r"\operatorname{log\_softmax\_vjp}\left(Z, -Y\right)" in latex


# -- user rule files with their own _vjp ------------------------------------------------------

_MODULE = "lsv_breaker_rules_mod"
_JACOBIAN = ("d mysm(x)[i] / dx[j] = delta[i,j] * (argmax_onehot(softmax(x))[j] * "
             "complement(softmax(x))[j] + (1 - argmax_onehot(softmax(x))[j])) - (1 - "
             "argmax_onehot(softmax(x))[i]) * softmax(x)[j] - argmax_onehot(softmax(x))[i] * "
             "(1 - argmax_onehot(softmax(x))[j]) * softmax(x)[j]")


def _vjp_rules():
    """log_softmax_vjp's own derivative rules (rules/tensor.rules), renamed mysm_vjp."""
    from einderiv.rulebook.table import rules_dir
    text = (rules_dir() / "tensor.rules").read_text()
    return "\n".join(ln.replace("log_softmax_vjp", "mysm_vjp") for ln in text.splitlines()
                     if ln.startswith("d log_softmax_vjp("))


@pytest.fixture
def user_rules(tmp_path, monkeypatch):
    """write(name, vjp_line) -> the path of a rule file: mysm (log_softmax) with its Jacobian
    rule, `vjp_line`, and mysm_vjp's derivative rules; the module its kernels live in."""
    (tmp_path / f"{_MODULE}.py").write_text(textwrap.dedent("""
        from einderiv.evaluate import kernels as K
        def sm(x, axis=-1):
            return K.log_softmax(x, axis=axis)
        def vjp_right(x, g, axis=-1):
            return K.log_softmax_vjp(x, g, axis=axis)
        def vjp_wrong(x, g, axis=-1):
            return g
        def vjp_first_axis(x, g, axis=-1):
            return K.log_softmax_vjp(x, g, axis=axis[0] if isinstance(axis, tuple) else axis)
        def vjp_last_axis_only(x, g):
            return K.log_softmax_vjp(x, g, axis=-1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def write(name, vjp_line, derivatives=True):
        path = tmp_path / f"{name}.rules"
        path.write_text(f"tensor mysm(x; axis) -> same = {_MODULE}:sm\n{_JACOBIAN}\n{vjp_line}\n"
                        + (_vjp_rules() + "\n" if derivatives else ""))
        return path
    return write


def _book(path):
    return default_rulebook().copy().load(str(path), allow_imports=True)


def test_user_vjp_right_is_used_and_checked(user_rules, capsys):
    path = user_rules("right", f"tensor mysm_vjp(x, g; axis) -> cotangent = {_MODULE}:vjp_right")
    assert cli.main(["rules", "check", "--allow-imports", "-q", str(path)]) == 0
    Z = confident_logits()[:4]
    Y = one_hot_at_argmax(Z)
    with using_rules(_book(path)):
        for axis, ZZ, YY in ((0, Z.T.copy(), Y.T.copy()), (1, Z, Y)):
            g = einderiv.grad(f"-sum(Y * mysm(Z, axis={axis}))", "Z", CE_SHAPES)
            assert "mysm_vjp(" in g.formula
            assert ulps(g(Z=ZZ, Y=YY), reference(ZZ, -YY, axis)) <= 4


@pytest.mark.parametrize("impl,why", [("vjp_wrong", "differs from the pullback"),
                                      ("vjp_first_axis", "differs from the pullback")])
def test_user_vjp_wrong_kernel_fails_the_check(user_rules, capsys, impl, why):
    path = user_rules(impl, f"tensor mysm_vjp(x, g; axis) -> cotangent = {_MODULE}:{impl}")
    assert cli.main(["rules", "check", "--allow-imports", "-q", str(path)]) == 1
    out = capsys.readouterr().out
    assert why in out and f"{path.name}:3" in out


@pytest.mark.parametrize("params,declared", [("x", 1), ("x, g, h", 3)])
def test_user_vjp_wrong_arity_is_a_rule_error_with_a_caret(user_rules, params, declared):
    path = user_rules("arity", f"tensor mysm_vjp({params}; axis) -> cotangent = "
                               f"{_MODULE}:vjp_right", derivatives=False)
    with pytest.raises(RuleError, match=f"takes 2 arguments, mysm_vjp declares {declared}") as e:
        _book(path)
    assert "^" in str(e.value)


def test_user_vjp_with_the_wrong_shape_rule_is_a_rule_error(user_rules):
    path = user_rules("same", f"tensor mysm_vjp(x, g; axis) -> same = {_MODULE}:vjp_right",
                      derivatives=False)
    with pytest.raises(RuleError, match="shape rule same takes one argument"):
        _book(path)


def test_orphan_cotangent_primitive_fails_the_check(tmp_path, monkeypatch, user_rules, capsys):
    path = tmp_path / "orphan.rules"
    path.write_text(f"tensor foo_vjp(x, g; axis) -> cotangent = {_MODULE}:vjp_right\n")
    assert cli.main(["rules", "check", "--allow-imports", "-q", str(path)]) == 1
    assert "named NAME_vjp after a tensor primitive NAME" in capsys.readouterr().out


@pytest.mark.no_roundtrip
def test_user_vjp_without_an_axis_keyword(user_rules):
    path = user_rules("noaxis", f"tensor mysm_vjp(x, g) -> cotangent = "
                                f"{_MODULE}:vjp_last_axis_only")
    Z = confident_logits()[:4].T.copy()
    Y = one_hot_at_argmax(Z.T).T.copy()
    try:
        book = _book(path)
        with using_rules(book):
            g = einderiv.grad("-sum(Y * mysm(Z, axis=0))", "Z", CE_SHAPES)
            assert "None=" not in g.formula
            got = g(Z=Z, Y=Y)
            np.testing.assert_allclose(g.evaluate_ir(Z=Z, Y=Y), got, rtol=1e-13)
    except EinderivError:
        return  # a clear error is right too
    assert ulps(got, reference(Z, -Y, 0)) <= 4


@pytest.mark.no_roundtrip
def test_user_vjp_with_another_axis_keyword(user_rules, capsys):
    path = user_rules("dim", f"tensor mysm_vjp(x, g; dim) -> cotangent = {_MODULE}:vjp_right")
    checked = cli.main(["rules", "check", "--allow-imports", "-q", str(path)])
    Z = confident_logits()[:4]
    Y = one_hot_at_argmax(Z)
    with using_rules(_book(path)):
        g = einderiv.grad("-sum(Y * mysm(Z, axis=1))", "Z", CE_SHAPES)
        try:
            got = g(Z=Z, Y=Y)
        except EinderivError:
            assert checked == 1  # the check must not pass a primitive no call can run
            return
    assert ulps(got, reference(Z, -Y, 1)) <= 4
