"""Rewrite rules (issue 12, items 1 and 4): the identities of rules/rewrites.rules, applied to
every program before it is derived and to every derivative after.

The issue's examples with their right values (closed forms, written with numpy's stable
functions, and finite differences of the expression as written where that is finite); the forms
a pattern matches and those it must not; the pass (a normal form, names kept, long programs at
the default recursion limit); rule books with rewrites of their own; and random programs built
from the patterns, whose values and gradients must not change at ordinary points.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.api import lower_source
from einderiv.check import finite_difference, relative_error
from einderiv.evaluate.plan import Plan
from einderiv.ir import build
from einderiv.ir.nodes import Map, Prim, Var, topological
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import parse_rules, using_rules
from einderiv.simplify import Rewriter

LINEAR = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"
BCE = "sum(-(y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))))"
BCE_LINEAR = BCE.replace("z", "(X @ w)")


def softplus(u):
    return np.logaddexp(0.0, u)


def sigmoid(u):
    u = np.asarray(u, float)
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e))


def logsumexp(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)), axis=axis)


def log_softmax_reference(x, axis):
    """x - logsumexp(x), but -log1p(the others' share) at each slice's largest entry, where
    x - logsumexp(x) rounds a share below 1e-16 (e^-500: -7e-218) to 0."""
    m = np.max(x, axis=axis, keepdims=True)
    share = np.sum(np.where(x == m, 0.0, np.exp(x - m)), axis=axis, keepdims=True)
    return np.where(x == m, -np.log1p(share), x - np.expand_dims(logsumexp(x, axis), axis))


def functions_in(formula: str) -> set[str]:
    import re
    return set(re.findall(r"([a-z_]\w*)\(", formula))


# -- the examples --------------------------------------------------------------------------

def test_logistic_loss_at_a_margin_of_minus_800():
    vg = einderiv.value_and_grad(LOGISTIC, "w", LINEAR)
    value, dw = vg(X=np.array([[1.0]]), y=np.array([1.0]), w=np.array([-800.0]))
    assert value == 800.0  # log(1 + e^800) = 800 + log1p(e^-800)
    np.testing.assert_allclose(dw, [-1.0], rtol=1e-15)  # -sigmoid(800)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 3)), rng.choice([-1.0, 1.0], size=6)
    for w in (rng.normal(size=3), 400 * rng.normal(size=3), 1e5 * rng.normal(size=3)):
        m = y * (X @ w)
        value, dw = vg(X=X, y=y, w=w)
        np.testing.assert_allclose(value, np.sum(softplus(-m)), rtol=1e-13)
        np.testing.assert_allclose(dw, -X.T @ (y * sigmoid(-m)), rtol=1e-12, atol=1e-300)


def test_logistic_gradient_reads_with_one_sigmoid():
    formula = einderiv.grad(LOGISTIC, "w", LINEAR).formula
    assert formula in ("-(X.T @ (y * sigmoid(-y * (X @ w))))",
                       "-(X.T @ (sigmoid(-y * (X @ w)) * y))")


def test_logistic_hessian_is_finite_at_margin_800():
    H = einderiv.hessian(LOGISTIC, "w", LINEAR)
    X, y, w = np.array([[1.0, 0], [0, 1], [1, 1]]), np.array([1.0, -1, 1]), np.array([800.0, -800])
    np.testing.assert_allclose(H(X=X, y=y, w=w), [[0.25, 0.25], [0.25, 0.25]], rtol=1e-15)
    # sigmoid'(m) = dsigmoid(m) = sech(m / 2) ** 2 / 4, exact where s * (1 - s) cancels
    # (rules/elementwise.rules)
    assert H.formula.count("dsigmoid(") == 1 and " sigmoid(" not in H.formula and "1 - " not in \
        H.formula and "1 / t" not in H.formula and "exp(" not in H.formula
    rng = np.random.default_rng(1)
    X, y, w = rng.normal(size=(5, 3)), rng.choice([-1.0, 1.0], size=5), rng.normal(size=3)
    s = sigmoid(-y * (X @ w))
    np.testing.assert_allclose(H(X=X, y=y, w=w), X.T @ ((y ** 2 * s * (1 - s))[:, None] * X),
                               rtol=1e-12)


BCE_Z = np.array([40.0, 100, -50, -800, 800])
BCE_Y = np.array([1.0, 1, 1, 1, 0])


def test_binary_cross_entropy_through_a_sigmoid():
    vg = einderiv.value_and_grad(BCE, "z", {"z": ("n",), "y": ("n",)})
    value, dz = vg(z=BCE_Z, y=BCE_Y)
    # softplus(z) - y * z: log1p(e^-40) + log1p(e^-100) + 50 + 800 + 800.
    np.testing.assert_allclose(value, np.sum(softplus(BCE_Z) - BCE_Y * BCE_Z), rtol=1e-15)
    np.testing.assert_allclose(dz, sigmoid(BCE_Z) - BCE_Y, rtol=0, atol=1e-16)
    np.testing.assert_array_equal(np.round(dz), [0, 0, -1, -1, 1])
    # The expression as written agrees where it is finite.
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=5), rng.uniform(0, 1, size=5)
    written = np.sum(-(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z)))))
    np.testing.assert_allclose(vg(z=z, y=y)[0], written, rtol=1e-13)


@pytest.mark.parametrize("loss", [BCE_LINEAR,
                                  "sum(-y * log(sigmoid(X @ w)) - (1 - y) * log(1 - sigmoid(X @ w)))"],
                         ids=["negated-sum", "two-subtractions"])
def test_binary_cross_entropy_gradient_has_one_sigmoid(loss):
    g = einderiv.grad(loss, "w", LINEAR)
    assert g.formula in ("X.T @ (sigmoid(X @ w) - y)", "X.T @ (-y + sigmoid(X @ w))")
    rng = np.random.default_rng(3)
    X, y, w = rng.normal(size=(5, 3)), rng.uniform(0, 1, size=5), 300 * rng.normal(size=3)
    np.testing.assert_allclose(g(X=X, y=y, w=w), X.T @ (sigmoid(X @ w) - y), rtol=1e-12)
    H = einderiv.hessian(loss, "w", LINEAR)
    assert H.formula.count("dsigmoid(") == 1 and "1 - " not in H.formula  # sigmoid'(m), exact


def test_cross_entropy_of_a_softmax_at_large_logits():
    vg = einderiv.value_and_grad("-(y @ log(softmax(x)))", "x", {"x": ("n",), "y": ("n",)})
    x, y = 1000.0 * np.arange(1, 10), np.eye(9)[0]
    value, dx = vg(x=x, y=y)
    assert value == 8000.0
    np.testing.assert_allclose(dx, np.exp(x - x.max()) - y, atol=1e-300)
    assert "log_softmax(x)" in vg.formula


def test_log_of_a_sum_of_exponentials_is_logsumexp():
    shapes = {"l": ("n", "k")}
    vg = einderiv.value_and_grad("sum(log(sum(exp(l), axis=-1)))", "l", shapes)
    assert "logsumexp(l, axis=1)" in vg.formula and "exp" not in functions_in(vg.formula)
    rng = np.random.default_rng(4)
    l = 1000 * rng.normal(size=(3, 4))
    value, dl = vg(l=l)
    np.testing.assert_allclose(value, np.sum(logsumexp(l, 1)), rtol=1e-14)
    e = np.exp(l - l.max(axis=1, keepdims=True))
    np.testing.assert_allclose(dl, e / e.sum(axis=1, keepdims=True), atol=1e-300)


def test_hessian_of_abs_squared_is_smooth():
    H = einderiv.hessian("sum(abs(x) ** 2)", "x", {"x": ("n",)})
    np.testing.assert_array_equal(H(x=np.array([0.0, 1.0])), 2 * np.eye(2))
    g = einderiv.grad("sum(sign(x) * abs(x) * y)", "x", {"x": ("n",), "y": ("n",)})
    assert g.formula == "y"  # d(x y)/dx, at x = 0 too (sign' = 0 would drop it there)


# -- the forms a pattern matches -------------------------------------------------------------------

@pytest.mark.parametrize("source, shapes, becomes, reference", [
    ("log(exp(u) + 1)", {"u": ("n",)}, "softplus", lambda a: softplus(a["u"])),
    ("log1p(exp(u))", {"u": ("n",)}, "softplus", lambda a: softplus(a["u"])),
    ("log(1 + exp(2 * u))", {"u": ("n",)}, "softplus", lambda a: softplus(2 * a["u"])),
    ("log(1 + exp(u))", {"u": ()}, "softplus", lambda a: softplus(a["u"])),
    ("1 / (1 + exp(-u))", {"u": ("n",)}, "sigmoid", lambda a: sigmoid(a["u"])),
    ("1 / (1 + exp(u))", {"u": ("n",)}, "sigmoid", lambda a: sigmoid(-a["u"])),
    ("exp(u) / (exp(u) + 1)", {"u": ("n",)}, "sigmoid", lambda a: sigmoid(a["u"])),
    ("log(sigmoid(u))", {"u": ("n",)}, "softplus", lambda a: -softplus(-a["u"])),
    ("log(1 - sigmoid(u))", {"u": ("n",)}, "softplus", lambda a: -softplus(a["u"])),
    ("exp(x) / sum(exp(x))", {"x": ("n",)}, "softmax",
     lambda a: np.exp(a["x"] - logsumexp(a["x"], 0))),
    ("exp(X) / sum(exp(X), axis=1)[:, None]", {"X": ("n", "k")}, "softmax",
     lambda a: np.exp(a["X"] - logsumexp(a["X"], 1)[:, None])),
    ("exp(X) / sum(exp(X), axis=0)", {"X": ("n", "k")}, "softmax",
     lambda a: np.exp(a["X"] - logsumexp(a["X"], 0))),
    ("exp(T) / sum(exp(T), axis=(0, 2))[None, :, None]", {"T": ("a", "b", "c")}, "softmax",
     lambda a: np.exp(a["T"] - logsumexp(a["T"], (0, 2))[None, :, None])),
    ("log(sum(exp(T), axis=(0, 2)))", {"T": ("a", "b", "c")}, "logsumexp",
     lambda a: logsumexp(a["T"], (0, 2))),
    ("log(sum(exp(X)))", {"X": ("n", "k")}, "logsumexp", lambda a: logsumexp(a["X"], (0, 1))),
    ("log(softmax(X, axis=0))", {"X": ("n", "k")}, "log_softmax",
     lambda a: log_softmax_reference(a["X"], 0)),
    # Rewrites that enable one another: a sigmoid written out, then its log.
    ("log(exp(u) / (1 + exp(u)))", {"u": ("n",)}, "softplus", lambda a: -softplus(-a["u"])),
    ("log(exp(x) / sum(exp(x)))", {"x": ("n",)}, "log_softmax",
     lambda a: log_softmax_reference(a["x"], 0)),
    # Inside products, under a sum: the factors on one set of indices.
    ("sum(z * abs(u) * sign(u))", {"u": ("n",), "z": ("n",)}, None,
     lambda a: np.sum(a["z"] * a["u"])),
    ("abs(u) ** 2 * z", {"u": ("n",), "z": ("n",)}, None, lambda a: a["u"] ** 2 * a["z"]),
    ("square(abs(u))", {"u": ("n",)}, "square", lambda a: a["u"] ** 2),
    ("abs(u) * z * abs(u)", {"u": ("n",), "z": ("n",)}, None, lambda a: a["u"] ** 2 * a["z"]),
    # Smooth functions written with kinks: the textbook stable softplus and log-sigmoid.
    ("relu(u) + log1p(exp(-abs(u)))", {"u": ("n",)}, "softplus", lambda a: softplus(a["u"])),
    ("maximum(0, u) + log(1 + exp(-abs(u)))", {"u": ("n",)}, "softplus",
     lambda a: softplus(a["u"])),
    ("minimum(u, 0) - log1p(exp(-abs(u)))", {"u": ("n",)}, "softplus",
     lambda a: -softplus(-a["u"])),
    # Norms written out, and squared.
    ("sqrt(sum(u ** 2))", {"u": ("n",)}, "norm", lambda a: np.linalg.norm(a["u"])),
    ("sqrt(sum(X * X, axis=0))", {"X": ("n", "k")}, "norm",
     lambda a: np.linalg.norm(a["X"], axis=0)),
    ("norm(X, axis=1) ** 2", {"X": ("n", "k")}, None, lambda a: np.sum(a["X"] ** 2, axis=1)),
    ("square(norm(X, axis=0))", {"X": ("n", "k")}, None,
     lambda a: np.sum(a["X"] ** 2, axis=0)),
    ("z * norm(u) * norm(u)", {"u": ("n",), "z": ("n",)}, None,
     lambda a: a["z"] * np.sum(a["u"] ** 2)),
    ("log(exp(u) + exp(z))", {"u": ("n",), "z": ("n",)}, "logaddexp",
     lambda a: np.logaddexp(a["u"], a["z"])),
    ("log(exp(u) / sum(exp(z)))", {"u": ("n",), "z": ("n",)}, "logsumexp",
     lambda a: a["u"] - logsumexp(a["z"], 0)),
    # a sum of a number and a selection seen as the selection of the sum
    ("log(1 + exp(X).T)", {"X": ("n", "k")}, "softplus", lambda a: softplus(a["X"]).T),
    ("log(exp(u)[1:] + 1)", {"u": ("n",)}, "softplus", lambda a: softplus(a["u"][1:])),
], ids=lambda v: v if isinstance(v, str) and "(" in v else None)
def test_pattern_forms(source, shapes, becomes, reference):
    f = einderiv.compile(source, shapes)
    functions = functions_in(f.formula)
    if becomes is not None:
        assert becomes in functions, f.formula
    assert not functions & {"exp", "abs", "sign", "log", "sqrt"}, f.formula
    rng = np.random.default_rng(5)
    sizes = {"n": 4, "k": 3, "a": 2, "b": 3, "c": 4}
    arrays = {k: 800 * rng.normal(size=tuple(sizes[d] for d in s)) for k, s in shapes.items()}
    expected = reference(arrays)
    with np.errstate(all="ignore"):
        got = f(**arrays)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("source, want", [
    ("log(exp(u) + exp(u))", lambda u: u + np.log(2)),  # collected to log(2 * exp(u))
    ("log(exp(u) / 4)", lambda u: u - np.log(4)),
    ("log(0.5 * exp(2 * u))", lambda u: 2 * u - np.log(2)),
])
def test_log_of_a_scaled_exponential(source, want):
    f = einderiv.compile(source, {"u": ("n",)})
    assert "exp" not in functions_in(f.formula), f.formula
    u = np.array([800.0, -800.0, 0.3])
    np.testing.assert_allclose(f(u=u), want(u), rtol=1e-15)


@pytest.mark.parametrize("source, shapes", [
    # A row sum broadcast along the last axis: column j divided by row j's sum, not a softmax.
    ("exp(X) / sum(exp(X), axis=1)", {"X": ("n", "n")}),
    ("exp(X) / sum(exp(X), axis=0)[:, None]", {"X": ("n", "n")}),
    ("exp(x) / sum(exp(y))", {"x": ("n",), "y": ("n",)}),
    ("log(2 + exp(u))", {"u": ("n",)}),
    ("log(1 + 2 * exp(u))", {"u": ("n",)}),
    ("log(1 + exp(u) + v)", {"u": ("n",), "v": ("n",)}),
    ("exp(u) / (1 + exp(v))", {"u": ("n",), "v": ("n",)}),
    ("sign(u) * abs(v)", {"u": ("n",), "v": ("n",)}),
    ("abs(u) ** 3", {"u": ("n",)}),
    ("log(sum(exp(X), axis=1) + 1)", {"X": ("n", "k")}),
    ("y * softplus(-u) + (1 - v) * softplus(u)", {"u": ("n",), "v": ("n",), "y": ("n",)}),
    # Binary cross-entropy itself is kept: softplus(u) - y * u would cancel.
    ("y * softplus(-u) + (1 - y) * softplus(u)", {"u": ("n",), "y": ("n",)}),
    ("(1 - y) * sigmoid(u) - v * sigmoid(-u)", {"u": ("n",), "v": ("n",), "y": ("n",)}),
    ("relu(u) + softplus(-abs(v))", {"u": ("n",), "v": ("n",)}),
    ("sqrt(sum(u * v))", {"u": ("n",), "v": ("n",)}),
    ("norm(u) * norm(v)", {"u": ("n",), "v": ("n",)}),
    # a sum of two different selections, or of a selection and a tensor, is none
    ("log(1 + exp(X).T + exp(X))", {"X": ("n", "n")}),
    ("log(1 + exp(X).T + Y)", {"X": ("n", "n"), "Y": ("n", "n")}),
    ("log(2 + exp(X).T)", {"X": ("n", "n")}),
    # 2 - tanh(u) ** 2 is not a multiple of 1 - tanh(u) ** 2
    ("2 - tanh(u) ** 2", {"u": ("n",)}),
    ("norm(X, axis=0)[0] * norm(X, axis=1)[0]", {"X": ("n", "n")}),
    ("log(exp(u) + 2 * exp(v))", {"u": ("n",), "v": ("n",)}),
])
def test_what_is_not_a_pattern_is_left_alone(source, shapes):
    f = einderiv.compile(source, shapes)
    assert not functions_in(f.formula) & {"softplus", "sigmoid", "softmax", "logsumexp",
                                          "log_softmax", "norm", "logaddexp"} - \
        functions_in(source), f.formula
    rng = np.random.default_rng(6)
    sizes = {"n": 3, "k": 4}
    arrays = {k: rng.uniform(0.5, 1.5, size=tuple(sizes[d] for d in s))
              for k, s in shapes.items()}
    lowered = lower_source(source, shapes)
    written = Plan([lowered.root], default_rulebook(), accepted=lowered.declared)(arrays)[0]
    np.testing.assert_allclose(f(**arrays), written, rtol=1e-13)


# -- the pass -----------------------------------------------------------------------------------

def test_normal_form_is_a_fixed_point():
    rules = default_rulebook()
    root = lower_source(BCE_LINEAR + " + sum(log(exp(X @ w) + 1)) + sum(abs(w) ** 2)",
                        LINEAR).root
    (once,) = Rewriter(rules)([root])
    (twice,) = Rewriter(rules)([once])
    assert twice is once and once is not root
    fns = {n.fn for n in topological(once) if isinstance(n, (Map, Prim))}
    assert fns == {"softplus", "pow"}
    formula = einderiv.compile(BCE_LINEAR, LINEAR).formula
    assert einderiv.compile(formula, LINEAR).formula == formula  # parse back: nothing to redo


CONFLUENCE = [LOGISTIC, BCE_LINEAR, "sum(log(exp(x) / sum(exp(x))))",
              "sum(log(1 - 1 / (1 + exp(-x))))", "sum(sign(x) * abs(x) ** 2 * abs(x))",
              "sum(log(exp(x) / (1 + exp(x))) * log(1 + exp(x)))", "sum(log(softmax(X @ w)))"]


@pytest.mark.parametrize("source", CONFLUENCE)
def test_the_order_of_the_rules_does_not_change_results(source):
    shapes = {**LINEAR, "x": ("n",)}
    forward = einderiv.grad(source, "w" if "w" in source else "x", shapes).formula
    book = default_rulebook().copy()
    book.rewrites = dict(reversed(list(book.rewrites.items())))
    with using_rules(book):
        assert einderiv.grad(source, "w" if "w" in source else "x", shapes).formula == forward


def test_bound_names_follow_their_rewritten_nodes():
    f = einderiv.value_and_grad("h = log(1 + exp(W @ x))\nsum(h * h)", "W",
                                {"W": ("m", "n"), "x": ("n",)})
    assert "\nh = softplus(t0)\n" in f.formula and "log" not in functions_in(f.formula), \
        f.formula


def test_a_sum_rewritten_in_part():
    """The terms of a sum that form a pattern, scaled by one constant, are replaced; the others
    stay (derivatives add many parts in one sum)."""
    rules = default_rulebook()
    y, u, v = (Var(n, ("n",)) for n in "yuv")
    one = build.broadcast_to(build.const(1.0), ("n",))
    s = lambda a: build.elementwise("sigmoid", [a])  # noqa: E731
    # -2 * ((1 - y) * sigmoid(u) - y * sigmoid(-u)), the derivative of binary cross-entropy
    bce = [(-2.0, build.multiply(build.add([(1.0, one), (-1.0, y)]), s(u))),
           (2.0, build.multiply(y, s(build.scale(-1.0, u))))]
    node = build.add([(3.0, v), *bce])
    (done,) = Rewriter(rules)([node])
    expected = build.add([(3.0, v), (-2.0, build.add([(1.0, s(u)), (-1.0, y)]))])
    assert done is expected


def test_a_sum_nested_in_a_sum_rewritten_in_part():
    """Lowering keeps `a - b + c` as `(a - b) + c`: a pattern's terms may lie at both levels
    (the textbook stable binary cross-entropy on logits)."""
    shapes = {"z": ("n",), "y": ("n",), "a": ("n",)}
    for source in ("sum(relu(z) - z * y + log1p(exp(-abs(z))))",
                   "sum(relu(z) - a - z * y + log(1 + exp(-abs(z))))",
                   "sum(a + (maximum(z, 0) - z * y) + log1p(exp(-abs(z))))"):
        lowered = lower_source(source, shapes)
        f = einderiv.compile(source, shapes)
        assert functions_in(f.formula) == {"sum", "softplus"}, (source, f.formula)
        rng = np.random.default_rng(4)
        arrays = {k: rng.normal(size=4) for k in shapes}
        written = Plan([lowered.root], default_rulebook(), accepted=lowered.declared)(arrays)[0]
        np.testing.assert_allclose(f(**arrays), written, rtol=1e-13)
    # In the IR itself: (relu(z) - z * y) + softplus(-abs(z)) -> softplus(z) - z * y.
    z, y = Var("z", ("n",)), Var("y", ("n",))
    fn_ = lambda name, a: build.elementwise(name, [a])  # noqa: E731
    zy = build.multiply(z, y)
    inner = build.add([(1.0, fn_("relu", z)), (-1.0, zy)])
    node = build.add([(1.0, inner), (1.0, fn_("softplus", build.scale(-1.0, fn_("abs", z))))])
    (done,) = Rewriter(default_rulebook())([node])
    assert done is build.add([(-1.0, zy), (1.0, fn_("softplus", z))])


def _chain(steps: int):
    W, h = var("W", ("n", "n")), var("h0", ("n",))
    for _ in range(steps):
        h = fn.log(1 + fn.exp(W @ h) * 0.5)  # not a pattern: kept
        h = fn.log(1 + fn.exp(h - 2))        # a pattern at every step
    return fn.sum(h)


def _chain_value(W, h, steps: int):
    for _ in range(steps):
        h = softplus(np.log(1 + np.exp(W @ h) * 0.5) - 2)
    return np.sum(h)


def test_a_long_chain_at_the_default_recursion_limit():
    """Thousands of levels deep, rewritten without recursion; values unchanged."""
    assert sys.getrecursionlimit() == 1000
    steps, rules = 1000, default_rulebook()
    lowered = lower_source(_chain(steps), None)
    (root,) = Rewriter(rules)([lowered.root])
    fns = [n.fn for n in topological(root) if isinstance(n, Map)]
    assert fns.count("softplus") == steps and fns.count("log") == steps
    rng = np.random.default_rng(7)
    arrays = {"W": 0.3 * rng.normal(size=(3, 3)), "h0": rng.normal(size=3)}
    value = Plan([root], rules, accepted=lowered.declared)(arrays)[0]
    np.testing.assert_allclose(value, _chain_value(arrays["W"], arrays["h0"], steps),
                               rtol=1e-12)
    # And through the whole pipeline, derivatives included, at a smaller size.
    g = einderiv.value_and_grad(_chain(200), "W")
    value, dW = g(**arrays)
    np.testing.assert_allclose(value, _chain_value(arrays["W"], arrays["h0"], 200), rtol=1e-12)
    assert np.all(np.isfinite(dW)) and "sigmoid" in functions_in(g.formula)


# -- rule books of one's own --------------------------------------------------------------------

def test_a_rewrite_of_ones_own(tmp_path):
    book = default_rulebook().copy().add(parse_rules(
        "# exact, where exp(u) overflows\nrewrite sqrt(exp(u)) = exp(0.5 * u)\n", "mine.rules"))
    with using_rules(book):
        f = einderiv.compile("sqrt(exp(3 * x))", {"x": ("n",)})
        assert f.formula == "exp(1.5 * x)"
        assert f(x=np.array([400.0])) == np.exp(600.0)
    assert einderiv.compile("sqrt(exp(3 * x))", {"x": ("n",)}).formula == "sqrt(exp(3 * x))"


def test_a_later_rewrite_of_a_pattern_replaces_the_earlier():
    book = default_rulebook().copy()
    count = len(book.rewrites)
    book.add(parse_rules("rewrite abs(u) ** 2 = square(u)\n", "mine.rules"))
    assert len(book.rewrites) == count
    with using_rules(book):
        assert einderiv.compile("abs(x) ** 2", {"x": ("n",)}).formula == "square(x)"


def test_a_function_redefined_drops_the_rewrites_that_call_it():
    """A rewrite is an identity of the functions it was written for: a later file that
    replaces one (here by a definition, which a rewrite could not name) drops the rewrites
    that call it, and keeps the others."""
    book = default_rulebook().copy()
    book.add(parse_rules("def logcosh(x) = log(cosh(x))\n"
                         "elementwise softplus(x) = kernel.softplus\n"
                         "d softplus(x) / dx = sigmoid(x)\n", "mine.rules"))
    assert not any({"logcosh", "softplus"} & set(r.functions) for r in book.rewrites.values())
    with using_rules(book):
        x = np.array([-1.0, 0.5, 2.0])
        f = einderiv.compile("logcosh(x)", {"x": ("n",)})
        np.testing.assert_allclose(f(x=x), np.log(np.cosh(x)), rtol=1e-15)
        # (log(1 + u) = log1p(u) calls neither: it stays, and the softplus rules go)
        assert einderiv.compile("log(1 + exp(x))", {"x": ("n",)}).formula == "log1p(exp(x))"
        assert einderiv.compile("log(sum(exp(x)))", {"x": ("n",)}).formula == "logsumexp(x)"


def test_without_rewrites_programs_are_as_written():
    book = default_rulebook().copy()
    book.rewrites.clear()
    with using_rules(book):
        assert einderiv.grad(LOGISTIC, "w", LINEAR).formula == \
            "t0 = exp(-y * (X @ w))\n-(X.T @ (t0 / (1 + t0) * y))"


@pytest.mark.parametrize("text, why", [
    ("rewrite log(frob(u)) = u\n", "calls 'frob', which no rule table defines"),
    ("def sq(x) = x * x\nrewrite log(sq(u)) = u\n", "the definition 'sq'"),
])
def test_a_rewrite_that_cannot_be_used_is_a_rule_error(text, why):
    book = default_rulebook().copy().add(parse_rules(text, "mine.rules"))
    with using_rules(book), pytest.raises(einderiv.RuleError, match=why) as info:
        einderiv.compile("x", {"x": ("n",)})
    assert "mine.rules:" in str(info.value)


# -- random programs made of the patterns --------------------------------------------------------

PATTERNS = [
    "log(1 + exp({0}))", "log(exp({0}) + 1)", "log(sigmoid({0}))", "log(1 - sigmoid({0}))",
    "exp({0}) / (1 + exp({0}))", "1 / (1 + exp(-{0}))", "abs({0}) ** 2", "sign({0}) * abs({0})",
    "({1} * softplus(-{0}) + (1 - {1}) * softplus({0}))", "exp({0}) / sum(exp({0}))",
    "log(softmax({0}))", "log(sum(exp({0}))) * {1}",
]
OTHERS = ["tanh({0})", "({0} + {1})", "({0} * {1})", "({0} - 0.5 * {1})", "sin({0})"]


def random_program(rng, depth: int) -> str:
    if depth == 0:
        return str(rng.choice(["x", "y", "0.5 * x", "-y"]))
    table = PATTERNS if rng.uniform() < 0.6 else OTHERS
    template = str(rng.choice(table))
    return template.format(random_program(rng, depth - 1), random_program(rng, depth - 1))


@pytest.mark.parametrize("seed", range(25))
def test_random_programs_keep_their_values_and_gradients(seed):
    """Rewriting is exact: at ordinary points the rewritten program and its gradient agree with
    the program as written (the IR interpreter on the unrewritten IR, finite differences)."""
    rng = np.random.default_rng(seed)
    source = f"sum({random_program(rng, int(rng.integers(1, 4)))})"
    shapes = {"x": ("n",), "y": ("n",)}
    lowered = lower_source(source, shapes)
    written = Plan([lowered.root], default_rulebook(), accepted=lowered.declared)
    arrays = {"x": rng.uniform(-1.5, 1.5, size=4), "y": rng.uniform(0.2, 0.8, size=4)}
    vg = einderiv.value_and_grad(source, ["x", "y"], shapes)
    value, (dx, dy) = vg(**arrays)
    np.testing.assert_allclose(value, written(arrays)[0], rtol=1e-12, err_msg=source)
    for got, name in ((dx, "x"), (dy, "y")):
        numeric = finite_difference(lambda **a: written(a)[0], arrays, name)
        assert relative_error(got, numeric) < 1e-6, (source, name)


# -- log_softmax, the primitive -----------------------------------------------------------------

def test_log_softmax_kernel():
    from einderiv.evaluate.kernels import log_softmax
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, -np.inf, 1.0]])
    expected = x - logsumexp(x, 1)[:, None]
    np.testing.assert_allclose(log_softmax(x, axis=1), expected, rtol=1e-15)
    np.testing.assert_allclose(log_softmax(x[:1], axis=(0, 1)), x[:1] - logsumexp(x[:1], (0, 1)))
    assert log_softmax(np.zeros((2, 0)), axis=1).shape == (2, 0)
    f = einderiv.compile("log_softmax(x, axis=0)", {"x": ("n", "k")})
    np.testing.assert_allclose(f(x=x[:, :2] * 0.5), log_softmax_reference(0.5 * x[:, :2], 0))


# -- rewrites seen through a pick, a transpose, a mean ----------------------------------------

@pytest.mark.parametrize("source, shapes, becomes, reference", [
    ("log(softmax(x)[0])", {"x": ("n",)}, "log_softmax",
     lambda a: log_softmax_reference(a["x"], 0)[0]),
    ("-log(softmax(X, axis=0)[1])", {"X": ("n", "k")}, "log_softmax",
     lambda a: -log_softmax_reference(a["X"], 0)[1]),
    ("log(softmax(X, axis=0).T)", {"X": ("n", "k")}, "log_softmax",
     lambda a: log_softmax_reference(a["X"], 0).T),
    ("log(sigmoid(u)[2])", {"u": ("n",)}, "softplus", lambda a: -softplus(-a["u"][2])),
    ("log(1 + exp(X.T))", {"X": ("n", "k")}, "softplus", lambda a: softplus(a["X"].T)),
    # a quotient of a transpose: exp(X) / sum(exp(X), axis=1)[:, None], transposed
    ("exp(X).T / sum(exp(X), axis=1)", {"X": ("n", "k")}, "softmax",
     lambda a: np.exp(a["X"] - logsumexp(a["X"], 1)[:, None]).T),
    ("log(mean(exp(x)))", {"x": ("n",)}, "logsumexp",
     lambda a: logsumexp(a["x"], 0) - np.log(4)),
    ("log(mean(exp(X), axis=1))", {"X": ("n", "k")}, "logsumexp",
     lambda a: logsumexp(a["X"], 1) - np.log(3)),
    ("log(mean(exp(x)))", {"x": (3,)}, "logsumexp", lambda a: logsumexp(a["x"], 0) - np.log(3)),
    ("log(sum(exp(X), axis=0) / c)", {"X": ("n", "k"), "c": ("k",)}, "logsumexp",
     lambda a: logsumexp(a["X"], 0) - np.log(np.abs(a["c"]))),
    # the function inside the selection (exp(x[k]) as exp(x)[k]), a slice, a column and a row
    # of a softmax along the other axis (its sums broadcast back along the picked axis)
    ("exp(x[2]) / sum(exp(x))", {"x": ("n",)}, "softmax",
     lambda a: np.exp(a["x"][2] - logsumexp(a["x"], 0))),
    ("exp(x[1:]) / sum(exp(x))", {"x": ("n",)}, "softmax",
     lambda a: np.exp(a["x"][1:] - logsumexp(a["x"], 0))),
    ("log(softmax(x)[:-1])", {"x": ("n",)}, "log_softmax",
     lambda a: log_softmax_reference(a["x"], 0)[:-1]),
    ("exp(X[1]) / sum(exp(X), axis=0)", {"X": ("n", "k")}, "softmax",
     lambda a: np.exp(a["X"][1] - logsumexp(a["X"], 0))),
    ("exp(X)[:, 2] / sum(exp(X), axis=1)", {"X": ("n", "k")}, "softmax",
     lambda a: np.exp(a["X"][:, 2] - logsumexp(a["X"], 1))),
    ("log(sigmoid(X[1:, 0]))", {"X": ("n", "k")}, "softplus",
     lambda a: -softplus(-a["X"][1:, 0])),
    # a number times a pick: the pick of the number times the softmax, log(2) + log_softmax
    ("log(2 * softmax(x)[0])", {"x": ("n",)}, "log_softmax",
     lambda a: log_softmax_reference(a["x"], 0)[0] + np.log(2)),
], ids=lambda v: v if isinstance(v, str) and "(" in v else None)
def test_rewrites_seen_through_selections_and_means(source, shapes, becomes, reference):
    f = einderiv.compile(source, shapes)
    assert becomes in functions_in(f.formula) and "exp" not in functions_in(f.formula), f.formula
    rng = np.random.default_rng(7)
    sizes = {"n": 4, "k": 3}
    arrays = {k: 800 * rng.normal(size=tuple(sizes.get(d, d) for d in s))
              for k, s in shapes.items()}
    if "c" in arrays:
        arrays["c"] = np.abs(arrays["c"])
    with np.errstate(all="ignore"):
        got = f(**arrays)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference(arrays), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("source, shapes", [
    # the column sums broadcast along the rows of the transpose: not a softmax of X
    ("exp(X).T / sum(exp(X), axis=0)", {"X": ("n", "n")}),
    ("log(softmax(x)[0] + softmax(x)[1])", {"x": ("n",)}),
    ("exp(X).T / sum(exp(Y), axis=1)", {"X": ("n", "n"), "Y": ("n", "n")}),
    # the row sums picked at row 0, against a column: not a softmax
    ("exp(X[:, 0]) / sum(exp(X), axis=1)[0]", {"X": ("n", "n")}),
    ("exp(X[0]) / sum(exp(X), axis=1)", {"X": ("n", "n")}),
    # a pad is no selection: log(0) is -inf around it, not 0
    pytest.param("log(pad(softmax(x), (1, 1)))", {"x": ("n",)},
                 marks=pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")),
    ("exp(x[1:]) / sum(exp(x[:-1]))", {"x": ("n",)}),
])
def test_what_a_selection_does_not_hide_is_left_alone(source, shapes):
    f = einderiv.compile(source, shapes)
    assert not functions_in(f.formula) & {"softmax", "log_softmax", "logsumexp"} - \
        functions_in(source), f.formula
    rng = np.random.default_rng(8)
    arrays = {k: rng.uniform(0.5, 1.5, size=(3,) * len(s)) for k, s in shapes.items()}
    lowered = lower_source(source, shapes)
    written = Plan([lowered.root], default_rulebook(), accepted=lowered.declared)(arrays)[0]
    np.testing.assert_allclose(f(**arrays), written, rtol=1e-13)


def test_cross_entropy_by_class_index_gradient_at_a_gap_of_30():
    """-log(softmax(x)[k]) is -log_softmax(x)[k]: its gradient softmax(x) - e_k is exact where
    the class is right and confident (1 - softmax(x)[k] = e^-30, the sum of the others)."""
    g = einderiv.grad("-log(softmax(x)[1])", "x", {"x": ("n",)})
    x = np.array([0.0, 30.0, -30.0])
    e = np.exp(x - 30)
    others = (e[0] + e[2]) / e.sum()
    np.testing.assert_allclose(g(x=x), [e[0] / e.sum(), -others, e[2] / e.sum()], rtol=1e-14)


# -- the softmax family's derivatives: split on the argmax, O(n) -------------------------------

SOFTMAX_FAMILY = [
    ("c @ softmax(x)", "x", {"c": ("n",), "x": ("n",)}),
    ("-(y @ log(softmax(x)))", "x", {"x": ("n",), "y": ("n",)}),
    ("sum(C * log_softmax(X, axis=0))", "X", {"C": ("n", "k"), "X": ("n", "k")}),
    ("logsumexp(x)", "x", {"x": ("n",)}),
    ("sum(C * softmax(X, axis=1))", "X", {"C": ("k", "n"), "X": ("k", "n")}),
]


@pytest.mark.parametrize("source, wrt, shapes", SOFTMAX_FAMILY,
                         ids=[s for s, _, _ in SOFTMAX_FAMILY])
def test_softmax_family_gradients_hold_no_n_by_n_matrix(source, wrt, shapes, peak_bytes):
    """The Jacobians of softmax and log_softmax are Kronecker deltas and outer products, each
    contracted with the adjoint on its own: the gradient of a function of n logits allocates
    O(n), never the n by n Jacobian (800 MB at n = 10,000)."""
    g = einderiv.grad(source, wrt, shapes)
    assert not {"diag", "outer", "eye", "einsum"} & functions_in(g.formula), g.formula
    n = 10_000
    rng = np.random.default_rng(9)
    arrays = {k: rng.normal(size=tuple(n if d == "n" else 2 for d in s))
              for k, s in shapes.items()}
    size = arrays[wrt].nbytes
    assert peak_bytes(lambda: g(**arrays)) < 40 * size


def test_softmax_jacobian_rules_are_exact_at_a_lead_of_30():
    """The Hessian of logsumexp is diag(s) - outer(s, s), whose largest entry s_m (1 - s_m)
    the textbook formula cancels (3 digits left): here each entry is one term."""
    H = einderiv.hessian("logsumexp(x)", "x", {"x": ("n",)})
    x = np.array([0.0, -30.0, -60.0])
    e = np.exp(x)
    s = e / e.sum()
    want = np.diag(s * (1 - s)) - np.outer(s, s) + np.diag(s * s)
    want[0, 0] = s[0] * (e[1] + e[2]) / e.sum()
    np.testing.assert_allclose(H(x=x), want, rtol=1e-14, atol=0)


def test_argmax_onehot_and_complement_kernels():
    from einderiv.evaluate.kernels import argmax_onehot, complement, softmax
    x = np.array([[0.0, 30.0, -30.0], [1.0, 1.0, 0.0], [-np.inf, -np.inf, -np.inf]])
    np.testing.assert_array_equal(argmax_onehot(x, axis=1), [[0, 1, 0], [1, 0, 0], [1, 0, 0]])
    s = softmax(x, axis=1)
    for q in (complement(s, axis=1), complement(s.T, axis=0).T, complement(s, axis=(1,))):
        e = np.exp([-30.0, -60.0])  # the others' softmax, relative to the largest entry's
        # at the largest entry, where 1 - softmax rounds to 9.348e-14 (3 digits): 9.3576e-14
        np.testing.assert_allclose(q[0, 1], e.sum() / (1 + e.sum()), rtol=1e-15)
        np.testing.assert_allclose(q[0, [0, 2]], 1 - e / (1 + e.sum()), rtol=1e-15)
        np.testing.assert_allclose(q[1], 1 - np.exp([1.0, 1, 0]) / (2 * np.e + 1), rtol=1e-15)
        np.testing.assert_array_equal(q[2], [1.0, 1.0, 1.0])  # softmax is 0 there: 1 - 0
    T = np.random.default_rng(10).normal(size=(2, 3, 4)).astype(np.float32)
    p = argmax_onehot(T, axis=(0, 2))
    assert p.dtype == np.float32 and np.all(p.sum(axis=(0, 2)) == 1)
    assert np.all(np.max(np.where(p == 1, T, -np.inf), axis=(0, 2)) == T.max(axis=(0, 2)))
    q = complement(softmax(T, axis=(0, 2)), axis=(0, 2))
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=(0, 2)), 7.0, rtol=1e-6)
    assert argmax_onehot(np.zeros((2, 0)), axis=1).shape == (2, 0)
    assert complement(np.zeros((2, 0)), axis=1).shape == (2, 0)


@pytest.mark.parametrize("text, shift", [
    ("log(sum(3 * exp(X), axis=1))", np.log(3)),
    ("log(sum(exp(X) * 0.5, axis=1))", np.log(0.5)),
    ("log(sum(exp(X) / size(m), axis=1))", -np.log(2)),
    ("log(sum(exp(X) / 4, axis=-1))", -np.log(4)),
])
def test_a_scalar_inside_the_sum_of_a_logsumexp(text, shift):
    # The builders keep a constant where it is written (inside the sum); the rewriter sees it
    # outside too, where logsumexp's pattern has it: exact at 800, where exp overflows.
    f = einderiv.compile(text, {"X": ("n", "m")})
    assert "logsumexp(X, axis=1)" in f.formula and "exp(" not in f.formula.replace("sumexp(", "")
    X = np.array([[800.0, 0.0], [1.0, 2.0]])
    expected = np.logaddexp(X[:, 0], X[:, 1]) + shift
    np.testing.assert_allclose(f(X=X), expected, rtol=1e-14)
    g = einderiv.grad(f"sum({text})", "X", {"X": ("n", "m")})
    e = np.exp(X - X.max(axis=1, keepdims=True))
    np.testing.assert_allclose(g(X=X), e / e.sum(axis=1, keepdims=True), rtol=1e-14)


def test_a_select_inside_a_select_on_its_condition_is_one_select():
    # The derivative of a kink through another one (abs per step of a loss) made
    # where(c, where(c, a, 0), 0); the inner select's other branch is never taken.
    shapes = {"x": ("n",), "y": ("n",)}
    x, y = np.array([-1.0, 0.0, 2.0]), np.array([5.0, 6.0, 7.0])
    for text, expected in (("where(x > 0, where(x > 0, y, 2), 3)", [3.0, 3.0, 7.0]),
                           ("where(x > 0, 1, where(x > 0, y, 3))", [3.0, 3.0, 1.0])):
        f = einderiv.compile(text, shapes)
        assert f.formula.count("where(") == 1, f.formula
        np.testing.assert_array_equal(f(x=x, y=y), expected)


@pytest.mark.parametrize("text", ["sigmoid(u) - sigmoid(u) ** 2", "exp(-u) / (1 + exp(-u)) ** 2",
                                  "exp(u) / (1 + exp(u)) ** 2", "exp(-u) * sigmoid(u) ** 2",
                                  "exp(u) * sigmoid(-u) ** 2"])
def test_textbook_logistic_densities_are_dsigmoid(text):
    """The logistic density written out cancels (s - s ** 2 is 0 from u = 37 on) or is
    inf / inf and 0 * inf past |u| = 710 (nan, where it is e^-|u|): each is dsigmoid."""
    mp = pytest.importorskip("mpmath")
    f = einderiv.compile("u: [n]; " + text)
    assert f.formula in ("dsigmoid(u)", "dsigmoid(-u)"), f.formula
    u = np.array([-800.0, -720.0, -40.0, -1.0, 0.0, 1e-8, 37.0, 40.0, 720.0, 800.0])
    got = f(u=u)
    with mp.workdps(40):
        want = np.array([float(mp.sech(mp.mpf(float(t)) / 2) ** 2 / 4) for t in u])
    tiny = np.finfo(float).tiny
    assert np.all(np.abs(got - want) <= 4e-16 * np.maximum(np.abs(want), tiny)), (got, want)


# --- a loop of rewrites is an error, never a hang (simplify/rewrite.py `_count_rewrite`) ---------

@pytest.mark.parametrize("kind", ["cycle", "growth"])
def test_rewrites_that_do_not_end_are_a_rule_error(kind, monkeypatch):
    from einderiv.ir import build
    from einderiv.ir.nodes import Map
    from einderiv.rulebook import default_rulebook
    from einderiv.simplify import rewrite

    x = var("x", ("n",))
    node = lower_source(fn.exp(x), {}, default_rulebook()).root
    (arg,) = node.args

    def looping(self, n):  # exp(x) -> sin(x) -> exp(x) ..., or ever deeper negations
        if not isinstance(n, Map):
            return None
        if kind == "cycle":
            return Map("sin" if n.fn == "exp" else "exp", *n.args)
        return Map(n.fn, build.contract((0,), [(build.const(-1.0), ()), (n.args[0], (0,))]))
    monkeypatch.setattr(rewrite.Rewriter, "_apply", looping)
    monkeypatch.setattr(rewrite, "MIN_REWRITES", 500)
    with pytest.raises(einderiv.RuleError, match="do not end"):
        rewrite.Rewriter(default_rulebook())([node])
    assert arg is not None
