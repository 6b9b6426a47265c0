"""Common subexpressions of the vectorized program become temporaries.

The IR shares every node, but one IR product can be written into several array expressions
(`t8 * t9` in each of an RNN's weight gradients), so the vectorized program is searched once
more for repeated subexpressions, largest first.
"""
from __future__ import annotations

from collections import Counter

from ..parse import ast
from ..parse.unparse import unparse

# Only expressions that do work are worth a name: not names, numbers or plain views.
_WORK = (ast.BinOp, ast.Call, ast.UnaryOp)


def share_repeats(temporaries: list, outputs: list, taken: set) -> tuple[list, list]:
    lines = [*temporaries, *outputs]
    counts: Counter = Counter()
    for _, expr in lines:
        for sub in _subexpressions(expr):
            counts[_key(sub)] += 1
    repeated = {k for k, c in counts.items() if c >= 2}
    if not repeated:
        return temporaries, outputs
    counter = 0
    new_lines: list = []
    named: dict[str, str] = {}
    for index, (name, expr) in enumerate(lines):
        # Largest first: a repeated outer expression takes its repeated insides with it.
        for sub in sorted(_subexpressions(expr), key=lambda e: -len(_key(e))):
            key = _key(sub)
            if key not in repeated or key in named or sub is expr:
                continue
            while f"t{counter}" in taken:
                counter += 1
            temp = f"t{counter}"
            taken.add(temp)
            named[key] = temp
            new_lines.append((temp, _replace(_copy(sub), named, inside_only=True), None))
        new_lines.append((name, _replace(expr, named), index < len(temporaries)))
    temps = [(n, e) for n, e, is_temp in new_lines if is_temp is not False]
    outs = [(n, e) for n, e, is_temp in new_lines if is_temp is False]
    return temps, outs


def _key(expr) -> str:
    return unparse(expr, limit=10**9, max_depth=400)


# Calls whose arguments are only dimensions (`ones(1)`, `eye(n)`) cost nothing to repeat.
_CONSTANT_CALLS = {"ones", "zeros", "eye", "size"}


def _subexpressions(expr):
    stack = [expr]
    while stack:
        e = stack.pop()
        trivial = (isinstance(e, ast.Call) and e.func in _CONSTANT_CALLS) or \
            (isinstance(e, ast.UnaryOp) and isinstance(e.operand, (ast.Name, ast.Number)))
        if isinstance(e, _WORK) and not trivial:
            yield e
        stack.extend(_children(e))


def _children(e):
    if isinstance(e, ast.BinOp):
        return [e.left, e.right]
    if isinstance(e, (ast.UnaryOp,)):
        return [e.operand]
    if isinstance(e, (ast.Attribute, ast.Index)):
        return [e.operand]
    if isinstance(e, ast.Call):
        return [a for a in e.args if not isinstance(a, (ast.String, ast.Tuple))]
    return []


def _replace(e, named: dict, inside_only: bool = False):
    """`e` with every subexpression that has a name replaced by that name (in place); with
    `inside_only`, `e` itself is kept (it is the definition of such a name)."""
    if not inside_only and isinstance(e, _WORK) and _key(e) in named:
        return ast.Name(named[_key(e)])
    if isinstance(e, ast.BinOp):
        e.left, e.right = _replace(e.left, named), _replace(e.right, named)
    elif isinstance(e, (ast.UnaryOp, ast.Attribute, ast.Index)):
        e.operand = _replace(e.operand, named)
    elif isinstance(e, ast.Call):
        e.args = tuple(a if isinstance(a, (ast.String, ast.Tuple)) else _replace(a, named)
                       for a in e.args)
    return e


def _copy(e):
    """A copy of the tree, so replacing inside one occurrence leaves the others alone."""
    if isinstance(e, ast.BinOp):
        return ast.BinOp(e.op, _copy(e.left), _copy(e.right))
    if isinstance(e, ast.UnaryOp):
        return ast.UnaryOp(e.op, _copy(e.operand))
    if isinstance(e, ast.Attribute):
        return ast.Attribute(_copy(e.operand), e.attr)
    if isinstance(e, ast.Index):
        return ast.Index(_copy(e.operand), e.items)
    if isinstance(e, ast.Call):
        c = ast.Call(e.func, tuple(_copy(a) if not isinstance(a, (ast.String, ast.Tuple)) else a
                                   for a in e.args), e.kwargs)
        if hasattr(e, "operand_shapes"):
            c.operand_shapes = e.operand_shapes
        return c
    return e


def names_in(expr) -> set[str]:
    """Every name an expression reads."""
    found, stack = set(), [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Name):
            found.add(e.id)
        stack.extend(_children(e))
        if isinstance(e, ast.Index):
            stack.extend(i for i in e.items if isinstance(i, ast.Expr))
    return found
