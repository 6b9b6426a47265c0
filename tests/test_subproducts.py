"""vectorize/subproducts.py: a product that contains factors whose elementwise product the
program computes anyway reads that product. Structure is checked on the generated code, values
against the IR interpreter (which runs the graph as derived) and numpy."""
from __future__ import annotations

import re

import numpy as np
import pytest

import einderiv
from einderiv.models import rnn_loss

RNG = np.random.default_rng(11)


def _agree(result, arrays):
    got, ref = result(**arrays), result.evaluate_ir(**arrays)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    ref if isinstance(ref, tuple) else (ref,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    return got


def test_an_rnn_computes_each_steps_adjoint_product_once():
    # dz_t = a_t * s_t (the adjoint times tanh's derivative) feeds W.T @ dz_t, the weights'
    # gradients and the bias's: computed once per step, stacked once, summed over once
    steps = 6
    loss, weights = rnn_loss(steps)
    g = einderiv.grad(loss, weights)
    source = g.source
    returned = [line for line in source.splitlines() if line.strip().startswith("return")][0]
    assert "*" not in returned.replace("**", "")  # no product recomputed in the outputs
    (stack,) = re.findall(r"_kernels\.array_sum\((t\d+), _xp, axis=0\)", returned)[:1]
    assert f"_xp.dot({stack}.T," in returned  # the bias sums the stack the input weights multiply
    assert source.count("_xp.dot(W.T,") == steps - 1
    V, H = 4, 3
    arrays = {"W": RNG.normal(size=(H, H)), "U": RNG.normal(size=(H, V)),
              "b": RNG.normal(size=H), "Wy": RNG.normal(size=(V, H)), "by": RNG.normal(size=V),
              "X": np.eye(V)[RNG.integers(0, V, size=steps)],
              "Y": np.eye(V)[RNG.integers(0, V, size=steps)]}
    _agree(g, arrays)


def test_a_factor_twice_is_not_the_product_of_it_once():
    # x * u * x beside x * u: the product of x and u is read once, and x stays a factor
    # (a regression: the factors were compared as a set, and x * u * x read as x * u)
    src = "(((flip(u0) * u0) ** 2) * s0)"
    shapes = {"u0": ("n",), "s0": ()}
    u, s = np.array([0.3, -0.7]), np.float64(1.3)
    for J in (einderiv.jacobian(src, ["s0", "u0"], shapes)(u0=u, s0=s)[1],
              einderiv.jacobian(src, "u0", shapes)(u0=u, s0=s)):
        p = u[::-1] * u
        want = 2 * s * (np.diag(p * u[::-1]) + np.diag(p * u)[:, ::-1])
        np.testing.assert_allclose(J, want, rtol=1e-13)


@pytest.mark.parametrize("expr", [
    "sum(x * y) + sum(x * y * x * w)",
    "sum(x * y * w) + sum(x * y) * sum(w * w)",
    "sum(exp(x) * y) + sum(exp(x) * y * exp(x) * y)",
    "sum(x * y) + sum(y * x * w * y)",
])
def test_values_and_gradients_with_shared_products(expr):
    shapes = {"x": ("n",), "y": ("n",), "w": ("n",)}
    arrays = {k: RNG.normal(size=5) for k in shapes}
    f = einderiv.compile(expr, shapes)
    _agree(f, arrays)
    g = einderiv.grad(expr, ["x", "y", "w"], shapes)
    got = _agree(g, arrays)
    h = 1e-6
    for name, grad in zip(["x", "y", "w"], got):
        fd = []
        for k in range(5):
            e = np.zeros(5)
            e[k] = h
            plus = f(**{**arrays, name: arrays[name] + e})
            minus = f(**{**arrays, name: arrays[name] - e})
            fd.append((plus - minus) / (2 * h))
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
