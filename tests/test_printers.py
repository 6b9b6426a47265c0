"""The `latex` and `einsum` printers (SPEC §2, §4): both walk what the other formats walk.

LaTeX is checked for the fragments each construct should produce, for where brackets go, and
for being well formed (balanced braces and `\\left`/`\\right`, no double super- or subscript).
The einsum plan is checked by running it: every line is numpy over the lines before it, so the
outputs it computes must equal the compiled function's.
"""
from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

import einderiv
from einderiv.generate import einsum as einsum_printer
from einderiv.generate import latex as latex_printer
from einderiv.generate.latex import latex_expr, latex_name
from einderiv.parse import parse
from einderiv.parse import ast
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import resolve

LOGISTIC = ("sum(log(1 + exp(-y * (X @ w))))", {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
SOFTMAX_CE = ("-sum(Y * log(softmax(X @ W, axis=1)))",
              {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k")})
MLP = ("sum((W2 @ tanh(W1 @ x + b1) + b2 - y) ** 2)",
       {"W1": ("h", "d"), "b1": ("h",), "W2": ("o", "h"), "b2": ("o",), "x": ("d",),
        "y": ("o",)})


# -- well-formed LaTeX ---------------------------------------------------------------------------

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}^_]|\S")


def assert_well_formed(text: str) -> None:
    """Balanced braces and \\left/\\right, every script with an argument, no atom with two
    superscripts or two subscripts (TeX's "Double superscript" error)."""
    scripts = [set()]  # per open group: the scripts on its last atom
    pending = [False]  # per open group: a script waits for its argument
    depth = 0  # \left ... \right nesting
    for token in _TOKEN.findall(text):
        if token in ("^", "_"):
            assert not pending[-1], f"script without an argument in {text!r}"
            assert token not in scripts[-1], f"double {token} in {text!r}"
            scripts[-1].add(token)
            pending[-1] = True
        elif token == "{":
            scripts.append(set())
            pending.append(False)
        elif token == "}":
            assert len(scripts) > 1, f"unbalanced '}}' in {text!r}"
            assert not pending.pop(), f"script without an argument in {text!r}"
            scripts.pop()
            if pending[-1]:
                pending[-1] = False  # the group was a script's argument
            else:
                scripts[-1] = set()
        else:
            if token == r"\left":
                depth += 1
            elif token == r"\right":
                depth -= 1
                assert depth >= 0, f"\\right without \\left in {text!r}"
            if pending[-1]:
                pending[-1] = False
            elif token not in (r"\left", r"\right"):
                scripts[-1] = set()
    assert len(scripts) == 1, f"unbalanced '{{' in {text!r}"
    assert depth == 0, f"\\left without \\right in {text!r}"
    assert not pending[0], f"script without an argument in {text!r}"


def assert_valid_document(text: str, rows: int) -> list[str]:
    assert text.startswith("\\begin{aligned}\n")
    assert text.endswith("\n\\end{aligned}")
    body = text[len("\\begin{aligned}\n"):-len("\n\\end{aligned}")]
    lines = body.split(" \\\\\n")
    assert len(lines) == rows
    for line in lines:
        assert line.count("&=") == 1, line
        assert_well_formed(line)
        # Nothing of the Python spelling is left over.
        for python in ("**", "@", ".T", "'", '"', "sum(", "eye(", "ones("):
            assert python not in line, (python, line)
    assert_well_formed(body.replace(" \\\\\n", " "))
    return lines


def test_the_checker_catches_malformed_latex():
    for bad in ["x^{2}^{3}", "t_{0}_{1}", "{x", "x}", r"\left(x", r"x\right)", "x^"]:
        with pytest.raises(AssertionError):
            assert_well_formed(bad)
    assert_well_formed(r"t_{0}^{\top} + \left(X^{\top}\right)^{-1} + \frac{a}{b} \odot x_{1{:}}")


# -- LaTeX of derivatives --------------------------------------------------------------------------

def _latex(result) -> str:
    program = result.program
    text = result.latex
    # an output that another output reads is a temporary of its own name: one row, not two
    defined = {name for name, _ in program.temporaries}
    outputs = [name for name, expr in program.outputs
               if not (isinstance(expr, ast.Name) and expr.id == name and name in defined)]
    assert_valid_document(text, len(program.temporaries) + len(outputs))
    return text


def test_logistic_regression_gradient():
    text = _latex(einderiv.grad(LOGISTIC[0], "w", LOGISTIC[1]))
    assert text == ("\\begin{aligned}\n"  # log(1 + exp(u)) is rewritten to softplus(u)
                    "\\frac{\\partial f}{\\partial w} &= -X^{\\top} \\left(\\sigma\\left(-y \\odot "
                    "\\left(X w\\right)\\right) \\odot y\\right)\n"
                    "\\end{aligned}")


def test_quadratic_form_hessian():
    text = _latex(einderiv.hessian("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)}))
    assert "\\frac{\\partial^2 f}{\\partial x\\,\\partial x} &= " in text
    assert "A^{\\top}" in text


def test_softmax_cross_entropy():
    g = einderiv.grad(*SOFTMAX_CE[:1], "W", SOFTMAX_CE[1])
    text = _latex(g)
    assert "\\frac{\\partial f}{\\partial W} &= " in text
    assert "\\operatorname{log\\_softmax\\_vjp}" in text  # (the pullback, in one call)
    assert "X^{\\top}" in text


def test_mlp_gradients():
    text = _latex(einderiv.grad(MLP[0], ["W1", "b1", "W2"], MLP[1]))
    # the layer's input is a temporary: tanh and its derivative, sech2, both take it
    assert "t_{0} &= W_{1} x + b_{1}" in text and "\\tanh(t_{0})" in text
    for name in ("W_{1}", "b_{1}", "W_{2}"):
        name = f"\\frac{{\\partial f}}{{\\partial {name}}} &= "
        assert name in text
    assert "W_{2}^{\\top}" in text


def test_logdet_and_friends():
    shapes = {"A": ("n", "n"), "B": ("n", "n")}
    text = _latex(einderiv.compile("logdet(A) + det(A) + tr(inv(A) @ B)", shapes))
    assert "\\log\\left|\\det(A)\\right|" in text  # mathtext has no \\lvert
    assert "\\det(A)" in text
    assert "\\operatorname{tr}\\left(A^{-1} B\\right)" in text
    grad = _latex(einderiv.grad("logdet(A)", "A", shapes))
    assert "\\left(A^{-1}\\right)^{\\top}" in grad


def test_jacobian_with_identity():
    assert "\\frac{\\partial f}{\\partial x} &= 2 I_{n}" in \
        _latex(einderiv.jacobian("x * 2", "x", {"x": ("n",)}))
    # a tensor of three axes: index notation, the identity a Kronecker delta
    text = _latex(einderiv.jacobian("A @ x", "A", {"A": ("m", "n"), "x": ("n",)}))
    assert "\\frac{\\partial f_{i}}{\\partial A_{jk}} &= \\delta_{ij} x_{k}" in text


def test_einsum_fallback():
    shapes = {"T": ("a", "b", "c"), "M": ("b", "c")}
    text = _latex(einderiv.compile("einsum('ijk,jk->i', T, M)", shapes))
    assert "f_{i} &= \\sum_{j,k} T_{ijk} M_{jk}" in text  # the sum an einsum is
    _latex(einderiv.grad("sum(einsum('ijk,jk->i', T, M) ** 2)", "M", shapes))


def test_sum_with_axis():
    # X's rows added: X^T 1, a column like every vector
    assert "f &= X^{\\top} \\mathbf{1}_{n}" in _latex(einderiv.compile("sum(X, axis=0)",
                                                                       {"X": ("n", "d")}))
    assert "f &= X \\mathbf{1}_{d}" in _latex(einderiv.compile("sum(X, axis=1)",
                                                              {"X": ("n", "d")}))
    text = _latex(einderiv.grad("sum(sum(X, axis=0) ** 2)", "X", {"X": ("n", "d")}))
    assert "&= 2 \\mathbf{1}_{n} \\mathbf{1}_{n}^{\\top} X" in text


def test_slicing():
    text = _latex(einderiv.compile("x[1:] - x[:-1]", {"x": ("n",)}))
    assert "f_{i} &= x_{i+1} - x_{i}" in text
    _latex(einderiv.grad("sum(x[1:] * x[:-1]) + x[0]", "x", {"x": ("n",)}))


def test_value_and_grad_and_several_outputs():
    text = _latex(einderiv.value_and_grad(*LOGISTIC[:1], "w", LOGISTIC[1]))
    assert "f &= \\sum_{i} \\operatorname{softplus}" in text
    text = _latex(einderiv.hessian("sum(x * y)", ["x", "y"], {"x": ("n",), "y": ("n",)}))
    assert "\\frac{\\partial^2 f}{\\partial x\\,\\partial y} &= I_{n}" in text


def test_bound_names_become_rows():
    text = _latex(einderiv.compile("h = tanh(W1 @ x); sum(h * h)",
                                   {"W1": ("m", "n"), "x": ("n",)}))
    assert "h &= \\tanh\\left(W_{1} x\\right)" in text
    assert "f &= \\sum_{i} h_{i}^{2}" in text


# -- LaTeX of single constructs (through the parser, so the tree is what the language makes) ----

# The shapes the constructs are typeset with: lowercase letters are vectors of n, uppercase ones
# n x n matrices, s a scalar.
N, NN = ("n",), ("n", "n")
SHAPES = {**{k: N for k in "abcvxy"}, "t0": N, **{k: NN for k in "ABCX"}, "W1": NN, "s": (),
          "Y": ("n", "d"), "T": ("n", "n", "n")}


def tex(source: str) -> str:
    (expr,) = parse(source).statements
    text = latex_expr(expr, shapes=SHAPES)
    assert_well_formed(text)
    return text


@pytest.mark.parametrize("source, expected", [
    # unary minus and powers
    ("-x ** 2", "-x^{2}"),
    ("(-x) ** 2", "\\left(-x\\right)^{2}"),
    ("x ** -1", "x^{-1}"),
    ("x ** (a + b)", "x^{a + b}"),
    ("(a + b) ** 2", "\\left(a + b\\right)^{2}"),
    ("(x ** 2) ** 3", "\\left(x^{2}\\right)^{3}"),
    ("t0 ** 2", "t_{0}^{2}"),
    ("X ** 2", "X^{\\circ 2}"),  # a matrix's elementwise square: X^2 would be X X
    ("(a / b) ** 2", "\\left(\\frac{a}{b}\\right)^{2}"),
    ("-(a + b)", "-\\left(a + b\\right)"),
    ("-(-a)", "-\\left(-a\\right)"),
    ("-a * b", "-a \\odot b"),
    ("a + -b", "a + \\left(-b\\right)"),
    ("-(A @ B) @ C", "-A B C"),
    ("-(a * b) @ C", "C^{\\top} \\left(-a \\odot b\\right)"),
    # sums and differences
    ("a - (b - c)", "a - \\left(b - c\\right)"),
    ("a - b - c", "a - b - c"),
    ("a - (b + c)", "a - \\left(b + c\\right)"),
    # products: elementwise, matrix, scalar (the scalar first); mixed products are bracketed,
    # matrix products associate
    ("a * b * c", "a \\odot b \\odot c"),
    ("a * (b * c)", "a \\odot \\left(b \\odot c\\right)"),
    ("A @ B @ x", "A B x"),
    ("A @ (B @ x)", "A B x"),
    ("a * (B @ x)", "a \\odot \\left(B x\\right)"),
    ("(a * b) @ C", "C^{\\top} \\left(a \\odot b\\right)"),  # vectors are columns
    ("x @ y", "x^{\\top} y"),
    ("2 * x", "2 x"),
    ("2 * x * y", "2 x \\odot y"),
    ("x * 2", "2 x"),
    ("X * s", "s X"),
    ("2 * (X @ x)", "2 X x"),
    ("2 * 3", "2 \\cdot 3"),
    ("-2 * x", "-2 x"),
    ("0.5 * x", "0.5 x"),
    ("1e-20 * x", "10^{-20} x"),
    ("(a + b) * c", "\\left(a + b\\right) \\odot c"),
    # broadcasts written out: a row repeated, a column repeated, rows and columns scaled
    ("A + b", "A + \\mathbf{1}_{n} b^{\\top}"),
    ("A + b[:, None]", "A + b \\mathbf{1}_{n}^{\\top}"),
    ("A - b[None, :]", "A - \\mathbf{1}_{n} b^{\\top}"),
    ("Y * a[:, None]", "\\operatorname{diag}(a) Y"),
    ("A * b", "A \\operatorname{diag}(b)"),
    ("(2 * a)[:, None] * Y", "\\operatorname{diag}\\left(2 a\\right) Y"),
    ("a[:, None] * b", "a b^{\\top}"),
    ("Y / a[:, None]", "\\operatorname{diag}(a)^{-1} Y"),
    ("exp(A - b[:, None])", "\\exp\\left(A - b \\mathbf{1}_{n}^{\\top}\\right)"),
    ("v[:, None]", "v"),
    ("v[None, :]", "v^{\\top}"),
    ("ones(n, n) * a", "\\mathbf{1}_{n} a^{\\top}"),
    # fractions: one line, signs in front, equal factors as powers
    ("a / (b + c)", "\\frac{a}{b + c}"),
    ("a * b / c", "\\frac{a \\odot b}{c}"),
    ("-1 / x / x", "-\\frac{1}{x^{2}}"),
    ("-a / b / b", "-\\frac{a}{b^{2}}"),
    ("(a / b) / (c / x)", "\\frac{a \\odot x}{b \\odot c}"),
    ("-0.25 * a ** 2 / b", "-\\frac{0.25 a^{2}}{b}"),
    ("2 * x / size(n)", "\\frac{2 x}{n}"),
    ("mean(x) / size(n)", "\\frac{\\sum_{i} x_{i}}{n^{2}}"),
    ("ones(n, n) / (size(n) * size(n))", "\\frac{\\mathbf{1}_{n \\times n}}{n^{2}}"),
    ("a * (b / c)", "\\frac{a \\odot b}{c}"),
    # postfix: transpose, inverse, indexing
    ("X.T", "X^{\\top}"),
    ("X.T.T", "X"),
    ("x.T", "x"),  # a vector's transpose is itself, as numpy's
    ("(A @ B).T", "B^{\\top} A^{\\top}"),
    ("inv(A)", "A^{-1}"),
    ("inv(A).T", "\\left(A^{-1}\\right)^{\\top}"),
    ("inv(A @ B)", "\\left(A B\\right)^{-1}"),
    ("solve(A, b)", "A^{-1} b"),
    ("W1.T", "W_{1}^{\\top}"),
    ("x[0]", "x_{0}"),
    ("x[-1]", "x_{n-1}"),
    ("X[1, 0]", "X_{1,0}"),
    ("t0[0]", "\\left(t_{0}\\right)_{0}"),
    ("eye(n)[0]", "\\mathbf{e}_{0}"),
    # indexing with a slice has no matrix form: index notation (free indices i, j, ...)
    ("x[1:]", "x_{i+1}"),
    ("x[:-1]", "x_{i}"),
    ("x[2:] * y[:-2]", "x_{i+2} y_{i}"),
    ("x[::-1]", "x_{n-1-i}"),
    ("x[1::2]", "x_{2i+1}"),
    ("X[:, 0]", "X_{i0}"),
    ("X.T[0]", "X_{i0}"),
    ("eye(n)[1:]", "\\delta_{i+1,j}"),
    ("pad(x, (1, 0))", "\\left[i \\geq 1\\right] x_{i-1}"),
    # functions
    ("exp(x)", "\\exp(x)"),
    ("log(1 + x)", "\\log\\left(1 + x\\right)"),
    ("sigmoid(x)", "\\sigma(x)"),
    ("tanh(x) ** 2", "\\tanh(x)^{2}"),
    ("softmax(x)", "\\operatorname{softmax}(x)"),
    ("softmax(x, axis=0)", "\\operatorname{softmax}(x)"),  # a vector's only axis
    ("softmax(X, axis=0)", "\\operatorname{softmax}_{i}\\left(X_{ij}\\right)"),
    ("logsumexp(X, axis=1)", "\\operatorname{logsumexp}_{j}\\left(X_{ij}\\right)"),
    ("logsumexp(X, axis=(0, 1))", "\\operatorname{logsumexp}_{i,j}\\left(X_{ij}\\right)"),
    ("tr(A)", "\\operatorname{tr}(A)"),
    ("diag(v)", "\\operatorname{diag}(v)"),
    ("det(A)", "\\det(A)"),
    ("logdet(A)", "\\log\\left|\\det(A)\\right|"),
    ("norm(x - y)", "\\left\\|x - y\\right\\|"),
    ("sqrt(x)", "\\sqrt{x}"),
    ("abs(x)", "\\left|x\\right|"),
    ("square(a + b)", "\\left(a + b\\right)^{2}"),
    ("log1p(x)", "\\log\\left(1 + x\\right)"),
    ("expm1(x) * y", "\\left(\\exp(x) - 1\\right) \\odot y"),
    ("maximum(x, 0)", "\\max\\left(x, 0\\right)"),
    ("relu(x)", "\\operatorname{relu}(x)"),
    ("x <= y", "\\left[x \\leq y\\right]"),
    ("where(x >= 0, x, y)", "\\operatorname{where}\\left(\\left[x \\geq 0\\right], x, y\\right)"),
    ("eye(n)", "I_{n}"),
    ("eye(3)", "I_{3}"),
    ("ones(n)", "\\mathbf{1}_{n}"),
    ("ones(n, d)", "\\mathbf{1}_{n \\times d}"),
    ("zeros(n)", "\\mathbf{0}_{n}"),
    ("1 / size(n)", "\\frac{1}{n}"),
    ("outer(a, b)", "a b^{\\top}"),
    ("outer(a * b, c)", "\\left(a \\odot b\\right) c^{\\top}"),
    ("dot(a, b) * c", "\\left(a^{\\top} b\\right) c"),
    ("kron(A, B)", "A \\otimes B"),
    # einsum is the sum it writes
    ("einsum('ij,jk->ik', A, B)", "\\sum_{k} A_{ik} B_{kj}"),
    ("einsum('ij->ji', A)", "A_{ji}"),
    ("einsum('ijk,jk->i', T, A)", "\\sum_{j,k} T_{ijk} A_{jk}"),
    ("einsum('ii', A)", "\\sum_{i} A_{ii}"),
    # sums: of every entry with its index, over one axis of a matrix a product with ones
    ("sum(x)", "\\sum_{i} x_{i}"),
    ("sum(x * y)", "\\sum_{i} x_{i} y_{i}"),
    ("sum(x ** 2)", "\\sum_{i} x_{i}^{2}"),
    ("sum(X)", "\\sum_{i,j} X_{ij}"),
    ("sum(X, axis=0)", "X^{\\top} \\mathbf{1}_{n}"),
    ("sum(X, axis=1)", "X \\mathbf{1}_{n}"),
    ("sum(A * B, axis=0)", "\\left(A \\odot B\\right)^{\\top} \\mathbf{1}_{n}"),
    ("mean(X, axis=1)", "\\frac{1}{n} X \\mathbf{1}_{n}"),
    ("sum(T, axis=2)", "\\sum_{k} T_{ijk}"),
    ("sum(x) * y", "\\left(\\sum_{i} x_{i}\\right) y"),
    ("y * sum(x)", "\\left(\\sum_{i} x_{i}\\right) y"),
    ("sum(x) + y", "\\left(\\sum_{i} x_{i}\\right) + y"),
    ("y - sum(x)", "y - \\left(\\sum_{i} x_{i}\\right)"),
    ("sum(x) ** 2", "\\left(\\sum_{i} x_{i}\\right)^{2}"),
    ("sum(x) * sum(y)", "\\left(\\sum_{i} x_{i}\\right) \\left(\\sum_{i} y_{i}\\right)"),
    ("-sum(x)", "-\\sum_{i} x_{i}"),
    ("sqrt(sum(x * x))", "\\sqrt{\\sum_{i} x_{i} x_{i}}"),
    # tensors of three axes: index notation
    ("T + A", "T_{ijk} + A_{jk}"),
    ("T * x[:, None, None]", "T_{ijk} x_{i}"),
    ("T @ A", "\\sum_{l} T_{ijl} A_{lk}"),
])
def test_construct(source, expected):
    assert tex(source) == expected


@pytest.mark.parametrize("name, expected", [
    ("x", "x"), ("W1", "W_{1}"), ("t12", "t_{12}"), ("W_1", "W_{1}"),
    ("x_prev", "x_{\\mathrm{prev}}"), ("x_a_b", "x_{\\mathrm{a\\_b}}"), ("alpha", "\\alpha"),
    ("beta_1", "\\beta_{1}"), ("Sigma", "\\Sigma"), ("hidden", "\\mathit{hidden}"),
    ("fc12", "\\mathit{fc}_{12}"), ("_x", "\\mathit{\\_x}"), ("x_i", "x_{i}"),
])
def test_names(name, expected):
    assert latex_name(name) == expected
    assert_well_formed(expected)


def test_numbers():
    assert tex("1e999 - 1e999") == "\\infty - \\infty"
    assert tex("2.5e-07 * x") == "2.5 \\times 10^{-7} x"
    assert tex("(1e-20) ** 2") == "\\left(10^{-20}\\right)^{2}"


# -- the notebook display --------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)}),
    lambda: einderiv.grad(*LOGISTIC[:1], "w", LOGISTIC[1]),
    lambda: einderiv.hessian("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)}),
    lambda: einderiv.jacobian("tanh(x)", "x", {"x": ("n",)}),
    lambda: einderiv.value_and_grad("sum(x * x)", "x", {"x": ("n",)}),
])
def test_repr_latex(make):
    result = make()
    shown = result._repr_latex_()
    assert shown.startswith("$$") and shown.endswith("$$")
    assert shown == "$$" + result.latex + "$$"
    assert "\\begin{aligned}" in shown


# -- the einsum plan -------------------------------------------------------------------------------

_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = (.+)$")


def run_plan(plan: str, arrays: dict, dims: dict) -> dict:
    """Execute the plan's lines with numpy: `contract` is `numpy.einsum`, functions are the
    rule book's implementations, dimension names are bound to their sizes."""
    rules = default_rulebook()
    functions = {"contract": lambda spec, *ops: np.einsum(spec, *ops),
                 "ones": lambda *d: np.ones(d), "eye": np.eye, "size": float}
    values = {**dims, **arrays}
    for line in plan.splitlines():
        match = _LINE.match(line)
        assert match, line
        name, rhs = match.groups()
        names = set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", re.sub(r"'[^']*'", "", rhs)))
        scope = dict(functions)
        for n in names - set(functions) - set(values) - {"axis", "k"}:
            f = rules.get(n)
            assert f is not None and f.impl is not None, f"unknown name {n} in {line!r}"
            scope[n] = resolve(f.impl, np)
        scope.update(values)
        values[name] = eval(rhs, {"__builtins__": {}}, scope)  # our own printout
    return values


def _contractions(plan: str) -> list[tuple[str, str]]:
    return re.findall(r"contract\('([^']*)', ([^)]*)\)", plan)


def test_plan_subscripts_affine():
    plan = einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)}).einsum
    assert _contractions(plan) == [("ij,j->i", "W, x")]
    assert plan.splitlines()[-1] == "out = t0 + b"


def test_plan_subscripts_gram_matrix():
    plan = einderiv.compile("X.T @ X", {"X": ("n", "d")}).einsum
    ((spec, operands),) = _contractions(plan)
    assert operands == "X, X"
    assert spec in ("ki,kj->ij", "ji,jk->ik")
    X = np.arange(6.0).reshape(3, 2)
    assert np.allclose(np.einsum(spec, X, X), X.T @ X)


def test_plan_subscripts_trace_of_product():
    plan = einderiv.compile("tr(A @ B)", {"A": ("n", "m"), "B": ("m", "n")}).einsum
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(4, 3))
    assert run_plan(plan, {"A": A, "B": B}, {"n": 3, "m": 4})["out"] == pytest.approx(
        np.trace(A @ B))
    specs = [s for s, _ in _contractions(plan)]
    assert specs in (["ij,ji->"], ["ik,kj->ij", "ii->"])


def test_plan_subscripts_axis_sum():
    plan = einderiv.compile("sum(X, axis=0)", {"X": ("n", "d")}).einsum
    assert plan == "out = contract('ji->i', X)"


PLAN_CASES = [
    ("grad", *LOGISTIC, "w"),
    ("grad", *SOFTMAX_CE, "W"),
    ("grad", *MLP, ["W1", "b1", "W2", "b2"]),
    ("hessian", "x @ A @ x", {"A": ("n", "n"), "x": ("n",)}, "x"),
    ("hessian", "sum(log(1 + exp(X @ w)))", {"X": ("m", "n"), "w": ("n",)}, "w"),
    ("grad", "logdet(A) + tr(inv(A) @ B) + det(A)", {"A": ("n", "n"), "B": ("n", "n")}, "A"),
    ("jacobian", "A @ x", {"A": ("m", "n"), "x": ("n",)}, "A"),
    ("jacobian", "outer(x, x)", {"x": ("n",)}, "x"),
    ("grad", "sum(einsum('ijk,jk->i', T, M) ** 2)", {"T": ("m", "n", "n"), "M": ("n", "n")},
     "M"),
    ("grad", "sum(sum(X, axis=0) ** 2) + mean(X)", {"X": ("m", "n")}, "X"),
    ("grad", "sum(x[1:] * x[:-1]) + x[0] + norm(x)", {"x": ("n",)}, "x"),
    ("grad", "logsumexp(X, axis=1) @ y + sum(softmax(X) * X)", {"X": ("m", "n"), "y": ("m",)},
     "X"),
    ("value_and_grad", "sum(tanh(A @ x) ** 2)", {"A": ("m", "n"), "x": ("n",)}, ["A", "x"]),
    ("jacobian", "x", {"x": ("n",)}, "x"),
    ("grad", "sum(x * c)", {"x": ("n",), "c": ("n",)}, "x"),
    ("hessian", "sum(x * y)", {"x": ("n",), "y": ("n",)}, ["x", "y"]),
]


def _flatten(value) -> list:
    if isinstance(value, tuple):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


@pytest.mark.parametrize("kind, expr, shapes, wrt", PLAN_CASES)
def test_plan_runs_to_the_same_values(kind, expr, shapes, wrt):
    result = getattr(einderiv, kind)(expr, wrt, shapes)
    dims = {"m": 4, "n": 3, "d": 3, "k": 5, "h": 4, "o": 2}
    rng = np.random.default_rng(1)
    arrays = {}
    for name, shape in shapes.items():
        a = rng.normal(size=tuple(dims[s] for s in shape))
        if len(shape) == 2 and shape[0] == shape[1]:
            a = a + 3 * np.eye(dims[shape[0]])  # well away from singular
        arrays[name] = a
    plan = result.einsum
    values = run_plan(plan, arrays, dims)
    expected = _flatten(result(**arrays))
    assert set(result.roots) <= set(values)  # every output has a line
    for name, want in zip(result.roots, expected):
        np.testing.assert_allclose(values[name], want, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind, expr, shapes, wrt", PLAN_CASES)
def test_plan_lines_once_each(kind, expr, shapes, wrt):
    plan = getattr(einderiv, kind)(expr, wrt, shapes).einsum
    lines = [_LINE.match(line).groups() for line in plan.splitlines()]
    names = [n for n, _ in lines]
    assert len(names) == len(set(names))  # each node, and each output, defined once
    bodies = [rhs for _, rhs in lines if not re.fullmatch(r"[A-Za-z_]\w*", rhs)]
    assert len(bodies) == len(set(bodies))  # a shared node is not written twice
    assert not any(n in shapes for n in names)  # no line overwrites an input


def test_plan_shares_nodes():
    plan = einderiv.grad(*LOGISTIC[:1], "w", LOGISTIC[1]).einsum
    assert plan.count("sigmoid(") == 1
    assert plan.count("contract('ij,j->i', X, w)") == 1


def test_plan_names():
    g = einderiv.value_and_grad("exp(sum(x))", "x", {"x": ("n",)})
    lines = g.einsum.splitlines()
    assert lines[-2].startswith("out = exp(")
    assert lines[-1] == "dx = contract(',i->i', out, ones(n))"  # the value, used by name
    bound = einderiv.compile("h = tanh(x); sum(h * h)", {"x": ("n",)}).einsum
    assert bound == "h = tanh(x)\nout = contract('i,i->', h, h)"
    assert einderiv.jacobian("x", "x", {"x": ("n",)}).einsum == "dx = eye(n)"
    windows = einderiv.compile("x[1:] - x[:-1]", {"x": ("n",)}).einsum
    assert "eye(n-1, n, k=1)" in windows and "eye(n-1, n)" in windows


def test_doc_examples():
    for module in (latex_printer, einsum_printer):
        assert doctest.testmod(module).failed == 0
