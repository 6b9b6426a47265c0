"""AST -> source text, for Python-built expressions (their repr, and names in error messages)."""
from __future__ import annotations

from . import ast

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "neg": 3, "**": 4}


def unparse(node: ast.Expr, depth: int = 0) -> str:
    if depth > 40:
        return "..."
    d = depth + 1
    if isinstance(node, ast.Number):
        v = node.value
        return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.String):
        return repr(node.value)
    if isinstance(node, ast.NoneLit):
        return "None"
    if isinstance(node, ast.BinOp):
        p = _PREC[node.op]
        left = _wrap(node.left, p if node.op != "**" else p + 1, d)
        right = _wrap(node.right, p + 1 if node.op != "**" else p, d)
        return f"{left} {node.op} {right}"
    if isinstance(node, ast.UnaryOp):
        return node.op + _wrap(node.operand, _PREC["neg"], d)
    if isinstance(node, ast.Attribute):
        return f"{_wrap(node.operand, 9, d)}.{node.attr}"
    if isinstance(node, ast.Index):
        return f"{_wrap(node.operand, 9, d)}[{', '.join(_item(i, d) for i in node.items)}]"
    if isinstance(node, ast.Tuple):
        inner = ", ".join(unparse(i, d) for i in node.items)
        return f"({inner},)" if len(node.items) == 1 else f"({inner})"
    if isinstance(node, ast.Call):
        args = [unparse(a, d) for a in node.args] + [f"{k}={unparse(v, d)}" for k, v in node.kwargs]
        return f"{node.func}({', '.join(args)})"
    return "?"


def _item(item, depth):
    if isinstance(item, ast.Slice):
        lo = "" if item.lo is None else unparse(item.lo, depth)
        hi = "" if item.hi is None else unparse(item.hi, depth)
        return f"{lo}:{hi}"
    return unparse(item, depth)


def _precedence(node) -> int:
    if isinstance(node, ast.BinOp):
        return _PREC[node.op]
    if isinstance(node, ast.UnaryOp):
        return _PREC["neg"]
    if isinstance(node, ast.Number) and node.value < 0:
        return _PREC["neg"]
    return 9


def _wrap(node, prec, depth):
    text = unparse(node, depth)
    return f"({text})" if _precedence(node) < prec else text
