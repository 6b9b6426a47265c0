"""Run generated code: compile the module once, specialize it once per shape signature.

The first call with a new signature checks the arrays (binding dimension names, raising
`ShapeError` on a mismatch) and plans every contraction; a later call with inputs of exactly
the same types, shapes and dtypes only looks the specialization up and calls it. The first
signature that passes unconverted also gets a guard (`_guard`): the same test written out as
comparisons with constants, which the API tries before anything else (a call on small arrays
costs about a microsecond over the generated code itself).

Inputs of several float dtypes are all cast to their result type (numpy's `result_type`), so
every result is computed and returned in it, on the inputs' device, and owned by the caller:
it shares memory with no input and no other result (`backends.owner`, `backends.apart`). A call
keeps its state in locals, so one function serves several threads at once.
"""
from __future__ import annotations

import functools
import inspect
import threading

import numpy as np
import opt_einsum

from ..backends import (DEVICE_BACKENDS, apart, array_type, cast, namespace, on_device,
                        owner, result_dtype)
from ..errors import InputError, RuleError, ShapeError
from ..evaluate.plan import (EVALUATION_FAILURES, _as_array, bind_dimensions, check_picks,
                             check_structured, evaluation_error, is_float, reject_unknown,
                             size_of, weak)
from ..ir.dims import show_shape
from ..ir.nodes import Var
from ..vectorize.gc_pause import paused_gc
from .python import PythonModule


_EINSUM = {"torch": "torch", "jax": "jax", "cupy": "cupy", "dask": "dask"}


class GeneratedFunction:
    def __init__(self, module: PythonModule, declared: dict, structured=(),
                 backend: str = "numpy", plain: bool = False, picks=()):
        self.module = module
        # `plain`: the guard returns what the API call returns, one output as itself (not in a
        # tuple of one), so that the call can return the guard's result as it is.
        self.plain = plain
        # Compiling a long program's source builds a syntax tree of millions of objects: with the
        # collector paused (see paused_gc) a 1 MB program compiles in half the time.
        with paused_gc():
            self.code = compile(module.source, f"<einderiv {module.function}>", "exec")
        self.arguments = module.arguments
        self.variables = {name: Var(name, declared[name]) for name in module.arguments}
        # Inputs the result does not use may still be passed (the API accepts every declared
        # variable) and are checked.
        self.optional = {name: Var(name, shape) for name, shape in declared.items()
                         if name not in self.variables}
        self.structured = list(structured)  # slices and picks to check per signature
        self.picks = tuple(picks)  # the text's own picks (Lowered.picks), checked likewise
        # (dimension sizes, result dtype, device) -> (function, result dtype)
        self._cache: dict[tuple, tuple] = {}
        # (name, type, dtype, shape[, device]) of every input -> (function, result dtype), for
        # inputs that the checks hand to the code as they are: exact arrays of the backend.
        self._seen: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # one thread specializes a signature; others reuse it
        self.backend = backend
        self.xp = namespace(backend)
        self._native = array_type(backend)
        self._devices = backend in DEVICE_BACKENDS
        self._own = owner(backend)
        self._apart = apart(backend)
        self._failures = EVALUATION_FAILURES + ((RuntimeError,) if backend == "torch" else ())
        self._single = module.outputs == 1
        # The first signature that passed the checks unconverted, as straight-line code (see
        # _guard): `guarded(arrays)` is the outputs, or MISS for any other call.
        self.guarded = None
        self._guarded = None  # (seen, found) of that signature, for `entry`
        self._order = list(declared)  # the order positional arrays bind in (or .inputs')

    def entry(self, slow):
        """The guard's signature as the API call itself (`_guard` with `slow`), a function of
        the result and its arrays: `slow(result, *args, **arrays)` takes every other call.
        None until `guarded` is set."""
        if self._guarded is None:
            return None
        seen, found = self._guarded
        return _guard(seen, self.arguments, found, self._own, self._apart, self.module.outputs,
                      self._failures, self.backend, self.plain, self.module.fresh,
                      order=self._positional_order(seen), slow=slow)

    def _positional_order(self, seen: tuple) -> list[str]:
        """The order in which the guard of `seen` binds positional arrays, all of them: the
        declared one where the signature has every declared variable, that of the inputs the
        code needs (`.inputs`) where it has just those (the API binds as many arrays so too,
        `_Result._keywords`; not where one of them is only read for its shape, which may be
        left out and makes that count ambiguous), else the declared one, which the guard then
        leaves to the API (its names are not the signature's)."""
        names = {name for name, *_ in seen}
        inputs = [name for name in self._order if name in set(self.arguments)]
        if names != set(self._order) and names == set(inputs) and not (
                self.module.dimension_only & names):
            return inputs
        return self._order

    def __call__(self, arrays: dict) -> tuple:
        """The outputs, in order, for keyword `arrays`."""
        try:
            # The type is part of the key: an np.matrix or another library's array with the
            # shapes and dtypes of a fast call still goes through conversion. The dtype is read
            # first: an `einderiv.var` expression has none, and its shape is worked out by
            # lowering it (an error of its own).
            seen = tuple([(k, type(v), v.dtype, v.shape) for k, v in arrays.items()])
            if self._devices:
                seen += tuple([v.device for v in arrays.values()])
            found = self._seen.get(seen)
        except (AttributeError, TypeError):  # a Python number or a list; an unhashable device
            seen = found = None  # the careful path
        if found is None:
            return self._first_call(arrays, seen)
        # Exactly these types, names, shapes and dtypes passed the checks unconverted.
        function, dtype = found
        args = [arrays[name] for name in self.arguments]
        own, given = self._own, arrays.values()
        try:
            result = function(*args)
            if self._single:
                return (own(result, given, dtype),)
            return tuple(self._apart([own(r, given, dtype) for r in result]))
        except self._failures as e:  # a copy that `own` makes can run out of memory too
            raise evaluation_error(e, self.backend) from None

    def _first_call(self, arrays: dict, seen) -> tuple:
        values, env = self._checked(arrays)
        dtype = result_dtype(self.backend, self.xp, [values[name].dtype for name, value
                                                     in arrays.items() if not weak(value)])
        for name in arrays:  # mixed precisions: the whole computation in the widest one
            if values[name].dtype != dtype:
                values[name] = cast(self.backend, values[name], dtype)
        given = [values[name] for name in arrays]  # not the stand-ins for absent inputs
        device = given[0].device if self._devices and given else None
        key = (tuple(sorted(env.items())), dtype, device)
        found = self._cache.get(key)
        if found is None:
            with self._lock:
                found = self._cache.get(key)
                if found is None:  # checks the slices first: nothing invalid is cached
                    found = self._cache[key] = (self._specialize(env, dtype, device), dtype)
        if seen is not None and all(name in arrays for name in self.arguments) and all(
                values[name] is value for name, value in arrays.items()):
            self._seen[seen] = found  # nothing was converted or stood in for
            if self.guarded is None and not self._devices:
                self._guarded = (seen, found)
                self.guarded = _guard(seen, self.arguments, found, self._own, self._apart,
                                      self.module.outputs, self._failures, self.backend,
                                      self.plain, self.module.fresh)
        function = found[0]
        args = [values[name] for name in self.arguments]
        try:
            result = function(*args)
            if self._single:
                return (self._own(result, given, dtype),)
            return tuple(self._apart([self._own(r, given, dtype) for r in result]))
        except self._failures as e:
            raise evaluation_error(e, self.backend) from None

    def _checked(self, arrays: dict):
        """The arrays to call the code with, and the dimension sizes they bind."""
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
        env = bind_dimensions(bound, values)
        for name in stand_ins:
            try:
                shape = tuple(size_of(d, env) for d in self.variables[name].shape)
            except ShapeError:
                raise InputError(f"missing input '{name}' (shape "
                                 f"{show_shape(self.variables[name].shape)}): the result's "
                                 f"shape depends on it") from None
            values[name] = np.broadcast_to(np.zeros(()), shape)  # a shape, no memory
        return values, env

    def _as_input(self, name: str, value):
        """An array of the backend with a float dtype: its own arrays as they are (integers and
        booleans as float64), anything else (numpy arrays, lists, numbers, another library's
        arrays) converted through numpy; complex and non-numeric inputs are an InputError."""
        if isinstance(value, self._native) and self.backend != "numpy":
            if is_float(name, value.dtype):
                return value
            # the library's own default float: JAX's is float32 unless x64 is on, and asking it
            # for float64 warns on every call
            return cast(self.backend, value, self.xp.asarray(0.0).dtype
                        if self.backend == "jax" else self.xp.float64)
        array = _as_array(name, value)
        if self.backend == "numpy":
            return array
        try:
            return self.xp.asarray(array)
        except Exception as e:  # the library refuses the array
            raise InputError(f"input '{name}' cannot be made a {self.backend} array: "
                             f"{e}") from None

    def _specialize(self, env: dict, dtype, device):
        for node in self.structured:
            check_structured(node, env)
        check_picks(self.picks, env)
        scope: dict = {}
        try:
            exec(self.code, scope)  # our generated module, never user text
        except (Exception, SystemExit) as e:  # it imports the modules a trusted rule file names
            raise RuleError(f"importing the modules of the implementations failed: "
                            f"{type(e).__name__}: {e}",
                            hint="a rule file loaded with allow_imports names a module that "
                                 "cannot be imported here") from None
        scope["_xp"] = on_device(self.backend, self.xp, device)
        scope["_dtype"] = dtype
        for k, (spec, shapes) in enumerate(self.module.contractions):
            concrete = [tuple(size_of(d, env) for d in shape) for shape in shapes]
            expression = opt_einsum.contract_expression(spec, *concrete)
            scope[f"_c{k}"] = (expression if self.backend == "numpy" else
                               functools.partial(expression, backend=_EINSUM[self.backend]))
        return scope[self.module.function]


MISS = object()  # what a guard returns for a call it does not cover


def _guard(seen: tuple, arguments: list, found: tuple, own, separate, outputs: int, failures,
           backend: str, plain: bool = False, fresh: list[bool] | None = None,
           order: list[str] | None = None, slow=None, keywords: bool = True):
    """The fast path of one signature, `seen` ((name, type, dtype, shape) of every input, as
    `GeneratedFunction.__call__` keys it), as a function compiled for it: the same checks as
    the key's lookup (exactly these names, types, dtypes and shapes), written out as
    comparisons with constants, then the call, with a numpy result that is a fresh array of the
    result dtype returned as it is (what `own` and `apart` would return). About a microsecond
    less per call than building the key, which is most of the cost of a call on small arrays.
    The outputs come in a tuple; with `plain`, a single one comes as itself. `fresh`, per
    output: it is computed where it is returned, by numpy arithmetic (PythonModule.fresh), so
    a numpy array of it is new: only its type and dtype are checked.

    Without `slow` it is `guarded(arrays)`, a dict of the inputs by name, returning MISS for any
    other call. With `slow` it is the API call itself, a method `__call__(result, /, *args,
    **arrays)` to bind to the result: the arrays by keyword, or all of `order` (the declared
    variables) by position, and any other call handed to `slow(result, *args, **arrays)` as it
    came (one Python call in all where the signature is the one seen; a call through the API's
    method and then the guard was 0.5 us more). With `keywords` its inputs are keyword-only
    parameters named as the inputs, so that a call by keyword binds them without a dict; an
    input named as one of the guard's own locals (`rest`, `a0`...) makes it read a dict again.

    The source holds only local names and the constants' names (`_k0`, `_t0`...): the input
    names, types, dtypes and shapes are values in its namespace, never pasted into the code;
    the keyword parameters are written `_p0, _p1...` and renamed in the compiled code object."""
    function, dtype = found
    single = outputs == 1
    env = {"_fn": function, "_dt": dtype, "_own": own, "_apart": separate, "_MISS": MISS,
           "_failures": failures, "_error": evaluation_error, "_backend": backend,
           "_nd": np.ndarray, "_slow": slow}
    position = {name: k for k, (name, _, _, _) in enumerate(seen)}
    names = [name for name, _, _, _ in seen]
    # The API entry takes the inputs as keyword-only parameters `_p0, _p1...`, renamed to the
    # inputs' names in the compiled code (below), so that a call by keyword binds them without
    # a dict of its own or a lookup per input (0.1 us of a call's 0.6 us over the generated
    # code). Names that are the entry's own locals keep the dict form.
    keywords = keywords and slow is not None
    if slow is None:
        miss = "_MISS"
        lines = ["def guarded(arrays):"]
    elif keywords:
        given = "".join(f"_p{k}, " for k in range(len(seen)))
        miss = f"_slow(_result, *args, **_given(({given}), rest))"
        lines = ["def __call__(_result, /, *args, "
                 + "".join(f"_p{k}=_MISS, " for k in range(len(seen))) + "**rest):",
                 "    if args:"]
        if order is not None and sorted(order) == sorted(names):  # every variable, in order
            lines += ["        if rest" + "".join(f" or _p{k} is not _MISS"
                                             for k in range(len(seen)))
                      + f" or len(args) != {len(seen)}:",
                      f"            return {miss}",
                      *(f"        a{k} = args[{order.index(name)}]"
                        for k, name in enumerate(names))]
        else:
            lines += [f"        return {miss}"]
        lines += ["    elif rest:", f"        return {miss}", "    else:",
                  *(f"        a{k} = _p{k}" for k in range(len(seen))), "        pass"]
    else:
        miss = "_slow(_result, *args, **arrays)"
        lines = ["def __call__(_result, /, *args, **arrays):", "    if args:"]
        if order is not None and sorted(order) == sorted(names):  # every variable, in order
            lines += [f"        if arrays or len(args) != {len(seen)}:",
                      f"            return {miss}",
                      *(f"        a{k} = args[{order.index(name)}]"
                        for k, name in enumerate(names)),
                      "    else:"]
        else:
            lines += [f"        return {miss}", "    else:"]
        lines += ["        pass"]
    indent = "    " if slow is None else "        "
    if not keywords:
        lines += [f"{indent}if len(arrays) != {len(seen)}:", f"{indent}    return {miss}",
                  f"{indent}try:"]
    checks = ["True"]  # (an expression of no inputs has none to check)
    for k, (name, kind, dt, shape) in enumerate(seen):
        env[f"_k{k}"], env[f"_t{k}"], env[f"_d{k}"], env[f"_s{k}"] = name, kind, dt, shape
        if not keywords:
            lines.append(f"{indent}    a{k} = arrays[_k{k}]")
        # the dtype by identity first (numpy's builtin dtypes are singletons), by value else
        # (a keyword not given is _MISS, whose type is no array's)
        checks.append(f"type(a{k}) is _t{k} and (a{k}.dtype is _d{k} or a{k}.dtype == _d{k}) "
                      f"and a{k}.shape == _s{k}")
    if not keywords:
        if not seen:
            lines.append(f"{indent}    pass")
        lines += [f"{indent}except KeyError:", f"{indent}    return {miss}"]
    lines += ["    if not (" + " and ".join(checks) + "):", f"        return {miss}"]
    args = ", ".join(f"a{position[name]}" for name in arguments)
    given = "(" + "".join(f"a{k}, " for k in range(len(seen))) + ")"
    lines += ["    try:", f"        r = _fn({args})"]
    # An output is the caller's as it is when it is a fresh array of the result dtype, no
    # input and no other output. Against many inputs and outputs, by a set of their ids: an
    # LSTM's 16 inputs and 14 outputs were 371 comparisons a call (7 us of 250). An output
    # made where it is returned (`fresh`) is new: its type and dtype are all there is to check.
    fresh = list(fresh) if fresh is not None else [False] * outputs
    checked = [k for k in range(outputs) if not fresh[k]]  # maybe an input, a view, another
    many = len(seen) > 4 or len(checked) > 4
    if many and checked:
        lines.append(f"        _in = {{{''.join(f'id(a{k}), ' for k in range(len(seen)))}}}")

    def owned(r: str, k: int) -> list[str]:
        if fresh[k]:
            return [f"type({r}) is _nd", f"{r}.dtype is _dt"]
        return [f"type({r}) is _nd", f"{r}.base is None", f"{r}.dtype is _dt",
                *([f"id({r}) not in _in"] if many else
                  [f"{r} is not a{j}" for j in range(len(seen))])]
    if single:
        copied = f"_own(r, {given}, _dt)"
        one, two = ("r", copied) if plain else ("(r,)", f"({copied},)")
        if backend == "numpy":  # a fresh array of the result dtype is the caller's as it is
            lines += [f"        if {' and '.join(owned('r', 0))}:", f"            return {one}"]
        lines += [f"        return {two}"]
    else:
        if backend == "numpy" and outputs > 1:  # ... and fresh ones are apart if distinct
            names = [f"r{k}" for k in range(outputs)]
            others = [names[k] for k in checked]  # (a fresh output is apart from any other)
            apart = ([f"len({{{''.join(f'id({a}), ' for a in others)}}}) == {len(others)}"]
                     if len(others) > 4 else
                     [f"{a} is not {b}" for i, a in enumerate(others) for b in others[:i]])
            tests = sum([owned(a, k) for k, a in enumerate(names)], []) + apart
            lines += [f"        {', '.join(names)}, = r",
                      f"        if {' and '.join(tests)}:",
                      "            return r"]
        lines += [f"        return tuple(_apart([_own(x, {given}, _dt) for x in r]))"]
    lines += ["    except _failures as e:", "        raise _error(e, _backend) from None"]
    exec(compile("\n".join(lines), "<einderiv guard>", "exec"), env)  # our own text, see above
    guard = env["guarded" if slow is None else "__call__"]
    if keywords:  # the parameters `_p0, _p1...` renamed to the inputs' names: data, not source
        code = guard.__code__
        renamed = {f"_p{k}": name for k, name in enumerate(names)}
        if set(names) & (set(code.co_varnames) - set(renamed)):  # an input named as a local
            return _guard(seen, arguments, found, own, separate, outputs, failures, backend,
                          plain, fresh, order, slow, keywords=False)
        guard.__code__ = code.replace(co_varnames=tuple(renamed.get(v, v)
                                                         for v in code.co_varnames))
        guard.__kwdefaults__ = {name: MISS for name in names}
        guard.__signature__ = _ENTRY_SIGNATURE  # what the API documents, not the parameters
        env["_given"] = functools.partial(_given, tuple(names))
    return guard


_ENTRY_SIGNATURE = inspect.Signature([
    inspect.Parameter("_result", inspect.Parameter.POSITIONAL_ONLY),
    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
    inspect.Parameter("arrays", inspect.Parameter.VAR_KEYWORD)])


def _given(names: tuple, values: tuple, rest: dict) -> dict:
    """The keyword arrays of a call that an entry with keyword parameters does not cover: the
    inputs given by keyword (the parameters not MISS), then the call's other keywords."""
    given = {name: value for name, value in zip(names, values) if value is not MISS}
    given.update(rest)
    return given
