"""The contenders: each turns a problem instance into a zero-argument call.

`CONTENDERS[name](inst)` prepares the data in the contender's own arrays (not timed) and
returns `(setup, to_numpy)`. `setup()` does what a user does once (derive, trace, jit) and
returns `call`; `call()` computes the derivative (the gradients of all parameters, or the
Hessian) and is what is timed; `to_numpy(result)` gives the list of numpy arrays compared with
the hand-written result. The time of `setup()` plus the first call, less a warm call, is
einderiv's derivation time and JAX's compile time. Both setups do the work ahead of the first
call where the library lets them (einderiv's code generation, JAX's lower().compile()), so that
little of it is left to a first call whose time is noisy on a large problem.

The peers (jax, torch, autograd) are imported on first use; `run.py` sets the thread and x64
settings before that. A peer that is not installed raises `Unavailable`.
"""
from __future__ import annotations

import numpy as np

from problems import Instance, einderiv_function


class Unavailable(Exception):
    """The contender's package is not installed."""


def _results(inst: Instance, result) -> list[np.ndarray]:
    if inst.kind == "hessian":
        return [np.asarray(result)]
    return [np.asarray(r) for r in result]


# --- hand-written numpy, einderiv ------------------------------------------------------------

def hand_written(inst: Instance):
    def setup():
        return lambda: inst.hand(inst.params, inst.data)
    return setup, lambda r: _results(inst, r)


def einderiv_generated(inst: Instance):
    """einderiv.grad / einderiv.hessian of the source text (or of the unrolled `einderiv.var`
    expression, which setup builds), called with the numpy arrays."""
    arrays = {**inst.params, **inst.data}

    def setup():
        f = einderiv_function(inst)
        f.source  # vectorize and generate the code now (the first call would do it)

        def call():
            return f(**arrays)
        call.derived = f  # for counting FLOPs
        return call
    return setup, lambda r: _results(inst, r)


# --- JAX ------------------------------------------------------------------------------------

def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Unavailable(f"jax is not installed ({e})") from None
    jax.config.update("jax_enable_x64", True)

    class JaxOps:
        sum = staticmethod(jnp.sum)
        exp = staticmethod(jnp.exp)
        log = staticmethod(jnp.log)
        tanh = staticmethod(jnp.tanh)
        sigmoid = staticmethod(jax.nn.sigmoid)

        @staticmethod
        def log_softmax(z, axis):
            return jax.nn.log_softmax(z, axis=axis)

    return jax, jnp, JaxOps


def _compile(jitted, *args) -> None:
    """Trace, lower and compile ahead of the first call, which then finds the executable in
    JAX's cache: the compile time is measured without running the program (less noise)."""
    try:
        jitted.lower(*args).compile()
    except AttributeError:  # a JAX without the ahead-of-time API: the first call compiles
        pass


def jax_jit(inst: Instance):
    """jax.jit(jax.grad(f)) or jax.jit(jax.hessian(f)); the data are arguments of the jitted
    function, not constants baked into the compiled program."""
    jax, jnp, ops = _jax()
    params = {k: jnp.asarray(v) for k, v in inst.params.items()}
    data = {k: jnp.asarray(v) for k, v in inst.data.items()}
    jax.block_until_ready((params, data))
    if inst.kind == "hessian":
        (name,) = inst.wrt
        x = params[name]

        def setup():
            h = jax.jit(jax.hessian(lambda x, D: inst.loss(ops, {name: x}, D)))
            _compile(h, x, data)
            return lambda: jax.block_until_ready(h(x, data))
        return setup, lambda r: [np.asarray(r)]

    def setup():
        g = jax.jit(jax.grad(lambda p, D: inst.loss(ops, p, D)))
        _compile(g, params, data)
        return lambda: jax.block_until_ready(g(params, data))
    return setup, lambda r: [np.asarray(r[k]) for k in inst.wrt]


# --- PyTorch --------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None

    class TorchOps:
        sum = staticmethod(torch.sum)
        exp = staticmethod(torch.exp)
        log = staticmethod(torch.log)
        tanh = staticmethod(torch.tanh)
        sigmoid = staticmethod(torch.sigmoid)

        @staticmethod
        def log_softmax(z, axis):
            return torch.log_softmax(z, dim=axis)

    return torch, TorchOps


def torch_eager(inst: Instance):
    """Eager autograd: a forward pass and torch.autograd.grad per call; Hessians by
    torch.autograd.functional.hessian with its defaults (one backward pass per row)."""
    torch, ops = _torch()
    data = {k: torch.from_numpy(v) for k, v in inst.data.items()}
    if inst.kind == "hessian":
        (name,) = inst.wrt
        x = torch.from_numpy(inst.params[name].copy())

        def setup():
            return lambda: torch.autograd.functional.hessian(
                lambda x: inst.loss(ops, {name: x}, data), x)
        return setup, lambda r: [r.detach().numpy()]
    params = [torch.from_numpy(inst.params[k].copy()).requires_grad_() for k in inst.wrt]

    def setup():
        def call():
            loss = inst.loss(ops, dict(zip(inst.wrt, params)), data)
            return torch.autograd.grad(loss, params)
        return call
    return setup, lambda r: [t.detach().numpy() for t in r]


# --- HIPS autograd --------------------------------------------------------------------------

def _autograd():
    try:
        import autograd
        import autograd.numpy as anp
    except ImportError as e:
        raise Unavailable(f"autograd is not installed ({e})") from None

    class AutogradOps:
        sum = staticmethod(anp.sum)
        exp = staticmethod(anp.exp)
        log = staticmethod(anp.log)
        tanh = staticmethod(anp.tanh)

        @staticmethod
        def sigmoid(z):
            return 1.0 / (1.0 + anp.exp(-z))

        @staticmethod
        def log_softmax(z, axis):
            z = z - anp.max(z, axis=axis, keepdims=True)
            return z - anp.log(anp.sum(anp.exp(z), axis=axis, keepdims=True))

    return autograd, AutogradOps


def hips_autograd(inst: Instance):
    """autograd.grad (all parameters as one dict) and autograd.hessian."""
    autograd, ops = _autograd()
    if inst.kind == "hessian":
        (name,) = inst.wrt
        x = inst.params[name]

        def setup():
            h = autograd.hessian(lambda x, D: inst.loss(ops, {name: x}, D))
            return lambda: h(x, inst.data)
        return setup, lambda r: [np.asarray(r)]

    def setup():
        g = autograd.grad(lambda p, D: inst.loss(ops, p, D))
        return lambda: g(inst.params, inst.data)
    return setup, lambda r: [np.asarray(r[k]) for k in inst.wrt]


HAND = "hand-written numpy"
CONTENDERS = {
    HAND: hand_written,
    "einderiv": einderiv_generated,
    "jax.jit": jax_jit,
    "torch eager": torch_eager,
    "autograd": hips_autograd,
}
