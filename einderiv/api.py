"""The Python API of SPEC §2: `compile` and the objects it returns."""
from __future__ import annotations

from .backends import namespace
from .derive import derivatives
from .errors import EinderivError, ShapeError, UnknownNameError, did_you_mean
from .ir.nodes import Delta, Unit, Var, topological
from .evaluate.plan import Plan
from .generate.formula import format_formula
from .generate.function import GeneratedFunction
from .generate.python import generate
from .vectorize import vectorize
from .ir.einstein import format_program
from .lower.lower import Lowered, lower
from .parse import parse
from .parse import ast
from .parse.unparse import unparse
from .rulebook import default_rulebook
from .symbolic import Tensor



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
    namespace(backend)  # an unknown or uninstalled backend is an error now, not at call time


class _Result:
    """What every API call returns: callable with keyword arrays, and printable in every format.

    `roots` maps output names to IR; `structure` turns the list of computed outputs into what
    the call returns. Vectorizing and code generation happen on first use and are kept.
    """

    def __init__(self, lowered: Lowered, roots: dict, structure, function_name: str,
                 preferred: tuple[str, ...] = (), backend: str = "numpy"):
        self.lowered = lowered
        self.backend = backend
        self._preferred = preferred
        self.roots = roots
        self._structure = structure
        self._function_name = function_name
        self._program = None
        self._module = None
        self._function = None

    @property
    def einstein(self) -> str:
        """Indexed Einstein form, one line per tensor; shared subexpressions once."""
        (first, root), *rest = self.roots.items()
        return format_program(root, self.lowered.names, first, extra_roots=dict(rest))

    @property
    def program(self):
        if self._program is None:
            self._program = vectorize(self.roots, self.lowered.names, default_rulebook(),
                                      self.lowered.declared)
        return self._program

    @property
    def formula(self) -> str:
        """Vectorized formula in the expression language: it parses back and evaluates to the
        same values. Shared subexpressions are temporaries `t0 = ...` on their own lines."""
        return format_formula(self.program)

    @property
    def latex(self) -> str:
        """The vectorized program as a LaTeX `aligned` block, one row per line of `formula`."""
        from .generate.latex import format_latex
        return format_latex(self.program)

    def _repr_latex_(self) -> str:
        return "$$" + self.latex + "$$"

    @property
    def einsum(self) -> str:
        """The contraction plan: each Einstein product as an opt_einsum call with its
        subscripts and operands, the other steps as plain calls, one line each."""
        from .generate.einsum import format_einsum
        return format_einsum(self.roots, self.lowered.names)

    @property
    def source(self) -> str:
        """The generated Python module: imports and one function of the input arrays."""
        return self._generated().source

    def _generated(self):
        if self._module is None:
            self._module = generate(self.program, self._function_name,
                                    preferred=self._preferred)
        return self._module

    @property
    def inputs(self) -> dict:
        """The input variables the results depend on, with their declared shapes."""
        return {name: tuple(str(d) for d in v.shape)
                for name, v in sorted(self.program.variables.items())}

    def __call__(self, **arrays):
        if self._function is None:
            structured = [n for n in topological(*self.roots.values())
                          if isinstance(n, (Delta, Unit))]
            self._function = GeneratedFunction(self._generated(), self.lowered.declared,
                                               structured, self.backend)
        return self._structure(self._function(arrays))

    def evaluate_ir(self, **arrays):
        """The same results computed by interpreting the IR directly (no vectorizing, no code
        generation): an independent path, used to test the generated code."""
        plan = Plan(list(self.roots.values()), accepted=self.lowered.declared)
        return self._structure(plan(arrays))


def _single(results):
    return results[0]


class Compiled(_Result):
    """An expression compiled for evaluation: call it with keyword arrays.

    >>> import numpy as np, einderiv
    >>> f = einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)})
    >>> print(f.einstein)
    out[i] = W[i,j]*x[j] + b[i]
    >>> f(W=np.eye(2), x=np.array([1.0, 2.0]), b=np.zeros(2))
    array([1., 2.])
    """

    def __init__(self, lowered: Lowered, backend: str = "numpy"):
        super().__init__(lowered, {lowered.output_name or "out": lowered.root}, _single, "value",
                         backend=backend)

    @property
    def shape(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.lowered.root.shape)

    def __repr__(self) -> str:
        return f"<einderiv.Compiled {self.formula!r}>"


def compile(expr, shapes: dict | None = None, *, backend: str = "numpy") -> Compiled:
    """Compile an expression (source text or `einderiv.var` expression) for evaluation.

    `shapes` maps each variable to a tuple of ints and dimension names (`()` for a scalar);
    inline declarations (`X: [n, d]`) may stand in for it. Raises `ParseError`, `ShapeError` or
    `UnknownNameError` (all `EinderivError`) on bad input.
    """
    _check_backend(backend)
    return Compiled(lower_source(expr, shapes), backend)


class Derived(_Result):
    """Derivatives of an expression, compiled: call with keyword arrays.

    >>> import numpy as np, einderiv
    >>> g = einderiv.grad("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)})
    >>> print(g.formula)
    (A.T + A) @ x
    >>> g(A=np.array([[1.0, 2.0], [3.0, 4.0]]), x=np.array([1.0, 1.0]))
    array([ 7., 13.])
    """

    def __init__(self, lowered: Lowered, kind: str, wrt: list[str], roots: list, labels: list,
                 structure, backend: str = "numpy"):
        super().__init__(lowered, dict(zip(labels, roots)), structure, kind, tuple(wrt), backend)
        self.kind = kind
        self.wrt = wrt

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
                   tuple if many else (lambda r: r[0]), backend=backend)


def value_and_grad(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """`(value, gradient)`, with the forward pass computed once and shared."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    _scalar_output(lowered, "value_and_grad")
    roots = derivatives(lowered.root, _variables(lowered, names), default_rulebook())
    structure = (lambda r: (r[0], tuple(r[1:]))) if many else (lambda r: (r[0], r[1]))
    return Derived(lowered, "value_and_grad", names, [lowered.root, *roots],
                   ["out", *(f"d{n}" for n in names)], structure, backend=backend)


def jacobian(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy") -> Derived:
    """The Jacobian: shape `output_shape + wrt_shape` (the convention of `jax.jacobian`)."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    lowered = lower_source(expr, shapes)
    roots = derivatives(lowered.root, _variables(lowered, names), default_rulebook(),
                        jacobian=True)
    return Derived(lowered, "jacobian", names, roots, [f"d{n}" for n in names],
                   tuple if many else (lambda r: r[0]), backend=backend)


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
    return Derived(lowered, "hessian", names, roots, labels, structure, backend=backend)
