"""Expressions built from Python: `einderiv.var` and the functions in `einderiv.fn`.

Operators build the same syntax tree the parser builds, so a Python loop can unroll a recurrent
network and hand it to any API that takes a source string:

>>> import einderiv
>>> from einderiv import fn
>>> W = einderiv.var("W", ("h", "h")); x = einderiv.var("x", ("h",))
>>> h = x
>>> for _ in range(3):
...     h = fn.tanh(W @ h)
>>> h
tanh(W @ tanh(W @ tanh(W @ x)))
"""
from __future__ import annotations

import itertools
import math
import numbers

from .errors import EinderivError, ShapeError, UnknownNameError, did_you_mean
from .parse import ast, parse
from .parse.parser import MAX_OPERATIONS, MAX_PROGRAM_CHARS, check_name
from .parse.unparse import unparse


class SymbolicTypeError(EinderivError, TypeError):
    """A symbolic tensor used where Python or numpy needs values: iterated, measured with len,
    converted to a number or an array, given to a numpy function, or to an operator the
    language lacks (%, divmod). A `TypeError` too, as Python expects."""


# numpy ufuncs that are operators of the language, and the functions of `einderiv.fn` that
# other ufuncs stand for when their names differ.
_UFUNC_OPERATORS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/",
                    "true_divide": "/", "floor_divide": "//", "matmul": "@", "power": "**",
                    **{f: op for op, f in ast.COMPARISONS.items()}}
_UFUNC_FUNCTIONS = {"absolute": "abs", "float_power": "pow", "fmax": "maximum",
                    "fmin": "minimum", "trace": "tr"}


class Tensor:
    """A symbolic tensor: a syntax tree plus the shapes of the variables it uses."""

    __slots__ = ("node", "declarations")

    def __init__(self, node: ast.Expr, declarations: dict):
        self.node = node
        self.declarations = declarations

    def __repr__(self) -> str:
        return unparse(self.node)

    def __bool__(self):
        raise EinderivError("a symbolic tensor has no truth value")

    # Without __iter__, Python iterates through __getitem__ with 0, 1, 2, ... and never stops
    # (a symbolic index has no end): `for row in X` would build tensors until memory runs out.
    def __iter__(self):
        raise SymbolicTypeError(f"cannot iterate over the symbolic tensor {_short(self)}",
                                hint="index it instead, e.g. X[i] for i in range(n)")

    def __contains__(self, item):  # else Python's `in` reports a plain "not iterable"
        self.__iter__()

    def __len__(self):
        raise SymbolicTypeError(f"the symbolic tensor {_short(self)} has no len(): its "
                                f"dimensions are bound when it is called",
                                hint="use einderiv.fn.size(n) for a dimension's size")

    def __array__(self, *args, **kwargs):
        raise SymbolicTypeError(f"the symbolic tensor {_short(self)} has no values to make an "
                                "array of",
                                hint="use the functions of einderiv.fn on symbolic tensors; "
                                     "compile the expression and call it with arrays for "
                                     "values")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # numpy hands every ufunc with a Tensor operand here: `ndarray + Tensor` and
        # `np.float64(2) * Tensor` as np.add / np.multiply, `np.exp(Tensor)` as np.exp.
        op = _UFUNC_OPERATORS.get(ufunc.__name__)
        # A comparison with a numpy scalar comes as a 0-d array: the number it holds.
        inputs = [i.item() if not isinstance(i, Tensor) and getattr(i, "shape", None) == ()
                  else i for i in inputs]
        if op and method == "__call__" and len(inputs) == 2 and not kwargs:
            return _binary(op, *inputs)  # a number combines; an ndarray is a clear error
        raise _numpy_function(ufunc.__name__, op)

    def __array_function__(self, func, types, args, kwargs):
        raise _numpy_function(func.__name__, None)

    # operators
    def __add__(self, other): return _binary("+", self, other)
    def __radd__(self, other): return _binary("+", other, self)
    def __sub__(self, other): return _binary("-", self, other)
    def __rsub__(self, other): return _binary("-", other, self)
    def __mul__(self, other): return _binary("*", self, other)
    def __rmul__(self, other): return _binary("*", other, self)
    def __truediv__(self, other): return _binary("/", self, other)
    def __rtruediv__(self, other): return _binary("/", other, self)
    def __matmul__(self, other): return _binary("@", self, other)
    def __rmatmul__(self, other): return _binary("@", other, self)
    def __pow__(self, other): return _binary("**", self, other)
    def __rpow__(self, other): return _binary("**", other, self)
    def __neg__(self): return Tensor(ast.UnaryOp("-", self.node), self.declarations)
    def __pos__(self): return self
    def __abs__(self): return call("abs", self)
    def __floordiv__(self, other): return _binary("//", self, other)
    def __rfloordiv__(self, other): return _binary("//", other, self)

    # Comparisons are masks of the language (1 where it holds, 0 elsewhere), as numpy's and
    # JAX's arrays compare entry by entry. So is `==` with a tensor or a number (anything else
    # is Python's identity, `x == None` False), and a tensor hashes by identity.
    def __lt__(self, other): return _binary("<", self, other)
    def __le__(self, other): return _binary("<=", self, other)
    def __gt__(self, other): return _binary(">", self, other)
    def __ge__(self, other): return _binary(">=", self, other)
    def __eq__(self, other): return _binary("==", self, other) if _comparable(other) \
        else NotImplemented
    def __ne__(self, other): return _binary("!=", self, other) if _comparable(other) \
        else NotImplemented
    __hash__ = object.__hash__

    # What Python would do with values: convert, divide with a remainder. A tensor has no values
    # until the expression is called, and the language has no such operators; each is a clear
    # error (a TypeError too, as Python's own would be) naming what to use instead.
    def __float__(self): raise _conversion("float()", self)
    def __int__(self): raise _conversion("int()", self)
    def __complex__(self): raise _conversion("complex()", self)
    def __index__(self): raise _conversion("use as an index", self)
    def __round__(self, ndigits=None): raise _conversion("round()", self)
    def __trunc__(self): raise _conversion("math.trunc()", self)
    def __floor__(self): raise _conversion("math.floor()", self)
    def __ceil__(self): raise _conversion("math.ceil()", self)
    def __mod__(self, other): raise _no_operator("%")
    def __rmod__(self, other): raise _no_operator("%")
    def __divmod__(self, other): raise _no_operator("divmod")
    def __rdivmod__(self, other): raise _no_operator("divmod")

    @property
    def T(self) -> "Tensor":
        return Tensor(ast.Attribute(self.node, "T"), self.declarations)

    # numpy's and JAX's method spellings of the language's reductions
    def sum(self, axis=None) -> "Tensor":
        """`sum(self)` over every entry, or `sum(self, axis=axis)`, as numpy's `x.sum()`."""
        return call("sum", self) if axis is None else call("sum", self, axis=axis)

    def mean(self, axis=None) -> "Tensor":
        """`mean(self)` over every entry, or `mean(self, axis=axis)`, as numpy's `x.mean()`."""
        return call("mean", self) if axis is None else call("mean", self, axis=axis)

    @property
    def shape(self) -> tuple:
        """The dimensions: ints and dimension names, as declared (`("n", "d")`); of an
        expression, its shape as the expression language works it out (`("n", "n-1")`)."""
        if isinstance(self.node, ast.Name) and self.node.id in self.declarations:
            return tuple(self.declarations[self.node.id])
        from .api import lower_source  # the api builds on this module
        root = lower_source(self, None).root
        return tuple(d.offset if d.name is None else str(d) for d in root.shape)

    def _repr_latex_(self) -> str | None:
        """The expression as a notebook shows it: its compiled formula in LaTeX (None, so that
        the notebook shows the repr, when it does not compile)."""
        from .api import compile
        try:
            return compile(self)._repr_latex_()
        except EinderivError:
            return None

    # Pickled and copied as program text (`program_text`), never as a syntax tree: a
    # Python-built tree can be deep (a recursion error) and share subtrees.
    def __reduce__(self):
        return (_from_program_text, (program_text(self.node), dict(self.declarations)))

    def __getitem__(self, key) -> "Tensor":
        items = key if isinstance(key, tuple) else (key,)
        return Tensor(ast.Index(self.node, tuple(_index_item(i) for i in items)),
                      self.declarations)


def var(name: str, shape=()) -> Tensor:
    """A symbolic input tensor: `var("X", ("n", "d"))`, `var("c", ())` for a scalar.

    Names (of the variable and of its dimensions) are names of the expression language: ASCII
    letters, digits and '_'. A size may be an int or a numpy integer, or a dimension expression
    (`var("y", ("n - 1",))`, `("2 * n",)`), kept in its canonical text (`"n-1"`).
    """
    check_name(name, "einderiv.var: the variable name")
    if isinstance(shape, (str, numbers.Integral)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        entries = tuple(shape)
    except TypeError:
        raise ShapeError(f"the shape of '{name}' must be a tuple of ints and dimension names "
                         f"(() for a scalar), got {shape!r}") from None
    dims = []
    for d in entries:
        if isinstance(d, numbers.Integral) and not isinstance(d, bool):
            dims.append(int(d))  # np.int64(3), e.g. from an array's .shape, is the size 3
        elif isinstance(d, str) and d.isidentifier():
            dims.append(check_name(d, f"the shape of '{name}': dimension", ShapeError))
        elif isinstance(d, str):
            dims.append(_declared_text(d, name))  # `n - 1`, `2 * n`
        elif isinstance(d, numbers.Real) and not isinstance(d, bool):
            from .lower.dimensions import INTEGER_HINT  # numpy's shapes take ints only
            raise ShapeError(f"the shape of '{name}': a dimension is an integer, not {d!r}",
                             hint=INTEGER_HINT)
        else:
            raise ShapeError(f"the shape of '{name}' must hold ints and dimension names, "
                             f"got {shape!r}")
    from .ir.dims import MAX_RANK, RANK_HINT
    if len(dims) > MAX_RANK:  # refused where it is made, as a declared shape is
        raise ShapeError(f"the shape of '{name}' has {len(dims)} axes, more than the "
                         f"{MAX_RANK} an array may have", hint=RANK_HINT)
    return Tensor(ast.Name(name), {name: _Shape(dims)})


class _Shape(tuple):
    """A variable's shape in `Tensor.declarations`, numbered in the order the variables were
    made with `einderiv.var`: an expression lists its variables in that order (the order
    positional arrays bind in), not in the order they appear in it (`-y * (X @ w)`)."""

    _made = itertools.count()  # next() of a count is atomic: threads may make vars at once

    def __new__(cls, dims):
        shape = super().__new__(cls, dims)
        shape.made = next(cls._made)
        return shape

    def __reduce__(self):  # made again on load, in the order of the dict that holds it
        return (_Shape, (tuple(self),))


def _numpy_function(numpy_name: str, op: str | None) -> SymbolicTypeError:
    name = _UFUNC_FUNCTIONS.get(numpy_name, numpy_name)
    if op:
        hint = f"use the operator {op}"
    elif name in _Functions._names():
        hint = f"use einderiv.fn.{name}"
    else:
        hint = f"einderiv.fn has no {name}: dir(einderiv.fn) lists the functions"
    return SymbolicTypeError(f"numpy's {numpy_name} cannot take a symbolic tensor", hint=hint)


def _conversion(to: str, t: Tensor) -> SymbolicTypeError:
    return SymbolicTypeError(f"the symbolic tensor {_short(t)} has no value for {to}",
                             hint="compile the expression and call it with arrays for values")


def _no_operator(op: str) -> SymbolicTypeError:
    return SymbolicTypeError(f"the expression language has no {op} on tensors",
                             hint="its operators are + - * / // @ **, unary - and the "
                                  "comparisons < <= > >= == !=; "
                                  "dir(einderiv.fn) lists its functions")


def _short(t: Tensor) -> str:
    text = unparse(t.node, limit=41)
    return text if len(text) <= 40 else text[:37] + "..."


def _comparable(x) -> bool:
    return isinstance(x, Tensor) or isinstance(x, numbers.Real) and not isinstance(x, bool)


def _operand(x):
    if isinstance(x, Tensor):
        return x.node, x.declarations
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        try:
            return _number(float(x)), {}
        except OverflowError:  # 10 ** 400: infinite, as the language reads the literal 1e400
            return _number(math.inf if x > 0 else -math.inf), {}
    raise EinderivError(f"cannot combine a symbolic tensor with {type(x).__name__}",
                        hint="use einderiv.var for every tensor input")


def _number(v: float) -> ast.Expr:
    return ast.UnaryOp("-", ast.Number(-v)) if v < 0 else ast.Number(v)


def _merge(a: dict, b: dict) -> dict:
    if not b or a is b:
        return a
    if not a:
        return b
    merged = dict(a)
    for name, shape in b.items():
        if merged.setdefault(name, shape) != shape:
            raise ShapeError(f"variable '{name}' is used with two shapes: {tuple(merged[name])} "
                             f"and {tuple(shape)}")
    if len(merged) > len(a):  # a variable new to `a`: in the order the variables were made
        merged = dict(sorted(merged.items(), key=lambda item: getattr(item[1], "made", -1)))
    return merged


def _binary(op: str, left, right) -> Tensor:
    l, dl = _operand(left)
    r, dr = _operand(right)
    return Tensor(ast.BinOp(op, l, r), _merge(dl, dr))


def _index_item(item) -> ast.Expr:
    if item is None:
        return ast.NoneLit()
    if isinstance(item, slice):  # with a step too: x[::2], x[::-1] (docs/language.md)
        return ast.Slice(*(None if v is None else _integer(v)
                           for v in (item.start, item.stop, item.step)))
    return _integer(item)


def _integer(v, what: str = "indices must be integers, None or slices") -> ast.Expr:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise EinderivError(f"{what}, got {v!r}")
    return _number(float(v))


def _axis(axis) -> ast.Expr:
    what = "an axis must be an integer or a tuple of integers"
    if isinstance(axis, tuple):
        return ast.Tuple(tuple(_integer(a, what) for a in axis))
    return _integer(axis, what)


DIMENSION_FUNCTIONS = {"eye", "ones", "zeros", "size"}


def _declared_text(text: str, owner: str) -> str:
    """A dimension expression of a declared shape (`"n - 1"`), in its canonical text (`"n-1"`,
    as shapes print it): two spellings of one dimension are one shape."""
    from .lower.dimensions import declared
    d = declared(text, owner)
    return d.offset if d.is_concrete else str(d)


def _dimension_argument(text: str, what: str) -> ast.Expr:
    """A dimension given as text (`ones("n")`, `reshape(x, ("n * m",))`): a name, or the
    syntax tree of a dimension expression (`"n - 1"`, `"2 * n"`), which lowering checks."""
    if text.isidentifier():
        return ast.Name(check_name(text, what))
    from .lower.dimensions import dimension_tree
    return dimension_tree(text, what)


# The positional arguments the language takes as a string literal: einsum's subscripts and
# norm's order ('fro'). A string anywhere else is a dimension.
_STRING_ARGUMENTS = {("einsum", 0), ("norm", 1)}


def _argument(a, name: str, position: int | None):
    """Positional argument `position` of `fn.name` (None: an item of a tuple): a tensor or a
    number; a tuple (axes, pad widths, reshape sizes, the tensors of `concatenate`) item by
    item, a string in it a dimension; a string the subscripts of `einsum` or the order of
    `norm`, else a dimension (`ones("n")`)."""
    if _is_bool(a):  # keepdims by position (`fn.amax(X, 1, True)`), as the text takes it
        return ast.Name("True" if a else "False"), {}
    if isinstance(a, str) and (name, position) in _STRING_ARGUMENTS:
        return ast.String(a), {}
    if isinstance(a, str):
        return _dimension_argument(a, f"einderiv.fn.{name}: the dimension"), {}
    if isinstance(a, (tuple, list)):
        items, decls = [], {}
        for item in a:
            node, d = _argument(item, name, None)
            items.append(node)
            decls = _merge(decls, d)
        return ast.Tuple(tuple(items)), decls
    return _operand(a)


def call(name: str, *args, **kwargs) -> Tensor:
    """Apply the language function `name` to symbolic (or numeric) arguments."""
    nodes, decls = [], {}
    for position, a in enumerate(args):
        node, d = _argument(a, name, position)
        nodes.append(node)
        decls = _merge(decls, d)
    keywords = []
    for k, v in kwargs.items():
        if isinstance(v, Tensor):  # a tensor given by keyword (`negative_slope=a`)
            node, d = _argument(v, name, None)
            decls = _merge(decls, d)
        else:
            node = _keyword(name, k, v)
        keywords.append((k, node))
    return Tensor(ast.Call(name, tuple(nodes), tuple(keywords)), decls)


def _is_bool(value) -> bool:
    """A Python or numpy bool (`np.bool_` is no `bool`, and numpy is not imported here)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and
                                       type(value).__name__ in ("bool", "bool_"))


def _keyword(name: str, key: str, value) -> ast.Expr:
    """The value of keyword `key` of `fn.name`, as the language writes it: None (`axis=None`:
    every axis, which for softmax is not the default last axis), True and False
    (`keepdims=True`), an axis or a tuple of them,
    and for the other keywords a string (`mode="same"`, `ord="fro"`), a tuple of integers
    (strides, paddings) or a number (`ord=math.inf`)."""
    if value is None:
        return ast.NoneLit()
    if _is_bool(value) and key == "keepdims":  # (a bool anywhere else is refused)
        return ast.Name("True" if value else "False")
    if isinstance(value, (tuple, list)) or key == "axis":
        return _axis(tuple(value) if isinstance(value, list) else value)
    if isinstance(value, str):
        return ast.String(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _operand(value)[0]
    raise EinderivError(f"einderiv.fn.{name}: {key}= takes a tensor, a string, None, an "
                        f"integer, a tuple of integers or a number (keepdims= True or False), "
                        f"got {type(value).__name__}")


class _Functions:
    """`einderiv.fn.NAME(...)` for every function of the language and of the rule tables."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        known = self._names()
        if name not in known:
            raise UnknownNameError(f"unknown function '{name}'",
                                   hint=did_you_mean(name, known))
        return lambda *args, **kwargs: call(name, *args, **kwargs)

    def __dir__(self):
        return sorted(self._names())

    # (rule book, its names): a program built term by term asks once per call, and a rule
    # book in force is frozen, so its names change only when another book is swapped in.
    _known: tuple = (None, frozenset())

    @classmethod
    def _names(cls) -> frozenset[str]:
        from .lower.calls import BUILTINS
        from .rulebook import default_rulebook
        rules = default_rulebook()
        book, names = cls._known
        if book is not rules or not rules.frozen:
            names = frozenset(BUILTINS) | {n for n in rules.functions
                                           if n not in ("div", "pow")} | {"pow"}
            cls._known = (rules, names)
        return names


fn = _Functions()


# A statement of `program_text` holds at most this many nodes of the tree (about 1 KB of text):
# far within the parser's limits on a statement's length and nesting, however deep the tree.
STATEMENT_NODES = 64


def _with_children(node: ast.Expr, new) -> ast.Expr:
    """`node` with each of its tensor operands (`node.children()`) replaced by `new(operand)`;
    indices, axes and einsum strings are kept."""
    if isinstance(node, ast.BinOp):
        return ast.BinOp(node.op, new(node.left), new(node.right))
    if isinstance(node, ast.UnaryOp):
        return ast.UnaryOp(node.op, new(node.operand))
    if isinstance(node, ast.Attribute):
        return ast.Attribute(new(node.operand), node.attr)
    if isinstance(node, ast.Index):
        return ast.Index(new(node.operand), node.items)
    if isinstance(node, ast.Call):
        tensors = {id(t) for t in node.children()}
        return ast.Call(node.func, tuple(new(a) if id(a) in tensors else a for a in node.args),
                        node.kwargs)
    return node


def program_text(node: ast.Expr) -> str:
    """`node` as a program of the language that `_from_program_text` reads back into the same
    tree: a subtree used more than once, and every STATEMENT_NODES nodes of a deep one, is a
    statement `_t0 = ...` of its own. The text is linear in the number of distinct nodes (the
    unparsed text of a tree that shares subtrees can be exponentially long)."""
    uses: dict[int, int] = {}
    order, stack = [], [(node, False)]
    while stack:  # children before parents, each distinct node once
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        uses[id(n)] = uses.get(id(n), 0) + 1
        if uses[id(n)] == 1:
            stack.append((n, True))
            stack.extend((c, False) for c in reversed(n.children()))
    taken = {n.id for n in order if isinstance(n, ast.Name)}
    prefix = "_t"
    while any(name.startswith(prefix) for name in taken):  # no variable or dimension is one
        prefix += "_"
    rebuilt: dict[int, tuple] = {}  # id -> (node with statements' names for operands, size)
    lines = []
    for n in order:
        size = 1 + sum(rebuilt[id(c)][1] for c in n.children())
        shallow = _with_children(n, lambda c: rebuilt[id(c)][0])
        if n.children() and n is not node and (uses[id(n)] > 1 or size > STATEMENT_NODES):
            name = f"{prefix}{len(lines)}"
            lines.append(f"{name} = {unparse(shallow, limit=None, max_depth=None)}")
            shallow, size = ast.Name(name), 1
        rebuilt[id(n)] = (shallow, size)
    lines.append(unparse(rebuilt[id(node)][0], limit=None, max_depth=None))
    text = "\n".join(lines)
    operations = sum(isinstance(n, _OPERATIONS) for n in order)
    if len(text) > MAX_PROGRAM_CHARS or operations > MAX_OPERATIONS:
        raise EinderivError(f"the expression is too large to write as a program: "
                            f"{operations:,} operations in {len(text):,} characters, the "
                            f"parser's limits are {MAX_OPERATIONS:,} and {MAX_PROGRAM_CHARS:,}")
    return text


_OPERATIONS = (ast.BinOp, ast.UnaryOp, ast.Attribute, ast.Index, ast.Call)  # as the parser counts


def _from_program_text(text: str, declarations: dict) -> Tensor:
    """The `Tensor` that `program_text` wrote: each statement's name replaced by its tree, so
    that a subtree used twice is one node again."""
    trees: dict[str, ast.Expr] = {}

    def tree(n):  # a statement is shallow (STATEMENT_NODES): recursion is safe
        if isinstance(n, ast.Name):
            return trees.get(n.id, n)
        return _with_children(n, tree)
    *statements, last = parse(text).statements
    for statement in statements:
        trees[statement.name] = tree(statement.value)
    return Tensor(tree(last), declarations)
