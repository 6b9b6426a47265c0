"""The numpy fast paths of evaluate/kernels.py agree with the careful forms they shortcut.

Each kernel has a fast path for plain numpy arrays (few calls, in place) beside the form written
against any array namespace; these tests hold the two to the same values, at the edges where
the fast path hands over (overflow bounds, size thresholds, infinities, ties, nan).
"""
from __future__ import annotations

import mpmath
import numpy as np
import pytest

import einderiv.backends
from einderiv.evaluate import kernels


def _sigmoid_exact(x: float) -> float:
    return float(1 / (1 + mpmath.exp(-mpmath.mpf(float(x)))))


@pytest.mark.parametrize("dtype, span", [(np.float64, 745.0), (np.float32, 104.0)])
def test_sigmoid_has_full_relative_precision_on_both_sides_of_the_overflow_bound(dtype, span):
    mpmath.mp.dps = 40
    low = -np.log(np.finfo(dtype).max)  # exp(-x) overflows below it
    x = np.concatenate([np.linspace(-span, span, 801), low + np.linspace(-2, 2, 41),
                        [-1e-30, 0.0, 1e-30]]).astype(dtype)
    tiny = np.finfo(dtype).smallest_normal
    for part in (x[x >= low], x):  # the fast path alone; then with the careful form's entries
        got = kernels.sigmoid(part).astype(np.float64)
        want = np.array([_sigmoid_exact(v) for v in part]).astype(dtype).astype(np.float64)
        normal = np.abs(want) >= tiny
        rel = np.abs(got[normal] - want[normal]) / want[normal]
        assert rel.max() <= 4 * np.finfo(dtype).eps, (dtype, part[normal][rel.argmax()])
        # subnormal results: within a few units of the smallest subnormal
        assert np.all(np.abs(got[~normal] - want[~normal]) <= 4 * np.finfo(dtype).smallest_subnormal)
    assert kernels.sigmoid(x).dtype == dtype


def test_sigmoid_keeps_nan_and_infinities_and_takes_empty_and_0d_arrays():
    got = kernels.sigmoid(np.array([np.nan, np.inf, -np.inf, 0.0]))
    assert np.isnan(got[0]) and got[1] == 1.0 and got[2] == 0.0 and got[3] == 0.5
    assert kernels.sigmoid(np.array([])).shape == (0,)
    assert float(kernels.sigmoid(np.array(-800.0))) == 0.0  # exp(-800) is below subnormals
    assert float(kernels.sigmoid(np.array(2.0))) == pytest.approx(_sigmoid_exact(2.0), rel=1e-15)
    x = np.array([1.0, -2.0])
    kernels.sigmoid(x)
    assert np.array_equal(x, [1.0, -2.0])  # in place on its own array only


def _onehot_reference(x, axis):
    moved = np.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    out = np.zeros(flat.shape)
    for r, row in enumerate(flat):
        out[r, int(np.argmax(row))] = 1.0  # the first at a tie; the first nan
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def _complement_reference(p, axis):
    top = _onehot_reference(p, axis) == 1
    others = np.sum(np.where(top, 0.0, p), axis=axis, keepdims=True)
    mass = np.sum(p, axis=axis, keepdims=True)
    return np.where(top & (mass != 0), others, 1.0 - p)


SHAPES = [((11, 9), -1), ((11, 9), 0), ((3, 5, 7), 1), ((700, 10), -1), ((10, 700), 0),
          ((5, 2000), -1)]


def test_the_shapes_are_on_both_sides_of_the_threshold():
    sizes = [np.prod(shape) for shape, _ in SHAPES]
    assert min(sizes) <= kernels._FEW < max(sizes)


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_argmax_onehot_and_complement_agree_below_and_above_the_size_threshold(shape, axis):
    # (700, 10) and (5, 2000) are above kernels._FEW entries: put_along_axis writes the top;
    # the smaller ones mark it with one compare. Ties, a nan, a slice of zeros, huge leads.
    rng = np.random.default_rng(0)
    z = rng.normal(size=shape) * 3
    z[(0,) * len(shape)] = 60.0  # a confident slice, where 1 - p rounds to 0
    p = kernels.softmax(z, axis=axis)
    index = [0] * len(shape)
    index[axis] = slice(None)
    p2 = p.copy()
    p2[tuple(index)] = 0.0  # a slice of zeros (softmax of all -inf)
    ties = np.round(p, 1)
    for q in (p, p2, ties):
        assert np.array_equal(kernels.argmax_onehot(q, axis=axis), _onehot_reference(q, axis))
        got, want = kernels.complement(q, axis=axis), _complement_reference(q, axis)
        assert np.allclose(got, want, rtol=1e-13, atol=0), np.abs(got - want).max()
    # the confident slice: 1 - p at the top is the sum of the others, not 0
    top = kernels.complement(p, axis=axis)[tuple(i if isinstance(i, int) else
                                                 int(np.argmax(p[tuple(index)]))
                                                 for i in index)]
    assert top > 0
    with_nan = p.copy()
    with_nan[(1,) * len(shape)] = np.nan
    assert np.array_equal(kernels.argmax_onehot(with_nan, axis=axis),
                          _onehot_reference(with_nan, axis))


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_fast_path_matches_the_careful_form_at_infinities_and_overflowing_maxima(axis):
    x = np.array([[0.0, 1.0, 2.0], [np.inf, 0.0, np.inf], [-np.inf] * 3, [1e308, 1e308, 0.0]])
    x = x if axis == -1 else x.T
    got = kernels.softmax(x, axis=axis)
    want = np.array([np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum(), [0.5, 0, 0.5], [0, 0, 0],
                     [0.5, 0.5, 0]])
    want = want if axis == -1 else want.T
    assert np.allclose(got, want, rtol=1e-15, atol=0)
    assert not np.isnan(got).any()


def test_stack_is_numpy_stack_for_numpy_and_the_namespace_stack_otherwise():
    rows = [np.arange(3.0), np.arange(3, dtype=np.float32), np.float64(2.0) * np.ones(3)]
    got = kernels.stack(rows)
    assert np.array_equal(got, np.stack(rows)) and got.dtype == np.stack(rows).dtype
    assert kernels.stack([np.float64(1.0), np.float64(2.0)]).shape == (2,)
    torch = pytest.importorskip("torch")
    t = kernels.stack([torch.ones(2), torch.zeros(2)], torch)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 2)


@pytest.mark.parametrize("shape", [(10, 9), (3, 4, 5), (2, 0, 3), (5, 1)])
def test_stack_along_an_inner_axis_is_numpy_stack(shape):
    # (read off one concatenation, which would also join arrays of different lengths: those
    # must still fail as numpy.stack fails)
    rng = np.random.default_rng(0)
    for axis in range(len(shape) + 1):
        for arrays in ([rng.normal(size=shape) for _ in range(4)],
                       [rng.normal(size=shape[::-1]).T for _ in range(3)],  # not contiguous
                       [rng.normal(size=shape).astype(np.float32), rng.normal(size=shape)]):
            got, want = kernels.stack(arrays, np, axis=axis), np.stack(arrays, axis=axis)
            assert got.shape == want.shape and got.dtype == want.dtype
            assert np.array_equal(got, want)
    with pytest.raises(ValueError):
        kernels.stack([np.ones((2, 3)), np.ones((2, 4))], np, axis=1)


@pytest.mark.parametrize("rows", [4, 40, 300])
def test_the_maximum_along_the_last_axis_is_numpys_at_nan_and_infinities(rows):
    # many rows read each row's maximum at its argmax: the first nan of a row is its maximum
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 7))
    x[0, 3] = np.nan
    x[1] = -np.inf
    x[2, 5] = np.inf
    x[3, [1, 4]] = np.nan, np.inf
    for a in (1, 0):
        got, want = kernels._max_along(x, a), x.max(axis=a, keepdims=True)
        assert got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
    y = x.reshape(rows, 7, 1).repeat(2, axis=2).transpose(0, 2, 1)  # not contiguous
    assert np.array_equal(kernels._max_along(y, 2), y.max(axis=2, keepdims=True),
                          equal_nan=True)
    assert kernels._largest(x) != kernels._largest(x)  # nan
    z = rng.normal(size=(rows, 3))
    assert kernels._smallest(z) == z.min() and kernels._largest(z) == z.max()


@pytest.mark.parametrize("rows", [8, 300])
def test_softmax_and_its_vjp_over_many_rows_match_the_careful_forms(rows):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(rows, 10)) * 30
    x[1] = [np.inf, 0, np.inf] + [0] * 7
    x[2] = -np.inf
    g = rng.normal(size=x.shape)
    np.testing.assert_array_equal(kernels.softmax(x, axis=-1), kernels.softmax(x, axis=(1,)))
    want = kernels.softmax(x[3:], axis=(1,))
    want = g[3:] - want * g[3:].sum(axis=1, keepdims=True)
    got = kernels.log_softmax_vjp(x, g, axis=-1)
    np.testing.assert_allclose(got[3:], want, rtol=1e-12, atol=1e-12)
    with np.errstate(all="raise"):  # (a nan maximum or gradient takes the split, silently)
        x[5, 2] = np.nan
        assert np.isnan(kernels.log_softmax_vjp(x, g, axis=-1)[5]).all()


def test_the_generated_codes_reductions_and_transposes_agree_with_numpy_on_every_backend():
    """kernels.array_sum, array_mean, matrix_transpose and broadcast_copy: numpy arrays take
    their own methods (numpy's module functions cost about a microsecond a call more), the
    other backends their namespace's functions; results as numpy's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5))
    for axis in (None, 0, 2, (0, 2)):
        np.testing.assert_array_equal(kernels.array_sum(x, np, axis=axis), np.sum(x, axis=axis))
        np.testing.assert_array_equal(kernels.array_mean(x, np, axis=axis),
                                      np.mean(x, axis=axis))
    np.testing.assert_array_equal(kernels.matrix_transpose(x, np), np.swapaxes(x, -1, -2))
    scalar = kernels.array_sum(np.float64(2.0), np)  # a numpy scalar: numpy's function
    assert scalar == 2.0
    copied = kernels.broadcast_copy(x[:, :, :1], (3, 4, 5), np)
    np.testing.assert_array_equal(copied, np.broadcast_to(x[:, :, :1], (3, 4, 5)))
    assert copied.flags.owndata and copied.flags.writeable
    filled = kernels.broadcast_copy(np.asarray(1.5, dtype=np.float32), (2, 3), np)
    assert filled.dtype == np.float32 and filled.shape == (2, 3) and filled.flags.writeable
    torch = pytest.importorskip("torch")
    t = torch.tensor(x)
    tx = einderiv.backends.namespace("torch")
    np.testing.assert_allclose(kernels.array_sum(t, tx, axis=(0, 2)).numpy(),
                               x.sum(axis=(0, 2)), rtol=1e-15)
    np.testing.assert_allclose(kernels.array_mean(t, tx, axis=1).numpy(), x.mean(axis=1),
                               rtol=1e-15)
    np.testing.assert_array_equal(kernels.matrix_transpose(t, tx).numpy(),
                                  np.swapaxes(x, -1, -2))
    np.testing.assert_array_equal(
        np.asarray(kernels.broadcast_copy(t[:, :, :1], (3, 4, 5), tx)),
        np.broadcast_to(x[:, :, :1], (3, 4, 5)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("negated", [False, True])
def test_sigmoid_of_a_few_entries_is_exact_on_its_fast_path(dtype, negated):
    # (an unrolled network's gates: fewer than 256 entries go to scipy's expit straight away
    # where no entry is past the overflow bound, else the careful path)
    rng = np.random.default_rng(3)
    bound = 80.0 if dtype is np.float32 else 700.0
    for n in (1, 9, 27, 255):
        x = (rng.uniform(-bound, bound, size=n)).astype(dtype)
        x[0] = -bound if not negated else bound  # far left of the result
        got = kernels.sigmoid(x, negated=negated)
        want = np.array([_sigmoid_exact(-v if negated else v) for v in x])
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_allclose(got, want.astype(dtype), rtol=4 * np.finfo(dtype).eps,
                                   atol=0)
    far = -720.0 if dtype is np.float64 else -100.0  # past the bound: the careful path,
    edge = np.array([far, 1.0], dtype=dtype)  # subnormal exp(far) kept
    got = kernels.sigmoid(-edge if negated else edge, negated=negated)
    assert got[0] == np.exp(edge[:1])[0] > 0
    assert abs(got[1] / _sigmoid_exact(1.0) - 1) < 4 * np.finfo(dtype).eps


@pytest.mark.parametrize("seed", range(6))
def test_softmax_minus_fast_path_agrees_with_the_split(seed):
    # kernels.softmax_minus on numpy arrays of one dtype (softmax's own passes, the split only
    # in confident slices) against its general path (the rule's split at every argmax, taken
    # here by an array type the fast path leaves: a subclass), and both against mpmath where
    # softmax is confident (leads of 30 to 1000)
    import mpmath as mp
    from einderiv.evaluate import kernels

    class Sub(np.ndarray):
        pass

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 7)) * rng.choice([0.01, 1.0, 30.0, 1000.0], size=(40, 1))
    X[0, :2] = 5.0  # a tie for the largest
    X[1, 3] = -np.inf
    Y = rng.dirichlet(np.ones(7), size=40)
    Y[2] = np.eye(7)[X[2].argmax()]
    for axis, x, y in [(1, X, Y), (0, X.T.copy(), Y.T.copy()), (-1, X[5], Y[5])]:
        fast = kernels.softmax_minus(x, y, axis=axis)
        split = np.asarray(kernels.softmax_minus(x.view(Sub), y.view(Sub), axis=axis))
        np.testing.assert_allclose(fast, split, rtol=1e-12, atol=1e-15)
    mp.mp.dps = 40
    fast = kernels.softmax_minus(X, Y, axis=1)
    for i in range(40):
        row = [mp.mpf(v) for v in X[i]]
        top = max(row)
        total = mp.fsum(mp.exp(v - top) for v in row)
        for j in range(7):
            want = mp.exp(row[j] - top) / total - mp.mpf(Y[i, j])
            assert abs(fast[i, j] - float(want)) <= 1e-13 * max(abs(float(want)), 1e-300) \
                or abs(fast[i, j] - float(want)) < 1e-16, (i, j, fast[i, j], float(want))
