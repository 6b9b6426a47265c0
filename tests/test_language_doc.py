"""docs/language.md, the language reference (issue 14, item 8), says what the language is.

- Every function of the shipped rule tables and every built-in call has an entry in one of its
  tables (a row starting with the function called), and the entry of an axis function names
  its default axes: the last axis for softmax and its kin, every axis for the reductions.
- Every operator of the grammar is in its precedence table, and the parser's limits are the
  numbers it states.
- Every example in it (```pycon sessions, from the repository root) runs and prints what it
  shows, and every section has one.
- No text that einderiv shows a user (messages, hints, --help, the docstrings of the public
  API) sends them to a "SPEC" they do not have: they point to docs/language.md.
"""
from __future__ import annotations

import ast
import contextlib
import doctest
import inspect
import io
import re
from pathlib import Path

import pytest

import einderiv
from einderiv import cli
from einderiv.lower.calls import BUILTINS, DIMENSION_FUNCTIONS
from einderiv.parse import parser
from einderiv.rulebook import default_rulebook

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "language.md"
TEXT = DOC.read_text()
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.M | re.S)


def rows() -> dict[str, str]:
    """Each function named at the start of a table row (`| \\`f(x)\\`, \\`g(x)\\` | ...`) ->
    that row."""
    found = {}
    for line in TEXT.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            for name in re.findall(r"`([a-z_]\w*)\(", first):
                found.setdefault(name, line)
    return found


def test_every_function_of_the_rule_tables_has_an_entry():
    documented = rows()
    missing = sorted(set(default_rulebook().functions) - set(documented))
    assert not missing, f"docs/language.md has no table row for {missing}"


def test_every_builtin_has_an_entry():
    documented = rows()
    missing = sorted((set(BUILTINS) | DIMENSION_FUNCTIONS) - set(documented))
    assert not missing, f"docs/language.md has no table row for {missing}"


def test_the_default_axes_are_stated():
    """softmax works along the last axis by default, logsumexp over every entry: the entry of
    each axis function says which, as the rule table's shape rule has it."""
    documented = rows()
    for f in default_rulebook().functions.values():
        if f.kind == "tensor" and f.axis:
            wanted = "the last axis" if f.shape in ("same", "cotangent") else "every axis"
            assert wanted in documented[f.name], (f.name, wanted)
    for name in ("sum", "mean"):
        assert "every axis" in documented[name]


def test_every_operator_is_in_the_precedence_table():
    grammar = (ROOT / "einderiv" / "parse" / "grammar.lark").read_text()
    operators = set(re.findall(
        r'"([^"\w]+)"\s+\w+\s+->\s+(?:add|sub|mul|div|floordiv|matmul|pow)\b', grammar))
    operators |= set(re.findall(r'"([^"\w]+)"\s+unary\s+->\s+(?:neg|pos)\b', grammar))
    assert operators == {"+", "-", "*", "/", "//", "@", "**"}
    # the comparisons, one terminal of the grammar (they do not chain)
    assert "COMPARISON sum -> compare" in grammar
    operators |= {"<", "<=", ">", ">=", "==", "!="}
    table = TEXT.split("## Operators and precedence", 1)[1].split("\n## ", 1)[0]
    for op in operators | {".T", ".mT"}:
        assert f"`{op}`" in table, op


def test_the_limits_are_the_parsers():
    limits = " ".join(TEXT.split("## Limits", 1)[1].split())
    for number in (parser.MAX_SOURCE_CHARS, parser.MAX_PROGRAM_CHARS):
        assert f"{number:,} characters" in limits
    assert f"{parser.MAX_OPERATIONS:,} operations" in limits
    assert (f"at most {parser.MAX_GRADIENT_OPERATIONS:,} operations for a gradient or Jacobian "
            f"and {parser.MAX_HESSIAN_OPERATIONS:,} for a Hessian") in limits
    assert f"nest at most {parser.MAX_NESTING} deep" in limits


def sessions():
    """(line, text) of each ```pycon block."""
    return [(TEXT.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in FENCE.finditer(TEXT) if m.group(1) == "pycon"]


def test_there_is_an_example_per_group():
    """Each section (each group of functions) ends with a session, and every block of Python
    is a session that runs (not a ```python block that nothing checks)."""
    assert "```python" not in TEXT
    sections = [s for s in re.split(r"^##+ ", TEXT, flags=re.M)[1:]
                if not s.startswith("Functions\n")]
    assert len(sessions()) >= 15
    for section in sections:
        assert "```pycon" in section, section.splitlines()[0]


def test_every_example_runs(monkeypatch, restore_default_rules):
    """The sessions, run as one doctest from the top (each continues the one before); each
    shows what the call prints, compared exactly."""
    monkeypatch.chdir(ROOT)
    parser, runner, report = doctest.DocTestParser(), doctest.DocTestRunner(), []
    globs: dict = {}
    for line, text in sessions():
        test = parser.get_doctest(text, globs, f"language.md:{line}", str(DOC), line - 1)
        runner.run(test, out=report.append, clear_globs=False)
        globs = test.globs
    assert runner.tries >= 60
    assert runner.failures == 0, "".join(report)


def test_the_readme_links_the_reference():
    assert "(docs/language.md)" in (ROOT / "README.md").read_text()


# -- no "SPEC" in what a user sees -----------------------------------------------------------------

def _messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal of a module that is not a docstring: error
    messages, hints, help texts."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_message_or_hint_cites_spec():
    cited = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for path in sorted((ROOT / "einderiv").rglob("*.py"))
             for line, text in _messages(path) if "SPEC" in text]
    assert not cited, "\n".join(cited)


def test_no_public_docstring_cites_spec():
    objects = [einderiv, cli]
    for name in einderiv.__all__:
        obj = getattr(einderiv, name)
        objects.append(obj)
        if inspect.isclass(obj):
            objects += [m for _, m in inspect.getmembers(obj)
                        if inspect.isfunction(m) or isinstance(m, property)]
    cited = [repr(obj) for obj in objects if "SPEC" in (inspect.getdoc(obj) or "")]
    assert not cited


@pytest.mark.parametrize("command", [[], ["einstein"], ["grad"], ["jacobian"], ["hessian"],
                                     ["rules"], ["rules", "list"], ["rules", "check"]])
def test_help_points_to_the_reference(command):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        with contextlib.suppress(SystemExit):
            cli.main([*command, "--help"])
    shown = buffer.getvalue()
    assert "usage:" in shown and "SPEC" not in shown
    if command[:1] != ["rules"]:  # the commands that take an expression, and the top level
        assert "docs/language.md" in shown


def test_the_unknown_function_hint_points_to_the_reference():
    with pytest.raises(einderiv.UnknownNameError) as e:
        einderiv.compile("qqqqqqq(x)", {"x": ("n",)})
    assert "docs/language.md" in str(e.value)
