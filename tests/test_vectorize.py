"""Golden formulas (issue 4, SPEC §4): the `formula` of classic derivatives reads the way a person
would write it, parses back through einderiv, and evaluates to the right values.

Each case states what its formula must be: the exact text where the vectorizer already writes
what a person would, otherwise the properties it must have (no `einsum` where a matrix form
exists, the matrix products a person would use, ...). Where the current text is equivalent but
not yet what a person would write, the target is also stated as a strict xfail, so that reaching
it turns the mark into a failure to remove.

Every case is also run: each output's program (the temporaries plus its line) compiles through
`einderiv.compile` and evaluates to the values of the result, and those values match central
finite differences of the forward expression.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, random_inputs, relative_error
from einderiv.parse import ast, parse
from einderiv.parse.unparse import unparse

# Different sizes for different dimension names, so that a transposed result cannot pass.
SIZES = {"n": 5, "d": 3, "m": 4, "p": 2, "k": 2, "h": 4, "a": 2, "b": 3, "c": 4}

LINEAR = {"X": ("n", "d"), "w": ("d",), "y": ("n",)}
MLP_SHAPES = {"X": ("n", "d"), "W1": ("d", "h"), "b1": ("h",), "W2": ("h", "k"), "b2": ("k",),
              "Y": ("n", "k")}
MLP_WRT = ["W1", "b1", "W2", "b2"]


@dataclass
class Case:
    id: str
    kind: str  # grad, jacobian, hessian, value_and_grad
    expr: str
    wrt: str | list
    shapes: dict
    exact: tuple = ()  # accepted texts; empty: only the properties below are checked
    must: tuple = ()  # substrings the formula contains
    must_not: tuple = ()  # substrings it does not contain (besides "einsum", see below)
    einsum: bool = False  # einsum is allowed: no matrix form exists
    lines: int | None = None  # at most this many lines
    target: object = None  # (description, predicate) the formula does not satisfy yet
    marks: list = field(default_factory=list)

    def make(self):
        return getattr(einderiv, self.kind)(self.expr, self.wrt, self.shapes)


def exact_target(*texts):
    return (f"formula is one of {texts!r}", lambda f: f in texts)


LOGISTIC_HESSIAN = "X.T @ ((y * dsigmoid(-y * (X @ w)) * y)[:, None] * X)"

CASES = [
    Case("least-squares", "grad", "sum((X @ w - y) ** 2)", "w", LINEAR,
         exact=("2 * (X.T @ (X @ w - y))",)),
    Case("least-squares-value-and-grad", "value_and_grad", "sum((X @ w - y) ** 2)", "w", LINEAR,
         exact=("t0 = X @ w - y\nout = sum(t0 ** 2)\ndw = 2 * (X.T @ t0)",)),
    Case("logistic-softplus", "grad", "sum(softplus(-y * (X @ w)))", "w", LINEAR,
         exact=("-(X.T @ (sigmoid(-y * (X @ w)) * y))",
                "-(X.T @ (y * sigmoid(-y * (X @ w))))")),
    # log(1 + exp(u)) is rewritten to softplus(u) (rules/rewrites.rules) before it is derived.
    Case("logistic", "grad", "sum(log(1 + exp(-y * (X @ w))))", "w", LINEAR,
         exact=("-(X.T @ (y * sigmoid(-y * (X @ w))))",
                "-(X.T @ (sigmoid(-y * (X @ w)) * y))")),
    # The weight sigmoid'(m) = dsigmoid(m) = sech(m / 2) ** 2 / 4 (exact, where s * (1 - s)
    # cancels at large margins) of the margin m, X.T @ ((...)[:, None] * X), no transpose of the whole.
    Case("logistic-hessian", "hessian", "sum(log(1 + exp(-y * (X @ w))))", "w", LINEAR,
         exact=(LOGISTIC_HESSIAN,)),
    # Binary cross-entropy through a sigmoid: its log-sigmoids are rewritten to softplus, and
    # the two softplus terms to softplus(z) - y * z, whose derivative has one sigmoid.
    Case("bce-sigmoid", "grad",
         "sum(-(y * log(sigmoid(X @ w)) + (1 - y) * log(1 - sigmoid(X @ w))))", "w", LINEAR,
         exact=("X.T @ (sigmoid(X @ w) - y)", "X.T @ (-y + sigmoid(X @ w))")),
    Case("bce-sigmoid-hessian", "hessian",
         "sum(-(y * log(sigmoid(X @ w)) + (1 - y) * log(1 - sigmoid(X @ w))))", "w", LINEAR,
         exact=("X.T @ (dsigmoid(X @ w)[:, None] * X)",)),
    Case("logistic-softplus-hessian", "hessian", "sum(softplus(-y * (X @ w)))", "w", LINEAR,
         exact=(LOGISTIC_HESSIAN,)),
    Case("trace-AXB", "grad", "tr(A @ X @ B)", "X", {"A": ("p", "n"), "X": ("n", "m"),
                                                    "B": ("m", "p")},
         exact=("A.T @ B.T", "(B @ A).T")),
    # The transpose of a product goes on its operands (A.T @ X, was (X.T @ A).T).
    Case("trace-XtAX", "grad", "tr(X.T @ A @ X)", "X", {"X": ("n", "n"), "A": ("n", "n")},
         exact=("(A + A.T) @ X", "(A.T + A) @ X")),  # one product (issue 13), not two
    Case("quadratic-form", "grad", "x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)},
         exact=("(A + A.T) @ x", "(A.T + A) @ x")),
    Case("quadratic-form-hessian", "hessian", "x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)},
         exact=("A + A.T", "A.T + A")),
    Case("logdet", "grad", "logdet(X)", "X", {"X": ("n", "n")}, exact=("inv(X).T",)),
    # The adjugate: det(X) * inv(X).T where X is regular, the cofactors where it is singular.
    Case("det", "grad", "det(X)", "X", {"X": ("n", "n")}, exact=("adj(X).T",)),
    Case("inv-bilinear", "grad", "a @ inv(X) @ b", "X",
         {"X": ("n", "n"), "a": ("n",), "b": ("n",)},
         # inv(X) met by a vector on one axis is a solve (simplify/solves.py)
         exact=("-outer(solve(X.T, a), solve(X, b))",)),
    # sum(inv(X)) is sum(solve(X, ones(n))): an axis of inv(X) summed alone is a solve of ones
    Case("sum-inv", "grad", "sum(inv(X))", "X", {"X": ("n", "n")},
         exact=("-outer(solve(X.T, ones(n)), solve(X, ones(n)))",)),
    # d inv(X)[i,j] / dX[k,l] = -inv(X)[i,k] inv(X)[l,j] has the broadcast form: each factor
    # broadcast into the output's order, no einsum.
    Case("inv-jacobian", "jacobian", "inv(X)", "X", {"X": ("n", "n")},
         exact=("t0 = inv(X)\n-t0[:, None, :, None] * t0.T[:, None]",)),
    # The zero subgradient at 0 (as PyTorch): X / norm(X) would be 0 / 0, X / 1 is 0.
    Case("frobenius-norm", "grad", "norm(X)", "X", {"X": ("n", "d")},
         exact=("t0 = norm(X)\nX / where(t0, t0, 1)",)),
    Case("vector-norm", "grad", "norm(x)", "x", {"x": ("n",)},
         exact=("t0 = norm(x)\nx / where(t0, t0, 1)",)),
    Case("bilinear-outer", "grad", "a @ X @ b", "X", {"a": ("n",), "X": ("n", "m"), "b": ("m",)},
         exact=("outer(a, b)",)),
    # sum(y) * softmax(z) - y in one call, log_softmax's vjp (rules/tensor.rules): exact where
    # the class is right and confident, where that difference cancels
    Case("softmax-cross-entropy", "grad", "-sum(y * log(softmax(W @ x)))", "W",
         {"W": ("k", "d"), "x": ("d",), "y": ("k",)},
         exact=("outer(log_softmax_vjp(W @ x, -y), x)",)),
    Case("softmax-cross-entropy-batch", "grad", "-sum(Y * log(softmax(X @ W, axis=1)))", "W",
         {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k")},
         exact=("X.T @ log_softmax_vjp(X @ W, -Y)",)),
    Case("mlp-squared-loss", "grad", "H = tanh(X @ W1 + b1)\nsum((H @ W2 + b2 - Y) ** 2)",
         MLP_WRT, MLP_SHAPES,
         # the residual scaled once, as a person writes it (R = 2 * (H @ W2 + b2 - Y)), not
         # each of its three uses (one as large as the hidden layer)
         must=("t0 = X @ W1 + b1\nH = tanh(t0)\n", " = 2 * (H @ W2 + b2 - Y)\n", "dW1 = X.T @ ",
               "\ndb1 = sum(", "\ndW2 = H.T @ t", "\ndb2 = sum(t", "W2.T", "sech2(t0)"),
         must_not=("outer", "diag", "eye", "2 * (H.T", "2 * sum")),
    Case("mlp-cross-entropy", "grad",
         "H = tanh(X @ W1 + b1)\nZ = H @ W2 + b2\n-sum(Y * log(softmax(Z, axis=1)))",
         MLP_WRT, MLP_SHAPES,
         must=("t0 = X @ W1 + b1\nH = tanh(t0)\n", "Z = H @ W2 + b2\n", "log_softmax_vjp(Z, -Y)",
               "dW1 = X.T @ ", "\ndb1 = sum(", "\ndW2 = H.T @ ", "\ndb2 = sum(", "W2.T",
               "sech2(t0)"),
         must_not=("outer", "diag", "eye")),
    Case("jacobian-exp", "jacobian", "exp(x)", "x", {"x": ("n",)},
         exact=("diag(exp(x))", "exp(x)[:, None] * eye(n)")),
    Case("jacobian-Wx-x", "jacobian", "W @ x", "x", {"W": ("m", "n"), "x": ("n",)},
         exact=("W",)),
    Case("jacobian-Wx-W", "jacobian", "W @ x", "W", {"W": ("m", "n"), "x": ("n",)},
         exact=("eye(m)[:, :, None] * x",)),
    Case("sum-axis-0", "grad", "sum(sum(X, axis=0) ** 2)", "X", {"X": ("n", "d")},
         exact=("2 * (sum(X, axis=0) * ones(n, d))", "2 * sum(X, axis=0) * ones(n, d)")),
    Case("sum-axis-0-jacobian", "jacobian", "sum(X, axis=0)", "X", {"X": ("n", "d")},
         exact=("eye(d)[:, None] * ones(d, n, d)",)),
    Case("mean", "grad", "mean(x ** 2)", "x", {"x": ("n",)},
         exact=("2 * (x / size(n))", "2 * x / size(n)")),
    Case("mean-matrix", "grad", "mean(X)", "X", {"X": ("n", "d")},
         exact=("1 / (size(n) * size(d)) * ones(n, d)", "ones(n, d) / (size(n) * size(d))")),
    Case("slice-differences", "grad", "sum((x[1:] - x[:-1]) ** 2)", "x", {"x": ("n",)},
         exact=("t0 = x[1:] - x[:-1]\n2 * pad(t0, ((1, 0),)) - 2 * pad(t0, ((0, 1),))",)),
    # The derivative of a pick is the rest of the product padded with zeros, not a product with
    # a one-hot vector (eye(n)[2] * x[0] was 0 * inf = nan off the pick for an infinite x[0])
    Case("indexing", "grad", "x[0] * x[2] + X[1, 0]", "x", {"x": ("n",), "X": ("n", "d")},
         must=("pad(x[2:3], ((0, n - 1),))", "pad(x[:1], ((2, n - 3),))"),
         must_not=("outer", "diag", "eye("), lines=1),
    Case("indexing-row", "grad", "sum(X[1] * w)", "X", {"X": ("n", "d"), "w": ("d",)},
         exact=("pad(w[None], ((1, n - 2), (0, 0)))",)),
    Case("einsum-broadcast", "grad", "sum(einsum('ijk,jk->i', T, M))", "T",
         {"T": ("a", "b", "c"), "M": ("b", "c")}, exact=("M * ones(a, b, c)",)),
    # A user's batched product stays `@`; a stack's transpose is `.mT` (issue 13).
    Case("batched-matmul", "grad", "sum((A @ B - C) ** 2)", ["A", "B"],
         {"A": ("a", "n", "m"), "B": ("a", "m", "k"), "C": ("a", "n", "k")},
         exact=("t0 = 2 * (A @ B - C)\ndA = t0 @ B.mT\ndB = A.mT @ t0",)),
    # A broadcast is indexing (`[:, None]`), never a product with `ones` (issue 13); only an
    # output that is itself a broadcast is written `* ones(...)` (computed as broadcast_to),
    # with its constant on the small array.
    Case("mean-over-axis", "grad", "sum(mean(T, axis=-1) ** 2)", "T", {"T": ("a", "n", "m")},
         must=("(2 * ", ")[:, :, None] * ones(a, n, m)"), lines=1),
    Case("pairwise-rbf", "grad", "sum(exp(-sum((P[:, None, :] - P[None, :, :]) ** 2, axis=2)))",
         "P", {"P": ("n", "m")}, must=("t0 = P[:, None] - P\n", " = t1[:, :, None] * t0\n"),
         must_not=("ones",)),
    Case("layer-norm", "grad",
         "mu = mean(X, axis=1)\nC = X - mu[:, None]\nv = mean(C ** 2, axis=1)\n"
         "N = C / sqrt(v + 1e-5)[:, None]\nsum((g * N + b - Y) ** 2)", ["X", "g", "b"],
         {"X": ("n", "m"), "g": ("m",), "b": ("m",), "Y": ("n", "m")},
         # the residual's uses scale small arrays (2 * g, two sums): it is not scaled itself
         must=("[:, None]", "2 * g * t"), must_not=("ones", "outer", "diag", "eye", "= 2 * (g")),
    Case("attention", "grad", "A = softmax(Q @ K.T, axis=1)\nsum((A @ V) * G)", ["Q", "K", "V"],
         {"Q": ("n", "d"), "K": ("m", "d"), "V": ("m", "k"), "G": ("n", "k")},
         must=("sum(t0 * t2 * A, axis=1)[:, None]", "dV = A.T @ G"),
         must_not=("ones", "outer", "diag")),
    Case("relu-mlp", "grad", "H = relu(X @ W1 + b1)\nsum((H @ W2 + b2 - Y) ** 2)", MLP_WRT,
         MLP_SHAPES, must=(" = 2 * (H @ W2 + b2 - Y)\n", "where(step(t", "\ndW2 = H.T @ t",
                           "\ndb2 = sum(t"),
         must_not=("outer", "diag", "eye", "2 * (H.T", "2 * sum", "maximum")),
    # The constant on the smallest array: a vector, not the outer product.
    Case("tanh-outer", "grad", "sum(tanh(W @ x) ** 2)", "W", {"W": ("m", "n"), "x": ("n",)},
         exact=("t0 = W @ x\nouter(2 * tanh(t0) * sech2(t0), x)",)),
    # A transpose on the smaller side: `t.T @ X`, not `(X.T @ t).T`.
    Case("mlp-transposed-weights", "grad",
         "H = tanh(X @ W1.T + b1)\nsum((H @ W2.T + b2 - Y) ** 2)", MLP_WRT,
         {"X": ("n", "d"), "W1": ("h", "d"), "b1": ("h",), "W2": ("k", "h"), "b2": ("k",),
          "Y": ("n", "k")},
         must=(".T @ X\n", ".T @ H\n"), must_not=(").T", "outer", "diag", "eye")),
    # A contraction over two axes at once has no matrix form in the language: einsum it is.
    Case("einsum-fallback", "grad", "sum(einsum('ijk,jk->i', T, M) ** 2)", "M",
         {"T": ("a", "b", "c"), "M": ("b", "c")},
         must=("einsum('ijk,jk->i', T, M)",), einsum=True, lines=1),
]


def params(cases, mark_for=lambda c: ()):
    return [pytest.param(c, id=c.id, marks=[*c.marks, *mark_for(c)]) for c in cases]


@pytest.fixture(scope="module")
def results():
    made = {}

    def get(case):
        if case.id not in made:
            made[case.id] = case.make()
        return made[case.id]
    return get


# -- the text ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", params(CASES))
def test_formula_text(case, results):
    formula = results(case).formula
    if case.exact:
        assert formula in case.exact, f"formula:\n{formula}"
    for text in case.must:
        assert text in formula, f"{text!r} missing from:\n{formula}"
    for text in case.must_not + (() if case.einsum else ("einsum",)):
        assert text not in formula, f"{text!r} in:\n{formula}"
    if case.lines is not None:
        assert len(formula.split("\n")) <= case.lines, f"formula:\n{formula}"
    assert "..." not in formula, f"formula cut short:\n{formula}"


@pytest.mark.parametrize("case", params(
    [c for c in CASES if c.target is not None],
    lambda c: [pytest.mark.xfail(strict=True, reason=f"not yet golden: {c.target[0]}")]))
def test_golden_target(case, results):
    description, reached = case.target
    formula = results(case).formula
    assert reached(formula), f"wanted: {description}\nformula:\n{formula}"


_DIMENSION_CALLS = {"ones", "zeros", "size", "eye"}


def _trivial(node) -> bool:
    """A leaf, a transpose, index or negation of one, or a dimension-only call."""
    if isinstance(node, (ast.Name, ast.Number, ast.String, ast.NoneLit)):
        return True
    if isinstance(node, (ast.Attribute, ast.UnaryOp)):
        return _trivial(node.operand)
    if isinstance(node, ast.Index):
        return _trivial(node.operand) and all(
            isinstance(i, (ast.Slice, ast.NoneLit)) or _trivial(i) for i in node.items)
    if isinstance(node, ast.Call):
        return node.func in _DIMENSION_CALLS
    return False


def repeated_subexpressions(formula: str) -> dict[str, int]:
    """Non-trivial subexpressions that the formula spells out more than once."""
    seen = Counter()
    for statement in parse(formula).statements:
        stack = [statement.value if isinstance(statement, ast.Assign) else statement]
        while stack:
            node = stack.pop()
            if not _trivial(node):
                seen[unparse(node, limit=10**9)] += 1
            stack.extend(node.children())
    return {text: count for text, count in seen.items() if count > 1}


def test_repeated_subexpressions_are_found():
    assert repeated_subexpressions("t0 = a * b\nsum(c @ (t0 + 1), axis=0) + c @ (t0 + 1)") == {
        "t0 + 1": 2, "c @ (t0 + 1)": 2}
    assert repeated_subexpressions("X.T @ x + X.T @ y + ones(n) + ones(n)") == {}


@pytest.mark.parametrize("case", params(CASES))
def test_common_subexpressions_are_named(case, results):
    """SPEC §4: common subexpressions become named temporaries."""
    formula = results(case).formula
    assert repeated_subexpressions(formula) == {}, f"formula:\n{formula}"


@pytest.mark.parametrize("case", params(CASES))
def test_each_name_is_bound_once(case, results):
    bound = [s.name for s in parse(results(case).formula).statements
             if isinstance(s, ast.Assign)]
    assert len(bound) == len(set(bound)), results(case).formula


@pytest.mark.parametrize("case", params(CASES))
def test_temporaries_are_worth_a_name(case, results):
    """A temporary names a computation: never a bare name, a transpose, negation or index of
    one, or a dimension-only call such as `ones(1)` (a person writes those inline)."""
    formula = results(case).formula
    for statement in parse(formula).statements:
        if isinstance(statement, ast.Assign) and statement.name not in results(case).roots:
            assert not _trivial(statement.value), (
                f"temporary {statement.name} = {unparse(statement.value)} in:\n{formula}")


# -- the values ----------------------------------------------------------------------------------

def output_programs(result) -> dict[str, str]:
    """Output name -> the formula's lines up to the one that defines that output, as a program
    (one output is the bare last line; with several, each is a line `name = ...`)."""
    names = list(result.roots)
    formula = result.formula
    if len(names) == 1:
        return {names[0]: formula}
    lines = formula.split("\n")
    programs = {}
    for name in names:
        where = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
        assert where, f"no line for {name}:\n{formula}"
        programs[name] = "\n".join(lines[:where[0] + 1])
    return programs


def declared_shapes(result) -> dict:
    return {name: tuple(d.offset if d.name is None else d.name for d in shape)
            for name, shape in result.lowered.declared.items()}


def flatten(structured) -> list:
    if isinstance(structured, tuple):
        return [leaf for item in structured for leaf in flatten(item)]
    return [structured]


def inputs_for(result, seed=0) -> dict:
    return random_inputs(result.lowered.declared, np.random.default_rng(seed), SIZES)


def round_trip(result, arrays) -> list:
    """Each output computed by the parsed-back formula."""
    shapes = declared_shapes(result)
    return [np.asarray(einderiv.compile(text, shapes)(**arrays))
            for text in output_programs(result).values()]


@pytest.mark.parametrize("case", params(CASES))
def test_formula_round_trip(case, results):
    result = results(case)
    arrays = inputs_for(result)
    direct = flatten(result(**arrays))
    via_ir = flatten(result.evaluate_ir(**arrays))
    again = round_trip(result, arrays)
    assert len(again) == len(direct) == len(via_ir)
    for name, x, y, z in zip(result.roots, again, direct, via_ir):
        scale = max(1.0, float(np.max(np.abs(y))))
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=f"{name} of formula:\n{result.formula}")
        np.testing.assert_allclose(z, y, rtol=1e-9, atol=1e-12 * scale, err_msg=name)


def _forward(case):
    """The function whose derivative each output is, and the outputs' order of wrt names."""
    wrt = [case.wrt] if isinstance(case.wrt, str) else list(case.wrt)
    if case.kind == "hessian":
        return [(einderiv.grad(case.expr, w, case.shapes), w) for w in wrt]
    forward = einderiv.compile(case.expr, case.shapes)
    return [(forward, w) for w in wrt]


@pytest.mark.parametrize("case", params(CASES))
def test_formula_matches_finite_differences(case, results):
    result = results(case)
    arrays = inputs_for(result, seed=1)
    outputs = round_trip(result, arrays)
    if case.kind == "value_and_grad":
        value, *outputs = outputs
        np.testing.assert_allclose(value, einderiv.compile(case.expr, case.shapes)(**arrays),
                                   rtol=1e-9)
    forwards = _forward(case)
    assert len(outputs) == len(forwards)
    for (f, w), actual in zip(forwards, outputs):
        expected = finite_difference(f, arrays, w)
        err = relative_error(actual, expected)
        assert err < 1e-6, f"d/d{w}: relative error {err:.2g}; formula:\n{result.formula}"


@pytest.mark.parametrize("expr, formula", [
    ("einsum('gij,j->gi', stack(A, B, C), x)", "stack(A, B, C) @ x"),
    ("einsum('j,gjk->gk', x, stack(A, B, C))", "x @ stack(A, B, C)"),
    ("einsum('gij,jk->gik', stack(A, B, C), M)", "stack(A, B, C) @ M"),
    ("einsum('kj,gjm->gkm', N, stack(A, B, C))", "N @ stack(A, B, C)"),
])
def test_a_stack_of_matrices_multiplies_with_matmul(expr, formula):
    # numpy's @ broadcasts over a leading stack axis: no einsum where a matrix form fits.
    shapes = {"A": ("n", "n"), "B": ("n", "n"), "C": ("n", "n"), "x": ("n",),
              "M": ("n", "m"), "N": ("m", "n")}
    assert einderiv.compile(expr, shapes).formula == formula


@pytest.mark.parametrize("expr, formula, value", [
    ("einsum('bij,bkj->bik', A, B)", "A @ B.mT", lambda A, B: A @ np.swapaxes(B, 1, 2)),
    ("einsum('bji,bjk->bik', A, B)", "A.mT @ B", lambda A, B: np.swapaxes(A, 1, 2) @ B),
    ("einsum('bji,bkj->bki', A, B)", "B @ A", lambda A, B: B @ A),
    ("einsum('bij->bji', A)", "A.mT", lambda A, B: np.swapaxes(A, 1, 2)),
    ("A.mT.mT", "A", lambda A, B: A),
])
def test_stacks_multiply_with_matmul_and_mT(expr, formula, value):
    # Stacks of matrices sharing their leading axis: `@` with `.mT` transposes, no einsum.
    shapes = {"A": ("b", "n", "n"), "B": ("b", "n", "n")}
    f = einderiv.compile(expr, shapes)
    assert f.formula == formula
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 3))
    np.testing.assert_allclose(f(A=A, B=B), value(A, B))
    np.testing.assert_allclose(einderiv.compile(formula, shapes)(A=A, B=B), value(A, B))


def test_mT_of_a_vector_is_a_shape_error():
    with pytest.raises(einderiv.ShapeError, match="two axes"):
        einderiv.compile("x.mT", {"x": ("n",)})


@pytest.mark.parametrize("expr, wrt, shapes", [
    ("sum(mean(T, axis=-1) ** 2)", "T", {"T": ("a", "n", "m")}),
    ("sum(sum(X, axis=0) ** 2)", "X", {"X": ("n", "d")}),
    ("2 * sum(x)", "x", {"x": ("n",)}),
])
def test_an_output_that_is_a_broadcast_is_written_into_a_new_array(expr, wrt, shapes):
    # `x[:, None] * ones(n, m)` in the formula; in the code no array of ones and no product:
    # one new array written once (kernels.broadcast_copy; a read-only broadcast_to view would
    # be copied where it is returned), the caller's own writable array.
    g = einderiv.grad(expr, wrt, shapes)
    assert "* ones(" in g.formula and "ones(" not in g.source
    assert "broadcast_copy(" in g.source and "broadcast_to(" not in g.source
    arrays = random_inputs(g.lowered.declared, np.random.default_rng(0), SIZES)
    result = g(**arrays)
    assert result.flags.writeable and result.flags.owndata
    np.testing.assert_allclose(result, einderiv.compile(g.formula, declared_shapes(g))(**arrays))
    result[...] = 0  # writable, and the next call is unaffected
    np.testing.assert_allclose(g(**arrays), einderiv.compile(g.formula, declared_shapes(g))(**arrays))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_select_is_generated_without_step_values_and_stays_exact(dtype):
    # where(step(u), a, 0) is generated as a select by u > 0 (no array of step's values), and
    # the select stays one: 0 where 1 / sqrt(relu(x)) is inf, never 0 * inf (README, kinks).
    g = einderiv.grad("sum(sqrt(relu(x)))", "x", {"x": ("n",)})
    assert "where(step(x)" in g.formula and "step(" not in g.source and "(x) > 0" in g.source
    x = np.array([-1.0, 4.0, 0.0, -0.0, 1e-300, np.inf], dtype=dtype)
    with np.errstate(divide="ignore"):
        expected = np.where(x > 0, 0.5 / np.sqrt(np.maximum(x, 0)), 0).astype(dtype)
    with np.errstate(divide="ignore"):  # the branch not taken is computed too
        result = g(x=x)
    assert result.dtype == dtype
    np.testing.assert_array_equal(result, expected)
    assert not np.signbit(result).any()


def test_an_output_used_twice_is_written_whole_once():
    # The output dxdc is also dcdx: a temporary of its own name, written whole (its definition
    # without its broadcast axes, then rebound to its broadcast, bound the name twice).
    result = einderiv.hessian("mean((x - c) ** 2)", ["x", "c"], {"x": ("n",), "c": ()})
    assert "dcdx = dxdc\n" in result.formula
    bound = [s.name for s in parse(result.formula).statements if isinstance(s, ast.Assign)]
    assert len(bound) == len(set(bound)), result.formula
    arrays = inputs_for(result)
    for x, y in zip(round_trip(result, arrays), flatten(result(**arrays))):
        np.testing.assert_allclose(x, y, rtol=1e-12, err_msg=result.formula)


LAYER_NORM = ("mu = mean(X, axis=1)\nC = X - mu[:, None]\nv = mean(C ** 2, axis=1)\n"
              "N = C / sqrt(v + 1e-5)[:, None]\nsum((g * N + b - Y) ** 2)")


def test_a_factor_of_output_indices_is_applied_after_the_sum():
    """A product summed over f with a factor that varies along its output index n only
    (`1 / t0[n]`, a quotient's denominator, and a sign) applies it to the [n] result: layer
    norm's `(t3 @ g) / t0 / t0`, not `-t1 * (N / t0[:, None]) @ g`, a negation and a division
    over [n, f] (512 x 256: 3.74 -> 2.93 ms, same-process), and `t1 * N` is then the product
    dg sums too, computed once."""
    shapes = {"X": ("n", "f"), "g": ("f",), "b": ("f",), "Y": ("n", "f")}
    grad = einderiv.grad(LAYER_NORM, ["X", "g", "b"], shapes)
    formula = grad.formula
    assert "t3 = t1 * N" in formula and "(t3 @ g) / t0 / t0" in formula, formula
    assert "/ t0[:, None]) @" not in formula and "-t1" not in formula, formula
    arrays = random_inputs(grad.lowered.declared, np.random.default_rng(7), {"n": 4, "f": 5})
    loss = einderiv.compile(LAYER_NORM, shapes)
    for name, value in zip(["X", "g", "b"], grad(**arrays)):
        assert relative_error(value, finite_difference(loss, arrays, name)) < 1e-6, name


@pytest.mark.parametrize("expr, want", [
    # a vector of the output index times a sum: the sum first
    ("x: [n]; A: [n, m]; B: [n, m]; sum(x[:, None] * A * B, axis=1)", "x * sum(A * B, axis=1)"),
    # a quotient by what varies along the output only: after the matrix product
    ("A: [n, m]; d: [n]; w: [m]; (A / d[:, None]) @ w", "A @ w / d"),
    # by what varies along the summed index: on the vector it meets there
    ("A: [n, m]; d: [m]; w: [m]; (A / d) @ w", "A @ (w / d)"),
])
def test_where_a_small_factor_multiplies(expr, want):
    f = einderiv.compile(expr)
    assert f.formula == want
    arrays = random_inputs(f.lowered.declared, np.random.default_rng(8), {"n": 3, "m": 4})
    np.testing.assert_allclose(f(**arrays), f.evaluate_ir(**arrays), rtol=1e-13)
