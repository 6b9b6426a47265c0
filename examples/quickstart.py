"""Quickstart: logistic regression trained by gradient descent.

einderiv derives the gradient of the loss symbolically, prints it as the matrix formula you
would write by hand, and turns it into a numpy function. `value_and_grad` returns the loss and
its gradient from one shared forward pass, which is all gradient descent needs.

    python examples/quickstart.py
"""
from textwrap import indent

import numpy as np

import einderiv

LOSS = "mean(log(1 + exp(-y * (X @ w))))"  # labels y in {-1, +1}
SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}


def make_data(n=500, d=5, seed=0):
    """Points labelled by the sign of a noisy linear function."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w_true = rng.normal(size=d)
    y = np.sign(X @ w_true + 0.5 * rng.normal(size=n))
    return X, y


def main(steps=200, lr=0.5, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    loss_and_grad = einderiv.value_and_grad(LOSS, "w", SHAPES)
    say(f"loss:\n    {LOSS}")
    say("loss and gradient, as einderiv derived them:")
    say(indent(loss_and_grad.formula, "    ") + "\n")

    X, y = make_data(seed=seed)
    w = np.zeros(X.shape[1])
    losses = []
    for step in range(steps + 1):
        loss, dw = loss_and_grad(X=X, y=y, w=w)
        losses.append(float(loss))
        if step % 40 == 0:
            say(f"step {step:4d}  loss {loss:.4f}")
        w -= lr * dw

    accuracy = float(np.mean(np.sign(X @ w) == y))
    say(f"\ntraining accuracy: {accuracy:.1%}")
    return {"initial_loss": losses[0], "final_loss": losses[-1], "accuracy": accuracy}


if __name__ == "__main__":
    main()
