"""Breaker checks of the fused input projections (einderiv/vectorize/projections.py, b8b1237):
products of one shared operand by several input weights of one shape computed as one product of
the weights stacked, read by rows; and a pick of a pick printed as one index (dc476ce).

Each fault found is a test of the right value (finite differences), marked xfail(strict=True)
until it is fixed. conftest.py also checks every result called here against the IR interpreter
(which runs the unfused graph) and its printed formula parsed back.
"""
import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error


def _arrays(shapes, sizes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(size=tuple(sizes.get(d, d) for d in shape)) / 2).astype(dtype)
            for name, shape in shapes.items()}


def _check_grad(expr, shapes, sizes, seed=0):
    """The gradient of `expr` by every input, against central finite differences; its formula."""
    g = einderiv.grad(expr, list(shapes), shapes)
    arrays = _arrays(shapes, sizes, seed)
    f = einderiv.compile(expr, shapes)
    for name, value in zip(g.wrt, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name
    return g.formula


WEIGHTS = {"A": ("h", "v"), "B": ("h", "v"), "a": ("h",), "b": ("h",)}
SIZES = {"n": 6, "v": 3, "h": 4}


def test_a_weight_that_is_also_a_factor_of_the_shared_operand():
    # (X * A) @ A.T: A is the weight and a factor of the rows; it was fused as X @ A.T
    # (every operand that was the weight's node left out of the rows), dX 0.12 off.
    shapes = {"X": ("h", "v"), **WEIGHTS}
    _check_grad("sum(((X * A) @ A.T)[0] * (X @ B.T)[1])", shapes, SIZES)


def test_a_bias_on_one_product_of_the_group_only():
    # The fused product has no bias (not every product has one), but the sum with a was
    # replaced by the bare product's part: da, dX and dB wrong (da 0.35 off).
    shapes = {"X": ("n", "v"), **WEIGHTS}
    _check_grad("sum((X @ A.T + a)[2] * (X @ B.T)[3])", shapes, SIZES)
