"""The Python API (README, "Python API"): `compile` and the objects it returns."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import threading
import types
from pathlib import Path

from .backends import namespace
from .derive import derivatives
from .errors import (EinderivError, InputError, RuleError, ShapeError, UnknownNameError,
                     did_you_mean)
from .ir.dims import Dim, show_shape
from .ir.nodes import Delta, Size, Unit, Var, topological
from .evaluate.plan import Plan
from .generate.formula import format_formula
from .generate.function import MISS, GeneratedFunction
from .generate.python import generate
from .vectorize import vectorize
from .vectorize.gc_pause import paused_gc
from .ir.einstein import format_program
from .lower.lower import Lowered, declared_shape, lower
from .parse import parse
from .parse import ast
from .parse.parser import check_name, derivation_budget
from .parse.unparse import unparse
from .rulebook import RuleBook, default_rulebook
from .rulebook.table import _shipped, parse_rules, using_rules
from .simplify import Rewriter
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


def lower_source(expr, shapes: dict | None, rules=None, order: int = 0,
                 sizes: dict | None = None) -> Lowered:
    """Parse and lower `expr` with `rules` (default: the rule book in force now). Every name in
    `shapes`, keys and dimensions, is checked by `check_name` on the way (in `lower`). `order`:
    the derivative to be taken (1 or 2), whose text is held to `derivation_budget`. `sizes`:
    dimension names fixed to integers (`{"k": 3}` for an `eye(k)`)."""
    if shapes is not None and not isinstance(shapes, dict):
        raise EinderivError(f"shapes must be a dict of name -> shape, got {type(shapes).__name__}")
    program, shapes = to_program(expr, shapes)
    if order:
        derivation_budget(program, order)
    return lower(program, shapes, rules or default_rulebook(), sizes)


def rewritten(lowered: Lowered, rewriter: Rewriter) -> Lowered:
    """`lowered` with its program in normal form under the rewrites (rules/rewrites.rules):
    `log(1 + exp(u))` is `softplus(u)` before anything is derived or computed. The names of
    bound temporaries follow their nodes."""
    (root,) = rewriter([lowered.root])
    if root is lowered.root:
        return lowered
    bound = dict(zip(lowered.bound, rewriter(list(lowered.bound.values()))))
    names: dict = {}
    for node, name in zip(rewriter(list(lowered.names)), lowered.names.values()):
        names.setdefault(node, name)
    return dataclasses.replace(lowered, root=root, names=names, bound=bound)


def _check_backend(backend: str) -> None:
    namespace(backend)  # an unknown or uninstalled backend is an error now, not at call time


class _CallProperty(property):
    """A property that can also be called as a method through the class, `type(result).__call__(
    result, *arrays)`, as a `__call__` defined by `def` can."""

    def __init__(self, fget, doc: str):
        super().__init__(fget)
        self.__doc__ = doc  # (the call's, on the instance: the class's would shadow it)

    def __call__(self, result, /, *args, **arrays):
        return self.__get__(result)(*args, **arrays)


class _CallSignature:
    """`inspect.signature` of a result, `(*args, **arrays)`: its `__call__` is a property (see
    _Result.__call__), which inspect cannot read through. The class itself has none (None: its
    constructor's, as usual)."""

    signature = inspect.Signature([
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("arrays", inspect.Parameter.VAR_KEYWORD)])

    def __get__(self, instance, owner=None):
        return None if instance is None else self.signature


class _Result:
    """What every API call returns: callable with arrays (by keyword, or positional in the
    order the expression declares its variables), printable in every format, and picklable.

    `roots` maps output names to IR; `structure` turns the list of computed outputs into what
    the call returns, and `positions` says, for each array the call returns (flattened), the
    index of the output in `roots` it is. Vectorizing and code generation happen on first use
    and are kept; they use `rules`, the rule book in force when the result was made, so a rule
    file loaded later (from any thread) does not change a result made before.
    """

    def __init__(self, lowered: Lowered, roots: dict, structure, function_name: str,
                 preferred: tuple[str, ...] = (), backend: str = "numpy", rules=None,
                 positions: tuple[int, ...] | None = None):
        self.lowered = lowered
        self.backend = backend
        self.rules = rules or default_rulebook()
        self._preferred = preferred
        self.roots = roots
        self._structure = structure
        self.positions = tuple(range(len(roots))) if positions is None else tuple(positions)
        self._function_name = function_name
        self._program = None
        self._module = None
        self._function = None
        # `_returned`: the generated function's guard returns what the call returns
        # (`structure` is `_single` or `tuple`): `_call` becomes that guard (see __call__).
        self._returned = False
        self._plan = None  # the IR interpreter's, for evaluate_ir
        # The first use builds the program, the module and the function once, whichever
        # threads ask; later uses read them without the lock.
        self._building = threading.RLock()

    @property
    def einstein(self) -> str:
        """Indexed Einstein form, one line per tensor; shared subexpressions once."""
        (first, root), *rest = self.roots.items()
        return format_program(root, self.lowered.names, first, extra_roots=dict(rest))

    @property
    def program(self):
        if self._program is None:
            with self._building:
                if self._program is None:
                    self._program = vectorize(self.roots, self.lowered.names, self.rules,
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
        return format_latex(self.program, self._function_name, self.rules,
                            wrt=self._preferred)

    def _repr_latex_(self) -> str:
        return "$$" + self.latex + "$$"

    @property
    def einsum(self) -> str:
        """The contraction plan: each Einstein product as an opt_einsum call with its
        subscripts and operands, the other steps as plain calls, one line each."""
        from .generate.einsum import format_einsum
        return format_einsum(self.roots, self.lowered.names, self.rules)

    @property
    def source(self) -> str:
        """The generated Python module: imports and one function of the input arrays."""
        return self._generated().source

    def _generated(self):
        if self._module is None:
            with self._building:
                if self._module is None:
                    self._module = generate(self.program, self._function_name, self.rules,
                                            preferred=self._preferred)
        return self._module

    @property
    def inputs(self) -> dict:
        """The inputs a call needs, with their declared shapes, in the order the expression
        declares them: the variables the results depend on, and an input read only for a
        dimension that no other of them has (the gradient of `sum(x[:p] * y)` by x is `y`
        padded to x's length m: it needs x).

        Positional arrays bind in one of two orders: every declared variable in the order of
        declaration, or exactly these inputs in this order. They are the same unless a
        declared variable is not used (the Hessian of `x @ A @ x` needs only A: `H(x, A)` and
        `H(A)` both work). Fewer arrays than either count bind the first ones of that order,
        the rest by keyword; where both orders could be meant, the one that binds no keyword
        twice and leaves no input out is taken, and a call that fits neither is an
        InputError."""
        variables = self.program.variables
        declared = self.lowered.declared
        needed = self._generated().arguments
        return {name: tuple(str(d) for d in (variables[name].shape if name in variables
                                             else declared[name]))
                for name in declared if name in needed}

    def _call(self, /, *args, **arrays):  # `/`: an input may be named `self`
        """The results for the input arrays: by keyword, or positional (every declared
        variable in order, or the inputs of `.inputs` in order), or both."""
        if args:
            arrays = self._keywords(args, arrays)
        function = self._function
        if function is not None and not self._returned:
            guarded = function.guarded
            if guarded is not None:  # the signature seen first, checked as straight-line code
                results = guarded(arrays)
                if results is not MISS:
                    return self._structure(results)
        return self._evaluate(arrays)

    # Calling a result calls its `_call`: this method above until a first signature passes
    # unconverted, then the generated guard of that signature (`GeneratedFunction.entry`)
    # bound to the instance, which hands any other call back to the method. The property reads
    # it in C (attrgetter), so that a call of the signature seen is one Python call.
    __call__ = _CallProperty(operator.attrgetter("_call"), _call.__doc__)
    __signature__ = _CallSignature()  # what inspect.signature reads through a property

    def _evaluate(self, arrays: dict):
        if self._function is None:
            with self._building:
                if self._function is None:
                    with paused_gc():  # a long program's IR walked once more: see paused_gc
                        order = topological(*self.roots.values())
                        structured = [n for n in order if isinstance(n, (Delta, Unit))]
                        # Every size computed from the names (`n - 5`, of `ones(n - 5)` or a
                        # mean's count) is checked too: the generated code computes it, and
                        # a negative one would be a silent wrong value, not an error.
                        structured += sorted({d for n in order for d in (
                            *n.shape, *((n.dim,) if type(n) is Size else ()))
                            if not d.is_concrete}, key=str)
                        module = self._generated()
                        # (a tuple of one output unwrapped by the guard, for `_single`)
                        plain = self._structure is _single and module.outputs == 1
                        # (set before the function, which other threads read unlocked)
                        self._returned = plain or self._structure is tuple
                        self._function = GeneratedFunction(
                            module, self.lowered.declared, structured, self.backend,
                            plain=plain, picks=self.lowered.picks)
        function = self._function
        results = function(arrays)  # (a tuple of the outputs)
        if self._returned and "_call" not in vars(self):
            entry = function.entry(type(self)._call)  # (None until a signature passes unconverted)
            if entry is not None:  # a bound method, as `result.__call__` always was
                self._call = types.MethodType(entry, self)
        return self._structure(results)

    def evaluate_ir(self, /, *args, **arrays):
        """The same results computed by interpreting the IR directly (no vectorizing, no code
        generation): an independent path, used to test the generated code."""
        arrays = self._keywords(args, arrays) if args else arrays
        if self._plan is None:
            with self._building:
                if self._plan is None:  # re-entrant, and it plans each signature once
                    self._plan = Plan(list(self.roots.values()), self.rules,
                                      accepted=self.lowered.declared,
                                      picks=self.lowered.picks)
        return self._structure(self._plan(arrays))

    def _keywords(self, args: tuple, arrays: dict, given=()) -> dict:
        """Positional `args` bound to names, with the keyword `arrays`: to the variables in the
        order the expression declares them, or to the inputs of `.inputs` in their order, where
        the result needs fewer than it declares (the Hessian of `x @ A @ x` needs only A:
        `H(x, A)` and `H(A)` both work). Where the two orders differ for this many arrays, the
        one that binds no keyword again and leaves no needed input out is taken (names in
        `given` count as given: a direction passed as a tuple); neither, or both with
        different bindings, is an InputError that says which orders are accepted."""
        order = list(self.lowered.declared)
        names = order[:len(args)]
        if len(args) > len(order):
            raise InputError(f"{len(args)} positional arrays, but the expression has "
                             f"{len(order)} variables: {', '.join(order)}",
                             hint=self._orders_hint(order, self._input_order()))
        if len(args) < len(order):  # (all of them: the declared order, whatever .inputs is)
            inputs = self._input_order()
            if len(args) <= len(inputs) and inputs[:len(args)] != names:
                names = self._positional_names(order, inputs, len(args), arrays, given)
        for name in names:
            if name in arrays:
                raise InputError(f"input '{name}' is given twice: as positional array "
                                 f"{names.index(name) + 1} and by keyword")
        return {**dict(zip(names, args)), **arrays}

    def _input_order(self) -> list[str]:
        """The names of `.inputs`, in their order (the declared order)."""
        needed = self._generated().arguments
        return [name for name in self.lowered.declared if name in needed]

    def _positional_names(self, order: list, inputs: list, count: int, arrays: dict,
                          given) -> list[str]:
        """The names that `count` positional arrays bind to where the declared order and the
        order of `.inputs` differ for that many: the one that fits the call (see _keywords)."""
        bound = set(arrays) | set(given)  # (a name given twice fits no order)

        def fits(names, needed) -> bool:
            return not set(names) & bound and all(n in names or n in bound for n in needed)
        # An input read only for its shape may be left out where another binds its dimension
        # (_checked): first the orders that may leave one out, then, where both do, the one
        # that leaves none of `.inputs` out.
        loose = [n for n in inputs if n not in self._generated().dimension_only]
        fitting = [names for names in (order[:count], inputs[:count]) if fits(names, loose)]
        if len(fitting) == 2:
            fitting = [names for names in fitting if fits(names, inputs)] or fitting
        if len(fitting) == 1:
            return fitting[0]
        said = (f"{count} positional array{'s' if count != 1 else ''}"
                + (f" and the keywords {', '.join(arrays)}" if arrays else ""))
        if fitting:
            raise InputError(f"{said} could bind to {', '.join(fitting[0])} or to "
                             f"{', '.join(fitting[1])}", hint=self._orders_hint(order, inputs)
                             + "; pass the arrays by keyword")
        raise InputError(f"{said} fit neither order of the positional arrays",
                         hint=self._orders_hint(order, inputs))

    @staticmethod
    def _orders_hint(order: list, inputs: list) -> str:
        if order == inputs:
            return f"positional arrays bind to the variables in the order they are declared: " \
                   f"{', '.join(order)}"
        return (f"positional arrays bind to every variable in the order they are declared "
                f"({', '.join(order)}) or to the inputs of .inputs in their order "
                f"({', '.join(inputs)}); those not given by position may be keywords")

    # A result pickles and copies as the public call that made it (`rebuildable`), made again
    # on load under the rule book it was made with, sent as rule-file text: IR nodes,
    # generated code and locks stay in the process that made them.
    _made_by = None

    def __reduce__(self):
        if self._made_by is None:
            raise EinderivError(f"this {type(self).__name__} was not made by a public function "
                                "of einderiv: it cannot be pickled or copied",
                                hint="pickle what einderiv.compile, grad, jacobian, hessian "
                                     "or value_and_grad return")
        return (_rebuilt, (self._made_by, _rules_text(self.rules)))


def rebuildable(function):
    """`function`'s results pickle and copy: each remembers the call that made it (`expr`,
    `wrt`, `shapes`, options: plain data and `einderiv.var` expressions, which pickle as
    text), and is rebuilt by that call on load."""
    @functools.wraps(function)
    def made(*args, **kwargs):
        result = function(*args, **kwargs)
        result._made_by = (made, _snapshot(args), _snapshot(kwargs))
        return result
    return made


def _snapshot(value):
    """`value` with its dicts, lists and tuples copied: a `shapes` dict changed after the call
    does not change what the result pickles as."""
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_snapshot(v) for v in value)
    return value


def _rebuilt(made_by, rules):
    function, args, kwargs = made_by
    with using_rules(_rulebook_from_text(*rules)):
        return function(*args, **kwargs)


def _rules_text(book: RuleBook) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The rule book as the text of a rule file (one line per rule, in the order of its
    tables), each rule's origin (`file:line`) and the files it was loaded from."""
    rules = [*book.functions.values(), *book.derivatives.values(), *book.rewrites.values()]
    return ("\n".join(map(str, rules)), tuple(r.origin for r in rules),
            tuple(map(str, book.files)))


def _rulebook_from_text(text: str, origins: tuple[str, ...], files: tuple[str, ...]) -> RuleBook:
    """The frozen rule book that `_rules_text` wrote: the shipped one itself where it is that."""
    # Compared each time, not cached: the shipped book is rebuilt when rules are reloaded, and
    # a cached one would be an old copy of it.
    shipped = _shipped()
    if (text, origins, files) == _rules_text(shipped):
        return shipped
    return _parsed_rulebook(text, origins, files)


@functools.lru_cache(maxsize=16)
def _parsed_rulebook(text: str, origins: tuple[str, ...], files: tuple[str, ...]) -> RuleBook:
    # Implementations `module:attribute` import their modules: unpickling runs code anyway, so
    # a pickle is trusted as a rule file loaded with allow_imports is.
    rules = parse_rules(text, "<pickled rules>", allow_imports=True)
    if len(rules) != len(origins):
        raise RuleError(f"the pickled rule book has {len(origins)} rules, its text "
                        f"{len(rules)}")
    book = RuleBook().add([dataclasses.replace(r, origin=o) for r, o in zip(rules, origins)])
    book.files = [Path(f) for f in files]
    return book.freeze()


def _single(results):
    return results[0]


def _structure_of(positions: list[int]):
    """The structure that returns the outputs at `positions` in a tuple: `tuple` itself where
    they are the outputs in order, each once (the call's fast path returns the guard's tuple)."""
    if list(positions) == list(range(len(positions))):
        return tuple
    return lambda r: tuple(_picked(r, positions))


class Compiled(_Result):
    """An expression compiled for evaluation: call it with arrays (keyword or positional).

    >>> import numpy as np, einderiv
    >>> f = einderiv.compile("W @ x + b", {"W": ("m", "n"), "x": ("n",), "b": ("m",)})
    >>> print(f.einstein)
    out[i] = W[i,j]*x[j] + b[i]
    >>> f(W=np.eye(2), x=np.array([1.0, 2.0]), b=np.zeros(2))
    array([1., 2.])
    """

    def __init__(self, lowered: Lowered, backend: str = "numpy", rules=None):
        super().__init__(lowered, {lowered.output_name or "out": lowered.root}, _single, "value",
                         backend=backend, rules=rules)

    @property
    def shape(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.lowered.root.shape)

    def __repr__(self) -> str:
        return f"<einderiv.Compiled {self.formula!r}>"


@rebuildable
def compile(expr, shapes: dict | None = None, *, backend: str = "numpy",
            sizes: dict | None = None) -> Compiled:
    """Compile an expression (source text or `einderiv.var` expression) for evaluation.

    `shapes` maps each variable to a tuple of ints, dimension names and dimension expressions
    (`("n", "n - 1")`, `("2 * n",)`; `()` for a scalar); inline declarations (`X: [n, d]`) may
    stand in for it. `sizes` fixes dimension names to integers when the result is built
    (`sizes={"k": 3}` for an `eye(k)` whose k no input's shape has). Raises `ParseError`,
    `ShapeError` or `UnknownNameError` (all `EinderivError`) on bad input.
    """
    _check_backend(backend)
    rules = default_rulebook()
    return Compiled(rewritten(lower_source(expr, shapes, rules, sizes=sizes), Rewriter(rules)),
                    backend, rules)


class Derived(_Result):
    """Derivatives of an expression, compiled: call with arrays (keyword or positional).

    >>> import numpy as np, einderiv
    >>> g = einderiv.grad("x @ A @ x", "x", {"A": ("n", "n"), "x": ("n",)})
    >>> print(g.formula)
    (A.T + A) @ x
    >>> g(A=np.array([[1.0, 2.0], [3.0, 4.0]]), x=np.array([1.0, 1.0]))
    array([ 7., 13.])
    """

    def __init__(self, lowered: Lowered, kind: str, wrt: list[str], roots: list, labels: list,
                 structure, backend: str = "numpy", rules=None, positions=None):
        labels = _distinct_labels(labels)
        super().__init__(lowered, dict(zip(labels, roots)), structure, kind, tuple(wrt), backend,
                         rules, positions)
        self.kind = kind
        self.wrt = wrt

    def __repr__(self) -> str:
        return f"<einderiv.{self.kind} wrt {', '.join(self.wrt)}>"


def _wrt_list(wrt) -> tuple[list[str], bool]:
    """The names `wrt` gives (a name or an `einderiv.var`, or a list of them), and whether it
    is a list."""
    many = isinstance(wrt, (list, tuple))
    names = []
    for w in (wrt if many else [wrt]):
        if isinstance(w, Tensor):
            if not isinstance(w.node, ast.Name):
                raise EinderivError(f"wrt takes variables, got the expression {w!r}",
                                    hint="pass the einderiv.var itself, or its name")
            w = w.node.id
        elif not isinstance(w, str):
            raise EinderivError(f"wrt must be a variable name, an einderiv.var, or a list of "
                                f"them, got {wrt!r}")
        names.append(check_name(w, "wrt: the variable"))
    if not names:
        raise EinderivError("wrt is an empty list: name at least one variable")
    return names, many


def _check_wrt_shapes(lowered: Lowered, wrt) -> None:
    """An `einderiv.var` in `wrt` has the shape the expression declares for its name."""
    for w in (wrt if isinstance(wrt, (list, tuple)) else [wrt]):
        if isinstance(w, Tensor) and w.node.id in w.declarations:
            name = w.node.id
            shape = declared_shape(name, w.declarations[name], None, lowered.sizes)
            declared = lowered.declared.get(name)
            if declared is not None and declared != shape:
                raise ShapeError(f"wrt: the variable '{name}' has shape {show_shape(shape)}, "
                                 f"but the expression declares it {show_shape(declared)}")


def _distinct(names: list[str]) -> tuple[list[str], list[int]]:
    """`names` without repeats, and the position of each of `names` among them.

    A repeated `wrt` returns the repeated entries, as `jax.grad` with `argnums=(0, 0)`: each
    derivative is derived and computed once, and the results are picked by position.
    """
    distinct = list(dict.fromkeys(names))
    return distinct, [distinct.index(n) for n in names]


def _distinct_labels(labels: list[str]) -> list[str]:
    """Output labels made distinct, so that no output replaces another in the dict of roots:
    a label taken already gets a suffix `_1`, `_2`, ... The hessian labels `d<a>d<b>` of `x` and
    `xdx` are `dxdxdx` for both off-diagonal blocks, and any separator made of name characters
    can be written into a name too."""
    taken, out = set(), []
    for label in labels:
        new, k = label, 0
        while new in taken:
            k += 1
            new = f"{label}_{k}"
        taken.add(new)
        out.append(new)
    return out


def _picked(values, positions: list[int]) -> list:
    """`values[p]` for each of `positions`; an entry picked again is a copy, so that updating
    one returned array in place (`g[0] *= lr`) leaves the other alone."""
    out, seen = [], set()
    for p in positions:
        value = values[p]
        if p in seen:
            copy = getattr(value, "clone", None) or getattr(value, "copy", None)  # torch: clone
            value = copy() if copy is not None else value
        seen.add(p)
        out.append(value)
    return out


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


def _first_derivatives(kind: str, expr, wrt, shapes, backend: str, jacobian: bool = False,
                       with_value: bool = False, sizes: dict | None = None) -> Derived:
    """grad, jacobian and value_and_grad: one derivative per distinct name of `wrt`."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    rules = default_rulebook()
    with paused_gc():  # a long program's IR: see paused_gc
        rewriter = Rewriter(rules)
        lowered = rewritten(lower_source(expr, shapes, rules, order=1, sizes=sizes), rewriter)
        _check_wrt_shapes(lowered, wrt)
        if not jacobian:
            _scalar_output(lowered, kind)
        distinct, positions = _distinct(names)
        roots = rewriter(derivatives(lowered.root, _variables(lowered, distinct), rules,
                                     jacobian=jacobian))
    labels = [f"d{n}" for n in distinct]
    if with_value:
        roots, labels = [lowered.root, *roots], ["out", *labels]
        positions = [0, *(p + 1 for p in positions)]
        structure = ((lambda r: (r[0], tuple(_picked(r, positions[1:])))) if many
                     else (lambda r: (r[0], r[1])))
    else:
        structure = (_structure_of(positions) if many else _single)
    return Derived(lowered, kind, names, roots, labels, structure, backend, rules, positions)


@rebuildable
def grad(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
         sizes: dict | None = None) -> Derived:
    """The gradient of a scalar expression: shaped like `wrt` (a tuple for a list of names).

    A name repeated in the list gives its gradient again at each place it appears (as `jax.grad`
    with `argnums=(0, 0)`); it is derived and computed once. Raises `ParseError`, `ShapeError`
    or `UnknownNameError` (all `EinderivError`) on bad input, and `ParseError` for a text past
    the derivation limit (`parser.MAX_GRADIENT_OPERATIONS` operations; docs/language.md,
    "Limits"): build larger programs with `einderiv.var`.

    >>> import numpy as np, einderiv
    >>> g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)})
    >>> g(x=np.array([1.0, 2.0]))
    array([2., 4.])
    >>> einderiv.grad("sum(x * x)", ["x", "x"], {"x": ("n",)})(x=np.array([1.0, 2.0]))
    (array([2., 4.]), array([2., 4.]))
    """
    return _first_derivatives("grad", expr, wrt, shapes, backend, sizes=sizes)


@rebuildable
def value_and_grad(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
                   sizes: dict | None = None) -> Derived:
    """`(value, gradient)`, with the forward pass computed once and shared. For a list of names
    the gradient is a tuple in that order (a repeated name repeats its entry, as `grad`)."""
    return _first_derivatives("value_and_grad", expr, wrt, shapes, backend, with_value=True,
                              sizes=sizes)


@rebuildable
def jacobian(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
             sizes: dict | None = None) -> Derived:
    """The Jacobian: shape `output_shape + wrt_shape` (the convention of `jax.jacobian`). For a
    list of names a tuple in that order (a repeated name repeats its entry, as `grad`)."""
    return _first_derivatives("jacobian", expr, wrt, shapes, backend, jacobian=True,
                              sizes=sizes)


@rebuildable
def hessian(expr, wrt, shapes: dict | None = None, *, backend: str = "numpy",
            sizes: dict | None = None) -> Derived:
    """The Hessian of a scalar expression: shape `wrt_shape + wrt_shape`; for a list of names a
    tuple of tuples whose block [i][j] has shape `wrt_i + wrt_j` (as `jax.hessian`). It is the
    symbolic derivative of the gradient program. A repeated name repeats its rows and columns
    of blocks (as `jax.hessian` with `argnums=(0, 0)`); each block is computed once. A text
    past `parser.MAX_HESSIAN_OPERATIONS` operations is a `ParseError` (docs/language.md,
    "Limits")."""
    _check_backend(backend)
    names, many = _wrt_list(wrt)
    rules = default_rulebook()
    with paused_gc():  # a long program's IR: see paused_gc
        rewriter = Rewriter(rules)
        lowered = rewritten(lower_source(expr, shapes, rules, order=2, sizes=sizes), rewriter)
        _check_wrt_shapes(lowered, wrt)
        _scalar_output(lowered, "hessian")
        distinct, where = _distinct(names)
        variables = _variables(lowered, distinct)
        grads = rewriter(derivatives(lowered.root, variables, rules))
        blocks = [rewriter(derivatives(g, variables, rules, jacobian=True)) for g in grads]
    roots = [b for row in blocks for b in row]
    labels = [f"d{a}d{b}" for a in distinct for b in distinct]
    k, m = len(distinct), len(names)
    positions = [where[i] * k + where[j] for i in range(m) for j in range(m)]

    def structure(r):
        picked = _picked(r, positions)
        return tuple(tuple(picked[i * m:(i + 1) * m]) for i in range(m))
    return Derived(lowered, "hessian", names, roots, labels,
                   structure if many else _single, backend, rules, positions)
