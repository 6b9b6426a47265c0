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

import numbers
from functools import lru_cache

from ..errors import ParseError, ShapeError, UnknownNameError, did_you_mean
from ..ir.dims import Dim, is_composite, names_in, show_shape
from ..parse import ast, parse
from ..parse.parser import check_name

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


def combine(a: Dim, b: Dim, sign: int) -> Dim | None:
    """`a + sign * b` (sign 1 or -1) for two named sizes, as one dimension where their products
    add up to one: like products add (`n + n` is `2 * n`, `4 * h - h` is `3 * h`), and a
    product with one factor more takes the other in that factor (`m * n - n` is
    `(m - 1) * n`, `m * n + n` is `(m + 1) * n`). None where they do not (`n + m`, `n - 2 * n`):
    a dimension is one product plus an integer."""
    ca, fa = factors(Dim(a.name))
    cb, fb = factors(Dim(b.name))
    offset = a.offset + sign * b.offset
    if sorted(fa, key=_factor_text) == sorted(fb, key=_factor_text):  # c * F + c' * F
        c = ca + sign * cb
        return None if c < 0 else product([Dim(None, c), *fa]) + offset
    candidates = [(ca, fa, cb, fb, sign)] + ([(cb, fb, ca, fa, 1)] if sign == 1 else [])
    for cx, fx, cy, fy, s in candidates:  # r * G + s * cy * G = (r + s * cy) * G
        rest = _without(fx, fy)
        if cx == 1 and rest is not None and len(rest) == 1:
            return product([rest[0] + s * cy, *fy]) + offset
    return None


def _without(have, remove) -> list | None:
    """The factors `have` less those of `remove`, or None where one of them is not there."""
    rest = list(have)
    for f in remove:
        if f not in rest:
            return None
        rest.remove(f)
    return rest


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


def _value(expr, scope, what, sizes=None) -> Dim:
    """`scope` None: any name is a dimension (a declaration names them). `sizes`: names fixed
    to integers when the result is built (`sizes={"k": 3}`), the scope's unless given."""
    from .lower import constant_int
    sizes = getattr(scope, "sizes", None) if sizes is None else sizes
    if isinstance(expr, ast.Name):
        if sizes and expr.id in sizes:
            return Dim(None, sizes[expr.id])
        if scope is None or expr.id in scope.dims():
            return Dim(expr.id)
        known = scope.dims() | set(sizes or ())
        raise UnknownNameError(
            f"unknown dimension '{expr.id}'", expr.span,
            did_you_mean(expr.id, known)
            or f"'{expr.id}' is in no variable's shape: give its size when you build the "
               f"result (sizes={{'{expr.id}': 3}} in Python), or write an integer")
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "//"):
        if expr.op == "//":
            k = constant_int(expr.right, "a divisor of a dimension")
            if k < 1:
                raise ShapeError("a dimension is divided by a positive integer",
                                 expr.right.span or expr.span)
            return floordiv(_value(expr.left, scope, what, sizes), k)
        left = _value(expr.left, scope, what, sizes)
        right = _value(expr.right, scope, what, sizes)
        if expr.op == "*":
            return product([left, right])
        try:
            return left + right if expr.op == "+" else left - right
        except ValueError:
            raise ParseError(f"{what} must be one product of dimensions plus an integer, not "
                             f"a sum of two names", expr.span,
                             hint="name the sum: declare it as a dimension of its own "
                                  "(p for n + m)") from None
    if isinstance(expr, ast.Number):
        not_an_integer(expr)
    return Dim(None, constant_int(expr, what))


INTEGER_HINT = "a size is a count of entries: 3, not 3.0"


def not_an_integer(number: ast.Number) -> None:
    """ParseError where a literal in a size is not written as an integer (`2.0`, `1e3`, `2.5`),
    as an inline declaration `x: [1e3]` is refused by the parser: numpy's shapes take ints
    only, so a size given as text (`shapes={"x": ("2.0",)}`, `--shape x=1e3`) or in a
    dimension expression (`2.0 * n`) is refused the same way, not rounded."""
    if number.span is None:  # built in Python (`einderiv.var`): written as an int there
        return
    text = number.span.source[number.span.start:number.span.end]
    if not (text.isascii() and text.isdigit()):
        raise ParseError(f"a dimension is an integer, not {text}", number.span,
                         hint=INTEGER_HINT)


# -- declared shapes -------------------------------------------------------------------------

def declared(spec, owner: str, span=None, sizes=None) -> Dim:
    """A dimension of a declared shape: an integer, a name, or the text (or, from an inline
    declaration, the syntax tree) of a dimension expression (`n - 1`, `2 * n`, `m * n`),
    with the names of `sizes` fixed to their integers. ShapeError naming `owner`'s shape for
    anything else."""
    from .lower import EXACT_INTEGERS
    where = f"the shape of '{owner}': dimension"
    if isinstance(spec, Dim):  # a shape taken from a node (rule checks)
        if spec.is_concrete or not names_in(spec) & set(sizes or ()):
            return spec
        spec = composite_expr(text(spec))
    if isinstance(spec, str):
        if spec.isidentifier():
            check_name(spec, where, ShapeError)
            spec = ast.Name(spec)
        else:
            spec = _dimension_text(spec, where)
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        d = Dim(None, int(spec))
    elif isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        # 2.0 too, as numpy's shapes take ints only: a float size is a mistake, not rounded
        raise ShapeError(f"the shape of '{owner}': a dimension is an integer, not {spec!r}",
                         span, hint=INTEGER_HINT)
    elif isinstance(spec, ast.Expr):
        try:
            d = _value(spec, None, f"{where} {_shown(spec)}", sizes or {})
        except ParseError as e:  # not a dimension: a shape's error
            message = e.message if f"'{owner}'" in e.message else \
                f"the shape of '{owner}': {e.message}"
            raise ShapeError(message, e.span or span, e.hint or DECLARED_HINT) from None
    else:
        raise TypeError(f"a dimension is an int or a name, not {type(spec).__name__}")
    if d.is_concrete and d.offset < 0:
        raise ShapeError(f"'{owner}' has a negative dimension {d}", span)
    if d.is_concrete and d.offset >= EXACT_INTEGERS:
        # The printers write it as an integer literal, which must parse back as itself.
        raise ShapeError(f"'{owner}' has a dimension {d} too large to be a size "
                         f"(at most {EXACT_INTEGERS - 1})", span)
    return d


DECLARED_HINT = ("a dimension is an integer, a name, a name plus or minus an integer (n - 1), "
                 "or a product or quotient of them (2 * n, n * m, n // 2)")


def _shown(expr) -> str:
    from ..parse.unparse import unparse
    return repr(unparse(expr))


def _dimension_text(text: str, where: str) -> ast.Expr:
    return dimension_tree(text, where, ShapeError)


def dimension_tree(text: str, what: str, error: type = ParseError) -> ast.Expr:
    """The dimension expression `text` (`"n - 1"`), as a syntax tree: `error` saying which
    `what` is bad where it is not one expression (lowering checks that it is a dimension)."""
    try:
        program = parse(text)
    except ParseError as e:
        raise error(f"{what} {text!r} is not a dimension expression: {e.message}",
                    hint=e.hint or DECLARED_HINT) from None
    if len(program.statements) != 1 or not isinstance(program.statements[0], ast.Expr):
        raise error(f"{what} {text!r} is not a dimension expression", hint=DECLARED_HINT)
    return program.statements[0]


def reading(d: Dim, name: str) -> tuple[int, tuple[Dim, ...], int] | None:
    """How the size of `name` follows from the size S of an axis of dimension `d`: as
    (c, others, k) with name = (S - d.offset) / (c * the product of others) - k, where `name`
    is one factor of `d`, plus k (`n` from `n - 1`, `2 * n`, `m * (n + 1)` with m known);
    None where `d` does not tell it (a quotient `(n + 1) // 2` rounds, `n * n` is no factor
    once)."""
    if d.name == name:
        return 1, (), 0
    if d.name is None or not is_composite(d.name) or name not in names_in(d):
        return None
    c, parts = factors(Dim(d.name))
    hits = [p for p in parts if name in names_in(p)]
    if len(hits) != 1 or hits[0].name != name:
        return None
    others = list(parts)
    others.remove(hits[0])
    return c, tuple(others), hits[0].offset


def readings(shapes: dict) -> dict:
    """Where each dimension name of the declared `shapes` (variable -> tuple of Dims) is read
    from: name -> (variable, axis, its Dim there, `reading`), in an order where the names a
    reading needs (the other factors) come first. A name that appears alone (`n`, `n - 1`)
    is read there; else from a product it is one factor of (`2 * n`), once its other factors
    are known. Names that no shape tells are left out."""
    known: dict = {}
    composites = []
    for variable, shape in shapes.items():
        for axis, d in enumerate(shape):
            if d.name is None:
                continue
            if is_composite(d.name):
                composites.append((variable, axis, d))
            elif d.name not in known:
                known[d.name] = (variable, axis, d, (1, (), 0))
    progress = bool(composites)
    while progress:
        progress = False
        for variable, axis, d in composites:
            for name in sorted(n for n in names_in(d) if n not in known):
                r = reading(d, name)
                if r is not None and all(n in known for o in r[1] for n in names_in(o)):
                    known[name] = (variable, axis, d, r)
                    progress = True
    return known


def bind(given: dict) -> dict[str, int]:
    """The size of each dimension name, read off arrays: `given` is input name -> (its
    declared shape, the array's shape). A name alone (`n`, `n - 1`) is read first, then each
    name from a product it is one factor of (`2 * n`, `m * n` once m is known), and every axis
    is checked against the sizes: ShapeError naming the input, the dimension and where its
    names' sizes came from. A name that no given array tells is left out."""
    env: dict[str, int] = {}
    source: dict[str, str] = {}

    def fail(name, why=""):
        shape, actual = given[name]
        raise ShapeError(f"input '{name}' should have shape {show_shape(shape)}, got an array "
                         f"of shape {tuple(actual)}{why}")

    def bound(names) -> str:
        return ", ".join(f"{n} is {env[n]} (from '{source[n]}')" for n in sorted(names))

    composites = []
    for name, (shape, actual) in given.items():
        for axis, (d, size) in enumerate(zip(shape, actual)):
            if not isinstance(size, numbers.Integral):  # dask's nan: a size not known yet
                raise ShapeError(f"input '{name}' has an axis of unknown size: shape "
                                 f"{tuple(actual)}, declared {show_shape(shape)}",
                                 hint="a dask array sliced by a mask has chunks of unknown "
                                      "size: call its compute_chunk_sizes() first")
            if d.is_concrete:
                if d.offset != size:
                    fail(name)
            elif is_composite(d.name):
                composites.append((name, d, size))
            else:
                value = size - d.offset
                if value < 0:
                    fail(name, f": {d.name} would be {value}")
                if env.setdefault(d.name, value) != value:  # (the axis, its size, the other)
                    fail(name, f": axis {axis} is {size}, but {bound([d.name])}" +
                         (f", so {d} is {env[d.name] + d.offset}" if d.offset else ""))
                source.setdefault(d.name, name)
    progress = True
    while progress:
        progress = False
        for name, d, size in composites:
            for n in sorted(names_in(d) - set(env)):
                r = reading(d, n)
                if r is None or not all(names_in(o) <= set(env) for o in r[1]):
                    continue
                c, others, k = r
                divisor = c
                for o in others:
                    divisor *= o.size(env)
                quotient, remainder = divmod(size - d.offset, divisor) if divisor > 0 \
                    else (None, 1)
                if remainder or quotient - k < 0:
                    known = bound({m for o in others for m in names_in(o)})
                    fail(name, f": no size of {n} makes {text(d)} {size}" +
                         (f" ({known})" if known else ""))
                env[n], source[n] = quotient - k, name
                progress = True
    for name, d, size in composites:
        if names_in(d) <= set(env) and d.size(env) != size:
            fail(name, f": {bound(names_in(d))}, so {text(d)} is {d.size(env)}")
    return env


def unreadable(shapes: dict, spans: dict | None = None) -> None:
    """ShapeError for a dimension name of the declared `shapes` that no shape tells: every
    size must follow from the arrays passed."""
    if not any(d.name is not None and is_composite(d.name)
               for shape in shapes.values() for d in shape):
        return  # every name is read where a shape has it alone
    known = readings(shapes)
    for variable, shape in shapes.items():
        for d in shape:
            missing = sorted(n for n in names_in(d) if n not in known)
            if missing:
                name = missing[0]
                raise ShapeError(
                    f"the shape of '{variable}': the size of '{name}' cannot be read off the "
                    f"inputs: {text(d)} does not tell it, and no input's shape has {name} "
                    f"alone or as one factor of a product", (spans or {}).get(variable),
                    hint=f"declare an input whose shape has '{name}' (x: [{name}]), or give "
                         f"its size when you build the result (sizes={{'{name}': 3}})")
