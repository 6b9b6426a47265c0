"""Numerical checks: central finite differences of a compiled expression.

Used by `--check` on the command line and by the test suite; a check never trusts the symbolic
machinery it checks: it only evaluates the forward expression (by `--check`, the value as
written, through the IR interpreter, not the generated code that computes the derivative), and
differences that value: once for a gradient or a Jacobian (`finite_difference`), twice for a
Hessian (`second_difference`), never a derivative einderiv derived.
"""
from __future__ import annotations

import itertools
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

# Relative steps: central first differences err by about eps * |f| / h (rounding) plus h ** 2
# times the third derivative, least near h = 1e-6 (errors of 1e-10 to 1e-8 at the check's
# inputs). Second differences err by about eps * |f| / h ** 2 (rounding): at h = 1e-4, which
# balances that with h ** 2 times the fourth derivative, already 1e-4 of a Hessian whose
# function is 1e4 times larger (`sum(X @ X)` of a 10 x 10 X); extrapolated from steps h and 2 h
# (`second_difference`) they err by h ** 4 times the sixth derivative instead, so h = 1e-3
# makes the rounding 100 times smaller at no loss (errors of 1e-9 to 1e-7 at the inputs).
FIRST_DIFFERENCE_STEP = 1e-6
SECOND_DIFFERENCE_STEP = 1e-3


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


# Where the check's first inputs, entries in [0.5, 1.5], are outside the domain of the
# expression (`arcsin`, `arctanh`, `arccosh`, `sqrt(-x)`, `log1p(-x)`, ...), a right
# derivative would be compared at nan and "fail". These ranges are tried in turn, each well
# inside the domains of the functions that have one (a margin of 0.1 or more from -1, 0, 1:
# second differences step 2e-3 at most), the first for every variable alike, then one per
# variable (`sqrt(-x) + log(y)`): the first point where the value and the derivative are
# finite is where the check compares them. A wrong derivative is compared there too, and
# fails; one that is nowhere finite is compared at the first point, and fails.
DOMAIN_RANGES = ((0.5, 1.5), (0.1, 0.9), (-0.9, -0.1), (-1.5, -0.5), (1.5, 2.5), (-2.5, -1.5))

# The points tried by one range per variable, at most (each costs a forward evaluation, and
# one of the derivative where the value is finite): 6 ranges for up to 3 variables.
MAX_DOMAIN_TRIES = 6 ** 3


def inputs_in_domain(base: dict, finite) -> dict:
    """The arrays `base` of `random_inputs`, moved into the expression's domain: the first
    arrays, of those with entries in the ranges of `DOMAIN_RANGES`, at which `finite(arrays)`
    (the value and the derivative to check are finite there) is true; `base` itself where none
    is. `base` is tried first, as it is; every other try has the same sizes and the same random
    draw, mapped into its range; a square matrix (last two axes) has its size times the
    identity added, of the range's sign (for inv, det and logdet), and is tried without it too
    (`arcsin(X)`)."""
    unit = {}  # each variable's draw in [0, 1], the identity taken out again
    for name, a in base.items():
        a = np.asarray(a)
        if _square(a):
            a = a - a.shape[-1] * np.eye(a.shape[-1])
        unit[name] = a - 0.5

    def at(choice, shifted=True):
        arrays = {}
        for name, (lo, hi) in zip(unit, choice):
            a = lo + (hi - lo) * unit[name]
            if shifted and _square(a):
                a = a + math.copysign(a.shape[-1], lo + hi) * np.eye(a.shape[-1])
            arrays[name] = a
        return arrays

    def tries():
        yield base  # the first range as drawn, bit for bit (not mapped there and back)
        for r in DOMAIN_RANGES:
            if r != DOMAIN_RANGES[0]:
                yield at([r] * len(unit))
            if any(_square(a) for a in base.values()):
                yield at([r] * len(unit), shifted=False)
        if len(unit) > 1:
            for count, choice in enumerate(itertools.product(DOMAIN_RANGES, repeat=len(unit))):
                if count >= MAX_DOMAIN_TRIES:
                    break
                if len(set(choice)) > 1:  # one range for all was tried above
                    yield at(choice)

    for arrays in tries():
        try:
            with np.errstate(all="ignore"):
                if finite(arrays):
                    return arrays
        except EinderivError:  # e.g. a singular matrix at this point: try the next
            continue
    return base


def _square(a) -> bool:
    return np.ndim(a) >= 2 and a.shape[-1] == a.shape[-2]


def all_finite(*values) -> bool:
    """Every entry of every value (arrays, or tuples of them) is finite."""
    for v in values:
        if isinstance(v, (tuple, list)):
            if not all_finite(*v):
                return False
        elif not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
            return False
    return True


def check_affordable(derivative_entries: int, steps: int, second_order: bool = False) -> None:
    """Refuse, before computing anything, a check whose derivatives have more than
    `MAX_CHECK_ENTRIES` entries in all or that takes more than `MAX_CHECK_STEPS` steps: a step
    is an entry perturbed (two evaluations) for first differences, a pair of entries perturbed
    together (eight evaluations at most) for second differences (`second_order`)."""
    if derivative_entries > MAX_CHECK_ENTRIES:
        raise EinderivError(
            f"the derivatives to check would have {derivative_entries:,} entries, more than "
            f"the {MAX_CHECK_ENTRIES:,} the check allocates", hint=SIZE_HINT)
    if steps > MAX_CHECK_STEPS:
        what = ("pairs of entries together (eight evaluations each)" if second_order else
                "entries one at a time (two evaluations each)")
        raise EinderivError(
            f"finite differences would perturb {steps:,} {what}, more than the check's "
            f"{MAX_CHECK_STEPS:,}", hint=SIZE_HINT)


def second_difference_steps(entries: int) -> int:
    """The steps (`check_affordable`) of `second_difference` by variables of `entries` entries
    in all: one per pair of entries, a pair with itself included."""
    return entries * (entries + 1) // 2


def finite_difference(f, arrays: dict, wrt: str, h: float = FIRST_DIFFERENCE_STEP
                      ) -> np.ndarray:
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


def second_difference(f, arrays: dict, wrt, h: float = SECOND_DIFFERENCE_STEP):
    """Second derivatives of the value `f` (a function of keyword arrays) by central second
    differences of that value alone, never of a derivative. For entries p, q of the variables
    `wrt`, with steps s_p = k h max(1, |x_p|):

        D_k = (f(x + s_p e_p + s_q e_q) - f(x + s_p e_p - s_q e_q)
               - f(x - s_p e_p + s_q e_q) + f(x - s_p e_p - s_q e_q)) / (4 s_p s_q),

    (f(x + s_p e_p) - 2 f(x) + f(x - s_p e_p)) / s_p ** 2 for p = q, taken at k = 1 and 2 and
    extrapolated (Richardson): (4 D_1 - D_2) / 3, whose error is h ** 4 times the sixth
    derivative (truncation) plus about eps |f| / h ** 2 (rounding).

    `wrt` a name: d2 f / d wrt d wrt, of shape f.shape + wrt.shape + wrt.shape. A list of
    names: the blocks, `blocks[i][j]` d2 f / d wrt[i] d wrt[j] (a name may repeat). Each pair of
    entries is differenced once (the second derivatives are symmetric): 4 N ** 2 + 1
    evaluations of `f` for N entries of the distinct variables in all."""
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    distinct = list(dict.fromkeys(names))
    xs = {a: np.array(arrays[a], dtype=np.float64) for a in distinct}
    entries = [(a, idx, h * max(1.0, abs(float(xs[a][idx]))))
               for a in distinct for idx in np.ndindex(*xs[a].shape)]

    def at(*moves):  # f with each entry of `moves` stepped by its multiple of the entry's step
        moved = {}
        for (a, idx, step), times in moves:
            if a not in moved:
                moved[a] = xs[a].copy()
            moved[a][idx] += times * step
        return np.asarray(f(**{**arrays, **moved}), dtype=np.float64)

    base = at()

    def difference(ep, eq, k):
        if eq is ep:
            return (at((ep, k)) - 2 * base + at((ep, -k))) / (k * ep[2]) ** 2
        return (at((ep, k), (eq, k)) - at((ep, k), (eq, -k)) - at((ep, -k), (eq, k))
                + at((ep, -k), (eq, -k))) / (4 * k * k * ep[2] * eq[2])

    n = len(entries)
    out = np.empty(base.shape + (n, n))
    for p, ep in enumerate(entries):
        for q in range(p, n):
            eq = entries[q]
            value = (4 * difference(ep, eq, 1) - difference(ep, eq, 2)) / 3
            out[..., p, q] = out[..., q, p] = value
    start, spans = 0, {}
    for a in distinct:
        spans[a] = slice(start, start + xs[a].size)
        start += xs[a].size
    block = lambda a, b: out[..., spans[a], spans[b]].reshape(
        base.shape + xs[a].shape + xs[b].shape)
    if isinstance(wrt, str):
        return block(wrt, wrt)
    return [[block(a, b) for b in names] for a in names]


def as_written(source, shapes: dict | None, rules, wrt: str | None = None):
    """The reference a check differences numerically: a function of keyword arrays that
    computes the program as written (lowered without rewrites, evaluated by the IR
    interpreter). `--check` differences this value only: once (`finite_difference`) for a
    gradient or a Jacobian, twice (`second_difference`) for a Hessian.

    Not the program the derivative was derived from: rewriting is what a check must see too
    (a wrong rewrite from a rule file, `log(1 + exp(u)) = softplus(-u)`, would otherwise be
    in the reference as well, and agree with itself).

    Given `wrt`, the function computes instead the gradient by `wrt` derived from the rule
    tables (without rewrites), which is independent of rewriting, vectorizing and generated
    code but not of the derivative rules: a wrong rule is in it as well, so it is no reference
    for a Hessian's check (`second_difference` of the value is)."""
    from .api import lower_source
    from .derive import derivatives
    from .evaluate.plan import Plan
    from .ir.nodes import Var
    lowered = lower_source(source, shapes, rules)
    root = lowered.root
    if wrt is not None:
        (root,) = derivatives(root, [Var(wrt, lowered.declared[wrt])], rules)
    plan = Plan([root], rules, accepted=lowered.declared, picks=lowered.picks)
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
