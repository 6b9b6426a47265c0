"""Numerical checks: central finite differences of a compiled expression.

Used by `--check` on the command line and by the test suite; a check never trusts the symbolic
machinery it checks: it only evaluates the forward expression (by `--check`, through the IR
interpreter, not the generated code that computes the derivative).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import EinderivError
from .ir.dims import Dim, names_in

# A numerical check allocates its random inputs and the derivatives it compares whole, and
# evaluates the expression twice per entry of a variable it differentiates by: sizes beyond
# these are refused before anything is allocated, rather than running out of memory (or being
# killed for it) or for hours. Dimension names get small random sizes and stay far below.
MAX_CHECK_ENTRIES = 10 ** 7
MAX_CHECK_STEPS = 10 ** 4


SIZE_HINT = ("a numerical check is for small sizes: give dimensions as names (--shape x=n, "
             "x: [n]), which it sets to small random sizes")


def random_inputs(variables: dict, rng: np.random.Generator, sizes: dict | None = None) -> dict:
    """Well-conditioned random arrays for `variables` (name -> shape of Dims).

    Entries are in [0.5, 1.5] so that log, sqrt and division stay in their domains; square
    matrices get a multiple of the identity added so that inv, det and logdet are well-posed.
    Named dimensions not in `sizes` get random sizes from 2 to 4 (more for `n - k`). More than
    `MAX_CHECK_ENTRIES` entries in all is an `EinderivError`, raised before allocating them.
    """
    return random_inputs_and_sizes(variables, rng, sizes)[0]


def random_inputs_and_sizes(variables: dict, rng: np.random.Generator,
                            sizes: dict | None = None) -> tuple[dict, dict]:
    """`random_inputs`, and the size of every named dimension."""
    sizes = dict(sizes or {})
    arrays, total = {}, 0
    for name, shape in variables.items():
        dims = []
        for d in shape:
            d = Dim.of(d)
            for n in sorted(names_in(d)):  # each name of `n - 1` or `2 * n`, not the text
                if n not in sizes:
                    sizes[n] = int(rng.integers(2, 5)) + max(0, -d.offset)
            dims.append(d.size(sizes))
        total += math.prod(dims)  # Python ints: a size too large for numpy is counted too
        if total > MAX_CHECK_ENTRIES:
            raise EinderivError(
                f"the random inputs of the check would have more than {MAX_CHECK_ENTRIES:,} "
                f"entries in all ('{name}' has shape {tuple(dims)}): the check allocates at "
                f"most {MAX_CHECK_ENTRIES:,}", hint=SIZE_HINT)
        a = rng.uniform(0.5, 1.5, size=dims)
        if len(dims) >= 2 and dims[-1] == dims[-2]:
            a = a + dims[-1] * np.eye(dims[-1])
        arrays[name] = a
    return arrays, sizes


def check_affordable(derivative_entries: int, steps: int) -> None:
    """Refuse, before computing anything, a check whose derivatives have more than
    `MAX_CHECK_ENTRIES` entries in all or that perturbs more than `MAX_CHECK_STEPS` entries
    (two evaluations each)."""
    if derivative_entries > MAX_CHECK_ENTRIES:
        raise EinderivError(
            f"the derivatives to check would have {derivative_entries:,} entries, more than "
            f"the {MAX_CHECK_ENTRIES:,} the check allocates", hint=SIZE_HINT)
    if steps > MAX_CHECK_STEPS:
        raise EinderivError(
            f"finite differences would perturb {steps:,} entries one at a time (two "
            f"evaluations each), more than the check's {MAX_CHECK_STEPS:,}", hint=SIZE_HINT)


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


def as_written(source, shapes: dict | None, rules, wrt: str | None = None):
    """The reference a check differentiates numerically: a function of keyword arrays that
    computes the program as written (lowered without rewrites, evaluated by the IR
    interpreter) or, given `wrt`, its gradient by `wrt` (derived without rewrites either).

    Not the program the derivative was derived from: rewriting is what a check must see too
    (a wrong rewrite from a rule file, `log(1 + exp(u)) = softplus(-u)`, would otherwise be
    in the reference as well, and agree with itself)."""
    from .api import lower_source
    from .derive import derivatives
    from .evaluate.plan import Plan
    from .ir.nodes import Var
    lowered = lower_source(source, shapes, rules)
    root = lowered.root
    if wrt is not None:
        (root,) = derivatives(root, [Var(wrt, lowered.declared[wrt])], rules)
    plan = Plan([root], rules, accepted=lowered.declared)
    return lambda **arrays: plan(arrays)[0]


def relative_error(actual, expected) -> float:
    """Largest entrywise error relative to the size of the expected values."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(expected))))
    return float(np.max(np.abs(actual - expected)) / scale)
