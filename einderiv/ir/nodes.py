"""The indexed Einstein IR: immutable, hash-consed tensor expressions.

Every node is a tensor with a positional shape. Index names live only inside the two indexed
node kinds, `Contract` (a product of operands summed over the labels that do not appear in the
output, i.e. an Einstein sum) and `Add` (a sum of terms, each placed on output labels, with
broadcasting). Labels are renumbered canonically, so structurally equal expressions are one node
whatever index names they were written with: `x + y` built twice is the same object.

`str(node)` prints the expression as readable Einstein notation (see `einstein.py`).
"""
from __future__ import annotations

import threading
import weakref
from typing import Iterable

from .dims import Dim

_TABLE: "weakref.WeakValueDictionary[tuple, Node]" = weakref.WeakValueDictionary()
# Creating a node is a look-up then an insert: two threads building the same new expression
# could each miss and insert their own object, and equality (which is identity) would then
# split one expression in two (a gradient that never meets its variable comes out zero). The
# lock makes miss-then-insert one step; a hit needs no lock, since an entry is only ever
# replaced once its node is dead. Reentrant: a garbage collection inside the lock may run a
# finalizer that builds nodes on this same thread.
_CREATING = threading.RLock()
_REFS = _TABLE.data  # key -> weak reference; the same dict object for the table's lifetime
_REMOVE = _TABLE._remove  # the table's callback: drops a key once its node has died
KeyedRef = weakref.KeyedRef
_NAN = float("nan")


class Node:
    """Base of all IR nodes. Equality is identity: equal structure means the same object.

    Hashing and equality are object's own (identity, in C): hash-consing makes structurally
    equal nodes one object, so nothing more is needed, and every node built hashes the tuple of
    its children's nodes (a Python `__hash__` there was a tenth of a long program's lowering)."""

    __slots__ = ("shape", "__weakref__")
    shape: tuple[Dim, ...]

    @classmethod
    def _intern(cls, key: tuple, shape: tuple[Dim, ...], **fields) -> "Node":
        full = (cls, *key)
        # The hit path reads the table's own dict of weak references: `_TABLE.get` is Python
        # code, and interning is on every node built (a dead reference falls to the lock).
        ref = _REFS.get(full)
        node = ref() if ref is not None else None
        if node is not None:
            return node
        with _CREATING:
            ref = _REFS.get(full)
            node = ref() if ref is not None else None
            if node is None:
                node = object.__new__(cls)
                setattr_ = object.__setattr__
                setattr_(node, "shape", shape)
                for k, v in fields.items():
                    setattr_(node, k, v)
                # What `_TABLE[full] = node` does, without its Python-level wrapper (nothing
                # iterates the table, so it never defers a removal).
                _REFS[full] = KeyedRef(node, _REMOVE, full)
        return node

    def __setattr__(self, name, value):
        raise AttributeError("IR nodes are immutable")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def children(self) -> tuple["Node", ...]:
        return ()

    def __str__(self) -> str:
        from .einstein import format_program
        return format_program(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.shape}: {str(self).splitlines()[-1]}>"


class Var(Node):
    """An input tensor, by name."""

    __slots__ = ("name",)
    name: str

    def __new__(cls, name: str, shape: Iterable) -> "Var":
        shape = tuple(Dim.of(d) for d in shape)
        return cls._intern((name, shape), shape, name=name)


class Const(Node):
    """A scalar constant."""

    __slots__ = ("value",)
    value: float

    def __new__(cls, value: float) -> "Const":
        value = float(value)
        if value == 0:
            value = 0.0  # -0.0 and 0.0 are one constant
        elif value != value:
            value = _NAN  # nan equals nothing, itself included: one object makes it one key
        return cls._intern((value,), (), value=value)


class Size(Node):
    """The size of a dimension as a scalar (`mean` divides by it)."""

    __slots__ = ("dim",)
    dim: Dim

    def __new__(cls, dim: Dim) -> "Size":
        return cls._intern((dim,), (), dim=dim)


class Delta(Node):
    """Kronecker delta `delta[i,j] = 1 if j == i + offset else 0`, shape (rows, cols).

    With rows == cols and offset 0 it is the identity; otherwise it selects a window (a slice).
    """

    __slots__ = ("offset",)
    offset: Dim

    def __new__(cls, rows: Dim, cols: Dim, offset=0) -> "Delta":
        rows, cols, offset = Dim.of(rows), Dim.of(cols), Dim.of(offset)
        return cls._intern((rows, cols, offset), (rows, cols), offset=offset)

    @property
    def is_identity(self) -> bool:
        return self.shape[0] == self.shape[1] and self.offset == Dim(None, 0)


class Unit(Node):
    """The unit vector `e[j] = 1 if j == position else 0` (an integer index picks with it)."""

    __slots__ = ("position",)
    position: Dim

    def __new__(cls, dim: Dim, position) -> "Unit":
        dim, position = Dim.of(dim), Dim.of(position)
        return cls._intern((dim, position), (dim,), position=position)


class Map(Node):
    """An elementwise function of arguments shaped like the result (or scalars)."""

    __slots__ = ("fn", "args")
    fn: str
    args: tuple[Node, ...]

    def __new__(cls, fn: str, *args: Node) -> "Map":
        shape = max((a.shape for a in args), key=len)
        for a in args:
            if a.shape and a.shape != shape:
                raise ValueError(f"Map {fn}: argument shapes {[a.shape for a in args]} differ")
        return cls._intern((fn, args), shape, fn=fn, args=tuple(args))

    def children(self):
        return self.args


class Prim(Node):
    """A tensor primitive (`inv`, `det`, `softmax` ...) with static parameters such as axes."""

    __slots__ = ("fn", "args", "params")
    fn: str
    args: tuple[Node, ...]
    params: tuple

    def __new__(cls, fn: str, args: tuple[Node, ...], params: tuple, shape) -> "Prim":
        shape = tuple(Dim.of(d) for d in shape)
        return cls._intern((fn, tuple(args), tuple(params), shape), shape, fn=fn,
                           args=tuple(args), params=tuple(params))

    def children(self):
        return self.args


Operand = tuple[Node, tuple[int, ...]]


class Contract(Node):
    """Einstein product: `out[out_labels] = sum over other labels of prod(operand[labels])`.

    An output label that no operand carries broadcasts; its size is given in `broadcast`.
    """

    __slots__ = ("out", "operands", "dims", "_children")
    out: tuple[int, ...]
    operands: tuple[Operand, ...]
    dims: tuple[Dim, ...]  # size of every label, by label number

    def __new__(cls, out, operands, broadcast: dict | None = None) -> "Contract":
        # One pass renumbers the labels canonically (0, 1, ... in order of first appearance,
        # output first) and binds each to its dimension: every node built goes
        # through here.
        given = tuple(out)
        names: dict = {}
        for label in given:
            names.setdefault(label, len(names))
        if len(names) != len(given):
            raise ValueError("Contract: an output label repeats (use a Delta for a diagonal)")
        dims: list = [None] * len(names)
        ops = []
        for node, labels in operands:
            shape = node.shape
            if len(labels) != len(shape):
                raise ValueError(f"Contract: {len(labels)} labels for a rank-{len(shape)} operand")
            renamed = []
            for label, dim in zip(labels, shape):
                k = names.get(label)
                if k is None:
                    k = names[label] = len(dims)
                    dims.append(dim)
                elif dims[k] is None:
                    dims[k] = dim
                elif dims[k] is not dim:  # dimensions are interned: equal is identical
                    raise ValueError(f"Contract: label bound to {dims[k]} and {dim}")
                renamed.append(k)
            ops.append((node, tuple(renamed)))
        out = tuple(range(len(given)))
        for pos in out:
            if dims[pos] is None:
                if not broadcast or given[pos] not in broadcast:
                    raise ValueError("Contract: a label with no operand needs a broadcast size")
                dims[pos] = Dim.of(broadcast[given[pos]])
        dims = tuple(dims)
        ops = tuple(ops)
        # The children are kept: every pass walks them, and a generator per visit was a tenth
        # of a long program's vectorizing.
        return cls._intern((out, ops, dims), dims[:len(out)], out=out, operands=ops, dims=dims,
                           _children=tuple([node for node, _ in ops]))

    def children(self):
        return self._children


class Add(Node):
    """A weighted sum of terms of equal shape: `sum(coef * term)`."""

    __slots__ = ("terms", "_children")
    terms: tuple[tuple[float, Node], ...]

    def __new__(cls, terms: Iterable[tuple[float, Node]]) -> "Add":
        terms = tuple((float(c), t) for c, t in terms)
        shape = terms[0][1].shape
        for _, t in terms:
            if t.shape != shape:
                raise ValueError(f"Add: term shapes {[t.shape for _, t in terms]} differ")
        return cls._intern((terms,), shape, terms=terms, _children=tuple(t for _, t in terms))

    def children(self):
        return self._children


def topological(*roots: Node) -> list[Node]:
    """Every node reachable from `roots`, each once, children before parents (no recursion):
    depth-first, children left to right, a node after the last of its children."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in roots:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(root.children()))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, iter(child.children())))
                    break
            else:
                stack.pop()
                order.append(node)
    return order
