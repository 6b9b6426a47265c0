"""Source text -> AST, with the lark grammar in `grammar.lark`.

The LALR parser builds the syntax tree as it reduces (no parse tree in between), without Python
recursion however deeply the input nests; limits on size and nesting keep later stages bounded
too.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path

import lark

from ..errors import EinderivError, ParseError, Span, did_you_mean
from . import ast

# Limits that keep every text einderiv accepts to about 10 s of work on a 2-core machine, or a
# clean error at once (measured with benchmarks/scaling.py and the worst forms per character:
# `x / x / ...` and `x ** x ** ...`). One statement (what a person writes on a line) is at most
# MAX_SOURCE_CHARS characters: the formula of a 3000-step network stacks its states in one
# 64 KB line. A program of many statements, such as the formula printed for a long unrolled
# network (each line short, cut into temporaries), is at most MAX_PROGRAM_CHARS characters
# (parsing alone takes 3-4 s per million) and MAX_OPERATIONS operations (operators, calls,
# indexing, attributes), so that the formulas of the scaling benchmark's workloads parse back.
# Deriving multiplies the work and the text: a text to differentiate is held to fewer
# operations (`derivation_budget`), so that its derivative's formula, 140 characters per
# operation for the gradient of x ** x ** ... and 880 for its Hessian, parses back too.
MAX_SOURCE_CHARS = 100_000
MAX_PROGRAM_CHARS = 1_000_000
MAX_OPERATIONS = 150_000
MAX_GRADIENT_OPERATIONS = 6_000  # grad, jacobian, value_and_grad: 4 s for x ** x ** ...
MAX_HESSIAN_OPERATIONS = 1_000  # hessian, the derivative of a derivative: 5 s for x ** x ** ...
MAX_NESTING = 200

# Characters people paste from papers and word processors, and the ASCII they stand for.
LOOKALIKES = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "*", "\u2217": "*", "\u22c5": "*",
    "\u00b7": "*", "\u2215": "/", "\u00f7": "/", "\uff0b": "+", "\u2018": "'", "\u2019": "'",
    "\u201c": '"', "\u201d": '"', "\uff08": "(", "\uff09": ")", "\uff3b": "[", "\uff3d": "]",
    "\u00a0": " ", "\u2032": "'",
}


class _BracketNewlines(lark.lark.PostLex):
    """Inside brackets a newline continues the statement, as in Python: `f(a,\n  b)`."""

    always_accept = ("_SEP",)

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in ("LPAR", "LSQB"):
                depth += 1
            elif token.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif token.type == "_SEP" and depth and token.value != ";":
                continue
            yield token


@lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", keep_all_tokens=True, maybe_placeholders=True,
                     postlex=_BracketNewlines(), transformer=_Builder())


def parse(source: str) -> ast.Program:
    """Parse a source text into a `Program`; raise `ParseError` with a caret on bad input, and
    for a text past the limits above. The program's `operations` is its number of operators,
    calls, indexings and attributes (see `derivation_budget`)."""
    if not isinstance(source, str):
        raise ParseError(f"expected the expression as a string, got {type(source).__name__}")
    if len(source) > MAX_PROGRAM_CHARS:
        raise ParseError(f"source is too long: {len(source)} characters, the limit is "
                         f"{MAX_PROGRAM_CHARS}",
                         hint="build very large expressions in Python with einderiv.var")
    _check_characters(source)
    _check_nesting(_blank_comments(source))
    _CURRENT.source = source
    _CURRENT.operations = 0
    try:
        statements = _parser().parse(source)
    except lark.exceptions.UnexpectedCharacters as e:
        raise ParseError(f"unexpected character {source[e.pos_in_stream]!r}",
                         Span(source, e.pos_in_stream, e.pos_in_stream + 1),
                         _caret_hint(source, e.pos_in_stream)) from None
    except lark.exceptions.UnexpectedToken as e:
        raise _unexpected_token(source, e) from None
    except lark.exceptions.UnexpectedEOF:
        end = len(source.rstrip())
        raise ParseError("unexpected end of input", Span(source, max(0, end - 1), end)) from None
    except lark.exceptions.VisitError as e:  # an error raised inside a transformer callback
        if isinstance(e.orig_exc, ParseError):
            raise e.orig_exc from None
        raise
    finally:
        operations = _CURRENT.operations
        _CURRENT.source = None
    if operations > MAX_OPERATIONS:
        raise ParseError(f"program is too large: {operations:,} operations, the limit is "
                         f"{MAX_OPERATIONS:,}",
                         hint="build very large expressions in Python with einderiv.var")
    program = ast.Program(statements, source)
    program.operations = operations
    if not program.statements:
        raise ParseError("empty expression", Span(source, 0, len(source)),
                         hint="write an expression such as 'sum(x * x)'")
    return program


def derivation_budget(program: ast.Program, order: int) -> None:
    """Raise `ParseError` for a text too large to differentiate within the limits (`order` 1
    for a gradient or Jacobian, 2 for a Hessian). A program built with `einderiv.var` has no
    text and no such limit."""
    limit = MAX_HESSIAN_OPERATIONS if order > 1 else MAX_GRADIENT_OPERATIONS
    operations = getattr(program, "operations", None)
    if operations is not None and operations > limit:
        what = "a Hessian" if order > 1 else "a derivative"
        raise ParseError(f"program is too large to differentiate: {operations:,} operations, "
                         f"the limit for {what} of a text is {limit:,}",
                         hint="build larger programs in Python with einderiv.var, which has no "
                              "text limit")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(name, what: str, error: type = ParseError) -> str:
    """`name` if it is a name of the language (the grammar's NAME: ASCII letters, digits and
    '_', not starting with a digit, not `None`), else `error` saying which `what` is bad.

    Every name that reaches generated code without passing through the grammar (variables and
    dimensions from `shapes` and `einderiv.var`, dimension arguments of `einderiv.fn`, `wrt`,
    the command line's `--shape`) is checked here. Python folds identifiers by NFKC ('𝐭0' is 't0'), einderiv compares them as strings:
    accepting non-ASCII names would let two different names be one variable in the generated
    code, or a user's variable be one of its temporaries.
    """
    if isinstance(name, str) and _NAME.fullmatch(name) and name != "None":
        return name
    if not isinstance(name, str):
        raise error(f"{what} must be a name (a string), got {type(name).__name__} {name!r}")
    folded = unicodedata.normalize("NFKC", name)
    if folded != name and _NAME.fullmatch(folded):
        hint = f"write it in ASCII: Python reads {name!r} as {folded!r}"
    elif name == "None":
        hint = "None is reserved"
    else:
        hint = "a name is ASCII letters, digits and '_', and does not start with a digit"
    raise error(f"{what} {name!r} is not a valid name", hint=hint)


def _unexpected_token(source: str, e) -> ParseError:
    tok = e.token
    if tok.type == "$END":
        end = len(source.rstrip())
        return ParseError("unexpected end of input", Span(source, max(0, end - 1), max(1, end)))
    start = tok.start_pos if tok.start_pos is not None else 0
    if str(tok) == "(":
        dotted = _dotted_call(source, start)
        if dotted is not None:
            return dotted
    shown = "end of line" if tok.type == "_SEP" and tok.value.strip() == "" else repr(str(tok))
    expected = sorted(_describe(t) for t in _acceptable(e) if not t.startswith("__"))
    hint = None
    if expected and len(expected) <= 8:
        hint = "expected " + ", ".join(dict.fromkeys(expected))
    return ParseError(f"unexpected {shown}", Span(source, start, start + max(1, len(tok))), hint)


# What people coming from numpy write, and what the language writes instead. The language has
# no modules and no methods: a function is called by its bare name (docs/language.md).
_MODULES = {"np", "numpy", "jnp", "jax", "onp", "torch", "math", "scipy", "sp", "tf"}
_DOTTED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:[ \t]*\.[ \t]*[A-Za-z_][A-Za-z0-9_]*)+)[ \t]*$")
_OPERAND = r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+\.?[0-9]*"


def _dotted_call(source: str, paren: int) -> ParseError | None:
    """The error for `np.exp(x)` (a module prefix) or `x.sum()` (a method), whose '(' the parser
    cannot take after an attribute: the caret under the prefix, and the bare call as the hint.
    None for any other '(' the parser stops at."""
    line_start = source.rfind("\n", 0, paren) + 1
    m = _DOTTED.search(source, line_start, paren)
    if m is None:
        return None
    first, rest = m.group(1), m.group(2).replace(" ", "").replace("\t", "")
    function = rest.rsplit(".", 1)[1]
    arguments = _bracketed(source, paren)
    if first in _MODULES:
        prefix = first + rest[:-len(function)]
        end = m.start() + len(m.group(0).rstrip(" \t")) - len(function)
        known = _known_functions()
        if function in known:
            hint = f"the language has {function}({arguments}): drop the '{prefix}' prefix"
        else:
            hint = (f"the language has no modules: a function is called by its bare name, and "
                    f"it has no '{function}' (docs/language.md lists its functions)")
            close = did_you_mean(function, known)
            if close:
                hint += f"; {close}"
        return ParseError(f"'{prefix}{function}' is not a function of the language",
                          Span(source, m.start(), end), hint)
    if rest.count(".") == 1 and function in _known_functions():  # x.sum(): numpy's method
        arguments = first + (f", {arguments}" if arguments else "")
        return ParseError(f"'{first}.{function}(...)' is a method call, which the language "
                          f"does not have", Span(source, m.start(), paren),
                          f"write {function}({arguments})")
    return None


def _bracketed(source: str, paren: int) -> str:
    """The text between the '(' at `paren` and its ')', when short and on one line; else '...'."""
    depth = 0
    for i in range(paren, min(len(source), paren + 60)):
        if source[i] == "\n":
            break
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        if depth == 0:
            return source[paren + 1:i].strip()
    return "..."


def _known_functions() -> set[str]:
    # Imported here: lowering imports this module, and only an error needs the rule book. An
    # error in a rule of the shipped tables, parsed while the rule book is being built, names
    # only the built-in functions rather than build the rule book again from inside itself.
    from ..lower.calls import BUILTINS
    from ..rulebook.table import default_rulebook
    if getattr(_HINTING, "busy", False):
        return set(BUILTINS)
    _HINTING.busy = True
    try:
        return set(BUILTINS) | set(default_rulebook().functions)
    except EinderivError:  # that error, met again: the hint names what is sure
        return set(BUILTINS)
    finally:
        _HINTING.busy = False


_HINTING = threading.local()


def _caret_hint(source: str, pos: int) -> str | None:
    """A hint for `x ^ 2`: '^' is a power in papers and xor in Python, neither in the language."""
    if source[pos] != "^":
        return None
    left = re.search(rf"({_OPERAND}|\))[ \t]*$", source[:pos])
    right = re.match(rf"[ \t]*({_OPERAND}|\()", source[pos + 1:])
    simple = (left and right and left.group(1) != ")" and right.group(1) != "(")
    example = f"{left.group(1)} ** {right.group(1)}" if simple else "a ** b"
    return f"'^' is not power: write {example}"


def _acceptable(e) -> set[str]:
    """The terminals the parser could take where it stopped.

    An error found by the contextual lexer lists the postlexer's always-accepted newline too,
    though the parser may not take one there; the parse table says what it does take.
    """
    try:
        return set(e.expected) & set(e.state.parse_conf.parse_table.states[e.state.position])
    except (AttributeError, KeyError, TypeError):
        return set(e.expected)


_TERMINAL_NAMES = {"NAME": "a name", "NUMBER": "a number", "INT": "an integer",
                   "STRING": "a string", "_SEP": "a new line or ';'"}


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
        return repr(pattern.value)
    except Exception:  # an anonymous terminal without a readable pattern
        return terminal.lower()


_COMMENT_OR_STRING = re.compile(r"#[^\n]*|'[^'\n]*'|\"[^\"\n]*\"")


def _blank_comments(source: str) -> str:
    """The source with the text of its comments blanked out (positions stay the same)."""
    return _COMMENT_OR_STRING.sub(
        lambda m: m.group() if m.group()[0] != "#" else "#" + " " * (len(m.group()) - 1), source)


def _check_characters(source: str) -> None:
    """Code is ASCII; a comment may hold any text but control characters."""
    code = _blank_comments(source)
    for pos, (ch, c) in enumerate(zip(source, code)):
        if c in "\n\t\r" or (" " <= c <= "~"):
            if ch == c or ch in "\t\r" or unicodedata.category(ch) not in ("Cc", "Cs"):
                continue
        if ch in LOOKALIKES:
            hint = f"replace it with the ASCII {LOOKALIKES[ch]!r}"
        elif unicodedata.category(ch) == "Cc":
            hint = "remove the control character"
        else:
            hint = "expressions are written in ASCII"
        name = unicodedata.name(ch, f"U+{ord(ch):04X}")
        raise ParseError(f"unexpected character {ch!r} ({name})", Span(source, pos, pos + 1), hint)


def _check_nesting(source: str) -> None:
    """Brackets nest at most MAX_NESTING deep, and a statement (ended by a new line or ';'
    outside brackets) is at most MAX_SOURCE_CHARS long."""
    depth, start = 0, 0
    for pos, ch in enumerate(source):
        if ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                raise ParseError(f"brackets nested more than {MAX_NESTING} deep",
                                 Span(source, pos, pos + 1),
                                 hint="bind intermediate results to names: 't = ...'")
        elif ch in ")]" and depth > 0:
            depth -= 1
        elif ch in "\n;" and depth == 0:
            start = pos + 1
        if pos - start >= MAX_SOURCE_CHARS:
            raise ParseError(f"statement is too long: more than {MAX_SOURCE_CHARS} characters",
                             Span(source, start, start + 1),
                             hint="bind intermediate results to names: 't = ...', or build "
                                  "very large expressions in Python with einderiv.var")


def _binary(op):
    def build(self, children):
        left, _, right = children
        _CURRENT.operations += 1
        return ast.BinOp(op, left, right, span=self._span(children))
    return build


class _Builder:
    """Parse tree -> AST, applied by the LALR parser at each reduction (lark's `transformer=`):
    no parse tree is built and walked again, which made parsing most of the time a long text
    took to compile. The parser is made with `keep_all_tokens`, so every callback sees the
    punctuation of its rule too: a node's span runs from its first token to its last (the `-`
    of a negation, the `)` of a call), as far as the brackets around a parenthesized operand.

    The source text the spans point into is the parsing thread's (`_CURRENT`): one parser
    serves every thread."""

    def _span(self, children) -> Span | None:
        start = end = None
        for c in children:
            start = _start(c)
            if start is not None:
                break
        for c in reversed(children):
            end = _end(c)
            if end is not None:
                break
        if start is None or end is None:
            return None
        return Span(_CURRENT.source, start, end)

    def start(self, children):
        return [c for c in children if c is not None and not isinstance(c, lark.Token)]

    def decl(self, children):
        name, _, dims = children
        return ast.Decl(str(name), tuple(dims), self._span(children))

    def shape(self, children):
        dims = _Dims(c for c in children if c is not None and not isinstance(c, lark.Token))
        dims._container = (children[0].start_pos, children[-1].end_pos)  # `[` to `]`
        return dims

    def dim(self, children):
        """An integer as an int, a name as a str, an expression (`n - 1`) as its tree, which
        lowering reads as a dimension (lower/dimensions.py)."""
        (expr,) = children
        if isinstance(expr, ast.Name):
            return expr.id
        if isinstance(expr, ast.Number) and getattr(expr, "_container", None) is None:
            text = _CURRENT.source[expr.span.start:expr.span.end]
            if not text.isdigit():
                raise ParseError(f"a dimension is an integer, not {text}", expr.span,
                                 hint="a size is a count of entries: 3, not 3.0")
            if len(text) > 18:  # past 2**53 a float is no longer the integer written
                raise ParseError(f"dimension {text[:20]}... is too large", expr.span)
            return int(text)
        return expr

    def assign(self, children):
        name, _, value = children
        return ast.Assign(str(name), value, self._span(children))

    add, sub, mul, div, floordiv, matmul, pow = (_binary(o) for o in ("+", "-", "*", "/", "//",
                                                                      "@", "**"))

    def compare(self, children):
        left, op, right = children
        if isinstance(left, ast.BinOp) and left.op in ast.COMPARISONS and \
                getattr(left, "_container", None) is None:
            raise ParseError(f"comparisons do not chain: '{left.op}' then '{op}'",
                             Span(_CURRENT.source, op.start_pos, op.end_pos),
                             hint="a comparison is a mask of 0 and 1: bracket it, or multiply "
                                  "two masks, e.g. (a < b) * (b < c)")
        _CURRENT.operations += 1
        return ast.BinOp(str(op), left, right, span=self._span(children))

    def neg(self, children):
        _CURRENT.operations += 1
        return ast.UnaryOp("-", children[1], span=self._span(children))

    def pos(self, children):
        _CURRENT.operations += 1
        return ast.UnaryOp("+", children[1], span=self._span(children))

    def attribute(self, children):
        _CURRENT.operations += 1
        return ast.Attribute(children[0], str(children[2]), span=self._span(children))

    def getitem(self, children):
        _CURRENT.operations += 1
        return ast.Index(children[0], children[2], span=self._span(children))

    def subscripts(self, children):
        return tuple(c for c in children if c is not None and not _is_comma(c))

    def slice(self, children):
        lo, _, hi = children
        return ast.Slice(lo, hi, span=self._span(children))

    def slice_step(self, children):
        lo, _, hi, _, step = children
        return ast.Slice(lo, hi, step, span=self._span(children))

    def number(self, children):
        return ast.Number(float(children[0]), span=self._span(children))

    def string(self, children):
        return ast.String(str(children[0])[1:-1], span=self._span(children))

    def none(self, children):
        return ast.NoneLit(span=self._span(children))

    def name(self, children):
        return ast.Name(str(children[0]), span=self._span(children))

    def atom(self, children):
        # `( expr )`, the one alternative of `atom` with no name of its own: the expression,
        # whose span in its parent's reaches over the brackets (what lark calls its container).
        _, inner, close = children
        inner._container = (children[0].start_pos, close.end_pos)
        return inner

    def tuple(self, children):
        items = tuple(c for c in children if c is not None and not isinstance(c, lark.Token))
        return ast.Tuple(items, span=self._span(children))

    def call(self, children):
        _CURRENT.operations += 1
        name, _, args, _ = children
        positional, keywords = [], []
        for a in args or ():
            if isinstance(a, tuple):
                keywords.append(a)
            elif keywords:
                raise ParseError("positional argument after a keyword argument", a.span)
            else:
                positional.append(a)
        func_span = Span(_CURRENT.source, name.start_pos, name.end_pos)
        return ast.Call(str(name), tuple(positional), tuple(keywords),
                        span=self._span(children), func_span=func_span)

    def arguments(self, children):
        return [c for c in children if c is not None and not _is_comma(c)]

    def keyword(self, children):
        return (str(children[0]), children[2])


class _Dims(tuple):
    """A shape's dimensions, with where its brackets are (for the span of its declaration)."""


def _is_comma(c) -> bool:
    return isinstance(c, lark.Token) and c.type == "COMMA"


def _start(c) -> int | None:
    if isinstance(c, lark.Token):
        return c.start_pos
    container = getattr(c, "_container", None)
    if container is not None:
        return container[0]
    span = getattr(c, "span", None)
    return span.start if span is not None else None


def _end(c) -> int | None:
    if isinstance(c, lark.Token):
        return c.end_pos
    container = getattr(c, "_container", None)
    if container is not None:
        return container[1]
    span = getattr(c, "span", None)
    return span.end if span is not None else None


# .source: the text the parsing thread is reading; .operations: how many it has read so far
_CURRENT = threading.local()
