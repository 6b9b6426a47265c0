"""Stage 1, parsing (SPEC §1): the grammar, the syntax tree it builds, precedence, positions.

Trees are compared as nested tuples (`sexpr` below), so a failure shows the whole parse. The
precedence table is also checked numerically: the compiled expression must agree with the same
expression written as Python/numpy code by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import ParseError
from einderiv.parse import ast, parse
from einderiv.parse.parser import MAX_NESTING, MAX_SOURCE_CHARS


# -- helpers -------------------------------------------------------------------------------------

def sexpr(node):
    """A syntax tree as nested tuples: ('+', 'x', 'y'), ('call', 'sum', args, kwargs) ..."""
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.String):
        return ("str", node.value)
    if isinstance(node, ast.NoneLit):
        return None
    if isinstance(node, ast.BinOp):
        return (node.op, sexpr(node.left), sexpr(node.right))
    if isinstance(node, ast.UnaryOp):
        return ("neg" if node.op == "-" else "pos", sexpr(node.operand))
    if isinstance(node, ast.Attribute):
        return ("." + node.attr, sexpr(node.operand))
    if isinstance(node, ast.Index):
        return ("[]", sexpr(node.operand), tuple(sexpr(i) for i in node.items))
    if isinstance(node, ast.Slice):
        bounds = ("slice", sexpr(node.lo) if node.lo else None, sexpr(node.hi) if node.hi else None)
        return bounds if node.step is None else bounds + (sexpr(node.step),)
    if isinstance(node, ast.Tuple):
        return ("tuple",) + tuple(sexpr(i) for i in node.items)
    if isinstance(node, ast.Call):
        return ("call", node.func, tuple(sexpr(a) for a in node.args),
                tuple((k, sexpr(v)) for k, v in node.kwargs))
    if isinstance(node, ast.Assign):
        return ("=", node.name, sexpr(node.value))
    if isinstance(node, ast.Decl):
        return (":", node.name, tuple(node.dims))
    raise TypeError(type(node))


def tree(source: str):
    """The one statement of `source`, as nested tuples."""
    program = parse(source)
    assert len(program.statements) == 1, program.statements
    return sexpr(program.statements[0])


def statements(source: str):
    return [sexpr(s) for s in parse(source).statements]


def text(source: str, node) -> str:
    return source[node.span.start:node.span.end]


# -- precedence and associativity ----------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    # ** binds tighter than unary minus on its left, and takes one on its right (as in Python)
    ("-x ** 2", ("neg", ("**", "x", 2.0))),
    ("x ** -1", ("**", "x", ("neg", 1.0))),
    ("-x ** -y", ("neg", ("**", "x", ("neg", "y")))),
    ("2 ** -x ** 2", ("**", 2.0, ("neg", ("**", "x", 2.0)))),
    ("x ** 2 ** 3", ("**", "x", ("**", 2.0, 3.0))),  # right-associative
    ("(x ** 2) ** 3", ("**", ("**", "x", 2.0), 3.0)),
    ("(-x) ** 2", ("**", ("neg", "x"), 2.0)),
    # * / @ are one level, left to right
    ("a * b / c @ d", ("@", ("/", ("*", "a", "b"), "c"), "d")),
    ("a @ b * c", ("*", ("@", "a", "b"), "c")),
    ("a / b @ c", ("@", ("/", "a", "b"), "c")),
    ("a @ b @ c", ("@", ("@", "a", "b"), "c")),
    ("a / b / c", ("/", ("/", "a", "b"), "c")),
    # + - are lower, left to right
    ("a - b - c", ("-", ("-", "a", "b"), "c")),
    ("a + b * c", ("+", "a", ("*", "b", "c"))),
    ("a * b + c", ("+", ("*", "a", "b"), "c")),
    ("a - b @ c", ("-", "a", ("@", "b", "c"))),
    ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
    # unary minus sits between * and **
    ("-a * b", ("*", ("neg", "a"), "b")),
    ("a * -b", ("*", "a", ("neg", "b"))),
    ("a - -b", ("-", "a", ("neg", "b"))),
    ("--a", ("neg", ("neg", "a"))),
    ("+-a", ("pos", ("neg", "a"))),
    ("-a @ b", ("@", ("neg", "a"), "b")),
    # postfix binds tightest
    ("-a.T", ("neg", (".T", "a"))),
    ("a.T ** 2", ("**", (".T", "a"), 2.0)),
    ("x ** y.T", ("**", "x", (".T", "y"))),
    ("a.T.T", (".T", (".T", "a"))),
    ("-x[0]", ("neg", ("[]", "x", (0.0,)))),
    ("f(x).T", (".T", ("call", "f", ("x",), ()))),
    ("f(x)[0]", ("[]", ("call", "f", ("x",), ()), (0.0,))),
    ("X.T @ y", ("@", (".T", "X"), "y")),
])
def test_precedence(source, expected):
    assert tree(source) == expected


# Each case: the source, and the same computation written as Python on numpy arrays.
NUMERIC_PRECEDENCE = [
    ("-x ** 2", lambda x, y, A: -(x ** 2)),
    ("x ** -1", lambda x, y, A: x ** -1.0),
    ("-x ** -y", lambda x, y, A: -(x ** -y)),
    ("x ** y ** 2", lambda x, y, A: x ** (y ** 2)),
    ("x - y - x", lambda x, y, A: (x - y) - x),
    ("x / y / x", lambda x, y, A: (x / y) / x),
    ("x * y / x * y", lambda x, y, A: ((x * y) / x) * y),
    ("A @ x * y", lambda x, y, A: (A @ x) * y),
    ("x * A @ y", lambda x, y, A: (x * A) @ y),
    ("x / A @ y", lambda x, y, A: (x / A) @ y),
    ("x @ A @ y", lambda x, y, A: (x @ A) @ y),
    ("-x @ A", lambda x, y, A: (-x) @ A),
    ("x + y * x - y / x", lambda x, y, A: x + y * x - y / x),
    ("2 ** -x ** 2", lambda x, y, A: 2.0 ** -(x ** 2)),
    ("-A.T @ x", lambda x, y, A: -(A.T) @ x),
    ("1e-3 * x + .5 - 0.5 * 2", lambda x, y, A: 1e-3 * x + 0.5 - 0.5 * 2),
]


@pytest.mark.parametrize("source, reference", NUMERIC_PRECEDENCE)
def test_precedence_matches_numpy(source, reference):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.5, 1.5, 4), rng.uniform(0.5, 1.5, 4)
    A = rng.uniform(0.5, 1.5, (4, 4))
    f = einderiv.compile(source, {"x": ("n",), "y": ("n",), "A": ("n", "n")})
    arrays = {"x": x, "y": y, "A": A}
    got = f(**{k: v for k, v in arrays.items() if k in f.inputs})
    np.testing.assert_allclose(got, reference(x, y, A), rtol=1e-12)


# -- statements, declarations, comments, separators ----------------------------------------------

def test_statements_and_bindings():
    assert statements("h = W @ x\nsum(h * h)") == [
        ("=", "h", ("@", "W", "x")),
        ("call", "sum", (("*", "h", "h"),), ()),
    ]


def test_semicolons_newlines_and_blank_statements():
    expected = [("=", "a", "x"), ("=", "b", "a"), "b"]
    assert statements("a = x; b = a; b") == expected
    assert statements("a = x\nb = a\nb") == expected
    assert statements("\n\na = x;;\n\n;b = a\n\nb;\n") == expected
    assert statements("a = x\r\nb = a\r\nb\r\n") == expected


def test_comments():
    source = "# a comment on its own line\na = x  # trailing comment; not a separator\n# end"
    assert statements(source) == [("=", "a", "x")]
    assert statements("x # comment without newline") == ["x"]


def test_comments_may_hold_any_printable_text():
    source = "a = x  # σ(x) = 1/(1 + e^{-x}) ∑ 😀 (((\r\n# ×\u00a0−\nsum(a)"
    assert statements(source) == [("=", "a", "x"), ("call", "sum", ("a",), ())]
    assert statements("x # " + "(" * (MAX_NESTING + 5)) == ["x"]
    assert statements("einsum('i#', x) # (") == [("call", "einsum", (("str", "i#"), "x"), ())]


def test_control_characters_in_comments_are_errors():
    with pytest.raises(ParseError) as info:
        parse("x # a\x00b\ny")
    assert (info.value.line, info.value.column) == (1, 6)
    assert "control character" in str(info.value)


def test_only_comments_is_an_empty_program():
    with pytest.raises(ParseError, match="empty"):
        parse("# nothing here\n\n;")


@pytest.mark.parametrize("source, name, dims", [
    ("X: [n, d]", "X", ("n", "d")),
    ("w: [d]", "w", ("d",)),
    ("c: []", "c", ()),
    ("T: [2, n, 3]", "T", (2, "n", 3)),
    ("v: [hidden,]", "v", ("hidden",)),
])
def test_declarations(source, name, dims):
    assert tree(source) == (":", name, dims)


def test_declarations_anywhere_before_use():
    f = einderiv.compile("X: [n, d]\nw: [d]; z = X @ w\nc: []\nc * sum(z)")
    assert f.inputs == {"X": ("n", "d"), "w": ("d",), "c": ()}
    X, w = np.arange(6.0).reshape(2, 3), np.array([1.0, -1.0, 2.0])
    np.testing.assert_allclose(f(X=X, w=w, c=2.0), 2.0 * np.sum(X @ w))


def test_line_continuation_with_backslash():
    assert statements("a = x + \\\n  y\na") == [("=", "a", ("+", "x", "y")), "a"]


def test_newlines_inside_brackets_continue_the_statement():
    source = "s = sum(\n  x   # the data\n  * y,\n  axis=0,\n)\nv = X[\n 0,\n :]\ns + v"
    assert statements(source) == [
        ("=", "s", ("call", "sum", (("*", "x", "y"),), (("axis", 0.0),))),
        ("=", "v", ("[]", "X", (0.0, ("slice", None, None)))),
        ("+", "s", "v"),
    ]


def test_semicolon_inside_brackets_is_an_error():
    with pytest.raises(ParseError) as info:
        parse("sum(x; y)")
    assert (info.value.line, info.value.column) == (1, 6)


# -- numbers, names, strings ---------------------------------------------------------------------

@pytest.mark.parametrize("source, value", [
    ("2", 2.0), ("0.5", 0.5), ("1e-3", 1e-3), (".5", 0.5), ("1E+3", 1000.0), ("1.", 1.0),
    ("1.5e2", 150.0), (".25e-1", 0.025), ("007", 7.0), ("0", 0.0),
])
def test_numbers(source, value):
    assert tree(source) == value


@pytest.mark.parametrize("source", ["0x10", "1_000", "1e", "2.T", "1..2", "3x"])
def test_malformed_numbers(source):
    with pytest.raises(ParseError):
        parse(source)


@pytest.mark.parametrize("source, expected", [
    ("x", "x"), ("_x1", "_x1"), ("hidden_state", "hidden_state"), ("Nonex", "Nonex"),
    ("None", None), ("T", "T"),
])
def test_names(source, expected):
    assert tree(source) == expected


def test_einsum_subscript_strings():
    assert tree("einsum('ij,jk->ik', A, B)") == (
        "call", "einsum", (("str", "ij,jk->ik"), "A", "B"), ())
    assert tree('einsum("ii", A)') == ("call", "einsum", (("str", "ii"), "A"), ())


# -- calls ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("f()", ("call", "f", (), ())),
    ("exp(x)", ("call", "exp", ("x",), ())),
    ("maximum(a, b)", ("call", "maximum", ("a", "b"), ())),
    ("maximum(a, b,)", ("call", "maximum", ("a", "b"), ())),
    ("sum(X, axis=0)", ("call", "sum", ("X",), (("axis", 0.0),))),
    ("sum(X, axis=-1)", ("call", "sum", ("X",), (("axis", ("neg", 1.0)),))),
    ("sum(X, axis=(0, 1))", ("call", "sum", ("X",), (("axis", ("tuple", 0.0, 1.0)),))),
    ("sum(X, axis=(1,))", ("call", "sum", ("X",), (("axis", ("tuple", 1.0)),))),
    ("mean(X, 1)", ("call", "mean", ("X", 1.0), ())),
    ("softmax(x * 2, axis=0)", ("call", "softmax", (("*", "x", 2.0),), (("axis", 0.0),))),
    ("log(1 + exp(-y * (X @ w)))",
     ("call", "log", (("+", 1.0, ("call", "exp", (("*", ("neg", "y"), ("@", "X", "w")),), ())),),
      ())),
])
def test_calls(source, expected):
    assert tree(source) == expected


def test_positional_after_keyword_is_an_error():
    with pytest.raises(ParseError, match="positional argument after a keyword") as info:
        parse("sum(X, axis=0, Y)")
    assert info.value.column == 16


# -- indexing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, items", [
    ("x[0]", (0.0,)),
    ("x[-1]", (("neg", 1.0),)),
    ("X[:, None]", (("slice", None, None), None)),
    ("X[1:3, :]", (("slice", 1.0, 3.0), ("slice", None, None))),
    ("x[1:]", (("slice", 1.0, None),)),
    ("x[:-1]", (("slice", None, ("neg", 1.0)),)),
    ("x[None, :, None]", (None, ("slice", None, None), None)),
    ("x[::2]", (("slice", None, None, 2.0),)),  # steps (issue 14)
    ("x[1:2:-3]", (("slice", 1.0, 2.0, ("neg", 3.0)),)),
    ("x[::]", (("slice", None, None),)),
])
def test_indexing(source, items):
    assert tree(source)[2] == items


@pytest.mark.parametrize("source", ["x[]", "x[,]", "x[:::2]", "x[1:2:3:4]"])
def test_bad_indexing(source):
    with pytest.raises(ParseError):
        parse(source)


# -- positions -----------------------------------------------------------------------------------

def test_spans_point_at_the_source():
    source = "a = x + y\nb = W @ (a *  zz)\nsum(b)"
    program = parse(source)
    assign = program.statements[1]
    matmul = assign.value
    assert text(source, assign) == "b = W @ (a *  zz)"
    assert text(source, matmul) == "W @ (a *  zz)"
    product = matmul.right
    assert text(source, product) == "a *  zz"
    name = product.right
    assert text(source, name) == "zz"
    assert (name.span.line, name.span.column) == (2, 15)
    call = program.statements[2]
    assert (call.span.line, call.span.column) == (3, 1)
    assert text(source, call) == "sum(b)"
    assert source[call.func_span.start:call.func_span.end] == "sum"


def test_spans_across_lines_inside_brackets():
    source = "q = 1\ns = sum(\n    x\n)"
    call = parse(source).statements[1].value
    assert text(source, call) == "sum(\n    x\n)"
    assert (call.args[0].span.line, call.args[0].span.column) == (3, 5)


@pytest.mark.parametrize("source, line, column", [
    ("x +", 1, 3),
    ("x + * y", 1, 5),
    ("a = x\nb = a )\nb", 2, 7),
    ("a = x\n\n   b = = a", 3, 8),
    ("a = (x +\n  y)\nb = a * * y", 3, 9),
    ("x; y; z z", 1, 9),
    ("f(x,, y)", 1, 5),
    ("X: [n, 2.5]", 1, 8),  # a dimension that is no integer: the number
    ("x\n+\n", 2, 2),  # the line ends right after the unary +
])
def test_parse_error_positions(source, line, column):
    with pytest.raises(ParseError) as info:
        parse(source)
    assert (info.value.line, info.value.column) == (line, column)


# -- limits and input type -----------------------------------------------------------------------

def test_nesting_up_to_the_limit_is_fine():
    depth = MAX_NESTING
    f = einderiv.compile("(" * depth + "x" + ")" * depth, {"x": ("n",)})
    np.testing.assert_allclose(f(x=np.array([1.0, 2.0])), [1.0, 2.0])


def test_nesting_over_the_limit_is_a_parse_error():
    depth = MAX_NESTING + 1
    with pytest.raises(ParseError, match="nested"):
        parse("(" * depth + "x" + ")" * depth)


def test_source_length_limit():
    source = "x" + " + x" * (MAX_SOURCE_CHARS // 4)
    assert len(source) > MAX_SOURCE_CHARS
    with pytest.raises(ParseError, match="too long"):
        parse(source)


@pytest.mark.parametrize("source", [None, b"x + y", 3, ["x"]])
def test_source_must_be_a_string(source):
    with pytest.raises(einderiv.EinderivError):
        einderiv.compile(source, {"x": ("n",), "y": ("n",)})


def test_parse_is_deterministic_and_fresh():
    """Two parses of one text are equal trees but distinct objects (AST nodes have identity)."""
    a, b = parse("x * (x + y)"), parse("x * (x + y)")
    assert [sexpr(s) for s in a.statements] == [sexpr(s) for s in b.statements]
    assert a.statements[0] is not b.statements[0]
