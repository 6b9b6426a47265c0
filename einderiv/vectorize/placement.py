"""Where a constant factor is multiplied in: once, on a shared temporary, when every use of it
scales it by the same constant.

A derivative often scales one intermediate by the same constant wherever it is used: the
residual `t1` of a squared loss appears as `2 * (t1 @ W.T)`, `2 * (H.T @ t1)` and
`2 * sum(t1, axis=0)`. Written so, the 2 multiplies each result, and one of them is as large as
the hidden layer. A person scales the residual once (`R = 2 * (H @ W + b - Y)`) and uses it
three times: one pass over the temporary, where the uses' passes cost at least as much (by an
estimate that takes every dimension at one size) and are all dropped.
"""
from __future__ import annotations

from ..ir.nodes import Add, Const, Contract, Node


# Sizes are bound only when the code runs: the estimate takes every dimension at this size, so
# an array of r axes costs SIZE ** r multiplications to scale.
SIZE = 64


def prescaled(order: list[Node], temp_name: dict[int, str], fixed: set[int]) -> dict[int, float]:
    """id of a temporary -> the constant to compute it with, for temporaries (not in `fixed`:
    outputs and the user's names keep their values) that every use multiplies by one constant
    (other than 1 and -1), where scaling the temporary once costs no more than the uses'
    scalings it replaces (each on the smallest array of its product, as the translator
    places it)."""
    uses: dict[int, list] = {}  # id of a temporary -> (constant, axes it is scaled on) per use
    for node in order:
        if isinstance(node, Contract):
            coef = 1.0
            for child, _ in node.operands:
                if isinstance(child, Const):
                    coef *= child.value
            arrays = [c for c, _ in node.operands if not isinstance(c, Const)]
            axes = min([node.rank, *(c.rank for c in arrays)]) if len(arrays) > 1 else node.rank
            found = [id(c) for c in arrays if id(c) in temp_name]
            for key in set(found):
                # used twice in one product (t * t), the constant would be needed twice
                uses.setdefault(key, []).append((coef if found.count(key) == 1 else None, axes))
        elif isinstance(node, Add):
            for coef, term in node.terms:
                if id(term) in temp_name:
                    uses.setdefault(id(term), []).append((coef, node.rank))
        else:
            for child in node.children():
                if id(child) in temp_name:
                    uses.setdefault(id(child), []).append((None, node.rank))
    ranks = {id(n): n.rank for n in order}
    scale = {}
    for key, found in uses.items():
        constants = {c for c, _ in found}
        if key in fixed or len(found) < 2 or len(constants) != 1:
            continue
        (c,) = constants
        if c is not None and c not in (1.0, -1.0) and \
                SIZE ** ranks[key] <= sum(SIZE ** axes for _, axes in found):
            scale[key] = c
    return scale
