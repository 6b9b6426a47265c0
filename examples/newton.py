"""Newton's method on L2-regularized logistic regression.

`einderiv.grad` and `einderiv.hessian` give the gradient and the Hessian of the loss; each
Newton step solves H @ step = g. Near the optimum the gradient norm is roughly squared at every
iteration (quadratic convergence), so a handful of steps reach machine precision.

    python examples/newton.py
"""
from textwrap import indent

import numpy as np

import einderiv

LOSS = "sum(softplus(-y * (X @ w))) + lam * (w @ w) / 2"  # labels y in {-1, +1}
SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",), "lam": ()}


def make_data(n=1000, d=10, seed=0):
    """Points labelled by the sign of a noisy linear function."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.sign(X @ rng.normal(size=d) + rng.normal(size=n))


def main(n=1000, d=10, lam=1.0, tol=1e-8, max_iterations=20, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    loss_and_grad = einderiv.value_and_grad(LOSS, "w", SHAPES)
    hessian = einderiv.hessian(LOSS, "w", SHAPES)
    gradient = einderiv.grad(LOSS, "w", SHAPES)
    say(f"loss:\n    {LOSS}")
    say(f"gradient:\n{indent(gradient.formula, '    ')}")
    say(f"Hessian:\n{indent(hessian.formula, '    ')}\n")

    X, y = make_data(n, d, seed)
    w = np.zeros(d)
    norms = []
    for iteration in range(max_iterations):
        loss, g = loss_and_grad(X=X, y=y, w=w, lam=lam)
        norms.append(float(np.linalg.norm(g)))
        say(f"iteration {iteration:2d}  loss {loss:.10f}  |gradient| {norms[-1]:.3e}")
        if norms[-1] < tol:
            break
        w = w - np.linalg.solve(hessian(X=X, y=y, w=w, lam=lam), g)
    converged = norms[-1] < tol
    say(f"\n{'converged' if converged else 'did not converge'} in {len(norms) - 1} Newton steps")
    return {"gradient_norms": norms, "iterations": len(norms) - 1, "converged": converged, "w": w}


if __name__ == "__main__":
    main()
