"""Numerical checks: central finite differences of a compiled expression.

Used by `--check` on the command line and by the test suite; a check never trusts the symbolic
machinery it checks: it only evaluates the forward expression.
"""
from __future__ import annotations

import numpy as np

from .ir.dims import Dim


def random_inputs(variables: dict, rng: np.random.Generator, sizes: dict | None = None) -> dict:
    """Well-conditioned random arrays for `variables` (name -> shape of Dims).

    Entries are in [0.5, 1.5] so that log, sqrt and division stay in their domains; square
    matrices get a multiple of the identity added so that inv, det and logdet are well-posed.
    """
    sizes = dict(sizes or {})
    arrays = {}
    for name, shape in variables.items():
        dims = []
        for d in shape:
            d = Dim.of(d)
            if d.name is not None and d.name not in sizes:
                sizes[d.name] = int(rng.integers(2, 5)) + max(0, -d.offset)
            dims.append(d.size(sizes))
        a = rng.uniform(0.5, 1.5, size=dims)
        if len(dims) >= 2 and dims[-1] == dims[-2]:
            a = a + dims[-1] * np.eye(dims[-1])
        arrays[name] = a
    return arrays


def finite_difference(f, arrays: dict, wrt: str, h: float = 1e-6) -> np.ndarray:
    """d f / d arrays[wrt] by central differences: shape f.shape + wrt.shape."""
    x = np.array(arrays[wrt], dtype=np.float64)
    base = np.asarray(f(**arrays))
    out = np.empty(base.shape + x.shape)
    for idx in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[idx]))
        plus, minus = x.copy(), x.copy()
        plus[idx] += step
        minus[idx] -= step
        fp = np.asarray(f(**{**arrays, wrt: plus}))
        fm = np.asarray(f(**{**arrays, wrt: minus}))
        out[(...,) + idx] = (fp - fm) / (2 * step)
    return out


def relative_error(actual, expected) -> float:
    """Largest entrywise error relative to the size of the expected values."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(expected))))
    return float(np.max(np.abs(actual - expected)) / scale)
