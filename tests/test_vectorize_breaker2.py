"""Breaker checks of today's code generation for unrolled recurrent programs: stacks read as
slices of bigger stacks (share.py, f06a286), backward sums over a fused stack's weights as one
product of the stacked adjoints (fuse._fused_sum, contraction._merged_pair, ca17ccf), a step's
gate pre-activations joined into one sum (fuse._joined_sums, 3c224f3), and numpy's fast sums,
means, transposes and broadcast outputs (kernels.py, python.py, f158304).

Each behaviour that holds is a test; a fault found is a test of the right value, marked
xfail(strict=True) until it is fixed. conftest.py also checks every result called here against
the IR interpreter and its printed formula parsed back. The two faults found are fixed: one
weight multiplied by one state twice in a step (`W @ h` beside `h @ W.T`) stacked it twice in
the group's rows and crashed the joined gate sum; an LSTM of hidden size 0 on dask failed in
dask's reshape of an empty array (kernels.reshape makes it anew).
"""
import itertools
import os
import re
import threading

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.check import finite_difference, relative_error
from einderiv.models import lstm_loss
from test_fuse import _lstm_arrays as fuse_lstm_arrays

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow interop check (a sample runs in CI): set EINDERIV_SLOW=1")

H, V = 3, 2
# The LSTM's gradients are taken by these (its recurrent weights: every fused path) and not by
# all 14 weights: conftest.py compiles each output's formula back, which costs per output.
LSTM_WRT = ["Wf", "Wi", "Wo", "Wc", "bc"]


def _agrees(loss, wrt, arrays, tol=1e-6):
    """The gradient of `loss` by `wrt` against central differences of the expression and the
    IR interpreter; the gradient result."""
    g = einderiv.grad(loss, wrt)
    f = einderiv.compile(loss, {}) if not isinstance(loss, str) else einderiv.compile(loss)
    got, ir = g(**arrays), g.evaluate_ir(**arrays)
    for name, value, reference in zip(wrt, got, ir):
        assert relative_error(value, reference) < 1e-12, name
        assert relative_error(value, finite_difference(f, arrays, name)) < tol, name
    return g


def _lstm_arrays(steps, hidden=H, vocab=V, seed=0):
    return fuse_lstm_arrays(steps, V=vocab, H=hidden, seed=seed)  # (test_fuse's inputs)


def _weights(names, shape=(H, H), seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=shape) / 2 for n in names}


# --- fused products and joined sums: values --------------------------------------------------

def test_steps_that_use_different_subsets_of_the_weights():
    # Even steps multiply the state by Wa, Wb and Wc, odd ones by Wa and Wb only: two stacks
    # with rows in common, backward sums over either (stack(2 * Wa, 0.5 * Wb) once, and a
    # slice of the three-weight stack for the two-weight one).
    Wa, Wb, Wc = (var(n, ("h", "h")) for n in ("Wa", "Wb", "Wc"))
    x = var("x", ("h",))
    h, loss = x, 0
    for t in range(6):
        if t % 2 == 0:
            h = fn.tanh(Wa @ h + x) * fn.sigmoid(Wb @ h) + fn.tanh(Wc @ h)
        else:
            h = fn.tanh(Wa @ h) * fn.sigmoid(Wb @ h + x)
        loss = loss + fn.sum(h ** 2)
    arrays = {"x": np.random.default_rng(1).normal(size=H), **_weights(["Wa", "Wb", "Wc"])}
    g = _agrees(loss, ["Wa", "Wb", "Wc", "x"], arrays)
    assert "reshape(stack(" in g.formula, g.formula


GATE_FORMS = {
    "coefficient": lambda p, W, h, x, b, k: 2 * p + b,
    "negated": lambda p, W, h, x, b, k: -p + x,
    "three terms": lambda p, W, h, x, b, k: p + b + x,
    "other's sum": lambda p, W, h, x, b, k: p + (k[-1] if k else x),
    "own product": lambda p, W, h, x, b, k: p + fn.tanh(p),
    "weight twice": lambda p, W, h, x, b, k: p + 0.5 * (W @ h) + b,
    "scaled rest": lambda p, W, h, x, b, k: p - 0.5 * (b * x),
}


@pytest.mark.parametrize("form", GATE_FORMS)
def test_gate_sums_of_every_form(form):
    # Three gates whose pre-activations are written the same unusual way at every step; the
    # sums each pass may join or fuse (or must leave alone) agree with finite differences.
    names = ["Wa", "Wb", "Wc"]
    Ws = [var(n, ("h", "h")) for n in names]
    x, b = var("x", ("h",)), var("b", ("h",))
    h, loss = x, 0
    for _ in range(4):
        pre = []
        for W in Ws:
            pre.append(GATE_FORMS[form](W @ h, W, h, x, b, pre))
        h = fn.sigmoid(pre[0]) * h + fn.sigmoid(pre[1]) * fn.tanh(pre[2])
        loss = loss + fn.sum(h ** 2)
    rng = np.random.default_rng(2)
    arrays = {"x": rng.normal(size=H), "b": rng.normal(size=H) / 2, **_weights(names)}
    inputs = einderiv.compile(loss, {}).inputs
    _agrees(loss, [n for n in [*names, "x", "b"] if n in inputs],
            {k: v for k, v in arrays.items() if k in inputs})


def test_one_gate_sum_read_by_two_functions_and_the_loss():
    # z_a feeds sigmoid and tanh and the loss itself; the joined sum's row is read three times.
    names = ["Wa", "Wb"]
    Wa, Wb = (var(n, ("h", "h")) for n in names)
    x, y = var("x", ("h",)), var("y", ("h",))
    h, loss = x, 0
    for _ in range(4):
        za, zb = Wa @ h + x, Wb @ h + y
        h = fn.sigmoid(za) * fn.tanh(za) + fn.sigmoid(zb)
        loss = loss + fn.sum(h ** 2) + 0.1 * fn.sum(za ** 2)
    rng = np.random.default_rng(3)
    arrays = {"x": rng.normal(size=H), "y": rng.normal(size=H), **_weights(names)}
    g = _agrees(loss, [*names, "x", "y"], arrays)
    assert re.search(r"@ \w+ \+ (stack\(|t\d+)", g.formula), g.formula  # joined


def test_batched_states_with_transposed_weights_and_a_sum_over_the_batch():
    # H @ W_g.T + X_t @ U_g.T + b_g on a batch [b, h], the loss a broadcast-shaped
    # sum(sum(H, axis=0) ** 2) at every step.
    names = ["Wa", "Wb", "Wc"]
    Ws = [var(n, ("h", "h")) for n in names]
    Us = [var("U" + n, ("h", "v")) for n in names]
    X, H0, b = var("X", ("T", "b", "v")), var("H0", ("b", "h")), var("bias", ("h",))
    h, c, loss = H0, H0, 0
    for t in range(4):
        z = [h @ W.T + (X[t] @ U.T + b) for W, U in zip(Ws, Us)]
        c = fn.sigmoid(z[0]) * c + fn.sigmoid(z[1]) * fn.tanh(z[2])
        h = fn.tanh(c)
        loss = loss + fn.sum(fn.sum(h, axis=0) ** 2)
    rng = np.random.default_rng(4)
    arrays = {"X": rng.normal(size=(4, 2, V)), "H0": rng.normal(size=(2, H)),
              "bias": rng.normal(size=H) / 2, **_weights(names),
              **_weights(["U" + n for n in names], shape=(H, V), seed=5)}
    _agrees(loss, [*names, *("U" + n for n in names), "bias", "H0"], arrays)


def test_rectangular_weight_groups_beside_square_ones():
    # Two stacks of weights of different shapes ([m, h] and [h, h]) multiplying one state.
    Wa, Wb = (var(n, ("m", "h")) for n in ("Wa", "Wb"))
    Wc, Wd = (var(n, ("h", "h")) for n in ("Wc", "Wd"))
    P, x, bm = var("P", ("h", "m")), var("x", ("h",)), var("bm", ("m",))
    h, loss = x, 0
    for _ in range(4):
        u = fn.sigmoid(Wa @ h + bm) * fn.tanh(Wb @ h - bm)
        h = fn.tanh(P @ u) * (fn.sigmoid(Wc @ h + x) + fn.sigmoid(Wd @ h + 2 * x))
        loss = loss + fn.sum(h ** 2)
    rng = np.random.default_rng(6)
    arrays = {**_weights(["Wa", "Wb"], shape=(2, H)), **_weights(["Wc", "Wd"], seed=1),
              "P": rng.normal(size=(H, 2)), "x": rng.normal(size=H), "bm": rng.normal(size=2)}
    g = _agrees(loss, list(arrays), arrays)
    assert g.formula.count("reshape(stack(") >= 2, g.formula


@slow
def test_five_gates_with_coefficients_against_jax(jax):
    jnp = jax.numpy
    steps, names, coef = 4, ["Wa", "Wb", "Wc", "Wd", "We"], [2.0, -1.0, 1.0, 0.5, 1.0]
    rng = np.random.default_rng(7)
    arrays = {**_weights(names), **_weights(["U" + n for n in names], shape=(H, V), seed=8),
              "b": rng.normal(size=H) / 2, "X": rng.normal(size=(steps, V)),
              "h0": rng.normal(size=H)}

    def lstm5(p, sigmoid, tanh, total):
        h = c = p["h0"]
        loss = 0
        for t in range(steps):
            z = [k * (p[n] @ h) + p["U" + n] @ p["X"][t] + p["b"] for k, n in zip(coef, names)]
            c = sigmoid(z[0]) * c + sigmoid(z[1]) * tanh(z[4]) + sigmoid(z[3]) * tanh(z[3])
            h = sigmoid(z[2]) * tanh(c)
            loss = loss + total(h ** 2)
        return loss

    loss = lstm5({k: var(k, ("h", "h") if k in names else ("h", "v") if k[0] == "U" else
                        ("T", "v") if k == "X" else ("h",)) for k in arrays},
                 fn.sigmoid, fn.tanh, fn.sum)
    g = einderiv.grad(loss, list(arrays))
    assert "reshape(stack(" in g.formula
    expected = jax.grad(lambda p: lstm5(p, jax.nn.sigmoid, jnp.tanh, jnp.sum))(
        {k: jnp.asarray(v) for k, v in arrays.items()})  # x64: the fixture's
    expected = {k: np.asarray(v) for k, v in expected.items()}
    for name, value in zip(arrays, g(**arrays)):
        assert relative_error(value, expected[name]) < 1e-12, name


def test_source_text_recurrences_with_unusual_other_terms():
    # Written as text: the other term of a joined sum is a constant, a product with another
    # weight, a reversal, a reduction times a vector.
    rng = np.random.default_rng(9)
    arrays = {**_weights(["Wa", "Wb"]), "x": rng.normal(size=H), "y": rng.normal(size=H)}
    for ra, rb in [("ones(h)", "y"), ("2 * x", "-y"), ("x * y", "x[::-1]"),
                   ("sum(x) * y", "y"), ("x", "Wa @ y")]:
        lines = ["Wa: [h, h]; Wb: [h, h]; x: [h]; y: [h]", "h0 = x"]
        for t in range(1, 5):
            lines.append(f"h{t} = tanh(Wa @ h{t - 1} + {ra}) * sigmoid(Wb @ h{t - 1} + {rb})")
        lines.append(" + ".join(f"sum(h{t} ** 2)" for t in range(1, 5)))
        _agrees("\n".join(lines), ["Wa", "Wb", "x", "y"], arrays)


def test_the_same_weight_written_two_ways_in_one_step():
    Wa, Wb = (var(n, ("h", "h")) for n in ("Wa", "Wb"))
    x, y = var("x", ("h",)), var("y", ("h",))
    h, loss = x, 0
    for _ in range(4):
        h = fn.tanh(Wa @ h + x) * fn.sigmoid(Wb @ h + y) + fn.tanh(h @ Wa.T)
        loss = loss + fn.sum(h ** 2)
    rng = np.random.default_rng(10)
    arrays = {"x": rng.normal(size=H), "y": rng.normal(size=H), **_weights(["Wa", "Wb"])}
    a, b, xv, yv = arrays["Wa"], arrays["Wb"], arrays["x"], arrays["y"]
    hv, expected = xv, 0.0
    for _ in range(4):
        hv = np.tanh(a @ hv + xv) / (1 + np.exp(-(b @ hv + yv))) + np.tanh(hv @ a.T)
        expected += np.sum(hv ** 2)
    assert einderiv.compile(loss, {})(**arrays) == pytest.approx(expected, rel=1e-12)
    text = ("Wa: [h, h]; Wb: [h, h]; x: [h]; y: [h]\nh0 = x\n" + "".join(
        f"h{t} = tanh(Wa @ h{t - 1} + x) * sigmoid(Wb @ h{t - 1} + y) + tanh(h{t - 1} @ Wa.T)\n"
        for t in range(1, 5)) + " + ".join(f"sum(h{t} ** 2)" for t in range(1, 5)))
    assert einderiv.compile(text)(**arrays) == pytest.approx(expected, rel=1e-12)
    _agrees(loss, ["Wa", "Wb", "x", "y"], arrays)


# --- derivatives other than the gradient -----------------------------------------------------

def test_hvp_jvp_vjp_of_an_lstm():
    steps = 4
    loss, weights = lstm_loss(steps)
    arrays = _lstm_arrays(steps)
    rng = np.random.default_rng(11)
    tangent = (rng.normal(size=(H, H)), rng.normal(size=(H, H)))
    g = einderiv.grad(loss, ["Wf", "Wc"])
    hv = einderiv.hvp(loss, ["Wf", "Wc"])(**arrays, tangent=tangent)
    eps = 1e-5
    plus = dict(arrays, Wf=arrays["Wf"] + eps * tangent[0], Wc=arrays["Wc"] + eps * tangent[1])
    minus = dict(arrays, Wf=arrays["Wf"] - eps * tangent[0], Wc=arrays["Wc"] - eps * tangent[1])
    for value, p, m in zip(hv, g(**plus), g(**minus)):
        assert relative_error(value, (p - m) / (2 * eps)) < 1e-7
    _, along = einderiv.jvp(loss, ["Wf", "Wc"])(**arrays, tangent=tangent)
    gf, gc = g(**arrays)
    assert along == pytest.approx(np.sum(gf * tangent[0]) + np.sum(gc * tangent[1]), rel=1e-12)


def test_vjp_of_a_vector_valued_lstm_state():
    params = {g: (var("W" + g, ("h", "h")), var("U" + g, ("h", "v")), var("b" + g, ("h",)))
              for g in "fioc"}
    X, h0 = var("X", ("T", "v")), var("h0", ("h",))
    h = c = h0
    for t in range(4):
        z = {g: W @ h + (U @ X[t] + b) for g, (W, U, b) in params.items()}
        c = fn.sigmoid(z["f"]) * c + fn.sigmoid(z["i"]) * fn.tanh(z["c"])
        h = fn.sigmoid(z["o"]) * fn.tanh(c)
    rng = np.random.default_rng(12)
    arrays = {k: v for k, v in _lstm_arrays(4).items() if k[0] in "WUb" and k[1] in "fioc"}
    arrays.update(X=rng.normal(size=(4, V)), h0=rng.normal(size=H))
    wrt = ["Wf", "Wi", "Wo", "Wc", "h0"]
    vjp = einderiv.vjp(h, wrt)
    assert "reshape(stack(" in vjp.formula
    cotangent = rng.normal(size=H)
    f = einderiv.compile(h, {})
    for name, value in zip(wrt, vjp(**arrays, cotangent=cotangent)):
        expected = np.tensordot(cotangent, finite_difference(f, arrays, name), 1)
        assert relative_error(value, expected) < 1e-6, name


# --- slices of stacks in outputs -------------------------------------------------------------

@pytest.mark.parametrize("order", [["Z", "X", "W", "U"], ["X", "Z", "W", "U"]])
def test_outputs_that_are_rows_of_one_stack_are_owned_apart(order):
    # X[t] and Z[t - 1] share U and the step's adjoint: dZ's rows are a run of dX's.
    T = 5
    W, U = var("W", ("h", "h")), var("U", ("h", "v"))
    X, Z = var("X", ("T", "v")), var("Z", ("S", "v"))
    h, loss = None, 0
    for t in range(T):
        z = U @ X[t] + (U @ Z[t - 1] if t else 0)
        h = fn.tanh(z if h is None else W @ h + z)
        loss = loss + fn.sum(h ** 2)
    rng = np.random.default_rng(13)
    arrays = {"W": rng.normal(size=(H, H)) / 2, "U": rng.normal(size=(H, V)) / 2,
              "X": rng.normal(size=(T, V)), "Z": rng.normal(size=(T - 1, V))}
    g = _agrees(loss, order, arrays)
    results = g(**arrays)
    assert not any(np.shares_memory(a, b) for a, b in itertools.combinations(results, 2))
    expected = [r.copy() for r in results]
    for r in results:
        r *= 7
    for r, e in zip(g(**arrays), expected):
        np.testing.assert_array_equal(r, e)


# --- f158304: numpy's sums, means, transposes and broadcast outputs ---------------------------

BROADCASTS = [("sum(sum(X, axis=0) ** 2)", {"X": ("n", "m")}),
              ("2 * sum(X)", {"X": ("n", "m")}),
              ("mean(X)", {"X": ("n", "m")}),
              ("sum(mean(X, axis=1) ** 2)", {"X": ("n", "m")}),
              ("sum(X) * c", {"X": ("n", "m"), "c": ()}),
              ("sum(X.mT @ X)", {"X": ("b", "n", "m")})]


@pytest.mark.parametrize("text, shapes", BROADCASTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_broadcast_gradients_are_new_arrays_of_the_right_dtype(text, shapes, dtype):
    g = einderiv.grad(text, "X", shapes)
    rng = np.random.default_rng(14)
    for sizes in ({"n": 3, "m": 2, "b": 2}, {"n": 0, "m": 2, "b": 2}, {"n": 1, "m": 1, "b": 1}):
        arrays = {k: (rng.normal(size=tuple(sizes[d] for d in s)) * 3).astype(dtype)
                  for k, s in shapes.items()}
        first, again = g(**arrays), g(**arrays)
        with np.errstate(all="ignore"):
            expected = np.asarray(g.evaluate_ir(**arrays))
        assert first.dtype == (np.float32 if dtype == np.float32 else np.float64)
        assert first.shape == expected.shape and first.flags.writeable
        assert not np.shares_memory(first, again)
        assert not any(np.shares_memory(first, a) for a in arrays.values())
        np.testing.assert_allclose(first, expected, rtol=1e-5)
        first[...] = 0
        np.testing.assert_allclose(g(**arrays), expected, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=slow),
                                     pytest.param("dask", marks=slow)])
def test_broadcast_gradients_on_other_backends(backend):
    pytest.importorskip({"torch": "torch", "jax": "jax", "dask": "dask.array"}[backend])
    rng = np.random.default_rng(15)
    for text, shapes in BROADCASTS:
        arrays = {k: rng.normal(size=tuple({"n": 3, "m": 2, "b": 2}[d] for d in s))
                  for k, s in shapes.items()}
        expected = einderiv.grad(text, "X", shapes)(**arrays)
        got = einderiv.grad(text, "X", shapes, backend=backend)(**arrays)
        got = got.compute() if backend == "dask" else got
        got = got.numpy() if backend == "torch" else np.asarray(got)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


# --- the LSTM's fused gradient: dtypes, backends, threads, bad input --------------------------

def test_lstm_gradient_in_float32_and_with_integer_inputs():
    steps = 4
    loss, _ = lstm_loss(steps)
    g = einderiv.grad(loss, LSTM_WRT)
    arrays = _lstm_arrays(steps)
    expected = g(**arrays)
    single = g(**{k: v.astype(np.float32) for k, v in arrays.items()})
    assert {r.dtype for r in single} == {np.dtype(np.float32)}
    assert max(relative_error(a, b) for a, b in zip(single, expected)) < 1e-5
    onehot = g(**dict(arrays, X=arrays["X"].astype(np.int64), Y=arrays["Y"].astype(np.int8)))
    assert {r.dtype for r in onehot} == {np.dtype(np.float64)}
    assert max(relative_error(a, b) for a, b in zip(onehot, expected)) < 1e-15


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=slow),
                                     pytest.param("dask", marks=slow)])
def test_lstm_gradient_on_other_backends(backend):
    pytest.importorskip({"torch": "torch", "jax": "jax", "dask": "dask.array"}[backend])
    steps = 4
    loss, _ = lstm_loss(steps)
    weights = LSTM_WRT
    arrays = _lstm_arrays(steps)
    expected = einderiv.grad(loss, weights).evaluate_ir(**arrays)
    got = einderiv.grad(loss, weights, backend=backend)(**arrays)
    if backend == "dask":
        import dask
        got = dask.compute(*got)
    for name, a, b in zip(weights, got, expected):
        a = a.numpy() if backend == "torch" else np.asarray(a)
        assert relative_error(a, b) < (1e-5 if a.dtype == np.float32 else 1e-12), name


def test_lstm_with_no_hidden_units_on_dask():
    da = pytest.importorskip("dask.array")
    import dask
    steps = 4
    loss, _ = lstm_loss(steps)
    weights = LSTM_WRT
    arrays = _lstm_arrays(steps, hidden=0)
    expected = einderiv.grad(loss, weights).evaluate_ir(**arrays)
    g = einderiv.grad(loss, weights, backend="dask")
    got = dask.compute(*g(**{k: da.from_array(v, chunks=2) for k, v in arrays.items()}))
    for name, a, b in zip(weights, got, expected):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)


def test_lstm_gradient_from_threads_with_results_mutated():
    steps = 4
    loss, _ = lstm_loss(steps)
    g = einderiv.grad(loss, LSTM_WRT)
    inputs = [_lstm_arrays(steps, seed=s) for s in range(4)]
    expected = [g.evaluate_ir(**a) for a in inputs]
    wrong = []

    def work(k):
        for _ in range(10):
            results = g(**inputs[k])
            if max(relative_error(a, b) for a, b in zip(results, expected[k])) > 1e-12:
                wrong.append(k)
            for r in results:
                r *= 7  # the caller's own arrays

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    results = g(**inputs[0])
    assert all(r.flags.writeable for r in results)
    assert not any(np.shares_memory(a, b) for a, b in itertools.combinations(results, 2))
    assert not any(np.shares_memory(r, a) for r in results for a in inputs[0].values())


@pytest.mark.no_roundtrip
def test_bad_input_to_a_fused_lstm_gradient_is_an_einderiv_error():
    steps = 4
    loss, _ = lstm_loss(steps)
    g = einderiv.grad(loss, LSTM_WRT)
    arrays = _lstm_arrays(steps)
    for bad in (dict(arrays, Wf=np.ones((H, H - 1))), dict(arrays, Wf=np.ones((H + 1, H + 1))),
                dict(arrays, Wi=arrays["Wi"] + 0j), dict(arrays, Wc=np.ones((H, H, 1))),
                dict(arrays, X=arrays["X"][:2], Y=arrays["Y"][:2])):
        with pytest.raises(einderiv.EinderivError):
            g(**bad)
