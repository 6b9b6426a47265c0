"""The surface syntax tree: what the user wrote, with source positions, before any shapes.

Nodes compare by identity: an expression built in a Python loop (`einderiv.var`) is a DAG that
shares subtrees, and later stages memoize on node identity to stay linear in its size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span


@dataclass(eq=False)
class Expr:
    span: Span | None = field(default=None, kw_only=True, repr=False)

    def children(self) -> tuple["Expr", ...]:
        return ()


@dataclass(eq=False)
class Number(Expr):
    value: float


@dataclass(eq=False)
class String(Expr):
    value: str


@dataclass(eq=False)
class NoneLit(Expr):
    pass


@dataclass(eq=False)
class Name(Expr):
    id: str


# The comparison operators, and the rule-table function each is (a mask of 0 and 1).
COMPARISONS = {"<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal",
               "==": "equal", "!=": "not_equal"}


@dataclass(eq=False)
class BinOp(Expr):
    op: str  # one of + - * / // @ ** or a comparison (COMPARISONS)
    left: Expr
    right: Expr
    # An `@` whose operands have one or two axes each, no stack axes (set by the vectorizer,
    # which knows their labels): numpy's dot computes it, without matmul's ufunc dispatch.
    matrix: bool = field(default=False, kw_only=True, repr=False)

    def children(self):
        return (self.left, self.right)


@dataclass(eq=False)
class UnaryOp(Expr):
    op: str  # - or +
    operand: Expr

    def children(self):
        return (self.operand,)


@dataclass(eq=False)
class Attribute(Expr):
    operand: Expr
    attr: str  # only "T" is meaningful; anything else is reported by lowering

    def children(self):
        return (self.operand,)


@dataclass(eq=False)
class Slice(Expr):
    lo: Expr | None
    hi: Expr | None
    step: Expr | None = None  # `x[::2]`, `x[::-1]`; None for none written


@dataclass(eq=False)
class Index(Expr):
    operand: Expr
    items: tuple[Expr, ...]  # expressions (integers), Slice, or NoneLit

    def children(self):
        return (self.operand,)


@dataclass(eq=False)
class Tuple(Expr):
    items: tuple[Expr, ...]


@dataclass(eq=False)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...] = ()
    func_span: Span | None = field(default=None, repr=False)

    def children(self):
        return tuple(a for a in self.args if not isinstance(a, (String, Tuple)))


@dataclass(eq=False)
class Decl:
    name: str
    dims: tuple[str | int, ...]
    span: Span | None = None


@dataclass(eq=False)
class Assign:
    name: str
    value: Expr
    span: Span | None = None


@dataclass(eq=False)
class Program:
    """Statements in order. The output is the last expression statement or binding."""

    statements: list
    source: str = ""

    def __repr__(self) -> str:  # the dataclass repr recurses once per nesting level
        return f"Program({len(self.statements)} statements)"
