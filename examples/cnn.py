"""A small convolutional network that tells horizontal stripes from vertical ones and from
checkerboards, trained on generated images by gradient descent.

conv2d (8 filters of 3x3, PyTorch's layout) -> relu -> the mean over each feature map -> a
linear layer -> softmax cross-entropy. One call gives the loss and the gradients with respect to
the filters, their biases and the linear layer; the printed formula shows what backpropagation
through a convolution is: the filters' gradient a correlation of the images with the
cotangent (`conv2d` with the batch and channel axes exchanged).

    python examples/cnn.py
"""
from textwrap import indent

import numpy as np

import einderiv

LOSS = """
H = relu(conv2d(X, K, c))
P = mean(H, axis=(2, 3))
-sum(Y * log_softmax(P @ V + d, axis=1)) / size(n)
"""
# n images of one channel, 12 x 12; 8 filters of 3 x 3; 3 classes
SHAPES = {"X": ("n", 1, 12, 12), "Y": ("n", 3), "K": (8, 1, 3, 3), "c": (8,), "V": (8, 3),
          "d": (3,)}
PARAMS = ["K", "c", "V", "d"]


def images(n=96, noise=0.3, seed=0):
    """n noisy 12 x 12 images [n, 1, 12, 12] of three kinds, with one-hot labels [n, 3]:
    horizontal stripes, vertical stripes and checkerboards, each at a random phase."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    rows, cols = np.indices((12, 12))
    X = np.empty((n, 1, 12, 12))
    for i, (label, phase) in enumerate(zip(labels, rng.integers(0, 2, size=n))):
        pattern = [rows, cols, rows + cols][label]
        X[i, 0] = (pattern + phase) % 2
    X += noise * rng.normal(size=X.shape)
    return X, np.eye(3)[labels]


def main(steps=150, lr=0.5, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    loss_and_grads = einderiv.value_and_grad(LOSS, PARAMS, SHAPES)
    say(f"loss:{indent(LOSS, '    ')}\nloss and the four gradients (backpropagation):")
    say(indent(loss_and_grads.formula, "    ") + "\n")

    X, Y = images(seed=seed)
    rng = np.random.default_rng(seed)
    params = {"K": rng.normal(size=(8, 1, 3, 3)) / 3, "c": np.zeros(8),
              "V": rng.normal(size=(8, 3)) / np.sqrt(8), "d": np.zeros(3)}
    losses = []
    for step in range(steps + 1):
        loss, grads = loss_and_grads(X=X, Y=Y, **params)
        losses.append(float(loss))
        if step % 30 == 0:
            say(f"step {step:4d}  loss {loss:.4f}")
        for name, g in zip(PARAMS, grads):
            params[name] -= lr * g

    X_test, Y_test = images(seed=seed + 1)
    scores = einderiv.compile("P = mean(relu(conv2d(X, K, c)), axis=(2, 3))\nP @ V + d",
                              SHAPES)(X=X_test, **params)
    accuracy = float(np.mean(scores.argmax(axis=1) == Y_test.argmax(axis=1)))
    say(f"\naccuracy on new images: {accuracy:.1%}")
    return {"initial_loss": losses[0], "final_loss": losses[-1], "accuracy": accuracy,
            "losses": losses}


if __name__ == "__main__":
    main()
