"""Dimensions: a concrete size, a named size (`n`), or a named size with an offset (`n-1`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dim:
    name: str | None  # None for a concrete size
    offset: int = 0

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
