"""einderiv in a PyTorch training loop: `function(expr, shapes)` is a `torch.autograd.Function`
whose forward is einderiv's generated code and whose backward is einderiv's symbolic
derivative, so `loss.backward()` and `torch.autograd.gradcheck` go through them; a backward
under `create_graph=True` is einderiv's derivative again, at any order, and so are forward
mode and torch.func's transforms (vmap, grad, jacrev, jacfwd).

PyTorch is imported when `function` is called, not when this module is: `import einderiv`
never imports it.
"""
from __future__ import annotations

import copyreg
import threading

from .errors import EinderivError
from .pullback import Pullback


def function(expr, shapes: dict | None = None):
    """A `torch.autograd.Function` subclass computing `expr` on torch tensors.

    Call it with one tensor per variable, positional in the order the expression declares
    them (`F.inputs`: the order of `shapes`, then of inline declarations; an `einderiv.var`
    expression's in the order they were made) or by keyword, or as PyTorch's own
    `F.apply(*tensors)`. It returns a tensor of the expression's shape (0-d for a scalar), in
    the inputs' promoted dtype, on their device. Inputs are checked as every einderiv call
    checks them: shapes that do not fit the declaration are a `ShapeError`, a missing,
    unexpected or complex input an `InputError`.

    Backward is the vector-Jacobian product `einderiv.vjp` by the inputs whose
    `ctx.needs_input_grad` is set, derived on the first backward that needs that set of inputs
    and kept: the output's gradient times the Jacobian (times the gradient for a scalar
    output), computed by generated code, never a Jacobian. Each input's gradient comes back in
    its own dtype. Under `create_graph=True` (double backward, a gradient penalty,
    `torch.autograd.functional.hessian`) backward is itself such a Function, of the vjp
    program, whose backward is einderiv's vjp of that program, and so on to any order: PyTorch
    never differentiates einderiv's generated code, so a second derivative is as exact as
    einderiv's `hessian` and `hvp` (for `det(X)` at a singular `X`, say). Each is derived when
    PyTorch first asks for it. Forward mode (`torch.func.jvp`, `jacfwd`, `torch.func.hessian`,
    `torch.autograd.forward_ad`) is einderiv's jvp along the inputs that have a tangent, the
    same way. `torch.func.vmap` runs F and each of its derivatives on batched tensors:
    per-sample gradients `vmap(grad(F), (None, 0))`, `jacrev`, `torch.autograd.functional`'s
    `vectorize=True` (whose older vmap lacks a batching rule for some of torch's view
    operations: an `EvaluationError` names the operation).

    `F.forward_result` is the compiled expression (`.formula`, `.source`, ...) and
    `F.backward_result(names)` the `einderiv.vjp` by a tuple of names that backward uses. F
    pickles (to a `multiprocessing` pool, a dask worker) as its expression, shapes and rule
    book, compiled again on load; cloudpickle copies it with the same, and `copy.deepcopy`
    keeps it (a class) as it is. Without
    PyTorch (and array-api-compat, which the torch backend needs) this raises
    `EinderivError`; a bad expression or shapes raise as `einderiv.compile` does.

    Example: the README, "In PyTorch and JAX training loops" (a session that
    tests/test_frameworks.py runs where PyTorch is installed).
    """
    _imported()
    return _made(Pullback(expr, shapes, "torch"))


def _made(pullback: Pullback):
    """The Function of a `Pullback`: what `function` returns, and what a pickled one is made
    again as on load (its pullback compiled again from its source, shapes and rules)."""
    torch = _imported()

    def forward(*args):
        return pullback.value(*args)

    return _callable(torch)("EinderivFunction", (_function(torch, pullback.program),),
                            {"__module__": __name__, "_pullback": pullback,
                             "forward": staticmethod(forward)})


_metaclasses: list = []
_making = threading.Lock()


def _callable(torch):
    """`_Callable`, the metaclass of what `function` returns, made once (it needs torch): F(...)
    calls F.apply, taking keywords too (a Function itself is never instantiated); `F.inputs`,
    `F.forward_result` and `F.backward_result` read F's Pullback; `pickle` writes F as that
    Pullback (a class is otherwise pickled by a name, which F has not). `copy.deepcopy` keeps a
    class as it is, and cloudpickle copies F's namespace, whose Pullback and Programs pickle as
    their source: neither copies a lock or generated code."""
    with _making:
        if not _metaclasses:
            _metaclasses.append(_metaclass(torch))
    return _metaclasses[0]


def _metaclass(torch):
    class _Callable(type(torch.autograd.Function)):
        def __call__(cls, /, *args, **arrays):
            return cls.apply(*cls._pullback.bound(args, arrays))

        @property
        def inputs(cls) -> dict:
            return {name: tuple(map(str, shape))
                    for name, shape in cls._pullback.value.lowered.declared.items()}

        @property
        def forward_result(cls):
            return cls._pullback.value

        def backward_result(cls, names):
            return cls._pullback.vjp(tuple(names))

    _Callable.__qualname__ = "_Callable"  # found by name: see __getattr__
    copyreg.pickle(_Callable, _reduced)
    return _Callable


def _reduced(F):
    return (_made, (F._pullback,))


def __getattr__(name: str):
    # The metaclass, made on first use, is found by its name where cloudpickle writes a class
    # of it (and reads it in a process that has not made it yet).
    if name == "_Callable":
        return _callable(_imported())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _function(torch, program):
    """The `torch.autograd.Function` of a `pullback.Program` (its outputs a tuple), made once
    per program: its backward is the program's vjp by the inputs that need a gradient, run as
    this same kind of Function under `create_graph=True`, and its jvp (forward mode) the
    program's jvp along the inputs that have a tangent, run as such a Function too, so that a
    derivative of any order is einderiv's and PyTorch differentiates none of einderiv's
    generated code. forward does not use `ctx` and is torch operations on the inputs, so
    torch.func.vmap runs it (and each derivative) on its batched tensors
    (`generate_vmap_rule`): per-sample gradients, jacrev, jacfwd, hessian."""
    found = program.adapters.get("torch")
    if found is not None:
        return found

    class Derivative(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return program(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
            ctx.save_for_backward(*tensors)
            ctx.save_for_forward(*tensors)
            # Python numbers (never needing a gradient) are kept as they are.
            ctx.numbers = [None if isinstance(a, torch.Tensor) else a for a in inputs]
            ctx.single = not isinstance(output, tuple)  # EinderivFunction's forward
            ctx.dtypes = [o.dtype for o in ((output,) if ctx.single else output)]

        @staticmethod
        def backward(ctx, *cotangents):
            saved = iter(ctx.saved_tensors)
            inputs = tuple(next(saved) if a is None else a for a in ctx.numbers)
            positions = tuple(k for k, need in enumerate(ctx.needs_input_grad) if need)
            if not positions:
                return (None,) * len(inputs)
            back = program.vjp(positions)
            # Grad mode is on in a backward exactly under create_graph=True: then the
            # cotangents are a graph PyTorch differentiates, through back's own Function.
            run = _function(torch, back).apply if torch.is_grad_enabled() else back
            found = dict(zip(positions, run(*inputs, *cotangents)))
            return tuple(found[k].to(a.dtype) if k in found else None  # the input's dtype
                         for k, a in enumerate(inputs))

        @staticmethod
        def jvp(ctx, *tangents):
            saved = iter(ctx.saved_tensors)
            inputs = tuple(next(saved) if a is None else a for a in ctx.numbers)
            # PyTorch asks only where some input has a tangent.
            positions = tuple(k for k, t in enumerate(tangents) if t is not None)
            pushed = _function(torch, program.jvp(positions)).apply(
                *inputs, *(tangents[k] for k in positions))
            # A tangent has its output's dtype, not the one promoted with the tangents'.
            pushed = [p.to(dtype) for p, dtype in zip(pushed, ctx.dtypes)]
            return pushed[0] if ctx.single else tuple(pushed)

    return program.adapters.setdefault("torch", Derivative)


def _imported():
    try:
        import torch
    except ImportError:
        raise EinderivError("einderiv.torch.function needs PyTorch, which is not installed",
                            hint="pip install 'einderiv[torch]'") from None
    return torch
