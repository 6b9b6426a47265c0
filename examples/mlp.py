"""A two-layer tanh network on the "two moons" data set, trained by gradient descent.

One call derives the gradients with respect to all four parameters; they come back as a tuple
in the order asked for, with the loss, from one shared forward pass. The printed formula is the
backpropagation you would otherwise write by hand.

    python examples/mlp.py
"""
from textwrap import indent

import numpy as np

import einderiv

# Mean softmax cross-entropy of a tanh hidden layer; Y holds one-hot labels.
LOSS = "-sum(Y * log(softmax(tanh(X @ W1 + b1) @ W2 + b2, axis=1))) / size(n)"
SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W1": ("d", "h"), "b1": ("h",),
          "W2": ("h", "k"), "b2": ("k",)}
PARAMS = ["W1", "b1", "W2", "b2"]


def two_moons(n=400, noise=0.1, seed=0):
    """Two interleaving half circles: points X [n, 2] and one-hot labels Y [n, 2]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    angle = rng.uniform(0, np.pi, size=n)
    X = np.where(labels[:, None] == 0,
                 np.c_[np.cos(angle), np.sin(angle)],
                 np.c_[1 - np.cos(angle), 0.5 - np.sin(angle)])
    X += noise * rng.normal(size=X.shape)
    return X, np.eye(2)[labels]


def main(hidden=16, steps=1500, lr=1.0, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    loss_and_grads = einderiv.value_and_grad(LOSS, PARAMS, SHAPES)
    say(f"loss:\n    {LOSS}\nloss and the four gradients (backpropagation):")
    say(indent(loss_and_grads.formula, "    ") + "\n")

    X, Y = two_moons(seed=seed)
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(size=(2, hidden)), "b1": np.zeros(hidden),
              "W2": rng.normal(size=(hidden, 2)) / np.sqrt(hidden), "b2": np.zeros(2)}
    losses = []
    for step in range(steps + 1):
        loss, grads = loss_and_grads(X=X, Y=Y, **params)
        losses.append(float(loss))
        if step % 300 == 0:
            say(f"step {step:5d}  loss {loss:.4f}")
        for name, g in zip(PARAMS, grads):
            params[name] -= lr * g

    scores = np.tanh(X @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    accuracy = float(np.mean(scores.argmax(axis=1) == Y.argmax(axis=1)))
    say(f"\ntraining accuracy: {accuracy:.1%}")
    return {"initial_loss": losses[0], "final_loss": losses[-1], "accuracy": accuracy}


if __name__ == "__main__":
    main()
