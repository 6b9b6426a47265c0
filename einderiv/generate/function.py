"""Run generated code: compile the module once, specialize it once per shape signature.

The first call with a new signature checks the arrays (binding dimension names, raising
`ShapeError` on a mismatch) and plans every contraction; a later call with the same shapes and
dtypes only looks the specialization up and calls it.
"""
from __future__ import annotations

import functools

import numpy as np
import opt_einsum

from ..backends import namespace

from ..errors import InputError, ShapeError
from ..evaluate.plan import (EVALUATION_FAILURES, _as_array, bind_dimensions,
                             check_structured, evaluation_error, reject_unknown, size_of)
from ..ir.dims import show_shape
from ..ir.nodes import Var
from .python import PythonModule


_EINSUM = {"torch": "torch", "jax": "jax", "cupy": "cupy", "dask": "dask"}


class GeneratedFunction:
    def __init__(self, module: PythonModule, declared: dict, structured=(),
                 backend: str = "numpy"):
        self.module = module
        self.code = compile(module.source, f"<einderiv {module.function}>", "exec")
        self.arguments = module.arguments
        self.variables = {name: Var(name, declared[name]) for name in module.arguments}
        # Inputs the result does not use may still be passed (SPEC §2) and are checked.
        self.optional = {name: Var(name, shape) for name, shape in declared.items()
                         if name not in self.variables}
        self._cache: dict[tuple, object] = {}
        self.structured = list(structured)  # slices and picks to check per signature
        self._seen: dict[tuple, object] = {}  # (name, shape, dtype) of every input -> function
        self.backend = backend
        self.xp = namespace(backend)
        self._single = module.outputs == 1

    def __call__(self, arrays: dict) -> tuple:
        """The outputs, in order, for keyword `arrays`."""
        try:
            seen = tuple([(k, v.shape, v.dtype) for k, v in arrays.items()])
        except AttributeError:
            seen = None  # a Python scalar or a list: take the careful path
        function = self._seen.get(seen)
        if function is None:
            return self._first_call(arrays, seen)
        # Exactly these names, shapes and dtypes passed the checks: call it, nothing else.
        try:
            result = function(*[arrays[name] for name in self.arguments])
        except EVALUATION_FAILURES as e:
            raise evaluation_error(e) from None
        return (result,) if self._single else result

    def _first_call(self, arrays: dict, seen) -> tuple:
        values, key = self._checked(arrays)
        function = self._cache.get(key)
        if function is None:
            function = self._cache[key] = self._specialize(values)
        if seen is not None and all(name in arrays and values[name] is arrays[name]
                                    for name in self.arguments):
            self._seen[seen] = function  # nothing was converted or stood in for
        try:
            result = function(*[values[name] for name in self.arguments])
        except EVALUATION_FAILURES as e:
            raise evaluation_error(e) from None
        return (result,) if self._single else tuple(result)

    def _checked(self, arrays: dict):
        reject_unknown(arrays, {**self.variables, **self.optional})
        values = {}
        stand_ins = []
        for name, var in self.variables.items():
            if name in arrays:
                values[name] = self._as_input(name, arrays[name])
            elif name in self.module.dimension_only:
                stand_ins.append(name)  # only its shape is read: other inputs may bind it
            else:
                raise InputError(f"missing input '{name}' (shape {show_shape(var.shape)})")
        given = {}
        for name, var in self.optional.items():
            if name in arrays:
                values[name] = self._as_input(name, arrays[name])
                given[name] = var
        bound = {n: v for n, v in {**self.variables, **given}.items() if n in values}
        self._env = bind_dimensions(bound, values)
        for name in stand_ins:
            try:
                shape = tuple(size_of(d, self._env) for d in self.variables[name].shape)
            except ShapeError:
                raise InputError(f"missing input '{name}' (shape "
                                 f"{show_shape(self.variables[name].shape)}): the result's "
                                 f"shape depends on it") from None
            values[name] = np.broadcast_to(np.zeros(()), shape)  # a shape, no memory
        key = tuple((values[n].shape, values[n].dtype) for n in self.arguments)
        return values, key

    def _as_input(self, name: str, value):
        """numpy inputs are converted (lists, ints); other backends' arrays are used as given."""
        if self.backend == "numpy" or isinstance(value, (int, float, list, tuple)):
            array = _as_array(name, value)
            return array if self.backend == "numpy" else self._from_numpy(array)
        if not hasattr(value, "shape"):
            raise InputError(f"input '{name}' is not an array")
        return value

    def _from_numpy(self, array):
        return self.xp.asarray(array) if hasattr(self.xp, "asarray") else array

    def _specialize(self, values: dict):
        for node in self.structured:
            check_structured(node, self._env)
        scope: dict = {}
        exec(self.code, scope)  # our generated module, never user text
        scope["_xp"] = self.xp
        for k, (spec, shapes) in enumerate(self.module.contractions):
            concrete = [tuple(size_of(d, self._env) for d in shape) for shape in shapes]
            expression = opt_einsum.contract_expression(spec, *concrete)
            scope[f"_c{k}"] = (expression if self.backend == "numpy" else
                               functools.partial(expression, backend=_EINSUM[self.backend]))
        return scope[self.module.function]
