"""The Python API of SPEC §2: `compile` and the objects it returns."""
from __future__ import annotations

from .derive import derivatives
from .errors import EinderivError, ShapeError, UnknownNameError, did_you_mean
from .ir.nodes import Var
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
        self._plan = Plan([lowered.root], accepted=lowered.declared)

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


class Derived:
    """Derivatives of an expression, compiled: call with keyword arrays.

    `roots` are the IR of the results; `structure` maps them back to what the call returns.
    """

    def __init__(self, lowered: Lowered, kind: str, wrt: list[str], roots: list, labels: list,
                 structure):
        self.lowered = lowered
        self.kind = kind
        self.wrt = wrt
        self.roots = roots
        self.labels = labels
        self._structure = structure
        self._plan = Plan(roots, accepted=lowered.declared)

    @property
    def einstein(self) -> str:
        """The derivatives in indexed Einstein form; forward temporaries are shared."""
        low = self.lowered
        named = dict(zip(self.labels, self.roots))
        first, *rest = named
        return format_program(named[first], low.names, first,
                              extra_roots={k: named[k] for k in rest})

    def __call__(self, **arrays):
        return self._structure(self._plan(arrays))

    def __repr__(self) -> str:
        return f"<einderiv.{self.kind} wrt {', '.join(self.wrt)}>"


def _wrt_list(wrt) -> tuple[list[str], bool]:
    if isinstance(wrt, str):
        return [wrt], False
    if isinstance(wrt, (list, tuple)) and wrt and all(isinstance(w, str) for w in wrt):
        return list(wrt), True
    raise EinderivError(f"wrt must be a variable name or a list of names, got {wrt!r}")


def _variables(lowered: Lowered, names: list[str]) -> list[Var]:
    out = []
    for name in names:
        if name in lowered.declared:
            out.append(Var(name, lowered.declared[name]))
        elif name in lowered.bound:
            raise EinderivError(f"cannot differentiate with respect to '{name}': it is a bound "
                                f"temporary, not an input variable")
        else:
            raise UnknownNameError(f"unknown variable '{name}' in wrt",
                                   hint=did_you_mean(name, lowered.declared)
                                   or "wrt names an input variable of the expression")
    return out


def _scalar_output(lowered: Lowered, what: str) -> None:
    if lowered.root.rank:
        raise ShapeError(f"{what} needs a scalar output, but the expression has shape "
                         f"[{', '.join(map(str, lowered.root.shape))}]",
                         hint="use einderiv.jacobian for a tensor output, or reduce it with sum()")


def grad(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """The gradient of a scalar expression: shaped like `wrt` (a tuple for a list of names).

    >>> import numpy as np, einderiv
    >>> g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)})
    >>> g(x=np.array([1.0, 2.0]))
    array([2., 4.])
    """
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    _scalar_output(lowered, "grad")
    roots = derivatives(lowered.root, _variables(lowered, names), default_rulebook())
    return Derived(lowered, "grad", names, roots, [f"d{n}" for n in names],
                   tuple if many else (lambda r: r[0]))


def value_and_grad(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """`(value, gradient)`, with the forward pass computed once and shared."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    _scalar_output(lowered, "value_and_grad")
    roots = derivatives(lowered.root, _variables(lowered, names), default_rulebook())
    structure = (lambda r: (r[0], tuple(r[1:]))) if many else (lambda r: (r[0], r[1]))
    return Derived(lowered, "value_and_grad", names, [lowered.root, *roots],
                   ["out", *(f"d{n}" for n in names)], structure)


def jacobian(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """The Jacobian: shape `output_shape + wrt_shape` (the convention of `jax.jacobian`)."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    roots = derivatives(lowered.root, _variables(lowered, names), default_rulebook(),
                        jacobian=True)
    return Derived(lowered, "jacobian", names, roots, [f"d{n}" for n in names],
                   tuple if many else (lambda r: r[0]))


def hessian(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """The Hessian of a scalar expression: shape `wrt_shape + wrt_shape`; for a list of names a
    tuple of tuples whose block [i][j] has shape `wrt_i + wrt_j` (as `jax.hessian`). It is the
    symbolic derivative of the gradient program."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    _scalar_output(lowered, "hessian")
    rules = default_rulebook()
    variables = _variables(lowered, names)
    grads = derivatives(lowered.root, variables, rules)
    blocks = [derivatives(g, variables, rules, jacobian=True) for g in grads]
    roots = [b for row in blocks for b in row]
    labels = [f"d{a}d{b}" for a in names for b in names]
    k = len(names)
    structure = ((lambda r: tuple(tuple(r[i * k:(i + 1) * k]) for i in range(k))) if many
                 else (lambda r: r[0]))
    return Derived(lowered, "hessian", names, roots, labels, structure)
