"""Products of one operand with several weights of one shape, as one product.

A network that gives each gate its own input weights projects the same inputs by each of them:
batched across steps (lanes.py), `X[:T] @ U_c.T + b_c`, `X[:T] @ U_f.T + b_f`, ...: a matrix
product and a bias addition per gate, whose results fuse.py then stacks again for the steps
to read (`stack([P_c[1:], P_f, ...], axis=1)`, one row per gate). Hand-written code
concatenates the weights once and does one product, `A = X @ U.T + b` of shape [T, 4H], each
gate a slice of it. So does this pass: products of one shared operand (a node, or windows of
its rows) with weights that are input variables of one shape are one product of the weights
stacked (inputs only, so once per call),

    reshape(X[:T] @ reshape(stack([U_c, U_f, ...]), (4 * H, V)).T
            + reshape(stack([b_c, b_f, ...]), (4 * H,)), (T, 4, H)),

the bias included where every product has one, and each old product (or its sum with its bias)
is a part `A[rows, g]` of it. Parts of parts are read from it directly (`A[0, 3]`), and a stack
of all of its gates' parts, in its order, is a window of it (`A[1:]`, where the stack was a copy
of four picks). A gate whose product reads fewer rows (the forget gate's, unused at step 0) is
computed on the other gates' rows too: at most `MAX_WASTE` times the rows asked for (of a
symbolic length, at most a row more for each product). LSTM 9x9x11, those products and the stack
12.6 -> 6.6 us, the gradient 242 -> 232 us (hand-written numpy: 241); 64x128x32, 1467 -> 1396 us
(same process, single thread).

Only where the program reads the fused product by rows: a step's row of all gates (`A[t]`, `A[1:]`)
or one gate's row (`A[0, g]`), each contiguous. Products read whole (`tanh(X @ A.T + a) * tanh(X @
B.T + b)`) would read each gate strided, `A[:, g]`, and elementwise work on strided gates costs more
than the calls saved (1000x100x200: 1.19 times the unfused gradient; 3x500x500, where copying the
weights is most of it, 1.44 times). Only where some stack of the gates' rows becomes a row or window
of it: the copies of the weights and biases and the reshapes cost more than the products' calls
alone save (two gates read by rows, never stacked: 1.03 to 1.05 times the time). And only matrix
products (the shared operand has a row axis): copying the weights into a stack costs about one pass
over them, as much as a product with one vector (fuse.py stacks the recurrent weights, multiplied by
one state per step, only for loops). Where the sizes are known, only weights no wider than the rows:
the copy, made on every call, costs more than the calls and the stack of rows it saves otherwise (an
LSTM at V = H = 300, 8 steps: 1.5 times slower, its stack of weights a large temporary whose pages
are mapped anew on each call). Where they are names, the generated code's `kernels.stacked_product`
decides at the call: it multiplies large weights one by one into their columns of the result.
"""
from __future__ import annotations

from ..ir import build
from ..ir.dims import Dim
from ..ir.nodes import Add, Const, Contract, Delta, Node, Prim, Unit, Var, topological
from ..lower.dimensions import product
from ..lower.linear import RESHAPE
from .lanes import _with_children

# The rows the fused product computes, at most this many times the rows the products asked
# for (a product of rows 1: beside products of rows 0: computes its row 0 too).
MAX_WASTE = 1.25


def fuse_projections(roots: dict[str, Node], order: list[Node]) -> tuple[dict, list]:
    """`roots` with each group of products of one operand by several weights computed as one
    product, and a topological order of their graph (`roots` and `order` themselves when no
    group is fused). `order`: a topological order of the graph of `roots`."""
    groups: dict[tuple, list[tuple]] = {}
    for n in order:
        if type(n) is Contract and len(n.out) == 2 and len(n.operands) > 1:
            found = _projection(n)
            if found is not None:
                weight, side, base, start, rows = found
                groups.setdefault((id(base), side, weight.shape), []).append(
                    (n, weight, side, base, start, rows))
    groups = {k: g for k, g in groups.items() if len({m[1] for m in g}) == len(g) > 1}
    if not groups:
        return roots, order
    members = {id(m[0]) for g in groups.values() for m in g}
    users: dict[int, list[Node]] = {}
    for n in order:
        for c in n.children():
            if id(c) in members:
                users.setdefault(id(c), []).append(n)
    root_ids = {id(n) for n in roots.values()}
    plans = [plan for plan in (_plan(g, users, root_ids) for g in groups.values()) if plan]
    while plans:
        replaced = {k: part for _, parts in plans for k, part in parts.items()}
        stacked: set[int] = set()
        new = _rebuilt(roots, order, replaced, stacked)
        new_order = topological(*new.values())
        fused = {id(fused) for fused, _ in plans}
        # A gate read whole (`A[:, g]`, strided in the fused product's layout) costs more
        # than the calls saved (the module's docstring); and a product none of whose rows
        # was a stack of its gates' rows saves one call a gate, for the copies of the weights
        # and biases and three reshapes it adds (two gates read by rows: 1.03 to 1.05 times
        # the time): those groups stay apart.
        apart = _strided(new_order, fused) | (fused - stacked)
        if not apart:
            return new, new_order
        plans = [(f, parts) for f, parts in plans if id(f) not in apart]
    return roots, order


def _rebuilt(roots: dict[str, Node], order: list[Node], replaced: dict,
             stacked: set) -> dict[str, Node]:
    """`roots` with the nodes of `replaced` (by id) replaced, and parts of parts simplified;
    the ids of the nodes that a stack of parts became a part of are added to `stacked`."""
    memo: dict[int, Node] = {}
    # The ids of the new nodes that are parts of a fused product, and of those that read one:
    # only their users can be parts of parts or stacks of parts (most rebuilt nodes are
    # neither: the rest of the program, which reads the projections).
    parts = {id(p) for p in replaced.values()}
    near: set[int] = set()
    for n in order:
        new = replaced.get(id(n))
        if new is None:
            children = n.children()
            rebuilt = [memo[id(c)] for c in children]
            if all(a is b for a, b in zip(rebuilt, children)):
                new = n
            else:
                new = _with_children(n, rebuilt)
                read = [id(c) in parts for c in rebuilt]
                if any(read) or type(n) is Add and any([id(c) in near for c in rebuilt]):
                    simpler = _simplified(new, stacked)
                    if simpler is not new:
                        new = simpler
                        parts.add(id(new))
                    elif any(read):
                        near.add(id(new))
        memo[id(n)] = new
    return {name: memo[id(node)] for name, node in roots.items()}


def _strided(order: list[Node], fused: set[int]) -> set[int]:
    """The ids of the fused products (of `fused`) that the program reads other than by rows
    of all gates (`A[t]`, `A[1:]`) or a row of one (`A[0, g]`): `A[:, g]` is strided."""
    found = set()
    for n in order:
        for c in n.children():
            if id(c) in fused and type(n) is Contract:
                part = _part(n)
                if part is None or part[1][0][0] != "pick" and part[1][1] != ("all",):
                    found.add(id(c))
    return found


def _projection(n: Contract):
    """(weight, side, base, start, rows) when `n` is a matrix product `P[i, j]` of one matrix
    variable (the weight, `W[j, k]`: side 0, or `W[k, j]`: side 1) with rows `start` ..
    `start + rows` of another matrix (`base[i, k]`) summed over k; else None."""
    i, j = n.out
    # (the shared operand may be a variable too: `X @ U.T`, the weight the one carrying j)
    weights = [p for p, (c, ls) in enumerate(n.operands)
               if type(c) is Var and c.rank == 2 and j in ls]
    if len(weights) != 1:
        return None
    weight, lw = n.operands[weights[0]]
    if lw[0] == lw[1]:
        return None
    side = lw.index(j)
    k = lw[1 - side]
    if k in n.out:
        return None
    # every operand but the weight's, the weight itself included where it is also a factor
    # of the rows (`(X * U) @ U.T`: the rows are X * U, not X)
    rest = n.operands[:weights[0]] + n.operands[weights[0] + 1:]
    labels = {l for _, ls in rest for l in ls}
    if j in labels or i not in labels or k not in labels or \
            any(type(c) is Const for c, _ in rest):
        return None
    other = build.contract((i, k), rest)
    base, start, rows = other, 0, other.shape[0]
    if type(other) is Contract and len(other.operands) == 2:
        (d, ld), (b, lb) = other.operands
        if type(b) is Delta:
            (d, ld), (b, lb) = (b, lb), (d, ld)
        if type(d) is Delta and type(b) is not Delta and d.offset.is_concrete and \
                ld[0] == 0 and ld[1] not in other.out and lb == (ld[1], 1):
            base, start, rows = b, d.offset.offset, d.shape[0]
    if type(base) in (Delta, Unit) or base.rank != 2 or rows.is_concrete and rows.offset < 2:
        # a selection (`X[:T]` is a window times X), not a product; or a product with a
        # vector, which would not pay for the stack of weights
        return None
    return weight, side, base, start, rows


def _plan(group: list[tuple], users: dict, root_ids: set) -> tuple | None:
    """(the group's fused product, id(old node) -> its part of it), or None where fusing
    would compute many rows no product asks for (more than MAX_WASTE times the rows asked
    for; of a symbolic length, more than a row more for each product), or copy weights wider
    than its rows."""
    starts = [m[4] for m in group]
    ends = [Dim(m[5].name, m[5].offset + m[4]) for m in group]
    if len({e.name for e in ends}) != 1:
        return None  # rows of sizes that do not compare
    lo, hi = min(starts), max(e.offset for e in ends)
    span = Dim(ends[0].name, hi - lo)
    waste = sum(hi - lo - (e.offset - s) for e, s in zip(ends, starts))
    if span.is_concrete and len(group) * span.offset > MAX_WASTE * (
            len(group) * span.offset - waste):
        return None
    if not span.is_concrete and waste > len(group):
        # For a symbolic length the rows asked for differ from the span by constants: a
        # number of rows wasted at any length, small beside a long one but not beside a short
        # one (X[:n-300] and X[300:] at n = 400: 4 times the rows, a gradient 17 times
        # slower). At most a row for each product, as the gates of a recurrent net's steps
        # (`X[:n-1]`, `X[1:]`): no more work than the stack of its weights costs.
        return None
    group = sorted(group, key=lambda m: m[1].name)
    _, weight, side, base, _, _ = group[0]
    count = len(group)
    j_dim, k_dim = weight.shape[side], weight.shape[1 - side]
    if k_dim.name == span.name and k_dim.offset > span.offset:
        # Stacking the weights copies G * J * K entries on every call, for one product of
        # G * J * K * rows multiplications: it pays only where the weights are no wider than
        # the rows (the copy no more than the stack of the gates' rows it saves). An LSTM's
        # gradient at V = 300, H = 300, 8 steps was 1.5 times slower (its stack of weights a
        # large temporary, mapped anew each call); 9x9x11, 16x64x32: 0.97, 0.98 times. Where
        # either size is symbolic the pass cannot tell, and fuses.
        return None
    merged = product((Dim(None, count), j_dim))
    stacked = _stack([m[1] for m in group], side)  # [G, J, K] or [K, G, J]
    if side == 0:
        matrix = Prim(RESHAPE, (stacked,), ((0, 1, 2), (merged, k_dim)), (merged, k_dim))
    else:
        matrix = Prim(RESHAPE, (stacked,), ((0, 1, 2), (k_dim, merged)), (k_dim, merged))
    rows = base if lo == 0 and base.shape[0] == span else \
        Contract((0, 1), [(Delta(span, base.shape[0], lo), (0, 2)), (base, (2, 1))])
    fused = build.contract((0, 1), [(rows, (0, 2)), (matrix, (1, 2) if side == 0 else (2, 1))])
    biases = [_bias(m[0], users, root_ids) for m in group]
    folded = all(b is not None for b in biases)
    if folded:
        vector = Prim(RESHAPE, (_stack([build.scale(c, b) for _, c, b in biases], 0),),
                      ((0, 1), (merged,)), (merged,))
        fused = Add([(1.0, fused), (1.0, build.contract((0, 1), [(vector, (1,))],
                                                        {0: span}))])
    fused = Prim(RESHAPE, (fused,), ((1,), (Dim(None, count), j_dim)),
                 (span, Dim(None, count), j_dim))
    parts = {}
    for g, (member, _, _, _, start, length) in enumerate(group):
        part = _select(fused, [("win", start - lo, length), ("pick", g), ("all",)])
        # (a product's sum with its bias is a part only where the biases are folded in)
        target = biases[g][0] if folded else member
        parts[id(target)] = part
    return fused, parts


def _bias(member: Node, users: dict, root_ids: set):
    """(the sum, coefficient, bias) when `member`'s one use is a sum `member + c * b` with `b`
    a vector variable broadcast along its rows; else None."""
    found = users.get(id(member), [])
    if len(found) != 1 or id(member) in root_ids or type(found[0]) is not Add:
        return None
    total = found[0]
    if len(total.terms) != 2:
        return None
    (c0, t0), (c1, t1) = total.terms
    if t1 is member:
        (c0, t0), (c1, t1) = (c1, t1), (c0, t0)
    if t0 is not member or c0 != 1.0 or type(t1) is not Contract or t1.out != (0, 1) or \
            len(t1.operands) != 1:
        return None
    (b, lb), = t1.operands
    if type(b) is not Var or lb != (1,):
        return None
    return total, c1, b


def _stack(nodes: list[Node], axis: int) -> Node:
    """`nodes`, of one shape, along a new axis at `axis`."""
    rank = nodes[0].rank + 1
    labels = tuple(l for l in range(rank) if l != axis)
    return Add([(1.0, Contract(tuple(range(rank)), [(Unit(len(nodes), k), (axis,)),
                                                     (n, labels)]))
                for k, n in enumerate(nodes)])


# -- parts of parts ---------------------------------------------------------------------------
#
# A part of a node is, along each of its axes, all of it ("all"), a window ("win", start,
# length) or one row ("pick", row). Users of a replaced node read parts of the fused product:
# a part of a part is one part of it, and a stack of the parts that pick each row of one of its
# axes in order is the part with that axis whole.


def _select(base: Node, specs: list[tuple]) -> Node:
    """The part of `base` that `specs` (one per axis) describe."""
    specs = [("all",) if s[0] == "win" and s[1] == 0 and s[2] == base.shape[a] else s
             for a, s in enumerate(specs)]
    if all(s[0] == "all" for s in specs):
        return base
    rank = base.rank
    out, operands, fresh = [], [], rank
    for a, s in enumerate(specs):
        if s[0] == "all":
            out.append(a)
        elif s[0] == "pick":
            operands.append((Unit(base.shape[a], s[1]), (a,)))
        else:
            out.append(fresh)
            operands.append((Delta(s[2], base.shape[a], s[1]), (fresh, a)))
            fresh += 1
    return Contract(tuple(out), [(base, tuple(range(rank))), *operands])


def _part(node: Node):
    """(base, specs) when `node` is a part of another node (not itself a window or pick);
    else None."""
    if type(node) is not Contract:
        return None
    bases = [(c, ls) for c, ls in node.operands if type(c) not in (Unit, Delta)]
    if len(bases) != 1:
        return None
    base, lb = bases[0]
    if len(set(lb)) != len(lb):
        return None
    specs: dict[int, tuple] = {}
    outer: dict[int, int] = {}  # base label -> the output label it becomes
    for c, ls in node.operands:
        if c is base:
            continue
        if type(c) is Unit and c.position.is_concrete and ls[0] in lb and \
                ls[0] not in node.out and ls[0] not in specs:
            specs[ls[0]] = ("pick", c.position.offset)
        elif type(c) is Delta and c.offset.is_concrete and ls[1] in lb and \
                ls[1] not in node.out and ls[0] in node.out and ls[1] not in specs and \
                ls[0] not in lb:
            specs[ls[1]] = ("win", c.offset.offset, c.shape[0])
            outer[ls[1]] = ls[0]
        else:
            return None
    expected = []
    for l in lb:
        if l in specs:
            if specs[l][0] == "win":
                expected.append(outer[l])
        elif l in node.out:
            specs[l] = ("all",)
            expected.append(l)
        else:
            return None  # summed: not a part
    if tuple(expected) != node.out or len(outer) != len(set(outer.values())):
        return None
    return base, [specs[l] for l in lb]


def _composed(inner: list[tuple], outer: list[tuple]) -> list[tuple]:
    """The specs of the part `outer` of the part `inner` of a node, on that node's axes."""
    rest = iter(outer)
    specs = []
    for s in inner:
        if s[0] == "pick":
            specs.append(s)
            continue
        o = next(rest)
        if s[0] == "all":
            specs.append(o)
        elif o[0] == "all":
            specs.append(s)
        elif o[0] == "win":
            specs.append(("win", s[1] + o[1], o[2]))
        else:
            specs.append(("pick", s[1] + o[1]))
    return specs


def _simplified(node: Node, stacked: set) -> Node:
    """`node` (rebuilt over a part of a fused product) as a part of that product where it is
    a part of a part, or a stack of its parts along one axis in order (its id then added to
    `stacked`)."""
    found = _part(node)
    if found is not None:
        base, outer = found
        inner = _part(base)
        if inner is not None:
            return _select(inner[0], _composed(inner[1], outer))
        return node
    if type(node) is Add and len(node.terms) > 1 and \
            len({c for c, _ in node.terms}) == 1:
        whole = _stack_of_parts(node)
        if whole is not None:
            part = _part(whole)
            stacked.add(id(whole if part is None else part[0]))
            return build.scale(node.terms[0][0], whole)
    return node


def _stack_of_parts(node: Add) -> Node | None:
    """The part `base[..., :, ...]` when `node` stacks, along one axis, the parts
    `base[..., g, ...]` for g = 0, 1, ... in order (alike on every other axis); else None."""
    rows = {}
    for _, t in node.terms:
        if type(t) is not Contract or len(t.operands) != 2:
            return None
        (u, lu), (a, la) = t.operands
        if type(a) is Unit:
            (u, lu), (a, la) = (a, la), (u, lu)
        if type(u) is not Unit or not u.position.is_concrete or lu[0] not in t.out:
            return None
        axis = t.out.index(lu[0])
        if la != t.out[:axis] + t.out[axis + 1:]:
            return None
        part = _part(a)
        if part is None:
            return None
        rows[u.position.offset] = (axis, part)
    count = Dim(None, len(node.terms))
    if sorted(rows) != list(range(len(node.terms))) or node.shape[rows[0][0]] != count:
        return None  # (a row twice, or some row zero)
    axis, (base, specs) = rows[0]
    picked = [a for a, s in enumerate(specs) if s == ("pick", 0)]
    for p in picked:
        if base.shape[p] != count or \
                sum(s[0] != "pick" for s in specs[:p]) != axis:
            continue
        if all(r[0] == axis and r[1][0] is base and r[1][1] ==
               specs[:p] + [("pick", g)] + specs[p + 1:] for g, r in sorted(rows.items())):
            return _select(base, specs[:p] + [("all",)] + specs[p + 1:])
    return None
