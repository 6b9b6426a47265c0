"""The delta algebra of unit vectors (picks) and windows (slices, pads) that meet on a summed
label, and what the vectorizer and the IR interpreter need to know of a node's structure.

A product in which a pick or a window meets another on a summed index is contracted here, when
`build.contract` makes it: to a unit vector, one window, a shifted diagonal, or exactly zero
where they never meet. Left as they were, such products became 0/1 matrices multiplied in,
whose structural zeros times an infinite value gave nan where the derivative is 0. Whether two
windows meet depends on the sizes; it is decided only where it can be for every size.
"""
from __future__ import annotations

import weakref

import numpy as np

from .dims import ONE, Dim, is_composite
from .nodes import Add, Const, Contract, Delta, Map, Node, Prim, Unit

ZERO = Dim(None, 0)

def contract_units(flat: list, out: set) -> list | None:
    """Unit vectors contracted with the one other structure on their summed label, by the
    delta algebra: `e_p[l] * e_q[l]` summed is 1 or 0, `e_p[l] * delta[a+o, l]` summed is
    `e_(p-o)[a]` or 0 (and `e_p[l] * delta[l+o, b]` is `e_(p+o)[b]`), and a one-row window on
    a summed length-1 axis that only structures read is the unit vector it is. Left unsummed, such a product became a
    0/1 matrix in the code (`eye(2 * n)[n:][:, :1] @ g` for the gradient of
    `concatenate((x, x))[:1]`), whose structural zeros times an infinite `g` were nan, where the
    derivative is an exact zero. None when the product is exactly zero; the list unchanged
    where the positions cannot be compared for every size."""
    changed = True
    while changed:
        changed = False
        for k, (node, labels) in enumerate(flat):
            kind = type(node)
            if kind is Delta and not node.is_identity and labels[0] != labels[1]:
                if _apart(flat, k, out):
                    return None
                composed = _composed(flat, k, out)
                if composed is not None:
                    flat = composed
                    changed = True
                    break
            if kind is Delta and not node.is_identity and labels[0] != labels[1]:
                # delta[c + o, j] with c a summed length-1 axis: e_o[j] (and delta[j + o, c]:
                # e_(-o)[j]), whatever else reads c's one entry
                # (a window lies inside its columns, a pad's one column inside its rows: the
                # code checks that of every window, plan.check_structured)
                rows, cols = node.shape
                if rows == ONE and labels[0] not in out:
                    found, label = Unit(cols, node.offset), labels[1]
                elif cols == ONE and labels[1] not in out and node.offset.is_concrete:
                    found, label = Unit(rows, -node.offset.offset), labels[0]
                else:
                    continue
                summed = labels[0] if label == labels[1] else labels[1]
                if any(type(n) not in (Delta, Unit) for j, (n, ls) in enumerate(flat)
                       if j != k and summed in ls):
                    continue  # (an array reading c's entry keeps it: `x[:1]`, not a sum)
                flat[k] = (found, (label,))
                changed = True
                break
            if kind is not Unit or labels[0] in out:
                continue
            (l,) = labels
            carriers = [j for j, (_, ls) in enumerate(flat) if j != k and l in ls]
            if len(carriers) != 1:
                continue
            (j,) = carriers
            other, ls = flat[j]
            if type(other) is Unit:
                if other.position is node.position:
                    found = True
                else:
                    try:
                        difference = node.position - other.position
                    except ValueError:
                        continue
                    if not difference.is_concrete:
                        continue
                    return None  # two different concrete positions: never equal
                flat = [op for i, op in enumerate(flat) if i not in (j, k)]
                changed = True
                break
            if type(other) is not Delta or ls[0] == ls[1]:
                continue
            rows, cols = other.shape
            try:
                if ls[1] == l:  # e_p[l] * delta[a + o, l]: a = p - o
                    found, label = _unit_at(node.position - other.offset, rows, other,
                                            source=(node.position, cols)), ls[0]
                else:  # e_p[l] * delta[l + o, b]: b = p + o
                    found, label = _unit_at(node.position + other.offset, cols, other), ls[1]
            except ValueError:  # (no dimension: `0 - n`)
                found = _unit_outside(node.position, other, ls[1] == l)
                label = None
            if found is None:
                continue
            if found is False:
                return None
            flat = [op for i, op in enumerate(flat) if i not in (j, k)] + [(found, (label,))]
            changed = True
            break
    return flat


def _apart(flat: list, k: int, out: set) -> bool:
    """Whether window flat[k] meets, on a summed label that only it and one other window
    carry, never a nonzero entry of that window at any size: two slices of a concatenation
    that do not overlap (`concatenate((x, x))[:1]` read against its second half, rows
    n .. 2n - 1 of the columns). Their product summed is exactly zero."""
    node, labels = flat[k]
    for side, l in enumerate(labels):
        if l in out or labels.count(l) != 1:
            continue
        carriers = [j for j, (_, ls) in enumerate(flat) if j != k and l in ls]
        if len(carriers) != 1:
            continue
        other, ls = flat[carriers[0]]
        if type(other) is not Delta or other.is_identity or ls.count(l) != 1 or \
                ls.index(l) != side:
            continue
        windows = (node, other)
        if side == 1:  # both read column l: rows offset .. offset + rows of it, apart?
            def meet(env):
                (a, b), (c, d) = [(w.offset.size(env), w.offset.size(env) +
                                   w.shape[0].size(env)) for w in windows]
                return max(a, c) < min(b, d)
        else:  # both on row l: some row j lands inside both windows' columns?
            def meet(env):
                lo, hi = 0, windows[0].shape[0].size(env)
                for w in windows:
                    o = w.offset.size(env)
                    lo, hi = max(lo, -o), min(hi, w.shape[1].size(env) - o)
                return lo < hi
        if _always(meet, (), windows) is False:
            return True
    return False


def _composed(flat: list, k: int, out: set) -> list | None:
    """Window flat[k] and another read on one column label that only they carry, summed:
    `delta[a + o1, j] * delta[b + o2, j]` is `delta[b + (o2 - o1), a]`, one window (of a's
    axis or of b's) where that is one at every size (a slice of a concatenation that lies in one of its parts:
    `concatenate((x, y))[:1]` against the part x, a pad of the slice into x). The list with
    the two replaced by it, or None."""
    node, (a, j) = flat[k]
    if j in out or a == j:
        return None
    carriers = [i for i, (_, ls) in enumerate(flat) if i != k and j in ls]
    if len(carriers) != 1:
        return None
    other, ls = flat[carriers[0]]
    if type(other) is not Delta or other.is_identity or ls[1] != j or ls[0] == j or ls[0] == a:
        return None
    b = ls[0]
    try:
        offset = other.offset - node.offset
    except ValueError:  # (`0 - (n - 1)`: no dimension; they may still overlap in part)
        offset = None
    rows, cols = other.shape[0], node.shape[0]

    # A delta is a window of its columns (0 <= offset, offset + rows <= cols); read the other
    # way round, delta[a - (o2 - o1), b], it is a window of b's (a pad of a into b).
    rest = [op for i, op in enumerate(flat) if i not in (k, carriers[0])]
    windows = (node, other)
    if offset is not None:
        # (at every size where both are windows, empty ones too: the result is checked as a
        # window at every size the call is made, `eye(n)[1:n, -1:]` at n = 1 among them)
        if _always(lambda env: 0 <= offset.size(env) and offset.size(env) + rows.size(env) <=
                   cols.size(env), (offset,), windows, empty_too=True) is True:
            return rest + [(Delta(rows, cols, offset), (b, a))]
        try:
            back = ZERO - offset
        except ValueError:
            back = None
        if back is not None and _always(
                lambda env: 0 <= back.size(env) and back.size(env) + cols.size(env) <=
                rows.size(env), (back,), windows, empty_too=True) is True:
            return rest + [(Delta(cols, rows, back), (a, b))]
    # They overlap in part (`concatenate((x[:2], x))[1:3]` reads the end of one part and the
    # start of the next): rows lo .. hi - 1 of j are in both, a window of each on a new
    # summed label c, `delta[c + lo - o1, a] * delta[c + lo - o2, b]` (a shifted diagonal)
    try:
        ends = (node.offset + cols, other.offset + rows)  # (rows of j, past each window's)
        lo = _larger(node.offset, other.offset, windows)
        hi = _larger(*ends, windows, smaller=True)
        if lo is None or hi is None:
            return None
        length = hi - lo
        first, second = lo - node.offset, lo - other.offset
    except ValueError:
        return None
    # (the overlap may be empty, never negative, at every size where both are windows: at
    # n = 1, eye(n)[:-1, 1:] is two empty windows, whose overlap n - 2 would refuse the call)
    if _always(lambda env: length.size(env) >= 0, (length,), windows, empty_too=True) is not True:
        return None
    c = 1 + max([*out, *(l for _, ls in flat for l in ls)])
    return rest + [(Delta(length, cols, first), (c, a)), (Delta(length, rows, second), (c, b))]


def _larger(p: Dim, q: Dim, windows, smaller: bool = False) -> Dim | None:
    """The larger of p and q (the smaller with `smaller`) at every size where `windows` are
    windows (empty ones too), or None when that depends on the sizes."""
    first = _always(lambda env: (p.size(env) >= q.size(env)) != smaller, (p, q), windows,
                    empty_too=True)
    return None if first is None else p if first else q


def _unit_at(position: Dim | None, length: Dim, window: Delta, source=None):
    """`Unit(length, position)` when the position is inside for every size where `window` is
    one, False when it is outside for every such size, None when that depends on the sizes.
    With `source` (the position and length of the unit read back through the window onto its
    rows), sizes where the window is empty and that unit inside its axis count too: the rows
    are an empty axis there, where the product is an empty vector and a unit would be an index
    out of range (`eye(n)[1:, -1]` is `e_(n-2)` on n - 1 rows only from n = 2 on; at n = 1 it
    is empty, and a unit there refused the call, where numpy's value is an empty vector)."""
    if position is None:
        return None
    where = None
    if source is not None:
        p, n = source
        where = lambda env: 0 <= p.size(env) < n.size(env)  # noqa: E731
    inside = _always(lambda env: 0 <= position.size(env) < length.size(env),
                     (position, length, *(source or ())), (window,), empty_is=False,
                     empty_too=source is not None, where=where)
    if inside is True:
        return Unit(length, position)
    return inside


def _unit_outside(position: Dim, window: Delta, on_column: bool):
    """False when e_position never meets `window`'s rows (on_column) or columns at a size where
    the window is not empty (`e_0` against rows n .. 2n - 1 of a concatenation), else None."""
    rows, cols = window.shape
    offset = window.offset

    def inside(env):
        p, o = position.size(env), offset.size(env)
        return (0 <= p - o < rows.size(env)) if on_column else (0 <= p + o < cols.size(env))
    found = _always(inside, (position,), (window,))
    return False if found is False else None


def _always(test, dims, windows=(), empty_is=None, empty_too: bool = False,
            where=None) -> bool | None:
    """True when `test(env)` holds at every size of the names in `dims` and `windows`, False
    when it holds at none, None when it depends on them. Only the sizes at which every window
    is one count: not empty, and inside its columns (0 <= offset, offset + rows <= cols), as
    the code checks of each (`concatenate((x, x))[n:n + 2]` says n >= 2). The names are one at
    most, in sizes linear in it (`n + 1`, `2 * n - 3`; else None), and its sizes are tried at
    every value up to past the sum of the offsets and at two large values: the tests, built
    of comparisons of sums of a few such sizes, cannot change past there. `empty_is`: the
    answer when no size counts. `empty_too`: sizes where a window is empty (no rows, inside
    its columns) count too. `where(env)`: only sizes where it holds count."""
    from ..lower.dimensions import factors  # (lowering builds with this module)
    dims = [*dims, *(d for w in windows for d in (*w.shape, w.offset))]
    names = set()
    for d in dims:
        if d.name is None:
            continue
        # Only sizes linear in one name, c * n + k: a comparison of sums of them changes at
        # most once, at |n| <= the sum of the offsets, so every size up to past that and one
        # large one decide it for all. A quotient ((n + 9) // 10, of x[::10]) or a product of
        # names may change anywhere: undecided (sampled, it was decided wrong at n = 31).
        coefficient, found = factors(Dim(d.name))
        if len(found) != 1 or found[0].name is None or is_composite(found[0].name) or \
                found[0].offset:
            return None
        names.add(found[0].name)
    if len(names) > 1:
        return None
    if not names:
        samples = [{}]
    else:
        (name,) = names
        bound = 8 + sum(abs(d.offset) for d in dims)
        samples = [{name: s} for s in (*range(bound), 10 ** 6, 10 ** 6 + 1)]
    seen = set()
    for env in samples:
        try:
            if all(_window_holds(w, env, empty_too) for w in windows) and (
                    where is None or where(env)):
                seen.add(bool(test(env)))
        except (KeyError, ValueError, ZeroDivisionError):
            return None
    if not seen:
        return empty_is
    return seen.pop() if len(seen) == 1 else None


def _window_holds(window: Delta, env: dict, empty_too: bool = False) -> bool:
    rows, cols = (d.size(env) for d in window.shape)
    offset = window.offset.size(env)
    if empty_too:
        return rows >= 0 and 0 <= offset and offset + rows <= cols
    return rows > 0 and cols > 0 and 0 <= offset and offset + rows <= cols


def is_structure(node: Node) -> bool:
    """Whether `node` is built of unit vectors, windows and finite constants alone (a 0/1
    pattern, or a few times one): its zeros are structural, exact whatever multiplies it."""
    stack = [node]
    while stack:
        n = stack.pop()
        kind = type(n)
        if kind is Const:
            if not np.isfinite(n.value):
                return False
        elif kind is Add or kind is Contract or kind is Prim and n.fn in _PLACING:
            stack.extend(n.children())
        elif kind is not Unit and kind is not Delta:
            return False
    return True


def is_window(node: Node) -> bool:
    """A selection of rows, each a unit vector of its own column: a window (a non-identity
    delta, a slice's rows) or every k-th row of one (lanes.py's `X[2 * t]` of every step t,
    `stride(delta, 0, k)`)."""
    kind = type(node)
    if kind is Delta:
        return not node.is_identity
    return kind is Prim and node.fn == "<stride>" and node.params[0] == (0,) and \
        type(node.args[0]) is Delta


# Linear maps that only move entries (a strided identity, `eye(n)[:, ::2]`, is a 0/1 pattern)
_PLACING = frozenset({"<stride>", "dilate", "flip", "reshape", "triu", "tril"})


# Functions whose value is finite wherever their arguments are (up to overflow of a large
# product): a derivative made of these and inputs has no inf to spread at finite inputs.
# Every other function (division, log, a power, sqrt's derivative, an unknown or a user's
# rule) may make one, so the vectorizer writes structural zeros exactly around it.
_FINITE_MAPS = frozenset({
    "neg", "tanh", "sigmoid", "dsigmoid", "sech2", "sin", "cos", "arctan", "abs", "relu",
    "sign", "step", "heaviside", "maximum", "minimum", "clip", "where", "greater",
    "greater_equal", "less", "less_equal", "equal", "not_equal", "complement", "floor", "ceil",
    "round", "square", "cbrt", "erf", "erfc", "softplus", "logsigmoid", "logaddexp", "logcosh", "gelu",
    "hypot"})
_FINITE_PRIMS = frozenset({"softmax", "log_softmax", "logsumexp", "max", "min", "norm",
                           "max_weights", "argmax_onehot", "cumsum", "flip", "<stride>",
                           "dilate", "reshape", "triu", "tril", "complement",
                           "softmax_minus"})
_FINITE: "weakref.WeakKeyDictionary[Node, bool]" = weakref.WeakKeyDictionary()


def finite_where_inputs_are(node: Node) -> bool:
    """Whether `node` is finite at every finite input: built of inputs, finite constants,
    sums, products and the functions above. Conservative (False for anything else), and
    remembered per node: asked of many products, each walks its operands once."""
    return _finite(node, _FINITE_MAPS, _FINITE)


# Functions infinite at a finite input only where they overflow (exp(710)): no pole.
_OVERFLOW_ONLY = frozenset({"exp", "exp2", "expm1", "sinh", "cosh"})
_NO_POLE: "weakref.WeakKeyDictionary[Node, bool]" = weakref.WeakKeyDictionary()


def free_of_poles(node: Node) -> bool:
    """`finite_where_inputs_are`, with the functions that are infinite at a finite input only
    past overflow (exp, sinh, cosh) counted finite: whether `node` has no pole (log(0),
    1 / 0, sqrt's derivative at 0) at finite inputs. Conservative, remembered per node."""
    return _finite(node, _FINITE_MAPS | _OVERFLOW_ONLY, _NO_POLE)


def _finite(node: Node, maps: frozenset, known) -> bool:
    found = known.get(node)
    if found is not None:
        return found
    stack, seen = [(node, False)], set()
    while stack:  # post-order over the nodes not yet known, each once (the IR is a DAG)
        n, children_done = stack.pop()
        if not children_done:
            if id(n) in seen or n in known:
                continue
            seen.add(id(n))
            stack.append((n, True))
            stack.extend((c, False) for c in n.children())
            continue
        kind = type(n)
        if kind is Const:
            ok = bool(np.isfinite(n.value))
        elif kind is Map:
            ok = n.fn in maps
        elif kind is Prim:
            ok = n.fn in _FINITE_PRIMS
        else:  # an input, a size, a unit vector or window, a sum or product of these
            ok = True
        known[n] = ok and all(known.get(c, False) for c in n.children())
    return known[node]
