"""Issue 15, point 7: the command line for scripts, and numpy-style spellings.

An expression that starts with '-' is the expression wherever it stands; `--format json` prints
every format in one object; `np.exp(x)`, `x.sum()` and `x ^ 2` get an error whose caret is under
what to change and whose hint says how.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import einderiv
from einderiv import cli


def _cli(capsys, *argv):
    """einderiv's command line in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse's own errors, --help
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def _parse_error(source):
    with pytest.raises(einderiv.ParseError) as e:
        einderiv.grad(source, "x", {"x": ("n",)})
    return e.value


# -- numpy spellings ---------------------------------------------------------------------------

@pytest.mark.parametrize("source, column, caret, hint", [
    ("sum(np.exp(x))", 5, "^^^", "the language has exp(x): drop the 'np.' prefix"),
    ("sum(numpy.log(x))", 5, "^^^^^^", "the language has log(x): drop the 'numpy.' prefix"),
    ("np.linalg.norm(x)", 1, "^" * 10, "the language has norm(x): drop the 'np.linalg.' prefix"),
    ("sum(jnp.tanh(2 * x))", 5, "^^^^", "the language has tanh(2 * x): drop the 'jnp.' prefix"),
    ("sum(x.exp())", 5, "^^^^^", "write exp(x)"),
    ("x.sum(axis=0)", 1, "^^^^^", "write sum(x, axis=0)"),
])
def test_dotted_calls_point_at_the_prefix(source, column, caret, hint):
    e = _parse_error(source)
    assert e.hint == hint
    assert (e.line, e.column) == (1, column)
    line, marks = str(e).splitlines()[1:3]
    assert line.strip() == source and marks.strip() == caret
    assert marks.index("^") - 2 == column - 1  # under the prefix, two spaces of indent


def test_dotted_call_on_a_later_line_is_located():
    e = _parse_error("y = 2 * x\nsum(np.exp(y))")
    assert (e.line, e.column) == (2, 5) and "drop the 'np.' prefix" in e.hint


def test_a_module_function_the_language_lacks_says_so():
    e = _parse_error("sum(np.foo(x))")
    assert "no 'foo'" in e.hint and "docs/language.md" in e.hint


@pytest.mark.parametrize("source, column, example", [
    ("sum(x ^ 2)", 7, "x ** 2"),
    ("sum(x^3.5)", 6, "x ** 3.5"),
    ("sum((x + 1) ^ 2)", 13, "a ** b"),
])
def test_caret_is_not_power(source, column, example):
    e = _parse_error(source)
    assert e.message == "unexpected character '^'" and e.column == column
    assert e.hint == f"'^' is not power: write {example}"


def test_a_numpy_spelling_is_an_error_on_the_command_line_too(capsys):
    status, out, err = _cli(capsys, "grad", "sum(np.exp(x))", "--wrt", "x", "--shape", "x=n")
    assert status == 2 and out == ""
    assert "^^^" in err and "drop the 'np.' prefix" in err


def test_other_unexpected_parentheses_keep_the_plain_error():
    e = _parse_error("sum(x).T(2)")
    assert e.message == "unexpected '('"
