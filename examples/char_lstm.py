"""A character-level LSTM that learns to say "hello world!".

The network is unrolled over the 11 steps of the text in an ordinary Python loop over
`einderiv.var` tensors; einderiv derives the gradient of the summed cross-entropy with respect to
all 14 weight tensors at once, symbolically, and generates one numpy function for it. Training is
plain Adam in numpy. Then the model writes: given 'h', it picks the most likely next character,
feeds it back in, and so on (greedy decoding).

    python examples/char_lstm.py
"""
import time

import numpy as np

import einderiv
from einderiv import fn, var

TEXT = "hello world!"
GATES = {"f": fn.sigmoid, "i": fn.sigmoid, "o": fn.sigmoid, "c": fn.tanh}


def lstm_logits(steps):
    """The unrolled LSTM: the next-character scores [steps, V] for the one-hot inputs
    X [steps, V], and the names of its weights. h and c start at zero."""
    X = var("X", (steps, "V"))
    weights = {}
    for g in GATES:
        weights["W" + g] = var("W" + g, ("H", "H"))
        weights["U" + g] = var("U" + g, ("H", "V"))
        weights["b" + g] = var("b" + g, ("H",))
    Wy, by = var("Wy", ("V", "H")), var("by", ("V",))
    h = c = None
    scores = []
    for t in range(steps):
        gate = {}
        for g, activation in GATES.items():
            z = weights["U" + g] @ X[t] + weights["b" + g]
            gate[g] = activation(z if h is None else weights["W" + g] @ h + z)
        c = gate["i"] * gate["c"] if c is None else gate["f"] * c + gate["i"] * gate["c"]
        h = gate["o"] * fn.tanh(c)
        scores.append(Wy @ h + by)
    return fn.stack(*scores), [*weights, "Wy", "by"]


def main(hidden=16, steps=300, lr=0.05, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    chars = sorted(set(TEXT))
    ids = [chars.index(ch) for ch in TEXT]
    X, Y = np.eye(len(chars))[ids[:-1]], np.eye(len(chars))[ids[1:]]  # input -> next char
    T, V = X.shape

    start = time.perf_counter()
    logits, names = lstm_logits(T)
    loss = -fn.sum(var("Y", (T, "V")) * fn.log(fn.softmax(logits, axis=1)))
    loss_and_grads = einderiv.value_and_grad(loss, names)
    predict = einderiv.compile(logits)
    say(f"derived the gradient of an {T}-step LSTM wrt {len(names)} weights "
        f"in {time.perf_counter() - start:.2f} s "
        f"({len(loss_and_grads.formula.splitlines())} lines of formula)\n")

    rng = np.random.default_rng(seed)
    shapes = {"W": (hidden, hidden), "U": (hidden, V), "b": (hidden,),
              "Wy": (V, hidden), "by": (V,)}
    params = {n: rng.normal(size=shapes[n] if n in shapes else shapes[n[0]]) * 0.3
              for n in names}
    moments = {n: (np.zeros_like(p), np.zeros_like(p)) for n, p in params.items()}
    losses = []
    for step in range(1, steps + 1):  # Adam
        value, grads = loss_and_grads(X=X, Y=Y, **params)
        losses.append(float(value))
        if step == 1 or step % 50 == 0:
            say(f"step {step:4d}  loss {value:.4f}")
        for n, g in zip(names, grads):
            m, v = moments[n]
            m[:] = 0.9 * m + 0.1 * g
            v[:] = 0.999 * v + 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9 ** step), v / (1 - 0.999 ** step)
            params[n] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)

    # Greedy decoding: row t of the scores depends on input rows 0..t only.
    inputs = np.zeros((T, V))
    text = TEXT[0]
    for t in range(T):
        inputs[t, chars.index(text[-1])] = 1.0
        text += chars[int(np.argmax(predict(X=inputs, **params)[t]))]
    say(f"\ngiven {TEXT[0]!r}, the model writes {text!r}")
    return {"initial_loss": losses[0], "final_loss": losses[-1], "text": text}


if __name__ == "__main__":
    main()
