"""Check rule tables numerically: each derivative rule against central finite differences.

A rule is exercised by differentiating its function, applied to random inputs, through the
whole pipeline with the rule book under test, so a wrong right-hand side, a wrong index order or
a rule that does not lower all show up as an error at the rule's `file:line`. A function's own
line is checked too (`check_tables`): a primitive's implementation must evaluate to finite values
of the right shape and have a rule for each argument, and a definition must expand and
differentiate. A rewrite's two sides must agree to rounding at random points of several
ranges, the replacement finite wherever the pattern is and no less precise than the pattern
(relative to the pattern's exact value, with mpmath), and its pattern, lowered, must be
rewritten to what its replacement is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EinderivError, RuleError
from .table import AXIS, SQUARE_PAIRS, Derivative, Function, Rewrite, RuleBook, resolve

TOLERANCE = 1e-6
# A rewrite is an identity, applied to every program: its sides must agree to rounding, not to
# the accuracy of finite differences (a rewrite that moved every value by 1e-7 passed 1e-6).
REWRITE_TOLERANCE = 1e-12


@dataclass
class RuleCheck:
    rule: Derivative | Function | Rewrite
    error: float  # largest relative error (against finite differences); inf if it failed
    message: str = ""
    measured: bool = True  # False when nothing was compared: an implementation that evaluates
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance  # False for nan too

    @property
    def origin(self) -> str:
        return self.rule.origin


def check_rule(rule: Derivative, rules: RuleBook, seed: int = 0) -> RuleCheck:
    rng = np.random.default_rng(seed)
    f = rules.get(rule.function)
    if f is None:
        return RuleCheck(rule, float("inf"), f"{rule.function} is not declared in any rule file")
    if f.kind == "def":
        return RuleCheck(rule, float("inf"), f"{rule.function} is a definition ({f.origin}): "
                                             "it is differentiated through its expansion")
    try:
        worst = _worst(_gradient_error(source, shapes, rule.wrt, rules, arrays)
                       for source, shapes, arrays, _ in _cases(f, rng))
        return RuleCheck(rule, worst, "" if np.isfinite(worst) else _NOT_FINITE)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a user's implementation may raise anything, SystemExit too:
        # report it at the rule, and go on checking the others
        return RuleCheck(rule, float("inf"), _describe(e))


def check_rules(rules: RuleBook, files=None) -> list[RuleCheck]:
    """Check every derivative rule (or those from `files`, paths as given to `load`)."""
    wanted = _wanted(files)
    return [check_rule(r, rules) for r in rules.derivatives.values()
            if wanted is None or _file(r.origin) in wanted]


def check_function(f: Function, rules: RuleBook, seed: int = 0) -> RuleCheck:
    """A primitive's implementation evaluates (finite, shaped as declared); a definition
    expands, and its gradient through the expansion matches finite differences."""
    rng = np.random.default_rng(seed)
    try:
        if f.kind == "def":
            return _check_definition(f, rules, rng)
        impl = resolve(f.impl, np)
        for _, _, arrays, axis in _cases(f, rng):
            args = [arrays[p] for p in f.params]
            with np.errstate(all="ignore"):
                value = np.asarray(impl(*args) if axis is None else
                                   impl(*args, **{f.axis: axis}))
            expected = arrays["C"].shape
            shapes = ", ".join(str(a.shape) for a in args)
            if value.shape != expected:
                return RuleCheck(f, float("inf"), f"{f.impl} returned shape {value.shape} for "
                                                  f"inputs of shape {shapes}, not {expected}")
            if not np.all(np.isfinite(value)):
                return RuleCheck(f, float("inf"), f"{f.impl} is not finite at the test inputs "
                                                  f"{_show(args)}")
            if axis is None and f.axis and args[0].ndim >= 2 and not _default_axis_ok(
                    f, impl, args, value):
                where = "along the last axis" if f.shape in ("same", "cotangent") else \
                    "over every axis"
                return RuleCheck(f, float("inf"), f"{f.impl} called without {f.axis}= does not "
                                                  f"work {where}, as the language's {f.name} "
                                                  "does (generated code calls it that way)")
            if f.shape == "cotangent":
                problem = _vjp_problem(f, rules, args, axis, value)
                if problem:
                    return RuleCheck(f, float("inf"), problem)
        return RuleCheck(f, 0.0, measured=False)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # as in check_rule: whatever the implementation raises
        return RuleCheck(f, float("inf"), _describe(e))


def _vjp_problem(f: Function, rules: RuleBook, args, axis, value) -> str:
    """Where a vjp primitive (NAME_vjp, shape rule cotangent) is not the pullback through
    NAME's Jacobian rule, which reverse mode replaces with it: why, else ''. A cotangent
    primitive of another name is two tensors shaped alike, no pullback (`softmax_minus`); a
    name NAME_vjp with no primitive NAME of shape rule same is an error."""
    from ..derive import derivatives
    from ..evaluate.plan import Plan
    from ..ir.nodes import Var
    from ..lower.lower import lower
    from ..parse import parse
    if not f.name.endswith("_vjp"):
        return ""  # two tensors shaped alike, along axes, no pullback (softmax_minus(x, y))
    base = rules.get(f.name[:-len("_vjp")])
    if base is None or base.kind != "tensor" or base.shape != "same":
        return (f"a primitive of shape rule cotangent is named NAME_vjp after a tensor "
                f"primitive NAME of shape rule same, whose pullback it is")
    x, g = args
    keyword = "" if axis is None else f", {base.axis}={axis}"
    shapes = {"x": x.shape, "g": g.shape}
    lowered = lower(parse(f"sum({base.name}(x{keyword}) * g)"), shapes, rules)
    (pullback,) = derivatives(lowered.root, [Var("x", lowered.declared["x"])], rules,
                              fused=False)
    want = Plan([pullback], rules, accepted=lowered.declared)({"x": x, "g": g})[0]
    if np.allclose(value, want, rtol=1e-12, atol=1e-14):
        return ""
    worst = float(np.max(np.abs(value - want)))
    return (f"{f.impl} differs from the pullback through {base.name}'s Jacobian rule by up to "
            f"{worst:.2e} at {_show(args)}")


def _default_axis_ok(f: Function, impl, args, value) -> bool:
    x = args[0]
    axes = (x.ndim - 1,) if f.shape in ("same", "cotangent") else tuple(range(x.ndim))
    with np.errstate(all="ignore"):
        explicit = np.asarray(impl(*args, **{f.axis: axes}))
    return explicit.shape == value.shape and np.allclose(explicit, value, rtol=1e-12, atol=0)


def missing_derivatives(f: Function, rules: RuleBook) -> list[RuleCheck]:
    """A failed check for each argument of primitive `f` that has no derivative rule."""
    if f.kind == "def":
        return []
    call = f"{f.name}({', '.join(f.params)})"
    return [RuleCheck(f, float("inf"), f"no derivative rule for {p}: add a line "
                                       f"'d {call} / d{p} = ...'")
            for i, p in enumerate(f.params) if rules.derivative(f.name, i) is None]


def check_tables(rules: RuleBook, files=None) -> list[RuleCheck]:
    """Every check of the functions and derivative rules from `files` (default: all), in the
    order of `rules.in_file_order()`: a function's own line, its missing rules, each rule."""
    wanted = _wanted(files)
    checks = []
    for rule in rules.in_file_order():
        if wanted is not None and _file(rule.origin) not in wanted:
            continue
        if isinstance(rule, Derivative):
            checks.append(check_rule(rule, rules))
        elif isinstance(rule, Rewrite):
            checks.append(check_rewrite(rule, rules))
        else:
            checks.append(check_function(rule, rules))
            checks.extend(missing_derivatives(rule, rules))
    return checks


_NOT_FINITE = "the derivative is not finite at the test inputs"


def check_rewrite(rule: Rewrite, rules: RuleBook, seed: int = 0) -> RuleCheck:
    """Both sides of a rewrite agree, to rounding (REWRITE_TOLERANCE), at random points of
    every range of _REWRITE_INPUTS, with its variables vectors, or with `axis` matrices and
    stacks along chosen axes; the replacement keeps the relative precision that the pattern
    has, against its exact value (_digits_lost, for an elementwise pattern where mpmath is
    installed); wherever the pattern is finite, the replacement is finite too (a
    rewrite may not shrink the domain, `log(x ** 2) = 2 * log(x)` at x < 0); and its pattern,
    lowered, is rewritten to what its replacement is (a pattern rewritten first by another
    rule, or one the matcher cannot see, never applies)."""
    from ..ir.nodes import Var
    from ..simplify.pattern import compile_rewrite, lower_side
    from ..simplify.rewrite import Rewriter
    rng = np.random.default_rng(seed)
    fail = lambda message: RuleCheck(rule, float("inf"), message,  # noqa: E731
                                     tolerance=REWRITE_TOLERANCE)
    try:
        c = compile_rewrite(rule, rules)
        errors, compared, unused, lost_digits = [], 0, None, None
        exact = _exact_pattern(c.pattern, rule, rules)
        for shape, axes in _rewrite_cases(rule, rules):
            values = {v: Var(v, shape) for v in rule.variables if v != AXIS}
            lhs, rhs = (lower_side(e, rules, values, axes) for e in (c.pattern, c.replacement))
            if lhs.shape != rhs.shape:
                return fail(f"the sides have different shapes, {_dims(lhs.shape)} and "
                            f"{_dims(rhs.shape)}")
            for arrays, left, right in _sides_at(lhs, rhs, values, rules, rng):
                finite = np.isfinite(left)
                lost = finite & ~np.isfinite(right)
                if np.any(lost):
                    return fail(_where_lost(arrays, left, right, lost))
                compared += int(np.sum(finite))
                if np.any(finite):
                    errors.append(_rounding_error(left[finite], right[finite]))
                if exact is not None and lost_digits is None:
                    lost_digits = _digits_lost(exact, arrays, left, right)
            before, after = Rewriter(rules)([lhs, rhs])
            if before is not after and unused is None:
                shown = str(before).splitlines()[-1].partition(" = ")[2]
                why = ("it never matches its own lowered form" if before is lhs else
                       f"other rewrites change it first, to {shown}: write the pattern as "
                       "they leave it")
                unused = f"the pattern does not become the replacement: {why}"
        if not compared:
            return fail(_NOT_FINITE_SIDES)
        worst = RuleCheck(rule, _worst(errors), tolerance=REWRITE_TOLERANCE)
        # A wrong identity is said first, then digits lost: that it would not apply is the
        # lesser news.
        if worst.ok and lost_digits is not None:
            return RuleCheck(rule, *lost_digits, tolerance=REWRITE_TOLERANCE)
        return worst if unused is None or not worst.ok else fail(unused)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # as in check_rule
        return fail(_describe(e))


_NOT_FINITE_SIDES = "the pattern is not finite at any of the test inputs"


def _rewrite_cases(rule: Rewrite, rules: RuleBook | None = None):
    """(shape of every variable, axes) to check a rewrite at: square matrices and a stack of
    them where it calls a primitive of square matrices (`log(det(X))`)."""
    if AXIS not in rule.variables:
        if rules is not None and any(
                str(getattr(rules.get(name), "shape", None)).startswith("square")
                for name in rule.functions):
            return [((3, 3), None), ((2, 3, 3), None)]
        return [((8,), None)]
    return [((4,), (0,)), ((3, 4), (1,)), ((3, 4), (0,)), ((2, 3, 4), (0, 2))]


# The ranges a rewrite's variables are drawn from, (low, high, sign) with sign +1, -1 or 0 for
# both: a rewrite must hold on each. Large values stop at 9, and the huge ones start at 1000:
# in between, the forms that rewrites replace still give a finite value but have lost digits to
# cancellation (log(1 - sigmoid(u)) keeps 4 of them at u = 30), and would not agree with their
# exact replacement to rounding; from 1000 on they saturate (to 0, inf or nan) exactly. Last,
# zeros, and every entry from a range of its own (one variable large and another small).
_REWRITE_INPUTS = ((0.5, 1.5, 0), (0.5, 1.5, 1), (0.5, 1.5, -1), (1e-3, 0.1, 0), (3.0, 9.0, 0),
                   (1e3, 1e5, 0), (0.0, 0.0, 1))


def _sides_at(lhs, rhs, variables: dict, rules, rng):
    """(inputs, pattern's value, replacement's value) at each range of _REWRITE_INPUTS, then at
    inputs that take each entry from a range of its own."""
    from ..evaluate.plan import Plan
    declared = {name: v.shape for name, v in variables.items()}
    plan = Plan([lhs, rhs], rules, accepted=declared)
    shapes = {name: tuple(d.offset for d in shape) for name, shape in declared.items()}
    every = len(_REWRITE_INPUTS)
    for pick in [*range(every), None]:
        arrays = {}
        for name, shape in shapes.items():
            ranges = np.full(shape, pick) if pick is not None else rng.integers(every, size=shape)
            arrays[name] = _drawn(rng, ranges)
        with np.errstate(all="ignore"):
            left, right = (np.asarray(v, dtype=float) for v in plan(arrays))
        yield arrays, left, right


def _drawn(rng, ranges):
    """An entry from _REWRITE_INPUTS[k] for each entry k of `ranges`."""
    lo, hi, sign = (np.array([r[i] for r in _REWRITE_INPUTS])[ranges] for i in range(3))
    signs = np.where(sign == 0, rng.choice([-1.0, 1.0], size=ranges.shape), sign)
    return signs * np.exp(rng.uniform(np.log(np.maximum(lo, 1e-300)),
                                      np.log(np.maximum(hi, 1e-300)))) * (hi > 0)


def _rounding_error(left, right) -> float:
    """The largest difference between the sides, relative to the larger of them where it is
    beyond 1, and absolute below (a rewrite exact to rounding, softplus(u) for
    log(1 + exp(u)), still differs from its pattern by the rounding of 1 + exp(u), which is all
    of log(1 + exp(u)) at u = -40)."""
    scale = np.maximum(1.0, np.maximum(np.abs(left), np.abs(right)))
    return float(np.max(np.abs(left - right) / scale))


# The exact value of an elementwise rewrite's pattern, entry by entry with mpmath (where it is
# installed: the `test` extra) at _DIGITS digits. The sides' difference is compared absolutely
# below 1 (above), which a replacement that cancels passes: `tanh(u) ** 2 = 1 - sech2(u)` is
# 1e-16 from its pattern at u = 1e-3, where it keeps 6 of the 16 digits that the pattern has.
# So the replacement's error against the exact value is also taken relative to it, and counted
# where the replacement is worse than the pattern written out in floating point (where that
# loses digits to cancellation too, the rewrite has taken nothing from the program).
_DIGITS = 50


def _mp_functions(mp) -> dict:
    """mpmath's counterparts of the elementwise functions of the rule tables, by name."""
    sign = lambda x: mp.mpf(1 if x > 0 else -1 if x < 0 else 0)  # noqa: E731
    step = lambda x: mp.mpf(1 if x > 0 else 0)  # noqa: E731
    return {
        "exp": mp.exp, "log": mp.log, "log1p": mp.log1p, "expm1": mp.expm1, "sqrt": mp.sqrt,
        "square": lambda x: x * x, "abs": abs, "sign": sign, "sin": mp.sin, "cos": mp.cos,
        "tan": mp.tan, "sinh": mp.sinh, "cosh": mp.cosh, "tanh": mp.tanh,
        "sech2": lambda x: mp.sech(x) ** 2,
        "dsigmoid": lambda x: mp.sech(x / 2) ** 2 / 4, "arctan": mp.atan, "arcsin": mp.asin,
        "arccos": mp.acos, "arctanh": mp.atanh, "arcsinh": mp.asinh,
        "sigmoid": lambda x: 1 / (1 + mp.exp(-x)), "relu": lambda x: max(x, 0),
        "softplus": lambda x: mp.log1p(mp.exp(x)),
        "logaddexp": lambda a, b: max(a, b) + mp.log1p(mp.exp(-abs(a - b))),
        "logcosh": lambda x: mp.log(mp.cosh(x)), "step": step,
        "heaviside": lambda x, h0: h0 if x == 0 else step(x), "maximum": max, "minimum": min,
        "where": lambda c, a, b: a if c != 0 else b, "hypot": mp.hypot, "erf": mp.erf,
        "erfc": mp.erfc, "pow": lambda a, b: a ** b, "div": lambda a, b: a / b,
    }


def _exact_pattern(pattern, rule: Rewrite, rules: RuleBook):
    """A function of the variables' entries (floats) that gives the pattern's exact value (an
    mpf), or None where it is not real; None itself for a pattern this cannot evaluate (with
    `axis`, a function mpmath lacks or one a rule file has replaced, or without mpmath)."""
    try:
        import mpmath
    except ImportError:
        return None
    from ..parse import ast
    from . import rules_dir
    if AXIS in rule.variables:
        return None
    mp = mpmath.MPContext()  # its own precision: the global one is left alone
    mp.dps = _DIGITS
    functions = _mp_functions(mp)
    for name in rule.functions:
        f = rules.get(name)
        if name not in functions or f is None or f.kind != "elementwise" or \
                Path(_file(f.origin)).parent != rules_dir():
            return None

    def value(e, env):
        if isinstance(e, ast.Name):
            return env[e.id]
        if isinstance(e, ast.Number):
            return mp.mpf(e.value)
        if isinstance(e, ast.UnaryOp):
            return -value(e.operand, env) if e.op == "-" else value(e.operand, env)
        if isinstance(e, ast.BinOp) and e.op in ("+", "-", "*", "/", "**"):
            a, b = value(e.left, env), value(e.right, env)
            return {"+": a + b, "-": a - b, "*": a * b}[e.op] if e.op in "+-*" else \
                functions["div" if e.op == "/" else "pow"](a, b)
        if isinstance(e, ast.Call) and not e.kwargs:
            return functions[e.func](*(value(a, env) for a in e.args))
        raise ValueError("not evaluated")

    def exact(entries: dict):
        try:
            v = value(pattern, {k: mp.mpf(float(x)) for k, x in entries.items()})
        except (ZeroDivisionError, OverflowError, TypeError):  # TypeError: compared complex
            return None
        return v if isinstance(v, mp.mpf) and mp.isfinite(v) else None
    try:  # a pattern of a form this does not evaluate is left to the absolute comparison
        exact({v: 0.5 for v in rule.variables})
    except (ValueError, KeyError):
        return None
    return exact


def _digits_lost(exact, arrays: dict, left, right):
    """(relative error, why) where the replacement is further from the pattern's exact value
    than REWRITE_TOLERANCE relative to it and than the pattern in floating point is, or None.
    Exact values beyond the floating-point range are skipped (the replacement's inf or 0 is
    right there), and so are entries where the pattern is not real."""
    tiny, huge = np.finfo(float).tiny, np.finfo(float).max
    worst = None
    for k in np.ndindex(left.shape):
        ref = exact({name: a[k] for name, a in arrays.items()})
        if ref is None or abs(ref) > huge:
            continue
        err_right = abs(float(right[k] - ref)) if np.isfinite(right[k]) else float("inf")
        err_left = abs(float(left[k] - ref)) if np.isfinite(left[k]) else float("inf")
        relative = err_right / max(abs(float(ref)), tiny)
        if relative > REWRITE_TOLERANCE and err_right > 2 * err_left and (
                worst is None or relative > worst[0]):
            at = ", ".join(f"{name} = {a[k]:.6g}" for name, a in arrays.items())
            worst = (relative, f"at {at} the pattern is {float(ref):.17g} (exact; "
                               f"{left[k]:.17g} in floating point) but the replacement "
                               f"{right[k]:.17g}: it loses digits that the pattern keeps")
    return worst


def _where_lost(arrays: dict, left, right, lost) -> str:
    """Says where the replacement is not finite but the pattern is."""
    at = tuple(int(k[0]) for k in np.nonzero(lost))
    inputs = ", ".join(f"{name} = {_entry(a, at, left.shape)}" for name, a in arrays.items())
    return (f"at {inputs} the pattern is {left[at]:.6g} but the replacement {right[at]:.6g}: "
            "a rewrite must be finite wherever its pattern is")


def _entry(a, at, shape) -> str:
    if a.shape == shape:
        return f"{a[at]:.6g}"
    return np.array2string(a, precision=3, threshold=8)


def _dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _worst(errors) -> float:
    # np.max, unlike max(), keeps a nan: a derivative that is nan somewhere is wrong.
    return float(np.max(list(errors)))


def _wanted(files):
    return None if not files else {str(p) for p in files}


def _file(origin: str) -> str:
    return origin.rsplit(":", 1)[0]


def _describe(e: BaseException) -> str:
    if isinstance(e, EinderivError):
        return e.message
    return f"{type(e).__name__}: {e}"


def _show(arrays) -> str:
    return ", ".join(np.array2string(np.asarray(a), precision=3, threshold=8) for a in arrays)


# Elementwise inputs, tried in turn until the implementation is finite at all of them: signed
# where the function is defined there, positive otherwise (log, sqrt), then inside (-1, 1) for
# functions such as arcsin. Always away from 0, so that kinks (abs, relu, step) are not straddled
# by the differences.
_ELEMENTWISE_INPUTS = ((0.5, 1.5, True), (0.5, 1.5, False), (0.1, 0.9, True), (0.1, 0.9, False))


def _cases(f: Function, rng):
    """(source, shapes, arrays, axis) that exercise `f`: the expression `sum(f(...) * C)` with
    random weights C shaped like f's result, and the axis argument it was called with."""
    params = f.params
    if f.kind == "elementwise":
        shapes = {p: (5,) for p in params}
        call = f"{f.name}({', '.join(params)})"
        for lo, hi, signed in _ELEMENTWISE_INPUTS:
            arrays = {p: _away_from_zero(rng, (5,), lo, hi, signed) for p in params}
            arrays["C"] = rng.uniform(0.5, 1.5, size=5)
            if _finite(f, arrays, params):
                break
        else:
            arrays = {p: _away_from_zero(rng, (5,), 0.5, 1.5, True) for p in params}
            arrays["C"] = rng.uniform(0.5, 1.5, size=5)
        if f.name in ("maximum", "minimum") and len(params) == 2:  # no ties
            arrays[params[1]] = arrays[params[0]] + rng.choice([-0.5, 0.5], size=5)
        yield f"sum({call} * C)", {**shapes, "C": (5,)}, arrays, None
        return
    if f.shape == "square_rhs":  # solve(A, b): b a vector or columns, per matrix of a stack
        a, b = params
        for batch, columns in (((), ()), ((), (2,)), ((2,), ()), ((2,), (2,))):
            A = rng.uniform(-1, 1, size=(*batch, 3, 3)) + 3 * np.eye(3)
            B = rng.uniform(-1, 1, size=(*batch, 3, *columns))
            C = rng.uniform(0.5, 1.5, size=B.shape)
            yield (f"sum({f.name}({a}, {b}) * C)", {a: A.shape, b: B.shape, "C": C.shape},
                   {a: A, b: B, "C": C}, None)
        return
    if f.shape in ("square_square", "square_square_pair", "square_square_square"):
        # det_hvp(X, V) and its kin: a matrix and directions, or stacks of them
        x, *vs = params
        for shape in ((3, 3), (2, 3, 3)):
            X = rng.uniform(-1, 1, size=shape) + 3 * np.eye(3)
            X[..., 0, :] *= -1  # a negative determinant too
            out_shape = shape[:-2] + shape[-2:] * SQUARE_PAIRS[f.shape]
            C = rng.uniform(0.5, 1.5, size=out_shape)
            arrays = {x: X, **{v: rng.uniform(-1, 1, size=shape) for v in vs}, "C": C}
            yield (f"sum({f.name}({', '.join(params)}) * C)",
                   {**{p: shape for p in params}, "C": out_shape}, arrays, None)
        return
    if f.shape in ("cotangent", "weighted"):
        # log_softmax_vjp(x, g) and its kin: x and a cotangent shaped like it, along an axis;
        # logsumexp_weighted(x, w): x and positive weights shaped like it, reduced over axes
        x, g = params
        for shape, axis in (((4,), None), ((3, 4), None), ((3, 4), 0), ((2, 3, 4), (0, 2))):
            if axis is not None and f.axis is None:
                continue
            arg = "" if axis is None else f", {f.axis}={axis}"
            first = rng.uniform(-2, 2, size=shape)
            if f.shape == "weighted":
                axes = range(len(shape)) if axis is None else (axis if isinstance(axis, tuple)
                                                              else (axis,))
                out_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
                other = rng.uniform(0.5, 1.5, size=shape)
            else:
                out_shape, other = shape, rng.uniform(-1, 1, size=shape)
            arrays = {x: first, g: other, "C": rng.uniform(0.5, 1.5, size=out_shape)}
            yield (f"sum({f.name}({x}, {g}{arg}) * C)", {x: shape, g: shape, "C": out_shape},
                   arrays, axis)
        return
    (x,) = params
    if f.shape == "transposed":  # tall, wide and stacked, of full rank
        for shape in ((4, 3), (3, 4), (2, 4, 3)):
            X = rng.uniform(-1, 1, size=shape) + 2 * np.eye(*shape[-2:])
            out_shape = (*shape[:-2], shape[-1], shape[-2])
            C = rng.uniform(0.5, 1.5, size=out_shape)
            yield f"sum({f.name}({x}) * C)", {x: shape, "C": out_shape}, {x: X, "C": C}, None
        return
    if f.shape in ("square", "square_scalar", "square_pair", "square_triple"):
        for shape in ((3, 3), (2, 3, 3)):
            X = rng.uniform(-1, 1, size=shape) + 3 * np.eye(3)
            flipped = X.copy()
            flipped[..., 0, :] *= -1  # a negative determinant too, where f is defined there
            if f.shape != "square" and _finite(f, {x: flipped}, params):
                X = flipped
            out_shape = shape[:-2] + shape[-2:] * SQUARE_PAIRS[f.shape]
            C = rng.uniform(0.5, 1.5, size=out_shape)
            yield f"sum({f.name}({x}) * C)", {x: shape, "C": out_shape}, {x: X, "C": C}, None
        return
    # Without an axis too: the language's default (the last axis for `same`, every axis for
    # `reduce`), which the generated code and the interpreter pass to the implementation.
    for shape, axis in (((4,), None), ((3, 4), None), ((3, 4), 0), ((2, 3, 4), (0, 2))):
        if axis is not None and f.axis is None:
            continue  # a primitive without an axis keyword works on whole arrays only
        X = rng.uniform(-2, 2, size=shape)
        arg = "" if axis is None else f", {f.axis}={axis}"
        if f.shape == "same":
            out_shape = shape
        else:
            axes = range(len(shape)) if axis is None else (axis if isinstance(axis, tuple)
                                                          else (axis,))
            out_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
        C = rng.uniform(0.5, 1.5, size=out_shape)
        yield (f"sum({f.name}({x}{arg}) * C)", {x: shape, "C": out_shape}, {x: X, "C": C}, axis)


def _away_from_zero(rng, shape, lo: float, hi: float, signed: bool):
    v = rng.uniform(lo, hi, size=shape)
    return v * rng.choice([-1.0, 1.0], size=shape) if signed else v


def _finite(f, arrays, params) -> bool:
    try:
        with np.errstate(all="ignore"):
            value = resolve(f.impl, np)(*[arrays[p] for p in params])
        return bool(np.all(np.isfinite(value)))
    except KeyboardInterrupt:
        raise
    except BaseException:  # an implementation that rejects the inputs: try the next ones (its
        return False       # error, SystemExit included, is reported when it is called again)


# A definition's arguments are tried as vectors, then scalars, then square matrices: the first
# that lowers is used (norm(x) takes a vector, a quadratic form x @ A @ x a vector and a matrix
# would need per-argument shapes, which a definition does not declare).
_DEFINITION_SHAPES = (("n",), (), ("n", "n"))


def _check_definition(f: Function, rules: RuleBook, rng) -> RuleCheck:
    from ..check import random_inputs
    from ..lower.lower import lower
    from ..parse import parse
    call = f"{f.name}({', '.join(f.params)})"
    first_error = None
    if not f.params:  # no tensor (`def f(k=3) = k`): nothing to differentiate, it must expand
        try:
            lower(parse(call), {}, rules)
        except EinderivError as e:
            return RuleCheck(f, float("inf"), f"{call} does not expand: {e.message}")
        return RuleCheck(f, 0.0, "")
    for shape in _DEFINITION_SHAPES:
        shapes = {p: shape for p in f.params}
        try:
            value = lower(parse(call), shapes, rules).root
        except EinderivError as e:
            first_error = first_error or e
            continue
        shapes["C"] = value.shape
        source = f"sum({call} * C)"
        arrays = random_inputs(lower(parse(source), shapes, rules).declared, rng)
        worst = _worst(_gradient_error(source, shapes, p, rules, arrays) for p in f.params)
        return RuleCheck(f, worst, "" if np.isfinite(worst) else _NOT_FINITE)
    return RuleCheck(f, float("inf"), f"{call} does not expand: {first_error.message}")


def _gradient_error(source, shapes, wrt, rules, arrays) -> float:
    from ..check import finite_difference, relative_error
    from ..derive import derivatives
    from ..evaluate.plan import Plan
    from ..ir.nodes import Var
    from ..lower.lower import lower
    from ..parse import parse
    lowered = lower(parse(source), shapes, rules)
    # (through the Jacobian's rule, never a primitive's one-call vjp: the rule is what is checked)
    (gradient,) = derivatives(lowered.root, [Var(wrt, lowered.declared[wrt])], rules,
                              fused=False)
    symbolic = Plan([gradient], rules, accepted=lowered.declared)(arrays)[0]
    forward = Plan([lowered.root], rules, accepted=lowered.declared)
    with np.errstate(all="ignore"):
        numeric = finite_difference(lambda **a: forward(a)[0], arrays, wrt)
    if np.shape(symbolic) != np.shape(numeric):
        raise RuleError(f"the derivative by {wrt} has shape {np.shape(symbolic)}, not "
                        f"{np.shape(numeric)}")
    return relative_error(symbolic, numeric)
