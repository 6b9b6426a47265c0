"""Dimensions: a concrete size, a named size (`n`), or a named size with an offset (`n-1`).

A name may also be a *composite* size, the text of a product or quotient of sizes in the
language (`m * n`, `(n + 1) // 2`, made by lower/dimensions.py for reshapes and strided
slices): it is one dimension like any name, and its size is computed from its parts'.
"""
from __future__ import annotations

import ast
import operator
from functools import lru_cache

_DIMS: dict = {}  # (name, offset) -> its Dim: one object per dimension


class Dim:
    """Immutable and interned: `Dim("n", 1) is Dim("n", 1)`, so equality is identity and the
    hash is object's own (in C: IR nodes are keyed by tuples of dimensions, hashed at every
    node built)."""

    __slots__ = ("name", "offset")
    name: str | None  # None for a concrete size
    offset: int

    def __new__(cls, name: str | None, offset: int = 0) -> "Dim":
        offset = operator.index(offset)  # a numpy integer is the int it holds
        key = (name, offset)
        dim = _DIMS.get(key)
        if dim is None:
            dim = object.__new__(cls)
            object.__setattr__(dim, "name", name)
            object.__setattr__(dim, "offset", offset)
            dim = _DIMS.setdefault(key, dim)  # another thread's, if it was first
        return dim

    def __setattr__(self, name, value):
        raise AttributeError("dimensions are immutable")

    def __reduce__(self):
        return (Dim, (self.name, self.offset))

    @staticmethod
    def of(value) -> "Dim":
        if isinstance(value, Dim):
            return value
        if isinstance(value, bool):
            raise TypeError("a dimension is an int or a name")
        if isinstance(value, int):
            return Dim(None, value)
        if isinstance(value, str):
            if value.isidentifier():
                return Dim(value, 0)
            # The text of a dimension expression, as a shape declares it: `n - 1`, `2 * n`
            from ..lower.dimensions import read
            return read(value)
        raise TypeError(f"a dimension is an int or a name, not {type(value).__name__}")

    @property
    def is_concrete(self) -> bool:
        return self.name is None

    def __add__(self, k) -> "Dim":
        if isinstance(k, Dim):
            if k.name is not None and self.name is not None:
                return _combined(self, k, 1)  # n + n is 2 * n; n + m is no dimension
            return Dim(self.name or k.name, self.offset + k.offset)
        return Dim(self.name, self.offset + k)

    def __sub__(self, k) -> "Dim":
        if isinstance(k, Dim):
            if k.name is not None and k.name != self.name:
                return _combined(self, k, -1)  # 2 * n - n is n
            return Dim(None if k.name else self.name, self.offset - k.offset)
        return Dim(self.name, self.offset - k)

    def size(self, env: dict[str, int]) -> int:
        """The concrete size, with named sizes taken from `env` (KeyError for one missing)."""
        if self.name is None:
            return self.offset
        base = env.get(self.name)
        if base is None:
            base = _composite_size(self.name, env) if is_composite(self.name) else \
                env[self.name]
        return base + self.offset

    def __str__(self) -> str:
        if self.name is None:
            return str(self.offset)
        if self.offset == 0:
            return self.name
        if is_composite(self.name):
            return f"{self.name} {'+' if self.offset > 0 else '-'} {abs(self.offset)}"
        return f"{self.name}{self.offset:+d}"

    __repr__ = __str__


def _combined(a: Dim, b: Dim, sign: int) -> Dim:
    """`a + sign * b` of two named sizes where it is one dimension (lower/dimensions.py's
    `combine`: like products add), else ValueError."""
    if a.name is not None and b.name is not None:
        from ..lower.dimensions import combine
        d = combine(a, b, sign)
        if d is not None:
            return d
    raise ValueError(f"cannot {'add' if sign > 0 else 'subtract'} dimensions {a} and {b}")


def is_composite(name: str) -> bool:
    """Is `name` a composite size (`m * n`), not a dimension name?"""
    return not name.isidentifier()


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.FloorDiv: operator.floordiv}


@lru_cache(maxsize=None)
def _composite(name: str):
    return ast.parse(name, mode="eval").body


def _composite_size(name: str, env: dict[str, int]) -> int:
    """The size of a composite name: its text is integers, dimension names, + - * // and
    brackets (read with Python's parser, never evaluated as code)."""
    stack, values = [_composite(name)], []
    while stack:  # postfix: a node, then (None, its operator) after its operands
        node = stack.pop()
        if isinstance(node, tuple):
            right, left = values.pop(), values.pop()
            values.append(_OPERATORS[node[1]](left, right))
        elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            stack += [(None, type(node.op)), node.right, node.left]
        elif isinstance(node, ast.Name):
            values.append(env[node.id])
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            values.append(node.value)
        else:
            raise ValueError(f"malformed composite dimension {name!r}")
    return values[0]


def names_in(dim: Dim) -> frozenset[str]:
    """The dimension names that `dim`'s size is computed from: `{"m", "n"}` for `m * (n - 1)`,
    none for a concrete size."""
    if dim.name is None:
        return frozenset()
    if not is_composite(dim.name):
        return frozenset((dim.name,))
    return _composite_names(dim.name)


@lru_cache(maxsize=None)
def _composite_names(name: str) -> frozenset[str]:
    return frozenset(n.id for n in ast.walk(_composite(name)) if isinstance(n, ast.Name))


def show_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# The most axes a value may have: numpy's limit, in every version einderiv supports (numpy
# 1.x arrays have at most 32 axes; numpy 2's may have 64, but its broadcasting functions and
# iterators take 32, and einsum, which products run through, has 52 letters for the indices of
# two operands). Values past it are refused where they are made (lowering, derivation), with
# a ShapeError, never left to fail inside numpy at the call.
MAX_RANK = 32
RANK_HINT = (f"an array has at most {MAX_RANK} axes (numpy's limit), and so has every value "
             f"einderiv computes: results, derivatives and the values in between")


ONE = Dim(None, 1)
