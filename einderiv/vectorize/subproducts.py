"""An elementwise product that the program computes anyway, read where a larger product has
the same two factors.

Einstein products are flat: a backward step of an RNN is `W[k,i] * a_t[k] * s_t[k]` (the
adjoint times tanh's derivative, times the weight), the weight's gradient `a_t[k] * s_t[k] *
h[j]` and the bias's `a_t[k] * s_t[k]`, each one product of its factors. Written so, the code
multiplies `a_t * s_t` once per use, and the weight's gradient stacks both factors of every step
to multiply them again (the lesson of Theano's scan: forward results recomputed). Where the
product of two factors is itself a node of the program (the bias's), every larger product with
those two factors on the same indices reads it instead: `W.T @ dz_t`, `stack(dz).T @ stack(h)`,
`sum(stack(dz), axis=0)`, with dz_t computed once.
"""
from __future__ import annotations

from itertools import combinations

from ..ir.nodes import Const, Contract, Node
from .lanes import _with_children


def share_subproducts(roots: dict[str, Node], order: list[Node]) -> dict[str, Node]:
    """`roots` with each product of factors, some of which on the same indices have their
    elementwise product as a node of the graph, reading that node (the largest such) instead
    (`roots` itself if there is none)."""
    products: dict[tuple, Node] = {}  # sorted ids of the factors -> their elementwise product
    for n in order:
        # (arrays only: a product of scalars costs nothing to repeat, and rereading a long
        # chain's partial products would nest its expression as deep as the chain)
        if type(n) is Contract and len(n.operands) >= 2 and n.out and \
                len(set(n.out)) == len(n.out) and \
                all(ls == n.out and type(c) is not Const for c, ls in n.operands):
            # keyed by the multiset of factors: x * x is not x, nor x * y * x the x * y
            products.setdefault(tuple(sorted(id(c) for c, _ in n.operands)), n)
    if not products:
        return roots
    elementwise = {id(n) for n in products.values()}
    memo: dict[int, Node] = {}
    changed = False
    for n in order:
        children = n.children()
        new = [memo[id(c)] for c in children]
        if type(n) is Contract and len(n.operands) >= 3 and id(n) not in elementwise:
            found = _read_products(n, products, memo)
            if found is not None:
                memo[id(n)] = Contract(n.out, found, {l: n.dims[l] for l in n.out})
                changed = True
                continue
        memo[id(n)] = n if all(a is b for a, b in zip(new, children)) else \
            _with_children(n, new)
    if not changed:
        return roots
    return {name: memo[id(node)] for name, node in roots.items()}


# Factors on one tuple of indices are searched for a product of the graph among their subsets
# only up to this many (a product of more factors on one index is rare and left as it is).
_MOST = 6


def _read_products(n: Contract, products: dict, memo: dict):
    """`n`'s operands (rebuilt) with the largest set of factors on one tuple of indices whose
    elementwise product is a node of the graph replaced by that node; None if there is none.
    The product is built again from the rebuilt factors (hash-consed: the node that its own
    rebuilding gives, wherever it stands in the order)."""
    groups: dict[tuple, list[int]] = {}
    for k, (c, ls) in enumerate(n.operands):
        if type(c) is not Const and ls and len(set(ls)) == len(ls):
            groups.setdefault(ls, []).append(k)
    best = None
    for ls, members in groups.items():
        if not 2 <= len(members) <= _MOST:
            continue
        for size in range(len(members), 1, -1):
            if best is not None and size <= len(best[0]):
                break
            for subset in combinations(members, size):
                found = products.get(tuple(sorted(id(n.operands[k][0]) for k in subset)))
                if found is not None and found.out and len(found.out) == len(ls):
                    best = (subset, found, ls)
                    break
    if best is None:
        return None
    subset, product, labels = best
    rebuilt = Contract(product.out, [(memo[id(c)], ls) for c, ls in product.operands],
                       {l: product.dims[l] for l in product.out})
    return [(memo[id(c)], ls) for k, (c, ls) in enumerate(n.operands) if k not in subset] + \
        [(rebuilt, labels)]
