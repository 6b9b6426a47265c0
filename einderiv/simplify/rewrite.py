"""The rewrite pass: every node of a program in normal form under the rule book's rewrites.

Children are rewritten before their parents, and a node whose children changed is rebuilt
through the IR builders (so every fold of lowering applies again); then the rewrites are tried
at the node in file order, and what one gives is rewritten in turn, until none applies. Each
node is visited once (memoized on the hash-consed node, without recursion), so the pass is
linear in the program's size, and a shared subexpression is rewritten once. An elementwise
function of a selection (selections.py: a pick, a slice, with a step or reversed, a diagonal,
a transpose, a reshape, a broadcast, or a composition of them) that no rewrite matches is
tried once more as the function of the whole tensor (`log(softmax(x)[k])` is
`log_softmax(x)[k]`, `log(diag(softmax(L)))` is `diag(log_softmax(L))`, and `exp(x[k]) /
sum(exp(x))`, seen as `exp(x)[k] / sum(exp(x))`, is `softmax(x)[k]`), and a sum of a selection
and a function of the whole tensor as the selection of the whole sum (`logsumexp(x) - x[k]`,
seen as `(logsumexp(x) - x)[k]`, is `-log_softmax(x)[k]`). Beside other tensors, a
selection is laid back (a pick, a transpose, a diagonal: `exp(diag(L)) / sum(exp(L))` is
`diag(softmax(L))`) or the other tensors taken as selections of placeholders that the
replacement may only apply elementwise functions to (`log(softmax(x)[::2] / y)` is
`log_softmax(x)[::2] - log(y)`), and a sum broadcast in one contraction is the broadcast of
the sum. Then it is tried with the
selections of functions among its operands made functions of selections (`exp(p)[:, None]` as
`exp(p[:, None])`: `log(exp(p)[:, None] + exp(N))` is `logaddexp(p[:, None], N)`), and a log
of a quotient by a positive number as the log of the dividend less that of the divisor
(`log(mean(w * exp(x)))` is `logsumexp_weighted(x, w) - log(n)`). Each of these looks at a
few nodes under the node, of a bounded number of operands, once.

It ends because each rewrite calls fewer functions on its right than on its left, or as many
with no more numbers and fewer numbers as terms of a sum (`log(1 + u) = log1p(u)`), fewer uses
of its variables or fewer numbers as exponents (`u ** 2`), or, with no number and no sum on
its right, calls at most one function more per number it takes out as a term of a sum
(`1 - softmax(x) = complement(softmax(x))`), and uses no variable more often
(all checked when its line is read): every application takes at least one function
application (`Map` or `Prim`) or a sum's number out of the program's expression tree, or keeps
their total and takes out a leaf (a sum's number, which a match never makes up, or a
variable's subtree, which has a leaf at least), or keeps both and takes out the number of a
`pow` (`hypot(a, b) ** 2 = square(a) + square(b)`), or all of these and takes out an addition
(`softmax(x) - y = softmax_minus(x, y)`), and the builders never add one. A rewrite seen
through a selection, or with selections pushed into functions, applies to a form with as many
function applications as the node (a selection is none); the log of a quotient by a positive
number takes the quotient out for the log of the divisor (a number, folded, where it is one).

>>> import einderiv
>>> print(einderiv.compile("log(1 + exp(x))", {"x": ("n",)}).formula)
softplus(x)
"""
from __future__ import annotations

import math

from ..ir import build
from ..ir.nodes import Add, Const, Contract, Map, Node, Prim, Size, Unit, Var
from ..parse import ast
from ..rulebook import RuleBook
from . import det_products, selections, solves
from .pattern import MAX_FLAT_TERMS, compiled


# Rewrites applied per node normalized, past which rewriting is taken to loop (each rewrite
# takes a function application or a leaf out, so a program of n nodes has at most a few per
# node; MIN_REWRITES covers small programs whose nodes rewrite into larger ones).
REWRITES_PER_NODE = 64
MIN_REWRITES = 100_000
# How deep `_selections_inside` looks for selections of functions under a node: a pattern's
# functions lie under a sum or a quotient (`log(exp(a) + exp(b))`, `exp(u) / (exp(u) +
# exp(v))`, `(1 - y) * sigmoid(u) - ...`).
VIEW_DEPTH = 2


class Rewriter:
    """Rewrites IR with a rule book's rewrites. Calls share one memo: a derivative, which
    holds the (already rewritten) forward program, is rewritten only where it is new."""

    def __init__(self, rules: RuleBook):
        self.index = compiled(rules)
        self.normal: dict[Node, Node] = {}  # node -> its normal form
        # a function of a whole tensor, seen through a selection -> what a rewrite makes of it,
        # or None: many picks of one tensor (x[0], x[1], ...) look at one such node
        self.whole: dict[Node, Node | None] = {}
        self.lift: dict[str, frozenset] = {}  # a head function -> _lifts
        self.solves = solves.enabled(rules)  # inv(A) @ b -> solve(A, b) (simplify/solves.py)
        # det_hessian(X) summed with V on a pair of axes -> det_hvp(X, V) (det_products.py)
        self.det_products = det_products.enabled(rules)
        self.rewrites = 0  # applied, for `_count_rewrite`
        self.views: dict = {}  # (node, depth) -> selections.view's form of it

    def __call__(self, roots: list[Node]) -> list[Node]:
        if not self.index and not self.solves and not self.det_products:
            return list(roots)
        for root in roots:
            self._normalize(root)
        return [self.normal[r] for r in roots]

    def _normalize(self, root: Node) -> None:
        normal = self.normal
        becomes: dict[Node, Node] = {}  # a node -> the node its normal form is that of
        stack = [root]
        while stack:
            node = stack[-1]
            if node in normal:
                stack.pop()
                continue
            target = becomes.get(node)
            if target is not None:
                if target in normal:
                    normal[node] = normal[target]
                    stack.pop()
                else:
                    stack.append(target)
                continue
            children = node.children()
            missing = [c for c in children if c not in normal]
            if missing:
                stack.extend(missing)
                continue
            if any(normal[c] is not c for c in children):
                becomes[node] = _rebuilt(node, normal)
                continue
            replaced = self._apply(node)
            if replaced is None:
                normal[node] = node
                stack.pop()
            else:
                becomes[node] = replaced
                self._count_rewrite(node, replaced, becomes)

    def _count_rewrite(self, node: Node, replaced: Node, becomes: dict) -> None:
        """A RuleError, not a hang, where the rules loop: the termination measure (module
        docstring) is an argument about the rules' text, and a rule file loaded by a user is
        checked by it too, so a loop is a fault in that argument, reported with the node it
        loops on. A rewrite that comes back to its node, through the nodes it became, loops;
        one that goes on making new nodes is stopped past REWRITES_PER_NODE a node."""
        self.rewrites += 1
        seen, r = 0, replaced
        while r is not node and r in becomes and seen < 64:
            r, seen = becomes[r], seen + 1
        if r is node or self.rewrites > REWRITES_PER_NODE * len(self.normal) + MIN_REWRITES:
            from ..errors import RuleError
            raise RuleError(f"the rewrite rules do not end on {str(node)[:200]}: "
                            f"{self.rewrites} rewrites, {len(self.normal)} nodes",
                            hint="a rewrite of rules/ or of a loaded rule file undoes "
                                 "another; please report it with the expression")

    def _apply(self, node: Node) -> Node | None:
        if isinstance(node, Map):
            rules = self.index.get(("map", node.fn))
        elif isinstance(node, Prim):
            rules = self.index.get(("prim", node.fn))
        elif isinstance(node, Add):
            rules = self.index.get(("add",))
        elif isinstance(node, Contract):
            if self.solves:
                solved = solves.into_solve(node)
                if solved is not None:
                    return solved
            if self.det_products:
                made = det_products.into_product(node)
                if made is not None:
                    return made
            rules = self.index.get(("contract",))
        else:
            return None
        if not rules:
            return None
        replaced = _first(node, rules)
        if replaced is not None:
            return replaced
        if isinstance(node, Add):
            return self._sum_through_selection(node, rules) or \
                self._selections_inside(node, rules)
        if not isinstance(node, Map):
            return None
        return self._scale_outside(node, rules) or self._through_selection(node, rules) or \
            self._selections_inside(node, rules) or self._quotient_inside(node, rules)

    def _selections_inside(self, node: Node, rules) -> Node | None:
        """`node` with the selections of elementwise functions among its operands made the
        functions of the selections (selections.view: `log(exp(p)[:, None] + exp(N))` seen as
        `log(exp(p[:, None]) + exp(N))`, each broadcast to [n, k], which is `logaddexp(p[:,
        None], N)`; `exp(N) / (exp(N) + exp(a))` with a scalar a seen with `exp(a)` broadcast
        inside). A pattern is lowered with its variables' values, where a broadcast or a
        selection of a function is the function of the broadcast or selected tensor. Tried
        where no rewrite applies to the node as it is."""
        seen = selections.view(node, VIEW_DEPTH, MAX_FLAT_TERMS, self.views)
        if seen is node or type(seen) is not type(node) or \
                (isinstance(node, Map) and seen.fn != node.fn):
            return None
        return _first(seen, rules)

    def _quotient_inside(self, node: Map, rules) -> Node | None:
        """The log of a quotient by a positive number, `log(sum(w * exp(x)) / size(n))` (a
        mean: `size(n)`, or `1 / 3` as a scale where the size is a number), as `log(a) -
        log(c)` where a rewrite applies to `log(a)`: `logsumexp_weighted(x, w) - log(size(n))`.
        Exact for any a, since c > 0 (both sides nan where a < 0, -inf where a = 0); a
        divisor of unknown sign is left, as `log(-1 / -2)` is finite. Tried where no rewrite
        applies to the node as it is."""
        if node.fn != "log" or len(node.args) != 1:
            return None
        (a,) = node.args
        if isinstance(a, Map) and a.fn == "div":
            total, divisor = a.args
            if divisor.rank or not _positive(divisor):
                return None
            logarithm = build.elementwise("log", [divisor])
        else:
            scale, total = build.split_scale(a)
            if scale == 1.0 or total is a or not 0.0 < scale < float("inf"):
                return None
            # log(c * a) = log(a) + log(c), the number folded: a function fewer than the node
            logarithm = build.const(-math.log(scale))
        replaced = _first(build.elementwise("log", [total]), rules)
        if replaced is None:
            return None
        return build.binary_add(replaced, logarithm, -1.0)

    def _sum_through_selection(self, node: Add, rules) -> Node | None:
        """A sum of one selection of a tensor and scalars is that selection of the sum with
        the scalars broadcast: `logsumexp(x) - x[k]` is `(logsumexp(x) - x)[k]`, which is
        `-log_softmax(x)[k]` (and `logsumexp(X, axis=1) - X[:, k]` a column of it,
        `logsumexp(L, axis=1) - diag(L)` its diagonal). Tried where
        no rewrite applies to the sum itself, and kept only where one applies to the sum of
        the whole tensor."""
        for inner, back in _sum_seen_through(node):
            if not isinstance(inner, Add):
                continue
            present = _functions_within(inner) if inner not in self.whole else set()
            replaced = self._whole(inner, back, [r for r in rules
                                                 if not r.needs or r.needs <= present])
            if replaced is not None:
                return replaced
        return None

    def _scale_outside(self, node: Map, rules) -> Node | None:
        """A function of a sum with a constant factor inside, `log(sum(2 * exp(x)))`, seen as
        of the factor times the sum, `log(2 * sum(exp(x)))`: the builders keep a constant
        where it is written, and a pattern (`log(sum(exp(x), axis) / c)`) matches only the one
        form. Tried where no rewrite applies to the node as it is."""
        args = [_scaled_sum(a) for a in node.args]
        if all(a is None for a in args):
            return None
        seen = Map(node.fn, *[a if a is not None else b for a, b in zip(args, node.args)])
        for rule in rules:
            replaced = rule.apply(seen)
            if replaced is not None and replaced is not seen:
                return replaced
        return None

    def _lifts(self, fn: str, rules) -> frozenset:
        """The elementwise functions that the rewrites of `fn` apply to its arguments: one of
        them applied to a selection is seen as the selection of it (`exp(x[0])`)."""
        lifts = self.lift.get(fn)
        if lifts is None:
            lifts = self.lift[fn] = frozenset().union(*map(_argument_heads, rules))
        return lifts

    def _through_selection(self, node: Map, rules) -> Node | None:
        """An elementwise function of a pick, a slice, a transpose or a broadcast of a tensor is
        that selection of the function of the tensor: `log(softmax(x)[k])` is
        `log_softmax(x)[k]`, `exp(X).T / sum(exp(X), axis=1)` is `softmax(X, axis=1).T`, and
        `exp(x[k]) / sum(exp(x))` is `softmax(x)[k]`. Tried where no rewrite
        applies to the node itself, and kept only where one applies to the function of the
        whole tensor (whose size the program already computes): one more look per tensor."""
        for inner, back in _seen_through(node, self._lifts(node.fn, rules)):
            replaced = self._whole(inner, back, rules)
            if replaced is not None:
                return replaced
        return None

    def _whole(self, inner: Node, back, rules) -> Node | None:
        """`back` of what the first of `rules` makes of the whole tensor `inner` (looked at
        once, `self.whole`), or None where none applies."""
        if inner not in self.whole:
            self.whole[inner] = None
            for rule in rules:
                replaced = rule.apply(inner)
                if replaced is not None and replaced is not inner:
                    self.whole[inner] = replaced
                    break
        replaced = self.whole[inner]
        return None if replaced is None else back(replaced)


def _first(node: Node, rules) -> Node | None:
    """What the first of `rules` that matches `node` makes of it, or None. A rule whose
    pattern applies functions that `node` does not have near enough is not walked."""
    present = None
    for rule in rules:
        if isinstance(node, (Map, Prim)):
            needs = _argument_heads(rule)
            if needs:
                if present is None:
                    present = _functions_near(node)
                if not needs <= present:
                    continue
        elif rule.needs:
            if present is None:
                present = _functions_within(node)
            if not rule.needs <= present:
                continue
        replaced = rule.apply(node)
        if replaced is not None and replaced is not node:
            return replaced
    return None


def _positive(node: Node) -> bool:
    """Whether `node` is a positive number whatever the sizes are: a dimension's size (`mean`
    divides by it; a size of 0 divides an empty sum, 0 / 0, nan either way), a positive
    finite constant, or a product, quotient or power of such."""
    if isinstance(node, Size):
        return True
    value = build.constant_value(node)
    if value is not None:
        return 0.0 < value < float("inf")
    if isinstance(node, Contract):
        return build._is_product(node) and all(_positive(n) for n, _ in node.operands)
    if isinstance(node, Map) and node.fn in ("div", "pow"):
        return _positive(node.args[0]) and (node.fn == "pow" or _positive(node.args[1]))
    return False


def _seen_through(node: Map, lift: frozenset = frozenset()):
    """(the Map of the whole tensor, a function that selects from a replacement as `node`'s
    argument selects from the tensor) pairs, each a way to see `node` so; none where there is
    none. The argument may be any selection (selections.py: picks by integer indices, slices'
    windows, steps, reversals, diagonals, transposes, broadcasts, reshapes, and compositions
    of them), or a sum along some axes broadcast along others (`sum(exp(x))` broadcast to
    [k], the broadcast of the sum); an elementwise function in `lift` of one such selection
    counts as that selection of the function (`exp(x[0])` as `exp(x)[0]`). The other
    arguments are scalars, or tensors: where the selection is one `Contract` that picks with
    integer indices, transposes or takes diagonals, laid back on the whole tensor's axes
    (broadcast along the picked ones and along all but one axis of a diagonal, each in turn,
    transposed back): `exp(Y)[:, 0] / sum(exp(Y), axis=1)` is `(exp(Y) / sum(exp(Y),
    axis=1)[:, None])[:, 0]`, `exp(diag(L)) / sum(exp(L), axis=0)` the diagonal of `exp(L) /
    sum(exp(L), axis=0)[None, :]`; and for any selection, each other tensor is taken as the
    selection of a placeholder (`_placeheld`), kept only where the replacement applies only
    elementwise functions to the placeholders: `log(softmax(x)[::2] / y)` is
    `log_softmax(x)[::2] - log(y)`."""
    for k, a in enumerate(node.args):
        if isinstance(a, Map) and a.fn in lift:
            a = _lifted(a)
        elif isinstance(a, Add):
            a = _lifted_sum(a)
        if a is None or a.shape != node.shape:
            continue  # (a scalar, broadcast by the Map, is no selection of its shape)
        tensors = any(b.rank for j, b in enumerate(node.args) if j != k)
        if tensors:
            yield from _laid_back(node, k, a)
            continue
        found = selections.peel(a) or _scaled_selection(a) or _broadcast_sum(a)
        if found is None:
            continue
        main, back = found
        inner = build.elementwise(node.fn, [main if j == k else b
                                            for j, b in enumerate(node.args)])
        if not (isinstance(inner, Map) and inner.fn == node.fn):
            return
        yield inner, back
        return
    yield from _placeheld(node)


def _laid_back(node: Map, k: int, a: Node):
    """`_seen_through` where `node`'s other arguments include tensors: its argument `k` a
    `Contract` that picks entries with integer indices, transposes and takes diagonals
    (`_laid_back_labels`), the others laid back on the whole tensor's axes, each way in
    turn."""
    if not isinstance(a, Contract):
        return
    (main, labels), picks = a.operands[0], a.operands[1:]
    if not picks and labels == a.out:
        return
    dims = {l: a.dims[l] for l in a.out}
    for whole in _laid_back_labels(a):
        sizes = dict(zip(whole, main.shape))
        args = [main if j == k else build.contract(whole, [(b, a.out)], sizes) if b.rank
                else b for j, b in enumerate(node.args)]
        inner = build.elementwise(node.fn, args)
        if not (isinstance(inner, Map) and inner.fn == node.fn):
            return
        yield inner, lambda r: build.contract(a.out, [(r, labels), *picks], dims)


def _placeheld(node: Map):
    """`_seen_through` for any selection beside other tensors, under one or two elementwise
    functions of `node`'s shape (`log(softmax(x)[::2] / y)`): (`node` with the selection
    the whole tensor and each other tensor a placeholder shaped like it, a function that
    makes the selection of a replacement in which the placeholders are only under
    elementwise functions, sums and scales, each placeholder's selection the tensor it
    holds the place of) pairs, a selection at a time. Exact entry by entry: the rewrite holds
    for every value of the placeholders, and a replacement that depends on each of their
    entries only at that entry's place selects as its arguments do, whatever the selection
    (a broadcast too)."""
    leaves = []
    for a in node.args:
        if isinstance(a, Map) and a.shape == node.shape:
            leaves.extend(b for b in a.args if b.rank)
        elif a.rank:
            leaves.append(a)
    for target in dict.fromkeys(leaves):
        if not isinstance(target, (Contract, Prim)):
            continue
        found = selections.peel(target)
        if found is None or isinstance(found[0], Const) or not found[0].rank:
            continue
        main, select = found
        held: dict = {}
        places: dict = {}

        def rebuilt(n: Node, depth: int):
            if n is target:
                return main
            if not n.rank:
                return n
            if n.shape != node.shape:
                return None
            if depth and isinstance(n, Map):
                args = [rebuilt(b, depth - 1) for b in n.args]
                return None if any(b is None for b in args) else \
                    build.elementwise(n.fn, args)
            h = places.get(n)
            if h is None:
                h = places[n] = Var(f"\0held{len(places)}", main.shape)
                held[h] = n
            return h
        inner = rebuilt(node, 2)
        if not held or not (isinstance(inner, Map) and inner.fn == node.fn):
            continue
        yield inner, (lambda r, select=select, held=held, main=main:
                      _selected_into(r, select, held, main.shape, _near(main)))


def _near(node: Node) -> set:
    """`node` and the nodes under it within PLACEHELD_DEPTH levels (at most PLACEHELD_NODES
    * 4 of them): what a rewrite's variables bind, none of which holds a placeholder."""
    found, level = {node}, [node]
    for _ in range(PLACEHELD_DEPTH):
        level = [c for n in level for c in n.children() if c not in found]
        found.update(level)
        if not level or len(found) > 4 * PLACEHELD_NODES:
            break
    return found


def _selected_into(r: Node, select, held: dict, shape, clean: set) -> Node | None:
    """`select(r)` for `r` in which the placeholders `held` lie only under elementwise
    functions, sums and scales of nodes shaped `shape` (scalars beside them), pushed down to
    them, each placeholder's selection the node it holds the place of; None for another
    `r`."""
    memo: dict = {}
    within: dict = {}

    def holds(n: Node, depth: int):
        """Whether a placeholder lies under `n` (None: not known within `depth` levels)."""
        if n in within:
            return within[n]
        if n in held:
            found = True
        elif n in clean:
            found = False
        elif not isinstance(n, (Map, Add, Contract)) or n.shape != shape:
            found = _holds_any(n, held, clean)
        elif depth == 0:
            found = None
        else:
            found = False
            for c in n.children():
                inside = holds(c, depth - 1)
                if inside is None or inside:
                    found = inside
                    if inside:
                        break
        within[n] = found
        return found

    def into(n: Node) -> Node | None:
        if n in memo:
            return memo[n]
        inside = holds(n, PLACEHELD_DEPTH)
        if n in held:
            made = held[n]
        elif inside is None:
            made = None
        elif not inside:
            made = select(n) if n.shape == shape else n if not n.rank else None
        elif n.shape != shape:
            made = None
        elif isinstance(n, Map):
            args = [into(b) for b in n.args]
            made = None if any(b is None for b in args) else build.elementwise(n.fn, args)
        elif isinstance(n, Add):
            terms = [(c, into(t)) for c, t in n.terms]
            made = None if any(t is None for _, t in terms) else build.add(terms)
        else:
            scale, rest = build.split_scale(n)
            made = None
            if scale != 1.0 and rest is not n:
                inner = into(rest)
                made = None if inner is None else build.scale(scale, inner)
        memo[n] = made
        return made
    return into(r)


# How deep `_selected_into` looks for placeholders under a replacement (a rule's right side is
# a few functions deep), and how many nodes off that path it looks through for one.
PLACEHELD_DEPTH = 8
PLACEHELD_NODES = 64


def _holds_any(n: Node, held: dict, clean: set):
    """Whether a placeholder lies under `n`, a node off the elementwise path (a reduction or
    a tensor function of one would make the selection wrong): None where not known after
    PLACEHELD_NODES nodes. The placeholders are new variables, so only a replacement that
    moved one there holds it, within the few nodes its rule's right side built."""
    stack, seen = [n], set()
    while stack:
        m = stack.pop()
        if m in held:
            return True
        if m in seen or m in clean:
            continue
        seen.add(m)
        if len(seen) > PLACEHELD_NODES:
            return None
        stack.extend(m.children())
    return False


def _broadcast_sum(a: Node):
    """For a `Contract` of one tensor that sums some of its axes and broadcasts along new ones
    (`sum(exp(x))` broadcast to [k], as `sum(exp(x)[:, None] * ones(n, k), axis=0)` is
    lowered): (the sum, a function that broadcasts a node shaped like it as `a` does); None for
    anything else."""
    if not isinstance(a, Contract) or len(a.operands) != 1:
        return None
    (tensor, labels), out = a.operands[0], a.out
    if isinstance(tensor, Const) or len(set(labels)) != len(labels) or \
            all(l in labels for l in out) or all(l in out for l in labels):
        return None
    kept = tuple(l for l in out if l in labels)
    total = build.contract(kept, [(tensor, labels)], {l: a.dims[l] for l in kept})
    dims = {l: a.dims[l] for l in out}
    return total, lambda r: build.contract(out, [(r, kept)], dims)


def _sum_seen_through(node: Add):
    """(the sum of the whole tensor, a function that selects from a replacement as `node`'s
    selection term selects from the tensor) pairs, none where there is none: `node` has one
    term that selects entries of a tensor (selections.py, no broadcast), another term is a
    function of that whole tensor (`logsumexp(x)` beside `x[k]` or `x[::-1]`) or the tensor is
    a function and the other terms numbers (`1 - softmax(x)[k]`, `1 - softmax(x)[::2]`), and
    its other terms are numbers, scalars or, where the selection only picks with integer
    indices (`Unit`s) and takes diagonals, tensors shaped like `node`, laid back on the whole
    tensor's axes (broadcast along the picked ones; along all but one axis of a diagonal,
    each in turn: `logsumexp(L, axis=1) - diag(L)` is the diagonal of `logsumexp(L, axis=1)[:,
    None] - L`)."""
    selection = None
    for c, t in node.terms:
        if build.constant_value(t) is not None or not isinstance(t, (Contract, Prim)):
            continue
        found = selections.peel(t, broadcasts=False)
        if found is None:
            continue
        if selection is not None:
            return  # two selections: left to the rewrites of the sum as it is
        selection = (t, *found)
    if selection is None:
        return
    t0, main, back = selection
    scalars, tensors, others = [], [], []
    for c, t in node.terms:
        value = build.constant_value(t)
        if t is not t0 and isinstance(t, Contract) and len(t.operands) == 1 and \
                not t.operands[0][0].rank:
            t = t.operands[0][0]  # a scalar broadcast (`logsumexp(x)` beside `x[::-1]`)
        others.append(t)
        if t is t0:
            scalars.append((c, main))
        elif value is not None:  # a number, as lowering writes one (`1 - softmax(x)`)
            scalars.append((c * value, build.broadcast_to(build.const(1.0), main.shape)))
        elif not t.rank:
            scalars.append((c, build.broadcast_to(t, main.shape)))
        elif t.shape == node.shape:
            tensors.append((c, t))
        else:
            return
    if not any(main in t.children() for t in others if t is not t0) and not (
            isinstance(main, (Map, Prim)) and all(build.constant_value(t) is not None
                                                  for t in others if t is not t0)):
        return  # no function of the whole tensor beside its selection, nor a selection of a
        #         function and numbers (`1 - softmax(x)[k]`): nothing to see through
    if not tensors:
        yield build.add(scalars), back
        return
    for labels in _laid_back_labels(t0):
        sizes = dict(zip(labels, main.shape))
        yield build.add([*scalars, *((c, build.contract(labels, [(t, t0.out)], sizes))
                                     for c, t in tensors)]), back


# The ways `_laid_back_labels` lays a tensor back on the axes of diagonals, at most.
MAX_LAID_BACK = 4


def _laid_back_labels(t: Node):
    """For a `Contract` that picks entries of one tensor with integer indices (`Unit`s) and
    keeps or transposes the other axes, or takes diagonals of them: labels of the whole
    tensor's axes that place a tensor shaped like `t` (on `t.out`) so that `t`'s selection
    gives it back, each axis of a diagonal but one on a label of its own (a broadcast), each
    such choice in turn; none for another node."""
    if not isinstance(t, Contract):
        return
    (main, labels), picks = t.operands[0], t.operands[1:]
    if isinstance(main, Const) or any(not isinstance(n, Unit) or len(ls) != 1 or
                                      ls[0] not in labels or labels.count(ls[0]) != 1
                                      for n, ls in picks):
        return
    picked = {ls[0] for _, ls in picks}
    if len(picked) != len(picks) or any(l not in t.out and l not in picked for l in labels) \
            or not set(t.out) <= set(labels):
        return  # a sum or a broadcast: not a pick
    repeated = [l for l in dict.fromkeys(labels) if labels.count(l) > 1]
    fresh = max([*labels, *t.out]) + 1
    choices = [()]
    for l in repeated:  # which occurrence of each diagonal's label keeps it
        choices = [(*c, k) for c in choices for k in range(labels.count(l))]
    for choice in choices[:MAX_LAID_BACK]:
        kept = dict(zip(repeated, choice))
        seen: dict = {}
        whole = []
        for l in labels:
            n = seen[l] = seen.get(l, -1) + 1
            if l in kept and n != kept[l]:
                whole.append(fresh)
                fresh += 1
            else:
                whole.append(l)
        yield tuple(whole)


def _scaled_selection(a: Node):
    """For a number times a selection, `-softmax(x)[::2]`: (the number times the whole
    tensor, a function that makes the selection), as `selections.peel` gives for a selection
    itself; None for anything else."""
    scale, rest = build.split_scale(a)
    if scale == 1.0 or rest is a:
        return None
    found = selections.peel(rest)
    if found is None or not found[0].rank:
        return None
    return build.scale(scale, found[0]), found[1]


def _lifted(a: Map) -> Node | None:
    """`f(sel(x))` as `sel(f(x))`, for an elementwise f of one selection (selections.py; the
    other arguments scalars); None for anything else."""
    varying = [b for b in a.args if build.constant_value(b) is None]
    if len(varying) != 1 or any(b.rank for b in a.args if b is not varying[0]):
        return None
    found = selections.peel(varying[0])
    if found is None or isinstance(found[0], Const) or not found[0].rank:
        return None
    main, back = found
    return back(build.elementwise(a.fn, [main if b is varying[0] else b for b in a.args]))


def _lifted_sum(a: Add) -> Node | None:
    """A sum of numbers and terms that make one selection (selections.py) of tensors of one
    shape, `1 + exp(X).T` or `1 - softmax(x)[::2]`, as the selection of the sum, `(1 +
    exp(X)).T`; None for anything else."""
    back, shape, terms = None, None, []
    for c, t in a.terms:
        value = build.constant_value(t)
        if value is not None:
            terms.append((c * value, None))
            continue
        found = selections.peel(t)
        if found is None:
            return None
        main, made = found
        if back is None:
            back, shape = made, main.shape
        elif main.shape != shape or back(main) is not t:
            return None  # another selection
        terms.append((c, main))
    if back is None:
        return None
    whole = build.add([(c, build.broadcast_to(build.const(1.0), shape) if m is None else m)
                       for c, m in terms])
    return back(whole)


def _scaled_sum(node: Node) -> Node | None:
    """For a contraction that sums an index, with a constant factor `c` or a quotient by a
    scalar `a / s` among its operands: `c * sum(rest)` or `sum(a * rest) / s`, the scalar taken
    out of the sum; None for any other node."""
    if not isinstance(node, Contract) or build._is_product(node):
        return None
    out = node.out
    sizes = {l: node.dims[l] for l in out}
    for k, (operand, labels) in enumerate(node.operands):
        rest = node.operands[:k] + node.operands[k + 1:]
        if isinstance(operand, Const) and rest:
            return Contract(out, [(operand, ()), (build.contract(out, rest, sizes), out)], sizes)
        if isinstance(operand, Map) and operand.fn == "div" and not operand.args[1].rank \
                and build.constant_value(operand.args[1]) is None:
            a, scalar = operand.args
            inner = build.contract(out, [*rest, (a, labels if a.rank else ())], sizes)
            return build.elementwise("div", [inner, scalar])
    return None


def _argument_heads(rule) -> frozenset:
    """The functions that a pattern applies directly to the arguments of its head
    (`exp` in `exp(u) / (1 + exp(u))`, `abs` in `abs(u) ** 2`): a node none of whose
    arguments applies them, near enough to be seen through a broadcast or transpose, is not
    matched. Memoized on the compiled rule."""
    heads = rule.__dict__.get("_argument_heads")
    if heads is None:
        p = rule.pattern
        args = p.args if isinstance(p, ast.Call) else \
            (p.left, p.right) if isinstance(p, ast.BinOp) else ()
        heads = frozenset(a.func for a in args if isinstance(a, ast.Call)
                          and a.func in rule.rules.functions)
        rule.__dict__["_argument_heads"] = heads
    return heads


def _functions_near(node: Node) -> set[str]:
    """The functions (elementwise and tensor) applied at `node`'s arguments and at their
    operands: what a head's arguments apply, seen through one broadcast, transpose or sum."""
    return _functions_at(node.children())


def _functions_at(children) -> set[str]:
    """The functions applied at `children` and at their operands."""
    found = set()
    for child in children:
        if isinstance(child, (Map, Prim)):
            found.add(child.fn)
        for grandchild in child.children():
            if isinstance(grandchild, (Map, Prim)):
                found.add(grandchild.fn)
    return found


def _functions_within(node: Node) -> set[str]:
    """The functions (elementwise and tensor) applied at `node`'s operands and their operands
    (a product's factors, a sum's terms, those of the sums nested in it, and their factors):
    enough to skip a rewrite that cannot match."""
    if isinstance(node, Add):
        # The terms `flat_terms` gives, without building its list: nested sums are opened
        # left to right, depth first, while the count of terms stays within MAX_FLAT_TERMS
        # (a chain of 20,000 nested sums was spliced 15 times per level).
        count = len(node.terms)
        pending = [t for _, t in reversed(node.terms)]
        children = []
        while pending:
            t = pending.pop()
            if isinstance(t, Add) and count - 1 + len(t.terms) <= MAX_FLAT_TERMS:
                count += len(t.terms) - 1
                pending.extend([u for _, u in reversed(t.terms)])
            else:
                children.append(t)
    else:
        children = node.children()
    return _functions_at(children)


def _rebuilt(node: Node, normal: dict[Node, Node]) -> Node:
    """`node` with its children replaced by their normal forms, through the builders."""
    if isinstance(node, Map):
        return build.elementwise(node.fn, [normal[a] for a in node.args])
    if isinstance(node, Contract):
        return build.contract(node.out, [(normal[c], ls) for c, ls in node.operands],
                              {l: node.dims[l] for l in node.out})
    if isinstance(node, Add):
        return build.add([(c, normal[t]) for c, t in node.terms])
    return Prim(node.fn, tuple(normal[a] for a in node.args), node.params, node.shape)
