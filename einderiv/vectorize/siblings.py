"""One function of several parts of one array, applied once to the part that covers them.

An LSTM step takes its gates from one pre-activation: rows of the fused product
`stack(Wc, Wf, Wi, Wo) @ h` (fuse.py) or slices of the user's own stacked `z` (`z[0:H]`,
`z[H:2H]`, `z[2H:3H]`), and applies one function to each: three sigmoid calls per step, on H
entries each, where numpy's per-call cost is most of the time. A hand-written LSTM calls
`sigmoid(z[:3H])` once and reads the gates as slices of the result; so does this pass. Parts
are rows (`P[k]`, a unit vector on an axis) or windows (`z[a:b]`, a Kronecker delta with an
offset) of one node along one axis, of concrete positions, and are joined only where they
cover one range with no gap (a function is never applied to entries the program does not
ask it of: `log` of an unused row could warn).
"""
from __future__ import annotations

from ..ir.dims import Dim
from ..ir.nodes import Contract, Delta, Map, Node, Unit
from .lanes import _with_children


def batch_siblings(roots: dict[str, Node], order: list[Node]) -> dict[str, Node]:
    """`roots` with each group of one function of parts of one array computed once (`roots`
    itself when there is none). `order`: a topological order of the graph of `roots`."""
    groups: dict[tuple, list[tuple[Node, int, int, Dim | None]]] = {}
    for n in order:
        if type(n) is Map and len(n.args) == 1 and type(n.args[0]) is Contract:
            part = _part(n.args[0])
            if part is not None:
                base, axis, lo, hi, kind = part
                groups.setdefault((n.fn, id(base), axis), []).append((n, lo, hi, kind))
    plan: dict[int, tuple] = {}  # id(member) -> (its group, lo, hi, kind)
    for key, members in groups.items():
        if len(members) > 1 and _covered([(lo, hi) for _, lo, hi, _ in members]):
            start = min(lo for _, lo, _, _ in members)
            stop = max(hi for _, _, hi, _ in members)
            shared = {"range": (start, stop), "node": None}
            for m, lo, hi, kind in members:
                plan[id(m)] = (shared, lo, hi, kind)
    if not plan:
        return roots
    memo: dict[int, Node] = {}
    for n in order:
        children = n.children()
        new = [memo[id(c)] for c in children]
        if id(n) in plan:
            memo[id(n)] = _member(n, new[0], *plan[id(n)])
        else:
            memo[id(n)] = n if all(a is b for a, b in zip(new, children)) else \
                _with_children(n, new)
    return {name: memo[id(node)] for name, node in roots.items()}


def _part(a: Contract):
    """(base, axis, lo, hi, kind) when `a` is a row (kind None) or a window (kind: its
    delta's output length) of one node along one axis, at concrete positions; else None."""
    if len(a.operands) != 2:
        return None
    (x, lx), (y, ly) = a.operands
    if type(x) in (Unit, Delta):
        (x, lx), (y, ly) = (y, ly), (x, lx)
    base, labels, sel, sel_labels = x, lx, y, ly
    if type(sel) is Unit:
        (label,) = sel_labels
        if not sel.position.is_concrete or labels.count(label) != 1 or \
                len(set(labels)) != len(labels):
            return None
        axis = labels.index(label)
        if a.out != labels[:axis] + labels[axis + 1:]:
            return None
        k = sel.position.offset
        return base, axis, k, k + 1, None
    if type(sel) is Delta:
        new, old = sel_labels
        rows = sel.shape[0]
        if new == old or not (sel.offset.is_concrete and rows.is_concrete) or \
                labels.count(old) != 1 or new in labels or len(set(labels)) != len(labels):
            return None
        axis = labels.index(old)
        if a.out != labels[:axis] + (new,) + labels[axis + 1:]:
            return None
        lo = sel.offset.offset
        return base, axis, lo, lo + rows.offset, rows
    return None


def _covered(ranges: list[tuple[int, int]]) -> bool:
    """Whether the ranges together are one range with no gap."""
    ranges = sorted(ranges)
    reach = ranges[0][1]
    for lo, hi in ranges[1:]:
        if lo > reach:
            return False
        reach = max(reach, hi)
    return True


def _member(old: Map, new_arg: Contract, shared: dict, lo: int, hi: int, kind) -> Node:
    """`old`, the function of one part, as that part of the function of the covering range
    (built once per group, from the rebuilt base)."""
    base, axis, _, _, _ = _part(new_arg)
    start, stop = shared["range"]
    rank = base.rank
    labels = tuple(range(1, rank + 1))
    if shared["node"] is None:
        if start == 0 and base.shape[axis] == Dim.of(stop):
            cover = base
        else:
            out = labels[:axis] + (0,) + labels[axis + 1:]
            cover = Contract(out, [(base, labels),
                                   (Delta(stop - start, base.shape[axis], start),
                                    (0, labels[axis]))])
        shared["node"] = Map(old.fn, cover)
    batched = shared["node"]
    if kind is None:  # a row
        return Contract(labels[:axis] + labels[axis + 1:],
                        [(batched, labels), (Unit(stop - start, lo - start), (labels[axis],))])
    if lo == start and hi == stop:
        return batched
    return Contract(labels[:axis] + (0,) + labels[axis + 1:],
                    [(batched, labels), (Delta(hi - lo, stop - start, lo - start),
                                         (0, labels[axis]))])
