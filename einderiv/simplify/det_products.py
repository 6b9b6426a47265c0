"""det_hessian(X) met by a tensor on one pair of its axes is det_hvp: no n^4 Hessian.

adj's derivative rule is det's Hessian, `d adj(X)[i,j] / dX[k,l] = det_hessian(X)[j,i,k,l]`,
so a tangent (jvp of adj, hvp of det) or a cotangent (vjp through adj, the gradient of
`sum(adj(X) * A)`) meets det_hessian(X)[..., i, j, k, l] on one pair of its axes: a product
that sums k and l with other factors, V[..., k, l], is rewritten to det_hvp(X, V)[..., i, j]
(rules/tensor.rules), which kernel.det_hvp computes from an SVD in O(n^3) time and O(n^2)
memory, exact at singular X as det_hessian is. The Hessian is symmetric under exchanging the
pairs (i, j) and (k, l), so a product summing i and j is det_hvp too; and it changes sign
when i and k (or j and l) are exchanged, so one summing i and l, or j and k, is minus det_hvp
(of V transposed, for j and k).

Left alone: a product where the direction would keep another axis than X's batch axes (each
matrix of X has one direction; the whole Hessian by X, `hessian("det(X)")`, meets deltas that
keep both pairs of axes), a diagonal of the Hessian, and a sum over i and k (or j and l),
which is no product with a direction. This is a rewrite of the rule tables' sense, as
simplify/solves.py, applied with theirs by the rewrite pass.
"""
from __future__ import annotations

from ..ir import build
from ..ir.nodes import Contract, Node, Prim
from ..rulebook import RuleBook

# (the direction's axes, the result's axes, a sign), as positions among the Hessian's four core
# axes i, j, k, l: sum over (k, l) of H[i, j, k, l] V[k, l] is det_hvp(X, V)[i, j], and so on
# by H's symmetries, H[i, j, k, l] = H[k, l, i, j] = -H[k, j, i, l] = -H[i, l, k, j].
_PAIRS = (((2, 3), (0, 1), 1.0), ((0, 1), (2, 3), 1.0),
          ((0, 3), (2, 1), -1.0), ((2, 1), (0, 3), -1.0))


def enabled(rules: RuleBook) -> bool:
    """True where the rule book has det_hessian and det_hvp as the shipped tables define them."""
    hessian, product = rules.get("det_hessian"), rules.get("det_hvp")
    return (hessian is not None and hessian.kind == "tensor" and hessian.shape == "square_pair"
            and product is not None and product.kind == "tensor"
            and product.shape == "square_square")


def into_product(node: Contract) -> Node | None:
    """`node` with one det_hessian(X) factor and the factors it is summed with on one pair of
    its axes made det_hvp(X, V), or None where there is none to make."""
    for k, (hessian, labels) in enumerate(node.operands):
        if not (isinstance(hessian, Prim) and hessian.fn == "det_hessian"):
            continue
        if len(set(labels)) != len(labels):
            continue  # a diagonal of the Hessian
        (matrix,) = hessian.args
        batch, core = labels[:-4], labels[-4:]
        others = [op for j, op in enumerate(node.operands) if j != k]
        for summed, kept, sign in _PAIRS:
            made = _product(node, matrix, batch, tuple(core[a] for a in summed),
                            tuple(core[a] for a in kept), sign, others)
            if made is not None:
                return made
    return None


def _product(node: Contract, matrix: Node, batch, summed, kept, sign: float,
             others: list) -> Node | None:
    if any(l in node.out for l in summed):
        return None
    direction = [op for op in others if set(summed) & set(op[1])]
    rest = [op for op in others if not set(summed) & set(op[1])]
    # The direction may keep no axis but X's batch and the summed pair: one that the rest of
    # the product (or the output, or the Hessian's other pair) needs would be a direction per
    # entry of that axis.
    needed = set(node.out) | {l for _, ls in rest for l in ls} | set(kept)
    if any(l in needed and l not in batch and l not in summed
           for _, ls in direction for l in ls):
        return None
    out = (*batch, *summed)
    if direction:
        v = build.contract(out, direction, {l: node.dims[l] for l in out})
    else:  # the pair is summed alone: the direction of ones
        v = build.broadcast_to(build.const(1.0), tuple(node.dims[l] for l in out))
    made = Prim("det_hvp", (matrix, v), (), matrix.shape)
    if sign != 1.0:
        made = build.scale(sign, made)
    return build.contract(node.out, [*rest, (made, (*batch, *kept))],
                          {l: node.dims[l] for l in node.out})
