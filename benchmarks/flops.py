"""FLOPs of an einderiv program, counted on its Einstein IR.

Every contraction is costed by `opt_einsum.contract_path` at the concrete sizes (`opt_cost`: a
multiply-add counts 2, as in `2*n*d` for `X @ w`); every elementwise map, sum of terms and
primitive (softmax, ...) counts one FLOP per element it reads or writes, whatever the function
(exp counts like +). A contraction that only broadcasts (`b[j]` to `[n, j]`) counts nothing,
an integer pick (`X[t]`) is a slice and a Kronecker delta a diagonal, not a dense operand.
The forward program is the IR of the expression, the derivative program that of the gradient
(or Hessian) outputs, forward intermediates it needs included.
"""
from __future__ import annotations

import math

import opt_einsum

from einderiv.ir.nodes import Add, Const, Contract, Delta, Map, Prim, Unit, topological

_paths: dict = {}


def _size(shape, dims) -> int:
    return math.prod(d.size(dims) for d in shape)


def _contract_cost(node: Contract, dims: dict) -> int:
    """opt_einsum's cost of the contraction. A unit vector (an integer pick, `X[t]`) is a
    slice, not an operand: its label has size 1. A Kronecker delta identifies its two labels."""
    same = {}  # label -> the label a delta identifies it with

    def find(label):
        while label in same:
            label = same[label]
        return label

    picked = set()
    operands = []
    for child, labels in node.operands:
        if isinstance(child, Const):
            continue
        if isinstance(child, Unit):
            picked.update(labels)
        elif isinstance(child, Delta):
            a, b = find(labels[0]), find(labels[1])
            if a != b:
                same[b] = a
        else:
            operands.append((child, labels))
    sizes: dict = {}
    for child, labels in operands:
        for label, dim in zip(labels, child.shape):
            size = 1 if label in picked else dim.size(dims)
            root = find(label)
            sizes[root] = min(sizes.get(root, size), size)
    subscripts = ["".join(opt_einsum.get_symbol(find(l)) for l in labels)
                  for _, labels in operands]
    shapes = [tuple(sizes[find(l)] for l in labels) for _, labels in operands]
    out = "".join(dict.fromkeys(opt_einsum.get_symbol(find(l)) for l in node.out
                                if find(l) in sizes))
    if not operands:
        return 0  # a constant or a structured tensor, broadcast
    key = (",".join(subscripts) + "->" + out, tuple(shapes))
    if key not in _paths:
        if len(shapes) == 1:  # a copy, transpose, sum or scaling of one operand
            _paths[key] = 0 if subscripts[0] == out and node.out == operands[0][1] and \
                not any(isinstance(c, Const) for c, _ in node.operands) else math.prod(shapes[0])
        else:
            _paths[key] = int(opt_einsum.contract_path(key[0], *shapes, shapes=True)[1].opt_cost)
    return _paths[key]


def program_flops(roots, dims: dict) -> int:
    total = 0
    for node in topological(*roots):
        if isinstance(node, Contract):
            total += _contract_cost(node, dims)
        elif isinstance(node, Map):
            total += _size(node.shape, dims)
        elif isinstance(node, Add):
            total += _size(node.shape, dims) * len(node.terms)
        elif isinstance(node, Prim):
            total += max(_size(node.shape, dims),
                         sum(_size(a.shape, dims) for a in node.args))
    return total


def forward_and_derivative_flops(derived, dims: dict) -> tuple[int, int]:
    """FLOPs of the forward expression and of the derivative program of an einderiv result."""
    return (program_flops([derived.lowered.root], dims),
            program_flops(list(derived.roots.values()), dims))
