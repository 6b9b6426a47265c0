"""Batching across unrolled steps: the same computation, once per step, done once.

The lesson of Theano's `scan` gradients: the backward pass of a loop accumulates per-step
products (`W += A[t] @ B[t]`), and one product of the stacked operands is much faster.

An unrolled network repeats one subgraph per step (`U @ X[t]`, `softmax(Wy @ h_t + by)`,
`1 - h_t**2`). Each copy is a few small array operations, so the steps cost call overhead rather
than arithmetic. This pass finds *lane groups*, nodes built the same way from different per-step
inputs, and computes each group once as a node with one more, leading, axis: a lane per step. In
Einstein form that is one more index on every node of the group. Per-step inputs are sliced (rows
of one tensor, `X[t]`) or stacked (`stack(h_0, h_1, ...)`), every copy becomes a row of the batched
node, and a sum of all copies (`sum_t outer(d_t, h_t)`) becomes a contraction over the lane axis.

A group is batched only when none of its inputs depends on one of its members: the recurrence
(`h_t` from `h_{t-1}`) stays a sequence of steps.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..ir import build
from ..ir.dims import Dim
from ..ir.nodes import Add, Contract, Delta, Map, Node, Prim, Unit, topological
from ..lower import linear
from ..lower.convolution import is_convolution
from .contraction import row_window

# Fewer copies than this are left alone: stacking costs a copy, batching pays per saved call.
MIN_LANES = 3
# Stack per-step inputs only for a batch that multiplies them with a shared tensor or applies a
# primitive (a test turns this off to batch every valid group).
STACK_ONLY_FOR_PRODUCTS = True
# A cycle after batching is a bug; tests raise it, users get the unbatched (correct) program.
STRICT = False
# Elementwise arithmetic, not worth a stack of per-step inputs on its own (a named function
# such as sech2 or exp is: a call per step costs more than the copy).
_ARITHMETIC = frozenset({"div", "pow", "where"})
# A group whose picks' places do not step evenly is split into at most this many parts
# with every k-th of its members (`_progressions`).
MAX_INTERLEAVED = 8
# Templates nest no deeper than this (a deeper per-step subgraph is cut into stacked inputs).
MAX_DEPTH = 64


def batch_lanes(roots: dict[str, Node], order: list[Node] | None = None,
                only: set[int] | None = None) -> dict[str, Node]:
    """`roots` with every valid lane group computed once, as a batched node (`roots` itself,
    the same dict, when there is none). `order`: `topological(*roots.values())`, when the
    caller has it already. `only`: the ids of the nodes that may be batched (all where None):
    a second pass batches what a later one made per step, and nothing it batched already."""
    order = topological(*roots.values()) if order is None else order
    # Steps are told apart by their unit vectors (`X[t]`, a row of a stack): without one, no
    # node varies by step, and there is nothing to batch.
    if not any(type(n) is Unit and n.position.is_concrete for n in order):
        return roots
    return _Batcher(roots, order, only).run()


class _Batcher:
    def __init__(self, roots: dict[str, Node], order: list[Node] | None = None,
                 only: set[int] | None = None):
        self.roots = roots
        self.only = only
        self.order = topological(*roots.values()) if order is None else order
        self.index = {id(n): i for i, n in enumerate(self.order)}
        self.users: dict[int, list[Node]] = defaultdict(list)
        for n in self.order:
            for c in n.children():
                self.users[id(c)].append(n)
        # A plain dict: a Counter's missing key is a Python-level call, and `_hole` asks often.
        self.uses = {k: len(v) for k, v in self.users.items()}
        for n in roots.values():
            self.uses[id(n)] = self.uses.get(id(n), 0) + 1
        self.root_ids = {id(n) for n in roots.values()}
        self.varying: dict[int, bool] = {}
        self.selections: set[int] = set()  # ids of the varying nodes `_cheap` holds for
        self.template: dict[int, int] = {}
        self.signature: dict[int, tuple] = {}
        # id(old member) -> (batched node, its row); rebuilt nodes read picks of the rows.
        self.rows: dict[int, tuple[Node, int]] = {}
        # ... and every per-step input stacked so far (a later batch reads the same rows).
        self.placed: dict[int, tuple[Node, int]] = {}
        # A position in a topological order of the graph as batching rewrites it: old nodes
        # keep their index, a batch goes between its inputs and the users of its members.
        self.position: dict[int, float] = {}
        self.items: dict[int, list[Node]] = {}  # id(stack) -> what it stacks
        # id(old node) -> positions of the batches that read it (directly or in a stack).
        self.consumers: dict[int, list[float]] = defaultdict(list)
        self.memo: dict[int, Node] = {}
        self.lane_sums: dict[int, dict] = {}  # id of a sum being rebuilt -> its `_lane_sums`
        self.stack_memo: dict[tuple[int, ...], Node] = {}

    # -- finding groups ---------------------------------------------------------------------

    def run(self) -> dict[str, Node]:
        pending = self._groups()
        while pending:  # a group waiting for inputs that a later batch stacks is tried again
            left = [g for g in pending if not self._batch(g)]
            if len(left) == len(pending):
                break
            pending = left
        if not self.rows:
            return self.roots
        try:
            return {name: self.rebuild(node) for name, node in self.roots.items()}
        except _Cycle:
            if STRICT:
                raise
            return self.roots  # batching is an optimization: keep the program correct

    def _is_lane(self, n: Node) -> bool:
        return type(n) is Unit and n.position.name is None

    def _cheap(self, n: Node) -> bool:
        """A selection (`X[t]`): a contraction of fixed operands with per-step unit vectors."""
        return id(n) in self.selections

    def _selection(self, n: Node) -> bool:
        """`_cheap`, worked out once per node (by `_groups`, once its children's `varying` are)."""
        if type(n) is not Contract:
            return False
        operands = n.operands
        return any([self._is_lane(c) for c, _ in operands]) and \
            all([self._is_lane(c) or not self.varying[id(c)] for c, _ in operands])

    def _hole(self, n: Node) -> bool:
        """A per-step input used elsewhere too: stacked, not recomputed inside the batch."""
        return self.varying[id(n)] and self.uses.get(id(n), 0) > 1 and not self._is_lane(n) and \
            id(n) not in self.selections

    def _groups(self) -> list[list[Node]]:
        keys: dict[tuple, int] = {}
        by_template: dict[int, list[Node]] = defaultdict(list)
        depth: dict[int, int] = {}
        varying_of, template, signature = self.varying, self.template, self.signature
        # Keys name nodes and dimensions by id (both are interned, so equal means identical):
        # their own hashes are Python methods, and every varying node is keyed.
        for n in self.order:
            children = n.children()
            lane = self._is_lane(n)
            varying = varying_of[id(n)] = lane or any([varying_of[id(c)] for c in children])
            if not varying:
                continue
            if self._selection(n):
                self.selections.add(id(n))
            if lane:
                key, sig, depth[id(n)] = ("lane", _ids(n.shape)), (n.position.offset,), 0
            else:
                parts, sig, d = [], (), 0
                for c in children:
                    if not varying_of[id(c)]:
                        parts.append(("same", id(c)))
                    elif self._hole(c) or depth[id(c)] >= MAX_DEPTH:
                        parts.append(("input", _ids(c.shape)))
                        sig += (c,)
                    else:
                        parts.append(template[id(c)])
                        sig += signature[id(c)]
                        d = max(d, depth[id(c)] + 1)
                key, depth[id(n)] = (type(n), _fields(n), tuple(parts)), d
                sig = sig[:16]
            t = template[id(n)] = keys.setdefault(key, len(keys))
            signature[id(n)] = sig
            if children and id(n) not in self.selections and (
                    self.only is None or id(n) in self.only):
                by_template[t].append(n)
        groups = [g for g in by_template.values() if len(g) >= MIN_LANES]
        # Bottom up; sums of outer products last, to read rows that other batches stacked.
        groups.sort(key=lambda g: (_expands(g[0]), min(self.index[id(n)] for n in g)))
        return groups

    # -- batching one group -----------------------------------------------------------------

    def _step_order(self, n: Node) -> tuple:
        """Where `n` stands among its group's members: by the steps it reads, that is its
        unit positions, then the rows its per-step inputs have in batches made before, and
        only last by when it was built (a backward pass builds steps in reverse)."""
        units, rows, built = [], [], []
        placed, index = self.placed, self.index
        for e in self.signature[id(n)]:
            if type(e) is int:
                units.append(e)
                continue
            where = placed.get(id(e))
            if where is not None:
                rows.append(where[1])
            built.append(index[id(e)])
        return units, rows, built, index[id(n)]

    def _batch(self, members: list[Node]) -> bool:
        """Batch one group if that is valid and pays; whether it was."""
        members = sorted(members, key=self._step_order)
        parts = self._progressions(members)
        if parts:
            return any([self._batch(part) for part in parts])
        lanes = len(members)
        expands = _expands(members[0])
        if expands and not self._reduced_only(members):
            # An outer product per step: batching would materialize lanes x m x n. The members
            # that are only summed (all but a last step's, masked by a loss's kink) still are.
            users = self.users
            summed = [m for m in members if id(m) not in self.root_ids and
                      all([type(u) is Add for u in users[id(m)]])]
            if MIN_LANES <= len(summed) < lanes and self._reduced_only(summed):
                return self._batch(summed)
            return False
        used = self._first_use(members)  # no batch is made before it is read again below
        if self._recurrent(members, used) and not self._parts(members):
            return False  # decided without building a stack of every step's input
        self.inputs: list[Node] = []
        self.stacks: list[tuple[Node, list[Node]]] = []
        self.heavy = expands
        batched = self.lift(tuple(members), lanes, 0, top=True)
        if batched is None or id(batched) in self.index:
            return False
        if STACK_ONLY_FOR_PRODUCTS and self.stacks and not self.heavy:
            # Copying per-step inputs into a stack pays for a matrix product or a primitive
            # (`W @ h_t` for all t at once), not for elementwise work alone. A part of the
            # group may read rows stacked already (`1 - o_t` of the output gates, among the
            # `1 - s` of every gate).
            return any([self._batch(part) for part in self._parts(members)])
        # Valid when every input comes before every use of a member; else an input depends on
        # a member (the recurrence) and batching would make a cycle.
        for stack, nodes in self.stacks:
            if id(stack) not in self.index:
                self.items[id(stack)] = nodes
        ready = max((self._position(n) for n in self.inputs), default=-1.0)
        if ready >= used:
            return False
        here = (ready + used) / 2
        self.position[id(batched)] = here
        for stack, nodes in self.stacks:
            for row, n in enumerate(nodes):
                self.placed.setdefault(id(n), (stack, row))
        for n in self.inputs:  # batches read their inputs: later batches must come before
            for item in self.items.get(id(n), (n,)):
                self.consumers[id(item)].append(here)
        for row, m in enumerate(members):
            self.rows[id(m)] = self.placed[id(m)] = (batched, row)
        return True

    def _progressions(self, members: list[Node]) -> list[list[Node]] | None:
        """The members (in step order) split into parts whose picks' places step evenly, where
        theirs together do not: by the places of their picks relative to one another
        (`x[3t] * x[3t+1] * e_(3t+2)` and `x[3t] * x[3t+2] * e_(3t+1)`, two terms of one
        step's gradient), then, where a part's still do not, every k-th member of it
        (`x[3t] * e_(3t+1)` and `x[3t+1] * e_(3t+2)`). Each part is read and placed by every
        k-th row (`x[::3]`, `dilate`), where the whole read rows picked one by one, a stack
        per step, and placed them with selection matrices multiplied together. None where
        there is no such split (nor `_chains`)."""
        units = {id(m): [e for e in self.signature[id(m)] if type(e) is int] for m in members}
        if _even([units[id(m)] for m in members]):
            return None
        alike = defaultdict(list)
        for m in members:
            places = units[id(m)]
            alike[tuple([p - places[0] for p in places])].append(m)
        parts, few = [], 0
        for part in alike.values():
            for k in range(1, MAX_INTERLEAVED + 1):
                split = [part[r::k] for r in range(k)]
                if all([len(s) >= MIN_LANES and _even([units[id(m)] for m in s])
                        for s in split]):
                    parts += split
                    break
            else:
                if len(part) >= MIN_LANES:
                    return self._chains(members, units)
                few += 1
        # Members of a pattern too few to batch (a first step's term that no earlier step's
        # joins, `x[1] exp(x[2]) e_0` among `x[2t] exp(x[2t+2]) e_(2t+1)`) stay as they are:
        # with them the whole read its rows one by one and placed them by selection matrices
        # multiplied together (O(steps n)).
        return parts if len(parts) > 1 or parts and few else self._chains(members, units)

    def _chains(self, members: list[Node], units: dict) -> list[list[Node]] | None:
        """`_progressions` where its split finds none, by the rows the members' per-step inputs
        have in batches made before as well: the members of each pattern of places, in step
        order, each added to the first chain it continues (its picks stepping evenly, its
        inputs' rows by one: `lift` reads them as every k-th row and as a window). The
        overlapping triples' gradient terms `x[t] exp(x[t + 2])` and `x[t + 1] exp(x[t + 2])`
        read one pick x[2] twice, so that no every-k-th split steps evenly; with the rows of
        `exp(x[2:])`, t and t + 1 against row t, they are two chains. None where no member has
        such rows (rows of x picked out of order, `X[0], X[1], X[2], X[4]`, stay one stack,
        one batch), where a chain is too short to batch, or where there are more than
        MAX_INTERLEAVED of one pattern."""
        rows = self._hole_rows(members)
        if not any(rows.values()):
            return None
        alike = defaultdict(list)
        for m in members:
            places = units[id(m)]
            alike[(tuple([p - places[0] for p in places]), len(rows[id(m)]))].append(m)
        parts = []
        for part in alike.values():
            chains: list[list[Node]] = []
            for m in part:
                for chain in chains:
                    if _continues(chain, m, units, rows):
                        chain.append(m)
                        break
                else:
                    if len(chains) == MAX_INTERLEAVED:
                        return None
                    chains.append([m])
            if any([len(chain) < MIN_LANES for chain in chains]):
                return None
            parts += chains
        return parts if len(parts) > 1 else None

    def _hole_rows(self, members: list[Node]) -> dict[int, list[int]]:
        """id of a member -> the rows its per-step inputs have in batches or stacks made
        before (`exp(x[t + 2])`, row t of `exp(x[2:])`)."""
        placed = self.placed
        return {id(m): [placed[id(e)][1] for e in self.signature[id(m)]
                        if type(e) is not int and id(e) in placed] for m in members}

    def _first_use(self, members: list[Node]) -> float:
        # Users are listed in the order's order: each member's first is its earliest.
        index, users, consumers = self.index, self.users, self.consumers
        first = [index[id(found[0])] for found in map(users.get, map(id, members)) if found]
        first += [p for m in members if id(m) in consumers for p in consumers[id(m)]]
        return min(first, default=len(self.order))

    def _recurrent(self, members: list[Node], used: float) -> bool:
        """Whether batching is sure to fail the validity check of `_batch`: some per-step input
        (a hole of a member's signature, not itself batched, so it stays where it is in the
        order) comes after a use of a member. That is the recurrence `h_t` from `h_{t-1}`, and
        building its stack of every step first made each such group cost O(steps) nodes."""
        index, rows = self.index, self.rows
        floor = max([index[id(e)] for m in members for e in self.signature[id(m)]
                     if type(e) is not int and id(e) not in rows], default=-1)
        return floor >= used

    def _parts(self, members: list[Node]) -> list[list[Node]]:
        """The members split by the batches or stacks their per-step inputs are rows of."""
        parts = defaultdict(list)
        for m in members:
            holes = [e for e in self.signature[id(m)] if not isinstance(e, int)]
            where = tuple(id(self.placed[id(e)][0]) if id(e) in self.placed else None
                          for e in holes)
            if holes and None not in where:
                parts[where].append(m)
        return [p for p in parts.values() if MIN_LANES <= len(p) < len(members)]

    def _position(self, n: Node) -> float:
        if type(n) is Unit or type(n) is Delta:
            # (a constant is ready from the start, wherever the order met it first: rows
            # picked one by one, `X[0]`, `X[1]`, `X[4]`, stack their unit vectors)
            return -1.0
        if id(n) in self.rows:
            return self.position[id(self.rows[id(n)][0])]
        if id(n) in self.index:  # a stack can be a node of the graph already (hash-consing)
            return self.index[id(n)]
        if id(n) in self.items:  # a stack comes after its items, wherever they moved
            return max(self._position(item) for item in self.items[id(n)])
        if id(n) in self.position:
            return self.position[id(n)]
        return self.index.get(id(n), -1.0)

    def _reduced_only(self, members: list[Node]) -> bool:
        """Every use of every member is a term of a sum over all of them."""
        ids = {id(m) for m in members}
        if ids & self.root_ids:
            return False
        # Each distinct user is checked once: the members of a T-step group share one sum of T
        # terms, and checking it per member would be quadratic in T.
        users = {id(u): u for m in members for u in self.users[id(m)]}
        # The coefficients may differ (`2 * outer(d_T, h_T) + outer(d_1, h_1) + ...`, where
        # a loss's factor sits on one step's term only): `_sum` corrects the odd rows.
        return all(isinstance(u, Add) and ids <= {id(t) for _, t in u.terms}
                   for u in users.values())

    def _alike(self, olds: tuple[Node, ...]) -> bool:
        """Whether `olds` are one operation (with the same fields) of as many children."""
        # Nodes of one template are (its key holds all that): the usual case, told cheaply.
        template = self.template.get(id(olds[0]))
        if template is not None and all([self.template.get(id(o)) == template for o in olds]):
            return True
        return len({(type(o), _fields(o), len(o.children())) for o in olds}) == 1

    def lift(self, olds: tuple[Node, ...], lanes: int, depth: int, top=False):
        """The batched node for `olds` (one per lane) as (node, has the lane axis); for `top`,
        the node alone, or None when the members cannot be batched."""
        first = olds[0]
        if not top:
            window = _even_units(olds, lanes, self._is_lane)
            if window is not None:
                # (before the rows of a batch: unit vectors evenly spaced that a stack of some
                # other batch holds in a run, `e_3, e_5, ...` among `e_1, e_0, e_3, e_5, ...`,
                # are every k-th row of the identity, read as `x[3::2]` and placed by
                # `dilate`, where a window of that stack was a selection matrix placed by a
                # product)
                return window, True
            placed = [self.placed.get(id(o)) for o in olds]
            if all(p is not None for p in placed) and not self._picks_of_steps(olds):
                batched, row = placed[0]
                if all(p[0] is batched for p in placed) and \
                        [p[1] for p in placed] == list(range(row, row + lanes)):
                    self.inputs.append(batched)
                    return _window(batched, row, lanes), True
                return self._stack(olds, lanes), True
            if all(o is first for o in olds):
                self.inputs.append(first)
                return first, False
            if all(self._is_lane(o) and o.shape == first.shape for o in olds):
                return self._stack(olds, lanes), True  # (evenly spaced: `_even_units`)
            if any([self._hole(o) for o in olds]) or depth >= MAX_DEPTH or \
                    not self._alike(olds):
                return self._stack(olds, lanes), True
        parts = [self.lift(column, lanes, depth + 1)
                 for column in zip(*[o.children() for o in olds])]
        node = _lifted(first, parts, lanes)
        if type(first) is Add and node is not None:
            node = _scaled_by_lane(node, first, olds)
        if isinstance(first, Prim) or isinstance(first, Contract) and any(
                not lifted and n.rank for n, lifted in parts) and _sums(first) or \
                isinstance(first, Map) and first.fn not in _ARITHMETIC:
            # a primitive, a product with a shared tensor (a GEMV -> GEMM), or a function such
            # as tanh's derivative sech2(z_t): one call on all steps, not one per step
            self.heavy = True
        if node is None:
            return None if top else (self._stack(olds, lanes), True)
        if id(node) in self.index:  # built before (hash-consing): its own inputs count too
            self.inputs.append(node)
        return node if top else (node, True)

    def _picks_of_steps(self, olds) -> bool:
        """Whether `olds` are unit vectors of one length (the steps' picks `x[2t + 2]`),
        which `lift` reads as every k-th row or a stack of their own, never as a window of a
        stack another group made of them (rows 2.. of [e_0, e_1, e_2, e_4, ...]): the vectorizer
        reads a product of a window and such a stack as a dense selection matrix, multiplied
        (`t[:, None] * concatenate((eye(10)[2:][:, 1:2], ...))`, `A.T @ S`): O(lanes n) or
        O(n^2 lanes), and 0 * inf = nan over a row or the whole Hessian at a pole."""
        first = olds[0]
        return all([self._is_lane(o) and o.shape == first.shape for o in olds])

    def _stack(self, olds, lanes) -> Node:
        # Groups that fail to batch, and parts of groups, ask for the same stacks again: each
        # is T nodes, built once (the nodes in `olds` are the graph's, so their ids are stable).
        key = tuple(map(id, olds))
        stack = self.stack_memo.get(key)
        if stack is None:
            labels = tuple(range(1, olds[0].rank + 1))
            stack = self.stack_memo[key] = Add(
                [(1.0, Contract((0, *labels), [(Unit(lanes, k), (0,)), (n, labels)]))
                 for k, n in enumerate(olds)])
        self.stacks.append((stack, list(olds)))
        self.inputs.append(stack)
        return stack

    # -- rebuilding the graph around the batched groups --------------------------------------

    def rebuild(self, root: Node) -> Node:
        """`root` with every batched member read from its row (iterative: graphs are deep).

        Batches are built from the graph as it was; rebuilding them reads, in turn, the rows
        of the batches made before."""
        work = [(root, False)]
        active: set[int] = set()  # expanded, not finished: meeting one again is a cycle
        while work:
            node, ready = work.pop()
            if id(node) in self.memo:
                continue
            found = self._read_from_batch(node)
            if found is not None:
                batched, read = found
                if id(batched) in self.memo:
                    self.memo[id(node)] = read(self.memo[id(batched)])
                    continue
                if id(node) in active:
                    raise _Cycle
                active.add(id(node))
                work += [(node, False), (batched, False)]
                continue
            children = node.children()
            if not ready:
                if id(node) in active:
                    raise _Cycle
                active.add(id(node))
                work.append((node, True))
                if type(node) is Add:
                    # The terms summed over the lane axis are not read row by row: their
                    # batched node is, and no pick of a row is built for them (T nodes each).
                    summed = self.lane_sums[id(node)] = self._lane_sums(node)
                    if summed:
                        rows = self.rows
                        children = [t for _, t in node.terms if id(t) not in rows or
                                    id(rows[id(t)][0]) not in summed]
                        for batched, coefs, members in summed.values():
                            children.append(batched)
                            # an odd row is added as itself: its member, from its inputs
                            children += [c for row in _corrected(coefs)
                                         for c in members[row].children()]
                work.extend((c, False) for c in children if id(c) not in self.memo)
                continue
            new = [self.memo.get(id(c)) for c in children]  # None: a term summed over lanes
            if isinstance(node, Add):
                self.memo[id(node)] = self._sum(node, new)
            elif all(a is b for a, b in zip(new, children)):
                self.memo[id(node)] = node
            else:
                self.memo[id(node)] = _with_children(node, new)
        return self.memo[id(root)]

    def _read_from_batch(self, node: Node):
        """(batched node, a function of it rebuilt that reads `node` from it) where `node` is a
        member, a row of a batch (`_pick`), or a stack of a batch's rows in order, its window
        (`_window`); else None."""
        found = self.rows.get(id(node))
        if found is not None:
            batched, row = found
            return batched, lambda rebuilt: _pick(rebuilt, row)
        run = self._read_in_order(node)
        if run is not None:
            batched, row, lanes = run
            if lanes < 0:  # rows row, row - 1, ...: the window that ends there, reversed
                first = row + lanes + 1
                return batched, lambda rebuilt: linear.flip(_window(rebuilt, first, -lanes), 0)
            return batched, lambda rebuilt: _window(rebuilt, row, lanes)
        return None

    def _read_in_order(self, node: Node) -> tuple[Node, int, int] | None:
        """(batched node, first row, rows) where `node` is a stack of per-step inputs that
        became rows row, row + 1, ... of one batch made after the stack was (a step's form
        whose inputs another form's batch computes, `exp(x[3t])` of three cycled forms): the
        stack is that batch's window, where its rows picked one by one and stacked again were
        a part per step (`concatenate((t5[:1], t5[1:2], ...))`). Rows row, row - 1, ... (steps
        that read one input forwards and another backwards, `log(x[2t]) * x[2(T-1-t)+1]`) are
        -rows: the window reversed, where they were a part per step too. Else None."""
        items = self.items.get(id(node))
        if items is None:
            return None
        found = [self.rows.get(id(n)) for n in items]
        if any([f is None for f in found]):
            return None
        batched, row = found[0]
        step = -1 if len(found) > 1 and found[1][1] == row - 1 else 1
        if any([f[0] is not batched or f[1] != row + step * k for k, f in enumerate(found)]):
            return None
        return batched, row, step * len(items)

    def _lane_sums(self, node: Add) -> dict[int, tuple[Node, list[float], list[Node]]]:
        """id of a batched node -> (that node, the coefficient and the member of each of its
        rows), for each batched node all of whose rows are terms of `node` (most are: a row or
        two)."""
        rows = defaultdict(dict)
        for coef, term in node.terms:
            found = self.rows.get(id(term))
            if found is not None:
                rows[id(found[0])][found[1]] = (found[0], coef, term)
        summed = {}
        for key, found in rows.items():
            batched = next(iter(found.values()))[0]
            if len(found) == batched.shape[0].offset:  # rows are 0 .. lanes - 1, each once
                summed[key] = (batched, [found[row][1] for row in range(len(found))],
                               [found[row][2] for row in range(len(found))])
        return summed

    def _sum(self, node: Add, new: list) -> Node:
        """A sum whose terms include every row of one batched node sums over the lane axis
        instead: `sum_t outer(d_t, h_t)` is `D.T @ H`. Rows whose coefficient differs from
        the most common one `c` are corrected one by one: `sum_t c_t B[t]` is
        `c sum_t B[t] + sum_t (c_t - c) B[t]`, and the last sum has a term or two (the
        step where a loss's factor was not distributed), where each c_t - c has c's sign;
        else (more odd rows, or one that would cancel) the sum is `c @ B` with the vector of
        the coefficients (`_by_step`)."""
        summed = self.lane_sums.pop(id(node))
        if not summed:
            changed = any(a is not b for a, b in zip(new, node.children()))
            return Add(list(zip((c for c, _ in node.terms), new))) if changed else node
        terms = []
        memo = self.memo
        for batched, coefs, members in summed.values():
            batched = memo[id(batched)]
            labels = tuple(range(1, batched.rank))
            if _by_step(coefs):
                # the coefficients as one vector on the lane axis, `c @ B`: each row times its
                # own (exact, as c_t B[t] is), where a correction per odd row was an array of
                # the sum's whole shape per step (an n x n pad of a Hessian each: O(T n^2))
                terms.append((1.0, build.contract(labels, [(_coefficients(coefs), (0,)),
                                                           (batched, (0, *labels))])))
                continue
            common = max(set(coefs), key=coefs.count)
            terms.append((common, build.contract(labels, [(batched, (0, *labels))])))
            for row in _odd(coefs):
                member = members[row]  # (its children as batching left them, where it did)
                terms.append((coefs[row] - common, _with_children(
                    member, [memo.get(id(c), c) for c in member.children()])))
        for (coef, term), n in zip(node.terms, new):
            found = self.rows.get(id(term))
            if found is None or id(found[0]) not in summed:
                terms.append((coef, n))
        return build.add(terms)


def _even(units: list[list[int]]) -> bool:
    """Whether the places of the picks, a row per member, step evenly (or stay) down every
    column: `lift` reads such a column as every k-th row (`row_window`)."""
    if len({len(u) for u in units}) != 1:
        return False
    for column in zip(*units):
        step = column[1] - column[0] if len(column) > 1 else 0
        if step < 0 or any([b - a != step for a, b in zip(column, column[1:])]):
            return False
    return True


def _continues(chain: list[Node], m: Node, units: dict, rows: dict) -> bool:
    """Whether `m` continues `chain` (`_chains`): each of its picks' places as many past the
    last member's as the last's past the one before (or any step of none back, for a chain of
    one member), and each of its inputs' rows one past the last's."""
    last = chain[-1]
    if any([b - a != 1 for a, b in zip(rows[id(last)], rows[id(m)])]):
        return False
    steps = [b - a for a, b in zip(units[id(last)], units[id(m)])]
    if any([step < 0 for step in steps]):
        return False
    if len(chain) == 1:
        return True
    return steps == [b - a for a, b in zip(units[id(chain[-2])], units[id(last)])]


def _even_units(olds: tuple, lanes: int, is_lane) -> Node | None:
    """The unit vectors `olds` (one per lane) as rows of the identity, where they are
    consecutive rows or every step-th (`X[2 * t]`: `X[s:e:step]`, where a stack of unit
    vectors was a lanes x n selection matrix, multiplied with X in O(lanes n) per column:
    quadratic in the steps); None where they are not unit vectors so spaced."""
    first = olds[0]
    if lanes < 2 or not all([is_lane(o) and o.shape == first.shape for o in olds]):
        return None
    start = first.position.offset
    offsets = [o.position.offset for o in olds]
    step = offsets[1] - start
    if step >= 1 and offsets == list(range(start, start + step * lanes, step)):
        return row_window(start, step, lanes, first.shape[0])
    if step <= -1 and offsets == list(range(start, start + step * lanes, step)):
        # places stepping down (`log(x[2t]) * x[2(T-1-t)+1]`: e_7, e_5, e_3, e_1): those rows
        # reversed, `flip(x[1:8:2])`, which the vectorizer reads and places as the rows in
        # order with the lanes reversed (contraction.py `_reversed_rows`), where a stack of
        # the unit vectors was placed row by row (a part per step)
        return linear.flip(row_window(offsets[-1], -step, lanes, first.shape[0]), 0)
    return None


# A sum over lanes corrects at most this many rows whose coefficient is not the most common
# one (`_sum`); more, and the coefficients are a vector (`_coefficients`).
MAX_CORRECTED = 2


def _by_step(coefs: list[float]) -> bool:
    """Whether `sum_t c_t B[t]` is written with the vector of the c_t, not as
    `c sum_t B[t] + sum_t (c_t - c) B[t]` (c the most common): where more rows than
    MAX_CORRECTED differ from c (a coefficient per step, `(t + 1) * ...`), or where some
    c_t - c takes from c (then c_t B cancels: 0 for c_t = 1e-20 c, a discounted sum's far
    steps; inf - inf = nan at a pole)."""
    odd = _odd(coefs)
    common = max(set(coefs), key=coefs.count)
    return len(odd) > MAX_CORRECTED or not all([coefs[row] / common >= 1 for row in odd])


def _corrected(coefs: list[float]) -> list[int]:
    """The rows of a sum over lanes that `_sum` adds as their members again."""
    return [] if _by_step(coefs) else _odd(coefs)


def _coefficients(coefs: list[float]) -> Node:
    """The vector of the coefficients, one per lane, as the IR's constant: a sum of scaled
    unit vectors (built from the coefficients the graph holds, never from a user's text)."""
    lanes = Dim.of(len(coefs))
    return build.add([(c, Unit(lanes, k)) for k, c in enumerate(coefs)])


def _odd(coefs: list[float]) -> list[int]:
    """The rows whose coefficient is not the most common one."""
    common = max(set(coefs), key=coefs.count)
    return [row for row, coef in enumerate(coefs) if coef != common]


class _Cycle(Exception):
    """Batching made a node depend on itself (the validity check missed a case)."""


def _fields(n: Node) -> tuple:
    """What besides its children makes a node what it is (dimensions and nodes by id)."""
    kind = type(n)
    if kind is Contract:
        return (n.out, tuple([ls for _, ls in n.operands]), _ids(n.dims))
    if kind is Add:
        # its coefficients relative to the first: sums that are multiples of one another, a
        # per-step coefficient distributed into a step's sum (`c_t * a_t + c_t * b_t`), are
        # one operation, each scaled by its own first coefficient (`_scaled_by_lane`)
        first = n.terms[0][0]
        relative = [c / first for c, _ in n.terms] if first else []
        # (only where every ratio is a finite number, nonzero for a nonzero c: 1e300 / 1e-10
        # is inf, 1e-300 / 1e300 is 0, and the sum rebuilt from it would be inf or 0)
        if relative and all([math.isfinite(r) and (r or not c)
                             for r, (c, _) in zip(relative, n.terms)]):
            return (*relative, "relative")
        return (*[c for c, _ in n.terms], "as they are")
    if kind is Map:
        return (n.fn,)
    if kind is Prim:
        return (n.fn, n.params, _ids(n.shape))
    return (id(n),)


def _ids(dims: tuple) -> tuple:
    return tuple(map(id, dims))


def _expands(n: Node) -> bool:
    """A product of lower-rank factors summing nothing: an outer product."""
    if not isinstance(n, Contract) or n.rank < 2:
        return False
    summed = set(range(len(n.dims))) - set(n.out)
    return not summed and all(c.rank < n.rank for c, _ in n.operands)


def _broadcast(node: Node, lifted: bool, shape: tuple, lanes: int) -> Node:
    """`node` (with or without the lane axis) broadcast to [lanes, *shape]."""
    full = (Dim.of(lanes), *shape)
    if lifted and node.shape == full:
        return node
    out = tuple(range(len(full)))
    labels = out[len(full) - node.rank:] if not lifted else (0, *out[len(full) - node.rank + 1:])
    # Built (not raw): a broadcast of a broadcast (`1` to [n], then to [lanes, n]) folds to one.
    return build.contract(out, [(node, labels)], dict(zip(out, full)))


def _lifted(first: Node, parts: list, lanes: int) -> Node | None:
    """`first`'s operation applied to its lifted children, with the lane axis in front."""
    if isinstance(first, Contract):
        lane = len(first.dims)
        operands = [(node, (lane, *labels) if lifted else labels)
                    for (node, lifted), (_, labels) in zip(parts, first.operands)]
        broadcast = {l: first.dims[l] for l in first.out}
        return Contract((lane, *first.out), operands, broadcast)
    if isinstance(first, Add):
        return Add([(coef, _broadcast(node, lifted, first.shape, lanes))
                    for (coef, _), (node, lifted) in zip(first.terms, parts)])
    if isinstance(first, Map):
        args = [node if (not lifted and node.rank == 0) else
                _broadcast(node, lifted, first.shape, lanes) for node, lifted in parts]
        return Map(first.fn, *args)
    if isinstance(first, Prim) and first.params and len(parts) == 1:
        (node, lifted), = parts
        if not lifted:
            return None
        axes = tuple(a + 1 for a in first.params[0])
        return Prim(first.fn, (node,), (axes, *first.params[1:]),
                    (Dim.of(lanes), *first.shape))
    if isinstance(first, Prim) and _axis_params(first) and len(first.args) > 1 and \
            not is_convolution(first) and any(lifted for _, lifted in parts) and \
            all(a.shape == first.shape for a in first.args):
        # several arguments shaped like the result, along axes (log_softmax_vjp(x, g)): each
        # lifted, or the same for every lane, broadcast (not a convolution: its parameters
        # are strides and modes, not axes)
        axes = tuple(a + 1 for a in first.params[0])
        args = tuple(_broadcast(node, lifted, first.shape, lanes) for node, lifted in parts)
        return Prim(first.fn, args, (axes, *first.params[1:]), (Dim.of(lanes), *first.shape))
    return None


def _axis_params(p: Prim) -> bool:
    """Whether the primitive's parameters are its axes alone (the rule tables' axis
    primitives: one tuple of axis numbers)."""
    return len(p.params) == 1 and type(p.params[0]) is tuple and \
        all(type(a) is int for a in p.params[0])


def _sums(n: Contract) -> bool:
    """Whether the product sums an index (a matrix product with a shared tensor batches into a
    larger one; an elementwise product with a shared vector does not pay for a stack)."""
    return any(l not in n.out for _, ls in n.operands for l in ls)


def _window(batched: Node, row: int, lanes: int) -> Node:
    """Rows row .. row+lanes-1 of `batched`."""
    if row == 0 and batched.shape[0] == Dim.of(lanes):
        return batched
    rest = tuple(range(2, batched.rank + 1))
    return Contract((0, *rest), [(Delta(lanes, batched.shape[0], row), (0, 1)),
                                 (batched, (1, *rest))])


def _pick(batched: Node, row: int) -> Node:
    rest = tuple(range(1, batched.rank))
    return Contract(rest, [(batched, (0, *rest)), (Unit(batched.shape[0], row), (0,))])


def _scaled_by_lane(node: Add, first: Add, olds: tuple[Node, ...]) -> Node:
    """The lifted sum `node` (of `first`'s coefficients) where the members' sums are multiples
    of one another (`_fields`): its coefficients relative to the first, times the vector of
    each member's first coefficient on the lane axis (`c_t * (a_t + b_t)`): each member's own
    scale, never a ratio of two members' (1e-300 of 1e300 is 0). `node` where they are
    alike."""
    scales = [o.terms[0][0] for o in olds]
    if all([c == scales[0] for c in scales]) or not scales[0]:
        return node
    relative = Add([(c / scales[0], t) for c, t in node.terms])
    labels = tuple(range(1, node.rank))
    return build.contract((0, *labels), [(_coefficients(scales), (0,)),
                                         (relative, (0, *labels))])


def _with_children(node: Node, new: list[Node]) -> Node:
    if isinstance(node, Map):
        return Map(node.fn, *new)
    if isinstance(node, Prim):
        return Prim(node.fn, tuple(new), node.params, node.shape)
    if isinstance(node, Contract):
        return Contract(node.out, [(c, ls) for c, (_, ls) in zip(new, node.operands)],
                        {l: node.dims[l] for l in node.out})
    if isinstance(node, Add):
        return Add([(coef, c) for c, (coef, _) in zip(new, node.terms)])
    raise TypeError(f"cannot rebuild {type(node).__name__}")
