"""einderiv: an Einstein-notation tensor derivative compiler.

>>> import numpy as np, einderiv
>>> f = einderiv.compile("sum(x * x)", {"x": ("n",)})
>>> float(f(x=np.array([1.0, 2.0])))
5.0
"""
from .api import Compiled, Derived, compile, grad, hessian, jacobian, value_and_grad
from .errors import (EinderivError, EvaluationError, InputError, ParseError, RuleError,
                     ShapeError, UnknownNameError)
from .rulebook import load_rules
from .symbolic import Tensor, fn, var
from .optimize import Flat, flat
from .transforms import Product, hvp, jvp, vjp

__version__ = "0.1.0"


def __getattr__(name):
    # einderiv.torch and einderiv.jax (training-loop adapters) load on first use: neither
    # imports its framework before a function is made, so `import einderiv` never does.
    if name in ("torch", "jax"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "compile", "grad", "jacobian", "hessian", "value_and_grad", "hvp", "jvp", "vjp", "flat",
    "Product", "Flat", "Derived", "var", "fn", "load_rules", "Compiled", "Tensor", "EinderivError", "ParseError",
    "ShapeError", "UnknownNameError", "RuleError", "InputError", "EvaluationError",
]
