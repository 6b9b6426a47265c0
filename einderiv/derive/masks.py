"""The chain rule's products, with a factor at a kink built as a select.

A derivative at a kink is piecewise constant, and 0 where the function is flat or by the kink's
convention: `step(x)` from relu, `sign(x)` from abs, `heaviside(a - b, 0.5)` from maximum,
`where(c, 1, 0)` from a select. Multiplied with the rest of a chain that is infinite there, it
gives 0 * inf = nan: the gradient of `sum(sqrt(relu(x)))` at x = -1 is `step(x) * 0.5 / sqrt(0)`,
though the function is flat there and its derivative 0 (JAX and PyTorch give 0). So the chain
rule multiplies by such a factor m as `where(m, m * rest, 0)` (`where(m, rest, 0)` when m is 0 or
1): the product where m is nonzero, and exactly 0 where it is 0, whatever the rest is. A
factor is piecewise constant by the rule tables: a function whose derivative rules are 0 in
every argument that is not itself constant (step, sign, heaviside, where with constant branches).

Such a select, once made, is a factor of the next derivative's products: `where(c, a, 0)` times
a factor that may be infinite where c is 0 (1 / sqrt(x) in the Hessian of
`where(step(x), sqrt(x), 0)`) takes it into its branch, `where(c, a * f, 0)`, and so does a sum
or product of selects that are all 0 where c is, a sum of selects on several conditions (0 where
all of them are), and a contraction over a select (0 where it is along every summed axis: the
masked tangent of a distance, whose pole factor -1 / r ** 2 is infinite on the masked pairs of
`sum(where(eye(n) > 0, 0, 1 / r))`).
"""
from __future__ import annotations

import weakref
from itertools import count
from typing import NamedTuple

from ..ir import build
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Size, Unit, Var
from ..parse import ast
from ..rulebook import RuleBook

# How deep a factor is searched for being piecewise constant, or finite by construction.
_DEPTH = 3
# How many selects nested in one another's branches a product is carried into: a chain of kinks
# (`maximum` after `maximum`, thousands of steps) nests one per step, and carrying the factors
# through every level was a recursion per step (RecursionError at 600 steps) and quadratic.
# Deeper, the factors multiply the select as they are.
MAX_BRANCH_NESTING = 8


def product(out, operands, sizes: dict, rules: RuleBook, memo: dict | None = None,
            nesting: int = 0) -> Node:
    """`build.contract(out, operands, sizes)`, with each piecewise-constant factor applied as a
    select over the factors that might be infinite (those of inputs and constants cannot).

    `memo` keeps, for one derivation, what each factor is (node -> a mask or not, and finite
    or not): the chain rule meets the same forward nodes again and again, and a long program
    must not pay the bounded searches below at every product."""
    memo = {} if memo is None else memo
    fresh = count(1 + max([0, *out, *(l for _, ls in operands for l in ls)]))
    factors = [f for node, labels in operands for f in _factors(node, labels, fresh)]
    masks, rest = [], []
    for factor in factors:
        node = factor[0]
        mask = memo.get(node)
        if mask is None:
            mask = memo[node] = not _constant(node) and _piecewise_constant(node, rules, _DEPTH)
        (masks if mask else rest).append(factor)
    selects = [f for f in rest if _vanishing(f[0], memo, _DEPTH) is not None]
    if not masks and not selects:
        return build.contract(out, operands, sizes)
    values, others = [], []  # what may be infinite where a mask is 0, and the rest
    for f in rest:
        finite = memo.get((f[0], "finite"))
        if finite is None:
            finite = memo[f[0], "finite"] = _finite(f[0], rules, _DEPTH)
        (others if finite else values).append(f)
    # An input is finite by construction only where the program reads it: `where` takes one
    # branch, and the data of the other (a nan target where a mask is 0) is never read, so the
    # chain rule's factors of that data must not multiply its 0 either:
    # `where(m > 0, (x - r) ** 2, 0)` has the derivative `2 * where(m > 0, x - r, 0)`, not
    # `2 * where(m > 0, 1, 0) * (x - r)`, which is nan where r is and m is 0. So with the
    # derivative of a `where` by a branch among the masks, or a select already made, every
    # factor that is not a constant and carries only axes the select runs over anyway goes
    # into it, at no cost (the factors that would widen it, the partner of a contraction,
    # stay out), or output axes besides all those it runs over (a mask per row,
    # `where(m[:, None] > 0, (X - R) ** 2, 0)`: the select is then shaped as that factor, a
    # term of the product's output). A kink's mask multiplies in the program too (`relu(x) *
    # w` is nan where w is), and so in its derivative: `step(x) * w` stays a product.
    if any(_is_select(m[0]) for m in masks) or any(
            _vanishing(f[0], memo, _DEPTH) is not None for f in values):
        carried = {l for _, ls in masks + values for l in ls}
        while True:
            moved = [f for f in others if not _constant(f[0]) and (
                set(f[1]) <= carried or carried <= set(f[1]) <= set(out))]
            if not moved:
                break
            values += moved
            others = [f for f in others if not any(f is g for g in moved)]
            carried.update(l for _, ls in moved for l in ls)
    dims = dict(sizes)
    for node, labels in factors:
        dims.update(zip(labels, node.shape))
    selects = [f for f in values if _vanishing(f[0], memo, _DEPTH) is not None]
    if selects and len(values) > 1 and nesting < MAX_BRANCH_NESTING:
        # A select with a zero branch, where(c, a, 0), times what may be infinite where c is
        # 0 (the chain rule's next factor, 1 / sqrt(x) at x = 0 in the Hessian of
        # where(step(x), sqrt(x), 0)): the others go into its other branch, where(c, a * f, 0),
        # so that they are never multiplied by its 0. So for a sum or product that is 0 where c
        # is: where(c, (where(c, a, 0) + where(c, b, 0)) * f, 0).
        values = [_into_branch(selects[0], [f for f in values if f is not selects[0]], out,
                               dims, rules, memo, nesting)]
        if not masks:
            return build.contract(out, [*values, *others], sizes)
    elif selects and masks and nesting < MAX_BRANCH_NESTING:
        # ... and a mask, which may be nan where c is 0 (sign(x - r) at a nan target the
        # select of `where(m > 0, abs(x - r) ** 3, 0)` never reads): into its branch too,
        # where(c, where(mask, a * mask, 0), 0), not where(mask, mask * where(c, a, 0), 0).
        return build.contract(out, [_into_branch(selects[0], [
            *[f for f in values if f is not selects[0]], *masks], out, dims, rules, memo,
            nesting), *others], sizes)
    # A kink's mask beside the derivative of a `where` may be nan where the select never reads
    # (sign(x - r) at a nan target, in `where(m > 0, abs(x - r), 0)`): it is a factor of the
    # select's branch, where(c, where(sign(x - r), sign(x - r), 0), 0), not of its 0.
    kinks = []
    if any(_is_select(m[0]) for m in masks) and nesting < MAX_BRANCH_NESTING:
        kinks = [m for m in masks if not _is_select(m[0])]
        masks = [m for m in masks if _is_select(m[0])]
        values = values + kinks
    if not masks or not values:
        return build.contract(out, operands, sizes)
    # The select runs over every axis a mask or a value carries, output axes first.
    carried = {l for _, ls in masks + values for l in ls}
    axes = tuple(l for l in out if l in carried) + tuple(
        dict.fromkeys(l for _, ls in masks + values for l in ls if l not in out))
    on_axes = {l: dims[l] for l in axes}
    value = product(axes, values, on_axes, rules, memo, nesting + 1) if kinks else \
        build.contract(axes, values, on_axes)
    if build.is_zero(value):
        return build.contract(out, operands, sizes)
    for mask, labels in masks:
        if mask.rank:  # laid on the select's axes; a scalar is an argument as it is
            mask = build.contract(axes, [(mask, labels)], on_axes)
        value = _select(mask, value, axes, on_axes)
    return build.contract(out, [(value, axes), *others], sizes)


def _is_select(mask: Node) -> bool:
    """A `where` with constant branches (`where(c, 1, 0)`, a derivative of `where` by a
    branch), or a product with one."""
    if isinstance(mask, Map):
        return mask.fn == "where" and all(build.constant_value(b) is not None
                                          for b in mask.args[1:])
    if isinstance(mask, Contract) and build._is_product(mask):
        return any(_is_select(n) for n, _ in mask.operands)
    return False


def _select(mask: Node, value: Node, axes, dims) -> Node:
    """`mask * value`, 0 where the mask is 0: the select on `mask`'s own condition where it is
    one (`where(c, p, q)` with constant branches), as `where(mask, value, 0)` for a 0/1 step."""
    zero = Const(0.0)
    if isinstance(mask, Map) and mask.fn == "where" and all(
            build.constant_value(b) is not None for b in mask.args[1:]):
        c, p, q = mask.args
        branches = [build.scale(build.constant_value(b), value) if build.constant_value(b)
                    else zero for b in (p, q)]
        return build.elementwise("where", [c, *branches])
    if _zero_one(mask):
        return build.elementwise("where", [mask, value, zero])
    scaled = build.contract(axes, [(mask, axes[:mask.rank]), (value, axes)], dims)
    return build.elementwise("where", [mask, scaled, zero])


def _zero_branch(node: Node) -> int | None:
    """For a select with one branch a constant 0, `where(c, a, 0)` or `where(c, 0, b)`, the
    position of its other branch (1 or 2); None for any other node."""
    if not (isinstance(node, Map) and node.fn == "where"):
        return None
    _, p, q = node.args
    if build.is_zero(q) and not build.is_zero(p):
        return 1
    if build.is_zero(p) and not build.is_zero(q):
        return 2
    return None


class _Vanishing(NamedTuple):
    """Where a factor is 0 whatever the rest of a product is: wherever `cond` is 0 (`branch`
    1) or nonzero (`branch` 2), laid on the factor's own axes (or a scalar). `select` is the
    factor itself where it is a select with a zero branch (`where(cond, a, 0)`), whose branch
    then replaces it; None where the factor has a select among its parts."""
    select: Node | None
    cond: Node
    branch: int


def _vanishing(node: Node, memo: dict, depth: int) -> _Vanishing | None:
    """For a factor that is 0 wherever a select with a zero branch is: the factor itself
    (`where(c, a, 0)` or `where(c, 0, b)`), an elementwise product with such a factor, a sum
    whose terms are each 0 somewhere (0 where all of them are), or a contraction with such an
    operand (0 where the operand is, along every summed axis: the masked tangent of a distance
    `sum(where(m, d, 0), axis=2)`, whose pole factor -1 / r ** 2 is infinite where m is 0).
    None for any other node."""
    known = memo.get((node, "vanishing"), False)
    if known is not False:
        return known
    found = None
    k = _zero_branch(node)
    if k is not None:
        found = _Vanishing(node, node.args[0], k)
    elif depth > 1 and isinstance(node, Add):
        parts = [_vanishing(t, memo, depth - 1) for _, t in node.terms]
        if all(p is not None for p in parts):
            if all(_key(p) == _key(parts[0]) for p in parts):
                found = _Vanishing(None, parts[0].cond, parts[0].branch)
            elif all(_laid_as(p.cond, node) for p in parts):
                # each term 0 on its own condition (a mask per particle): the sum is 0 where
                # every term is, and may be nonzero where any may be
                region = _region(parts[0])
                for p in parts[1:]:
                    region = build.elementwise("where", [region, Const(1.0), _region(p)])
                found = _Vanishing(None, region, 1)
    elif depth > 1 and isinstance(node, Contract):
        if build._is_product(node):
            for n, labels in node.operands:
                if labels == node.out:
                    inner = _vanishing(n, memo, depth - 1)
                    if inner is not None:
                        found = _Vanishing(None, inner.cond, inner.branch)
                        break
        if found is None:
            found = _contracted(node, memo, depth)
    memo[node, "vanishing"] = found
    return found


def _contracted(node: Contract, memo: dict, depth: int) -> _Vanishing | None:
    """A contraction with an operand that is 0 somewhere: 0 wherever that operand is 0 along
    every axis summed, so where the sum of its 0/1 region over those axes is 0."""
    sizes = dict(enumerate(node.dims))
    for n, labels in node.operands:
        inner = _vanishing(n, memo, depth - 1) if n.rank else None
        if inner is None or not _laid_as(inner.cond, n):
            continue
        region = _region(inner)
        if region.rank:
            region = build.contract(node.out, [(region, labels)], sizes)
        return _Vanishing(None, region, 1)
    return None


def _laid_as(cond: Node, node: Node) -> bool:
    """Whether a condition is on `node`'s axes (or a scalar): a select's, laid on them."""
    return cond.rank == 0 or cond.shape == node.shape


def _region(vanishing: _Vanishing) -> Node:
    """1 where the factor may be nonzero, 0 where it is 0 (a nonnegative 0/1 array, which a
    sum over axes keeps nonzero exactly where some entry is)."""
    one, zero = Const(1.0), Const(0.0)
    c = vanishing.cond
    return build.elementwise("where", [c, one, zero] if vanishing.branch == 1 else [c, zero, one])


def _key(vanishing: _Vanishing | None):
    """What a select vanishes on, as a key: its condition, and which branch is 0."""
    return None if vanishing is None else (vanishing.cond, vanishing.branch)


def _into_branch(factor, values, out, dims, rules, memo, nesting=0):
    """`factor * values`, the factor 0 where the condition c of the select it vanishes with
    (`_vanishing`) says, as `where(c, factor * values, 0)` (or the mirror image), laid on the
    axes that they carry, output axes first: (the select, its labels). A select is replaced
    by its branch: `where(c, a, 0) * f` is `where(c, a * f, 0)`."""
    node, labels = factor
    axes = tuple(l for l in out if l in {l for _, ls in [factor, *values] for l in ls})
    axes += tuple(dict.fromkeys(l for _, ls in [factor, *values] for l in ls if l not in axes))
    on_axes = {l: dims[l] for l in axes}
    vanishing = _vanishing(node, memo, _DEPTH)
    k = vanishing.branch
    if vanishing.select is node:
        branch = node.args[k]
        # The branch's product is one of the chain rule's too: a select in it is handled alike.
        inner = product(axes, [(branch, labels if branch.rank else ()), *values], on_axes,
                        rules, memo, nesting + 1)
    else:  # a sum or product of selects on c: each term is its branch where c holds
        inner = build.contract(axes, [factor, *values], on_axes)
    c = vanishing.cond
    args = [build.contract(axes, [(c, labels)], on_axes) if c.rank else c, Const(0.0),
            Const(0.0)]
    args[k] = inner
    return build.elementwise("where", args), axes


_COMPARISONS = frozenset(ast.COMPARISONS.values())  # `x > 0` is the mask greater(x, 0)


def _zero_one(node: Node) -> bool:
    """A step: 0 or 1 only (`step(x)`, `heaviside(x, 0)`, `heaviside(x, 1)`, a comparison)."""
    if not isinstance(node, Map):
        return False
    if node.fn == "step" or node.fn in _COMPARISONS:
        return True
    return node.fn == "heaviside" and build.constant_value(node.args[1]) in (0.0, 1.0)


def _factors(node: Node, labels, fresh) -> list:
    """The factors of a product (a contraction that sums only size-1 axes and places every
    output axis on some operand), relabelled to `labels`; any other node is one factor."""
    if not (isinstance(node, Contract) and build._is_product(node)):
        return [(node, labels)]
    mapping = dict(zip(node.out, labels))
    if not all(any(l in ls for _, ls in node.operands) for l in node.out):
        return [(node, labels)]  # a broadcast axis: its size lives only in the contraction
    for l in range(len(node.dims)):
        if l not in mapping:
            mapping[l] = next(fresh)
    return [(n, tuple(mapping[l] for l in ls)) for n, ls in node.operands]


def _constant(node: Node) -> bool:
    return isinstance(node, (Const, Delta, Unit, Size)) or build.constant_value(node) is not None


def _piecewise_constant(node: Node, rules: RuleBook, depth: int) -> bool:
    """Whether `node` is a piecewise-constant function of the inputs (and not a constant)."""
    if depth == 0 or _constant(node):
        return False
    if isinstance(node, Map):
        if all(_constant(a) for a in node.args):
            return False  # a function of constants is a constant
        return all(_constant(a) or _zero_rule(node.fn, k, rules)
                   or _piecewise_constant(a, rules, depth - 1) for k, a in enumerate(node.args))
    children = [t for _, t in node.terms] if isinstance(node, Add) else \
        [n for n, _ in node.operands] if isinstance(node, Contract) else None
    if not children:
        return False
    return all(_constant(c) or _piecewise_constant(c, rules, depth - 1) for c in children) \
        and not all(_constant(c) for c in children)


# (frozen rule book) -> {(function, position): whether its rule there is 0}: asked for every
# factor of every product of a derivation, about a handful of functions.
_ZERO_RULES: "weakref.WeakKeyDictionary[RuleBook, dict]" = weakref.WeakKeyDictionary()


def _zero_rule(fn: str, position: int, rules: RuleBook) -> bool:
    if not rules.frozen:  # an unfrozen book may still gain or replace rules
        return _is_zero_rule(fn, position, rules)
    known = _ZERO_RULES.get(rules)
    if known is None:
        known = _ZERO_RULES.setdefault(rules, {})
    zero = known.get((fn, position))
    if zero is None:
        zero = known[fn, position] = _is_zero_rule(fn, position, rules)
    return zero


def _is_zero_rule(fn: str, position: int, rules: RuleBook) -> bool:
    from .partials import rule_body
    rule = rules.derivative(fn, position)
    if rule is None:
        return False
    body = rule_body(rule)
    return isinstance(body, ast.Number) and body.value == 0


def _finite(node: Node, rules: RuleBook, depth: int) -> bool:
    """Finite by construction: made of inputs (taken as finite: the rules are exact for finite values first) and constants
    by sums and products, and of piecewise-constant functions. Anything else may overflow."""
    if isinstance(node, Var) or _constant(node):
        return True
    if depth == 0:
        return False
    if isinstance(node, (Add, Contract)):
        return all(_finite(c, rules, depth - 1) for c in node.children())
    return _piecewise_constant(node, rules, depth)
