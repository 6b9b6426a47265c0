"""helper-113's breaker of today's changes: numpy's dot for products of one- and two-axis arrays,
`A.T + A` through kernels.transpose_plus, permutations as `transpose(T, axes)` composed and
taken through elementwise functions, rewrites through selections, positional binding, rule
files, the rank limit, non-integer sizes and conv modes.

What holds is tested as such. Its five faults (references: numpy, scipy, JAX in float64) are
fixed, each test asserting the right value: a selected softmax beside a tensor, a sum of a
selection of exp, the written-out diagonal softmax and a sum broadcast in one contraction reach
their stable forms (simplify/rewrite.py, selections.py, pattern.py); positional arrays take
the order that leaves no input of .inputs out (api.py).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.special import log_expit, log_softmax, logsumexp

import einderiv
from einderiv.errors import InputError, ParseError, ShapeError
from einderiv.evaluate import kernels
from einderiv.rulebook.table import default_rulebook, using_rules

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

rng = np.random.default_rng(113)


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, pytest.importorskip("jax.numpy")


# -- 1. numpy's dot: never a stack, never a scalar ----------------------------------------------

_b, _n, _m = 3, 4, 5
_ARR = {"A": rng.normal(size=(_b, _n, _m)), "x": rng.normal(size=_m), "v": rng.normal(size=_n),
        "S": rng.normal(size=(_n, _n)), "T": rng.normal(size=(_b, _n, _n)),
        "W": rng.normal(size=(_n, _m))}
_SH = {"A": ("b", "n", "m"), "x": ("m",), "v": ("n",), "S": ("n", "n"), "T": ("b", "n", "n"),
       "W": ("n", "m")}


@pytest.fixture
def dot_ndims(monkeypatch):
    """Every np.dot call made while the test runs, as (ndim, ndim) pairs."""
    seen = []
    original = np.dot

    def dot(a, b, *args, **kwargs):
        seen.append((np.ndim(a), np.ndim(b)))
        return original(a, b, *args, **kwargs)
    monkeypatch.setattr(np, "dot", dot)
    return seen


@pytest.mark.parametrize("kind, expr, wrt, ref", [
    ("hessian", "sum(sin(T @ S @ v))", "S", lambda jnp, T, S, v: jnp.sum(jnp.sin(T @ S @ v))),
    ("hessian", "sum(sin(T @ S @ v))", "v", lambda jnp, T, S, v: jnp.sum(jnp.sin(T @ S @ v))),
    ("jacobian", "S @ T", "S", lambda jnp, S, T: S @ T),
    ("jacobian", "sum(T, axis=0, keepdims=True) @ v", "v",
     lambda jnp, T, v: jnp.sum(T, axis=0, keepdims=True) @ v),
    ("jacobian", "reshape(A, (b * n, m)) @ x", "A", lambda jnp, A, x: A.reshape(_b * _n, _m) @ x),
    ("hessian", "sum(((A + W) @ x) ** 2)", "W", lambda jnp, A, W, x: jnp.sum(((A + W) @ x) ** 2)),
    ("hessian", "sum((T @ W @ x) ** 3)", "W", lambda jnp, T, W, x: jnp.sum((T @ W @ x) ** 3)),
    ("jacobian", "einsum('bij,jk->bik', T, S)", "S",
     lambda jnp, T, S: jnp.einsum('bij,jk->bik', T, S)),
    ("hessian", "v @ S @ S @ v", "S", lambda jnp, S, v: v @ S @ S @ v),
])
def test_dot_only_meets_one_or_two_axes_and_matches_jax(dot_ndims, kind, expr, wrt, ref):
    jax, jnp = _jax()
    names = ref.__code__.co_varnames[1:ref.__code__.co_argcount]
    arrays = {k: _ARR[k] for k in names}
    r = getattr(einderiv, kind)(expr, wrt, {k: _SH[k] for k in names})
    f = lambda *a: ref(jnp, *a)
    d = getattr(jax, "hessian" if kind == "hessian" else "jacobian")
    want = d(f, argnums=names.index(wrt))(*[jnp.asarray(arrays[k]) for k in names])
    got = r(**{k: arrays[k] for k in r.inputs})
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    assert all(a in (1, 2) and b in (1, 2) for a, b in dot_ndims), dot_ndims


@pytest.mark.parametrize("backend", ["torch", "jax", "dask"])
def test_dot_on_other_backends(backend):
    pytest.importorskip({"torch": "torch", "jax": "jax", "dask": "dask.array"}[backend])
    if backend == "jax":
        _jax()
    g = einderiv.grad("sum(tanh(W @ x) * v)", ["W", "x"], {"W": ("n", "m"), "x": ("m",),
                                                        "v": ("n",)}, backend=backend)
    W, x, v = _ARR["W"], _ARR["x"], _ARR["v"]
    dW, dx = g(W=W, x=x, v=v)
    d = v * (1 - np.tanh(W @ x) ** 2)
    host = lambda a: np.asarray(a.compute() if hasattr(a, "compute") else a)
    np.testing.assert_allclose(host(dW), np.outer(d, x), rtol=1e-12)
    np.testing.assert_allclose(host(dx), W.T @ d, rtol=1e-12)


# -- 2. A.T + A through transpose_plus ----------------------------------------------------------

_H = einderiv.hessian("x @ A @ x", "x", {"x": ("n",), "A": ("n", "n")})


@pytest.mark.parametrize("make", [
    lambda: np.asfortranarray(rng.normal(size=(5, 5))),
    lambda: rng.normal(size=(10, 10))[::2, ::2],
    lambda: rng.normal(size=(5, 5))[::-1, ::-1],
    lambda: rng.normal(size=(5, 5)).T[::-1],
    lambda: rng.normal(size=(5, 9))[:, 2:7],
    lambda: rng.normal(size=(1025, 1025)),  # past the 2^20-entry bound
    lambda: rng.normal(size=(5, 5)).astype(np.float32),
    lambda: rng.integers(-3, 3, size=(4, 4)),
    lambda: np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f8"),
], ids=["F", "strided", "negative", "transposed-negative", "columns", "large", "float32", "int",
        "big-endian"])
def test_transpose_plus_on_any_layout(make):
    A = make()
    got = _H(A=A)
    want = A.T.astype(np.result_type(A, np.float64 if A.dtype.kind != "f" else A.dtype)) + A
    np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(got, A)


def test_transpose_plus_results_are_owned():
    A = rng.normal(size=(4, 4))
    first, second = _H(A), _H(A)
    first *= 0
    np.testing.assert_array_equal(second, A.T + A)
    J = einderiv.jacobian("A.T @ x + A @ x", ["x", "x"], {"A": ("n", "n"), "x": ("n",)})
    a, b = J(A=A, x=np.ones(4))
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, A.T + A)


def test_transpose_plus_kernel_edges():
    a32, a64 = np.ones((3, 2), np.float32), np.ones((2, 3))
    assert kernels.transpose_plus(a32, a64).dtype == np.float64
    v = np.arange(3.0)
    np.testing.assert_array_equal(kernels.transpose_plus(np.ones((3, 1)), v[None, :]),
                                  np.ones((1, 3)) + v)
    np.testing.assert_array_equal(kernels.transpose_plus(v, v), 2 * v)
    T = rng.normal(size=(2, 3, 4))
    np.testing.assert_array_equal(kernels.transpose_plus(T, T.T), 2 * T.T)


# -- 3. permutations ----------------------------------------------------------------------------

_P = {"T": rng.normal(size=(2, 3, 4)), "U": rng.normal(size=(2, 3, 4, 5)),
      "V": rng.normal(size=(2, 3, 4, 5, 2)), "X": rng.normal(size=(3, 4)),
      "Y": rng.normal(size=(4, 3)), "w": rng.normal(size=4), "S": rng.normal(size=(3, 3, 4))}
_PSH = {"T": ("a", "b", "c"), "U": ("a", "b", "c", "d"), "V": ("a", "b", "c", "d", "e"),
        "X": ("b", "c"), "Y": ("c", "b"), "w": ("c",), "S": ("b", "b", "c")}


@pytest.mark.parametrize("expr, ref", [
    ("transpose(sin(transpose(T, (2, 0, 1))), (2, 0, 1))",
     lambda jnp, T: jnp.transpose(jnp.sin(jnp.transpose(T, (2, 0, 1))), (2, 0, 1))),
    ("transpose(transpose(T, (1, 2, 0)), (1, 2, 0))",
     lambda jnp, T: jnp.transpose(jnp.transpose(T, (1, 2, 0)), (1, 2, 0))),
    ("transpose(U, (3, 1, 0, 2))[1:, ::2]", lambda jnp, U: jnp.transpose(U, (3, 1, 0, 2))[1:, ::2]),
    ("exp(transpose(U, (3, 1, 0, 2))) * transpose(U, (3, 1, 0, 2))[0]",
     lambda jnp, U: jnp.exp(jnp.transpose(U, (3, 1, 0, 2))) * jnp.transpose(U, (3, 1, 0, 2))[0]),
    ("sum(transpose(V, (4, 2, 0, 3, 1)), axis=1)",
     lambda jnp, V: jnp.sum(jnp.transpose(V, (4, 2, 0, 3, 1)), axis=1)),
    ("sin(T.mT) + cos(X.T)", lambda jnp, T, X: jnp.sin(jnp.swapaxes(T, -1, -2)) + jnp.cos(X.T)),
    ("X.T[:, None, :] * T.mT[0][:, :, None]",
     lambda jnp, X, T: X.T[:, None, :] * jnp.swapaxes(T, -1, -2)[0][:, :, None]),
    ("transpose(T, (1, 0, 2))[:, :, None, :] * w",
     lambda jnp, T, w: jnp.transpose(T, (1, 0, 2))[:, :, None, :] * w),
    ("tr(S)", lambda jnp, S: jnp.trace(S)),
    ("softmax(transpose(T, (2, 0, 1)), axis=0)",
     lambda jnp, T: __import__("jax").nn.softmax(jnp.transpose(T, (2, 0, 1)), axis=0)),
    ("reshape(transpose(T, (2, 0, 1)), (c, a * b))",
     lambda jnp, T: jnp.reshape(jnp.transpose(T, (2, 0, 1)), (4, 6))),
])
def test_permutations_values_gradients_and_jacobians(expr, ref):
    jax, jnp = _jax()
    names = ref.__code__.co_varnames[1:ref.__code__.co_argcount]
    arrays = {k: _P[k] for k in names}
    shapes = {k: _PSH[k] for k in names}
    args = [jnp.asarray(arrays[k]) for k in names]
    f = lambda *a: ref(jnp, *a)
    np.testing.assert_allclose(einderiv.compile(expr, shapes)(**arrays), np.asarray(f(*args)),
                               rtol=1e-12)
    wrt = names[0]
    loss = lambda *a: jnp.sum(jnp.sin(f(*a)) * f(*a))
    g = einderiv.grad(f"sum(sin({expr}) * ({expr}))", wrt, shapes)
    np.testing.assert_allclose(g(**{k: arrays[k] for k in g.inputs}),
                               np.asarray(jax.grad(loss)(*args)), rtol=1e-10, atol=1e-12)
    J = einderiv.jacobian(f"cos({expr})", wrt, shapes)
    np.testing.assert_allclose(J(**{k: arrays[k] for k in J.inputs}),
                               np.asarray(jax.jacobian(lambda *a: jnp.cos(f(*a)))(*args)),
                               rtol=1e-10, atol=1e-12)


def test_permutations_print_as_transpose_and_latex_renders():
    r = einderiv.compile("sin(transpose(T, (2, 0, 1)))", {"T": ("a", "b", "c")})
    assert "einsum" not in r.formula and "transpose(" in r.formula
    assert r.latex
    g = einderiv.grad("sum(sin(X.T))", "X", {"X": ("n", "m")})
    assert g.formula == "cos(X)"


# -- 4. rewrites through selections -------------------------------------------------------------

_S = 1000.0
_E = {"L": _S * rng.normal(size=(4, 4)), "x": _S * rng.normal(size=4),
      "X": _S * rng.normal(size=(4, 3)), "p": _S * rng.normal(size=4),
      "N": _S * rng.normal(size=(4, 3)), "w": np.abs(rng.normal(size=4)),
      "pi": np.abs(rng.normal(size=3)), "R": np.abs(rng.normal(size=(4, 4))),
      "eta": _S * rng.normal(size=4), "y": np.abs(rng.normal(size=4)), "s": _S * rng.normal()}
_ESH = {"L": ("n", "n"), "x": ("n",), "X": ("n", "k"), "p": ("n",), "N": ("n", "k"),
        "w": ("n",), "pi": ("k",), "R": ("n", "n"), "eta": ("n",), "y": ("n",), "s": ()}
_e = _E
_lse2 = lambda a, b: np.logaddexp(a, b)


def _stable(expr, want):
    r = einderiv.compile(expr, {k: v for k, v in _ESH.items()})
    with np.errstate(all="ignore"):
        got = r(**{k: _E[k] for k in r.inputs})
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("expr, want", [
    ("logsumexp(L, axis=0) - diag(L)", logsumexp(_e["L"], axis=0) - np.diag(_e["L"])),
    ("log(diag(softmax(L, axis=0)))", np.diag(log_softmax(_e["L"], axis=0))),
    ("log(diag(softmax(L.T, axis=1)))", np.diag(log_softmax(_e["L"].T, axis=1))),
    ("log(softmax(x)[::-2])", log_softmax(_e["x"])[::-2]),
    ("log(softmax(X, axis=0)[::-1, 1:])", log_softmax(_e["X"], axis=0)[::-1, 1:]),
    ("log(reshape(softmax(X, axis=1), (k, n)))", log_softmax(_e["X"], axis=1).reshape(3, 4)),
    ("log(exp(N) + exp(p)[:, None])", _lse2(_e["p"][:, None], _e["N"])),
    ("log(exp(x) + exp(x[::-1]))", _lse2(_e["x"], _e["x"][::-1])),
    ("log(exp(L) + exp(L.T))", _lse2(_e["L"], _e["L"].T)),
    ("log(w @ exp(X))", logsumexp(_e["X"].T, axis=1, b=_e["w"])),
    ("log(exp(eta) @ R)", logsumexp(np.broadcast_to(_e["eta"], (4, 4)), axis=1, b=_e["R"].T)),
    ("log(mean(exp(X) * pi, axis=1))", logsumexp(_e["X"], axis=1, b=_e["pi"]) - np.log(3)),
    ("log(sum(w * exp(x)) / size(n) ** 2)", logsumexp(_e["x"], b=_e["w"]) - np.log(16)),
    ("log(sum(w * exp(x)) / exp(s))", logsumexp(_e["x"], b=_e["w"]) - _e["s"]),
    ("log(0.5 * sum(exp(x)))", logsumexp(_e["x"]) + np.log(0.5)),
    ("log(softmax(x)[::-1] / softmax(p))", log_softmax(_e["x"])[::-1] - log_softmax(_e["p"])),
    ("log(sigmoid(x)[::-1] / y)", log_expit(_e["x"])[::-1] - np.log(_e["y"])),
    ("exp(L[0]) / sum(exp(L), axis=0)", np.exp(log_softmax(_e["L"], axis=0)[0])),
    ("exp(L[:, 1]) / sum(exp(L), axis=1)", np.exp(log_softmax(_e["L"], axis=1)[:, 1])),
    ("-mean(log(exp(diag(L)) / sum(exp(L), axis=1)))",
     -np.mean(np.diag(log_softmax(_e["L"], axis=1)))),
    ("diag(L) - logsumexp(L, axis=0)", np.diag(log_softmax(_e["L"], axis=0))),
    ("L[0] - logsumexp(L, axis=0)", log_softmax(_e["L"], axis=0)[0]),
    ("log(1 - sigmoid(L).T)", log_expit(-_e["L"].T)),
    ("exp(N) / (exp(N) + exp(p[1]))", np.exp(-np.logaddexp(0, _e["p"][1] - _e["N"]))),
    ("log(sum(exp(L).T, axis=0))", logsumexp(_e["L"], axis=1)),
    ("log(sum(diag(exp(x))))", logsumexp(_e["x"])),
    ("log(cosh(L).T)", np.logaddexp(_e["L"].T, -_e["L"].T) - np.log(2)),
])
def test_stable_through_selections_at_1e3(expr, want):
    _stable(expr, want)


@pytest.mark.parametrize("expr, want", [
    # selections that are no pure pick: a pad, a triangle, a diag of a vector (zeros among the
    # entries) and a sum of a column of another axis must not be taken for softmax/logsumexp
    ("log(pad(softmax(x), (1, 2)) + 1)", "np.log(np.pad(sm(x), (1, 2)) + 1)"),
    ("log(triu(softmax(L, axis=1)) + 1)", "np.log(np.triu(sm(L, axis=1)) + 1)"),
    ("log(1 + exp(diag(x)))", "np.log1p(np.exp(np.diag(x)))"),
    ("log(sum(exp(diag(x)), axis=1))", "np.log(np.sum(np.exp(np.diag(x)), axis=1))"),
    ("exp(L[:, 0]) / sum(exp(L), axis=0)", "np.exp(L[:, 0]) / np.exp(L).sum(0)"),
    ("exp(L.T) / sum(exp(L), axis=1)", "np.exp(L.T) / np.exp(L).sum(1)"),
    ("exp(x[1]) / sum(exp(x[::2]))", "np.exp(x[1]) / np.sum(np.exp(x[::2]))"),
    ("logsumexp(x[::2]) - x[1::2]", "logsumexp(x[::2]) - x[1::2]"),
    ("L - logsumexp(L, axis=0)[:, None]", "L - logsumexp(L, axis=0)[:, None]"),
    ("sign(L).T * abs(L)", "np.sign(L).T * np.abs(L)"),
    ("maximum(L, -L.T)", "np.maximum(L, -L.T)"),
    ("relu(L).T - relu(-L)", "np.maximum(L.T, 0) - np.maximum(-L, 0)"),
    ("log(sum(w * exp(x)) / s)", "np.log(np.sum(w * np.exp(x)) / s)"),
    ("log(sum(w * exp(x)) * (size(n) - 5))", "np.log(np.sum(w * np.exp(x)) * (4 - 5))"),
    ("log(mean(w * exp(x)) / mean(w))", "np.log(np.mean(w * np.exp(x)) / np.mean(w))"),
    ("log(sum(exp(L) * L.T, axis=1))", "np.log(np.sum(np.exp(L) * L.T, axis=1))"),
    ("log(sum(exp(x)[:, None] * L, axis=1))", "np.log(np.sum(np.exp(x)[:, None] * L, axis=1))"),
])
def test_no_rewrite_where_a_selection_is_no_pick(expr, want):
    # moderate inputs of both signs, where numpy's direct evaluation is exact
    from scipy.special import softmax as sm  # noqa: F401 (used by the reference texts)
    r = np.random.default_rng(7)
    env = {"L": r.normal(size=(4, 4)), "x": r.normal(size=4), "w": r.normal(size=4),
           "s": -0.7, "np": np, "sm": sm, "logsumexp": logsumexp}
    with np.errstate(all="ignore"):
        expected = eval(want, env)
        c = einderiv.compile(expr, {"L": ("n", "n"), "x": ("n",), "w": ("n",), "s": ()})
        got = c(**{k: env[k] for k in c.inputs})
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("expr, ref, wrt", [
    ("sum(log(diag(softmax(L, axis=0))))",
     lambda jax, jnp, L: jnp.sum(jnp.diag(jax.nn.log_softmax(L, axis=0))), "L"),
    ("sum(log(R @ exp(eta)))", lambda jax, jnp, R, eta: jnp.sum(
        jax.scipy.special.logsumexp(jnp.broadcast_to(eta, (4, 4)), axis=1, b=R)), "eta"),
    ("log(mean(w * exp(x)))", lambda jax, jnp, w, x: jax.scipy.special.logsumexp(x, b=w)
     - jnp.log(4.0), "x"),
    ("sum(log(exp(p)[:, None] + exp(N)))",
     lambda jax, jnp, p, N: jnp.sum(jnp.logaddexp(p[:, None], N)), "p"),
    ("sum(log(softmax(x)[::-1]) * w)",
     lambda jax, jnp, x, w: jnp.sum(jax.nn.log_softmax(x)[::-1] * w), "x"),
])
def test_gradients_and_hessians_through_selections_at_1e3(expr, ref, wrt):
    jax, jnp = _jax()
    names = ref.__code__.co_varnames[2:ref.__code__.co_argcount]
    f = lambda *a: ref(jax, jnp, *a)
    args = [jnp.asarray(_E[k]) for k in names]
    shapes = {k: _ESH[k] for k in names}
    g = einderiv.grad(expr, wrt, shapes)
    np.testing.assert_allclose(g(**{k: _E[k] for k in g.inputs}),
                               np.asarray(jax.grad(f, argnums=names.index(wrt))(*args)),
                               rtol=1e-9, atol=1e-12)
    if wrt in ("L", "eta"):
        return
    H = einderiv.hessian(expr, wrt, shapes)
    np.testing.assert_allclose(H(**{k: _E[k] for k in H.inputs}),
                               np.asarray(jax.hessian(f, argnums=names.index(wrt))(*args)),
                               rtol=1e-9, atol=1e-12)


# Fault: a quotient of a *selected* softmax by another tensor is left as written, so it
# underflows to log(0) = -inf; log(softmax(x)[0] / y) (an integer pick, laid back) and
# log(sigmoid(x)[::2] / y[::2]) (an elementwise function, pushed through) reach their stable
# forms, and so does log(softmax(x) / y). rewrite.py's _seen_through lays other tensor
# arguments back only for `Unit` picks (_laid_back), and softmax is no elementwise function
# that selections.view could push the reversal, window or diagonal into.
_Q = {"x": np.array([1000.0, -1000.0, 3.0, 500.0]), "y": np.array([0.5, 2.0, 0.25, 1.5]),
      "L": np.array([[1000.0, -1000, 3, 2], [5, -800, 900, 1], [0, 0, 0, 0],
                     [-700, 600, 2, 1]])}


@pytest.mark.parametrize("expr, want", [
    ("log(softmax(x)[::-1] / y)", log_softmax(_Q["x"])[::-1] - np.log(_Q["y"])),
    ("log(softmax(x)[1:3] / y[1:3])", log_softmax(_Q["x"])[1:3] - np.log(_Q["y"][1:3])),
    ("log(softmax(x)[::2] / y[::2])", log_softmax(_Q["x"])[::2] - np.log(_Q["y"][::2])),
    ("log(diag(softmax(L, axis=1)) / y)", np.diag(log_softmax(_Q["L"], axis=1)) - np.log(_Q["y"])),
])
def test_fault_log_of_selected_softmax_over_a_tensor(expr, want):
    r = einderiv.compile(expr, {"x": ("n",), "y": ("n",), "L": ("n", "n")})
    with np.errstate(all="ignore"):
        got = r(**{k: _Q[k] for k in r.inputs})
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_log_of_selected_softmax_that_holds():
    # the forms beside the fault that do reach log_softmax / softplus
    for expr, want in [
        ("log(softmax(x)[0] / y)", log_softmax(_Q["x"])[0] - np.log(_Q["y"])),
        ("log(softmax(x) / y[::-1])", log_softmax(_Q["x"]) - np.log(_Q["y"][::-1])),
        ("log(sigmoid(x)[::2] / y[::2])", log_expit(_Q["x"])[::2] - np.log(_Q["y"][::2])),
    ]:
        r = einderiv.compile(expr, {"x": ("n",), "y": ("n",)})
        np.testing.assert_allclose(r(**{k: _Q[k] for k in r.inputs}), want, rtol=1e-12)


# Fault: a sum of a reversal, step, reshape or diagonal *of exp* is not seen as a sum of exp of
# the selected tensor, so log(sum(...)) overflows where logsumexp is exact; the same selections
# inside exp (log(sum(exp(x[::-1]))), log(sum(exp(diag(L))))) and a transpose outside
# (log(sum(exp(L).T, axis=0))) are rewritten. selections.view pushes selections only into products (build._is_product), never
# under a reduction, and pattern._reductions peels no Prim (flip, stride, reshape).
@pytest.mark.parametrize("expr, want", [
    ("log(sum(exp(x)[::-1]))", logsumexp(_e["x"])),
    ("log(sum(flip(exp(x))))", logsumexp(_e["x"])),
    ("log(sum(exp(L)[::-1], axis=0))", logsumexp(_e["L"], axis=0)),
    ("log(sum(reshape(exp(X), (k, n)), axis=1))", logsumexp(_e["X"].reshape(3, 4), axis=1)),
    ("log(sum(exp(x)[::-1] * w))", logsumexp(_e["x"][::-1], b=_e["w"])),
    ("log(sum(exp(x)[::2]))", logsumexp(_e["x"][::2])),
    ("log(tr(exp(L)))", logsumexp(np.diag(_e["L"]))),
    ("log(sum(diag(exp(L))))", logsumexp(np.diag(_e["L"]))),
    ("log(tr(exp(L) * R))", logsumexp(np.diag(_e["L"]), b=np.diag(_e["R"]))),
])
def test_fault_log_sum_of_selected_exp(expr, want):
    _stable(expr, want)


def test_log_sum_of_exp_of_selection_holds():
    _stable("log(sum(exp(x[::-1])))", logsumexp(_e["x"]))
    _stable("log(sum(exp(reshape(X, (k, n))), axis=1))", logsumexp(_e["X"].reshape(3, 4), axis=1))
    _stable("log(sum(exp(diag(L))))", logsumexp(np.diag(_e["L"])))


# Fault: the rewritten program keeps `log(sum(exp(x)))`, the left side of a rewrite, when the
# sum is broadcast in the same contraction (summed over i, broadcast over j): the formula says
# log(sum(exp(x))) * ones(k) and the value overflows. pattern._reductions sees a broadcast
# back only where the contraction's labels are a subset of its output's.
def test_fault_log_sum_exp_broadcast_in_one_contraction():
    r = einderiv.compile("log(sum(exp(x)[:, None] * ones(n, k), axis=0))",
                         {"x": ("n",), "X": ("n", "k")})
    assert "log(sum(exp(" not in r.formula
    with np.errstate(all="ignore"):
        got = r(x=_e["x"], X=_e["X"])
    np.testing.assert_allclose(got, np.full(3, logsumexp(_e["x"])), rtol=1e-12)


# Fault: the CLIP loss's probabilities written out, exp(diag(L)) / sum(exp(L), axis=1), are not
# diag(softmax(L)): inf / inf = nan at logits of 1e3, where the row's pick exp(L[:, 1]) /
# sum(exp(L), axis=1) is softmax(L)[:, 1] and the log of the same quotient is log_softmax's
# diagonal. rewrite.py's _laid_back (the other argument, the sum, a tensor) takes Unit picks
# only and refuses a repeated label, so `exp(x[k]) / sum(exp(x))` is softmax(x)[k] for a pick
# and not for a diagonal, which selections.py names a selection.
@pytest.mark.parametrize("axis", [0, 1])
def test_fault_softmax_diagonal_written_out(axis):
    from scipy.special import softmax
    _stable(f"exp(diag(L)) / sum(exp(L), axis={axis})", np.diag(softmax(_e["L"], axis=axis)))


# -- 5. positional binding ----------------------------------------------------------------------

_H2 = einderiv.hessian("x @ A @ x", "x", {"x": ("n",), "A": ("n", "n")})


def test_positional_forms_and_the_fast_path():
    A, x = rng.normal(size=(3, 3)), np.ones(3)
    want = A + A.T
    for _ in range(3):  # the guard's fast path after the first call of each form
        for call in (lambda: _H2(A), lambda: _H2(x, A), lambda: _H2(A=A), lambda: _H2(x, A=A)):
            np.testing.assert_array_equal(call(), want)
    with pytest.raises(ShapeError):
        _H2(A, x)  # two arrays: every declared variable in order, x first
    with pytest.raises(InputError):
        _H2(x, A, A)


def test_positional_threads_with_every_form():
    g = einderiv.grad("sum(tanh(W @ x))", ["W", "x"], {"W": ("m", "n"), "x": ("n",)})
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        for i in range(60):
            n, m = int(r.integers(1, 5)), int(r.integers(1, 4))
            W, x = r.normal(size=(m, n)), r.normal(size=n)
            got = [lambda: g(W, x), lambda: g(W=W, x=x), lambda: g(W, x=x),
                   lambda: g(x=x, W=W)][i % 4]()
            d = 1 - np.tanh(W @ x) ** 2
            if not (np.allclose(got[0], np.outer(d, x)) and np.allclose(got[1], W.T @ d)):
                errors.append((seed, i))
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_directions_bind_positionally_and_as_tuples():
    shapes = {"w": ("n",), "b": ("n",)}
    w, b = np.arange(3.0) + 1, np.ones(3)
    hv = einderiv.hvp("sum(w * w * b)", ["w", "b"], shapes)
    t = (np.ones(3), np.zeros(3))
    want = (2 * b * t[0] + 2 * w * t[1], 2 * w * t[0])
    for got in (hv(w=w, b=b, tangent=t), hv(w, b, tangent=t), hv(w, b, *t)):
        for g_, w_ in zip(got, want):
            np.testing.assert_allclose(g_, w_)
    with pytest.raises(InputError):
        hv(w, b, tangent=t[:1])
    vj = einderiv.vjp("w * b", ["w", "b"], shapes)
    for got in (vj(w, b, np.ones(3)), vj(w, b, cotangent=np.ones(3))):
        np.testing.assert_allclose(got[0], b)
        np.testing.assert_allclose(got[1], w)


def test_pickled_result_binds_both_orders():
    import pickle
    p = pickle.loads(pickle.dumps(_H2))
    A = rng.normal(size=(3, 3))
    np.testing.assert_array_equal(p(A), A + A.T)
    np.testing.assert_array_equal(p(np.ones(3), A), A + A.T)


# Fault: x is in .inputs (read for its length m, which only it has) and u is declared but
# unused. g(x, y=y) binds one array: to u by the declared order, which leaves x, an input of
# .inputs, out (a call without x is an InputError: "the result's shape depends on it"), or to
# x by the order of .inputs, which fits. README: "where that many could be meant in either
# order, the one that binds no keyword twice and leaves no input of `.inputs` out is taken".
# api._positional_names leaves dimension-only inputs out of `needed`, so both orders "fit" and
# the call is refused as ambiguous.
_G2 = einderiv.grad("sum(x[:p] * y)", "x", {"u": ("k",), "x": ("m",), "y": ("p",)})


def test_dimension_only_input_is_in_inputs_and_needed():
    x, y = np.arange(5.0), np.arange(3.0) + 1
    assert list(_G2.inputs) == ["x", "y"]
    np.testing.assert_array_equal(_G2(x, y), np.pad(y, (0, 2)))
    np.testing.assert_array_equal(_G2(np.ones(2), x, y), np.pad(y, (0, 2)))
    with pytest.raises(InputError, match="shape depends on it"):
        _G2(y=y)


def test_fault_positional_with_dimension_only_input():
    # (fixed: the order that leaves no input of .inputs out is taken, not refused as ambiguous)
    x, y = np.arange(5.0), np.arange(3.0) + 1
    np.testing.assert_array_equal(_G2(x, y=y), np.pad(y, (0, 2)))


# -- 6. rule files: right but unusual rules are taken -------------------------------------------

_RULES = """\
tensor mytrace(X) -> square_scalar = numpy.linalg:trace
d mytrace(X) / dX[k,l] = delta[k,m] * delta[m,l]
tensor myinv(X) -> square = xp.linalg.inv
d myinv(X)[i,j] / dX[k,l] = -myinv(X)[i,m] * delta[m,k] * myinv(X)[l,j]
tensor mylse(x; axis) -> reduce = scipy.special:logsumexp
d mylse(x) / dx[j] = exp(x[j] - mylse(x))
"""


def test_unusual_right_rules_load_and_differentiate(tmp_path):
    path = tmp_path / "mine.rules"
    path.write_text(_RULES)
    book = default_rulebook().copy().load(path, allow_imports=True)
    X = rng.normal(size=(2, 3, 3)) + 3 * np.eye(3)
    Z = rng.normal(size=(4, 3))
    with using_rules(book):
        g = einderiv.grad("sum(mytrace(myinv(X)))", "X", {"X": ("b", "n", "n")})
        Xi = np.linalg.inv(X)
        np.testing.assert_allclose(g(X=X), -np.swapaxes(Xi @ Xi, -1, -2), rtol=1e-10)
        g2 = einderiv.grad("sum(mylse(Z, axis=0) * mylse(Z, axis=0))", "Z", {"Z": ("n", "k")})
        l = logsumexp(Z, axis=0)
        np.testing.assert_allclose(g2(Z=Z), 2 * l * np.exp(Z - l), rtol=1e-10)


def test_rules_list_file_and_builtins_refused(tmp_path, capsys):
    from einderiv.cli import main
    path = tmp_path / "mine.rules"
    path.write_text(_RULES)
    assert main(["rules", "list", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mytrace" in out and "tanh" not in out
    bad = tmp_path / "bad.rules"
    bad.write_text("def sum(x) = x\n")
    assert main(["rules", "list", str(bad)]) == 2


# -- 7. rank limit, non-integer sizes, conv modes -----------------------------------------------

def test_rank_limit_everywhere():
    einderiv.var("x", (1,) * 32)
    for make in (lambda: einderiv.var("x", (1,) * 33),
                 lambda: einderiv.compile("x[None]", {"x": (1,) * 32}),
                 lambda: einderiv.compile("stack(x, x)", {"x": (1,) * 32}),
                 lambda: einderiv.jacobian("x * 1", "x", {"x": (1,) * 17}),
                 lambda: einderiv.hessian("sum(x * x)", "x", {"x": (1,) * 17})):
        with pytest.raises(ShapeError, match="32"):
            make()
    J = einderiv.jacobian("x * 1", "x", {"x": (1,) * 16})
    assert J(x=np.ones((1,) * 16)).shape == (1,) * 32


@pytest.mark.parametrize("make", [
    lambda: einderiv.compile("sum(x)", {"x": (3.0,)}),
    lambda: einderiv.compile("sum(x)", {"x": (np.float64(3),)}),
    lambda: einderiv.compile("eye(k) @ x", {"x": ("k",)}, sizes={"k": 3.0}),
    lambda: einderiv.compile("x: [2.5]; sum(x)", {}),
    lambda: einderiv.compile("ones(2.0) * x", {"x": (2,)}),
    lambda: einderiv.compile("reshape(x, (2.0, 3))", {"x": (6,)}),
    lambda: einderiv.var("x", (2.5,)),
])
def test_non_integer_sizes_refused(make):
    with pytest.raises((ShapeError, ParseError)):
        make()


def test_numpy_integer_sizes_taken():
    assert einderiv.var("x", (np.int64(3),)).shape == (3,)
    g = einderiv.grad("sum(x * x)", "x", {"x": (np.int32(3), "n")})
    np.testing.assert_array_equal(g(x=np.ones((3, 2))), 2 * np.ones((3, 2)))


@pytest.mark.parametrize("mode", ["valid", "same", "full"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_conv1d_modes_are_numpys_correlate(mode, k):
    x, w = rng.normal(size=7), rng.normal(size=k)
    for stride in (1, 2):
        c = einderiv.compile(f'conv1d(x, w, mode="{mode}", stride={stride})',
                             {"x": (1, 1, "n"), "w": (1, 1, k)})
        np.testing.assert_allclose(c(x=x.reshape(1, 1, 7), w=w.reshape(1, 1, k)).ravel(),
                                   np.correlate(x, w, mode)[::stride], rtol=1e-12)


def test_conv2d_same_mode_is_scipys_correlate():
    signal = pytest.importorskip("scipy.signal")
    X, W = rng.normal(size=(1, 1, 5, 6)), rng.normal(size=(1, 1, 2, 3))
    for mode in ("valid", "same", "full"):
        c = einderiv.compile(f'conv2d(X, W, mode="{mode}")', {"X": (1, 1, "h", "w"),
                                                             "W": (1, 1, 2, 3)})
        np.testing.assert_allclose(c(X=X, W=W)[0, 0], signal.correlate(X[0, 0], W[0, 0], mode),
                                   rtol=1e-12)


# -- 4b. more of the kinds fixed above: selections beside tensors, of exp under a sum, diagonals
# laid back, sums broadcast in one contraction --------------------------------------------------

_F = {"L": _S * rng.normal(size=(4, 4)), "x": _S * rng.normal(size=4),
      "X": _S * rng.normal(size=(4, 3)), "w": np.abs(rng.normal(size=4)),
      "y": np.abs(rng.normal(size=4)), "Y": np.abs(rng.normal(size=(4, 4)))}
_FSH = {"L": ("n", "n"), "x": ("n",), "X": ("n", "k"), "w": ("n",), "y": ("n",), "Y": ("n", "n")}


@pytest.mark.parametrize("expr, want", [
    ("log(y / softmax(x)[::-1])", np.log(_F["y"]) - log_softmax(_F["x"])[::-1]),
    ("log(softmax(x)[:, None] / Y)", log_softmax(_F["x"])[:, None] - np.log(_F["Y"])),
    ("log(softmax(L, axis=0)[::-1] / Y)", log_softmax(_F["L"], axis=0)[::-1] - np.log(_F["Y"])),
    ("2 * log(softmax(x)[::-1] / y) + 1", 2 * (log_softmax(_F["x"])[::-1] - np.log(_F["y"])) + 1),
    ("log(softmax(x)[::-1] / softmax(x))", log_softmax(_F["x"])[::-1] - log_softmax(_F["x"])),
    ("log(sum(exp(X)[::-1, ::2], axis=0))", logsumexp(_F["X"][::-1, ::2], axis=0)),
    ("log(sum(exp(L).T[::-1], axis=1))", logsumexp(_F["L"].T[::-1], axis=1)),
    ("log(sum(diag(exp(L))[::-1] * w))", logsumexp(np.diag(_F["L"])[::-1], b=_F["w"])),
    ("log(sum(exp(x)[1:]))", logsumexp(_F["x"][1:])),
    ("log(exp(diag(L)) / sum(exp(L), axis=0))", np.diag(log_softmax(_F["L"], axis=0))),
    ("log(sum(exp(X)[:, :, None] * ones(n, k, 2), axis=0))",
     np.broadcast_to(logsumexp(_F["X"], axis=0)[:, None], (3, 2))),
    ("log(sum(exp(x)[:, None] * ones(n, k), axis=0)) + 1", np.full(3, logsumexp(_F["x"]) + 1)),
])
def test_more_stable_forms_through_selections(expr, want):
    r = einderiv.compile(expr, _FSH)
    with np.errstate(all="ignore"):
        got = r(**{k: _F[k] for k in r.inputs})
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("expr, want", [
    # beside the new matches: no pick (a pad, a placed diagonal), another tensor, a product or
    # a select where a quotient is, a sum of another axis: values as numpy's
    ("log(pad(softmax(x), (1, 2))[1:n + 1] / y + 1)", "np.log(np.pad(sm(x), (1, 2))[1:5] / y + 1)"),
    ("log(pad(softmax(x), (1, 2))[2:n + 2] / y)", "np.log(np.pad(sm(x), (1, 2))[2:6] / y)"),
    ("exp(diag(L)) / sum(exp(R), axis=0)", "np.exp(np.diag(L)) / np.exp(R).sum(0)"),
    ("exp(diag(L)) / sum(exp(L), axis=0)[::-1]", "np.exp(np.diag(L)) / np.exp(L).sum(0)[::-1]"),
    ("log(softmax(x)[::-1] * y)", "np.log(sm(x)[::-1] * y)"),
    ("log(where(y > 0, softmax(x)[::-1], y))", "np.log(np.where(y > 0, sm(x)[::-1], y))"),
    ("log(softmax(x)[::-1] / y - 1)", "np.log(sm(x)[::-1] / y - 1)"),
    ("log(sum(exp(diag(x))[::-1], axis=0))", "np.log(np.sum(np.exp(np.diag(x))[::-1], axis=0))"),
    ("log(tr(exp(L) @ R))", "np.log(np.trace(np.exp(L) @ R))"),
    ("log(sum(exp(x)[:, None] * L, axis=0))", "np.log(np.sum(np.exp(x)[:, None] * L, axis=0))"),
    ("log(sum(exp(L)[::-1] * R, axis=1))", "np.log(np.sum(np.exp(L)[::-1] * R, axis=1))"),
])
def test_no_wrong_rewrite_beside_the_new_matches(expr, want):
    from scipy.special import softmax as sm  # noqa: F401 (used by the reference texts)
    r = np.random.default_rng(11)
    env = {"L": r.normal(size=(4, 4)), "R": r.normal(size=(4, 4)), "x": r.normal(size=4),
           "y": r.normal(size=4), "np": np, "sm": sm}
    with np.errstate(all="ignore"):
        expected = eval(want, env)
        c = einderiv.compile(expr, {"L": ("n", "n"), "R": ("n", "n"), "x": ("n",),
                                    "y": ("n",)})
        got = c(**{k: env[k] for k in c.inputs})
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_selections_beside_tensors_in_a_long_program():
    """A long program of the new forms: each step rewritten (its time is the benchmarks' to
    measure, benchmarks/scaling.py, not a timed test)."""
    from einderiv.api import lower_source
    from einderiv.simplify import Rewriter

    def program(steps):
        lines = ["h0 = x"]
        for t in range(steps):
            lines.append(f"h{t + 1} = log(softmax(h{t})[::-1] / y) + log(sum(exp(h{t})[::2])) "
                         f"+ exp(diag(L)) / sum(exp(L), axis=0) + log(tr(exp(L) * R))")
        return "; ".join([*lines, f"sum(h{steps})"])
    shapes = {"x": ("n",), "y": ("n",), "L": ("n", "n"), "R": ("n", "n")}
    steps = 240
    lowered = lower_source(program(steps), shapes, default_rulebook())
    (root,) = Rewriter(default_rulebook())([lowered.root])
    assert str(root).count("log_softmax") >= steps
