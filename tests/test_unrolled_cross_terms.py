"""Unrolled steps that each read a few different picks of one vector (`exp(x[2t+1]) * x[2t]`
for t < T, built with einderiv.var): their gradients and Hessians, cross terms included, are
placed by slices, dilations and pads in O(n) and O(n^2), never multiplied as T x n selection
matrices (`eye(n)[1:2T:2].T @ (t1[:, None] * eye(n)[:2T-1:2])` was O(T n^2)), nor read and
placed a pick per step (three picks per step were `stack(x[0], x[1], x[3], ...)`, a formula
growing with T).

References: JAX (float64) on one step's function of its picks, its gradient and Hessian added
at the places the step reads; never einderiv itself.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest

import einderiv
from einderiv import fn

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402


class _Jax:
    exp, sin, cos = jnp.exp, jnp.sin, jnp.cos


# name -> (the places step t of T reads, that step's function of its picks)
PLACED = {
    "two picks, stride 2": (lambda t, T: (2 * t + 1, 2 * t),
                            lambda m, a, b: m.exp(a) * b),
    "two picks, the other order": (lambda t, T: (2 * t, 2 * t + 1),
                                   lambda m, a, b: m.exp(a) * b),
    "three picks": (lambda t, T: (3 * t, 3 * t + 1, 3 * t + 2),
                    lambda m, a, b, c: a * b * m.exp(c)),
    "three picks, three functions": (lambda t, T: (3 * t, 3 * t + 1, 3 * t + 2),
                                     lambda m, a, b, c: m.sin(a) * m.cos(b) * c),
    "stride 3, offsets 1 and 2": (lambda t, T: (3 * t + 1, 3 * t + 2),
                                  lambda m, a, b: m.exp(a) * b),
    "stride 4, offsets 3 and 1": (lambda t, T: (4 * t + 3, 4 * t + 1),
                                  lambda m, a, b: m.exp(a) * b),
    "square of a difference": (lambda t, T: (2 * t + 1, 2 * t),
                               lambda m, a, b: (a - b) ** 2 * m.exp(b)),
    "quotient": (lambda t, T: (2 * t, 2 * t + 1), lambda m, a, b: a / b),
}
# Picks in no even step: values only (their Hessians' rows placed out of order were
# concatenated with zeros as long as the steps, not as n: a shape error when called).
UNEVEN = {
    "reversed": (lambda t, T: (2 * t, 2 * (T - 1 - t) + 1), lambda m, a, b: m.exp(a) * b),
    "permuted": (lambda t, T: ((7 * t) % (2 * T + 1), (7 * t + 3) % (2 * T + 1)),
                 lambda m, a, b: m.exp(a) * b),
}


def _unrolled(case, steps):
    places, step = case
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(steps):
        term = step(fn, *[x[p] for p in places(t, steps)])
        total = term if total is None else total + term
    return x, total


# step function -> JAX's gradient and Hessian of one step, jitted once for every T (an eager
# vmap of jax.hessian compiled each primitive again for each T: most of this file's time)
_STEP_DERIVATIVES: dict = {}


def _step_derivatives(step):
    if step not in _STEP_DERIVATIVES:
        one = lambda picks: step(_Jax, *picks)  # noqa: E731
        _STEP_DERIVATIVES[step] = jax.jit(lambda p: (jax.grad(one)(p), jax.hessian(one)(p)))
    return _STEP_DERIVATIVES[step]


def _reference(case, steps, v):
    places, step = case
    g, h = np.zeros_like(v), np.zeros((v.size, v.size))
    derivatives = _step_derivatives(step)
    for t in range(steps):
        p = np.array(places(t, steps))
        grad, hessian = (np.asarray(d) for d in derivatives(jnp.asarray(v[p])))
        np.add.at(g, p, grad)  # (a place read twice in a step is added twice)
        np.add.at(h, np.ix_(p, p), hessian)
    return g, h


def _values(result, v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(result(x=v))


def _check(case, steps):
    x, total = _unrolled(case, steps)
    g, h = einderiv.grad(total, x), einderiv.hessian(total, x)
    v = np.random.default_rng(steps).uniform(0.5, 1.5, 4 * steps + 6)
    ref_g, ref_h = _reference(case, steps, v)
    np.testing.assert_allclose(_values(g, v), ref_g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_values(h, v), ref_h, rtol=1e-12, atol=1e-12)
    return g, h


# T = 3 and 4 for every form; T = 50 for a sample in CI, all of them and T = 400 with
# EINDERIV_SLOW=1 (the whole file: 6 s against 10 s).
SLOW = bool(os.environ.get("EINDERIV_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="slow unrolled sizes (a sample runs in CI): set "
                                           "EINDERIV_SLOW=1")
SAMPLE = ("two picks, stride 2", "three picks")


def _sizes(names):
    return [pytest.param(name, steps, marks=() if steps < 50 or name in SAMPLE else slow)
            for name in names for steps in (3, 4, 50)]


@pytest.mark.parametrize("name, steps", _sizes(PLACED))
def test_unrolled_picks_are_placed_not_multiplied(name, steps):
    g, h = _check(PLACED[name], steps)
    for derived in (g, h):
        form = derived.formula
        assert "@" not in form and "eye(" not in form and "stack(" not in form, form


@pytest.mark.parametrize("name", [pytest.param(SAMPLE[0]), pytest.param(SAMPLE[1], marks=slow)])
def test_unrolled_picks_formula_does_not_grow_with_the_steps(name):
    short = [d.formula for d in _check(PLACED[name], 4)]
    long = [d.formula for d in _check(PLACED[name], 400)]
    for a, b in zip(short, long):
        # the same statements, read with other bounds (`x[1:8:2]`, `x[1:800:2]`)
        assert re.sub(r"\d+", "#", a) == re.sub(r"\d+", "#", b), (a, b)
        assert "@" not in b and "eye(" not in b, b


def test_three_picks_gradient_reads_every_third_entry():
    # the two terms of a step that have the same form (`x[3t] * exp(x[3t+2]) * e_(3t+1)` and
    # `x[3t+1] * exp(x[3t+2]) * e_(3t)`) are batched apart, one per place, not as one batch
    # of 2T rows picked one by one
    x, total = _unrolled(PLACED["three picks"], 50)
    form = einderiv.grad(total, x).formula
    assert "x[:148:3]" in form and "x[1:149:3]" in form, form
    assert form.count("dilate(") == 3, form


@pytest.mark.parametrize("name, steps", _sizes(UNEVEN))
def test_unrolled_picks_out_of_order_have_the_right_values(name, steps):
    _check(UNEVEN[name], steps)
