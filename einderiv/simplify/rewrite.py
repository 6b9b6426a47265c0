"""The rewrite pass: every node of a program in normal form under the rule book's rewrites.

Children are rewritten before their parents, and a node whose children changed is rebuilt
through the IR builders (so every fold of lowering applies again); then the rewrites are tried
at the node in file order, and what one gives is rewritten in turn, until none applies. Each
node is visited once (memoized on the hash-consed node, without recursion), so the pass is
linear in the program's size, and a shared subexpression is rewritten once. An elementwise
function of a pick, a slice, a transpose or a broadcast that no rewrite matches is tried once
more as the function of the whole tensor (`log(softmax(x)[k])` is `log_softmax(x)[k]`, and
`exp(x[k]) / sum(exp(x))`, seen as `exp(x)[k] / sum(exp(x))`, is `softmax(x)[k]`), and a sum
of a pick and a function of the whole tensor as the pick of the whole sum (`logsumexp(x) -
x[k]`, seen as `(logsumexp(x) - x)[k]`, is `-log_softmax(x)[k]`).

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
(`softmax(x) - y = softmax_minus(x, y)`), and the builders never add one.

>>> import einderiv
>>> print(einderiv.compile("log(1 + exp(x))", {"x": ("n",)}).formula)
softplus(x)
"""
from __future__ import annotations

from ..ir import build
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Unit
from ..parse import ast
from ..rulebook import RuleBook
from . import det_products, solves
from .pattern import MAX_FLAT_TERMS, compiled


# Rewrites applied per node normalized, past which rewriting is taken to loop (each rewrite
# takes a function application or a leaf out, so a program of n nodes has at most a few per
# node; MIN_REWRITES covers small programs whose nodes rewrite into larger ones).
REWRITES_PER_NODE = 64
MIN_REWRITES = 100_000


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
        if isinstance(node, Add):
            return self._sum_through_selection(node, rules)
        if not isinstance(node, Map):
            return None
        return self._scale_outside(node, rules) or self._through_selection(node, rules)

    def _sum_through_selection(self, node: Add, rules) -> Node | None:
        """A sum of one selection of a tensor and scalars is that selection of the sum with
        the scalars broadcast: `logsumexp(x) - x[k]` is `(logsumexp(x) - x)[k]`, which is
        `-log_softmax(x)[k]` (and `logsumexp(X, axis=1) - X[:, k]` a column of it). Tried where
        no rewrite applies to the sum itself, and kept only where one applies to the sum of
        the whole tensor."""
        seen = _sum_seen_through(node)
        if seen is None:
            return None
        inner, back = seen
        if not isinstance(inner, Add):
            return None
        present = _functions_within(inner) if inner not in self.whole else set()
        return self._whole(inner, back, [r for r in rules
                                         if not r.needs or r.needs <= present])

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
        seen = _seen_through(node, self._lifts(node.fn, rules))
        if seen is None:
            return None
        inner, back = seen
        return self._whole(inner, back, rules)

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


def _seen_through(node: Map, lift: frozenset = frozenset()):
    """(the Map of the whole tensor, a function that selects from a replacement as `node`'s
    argument selects from the tensor), or None. The argument may pick entries with integer
    indices (`Unit`s), slice windows (`Delta`s), transpose and broadcast; an elementwise
    function in `lift` of one such selection counts as that selection of the function
    (`exp(x[0])` as `exp(x)[0]`). The other arguments are scalars, or, where the selection
    neither slices nor broadcasts, tensors laid back on the whole tensor's axes (broadcast
    along the picked ones, transposed back): `exp(Y)[:, 0] / sum(exp(Y), axis=1)` is
    `(exp(Y) / sum(exp(Y), axis=1)[:, None])[:, 0]`."""
    for k, a in enumerate(node.args):
        if isinstance(a, Map) and a.fn in lift:
            a = _lifted(a)
        elif isinstance(a, Add):
            a = _lifted_sum(a)
        if not isinstance(a, Contract) or a.shape != node.shape:
            continue  # (a scalar, broadcast by the Map, is no selection of its shape)
        (main, labels), picks = a.operands[0], a.operands[1:]
        if isinstance(main, Const) or len(set(labels)) != len(labels):
            continue
        picked, windows = set(), False
        for n, ls in picks:
            if isinstance(n, Unit):
                picked.add(ls[0])
            elif isinstance(n, Delta) and len(ls) == 2 and ls[0] in a.out \
                    and ls[0] not in labels and ls[1] in labels and ls[1] not in a.out:
                picked.add(ls[1])  # a window: output row i is the tensor's i + offset
                windows = True
            else:
                picked = None
                break
        if picked is None or len(picked) != len(picks) or any(
                l not in a.out and l not in picked for l in labels):
            continue  # a product, a sum or a scale: not a selection
        if not picks and labels == a.out:
            continue
        tensors = any(b.rank for j, b in enumerate(node.args) if j != k)
        if tensors and (windows or not set(a.out) <= set(labels)):
            continue
        sizes = {l: a.dims[l] for l in labels}
        args = [main if j == k else build.contract(labels, [(b, a.out)], sizes) if b.rank
                else b for j, b in enumerate(node.args)]
        inner = build.elementwise(node.fn, args)
        if not (isinstance(inner, Map) and inner.fn == node.fn):
            return None
        dims = {l: a.dims[l] for l in a.out}
        return inner, lambda r, a=a, labels=labels, picks=picks, dims=dims: build.contract(
            a.out, [(r, labels), *picks], dims)
    return None


def _sum_seen_through(node: Add):
    """(the sum of the whole tensor, a function that selects from a replacement as `node`'s
    selection term selects from the tensor), or None: `node` has one term that picks entries
    of a tensor (`Unit`s only: no window, no broadcast), another term is a function of that
    whole tensor (`logsumexp(x)` beside `x[k]`) or the tensor is a function and the other terms
    numbers (`1 - softmax(x)[k]`), and its other terms are numbers, scalars or,
    where the pick keeps an axis, tensors shaped like `node`, laid back on the whole tensor's
    axes (broadcast along the picked ones)."""
    selection = None
    for c, t in node.terms:
        if build.constant_value(t) is not None or not isinstance(t, Contract):
            continue
        (main, labels), picks = t.operands[0], t.operands[1:]
        if isinstance(main, Const) or not picks or len(set(labels)) != len(labels) or any(
                not isinstance(n, Unit) or len(ls) != 1 or ls[0] not in labels
                for n, ls in picks):
            continue
        if any(l not in t.out and l not in {ls[0] for _, ls in picks} for l in labels) or \
                not set(t.out) <= set(labels):
            continue  # a sum or a broadcast: not a pick
        if selection is not None:
            return None  # two selections: left to the rewrites of the sum as it is
        selection = (c, t, main, labels, picks)
    if selection is None:
        return None
    _, t0, main, labels, picks = selection
    sizes = {l: t0.dims[l] for l in labels}
    terms = []
    for c, t in node.terms:
        value = build.constant_value(t)
        if t is t0:
            terms.append((c, main))
        elif value is not None:  # a number, as lowering writes one (`1 - softmax(x)`)
            terms.append((c * value, build.broadcast_to(build.const(1.0), main.shape)))
        elif not t.rank:
            terms.append((c, build.contract(labels, [(t, ())], sizes)))
        elif t.shape == node.shape:
            terms.append((c, build.contract(labels, [(t, t0.out)], sizes)))
        else:
            return None
    if not any(main in t.children() for c, t in node.terms if t is not t0) and not (
            isinstance(main, (Map, Prim)) and all(build.constant_value(t) is not None
                                                  for c, t in node.terms if t is not t0)):
        return None  # no function of the whole tensor beside its pick, nor a pick of a
        #              function and numbers (`1 - softmax(x)[k]`): nothing to see through
    inner = build.add(terms)
    dims = {l: t0.dims[l] for l in t0.out}
    return inner, lambda r: build.contract(t0.out, [(r, labels), *picks], dims)


def _lifted(a: Map) -> Contract | None:
    """`f(sel(x))` as `sel(f(x))`, for an elementwise f of one selection (the other arguments
    scalars); None for anything else."""
    varying = [b for b in a.args if build.constant_value(b) is None]
    if len(varying) != 1 or not isinstance(varying[0], Contract) or any(
            b.rank for b in a.args if b is not varying[0]):
        return None
    sel = varying[0]
    (main, labels), picks = sel.operands[0], sel.operands[1:]
    if isinstance(main, Const) or not main.rank:
        return None
    whole = build.elementwise(a.fn, [main if b is sel else b for b in a.args])
    lifted = build.contract(sel.out, [(whole, labels), *picks],
                            {l: sel.dims[l] for l in sel.out})
    return lifted if isinstance(lifted, Contract) else None


def _lifted_sum(a: Add) -> Contract | None:
    """A sum of one selection of tensors and numbers, `1 + exp(X).T`, as the selection of
    the sum, `(1 + exp(X)).T`; None for anything else."""
    form, terms = None, []
    for c, t in a.terms:
        value = build.constant_value(t)
        if value is not None:
            terms.append((c * value, None))
            continue
        if not isinstance(t, Contract):
            return None
        (main, labels), picks = t.operands[0], t.operands[1:]
        if form is None:
            form = (labels, picks, main.shape, t.out)
            dims = {l: t.dims[l] for l in t.out}
        elif form != (labels, picks, main.shape, t.out):
            return None
        terms.append((c, main))
    if form is None:
        return None
    labels, picks, shape, out = form
    whole = build.add([(c, build.broadcast_to(build.const(1.0), shape) if m is None else m)
                       for c, m in terms])
    lifted = build.contract(out, [(whole, labels), *picks], dims)
    return lifted if isinstance(lifted, Contract) else None


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
