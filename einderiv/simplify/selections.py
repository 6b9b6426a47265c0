"""Selections: linear maps that pick entries of a tensor, each entry of the result one entry of
the tensor (or of a size-1 axis of it), and nothing else.

A pick by an integer index (`Unit`), a slice's window (`Delta`, and every k-th row of one), a
diagonal (a label repeated, `diag(X)`), a transpose, a broadcast (an output label no operand
carries, or a size-1 axis summed), in one `Contract` with a single tensor; and the linear maps
of lower/linear.py that move entries: a step (`x[::2]`), a reversal (`x[::-1]`, `flip`) and a
reshape. Compositions of them (`diag(X)[::-1][1:]`) are peeled one layer at a time.

An elementwise function commutes with every selection (`f(sel(x)) = sel(f(x))`, entry by
entry), which the rewrite pass uses both ways: a function of a selection is tried as the
selection of the function of the whole tensor (`log(softmax(x)[::2])` is
`log_softmax(x)[::2]`), and a selection of a function as the function of selections
(`exp(p)[:, None]` broadcast against `exp(N)` as `exp(p[:, None])`, so that
`log(exp(p)[:, None] + exp(N))` is `logaddexp(p[:, None], N)`; under a sum too:
`sum(exp(x)[::-1])` as `sum(exp(x[::-1]))`, `tr(exp(L))` as `sum(exp(diag(L)))`). A triangle (`triu`), a
dilation, a placed diagonal (`diag(x)`) or a pad put zeros among the entries, and a sum adds
them: none is a selection (f(0) is not 0).
"""
from __future__ import annotations

from ..ir import build
from ..ir.deltas import is_window
from ..ir.dims import ONE
from ..ir.nodes import Add, Contract, Delta, Map, Node, Prim, Unit
from ..lower import linear

# The linear maps that move entries: a step keeps every k-th, a reversal and a reshape all.
_MOVING = frozenset({linear.STRIDE, linear.FLIP, linear.RESHAPE})

# How many selections `peel` looks through (a composition people write has two or three).
MAX_LAYERS = 8


def layer(a: Node, broadcasts: bool = True):
    """(the tensor `a` selects from, a function that makes the same selection of a node shaped
    like that tensor) for one selection `a`, or None where `a` is none (or, unless
    `broadcasts`, where it broadcasts)."""
    kind = type(a)
    if kind is Prim:
        if a.fn not in _MOVING:
            return None
        (x,), axes = a.args, a.params[0]
        if a.fn == linear.FLIP:
            return x, lambda r: linear.flip(r, axes[0])
        if a.fn == linear.STRIDE:
            k = a.params[1]
            return x, lambda r: linear.stride(r, axes[0], k)
        shape, block = a.params[1], len(axes)
        return x, lambda r: linear.reshape(r, shape, block)
    if kind is not Contract:
        return None
    main, picks = None, []
    for n, ls in a.operands:
        if type(n) is Unit or type(n) is Delta or is_window(n):
            picks.append((n, ls))
        elif main is None and build.constant_value(n) is None:
            main = (n, ls)
        else:
            return None  # a product, or a scale: not a selection
    if main is None:
        return None
    tensor, labels = main
    out = set(a.out)
    owned: set = set()  # the labels a pick or a window takes
    for n, ls in picks:
        if type(n) is Unit:
            (l,) = ls
            if l not in labels or l in out or l in owned:
                return None
            owned.add(l)
        else:  # a window: output row o is the tensor's entry l (o + offset)
            if len(ls) != 2:
                return None
            o, l = ls
            if o not in out or o in labels or o in owned or l not in labels or l in out or \
                    l in owned:
                return None
            owned.update(ls)
    for l in labels:
        if l not in out and l not in owned and (a.dims[l] != ONE or not broadcasts):
            return None  # a sum over an axis: not a selection
    if not broadcasts and any(l not in labels and l not in owned for l in a.out):
        return None
    if not picks and labels == a.out:
        return None
    dims = {l: a.dims[l] for l in a.out}
    return tensor, lambda r: build.contract(a.out, [(r, labels), *picks], dims)


def peel(a: Node, broadcasts: bool = True):
    """(the tensor under every selection layer of `a`, a function that makes them all of a
    node shaped like it), or None where `a` is no selection (or, unless `broadcasts`, where a
    layer broadcasts: stops below it)."""
    backs = []
    while len(backs) < MAX_LAYERS:
        found = layer(a, broadcasts)
        if found is None:
            break
        a, back = found
        backs.append(back)
    if not backs:
        return None

    def back(r: Node) -> Node:
        for b in reversed(backs):
            r = b(r)
        return r
    return a, back


def pushed(a: Node) -> Node | None:
    """A selection of an elementwise function as the function of the selections of its
    tensor arguments (`exp(p)[:, None]` as `exp(p[:, None])`, `sigmoid(x)[::-1]` as
    `sigmoid(x[::-1])`), its scalars as they are; None where `a` is no selection of one."""
    found = peel(a)
    if found is None or type(found[0]) is not Map:
        return None
    f, back = found
    args = [back(b) if b.rank == f.rank and (b.rank or build.constant_value(b) is None)
            else b for b in f.args]
    made = build.elementwise(f.fn, args)
    return made if made.shape == a.shape else None  # (a function of numbers, broadcast)


def product_pushed(node: Contract) -> Node | None:
    """A product (a `Contract` that sums nothing) with the elementwise functions among its
    factors that it broadcasts, transposes or takes the diagonal of made functions of those
    selections of their arguments (`(1 - y) * sigmoid(p)[:, None]` as
    `(1 - y) * sigmoid(p[:, None])`); None where it has none."""
    if not build._is_product(node):
        return None
    dims = {l: node.dims[l] for l in node.out}
    operands, changed = [], False
    for n, ls in node.operands:
        if type(n) is Map and n.rank and ls != node.out:
            args = [build.contract(node.out, [(b, ls)], dims) if b.rank else b
                    for b in n.args]
            made = build.elementwise(n.fn, args)
            if made.shape == node.shape:
                n, ls, changed = made, node.out, True
        operands.append((n, ls))
    return build.contract(node.out, operands, dims) if changed else None


def view(node: Node, depth: int, limit: int, memo: dict) -> Node:
    """`node` with every selection of an elementwise function among its operands, down to
    `depth` levels (arguments, terms, factors; of nodes of at most `limit` of them), made the
    function of selections (`pushed`), and a function of scalars that an elementwise function
    broadcasts the function of the broadcast scalars: the same values, in the form a pattern
    lowered with the selected tensors as its variables has. `node` itself where there is
    none."""
    if depth == 0:
        return node
    kind = type(node)
    if kind is Map:
        # (a function of a scalar among a tensor's, `exp(a)` in `exp(a) / (exp(a) + exp(N))`,
        # is broadcast as the terms beside it are: the function of the broadcast)
        args = [(node.rank and not a.rank and type(a) is Map and
                 pushed(build.broadcast_to(a, node.shape))) or _seen(a, depth - 1, limit, memo)
                for a in node.args]
        if all(a is b for a, b in zip(args, node.args)):
            return node
        return build.elementwise(node.fn, args)
    if kind is Add:
        if len(node.terms) > limit:
            return node
        terms = [(c, _seen(t, depth - 1, limit, memo)) for c, t in node.terms]
        if all(t is u for (_, t), (_, u) in zip(terms, node.terms)):
            return node
        return build.add(terms)
    if kind is Contract and len(node.operands) <= limit and build._is_product(node):
        product = product_pushed(node)
        base = product if product is not None else node
        operands = [(_seen(n, depth - 1, limit, memo), ls) for n, ls in base.operands]
        if all(n is m for (n, _), (m, _) in zip(operands, base.operands)):
            return base
        return build.contract(base.out, operands, {l: base.dims[l] for l in base.out})
    if kind is Contract and len(node.operands) <= limit:
        # a reduction: its operands that select from a function made functions of the
        # selections (`sum(exp(x)[::-1])` as `sum(exp(x[::-1]))`), and a function whose
        # diagonal it takes the function of the diagonals (`tr(exp(L))` as
        # `sum(exp(diag(L)))`): a sum of the same entries
        operands = [_diagonal(_seen(n, depth - 1, limit, memo), ls, node.dims)
                    for n, ls in node.operands]
        if all(n is m and ls is ks for (n, ls), (m, ks) in zip(operands, node.operands)):
            return node
        return build.contract(node.out, operands, {l: node.dims[l] for l in node.out})
    return node


def _diagonal(n: Node, labels: tuple, dims) -> tuple:
    """(the operand, its labels) for an operand `n` on `labels` of a `Contract` with `dims`:
    an elementwise function on a repeated label as the function of the diagonals of its
    arguments on the label once (`exp(L)` on (i, i) as `exp(diag(L))` on (i,)); else as it
    is."""
    if type(n) is not Map or not n.rank or len(set(labels)) == len(labels):
        return n, labels
    once = tuple(dict.fromkeys(labels))
    made = pushed(build.contract(once, [(n, labels)], {l: dims[l] for l in once}))
    return (n, labels) if made is None or type(made) is not Map else (made, once)


def _seen(node: Node, depth: int, limit: int, memo: dict) -> Node:
    """`node` pushed where it is a selection of a function, else its `view`."""
    key = (node, depth)
    found = memo.get(key)
    if found is None:
        found = pushed(node) if type(node) in (Contract, Prim) else None
        if found is None:
            found = view(node, depth, limit, memo)
        memo[key] = found
    return found
