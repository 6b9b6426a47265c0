"""Errors (SPEC §2): what went wrong, where (line, column, a caret under the text), and a hint.

Also hostile input: every case must end in an `EinderivError` in bounded time, never in a
RecursionError, another internal exception, or a hang.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import einderiv
from einderiv import (EinderivError, EvaluationError, InputError, ParseError, RuleError,
                      ShapeError, UnknownNameError)
from einderiv import fn

SHAPES = {"x": ("n",), "y": ("n",), "v": ("k",), "X": ("n", "d"), "w": ("d",), "W": ("m", "n"),
          "b": ("m",), "A": ("n", "n"), "weights": ("n",), "c": ()}


def error_of(source, shapes=SHAPES, kind=EinderivError) -> EinderivError:
    with pytest.raises(kind) as info:
        einderiv.compile(source, shapes)
    return info.value


def caret(error: EinderivError) -> tuple[str, int, int]:
    """The quoted source line, and the 0-based column and width of the caret under it."""
    lines = str(error).splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"^"})
    marks = lines[k]
    start = marks.index("^")
    return lines[k - 1], start - 2, marks.count("^")  # both lines are indented by 2


def marked_text(error: EinderivError) -> str:
    quoted, col, width = caret(error)
    return quoted[2 + col:2 + col + width]


# -- the error classes ---------------------------------------------------------------------------

def test_error_hierarchy():
    for cls in (ParseError, ShapeError, UnknownNameError, InputError, EvaluationError, RuleError):
        assert issubclass(cls, EinderivError)
    assert issubclass(EinderivError, Exception)


# -- parse errors: position and caret ------------------------------------------------------------

def test_parse_error_has_line_column_and_caret():
    e = error_of("x + * y", kind=ParseError)
    assert (e.line, e.column) == (1, 5)
    assert str(e).startswith("line 1, column 5: unexpected '*'")
    assert caret(e) == ("  x + * y", 4, 1)


def test_caret_column_in_multi_line_input():
    source = "h = W @ x\nz = h +\nq = (b * * b)\nsum(q)"
    e = error_of(source, kind=ParseError)
    assert (e.line, e.column) == (2, 8)  # "z = h +" ends the line early
    assert caret(e)[0] == "  z = h +"

    source = "h = W @ x\n\n  z = (h *\n       b) ** ** 2\nsum(z)"
    e = error_of(source, kind=ParseError)
    assert (e.line, e.column) == (4, 14)
    quoted, col, width = caret(e)
    assert quoted == "         b) ** ** 2"
    assert col == 13 and marked_text(e) == "**"
    assert e.column == col + 1


def test_caret_under_the_offending_token():
    e = error_of("a = x\nb = a $ y\nb", kind=ParseError)
    assert (e.line, e.column) == (2, 7)
    assert marked_text(e) == "$"
    e = error_of("sum(x, axis=0 0)", kind=ParseError)
    assert marked_text(e) == "0" and e.column == 15


def test_caret_on_a_long_line_stays_under_the_error():
    source = "x" + " + x" * 200 + " + )" + " + x" * 200
    e = error_of(source, kind=ParseError)
    assert e.column == source.index(")") + 1
    assert marked_text(e) == ")"
    assert len(caret(e)[0]) < 120  # the quoted line is cut around the error


def test_caret_with_tabs_lines_up():
    e = error_of("x +\t* y", kind=ParseError)
    assert e.column == 5
    assert marked_text(e) == "*"


def test_unexpected_end_of_input():
    e = error_of("sum(x", kind=ParseError)
    assert "end of input" in str(e)
    assert e.line == 1
    e = error_of("a = x +", kind=ParseError)
    assert "end of input" in str(e) and e.column == 7


def test_parse_error_lists_what_was_expected():
    e = error_of("x + * y", kind=ParseError)
    assert "hint: expected" in str(e) and "a name" in str(e)
    assert "new line" not in str(e)  # a newline cannot follow '+'


def test_position_of_errors_found_after_parsing():
    """Shape and name errors point at the offending expression, on the right line."""
    e = error_of("a = x + y\nb = sum(a) * W\nc = b + v\nc", kind=ShapeError)
    assert (e.line, e.column) == (3, 5)
    assert marked_text(e) == "b + v"
    e = error_of("a = x\n\nb = a * wieghts", kind=UnknownNameError)
    assert (e.line, e.column) == (3, 9)
    assert marked_text(e) == "wieghts"


# -- shape errors ----------------------------------------------------------------------------------

def test_matmul_mismatch_names_both_operands_and_shapes():
    e = error_of("X @ w", {"X": ("n", "d"), "w": ("n",)}, ShapeError)
    message = str(e)
    assert "X [n, d]" in message and "w [n]" in message
    assert "matmul" in message


def test_matmul_mismatch_names_compound_operands():
    e = error_of("(X.T @ X) @ W", kind=ShapeError)
    assert "X.T @ X [d, d]" in str(e) and "W [m, n]" in str(e)


def test_broadcast_mismatch_names_operands_and_shapes():
    e = error_of("tanh(W @ x) + x", kind=ShapeError)
    assert "tanh(W @ x) [m]" in str(e) and "x [n]" in str(e)
    assert "m" in e.message and "n" in e.message
    e = error_of("x * v", kind=ShapeError)
    assert "x [n]" in str(e) and "v [k]" in str(e)


def test_matmul_of_a_scalar():
    e = error_of("x @ c", kind=ShapeError)
    assert "hint: use *" in str(e)


@pytest.mark.parametrize("source, fragment", [
    ("sum(x, axis=1)", "out of bounds"),
    ("sum(X, axis=(0, 0))", "repeats"),
    ("x[5]", "out of bounds"),
    ("x[0, 0]", "too many indices"),
    ("tr(X)", "square"),
    ("inv(W)", "square"),
    ("einsum('ij,jk->ik', X, W)", "einsum"),
])
def test_other_shape_errors(source, fragment):
    e = error_of(source, {**SHAPES, "x": (3,)}, ShapeError)
    assert fragment in str(e)
    assert e.line == 1


def test_conflicting_declarations():
    e = error_of("x: [m]\nx", kind=ShapeError)
    assert "[m]" in str(e) and "[n]" in str(e)
    e = error_of("q: [n]\nq: [d]\nq", None, ShapeError)
    assert e.line == 2


@pytest.mark.parametrize("shapes", [
    {"x": ("n", 1.5)}, {"x": None}, {"x": ("n", -2)}, {"x": ("n d",)}, {"x": (True,)},
    {1: ("n",)}, {"x y": ("n",)}, ["x"],
])
def test_bad_shapes_argument(shapes):
    with pytest.raises(EinderivError):
        einderiv.compile("x", shapes)


def test_call_time_shape_mismatch_names_the_variable():
    f = einderiv.compile("x + y", {"x": ("n",), "y": ("n",)})
    with pytest.raises(ShapeError) as info:
        f(x=np.ones(3), y=np.ones(4))
    assert "'y'" in str(info.value) and "(4,)" in str(info.value) and "[n]" in str(info.value)
    with pytest.raises(InputError, match="missing"):
        f(x=np.ones(3))


# -- unknown names: did you mean -------------------------------------------------------------------

def test_unknown_function_suggests_the_close_one():
    e = error_of("tanhh(x)", kind=UnknownNameError)
    assert "unknown function 'tanhh'" in str(e)
    assert "did you mean 'tanh'" in str(e)
    assert (e.line, e.column) == (1, 1) and marked_text(e) == "tanhh"


@pytest.mark.parametrize("source, suggestion", [
    ("sigmod(x)", "sigmoid"), ("sofmax(x)", "softmax"), ("logsumexpp(x)", "logsumexp"),
    ("maximun(x, y)", "maximum"), ("summ(x)", "sum"), ("trase(A)", "trace"), ("exq(x)", "exp"),
])
def test_unknown_function_suggestions(source, suggestion):
    assert f"'{suggestion}'" in str(error_of(source, kind=UnknownNameError))


def test_misspelt_variable_suggests_the_declared_one():
    e = error_of("sum(wieghts * x)", kind=UnknownNameError)
    assert "unknown name 'wieghts'" in str(e)
    assert "did you mean 'weights'" in str(e)
    assert marked_text(e) == "wieghts"


def test_misspelt_binding_suggests_the_bound_name():
    e = error_of("hidden = tanh(W @ x)\nsum(hiden)", kind=UnknownNameError)
    assert "did you mean 'hidden'" in str(e)
    assert (e.line, e.column) == (2, 5)


def test_inline_declarations_are_suggested():
    e = error_of("Xmat: [n, d]\nsum(Xmta)", None, UnknownNameError)
    assert "'Xmat'" in str(e)


def test_undeclared_name_is_an_error_not_a_scalar():
    e = error_of("sum(x) * alpha", kind=UnknownNameError)
    assert "unknown name 'alpha'" in str(e)
    assert "declare it" in str(e)


def test_use_before_binding_is_an_error():
    e = error_of("a = b2 * 2\nb2 = x\na", kind=UnknownNameError)
    assert e.line == 1


def test_unknown_function_on_python_built_expression():
    with pytest.raises(UnknownNameError, match="tanh"):
        fn.tanhh


# -- other language errors -------------------------------------------------------------------------

@pytest.mark.parametrize("source, kind, fragment", [
    ("x.Q", ParseError, ".T"),
    ("exp(x, y)", ParseError, "takes 1 argument"),
    ("exp(x, axis=0)", ParseError, "no keyword"),
    ("sum(x, axes=0)", ParseError, "unexpected keyword argument 'axes'"),
    ("sum(x, axis=x)", ParseError, "integer"),
    ("sum(x, axis=0, axis=0)", ParseError, "twice"),
    ("'abc'", ParseError, "string"),
    ("(x, y)", ParseError, "tuple"),
    ("None", ParseError, "None"),
    ("x: [n]", ParseError, "no output"),
    ("x[1.5]", ParseError, "integer"),
    ("einsum(x)", ParseError, "subscript string"),
    ("einsum('ij,j->q', X, w)", ParseError, "'q'"),
])
def test_language_errors(source, kind, fragment):
    e = error_of(source, kind=kind)
    assert fragment in str(e)


# -- hostile input -------------------------------------------------------------------------------

HOSTILE = {
    "parentheses 10000 deep": "(" * 10_000 + "x" + ")" * 10_000,
    "brackets 10000 deep": "x" + "[" * 10_000 + "0" + "]" * 10_000,
    "calls 10000 deep": "exp(" * 10_000 + "x" + ")" * 10_000,
    "unbalanced opening": "(" * 50_000,
    "unbalanced closing": ")" * 50_000,
    "1 MB expression": "x + " * 250_000 + "x",
    "1 MB of one name": "x" * 1_000_000,
    "NUL byte": "x\x00+ y",
    "only NUL bytes": "\x00" * 1000,
    "NUL in a comment": "x # \x00\ny",
    "minus sign U+2212": "x \u2212 y",
    "times U+00D7": "x \u00d7 y",
    "asterisk operator U+2217": "x \u2217 y",
    "dot operator U+22C5": "x \u22c5 y",
    "division U+00F7": "x \u00f7 y",
    "fullwidth parentheses": "exp\uff08x\uff09",
    "en dash": "x \u2013 y",
    "curly quotes": "einsum(\u201cij->i\u201d, X)",
    "non-breaking space": "x +\u00a0y",
    "zero width space": "x\u200b+ y",
    "right-to-left override": "x + \u202ey",
    "greek name": "\u03b1 * x",
    "emoji": "x + \U0001f600",
    "lone surrogate": "x + \ud800",
    "undeclared name": "sum(x * undeclared)",
    "dimension mismatch": "x + v",
    "huge dimension": "q: [" + "9" * 5000 + "]\nq",
    "huge index": "x[" + "1" * 5000 + "]",
    "huge axis": "sum(x, axis=" + "9" * 400 + ")",
    "very long name": "a" * 150_000,
    "many statements without output": "x: [n]\n" * 20_000,
    "deep unary minus over the limit": "-" * 300_000 + "x",
    "form feed and vertical tab": "x\x0b+\x0cy",
    "carriage returns only": "x\ry",
    "empty": "",
    "only spaces": "   \n\t\n  ",
}


@pytest.mark.parametrize("label", list(HOSTILE))
def test_hostile_input_ends_in_a_clean_error(label):
    source = HOSTILE[label]
    start = time.perf_counter()
    with pytest.raises(EinderivError) as info:
        einderiv.compile(source, SHAPES)
    assert time.perf_counter() - start < 5, label
    message = str(info.value)
    assert message and "Traceback" not in message
    assert len(message) < 2000  # the caret line is cut, not a megabyte of source


@pytest.mark.parametrize("char, ascii_", [
    ("\u2212", "-"), ("\u00d7", "*"), ("\u2217", "*"), ("\u22c5", "*"), ("\u00f7", "/"),
    ("\u2013", "-"),
])
def test_lookalike_operators_get_a_hint(char, ascii_):
    e = error_of(f"a = x\nb = a {char} y\nb", kind=ParseError)
    assert (e.line, e.column) == (2, 7)
    assert f"replace it with the ASCII {ascii_!r}" in str(e)
    assert marked_text(e) == char


def test_nul_byte_is_located_and_shown_safely():
    e = error_of("x + y\x00", kind=ParseError)
    assert (e.line, e.column) == (1, 6)
    assert "\x00" not in str(e)
    assert "control character" in str(e)


def test_non_ascii_in_code_is_located():
    e = error_of("a = x\nb = α * a\nb", kind=ParseError)
    assert (e.line, e.column) == (2, 5)
    assert "GREEK SMALL LETTER ALPHA" in str(e)
    assert marked_text(e) == "α"


# Deep or long but valid: these must work, or fail with EinderivError quickly. The four slowest
# take LONG operations: 5,000 by default (five times the default recursion limit), 20,000 with
# EINDERIV_SLOW=1.
LONG = 20_000 if os.environ.get("EINDERIV_SLOW") else 5_000
VALID_BUT_BIG = {
    "long chain of additions": "x" + " + x" * LONG,
    "long chain of products": "x" + " * y" * LONG,
    "alternating chain": "x" + " + y * x - y / x" * (LONG // 4),
    "transposes": "x" + ".T" * 20_000,
    "unary minus chain": "-" * 20_000 + "x",
    "power tower": "x" + " ** y" * 5_000,
    "index chain": "x" + "[:]" * 5_000,
    "nesting at the limit": "exp(" * 199 + "x" + ")" * 199,
    "many bindings": "a = x\n" + "a = a + x\n" * (LONG // 2) + "a",
    "repeated squaring": "a = x\n" + "a = a * a\n" * 1000 + "a",
    "repeated doubling": "a = x\n" + "a = a + a\n" * 3000 + "a",
    "wide sum": " + ".join(f"x * {k}" for k in range(10_000)),
}


@pytest.mark.parametrize("label", list(VALID_BUT_BIG))
def test_big_valid_input_works_or_fails_cleanly(label):
    source = VALID_BUT_BIG[label]
    start = time.perf_counter()
    try:
        f = einderiv.compile(source, SHAPES)
        f.einstein
        with np.errstate(all="ignore"):
            out = f(**{k: np.full(3, 0.5) for k in f.inputs})
        assert np.shape(out) == (3,)
    except EinderivError:
        pass
    assert time.perf_counter() - start < 10, label


def test_python_built_chain_5000_deep():
    x = einderiv.var("x", ("n",))
    W = einderiv.var("W", ("n", "n"))
    h = x
    for _ in range(5000):
        h = fn.sigmoid(W @ h + x)
    start = time.perf_counter()
    f = einderiv.compile(h)
    f.einstein
    repr(h)
    value = f(x=np.ones(2), W=np.eye(2) * 0.1)
    assert value.shape == (2,)
    assert time.perf_counter() - start < 20


def test_python_built_error_deep_in_a_chain_is_clean():
    x, v = einderiv.var("x", ("n",)), einderiv.var("v", ("k",))
    h = x
    for _ in range(3000):
        h = fn.tanh(h) + x
    with pytest.raises(ShapeError) as info:
        einderiv.compile(h + v)
    assert "v [k]" in str(info.value)
    assert len(str(info.value)) < 1000


def test_nonfinite_number_literals_do_not_crash():
    f = einderiv.compile("1e999 * x + 1e-999", SHAPES)
    with np.errstate(all="ignore"):
        assert np.all(np.isinf(f(x=np.ones(2))))


def test_an_implementation_that_rejects_arrays_is_an_evaluation_error(
        tmp_path, restore_default_rules):
    # math.floor takes one number, not an array: a user's rule table can name anything.
    path = tmp_path / "scalar_only.rules"
    path.write_text("elementwise badf(x) = math:floor\nd badf(x) / dx = 0 * x\n")
    einderiv.load_rules(path, allow_imports=True)
    f = einderiv.compile("2 * badf(x)", {"x": ("n",)})
    for call in (f, f.evaluate_ir):
        with pytest.raises(EvaluationError, match="implementation in the rule tables"):
            call(x=np.ones(3))
