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


# -- an expression that starts with '-' ------------------------------------------------------

X = np.array([0.5, 2.0, 4.0])


def _formula_value(formula, shapes=None):
    return einderiv.compile(formula, shapes or {"x": ("n",)})(x=X)


@pytest.mark.parametrize("argv", [
    ["grad", "-sum(log(x))", "--wrt", "x", "--shape", "x=n"],
    ["grad", "--wrt", "x", "-sum(log(x))", "--shape", "x=n"],
    ["grad", "--wrt", "x", "--shape", "x=n", "-sum(log(x))"],
    ["grad", "--wrt=x", "--shape=x=n", "-sum(log(x))"],
    ["grad", "--wr", "x", "-sum(log(x))", "--sh", "x=n"],  # abbreviations take their values
    ["grad", "--wrt", "x", "--shape", "x=n", "--", "-sum(log(x))"],  # '--' still works
], ids=["first", "between", "last", "attached values", "abbreviations", "after --"])
def test_expression_starting_with_minus_anywhere(capsys, argv):
    status, out, err = _cli(capsys, *argv)
    assert status == 0, err
    np.testing.assert_allclose(_formula_value(out.strip()), -1 / X)


@pytest.mark.parametrize("argv, expected", [
    (["einstein", "-x", "--shape", "x=n"], "out[i] = -x[i]"),  # -x: not an option of einstein
    (["einstein", "--shape", "x=n", "-2 * x"], "out[i] = -2*x[i]"),
    (["jacobian", "-exp(x)", "--wrt", "x", "--shape", "x=n", "--format", "einstein"],
     "dx[i,j] = -delta[i,j]*exp(x[j])"),
])
def test_every_command_with_an_expression_takes_one_starting_with_minus(capsys, argv, expected):
    status, out, err = _cli(capsys, *argv)
    assert status == 0, err
    assert out.strip() == expected


def test_hessian_of_an_expression_starting_with_minus(capsys):
    status, out, err = _cli(capsys, "hessian", "--wrt", "x", "-sum(log(x))", "--shape", "x=n")
    assert status == 0, err
    np.testing.assert_allclose(_formula_value(out.strip()), np.diag(1 / X ** 2))


def test_options_stay_options(capsys):
    """-h is help; an option's value is its value even when it starts with '-'; an unknown
    `--name` is reported as an option, not taken for the expression."""
    status, out, _ = _cli(capsys, "grad", "-h")
    assert status == 0 and "usage: einderiv grad" in out
    status, _, err = _cli(capsys, "grad", "-sum(x)", "--wrt", "x", "--shape", "x=n", "--check",
                          "--tol", "-1")
    assert status == 2 and "--tol: expected a positive number, got '-1'" in err
    status, _, err = _cli(capsys, "grad", "-sum(x)", "--wrt", "x", "--shape", "x=n", "--bogus")
    assert status == 2 and "unrecognized arguments: --bogus" in err
    status, out, err = _cli(capsys, "grad", "--wrt", "x", "--shape", "x=n", "--check",
                            "-sum(x * x)")
    assert status == 0, err
    assert out.splitlines()[0] == "-2 * x" and out.splitlines()[1].startswith("# check:")


def test_two_expressions_are_an_error(capsys):
    status, _, err = _cli(capsys, "grad", "-sum(x)", "--wrt", "x", "--shape", "x=n", "--",
                          "-sum(log(x))")
    assert status == 2 and "unrecognized arguments: -sum(log(x))" in err
    status, _, err = _cli(capsys, "grad", "sum(x)", "-sum(x)", "--wrt", "x", "--shape", "x=n")
    assert status == 2 and "unrecognized arguments" in err


def test_standard_input_is_still_a_dash(capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("-sum(log(x))"))
    status, out, err = _cli(capsys, "grad", "-", "--wrt", "x", "--shape", "x=n")
    assert status == 0, err
    np.testing.assert_allclose(_formula_value(out.strip()), -1 / X)


def test_standard_input_may_start_with_a_byte_order_mark(capsys, monkeypatch):
    # (a file saved as UTF-8 by a Windows editor, piped in: the mark is no character of the
    # expression; elsewhere in the text it stays an error)
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeff-sum(log(x))"))
    status, out, err = _cli(capsys, "grad", "-", "--wrt", "x", "--shape", "x=n")
    assert status == 0, err
    np.testing.assert_allclose(_formula_value(out.strip()), -1 / X)
    monkeypatch.setattr("sys.stdin", io.StringIO("-sum(\ufefflog(x))"))
    status, _, err = _cli(capsys, "grad", "-", "--wrt", "x", "--shape", "x=n")
    assert status == 2 and "unexpected character" in err


def test_rules_commands_are_untouched(capsys):
    status, out, _ = _cli(capsys, "rules", "list", "tanh")
    assert status == 0 and "tanh" in out


# -- --format json -----------------------------------------------------------------------------

def test_format_json_has_every_format_and_the_signature(capsys):
    status, out, err = _cli(capsys, "grad", "sum(W @ x)", "--wrt", "W", "--shape", "W=m,3",
                            "--shape", "x=3", "--format", "json")
    assert status == 0, err
    document = json.loads(out)
    result = einderiv.grad("sum(W @ x)", "W", {"W": ("m", 3), "x": (3,)})
    assert document["formula"] == result.formula.rstrip("\n")
    assert document["einstein"] == result.einstein.rstrip("\n")
    assert document["einsum"] == result.einsum.rstrip("\n")
    assert document["python"] == result.source.rstrip("\n")
    assert document["latex"] == result.latex.rstrip("\n")
    assert document["kind"] == "grad" and document["wrt"] == ["W"]
    assert list(result.inputs) == ["W", "x"]  # W gives m, the size of the gradient
    assert list(document["inputs"].items()) == [("W", ["m", 3]), ("x", [3])]  # call order
    assert document["outputs"] == {"dW": ["m", 3]}
    assert "check" not in document


def test_format_json_of_a_hessian_of_two_variables(capsys):
    status, out, err = _cli(capsys, "hessian", "x @ A @ x", "--wrt", "x", "--wrt", "A",
                            "--shape", "x=n", "--shape", "A=n,n", "--format", "json")
    assert status == 0, err
    document = json.loads(out)
    assert document["outputs"] == {"dxdx": ["n", "n"], "dxdA": ["n", "n", "n"],
                                   "dAdx": ["n", "n", "n"], "dAdA": ["n", "n", "n", "n"]}


def test_format_json_with_check_is_one_object(capsys):
    status, out, err = _cli(capsys, "grad", "sum(x * x)", "--wrt", "x", "--shape", "x=n",
                            "--format", "json", "--check")
    assert status == 0, err
    check = json.loads(out)["check"]
    assert check["ok"] is True and check["tolerance"] == 1e-4 and 0 <= check["error"] < 1e-8


def test_format_json_with_a_failed_check(capsys):
    """Still one object on stdout (a NaN error is null), the failure on stderr, exit 1."""
    status, out, err = _cli(capsys, "grad", "sum(sqrt(x - 10))", "--wrt", "x", "--shape", "x=n",
                            "--format", "json", "--check")
    assert status == 1 and "check failed" in err
    assert json.loads(out)["check"] == {"error": None, "tolerance": 1e-4, "ok": False}


def test_format_json_errors_stay_human_text(capsys):
    status, out, err = _cli(capsys, "grad", "sum(x ^ 2)", "--wrt", "x", "--shape", "x=n",
                            "--format", "json")
    assert status == 2 and out == ""
    assert err.startswith("einderiv: error: line 1, column 7") and "x ** 2" in err
