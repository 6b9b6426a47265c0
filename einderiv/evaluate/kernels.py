"""Evaluation kernels that the array libraries lack, named by `kernel.NAME` in rule tables.

Each is written against an array namespace `xp` obtained from its argument, so the same kernel
serves numpy and the other backends, and each is numerically stable for large arguments.
"""
from __future__ import annotations

import numpy as np

from ..backends import array_namespace as _xp


def sigmoid(x):
    xp = _xp(x)
    # exp(-|x|) never overflows, and z / (1 + z) keeps full relative precision far left,
    # where 1 / (1 + exp(-x)) overflows and 0.5 * (1 + tanh(x / 2)) cancels to 0.
    z = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def relu(x):
    xp = _xp(x)
    return xp.maximum(x, xp.zeros_like(x))


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
    """log |det X|, as numpy's slogdet."""
    return _xp(X).linalg.slogdet(X)[1]


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
    out = xp.log(xp.sum(xp.exp(x - m), axis=axes, keepdims=True)) + m
    return xp.squeeze(out, axis=axes)


def log_softmax(x, axis=-1):
    """log(softmax(x)) as x - logsumexp(x): finite where softmax underflows to 0."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):  # no entries to normalize; max() would fail
        return x
    m = xp.max(x, axis=axes, keepdims=True)
    shifted = x - xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axes, keepdims=True))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`, shifted by the maximum so that nothing overflows.

    At infinite entries it is the limit of finite ones: the entries at +inf share the whole
    mass. A slice whose entries are all -inf (log-probabilities of impossible events) has none:
    0 everywhere, the gradient of its logsumexp, which is -inf there whatever the entries' rates
    (the zero gradient that JAX's maintainers agreed to in jax-ml/jax#6811 and PyTorch's issue
    #31829 asks for; both libraries still give nan)."""
    xp = _xp(x)
    axes = _axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):  # no entries to normalize; max() would fail
        return xp.exp(x)
    m = xp.max(x, axis=axes, keepdims=True)
    if xp is np and np.isfinite(m).all():  # the common case, in numpy: the plain shift
        e = np.exp(x - m)
        return e / np.sum(e, axis=axes, keepdims=True)  # a sum >= 1: exp(0) is in it
    m = xp.where(m == -float("inf"), xp.zeros_like(m), m)  # -inf - -inf would be nan
    # At +inf entries x == m and x - m is inf - inf: their exp(0) is 1, the others' is 0.
    with np.errstate(invalid="ignore"):  # numpy warns of that discarded inf - inf
        e = xp.exp(xp.where(x == m, xp.zeros_like(x), x - m))
    s = xp.sum(e, axis=axes, keepdims=True)
    return e / xp.where(s == 0, xp.ones_like(s), s)  # s == 0: every entry -inf, and e is 0
