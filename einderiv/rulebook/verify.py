"""Check derivative rules numerically: each rule against central finite differences.

A rule is exercised by differentiating its function, applied to random inputs, through the
whole pipeline with the rule book under test, so a wrong right-hand side, a wrong index order or
a rule that does not lower all show up as an error at the rule's `file:line`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EinderivError
from .table import Derivative, RuleBook

TOLERANCE = 1e-6


@dataclass
class RuleCheck:
    rule: Derivative
    error: float  # largest relative error against finite differences; inf if it failed
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE


def check_rule(rule: Derivative, rules: RuleBook, seed: int = 0) -> RuleCheck:
    rng = np.random.default_rng(seed)
    f = rules.get(rule.function)
    if f is None:
        return RuleCheck(rule, float("inf"), f"{rule.function} is not declared in any rule file")
    try:
        worst = 0.0
        for source, shapes, arrays in _cases(f, rule, rng):
            worst = max(worst, _gradient_error(source, shapes, rule.wrt, rules, arrays))
        return RuleCheck(rule, worst)
    except EinderivError as e:
        return RuleCheck(rule, float("inf"), e.message)


def check_rules(rules: RuleBook, files=None) -> list[RuleCheck]:
    """Check every derivative rule (or those from `files`, paths as given to `load`)."""
    wanted = None if not files else {str(p) for p in files}
    return [check_rule(r, rules) for r in rules.derivatives.values()
            if wanted is None or r.origin.rsplit(":", 1)[0] in wanted]


def _cases(f, rule: Derivative, rng):
    """(source, shapes, arrays) triples that exercise `rule`."""
    params = f.params
    if f.kind == "elementwise":
        shapes = {p: (5,) for p in params}
        call = f"{f.name}({', '.join(params)})"
        weights = {"C": (5,)}
        source = f"sum({call} * C)"
        # Signed inputs where the function is defined there, positive ones otherwise, always
        # away from 0 so that kinks (abs, relu, step) are not straddled by the differences.
        for signed in (True, False):
            arrays = {p: _away_from_zero(rng, (5,), signed) for p in params}
            arrays["C"] = rng.uniform(0.5, 1.5, size=5)
            if _finite(f, arrays, params):
                break
        if f.name in ("maximum", "minimum") and len(params) == 2:  # no ties
            arrays[params[1]] = arrays[params[0]] + rng.choice([-0.5, 0.5], size=5)
        yield source, {**shapes, **weights}, arrays
        return
    (x,) = params
    if f.shape in ("square", "square_scalar"):
        for shape in ((3, 3), (2, 3, 3)):
            X = rng.uniform(-1, 1, size=shape) + 3 * np.eye(3)
            if f.shape == "square_scalar":
                X[..., 0, :] *= -1  # a negative determinant too
            yield _weighted(f, x, shape, X, rng, batch=shape[:-2], out_same=f.shape == "square")
        return
    for shape, axis in (((4,), None), ((3, 4), 0), ((2, 3, 4), (0, 2))):
        X = rng.uniform(-2, 2, size=shape)
        arg = "" if axis is None else f", {f.axis}={axis}"
        if f.shape == "same":
            out_shape = shape
        else:
            axes = range(len(shape)) if axis is None else (axis if isinstance(axis, tuple)
                                                          else (axis,))
            out_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
        C = rng.uniform(0.5, 1.5, size=out_shape)
        yield (f"sum({f.name}({x}{arg}) * C)", {x: shape, "C": out_shape}, {x: X, "C": C})


def _weighted(f, x, shape, X, rng, batch, out_same):
    out_shape = shape if out_same else batch
    C = rng.uniform(0.5, 1.5, size=out_shape)
    return f"sum({f.name}({x}) * C)", {x: shape, "C": out_shape}, {x: X, "C": C}


def _away_from_zero(rng, shape, signed: bool):
    v = rng.uniform(0.5, 1.5, size=shape)
    return v * rng.choice([-1.0, 1.0], size=shape) if signed else v


def _finite(f, arrays, params) -> bool:
    from ..rulebook.table import resolve
    try:
        with np.errstate(all="ignore"):
            value = resolve(f.impl, np)(*[arrays[p] for p in params])
        return bool(np.all(np.isfinite(value)))
    except Exception:  # an implementation that rejects the inputs: try the next ones
        return False


def _gradient_error(source, shapes, wrt, rules, arrays) -> float:
    from ..check import finite_difference, relative_error
    from ..derive import derivatives
    from ..evaluate.plan import Plan
    from ..ir.nodes import Var
    from ..lower.lower import lower
    from ..parse import parse
    lowered = lower(parse(source), shapes, rules)
    (gradient,) = derivatives(lowered.root, [Var(wrt, lowered.declared[wrt])], rules)
    symbolic = Plan([gradient], rules, accepted=lowered.declared)(arrays)[0]
    forward = Plan([lowered.root], rules, accepted=lowered.declared)
    with np.errstate(all="ignore"):
        numeric = finite_difference(lambda **a: forward(a)[0], arrays, wrt)
    return relative_error(symbolic, numeric)
