"""einderiv under JAX's transforms: `function(expr, shapes)` is a `jax.custom_vjp` function whose
forward is einderiv's generated code on jax arrays and whose vjp is einderiv's symbolic
derivative, so `jax.grad`, `jax.value_and_grad` and `jax.jit` go through them.

JAX is imported when `function` is called, not when this module is: `import einderiv` never
imports it.
"""
from __future__ import annotations

from .errors import EinderivError
from .pullback import Pullback


def function(expr, shapes: dict | None = None):
    """A function computing `expr` on jax arrays, with einderiv's derivative as its
    `jax.custom_vjp` rule.

    Call it with one array per variable, positional in the order the expression declares them
    (`f.inputs`: the order of `shapes`, then of inline declarations; an `einderiv.var`
    expression's in the order they were made) or by keyword. It returns an array of the
    expression's shape, in the inputs' promoted dtype (JAX's default float32 unless x64 is
    enabled). It runs under `jax.jit` (traced once per shape signature: einderiv's checks see
    the shapes and dtypes, and generated code is what is traced) and under `jax.grad`,
    `jax.vjp` and `jax.value_and_grad`. Inputs are checked as every einderiv call checks them:
    a missing or unexpected input is an `InputError`, shapes that do not fit a `ShapeError`.

    The vjp rule is `einderiv.vjp` by every input with a float dtype (derived on the first
    backward for that set of inputs, and kept): the output's cotangent times the Jacobian,
    never a Jacobian. Under `jax.jit` XLA drops the cotangents nobody asked for; outside it
    all of them are computed. An integer input gets a zero (float0) cotangent, as JAX gives
    it. Second derivatives (`jax.grad` of `jax.grad`, `jax.hessian`) are JAX's derivatives of
    the generated backward code, which is jax.numpy code; forward mode of the function itself
    (`jax.jvp`) is JAX's `TypeError` for any `custom_vjp` function.

    `f.forward_result` is the compiled expression (`.formula`, `.source`, ...) and
    `f.backward_result(names)` the `einderiv.vjp` by a tuple of names that the rule uses.
    Without JAX (and array-api-compat, which the jax backend needs) this raises
    `EinderivError`; a bad expression or shapes raise as `einderiv.compile` does.

    Example: the README, "In PyTorch and JAX training loops" (a session that
    tests/test_frameworks.py runs where JAX is installed).
    """
    jax = _imported()
    import numpy as np

    pullback = Pullback(expr, shapes, "jax")

    @jax.custom_vjp
    def value(*args):
        return pullback.value(*args)

    def forward(*args):
        return pullback.value(*args), args

    def backward(args, cotangent):
        inexact = [jax.numpy.issubdtype(jax.numpy.result_type(a), jax.numpy.inexact)
                   for a in args]
        wrt = tuple(n for n, float_ in zip(pullback.names, inexact) if float_)
        found = dict(zip(wrt, pullback.cotangents(wrt, args, cotangent) if wrt else ()))
        # JAX wants each cotangent in its input's shape and dtype: float0 for integers.
        return tuple(found[name].astype(jax.numpy.result_type(a)) if name in found else
                     np.zeros(np.shape(a), jax.dtypes.float0)
                     for name, a in zip(pullback.names, args))

    value.defvjp(forward, backward)

    def f(*args, **arrays):
        return value(*pullback.bound(args, arrays))

    f.inputs = {name: tuple(map(str, shape))
                for name, shape in pullback.value.lowered.declared.items()}
    f.forward_result = pullback.value
    f.backward_result = lambda names: pullback.vjp(tuple(names))
    return f


def _imported():
    try:
        import jax
    except ImportError:
        raise EinderivError("einderiv.jax.function needs JAX, which is not installed",
                            hint="pip install 'einderiv[jax]'") from None
    return jax
