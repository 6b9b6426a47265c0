"""Breaker checks of 0e1580a (vectorize/program.py: sums over steps of outer products
`sum_t c * outer(a_t, b_t)` stacked in step order, b_t that are rows of one array sorted by row
and read as a slice `X[a:b]` when consecutive, a bias's sum over a weight's stack re-sorted to
match) and c626f7a (fuse._row stacks each weight once; kernels.reshape).

Each behaviour that holds is a test; a fault found is a test of the right value or of the
documented behaviour, marked xfail(strict=True) until it is fixed. conftest.py also checks every
result called here against the IR interpreter and its printed formula parsed back.
"""
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.check import finite_difference, relative_error
from einderiv.errors import ShapeError
from einderiv.models import lstm_loss, rnn_loss

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow interop check (a sample runs in CI): set EINDERIV_SLOW=1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import problems  # noqa: E402

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

RNG = np.random.default_rng(7)
ARRAYS = {"W": RNG.normal(size=(3, 4)), "X": RNG.normal(size=(6, 4)),
          "Y": RNG.normal(size=(6, 4)), "Z": RNG.normal(size=(4, 6)),
          "P": RNG.normal(size=(6, 4, 2)), "u": RNG.normal(size=3), "v": RNG.normal(size=4)}
SHAPES = {k: a.shape for k, a in ARRAYS.items()}


def _squares(rows: list[str]) -> str:
    return " + ".join(f"sum((W @ {r}) ** 2)" for r in rows)


def _squares_grad(vectors: list) -> np.ndarray:
    """d/dW of sum_t |W b_t|^2: 2 sum_t outer(W b_t, b_t)."""
    W = ARRAYS["W"]
    return sum(2 * np.outer(W @ b, b) for b in vectors)


def _stacks(source: str) -> list[list[str]]:
    return [[r.strip() for r in rows.split(",")]
            for rows in re.findall(r"_kernels\.stack\(\[([^\]]*)\]", source)]


# --- rows of one array as b_t: any order, repeats, gaps, negative indices --------------------

@pytest.mark.parametrize("rows", [[0, 2, 1], [1, 1], [0, 2, 3], [4, 3, 2, 1, 0], [-1, -2],
                                  [0, -1], [-6, -5, -4], [3, 1, 4, 1], [0, 2, 4], [5]])
def test_rows_of_one_array_in_any_order(rows):
    g = einderiv.grad(_squares([f"X[{k}]" for k in rows]), "W", SHAPES)
    want = _squares_grad([ARRAYS["X"][k] for k in rows])
    np.testing.assert_allclose(g(**ARRAYS), want, rtol=1e-12, atol=1e-12)


def test_consecutive_rows_in_any_written_order_are_one_slice():
    # the brief's example: X[0], X[2], X[1] are the rows 0..2, read as X[:3]
    g = einderiv.grad(_squares(["X[0]", "X[2]", "X[1]"]), "W", SHAPES)
    assert "X[:3]" in g.source and "stack" not in g.source, g.source


@pytest.mark.parametrize("rows, want", [
    (["Z[:, 0]", "Z[:, 2]", "Z[:, 1]"], lambda A: A["Z"].T[:3]),
    (["Z.T[1]", "Z.T[0]", "Z.T[2]"], lambda A: A["Z"].T[:3]),
    (["X[1:][2]", "X[1:][0]", "X[1:][1]"], lambda A: A["X"][1:4]),
    (["X[::-1][0]", "X[::-1][1]"], lambda A: A["X"][::-1][:2]),
    (["X[::2][1]", "X[::2][0]", "X[::2][2]"], lambda A: A["X"][::2][:3]),
    (["P[2, :, 1]", "P[0, :, 1]", "P[1, :, 1]"], lambda A: A["P"][:3, :, 1]),
    (["P[1][:, 0]", "P[0][:, 0]"], lambda A: A["P"][:2, :, 0]),
    (["tanh(X)[2]", "tanh(X)[0]", "tanh(X)[1]"], lambda A: np.tanh(A["X"][:3])),
    (["X[0]", "Y[1]", "X[1]", "Y[0]", "X[3]"],
     lambda A: np.stack([A["X"][0], A["Y"][1], A["X"][1], A["Y"][0], A["X"][3]])),
])
def test_rows_of_transposed_sliced_3d_computed_and_mixed_arrays(rows, want):
    g = einderiv.grad(_squares(rows), "W", SHAPES)
    np.testing.assert_allclose(g(**ARRAYS), _squares_grad(list(want(ARRAYS))), rtol=1e-12,
                               atol=1e-12)


def test_different_coefficients_per_term():
    src = " + ".join(f"{c} * sum((W @ X[{k}]) ** 2)" for c, k in [(1, 2), (2, 0), (3, 1), (-4, 4)])
    g = einderiv.grad(src, "W", SHAPES)
    want = sum(c * _squares_grad([ARRAYS["X"][k]]) for c, k in [(1, 2), (2, 0), (3, 1), (-4, 4)])
    np.testing.assert_allclose(g(**ARRAYS), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pairs, coefs", [
    ([(0, 1), (1, 2), (2, 3)], [1, 1, 1]),
    ([(1, 0), (3, 2), (2, 1)], [1, 1, 1]),
    ([(0, 2), (2, 0), (1, 2)], [1, 2, 3]),
    ([(5, 5), (0, 0), (5, 5)], [1, -1, 2]),
])
def test_a_t_that_are_rows_too(pairs, coefs):
    # d/dV of sum_t c_t X[i] @ V @ X[j] is sum_t c_t outer(X[i], X[j])
    src = " + ".join(f"{c} * (X[{i}] @ V @ X[{j}])" for c, (i, j) in zip(coefs, pairs))
    shapes = {"X": SHAPES["X"], "V": (4, 4)}
    X = ARRAYS["X"]
    g = einderiv.grad(src, "V", shapes)
    want = sum(c * np.outer(X[i], X[j]) for c, (i, j) in zip(coefs, pairs))
    np.testing.assert_allclose(g(X=X, V=np.eye(4)), want, rtol=1e-12, atol=1e-12)


def test_a_window_past_the_rows_given_is_an_error_not_a_shorter_sum():
    # X[:3] of a 2-row X would be 2 rows: the guard says index 2 is out of bounds
    shapes = {"W": (3, 4), "X": ("n", 4)}
    g = einderiv.grad(_squares(["X[0]", "X[2]", "X[1]"]), "W", shapes)
    assert "X[:3]" in g.source
    with pytest.raises(ShapeError, match="out of bounds"):
        g(W=ARRAYS["W"], X=ARRAYS["X"][:2])


# --- weight and bias gradients sharing b_t; bias sums re-sorted ------------------------------

WEIGHT_BIAS = [("tanh", [2, 0, 1, 4]), ("tanh", [4, 3, 2, 1, 0]), ("tanh", [1, 3, 1]),
               ("sigmoid", [5, 0, 3])]


def _weight_bias_grad(f, rows, c=1.0):
    W, X, u = ARRAYS["W"], ARRAYS["X"], ARRAYS["u"]
    dW, du = 0, 0
    for k in rows:
        z = W @ X[k] + u
        d = c * (1 / np.cosh(z) ** 2 if f == "tanh" else np.exp(-z) / (1 + np.exp(-z)) ** 2)
        dW, du = dW + np.outer(d, X[k]), du + d
    return dW, du


@pytest.mark.parametrize("f, rows", WEIGHT_BIAS)
def test_weight_and_bias_gradients_over_rows_in_any_order(f, rows):
    src = " + ".join(f"3 * sum({f}(W @ X[{k}] + u))" for k in rows)
    g = einderiv.grad(src, ["W", "u"], SHAPES)
    for got, want in zip(g(**ARRAYS), _weight_bias_grad(f, rows, 3.0)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_two_weights_on_the_same_rows_and_a_bias_sum_matching_the_rows():
    # dv = X[2] + X[0] + X[1]: the multiset of the weight's b_t, a sum of rows (not a stack)
    src = "sum((W @ X[2]) ** 2) + v @ X[2] + sum((W @ X[0]) ** 2) + v @ X[0] + " \
          "sum((W @ X[4]) ** 2) + v @ X[4] + sum((W @ Y[2]) * (W @ X[2]))"
    g = einderiv.grad(src, ["W", "v"], SHAPES)
    W, X, Y = ARRAYS["W"], ARRAYS["X"], ARRAYS["Y"]
    dW = _squares_grad([X[0], X[2], X[4]]) + np.outer(W @ X[2], Y[2]) + np.outer(W @ Y[2], X[2])
    dW_got, dv_got = g(**ARRAYS)
    np.testing.assert_allclose(dW_got, dW, rtol=1e-12)
    np.testing.assert_allclose(dv_got, X[0] + X[2] + X[4], rtol=1e-12)


def test_a_bias_sum_reads_its_weights_stack_for_rows_given_out_of_order():
    # Was a strict xfail: the steps' sech2 stayed one call per step, and the bias's sum and
    # the weight's stack stacked their results in two orders (stack(t0, t1, t2, t3) and
    # stack(t3, t2, t1, t0)). Rows picked one by one are now a stack of those rows, ready
    # from the start (lanes.py), so the steps batch into one sech2 that both sums read.
    src = " + ".join(f"sum(tanh(W @ X[{k}] + u))" for k in [2, 0, 1, 4])
    g = einderiv.grad(src, ["W", "u"], SHAPES)
    for got, want in zip(g(**ARRAYS), _weight_bias_grad("tanh", [2, 0, 1, 4])):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    stacks = _stacks(g.source)
    repeats = [(a, b) for i, a in enumerate(stacks) for b in stacks[i + 1:]
               if sorted(a) == sorted(b)]
    assert repeats == [], g.source


# --- unrolled recurrent programs reading rows in odd orders ----------------------------------

H, V, T = 3, 4, 6
_W, _U, _b = var("W", ("H", "H")), var("U", ("H", "V")), var("b", ("H",))
_X, _Y = var("X", ("T", "V")), var("Y", ("T", "V"))
_Z = var("Z", ("V", "T"))


def _rnn(rows):
    h, loss = None, 0
    for row in rows:
        z = _U @ row + _b
        h = fn.tanh(z if h is None else _W @ h + z)
        loss = loss + fn.sum(h ** 2)
    return loss


def _rnn_arrays(seed=3):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(H, H)) / 2, "U": rng.normal(size=(H, V)) / 2,
            "b": rng.normal(size=H) / 2, "X": rng.normal(size=(T, V)),
            "Y": rng.normal(size=(T, V)), "Z": rng.normal(size=(V, T))}


def _agrees(loss, wrt, arrays, tol=1e-6):
    f = einderiv.compile(loss, {})
    arrays = {k: a for k, a in arrays.items() if k in f.inputs}
    g = einderiv.grad(loss, wrt)
    for name, value in zip(wrt, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < tol, name
    return g


RNN_ROWS = {
    "reversed": lambda: [_X[t] for t in range(T - 1, -1, -1)],
    "permuted": lambda: [_X[t] for t in [3, 1, 4, 0, 5, 2]],
    "gaps": lambda: [_X[t] for t in [0, 2, 3, 5]],
    "repeats": lambda: [_X[t] for t in [1, 1, 2]],
    "negative": lambda: [_X[t] for t in [0, -1, 1, -2]],
    "axis 1": lambda: [_Z[:, t] for t in range(4)],
    "slice": lambda: [_X[1:][t] for t in range(4)],
    "mixed bases": lambda: [_X[t] if t % 2 else _Y[t] for t in range(4)],
}


@pytest.mark.parametrize("rows", list(RNN_ROWS))
def test_an_rnn_reading_rows_in_odd_orders(rows):
    _agrees(_rnn(RNN_ROWS[rows]()), ["W", "U", "b"], _rnn_arrays())


def test_a_bidirectional_rnn_sharing_its_input_weight():
    # U meets every row twice (X[t] forward, X[T-1-t] backward)
    h = g = None
    loss = 0
    for t in range(T):
        zf, zb = _U @ _X[t] + _b, _U @ _X[T - 1 - t] + _b
        h = fn.tanh(zf if h is None else _W @ h + zf)
        g = fn.tanh(zb if g is None else _W @ g + zb)
        loss = loss + fn.sum(h * g)
    _agrees(loss, ["W", "U", "b"], _rnn_arrays())


def test_hvp_and_hessian_of_an_rnn_reading_permuted_rows():
    loss = _rnn([_X[t] for t in [3, 1, 4, 0]])
    arrays = {k: a for k, a in _rnn_arrays().items() if k in "WUbX"}
    g = einderiv.grad(loss, ["W", "U", "b"])
    rng = np.random.default_rng(5)
    tangent = tuple(rng.normal(size=arrays[k].shape) for k in "WUb")
    eps = 1e-5
    plus = g(**{**arrays, **{k: arrays[k] + eps * d for k, d in zip("WUb", tangent)}})
    minus = g(**{**arrays, **{k: arrays[k] - eps * d for k, d in zip("WUb", tangent)}})
    got = einderiv.hvp(loss, ["W", "U", "b"])(**arrays, tangent=tangent)
    for value, p, m in zip(got, plus, minus):
        assert relative_error(value, (p - m) / (2 * eps)) < 1e-6
    hess = einderiv.hessian(loss, "U")(**arrays)
    basis = np.eye(H * V).reshape(H * V, H, V)
    columns = [einderiv.hvp(loss, "U")(**arrays, tangent=e) for e in basis[:3]]
    for k, column in enumerate(columns):
        np.testing.assert_allclose(hess.reshape(H, V, H * V)[..., k], column, rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", pytest.param("dask", marks=slow)])
def test_backends_agree_on_an_rnn_reading_permuted_rows(backend):
    pytest.importorskip(backend)
    loss = _rnn([_X[t] for t in [2, 0, 1, 4]])
    arrays = {k: a for k, a in _rnn_arrays().items() if k in "WUbX"}
    want = einderiv.grad(loss, ["W", "U", "b"])(**arrays)
    if backend == "torch":
        import torch
        given = {k: torch.tensor(a) for k, a in arrays.items()}
    else:
        import dask.array as da
        given = {k: da.from_array(a, chunks=2) for k, a in arrays.items()}
    got = einderiv.grad(loss, ["W", "U", "b"], backend=backend)(**given)
    for value, reference in zip(got, want):
        value = value.numpy() if backend == "torch" else value.compute()
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model, steps", [(rnn_loss, 1), (rnn_loss, 2), (rnn_loss, 3),
                                          (lstm_loss, 1), (lstm_loss, 2), (lstm_loss, 3)])
def test_models_of_few_steps_with_more_input_rows_than_steps(model, steps):
    loss, weights = model(steps)
    f = einderiv.compile(loss, {})
    weights = [w for w in weights if w in f.inputs][:6]  # (a 1-step model has no W)
    rng = np.random.default_rng(steps)
    sizes = {"H": 2, "V": 3, "T": steps + 2}
    arrays = {n: rng.normal(size=tuple(sizes.get(str(d), d) for d in s)) / 2
              for n, s in f.inputs.items()}
    _agrees(loss, weights, arrays)


def test_a_long_rnn_against_the_hand_written_gradient():
    inst = problems.rnn(4, 3, 60)
    expr, shapes = inst.einderiv()
    g = einderiv.grad(expr, inst.wrt, shapes)
    for got, want in zip(g(**inst.params, **inst.data), inst.hand(inst.params, inst.data)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# --- c626f7a: one weight twice in a fused group; kernels.reshape -----------------------------

@pytest.mark.parametrize("step", [
    lambda Wa, Wb, h: fn.tanh(Wa @ h) * fn.sigmoid(h @ Wa.T) + fn.tanh(Wb @ h),
    lambda Wa, Wb, h: fn.tanh(Wa @ h) * fn.sigmoid(Wa.T @ h) + fn.tanh(Wb @ h),
    lambda Wa, Wb, h: fn.tanh(Wa @ h) * fn.sigmoid(2 * (h @ Wa.T)) + fn.tanh(Wb @ h),
    lambda Wa, Wb, h: fn.tanh(Wa @ h + h @ Wa.T + Wb @ h),
    lambda Wa, Wb, h: fn.tanh(Wb @ h) * fn.sigmoid(h @ Wb.T) + fn.tanh(Wa @ (Wa @ h)),
], ids=["W@h,h@W.T", "W@h,W.T@h", "scaled", "one sum", "other name, W@W@h"])
def test_one_weight_twice_in_a_step(step):
    Wa, Wb = var("Wa", ("h", "h")), var("Wb", ("h", "h"))
    x = var("x", ("h",))
    h, loss = x, 0
    for _ in range(4):
        h = step(Wa, Wb, h)
        loss = loss + fn.sum(h ** 2)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=3), "Wa": rng.normal(size=(3, 3)) / 2,
              "Wb": rng.normal(size=(3, 3)) / 2}
    _agrees(loss, ["Wa", "Wb", "x"], arrays)


def test_a_reshaped_input_is_the_callers_own_array():
    f = einderiv.compile("reshape(X, (3, n))", {"X": ("n", 3)})
    X = np.arange(6.0).reshape(2, 3)
    out = f(X=X)
    assert not np.shares_memory(out, X)
    np.testing.assert_array_equal(out, X.reshape(3, 2))


# (meta tensors hold no values for conftest.py to compare: only the device is checked here)
@pytest.mark.no_roundtrip
def test_an_empty_reshape_stays_on_the_inputs_device():
    # kernels.reshape makes an empty result anew: with the namespace of the call's device
    torch = pytest.importorskip("torch")
    g = einderiv.compile("reshape(X, (3, n)) * Y + 1", {"X": ("n", 3), "Y": (3, "n")},
                         backend="torch")
    empty = g(X=torch.empty((0, 3), device="meta", dtype=torch.float64),
              Y=torch.empty((3, 0), device="meta", dtype=torch.float64))
    assert empty.device.type == "meta" and tuple(empty.shape) == (3, 0)
