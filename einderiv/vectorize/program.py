"""Stage 5: IR -> a vectorized program: temporaries and outputs as array expressions.

The program is written in einderiv's own surface syntax tree, so the `formula` printer is the
parser's inverse (a formula parses back and evaluates to the same values) and the Python and
LaTeX printers walk the same tree.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..ir.dims import Dim
from ..ir.names import input_names, output_labels
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Size, Unit, Var, topological
from ..lower.convolution import is_convolution, surface as convolution_surface
from ..lower.linear import is_linear, surface as linear_surface
from ..parse import ast
from ..rulebook import RuleBook, default_rulebook
from .contraction import (ContractionTranslator, align, broadcast, dimension, number,
                          permutation_of, permuted, row_window, rows_placed, scaled, selection,
                          transpose)
from .fuse import fuse_products
from .projections import fuse_projections
from .siblings import batch_siblings
from .subproducts import share_subproducts
from .lanes import batch_lanes
from .placement import prescaled
from .gc_pause import paused_gc
from .share import MAX_PRINT_HEIGHT, finish
from .tidy import mean_of, tidy_part

INFIX = {"div": "/", "pow": "**"}
# An expression nesting deeper than this many IR levels is cut into temporaries, so formulas
# stay readable, parse back under the parser's nesting limit, and are printed without recursion
# trouble however deep an unrolled network is.
MAX_INLINE_HEIGHT = 8
# Nodes that are written where they are used, never as temporaries of their own.
_LEAF_NODES = frozenset({Var, Const, Size, Delta, Unit})


@dataclass
class VectorProgram:
    temporaries: list[tuple[str, ast.Expr]]
    # (label, expression) per output, in the order given; a label that names something else to
    # the user (`dx` bound to tanh(x * y)) is printed renamed (`dx_1`).
    outputs: list[tuple[str, ast.Expr]]
    variables: dict[str, Var]
    declarations: dict[str, tuple]  # every input variable -> its shape (Dims)


def vectorize(roots: dict[str, Node], names: dict[Node, str] | None = None,
              rules: RuleBook | None = None, declared: dict | None = None) -> VectorProgram:
    """Translate `roots` (output name -> IR) into array expressions with shared temporaries."""
    with paused_gc():
        return _vectorize(roots, names, rules, declared)


def _vectorize(roots, names, rules, declared) -> VectorProgram:
    rules = rules or default_rulebook()
    names = dict(names or {})
    # One topological order serves every pass until batching changes the graph, if it does.
    order = topological(*roots.values())
    # The user's names keep their meaning: an output label or a bound name that would rebind
    # one gives way (`dx` when the user bound `dx = tanh(x * y)`), and no temporary takes one.
    inputs = input_names(roots.values(), declared, order)
    labelled = output_labels(roots, names, inputs)  # the same nodes, in the same order
    shared = share_subproducts(labelled, order)
    if shared is not labelled:
        order = topological(*shared.values())
    roots = batch_lanes(shared, order)
    if roots is not shared:
        order = topological(*roots.values())
    joined: list[Node] = []
    fused = fuse_products(roots, order, joined)
    if fused is not roots:
        roots, order = fused, topological(*fused.values())
        # Each step's joined input terms (`stack(r_f, r_i, ...)` of an LSTM's gates), made by
        # fusing, are one stack of all steps' (`t13[t]` of a [T, 4, H] array, as hand-written
        # code adds `xz[t]`): a stack per step was one numpy call and four picks.
        again = batch_lanes(roots, order, only={id(n) for n in joined}) if joined else roots
        if again is not roots:
            roots, order = again, topological(*again.values())
    # Products of one operand by several weights (each gate's input projection, batched
    # across steps) as one product of the weights stacked, each a part of it.
    roots, order = fuse_projections(roots, order)
    joined = batch_siblings(roots, order)
    if joined is not roots:
        roots, order = joined, topological(*joined.values())
    # Keyed by id: a node's own hash is a Python method, and these are read once per node.
    bound = {id(n): name for n, name in names.items()}
    # A plain dict (read with .get): a Counter's missing key is a Python-level call.
    uses = dict(Counter([id(c) for n in order for c in n.children()]))
    for n in roots.values():  # an output used elsewhere is computed once
        uses[id(n)] = uses.get(id(n), 0) + 1
    root_ids = {id(n) for n in roots.values()}
    root_name = {}
    for name, node in roots.items():
        root_name.setdefault(id(node), name)
    variables = {n.name: n for n in order if type(n) is Var}
    taken = inputs | set(variables) | set(roots) | set(names.values())
    reserved = set(taken)  # the user's names: every other name is a temporary of ours
    counter = 0
    temp_name: dict[int, str] = {}
    bound_names: set[str] = set()
    # How deeply each node nests inline, up to its named children (a temporary's is 0).
    height: dict[int, int] = {}
    for n in order:
        key = id(n)
        inline = [height[id(c)] for c in n.children()]
        h = height[key] = 1 + max(inline) if inline else 1
        if type(n) in _LEAF_NODES:
            continue
        if h < MAX_INLINE_HEIGHT and not _worth_a_name(n, uses, bound):
            continue
        if key in root_ids and uses.get(key, 0) <= 1 and key not in bound:
            continue  # an output is a statement of its own already
        height[key] = 0
        name = root_name.get(key) or bound.get(key)
        # Every name is bound once (`a = a * a` rebinding a user's name gets a fresh one), so a
        # name means one value everywhere in the program.
        if name is None or name in inputs or name in bound_names:
            while f"t{counter}" in taken:
                counter += 1
            name = f"t{counter}"
            taken.add(name)
        bound_names.add(name)
        temp_name[key] = name
    scale = prescaled(order, temp_name, root_ids | set(bound))
    position = {id(n): k for k, n in enumerate(order)}
    translator = _Translator(temp_name, rules, scale, _stacked_factors(order, position),
                             position)
    # Outputs and the user's names keep their whole shape (only our temporaries are narrowed).
    temporaries = [(temp_name[id(n)], translator.define_temporary(n, id(n) in root_ids
                                                                  or id(n) in bound))
                   for n in order if id(n) in temp_name]
    outputs = [(name, translator.expr(node)) for name, node in roots.items()]
    # Shared, cut, tidied and numbered in one walk. Tidied after sharing: a repeated part is a
    # name by then, which tidying leaves whole (`-t1` where `t1 = y * t0` is shared, not
    # `-y * t0`).
    temporaries, outputs = finish(temporaries, outputs, reserved, limit=MAX_PRINT_HEIGHT,
                                  rewrite=tidy_part)
    return VectorProgram(temporaries, outputs, variables, dict(declared or {}))


def _worth_a_name(node: Node, uses: dict, bound: dict) -> bool:
    if id(node) in bound:
        return True
    if uses.get(id(node), 0) < 2:
        return False
    # A transpose or a broadcast costs nothing to repeat (its operand gets a name of its own
    # where that is worth one): its uses broadcast the operand themselves.
    if isinstance(node, Contract) and len(node.operands) == 1 and \
            set(node.operands[0][1]) <= set(node.out):
        return False
    return True


def _one_permutation(args: list, rank: int):
    """(bases, axes) when every argument of an elementwise function is a number or the same
    permutation (`axes`, see permutation_of) of a base of all `rank` axes, at least one of them
    a permutation; else None."""
    bases, perm = [], None
    for e in args:
        if isinstance(e, ast.Number) or isinstance(e, ast.UnaryOp) and \
                isinstance(e.operand, ast.Number):
            bases.append(e)
            continue
        found = permutation_of(e, rank) if rank > 1 else None
        if found is None or perm not in (None, found[1]):
            return None
        bases.append(found[0])
        perm = found[1]
    return None if perm is None else (bases, perm)


class _Translator:
    def __init__(self, temp_name: dict[int, str], rules: RuleBook, scale=None, stacked=None,
                 position=None):
        self.temp_name = temp_name
        self.position = position or {}  # id of a node -> its place in the topological order
        # the factors that sums of outer products stack (`_stacked_factors`), by their ids
        self.stacked = stacked or {}
        self.rules = rules
        self.scale = scale or {}  # temporary -> the constant it is computed with (placement)
        self.narrowed: dict[int, tuple] = {}  # temporary -> the axes it is written with
        # id of a node written inline -> its (expression, axes): one written the same way
        # wherever it is used (the broadcast `1` in each of 20,000 terms) is translated once,
        # and its syntax tree shared by those uses (no pass changes a tree in place).
        self.inline: dict[int, tuple] = {}
        self.alive: list[Node] = []  # keeps the ids in `inline` unique (some nodes are built
        # here, `_outer_pair`'s factors, and would die, their ids taken by the next ones)

    def expr(self, node: Node) -> ast.Expr:
        """The expression for `node` where it is used: a temporary's name if it has one."""
        return broadcast(*self.narrow(node), node.shape)

    def narrow(self, node: Node) -> tuple[ast.Expr, tuple]:
        """(expression, axes): `node` written with only the axes it does not merely broadcast,
        aligned among themselves; where it is used, numpy's broadcasting does the rest."""
        key = id(node)
        name = self.temp_name.get(key)
        if name is not None:
            return ast.Name(name), self.narrowed.get(key, tuple(range(len(node.shape))))
        found = self.inline.get(key)
        if found is None:
            found = self.inline[key] = self._narrow_definition(node)
            self.alive.append(node)
        return found

    def _narrow_definition(self, node: Node) -> tuple[ast.Expr, tuple]:
        kind = type(node)
        if kind is Contract or kind is Map and node.fn == "div":
            mean = mean_of(node, self.temp_name)
            if mean is not None:  # the user's mean, not the sum and division it expands to
                return self._reduction("mean", *mean), tuple(range(node.rank))
        if kind is Contract:
            node = self._transposed_product(node)
            return ContractionTranslator(node, self.expr, self.narrow,
                                         self.scale).narrow_result()
        if kind is Add:
            return self._sum(node)
        if kind is Map and node.fn not in INFIX:
            return self._map(node, ast.Call, node.fn)
        if kind is Map and len(node.args) == 2:
            return self._map(node, ast.BinOp, INFIX[node.fn])
        return self.define(node), tuple(range(node.rank))

    def _transposed_product(self, node: Contract) -> Contract:
        """A transpose (an axis permutation) of a product that has no name of its own is that
        product in the permuted order: `A.T @ X`, not `(X.T @ A).T`."""
        if len(node.operands) != 1:
            return node
        (child, labels), = node.operands
        if not isinstance(child, Contract) or id(child) in self.temp_name or \
                id(child) in self.scale or sorted(labels) != sorted(node.out):
            return node
        from ..ir import build
        out = tuple(child.out[labels.index(l)] for l in node.out)
        return build.contract(out, child.operands, {l: child.dims[l] for l in child.out})

    def define_temporary(self, node: Node, whole: bool = False) -> ast.Expr:
        """A temporary's definition: without its broadcast axes, unless that leaves a bare
        name (its uses broadcast it) or it is to be `whole` (an output, a user's name)."""
        expr, axes = self._narrow_definition(node)
        if id(node) in self.scale:
            expr = scaled(self.scale[id(node)], expr)
        if whole or len(axes) == node.rank or isinstance(expr, (ast.Name, ast.Number)):
            return broadcast(expr, axes, node.shape)
        self.narrowed[id(node)] = axes
        return expr

    def _map(self, node: Map, make, fn) -> tuple[ast.Expr, tuple]:
        """An elementwise function broadcasts its arguments: each is written narrow."""
        args = [self.narrow(a) for a in node.args]
        axes = tuple(sorted({a for _, present in args for a in present}))
        aligned = [align(e, present, axes) for e, present in args]
        through = _one_permutation(aligned, len(axes))
        if through is not None:
            # f(X.T) is f(X).T: written so, a use that transposes it back reads f(X) itself
            # (the gradient of sum(sin(X.T)) is cos(X), not cos(X.T).T)
            bases, perm = through
            return permuted(make(fn, *bases) if make is ast.BinOp else make(fn, tuple(bases)),
                            perm), axes
        return (make(fn, *aligned) if make is ast.BinOp else make(fn, tuple(aligned))), axes

    def define(self, node: Node) -> ast.Expr:
        if isinstance(node, Var):
            return ast.Name(node.name)
        if isinstance(node, Const):
            return number(node.value)
        if isinstance(node, Size):
            return ast.Call("size", (dimension(node.dim),))
        if isinstance(node, (Delta, Unit)):
            return selection(node)
        if isinstance(node, Prim):
            return self._primitive(node)
        if isinstance(node, (Map, Add, Contract)):
            return broadcast(*self._narrow_definition(node), node.shape)
        raise TypeError(f"cannot vectorize {type(node).__name__}")

    def _reduction(self, fn: str, x: Node, axes: tuple) -> ast.Expr:
        """`fn(x, axis=axes)`, without the axis where it is every axis (the default)."""
        args = (self.expr(x),)
        if len(axes) == x.rank:
            return ast.Call(fn, args)
        axis = number(axes[0]) if len(axes) == 1 else ast.Tuple(tuple(number(a) for a in axes))
        return ast.Call(fn, args, (("axis", axis),))

    def _primitive(self, node: Prim) -> ast.Expr:
        if is_linear(node):  # cumsum, x[::-1], reshape...: lower/linear.py writes them
            return linear_surface(node, self.expr(node.args[0]))
        if is_convolution(node):  # correlate, conv2d...: lower/convolution.py writes them
            return convolution_surface(node, tuple(self.expr(a) for a in node.args))
        arg = node.args[0]
        call = ast.Call(node.fn, tuple(self.expr(a) for a in node.args))
        f = self.rules.get(node.fn)
        if f is not None and f.shape == "weighted" and len(node.args) == 2:
            # x and the weights broadcast against each other (scipy's b=): written narrow,
            # `pi` rather than `pi * ones(n, k)`, one of them with every axis (the axes the
            # kernel reduces count in the broadcast shape, which is then the node's)
            full = tuple(range(node.args[0].rank))
            (x, xs), (w, ws) = self.narrow(node.args[0]), self.narrow(node.args[1])
            if ws == full:
                call = ast.Call(node.fn, (align(x, xs, full), call.args[1]))
            else:
                call = ast.Call(node.fn, (call.args[0], align(w, ws, full)))
        if not node.params:
            return call
        axes = node.params[0]
        default = (arg.rank - 1,) if f is not None and f.shape in ("same", "cotangent") else \
            tuple(range(arg.rank))
        if tuple(axes) == default:
            return call
        axis = number(axes[0]) if len(axes) == 1 else ast.Tuple(tuple(number(a) for a in axes))
        return ast.Call(node.fn, call.args, ((f.axis if f else "axis", axis),))

    def _batched(self, node: Add) -> ast.Expr | None:
        """Batching across steps: a sum over steps of outer products, `sum_t outer(a_t, b_t)`,
        as one matrix product of stacked operands, `stack(a...).T @ stack(b...)`; and a sum
        that places each operand in its own row as `stack(...)`."""
        numbers = _constant_vector(node)
        if numbers is not None:
            return ast.Call("stack", tuple(number(c) for c in numbers))
        coefs = {c for c, _ in node.terms}
        if len(coefs) != 1:
            return None
        (coef,) = coefs
        rows = [_stack_row(t) for _, t in node.terms]
        if all(r is not None for r in rows) and sorted(k for k, _, _ in rows) == \
                list(range(len(rows))) and rows[0][1].shape and \
                len({axis for _, _, axis in rows}) == 1 and \
                node.shape[rows[0][2]] == Dim(None, len(rows)):
            ordered = [a for _, a, _ in sorted(rows, key=lambda r: r[0])]
            return self._scaled_stack(coef, ordered, rows[0][2])
        if len(node.terms) < 3:
            return None
        # (matched as a multiset: a stack with a row twice is not a sum of each row once)
        rows = self.stacked.get(tuple(sorted([id(t) for _, t in node.terms])))
        if rows is not None and node.rank and all(t.shape == node.shape for _, t in node.terms):
            # The rows of a stack that a weight's gradient builds (below): their sum is one
            # sum over it (a bias's gradient beside its weight's), the stack written alike,
            # so that the program builds it once (share.py names the repeat). In step order
            # (adjoints are computed last step first), as the weights' stacks are.
            rows = sorted(rows, key=lambda a: -_place(a, self.position))
            coefs = [coef / self.scale.get(id(a), 1.0) for a in rows]
            common = coefs[0] if len(set(coefs)) == 1 else 1.0
            stack = ast.Call("stack", tuple(scaled(c / common, self.expr(a))
                                            for c, a in zip(coefs, rows)))
            return scaled(common, ast.Call("sum", (stack,), (("axis", number(0)),)))
        pairs = [_outer_pair(t) for _, t in node.terms]
        if any(p is None for p in pairs):
            return None
        pairs = _in_step_order(pairs, self.position)
        placed = self._placed_by_units(coef, pairs)
        if placed is not None:
            return placed
        # A temporary computed with its constant on it (placement) carries it into the stack:
        # the pair's coefficient is divided by both factors' constants, row by row.
        scale = self.scale
        coefs = [coef / (scale.get(id(a), 1.0) * scale.get(id(b), 1.0)) for a, b in pairs]
        common = coefs[0] if len(set(coefs)) == 1 else 1.0
        left = ast.Call("stack", tuple(scaled(c / common, self.expr(a))
                                       for c, (a, _) in zip(coefs, pairs)))
        window = _rows_window([b for _, b in pairs])
        right = self.expr(window) if window is not None else \
            ast.Call("stack", tuple(self.expr(b) for _, b in pairs))
        return scaled(common, ast.BinOp("@", ast.Attribute(left, "T"), right, matrix=True))

    def _placed_by_units(self, coef: float, pairs: list) -> ast.Expr | None:
        """`sum_t outer(a_t, e_(p_t))` (or `outer(e_(p_t), b_t)`), unit vectors at concrete
        places on one side (a Hessian's rows of unrolled steps too few to batch): each a_t
        placed at row or column p_t among exact zeros (those at one place summed), by
        `rows_placed`, not `stack(a...).T @ stack(eye(n)[p]...)`, a 0/1 product of
        O(steps m n) where 0 * inf = nan spread an infinite entry of an a_t over every
        entry. None where neither side is such unit vectors."""
        for side in (1, 0):
            units = [p[side] for p in pairs]
            if not all(type(u) is Unit and u.position.is_concrete for u in units) or \
                    len({u.shape[0] for u in units}) != 1:
                continue
            others = [p[1 - side] for p in pairs]
            n, m = units[0].shape[0], others[0].shape[0]
            coefs = [coef / (self.scale.get(id(a), 1.0) * self.scale.get(id(u), 1.0))
                     for a, u in zip(others, units)]
            rows = ast.Call("stack", tuple(scaled(c, self.expr(a))
                                           for c, a in zip(coefs, others)))
            placed = rows_placed(rows, (0, 1), 0, [u.position.offset for u in units], n,
                                  {0: n, 1: m})
            return placed if side == 0 else transpose(placed)
        return None

    def _scaled_stack(self, coef: float, rows: list, axis: int = 0) -> ast.Expr:
        """`coef * stack(rows, axis=axis)`, each row divided by the constant its temporary
        carries."""
        coefs = [coef / self.scale.get(id(a), 1.0) for a in rows]
        common = coefs[0] if len(set(coefs)) == 1 else 1.0
        return scaled(common, ast.Call("stack", tuple(scaled(c / common, self.expr(a))
                                                      for c, a in zip(coefs, rows)),
                                       (("axis", number(axis)),) if axis else ()))

    def _sum(self, node: Add) -> tuple[ast.Expr, tuple]:
        batched = self._batched(node)
        if batched is not None:
            return batched, tuple(range(node.rank))
        # A term that only broadcasts something smaller (a scalar, a row) is written unbroadcast:
        # numpy broadcasting does the rest (the sum is broadcast, if at all, once).
        terms = [(coef / self.scale.get(id(term), 1.0), self.narrow(term))
                 for coef, term in node.terms]
        terms = _concatenated(terms, node)
        axes = tuple(sorted({a for _, (_, present) in terms for a in present}))
        result = None
        for coef, (expr, present) in terms:
            expr = align(expr, present, axes)
            if result is None:
                result = scaled(coef, expr)
            elif coef < 0:
                result = ast.BinOp("-", result, scaled(-coef, expr))
            else:
                result = ast.BinOp("+", result, scaled(coef, expr))
        return result, axes


def _concatenated(terms: list, node: Add) -> list:
    """`terms` with the pads of one axis whose windows do not overlap (an adjoint of a stacked
    pre-activation's slices, `pad(df, (0, 3n)) + pad(di, (n, 2n)) + ...`) written as one
    `concatenate((df, di, ...))`, zeros in the gaps: one new array instead of a zero-filled
    array per term and a sum of them (numpy's pad alone costs ~20 us a call)."""
    rank, windows, rest = node.rank, {}, []
    for coef, (expr, present) in terms:
        axis = _pad_axis(expr) if present == tuple(range(rank)) else None
        if axis is None or not node.shape[axis].is_concrete:
            rest.append((coef, (expr, present)))
            continue
        windows.setdefault(axis, []).append((coef, expr))
    if not any(len(w) > 1 for w in windows.values()):
        return terms
    for axis, pads in windows.items():
        # By where each window starts and ends (an empty window z[3:3] starts where z[3:6]
        # does): never by the expressions, which do not order.
        spans = sorted(((int(e.args[1].items[axis].items[0].value), coef, e) for coef, e in pads),
                       key=lambda p: (p[0], -int(p[2].args[1].items[axis].items[1].value)))
        size = node.shape[axis].offset
        ends = [size - int(e.args[1].items[axis].items[1].value) for _, _, e in spans]
        starts = [start for start, _, _ in spans]
        if len(pads) == 1 or any(ends[k] > starts[k + 1] for k in range(len(spans) - 1)):
            rest += [(coef, (e, tuple(range(rank)))) for coef, e in pads]
            continue
        parts, at = [], 0
        for (start, coef, e), end in zip(spans, ends):
            if start > at:
                parts.append(_zeros(node.shape, axis, start - at))
            parts.append(scaled(coef, e.args[0]))
            at = end
        if at < size:
            parts.append(_zeros(node.shape, axis, size - at))
        # The parts as arguments, not a tuple, so that every pass sees them as subexpressions
        # (as stack's); the printers write numpy's tuple.
        joined = ast.Call("concatenate", tuple(parts), (("axis", number(axis)),) if axis else ())
        rest.append((1.0, (joined, tuple(range(rank)))))
    return rest


def _pad_axis(expr: ast.Expr) -> int | None:
    """The one axis along which `expr`, a `pad(x, widths)` with integer widths, pads."""
    if not (isinstance(expr, ast.Call) and expr.func == "pad"):
        return None
    widths = expr.args[1].items
    if not all(isinstance(w, ast.Number) for pair in widths for w in pair.items):
        return None
    axes = [k for k, pair in enumerate(widths) if any(w.value for w in pair.items)]
    return axes[0] if len(axes) == 1 else None


def _zeros(shape: tuple, axis: int, length: int) -> ast.Expr:
    return ast.Call("zeros", tuple(ast.Number(float(length)) if k == axis else dimension(d)
                                   for k, d in enumerate(shape)))


def _constant_vector(node: Add) -> list[float] | None:
    """The entries of `node` where it is a vector of numbers, each at its own place, 0 .. k - 1
    (`c_0 e_0 + c_1 e_1 + ...`, lanes.py's per-step coefficients): written `stack(c_0, c_1,
    ...)`, where each term was a one-hot vector of all k entries (O(k^2)); else None."""
    if node.rank != 1 or not node.shape[0].is_concrete:
        return None
    entries: dict[int, float] = {}
    for coef, term in node.terms:
        if type(term) is not Unit or not term.position.is_concrete or \
                term.position.offset in entries:
            return None
        entries[term.position.offset] = coef
    if len(entries) < 2 or sorted(entries) != list(range(node.shape[0].offset)):
        return None
    return [entries[k] for k in range(len(entries))]


def _row_of(node: Node):
    """(base, k) when `node` is row k of `base` (`base[k]`: a unit vector on its first axis),
    else None."""
    if type(node) is not Contract or len(node.operands) != 2:
        return None
    (x, lx), (u, lu) = node.operands
    if type(x) is Unit:
        (x, lx), (u, lu) = (u, lu), (x, lx)
    if type(u) is not Unit or not u.position.is_concrete or not lx or lu != lx[:1] or \
            node.out != lx[1:] or len(set(lx)) != len(lx):
        return None
    return x, u.position.offset


def _in_step_order(pairs: list, position: dict) -> list:
    """The pairs (a_t, b_t) of a sum over steps of outer products in the order of their b_t:
    rows of one array by row, other values as the program computes them (a forward state's
    steps in time). Two sums whose b_t are the steps of one loop (a weight's gradient by the
    state, its input weight's by the input rows) then stack their a_t alike, and the stacks
    are shared or slices of one another (share.py), and the b_t are a slice of what the
    program stacks or reads anyway, not a stack in reverse."""
    def key(pair):
        row = _row_of(pair[1])
        return (0, id(row[0]), row[1]) if row is not None else (1, _place(pair[1], position), 0)
    return sorted(pairs, key=key)


def _place(node: Node, position: dict) -> int:
    """Where the program computes `node`: its place in the topological order, or for a
    product built since (a factor of an outer product), where its last factor is."""
    found = position.get(id(node))
    if found is None:
        found = max([position.get(id(c), -1) for c in node.children()], default=-1)
    return found


def _rows_window(rows: list) -> Node | None:
    """`base[k:k + n]` when `rows` are the rows k, k + 1, ... of one array, `base[k:e:s]` when
    they are every s-th from k (`X[0]`, `X[2]`, `X[4]`: a view, not a stack), else None."""
    found = [_row_of(r) for r in rows]
    if len(rows) < 2 or any(f is None for f in found):
        return None
    base, start = found[0]
    step = found[1][1] - start
    if step < 1 or any(b is not base or k != start + step * i for i, (b, k) in enumerate(found)):
        return None
    rest = tuple(range(2, base.rank + 1))
    return Contract((0, *rest), [(row_window(start, step, len(rows), base.shape[0]), (0, 1)),
                                 (base, (1, *rest))])


def _stacked_factors(order: list[Node], position: dict) -> dict[tuple, list[Node]]:
    """The factors that `_Translator._batched` stacks for each sum over steps of outer products
    (`sum_t outer(a_t, b_t)`: the a_t in order, and the b_t), keyed by their ids, sorted,
    for the sums of vectors that are sums of those very factors (a bias's beside its
    weight's): only those are built (`_outer_pair` builds nodes; most sums need none)."""
    # A cheap prefilter on the leaves of each product (its factors flattened, both sides
    # alike, so a match is never missed); the ids of the built factors decide in _batched.
    memo: dict[int, tuple] = {}
    vector_sums = set()
    for n in order:
        if type(n) is Add and len(n.terms) >= 3 and len(n.shape) == 1:
            vector_sums.add(frozenset(_leaves(t, memo) for _, t in n.terms))
    stacked: dict[tuple, list[Node]] = {}
    if not vector_sums:
        return stacked
    for n in order:
        if type(n) is Add and len(n.terms) >= 3 and len({c for c, _ in n.terms}) == 1 and \
                len(n.shape) == 2:
            for side in (0, 1):
                key = frozenset(_side_leaves(t, side, memo) for _, t in n.terms)
                if None in key or key not in vector_sums:
                    continue
                pairs = [_outer_pair(t) for _, t in n.terms]
                if all(p is not None for p in pairs):
                    pairs = _in_step_order(pairs, position)  # (as _batched stacks them)
                    rows = [p[side] for p in pairs]  # (the list keeps built nodes alive)
                    stacked.setdefault(tuple(sorted(map(id, rows))), rows)
    return stacked


def _leaves(node: Node, memo: dict) -> tuple:
    """The ids of what a vector is the elementwise product of, sorted: a product of vectors on
    its one index (no constant) flattened, any other node itself."""
    found = memo.get(id(node))
    if found is None:
        if type(node) is Contract and node.out == (0,) and \
                all(ls == (0,) and type(c) is not Const for c, ls in node.operands):
            found = tuple(sorted(i for c, _ in node.operands for i in _leaves(c, memo)))
        else:
            found = (id(node),)
        memo[id(node)] = found
    return found


def _side_leaves(node: Node, side: int, memo: dict):
    """`_leaves` of one side (label 0 or 1) of an outer product of two vectors, or None."""
    if type(node) is not Contract or node.out != (0, 1) or \
            any(type(c) is Const or ls not in ((0,), (1,)) for c, ls in node.operands):
        return None
    ops = [c for c, ls in node.operands if ls == (side,)]
    if not ops:
        return None
    return tuple(sorted(i for c in ops for i in _leaves(c, memo)))


def _outer_pair(node: Node):
    """(a, b) when `node` is an outer product of two vectors (each may itself be a product of
    factors on one index, `outer(d * s, h)`), else None."""
    from ..ir import build
    if not isinstance(node, Contract) or node.out != (0, 1) or \
            any(isinstance(n, Const) for n, _ in node.operands):
        return None
    left = [(n, ls) for n, ls in node.operands if ls == (0,)]
    right = [(n, ls) for n, ls in node.operands if ls == (1,)]
    if not left or not right or len(left) + len(right) != len(node.operands):
        return None
    return (build.contract((0,), left, {0: node.dims[0]}),
            build.contract((1,), right, {1: node.dims[1]}))


def _stack_row(node: Node):
    """(k, a, axis) when `node` places `a` in row k of a stack along `axis`
    (`e_k[s] * a[...]`, s the result's index at `axis`), else None. A stack along an inner
    axis is a batch of stacks: an LSTM's gate pre-activations' input terms for every step."""
    if not isinstance(node, Contract) or len(node.operands) != 2:
        return None
    (u, lu), (a, la) = node.operands
    if isinstance(a, Unit):
        (u, lu), (a, la) = (a, la), (u, lu)
    if not isinstance(u, Unit) or len(lu) != 1 or lu[0] not in node.out or \
            not u.position.is_concrete:
        return None
    axis = node.out.index(lu[0])
    if la != node.out[:axis] + node.out[axis + 1:]:
        return None
    return u.position.offset, a, axis
