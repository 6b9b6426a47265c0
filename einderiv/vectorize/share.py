"""Common subexpressions of the vectorized program become temporaries, and so do expressions
nested too deeply to print.

The IR shares every node, but one IR product can be written into several array expressions
(`t8 * t9` in each of an RNN's weight gradients), so the vectorized program is searched once
more for repeated subexpressions. Subexpressions are compared by structure, never by their
printed text: each node gets an integer, computed bottom-up once per node, that two nodes share
exactly when they are the same expression (hash-consing). Every pass here is linear in the size
of the program and uses an explicit stack, however deeply an expression nests.
"""
from __future__ import annotations

from ..parse import ast

# Expressions with no parts: never replaced, and told apart by their value alone.
_LEAVES = frozenset({ast.Name, ast.Number, ast.String, ast.NoneLit})
# Only expressions that do work are worth a name: not names, numbers or plain views.
_WORK = (ast.BinOp, ast.Call, ast.UnaryOp)
# Calls whose arguments are only dimensions (`ones(1)`, `eye(n)`) cost nothing to repeat.
_CONSTANT_CALLS = {"ones", "zeros", "eye", "size"}
# An expression nesting deeper than this is cut into temporaries, so that every printer (each
# recursive, a few frames per level) prints it whole, with no elision and no recursion trouble,
# and its text parses back under the parser's bracket nesting limit.
MAX_PRINT_HEIGHT = 40


def share_repeats(temporaries: list, outputs: list, taken: set,
                  limit: int | None = None) -> tuple[list, list]:
    """Name each work expression that would be printed more than once: defined once, as a new
    temporary before the first line that uses it. A line's whole expression stays that line's.
    With a `limit`, also `cut_deep` in the same pass (one walk of a long program, not two)."""
    lines = [*temporaries, *outputs]
    table = _Structure()
    roots = [table.intern(expr) for _, expr in lines]
    inside = [0] * len(table.children)  # how often printed inside another printed expression
    as_root = [0] * len(table.children)
    for r in roots:
        as_root[r] += 1
    named = [False] * len(table.children)
    # Parents have larger numbers than their children: count from the outside in, so that a
    # repeated expression given a name is printed once, and its insides with it.
    for s in range(len(table.children) - 1, -1, -1):
        named[s] = table.work[s] and inside[s] >= 1 and inside[s] + as_root[s] >= 2
        printed = as_root[s] + 1 if named[s] else inside[s] + as_root[s]
        if printed:
            for c in table.children[s]:
                inside[c] += printed
    if not any(named):
        return (temporaries, outputs) if limit is None else \
            cut_deep(temporaries, outputs, taken, limit)
    fresh = _Fresh(taken)
    name_of: dict[int, str] = {}
    cut = _Cutter(fresh, limit)

    def replace(e, emit):
        name = name_of.get(table.of(e))  # defined already: its name, without looking inside
        return (None, False) if name is None else (ast.Name(name), True)

    def define(e, rebuilt, emit):
        s = table.of(e)
        if not named[s]:
            return rebuilt if limit is None else cut(e, rebuilt, emit)
        name_of[s] = temp = fresh()
        emit((temp, rebuilt))
        return ast.Name(temp)

    return _rewrite(lines, len(temporaries), replace, define)


def cut_deep(temporaries: list, outputs: list, taken: set,
             limit: int = MAX_PRINT_HEIGHT) -> tuple[list, list]:
    """Cut every work expression that nests `limit` levels deep into a temporary (a sum of 500
    terms becomes a few lines of partial sums, added in the same order)."""
    def keep(e, emit):
        return None, False

    return _rewrite([*temporaries, *outputs], len(temporaries), keep,
                    _Cutter(_Fresh(taken), limit))


class _Cutter:
    """`define` for `_rewrite` that names a work expression nesting `limit` levels deep."""

    def __init__(self, fresh, limit: int):
        self.fresh, self.limit = fresh, limit
        self.height: dict[int, int] = {}  # id of a rewritten node -> how deeply it nests
        self.alive: list = []  # keeps the ids in `height` unique

    def __call__(self, e, rebuilt, emit):
        height = self.height
        h = 1 + max((height.get(id(c), type(c) in _LEAVES) for c in _children(rebuilt)),
                    default=0)
        if h >= self.limit and isinstance(rebuilt, _WORK) and not _trivial(rebuilt):
            temp = self.fresh()
            emit((temp, rebuilt))
            rebuilt, h = ast.Name(temp), 0
        height[id(rebuilt)] = h
        self.alive.append(rebuilt)
        return rebuilt


def _rewrite(lines: list, n_temporaries: int, replace, define) -> tuple[list, list]:
    """Rebuild every line bottom-up, without recursion and without changing the given trees.

    `replace(e, emit)` -> (expr, True) stands in for a subexpression without looking inside it;
    `define(e, rebuilt, emit)` -> what a subexpression becomes once its children are rebuilt
    (`rebuilt`). `emit((name, expr))` adds a temporary before the line being rebuilt. A line's
    whole expression is rebuilt but never replaced."""
    temps, outs = [], []
    done: dict[int, ast.Expr] = {}  # id of a given subexpression -> what it became
    keep_alive = []  # the ids in `done` stay unique while it lives
    for index, (name, expr) in enumerate(lines):
        emit = temps.append
        # Leaves (names, numbers) are never replaced: they stand for themselves unvisited.
        stack = [(c, False) for c in _children(expr) if type(c) not in _LEAVES]
        while stack:
            e, ready = stack.pop()
            if id(e) in done:
                continue
            if not ready:
                stand_in, hit = replace(e, emit)
                if hit:
                    done[id(e)] = stand_in
                    keep_alive.append(e)
                    continue
                stack.append((e, True))
                stack.extend((c, False) for c in _children(e)
                             if type(c) not in _LEAVES and id(c) not in done)
                continue
            done[id(e)] = define(e, _with_children(e, [done.get(id(c), c) for c in _children(e)]),
                                 emit)
            keep_alive.append(e)
        line = (name, _with_children(expr, [done.get(id(c), c) for c in _children(expr)]))
        (temps if index < n_temporaries else outs).append(line)
    return temps, outs


class _Fresh:
    """Hands out temporary names `t0`, `t1`, ... that are not in `taken` (and takes them)."""

    def __init__(self, taken: set):
        self.taken = taken
        self.counter = 0

    def __call__(self) -> str:
        while f"t{self.counter}" in self.taken:
            self.counter += 1
        name = f"t{self.counter}"
        self.taken.add(name)
        return name


class _Structure:
    """Hash-consing of syntax trees: `intern(e)` numbers `e` and every part of it so that two
    parts get the same number exactly when they are the same expression. Numbers grow from the
    leaves up, so a node's number is larger than its children's."""

    def __init__(self):
        self.numbers: dict[tuple, int] = {}
        self.memo: dict[int, int] = {}  # id of a node -> its number
        self.alive: list = []  # keeps the ids in `memo` unique
        self.children: list[tuple[int, ...]] = []  # number -> numbers of its replaceable children
        self.work: list[bool] = []  # number -> worth a name

    def of(self, e) -> int:
        return self.memo[id(e)]

    def intern(self, root) -> int:
        memo, numbers, alive = self.memo, self.numbers, self.alive
        stack = [(root, None)]
        while stack:
            e, parts = stack.pop()
            if id(e) in memo:
                continue
            if parts is None:  # first visit: its parts first, then itself with them
                parts = _parts(e)
                if parts:
                    stack.append((e, parts))
                    for p in parts:
                        if p is None or id(p) in memo:
                            continue
                        if type(p) in _LEAVES:  # numbered here: no visit of its own
                            self._number(p, ())
                        else:
                            stack.append((p, None))
                    continue
            self._number(e, tuple([None if p is None else memo[id(p)] for p in parts]))
        return memo[id(root)]

    def _number(self, e, part_numbers: tuple) -> None:
        key = _shape_key(e, part_numbers)
        number = self.numbers.get(key)
        if number is None:
            number = self.numbers[key] = len(self.children)
            memo = self.memo
            self.children.append(tuple([memo[id(c)] for c in _children(e)]))
            self.work.append(isinstance(e, _WORK) and not _trivial(e))
        self.memo[id(e)] = number
        self.alive.append(e)


def _parts(e) -> list:
    """Every subexpression that tells `e` apart, in a fixed order (None for an absent bound)."""
    if isinstance(e, ast.BinOp):
        return [e.left, e.right]
    if isinstance(e, (ast.UnaryOp, ast.Attribute)):
        return [e.operand]
    if isinstance(e, ast.Index):
        return [e.operand, *e.items]
    if isinstance(e, ast.Slice):
        return [e.lo, e.hi]
    if isinstance(e, ast.Tuple):
        return list(e.items)
    if isinstance(e, ast.Call):
        return [*e.args, *(v for _, v in e.kwargs)]
    return []


def _shape_key(e, parts: tuple) -> tuple:
    if isinstance(e, ast.Number):
        return ("number", repr(float(e.value)))  # repr: -0.0 is not 0.0, nan is nan
    if isinstance(e, ast.Name):
        return ("name", e.id)
    if isinstance(e, ast.String):
        return ("string", e.value)
    if isinstance(e, ast.NoneLit):
        return ("none",)
    if isinstance(e, (ast.BinOp, ast.UnaryOp)):
        return (type(e).__name__, e.op, parts)
    if isinstance(e, ast.Attribute):
        return ("attribute", e.attr, parts)
    if isinstance(e, (ast.Index, ast.Slice, ast.Tuple)):
        return (type(e).__name__, parts)
    if isinstance(e, ast.Call):
        return ("call", e.func, len(e.args), tuple(k for k, _ in e.kwargs), parts)
    return ("unknown", id(e))  # equal to nothing else


def _trivial(e) -> bool:
    return (isinstance(e, ast.Call) and e.func in _CONSTANT_CALLS) or \
        (isinstance(e, ast.UnaryOp) and isinstance(e.operand, (ast.Name, ast.Number)))


def _children(e):
    """The subexpressions that may be replaced by a name (not dimensions, strings, axes)."""
    if isinstance(e, ast.BinOp):
        return [e.left, e.right]
    if isinstance(e, (ast.UnaryOp, ast.Attribute, ast.Index)):
        return [e.operand]
    if isinstance(e, ast.Call) and e.func not in _CONSTANT_CALLS:  # `eye(n + 1)`: dimensions
        return [a for a in e.args if not isinstance(a, (ast.String, ast.Tuple))]
    return []


def _with_children(e, children: list):
    """`e` with its replaceable children swapped for `children`: `e` itself when none changed."""
    old = _children(e)
    if all(a is b for a, b in zip(old, children)):
        return e
    if isinstance(e, ast.BinOp):
        return ast.BinOp(e.op, *children)
    if isinstance(e, ast.UnaryOp):
        return ast.UnaryOp(e.op, children[0])
    if isinstance(e, ast.Attribute):
        return ast.Attribute(children[0], e.attr)
    if isinstance(e, ast.Index):
        return ast.Index(children[0], e.items)
    new = iter(children)
    call = ast.Call(e.func, tuple(a if isinstance(a, (ast.String, ast.Tuple)) else next(new)
                                  for a in e.args), e.kwargs)
    if hasattr(e, "operand_shapes"):
        call.operand_shapes = e.operand_shapes
    return call


def names_in(expr) -> set[str]:
    """Every name an expression reads."""
    found, stack = set(), [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Name):
            found.add(e.id)
        stack.extend(_children(e))
        if isinstance(e, ast.Index):
            stack.extend(i for i in e.items if isinstance(i, ast.Expr))
    return found
