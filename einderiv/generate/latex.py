"""The `latex` format: a vectorized program typeset as mathematics, one row per line.

It walks the same syntax tree as the `formula` and `python` printers, with the shape of every
subexpression (each line is lowered again, `lower_expr`), and writes each line in one of two
notations:

- matrix notation, where every value of the line is a scalar, a vector (a column) or a matrix:
  `X^{\\top}`, products by juxtaposition, `\\odot` for the elementwise product, a broadcast
  written out (`\\mathbf{1}_{n} b^{\\top}` repeats the row b^T n times, `v \\mathbf{1}_{d}^{\\top}`
  the column v; `\\operatorname{diag}(v) X` scales X's rows), a sum over one axis as a product
  with `\\mathbf{1}` (`X^{\\top} \\mathbf{1}_{n}`), a sum of every entry with its index
  (`\\sum_{i} x_{i}^{2}`), nested fractions as one (`-\\frac{1}{x^{2}}`);
- index notation, where the line has no matrix form (a tensor of three axes or more, an einsum,
  a slice, a pad, an axis of a softmax): the left side carries indices, every operand the
  indices it is taken at, sums are explicit (`\\sum_{k}`), `\\delta` is the Kronecker delta and
  `\\left[i \\geq 1\\right]` the Iverson bracket (1 where it holds, else 0). An index taken
  by a slice that stops short is bounded where it is bound: `\\sum_{j < 3} x_{j}` for
  `sum(x[:3])` (a sum per index where only some are: `\\sum_{i} \\sum_{j < 3}`), below a
  function along it (`\\max_{j < 3}`, `\\operatorname{softmax}_{j < 3}`), on an array of
  entries (`\\left[x_{j}\\right]_{j < 3}`), and a line's free index after it,
  `\\quad \\left(j < 3\\right)`, unless a pad widens it again (its bracket says where; a
  value's line then says how far, `\\quad \\left(i < n + 2\\right)`). A concatenation is
  the sum of pads it is, `\\left[i < 2\\right] x_{i} + \\left[i \\geq 2\\right] y_{i-2}`.

The value of a program is `f`; a derivative's left side says what it is: `\\frac{\\partial f}
{\\partial W}` (gradients and Jacobians), `\\frac{\\partial^2 f}{\\partial W\\,\\partial W}`
(Hessians), with indices in index notation (`\\frac{\\partial f_{ij}}{\\partial X_{kl}}`).
What an output is comes from the call that made it and the variables it was taken by, not
from its printed name: the gradient by x is still `\\frac{\\partial f}{\\partial x}` when an
input called `dx` has the vectorizer print it `dx_1`, and a name of the user's that reads like
a label (`dx = tanh(x * y)`) is typeset as a name.

Every bracketing question goes to `_parenthesize`, so the rules live in one table (`_WRAPPED`).
The rows use only what matplotlib's mathtext renders (no `\\lvert`, `\\le`, environments); the
block around them is an `aligned` environment, which MathJax, KaTeX and LaTeX render:
`mathtext_lines` splits a block into rows to render one at a time with matplotlib.

>>> import einderiv
>>> g = einderiv.grad("sum(log(1 + exp(-y * (X @ w))))", "w",
...                   {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
>>> print(g.latex)
\\begin{aligned}
\\frac{\\partial f}{\\partial w} &= -X^{\\top} \\left(\\sigma\\left(-y \\odot \\left(X w\\right)\\right) \\odot y\\right)
\\end{aligned}
"""
from __future__ import annotations

import copy
import dataclasses
import re
from functools import reduce

from ..errors import EinderivError
from ..ir.dims import ONE, Dim, is_composite
from ..lower.dimensions import composite_expr, text as dimension_text
from ..parse import ast
from ..rulebook import RuleBook, default_rulebook
from ..vectorize import VectorProgram

# What kind of expression an operand is, for bracketing. SUM: `a + b`. The products, each its own
# kind since a reader cannot tell how `A B \odot c` groups: HADAMARD `a \odot b`, MATMUL `A B`,
# OUTER `a \otimes b` (kron), and SCALED `2 x` (a scalar commutes with every product, so it
# groups either way; index notation's products of entries are SCALED too). BIGOP: `\sum_{i} x`,
# reaching as far right as a reader lets it. NEG: `-a`. FRAC: `\frac{a}{b}`. SUP: carries a
# superscript (`x^{2}`, `X^{\top}`, `A^{-1}`). SUB: carries a subscript (`t_{0}`, `I_{n}`,
# `X_{ij}`). ATOM: takes either script (`x`, `\exp(x)`).
SUM, HADAMARD, MATMUL, OUTER, SCALED, BIGOP, NEG, FRAC, SUP, SUB, ATOM = range(11)
PRODUCTS = {HADAMARD, MATMUL, OUTER, SCALED}

# Which kinds of operand are bracketed in which position: the one place that decides it.
_WRAPPED = {
    "left": {BIGOP},                         # left of + or -
    "right": {SUM, NEG, BIGOP},              # right of + or -: a + (b + c), a - (-b)
    "factor": {SUM, BIGOP},                  # left of a product; other products: `_parenthesize`
    "last": {SUM, NEG, BIGOP} | PRODUCTS,    # right of a product
    "scaled": {SUM, NEG, BIGOP},             # right of a scalar: 2 X^T t, 2 x \odot y
    "chain": {SUM, NEG, BIGOP, HADAMARD, OUTER, SCALED},  # right of a matrix product we form
    "negated": {SUM, NEG},                   # after a unary sign: -(a + b), -(-a)
    "summand": {SUM, NEG},                   # the operand of \sum_{i}
    "base": {SUM, NEG, BIGOP, FRAC, SUP} | PRODUCTS,   # takes a superscript
    "indexed": {SUM, NEG, BIGOP, FRAC, SUP, SUB} | PRODUCTS,  # takes a subscript
}

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
         "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi",
         "Psi", "Omega"}
# Functions with a LaTeX operator of their own.
OPERATORS = {"exp": r"\exp", "log": r"\log", "log2": r"\log_2", "log10": r"\log_{10}",
             "sin": r"\sin", "cos": r"\cos", "tan": r"\tan",
             "sinh": r"\sinh", "cosh": r"\cosh", "tanh": r"\tanh", "arctan": r"\arctan",
             "det": r"\det", "sigmoid": r"\sigma", "dsigmoid": r"\sigma'", "maximum": r"\max",
             "minimum": r"\min", "max": r"\max", "min": r"\min",
             "tr": r"\operatorname{tr}", "trace": r"\operatorname{tr}",
             "sech2": r"\operatorname{sech}^2", "arcsin": r"\arcsin", "arccos": r"\arccos",
             "arctanh": r"\operatorname{artanh}", "arcsinh": r"\operatorname{arsinh}",
             "lgamma": r"\log\Gamma", "digamma": r"\psi", "trigamma": r"\psi'",
             "gelu": r"\operatorname{GELU}"}
# What each output of a result is, from the call that made it (its `kind`) and the variables it
# is taken by (`wrt`), never from the output's printed name: the vectorizer renames a label
# that is a name of the user's (`dx_1` for the gradient by x of `sum(dx * x ** 2)`). Per kind:
# where the value is, then how many variables each other output is a derivative by (one per
# output: grad, jacobian, vjp; a pair per output, row by row: hessian), and whether it is a
# partial derivative of the value or (vjp's cotangents) a differential `\mathrm{d}x`. Where
# no kind says (None: a program printed on its own), the names do, as they read.
_MADE = {"grad": (False, 1, "partial"), "jacobian": (False, 1, "partial"),
         "value_and_grad": (True, 1, "partial"), "hessian": (False, 2, "partial"),
         "vjp": (False, 1, "differential")}
# An output label the vectorizer renamed: `_1`, `_2`, ... after it (ir/names.py's
# `output_labels`, and api.py's `_distinct_labels` before it).
_RENAMED = re.compile(r"_\d+$")
# The value's label (`out`), as the vectorizer may have renamed it (`out_1`, an input `out`).
_VALUE = re.compile(r"out(?:_\d+)*")
# The value's symbol: the first one no name of the user's is typeset as.
FUNCTION_SYMBOLS = ("f", "F", r"\varphi", r"\mathcal{F}")
# Index names, in the order handed out; a letter the user's names take is skipped.
INDEX_LETTERS = "ijklpqrsuvwabcgh"
# An index letter, as `fresh` hands them out (`i`, `i_{2}`): what a slice's bound is set on.
_LETTER = re.compile(r"[a-z]|i_\{\d+\}")
_RELATIONS = {"<": "<", "<=": r"\leq", ">": ">", ">=": r"\geq", "==": "=", "!=": r"\neq"}
_COMPARED = {fn: op for op, fn in ast.COMPARISONS.items()}


def format_latex(program: VectorProgram, kind: str | None = None,
                 rules: RuleBook | None = None, wrt: tuple[str, ...] | None = None) -> str:
    """An `aligned` environment: a row `name &= expression` per temporary, then per output.
    `kind` is the API call that made the program (`grad`, `hessian`, ...: what its outputs
    are), `wrt` the variables it was taken by, as the call named them, `rules` the rule book it
    was made with. Without `wrt` a derivative's variables are read off the output labels the
    call made (`dx`, renamed `dx_1`), and an output they do not tell keeps its name."""
    rows = [f"{lhs} &= {rhs}" for lhs, rhs in latex_rows(program, kind, rules, wrt)]
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


def mathtext_lines(latex: str) -> list[str]:
    """The rows of a `format_latex` block as formulas of their own, `lhs = rhs`: what a
    renderer of one line with no environments takes (matplotlib: `"$" + line + "$"`)."""
    body = latex.removeprefix("\\begin{aligned}\n").removesuffix("\n\\end{aligned}")
    return [row.replace(" &= ", " = ", 1) for row in body.split(" \\\\\n")]


def latex_rows(program: VectorProgram, kind: str | None = None,
               rules: RuleBook | None = None,
               wrt: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(left side, right side) per line of the program, temporaries first."""
    lines = _concatenations_as_pads([*program.temporaries, *program.outputs],
                                    program.declarations, rules)
    nodes = _lowered(lines, program.declarations, rules)
    outputs = [(name, getattr(nodes.get(id(e)), "shape", None))
               for name, e in lines[len(lines) - len(program.outputs):]]
    meanings = output_meanings(program, kind, wrt, outputs)
    names = typeset_names(program, meanings)
    printer = _Printer(names, nodes, rules, _user_names(program))
    printer.symbol = _function_symbol(program)
    shapes = _shapes(program)
    for name, (what, parts) in meanings.items():
        if what == "partial":  # the partial derivatives of the value, f
            printer.partials[name] = [(names.get(p) or latex_name(p), len(shapes[p]))
                                      for p in parts]
    defined = {name for name, _ in program.temporaries}
    rows = []
    for name, expr in lines:
        if isinstance(expr, ast.Name) and expr.id == name and name in defined:
            continue  # an output that other lines use, defined where it is first needed
        printer.start_line()
        rank = printer.rank(expr)
        idx = None if printer.fits(expr) or rank is None else printer.fresh(rank)
        rhs = printer.text(expr) if idx is None else printer.ix(expr, idx)[0]
        # a free index a slice bounds; on a value's line (a derivative's runs over its
        # variable's axes), one a pad widens
        widened = {} if name in printer.partials else printer.widened
        ranged = [i for i in (idx or ()) if i in printer.limits or i in widened]
        if name in printer.partials and ranged:
            # a variable's axes run as declared: a bound that is the whole axis says nothing
            shape = printer.shape(expr) or ()
            first = len(idx) - sum(rank for _, rank in printer.partials[name])
            ranged = [i for k, i in enumerate(idx) if i in ranged and not (
                first <= k < len(shape) and printer.limits[i] == printer.dim(shape[k]))]
        if ranged:
            bounds = ", ".join(printer.bounded([i], ", ", True) if i in printer.limits else
                               f"{i} < {widened[i]}" for i in ranged)
            rhs += rf" \quad \left({bounds}\right)"
        rows.append((printer.left(name, idx), rhs))
    return rows


def latex_expr(expr: ast.Expr, names: dict[str, str] | None = None,
               shapes: dict | None = None, rules: RuleBook | None = None) -> str:
    """One expression typeset; with the `shapes` of its variables (name -> dimensions) it is
    lowered for the shapes of its parts and written as `latex_rows` writes a line (in index
    notation with free indices i, j, ... where it has no matrix form); without, as it reads."""
    nodes = {}
    if shapes is not None:
        declared = {n: tuple(Dim.of(d) for d in (s if isinstance(s, tuple) else (s,)))
                    for n, s in shapes.items()}
        nodes = _lowered([("_", expr)], declared, rules)
    printer = _Printer(names, nodes, rules, set(shapes or ()))
    printer.start_line()
    if printer.fits(expr) or printer.rank(expr) is None:
        return printer.text(expr)
    return printer.ix(expr, printer.fresh(printer.rank(expr)))[0]


def _lowered(lines, declarations: dict, rules: RuleBook | None) -> dict:
    """id of every syntax node of `lines` -> its IR node, lowered as the program's lines are
    (each bound to its name for the lines after it). A line that does not lower (a rule book
    that lacks a function now) leaves it and the later lines without shapes: they are typeset
    as they read."""
    from ..lower.lower import Scope, lower_expr

    class Sized(Scope):
        # A size the program writes as one name (`ones((n + 1) // 2)`, vectorize's composite
        # dimensions) is a dimension here, as it was where the program was made.
        def dims(self) -> set[str]:
            return super().dims() | sizes

    sizes = {e.id for _, expr in lines for e in _walk(expr)
             if isinstance(e, ast.Name) and is_composite(e.id)}
    scope = Sized(dict(declarations), rules or default_rulebook())
    nodes: dict = {}
    for name, expr in lines:
        try:
            scope.bound[name] = lower_expr(expr, scope, nodes)
        except (EinderivError, ValueError, TypeError, KeyError):
            break
    return nodes


def _concatenations_as_pads(lines, declarations: dict, rules: RuleBook | None) -> list:
    """`lines` with each of the vectorizer's `concatenate(a, b, ..., axis=k)` (the parts as
    arguments, sizes along k known: vectorize/program.py's `_concatenated`) written as the sum
    of pads it is, `pad(a, (0, m)) + pad(b, (n, 0))`, which index notation writes with Iverson
    brackets; its zeros parts left out. The parts' sizes come from lowering the lines with
    numpy's tuple of parts, the language's own form (which is left where a size is not
    known): as it read, no line from there on had shapes, and it was typeset as numpy code."""
    def tupled(e):
        if _is_call(e, "concatenate") and not (len(e.args) == 1 and
                                               isinstance(e.args[0], ast.Tuple)):
            return ast.Call("concatenate", (ast.Tuple(tuple(e.args)),), e.kwargs)
        return None

    if not any(_is_call(n, "concatenate") for _, e in lines for n in _walk(e)):
        return lines
    lines = [(name, _mapped(e, tupled)) for name, e in lines]
    nodes = _lowered(lines, declarations, rules)
    # a node made from one of `lines` (a part holding a concatenation rewritten already, or
    # that sum of pads itself) -> (it, the node it was made from), whose shape it has
    origin: dict = {}

    def as_pads(e):
        if not (_is_call(e, "concatenate") and len(e.args) == 1 and
                isinstance(e.args[0], ast.Tuple)):
            return None
        axis = dict(e.kwargs).get("axis", ast.Number(0.0))
        parts = e.args[0].items
        shapes = [getattr(nodes.get(id(origin.get(id(p), (p, p))[1])), "shape", None)
                  for p in parts]
        if not isinstance(axis, ast.Number) or not parts or any(
                s is None or not 0 <= int(axis.value) < len(s) or
                not s[int(axis.value)].is_concrete for s in shapes):
            return None
        k = int(axis.value)
        sizes = [s[k].offset for s in shapes]
        total, at, terms = sum(sizes), 0, []
        for part, shape, size in zip(parts, shapes, sizes):
            if size and not _is_call(part, "zeros"):  # (an empty part, ones(0), is no term)
                widths = tuple(ast.Tuple((ast.Number(float(at)), ast.Number(float(total - at -
                                                                               size))))
                               if a == k else ast.Tuple((ast.Number(0.0), ast.Number(0.0)))
                               for a in range(len(shape)))
                terms.append(ast.Call("pad", (part, ast.Tuple(widths))))
            at += size
        return reduce(lambda a, b: ast.BinOp("+", a, b), terms) if terms else None

    return [(name, _mapped(e, as_pads, origin)) for name, e in lines]


def _mapped(e: ast.Expr, f, origin: dict | None = None) -> ast.Expr:
    """`e` with every node n replaced by f(n) where that is not None, children first; a
    node is copied (with what the vectorizer set on it) only where a child changed. With
    `origin`, each node made (a copy, or what f returned) is entered there, id -> (it, the
    node of `e` it stands for), so that f can look a changed child's original up."""
    changes = {}
    for field in dataclasses.fields(e):
        value = getattr(e, field.name)
        if isinstance(value, ast.Expr):
            new = _mapped(value, f, origin)
        elif isinstance(value, tuple):
            new = tuple(_mapped(v, f, origin) if isinstance(v, ast.Expr) else
                        (v[0], _mapped(v[1], f, origin)) if isinstance(v, tuple) and
                        len(v) == 2 and isinstance(v[1], ast.Expr) else v for v in value)
            if all(a is b for a, b in zip(new, value)):
                continue
        else:
            continue
        if new is not value:
            changes[field.name] = new
    source = e
    if changes:
        e = copy.copy(e)
        for name, value in changes.items():
            setattr(e, name, value)
        if origin is not None:
            origin[id(e)] = (e, source)
    out = f(e)
    if out is not None and origin is not None:
        origin[id(out)] = (out, source)  # (each entry holds its node: no id is reused)
    return e if out is None else out


def _walk(expr: ast.Expr):
    """Every syntax node of `expr`, arguments of calls and items of tuples included."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        for value in vars(e).values():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, tuple):  # a keyword argument: (name, value)
                    item = item[-1]
                if isinstance(item, ast.Expr):
                    stack.append(item)


def _shapes(program: VectorProgram) -> dict:
    """Every input variable -> its shape (Dims)."""
    return {**program.declarations, **{n: v.shape for n, v in program.variables.items()}}


def output_meanings(program: VectorProgram, kind: str | None = None,
                    wrt: tuple[str, ...] | None = None, shapes: list | None = None) -> dict:
    """What each output of `program` is, by name: ("value", ()) for the value f,
    ("partial", variables) for a partial derivative of it, ("differential", variables) for
    vjp's cotangent `\\mathrm{d}x`; an output left out is a name of its own (the user's
    `dx = tanh(x * y)` of `compile`, `jvp`, `hvp_x`). A result of a derivative `kind` says it by
    the output's place (`_MADE`) and `wrt`; without `wrt` (or one its outputs do not fit), the
    variables are read off the labels the call made (`_read_wrt`), `shapes` (name, shape or
    None per output) telling apart the readings of a label renamed. Where no kind says (None),
    the names do: `dx`, `dxdy` of input variables are derivatives, `out` the value."""
    names = [name for name, _ in program.outputs]
    inputs = set(_shapes(program))
    if kind not in _MADE:
        out = {}
        for name in names:
            if name not in inputs and (name == "out" or
                                       kind is not None and _VALUE.fullmatch(name)):
                out[name] = ("value", ())
            elif kind is None:
                parts = _differentials(name, inputs)
                if parts:
                    out[name] = ("partial", tuple(parts))
        return out
    with_value, order, what = _MADE[kind]
    out = {}
    if with_value and names:
        out[names[0]] = ("value", ())
    derived = names[1:] if with_value else names
    shaped = dict(shapes or ())
    taken = _by_place(wrt, len(derived), order) if wrt else None
    if taken is None:
        taken = _read_wrt(derived, order, inputs, _shapes(program), kind, shaped)
    for name, parts in zip(derived, taken):
        if parts is not None and all(p in inputs for p in parts):
            out[name] = (what, tuple(parts))
    return out


def _by_place(wrt, count: int, order: int) -> list | None:
    """The variables of each derivative output, in order, for a call taken by `wrt`: every
    distinct name (a repeated one is derived once), or each of them as given; None when the
    count of outputs fits neither."""
    for names in (list(dict.fromkeys(wrt)), list(wrt)):
        if len(names) ** order == count:
            return [tuple(p) for p in _blocks(names, order)]
    return None


def _blocks(names: list, order: int) -> list:
    return [(a,) for a in names] if order == 1 else [(a, b) for a in names for b in names]


def _read_wrt(derived: list[str], order: int, inputs: set, declared: dict, kind: str,
              shapes: dict) -> list:
    """Per derivative output, its variables as its label tells them (None where it does not):
    the call labels the derivative by w `d<w>`, a Hessian's block by a and b `d<a>d<b>`, and
    the vectorizer may have renamed a label (`dx_1`, where an input is `dx`). The variables
    taken by are read off the outputs with one variable each (a Hessian's diagonal blocks)
    and must be distinct; a label with two readings (`dx_1` of the variables x and x_1) is the
    one whose shape the output has, or else tells nothing."""
    count = len(derived)
    k = round(count ** (1 / order)) if count else 0
    if k ** order != count:
        return [None] * count
    places = [derived[i * k + i] if order == 2 else derived[i] for i in range(k)]
    wrt = []
    for name in places:
        found = {w for base in _labels(name) for w in inputs
                 if base == "d" + "d".join([w] * order)
                 and _shape_fits(kind, shapes.get(name), declared[w], order)}
        wrt.append(found.pop() if len(found) == 1 else None)
    for w in wrt:  # two places read as the same variable: neither reading holds
        if w is not None and wrt.count(w) > 1:
            wrt = [None if v == w else v for v in wrt]
    out = []
    for name, parts in zip(derived, _blocks(wrt, order)):
        label = "d" + "d".join(p or "" for p in parts)
        fits = None not in parts and label in _labels(name)
        out.append(parts if fits else None)
    return out


def _labels(name: str) -> list[str]:
    """The labels `name` may have been made from: itself, then less each `_k` renaming added."""
    out = [name]
    while _RENAMED.search(name):
        name = _RENAMED.sub("", name)
        out.append(name)
    return out


def _shape_fits(kind: str, shape, variable, order: int) -> bool:
    """Can an output of `kind` of this shape (None: unknown) be a derivative by `variable`?
    A gradient (and a vjp's cotangent) has its shape, a Jacobian ends with it, a Hessian's
    diagonal block is it twice."""
    if shape is None:
        return True
    shape, variable = tuple(shape), tuple(variable)
    if kind == "jacobian":
        return len(shape) >= len(variable) and shape[len(shape) - len(variable):] == variable
    return shape == variable * order


def _user_names(program: VectorProgram) -> set[str]:
    shapes = _shapes(program)
    return {*shapes, *(d.name for shape in shapes.values() for d in shape if d.name),
            *(n for n, _ in program.temporaries), *(n for n, _ in program.outputs)}


def _function_symbol(program: VectorProgram) -> str:
    """`f`, unless a name of the user's is typeset so."""
    taken = {latex_name(n) for n in _user_names(program) if n != "out"}
    return next((s for s in FUNCTION_SYMBOLS if s not in taken), FUNCTION_SYMBOLS[-1])


def _partial(symbol: str, parts: list[tuple[str, int]], idx) -> str:
    """`\\frac{\\partial f}{\\partial w}`, `\\frac{\\partial^2 f}{\\partial x\\,\\partial y}`;
    with indices, f's come first (the output's leading axes), then each variable's."""
    order = len(parts)
    top = r"\partial" if order == 1 else rf"\partial^{order}" if order < 10 else \
        rf"\partial^{{{order}}}"
    if idx is None:
        below = r"\,".join(rf"\partial {p}" for p, _ in parts)
        return rf"\frac{{{top} {symbol}}}{{{below}}}"
    own = len(idx) - sum(r for _, r in parts)
    if own < 0:
        return _indexed(r"\,".join(rf"\mathrm{{d}}{p}" for p, _ in parts), idx)
    below, at = [], own
    for p, r in parts:
        below.append(rf"\partial {_indexed(p, idx[at:at + r])}")
        at += r
    below = r"\,".join(below)
    return rf"\frac{{{top} {_indexed(symbol, idx[:own])}}}{{{below}}}"


def _indexed(text: str, idx) -> str:
    """`text` with the subscript `idx`: `x_{i}`, `(t_{0})_{ij}` for a name with one already."""
    if not idx:
        return text
    if re.search(r"(?<!\\)_", text) or " " in text or text.startswith("-"):
        text = f"({text})"
    return f"{text}_{{{_subscript(idx)}}}"


def _subscripted(text: str, kind: int, idx) -> str:
    """An expression's entry: `\\exp(x)_{i}`, `\\left(X w\\right)_{i}`."""
    if not idx:
        return text
    if kind != ATOM:  # a function's value, \exp(x)_{i}, takes its subscript as it is
        text = rf"\left({text}\right)"
    return f"{text}_{{{_subscript(idx)}}}"


def _subscript(idx) -> str:
    """`ij` for single letters and digits, `i+1,j` otherwise."""
    if all(len(i) == 1 for i in idx):
        return "".join(idx)
    return ",".join(idx)


def typeset_names(program: VectorProgram, meanings: dict | None = None) -> dict[str, str]:
    """Each name of the program -> how it is typeset. `latex_name` folds some names together
    (`W1` and `W_1` are both `W_{1}`, `t0` and `t_0` both `t_{0}`), so a name whose form is
    taken already is typeset `\\mathit{t\\_0}` instead, which no other name gets: the user's
    names (variables, dimensions) come first, ours give way. An output is typeset as what it
    is (`meanings`, by default as `output_meanings` reads the names): the value is `f`, a
    derivative `\\mathrm{d}w`, any other output its name."""
    if meanings is None:
        meanings = output_meanings(program)
    shapes = _shapes(program)
    order = [*shapes, *(d.name for shape in shapes.values() for d in shape if d.name),
             *(n for n, _ in program.temporaries)]
    forms = {name: latex_name(name) for name in order}
    symbol = _function_symbol(program)
    for name, _ in program.outputs:
        what, parts = meanings.get(name, (None, ()))
        forms[name] = (symbol if what == "value" else
                       r"\,".join(rf"\mathrm{{d}}{latex_name(p)}" for p in parts) if parts else
                       latex_name(name))
    chosen: dict[str, str] = {}
    used: set[str] = set()
    for name in [*order, *(n for n, _ in program.outputs)]:
        if name in chosen:
            continue
        form = forms[name]
        if form in used:
            form = rf"\mathit{{{_escape(name)}}}"
        chosen[name] = form
        used.add(form)
    return chosen


def latex_name(name: str) -> str:
    """`x` -> `x`, `W1` -> `W_{1}`, `x_prev` -> `x_{\\mathrm{prev}}`, `alpha` -> `\\alpha`,
    `hidden` -> `\\mathit{hidden}`."""
    match = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    if match:
        return f"{_base(match[1])}_{{{match[2]}}}"
    base, underscore, rest = name.partition("_")
    if base and underscore and rest:
        sub = rest if rest.isdigit() else (latex_name(rest) if rest in GREEK or len(rest) == 1
                                           else rf"\mathrm{{{_escape(rest)}}}")
        return f"{_base(base)}_{{{sub}}}"
    return _base(name)


def _differentials(name: str, inputs: set, count: int | None = None) -> list[str] | None:
    """`dxdy` -> [x, y] when x and y are inputs; None when `name` is not such a chain (of
    `count` names, when given: `dxdxddout` of a Hessian by xdx and dout is [xdx, dout])."""
    if not name.startswith("d") or count == 0:
        return None
    rest = name[1:]
    if rest in inputs and count in (None, 1):
        return [rest]
    for cut in range(1, len(rest)):
        if rest[cut] == "d" and rest[:cut] in inputs:
            tail = _differentials(rest[cut:], inputs, None if count is None else count - 1)
            if tail:
                return [rest[:cut], *tail]
    return None


def _base(name: str) -> str:
    if name in GREEK:
        return "\\" + name
    if len(name) == 1:
        return name
    return rf"\mathit{{{_escape(name)}}}"


def _escape(text: str) -> str:
    return re.sub(r"([_#$%&{}])", r"\\\1", text)


def _number(v: float) -> tuple[str, int]:
    if v != v:
        return r"\mathrm{NaN}", ATOM
    if v in (float("inf"), float("-inf")):
        return (r"\infty", ATOM) if v > 0 else (r"-\infty", NEG)
    if abs(v) < 2**53 and v == int(v):  # sizes print as integers, as in the formula
        text = str(int(v))
    else:
        text = repr(v)
    sign = NEG if text.startswith("-") else ATOM
    if "e" in text:
        mantissa, exponent = text.split("e")
        power = f"10^{{{int(exponent)}}}"
        if mantissa.lstrip("-") == "1":
            return ("-" if mantissa.startswith("-") else "") + power, (NEG if sign == NEG else SUP)
        return rf"{mantissa} \times {power}", SCALED
    return text, sign


def _is_number(e: ast.Expr) -> bool:
    if isinstance(e, ast.UnaryOp):
        return _is_number(e.operand)
    return isinstance(e, ast.Number)


def _number_value(e: ast.Expr) -> float | None:
    if isinstance(e, ast.UnaryOp) and e.op in "+-":
        v = _number_value(e.operand)
        return None if v is None else (-v if e.op == "-" else v)
    return e.value if isinstance(e, ast.Number) else None


def _full_slice(item) -> bool:
    return isinstance(item, ast.Slice) and item.lo is None and item.hi is None and \
        item.step is None


def _stops_short(e: ast.Expr) -> bool:
    """Does `e` hold a slice that stops short (`x[:-1]`), whose index would imply the range
    of what it slices?"""
    return any(isinstance(n, ast.Index) and
               any(isinstance(i, ast.Slice) and i.hi is not None for i in n.items)
               for n in _walk(e))


def _widened(e: ast.Expr) -> bool:
    """Does `e` hold a pad with zeros after (a (before, after) pair whose after is not 0),
    whose bracket `[i < n]` bounds no letter?"""
    return any(_is_call(n, "pad") and len(n.args) == 2 and any(
        isinstance(p, ast.Tuple) and len(p.items) == 2 and not any(
            isinstance(q, ast.Tuple) for q in p.items) and _number_value(p.items[1]) != 0
        for p in (n.args[1], *getattr(n.args[1], "items", ()))) for n in _walk(e))


def _is_call(e, *names) -> bool:
    return isinstance(e, ast.Call) and e.func in names


class _Printer:
    """Typesets expressions; `nodes` (id of a syntax node -> its lowered IR) gives shapes, and
    a node without one is typeset as it reads, in matrix notation."""

    def __init__(self, names: dict[str, str] | None = None, nodes: dict | None = None,
                 rules: RuleBook | None = None, taken: set[str] = frozenset()):
        self.names = names or {}  # name -> its typeset form, where `latex_name` is not enough
        self.nodes = nodes or {}
        self.rules = rules or default_rulebook()
        self.letters = [c for c in INDEX_LETTERS if c not in taken]
        self.symbol = FUNCTION_SYMBOLS[0]  # the value's
        self.partials: dict[str, list] = {}  # output -> (variable typeset, rank) per d
        self.used = 0
        # index -> its bound, where a slice that stops short (`x[:3]`, `X[:, :-1]`) is taken at
        # it: index notation implies an index's range from what it indexes (j runs over x in
        # `x_{j}`), so the sum that binds it says `\sum_{j < 3}`, and a line's free index
        # `\quad \left(j < 3\right)`.
        self.limits: dict[str, str] = {}
        # index -> the size a pad with zeros after widens it to (`pad(x, (0, 2))` at i runs to
        # n + 2, which nothing it indexes implies): a value's line says so after it
        self.widened: dict[str, str] = {}
        self._fits: dict[int, bool] = {}
        self._divides: dict[int, bool] = {}

    # -- shapes and index names ----------------------------------------------------------------

    def shape(self, e: ast.Expr) -> tuple | None:
        node = self.nodes.get(id(e))
        return None if node is None else node.shape

    def rank(self, e: ast.Expr) -> int | None:
        shape = self.shape(e)
        return None if shape is None else len(shape)

    def start_line(self) -> None:
        self.used = 0  # each line hands out i, j, ... afresh
        self.limits = {}
        self.widened = {}

    def fresh(self, k: int) -> list[str]:
        out = []
        for _ in range(k):
            n, self.used = self.used, self.used + 1
            out.append(self.letters[n] if n < len(self.letters) else
                       f"i_{{{n - len(self.letters) + 1}}}")
            self.limits.pop(out[-1], None)  # a new binding: no bound of an earlier one
            self.widened.pop(out[-1], None)
        return out

    def dim(self, d: Dim) -> str:
        """A dimension as a size: `n`, `n - 1`, `m \\cdot n`, `3`."""
        if d.is_concrete:
            return str(d.offset)
        if d.offset == 0 and not is_composite(d.name):
            return self.names.get(d.name) or latex_name(d.name)
        return self.size(composite_expr(dimension_text(d)))

    # -- which lines have a matrix form ---------------------------------------------------------

    def fits(self, e: ast.Expr) -> bool:
        """Can `e` be written in matrix notation (every part a scalar, vector or matrix, each
        construct one with a matrix form)? True where the shapes are unknown."""
        key = id(e)
        if key not in self._fits:
            self._fits[key] = self._fit(e)
        return self._fits[key]

    def _fit(self, e: ast.Expr) -> bool:
        shape = self.shape(e)
        if shape is None:
            return True
        if len(shape) > 2:
            return False
        if isinstance(e, ast.Index):
            return self._index_form(e) is not None and self.fits(e.operand)
        if isinstance(e, ast.Call):
            if e.func in ("einsum", "pad", "dilate"):
                return False
            if e.func in ("sum", "mean"):
                axes = self.axes(e)
                arg_rank = self.rank(e.args[0])
                if axes is None or arg_rank is None or len(axes) == arg_rank:
                    return True  # \sum_{i} of the argument in index notation
                return arg_rank == 2 and len(axes) == 1 and self.fits(e.args[0])
            if self._axis_note(e) and (self.rank(e.args[0]) or 0) >= 2:
                return False
        return self._children_fit(e)

    def _children_fit(self, e: ast.Expr) -> bool:
        return all(self.fits(c) for c in e.children())

    def _index_form(self, e: ast.Index) -> str | None:
        """Which matrix form an indexing has: "broadcast" (`v[:, None]`, axes of size 1
        added), "entry" (`X[1, 0]`, a scalar), "unit" (`eye(n)[k]`, e_k); None for a slice."""
        items = e.items
        rank = self.rank(e)
        if all(isinstance(i, ast.NoneLit) or _full_slice(i) for i in items):
            return "broadcast"
        if not any(isinstance(i, (ast.Slice, ast.NoneLit)) for i in items) and rank == 0:
            return "entry"
        if _is_call(e.operand, "eye") and len(e.operand.args) == 1 and len(items) == 1 and \
                not isinstance(items[0], (ast.Slice, ast.NoneLit)):
            return "unit"
        return None

    # -- matrix notation ------------------------------------------------------------------------

    def text(self, e: ast.Expr) -> str:
        return self.expr(e)[0]

    def operand(self, e: ast.Expr, position: str, product: int | None = None) -> str:
        text, kind = self.expr(e)
        return _parenthesize(text, kind, position, product)

    def group(self, e: ast.Expr, text: str | None = None) -> str:
        """An argument in brackets: plain for a name or a number, sized otherwise."""
        text = self.text(e) if text is None else text
        if isinstance(e, (ast.Name, ast.Number)):
            return f"({text})"
        return rf"\left({text}\right)"

    def expr(self, e: ast.Expr) -> tuple[str, int]:
        """`e` in matrix notation; a part without one (an argument of a function that has
        one, a slice inside an inverse) is the array of its entries: `\\left[x_{i+1}\\right]_{i}`."""
        if not self.fits(e) and not isinstance(e, ast.Name):
            start = self.used
            idx = self.fresh(self.rank(e))
            text, kind = self.ix(e, idx)
            self.used = start
            return (rf"\left[{text}\right]_{{{self.binding(idx, self.shape(e))}}}", SUB) \
                if idx else (text, kind)
        return self.matrix(e)

    def matrix(self, e: ast.Expr) -> tuple[str, int]:
        if isinstance(e, ast.Number):
            return _number(e.value)
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.String):
            return rf"\text{{``{_escape(e.value)}''}}", ATOM
        if isinstance(e, ast.NoneLit):
            return r"\mathrm{None}", ATOM
        if isinstance(e, ast.UnaryOp):
            if e.op == "+":
                return self.expr(e.operand)
            return _negated(*self.expr(e.operand))
        if isinstance(e, ast.BinOp):
            return self.binary(e)
        if isinstance(e, ast.Attribute):
            if self.rank(e) is not None and self.rank(e) <= 1:
                return self.expr(e.operand)  # a vector's transpose is itself (numpy's .T)
            if e.attr in ("T", "mT"):
                return self.transposed(e.operand)
            return self.operand(e.operand, "indexed") + rf".\mathrm{{{_escape(e.attr)}}}", ATOM
        if isinstance(e, ast.Index):
            return self.index(e)
        if isinstance(e, ast.Tuple):
            return rf"\left({', '.join(self.text(i) for i in e.items)}\right)", ATOM
        if isinstance(e, ast.Call):
            return self.call(e)
        raise TypeError(f"cannot typeset {type(e).__name__}")

    def left(self, name: str, idx) -> str:
        """A line's left side: the name (`f` for the value), a derivative as one."""
        if name in self.partials:
            return _partial(self.symbol, self.partials[name], idx)
        return _indexed(self.names.get(name) or latex_name(name), idx)

    def name(self, e: ast.Name) -> tuple[str, int]:
        if e.id in self.partials:  # an output used by another: the derivative it is
            return self.left(e.id, None), FRAC
        if is_composite(e.id):  # a size `m * n`, as its expression
            return self.size(composite_expr(e.id)), ATOM
        name = self.names.get(e.id) or latex_name(e.id)
        return name, (SUB if re.search(r"(?<!\\)_", name) else ATOM)

    def size(self, e: ast.Expr) -> str:
        """A composite size (`(n + 1) // 2`, `m * n`): products of sizes with a dot,
        quotients rounded down."""
        if isinstance(e, ast.BinOp) and e.op == "//":
            above, below = self.size(e.left), self.size(e.right)
            return rf"\left\lfloor \frac{{{above}}}{{{below}}} \right\rfloor"
        if isinstance(e, ast.BinOp) and e.op == "*":
            factors = [self.size(f) if not (isinstance(f, ast.BinOp) and f.op in "+-")
                       else rf"\left({self.size(f)}\right)" for f in (e.left, e.right)]
            return r" \cdot ".join(factors)
        if isinstance(e, ast.BinOp) and e.op in "+-":
            return f"{self.size(e.left)} {e.op} {self.size(e.right)}"
        if isinstance(e, ast.Name):
            return self.name(e)[0]
        return self.text(e)

    def transposed(self, e: ast.Expr) -> tuple[str, int]:
        """e^T: a vector's is a row, (A B)^T = B^T A^T, a transpose's the operand."""
        rank = self.rank(e)
        if rank == 0:
            return self.expr(e)
        if isinstance(e, ast.Attribute) and e.attr in ("T", "mT"):
            return self.expr(e.operand) if rank == 2 else self.transposed(e.operand)
        if isinstance(e, ast.UnaryOp) and e.op == "-":
            return _negated(*self.transposed(e.operand))
        if isinstance(e, ast.Index) and rank == 2 and self._index_form(e) == "broadcast" \
                and self.rank(e.operand) == 1:
            column = self.shape(e)[1] is ONE
            return self.transposed(e.operand) if column else self.expr(e.operand)
        if isinstance(e, ast.BinOp) and e.op == "@" and rank is not None:
            ra, rb = self.rank(e.left), self.rank(e.right)
            if ra == 2 and rb in (1, 2):  # (A B)^T = B^T A^T, (A x)^T = x^T A^T
                return self.juxtapose(self.transposed(e.right), self.transposed(e.left))
            if ra == 1 and rb == 2:  # (x @ B)^T = x^T B
                return self.juxtapose(self.transposed(e.left), self.expr(e.right))
        if isinstance(e, ast.BinOp) and e.op == "*" and self._scalar(e.left) \
                and not self._scalar(e.right):
            return self.scale(self.expr(e.left), self.transposed(e.right))
        if _is_call(e, "sum") and rank == 1 and self.rank(e.args[0]) == 2 and \
                self.axes(e) is not None and len(self.axes(e)) == 1:
            (axis,) = self.axes(e)
            arg = self.expr(e.args[0]) if axis == 0 else self.transposed(e.args[0])
            ones = self.ones(self.shape(e.args[0])[axis], transposed=True)
            return self.juxtapose((ones, SUP), arg)
        if _is_call(e, "outer") and len(e.args) == 2:
            return self.juxtapose(self.expr(e.args[1]), self.transposed(e.args[0]))
        if _is_call(e, "eye", "diag") and rank == 2 and len(e.args) == 1:
            return self.expr(e)
        text, kind = self.expr(e)
        return _parenthesize(text, kind, "base") + r"^{\top}", SUP

    def juxtapose(self, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
        """A matrix product we form (`\\mathbf{1}_{n} v^{\\top}`): products associate."""
        right = _parenthesize(*right, "chain")
        text = _parenthesize(*left, "factor", MATMUL) + \
            (r" \cdot " if right[:1].isdigit() else " ") + right
        return text, MATMUL

    def scale(self, scalar: tuple[str, int], other: tuple[str, int]) -> tuple[str, int]:
        """`scalar other`: a scalar commutes with every product, so only sums and signs are
        bracketed on its right; a dot keeps two numbers apart."""
        left = _parenthesize(*scalar, "factor", SCALED)
        right = _parenthesize(*other, "scaled")
        text = left + (r" \cdot " if right[:1].isdigit() else " ") + right
        return text, SCALED

    def ones(self, d: Dim, transposed: bool = False) -> str:
        return rf"\mathbf{{1}}_{{{self.dim(d)}}}" + (r"^{\top}" if transposed else "")

    def _scalar(self, e: ast.Expr) -> bool:
        return _is_number(e) or self.rank(e) == 0

    def broadcast_kind(self, e: ast.Expr, shape) -> str | None:
        """How `e` stretches to `shape` (rank <= 2): "same", "scalar", "row" (one row repeated,
        numpy's alignment of a vector with a matrix) or "column"; None if unknown."""
        own = self.shape(e)
        if own is None or shape is None:
            return None
        own = (ONE,) * (len(shape) - len(own)) + tuple(own)
        if own == tuple(shape):
            return "same"
        if all(d is ONE for d in own):
            return "scalar"
        if len(shape) == 2 and own[0] is ONE and own[1] == shape[1]:
            return "row"
        if len(shape) == 2 and own[1] is ONE and own[0] == shape[0]:
            return "column"
        return None

    def stretched(self, e: ast.Expr, parent: ast.Expr) -> tuple[str, int]:
        """`e` as an operand of the elementwise `parent`, its broadcast written out: a row
        repeated is `\\mathbf{1}_{m} v^{\\top}`, a column `v \\mathbf{1}_{n}^{\\top}`."""
        shape = self.shape(parent)
        how = self.broadcast_kind(e, shape)
        if how not in ("row", "column"):
            return self.expr(e)
        if isinstance(e, ast.BinOp) and e.op == "*" and self._scalar(e.left):
            return self.scale(self.expr(e.left), self.stretched(e.right, parent))
        if isinstance(e, ast.UnaryOp) and e.op == "-":
            return _negated(*self.stretched(e.operand, parent))
        if how == "row":
            row = self.transposed(e) if self.rank(e) == 1 else self.expr(e)
            return self.juxtapose((self.ones(shape[0]), SUB), row)
        return self.juxtapose(self.expr(e), (self.ones(shape[1], transposed=True), SUP))

    def vector(self, e: ast.Expr) -> ast.Expr | None:
        """The vector that a row or column operand repeats (`v` of `v[:, None]`), or None."""
        if self.rank(e) == 1:
            return e
        if isinstance(e, ast.Index) and self._index_form(e) == "broadcast" and \
                self.rank(e.operand) == 1:
            return e.operand
        return None

    def binary(self, e: ast.BinOp) -> tuple[str, int]:
        op = e.op
        if op in ast.COMPARISONS:  # a mask: Iverson's bracket, 1 where it holds
            return (rf"\left[{self.stretched(e.left, e)[0]} {_RELATIONS[op]} "
                    rf"{self.stretched(e.right, e)[0]}\right]"), ATOM
        if op == "//":
            return (rf"\left\lfloor \frac{{{self.stretched(e.left, e)[0]}}}"
                    rf"{{{self.stretched(e.right, e)[0]}}} \right\rfloor"), ATOM
        if op in "+-":
            left = _parenthesize(*self.stretched(e.left, e), "left")
            right = _parenthesize(*self.stretched(e.right, e), "right")
            return f"{left} {op} {right}", SUM
        if op == "**":
            return self.power(self.stretched(e.left, e), self.text(e.right),
                              self.rank(e) == 2), SUP
        if op == "@":
            return self.matmul(e.left, e.right)
        if op == "/":
            return self.divide(e)
        return self.product(e)

    def matmul(self, a: ast.Expr, b: ast.Expr) -> tuple[str, int]:
        ra, rb = self.rank(a), self.rank(b)
        if ra == 1 and rb == 1:  # x^T y
            return self.juxtapose(self.transposed(a), self.expr(b))
        if ra == 1 and rb == 2:  # x @ B is B^T x: vectors are columns
            return self.juxtapose(self.transposed(b), self.expr(a))
        return self.juxtapose(self.expr(a), self.expr(b))

    def product(self, e: ast.BinOp) -> tuple[str, int]:
        """`a * b`: a scalar multiple (`2 x`, the scalar first), the elementwise product
        `a \\odot b`, or, where one side is broadcast, the matrix product it is: a column
        times a matrix is `\\operatorname{diag}(v) X`, a row `X \\operatorname{diag}(v)`, a
        column times a row `v w^{\\top}`."""
        if self._has_division(e):
            return self.fraction(e, None)
        a, b = e.left, e.right
        if self._scalar(a) or self._scalar(b):
            if self._scalar(b) and not self._scalar(a):
                a, b = b, a
            if self._scalar(b) and not _is_number(a) and _is_number(b):
                a, b = b, a
            return self.scale(self.expr(a), self.expr(b))
        shape = self.shape(e)
        for x, y in ((a, b), (b, a)):  # ones(shape) * y is y stretched
            if _is_call(x, "ones") and self.shape(x) == shape:
                return self.stretched(y, e)
        how = (self.broadcast_kind(a, shape), self.broadcast_kind(b, shape))
        if set(how) == {"column", "same"} or set(how) == {"row", "same"}:
            (stretched, full) = (a, b) if how[1] == "same" else (b, a)
            v = self.vector(stretched)
            if v is not None:
                diag = (r"\operatorname{diag}" + self.group(v), ATOM)
                if "column" in how:
                    return self.juxtapose(diag, self.expr(full))
                return self.juxtapose(self.expr(full), diag)
        if how in (("column", "row"), ("row", "column")):
            column, row = (a, b) if how[0] == "column" else (b, a)
            v = self.vector(row)
            row_text = self.transposed(v) if v is not None else self.expr(row)
            return self.juxtapose(self.expr(column), row_text)
        left = _parenthesize(*self.stretched(a, e), "factor", HADAMARD)
        right = _parenthesize(*self.stretched(b, e), "last")
        return rf"{left} \odot {right}", HADAMARD

    def divide(self, e: ast.BinOp) -> tuple[str, int]:
        shape = self.shape(e)
        how = (self.broadcast_kind(e.left, shape), self.broadcast_kind(e.right, shape))
        if how in (("same", "column"), ("same", "row")) and self.vector(e.right) is not None:
            inverse = (r"\operatorname{diag}" + self.group(self.vector(e.right)) + "^{-1}", SUP)
            if how[1] == "column":
                return self.juxtapose(inverse, self.expr(e.left))
            return self.juxtapose(self.expr(e.left), inverse)
        return self.fraction(e, None)

    def _has_division(self, e: ast.Expr) -> bool:
        """Is there a quotient in the products and signs at the top of `e` (memoized: a chain
        of products asks at every level)?"""
        key = id(e)
        if key not in self._divides:
            found = False
            if isinstance(e, ast.UnaryOp):
                found = self._has_division(e.operand)
            elif isinstance(e, ast.BinOp) and e.op in "*/":
                found = e.op == "/" or self._has_division(e.left) or \
                    self._has_division(e.right)
            self._divides[key] = found
        return self._divides[key]

    # -- fractions ----------------------------------------------------------------------------

    def fraction(self, e: ast.Expr, idx) -> tuple[str, int]:
        """A tree of products, quotients and signs as one fraction: a sign in front, the
        factors above and below the line, equal factors as one power (`-1 / x / x` is
        `-\\frac{1}{x^{2}}`, a mean's count joins the sizes below). In matrix notation the
        tree goes down through the operands that have its shape or are scalars; another is a
        factor, its broadcast written out."""
        state = {"sign": 1, True: [], False: []}
        self._collect(e, idx, True, state, e, True)
        text, kind = self._factor_product(state[True])
        if state[False]:
            text = rf"\frac{{{text}}}{{{self._factor_product(state[False])[0]}}}"
            kind = FRAC
        return _negated(text, kind) if state["sign"] < 0 else (text, kind)

    def _collect(self, e, idx, above: bool, state: dict, root, top: bool = False) -> None:
        """Puts the operands of products (`*`), quotients and signs above or below the line
        (`above`) as factors: (key, exponent, typeset, is a tensor), where equal keys are one
        factor (one IR node at the same indices, one size), and whether it is a matrix. A
        number's sign goes to the
        fraction's, and the number is a factor unless it is 1."""
        if isinstance(e, ast.UnaryOp) and e.op in "+-":
            if e.op == "-":
                state["sign"] = -state["sign"]
            self._collect(e.operand, idx, above, state, root)
            return
        value = _number_value(e)
        if value is not None:
            if value < 0:
                state["sign"] = -state["sign"]
            if abs(value) != 1:
                _put(state[above], (object(), 1.0, lambda: _number(abs(value)), False, False))
            return
        if isinstance(e, ast.BinOp) and e.op in "*/" and (top or self._flat(e, root, idx)):
            self._collect(e.left, self.aligned(e.left, e, idx), above, state, root)
            self._collect(e.right, self.aligned(e.right, e, idx), above == (e.op == "*"), state,
                          root)
            return
        node = self.nodes.get(id(e))
        if _is_call(e, "size") and hasattr(node, "dim"):
            _put(state[above], (node.dim, 1.0, lambda: (self.dim(node.dim), ATOM), False,
                                False))
            return
        tensor = idx is None and bool(self.rank(e))
        at = tuple(idx or ())
        if _is_call(e, "mean") and e.args and self.shape(e.args[0]) is not None:
            shape, axes = self.shape(e.args[0]), self.axes(e)
            for a in range(len(shape)) if axes is None else axes:
                _put(state[not above], (shape[a], 1.0, lambda d=shape[a]: (self.dim(d), ATOM),
                                        False, False))
            _put(state[above], (("sum", id(node), at), 1.0,
                                lambda: self.reduction(e, idx, whole=False), tensor, False))
            return
        base, exponent = e, 1.0
        if isinstance(e, ast.BinOp) and e.op == "**" and _number_value(e.right) is not None:
            base, exponent = e.left, _number_value(e.right)
        base_node = self.nodes.get(id(base))
        key = (id(base_node) if base_node is not None else id(base), at)
        typeset = (lambda: self.stretched(base, root)) if idx is None else \
            (lambda: self.ix(base, idx))
        _put(state[above], (key, exponent, typeset, tensor, tensor and self.rank(e) == 2))

    def _flat(self, e: ast.BinOp, root, idx) -> bool:
        """Do `e`'s operands join the fraction of `root`: in index notation always (every one
        is a number), in matrix notation where `e` and both operands have root's shape or are
        scalars."""
        shape = self.shape(root)
        if idx is not None or shape is None:
            return True
        return all(self.shape(x) in (shape, ()) for x in (e, e.left, e.right))

    def _factor_product(self, factors: list) -> tuple[str, int]:
        """The factors multiplied: scalars juxtaposed (numbers first), `\\odot` between the
        tensors of matrix notation."""
        scalars, tensors = [], []
        for _, exponent, typeset, tensor, matrix in factors:
            text, kind = typeset()
            if exponent != 1.0:
                text, kind = self.power((text, kind), _number(exponent)[0], matrix), SUP
            (tensors if tensor else scalars).append((text, kind))
        if not tensors:
            return self.juxtaposed(scalars)
        if len(tensors) == 1 and not scalars:
            return tensors[0]
        joined = r" \odot ".join(_parenthesize(t, k, "factor" if i == 0 else "last", HADAMARD)
                                 for i, (t, k) in enumerate(tensors))
        joined_kind = HADAMARD if len(tensors) > 1 else tensors[0][1]
        if not scalars:
            return joined, joined_kind
        return self.scale(self.juxtaposed(scalars), (joined, joined_kind))

    def power(self, base: tuple[str, int], exponent: str, elementwise: bool = False) -> str:
        """`x^{2}`; a matrix's elementwise power is the Hadamard power `X^{\\circ 2}` (X^2 is
        X X)."""
        ring = r"\circ " if elementwise else ""
        return f"{_parenthesize(*base, 'base')}^{{{ring}{exponent}}}"

    # -- indexing and calls in matrix notation --------------------------------------------------

    def index(self, e: ast.Index) -> tuple[str, int]:
        form = self._index_form(e) if self.shape(e) is not None else None
        if form == "broadcast":
            rank, own = self.rank(e), self.rank(e.operand)
            if own == 1 and rank == 2 and self.shape(e)[0] is ONE:
                return self.transposed(e.operand)  # v[None, :], a row
            return self.expr(e.operand)
        if form == "unit":
            return rf"\mathbf{{e}}_{{{self.text(e.items[0])}}}", SUB
        if form == "entry":
            shape = self.shape(e.operand)
            items = ",".join(self.position(i, d) for i, d in zip(e.items, shape))
            return f"{self.operand(e.operand, 'indexed')}_{{{items}}}", SUB
        items = ",".join(self.item(i) for i in e.items)  # shapes unknown: as it reads
        return f"{self.operand(e.operand, 'indexed')}_{{{items}}}", SUB

    def item(self, item: ast.Expr) -> str:
        if isinstance(item, ast.Slice):
            lo = "" if item.lo is None else self.text(item.lo)
            hi = "" if item.hi is None else self.text(item.hi)
            step = "" if item.step is None else f"{{:}}{self.text(item.step)}"
            return f"{lo}{{:}}{hi}{step}"
        return self.text(item)

    def position(self, item: ast.Expr, d: Dim) -> str:
        """An integer index: negative ones count from the end (`x[-1]` is x_{n-1})."""
        value = _number_value(item)
        if value is not None and value < 0 and value == int(value):
            return _compact(self.dim(d + int(value)))
        return self.text(item)

    def axes(self, call: ast.Call) -> tuple[int, ...] | None:
        """The axes a reduction or axis function works along, from its axis keyword (or a
        second positional argument); None when it names none (its default)."""
        keyword = "axis"
        f = self.rules.get(call.func)
        if f is not None and f.axis:
            keyword = f.axis
        given = next((v for k, v in call.kwargs if k == keyword), None)
        if given is None and call.func in ("sum", "mean") and len(call.args) > 1:
            given = call.args[1]
        if given is None:
            return None
        rank = self.rank(call.args[0])
        items = given.items if isinstance(given, ast.Tuple) else (given,)
        values = [_number_value(i) for i in items]
        if rank is None or any(v is None for v in values):
            return None
        return tuple(sorted(int(v) % rank if rank else 0 for v in values))

    def _axis_note(self, call: ast.Call) -> bool:
        return any(k in ("axis", getattr(self.rules.get(call.func), "axis", None))
                   for k, _ in call.kwargs)

    def elementwise(self, call: ast.Call) -> bool:
        f = self.rules.get(call.func)
        return f is not None and f.kind in ("elementwise", "def")

    def call(self, e: ast.Call) -> tuple[str, int]:
        f, args = e.func, e.args
        if f in ("sum", "mean") and args and self.shape(args[0]) is not None:
            return self.reduction(e)
        if f == "einsum" and args and isinstance(args[0], ast.String):
            return self.einsum(e, None)  # only where shapes are unknown: the spec's letters
        if f in ("outer", "dot", "kron") and len(args) == 2 and not e.kwargs and \
                self.shape(args[0]) is not None:
            a, b = args
            if f == "outer":
                return self.juxtapose(self.expr(a), self.transposed(b))
            if f == "kron":
                return (f"{self.operand(a, 'factor', OUTER)} \\otimes "
                        f"{self.operand(b, 'last')}"), OUTER
            if self._scalar(b) and not self._scalar(a):
                a, b = b, a
            if self._scalar(a):
                return self.scale(self.expr(a), self.expr(b))
            return self.matmul(a, b)
        note = ""
        if e.kwargs:
            axes = self.axes(e) if self._axis_note(e) else None
            # (a vector's only axis needs no note; a stack's axis is of its result)
            if not (axes is not None and self.rank(args[0]) == 1 and f != "stack"):
                note = ",".join(rf"\text{{{_escape(k)}}}={self.text(v)}" for k, v in e.kwargs)
        stretched = self.elementwise(e) and self.shape(e) is not None
        texts = [self.stretched(a, e) if stretched else self.expr(a) for a in args]
        special = None if note else self.special(f, args, texts, self.rank(e) == 2)
        if special is not None:
            return special
        return self.applied(f, args, texts, note)

    def applied(self, f: str, args, texts, note: str = "") -> tuple[str, int]:
        """`\\exp(x)`, `\\operatorname{softmax}\\left(X W\\right)`, `\\max\\left(x, 0\\right)`."""
        name = OPERATORS.get(f, rf"\operatorname{{{_escape(f)}}}")
        if note:
            name += f"_{{{note}}}"
        if len(args) == 1:
            return name + self.group(args[0], texts[0][0]), ATOM
        return rf"{name}\left({', '.join(t for t, _ in texts)}\right)", ATOM

    def reduction(self, e: ast.Call, idx=None, whole: bool = True) -> tuple[str, int]:
        """`sum` and `mean` (`whole`: with its 1/N; a fraction puts N below its line). Over
        every entry `\\sum_{i} x_{i}`, the argument in index notation (at `idx`, the kept
        axes' indices, in index notation); in matrix notation a sum over one axis of a matrix
        is a product with ones, `X^{\\top} \\mathbf{1}_{n}` (its rows added, a column) or
        `X \\mathbf{1}_{d}`."""
        arg = e.args[0]
        shape = self.shape(arg)
        axes = self.axes(e)
        axes = tuple(range(len(shape))) if axes is None else axes
        start = self.used
        if idx is None and len(axes) == 1 and len(shape) == 2:
            (axis,) = axes
            text, kind = self.juxtapose(self.transposed(arg) if axis == 0 else self.expr(arg),
                                        (self.ones(shape[axis]), SUB))
        elif not axes:
            text, kind = self.expr(arg) if idx is None else self.ix(arg, idx)
        else:
            summed = self.fresh(len(axes))
            kept, bound = iter(idx or ()), iter(summed)
            inner = [next(bound) if a in axes else next(kept) for a in range(len(shape))]
            text, kind = self.sigma(summed, self.ix(arg, inner)), BIGOP
        self.used = start  # the summed indices are bound: the next sum may take them again
        if whole and e.func == "mean" and axes:
            count = self.count([shape[a] for a in axes])
            return self.scale((rf"\frac{{1}}{{{count}}}", FRAC), (text, kind))
        return text, kind

    def count(self, dims) -> str:
        """The number of entries of `dims`: `n d`, `n^{2}`."""
        powers: dict = {}
        for d in dims:
            powers[d] = powers.get(d, 0) + 1
        return " ".join(self.dim(d) + (f"^{{{k}}}" if k > 1 else "") for d, k in powers.items())

    def sigma(self, idx, summand: tuple[str, int]) -> str:
        if len(idx) > 1 and self._mixed(idx):
            # `\sum_{i,j < 3}` reads as i and j below 3: a sum per index
            return " ".join(rf"\sum_{{{self.bounded([i])}}}" for i in idx) + " " + \
                _parenthesize(*summand, 'summand')
        return rf"\sum_{{{self.bounded(idx)}}} {_parenthesize(*summand, 'summand')}"

    def special(self, f: str, args, texts, matrix: bool = False) -> tuple[str, int] | None:
        """Functions with a notation of their own, or None for the plain `\\operatorname`
        form; `texts` are the arguments typeset (text, kind), `matrix` says whether the result
        is a matrix (in matrix notation: its square is a Hadamard power)."""
        n = len(args)
        one = texts[0] if texts else None
        if f in _COMPARED and n == 2:
            return rf"\left[{texts[0][0]} {_RELATIONS[_COMPARED[f]]} {texts[1][0]}\right]", ATOM
        if f == "floor_divide" and n == 2:
            return rf"\left\lfloor \frac{{{texts[0][0]}}}{{{texts[1][0]}}} \right\rfloor", ATOM
        if f == "eye" and n == 1:
            return f"I_{{{self.size(args[0])}}}", SUB
        if f == "eye" and n == 2:
            return rf"I_{{{self.size(args[0])} \times {self.size(args[1])}}}", SUB
        if f in ("ones", "zeros") and n >= 1:
            dims = r" \times ".join(self.size(a) for a in args)
            return rf"\mathbf{{{1 if f == 'ones' else 0}}}_{{{dims}}}", SUB
        if f == "size" and n == 1:
            return self.size(args[0]), ATOM
        if f == "inv" and n == 1:
            return _parenthesize(*one, "base") + "^{-1}", SUP
        if f == "solve" and n == 2:  # A^{-1} b, as mathematics writes it (computed with no inverse)
            inverse = (_parenthesize(*one, "base") + "^{-1}", SUP)
            return self.juxtapose(inverse, texts[1])
        if f == "square" and n == 1:
            return self.power(one, "2", matrix), SUP
        if f == "sqrt" and n == 1:
            return rf"\sqrt{{{one[0]}}}", ATOM
        if f == "abs" and n == 1:
            return rf"\left|{one[0]}\right|", ATOM
        if f == "norm" and n == 1:
            return rf"\left\|{one[0]}\right\|", ATOM
        if f == "logdet" and n == 1:
            return rf"\log\left|\det{self.group(args[0], one[0])}\right|", ATOM
        if f == "log1p" and n == 1:
            return rf"\log\left(1 + {_parenthesize(*one, 'right')}\right)", ATOM
        if f == "expm1" and n == 1:
            return rf"\exp{self.group(args[0], one[0])} - 1", SUM
        return None

    # -- index notation -------------------------------------------------------------------------

    def aligned(self, child: ast.Expr, parent: ast.Expr, idx):
        """The indices of `child`, an operand of the elementwise `parent` taken at `idx`:
        numpy's broadcasting aligns the last axes, and an axis of size 1 is taken at 0."""
        if idx is None:
            return None
        own, shape = self.shape(child), self.shape(parent)
        if own is None or shape is None:
            return list(idx[len(idx) - len(own or ()):])
        lead = len(shape) - len(own)
        return [("0" if d is ONE and shape[lead + k] is not ONE else idx[lead + k])
                for k, d in enumerate(own)]

    def ix(self, e: ast.Expr, idx) -> tuple[str, int]:
        """`e`'s entry at the indices `idx` (one per axis of e), in index notation. A part
        with a matrix form that is not elementwise (a matrix product, an inverse) is written
        so and indexed: `\\left(X w\\right)_{i}`."""
        idx = list(idx)
        if not idx:
            if self.fits(e):
                return self.expr(e)
        elif self._block(e):
            return _subscripted(*self.expr(e), idx), SUB
        if isinstance(e, ast.Number):
            return _number(e.value)
        if isinstance(e, ast.Name) and e.id in self.partials:
            return self.left(e.id, idx), FRAC
        if isinstance(e, ast.Name):
            return (_indexed(self.name(e)[0], idx), SUB) if idx else self.name(e)
        if isinstance(e, ast.UnaryOp):
            if e.op == "+":
                return self.ix(e.operand, idx)
            return _negated(*self.ix(e.operand, idx))
        if isinstance(e, ast.BinOp):
            return self.ix_binary(e, idx)
        if isinstance(e, ast.Attribute) and e.attr in ("T", "mT"):
            if e.attr == "T" or len(idx) < 2:
                return self.ix(e.operand, idx[::-1] if e.attr == "T" else idx)
            return self.ix(e.operand, idx[:-2] + [idx[-1], idx[-2]])
        if isinstance(e, ast.Index):
            return self.ix_index(e, idx)
        if isinstance(e, ast.Call):
            return self.ix_call(e, idx)
        text, kind = self.matrix(e)
        return _subscripted(text, kind, idx), SUB

    def _block(self, e: ast.Expr) -> bool:
        """Is `e` written in matrix notation and then indexed, inside index notation?"""
        if not self.fits(e) or self.shape(e) is None:
            return False
        if isinstance(e, ast.BinOp):
            return e.op == "@"
        if isinstance(e, ast.Call):
            return not (self.elementwise(e) or self._along(e) or
                        e.func in ("sum", "mean", "outer", "eye", "ones", "zeros", "diag", "tr",
                                   "trace", "dot", "size", "einsum", "pad", "stack"))
        return False

    def _along(self, call: ast.Call, rank: int = 2) -> bool:
        """Does `call` work along axes (softmax, logsumexp, cumsum, max) of a tensor of
        `rank` axes or more?"""
        f = self.rules.get(call.func)
        along = (f is not None and f.kind == "tensor" and f.axis is not None) or \
            call.func in ("cumsum", "norm", "var", "std")
        return along and bool(call.args) and (self.rank(call.args[0]) or 0) >= rank

    def ix_binary(self, e: ast.BinOp, idx) -> tuple[str, int]:
        op = e.op
        if op == "@":
            return self.ix_matmul(e.left, e.right, idx)
        if op in ("*", "/"):
            if op == "*" and not self._has_division(e):
                return self.juxtaposed(self._factors(e, idx))
            return self.fraction(e, idx)
        left = self.ix(e.left, self.aligned(e.left, e, idx))
        right = self.ix(e.right, self.aligned(e.right, e, idx))
        if op in "+-":
            if right[0] == "0":  # a term that is 0 at these indices (a delta's, a zero's)
                return left
            if left[0] == "0":
                return right if op == "+" else _negated(*right)
            return f"{_parenthesize(*left, 'left')} {op} {_parenthesize(*right, 'right')}", SUM
        if op == "**":
            return f"{_parenthesize(*left, 'base')}^{{{right[0]}}}", SUP
        if op == "//":
            return rf"\left\lfloor \frac{{{left[0]}}}{{{right[0]}}} \right\rfloor", ATOM
        return rf"\left[{left[0]} {_RELATIONS[op]} {right[0]}\right]", ATOM

    def _factors(self, e: ast.Expr, idx) -> list[tuple[str, int]]:
        """The factors of a product of entries, nested products flattened, ones dropped."""
        if isinstance(e, ast.BinOp) and e.op == "*":
            return (self._factors(e.left, self.aligned(e.left, e, idx)) +
                    self._factors(e.right, self.aligned(e.right, e, idx)))
        if _is_call(e, "ones"):
            return []
        return [self.ix(e, idx)]

    def juxtaposed(self, factors: list[tuple[str, int]]) -> tuple[str, int]:
        """Scalars multiplied: numbers first, a sum bracketed, a \\sum unless it is last."""
        if any(f[0] == "0" for f in factors):
            return "0", ATOM
        factors = [f for f in factors if f[0] != "1"]  # an entry of ones, or a delta's
        if not factors:
            return "1", ATOM
        numbers = [f for f in factors if re.fullmatch(r"-?[\d.]+", f[0])]
        factors = numbers + [f for f in factors if not re.fullmatch(r"-?[\d.]+", f[0])]
        if len(factors) == 1:
            return factors[0]
        text = ""
        for i, (piece, kind) in enumerate(factors):
            last = i == len(factors) - 1
            if kind == SUM or (i and piece.startswith("-")) or (kind == BIGOP and not last):
                piece = rf"\left({piece}\right)"
            text += "" if not i else (r" \cdot " if text[-1:].isdigit() and piece[:1].isdigit()
                                      else " ")
            text += piece
        # a \sum last reaches as far right as the product, and as far as a reader lets it
        return text, (BIGOP if kind == BIGOP and not piece.startswith(r"\left(") else SCALED)

    def ix_matmul(self, a: ast.Expr, b: ast.Expr, idx) -> tuple[str, int]:
        """numpy's matmul in index notation: `\\sum_{k} A_{ik} B_{kj}`, batches broadcast."""
        ra, rb = self.rank(a), self.rank(b)
        start = self.used
        (k,) = self.fresh(1)
        if ra == 1 and rb == 1:
            ia, ib = [k], [k]
        elif rb == 1:
            ia, ib = idx + [k], [k]
        elif ra == 1:
            ia, ib = [k], idx[:-1] + [k] + idx[-1:]
        else:
            batch = idx[:-2]
            ia = self._batch(a, batch) + [idx[-2], k]
            ib = self._batch(b, batch) + [k, idx[-1]]
        text = self.sigma([k], self.juxtaposed(self._factors(a, ia) + self._factors(b, ib)))
        self.used = start
        return text, BIGOP

    def _batch(self, e: ast.Expr, batch: list) -> list:
        own = self.shape(e)[:-2]
        lead = len(batch) - len(own)
        return [("0" if d is ONE else batch[lead + n]) for n, d in enumerate(own)]

    def ix_index(self, e: ast.Index, idx) -> tuple[str, int]:
        """Indexing as indices: `x[1:]` at i is x_{i+1}, `x[::-1]` x_{n-1-i}, `x[::2]` x_{2i},
        an integer picks, None drops the result's index there."""
        shape = self.shape(e.operand)
        at, axis, taken = 0, 0, []
        for item in e.items:
            if isinstance(item, ast.NoneLit):
                at += 1
                continue
            d = shape[axis] if shape is not None and axis < len(shape) else None
            if isinstance(item, ast.Slice):
                taken.append(self.sliced(item, idx[at], d))
                self._limit(e, item, idx[at], at)
                at += 1
            else:
                taken.append(self.position(item, d) if d is not None else self.text(item))
            axis += 1
        taken += idx[at:]
        return self.ix(e.operand, taken)

    def _limit(self, e: ast.Index, item: ast.Slice, i: str, at: int) -> None:
        """Record index i's bound where `item`, the slice of `e` taken at it, stops short, or
        takes part of an operand that holds a slice that does (`x[:-1][1:]` at i is x_{i+1},
        which implies x's range for i+1, not the inner slice's): an index i+1 or n-1-i, which
        the operand takes, bounds no letter."""
        shape = self.shape(e)
        if (item.hi is not None or (not _full_slice(item) and _stops_short(e.operand))) \
                and shape is not None and at < len(shape):
            self.bound_as(i, self.dim(shape[at]))

    def bound_as(self, i: str, bound: str) -> None:
        """Index i runs up to `bound`, unless it is no letter or is bounded already."""
        if _LETTER.fullmatch(i) and i not in self.limits:
            self.limits[i] = bound

    def binding(self, idx, dims=None) -> str:
        """The subscript of an array `\\left[x_{j}\\right]_{j}`, which binds `idx` (of the
        sizes `dims`): with their bounds, `j < 3`, and how far a pad widens them (the array
        binds them: `\\left[\\left[k < 4\\right] x_{k}\\right]_{k < 6}`)."""
        for i in idx:
            if i in self.widened:
                self.bound_as(i, self.widened.pop(i))
        if any(i in self.limits for i in idx):
            return self.bounded(idx, dims=dims)
        return _subscript(idx)

    def bounded(self, idx, sep: str = ",", spaced: bool = False, dims=None) -> str:
        """The indices `idx`, each with the bound a slice taken at it set (`j < 3`), which
        they no longer carry; the bound `n - 1` as `n-1` unless `spaced` (in a subscript).
        With `dims`, their ranges, where some but not all have a bound, the others have
        theirs (`i < n,j < 3`: `i,j < 3` reads as both below 3)."""
        full = dims is not None and len(idx) > 1 and self._mixed(idx)
        out = []
        for k, i in enumerate(idx):
            if i in self.limits:
                out.append(f"{i} < {self._bound(i, spaced)}")
            elif full and k < len(dims):
                bound = self.dim(dims[k])
                out.append(f"{i} < {bound if spaced else _compact(bound)}")
            else:
                out.append(i)
        return sep.join(out)

    def _mixed(self, idx) -> bool:
        """Do some of `idx` have a bound and some not?"""
        return len({i in self.limits for i in idx}) > 1

    def _bound(self, i: str, spaced: bool) -> str:
        bound = self.limits.pop(i)
        return bound if spaced else _compact(bound)

    def sliced(self, item: ast.Slice, i: str, d: Dim | None) -> str:
        step = 1 if item.step is None else int(_number_value(item.step) or 1)
        lo = None
        if item.lo is not None:
            value = _number_value(item.lo)
            if value is not None and value < 0 and d is not None:
                lo = _compact(self.dim(d + int(value)))
            elif value is not None:
                lo = None if value == 0 else str(int(value))
            else:
                lo = _compact(self.size(item.lo))
        if step < 0:
            first = lo if lo is not None else (_compact(self.dim(d - 1)) if d is not None
                                               else "n-1")
            return _affine(first, -1, _affine(i, -step)) if not i.isdigit() else \
                _affine(first, -1, str(-step * int(i)))
        return _affine(_affine(i, step), 1, lo)

    def ix_call(self, e: ast.Call, idx) -> tuple[str, int]:
        f, args = e.func, e.args
        if f in ("sum", "mean"):
            return self.reduction(e, idx)
        if f == "einsum" and args and isinstance(args[0], ast.String):
            return self.einsum(e, idx)
        if f == "outer" and len(args) == 2 and len(idx) == 2:
            return self.juxtaposed([self.ix(args[0], idx[:1]), self.ix(args[1], idx[1:])])
        if f == "dot" and len(args) == 2:
            if self._scalar(args[0]) or self._scalar(args[1]):
                return self.ix(ast.BinOp("*", *args), idx)
            return self.ix_matmul(args[0], args[1], idx)
        if f == "eye":
            if all(i.isdigit() for i in idx):  # an entry of the identity: 1 or 0
                return ("1" if len(set(idx)) == 1 else "0"), ATOM
            return rf"\delta_{{{_subscript(idx)}}}", SUB
        if f in ("ones", "zeros"):
            return ("1" if f == "ones" else "0"), ATOM
        if f == "size" and args:
            return self.size(args[0]), ATOM
        if f == "diag" and len(args) == 1:
            if self.rank(args[0]) == 1:
                entry = self.ix(args[0], idx[:1])
                if idx[0] in self.limits:  # a square matrix: its columns as many as its rows
                    self.bound_as(idx[1], self.limits[idx[0]])
                elif idx[0] in self.widened:
                    self.widened.setdefault(idx[1], self.widened[idx[0]])
                return self.juxtaposed([(rf"\delta_{{{_subscript(idx)}}}", SUB), entry])
            return self.ix(args[0], [idx[0], idx[0]])
        if f in ("tr", "trace") and len(args) == 1:
            start = self.used
            (k,) = self.fresh(1)
            text = self.sigma([k], self.ix(args[0], [k, k] + idx))
            self.used = start
            return text, BIGOP
        if f == "pad" and len(args) == 2:
            return self.ix_pad(e, idx)
        if f == "stack" and args:
            # an entry at a fixed position along the stack's axis is of that argument:
            # stack(x, y, axis=1)_{i0} is x_{i}
            given = next((v for k, v in e.kwargs if k == "axis"), None)
            axis = _number_value(given) if given is not None else 0
            rank = self.rank(e)
            if axis is not None and rank is not None and len(idx) == rank:
                axis = int(axis) % rank
                if idx[axis].isdigit() and int(idx[axis]) < len(args):
                    return self.ix(args[int(idx[axis])], idx[:axis] + idx[axis + 1:])
        if f == "dilate" and len(args) == 3 and _number_value(args[1]) is not None:
            # x's entries k apart in zeros: entry i is x_{i/k} where k divides i
            k = int(_number_value(args[1]))
            axis = (self.axes(e) or (0,))[0]
            i = idx[axis] if len(idx[axis]) == 1 or idx[axis].isdigit() else f"({idx[axis]})"
            inner = [f"{i}/{k}" if a == axis else j for a, j in enumerate(idx)]
            return self.juxtaposed([(rf"\left[{k} \mid {idx[axis]}\right]", ATOM),
                                    self.ix(args[0], inner)])
        if self.elementwise(e) or f in _COMPARED:
            texts = [self.ix(a, self.aligned(a, e, idx)) for a in args]
            special = self.special(f, args, texts)
            return special if special is not None else self.applied(f, args, texts)
        if self._along(e, 1) and self.shape(e) is not None:
            return self.ix_along(e, idx)
        text, kind = self.matrix(e)
        return _subscripted(text, kind, idx), SUB

    def ix_along(self, e: ast.Call, idx) -> tuple[str, int]:
        """A function along axes (softmax, logsumexp, cumsum, max) in index notation, with the
        indices it works along below it: `\\operatorname{softmax}_{j}\\left(X_{ij}\\right)`."""
        arg = e.args[0]
        rank = self.rank(arg)
        axes = self.axes(e)
        same = self.rank(e) == rank
        start = self.used
        if axes is None:
            axes = (rank - 1,) if same else tuple(range(rank))
        if same and e.func == "cumsum":  # a running sum: the sum up to the entry
            (axis,), (k,) = axes, self.fresh(1)
            inner = [k if a == axis else i for a, i in enumerate(idx)]
            summand = self.ix(arg, inner)
            if k in self.limits:  # k <= i says k's; i runs as far (the sum up to each entry)
                self.bound_as(idx[axis], self.limits.pop(k))
            elif k in self.widened:  # (and as far as a pad widens k)
                self.widened.setdefault(idx[axis], self.widened.pop(k))
            text = self.sigma([rf"{k} \leq {idx[axis]}"], summand)
            self.used = start
            return text, BIGOP
        shape = self.shape(arg)
        # a letter a slice of the result bounds (softmax(x)[:3] at i < 3) runs over less than
        # the function does: `softmax_{i}(x_{i})` would be the softmax of x's first 3
        short = same and shape is not None and any(
            idx[a] in self.limits and self.limits[idx[a]] != self.dim(shape[a]) for a in axes)
        if same and (short or not all(len(idx[a]) == 1 and idx[a].isalpha() and
                                      idx.count(idx[a]) == 1 for a in axes)):
            # at an index that is no free letter (x_{n-1-i}) or runs over less: the function
            # of the array [x_k]_k, taken there
            bound = self.fresh(len(axes))
            inner = list(idx)
            for a, k in zip(axes, bound):
                inner[a] = k
            name = OPERATORS.get(e.func, rf"\operatorname{{{_escape(e.func)}}}")
            dims = None if shape is None else [shape[a] for a in axes]
            text = ", ".join(rf"\left[{self.ix(a, inner)[0]}\right]_"
                             rf"{{{self.binding(bound, dims)}}}" for a in self._along_args(e))
            self.used = start
            return rf"{name}\left({text}\right)_{{{_subscript([idx[a] for a in axes])}}}", SUB
        if same:
            inner, along = list(idx), [idx[a] for a in axes]
        else:
            along = self.fresh(len(axes))
            inner, rest, taken = [], iter(idx), iter(along)
            for a in range(rank):
                inner.append(next(taken) if a in axes else next(rest))
        name = OPERATORS.get(e.func, rf"\operatorname{{{_escape(e.func)}}}")
        text = ", ".join(self.ix(a, inner)[0] for a in self._along_args(e))
        self.used = start
        # the indices it works along are bound by it where it drops them (\max_{j < 3}); free
        # where it keeps the shape, and bounded below it too (softmax_{j < 3}), where the line
        # bounds them or not (a pad widens them again: [j < 3] softmax_{j < 3}(X_{ij}) of
        # the n of X's axis)
        dims = None if shape is None else [shape[a] for a in axes]
        below = self.bounded(along, dims=dims) if not same else ",".join(
            f"{j} < {_compact(self.limits[j])}" if j in self.limits else j for j in along)
        return rf"{name}_{{{below}}}\left({text}\right)", ATOM

    def _along_args(self, e: ast.Call) -> list:
        """The tensors a function along axes takes: its first argument, and a cotangent's
        primitive (log_softmax_vjp(x, g)) its second too, at the same indices."""
        f = self.rules.get(e.func)
        return list(e.args[:2] if f is not None and f.shape == "cotangent" else e.args[:1])

    def ix_pad(self, e: ast.Call, idx) -> tuple[str, int]:
        """`pad(x, ...)` at i: x_{i-b} where i - b is an index of x, else 0 (an Iverson
        bracket for each bound a pad adds)."""
        x, widths = e.args
        shape = self.shape(x)
        before_x = set(self.limits)
        pairs = widths.items if isinstance(widths, ast.Tuple) else ()
        if len(pairs) == 2 and not any(isinstance(p, ast.Tuple) for p in pairs):
            pairs = (widths,) * len(shape)
        inner, brackets = [], []
        for i, pair, d in zip(idx, pairs, shape):
            before, after = pair.items
            b = _number_value(before)
            b_text = None if b == 0 else (str(int(b)) if b is not None else self.size(before))
            if b_text is None:
                inner.append(i)
            else:
                inner.append(_affine(i, -1, _compact(b_text)))
                brackets.append(rf"\left[{i} \geq {b_text}\right]")
            if _number_value(after) != 0:
                end = self.dim(d + int(b)) if b is not None else f"{b_text} + {self.dim(d)}"
                brackets.append(rf"\left[{i} < {end}\right]")
        entry = self.ix(x, inner)
        padded = self.shape(e)
        for axis, (i, pair) in enumerate(zip(idx, pairs)):
            # zeros after: i runs past x's axis, and its bracket says where x is, not a bound
            if _number_value(pair.items[1]) != 0:
                if i not in before_x:
                    self.limits.pop(i, None)
                if padded is not None and axis < len(padded) and _LETTER.fullmatch(i):
                    # this pad's size, not an inner one's (pad(pad(x, (0, 2)), (0, 3)) at i:
                    # the inner pad, typeset first, is at i too, and runs to n + 2 only)
                    self.widened[i] = self.dim(padded[axis])
            elif _number_value(pair.items[0]) != 0 and padded is not None and \
                    axis < len(padded) and (_stops_short(x) or _widened(x)):
                # zeros before only: x_{i-2} of a short slice of x implies x's range for i - 2
                # (the bound of x[:3] is on no letter), and so does x_{i-2} of a pad with zeros
                # after (pad(pad(x, (0, 2)), (3, 0)): its bracket [i-3 < n], a bound on no
                # letter either, says where x is): i runs to the padded size
                self.bound_as(i, self.dim(padded[axis]))
        return self.juxtaposed([(t, ATOM) for t in brackets] + [entry])

    def einsum(self, e: ast.Call, idx) -> tuple[str, int]:
        """`einsum(spec, ...)` as the sum it is: `\\sum_{j,k} T_{ijk} M_{jk}`."""
        spec = e.args[0].value.replace(" ", "")
        operands = e.args[1:]
        ins, arrow, out = spec.partition("->")
        terms = ins.split(",")
        labels = [_einsum_labels(t, self.rank(o)) for t, o in zip(terms, operands)]
        if not arrow:
            counts: dict = {}
            for ls in labels:
                for l in ls:
                    counts[l] = counts.get(l, 0) + 1
            batch = max((sum(isinstance(l, tuple) for l in ls) for ls in labels), default=0)
            out_labels = [("...", batch - j) for j in range(batch)] + \
                sorted(l for l, c in counts.items() if c == 1 and isinstance(l, str))
        else:
            batch = max((sum(isinstance(l, tuple) for l in ls) for ls in labels), default=0)
            out_labels = _einsum_labels(out, batch + len(out.replace("...", "")))
        start = self.used
        names = dict(zip(out_labels, idx)) if idx is not None else {}
        summed = []
        for ls in labels:
            for l in ls:
                if l not in names:
                    # shapes unknown (idx None): the spec's own letters
                    names[l] = self.fresh(1)[0] if idx is not None else str(l[0])
                    if l not in out_labels:
                        summed.append(names[l])
        factors = [f for o, ls in zip(operands, labels)
                   for f in self._factors(o, [names[l] for l in ls])]
        product = self.juxtaposed(factors)
        self.used = start
        if not summed:
            return product
        return self.sigma(summed, product), BIGOP


def _put(factors: list, factor: tuple) -> None:
    """Adds a factor to a side of a fraction; an equal one there raises its power."""
    for k, (key, exponent, *rest) in enumerate(factors):
        if key == factor[0]:
            factors[k] = (key, exponent + factor[1], *rest)
            return
    factors.append(factor)


def _einsum_labels(term: str, rank: int | None) -> list:
    """A term's labels: its letters, and ("...", k) for the k-th axis of its ellipsis counted
    from the ellipsis's end (numpy aligns those from the right)."""
    if "..." not in term:
        return list(term)
    before, after = term.split("...")
    k = max((rank or 0) - len(before) - len(after), 0)
    return [*before, *[("...", k - j) for j in range(k)], *after]


def _compact(index: str) -> str:
    """An index as a subscript sets it: `n-1`, not `n - 1`."""
    return re.sub(r" ([+-]) ", r"\1", index)


def _affine(a: str, k: int, b: str | None = None) -> str:
    """The index `a + k b` (`k a` without b), numbers folded: `2i+1`, `n-1-i`, `4`."""
    if b is None:
        if a.isdigit() or k == 1:
            return str(k * int(a)) if a.isdigit() else a
        return f"{k}{a}" if len(a) == 1 else f"{k}({a})"
    if a.isdigit() and b.isdigit():
        return str(int(a) + k * int(b))
    if b == "0":
        return a
    if a == "0" and k == 1:
        return b
    constant = _TRAILING_CONSTANT.fullmatch(a)
    if constant and b.isdigit():  # i-2 then +1: i-1 (an offset of an offset, pad of a slice)
        head, total = constant.group(1), int(constant.group(2)) + k * int(b)
        return head if total == 0 else f"{head}{'+' if total > 0 else '-'}{abs(total)}"
    b = b if len(b) == 1 or b.isdigit() or k == 1 else f"({b})"
    return f"{a}{'+' if k > 0 else '-'}{b}"


# an index that ends in a constant term, `i-2`, `2i+1`, `n-1-i+3`: (the rest, the constant)
_TRAILING_CONSTANT = re.compile(r"(.*[^+\-])([+-]\d+)")


def _negated(text: str, kind: int) -> tuple[str, int]:
    """`-text`: a product stays the product it was (its sign is a scalar factor of it), so
    that it is bracketed where that product would be."""
    return "-" + _parenthesize(text, kind, "negated"), (kind if kind in PRODUCTS else NEG)


def _parenthesize(text: str, kind: int, position: str, product: int | None = None) -> str:
    """`text` (of `kind`) bracketed if it needs to be at `position`; `product` is the kind of
    the product that a "factor" stands left of: only the same kind continues it unbracketed.
    A text with a sign in front is a negation wherever one is bracketed."""
    if text.startswith("-") and position not in ("left", "factor"):
        kind = NEG
    mixed = position == "factor" and kind in PRODUCTS and kind not in (product, SCALED)
    if mixed or kind in _WRAPPED[position]:
        return rf"\left({text}\right)"
    return text
