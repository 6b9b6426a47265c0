"""Breaker tests for the vectorizer's fusing passes (fuse.py, lanes.py, program._concatenated).

Each test marked xfail(strict=True) is a fault found and not fixed yet: it asserts the right
value, so it starts to pass (and must lose its mark) when the fault is fixed.
"""
import numpy as np
import pytest

import einderiv
from einderiv import fn, var


@pytest.mark.xfail(strict=True, reason="program._concatenated sorts the pads as (start, coef, "
                   "expr) tuples: two pads with the same start and coefficient (an empty "
                   "window z[3:3] next to z[3:6]) compare two ast.Call and raise a raw TypeError")
def test_empty_window_beside_a_window_with_the_same_start():
    z = var("z", (10,))
    loss = fn.sum(fn.tanh(z[3:3])) + fn.sum(fn.sin(z[0:3]) ** 2) + fn.sum(fn.exp(z[3:6]))
    g = einderiv.grad(loss, ["z"])
    values = np.random.default_rng(0).normal(size=10)
    expected = np.zeros(10)
    expected[:3] = 2 * np.sin(values[:3]) * np.cos(values[:3])
    expected[3:6] = np.exp(values[3:6])
    (got,) = g(z=values)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
