"""AST -> source text, for Python-built expressions (their repr, and names in error messages)."""
from __future__ import annotations

from . import ast

_PREC = {**{op: 0 for op in ast.COMPARISONS}, "+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "@": 2,
         "neg": 3, "**": 4}
# The function of an operator, called with two arguments, is printed as the operator
# (`greater(x, 0)` as `x > 0`), the form a person writes; either parses to the same function.
_OPERATOR = {**{fn: op for op, fn in ast.COMPARISONS.items()}, "floor_divide": "//"}
MAX_DEPTH = 40
MAX_CHARS = 10_000


def unparse(node: ast.Expr, limit: int | None = MAX_CHARS,
            max_depth: int | None = MAX_DEPTH) -> str:
    """The expression as source text, cut short with '...' past `limit` characters or
    `max_depth` levels: a Python-built expression can share subtrees, so its text can be
    exponentially longer than the expression itself. That is for messages and reprs only: with
    `limit=None, max_depth=None` the text is whole, never elided (the printers of programs,
    whose expressions the vectorizer keeps shallow)."""
    return _Unparser(limit, max_depth).text(node, 0)


class _Unparser:
    def __init__(self, limit: int | None, max_depth: int | None = MAX_DEPTH):
        self.max_depth = float("inf") if max_depth is None else max_depth
        self.budget = float("inf") if limit is None else limit

    def spend(self, text: str) -> str:
        self.budget -= len(text)
        return text

    def text(self, node: ast.Expr, depth: int) -> str:
        if depth > self.max_depth or self.budget <= 0:
            return "..."
        d = depth + 1
        if isinstance(node, ast.Number):
            v = node.value
            if v != v or v in (float("inf"), float("-inf")):
                # Not literals of the language: written as expressions that evaluate to them.
                text = "(1e999 - 1e999)" if v != v else ("1e999" if v > 0 else "(-1e999)")
                return self.spend(text)
            # Whole numbers as integers (sizes, indices, pad widths: `ones(1000000000000000)`,
            # not `ones(1000000000000000.0)`) below 2**53, where floats stop holding every
            # integer exactly (larger sizes are refused when declared).
            return self.spend(str(int(v)) if abs(v) < 2**53 and v == int(v) else repr(v))
        if isinstance(node, ast.Name):
            return self.spend(node.id)
        if isinstance(node, ast.String):
            return self.spend(repr(node.value))
        if isinstance(node, ast.NoneLit):
            return self.spend("None")
        if isinstance(node, ast.BinOp):
            p = _PREC[node.op]
            self.spend(f" {node.op} ")
            # `**` groups to the right; comparisons do not chain: bracketed on either side
            left = self.wrap(node.left, p + 1 if node.op == "**" or p == 0 else p, d)
            right = self.wrap(node.right, p + 1 if node.op != "**" else p, d)
            return f"{left} {node.op} {right}"
        if isinstance(node, ast.UnaryOp):
            return self.spend(node.op) + self.wrap(node.operand, _PREC["neg"], d)
        if isinstance(node, ast.Attribute):
            self.spend("." + node.attr)
            return f"{self.wrap(node.operand, 9, d)}.{node.attr}"
        if isinstance(node, ast.Index):
            self.spend("[]")
            operand = self.wrap(node.operand, 9, d)
            return f"{operand}[{', '.join(self.item(i, d) for i in node.items)}]"
        if isinstance(node, ast.Tuple):
            self.spend("()")
            inner = ", ".join(self.text(i, d) for i in node.items)
            return f"({inner},)" if len(node.items) == 1 else f"({inner})"
        if _infix(node):
            return self.text(ast.BinOp(_OPERATOR[node.func], *node.args), depth)
        if isinstance(node, ast.Call):
            self.spend(node.func + "()")
            args = [self.text(a, d) for a in node.args]
            if node.func == "concatenate" and not isinstance(node.args[0], ast.Tuple):
                # the vectorizer's, with the parts as arguments: numpy's takes a tuple
                args = [f"({', '.join(args)}{',' if len(args) == 1 else ''})"]
            args += [f"{k}={self.text(v, d)}" for k, v in node.kwargs]
            return f"{node.func}({', '.join(args)})"
        return "?"

    def item(self, item, depth: int) -> str:
        if isinstance(item, ast.Slice):
            lo = "" if item.lo is None else self.text(item.lo, depth)
            hi = "" if item.hi is None else self.text(item.hi, depth)
            if item.step is not None:
                return f"{lo}:{hi}:{self.text(item.step, depth)}"
            return f"{lo}:{hi}"
        return self.text(item, depth)

    def wrap(self, node, prec: int, depth: int) -> str:
        text = self.text(node, depth)
        return f"({text})" if _precedence(node) < prec else text


def _infix(node) -> bool:
    """Is `node` a call of an operator's function, printed as the operator?"""
    return isinstance(node, ast.Call) and node.func in _OPERATOR and len(node.args) == 2 \
        and not node.kwargs


def _precedence(node) -> int:
    if isinstance(node, ast.BinOp):
        return _PREC[node.op]
    if _infix(node):
        return _PREC[_OPERATOR[node.func]]
    if isinstance(node, ast.UnaryOp):
        return _PREC["neg"]
    if isinstance(node, ast.Number) and node.value < 0:
        return _PREC["neg"]
    return 9
