"""Stage 2: syntax tree -> indexed Einstein IR, with shapes checked on the way.

Lowering walks the tree without recursion (an unrolled network built in a Python loop can be
thousands of nodes deep) and memoizes on node identity, so a shared subtree is lowered once and
becomes one IR node.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..errors import EinderivError, ParseError, ShapeError, UnknownNameError, did_you_mean
from ..ir import build
from ..ir.dims import MAX_RANK, RANK_HINT, Dim, names_in, show_shape
from ..ir.nodes import Const, Node, Unit, Var
from ..parse import ast
from ..parse.parser import check_name
from ..parse.unparse import unparse
from ..rulebook import RuleBook, default_rulebook
from . import calls, dimensions, linear


@dataclass
class Lowered:
    """A lowered program: its output node, its input variables, and the names the user gave."""

    root: Node
    variables: dict[str, Var]
    names: dict[Node, str] = field(default_factory=dict)  # bound temporaries, for printing
    output_name: str | None = None
    source: str = ""
    declared: dict = field(default_factory=dict)  # every declared variable -> shape
    bound: dict = field(default_factory=dict)  # every bound temporary -> node
    sizes: dict = field(default_factory=dict)  # dimension names fixed to integers
    # The picks the text writes at positions of the sizes (`x[n - 2]`, `x[1:][-1]`), as unit
    # vectors to check against each call's sizes as numpy's IndexError would: the delta algebra
    # may compose a pick with the windows around it into another unit vector (`diag(x)[1:][n -
    # 2]` is x's entry n - 1), which is in range at sizes where the pick is not (n = 1).
    picks: tuple = ()


class Scope:
    """Names visible while lowering: declared variables, bound temporaries, dimension names."""

    def __init__(self, declared: dict[str, tuple[Dim, ...]], rules: RuleBook,
                 sizes: dict[str, int] | None = None):
        self.declared = declared
        self.bound: dict[str, Node] = {}
        self.rules = rules
        self.used: dict[str, Var] = {}
        self.sizes = sizes or {}  # dimension names fixed to integers when the result is built
        self.picks: list = []  # unit vectors of the picks written at positions of the sizes

    def lookup(self, name: str, span) -> Node:
        if name in self.bound:
            return self.bound[name]
        if name in self.declared:
            var = Var(name, self.declared[name])
            self.used[name] = var
            return var
        known = set(self.bound) | set(self.declared)
        hint = did_you_mean(name, known)
        if hint is None:
            hint = f"declare it first, e.g. '{name}: [n]', or pass shapes={{'{name}': ...}}"
        raise UnknownNameError(f"unknown name '{name}'", span, hint)

    def dims(self) -> set[str]:
        """The dimension names of the declared shapes, those inside products too (`n` of a
        `y: [2 * n]`)."""
        return {n for shape in self.declared.values() for d in shape for n in names_in(d)}


def lower(program: ast.Program, shapes: dict | None = None, rules: RuleBook | None = None,
          sizes: dict | None = None) -> Lowered:
    """`sizes`: dimension names fixed to integers (`{"k": 3}`), in the declared shapes and
    wherever the program writes a dimension (`eye(k)`)."""
    rules = rules or default_rulebook()
    sizes = check_sizes(sizes)
    declared = {name: declared_shape(name, dims, None, sizes)
                for name, dims in (shapes or {}).items()}
    spans: dict = {}
    scope = Scope(declared, rules, sizes)
    names: dict[Node, str] = {}
    root, output_name = None, None
    for stmt in program.statements:
        if isinstance(stmt, ast.Decl):
            shape = declared_shape(stmt.name, stmt.dims, stmt.span, sizes)
            if stmt.name in declared and declared[stmt.name] != shape:
                raise ShapeError(f"'{stmt.name}' is declared as {show_shape(shape)} but was "
                                 f"given as {show_shape(declared[stmt.name])}", stmt.span)
            declared[stmt.name] = shape
            spans.setdefault(stmt.name, stmt.span)
        elif isinstance(stmt, ast.Assign):
            node = lower_expr(stmt.value, scope)
            scope.bound[stmt.name] = node
            if not isinstance(node, (Var, Const)):
                names.setdefault(node, stmt.name)
            root, output_name = node, stmt.name
        else:
            root, output_name = lower_expr(stmt, scope), None
    if root is None:
        last = program.statements[-1]
        raise ParseError("the program has no output: it only declares shapes",
                         getattr(last, "span", None),
                         hint="end it with an expression, e.g. 'sum(x * x)'")
    dimensions.unreadable(declared, spans)  # every size follows from the arrays passed
    return Lowered(root, dict(scope.used), names, output_name, program.source,
                   dict(declared), dict(scope.bound), sizes, tuple(dict.fromkeys(scope.picks)))


def declared_shape(name: str, dims, span=None, sizes=None) -> tuple[Dim, ...]:
    """A declared shape: ints (a numpy integer, an array's shape entry, is one), names and
    dimension expressions (`"n - 1"`, `"2 * n"`; syntax trees from an inline declaration)."""
    check_name(name, "shapes: the variable", ShapeError)
    if isinstance(dims, (str, numbers.Integral)) and not isinstance(dims, bool):
        dims = (dims,)
    try:
        shape = tuple(dimensions.declared(d, name, span, sizes) for d in dims)
    except TypeError:
        raise ShapeError(f"the shape of '{name}' must be a tuple of ints and dimension names, "
                         f"got {dims!r}", span) from None
    if len(shape) > MAX_RANK:
        raise ShapeError(f"the shape of '{name}' has {len(shape)} axes, more than the "
                         f"{MAX_RANK} an array may have", span, RANK_HINT)
    return shape


def check_sizes(sizes) -> dict[str, int]:
    """`sizes` (dimension name -> int, fixed when the result is built), checked."""
    if sizes is None:
        return {}
    if not isinstance(sizes, dict):
        raise ShapeError(f"sizes must be a dict of dimension name -> int, got "
                         f"{type(sizes).__name__}")
    checked = {}
    for name, size in sizes.items():
        check_name(name, "sizes: the dimension", ShapeError)
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or \
                not 0 <= size < EXACT_INTEGERS:
            raise ShapeError(f"sizes gives dimension '{name}' the size {size!r}: a size is an "
                             f"integer from 0 to {EXACT_INTEGERS - 1}")
        checked[name] = int(size)
    return checked


def text_of(expr: ast.Expr) -> str:
    """The operand as the user wrote it, for error messages."""
    if expr.span is not None:
        text = expr.span.source[expr.span.start:min(expr.span.end, expr.span.start + 41)]
    else:
        text = unparse(expr, limit=41)
    return text if len(text) <= 40 else text[:37] + "..."


class LazyText:
    """`text_of(expr)`, computed only when an error message prints it: lowering names both
    operands of every operation, and unparsing them eagerly was most of its time."""

    __slots__ = ("expr",)

    def __init__(self, expr: ast.Expr):
        self.expr = expr

    def __str__(self) -> str:
        return text_of(self.expr)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def lower_expr(root: ast.Expr, scope: Scope, done: dict | None = None) -> Node:
    """Lower one expression, children first, with an explicit stack. `done` (id of a syntax
    node -> its IR), when given, is filled in with every subexpression's node: the LaTeX
    printer reads their shapes."""
    done = {} if done is None else done
    stack = [(root, None)]
    while stack:
        expr, deps = stack.pop()
        if id(expr) in done:
            continue
        if deps is None:  # first visit: its tensor children first, then itself with them
            deps = _tensor_children(expr, scope)
            stack.append((expr, deps))
            stack.extend([(d, None) for d in deps if id(d) not in done])
            continue
        try:
            node = _lower_one(expr, [done[id(d)] for d in deps], scope)
        except EinderivError as e:
            if e.span is None and expr.span is not None:
                raise type(e)(e.message, expr.span, e.hint) from None
            raise
        if len(node.shape) > MAX_RANK:  # refused here, where the text is, not inside numpy
            raise ShapeError(f"{LazyText(expr)} has {len(node.shape)} axes, more than the "
                             f"{MAX_RANK} an array may have", expr.span, RANK_HINT)
        done[id(expr)] = node
    return done[id(root)]


def _tensor_children(expr: ast.Expr, scope: Scope) -> list[ast.Expr]:
    if isinstance(expr, ast.Call):
        return calls.tensor_args(expr, scope)
    return list(expr.children())


def _lower_one(expr: ast.Expr, args: list[Node], scope: Scope) -> Node:
    if isinstance(expr, ast.Number):
        return Const(expr.value)
    if isinstance(expr, ast.Name):
        return scope.lookup(expr.id, expr.span)
    if isinstance(expr, ast.BinOp):
        a, b = args
        names = (LazyText(expr.left), LazyText(expr.right))
        if expr.op == "+":
            return build.binary_add(a, b, 1.0, names)
        if expr.op == "-":
            return build.binary_add(a, b, -1.0, names)
        if expr.op == "*":
            return build.multiply(a, b, names)
        if expr.op == "@":
            return build.matmul(a, b, names)
        if expr.op in ast.COMPARISONS:  # a mask: the rule table's `greater(a, b)` for `a > b`
            return build.elementwise(ast.COMPARISONS[expr.op], [a, b], list(names))
        fn = {"/": "div", "**": "pow", "//": "floor_divide"}[expr.op]
        return build.elementwise(fn, [a, b], list(names))
    if isinstance(expr, ast.UnaryOp):
        return build.scale(-1.0, args[0]) if expr.op == "-" else args[0]
    if isinstance(expr, ast.Attribute):
        if expr.attr == "mT":  # numpy's matrix transpose: the last two axes swapped
            (x,) = args
            if x.rank < 2:
                raise ShapeError(f"cannot take .mT of {LazyText(expr.operand)} "
                                 f"{show_shape(x.shape)}: it needs two axes or more",
                                 expr.span, hint="a vector's .T is itself")
            labels = tuple(range(x.rank))
            return build.contract(labels[:-2] + labels[:-3:-1], [(x, labels)])
        if expr.attr != "T":
            raise ParseError(f"unknown attribute '.{expr.attr}'", expr.span,
                             hint="the attributes are .T (every axis reversed) and .mT (the "
                                  "last two axes swapped)")
        return build.transpose(args[0])
    if isinstance(expr, ast.Index):
        return _index(args[0], expr.items, scope)
    if isinstance(expr, ast.Call):
        return calls.lower_call(expr, args, scope)
    if isinstance(expr, (ast.String, ast.Tuple, ast.NoneLit, ast.Slice)):
        what = {ast.String: "a string", ast.Tuple: "a tuple", ast.NoneLit: "None",
                ast.Slice: "a slice"}[type(expr)]
        raise ParseError(f"{what} is not a tensor expression", expr.span)
    raise ParseError(f"cannot lower {type(expr).__name__}", expr.span)


# Integers below this are exact as floats, as the parser reads every literal; a larger one could
# stand for another integer than the one written.
EXACT_INTEGERS = 2**53


def constant_int(expr: ast.Expr, what: str) -> int:
    """An integer literal, possibly negated (axes, indices, slice bounds)."""
    sign = 1
    node = expr
    while isinstance(node, ast.UnaryOp):
        sign = -sign if node.op == "-" else sign
        node = node.operand
    if isinstance(node, ast.Number) and abs(node.value) < EXACT_INTEGERS and \
            node.value == int(node.value):
        return sign * int(node.value)
    raise ParseError(f"{what} must be an integer constant", expr.span)


def _index(x: Node, items, scope) -> Node:
    """numpy's basic indexing, steps included: a slice with a negative step reverses its axis
    first (`x[::-1]`, a linear map) and is then a slice with a positive one, and a step past 1
    takes every k-th entry of the slice after it (`x[1::2]`)."""
    basic, strides, axis, out = [], [], 0, 0
    for item in items:
        if not isinstance(item, ast.Slice) or item.step is None:
            basic.append(_index_item(item, scope))
        else:
            k = constant_int(item.step, "a slice step")
            if k == 0:
                raise ShapeError("a slice step cannot be zero", item.step.span)
            lo = None if item.lo is None else _bound(item.lo, scope)
            hi = None if item.hi is None else _bound(item.hi, scope)
            if k < 0 and axis < x.rank:
                x = linear.flip(x, axis)
                lo, hi = _reversed_bounds(lo, hi, k, x.shape[axis], item)
            basic.append(("slice", lo, hi))
            if abs(k) != 1:
                strides.append((out, abs(k)))
        kind = basic[-1][0]
        axis += kind != "none"
        out += kind != "int"
    axis = 0
    for item in basic:  # each pick whose bounds depend on the sizes, checked at each call
        if item[0] == "int" and axis < x.rank and not (
                x.shape[axis].is_concrete and not isinstance(item[1], Dim)):
            scope.picks.append(Unit(x.shape[axis], build.position(item[1], x.shape[axis])))
        axis += item[0] != "none"
    node = build.index(x, basic)
    for at, k in strides:
        node = linear.stride(node, at, k)
    return node


def _reversed_bounds(lo, hi, k: int, dim: Dim, item):
    """The bounds lo:hi of a slice with the negative step k, as bounds of the reversed axis
    (entry i of the axis is entry dim - 1 - i reversed) to take with the step -k."""
    if dim.is_concrete:
        if isinstance(lo, Dim) or isinstance(hi, Dim):
            raise ShapeError("a slice with a negative step takes integer bounds", item.span)
        start, stop, _ = slice(lo, hi, k).indices(dim.offset)
        count = len(range(start, stop, k))
        first = dim.offset - 1 - start
        return (0, 0) if count == 0 else (first, first + (count - 1) * -k + 1)
    if isinstance(lo, Dim) or isinstance(hi, Dim):
        raise ShapeError("a slice with a negative step takes integer bounds (counted from the "
                         "end where negative)", item.span,
                         hint="reverse first, then slice: x[::-1][:m]")
    # lo (the first entry taken) is at dim - 1 - lo reversed; the entries stop before hi.
    first = None if lo is None else (Dim(None, -1 - lo) if lo < 0 else dim - (1 + lo))
    last = None if hi is None else (Dim(None, -1 - hi) if hi < 0 else dim - (1 + hi))
    return first, last


def _index_item(item, scope):
    if isinstance(item, ast.NoneLit):
        return ("none",)
    if isinstance(item, ast.Slice):
        lo = None if item.lo is None else _bound(item.lo, scope)
        hi = None if item.hi is None else _bound(item.hi, scope)
        return ("slice", lo, hi)
    try:
        return ("int", constant_int(item, "an index"))
    except ParseError:
        # a dimension name plus or minus an integer, as a slice bound (`x[n - 2]`): the
        # printed formulas pick so where a position depends on the sizes
        if not _names_a_dimension(item, scope):
            raise
    return ("int", _bound(item, scope))


def _names_a_dimension(expr: ast.Expr, scope) -> bool:
    """Whether `expr` is a name, or one plus or minus an integer (`n - 2`), that is no variable
    and no temporary: a dimension, or an unknown name (which `_bound` says is one, with the
    hint to give its size)."""
    if isinstance(expr, ast.BinOp) and expr.op in "+-":
        expr = expr.left
    return isinstance(expr, ast.Name) and (expr.id in scope.sizes or (
        expr.id not in scope.bound and expr.id not in scope.declared))


def _bound(expr: ast.Expr, scope):
    """A slice bound: an integer, or a dimension name plus or minus an integer (`x[:m]`)."""
    if isinstance(expr, ast.Name) and expr.id in scope.sizes:
        return scope.sizes[expr.id]
    if isinstance(expr, ast.Name) and expr.id in scope.dims() and expr.id not in scope.bound \
            and expr.id not in scope.declared:
        return Dim(expr.id)
    if isinstance(expr, ast.BinOp) and expr.op in "+-" and isinstance(expr.left, ast.Name):
        base = _bound(expr.left, scope)
        if isinstance(base, Dim):
            k = constant_int(expr.right, "a slice bound")
            return base + (k if expr.op == "+" else -k)
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "//") or \
            isinstance(expr, ast.Name) and expr.id not in scope.bound and \
            expr.id not in scope.declared:  # `x[:m * n - 1]`; an unknown name says so
        bound = dimensions.dimension(expr, scope, "a slice bound")
        return bound.offset if bound.is_concrete else bound
    return constant_int(expr, "a slice bound")
