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

import numbers

from .errors import EinderivError, ShapeError, UnknownNameError, did_you_mean
from .parse import ast
from .parse.unparse import unparse


class Tensor:
    """A symbolic tensor: a syntax tree plus the shapes of the variables it uses."""

    __slots__ = ("node", "declarations")
    __array_ufunc__ = None  # numpy defers to our operators: ndarray + Tensor is an error below

    def __init__(self, node: ast.Expr, declarations: dict):
        self.node = node
        self.declarations = declarations

    def __repr__(self) -> str:
        return unparse(self.node)

    def __bool__(self):
        raise EinderivError("a symbolic tensor has no truth value")

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

    @property
    def T(self) -> "Tensor":
        return Tensor(ast.Attribute(self.node, "T"), self.declarations)

    def __getitem__(self, key) -> "Tensor":
        items = key if isinstance(key, tuple) else (key,)
        return Tensor(ast.Index(self.node, tuple(_index_item(i) for i in items)),
                      self.declarations)


def var(name: str, shape=()) -> Tensor:
    """A symbolic input tensor: `var("X", ("n", "d"))`, `var("c", ())` for a scalar."""
    if not isinstance(name, str) or not name.isidentifier():
        raise EinderivError(f"a variable name must be an identifier, got {name!r}")
    if isinstance(shape, (str, int)):
        shape = (shape,)
    shape = tuple(shape)
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (str, int)):
            raise ShapeError(f"the shape of '{name}' must hold ints and dimension names, "
                             f"got {shape!r}")
    return Tensor(ast.Name(name), {name: shape})


def _operand(x):
    if isinstance(x, Tensor):
        return x.node, x.declarations
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return _number(float(x)), {}
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
            raise ShapeError(f"variable '{name}' is used with two shapes: {merged[name]} and "
                             f"{shape}")
    return merged


def _binary(op: str, left, right) -> Tensor:
    l, dl = _operand(left)
    r, dr = _operand(right)
    return Tensor(ast.BinOp(op, l, r), _merge(dl, dr))


def _index_item(item) -> ast.Expr:
    if item is None:
        return ast.NoneLit()
    if isinstance(item, slice):
        if item.step not in (None, 1):
            raise EinderivError("slices with a step are not supported")
        return ast.Slice(*(None if v is None else _integer(v) for v in (item.start, item.stop)))
    return _integer(item)


def _integer(v) -> ast.Expr:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise EinderivError(f"indices must be integers, None or slices, got {v!r}")
    return _number(float(v))


def _axis(axis) -> ast.Expr:
    if isinstance(axis, tuple):
        return ast.Tuple(tuple(_integer(a) for a in axis))
    return _integer(axis)


DIMENSION_FUNCTIONS = {"eye", "ones", "zeros", "size"}


def call(name: str, *args, **kwargs) -> Tensor:
    """Apply the language function `name` to symbolic (or numeric) arguments."""
    nodes, decls = [], {}
    for a in args:
        if isinstance(a, str) and name == "einsum" and not nodes:
            nodes.append(ast.String(a))
            continue
        node, d = _operand(a) if not (name in DIMENSION_FUNCTIONS and isinstance(a, str)) else (ast.Name(a), {})
        nodes.append(node)
        decls = _merge(decls, d)
    keywords = tuple((k, _axis(v)) for k, v in kwargs.items() if v is not None)
    return Tensor(ast.Call(name, tuple(nodes), keywords), decls)


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

    @staticmethod
    def _names() -> set[str]:
        from .lower.calls import BUILTINS
        from .rulebook import default_rulebook
        return set(BUILTINS) | {n for n, f in default_rulebook().functions.items()
                                if n not in ("div", "pow")} | {"pow"}


fn = _Functions()
