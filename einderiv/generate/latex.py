"""The `latex` format: a vectorized program typeset as an `aligned` block, one row per line.

It walks the same syntax tree as the `formula` and `python` printers. Every operand asks
`_parenthesize` whether it needs brackets where it stands, so the bracketing rules live in one
table (`_WRAPPED`) rather than in each construct.

>>> import einderiv
>>> g = einderiv.grad("sum(log(1 + exp(-y * (X @ w))))", "w",
...                   {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
>>> print(g.latex)
\\begin{aligned}
\\mathrm{d}w &= -X^{\\top} \\left(\\sigma\\left(-y \\odot \\left(X w\\right)\\right) \\odot y\\right)
\\end{aligned}
"""
from __future__ import annotations

import re

from ..ir.dims import is_composite
from ..lower.dimensions import composite_expr
from ..parse import ast
from ..vectorize import VectorProgram

# What kind of expression an operand is, for bracketing. SUM: `a + b`. The products, each its own
# kind since a reader cannot tell how `A B \odot c` groups: HADAMARD `a \odot b`, MATMUL `A B`,
# OUTER `a \otimes b`, INNER `a \cdot b`, and SCALED `2 x` (a number commutes with every
# product, so it groups either way). BIGOP: `\sum x`, reaching as far right as a reader lets it.
# NEG: `-a`. FRAC: `\frac{a}{b}`. SUP: carries a superscript (`x^{2}`, `X^{\top}`, `A^{-1}`).
# SUB: carries a subscript (`t_{0}`, `I_{n}`). ATOM: takes either script (`x`, `\exp(x)`).
SUM, HADAMARD, MATMUL, OUTER, INNER, SCALED, BIGOP, NEG, FRAC, SUP, SUB, ATOM = range(12)
PRODUCTS = {HADAMARD, MATMUL, OUTER, INNER, SCALED}

# Which kinds of operand are bracketed in which position: the one place that decides it.
_WRAPPED = {
    "left": {BIGOP},                         # left of + or -
    "right": {SUM, NEG, BIGOP},              # right of + or -: a + (b + c), a - (-b)
    "factor": {SUM, BIGOP},                  # left of a product; other products: `_parenthesize`
    "last": {SUM, NEG, BIGOP} | PRODUCTS,    # right of a product
    "negated": {SUM, NEG},                   # after a unary sign: -(a + b), -(-a)
    "summand": {SUM, NEG, BIGOP} | PRODUCTS,  # the operand of \sum
    "base": {SUM, NEG, BIGOP, FRAC, SUP} | PRODUCTS,   # takes a superscript
    "indexed": {SUM, NEG, BIGOP, FRAC, SUP, SUB} | PRODUCTS,  # takes a subscript
}

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
         "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi",
         "Psi", "Omega"}
# Functions with a LaTeX operator of their own.
OPERATORS = {"exp": r"\exp", "log": r"\log", "sin": r"\sin", "cos": r"\cos", "tan": r"\tan",
             "sinh": r"\sinh", "cosh": r"\cosh", "tanh": r"\tanh", "arctan": r"\arctan",
             "det": r"\det", "sigmoid": r"\sigma", "maximum": r"\max", "minimum": r"\min",
             "tr": r"\operatorname{tr}", "trace": r"\operatorname{tr}",
             "sech2": r"\operatorname{sech}^2", "arcsin": r"\arcsin", "arccos": r"\arccos",
             "arctanh": r"\operatorname{artanh}", "arcsinh": r"\operatorname{arsinh}",
             "lgamma": r"\log\Gamma", "digamma": r"\psi", "trigamma": r"\psi'",
             "gelu": r"\operatorname{GELU}"}


def format_latex(program: VectorProgram) -> str:
    """An `aligned` environment: a row `name &= expression` per temporary, then per output."""
    names = typeset_names(program)
    rows = [f"{names[name]} &= {latex_expr(expr, names)}" for name, expr in program.temporaries]
    rows += [f"{names[name]} &= {latex_expr(expr, names)}" for name, expr in program.outputs]
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


def latex_expr(expr: ast.Expr, names: dict[str, str] | None = None) -> str:
    return _Printer(names).text(expr)


def typeset_names(program: VectorProgram) -> dict[str, str]:
    """Each name of the program -> how it is typeset. `latex_name` folds some names together
    (`W1` and `W_1` are both `W_{1}`, `t0` and `t_0` both `t_{0}`), so a name whose form is
    taken already is typeset `\\mathit{t\\_0}` instead, which no other name gets: the user's
    names (variables, dimensions) come first, ours give way."""
    shapes = {**program.declarations, **{n: v.shape for n, v in program.variables.items()}}
    order = [*shapes, *(d.name for shape in shapes.values() for d in shape if d.name),
             *(n for n, _ in program.temporaries)]
    forms = {name: latex_name(name) for name in order}
    forms.update((name, output_name(name, program)) for name, _ in program.outputs)
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


def output_name(name: str, program: VectorProgram) -> str:
    """A derivative's output `dw` (or a Hessian block `dxdy`) as `\\mathrm{d}w`
    (`\\mathrm{d}x\\,\\mathrm{d}y`) when the names after each `d` are input variables."""
    inputs = set(program.declarations) | set(program.variables)
    if name in inputs:
        return latex_name(name)
    parts = _differentials(name, inputs)
    if parts:
        return r"\,".join(rf"\mathrm{{d}}{latex_name(p)}" for p in parts)
    return latex_name(name)


def _differentials(name: str, inputs: set) -> list[str] | None:
    """`dxdy` -> [x, y] when x and y are inputs; None when `name` is not such a chain."""
    if not name.startswith("d"):
        return None
    rest = name[1:]
    if rest in inputs:
        return [rest]
    for cut in range(1, len(rest)):
        if rest[cut] == "d" and rest[:cut] in inputs:
            tail = _differentials(rest[cut:], inputs)
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


class _Printer:
    def __init__(self, names: dict[str, str] | None = None):
        self.names = names or {}  # name -> its typeset form, where `latex_name` is not enough

    def text(self, e: ast.Expr) -> str:
        return self.expr(e)[0]

    def operand(self, e: ast.Expr, position: str, product: int | None = None) -> str:
        text, kind = self.expr(e)
        return _parenthesize(text, kind, position, product)

    def group(self, e: ast.Expr) -> str:
        """An argument in brackets: plain for a name or a number, sized otherwise."""
        text = self.text(e)
        if isinstance(e, (ast.Name, ast.Number)):
            return f"({text})"
        return rf"\left({text}\right)"

    def expr(self, e: ast.Expr) -> tuple[str, int]:
        if isinstance(e, ast.Number):
            return _number(e.value)
        if isinstance(e, ast.Name) and is_composite(e.id):  # a size `m * n`, as its expression
            return self.size(composite_expr(e.id)), ATOM
        if isinstance(e, ast.Name):
            name = self.names.get(e.id) or latex_name(e.id)
            return name, (SUB if re.search(r"(?<!\\)_", name) else ATOM)
        if isinstance(e, ast.String):
            return rf"\text{{``{_escape(e.value)}''}}", ATOM
        if isinstance(e, ast.NoneLit):
            return r"\mathrm{None}", ATOM
        if isinstance(e, ast.UnaryOp):
            return e.op + self.operand(e.operand, "negated"), NEG
        if isinstance(e, ast.BinOp):
            return self.binary(e)
        if isinstance(e, ast.Attribute):
            if e.attr == "T":
                return self.operand(e.operand, "base") + r"^{\top}", SUP
            return self.operand(e.operand, "indexed") + rf".\mathrm{{{_escape(e.attr)}}}", ATOM
        if isinstance(e, ast.Index):
            items = ",".join(self.item(i) for i in e.items)
            return f"{self.operand(e.operand, 'indexed')}_{{{items}}}", SUB
        if isinstance(e, ast.Tuple):
            return rf"\left({', '.join(self.text(i) for i in e.items)}\right)", ATOM
        if isinstance(e, ast.Call):
            return self.call(e)
        raise TypeError(f"cannot typeset {type(e).__name__}")

    def size(self, e: ast.Expr) -> str:
        """A composite size (`(n + 1) // 2`, `m * n`): products of sizes with a dot,
        quotients rounded down."""
        if isinstance(e, ast.BinOp) and e.op == "//":
            return rf"\left\lfloor \frac{{{self.size(e.left)}}}{{{self.text(e.right)}}} \right\rfloor"
        if isinstance(e, ast.BinOp) and e.op == "*":
            factors = [self.size(f) if not (isinstance(f, ast.BinOp) and f.op in "+-")
                       else rf"\left({self.size(f)}\right)" for f in (e.left, e.right)]
            return r" \cdot ".join(factors)
        if isinstance(e, ast.BinOp) and e.op in "+-":
            return f"{self.size(e.left)} {e.op} {self.size(e.right)}"
        return self.text(e)

    def item(self, item: ast.Expr) -> str:
        if isinstance(item, ast.Slice):
            lo = "" if item.lo is None else self.text(item.lo)
            hi = "" if item.hi is None else self.text(item.hi)
            step = "" if item.step is None else f"{{:}}{self.text(item.step)}"
            return f"{lo}{{:}}{hi}{step}"
        return self.text(item)

    def binary(self, e: ast.BinOp) -> tuple[str, int]:
        op = e.op
        if op in ast.COMPARISONS:  # a mask: Iverson's bracket, 1 where it holds
            return rf"\left[{self.text(e.left)} {_RELATIONS[op]} {self.text(e.right)}\right]", ATOM
        if op == "//":
            return (rf"\left\lfloor \frac{{{self.text(e.left)}}}{{{self.text(e.right)}}} "
                    r"\right\rfloor"), ATOM
        if op in "+-":
            return f"{self.operand(e.left, 'left')} {op} {self.operand(e.right, 'right')}", SUM
        if op == "/":
            return rf"\frac{{{self.text(e.left)}}}{{{self.text(e.right)}}}", FRAC
        if op == "**":
            return f"{self.operand(e.left, 'base')}^{{{self.text(e.right)}}}", SUP
        if op == "*" and (_is_number(e.left) or _is_number(e.right)):
            kind = SCALED
        else:
            kind = MATMUL if op == "@" else HADAMARD
        left = self.operand(e.left, "factor", kind)
        right = self.operand(e.right, "last")
        if kind == HADAMARD:
            return rf"{left} \odot {right}", kind
        if kind == SCALED and not _is_number(e.left):
            return rf"{left} \cdot {right}", kind  # x * 2
        # Juxtaposition: `X w`, `2 x`; a dot keeps two numbers apart.
        return left + (r" \cdot " if right[:1].isdigit() else " ") + right, kind

    def call(self, e: ast.Call) -> tuple[str, int]:
        f, args = e.func, e.args
        note = ",".join(rf"\text{{{_escape(k)}}}={self.text(v)}" for k, v in e.kwargs)
        if f == "sum" and len(args) == 1:
            below = f"_{{{note}}}" if note else ""
            return rf"\sum{below} {self.operand(args[0], 'summand')}", BIGOP
        if f == "einsum" and args and isinstance(args[0], ast.String):
            spec = args[0].value.replace(" ", "")
            ins, arrow, out = spec.partition("->")
            sub = rf"\text{{{ins}}}" + (rf"{{\to}}\text{{{out}}}" if arrow else "")
            operands = ", ".join(self.text(a) for a in args[1:])
            return rf"\operatorname{{einsum}}_{{{sub}}}\left({operands}\right)", ATOM
        special = self.special(f, args) if not e.kwargs else None
        if special is not None:
            return special
        name = OPERATORS.get(f, rf"\operatorname{{{_escape(f)}}}")
        if note:
            name += f"_{{{note}}}"
        if len(args) == 1:
            return name + self.group(args[0]), ATOM
        return rf"{name}\left({', '.join(self.text(a) for a in args)}\right)", ATOM

    def special(self, f: str, args) -> tuple[str, int] | None:
        """Functions with a notation of their own, or None for the plain `\\operatorname` form."""
        n = len(args)
        if f in _COMPARED and n == 2:
            return self.binary(ast.BinOp(_COMPARED[f], *args))
        if f == "floor_divide" and n == 2:
            return self.binary(ast.BinOp("//", *args))
        if f == "eye" and n == 1:
            return f"I_{{{self.text(args[0])}}}", SUB
        if f in ("ones", "zeros") and n >= 1:
            dims = r" \times ".join(self.text(a) for a in args)
            return rf"\mathbf{{{1 if f == 'ones' else 0}}}_{{{dims}}}", SUB
        if f == "size" and n == 1:
            return self.expr(args[0])
        if f == "inv" and n == 1:
            return self.operand(args[0], "base") + "^{-1}", SUP
        if f == "solve" and n == 2:  # A^{-1} b, as mathematics writes it (computed with no inverse)
            return self.binary(ast.BinOp("@", ast.Call("inv", (args[0],)), args[1]))
        if f == "square" and n == 1:
            return self.operand(args[0], "base") + "^{2}", SUP
        if f == "sqrt" and n == 1:
            return rf"\sqrt{{{self.text(args[0])}}}", ATOM
        if f == "abs" and n == 1:
            return rf"\left\lvert {self.text(args[0])} \right\rvert", ATOM
        if f == "norm" and n == 1:
            return rf"\left\lVert {self.text(args[0])} \right\rVert", ATOM
        if f == "logdet" and n == 1:
            return rf"\log\left\lvert \det{self.group(args[0])} \right\rvert", ATOM
        if f == "log1p" and n == 1:
            return rf"\log\left(1 + {self.operand(args[0], 'right')}\right)", ATOM
        if f == "expm1" and n == 1:
            return rf"\exp{self.group(args[0])} - 1", SUM
        if f in ("dot", "outer") and n == 2:
            kind, sign = (INNER, r"\cdot") if f == "dot" else (OUTER, r"\otimes")
            return (f"{self.operand(args[0], 'factor', kind)} {sign} "
                    f"{self.operand(args[1], 'last')}"), kind
        return None


_RELATIONS = {"<": "<", "<=": r"\le", ">": ">", ">=": r"\ge", "==": "=", "!=": r"\ne"}
_COMPARED = {fn: op for op, fn in ast.COMPARISONS.items()}


def _parenthesize(text: str, kind: int, position: str, product: int | None = None) -> str:
    """`text` (of `kind`) bracketed if it needs to be at `position`; `product` is the kind of
    the product that a "factor" stands left of: only the same kind continues it unbracketed."""
    mixed = position == "factor" and kind in PRODUCTS and kind not in (product, SCALED)
    if mixed or kind in _WRAPPED[position]:
        return rf"\left({text}\right)"
    return text
