"""An elementwise rule is lowered once and instantiated by substitution (issue 11): the result
must be the very node that lowering the rule with the real arguments gives."""
from einderiv.derive import partials
from einderiv.ir import build
from einderiv.ir.nodes import Const, Map, Var
from einderiv.rulebook import default_rulebook


def _cases():
    x, y = Var("x", ("n",)), Var("y", ("n",))
    prod = build.multiply(x, y)  # a product: inlined into the rule's own products
    quot = Map("div", x, y)  # a reciprocal: cancels against the rule's `* y`
    return [Map("tanh", x), Map("tanh", prod), Map("tanh", quot), Map("exp", prod),
            Map("pow", x, Const(2.0)), Map("pow", prod, Const(3.0)), Map("pow", x, y),
            Map("div", prod, y), Map("div", Const(1.0), quot), Map("log", quot)]


def test_template_equals_direct_lowering():
    rules = default_rulebook()
    for node in _cases():
        for pos in range(len(node.args)):
            if not node.args[pos].children() and not isinstance(node.args[pos], Var):
                continue
            rule = rules.derivative(node.fn, pos)
            direct = partials._lower_rule(node, rule, rules, node.args)
            assert partials.elementwise_partial(node, pos, rules) is direct, (node, pos)


def test_rule_body_lowered_once_per_signature(monkeypatch):
    rules = default_rulebook()
    calls = []
    real = partials._lower_rule
    monkeypatch.setattr(partials, "_lower_rule", lambda *a: calls.append(a) or real(*a))
    partials._TEMPLATES.pop(rules, None)
    for i in range(50):
        partials.elementwise_partial(Map("tanh", Var(f"v{i}", ("m",))), 0, rules)
    assert len(calls) == 1


def test_template_cache_is_bounded(monkeypatch):
    """`x ** c` for many constants c is one template each; the cache keeps the newest only,
    and an evicted template is lowered again to the same node."""
    rules = default_rulebook()
    monkeypatch.setattr(partials, "MAX_TEMPLATES", 8)
    partials._TEMPLATES.pop(rules, None)
    x = Var("x", ("n",))
    first = partials.elementwise_partial(Map("pow", x, Const(0.5)), 0, rules)
    for i in range(40):
        partials.elementwise_partial(Map("pow", x, Const(1.0 + i)), 0, rules)
    assert len(partials._TEMPLATES[rules]) <= 8
    assert partials.elementwise_partial(Map("pow", x, Const(0.5)), 0, rules) is first
