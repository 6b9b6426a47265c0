"""Forward evaluation of IR: a plan of steps per concrete shape signature.

Planning (binding dimension sizes, choosing opt_einsum contraction paths, resolving structured
operands such as deltas into slices) happens once per signature; a later call with the same
shapes only runs the steps.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import opt_einsum

from ..backends import apart, dtype_kind, owner
from ..errors import EinderivError, EvaluationError, InputError, ShapeError, did_you_mean
from ..ir.deltas import is_structure
from ..ir.dims import Dim, names_in, show_shape
from ..ir.nodes import Add, Const, Contract, Delta, Map, Node, Prim, Size, Unit, Var, topological
from ..lower.convolution import evaluator as convolution_evaluator, is_convolution
from ..lower.dimensions import bind
from ..lower.linear import evaluator as linear_evaluator, is_linear
from ..rulebook import RuleBook, default_rulebook
from ..rulebook.table import resolve

Step = Callable[[list], object]



# What evaluating arrays can raise: a singular matrix, a domain error, an implementation
# from a user's rule table rejecting the arrays (TypeError), or arrays too large for memory;
# each becomes an EvaluationError.
# An AttributeError is a backend that lacks a function the expression needs (dask.array has
# no linalg.det). A SystemExit is an implementation (of a trusted rule file) calling exit: it
# must not end the caller's process. An ArithmeticError (FloatingPointError among them) may
# also be a backend's own division by a zero size (dask.array.pad of an empty array).
# (IndexError and RuntimeError: numpy's own limits on axes, "number of dimensions must be
# within [0, 64]" and "only supports up to 32 dimensions", are these; never a traceback.)
EVALUATION_FAILURES = (np.linalg.LinAlgError, ArithmeticError, ValueError, TypeError,
                       MemoryError, AttributeError, SystemExit, IndexError, RuntimeError)

# What numpy says when an array would have more axes than it allows, or an einsum more indices
# than it has letters (UnicodeEncodeError: opt_einsum's symbols past the 52 ASCII letters).
_AXES_LIMIT = ("number of dimensions must be within", "maximum supported dimension",
               "supports up to 32 dimensions", "too many subscripts", "too many dimensions")


def evaluation_error(e: BaseException, backend: str = "numpy") -> EvaluationError:
    """What a failure inside evaluation tells the user. On another backend than numpy, a
    failure that is not the expression's own (exit, memory) may be the array library's: a
    function it lacks or an argument it refuses, so the message names the backend."""
    error = _evaluation_error(e)
    if backend != "numpy" and not isinstance(e, (SystemExit, MemoryError)) and \
            "backend" not in str(error):
        return EvaluationError(f"{error.message} (on the {backend} backend)",
                               hint=error.hint or f"the {backend} array library may not support "
                                                  "a function this expression needs; try the "
                                                  "numpy backend")
    return error


def _evaluation_error(e: BaseException) -> EvaluationError:
    if isinstance(e, UnicodeEncodeError) or any(text in str(e) for text in _AXES_LIMIT):
        # Lowering and derivation refuse values of more than MAX_RANK axes; this is a value
        # in between that numpy (or einsum's 52 letters) cannot hold.
        from ..ir.dims import MAX_RANK, RANK_HINT
        return EvaluationError(f"evaluation failed: a value in between has more axes (or a "
                               f"product more indices) than numpy can hold: at most {MAX_RANK} "
                               f"axes, and 52 indices in one einsum ({type(e).__name__}: "
                               f"{e})", hint=RANK_HINT)
    if isinstance(e, SystemExit):
        return EvaluationError(f"evaluation failed: an implementation called exit "
                               f"(SystemExit: {e})",
                               hint="a function of a rule file loaded with allow_imports ended "
                                    "the computation; einderiv rules check shows which")
    if isinstance(e, MemoryError):
        return EvaluationError(f"evaluation ran out of memory: {e}",
                               hint="the inputs are too large for this expression's results "
                                    "and intermediates")
    if isinstance(e, AttributeError):
        return EvaluationError(f"evaluation failed: {e}",
                               hint="the array library (backend) lacks a function this "
                                    "expression needs; try the numpy backend")
    if isinstance(e, TypeError):
        return EvaluationError(f"evaluation failed: {e} (TypeError: is every function's "
                               f"implementation in the rule tables elementwise on arrays?)")
    if isinstance(e, np.linalg.LinAlgError) or "singular" in str(e).lower():
        # the inputs' own: every backend refuses such a matrix alike (never blame the backend)
        return EvaluationError(f"evaluation failed: {e}",
                               hint="a matrix that the expression inverts, solves with or "
                                    "factors is singular (or singular to working precision) "
                                    "at these inputs")
    return EvaluationError(f"evaluation failed: {e}")

_own, _apart = owner("numpy"), apart("numpy")


class Plan:
    """Evaluates `roots` from keyword arrays; caches one step list per shape signature.

    Re-entrant: a call keeps its state in locals, so one plan serves several threads."""

    def __init__(self, roots: list[Node], rules: RuleBook | None = None, accepted=None,
                 picks=()):
        """`accepted`: further names the call may pass although the results do not use them
        (every variable of the expression, as the API accepts them). A dict of name -> shape
        also lets such an input be checked and bind dimension names (`eye(n)` where only
        `X: [n, d]` has n)."""
        self.roots = list(roots)
        self.picks = tuple(picks)  # the text's picks, checked per signature (check_picks)
        self.rules = rules or default_rulebook()
        self.order = topological(*self.roots)
        self.variables = {n.name: n for n in self.order if isinstance(n, Var)}
        shapes = accepted if isinstance(accepted, dict) else {}
        self.optional: dict[str, Var | None] = {
            name: Var(name, shapes[name]) if name in shapes else None
            for name in (accepted or ()) if name not in self.variables}
        # signature -> (steps, the slots each step is the last to read, roots' slots, dtype)
        self._cache: dict[tuple, tuple[list[Step], list[tuple], list[int], np.dtype]] = {}
        self._lock = threading.Lock()  # one thread plans a signature; others wait and reuse it

    def __call__(self, arrays: dict) -> list:
        values, signature = self._inputs(arrays)
        compiled = self._cache.get(signature)
        if compiled is None:
            with self._lock:
                compiled = self._cache.get(signature)
                if compiled is None:
                    compiled = self._cache[signature] = self._plan(values, signature)
        steps, dead, results, dtype = compiled
        # Mixed precisions: every input in the result type, as the generated code does.
        values = {k: v.astype(dtype, copy=False) for k, v in values.items()}
        slots: list = [None] * len(steps)
        try:
            for i, step in enumerate(steps):
                slots[i] = step(slots) if step is not None else values[self.order[i].name]
                for j in dead[i]:  # read by no later step: a deep chain holds one link
                    slots[j] = None
            inputs = list(values.values())
            return _apart([_own(slots[i], inputs, dtype) for i in results])
        except EVALUATION_FAILURES as e:
            raise evaluation_error(e) from None

    def _inputs(self, arrays: dict):
        reject_unknown(arrays, {**self.variables, **self.optional})
        values, signature = {}, []
        for name, var in self.variables.items():
            if name not in arrays:
                raise InputError(f"missing input '{name}' (shape {show_shape(var.shape)})")
            value = _as_array(name, arrays[name])
            values[name] = value
            signature.append((name, value.shape, value.dtype.str, weak(arrays[name])))
        for name, var in self.optional.items():
            if name in arrays and var is not None:  # unused, but checked and binds dimensions
                value = _as_array(name, arrays[name])
                values[name] = value
                signature.append((name, value.shape, value.dtype.str, weak(arrays[name])))
        return values, tuple(signature)

    def _plan(self, values: dict,
              signature: tuple) -> tuple[list[Step], list[tuple], list[int], np.dtype]:
        given = {name: var for name, var in self.optional.items() if name in values}
        env = bind_dimensions({**self.variables, **given}, values)
        check_picks(self.picks, env)
        # Constants are made in the inputs' result type, so float32 inputs give float32 results.
        strong = [values[name].dtype for name, _, _, is_weak in signature if not is_weak]
        dtype = np.result_type(*strong) if strong else np.dtype(np.float64)
        slot = {id(n): i for i, n in enumerate(self.order)}
        steps = [None if isinstance(n, Var) else _step(n, slot, env, self.rules, dtype)
                 for n in self.order]
        roots = [slot[id(r)] for r in self.roots]
        # The last step that reads each slot: after it the slot's value is dropped (a root's
        # never), so that a program holds the values still to be read, not every node's.
        last: dict[int, int] = {}
        for i, (n, step) in enumerate(zip(self.order, steps)):
            if isinstance(step, ContractionStep):
                last.update((src, i) for src, _ in step.sources)
            elif step is not None:
                last.update((slot[id(c)], i) for c in n.children())
        # A window that every contraction using it turned into slices and pads is never
        # built: np.eye(p, m) for x[:p] of x[m] would be p * m entries.
        steps = [_skip if isinstance(n, (Delta, Unit)) and i not in last and i not in roots
                 else step for i, (n, step) in enumerate(zip(self.order, steps))]
        dead: list[list[int]] = [[] for _ in steps]
        kept = set(roots)
        for j, i in last.items():
            if j not in kept:
                dead[i].append(j)
        return steps, [tuple(d) for d in dead], roots, dtype


def reject_unknown(arrays: dict, known) -> None:
    """An `InputError` for a keyword that names no variable of the expression."""
    unknown = [k for k in arrays if k not in known]
    if unknown:
        raise InputError(f"unexpected input '{unknown[0]}'",
                         hint=did_you_mean(unknown[0], known)
                         or f"the inputs are {', '.join(sorted(known)) or 'none'}")


def _as_array(name: str, value) -> np.ndarray:
    if np.ma.is_masked(value):  # np.asarray would drop the mask, silently
        raise InputError(f"input '{name}' is a masked array with masked entries; einderiv "
                         f"computes on all entries",
                         hint=f"pass {name}.filled(value) or {name}.compressed() explicitly")
    try:
        array = np.asarray(value)
    except Exception as e:  # numpy raises many kinds for ragged or odd objects
        raise InputError(f"input '{name}' is not an array: {e}") from None
    return array if is_float(name, array.dtype) else array.astype(np.float64)


def weak(value) -> bool:
    """Is `value` a Python number, or what JAX makes of one (a weakly typed array: a Python
    float passed through `jax.jit` or an `einderiv.jax` function arrives as one)? Like numpy
    (NEP 50) and JAX, einderiv lets it take the other inputs' dtype: a float32 array and a
    Python float give float32 results, with JAX's x64 mode on too."""
    if type(value) in (float, int, bool):
        return True
    aval = getattr(value, "aval", None)  # (jax arrays and tracers only)
    return aval is not None and getattr(aval, "weak_type", False) is True


def is_float(name: str, dtype) -> bool:
    """Whether input `name` of `dtype` is used as it is (floats); False for booleans and
    integers, which are converted to float64; an InputError for anything else."""
    kind = dtype_kind(dtype)
    if kind == "f":
        return True
    if kind in "biu":
        return False
    if kind == "c":
        raise InputError(f"input '{name}' is complex ({dtype}); einderiv's derivatives are of "
                         f"real functions of real inputs",
                         hint="pass the real and imaginary parts as two real inputs")
    raise InputError(f"input '{name}' has dtype {dtype}; expected numbers")


def bind_dimensions(variables: dict[str, Var], values: dict) -> dict[str, int]:
    """Sizes of the named dimensions, read off the arrays (`n` of a `y: [n - 1]` or a
    `y: [2 * n]` too: lower/dimensions.py's `bind`); ShapeError on any mismatch."""
    for name, var in variables.items():
        actual = values[name].shape
        if len(actual) != var.rank:
            raise ShapeError(f"input '{name}' should have shape {show_shape(var.shape)} (rank "
                             f"{var.rank}), got an array of shape {tuple(actual)}")
    return bind({name: (var.shape, tuple(values[name].shape))
                 for name, var in variables.items()})


def size_of(dim: Dim, env: dict[str, int]) -> int:
    try:
        size = dim.size(env)
    except KeyError:
        raise ShapeError(f"dimension '{dim.name}' is not bound by any input") from None
    if size < 0:
        raise ShapeError(f"dimension {dim} is negative ({size}) for these inputs")
    return size


def _step(node: Node, slot: dict, env: dict, rules: RuleBook, dtype) -> Step:
    if isinstance(node, Const):
        value = node.value  # a Python float: numpy keeps the arrays' dtype (NEP 50)
        return lambda s: value
    if isinstance(node, Size):
        value = float(size_of(node.dim, env))
        return lambda s: value
    if isinstance(node, Delta):
        rows, cols, off = check_structured(node, env)
        return _lazy(lambda: np.eye(rows, cols, k=off, dtype=dtype))
    if isinstance(node, Unit):
        size, pos = check_structured(node, env)
        value = np.zeros(size, dtype=dtype)
        value[pos] = 1.0
        return _constant(value)
    if isinstance(node, Map):
        return _map_step(node, slot, rules)
    if is_linear(node):  # cumsum, reversal, reshape...: O(size), never a matrix
        run, a = linear_evaluator(node, env), slot[id(node.args[0])]
        return lambda s: run(s[a])
    if is_convolution(node):  # correlate, conv2d...: O(output x kernel), never a band matrix
        run, (a, b) = convolution_evaluator(node), (slot[id(x)] for x in node.args)
        return lambda s: run(s[a], s[b])
    if isinstance(node, Prim):
        return _prim_step(node, slot, rules)
    if isinstance(node, Add):
        terms = [(c, slot[id(t)]) for c, t in node.terms]
        return lambda s: _weighted_sum(s, terms)
    if isinstance(node, Contract):
        return ContractionStep(node, slot, env, dtype)
    raise EinderivError(f"cannot evaluate {type(node).__name__}")


def _skip(s):
    return None


def _lazy(make) -> Step:
    """A constant built on the first call: a plan whose contractions all slice a window
    never allocates it."""
    box = []

    def step(s):
        if not box:
            box.append(_constant(make())(s))
        return box[0]
    return step


def _constant(value: np.ndarray) -> Step:
    """A step that returns `value` on every call: a read-only view, so that a result that is
    this constant is copied before the caller gets it (it is shared by every call)."""
    view = value.view()
    view.flags.writeable = False
    return lambda s: view


def check_structured(node, env: dict) -> tuple[int, ...]:
    """Concrete sizes of a window (Delta) or pick (Unit), checked against the bound sizes:
    with named dimensions a slice or index can only be checked once the arrays are known. A
    dimension (`n - 5`) is checked to be bound and not negative."""
    if isinstance(node, Dim):
        return (size_of(node, env),)
    if isinstance(node, Delta):
        rows, cols, off = (size_of(d, env) for d in (*node.shape, node.offset))
        if off < 0 or off + rows > cols:  # a delta is a window of its second axis
            raise ShapeError(f"slice {off}:{off + rows} is out of range for an axis of size "
                             f"{node.shape[1]} = {cols}",
                             hint="einderiv cannot clip a slice past the end of a named "
                                  "dimension as numpy does; use a negative or open stop")
        return rows, cols, off
    size, pos = size_of(node.shape[0], env), size_of(node.position, env)
    if not 0 <= pos < size:
        raise ShapeError(f"index {node.position} is out of bounds for an axis of size "
                         f"{node.shape[0]} = {size}")
    return size, pos


def check_picks(picks, env: dict) -> None:
    """Each of the picks the text writes (`Lowered.picks`, unit vectors) inside its axis at
    these sizes, a ShapeError else, as numpy's IndexError; a pick of names no input binds here
    (of a term the result does not depend on) is left unchecked."""
    for unit in picks:
        if all(n in env for d in (unit.shape[0], unit.position) for n in names_in(d)):
            check_structured(unit, env)


def _weighted_sum(s, terms):
    total = None
    for c, i in terms:
        v = s[i] if c == 1.0 else c * s[i]
        total = v if total is None else total + v
    return total


def _map_step(node: Map, slot, rules) -> Step:
    f = rules.get(node.fn)
    if f is None or f.impl is None:
        raise EinderivError(f"no evaluation rule for '{node.fn}'")
    impl = resolve(f.impl, np)
    args = [slot[id(a)] for a in node.args]
    if len(args) == 1:
        (a,) = args
        return lambda s: impl(s[a])
    return lambda s: impl(*[s[a] for a in args])


def _prim_step(node: Prim, slot, rules) -> Step:
    f = rules.get(node.fn)
    if f is None or f.impl is None:
        raise EinderivError(f"no evaluation rule for '{node.fn}'")
    impl = resolve(f.impl, np)
    args = [slot[id(x)] for x in node.args]
    keyword = f.axis or "axis"  # (the keyword the generated code passes the axes by)
    if len(args) > 1 and node.params:  # log_softmax_vjp(x, g, axis=...)
        axis = {keyword: node.params[0]}
        return lambda s: impl(*[s[a] for a in args], **axis)
    if len(args) > 1:  # solve(A, b)
        return lambda s: impl(*[s[a] for a in args])
    (a,) = args
    if node.params:
        axis = {keyword: node.params[0]}
        return lambda s: impl(s[a], **axis)
    return lambda s: impl(s[a])


class ContractionStep:
    """One Einstein product, planned for concrete sizes.

    Deltas and unit vectors that meet a summed index become slices and picks of the other
    operand instead of materialized matrices; the rest runs as one opt_einsum contraction with a
    precomputed path.
    """

    def __init__(self, node: Contract, slot: dict, env: dict, dtype=np.float64):
        self.dtype = dtype
        sizes = [size_of(d, env) for d in node.dims]
        out = list(node.out)
        # Each operand: [source slot or constant array, pre-indexing per axis, labels].
        ops = []
        self.scale = 1.0
        for child, labels in node.operands:
            if isinstance(child, Const):
                self.scale *= child.value
            else:
                ops.append([child, slot[id(child)], list(labels)])
        self.pads: dict = {}  # output label -> (before, after): a window's adjoint, padded
        ops = self._resolve_structured(ops, out, env, self.pads)
        # An identity delta on two output labels (the Jacobian of an elementwise function)
        # places the rest of the product on a diagonal: computed on one of its labels and
        # written into zeros, not multiplied by an identity matrix, so the entries off the
        # diagonal are exact zeros whatever the rest is (0 * inf was nan; the generated code
        # writes diag()), and no n-by-n identity is made.
        self.embeds: list[tuple[int, int]] = []  # (kept label, dropped label)
        # A window on two output labels (the Jacobian of log(x[:2])) is a shifted diagonal:
        # the identity on the window's rows, its column axis padded after the embedding.
        self.post_pads: dict = {}
        for op in list(ops):
            child, _, idx, ls = op
            # (a Delta narrowed is one only where `_through` made it: its values are its
            # source's, narrowed, and it is placed by its own offset and shape)
            padded = [l for l in ls if l in self.pads]
            if isinstance(child, Delta) and \
                    ls[0] != ls[1] and ls[0] in out and ls[1] in out and \
                    (not padded or child.is_identity and len(padded) == 1 and
                     not any(o is not op and ls[ls.index(padded[0]) - 1] in o[3]
                             for o in ops)) and \
                    not any(ls[1] in e or ls[0] in e for e in self.embeds):
                # (an identity one of whose labels is padded, `_padded_identity`: the rest
                # is placed on the diagonal after the pad, on the padded label's whole length)
                keep, drop = ls if not padded or padded[0] == ls[0] else ls[::-1]
                if not child.is_identity:
                    others = [o for o in ops if o is not op and drop in o[3]]
                    if any(_structured(o[0]) or o[3].count(drop) != 1 for o in others):
                        continue
                    off = size_of(child.offset, env)
                    rows = size_of(child.shape[0], env)
                    for o in others:
                        o[2] = list(o[2]) if o[2] else [slice(None)] * len(o[3])
                        _narrow(o, drop, slice(off, off + rows), drop)
                        o[2] = tuple(o[2])
                    self.post_pads[drop] = (off, size_of(child.shape[1], env) - off - rows)
                ops.remove(op)
                for other in ops:
                    other[3] = [keep if l == drop else l for l in other[3]]
                self.embeds.append((keep, drop))
        dropped = {d for _, d in self.embeds}
        full_out, out = out, [l for l in out if l not in dropped]
        self.full_out = full_out
        self.sources = [(src, idx) for _, src, idx, _ in ops]
        present = [l for _, _, _, ls in ops for l in ls]
        self.out_present = [l for l in out if l in present]
        # A sum of products of unit vectors and windows on output labels only (the Jacobian
        # of `stack((x[0], x[2]))`: a 0/1 matrix) places the rest of the product: where it is
        # 0 the result is an exact 0, not 0 * inf = nan (the generated code pads, contraction.
        # _lanes_placed); so does such a pattern summed over an axis (`sum(eye(n)[1:8:2],
        # axis=0)`, the places unrolled steps read, times a pole they share).
        # (operand position, its axes' order, the output's axes it lacks)
        self.masks = []
        for k, (child, _, idx, ls) in enumerate(ops):
            if type(child) in (Add, Prim, Contract) and all(i == slice(None) for i in idx) and \
                    len(set(ls)) == len(ls) and all(l in self.out_present for l in ls) and \
                    is_structure(child) and not _of_constants(child):
                order = sorted(range(len(ls)), key=lambda a: self.out_present.index(ls[a]))
                lacks = tuple(a for a, l in enumerate(self.out_present) if l not in ls)
                self.masks.append((k, tuple(order), lacks))
        letters = {l: opt_einsum.get_symbol(i) for i, l in enumerate(dict.fromkeys(present + out))}
        if ops and all(not ls or ls == self.out_present for *_, ls in ops):
            # Scalars and arrays on the output's labels in its order: a product of elements,
            # which no contraction order makes cheaper (opt_einsum's search for one took ~4 ms
            # for the 6 to 9 scalars of a power's derivative)
            self.expr = _product
        elif ops:
            spec = ",".join("".join(letters[l] for l in ls) for *_, ls in ops)
            spec += "->" + "".join(letters[l] for l in self.out_present)
            shapes = [tuple(sizes[l] for l in ls) for *_, ls in ops]
            self.expr = opt_einsum.contract_expression(spec, *shapes,
                                                       optimize=_path(spec, shapes))
        else:
            self.expr = None
        self.final_shape = tuple(sizes[l] for l in out)
        # Before padding, a padded output axis has the window's length.
        inner = {l: sizes[l] - sum(self.pads[l]) if l in self.pads else sizes[l] for l in out}
        self.expand = len(self.out_present) != len(out)
        self.keep_shape = tuple(inner[l] if l in self.out_present else 1 for l in out)
        self.expand_shape = tuple(inner[l] for l in out)
        self.pad_widths = [self.pads.get(l, (0, 0)) for l in out] if self.pads else None
        # Each embedding puts the kept label's axis on the diagonal of (kept, dropped), in the
        # order of the full output.
        self.embed_steps = []
        labels = list(out)
        for keep, drop in self.embeds:
            labels = [l for l in full_out if l in labels or l == drop]
            self.embed_steps.append((labels.index(keep), labels.index(drop)))
        self.final_shape = tuple(sizes[l] for l in full_out)

    @staticmethod
    def _resolve_structured(ops, out, env, pads):
        """Turn Unit/Delta operands on summed labels into picks and slices of their partners.

        A window whose column is an output label and whose row is summed (a slice's adjoint)
        instead narrows the other operands on the column to the window, renames its row to
        the column, and records a pad of that output axis: O(size), never a dense matrix."""
        result = [[child, src, [slice(None)] * len(ls), ls] for child, src, ls in ops]
        changed = True
        while changed:
            changed = False
            for k, (child, src, idx, ls) in enumerate(result):
                if isinstance(child, Unit):
                    (label,) = ls
                    index, new_label = size_of(child.position, env), None
                    if label in out and label not in pads:
                        # On an output axis (the gradient of x[k]): the rest of the product,
                        # at entry k of that axis, padded with exact zeros, not multiplied by
                        # a one-hot vector (0 * inf was nan at every other entry)
                        for j, r in enumerate(result):
                            if j != k and label in r[3]:
                                _narrow(r, label, slice(index, index + 1), label)
                                if _structured(r[0]):
                                    r[0] = _padded_identity(r, label, out)
                        pads[label] = (index, size_of(child.shape[0], env) - index - 1)
                        del result[k]
                        changed = True
                        break
                elif isinstance(child, Delta) and ls[0] != ls[1]:
                    new_label, label = ls
                    off = size_of(child.offset, env)
                    index = slice(off, off + size_of(child.shape[0], env))
                    if label in out and new_label not in out and label not in pads:
                        if _adjoint_window(result, k, new_label, label, index, pads,
                                           size_of(child.shape[1], env), out, env):
                            changed = True
                            break
                        continue
                else:
                    continue
                # Every other operand on the label is narrowed, deltas and units included
                # (they are then plain arrays); at least one must be a plain array.
                partners = [r for j, r in enumerate(result) if j != k and label in r[3]]
                if label in out or all(_structured(r[0]) for r in partners):
                    continue
                for r in partners:
                    labels = list(r[3])
                    _narrow(r, label, index, new_label)
                    if _structured(r[0]):
                        # a narrowed delta is no longer a window: a plain array, unless it is
                        # a row of a window (a unit vector) or rows of one (a window), which
                        # its values (r's source, narrowed) are, placed exactly later
                        r[0] = _through(child, r[0], labels, label)
                del result[k]
                changed = True
                break
        return [[child, src, tuple(idx), ls] for child, src, idx, ls in result]

    def __call__(self, s):
        arrays = [s[src][idx] if idx else s[src] for src, idx in self.sources]
        if self.expr is None:  # constants alone (on a window, padded; on a diagonal, placed)
            value = np.full(self.expand_shape, self.scale, dtype=self.dtype)
            if self.pad_widths is not None:
                value = np.pad(value, self.pad_widths)
            for keep, drop in self.embed_steps:
                value = _on_diagonal(value, keep, drop)
            if self.post_pads:
                value = np.pad(value, [self.post_pads.get(l, (0, 0)) for l in self.full_out])
            return value
        value = self.expr(*arrays)
        if self.scale != 1.0:
            value = self.scale * value
        for k, order, lacks in self.masks:
            mask = np.expand_dims(np.transpose(arrays[k], order), lacks)
            value = np.where(mask != 0, value, np.zeros((), value.dtype))
        if self.expand:
            value = np.broadcast_to(np.reshape(value, self.keep_shape), self.expand_shape)
        if self.pad_widths is not None:
            value = np.pad(value, self.pad_widths)
        for keep, drop in self.embed_steps:
            value = _on_diagonal(value, keep, drop)
        if self.post_pads:
            value = np.pad(value, [self.post_pads.get(l, (0, 0)) for l in self.full_out])
        return value


def _of_constants(node: Node) -> bool:
    """A product of constants alone (a broadcast zero): no pattern, and 0 * inf is nan."""
    return type(node) is Contract and all(type(n) is Const for n, _ in node.operands)


def _product(*arrays):
    """The elementwise product, left to right (as the generated code writes `a * b * c`)."""
    value = arrays[0]
    for a in arrays[1:]:
        value = value * a
    return value


# opt_einsum's default search for more than 4 operands (branch and bound) takes milliseconds;
# it can only pay where the contraction costs more than that: at most this many operations
# on greedy's path, greedy's path is taken.
_SEARCH_PAYS = 10 ** 6


def _path(spec: str, shapes: list[tuple]):
    """The contraction path for `spec` on arrays of `shapes`: opt_einsum's default ("auto"),
    or greedy's where that search cannot pay (see _SEARCH_PAYS)."""
    if len(shapes) <= 4:  # "auto" is an exhaustive search, quick for so few
        return "auto"
    path, info = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize="greedy")
    return path if info.opt_cost <= _SEARCH_PAYS else "auto"


def _on_diagonal(value: np.ndarray, keep: int, drop: int) -> np.ndarray:
    """`value` with a new axis at position `drop` (of the result), its entries on the diagonal
    of axes (keep, drop) and exact zeros elsewhere: `v[..., i, ...] * delta[i, j]`."""
    where = keep if keep < drop else keep - 1  # the kept axis in `value`
    moved = np.moveaxis(value, where, -1)
    n = moved.shape[-1]
    out = np.zeros(moved.shape + (n,), dtype=moved.dtype)
    i = np.arange(n)
    out[..., i, i] = moved
    # Axes (kept, dropped) are the last two, in that order; put them where they belong.
    return np.moveaxis(out, (-2, -1), (keep, drop))


def _adjoint_window(result, k, row, col, window: slice, pads, cols, out=(), env=None) -> bool:
    """Delta result[k] over (row summed, col in the output): narrow every other operand on
    `col` to the window, relabel the operands on `row` to `col`, pad `col` afterwards.
    False (nothing changed) unless some plain array carries `row` exactly once each, or
    nothing does (the adjoint of `sum(x[:p])`: the window's rows sum to ones on it), or a
    unit vector alone does (a pick of the window, `x[1:][0]`: entry 1 of col, padded)."""
    rows = [r for j, r in enumerate(result) if j != k and row in r[3]]
    if env is not None and len(rows) == 1 and isinstance(rows[0][0], Unit) and \
            rows[0][3] == [row]:
        at = window.start + size_of(rows[0][0].position, env)
        for j, r in enumerate(result):
            if j != k and col in r[3]:
                _narrow(r, col, slice(at, at + 1), col)
                if _structured(r[0]):
                    r[0] = _padded_identity(r, col, out)
        pads[col] = (at, cols - at - 1)
        result[:] = [r for j, r in enumerate(result) if j != k and r is not rows[0]]
        return True
    # A window whose column is the row (`v[k] * d1[k,i] * d2[a,k]`, rows of a padded diag):
    # left to be taken as a slice of v and composed with d1 (`_through`), one window (a, i).
    if any(isinstance(r[0], Delta) and len(r[3]) == 2 and r[3][1] == row and r[3][0] != row
           for r in rows) and any(not _structured(r[0]) for r in rows):
        return False
    # Another window on the row whose column is an output label too (`d1[k,i] * d2[k,j]`, a
    # Hessian of x[1:] * x[:-1]) is taken as the array it is, no bigger than the result:
    # left to einsum, the two were multiplied as dense matrices, O(n^3).
    if any(_structured(r[0]) and not (isinstance(r[0], Delta) and
                                      all(l == row or l in out for l in r[3]))
           or r[3].count(row) != 1 for r in rows):
        return False
    for r in rows:
        if _structured(r[0]):
            r[0] = None
    for j, r in enumerate(result):
        if j != k and col in r[3]:
            _narrow(r, col, window, col)
            if _structured(r[0]):
                r[0] = _padded_identity(r, col, out)
    for r in rows:
        r[3] = [col if l == row else l for l in r[3]]
    pads[col] = (window.start, cols - window.stop)
    del result[k]
    return True


def _padded_identity(operand, label, out):
    """What an identity on two output labels stays once its axis `label` is narrowed to a
    pick or window that is padded back afterwards (the gradient of `sum(log(diag(X)[1:]))`,
    `r[k] * delta[k+1, i] * delta[i, j]`): the identity, which `ContractionStep` then
    embeds on the diagonal of (label, other) after the pad, where the padded axis has its
    whole length again. Multiplied as the narrowed 0/1 array (`eye(n)[1:]`), its zeros times
    an infinite entry of the rest were nan across that row. None for any other selection
    (a plain array now)."""
    node, labels = operand[0], operand[3]
    if isinstance(node, Delta) and node.is_identity and len(labels) == 2 and \
            labels[0] != labels[1] and label in labels and all(l in out for l in labels):
        return node
    return None


def _through(sel, node, labels, label):
    """A delta `node` (axes `labels`) narrowed by the unit vector or window `sel` on `label`:
    a row of a window or identity is a unit vector on its other axis (e_k[j] * delta[j+2, i]
    is e_{k+2}[i]), rows of one are a window (delta[a+1, j] * delta[j+2, i] is delta[a+3, i]);
    else None (a plain array)."""
    if not isinstance(node, Delta) or labels.count(label) != 1:
        return None
    on_row = labels[0] == label
    if not on_row and not node.is_identity:
        return None
    try:
        if isinstance(sel, Unit):
            return Unit(node.shape[1], sel.position + node.offset) if on_row else \
                Unit(node.shape[0], sel.position)
        if isinstance(sel, Delta):
            return Delta(sel.shape[0], node.shape[1], sel.offset + node.offset)
    except (ValueError, TypeError):  # (no dimension)
        return None
    return None


def _structured(child) -> bool:
    return isinstance(child, (Unit, Delta))


def _narrow(operand, label, index, new_label):
    """Index every axis of `operand` that carries `label` (an int drops it, a slice relabels)."""
    _, _, idx, labels = operand
    axes = [i for i, l in enumerate(labels) if l == label]
    # Python indexing applies to the array's axes as they are, so walk positions carefully:
    # idx has one entry per original axis; labels lists the axes still present.
    present = [i for i, it in enumerate(idx) if not isinstance(it, int)]
    for axis in axes:
        idx[present[axis]] = _compose(idx[present[axis]], index)
    if isinstance(index, int):
        operand[3] = [l for l in labels if l != label]
    else:
        operand[3] = [new_label if l == label else l for l in labels]


def _compose(outer: slice, inner):
    """Index `inner` applied to the result of slice `outer` (both on one axis)."""
    start = outer.start or 0
    if isinstance(inner, int):
        return start + inner
    return slice(start + inner.start, start + inner.stop)
