"""The `einsum` format: the contraction plan, one line per IR node, in dependency order.

Each Einstein product is an opt_einsum call with its subscripts and operands,
`t1 = contract('ij,j->i', X, w)`; the other nodes are plain calls and arithmetic
(`t0 = exp(t1)`, `t2 = t0 + 1`). Every line is valid numpy-flavoured Python over the lines
before it: `contract` is `opt_einsum.contract` (or `numpy.einsum`), a Kronecker delta is
`eye(n)` (a window of one, `eye(rows, cols, k=offset)`, as numpy's `eye`), a unit vector is
`eye(n)[k]`, and an index that no operand carries (a broadcast) is carried by `ones(n)`.

>>> import einderiv
>>> print(einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)}).einsum)
t0 = contract('ij,j->i', W, x)
out = t0 + b
"""
from __future__ import annotations

from ..ir.dims import Dim
from ..ir.einstein import format_number
from ..ir.names import input_names, output_labels
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Size, Unit, Var, topological
from ..lower.convolution import is_convolution, surface as convolution_surface
from ..lower.linear import is_linear, surface as linear_surface
from ..parse import ast
from ..parse.unparse import unparse
from ..rulebook import RuleBook, default_rulebook

LEAVES = (Var, Const, Size, Delta, Unit)
INFIX = {"div": "/", "pow": "**"}
LETTERS = "ijklmnopqrstuvwxyzabcdefghIJKLMNOPQRSTUVWXYZABCDEFGH"


def format_einsum(roots: dict[str, Node], names: dict[Node, str] | None = None,
                  rules: RuleBook | None = None) -> str:
    """The plan for `roots` (output name -> IR): a line per node that is not a leaf, each node
    once however many lines use it; `names` are the user's names for bound temporaries."""
    return _Plan(roots, names or {}, rules or default_rulebook()).text()


class _Plan:
    def __init__(self, roots: dict[str, Node], names: dict[Node, str], rules: RuleBook):
        # Output labels and temporaries never take a user's name (see `ir.names`).
        inputs = input_names(roots.values())
        roots = output_labels(roots, names, inputs)
        self.roots = roots
        self.rules = rules
        self.order = [n for n in topological(*roots.values()) if not isinstance(n, LEAVES)]
        self.name: dict[int, str] = {}
        for out, node in roots.items():
            if not isinstance(node, LEAVES):
                self.name.setdefault(id(node), out)
        taken = inputs | set(roots) | set(names.values())
        counter = 0
        given = set(self.name.values())  # a set beside the dict: one look-up per node, not a scan
        for node in self.order:
            if id(node) in self.name:
                continue
            user = names.get(node)
            if user is not None and user not in inputs and user not in given:
                self.name[id(node)] = user
                given.add(user)
                continue
            while f"t{counter}" in taken:
                counter += 1
            self.name[id(node)] = f"t{counter}"
            given.add(f"t{counter}")
            taken.add(f"t{counter}")

    def text(self) -> str:
        lines = [f"{self.name[id(n)]} = {self.define(n)}" for n in self.order]
        leaves: dict[int, str] = {}  # a leaf output is written once, then named
        for out, node in self.roots.items():
            if self.name.get(id(node)) == out:
                continue
            if id(node) in leaves:
                lines.append(f"{out} = {leaves[id(node)]}")
            else:  # a leaf, or a node that another output names
                lines.append(f"{out} = {self.operand(node)}")
                if isinstance(node, LEAVES):
                    leaves[id(node)] = out
        return "\n".join(lines)

    def operand(self, node: Node) -> str:
        """How a line refers to `node`: its line's name, or a leaf written out."""
        if id(node) in self.name:
            return self.name[id(node)]
        if isinstance(node, Var):
            return node.name
        if isinstance(node, Const):
            return format_number(node.value)
        if isinstance(node, Size):
            return f"size({node.dim})"
        if isinstance(node, Delta):
            rows, cols = node.shape
            if node.is_identity:
                return f"eye({rows})"
            window = "" if node.offset == Dim(None, 0) else f", k={node.offset}"
            return f"eye({rows}, {cols}{window})"
        if isinstance(node, Unit):
            return f"eye({node.shape[0]})[{node.position}]"
        raise TypeError(f"no line for {type(node).__name__}")

    def define(self, node: Node) -> str:
        if isinstance(node, Contract):
            return self.contract(node)
        if isinstance(node, Map):
            args = [self.operand(a) for a in node.args]
            if node.fn in INFIX and len(args) == 2:
                return f" {INFIX[node.fn]} ".join(args)
            return f"{node.fn}({', '.join(args)})"
        if is_linear(node):  # cumsum, x[::2], reshape...: as the formula writes them
            return unparse(linear_surface(node, ast.Name(self.operand(node.args[0]))))
        if is_convolution(node):  # correlate, conv2d...: as the formula writes them
            return unparse(convolution_surface(node, tuple(ast.Name(self.operand(a))
                                                           for a in node.args)))
        if isinstance(node, Prim):
            args = [self.operand(a) for a in node.args]
            if node.params:
                f = self.rules.get(node.fn)
                axes = tuple(node.params[0])
                axis = str(axes[0]) if len(axes) == 1 else str(axes)
                args.append(f"{(f.axis if f is not None and f.axis else 'axis')}={axis}")
            return f"{node.fn}({', '.join(args)})"
        if isinstance(node, Add):
            return self.add(node)
        raise TypeError(f"no line for {type(node).__name__}")

    def add(self, node: Add) -> str:
        text = ""
        for coef, term in node.terms:
            mag = abs(coef)
            body = self.operand(term) if mag == 1 else f"{format_number(mag)}*{self.operand(term)}"
            if not text:
                text = body if coef > 0 else f"-{body}"
            else:
                text += (" + " if coef > 0 else " - ") + body
        return text

    def contract(self, node: Contract) -> str:
        """`contract('ij,j->i', X, w)`, with constant factors taken out in front (`2 * ...`)."""
        letters = {label: _letter(label) for label in range(len(node.dims))}
        coef = 1.0
        subscripts = []
        operands = []
        for child, labels in node.operands:
            if isinstance(child, Const):
                coef *= child.value
                continue
            subscripts.append("".join(letters[l] for l in labels))
            operands.append(self.operand(child))
        carried = {l for _, labels in node.operands for l in labels}
        broadcast = [l for l in node.out if l not in carried]
        if not operands:  # a constant, broadcast
            ones = f"ones({', '.join(str(node.dims[l]) for l in broadcast)})"
            return _scaled(coef, ones) if broadcast else format_number(coef)
        for label in broadcast:  # einsum needs an operand that carries the index
            subscripts.append(letters[label])
            operands.append(f"ones({node.dims[label]})")
        result = "".join(letters[l] for l in node.out)
        if subscripts == [result]:  # nothing left to contract: `2 * eye(n)`
            return _scaled(coef, operands[0])
        spec = ",".join(subscripts) + "->" + result
        return _scaled(coef, f"contract({spec!r}, {', '.join(operands)})")


def _scaled(coef: float, text: str) -> str:
    if coef == 1.0:
        return text
    if coef == -1.0:
        return "-" + text
    return f"{format_number(coef)} * {text}"


def _letter(label: int) -> str:
    if label < len(LETTERS):
        return LETTERS[label]
    import opt_einsum
    return opt_einsum.get_symbol(label)  # past 52 these are not ASCII letters
