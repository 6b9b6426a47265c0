"""The `formula` format: a vectorized program printed in the expression language itself."""
from __future__ import annotations

from ..parse import ast
from ..parse.unparse import unparse
from ..vectorize import VectorProgram

# The vectorizer bounds how deep an expression nests (temporaries cut deeper ones), so a formula
# is printed whole: never an elision (`...`), which would not parse back.
_WHOLE = dict(limit=None, max_depth=None)


def format_formula(program: VectorProgram) -> str:
    """Temporaries on their own lines, then the outputs: a bare expression when there is one,
    `name = expression` lines when there are several. The text parses back through einderiv."""
    lines = [f"{name} = {unparse(expr, **_WHOLE)}" for name, expr in program.temporaries]
    if len(program.outputs) == 1:
        name, expr = program.outputs[0]
        if isinstance(expr, ast.Name) and expr.id == name and lines and \
                program.temporaries[-1][0] == name:  # the last line is it
            lines[-1] = lines[-1].split(" = ", 1)[1]
        else:
            lines.append(unparse(expr, **_WHOLE))
    else:
        lines += [f"{name} = {unparse(expr, **_WHOLE)}" for name, expr in program.outputs
                  if not (isinstance(expr, ast.Name) and expr.id == name)]  # defined above
    return "\n".join(lines)


def output_programs(formula: str, names: list[str]) -> list[tuple[str, str]]:
    """Each output's own program: `(name, text)` with the formula's lines up to the one that
    defines output `name` (an output other outputs use is defined where it is first needed, not
    necessarily last). `names` are the printed output names, `program.outputs` in order; with
    one output the whole formula is its program. Each text parses back through einderiv.

    Raises ValueError when an output has no `name = ...` line.
    """
    lines = formula.split("\n")
    if len(names) == 1:
        return [(names[0], formula)]
    programs = []
    for name in names:
        where = next((i for i, line in enumerate(lines) if line.startswith(f"{name} = ")), None)
        if where is None:
            raise ValueError(f"output '{name}' has no line '{name} = ...' in the formula")
        programs.append((name, "\n".join(lines[:where + 1])))
    return programs
