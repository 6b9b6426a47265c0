"""Rule tables: every derivative line checked against finite differences, and the rule language."""
import numpy as np
import pytest

import einderiv
from einderiv.rulebook import RuleBook, default_rulebook, rules_dir
from einderiv.rulebook.table import parse_rules
from einderiv.rulebook.verify import TOLERANCE, check_rule, check_rules

DEFAULT = default_rulebook()
RULES = sorted(DEFAULT.derivatives.values(), key=lambda r: r.origin)


@pytest.mark.parametrize("rule", RULES, ids=[r.origin.rsplit("/", 1)[-1] for r in RULES])
def test_rule_matches_finite_differences(rule):
    result = check_rule(rule, DEFAULT)
    assert result.message == ""
    assert result.error < TOLERANCE, f"{rule.origin}: {rule} off by {result.error:.2e}"


def test_every_function_has_its_derivatives():
    for f in DEFAULT.functions.values():
        if f.kind == "def":
            continue
        for position in range(f.arity):
            assert DEFAULT.derivative(f.name, position) is not None, f"{f.origin}: {f.name}"


def test_every_function_of_the_spec_is_known():
    spec = ("exp log log1p expm1 sqrt square abs sign sin cos tan sinh cosh tanh arctan sigmoid "
            "relu softplus maximum minimum logsumexp softmax det logdet inv norm").split()
    from einderiv.lower.calls import BUILTINS
    assert {"sum", "mean", "dot", "outer", "tr", "trace", "diag", "eye", "einsum"} <= set(BUILTINS)
    missing = [name for name in spec if DEFAULT.get(name) is None]
    assert not missing


def test_rules_ship_with_the_package():
    assert sorted(p.name for p in rules_dir().glob("*.rules")) == [
        "definitions.rules", "elementwise.rules", "rewrites.rules", "tensor.rules"]


@pytest.mark.parametrize("wrong", [
    "d tanh(x) / dx = 1 + tanh(x) ** 2",          # a sign
    "d maximum(a, b) / db = step(a - b)",         # the wrong branch
    "d inv(X)[i,j] / dX[k,l] = -inv(X)[i,l] * inv(X)[k,j]",  # swapped indices
    "d logsumexp(x) / dx[j] = exp(x[j])",         # forgot the normalization
])
def test_a_wrong_rule_is_caught(wrong):
    book = DEFAULT.copy().add(parse_rules(wrong + "\n", "planted.rules"))
    (rule,) = [r for r in book.derivatives.values() if r.origin == "planted.rules:1"]
    result = check_rule(rule, book)
    assert not result.ok, f"{wrong} passed with error {result.error}"


def test_check_rules_filters_by_file(tmp_path):
    path = tmp_path / "mine.rules"
    path.write_text("elementwise cube(x) = kernel.step\nd cube(x) / dx = 3 * x ** 2\n")
    book = DEFAULT.copy().load(path)
    (result,) = check_rules(book, [path])
    assert result.rule.function == "cube" and not result.ok  # the implementation is wrong


@pytest.mark.parametrize("text, line, column", [
    ("elementwise foo(x) == xp.exp\n", 1, 21),
    ("d exp(x) / dy = exp(x)\n", 1, None),
    ("\n\ntensor inv(X) -> sideways = xp.linalg.inv\n", 3, None),
    ("def f(x) x\n", 1, 10),
])
def test_malformed_rule_file_names_file_line_and_column(tmp_path, text, line, column):
    path = tmp_path / "bad.rules"
    path.write_text(text)
    with pytest.raises(einderiv.RuleError) as info:
        RuleBook().load(path)
    message = str(info.value)
    assert f"bad.rules:{line}" in message
    if column is not None:
        assert f"bad.rules:{line}:{column}" in message


def test_a_rule_that_does_not_parse_is_a_rule_error():
    book = DEFAULT.copy().add(parse_rules("d exp(x) / dx = exp(x +)\n", "broken.rules"))
    (rule,) = [r for r in book.derivatives.values() if r.origin == "broken.rules:1"]
    result = check_rule(rule, book)
    assert not result.ok and "broken.rules:1" in result.message



def test_a_new_function_from_a_rule_file_alone(tmp_path, restore_default_rules):
    path = tmp_path / "cuberoot.rules"
    path.write_text("# the real cube root (the shipped tables' cbrt, by a name they lack)\n"
                    "elementwise cuberoot(x) = xp.cbrt\n"
                    "d cuberoot(x) / dx = 1 / (3 * cuberoot(x) ** 2)\n")
    einderiv.load_rules(path)
    x = np.array([0.5, 1.0, 8.0])
    g = einderiv.grad("sum(cuberoot(x))", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), 1 / (3 * np.cbrt(x) ** 2), rtol=1e-12)
    (result,) = check_rules(default_rulebook(), [path])
    assert result.ok


def test_an_axis_primitive_gets_the_languages_default_axis(tmp_path, restore_default_rules):
    # scipy's softmax works over every entry when called without an axis; the language's
    # default for a `same` primitive is the last axis, so the generated code must pass it.
    pytest.importorskip("scipy")
    path = tmp_path / "ssoftmax.rules"
    path.write_text("tensor ssoftmax(x; axis) -> same = scipy.special:softmax\n"
                    "d ssoftmax(x)[i] / dx[j] = ssoftmax(x)[i] * delta[i,j]"
                    " - ssoftmax(x)[i] * ssoftmax(x)[j]\n")
    einderiv.load_rules(path, allow_imports=True)
    A = np.random.default_rng(0).normal(size=(3, 4))
    rows = np.exp(A) / np.exp(A).sum(axis=1, keepdims=True)
    f = einderiv.compile("ssoftmax(A)", {"A": ("m", "n")})
    np.testing.assert_allclose(f(A=A), rows, rtol=1e-12)
    np.testing.assert_allclose(f.evaluate_ir(A=A), rows, rtol=1e-12)
    assert all(r.ok for r in check_rules(default_rulebook(), [path]))


def test_definitions_expand(restore_default_rules, tmp_path):
    path = tmp_path / "defs.rules"
    path.write_text("def logcosh(x) = log(cosh(x))\n")
    einderiv.load_rules(path)
    x = np.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(einderiv.compile("logcosh(x)", {"x": ("n",)})(x=x),
                               np.log(np.cosh(x)))
    np.testing.assert_allclose(einderiv.grad("sum(logcosh(x))", "x", {"x": ("n",)})(x=x),
                               np.tanh(x), rtol=1e-12)


def test_a_recursive_definition_is_a_rule_error(restore_default_rules, tmp_path):
    path = tmp_path / "loop.rules"
    path.write_text("def loop(x) = loop(x) + 1\n")
    einderiv.load_rules(path)
    with pytest.raises(einderiv.RuleError, match="without end"):
        einderiv.compile("loop(x)", {"x": ()})
