"""Dimensions: a concrete size, a named size (`n`), or a named size with an offset (`n-1`)."""
from __future__ import annotations

import operator

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
            return Dim(value, 0)
        raise TypeError(f"a dimension is an int or a name, not {type(value).__name__}")

    @property
    def is_concrete(self) -> bool:
        return self.name is None

    def __add__(self, k) -> "Dim":
        if isinstance(k, Dim):
            if k.name is not None and self.name is not None:
                raise ValueError(f"cannot add dimensions {self} and {k}")
            return Dim(self.name or k.name, self.offset + k.offset)
        return Dim(self.name, self.offset + k)

    def __sub__(self, k) -> "Dim":
        if isinstance(k, Dim):
            if k.name is not None and k.name != self.name:
                raise ValueError(f"cannot subtract dimension {k} from {self}")
            return Dim(None if k.name else self.name, self.offset - k.offset)
        return Dim(self.name, self.offset - k)

    def size(self, env: dict[str, int]) -> int:
        """The concrete size, with named sizes taken from `env`."""
        return self.offset if self.name is None else env[self.name] + self.offset

    def __str__(self) -> str:
        if self.name is None:
            return str(self.offset)
        if self.offset == 0:
            return self.name
        return f"{self.name}{self.offset:+d}"

    __repr__ = __str__


def show_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


ONE = Dim(None, 1)
