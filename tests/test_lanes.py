"""Batching across unrolled steps (einderiv/vectorize/lanes.py): what is batched, what is not.

Values are checked by conftest.py for every result here (the generated code against the IR
interpreter, which runs the unbatched graph, and the formula parsed back); these tests check
the structure of the batched program and compare with central finite differences.
"""
import re

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error
from einderiv.models import lstm_loss, rnn_loss
from einderiv.vectorize.lanes import MIN_LANES


def _calls(formula: str, name: str) -> int:
    return len(re.findall(rf"\b{name}\(", formula))


def _model_inputs(weights, steps=5, V=4, H=3, seed=1) -> dict:
    shapes = {"W": (H, H), "U": (H, V), "b": (H,), "Wy": (V, H), "by": (V,)}
    rng = np.random.default_rng(seed)
    inputs = {w: rng.normal(size=shapes[w] if w in shapes else shapes[w[0]]) for w in weights}
    X = np.eye(V)[rng.integers(0, V, size=steps)]
    inputs["X"], inputs["Y"] = X, np.roll(X, -1, axis=0)
    return inputs


@pytest.mark.parametrize("steps", [3, 8, 16])
def test_rnn_output_layer_and_input_projection_run_once(steps):
    loss, weights = rnn_loss(steps)
    g = einderiv.grad(loss, weights)
    # One softmax over all steps, one input projection.
    assert _calls(g.formula, "log_softmax_vjp") == 1
    assert g.formula.count("@ U.T") == 1
    # Per step, only the recurrence is left: a forward and a backward product with W.
    assert g.formula.count("W @") == steps - 1
    assert g.formula.count("W.T @") == steps - 1


@pytest.mark.parametrize("steps", [3, 8, 16])
def test_rnn_tanh_derivative_runs_once(steps):
    # tanh's derivative is sech2(z_t) of the pre-activations, which the recurrence computes
    # one by one: they are stacked for one sech2 call on all steps (a named function pays for
    # the copy; arithmetic alone does not).
    loss, weights = rnn_loss(steps)
    assert _calls(einderiv.grad(loss, weights).formula, "sech2") == 1


def test_rnn_program_grows_by_a_fixed_amount_per_step():
    lines = {}
    for steps in (8, 16, 32):
        loss, weights = rnn_loss(steps)
        lines[steps] = len(einderiv.grad(loss, weights).formula.splitlines())
    assert lines[32] - lines[16] == 2 * (lines[16] - lines[8])
    assert lines[32] - lines[16] <= 16 * 4


def test_lstm_batches_its_input_projections_and_output_layer():
    loss, weights = lstm_loss(6)
    g = einderiv.grad(loss, weights)
    assert _calls(g.formula, "log_softmax_vjp") == 1
    # every step's input projection of all four gates: one product (projections.py)
    assert g.formula.count("reshape(X[:6] @ reshape(stack(Uc, Uf, Ui, Uo), (4 * H, V)).T") == 1
    for gate in "fioc":
        assert g.formula.count(f"@ U{gate}.T") == 0


def test_a_bias_gradient_sums_the_stack_its_weight_gradient_builds():
    # db = sum_t a_t beside dW = sum_t outer(a_t, h_t) = stack(a).T @ stack(h): the sum is
    # sum(stack(a), axis=0) over the same stack, built once, not T - 1 additions (and T
    # scalings by sigmoid's 0.25)
    steps = 8
    loss, weights = lstm_loss(steps)
    g = einderiv.grad(loss, weights)
    returned = [line for line in g.source.splitlines() if line.strip().startswith("return")][0]
    assert returned.count("+") == 0, returned
    stacks = re.findall(r"_kernels\.array_sum\((t\d+), _xp, axis=0\)", returned)
    assert len(stacks) >= 4  # the four gates' biases (and the output layer's)
    for name in stacks:
        assert f"_xp.dot({name}.T," in returned  # the same stack as a weight gradient's


@pytest.mark.parametrize("builder", [rnn_loss, lstm_loss])
def test_batched_unrolled_gradients_match_finite_differences(builder):
    loss, weights = builder(5)
    g = einderiv.grad(loss, weights)
    inputs = _model_inputs(weights, seed=1)
    f = einderiv.compile(loss)
    for name, value in zip(weights, g(**inputs)):
        assert relative_error(value, finite_difference(f, inputs, name)) < 1e-6, name


def test_steps_of_an_expression_become_one_call():
    g = einderiv.grad("sum(tanh(W @ x[0]) + tanh(W @ x[1]) + tanh(W @ x[2]))", "W",
                      {"x": ("n", "m"), "W": ("m", "m")})
    # the gradient needs tanh's derivative only, sech2, of all steps in one call
    assert _calls(g.formula, "sech2") == 1
    assert "x[:3]" in g.formula


def test_fewer_steps_than_the_minimum_are_left_alone():
    terms = " + ".join(f"tanh(W @ x[{k}])" for k in range(MIN_LANES - 1))
    g = einderiv.grad(f"sum({terms})", "W", {"x": ("n", "m"), "W": ("m", "m")})
    assert _calls(g.formula, "sech2") == MIN_LANES - 1


def test_a_recurrence_is_not_batched():
    # Each step reads the previous one: batching the tanh calls would make a cycle. (The last
    # step's tanh is not computed: the gradient of sum(h) needs only its derivative, sech2.)
    h = "x[0]"
    for k in range(1, 5):
        h = f"tanh(W @ {h} + x[{k}])"
    g = einderiv.grad(f"sum({h})", "W", {"x": ("n", "m"), "W": ("m", "m")})
    assert _calls(g.formula, "tanh") == 3


def test_elementwise_work_alone_does_not_pay_for_a_stack():
    # `1 - s` for every gate of every step has one template, but the gates are computed one
    # by one in the recurrence: stacking them only to subtract would copy for nothing. (The
    # gates' derivatives, dsigmoid(z), are one call on the stacked pre-activations.)
    loss, weights = lstm_loss(6)
    formula = einderiv.grad(loss, weights).formula
    assert "1 - stack(" not in formula
    assert "* stack(" not in formula


@pytest.mark.parametrize("builder", [rnn_loss, lstm_loss])
def test_every_valid_group_batched_stays_correct(builder, monkeypatch):
    """Without the profitability rule, many more groups are batched (gates of all steps
    mixed, stacks of stacks); the generated code must still match the unbatched IR, and its
    formula must parse back and batch again without a cycle (conftest.py checks both)."""
    from einderiv.vectorize import lanes
    monkeypatch.setattr(lanes, "STACK_ONLY_FOR_PRODUCTS", False)
    monkeypatch.setattr(lanes, "STRICT", True)
    loss, weights = builder(5)
    g = einderiv.grad(loss, weights)
    inputs = _model_inputs(weights, seed=2)
    assert "stack(" in g.formula.split("dW")[0]
    for value, expected in zip(g(**inputs), g.evaluate_ir(**inputs)):
        np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    # Its formula, parsed back, batches again: stacks of stacks, some already graph nodes.
    lines = g.formula.splitlines()
    declared = {n: tuple(s) for n, s in g.program.declarations.items()}
    for end in range(1, len(lines)):
        einderiv.compile("\n".join(lines[:end]), declared).source


@pytest.mark.parametrize("loss_form", ["squared", "abs", "scaled"])
def test_per_step_products_of_any_loss_form_are_one_product(loss_form):
    # sum_t outer(d_t, h_{t-1}) over the steps is one `D.T @ H`, whatever the per-step loss:
    # a squared loss leaves its 2 on one step's term only (the others carry it inside d_t),
    # and the terms' coefficients then differ; the odd one is added back on its own (issue 13).
    from einderiv import fn, var
    steps = 16
    W, U = var("W", ("H", "H")), var("U", ("H", "V"))
    X, Y = var("X", (steps, "V")), var("Y", (steps, "H"))
    h = loss = None
    for t in range(steps):
        z = U @ X[t]
        h = fn.tanh(z if h is None else W @ h + z)
        step = {"squared": fn.sum((h - Y[t]) ** 2), "abs": fn.sum(fn.abs(h - Y[t])),
                "scaled": 3 * fn.sum(h * Y[t])}[loss_form]
        loss = step if loss is None else loss + step
    g = einderiv.grad(loss, "W")
    # At most the first step and one odd coefficient stay outer products of their own.
    assert _calls(g.formula, "outer") <= 2, g.formula
    rng = np.random.default_rng(3)
    arrays = {"W": rng.normal(size=(4, 4)) / 3, "U": rng.normal(size=(4, 3)),
              "X": rng.normal(size=(steps, 3)), "Y": rng.normal(size=(steps, 4))}
    f = einderiv.compile(loss, {})
    expected = finite_difference(f, arrays, "W")
    assert relative_error(g(**arrays), expected) < 1e-6


@pytest.mark.parametrize("steps", [4, 12])
def test_steps_read_backwards_are_one_reversed_window(steps):
    # `log(x[2t]) * x[2(T-1-t)+1]`: step t's second pick is the batch of first picks read from
    # the other end: one reversed window (`[::-1]`), where it was a slice per step stacked
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(steps):
        term = einderiv.fn.log(x[2 * t]) * x[2 * (steps - 1 - t) + 1]
        total = term if total is None else total + term
    g = einderiv.grad(total, x)
    assert "[::-1]" in g.formula, g.formula
    assert not re.search(r"concatenate\(\(t\d+\[\d+:\d+\], t\d+\[\d+:\d+\]", g.formula), g.formula
    v = np.linspace(0.5, 1.5, 2 * steps + 3)
    want = finite_difference(einderiv.compile(total), {"x": v}, "x")
    assert relative_error(g(x=v), want) < 1e-6
