"""Derivative products that never form the whole matrix: `hvp`, `jvp`, `vjp` (names as JAX's).

Each is the gradient of a scalar made of a derivative program and a direction variable, taken
by the same reverse pass, rewrites and simplification as `grad`:

- `vjp`: d <f, u> / dw for the output cotangent u: the transposed Jacobian applied to u.
- `hvp`: d (sum_k <grad_k f, v_k>) / dw: the Hessian times v as the derivative of the gradient
  program along v (reverse over reverse). The Hessian is never formed: every array of the
  program is shaped like one of the value's or the gradient's.
- `jvp`: d <vjp(u), t> / du. The vjp is linear in u, so this is J t, free of u: forward mode
  as the transpose of reverse mode, with nothing of the Jacobian's size either.

The direction is a variable of the derived program, declared with `wrt`'s shape (the output's
for a cotangent), and is passed by one keyword, `tangent` or `cotangent` unless renamed: a
tuple of one array per name for a list of `wrt` (as `jax.jvp`'s tangents).
"""
from __future__ import annotations

import dataclasses

from .api import (Derived, _check_backend, _check_wrt_shapes, _distinct, _scalar_output,
                  _single, _structure_of, _variables, _wrt_list, lower_source, rebuildable,
                  rewritten)
from .derive import derivatives
from .errors import EinderivError, InputError
from .ir import build
from .ir.nodes import Var, topological
from .parse.parser import check_name
from .rulebook import default_rulebook
from .simplify import Rewriter
from .vectorize.gc_pause import paused_gc


class Product(Derived):
    """A derivative product (`hvp`, `jvp`, `vjp`), compiled: call it with the expression's
    keyword arrays and the direction as `self.keyword`.

    With one `wrt` the direction is one array, and the keyword is also its name in the
    derived program (`.inputs`, `.formula`, `.source`). With a list of `wrt` it is a tuple of
    one array per name, in that order; the program names them `<keyword>_<name>`, and a call
    may give them so too.
    """

    def __init__(self, lowered, kind, wrt, roots, labels, structure, backend, rules,
                 positions, keyword: str, directions: list[str], many: bool):
        super().__init__(lowered, kind, wrt, roots, labels, structure, backend, rules, positions)
        self.keyword = keyword
        self.directions = directions  # the program's names of the direction, in order
        self._many = many

    def _directed(self, args: tuple, arrays: dict) -> dict:
        """The arrays by name, positional `args` bound first (in the order of `.inputs`, the
        direction last by the program's names), the direction under the program's names."""
        if args:  # (a direction given as a tuple under the keyword gives its names too)
            arrays = self._keywords(args, arrays, self.directions if self._many and
                                    self.keyword in arrays else ())
        if all(name in arrays for name in self.directions):
            return arrays
        if not self._many or self.keyword not in arrays:
            missing = self.keyword if self.keyword not in arrays else self.directions[0]
            raise InputError(f"{self.kind} needs the {_what(self.kind)} as the keyword "
                             f"'{missing}'", hint=self._hint())
        arrays = dict(arrays)
        value = arrays.pop(self.keyword)
        if not isinstance(value, (tuple, list)) or len(value) != len(self.directions):
            raise InputError(f"{self.kind} wrt {', '.join(self.wrt)}: '{self.keyword}' must be "
                             f"a tuple of {len(self.directions)} arrays, one per wrt, got "
                             f"{_described(value)}", hint=self._hint())
        for name, array in zip(self.directions, value):
            if name in arrays:
                raise InputError(f"the direction is given twice: as '{self.keyword}' and as "
                                 f"'{name}'", hint=self._hint())
            arrays[name] = array
        return arrays

    def _hint(self) -> str:
        shapes = ", ".join(f"[{', '.join(map(str, self.lowered.declared[n]))}]"
                           for n in self.directions)
        if self._many:
            return f"{self.keyword}=(...) with arrays shaped {shapes}"
        return f"{self.keyword}=array shaped {shapes}"

    def __call__(self, /, *args, **arrays):
        return super().__call__(**self._directed(args, arrays))

    def evaluate_ir(self, /, *args, **arrays):
        return super().evaluate_ir(**self._directed(args, arrays))

    def __repr__(self) -> str:
        return f"<einderiv.{self.kind} wrt {', '.join(self.wrt)}, {self.keyword}=...>"


def _what(kind: str) -> str:
    return "output cotangent" if kind == "vjp" else "direction (tangent)"


def _described(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


@rebuildable
def hvp(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
        tangent_name: str = "tangent", sizes: dict | None = None) -> Product:
    """The Hessian of a scalar expression times a direction, never forming the Hessian.

    Call it with the expression's arrays and `tangent=` (an array shaped like `wrt`; for a list
    of names a tuple of one array per name, and the result is a tuple with one entry per name,
    `sum_j H[i][j] @ v[j]` as `jax.hessian`'s blocks would give). It is the derivative of the
    gradient program along the direction, derived symbolically: memory and time are those of
    a gradient, a small constant times, not of the Hessian. `tangent_name` renames the keyword;
    a variable of the expression with that name is an `EinderivError` naming it. `sizes` fixes
    dimension names to integers, as for `grad` (`sizes={"k": 3}` for an `eye(k)` whose k no
    input's shape has). A text past
    `parser.MAX_HESSIAN_OPERATIONS` operations is a `ParseError`, as for `hessian`.

    >>> import numpy as np, einderiv
    >>> shapes = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    >>> hv = einderiv.hvp("sum(log(1 + exp(-y * (X @ w))))", "w", shapes)
    >>> print(hv.formula)
    X.T @ (X @ tangent * y * dsigmoid(-y * (X @ w)) * y)
    >>> hv(X=np.eye(2), y=np.ones(2), w=np.zeros(2), tangent=np.array([1.0, 2.0]))
    array([0.25, 0.5 ])
    """
    with paused_gc():  # a long program's IR: see paused_gc
        names, many, rules, rewriter, lowered = _prepared(expr, wrt, shapes, backend, 2, sizes)
        _scalar_output(lowered, "hvp")
        return _hvp(lowered, names, many, rules, rewriter, backend, tangent_name)


def _hvp(lowered, names, many, rules, rewriter, backend, keyword) -> Product:
    distinct, positions = _distinct(names)
    variables = _variables(lowered, distinct)
    directions = _direction_names(lowered, "hvp", keyword, "tangent_name", names, many)
    grads = rewriter(derivatives(lowered.root, variables, rules))
    tangents = [Var(d, variables[p].shape) for d, p in zip(directions, positions)]
    along = _inner([(grads[p], t) for p, t in zip(positions, tangents)])
    roots = rewriter(derivatives(along, variables, rules))
    lowered = _declaring(lowered, tangents)
    structure = _structure_of(positions) if many else _single  # (the call's fast path: api)
    return Product(lowered, "hvp", names, roots, [f"hvp_{n}" for n in distinct], structure,
                   backend, rules, positions, keyword, directions, many)


@rebuildable
def jvp(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
        tangent_name: str = "tangent", sizes: dict | None = None) -> Product:
    """Forward mode: `(value, tangent_out)`, the expression's value and its directional
    derivative `J @ tangent`, for an output of any shape.

    Call it with the expression's arrays and `tangent=` (an array shaped like `wrt`; for a list
    of names a tuple of one array per name, the derivative along all of them together, as
    `jax.jvp`). `tangent_out` has the output's shape. The Jacobian is never formed: the
    program is the derivative by the output cotangent u of `<vjp(u), tangent>`, free of u.
    `tangent_name` renames the keyword; `sizes` fixes dimension names, as for `grad`. That is
    a derivative of a derivative, as `hvp`'s, and
    takes as long (two to three times a `vjp`), so a text past `parser.MAX_HESSIAN_OPERATIONS`
    operations is a `ParseError`, as for `hessian` and `hvp`.

    >>> import numpy as np, einderiv
    >>> f = einderiv.jvp("W @ x", "x", {"W": ("m", "n"), "x": ("n",)})
    >>> print(f.formula)
    out = W @ x
    jvp = W @ tangent
    >>> f(W=np.eye(2), x=np.zeros(2), tangent=np.array([1.0, 2.0]))
    (array([0., 0.]), array([1., 2.]))
    """
    with paused_gc():
        names, many, rules, rewriter, lowered = _prepared(expr, wrt, shapes, backend, 2, sizes)
        distinct, positions = _distinct(names)
        variables = _variables(lowered, distinct)
        keyword = tangent_name
        directions = _direction_names(lowered, "jvp", keyword, "tangent_name", names, many)
        # The cotangent's name only has to differ from every other variable's: the program
        # below is free of it.
        cotangent = Var(_fresh(lowered, "cotangent", directions), lowered.root.shape)
        pulled = rewriter(derivatives(_inner([(lowered.root, cotangent)]), variables, rules))
        tangents = [Var(d, variables[p].shape) for d, p in zip(directions, positions)]
        along = _inner([(pulled[p], t) for p, t in zip(positions, tangents)])
        (pushed,) = rewriter(derivatives(along, [cotangent], rules))
        if cotangent in topological(pushed):
            raise EinderivError("internal: the jvp program still depends on the cotangent")
    return Product(_declaring(lowered, tangents), "jvp", names, [lowered.root, pushed],
                   ["out", "jvp"], tuple, backend, rules, None, keyword,
                   directions, many)


@rebuildable
def vjp(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
        cotangent_name: str = "cotangent", sizes: dict | None = None) -> Product:
    """Reverse mode for an output of any shape: the cotangent of each `wrt`, `u @ J`.

    Call it with the expression's arrays and `cotangent=` (an array shaped like the output, a
    scalar for a scalar output, where `vjp` with cotangent 1 is `grad`). The result is shaped
    like `wrt`; for a list of names a tuple in that order (a repeated name repeats its entry,
    as `grad`). `cotangent_name` renames the keyword; `sizes` fixes dimension names, as for
    `grad`.

    >>> import numpy as np, einderiv
    >>> f = einderiv.vjp("W @ x", "x", {"W": ("m", "n"), "x": ("n",)})
    >>> print(f.formula)
    W.T @ cotangent
    >>> f(W=np.array([[1.0, 2.0], [3.0, 4.0]]), x=np.zeros(2), cotangent=np.array([1.0, 0.0]))
    array([1., 2.])
    """
    with paused_gc():
        names, many, rules, rewriter, lowered = _prepared(expr, wrt, shapes, backend, 1, sizes)
        distinct, positions = _distinct(names)
        variables = _variables(lowered, distinct)
        (name,) = _direction_names(lowered, "vjp", cotangent_name, "cotangent_name", [], False)
        cotangent = Var(name, lowered.root.shape)
        roots = rewriter(derivatives(_inner([(lowered.root, cotangent)]), variables, rules))
    structure = _structure_of(positions) if many else _single
    return Product(_declaring(lowered, [cotangent]), "vjp", names, roots,
                   [f"d{n}" for n in distinct], structure, backend, rules, positions,
                   cotangent_name, [name], False)


def _prepared(expr, wrt, shapes, backend, order, sizes=None):
    """What every product starts from: the wrt names, the rule book in force and a rewriter
    of it, and the expression lowered and rewritten (held to the derivation limit of
    `order`; `sizes` fixes dimension names, as for `grad`). A `wrt` var of another shape than
    the expression's is a `ShapeError`."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    rules = default_rulebook()
    rewriter = Rewriter(rules)
    lowered = rewritten(lower_source(expr, shapes, rules, order=order, sizes=sizes), rewriter)
    _check_wrt_shapes(lowered, wrt)
    return names, many, rules, rewriter, lowered


def _inner(pairs):
    """sum_k sum(a_k * b_k) over every axis: the scalar a product is the gradient of."""
    terms = []
    for a, b in pairs:
        labels = tuple(range(a.rank))
        terms.append((1.0, build.contract((), [(a, labels), (b, labels)])))
    return terms[0][1] if len(terms) == 1 else build.add(terms)


def _direction_names(lowered, kind, keyword, option, names, many) -> list[str]:
    """The program's names of the direction: `keyword` itself for one array, else
    `<keyword>_<name>` per position of `wrt`. The keyword must not be a name of the expression
    (a call could not tell the two apart); the names made from it are made distinct."""
    check_name(keyword, option, EinderivError)
    if keyword in lowered.declared or keyword in lowered.bound:
        raise EinderivError(f"{kind} takes the {_what(kind)} by the keyword '{keyword}', and "
                            f"the expression has a variable named '{keyword}'",
                            hint=f"pass another keyword name: {option}='...'")
    if not many:
        return [keyword]
    out = []
    for name in names:
        out.append(_fresh(lowered, f"{keyword}_{name}", out + [keyword]))
    return out


def _fresh(lowered, name: str, also=()) -> str:
    taken = set(lowered.declared) | set(lowered.bound) | set(also)
    new, k = name, 0
    while new in taken:
        k += 1
        new = f"{name}_{k}"
    return new


def _declaring(lowered, variables: list[Var]):
    """`lowered` with the direction variables declared: calls check them like any input."""
    declared = dict(lowered.declared)
    for v in variables:
        declared[v.name] = v.shape
    return dataclasses.replace(lowered, declared=declared)
