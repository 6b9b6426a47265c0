"""The Python API of SPEC §2: `compile` and the objects it returns."""
from __future__ import annotations

from .errors import EinderivError
from .evaluate.plan import Plan
from .ir.einstein import format_program
from .lower.lower import Lowered, lower
from .parse import parse
from .parse import ast
from .parse.unparse import unparse
from .rulebook import default_rulebook
from .symbolic import Tensor

BACKENDS = ("numpy", "torch", "jax", "cupy", "dask")


def to_program(expr, shapes: dict | None) -> tuple[ast.Program, dict | None]:
    """A source string or a `Tensor` as a program, plus the shapes it declares."""
    if isinstance(expr, Tensor):
        merged = dict(expr.declarations)
        for name, shape in (shapes or {}).items():
            merged[name] = shape
        return ast.Program([expr.node], unparse(expr.node)), merged
    if isinstance(expr, str):
        return parse(expr), shapes
    raise EinderivError(f"expected an expression string or an einderiv.var expression, got "
                        f"{type(expr).__name__}")


def lower_source(expr, shapes: dict | None) -> Lowered:
    if shapes is not None and not isinstance(shapes, dict):
        raise EinderivError(f"shapes must be a dict of name -> shape, got {type(shapes).__name__}")
    program, shapes = to_program(expr, shapes)
    return lower(program, shapes, default_rulebook())


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise EinderivError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "numpy":
        raise EinderivError(f"backend {backend!r} is not available yet; use backend='numpy'")


class Compiled:
    """An expression compiled for evaluation: call it with keyword arrays.

    >>> import numpy as np, einderiv
    >>> f = einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)})
    >>> print(f.einstein)
    out[i] = W[i,j]*x[j] + b[i]
    >>> f(W=np.eye(2), x=np.array([1.0, 2.0]), b=np.zeros(2))
    array([1., 2.])
    """

    def __init__(self, lowered: Lowered, formula: str):
        self.lowered = lowered
        self.formula = formula
        self._plan = Plan([lowered.root])

    @property
    def einstein(self) -> str:
        """The expression in indexed Einstein form, one line per tensor."""
        low = self.lowered
        return format_program(low.root, low.names, low.output_name or "out")

    @property
    def inputs(self) -> dict:
        """The variables the result depends on, with their declared shapes."""
        return {name: tuple(str(d) for d in v.shape) for name, v in self._plan.variables.items()}

    @property
    def shape(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.lowered.root.shape)

    def __call__(self, **arrays):
        return self._plan(arrays)[0]

    def __repr__(self) -> str:
        return f"<einderiv.Compiled {self.formula!r}>"


def compile(expr, shapes: dict | None = None, *, backend: str = "numpy") -> Compiled:
    """Compile an expression (source text or `einderiv.var` expression) for evaluation.

    `shapes` maps each variable to a tuple of ints and dimension names (`()` for a scalar);
    inline declarations (`X: [n, d]`) may stand in for it. Raises `ParseError`, `ShapeError` or
    `UnknownNameError` (all `EinderivError`) on bad input.
    """
    _check_backend(backend)
    lowered = lower_source(expr, shapes)
    if isinstance(expr, Tensor):
        formula = unparse(expr.node)
    else:
        formula = "\n".join(line.strip() for line in expr.strip().splitlines() if line.strip())
    return Compiled(lowered, formula)
