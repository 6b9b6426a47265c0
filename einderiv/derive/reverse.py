"""Reverse-mode derivation on the Einstein IR.

Every node's adjoint is a tensor shaped `seed + node.shape`, where `seed` is empty for the
gradient of a scalar and is the output's shape for a Jacobian (the seed is then a product of
Kronecker deltas, so an elementwise function's Jacobian comes out as `delta[i,j]*f'(x)[j]`).
Adjoints are accumulated in reverse topological order over the hash-consed DAG, so each shared
node is differentiated once, and each contribution is a single Einstein product built from the
forward nodes themselves: nothing from the forward pass is recomputed.
"""
from __future__ import annotations

from itertools import count

from ..errors import EinderivError, ShapeError
from ..ir import build
from ..ir.dims import MAX_RANK, ONE, RANK_HINT
from ..ir.nodes import Add, Contract, Delta, Map, Node, Prim, Var, topological
from ..rulebook import RuleBook
from ..lower.convolution import is_convolution, pullback as convolution_pullback
from ..lower.linear import adjoint, is_linear
from .masks import product
from .partials import elementwise_partial, tensor_jacobian


def derivatives(output: Node, wrt: list[Var], rules: RuleBook, jacobian: bool = False,
                fused: bool = True) -> list[Node]:
    """d output / d v for each v in `wrt`: shaped `v.shape` (gradient of a scalar output) or
    `output.shape + v.shape` (Jacobian). `fused`: a gradient pulls back through a primitive
    that has a `_vjp` primitive in the rules (log_softmax_vjp) with one call to it; without,
    through its Jacobian's rule (the rule check tests the rule itself)."""
    seed_labels = tuple(-1 - i for i in range(output.rank)) if jacobian else ()
    for v in wrt if jacobian else ():
        if output.rank + v.rank > MAX_RANK:  # refused before deriving, not inside numpy
            raise ShapeError(
                f"the derivative by '{v.name}' would have {output.rank + v.rank} axes (the "
                f"value's {output.rank} and {v.name}'s {v.rank}), more than the {MAX_RANK} "
                f"an array may have",
                hint=RANK_HINT + "; einderiv.vjp and einderiv.jvp give derivatives shaped "
                                 "like the input or like the output, never both")
    if jacobian and output.rank:
        out = seed_labels + tuple(-100 - i for i in range(output.rank))
        # An axis of size 1 (`x[None]`) has the identity 1: its two labels broadcast, with no
        # delta, so that the Jacobian carries no eye(1) per such axis (32 of them were a
        # product of rank 66 in the generated code, for a result of rank 34).
        seed = build.contract(out, [(Delta(d, d), (e, -100 - i)) for i, (e, d) in
                                    enumerate(zip(seed_labels, output.shape)) if d != ONE],
                              {l: ONE for i, d in enumerate(output.shape) if d == ONE
                               for l in (seed_labels[i], -100 - i)})
    else:
        seed = build.const(1.0)
        if output.rank:
            raise EinderivError("internal: a gradient needs a scalar output")
    seed_shape = output.shape if jacobian else ()
    adjoint: dict[Node, list[Node]] = {output: [seed]}
    targets = set(wrt)
    memo: dict = {}  # what each factor is, for the chain rule's selects (masks.product)
    for node in reversed(topological(output)):
        parts = adjoint.get(node)
        if not parts or isinstance(node, Var):
            continue
        total = parts[0] if len(parts) == 1 else build.add([(1.0, p) for p in parts])
        adjoint[node] = [total]
        if build.is_zero(total):
            continue
        for child, contribution in _pullback(node, total, seed_labels, rules, memo, fused):
            if child.children() or child in targets:
                adjoint.setdefault(child, []).append(contribution)
    results = []
    for v in wrt:
        parts = adjoint.get(v)
        if not parts:
            results.append(build.zeros(seed_shape + v.shape))
        else:
            results.append(parts[0] if len(parts) == 1 else build.add([(1.0, p) for p in parts]))
    return results


def _pullback(node: Node, bar: Node, seed: tuple[int, ...], rules: RuleBook, memo: dict,
              fused: bool = True):
    """(child, contribution to the child's adjoint) for each argument of `node`."""
    if isinstance(node, Add):
        for coef, term in node.terms:
            yield term, build.scale(coef, bar)
    elif isinstance(node, Contract):
        yield from _contract_pullback(node, bar, seed, rules, memo)
    elif isinstance(node, Map):
        labels = tuple(range(node.rank))
        for position, arg in enumerate(node.args):
            if not arg.children() and not isinstance(arg, Var):
                continue  # constants have no derivative to pass on
            local = elementwise_partial(node, position, rules)
            out = seed + (labels if arg.rank else ())
            yield arg, product(out, [(bar, seed + labels), (local, labels if local.rank else ())],
                               {}, rules, memo)
    elif is_linear(node):  # cumsum, reversal, reshape...: the adjoint map, never the Jacobian
        yield node.args[0], adjoint(node, bar, len(seed))
    elif is_convolution(node):  # correlate, conv2d...: a convolution again, never a band matrix
        yield from convolution_pullback(node, bar, len(seed))
    elif isinstance(node, Prim) and fused and not seed and _vjp(node, rules) is not None:
        # one call to NAME_vjp(x, adjoint) (rules/tensor.rules, shape rule `cotangent`)
        (arg,) = node.args
        yield arg, Prim(_vjp(node, rules), (arg, bar), node.params, arg.shape)
    elif isinstance(node, Prim):
        for position, arg in enumerate(node.args):
            if position and not arg.children() and not isinstance(arg, Var):
                continue  # a constant (solve's right-hand side) has no derivative to pass on
            jac = tensor_jacobian(node, rules, position)
            # A Jacobian that is a sum (softmax's `s*delta - s*s`) is applied term by term, so
            # each term's deltas contract against the adjoint instead of being materialized
            # (and a term's summed indices, cholesky's, are summed with the adjoint's).
            terms = jac.terms or [(c, t, jac.labels) for c, t in build.distribute(jac.node)]
            parts = [(c, build.contract(seed + jac.arg_labels, [(bar, seed + jac.out_labels),
                                                                (t, labels)],
                                        dict(zip(labels, t.shape))))
                     for c, t, labels in terms]
            yield arg, build.add(parts)


def _vjp(node: Prim, rules: RuleBook) -> str | None:
    """The name of `node`'s vjp primitive, where the rules have one that fits: NAME_vjp of
    shape rule `cotangent`, for a one-argument primitive shaped like its argument."""
    f = rules.get(node.fn + "_vjp")
    if f is None or f.kind != "tensor" or f.shape != "cotangent" or len(node.args) != 1 or \
            node.shape != node.args[0].shape or not node.params:
        return None
    own = rules.get(node.fn)
    # (the same axis keyword: the call passes the primitive's axes on to it)
    return f.name if own is not None and own.shape == "same" and own.axis == f.axis else None


def _contract_pullback(node: Contract, bar: Node, seed, rules: RuleBook, memo: dict):
    for k, (child, labels) in enumerate(node.operands):
        if not child.children() and not isinstance(child, Var):
            continue
        fresh = count(len(node.dims))
        out, deltas = [], []
        for label in labels:
            if label in out:  # a repeated index (a diagonal): the adjoint is diagonal too
                new = next(fresh)
                deltas.append((Delta(node.dims[label], node.dims[label]), (label, new)))
                out.append(new)
            else:
                out.append(label)
        others = [op for j, op in enumerate(node.operands) if j != k]
        # An index only the child carries was summed forward: its adjoint broadcasts along it.
        sizes = {l: node.dims[l] for l in labels}
        yield child, product(seed + tuple(out), [(bar, seed + node.out), *others, *deltas],
                             sizes, rules, memo)
