"""Linear index maps: `cumsum`, reversals (`x[::-1]`), steps (`x[::2]`) and `dilate`,
`reshape`, `triu` and `tril`: the maps whose Jacobian is a dense structured matrix.

The Jacobian of `cumsum(x)` is a triangle of ones, that of a reversal or a reshape a permutation
matrix, that of a step a selection matrix: written as index rules (rules/*.rules), a derivative
would contract the cotangent with that n-by-n matrix, O(n^2) in time and memory. These maps
are linear, so their pullback is their adjoint, another map of this module applied to the
cotangent in O(size): the adjoint of `cumsum` is the running sum from the other end,
`flip(cumsum(flip(g)))`; of a reversal a reversal; of `reshape` the reshape back; of `x[::k]`
the cotangent spread k apart with zeros between (`dilate`), and of that a step again; `triu`
and `tril` are their own. That needs code, not a rule line: `derive/reverse.py` asks `adjoint`
for the pullback of a node this module made (`is_linear`), and never builds the Jacobian.

Each map is a `Prim` whose first parameter is the tuple of axes it works along; every other
axis is a batch axis, as for the primitives of the rule tables (a reshape works on trailing
axes, `triu` on the last two), so the adjoint of a map applied to a cotangent with the seed's
axes in front is the same map on the axes shifted past them. Evaluation (`evaluator`, for the
IR interpreter) and the printers (`surface`, used by the vectorizer) know each.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import build
from ..ir.dims import Dim, show_shape
from ..ir.nodes import Add, Const, Contract, Map, Node, Prim, Var
from ..parse import ast
from . import dimensions

# The step `x[::k]` is no function of the language: its name is one that no name of the
# language (nor of a rule file) can be, so a user's function `stride` is never taken for it.
CUMSUM, FLIP, STRIDE, DILATE, RESHAPE, TRIU, TRIL = (
    "cumsum", "flip", "<stride>", "dilate", "reshape", "triu", "tril")
MAPS = frozenset({CUMSUM, FLIP, STRIDE, DILATE, RESHAPE, TRIU, TRIL})


def is_linear(node: Node) -> bool:
    return type(node) is Prim and node.fn in MAPS


def _trivial(x: Node) -> bool:
    """A zero, or a constant broadcast along every axis (a reversal leaves it as it is)."""
    return build.constant_value(x) is not None


def _with_dim(shape, axis: int, dim: Dim) -> tuple:
    return (*shape[:axis], dim, *shape[axis + 1:])


# -- the maps --------------------------------------------------------------------------------------

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


def stride(x: Node, axis: int, k: int) -> Node:
    """Every k-th entry of `x` along `axis`, from the first (`x[::k]`): ceil(n / k) of them."""
    if k == 1:
        return x
    shape = _with_dim(x.shape, axis, dimensions.ceildiv(x.shape[axis], k))
    if _trivial(x):
        return build.broadcast_to(Const(build.constant_value(x)), shape)
    if is_linear(x) and x.fn == DILATE and x.params[0] == (axis,) and x.params[1] == k:
        return x.args[0]  # the entries a dilation placed k apart
    return Prim(STRIDE, (x,), ((axis,), k), shape)


def dilate(x: Node, axis: int, k: int, n: Dim) -> Node:
    """`x`'s entries placed k apart along `axis` in zeros of length n (entry i at i * k), the
    adjoint of a step: `x` must have ceil(n / k) entries there."""
    shape = _with_dim(x.shape, axis, n)
    if build.is_zero(x):
        return build.zeros(shape)
    if k == 1:
        return x
    return Prim(DILATE, (x,), ((axis,), k, n), shape)


def reshape(x: Node, shape: tuple[Dim, ...], block: int | None = None) -> Node:
    """`x`'s last `block` axes (all by default) reshaped to `shape`, in C order (numpy's
    reshape): the sizes must have one product."""
    block = x.rank if block is None else block
    batch = x.shape[:x.rank - block]
    shape = tuple(shape)
    full = (*batch, *shape)
    if full == x.shape:
        return x
    if _trivial(x):
        return build.broadcast_to(Const(build.constant_value(x)), full)
    undone = _unreshaped(x, full, MAX_UNFLIP_DEPTH)
    if undone is not None and undone[1]:
        return undone[0]
    if is_linear(x) and x.fn == RESHAPE and len(x.params[1]) <= block and \
            x.rank - len(x.params[1]) >= x.rank - block:
        # a reshape of (part of) a reshape's result: of its argument, once
        inner = x.args[0]
        inner_block = len(x.params[0]) + block - len(x.params[1])
        return reshape(inner, shape, inner_block)
    return Prim(RESHAPE, (x,), (tuple(range(x.rank - block, x.rank)), shape), full)


def _unreshaped(x: Node, shape: tuple, depth: int) -> tuple[Node, bool] | None:
    """(`x` reshaped to `shape`, whether a reshape was undone) where the reshape can go
    inside: `x` a reshape of a tensor of that shape (undone), a variable (reshaped), or an
    elementwise sum, product or function of such (the adjoint of `reshape(y, s)` in
    `sum(w * reshape(y, s) ** 2)` is `2 * reshape(w, ...) * y`); None otherwise."""
    if is_linear(x) and x.fn == RESHAPE and x.args[0].shape == shape:
        return x.args[0], True
    if type(x) is Var:
        return Prim(RESHAPE, (x,), (tuple(range(x.rank)), shape), shape), False
    if depth == 0:
        return None
    if type(x) is Map and all(a.rank in (0, x.rank) for a in x.args):
        args = [(a, False) if not a.rank else _unreshaped(a, shape, depth - 1) for a in x.args]
        if any(a is None for a in args):
            return None
        return build.elementwise(x.fn, [a for a, _ in args]), any(u for _, u in args)
    if type(x) is Add:
        terms = [(c, _unreshaped(t, shape, depth - 1)) for c, t in x.terms]
        if any(t is None for _, t in terms):
            return None
        return build.add([(c, t) for c, (t, _) in terms]), any(u for _, (_, u) in terms)
    if type(x) is Contract and build._is_product(x) and \
            all(not labels or labels == x.out for _, labels in x.operands):
        out = tuple(range(len(shape)))
        operands, undone = [], False
        for node, labels in x.operands:
            if labels:
                found = _unreshaped(node, shape, depth - 1)
                if found is None:
                    return None
                node, labels = found[0], out
                undone = undone or found[1]
            operands.append((node, labels))
        return build.contract(out, operands, dict(zip(out, shape))), undone
    return None


def triangle(x: Node, k: int, upper: bool) -> Node:
    """`x`'s entries on and above the k-th diagonal (triu) or on and below it (tril), of its
    last two axes, zeros elsewhere (numpy's triu and tril)."""
    if build.is_zero(x):
        return x
    fn = TRIU if upper else TRIL
    if is_linear(x) and x.fn == fn:  # the one that keeps fewer diagonals
        (_, inner_k), inner = x.params, x.args[0]
        return triangle(inner, max(k, inner_k) if upper else min(k, inner_k), upper)
    if type(x) is Contract and build._is_product(x) and any(
            is_linear(node) and node.fn == fn and labels == x.out[-node.rank:] and
            (node.params[1] >= k if upper else node.params[1] <= k)
            for node, labels in x.operands):
        return x  # an entrywise product with a factor that is 0 there already
    return Prim(fn, (x,), ((x.rank - 2, x.rank - 1), k), x.shape)


# -- derivatives, evaluation, printing -------------------------------------------------------------

def adjoint(node: Prim, bar: Node, lead: int) -> Node:
    """The adjoint of the map `node` applied to the cotangent `bar`, whose first `lead` axes are
    the seed's (a Jacobian's output axes) and the rest shaped like `node`."""
    axes = tuple(a + lead for a in node.params[0])
    if node.fn == CUMSUM:  # the sum over j >= i: the running sum from the end
        (axis,) = axes
        return flip(cumsum(flip(bar, axis), axis), axis)
    if node.fn == FLIP:
        return flip(bar, axes[0])
    if node.fn == STRIDE:
        (arg,) = node.args
        return dilate(bar, axes[0], node.params[1], arg.shape[axes[0] - lead])
    if node.fn == DILATE:
        return stride(bar, axes[0], node.params[1])
    if node.fn == RESHAPE:
        (arg,) = node.args
        return reshape(bar, arg.shape[arg.rank - len(axes):], len(node.params[1]))
    if node.fn in (TRIU, TRIL):
        return triangle(bar, node.params[1], node.fn == TRIU)
    raise ValueError(f"no adjoint for {node.fn}")


def evaluator(node: Prim, env: dict):
    """A function of the argument's numpy array computing `node`, for the dimension sizes
    `env` (the IR interpreter's)."""
    axes = node.params[0]
    if node.fn == CUMSUM:
        return lambda a: np.cumsum(a, axis=axes[0])
    if node.fn == FLIP:
        return lambda a: np.flip(a, axis=axes[0])
    if node.fn == STRIDE:
        index = (slice(None),) * axes[0] + (slice(None, None, node.params[1]),)
        return lambda a: a[index]
    if node.fn == DILATE:
        k, n = node.params[1], _size(node.params[2], env)
        return lambda a: dilate_array(a, k, n, axes[0])
    if node.fn == RESHAPE:
        shape = tuple(_size(d, env) for d in node.params[1])
        return lambda a: np.reshape(a, a.shape[:a.ndim - len(axes)] + shape)
    if node.fn in (TRIU, TRIL):
        k = node.params[1]
        return (lambda a: np.triu(a, k)) if node.fn == TRIU else (lambda a: np.tril(a, k))
    raise ValueError(f"cannot evaluate {node.fn}")


def _size(d: Dim, env: dict) -> int:
    from ..evaluate.plan import size_of
    return size_of(d, env)


def dilate_array(a, k: int, n: int, axis: int):
    """numpy: `a`'s entries k apart along `axis` in zeros of length n."""
    out = np.zeros(a.shape[:axis] + (n,) + a.shape[axis + 1:], dtype=a.dtype)
    index = (slice(None),) * axis + (slice(None, None, k),)
    if out[index].shape != a.shape:
        raise ShapeError(f"dilate(): {a.shape[axis]} entries do not fill a length of {n} "
                         f"every {k}-th (it takes {out[index].shape[axis]})")
    out[index] = a
    return out


def surface(node: Prim, arg: ast.Expr) -> ast.Expr:
    """`node` written in the language, its argument written `arg`: what the formula prints
    and parses back to the same map."""
    axes = node.params[0]
    rank = node.args[0].rank
    if node.fn == CUMSUM:
        # numpy's cumsum without an axis flattens: the axis is written but for a vector's
        kwargs = () if rank == 1 else (("axis", _number(axes[0])),)
        return ast.Call(CUMSUM, (arg,), kwargs)
    if node.fn == FLIP:
        if _reversed_along(arg, axes[0]):  # (a reversal of a reversal: `t[:, ::-1]`)
            return arg.operand
        items = (ast.Slice(None, None),) * axes[0] + (ast.Slice(None, None, _number(-1)),)
        return ast.Index(arg, items)
    if node.fn == STRIDE:
        return _stepped(arg, axes[0], node.params[1])
    if node.fn == DILATE:
        kwargs = () if axes[0] == 0 else (("axis", _number(axes[0])),)
        return ast.Call(DILATE, (arg, _number(node.params[1]), _dimension(node.params[2])),
                        kwargs)
    if node.fn == RESHAPE:
        return ast.Call(RESHAPE, (arg, ast.Tuple(tuple(_dimension(d) for d in node.shape))))
    if node.fn in (TRIU, TRIL):
        k = node.params[1]
        return ast.Call(node.fn, (arg,) if k == 0 else (arg, _number(k)))
    raise ValueError(f"cannot print {node.fn}")


def _stepped(arg: ast.Expr, axis: int, k: int) -> ast.Expr:
    """`arg[::k]` along `axis`, one index with the slice `arg` is where it is one:
    `x[1:][::2]` is `x[1::2]`, `x[::-1][::2]` is `x[::-2]`."""
    if isinstance(arg, ast.Index) and all(isinstance(i, ast.Slice) for i in arg.items):
        items = [*arg.items, *[ast.Slice(None, None)] * (axis + 1 - len(arg.items))]
        item = items[axis]
        step = None
        if item.step is None:
            step = _number(k)
        elif item.lo is None and item.hi is None and _reversal(item.step):
            step = _number(-k)
        if step is not None:
            items[axis] = ast.Slice(item.lo, item.hi, step)
            return ast.Index(arg.operand, tuple(items))
    return ast.Index(arg, (ast.Slice(None, None),) * axis + (ast.Slice(None, None, _number(k)),))


def _reversed_along(arg: ast.Expr, axis: int) -> bool:
    """Whether `arg` is `t[:, ..., ::-1]`, a reversal along `axis` and nothing else."""
    if not isinstance(arg, ast.Index) or len(arg.items) != axis + 1 or \
            not all(isinstance(i, ast.Slice) and i.lo is None and i.hi is None
                    for i in arg.items):
        return False
    return all(i.step is None for i in arg.items[:-1]) and arg.items[-1].step is not None and \
        _reversal(arg.items[-1].step)


def _reversal(step: ast.Expr) -> bool:
    return isinstance(step, ast.UnaryOp) and step.op == "-" and \
        isinstance(step.operand, ast.Number) and step.operand.value == 1


def _number(v: int) -> ast.Expr:
    return ast.UnaryOp("-", ast.Number(float(-v))) if v < 0 else ast.Number(float(v))


def _dimension(d: Dim) -> ast.Expr:
    """`d` as the printers write a dimension: its name (a composite size's text is one), plus
    or minus its offset."""
    if d.is_concrete:
        return ast.Number(float(d.offset))
    if d.offset == 0:
        return ast.Name(d.name)
    return ast.BinOp("+" if d.offset > 0 else "-", ast.Name(d.name), ast.Number(abs(d.offset)))


# -- the checks of lowering ------------------------------------------------------------------------

def reshaped(x: Node, shape: list, where=None) -> tuple[Dim, ...]:
    """The target shape of `reshape(x, shape)` (`shape` of Dims, and at most one -1 for the
    size that makes the product x's), checked: ShapeError where the sizes cannot be equal for
    every value of the names."""
    total = dimensions.product(x.shape)
    unknown = [i for i, d in enumerate(shape) if d is None]
    if len(unknown) > 1:
        raise ShapeError("reshape(): only one size can be -1", where)
    if unknown:
        known = dimensions.product([d for d in shape if d is not None])
        inferred = dimensions.divide(total, known)
        if inferred is None:
            raise ShapeError(f"reshape(): cannot infer the -1 of {_shown(shape)} for "
                             f"{show_shape(x.shape)}: {dimensions.text(total)} is not a "
                             f"multiple of {dimensions.text(known)}", where,
                             hint="write every size: products of dimension names, e.g. "
                                  "reshape(X, (n * m,))")
        shape = [inferred if d is None else d for d in shape]
    if not dimensions.equal(dimensions.product(shape), total):
        raise ShapeError(f"cannot reshape {show_shape(x.shape)} to {_shown(shape)}: "
                         f"{dimensions.text(total)} entries are not "
                         f"{dimensions.text(dimensions.product(shape))}", where,
                         hint="the sizes must have one product for every size of the "
                              "dimensions, e.g. reshape(X, (n * m,)) of X: [n, m]")
    return tuple(shape)


def _shown(shape) -> str:
    return "(" + ", ".join("-1" if d is None else dimensions.text(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"
