"""einderiv under JAX's transforms: `function(expr, shapes)` computes an expression with
einderiv's generated code on jax arrays, and every derivative JAX takes of it, at any order and
in either mode, is einderiv's own symbolic derivative.

The function is a JAX primitive, `einderiv`, whose parameter is a `pullback.Program`. Its JVP
rule binds the program's `jvp` (a primitive of a derived program again), and the transpose of
that is the program's `vjp`, which is what reverse mode (`jax.grad`) computes: the cotangent
of the inputs that have a tangent, derived on first use. A second derivative differentiates
that primitive the same way, and so on, so JAX never differentiates einderiv's generated code,
whose JAX derivative can be NaN or wrong where the function's is not (an SVD-based det at
repeated singular values, a stable softplus's `where`). Under `jax.vmap` the primitive runs its
program under `jax.vmap`, one layer of input axes per vmap; under `jax.jit` it lowers to the
generated code's operations.

JAX is imported when `function` is called, not when this module is: `import einderiv` never
imports it.
"""
from __future__ import annotations

import threading

from .errors import EinderivError
from .pullback import Pullback


def function(expr, shapes: dict | None = None):
    """A function computing `expr` on jax arrays, whose derivatives of every order are
    einderiv's.

    Call it with one array per variable, positional in the order the expression declares them
    (`f.inputs`: the order of `shapes`, then of inline declarations; an `einderiv.var`
    expression's in the order they were made) or by keyword. It returns an array of the
    expression's shape in the dtype JAX's own arithmetic gives the inputs (`jnp.result_type`,
    made a float as `jnp.tanh` makes one), eager, under `jax.jit`, `jax.vmap` and every
    derivative alike, x64 mode on or off: a boolean or integer array, or a Python number,
    takes a float array's dtype (an int64 array with a float32 one is float32, a bfloat16
    array with `True` bfloat16), float16 with bfloat16 is float32, and without a float array
    an integer one gives JAX's float for it (jax 0.10: float32 for booleans and integers of up
    to 32 bits). It runs under `jax.jit` (traced once per shape signature: einderiv's checks see
    the shapes and dtypes, and generated code is what is traced), `jax.vmap`, and every
    derivative: `jax.grad`, `jax.vjp`, `jax.value_and_grad`, `jax.jvp`, `jax.hessian`, a
    `jax.grad` of a `jax.grad` to any order. Inputs are checked as every einderiv call checks
    them: a missing or unexpected input is an `InputError`, shapes that do not fit a
    `ShapeError`.

    Reverse mode is `einderiv.vjp` by the inputs JAX differentiates by (derived on the first
    derivative by that set of inputs, and kept): the output's cotangent times the Jacobian,
    never a Jacobian. Forward mode is einderiv's jvp (the transpose of its reverse pass), and a
    derivative of either is einderiv's vjp or jvp of that derived program, derived when JAX
    first asks for it: JAX never differentiates einderiv's generated code, so a second
    derivative is as exact as einderiv's `hessian` and `hvp` (for `det(X)` at `X = eye(n)`, where
    JAX's derivative of an SVD-based kernel would be NaN). An integer input gets a zero
    (float0) cotangent, as JAX gives it.

    `f.forward_result` is the compiled expression (`.formula`, `.source`, ...) and
    `f.backward_result(names)` the `einderiv.vjp` by a tuple of names that reverse mode uses.
    `f` pickles, cloudpickles and deep-copies (to a `multiprocessing` pool, a dask worker): as
    its expression, shapes and rule book, compiled again on load. Without JAX (and
    array-api-compat, which the jax backend needs) this raises `EinderivError`; a bad
    expression or shapes raise as `einderiv.compile` does.

    Example: the README, "In PyTorch and JAX training loops" (a session that
    tests/test_frameworks.py runs where JAX is installed).
    """
    _imported()
    return Function(Pullback(expr, shapes, "jax"))


class Function:
    """What `function` returns: see there. It pickles, cloudpickles and deep-copies as its
    expression, shapes and rule book, compiled again on load (its `Pullback` does)."""

    def __init__(self, pullback: Pullback):
        self._pullback = pullback
        self.inputs = {name: tuple(map(str, shape))
                       for name, shape in pullback.value.lowered.declared.items()}
        self.forward_result = pullback.value

    def __call__(self, *args, **arrays):
        (out,) = _primitive().bind(*self._pullback.bound(args, arrays),
                                   program=self._pullback.program, layers=())
        return out

    def backward_result(self, names):
        return self._pullback.vjp(tuple(names))

    def __reduce__(self):
        return (Function, (self._pullback,))

    def __repr__(self) -> str:
        return f"<einderiv.jax.function {self.forward_result.formula!r}>"


# -- the primitive ------------------------------------------------------------------------------
# Its parameters: `program`, a pullback.Program, and `layers`, one tuple per enclosing
# jax.vmap (innermost first) saying of each input whether its axis 0 is that vmap's (0) or it
# is not batched there (None). Every output is batched at every layer, at the front, the
# outermost layer's axis first.

_made: list = []
_making = threading.Lock()


def _primitive():
    """The `einderiv` primitive, made with its rules on first use."""
    if not _made:
        with _making:
            if not _made:
                _made.append(_define())
    return _made[0]


# The JAX this module is written against: jax.extend.core.Primitive, jax.typeof and an aval's
# to_tangent_aval; an older one is a clear error here, not an AttributeError inside a trace.
JAX_AT_LEAST = (0, 5)


def _define():
    import jax
    version = tuple(int(p) for p in jax.__version__.split(".")[:2] if p.isdigit())
    if version < JAX_AT_LEAST or not hasattr(jax, "typeof"):
        raise EinderivError(f"einderiv.jax.function needs jax >= "
                            f"{'.'.join(map(str, JAX_AT_LEAST))}; this is jax {jax.__version__}",
                            hint="pip install -U 'einderiv[jax]'")
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    primitive = Primitive("einderiv")
    primitive.multiple_results = True
    primitive.def_impl(_evaluated)
    primitive.def_abstract_eval(_abstract)
    ad.primitive_jvps[primitive] = _jvp_rule
    ad.primitive_transposes[primitive] = _transpose_rule
    batching.primitive_batchers[primitive] = _batch_rule
    mlir.register_lowering(primitive, mlir.lower_fun(_evaluated, multiple_results=True))
    return primitive


def _evaluated(*args, program, layers):
    import jax
    run = program
    for axes in layers:
        run = jax.vmap(run, in_axes=axes)
    outs = run(*_promoted(args))
    if program.tangent_of is not None:
        # A tangent has its primal's dtype, which is what _abstract says it is.
        outs = [o.astype(a.dtype) for o, a in zip(outs, _abstract(*map(jax.typeof, args),
                                                                  program=program,
                                                                  layers=layers))]
    return list(outs)


def _abstract(*avals, program, layers):
    """The outputs' shapes and dtypes: each layer's axis in front of the program's own output,
    found by tracing the program once per signature of unbatched inputs; a jvp program's are
    its parent's, found without deriving it (reverse mode only transposes it)."""
    import jax
    sizes, unbatched = _split(avals, layers)
    return [jax.core.ShapedArray(sizes + out.shape, out.dtype)
            for out in _outputs(program, unbatched)]


def _split(avals, layers) -> tuple[tuple[int, ...], list]:
    """The size of each layer's axis (outermost first) and each input's (shape, dtype, weakly
    typed) without the axes of the layers it is batched in, which lead its shape, outermost
    first."""
    depth = len(layers)
    sizes = [0] * depth
    unbatched = []
    for k, aval in enumerate(avals):
        outer_first = [depth - 1 - layer for layer in reversed(range(depth))
                       if layers[layer][k] is not None]
        for axis, at in enumerate(outer_first):
            sizes[at] = aval.shape[axis]
        # (weakly typed: a Python number, which takes the other inputs' dtype, plan.weak)
        unbatched.append((tuple(aval.shape[len(outer_first):]), aval.dtype,
                          getattr(aval, "weak_type", False) is True))
    return tuple(sizes), unbatched


def _outputs(program, unbatched: list) -> list:
    import jax
    if program.tangent_of is not None:
        parent, positions = program.tangent_of
        return _outputs(parent, unbatched[:len(unbatched) - len(positions)])
    # (x64 mode is part of the key: it decides what a boolean or integer input promotes to)
    key = (tuple(unbatched), _default_float())
    found = program.adapters.get(key)
    if found is None:
        found = program.adapters[key] = list(jax.eval_shape(
            lambda *args: program(*_promoted(args)),
            *(jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
              for shape, dtype, weak in unbatched)))
    return found


# -- dtypes -------------------------------------------------------------------------------------
# einderiv's generated code takes floats: on its own it converts a boolean or integer input to
# a float before promoting (to float64, jax's float32 with x64 off), so an int32 or bool array
# with a float16 one would give float32 or float64, and a Python bool (which jax.jit makes a
# strong bool array, unlike a Python int or float) float64 with x64 on. The primitive instead
# hands its program every input in the dtype JAX's own arithmetic gives them together.

def _promoted(args) -> list:
    """`args` (arrays, tracers, Python numbers) all in the dtype JAX promotes them to, as
    `jnp` arithmetic on them would: `jax.dtypes.result_type` (weak types included: a Python
    int or float, or a tracer of one, takes the arrays' dtype; a bool or integer array takes a
    float array's), made inexact as `jnp.tanh` makes it (booleans and integers alone: JAX's
    float for them). Each comes back strongly typed. Anything else (a complex input, a list, a
    masked array) is left to einderiv's own checks, which convert or refuse it."""
    import jax
    if not args or not all(_plain(a) for a in args):
        return list(args)
    try:
        dtype, weak = jax.dtypes.result_type(*args, return_weak_type_flag=True)
    except (TypeError, ValueError):  # not numbers JAX knows
        return list(args)
    dtype = _inexact(dtype, weak)
    if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        return list(args)  # complex: einderiv's InputError names the input
    try:
        # (a no-op for a strong array of that dtype; a weak one is made strong, so that the
        # program's own promotion, which lets weak inputs take the others' dtype, has one
        # dtype to keep)
        return [jax.lax.convert_element_type(a, dtype) for a in args]
    except (TypeError, ValueError, OverflowError):  # a Python int out of every dtype's range
        return list(args)


def _plain(value) -> bool:
    """A value `_promoted` may convert: a jax array or tracer, an exact numpy array or scalar,
    or a Python number (also as JAX passes one to a primitive's implementation: a subclass of
    int or float carrying its weak aval); not a masked array or matrix, whose conversion
    would lose what einderiv's checks refuse."""
    import jax
    import numpy as np
    return isinstance(value, (jax.Array, np.generic, int, float)) or type(value) is np.ndarray


_INEXACT: dict = {}


def _inexact(dtype, weak: bool):
    """The floating dtype JAX computes `jnp.tanh` of a `dtype` (weakly typed or not) in: the
    dtype itself for a float; for a boolean or an integer, the version's own rule (jax 0.10:
    float32 for bool and integers up to 32 bits, float64 for 64-bit ones and a Python int,
    with x64 on), asked of JAX once per dtype and x64 mode."""
    import jax
    key = (dtype, weak, _default_float())
    found = _INEXACT.get(key)
    if found is None:
        found = _INEXACT[key] = jax.eval_shape(
            jax.numpy.tanh, jax.ShapeDtypeStruct((), dtype, weak_type=weak)).dtype
    return found


def _default_float():
    """JAX's float: float64 with x64 mode on, else float32."""
    import jax
    import numpy as np
    return jax.dtypes.canonicalize_dtype(np.float64)


def _jvp_rule(primals, tangents, *, program, layers):
    import jax
    from jax.interpreters import ad
    primitive = _primitive()
    outs = primitive.bind(*primals, program=program, layers=layers)
    positions = tuple(k for k, t in enumerate(tangents)
                      if type(t) is not ad.Zero and jax.numpy.result_type(t) != jax.dtypes.float0)
    if not positions:
        return outs, [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in outs]
    pushed = primitive.bind(*primals, *(tangents[k] for k in positions),
                            program=program.jvp(positions),
                            layers=tuple(axes + tuple(axes[k] for k in positions)
                                         for axes in layers))
    return outs, pushed


def _transpose_rule(cotangents, *args, program, layers):
    """The cotangent of each linear input (an `UndefinedPrimal`) of a bind linear in them."""
    from jax.interpreters import ad
    cotangents = [ad.instantiate_zeros(c) for c in cotangents]
    linear = [k for k, a in enumerate(args) if ad.is_undefined_primal(a)]
    parent, positions = program.tangent_of or (None, ())
    n = len(args) - len(positions)
    if parent is not None and not any(ad.is_undefined_primal(a) for a in args[:n]):
        # The transpose of parent.jvp(positions) is parent.vjp(positions): derived already
        # where reverse mode comes here, and never the jvp program itself.
        back, known, of = parent.vjp(positions), args[:n], range(n, len(args))
        spec = tuple(axes[:n] for axes in layers)
    else:
        # Linear in `linear`: the vjp by them is free of them, which are passed as zeros.
        back, of = program.vjp(tuple(linear)), linear
        known = [_zeros(a.aval) if ad.is_undefined_primal(a) else a for a in args]
        spec = layers
    pulled = _primitive().bind(*known, *cotangents, program=back,
                               layers=tuple(axes + (0,) * len(cotangents) for axes in spec))
    out = [None] * len(args)
    for k, c in zip(of, pulled):
        if ad.is_undefined_primal(args[k]):
            out[k] = _unbatched(c, [axes[k] for axes in layers]).astype(args[k].aval.dtype)
    return out


def _unbatched(cotangent, axes):
    """A cotangent computed batched at every layer, summed over the layers where its input
    is not batched."""
    depth = len(axes)
    summed = tuple(depth - 1 - layer for layer, axis in enumerate(axes) if axis is None)
    return cotangent.sum(axis=summed) if summed else cotangent


def _zeros(aval):
    import jax
    return jax.numpy.zeros(aval.shape, aval.dtype)


def _batch_rule(args, dims, *, program, layers):
    import jax
    args = [a if d is None else jax.numpy.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    axes = tuple(None if d is None else 0 for d in dims)
    outs = _primitive().bind(*args, program=program, layers=layers + (axes,))
    return outs, [0] * len(outs)


def _imported():
    try:
        import jax
    except ImportError:
        raise EinderivError("einderiv.jax.function needs JAX, which is not installed",
                            hint="pip install 'einderiv[jax]'") from None
    return jax
