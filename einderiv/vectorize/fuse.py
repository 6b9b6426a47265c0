"""Products that share an operand, fused: one product with the weights stacked.

An LSTM written with one weight matrix per gate multiplies the same state by each of them at
every step (`W_f @ h, W_i @ h, W_o @ h, W_c @ h`). Seed 003 names the cost: products sharing
an operand, done one by one, are many small calls. Here the weights are stacked once,
`S = stack(W_f, W_i, W_o, W_c)` (inputs only: computed once for all steps), and each step does
one product, `S @ h`, whose rows are the gates' products (LSTM 64x128x32: 2.65 -> 2.30 ms).

Each gate's pre-activation `W_g @ h + r_g` (r_g the input's projection and bias) is a row of
one sum `S @ h + stack(r_f, r_i, ...)`: one addition per step instead of four, and the gates'
sigmoids one call on the rows they cover (siblings.py), as a hand-written LSTM's
`sigmoid(z[:3H])` (LSTM 9x9x11 329 -> 280 us, 64x128x32 1725 -> 1677 us). The stacks
`stack(r_f, r_i, ...)` of all steps are then one (`joined`: program.py batches them across
steps), a step reading its row.

The backward pass's sums `W_f.T @ a_f + W_i.T @ a_i + ...` (vectors a_g) over every weight of
a stack are one product too, of the stacked adjoints with the weights stacked once (their
coefficients on its rows): `reshape(A, (4 * n,)) @ reshape(S, (4 * n, n))` with
`A = stack(a_f, a_i, ...)`, one stack and one matrix product for four products, three scalings
and three additions (6.5 -> 3.2 us at n = 9, 12.5 -> 9.8 us at n = 128, per step). As an
einsum it was slower at every size measured.

Only weights (input variables) are stacked, and only groups of weights that recur at least
`MIN_STEPS` times: for a product done once, copying the weights into a stack costs more than
the calls it saves.
"""
from __future__ import annotations

from collections import Counter

from ..ir import build
from ..ir.nodes import Add, Contract, Node, Unit, Var
from .lanes import _with_children

# A group of weights is stacked only if this many groups of products use it (an unrolled loop).
MIN_STEPS = 3


def fuse_products(roots: dict[str, Node], order: list[Node],
                  joined: list[Node] | None = None) -> dict[str, Node]:
    """`roots` with products that share an operand fused (`roots` itself when there are none).
    `order`: a topological order of the graph of `roots`. `joined`, where given, gets the
    stacks of the other terms of joined sums (`stack(r_f, r_i, ...)`), one per group."""
    # Cheaply first: products with one weight, and whether several weights are multiplied
    # alike at all (most programs have none, and building the other factors costs a node each).
    candidates = [n for n in order if type(n) is Contract and len(n.operands) > 1 and
                  sum([type(c) is Var and c.rank == 2 for c, _ in n.operands]) == 1]
    alike: dict[tuple, set] = {}
    for n in candidates:
        weight = next(c for c, _ in n.operands if type(c) is Var and c.rank == 2)
        alike.setdefault((tuple(map(id, weight.shape)), n.out, len(n.operands)),
                         set()).add(weight.name)
    found: dict[int, tuple] = {}  # id(product) -> _weighted(product)
    for n in candidates:
        weight = next(c for c, _ in n.operands if type(c) is Var and c.rank == 2)
        if len(alike[(tuple(map(id, weight.shape)), n.out, len(n.operands))]) > 1:
            w = _weighted(n)
            if w is not None:
                found[id(n)] = w
    if not found:
        return roots
    forward: dict[tuple, list[Node]] = {}  # one operand times several weights, alike
    for n in order:
        w = found.get(id(n))
        if w is not None:
            forward.setdefault((id(w[1]), w[3]), []).append(n)
    forward = {k: g for k, g in forward.items() if len(g) > 1}

    def names(terms) -> tuple:
        return tuple(sorted(found[id(t)][0].name for t in terms))

    # Groups of weights that recur (steps of an unrolled loop) pay for their stack.
    recurring = Counter(names(g) for g in forward.values())
    forward = {k: g for k, g in forward.items() if recurring[names(g)] >= MIN_STEPS}
    if not forward:
        return roots
    members = {id(m): group for group in forward.values() for m in group}
    stacks = {}  # the names of each stacked group -> its weights, in the stack's order
    for group in forward.values():
        weights = sorted({found[id(m)][0] for m in group}, key=lambda w: w.name)
        stacks[tuple(w.name for w in weights)] = weights
    memo: dict[int, Node] = {}
    products: dict[int, Node] = {}  # id(a forward group's first member) -> its fused product
    joins = _joined_sums(order, forward, members, found)
    for n in order:
        group = members.get(id(n))
        if group is not None:
            memo[id(n)] = _row(products, group, n, found, memo)
        elif id(n) in joins:
            memo[id(n)] = _joined_row(joins[id(n)], products, memo, joined)
        else:
            children = n.children()
            new = [memo[id(c)] for c in children]
            memo[id(n)] = n if all(a is b for a, b in zip(new, children)) else \
                _with_children(n, new)
            if type(n) is Add and len(n.terms) > 1:
                memo[id(n)] = _fused_sum(memo[id(n)], stacks)
    return {name: memo[id(node)] for name, node in roots.items()}


def _joined_sums(order: list[Node], forward: dict, members: dict, found: dict) -> dict:
    """id of a sum `W_g @ h + r_g` (a fused product's row plus another term) -> how to read it
    as row g of one sum `S @ h + stack(r...)`, for the groups where every row has one: an LSTM
    step's four gate pre-activations are then one array, one addition instead of four, and
    siblings.py applies sigmoid once to its three sigmoid rows instead of three times. Only
    where no r_g depends on a member of the group (so on none of the sums it joins)."""
    where = {id(n): k for k, n in enumerate(order)}
    wanted: dict[int, dict] = {}  # id(a group's first member) -> row -> [(sum, r, coef)]
    for n in order:
        if type(n) is not Add or len(n.terms) != 2:
            continue
        for (c, t), (c_other, other) in (n.terms, n.terms[::-1]):
            group = members.get(id(t))
            if group is not None and c == 1.0 and id(other) not in members and \
                    other.shape == t.shape:
                weights = sorted({found[id(m)][0] for m in group}, key=lambda w: w.name)
                row = weights.index(found[id(t)][0])
                wanted.setdefault(id(group[0]), {}).setdefault(row, []).append(
                    (n, other, c_other, group, len(weights)))
                break
    joins = {}
    for key, rows in wanted.items():
        _, _, _, group, count = next(iter(rows.values()))[0]
        first = min(where[id(m)] for m in group)
        targets = {id(m) for m in group}
        if len(rows) != count or any(len(sums) != 1 or
                                     _reaches(sums[0][1], targets, first, where)
                                     for sums in rows.values()):
            continue
        shared = {"key": key, "terms": {r: (s[0][1], s[0][2]) for r, s in rows.items()},
                  "node": None, "count": count}
        for r, sums in rows.items():
            joins[id(sums[0][0])] = (shared, r)
    return joins


def _reaches(node: Node, targets: set, first: int, where: dict) -> bool:
    """Whether `node` depends on one of `targets` (ids of nodes at position `first` or later
    of the topological order: what comes before that cannot, and the search stops there)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if id(n) in targets:
            return True
        if id(n) in seen or where.get(id(n), first) < first:
            continue
        seen.add(id(n))
        stack.extend(n.children())
    return False


def _joined_row(join: tuple, products: dict, memo: dict, joined: list | None) -> Node:
    """Row `r` of the joined sum `S @ h + stack(r_0, r_1, ...)` (built once per group)."""
    shared, r = join
    if shared["node"] is None:
        fused = products[shared["key"]]
        rest = tuple(range(1, fused.rank))
        stacked = Add([(1.0, Contract((0, *rest), [
            (Unit(shared["count"], k), (0,)),
            (build.scale(c, memo.get(id(t), t)), rest)]))
            for k, (t, c) in sorted(shared["terms"].items())])
        if joined is not None:
            joined.append(stacked)
        shared["node"] = Add([(1.0, fused), (1.0, stacked)])
    joined = shared["node"]
    rest = tuple(range(1, joined.rank))
    return Contract(rest, [(joined, (0, *rest)), (Unit(joined.shape[0], r), (0,))])


def _fused_sum(n: Add, stacks: dict) -> Node:
    """`n` with its terms that multiply each weight of a stacked group once, alike
    (`W_f.T @ a_f + W_i.T @ a_i + ...`), as one product of the stack with their other factors
    stacked in its order."""
    alike: dict[tuple, list] = {}  # (key, the group's names) -> [(term index, weighted)]
    for k, (_, t) in enumerate(n.terms):
        w = _weighted(t) if type(t) is Contract else None
        if w is None or any(l in t.out for l in w[2]):
            # (a batch of adjoints, A_g @ W_g: the stack's axis would sit between the batch
            # axis and the summed one, an einsum; measured only for vectors, where it pays)
            continue
        for names in stacks:
            if w[0].name in names:
                alike.setdefault((w[3], names), []).append((k, w))
    fused_terms, used = [], set()
    for (_, names), items in alike.items():
        if sorted(w[0].name for _, w in items) != list(names) or used & {k for k, _ in items}:
            continue  # not every weight of the stack once: its rows would be zeros or sums
        weights = stacks[names]
        first = n.terms[items[0][0]][1]
        _, _, labels, _ = items[0][1]
        rows, coefs = {}, {}
        for k, (weight, other, _, _) in items:
            used.add(k)
            row = weights.index(weight)
            coefs[row] = n.terms[k][0]
            rest = tuple(range(1, other.rank + 1))
            rows[row] = Contract((0, *rest), [(Unit(len(weights), row), (0,)), (other, rest)])
        stacked = Add([(1.0, rows[r]) for r in range(len(weights))])
        lane = len(first.dims)
        lw = _weight_labels(first, items[0][1][0])
        # The terms' coefficients (sigmoid's 1/4 on three gates of an LSTM) scale the weights,
        # stacked once for every step, not each step's adjoints.
        common = coefs[0] if len(set(coefs.values())) == 1 else 1.0
        weighted = _stack(weights, [coefs[r] / common for r in range(len(weights))])
        fused_terms.append(build.scale(common, build.contract(
            first.out, [(weighted, (lane, *lw)), (stacked, (lane, *labels))])))
    if not fused_terms:
        return n
    terms = [t for k, t in enumerate(n.terms) if k not in used] + \
        [(1.0, t) for t in fused_terms]
    return terms[0][1] if len(terms) == 1 and terms[0][0] == 1.0 else Add(terms)


def _weighted(n: Contract):
    """(weight, the other factor, its labels, key) when `n` multiplies one matrix variable (the
    weight) with other factors, summing over at least one of the weight's axes: `W @ h`,
    `W.T @ (a * s)`, `X @ W.T`. The other factor is the product of the rest as one node
    (hash-consed: the same for every product with it); the key tells apart how the two are
    multiplied and their shapes."""
    operands = n.operands
    if len(operands) < 2:
        return None
    at = [k for k, (c, _) in enumerate(operands) if type(c) is Var and c.rank == 2]
    if len(at) != 1:
        return None
    weight, lw = operands[at[0]]
    rest = operands[:at[0]] + operands[at[0] + 1:]
    out = n.out
    rest_labels = {l for _, ls in rest for l in ls}
    if lw[0] == lw[1]:
        return None
    roles, summed = [], []
    for l in lw:
        if l in out:
            if l in rest_labels:  # an elementwise product with the weight: not a product
                return None
            roles.append(out.index(l))
        elif l in rest_labels:
            roles.append(-1)
            summed.append(l)
        else:
            return None  # summed over the weight alone
    if not summed:
        return None  # an outer product: nothing to fuse
    other_out = tuple(l for l in out if l in rest_labels)
    labels = other_out + tuple(summed)
    other = build.contract(labels, rest)
    key = (tuple(roles), tuple(out.index(l) for l in other_out), len(out),
           tuple(map(id, weight.shape)), tuple(id(n.dims[l]) for l in labels))
    return weight, other, labels, key


def _stack(weights: list[Var], coefs=None) -> Node:
    """The weights, sorted by name, along a new leading axis (one node for equal sets), each
    scaled by its coefficient if given (in that order)."""
    weights = sorted(weights, key=lambda w: w.name)
    count = len(weights)
    coefs = coefs or [1.0] * count
    # (a coefficient on the row, inside: the program writes `stack([W_a, 0.25 * W_b])`)
    return Add([(1.0, Contract((0, 1, 2), [(Unit(count, k), (0,)), (build.scale(c, w), (1, 2))]))
                for k, (c, w) in enumerate(zip(coefs, weights))])


def _product(stack: Node, member: Contract, lw: tuple, other: Node, labels: tuple) -> Node:
    """`member`'s product (its weight's labels `lw`) with `stack` in place of its weight and
    `other` (labels `labels`) as the other factor, the stack's axis in front of the output."""
    lane = len(member.dims)
    return build.contract((lane, *member.out), [(stack, (lane, *lw)), (other, labels)])


def _weight_labels(member: Contract, weight: Var) -> tuple:
    return next(ls for c, ls in member.operands if c is weight)


def _row(products: dict, group: list[Node], member: Contract, found: dict, memo: dict) -> Node:
    """`member` (one of `group`: the same factor times several weights) as a row of the
    group's fused product."""
    # (each weight once: two products of one weight with the state, `W @ h` and `h @ W.T`,
    # read one row)
    weights = sorted({found[id(m)][0] for m in group}, key=lambda w: w.name)
    fused = products.get(id(group[0]))
    if fused is None:
        first = group[0]
        weight, other, labels, _ = found[id(first)]
        fused = products[id(first)] = _product(
            _stack(weights), first, _weight_labels(first, weight), _rebuilt(other, memo),
            labels)
    row = weights.index(found[id(member)][0])
    rest = tuple(range(1, fused.rank))
    return build.contract(rest, [(fused, (0, *rest)), (Unit(fused.shape[0], row), (0,))])


def _rebuilt(other: Node, memo: dict) -> Node:
    """`other`, a product built from the graph's nodes, over their rebuilt versions."""
    if id(other) in memo:
        return memo[id(other)]
    if type(other) is Contract:
        return _with_children(other, [memo.get(id(c), c) for c in other.children()])
    return other
