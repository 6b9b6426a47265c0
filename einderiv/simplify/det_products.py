"""det's derivative tensors met by a direction on a pair of their axes are products: no n^4
Hessian (nor n^6 third derivatives).

adj's derivative rule is det's Hessian, `d adj(X)[i,j] / dX[k,l] = det_hessian(X)[j,i,k,l]`,
so a tangent (jvp of adj, hvp of det) or a cotangent (vjp through adj, the gradient of
`sum(adj(X) * A)`) meets det_hessian(X)[..., i, j, k, l] on one pair of its axes: a product
that sums k and l with other factors, V[..., k, l], is rewritten to det_hvp(X, V)[..., i, j]
(rules/tensor.rules), which kernel.det_hvp computes from an SVD in O(n^3) time and O(n^2)
memory, exact at singular X as det_hessian is. One order up likewise: det_hvp(X, V)'s
derivative by X is det_third_v(X, V) (n^4), which met by a direction W is det_third_vv(X, V,
W) (O(n^3)), and det_third(X) (n^6) met by one is det_third_v (`_FAMILY`).

det's k-th derivative T[..., r1, c1, ..., rk, ck] (a row and a column per entry) is symmetric
under exchanging two pairs and changes sign when two rows, or two columns, alone are
exchanged. So a direction may meet the row of pair a and the column of pair b: for a == b the
product keeps the other pairs in place; for a != b it is minus the product after c_a and c_b
are exchanged, pair b now (r_b, c_a) (for the Hessian: a product summing i and l, or j and k,
is minus det_hvp, of V transposed for j and k). Two rows (or two columns) with one label make
the tensor zero: det is linear in each row. A label repeated on a row and a column, a
diagonal (the gradient of tr(adj(X)) is H[i, i, k, l] summed over i), is a product with a
Kronecker delta: each repeat is made a fresh label and a delta, so that the diagonal summed is
the direction eye(n), and kept open (the jvp of diag(adj(X))) the diagonal of the product. A
sum with these tensors in its terms, transposed or scaled (det(X + X.T)'s Hessian: two
transposes of det_hessian(S)), met by a direction is the sum of the terms each met by it,
each with such a tensor a product; and one inside a product that is a factor (a term of a
fourth derivative's rule, t[i,j,k,q] V[k,r] inv(X)[r,p], met by the adjoint on i and j) meets
the direction once the products are written as one.

Left alone: a product where the direction would keep another axis than X's batch axes (each
matrix of X has one direction; the whole Hessian by X, `hessian("det(X)")`, meets deltas that
keep both pairs of axes), and a sum over two rows or two columns, which is no product with a
direction. This is a rewrite of the rule tables' sense, as simplify/solves.py, applied with
theirs by the rewrite pass.
"""
from __future__ import annotations

from itertools import count

from ..ir import build
from ..ir.nodes import Add, Contract, Delta, Node, Prim
from ..rulebook import RuleBook

# det's derivative tensors: each -> (its pairs of core axes, itself met by one direction more)
_FAMILY = {"det_hessian": (2, "det_hvp"), "det_third": (3, "det_third_v"),
           "det_third_v": (2, "det_third_vv")}
_SHAPES = {"det_hessian": "square_pair", "det_hvp": "square_square",
           "det_third": "square_triple", "det_third_v": "square_square_pair",
           "det_third_vv": "square_square_square"}
# How many products and sums deep a derivative tensor is looked for in a factor (a rule's
# terms hold them one or two deep: a transpose of a product, a sum of transposes)
_DEPTH = 2


def enabled(rules: RuleBook) -> bool:
    """True where the rule book has det's derivative tensors as the shipped tables define
    them."""
    return all(f is not None and f.kind == "tensor" and f.shape == shape
               for f, shape in ((rules.get(name), shape) for name, shape in _SHAPES.items()))


def into_product(node: Contract) -> Node | None:
    """`node` with one of det's derivative tensors and the factors it is summed with on one
    pair of its axes made the next (det_hessian(X) and V[k, l]: det_hvp(X, V)), or a sum of
    them met by a direction made the sum of the products; None where there is none to make."""
    if not any(_has_family(n) for n, _ in node.operands):
        return None  # (the common case, asked of every product of every program)
    made = _direct(node)
    if made is None:
        # such a tensor inside a product that is an operand (a rule's term, t[i,j,k,q]
        # V[k,r] inv(X)[r,p], met by the adjoint on i and j) meets the direction once the
        # products are one
        flat = _flattened(node)
        if isinstance(flat, Contract):
            node, made = flat, _direct(flat)
    return made if made is not None else _distributed(node)


def _direct(node: Contract) -> Node | None:
    for k, (tensor, _) in enumerate(node.operands):
        if isinstance(tensor, Prim) and tensor.fn in _FAMILY:
            made = _from(node, k)
            if made is not None:
                return made
    return None


def _flattened(node: Contract) -> Node | None:
    """`node` with its operands that are products holding one of det's derivative tensors (at
    any depth of products) written out, their summed indices fresh; None where there are
    none."""
    fresh = count(len(node.dims))
    dims = dict(enumerate(node.dims))
    changed = False

    def flat(operands):
        nonlocal changed
        out = []
        for n, ls in operands:
            # (an axis that the inner product broadcasts, carried by no operand, would be lost)
            if isinstance(n, Contract) and _has_family(n) and \
                    set(range(len(n.out))) <= {l for _, inner in n.operands for l in inner}:
                changed = True
                mapping = dict(zip(n.out, ls))
                for l in range(len(n.out), len(n.dims)):
                    mapping[l] = next(fresh)
                    dims[mapping[l]] = n.dims[l]
                out += flat([(m, tuple(mapping[l] for l in inner)) for m, inner in n.operands])
            else:
                out.append((n, ls))
        return out

    operands = flat(node.operands)
    if not changed:
        return None
    return build.contract(node.out, operands, {l: dims[l] for l in node.out})


def _from(node: Contract, k: int) -> Node | None:
    tensor, labels = node.operands[k]
    pairs, product = _FAMILY[tensor.fn]
    nbatch = len(labels) - 2 * pairs
    core = labels[nbatch:]
    if len(set(core[0::2])) < pairs or len(set(core[1::2])) < pairs:
        return build.zeros(node.shape)
    # Each repeat of a label is a fresh label and a delta: a diagonal as a product.
    dims = dict(enumerate(node.dims))
    fresh = count(len(node.dims))
    others = [op for j, op in enumerate(node.operands) if j != k]
    seen, own = set(), []
    for label in labels:
        if label in seen:
            new = next(fresh)
            dims[new] = dims[label]
            # (the first a row's, so that a diagonal's direction is eye(n), not its transpose)
            others.append((Delta(dims[label], dims[label]), (label, new)))
            label = new
        seen.add(label)
        own.append(label)
    batch, core = tuple(own[:nbatch]), tuple(own[nbatch:])
    # the row of pair a and the column of pair b: a pair of its own first, the last first
    for a, b in [(a, a) for a in reversed(range(pairs))] + \
            [(a, b) for a in range(pairs) for b in range(pairs) if a != b]:
        made = _product(node, tensor, product, batch, core, a, b, others, dims)
        if made is not None:
            return made
    return None


def _product(node: Contract, tensor: Prim, product: str, batch, core, a: int, b: int,
             others: list, dims: dict) -> Node | None:
    summed = (core[2 * a], core[2 * b + 1])
    if any(l in node.out for l in summed):
        return None
    kept = []  # the other pairs, pair b (where it is not a) with a's column
    for t in range(len(core) // 2):
        if t != a:
            kept += [core[2 * t], core[2 * a + 1] if t == b else core[2 * t + 1]]
    direction = [op for op in others if set(summed) & set(op[1])]
    rest = [op for op in others if not set(summed) & set(op[1])]
    # The direction may keep no axis but X's batch and the summed pair: one that the rest of
    # the product (or the output, or the tensor's other pairs) needs would be a direction per
    # entry of that axis.
    needed = set(node.out) | {l for _, ls in rest for l in ls} | set(kept)
    if any(l in needed and l not in batch and l not in summed
           for _, ls in direction for l in ls):
        return None
    out = (*batch, *summed)
    if direction:
        v = build.contract(out, direction, {l: dims[l] for l in out})
    else:  # the pair is summed alone: the direction of ones
        v = build.broadcast_to(build.const(1.0), tuple(dims[l] for l in out))
    matrix = tensor.args[0]
    made = Prim(product, (*tensor.args, v), (),
                matrix.shape[:-2] + matrix.shape[-2:] * (len(kept) // 2))
    if a != b:
        made = build.scale(-1.0, made)
    return build.contract(node.out, [*rest, (made, (*batch, *kept))],
                          {l: dims[l] for l in node.out})


def _distributed(node: Contract) -> Node | None:
    """A sum with det's derivative tensors among its terms' factors (transposed, scaled, or
    beside other terms: a fourth derivative's rule, its common factor the adjoint taken out of
    its terms by build.add) met by a direction: the sum of the terms each met by it, where each
    term with such a tensor makes a product."""
    for k, (total, labels) in enumerate(node.operands):
        if not (isinstance(total, Add) and _has_family(total)):
            continue
        rest = [op for j, op in enumerate(node.operands) if j != k]
        sizes = {l: node.dims[l] for l in node.out}
        terms = []
        for c, t in total.terms:
            term = build.contract(node.out, [*rest, (t, labels)], sizes)
            if _has_family(t):
                term = into_product(term) if isinstance(term, Contract) else None
                if term is None:
                    break
            terms.append((c, term))
        else:
            return build.add(terms)
    return None


def _has_family(node: Node, depth: int = _DEPTH) -> bool:
    """Is one of det's derivative tensors `node`, a factor of it or of a term of it (through
    at most `depth` products and sums: this is asked of every product of every program)?"""
    if isinstance(node, Prim):
        return node.fn in _FAMILY
    if depth == 0:
        return False
    if isinstance(node, Contract):
        return any(_has_family(n, depth - 1) for n, _ in node.operands)
    if isinstance(node, Add):
        return any(_has_family(t, depth - 1) for _, t in node.terms)
    return False
