"""An expression's value and its pullbacks on one backend: what `einderiv.torch.function` and
`einderiv.jax.function` are made of.

A framework's custom derivative (`torch.autograd.Function`, `jax.custom_vjp`) asks, after the
forward pass, for the cotangent of some of the inputs given the output's cotangent: a
vector-Jacobian product, `einderiv.vjp` by those inputs. Which inputs is known only then
(PyTorch's `needs_input_grad`, JAX's float inputs), so each set of them is derived on first use
and kept.
"""
from __future__ import annotations

import threading

from .api import compile
from .errors import InputError
from .transforms import vjp


class Pullback:
    """`value`, the expression compiled for `backend`, and `cotangents`, its vjp by any set of
    its variables. `names` is the order positional arrays bind in (`value.lowered.declared`)."""

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
                    found = self._vjps[wrt] = vjp(self._expr, list(wrt), self._shapes,
                                                  backend=self._backend,
                                                  cotangent_name=self.keyword)
        return found

    def cotangents(self, wrt: tuple[str, ...], inputs: tuple, cotangent) -> tuple:
        """The cotangent of each of `wrt` (a tuple in that order) at `inputs` (one per name of
        `names`), pulled back from the output's `cotangent`."""
        arrays = dict(zip(self.names, inputs))
        arrays[self.keyword] = cotangent
        return self.vjp(wrt)(**arrays)
