"""Property tests of the front end: random and mutated source text through the whole pipeline.

Whatever the text, `einderiv.compile` either returns a working object or raises an
`EinderivError`, within a second; a compiled program prints, and evaluates on random arrays with
nothing but an `EinderivError` escaping. A second property builds random *valid* expressions,
writes them with the fewest parentheses Python's precedence allows, and checks the compiled
value against the same tree evaluated directly with numpy.

Runs are reproducible (`derandomize=True`); every example is timed with `time.perf_counter`.
The default run tries 500 random and mutated sources, `EINDERIV_SLOW=1` 1,500.
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einderiv
from einderiv import EinderivError

SHAPES = {"x": ("n",), "y": ("n",), "v": ("k",), "X": ("n", "d"), "w": ("d",), "W": ("m", "n"),
          "b": ("m",), "A": ("n", "n"), "T": ("m", "n", "n"), "c": ()}
SIZES = {"n": 3, "m": 2, "d": 4, "k": 5}
MAX_SECONDS = 1.0
SOURCES = 1500 if os.environ.get("EINDERIV_SLOW") else 500  # random and mutated sources tried
MAX_ENTRIES = 100_000  # inline declarations can ask for huge arrays; those are not evaluated

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# Valid programs covering SPEC §1; mutations of these reach deep into the pipeline.
VALID = [
    "W @ x + b",
    "sum(log(1 + exp(-y * (X @ w))))",
    "(x + y) + x * (x + y)",
    "h = tanh(W @ x + b)\nsum(h * h)",
    "X: [n, d]; w: [d]\nz = X @ w\nmean(z ** 2)",
    "-x ** 2 + x ** -1",
    "x ** y ** 2 / (1 + x)",
    "sum(X, axis=0) @ w.T",
    "sum(T, axis=(1, 2)) - b",
    "softmax(W @ x, axis=0) * b",
    "logsumexp(X, axis=-1) + x",
    "einsum('ij,jk->ik', A, A) @ x",
    'einsum("ij->", X)',
    "x[:, None] * w + X",
    "X[1:, :].T @ y[:-1]",
    "x[0] * y + x[-1]",
    "dot(x, y) * outer(x, y) @ x",
    "tr(A) + det(A) + logdet(A @ A.T + eye(n))",
    "inv(A + 3 * eye(n)) @ x",
    "diag(x) @ diag(A)",
    "norm(x) + norm(A)",
    "maximum(x, 0) - minimum(y, 0.5) + relu(x) * sigmoid(y)",
    "sqrt(square(x) + 1e-3) * abs(y) + sign(x)",
    "sin(x) * cos(y) + tan(x * .5) + sinh(x) - cosh(y) + arctan(x)",
    "log1p(expm1(softplus(x)))",
    "c * x + c ** 2  # a comment\n",
    "a = W @ x; b2 = a * a\nsum(b2, axis=0) + c",
    "T @ A @ x",
    "(X.T @ X) @ w - X.T @ (X @ w)",
    "mean(X, axis=1) @ A - x",
    "sum(\n    x * y,\n    axis=0,\n)",
    "q: [n, 2]\nsum(q, axis=1) * x",
]

TOKENS = [
    "x", "y", "v", "X", "w", "W", "b", "A", "T", "c", "q", "zz", "n", "d",
    "+", "-", "*", "/", "@", "**", "(", ")", "[", "]", ",", ":", ";", "\n", "=", ".", ".T",
    "None", "sum(", "mean(", "exp(", "log(", "tanh(", "softmax(", "logsumexp(", "einsum(",
    "inv(", "det(", "eye(", "diag(", "tr(", "axis=", "axis=(0, 1)", "axis=-1",
    "'ij,j->i'", '"ii"', "'->'", "0", "1", "-1", "2", "2.5", "1e-3", ".5", "1e999", "#",
    "X: [n, d]", "c: []", "x: [k]", "[", "]", " ", "\t", "\\\n", "1:", ":-1", "None,",
]

NASTY = ["\x00", "\u2212", "\u00d7", "\u2217", "\u00f7", "\uff08", "\u00a0", "\u200b", "\ud800",
         "\U0001f600", "\u03b1", "\r", "\x0b", "\x0c", "\\", "$", "`", "!", "?", "&", "|", "%",
         "^", "~", "<", ">", "{", "}", "'", '"']

LANGUAGE_CHARS = sorted(set("".join(TOKENS)) | set("0123456789abcdefghijklmnopqrstuvwxyz"))

characters = st.one_of(st.sampled_from(LANGUAGE_CHARS), st.sampled_from(NASTY), st.characters())


@st.composite
def mutated_programs(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "splice", "token", "swap"]))
        pos = draw(st.integers(0, len(text)))
        if kind == "delete":
            end = draw(st.integers(pos, min(len(text), pos + 6)))
            text = text[:pos] + text[end:]
        elif kind == "insert":
            text = text[:pos] + draw(characters) + text[pos:]
        elif kind == "replace":
            text = text[:pos] + draw(characters) + text[pos + 1:]
        elif kind == "splice":
            other = draw(st.sampled_from(VALID))
            lo = draw(st.integers(0, len(other)))
            hi = draw(st.integers(lo, len(other)))
            text = text[:pos] + other[lo:hi] + text[pos:]
        elif kind == "token":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        else:  # swap two stretches
            mid = draw(st.integers(pos, len(text)))
            end = draw(st.integers(mid, len(text)))
            text = text[:pos] + text[mid:end] + text[pos:mid] + text[end:]
    return text


# Same-kind token swaps keep a program mostly well-formed, so many reach evaluation.
KINDS = {
    "operator": ["+", "-", "*", "/", "@", "**"],
    "name": ["x", "y", "v", "X", "w", "W", "b", "A", "T", "c"],
    "number": ["0", "1", "-1", "2", "0.5", "1e-3", ".5", "3", "1e999"],
    "function": ["exp", "log", "tanh", "sum", "mean", "softmax", "logsumexp", "sqrt", "abs",
                 "relu", "sigmoid", "inv", "det", "diag", "tr", "norm", "transpose"],
}
TOKEN_RE = re.compile(r"\*\*|[-+*/@]|[A-Za-z_][A-Za-z0-9_]*(?=\()|[A-Za-z_][A-Za-z0-9_]*|"
                      r"[0-9]*\.?[0-9]+(?:e-?[0-9]+)?")


def kind_of(token: str) -> str | None:
    for kind, members in KINDS.items():
        if token in members:
            return kind
    return "number" if token[:1].isdigit() or token[:1] == "." else None


@st.composite
def token_swaps(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 3))):
        spans = [m.span() for m in TOKEN_RE.finditer(text) if kind_of(m.group())]
        if not spans:
            break
        lo, hi = draw(st.sampled_from(spans))
        text = text[:lo] + draw(st.sampled_from(KINDS[kind_of(text[lo:hi])])) + text[hi:]
    return text


token_soup = st.lists(st.sampled_from(TOKENS), max_size=25).flatmap(
    lambda tokens: st.sampled_from(["", " "]).map(lambda sep: sep.join(tokens)))

sources = st.one_of(mutated_programs(), token_swaps(), mutated_programs(), token_swaps(),
                    token_soup, st.text(max_size=60))


def sizes_of(shape: tuple[str, ...]) -> tuple[int, ...] | None:
    sizes = tuple(int(d) if d.lstrip("-").isdigit() else SIZES.get(d, 2) for d in shape)
    if any(s < 0 for s in sizes) or math.prod(sizes) > MAX_ENTRIES:
        return None
    return sizes


def exercise(source: str) -> None:
    """Compile, print and evaluate `source`; only an EinderivError may come out."""
    try:
        f = einderiv.compile(source, SHAPES)
        assert isinstance(f.einstein, str) and f.einstein
        repr(f)
        rng = np.random.default_rng(0)
        arrays = {}
        # Every declared variable, used or not: a call may pass them all (SPEC §2).
        for name, shape in {**{k: tuple(map(str, s)) for k, s in SHAPES.items()},
                            **f.inputs}.items():
            sizes = sizes_of(shape)
            if sizes is None:
                return
            arrays[name] = rng.uniform(0.5, 1.5, sizes)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = f(**arrays)
        assert isinstance(out, (np.ndarray, np.generic, float)), type(out)
    except EinderivError as e:
        assert str(e)  # renders, with its caret line


def timed(source: str) -> None:
    start = time.perf_counter()
    exercise(source)
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f}s for {source!r}"


# Load the grammar and the rule tables once, outside the timed examples.
einderiv.compile("x", SHAPES)


def test_the_corpus_is_valid():
    """The mutations start from working programs."""
    for source in VALID:
        f = einderiv.compile(source, SHAPES)
        arrays = {k: np.random.default_rng(1).uniform(0.5, 1.5, sizes_of(s))
                  for k, s in f.inputs.items()}
        assert np.all(np.isfinite(f(**arrays))), source


@settings(FUZZ, max_examples=SOURCES)
@given(sources)
def test_random_and_mutated_sources(source):
    timed(source)


@settings(FUZZ, max_examples=100)
@given(st.lists(st.sampled_from(VALID), min_size=2, max_size=6), st.sampled_from(["\n", ";"]))
def test_concatenated_programs(parts, sep):
    timed(sep.join(parts))


# -- random valid expressions against numpy ------------------------------------------------------

PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "neg": 3, "**": 4, "atom": 9}
NUMPY = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power,
    "@": np.matmul,
}
UNARY_FUNCTIONS = {"exp": np.exp, "tanh": np.tanh, "sin": np.sin, "sigmoid":
                   lambda a: 1 / (1 + np.exp(-a)), "square": np.square}


@st.composite
def expressions(draw, depth=0):
    """(text, precedence, numpy value); x and y have shape (n,), A is (n, n), c is a scalar."""
    env = draw_env()
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        leaf = draw(st.sampled_from(["x", "y", "A", "c", "2", "0.5", "3"]))
        value = env[leaf] if leaf in env else float(leaf)
        return leaf, PREC["atom"], value
    kind = draw(st.sampled_from(["binary", "binary", "binary", "neg", "call", "sum", "T"]))
    if kind == "neg":
        text, prec, value = draw(expressions(depth + 1))
        return "-" + paren(text, prec, PREC["neg"], draw), PREC["neg"], -value
    if kind == "call":
        name = draw(st.sampled_from(sorted(UNARY_FUNCTIONS)))
        text, _, value = draw(expressions(depth + 1))
        return f"{name}({text})", PREC["atom"], UNARY_FUNCTIONS[name](value)
    if kind == "sum":
        text, _, value = draw(expressions(depth + 1))
        return f"sum({text})", PREC["atom"], np.sum(value)
    if kind == "T":
        text, prec, value = draw(expressions(depth + 1))
        needed = PREC["atom"] + (1 if text[0].isdigit() else 0)  # `2.T` is not `(2).T`
        return paren(text, prec, needed, draw) + ".T", PREC["atom"], np.transpose(value)
    op = draw(st.sampled_from(["+", "-", "*", "/", "**", "@"]))
    left, lp, lv = draw(expressions(depth + 1))
    right, rp, rv = draw(expressions(depth + 1))
    if op == "@" and (np.ndim(lv) == 0 or np.ndim(rv) == 0):
        op = "*"
    if op == "**":  # right-associative, and binds tighter than a unary minus on its left
        text = f"{paren(left, lp, PREC['**'] + 1, draw)} ** {paren(right, rp, PREC['neg'], draw)}"
        with np.errstate(all="ignore"):
            value = NUMPY[op](lv, rv)
    else:
        p = PREC[op]
        text = f"{paren(left, lp, p, draw)} {op} {paren(right, rp, p + 1, draw)}"
        with np.errstate(all="ignore"):
            value = NUMPY[op](lv, rv)
    return text, PREC[op], value


_ENV = {}


def draw_env():
    if not _ENV:
        rng = np.random.default_rng(7)
        _ENV.update(x=rng.uniform(0.5, 1.5, 3), y=rng.uniform(0.5, 1.5, 3),
                    A=rng.uniform(0.5, 1.5, (3, 3)), c=1.25)
    return _ENV


def paren(text: str, prec: int, needed: int, draw) -> str:
    """Parentheses only where Python's precedence needs them (and sometimes where not)."""
    if prec < needed or draw(st.integers(0, 7)) == 0:
        return f"({text})"
    return text


@settings(FUZZ, max_examples=400)
@given(expressions())
def test_random_expressions_match_numpy(case):
    text, _, expected = case
    start = time.perf_counter()
    f = einderiv.compile(text, {"x": ("n",), "y": ("n",), "A": ("n", "n"), "c": ()})
    env = draw_env()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = f(**env)  # every variable, also those the value does not depend on
    assert time.perf_counter() - start < MAX_SECONDS
    assert np.shape(got) == np.shape(expected), text
    finite = np.isfinite(expected) & (np.abs(expected) < 1e12)
    np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(expected)[finite],
                               rtol=1e-8, atol=1e-9, err_msg=text)
