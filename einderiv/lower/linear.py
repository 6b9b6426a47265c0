"""Linear index maps: `cumsum`, reversal (`x[::-1]`, `flip`) and the other maps whose
Jacobian is a dense structured matrix.

The Jacobian of `cumsum(x)` is a triangle of ones and that of a reversal a permutation matrix:
written as index rules (rules/*.rules), a derivative would contract the cotangent with that
n-by-n matrix, O(n^2) in time and memory. These maps are linear, so their pullback is their
adjoint, another map of this module applied to the cotangent in O(size): the adjoint of
`cumsum` is a cumulative sum from the other end, `flip(cumsum(flip(g)))`, and a reversal is its
own. That needs code, not a rule line: `derive/reverse.py` asks `adjoint` for the pullback of a
node this module made (`is_linear`), and never builds the Jacobian.

Each map is a `Prim` whose first parameter is the tuple of axes it works along; every other
axis is a batch axis, as for the primitives of the rule tables, so the adjoint of a map applied
to a cotangent with the seed's axes in front is the same map on the axes shifted past them.
Evaluation (`evaluate/plan.py`) and the printers (`surface`, used by the vectorizer) know each.
"""
from __future__ import annotations

import numpy as np

from ..ir import build
from ..ir.nodes import Add, Contract, Map, Node, Prim
from ..parse import ast

CUMSUM, FLIP = "cumsum", "flip"
MAPS = frozenset({CUMSUM, FLIP})


def is_linear(node: Node) -> bool:
    return type(node) is Prim and node.fn in MAPS


def _trivial(x: Node) -> bool:
    """A zero, or a constant broadcast along every axis (a reversal leaves it as it is)."""
    return build.constant_value(x) is not None


def cumsum(x: Node, axis: int) -> Node:
    """The running sum of `x` along `axis` (numpy's cumsum)."""
    if build.is_zero(x):
        return x
    return Prim(CUMSUM, (x,), ((axis,),), x.shape)


def flip(x: Node, axis: int) -> Node:
    """`x` reversed along `axis` (numpy's flip, `x[::-1]`). A reversal of a reversal is `x`,
    also through elementwise work between them: the adjoint of `flip(c)` in `sum(sin(flip(c)))`
    is `flip(cos(flip(c)))`, which is `cos(c)`."""
    unflipped = _unflipped(x, axis, MAX_UNFLIP_DEPTH)
    if unflipped is not None:
        return unflipped
    return Prim(FLIP, (x,), ((axis,),), x.shape)


# How deep `_unflipped` looks through elementwise operations for a reversal to cancel.
MAX_UNFLIP_DEPTH = 4


def _unflipped(x: Node, axis: int, depth: int) -> Node | None:
    """`x` reversed along `axis` without a new reversal, where one cancels: `x` a reversal
    along it, a constant along it, or an elementwise sum, product or function of such;
    None otherwise."""
    if _trivial(x):
        return x
    if type(x) is Prim:
        return x.args[0] if x.fn == FLIP and x.params[0] == (axis,) else None
    if depth == 0:
        return None
    if type(x) is Map:
        args = [a if not a.rank else _unflipped(a, axis, depth - 1) for a in x.args]
        return None if any(a is None for a in args) else build.elementwise(x.fn, args)
    if type(x) is Add:
        terms = [(c, _unflipped(t, axis, depth - 1)) for c, t in x.terms]
        return None if any(t is None for _, t in terms) else build.add(terms)
    if type(x) is Contract and build._is_product(x):
        label, operands = x.out[axis], []
        for node, labels in x.operands:
            if label in labels:
                if labels.count(label) != 1:
                    return None
                node = _unflipped(node, labels.index(label), depth - 1)
                if node is None:
                    return None
            operands.append((node, labels))
        return build.contract(x.out, operands, {l: x.dims[l] for l in x.out})
    return None


def adjoint(node: Prim, bar: Node, lead: int) -> Node:
    """The adjoint of the map `node` applied to the cotangent `bar`, whose first `lead` axes are
    the seed's (a Jacobian's output axes) and the rest shaped like `node`."""
    (axis,) = (a + lead for a in node.params[0])
    if node.fn == CUMSUM:  # sum over j >= i: the running sum from the end
        return flip(cumsum(flip(bar, axis), axis), axis)
    if node.fn == FLIP:
        return flip(bar, axis)
    raise ValueError(f"no adjoint for {node.fn}")


def evaluator(node: Prim, env: dict):
    """A function of the argument's array computing `node` (numpy, or the array's library
    through its numpy-named functions), for the dimension sizes `env`."""
    (axis,) = node.params[0]
    if node.fn == CUMSUM:
        return lambda a: np.cumsum(a, axis=axis)
    if node.fn == FLIP:
        return lambda a: np.flip(a, axis=axis)
    raise ValueError(f"cannot evaluate {node.fn}")


def surface(node: Prim, arg: ast.Expr) -> ast.Expr:
    """`node` written in the language, its argument written `arg`: what the formula prints
    and parses back to the same map."""
    (axis,) = node.params[0]
    rank = node.args[0].rank
    if node.fn == CUMSUM:
        # numpy's cumsum without an axis flattens: the axis is written but for a vector's
        kwargs = () if rank == 1 else (("axis", ast.Number(float(axis))),)
        return ast.Call(CUMSUM, (arg,), kwargs)
    if node.fn == FLIP:
        items = (ast.Slice(None, None),) * axis + (ast.Slice(None, None, _number(-1)),)
        return ast.Index(arg, items)
    raise ValueError(f"cannot print {node.fn}")


def _number(v: int) -> ast.Expr:
    return ast.UnaryOp("-", ast.Number(float(-v))) if v < 0 else ast.Number(float(v))
