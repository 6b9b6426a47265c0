"""Unrolled recurrent networks built with `einderiv.var` in a Python loop.

They are a character model whose loss is the softmax cross-entropy summed over steps, built
from whole tensors: derived as scalar expressions instead, an LSTM's cost swells into hundreds
of variables. Tests, benchmarks and examples share them.

>>> import einderiv
>>> loss, weights = rnn_loss(steps=3)
>>> g = einderiv.grad(loss, weights)
>>> [w for w in weights]
['W', 'U', 'b', 'Wy', 'by']
"""
from __future__ import annotations

from .symbolic import Tensor, fn, var


def _inputs():
    # X[t] is the one-hot input at step t, Y[t] the one-hot target.
    return var("X", ("T", "V")), var("Y", ("T", "V"))


def _step_loss(h: Tensor, Wy: Tensor, by: Tensor, y: Tensor) -> Tensor:
    return -fn.sum(y * fn.log(fn.softmax(Wy @ h + by)))


def rnn_loss(steps: int) -> tuple[Tensor, list[str]]:
    """A vanilla tanh RNN over `steps` steps: (loss, names of its weights)."""
    W, U, b = var("W", ("H", "H")), var("U", ("H", "V")), var("b", ("H",))
    Wy, by = var("Wy", ("V", "H")), var("by", ("V",))
    X, Y = _inputs()
    h = None
    loss = None
    for t in range(steps):
        z = U @ X[t] + b
        h = fn.tanh(z if h is None else W @ h + z)
        step = _step_loss(h, Wy, by, Y[t])
        loss = step if loss is None else loss + step
    return loss, ["W", "U", "b", "Wy", "by"]


GATES = ("f", "i", "o", "c")


def lstm_loss(steps: int) -> tuple[Tensor, list[str]]:
    """An LSTM over `steps` steps: (loss, names of its weights)."""
    params = {g: (var("W" + g, ("H", "H")), var("U" + g, ("H", "V")), var("b" + g, ("H",)))
              for g in GATES}
    Wy, by = var("Wy", ("V", "H")), var("by", ("V",))
    X, Y = _inputs()
    h = c = loss = None
    for t in range(steps):
        def gate(g, activation):
            W, U, b = params[g]
            z = U @ X[t] + b
            return activation(z if h is None else W @ h + z)
        f, i, o = gate("f", fn.sigmoid), gate("i", fn.sigmoid), gate("o", fn.sigmoid)
        candidate = gate("c", fn.tanh)
        c = i * candidate if c is None else f * c + i * candidate
        h = o * fn.tanh(c)
        step = _step_loss(h, Wy, by, Y[t])
        loss = step if loss is None else loss + step
    return loss, [n for g in GATES for n in ("W" + g, "U" + g, "b" + g)] + ["Wy", "by"]


def lstm_stacked_loss(steps: int, hidden: int) -> tuple[Tensor, list[str]]:
    """An LSTM written as hand-written code and most frameworks write it: one stacked
    pre-activation `z = Wx @ x_t + Wh @ h + b` of all four gates (f, i, o, c: rows
    k * hidden to (k + 1) * hidden), each gate a slice of it. `hidden` is a concrete size
    (a slice's bounds are integers). (loss, names of its weights)."""
    H = hidden
    Wx, Wh, b = var("Wx", (4 * H, "V")), var("Wh", (4 * H, H)), var("b", (4 * H,))
    Wy, by = var("Wy", ("V", H)), var("by", ("V",))
    X, Y = _inputs()
    h = c = loss = None
    for t in range(steps):
        z = Wx @ X[t] + b if h is None else Wx @ X[t] + Wh @ h + b
        f, i, o = fn.sigmoid(z[:H]), fn.sigmoid(z[H:2 * H]), fn.sigmoid(z[2 * H:3 * H])
        candidate = fn.tanh(z[3 * H:])
        c = i * candidate if c is None else f * c + i * candidate
        h = o * fn.tanh(c)
        step = _step_loss(h, Wy, by, Y[t])
        loss = step if loss is None else loss + step
    return loss, ["Wx", "Wh", "b", "Wy", "by"]
