"""Newton-CG in SciPy with einderiv's Hessian-vector product, against the full Hessian.

L2-regularized logistic regression with a bias, n = 20,000 points in d = 200 dimensions.
`einderiv.flat` lays the parameters `w` and `b` out in the one vector SciPy optimizes over and
gives `fun, jac, hess, hessp` on it, so no packing is written by hand. `hessp` is
`einderiv.hvp`: the Hessian times a direction, derived as the directional derivative of the
gradient, X.T @ (c * (X @ v)) in effect, in O(n d) time and O(n + d) memory; `hess` forms the
(d + 1) x (d + 1) Hessian at every step, in O(n d^2). Both runs reach the same optimum.

    python examples/newton_cg_logistic.py            # n = 20000, d = 200
    python examples/newton_cg_logistic.py 2000 50    # smaller
"""
import sys
import time
from textwrap import indent

import numpy as np
from scipy.optimize import minimize

import einderiv

LOSS = "sum(softplus(-y * (X @ w + b))) + lam / 2 * (w @ w)"  # labels y in {-1, +1}
SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",), "b": (), "lam": ()}


def make_data(n, d, seed=0):
    """Points labelled by the sign of a noisy linear function with an offset."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.sign(X @ rng.normal(size=d) + 0.5 + rng.normal(size=n))


def main(n=20_000, d=200, lam=1.0, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    X, y = make_data(n, d, seed)
    problem = einderiv.flat(LOSS, ["w", "b"], SHAPES, data={"X": X, "y": y, "lam": lam})
    fun, jac, hess, hessp = problem
    x0 = problem.pack(w=np.zeros(d), b=0.0)
    hessp(x0, x0), hess(x0)  # derive and generate both before timing
    say(f"loss:\n    {LOSS}")
    say(f"H @ v (einderiv.hvp), over w and b:\n{indent(problem.hvp.formula, '    ')}\n")

    def by_hand(x, p):
        """H @ p written out in numpy for this loss: what hessp saves writing."""
        w, b = x[:d], x[d]
        s = 0.5 * (1 + np.tanh(0.5 * y * (X @ w + b)))  # sigmoid(y * margin), y ** 2 = 1
        c = s * (1 - s) * (X @ p[:d] + p[d])
        return np.concatenate([lam * p[:d] + X.T @ c, [c.sum()]])

    runs = {}
    for name, second in (("hessp", {"hessp": hessp}), ("by hand", {"hessp": by_hand}),
                         ("hess", {"hess": hess})):
        start = time.perf_counter()
        result = minimize(fun, x0, jac=jac, method="Newton-CG", options={"xtol": 1e-10},
                          **second)
        seconds = time.perf_counter() - start
        runs[name] = {"seconds": seconds, "result": result,
                      "gradient_norm": float(np.linalg.norm(jac(result.x)))}
        say(f"Newton-CG, {name:7s}: {seconds:6.3f} s, {result.nit} iterations, "
            f"{result.nfev} values, {result.njev} gradients, {result.nhev} "
            f"{'Hessians' if name == 'hess' else 'products'}, loss {result.fun:.10f}, "
            f"|gradient| {runs[name]['gradient_norm']:.2e}")
    a = runs["hessp"]["result"].x
    say(f"largest difference of the optima: {max(np.abs(a - r['result'].x).max() for r in runs.values()):.2e}")
    fitted = problem.unpack(a)
    say(f"bias b = {float(fitted['b']):.4f}, training accuracy "
        f"{np.mean(np.sign(X @ fitted['w'] + fitted['b']) == y):.3f}")
    return {"runs": runs, "w": fitted["w"], "b": float(fitted["b"]), "X": X, "y": y, "lam": lam}


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
