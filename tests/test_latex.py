"""LaTeX as mathematics (issue 15, item 6): the `latex` format reads as a paper writes it.

- Goldens: the exact LaTeX of typical results (a gradient, a Hessian, broadcasts, tensors with
  no matrix form, fractions, slices) and of their left sides (`\\frac{\\partial f}{\\partial w}`).
- No numpy in the mathematics: no `None` indexing, slices `{:}`, einsum, `axis=`, nested
  fractions, and only what matplotlib's mathtext renders (`\\left|`, not `\\left\\lvert`).
- Every formula of a broad corpus renders with matplotlib's mathtext, row by row: every case of
  tests/test_vectorize.py and tests/test_printers.py, every function of the rule tables, every
  `einderiv grad|hessian|jacobian` example of the documentation. (tests/conftest.py renders the
  `.latex` of every test as well; a `.latex` block is an `aligned` environment, which mathtext
  has not, so its rows are rendered one at a time: `mathtext_lines`.)
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import einderiv
from einderiv.cli import main
from einderiv.generate.latex import mathtext_lines
from einderiv.rulebook import default_rulebook

ROOT = Path(__file__).resolve().parent.parent
LINEAR = {"X": ("n", "d"), "w": ("d",), "y": ("n",)}
LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"


def rows(result) -> list[str]:
    return mathtext_lines(result.latex)


def block(*lines: str) -> str:
    return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"


# -- goldens -------------------------------------------------------------------------------------

def test_logistic_gradient():
    g = einderiv.grad(LOGISTIC, "w", LINEAR)
    assert g.latex == block(r"\frac{\partial f}{\partial w} &= -X^{\top} \left(\sigma\left(-y "
                            r"\odot \left(X w\right)\right) \odot y\right)")


def test_logistic_hessian_is_x_transpose_d_x():
    """The weights scale X's rows, `(...)[:, None] * X`: a diagonal matrix, X^T D X."""
    h = einderiv.hessian(LOGISTIC, "w", LINEAR)
    assert h.latex == block(
        r"\frac{\partial^2 f}{\partial w\,\partial w} &= X^{\top} \operatorname{diag}\left("
        r"y \odot \sigma'\left(-y \odot \left(X w\right)\right) \odot y\right) X")


def test_value_and_mixed_hessian_blocks():
    vg = einderiv.value_and_grad("sum((X @ w - y) ** 2)", "w", LINEAR)
    assert vg.latex == block(r"t_{0} &= X w - y", r"f &= \sum_{i} (t_{0})_{i}^{2}",
                             r"\frac{\partial f}{\partial w} &= 2 X^{\top} t_{0}")
    h = einderiv.hessian("sum(x * y * y)", ["x", "y"], {"x": ("n",), "y": ("n",)})
    # a block the others use is defined where first needed: the symmetric one names it
    assert rows(h) == [
        r"\frac{\partial^2 f}{\partial x\,\partial y} = \operatorname{diag}\left(2 y\right)",
        r"\frac{\partial^2 f}{\partial x\,\partial x} = \mathbf{0}_{n \times n}",
        r"\frac{\partial^2 f}{\partial y\,\partial x} = "
        r"\frac{\partial^2 f}{\partial x\,\partial y}",
        r"\frac{\partial^2 f}{\partial y\,\partial y} = \operatorname{diag}\left(2 x\right)"]


def test_broadcasts_written_out():
    """A bias added to every row is `\\mathbf{1}_{n} b^{\\top}`; its gradient sums the rows:
    `t^{\\top} \\mathbf{1}_{n}`."""
    shapes = {"X": ("n", "d"), "W": ("d", "k"), "b": ("k",), "Y": ("n", "k")}
    g = einderiv.grad("sum((X @ W + b - Y) ** 2)", ["W", "b"], shapes)
    assert g.latex == block(r"t_{0} &= 2 \left(X W + \mathbf{1}_{n} b^{\top} - Y\right)",
                            r"\frac{\partial f}{\partial W} &= X^{\top} t_{0}",
                            r"\frac{\partial f}{\partial b} &= t_{0}^{\top} \mathbf{1}_{n}")
    # a column repeated, and rows scaled by a vector
    f = einderiv.compile("X - mean(X, axis=1)[:, None]", {"X": ("n", "d")})
    assert rows(f) == [r"f = X - \frac{1}{d} X \mathbf{1}_{d} \mathbf{1}_{d}^{\top}"]
    f = einderiv.compile("X / (1 + sum(X ** 2, axis=1))[:, None]", {"X": ("n", "d")})
    assert rows(f) == [r"f = \operatorname{diag}\left(1 + X^{\circ 2} \mathbf{1}_{d}\right)^{-1} X"]
    # an axis of a function: index notation, the index it runs along below it
    f = einderiv.compile("X / norm(X, axis=1)[:, None]", {"X": ("n", "d")})
    assert rows(f) == [r"f_{ij} = \frac{X_{ij}}{\operatorname{norm}_{k}\left(X_{ik}\right)}"]


def test_softmax_batch_scales_rows():
    shapes = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k")}
    g = einderiv.grad("sum(Y * softmax(X @ W, axis=1))", "W", shapes)
    assert rows(g)[-1] == (
        r"\frac{\partial f}{\partial W} = X^{\top} \left(\left(Y \odot \left(t_{1} \odot "
        r"\operatorname{complement}(t_{0}) + t_{2}\right) - \left(Y \odot t_{2} \odot "
        r"t_{0}\right) \mathbf{1}_{k} \mathbf{1}_{k}^{\top} - \operatorname{diag}\left(\left(Y "
        r"\odot t_{1} \odot t_{0}\right) \mathbf{1}_{k}\right) t_{2}\right) \odot t_{0}\right)")
    # the cross-entropy pulls back through log_softmax in one call
    g = einderiv.grad("-sum(Y * log(softmax(X @ W, axis=1)))", "W", shapes)
    assert rows(g) == [r"\frac{\partial f}{\partial W} = X^{\top} "
                       r"\operatorname{log\_softmax\_vjp}\left(X W, -Y\right)"]


def test_tensors_in_index_notation():
    """A Jacobian of a matrix by a matrix, an einsum, a batched product: indices, explicit sums
    and Kronecker deltas."""
    j = einderiv.jacobian("inv(X)", "X", {"X": ("n", "n")})
    assert rows(j) == [r"t_{0} = X^{-1}",
                       r"\frac{\partial f_{ij}}{\partial X_{kl}} = -(t_{0})_{ik} (t_{0})_{lj}"]
    j = einderiv.jacobian("W @ x", "W", {"W": ("m", "n"), "x": ("n",)})
    assert rows(j) == [r"\frac{\partial f_{i}}{\partial W_{jk}} = \delta_{ij} x_{k}"]
    g = einderiv.grad("sum(einsum('ijk,jk->i', T, M) ** 2)", "M",
                      {"T": ("a", "b", "c"), "M": ("b", "c")})
    assert rows(g) == [r"\frac{\partial f}{\partial M_{ij}} = \sum_{k} 2 \left(\sum_{l,p} "
                       r"T_{klp} M_{lp}\right) T_{kij}"]
    g = einderiv.grad("sum((A @ B - C) ** 2)", ["A", "B"],
                      {"A": ("a", "n", "m"), "B": ("a", "m", "k"), "C": ("a", "n", "k")})
    assert rows(g)[1:] == [r"\frac{\partial f}{\partial A_{ijl}} = \sum_{p} (t_{0})_{ijp} B_{ilp}",
                           r"\frac{\partial f}{\partial B_{ijl}} = \sum_{p} A_{ipj} (t_{0})_{ipl}"]


def test_fractions_are_one_line():
    h = einderiv.hessian("sum(log(t))", "t", {"t": ("n",)})
    assert rows(h) == [r"\frac{\partial^2 f}{\partial t\,\partial t} = "
                       r"\operatorname{diag}\left(-\frac{1}{t^{2}}\right)"]
    g = einderiv.grad("sum(mean(T, axis=-1) ** 2)", "T", {"T": ("a", "n", "m")})
    assert rows(g) == [r"\frac{\partial f}{\partial T_{ijk}} = \frac{2 \sum_{l} T_{ijl}}{m^{2}}"]
    for result in (h, g, einderiv.hessian("sum(x / y)", "y", {"x": ("n",), "y": ("n",)})):
        for row in rows(result):
            assert not nested_fraction(row), row


def test_slices_and_pads():
    g = einderiv.grad("sum((x[1:] - x[:-1]) ** 2)", "x", {"x": ("n",)})
    assert rows(g) == [r"(t_{0})_{i} = x_{i+1} - x_{i} \quad \left(i < n - 1\right)",
                       r"\frac{\partial f}{\partial x_{i}} = 2 \left[i \geq 1\right] "
                       r"(t_{0})_{i-1} - 2 \left[i < n - 1\right] (t_{0})_{i}"]
    f = einderiv.compile("x[::-1] * x[::2][0]", {"x": ("n",)})
    assert rows(f) == [r"f_{i} = x_{0} x_{n-1-i}"]


@pytest.mark.parametrize("text,wrt,want", [
    # index notation implies an index's range from what it indexes: a slice that stops short
    # says where, or `x[:3]` reads as all of x
    ("sum(X[:4] @ W)", "W", [r"\frac{\partial f}{\partial W_{ij}} = \sum_{l < 4} X_{li}"]),
    ("sum(x[:3]) * sum(x)", "x", [r"\frac{\partial f}{\partial x_{i}} = \left(\sum_{j < 3} "
                                  r"x_{j}\right) + \left(\left[i < 3\right] \sum_{j} x_{j}\right)"]),
    ("sum(x[:-2]) ** 2", "x", [r"\frac{\partial f}{\partial x_{i}} = \left[i < n - 2\right] 2 "
                               r"\sum_{j < n-2} x_{j}"]),
    ("sum((X[:, :3] @ W[:3]) ** 2)", "W", [
        r"(t_{0})_{ij} = X_{ij} \quad \left(j < 3\right)",
        r"\frac{\partial f}{\partial W_{ij}} = \left[i < 3\right] 2 \sum_{l} (t_{0})_{li} "
        r"\sum_{p < 3} (t_{0})_{lp} W_{pj}"]),
])
def test_a_slice_that_stops_short_bounds_its_index(text, wrt, want):
    g = einderiv.grad(text, wrt, {"X": ("n", "d"), "W": ("d", "k"), "x": ("n",)})
    assert rows(g) == want


def test_the_value_symbol_gives_way_to_a_variable_named_f():
    g = einderiv.value_and_grad("sum(f * f)", "f", {"f": ("n",)})
    assert rows(g) == [r"F = \sum_{i} f_{i}^{2}", r"\frac{\partial F}{\partial f} = 2 f"]


def test_products_keep_their_own_names():
    """vjp's outputs are cotangents, not derivatives: they keep `\\mathrm{d}x`."""
    v = einderiv.vjp("W @ x", "x", {"W": ("m", "n"), "x": ("n",)})
    assert rows(v) == [r"\mathrm{d}x = W^{\top} \mathit{cotangent}"]
    j = einderiv.jvp("W @ x", "x", {"W": ("m", "n"), "x": ("n",)})
    assert rows(j) == [r"f = W x", r"\mathit{jvp} = W \mathit{tangent}"]


def test_linear_maps_in_index_notation():
    """A running sum is the sum up to the entry, a step's spreading a divisibility bracket."""
    g = einderiv.grad("sum(cumsum(x) ** 2)", "x", {"x": ("n",)})
    assert rows(g) == [r"\frac{\partial f}{\partial x_{i}} = \sum_{j \leq n-1-i} 2 "
                       r"\operatorname{cumsum}(x)_{n-1-j}"]
    f = einderiv.compile("dilate(x, 3, 3 * n - 2)", {"x": ("n",)})
    assert rows(f) == [r"f_{i} = \left[3 \mid i\right] x_{i/3}"]


def test_mathtext_lines():
    text = block("t_{0} &= x", "f &= 2 t_{0}")
    assert mathtext_lines(text) == ["t_{0} = x", "f = 2 t_{0}"]


# -- no numpy in the mathematics -----------------------------------------------------------------

NUMPY = [r"\mathrm{None}", "{:}", "einsum", r"\text{axis}", r"\lvert", r"\lVert", "{\\to}",
         "aligned", ".T", "@", "**"]


def nested_fraction(text: str) -> bool:
    """Does a fraction's numerator or denominator hold a fraction at its top level (outside
    any bracket or argument of its own): `\\frac{-\\frac{1}{t}}{t}`?"""
    for match in re.finditer(r"\\frac\{", text):
        start = match.end()
        for _ in range(2):  # numerator, then denominator
            depth, end = 1, start
            while depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            inner = text[start:end - 1]
            flat = re.sub(r"\\left.*?\\right.", "", _without_groups(inner))
            if r"\frac" in flat:
                return True
            start = end + 1  # past the denominator's "{"
    return False


def _without_groups(text: str) -> str:
    """`text` with every {...} group emptied, so only its top level is left."""
    out, depth = [], 0
    for ch in text:
        depth += ch == "{"
        if depth == 0:
            out.append(ch)
        depth -= ch == "}"
    return "".join(out)


def test_the_nested_fraction_check():
    assert nested_fraction(r"\frac{-\frac{1}{t_{1}}}{t_{1}}")
    assert nested_fraction(r"x + \frac{a}{2 \frac{b}{c}}")
    assert not nested_fraction(r"-\frac{1}{t_{1}^{2}} + \frac{\sqrt{\frac{a}{b}}}{c}")


# -- the corpus: every formula renders ------------------------------------------------------------

def _cases() -> list:
    from test_printers import PLAN_CASES
    from test_vectorize import CASES
    made = [(f"vectorize:{c.id}", c.make) for c in CASES]
    made += [(f"plan:{kind}:{expr}", lambda k=kind, e=expr, s=shapes, w=wrt:
              getattr(einderiv, k)(e, w, s)) for kind, expr, shapes, wrt in PLAN_CASES]
    return made


def _rule_table_cases() -> list:
    """Every function of the rule tables, on a matrix: its value and gradient (the function
    and its derivative's functions typeset), and for the axis functions along each axis."""
    book = default_rulebook()
    shapes = {"X": ("n", "d"), "Y": ("n", "d"), "A": ("n", "n"), "b": ("n",)}
    special = {"polygamma": "polygamma(1, X)", "heaviside": "heaviside(X, 0.5)",
               "where": "where(X > 0, X, Y)", "clip": "clip(X, -1, 1)",
               "solve": "solve(A, b)", "floor_divide": "floor_divide(X, Y)",
               "det_hvp": "det_hvp(A, A.T)", "det_third_v": "det_third_v(A, A.T)",
               "det_third_vv": "det_third_vv(A, A.T, A)",
               "log_softmax_vjp": "log_softmax_vjp(X, Y, axis=0) + log_softmax_vjp(X, Y)",
               "softmax_minus": "softmax_minus(X, Y, axis=0) + softmax_minus(X, Y)",
               "logsumexp_weighted": "sum(logsumexp_weighted(X, Y, axis=0)) + "
                                     "logsumexp_weighted(X, Y)"}
    made = []
    for name, f in sorted(book.functions.items()):
        if name in ("div", "pow"):  # the operators / and **
            continue
        if name in special:
            call = special[name]
        elif f.kind == "tensor" and f.shape and f.shape.startswith("square") or \
                f.shape == "transposed":
            call = f"{name}(A)"
        elif f.kind == "tensor":
            made.append((f"rules:{name}:axis0", lambda n=name: einderiv.compile(
                f"{n}(X, axis=0)", shapes)))
            call = f"{name}(X)"
        else:
            call = f"{name}(" + ", ".join(["X", "Y"][:f.arity]) + ")"
        wrt = "A" if "A" in call else "X"
        made.append((f"rules:{name}", lambda c=call, w=wrt: _value_and_grad(c, w, shapes)))
    return made


# The language's other constructs: linear maps, joins, convolutions, decompositions.
CONSTRUCTS = [
    ("compile", "cumsum(X, axis=0) + triu(A) @ X", None), ("grad", "sum(cumsum(x) ** 2)", "x"),
    ("jacobian", "cumsum(x)", "x"), ("grad", "sum(reshape(X, (n * m,)) ** 3)", "X"),
    ("grad", "sum(tril(A, -1) ** 2)", "A"), ("grad", "sum(kron(x, y) ** 2)", "x"),
    ("grad", "sum(stack((x, y), axis=1) ** 2)", "x"), ("grad", "sum(concatenate((x, y)) ** 3)", "y"),
    ("grad", "sum(x[::2] * x[1::2][:1])", "x"), ("grad", "sum(x[::-1] * exp(x))", "x"),
    ("grad", "tr(matrix_power(A, 3))", "A"), ("grad", "sum(transpose(T, (2, 0, 1)) ** 2)", "T"),
    ("grad", "sum(max(X, axis=1)) + sum(prod(X, axis=0))", "X"),
    ("grad", "sum(correlate(x, k) ** 2)", "x"), ("grad", "sum(convolve(x, k, mode=\"same\") ** 2)", "k"),
    ("grad", "sum(conv1d(B, W, c) ** 2)", "W"), ("grad", "sum(conv2d(Z, K) ** 2)", "Z"),
    ("grad", "sum(pinv(X) ** 2) + sum(cholesky(A @ A.T))", "A"),
    ("grad", "sum(einsum('...ij,...jk->...ik', T, X.T) ** 2)", "X"),
    ("hessian", "sum(x[1:] * x[:-1] ** 2)", "x"), ("hessian", "logsumexp(x)", "x"),
    ("grad", "sum(var(X, axis=0)) + norm(X, 'fro') + sum(norm(X, 1, axis=1))", "X"),
]
CONSTRUCT_SHAPES = {"x": ("n",), "y": ("n",), "k": (3,), "X": ("n", "m"), "A": ("n", "n"),
                    "T": ("a", "n", "m"), "B": ("b", "c", "n"), "W": ("o", "c", 3),
                    "c": ("o",), "Z": ("b", "c", "h", "q"), "K": ("o", "c", 3, 3)}


def _construct_cases() -> list:
    return [(f"construct:{expr}", lambda k=kind, e=expr, w=wrt: (
        einderiv.compile(e, CONSTRUCT_SHAPES) if k == "compile" else
        getattr(einderiv, k)(e, w, CONSTRUCT_SHAPES))) for kind, expr, wrt in CONSTRUCTS]


def _value_and_grad(call: str, wrt: str, shapes: dict):
    try:
        return einderiv.value_and_grad(f"sum({call})", wrt, shapes)
    except einderiv.EinderivError:  # not differentiable (argmax): its value
        return einderiv.compile(call, shapes)


def _documented_cases() -> list:
    """Every `einderiv grad|hessian|jacobian ...` of README.md and docs/, in the latex format."""
    made = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if re.match(r"\$ einderiv (grad|hessian|jacobian) ", line):
                args = [a for a in shlex.split(line[2:])[1:] if a != "--check"]
                if "--format" in args:
                    i = args.index("--format")
                    del args[i:i + 2]
                made.append((f"{path.name}: {line[2:]}", args + ["--format", "latex"]))
    return made


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    """Every formula of the corpus: its name -> its LaTeX."""
    out = {}
    for name, make in _cases() + _rule_table_cases() + _construct_cases():
        out[name] = make().latex
    return out


def test_the_corpus_has_no_numpy(corpus):
    for name, text in corpus.items():
        for line in mathtext_lines(text):
            for spelled in NUMPY:
                assert spelled not in line, (name, spelled, line)
            assert not nested_fraction(line), (name, line)
            assert not re.search(r"\\(le|ge)\b", line), (name, line)  # mathtext: \leq, \geq


def _tokens(row: str) -> tuple:
    """What mathtext reads in a row, names and numbers left out: its commands and symbols."""
    return tuple(re.findall(r"\\[A-Za-z]+|\\.|[^A-Za-z0-9\s]", row))


def covering(rows) -> list[str]:
    """Rows that between them hold every command, symbol and pair of neighbouring ones of
    `rows`, shortest first: what rendering could fail on (an unknown command, a delimiter
    `\\left` cannot take), at a fraction of the rows (mathtext takes 10 to 50 ms a row)."""
    features = {row: _features(row) for row in rows}
    left, chosen = set().union(*features.values()), []
    while left:
        best = max(rows, key=lambda r: (len(features[r] & left) / (len(r) + 50), r))
        chosen.append(best)
        left -= features[best]
    return chosen


def _features(row: str) -> set:
    tokens = _tokens(row)
    return set(tokens) | set(zip(tokens, tokens[1:]))


def test_the_corpus_renders(corpus, mathtext):
    """Every row is well formed (braces, \\left and \\right, no double script: the checker of
    test_printers.py), and rows covering all that the corpus writes render with mathtext."""
    from test_printers import assert_well_formed
    rows = sorted({row for text in corpus.values() for row in mathtext_lines(text)})
    for row in rows:
        assert_well_formed(row)
    chosen = covering(rows)
    assert len(chosen) < len(rows) / 2
    problems = mathtext(block(*(row.replace(" = ", " &= ", 1) for row in chosen)))
    assert not problems, "\n".join(problems)


def test_the_documented_examples_render(mathtext, capsys):
    cases = _documented_cases()
    assert len(cases) >= 15
    for name, args in cases:
        capsys.readouterr()
        assert main(args) == 0, name
        printed = capsys.readouterr().out
        text = "\n".join(l for l in printed.splitlines() if not l.startswith("#"))
        assert text.startswith("\\begin{aligned}"), (name, printed)
        assert not mathtext(text), (name, mathtext(text))


def test_the_cover_holds_every_pair():
    rows = [r"\left|x\right|", r"\left|y\right| + 1", r"a \leq b", r"\frac{1}{x}", r"c \leq d"]
    chosen = covering(rows)
    assert len(chosen) == 3  # the second row has the first's pairs, the last the third's
    assert set().union(*map(_features, chosen)) == set().union(*map(_features, rows))


def test_the_renderer_catches_what_mathtext_cannot_render(mathtext):
    assert mathtext(block(r"f &= \left\lvert x \right\rvert"))
    assert mathtext(block(r"f &= \left[x \le y\right]"))
    assert not mathtext(block(r"f &= \left|x\right| + \left[x \leq y\right]"))


@pytest.mark.parametrize("a,k,b,want", [
    ("i-2", 1, "1", "i-1"), ("i+1", -1, "2", "i-1"), ("i-2", 1, "2", "i"),
    ("2i+1", 1, "3", "2i+4"), ("i-2", 1, "n", "i-2+n"), ("n-1-i", 1, "2", "n-1-i+2"),
    ("i", 1, "2", "i+2"), ("i_{2}-1", 1, "1", "i_{2}")])
def test_an_offset_of_an_offset_is_one_constant(a, k, b, want):
    """A pad of a slice takes x at (i - 3) + 3: `x_{i}`, not `x_{i-3+3}`."""
    from einderiv.generate.latex import _affine
    assert _affine(a, k, b) == want
