"""An expression's value and its derivatives of every order on one backend: what
`einderiv.torch.function` and `einderiv.jax.function` are made of.

A framework's custom derivative asks, after the forward pass, for the cotangent of some of the
inputs given the output's cotangent: a vector-Jacobian product, `einderiv.vjp` by those inputs.
Which inputs is known only then (PyTorch's `needs_input_grad`, JAX's nonzero tangents), so each
set of them is derived on first use and kept.

A second derivative differentiates that backward program, a third the program derived from it,
and so on. Each is a `Program` that derives its own vjp and jvp by einderiv's reverse pass over
its IR (as `einderiv.vjp` and `einderiv.jvp` do), so that the framework never differentiates
einderiv's generated code: code whose derivative in the framework can be NaN or wrong where the
function's is not (an SVD-based det or adjugate at repeated singular values, a stable
softplus's `where`, softmax's rule split at the argmax). Nothing past the first derivative is
derived before a framework asks for it.
"""
from __future__ import annotations

import threading

from .api import Derived, _rebuilt, _rules_text, _snapshot, _variables, compile
from .derive import derivatives
from .errors import EinderivError, InputError
from .rulebook.table import using_rules
from .ir.nodes import Var, topological
from .simplify import Rewriter
from .transforms import _declaring, _fresh, _inner, vjp
from .vectorize.gc_pause import paused_gc


class Program:
    """One program of the derivative tower: `result` (an einderiv result, made on first use)
    computes its outputs from the arrays its `lowered.declared` lists, in that order, and
    `vjp(positions)` and `jvp(positions)` are the programs of its derivatives by the inputs at
    `positions` (a tuple of ints), each made on first use and kept.

    `p.vjp(positions)` takes p's inputs, then one cotangent per output of p, and returns the
    cotangent of each input at `positions`. `p.jvp(positions)` takes p's inputs, then one
    tangent per position, and returns the derivative of each output of p along them; its
    `tangent_of` is `(p, positions)`: its outputs are shaped as p's, linear in the tangents,
    and their transpose is `p.vjp(positions)` (already derived, where a framework only
    linearizes p to transpose it: `jax.grad` never builds the jvp program itself).
    `adapters` keeps what a framework made of the program (a torch Function), with it.

    A program pickles and copies as the way to it from its tower's `Pullback` (which pickles
    as its source, shapes and rules): derived again on load, never sent as code or locks.
    """

    def __init__(self, made, backend: str, tangent_of=None, first_vjp=None, made_from=None):
        self._made = made
        self._made_from = made_from  # (its Pullback,) or (its parent, kind, positions)
        self._result = None
        self.backend = backend
        self.tangent_of = tangent_of
        self._first_vjp = first_vjp  # the expression's own: einderiv.vjp by the names
        self._derived: dict = {}
        self._lock = threading.RLock()  # a derivation reads its parent's result
        self.adapters: dict = {}

    @property
    def result(self):
        if self._result is None:
            with self._lock:
                if self._result is None:
                    self._result = self._made()
        return self._result

    def __call__(self, *arrays) -> tuple:
        """The outputs, a tuple, for one array per input in declaration order."""
        out = self.result(*arrays)
        return out if isinstance(out, tuple) else (out,)

    def vjp(self, positions: tuple[int, ...]) -> "Program":
        return self._derivative("vjp", tuple(positions))

    def jvp(self, positions: tuple[int, ...]) -> "Program":
        return self._derivative("jvp", tuple(positions))

    def _derivative(self, kind: str, positions: tuple[int, ...]) -> "Program":
        found = self._derived.get((kind, positions))
        if found is None:
            with self._lock:
                found = self._derived.get((kind, positions))
                if found is None:
                    made_from = (self, kind, positions)
                    if kind == "jvp":
                        found = Program(lambda: _jvp(self.result, positions), self.backend,
                                        tangent_of=(self, positions), made_from=made_from)
                    elif self._first_vjp is not None:
                        found = Program(lambda: self._first_vjp(positions), self.backend,
                                        made_from=made_from)
                    else:
                        found = Program(lambda: _vjp(self.result, positions), self.backend,
                                        made_from=made_from)
                    self._derived[kind, positions] = found
        return found

    def __reduce__(self):
        if len(self._made_from) == 1:
            return (getattr, (self._made_from[0], "program"))
        parent, kind, positions = self._made_from
        return (getattr(parent, kind), (positions,))


def _vjp(result, positions: tuple[int, ...]) -> Derived:
    """The vjp of `result`'s outputs by its inputs at `positions`: d sum_j <out_j, c_j> / dx
    for a cotangent c_j per output, declared after the inputs."""
    lowered, roots, rules = result.lowered, list(result.roots.values()), result.rules
    wrt = [list(lowered.declared)[p] for p in positions]
    cotangents = _fresh_vars(lowered, "cotangent", [r.shape for r in roots])
    with paused_gc():  # a long program's IR: see paused_gc
        pulled = Rewriter(rules)(derivatives(_inner(list(zip(roots, cotangents))),
                                             _variables(lowered, wrt), rules))
    return Derived(_declaring(lowered, cotangents), "vjp", wrt, pulled,
                   [f"d{name}" for name in wrt], tuple, result.backend, rules)


def _jvp(result, positions: tuple[int, ...]) -> Derived:
    """The derivative of `result`'s outputs along a tangent per input at `positions` (declared
    after the inputs): reverse mode transposed, as `einderiv.jvp` does, for several outputs."""
    lowered, roots, rules = result.lowered, list(result.roots.values()), result.rules
    wrt = [list(lowered.declared)[p] for p in positions]
    variables = _variables(lowered, wrt)
    tangents = _fresh_vars(lowered, "tangent", [v.shape for v in variables])
    # The cotangents only have to differ from every other name: the program is free of them.
    cotangents = _fresh_vars(lowered, "cotangent", [r.shape for r in roots],
                             [t.name for t in tangents])
    rewriter = Rewriter(rules)
    with paused_gc():
        pulled = rewriter(derivatives(_inner(list(zip(roots, cotangents))), variables, rules))
        along = _inner(list(zip(pulled, tangents)))
        pushed = rewriter(derivatives(along, cotangents, rules))
        if set(cotangents) & set(topological(*pushed)):
            raise EinderivError("internal: the jvp program still depends on the cotangent")
    return Derived(_declaring(lowered, tangents), "jvp", wrt, pushed,
                   [f"jvp{k}" for k in range(len(roots))], tuple, result.backend, rules)


def _fresh_vars(lowered, stem: str, shapes: list, taken=()) -> list[Var]:
    """A new variable per shape, named `stem`, `stem_1`, ...: none of the program's names."""
    out: list[Var] = []
    for shape in shapes:
        out.append(Var(_fresh(lowered, stem, [*taken, *(v.name for v in out)]), shape))
    return out


class Pullback:
    """`value`, the expression compiled for `backend`, `vjp`, its vjp by any set of its
    variables, and `program`, the root of its derivative tower (whose vjps are those).
    `names` is the order positional arrays bind in (`value.lowered.declared`)."""

    def __init__(self, expr, shapes: dict | None, backend: str):
        self.value = compile(expr, shapes, backend=backend)
        self._expr, self._shapes, self._backend = expr, shapes, backend
        self.names = list(self.value.lowered.declared)
        # The output cotangent is a variable of the vjp program: a name no variable or bound
        # temporary of the expression has.
        taken = set(self.names) | set(self.value.lowered.bound)
        self.keyword = next(name for name in ("cotangent", *(f"cotangent_{k}" for k in
                                                               range(1, len(taken) + 2)))
                            if name not in taken)
        self._vjps: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        self.program = Program(lambda: self.value, backend, first_vjp=lambda positions: self.vjp(
            tuple(self.names[p] for p in positions)), made_from=(self,))

    def __reduce__(self):
        # Made again on load from the source, shapes and rule book (as text), as every einderiv
        # result is: derived programs and locks stay in the process that made them.
        return (_rebuilt, ((Pullback, (self._expr, _snapshot(self._shapes), self._backend), {}),
                           _rules_text(self.value.rules)))

    def bound(self, args: tuple, arrays: dict) -> tuple:
        """Every input in the order of `names`: positional `args` first, then by keyword."""
        arrays = self.value._keywords(args, arrays)
        missing = [name for name in self.names if name not in arrays]
        unknown = [name for name in arrays if name not in self.value.lowered.declared]
        if unknown:
            raise InputError(f"unexpected input '{unknown[0]}'; the inputs are "
                             f"{', '.join(self.names)}")
        if missing:
            raise InputError(f"missing input '{missing[0]}'; the inputs are "
                             f"{', '.join(self.names)}, in that order")
        return tuple(arrays[name] for name in self.names)

    def vjp(self, wrt: tuple[str, ...]):
        """`einderiv.vjp` of the expression by `wrt`, derived once per tuple of names."""
        found = self._vjps.get(wrt)
        if found is None:
            with self._lock:
                found = self._vjps.get(wrt)
                if found is None:
                    with using_rules(self.value.rules):  # the book `value` was made with
                        found = self._vjps[wrt] = vjp(self._expr, list(wrt), self._shapes,
                                                      backend=self._backend,
                                                      cotangent_name=self.keyword)
        return found
