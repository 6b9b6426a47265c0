"""Rule -> IR: the partial derivatives of one primitive node, from its rule-table line.

Elementwise rules (`d tanh(x) / dx = 1 - tanh(x)**2`) are ordinary expressions of the
arguments, lowered with the parameters bound to the node's arguments; because the IR is
hash-consed, `tanh(x)` in the rule *is* the forward node, so the derivative reuses the forward
result instead of recomputing it.

Tensor rules carry indices (`d inv(X)[i,j] / dX[k,l] = -inv(X)[i,k]*inv(X)[l,j]`). An index names
a *core* axis group of the primitive: for a square-matrix primitive each matrix axis, for an
axis primitive (`softmax(x; axis)`) the whole group of axes it works along. All other axes are
batch axes, shared elementwise by every factor, so one rule serves stacked matrices and any
choice of `axis`. A primitive of two arguments (`solve(A, b)`) has a rule per argument, and a
Jacobian by each. An index that is not on the left is summed (`_summed_index`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache
from itertools import count

from ..errors import EinderivError, RuleError
from ..ir import build
from ..ir.dims import Dim, show_shape
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Var, topological
from ..parse import ast, parse
from ..rulebook import RuleBook
from ..rulebook.table import SQUARE_PAIRS, Derivative


@lru_cache(maxsize=None)
def rule_body(rule: Derivative) -> ast.Expr:
    try:
        program = parse(rule.body)
    except EinderivError as e:
        raise RuleError(f"{rule.origin}: the rule does not parse: {e.message}", e.span) from None
    if len(program.statements) != 1 or not isinstance(program.statements[0], ast.Expr):
        raise RuleError(f"{rule.origin}: a rule's right-hand side is one expression")
    return program.statements[0]


def _lowering_scope(rules: RuleBook, bound: dict, axes=None):
    from ..lower.lower import Scope
    scope = Scope({}, rules)
    scope.bound = dict(bound)
    scope.default_axes = axes
    return scope


def _missing(node, position: int, rules: RuleBook) -> RuleError:
    f = rules.get(node.fn)
    param = f.params[position] if f and position < f.arity else f"argument {position}"
    return RuleError(f"no derivative rule for {node.fn} with respect to {param}",
                     hint=f"add a line 'd {node.fn}({', '.join(f.params) if f else '...'}) / "
                          f"d{param} = ...' to a rule file")


# (rule book) -> {(function, position, argument signature): (template, placeholders)}. Only
# frozen rule books are cached: an unfrozen one may still gain or replace rules.
_TEMPLATES: "weakref.WeakKeyDictionary[RuleBook, dict]" = weakref.WeakKeyDictionary()
# Templates kept per rule book, oldest dropped first: the key holds the constant arguments
# (`x ** c` for 20,000 different c is 20,000 templates), and a long-lived process must not grow
# without bound. Past this many, a rule is lowered again, which is only slower.
MAX_TEMPLATES = 4096
# (rule book) -> {(function, parameters, argument shape): (Jacobian, placeholder, steps)}: a
# tensor rule lowered once with a placeholder argument (tensor_jacobian).
_JACOBIANS: "weakref.WeakKeyDictionary[RuleBook, dict]" = weakref.WeakKeyDictionary()


def elementwise_partial(node: Map, position: int, rules: RuleBook) -> Node:
    """d node / d node.args[position], elementwise: shaped like `node` (or a scalar).

    The rule body is lowered once per (function, position, rule book, argument shapes and
    constants), with placeholder variables for the arguments, and each use substitutes the
    node's arguments into that template: re-lowering the body for every `tanh` of a long
    program was most of derivation's time.
    """
    rule = rules.derivative(node.fn, position)
    if rule is None:
        raise _missing(node, position, rules)
    if rule.out_indices or rule.wrt_indices:
        raise RuleError(f"{rule.origin}: {node.fn} is an elementwise function: the derivative "
                        f"rule of an entry by the same entry takes no indices", rule.span(),
                        hint=f"write it as d {node.fn}({', '.join(rule.params)}) / d{rule.wrt} "
                             "= EXPRESSION, in the arguments")
    # Constant arguments are part of the template (the rule folds them, `x ** 2`); any other
    # argument is opaque to lowering, so one placeholder of its shape stands for it.
    signature = tuple((a.shape, build.constant_value(a)) for a in node.args)

    def make():
        holders = tuple(a if value is not None else Var(f"\0arg{k}", shape)
                        for k, (a, (shape, value)) in enumerate(zip(node.args, signature)))
        template = _lower_rule(node, rule, rules, holders)
        return template, holders, _dependents(template, holders)

    template, holders, steps = _cached(_TEMPLATES, rules, (node.fn, position, signature), make)
    return substitute(template, {h: a for h, a in zip(holders, node.args) if h is not a}, steps)


def _cached(caches: "weakref.WeakKeyDictionary", rules: RuleBook, key, make):
    """`make()`, kept in `caches[rules]` under `key` when the rule book is frozen (an unfrozen
    one may still gain or replace rules), at most MAX_TEMPLATES per book, oldest dropped."""
    if not rules.frozen:
        return make()
    cache = caches.get(rules)
    if cache is None:
        cache = caches.setdefault(rules, {})
    entry = cache.get(key)
    if entry is None:
        entry = make()
        if len(cache) >= MAX_TEMPLATES:
            try:
                cache.pop(next(iter(cache)), None)
            except (StopIteration, RuntimeError):  # another thread changed it meanwhile
                pass
        cache[key] = entry
    return entry


def _lower_rule(node: Map, rule: Derivative, rules: RuleBook, args) -> Node:
    from ..lower.lower import lower_expr
    scope = _lowering_scope(rules, dict(zip(rule.params, args)))
    try:
        partial = lower_expr(rule_body(rule), scope)
    except EinderivError as e:
        at = (e.span.start, e.span.end) if e.span and e.span.source == rule.body else None
        raise RuleError(f"{rule.origin}: cannot apply the rule for {node.fn}: {e.message}",
                        rule.span(at=at), hint=e.hint) from None
    # The pullback multiplies it entry by entry with the adjoint (derive/reverse.py): one entry
    # per entry of the result, or a number for all of them. Any other shape (`outer(x, x)`) is
    # no derivative of an elementwise function, and would break the product.
    if partial.shape and partial.shape != node.shape:
        call = f"{node.fn}({', '.join(show_shape(a.shape) for a in args)})"
        raise RuleError(f"{rule.origin}: the derivative of {node.fn} by {rule.wrt} has shape "
                        f"{show_shape(partial.shape)} where {call} has shape "
                        f"{show_shape(node.shape)}: "
                        "an elementwise function's derivative is shaped like its result, or is "
                        "a number", rule.span(rule.body),
                        hint="write it entry by entry, in the arguments (d tanh(x) / dx = "
                             "sech2(x)), with no reduction or outer product")
    return partial


def _dependents(template: Node, holders) -> list[Node]:
    """The nodes of `template` that depend on a placeholder, children first."""
    changed = set(holders)
    steps = []
    for n in topological(template):
        if n not in changed and any(k in changed for k in n.children()):
            changed.add(n)
            steps.append(n)
    return steps


def substitute(template: Node, mapping: dict[Node, Node], steps=None) -> Node:
    """`template` with the nodes in `mapping` replaced, rebuilt through the IR builders so
    that every fold lowering would do with the real nodes (inlined products, merged terms,
    cancelled reciprocals) is done here too; no recursion. `steps`: `_dependents(template,
    mapping)`, when known."""
    if not mapping:
        return template
    new: dict[Node, Node] = dict(mapping)
    # A function of arguments none of which is a constant folds no differently with the real
    # nodes than with the placeholders (the folds of `build.elementwise` look at constant
    # arguments, and a select at equal branches): it is built as it is, directly.
    for n in steps if steps is not None else _dependents(template, mapping):
        if isinstance(n, Map):
            args = [new.get(a, a) for a in n.args]
            new[n] = Map(n.fn, *args) if n.fn != "where" and all(
                (a.shape == n.shape or not a.shape) and build.constant_value(a) is None
                for a in args) \
                else build.elementwise(n.fn, args)
        elif isinstance(n, Contract):
            new[n] = build.contract(n.out, [(new.get(c, c), ls) for c, ls in n.operands],
                                    {l: n.dims[l] for l in n.out})
        elif isinstance(n, Add):
            new[n] = build.add([(c, new.get(t, t)) for c, t in n.terms])
        else:  # a tensor primitive: no folds apply to its arguments
            new[n] = Prim(n.fn, tuple(new.get(a, a) for a in n.args), n.params, n.shape)
    return new.get(template, template)


@dataclass
class Jacobian:
    """A labelled tensor J with `out_labels` for the node's axes and `arg_labels` for the
    argument's: `d node[out_labels] / d arg[arg_labels] = J[labels]`."""

    node: Node | None
    labels: tuple[int, ...]
    out_labels: tuple[int, ...]
    arg_labels: tuple[int, ...]
    # A rule that sums an index not on the left: its terms, each (coefficient, tensor, labels)
    # with its own summed indices open (the pullback sums them with the adjoint's), and `node`
    # None. One tensor would have to sum them first, term by term: an n^4 Jacobian where the
    # pullback through each term is a product of matrices (pinv's, cholesky's).
    terms: list | None = None


class _Layout:
    """Which axes of a tensor are core (named by rule indices) and which are batch."""

    def __init__(self, groups: list[tuple[int, ...]], batch: list[int]):
        self.groups = groups  # core axis groups, in order
        self.batch = batch  # batch axes, in order (matched positionally to the batch labels)


def _layouts(node: Prim, rules: RuleBook, position: int = 0) -> tuple[_Layout, _Layout]:
    """The layouts of the node's result and of its argument number `position`."""
    f = rules.get(node.fn)
    arg = node.args[position]
    if f.shape == "square_rhs":
        # solve(A, b): A's two axes are core, each its own index; b's (and the result's)
        # first axis after the batch is core, and b's column axis, if any, is a batch axis
        # that A lacks (the same A for every column).
        r = node.args[0].rank
        batch = list(range(r - 2))
        rhs = _Layout([(r - 2,)], batch + ([r - 1] if node.rank == r else []))
        return rhs, (_Layout([(r - 2,), (r - 1,)], batch) if position == 0 else rhs)
    if f.shape == "transposed" or f.shape in SQUARE_PAIRS:
        # core axes: the matrix's two, and for det's derivatives (square_pair, ...) a pair
        # more per derivative: each axis its own index
        r = arg.rank
        arg_l = _Layout([(r - 2,), (r - 1,)], list(range(r - 2)))
        pairs = SQUARE_PAIRS.get(f.shape, 1)
        out_l = _Layout([(a,) for a in range(r - 2, r - 2 + 2 * pairs)], list(range(r - 2)))
        return out_l, arg_l
    axes = node.params[0]
    batch = [a for a in range(arg.rank) if a not in axes]
    arg_l = _Layout([tuple(axes)], batch)
    out_l = arg_l if f.shape in ("same", "cotangent") else _Layout([], list(range(len(batch))))
    return out_l, arg_l


def tensor_jacobian(node: Prim, rules: RuleBook, position: int = 0) -> Jacobian:
    """The Jacobian of `node` by its argument number `position`."""
    rule = rules.derivative(node.fn, position)
    if rule is None:
        raise _missing(node, position, rules)
    out_l, arg_l = _layouts(node, rules, position)
    if len(rule.out_indices) != len(out_l.groups) or len(rule.wrt_indices) != len(arg_l.groups):
        f = rules.get(node.fn)
        raise RuleError(f"{rule.origin}: {node.fn} (shape rule {f.shape}) needs "
                        f"{len(out_l.groups)} output and {len(arg_l.groups)} argument indices "
                        f"on the left, the rule gives {len(rule.out_indices)} and "
                        f"{len(rule.wrt_indices)}", rule.span(),
                        hint="an index names a core axis: each axis of a square matrix, or "
                             "the group of axes an axis primitive works along (CONTRIBUTING.md, "
                             "Tensor rules)")
    shapes = tuple(a.shape for a in node.args)
    # The rule is lowered once per (function, position, parameters, argument shapes) with
    # placeholders for the arguments, and each use substitutes the node's own: an unrolled
    # network applies softmax's rule (a dozen indexed terms) once per step.
    def make():
        holders = tuple(Var(f"\0arg{k}", shape) for k, shape in enumerate(shapes))
        general = Prim(node.fn, holders, node.params, node.shape)
        template = _IndexedLowering(general, rule, rules, out_l, arg_l, position).run()
        # A sum of terms is kept a flat sum (see _IndexedLowering._terms): each term is
        # substituted on its own, and the sum made directly, not by the builder that factors.
        if template.terms is not None:
            terms = template.terms
        else:
            terms = [(c, t, template.labels) for c, t in (
                template.node.terms if isinstance(template.node, Add) else [(1.0, template.node)])]
        return template, holders, [(c, t, ls, _dependents(t, holders)) for c, t, ls in terms]

    template, holders, terms = _cached(_JACOBIANS, rules,
                                       (node.fn, position, node.params, shapes), make)
    mapping = dict(zip(holders, node.args))
    parts = [(c, substitute(t, mapping, steps), ls) for c, t, ls, steps in terms]
    if template.terms is not None:
        return Jacobian(None, template.labels, template.out_labels, template.arg_labels, parts)
    jac = Add([(c, t) for c, t, _ in parts]) if isinstance(template.node, Add) else parts[0][1]
    return Jacobian(jac, template.labels, template.out_labels, template.arg_labels)


class _IndexedLowering:
    """Lower an indexed rule body to a labelled contraction."""

    def __init__(self, node: Prim, rule: Derivative, rules: RuleBook, out_l, arg_l,
                 position: int = 0):
        self.node, self.rule, self.rules = node, rule, rules
        self.out_l, self.arg_l, self.position = out_l, arg_l, position
        # The layout of each argument, to tell the tensors of the body apart.
        self.arg_ls = [_layouts(node, rules, k)[1] if k != position else arg_l
                       for k in range(len(node.args))]
        fresh = count()
        arg = node.args[position]
        # The batch labels, each shared by every factor that has the axis: the longest batch
        # of the result's and the arguments' (solve's result has b's column axis, A does not).
        whole = max([(out_l, node.shape), *zip(self.arg_ls, (a.shape for a in node.args))],
                    key=lambda ls: len(ls[0].batch))
        self.batch = [next(fresh) for _ in whole[0].batch]
        self.dims: dict[int, Dim] = {l: whole[1][a] for l, a in zip(self.batch, whole[0].batch)}
        # Each rule index stands for a group of labels (one per axis in its core group).
        self.index: dict[str, tuple[int, ...]] = {}
        for name, group in zip(rule.out_indices, out_l.groups):
            self.index[name] = self._group(group, node.shape, fresh)
        for name, group in zip(rule.wrt_indices, arg_l.groups):
            self.index[name] = self._group(group, arg.shape, fresh)
        self.free = set(self.batch) | {l for g in self.index.values() for l in g}
        self.summed: set[int] = set()  # the labels of indices not on the left (_summed_index)
        self.fresh = fresh
        self.scope = _lowering_scope(rules, dict(zip(rule.params, node.args)),
                                     node.params[0] if node.params else None)

    def _group(self, axes, shape, fresh) -> tuple[int, ...]:
        labels = tuple(next(fresh) for _ in axes)
        for l, a in zip(labels, axes):
            self.dims[l] = shape[a]
        return labels

    def run(self) -> Jacobian:
        arg = self.node.args[self.position]
        try:
            node, labels, terms = self._terms(rule_body(self.rule))
        except EinderivError as e:
            if isinstance(e, RuleError):
                raise
            raise RuleError(f"{self.rule.origin}: cannot apply the rule for {self.node.fn}: "
                            f"{e.message}", self._at(e)) from None
        out_labels = self._positions(self.out_l, self.node.rank, self.rule.out_indices)
        arg_labels = self._positions(self.arg_l, arg.rank, self.rule.wrt_indices)
        return Jacobian(node, labels, out_labels, arg_labels, terms)

    def _error(self, message: str, e=None, hint: str | None = None) -> RuleError:
        """A RuleError at the rule's file:line, with a caret under `e` (an expression of the
        body, or an error whose span is in the body), else under the whole rule."""
        return RuleError(f"{self.rule.origin}: {message}", self._at(e), hint=hint)

    def _at(self, e):
        span = getattr(e, "span", None)
        if span is None or span.source != self.rule.body:
            return self.rule.span()
        return self.rule.span(at=(span.start, span.end))

    def _terms(self, body: ast.Expr):
        """The body's sum of terms as written, one flat sum, neither nested nor factored: the
        pullback applies a Jacobian term by term, each term's deltas and outer products on
        their own (O(n)), and softmax's terms, factored (`s[i] * (delta[i,j] * ... - ...)`),
        would be one n by n operand, materialized."""
        terms, work = [], [(1.0, body)]
        while work:
            sign, e = work.pop()
            if isinstance(e, ast.BinOp) and e.op in "+-":
                work += [(sign if e.op == "+" else -sign, e.right), (sign, e.left)]
            elif isinstance(e, ast.UnaryOp) and e.op == "-":
                work.append((-sign, e.operand))
            else:
                terms.append((sign, self._labelled(self.expr(e), e)))
        if self.summed:
            # Each term keeps its own summed indices open, for the pullback to sum (one
            # contraction per term); the indices of the left are spread to all of them.
            labels = self._union([(n, tuple(l for l in ls if l not in self.summed))
                                  for _, (n, ls) in terms])
            parts = []
            for c, (n, ls) in terms:
                full = labels + tuple(l for l in ls if l in self.summed)
                parts.append((c, self._spread((n, ls), full), full))
            parts = [p for p in parts if not build.is_zero(p[1])] or parts[:1]
            return None, labels, parts
        labels = self._union([v for _, v in terms])
        parts = [(c, self._spread(v, labels)) for c, v in terms]
        parts = [(c, t) for c, t in parts if not build.is_zero(t)] or parts[:1]
        if len(parts) == 1:
            return build.scale(*parts[0]), labels, None
        return Add(parts), labels, None

    def _positions(self, layout: _Layout, rank: int, names) -> tuple[int, ...]:
        labels = [None] * rank
        for l, a in zip(self.batch, layout.batch):
            labels[a] = l
        for name, group in zip(names, layout.groups):
            for l, a in zip(self.index[name], group):
                labels[a] = l
        return tuple(labels)

    # An expression value is (node, labels) when labelled, or (node, None) when it is a whole
    # tensor that still needs indices (e.g. `inv(X)` before `[i,k]`).
    def expr(self, e: ast.Expr):
        if isinstance(e, ast.Number):
            return Const(e.value), ()
        if isinstance(e, ast.Index):
            return self._index(e)
        if isinstance(e, ast.UnaryOp):
            node, labels = self._labelled(self.expr(e.operand), e.operand)
            return (build.scale(-1.0, node) if e.op == "-" else node), labels
        if isinstance(e, ast.BinOp):
            left = self._labelled(self.expr(e.left), e.left)
            right = self._labelled(self.expr(e.right), e.right)
            if e.op == "*":
                return self._product([left, right])
            if e.op in "+-":
                return self._sum(left, right, 1.0 if e.op == "+" else -1.0)
            if e.op in ("/", "**"):
                return self._elementwise("div" if e.op == "/" else "pow", [left, right])
            raise self._error(f"'{e.op}' is not allowed in an indexed rule", e)
        if isinstance(e, ast.Call):
            f = self.rules.get(e.func)
            if f is not None and f.kind == "elementwise":
                return self._elementwise(e.func, [self._labelled(self.expr(a), a)
                                                  for a in e.args])
        from ..lower.lower import lower_expr
        return lower_expr(e, self.scope), None

    def _index(self, e: ast.Index):
        names = []
        for item in e.items:
            if not isinstance(item, ast.Name):
                raise self._error("the indices in a rule are names", item)
            names.append(item.id)
        if isinstance(e.operand, ast.Name) and e.operand.id == "delta":
            if len(names) != 2:
                raise self._error(f"delta takes two indices, not {len(names)}", e)
            known = [n for n in names if n in self.index]
            if not known:
                raise self._error("delta needs an index of the left-hand side or of a tensor "
                                  "before it", e)
            for n in names:  # a summed index takes its partner's size
                if n not in self.index:
                    self._summed_index(n, [self.dims[l] for l in self.index[known[0]]])
            a, b = (self.index[n] for n in names)
            first, second = ([self.dims[l] for l in ls] for ls in (a, b))
            if first != second:  # a Kronecker delta is square
                raise self._error(
                    f"delta[{names[0]},{names[1]}] pairs axes of different sizes: "
                    f"{names[0]} is {show_shape(first)} and {names[1]} {show_shape(second)} "
                    f"for {self._call()}", e,
                    hint="a delta pairs an index of the result with one of the argument of "
                         "the same size")
            ops = [(Delta(self.dims[x], self.dims[y]), (x, y)) for x, y in zip(a, b)]
            labels = a + b
            return build.contract(labels, ops), labels
        node, _ = self.expr(e.operand)
        layout = self._layout_of(node, len(names), e.operand)
        if len(names) != len(layout.groups):
            raise self._error(f"{len(names)} {'index' if len(names) == 1 else 'indices'} on "
                              f"a tensor of {len(layout.groups)} core "
                              f"{'axis' if len(layout.groups) == 1 else 'axes'} (shaped "
                              f"{show_shape(node.shape)}, in the rule for {self._call()})", e,
                              hint="an index names a core axis: each axis of a square matrix, "
                                   "or the group of axes an axis primitive works along; the "
                                   "other axes are batch axes, without an index")
        labels = [None] * node.rank
        for l, a in zip(self.batch, layout.batch):
            labels[a] = l
        for name, group in zip(names, layout.groups):
            if name not in self.index:
                self._summed_index(name, [node.shape[a] for a in group])
            want = [self.dims[l] for l in self.index[name]]
            got = [node.shape[a] for a in group]
            # An index of the left has one size wherever it is used. (A summed one is summed
            # within its term, and may stand for other axes in another: pinv's p.)
            if want != got and self.summed.isdisjoint(self.index[name]):
                raise self._error(f"the index {name} stands for axes of shape "
                                  f"{show_shape(want)} where it is first used, but "
                                  f"{show_shape(got)} here (in the rule for {self._call()})",
                                  e, hint="an index has one size wherever it is used: check "
                                          "the order of the indices")
            for l, a in zip(self.index[name], group):
                labels[a] = l
        return node, tuple(labels)

    def _call(self) -> str:
        """The primitive applied to its arguments' shapes, for an error message."""
        return f"{self.node.fn}({', '.join(show_shape(a.shape) for a in self.node.args)})"

    def _summed_index(self, name: str, dims) -> None:
        """An index not on the left is summed over (Einstein's convention): the product it
        appears in keeps it open, and the pullback sums it with the adjoint's indices, so a
        rule L[i,p] * M[p,j] * ... is applied as one contraction (cholesky's: O(n^3), where
        its Jacobian, summed first, would be n^4 entries). It is summed within a term of a
        sum that the other term lacks, and within each argument of a function or quotient."""
        labels = tuple(next(self.fresh) for _ in dims)
        self.dims.update(zip(labels, dims))
        self.index[name] = labels
        self.summed.update(labels)
        self.free.update(labels)

    def _layout_of(self, node: Node, indices: int, e=None) -> _Layout:
        # A tensor of the body is laid out as the argument or the result it is shaped like,
        # with as many core axis groups as it is given indices (solve's A [n, n] and a b of
        # n columns [n, n] have one shape, two indices and one).
        shaped = [layout for layout, shape in [*zip(self.arg_ls, (a.shape for a in
                                                                   self.node.args)),
                                                (self.out_l, self.node.shape)]
                  if node.shape == shape]
        if shaped:  # the first with that many groups; else the first (an error in _index)
            return next((l for l in shaped if len(l.groups) == indices), shaped[0])
        if isinstance(node, Prim) and set(node.args) <= set(self.node.args):
            # another primitive of the same arguments, or of some of them (adj's rule names
            # det_hessian(X), and det_hvp(X, V)'s too): its own core axes, and the same batch
            # axes
            return _layouts(node, self.rules)[0]
        raise self._error(f"a tensor in the rule, shaped {show_shape(node.shape)}, is shaped "
                          f"like neither an argument nor the result of {self._call()}", e,
                          hint="index the arguments, the result and other primitives of the "
                               "same arguments")

    def _labelled(self, value, e=None):
        node, labels = value
        if labels is not None:
            return node, labels
        batch_shape = tuple(self.dims[l] for l in self.batch)
        if node.rank == 0:
            return node, ()
        if node.shape == batch_shape:
            return node, tuple(self.batch)
        raise self._error(f"a tensor in the rule, shaped {show_shape(node.shape)}, needs indices "
                          f"(for {self._call()})", e,
                          hint="give it an index per core axis, as inv(X)[i,k]")

    def _union(self, values) -> tuple[int, ...]:
        return tuple(dict.fromkeys(l for _, ls in values for l in ls))

    def _product(self, values):
        labels = self._union(values)
        repeated = [l for l in labels if l not in self.free]
        out = tuple(l for l in labels if l not in repeated)
        return build.contract(out, list(values)), out

    def _spread(self, value, labels):
        node, ls = value
        if ls == labels:
            return node
        return build.contract(labels, [value], {l: self.dims[l] for l in labels})

    def _close(self, value, keep=()):
        """`value` summed over its open summed indices but those in `keep`."""
        node, ls = value
        out = tuple(l for l in ls if l not in self.summed or l in keep)
        return value if out == ls else (build.contract(out, [value]), out)

    def _sum(self, left, right, sign):
        both = set(left[1]) & set(right[1])
        left, right = self._close(left, both), self._close(right, both)
        labels = self._union([left, right])
        return build.add([(1.0, self._spread(left, labels)),
                          (sign, self._spread(right, labels))]), labels

    def _elementwise(self, fn, values):
        values = [self._close(v) for v in values]
        labels = self._union(values)
        args = [v[0] if not v[1] else self._spread(v, labels) for v in values]
        return Map(fn, *args), labels
