"""Breaker checks of vectorize/subproducts.py (a product reads an elementwise product the program
computes anyway), lanes' `_sums` and program.py's `_stacked_factors` / `_batched` (a sum of the
rows of a sum-of-outer-products stack as `sum(stack, axis=0)`). Values are compared with numpy
written independently; conftest compares every result with the IR interpreter and the
parsed-back formula."""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.models import lstm_loss, lstm_stacked_loss, rnn_loss

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

RNG = np.random.default_rng(5)

# -- a sum of vectors whose terms are the rows of a stack in which one row repeats ---------

_STACK_SHAPES = {"W": ("n", "m"), "c": ("n",), "v": ("n",), "u": ("n",), "w": ("n",),
                 "h1": ("m",), "h2": ("m",), "h3": ("m",), "h4": ("m",)}


def _stack_arrays(seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"n": 3, "m": 4}
    return {k: rng.normal(size=tuple(sizes[d] for d in s)) for k, s in _STACK_SHAPES.items()}


# dc = v + u + w (c is a bias on three steps); dW = outer(v, h1) + outer(u, h2) + outer(w, h3)
# + outer(R, h4), where the fourth step's row R is one of the first three: the stack of dW's
# left factors is [R, w, u, v], whose *set* is {v, u, w} = dc's terms: dc was written as
# sum(stack([R, w, u, v]), axis=0) = v + u + w + R (R counted twice) while stacks were matched
# as sets; they are matched as multisets now.
@pytest.mark.parametrize("repeated", ["v", "u"])
@pytest.mark.parametrize("wrt", [["W", "c"], ["c", "W"]])
def test_a_bias_gradient_beside_a_stack_with_a_repeated_row(repeated, wrt):
    src = ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3 + c)) + "
           f"sum({repeated} * (W @ h4))")
    g = einderiv.grad(src, wrt, _STACK_SHAPES)
    a = _stack_arrays()
    got = dict(zip(wrt, g(**a)))
    want_W = (np.outer(a["v"], a["h1"]) + np.outer(a["u"], a["h2"]) + np.outer(a["w"], a["h3"])
              + np.outer(a[repeated], a["h4"]))
    np.testing.assert_allclose(got["W"], want_W, rtol=1e-12)
    # the silent fault: dc came out as v + u + w + {repeated}
    np.testing.assert_allclose(got["c"], a["v"] + a["u"] + a["w"], rtol=1e-12)


def test_a_bias_gradient_whose_own_row_repeats_in_the_stack():
    # steps 2-4 carry the bias c with rows u, w, v; step 1 (no bias) repeats row v
    src = ("sum(v * (W @ h1)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3 + c)) + "
           "sum(v * (W @ h4 + c))")
    a = _stack_arrays(2)
    (dc_alone,) = einderiv.grad(src, ["c"], _STACK_SHAPES)(**a)
    np.testing.assert_allclose(dc_alone, a["v"] + a["u"] + a["w"], rtol=1e-12)  # holds
    _, dc = einderiv.grad(src, ["W", "c"], _STACK_SHAPES)(**a)
    np.testing.assert_allclose(dc, a["v"] + a["u"] + a["w"], rtol=1e-12)


def test_a_bias_gradient_beside_a_stack_with_a_repeated_row_torch():
    torch = pytest.importorskip("torch")
    src = ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3 + c)) + "
           "sum(v * (W @ h4))")
    g = einderiv.grad(src, ["W", "c"], _STACK_SHAPES, backend="torch")
    a = _stack_arrays(1)
    _, dc = g(**{k: torch.tensor(x) for k, x in a.items()})
    np.testing.assert_allclose(dc.numpy(), a["v"] + a["u"] + a["w"], rtol=1e-12)


@pytest.mark.parametrize("src, want", [
    # distinct rows: the stack's sum is the bias's gradient
    ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3 + c))",
     lambda a: a["v"] + a["u"] + a["w"]),
    ("sum(v * (W @ h1 + 2*c)) + sum(u * (W @ h2 + 2*c)) + sum(w * (W @ h3 + 2*c))",
     lambda a: 2 * (a["v"] + a["u"] + a["w"])),
    # different coefficients: no stack sum
    ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + 2*sum(w * (W @ h3 + c))",
     lambda a: a["v"] + a["u"] + 2 * a["w"]),
    # a bias term beside the rows
    ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3 + c)) + sum(v*c)",
     lambda a: 2 * a["v"] + a["u"] + a["w"]),
    # only some of the stack's rows in the bias's sum
    ("sum(v * (W @ h1 + c)) + sum(u * (W @ h2 + c)) + sum(w * (W @ h3)) + sum(v * (W @ h4))",
     lambda a: a["v"] + a["u"]),
])
def test_bias_gradients_beside_stacks(src, want):
    a = _stack_arrays(2)
    (dc,) = einderiv.grad(src, ["c"], _STACK_SHAPES)(**a)
    dW_c = einderiv.grad(src, ["W", "c"], _STACK_SHAPES)(**a)
    np.testing.assert_allclose(dc, want(a), rtol=1e-12)
    np.testing.assert_allclose(dW_c[1], want(a), rtol=1e-12)


# -- products with repeated, permuted, broadcast and diagonal factors ----------------------

_SHAPES = {"x": ("n",), "y": ("n",), "w": ("n",), "A": ("n", "n"), "B": ("n", "n"), "s": ()}


@pytest.mark.parametrize("src, value", [
    ("sum(x*x*y) + sum(x*y)", lambda x, y, w, A, B, s: (x * x * y).sum() + (x * y).sum()),
    ("sum(x*y*x*y) + sum(x*y)", lambda x, y, w, A, B, s: ((x * y) ** 2).sum() + (x * y).sum()),
    ("sum((x*y)**2 * x) + sum(x*y)", lambda x, y, w, A, B, s: ((x * y) ** 2 * x).sum()
     + (x * y).sum()),
    ("sum(x*x*x*x*x*x*x*y) + sum(x*x*x)", lambda x, y, w, A, B, s: (x ** 7 * y).sum()
     + (x ** 3).sum()),
    ("sum(A * A.T * B) + sum(A.T * B)", lambda x, y, w, A, B, s: (A * A.T * B).sum()
     + (A.T * B).sum()),
    ("sum(A * B * A) + sum(A*B)", lambda x, y, w, A, B, s: (A * B * A).sum() + (A * B).sum()),
    ("sum(x[:, None] * y[None, :] * x[:, None] * A) + sum(x*x)",
     lambda x, y, w, A, B, s: (x[:, None] * y[None, :] * x[:, None] * A).sum() + (x * x).sum()),
    ("sum(diag(A) * x * diag(A)) + sum(diag(A)*x)",
     lambda x, y, w, A, B, s: (np.diag(A) ** 2 * x).sum() + (np.diag(A) * x).sum()),
    ("sum(s * x * y * w) + sum(s*x*y)", lambda x, y, w, A, B, s: s * (x * y * w).sum()
     + s * (x * y).sum()),
    ("sum((x*y) * (A @ (x * y * w)))", lambda x, y, w, A, B, s: (x * y) @ (A @ (x * y * w))),
    ("sum(tanh(A @ x) * y * x) + sum(y*x)",
     lambda x, y, w, A, B, s: (np.tanh(A @ x) * y * x).sum() + (y * x).sum()),
])
def test_shared_products_value_gradient_and_hessian(src, value):
    a = {"x": RNG.normal(size=4), "y": RNG.normal(size=4), "w": RNG.normal(size=4),
         "A": RNG.normal(size=(4, 4)), "B": RNG.normal(size=(4, 4)), "s": np.float64(1.3)}
    np.testing.assert_allclose(einderiv.compile(src, _SHAPES)(**a), value(**a), rtol=1e-12)
    gx = einderiv.grad(src, ["x", "y"], _SHAPES)(**a)[0]
    h = 1e-6
    fd = [(value(**{**a, "x": a["x"] + h * e}) - value(**{**a, "x": a["x"] - h * e})) / (2 * h)
          for e in np.eye(4)]
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-8)
    H = einderiv.hessian(src, "x", _SHAPES)(**a)
    t = RNG.normal(size=4)
    np.testing.assert_allclose(einderiv.hvp(src, "x", _SHAPES)(**a, tangent=t), H @ t,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(einderiv.jvp(src, "x", _SHAPES)(**a, tangent=t)[1], gx @ t,
                               rtol=1e-10, atol=1e-12)


# -- unrolled models ---------------------------------------------------------------------

def _fd_check(loss, names, arrays, picks=3):
    f = einderiv.compile(loss)
    grads = einderiv.grad(loss, names)(**arrays)
    rng = np.random.default_rng(0)
    h = 1e-6
    for name, g in zip(names, grads):
        for _ in range(picks):
            idx = tuple(rng.integers(0, d) for d in arrays[name].shape)
            e = np.zeros_like(arrays[name])
            e[idx] = h
            fd = (f(**{**arrays, name: arrays[name] + e}) - f(**{**arrays, name: arrays[name] - e}))
            np.testing.assert_allclose(g[idx], fd / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("builder", ["rnn", "lstm", "lstm_stacked"])
def test_models_against_finite_differences(builder):
    T, V, H = 3, 4, 2
    rng = np.random.default_rng(7)
    X = np.eye(V)[rng.integers(0, V, size=T)]
    arrays = {"X": X, "Y": np.roll(X, -1, 0)}
    if builder == "rnn":
        loss, ws = rnn_loss(T)
        shapes = {"W": (H, H), "U": (H, V), "b": (H,), "Wy": (V, H), "by": (V,)}
    elif builder == "lstm":
        loss, ws = lstm_loss(T)
        shapes = {"Wy": (V, H), "by": (V,)}
        for g in "fioc":
            shapes.update({"W" + g: (H, H), "U" + g: (H, V), "b" + g: (H,)})
    else:
        loss, ws = lstm_stacked_loss(T, H)
        shapes = {"Wx": (4 * H, V), "Wh": (4 * H, H), "b": (4 * H,), "Wy": (V, H), "by": (V,)}
    arrays.update({w: 0.5 * rng.normal(size=shapes[w]) for w in ws})
    _fd_check(loss, ws, arrays, picks=2)


@pytest.mark.parametrize("form", ["sq", "abs", "ce", "mix"])
def test_hand_unrolled_losses_against_finite_differences(form):
    n, T = 3, 3
    W, U, b, c = var("W", (n, n)), var("U", (n, n)), var("b", (n,)), var("c", (n,))
    X, Y = var("X", (T, n)), var("Y", (T, n))
    h = loss = None
    for t in range(T):
        z = U @ X[t] + b if h is None else W @ h + U @ X[t] + b
        h = fn.tanh(z) * fn.sigmoid(z) if form == "mix" else fn.tanh(z)
        if form == "sq" or (form == "mix" and t % 2):
            s = fn.sum((h * h * c - Y[t]) ** 2)
        elif form == "abs":
            s = fn.sum(fn.abs(h * c - Y[t]))
        else:
            s = -fn.sum(Y[t] * fn.log(fn.softmax(h * c + b)))
        loss = s if loss is None else loss + s
    rng = np.random.default_rng(3)
    arrays = {"W": rng.normal(size=(n, n)), "U": rng.normal(size=(n, n)),
              "b": rng.normal(size=n), "c": rng.normal(size=n),
              "X": rng.normal(size=(T, n)), "Y": rng.normal(size=(T, n))}
    _fd_check(loss, ["W", "U", "b", "c"], arrays)
    einderiv.hessian(loss, "b")(**arrays)  # conftest: against the IR interpreter
