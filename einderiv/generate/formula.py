"""The `formula` format: a vectorized program printed in the expression language itself."""
from __future__ import annotations

from ..parse.unparse import unparse
from ..vectorize import VectorProgram


def format_formula(program: VectorProgram) -> str:
    """Temporaries on their own lines, then the outputs: a bare expression when there is one,
    `name = expression` lines when there are several. The text parses back through einderiv."""
    lines = [f"{name} = {unparse(expr, limit=10**9)}" for name, expr in program.temporaries]
    if len(program.outputs) == 1:
        lines.append(unparse(program.outputs[0][1], limit=10**9))
    else:
        lines += [f"{name} = {unparse(expr, limit=10**9)}" for name, expr in program.outputs]
    return "\n".join(lines)
