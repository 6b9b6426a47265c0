"""The benchmark problems: data, the loss once for every framework, hand-written derivatives.

Each problem instance carries

- `loss(ops, params, data)`: the loss written once over a small array namespace `ops` (numpy,
  jax.numpy, autograd.numpy or torch, see `contenders.py`), so that every AD framework
  differentiates the same program;
- `hand(params, data)`: the derivative written by hand in numpy (a tuple of gradients in the
  order of `wrt`, or the Hessian array), checked against finite differences on a small instance
  by `check_hand_written`;
- `einderiv()`: what einderiv differentiates (source text or an `einderiv.var` expression) and
  its shapes.

Data are float64 with fixed seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import einderiv
from einderiv.check import finite_difference, relative_error
from einderiv.models import GATES, lstm_loss, lstm_stacked_loss, rnn_loss


@dataclass
class Instance:
    problem: str
    size: str
    kind: str  # "grad" or "hessian"
    wrt: list[str]
    params: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    loss: Callable  # loss(ops, params: dict, data: dict) -> scalar
    hand: Callable  # hand(params, data) -> tuple of gradients in wrt order | Hessian
    einderiv: Callable  # () -> (expression, shapes or None)
    dims: dict[str, int]  # dimension name -> size, for counting FLOPs
    hand_grad: Callable | None = None  # for a Hessian problem: the hand-written gradient
    notes: list[str] = field(default_factory=list)


# --- logistic regression and least squares ------------------------------------------------

LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"
LINEAR_SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}


def _logistic_data(n, d):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = rng.choice([-1.0, 1.0], size=n)
    w = rng.normal(size=d) / np.sqrt(d)
    return {"w": w}, {"X": X, "y": y}


def logistic_loss(ops, p, D):
    return ops.sum(ops.log(1.0 + ops.exp(-D["y"] * (D["X"] @ p["w"]))))


def logistic_hand(p, D):
    X, y = D["X"], D["y"]
    return (-(X.T @ (y / (1.0 + np.exp(y * (X @ p["w"]))))),)


def logistic(n, d) -> Instance:
    params, data = _logistic_data(n, d)
    return Instance("logistic regression", f"{n}x{d}", "grad", ["w"], params, data,
                    logistic_loss, logistic_hand, lambda: (LOGISTIC, LINEAR_SHAPES),
                    {"n": n, "d": d})


def _least_squares_data(n, d):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    w = rng.normal(size=d)
    return {"w": w}, {"X": X, "y": y}


def least_squares_loss(ops, p, D):
    r = D["X"] @ p["w"] - D["y"]
    return ops.sum(r * r)


def least_squares_hand(p, D):
    X = D["X"]
    return (2.0 * (X.T @ (X @ p["w"] - D["y"])),)


def least_squares(n, d) -> Instance:
    params, data = _least_squares_data(n, d)
    return Instance("least squares", f"{n}x{d}", "grad", ["w"], params, data,
                    least_squares_loss, least_squares_hand,
                    lambda: ("sum((X @ w - y) ** 2)", LINEAR_SHAPES), {"n": n, "d": d})


# --- two-layer tanh MLP, softmax cross-entropy summed over the rows -------------------------

MLP = "-sum(Y * log(softmax(tanh(X @ W1 + b1) @ W2 + b2, axis=1)))"
MLP_SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W1": ("d", "h"), "b1": ("h",),
              "W2": ("h", "k"), "b2": ("k",)}
MLP_WRT = ["W1", "b1", "W2", "b2"]


def one_hot(labels, k):
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def mlp_loss(ops, p, D):
    hidden = ops.tanh(D["X"] @ p["W1"] + p["b1"])
    return -ops.sum(D["Y"] * ops.log_softmax(hidden @ p["W2"] + p["b2"], axis=1))


def softmax_rows(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mlp_hand(p, D):
    X, Y = D["X"], D["Y"]
    H = np.tanh(X @ p["W1"] + p["b1"])
    dZ = softmax_rows(H @ p["W2"] + p["b2"]) - Y  # rows of Y are one-hot (sum to 1)
    dA = (dZ @ p["W2"].T) * (1.0 - H * H)
    return X.T @ dA, dA.sum(axis=0), H.T @ dZ, dZ.sum(axis=0)


def mlp(n, d, h, k) -> Instance:
    rng = np.random.default_rng(2)
    data = {"X": rng.normal(size=(n, d)), "Y": one_hot(rng.integers(0, k, size=n), k)}
    params = {"W1": rng.normal(size=(d, h)) / np.sqrt(d), "b1": 0.1 * rng.normal(size=h),
              "W2": rng.normal(size=(h, k)) / np.sqrt(h), "b2": 0.1 * rng.normal(size=k)}
    return Instance("MLP tanh+softmax CE", f"{n}x{d}x{h}x{k}", "grad", MLP_WRT, params, data,
                    mlp_loss, mlp_hand, lambda: (MLP, MLP_SHAPES),
                    {"n": n, "d": d, "h": h, "k": k})


# --- Hessians -------------------------------------------------------------------------------

def quadratic_loss(ops, p, D):
    return p["x"] @ D["A"] @ p["x"]


def quadratic(d) -> Instance:
    rng = np.random.default_rng(3)
    data = {"A": rng.normal(size=(d, d))}  # not symmetric
    params = {"x": rng.normal(size=d)}
    return Instance("hessian x@A@x", f"{d}", "hessian", ["x"], params, data, quadratic_loss,
                    lambda p, D: D["A"] + D["A"].T,
                    lambda: ("x @ A @ x", {"A": ("d", "d"), "x": ("d",)}), {"d": d},
                    hand_grad=lambda p, D: ((D["A"] + D["A"].T) @ p["x"],))


def logistic_hessian_hand(p, D):
    X, y = D["X"], D["y"]
    s = 1.0 / (1.0 + np.exp(-y * (X @ p["w"])))
    return (X.T * (s * (1.0 - s) * y * y)) @ X


def logistic_hessian(n, d) -> Instance:
    params, data = _logistic_data(n, d)
    return Instance("hessian logistic", f"{n}x{d}", "hessian", ["w"], params, data,
                    logistic_loss, logistic_hessian_hand, lambda: (LOGISTIC, LINEAR_SHAPES),
                    {"n": n, "d": d}, hand_grad=logistic_hand)


# --- unrolled character models --------------------------------------------------------------
#
# The loss of einderiv.models: h starts at zero (the first step has no W @ h term, the first
# LSTM cell no f * c term), and each step adds -sum(Y[t] * log(softmax(Wy @ h + by))).

def _char_data(V, H, T, weights, seed):
    rng = np.random.default_rng(seed)
    if (V, T) == (9, 11):  # the "hello world!" character model
        text = "hello world!"
        chars = sorted(set(text))
        ids = np.array([chars.index(c) for c in text])
    else:
        ids = rng.integers(0, V, size=T + 1)
    data = {"X": one_hot(ids[:-1], V), "Y": one_hot(ids[1:], V)}
    shapes = {"W": (H, H), "U": (H, V), "b": (H,), "Wy": (V, H), "by": (V,)}
    params = {}
    for name in weights:  # W, U, b (or Wf, Uf, bf, ... per LSTM gate), then Wy, by
        shape = shapes[name] if name in shapes else shapes[name[0]]
        scale = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 0.1
        params[name] = scale * rng.normal(size=shape)
    return params, data


def rnn_model_loss(ops, p, D):
    X, Y = D["X"], D["Y"]
    h = loss = None
    for t in range(X.shape[0]):
        z = p["U"] @ X[t] + p["b"]
        h = ops.tanh(z if h is None else p["W"] @ h + z)
        step = -ops.sum(Y[t] * ops.log_softmax(p["Wy"] @ h + p["by"], axis=0))
        loss = step if loss is None else loss + step
    return loss


def rnn_hand(p, D):
    X, Y = D["X"], D["Y"]
    W = p["W"]
    T = X.shape[0]
    Z = X @ p["U"].T + p["b"]  # every step's input projection at once
    Hs = np.empty_like(Z)
    h = np.tanh(Z[0])
    Hs[0] = h
    for t in range(1, T):
        h = np.tanh(W @ h + Z[t])
        Hs[t] = h
    dL = softmax_rows(Hs @ p["Wy"].T + p["by"]) - Y  # one-hot targets
    dHs = dL @ p["Wy"]
    dZ = np.empty_like(Z)
    carry = np.zeros(Z.shape[1])
    for t in range(T - 1, -1, -1):
        dz = (dHs[t] + carry) * (1.0 - Hs[t] * Hs[t])
        dZ[t] = dz
        carry = W.T @ dz
    return (dZ[1:].T @ Hs[:-1], dZ.T @ X, dZ.sum(axis=0), dL.T @ Hs, dL.sum(axis=0))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _lstm_loss(ops, p, D, gates):
    """The LSTM character model's loss; `gates(x_t, h)` (h None at the first step) gives the
    activated gates f, i, o and the candidate of one step."""
    X, Y = D["X"], D["Y"]
    h = c = loss = None
    for t in range(X.shape[0]):
        f, i, o, candidate = gates(X[t], h)
        c = i * candidate if c is None else f * c + i * candidate
        h = o * ops.tanh(c)
        step = -ops.sum(Y[t] * ops.log_softmax(p["Wy"] @ h + p["by"], axis=0))
        loss = step if loss is None else loss + step
    return loss


def lstm_model_loss(ops, p, D):
    def gates(x, h):  # one weight matrix per gate
        def gate(g, activation):
            z = p["U" + g] @ x + p["b" + g]
            return activation(z if h is None else p["W" + g] @ h + z)
        return (gate("f", ops.sigmoid), gate("i", ops.sigmoid), gate("o", ops.sigmoid),
                gate("c", ops.tanh))
    return _lstm_loss(ops, p, D, gates)


def lstm_hand(p, D):
    """Gates stacked in the order f, i, o, c: one [4H, H] recurrent matrix, one matmul for
    every step's input projection and one for each weight gradient."""
    X, Y = D["X"], D["Y"]
    W = np.concatenate([p["W" + g] for g in GATES])
    U = np.concatenate([p["U" + g] for g in GATES])
    b = np.concatenate([p["b" + g] for g in GATES])
    T, H = X.shape[0], W.shape[1]
    A = X @ U.T + b  # [T, 4H] pre-activations, input part
    G = np.empty_like(A)  # activated gates
    C = np.empty((T, H))
    TC = np.empty((T, H))
    Hs = np.empty((T, H))
    for t in range(T):
        a = A[t] if t == 0 else A[t] + W @ Hs[t - 1]
        G[t, :3 * H] = _sigmoid(a[:3 * H])
        G[t, 3 * H:] = np.tanh(a[3 * H:])
        f, i, g = G[t, :H], G[t, H:2 * H], G[t, 3 * H:]
        C[t] = i * g if t == 0 else f * C[t - 1] + i * g
        TC[t] = np.tanh(C[t])
        Hs[t] = G[t, 2 * H:3 * H] * TC[t]
    dL = softmax_rows(Hs @ p["Wy"].T + p["by"]) - Y  # one-hot targets
    dHs = dL @ p["Wy"]
    dA = np.empty_like(A)
    dh_carry = np.zeros(H)
    dc_carry = np.zeros(H)
    for t in range(T - 1, -1, -1):
        f, i, o, g = G[t, :H], G[t, H:2 * H], G[t, 2 * H:3 * H], G[t, 3 * H:]
        dh = dHs[t] + dh_carry
        dc = dh * o * (1.0 - TC[t] * TC[t]) + dc_carry
        dA[t, :H] = 0.0 if t == 0 else dc * C[t - 1] * f * (1.0 - f)
        dA[t, H:2 * H] = dc * g * i * (1.0 - i)
        dA[t, 2 * H:3 * H] = dh * TC[t] * o * (1.0 - o)
        dA[t, 3 * H:] = dc * i * (1.0 - g * g)
        dc_carry = dc * f
        dh_carry = W.T @ dA[t]
    dW, dU, db = dA[1:].T @ Hs[:-1], dA.T @ X, dA.sum(axis=0)
    out = []
    for k in range(len(GATES)):
        rows = slice(k * H, (k + 1) * H)
        out += [dW[rows], dU[rows], db[rows]]
    return (*out, dL.T @ Hs, dL.sum(axis=0))


def _model(kind, V, H, T) -> Instance:
    build = rnn_loss if kind == "RNN" else lstm_loss
    _, weights = build(1)
    params, data = _char_data(V, H, T, weights, seed=4 if kind == "RNN" else 5)
    loss = rnn_model_loss if kind == "RNN" else lstm_model_loss
    hand = rnn_hand if kind == "RNN" else lstm_hand
    return Instance(f"{kind} char model", f"{V}x{H}x{T}", "grad", weights, params, data, loss,
                    hand, lambda: (build(T)[0], None), {"V": V, "H": H, "T": T})


def lstm_stacked_model_loss(ops, p, D):
    H = p["Wh"].shape[1]

    def gates(x, h):  # slices of one stacked pre-activation
        z = p["Wx"] @ x + p["b"]
        z = z if h is None else z + p["Wh"] @ h
        return (ops.sigmoid(z[:H]), ops.sigmoid(z[H:2 * H]), ops.sigmoid(z[2 * H:3 * H]),
                ops.tanh(z[3 * H:]))
    return _lstm_loss(ops, p, D, gates)


def lstm_stacked_hand(p, D):
    """lstm_hand's stacked computation, whose weights these are: dWx, dWh, db, dWy, dby."""
    H = p["Wh"].shape[1]
    per_gate = {}
    for k, g in enumerate(GATES):
        rows = slice(k * H, (k + 1) * H)
        per_gate.update({"W" + g: p["Wh"][rows], "U" + g: p["Wx"][rows], "b" + g: p["b"][rows]})
    out = lstm_hand({**per_gate, "Wy": p["Wy"], "by": p["by"]}, D)
    dW = np.concatenate(out[0:12:3])
    dU = np.concatenate(out[1:12:3])
    db = np.concatenate(out[2:12:3])
    return dU, dW, db, out[12], out[13]


def lstm_stacked(V, H, T) -> Instance:
    _, weights = lstm_stacked_loss(1, H)
    params, data = _char_data(V, H, T, lstm_loss(1)[1], seed=6)
    stacked = {"Wx": np.concatenate([params["U" + g] for g in GATES]),
               "Wh": np.concatenate([params["W" + g] for g in GATES]),
               "b": np.concatenate([params["b" + g] for g in GATES]),
               "Wy": params["Wy"], "by": params["by"]}
    return Instance("LSTM stacked gates", f"{V}x{H}x{T}", "grad", weights, stacked, data,
                    lstm_stacked_model_loss, lstm_stacked_hand,
                    lambda: (lstm_stacked_loss(T, H)[0], None), {"V": V, "H": H, "T": T})


def rnn(V, H, T) -> Instance:
    return _model("RNN", V, H, T)


def lstm(V, H, T) -> Instance:
    return _model("LSTM", V, H, T)


# --- issue 13: products of stacks, broadcasts, normalization, ReLU ----------------------------
#
# Losses a new user writes, each with the derivative a person writes in numpy: the same
# algorithm as the expression (no identities the expression does not state), with its
# broadcasts as indexing and its matrix products as `@`.

BATCHED = "sum((A @ B - C) ** 2)"


def batched_matmul_loss(ops, p, D):
    return ops.sum((p["A"] @ p["B"] - D["C"]) ** 2)


def batched_matmul_hand(p, D):
    R = 2.0 * (p["A"] @ p["B"] - D["C"])
    return R @ p["B"].swapaxes(-1, -2), p["A"].swapaxes(-1, -2) @ R


def batched_matmul(b, n, m, k) -> Instance:
    rng = np.random.default_rng(6)
    params = {"A": rng.normal(size=(b, n, m)), "B": rng.normal(size=(b, m, k))}
    data = {"C": rng.normal(size=(b, n, k))}
    shapes = {"A": ("b", "n", "m"), "B": ("b", "m", "k"), "C": ("b", "n", "k")}
    return Instance("batched matmul", f"{b}x{n}x{m}x{k}", "grad", ["A", "B"], params, data,
                    batched_matmul_loss, batched_matmul_hand, lambda: (BATCHED, shapes),
                    {"b": b, "n": n, "m": m, "k": k})


def mean_axis_loss(ops, p, D):
    T = p["T"]
    return ops.sum((ops.sum(T, axis=-1) / T.shape[-1]) ** 2)


def mean_axis_hand(p, D):
    T = p["T"]
    g = (2.0 / T.shape[-1]) * T.mean(axis=-1)
    return (np.broadcast_to(g[..., None], T.shape).copy(),)  # an array of its own


def mean_axis(b, n, m) -> Instance:
    rng = np.random.default_rng(7)
    params = {"T": rng.normal(size=(b, n, m))}
    return Instance("mean over an axis", f"{b}x{n}x{m}", "grad", ["T"], params, {},
                    mean_axis_loss, mean_axis_hand,
                    lambda: ("sum(mean(T, axis=-1) ** 2)", {"T": ("b", "n", "m")}),
                    {"b": b, "n": n, "m": m})


RBF = "sum(exp(-sum((P[:, None, :] - P[None, :, :]) ** 2, axis=2)))"


def rbf_loss(ops, p, D):
    P = p["P"]
    return ops.sum(ops.exp(-ops.sum((P[:, None, :] - P[None, :, :]) ** 2, axis=2)))


def rbf_hand(p, D):
    P = p["P"]
    Dif = P[:, None, :] - P[None, :, :]
    K = np.exp(-np.sum(Dif * Dif, axis=2))
    G = K[:, :, None] * Dif  # the chain rule through Dif[i, j] = P[i] - P[j]
    return (2.0 * (G.sum(axis=0) - G.sum(axis=1)),)


def rbf(n, m) -> Instance:
    rng = np.random.default_rng(8)
    params = {"P": rng.normal(size=(n, m)) / np.sqrt(m)}
    return Instance("pairwise RBF", f"{n}x{m}", "grad", ["P"], params, {}, rbf_loss, rbf_hand,
                    lambda: (RBF, {"P": ("n", "m")}), {"n": n, "m": m})


LAYER_NORM = ("mu = mean(X, axis=1)\nC = X - mu[:, None]\nv = mean(C ** 2, axis=1)\n"
              "N = C / sqrt(v + 1e-5)[:, None]\nsum((g * N + b - Y) ** 2)")
LAYER_NORM_SHAPES = {"X": ("n", "f"), "g": ("f",), "b": ("f",), "Y": ("n", "f")}


def layer_norm_loss(ops, p, D):
    X = p["X"]
    f = X.shape[1]
    C = X - (ops.sum(X, axis=1) / f)[:, None]
    N = C / ((ops.sum(C * C, axis=1) / f + 1e-5) ** 0.5)[:, None]
    return ops.sum((p["g"] * N + p["b"] - D["Y"]) ** 2)


def layer_norm_hand(p, D):
    X, g = p["X"], p["g"]
    C = X - X.mean(axis=1)[:, None]
    s = 1.0 / np.sqrt((C * C).mean(axis=1) + 1e-5)
    N = C * s[:, None]
    dO = 2.0 * (g * N + p["b"] - D["Y"])
    dN = dO * g
    dX = s[:, None] * (dN - dN.mean(axis=1)[:, None] - N * (dN * N).mean(axis=1)[:, None])
    return dX, (dO * N).sum(axis=0), dO.sum(axis=0)


def layer_norm(n, f) -> Instance:
    rng = np.random.default_rng(9)
    params = {"X": rng.normal(size=(n, f)), "g": 1.0 + 0.1 * rng.normal(size=f),
              "b": 0.1 * rng.normal(size=f)}
    data = {"Y": rng.normal(size=(n, f))}
    return Instance("layer norm", f"{n}x{f}", "grad", ["X", "g", "b"], params, data,
                    layer_norm_loss, layer_norm_hand, lambda: (LAYER_NORM, LAYER_NORM_SHAPES),
                    {"n": n, "f": f})


RELU_MLP = "H = relu(X @ W1 + b1)\nsum((H @ W2 + b2 - Y) ** 2)"


def relu_mlp_loss(ops, p, D):
    Z = D["X"] @ p["W1"] + p["b1"]
    H = Z * (Z > 0)  # relu, with the same derivative (0 at 0) in every framework
    return ops.sum((H @ p["W2"] + p["b2"] - D["Y"]) ** 2)


def relu_mlp_hand(p, D):
    X = D["X"]
    Z = X @ p["W1"] + p["b1"]
    H = np.maximum(Z, 0.0)
    R = 2.0 * (H @ p["W2"] + p["b2"] - D["Y"])
    dZ = (R @ p["W2"].T) * (Z > 0)
    return X.T @ dZ, dZ.sum(axis=0), H.T @ R, R.sum(axis=0)


def relu_mlp(n, d, h, k) -> Instance:
    rng = np.random.default_rng(10)
    data = {"X": rng.normal(size=(n, d)), "Y": rng.normal(size=(n, k))}
    params = {"W1": rng.normal(size=(d, h)) / np.sqrt(d), "b1": 0.1 * rng.normal(size=h),
              "W2": rng.normal(size=(h, k)) / np.sqrt(h), "b2": 0.1 * rng.normal(size=k)}
    return Instance("MLP relu+squared", f"{n}x{d}x{h}x{k}", "grad", MLP_WRT, params, data,
                    relu_mlp_loss, relu_mlp_hand, lambda: (RELU_MLP, MLP_SHAPES),
                    {"n": n, "d": d, "h": h, "k": k})


# --- a small convolutional network ----------------------------------------------------------

CNN = """
H = relu(conv2d(X, K, c))
P = mean(H, axis=(2, 3))
-sum(Y * log_softmax(P @ V + d, axis=1)) / size(n)
"""
CNN_WRT = ["K", "c", "V", "d"]


def _conv2d(X, K):
    """PyTorch's conv2d (valid, stride 1) in each framework: torch's own, jax's
    lax.conv_general_dilated, and for numpy and autograd the sum over the kernel's entries of
    the shifted images times that entry (a matrix product over the channels)."""
    library = type(K).__module__.split(".")[0]
    if library == "torch":
        import torch
        return torch.nn.functional.conv2d(X, K)
    if library in ("jax", "jaxlib"):
        from jax import lax
        return lax.conv_general_dilated(X, K, (1, 1), "VALID",
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))
    n, c, h, w = X.shape
    o, _, kh, kw = K.shape
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            window = X[:, :, i:i + h - kh + 1, j:j + w - kw + 1].reshape(n, c, -1)
            out = out + K[:, :, i, j] @ window
    return out.reshape(n, o, h - kh + 1, w - kw + 1)


def cnn_loss(ops, p, D):
    Z = _conv2d(D["X"], p["K"]) + p["c"][:, None, None]
    H = Z * (Z > 0)  # relu, with the same derivative (0 at 0) in every framework
    n, o = H.shape[0], H.shape[1]
    P = ops.sum(H.reshape(n, o, -1), -1) / (H.shape[2] * H.shape[3])
    return -ops.sum(D["Y"] * ops.log_softmax(P @ p["V"] + p["d"], axis=1)) / n


def cnn_hand(p, D):
    """Backpropagation by hand, the images' windows copied once (im2col)."""
    X, Y, K = D["X"], D["Y"], p["K"]
    n, c, h, w = X.shape
    o, _, kh, kw = K.shape
    rows, cols = h - kh + 1, w - kw + 1
    windows = np.empty((n, c, kh, kw, rows, cols))
    for i in range(kh):
        for j in range(kw):
            windows[:, :, i, j] = X[:, :, i:i + rows, j:j + cols]
    windows = windows.reshape(n, c * kh * kw, rows * cols)
    Z = K.reshape(o, -1) @ windows + p["c"][:, None]  # [n, o, positions]
    P = np.maximum(Z, 0.0).mean(axis=2)
    S = softmax_rows(P @ p["V"] + p["d"])
    G = (S * Y.sum(axis=1, keepdims=True) - Y) / n  # by the logits
    dZ = (G @ p["V"].T)[:, :, None] * (Z > 0) / (rows * cols)
    dK = np.tensordot(dZ, windows, axes=((0, 2), (0, 2))).reshape(K.shape)
    return dK, dZ.sum(axis=(0, 2)), P.T @ G, G.sum(axis=0)


def cnn(n, c, o, size, k, classes=10) -> Instance:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, classes, size=n)
    data = {"X": rng.normal(size=(n, c, size, size)), "Y": np.eye(classes)[labels]}
    params = {"K": rng.normal(size=(o, c, k, k)) / np.sqrt(c * k * k),
              "c": 0.1 * rng.normal(size=o), "V": rng.normal(size=(o, classes)) / np.sqrt(o),
              "d": 0.1 * rng.normal(size=classes)}
    shapes = {"X": ("n", c, size, size), "Y": ("n", classes), "K": (o, c, k, k), "c": (o,),
              "V": (o, classes), "d": (classes,)}
    return Instance("conv2d", f"{n}x{c}->{o}x{size}x{size}x{k}", "grad", CNN_WRT, params, data,
                    cnn_loss, cnn_hand, lambda: (CNN, shapes), {"n": n})


# --- the suite ------------------------------------------------------------------------------

SUITE = {
    "full": [
        (logistic, [(1000, 100), (100_000, 100)]),
        (least_squares, [(1000, 100), (100_000, 100)]),
        (mlp, [(256, 64, 128, 10), (4096, 256, 512, 10)]),
        (quadratic, [(100,), (1000,)]),
        (logistic_hessian, [(1000, 100), (10_000, 1000)]),
        (rnn, [(9, 9, 11), (64, 128, 32)]),
        (lstm, [(9, 9, 11), (64, 128, 32)]),
        (lstm_stacked, [(9, 9, 11), (64, 128, 32)]),
        (batched_matmul, [(8, 16, 16, 16), (64, 64, 64, 64)]),
        (mean_axis, [(5, 20, 30), (50, 200, 300)]),
        (rbf, [(50, 4), (300, 16)]),
        (layer_norm, [(64, 32), (512, 256)]),
        (relu_mlp, [(256, 64, 128, 10), (1000, 100, 200, 10)]),
        (cnn, [(32, 3, 16, 32, 3)]),
    ],
    "quick": [
        (logistic, [(200, 20)]),
        (least_squares, [(200, 20)]),
        (mlp, [(32, 8, 16, 4)]),
        (quadratic, [(20,)]),
        (logistic_hessian, [(200, 20)]),
        (rnn, [(9, 9, 11)]),
        (lstm, [(5, 6, 4)]),
        (lstm_stacked, [(5, 6, 4)]),
        (batched_matmul, [(4, 6, 5, 3)]),
        (mean_axis, [(3, 4, 5)]),
        (rbf, [(10, 3)]),
        (layer_norm, [(8, 6)]),
        (relu_mlp, [(32, 8, 16, 4)]),
        (cnn, [(4, 2, 3, 8, 3)]),
    ],
}
# Small instances on which the hand-written derivatives are checked by finite differences.
SMALL = [(logistic, (12, 4)), (least_squares, (12, 4)), (mlp, (6, 4, 5, 3)), (quadratic, (5,)),
         (logistic_hessian, (12, 4)), (rnn, (4, 3, 5)), (rnn, (9, 9, 11)), (lstm, (4, 3, 5)),
         (lstm_stacked, (4, 3, 5)),
         (batched_matmul, (2, 3, 4, 2)), (mean_axis, (2, 3, 4)), (rbf, (5, 3)),
         (layer_norm, (4, 5)), (relu_mlp, (6, 4, 5, 3)), (cnn, (3, 2, 3, 6, 3))]


def instances(mode: str):
    for make, sizes in SUITE[mode]:
        for size in sizes:
            yield make(*size)


class NumpyOps:
    """The array namespace the losses are written over, for numpy."""
    sum = staticmethod(np.sum)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    tanh = staticmethod(np.tanh)
    sigmoid = staticmethod(_sigmoid)

    @staticmethod
    def log_softmax(z, axis):
        z = z - z.max(axis=axis, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def check_hand_written(make, size, tolerance: float = 1e-6) -> float:
    """Largest relative error of the hand-written derivative against central differences of the
    numpy loss (for a Hessian: of the hand-written gradient, itself checked against the loss)."""
    inst = make(*size)
    worst = 0.0
    names = list(inst.params)

    def loss(**arrays):
        return inst.loss(NumpyOps, {k: arrays[k] for k in names}, inst.data)

    def gradient(wrt):
        def f(**arrays):
            grads = (inst.hand_grad or inst.hand)({k: arrays[k] for k in names}, inst.data)
            return grads[inst.wrt.index(wrt)]
        return f

    grads = inst.hand_grad(inst.params, inst.data) if inst.hand_grad else inst.hand(
        inst.params, inst.data)
    for name, g in zip(inst.wrt, grads):
        worst = max(worst, relative_error(g, finite_difference(loss, inst.params, name)))
    if inst.kind == "hessian":
        (name,) = inst.wrt
        H = inst.hand(inst.params, inst.data)
        worst = max(worst, relative_error(H, finite_difference(gradient(name), inst.params,
                                                               name)))
    if not worst < tolerance:
        raise AssertionError(f"hand-written {inst.problem} {inst.size}: relative error "
                             f"{worst:.2e} against finite differences")
    return worst


def einderiv_function(inst: Instance):
    """Build einderiv's derivative of the instance (not yet called)."""
    expr, shapes = inst.einderiv()
    if inst.kind == "hessian":
        (name,) = inst.wrt
        return einderiv.hessian(expr, name, shapes)
    return einderiv.grad(expr, list(inst.wrt), shapes)
