"""Products that share an operand, fused (einderiv/vectorize/fuse.py): an LSTM's per-gate
products `W_g @ h` of every step are one product of the stacked weights.

conftest.py checks every result here against the IR interpreter (which runs the unfused graph)
and its formula parsed back; these tests check what is fused and compare with finite
differences.
"""
import os
import re

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.check import finite_difference, relative_error
from einderiv.models import lstm_loss
from einderiv.vectorize.fuse import MIN_STEPS
from einderiv.vectorize.lanes import MIN_LANES

# Nine steps, beside four, only with EINDERIV_SLOW=1 (the suite's time).
NINE = pytest.param(9, marks=pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                                               reason="nine steps: set EINDERIV_SLOW=1"))


def _lstm_arrays(steps, V=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for g in "fioc":
        arrays["W" + g] = rng.normal(size=(H, H)) / 2
        arrays["U" + g] = rng.normal(size=(H, V)) / 2
        arrays["b" + g] = rng.normal(size=H) / 2
    arrays["Wy"], arrays["by"] = rng.normal(size=(V, H)), rng.normal(size=V)
    X = np.eye(V)[rng.integers(0, V, size=steps)] if V else np.zeros((steps, 0))
    arrays["X"], arrays["Y"] = X, np.roll(X, -1, axis=0)
    return arrays


@pytest.mark.parametrize("steps", [4, NINE])
def test_lstm_gate_products_are_one_product_per_step(steps):
    loss, weights = lstm_loss(steps)
    g = einderiv.grad(loss, weights)
    formula = g.formula
    # The weights are stacked once, and no step multiplies by one gate's weight alone.
    assert formula.count("stack(Wc, Wf, Wi, Wo)") == 1, formula
    assert not re.search(r"\bW[fioc] @", formula), formula
    arrays = _lstm_arrays(steps)
    f = einderiv.compile(loss, {})
    for name, value in zip(weights, g(**arrays)):
        if name in ("Wf", "Wo", "Wc"):
            assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6


def test_products_done_once_are_not_fused():
    # Two weights times one vector, once: stacking the weights costs more than the call saved.
    shapes = {"A": ("n", "n"), "B": ("n", "n"), "x": ("n",)}
    f = einderiv.compile("tanh(A @ x) * tanh(B @ x)", shapes)
    assert "stack(" not in f.formula
    assert MIN_STEPS > 1


def test_matrix_products_of_a_batch_are_fused_too():
    # A batch of states H times each gate's weight, transposed (X @ W.T, as a framework
    # writes it), over several steps: one product of the stacked weights per step.
    steps = 4
    Wa, Wb, Wc = (var(n, ("h", "h")) for n in ("Wa", "Wb", "Wc"))
    H = var("H0", ("b", "h"))
    for _ in range(steps):
        H = fn.tanh(H @ Wa.T) * fn.sigmoid(H @ Wb.T) + fn.tanh(H @ Wc.T)
    loss = fn.sum(H * H)
    g = einderiv.grad(loss, ["Wa", "Wb", "Wc"])
    assert g.formula.count("stack(Wa, Wb, Wc)") == 1, g.formula
    rng = np.random.default_rng(2)
    arrays = {"H0": rng.normal(size=(3, 4)), **{n: rng.normal(size=(4, 4)) / 2
                                                for n in ("Wa", "Wb", "Wc")}}
    f = einderiv.compile(loss, {})
    for name, value in zip(["Wa", "Wb", "Wc"], g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6


@pytest.mark.parametrize("steps", [4, NINE])
def test_lstm_backward_sums_are_one_product_of_the_stacked_weights_per_step(steps):
    """Each step's `Wc.T @ a_c + Wf.T @ a_f + ...` is one matrix product of the stacked
    adjoints with the weights' stack, the forward's own (sigmoid's derivative `dsigmoid` has
    no constant of its own to scale rows of a second stack by)."""
    loss, weights = lstm_loss(steps)
    g = einderiv.grad(loss, weights)
    formula = g.formula
    assert not re.search(r"\bW[fioc]\.T @", formula), formula
    assert formula.count("stack(Wc, Wf, Wi, Wo)") == 1 and "0.25" not in formula, formula
    # one per step but the first, and the input projections' weights and biases (one product
    # of all gates, projections.py)
    assert formula.count("reshape(stack(Uc, Uf, Ui, Uo)") == 1, formula
    assert formula.count("reshape(stack(bc, bf, bi, bo)") == 1, formula
    assert formula.count("reshape(stack(") == steps - 1 + 2, formula
    assert "einsum" not in formula
    arrays = _lstm_arrays(steps)
    f = einderiv.compile(loss, {})
    for name, value in zip(weights, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name


def test_backward_sums_keep_each_weights_constant_on_its_rows():
    """A constant of a gate (`tanh(3 * (Wa @ h) + x)`) and of the loss (`h ** 2`) floats to
    the weights in the step's one product: `stack(6 * Wa, 2 * Wb)` holds each on its rows."""
    steps = 4
    Wa, Wb = (var(n, ("h", "h")) for n in ("Wa", "Wb"))
    X = var("X", ("t", "h"))
    h, loss = fn.tanh(X[0]), 0
    for t in range(1, steps):
        h = fn.tanh(3 * (Wa @ h) + X[t]) * fn.sigmoid(Wb @ h + X[t])
        loss = loss + fn.sum(h ** 2)
    g = einderiv.grad(loss, ["Wa", "Wb"])
    formula = g.formula
    assert "reshape(stack(6 * Wa, 2 * Wb), (2 * h, h))" in formula, formula
    rng = np.random.default_rng(5)
    arrays = {"X": rng.normal(size=(steps, 3)),
              **{n: rng.normal(size=(3, 3)) / 2 for n in ("Wa", "Wb")}}
    f = einderiv.compile(loss, {})
    for name, value in zip(["Wa", "Wb"], g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name


def test_backward_sums_of_a_batch_are_not_fused():
    """A batch of adjoints (`A_g @ W_g`, A_g [b, h]) keeps its products: with the stack's axis
    between the batch and the summed axis, one product would be an einsum (or a copy)."""
    steps = 4
    Wa, Wb, Wc = (var(n, ("h", "h")) for n in ("Wa", "Wb", "Wc"))
    X = var("X", ("b", "h"))
    H, loss = X, 0
    for _ in range(steps):
        H = fn.tanh(H @ Wa.T) * fn.tanh(H @ Wb.T) + fn.tanh(H @ Wc.T)
        loss = loss + fn.sum(H ** 2)
    g = einderiv.grad(loss, ["Wa", "Wb", "Wc", "X"])
    formula = g.formula
    assert formula.count("stack(Wa, Wb, Wc)") == 1, formula  # the forward is fused
    assert "einsum" not in formula and "reshape" not in formula, formula
    rng = np.random.default_rng(3)
    arrays = {"X": rng.normal(size=(3, 4)),
              **{n: rng.normal(size=(4, 4)) / 2 for n in ("Wa", "Wb", "Wc")}}
    f = einderiv.compile(loss, {})
    for name, value in zip(["Wa", "Wb", "Wc", "X"], g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6


@pytest.mark.parametrize("steps", [4, NINE])
def test_lstm_gate_pre_activations_are_one_sum_per_step(steps):
    """Each step's `W_g @ h + (U_g @ x_t + b_g)` of the four gates is one sum,
    `S @ h + stack(...)`, and the three sigmoid gates its rows 1:4 in one call (siblings.py):
    one sigmoid call per step after the first (which has no recurrent product: two). The
    stacks of every step are one ([T, 4, H]; fusing takes MIN_STEPS steps, batching
    MIN_LANES: no fewer): the gates' input projections of all steps, one product
    (projections.py), `R = reshape(X[:T] @ reshape(stack(U...), (4 * H, V)).T + ...)`, and a
    step adds its row: `S @ h + R[t]`."""
    loss, weights = lstm_loss(steps)
    g = einderiv.grad(loss, weights)
    formula = g.formula
    assert len(re.findall(r"\bsigmoid\(", formula)) == steps - 1 + 2, formula
    assert MIN_STEPS >= MIN_LANES
    assert "axis=1" not in formula, formula
    (name,) = re.findall(r"(t\d+) = reshape\(X\[:\d+\] @ reshape\(stack\(Uc, Uf, Ui, Uo\)",
                         formula)
    rows = re.findall(rf"@ t\d+ \+ {name}\[(\d+)\]", formula)
    assert rows == [str(k) for k in range(1, steps)], formula
    arrays = _lstm_arrays(steps)
    f = einderiv.compile(loss, {})
    for name, value in zip(weights, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name


def test_a_sum_whose_other_term_depends_on_the_step_is_not_joined():
    """`Wa @ h + tanh(Wb @ h)` beside `Wb @ h + x`: the first sum's other term depends on the
    group's own product, so joining the two into `S @ h + stack(tanh(Wb @ h), x)` would make
    the product depend on itself. The sums stay apart; values as the unfused graph's."""
    steps = 4
    Wa, Wb = (var(n, ("h", "h")) for n in ("Wa", "Wb"))
    x = var("x", ("h",))
    h, loss = x, 0
    for _ in range(steps):
        a, b = Wa @ h, Wb @ h
        h = fn.tanh(a + fn.tanh(b)) * fn.sigmoid(b + x)
        loss = loss + fn.sum(h ** 2)
    g = einderiv.grad(loss, ["Wa", "Wb", "x"])
    assert g.formula.count("stack(Wa, Wb)") == 1, g.formula
    assert not re.search(r"@ t\d+ \+ stack\(", g.formula), g.formula
    rng = np.random.default_rng(4)
    arrays = {"x": rng.normal(size=4), **{n: rng.normal(size=(4, 4)) / 2 for n in ("Wa", "Wb")}}
    f = einderiv.compile(loss, {})
    for name, value in zip(["Wa", "Wb", "x"], g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name
