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

import math

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
    # Per temporary, as its uses are met: the one constant they all scale it by so far (None
    # once a use scales it by none, or two by different ones: it is not scaled then), how
    # many uses there are, and what their scalings cost.
    constant: dict[int, float | None] = {}
    count: dict[int, int] = {}
    cost: dict[int, int] = {}
    ranks: dict[int, int] = {}  # id of a used temporary -> its number of axes

    def use(key: int, c: float | None, axes: int) -> None:
        seen = constant.get(key, _NONE_YET)
        if seen is _NONE_YET:
            constant[key], count[key], cost[key] = c, 1, SIZE ** axes
        elif seen is not None:
            if seen is c or seen == c:  # as a set of the constants would tell them apart
                count[key] += 1
                cost[key] += SIZE ** axes
            else:
                constant[key] = None

    for node in order:
        found = [c for c in node.children() if id(c) in temp_name]
        if not found:  # most nodes: nothing to look at
            continue
        for c in found:
            ranks[id(c)] = len(c.shape)
        kind = type(node)
        if kind is Contract:
            coef, arrays = 1.0, []
            for child, _ in node.operands:
                if type(child) is Const:
                    coef *= child.value
                else:
                    arrays.append(child)
            rank = len(node.shape)
            axes = min([rank, *(len(c.shape) for c in arrays)]) if len(arrays) > 1 else rank
            found = [id(c) for c in found]
            for key in dict.fromkeys(found):
                # used twice in one product (t * t), the constant would be needed twice
                use(key, coef if found.count(key) == 1 else None, axes)
        elif kind is Add:
            for coef, term in node.terms:
                if id(term) in temp_name:
                    use(id(term), coef, len(node.shape))
        else:
            for child in found:
                constant[id(child)] = None
    scale = {}
    for key, c in constant.items():
        if c is None or key in fixed or count[key] < 2:
            continue
        # (an infinite or nan constant is left on each use: the use divides the temporary's
        # constant out again, and inf / inf is nan)
        if c not in (1.0, -1.0) and math.isfinite(c) and c != 0.0 and \
                SIZE ** ranks[key] <= cost[key]:
            scale[key] = c
    return scale


_NONE_YET = object()  # no use met yet
