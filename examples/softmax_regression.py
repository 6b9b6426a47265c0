"""Multinomial logistic (softmax) regression on clustered points.

The cross-entropy of a linear classifier is written with `logsumexp` over the class axis,
which is both the numerically stable form and the one with the shortest gradient: einderiv turns
the derivative of `logsumexp(Z, axis=1)` into `softmax(Z)` rows, and the loss's, softmax(Z) - Y,
into `softmax_minus(Z, Y)`, which keeps every digit at the right class of a confident row
(1 - softmax there is the sum of the others').

    python examples/softmax_regression.py
"""
from textwrap import indent

import numpy as np

import einderiv

LOSS = """
Z = X @ W + b
sum(logsumexp(Z, axis=1) - sum(Y * Z, axis=1)) / size(n)
"""
SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k"), "b": ("k",)}


def clusters(n=600, k=4, d=2, seed=0):
    """n points around k random centres: X [n, d] and one-hot labels Y [n, k]."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(k, d))
    labels = rng.integers(0, k, size=n)
    X = centres[labels] + rng.normal(size=(n, d))
    return X, np.eye(k)[labels]


def main(steps=300, lr=0.5, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    loss_and_grads = einderiv.value_and_grad(LOSS, ["W", "b"], SHAPES)
    say("loss and gradients:")
    say(indent(loss_and_grads.formula, "    ") + "\n")

    X, Y = clusters(seed=seed)
    W, b = np.zeros((X.shape[1], Y.shape[1])), np.zeros(Y.shape[1])
    losses = []
    for step in range(steps + 1):
        loss, (dW, db) = loss_and_grads(X=X, Y=Y, W=W, b=b)
        losses.append(float(loss))
        if step % 50 == 0:
            say(f"step {step:4d}  loss {loss:.4f}")
        W, b = W - lr * dW, b - lr * db

    accuracy = float(np.mean((X @ W + b).argmax(axis=1) == Y.argmax(axis=1)))
    say(f"\ntraining accuracy: {accuracy:.1%} ({Y.shape[1]} classes)")
    return {"initial_loss": losses[0], "final_loss": losses[-1], "accuracy": accuracy}


if __name__ == "__main__":
    main()
