"""Forward evaluation against numpy: every operator and built-in function of SPEC §1.

Each case compiles an expression with `einderiv.compile`, calls it on random arrays and compares
the result with what numpy computes for the same arrays (shape and values, rtol 1e-10).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import fn

RTOL = 1e-10
ATOL = 1e-12

# Concrete sizes of the dimension names used below (all different, so a mix-up shows).
SIZES = {"n": 4, "m": 3, "d": 5, "p": 6, "b": 2, "k": 7, "h": 3}


# -- helpers ---------------------------------------------------------------------------------------

def concrete(shape, sizes=SIZES):
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


def make_array(rng, shape, kind="normal"):
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":  # inside (-1, 1)
        return rng.uniform(-0.9, 0.9, shape)
    if kind == "invertible":  # well conditioned square matrices (or stacks of them)
        n = shape[-1]
        return rng.standard_normal(shape) + 3.0 * np.eye(n)
    if kind == "spd":
        n = shape[-1]
        a = rng.standard_normal(shape)
        return a @ np.swapaxes(a, -1, -2) + n * np.eye(n)
    raise ValueError(kind)


def make_arrays(shapes, kinds=None, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    kinds = kinds or {}
    return {name: make_array(rng, concrete(shape, sizes), kinds.get(name, "normal"))
            for name, shape in shapes.items()}


def check(actual, expected):
    expected = np.asarray(expected, dtype=float)
    assert np.shape(actual) == expected.shape, (np.shape(actual), expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def reference(ref, arrays):
    """`ref` called with the arrays: by keyword for a lambda, in order for a numpy function."""
    if getattr(ref, "__name__", "") == "<lambda>":
        return ref(**arrays)
    return ref(*arrays.values())


def run_case(expr, shapes, ref, kinds=None, seed=0):
    arrays = make_arrays(shapes, kinds, seed)
    f = einderiv.compile(expr, shapes)
    check(f(**arrays), reference(ref, arrays))


def case(id, expr, shapes, ref, kinds=None):
    return pytest.param(expr, shapes, ref, kinds or {}, id=id)


CASE_ARGS = "expr, shapes, ref, kinds"


# -- operators and broadcasting --------------------------------------------------------------------

OPERATOR_CASES = [
    case("add", "x + y", {"x": ("n",), "y": ("n",)}, lambda x, y: x + y),
    case("sub", "x - y", {"x": ("n",), "y": ("n",)}, lambda x, y: x - y),
    case("mul", "x * y", {"x": ("n",), "y": ("n",)}, lambda x, y: x * y),
    case("div", "x / y", {"x": ("n",), "y": ("n",)}, lambda x, y: x / y, {"y": "positive"}),
    case("pow", "x ** y", {"x": ("n",), "y": ("n",)}, lambda x, y: x ** y, {"x": "positive"}),
    case("neg", "-x", {"x": ("m", "n")}, lambda x: -x),
    case("pos", "+x", {"x": ("m", "n")}, lambda x: +x),
    case("neg-neg", "-(-x)", {"x": ("n",)}, lambda x: x),
    case("neg-mul", "2 * -x", {"x": ("n",)}, lambda x: 2 * -x),
    case("sub-left-assoc", "x - y - z", {"x": ("n",), "y": ("n",), "z": ("n",)},
         lambda x, y, z: x - y - z),
    case("div-left-assoc", "x / y / z", {"x": ("n",), "y": ("n",), "z": ("n",)},
         lambda x, y, z: x / y / z, {"y": "positive", "z": "positive"}),
    case("mul-div-left-to-right", "x / y * z", {"x": ("n",), "y": ("n",), "z": ("n",)},
         lambda x, y, z: x / y * z, {"y": "positive"}),
    case("precedence-add-mul", "x + y * z", {"x": ("n",), "y": ("n",), "z": ("n",)},
         lambda x, y, z: x + y * z),
    case("grouping", "(x + y) * z", {"x": ("n",), "y": ("n",), "z": ("n",)},
         lambda x, y, z: (x + y) * z),
    case("mul-then-matmul", "x * y @ A", {"x": ("m",), "y": ("m",), "A": ("m", "n")},
         lambda x, y, A: x * y @ A),
    case("matmul-then-div", "A @ x / 2", {"A": ("m", "n"), "x": ("n",)}, lambda A, x: A @ x / 2),
    case("matmul-then-mul", "A @ B * C", {"A": ("m", "n"), "B": ("n", "p"), "C": ("m", "p")},
         lambda A, B, C: A @ B * C),
    # powers
    case("pow-int", "x ** 2", {"x": ("n",)}, lambda x: x ** 2),
    case("pow-odd-negative-base", "x ** 3", {"x": ("n",)}, lambda x: x ** 3),
    case("pow-half", "x ** 0.5", {"x": ("n",)}, lambda x: x ** 0.5, {"x": "positive"}),
    case("pow-neg-one", "x ** -1", {"x": ("n",)}, lambda x: x ** -1, {"x": "positive"}),
    case("pow-neg-two", "x ** -2", {"x": ("n",)}, lambda x: x ** -2),
    case("pow-neg-expr", "x ** -y", {"x": ("n",), "y": ("n",)}, lambda x, y: x ** -y,
         {"x": "positive"}),
    case("neg-pow-precedence", "-x ** 2", {"x": ("n",)}, lambda x: -x ** 2),
    case("neg-pow-grouped", "(-x) ** 2", {"x": ("n",)}, lambda x: (-x) ** 2),
    case("const-base-pow", "2 ** x", {"x": ("n",)}, lambda x: 2 ** x),
    case("pow-right-assoc", "2 ** y ** 2", {"y": ("n",)}, lambda y: 2 ** y ** 2),
    case("pow-binds-tighter-than-mul", "3 * x ** 2", {"x": ("n",)}, lambda x: 3 * x ** 2),
    case("pow-scalar-exponent", "x ** c", {"x": ("n",), "c": ()}, lambda x, c: x ** c,
         {"x": "positive"}),
    case("pow-broadcast", "A ** y", {"A": ("m", "n"), "y": ("n",)}, lambda A, y: A ** y,
         {"A": "positive"}),
    case("constant-arith", "x * (-2 ** 2) + 1.5e-1 - .5", {"x": ("n",)},
         lambda x: x * (-2 ** 2) + 1.5e-1 - .5),
    # broadcasting
    case("scalar-plus-tensor", "c + X", {"c": (), "X": ("m", "n")}, lambda c, X: c + X),
    case("tensor-times-scalar", "X * c", {"c": (), "X": ("m", "n")}, lambda c, X: X * c),
    case("scalar-div-tensor", "c / X", {"c": (), "X": ("m", "n")}, lambda c, X: c / X,
         {"X": "positive"}),
    case("tensor-minus-number", "X - 3", {"X": ("m", "n")}, lambda X: X - 3),
    case("number-minus-tensor", "1 - X", {"X": ("m", "n")}, lambda X: 1 - X),
    case("number-div-tensor", "1 / X", {"X": ("m", "n")}, lambda X: 1 / X, {"X": "positive"}),
    case("vector-plus-matrix", "v + X", {"v": ("n",), "X": ("m", "n")}, lambda v, X: v + X),
    case("matrix-minus-vector", "X - v", {"v": ("n",), "X": ("m", "n")}, lambda v, X: X - v),
    case("matrix-times-vector", "X * v", {"v": ("n",), "X": ("m", "n")}, lambda v, X: X * v),
    case("matrix-div-vector", "X / v", {"v": ("n",), "X": ("m", "n")}, lambda v, X: X / v,
         {"v": "positive"}),
    case("column-plus-row", "a + b", {"a": ("m", 1), "b": (1, "n")}, lambda a, b: a + b),
    case("column-times-row", "a * b", {"a": ("m", 1), "b": (1, "n")}, lambda a, b: a * b),
    case("column-minus-matrix", "a - X", {"a": ("m", 1), "X": ("m", "n")}, lambda a, X: a - X),
    case("row-div-column", "b / a", {"a": ("m", 1), "b": (1, "n")}, lambda a, b: b / a,
         {"a": "positive"}),
    case("rank3-plus-vector", "T + v", {"T": ("b", "m", "n"), "v": ("n",)}, lambda T, v: T + v),
    case("rank3-times-matrix", "T * X", {"T": ("b", "m", "n"), "X": ("m", "n")},
         lambda T, X: T * X),
    case("rank3-ones-broadcast", "P * Q", {"P": ("b", 1, "n"), "Q": ("m", 1)},
         lambda P, Q: P * Q),
    case("rank3-both-sides", "P + Q", {"P": ("b", 1, "n"), "Q": (1, "m", 1)},
         lambda P, Q: P + Q),
    case("rank3-div-broadcast", "T / Q", {"T": ("b", "m", "n"), "Q": ("m", 1)},
         lambda T, Q: T / Q, {"Q": "positive"}),
    case("size-one-with-size-one", "a * b", {"a": (1, 1), "b": (1, "n")}, lambda a, b: a * b),
    case("concrete-dims", "X + v", {"X": (3, 4), "v": (4,)}, lambda X, v: X + v),
    # transpose
    case("transpose-matrix", "X.T", {"X": ("m", "n")}, lambda X: X.T),
    case("transpose-vector", "v.T", {"v": ("n",)}, lambda v: v.T),
    case("transpose-scalar", "c.T", {"c": ()}, lambda c: np.asarray(c).T),
    case("transpose-rank3", "T.T", {"T": ("b", "m", "n")}, lambda T: T.T),
    case("transpose-twice", "X.T.T", {"X": ("m", "n")}, lambda X: X),
    case("transpose-of-product", "(A @ B).T", {"A": ("m", "n"), "B": ("n", "p")},
         lambda A, B: (A @ B).T),
    case("neg-transpose-precedence", "-X.T", {"X": ("m", "n")}, lambda X: -X.T),
    case("transpose-then-pow", "X.T ** 2", {"X": ("m", "n")}, lambda X: X.T ** 2),
    case("transpose-matmul", "X.T @ y", {"X": ("n", "d"), "y": ("n",)}, lambda X, y: X.T @ y),
    case("transpose-plus-square", "A + A.T", {"A": ("n", "n")}, lambda A: A + A.T),
]


@pytest.mark.parametrize(CASE_ARGS, OPERATOR_CASES)
def test_operators(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


# -- indexing --------------------------------------------------------------------------------------

INDEX_CASES = [
    case("none-column", "v[:, None]", {"v": ("n",)}, lambda v: v[:, None]),
    case("none-row", "v[None, :]", {"v": ("n",)}, lambda v: v[None, :]),
    case("none-only", "v[None]", {"v": ("n",)}, lambda v: v[None]),
    case("none-column-times-matrix", "v[:, None] * X", {"v": ("n",), "X": ("n", "d")},
         lambda v, X: v[:, None] * X),
    case("none-middle", "X[:, None, :]", {"X": ("m", "n")}, lambda X: X[:, None, :]),
    case("none-trailing", "X[:, :, None]", {"X": ("m", "n")}, lambda X: X[:, :, None]),
    case("none-twice", "v[None, :, None]", {"v": ("n",)}, lambda v: v[None, :, None]),
    case("outer-by-none", "a[:, None] * b[None, :]", {"a": ("m",), "b": ("n",)},
         lambda a, b: a[:, None] * b[None, :]),
    case("int-first", "v[0]", {"v": ("n",)}, lambda v: v[0]),
    case("int-middle", "v[2]", {"v": ("n",)}, lambda v: v[2]),
    case("int-negative", "v[-1]", {"v": ("n",)}, lambda v: v[-1]),
    case("int-negative-2", "v[-3]", {"v": ("n",)}, lambda v: v[-3]),
    case("row", "X[1]", {"X": ("m", "n")}, lambda X: X[1]),
    case("last-row", "X[-1]", {"X": ("m", "n")}, lambda X: X[-1]),
    case("column", "X[:, 2]", {"X": ("m", "n")}, lambda X: X[:, 2]),
    case("last-column", "X[:, -1]", {"X": ("m", "n")}, lambda X: X[:, -1]),
    case("element", "X[1, 2]", {"X": ("m", "n")}, lambda X: X[1, 2]),
    case("element-negative", "X[-1, -2]", {"X": ("m", "n")}, lambda X: X[-1, -2]),
    case("slice", "v[1:3]", {"v": ("n",)}, lambda v: v[1:3]),
    case("slice-open-start", "v[:2]", {"v": ("n",)}, lambda v: v[:2]),
    case("slice-open-end", "v[1:]", {"v": ("n",)}, lambda v: v[1:]),
    case("slice-full", "v[:]", {"v": ("n",)}, lambda v: v[:]),
    case("slice-negative-stop", "v[1:-1]", {"v": ("n",)}, lambda v: v[1:-1]),
    case("slice-negative-start", "v[-3:]", {"v": ("n",)}, lambda v: v[-3:]),
    case("slice-both-negative", "v[-3:-1]", {"v": ("n",)}, lambda v: v[-3:-1]),
    case("slice-open-negative-stop", "v[:-2]", {"v": ("n",)}, lambda v: v[:-2]),
    case("difference", "v[1:] - v[:-1]", {"v": ("n",)}, lambda v: v[1:] - v[:-1]),
    case("slice-concrete-dim", "v[1:-1]", {"v": (6,)}, lambda v: v[1:-1]),
    case("slice-concrete-negative-start", "v[-4:5]", {"v": (6,)}, lambda v: v[-4:5]),
    case("slice-concrete-past-end", "v[2:100]", {"v": (6,)}, lambda v: v[2:100]),
    case("matrix-block", "X[1:3, -2:]", {"X": ("m", "n")}, lambda X: X[1:3, -2:]),
    case("matrix-rows", "X[:2]", {"X": ("m", "n")}, lambda X: X[:2]),
    case("matrix-columns", "X[:, 1:]", {"X": ("m", "n")}, lambda X: X[:, 1:]),
    case("slice-then-int", "X[1:, 0]", {"X": ("m", "n")}, lambda X: X[1:, 0]),
    case("int-then-slice", "X[-1, 1:-1]", {"X": ("m", "n")}, lambda X: X[-1, 1:-1]),
    case("rank3-int-colon-int", "T[0, :, -1]", {"T": ("b", "m", "n")}, lambda T: T[0, :, -1]),
    case("rank3-slices", "T[:, 1:, :-1]", {"T": ("b", "m", "n")}, lambda T: T[:, 1:, :-1]),
    case("rank3-none-int", "T[None, 1, :, 2]", {"T": ("b", "m", "n")},
         lambda T: T[None, 1, :, 2]),
    case("index-then-slice", "X[1][1:3]", {"X": ("m", "n")}, lambda X: X[1][1:3]),
    case("index-of-product", "(A @ B)[0]", {"A": ("m", "n"), "B": ("n", "p")},
         lambda A, B: (A @ B)[0]),
    case("index-binds-tighter-than-pow", "v[0] ** 2 + -v[-1]", {"v": ("n",)},
         lambda v: v[0] ** 2 + -v[-1]),
    case("index-of-transpose", "X.T[0]", {"X": ("m", "n")}, lambda X: X.T[0]),
    case("slice-empty-concrete", "v[3:1]", {"v": (5,)}, lambda v: v[3:1]),
    case("slice-empty-named", "v[3:1]", {"v": ("n",)}, lambda v: v[3:1]),
    case("slice-empty-negative-named", "v[-1:-3]", {"v": ("n",)}, lambda v: v[-1:-3]),
    # indexing a value that is itself a diagonal or an identity
    case("diag-row", "diag(v)[2]", {"v": ("n",)}, lambda v: np.diag(v)[2]),
    case("diag-last-column", "diag(v)[:, -1]", {"v": ("n",)}, lambda v: np.diag(v)[:, -1]),
    case("diag-block-column", "diag(v)[1:3, 2]", {"v": ("n",)}, lambda v: np.diag(v)[1:3, 2]),
    case("diag-off-window", "diag(v)[1:, :-1]", {"v": ("n",)}, lambda v: np.diag(v)[1:, :-1]),
    case("diag-off-window-weighted", "sum(diag(v)[1:, :-1] * X[1:, :-1])",
         {"v": ("n",), "X": ("n", "n")}, lambda v, X: np.sum(np.diag(v)[1:, :-1] * X[1:, :-1])),
    case("diag-element", "diag(v)[1, 1] + diag(v)[1, 2]", {"v": ("n",)},
         lambda v: np.diag(v)[1, 1] + np.diag(v)[1, 2]),
    case("outer-window", "outer(a, b)[1:, :-1] @ b[1:]", {"a": ("m",), "b": ("n",)},
         lambda a, b: np.outer(a, b)[1:, :-1] @ b[1:]),
    case("sum-of-slice", "sum(X[1:, :-1] * Y[:-1, 1:])", {"X": ("m", "n"), "Y": ("m", "n")},
         lambda X, Y: np.sum(X[1:, :-1] * Y[:-1, 1:])),
]


@pytest.mark.parametrize(CASE_ARGS, INDEX_CASES)
def test_indexing(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


# -- matmul ----------------------------------------------------------------------------------------

MATMUL_CASES = [
    case("vec@vec", "x @ y", {"x": ("n",), "y": ("n",)}, lambda x, y: x @ y),
    case("mat@vec", "A @ x", {"A": ("m", "n"), "x": ("n",)}, lambda A, x: A @ x),
    case("vec@mat", "x @ A", {"x": ("m",), "A": ("m", "n")}, lambda x, A: x @ A),
    case("mat@mat", "A @ B", {"A": ("m", "n"), "B": ("n", "p")}, lambda A, B: A @ B),
    case("mat@mat@mat", "A @ B @ C", {"A": ("m", "n"), "B": ("n", "p"), "C": ("p", "d")},
         lambda A, B, C: A @ B @ C),
    case("mat@mat@vec", "A @ B @ x", {"A": ("m", "n"), "B": ("n", "p"), "x": ("p",)},
         lambda A, B, x: A @ B @ x),
    case("vec@mat@vec", "x @ A @ y", {"x": ("m",), "A": ("m", "n"), "y": ("n",)},
         lambda x, A, y: x @ A @ y),
    case("mat@mat-square", "A @ A", {"A": ("n", "n")}, lambda A: A @ A),
    case("concrete-mat@mat", "A @ B", {"A": (2, 3), "B": (3, 4)}, lambda A, B: A @ B),
    case("3d@3d", "P @ Q", {"P": ("b", "m", "n"), "Q": ("b", "n", "p")}, lambda P, Q: P @ Q),
    case("3d@2d", "P @ B", {"P": ("b", "m", "n"), "B": ("n", "p")}, lambda P, B: P @ B),
    case("2d@3d", "A @ Q", {"A": ("m", "n"), "Q": ("b", "n", "p")}, lambda A, Q: A @ Q),
    case("3d@1d", "P @ x", {"P": ("b", "m", "n"), "x": ("n",)}, lambda P, x: P @ x),
    case("1d@3d", "x @ Q", {"x": ("n",), "Q": ("b", "n", "p")}, lambda x, Q: x @ Q),
    case("batch-broadcast-1mn@bnp", "P @ Q", {"P": (1, "m", "n"), "Q": ("b", "n", "p")},
         lambda P, Q: P @ Q),
    case("batch-broadcast-bmn@1np", "P @ Q", {"P": ("b", "m", "n"), "Q": (1, "n", "p")},
         lambda P, Q: P @ Q),
    case("4d@4d", "P @ Q", {"P": ("b", "k", "m", "n"), "Q": ("b", "k", "n", "p")},
         lambda P, Q: P @ Q),
    case("4d@3d-broadcast", "P @ Q", {"P": ("b", 1, "m", "n"), "Q": ("k", "n", "p")},
         lambda P, Q: P @ Q),
    case("4d@2d", "P @ B", {"P": ("b", "k", "m", "n"), "B": ("n", "p")}, lambda P, B: P @ B),
    case("4d@1d", "P @ x", {"P": ("b", "k", "m", "n"), "x": ("n",)}, lambda P, x: P @ x),
    case("1d@4d", "x @ Q", {"x": ("n",), "Q": ("b", "k", "n", "p")}, lambda x, Q: x @ Q),
    case("4d-both-ones", "P @ Q", {"P": ("b", 1, "m", "n"), "Q": (1, "k", "n", "p")},
         lambda P, Q: P @ Q),
    case("batched-chain", "P @ Q @ x", {"P": ("b", "m", "n"), "Q": ("b", "n", "p"), "x": ("p",)},
         lambda P, Q, x: P @ Q @ x),
    case("matmul-of-sum", "(A + A) @ (x - y)", {"A": ("m", "n"), "x": ("n",), "y": ("n",)},
         lambda A, x, y: (A + A) @ (x - y)),
    case("logistic-loss", "sum(log(1 + exp(-y * (X @ w))))",
         {"X": ("n", "d"), "y": ("n",), "w": ("d",)},
         lambda X, y, w: np.sum(np.log(1 + np.exp(-y * (X @ w))))),
]


@pytest.mark.parametrize(CASE_ARGS, MATMUL_CASES)
def test_matmul(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


# -- elementwise functions -------------------------------------------------------------------------

def stable_sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


UNARY = {
    "exp": (np.exp, "normal"),
    "log": (np.log, "positive"),
    "log1p": (np.log1p, "unit"),
    "expm1": (np.expm1, "normal"),
    "sqrt": (np.sqrt, "positive"),
    "square": (np.square, "normal"),
    "abs": (np.abs, "normal"),
    "sign": (np.sign, "normal"),
    "sin": (np.sin, "normal"),
    "cos": (np.cos, "normal"),
    "tan": (np.tan, "unit"),
    "sinh": (np.sinh, "normal"),
    "cosh": (np.cosh, "normal"),
    "tanh": (np.tanh, "normal"),
    "arctan": (np.arctan, "normal"),
    "sigmoid": (stable_sigmoid, "normal"),
    "relu": (lambda x: np.maximum(x, 0.0), "normal"),
    "softplus": (lambda x: np.logaddexp(0.0, x), "normal"),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("shape", [(), ("n",), ("m", "n"), ("b", "m", "n")],
                         ids=["scalar", "vector", "matrix", "rank3"])
def test_elementwise(name, shape):
    ref, kind = UNARY[name]
    run_case(f"{name}(x)", {"x": shape}, lambda x: ref(x), {"x": kind})


@pytest.mark.parametrize("name", sorted(UNARY))
def test_elementwise_of_expression(name):
    """The argument is an expression, and the result feeds further arithmetic."""
    ref, kind = UNARY[name]
    run_case(f"2 * {name}(0.5 * x + 0.25) - 1", {"x": ("m", "n")},
             lambda x: 2 * ref(0.5 * x + 0.25) - 1, {"x": kind})


@pytest.mark.parametrize("name", ["abs", "sign", "relu", "square", "sigmoid", "softplus",
                                  "tanh", "sin", "arctan", "expm1", "log1p", "sqrt"])
def test_elementwise_at_zero(name):
    ref, _ = UNARY[name]
    x = np.array([0.0, -0.0, 1.0])
    check(einderiv.compile(f"{name}(x)", {"x": ("n",)})(x=x), ref(x))


WIDE = np.array([-1000.0, -745.0, -100.0, -40.0, -30.0, -20.0, -5.0, -1e-8, 0.0, 1e-8, 5.0,
                 20.0, 30.0, 40.0, 100.0, 1000.0])


@pytest.mark.parametrize("name, ref", [("sigmoid", stable_sigmoid),
                                       ("softplus", lambda x: np.logaddexp(0.0, x))])
def test_sigmoid_softplus_stable_over_wide_range(name, ref):
    f = einderiv.compile(f"{name}(x)", {"x": ("n",)})
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        out = f(x=WIDE)
    assert np.all(np.isfinite(out))
    check(out, ref(WIDE))


@pytest.mark.parametrize("name, x, expected", [
    ("sigmoid", 1000.0, 1.0), ("sigmoid", -1000.0, 0.0),
    ("softplus", 1000.0, 1000.0), ("softplus", -1000.0, 0.0),
])
def test_sigmoid_softplus_extremes(name, x, expected):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = einderiv.compile(f"{name}(c)", {"c": ()})(c=x)
    assert np.isfinite(out)
    check(out, expected)


def test_sigmoid_relative_accuracy_far_left():
    """sigmoid(-30) ~ 9.4e-14 must be right to full relative precision, not just absolutely."""
    x = np.array([-30.0, -35.0, -50.0, -700.0])
    out = einderiv.compile("sigmoid(x)", {"x": ("n",)})(x=x)
    np.testing.assert_allclose(out, np.exp(x) / (1 + np.exp(x)), rtol=RTOL, atol=0)


BINARY_CASES = [
    case("maximum", "maximum(x, y)", {"x": ("n",), "y": ("n",)}, np.maximum),
    case("minimum", "minimum(x, y)", {"x": ("n",), "y": ("n",)}, np.minimum),
    case("maximum-number", "maximum(X, 0)", {"X": ("m", "n")}, lambda X: np.maximum(X, 0)),
    case("minimum-number-first", "minimum(0.5, X)", {"X": ("m", "n")},
         lambda X: np.minimum(0.5, X)),
    case("maximum-scalar-var", "maximum(c, X)", {"c": (), "X": ("m", "n")},
         lambda c, X: np.maximum(c, X)),
    case("maximum-row-broadcast", "maximum(X, v)", {"X": ("m", "n"), "v": ("n",)},
         lambda X, v: np.maximum(X, v)),
    case("minimum-row-broadcast-first", "minimum(v, X)", {"X": ("m", "n"), "v": ("n",)},
         lambda X, v: np.minimum(v, X)),
    case("maximum-column-row", "maximum(a, b)", {"a": ("m", 1), "b": (1, "n")},
         lambda a, b: np.maximum(a, b)),
    case("minimum-rank3", "minimum(T, Q)", {"T": ("b", "m", "n"), "Q": ("m", 1)},
         lambda T, Q: np.minimum(T, Q)),
    case("maximum-of-expressions", "maximum(x * 2, y - 1) + minimum(x, y)",
         {"x": ("n",), "y": ("n",)},
         lambda x, y: np.maximum(x * 2, y - 1) + np.minimum(x, y)),
]


@pytest.mark.parametrize(CASE_ARGS, BINARY_CASES)
def test_binary_elementwise(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


# -- reductions ------------------------------------------------------------------------------------

def ref_logsumexp(x, axis=None):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def ref_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


T3 = {"T": ("b", "m", "n")}

REDUCTION_CASES = [
    case("sum-vector", "sum(v)", {"v": ("n",)}, lambda v: np.sum(v)),
    case("sum-scalar", "sum(c)", {"c": ()}, lambda c: np.sum(c)),
    case("sum-matrix", "sum(X)", {"X": ("m", "n")}, lambda X: np.sum(X)),
    case("sum-rank3", "sum(T)", T3, lambda T: np.sum(T)),
    case("sum-axis0", "sum(X, axis=0)", {"X": ("m", "n")}, lambda X: np.sum(X, axis=0)),
    case("sum-axis1", "sum(X, axis=1)", {"X": ("m", "n")}, lambda X: np.sum(X, axis=1)),
    case("sum-axis-neg1", "sum(X, axis=-1)", {"X": ("m", "n")}, lambda X: np.sum(X, axis=-1)),
    case("sum-axis-neg2", "sum(X, axis=-2)", {"X": ("m", "n")}, lambda X: np.sum(X, axis=-2)),
    case("sum-vector-axis0", "sum(v, axis=0)", {"v": ("n",)}, lambda v: np.sum(v, axis=0)),
    case("sum-rank3-axis1", "sum(T, axis=1)", T3, lambda T: np.sum(T, axis=1)),
    case("sum-rank3-axis-neg1", "sum(T, axis=-1)", T3, lambda T: np.sum(T, axis=-1)),
    case("sum-rank3-tuple", "sum(T, axis=(0, 2))", T3, lambda T: np.sum(T, axis=(0, 2))),
    case("sum-rank3-tuple-negative", "sum(T, axis=(-1, -2))", T3,
         lambda T: np.sum(T, axis=(-1, -2))),
    case("sum-rank3-tuple-unsorted", "sum(T, axis=(2, 0))", T3, lambda T: np.sum(T, axis=(2, 0))),
    case("sum-rank3-all-axes", "sum(T, axis=(0, 1, 2))", T3,
         lambda T: np.sum(T, axis=(0, 1, 2))),
    case("sum-one-tuple", "sum(T, axis=(1,))", T3, lambda T: np.sum(T, axis=(1,))),
    case("sum-positional-axis", "sum(X, 1)", {"X": ("m", "n")}, lambda X: np.sum(X, 1)),
    case("sum-of-expression", "sum(X * X, axis=0) + sum(X)", {"X": ("m", "n")},
         lambda X: np.sum(X * X, axis=0) + np.sum(X)),
    case("sum-of-broadcast", "sum(a + b, axis=0)", {"a": ("m", 1), "b": (1, "n")},
         lambda a, b: np.sum(a + b, axis=0)),
    case("sum-of-broadcast-size-one-axis", "sum(a * v, axis=0)", {"a": ("m", 1), "v": ("n",)},
         lambda a, v: np.sum(a * v, axis=0)),
    case("sum-size-one-axis", "sum(a, axis=1)", {"a": ("m", 1)}, lambda a: np.sum(a, axis=1)),
    case("mean-vector", "mean(v)", {"v": ("n",)}, lambda v: np.mean(v)),
    case("mean-matrix", "mean(X)", {"X": ("m", "n")}, lambda X: np.mean(X)),
    case("mean-axis0", "mean(X, axis=0)", {"X": ("m", "n")}, lambda X: np.mean(X, axis=0)),
    case("mean-axis-neg1", "mean(X, axis=-1)", {"X": ("m", "n")},
         lambda X: np.mean(X, axis=-1)),
    case("mean-rank3-tuple", "mean(T, axis=(0, -1))", T3, lambda T: np.mean(T, axis=(0, -1))),
    case("mean-rank3-axis1", "mean(T, axis=1)", T3, lambda T: np.mean(T, axis=1)),
    case("mean-concrete", "mean(X)", {"X": (3, 5)}, lambda X: np.mean(X)),
    case("mean-concrete-axis", "mean(X, axis=1)", {"X": (3, 5)}, lambda X: np.mean(X, axis=1)),
    case("mean-mixed-dims", "mean(X)", {"X": ("m", 5)}, lambda X: np.mean(X)),
    case("mean-mixed-dims-axis", "mean(T, axis=(0, 1))", {"T": ("b", 4, "n")},
         lambda T: np.mean(T, axis=(0, 1))),
    case("mean-of-square", "mean((X @ w - y) ** 2)", {"X": ("n", "d"), "w": ("d",), "y": ("n",)},
         lambda X, w, y: np.mean((X @ w - y) ** 2)),
    case("mean-centering", "X - mean(X, axis=0)", {"X": ("n", "d")},
         lambda X: X - np.mean(X, axis=0)),
    case("logsumexp-vector", "logsumexp(v)", {"v": ("n",)}, lambda v: ref_logsumexp(v)),
    case("logsumexp-matrix-all", "logsumexp(X)", {"X": ("m", "n")}, lambda X: ref_logsumexp(X)),
    case("logsumexp-rank3-all", "logsumexp(T)", T3, lambda T: ref_logsumexp(T)),
    case("logsumexp-axis0", "logsumexp(X, axis=0)", {"X": ("m", "n")},
         lambda X: ref_logsumexp(X, axis=0)),
    case("logsumexp-axis-neg1", "logsumexp(X, axis=-1)", {"X": ("m", "n")},
         lambda X: ref_logsumexp(X, axis=-1)),
    case("logsumexp-rank3-axis1", "logsumexp(T, axis=1)", T3, lambda T: ref_logsumexp(T, axis=1)),
    case("logsumexp-rank3-tuple", "logsumexp(T, axis=(0, 2))", T3,
         lambda T: ref_logsumexp(T, axis=(0, 2))),
    case("logsumexp-shifted-large", "logsumexp(1000 + X, axis=1)", {"X": ("m", "n")},
         lambda X: ref_logsumexp(1000 + X, axis=1)),
    case("logsumexp-shifted-small", "logsumexp(X - 1000)", {"X": ("m", "n")},
         lambda X: ref_logsumexp(X - 1000)),
    case("softmax-vector", "softmax(v)", {"v": ("n",)}, lambda v: ref_softmax(v)),
    case("softmax-matrix-default-last", "softmax(X)", {"X": ("m", "n")},
         lambda X: ref_softmax(X, axis=-1)),
    case("softmax-rank3-default-last", "softmax(T)", T3, lambda T: ref_softmax(T, axis=-1)),
    case("softmax-axis0", "softmax(X, axis=0)", {"X": ("m", "n")},
         lambda X: ref_softmax(X, axis=0)),
    case("softmax-axis1", "softmax(X, axis=1)", {"X": ("m", "n")},
         lambda X: ref_softmax(X, axis=1)),
    case("softmax-axis-neg2", "softmax(T, axis=-2)", T3, lambda T: ref_softmax(T, axis=-2)),
    case("softmax-rank3-axis0", "softmax(T, axis=0)", T3, lambda T: ref_softmax(T, axis=0)),
    case("softmax-large", "softmax(1000 * X)", {"X": ("m", "n")},
         lambda X: ref_softmax(1000 * X)),
    case("cross-entropy", "-sum(y * log(softmax(X @ W)))",
         {"X": ("n", "d"), "W": ("d", "m"), "y": ("n", "m")},
         lambda X, W, y: -np.sum(y * np.log(ref_softmax(X @ W))), {"y": "positive"}),
]


@pytest.mark.parametrize(CASE_ARGS, REDUCTION_CASES)
def test_reductions(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


def test_logsumexp_stable_at_huge_values():
    x = np.array([1000.0, 1000.0, -1000.0])
    with np.errstate(over="raise"):
        out = einderiv.compile("logsumexp(x)", {"x": ("n",)})(x=x)
    check(out, 1000.0 + np.log(2.0))


# -- linear algebra --------------------------------------------------------------------------------

NEGATIVE_DET = np.array([[0.0, 2.0, 0.5],
                         [1.5, 0.3, 0.0],
                         [0.2, 0.0, 1.0]])

LINALG_CASES = [
    case("dot-1d", "dot(x, y)", {"x": ("n",), "y": ("n",)}, np.dot),
    case("dot-2d", "dot(A, B)", {"A": ("m", "n"), "B": ("n", "p")}, np.dot),
    case("dot-mat-vec", "dot(A, x)", {"A": ("m", "n"), "x": ("n",)}, np.dot),
    case("dot-vec-mat", "dot(x, A)", {"x": ("m",), "A": ("m", "n")}, np.dot),
    case("dot-scalar-vector", "dot(c, x)", {"c": (), "x": ("n",)}, np.dot),
    case("dot-matrix-scalar", "dot(A, c)", {"A": ("m", "n"), "c": ()}, np.dot),
    case("dot-3d-1d", "dot(P, x)", {"P": ("b", "m", "n"), "x": ("n",)}, np.dot),
    case("dot-1d-3d", "dot(x, Q)", {"x": ("n",), "Q": ("b", "n", "p")}, np.dot),
    case("dot-3d-2d", "dot(P, B)", {"P": ("b", "m", "n"), "B": ("n", "p")}, np.dot),
    case("dot-2d-3d", "dot(A, Q)", {"A": ("m", "n"), "Q": ("b", "n", "p")}, np.dot),
    case("dot-3d-3d", "dot(P, Q)", {"P": ("b", "m", "n"), "Q": ("k", "n", "p")}, np.dot),
    case("dot-4d-2d", "dot(P, B)", {"P": ("b", "k", "m", "n"), "B": ("n", "p")}, np.dot),
    case("outer", "outer(a, b)", {"a": ("m",), "b": ("n",)}, np.outer),
    case("outer-same", "outer(a, a)", {"a": ("n",)}, lambda a: np.outer(a, a)),
    case("outer-of-expressions", "outer(A @ x, x * 2)", {"A": ("m", "n"), "x": ("n",)},
         lambda A, x: np.outer(A @ x, x * 2)),
    case("tr", "tr(A)", {"A": ("n", "n")}, np.trace),
    case("trace", "trace(A)", {"A": ("n", "n")}, np.trace),
    case("trace-of-product", "tr(A @ B)", {"A": ("n", "m"), "B": ("m", "n")},
         lambda A, B: np.trace(A @ B)),
    case("trace-concrete", "trace(A)", {"A": (3, 3)}, np.trace),
    case("diag-vector", "diag(v)", {"v": ("n",)}, np.diag),
    case("diag-matrix", "diag(A)", {"A": ("n", "n")}, np.diag),
    case("diag-of-diag", "diag(diag(v))", {"v": ("n",)}, lambda v: v),
    case("diag-vector-matmul", "diag(v) @ A", {"v": ("n",), "A": ("n", "m")},
         lambda v, A: np.diag(v) @ A),
    case("diag-of-product", "diag(A @ A.T)", {"A": ("n", "m")}, lambda A: np.diag(A @ A.T)),
    case("diag-vector-plus", "diag(v) + A", {"v": ("n",), "A": ("n", "n")},
         lambda v, A: np.diag(v) + A),
    case("det", "det(A)", {"A": ("n", "n")}, np.linalg.det, {"A": "invertible"}),
    case("det-negative", "det(A)", {"A": (3, 3)}, np.linalg.det, {"A": "negdet"}),
    case("det-batched", "det(P)", {"P": ("b", "n", "n")}, np.linalg.det, {"P": "invertible"}),
    case("det-of-expression", "det(A @ A.T + eye(n))", {"A": ("n", "m")},
         lambda A: np.linalg.det(A @ A.T + np.eye(len(A)))),
    case("logdet", "logdet(A)", {"A": ("n", "n")}, lambda A: np.linalg.slogdet(A)[1],
         {"A": "spd"}),
    case("logdet-general", "logdet(A)", {"A": ("n", "n")}, lambda A: np.linalg.slogdet(A)[1],
         {"A": "invertible"}),
    case("logdet-negative-det", "logdet(A)", {"A": (3, 3)}, lambda A: np.linalg.slogdet(A)[1],
         {"A": "negdet"}),
    case("logdet-batched", "logdet(P)", {"P": ("b", "n", "n")},
         lambda P: np.linalg.slogdet(P)[1], {"P": "invertible"}),
    case("inv", "inv(A)", {"A": ("n", "n")}, np.linalg.inv, {"A": "invertible"}),
    case("inv-batched", "inv(P)", {"P": ("b", "n", "n")}, np.linalg.inv, {"P": "invertible"}),
    case("inv-solve", "inv(A) @ x", {"A": ("n", "n"), "x": ("n",)},
         lambda A, x: np.linalg.inv(A) @ x, {"A": "invertible"}),
    case("inv-quadratic", "x @ inv(A) @ x", {"A": ("n", "n"), "x": ("n",)},
         lambda A, x: x @ np.linalg.inv(A) @ x, {"A": "spd"}),
    case("norm-vector", "norm(x)", {"x": ("n",)}, np.linalg.norm),
    case("norm-matrix-frobenius", "norm(X)", {"X": ("m", "n")}, np.linalg.norm),
    case("norm-frobenius-explicit", "norm(X)", {"X": ("m", "n")},
         lambda X: np.linalg.norm(X, "fro")),
    case("norm-of-residual", "norm(X @ w - y)", {"X": ("n", "d"), "w": ("d",), "y": ("n",)},
         lambda X, w, y: np.linalg.norm(X @ w - y)),
    case("eye-name-plus", "X + eye(n)", {"X": ("n", "n")}, lambda X: X + np.eye(len(X))),
    case("eye-name-matmul", "eye(n) @ X", {"X": ("n", "m")}, lambda X: X),
    case("eye-name-scaled", "X @ X.T + 0.5 * eye(n)", {"X": ("n", "m")},
         lambda X: X @ X.T + 0.5 * np.eye(len(X))),
    case("eye-name-sum", "sum(eye(n) * X)", {"X": ("n", "n")}, np.trace),
    case("eye-int", "X + eye(3)", {"X": (3, 3)}, lambda X: X + np.eye(3)),
    case("eye-int-times-scalar", "c * eye(3)", {"c": ()}, lambda c: c * np.eye(3)),
    case("eye-name-sliced", "eye(n)[1:, :-1]", {"X": ("n", "n")},
         lambda X: np.eye(len(X))[1:, :-1]),
    case("eye-name-row", "eye(n)[2] @ X", {"X": ("n", "n")}, lambda X: X[2]),
    case("eye-wide", "eye(2, 3)", {}, lambda: np.eye(2, 3)),
    case("eye-tall", "eye(3, 2)", {}, lambda: np.eye(3, 2)),
    case("eye-tall-matvec", "eye(3, 2) @ v", {"v": (2,)}, lambda v: np.eye(3, 2) @ v),
    case("eye-wide-matvec", "eye(2, 3) @ v", {"v": (3,)}, lambda v: np.eye(2, 3) @ v),
    case("eye-named-rectangular", "eye(m, n) @ v", {"v": ("n",), "w": ("m",)},
         lambda v, w: np.eye(len(w), len(v)) @ v),
]


@pytest.mark.parametrize(CASE_ARGS, LINALG_CASES)
def test_linear_algebra(expr, shapes, ref, kinds):
    kinds = dict(kinds)
    negdet = [name for name, kind in kinds.items() if kind == "negdet"]
    for name in negdet:
        del kinds[name]
    arrays = make_arrays(shapes, kinds)
    for name in negdet:
        arrays[name] = NEGATIVE_DET
    assert all(np.linalg.det(arrays[name]) < 0 for name in negdet)
    check(einderiv.compile(expr, shapes)(**arrays), reference(ref, arrays))


def test_eye_alone_with_dimension_name():
    # n is bound by X, which the output does not otherwise use: `eye(n)` still has size n.
    f = einderiv.compile("eye(n) + 0 * sum(X)", {"X": ("n", "d")})
    check(f(X=np.ones((4, 2))), np.eye(4))


def test_eye_int_alone():
    check(einderiv.compile("eye(3)", {})(), np.eye(3))


EINSUM_CASES = [
    case("matmul", 'einsum("ij,jk->ik", A, B)', {"A": ("m", "n"), "B": ("n", "p")},
         lambda A, B: np.einsum("ij,jk->ik", A, B)),
    case("matmul-implicit", 'einsum("ij,jk", A, B)', {"A": ("m", "n"), "B": ("n", "p")},
         lambda A, B: np.einsum("ij,jk", A, B)),
    case("trace", 'einsum("ii->", A)', {"A": ("n", "n")}, lambda A: np.einsum("ii->", A)),
    case("trace-implicit", 'einsum("ii", A)', {"A": ("n", "n")}, lambda A: np.einsum("ii", A)),
    case("diagonal", 'einsum("ii->i", A)', {"A": ("n", "n")}, lambda A: np.einsum("ii->i", A)),
    case("transpose", 'einsum("ij->ji", A)', {"A": ("m", "n")}, lambda A: np.einsum("ij->ji", A)),
    case("transpose-implicit", 'einsum("ba", A)', {"A": ("m", "n")},
         lambda A: np.einsum("ba", A)),
    case("identity", 'einsum("ij->ij", A)', {"A": ("m", "n")}, lambda A: A),
    case("sum-all", 'einsum("ij->", A)', {"A": ("m", "n")}, lambda A: np.einsum("ij->", A)),
    case("sum-rows", 'einsum("ij->j", A)', {"A": ("m", "n")}, lambda A: np.einsum("ij->j", A)),
    case("inner", 'einsum("i,i->", x, y)', {"x": ("n",), "y": ("n",)},
         lambda x, y: np.einsum("i,i->", x, y)),
    case("outer", 'einsum("i,j->ij", x, y)', {"x": ("m",), "y": ("n",)},
         lambda x, y: np.einsum("i,j->ij", x, y)),
    case("hadamard", 'einsum("ij,ij->ij", A, B)', {"A": ("m", "n"), "B": ("m", "n")},
         lambda A, B: A * B),
    case("hadamard-implicit-scalar", 'einsum("ij,ij", A, B)', {"A": ("m", "n"), "B": ("m", "n")},
         lambda A, B: np.einsum("ij,ij", A, B)),
    case("mat-vec", "einsum('ij,j->i', A, x)", {"A": ("m", "n"), "x": ("n",)},
         lambda A, x: np.einsum("ij,j->i", A, x)),
    case("three-operand-chain", 'einsum("ij,jk,kl->il", A, B, C)',
         {"A": ("m", "n"), "B": ("n", "p"), "C": ("p", "d")},
         lambda A, B, C: np.einsum("ij,jk,kl->il", A, B, C)),
    case("three-operand-bilinear", 'einsum("i,ij,j->", x, A, y)',
         {"x": ("m",), "A": ("m", "n"), "y": ("n",)},
         lambda x, A, y: np.einsum("i,ij,j->", x, A, y)),
    case("three-operand-implicit", 'einsum("ij,jk,kl", A, B, C)',
         {"A": ("m", "n"), "B": ("n", "p"), "C": ("p", "d")},
         lambda A, B, C: np.einsum("ij,jk,kl", A, B, C)),
    case("three-operand-shared-index", 'einsum("ij,ik,il->jkl", A, B, C)',
         {"A": ("n", "m"), "B": ("n", "p"), "C": ("n", "d")},
         lambda A, B, C: np.einsum("ij,ik,il->jkl", A, B, C)),
    case("batched", 'einsum("bij,bjk->bik", P, Q)', {"P": ("b", "m", "n"), "Q": ("b", "n", "p")},
         lambda P, Q: np.einsum("bij,bjk->bik", P, Q)),
    case("permute-rank3", 'einsum("ijk->kij", T)', {"T": ("b", "m", "n")},
         lambda T: np.einsum("ijk->kij", T)),
    case("spaces", 'einsum("ij, jk -> ik", A, B)', {"A": ("m", "n"), "B": ("n", "p")},
         lambda A, B: A @ B),
    case("of-expressions", 'einsum("ij,j->i", A + 1, x * x)', {"A": ("m", "n"), "x": ("n",)},
         lambda A, x: (A + 1) @ (x * x)),
    case("trace-of-product", 'einsum("ij,ji->", A, B)', {"A": ("m", "n"), "B": ("n", "m")},
         lambda A, B: np.einsum("ij,ji->", A, B)),
]


@pytest.mark.parametrize(CASE_ARGS, EINSUM_CASES)
def test_einsum(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


# -- statements ------------------------------------------------------------------------------------

STATEMENT_CASES = [
    case("binding-semicolon", "h = X @ w; sum(h)", {"X": ("n", "d"), "w": ("d",)},
         lambda X, w: np.sum(X @ w)),
    case("binding-newline", "h = X @ w\nsum(h * h)", {"X": ("n", "d"), "w": ("d",)},
         lambda X, w: np.sum((X @ w) ** 2)),
    case("last-binding-is-output", "h = X @ w\nz = tanh(h)", {"X": ("n", "d"), "w": ("d",)},
         lambda X, w: np.tanh(X @ w)),
    case("rebinding", "h = x; h = h * 2; h = h + 1; h", {"x": ("n",)}, lambda x: x * 2 + 1),
    case("binding-shadows-variable", "x = x * x; x + 1", {"x": ("n",)}, lambda x: x * x + 1),
    case("shared-binding", "s = x + y\ns * s + s", {"x": ("n",), "y": ("n",)},
         lambda x, y: (x + y) * (x + y) + (x + y)),
    case("comments", "# a comment line\nh = X @ w  # trailing comment\n# another\nsum(h)",
         {"X": ("n", "d"), "w": ("d",)}, lambda X, w: np.sum(X @ w)),
    case("blank-lines-and-semicolons", "\n\nh = x * 2;\n\n  g = h + 1 ;  g * h\n\n",
         {"x": ("n",)}, lambda x: (x * 2 + 1) * (x * 2)),
    case("crlf", "h = x * 2\r\nh + 1\r\n", {"x": ("n",)}, lambda x: x * 2 + 1),
    case("two-layer-mlp", "h = relu(X @ W1 + b1)\nout = h @ W2 + b2\nmean(out ** 2)",
         {"X": ("n", "d"), "W1": ("d", "h"), "b1": ("h",), "W2": ("h", "m"), "b2": ("m",)},
         lambda X, W1, b1, W2, b2: np.mean((np.maximum(X @ W1 + b1, 0) @ W2 + b2) ** 2)),
]


@pytest.mark.parametrize(CASE_ARGS, STATEMENT_CASES)
def test_statements(expr, shapes, ref, kinds):
    run_case(expr, shapes, ref, kinds)


INLINE_SOURCES = [
    pytest.param("X: [n, d]\nw: [d]\nsum(X @ w)", id="newlines"),
    pytest.param("X: [n, d]; w: [d]; sum(X @ w)", id="semicolons"),
    pytest.param("X: [n, d]\nw: [d]\nh = X @ w\nsum(h)", id="declare-bind-use"),
    pytest.param("# shapes\nX: [n, d]  # data\nw: [d,]\n\nsum(X @ w)",
                 id="comments-trailing-comma"),
    pytest.param("X: [n, d]\nsum(X @ w)", id="mixed-inline-and-shapes"),
]


@pytest.mark.parametrize("source", INLINE_SOURCES)
def test_inline_declarations(source):
    rng = np.random.default_rng(1)
    X, w = rng.standard_normal((4, 3)), rng.standard_normal(3)
    shapes = {"w": ("d",)} if "w:" not in source else None
    f = einderiv.compile(source, shapes)
    check(f(X=X, w=w), np.sum(X @ w))


def test_inline_concrete_and_scalar_declarations():
    f = einderiv.compile("A: [2, 3]\nc: []\nv: [3]\nc * (A @ v)")
    rng = np.random.default_rng(2)
    A, v = rng.standard_normal((2, 3)), rng.standard_normal(3)
    check(f(A=A, c=1.5, v=v), 1.5 * (A @ v))


@pytest.mark.parametrize("value", [2.5, np.array(2.5), np.float64(2.5), 2],
                         ids=["float", "0d-array", "numpy-scalar", "int"])
@pytest.mark.parametrize("declared", ["inline", "shapes"])
def test_scalar_inputs(value, declared):
    x = np.arange(1.0, 5.0)
    if declared == "inline":
        f = einderiv.compile("c: []\nx: [n]\nc * x + c ** 2")
    else:
        f = einderiv.compile("c * x + c ** 2", {"c": (), "x": ("n",)})
    c = float(value)
    check(f(c=value, x=x), c * x + c ** 2)


def test_scalar_result_is_zero_dimensional():
    f = einderiv.compile("c: []\nc * c + 1")
    out = f(c=3.0)
    assert np.ndim(out) == 0
    check(out, 10.0)
    out = einderiv.compile("sum(x)", {"x": ("n",)})(x=np.ones(3))
    assert np.ndim(out) == 0
    check(out, 3.0)


def test_unused_variables_may_be_left_out():
    f = einderiv.compile("h = X @ w\nsum(y)", {"X": ("n", "d"), "w": ("d",), "y": ("n",)})
    check(f(y=np.arange(3.0)), 3.0)


def test_unused_variables_may_be_passed():
    """Every variable of the expression is a valid keyword, used by the result or not."""
    f = einderiv.compile("h = X @ w\nsum(y)", {"X": ("n", "d"), "w": ("d",), "y": ("n",)})
    check(f(X=np.ones((3, 2)), w=np.ones(2), y=np.arange(3.0)), 3.0)
    # ... and is still checked against its declared shape
    with pytest.raises(einderiv.ShapeError, match="'X'"):
        f(X=np.ones((4, 2)), w=np.ones(2), y=np.arange(3.0))


def test_variable_folded_away_may_be_passed():
    f = einderiv.compile("x + 0 * y", {"x": ("n",), "y": ("n",)})
    check(f(x=np.arange(3.0), y=np.ones(3)), np.arange(3.0))
    check(f(x=np.arange(3.0)), np.arange(3.0))


def test_integer_arrays_are_accepted():
    f = einderiv.compile("A @ x", {"A": ("m", "n"), "x": ("n",)})
    A = np.arange(6).reshape(2, 3)
    x = np.array([1, 2, 3])
    check(f(A=A, x=x), A @ x)


def test_lists_are_accepted():
    f = einderiv.compile("A @ x", {"A": ("m", "n"), "x": ("n",)})
    check(f(A=[[1.0, 2.0], [3.0, 4.0]], x=[1.0, -1.0]), [-1.0, -1.0])


def test_result_is_not_a_readonly_view():
    """Broadcast results come back as arrays the caller may write to."""
    f = einderiv.compile("x + 0 * y", {"x": ("n",), "y": ("m", "n")})
    out = f(x=np.ones(3), y=np.zeros((2, 3)))
    check(out, np.ones((2, 3)))
    out[0, 0] = 5.0
    check(f(x=np.ones(3), y=np.zeros((2, 3))), np.ones((2, 3)))


def test_inputs_are_not_modified():
    arrays = make_arrays({"X": ("n", "d"), "w": ("d",)}, seed=3)
    copies = {k: v.copy() for k, v in arrays.items()}
    f = einderiv.compile("h = X @ w; X[0] * 2 + sum(exp(h)) + X.T @ h", {"X": ("n", "d"),
                                                                        "w": ("d",)})
    f(**arrays)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k])


# -- expressions built from Python -----------------------------------------------------------------

def _symbolic_cases():
    """(id, expression built with einderiv.var / einderiv.fn, the same expression as text)."""
    shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",), "A": ("n", "n"), "c": (),
              "T": ("b", "n", "d")}
    X, y, w, A, c, T = (einderiv.var(name, shape) for name, shape in shapes.items())
    eye = fn.eye("n")
    return shapes, [
        ("logistic", fn.sum(fn.log(1 + fn.exp(-y * (X @ w)))),
         "sum(log(1 + exp(-y * (X @ w))))"),
        ("arith", 2 * X - X / 3 + 1 - (X * X) ** 0.5 + (-X),
         "2 * X - X / 3 + 1 - (X * X) ** 0.5 + -X"),
        ("reflected", 1 / (2 + c) - 3 * c + 2 ** c - (1 - c),
         "1 / (2 + c) - 3 * c + 2 ** c - (1 - c)"),
        ("numpy-scalar-operand", np.float64(2.0) * X + X * np.float64(0.5),
         "2 * X + X * 0.5"),
        ("negative-number", X * -2.5 + (-1) * y[:, None], "X * -2.5 + (-1) * y[:, None]"),
        ("pow-neg", (1 + y * y) ** -1, "(1 + y * y) ** -1"),
        ("neg-pow", -y ** 2, "-y ** 2"),
        ("pos", +y, "+y"),
        ("transpose", X.T @ y + w, "X.T @ y + w"),
        ("index-none", y[:, None] * X, "y[:, None] * X"),
        ("index-int", X[0] + X[-1], "X[0] + X[-1]"),
        ("index-slice", X[1:-1, :2], "X[1:-1, :2]"),
        ("index-open", y[:2] - y[-2:], "y[:2] - y[-2:]"),
        ("index-rank3", T[0, :, -1] + T[-1, :, None][:, 0, 1],
         "T[0, :, -1] + T[-1, :, None][:, 0, 1]"),
        ("sum-axis", fn.sum(T, axis=(0, -1)), "sum(T, axis=(0, -1))"),
        ("mean-axis", fn.mean(X, axis=0), "mean(X, axis=0)"),
        ("mean-all", fn.mean(X), "mean(X)"),
        ("logsumexp", fn.logsumexp(X, axis=1) + fn.logsumexp(X),
         "logsumexp(X, axis=1) + logsumexp(X)"),
        ("softmax", fn.softmax(X) + fn.softmax(X, axis=0), "softmax(X) + softmax(X, axis=0)"),
        ("elementwise", fn.tanh(X) + fn.sigmoid(X) * fn.softplus(X) - fn.relu(X) + fn.arctan(X),
         "tanh(X) + sigmoid(X) * softplus(X) - relu(X) + arctan(X)"),
        ("maximum", fn.maximum(X, 0) + fn.minimum(y[:, None], X),
         "maximum(X, 0) + minimum(y[:, None], X)"),
        ("linalg", fn.det(A @ A.T + eye) + fn.tr(A) + fn.norm(A) + fn.logdet(A @ A.T + 0.1 * eye),
         "det(A @ A.T + eye(n)) + tr(A) + norm(A) + logdet(A @ A.T + 0.1 * eye(n))"),
        ("inv", fn.inv(A @ A.T + eye) @ y, "inv(A @ A.T + eye(n)) @ y"),
        ("diag", fn.diag(fn.diag(A)) + fn.outer(y, y) + fn.diag(y),
         "diag(diag(A)) + outer(y, y) + diag(y)"),
        ("dot", fn.dot(X, w) + fn.dot(y, y), "dot(X, w) + dot(y, y)"),
        ("einsum", fn.einsum("ij,jk->ik", X, X.T), 'einsum("ij,jk->ik", X, X.T)'),
        ("einsum-trace", fn.einsum("ii->", A), 'einsum("ii->", A)'),
        ("scalar-times", c * fn.square(w), "c * square(w)"),
        ("batched-matmul", T @ w, "T @ w"),
    ]


_SYMBOLIC_SHAPES, _SYMBOLIC = _symbolic_cases()


@pytest.mark.parametrize("idx", range(len(_SYMBOLIC)), ids=[c[0] for c in _SYMBOLIC])
def test_symbolic_matches_string(idx):
    _, tensor, source = _SYMBOLIC[idx]
    arrays = make_arrays(_SYMBOLIC_SHAPES, seed=4)
    f_sym = einderiv.compile(tensor)  # declarations travel with the tensor
    f_str = einderiv.compile(source, _SYMBOLIC_SHAPES)
    used = {k: v for k, v in arrays.items() if k in f_str.inputs}
    out_sym = f_sym(**used)
    out_str = f_str(**used)
    check(out_sym, out_str)
    # and the tensor's printed form parses back to the same function
    check(einderiv.compile(repr(tensor), _SYMBOLIC_SHAPES)(**used), out_str)


def test_symbolic_against_numpy():
    X = einderiv.var("X", ("n", "d"))
    y = einderiv.var("y", ("n",))
    w = einderiv.var("w", ("d",))
    loss = fn.mean((X @ w - y) ** 2) + 0.1 * fn.sum(w * w)
    arrays = make_arrays({"X": ("n", "d"), "y": ("n",), "w": ("d",)}, seed=5)
    Xa, ya, wa = arrays["X"], arrays["y"], arrays["w"]
    check(einderiv.compile(loss)(**arrays), np.mean((Xa @ wa - ya) ** 2) + 0.1 * wa @ wa)


def test_symbolic_shapes_argument_overrides_nothing_needed():
    x = einderiv.var("x", ("n",))
    f = einderiv.compile(fn.sum(fn.exp(x)), {"x": ("n",)})
    check(f(x=np.zeros(3)), 3.0)


def _rnn_reference(W, U, b, X, steps):
    h = np.zeros(W.shape[0])
    for t in range(steps):
        h = np.tanh(W @ h + U @ X[t] + b)
    return h


def test_unrolled_tanh_rnn():
    steps = 5
    W = einderiv.var("W", ("h", "h"))
    U = einderiv.var("U", ("h", "d"))
    b = einderiv.var("b", ("h",))
    X = einderiv.var("X", (steps, "d"))
    h = fn.tanh(U @ X[0] + b)
    for t in range(1, steps):
        h = fn.tanh(W @ h + U @ X[t] + b)
    shapes = {"W": ("h", "h"), "U": ("h", "d"), "b": ("h",), "X": (steps, "d")}
    arrays = make_arrays(shapes, seed=6)
    expected = _rnn_reference(arrays["W"], arrays["U"], arrays["b"], arrays["X"], steps)
    check(einderiv.compile(h)(**arrays), expected)
    # the same network as a loss, and as the equivalent source text
    check(einderiv.compile(fn.sum(h * h))(**arrays), expected @ expected)
    source = "h = tanh(U @ X[0] + b)\n" + "".join(
        f"h = tanh(W @ h + U @ X[{t}] + b)\n" for t in range(1, steps)) + "h"
    check(einderiv.compile(source, shapes)(**arrays), expected)


def test_unrolled_tanh_rnn_separate_inputs():
    steps = 5
    W = einderiv.var("W", ("h", "h"))
    U = einderiv.var("U", ("h", "d"))
    xs = [einderiv.var(f"x{t}", ("d",)) for t in range(steps)]
    h = einderiv.var("h0", ("h",))
    for x in xs:
        h = fn.tanh(W @ h + U @ x)
    shapes = {"W": ("h", "h"), "U": ("h", "d"), "h0": ("h",),
              **{f"x{t}": ("d",) for t in range(steps)}}
    arrays = make_arrays(shapes, seed=7)
    expected = arrays["h0"]
    for t in range(steps):
        expected = np.tanh(arrays["W"] @ expected + arrays["U"] @ arrays[f"x{t}"])
    check(einderiv.compile(h)(**arrays), expected)


# -- the plan cache --------------------------------------------------------------------------------

@pytest.fixture
def plan_counter(monkeypatch):
    """Counts specializations of the generated code: the only place a call plans anything
    (binding dimensions, choosing contraction paths)."""
    from einderiv.generate.function import GeneratedFunction
    calls = []
    original = GeneratedFunction._specialize

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GeneratedFunction, "_specialize", counting)
    return calls


def test_cache_same_shapes(plan_counter):
    shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    expr = "sum(log(1 + exp(-y * (X @ w)))) + sum(X[1:] * X[:-1]) + X[-1] @ w"

    def ref(X, y, w):
        return np.sum(np.log(1 + np.exp(-y * (X @ w)))) + np.sum(X[1:] * X[:-1]) + X[-1] @ w

    f = einderiv.compile(expr, shapes)
    arrays = make_arrays(shapes, seed=8)
    first = f(**arrays)
    second = f(**arrays)
    check(first, ref(**arrays))
    check(second, first)
    assert len(plan_counter) == 1
    # new values with the same shapes: no new planning, new result
    other = make_arrays(shapes, seed=9)
    check(f(**other), ref(**other))
    assert len(plan_counter) == 1


def test_cache_new_shapes(plan_counter):
    shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    expr = "h = X @ w\nsum(log(1 + exp(-y * h))) + h[-1] * mean(h[1:-1]) + tr(X.T @ X)"

    def ref(X, y, w):
        h = X @ w
        return np.sum(np.log(1 + np.exp(-y * h))) + h[-1] * np.mean(h[1:-1]) + np.trace(X.T @ X)

    f = einderiv.compile(expr, shapes)
    for n, d in [(4, 3), (7, 3), (5, 2), (4, 3)]:
        arrays = make_arrays(shapes, seed=n + d, sizes={"n": n, "d": d})
        check(f(**arrays), ref(**arrays))
    assert len(plan_counter) == 3  # (4, 3) came back from the cache


@pytest.mark.parametrize("expr, ref", [
    ("eye(n) + X", lambda X: np.eye(len(X)) + X),
    ("v[1:-1] + v[:-2]", None),
    ("mean(X)", lambda X: np.mean(X)),
    ("softmax(X, axis=0)", lambda X: ref_softmax(X, axis=0)),
], ids=["eye", "slices", "mean", "softmax"])
def test_cache_shapes_change_sizes(expr, ref):
    shapes = {"X": ("n", "n")} if "X" in expr else {"v": ("n",)}
    if ref is None:
        ref = lambda v: v[1:-1] + v[:-2]  # noqa: E731
    f = einderiv.compile(expr, shapes)
    for n in (3, 5, 3, 6):
        arrays = make_arrays(shapes, seed=n, sizes={"n": n})
        check(f(**arrays), ref(**arrays))


# -- binding errors --------------------------------------------------------------------------------

def test_wrong_shape_names_variable_and_shapes():
    f = einderiv.compile("X @ w", {"X": ("n", "d"), "w": ("d",)})
    with pytest.raises(einderiv.ShapeError) as info:
        f(X=np.ones((4, 3)), w=np.ones(5))
    message = str(info.value)
    assert "'w'" in message
    assert "[d]" in message
    assert "(5,)" in message
    assert isinstance(info.value, einderiv.EinderivError)


def test_wrong_rank_names_variable_and_shapes():
    f = einderiv.compile("X @ w", {"X": ("n", "d"), "w": ("d",)})
    with pytest.raises(einderiv.ShapeError) as info:
        f(X=np.ones((4, 3, 1)), w=np.ones(3))
    message = str(info.value)
    assert "'X'" in message
    assert "[n, d]" in message
    assert "(4, 3, 1)" in message


def test_wrong_concrete_dimension():
    f = einderiv.compile("A @ x", {"A": (2, 3), "x": (3,)})
    with pytest.raises(einderiv.ShapeError) as info:
        f(A=np.ones((2, 4)), x=np.ones(3))
    message = str(info.value)
    assert "'A'" in message
    assert "[2, 3]" in message
    assert "(2, 4)" in message


def test_inconsistent_dimension_between_variables():
    f = einderiv.compile("x + y", {"x": ("n",), "y": ("n",)})
    with pytest.raises(einderiv.ShapeError) as info:
        f(x=np.ones(3), y=np.ones(4))
    message = str(info.value)
    assert "'y'" in message and "[n]" in message and "(4,)" in message


def test_scalar_given_an_array():
    f = einderiv.compile("c * x", {"c": (), "x": ("n",)})
    with pytest.raises(einderiv.ShapeError) as info:
        f(c=np.ones(3), x=np.ones(3))
    message = str(info.value)
    assert "'c'" in message and "[]" in message and "(3,)" in message


def test_shape_error_after_a_good_call():
    """The cache does not let a wrong shape through once a plan exists."""
    f = einderiv.compile("X @ w", {"X": ("n", "d"), "w": ("d",)})
    check(f(X=np.ones((2, 3)), w=np.ones(3)), [3.0, 3.0])
    with pytest.raises(einderiv.ShapeError):
        f(X=np.ones((2, 3)), w=np.ones(2))


def test_index_out_of_bounds_for_named_dimension():
    f = einderiv.compile("v[5]", {"v": ("n",)})
    check(f(v=np.arange(6.0)), 5.0)
    with pytest.raises(einderiv.ShapeError, match="out of bounds"):
        f(v=np.arange(4.0))


@pytest.mark.parametrize("expr", ["v[2:100]", "sum(v[1:6] * 2)"])
def test_slice_past_end_of_named_dimension(expr):
    """numpy would clip; with a named size that cannot be planned, so it is a clear error."""
    f = einderiv.compile(expr, {"v": ("n",)})
    with pytest.raises(einderiv.ShapeError, match="out of range"):
        f(v=np.arange(4.0))


def test_missing_input():
    f = einderiv.compile("X @ w", {"X": ("n", "d"), "w": ("d",)})
    with pytest.raises(einderiv.EinderivError) as info:
        f(X=np.ones((4, 3)))
    assert "'w'" in str(info.value)


def test_unexpected_input():
    f = einderiv.compile("sum(x)", {"x": ("n",)})
    with pytest.raises(einderiv.EinderivError) as info:
        f(x=np.ones(3), z=np.ones(3))
    assert "'z'" in str(info.value)


def test_a_diagonal_is_placed_not_multiplied_by_an_identity():
    """The Hessian of sum(a ** 0.5) is delta[i,j] * f''(a)[j]: at a = 0, f'' is -inf, and the
    entries off the diagonal are exact zeros (0 * -inf was nan in the IR interpreter, while the
    generated code wrote diag())."""
    import warnings
    h = einderiv.hessian("sum(a ** 0.5)", "a", {"a": ("n",)})
    a = np.array([0.0, 1.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for value in (h(a=a), h.evaluate_ir(a=a)):
            off = value[~np.eye(3, dtype=bool)]
            assert np.all(off == 0), value
            np.testing.assert_allclose(np.diag(value)[1:], [-0.25, -0.25 / 8])
            assert np.diag(value)[0] == -np.inf
    j = einderiv.jacobian("2 * tanh(X)", "X", {"X": ("n", "m")})
    X = np.linspace(-1, 1, 6).reshape(2, 3)
    np.testing.assert_allclose(j.evaluate_ir(X=X), j(X=X))
