"""The `formula` format: a vectorized program printed in the expression language itself."""
from __future__ import annotations

from ..parse.unparse import unparse
from ..vectorize import VectorProgram

# The vectorizer bounds how deep an expression nests (temporaries cut deeper ones), so a formula
# is printed whole: no character budget, and a depth limit only as a guard.
_WHOLE = dict(limit=10**9, max_depth=400)


def format_formula(program: VectorProgram) -> str:
    """Temporaries on their own lines, then the outputs: a bare expression when there is one,
    `name = expression` lines when there are several. The text parses back through einderiv."""
    lines = [f"{name} = {unparse(expr, **_WHOLE)}" for name, expr in program.temporaries]
    if len(program.outputs) == 1:
        lines.append(unparse(program.outputs[0][1], **_WHOLE))
    else:
        lines += [f"{name} = {unparse(expr, **_WHOLE)}" for name, expr in program.outputs]
    return "\n".join(lines)
