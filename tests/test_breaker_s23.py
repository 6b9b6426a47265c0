"""Breaker tests of session 23's changes, each attack with its right value.

1. kernels.py: a row's maximum read at its argmax (`_max_along`, softmax and log_softmax_vjp),
   an array's extremes at argmax/argmin up to 16384 entries (`_largest`, `_smallest`),
   `_all_finite`, 1 / x by division (sech2, sigmoid), an inner-axis stack as one concatenation,
   and sigmoid's fast path (numpy float arrays of 256 entries or more, a factor that folds).
   Attacked with nan/inf/-0.0 at the first, last and every entry, float16 to longdouble,
   non-contiguous, reversed, Fortran-order and read-only arrays, sizes at the thresholds (31/32
   rows, 255/256 and 16384/16385 entries) and factors of every kind; references are numpy's
   own reductions and mpmath at 50 digits, and no RuntimeWarning may escape.
2. The call path (api `_Result.__call__`, generate/function `_guard` with `plain` and `fresh`):
   after the first call the guard returns the call's result as it is. Attacked with every
   kind of result and wrt (in order, reordered, repeated), one array for several inputs and
   views of one buffer, 0-d outputs, mixed dtypes, other shapes, extra, missing and positional
   arrays after fast calls, threads racing on a result just built, pickled and copied results,
   the other backends, and random programs (tests/test_property.py's generator). Every result
   must be writeable, of the inputs' dtype, and share memory with no input and no other result.

None of these attacks found a fault: every test passes as it is (a regression net for the
fast paths). `EINDERIV_SLOW=1` runs the random programs in full.
"""
from __future__ import annotations

import copy
import os
import pickle
import threading
import warnings

import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

SLOW = bool(os.environ.get("EINDERIV_SLOW"))
FLOATS = [np.float16, np.float32, np.float64, np.longdouble]


def _exact(v) -> mp.mpf:
    """A float of any numpy precision as an exact mpmath number (longdouble's 64-bit mantissa
    split into two doubles: str() and float() would round it)."""
    v = np.longdouble(v)
    if v == 0 or not np.isfinite(v):
        return mp.mpf(float(v))
    m, e = np.frexp(v)
    mantissa = np.ldexp(m, 64)
    hi = float(mantissa)
    lo = float(mantissa - np.longdouble(hi))
    return (mp.mpf(hi) + mp.mpf(lo)) * mp.mpf(2) ** (int(e) - 64)


def _ulps(got, want: mp.mpf, dtype) -> float:
    """|got - want| in units of dtype's spacing at want (the subnormal spacing at least)."""
    fi = np.finfo(dtype)
    unit = max(abs(want) * _exact(fi.eps), _exact(fi.smallest_subnormal))
    return float(abs(_exact(got) - want) / unit)


def _variants(x: np.ndarray):
    """x, and x laid out otherwise: reversed in a strided buffer, read-only, Fortran order."""
    yield "plain", x
    buffer = np.full((2 * x.shape[0],) + x.shape[1:], 0.25, x.dtype)
    buffer[1::2] = x[::-1]
    yield "strided", buffer[::-2]  # the same values, stride -2
    locked = x.copy()
    locked.flags.writeable = False
    yield "read-only", locked
    if x.ndim > 1:
        yield "fortran", np.asfortranarray(x)


@pytest.fixture(autouse=True)
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning that escapes is a failure
        yield


# -- 1. kernels -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [255, 256, 16384, 16385])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_at_the_fast_paths_thresholds_has_full_precision(dtype, n):
    # far left into the subnormal range, with every kind of factor, both signs
    fi = np.finfo(dtype)
    low = float(np.log(fi.smallest_subnormal))
    bound = 0.99 * float(1 - np.log(fi.max))  # where exp(-x) is finite: the fast path's arrays
    rng = np.random.default_rng(n)
    sample = np.linspace(0, n - 1, 30).astype(int)
    kernels.sigmoid(np.zeros(8, dtype))  # (the dtype's bound cached: the fast path's condition)
    with mp.workdps(50):
        for x in (rng.uniform(bound, -bound, n).astype(dtype),
                  rng.uniform(low * 1.02, -low * 0.3, n).astype(dtype)):  # past the bound too
            for negated in (False, True):
                for times, factor in ((None, 1), (1024.0, 1024), (np.full(n, 3.0, dtype), 3),
                                      (np.array(2.0, dtype), 2)):
                    for how, xs in _variants(x):
                        got = kernels.sigmoid(xs, negated=negated, times=times)
                        assert got.dtype == dtype and got.shape == (n,), (how, times)
                        for i in sample:
                            t = -_exact(x[i]) if negated else _exact(x[i])
                            want = factor / (1 + mp.exp(-t))
                            assert _ulps(got[i], want, dtype) <= 2.5, (how, negated, times, i)


@pytest.mark.parametrize("n", [256, 16384, 16385])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sigmoid_fast_path_with_nan_inf_and_signed_zeros(dtype, n):
    kernels.sigmoid(np.zeros(3, dtype))
    rng = np.random.default_rng(0)
    base = rng.uniform(-5, 5, n).astype(dtype)
    for place in (0, n // 2, n - 1, slice(None)):
        for value in (np.nan, np.inf, -np.inf, -0.0):
            x = base.copy()
            x[place] = value
            for negated in (False, True):
                for times in (None, 2.0, np.full(n, 2.0, dtype)):
                    got = kernels.sigmoid(x, negated=negated, times=times)
                    u = -x.astype(np.float64) if negated else x.astype(np.float64)
                    with np.errstate(over="ignore"):
                        want = (1.0 if times is None else 2.0) / (1 + np.exp(-u))
                    assert np.array_equal(np.isnan(got), np.isnan(x)), (place, value)
                    np.testing.assert_allclose(got.astype(np.float64), want,
                                               rtol=4 * np.finfo(dtype).eps, atol=0)


def test_sigmoid_of_other_inputs_is_the_general_paths():
    # a subclass, an integer array, a broadcast factor, a Python int and a numpy scalar factor:
    # none folds, all give times * sigmoid(x)
    class Sub(np.ndarray):
        pass
    x = np.linspace(-30, 30, 300)
    want = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(np.asarray(kernels.sigmoid(x.view(Sub))), want, rtol=1e-15)
    ints = np.arange(-150, 150)
    np.testing.assert_allclose(kernels.sigmoid(ints), 1 / (1 + np.exp(-ints.astype(float))),
                               rtol=1e-15)
    for times in (3, np.float64(3.0), np.full((1,), 3.0), np.array(3.0)):
        got = kernels.sigmoid(x, times=times)
        assert got.shape == x.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, 3 * want, rtol=1e-15)
    rows = np.linspace(-5, 5, 600).reshape(20, 30)
    np.testing.assert_allclose(kernels.sigmoid(rows, times=np.arange(30.0)),
                               np.arange(30.0) / (1 + np.exp(-rows)), rtol=1e-15)
    assert kernels.sigmoid(np.empty((0, 300))).shape == (0, 300)


@pytest.mark.parametrize("size", [1, 3, 16384, 16385, 20000])
def test_largest_and_smallest_are_numpys_max_and_min(size):
    rng = np.random.default_rng(size)
    for dtype in FLOATS:
        base = rng.standard_normal(size).astype(dtype)
        for place in (0, size - 1):
            for value in (None, np.nan, np.inf, -np.inf, -0.0):
                x = base.copy()
                if value is not None:
                    x[place] = value
                for how, xs in _variants(x):
                    for mine, numpys in ((kernels._largest, np.max), (kernels._smallest, np.min)):
                        got, want = mine(xs), numpys(xs)
                        assert (np.isnan(got) and np.isnan(want)) or got == want, (how, value)
                assert kernels._all_finite(x) == bool(np.isfinite(x).all())


def _softmax_reference(x, axis):
    """softmax by numpy's own max, in float64 (longdouble stays longdouble)."""
    wide = x if x.dtype == np.longdouble else x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        m = np.max(wide, axis=axis, keepdims=True)
        m = np.where(m == -np.inf, 0, m)
        e = np.exp(np.where(wide == m, 0, wide - m))
        s = e.sum(axis=axis, keepdims=True)
        return e / np.where(s == 0, 1, s)


@pytest.mark.parametrize("shape", [(31, 6), (32, 6), (33, 1), (64, 3, 5), (40, 129)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.longdouble])
def test_softmax_along_many_rows_is_the_shifted_formula(dtype, shape):
    rng = np.random.default_rng(len(shape))
    tol = 8 * np.finfo(dtype).eps
    for case in ("plain", "nan first", "nan last", "inf", "-inf row", "ties", "signed zeros",
                 "every nan"):
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        if case == "nan first":
            x.flat[0] = np.nan
        elif case == "nan last":
            x.flat[-1] = np.nan
        elif case == "inf":
            x.flat[x.size // 2] = np.inf
        elif case == "-inf row":
            x[0] = -np.inf
        elif case == "ties":
            x[...] = 1.5
        elif case == "signed zeros":
            x[...] = -0.0
            x.flat[::3] = 0.0
        elif case == "every nan":
            x[...] = np.nan
        for how, xs in _variants(x):
            for axis in (-1, x.ndim - 1, 0):
                got = kernels.softmax(xs, axis=axis)
                want = _softmax_reference(xs, axis)
                assert got.dtype == dtype and got.shape == x.shape
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-3, equal_nan=True,
                                           err_msg=f"{case} {how} axis {axis}")
                assert np.array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("shape", [(31, 4), (32, 4), (40, 3, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_vjp_along_many_rows_against_mpmath(dtype, shape):
    rng = np.random.default_rng(7)
    for case in ("plain", "confident", "ties", "signed zeros"):
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        if case == "confident":
            x *= 20
        elif case == "ties":
            x[...] = 1.5
        elif case == "signed zeros":
            x[...] = -0.0
            x.flat[::3] = 0.0
        for how, xs in _variants(x):
            got = kernels.log_softmax_vjp(xs, g, -1)
            assert got.dtype == dtype and got.shape == x.shape
            rows = x.reshape(-1, shape[-1]).astype(np.float64)
            cot = g.reshape(-1, shape[-1]).astype(np.float64)
            flat = got.reshape(-1, shape[-1])
            with mp.workdps(40):
                for r in range(0, len(rows), 7):
                    top = max(map(mp.mpf, rows[r]))
                    e = [mp.exp(mp.mpf(v) - top) for v in rows[r]]
                    total, g_total = sum(e), sum(map(mp.mpf, cot[r]))
                    for k in range(shape[-1]):
                        want = mp.mpf(cot[r, k]) - e[k] / total * g_total
                        # (the difference's terms' scale: where they cancel, a few ulps of it)
                        scale = abs(mp.mpf(cot[r, k])) + abs(e[k] / total * g_total)
                        err = abs(mp.mpf(float(flat[r, k])) - want)
                        assert err <= 4 * float(np.finfo(dtype).eps) * scale, (case, how, r, k)
    # a nan in a row makes that row nan and leaves the others alone
    x = rng.standard_normal((40, 5)).astype(dtype)
    x[3, 2] = np.nan
    got = kernels.log_softmax_vjp(x, np.ones_like(x), -1)
    assert np.isnan(got[3]).all() and np.isfinite(np.delete(got, 3, axis=0)).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_sech2_by_division_against_mpmath(dtype):
    fi = np.finfo(dtype)
    top = float(np.log(fi.max))  # cosh overflows beyond: sech2 is 0 there, below subnormals
    x = np.linspace(-1.2 * top, 1.2 * top, 301).astype(dtype)
    x[150] = -0.0
    for how, xs in _variants(x):
        got = kernels.sech2(xs)
        assert got.dtype == dtype
        with mp.workdps(50):
            for i in range(0, 301, 5):
                want = 1 / mp.cosh(_exact(x[i])) ** 2
                assert _ulps(got[i], want, dtype) <= 3, (how, x[i])
    assert np.isnan(kernels.sech2(np.array([np.nan, 1.0], dtype))[0])


def test_stack_along_an_inner_axis_is_numpys_stack():
    class Sub(np.ndarray):
        pass
    rng = np.random.default_rng(3)
    for shape in [(2, 3), (4, 1, 5), (0, 3), (3, 0), (2, 3, 4, 2)]:
        base = rng.standard_normal(shape)
        groups = [
            [base, base + 1, base + 2],  # distinct
            [base] * 3,  # one array three times
            [np.asfortranarray(base), base[::-1].copy()],
            [base, base.astype(np.float32)],  # mixed dtypes promote as stack's
            [base.astype(np.float16), base.astype(np.longdouble)],
            [base],
            [base.view(Sub), base],  # a subclass: numpy.stack itself
        ]
        for arrays in groups:
            for axis in range(0, len(shape) + 1):
                got = kernels.stack(arrays, np, axis)
                want = np.stack(arrays, axis=axis)
                assert type(got) is type(want) and got.dtype == want.dtype
                assert got.shape == want.shape and np.array_equal(got, want)
                assert got.flags.writeable
                assert not any(np.shares_memory(got, a) for a in arrays)


# -- 2. the call path -----------------------------------------------------------------------

SHAPES = {"W": ("m", "n"), "x": ("n",), "b": ("m",), "c": (), "V": ("m", "n"), "y": ("n",)}
LOSS = "sum(tanh(W @ x + b)) * c + x @ x"


def _flat(result) -> list:
    if isinstance(result, tuple):
        return [a for r in result for a in _flat(r)]
    return [result]


def _check(result, inputs: dict, reference, dtype=np.float64):
    """`result` is `reference`'s values, every array writeable, in dtype, apart from the inputs
    and each other."""
    got, want = _flat(result), _flat(reference)
    assert isinstance(result, tuple) == isinstance(reference, tuple)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert type(a) is np.ndarray or isinstance(a, np.generic), type(a)
        assert a.dtype == dtype and np.shape(a) == np.shape(b)
        eps = float(np.finfo(dtype).eps)  # (computed two ways: a few roundings apart)
        np.testing.assert_allclose(a, b, rtol=max(1e-12, 8 * eps), atol=max(1e-13, 8 * eps))
        if isinstance(a, np.ndarray):
            assert a.flags.writeable
            assert not any(np.shares_memory(a, v) for v in inputs.values()
                           if isinstance(v, np.ndarray))
            assert not any(np.shares_memory(a, o) for o in got[:i] if isinstance(o, np.ndarray))


def _results():
    """Every kind of result, with one, several, reordered and repeated wrt."""
    made = [("compile", einderiv.compile("tanh(W @ x + b) * c", SHAPES)),
            ("compile 0-d", einderiv.compile("x @ x", {"x": ("n",)})),
            ("compile a view", einderiv.compile("W.T", {"W": ("m", "n")})),
            # gradients that are the inputs themselves (and a view), in and out of order
            ("grad inputs", einderiv.grad("sum(W * V) + x @ y", ["W", "V", "x", "y"],
                                          {k: SHAPES[k] for k in "WVxy"})),
            ("grad inputs reordered", einderiv.grad("sum(W * V) + x @ y + sum(W.T @ b)",
                                                    ["y", "x", "b", "V", "W", "y"],
                                                    {k: SHAPES[k] for k in "WVxyb"}))]
    for kind in ("grad", "value_and_grad", "hessian"):
        for wrt in ("x", ["x"], ["W", "x", "b", "c"], ["c", "b", "x"], ["x", "x"],
                    ["x", "W", "x"]):
            made.append((f"{kind} {wrt}", getattr(einderiv, kind)(LOSS, wrt, SHAPES)))
    for wrt in ("x", ["b", "x"], ["x", "x"]):
        made.append((f"jacobian {wrt}", einderiv.jacobian("tanh(W @ x + b) * c", wrt, SHAPES)))
    return made


def _inputs(rng, f, dtype=np.float64, m=2):
    sizes = {"m": m, "n": 3}
    return {name: rng.standard_normal(tuple(sizes[d] for d in SHAPES[name])).astype(dtype)
            for name in f.lowered.declared}


@pytest.mark.parametrize("label, f", _results(), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_calls_return_owned_results_of_the_inputs_dtype(label, f):
    rng = np.random.default_rng(0)
    for _ in range(3):  # the first call, then the fast path
        arrays = _inputs(rng, f)
        _check(f(**arrays), arrays, f.evaluate_ir(**arrays))
        _check(f(*arrays.values()), arrays, f.evaluate_ir(**arrays))  # positional
    # one array for every input of a shape, and views of one buffer
    one = rng.standard_normal(3)
    same = {name: (one if v.shape == (3,) else v) for name, v in _inputs(rng, f).items()}
    buffer = rng.standard_normal(40)
    views = {name: (buffer[::-3][:3] if v.shape == (3,) else
                    buffer[:v.size].reshape(v.shape) if v.ndim else buffer[5:6].reshape(()))
             for name, v in _inputs(rng, f).items()}
    for arrays in (same, views, same, views):
        _check(f(**arrays), arrays, f.evaluate_ir(**arrays))
    # other dtypes and shapes after fast calls: computed again, not taken by the guard
    for dtype in (np.float32, np.float16):
        arrays = _inputs(rng, f, dtype)
        _check(f(**arrays), arrays, f.evaluate_ir(**arrays), dtype)
    arrays = _inputs(rng, f, m=4)
    _check(f(**arrays), arrays, f.evaluate_ir(**arrays))
    mixed = _inputs(rng, f)
    first = next(iter(mixed))
    mixed[first] = mixed[first].astype(np.float32)  # float32 with float64: float64
    _check(f(**mixed), mixed, f.evaluate_ir(**mixed), np.result_type(*mixed.values()))
    # bad calls after fast calls are errors of einderiv's
    arrays = _inputs(rng, f)
    with pytest.raises(einderiv.InputError):
        f(**arrays, z=np.ones(3))
    with pytest.raises(einderiv.InputError):
        f(*arrays.values(), np.ones(3))
    with pytest.raises(einderiv.InputError):
        f(*arrays.values(), **{first: arrays[first]})
    if "x" in f.inputs:
        with pytest.raises(einderiv.InputError):
            f(**{k: v for k, v in arrays.items() if k != "x"})
        with pytest.raises(einderiv.ShapeError):
            f(**{**arrays, "x": np.ones((3, 2))})  # another rank
        with pytest.raises(einderiv.InputError):
            f(**{**arrays, "x": np.ones(3, complex)})


def test_a_scalar_result_keeps_its_type_on_the_fast_path():
    f = einderiv.compile("x @ y", {"x": ("n",), "y": ("n",)})
    g = einderiv.grad("sum(c * x)", ["c", "x"], {"c": (), "x": ("n",)})
    x, y = np.arange(3.0), np.ones(3)
    for _ in range(3):
        got = f(x=x, y=y)
        assert type(got) is np.float64 and got == 3.0
        dc, dx = g(c=np.array(2.0), x=x)
        assert np.shape(dc) == () and dc == 3.0 and isinstance(dx, np.ndarray)
    assert f(x=x.astype(np.float32), y=y.astype(np.float32)).dtype == np.float32


def test_results_the_caller_changes_do_not_change_the_next_call():
    # constant results (eye, ones, a gradient that is an input) are made anew at every call
    cases = [(einderiv.compile("eye(3)", {}), {}),
             (einderiv.grad("sum(2 * x)", "x", {"x": ("n",)}), {"x": np.ones(3)}),
             (einderiv.grad("sum(x * y)", ["x", "y"], {"x": ("n",), "y": ("n",)}),
              {"x": np.ones(3), "y": np.arange(3.0)}),
             (einderiv.compile("x", {"x": ("n",)}), {"x": np.arange(3.0)})]
    for f, arrays in cases:
        want = [np.array(a) for a in _flat(f(**arrays))]
        for _ in range(3):
            got = _flat(f(**arrays))
            for a, w in zip(got, want):
                np.testing.assert_array_equal(a, w)
                a[...] = 777.0
        for name, value in arrays.items():
            assert not (value == 777.0).any(), name


def test_threads_racing_on_a_result_just_built():
    # every thread calls at once, right after the result is made: several signatures (float64,
    # float32, other sizes) race to build the function and its guard
    wrong = []
    for make in (lambda: einderiv.compile("tanh(W @ x + b) * c", SHAPES),
                 lambda: einderiv.grad(LOSS, ["W", "x", "b", "c"], SHAPES),
                 lambda: einderiv.grad(LOSS, "x", SHAPES),
                 lambda: einderiv.value_and_grad(LOSS, ["x", "W"], SHAPES)):
        f = make()
        start = threading.Barrier(6)

        def work(t, f=f, start=start):
            rng = np.random.default_rng(t)
            start.wait()
            for i in range(6):
                dtype = np.float32 if t % 3 == 0 else np.float64
                arrays = _inputs(rng, f, dtype, m=2 + (t + i) % 2)
                try:
                    _check(f(**arrays) if i % 2 else f(*arrays.values()), arrays,
                           f.evaluate_ir(**arrays), dtype)
                except Exception as e:  # noqa: BLE001 (collected, reported below)
                    wrong.append((t, i, repr(e)))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not wrong, wrong[:3]


def test_a_pickled_or_copied_result_called_after_fast_calls():
    rng = np.random.default_rng(1)
    for f in (einderiv.grad(LOSS, ["W", "x"], SHAPES), einderiv.compile("x @ x", {"x": ("n",)}),
              einderiv.hessian(LOSS, "x", SHAPES)):
        arrays = _inputs(rng, f)
        for _ in range(3):
            f(**arrays)
        for other in (copy.copy(f), copy.deepcopy(f), pickle.loads(pickle.dumps(f))):
            for _ in range(2):
                _check(other(**arrays), arrays, f.evaluate_ir(**arrays))


@pytest.mark.parametrize("backend", ["torch", "jax", "dask"])
def test_other_backends_after_fast_calls(backend):
    pytest.importorskip(backend)
    rng = np.random.default_rng(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the libraries' own deprecation notices)
        made = [einderiv.grad(LOSS, ["W", "x"], SHAPES, backend=backend)]
        if SLOW:
            made += [einderiv.grad(LOSS, "x", SHAPES, backend=backend),
                     einderiv.compile("tanh(W @ x + b) * c", SHAPES, backend=backend)]
        for f in made:
            for _ in range(3):
                arrays = _inputs(rng, f)
                got, want = _flat(f(**arrays)), _flat(f.evaluate_ir(**arrays))
                assert len(got) == len(want)
                for a, b in zip(got, want):
                    a = a.compute() if hasattr(a, "compute") else a
                    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
                    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_random_programs_return_owned_results_on_the_fast_path():
    from hypothesis import HealthCheck, given, seed, settings
    from test_property import DECLARED, make_inputs, programs, source_of

    @seed(23)
    @settings(max_examples=400 if SLOW else 10, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def check(program):
        statements, body, out_shape, _, sizes, data = program
        source = source_of(statements, body)
        arrays = make_inputs(sizes, data)
        f = einderiv.compile(source, DECLARED)
        wrt = sorted(f.inputs)
        made = [f]
        if wrt:
            made.append(einderiv.jacobian(source, wrt, DECLARED))
            if out_shape == ():
                made += [einderiv.grad(source, wrt[::-1], DECLARED),
                         einderiv.grad(source, wrt[0], DECLARED)]
        for r in made:
            given_ = {k: v for k, v in arrays.items() if k in r.lowered.declared}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (the programs' own overflows)
                want = r.evaluate_ir(**given_)
                calls = [r(**given_) for _ in range(3)]
            kinds = [type(a) for a in _flat(calls[0])]
            for got in calls:
                assert [type(a) for a in _flat(got)] == kinds  # first and fast calls alike
                _check(got, given_, want)
    check()
