"""Common subexpressions of the vectorized program become temporaries, and so do expressions
nested too deeply to print.

The IR shares every node, but one IR product can be written into several array expressions
(`t8 * t9` in each of an RNN's weight gradients), so the vectorized program is searched once
more for repeated subexpressions. Subexpressions are compared by structure, never by their
printed text: each node gets an integer, computed bottom-up once per node, that two nodes share
exactly when they are the same expression (hash-consing). By the same numbers, a stack whose
rows are a run of another stack's rows is read as a slice of it (`big[1:]`), not built again.
Every pass here is linear in the size of the program (the stacks, few, are matched among
themselves) and uses an explicit stack, however deeply an expression nests.
"""
from __future__ import annotations

import re

from ..parse import ast

# Expressions with no parts: never replaced, and told apart by their value alone.
_LEAVES = frozenset({ast.Name, ast.Number, ast.String, ast.NoneLit})
# Calls whose arguments are only dimensions (`ones(1)`, `eye(n)`) cost nothing to repeat.
_CONSTANT_CALLS = {"ones", "zeros", "eye", "size"}
# Calls whose arguments after the first are dimensions (`dilate(x, 2, 2 * n - 1)`): never a
# temporary, which would be no dimension where it is read.
_FIRST_ONLY = {"dilate"}
# An expression nesting deeper than this is cut into temporaries, so that every printer (each
# recursive, a few frames per level) prints it whole, with no elision and no recursion trouble,
# and its text parses back under the parser's bracket nesting limit.
MAX_PRINT_HEIGHT = 40
# The names the vectorizer gives its own temporaries.
_TEMPORARY = re.compile(r"t\d+")


def share_repeats(temporaries: list, outputs: list, taken: set, limit: int | None = None,
                  rewrite=None) -> tuple[list, list]:
    """Name each work expression that would be printed more than once: defined once, as a new
    temporary before the first line that uses it. A line's whole expression stays that line's.
    With a `limit`, also `cut_deep` in the same pass; with `rewrite` (a function of one part whose
    children are rewritten already: tidy's rules), every part of every line is rewritten by it on
    the way too. One walk of a long program, not three."""
    lines = [*temporaries, *outputs]
    table = _Structure()
    roots = [table.intern(expr) for _, expr in lines]
    named = table.repeated(roots)
    if limit is None and rewrite is None and not any(named):
        return temporaries, outputs
    return _rewrite(table, lines, roots, len(temporaries), named, _Fresh(taken), limit, rewrite)


def finish(temporaries: list, outputs: list, reserved: set, limit: int | None = None,
           rewrite=None) -> tuple[list, list]:
    """`share_repeats` (with `limit` and `rewrite`) of a whole program, which is finished in the
    same walk: the temporaries no output needs are dropped first (batching can leave one
    unread), a stack whose rows are a run of another's that is built no later is read as its
    slice (`_stack_slices`), and ours (`t<k>`, not in `reserved`: the user's names) are named
    t0, t1, ... in the order they are defined, new ones included (sharing and cutting add
    some); one of ours that repeats an earlier line is that line's name."""
    lines = [*temporaries, *outputs]
    table = _Structure()
    roots = [table.intern(expr) for _, expr in lines]
    live = table.live(lines, roots, len(temporaries))
    if live is not None:  # unread temporaries: gone before they count as uses
        n_temporaries = sum(live[:len(temporaries)])
        lines = [line for line, keep in zip(lines, live) if keep]
        roots = [root for root, keep in zip(roots, live) if keep]
    else:
        n_temporaries = len(temporaries)
    slices = _stack_slices(table, roots, n_temporaries)
    if slices:  # numbered afresh: what is printed how often has changed
        lines = _with_slices(table, lines, roots, slices)
        table = _Structure()
        roots = [table.intern(expr) for _, expr in lines]
    named = table.repeated(roots)
    return _rewrite(table, lines, roots, n_temporaries, named, _Numbering(reserved), limit,
                    rewrite, reserved)


def _stack_slices(table: "_Structure", roots: list, n_temporaries: int) -> dict:
    """small -> (big, window) for each `stack(...)` whose rows are a run of another stack's
    rows (the same expressions, scaling included, in the same order) that the program builds
    in the same statement or an earlier one (the outputs are one statement): it is read as
    `big[a:b]`, not built again (an RNN's `dW` stacks steps 1..T-1 of the rows `dU` stacks).
    A stack is only ever sliced from one the program builds anyway."""
    kids, rep = table.kids, table.rep
    stacks = [s for s, e in enumerate(rep) if type(e) is ast.Call and e.func == "stack" and
              not e.kwargs and 0 < len(kids[s]) == len(e.args)]
    rows_of = {}  # row -> the stacks that have it
    for s in stacks:
        for r in kids[s]:
            rows_of.setdefault(r, set()).add(s)
    if not any(len(rows_of[kids[s][0]]) > 1 for s in stacks):
        return {}  # no stack shares its first row with another: most programs end here
    # The statement each structure is first built in.
    first = [None] * len(kids)
    for index, root in enumerate(roots):
        statement = min(index, n_temporaries)
        todo = [root]
        while todo:
            s = todo.pop()
            if first[s] is None:
                first[s] = statement
                todo += kids[s]
    # Longest first: a stack is sliced from one that is itself built, never from a slice.
    built, slices = [], {}
    for small in sorted((s for s in stacks if first[s] is not None),
                        key=lambda s: -len(kids[s])):
        rows, n = kids[small], len(kids[small])
        for big in built:
            whole = kids[big]
            if first[big] > first[small] or big not in rows_of[rows[0]]:
                continue
            at = next((a for a in range(len(whole) - n + 1) if whole[a:a + n] == rows), None)
            if at is not None and not _inside(kids, small, big):
                slices[small] = (big, ast.Slice(ast.Number(float(at)) if at else None,
                                                ast.Number(float(at + n))
                                                if at + n < len(whole) else None))
                break
        else:
            built.append(small)
    return slices


def _inside(kids: list, small: int, big: int) -> bool:
    """Whether structure `small` is part of `big` (its parts are numbered below it)."""
    todo, seen = [big], set()
    while todo:
        s = todo.pop()
        if s == small:
            return True
        if s > small and s not in seen:
            seen.add(s)
            todo += kids[s]
    return False


def _with_slices(table: "_Structure", lines: list, roots: list, slices: dict) -> list:
    """`lines` rebuilt with each stack of `slices` written as the slice of its big one."""
    kids, rep = table.kids, table.rep
    result: list = [None] * len(kids)
    rebuilt = []
    for (name, _), root in zip(lines, roots):
        todo = [root]
        while todo:
            s = todo[-1]
            if result[s] is not None:
                todo.pop()
                continue
            swap = slices.get(s)
            parts = (swap[0],) if swap else kids[s]
            waiting = [c for c in parts if result[c] is None]
            if waiting:
                todo += waiting
                continue
            todo.pop()
            result[s] = ast.Index(result[swap[0]], (swap[1],)) if swap else \
                _rebuilt(rep[s], [result[c] for c in kids[s]])
        rebuilt.append((name, result[root]))
    return rebuilt


def cut_deep(temporaries: list, outputs: list, taken: set,
             limit: int = MAX_PRINT_HEIGHT) -> tuple[list, list]:
    """Cut every work expression that nests `limit` levels deep into a temporary (a sum of 500
    terms becomes a few lines of partial sums, added in the same order)."""
    lines = [*temporaries, *outputs]
    table = _Structure()
    roots = [table.intern(expr) for _, expr in lines]
    return _rewrite(table, lines, roots, len(temporaries), [False] * len(table.kids),
                    _Fresh(taken), limit, None)


def _rewrite(table: "_Structure", lines: list, roots: list, n_temporaries: int, named: list,
             fresh, limit: int | None, rewrite, reserved: set | None = None
             ) -> tuple[list, list]:
    """Rebuild every line children first, without recursion and without changing the given
    trees: a `named` structure becomes a temporary (named by `fresh()`) where it is first met
    (defined before the line being rebuilt) and its name everywhere after; with a `limit`, a
    work expression that would nest `limit` levels deep becomes a temporary too; `rewrite`, if
    given, rewrites each rebuilt part. A line's whole expression is rebuilt but never replaced.
    With `reserved`, each temporary `t<k>` not in it is renamed `fresh()` where it is defined,
    and read by that name after. The work a temporary's line computes is read by its name in
    every later line; an output that a later output reads too becomes a temporary.

    Each structure is rebuilt once, however many times it occurs: one that occurs twice outside
    line roots is a name by then, unless it does no work (`t0[1]`, `x.T`), and then it is the
    same expression wherever it is."""
    kids, rep, kind = table.kids, table.rep, table.kind
    # What each structure became: None while it is not rebuilt yet, False for a leaf (a name
    # or a number stands for itself: the parent keeps its own child object).
    result: list = [False if t in _LEAVES else None for t in map(type, rep)]
    # How deeply that nests as built (before `rewrite`): 1 for a leaf or a name, 0 for a cut.
    height = [1] * len(kids)
    # Whether that is a name or a number: a minus of one does no work (`-x`) and is not cut.
    plain = [t is ast.Name or t is ast.Number for t in map(type, rep)]
    temps, outs = [], []
    for index, ((name, expr), root) in enumerate(zip(lines, roots)):
        # Structure s is pushed as s to be expanded, as ~s (negative) once its kids are done.
        stack = [c for c in kids[root] if result[c] is None]
        while stack:
            s = stack.pop()
            if s >= 0:
                if result[s] is None:
                    stack.append(~s)
                    stack += [c for c in kids[s] if result[c] is None]
                continue
            s = ~s
            if result[s] is not None:
                continue
            e, ks = rep[s], kids[s]
            if type(e) is ast.BinOp:  # most parts: rebuilt here, not by `_rebuilt`
                a, b = ks
                left, right = result[a] or e.left, result[b] or e.right
                node = e if left is e.left and right is e.right else \
                    ast.BinOp(e.op, left, right, matrix=e.matrix)
                h = 1 + (height[a] if height[a] > height[b] else height[b])
            else:
                node = _rebuilt(e, [result[c] for c in ks])
                h = 1 + max([height[c] for c in ks]) if ks else 1
            if rewrite is not None:
                node = rewrite(node)
            if named[s]:
                temp = fresh()
                temps.append((temp, node))
                result[s], plain[s] = ast.Name(temp), True
                continue
            if limit is not None:
                if h >= limit and (kind[s] == 1 or kind[s] == 2 and not plain[ks[0]]):
                    temp = fresh()
                    temps.append((temp, node))
                    result[s], height[s], plain[s] = ast.Name(temp), 0, True
                    continue
                height[s] = h
            result[s] = node
        if type(result[root]) is ast.Name:  # renamed, or an earlier line computes it
            line = result[root]
            if index < n_temporaries and type(expr) is not ast.Name and reserved is not None \
                    and name not in reserved and _TEMPORARY.fullmatch(name):
                # One of ours that repeats an earlier line (a stack written alike for a weight's
                # and a bias's gradient): read as that line's name, not computed again.
                read = table.numbers.get(_name_key(name))
                if read is not None:
                    result[read] = line
                continue
        else:
            line = _rebuilt(expr, [result[c] for c in kids[root]])
            if rewrite is not None:
                line = rewrite(line)
        if index >= n_temporaries:
            if named[root] and result[root] is None:  # a later output reads it too
                temp = fresh()
                temps.append((temp, line))
                line = result[root] = ast.Name(temp)
                plain[root] = True
            outs.append((name, line))
            continue
        if reserved is not None and name not in reserved and _TEMPORARY.fullmatch(name):
            new = fresh()
            # Every later line reads it by its new name: it is read after it is defined.
            read = table.numbers.get(_name_key(name))
            if read is not None and new != name:
                result[read] = ast.Name(new)
            name = new
        temps.append((name, line))
        if result[root] is None and table.work[root]:  # the same work later reads this name
            result[root], plain[root] = ast.Name(name), True
    return temps, outs


def _rebuilt(e, new: list):
    """`e` with its replaceable children swapped for `new` (False: that child kept as it is):
    `e` itself when none changed."""
    t = type(e)
    if t is ast.BinOp:
        left, right = new
        left = left or e.left
        right = right or e.right
        if left is e.left and right is e.right:
            return e
        return ast.BinOp(e.op, left, right, matrix=e.matrix)
    if not new:
        return e
    if t is ast.Call:
        old = _children(e)
        children = [n or o for n, o in zip(new, old)]
        return _with_children(e, children)
    (child,) = new
    if not child or child is e.operand:
        return e
    if t is ast.UnaryOp:
        return ast.UnaryOp(e.op, child)
    if t is ast.Attribute:
        return ast.Attribute(child, e.attr)
    return ast.Index(child, e.items)


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


class _Numbering:
    """Hands out the names t0, t1, ... in turn, skipping `reserved`."""

    def __init__(self, reserved: set):
        self.reserved = reserved
        self.counter = 0

    def __call__(self) -> str:
        while f"t{self.counter}" in self.reserved:
            self.counter += 1
        self.counter += 1
        return f"t{self.counter - 1}"


class _Structure:
    """Hash-consing of syntax trees: `intern(e)` numbers `e` and every part of it so that two
    parts get the same number exactly when they are the same expression. Numbers grow from the
    leaves up, so a node's number is larger than its children's."""

    def __init__(self):
        self.numbers: dict[tuple, int] = {}
        self.memo: dict[int, int] = {}  # id of a node -> its number
        self.kids: list[tuple[int, ...]] = []  # number -> numbers of its replaceable children
        self.work: list[bool] = []  # number -> worth a name
        # number -> 1 for work (a product, a call), 2 for a sign (work unless of a name or a
        # number), 0 for the rest (views, constants, leaves): what a cut may name.
        self.kind: list[int] = []
        self.rep: list = []  # number -> the first node seen with it

    def intern(self, root) -> int:
        """`root`'s number (every part of it numbered too). Numbers are kept by the id of a
        part: the caller keeps `root` alive while it uses them."""
        memo, numbers, kids, rep = self.memo, self.numbers, self.kids, self.rep
        number = self._number
        stack = [root]
        while stack:  # a part stays on the stack until its parts are numbered
            e = stack[-1]
            if id(e) in memo:
                stack.pop()
                continue
            if type(e) is ast.BinOp:  # most parts: numbered here, not by `_number`
                left, right = e.left, e.right
                a, b = memo.get(id(left)), memo.get(id(right))
                if a is None:
                    if type(left) in _LEAVES:
                        a = number(left)
                    else:
                        stack.append(left)
                if b is None:
                    if type(right) in _LEAVES:
                        b = number(right)
                    else:
                        stack.append(right)
                if a is None or b is None:
                    continue
                key = (0, e.op, a, b)
                s = numbers.get(key)
                if s is None:
                    s = numbers[key] = len(kids)
                    kids.append((a, b))
                    self.kind.append(1)
                    self.work.append(True)
                    rep.append(e)
                memo[id(e)] = s
                stack.pop()
                continue
            waiting = False
            for p in _parts(e):
                if p is not None and id(p) not in memo:
                    if type(p) in _LEAVES:  # numbered here: no visit of its own
                        number(p)
                    else:
                        stack.append(p)
                        waiting = True
            if not waiting:
                stack.pop()
                number(e)
        return memo[id(root)]

    def live(self, lines: list, roots: list, n_temporaries: int) -> list[bool] | None:
        """Whether each line is needed: an output, or a temporary a needed line reads. None
        when every one is (so when every temporary is read by some line: the last unread one
        would be read by none)."""
        numbers = self.numbers
        if all(_name_key(name) in numbers for name, _ in lines[:n_temporaries]):
            return None
        temporary = {numbers.get(_name_key(name)): name for name, _ in lines[:n_temporaries]}
        kids, needed, seen = self.kids, set(), bytearray(len(self.kids))
        live = [False] * len(lines)
        for index in range(len(lines) - 1, -1, -1):
            if index < n_temporaries and lines[index][0] not in needed:
                continue
            live[index] = True
            stack = [roots[index]]
            while stack:
                s = stack.pop()
                if seen[s]:
                    continue
                seen[s] = 1
                if s in temporary:
                    needed.add(temporary[s])
                stack += kids[s]
        return live

    def repeated(self, roots: list) -> list[bool]:
        """number -> whether it is named: work that would be printed more than once, and not
        only as a line's whole expression. Parents have larger numbers than their children:
        counted from the outside in, so that a repeated expression given a name is printed
        once, and its insides with it."""
        kids, work = self.kids, self.work
        inside = [0] * len(kids)  # how often printed inside another printed expression
        as_root = [0] * len(kids)
        for r in roots:
            as_root[r] += 1
        named = [False] * len(kids)
        for s in range(len(kids) - 1, -1, -1):
            printed = inside[s] + as_root[s]
            if not printed:
                continue
            if work[s] and inside[s] and printed >= 2:
                named[s] = True
                printed = as_root[s] + 1
            for c in kids[s]:
                inside[c] += printed
        return named

    def _number(self, e) -> int:
        memo = self.memo
        t = type(e)
        kind = 0
        if t is ast.BinOp:
            a, b = memo[id(e.left)], memo[id(e.right)]
            key, kids, kind = (0, e.op, a, b), (a, b), 1
        elif t is ast.Number:
            v = float(e.value)
            # By value, but by repr where values mislead: -0.0 is not 0.0, and nan is nan.
            key, kids = (1, v) if v == v and v else (1, repr(v)), ()
        elif t is ast.Name:
            key, kids = _name_key(e.id), ()
        elif t is ast.Call:
            numbers = tuple([memo[id(p)] for p in _parts(e)])
            key = (3, e.func, len(e.args), tuple([k for k, _ in e.kwargs]), numbers,
                   getattr(e, "broadcast", False), _shapes(e))
            if e.func in _CONSTANT_CALLS:  # `eye(n + 1)`: dimensions
                kids = ()
            else:
                kids, kind = tuple([memo[id(a)] for a in _tensor_args(e)]), 1
        elif t is ast.UnaryOp:
            a = memo[id(e.operand)]
            key, kids, kind = (4, e.op, a), (a,), 2
        elif t is ast.Attribute:
            a = memo[id(e.operand)]
            key, kids = (5, e.attr, a), (a,)
        elif t is ast.Index:
            a = memo[id(e.operand)]
            key, kids = (6, a, tuple([memo[id(i)] for i in e.items])), (a,)
        elif t is ast.Slice or t is ast.Tuple:
            key, kids = (7, t, tuple([None if p is None else memo[id(p)] for p in _parts(e)])), ()
        elif t is ast.String:
            key, kids = (8, e.value), ()
        elif t is ast.NoneLit:
            key, kids = (9,), ()
        else:
            key, kids = (10, id(e)), ()  # equal to nothing else
        s = self.numbers.get(key)
        if s is None:
            s = self.numbers[key] = len(self.kids)
            self.kids.append(kids)
            self.kind.append(kind)
            self.work.append(kind == 1 or kind == 2 and
                             type(e.operand) is not ast.Name and type(e.operand) is not ast.Number)
            self.rep.append(e)
        memo[id(e)] = s
        return s


def _name_key(name: str) -> tuple:
    """The structure key of the name `name`."""
    return (2, name)


def _shapes(call) -> tuple | None:
    """The operand shapes an einsum call carries for the code generator: part of what it is."""
    shapes = getattr(call, "operand_shapes", None)
    return None if shapes is None else tuple(shapes)


def _parts(e) -> tuple:
    """Every subexpression that tells `e` apart, in a fixed order (None for an absent bound)."""
    t = type(e)
    if t is ast.BinOp:
        return (e.left, e.right)
    if t is ast.Call:
        return (*e.args, *[v for _, v in e.kwargs]) if e.kwargs else e.args
    if t is ast.UnaryOp or t is ast.Attribute:
        return (e.operand,)
    if t is ast.Index:
        return (e.operand, *e.items)
    if t is ast.Slice:
        return (e.lo, e.hi, e.step)
    if t is ast.Tuple:
        return e.items
    return ()


def _children(e):
    """The subexpressions that may be replaced by a name (not dimensions, strings, axes)."""
    t = type(e)
    if t is ast.BinOp:
        return [e.left, e.right]
    if t is ast.UnaryOp or t is ast.Attribute or t is ast.Index:
        return [e.operand]
    if t is ast.Call and e.func not in _CONSTANT_CALLS:  # `eye(n + 1)`: dimensions
        return _tensor_args(e)
    return []


def _tensor_args(e: ast.Call) -> list:
    """A call's arguments that are tensors (not strings, axes or dimensions)."""
    args = e.args[:1] if e.func in _FIRST_ONLY else e.args
    return [a for a in args if not isinstance(a, (ast.String, ast.Tuple))]


def _with_children(e, children: list):
    """`e` with its replaceable children swapped for `children`: `e` itself when none changed."""
    t = type(e)
    if t is ast.BinOp:
        left, right = children
        return e if left is e.left and right is e.right else \
            ast.BinOp(e.op, left, right, matrix=e.matrix)
    old = _children(e)
    if all(a is b for a, b in zip(old, children)):
        return e
    if t is ast.UnaryOp:
        return ast.UnaryOp(e.op, children[0])
    if t is ast.Attribute:
        return ast.Attribute(children[0], e.attr)
    if t is ast.Index:
        return ast.Index(children[0], e.items)
    new, tensors = iter(children), {id(a) for a in old}
    call = ast.Call(e.func, tuple(next(new) if id(a) in tensors else a for a in e.args),
                    e.kwargs)
    if hasattr(e, "operand_shapes"):
        call.operand_shapes = e.operand_shapes
    return call


def names_in(expr) -> set[str]:
    """Every name an expression reads."""
    found, stack = set(), [expr]
    while stack:
        e = stack.pop()
        t = type(e)
        if t is ast.Name:
            found.add(e.id)
        elif t is ast.BinOp:
            stack += (e.left, e.right)
        elif t is ast.Index:
            stack.append(e.operand)
            stack += [i for i in e.items if isinstance(i, ast.Expr)]
        elif t is not ast.Number:
            stack += _children(e)
    return found
