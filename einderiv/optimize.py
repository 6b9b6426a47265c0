"""One flat parameter vector for `scipy.optimize.minimize`: `einderiv.flat`.

SciPy's minimizers work on a 1-D float64 vector `x`; a model has several parameters of their
own shapes. `flat` lays the `wrt` variables out in `x` one after the other, each raveled in C
order, and gives the value, gradient, Hessian and Hessian-vector product of the expression over
that vector, with the other variables fixed to the arrays of `data`:

    problem = einderiv.flat(loss, ["W", "b"], shapes, data={"X": X, "y": y})
    fun, jac, hess, hessp = problem
    result = scipy.optimize.minimize(fun, problem.pack(W=W0, b=b0), jac=jac, hessp=hessp,
                                     method="Newton-CG")
    W, b = problem.unpack(result.x).values()

`hessp` is `einderiv.hvp` (the Hessian is never formed), `hess` the blocks of
`einderiv.hessian` put together; both are derived on first use. Every result behind a `Flat` is
made by the public call (`value_and_grad`, `hessian`, `hvp`), so a `Flat` pickles and copies as
they do: rebuilt on load from its expression, shapes, rules and data.
"""
from __future__ import annotations

import inspect
import numbers
from types import MappingProxyType

import numpy as np

from .api import (Derived, _Result, _scalar_output, _variables, _wrt_list, hessian,
                  lower_source, value_and_grad)
from .errors import EinderivError, InputError, ShapeError, UnknownNameError, did_you_mean
from .evaluate.plan import bind_dimensions
from .ir.nodes import Var
from .parse.parser import check_name
from .rulebook import default_rulebook
from .rulebook.table import using_rules
from .transforms import _fresh, hvp
from .vectorize.gc_pause import paused_gc


def flat(expr, wrt=None, shapes: dict | None = None, *, data: dict | None = None,
         sizes: dict | None = None) -> "Flat":
    """The scalar expression `expr` as a function of one flat vector holding the `wrt`
    variables, for `scipy.optimize.minimize`: a `Flat`, which unpacks as `fun, jac, hess,
    hessp` and has `pack` and `unpack`.

    `expr` is a source text or an `einderiv.var` expression (with `shapes` as for `grad`), or
    a result of `compile`, `grad`, ... (its expression, shapes and rules; `wrt` defaults to the
    result's). `wrt` is a name or an `einderiv.var`, or a list of them, each at most once.
    `data` gives every other variable the expression uses, fixed for every call: its arrays
    are copied, read-only (`problem.data`), so that the value and gradient kept for the last
    `x` stay those of the data. The size of each dimension of a `wrt` variable comes from
    `data`'s arrays, an integer in `shapes`, or `sizes` (dimension name -> a count, an int
    >= 0, for one that no array of `data` has, such as a hidden layer's). Runs on numpy, in the
    result dtype of `data` and `x` (float64 for SciPy's `x`).

    Raises `ShapeError` for a non-scalar expression, a `wrt` var of another shape than the
    expression's, a `data` array of the wrong shape, a size that is not a count or a dimension
    no array or integer sizes, `UnknownNameError` for a name of `data` or `wrt` the expression
    does not declare, and `InputError` for a `wrt` variable in `data`, a variable missing from
    `data`, and (at call time) an `x` or `p` that is not a 1-D vector of `size` entries.

    >>> import numpy as np, einderiv
    >>> problem = einderiv.flat("sum((A @ x - b) ** 2) + c * c", ["x", "c"],
    ...                         {"A": ("m", "n"), "x": ("n",), "b": ("m",), "c": ()},
    ...                         data={"A": np.eye(2), "b": np.array([1.0, 2.0])})
    >>> fun, jac, hess, hessp = problem
    >>> x = problem.pack(x=np.zeros(2), c=3.0)
    >>> x
    array([0., 0., 3.])
    >>> float(fun(x)), jac(x)
    (14.0, array([-2., -4.,  6.]))
    >>> hessp(x, np.array([1.0, 0.0, 1.0]))
    array([2., 0., 2.])
    >>> problem.unpack(np.array([1.0, 2.0, 0.0]))
    {'x': array([1., 2.]), 'c': array(0.)}
    """
    rules = default_rulebook()
    if isinstance(expr, _Result):
        if shapes is not None:
            raise EinderivError("flat of a result takes the shapes it was made with: pass the "
                                "expression instead to declare others")
        if wrt is None:
            wrt = getattr(expr, "wrt", None)
        rules = expr.rules
        expr, shapes = _source(expr)
    if wrt is None:
        raise EinderivError("flat needs wrt: the variables the flat vector holds")
    names, many = _wrt_list(wrt)
    if len(set(names)) != len(names):
        raise EinderivError(f"wrt names a variable twice ({', '.join(names)}): the flat vector "
                            f"holds each variable once")
    sizes = _counts(sizes)
    with using_rules(rules):
        with paused_gc():
            _scalar_output(lower_source(expr, shapes, rules), "flat")
        first = value_and_grad(expr, wrt if many else [wrt], shapes)
    return Flat(first, dict(data or {}), sizes)


def _source(result: _Result) -> tuple:
    """The expression and shapes of the public call that made `result`."""
    if result._made_by is None:
        raise EinderivError(f"flat cannot tell the expression of this {type(result).__name__}: "
                            f"it was not made by a public function of einderiv",
                            hint="pass the expression and its shapes")
    function, args, kwargs = result._made_by
    arguments = inspect.signature(function).bind(*args, **kwargs).arguments
    return arguments["expr"], arguments.get("shapes")


def _counts(sizes) -> dict:
    """`sizes` checked: dimension names to counts (ints >= 0, numpy's too)."""
    if sizes is None:
        return {}
    if not isinstance(sizes, dict):
        raise ShapeError(f"sizes must be a dict of dimension name -> int, got "
                         f"{type(sizes).__name__}")
    out = {}
    for name, size in sizes.items():
        check_name(name, "sizes: the dimension", ShapeError)
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise ShapeError(f"sizes gives dimension '{name}' as {size!r}: a size is a count, "
                             f"an int >= 0")
        out[name] = int(size)
    return out


def _read_only(value) -> np.ndarray:
    array = np.array(value)  # a copy: the caller's array may change after flat returns
    array.setflags(write=False)
    return array


def _real(value, name: str) -> np.ndarray:
    """`value` as float64: a complex one would lose its imaginary part (numpy only warns)."""
    array = np.asarray(value)
    if np.iscomplexobj(array):
        raise InputError(f"pack: '{name}' is complex ({array.dtype}): the flat vector holds "
                         f"real numbers")
    try:
        return array.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise InputError(f"pack: '{name}' should be an array of numbers, got "
                         f"{array.dtype} values") from None


def _flat_again(first, data, sizes) -> "Flat":
    return Flat(first, data, sizes)


class Flat:
    """The value, gradient, Hessian and Hessian-vector product of a scalar expression over one
    flat vector `x` (see `flat`). `x` holds `names` in order, each raveled in C order:
    `layout` maps each to its slice and shape; `size` is the length of `x`.

    - `fun(x)`: the value, a Python float;
    - `jac(x)`: the gradient, 1-D of `size` entries;
    - `hess(x)`: the Hessian, `size` by `size`;
    - `hessp(x, p)`: the Hessian times `p` (1-D of `size` entries), never forming it.

    The einderiv results behind them are `value_and_grad`, `hessian` and `hvp`; `data` is the
    read-only mapping of the other variables' arrays (copies of those given).

    `fun` and `jac` come from one `value_and_grad` call: the value and gradient at the last `x`
    are kept, so SciPy's calls of both at one point compute the forward pass once.
    """

    def __init__(self, first: Derived, data: dict, sizes: dict):
        self.names = list(first.wrt)
        self._lowered = first.lowered
        self._variables = _variables(self._lowered, self.names)
        self._check_data(data)
        self.data = MappingProxyType({n: _read_only(v) for n, v in data.items()})
        self._sizes = dict(sizes)
        self.layout = self._layout(self._sizes)
        self.size = sum(where.stop - where.start for where, _ in self.layout.values())
        self._value_and_grad = first
        needed = set(first.inputs) - set(self.names) - set(self.data)
        if needed:
            raise InputError(f"data has no array for {', '.join(sorted(needed))}",
                             hint="data gives every variable that is not in wrt")
        self._hessian = self._hvp = None
        self._last = None  # (x, value, gradient) of the last fun or jac call

    def __reduce__(self):
        # As the public result behind it, which pickles as the call that made it.
        return (_flat_again, (self.value_and_grad, dict(self.data), self._sizes))

    def _check_data(self, data: dict) -> None:
        declared = self._lowered.declared
        for name in data:
            if name in self.names:
                raise InputError(f"'{name}' is in wrt and in data: the flat vector holds it",
                                 hint="give its start value to pack() instead")
            if name not in declared:
                raise UnknownNameError(f"data has '{name}', which the expression does not "
                                       f"declare", hint=did_you_mean(name, declared))

    def _layout(self, sizes: dict) -> dict:
        declared = self._lowered.declared
        env = dict(sizes)
        for name, size in bind_dimensions({n: Var(n, declared[n]) for n in self.data},
                                          dict(self.data)).items():
            if env.setdefault(name, size) != size:
                raise ShapeError(f"sizes gives dimension '{name}' as {env[name]}, but the "
                                 f"arrays of data have it {size}")
        layout, start = {}, 0
        for var in self._variables:
            try:
                shape = tuple(d.size(env) for d in var.shape)
            except KeyError as e:
                raise ShapeError(f"the size of dimension '{e.args[0]}' of '{var.name}' is not "
                                 f"known: no array of data has it",
                                 hint=f"give it in sizes ({e.args[0]}=...), or in shapes as an "
                                      f"integer") from None
            size = int(np.prod(shape))
            layout[var.name] = (slice(start, start + size), shape)
            start += size
        return layout

    # -- the derivatives: each made by its public call, with the rules of the first ----------

    def _made(self, function, **options):
        expr, shapes = _source(self._value_and_grad)
        with using_rules(self._value_and_grad.rules):
            return function(expr, list(self.names), shapes, **options)

    @property
    def value_and_grad(self) -> Derived:
        """The einderiv result behind `fun` and `jac` (`.formula`, `.source`, ...)."""
        return self._value_and_grad

    @property
    def hessian(self) -> Derived:
        """The `einderiv.hessian` result behind `hess` (derived on first use)."""
        if self._hessian is None:
            self._hessian = self._made(hessian)
        return self._hessian

    @property
    def hvp(self):
        """The `einderiv.hvp` result behind `hessp` (derived on first use)."""
        if self._hvp is None:
            self._hvp = self._made(hvp, tangent_name=_fresh(self._lowered, "tangent"))
        return self._hvp

    # -- over the flat vector -----------------------------------------------------------------

    def pack(self, /, **arrays) -> np.ndarray:  # `/`: a wrt variable may be named `self`
        """The flat vector holding `arrays`, one per name of `wrt` (float64). A complex value,
        or one that is not numbers, is an `InputError`, as in a call."""
        unknown = set(arrays) - set(self.names)
        missing = [n for n in self.names if n not in arrays]
        if unknown or missing:
            raise InputError(f"pack takes exactly the wrt variables {', '.join(self.names)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; not in wrt: {', '.join(sorted(unknown))}" if unknown else ""))
        x = np.empty(self.size)
        for name, (where, shape) in self.layout.items():
            value = _real(arrays[name], name)
            if value.shape != shape:
                raise ShapeError(f"pack: '{name}' should have shape {shape}, got "
                                 f"{value.shape}")
            x[where] = value.ravel()
        return x

    def unpack(self, x) -> dict:
        """`{name: array}` for each `wrt` variable, from the flat vector `x` (copies)."""
        x = self._vector(x, "x")
        return {name: x[where].reshape(shape).copy()
                for name, (where, shape) in self.layout.items()}

    def _vector(self, x, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 1 or x.shape[0] != self.size:
            raise InputError(f"{what} should be a 1-D vector of {self.size} entries "
                             f"({self._described()}), got shape {x.shape}")
        return x

    def _described(self) -> str:
        return ", ".join(f"{n} {list(shape)}" for n, (_, shape) in self.layout.items())

    def _arrays(self, x) -> dict:
        x = self._vector(x, "x")
        arrays = dict(self.data)
        for name, (where, shape) in self.layout.items():
            arrays[name] = x[where].reshape(shape)
        return arrays

    def _value_and_gradient(self, x):
        last = self._last
        # The same point is the same bits of the same dtype: equal values are not enough
        # (float32 x after float64 x of its values is another result dtype; -0.0 == 0.0, but
        # 1 / x tells them apart).
        x = np.asarray(x)
        if last is not None and last[0].dtype == x.dtype and last[0].shape == x.shape and \
                last[0].tobytes() == x.tobytes():
            return last[1], last[2]
        value, grads = self._value_and_grad(**self._arrays(x))
        gradient = np.concatenate([np.ravel(g) for g in grads])
        # A copy of x: SciPy may change its array in place before the next call.
        self._last = (np.array(x, copy=True), float(value), gradient)
        return self._last[1], self._last[2]

    def fun(self, x) -> float:
        """The value at `x`."""
        return self._value_and_gradient(x)[0]

    def jac(self, x) -> np.ndarray:
        """The gradient at `x`, flat like `x`."""
        return self._value_and_gradient(x)[1].copy()

    def hess(self, x) -> np.ndarray:
        """The Hessian at `x`, `size` by `size` (the blocks of `einderiv.hessian`)."""
        blocks = self.hessian(**self._arrays(x))
        sizes = [where.stop - where.start for where, _ in self.layout.values()]
        return np.block([[np.reshape(block, (m, n)) for block, n in zip(row, sizes)]
                         for row, m in zip(blocks, sizes)])

    def hessp(self, x, p) -> np.ndarray:
        """The Hessian at `x` times `p`, flat like `x` (`einderiv.hvp`: no Hessian formed)."""
        p = self._vector(p, "p")
        tangent = tuple(p[where].reshape(shape) for where, shape in self.layout.values())
        result = self.hvp
        products = result(**self._arrays(x), **{result.keyword: tangent})
        return np.concatenate([np.ravel(v) for v in products])

    def __iter__(self):
        """`fun, jac, hess, hessp = flat(...)`."""
        return iter((self.fun, self.jac, self.hess, self.hessp))

    def __repr__(self) -> str:
        return f"<einderiv.Flat over {self._described()}: {self.size} entries>"
