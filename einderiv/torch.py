"""einderiv in a PyTorch training loop: `function(expr, shapes)` is a `torch.autograd.Function`
whose forward is einderiv's generated code and whose backward is einderiv's symbolic
derivative, so `loss.backward()` and `torch.autograd.gradcheck` go through them; a backward
under `create_graph=True` is einderiv's derivative again, at any order.

PyTorch is imported when `function` is called, not when this module is: `import einderiv`
never imports it.
"""
from __future__ import annotations

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
    PyTorch first asks for it. Forward-mode AD (`torch.func.jvp`) is not supported.

    `F.forward_result` is the compiled expression (`.formula`, `.source`, ...) and
    `F.backward_result(names)` the `einderiv.vjp` by a tuple of names that backward uses. Without
    PyTorch (and array-api-compat, which the torch backend needs) this raises
    `EinderivError`; a bad expression or shapes raise as `einderiv.compile` does.

    Example: the README, "In PyTorch and JAX training loops" (a session that
    tests/test_frameworks.py runs where PyTorch is installed).
    """
    torch = _imported()
    pullback = Pullback(expr, shapes, "torch")

    class Callable(type(torch.autograd.Function)):
        # F(...) calls F.apply, taking keywords too; a Function itself is never instantiated.
        def __call__(cls, /, *args, **arrays):
            return cls.apply(*pullback.bound(args, arrays))

    class EinderivFunction(_function(torch, pullback.program), metaclass=Callable):
        inputs = {name: tuple(map(str, shape))
                  for name, shape in pullback.value.lowered.declared.items()}
        forward_result = pullback.value

        @staticmethod
        def backward_result(names):
            return pullback.vjp(tuple(names))

        @staticmethod
        def forward(*args):
            return pullback.value(*args)

    EinderivFunction.__name__ = EinderivFunction.__qualname__ = "EinderivFunction"
    return EinderivFunction


def _function(torch, program):
    """The `torch.autograd.Function` of a `pullback.Program` (its outputs a tuple), made once
    per program: its backward is the program's vjp by the inputs that need a gradient, run as
    this same kind of Function under `create_graph=True`, so that a derivative of any order is
    einderiv's and PyTorch differentiates none of einderiv's generated code."""
    found = program.adapters.get("torch")
    if found is not None:
        return found

    class Derivative(torch.autograd.Function):
        @staticmethod
        def forward(*args):
            return program(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
            ctx.save_for_backward(*tensors)
            # Python numbers (never needing a gradient) are kept as they are.
            ctx.numbers = [None if isinstance(a, torch.Tensor) else a for a in inputs]

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

    return program.adapters.setdefault("torch", Derivative)


def _imported():
    try:
        import torch
    except ImportError:
        raise EinderivError("einderiv.torch.function needs PyTorch, which is not installed",
                            hint="pip install 'einderiv[torch]'") from None
    return torch
