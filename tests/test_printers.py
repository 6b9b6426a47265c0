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
    assert_valid_document(text, len(program.temporaries) + len(program.outputs))
    return text


def test_logistic_regression_gradient():
    text = _latex(einderiv.grad(LOGISTIC[0], "w", LOGISTIC[1]))
    assert text == ("\\begin{aligned}\n"  # log(1 + exp(u)) is rewritten to softplus(u)
                    "\\mathrm{d}w &= -X^{\\top} \\left(\\sigma\\left(-y \\odot "
                    "\\left(X w\\right)\\right) \\odot y\\right)\n"
                    "\\end{aligned}")


def test_quadratic_form_hessian():
    text = _latex(einderiv.hessian("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)}))
    assert "\\mathrm{d}x\\,\\mathrm{d}x &= " in text
    assert "A^{\\top}" in text


def test_softmax_cross_entropy():
    g = einderiv.grad(*SOFTMAX_CE[:1], "W", SOFTMAX_CE[1])
    text = _latex(g)
    assert "\\mathrm{d}W &= " in text
    assert "\\operatorname{softmax}" in text
    assert "X^{\\top}" in text


def test_mlp_gradients():
    text = _latex(einderiv.grad(MLP[0], ["W1", "b1", "W2"], MLP[1]))
    # the layer's input is a temporary: tanh and its derivative, sech2, both take it
    assert "t_{0} &= W_{1} x + b_{1}" in text and "\\tanh(t_{0})" in text
    for name in ("\\mathrm{d}W_{1} &= ", "\\mathrm{d}b_{1} &= ", "\\mathrm{d}W_{2} &= "):
        assert name in text
    assert "W_{2}^{\\top}" in text


def test_logdet_and_friends():
    shapes = {"A": ("n", "n"), "B": ("n", "n")}
    text = _latex(einderiv.compile("logdet(A) + det(A) + tr(inv(A) @ B)", shapes))
    assert "\\log\\left\\lvert \\det(A) \\right\\rvert" in text
    assert "\\det(A)" in text
    assert "\\operatorname{tr}\\left(A^{-1} B\\right)" in text
    grad = _latex(einderiv.grad("logdet(A)", "A", shapes))
    assert "\\left(A^{-1}\\right)^{\\top}" in grad


def test_jacobian_with_identity():
    assert "\\mathrm{d}x &= 2 I_{n}" in _latex(einderiv.jacobian("x * 2", "x", {"x": ("n",)}))
    text = _latex(einderiv.jacobian("A @ x", "A", {"A": ("m", "n"), "x": ("n",)}))
    assert "I_{m}" in text


def test_einsum_fallback():
    shapes = {"T": ("a", "b", "c"), "M": ("b", "c")}
    text = _latex(einderiv.compile("einsum('ijk,jk->i', T, M)", shapes))
    assert "\\operatorname{einsum}_{\\text{ijk,jk}{\\to}\\text{i}}\\left(T, M\\right)" in text
    _latex(einderiv.grad("sum(einsum('ijk,jk->i', T, M) ** 2)", "M", shapes))


def test_sum_with_axis():
    assert "\\sum_{\\text{axis}=0} X" in _latex(einderiv.compile("sum(X, axis=0)",
                                                                  {"X": ("n", "d")}))
    text = _latex(einderiv.grad("sum(sum(X, axis=0) ** 2)", "X", {"X": ("n", "d")}))
    assert "\\sum_{\\text{axis}=0} X" in text


def test_slicing():
    text = _latex(einderiv.compile("x[1:] - x[:-1]", {"x": ("n",)}))
    assert "x_{1{:}} - x_{{:}-1}" in text
    _latex(einderiv.grad("sum(x[1:] * x[:-1]) + x[0]", "x", {"x": ("n",)}))


def test_value_and_grad_and_several_outputs():
    text = _latex(einderiv.value_and_grad(*LOGISTIC[:1], "w", LOGISTIC[1]))
    assert "\\mathit{out} &= \\sum \\operatorname{softplus}" in text
    text = _latex(einderiv.hessian("sum(x * y)", ["x", "y"], {"x": ("n",), "y": ("n",)}))
    assert "\\mathrm{d}x\\,\\mathrm{d}y &= I_{n}" in text


def test_bound_names_become_rows():
    text = _latex(einderiv.compile("h = tanh(W1 @ x); sum(h * h)",
                                   {"W1": ("m", "n"), "x": ("n",)}))
    assert "h &= \\tanh\\left(W_{1} x\\right)" in text
    assert "\\mathit{out} &= \\sum h^{2}" in text


# -- LaTeX of single constructs (through the parser, so the tree is what the language makes) ----

def tex(source: str) -> str:
    (expr,) = parse(source).statements
    text = latex_expr(expr)
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
    ("(a / b) ** 2", "\\left(\\frac{a}{b}\\right)^{2}"),
    ("-(a + b)", "-\\left(a + b\\right)"),
    ("-(-a)", "-\\left(-a\\right)"),
    ("-a * b", "-a \\odot b"),
    ("a + -b", "a + \\left(-b\\right)"),
    # sums and differences
    ("a - (b - c)", "a - \\left(b - c\\right)"),
    ("a - b - c", "a - b - c"),
    ("a - (b + c)", "a - \\left(b + c\\right)"),
    # products: elementwise, matrix, scalar; mixed products are bracketed
    ("a * b * c", "a \\odot b \\odot c"),
    ("a * (b * c)", "a \\odot \\left(b \\odot c\\right)"),
    ("A @ B @ x", "A B x"),
    ("A @ (B @ x)", "A \\left(B x\\right)"),
    ("a * (B @ x)", "a \\odot \\left(B x\\right)"),
    ("(A @ B) * c", "\\left(A B\\right) \\odot c"),
    ("(a * b) @ C", "\\left(a \\odot b\\right) C"),
    ("2 * x", "2 x"),
    ("2 * x * y", "2 x \\odot y"),
    ("x * 2", "x \\cdot 2"),
    ("2 * 3", "2 \\cdot 3"),
    ("-2 * x", "-2 x"),
    ("0.5 * x", "0.5 x"),
    ("1e-20 * x", "10^{-20} x"),
    ("(a + b) * c", "\\left(a + b\\right) \\odot c"),
    ("a / (b + c)", "\\frac{a}{b + c}"),
    ("a * b / c", "\\frac{a \\odot b}{c}"),
    # postfix: transpose, inverse, indexing
    ("X.T", "X^{\\top}"),
    ("X.T.T", "\\left(X^{\\top}\\right)^{\\top}"),
    ("(A @ B).T", "\\left(A B\\right)^{\\top}"),
    ("inv(A)", "A^{-1}"),
    ("inv(A).T", "\\left(A^{-1}\\right)^{\\top}"),
    ("inv(A @ B)", "\\left(A B\\right)^{-1}"),
    ("W1.T", "W_{1}^{\\top}"),
    ("x[0]", "x_{0}"),
    ("x[1:]", "x_{1{:}}"),
    ("x[:-1]", "x_{{:}-1}"),
    ("X[:, 0]", "X_{{:},0}"),
    ("v[:, None]", "v_{{:},\\mathrm{None}}"),
    ("t0[0]", "\\left(t_{0}\\right)_{0}"),
    ("X.T[0]", "\\left(X^{\\top}\\right)_{0}"),
    ("eye(n)[0]", "\\left(I_{n}\\right)_{0}"),
    # functions
    ("exp(x)", "\\exp(x)"),
    ("log(1 + x)", "\\log\\left(1 + x\\right)"),
    ("sigmoid(x)", "\\sigma(x)"),
    ("tanh(x) ** 2", "\\tanh(x)^{2}"),
    ("softmax(x)", "\\operatorname{softmax}(x)"),
    ("softmax(X, axis=0)", "\\operatorname{softmax}_{\\text{axis}=0}(X)"),
    ("logsumexp(X, axis=(0, 1))",
     "\\operatorname{logsumexp}_{\\text{axis}=\\left(0, 1\\right)}(X)"),
    ("tr(A)", "\\operatorname{tr}(A)"),
    ("diag(v)", "\\operatorname{diag}(v)"),
    ("det(A)", "\\det(A)"),
    ("logdet(A)", "\\log\\left\\lvert \\det(A) \\right\\rvert"),
    ("norm(x - y)", "\\left\\lVert x - y \\right\\rVert"),
    ("sqrt(x)", "\\sqrt{x}"),
    ("abs(x)", "\\left\\lvert x \\right\\rvert"),
    ("square(a + b)", "\\left(a + b\\right)^{2}"),
    ("log1p(x)", "\\log\\left(1 + x\\right)"),
    ("expm1(x) * y", "\\left(\\exp(x) - 1\\right) \\odot y"),
    ("maximum(x, 0)", "\\max\\left(x, 0\\right)"),
    ("relu(x)", "\\operatorname{relu}(x)"),
    ("my_rule(x)", "\\operatorname{my\\_rule}(x)"),
    ("eye(n)", "I_{n}"),
    ("eye(3)", "I_{3}"),
    ("ones(n)", "\\mathbf{1}_{n}"),
    ("ones(n, d)", "\\mathbf{1}_{n \\times d}"),
    ("zeros(n)", "\\mathbf{0}_{n}"),
    ("1 / size(n)", "\\frac{1}{n}"),
    ("outer(a, b)", "a \\otimes b"),
    ("outer(a * b, c)", "\\left(a \\odot b\\right) \\otimes c"),
    ("dot(a, b) * c", "\\left(a \\cdot b\\right) \\odot c"),
    ("einsum('ij,jk->ik', A, B)", "\\operatorname{einsum}_{\\text{ij,jk}{\\to}\\text{ik}}"
                                  "\\left(A, B\\right)"),
    ("einsum('ij->ji', A)", "\\operatorname{einsum}_{\\text{ij}{\\to}\\text{ji}}\\left(A\\right)"),
    # the sum operator
    ("sum(x)", "\\sum x"),
    ("sum(x * y)", "\\sum \\left(x \\odot y\\right)"),
    ("sum(x ** 2)", "\\sum x^{2}"),
    ("sum(X, axis=0)", "\\sum_{\\text{axis}=0} X"),
    ("sum(x) * y", "\\left(\\sum x\\right) \\odot y"),
    ("y * sum(x)", "y \\odot \\left(\\sum x\\right)"),
    ("sum(x) + y", "\\left(\\sum x\\right) + y"),
    ("y - sum(x)", "y - \\left(\\sum x\\right)"),
    ("sum(x) ** 2", "\\left(\\sum x\\right)^{2}"),
    ("-sum(x)", "-\\sum x"),
    ("sqrt(sum(x * x))", "\\sqrt{\\sum \\left(x \\odot x\\right)}"),
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
