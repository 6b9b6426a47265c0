"""Print IR as indexed Einstein notation: `out[i] = W[i,j]*x[j] + b[i]`.

One line per tensor: the output, every node used more than once (so a shared subexpression is
written once), every name the user bound, and the arguments of tensor primitives. Indices that
repeat inside a product and are absent on the left are summed; a summed index that occurs only
once is written out as `sum[j](...)`.
"""
from __future__ import annotations

from collections import Counter

from .dims import ONE, Dim
from .names import input_names, output_labels
from .nodes import Add, Const, Contract, Delta, Map, Node, Prim, Size, Unit, Var, topological

LETTERS = "ijklmpqrsuvwabcefgh"
ADD, MUL, UNARY, POW, ATOM = 1, 2, 3, 4, 5
INFIX = {"div": ("/", MUL), "pow": ("**", POW)}
LEAVES = (Var, Const, Size, Delta, Unit)
# Nesting deeper than this is split into lines of its own: a chain thousands of nodes deep (an
# unrolled network) stays readable, and printing it never recurses deeply.
MAX_INLINE_DEPTH = 32


def format_number(v: float) -> str:
    if abs(v) < 1e15 and v == int(v):  # false for inf and nan, which int() rejects
        return str(int(v))
    return repr(v)


def line_nodes(roots: list[Node], names: dict[Node, str] | None = None) -> list[Node]:
    """The nodes that get a line of their own, in dependency order."""
    names = names or {}
    order = topological(*roots)
    uses = Counter(id(c) for n in order for c in n.children())
    own = set(id(r) for r in roots)
    depth: dict[int, int] = {}  # how deeply a node's text nests, printed inline
    for n in order:
        if isinstance(n, LEAVES):
            continue
        if uses[id(n)] > 1 or n in names:
            own.add(id(n))
        if isinstance(n, Prim):
            own.update(id(a) for a in n.args if not isinstance(a, LEAVES))
        depth[id(n)] = 1 + max((depth.get(id(c), 0) for c in n.children() if id(c) not in own),
                               default=0)
        if depth[id(n)] >= MAX_INLINE_DEPTH:
            own.add(id(n))
    return [n for n in order if id(n) in own and not isinstance(n, Var)]


def format_program(root: Node, names: dict[Node, str] | None = None, output: str = "out",
                   extra_roots: dict[str, Node] | None = None) -> str:
    """Every line needed to define `root` (and `extra_roots`), the output last."""
    names = dict(names or {})
    roots = {output: root, **(extra_roots or {})}
    # Output labels and temporaries never take a user's name (see `names.py`).
    inputs = input_names(roots.values())
    roots = output_labels(roots, names, inputs)
    chosen: dict[int, str] = {}
    for name, node in roots.items():
        chosen.setdefault(id(node), name)
    nodes = line_nodes(list(roots.values()), names)
    temp = 0
    taken = set(chosen.values()) | set(names.values()) | inputs
    given = set(chosen.values())  # a set beside the dict: one look-up per node, not a scan
    for n in nodes:
        if id(n) in chosen:
            continue
        if n in names and names[n] not in inputs and names[n] not in given:
            chosen[id(n)] = names[n]
        else:
            while f"t{temp}" in taken:
                temp += 1
            chosen[id(n)] = f"t{temp}"
            taken.add(f"t{temp}")
        given.add(chosen[id(n)])
    lines = []
    for n in nodes:
        printer = _Line(chosen, defining=n)
        idx = printer.fresh(n.rank)
        lhs = chosen[id(n)] + (f"[{','.join(idx)}]" if idx else "")
        lines.append(f"{lhs} = {printer.expr(n, idx)[0]}")
    for name, node in roots.items():
        if isinstance(node, Var):  # an output that is just an input
            idx = _Line(chosen, None).fresh(node.rank)
            sub = f"[{','.join(idx)}]" if idx else ""
            lines.append(f"{name}{sub} = {node.name}{sub}")
    return "\n".join(lines)


class _Line:
    """Prints one line; hands out index names so that none is reused within the line."""

    def __init__(self, names: dict[int, str], defining: Node | None):
        self.names = names
        self.defining = defining
        self.used = 0

    def fresh(self, k: int) -> list[str]:
        out = []
        for _ in range(k):
            n = self.used
            self.used += 1
            out.append(LETTERS[n] if n < len(LETTERS) else f"i{n - len(LETTERS) + 1}")
        return out

    def expr(self, node: Node, idx) -> tuple[str, int]:
        sub = f"[{','.join(idx)}]" if idx else ""
        if node is not self.defining and id(node) in self.names:
            return self.names[id(node)] + sub, ATOM
        if isinstance(node, Var):
            return node.name + sub, ATOM
        if isinstance(node, Const):
            text = format_number(node.value)
            return text, (UNARY if node.value < 0 else ATOM)
        if isinstance(node, Size):
            return f"size({node.dim})", ATOM
        if isinstance(node, Delta):
            return f"delta[{_shift(idx[0], node.offset)},{idx[1]}]", ATOM
        if isinstance(node, Unit):
            return f"delta[{idx[0]},{node.position}]", ATOM
        if isinstance(node, Map):
            return self._map(node, idx)
        if isinstance(node, Prim):
            args = [self.names.get(id(a), getattr(a, "name", "?")) for a in node.args]
            from ..lower.convolution import NAMES as CONVOLUTIONS
            if node.fn in CONVOLUTIONS:  # a correlation's stride, where it is not 1
                if node.params and any(s != 1 for s in node.params[0]):
                    args.append("stride=" + _axis_text(node.params[0]))
            elif node.params:
                args.append("axis=" + _axis_text(node.params[0]))
            return f"{node.fn}({', '.join(args)}){sub}", ATOM
        if isinstance(node, Add):
            return self._add(node, idx)
        if isinstance(node, Contract):
            return self._contract(node, idx)
        raise TypeError(f"cannot print {type(node).__name__}")

    def _wrap(self, node, idx, prec) -> str:
        text, p = self.expr(node, idx)
        return f"({text})" if p < prec else text

    def _map(self, node: Map, idx) -> tuple[str, int]:
        args = [a if a.rank else a for a in node.args]
        sub = [idx if a.rank else [] for a in args]
        if node.fn in INFIX and len(args) == 2:
            op, prec = INFIX[node.fn]
            if op == "**":
                left = self._wrap(args[0], sub[0], POW + 1)
                right = self._wrap(args[1], sub[1], UNARY)
            else:
                left = self._wrap(args[0], sub[0], prec)
                right = self._wrap(args[1], sub[1], prec + 1)
            return f"{left}{op}{right}", prec
        inner = ", ".join(self.expr(a, s)[0] for a, s in zip(args, sub))
        return f"{node.fn}({inner})", ATOM

    def _add(self, node: Add, idx) -> tuple[str, int]:
        parts = []
        for coef, term in node.terms:
            prec = MUL if abs(coef) != 1 else (ADD if coef > 0 else ADD + 1)
            text = self._wrap(term, idx, prec)
            mag = abs(coef)
            body = text if mag == 1 else f"{format_number(mag)}*{text}"
            if not parts:
                parts.append(body if coef > 0 else f"-{body}")
            else:
                parts.append(("+ " if coef > 0 else "- ") + body)
        return " ".join(parts), ADD

    def _contract(self, node: Contract, idx) -> tuple[str, int]:
        label_name: dict[int, str] = dict(zip(node.out, idx))
        occurrences = Counter(l for _, ls in node.operands for l in ls)
        summed_once = []
        for l in range(len(node.dims)):
            if l in label_name:
                continue
            if node.dims[l] == ONE:
                label_name[l] = "0"
            else:
                label_name[l] = self.fresh(1)[0]
                if occurrences[l] == 1:
                    summed_once.append(label_name[l])
        coef = 1.0
        printed = []
        for operand, labels in node.operands:
            if isinstance(operand, Const):
                coef *= operand.value
                continue
            printed.append(self.expr(operand, [label_name[l] for l in labels]))
        if summed_once and len(printed) == 1 and coef == 1.0:  # sum[j](...) is its own bracket
            return f"sum[{','.join(summed_once)}]({printed[0][0]})", ATOM
        factors = [f"({t})" if p < MUL + 1 else t for t, p in printed]
        text = "*".join(factors) if factors else format_number(coef)
        if factors and coef != 1.0:
            text = ("-" if coef == -1 else f"{format_number(coef)}*") + text
        if summed_once:
            return f"sum[{','.join(summed_once)}]({text})", ATOM
        if not factors:
            return text, (UNARY if coef < 0 else ATOM)
        if text.startswith("-"):
            return text, UNARY
        return text, (ATOM if len(factors) == 1 and coef == 1.0 else MUL)


def _shift(index: str, offset: Dim) -> str:
    if offset == Dim(None, 0):
        return index
    text = str(offset)
    return f"{index}-{text[1:]}" if text.startswith("-") else f"{index}+{text}"


def _axis_text(axes) -> str:
    if isinstance(axes, tuple) and len(axes) == 1:
        return str(axes[0])
    return str(tuple(axes))
