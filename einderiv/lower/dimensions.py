"""Dimension expressions: products and quotients of sizes, for reshapes and strided slices.

A `Dim` is one name plus an integer. A reshape's size is a product of names (`reshape(X, (n *
m,))`) and a strided slice's a quotient (`x[::2]` of an `x: [n]` has `(n + 1) // 2` entries):
each is made one dimension whose name is its text in the language, in a canonical form, so that
equal sizes are one `Dim` and a formula that prints the text parses back to it
(`ir/dims.py` computes its size). A product is an integer (omitted when 1) times factors sorted
by their text, each a name with its offset or a quotient (`2 * m * n`, `m * (n - 1)`); a
quotient is a size divided by an integer, rounded down (`n // 2`, `(n + 1) // 2`,
`(m * n - 1) // 3`), simplified where the integer divides the product (`(2 * n) // 2` is `n`).
Products are not multiplied out: `(n - 1) * m` is a product of two factors, not `m * n - m`.
"""
from __future__ import annotations

from functools import lru_cache

from ..errors import ParseError, ShapeError, UnknownNameError, did_you_mean
from ..ir.dims import Dim, is_composite
from ..parse import ast, parse

ONE = Dim(None, 1)


def text(d: Dim) -> str:
    """`d` in the language: `n`, `n - 1`, `m * n`, `(n + 1) // 2 - 1`, `3`."""
    if d.is_concrete:
        return str(d.offset)
    if d.offset == 0:
        return d.name
    return f"{d.name} {'+' if d.offset > 0 else '-'} {abs(d.offset)}"


def _factor_text(d: Dim) -> str:
    """`d` as a factor of a product: bracketed unless it is a name alone."""
    return d.name if d.offset == 0 and not is_composite(d.name) else f"({text(d)})"


# The factors of each product made (its name -> (integer, factors)): a product's name is read
# back by the parser only where a formula is, and this is what it reads to.
_PRODUCTS: dict[str, tuple[int, tuple[Dim, ...]]] = {}


def factors(d: Dim) -> tuple[int, tuple[Dim, ...]]:
    """`d` as an integer times a product of factors (none for a fixed size)."""
    if d.is_concrete:
        return d.offset, ()
    if d.offset == 0 and d.name in _PRODUCTS:
        return _PRODUCTS[d.name]
    if d.offset == 0 and is_composite(d.name):
        made = read(d.name)  # a product's name met before it was made here: made now
        if made.offset == 0 and made.name in _PRODUCTS:
            return _PRODUCTS[made.name]
    return 1, (d,)


def product(dims) -> Dim:
    """The product of sizes, as one dimension."""
    coefficient, parts = 1, []
    for d in dims:
        c, f = factors(d)
        coefficient *= c
        parts += f
    if coefficient == 0 or not parts:
        return Dim(None, coefficient)
    parts.sort(key=_factor_text)
    if coefficient == 1 and len(parts) == 1:
        return parts[0]
    name = " * ".join(([str(coefficient)] if coefficient != 1 else []) +
                      [_factor_text(p) for p in parts])
    _PRODUCTS.setdefault(name, (coefficient, tuple(parts)))
    return Dim(name)


def floordiv(d: Dim, k: int) -> Dim:
    """`d // k` for an integer k >= 1, rounded down, as one dimension."""
    if k == 1:
        return d
    if d.is_concrete:
        return Dim(None, d.offset // k)
    coefficient, parts = factors(Dim(d.name))
    if coefficient % k == 0:  # (c * F + o) // k = (c / k) * F + o // k
        return product([Dim(None, coefficient // k), *parts]) + d.offset // k
    numerator = d.name if d.offset == 0 and not is_composite(d.name) else f"({text(d)})"
    return Dim(f"{numerator} // {k}")


def ceildiv(d: Dim, k: int) -> Dim:
    """The number of entries of a slice of `d` entries taken every k-th: ceil(d / k)."""
    return floordiv(d + (k - 1), k)


def divide(total: Dim, part: Dim) -> Dim | None:
    """`total / part` when `part`'s factors are among `total`'s and its integer divides
    `total`'s (the size of a reshape's -1), else None."""
    c, have = factors(total)
    k, want = factors(part)
    rest = list(have)
    for f in want:
        if f not in rest:
            return None
        rest.remove(f)
    if k == 0 or c % k:
        return None
    return product([Dim(None, c // k), *rest])


def equal(a: Dim, b: Dim) -> bool:
    """Are the sizes equal for every value of the names (as products, not multiplied out)?"""
    ca, fa = factors(a)
    cb, fb = factors(b)
    return ca == cb and sorted(fa, key=_factor_text) == sorted(fb, key=_factor_text)


@lru_cache(maxsize=None)
def composite_expr(name: str) -> ast.Expr:
    """The expression that a composite size's name is the text of."""
    return parse(name).statements[0]


def read(name: str) -> Dim:
    """The dimension whose name is the text `name` (a composite size's)."""
    return _value(composite_expr(name), None, "a dimension")


def dimension(expr: ast.Expr, scope, what: str = "a dimension") -> Dim:
    """The dimension that `expr` writes: integers and dimension names of `scope`, `+` and `-`
    of an integer, products (`n * m`, `2 * n`) and quotients by an integer (`n // 2`).
    ParseError for anything else, UnknownNameError for a name that is no dimension."""
    return _value(expr, scope, what)


def _value(expr, scope, what) -> Dim:
    from .lower import constant_int
    if isinstance(expr, ast.Name):
        if scope is None or expr.id in scope.dims():
            return Dim(expr.id)
        raise UnknownNameError(f"unknown dimension '{expr.id}'", expr.span,
                               did_you_mean(expr.id, scope.dims())
                               or "this function takes integers or dimension names used in a "
                                  "shape")
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "//"):
        if expr.op == "//":
            k = constant_int(expr.right, "a divisor of a dimension")
            if k < 1:
                raise ShapeError("a dimension is divided by a positive integer",
                                 expr.right.span or expr.span)
            return floordiv(_value(expr.left, scope, what), k)
        left, right = _value(expr.left, scope, what), _value(expr.right, scope, what)
        if expr.op == "*":
            return product([left, right])
        try:
            return left + right if expr.op == "+" else left - right
        except ValueError:
            raise ParseError(f"{what} must be one product of dimensions plus an integer",
                             expr.span) from None
    return Dim(None, constant_int(expr, what))
