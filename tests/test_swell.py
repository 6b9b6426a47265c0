"""No expression swell: derivatives of unrolled networks stay linear in the forward graph.

Work is measured by counting IR node constructions (deterministic), not by timing.
"""
import numpy as np
import pytest

import einderiv
from einderiv.api import lower_source
from einderiv.check import finite_difference
from einderiv.derive import derivatives
from einderiv.ir.nodes import Node, Var, topological
from einderiv.models import lstm_loss, rnn_loss
from einderiv.rulebook import default_rulebook

STEPS = (4, 8, 16, 32)


def _measure(model, steps, monkeypatch):
    loss, weights = model(steps)
    lowered = lower_source(loss, None)
    forward = len(topological(lowered.root))
    calls = [0]
    original = Node._intern.__func__

    def counting(cls, *args, **kwargs):
        calls[0] += 1
        return original(cls, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Node, "_intern", classmethod(counting))
        grads = derivatives(lowered.root, [Var(w, lowered.declared[w]) for w in weights],
                            default_rulebook())
    return forward, len(topological(*grads)), calls[0]


@pytest.mark.parametrize("model", [rnn_loss, lstm_loss], ids=["rnn", "lstm"])
def test_derivative_stays_linear(model, monkeypatch):
    rows = [(T, *_measure(model, T, monkeypatch)) for T in STEPS]
    for T, forward, derived, work in rows:
        print(f"{model.__name__} T={T}: forward {forward} nodes, derivative {derived} nodes "
              f"({derived / forward:.2f}x), {work} constructions")
        assert derived <= 4 * forward
    # Doubling T at most doubles the work, up to a constant overhead.
    for (T1, _, _, w1), (T2, _, _, w2) in zip(rows, rows[1:]):
        assert w2 <= 2.2 * w1, (T1, w1, T2, w2)


@pytest.mark.parametrize("model", [rnn_loss, lstm_loss], ids=["rnn", "lstm"])
def test_unrolled_gradient_is_right(model):
    loss, weights = model(3)
    rng = np.random.default_rng(0)
    V, H = 4, 3
    arrays = {"X": np.eye(V)[rng.integers(0, V, 3)], "Y": np.eye(V)[rng.integers(0, V, 3)]}
    for name, shape in lower_source(loss, None).declared.items():
        if name not in arrays:
            dims = {"H": H, "V": V}
            arrays[name] = rng.normal(scale=0.5, size=[dims[d.name] for d in shape])
    forward = einderiv.compile(loss)
    grads = einderiv.grad(loss, weights)(**arrays)
    for name, g in zip(weights, grads):
        np.testing.assert_allclose(g, finite_difference(forward, arrays, name), rtol=1e-6,
                                   atol=1e-8)
