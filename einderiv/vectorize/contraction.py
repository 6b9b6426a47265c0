"""One Einstein product -> array operations a person would write.

The operands are combined step by step: unit vectors and windows on summed indices become
indexing (`x[-1]`, `x[1:]`), an index that only one operand carries is summed with `sum(axis=)`,
operands over the same indices multiply elementwise (with `[:, None]` broadcasting when one has
fewer), and two operands sharing one summed index become a matrix product with the transposes
that fit (`A.T @ x`, `x @ A`, `A @ B.T`). What fits none of these is an `einsum`.
"""
from __future__ import annotations

import math

from opt_einsum import get_symbol

from ..ir.deltas import finite_where_inputs_are, is_structure
from ..ir.dims import ONE, Dim
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Unit
from ..lower.linear import FLIP, STRIDE, stride
from ..parse import ast


def number(v: float) -> ast.Expr:
    return ast.UnaryOp("-", ast.Number(-v)) if v < 0 else ast.Number(v)


def dimension(d: Dim) -> ast.Expr:
    if d.is_concrete:
        return ast.Number(float(d.offset))
    base = ast.Name(d.name)
    if d.offset == 0:
        return base
    op = "+" if d.offset > 0 else "-"
    return ast.BinOp(op, base, ast.Number(float(abs(d.offset))))


def scaled(c: float, expr: ast.Expr) -> ast.Expr:
    if c == 1.0:
        return expr
    if c == -1.0:
        return ast.UnaryOp("-", expr)
    return ast.BinOp("*", number(c), expr)


def transpose(expr: ast.Expr) -> ast.Expr:
    if isinstance(expr, ast.Attribute) and expr.attr == "T":
        return expr.operand
    return ast.Attribute(expr, "T")


def swap_last(expr: ast.Expr, rank: int) -> ast.Expr:
    """The last two axes of a `rank`-axis array swapped: `.T` of a matrix, `.mT` of a stack."""
    if rank == 2:
        return transpose(expr)
    if isinstance(expr, ast.Attribute) and expr.attr == "mT":
        return expr.operand
    return ast.Attribute(expr, "mT")


class Term:
    """An intermediate array: its expression and the index label of each axis."""

    def __init__(self, expr: ast.Expr, labels, node=None):
        self.expr = expr
        self.labels = tuple(labels)
        self.node = node  # the IR node, while the term is still exactly that node

    def __repr__(self):
        from ..parse.unparse import unparse
        return f"Term({unparse(self.expr)}, {self.labels})"


class ContractionTranslator:
    """`narrow(child)`, if given, is (expression, axes): the child with only the axes it does
    not merely broadcast (`t0` for `t0[i]` broadcast to [i, j]); the product then broadcasts
    the smaller operand itself (`x / t0[:, None]`, not `x / (t0[:, None] * ones(n, f))`).
    `scale`: id of an operand -> the constant its expression already carries (placement.py)."""

    def __init__(self, node: Contract, translate, narrow=None, scale=None):
        self.node = node
        self.dims = node.dims
        self.out = tuple(node.out)
        self.coef = 1.0
        self.terms: list[Term] = []
        dropped = []
        operands = []
        for child, labels in _strided_factors_expanded(node.operands):
            if type(child) is Const:
                self.coef *= child.value
                continue
            if scale and id(child) in scale:  # a temporary computed with its constant on it
                self.coef /= scale[id(child)]
            if narrow is not None and type(child) is Map and child.fn == "div" and \
                    len(set(labels)) == len(labels) and \
                    0 < len(below := narrow(child.args[1])[1]) < len(labels) and \
                    not set(narrow(child.args[0])[1]) <= set(below) and \
                    not isinstance(narrow(child)[0], ast.Name):
                # A quotient written inline, by what varies along some of its axes only, is a
                # factor and a reciprocal, each placed as an operand is: `(t1 * N) @ g / t0`,
                # not `t1 * (N / t0[:, None]) @ g`, which divides a whole [n, f] array by what
                # varies along n (layer norm). (Not a mean's division by its count; nor a
                # numerator that varies along no axis the denominator lacks, `x[:, None] / d[:,
                # None]`: that quotient is no larger than d, and dividing first is smallest.)
                operands += [(child.args[0], labels, False), (child.args[1], labels, True)]
            else:
                operands.append((child, labels, False))
        for child, labels, reciprocal in operands:
            if narrow is None or len(labels) > 1 and len(set(labels)) != len(labels):
                self.terms.append(Term(translate(child), labels, child))
                continue
            expr, axes = narrow(child)
            if isinstance(expr, ast.UnaryOp) and expr.op == "-":
                # (a negated operand's sign joins the constant, placed on the smallest array)
                self.coef, expr = -self.coef, expr.operand
            if reciprocal:
                expr = ast.BinOp("/", ast.Number(1.0), expr)
            if len(axes) == len(labels):
                self.terms.append(Term(expr, labels, None if reciprocal else child))
                continue
            self.terms.append(Term(expr, tuple(labels[a] for a in axes)))
            dropped.append((self.terms[-1], child, labels, axes))
        # An index that only a broadcast axis carried and that is summed would lose its count
        # (the sum of a broadcast is a multiple): those operands are written whole.
        carried = {l for t in self.terms for l in t.labels} if dropped else ()
        for term, child, labels, axes in dropped:
            if any(l not in carried and l not in self.out for l in labels):
                term.expr = broadcast(term.expr, axes, child.shape)
                term.labels = labels
                term.node = None if _reciprocal(term.expr) is not None else child
        # A number left without axes (the 1 of a quotient 1 / d) joins the constant.
        numbers = [t for t in self.terms if not t.labels and isinstance(t.expr, ast.Number)]
        for t in numbers:
            self.coef *= t.expr.value
        if numbers:
            self.terms = [t for t in self.terms if not any(t is n for n in numbers)]
        self.flips: list = []  # output labels reversed last (`_unflipped`)
        self.translate = translate
        self._unflipped()

    def _unflipped(self):
        """A selection of rows in reverse, `flip(W, 0)[k, i]` with W a window or every k-th
        row of one (lanes.py's places stepping down, `e_7, e_5, e_3, e_1` of
        `log(x[2t]) * x[2(T-1-t)+1]`), read as W itself with every other term on k reversed
        along k (`t[::-1]`), and, where k is an output label, the result reversed along k
        last: the rows in order, which the steps below slice, dilate and pad as they do any
        window (`pad(dilate(t2[::-1], 2, 7), ...)`), where the reversed selection was a dense
        0/1 matrix multiplied with its partner (0 * inf = nan beside a pole) or its rows
        placed one by one (a part per step)."""
        for t in list(self.terms):
            if not _flipped_rows(t):
                continue
            k = _unflipped_node(t)[0]
            flipped = [u for u in self.terms if _flipped_rows(u) and _unflipped_node(u)[0] == k]
            others = [u for u in self.terms if k in u.labels and
                      not any(u is f for f in flipped)]
            # a window or identity on (k, m), k its rows, reversed along k is the window of
            # as many rows at the other end reversed along m: the result is reversed along m
            # last, where m is an output label no other term carries
            passed = [u for u in others if isinstance(u.node, Delta) and
                      len(u.labels) == 2 and u.labels[0] != u.labels[1] and
                      (u.labels[0] == k or u.node.is_identity) and
                      _other(u.labels, k) in self.out and
                      not any(v is not u and _other(u.labels, k) in v.labels
                              for v in self.terms)]
            others = [u for u in others if not any(u is v for v in passed)]
            if any(u.labels.count(k) != 1 or _structured(u.node) for u in others) or \
                    len({_other(u.labels, k) for u in passed}) != len(passed) or \
                    any(_window_at_the_other_end(u.node) is None for u in passed):
                continue
            for u in flipped:
                _, u.node, u.labels = _unflipped_node(u)
                u.expr = self.translate(u.node)
            for u in passed:
                u.node, u.labels = _window_at_the_other_end(u.node), (k, _other(u.labels, k))
                u.expr = selection(u.node)
            for u in others:
                u.expr = _reversed(u.expr, len(u.labels), u.labels.index(k))
                u.node = None
            if k in self.out:
                self.flips.append(k)
            self.flips += [_other(u.labels, k) for u in passed]

    # -- the steps -----------------------------------------------------------------------------

    def run(self) -> ast.Expr:
        return broadcast(*self.narrow_result(), self.node.shape)

    def narrow_result(self) -> tuple[ast.Expr, tuple]:
        """The product without the output axes no operand carries (a broadcast is left to
        the consumer's numpy broadcasting, or to `broadcast`): (expression, its axes)."""
        self._combine()
        if not self.terms:
            return number(self.coef), ()
        term = self.terms[0]
        for k in self.flips:  # (a reversal of a broadcast axis is that broadcast)
            if k in term.labels:
                term.expr = _reversed(term.expr, len(term.labels), term.labels.index(k))
        present = tuple(l for l in self.out if l in term.labels)
        # The constant goes on the smaller array, before any broadcast.
        expr = scaled(self.coef, _permute(term.expr, term.labels, present))
        return expr, tuple(self.out.index(l) for l in present)

    def _combine(self):
        scatters = self._scatter_later()
        self._select()
        self._diagonals()
        self._scaled_strided_sum()
        self._lonely_sums()
        self._place_constant()
        while len(self.terms) > 1:
            # A window whose partners were several terms may have one now that they are
            # multiplied together: it indexes (or pads) that one instead of becoming a product
            # with a dense selection matrix (`eye(m)[1:p + 1] @ (x * t0)`).
            if not (self._select() or self._pads() or self._diag_embed() or self._hadamard()
                    or self._pair() or self._spread() or self._hadamard(batched=True)
                    or self._merged_pair()):
                self._einsum_all()
            self._lonely_sums()
        if scatters:
            self._scatter(scatters)

    def _scatter_later(self) -> list[tuple]:
        """Unit vectors and windows on output axes, taken out of the product to be applied
        last, as pads of the rest (`pad((1 / x[0])[None], ((0, n - 1),))` for the gradient of
        log(x[0]), not `eye(n)[0] / x[0]`): the entries off the pick or window are exact
        zeros, where a product with a one-hot vector or a padded array gave 0 * inf = nan at
        every one of them (an infinite or nan cotangent at the picked entry; the IR
        interpreter does the same, plan.ContractionStep). The rest of the product is computed
        on the picked entries only: every other term on that axis is narrowed to them.
        (label, zeros before, zeros after) per axis, in the order taken."""
        scatters = []
        self.dims = list(self.dims)  # (an axis taken out has the pick's or window's length)
        while self._pick_through_windows() or self._window_through_windows():
            pass
        paired = self._paired_selection()
        if paired is not None:
            scatters.append(paired)
        while True:
            found = self._scatter_one()
            if found is not None:
                scatters.append(found)
                continue
            placed = self._window_on_shared_row() or self._window_diagonal_of_all()
            if not placed:
                return scatters
            scatters += placed

    def _paired_selection(self) -> tuple | None:
        """One selection of rows S (a window, every k-th row, or rows picked one by one at
        distinct places) read twice on one summed row label, `S[k,i] * r[k] * S[k,j]` (the
        Hessian of a sum over strided or sliced picks): each row of S has one 1, in a column
        of its own, so the product is `delta[i,j] * S[k,i] * r[k]`: the second S is taken out
        as a diagonal (placed last, `diag(...)`), and the first scatters r, dilated or padded,
        in O(n). Multiplied as selection matrices it was O(steps n^2), and 0 * inf = nan
        beside an infinite entry of r. (j, ("diagonal", i, n)) or None."""
        for a in self.terms:
            node = a.node
            if len(a.labels) != 2 or a.labels[0] == a.labels[1] or a.labels[0] in self.out \
                    or a.labels[1] not in self.out or not (
                        (isinstance(node, Delta) and not node.is_identity) or
                        _strided_window(node) or _distinct_unit_rows(node)):
                continue
            k, i = a.labels
            for b in self.terms:
                if b is a or len(b.labels) != 2 or b.labels[0] != k or b.labels[1] == i or \
                        b.labels[1] not in self.out:
                    continue
                j = b.labels[1]
                if any(t is not b and j in t.labels for t in self.terms):
                    continue
                if b.node is node:
                    self.terms = [t for t in self.terms if t is not b]
                    return j, ("diagonal", i, node.shape[1])
                self._apart_selections(a, b)
                return None
        return None

    def _apart_selections(self, a: Term, b: Term):
        """Two different selections S1[k,i], S2[k,j] of as many rows on one summed row k,
        times vectors on k alone (the Hessian of `exp(x[2t+1]) * x[2t]` summed over unrolled
        steps): the vectors' product on the diagonal of (k, k'), `diag(r)`, each selection then
        placing one axis of it (`_scatter_one`: padded, dilated, or rows placed), in O(n^2)
        and exact, where S1.T @ (r[:, None] * S2) multiplied steps x n selection matrices."""
        k = a.labels[0]
        others = [t for t in self.terms if t is not a and t is not b]
        second = b.node
        if not ((isinstance(second, Delta) and not second.is_identity) or
                _strided_window(second) or _distinct_unit_rows(second) or
                _flipped_rows(b)) or \
                a.node.shape[0] != second.shape[0] or not others or \
                any(t.labels != (k,) for t in others):
            return
        product = others[0].expr
        for t in others[1:]:
            product = ast.BinOp("*", product, t.expr)
        fresh = len(self.dims)
        self.dims.append(self.dims[k])
        b.labels = (fresh, b.labels[1])
        self.terms = [a, b, Term(ast.Call("diag", (product,)), (k, fresh))]
        # (a selection of rows in reverse, the places of steps that read one input forwards
        # and another backwards: the diagonal reversed along its axis, `diag(r)[:, ::-1]`)
        self._unflipped()

    def _scatter_one(self) -> tuple | None:
        """One unit vector or window of `_scatter_later`'s, taken out: (label, widths)."""
        for sel in list(self.terms):
            node = sel.node
            if isinstance(node, Unit) and sel.labels[0] in self.out and \
                    (len(self.terms) > 1 or not math.isfinite(self.coef)):
                # (e_k alone, or times a finite constant, is what it is; times inf or nan, the
                # constant is placed at k alone, `pad(1e999 * ones(1), ...)`)
                (label,) = sel.labels
                n, k = node.shape[0], node.position
                try:
                    widths = (dimension(k), dimension(n - k - 1))
                except ValueError:  # (no dimension: `n - p - 1`)
                    continue
                if any(t is not sel and t.labels.count(label) > 1 for t in self.terms):
                    continue
                item = ast.Slice(_bound(k, n), _bound(k + 1, n) if k + 1 != n else None)
                rows, partners = ONE, []
            elif isinstance(node, Delta) and not node.is_identity and \
                    sel.labels[0] != sel.labels[1] and sel.labels[1] in self.out and \
                    sel.labels[0] not in self.out:
                row, label = sel.labels
                partners = [t for t in self.terms if t is not sel and row in t.labels]
                if len(partners) > 1 or any(t.labels.count(row) != 1 or label in t.labels
                                            for t in partners) or \
                        any(t is not sel and t.labels.count(label) > 1 for t in self.terms):
                    continue
                rows, cols = node.shape
                widths = (dimension(node.offset), _rest(node))
                item = _slice(node.offset, node.offset + rows, cols)
                if partners:  # its row is the window's column now
                    (p,) = partners
                    p.labels = tuple(label if l == row else l for l in p.labels)
                    if not isinstance(p.node, Unit):  # (a pick of the window: taken next)
                        p.node = None
                else:  # rows summed against nothing (the adjoint of `sum(x[:p])`): ones
                    self.terms.append(Term(ast.Call("ones", (dimension(rows),)), (label,)))
                    partners = self.terms[-1:]
            elif _strided_window(node) and sel.labels[0] != sel.labels[1] and \
                    sel.labels[1] in self.out and sel.labels[0] not in self.out:
                # every k-th row of a window (lanes.py's `X[2 * t]`) on an output axis: the
                # rest, its entries k apart (`dilate`), padded, not a product with a dense
                # selection matrix (`eye(n)[::2].T @ g`, O(n * steps))
                row, label = sel.labels
                partners = [t for t in self.terms if t is not sel and row in t.labels]
                # (several partners, `x[:7:2] * t1` of the gradient of unrolled products of
                # two picks, are multiplied on the row before it is dilated)
                if any(p.labels.count(row) != 1 for p in partners) or \
                        any(t is not sel and label in t.labels for t in self.terms):
                    continue
                if not partners:
                    # rows summed against nothing, times a rest that may be infinite (a pole
                    # shared by unrolled steps, `outer(v, sum(eye(n)[3:8:2], axis=0))` with v
                    # infinite at it): ones on the rows, dilated and padded with the rest
                    # (numbers alone: `_scaled_strided_sum`)
                    if not any(t.labels for t in self.terms if t is not sel) or \
                            self._finite_rest():
                        continue
                    partners = [Term(ast.Call("ones", (dimension(node.shape[0]),)), (row,))]
                    self.terms.append(partners[0])
                window, step = node.args[0], node.params[1]
                rows, cols = window.shape
                widths = (dimension(window.offset), _rest(window), number(step),
                          dimension(rows))
                for p in partners:
                    p.labels = tuple(label if l == row else l for l in p.labels)
                    if not isinstance(p.node, Unit):
                        p.node = None
                item, rows = None, node.shape[0]
            elif (found := self._unit_rows_on_output(sel)) is not None:
                return found
            elif (found := self._diagonal_of_all(sel)) is not None:
                return found
            elif (found := self._unit_sum_on_output(sel)) is not None:
                return found
            elif (found := self._structure_mask(sel)) is not None:
                return found
            else:
                continue
            # Every other term on the axis, narrowed to the pick or window (none is, strided)
            narrowed = [] if item is None else [
                t for t in self.terms if t is not sel and label in t.labels and
                not (isinstance(node, Delta) and any(t is q for q in partners))]
            for t in narrowed:
                t.expr = _index(t.expr, len(t.labels), t.labels.index(label), item)
                t.node = _identity_narrowed(t, label, node)
            self.terms = [t for t in self.terms if t is not sel]
            self.dims[label] = rows
            return label, widths
        return None

    def _window_on_shared_row(self) -> list[tuple]:
        """A window D[k, j] (the adjoint of a slice) on an output label j whose summed row k
        several plain terms carry (`w[k] * cos(X[:, 1:])[i, k] * delta[k+1, j]`, the gradient
        of `sum(sin(X[:, 1:]) * w)`; `_scatter_one` takes a window with one partner): each of
        them read on j instead (their product is the rest on the window's columns), every
        other term on j narrowed to the window, and the rest padded last. Left in the product,
        w[k] * D[k, j] was multiplied first, `t0 @ (w[:, None] * eye(t + 1)[1:])`: a dense
        selection matrix, O(n t^2) time, O(t^2) memory, and 0 * inf = nan along the row of an
        infinite entry of the rest. In any rank and on any axis. [(j, widths)] or []."""
        for sel in self.terms:
            node = sel.node
            if not isinstance(node, Delta) or node.is_identity or \
                    sel.labels[0] == sel.labels[1] or sel.labels[1] not in self.out or \
                    sel.labels[0] in self.out:
                continue
            row, label = sel.labels
            partners = [t for t in self.terms if t is not sel and row in t.labels]
            if len(partners) < 2 or any(
                    t.labels.count(row) != 1 or label in t.labels or _structured(t.node)
                    for t in partners) or \
                    any(t is not sel and t.labels.count(label) > 1 for t in self.terms):
                continue
            rows, cols = node.shape
            item = _slice(node.offset, node.offset + rows, cols)
            for t in self.terms:  # (before the partners carry j)
                if t is not sel and label in t.labels:
                    t.expr = _index(t.expr, len(t.labels), t.labels.index(label), item)
                    t.node = None
            for p in partners:
                p.labels = tuple(label if l == row else l for l in p.labels)
                p.node = None
            self.terms = [t for t in self.terms if t is not sel]
            self.dims[label] = rows
            return [(label, (dimension(node.offset), _rest(node)))]
        return []

    def _window_diagonal_of_all(self) -> list[tuple]:
        """A window D[k, j] on two output labels whose rest is not vectors on them alone (a
        Hessian through a slice met by a vector, `v[k] * f''(X[:, 1:])[i, k] * delta[k+1, j]`),
        taken out as `_diagonal_of_all` takes an identity: the rest computed on k alone (a
        term on j read on the window's columns, `x[1:]`), placed on the diagonal of (k, j) by
        a select and padded along j last, where its product with `pad(diag(v), ...)` was
        0 * inf = nan off the diagonal for an infinite entry of the rest. Only for a rest that
        may be infinite, as there. [(j, widths), (j, ("diagonal", k, rows))] or []."""
        for sel in self.terms:
            node = sel.node
            strided = _strided_window(node)
            if not (strided or isinstance(node, Delta) and not node.is_identity) or \
                    sel.labels[0] == sel.labels[1] or \
                    not all(l in self.out for l in sel.labels):
                continue
            row, label = sel.labels
            others = [t for t in self.terms if t is not sel]
            if all(set(t.labels) <= {row, label} and len(t.labels) <= 1 for t in others):
                continue  # (vectors on k or j and numbers: `pad(diag(...))`, _diag_embed)
            if any(row in t.labels and label in t.labels or t.labels.count(label) > 1 or
                   _structured(t.node) for t in others) or \
                    not any(row in t.labels or label in t.labels for t in others) or \
                    self._finite_rest():
                continue
            # (every k-th row of a window, the Hessian through `X[:, 1::2]`: its rows on the
            # diagonal, dilated k apart and padded along j)
            window = node.args[0] if strided else node
            rows, cols = window.shape
            item = _slice(window.offset, window.offset + rows, cols)
            widths = (dimension(window.offset), _rest(window))
            if strided:
                item = ast.Slice(item.lo, item.hi, number(node.params[1]))
                widths += (number(node.params[1]), dimension(rows))
            for t in others:
                if label in t.labels:
                    t.expr = _index(t.expr, len(t.labels), t.labels.index(label), item)
                    t.labels = tuple(row if l == label else l for l in t.labels)
                    t.node = None
            self.terms = others
            self.dims[label] = node.shape[0]
            return [(label, widths), (label, ("diagonal", row, node.shape[0]))]
        return []

    def _unit_rows_on_output(self, sel: Term) -> tuple | None:
        """A stack of unit vectors S[k, j] (rows p_0, p_1, ... of an n-axis: a stack of picks,
        `stack((x[0], x[2]))`, or lanes.py's rows out of order) with j an output label, taken
        out of the product as `_scatter_one` takes a pick: (j, ("rows", ...)) when k is summed
        against one partner (the gradient: its rows k placed at rows p_k, those at one row
        summed), (j, ("lanes", ...)) when k is an output label too (the Jacobian: row k of the
        rest placed at column p_k). Placed last, by concatenating or padding exact zeros:
        a product with S spread an infinite or nan entry of the rest as 0 * inf = nan over
        its whole row. None when S is not such a stack or the product is not of that form."""
        found = _scaled_unit_rows(sel.node)
        if found is None or sel.labels[0] == sel.labels[1] or sel.labels[1] not in self.out:
            return None
        scale, picks = found
        lane, label = sel.labels
        if any(t is not sel and label in t.labels for t in self.terms):
            return None
        partners = [t for t in self.terms if t is not sel and lane in t.labels]
        if any(t.labels.count(lane) != 1 for t in partners):
            return None
        positions = [k for k, _ in picks]
        n = picks[0][1]
        if not partners:
            # the rows summed against nothing (lanes.py's stack of the places that unrolled
            # steps read, `e_1, e_2, e_5, ...`), times a rest that may be infinite (a pole the
            # steps share): ones on the lanes, each placed at its row with the rest (numbers
            # alone: `_scaled_strided_sum`)
            if lane in self.out or not any(t.labels for t in self.terms if t is not sel) or \
                    self._finite_rest() or not all(k.is_concrete for k in positions):
                return None
            partners = [Term(ast.Call("ones", (number(len(positions)),)), (lane,))]
            self.terms.append(partners[0])
        if lane in self.out:
            try:
                widths = [(dimension(k), dimension(n - k - 1)) for k in positions]
            except ValueError:  # (no dimension: `n - p - 1`)
                return None
            self.terms = [t for t in self.terms if t is not sel]
            self.coef *= scale
            return label, ("lanes", lane, widths)
        if not all(k.is_concrete for k in positions):
            return None
        # (several partners, `x[1:6:2] * t1[::-1]` of the gradient of reversed pairs, are
        # multiplied on the lane axis before their rows are placed: a sum over the lanes that
        # S alone maps to places)
        for p in partners:
            p.labels = tuple(label if l == lane else l for l in p.labels)
            if not isinstance(p.node, Unit):
                p.node = None
        self.terms = [t for t in self.terms if t is not sel]
        self.coef *= scale
        self.dims[label] = sel.node.shape[0]
        spaced = _evenly_spaced([k.offset for k in positions], n)
        if spaced is not None:
            return label, spaced
        return label, ("rows", [k.offset for k in positions], n)

    def _finite_rest(self) -> bool:
        """Whether every operand of the product is finite at finite inputs
        (`finite_where_inputs_are`): then a product with an identity or a 0/1 pattern has
        exact zeros as it stands (`eye(m)[:, :, None] * x`, the Jacobian of W @ x), and is
        written so. Only a rest that may be infinite (1 / x, log) needs a select."""
        return all(finite_where_inputs_are(c) for c, _ in self.node.operands)

    def _diagonal_of_all(self, sel: Term) -> tuple | None:
        """An identity on two output labels (i, j) whose rest is not vectors on them alone
        (the Jacobian of an elementwise function of a matrix, `delta[i,k] * delta[j,l] *
        f'(A)[i,j]`, or a row's block `B[j,k,l] * delta[i,k]` of a Hessian), taken out as
        `_scatter_one` takes a pick: the rest computed on i alone, placed on the diagonal of
        (i, j) last, by a select (`where(eye(n) > 0, r[:, None], 0)`), not multiplied into an
        identity matrix (0 * inf was nan off the diagonal). Vectors alone become `diag(...)`
        (`_diag_embed`). (j, ("diagonal", i, n)) or None."""
        node = sel.node
        if not (isinstance(node, Delta) and node.is_identity) or \
                sel.labels[0] == sel.labels[1] or not all(l in self.out for l in sel.labels) \
                or self._finite_rest():
            return None
        i, j = sel.labels
        others = [t for t in self.terms if t is not sel]
        if all(set(t.labels) <= {i, j} and len(t.labels) <= 1 for t in others):
            return None  # (vectors on i or j and numbers: `diag(...)`, see above)
        if any(i in t.labels and j in t.labels for t in others):
            return None  # (a diagonal of a term: left to `_diagonals`)
        if not any(i in t.labels for t in others):
            i, j = j, i  # keep the label the rest carries
        for t in others:
            if j in t.labels:
                t.labels = tuple(i if l == j else l for l in t.labels)
                t.node = None
        self.terms = others
        return j, ("diagonal", i, node.shape[0])

    def _unit_sum_on_output(self, sel: Term) -> tuple | None:
        """A sum of unit vectors at concrete places, `c_0 e_(p_0) + c_1 e_(p_1) + ...`, on an
        output label that no other term carries, times a rest that may be infinite (the
        Hessian of `sum_t log(x[0]) * x[2t + 1]` past MAX_DISTRIBUTED_TERMS: `t1 * (eye(n)[1]
        + eye(n)[3] + ...)`, 0 * inf = nan between the places at x[0] = 0): taken out as
        `_unit_rows_on_output` takes a stack of picks, the rest computed on the places alone
        (times `ones(m)`, or the coefficients `stack(c_0, c_1, ...)`) and placed last, by a
        pad and a dilation where the places are evenly spaced, else by `rows_placed`: exact
        zeros between them, in O(n + m) and a formula linear in the places, with no bound on
        their number. (label, widths) or None."""
        node = sel.node
        if type(node) is not Add or len(sel.labels) != 1 or sel.labels[0] not in self.out:
            return None
        (label,) = sel.labels
        if any(type(t) is not Unit or not t.position.is_concrete for _, t in node.terms) or \
                any(t is not sel and label in t.labels for t in self.terms) or \
                self._finite_rest():
            return None
        places = sorted((t.position.offset, c) for c, t in node.terms)
        positions = [p for p, _ in places]
        if len(set(positions)) != len(positions):
            return None
        coefs = [c for _, c in places]
        if len(set(coefs)) == 1:
            self.coef *= coefs[0]
            values = ast.Call("ones", (number(len(places)),))
        else:
            values = ast.Call("stack", tuple(number(c) for c in coefs))
        self.terms = [t for t in self.terms if t is not sel] + [Term(values, (label,))]
        self.dims[label] = Dim(None, len(places))
        n = node.shape[0]
        spaced = _evenly_spaced(positions, n)
        return label, spaced if spaced is not None else ("rows", positions, n)

    def _structure_mask(self, sel: Term) -> tuple | None:
        """A sum of unit vectors and windows on output labels only (the Jacobian of a
        concatenation of slices, `pad(eye(n)[2:], ...) + pad(eye(n)[0][None], ...)`: a 0/1
        pattern) times a rest: taken out, and the product selected where the pattern is
        nonzero last, `where(S != 0, S * r, 0)`, so that its zeros are exact (0 * inf was nan
        along the rows of an infinite entry). The rest may share no axis with S: a number that
        may be infinite times a sum of unit vectors (`t1 * sum(eye(n)[3:10:2], axis=0)`, a pole
        shared by unrolled steps) is selected alike, and so is a pattern alone times an
        infinite or nan constant (`1e999 * eye(n)[2:5]`). (a label of S, ("mask", S, its
        labels)) or None."""
        node = sel.node
        labels = sel.labels
        if not labels or len(set(labels)) != len(labels) or \
                not all(l in self.out for l in labels):
            return None
        if any(t is not sel and set(t.labels) & set(labels) for t in self.terms):
            placed = type(node) is Add
        else:  # (a rest on other axes or none, or a constant alone)
            placed = type(node) in (Add, Contract) and len(self.terms) > 1 or \
                len(self.terms) == 1 and not math.isfinite(self.coef)
        # (a broadcast constant is no pattern: its 0 times inf is nan)
        if not placed or not is_structure(node) or self._finite_rest() or \
                type(node) is Contract and all(type(n) is Const for n, _ in node.operands):
            return None
        self.terms = [t for t in self.terms if t is not sel]
        return labels[0], ("mask", sel.expr, labels)

    def _scatter(self, scatters: list[tuple]):
        """The one term left, padded along each axis `_scatter_later` took out (a new axis
        first where the term lacks it: a pick's)."""
        if not self.terms:  # (a unit vector alone, times inf or nan: the constant, placed)
            self.terms = [Term(number(1.0), ())]
        (term,) = self.terms
        padded = {label for label, widths in scatters
                  if widths[0] not in ("rows", "lanes", "diagonal", "mask")} - \
            {label for label, widths in scatters if widths[0] == "diagonal"}
        new = tuple(l for l in self.out if l in padded and l not in term.labels)
        if new and not term.labels:  # (a number, which numpy may give as a Python float)
            term.expr = _times_ones(term.expr, len(new))
            term.labels = new
        elif new:
            term.expr = ast.Index(term.expr, (ast.NoneLit(),) * len(new))
            term.labels = new + term.labels
        if not math.isfinite(self.coef) or any(
                w[0] in ("rows", "lanes", "diagonal", "mask") for _, w in scatters):
            # (1 / 0, the mean of nothing: times no entry; a number times rows placed among
            # zeros: on the rows, the smaller array)
            term.expr, self.coef = scaled(self.coef, term.expr), 1.0
        # Innermost first (a pick of a window was taken after the window), and one pad for
        # the axes of the scatters after the last repeated axis: a dilation along one axis
        # commutes with the pads of the others, which are left to the one pad (each pad or
        # dilation of a Hessian's two axes is a copy of the whole n x n result).
        pending: dict = {}
        # An axis placed has its whole length again (the zeros between rows placed on
        # another axis span it: `exp(x[2t]) * x[2(T - 1 - t) + 1]`'s Hessian had rows of
        # `steps` zeros beside rows of n)
        dims = list(self.dims)
        for label, widths in reversed(scatters):
            if label in pending or widths[0] in ("rows", "lanes", "diagonal", "mask"):
                term.expr = _padded(term.expr, term.labels, pending)
                pending = {}
            if label < len(self.node.dims):
                dims[label] = self.node.dims[label]
            if widths[0] == "mask":
                term.expr, term.labels = _selected(term.expr, term.labels, *widths[1:])
                continue
            if widths[0] == "diagonal":
                term.expr, term.labels = _on_diagonal(term.expr, term.labels, widths[1],
                                                      label, widths[2], self.out)
                continue
            if widths[0] == "rows":
                term.expr = rows_placed(term.expr, term.labels, label, *widths[1:], dims)
                continue
            if widths[0] == "lanes":
                term.expr, term.labels = _lanes_placed(term.expr, term.labels, label,
                                                       *widths[1:])
                continue
            axis = term.labels.index(label)
            if len(widths) == 4:  # strided: the entries k apart first
                term.expr = ast.Call("dilate", (term.expr, widths[2], widths[3]),
                                     (("axis", number(axis)),) if axis else ())
            pending[label] = widths[:2]
        term.expr = _padded(term.expr, term.labels, pending)
        term.node = None

    def _place_constant(self):
        """A constant multiplies the smallest array it can: an operand of fewer axes than the
        result (`outer(2 * a, b)`, not `2 * outer(a, b)`), else the result. Sizes are bound
        only when the code runs, so the estimate takes every dimension at one size: an
        array's cost is its number of axes. 1 and -1 stay where they read best."""
        if self.coef in (1.0, -1.0) or len(self.terms) < 2:
            return
        candidates = [t for t in self.terms if not isinstance(t.node, (Delta, Unit))
                      and _reciprocal(t.expr) is None]
        if not candidates:
            return
        small = min(candidates, key=lambda t: len(t.labels))
        if len(small.labels) < len(self.out):
            small.expr, small.node = scaled(self.coef, small.expr), None
            self.coef = 1.0

    def _needed(self, label, skip=()) -> bool:
        """Is `label` in the output or carried by a term other than those in `skip`?"""
        if label in self.out:
            return True
        for t in self.terms:
            if label in t.labels and t not in skip:  # a Term compares by identity
                return True
        return False

    def _select(self) -> bool:
        """Unit vectors and windows (deltas with an offset) on a summed index: index the partner.
        Whether anything changed."""
        changed, any_change = True, False
        while changed:
            changed = False
            for sel in self.terms:
                node = sel.node
                if isinstance(node, Unit):
                    (label,) = sel.labels
                    item = _position(node.position, node.shape[0])
                    new = None
                elif isinstance(node, Delta) and sel.labels[0] != sel.labels[1]:
                    new, label = sel.labels
                    if node.is_identity:
                        item = None
                    else:
                        rows, cols = node.shape
                        item = _slice(node.offset, node.offset + rows, cols)
                elif _strided_window(node) and sel.labels[0] != sel.labels[1]:
                    # every k-th row of a window (lanes.py's `X[2 * t]` of every step t)
                    new, label = sel.labels
                    window, step = node.args[0], node.params[1]
                    rows, cols = window.shape
                    item = _slice(window.offset, window.offset + rows, cols)
                    item = ast.Slice(item.lo, item.hi, number(step))
                elif (picks := _unit_rows(node)) is not None and sel.labels[0] != sel.labels[1]:
                    # rows picked one by one (`X[0]`, `X[1]`, `X[4]` of steps batched by lanes.py):
                    # their stack, made of the partner's rows, where the stack of unit vectors
                    # was a lanes x n selection matrix multiplied with the partner
                    new, label = sel.labels
                    item = picks
                else:
                    continue
                partners = [t for t in self.terms if t is not sel and label in t.labels]
                if self._pick_each(sel, partners) or self._window_each(sel, partners):
                    changed = any_change = True
                    break
                # Not into a partner that carries the window's other index already: it would
                # carry it twice, a diagonal nothing after takes (tangent[i,j] * f[i,j,k,l]
                # against delta[k+1,i] * delta[l+1,j] was summed over all four axes: a jvp).
                if label in self.out or len(partners) != 1 or partners[0].labels.count(label) != 1 \
                        or new in partners[0].labels:
                    if isinstance(node, Delta) and self._pad(sel):
                        changed = any_change = True
                        break
                    continue
                (p,) = partners
                axis = p.labels.index(label)
                if type(item) is list:
                    if not isinstance(p.expr, ast.Name):  # (each row would compute it again)
                        continue
                    rank = len(p.labels)
                    p.expr = ast.Call("stack", tuple(_index(p.expr, rank, axis, _position(k, d))
                                                     for k, d in item))
                    p.labels = (new,) + p.labels[:axis] + p.labels[axis + 1:]
                    p.node = None
                    self.terms = [t for t in self.terms if t is not sel]
                    changed = any_change = True
                    break
                if item is not None:
                    p.expr = _index(p.expr, len(p.labels), axis, item)
                if new is None:
                    p.labels = p.labels[:axis] + p.labels[axis + 1:]
                else:
                    p.labels = p.labels[:axis] + (new,) + p.labels[axis + 1:]
                p.node = None
                self.terms = [t for t in self.terms if t is not sel]
                changed = any_change = True
                break
        return any_change

    def _pick_each(self, sel: Term, partners: list[Term]) -> bool:
        """A unit vector e_k on a summed label that several plain terms carry
        (`sum_l e_6[l] * t[l] * A[l, j]`, a row of a product compiled back from a formula,
        `(t[:, None] * A)[6]`): entry k of each, `t[6] * A[6]`, where the product with e_k
        was `A.T @ (t * eye(8)[6])`, in which 0 * inf = nan at an infinite entry of t
        spread over the whole row. Whether it did."""
        node = sel.node
        if not isinstance(node, Unit) or len(partners) < 2 or sel.labels[0] in self.out or \
                any(p.labels.count(sel.labels[0]) != 1 or _structured(p.node)
                    for p in partners):
            return False
        (label,) = sel.labels
        item = _position(node.position, node.shape[0])
        for p in partners:
            p.expr = _index(p.expr, len(p.labels), p.labels.index(label), item)
            p.labels = tuple(l for l in p.labels if l != label)
            p.node = None
        self.terms = [t for t in self.terms if t is not sel]
        return True

    def _window_each(self, sel: Term, partners: list[Term]) -> bool:
        """A window D[a, l] on a summed label l that several plain terms carry, none of them
        a (`X[i, l] * w[l] * delta[a+1, l]`, `(X * w)[:, 1:]`): each sliced to the window,
        `w[1:] * X[:, 1:]`, as `_select` indexes one partner, where the product with D was
        `X @ (w * eye(t + 1)[1:]).T`, a dense selection matrix (O(n t^2), and 0 * inf = nan
        along the row of an infinite entry). Whether it did."""
        node = sel.node
        if not isinstance(node, Delta) or node.is_identity or len(partners) < 2:
            return False
        new, label = sel.labels
        if new == label or label in self.out or any(
                p.labels.count(label) != 1 or new in p.labels or _structured(p.node)
                for p in partners) or len({frozenset(p.labels) for p in partners}) == 1:
            return False  # (partners on the same axes are multiplied first, then indexed)
        _sliced(partners, node, label, new)
        self.terms = [t for t in self.terms if t is not sel]
        return True

    def _pick_through_windows(self) -> bool:
        """A unit vector e_k on a summed label j whose partners are plain terms and windows
        or identities on j (`sum_j e_2[j] * v[j] * delta[j+2, i]`, a row of a column-padded
        diagonal compiled back from a printed Hessian, `pad(diag(v), ((0, 0), (2, 0)))[2]`):
        entry k of each plain partner (`v[2]`, a number) and row k of each window, itself a
        unit vector on the window's other label (e_4[i]), which is then taken out and placed
        as any pick is (`_scatter_one`), where the product e_k * v was a dense vector in
        which 0 * inf = nan at an infinite entry of v. Whether it did."""
        for sel in self.terms:
            node = sel.node
            if not isinstance(node, Unit) or sel.labels[0] in self.out:
                continue
            (label,) = sel.labels
            partners = [t for t in self.terms if t is not sel and label in t.labels]
            windows = [t for t in partners if isinstance(t.node, Delta)]
            if not windows or any(p.labels.count(label) != 1 for p in partners) or any(
                    _structured(p.node) and not isinstance(p.node, Delta) for p in partners):
                continue
            if not any(not isinstance(p.node, Delta) for p in partners):
                continue  # (a row of a window alone is its row, `eye(5)[2:][2]`: exact)
            units = []
            for w in windows:
                other = self._window_read_through(w, label)
                if other is None:
                    break
                rows, cols = w.node.shape
                try:  # row k of a window is its column k + offset; of the identity, k
                    position, length = (node.position + w.node.offset, cols) \
                        if w.labels[0] == label else (node.position, rows)
                except (ValueError, TypeError):  # (no dimension)
                    break
                if not isinstance(position, Dim) or position.name is not None and \
                        position.name != length.name:
                    break
                units.append((w, Term(None, (other,), Unit(length, position))))
            else:
                item = _position(node.position, node.shape[0])
                for p in partners:
                    if isinstance(p.node, Delta):
                        continue
                    p.expr = _index(p.expr, len(p.labels), p.labels.index(label), item)
                    p.labels = tuple(l for l in p.labels if l != label)
                    p.node = None
                self._windows_replaced(sel, units)
                return True
        return False

    def _window_read_through(self, w: Term, label) -> object | None:
        """The other label of the window or identity `w` read through a selection on `label`
        (`_pick_through_windows`, `_window_through_windows`): None where `label` is a
        window's column (its rows are not read by it), or where another selection carries
        that other label (it would be placed twice)."""
        other = w.labels[1] if w.labels[0] == label else w.labels[0]
        if w.labels[0] != label and not w.node.is_identity or any(
                other in t.labels for t in self.terms
                if t is not w and isinstance(t.node, (Unit, Delta))):
            return None
        return other

    def _windows_replaced(self, sel: Term, pairs: list[tuple[Term, Term]]):
        """Each window of `pairs` by the selection it became, written out; `sel` gone."""
        for w, new in pairs:
            new.expr = selection(new.node)
            self.terms = [new if t is w else t for t in self.terms]
        self.terms = [t for t in self.terms if t is not sel]

    def _window_through_windows(self) -> bool:
        """A window D[a, j] on a summed label j whose partners are plain terms and windows
        or identities E[j, i] on their rows (`v[j] * delta[j+1, i] * delta[a+1, j]`, a slice
        of rows of a column-padded diagonal compiled back from a printed Hessian,
        `pad(diag(v), ((0, 0), (1, n - 5)))[1:]`): the plain partners sliced to D's columns
        (`v[1:]` on a) and each E composed with D, one window (a, i), placed exactly later
        (`pad(diag(...))`), where the product v * E was a dense matrix in which 0 * inf = nan
        along the row of an infinite entry of v. Whether it did."""
        for sel in self.terms:
            node = sel.node
            if not isinstance(node, Delta) or node.is_identity or \
                    sel.labels[0] == sel.labels[1] or sel.labels[1] in self.out:
                continue
            new, label = sel.labels
            partners = [t for t in self.terms if t is not sel and label in t.labels]
            windows = [t for t in partners if isinstance(t.node, Delta)]
            plain = [t for t in partners if not _structured(t.node)]
            if not windows or not plain or len(windows) + len(plain) != len(partners) or \
                    any(p.labels.count(label) != 1 or new in p.labels for p in partners):
                continue
            composed = []
            for w in windows:
                other = self._window_read_through(w, label)
                if other is None:
                    break
                try:
                    window = Delta(node.shape[0], w.node.shape[1], node.offset + w.node.offset)
                except (ValueError, TypeError):  # (no dimension)
                    break
                composed.append((w, Term(None, (new, other), window)))
            else:
                _sliced(plain, node, label, new)
                self._windows_replaced(sel, composed)
                return True
        return False

    def _pads(self) -> bool:
        """A window left over by _select because several terms carried its row: now that
        they may have been multiplied into one, its adjoint is a pad after all."""
        return any(isinstance(t.node, Delta) and t.labels[0] != t.labels[1] and self._pad(t)
                   for t in self.terms)

    def _pad(self, sel: Term) -> bool:
        """A window whose row index is summed against one partner: the partner, padded with
        zeros to the window's columns (`pad(g, (1, 0))`): the adjoint of a slice, in O(n)."""
        node = sel.node
        row, col = sel.labels
        partners = [t for t in self.terms if t is not sel and row in t.labels]
        if not partners and row not in self.out:
            # Rows summed against nothing (the adjoint of `sum(x[:p])`): a window of ones.
            partners = [Term(ast.Call("ones", (dimension(node.shape[0]),)), (row,))]
            self.terms.append(partners[0])
        if row in self.out or len(partners) != 1 or partners[0].labels.count(row) != 1 \
                or col in partners[0].labels:
            return False
        (p,) = partners
        axis = p.labels.index(row)
        zero = ast.Tuple((number(0), number(0)))
        widths = [zero] * len(p.labels)
        widths[axis] = ast.Tuple((dimension(node.offset), _rest(node)))
        if not node.is_identity:  # the identity only renames the index
            p.expr = ast.Call("pad", (p.expr, ast.Tuple(tuple(widths))))
        p.labels = p.labels[:axis] + (col,) + p.labels[axis + 1:]
        p.node = None
        self.terms = [t for t in self.terms if t is not sel]
        return True

    def _diagonals(self):
        """X[i,i] -> diag(X) (or tr(X) when i is summed and nothing else carries it)."""
        for t in self.terms:
            labels = t.labels
            if len(labels) < 2:
                continue
            if len(labels) == 2 and labels[0] == labels[1]:
                label = labels[0]
                if not self._needed(label, skip=(t,)):
                    t.expr, t.labels = ast.Call("tr", (t.expr,)), ()
                else:
                    t.expr, t.labels = ast.Call("diag", (t.expr,)), (label,)
                t.node = None
            elif labels[0] == labels[1] and len(set(labels)) == len(labels) - 1 and \
                    not self._needed(labels[0], skip=(t,)):
                # C[i,i,...] summed over i: numpy's trace over the first two axes, tr(C)
                t.expr, t.labels, t.node = ast.Call("tr", (t.expr,)), labels[2:], None
            elif len(set(labels)) != len(labels):
                self._einsum_all()
                return

    def _scaled_strided_sum(self) -> bool:
        """c * sum_k S[k, j], S every step-th row of a window (a pole shared by unrolled steps,
        `sum_t log(x[0]) * x[2t + 1]`, whose gradient is log(x[0]) at x[1], x[3], ...) with
        every other term a number: c placed step apart, `pad(dilate(c * ones(m), step, span))`,
        where `c * sum(eye(n)[1:8:2], axis=0)` was 0 * inf = nan between the places at an
        infinite c. Likewise S a stack of unit vectors at concrete places (lanes.py's rows of
        steps that read irregular places, `x[1], x[2], x[5], ...`, whose Hessian's row of the
        pole is c at each) where c may be infinite: c placed at each row's place (`rows_placed`,
        those at one place summed; a pad and a dilation where they are evenly spaced), where
        `c * sum(concatenate((zeros(1, m), eye(m)[:2], ...)).T, axis=0)` was O(steps n) and nan
        between the places. Whether it did."""
        for d in self.terms:
            node = d.node
            if len(d.labels) != 2:
                continue
            rows = None
            if not _strided_window(node):
                found = _scaled_unit_rows(node) if node is not None else None
                if found is None or not all(k.is_concrete for k, _ in found[1]) or \
                        len({m for _, m in found[1]}) != 1:
                    continue
                rows = found
            row, col = d.labels
            rest = [t for t in self.terms if t is not d]
            if row in self.out or col not in self.out or row == col or not rest or \
                    any(t.labels for t in rest) or rows is not None and self._finite_rest():
                return False
            product = rest[0].expr
            for t in rest[1:]:
                product = ast.BinOp("*", product, t.expr)
            if not math.isfinite(self.coef):  # (an infinite constant too: at the places)
                product, self.coef = scaled(self.coef, product), 1.0
            spread = ast.BinOp("*", product, ast.Call("ones", (dimension(node.shape[0]),)))
            if rows is not None:
                scale, places = rows
                self.coef *= scale
                positions, n = [k.offset for k, _ in places], places[0][1]
                spaced = _evenly_spaced(positions, n)
                if spaced is None:
                    placed = rows_placed(spread, (col,), col, positions, n, {col: n})
                elif len(spaced) == 4:
                    placed = _padded(ast.Call("dilate", (spread, *spaced[2:])), (col,),
                                     {col: spaced[:2]})
                else:
                    placed = _padded(spread, (col,), {col: spaced})
                self.terms = [Term(placed, (col,))]
                return True
            window, step = node.args[0], node.params[1]
            spread = ast.Call("dilate", (spread, number(step), dimension(window.shape[0])))
            placed = _padded(spread, (col,), {col: (dimension(window.offset), _rest(window))})
            self.terms = [Term(placed, (col,))]
            return True
        return False

    def _lonely_sums(self):
        """Sum away indices that only one term carries and the output does not."""
        # How many terms carry each index: summing one away changes no other's count.
        carriers: dict = {}
        for t in self.terms:
            for l in set(t.labels):
                carriers[l] = carriers.get(l, 0) + 1
        for t in self.terms:
            lonely, ones = [], []
            for a, l in enumerate(t.labels):
                if l not in self.out and carriers[l] == 1:
                    (ones if self.dims[l] == ONE else lonely).append(a)
            if ones and not lonely:
                lonely = ones
            elif ones:
                lonely = sorted(lonely + ones)
            if not lonely:
                continue
            if len(lonely) == len(t.labels):
                t.expr = ast.Call("sum", (t.expr,))
            else:
                axis = (number(lonely[0]) if len(lonely) == 1
                        else ast.Tuple(tuple(number(a) for a in lonely)))
                t.expr = ast.Call("sum", (t.expr,), (("axis", axis),))
            t.labels = tuple(l for a, l in enumerate(t.labels) if a not in lonely)
            t.node = None

    def _hadamard(self, batched: bool = False) -> bool:
        """Multiply two terms elementwise when one's indices are a subset of the other's.
        `batched`: also where the product sums an index afterwards, if the two share an output
        index too (no matrix product fits, and an einsum has no faster way either)."""
        best = None
        first = self.terms[0].labels
        if all([t.labels == first for t in self.terms]):
            # An elementwise product (every term on the same indices): the search below would
            # pick the first two every time; a chain's long products made it cubic in effect.
            best = (None, self.terms[0], self.terms[1])
        for i, a in enumerate(self.terms if best is None else ()):
            for b in self.terms[i + 1:]:
                if set(a.labels) <= set(b.labels) or set(b.labels) <= set(a.labels):
                    small, big = (a, b) if len(a.labels) <= len(b.labels) else (b, a)
                    shared = set(small.labels)
                    # Do not multiply in what a matrix product would contract instead, unless a
                    # third term needs the same summed index (then the product must come first).
                    summed = [l for l in shared if not self._needed(l, skip=(a, b))]
                    if summed and len(big.labels) > len(small.labels) and \
                            not self._shared_by_three(summed) and \
                            not (batched and shared & set(self.out)):
                        continue
                    # Nor into a term that a matrix product with another would shrink first:
                    # y * (X @ v), not (y[:, None] * X) @ v, a second array of X's size (the
                    # Hessian-vector product of a logistic loss).
                    if len(big.labels) > len(small.labels) and any(
                            len(s := [l for l in set(big.labels) & set(p.labels)
                                      if not self._needed(l, skip=(big, p))]) == 1
                            and _matmul(big, p, s[0], self.out) is not None
                            for p in self.terms if p is not small and p is not big):
                        continue
                    # Nor a factor of output indices only into a larger term that a sum will
                    # shrink: after the sum the result is smaller (`(t1 * N) @ g / t0`, not
                    # `t1 * (N / t0[:, None]) @ g`, a pass over [n, f] for one over [n]).
                    if len(big.labels) > len(self.out) and set(small.labels) <= set(self.out) \
                            and len(self.terms) > 2:
                        continue
                    # Multiply into the factor that carries the later output index, so the
                    # plain one comes first in the product (X.T @ (v[:, None] * X)).
                    late = max((self.out.index(l) for l in big.labels if l in self.out),
                               default=-1)
                    key = (len(small.labels) != len(big.labels), len(big.labels), -late)
                    if best is None or key < best[0]:
                        best = (key, small, big)
        if best is None:
            return False
        _, small, big = best
        expr = ast.BinOp("*", _align(small, big.labels), big.expr)
        if not small.labels:
            expr = ast.BinOp("*", small.expr, big.expr)
        # x * (1 / d) reads better as x / d (d broadcast like the factor it replaces).
        if _reciprocal(small.expr) is not None:
            denominator = Term(_reciprocal(small.expr), small.labels)
            expr = ast.BinOp("/", big.expr, _align(denominator, big.labels))
        elif _reciprocal(big.expr) is not None and small.labels == big.labels:
            expr = ast.BinOp("/", small.expr, _reciprocal(big.expr))
        self._replace([small, big], Term(expr, big.labels))
        return True

    def _shared_by_three(self, labels) -> bool:
        return any(sum(l in t.labels for t in self.terms) >= 3 for l in labels)

    def _scalars_on(self, d: Term, length: Dim) -> list[Term]:
        """Where every other term is a number (`log(x[0]) * delta[i,j]`): those numbers as one
        vector of `length` on d's first label, for the diagonal below (a product with the
        delta gave 0 * inf = nan off the diagonal for an infinite number); else []."""
        rest = [t for t in self.terms if t is not d]
        if not rest or any(t.labels for t in rest):
            return []
        product = rest[0].expr
        for t in rest[1:]:
            product = ast.BinOp("*", product, t.expr)
        ones = ast.Call("ones", (dimension(length),))
        self.terms = [d, Term(ast.BinOp("*", product, ones), d.labels[:1])]
        return self.terms[1:]

    def _diag_embed(self) -> bool:
        """v[i] * w[j] * delta[i,j] -> diag(v * w): the delta makes i and j one index, so every
        vector on either is on the diagonal (not `w * diag(v)`)."""
        for d in self.terms:
            if isinstance(d.node, Delta) and d.node.is_identity:
                vectors = [v for v in self.terms
                           if v is not d and len(v.labels) == 1 and v.labels[0] in d.labels] \
                    or (all(l in self.out for l in d.labels) and
                        self._scalars_on(d, d.node.shape[0]))
                if vectors:
                    product = vectors[0].expr
                    for v in vectors[1:]:
                        product = ast.BinOp("*", product, v.expr)
                    self._replace([d, *vectors], Term(ast.Call("diag", (product,)), d.labels))
                    return True
            elif isinstance(d.node, Delta) and d.labels[0] != d.labels[1] and \
                    all(l in self.out for l in d.labels):
                # v[k] * window[k,j]: v placed on a shifted diagonal, `pad(diag(v), ...)` in
                # O(size), not multiplied into a dense selection matrix (a stencil's Hessian).
                # A vector on the column, w[j], is read on the window's columns (the Jacobian
                # of sqrt(pad(x)): 1 / sqrt of the padded zeros is inf, off the window).
                row, col = d.labels
                rows, cols = d.node.shape
                on_row = [v for v in self.terms if v is not d and v.labels == (row,)]
                on_col = [v for v in self.terms if v is not d and v.labels == (col,)]
                window = _slice(d.node.offset, d.node.offset + rows, cols)
                factors = [v.expr for v in on_row] + [_index(v.expr, 1, 0, window)
                                                      for v in on_col]
                vectors = on_row + on_col or self._scalars_on(d, rows)
                factors = factors or [v.expr for v in vectors]
                if vectors:
                    product = factors[0]
                    for f in factors[1:]:
                        product = ast.BinOp("*", product, f)
                    zero = ast.Tuple((number(0), number(0)))
                    widths = ast.Tuple((zero, ast.Tuple((dimension(d.node.offset),
                                                         _rest(d.node)))))
                    placed = ast.Call("pad", (ast.Call("diag", (product,)), widths))
                    self._replace([d, *vectors], Term(placed, d.labels))
                    return True
            elif type(d.node) is Prim and d.node.fn == STRIDE and \
                    type(d.node.args[0]) is Delta and d.node.args[0].is_identity and \
                    len(d.labels) == 2 and d.labels[0] != d.labels[1] and \
                    all(l in self.out for l in d.labels):
                # v[j] * eye(n)[:, ::k][i, j] (a Hessian through x[::k]): v placed k apart on
                # a diagonal, `dilate(diag(v), k, n)`, not multiplied into the strided identity
                # (0 * inf was nan off the diagonal)
                (axis,), step = d.node.params
                strided, full = d.labels[axis], d.labels[1 - axis]
                vectors = [v for v in self.terms if v is not d and v.labels == (strided,)]
                if vectors:
                    product = vectors[0].expr
                    for v in vectors[1:]:
                        product = ast.BinOp("*", product, v.expr)
                    length = d.node.args[0].shape[0]
                    placed = ast.Call("dilate", (ast.Call("diag", (product,)), number(step),
                                                 dimension(length)),
                                      (("axis", number(1 - axis)),) if axis == 0 else ())
                    self._replace([d, *vectors], Term(placed, (full, strided) if axis == 1
                                                      else (strided, full)))
                    return True
            elif self._strided_rows_embed(d):
                return True
        return False

    def _strided_rows_embed(self, d: Term) -> bool:
        """v[k] * S[k,j], S every step-th row of a window (rows s, s + step, ... of the
        identity: lanes.py's picks `x[2t + 1]` of every step) with both k and j output labels
        (the Jacobian of a stack of step products): v placed step apart on a shifted diagonal,
        `pad(dilate(diag(v), step, m, axis=1), ((0, 0), (s, n - s - m)))`, as `pad(diag(v))`
        places it on a plain window. Multiplied into the selection matrix,
        `v[:, None] * eye(n)[1:8:2]`, 0 * inf was nan across the row of an infinite entry
        of v. A vector on j is read on S's columns (`x[1:8:2]`)."""
        node = d.node
        if not _strided_window(node) or len(d.labels) != 2 or d.labels[0] == d.labels[1] or \
                not all(l in self.out for l in d.labels):
            return False
        row, col = d.labels
        window, step = node.args[0], node.params[1]
        rows, cols = window.shape
        on_row = [v for v in self.terms if v is not d and v.labels == (row,)]
        on_col = [v for v in self.terms if v is not d and v.labels == (col,)]
        every = _slice(window.offset, window.offset + rows, cols)
        every = ast.Slice(every.lo, every.hi, number(step))
        factors = [v.expr for v in on_row] + [_index(v.expr, 1, 0, every) for v in on_col]
        vectors = on_row + on_col or self._scalars_on(d, node.shape[0])
        factors = factors or [v.expr for v in vectors]
        if not vectors:
            return False
        product = factors[0]
        for f in factors[1:]:
            product = ast.BinOp("*", product, f)
        spread = ast.Call("dilate", (ast.Call("diag", (product,)), number(step),
                                     dimension(rows)), (("axis", number(1)),))
        placed = _padded(spread, (row, col), {col: (dimension(window.offset), _rest(window))})
        self._replace([d, *vectors], Term(placed, d.labels))
        return True

    def _pair(self) -> bool:
        """Two terms sharing exactly one summed index: a matmul."""
        for i, a in enumerate(self.terms):
            for b in self.terms[i + 1:]:
                shared = set(a.labels) & set(b.labels)
                summed = [l for l in shared if not self._needed(l, skip=(a, b))]
                # Vectors, matrices and stacks of matrices (numpy's matmul broadcasts over the
                # stack axes in front; _matmul checks the layout).
                if len(summed) != 1:
                    continue
                product = _matmul(a, b, summed[0], self.out)
                if product is not None:
                    self._replace([a, b], product)
                    return True
        return False

    def _spread(self) -> bool:
        """Terms with no summed index in common: a broadcast product (outer for two vectors)."""
        for i, a in enumerate(self.terms):
            for b in self.terms[i + 1:]:
                shared = set(a.labels) & set(b.labels)
                if any(not self._needed(l, skip=(a, b)) for l in shared):
                    continue
                if shared:
                    continue  # shared free indices with neither a subset: leave to einsum
                order = [l for l in self.out if l in a.labels or l in b.labels]
                if order and order[0] in b.labels:
                    a, b = b, a  # keep the output's index order: outer(a, b), not outer(b, a).T
                labels = a.labels + b.labels
                if len(a.labels) == 1 and len(b.labels) == 1:
                    expr = ast.Call("outer", (a.expr, b.expr))
                else:
                    # Broadcast into the output's order (`t0[:, None, :, None] * t0.T[:, None, :]`),
                    # rather than concatenate the axes and permute the product after.
                    labels = tuple(order) + tuple(l for l in labels if l not in self.out)
                    expr = ast.BinOp("*", _align(a, labels), _align(b, labels))
                self._replace([a, b], Term(expr, labels))
                return True
        return False

    def _merged_pair(self) -> bool:
        """Two stacks sharing several summed indices, in one order, last in one and first in
        the other, each with at most one index besides: a matrix product over the merged
        indices, `reshape(A, (g * n,)) @ reshape(S, (g * n, m))` (numpy's tensordot, without
        its per-call cost; an LSTM's backward sum over its stacked gate weights). Only stacks
        the program builds: new C-ordered arrays, whose reshapes are views (a user's einsum
        of inputs, which may be strided, stays an einsum)."""
        stacks = [t for t in self.terms if _stacked(t)]
        for i, a in enumerate(stacks):
            for b in stacks[i + 1:]:
                for left, right in ((a, b), (b, a)):
                    shared = [l for l in left.labels if l in right.labels]
                    k = len(shared)
                    if k < 2 or any(self._needed(l, skip=(left, right)) for l in shared) or \
                            tuple(shared) != left.labels[len(left.labels) - k:] or \
                            tuple(shared) != right.labels[:k] or len(left.labels) > k + 1 or \
                            len(right.labels) > k + 1:
                        continue
                    merged = _product_of([self.dims[l] for l in shared])
                    rows, cols = left.labels[:-k], right.labels[k:]
                    lexpr = ast.Call("reshape", (left.expr, ast.Tuple(
                        tuple(dimension(self.dims[l]) for l in rows) + (merged,))))
                    rexpr = ast.Call("reshape", (right.expr, ast.Tuple(
                        (merged,) + tuple(dimension(self.dims[l]) for l in cols))))
                    self._replace([a, b], Term(ast.BinOp("@", lexpr, rexpr, matrix=True),
                                               rows + cols))
                    return True
        return False

    def _einsum_all(self):
        keep = [l for l in dict.fromkeys(l for t in self.terms for l in t.labels)
                if l in self.out]
        keep = [l for l in self.out if l in keep]
        letters = _letters(self.terms, keep)
        spec = ",".join("".join(letters[l] for l in t.labels) for t in self.terms)
        spec += "->" + "".join(letters[l] for l in keep)
        expr = ast.Call("einsum", (ast.String(spec), *[t.expr for t in self.terms]))
        # The code generator plans this contraction per shape signature from these shapes.
        expr.operand_shapes = [tuple(self.dims[l] for l in t.labels) for t in self.terms]
        self.terms = [Term(expr, keep)]

    def _replace(self, old, new: Term):
        first = min([self.terms.index(t) for t in old])
        rest = [t for t in self.terms if t not in old]  # a Term compares by identity
        rest.insert(min(first, len(rest)), new)
        self.terms = rest



def broadcast(expr: ast.Expr, axes, shape) -> ast.Expr:
    """`expr`, whose axes are `axes` of `shape` (in order), broadcast to the whole `shape`: the
    only place a broadcast is materialized, where a whole array is wanted (an output that is
    itself a broadcast, `x[:, None] * ones(n, m)`). The `ones` is marked, so that the code
    computes it as numpy's `broadcast_to` (a view, copied once if it is returned)."""
    axes, everything = tuple(axes), tuple(range(len(shape)))
    if axes == everything:
        return expr
    aligned = _align(Term(expr, axes), everything)
    ones = ast.Call("ones", tuple(dimension(d) for d in shape))
    if isinstance(aligned, ast.Number) and aligned.value in (0.0, 1.0):
        return ones if aligned.value else ast.Call("zeros", ones.args)
    if axes and all(shape[a].name is None and shape[a].offset == 1
                    for a in everything if a not in axes):
        # every axis added has size 1 (numpy's keepdims, `x[:, None]` alone): indexing with
        # None is the whole broadcast, `x[:, None]`, never `x[:, None] * ones(n, 1)` (leading
        # axes too, which `_align` leaves to broadcasting)
        items = [ast.Slice(None, None) if a in axes else ast.NoneLit() for a in everything]
        while isinstance(items[-1], ast.Slice):
            items.pop()
        return ast.Index(_permute(expr, axes, tuple(sorted(axes))), tuple(items))
    ones.broadcast = True
    if isinstance(aligned, ast.UnaryOp) and aligned.op == "-" and \
            isinstance(aligned.operand, ast.Number) and aligned.operand.value == 1.0:
        return ast.UnaryOp("-", ones)  # (`-ones(n)`, the gradient of -sum(x), not `-1 * ...`)
    return ast.BinOp("*", aligned, ones)


def _rest(window: Delta) -> ast.Expr:
    """The zeros after a window: `cols - offset - rows`, a dimension when it is one (`m - 1`,
    `3`), else written as the difference (`m - p` for x[:p] of x[m]: a Dim holds one name),
    which the code computes from the sizes at run time and `pad()` reads back."""
    rows, cols = window.shape
    try:
        return dimension(cols - rows - window.offset)
    except ValueError:
        pass
    try:
        end = rows + window.offset
    except ValueError:  # two names in the window's end (offset q, rows p): cols - q - p
        return ast.BinOp("-", ast.BinOp("-", dimension(cols), dimension(window.offset)),
                         dimension(rows))
    return ast.BinOp("-", dimension(cols), dimension(end))


def _stacked(t: Term) -> bool:
    """Whether `t` is a stack the program builds along its first axis: `stack(...)`, or the
    name of one."""
    if isinstance(t.expr, ast.Call):
        return t.expr.func == "stack" and not t.expr.kwargs
    return isinstance(t.expr, ast.Name) and type(t.node) is Add and all(
        type(c) is Contract and c.out and
        any(type(u) is Unit and lu == c.out[:1] for u, lu in c.operands)
        for _, c in t.node.terms)


def _product_of(dims) -> ast.Expr:
    """The product of sizes, its numbers folded first (`4 * h`)."""
    known = 1
    names = []
    for d in dims:
        if d.is_concrete:
            known *= d.offset
        else:
            names.append(dimension(d))
    expr = None if known == 1 and names else ast.Number(float(known))
    for name in names:
        expr = name if expr is None else ast.BinOp("*", expr, name)
    return expr


def _reciprocal(expr):
    """`d` when `expr` is `1 / d`, else None."""
    if isinstance(expr, ast.BinOp) and expr.op == "/" and isinstance(expr.left, ast.Number) \
            and expr.left.value == 1.0:
        return expr.right
    return None


_LETTERS = "ijklmnopqrstuvwxyzabcdefghIJKLMNOPQRSTUVWXYZABCDEFGH"


def _symbol(i: int) -> str:
    """The i-th einsum subscript: `i j k ...` first, then the rest of the 52 letters numpy
    takes, then opt_einsum's symbols (a tensor of any rank has subscripts)."""
    return _LETTERS[i] if i < len(_LETTERS) else get_symbol(i)


def _letters(terms, keep) -> dict:
    order = list(dict.fromkeys([*keep, *(l for t in terms for l in t.labels)]))
    return {l: _symbol(i) for i, l in enumerate(order)}


def permutation_of(expr: ast.Expr, rank: int) -> tuple[ast.Expr, tuple[int, ...]] | None:
    """(base, axes) where `expr`, of `rank` axes, is a permutation of `base` as _permute writes
    one (`.T` of a matrix, `.mT` of a stack, `transpose(base, axes)`): axis k of expr is axis
    axes[k] of base. Else None."""
    if isinstance(expr, ast.Attribute) and expr.attr == "T" and rank == 2:
        return expr.operand, (1, 0)
    if isinstance(expr, ast.Attribute) and expr.attr == "mT" and rank > 2:
        return expr.operand, (*range(rank - 2), rank - 1, rank - 2)
    if isinstance(expr, ast.Call) and expr.func == "transpose" and len(expr.args) == 2 and \
            isinstance(expr.args[1], ast.Tuple) and len(expr.args[1].items) == rank and \
            all(isinstance(a, ast.Number) for a in expr.args[1].items):
        return expr.args[0], tuple(int(a.value) for a in expr.args[1].items)
    return None


def permuted(expr: ast.Expr, axes: tuple[int, ...]) -> ast.Expr:
    """`expr` with axis k of the result its axis axes[k] (what permutation_of reads)."""
    return _permute(expr, tuple(range(len(axes))), tuple(axes))


def _permute(expr, labels, target) -> ast.Expr:
    labels, target = tuple(labels), tuple(target)
    if labels == target:
        return expr
    found = permutation_of(expr, len(labels)) if len(labels) > 2 else None
    if found is not None:  # a permutation of a permutation: one (or none) of the base
        base, axes = found
        inner = [None] * len(labels)
        for k, a in enumerate(axes):
            inner[a] = labels[k]
        return _permute(base, tuple(inner), target)
    if len(labels) == 2 and labels == target[::-1]:
        return transpose(expr)
    if len(labels) > 2 and labels[:-2] == target[:-2] and labels[-2:] == target[:-3:-1]:
        return swap_last(expr, len(labels))
    # numpy's transpose with its axes (axis k of the result is axis axes[k] of expr), as a
    # person writes a permutation: an einsum would be the same view, less readable
    axes = tuple(number(labels.index(l)) for l in target)
    return ast.Call("transpose", (expr, ast.Tuple(axes)))


def _align(term: Term, order) -> ast.Expr:
    """`term` permuted to `order`'s relative order, with None axes so that it broadcasts."""
    return align(term.expr, term.labels, order)


def align(expr: ast.Expr, labels: tuple, order) -> ast.Expr:
    """`expr`, whose axes are `labels`, permuted to `order`'s relative order, with None axes
    so that it broadcasts."""
    if not labels or labels == order:  # a scalar, or in place already: most operands
        return expr
    mine = [l for l in order if l in labels]
    expr = _permute(expr, labels, tuple(mine))
    if not mine:
        return expr
    first = list(order).index(mine[0])
    items = [ast.Slice(None, None) if l in labels else ast.NoneLit() for l in order[first:]]
    while items and isinstance(items[-1], ast.Slice):
        items.pop()
    return ast.Index(expr, tuple(items)) if items else expr


def _index(expr, rank, axis, item) -> ast.Expr:
    items = [ast.Slice(None, None)] * axis + [item]
    if isinstance(expr, ast.Index) and not any(
            isinstance(i, (ast.Slice, ast.NoneLit)) for i in (*expr.items, item)):
        # a pick of a pick is one index, `t[0, 3]` (`t[0][3]` indexes twice in Python): the
        # first's picks removed their axes, so the second's axes follow them
        return ast.Index(expr.operand, (*expr.items, *items))
    return ast.Index(expr, tuple(items))


def _bound(b: Dim, dim: Dim) -> ast.Expr:
    """An index or slice bound `b` on an axis of length `dim`. A bound short of the axis's end
    by k is written `-k`, as numpy counts from the end (`n - 1` -> `-1`); but `-0` is `0`, the
    *start*, so a bound at the end itself is written as the dimension (`x[n:]`, empty)."""
    if b.is_concrete:
        return number(b.offset)
    if b.name == dim.name and b.offset < dim.offset:
        return number(b.offset - dim.offset)
    return dimension(b)


def _position(k: Dim, dim: Dim) -> ast.Expr:
    return _bound(k, dim)


def _padded(expr: ast.Expr, labels: tuple, widths: dict) -> ast.Expr:
    """`expr` (axes `labels`) padded by `widths` (label -> (before, after)), if any."""
    widths = {l: w for l, w in widths.items()
              if not all(isinstance(e, ast.Number) and e.value == 0 for e in w)}
    if not widths:  # (a dilation that fills the whole axis needs no zeros around it)
        return expr
    zero = ast.Tuple((number(0), number(0)))
    inner = _pad_widths(expr, len(labels))
    if inner is not None and not any(
            inner[a] is not None and l in widths for a, l in enumerate(labels)):
        # a pad of a pad along other axes is one pad (`pad(diag(v), ((1, 0), (1, 0)))`)
        return ast.Call("pad", (expr.args[0], ast.Tuple(tuple(
            ast.Tuple(widths[l]) if l in widths else inner[a] or zero
            for a, l in enumerate(labels)))))
    return ast.Call("pad", (expr, ast.Tuple(tuple(
        ast.Tuple(widths[l]) if l in widths else zero for l in labels))))


def _pad_widths(expr: ast.Expr, rank: int) -> list | None:
    """For `pad(a, ((b0, a0), ...))` of `rank` axes, each axis's widths (None where 0);
    else None."""
    if not (isinstance(expr, ast.Call) and expr.func == "pad" and len(expr.args) == 2 and
            not expr.kwargs and isinstance(expr.args[1], ast.Tuple) and
            len(expr.args[1].items) == rank):
        return None
    found = []
    for w in expr.args[1].items:
        if not isinstance(w, ast.Tuple) or len(w.items) != 2:
            return None
        found.append(None if all(isinstance(e, ast.Number) and e.value == 0 for e in w.items)
                     else w)
    return found


def rows_placed(expr: ast.Expr, labels: tuple, label, positions: list[int], n: Dim,
                 dims) -> ast.Expr:
    """`expr` (axes `labels`) with its rows k on axis `label` placed at rows positions[k] of an
    n-axis, the rows at one position summed and zeros between: one concatenate of runs of
    rows (`t[1:3]`), sums and zeros, in the order of the positions. O(n) whatever the order."""
    axis = labels.index(label)
    rank = len(labels)
    at: dict[int, list[int]] = {}
    for k, p in enumerate(positions):
        at.setdefault(p, []).append(k)
    parts, done, row = [], 0, 0
    order = sorted(at)
    while row < len(order):
        p = order[row]
        if p > done:
            parts.append(_zeros_like_axis(labels, axis, number(p - done), dims))
        ks = at[p]
        end = row
        # a run: consecutive positions read from consecutive rows, one row each
        while len(ks) == 1 and end + 1 < len(order) and order[end + 1] == order[end] + 1 and \
                at[order[end + 1]] == [at[order[end]][0] + 1]:
            end += 1
        first = ks[0]
        if end > row:
            count = end - row + 1
            parts.append(_index(expr, rank, axis, ast.Slice(
                number(first) if first else None, number(first + count))))
        else:
            rows = [_index(expr, rank, axis, ast.Slice(number(k) if k else None, number(k + 1)))
                    for k in ks]
            total = rows[0]
            for r in rows[1:]:
                total = ast.BinOp("+", total, r)
            parts.append(total)
        done = order[end] + 1
        row = end + 1
    try:
        tail = dimension(n - done)
    except ValueError:
        tail = ast.BinOp("-", dimension(n), number(done))
    if not (isinstance(tail, ast.Number) and tail.value == 0):
        parts.append(_zeros_like_axis(labels, axis, tail, dims))
    if len(parts) == 1:
        return parts[0]
    return ast.Call("concatenate", tuple(parts), (("axis", number(axis)),) if axis else ())


def _zeros_like_axis(labels: tuple, axis: int, length: ast.Expr, dims) -> ast.Expr:
    return ast.Call("zeros", tuple(length if k == axis else dimension(dims[l])
                                   for k, l in enumerate(labels)))


def _selected(expr: ast.Expr, labels: tuple, pattern: ast.Expr, on: tuple) -> tuple:
    """`pattern * expr` (axes `on` and `labels`) where the pattern is nonzero, exact zeros
    elsewhere: `where(S != 0, S * r, 0)`, on the union of the axes. (expression, its axes)"""
    widened = tuple(labels) + tuple(l for l in on if l not in labels)
    if len(widened) > len(labels) and labels:  # (a number broadcasts as it is)
        expr = ast.Index(expr, (ast.Slice(None, None),) * len(labels) +
                         (ast.NoneLit(),) * (len(widened) - len(labels)))
    placed = align(pattern, on, widened)
    mask = ast.Call("not_equal", (placed, number(0)))
    return ast.Call("where", (mask, ast.BinOp("*", placed, expr), number(0))), widened


def _on_diagonal(expr: ast.Expr, labels: tuple, keep, new, n: Dim, out: tuple) -> tuple:
    """`expr` (axes `labels`, among them `keep`) with a new axis `new`, its entries on the
    diagonal of (keep, new) and exact zeros elsewhere: a select with the identity's mask,
    `where(eye(n) > 0, r[:, None], 0)`. The new axis goes before the first of `labels` that
    follows it in `out`, the result's order. (expression, its axes)"""
    if tuple(labels) == (keep,):  # a vector: its diagonal matrix
        return ast.Call("diag", (expr,)), (keep, new)
    value = expr
    for label in (keep, new) if keep not in labels else (new,):  # (a rest on neither: both)
        after = [k for k, l in enumerate(labels) if l in out and out.index(l) > out.index(label)]
        axis = after[0] if after else len(labels)
        labels = labels[:axis] + (label,) + labels[axis:]
        value = ast.Index(value, (ast.Slice(None, None),) * axis + (ast.NoneLit(),))
    pair = tuple(l for l in labels if l in (keep, new))  # (eye is symmetric: either order)
    mask = ast.Call("greater", (align(ast.Call("eye", (dimension(n),)), pair, labels),
                                number(0)))
    return ast.Call("where", (mask, value, number(0))), labels


def _lanes_placed(expr: ast.Expr, labels: tuple, label, lane, widths: list) -> tuple:
    """`expr` (axes `labels`, among them `lane`) with a new axis `label` on which row k of the
    lane axis has its one entry at widths[k][0] (zeros before and after): the stack over k of
    `pad(expr[k][None], ...)`. (expression, its axes)."""
    rank = len(labels)
    axis = labels.index(lane)
    rest = labels[:axis] + labels[axis + 1:]
    zero = ast.Tuple((number(0), number(0)))
    rows = []
    for k, (before, after) in enumerate(widths):
        row = ast.Index(_index(expr, rank, axis, number(k)), (ast.NoneLit(),))
        rows.append(ast.Call("pad", (row, ast.Tuple(
            (ast.Tuple((before, after)), *(zero for _ in rest))))))
    return ast.Call("stack", tuple(rows)), (lane, label) + rest


def _times_ones(expr: ast.Expr, rank: int) -> ast.Expr:
    """A number as an array of one entry, `ones(1) / x[0]` for `1 / x[0]`, `c * ones(1, 1)`."""
    if rank == 1 and isinstance(expr, ast.Index) and len(expr.items) == 1 and \
            isinstance(expr.items[0], ast.Number) and expr.items[0].value >= 0:
        k = int(expr.items[0].value)  # (a vector's entry k: the slice k:k + 1, `x[2:3]`)
        return ast.Index(expr.operand, (ast.Slice(number(k) if k else None, number(k + 1)),))
    ones = ast.Call("ones", (number(1),) * rank)
    if isinstance(expr, ast.Number) and expr.value == 1.0:
        return ones
    if isinstance(expr, ast.BinOp) and expr.op == "/" and isinstance(expr.left, ast.Number) \
            and expr.left.value == 1.0:
        return ast.BinOp("/", ones, expr.right)
    return ast.BinOp("*", expr, ones)


def _strided_factors_expanded(operands) -> list:
    """The operands, each step of a product of selections (`stride(delta[i,k] * delta[l+1,j],
    axis=3)`, the Hessian through `X[:, 1::2]`, whose identity and window are one IR node)
    written as its factors, the step on the one factor that carries the stepped axis: rows
    every k-th of a window or identity, `stride(delta(m, n, s), 0, k)`, which the steps below
    read, place (`_strided_rows_embed`, `_window_diagonal_of_all`) or index as they do a
    strided window of their own. Left a whole 0/1 array, its product with a rest infinite at
    one entry was 0 * inf = nan across the rows and columns of that entry."""
    result, found = [], False
    for child, labels in operands:
        factors = _strided_product_factors(child, labels)
        if factors is None:
            factors = _flipped_pair_factors(child, labels)
        found = found or factors is not None
        result += factors if factors is not None else [(child, labels)]
    return result if found else operands


def _flipped_pair_factors(child, labels) -> list | None:
    """A product of a window of the reversed identity, `flip(eye(n), 1)[p, s] *
    delta[q + o, s]` summed over s, and factors on its output labels alone (`w[q]`, the
    Hessian through `sum(log(x[:0:-1]) * w)`): the pair as one operand, which `_unflipped`
    reads as a window reversed, and the factors each as an operand of its own (else
    `(w[:, None] * eye(n)[:-1])[:, ::-1]` was multiplied by the pole: nan beside it)."""
    if type(child) is not Contract or len(child.dims) != len(child.out) + 1 or \
            len(child.operands) < 3:
        return None
    s = len(child.out)
    pair = [(n, ls) for n, ls in child.operands if s in ls]
    rest = [(n, ls) for n, ls in child.operands if s not in ls]
    if len(pair) != 2 or not any(type(n) is Prim and n.fn == FLIP for n, _ in pair) or \
            not any(type(n) is Delta for n, _ in pair):
        return None
    out = tuple(l for _, ls in pair for l in ls if l != s)
    if len(out) != 2 or out[0] == out[1]:
        return None
    joined = Contract(out, pair)
    if _flipped_window_product(joined, (0, 1)) is None:
        return None
    return [(joined, tuple(labels[l] for l in out))] + \
        [(n, tuple(labels[l] for l in ls)) for n, ls in rest]


def _strided_product_factors(child, labels) -> list | None:
    """`_strided_factors_expanded` of one operand: its factors with their labels, or None."""
    if type(child) is not Prim or child.fn != STRIDE:
        return None
    inner = child.args[0]
    if type(inner) is not Contract or len(inner.dims) != len(inner.out) or \
            any(type(f) is not Delta or len(set(fl)) != 2 for f, fl in inner.operands):
        return None
    (axis,), step = child.params
    carriers = [(f, fl) for f, fl in inner.operands if axis in fl]
    if len(carriers) != 1:
        return None
    (factor, fl), = carriers
    if fl[0] != axis:
        if not factor.is_identity:  # (a window's columns stepped: not every k-th row)
            return None
        fl = fl[::-1]  # (the identity is symmetric)
    factors = []
    for f, flabels in inner.operands:
        if f is factor:
            f, flabels = stride(f, 0, step), fl
        factors.append((f, tuple(labels[l] for l in flabels)))
    return factors


def _identity_narrowed(t: Term, label, picked: Node) -> Node | None:
    """The node of term `t` once its axis `label` is narrowed to the rows a pick or window
    `picked` keeps (`_scatter_one`): an identity on (label, j) is the window of those
    rows, `eye(n)[1:]` a Delta(n - 1, n, 1) on (label, j) (with the labels put rows first),
    which is placed as a window is (`pad(diag(v), ...)`, `_diag_embed`), not multiplied as
    a dense 0/1 matrix, whose zeros times an infinite entry of the rest were nan (the
    gradient of `sum(log(diag(X)[1:]))`). None for any other term (it is an array now)."""
    node = t.node
    if type(node) is not Delta or not node.is_identity or len(t.labels) != 2 or \
            t.labels[0] == t.labels[1]:
        return None
    n = node.shape[0]
    if isinstance(picked, Unit):
        rows, offset = ONE, picked.position
    elif isinstance(picked, Delta):
        rows, offset = picked.shape[0], picked.offset
    else:
        return None
    if not (offset.is_concrete or offset.name == n.name):
        return None
    other = t.labels[1] if t.labels[0] == label else t.labels[0]
    try:
        window = Delta(rows, n, offset)
    except (ValueError, TypeError):
        return None
    t.labels = (label, other)
    t.expr = selection(window)
    return window


def _flipped_rows(t: Term) -> bool:
    """Whether term `t` is a window, an identity or every k-th row of a window, its rows
    reversed (`flip(W, 0)`), on two labels."""
    return _unflipped_node(t) is not None and t.labels[0] != t.labels[1]


def _unflipped_node(t: Term) -> tuple | None:
    """For a selection reversed along one of its labels, (that label, the selection in
    order, its labels): `flip(W, 0)` of a window or every k-th row of one, on its row label;
    `flip(eye(n), 1)` (the Hessian through `x[::-1]`), which is `flip(eye(n), 0)`; every k-th
    column or row of that, `stride(flip(eye(n)), 1, k)` (through `x[::-2]`), which is
    `stride(eye(n), 1, k)` reversed along its other label; a window of the reversed identity,
    `flip(eye(n), 1)[p, s] * delta[q + o, s]` (through `x[:0:-1]`), which is the window
    `delta[q' + n - o - r, p]` of its r rows reversed along q. Else None."""
    node = t.node
    if len(t.labels) != 2:
        return None
    if type(node) is Contract:
        return _flipped_window_product(node, t.labels)
    if type(node) is not Prim:
        return None
    if node.fn == STRIDE and len(node.params[0]) == 1:
        (axis,), step = node.params
        inner = node.args[0]
        if type(inner) is Prim and inner.fn == FLIP and type(inner.args[0]) is Delta and \
                inner.args[0].is_identity:
            return t.labels[1 - axis], stride(inner.args[0], axis, step), t.labels
        return None
    if node.fn != FLIP:
        return None
    inner = node.args[0]
    if node.params[0] == (0,) and (type(inner) is Delta or _strided_window(inner)) or \
            type(inner) is Delta and inner.is_identity:
        return t.labels[0], inner, t.labels
    return None


def _flipped_window_product(node: Contract, labels: tuple) -> tuple | None:
    """`_unflipped_node` of `flip(eye(n), a)[p, s] * delta[q + o, s]` summed over s."""
    if node.out != (0, 1) or len(node.operands) != 2 or len(node.dims) != 3:
        return None
    flipped = [(f, ls) for f, ls in node.operands if type(f) is Prim and f.fn == FLIP and
               type(f.args[0]) is Delta and f.args[0].is_identity]
    windows = [(d, ls) for d, ls in node.operands if type(d) is Delta]
    if len(flipped) != 1 or len(windows) != 1:
        return None
    (f, fl), (d, dl) = flipped[0], windows[0]
    if 2 not in fl or dl[1] != 2 or dl[0] == 2 or fl.count(2) != 1:
        return None
    p, q = [l for l in fl if l != 2][0], dl[0]
    rows, n = d.shape
    try:
        window = Delta(rows, n, n - d.offset - rows)
    except (ValueError, TypeError):
        return None
    return labels[q], window, (labels[q], labels[p])


def _window_at_the_other_end(node: Delta) -> Delta | None:
    """For a window of r rows at offset o of an n-axis, the window of r rows at offset
    n - r - o (its rows reversed are it reversed along its columns); None where that
    offset is no dimension."""
    rows, cols = node.shape
    try:
        return Delta(rows, cols, cols - rows - node.offset)
    except (ValueError, TypeError):
        return None


def _other(labels: tuple, label):
    """The label of a pair that is not `label`."""
    return labels[1] if labels[0] == label else labels[0]


def _reversed(expr: ast.Expr, rank: int, axis: int) -> ast.Expr:
    """`expr` reversed along `axis` (`t[::-1]`, `t[:, ::-1]`); a reversal undone where `expr`
    is one there (`t[::-1]` reversed is `t`)."""
    flip = ast.Slice(None, None, number(-1))
    if isinstance(expr, ast.Index) and len(expr.items) == axis + 1 and all(
            isinstance(i, ast.Slice) and i.lo is None and i.hi is None and i.step is None
            for i in expr.items[:axis]):
        last = expr.items[axis]
        if isinstance(last, ast.Slice) and last.lo is None and last.hi is None and \
                _minus_one(last.step):
            return expr.operand if axis == 0 else ast.Index(expr.operand, expr.items[:axis])
    return _index(expr, rank, axis, flip)


def _minus_one(step) -> bool:
    return isinstance(step, ast.UnaryOp) and step.op == "-" and \
        isinstance(step.operand, ast.Number) and step.operand.value == 1 or \
        isinstance(step, ast.Number) and step.value == -1


def row_window(start: int, step: int, count: int, n: Dim) -> Node:
    """Rows start, start + step, ... (`count` of them) of an axis of length n, as the matrix
    that selects them: a window (a delta) for step 1, every step-th row of one else (which
    `_select` reads as the slice `x[start:stop:step]` of its partner)."""
    window = Delta(step * (count - 1) + 1, n, start)
    return window if step == 1 else stride(window, 0, step)


def _strided_window(node) -> bool:
    """Whether `node` is every k-th row of a window, `stride(delta(m, n, s), 0, k)`: rows s,
    s + k, ... of the identity, which index a partner as `x[s:s + m:k]`."""
    return type(node) is Prim and node.fn == STRIDE and node.params[0] == (0,) and \
        type(node.args[0]) is Delta


def _distinct_unit_rows(node) -> bool:
    """A stack of unit vectors at concrete places, no two the same."""
    found = _scaled_unit_rows(node)
    if found is None or found[0] != 1.0:
        return False
    places = [k for k, _ in found[1]]
    return all(k.is_concrete for k in places) and len({k.offset for k in places}) == len(places)


def _unit_rows(node) -> list[tuple[Dim, Dim]] | None:
    """For a stack of unit vectors (`stack(eye(n)[p0], eye(n)[p1], ...)`, lanes.py's
    selection of rows p0, p1, ... one per lane), (position, n) of each row in order; else
    None."""
    found = _scaled_unit_rows(node)
    return found[1] if found is not None and found[0] == 1.0 else None


def _scaled_unit_rows(node) -> tuple[float, list[tuple[Dim, Dim]]] | None:
    """`_unit_rows` of a stack of unit vectors times one number c (`0.5 * ...`, the
    derivative of sqrt of picks): (c, its rows), else None."""
    if type(node) is Contract:
        # (rows out of step order, a product of selections; or a window of a stack's rows)
        return _composed_unit_rows(node) or _window_of_unit_rows(node)
    if type(node) is not Add or node.rank != 2:
        return None
    rows = {}
    scale = node.terms[0][0]
    for coef, term in node.terms:
        if coef != scale or type(term) is not Contract or term.out != (0, 1) or \
                len(term.operands) != 2:
            return None
        (lane, la), (unit, lu) = sorted(term.operands, key=lambda op: op[1])
        # (lanes reading one row share it: `(e_2 + e_0)[i] * e_(n-1)[j]` of x[-1] read twice)
        lanes = [lane] if type(lane) is Unit else [u for c, u in lane.terms if c == 1.0] \
            if type(lane) is Add and all(c == 1.0 for c, _ in lane.terms) else []
        if not lanes or type(unit) is not Unit or la != (0,) or lu != (1,) or \
                any(type(u) is not Unit or not u.position.is_concrete or
                    u.position.offset in rows for u in lanes):
            return None
        for u in lanes:
            rows[u.position.offset] = (unit.position, unit.shape[0])
    lanes = node.shape[0]
    if not lanes.is_concrete or sorted(rows) != list(range(lanes.offset)) or \
            not math.isfinite(scale):
        return None
    return scale, [rows[k] for k in range(lanes.offset)]


def _composed_unit_rows(node: Contract) -> tuple[float, list[tuple[Dim, Dim]]] | None:
    """`_scaled_unit_rows` of a product of two selections sharing one summed axis l,
    R[r, l] * S[l, c] -> [r, c], where S is a stack of unit vectors and R sends each row r to
    one row l of S: a window (rows s.. of S), S's lanes in another order (a stack of unit
    vectors on [r, l], or on [l, r] if every r is one lane's), or such a product itself. That
    is a stack of S's rows: lanes.py's rows out of step order, or a formula's
    `(stack(eye(3)[0], ...).T @ stack(eye(n)[4], ...)).T @ v` compiled back. Read as one,
    it is placed by index (`_unit_rows_on_output`), not multiplied as 0/1 matrices, where
    0 * inf = nan spread an infinite entry of v over every entry. Else None."""
    if node.rank != 2 or len(node.operands) != 2 or len(set(node.out)) != 2:
        return None
    r, c = node.out
    for (first, fl), (second, sl) in (node.operands, node.operands[::-1]):
        if len(fl) != 2 or len(sl) != 2 or r not in fl or c not in sl:
            continue
        (l,) = [x for x in fl if x != r] or [None]
        if l is None or l in node.out or sl != (l, c):
            continue
        found = _scaled_unit_rows(second)
        if found is None:
            continue
        scale, rows = found
        read = _lanes_read(first, fl == (r, l), Dim.of(len(rows)))
        if read is None or node.shape[0] != Dim.of(len(read[1])):
            continue
        return scale * read[0], [rows[k] for k in read[1]]
    return None


def _lanes_read(selection: Node, rows_first: bool, lanes: Dim) -> tuple | None:
    """For a selection of `lanes` lanes (a window or a stack of unit vectors) on [r, l] if
    `rows_first` (else on [l, r]): (its number, the lane l each row r reads, in r's order);
    None where some row reads none or several."""
    if type(selection) is Delta:
        count, offset = selection.shape[0], selection.offset
        if not (rows_first or selection.is_identity) or selection.shape[1] != lanes or \
                not (count.is_concrete and offset.is_concrete):
            return None
        return 1.0, list(range(offset.offset, offset.offset + count.offset))
    found = _scaled_unit_rows(selection)
    if found is None or not all(k.is_concrete and d == lanes for k, d in found[1]):
        return None
    scale, places = found[0], [k.offset for k, _ in found[1]]
    if rows_first:
        return scale, places
    # the transpose: row r is the lane whose place is r, each r once
    if sorted(places) != list(range(len(places))):
        return None
    lane_of = {p: k for k, p in enumerate(places)}
    return scale, [lane_of[p] for p in range(len(places))]


def _evenly_spaced(positions: list[int], n: Dim) -> tuple | None:
    """The widths `_scatter` pads by (and the step and span it dilates by, for a step over
    1) that place rows k at positions p + step * k of an n-axis, where the positions are so
    spaced (rows picked at every other place of a window, `e_2, e_4, e_6`): a pad and a
    dilation, where `rows_placed` concatenated a part per row and the zeros between them
    (the formula growing with the rows). Else None."""
    if len(positions) < 2:
        return None
    start, step = positions[0], positions[1] - positions[0]
    if step < 1 or positions != list(range(start, start + step * len(positions), step)):
        return None
    span = step * (len(positions) - 1) + 1
    try:
        after = dimension(n - (start + span))
    except ValueError:
        return None
    widths = (number(start), after)
    return widths if step == 1 else widths + (number(step), number(span))


def _window_of_unit_rows(node: Contract) -> tuple[float, list[tuple[Dim, Dim]]] | None:
    """`_scaled_unit_rows` of rows of a stack of unit vectors, `W[r, c] * S[c, i]` with W a
    window or every k-th row of one (lanes.py reading a run of the rows another batch stacked):
    the stack of the rows it selects, placed or read as such (by slicing, `rows_placed`),
    where the window was placed as a matrix of its own (`eye(T + 1)[2:]`, rebuilt for every
    part of the placement: O(T^3)) and multiplied with its partner. Else None."""
    if node.rank != 2 or len(node.operands) != 2 or len(set(node.out)) != 2:
        return None
    (w, lw), (s, ls) = node.operands
    if len(lw) != 2 or len(ls) != 2 or lw[0] != node.out[0] or ls[1] != node.out[1] or \
            lw[1] != ls[0] or lw[1] in node.out:
        return None
    found = _scaled_unit_rows(s) if type(s) is Add else None
    if found is None:
        return None
    scale, rows = found
    if type(w) is Delta and not w.is_identity and w.offset.is_concrete and \
            w.shape[0].is_concrete:
        start, step, count = w.offset.offset, 1, w.shape[0].offset
    elif _strided_window(w) and w.args[0].offset.is_concrete and w.shape[0].is_concrete:
        start, step, count = w.args[0].offset.offset, w.params[1], w.shape[0].offset
    else:
        return None
    picked = rows[start:start + step * (count - 1) + 1:step]
    return (scale, picked) if len(picked) == count else None


def _sliced(terms: list, window: Delta, label, new) -> None:
    """Each of `terms` sliced to `window`'s rows on `label`, which becomes `new` (in place)."""
    rows, cols = window.shape
    item = _slice(window.offset, window.offset + rows, cols)
    for p in terms:
        axis = p.labels.index(label)
        p.expr = _index(p.expr, len(p.labels), axis, item)
        p.labels = p.labels[:axis] + (new,) + p.labels[axis + 1:]
        p.node = None


def _slice(lo: Dim, hi: Dim, dim: Dim) -> ast.Slice:
    return ast.Slice(None if lo == Dim(None, 0) else _bound(lo, dim),
                     None if hi == dim else _bound(hi, dim))


def _matmul(a: Term, b: Term, k, out) -> Term | None:
    """A matrix product contracting index k, matrix first, with the fewest transposes. Stacks
    of matrices multiply as numpy's matmul does: over a stack axis of one operand, or over the
    stack axes both carry in front (`A @ B.mT`, each of A and B [b, n, n])."""
    candidates = []
    for left, right in ((a, b), (b, a)):
        lf = _as_left(left, k)
        rt = _as_right(right, k)
        if lf is None or rt is None:
            continue
        (lexpr, llead, lrow, lt), (rexpr, rlead, rcol, rt_) = lf, rt
        if llead and rlead and llead != rlead:
            continue
        lead = llead or rlead
        labels = lead + lrow + rcol
        if len(set(labels)) != len(labels) or \
                set(left.labels) & set(right.labels) != {k, *(llead if rlead else ())}:
            continue
        # As a person writes it: the matrix first (`X.T @ v` rather than `v @ X`), then the
        # fewest transposes (one of the result counted too: `t5.T @ X`, not `(X.T @ t5).T`),
        # then the result already in the output's order.
        vector_first = len(left.labels) == 1 and len(right.labels) == 2
        wanted = tuple(l for l in out if l in labels)
        turned = labels != wanted
        # Transposing a name (`X.T`) reads better than transposing a compound expression.
        compound = turned + sum(1 for t, e in ((lt, left.expr), (rt_, right.expr))
                                if t and not isinstance(e, ast.Name))
        cost = (vector_first, lt + rt_ + turned, compound, turned)
        # (no stack axes: a product of arrays of one or two axes, numpy's dot)
        candidates.append((cost, Term(ast.BinOp("@", lexpr, rexpr, matrix=not lead), labels)))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]


def _as_left(t: Term, k):
    """(expr, stack labels, row label, transposes) for `t` on the left of @, contracting k:
    a vector, a matrix or a stack of matrices (the stack axes in front)."""
    if t.labels == (k,):
        return t.expr, (), (), 0
    if len(t.labels) < 2 or k not in t.labels[-2:]:
        return None
    lead = t.labels[:-2]
    if t.labels[-1] == k:
        return t.expr, lead, t.labels[-2:-1], 0
    return swap_last(t.expr, len(t.labels)), lead, t.labels[-1:], 1


def _as_right(t: Term, k):
    if t.labels == (k,):
        return t.expr, (), (), 0
    if len(t.labels) < 2 or k not in t.labels[-2:]:
        return None
    lead = t.labels[:-2]
    if t.labels[-2] == k:
        return t.expr, lead, t.labels[-1:], 0
    return swap_last(t.expr, len(t.labels)), lead, t.labels[-2:-1], 1


def selection(node: Delta | Unit) -> ast.Expr:
    """A window, identity or unit vector as a person writes it: `eye(n)[1:5]`, `eye(n)`,
    `eye(n)[k]` (the generated code builds each in O(n))."""
    if isinstance(node, Unit):
        return ast.Index(ast.Call("eye", (dimension(node.shape[0]),)),
                         (_position(node.position, node.shape[0]),))
    rows, cols = node.shape
    if node.is_identity:
        return ast.Call("eye", (dimension(rows),))
    return ast.Index(ast.Call("eye", (dimension(cols),)),
                     (_slice(node.offset, node.offset + rows, cols),))


def _structured(node) -> bool:
    """A selection node (a unit vector, a window, every k-th row, or a stack of unit
    vectors): indexed by its partner, never indexed itself."""
    return isinstance(node, (Unit, Delta)) or _strided_window(node) or \
        _scaled_unit_rows(node) is not None
