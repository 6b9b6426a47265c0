"""Function calls: the built-in structural functions of the language (docs/language.md), and those of the rule tables.

Structural functions (`sum`, `dot`, `diag`, `einsum` ...) are index patterns and lower straight
to contractions and deltas. Every other function comes from the rule book: an elementwise
primitive, a tensor primitive, or a definition expanded in place.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from itertools import count

from ..errors import ParseError, RuleError, ShapeError, UnknownNameError, did_you_mean
from ..ir import build
from ..ir.dims import Dim, show_shape
from ..ir.nodes import Delta, Node, Prim, Size, Unit
from ..parse import ast, parse
from ..rulebook.table import SQUARE_PAIRS, TENSOR_ARITY
from . import convolution, dimensions, linear

MAX_DEFINITION_DEPTH = 32
AXIS_FUNCTIONS = {"sum", "mean", "var", "std", "cumsum", "flip"}
# Functions whose only tensor is the first argument (the others are sizes and constants).
FIRST_ONLY = {"reshape", "dilate", "triu", "tril"}


def tensor_args(call: ast.Call, scope) -> list[ast.Expr]:
    """The positional arguments that are tensors (lowered before the call itself)."""
    if call.func in DIMENSION_FUNCTIONS:
        return []
    if call.func == "einsum":
        return list(call.args[1:])
    if call.func in ("concatenate", "stack"):  # numpy's: a tuple of tensors, then axis=
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Tuple):
            return list(first.items)
        return list(call.args[:1]) if call.func == "concatenate" else list(call.args)
    f = scope.rules.get(call.func)
    if f is not None and f.kind == "def":
        call = positional(call, f)
    if f is not None and f.kind == "def" and f.keywords:
        # a parameter with a default given a constant (`leaky_relu(x, 0.2)`, `amax(x, (0, 1))`)
        # is put into the body as written; a tensor there is lowered as the others
        return [a for k, a in enumerate(call.args) if k < f.arity or not _literal(a)]
    if f is not None and f.kind == "tensor" and f.shape in ("cotangent", "weighted"):
        return list(call.args[:2])
    if call.func in AXIS_FUNCTIONS or call.func in FIRST_ONLY or \
            call.func in ("pad", "transpose", "swapaxes", "matrix_power") or \
            _takes_axis(call.func, scope):
        return list(call.args[:1])
    return list(call.args)


def _takes_axis(name: str, scope) -> bool:
    f = scope.rules.get(name)
    # (a cotangent or weighted primitive's two tensors come first, then its axis)
    return f is not None and f.kind == "tensor" and f.axis is not None and \
        f.shape not in ("cotangent", "weighted")


def known_functions(scope) -> set[str]:
    return set(BUILTINS) | set(scope.rules.functions)


def lower_call(call: ast.Call, args: list[Node], scope) -> Node:
    name = call.func
    if len({k for k, _ in call.kwargs}) != len(call.kwargs):
        raise ParseError(f"{name}() got a keyword argument twice", call.span)
    handler = BUILTINS.get(name)
    if handler is not None:
        return handler(call, args, scope)
    f = scope.rules.get(name)
    if f is None:
        raise UnknownNameError(f"unknown function '{name}'", call.func_span or call.span,
                               did_you_mean(name, known_functions(scope))
                               or "docs/language.md lists the functions; a rule file adds one")
    if f.kind == "elementwise":
        _no_keywords(call)
        _arity(call, f.arity, f.arity)
        from .lower import LazyText
        return build.elementwise(name, args, [LazyText(a) for a in call.args])
    if f.kind == "tensor":
        return _tensor_primitive(call, f, args, scope)
    return _expand_definition(call, f, args, scope)


# -- argument checking -------------------------------------------------------------------------

def _arity(call: ast.Call, lo: int, hi: int) -> None:
    n = len(call.args)
    if not lo <= n <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        plural = "" if want == "1" else "s"
        raise ParseError(f"{call.func}() takes {want} argument{plural}, {n} given", call.span)


def _no_keywords(call: ast.Call) -> None:
    if call.kwargs:
        raise ParseError(f"{call.func}() takes no keyword arguments, got "
                         f"'{call.kwargs[0][0]}='", call.kwargs[0][1].span or call.span)


def _listed(words: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _axis_argument(call: ast.Call, keyword: str = "axis", others: tuple = ()):
    """The `axis` of a reduction: None, or an AST expression (keyword or 2nd positional).
    `others`: the other keywords the function takes (already taken out of `call`), for the
    message about an unexpected one."""
    for k, v in call.kwargs:
        if k != keyword:
            takes = _listed([f"{w}=" for w in (keyword, *others)])
            raise ParseError(f"{call.func}() got an unexpected keyword argument '{k}'",
                             v.span or call.span, hint=f"{call.func} takes {takes}")
    _arity(call, 1, 2)
    if len(call.args) == 2:
        if call.kwargs:
            raise ParseError(f"{call.func}() got {keyword} twice", call.span)
        return call.args[1]
    return call.kwargs[0][1] if call.kwargs else None


def _axes(expr, rank: int, call: ast.Call) -> tuple[int, ...] | None:
    """Normalize an axis argument (int or tuple of ints, negative from the end)."""
    from .lower import constant_int
    if expr is None or isinstance(expr, ast.NoneLit):
        return None
    items = expr.items if isinstance(expr, ast.Tuple) else (expr,)
    axes = []
    for item in items:
        k = constant_int(item, "an axis")
        if not -rank <= k < rank:
            raise ShapeError(f"axis {k} is out of bounds for {call.func}() of a rank-{rank} "
                             f"tensor", item.span or call.span)
        axes.append(k % rank)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{call.func}(): an axis repeats", expr.span or call.span)
    return tuple(sorted(axes))


# -- structural built-ins ---------------------------------------------------------------------

def _sum(call, args, scope):
    call, keepdims = _keepdims(call)
    axis = _axis_argument(call, others=("keepdims",))  # checks the argument count first
    (x,) = args
    axes = _every(_axes(axis, x.rank, call), x)
    return _kept(build.reduce_sum(x, axes), axes, x.rank, keepdims)


def _mean(call, args, scope):
    call, keepdims = _keepdims(call)
    axis = _axis_argument(call, others=("keepdims",))  # checks the argument count first
    (x,) = args
    axes = _every(_axes(axis, x.rank, call), x)
    return _kept(_average(x, axes), axes, x.rank, keepdims)


def _var(call, args, scope):
    """var(x, axis=None, ddof=0, keepdims=False): the variance, the sum of squared deviations
    from the mean divided by N - ddof (numpy's; ddof=0 the population variance), two passes as
    numpy (no E[x**2] - E[x]**2, which cancels to nothing for data far from 0)."""
    call, keepdims = _keepdims(call)
    call, ddof = _ddof(call)
    axis = _axis_argument(call, others=("ddof", "keepdims"))
    (x,) = args
    axes = _every(_axes(axis, x.rank, call), x)
    return _kept(_variance(x, axes, ddof), axes, x.rank, keepdims)


def _std(call, args, scope):
    """std(x, axis=None, ddof=0, keepdims=False): sqrt(var(x, axis, ddof)). Its derivative is
    nan where every entry is equal (var 0: 0 times sqrt's infinite derivative at 0), as JAX's."""
    call, keepdims = _keepdims(call)
    call, ddof = _ddof(call)
    axis = _axis_argument(call, others=("ddof", "keepdims"))
    (x,) = args
    axes = _every(_axes(axis, x.rank, call), x)
    return _kept(build.elementwise("sqrt", [_variance(x, axes, ddof)]), axes, x.rank, keepdims)


def _every(axes, x: Node) -> tuple[int, ...]:
    return tuple(range(x.rank)) if axes is None else axes


def _variance(x: Node, axes: tuple[int, ...], ddof: int = 0) -> Node:
    labels = tuple(range(x.rank))
    # the mean broadcast back along the reduced axes (numpy's keepdims)
    centre = build.contract(labels, [(_average(x, axes), tuple(l for l in labels
                                                               if l not in axes))],
                            {a: x.shape[a] for a in axes})
    deviation = build.binary_add(x, centre, -1.0)
    squares = build.multiply(deviation, deviation)
    if ddof == 0:
        return _average(squares, axes)
    # numpy's divisor max(N - ddof, 0): the sum divided by 0 (inf, or nan where it is 0) where
    # ddof >= N
    total = build.reduce_sum(squares, axes)
    concrete, symbolic = _entries(x, axes)
    if not symbolic or concrete == 0:  # N known: concrete
        if concrete - ddof > 0:
            return build.scale(1.0 / (concrete - ddof), total)
        return build.elementwise("div", [total, build.const(0.0)])
    size = build.contract((), [(Size(d), ()) for d in symbolic])
    if concrete != 1:
        size = build.scale(float(concrete), size)
    divisor = build.binary_add(size, build.const(float(ddof)), -1.0)
    if ddof > 0:
        divisor = build.elementwise("maximum", [divisor, build.const(0.0)])
    return build.elementwise("div", [total, divisor])


# -- keywords of the reductions: keepdims=, ddof= -----------------------------------------------

def _without(call: ast.Call, keyword: str):
    """(`call` without the keyword argument `keyword`, its value or None)."""
    value = next((v for k, v in call.kwargs if k == keyword), None)
    if value is None:
        return call, None
    rest = tuple((k, v) for k, v in call.kwargs if k != keyword)
    return ast.Call(call.func, call.args, rest, span=call.span,
                    func_span=call.func_span), value


def _keepdims(call: ast.Call) -> tuple[ast.Call, bool]:
    """(`call` without keepdims=, its value): True or False, as written."""
    call, value = _without(call, "keepdims")
    if value is None:
        return call, False
    if isinstance(value, ast.Name) and value.id in ("True", "False"):
        return call, value.id == "True"
    from .lower import text_of
    raise ParseError(f"{call.func}(): keepdims must be True or False, got {text_of(value)}",
                     value.span or call.span,
                     hint="keepdims=True keeps each reduced axis with size 1, as numpy's")


def _ddof(call: ast.Call) -> tuple[ast.Call, int]:
    """(`call` without ddof=, its value): an integer literal, 0 if not given."""
    from .lower import constant_int, text_of
    call, value = _without(call, "ddof")
    if value is None:
        return call, 0
    try:
        return call, constant_int(value, "ddof")
    except ParseError:
        raise ParseError(f"{call.func}(): ddof must be an integer constant, got "
                         f"{text_of(value)}", value.span or call.span,
                         hint="numpy's ddof: the sum of squared deviations is divided by "
                              "N - ddof (ddof=1: the sample variance)") from None


def _kept(node: Node, axes, rank: int, keepdims: bool) -> Node:
    """`node`, a reduction over `axes` of a tensor of `rank` axes, with those axes put back with
    size 1 where `keepdims` (numpy's keepdims=True; `sum(x, axis=1)[:, None]` for a matrix)."""
    if not keepdims:
        return node
    return build.index(node, [("none",) if a in axes else ("slice", None, None)
                              for a in range(rank)])


def _entries(x: Node, axes: tuple[int, ...]) -> tuple[int, list]:
    """How many entries `x` has along `axes`: the product of the concrete sizes, and the
    symbolic dimensions it is multiplied by."""
    dims = [x.shape[a] for a in axes]
    concrete = 1
    for d in dims:
        concrete *= d.offset if d.is_concrete else 1
    return concrete, [d for d in dims if not d.is_concrete]


def _average(x: Node, axes: tuple[int, ...]) -> Node:
    total = build.reduce_sum(x, axes)
    concrete, symbolic = _entries(x, axes)
    if concrete == 0:  # numpy's mean of nothing: 0 / 0, nan (and numpy's RuntimeWarning)
        result = build.elementwise("div", [total, build.const(0.0)])
    else:
        result = build.scale(1.0 / concrete, total)
    if symbolic:
        size = build.contract((), [(Size(d), ()) for d in symbolic])
        result = build.elementwise("div", [result, size])
    return result


def _dot(call, args, scope):
    _no_keywords(call)
    _arity(call, 2, 2)
    a, b = args
    if a.rank == 0 or b.rank == 0:
        return build.multiply(a, b)
    if a.rank <= 2 and b.rank <= 2:
        from .lower import LazyText
        return build.matmul(a, b, (LazyText(call.args[0]), LazyText(call.args[1])))
    kb = b.shape[-1] if b.rank == 1 else b.shape[-2]
    if a.shape[-1] != kb:
        raise ShapeError(f"dot(): {show_shape(a.shape)} and {show_shape(b.shape)} do not align "
                         f"({a.shape[-1]} != {kb})", call.span)
    la = tuple(range(a.rank - 1)) + (100,)
    lb_rest = tuple(200 + i for i in range(b.rank - 1))
    lb = lb_rest[:-1] + (100, lb_rest[-1]) if b.rank >= 2 else (100,)
    out = la[:-1] + (lb_rest[:-1] + lb_rest[-1:] if b.rank >= 2 else ())
    return build.contract(out, [(a, la), (b, lb)])


def _outer(call, args, scope):
    _no_keywords(call)
    _arity(call, 2, 2)
    a, b = args
    if a.rank != 1 or b.rank != 1:
        raise ShapeError(f"outer() takes two vectors, got {show_shape(a.shape)} and "
                         f"{show_shape(b.shape)}", call.span)
    return build.contract((0, 1), [(a, (0,)), (b, (1,))])


def _trace(call, args, scope):
    _no_keywords(call)
    _arity(call, 1, 1)
    (x,) = args
    if x.rank < 2:
        raise ShapeError(f"{call.func}() takes a matrix (or a stack of them along the last "
                         f"axes), got {show_shape(x.shape)}", call.span)
    rest = tuple(range(2, x.rank))
    rows, cols = x.shape[0], x.shape[1]
    if rows == cols:
        return build.contract(rest, [(x, (0, 0) + rest)])
    # numpy's trace of a non-square matrix: the sum of X[i, i, ...] for i < min(n, m), the
    # entries that eye(n, m) picks, so that the derivative is eye(n, m) (broadcast over the
    # other axes). min(n, m) must be known: both sizes integers, or one name with offsets.
    if rows.is_concrete != cols.is_concrete or rows.name != cols.name:
        raise ShapeError(
            f"{call.func}() of a matrix {show_shape(x.shape)}: numpy's trace sums the first "
            f"min({rows}, {cols}) diagonal entries, and which of the two is smaller is not "
            f"known here", call.span,
            hint=f"give the matrix one dimension name for both axes ([{rows}, {rows}]) if it "
                 f"is square, or sizes that are integers or one name plus integers "
                 f"([n, n - 1]); or write sum(X * eye({rows}, {cols})) for {rows} <= {cols}")
    eye = build.transpose(Delta(cols, rows)) if rows.offset > cols.offset else Delta(rows, cols)
    return build.contract(rest, [(x, (0, 1) + rest), (eye, (0, 1))])


def _diag(call, args, scope):
    _no_keywords(call)
    _arity(call, 1, 1)
    (x,) = args
    if x.rank == 1:
        n = x.shape[0]
        return build.contract((0, 1), [(x, (0,)), (Delta(n, n), (0, 1))])
    if x.rank == 2 and x.shape[0] == x.shape[1]:
        return build.contract((0,), [(x, (0, 0))])
    raise ShapeError(f"diag() takes a vector or a square matrix, got {show_shape(x.shape)}",
                     call.span)


def _eye(call, args, scope):
    _no_keywords(call)
    _arity(call, 1, 2)
    dims = [_dimension(a, scope) for a in call.args]
    rows, cols = dims[0], dims[-1]
    # numpy.eye(N, M). A delta is a window of its second axis, so a tall one is transposed:
    # known tall when both are integers or one name with a larger offset (eye(n, n - 1)).
    if rows.name == cols.name and rows.offset > cols.offset:
        return build.transpose(Delta(cols, rows))
    return Delta(rows, cols)


def _filled(value: float):
    def build_filled(call, args, scope):
        _no_keywords(call)
        if not call.args:
            raise ParseError(f"{call.func}() takes the dimensions of the result, e.g. "
                             f"{call.func}(n, 3)", call.span)
        shape = tuple(_dimension(a, scope) for a in call.args)
        return build.broadcast_to(build.const(value), shape)
    return build_filled


def _pad(call, args, scope):
    """pad(x, (before, after)) or pad(x, ((b0, a0), (b1, a1), ...)): zeros around x, as
    numpy.pad; the widths are integers or dimension expressions. Slicing's derivative."""
    _no_keywords(call)
    _arity(call, 2, 2)
    (x,) = args
    widths = call.args[1]
    pairs = widths.items if isinstance(widths, ast.Tuple) else ()
    if len(pairs) == 2 and not any(isinstance(p, ast.Tuple) for p in pairs):
        pairs = (widths,) * x.rank
    if len(pairs) != x.rank or not all(isinstance(p, ast.Tuple) and len(p.items) == 2
                                       for p in pairs):
        raise ParseError(f"pad() takes (before, after) or one such pair per axis of the "
                         f"rank-{x.rank} argument", widths.span or call.span)
    labels, out, ops = list(range(x.rank)), [], []
    for axis, pair in enumerate(pairs):
        before = _dimension(pair.items[0], scope, "a pad width")
        dim = x.shape[axis]
        try:
            after = _dimension(pair.items[1], scope, "a pad width")
        except ParseError:  # `m - p`: a difference of dimensions, as a slice's gradient has it
            after = _width_sum(pair.items[1], scope)
            if after is None:
                raise
        if before == Dim(None, 0) and after == Dim(None, 0):
            out.append(axis)
            continue
        try:
            dim + before  # noqa: B018 - a ValueError for two different names
        except ValueError:
            # The window's end is an index of the result (its adjoint slices there), so it
            # must be one name plus an integer, like every dimension.
            raise ShapeError(f"pad(): the argument's end, {before} + {dim}, is not a dimension",
                             pair.items[0].span or pair.span or call.span,
                             hint="before an argument of named size, pad by an integer: a "
                                  "dimension is one name plus an integer") from None
        try:
            padded = _dims_sum([(1, dim), (1, before), *after]) if isinstance(after, list) \
                else dim + before + after
        except ValueError:
            from ..parse.unparse import unparse
            shown = " + ".join(f"({unparse(e)})" if isinstance(e, ast.BinOp) else unparse(e)
                               for e in pair.items)
            raise ShapeError(f"pad(): {dim} + {shown} is not a dimension",
                             pair.span or call.span,
                             hint="the size and the widths must add up to one name plus an "
                                  "integer, e.g. pad(y, (0, m - p)) for y of size p") from None
        new = 100 + axis
        ops.append((Delta(dim, padded, before), (axis, new)))
        out.append(new)
    return build.contract(tuple(out), [(x, tuple(labels)), *ops])


def _width_sum(expr, scope):
    """A pad width written as a sum of dimensions (`m - p`, `m - (p + 3)`): [(sign, Dim)], or
    None when it is not one. A Dim holds one name; the padded size must, which _dims_sum checks.
    """
    if isinstance(expr, ast.BinOp) and expr.op in "+-":
        left, right = _width_sum(expr.left, scope), _width_sum(expr.right, scope)
        if left is None or right is None:
            return None
        return left + [(s if expr.op == "+" else -s, d) for s, d in right]
    if isinstance(expr, ast.Name) or isinstance(expr, ast.BinOp) and expr.op in ("*", "//"):
        return [(1, _dimension(expr, scope))]  # a name, or a product (`m * n - m`)
    from .lower import constant_int
    try:
        return [(1, Dim(None, constant_int(expr, "a pad width")))]
    except ParseError:
        return None


def _dims_sum(terms) -> Dim:
    """The Dim that the signed sum of dimensions is (names must cancel to at most one with
    coefficient 1, or add up as like products: n + n is 2 * n); ValueError otherwise."""
    names: dict[str, int] = {}
    offset = 0
    for sign, d in terms:
        offset += sign * d.offset
        if d.name is not None:
            names[d.name] = names.get(d.name, 0) + sign
    named = [(n, c) for n, c in names.items() if c]
    if len(named) > 1 or (named and named[0][1] != 1):
        total = Dim(None, 0)  # sums first, then differences: Dim adds like products
        for sign, d in sorted(terms, key=lambda t: -t[0]):
            total = total + d if sign > 0 else total - d
        return total
    return Dim(named[0][0] if named else None, offset)


def _stack(call, args, scope):
    """stack(a, b, ...) or stack((a, b, ...), axis=0): the arguments along a new axis, as
    numpy.stack."""
    for k, v in call.kwargs:
        if k != "axis":
            raise ParseError(f"stack() got an unexpected keyword argument '{k}'",
                             v.span or call.span, hint="stack takes axis=")
    if not args:
        raise ParseError("stack() takes at least one tensor", call.span)
    sources = call.args[0].items if isinstance(call.args[0], ast.Tuple) else call.args
    shape = args[0].shape
    for a, src in zip(args, sources):
        if a.shape != shape:
            raise ShapeError(f"stack(): all arguments need one shape; {show_shape(a.shape)} is "
                             f"not {show_shape(shape)}", src.span or call.span)
    k = Dim(None, len(args))
    rest = tuple(range(1, len(shape) + 1))
    axis = _one_axis(call.kwargs[0][1], len(shape) + 1, call) if call.kwargs else 0
    out = rest[:axis] + (0,) + rest[axis:]
    # stack(...)[s, ...] = sum over k of e_k[s] * a_k[...]: linear, so derivatives need no rule.
    return build.add([(1.0, build.contract(out, [(Unit(k, i), (0,)), (a, rest)]))
                      for i, a in enumerate(args)])


def _transpose(call, args, scope):
    """transpose(x, axes=None): numpy.transpose, the result's axis i is x's axis axes[i];
    without axes every axis reversed, as `.T`. A relabelling, so derivatives need no rule."""
    axes = _axis_argument(call, "axes")
    (x,) = args
    if axes is None or isinstance(axes, ast.NoneLit):
        return build.transpose(x)
    order = _permutation(axes.items if isinstance(axes, ast.Tuple) else (axes,), x.rank,
                         call, axes.span)
    if len(order) != x.rank:
        raise ShapeError(f"transpose(): {len(order)} axes given for a rank-{x.rank} tensor "
                         f"{show_shape(x.shape)}", axes.span or call.span,
                         hint="name every axis once, e.g. transpose(x, (1, 0, 2))")
    labels = tuple(range(x.rank))
    return build.contract(order, [(x, labels)])


def _swapaxes(call, args, scope):
    """swapaxes(x, a, b): numpy.swapaxes, axes a and b exchanged."""
    _no_keywords(call)
    _arity(call, 3, 3)
    (x,) = args
    a, b = (_permutation((e,), x.rank, call, e.span)[0] for e in call.args[1:])
    order = list(range(x.rank))
    order[a], order[b] = b, a
    return build.contract(tuple(order), [(x, tuple(range(x.rank)))])


def _permutation(items, rank: int, call: ast.Call, span) -> tuple[int, ...]:
    """Integer-constant axes, negative from the end, each once (in the order given)."""
    from .lower import constant_int
    axes = []
    for item in items:
        k = constant_int(item, "an axis")
        if not -rank <= k < rank:
            raise ShapeError(f"axis {k} is out of bounds for {call.func}() of a rank-{rank} "
                             f"tensor", item.span or span or call.span)
        if k % rank in axes:
            raise ShapeError(f"{call.func}(): axis {k} repeats", item.span or span or call.span)
        axes.append(k % rank)
    return tuple(axes)


def _concatenate(call, args, scope):
    """concatenate((a, b, ...), axis=0): numpy.concatenate, lowered as a sum of pads (each
    operand zero-padded along the axis to the total, at its offset), so its adjoint is slices.
    axis=None joins the operands flattened, as numpy.
    """
    axis_expr = _axis_argument(call)
    if not isinstance(call.args[0], ast.Tuple) or not args:
        raise ParseError("concatenate() takes a tuple of tensors, e.g. concatenate((a, b), "
                         "axis=0)", call.args[0].span or call.span)
    if isinstance(axis_expr, ast.NoneLit):
        args = [linear.reshape(a, (dimensions.product(a.shape),)) for a in args]
        axis_expr = None
    rank = args[0].rank
    if rank == 0:
        raise ShapeError("concatenate(): zero-dimensional tensors cannot be concatenated",
                         call.span)
    axis = 0 if axis_expr is None else _one_axis(axis_expr, rank, call)
    first = args[0].shape
    for a, src in zip(args, call.args[0].items):
        if a.rank != rank or any(d != e for i, (d, e) in enumerate(zip(a.shape, first))
                                 if i != axis):
            raise ShapeError(f"concatenate(): {show_shape(a.shape)} does not match "
                             f"{show_shape(first)} but along axis {axis}",
                             src.span or call.span)
    try:
        total = _dims_sum([(1, a.shape[axis]) for a in args])
    except ValueError:
        total = None
    labels = tuple(range(rank))
    out = labels[:axis] + (rank,) + labels[axis + 1:]
    terms, before = [], Dim(None, 0)
    for a, src in zip(args, call.args[0].items):
        dim = a.shape[axis]
        try:
            end = before + dim
        except ValueError:
            end = None
        if total is None or end is None:
            # A pad's window must end at one name plus an integer: n + 3 is one, n + m is not.
            sizes = " + ".join(str(b.shape[axis]) for b in args)
            raise ShapeError(f"concatenate(): the sizes along axis {axis}, {sizes}, do not add "
                             f"up to a dimension", src.span or call.span,
                             hint="the sizes along the axis must add up to one dimension: "
                                  "integers and one name (n + 2), or like products (n and n "
                                  "make 2 * n), not two names (n + m)")
        terms.append((1.0, build.contract(out, [(a, labels), (Delta(dim, total, before),
                                                              (axis, rank))])))
        before = end
    return build.add(terms)


def _cumsum(call, args, scope):
    """cumsum(x, axis=None): numpy's cumulative sum along `axis` (one axis), a linear map whose
    derivative is the running sum from the other end (lower/linear.py), never a triangle."""
    axis = _axis_argument(call)
    (x,) = args
    if axis is None or isinstance(axis, ast.NoneLit):  # numpy's: of x flattened
        return linear.cumsum(linear.reshape(x, (dimensions.product(x.shape),)), 0)
    return linear.cumsum(x, _one_axis(axis, x.rank, call))


def _flip(call, args, scope):
    """flip(x, axis=None): numpy's flip, x reversed along the axes (every axis by default);
    `x[::-1]` reverses the first."""
    axis = _axis_argument(call)
    (x,) = args
    axes = _axes(axis, x.rank, call)
    for a in range(x.rank) if axes is None else axes:
        x = linear.flip(x, a)
    return x


def _reshape(call, args, scope):
    """reshape(x, (d0, d1, ...)): numpy's reshape (C order); sizes are dimension expressions,
    products of names among them (`reshape(X, (n * m,))`), and one may be -1."""
    _no_keywords(call)
    _arity(call, 2, 2)
    (x,) = args
    given = call.args[1]
    items = given.items if isinstance(given, ast.Tuple) else (given,)
    shape = []
    for item in items:
        if _minus_one(item):
            shape.append(None)
        else:
            shape.append(_dimension(item, scope, "a size"))
    return linear.reshape(x, linear.reshaped(x, shape, given.span or call.span))


def _minus_one(expr) -> bool:
    return isinstance(expr, ast.UnaryOp) and expr.op == "-" and \
        isinstance(expr.operand, ast.Number) and expr.operand.value == 1


def _dilate(call, args, scope):
    """dilate(x, k, n, axis=0): x's entries k apart along the axis, in zeros of length n (entry
    i at i * k): the adjoint of the step x[::k], which formulas print."""
    from .lower import constant_int
    axis = None
    for key, value in call.kwargs:
        if key != "axis":
            raise ParseError(f"dilate() got an unexpected keyword argument '{key}'",
                             value.span or call.span, hint="dilate takes axis=")
        axis = value
    _arity(call, 3, 3)
    (x,) = args
    k = constant_int(call.args[1], "a step")
    if k < 1:
        raise ShapeError("dilate(): the step must be at least 1", call.args[1].span)
    n = _dimension(call.args[2], scope, "a length")
    if x.rank == 0:
        raise ShapeError("dilate() of a scalar has no axis", call.span)
    axis = 0 if axis is None else _one_axis(axis, x.rank, call)
    if x.shape[axis] != dimensions.ceildiv(n, k):
        need = dimensions.text(dimensions.ceildiv(n, k))
        raise ShapeError(f"dilate(): {dimensions.text(x.shape[axis])} entries {k} apart do not "
                         f"make a length of {dimensions.text(n)}", call.span,
                         hint=f"it takes ceil(n / k) = {need} entries, as x[::k] of a length "
                              f"n has")
    return linear.dilate(x, axis, k, n)


def _triangle(upper: bool):
    def build_triangle(call, args, scope):
        """triu(x, k=0), tril(x, k=0): numpy's, of the last two axes."""
        from .lower import constant_int
        k = _axis_argument(call, "k")
        (x,) = args
        if x.rank < 2:
            raise ShapeError(f"{call.func}() takes a matrix or a stack of them, got "
                             f"{show_shape(x.shape)}", call.span)
        return linear.triangle(x, 0 if k is None else constant_int(k, "a diagonal"), upper)
    return build_triangle


def _kron(call, args, scope):
    """kron(a, b): numpy's Kronecker product, a block of b per entry of a: the product of
    every entry of a with every entry of b, axes interleaved, reshaped. Its derivative needs
    no rule (a reshape's adjoint and a product's)."""
    _no_keywords(call)
    _arity(call, 2, 2)
    a, b = args
    rank = max(a.rank, b.rank)
    a = linear.reshape(a, (Dim(None, 1),) * (rank - a.rank) + a.shape)  # numpy's leading 1s
    b = linear.reshape(b, (Dim(None, 1),) * (rank - b.rank) + b.shape)
    pairs = tuple(range(2 * rank))
    outer = build.contract(pairs, [(a, pairs[0::2]), (b, pairs[1::2])])
    shape = tuple(dimensions.product([p, q]) for p, q in zip(a.shape, b.shape))
    return linear.reshape(outer, shape)


def _norm(call, args, scope):
    """norm(x, ord=None, axis=None): numpy's linalg.norm. Without an order, the 2-norm over the
    axes (every axis by default: a matrix's Frobenius norm), the rule table's `norm`. With one
    (the second argument when it is a number, as numpy's, or ord=), a vector norm along one
    axis (a vector's, or axis=k): 1 is sum(abs(x)), inf max(abs(x)), 0 the count of nonzero
    entries, p (sum(abs(x) ** p)) ** (1 / p); or a matrix norm over two axes (a matrix's, or
    axis=(r, c)): 'fro', 1 (the largest column sum of abs(x)), inf (the largest row sum),
    -1 and -inf the smallest. An axis as the second argument (a tuple, or the rewrites' name
    `axis`) is the axis, as the other reductions take it."""
    call, keepdims = _keepdims(call)
    node = _norm_value(call, args, scope)
    if not keepdims:
        return node
    (x,) = args
    _, axis = _norm_arguments(call)
    if axis is None or isinstance(axis, ast.NoneLit):
        return _kept(node, tuple(range(x.rank)), x.rank, True)
    items = axis.items if isinstance(axis, ast.Tuple) else (axis,)
    return _kept(node, _permutation(items, x.rank, call, axis.span), x.rank, True)


def _norm_arguments(call):
    """norm's (order, axis), as written (AST expressions, or None where not given)."""
    _arity(call, 1, 3)
    order = axis = None
    rest = list(call.args[1:])
    if rest and not isinstance(_order_value(rest[0]), (float, str)):
        axis = rest.pop(0)
    elif rest:
        order = rest.pop(0)
    if rest:
        axis = rest.pop(0) if axis is None else None
        if axis is None:
            raise ParseError("norm() takes the order, then the axis", call.span)
    for key, value in call.kwargs:
        if key not in ("ord", "axis") or (order if key == "ord" else axis) is not None:
            raise ParseError(f"norm() got an unexpected or repeated keyword argument '{key}'",
                             value.span or call.span,
                             hint="norm takes ord=, axis= and keepdims=")
        order, axis = (value, axis) if key == "ord" else (order, value)
    return order, axis


def _norm_value(call, args, scope):
    """norm(x, ord=None, axis=None) without keepdims."""
    order, axis = _norm_arguments(call)
    value = None if order is None or isinstance(order, ast.NoneLit) else _order_value(order)
    (x,) = args
    two_norm = ast.Call("norm", call.args[:1], () if axis is None else (("axis", axis),),
                        span=call.span, func_span=call.func_span)
    if value is None or value == "fro":
        return _tensor_primitive(two_norm, scope.rules.get("norm"), args, scope)
    where = order.span or call.span
    if axis is None or isinstance(axis, ast.NoneLit):
        if x.rank not in (1, 2):
            raise ShapeError(f"norm() with an order takes a vector or a matrix, or axis=; got "
                             f"{show_shape(x.shape)}", where)
        axes = tuple(range(x.rank))
    else:
        items = axis.items if isinstance(axis, ast.Tuple) else (axis,)
        axes = _permutation(items, x.rank, call, axis.span)  # in the order given: (rows, cols)
        if len(axes) > 2:
            raise ShapeError("norm() takes one axis (a vector norm) or two (a matrix norm)",
                             axis.span or call.span)
    if len(axes) == 1:
        (a,) = axes
        if value == 2:
            return _tensor_primitive(two_norm, scope.rules.get("norm"), args, scope)
        if value == 1:
            return build.reduce_sum(build.elementwise("abs", [x]), axes)
        if value in (float("inf"), -float("inf")):
            return _reduced("max" if value > 0 else "min", build.elementwise("abs", [x]),
                            axes, scope)
        if value == 0:
            return build.reduce_sum(build.elementwise("not_equal", [x, build.const(0.0)]), axes)
        if isinstance(value, float):
            powered = build.elementwise("pow", [build.elementwise("abs", [x]),
                                                build.const(value)])
            return build.elementwise("pow", [build.reduce_sum(powered, axes),
                                            build.const(1.0 / value)])
    else:
        rows, cols = axes
        if value in (1, -1, float("inf"), -float("inf")):
            # 1: the columns' sums (over the rows), their largest; inf: the rows' sums
            summed, kept = (rows, cols) if abs(value) == 1 else (cols, rows)
            sums = build.reduce_sum(build.elementwise("abs", [x]), (summed,))
            return _reduced("max" if value > 0 else "min", sums,
                            (kept - (kept > summed),), scope)
        if value in (2, -2, "nuc"):
            raise ShapeError(f"norm(): the matrix norm of order {_shown_order(value)} needs singular "
                             f"values, which the language does not have", where,
                             hint="norm(X) is the Frobenius norm; norm(X, 2, axis=k) the "
                                  "2-norm of each row or column")
    raise ShapeError(f"norm(): invalid order {_shown_order(value)} for "
                     f"{'a vector' if len(axes) == 1 else 'a matrix'} norm", where,
                     hint="numpy's orders: a number for vectors; 'fro', 1, -1, and +-1e999 "
                          "(inf) for matrices")


def _order_value(expr):
    """A norm order written as a number (a float, inf for 1e999) or a string; None else."""
    sign = 1.0
    while isinstance(expr, ast.UnaryOp):
        sign = -sign if expr.op == "-" else sign
        expr = expr.operand
    if isinstance(expr, ast.Number):
        return sign * float(expr.value)
    if isinstance(expr, ast.String):
        return expr.value
    return None


def _shown_order(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}"


def _reduced(name: str, x: Node, axes: tuple, scope) -> Node:
    """The rule table's reduction `name` (max, min) of x over `axes`."""
    return Prim(name, (x,), (tuple(sorted(axes)),),
                tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _one_axis(expr, rank: int, call) -> int:
    if isinstance(expr, ast.Tuple):  # () too: _axes would give no axis
        raise ParseError(f"{call.func}() takes one axis", expr.span or call.span)
    if isinstance(expr, ast.NoneLit):  # _axes' None is every axis
        raise ParseError(f"{call.func}() takes one axis, not None", expr.span or call.span)
    if rank == 0:
        raise ShapeError(f"{call.func}() of a scalar has no axis", expr.span or call.span)
    return _axes(expr, rank, call)[0]


def _size(call, args, scope):
    """size(n): the size of a dimension, as a scalar (formulas use it for `mean`)."""
    _no_keywords(call)
    _arity(call, 1, 1)
    dim = _dimension(call.args[0], scope)
    return build.const(dim.offset) if dim.is_concrete else Size(dim)


def _dimension(expr, scope, what: str = "a dimension") -> Dim:
    """An integer, a dimension name, a name plus or minus an integer (`n - 1`), or a product
    or quotient of them (`n * m`, `2 * n`, `n // 2`: lower/dimensions.py)."""
    d = dimensions.dimension(expr, scope, what)
    if d.is_concrete and d.offset < 0:
        raise ShapeError(f"{what} cannot be negative", expr.span)
    return d


def _einsum(call, args, scope):
    """einsum("ij,jk->ik", A, B), numpy's: one letter per axis, letters repeated across operands
    summed unless in the output; `...` stands for the axes that no letter names, broadcast
    across operands as numpy broadcasts (right-aligned, equal sizes or 1); without `->` the
    output is `...` then the letters that appear once, in alphabetical order."""
    _no_keywords(call)
    if not call.args or not isinstance(call.args[0], ast.String):
        raise ParseError('einsum() takes a subscript string first, e.g. einsum("ij,j->i", A, x)',
                         call.span)
    spec_node = call.args[0]
    spec = spec_node.value.replace(" ", "")
    where = spec_node.span or call.span
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    for t in (*terms, *([output] if arrow else [])):
        rest = t.replace("...", "", 1)
        if rest and not rest.isalpha():
            raise ParseError(f"einsum(): subscripts must be letters, with at most one '...' per "
                             f"operand, got {spec_node.value!r}", where)
    if len(terms) != len(args):
        raise ShapeError(f"einsum(): {len(terms)} subscript groups for {len(args)} operands",
                         where)
    one = Dim(None, 1)
    ellipsis: list[Dim] = []  # the axes `...` stands for, broadcast across the operands
    extras = []
    for term, node, src in zip(terms, args, call.args[1:]):
        extra = node.rank - len(term.replace("...", ""))
        if extra < 0 or (extra and "..." not in term):
            raise ShapeError(f"einsum(): subscripts '{term}' for an operand of rank {node.rank} "
                             f"{show_shape(node.shape)}", src.span or where,
                             hint="'...' stands for the axes no letter names" if extra > 0
                             else None)
        start = term.find("...")
        dims = node.shape[start:start + extra]
        extras.append(dims)
        for i in range(1, len(dims) + 1):
            if i > len(ellipsis):
                ellipsis.insert(0, dims[-i])
            elif ellipsis[-i] == one:
                ellipsis[-i] = dims[-i]
            elif dims[-i] not in (ellipsis[-i], one):
                raise ShapeError(f"einsum(): the axes of '...' do not broadcast: "
                                 f"{show_shape(dims)} against {show_shape(tuple(ellipsis))}",
                                 src.span or where, hint="numpy broadcasting needs equal "
                                                         "dimensions or 1")
    fresh = count()
    symbols = []  # per operand, a symbol per axis: a letter, ("...", k), or a summed size-1 axis
    letters: dict[str, Dim] = {}
    for term, node, dims, src in zip(terms, args, extras, call.args[1:]):
        lead = len(ellipsis) - len(dims)
        dots = [("...", lead + j) if d == ellipsis[lead + j] else ("one", next(fresh))
                for j, d in enumerate(dims)]
        before, _, after = term.partition("...")
        row = [*before, *dots, *after]
        for ch, dim in zip(row, node.shape):
            if isinstance(ch, str) and letters.setdefault(ch, dim) != dim:
                raise ShapeError(f"einsum(): index '{ch}' has size {letters[ch]} and {dim}",
                                 src.span or where)
        symbols.append(row)
    dots = [("...", k) for k in range(len(ellipsis))]
    if not arrow:
        seen = "".join(t.replace("...", "") for t in terms)
        output = [*dots, *sorted(ch for ch in set(seen) if seen.count(ch) == 1)]
    else:
        if "..." not in output and ellipsis:
            raise ShapeError(f"einsum(): the output {output!r} has no '...' for the axes "
                             f"{show_shape(tuple(ellipsis))} that '...' stands for", where,
                             hint="write '...' in the output too, e.g. '...ij,...jk->...ik'")
        before, _, after = output.partition("...")
        output = [*before, *(dots if "..." in output else []), *after]
    named = [ch for ch in output if isinstance(ch, str)]
    if len(set(named)) != len(named):
        raise ParseError(f"einsum(): output subscripts '{''.join(named)}' repeat a letter",
                         where)
    missing = [ch for ch in named if ch not in letters]
    if missing:
        raise ParseError(f"einsum(): output index '{missing[0]}' appears in no operand", where)
    code = {ch: i for i, ch in enumerate(dict.fromkeys([*output, *(c for row in symbols
                                                                    for c in row)]))}
    return build.contract(tuple(code[c] for c in output),
                          [(node, tuple(code[c] for c in row)) for row, node in
                           zip(symbols, args)],
                          {code[d]: ellipsis[d[1]] for d in dots})


def _matrix_power(call, args, scope):
    """matrix_power(X, k): numpy.linalg's, the product of k factors X for an integer literal k
    (of each matrix of a stack), by repeated squaring: about 2 log2(k) products, so its
    derivative is the sum of products the chain rule gives through them. k = 0 is the
    identity, k < 0 the power -k of the inverse (inverted first, as numpy: inv(X^-k) would invert
    a matrix whose condition number is cond(X)^-k)."""
    from .lower import constant_int
    _no_keywords(call)
    _arity(call, 2, 2)
    x = args[0]
    if x.rank < 2 or x.shape[-1] != x.shape[-2]:
        raise ShapeError(f"matrix_power() takes a square matrix, got {show_shape(x.shape)}",
                         call.args[0].span or call.span)
    k = constant_int(call.args[1], "matrix_power's exponent")
    if k < 0:
        f = scope.rules.get("inv")
        if f is None or f.kind != "tensor" or f.shape != "square":
            raise ShapeError("matrix_power() with a negative exponent needs inv, which the "
                             "rules in force do not define", call.args[1].span or call.span)
        return _power(Prim("inv", (x,), (), x.shape), -k)
    if k == 0:
        labels = tuple(range(x.rank))
        n = x.shape[-1]
        return build.contract(labels, [(Delta(n, n), labels[-2:])], dict(zip(labels, x.shape)))
    return _power(x, k)


def _power(x: Node, k: int) -> Node:
    """x @ x @ ... (k >= 1 factors), by repeated squaring."""
    result, power = None, x
    while True:
        if k & 1:
            result = power if result is None else build.matmul(result, power)
        k >>= 1
        if not k:
            return result
        power = build.matmul(power, power)


BUILTINS = {
    "sum": _sum, "mean": _mean, "var": _var, "std": _std, "dot": _dot, "outer": _outer, "tr": _trace, "trace": _trace,
    "diag": _diag, "eye": _eye, "einsum": _einsum,
    "ones": _filled(1.0), "zeros": _filled(0.0), "size": _size, "pad": _pad,
    "stack": _stack, "transpose": _transpose, "swapaxes": _swapaxes,
    "concatenate": _concatenate, "cumsum": _cumsum, "flip": _flip, "reshape": _reshape,
    "dilate": _dilate, "triu": _triangle(True), "tril": _triangle(False), "kron": _kron,
    "norm": _norm,
    "matrix_power": _matrix_power,
    # convolutions and correlations: lower/convolution.py
    "correlate": convolution.lower_correlate, "convolve": convolution.lower_convolve,
    "conv1d": convolution.lower_conv(1), "conv2d": convolution.lower_conv(2),
    "conv_transpose1d": convolution.lower_transposed(1),
    "conv_transpose2d": convolution.lower_transposed(2),
}
# The BUILTINS a rule file may still give a rule for, with the kind of line they must keep:
# norm is lowered above, but evaluated and differentiated as the tables' tensor primitive norm
# (rules/tensor.rules), whose line and derivative a table may replace. A rule file may not
# declare any other name of BUILTINS (rulebook/table.py refuses it at its line): lowering never
# asks the rule book for one, so its rule would be ignored or break the rewrites calling it.
TABLE_BACKED = {"norm": "reduce"}
# Functions whose arguments are dimensions (ints or names from the shapes), not tensors.
DIMENSION_FUNCTIONS = {"eye", "ones", "zeros", "size"}


# -- rule-table functions -----------------------------------------------------------------------

def _tensor_primitive(call, f, args, scope) -> Node:
    if f.shape == "square_rhs":
        return _square_rhs(call, f, args)
    if f.shape in ("square_square", "square_square_pair", "square_square_square"):
        return _square_square(call, f, args)
    if f.shape in ("cotangent", "weighted"):
        return _cotangent(call, f, args, scope)
    keepdims, others = False, ()
    if f.shape == "reduce" and f.axis is not None:  # numpy's keepdims=, as sum's
        call, keepdims = _keepdims(call)
        others = ("keepdims",)
    if f.axis is None:
        _no_keywords(call)
        _arity(call, f.arity, f.arity)
        axes = None
    else:
        axis = _axis_argument(call, f.axis, others)
        # An explicit `axis=None` is every axis, as numpy's, scipy's and JAX's (and sum's here);
        # only an omitted axis takes the primitive's default below.
        axes = (tuple(range(args[0].rank)) if isinstance(axis, ast.NoneLit)
                else _axes(axis, args[0].rank, call))
    (x,) = args
    if f.shape in ("square", "square_scalar", "square_pair", "square_triple"):
        if x.rank < 2 or x.shape[-1] != x.shape[-2]:
            raise ShapeError(f"{f.name}() takes a square matrix, got {show_shape(x.shape)}",
                             call.span)
        return Prim(f.name, (x,), (), x.shape[:-2] + x.shape[-2:] * SQUARE_PAIRS[f.shape])
    if f.shape == "transposed":
        if x.rank < 2:
            raise ShapeError(f"{f.name}() takes a matrix, got {show_shape(x.shape)}", call.span)
        return Prim(f.name, (x,), (), (*x.shape[:-2], x.shape[-1], x.shape[-2]))
    if axes is None:
        # Inside a derivative rule, axis primitives work along the primal's axes.
        axes = getattr(scope, "default_axes", None)
    if axes is None:
        # No axis: `same` primitives work along the last axis (as jax.nn.softmax),
        # `reduce` primitives over all entries (as scipy and JAX logsumexp).
        axes = (x.rank - 1,) if f.shape == "same" and x.rank else tuple(range(x.rank))
    shape = x.shape if f.shape == "same" else tuple(d for i, d in enumerate(x.shape)
                                                     if i not in axes)
    # Over no axes (a scalar's) too: a reduction of one entry is not always the entry (norm).
    return _kept(Prim(f.name, (x,), (axes,), shape), axes, x.rank, keepdims)


def _square_rhs(call, f, args) -> Node:
    """solve(A, b) and its kin: A [..., n, n]; b [..., n] (a vector per matrix) or [..., n, k]
    (k columns per matrix), with A's batch axes (numpy's solve, which takes a 1-d b as a
    vector, and PyTorch's, which takes b [..., n] with A's batch as a vector per matrix)."""
    _no_keywords(call)
    _arity(call, 2, 2)
    a, b = args
    if a.rank < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{f.name}() takes a square matrix first, got {show_shape(a.shape)}",
                         call.args[0].span or call.span)
    batch, n = a.shape[:-2], a.shape[-1]
    if b.rank not in (a.rank - 1, a.rank) or b.shape[:len(batch)] != batch or \
            b.shape[len(batch)] != n:
        want = show_shape((*batch, n)) + " or " + show_shape((*batch, n, Dim("k")))
        raise ShapeError(f"{f.name}(): the right-hand side {show_shape(b.shape)} does not fit "
                         f"the matrix {show_shape(a.shape)}: it must be {want}",
                         call.args[1].span or call.span,
                         hint="a vector per matrix, or k columns per matrix, with the "
                              "matrix's batch axes")
    return Prim(f.name, (a, b), (), b.shape)


def _square_square(call, f, args) -> Node:
    """det_hvp(X, V) and its kin (det_third_v(X, V), det_third_vv(X, V, W)): square matrices,
    or stacks of them, of one shape (the first a matrix, the others a direction per matrix of
    it), to that shape (or with another pair of its axes for square_square_pair)."""
    _no_keywords(call)
    arity = TENSOR_ARITY[f.shape]
    _arity(call, arity, arity)
    x = args[0]
    if x.rank < 2 or x.shape[-1] != x.shape[-2]:
        raise ShapeError(f"{f.name}() takes a square matrix first, got {show_shape(x.shape)}",
                         call.args[0].span or call.span)
    for k, v in enumerate(args[1:], 1):
        if v.shape != x.shape:
            raise ShapeError(f"{f.name}(): the {('second', 'third')[k - 1]} argument "
                             f"{show_shape(v.shape)} is not shaped like the first, "
                             f"{show_shape(x.shape)}", call.args[k].span or call.span)
    return Prim(f.name, tuple(args), (), x.shape[:-2] + x.shape[-2:] * SQUARE_PAIRS[f.shape])


def _cotangent(call, f, args, scope) -> Node:
    """log_softmax_vjp(x, g) and its kin: a tensor and a cotangent shaped like it, to that
    shape, along the axes (the last by default, as the primitive whose pullback it is); or,
    shape rule `weighted`, a tensor and weights that broadcast against each other (each is
    broadcast to their common shape, as numpy's broadcasting and scipy's `b=` have it),
    reduced over the axes of that shape (every axis by default, as logsumexp:
    logsumexp_weighted(x, w))."""
    if len(args) < 2:
        _arity(call, 2, 2 if f.axis is None else 3)
    x, g = args
    if f.shape == "weighted" and g.shape != x.shape:
        # weights that broadcast against the tensor, or a tensor against the weights (scipy's
        # logsumexp(x, b=w)): both as numpy broadcasts them, the axes those of the result
        shape = build.broadcast_shapes(x, g, ("the first argument", "the weights"),
                                       f"broadcast, in {f.name}(),")
        x, g = build.broadcast_to(x, shape), build.broadcast_to(g, shape)
    if g.shape != x.shape:
        what = "the weights" if f.shape == "weighted" else "the cotangent"
        raise ShapeError(f"{f.name}(): {what} {show_shape(g.shape)} is not shaped like "
                         f"the first argument, {show_shape(x.shape)}",
                         call.args[1].span or call.span)
    axes, keepdims = None, False
    if f.shape == "weighted" and f.axis is not None:  # a reduction: numpy's keepdims=
        call, keepdims = _keepdims(call)
    if f.axis is None:
        _no_keywords(call)
        _arity(call, 2, 2)
    else:
        for k, v in call.kwargs:
            if k != f.axis:
                takes = f"{f.axis}= and keepdims=" if f.shape == "weighted" else f"{f.axis}="
                raise ParseError(f"{call.func}() got an unexpected keyword argument '{k}'",
                                 v.span or call.span, hint=f"{call.func} takes {takes}")
        _arity(call, 2, 3)
        if len(call.args) == 3 and call.kwargs:
            raise ParseError(f"{call.func}() got {f.axis} twice", call.span)
        axis = call.args[2] if len(call.args) == 3 else \
            call.kwargs[0][1] if call.kwargs else None
        axes = (tuple(range(x.rank)) if isinstance(axis, ast.NoneLit)
                else _axes(axis, x.rank, call))
    if axes is None:
        axes = getattr(scope, "default_axes", None)
    if f.shape == "weighted":
        if axes is None:
            axes = tuple(range(x.rank))
        return _kept(Prim(f.name, (x, g), (axes,), tuple(d for i, d in enumerate(x.shape)
                                                         if i not in axes)),
                     axes, x.rank, keepdims)
    if axes is None:
        axes = (x.rank - 1,) if x.rank else ()
    return Prim(f.name, (x, g), (axes,), x.shape)


@lru_cache(maxsize=None)
def _definition_body(name: str, body: str, origin: str) -> ast.Expr:
    try:
        program = parse(body)
    except ParseError as e:
        raise RuleError(f"{origin}: the definition of {name} does not parse: {e.message}",
                        e.span) from None
    if len(program.statements) != 1 or not isinstance(program.statements[0], ast.Expr):
        raise RuleError(f"{origin}: the definition of {name} must be one expression")
    return program.statements[0]


def positional(call: ast.Call, f) -> ast.Call:
    """`call` of definition `f` with its tensors given by keyword (`elu(x=v)`, as Python and
    JAX take them) moved to their places among the positional arguments."""
    named = {k: v for k, v in call.kwargs if k in f.params}
    if not named:
        return call
    args = list(call.args)
    for k, p in enumerate(f.params):
        if p not in named:
            continue
        if k < len(args):
            raise ParseError(f"{f.name}() got {p} twice, by position and by keyword",
                             named[p].span or call.span)
        if k > len(args):
            raise ParseError(f"{f.name}() is missing {f.params[len(args)]}: give the tensors "
                             f"before {p} by position, or each by keyword", call.span)
        args.append(named[p])
    rest = tuple((k, v) for k, v in call.kwargs if k not in f.params)
    return ast.Call(call.func, tuple(args), rest, span=call.span, func_span=call.func_span)


def _expand_definition(call, f, args, scope) -> Node:
    from .lower import Scope, lower_expr
    call = positional(call, f)
    if not f.keywords:
        _no_keywords(call)
    _arity(call, f.arity, f.arity + len(f.keywords))
    depth = getattr(scope, "depth", 0) + 1
    if depth > MAX_DEFINITION_DEPTH:
        raise RuleError(f"{f.origin}: the definition of {f.name} expands without end",
                        call.span)
    inner = Scope({}, scope.rules)
    inner.depth = depth
    inner.bound = dict(zip(f.params, args))
    body = _definition_body(f.name, f.body, f.origin)
    if f.keywords:
        body = _with_keywords(call, f, args[f.arity:], body, inner, scope)
    try:
        return lower_expr(body, inner)
    except UnknownNameError as e:
        raise RuleError(f"{f.origin}: in the definition of {f.name}: {e.message}") from None


def _literal(expr: ast.Expr) -> bool:
    """Whether `expr` is a constant as written: a number (negated too), None, True, False, a
    string, or a tuple of them. Such a value of a definition's parameter with a default is put
    into its body as written, where it may be an axis or a keyword's value."""
    while isinstance(expr, ast.UnaryOp):
        expr = expr.operand
    if isinstance(expr, ast.Tuple):
        return all(_literal(item) for item in expr.items)
    return isinstance(expr, (ast.Number, ast.NoneLit, ast.String)) or \
        isinstance(expr, ast.Name) and expr.id in ("True", "False")


@lru_cache(maxsize=None)
def _default_value(text: str) -> ast.Expr:
    # (without the span of its own one-word text: an error about it is about the call)
    return dataclasses.replace(parse(text).statements[0], span=None)


def _check_value(f, key: str, default: str, value: ast.Expr, call: ast.Call) -> None:
    """A value given to a parameter with a default takes what the default is: True or False
    for a flag (keepdims), a constant for None (an axis), no flag for a number; refused at
    the caller's text, not inside the definition's body."""
    from .lower import text_of
    flag = isinstance(value, ast.Name) and value.id in ("True", "False")
    if default in ("True", "False"):
        wrong = None if flag else "must be True or False"
    elif default == "None":
        wrong = None if _literal(value) else "takes a constant (None, an integer or a tuple of " \
            "them)"
    else:  # (None too: an integer default may be an axis, and None every axis)
        wrong = "takes a number or a tensor" if flag else None
    if wrong:
        signature = ", ".join([*f.params, *(f"{k}={v}" for k, v in f.keywords)])
        raise ParseError(f"{f.name}(): {key} {wrong}, got {text_of(value)}",
                         value.span or call.span, hint=f"{f.name}({signature})")


def _with_keywords(call, f, tensors: list, body: ast.Expr, inner, scope) -> ast.Expr:
    """The body of definition `f` with its parameters that have defaults given their values
    (by position or keyword, else the default): a constant is put into the body as written
    (`amax(x, axis=1)`: `max(x, axis=1)`), a tensor expression bound in `inner` as a tensor
    parameter is."""
    from .lower import lower_expr
    names = [k for k, _ in f.keywords]
    defaults = dict(f.keywords)
    given: dict = {}
    tensors = iter(tensors)
    for k, a in enumerate(call.args[f.arity:]):
        _check_value(f, names[k], defaults[names[k]], a, call)
        given[names[k]] = a if _literal(a) else next(tensors)
    for key, value in call.kwargs:
        if key not in names:
            takes = _listed([f"{k}=" for k in (*f.params, *names)])
            raise ParseError(f"{f.name}() got an unexpected keyword argument '{key}'",
                             value.span or call.span, hint=f"{f.name} takes {takes}")
        if key in given:
            raise ParseError(f"{f.name}() got {key} twice, by position and by keyword",
                             value.span or call.span)
        _check_value(f, key, defaults[key], value, call)
        given[key] = value if _literal(value) else lower_expr(value, scope)
    constants = {}
    for key, default in f.keywords:
        value = given.get(key, None)
        if value is None:
            value = _default_value(default)
        if isinstance(value, ast.Expr):
            constants[key] = value
        else:
            inner.bound[key] = value
    return _substituted(body, constants)


def _substituted(expr, values: dict):
    """`expr` (a syntax tree, or a tuple of them) with each name of `values` replaced by its
    value; the parts without one are the same objects."""
    if isinstance(expr, ast.Name):
        return values.get(expr.id, expr)
    if isinstance(expr, tuple):
        items = tuple(_substituted(item, values) for item in expr)
        return expr if all(a is b for a, b in zip(items, expr)) else items
    if not isinstance(expr, ast.Expr):
        return expr
    changed = {}
    for field in dataclasses.fields(expr):
        if field.name in ("span", "func_span"):
            continue
        old = getattr(expr, field.name)
        new = _substituted(old, values)
        if new is not old:
            changed[field.name] = new
    return dataclasses.replace(expr, **changed) if changed else expr
