"""inv(A) met by a tensor on one of its axes is a solve: inv(A) @ b is solve(A, b).

A product in which inv(A)[..., i, j] shares its summed axis j with other factors, b[..., j, k],
is rewritten to solve(A, b)[..., i, k] (and one that sums i, b[..., i, k] inv(A)[..., i, j], to
solve(A.mT, b)[..., j, k]): one LU factorization and two triangular solves, never the inverse
(more accurate, where A is ill-conditioned, and no slower). So `x @ inv(A) @ x` is computed as
`x @ solve(A, x)`, and the adjoints through inv(A) that the derivative rules of inv, solve and
logdet write (an adjoint g meets inv(A) on one axis) come out as solves: the gradient of
`b @ solve(A, b)` by b is `solve(A, b) + solve(A.mT, b)`. An axis of inv(A) summed with no
other factor is a solve of ones: the gradient of `sum(solve(A, b))` by b, `sum(inv(A),
axis=0)`, is `solve(A.mT, ones(n))`.

This is a rewrite of the rule tables' sense, applied with theirs by the rewrite pass, but it is
code: a pattern of rewrites.rules matches factors on one tuple of indices, not a product that
sums an index of one of them with others (which `b` is would have to be cut out of the
product, with its batch axes and its columns), and it holds for any rank of A and b.

Left alone: a product in which inv(A) meets inv(A) (inv's own derivative, -inv(A).T @ g @
inv(A).T, multiplies by the inverse the program computes anyway), one where the summed axis
meets only selections (deltas, unit vectors: a row of inv(A) is a row of it), and one where b
would need two column axes or more (solve takes b [..., n] or [..., n, k]).
"""
from __future__ import annotations

from ..ir import build
from ..ir.nodes import Const, Contract, Delta, Node, Prim, Size, Unit
from ..rulebook import RuleBook

_STRUCTURAL = (Delta, Unit, Const, Size)


def enabled(rules: RuleBook) -> bool:
    """True where the rule book has inv and solve as the shipped tables define them."""
    inv, solve = rules.get("inv"), rules.get("solve")
    return (inv is not None and inv.kind == "tensor" and inv.shape == "square"
            and solve is not None and solve.kind == "tensor" and solve.shape == "square_rhs")


def into_solve(node: Contract) -> Node | None:
    """`node` with one inv(A) factor and the factors it is summed with made a solve, or None
    where there is none to make."""
    for k, (inverse, labels) in enumerate(node.operands):
        if not (isinstance(inverse, Prim) and inverse.fn == "inv"):
            continue
        (matrix,) = inverse.args
        batch, row, col = labels[:-2], labels[-2], labels[-1]
        if len(set(labels)) != len(labels):
            continue  # a diagonal of inv(A)
        others = [op for j, op in enumerate(node.operands) if j != k]
        if any(isinstance(o, Prim) and o.fn == "inv" and o.args == inverse.args
               for o, _ in others):
            continue
        for summed, kept, transposed in ((col, row, False), (row, col, True)):
            made = _solve(node, matrix, labels, batch, summed, kept, transposed, others)
            if made is not None:
                return made
    return None


def _solve(node: Contract, matrix: Node, labels, batch, summed: int, kept: int,
           transposed: bool, others: list) -> Node | None:
    if summed in node.out:
        return None
    rhs = [op for op in others if summed in op[1]]
    if rhs and all(isinstance(o, _STRUCTURAL) for o, _ in rhs):
        return None
    rest = [op for op in others if summed not in op[1]]
    # b's columns: the labels of its factors that the rest of the product (or the output, or
    # inv's own other axis) still needs; the others are summed within b.
    needed = set(node.out) | {l for _, ls in rest for l in ls} | {kept}
    columns = [l for l in dict.fromkeys(l for _, ls in rhs for l in ls)
               if l != summed and l not in batch and l in needed]
    if len(columns) > 1:
        return None
    out = (*batch, summed, *columns)
    if rhs:
        b = build.contract(out, rhs, {l: node.dims[l] for l in out})
    else:  # the axis is summed alone (a cotangent of ones): inv(A)'s sums are A's solves of 1
        b = build.broadcast_to(build.const(1.0), tuple(node.dims[l] for l in out))
    if transposed:  # b[..., i, k] inv(A)[..., i, j] = solve(A.mT, b)[..., j, k]
        axes = tuple(range(matrix.rank))
        matrix = build.contract((*axes[:-2], axes[-1], axes[-2]), [(matrix, axes)])
    solved = Prim("solve", (matrix, b), (), b.shape)
    return build.contract(node.out, [*rest, (solved, (*batch, kept, *columns))],
                          {l: node.dims[l] for l in node.out})
