"""einderiv benchmarks: generated gradients against hand-written numpy, measured in one run.

    python benchmarks/run.py            # the full table
    python benchmarks/run.py --quick    # small sizes, a smoke test (seconds)

Single-threaded BLAS (set before numpy loads) keeps ratios stable on a shared machine. Every
contender's result is checked against the hand-written one before it is timed.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

import einderiv  # noqa: E402


def median_time(f, budget: float = 0.5, repeat: int = 7) -> float:
    """Median over `repeat` runs of the time per call, each run long enough to time."""
    f()
    t0 = time.perf_counter()
    f()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(budget / repeat / one))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs)


def peak_memory(f) -> int:
    """Peak bytes numpy allocates while `f` runs (tracemalloc sees numpy's buffers)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    f()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def logistic(n: int, d: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = rng.choice([-1.0, 1.0], size=n)
    w = rng.normal(size=d) * 0.1

    def hand():
        return -(X.T @ (y / (1.0 + np.exp(y * (X @ w)))))

    g = einderiv.grad("sum(log(1 + exp(-y * (X @ w))))", "w",
                      {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
    return hand, lambda: g(X=X, y=y, w=w)


def least_squares(n: int, d: int):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    w = rng.normal(size=d)

    def hand():
        return 2.0 * (X.T @ (X @ w - y))

    g = einderiv.grad("sum((X @ w - y) ** 2)", "w", {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
    return hand, lambda: g(X=X, y=y, w=w)


PROBLEMS = {
    "logistic regression": logistic,
    "least squares": least_squares,
}
SIZES = {"full": [(1000, 100), (100_000, 100)], "quick": [(200, 20)]}


def timing_rows(mode: str):
    rows = []
    for name, make in PROBLEMS.items():
        for n, d in SIZES[mode]:
            hand, ours = make(n, d)
            np.testing.assert_allclose(ours(), hand(), rtol=1e-9, atol=1e-12)
            t_hand = median_time(hand)
            t_ours = median_time(ours)
            size = f"{n}x{d}"
            rows.append((name, size, "hand-written numpy", t_hand, 1.0))
            rows.append((name, size, "einderiv", t_ours, t_ours / t_hand))
    return rows


def memory_rows(mode: str):
    """Sparse diagonal structure stays sparse: gradient of sum(exp(x)) in O(n) memory."""
    n = 10_000_000 if mode == "full" else 100_000
    x = np.random.default_rng(2).normal(size=n)
    g = einderiv.grad("sum(exp(x))", "x", {"x": ("n",)})
    J = einderiv.jacobian("exp(x)", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), np.exp(x))
    rows = [("grad sum(exp(x))", n, "hand-written numpy", peak_memory(lambda: np.exp(x))),
            ("grad sum(exp(x))", n, "einderiv", peak_memory(lambda: g(x=x)))]
    small = x[:2000]
    rows.append(("jacobian exp(x)", 2000, "hand-written numpy",
                 peak_memory(lambda: np.diag(np.exp(small)))))
    rows.append(("jacobian exp(x)", 2000, "einderiv", peak_memory(lambda: J(x=small))))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    print(f"{'problem':<22} {'size':>12} {'contender':<20} {'median':>12} {'ratio':>7}")
    for problem, size, who, t, ratio in timing_rows(mode):
        print(f"{problem:<22} {size:>12} {who:<20} {t * 1e6:>10.1f}us {ratio:>7.2f}")
    print()
    print(f"{'problem':<22} {'n':>12} {'contender':<20} {'peak memory':>12} {'per entry':>10}")
    for problem, n, who, peak in memory_rows(mode):
        print(f"{problem:<22} {n:>12} {who:<20} {peak / 2**20:>9.1f}MiB {peak / n:>9.1f}B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
