"""Breaker tests for the vectorizer's fusing passes (fuse.py, lanes.py, program._concatenated).

A fault found is a test of the right value (marked xfail(strict=True) until it is fixed).
"""
import numpy as np
import pytest

import einderiv
from einderiv import fn, var


def test_empty_window_beside_a_window_with_the_same_start():
    # program._concatenated sorted the pads as (start, coef, expr) tuples: two with the same
    # start and coefficient (an empty window z[3:3] next to z[3:6]) compared two ast.Call and
    # raised a raw TypeError.
    z = var("z", (10,))
    loss = fn.sum(fn.tanh(z[3:3])) + fn.sum(fn.sin(z[0:3]) ** 2) + fn.sum(fn.exp(z[3:6]))
    g = einderiv.grad(loss, ["z"])
    values = np.random.default_rng(0).normal(size=10)
    expected = np.zeros(10)
    expected[:3] = 2 * np.sin(values[:3]) * np.cos(values[:3])
    expected[3:6] = np.exp(values[3:6])
    (got,) = g(z=values)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
