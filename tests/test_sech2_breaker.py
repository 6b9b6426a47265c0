"""Breaker tests for ce92fe7: kernels.sech2(x, tanh=t) takes 1 - t ** 2 from the forward pass's
tanh where that is at least 1 / 64 and 1 / cosh(x) ** 2 below; the Python printer passes the
live temporary `t = tanh(u)` to `sech2(u)`.

Faults found (both fixed in kernels.py):

- a tanh in another memory order than x (Fortran order, x C-contiguous): `1 - t * t` took t's
  order, `s.reshape(-1)` was a copy, and the exact values of the entries below the floor were
  written into that copy and lost: 6014 of 16384 entries 0 (|x| > 19), relative error 1;
- arrays with many entries below the floor (a saturated tanh layer, the very case the exact
  path is for) were much slower than before: 296 against 50 us on 32768 entries at
  x ~ 10 N(0, 1) (78% below the floor), 11 ms against 1.5 ms on 2 ** 20; the entries below
  the floor were gathered, computed and scattered one by one (about 10 ns each, cosh on all
  takes 1.5).

The rest pins what held: every hint in generated code is the live `_xp.tanh` of the very
argument, gradients with hints agree with the IR interpreter (exact sech2) through the floor,
the accuracy bound at the floor (float32 exhaustively), the exact path's bits below it.
"""
from __future__ import annotations

import ast as python_ast

import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels

FLOOR = 1 / 64  # the commit's floor, written out: a changed constant is a failure here
MANY = kernels._SECH2_FROM_TANH


def _plain(x):
    """The exact path as it was before the hint: 1 / cosh(x) ** 2, in place."""
    with np.errstate(over="ignore"):
        r = np.cosh(x)
    np.divide(1.0, r, out=r)
    return np.square(r, out=r)


# --- kernel: memory order ----------------------------------------------------------------------

@pytest.mark.parametrize("order", ["fortran", "reversed", "c"])
def test_a_tanh_in_another_memory_order_than_x_is_not_misread(order):
    """Fails where the entries below the floor are written into a copy of `1 - t * t` (t in
    Fortran order: `s.reshape(-1)` copies): every |x| > 19 then gives 0, not sech(x) ** 2.
    Few entries below the floor (2%: each computed on its own), then most (63%)."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(128, 128))
    x.reshape(-1)[::97] = 25.0 * np.sign(x.reshape(-1)[::97])
    _the_same_in_any_order(x, order)
    _the_same_in_any_order(np.linspace(-30, 30, 128 * 128).reshape(128, 128), order)


def _the_same_in_any_order(x, order):
    assert x.flags.c_contiguous and x.size >= MANY
    if order == "fortran":
        t = np.asfortranarray(np.tanh(x))
    elif order == "reversed":
        t = np.tanh(x[::-1, ::-1])[::-1, ::-1]
    else:
        t = np.tanh(x)
    got = kernels.sech2(x, tanh=t)
    want = _plain(x)
    assert np.all(want > 0)
    assert np.count_nonzero(got == 0) == 0
    np.testing.assert_allclose(got, want, rtol=64 * np.finfo(float).eps, atol=0)
    below = (1 - t * t) < FLOOR
    np.testing.assert_array_equal(got[below], want[below])


# --- kernel: speed where most entries are below the floor ---------------------------------------

@pytest.mark.parametrize("scale", [10.0, 30.0])
def test_a_saturated_array_takes_the_exact_path_on_every_entry(scale, monkeypatch):
    """78% (scale 10) and 93% (30) of the entries below the floor: gathered and scattered one
    by one they took 6 to 7 times the exact path's time; past 1 / 16 of the entries the kernel
    runs the exact path on the whole array instead (the entries are never gathered: a spy on
    numpy.flatnonzero, which finds them, is never called), with the exact path's bits."""
    rng = np.random.default_rng(11)
    x = scale * rng.normal(size=32768)
    t = np.tanh(x)
    assert np.mean((1 - t * t) < FLOOR) > 0.75
    gathered = []
    real = np.flatnonzero
    monkeypatch.setattr(kernels.np, "flatnonzero", lambda a: gathered.append(a) or real(a))
    got = kernels.sech2(x, tanh=t)
    assert gathered == []
    np.testing.assert_array_equal(got, _plain(x))
    few = rng.normal(size=32768)  # 0.6% below: gathered, once
    kernels.sech2(few, tanh=np.tanh(few))
    assert len(gathered) == 1


def test_a_few_entries_below_the_floor_keep_the_fast_path_and_the_exact_bits():
    """1% below the floor: 1 - t ** 2 elsewhere (not the exact path's bits everywhere: some
    entries differ), the exact path's bits below. Fails if the kernel falls back to the exact
    path on every array that has an entry below the floor (no speed gained)."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=32768)
    t = np.tanh(x)
    below = (1 - t * t) < FLOOR
    assert 0 < below.mean() < 0.02
    got = kernels.sech2(x, tanh=t)
    np.testing.assert_array_equal(got[below], _plain(x)[below])
    np.testing.assert_array_equal(got[~below], (1 - t * t)[~below])


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_nan_infinities_and_subnormals_on_either_path(scale):
    """nan stays nan, +-inf gives 0, a subnormal 1, far out the exact value: with few entries
    below the floor (scale 1: each computed on its own) and with most (scale 10: the exact
    path on all). tests/test_sech2_from_tanh.py's own case now has 8% below the floor."""
    rng = np.random.default_rng(16)
    x = scale * rng.normal(size=9000)
    x[:6] = [np.nan, np.inf, -np.inf, 5e-324, -5e-324, 30.0]
    t = np.tanh(x)
    few = np.mean((1 - t * t) < FLOOR) < 1 / 16
    assert few == (scale == 1.0)
    got = kernels.sech2(x, tanh=t)
    assert np.isnan(got[0]) and got[1] == got[2] == 0.0 and got[3] == got[4] == 1.0
    assert got[5] == _plain(x[5:6])[0] > 0
    np.testing.assert_allclose(got[6:], _plain(x[6:]), rtol=64 * np.finfo(float).eps, atol=0)
    if few:  # (1 - t ** 2 taken: not the exact path's values everywhere)
        assert np.any(got[6:] != _plain(x[6:]))


# --- kernel: accuracy at the floor --------------------------------------------------------------

def test_float32_within_64_ulps_exhaustively_up_to_the_floor():
    """Every float32 in [2, 2.8] and its negative (3.4 million each: the floor is at 2.7687,
    the largest error just above it, 57 eps measured) against float64's exact path, which
    is far more accurate than float32's ulp. 4% of them are below the floor, so that the
    kernel takes 1 - t ** 2 for the rest (checked: not the exact path's values everywhere),
    not the exact path on all (which it takes where more than 1 / 16 are below)."""
    lo, hi = np.array([2.0, 2.8], dtype=np.float32).view(np.int32)
    x = np.arange(lo, hi, dtype=np.int32).view(np.float32)
    eps = float(np.finfo(np.float32).eps)
    for sign in (1, -1):
        xs = np.ascontiguousarray(sign * x)
        t = np.tanh(xs)
        assert 0 < np.mean((1 - t * t) < FLOOR) < 1 / 16
        got = kernels.sech2(xs, tanh=t)
        assert np.any(got != _plain(xs))
        want = _plain(xs.astype(np.float64))
        rel = np.abs(got.astype(np.float64) - want) / want
        assert rel.max() <= 64 * eps, (rel.max() / eps, xs[rel.argmax()])


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an 80-bit long double")
def test_float64_within_64_ulps_near_the_floor():
    """500,000 random points just above the floor (|x| in [2.62, 2.77], where the error is
    largest: 61.7 eps measured) against 1 / cosh(x) ** 2 in long double."""
    rng = np.random.default_rng(13)
    at = float(np.arctanh(np.sqrt(1 - FLOOR)))
    x = rng.uniform(at - 0.15, at + 0.001, 500_000)
    x[::2] *= -1
    t = np.tanh(x)
    assert 0 < np.mean((1 - t * t) < FLOOR) < 1 / 16  # (1 - t ** 2 for the rest: see above)
    got = kernels.sech2(x, tanh=t)
    assert np.any(got != _plain(x))
    got = got.astype(np.longdouble)
    c = np.cosh(x.astype(np.longdouble))
    want = 1 / (c * c)
    rel = np.abs(got - want) / want
    assert float(rel.max()) <= 64 * np.finfo(float).eps, float(rel.max()) / np.finfo(float).eps


# --- generated code -----------------------------------------------------------------------------

def _hints(source):
    """(hinted calls, problems): each `_kernels.sech2(A, tanh=T)` must read a T bound, on an
    earlier line and not deleted since, to exactly `_xp.tanh(A)`."""
    tree = python_ast.parse(source)
    (function,) = [n for n in tree.body if isinstance(n, python_ast.FunctionDef)]
    bound = {a.arg: None for a in function.args.args}
    hints, problems = 0, []

    def visit(node):
        nonlocal hints
        for c in python_ast.walk(node):
            if isinstance(c, python_ast.Call) and python_ast.unparse(c.func) == "_kernels.sech2" \
                    and c.keywords:
                hints += 1
                t = dict((k.arg, k.value) for k in c.keywords)["tanh"]
                want = f"_xp.tanh({python_ast.unparse(c.args[0])})"
                if not isinstance(t, python_ast.Name) or bound.get(t.id) != want:
                    problems.append(python_ast.unparse(c))

    for statement in function.body:
        if isinstance(statement, python_ast.Assign):
            visit(statement.value)
            (target,) = statement.targets
            bound[target.id] = python_ast.unparse(statement.value)
        elif isinstance(statement, python_ast.Delete):
            for target in statement.targets:
                bound.pop(target.id, None)
        else:
            visit(statement)
    return hints, problems


VECTOR = {"x": ("n",), "y": ("n",)}
PROGRAMS = [  # (kind, expression, whether the code has a hint)
    ("value_and_grad", "sum(tanh(x) * y) + sum(tanh(x) ** 3)", True),
    ("hvp", "sum(tanh(x) * tanh(x) * y)", True),
    ("grad", "sum(tanh(tanh(x)) * tanh(x))", True),
    ("hvp", "sum(tanh(tanh(x)) * tanh(x))", True),
    ("value_and_grad", "sum(tanh(tanh(tanh(x))) ** 2)", True),
    ("hvp", "sum(tanh(x + y) ** 2 * tanh(x - y))", True),
    ("grad", "sum(tanh(x)) * sum(tanh(x) * y)", True),
    ("value_and_grad", "sum(tanh(x * y) * x * y)", True),
    ("hvp", "sum(sech2(tanh(x)) * tanh(tanh(x)))", True),
    # another function of the same argument lives beside tanh(x), after it: the hint is
    # still tanh's (fails where any one-argument call is taken for tanh)
    ("grad", "sum(tanh(x) ** 3) * sum(exp(x))", True),
    ("value_and_grad", "sum(tanh(x) ** 3 * sin(x) * y)", True),
    ("value_and_grad", "sum(tanh(x) ** 2 * log(1 + exp(x)))", True),
    # tanh(x) is deleted after the forward sums, before the gradient's sech2(x): no hint
    # (fails where a deleted temporary stays a hint: `t0` read after `del t0`)
    ("value_and_grad", "sum(tanh(x) * y) * sum(tanh(x))", False),
]


@pytest.mark.parametrize("kind, expr, hinted", PROGRAMS)
def test_every_hint_is_the_live_tanh_of_its_argument_and_agrees_with_the_interpreter(
        kind, expr, hinted):
    """Nested tanh, tanh of an input, of a sum, in value_and_grad and hvp: each `tanh=` reads
    `_xp.tanh` of the same argument, still bound; the result agrees with the IR interpreter
    (exact sech2) on 9000 entries spread through the floor and far past it."""
    f = getattr(einderiv, kind)(expr, "x", VECTOR)
    hints, problems = _hints(f.source)
    assert not problems and bool(hints) == hinted, (problems, f.source)
    rng = np.random.default_rng(14)
    arrays = {"x": 4 * rng.normal(size=9000), "y": rng.normal(size=9000)}
    if kind == "hvp":
        arrays["tangent"] = rng.normal(size=9000)
    got, want = f(**arrays), f.evaluate_ir(**arrays)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for a, b in zip(got, want):
        a, b = np.ravel(a), np.ravel(b)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12 * np.max(np.abs(b)))


def test_the_hinted_gradient_of_a_saturated_layer_with_inputs_in_fortran_order():
    """Inputs in Fortran order make `X @ W` Fortran-ordered too: the hint is then skipped (x
    not C-contiguous) or read right; either way the gradient is the interpreter's, nonzero
    where the pre-activations are past |x| = 19."""
    shapes = {"X": ("n", "d"), "W": ("d", "h")}
    g = einderiv.grad("sum(tanh(X @ W) ** 3) + sum(sech2(X @ W))", "W", shapes)
    assert "tanh=" in g.source, g.source
    rng = np.random.default_rng(15)
    for order in ("C", "F"):
        X = np.asarray(rng.normal(size=(128, 8)), order=order)
        W = np.asarray(12 * rng.normal(size=(8, 96)), order=order)
        got, want = g(X=X, W=W), g.evaluate_ir(X=X, W=W)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=0)
