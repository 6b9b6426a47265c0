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
from ..parse import ast
from ..rulebook import RuleBook, default_rulebook
from .contraction import ContractionTranslator, dimension, number, scaled
from .lanes import batch_lanes
from .gc_pause import paused_gc
from .share import MAX_PRINT_HEIGHT, share_repeats

INFIX = {"div": "/", "pow": "**"}
# An expression nesting deeper than this many IR levels is cut into temporaries, so formulas
# stay readable, parse back under the parser's nesting limit, and are printed without recursion
# trouble however deep an unrolled network is.
MAX_INLINE_HEIGHT = 8


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
    # The user's names keep their meaning: an output label or a bound name that would rebind
    # one gives way (`dx` when the user bound `dx = tanh(x * y)`), and no temporary takes one.
    inputs = input_names(roots.values(), declared)
    roots = batch_lanes(output_labels(roots, names, inputs))
    order = topological(*roots.values())
    uses = Counter(id(c) for n in order for c in n.children())
    uses.update(id(n) for n in roots.values())  # an output used elsewhere is computed once
    root_ids = {id(n) for n in roots.values()}
    root_name = {}
    for name, node in roots.items():
        root_name.setdefault(id(node), name)
    variables = {n.name: n for n in order if isinstance(n, Var)}
    taken = inputs | set(variables) | set(roots) | set(names.values())
    counter = 0
    temp_name: dict[int, str] = {}
    bound_names: set[str] = set()
    height: dict[int, int] = {}
    for n in order:
        inline = [height[id(c)] for c in n.children() if id(c) not in temp_name]
        height[id(n)] = 1 + max(inline, default=0)
        if isinstance(n, (Var, Const, Size, Delta, Unit)):
            continue
        too_deep = height[id(n)] >= MAX_INLINE_HEIGHT
        if not too_deep and not _worth_a_name(n, uses, names):
            continue
        if id(n) in root_ids and uses[id(n)] <= 1 and n not in names:
            continue  # an output is a statement of its own already
        height[id(n)] = 0
        name = root_name.get(id(n)) or names.get(n)
        # Every name is bound once (`a = a * a` rebinding a user's name gets a fresh one), so a
        # name means one value everywhere in the program.
        if name is None or name in inputs or name in bound_names:
            while f"t{counter}" in taken:
                counter += 1
            name = f"t{counter}"
            taken.add(name)
        bound_names.add(name)
        temp_name[id(n)] = name
    translator = _Translator(temp_name, rules)
    temporaries = [(temp_name[id(n)], translator.define(n)) for n in order if id(n) in temp_name]
    outputs = [(name, translator.expr(node)) for name, node in roots.items()]
    temporaries, outputs = share_repeats(temporaries, outputs, taken, limit=MAX_PRINT_HEIGHT)
    temporaries = _used(temporaries, outputs)
    return VectorProgram(temporaries, outputs, variables, dict(declared or {}))


def _used(temporaries: list, outputs: list) -> list:
    """The temporaries some later line or output reads (batching can leave one unread)."""
    from .share import names_in
    needed = set()
    for _, expr in outputs:
        needed |= names_in(expr)
    kept = []
    for name, expr in reversed(temporaries):
        if name in needed:
            kept.append((name, expr))
            needed |= names_in(expr)
    return kept[::-1]


def _worth_a_name(node: Node, uses: Counter, names) -> bool:
    if node in names:
        return True
    if uses[id(node)] < 2:
        return False
    # A transpose or a broadcast of something already named costs nothing to repeat.
    if isinstance(node, Contract) and len(node.operands) == 1 and \
            isinstance(node.operands[0][0], (Var, Const)):
        return False
    return True


class _Translator:
    def __init__(self, temp_name: dict[int, str], rules: RuleBook):
        self.temp_name = temp_name
        self.rules = rules

    def expr(self, node: Node) -> ast.Expr:
        """The expression for `node` where it is used: a temporary's name if it has one."""
        name = self.temp_name.get(id(node))
        if name is not None:
            return ast.Name(name)
        return self.define(node)

    def define(self, node: Node) -> ast.Expr:
        if isinstance(node, Var):
            return ast.Name(node.name)
        if isinstance(node, Const):
            return number(node.value)
        if isinstance(node, Size):
            return ast.Call("size", (dimension(node.dim),))
        if isinstance(node, Delta):
            rows, cols = node.shape
            if node.is_identity:
                return ast.Call("eye", (dimension(rows),))
            from .contraction import _slice
            window = _slice(node.offset, node.offset + rows, cols)
            return ast.Index(ast.Call("eye", (dimension(cols),)), (window,))
        if isinstance(node, Unit):
            # A row of the identity, as a person writes it; the generated code builds it in O(n).
            from .contraction import _position
            return ast.Index(ast.Call("eye", (dimension(node.shape[0]),)),
                             (_position(node.position, node.shape[0]),))
        if isinstance(node, Map):
            args = [self.expr(a) for a in node.args]
            if node.fn in INFIX and len(args) == 2:
                return ast.BinOp(INFIX[node.fn], *args)
            return ast.Call(node.fn, tuple(args))
        if isinstance(node, Prim):
            return self._primitive(node)
        if isinstance(node, Add):
            return self._sum(node)
        if isinstance(node, Contract):
            return ContractionTranslator(node, self.expr).run()
        raise TypeError(f"cannot vectorize {type(node).__name__}")

    def _primitive(self, node: Prim) -> ast.Expr:
        (arg,) = node.args
        call = ast.Call(node.fn, (self.expr(arg),))
        if not node.params:
            return call
        axes = node.params[0]
        f = self.rules.get(node.fn)
        default = (arg.rank - 1,) if f is not None and f.shape == "same" else \
            tuple(range(arg.rank))
        if tuple(axes) == default:
            return call
        axis = number(axes[0]) if len(axes) == 1 else ast.Tuple(tuple(number(a) for a in axes))
        return ast.Call(node.fn, call.args, ((f.axis if f else "axis", axis),))

    def _batched(self, node: Add) -> ast.Expr | None:
        """Batching across steps: a sum over steps of outer products, `sum_t outer(a_t, b_t)`,
        as one matrix product of stacked operands, `stack(a...).T @ stack(b...)`; and a sum
        that places each operand in its own row as `stack(...)`."""
        coefs = {c for c, _ in node.terms}
        if len(coefs) != 1:
            return None
        (coef,) = coefs
        rows = [_stack_row(t) for _, t in node.terms]
        if all(r is not None for r in rows) and sorted(k for k, _ in rows) == \
                list(range(len(rows))) and rows[0][1].shape and \
                node.shape[0] == Dim(None, len(rows)):
            ordered = [a for _, a in sorted(rows, key=lambda r: r[0])]
            return scaled(coef, ast.Call("stack", tuple(self.expr(a) for a in ordered)))
        if len(node.terms) < 3:
            return None
        pairs = [_outer_pair(t) for _, t in node.terms]
        if any(p is None for p in pairs):
            return None
        left = ast.Call("stack", tuple(self.expr(a) for a, _ in pairs))
        right = ast.Call("stack", tuple(self.expr(b) for _, b in pairs))
        return scaled(coef, ast.BinOp("@", ast.Attribute(left, "T"), right))

    def _sum(self, node: Add) -> ast.Expr:
        batched = self._batched(node)
        if batched is not None:
            return batched
        # A term that only broadcasts something smaller (a scalar, a row) is written unbroadcast
        # when another term has the full shape: numpy broadcasting does the rest.
        full = any(_broadcast_of(t) is None or id(t) in self.temp_name for _, t in node.terms)
        result = None
        for coef, term in node.terms:
            source = _broadcast_of(term) if id(term) not in self.temp_name else None
            if full and source is not None:
                expr = source(self.expr)
            else:
                expr = self.expr(term)
            if result is None:
                result = scaled(coef, expr)
            elif coef < 0:
                result = ast.BinOp("-", result, scaled(-coef, expr))
            else:
                result = ast.BinOp("+", result, scaled(coef, expr))
        return result


def _broadcast_of(node: Node):
    """For a pure broadcast (`1` to [n], `b` to [m, n]), a function giving the unbroadcast
    operand aligned for numpy broadcasting; None for anything else."""
    if not isinstance(node, Contract) or len(node.operands) != 1:
        return None
    child, labels = node.operands[0]
    if len(set(labels)) != len(labels) or not set(labels) <= set(node.out) or \
            len(labels) == len(node.out):
        return None
    order = [l for l in node.out if l in labels]
    from .contraction import Term, _align

    def aligned(translate):
        return _align(Term(translate(child), labels), tuple(node.out[node.out.index(order[0]):])
                      if order else ())
    if not order:
        return lambda translate: translate(child)
    return aligned


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
    """(k, a) when `node` places `a` in row k of a stack (`e_k[s] * a[...]`), else None."""
    if not isinstance(node, Contract) or len(node.operands) != 2 or node.out[:1] != (0,):
        return None
    (u, lu), (a, la) = node.operands
    if isinstance(a, Unit):
        (u, lu), (a, la) = (a, la), (u, lu)
    if not isinstance(u, Unit) or lu != (0,) or la != node.out[1:] or not u.position.is_concrete:
        return None
    return u.position.offset, a
