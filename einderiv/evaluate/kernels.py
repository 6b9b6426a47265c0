"""Evaluation kernels that the array libraries lack, named by `kernel.NAME` in rule tables.

Each is written against an array namespace `xp` obtained from its argument, so the same kernel
serves numpy and the other backends, and each is numerically stable for large arguments.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from ..backends import array_namespace as _xp


_EXP_OVERFLOW: dict = {}  # dtype -> a bound above which exp(-x) never overflows
# From this many entries on, sigmoid's four numpy passes are faster than scipy's expit (measured:
# even near 128 entries, expit 2x faster at 9, numpy 3x faster at 10^5).
_MANY = 256
_EXPIT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))  # expit's own loops
_EXPIT = []  # scipy.special.expit, imported at the first use (scipy loads in 0.1 s)


def _expit():
    if not _EXPIT:
        from scipy.special import expit
        _EXPIT.append(expit)
    return _EXPIT[0]


# numpy's ufuncs as module names: sigmoid's fast path calls four of them on a logistic loss's
# every gradient, and an attribute of `np` is a lookup more each (0.15 us of a 27 us gradient).
_nd, _exp, _negative, _subtract, _divide = (np.ndarray, np.exp, np.negative, np.subtract,
                                            np.divide)


def sigmoid(x, *, negated=False, times=None, negative=False):
    """sigmoid(x) = 1 / (1 + exp(-x)); sigmoid(-x) with `negated`; times `times` (an array of
    the result's shape and dtype, a Python number, or anything the product broadcasts) where
    given; the result negated with `negative`. The generated code calls these for
    `-(X.T @ (sigmoid(-m) * y))`, a logistic loss's gradient: 1 / (1 + exp(m)) needs no
    negation of m, y / (1 + exp(m)) one division for the reciprocal and the product (three
    passes fewer than the formula as written), and -y / (1 + exp(m)) the sign in the pass that
    adds 1 (a negation of the product's result less). They are keywords only: a rule that gives
    this kernel a second argument is refused, not negated."""
    if type(x) is _nd:
        n = x.size
        if n >= _MANY:
            # The generated code's common call, in few steps (a logistic loss's 1000 entries:
            # the Python of the general path below was 0.8 us of its 4; out given by position,
            # the extreme read inline, as _largest and _smallest): a float array whose bound is
            # known, no entry past it, and a factor that folds into the division (a dtype by
            # identity: numpy's builtin ones are singletons; any other takes the path below).
            dtype = x.dtype
            low = _EXP_OVERFLOW.get(dtype)  # (a float dtype the path below has seen)
            if low is not None and (times is None or type(times) is float or (
                    type(times) is _nd and times.dtype is dtype and times.shape == x.shape)):
                if negated:
                    if (x.item(x.argmax()) if n <= _FEW_EXTREME else
                            np.maximum.reduce(x, None)) <= -low:
                        s = _exp(x)
                        if negative:  # -(1 + exp(x)), in the pass that adds 1
                            _subtract(-1.0, s, s)
                        else:
                            s += 1.0  # (a float: an int 1 is converted each call, 0.15 us)
                        return _divide(1.0 if times is None else times, s, s)
                elif (x.item(x.argmin()) if n <= _FEW_EXTREME else
                        np.minimum.reduce(x, None)) >= low:
                    s = _negative(x)
                    _exp(s, s)
                    if negative:
                        _subtract(-1.0, s, s)
                    else:
                        s += 1.0
                    return _divide(1.0 if times is None else times, s, s)
        elif times is None and n and not negative:
            # An unrolled network's gates, a few entries a call: scipy's expit where no entry
            # is past the bound (below), with nothing else in the way (1.9 -> 1.2 us on 27
            # entries, where expit itself takes 0.4: an LSTM step calls this once).
            low = _EXP_OVERFLOW.get(x.dtype)  # (a float dtype the path below has seen)
            if low is not None and x.ndim and x.dtype in _EXPIT_TYPES and (
                    (x.item(x.argmax()) <= -low) if negated else (x.item(x.argmin()) >= low)):
                return _expit()(np.negative(x) if negated else x)
    if negative:
        return -_sigmoid(x, negated, times)
    return _sigmoid(x, negated, times)


def _sigmoid(x, negated, times):
    """sigmoid's general path: any array, dtype or bound (see sigmoid)."""
    if isinstance(x, np.ndarray) and x.ndim and x.dtype.kind == "f":
        # 1 / (1 + exp(-x)) keeps full relative precision wherever exp(-x) is finite: far
        # right exp(-x) is tiny and 1 + it rounds as 1 should, far left 1 + exp(-x) is
        # exp(-x) to rounding and its reciprocal exp(x) as precise. scipy's expit computes it
        # in one call, the cheapest on a few entries (an LSTM's gates); on many, four passes in
        # place at numpy's vectorized exp are 3x faster (logistic losses spend their time
        # here). Where exp(-x) overflows (x < -709.78 in float64, -88.72 in float32),
        # sigmoid(x) is exp(x) to rounding, subnormal down to -745 (-104): those entries are
        # computed again, as exp(x), and with a factor as (times exp(x / 2)) exp(x / 2), the
        # product taken before the value underflows (1024 sigmoid(-18) in float16 is 1.56e-5,
        # where sigmoid is 0). A nan makes the minimum (negated, the maximum) nan, and stays
        # nan. (The bound is kept per dtype: unrolled networks call this on many small arrays.)
        if not x.size:
            return _times(np.empty_like(x), times)
        low = _EXP_OVERFLOW.get(x.dtype)
        if low is None:
            # (a unit inside: exp rounds near its own bound, and float32's may overflow there)
            low = _EXP_OVERFLOW[x.dtype] = 1 - np.log(np.finfo(x.dtype).max)
        finite = (_largest(x) <= -low) if negated else (_smallest(x) >= low)  # (no nan)
        if finite and x.size < _MANY and x.dtype in _EXPIT_TYPES:  # (no float16 loop)
            return _times(_expit()(np.negative(x) if negated else x), times)
        fold = type(times) is float or (type(times) is np.ndarray and times.shape == x.shape
                                        and times.dtype == x.dtype)
        if finite or fold or times is None:  # (else a broadcast product: the form below)
            # (exp(-x) at most exp(-low): far left, where it would overflow, is computed again)
            if negated:
                s = np.exp(x) if finite else np.exp(np.minimum(x, -low))
            else:
                s = np.negative(x)
                if not finite:
                    np.minimum(s, -low, out=s)
                np.exp(s, out=s)
            s += 1.0
            # (a division of 1 is numpy's vector loop; its reciprocal has none: 2x slower)
            s = np.divide(times if fold else 1.0, s, out=s)
            if finite:
                return s if fold else _times(s, times)
            far = np.greater(x, -low) if negated else np.less(x, low)
            u = x[far]
            if negated:
                u = np.negative(u)
            if times is None:
                s[far] = np.exp(u)
            else:
                h = np.exp(np.multiply(u, 0.5, out=u))
                s[far] = (times if type(times) is float else times[far]) * h * h
            return s
    if negated:
        x = -x
    xp = _xp(x)
    if times is None:
        # exp(-|x|) never overflows, and z / (1 + z) keeps full relative precision far left,
        # where 1 / (1 + exp(-x)) overflows and 0.5 * (1 + tanh(x / 2)) cancels to 0.
        z = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    # That form times `times`, except far left: below the log of the smallest normal number
    # (-708.4 in float64, -87.3 in float32, -9.7 in float16) sigmoid(x) = exp(x) is subnormal
    # or 0 where its product need not be (a loss scaled by 1024 in float16: 1.56e-5 at x = -18,
    # where sigmoid is 0). There times meets exp(x / 2) twice, before the value underflows, as
    # the fast form's one division keeps it. (Splitting everywhere would double exp's error.)
    dtype = getattr(x, "dtype", None)  # (none for a Python number; integers: float64's)
    floating = dtype is not None and xp.isdtype(dtype, "real floating")
    far = x < float(np.log((xp.finfo(dtype) if floating else np.finfo(float)).smallest_normal))
    e = xp.exp(xp.where(far, 0.5 * x, -xp.abs(x)))
    g = xp.where(far, e, 1.0)
    return times * (xp.where(x >= 0, 1.0, e) / (1.0 + e * g)) * g


# Up to this many entries, an array's extreme is read at its argmax (argmin): 0.3 us where
# numpy's reduction to one value costs 1 us of setup (an array of 1000 entries); beyond, the
# reduction's wider vector loop is faster (10 us against 14 at 10^5 entries).
_FEW_EXTREME = 16384


def _largest(x):
    """The largest entry of numpy array x (not empty) as a number: nan where x has one."""
    if x.size <= _FEW_EXTREME:
        return x.item(x.argmax())  # (argmax stops at the first nan: that nan)
    return np.maximum.reduce(x, None)


def _smallest(x):
    """The smallest entry of numpy array x (not empty) as a number: nan where x has one."""
    if x.size <= _FEW_EXTREME:
        return x.item(x.argmin())
    return np.minimum.reduce(x, None)


def _all_finite(x):
    """Whether every entry of numpy array x is finite: its finite entries counted, where
    `isfinite(x).all()` spends a microsecond more in a reduction's setup."""
    return np.count_nonzero(np.isfinite(x)) == x.size


def _max_along(x, a):
    """The maximum of numpy array x (not empty along a) along axis a, kept: nan in a slice that
    has one, as numpy's max. Along the last axis of many rows it is read at each row's argmax:
    numpy's max reduces every row in an inner loop of its own, 11 us for 256 rows of 10 logits
    where argmax and one pick take 5.8 us (160 and 62 us for 4096 rows)."""
    n = x.shape[a]
    rows = x.size // n
    if a == x.ndim - 1 and rows >= 32 and x.flags.c_contiguous:
        k = x.argmax(axis=a)  # (the first nan of a row where it has one)
        return x.reshape(rows, n)[np.arange(rows), k.reshape(rows)].reshape(*k.shape, 1)
    return x.max(axis=a, keepdims=True)


def _times(s, times):
    return s if times is None else s * times


# sech2 from tanh(x): 1 - tanh(x) ** 2 where it is at least this, cosh where it cancels. The
# rounding of tanh(x) (an ulp or two) costs 1 - tanh(x) ** 2 about 1 / _SECH2_FLOOR ulps
# relative at the floor (measured against mpmath on 420,000 points: 59 ulps in float64 and 56
# in float32 at 1 / 64; 7 and 9 at 1 / 8): far inside the stability tests' 1e-10 and 1e-4,
# where the plain formula loses every digit from |x| = 19 (float64) on.
_SECH2_FLOOR = 1 / 64
_SECH2_FROM_TANH = 8192  # entries: below, cosh's one pass is cheaper than the passes it saves


def sech2(x, tanh=None):
    """sech(x) ** 2 = 1 / cosh(x) ** 2: 1 - tanh(x) ** 2 without its cancellation (all digits
    lost from |x| = 19 on). The reciprocal is taken before squaring, so that only the result
    underflows: where cosh(x) overflows to inf, sech(x) ** 2 is below 1 / max ** 2, far below
    the smallest subnormal number, and 0 is right.

    `tanh`: numpy's tanh(x), where the caller has it (generated code passes the forward
    pass's). On a large float array, sech2 is then 1 - tanh ** 2 (two passes, where cosh, a
    division and a square take three, cosh itself as long as four: 25 against 51 us on 32768
    entries) wherever that is at least 1 / 64, within about 64 ulps, and 1 / cosh(x) ** 2 at
    the entries below (|x| > 2.8), where it would cancel; at every entry where more than
    1 / 16 of them are below (a saturated layer), which is then 1.4 times the exact path."""
    if isinstance(x, np.ndarray) and x.ndim and x.dtype.kind == "f":  # (a 0-d one gives scalars)
        # (float16's ulp is 1e-3: 64 of them would be 6%. tanh C-contiguous too: 1 - tanh ** 2
        # takes its memory order, and the entries below the floor are written through a flat
        # view of it, which in another order would be a copy)
        if tanh is not None and x.size >= _SECH2_FROM_TANH and \
                type(x) is type(tanh) is np.ndarray and tanh.dtype == x.dtype in _EXPIT_TYPES \
                and tanh.shape == x.shape and x.flags.c_contiguous and tanh.flags.c_contiguous:
            return _sech2_from_tanh(x, tanh)
        with np.errstate(over="ignore"):
            r = np.cosh(x)
        # in place: three passes, no new array after the first (1 / r, not reciprocal(r): numpy
        # has a vector loop for the division only, 12 us against 23 on 32768 entries)
        np.divide(1.0, r, out=r)
        return np.square(r, out=r)
    xp = _xp(x)
    # (clipped where cosh would overflow, to where its reciprocal squared is 0 all the same:
    # a lazy array library computes outside any errstate, and would warn)
    r = 1 / xp.cosh(_below_overflow(x, xp))
    return r * r


# Entries below the floor are gathered, computed and scattered back (about 10 ns each, where
# cosh on the whole array takes 1.5) while at most 1 / this of them: past that (a saturated
# layer: 78% of 32768 entries at x ~ 10 N(0, 1), 296 us against 50 for the exact path alone)
# the exact path on every entry, 1.4 times its own time after the passes already spent.
_SECH2_FEW_BELOW = 16


def _sech2_from_tanh(x, t):
    """sech2(x) as 1 - t ** 2 from t = tanh(x) (both C-contiguous), and from cosh where that
    is below the floor (inf and the entries tanh rounds to +-1 included; nan stays nan: no
    comparison holds); from cosh everywhere where many entries are below it."""
    s = np.multiply(t, t)
    np.subtract(1.0, s, out=s)
    below = np.less(s, _SECH2_FLOOR)
    n = np.count_nonzero(below)
    if n > s.size // _SECH2_FEW_BELOW:  # the exact path's passes, in place into s
        with np.errstate(over="ignore"):
            np.cosh(x, out=s)
        np.divide(1.0, s, out=s)
        return np.square(s, out=s)
    if n:
        cancelled = np.flatnonzero(below)
        s.reshape(-1)[cancelled] = sech2(x.reshape(-1)[cancelled])
    return s


def dsigmoid(x):
    """sigmoid'(x), the logistic density: (1 / (2 cosh(x / 2))) ** 2 = sech(x / 2) ** 2 / 4,
    exact where sigmoid(x) (1 - sigmoid(x)) cancels (none of its digits left from x = 37 on).
    As in sech2, the reciprocal is taken before squaring: cosh(x / 2) overflows only from
    |x| = 1420, where the density (e^-|x|) is far below the smallest subnormal number and 0 is
    right; down to there the square keeps its subnormal digits."""
    if isinstance(x, np.ndarray) and x.ndim and x.dtype.kind == "f":
        h = x * 0.5  # four passes, in place after this one
        with np.errstate(over="ignore"):
            np.cosh(h, out=h)
        np.divide(0.5, h, out=h)
        return np.square(h, out=h)
    xp = _xp(x)
    r = 0.5 / xp.cosh(_below_overflow(0.5 * x, xp))  # (as in sech2)
    return r * r


def _below_overflow(x, xp):
    """x clipped to +-log(max) of its dtype, where cosh and exp are still finite."""
    dtype = getattr(x, "dtype", None)
    floating = dtype is not None and xp.isdtype(dtype, "real floating")
    bound = float(np.log(float((xp.finfo(dtype) if floating else np.finfo(float)).max)))
    return xp.clip(x, -bound, bound)


def logcosh(x):
    """log(cosh(x)) without cosh's overflow (from |x| = 710) or the rounding of cosh(x) to 1
    (below |x| = 1e-8, where log(cosh(x)) is x ** 2 / 2): log1p(2 sinh(x / 2) ** 2) (cosh - 1
    exactly) below |x| = 1, |x| - log 2 + log1p(exp(-2 |x|)) from there, where both terms
    keep their digits."""
    xp = _xp(x)
    a = xp.abs(x)
    # (the near form of at most 1: sinh would overflow where the far form is taken, and a
    # lazy array library computes outside any errstate)
    near = xp.log1p(2 * xp.sinh(xp.minimum(a, 1.0) / 2) ** 2)
    far = a + (xp.log1p(xp.exp(-2 * a)) - 0.6931471805599453)
    return xp.where(a < 1, near, far)


def relu(x):
    xp = _xp(x)
    if xp is np:  # no array of zeros (a fresh allocation the size of x, as slow as the max)
        return np.maximum(x, 0)
    return xp.maximum(x, xp.zeros_like(x))


def cbrt(x):
    """The real cube root, negative for x < 0 (numpy's cbrt), by the array library's own; torch
    has none: there sign(x) |x| ** (1/3), whose exponent is 1/3 rounded (a relative error up to
    about 1e-14 at |x| = 1e300, a few ulps for ordinary x)."""
    xp = _xp(x)
    own = getattr(xp, "cbrt", None)
    if own is not None:
        return own(x)
    return xp.sign(x) * xp.abs(x) ** (1.0 / 3.0)


def softplus(x):
    xp = _xp(x)
    return xp.logaddexp(xp.zeros_like(x), x)


def step(x):
    """Heaviside step with step(0) = 0: the derivative of relu."""
    xp = _xp(x)
    if isinstance(x, (int, float)):
        return float(x > 0)  # a Python number, which does not widen float32 arrays it meets
    if xp is np:
        x = np.asarray(x)
        return (x > 0).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    return xp.astype(x > 0, x.dtype)


def logdet(X):
    """log |det X|, as numpy's slogdet. A symmetric positive definite numpy matrix (a
    covariance, a kernel matrix) takes the Cholesky factorization instead, 2 sum(log(diag(L))):
    half the work of slogdet's LU (about 2x faster from n = 100). Any other matrix, or one whose
    factorization fails (not positive definite), takes slogdet."""
    spd = _spd_logdet(X)
    if spd is not None:
        return spd
    return _xp(X).linalg.slogdet(X)[1]


def _spd_logdet(X):
    """log det X from the Cholesky factor of a symmetric positive definite numpy matrix, or
    None for any other (or one whose factorization fails)."""
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f" and X.size \
            and np.array_equal(X, X.T):
        from scipy.linalg import lapack
        (potrf,) = lapack.get_lapack_funcs(("potrf",), (X,))
        factor, info = potrf(X, lower=1, clean=0)  # LAPACK's: no copy of the triangle, no check
        if info == 0:
            return 2 * np.sum(np.log(np.diagonal(factor)))
    return None


def logdet_real(X):
    """log(det X) in real numbers, what `log(det(X))` is rewritten to: log |det X| (as
    `logdet`) where det X > 0, -inf where X is singular, nan where det X < 0 (the log of a
    negative number), from slogdet's sign and log, so finite where det X under- or overflows
    (a 10 x 10 covariance of scale 1e-33 has det 1e-330, 0 in floating point, and log(det(X))
    is -inf there; this is -760)."""
    spd = _spd_logdet(X)
    if spd is not None:
        return spd
    xp = _xp(X)
    sign, value = xp.linalg.slogdet(X)
    nan = xp.full_like(value, float("nan"))
    return xp.where(sign > 0, value, xp.where(sign == 0, xp.full_like(value, -float("inf")), nan))


def cholesky(X):
    """The lower Cholesky factor L (L L^T = S) of the symmetric part S = (X + X^T) / 2 of each
    matrix of a stack, as JAX's: for a symmetric X it is numpy's, which reads X's lower
    triangle only. Through the symmetric part, the derivative by X is symmetric too (JAX's and
    PyTorch's), and it is the derivative of this function at every X."""
    xp = _xp(X)
    S = (X + xp.swapaxes(X, -1, -2)) / 2
    if _library(X) == "dask":  # dask's (and array-api-compat's for dask) is the upper factor
        import dask.array
        return dask.array.linalg.cholesky(S, lower=True)
    return xp.linalg.cholesky(S)


def lower_half(X):
    """1 below the diagonal, 1/2 on it, 0 above, shaped like X: the mask that cholesky's
    derivative takes the lower triangle with (Murray 2016's Phi)."""
    xp = _xp(X)
    n = X.shape[-1]
    rows = xp.arange(n)[:, None]
    cols = xp.arange(n)[None, :]
    if xp is not np:  # made on X's device
        import array_api_compat
        device = array_api_compat.device(X)
        rows, cols = xp.arange(n, device=device)[:, None], xp.arange(n, device=device)[None, :]
    mask = xp.where(rows > cols, 1.0, xp.where(rows == cols, 0.5, 0.0))
    return xp.zeros_like(X) + xp.astype(mask, X.dtype) if xp is not np else \
        np.broadcast_to(mask.astype(X.dtype), X.shape).copy()


def solve(A, b):
    """The solution x of A x = b for each matrix of a stack A [..., n, n]: b [..., n] (with
    A's batch axes) is a vector per matrix, b [..., n, k] k columns per matrix. numpy's solve
    takes only a 1-d b as a vector, so a stack of vectors is passed as one column each."""
    xp = _xp(A)
    if b.ndim == A.ndim - 1 and A.ndim > 2:
        return xp.linalg.solve(A, b[..., None])[..., 0]
    return xp.linalg.solve(A, b)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(axis) if isinstance(axis, tuple) else (axis,)


def logsumexp(x, axis=None):
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if not axes:
        return x
    if any(x.shape[a] == 0 for a in axes):  # a sum of no terms: log(0) = -inf; max() fails
        return xp.log(xp.sum(xp.exp(x), axis=axes))
    m = xp.max(x, axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    return xp.squeeze(_log_total(x - m, axes, xp) + m, axis=axes)


def _log_total(shifted, axes, xp):
    """log(sum(exp(shifted))) over `axes`, keeping them, where the maximum of `shifted` is 0
    (or every entry is -inf): log1p of the sum less one term exp(0) = 1. The log of the rounded
    sum, log(1 + 9.4e-14) at logits 0 and -30, would keep only 3 digits of its 9.4e-14."""
    top = shifted == 0
    others = xp.sum(xp.where(top, xp.zeros_like(shifted), xp.exp(shifted)), axis=axes,
                    keepdims=True)
    # Ties at the maximum add their 1 each; none (all -inf) gives log1p(-1) = log(0) = -inf.
    return xp.log1p(others + (xp.sum(_like(top, shifted, xp), axis=axes, keepdims=True) - 1))


def log_softmax(x, axis=-1):
    """log(softmax(x)) as x - logsumexp(x): finite where softmax underflows to 0, and exact
    where it is near 0 (the largest entry's, -log1p of the others' share).

    At infinite entries it is the log of softmax's limit (see `softmax`): the entries at +inf
    share the whole mass (log(1/k) for k of them, -inf elsewhere), and a slice all -inf has
    none (-inf everywhere)."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):  # no entries to normalize; max() would fail
        return x
    m = xp.max(x, axis=axes, keepdims=True)
    m = xp.where(m == -float("inf"), xp.zeros_like(m), m)  # -inf - -inf would be nan
    # At +inf entries x == m and x - m is inf - inf: 0 there, as at a finite maximum. numpy
    # warns of that discarded inf - inf, and of log1p(-1) = -inf for a slice all -inf.
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = xp.where(x == m, xp.zeros_like(x), x - m)
        total = _log_total(shifted, axes, xp)
    # A slice all -inf stays so (-inf - -inf would be nan).
    return shifted - xp.where(total == -float("inf"), xp.zeros_like(total), total)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`, shifted by the maximum so that nothing overflows.

    At infinite entries it is the limit of finite ones: the entries at +inf share the whole
    mass. A slice whose entries are all -inf (log-probabilities of impossible events) has none:
    0 everywhere, the gradient of its logsumexp, which is -inf there whatever the entries' rates
    (the zero gradient that JAX's maintainers agreed to in jax-ml/jax#6811 and PyTorch's issue
    #31829 asks for; both libraries still give nan)."""
    if type(x) is np.ndarray and type(axis) is int and x.ndim and x.shape[axis]:
        # The common case, in numpy, in few calls (an unrolled network normalizes many small
        # arrays: an int axis and the array's own methods halve numpy's per-call cost).
        m = _max_along(x, axis % x.ndim)
        if _all_finite(m):  # every maximum finite
            e = np.exp(x - m)
            e /= _row_sums(e, axis % x.ndim)  # a sum >= 1: exp(0) is in it
            return e
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):  # no entries to normalize; max() would fail
        return xp.exp(x)
    m = xp.max(x, axis=axes, keepdims=True)
    m = xp.where(m == -float("inf"), xp.zeros_like(m), m)  # -inf - -inf would be nan
    # At +inf entries x == m and x - m is inf - inf: their exp(0) is 1, the others' is 0.
    with np.errstate(invalid="ignore"):  # numpy warns of that discarded inf - inf
        e = xp.exp(xp.where(x == m, xp.zeros_like(x), x - m))
    s = xp.sum(e, axis=axes, keepdims=True)
    return e / xp.where(s == 0, xp.ones_like(s), s)  # s == 0: every entry -inf, and e is 0


# Up to this many entries, argmax_onehot and complement mark the top entries with one compare
# against the positions along the axis (two calls, where numpy's per-call cost is the time);
# beyond, put_along_axis writes one entry per slice (fewer passes over a large array).
_FEW = 4096
_POSITIONS: dict = {}  # (n, axis, ndim) -> arange(n) along that axis, read-only


def _positions(n, axis, ndim):
    key = (n, axis, ndim)
    found = _POSITIONS.get(key)
    if found is None:
        found = np.arange(n).reshape([-1 if d == axis % ndim else 1 for d in range(ndim)])
        found.flags.writeable = False
        _POSITIONS[key] = found
    return found


def argmax_onehot(x, axis=-1):
    """1 at the largest entry along `axis` (the first in C order over those axes, at a tie),
    0 elsewhere: the pivot that the derivative rules of softmax split on. Exactly one entry of
    each slice is 1, so `1 - argmax_onehot(x)` is 0 there and 1 elsewhere, exactly."""
    xp = _xp(x)
    axes = tuple(a % x.ndim for a in _axes(axis, x.ndim)) if x.ndim else ()
    if x.ndim == 0 or not axes or any(x.shape[a] == 0 for a in axes):
        return _like(xp.ones_like(x) if not axes else xp.zeros_like(x), x, xp)
    if xp is np and len(axes) == 1:  # the common case: one pass for argmax, one to write
        k = x.argmax(axis=axes[0], keepdims=True)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        if x.size <= _FEW:
            return (_positions(x.shape[axes[0]], axes[0], x.ndim) == k).astype(dtype)
        out = np.zeros(x.shape, dtype)
        np.put_along_axis(out, k, 1, axis=axes[0])
        return out
    rest = tuple(a for a in range(x.ndim) if a not in axes)
    order = rest + axes
    moved = xp.permute_dims(x, order)
    size = 1
    for a in axes:
        size *= x.shape[a]
    flat = xp.reshape(moved, (*moved.shape[:len(rest)], size))
    k = xp.argmax(flat, axis=-1, keepdims=True)
    if xp is np:
        positions = np.arange(size)
    else:  # made on x's device
        import array_api_compat
        positions = xp.arange(size, device=array_api_compat.device(x))
    onehot = xp.reshape(_like(positions == k, x, xp), moved.shape)
    return xp.permute_dims(onehot, tuple(order.index(a) for a in range(x.ndim)))


def complement(p, axis=-1):
    """1 - p for probabilities p (summing to 1 along `axis`, as softmax's), exact where an
    entry is near 1: the largest entry's is the sum of the others (argmax_onehot picks it).
    1 - softmax(x) rounds to 9.3e-14 at logits 30 and 0 (3 digits) and to 0 from a lead of
    37 on, where the others' softmax, each exact, sum to e^-30 or e^-100. Every other entry is
    at most 1/2, and 1 - p is exact there. A slice of zeros (softmax where every entry is -inf)
    has nothing to sum: 1 - 0 = 1 there."""
    xp = _xp(p)
    axes = _axes(axis, p.ndim)
    if p.ndim == 0 or not axes or any(p.shape[a] == 0 for a in axes):
        return 1 - p
    if xp is np and len(axes) == 1 and p.dtype.kind == "f":  # the common case, in fewer passes
        a = axes[0]
        k = p.argmax(axis=a, keepdims=True)
        if p.size <= _FEW:
            top = _positions(p.shape[a], a, p.ndim) == k
            rest = np.where(top, 0, p)
        else:
            rest = p.copy()
            np.put_along_axis(rest, k, 0, axis=a)
        others = rest.sum(axis=a, keepdims=True)
        if not others.all():  # a slice of zeros (every entry -inf in softmax) keeps 1 - 0
            mass = others + p.max(axis=a, keepdims=True)  # the top entry: p at k
            others = np.where(mass != 0, others, 1)
        out = np.subtract(1, p, out=rest)
        if p.size <= _FEW:
            np.copyto(out, others, where=top)
        else:
            np.put_along_axis(out, k, others, axis=a)
        return out
    top = argmax_onehot(p, axis)
    rest = p * (1 - top)
    others = xp.sum(rest, axis=axes, keepdims=True)
    mass = xp.sum(p, axis=axes, keepdims=True)
    return xp.where((top != 0) & (mass != 0), others, 1 - p)


def log1m_softmax(x, axis=-1):
    """log(1 - softmax(x)) along `axis`, exact at every entry: log1p(-s) where s is at most
    1/2, and at a slice's largest entry above 1/2 the log of the others' share, as the
    logsumexp of the other entries less that of all (shifted by the maximum). log(1 -
    softmax(x)), the loss of unlikelihood training, is -inf from a lead of 37 on, and
    log(complement(softmax(x))) loses the digits of the small entries (log(1 - 1e-18) is 0)
    and is -inf where the others' softmax underflows (a lead of 750), where this is -750."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    s = softmax(x, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        small = xp.log1p(-s)
        if x.ndim == 0 or not axes or any(x.shape[a] == 0 for a in axes):
            return small
        top = (argmax_onehot(s, axis) != 0) & (s > 0.5)
        m = xp.max(x, axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
        shifted = xp.where(x == m, xp.zeros_like(x), x - m)
        every = _log_total(shifted, axes, xp)  # log(sum(exp(x - m))), from log1p
        rest = xp.where(top, xp.full_like(x, -float("inf")), shifted)
        m2 = xp.max(rest, axis=axes, keepdims=True)
        m2 = xp.where(xp.isfinite(m2), m2, xp.zeros_like(m2))
        others = _log_total(xp.where(rest == m2, xp.zeros_like(rest), rest - m2), axes, xp) + m2
        return xp.where(top, others - every, small)


def logsumexp_weighted(x, w, axis=None):
    """log(sum(w * exp(x))) over `axis` (every axis by default), for weights w of any sign
    that broadcast against x (scipy's logsumexp(x, b=w); the axes count in the broadcast
    shape): shifted by the largest x whose weight is not 0, so that nothing overflows and the
    largest term is w there, not 0 (a mixture's log-likelihood at -1000, where exp underflows
    and the log is -inf). nan where the sum is negative, -inf where it is 0, as the log of the
    sum; the shift cancels nothing that the sum does not."""
    xp = _xp(x)
    shape = np.broadcast_shapes(tuple(x.shape), tuple(getattr(w, "shape", ())))
    if tuple(x.shape) != shape:  # (w broadcasts in the arithmetic; the axes count in shape)
        x = xp.broadcast_to(x, shape)
    axes = _axes(axis, x.ndim)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if not axes:
            return x + xp.log(w)
        if any(x.shape[a] == 0 for a in axes):  # a sum of no terms: log(0) = -inf
            return xp.log(xp.sum(w * xp.exp(x), axis=axes))
        live = w != 0
        m = xp.max(xp.where(live, x, xp.full_like(x, -float("inf"))), axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
        terms = xp.where(live, w * xp.exp(xp.where(x == m, xp.zeros_like(x), x - m)),
                         xp.zeros_like(x))
        total = xp.sum(terms, axis=axes, keepdims=True)
        return xp.squeeze(xp.log(total) + m, axis=axes)


def softmax_minus(x, y, axis=-1):
    """softmax(x) - y for y shaped like x, exact where an entry of softmax(x) is near 1: at
    each slice's largest entry m it is (1 - y_m) - (1 - s_m), with 1 - s_m the sum of the
    others' softmax (`complement`), and 1 - y_m exact where y_m is near 1 (the right class of a
    cross-entropy, where s_m - y_m is minus the others' share: e^-30 at a lead of 30, where
    softmax(x) - y keeps 3 digits, and e^-100 at 100, where it is 0). Elsewhere s - y, which
    cancels only as much as y and s agree (s <= 1/2 there). The gradient of a cross-entropy
    written with logsumexp, `sum(logsumexp(X, axis=1)) - sum(Y * X)`, is this."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    a = _one_float_axis(x, y, axes)
    if a is not None:
        # The common case in the passes of softmax(x) - y (it was 3x their time): the split
        # only in slices where softmax is confident (as log_softmax_vjp), where 1 - s_m is the
        # others' share; in the others s_m <= 2/3, and s - y loses no more than its operands'
        # rounding (the split's (1 - y_m) - (1 - s_m) lost digits where s_m is small: a flat
        # softmax of 1000 classes, y_m near s_m).
        m = _max_along(x, a)
        if _all_finite(m):
            e = x - m
            np.exp(e, out=e)
            total = _row_sums(e, a)  # >= 1: exp(0) is in it
            out = np.divide(e, total)
            np.subtract(out, y, out=out)
            if _smallest(total) < _CONFIDENT:
                _confident_minus(e, y, out, total, a)
            return out
    s = softmax(x, axis)
    if x.ndim == 0 or not axes or any(x.shape[a] == 0 for a in axes):
        return s - y
    top = argmax_onehot(s, axis)
    with np.errstate(invalid="ignore"):  # inf - inf of infinite y, as s - y gives it too
        return xp.where(top != 0, (1 - y) - complement(s, axis), s - y)


def _one_float_axis(x, y, axes) -> int | None:
    """The axis of softmax_minus's and log_softmax_vjp's fast path, or None where they take the
    general one: two numpy float arrays of one shape and dtype, not empty, along one axis."""
    if type(x) is np.ndarray and type(y) is np.ndarray and x.shape == y.shape and \
            x.dtype == y.dtype and x.dtype.kind == "f" and len(axes) == 1 and x.size:
        return axes[0] % x.ndim
    return None


# A slice whose exponentials (the largest exp(0) = 1) sum below this has one entry of softmax
# above 2/3 and no tie for it: only there does `g - s * sum(g)` lose digits (it is
# g_m * (1 - s_m) - s_m * (the others' g), and 1 - s_m is rounded from s_m). Elsewhere its
# rounding is a few units in the last place of the terms, as the exact split's.
_CONFIDENT = 1.5


def log_softmax_vjp(x, g, axis=-1):
    """The vector-Jacobian product of log_softmax at `x` with cotangent `g` (shaped like x):
    `g - softmax(x) * sum(g)` along `axis`, one call where the pullback through log_softmax's
    Jacobian (rules/tensor.rules) is a dozen. The gradient of a cross-entropy
    `-sum(y * log_softmax(z))` is `log_softmax_vjp(z, -y)`, `softmax(z) * sum(y) - y`.

    Exact as the Jacobian's split on the argmax: at a slice's largest entry m where softmax is
    confident, the difference `g_m - s_m * sum(g)` cancels, and it is computed as
    `g_m * (1 - s_m) - s_m * (the others' g)`, with 1 - s_m the sum of the others' softmax
    (`complement`). Infinite or nan maxima, several axes and the other array libraries take
    that split as the rule writes it."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    a = _one_float_axis(x, g, axes)
    if a is not None:
        m = _max_along(x, a)
        g_total = _row_sums(g, a)
        # (a sum of g that overflows, of finite terms, is left to the split, which sums the
        # top entry's apart)
        if _all_finite(m) and _all_finite(g_total):
            e = x - m
            np.exp(e, out=e)
            total = _row_sums(e, a)  # >= 1: exp(0) is in it
            out = e * (g_total / total)
            np.subtract(g, out, out=out)
            if _smallest(total) < _CONFIDENT:
                _confident_vjp(e, g, out, total, a)
            return out
    # The rule's split (rules/tensor.rules, log_softmax), term by term.
    s = softmax(x, axis)
    top = argmax_onehot(s, axis)
    rest = 1 - top
    g_rest = xp.sum(g * rest, axis=axes, keepdims=True)
    g_top = xp.sum(g * top, axis=axes, keepdims=True)
    return g * (top * complement(s, axis) + rest) - s * g_rest - rest * s * g_top


def _row_sums(x, a):
    """x summed along axis a, kept. Short rows of a matrix along its last axis, as a product
    with ones: numpy's reduction runs an inner loop per row, 4x slower than BLAS on a batch of
    256 rows of 10 (a classifier's logits). Only up to numpy's pairwise block (128 entries),
    which numpy sums with a few running sums as BLAS's dot does: above it numpy's rounding
    grows with the log of the length and the dot's with the length (80 float32 ulps on a row
    of 32000 equal terms, a vocabulary's softmax)."""
    if a == 1 and x.ndim == 2 and x.flags.c_contiguous and 1 < x.shape[1] <= _PAIRWISE_BLOCK:
        return (x @ np.ones(x.shape[1], x.dtype))[:, None]
    return x.sum(axis=a, keepdims=True)


_PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE


def _confident_vjp(e, g, out, total, a):
    """The entries of log_softmax_vjp at the top of each confident slice, exactly, in place."""
    # the slices as rows of the other axes (views: writes to om reach out), a vector one row
    em, gm, om, tm = (np.moveaxis(v, a, -1)[None] if v.ndim == 1 else np.moveaxis(v, a, -1)
                      for v in (e, g, out, total))
    where = np.nonzero(tm[..., 0] < _CONFIDENT)
    rows_e, rows_g = em[where], gm[where]  # copies: one slice per row
    k = rows_e.argmax(axis=-1)
    picked = np.arange(len(k))
    g_top = rows_g[picked, k]
    rows_e[picked, k] = 0.0
    rows_g[picked, k] = 0.0
    others = rows_e.sum(axis=-1)  # sum of the others' exp: 1 - s_m = others / total, exactly
    om[(*where, k)] = (g_top * others - rows_g.sum(axis=-1)) / (1.0 + others)


def _confident_minus(e, y, out, total, a):
    """The entries of softmax_minus at the top of each confident slice, exactly, in place:
    (1 - y_m) - (1 - s_m), with 1 - s_m the others' exponentials over the total."""
    em, ym, om, tm = (np.moveaxis(v, a, -1)[None] if v.ndim == 1 else np.moveaxis(v, a, -1)
                      for v in (e, y, out, total))
    where = np.nonzero(tm[..., 0] < _CONFIDENT)
    rows_e = em[where]  # a copy: one slice per row
    k = rows_e.argmax(axis=-1)
    picked = np.arange(len(k))
    rows_e[picked, k] = 0.0
    others = rows_e.sum(axis=-1)
    om[(*where, k)] = (1.0 - ym[(*where, k)]) - others / tm[where][..., 0]


def _number(*values) -> bool:
    return all(isinstance(v, (int, float)) for v in values)


def _like(value, x, xp):
    """`value` (numbers or a bool array) as an array of `x`'s floating dtype, or float64."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or (xp is np and np.dtype(dtype).kind != "f"):
        dtype = np.float64 if xp is np else xp.float64
    if xp is np:
        return np.asarray(value).astype(dtype)
    return xp.astype(value, dtype)


def where(c, a, b):
    """`a` where `c` is nonzero, else `b` (numpy's `where`, with a number as the condition):
    a select, which never multiplies, so `where(step(x), inf, 0)` is 0 where x <= 0."""
    if type(a) is np.ndarray and type(c) is np.ndarray and a.dtype in _BITS and (
            (type(b) is float and b == 0.0) or
            (type(b) is np.ndarray and b.shape == () and b == 0 and b.dtype == a.dtype)) and \
            math.copysign(1.0, b) > 0:  # (a branch of -0.0 is numpy's where's)
        # numpy's where branches on every entry (3.5 ns each on a random mask, 7x a product):
        # the same select, branch-free, keeps a's bits where c is nonzero and +0.0 elsewhere
        bits = _BITS[a.dtype]
        if c.dtype == np.bool_ and c.shape == a.shape:
            # (the generated code's `u > 0`: a cast, 1.7x faster than comparing with 0 into
            # the wider type; a cast of the bool, which is 1 for any nonzero byte, not of its
            # bytes, which numpy need not store as 0 and 1: np.frombuffer of packed flags)
            out = c.astype(bits)  # the only new array
        else:
            shape = a.shape if c.shape == a.shape else np.broadcast_shapes(c.shape, a.shape)
            out = np.empty(shape, bits)  # the only new array
            np.not_equal(c, 0, out=out)
        np.negative(out, out=out)  # 0 or every bit set
        np.bitwise_and(out, a.view(bits), out=out)
        return out.view(a.dtype)
    if _number(c, a, b):
        return float(a if c else b)  # a Python number, which does not widen float32 arrays
    arrays = [v for v in (a, b, c) if not isinstance(v, (int, float))]
    xp = _xp(arrays[0])
    out = xp.where(c != 0, a, b)
    if _number(a, b):  # numbers only in the branches: the result takes the condition's dtype
        out = _like(out, c, xp)
    return out


_BITS = {np.dtype(np.float64): np.uint64, np.dtype(np.float32): np.uint32}


def heaviside(x, h0):
    """numpy's heaviside: 0 where x < 0, `h0` where x == 0, 1 where x > 0.
    `heaviside(a - b, 0.5)` is the derivative of maximum(a, b) by a, split evenly at ties."""
    if _number(x, h0):
        return 1.0 if x > 0 else float(h0) if x == 0 else 0.0
    like = h0 if isinstance(x, (int, float)) else x
    xp = _xp(like)
    return _like(xp.where(x > 0, 1.0, xp.where(x == 0, h0, 0.0)), like, xp)


def dilate(x, k, n, axis=0):
    """x's entries k apart along `axis`, in zeros of length n (entry i at i * k): the adjoint
    of the step x[::k], O(size)."""
    xp = _xp(x)
    if xp is np:
        out = np.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], dtype=x.dtype)
        out[(slice(None),) * axis + (slice(None, None, k),)] = x
        return out
    # Without writing into an array (jax's are immutable): each entry followed by k - 1
    # zeros, the axis then cut to n.
    moved = xp.moveaxis(x, axis, -1)
    gaps = xp.zeros((*moved.shape, k - 1), dtype=x.dtype)
    spread = xp.concat([moved[..., None], gaps], axis=-1)
    flat = xp.reshape(spread, (*moved.shape[:-1], moved.shape[-1] * k))[..., :n]
    return xp.moveaxis(flat, -1, axis)


def _mask(holds, a, b):
    """The comparison `holds(a, b)` as a mask of 0 and 1 in the arguments' float dtype (a
    Python number for two numbers, which does not widen float32 arrays it meets)."""
    if _number(a, b):
        return float(holds(a, b))
    like = b if isinstance(a, (int, float)) else a
    return _like(holds(a, b), like, _xp(like))


def less(a, b):
    return _mask(operator.lt, a, b)


def less_equal(a, b):
    return _mask(operator.le, a, b)


def greater(a, b):
    return _mask(operator.gt, a, b)


def greater_equal(a, b):
    return _mask(operator.ge, a, b)


def equal(a, b):
    return _mask(operator.eq, a, b)


def not_equal(a, b):
    return _mask(operator.ne, a, b)


def argmax(x, axis=None):
    """The position of the largest entry over `axis` (every axis by default: the position in
    x flattened, as numpy's), the first at a tie, as a float of x's dtype (every value of the
    language is one). Over several axes, the position in those axes flattened (C order)."""
    return _argbest(x, axis, "argmax")


def argmin(x, axis=None):
    """As argmax, of the smallest entry."""
    return _argbest(x, axis, "argmin")


def _argbest(x, axis, name):
    xp = _xp(x)
    axes = tuple(a % x.ndim for a in _axes(axis, x.ndim)) if x.ndim else ()
    if not axes:  # a scalar, or no axis: each entry is the only one of its slice
        return _like(xp.zeros_like(x), x, xp)
    rest = tuple(a for a in range(x.ndim) if a not in axes)
    moved = xp.permute_dims(x, rest + axes) if rest + axes != tuple(range(x.ndim)) else x
    size = 1  # spelled out: -1 cannot be inferred when another axis is empty
    for a in axes:
        size *= x.shape[a]
    flat = xp.reshape(moved, (*moved.shape[:len(rest)], size))
    return _like(getattr(xp, name)(flat, axis=-1), x, xp)


def adjugate(X):
    """The adjugate (transposed cofactor matrix) of each square matrix of a stack: det(X) inv(X)
    where X is regular, and exact where it is singular, where that product cannot be formed.

    From the SVD X = U diag(s) V^T: adj(X) = det(U) det(V) V diag(p) U^T with p_i the product of
    every singular value but s_i, a product with no division, so a zero singular value is as
    good as any other (at rank n - 1, adj(X) = +-(s_1 ... s_{n-1}) v_n u_n^T).
    """
    xp = _xp(X)
    n = X.shape[-1]
    if n == 0 or any(d == 0 for d in X.shape[:-2]):
        return xp.zeros_like(X)
    U, s, Vh = xp.linalg.svd(X)
    if xp is np:
        others = np.eye(n, dtype=bool)
    else:  # made on X's device
        import array_api_compat
        others = xp.eye(n, dtype=xp.bool, device=array_api_compat.device(X))
    # p_i = prod over j != i of s_j: row i of the matrix that is s with 1 on the diagonal.
    p = xp.prod(xp.where(others, xp.ones_like(s)[..., None, :], s[..., None, :]), axis=-1)
    sign = xp.sign(xp.linalg.det(U) * xp.linalg.det(Vh))  # +-1, rounding removed
    V, Ut = xp.swapaxes(Vh, -1, -2), xp.swapaxes(U, -1, -2)
    return sign[..., None, None] * ((V * p[..., None, :]) @ Ut)


def det_hessian(X):
    """The second derivatives of det at each square matrix of a stack, H[..., i, j, k, l] =
    d^2 det(X) / dX[i, j] dX[k, l] (the second cofactors, signed), shaped [..., n, n, n, n]:
    exact at any rank, where det(X) * (inv(X)[j, i] inv(X)[l, k] - inv(X)[j, k] inv(X)[l, i])
    cannot be formed.

    From the SVD X = U diag(s) V^T: det(X + E) = c det(diag(s) + U^T E V) with c = det(U) det(V),
    whose second-order part gives H[i, j, k, l] = c sum over a != b of P[a, b] (U[i, a] V[j, a]
    U[k, b] V[l, b] - U[i, a] V[l, a] U[k, b] V[j, b]), P[a, b] the product of every singular
    value but s_a and s_b: products, no division, so a zero singular value is as good as any.
    """
    xp = _xp(X)
    n = X.shape[-1]
    batch = tuple(X.shape[:-2])
    if n == 0 or any(d == 0 for d in batch):
        return xp.zeros_like(X[..., None, None] * X[..., None, None, :, :])
    U, s, Vh = xp.linalg.svd(X)
    if xp is np:
        eye = np.eye(n, dtype=bool)
    else:  # made on X's device
        import array_api_compat
        eye = xp.eye(n, dtype=xp.bool, device=array_api_compat.device(X))
    # P[a, b] = prod over m not in {a, b} of s_m; 0 on the diagonal (a == b has no term).
    others = eye[:, None, :] | eye[None, :, :]  # [a, b, m]: m is a or b
    ones = xp.ones_like(s)[..., None, None, :]
    P = xp.prod(xp.where(others, ones, s[..., None, None, :]), axis=-1)
    P = xp.where(eye, xp.zeros_like(P), P)
    # W[a] = u_a v_a^T, flattened to a row of n * n: the first term is W^T P W.
    W = xp.swapaxes(U, -1, -2)[..., :, :, None] * Vh[..., :, None, :]
    W = xp.reshape(W, (*batch, n, n * n))
    first = xp.reshape(xp.swapaxes(W, -1, -2) @ (P @ W), (*batch, n, n, n, n))
    sign = xp.sign(xp.linalg.det(U) * xp.linalg.det(Vh))  # +-1, rounding removed
    # The second term is the first with j and l exchanged.
    return sign[..., None, None, None, None] * (first - xp.swapaxes(first, -3, -1))


def det_hvp(X, E):
    """det's Hessian times a direction, per square matrix of a stack: D[..., i, j] = sum over
    k, l of det_hessian(X)[..., i, j, k, l] E[..., k, l] (= the same sum over i, j of
    det_hessian(X)[..., i, j, k, l] E[..., i, j]: the Hessian is symmetric), E shaped like X.
    It is the derivative of adj(X).T along E, and the pullback through adj of a cotangent G is
    det_hvp(X, G.T). O(n^3) time and O(n^2) memory, where the Hessian is n^4; exact at any
    rank, as det_hessian.

    det_hessian's SVD form, H[i, j, k, l] = c sum over a != b of P[a, b] (U[i, a] V[j, a]
    U[k, b] V[l, b] - U[i, a] V[l, a] U[k, b] V[j, b]), summed with E[k, l]: the first term's
    U[k, b] E[k, l] V[l, b] is M[b, b] and the second's U[k, b] E[k, l] V[l, a] is M[b, a],
    with M = U^T E V, so D = c U (diag(P @ diag(M)) - P * M^T) V^T.
    """
    xp = _xp(X)
    n = X.shape[-1]
    if n == 0 or any(d == 0 for d in X.shape[:-2]):
        return xp.zeros_like(X * E)
    U, s, Vh = xp.linalg.svd(X)
    if xp is np:
        eye = np.eye(n, dtype=bool)
    else:  # made on X's device
        import array_api_compat
        eye = xp.eye(n, dtype=xp.bool, device=array_api_compat.device(X))
    # P[a, b] = prod over m not in {a, b} of s_m: the products of the others in row a of s
    # with s_a made 1 (running products, no division: exact at a zero s_m), 0 on the diagonal.
    others = xp.where(eye, xp.ones_like(s)[..., None, :], s[..., None, :])
    P = xp.where(eye, xp.zeros_like(others), prod_others(others, axis=-1))
    M = xp.swapaxes(U, -1, -2) @ E @ xp.swapaxes(Vh, -1, -2)
    inner = P @ xp.sum(xp.where(eye, M, xp.zeros_like(M)), axis=-1)[..., None]  # P diag(M)
    K = xp.where(eye, inner, -P * xp.swapaxes(M, -1, -2))
    sign = xp.sign(xp.linalg.det(U) * xp.linalg.det(Vh))  # +-1, rounding removed
    return sign[..., None, None] * (U @ K @ Vh)


def _det_svd(X):
    """The SVD of each matrix of a stack as det's third derivatives use it: (xp, U, s, Vh, c,
    eye), c = det(U) det(Vh) (+-1, rounding removed), eye the boolean identity on X's device."""
    xp = _xp(X)
    U, s, Vh = xp.linalg.svd(X)
    if xp is np:
        eye = np.eye(X.shape[-1], dtype=bool)
    else:  # made on X's device
        import array_api_compat
        eye = xp.eye(X.shape[-1], dtype=xp.bool, device=array_api_compat.device(X))
    return xp, U, s, Vh, xp.sign(xp.linalg.det(U) * xp.linalg.det(Vh)), eye


def _leaving_three(s, eye, xp, start=0, stop=None):
    """P[..., a, b, c] for a in range(start, stop) (every a by default): the product of every
    singular value but s_a, s_b and s_c (running products, no division: exact at a zero s_m),
    0 where two of a, b, c are equal."""
    first = eye[start:stop]  # [a, m]: m is a
    two = first[:, None, :] | eye[None, :, :]  # [a, b, m]: m is a or b
    rows = xp.where(two, xp.ones_like(s)[..., None, None, :], s[..., None, None, :])
    P = prod_others(rows, axis=-1)  # [a, b, c]: the product over m != c of rows[a, b, m]
    apart = ~(first[:, :, None] | two)  # a != b, and c is neither
    return xp.where(apart, P, xp.zeros_like(P))


def _pair_units(U, Vh, xp):
    """W[..., a, i * n + j] = U[i, a] V[j, a]: the matrix u_a v_a^T of each a, flattened."""
    n = U.shape[-1]
    W = xp.swapaxes(U, -1, -2)[..., :, :, None] * Vh[..., :, None, :]
    return xp.reshape(W, (*U.shape[:-2], n, n * n))


def det_third_vv(X, E, F):
    """det's third derivative along two directions, per square matrix of a stack: D[..., i, j]
    = the sum over k, l, p, q of d^3 det(X) / dX[i, j] dX[k, l] dX[p, q] E[k, l] F[p, q], E and
    F shaped like X (symmetric in them). It is the derivative of det_hvp(X, E) along F, so an
    hvp through adj or det_hvp is O(n^3) time and O(n^2) memory, and exact at any rank.

    From the SVD X = U diag(s) V^T: det(X + Z) = c det(diag(s) + U^T Z V), c = det(U) det(V),
    whose third-order part in three directions is c times the sum over ordered triples of
    distinct a, b, e of P[a, b, e] (the product of every singular value but those three) times
    the sum over the permutations t of (a, b, e) of sgn(t) A[a, t(a)] B[b, t(b)] C[e, t(e)]
    (A, B, C the directions turned, U^T Z V: 3 x 3 minors, expanded). Its gradient by the first,
    with M = U^T E V and N = U^T F V, is c U G V^T: G[a, a] = the sum over b, e of P[a, b, e]
    (M[b, b] N[e, e] - M[b, e] N[e, b]), and off the diagonal G[a, x] = the sum over e of
    P[a, x, e] (M[x, e] N[e, a] + N[x, e] M[e, a] - M[x, a] N[e, e] - N[x, a] M[e, e]).
    """
    xp = _xp(X)
    if X.shape[-1] == 0 or any(d == 0 for d in X.shape[:-2]):
        return xp.zeros_like(X * E * F)
    xp, U, s, Vh, c, eye = _det_svd(X)
    Ut, V = xp.swapaxes(U, -1, -2), xp.swapaxes(Vh, -1, -2)
    M, N = Ut @ E @ V, Ut @ F @ V
    Mt, Nt = xp.swapaxes(M, -1, -2), xp.swapaxes(N, -1, -2)
    zero = xp.zeros_like(M)
    m = xp.sum(xp.where(eye, M, zero), axis=-1)  # the diagonals
    d = xp.sum(xp.where(eye, N, zero), axis=-1)
    Q = (m[..., :, None] * d[..., None, :] - M * Nt)[..., None, :, :]
    # P is n^3: taken a few rows a at a time (all at once for small n), so that memory stays
    # O(n^2) as det_hvp's
    n = X.shape[-1]
    step = max(1, 4096 // (n * n))
    on, off = [], []
    for start in range(0, n, step):
        stop = min(n, start + step)
        P = _leaving_three(s, eye, xp, start, stop)  # [a, x, e]
        on.append(xp.sum(xp.sum(P * Q, axis=-1), axis=-1))
        cross = xp.sum(P * (M[..., None, :, :] * Nt[..., start:stop, None, :]
                            + N[..., None, :, :] * Mt[..., start:stop, None, :]), axis=-1)
        off.append(cross - Mt[..., start:stop, :] * xp.sum(P * d[..., None, None, :], axis=-1)
                   - Nt[..., start:stop, :] * xp.sum(P * m[..., None, None, :], axis=-1))
    on, off = xp.concat(on, axis=-1), xp.concat(off, axis=-2)
    G = xp.where(eye, on[..., :, None] * xp.ones_like(M), off)
    return c[..., None, None] * (U @ G @ Vh)


def det_third_v(X, E):
    """det's third derivative along one direction, per square matrix of a stack: T[..., i, j,
    k, l] = the sum over p, q of d^3 det(X) / dX[i, j] dX[k, l] dX[p, q] E[p, q], shaped
    [..., n, n, n, n]: the derivative of det_hessian(X) along E, and det_hvp(X, E)'s Jacobian
    by X. O(n^5) time, as det_hessian; exact at any rank.

    det_third_vv's expansion with the gradient taken by two directions: with N = U^T E V, its
    diagonal d, K[a, e] = the sum over b of P[a, b, e] d[b] and w_a = u_a v_a^T, T = c (F - F
    with j and l exchanged), F = the sum over a, e of K[a, e] w_a[i, j] w_e[k, l], less Y and Y
    with its pairs exchanged, Y[i, j, k, l] = the sum over a, b, e of P[a, b, e] N[b, a]
    U[i, a] V[j, b] w_e[k, l].
    """
    xp = _xp(X)
    n = X.shape[-1]
    batch = tuple(X.shape[:-2])
    if n == 0 or any(d == 0 for d in batch):
        return xp.zeros_like((X * E)[..., None, None] * X[..., None, None, :, :])
    xp, U, s, Vh, c, eye = _det_svd(X)
    N = xp.swapaxes(U, -1, -2) @ E @ xp.swapaxes(Vh, -1, -2)
    P = _leaving_three(s, eye, xp)
    d = xp.sum(xp.where(eye, N, xp.zeros_like(N)), axis=-1)
    K = xp.sum(P * d[..., None, :, None], axis=-2)
    W = _pair_units(U, Vh, xp)
    first = xp.swapaxes(W, -1, -2) @ (K @ W)
    # R[e, a, b] = P[a, b, e] N[b, a]; (U R[e] V^T)[i, j] is Y's first pair
    b = len(batch)
    R = xp.permute_dims(P * xp.swapaxes(N, -1, -2)[..., :, :, None], (*range(b), b + 2, b, b + 1))
    Y = xp.reshape(U[..., None, :, :] @ R @ Vh[..., None, :, :], (*batch, n, n * n))
    Y = xp.swapaxes(Y, -1, -2) @ W
    F = xp.reshape(first - Y - xp.swapaxes(Y, -1, -2), (*batch, n, n, n, n))
    return c[..., None, None, None, None] * (F - xp.swapaxes(F, -3, -1))


# The permutations of three column axes (as their positions among six) with their signs.
_COLUMN_ORDERS = (((1, 3, 5), 1), ((3, 1, 5), -1), ((5, 3, 1), -1), ((1, 5, 3), -1),
                  ((3, 5, 1), 1), ((5, 1, 3), 1))


def det_third(X):
    """det's third derivatives at each square matrix of a stack, T[..., i, j, k, l, p, q] =
    d^3 det(X) / dX[i, j] dX[k, l] dX[p, q], shaped [..., n, n, n, n, n, n] (n^6 per matrix,
    O(n^7) time): exact at any rank. With det_third_vv's P and w_a = u_a v_a^T, F = the sum
    over a, b, e of P[a, b, e] w_a[i, j] w_b[k, l] w_e[p, q], and T is c times the sum over the
    permutations t of the column indices (j, l, q) of sgn(t) F with its columns so permuted
    (det_hessian's first term less its j-l exchange, one order up).
    """
    xp = _xp(X)
    n = X.shape[-1]
    batch = tuple(X.shape[:-2])
    b = len(batch)
    if n == 0 or any(d == 0 for d in batch):
        return xp.zeros_like(X[..., None, None, None, None] * X[..., None, None, :, :, None, None]
                             * X[..., None, None, None, None, :, :])
    xp, U, s, Vh, c, eye = _det_svd(X)
    P = _leaving_three(s, eye, xp)
    W = _pair_units(U, Vh, xp)  # [a, (i, j)]
    # F[(p, q), (k, l), (i, j)] in three products, one index of P at a time (F is symmetric
    # in its pairs, as P in its indices)
    F = xp.reshape(xp.reshape(P, (*batch, n * n, n)) @ W, (*batch, n, n, n * n))
    F = xp.reshape(xp.permute_dims(F, (*range(b), b, b + 2, b + 1)), (*batch, n ** 3, n)) @ W
    F = xp.swapaxes(xp.reshape(F, (*batch, n, n ** 4)), -1, -2) @ W
    F = xp.reshape(F, (*batch, *(n,) * 6))
    T = None
    for (j, l, q), sign in _COLUMN_ORDERS:
        term = xp.permute_dims(F, (*range(b), *(b + a for a in (0, j, 2, l, 4, q))))
        T = term if T is None else T + term if sign > 0 else T - term
    return c[(...,) + (None,) * 6] * T


def inv_regular(X):
    """inv(X) of each square matrix of a stack, refused (numpy's LinAlgError, which the user
    sees as an EvaluationError) where a matrix is singular to working precision: its smallest
    singular value at most sqrt(eps) times its largest (a condition number beyond 6.7e7 in
    float64, 2.9e3 in float32), where inv(X) is rounding noise or raises. det's fourth and
    higher derivatives go through it: they cancel terms of the size of inv(X) to a result of
    det's, so their relative error is about eps times the condition number, and a refusal is
    better than garbage. Under tracing (jax.jit), where there is no value to test, a refused
    matrix gives NaN.
    """
    xp = _xp(X)
    if X.shape[-1] == 0 or any(d == 0 for d in X.shape[:-2]):
        return xp.linalg.inv(X)
    s = np.linalg.svd(X, compute_uv=False) if xp is np else xp.linalg.svdvals(X)
    limit = float(xp.finfo(X.dtype).eps) ** 0.5
    regular = s[..., -1] > limit * s[..., 0]
    try:
        refused = not bool(xp.all(regular))
    except Exception:  # a traced array (jax.jit): no value to test
        return xp.where(regular[..., None, None], xp.linalg.inv(X), float("nan"))
    if refused:
        with np.errstate(divide="ignore", invalid="ignore"):  # inf at an exactly singular one
            worst = float(xp.max(s[..., 0] / s[..., -1]))
        raise np.linalg.LinAlgError(
            f"a matrix is singular to working precision (condition number {worst:.2g}, beyond "
            f"{1 / limit:.2g}): det's fourth and higher derivatives go through its inverse "
            f"(inv_regular), and would be rounding noise there; det's derivatives up to the "
            f"third (det_hessian, det_hvp, det_third, det_third_v, det_third_vv) are exact at "
            f"any matrix")
    return xp.linalg.inv(X)


def norm(x, axis=None):
    """The 2-norm over `axis` (every axis by default: a vector's norm, a matrix's Frobenius
    norm), scaled by the largest magnitude first so that squares of entries beyond 1e154
    do not overflow (nor those below 1e-154 underflow) where the norm itself is finite."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if not axes:
        return xp.abs(x)
    if any(x.shape[a] == 0 for a in axes):  # a sum of no terms: 0; max() fails
        return xp.sqrt(xp.sum(x * x, axis=axes))
    m = xp.max(xp.abs(x), axis=axes, keepdims=True)
    # Scaling by 0 (all zero) or inf (an infinite entry: the norm is inf) would give nan.
    m = xp.where((m > 0) & (m < float("inf")), m, xp.ones_like(m))
    y = x / m
    return xp.squeeze(m, axis=axes) * xp.sqrt(xp.sum(y * y, axis=axes))


def max_weights(x, axis=-1):
    """The derivative of max(x) over `axis` by x: 1 / k at each of the k entries equal to the
    maximum of their slice, 0 elsewhere (a tie splits the gradient evenly, as JAX's max)."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if x.ndim == 0 or not axes or any(x.shape[a] == 0 for a in axes):
        return _like(xp.ones_like(x), x, xp)
    top = _like(x == xp.max(x, axis=axes, keepdims=True), x, xp)
    return top / xp.sum(top, axis=axes, keepdims=True)


def prod_others(x, axis=-1):
    """The product of the other entries of each entry's slice along `axis`, the derivative of
    prod(x) by x: exact where entries are 0 (prod(x) / x would be 0 / 0 there), from the
    running products before and after each entry (cumprod), O(n) per slice."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if x.ndim == 0 or not axes or any(x.shape[a] == 0 for a in axes):
        return _like(xp.ones_like(x), x, xp)
    axes = tuple(a % x.ndim for a in axes)
    rest = tuple(a for a in range(x.ndim) if a not in axes)
    order = rest + axes
    moved = xp.permute_dims(x, order)
    size = 1  # spelled out: -1 cannot be inferred when another axis is empty
    for a in axes:
        size *= x.shape[a]
    flat = xp.reshape(moved, (*moved.shape[:len(rest)], size))
    ones = xp.ones_like(flat[..., :1])
    before = xp.cumulative_prod(xp.concat([ones, flat[..., :-1]], axis=-1), axis=-1) \
        if hasattr(xp, "cumulative_prod") else xp.cumprod(xp.concat([ones, flat[..., :-1]],
                                                                     axis=-1), axis=-1)
    tail = xp.flip(xp.concat([flat[..., 1:], ones], axis=-1), axis=-1)
    after = xp.flip(xp.cumulative_prod(tail, axis=-1) if hasattr(xp, "cumulative_prod")
                    else xp.cumprod(tail, axis=-1), axis=-1)
    out = xp.reshape(before * after, moved.shape)
    return xp.permute_dims(out, tuple(order.index(a) for a in range(x.ndim)))


# -- special functions: scipy.special on numpy arrays, the backend's own elsewhere -------------
#
# numpy has no erf, lgamma or digamma. On numpy arrays (and numbers) these kernels call
# scipy.special, a core dependency; on another library's arrays they call that library's own
# (torch.special, jax.scipy.special, cupyx.scipy.special), which runs on its device and, for
# jax, under jit. dask arrays take scipy's ufuncs lazily, chunk by chunk (__array_ufunc__).

_SPECIAL_MODULES = {"torch": "torch.special", "jax": "jax.scipy.special",
                    "jaxlib": "jax.scipy.special", "cupy": "cupyx.scipy.special"}


def _library(*args) -> str | None:
    """The top-level module of the first argument that is not numpy's (or a number), or None."""
    for a in args:
        if not isinstance(a, (np.ndarray, np.generic, int, float)):
            return type(a).__module__.split(".")[0]
    return None


def _special(name: str, *args):
    """scipy.special's `name` of `args`, or the backend's function of that name: a Python
    number for numbers (which does not widen float32 arrays), the inputs' float dtype for
    numpy arrays (scipy's loops may widen float32 to float64)."""
    import importlib
    library = _library(*args)
    if library in _SPECIAL_MODULES:
        return getattr(importlib.import_module(_SPECIAL_MODULES[library]), name)(*args)
    import scipy.special
    out = getattr(scipy.special, name)(*args)
    if _number(*args):
        return float(out)
    floats = [a.dtype for a in args if isinstance(a, (np.ndarray, np.generic))
              and a.dtype.kind == "f"]
    if floats and library is None:
        dtype = np.result_type(*floats)
        if out.dtype != dtype:
            out = np.asarray(out).astype(dtype)
    return out


def erf(x):
    """The error function, 2/sqrt(pi) times the integral of exp(-t ** 2) from 0 to x."""
    return _special("erf", x)


def erfc(x):
    """1 - erf(x), exact where erf(x) is near 1 (erfc(10) is 2.1e-45, 1 - erf(10) is 0)."""
    return _special("erfc", x)


def xlogy(x, y):
    """x log(y), 0 where x == 0 (even where y == 0; scipy's xlogy)."""
    return _special("xlogy", x, y)


def xlog1py(x, y):
    """x log(1 + y), 0 where x == 0 (even where y == -1; scipy's xlog1py)."""
    return _special("xlog1py", x, y)


def lgamma(x):
    """log |Gamma(x)| (scipy's gammaln), finite where Gamma(x) overflows (from x = 171.6)."""
    return _special("gammaln", x)


def digamma(x):
    """The derivative of lgamma, psi(x) = Gamma'(x) / Gamma(x)."""
    return _special("digamma", x)


def trigamma(x):
    """The derivative of digamma: polygamma(1, x)."""
    return polygamma(1, x)


def polygamma(n, x):
    """The n-th derivative of digamma (scipy's polygamma). The order n is rounded down to a
    whole number, so that polygamma is piecewise constant in n (its derivative by n is 0, as
    floor's); a negative order gives nan."""
    library = _library(n, x)
    if library is None:
        return _special("polygamma", float(np.floor(n)) if _number(n) else np.floor(n), x)
    xp = _xp(x if _library(x) else n)
    if library == "torch":  # torch takes one Python int as the order: one call per order
        import torch
        like = x if isinstance(x, torch.Tensor) else n
        k = torch.floor(torch.as_tensor(n, dtype=like.dtype, device=like.device))
        x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
        out = torch.full(torch.broadcast_shapes(k.shape, x.shape), float("nan"),
                         dtype=like.dtype, device=like.device)
        for v in torch.unique(k).tolist():
            if v >= 0:
                out = torch.where(k == v, torch.special.polygamma(int(v), x), out)
        return out
    if _number(n) and hasattr(x, "dtype"):  # trigamma's 1: an array on x's device (cupy's
        n = xp.asarray(float(n), dtype=x.dtype)  # floor and polygamma take no Python number)
    if library == "dask":  # scipy's polygamma is not a ufunc: it would compute the whole array
        import dask.array as da
        import scipy.special
        return da.map_blocks(scipy.special.polygamma, *da.broadcast_arrays(xp.floor(n), x))
    if library in ("jax", "jaxlib"):  # jax takes an order of an integer dtype only
        return _special("polygamma", xp.astype(xp.floor(xp.asarray(n)), xp.int32), x)
    return _special("polygamma", xp.floor(n), x)


def gelu(x):
    """x Phi(x), Phi the standard normal distribution function: the exact GELU (PyTorch's
    default, jax.nn.gelu(approximate=False)), not its tanh approximation. Phi is scipy's ndtr,
    exact in the left tail where 0.5 (1 + erf(x / sqrt(2))) cancels."""
    library = _library(x)
    if library == "torch":
        import torch
        return torch.nn.functional.gelu(x)
    if library in ("jax", "jaxlib"):
        import jax
        return jax.nn.gelu(x, approximate=False)
    return x * _special("ndtr", x)


def stack(arrays, xp=np, axis=0):
    """The arrays, of one shape, stacked along a new axis (numpy.stack's). For numpy along the
    first axis, `numpy.array` of the list: numpy.stack spends about 3.5 us a call in Python, and
    the vectorizer stacks an unrolled network's per-step values many times. `xp`: the namespace
    of the generated code, whose own stack serves every other backend."""
    if xp is np:
        if axis == 0:
            return np.array(arrays)
        first = arrays[0] if arrays else None
        if type(first) is np.ndarray and 0 < axis < first.ndim and \
                all([type(a) is np.ndarray and a.shape == first.shape for a in arrays]):
            # Along an inner axis, one concatenation, read as the stack: 2.5 us where
            # numpy.stack takes 6.3 (four rows of an LSTM's gate inputs, 10 x 9 each).
            shape = first.shape
            return np.concatenate(arrays, axis=axis).reshape(
                shape[:axis] + (len(arrays),) + shape[axis:])
    return xp.stack(arrays, axis=axis)


# Up to this many entries in all, the weights of a stacked product are stacked, one product
# for all of them; beyond, unless the rows outnumber each weight's columns, one product per
# weight (measured, one thread: 11 rows of 9 x 9 weights, 2.7 us stacked against 6.7; 8 rows of
# 300 x 300 weights, 283 against 235; 100 rows of 64 x 64, 78 against 85).
_STACKED_ENTRIES = 16384


def stacked_product(a, weights, shape, xp=np, transposed=True):
    """`a @ reshape(stack(weights), shape).T` (weights [h, k], shape (G * h, k)), or, not
    `transposed`, `a @ reshape(stack(weights, axis=1), shape)` (weights [k, h], shape
    (k, G * h)): the products of `a` with several weights of one shape, side by side along the
    last axis (an LSTM's input projections of all gates, projections.py). Small weights are
    stacked, for one matrix product; large ones, where the rows of `a` are fewer than the k a
    weight contracts, are multiplied one by one, each product written into its columns of the
    result: the stack is a copy of every weight on every call, and a freed array of more than
    128 KB is unmapped by glibc and mapped again at the next call (V = H = 300, 8 steps: the
    LSTM gradient 1.6x slower stacked)."""
    if xp is np and type(a) is np.ndarray and a.ndim >= 1:
        first, g = weights[0], len(weights)
        if type(first) is np.ndarray and first.ndim == 2 and g * first.size > _STACKED_ENTRIES:
            h, k = first.shape if transposed else first.shape[::-1]
            if a.size // max(a.shape[-1], 1) < k and tuple(shape) == (
                    (g * h, k) if transposed else (k, g * h)) and \
                    all([type(w) is np.ndarray and w.shape == first.shape for w in weights]):
                out = np.empty(a.shape[:-1] + (g * h,), dtype=np.result_type(a, *weights))
                for i, w in enumerate(weights):
                    # in the result's dtype, as the stack's product: a float32 pair among
                    # float64 weights is otherwise multiplied in float32, then cast
                    np.matmul(a, w.T if transposed else w, out=out[..., i * h:(i + 1) * h],
                              dtype=out.dtype)
                return out
    if transposed:
        return a @ reshape(stack(weights, xp), shape, xp).T
    return a @ reshape(stack(weights, xp, axis=1), shape, xp)


# numpy's module functions for sums, means and axis swaps spend about a microsecond a call in
# Python before the array's own method (a tenth of that) does the work: the generated code
# calls these in loops (an unrolled network's bias gradients, a batch of transposes), on
# small arrays too. `xp`: the namespace of the generated code, for every other backend.

def array_sum(x, xp=np, axis=None):
    """The sum over `axis` (every axis by default), as numpy.sum."""
    if type(x) is np.ndarray:
        return x.sum(axis=axis)
    return xp.sum(x, axis=axis)


def array_mean(x, xp=np, axis=None):
    """The mean over `axis` (every axis by default), as numpy.mean."""
    if type(x) is np.ndarray:
        return x.mean(axis=axis)
    return xp.mean(x, axis=axis)


def matrix_transpose(x, xp=np):
    """The last two axes swapped (`x.mT`: a batch of matrices transposed)."""
    if type(x) is np.ndarray:
        return x.swapaxes(-1, -2)
    return xp.swapaxes(x, -1, -2)


def reshape(x, shape, xp=np):
    """`x` in `shape` (C order, as numpy.reshape). An array with no entries is made anew:
    dask's reshape fails on one (a reduce of an empty iterable)."""
    if type(x) is np.ndarray:
        return x.reshape(shape)
    if not all(shape) or 0 in x.shape:
        return xp.zeros(shape, dtype=x.dtype)
    return xp.reshape(x, shape)


def broadcast_copy(x, shape, xp=np):
    """`x` broadcast to `shape` as an array of its own (a result the caller owns): for numpy one
    new array written once, where a read-only broadcast view, copied after, costs 3.7 us at
    3000 entries against 1.4 us. Other backends broadcast (their results are owned after)."""
    if type(x) is np.ndarray or isinstance(x, np.generic):
        out = np.empty(shape, dtype=x.dtype)
        out[...] = x
        return out
    return xp.broadcast_to(x, shape)


# Entries up to which a transpose sum copies the transpose first (transpose_plus): a float64
# matrix of 2^20 entries is 8 MB, about what a cache keeps. Measured on float64 squares: 15-30%
# faster from 5 x 5 to 1000 x 1000; at 2000 x 2000 (32 MB, memory-bound) 15% slower.
_TRANSPOSE_COPIED = 1 << 20
_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.longdouble))


def transpose_plus(a, b):
    """`a.T + b` (`A.T + A`, the Hessian of a quadratic form `x @ A @ x`): the same array.
    numpy's `a.T + b` reads a.T a row's stride at a time in one loop; numpy's copy of a
    transpose works in blocks. So for two float matrices of one dtype that fit in a cache,
    a.T is copied and b added in place: 5.2 us against 6.2 at 100 x 100, 0.9 against 1.2 at
    20 x 20, bit for bit the same sums (addition commutes exactly in IEEE arithmetic). Any
    other arguments (broadcasts, other ranks or dtypes, other backends) take `a.T + b`."""
    if type(a) is _nd and type(b) is _nd and a.dtype is b.dtype and a.ndim == 2 and \
            a.size <= _TRANSPOSE_COPIED and a.dtype in _FLOATS and a.shape[::-1] == b.shape:
        t = a.T.copy()
        t += b
        return t
    return a.T + b


def pad(x, widths, xp=np):
    """`x` with zeros before and after it along each axis (`widths`: one (before, after) pair
    per axis), as numpy.pad with zeros: the adjoint of a slice. For a numpy array, one array of
    zeros and one slice assignment: numpy.pad spends about 20 us a call in Python, ten times
    this, and the adjoints of an unrolled network's slices are many small pads. `xp`: the
    namespace of the generated code, whose own pad serves every other backend."""
    if xp is np and isinstance(x, np.ndarray):
        out = np.zeros(tuple(n + a + b for n, (a, b) in zip(x.shape, widths)), x.dtype)
        out[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, widths))] = x
        return out
    if any(n == 0 for n in x.shape):  # only zeros; dask.array.pad divides by the empty size
        return xp.zeros(tuple(n + a + b for n, (a, b) in zip(x.shape, widths)), dtype=x.dtype)
    return xp.pad(x, widths)


# -- convolutions (lower/convolution.py) -----------------------------------------------------------
# Each works on its arguments reshaped to one batch axis, one channel axis and the spatial ones:
# x [BX, C, *S] with w [BW, C, *K] (a correlation) or d [BX, C, *S] with w [C, BW, *K] (a full
# convolution), to [BX, BW, *spatial], reshaped back. On numpy: O(output x kernel) work and no
# band matrix; memory O(inputs + output), the windows copied whole (im2col) only where that
# copy is no larger than a few times the inputs and output. torch and jax call their own.

def correlate(x, w, stride=1):
    """numpy's correlate in "valid" mode of each row of x [..., n] with each row of w [..., k],
    every stride-th entry: [x's leading axes, w's leading axes, (n - k) // stride + 1]."""
    return _correlation("correlate", x, w, 1, 0, _per_axis(stride, 1))


def conv1d(x, w, stride=1):
    """PyTorch's conv1d: x [..., C, n], w [..., C, k] (any leading axes on each)."""
    return _correlation("conv1d", x, w, 1, 1, _per_axis(stride, 1))


def conv2d(x, w, stride=1):
    """PyTorch's conv2d: x [..., C, h, w], w [..., C, kh, kw] (any leading axes on each)."""
    return _correlation("conv2d", x, w, 2, 1, _per_axis(stride, 2))


def convolve(d, w):
    """numpy's convolve in "full" mode of each row of d [..., n] with each row of w [..., k]:
    [d's leading axes, w's leading axes, n + k - 1]."""
    return _full("convolve", d, w, 1, 0)


def conv_transpose1d(d, w):
    """PyTorch's conv_transpose1d at stride 1: d [..., C, n], w [C, ..., k]."""
    return _full("conv_transpose1d", d, w, 1, 1)


def conv_transpose2d(d, w):
    """PyTorch's conv_transpose2d at stride 1: d [..., C, h, w], w [C, ..., kh, kw]."""
    return _full("conv_transpose2d", d, w, 2, 1)


def _per_axis(stride, n: int) -> tuple:
    return tuple(stride) if isinstance(stride, (tuple, list)) else (stride,) * n


def _canonical(name: str, x, w, n: int, c: int, kernel_first: bool):
    """(x as [BX, C, *S], w as [BW, C, *K] or [C, BW, *K], leading shapes, C) with checks."""
    import math
    if x.ndim < n + c or w.ndim < n + c:
        raise ValueError(f"{name}(): arrays of shapes {tuple(x.shape)} and {tuple(w.shape)} "
                         f"have too few axes")
    lead_x, lead_w = tuple(x.shape[:x.ndim - n - c]), \
        tuple(w.shape[c:w.ndim - n] if kernel_first else w.shape[:w.ndim - n - c])
    channels = int(x.shape[x.ndim - n - 1]) if c else 1
    have = (int(w.shape[0]) if kernel_first else int(w.shape[w.ndim - n - 1])) if c else 1
    if channels != have:
        raise ValueError(f"{name}(): the input has {channels} channels and the kernel {have}")
    bx, bw = math.prod(lead_x), math.prod(lead_w)
    x3 = x.reshape((bx, channels, *x.shape[x.ndim - n:]))
    w3 = w.reshape(((channels, bw) if kernel_first else (bw, channels)) +
                   tuple(w.shape[w.ndim - n:]))
    return x3, w3, lead_x, lead_w


def _correlation(name: str, x, w, n: int, c: int, strides: tuple):
    x3, w3, lead_x, lead_w = _canonical(name, x, w, n, c, False)
    S, K = tuple(x3.shape[2:]), tuple(w3.shape[2:])
    if any(k > s for s, k in zip(S, K)):
        raise ValueError(f"{name}(): the kernel {K} is larger than the signal {S}")
    library = _library(x, w)
    if library == "torch":
        import torch.nn.functional as F
        y = (F.conv1d if n == 1 else F.conv2d)(x3, w3, stride=strides)
    elif library in ("jax", "jaxlib"):
        from jax import lax
        spec = ("NCH", "OIH", "NCH") if n == 1 else ("NCHW", "OIHW", "NCHW")
        y = lax.conv_general_dilated(x3, w3, strides, "VALID", dimension_numbers=spec,
                                     precision=lax.Precision.HIGHEST)
    elif library == "dask":
        raise _no_dask(name)
    else:
        y = _correlation_arrays(x3, w3, strides, _xp(x3))
    return y.reshape((*lead_x, *lead_w, *y.shape[2:]))


def _full(name: str, d, w, n: int, c: int):
    d3, w3, lead_d, lead_w = _canonical(name, d, w, n, c, True)
    library = _library(d, w)
    if library == "torch":
        import torch.nn.functional as F
        y = (F.conv_transpose1d if n == 1 else F.conv_transpose2d)(d3, w3)
    elif library in ("jax", "jaxlib"):
        from jax import lax
        import jax.numpy as jnp
        spec = ("NCH", "OIH", "NCH") if n == 1 else ("NCHW", "OIHW", "NCHW")
        kernel = jnp.flip(jnp.swapaxes(w3, 0, 1), tuple(range(2, 2 + n)))
        y = lax.conv_general_dilated(d3, kernel, (1,) * n, [(k - 1, k - 1) for k in
                                                            w3.shape[2:]],
                                     dimension_numbers=spec, precision=lax.Precision.HIGHEST)
    elif library == "dask":
        raise _no_dask(name)
    else:
        y = _full_arrays(d3, w3, _xp(d3))
    return y.reshape((*lead_d, *lead_w, *y.shape[2:]))


def _no_dask(name: str):
    from ..errors import EvaluationError
    return EvaluationError(f"{name}() is not available on the dask backend",
                           hint="dask.array has no convolution; compute it with the numpy "
                                "backend, or torch or jax")


# A window copy (im2col) is made where it is at most this many times the inputs and output.
_IM2COL_RATIO = 4


def _window(starts, sizes, steps=None):
    """The index of a window of `sizes` entries from `starts` on the spatial axes."""
    steps = steps or (1,) * len(starts)
    return (slice(None), slice(None)) + tuple(
        slice(a, a + (m - 1) * s + 1, s) for a, m, s in zip(starts, sizes, steps))


def _correlation_arrays(x, w, strides, xp):
    """[BX, C, *S] correlated with [BW, C, *K], strided: [BX, BW, *S']."""
    import math
    bx, channels, *S = x.shape
    bw, _, *K = w.shape
    out_s = tuple((s - k) // st + 1 for s, k, st in zip(S, K, strides))
    positions, taps = math.prod(out_s), math.prod(K)
    dtype = xp.result_type(x, w)
    if not positions or not taps or not bx or not bw or not channels:
        return xp.zeros((bx, bw, *out_s), dtype=dtype)
    if xp is np and bx == bw == channels == 1 and strides == (1,):  # numpy's own, in C
        return np.correlate(x[0, 0], w[0, 0]).reshape(1, 1, -1)
    if positions < taps:
        # A small output of a large kernel (a kernel's gradient): the whole kernel contracted
        # with the window at each output position, the windows copied together where that is
        # small (one matrix product), else one at a time.
        kernel = xp.reshape(w, (bw, channels * taps)).T
        windows = [x[_window([a * st for a, st in zip(at, strides)], K)]
                   for at in np.ndindex(*out_s)]
        if bx * positions * channels * taps <= _IM2COL_RATIO * (x.size + w.size):
            cols = xp.empty((bx, positions, channels, *K), dtype=x.dtype)
            for q, v in enumerate(windows):
                cols[:, q] = v
            out = xp.reshape(cols, (bx * positions, channels * taps)) @ kernel
            return xp.reshape(xp.moveaxis(xp.reshape(out, (bx, positions, bw)), 2, 1),
                              (bx, bw, *out_s))
        out = xp.empty((bx, bw, positions), dtype=dtype)
        for q, v in enumerate(windows):
            out[:, :, q] = xp.reshape(v, (bx, channels * taps)) @ kernel
        return xp.reshape(out, (bx, bw, *out_s))
    kernel = xp.reshape(w, (bw, channels, taps))
    if bx * channels * positions * taps <= _IM2COL_RATIO * (x.size + bx * bw * positions):
        # The windows copied once, [BX, C, taps, *S'], a slice per kernel entry (contiguous
        # writes), and one matrix product.
        cols = xp.empty((bx, channels, taps, *out_s), dtype=x.dtype)
        for t, at in enumerate(np.ndindex(*K)):
            cols[:, :, t] = x[_window(at, out_s, strides)]
        out = xp.reshape(kernel, (bw, channels * taps)) @ \
            xp.reshape(cols, (bx, channels * taps, positions))
        return xp.reshape(out, (bx, bw, *out_s))
    # One matrix product per kernel entry (a product by each kernel's entry where there is one
    # channel), accumulated: O(output) memory.
    out = xp.zeros((bx, bw, positions), dtype=dtype)
    for t, at in enumerate(np.ndindex(*K)):
        shifted = xp.reshape(x[_window(at, out_s, strides)], (bx, channels, positions))
        out += shifted * kernel[None, :, 0, t, None] if channels == 1 else \
            kernel[:, :, t] @ shifted
    return xp.reshape(out, (bx, bw, *out_s))


def _full_arrays(d, w, xp):
    """[BX, C, *S] convolved in full with [C, BW, *K]: [BX, BW, *(S + K - 1)]."""
    import math
    bx, channels, *S = d.shape
    _, bw, *K = w.shape
    out_s = tuple(s + k - 1 for s, k in zip(S, K))
    positions, taps = math.prod(S), math.prod(K)
    dtype = xp.result_type(d, w)
    if xp is np and bx == bw == channels == 1 and len(S) == 1:  # numpy's own, in C
        return np.convolve(d[0, 0], w[0, 0]).reshape(1, 1, -1)
    out = xp.zeros((bx, bw, *out_s), dtype=dtype)
    if not positions or not taps or not bx or not bw or not channels:
        return out
    if positions < taps:
        # A short input and a long kernel: the kernel, weighted by each input entry, added
        # where that entry sits.
        kernel = xp.reshape(w, (channels, bw * taps))
        for at in np.ndindex(*S):
            part = d[(slice(None), slice(None), *at)] @ kernel  # [BX, BW * taps]
            out[_window(at, K)] += xp.reshape(part, (bx, bw, *K))
        return out
    flat = xp.reshape(d, (bx, channels, positions))
    cols = bx * bw * positions * taps
    if cols <= _IM2COL_RATIO * (d.size + math.prod(out.shape)):
        # Every kernel entry's product at once (one matrix product), then added shifted.
        kernel = xp.reshape(xp.moveaxis(w, 1, 0), (bw, channels, taps))
        parts = xp.reshape(xp.moveaxis(kernel, 2, 0), (taps * bw, channels)) @ flat
        parts = xp.reshape(parts, (bx, taps, bw, *S))
        for t, at in enumerate(np.ndindex(*K)):
            out[_window(at, S)] += parts[:, t]
        return out
    for t, at in enumerate(np.ndindex(*K)):
        tap = w[(slice(None), slice(None), *at)].T  # [BW, C]
        part = flat * tap[None, :, 0, None] if channels == 1 else tap @ flat
        out[_window(at, S)] += xp.reshape(part, (bx, bw, *S))
    return out
