"""Rewrite rules, compiled: where a pattern matches an IR node, and what replaces it.

A match is found in two steps. A loose walk of the pattern's syntax tree over the node proposes
values for the pattern's variables (and for `axis`); then the pattern is *lowered* with those
values, through the same builders as every program, and the match holds only if that gives the
very node (the IR is hash-consed, so this is an identity test). Whatever canonical form lowering
gives `log(exp(u) + 1)`, `-y * z` or `exp(x) / sum(exp(x), axis=1)[:, None]`, the pattern has it
too: the walk only proposes, it never decides, so a proposal it gets wrong is a missed rewrite,
never a wrong one. (`einderiv rules check` reports a rewrite that does not match its own
pattern.)

Two kinds of node match in part: a product (a `Contract`) whose factors on one set of indices
include the pattern's factors (`sign(u) * abs(u)` in `sign(u) * abs(u) * z`, or under a sum),
and a sum (an `Add`) whose terms include the pattern's terms, all scaled by one constant; the
terms of a sum nested in it count as its own (lowering keeps `a - b + c` as `(a - b) + c`).

`a / c` proposes the number c for a product scaled by 1 / c, the form lowering gives a quotient
by a number (`mean(x)` where the sizes are numbers). `sum(e, axis)` matches a sum of a product
whose factors broadcast against each other, which lowering writes as one contraction (a
matrix product: `sum(pi * exp(L), axis=1)` and `exp(L) @ pi` are one node), seen as the sum of
their elementwise product.

`axis` in a rule stands for the axes of the reductions and axis functions it is passed to.
A reduction by `axis` that meets a tensor of full rank keeps its axes (numpy's `keepdims`):
`exp(x) / sum(exp(x), axis)` is softmax along any axes, in any rank.
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from itertools import count

from ..derive.partials import substitute
from ..errors import EinderivError, RuleError
from ..ir import build
from ..ir.nodes import Add, Const, Contract, Map, Node, Prim, Var
from ..parse import ast, parse
from ..rulebook import RuleBook
from ..rulebook.table import AXIS, Rewrite

REDUCTIONS = {"sum"}  # `mean` lowers to a scaled sum: a pattern of its own would not match it


@dataclass
class Compiled:
    """One rewrite, ready to match: its two sides parsed, the kind of node its pattern can
    be, and its lowered sides per signature of the values matched."""

    rule: Rewrite
    pattern: ast.Expr
    replacement: ast.Expr
    head: tuple  # ("map", fn), ("prim", fn), ("add",) or ("contract",)
    needs: frozenset  # elementwise functions a product or sum must contain to be worth a walk
    rules: RuleBook
    templates: dict = dataclasses.field(default_factory=dict)

    def complete(self, values: dict) -> bool:
        """True once every variable has a value: the rest of the walk could only reject, and
        lowering the pattern decides that as well (a wide sum is not searched again for each
        term of the pattern)."""
        return len(values) == len(self.rule.variables)

    def apply(self, node: Node) -> Node | None:
        """What replaces `node`, or None if the pattern does not match it."""
        terms = {}  # a sum's (flattened) terms -> their coefficients, once for all proposals
        spelled: dict = {}  # its terms by `_canonical` key, once for all proposals
        for values in propose(self, node):
            replaced = self._replace(node, values, terms, spelled)
            if replaced is not None:
                return replaced
        return None

    def sides(self, values: dict) -> tuple[Node, Node] | None:
        """Both sides lowered with `values` (variable -> node, `axis` -> axes), or None where
        they do not lower (values of shapes the rule does not take)."""
        lazy = self._lazy_sides(values)
        return None if lazy is None else (lazy[0], lazy[1]())

    def _lazy_sides(self, values: dict):
        """(the pattern lowered with `values`, a function that lowers the replacement): most
        proposals are rejected by the pattern alone, and the replacement is then not built."""
        names = [v for v in self.rule.variables if v != AXIS]
        if any(v not in values for v in names):
            return None
        signature = (tuple((values[v].shape, build.constant_value(values[v])) for v in names),
                     values.get(AXIS))
        entry = self.templates.get(signature)
        if entry is None:
            holders = {v: values[v] if value is not None else Var(f"\0{v}", shape)
                       for v, (shape, value) in zip(names, signature[0])}
            try:
                entry = (*(lower_side(e, self.rules, holders, signature[1])
                           for e in (self.pattern, self.replacement)), holders)
            except EinderivError:
                # Values of shapes the rule does not take, or a rule that does not lower at
                # all: no match here (`rules check` reports a rule that never lowers).
                entry = None
            self.templates[signature] = entry
        if entry is None:
            return None
        lhs, rhs, holders = entry
        mapping = {h: values[v] for v, h in holders.items() if h is not values[v]}
        # Substitution keeps shapes: the replacement's is its template's.
        return substitute(lhs, mapping), lambda: substitute(rhs, mapping), rhs.shape

    def _replace(self, node: Node, values: dict, terms: dict, spelled: dict) -> Node | None:
        sides = self._lazy_sides(values)
        if sides is None:
            return None
        lhs, rhs, rhs_shape = sides
        if lhs.shape != rhs_shape:
            return None  # a rule that changes shapes is reported by `rules check`
        if lhs is node or _equivalent(lhs, node):
            return rhs()
        if isinstance(node, Add) and isinstance(lhs, Add):
            if not terms:
                terms.update(_merged(flat_terms(node)))
            return _replace_terms(node, terms, lhs, rhs, spelled)
        if isinstance(node, Contract) and isinstance(lhs, Contract):
            return _replace_factors(node, lhs, rhs)
        return None


def _replace_terms(node: Add, flat: dict, lhs: Add, rhs, spelled: dict) -> Node | None:
    """`node` = r * lhs + rest  ->  r * rhs + rest. The rest is `node`'s other terms, or, where
    the pattern takes terms of a sum nested in it, the others of `flat` (each flattened
    term's coefficient)."""
    wanted = _merged(flat_terms(lhs))
    own = _merged(node.terms)
    if not all(t in own for t in wanted):
        # a term written otherwise: `relu(y - x)` where the pattern lowers `relu(-u)` with
        # u = x - y (the IR keeps each sum as written)
        renamed = _renamed(wanted, own, spelled, "own")
        wanted = renamed if all(t in own for t in renamed) else wanted
    coefficient = own if all(t in own for t in wanted) else flat
    if not all(t in coefficient for t in wanted):
        wanted = _renamed(wanted, coefficient, spelled, "flat")
    ratio = None
    for t, c in wanted.items():
        if t not in coefficient:
            return None
        r = coefficient[t] / c
        if ratio is not None and r != ratio:
            return None
        ratio = r
    rest = [(c, _constant_term(t) if isinstance(t, tuple) else t)
            for t, c in coefficient.items() if t not in wanted]
    return build.add([*rest, (ratio, rhs())])


# Sums nested in a sum are kept by the builders (one may be shared), so the terms a pattern
# names may lie at two levels: `relu(z) - z * y + softplus(-abs(z))` is `(relu(z) - z*y) +
# softplus(-abs(z))`. Their terms are seen up to this many in all: a pattern has a few, and a
# long chain of nested sums is not flattened again at each of its levels.
MAX_FLAT_TERMS = 16


def flat_terms(node: Add) -> list[tuple[float, Node]]:
    """`node`'s terms, with the terms of the sums among them in their place (scaled by their
    coefficients), as far as MAX_FLAT_TERMS allows."""
    out = list(node.terms)
    k = 0
    while k < len(out):
        c, t = out[k]
        if isinstance(t, Add) and len(out) - 1 + len(t.terms) <= MAX_FLAT_TERMS:
            out[k:k + 1] = [(c * ci, ti) for ci, ti in t.terms]
        else:
            k += 1
    return out


def _merged(terms) -> dict:
    """(coefficient, term) pairs as term -> total coefficient. A constant term counts by its
    value, under the key ("constant", shape): `2 - 2 * tanh(u) ** 2` is twice `1 - tanh(u) **
    2`, though lowering keeps 2 as a constant term of coefficient 1."""
    merged: dict = {}
    for c, t in terms:
        value = build.constant_value(t)
        if value is not None:
            c, t = c * value, ("constant", t.shape)
        merged[t] = merged.get(t, 0.0) + c
    return merged


def _constant_term(key) -> Node:
    return build.broadcast_to(build.const(1.0), key[1])


def _replace_factors(node: Contract, lhs: Contract, rhs) -> Node | None:
    """`node` = ... * lhs[L] * ...  ->  ... * rhs[L] * ... for the factors of `lhs` (an
    elementwise product) found among `node`'s operands on one tuple of labels L."""
    scale, factors = 1.0, []
    for n, labels in lhs.operands:
        if isinstance(n, Const):
            scale *= n.value
        elif labels != lhs.out:
            return None
        else:
            factors.append(n)
    if not factors or scale == 0.0:
        return None
    for labels in dict.fromkeys(ls for _, ls in node.operands):
        rest = list(node.operands)
        for f in factors:
            if (f, labels) not in rest:
                break
            rest.remove((f, labels))
        else:
            if scale != 1.0:
                rest.append((Const(1.0 / scale), ()))
            return build.contract(node.out, [*rest, (rhs(), labels)],
                                  {l: node.dims[l] for l in node.out})
    return None


# -- lowering a side ---------------------------------------------------------------------------

def lower_side(expr: ast.Expr, rules: RuleBook, values: dict, axes) -> Node:
    """A side of a rewrite as IR: its variables bound to `values`, `axis` to `axes`, and a
    reduction by `axis` that meets a tensor of higher rank given its axes back (keepdims).

    Lowered one syntax node at a time through the ordinary lowering (its children bound to
    hidden names), so that the IR is exactly what a program spelling it out would give."""
    from ..lower.lower import Scope, lower_expr
    scope = Scope({}, rules)
    scope.bound = dict(values)
    hidden = count()

    def name_for(node: Node) -> ast.Name:
        name = f"\0{next(hidden)}"
        scope.bound[name] = node
        return ast.Name(name)

    def lower(e: ast.Expr) -> tuple[Node, bool]:  # (node, reduced by `axis`): a rule is one line
        if isinstance(e, ast.Name) and e.id == AXIS:
            raise RuleError("'axis' passed where a tensor is expected")
        kids = _tensor_children(e, scope)
        if not kids:
            return lower_expr(e, scope), False
        done = [lower(k) for k in kids]
        top = max(n.rank for n, _ in done)
        if len(done) > 1 and axes is not None:
            done = [(_keepdims(n, axes, top), False) if reduced and 0 < n.rank < top
                    else (n, reduced) for n, reduced in done]
        shallow = _with_children(e, [name_for(n) for n, _ in done], axes)
        node = lower_expr(shallow, scope)
        if _passes_axis(e):
            reduced = node.rank < done[0][0].rank
        else:
            reduced = any(r and n.rank == node.rank for n, r in done)
        return node, reduced

    return lower(expr)[0]


def _tensor_children(e: ast.Expr, scope) -> list[ast.Expr]:
    if isinstance(e, ast.Call):
        from ..lower.calls import tensor_args
        return tensor_args(e, scope)
    return list(e.children())


def _passes_axis(e: ast.Expr) -> bool:
    return isinstance(e, ast.Call) and any(
        isinstance(a, ast.Name) and a.id == AXIS for a in (*e.args[1:2], *(v for k, v in e.kwargs
                                                                           if k == AXIS)))


def _with_children(e: ast.Expr, names: list[ast.Name], axes) -> ast.Expr:
    """A copy of `e` whose tensor children are `names` and whose `axis` is the axes."""
    if isinstance(e, ast.BinOp):
        return dataclasses.replace(e, left=names[0], right=names[1])
    if isinstance(e, (ast.UnaryOp, ast.Attribute, ast.Index)):
        return dataclasses.replace(e, operand=names[0])
    if isinstance(e, ast.Call):
        given = iter(names)
        kids = {id(k) for k in e.args[:len(names)]}

        def axis_or(a):
            if isinstance(a, ast.Name) and a.id == AXIS:
                if axes is None:
                    raise RuleError("'axis' has no value here")
                return ast.Tuple(tuple(ast.Number(float(k)) for k in axes))
            return a
        args = tuple(next(given) if id(a) in kids else axis_or(a) for a in e.args)
        kwargs = tuple((k, axis_or(v)) for k, v in e.kwargs)
        return dataclasses.replace(e, args=args, kwargs=kwargs)
    raise RuleError(f"a rewrite cannot use {type(e).__name__}")


def _keepdims(node: Node, axes, rank: int) -> Node:
    return build.index(node, [("none",) if k in axes else ("slice", None, None)
                              for k in range(rank)])


# -- proposing values -------------------------------------------------------------------------

def propose(rule: Compiled, node: Node):
    """Candidate values of the rule's variables at `node`, from a loose walk of the pattern
    (each is checked by lowering the pattern with it)."""
    p = rule.pattern
    if rule.head == ("add",) and isinstance(node, Add):
        yield from _terms(_signed_terms(p), flat_terms(node), {}, rule, partial=True)
    elif rule.head == ("contract",) and _is_product(p) and isinstance(node, Contract):
        factors = _factors(p)[1]
        groups: dict = {}  # the factors on each tuple of labels: each may hold the pattern
        for n, labels in node.operands:
            if not isinstance(n, Const):
                groups.setdefault(labels, []).append((n, labels))
        for operands in groups.values():
            yield from _assign(factors, operands, {}, rule, None)
    else:
        yield from match(p, node, {}, rule)


def match(p: ast.Expr, t: Node, values: dict, rule: Compiled):
    """Values (extending `values`) under which pattern `p` may be node `t`."""
    if rule.complete(values):
        yield values
    elif isinstance(p, ast.Name):
        bound = values.get(p.id)
        if bound is None:
            yield {**values, p.id: t}
        elif bound is t:
            yield values
    elif isinstance(p, ast.Number):
        if build.constant_value(t) == p.value:
            yield values
    elif isinstance(p, ast.UnaryOp) and p.op == "+":
        yield from match(p.operand, t, values, rule)
    elif isinstance(p, ast.BinOp) and p.op in "+-":
        if isinstance(t, Add):
            yield from _terms(_signed_terms(p), t.terms, values, rule, partial=False)
    elif _is_product(p):
        yield from _product(p, t, values, rule)
    elif isinstance(p, ast.BinOp) and p.op in ("/", "**"):
        if isinstance(t, Map) and t.fn == ("div" if p.op == "/" else "pow"):
            yield from _arguments([p.left, p.right], t.args, values, rule)
        elif p.op == "/" and _free(p.right, values) and isinstance(t, Contract):
            # a / c for a number c is lowered as the scale 1 / c: `mean(x)` where the sizes
            # are numbers (lowering the pattern with that c decides, as always)
            scale, rest = build.split_scale(t)
            if scale not in (0.0, 1.0):
                for v in match(p.left, rest, values, rule):
                    if p.right.id not in v:
                        yield {**v, p.right.id: Const(1.0 / scale)}
    elif isinstance(p, ast.Call):
        yield from _call(p, t, values, rule)


def _call(p: ast.Call, t: Node, values: dict, rule: Compiled):
    if p.func in REDUCTIONS:
        if not p.args:
            return
        for operand, axes in _reductions(t):
            found = _with_axes(p, axes, values)
            if found is not None:
                yield from match(p.args[0], operand, found, rule)
        return
    f = rule.rules.get(p.func)
    if f is None:
        return
    if f.kind == "elementwise" and isinstance(t, Map) and t.fn == p.func \
            and len(t.args) == len(p.args):
        yield from _arguments(list(p.args), t.args, values, rule)
    elif f.kind == "tensor" and p.args:
        t = _broadcast_from(t)
        if not (isinstance(t, Prim) and t.fn == p.func):
            return
        if t.params:
            values = _with_axes(p, t.params[0], values)
        if values is not None:
            yield from match(p.args[0], t.args[0], values, rule)


def _broadcast_from(t: Node) -> Node:
    """What `t` broadcasts, if it is a broadcast (a reduction by `axis`, lowered with its
    axes kept, `logsumexp(x, axis)` in `x - logsumexp(x, axis)`), else `t`."""
    if isinstance(t, Contract) and len(t.operands) == 1:
        inner, labels = t.operands[0]
        if set(labels) < set(t.out) and len(set(labels)) == len(labels) \
                and not isinstance(inner, Const):
            return inner
    return t


def _with_axes(p: ast.Call, axes, values: dict) -> dict | None:
    if not _passes_axis(p):
        return values
    bound = values.get(AXIS)
    if bound is None:
        return {**values, AXIS: tuple(axes)}
    return values if bound == tuple(axes) else None


def _arguments(patterns, nodes, values, rule):
    if not patterns:
        yield values
        return
    for v in match(patterns[0], nodes[0], values, rule):
        yield from _arguments(patterns[1:], nodes[1:], v, rule)


def _reductions(t: Node):
    """`t` as `sum(operand, axes)`, seen through a broadcast back along the axes: (operand,
    axes) pairs, none where `t` is no reduction. A sum of a product whose factors broadcast
    against each other (`sum(pi * exp(L), axis=1)` with pi [k] and L [n, k], lowered as the
    matrix product `exp(L) @ pi`, or `R @ exp(eta)`) is the sum of their elementwise product
    laid out as its fullest factor is, and as the result's axes first then the summed ones
    (`exp(eta) @ R` as the sum of `exp(eta) * R.T` along its last axis)."""
    if isinstance(t, Contract) and len(t.operands) == 1:
        inner, labels = t.operands[0]
        if set(labels) < set(t.out) and not isinstance(inner, Const):
            t = inner  # sum(...)[:, None] broadcast to the full shape
    if not isinstance(t, Contract):
        return
    if len(t.operands) == 1:
        found = _summed(t)
        if found is not None:
            yield found
        return
    # A sum of an elementwise product (`x[i]*x[i]` summed): the product, then its sum (of
    # the diagonals of the factors on a repeated label: `tr(exp(L) * R)`).
    every = dict.fromkeys(l for _, ls in t.operands for l in ls)
    layouts = [ls for n, ls in t.operands if not isinstance(n, Const) and len(ls) == len(every)
               and len(set(ls)) == len(ls)]
    layouts = dict.fromkeys([*layouts[:1], (*(l for l in t.out if l in every),
                                            *(l for l in every if l not in t.out))])
    for labels in layouts:
        # (an output label no operand carries, `x[None, 0]`'s new axis, keeps its size)
        product = build.contract(labels, t.operands, {l: t.dims[l] for l in labels})
        found = _summed(Contract(t.out, [(product, labels)],
                                 {l: t.dims[l] for l in t.out if l not in labels}))
        if found is not None:
            yield found


def _summed(t: Contract):
    """(operand, axes) for a `Contract` that sums one operand along `axes`, or None."""
    operand, labels = t.operands[0]
    kept = tuple(l for l in labels if l in t.out)
    if len(set(labels)) != len(labels) or kept != t.out or len(kept) == len(labels):
        return None
    return operand, tuple(k for k, l in enumerate(labels) if l not in t.out)


# Products: `a * b`, `-u`, `2 * u` in the pattern; a Contract that sums nothing in the IR.

def _is_product(p: ast.Expr) -> bool:
    return (isinstance(p, ast.BinOp) and p.op == "*") or (
        isinstance(p, ast.UnaryOp) and p.op == "-")


def _factors(p: ast.Expr) -> tuple[float, list[ast.Expr]]:
    """A product pattern as (constant, factors)."""
    scale, factors, stack = 1.0, [], [p]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.BinOp) and e.op == "*":
            stack += [e.right, e.left]
        elif isinstance(e, ast.UnaryOp):
            scale *= -1.0 if e.op == "-" else 1.0
            stack.append(e.operand)
        elif isinstance(e, ast.Number):
            scale *= e.value
        else:
            factors.append(e)
    return scale, factors


def _product(p: ast.Expr, t: Node, values: dict, rule: Compiled):
    scale, factors = _factors(p)
    if isinstance(t, Contract) and all(l in t.out for _, ls in t.operands for l in ls):
        t_scale, operands = 1.0, []
        for n, labels in t.operands:
            if isinstance(n, Const):
                t_scale *= n.value
            else:
                operands.append((n, labels))
    else:
        t_scale, operands = 1.0, [(t, tuple(range(t.rank)))]
    yield from _assign(factors, operands, values, rule, (t, t_scale / scale))


def _renamed(wanted: dict, coefficient: dict, spelled: dict, which: str) -> dict:
    """`wanted`'s terms, each one missing from `coefficient` replaced by the term there that is
    the same value spelled otherwise (`_canonical`), if there is one. `spelled[which]` keeps
    `coefficient`'s terms by that key: built once for all the proposals at one sum, so that a
    sum of thousands of terms is not searched again for each."""
    if all(t in coefficient or isinstance(t, tuple) or _canonical(t) is t for t in wanted):
        return wanted  # no sum in a missing term: nothing spelled otherwise
    index = spelled.get(which)
    if index is None:
        index = spelled[which] = {}
        for k in coefficient:
            if not isinstance(k, tuple):
                index.setdefault(_canonical(k), k)
    out: dict = {}
    for t, c in wanted.items():
        if t not in coefficient and not isinstance(t, tuple):
            k = index.get(_canonical(t))
            if k is not None and k not in wanted and k not in out:
                t = k
        out[t] = c
    return out


def _equivalent(a: Node, b: Node) -> bool:
    """Whether `a` and `b` are one value written as different nodes by the negation of a sum
    or the order of its terms (`_canonical`)."""
    return a is b or (a.shape == b.shape and _canonical(a) == _canonical(b))


def _canonical(node: Node, depth: int = 4):
    """A key equal for nodes that differ only in how a sum is spelled: `-(x - y)` (the
    pattern's `-u`, lowered with u = x - y) and `y - x` (the program's) are one sum with the
    same coefficients, at most `depth` levels into elementwise functions (`relu(-(x - y))`,
    `relu(y - x)`). The IR keeps each sum as it is written, so the kink rewrites'
    `relu(u) - relu(-u) = u` would otherwise see `relu(x - y) - relu(y - x)` only in the
    spelling `-(x - y)`. Any other node is its own key."""
    known = _CANONICAL.get(node)
    if known is not None and depth in known:
        return known[depth]
    if isinstance(node, Map):
        key = node if depth <= 1 else (
            "map", node.fn, node.shape, tuple(_canonical(a, depth - 1) for a in node.args))
    else:
        c, s = _scaled(node)
        key = node if s is None else ("sum", node.shape, frozenset(_weights(s, c).items()))
    if known is None:
        known = _CANONICAL.setdefault(node, {})
    known[depth] = key
    return key


# node -> {depth: its `_canonical` key}: nodes are unique and never change, and a long program
# meets the same terms at every level of its nested sums.
_CANONICAL: "weakref.WeakKeyDictionary[Node, dict]" = weakref.WeakKeyDictionary()


def _scaled(node: Node) -> tuple[float, Add | None]:
    """(c, s) for a node that is c times the sum s (a sum itself: c = 1), else (1, None)."""
    if isinstance(node, Add):
        return 1.0, node
    if isinstance(node, Contract) and len(node.operands) == 2 and build._is_product(node):
        (p, _), (q, ql) = node.operands
        c = build.constant_value(p) if p.rank == 0 else None
        if c is not None and isinstance(q, Add) and ql == node.out:
            return c, q
    return 1.0, None


def _weights(node: Add, factor: float) -> dict:
    """factor * node's terms (nested sums flattened, numbers by value) as term -> weight."""
    found: dict = {}
    for coef, term in flat_terms(node):
        value = build.constant_value(term)  # (a number broadcast too: `x - 1`)
        key, weight = (None, coef * value) if value is not None else (term, coef)
        found[key] = found.get(key, 0.0) + factor * weight
    return {k: w for k, w in found.items() if w != 0.0}


def _assign(factors, operands, values, rule, whole):
    """Match each factor pattern to its own operand. `whole`: None to match part of a product
    (each factor one operand, the others left alone); else (the product node, the ratio of its
    constant to the pattern's), and every operand is used: one variable factor left over takes
    the product of the operands left over, scaled by the ratio."""
    fixed = [f for f in factors if not _free(f, values)]
    free = [f for f in factors if _free(f, values)]
    order = fixed + free
    yield from _assign_from(order, list(operands), values, rule, whole)


def _free(f: ast.Expr, values: dict) -> bool:
    return isinstance(f, ast.Name) and f.id not in values


def _assign_from(order, operands, values, rule, whole):
    if rule.complete(values):
        yield values
        return
    if not order:
        if whole is None or (not operands and whole[1] == 1.0):
            yield values
        return
    f, rest = order[0], order[1:]
    if whole is not None and not rest and _free(f, values):
        node, ratio = whole
        if operands:
            value = build.contract(node.out, operands, {l: node.dims[l] for l in node.out}) \
                if isinstance(node, Contract) else operands[0][0]
            yield {**values, f.id: build.scale(ratio, value)}
        return
    for k, (n, labels) in enumerate(operands):
        value = n
        if isinstance(f, ast.Name) and whole is not None and isinstance(whole[0], Contract) \
                and labels != whole[0].out:  # a variable takes a factor broadcast in full
            node = whole[0]
            value = build.contract(node.out, [(n, labels)], {l: node.dims[l] for l in node.out})
        for v in match(f, value, values, rule):
            yield from _assign_from(rest, operands[:k] + operands[k + 1:], v, rule, whole)


# Sums: `1 + exp(u)`, `1 - sigmoid(u)` in the pattern; an Add in the IR.

def _signed_terms(p: ast.Expr) -> list[tuple[float, ast.Expr]]:
    """A sum pattern as (coefficient, term) pairs, constants of a term's product pulled out."""
    terms, stack = [], [(1.0, p)]
    while stack:
        sign, e = stack.pop()
        if isinstance(e, ast.BinOp) and e.op in "+-":
            stack += [(sign * (-1.0 if e.op == "-" else 1.0), e.right), (sign, e.left)]
        elif _is_product(e):
            scale, factors = _factors(e)
            if len(factors) == 1:
                terms.append((sign * scale, factors[0]))
            elif not factors:
                terms.append((sign * scale, ast.Number(1.0)))
            else:
                terms.append((sign * scale, _product_of(factors)))
        elif isinstance(e, ast.Number):
            terms.append((sign * e.value, ast.Number(1.0)))
        else:
            terms.append((sign, e))
    return terms


def _product_of(factors: list[ast.Expr]) -> ast.Expr:
    e = factors[0]
    for f in factors[1:]:
        e = ast.BinOp("*", e, f)
    return e


def _terms(terms, given, values, rule, partial: bool):
    """Match each signed pattern term to its own term of `given` (a sum's (coefficient, term)
    pairs), with one ratio of coefficients (1 unless `partial`); all of them are used unless
    `partial`."""
    if not partial and len(terms) != len(given):
        return
    yield from _terms_from(terms, list(given), values, rule, None if partial else 1.0,
                           partial)


def _terms_from(terms, left, values, rule, ratio, partial):
    if rule.complete(values):
        yield values
        return
    if not terms:
        if partial or not left:
            yield values
        return
    (sign, p), rest = terms[0], terms[1:]
    for k, (c, n) in enumerate(left):
        if isinstance(p, ast.Number):
            value = build.constant_value(n)
            if value is None:
                continue
            r = c * value / sign
        else:
            r = c / sign
        if ratio is not None and r != ratio:
            continue
        for v in match(p, n, values, rule) if not isinstance(p, ast.Number) else [values]:
            yield from _terms_from(rest, left[:k] + left[k + 1:], v, rule, r, partial)


# -- compiling a rule book's rewrites ------------------------------------------------------------

_COMPILED: "weakref.WeakKeyDictionary[RuleBook, dict]" = weakref.WeakKeyDictionary()


def compiled(rules: RuleBook) -> dict[tuple, list[Compiled]]:
    """The rule book's rewrites by the kind of node their pattern can be, in file order.
    Cached for a frozen rule book."""
    cache = _COMPILED.get(rules) if rules.frozen else None
    if cache is not None:
        return cache
    index: dict[tuple, list[Compiled]] = {}
    for rule in rules.rewrites.values():
        c = compile_rewrite(rule, rules)
        index.setdefault(c.head, []).append(c)
    if rules.frozen:
        _COMPILED[rules] = index
    return index


def compile_rewrite(rule: Rewrite, rules: RuleBook) -> Compiled:
    """A rewrite ready to match. A function it calls must exist, and not be a definition (a
    definition is expanded as it is lowered: a pattern naming it would never be seen)."""
    from ..lower.calls import BUILTINS
    pattern, replacement = (parse(side).statements[0] for side in (rule.pattern,
                                                                   rule.replacement))
    for name in rule.functions:
        f = rules.get(name)
        if f is None and name not in BUILTINS:
            raise RuleError(f"{rule.origin}: the rewrite calls '{name}', which no rule table "
                            "defines")
        if f is not None and f.kind == "def":
            raise RuleError(f"{rule.origin}: the rewrite calls the definition '{name}' "
                            f"({f.origin}): write its expansion instead")
    return Compiled(rule, pattern, replacement, _head(pattern, rules), _needs(pattern, rules),
                    rules)


def _head(p: ast.Expr, rules: RuleBook) -> tuple:
    if isinstance(p, ast.Call) and p.func not in REDUCTIONS:
        f = rules.get(p.func)
        if f is not None and f.kind == "elementwise":
            return ("map", p.func)
        if f is not None and f.kind == "tensor":
            return ("prim", p.func)
    if isinstance(p, ast.BinOp) and p.op in ("/", "**"):
        return ("map", "div" if p.op == "/" else "pow")
    if isinstance(p, ast.BinOp) and p.op in "+-":
        return ("add",)
    return ("contract",)


def _needs(p: ast.Expr, rules: RuleBook) -> frozenset:
    """Functions (elementwise or tensor) that a product or sum matching `p` applies to its
    factors or terms (or their factors): a node without them is not walked."""
    def heads(e: ast.Expr) -> set[str]:
        tops = _factors(e)[1] if _is_product(e) else [e]
        # a power is the function `pow` (lowering keeps `u ** 2` one), and its base one level
        # further down (`tanh` in `1 - tanh(u) ** 2`)
        found = {"pow" for t in tops if isinstance(t, ast.BinOp) and t.op == "**"
                 and isinstance(t.right, ast.Number) and t.right.value not in (0, 1)}
        tops = [t.left if isinstance(t, ast.BinOp) and t.op == "**" else t for t in tops]
        return found | {t.func for t in tops if isinstance(t, ast.Call)
                        and getattr(rules.get(t.func), "kind", None) in ("elementwise", "tensor")}
    if _is_product(p):
        return frozenset(heads(p))
    if isinstance(p, ast.BinOp) and p.op in "+-":
        return frozenset(f for _, t in _signed_terms(p) for f in heads(t))
    return frozenset()
