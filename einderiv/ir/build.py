"""Build IR with numpy semantics: broadcasting, matmul, transposes, reductions, indexing.

These are the only constructors lowering uses, so every shape rule of the language
(docs/language.md) lives here. They also fold the trivial cases (products with 1, sums of one
term, nested products) so the IR that reaches later stages is already small.
"""
from __future__ import annotations

import math
from itertools import count, groupby, permutations, product
from math import factorial

import numpy as np

from ..errors import ShapeError
from .deltas import contract_units, free_of_poles, is_structure, is_window
from .dims import ONE, Dim, show_shape
from .nodes import Add, Const, Contract, Delta, Map, Node, Prim, Size, Unit

ZERO = Dim(None, 0)
# Inlining nested products stops at this many operands: `a = a * a` repeated would otherwise
# double the operand list at every step, and a product shared along a chain (`h = tanh(h) * h`)
# would be copied into every later one. Eight covers the products people write.
MAX_INLINED_OPERANDS = 8
# A product with repeated factors is compared with others in each order of its repeats, up to
# this many orders (then in the order given: equal terms may stay apart, never unequal ones meet).
MAX_LIKE_ORDERS = 24
# Factoring takes at most this many common factors out of one sum: each is a pass over all its
# terms, and the Hessian of a chain of n quotients has n terms sharing n factors (quadratic:
# 33 s at n = 1000 without the bound). The factors people see factored are one or two.
MAX_COMMON_FACTORS = 16
# A factor that may be infinite is multiplied into each term of a sum of unit-placed terms
# (`c * (a e_i + b e_j)` -> `(c a) e_i + (c b) e_j`) only while the product so multiplied out
# has at most this many terms: each is one more product of the same operands (shared nodes,
# not copies), so the IR grows by a bounded factor per product, never exponentially through
# sums nested under sums. The reverse pass's adjoints at a pole are a few picks per step. Past
# it, the terms that are one value times a 0/1 pattern count one together (`_parts`:
# `t1 * (e_1 + e_3 + ...)` of many steps that read one pole), which the vectorizer and the
# interpreter place exactly, however many they are.
MAX_DISTRIBUTED_TERMS = 8


def _named(name: str | None, node: Node) -> str:
    return f"{name} {show_shape(node.shape)}" if name else show_shape(node.shape)


def broadcast_shapes(a: Node, b: Node, names=(None, None), op: str = "combine") -> tuple[Dim, ...]:
    out = []
    for i in range(1, max(a.rank, b.rank) + 1):
        da = a.shape[-i] if i <= a.rank else ONE
        db = b.shape[-i] if i <= b.rank else ONE
        if da == db or db == ONE:
            out.append(da)
        elif da == ONE:
            out.append(db)
        else:
            raise ShapeError(
                f"cannot {op} {_named(names[0], a)} with {_named(names[1], b)}: dimension {da} "
                f"does not match {db} (axis {-i})",
                hint="numpy broadcasting needs equal dimensions or 1; give equal sizes one name, "
                     "or declare one in terms of the other (y: [n - 1], z: [2 * n])")
    return tuple(reversed(out))


def broadcast_to(node: Node, shape: tuple[Dim, ...]) -> Node:
    """`node` broadcast to `shape` (numpy rules; the caller has checked they are compatible)."""
    if node.shape == tuple(shape):
        return node
    out = tuple(range(len(shape)))
    lead = len(shape) - node.rank
    labels = []
    fresh = count(len(shape))
    for axis, dim in enumerate(node.shape):
        target = lead + axis
        # A size-1 axis stretched to a longer one is summed over its single entry.
        labels.append(target if dim == shape[target] else next(fresh))
    broadcast = {l: shape[l] for l in out}
    return contract(out, [(node, tuple(labels))], broadcast)


def const(value: float) -> Node:
    return Const(value)


def contract(out, operands, broadcast: dict | None = None) -> Node:
    """A `Contract`, with constants folded and operands that are plain products inlined."""
    broadcast = dict(broadcast) if broadcast else {}
    flat: list = []
    scale = 1.0
    fresh = None  # labels for the summed axes of inlined products, made when first needed
    work = list(operands)
    # Every node built goes through here: the folds below are looked for only where they can
    # apply (constants, deltas and quotients noted in this one pass over the operands).
    constants = deltas = quotients = sums = False
    while work:
        node, labels = work.pop(0)
        kind = type(node)
        if kind is Const:
            scale *= node.value
            continue
        if kind is Contract:
            ops = node.operands
            if len(flat) + len(work) + len(ops) <= MAX_INLINED_OPERANDS and _is_product(node):
                # Inline: the inner output labels become ours; inner summed labels are
                # size-1 axes.
                if fresh is None:
                    fresh = count(1 + max([*out, *(l for _, ls in operands for l in ls),
                                           *(l for _, ls in flat for l in ls),
                                           *(l for _, ls in work for l in ls)], default=-1))
                mapping = dict(zip(node.out, labels))
                for l in range(len(node.dims)):
                    if l not in mapping:
                        mapping[l] = next(fresh)
                for pos, l in enumerate(node.out):
                    broadcast.setdefault(labels[pos], node.dims[l])
                work[0:0] = [(n, tuple([mapping[l] for l in ls])) for n, ls in ops]
                continue
            if len(ops) == 1 and type(ops[0][0]) is Const:
                constants = True  # a broadcast constant, not inlined
        elif kind is Delta or kind is Unit or kind is Prim and is_window(node):
            deltas = True
        elif kind is Map and node.fn == "div":
            quotients = True
        elif kind is Add:
            sums = True
        flat.append((node, tuple(labels)))
    # `0 * x` is 0 for every x (as symbolic tools have it), but a constant zero times an
    # infinite or nan constant is nan, as in float64: that product is left to evaluation.
    if scale == 0.0 or constants:
        values = [scale, *(c for c in map(constant_value, (n for n, _ in flat))
                           if c is not None)]
        if 0.0 in values and all(np.isfinite(c) for c in values):
            return zeros(_shape_of(out, operands, broadcast))
    if sums:
        spread = _over_unit_terms(out, flat, scale, broadcast)
        if spread is not None:
            return spread
    # A broadcast axis of an inlined product that is summed here is carried by no operand:
    # all its entries are equal, so the sum over it multiplies by its size.
    if broadcast:
        carried = {l for _, ls in flat for l in ls}
        for l, dim in broadcast.items():
            if l not in out and l not in carried:
                if dim.is_concrete:
                    scale *= dim.offset
                else:
                    flat.append((Size(dim), ()))
        flat = _size_one_labels_met(out, flat, broadcast, carried)
    if deltas:
        flat, factor = _eliminate_deltas(flat, set(out))
        scale *= factor
        flat = contract_units(flat, set(out))
        if flat is None:  # a pick outside the window it meets: exactly zero
            return zeros(_shape_of(out, operands, broadcast))
        pair = _window_pair(flat, out)
        if pair is not None:
            if len(pair) == 2:  # one window, and a sum of windows on the same summed row
                sizes = dict(zip(out, _shape_of(out, operands, broadcast)))
                (k, _), (s, _) = pair
                return add([(scale * c, contract(out, [*flat[:s], (t, flat[s][1]),
                                                       *flat[s + 1:]], sizes))
                            for c, t in flat[s][0].terms])
            flat = _split_windows(flat, out, *pair)
    if quotients:
        flat = _cancel_reciprocals(flat)
        cancelled = _cancel_quotients(flat)
        if cancelled is not None:  # built again: what is left may fold or cancel further
            if scale != 1.0:
                cancelled.insert(0, (Const(scale), ()))
            return contract(out, cancelled, {l: d for l, d in broadcast.items() if l in out})
    if not math.isfinite(scale):
        # An infinite or nan constant joins a product among the operands that is not inlined
        # (`inf * sum(x[2:5])`, `inf * delta[k+1,i] * (exp(x)[k+1] * delta[k+1,j])`), where
        # it multiplies that product's values only, as the product places them: outside, it
        # multiplied the zeros they are placed among too (a slice's pad, a placed diagonal:
        # inf * 0 = nan in the code and in a printed formula).
        for k, (node, labels) in enumerate(flat):
            if type(node) is Contract and constant_value(node) is None:
                flat[k] = (contract(node.out, [(Const(scale), ()), *node.operands],
                                    {l: node.dims[l] for l in node.out}), labels)
                scale = 1.0
                break
    if not flat or scale != 1.0:
        flat.insert(0, (Const(scale), ()))
    out = tuple(out)
    if len(flat) == 1 and flat[0][1] == out and flat[0][0].rank == len(out):
        return flat[0][0]
    for l in out:
        if l not in broadcast and not any(l in ls for _, ls in flat):
            broadcast[l] = _shape_of(out, operands, broadcast)[out.index(l)]
    return Contract(out, flat, broadcast)


def _size_one_labels_met(out, flat: list, broadcast: dict, carried: set) -> list:
    """`flat` with each summed label of size 1 renamed to an output label of size 1 that no
    operand carries: the sum over one entry, broadcast along another axis of one entry, is
    that entry there (`sum_a f[a] * 1[o]` is `f[o]`). A Jacobian's seed has no delta for an
    axis of size 1 (its identity is 1: derive/reverse.py), and this is what that delta did
    when it met the summed axis: without it `x[None]`'s Jacobian read as a sum over an axis
    of one entry, then broadcast."""
    free = [l for l in out if l not in carried and broadcast.get(l) == ONE]
    if not free:
        return flat
    summed = []
    for node, labels in flat:
        for l, d in zip(labels, node.shape):
            if d == ONE and l not in out and l not in summed:
                summed.append(l)
    if not summed:
        return flat
    renamed = dict(zip(summed, free))
    return [(node, tuple([renamed.get(l, l) for l in labels])) for node, labels in flat]


def _over_unit_terms(out, flat: list, scale: float, broadcast: dict) -> Node | None:
    """The product multiplied out over a sum of unit-placed terms (`_unit_terms`) on output
    labels when another of its factors may be infinite: `c * (a e_i + b e_j)` ->
    `(c a) e_i + (c b) e_j`. Kept whole, the sum is a dense vector whose zeros (where no term
    reaches) meet c: at a pole (c = 1 / x[p] at x[p] = 0) inf * 0 = nan down the pole's column
    of a Hessian on every path, where the derivative is an exact 0 (the reverse pass builds
    such products: an adjoint, a sum of picks, times a local partial). Multiplied out, each
    unit vector carries its own factor, which the vectorizer and the interpreter place exactly
    (`c * a e_i` is c * a at i, 0 elsewhere). None where nothing is to be multiplied out."""
    out_labels = set(out)
    candidates = [(p, node, labels) for p, (node, labels) in enumerate(flat)
                  if type(node) is Add and labels and out_labels.issuperset(labels)]
    if not candidates:
        return None
    spread, count, parts = None, 1, None
    for p, node, labels in candidates:
        if not _meets_infinite(flat, p, labels, scale):
            continue
        found = _parts(node, MAX_DISTRIBUTED_TERMS // count)
        if found is not None:
            count *= found[1]
            if spread is None and found[0] is not None:
                spread, parts = p, found[0]
    if spread is None or count > MAX_DISTRIBUTED_TERMS:
        return None
    node, labels = flat[spread]
    others = [op for p, op in enumerate(flat) if p != spread]
    if scale != 1.0:
        others.insert(0, (Const(scale), ()))
    # (each product may multiply out over another sum in it: the count bounds them all)
    return _sum_as_is([(c, contract(out, [*others, (t, labels)], broadcast))
                       for c, t in parts])


def _meets_infinite(flat: list, p: int, labels, scale: float) -> bool:
    """Whether the sum flat[p] meets a factor that may be infinite on none of its own labels
    (a scalar, `1 / x[2]`, or a vector on another axis): broadcast over the sum, it meets the
    sum's structural zeros. (A factor on the sum's own axis, `(1 / s)[i] * (a e_0[i] e_1[j] +
    ...)`, is left: the vectorizer writes each unit row times it as `v[:, None] * eye(n)[..]`
    either way, and multiplied out its rows would lose their exact placement.) A pole only
    (`free_of_poles`): exp and the like are infinite only past overflow, and multiplied out
    over the adjoints of unrolled steps they split what lanes.py batches (the Hessian of
    `sum_t x[t] x[t+1] exp(x[t+2])` grew with the steps: 2999 -> 7643 characters)."""
    if not np.isfinite(scale):
        return True
    return any(q != p and not free_of_poles(node) and set(ls).isdisjoint(labels)
               for q, (node, ls) in enumerate(flat))


def _unit_terms(node: Node, budget: int) -> int | None:
    """How many products a factor times `node` becomes when multiplied out over `node`'s sums
    whose every term is unit-placed: a unit vector, a window or delta, or a product with one
    on its own output axes (values times picks: `x[3] e_2 + log(x[2]) e_3`), a sum of such
    terms (`_parts`), or such a product of sums. None for anything else (a dense term: its
    zeros are not structural) or past `budget`."""
    kind = type(node)
    if kind is Unit or kind is Delta or is_window(node):
        return 1
    if kind is Add:
        found = _parts(node, budget)
        return None if found is None else found[1]
    if kind is not Contract:
        return None
    placed, total = False, 1
    for operand, labels in node.operands:
        if not any(l in node.out for l in labels):
            continue  # (a pick on a summed label reads a value: no structure of the result)
        operand_kind = type(operand)
        if operand_kind is Add:
            found = _unit_terms(operand, budget // total)
            if found is not None:
                placed, total = True, total * found
        elif operand_kind is Unit or operand_kind is Delta or is_window(operand) or \
                operand_kind is Contract and is_structure(operand):
            placed = True  # (a pattern that sums, `sum(eye(10)[8:], axis=1)`, is one too)
    return total if placed and total <= budget else None


def _parts(node: Add, budget: int) -> tuple[list | None, int] | None:
    """The terms of the sum of unit-placed terms `node` that a factor is multiplied into, and
    how many products that makes (`_unit_terms`), within `budget`; None past it or for a sum
    with a dense term. Its terms one by one while they fit. Past that, the terms that are one
    value times a 0/1 pattern (`_valued_pattern`: `e_1 + e_3 + ...`, or `t1 e_3 + t1 e_5 +
    ...`, of unrolled steps that read one pole) are grouped by the value, each group one
    product, `t1 * (e_3 + e_5 + ...)`, which counts one: a factor times it is placed exactly
    where the pattern is nonzero, with no bound on its terms (the vectorizer by pads and
    dilations, `contraction._unit_sum_on_output`, or a select; the interpreter by a mask).
    (None, 1) where `node` is one such pattern itself: nothing to multiply out."""
    total = 0
    for _, term in node.terms:
        found = _unit_terms(term, budget - total)
        if found is None:
            break
        total += found
        if total > budget:
            break
    else:
        return list(node.terms), total
    groups: dict = {}  # id of the value (or None: a pattern alone) -> [value, its patterns]
    rest = []
    for c, term in node.terms:
        split = _valued_pattern(term) if math.isfinite(c) else None
        if split is None:
            rest.append((c, term))
            continue
        value, pattern = split
        groups.setdefault(None if value is None else id(value), [value, []])[1].append(
            (c, pattern))
    if not any(len(patterns) > 1 for _, patterns in groups.values()):
        return None
    if not rest and list(groups) == [None]:
        return None, 1
    out = tuple(range(node.rank))
    parts = []
    for value, patterns in groups.values():
        if len(patterns) == 1:
            rest.append(patterns[0] if value is None else
                        (patterns[0][0], contract(out, [(value, ()), (patterns[0][1], out)])))
            continue
        # (the value times the patterns' sum as it stands: through `contract`, the value,
        # which may be infinite too, would be multiplied out over them again)
        total = _sum_as_is(patterns)
        parts.append((1.0, total if value is None else
                      Contract(out, [(value, ()), (total, out)])))
    total = len(parts)
    for _, term in rest:
        found = _unit_terms(term, budget - total)
        if found is None:
            return None
        total += found
        if total > budget:
            return None
    return parts + rest, total


def _valued_pattern(term: Node) -> tuple[Node | None, Node] | None:
    """`term` as a value (a scalar: no axis of the result) times a 0/1 pattern on the output
    (`is_structure`: unit vectors, windows, their products): (the value, or None where it is
    1, the pattern); None where `term` is not such a product (a value on the pattern's own
    axes, `x[k] * delta[k, i]`, is not)."""
    if is_structure(term):
        return None, term
    if type(term) is not Contract:
        return None
    out = set(term.out)
    placed = [(n, ls) for n, ls in term.operands if out.intersection(ls)]
    if not placed or not all(is_structure(n) for n, _ in placed):
        return None
    # (a summed label a pattern shares with another pattern only: contracted within it)
    on_pattern = {l for _, ls in placed for l in ls}
    values = [(n, ls) for n, ls in term.operands if not out.intersection(ls)]
    if any(on_pattern.intersection(ls) and not is_structure(n) for n, ls in values):
        return None
    placed += [(n, ls) for n, ls in values if on_pattern.intersection(ls)]
    values = [(n, ls) for n, ls in values if not on_pattern.intersection(ls)]
    if not values:
        return None, term
    sizes = {l: term.dims[l] for l in term.out}
    return contract((), values), contract(term.out, placed, sizes)


def _sum_as_is(terms: list[tuple[float, Node]]) -> Node:
    """The sum of `terms`, like terms merged but no factor taken out: `add` would take the
    factor just multiplied in out again."""
    total, kept = _merged_sum(terms)
    return total if kept is None else Add(kept)


def _eliminate_deltas(flat: list, out: set) -> tuple[list, float]:
    """Contract identity deltas against summed indices: `X[i,j]*delta[j,k]` -> `X[i,k]`.

    A delta whose both indices are free stays: it is the sparse diagonal structure of the
    result (the Jacobian of an elementwise function), kept exact rather than materialized.
    """
    factor = 1.0
    changed = True
    while changed:
        changed = False
        for k, (node, labels) in enumerate(flat):
            if not (isinstance(node, Delta) and node.is_identity):
                continue
            a, b = labels
            if a == b:  # delta[i,i] is 1; summed over i alone, it counts i's size
                n = node.shape[0]
                del flat[k]
                if a not in out and not any(a in ls for _, ls in flat):
                    if n.is_concrete:
                        factor *= n.offset
                    else:
                        flat.append((Size(n), ()))
                changed = True
                break
            if b not in out:
                keep, drop = a, b
            elif a not in out:
                keep, drop = b, a
            else:
                continue
            # The delta itself becomes delta[keep,keep], removed by the case above (which
            # counts the size when nothing else carries `keep`).
            flat = [(n, tuple(keep if l == drop else l for l in ls)) for n, ls in flat]
            changed = True
            break
    return flat, factor


def _window_pair(flat: list, out) -> tuple | None:
    """Two windows on one summed row label `k` whose columns are output labels, with a plain
    operand on `k` too: `A[k] * d1[k,i] * d2[k,j]` (a stencil's Hessian). Neither window can
    become a slice or pad of its partner, since `k` has two: printed and evaluated as they
    stand, they are dense selection matrices multiplied together (O(n^3) for an n-by-n
    answer). Returns (k, position of d1, position of d2); or ((k, position of d1), (position
    of a sum of windows on `k`, None)) when the second window is in each term of such a sum
    (the stencil's Jacobian, shared), with a plain operand on `k` in the product or in the
    sum: multiplied out, each term has two. None otherwise."""
    rows: dict = {}  # summed label -> positions of the windows with it as their row
    for p, (node, labels) in enumerate(flat):
        if is_window(node) and labels[0] not in out and labels[1] in out and \
                labels[0] != labels[1]:
            rows.setdefault(labels[0], []).append(p)
    if not rows:
        return None
    for k, windows in rows.items():
        plain = [p for p, (node, labels) in enumerate(flat)
                 if k in labels and type(node) not in (Delta, Add, Unit) and not is_window(node)]
        if len(windows) > 1:
            i, j = (flat[p][1][1] for p in windows[:2])
            # (every k-th rows, lanes.py's, are placed apart by the vectorizer as they stand:
            # contraction._apart_selections)
            if plain and i != j and all(type(flat[p][0]) is Delta for p in windows[:2]):
                return k, windows[0], windows[1]
            continue
        for p, (node, labels) in enumerate(flat):
            # (windows alone are a selection, which is its own answer)
            if type(node) is Add and labels.count(k) == 1 and \
                    _window_row(node, labels, k, out) and (plain or not is_structure(node)):
                return (k, windows[0]), (p, None)
    return None


def _window_row(term: Node, labels, k, out) -> bool:
    """Is `term`, on `labels`, a (scaled) window with row `k` and its column an output label
    other than `k`, times vectors on its row alone (`x[l] * delta[l+1,i]`, of the Hessian of
    `sum(exp(x[1:]) * x[:-1])`: multiplied out, each term has two windows on k, placed in
    O(n), where the sum whole was a dense n x n matrix multiplied with another, O(n^3)), or a
    sum of such terms, or vectors on its row times such a sum (lanes.py's batch of a step's
    sum, `x[3t] e_(3t+1) + (x[3t+2] e_(3t) + e_(3t+2)) * x[3t+1]` of every step t: every k-th
    rows, multiplied as selection matrices in O(steps n^2))?"""
    kind = type(term)
    if kind is Add:
        return len(term.terms) <= MAX_INLINED_OPERANDS and \
            all([_window_row(t, labels, k, out) for _, t in term.terms])
    if kind is Contract:
        ops = [(n, ls) for n, ls in term.operands if type(n) is not Const]
        placed = [(n, ls) for n, ls in ops if n.rank == 2]
        if len(placed) != 1 or sorted(placed[0][1]) != [0, 1] or term.out != (0, 1):
            return False
        node, (r, c) = placed[0]
        if any(n is not node and (n.rank != 1 or ls != (r,)) for n, ls in ops):
            return False
        return type(node) is not Contract and _window_row(node, (labels[r], labels[c]), k, out)
    return is_window(term) and labels[0] == k and labels[1] in out and labels[1] != k


def _split_windows(flat: list, out, k, first: int, second: int) -> list:
    """`A[k] * d1[k,i] * d2[k,j]` summed over k -> `d1[k,i] * V[k,j]` with `V[k,j] =
    A[k] * d2[k,j]` (k, j free): the product on the second window's column first, so that the
    first window is a pad of one operand (O(size), in the generated code and the IR
    interpreter alike). `V` is built whole, the product around it as it stands: passed back
    through `contract`, `V` (which sums nothing) would be inlined again."""
    members = [p for p, (_, labels) in enumerate(flat) if k in labels and p != first]
    inside = [flat[p] for p in members]
    outside = [op for p, op in enumerate(flat) if p not in members]
    needed = set(out) | {l for _, ls in outside for l in ls}
    j = flat[second][1][1]
    keep = [k, j, *dict.fromkeys(l for _, ls in inside for l in ls
                                 if l in needed and l not in (k, j))]
    sizes = dict(zip(keep, _shape_of(keep, inside, None)))
    v = contract(tuple(keep), inside, sizes)
    at = min(members)
    outside.insert(sum(1 for p in range(at) if p not in members), (v, tuple(keep)))
    return outside


def _cancel_reciprocals(flat: list) -> list:
    """`a[i] * (1/a)[i]` -> 1: a derivative of log meeting the value it divides by."""
    for k, (node, labels) in enumerate(flat):
        if isinstance(node, Map) and node.fn == "div" and isinstance(node.args[0], Const) \
                and node.args[0].value == 1.0:
            for j, (other, other_labels) in enumerate(flat):
                if j != k and other is node.args[1] and other_labels == labels:
                    rest = [op for i, op in enumerate(flat) if i not in (j, k)]
                    return _cancel_reciprocals(rest)
    return flat


def _cancel_quotients(flat: list) -> list | None:
    """`(a / b) * b` -> a, for b another factor, or an elementwise product whose factors all
    are (`(a / (u * v)) * u * v`): the quotient rule's `-(a / b) / b` times the derivative of b
    meets b's own factors (d/dl of y / (exp(l) * exp(l)) is `-2 (y / t1) / t1 * t0 * t0`, t1 =
    t0 * t0). Evaluated as written, `/ t1 * t0 * t0` is 0 * inf = nan where t1 overflows (l =
    400) and the gradient is -0.0; cancelled, it is one division. None where nothing cancels,
    else the factors with one quotient cancelled. A quotient of a quotient cancels first:
    `2 (t0 / t1) (-(t0 / t1) / t1) t1` is `-2 (t0 / t1) ** 2`, where cancelling the first
    would leave `-2 t0 ((t0 / t1) / t1)`, whose inner quotient overflows before the product
    (d/dl of ((y - m) / exp(l)) ** 2 at l = -300 and y - m = 1e-100)."""
    quotients = [(k, node, labels) for k, (node, labels) in enumerate(flat)
                 if type(node) is Map and node.fn == "div"]
    quotients.sort(key=lambda q: -_nested_quotients(q[1].args[0]))
    for k, node, labels in quotients:
        a, b = node.args
        if b.shape != node.shape or a.shape != node.shape and type(a) is not Const:
            continue
        if type(b) is Contract and all(set(ls) <= set(b.out) for _, ls in b.operands):
            rename = dict(zip(b.out, labels))  # b's own factors, on the quotient's labels
            wanted = [(n, tuple([rename[l] for l in ls])) for n, ls in b.operands]
        else:
            wanted = [(b, labels)]
        rest = [op for j, op in enumerate(flat) if j != k]
        for n, ls in wanted:
            found = next((j for j, (m, ms) in enumerate(rest) if m is n and ms == ls), None)
            if found is None:
                break
            del rest[found]
        else:
            return rest + [(a, labels if a.shape == node.shape else ())]
    for k, node, labels in quotients:
        lowered = _power_cancelled(flat, k, node, labels)
        if lowered is not None:
            return lowered
    return None


def _power_cancelled(flat: list, k: int, node: Map, labels) -> list | None:
    """`(a / u ** p) * u ** q` -> `a / u ** (p - q)` for constants p > q > 0 (`u` itself is
    q = 1), on the quotient's labels: the chain rule's `(1 / t0 ** 2) * t0` of `log(t0 ** 2)`
    is `1 / t0`, inf at t0 = 0 where the product was 0 * inf = nan (and 0, not 1 / t0, where
    t0 ** 2 overflows). None where no such factor is there."""
    a, b = node.args
    if type(b) is not Map or b.fn != "pow" or type(b.args[1]) is not Const or \
            b.shape != node.shape or a.shape != node.shape and type(a) is not Const:
        return None
    u, p = b.args[0], b.args[1].value
    if u.shape != node.shape or not (math.isfinite(p) and p > 1):
        return None
    found = None
    for j, (m, ms) in enumerate(flat):
        if j == k or ms != labels:
            continue
        if m is u:
            found = [j], 1.0
        elif type(m) is Map and m.fn == "pow" and m.args[0] is u and \
                type(m.args[1]) is Const and 0 < m.args[1].value < p:
            found = [j], m.args[1].value
        else:
            continue
        break
    if found is None and type(u) is Contract and \
            all(set(ls) <= set(u.out) for _, ls in u.operands):
        # u inlined into the product as its own factors (`X[i,i]` for diag(X))
        rename = dict(zip(u.out, labels))
        taken = []
        for n, ls in u.operands:
            want = tuple([rename[l] for l in ls])
            j = next((j for j, (m, ms) in enumerate(flat)
                      if j != k and j not in taken and m is n and ms == want), None)
            if j is None:
                break
            taken.append(j)
        else:
            found = taken, 1.0
    if found is None:
        return None
    used, q = found
    if float(p - q).is_integer() and not (float(p).is_integer() and float(q).is_integer()):
        # u ** 2.5 is nan where u < 0 and u ** 0.5 too, but u ** 2 is not: cancelled, a nan
        # would become a number (`(a / u ** 2.5) * u ** 0.5`, `log(x ** 1.5)`'s gradient)
        return None
    rest = [op for i, op in enumerate(flat) if i not in used and i != k]
    power = u if p - q == 1 else elementwise("pow", [u, Const(p - q)])
    return rest + [(elementwise("div", [a, power]), labels)]


def _nested_quotients(node: Node) -> int:
    """How many quotients deep `node` is (`-(a / b) / c`: 2), through negations and scales."""
    depth = 0
    while True:
        if type(node) is Map and node.fn == "div":
            depth, node = depth + 1, node.args[0]
        elif type(node) is Contract and len(node.operands) == 2 and \
                type(node.operands[0][0]) is Const:
            node = node.operands[1][0]
        else:
            return depth


def is_zero(node: Node) -> bool:
    """True for a constant zero, scalar or broadcast."""
    return constant_value(node) == 0.0


def _is_product(node: Contract) -> bool:
    """True when the contraction sums nothing but size-1 axes (a pure product or relabelling)."""
    # Labels are canonical, the output's first: every label past them is summed.
    return all(d is ONE for d in node.dims[len(node.out):])


def _shape_of(out, operands, broadcast) -> tuple[Dim, ...]:
    dims = dict(broadcast or {})
    for node, labels in operands:
        for l, d in zip(labels, node.shape):
            dims.setdefault(l, d)
    return tuple(dims[l] for l in out)


def zeros(shape) -> Node:
    shape = tuple(shape)
    if not shape:
        return Const(0.0)
    return Contract(range(len(shape)), [(Const(0.0), ())], dict(enumerate(shape)))


def add(terms: list[tuple[float, Node]]) -> Node:
    """`sum(coef * term)` over terms of one shape, merging repeated terms and constants.

    Nested sums are kept as they are: one of them may be shared (`x + y` in `(x + y) + x*(x + y)`),
    and flattening it into its parent would compute it twice.
    """
    # Factoring a common factor out of the terms (`_factor_common`) leaves a sum of what
    # remains, in which another factor may be common, and so on through nested products: a
    # loop, with the factors taken out kept to multiply back, not a recursion per factor.
    outside: list = []  # (out, keep, factor, dims) per factor taken out, outermost first
    while True:
        total, terms = _merged_sum(terms)
        if terms is None:
            break
        step = _factor_common(terms) if len(outside) < MAX_COMMON_FACTORS else None
        if step is None:
            total = Add(terms)
            break
        terms, *level = step
        outside.append(level)
    for out, keep, factor, dims in reversed(outside):
        total = contract(out, [(total, keep), factor], {l: dims[l] for l in out})
    return total


def _merged_sum(terms: list[tuple[float, Node]]) -> tuple[Node | None, list | None]:
    """Like terms and constants merged: (the sum, None) when it is zero or one term, else
    (None, the terms left)."""
    # like-term key -> [the first such term, its coefficient]; the constants, scalar or
    # broadcast (`-1 + log(x) + 1`), under the key None, where the first of them is
    merged: dict = {}
    shape = terms[0][1].shape
    for coef, term in terms:
        if is_zero(term):
            continue
        value = constant_value(term)
        if value is not None:
            entry = merged.setdefault(None, [None, 0.0])
            entry[1] += coef * value
        else:
            c, term = split_scale(term)
            entry = merged.setdefault(_like(term), [term, 0.0])
            entry[1] += coef * c
    kept = [(c, t) if t is not None else (1.0, broadcast_to(Const(c), shape))
            for t, c in merged.values() if c != 0.0]
    if not kept:
        return zeros(shape), None
    if len(kept) == 1:
        c, t = kept[0]
        return (t if c == 1.0 else scale(c, t)), None
    # An infinite or nan coefficient stays inside its term's product (as one term alone has
    # it, `scale`), where it multiplies the term's values only: on the sum, it multiplied the
    # term's structural zeros too (`inf * e_1 + e_0` was inf * 0 = nan at every other entry,
    # in the code and the interpreter alike; `x[0] + inf * x[1]` has the gradient [1, inf, 0,
    # 0], as in JAX).
    return None, [(c, t) if math.isfinite(c) else (1.0, scale(c, t)) for c, t in kept]


def _like(term: Node):
    """A key that terms share when they are one product written differently: factors in another
    order, summed indices named otherwise, a transposed product written out (`(X @ X).T` and
    `X[j,k]*X[k,i]`), a quotient as a product by a reciprocal (`a / b` and `a * (1 / b)`), so
    that `add` collects them as it collects `x + x` (the three terms of the gradient of
    `tr(X @ X @ X)` are one)."""
    if isinstance(term, Contract):
        out = term.out
        ops = _transposed_operands(term) or term.operands
    elif isinstance(term, Map) and term.fn == "div":
        out = tuple(range(term.rank))
        ops = [(term, out)]
    else:
        return term
    ops = [factor for op in ops for factor in _quotient_factors(op)]
    position = {l: k for k, l in enumerate(out)}

    def unnamed(op):  # an operand's place, its summed indices not yet named
        return id(op[0]), tuple([position.get(l, -1) for l in op[1]])

    keyed = sorted([(unnamed(op), k) for k, op in enumerate(ops)])
    if len({key for key, _ in keyed}) == len(keyed):  # no ties: one order, the sorted one
        return _labelled(out, [ops[k] for _, k in keyed])
    ops = [ops[k] for _, k in keyed]
    # Operands that tie (one node, the same output indices) name the summed indices in their
    # order: every order of each tie is tried, the first in sorted order kept, while few.
    # A tie whose operands sum no index gives the same key in every order: only the others'
    # orders are tried.
    groups = [(-1 in key[1], list(tie)) for key, tie in groupby(ops, key=unnamed)]
    orders = 1
    for summed, tie in groups:
        if summed:
            orders *= factorial(len(tie))
    if orders == 1 or orders > MAX_LIKE_ORDERS:
        return _labelled(out, ops)
    return min(_labelled(out, [op for order in choice for op in order])
               for choice in product(*(permutations(tie) if summed else (tie,)
                                       for summed, tie in groups)))


def _transposed_operands(term: Contract) -> list | None:
    """The operands of the product that `term` transposes (`(X.T @ A).T`, a product whose
    result is used elsewhere too, so not inlined when built), relabelled as `term`'s own: the
    same product written out. None for any other term."""
    ops = term.operands
    if len(ops) == 1 and isinstance(ops[0][0], Contract) and sorted(ops[0][1]) == sorted(term.out):
        inner, labels = ops[0]
        rename = dict(zip(inner.out, labels))
        fresh = count(len(term.dims))
        return [(n, tuple(rename[l] if l in rename else rename.setdefault(l, next(fresh))
                          for l in ls)) for n, ls in inner.operands]
    return None


def _quotient_factors(op) -> list:
    """`a / b` on `labels` as the factors `a` and `1 / b`; any other operand as itself."""
    node, labels = op
    if isinstance(node, Map) and node.fn == "div" and len(node.args) == 2:
        a, b = node.args
        if not isinstance(a, Const) and a.shape == node.shape and b.rank in (0, node.rank):
            return [(a, labels), (Map("div", Const(1.0), b), labels if b.rank else ())]
    return [op]


def _labelled(out, ops) -> tuple:
    """The key: each operand (its node kept, so that its id stays its own) on labels numbered
    output first, then in order of appearance."""
    names = {l: k for k, l in enumerate(out)}
    return tuple((id(n), n, tuple(names.setdefault(l, len(names)) for l in ls)) for n, ls in ops)


def _factor_common(terms: list[tuple[float, Node]]) -> tuple | None:
    """`P*X + Q*X` -> `(P + Q)*X` for a factor X that every term carries on output indices:
    (the terms P, Q, ... left, the output labels, the labels they keep, X, the dimensions), or
    None where no factor is common (`add` sums what is left and multiplies X back).

    Derivatives are sums of products that share factors (each path through the graph ends in
    the same input-side Jacobian); factoring leaves a smaller sum and one product, which is how
    the logistic Hessian becomes `X.T @ (v[:, None] * X)` instead of a sum of such products.
    """
    if not all(isinstance(t, Contract) for _, t in terms):
        return None
    # A transposed product is its operands here (`(X.T @ A).T + A @ X` is `(A.T + A) @ X`).
    terms = [(c, _written_out(t)) for c, t in terms]
    out = terms[0][1].out
    dims = terms[0][1].dims

    def candidates(t: Contract):
        # On output indices, or on indices summed the same way in every term (`A.T @ x + A @ x`
        # -> `(A.T + A) @ x`); canonical labels make the same index the same number.
        return [(n, ls) for n, ls in t.operands
                if len(set(ls)) == len(ls) and not isinstance(n, Const)]

    common = candidates(terms[0][1])
    for _, t in terms[1:]:
        theirs = candidates(t)
        common = [c for c in common if c in theirs]
    if not common:
        return None
    factor = max(common, key=lambda c: len(c[1]))
    remainders = []
    for c, t in terms:
        ops = list(t.operands)
        ops.remove(factor)
        remainders.append((c, ops, t))
    summed = tuple(l for l in factor[1] if l not in out)
    carried = {l for _, ops, _ in remainders for _, ls in ops for l in ls if l in out}
    keep = tuple(l for l in out if l in carried or l not in factor[1]) + summed
    # A summed index of the factor stays free in what is left: worth it only when that is no
    # bigger than an operand already there (no new large intermediate).
    if summed and len(keep) > max(len(ls) for _, ops, _ in remainders for _, ls in ops):
        return None
    if summed and any(sum(l in ls for _, ls in ops) != 1 for _, ops, _ in remainders
                      for l in summed):
        return None
    if summed and any(isinstance(n, (Delta, Unit)) or is_window(n)
                      for _, ops, _ in remainders for n, _ in ops):
        return None  # a slice or pick stays with its partner, never a dense selection matrix
    parts = [(c, contract(keep, ops, {l: t.dims[l] for l in keep})) for c, ops, t in remainders]
    return parts, out, keep, factor, dims


def _written_out(term: Contract) -> Contract:
    ops = _transposed_operands(term)
    if ops is None:
        return term
    try:
        return Contract(term.out, ops, {l: term.dims[l] for l in term.out})
    except ValueError:  # an index the inner product broadcast: left as it is
        return term


def distribute(node: Node) -> list[tuple[float, Node]]:
    """`node` as a list of weighted terms: a sum's terms, or a product over a sum multiplied
    out (`(a - b)*c` -> `a*c`, `-b*c`), so that each term's deltas can contract on their own."""
    if isinstance(node, Add):
        return list(node.terms)
    if isinstance(node, Contract):
        for k, (operand, labels) in enumerate(node.operands):
            if isinstance(operand, Add):
                rest = [op for j, op in enumerate(node.operands) if j != k]
                sizes = {l: node.dims[l] for l in node.out}
                return [(c, contract(node.out, [*rest, (t, labels)], sizes))
                        for c, t in operand.terms]
    return [(1.0, node)]


def split_scale(node: Node) -> tuple[float, Node]:
    """`node` as `c * rest`, so that `2*x` and `3*x` are collected into `5*x`."""
    if isinstance(node, Contract) and isinstance(node.operands[0][0], Const) \
            and len(node.operands) > 1:
        c = node.operands[0][0].value
        rest = contract(node.out, node.operands[1:], {l: node.dims[l] for l in node.out})
        return c, rest
    return 1.0, node


def scale(c: float, node: Node) -> Node:
    if c == 1.0:
        return node
    out = tuple(range(node.rank))
    return contract(out, [(Const(c), ()), (node, out)])


def binary_add(a: Node, b: Node, sign: float = 1.0, names=(None, None)) -> Node:
    shape = broadcast_shapes(a, b, names, "add" if sign > 0 else "subtract")
    return add([(1.0, broadcast_to(a, shape)), (sign, broadcast_to(b, shape))])


def multiply(a: Node, b: Node, names=(None, None)) -> Node:
    shape = broadcast_shapes(a, b, names, "multiply")
    return contract(range(len(shape)), [_aligned(a, shape), _aligned(b, shape)],
                    dict(enumerate(shape)))


def _aligned(node: Node, shape) -> tuple[Node, tuple[int, ...]]:
    """Labels placing `node`'s axes on the trailing axes of `shape` (size-1 axes summed)."""
    lead = len(shape) - node.rank
    labels = []
    for axis, dim in enumerate(node.shape):
        target = lead + axis
        labels.append(target if dim == shape[target] else 1000 + target)
    return node, tuple(labels)


def elementwise(fn: str, args: list[Node], names=None) -> Node:
    """An elementwise function of broadcast arguments (scalars stay scalars)."""
    names = names or [None] * len(args)
    shape = args[0].shape
    for a, name in zip(args[1:], names[1:]):
        shape = broadcast_shapes(_Shape(shape), a, (names[0], name), f"apply {fn} to")
    folded = _arithmetic_identity(fn, args, shape)
    if folded is not None:
        return folded
    return Map(fn, *[a if not a.shape else broadcast_to(a, shape) for a in args])


def fold(fn: str, a: float, b: float) -> float:
    """`a / b` or `a ** b` of two constants, exactly as numpy computes it in float64: overflow
    is inf, `1 / 0` inf, `0 / 0` and `(-8) ** (1/3)` nan, each with numpy's RuntimeWarning
    (where Python floats would raise OverflowError or ZeroDivisionError, or turn complex).

    The warning follows numpy's error state, except that a state of 'raise' warns: a constant
    is folded when the expression is built, not when the user's arrays are computed.
    """
    state = {k: "warn" if v in ("raise", "call") else v for k, v in np.geterr().items()}
    with np.errstate(**state):
        x, y = np.float64(a), np.float64(b)
        return float(x ** y if fn == "pow" else x / y)


def constant_value(node: Node) -> float | None:
    """The value of a constant, scalar or broadcast; None for anything else."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Contract) and len(node.operands) == 1 and \
            isinstance(node.operands[0][0], Const):
        return node.operands[0][0].value
    return None


def _arithmetic_identity(fn: str, args: list[Node], shape) -> Node | None:
    """Fold `a ** 1`, `a ** 0`, `0 / b` and constant operands of the operators `**` and `/`.

    Derivative rules produce these (`b * a ** (b - 1)` at b = 2), and folding them here keeps
    derivatives as compact as a person would write them. A select, `where(c, a, b)`, with a
    constant condition or equal branches is the branch it takes.
    """
    if fn == "where" and len(args) == 3:
        c, a, b = args
        condition = constant_value(c)
        if a is b or condition is not None:
            return broadcast_to(b if condition == 0.0 else a, shape)
        return None
    if fn not in ("pow", "div") or len(args) != 2:
        return None
    a, b = args
    ca, cb = constant_value(a), constant_value(b)
    if ca is not None and cb is not None:
        return broadcast_to(Const(fold(fn, ca, cb)), shape)
    if fn == "pow" and isinstance(b, Const) and b.value in (0.0, 1.0):
        return broadcast_to(Const(1.0) if b.value == 0.0 else a, shape)
    if fn == "div" and is_zero(a) and not is_zero(b):
        return zeros(shape)
    if fn == "div" and isinstance(b, Const) and 1e-300 < abs(b.value) < 1e300:
        # a / c as (1 / c) * a: the constant joins the scale of the products `a` meets and folds
        # there (`2 * (lam / 2 * w)` is `lam * w`); the printers write `a / 3` back as such.
        return broadcast_to(scale(1.0 / b.value, a), shape)
    if fn == "div" and isinstance(a, Const) and a.value != 1.0:
        # c / b as c * (1 / b): the constant joins the product's scale and folds there.
        return scale(a.value, elementwise("div", [Const(1.0), b]))
    return None


class _Shape:
    """A stand-in with just a shape, for checking broadcasts of more than two operands."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.rank = len(self.shape)


def transpose(node: Node) -> Node:
    if node.rank < 2:
        return node
    labels = tuple(range(node.rank))
    return contract(tuple(reversed(labels)), [(node, labels)])


def reduce_sum(node: Node, axes: tuple[int, ...]) -> Node:
    labels = tuple(range(node.rank))
    out = tuple(l for l in labels if l not in axes)
    return contract(out, [(node, labels)])


def matmul(a: Node, b: Node, names=(None, None)) -> Node:
    """numpy.matmul: vector·vector, matrix@vector, vector@matrix, batched matrix products."""
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"matmul of a scalar: {_named(names[0], a)} @ {_named(names[1], b)}",
                         hint="use * to multiply by a scalar")
    ka = a.shape[-1]
    kb = b.shape[-1] if b.rank == 1 else b.shape[-2]
    if ka != kb:
        which = "its only axis" if b.rank == 1 else "its second-to-last axis"
        raise ShapeError(
            f"cannot matmul {_named(names[0], a)} with {_named(names[1], b)}: the last axis of "
            f"the left operand ({ka}) must match {which} of the right ({kb})")
    if a.rank == 1 and b.rank == 1:
        return contract((), [(a, (0,)), (b, (0,))])
    # Batch axes broadcast like elementwise operands.
    batch_a, batch_b = a.shape[:-2], b.shape[:-2]
    batch = broadcast_shapes(_Shape(batch_a), _Shape(batch_b), names, "batch-matmul")
    nb = len(batch)
    batch_labels = tuple(range(nb))
    K, I, J = nb, nb + 1, nb + 2

    def batch_of(node_batch):
        lead = nb - len(node_batch)
        return tuple(lead + i if d == batch[lead + i] else 100 + lead + i
                     for i, d in enumerate(node_batch))

    if a.rank == 1:  # vector @ (..., k, j)
        out = batch_labels + (J,)
        ops = [(a, (K,)), (b, batch_of(batch_b) + (K, J))]
    elif b.rank == 1:  # (..., i, k) @ vector
        out = batch_labels + (I,)
        ops = [(a, batch_of(batch_a) + (I, K)), (b, (K,))]
    else:
        out = batch_labels + (I, J)
        ops = [(a, batch_of(batch_a) + (I, K)), (b, batch_of(batch_b) + (K, J))]
    return contract(out, ops, dict(zip(batch_labels, batch)))


def index(node: Node, items: list) -> Node:
    """numpy basic indexing. Items: ("int", k), ("slice", lo, hi), ("none",)."""
    consumed = sum(1 for it in items if it[0] != "none")
    if consumed > node.rank:
        raise ShapeError(f"too many indices: {consumed} for a tensor of rank {node.rank} "
                         f"{show_shape(node.shape)}")
    items = list(items) + [("slice", None, None)] * (node.rank - consumed)
    fresh = count(10_000)
    labels, out, ops, broadcast = [], [], [], {}
    axis = 0
    for it in items:
        if it[0] == "none":
            l = next(fresh)
            out.append(l)
            broadcast[l] = ONE
            continue
        dim = node.shape[axis]
        axis += 1
        if it[0] == "int":
            pos = _position(it[1], dim)
            l = next(fresh)
            labels.append(l)
            ops.append((Unit(dim, pos), (l,)))
        else:
            lo, hi = _slice_bounds(it[1], it[2], dim)
            size = _difference(hi, lo)
            l = next(fresh)
            labels.append(l)
            if lo == ZERO and size == dim:
                out.append(l)
            else:
                o = next(fresh)
                out.append(o)
                ops.append((Delta(size, dim, lo), (o, l)))
    return contract(tuple(out), [(node, tuple(labels))] + ops, broadcast)


def position(k: int | Dim, dim: Dim) -> Dim:
    """The position that index k (negative from the end; a Dim as it is) picks on `dim`:
    ShapeError where both are integers and k is out of range."""
    return _position(k, dim)


def _position(k: int | Dim, dim: Dim) -> Dim:
    if isinstance(k, Dim):  # a position of the sizes (`x[n - 2]`): checked at the call
        if k.is_concrete and dim.is_concrete and not 0 <= k.offset < dim.offset:
            raise ShapeError(f"index {k} is out of bounds for an axis of size {dim}")
        return k
    if dim.is_concrete:
        if not -dim.offset <= k < dim.offset:
            raise ShapeError(f"index {k} is out of bounds for an axis of size {dim}")
        return Dim(None, k % dim.offset)
    return dim + k if k < 0 else Dim(None, k)


def _slice_bounds(lo, hi, dim: Dim) -> tuple[Dim, Dim]:
    if dim.is_concrete and not isinstance(lo, Dim) and not isinstance(hi, Dim):
        start, stop, _ = slice(lo, hi).indices(dim.offset)
        return Dim(None, start), Dim(None, max(start, stop))

    # A negative integer counts from the end whatever the other bound is: `x[-2:n]` is
    # `x[n-2:n]` (as the integer -2 it would be a window starting before the axis). A named
    # bound past the end of its own axis (`x[:n + 1]` on [n]) stops at the end, as in numpy.
    def bound(b) -> Dim:
        if isinstance(b, Dim):
            return dim if b.name == dim.name and b.offset > dim.offset else b
        if b >= 0:
            return Dim(None, b)
        return Dim(None, max(dim.offset + b, 0)) if dim.is_concrete else dim + b

    lo_d = ZERO if lo is None else bound(lo)
    hi_d = dim if hi is None else bound(hi)
    if hi_d.name == lo_d.name and hi_d.offset < lo_d.offset:
        if isinstance(hi, Dim):
            # numpy counts a stop like `n - 3` from the end where it is negative, so the slice
            # is not empty at every size; refused rather than guessed.
            raise ShapeError(f"the slice {lo_d}:{hi_d} stops before it starts",
                             hint="write a stop that is not before the start")
        hi_d = lo_d  # a stop before the start is an empty slice, as in numpy
    return lo_d, hi_d


def _difference(hi: Dim, lo: Dim) -> Dim:
    if lo.name is None:
        return Dim(hi.name, hi.offset - lo.offset)
    if hi.name == lo.name:
        return Dim(None, hi.offset - lo.offset)
    try:
        return hi - lo  # like products: n to 2 * n is n long (lower/dimensions.py)
    except ValueError:
        raise ShapeError(f"cannot slice from {lo} to {hi}: the length would not be a "
                         f"dimension", hint="use slice bounds that are integers, or a negative "
                                            "stop") from None
