"""Stage 6: a vectorized program -> a standalone Python module (the `python` format).

The module imports the array library and one function that computes the results from the
input arrays, its parameters in the order the expression declares them (the API's `.inputs`
order, in which its positional arrays bind). It is built from the IR alone: user text never
reaches it, and every name in it is either an identifier the grammar accepted (renamed if
Python reserves it) or one of ours, which all start with an underscore. Each temporary is
deleted after the line that reads it last, so that a long program holds only the arrays still
to be read.

Contractions with no matrix form call `_c0`, `_c1`, ...: plain `opt_einsum.contract` when the
module is used on its own, and an `opt_einsum.contract_expression` with a precomputed path when
einderiv compiles it for a shape signature.
"""
from __future__ import annotations

import ast as python_ast
import builtins
import keyword
import math

from ..ir.dims import Dim, is_composite, names_in as dimension_names
from ..lower.convolution import NAMES as CONVOLUTIONS
from ..lower import dimensions
from ..lower.dimensions import composite_expr
from ..parse import ast
from ..rulebook import RuleBook, default_rulebook
from ..vectorize import VectorProgram
from ..vectorize.share import names_in
from ..vectorize.gc_pause import paused_gc

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "neg": 3, "**": 4}
BUILTIN_CALLS = {"sum": "_xp.sum", "mean": "_xp.mean", "tr": "_xp.trace", "trace": "_xp.trace",
                 "diag": "_xp.diag", "outer": "_xp.outer", "dot": "_xp.dot", "eye": "_xp.eye"}


class PythonModule:
    """Source text plus what is needed to specialize it to a shape signature."""

    def __init__(self, source: str, function: str, arguments: list[str],
                 contractions: list[tuple[str, list]], outputs: int,
                 fresh: list[bool] | None = None):
        self.source = source
        self.outputs = outputs  # how many results: one is returned bare, several as a tuple
        # Per output: is it computed where it is returned, by an operator or a sum of numpy
        # arrays, so that on numpy it is a new array (or a numpy scalar), never an input or a
        # view of one, nor another output? The call's guard checks only its type and dtype.
        self.fresh = list(fresh) if fresh is not None else [False] * outputs
        self.dimension_only: set[str] = set()  # arguments read only for their shapes
        self.function = function
        self.arguments = arguments  # input variable names, in the function's argument order
        self.contractions = contractions  # (subscripts, operand shapes as Dims) per _c<k>


def generate(program: VectorProgram, function: str = "f", rules: RuleBook | None = None,
             preferred: tuple[str, ...] = ()) -> PythonModule:
    """`preferred`: inputs to read a dimension from first when the results use no input that
    has it (the variables a derivative is taken by: their shape is the result's)."""
    with paused_gc():  # a long program's syntax trees: see paused_gc
        return _Printer(program, rules or default_rulebook(), preferred).module(function)


# Calls whose result is a new array (or a numpy scalar) on numpy, whatever the arguments.
_FRESH_CALLS = frozenset({"_kernels.array_sum", "_kernels.array_mean", "_xp.dot",
                          "_kernels.transpose_plus"})


def _fresh(text: str) -> bool:
    """Is the returned expression `text` (our own code) an arithmetic operator or a call of
    _FRESH_CALLS at its top, whose numpy result is a new array or a numpy scalar?"""
    top = python_ast.parse(text, mode="eval").body
    if isinstance(top, python_ast.Call):
        return python_ast.unparse(top.func) in _FRESH_CALLS
    return isinstance(top, python_ast.BinOp) or (
        isinstance(top, python_ast.UnaryOp) and isinstance(top.op, python_ast.USub))


def _transpose_sum(e: ast.Expr):
    """(a, b) where `e` is `a.T + b` or `b + a.T`, b not itself a transpose, else None."""
    if not (isinstance(e, ast.BinOp) and e.op == "+"):
        return None
    left, right = (isinstance(s, ast.Attribute) and s.attr == "T" for s in (e.left, e.right))
    if left == right:
        return None
    return (e.left.operand, e.right) if left else (e.right.operand, e.left)


def _stacked_product(e: ast.Expr):
    """(a, weights, dims, transposed) where `e` is `a @ reshape(stack(weights), dims).T` or
    `a @ reshape(stack(weights, axis=1), dims)` (projections.py's product of one operand with
    several weights stacked, each weight [J, K] or [K, J]), else None."""
    if not (isinstance(e, ast.BinOp) and e.op == "@"):
        return None
    r, transposed = e.right, isinstance(e.right, ast.Attribute) and e.right.attr == "T"
    if transposed:
        r = r.operand
    if not (isinstance(r, ast.Call) and r.func == "reshape" and len(r.args) == 2 and
            not r.kwargs and isinstance(r.args[1], ast.Tuple) and len(r.args[1].items) == 2):
        return None
    s = r.args[0]
    if not (isinstance(s, ast.Call) and s.func == "stack" and len(s.args) > 1):
        return None
    axis = [v for k, v in s.kwargs if k == "axis"]
    if len(s.kwargs) != len(axis) or (
            [getattr(a, "value", None) for a in axis] != ([] if transposed else [1])):
        return None
    return e.left, s.args, r.args[1], transposed


def _identity_row(e: ast.Index) -> bool:
    return (isinstance(e.operand, ast.Call) and e.operand.func == "eye"
            and len(e.operand.args) == 1 and len(e.items) == 1
            and not isinstance(e.items[0], (ast.Slice, ast.NoneLit)))


def _window(e: ast.Index) -> bool:
    """Is `e` rows lo:hi of an identity (`eye(n)[lo:hi]`, a slice's Jacobian)?"""
    return (isinstance(e.operand, ast.Call) and e.operand.func == "eye"
            and len(e.operand.args) == 1 and len(e.items) == 1
            and isinstance(e.items[0], ast.Slice))


def _step_select(e: ast.Call, rules: RuleBook) -> bool:
    """Is `e` the built-in where of a built-in step (`where(step(u), a, b)`)?"""
    c = e.args[0] if e.args else None
    return isinstance(c, ast.Call) and c.func == "step" and len(c.args) == 1 and \
        not c.kwargs and all(getattr(rules.get(f), "impl", None) == f"kernel.{f}"
                             for f in ("where", "step"))


def _reversals(e: ast.Index) -> list[int]:
    """The axes that `e`, an index of slices only, takes with a negative step and no bounds
    (the vectorizer's reversals, `x[::-1]` and `x[::-2]`)."""
    if not all(isinstance(i, ast.Slice) for i in e.items):
        return []
    return [a for a, i in enumerate(e.items) if i.lo is None and i.hi is None and
            isinstance(i.step, ast.UnaryOp) and i.step.op == "-" and
            isinstance(i.step.operand, ast.Number)]


def _without_sign(e: ast.Expr) -> ast.Expr | None:
    """-e as an expression without a leading minus, where `e` has one: `-u`, a negative number,
    or a product or quotient whose first factor is one of these; else None."""
    if isinstance(e, ast.UnaryOp) and e.op == "-":
        return e.operand
    if isinstance(e, ast.Number) and e.value < 0:
        return ast.Number(-e.value)
    if isinstance(e, ast.BinOp) and e.op in ("*", "/"):
        left = _without_sign(e.left)
        if left is not None:
            return ast.BinOp(e.op, left, e.right)
    return None


def _atomic(e: ast.Expr) -> bool:
    """A name or an integer at least 0: text that no neighbouring operator can split."""
    return isinstance(e, ast.Name) and not is_composite(e.id) or \
        (isinstance(e, ast.Number) and e.value >= 0)


def _safe(name: str) -> bool:
    """Can a user's name stand in Python code as it is? Not when Python reserves it, when it
    could be one of ours (all start with `_`), when it would shadow a builtin the module calls
    (`float`), or when it is not ASCII: Python folds identifiers by NFKC, so a bold `𝐭0` *is*
    `t0`. Any other name is written `_v<k>`."""
    return name.isidentifier() and name.isascii() and not keyword.iskeyword(name) and \
        not name.startswith("_") and name not in _BUILTINS


_BUILTINS = frozenset(dir(builtins))


class _Printer:
    def __init__(self, program: VectorProgram, rules: RuleBook, preferred=()):
        self.program = program
        self.preferred = tuple(preferred)
        self.rules = rules
        self.names: dict[str, str] = {}
        self.imports: dict[str, str] = {}
        self.contractions: list[tuple[str, list]] = []
        self.dims_used: set[str] = set()
        self.dim_names: dict[str, str] = {}  # a dimension name that is not ASCII -> ours
        # a temporary `t = tanh(u)` by u's name, while t lives: sech2(u) is read off it
        self.tanh_of: dict[str, str] = {}
        for i, name in enumerate(list(program.variables) + [n for n, _ in program.temporaries]):
            self.names[name] = name if _safe(name) else f"_v{i}"

    def module(self, function: str) -> PythonModule:
        self.arguments = set(self.program.variables)
        body = []
        for (n, e), dead in zip(self.program.temporaries, self._last_reads()):
            body.append(f"    {self.names[n]} = {self._statement(e)}")
            if self._kernel_call(e, "tanh", "xp.tanh") and isinstance(e.args[0], ast.Name):
                self.tanh_of[e.args[0].id] = self.names[n]
            if dead:
                body.append(f"    del {', '.join(self.names[d] for d in dead)}")
                gone = {self.names[d] for d in dead}
                self.tanh_of = {u: t for u, t in self.tanh_of.items() if t not in gone}
        results = [self._result(e) for _, e in self.program.outputs]
        ret = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
        body.append(f"    return {ret}")
        head = self._dimension_lines()
        args = self._signature_order()
        lines = ["# Generated by einderiv from the indexed derivative; do not edit.",
                 "import numpy as _xp"]
        if self.contractions:
            lines.append("import functools as _functools")
            lines.append("import opt_einsum as _oe")
        if "_kernels" in self.imports.values():
            lines.append("from einderiv.evaluate import kernels as _kernels")
        for module, alias in self.imports.items():
            if alias != "_kernels":
                lines.append(f"import {module} as {alias}")
        for k, (spec, _) in enumerate(self.contractions):
            lines.append(f"_c{k} = _functools.partial(_oe.contract, {spec!r})")
        # The dtype of the constants (ones, eye, ...); einderiv sets the inputs' result type.
        lines.append("_dtype = _xp.float64")
        signature = ", ".join(self.names[a] for a in args)
        outputs = ", ".join(n for n, _ in self.program.outputs)
        lines += ["", "", f"def {function}({signature}):",
                  f'    """Compute {outputs}."""', *head, *body, ""]
        module = PythonModule("\n".join(lines), function, args, self.contractions,
                              len(self.program.outputs), [_fresh(r) for r in results])
        module.dimension_only = set(args) - set(self.program.variables)
        return module

    def _signature_order(self) -> list[str]:
        """The function's parameters: its inputs in the order the expression declares them
        (`program.declarations`, the order `.inputs` lists and positional arrays of the API bind
        in), an input read only for a dimension in its place among them too. Any input the
        declarations lack (a program vectorized without them) follows, by name."""
        rank = {name: k for k, name in enumerate(self.program.declarations)}
        return sorted(self.arguments, key=lambda name: (name not in rank, rank.get(name, 0),
                                                        name))

    def _last_reads(self) -> list[list[str]]:
        """Per line of the body, the temporaries no later line reads: the line `del`s them, so
        that a chain cut into temporaries holds one link at a time, not all of them until
        the function returns. What the return statement reads (an output, or the temporary an
        output is) is never deleted; nor is an input, which the caller holds anyway."""
        temporaries = self.program.temporaries
        last = {n: i for i, (n, _) in enumerate(temporaries)}  # one nothing reads: at once
        for i, (_, e) in enumerate(temporaries):
            for name in names_in(e):
                if name in last:
                    last[name] = i
        for _, e in self.program.outputs:
            for name in names_in(e):
                last.pop(name, None)
        dead: list[list[str]] = [[] for _ in temporaries]
        for name, i in last.items():
            if name not in self.program.variables:
                dead[i].append(name)
        return dead

    def _dimension_lines(self) -> list[str]:
        """Read each dimension the code needs off an input's shape. An input whose values the
        results do not use becomes an argument all the same when only it carries a dimension
        (the Jacobian of `A @ x` by A needs A's row count)."""
        shapes = {n: v.shape for n, v in self.program.variables.items()}
        rank = {n: i for i, n in enumerate(self.preferred)}
        # Of the inputs read only for a size, the ones with no other size first: a caller who
        # passes x: [n] and not X: [n, m] (which the formula of a constant gradient,
        # `log(2) * ones(n)`, does not read) can then be served, as by the result itself.
        others = {n: s for n, s in sorted(
            self.program.declarations.items(),
            key=lambda item: (sum(d.name is not None and d.name not in self.dims_used
                                  for d in item[1]), rank.get(item[0], len(rank)), item[0]))
            if n not in shapes}
        lines, solved = [], []
        ordered = [*sorted(shapes.items()), *others.items()]
        for dim in sorted(self.dims_used):
            for name, shape in ordered:
                hit = [(a, d) for a, d in enumerate(shape) if d.name == dim]
                if hit:
                    axis, d = hit[0]
                    lines.append(f"    {self._dim_name(dim)} = {self._axis_size(name, axis, d)}")
                    break
            else:
                solved.append(dim)
        # A name that no shape has alone is one factor of a product (`y: [2 * n]`): read from
        # it, after the other factors' names (lower/dimensions.py's `readings`).
        readings = dimensions.readings(dict(ordered)) if solved else {}
        needed, stack = set(), list(solved)
        while stack:
            dim = stack.pop()
            if dim not in readings:
                raise ValueError(f"dimension {dim} is bound by no input")
            if dim not in needed:
                needed.add(dim)
                stack += [n for o in readings[dim][3][1] for n in dimension_names(o)
                          if n not in self.dims_used]
        for dim, (name, axis, d, (c, others_, k)) in readings.items():
            if dim in needed:
                size = self._axis_size(name, axis, d)
                if c != 1 or others_:
                    divisor = dimensions.text(dimensions.product([Dim(None, c), *others_]))
                    size = size if d.offset == 0 else f"({size})"
                    size = f"{size} // {self._dimension(composite_expr(divisor))}"
                if k:
                    size += f" - {k}" if k > 0 else f" + {-k}"
                lines.append(f"    {self._dim_name(dim)} = {size}")
        return lines

    def _axis_size(self, name: str, axis: int, d) -> str:
        """The size of `name`'s axis, less the offset of its dimension `d` there."""
        offset = f" - {d.offset}" if d.offset > 0 else (f" + {-d.offset}" if d.offset < 0 else "")
        if name not in self.names:
            self.names[name] = name if _safe(name) else f"_v{len(self.names)}"
        self.arguments.add(name)
        return f"{self.names[name]}.shape[{axis}]{offset}"

    # expressions -------------------------------------------------------------------------------

    def _result(self, e: ast.Expr) -> str:
        """An output: a broadcast one as a new array (the caller owns its results: a
        broadcast view would be copied where it is returned, after numpy.broadcast_to's
        Python-level cost)."""
        e = _negated_ones(e)
        if isinstance(e, ast.BinOp) and getattr(e.right, "broadcast", False):
            view = self.expr(e)
            assert view.startswith("_xp.broadcast_to(")
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.broadcast_copy({view[len('_xp.broadcast_to('):-1]}, _xp)"
        return self._statement(e)

    def _statement(self, e: ast.Expr) -> str:
        """`e` as the whole right side of an assignment or a return: a negated product with a
        kernel sigmoid, alone or on the right of a matrix product (`-(X.T @ (sigmoid(-m) *
        y))`, a logistic loss's gradient), takes the sign into the kernel (`negative`): a
        pass over the result less. Only here, where no operator around it could bind tighter
        than the `@` that the text then has at its top."""
        if isinstance(e, ast.UnaryOp) and e.op == "-":
            inner = e.operand
            fused = self._sigmoid_product(inner)
            if fused is not None:
                arg, times, negative = fused
                return self._sigmoid(arg, times, not negative)
            if isinstance(inner, ast.BinOp) and inner.op == "@":
                fused = self._sigmoid_product(inner.right)
                if fused is not None:
                    arg, times, negative = fused
                    if inner.matrix:  # (numpy's dot: see expr)
                        return (f"_xp.dot({self.expr(inner.left)}, "
                                f"{self._sigmoid(arg, times, not negative)})")
                    left = self._wrap(inner.left, _PREC["@"])
                    return f"{left} @ {self._sigmoid(arg, times, not negative)}"
        return self.expr(e)

    def expr(self, e: ast.Expr) -> str:
        if isinstance(e, ast.Number):
            value = float(e.value)
            return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
        if isinstance(e, ast.Name):
            return self.names.get(e.id, e.id)
        e = _negated_ones(e)
        if isinstance(e, ast.BinOp) and getattr(e.right, "broadcast", False):
            # `x[:, None] * ones(n, m)`, a broadcast the vectorizer materializes: a view (an
            # output is copied once, where it is returned), not a product with an array of ones
            left = self.expr(e.left)
            if isinstance(e.left, ast.Number) or (isinstance(e.left, ast.UnaryOp) and
                                                  isinstance(e.left.operand, ast.Number)):
                left = f"_xp.asarray({left}, dtype=_dtype)"
            dims = ", ".join(self._dimension(a) for a in e.right.args)
            return f"_xp.broadcast_to({left}, ({dims},))"
        fused = self._sigmoid_product(e)
        if fused is not None:  # `y * sigmoid(m)`: one division (kernels.sigmoid)
            return self._sigmoid(*fused)
        stacked = _stacked_product(e)
        if stacked is not None:  # `a @ reshape(stack(W...), (G * H, V)).T`: see the kernel
            a, weights, dims, transposed = stacked
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            shape = "".join(f"{self._dimension(d)}, " for d in dims.items)
            return (f"_kernels.stacked_product({self.expr(a)}, "
                    f"[{', '.join(self.expr(w) for w in weights)}], ({shape.rstrip()}), _xp"
                    f"{'' if transposed else ', transposed=False'})")
        if isinstance(e, ast.BinOp) and e.matrix:
            # A product of arrays of one or two axes: numpy's dot, the same product without
            # matmul's ufunc dispatch (0.3 us a call, a tenth of a 100 x 100 matrix times a
            # vector; an unrolled network makes dozens). Every backend's namespace has dot with
            # this meaning on such arrays (torch's is its matmul, see backends._TorchNumpy).
            return f"_xp.dot({self.expr(e.left)}, {self.expr(e.right)})"
        transposed = _transpose_sum(e)
        if transposed is not None:  # `A.T + A`: see the kernel
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            a, b = transposed
            return f"_kernels.transpose_plus({self.expr(a)}, {self.expr(b)})"
        if isinstance(e, ast.BinOp):
            p = _PREC[e.op]
            left = self._wrap(e.left, p + 1 if e.op == "**" else p)
            right = self._wrap(e.right, p if e.op == "**" else p + 1)
            return f"{left} {e.op} {right}"
        if isinstance(e, ast.UnaryOp):
            return e.op + self._wrap(e.operand, _PREC["neg"])
        if isinstance(e, ast.Attribute):
            if e.attr == "mT":
                # Every backend's arrays have the method swapaxes (numpy's, torch's, JAX's,
                # CuPy's, dask's); not every one has .mT. A method, not a kernel: a call less
                # per transpose (0.2 us of a batched matmul's 12).
                return f"{self._wrap(e.operand, 9)}.swapaxes(-1, -2)"
            return f"{self._wrap(e.operand, 9)}.T"
        if isinstance(e, ast.Index):
            if _identity_row(e):  # eye(n)[k]: a one-hot row, without the n-by-n identity
                n = self._dimension(e.operand.args[0])
                k = self._index_int(e.items[0])
                return f"_xp.asarray(_xp.arange({n}) == ({k}) % {n}, dtype=_dtype)"
            if _window(e):  # eye(n)[lo:hi]: its rows' one-hot columns, without the n-by-n
                n = self._dimension(e.operand.args[0])  # identity (rows x n, not n x n)
                rows = f"_xp.arange({n})[{self._item(e.items[0])}]"
                return f"_xp.asarray({rows}[:, None] == _xp.arange({n}), dtype=_dtype)"
            flipped = _reversals(e)
            if flipped:  # x[::-1], x[::-2]: torch's tensors take no negative step
                operand = f"_xp.flip({self.expr(e.operand)}, axis={flipped[0]})"
                for axis in flipped[1:]:
                    operand = f"_xp.flip({operand}, axis={axis})"
                items = [ast.Slice(None, None, ast.Number(i.step.operand.value))
                         if a in flipped else i for a, i in enumerate(e.items)]
                if all(isinstance(i, ast.Slice) and i.lo is i.hi is None and
                       (i.step is None or i.step.value == 1) for i in items):
                    return operand
                return f"{operand}[{', '.join(self._item(i) for i in items)}]"
            return f"{self._wrap(e.operand, 9)}[{', '.join(self._item(i) for i in e.items)}]"
        if isinstance(e, ast.Tuple):
            inner = ", ".join(self.expr(i) for i in e.items)
            return f"({inner},)" if len(e.items) == 1 else f"({inner})"
        if isinstance(e, ast.Call):
            return self._call(e)
        raise TypeError(f"cannot generate code for {type(e).__name__}")

    def _wrap(self, e, prec) -> str:
        text = self.expr(e)
        if isinstance(e, ast.BinOp) and not e.matrix and self._sigmoid_product(e) is None \
                and _transpose_sum(e) is None:
            own = _PREC[e.op]
        elif isinstance(e, ast.UnaryOp) or (isinstance(e, ast.Number) and e.value < 0):
            own = _PREC["neg"]
        else:
            own = 9
        return f"({text})" if own < prec else text

    def _item(self, item) -> str:
        if isinstance(item, ast.Slice):
            lo = "" if item.lo is None else self._index_int(item.lo)
            hi = "" if item.hi is None else self._index_int(item.hi)
            if item.step is not None:
                return f"{lo}:{hi}:{self._index_int(item.step)}"
            return f"{lo}:{hi}"
        if isinstance(item, ast.NoneLit):
            return "None"
        return self._index_int(item)

    def _index_int(self, e) -> str:
        if isinstance(e, ast.Number):
            return str(int(e.value))
        if isinstance(e, ast.UnaryOp) and isinstance(e.operand, ast.Number):
            return f"-{int(e.operand.value)}"
        return self._dimension(e)

    def _axis(self, e) -> str:
        if isinstance(e, ast.Tuple):
            inner = ", ".join(self._index_int(i) for i in e.items)
            return f"({inner},)" if len(e.items) == 1 else f"({inner})"
        return self._index_int(e)

    def _dimension(self, e) -> str:
        """A dimension as an atom: `n - 1` comes bracketed, so that pasted next to any
        operator (`k % (_dim_n - 1)`, a slice, a pad width) it still means the whole."""
        text = self._dimension_sum(e)
        return text if _atomic(e) else f"({text})"

    def _dimension_sum(self, e) -> str:
        if isinstance(e, ast.Number):
            return str(int(e.value))
        if isinstance(e, ast.Name) and is_composite(e.id):  # `m * n`: a product's text
            return self._dimension_sum(composite_expr(e.id))
        if isinstance(e, ast.Name):
            self.dims_used.add(e.id)
            return self._dim_name(e.id)
        if isinstance(e, ast.BinOp) and e.op in ("+", "-", "*", "//"):
            right = self._dimension(e.right)  # n - (m - 1)
            left = self._dimension_sum(e.left) if e.op in "+-" else self._dimension(e.left)
            return f"{left} {e.op} {right}"
        raise TypeError("a dimension is a name, an integer, or a name plus an integer")

    def _dim_name(self, dim: str) -> str:
        """`_dim_n` for dimension n; `_dim<k>_` for a name that is not ASCII (NFKC)."""
        if dim.isascii():
            return f"_dim_{dim}"
        return self.dim_names.setdefault(dim, f"_dim{len(self.dim_names)}_")

    def _argument(self, e: ast.Expr) -> str:
        """A function's argument. A number is a 0-d array of the result dtype: torch's
        functions take no Python floats, and numpy's return float64 scalars for them."""
        if isinstance(e, ast.Number) or (isinstance(e, ast.UnaryOp) and
                                         isinstance(e.operand, ast.Number)):
            return f"_xp.asarray({self.expr(e)}, dtype=_dtype)"
        return self.expr(e)

    def _kernel_call(self, e: ast.Expr, name: str, impl: str) -> bool:
        """Is `e` a call of one argument of `name` as `impl` computes it (not a rule file's)?"""
        return isinstance(e, ast.Call) and e.func == name and len(e.args) == 1 and \
            not e.kwargs and getattr(self.rules.get(name), "impl", None) == impl

    def _kernel_sigmoid(self, e: ast.Expr) -> bool:
        """Is `e` a call of sigmoid as kernels.py computes it (not a rule file's own)?"""
        return self._kernel_call(e, "sigmoid", "kernel.sigmoid")

    def _sigmoid_product(self, e: ast.Expr) -> tuple[ast.Expr, ast.Expr, bool] | None:
        """(argument, other factor, negative) of `e` where it is a product with a kernel
        sigmoid, or with one negated (`-sigmoid(x) * y`, negative True)."""
        if isinstance(e, ast.BinOp) and e.op == "*" and not getattr(e.right, "broadcast", False):
            for call, times in ((e.right, e.left), (e.left, e.right)):
                negative = isinstance(call, ast.UnaryOp) and call.op == "-"
                if negative:
                    call = call.operand
                if self._kernel_sigmoid(call):
                    return call.args[0], times, negative
        return None

    def _sigmoid(self, arg: ast.Expr, times: ast.Expr | None = None,
                 negative: bool = False) -> str:
        """kernels.sigmoid of `arg`, given a negated argument (`sigmoid(-y * m)`, a logistic
        loss's margin) without its sign, a factor of the product it is in as `times`, and
        `negative` where the product is negated."""
        self.imports["einderiv.evaluate.kernels"] = "_kernels"
        extra = ""
        positive = _without_sign(arg)
        if positive is not None:
            arg, extra = positive, ", negated=True"
        if times is not None:
            extra += f", times={self.expr(times)}"
        if negative:
            extra += ", negative=True"
        return f"_kernels.sigmoid({self._argument(arg)}{extra})"

    def _call(self, e: ast.Call) -> str:
        name = e.func
        if self._kernel_sigmoid(e):
            return self._sigmoid(e.args[0])
        if self._kernel_call(e, "sech2", "kernel.sech2") and isinstance(e.args[0], ast.Name) \
                and e.args[0].id in self.tanh_of:
            # the forward pass's tanh of the same argument: 1 - tanh ** 2 where that does not
            # cancel (kernels.sech2)
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.sech2({self.expr(e.args[0])}, tanh={self.tanh_of[e.args[0].id]})"
        if name == "einsum":
            spec = e.args[0].value
            operands = ", ".join(self.expr(a) for a in e.args[1:])
            shapes = getattr(e, "operand_shapes", None)
            if shapes is None:  # a pure permutation
                return f"_xp.einsum({spec!r}, {operands})"
            self.contractions.append((spec, shapes))
            return f"_c{len(self.contractions) - 1}({operands})"
        if name == "transpose":  # the vectorizer's permutation: numpy's axes, by position
            return f"_xp.transpose({self.expr(e.args[0])}, {self._axis(e.args[1])})"
        if name == "cumsum":  # a vector's without an axis (numpy's flattens anything else)
            axis = self._axis(e.kwargs[0][1]) if e.kwargs else "0"
            return f"_xp.cumsum({self.expr(e.args[0])}, axis={axis})"
        if name == "reshape":
            dims = "".join(f"{self._dimension(d)}, " for d in e.args[1].items)
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.reshape({self.expr(e.args[0])}, ({dims.rstrip()}), _xp)"
        if name in ("triu", "tril"):  # numpy's k, torch's diagonal: given by position
            k = self._index_int(e.args[1]) if len(e.args) > 1 else "0"
            return f"_xp.{name}({self.expr(e.args[0])}, {k})"
        if name == "dilate":
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            axis = self._axis(e.kwargs[0][1]) if e.kwargs else "0"
            return (f"_kernels.dilate({self.expr(e.args[0])}, {self._index_int(e.args[1])}, "
                    f"{self._dimension(e.args[2])}, {axis})")
        if name in ("ones", "zeros"):
            dims = ", ".join(self._dimension(a) for a in e.args)
            return f"_xp.{name}(({dims},), dtype=_dtype)"
        if name == "size":  # a 0-d array of the result dtype: `1 / size(n)` at n = 0 is inf
            # and `2 ** size(n)` overflows to inf, as in numpy, where Python floats would raise
            return f"_xp.asarray({self._dimension(e.args[0])}, dtype=_dtype)"
        if name == "stack" and not e.kwargs and all(_is_number(a) for a in e.args):
            # a vector of numbers (per-step coefficients): one array in the result's dtype,
            # where a stack of Python floats is float64 whatever the inputs are
            return f"_xp.asarray([{', '.join(self.expr(a) for a in e.args)}], dtype=_dtype)"
        if name == "stack":
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            axis = "".join(f", axis={self._axis(v)}" for _, v in e.kwargs)
            return f"_kernels.stack([{', '.join(self.expr(a) for a in e.args)}], _xp{axis})"
        if name == "pad":
            pairs = ", ".join(f"({self._dimension(a)}, {self._dimension(b)})"
                              for a, b in (p.items for p in e.args[1].items))
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.pad({self.expr(e.args[0])}, ({pairs},), _xp)"
        if name == "concatenate":  # the vectorizer's: the parts as arguments (unparse.py)
            axis = "".join(f", axis={self._axis(v)}" for k, v in e.kwargs if k == "axis")
            return f"_xp.concatenate([{', '.join(self.expr(a) for a in e.args)}]{axis})"
        if name == "eye":  # numpy.eye(N, M): M by keyword, as dask.array.eye's 2nd is chunks
            dims = [self._dimension(a) for a in e.args]
            return f"_xp.eye({dims[0]}, {''.join(f'M={m}, ' for m in dims[1:])}dtype=_dtype)"
        args = [self._argument(a) for a in e.args]
        args += [f"{k}={self._axis(v)}" for k, v in e.kwargs]
        if name == "where" and _step_select(e, self.rules):
            # where(step(u), a, b), relu's derivative as a select: u > 0 is the same condition
            # without an array of step's values
            args[0] = f"({self.expr(e.args[0].args[0])}) > 0"
        if name in ("sum", "mean") and len(e.args) == 1:  # (numpy's own methods, see kernels)
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.array_{name}({', '.join([args[0], '_xp', *args[1:]])})"
        if name in BUILTIN_CALLS:
            return f"{BUILTIN_CALLS[name]}({', '.join(args)})"
        if name in CONVOLUTIONS:  # correlate, conv2d...: kernels.py's, stride by keyword
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return f"_kernels.{name}({', '.join(args)})"
        f = self.rules.get(name)
        if f is None or f.impl is None:
            raise TypeError(f"no implementation for {name}")
        if f.kind == "tensor" and f.axis and not e.kwargs:
            # The language's default, spelled out: a user's implementation may default to
            # other axes (scipy's log_softmax works over every axis).
            args.append(f"{f.axis}={'-1' if f.shape in ('same', 'cotangent') else 'None'}")
        return f"{self._impl(f.impl)}({', '.join(args)})"

    def _impl(self, impl: str) -> str:
        if impl.startswith("xp."):
            return "_xp." + impl[3:]
        if impl.startswith("kernel."):
            self.imports["einderiv.evaluate.kernels"] = "_kernels"
            return "_kernels." + impl[len("kernel."):]
        module, attr = impl.split(":")
        alias = self.imports.setdefault(module, f"_m{len(self.imports)}")
        return f"{alias}.{attr}"


def _is_number(e: ast.Expr) -> bool:
    """A number, or a negated one (`-2`)."""
    return isinstance(e, ast.Number) or (isinstance(e, ast.UnaryOp) and e.op == "-" and
                                         isinstance(e.operand, ast.Number))


def _negated_ones(e: ast.Expr) -> ast.Expr:
    """`-ones(n)` of a broadcast (contraction.broadcast's -1 broadcast, printed so) as the
    broadcast of -1 it is: one array filled with -1, not ones negated."""
    if isinstance(e, ast.UnaryOp) and e.op == "-" and getattr(e.operand, "broadcast", False):
        return ast.BinOp("*", ast.UnaryOp("-", ast.Number(1.0)), e.operand)
    return e
