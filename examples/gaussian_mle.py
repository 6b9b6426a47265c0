"""Maximum likelihood of a multivariate Gaussian, through `logdet` and `inv`.

The mean `mu` and covariance `S` of a Gaussian are fitted by gradient descent on the average
negative log-likelihood of the samples (up to a constant),

    logdet(S) / 2 + mean over rows x of (x - mu) @ inv(S) @ (x - mu) / 2.

The covariance is parametrized as S = L @ L.T, so it stays positive definite whatever L the
descent visits; einderiv differentiates through the product, `logdet` and `inv`. The answer has a
closed form, the sample mean and the (biased) sample covariance, which the fit is compared with.

    python examples/gaussian_mle.py
"""
from textwrap import indent

import numpy as np

import einderiv

NLL = """
S = L @ L.T
R = X - mu
logdet(S) / 2 + sum(R @ inv(S) * R) / (2 * size(n))
"""
SHAPES = {"X": ("n", "d"), "mu": ("d",), "L": ("d", "d")}


def main(n=500, steps=500, lr=0.1, seed=0, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    nll_and_grads = einderiv.value_and_grad(NLL, ["mu", "L"], SHAPES)
    say("negative log-likelihood and its gradients:")
    say(indent(nll_and_grads.formula, "    ") + "\n")

    rng = np.random.default_rng(seed)
    true_cov = np.array([[2.0, 0.6, 0.2], [0.6, 1.0, -0.3], [0.2, -0.3, 0.5]])
    X = rng.multivariate_normal([1.0, -2.0, 0.5], true_cov, size=n)

    mu, L = np.zeros(3), np.eye(3)
    for step in range(steps + 1):
        nll, (dmu, dL) = nll_and_grads(X=X, mu=mu, L=L)
        if step % 100 == 0:
            size = np.sqrt(np.sum(dmu ** 2) + np.sum(dL ** 2))
            say(f"step {step:4d}  nll {nll:.6f}  |gradient| {size:.1e}")
        mu, L = mu - lr * dmu, L - lr * dL
    S = L @ L.T

    sample_mean = X.mean(axis=0)
    sample_cov = (X - sample_mean).T @ (X - sample_mean) / n
    with np.printoptions(precision=6, suppress=True):
        say(f"\nfitted mean:  {mu}\nsample mean:  {sample_mean}")
        say(f"\nfitted covariance:\n{S}\nsample covariance (closed form):\n{sample_cov}")
    return {"mean": mu, "cov": S, "sample_mean": sample_mean, "sample_cov": sample_cov,
            "nll": float(nll)}


if __name__ == "__main__":
    main()
