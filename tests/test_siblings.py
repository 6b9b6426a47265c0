"""vectorize/siblings.py: one function of several parts of one array is one call on their cover.

Each case checks the generated code's calls (what the pass is for) and its values against the
IR interpreter (an independent path that never joins anything) and a hand-written numpy form.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv

RNG = np.random.default_rng(7)


def _calls(source: str, name: str) -> int:
    return len(re.findall(rf"\b{name}\(", source))  # (not dsigmoid for sigmoid)


def _agree(result, arrays, want=None):
    got = result(**arrays)
    ref = result.evaluate_ir(**arrays)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    ref if isinstance(ref, tuple) else (ref,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if want is not None:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    return got


def test_windows_that_tile_a_vector_are_one_call():
    f = einderiv.compile("exp(z[0:3]) @ exp(z[3:6])", {"z": (6,)})
    assert _calls(f.source, "exp") == 1
    z = RNG.normal(size=6)
    _agree(f, {"z": z}, np.exp(z[:3]) @ np.exp(z[3:]))


def test_overlapping_windows_are_one_call_over_their_union():
    f = einderiv.compile("exp(z[0:4]) @ exp(z[2:6])", {"z": (7,)})
    assert _calls(f.source, "exp") == 1
    z = RNG.normal(size=7)
    _agree(f, {"z": z}, np.exp(z[:4]) @ np.exp(z[2:6]))


def test_windows_with_a_gap_stay_apart_so_no_entry_is_computed_that_is_not_asked_for():
    # log of z[2:4], which the program never takes, would be nan (and warn) for these z
    f = einderiv.compile("sum(log(z[0:2])) + sum(log(z[4:6]))", {"z": (6,)})
    assert _calls(f.source, "log") == 2
    z = np.array([1.0, 2.0, -1.0, -2.0, 3.0, 4.0])
    with np.errstate(all="raise"):
        _agree(f, {"z": z}, np.log(z[:2]).sum() + np.log(z[4:]).sum())


def test_rows_of_a_matrix_are_one_call_on_the_rows_that_cover_them():
    f = einderiv.compile("sum(tanh(M[0]) * tanh(M[2])) + sum(tanh(M[1]))", {"M": (4, "n")})
    assert _calls(f.source, "tanh") == 1
    M = RNG.normal(size=(4, 5))
    t = np.tanh(M)
    _agree(f, {"M": M}, np.sum(t[0] * t[2]) + np.sum(t[1]))


def test_windows_along_a_later_axis():
    f = einderiv.compile("sum(sigmoid(Z[:, 0:2]) * sigmoid(Z[:, 2:4]))", {"Z": ("n", 5)})
    assert _calls(f.source, "sigmoid") == 1
    Z = RNG.normal(size=(3, 5))
    s = 1 / (1 + np.exp(-Z))
    _agree(f, {"Z": Z}, np.sum(s[:, :2] * s[:, 2:4]))


def test_gradients_through_joined_parts_agree_with_the_interpreter():
    expr = "sum(sigmoid(z[0:3]) * tanh(z[6:9]) + sigmoid(z[3:6]) ** 2)"
    g = einderiv.grad(expr, "z", {"z": (9,)})
    z = RNG.normal(size=9)
    got = _agree(g, {"z": z})
    h = 1e-6
    fd = np.array([(_value(expr, z + h * e) - _value(expr, z - h * e)) / (2 * h)
                   for e in np.eye(9)])
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


def _value(expr, z):
    return einderiv.compile(expr, {"z": (9,)})(z=z)


def test_a_stacked_lstm_calls_sigmoid_once_per_step():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import problems
    inst = problems.lstm_stacked(9, 5, 6)
    expr, shapes = inst.einderiv()
    g = einderiv.grad(expr, inst.wrt, shapes)
    # one call per step on the three sigmoid gates' rows, z[:3H] (the first step's f gate
    # is not needed: there is no previous cell)
    assert _calls(g.source, "sigmoid") == 6
    arrays = {**inst.params, **inst.data}
    got = _agree(g, arrays)
    for a, b in zip(got, inst.hand(inst.params, inst.data)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_joined_parts_on_other_backends(backend):
    pytest.importorskip(backend)
    f = einderiv.compile("exp(z[0:3]) @ exp(z[3:6])", {"z": (6,)}, backend=backend)
    z = RNG.normal(size=6)
    tol = 1e-6 if backend == "jax" else 1e-12  # jax computes in float32 unless x64 is on
    np.testing.assert_allclose(np.asarray(f(z=z)), np.exp(z[:3]) @ np.exp(z[3:]), rtol=tol)
