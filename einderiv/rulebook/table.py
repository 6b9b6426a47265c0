"""Read rule files into a `RuleBook`: which functions exist, their kind, and how to evaluate them.

The core never names a specific function: lowering asks the rule book whether `foo` is an
elementwise primitive, a tensor primitive or a definition, and evaluation asks it for `foo`'s
implementation.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import lark
import numpy as np

from ..errors import RuleError, Span
from ..parse.parser import MAX_SOURCE_CHARS

# A rule file is read up to this many characters (one more tells that it is too long): reading
# `/dev/zero` or a huge download must not fill memory. The shipped tables are about 3,000.
MAX_RULE_FILE_CHARS = MAX_SOURCE_CHARS


@dataclass(frozen=True)
class Derivative:
    """`d f(params)[out] / d wrt[wrt_indices] = body`: one partial derivative of a primitive."""

    function: str
    params: tuple[str, ...]
    wrt: str
    out_indices: tuple[str, ...]
    wrt_indices: tuple[str, ...]
    body: str
    origin: str = ""
    # The rule's line as its file has it, for a caret under what is wrong when the rule is
    # first applied (its shape is known only then); not part of the rule's identity.
    line: str = field(default="", compare=False, repr=False)

    def span(self, part: str | None = None, at: tuple[int, int] | None = None) -> Span | None:
        """Where `part` (the first place the rule's line has it), or the offsets `at` of its
        body, is (else the whole rule), at the rule's line of its file: a RuleError's caret."""
        if not self.line:
            return None
        number = self.origin.rpartition(":")[2]
        prefix = "\n" * (int(number) - 1 if number.isdigit() else 0)
        start = self.line.find(part) if part else -1
        body = self.line.find(self.body)
        if at is not None and body >= 0:
            start, part = body + at[0], " " * max(1, at[1] - at[0])
        if start < 0:
            start = len(self.line) - len(self.line.lstrip())
            end = len(self.line.split("#")[0].rstrip())
        else:
            end = start + len(part)
        return Span(prefix + self.line, len(prefix) + start, len(prefix) + max(end, start + 1))

    def __str__(self) -> str:
        out = f"[{','.join(self.out_indices)}]" if self.out_indices else ""
        wrt = f"[{','.join(self.wrt_indices)}]" if self.wrt_indices else ""
        return f"d {self.function}({', '.join(self.params)}){out} / d{self.wrt}{wrt} = {self.body}"


@dataclass(frozen=True)
class Function:
    name: str
    kind: str  # "elementwise", "tensor" or "def"
    params: tuple[str, ...]
    impl: str | None = None  # "xp.exp", "kernel.sigmoid", "module:attr"
    body: str | None = None  # a definition's expression, in the language
    axis: str | None = None  # a tensor primitive's axis keyword, if it takes one
    shape: str | None = None  # a tensor primitive's shape rule: a key of TENSOR_SHAPES
    origin: str = ""  # "file:line"
    # A definition's parameters with defaults, after `params` (its tensors): (name, the
    # default as written: a number, None, True or False), `def elu(x, alpha=1.0) = ...`.
    keywords: tuple[tuple[str, str], ...] = ()

    @property
    def arity(self) -> int:
        return len(self.params)

    def __str__(self) -> str:
        """The function's line in a rule file (spaces normalised)."""
        params = ", ".join([*self.params, *(f"{k}={v}" for k, v in self.keywords)])
        if self.kind == "def":
            return f"def {self.name}({params}) = {self.body}"
        if self.kind == "tensor":
            axis = f"; {self.axis}" if self.axis else ""
            return f"tensor {self.name}({params}{axis}) -> {self.shape} = {self.impl}"
        return f"{self.kind} {self.name}({params}) = {self.impl}"


@dataclass(frozen=True)
class Rewrite:
    """`rewrite PATTERN = REPLACEMENT`: an identity of the language, applied to every program
    (and every derivative) where PATTERN matches, left to right, until none applies.

    The pattern's free names are its variables; `axis` among them stands for the axes of the
    reductions and axis functions it is passed to (see rules/rewrites.rules)."""

    pattern: str
    replacement: str
    variables: tuple[str, ...]  # the pattern's free names, in order of appearance
    functions: tuple[str, ...]  # the functions either side calls (`rules list NAME` shows it)
    origin: str = ""

    def __str__(self) -> str:
        return f"rewrite {self.pattern} = {self.replacement}"


# How a tensor primitive's result shape follows from its argument's.
TENSOR_SHAPES = {
    "same": "shaped like the argument (an axis keyword may pick the axes it works along)",
    "reduce": "the argument's shape without the axes it reduces (all of them by default)",
    "square": "a square matrix (or a stack of them) to the same shape",
    "square_scalar": "a square matrix (or a stack of them) to a scalar (one per matrix)",
    "square_pair": "a square matrix (or a stack of them) to a value per pair of its entries "
                   "(n x n x n x n per matrix, as a Hessian by the matrix)",
    "transposed": "a matrix (or a stack of them) to one of the transposed shape: [..., m, n] "
                  "to [..., n, m] (pinv's)",
    "square_rhs": "a square matrix (or a stack of them) and a right-hand side for each, "
                  "[..., n, n] and [..., n] or [..., n, k], to the right-hand side's shape "
                  "(two arguments, as solve's)",
    "square_square": "two square matrices (or stacks of them) of one shape to a matrix of "
                     "that shape (two arguments, as det_hvp's: a matrix and a direction)",
    "square_triple": "a square matrix (or a stack of them) to a value per triple of its "
                     "entries (n^6 per matrix, as det's third derivatives)",
    "square_square_pair": "two square matrices (or stacks of them) of one shape to a value per "
                          "pair of entries of that shape (two arguments, as det_third_v's: a "
                          "matrix and a direction, to n x n x n x n per matrix)",
    "square_square_square": "three square matrices (or stacks of them) of one shape to a "
                            "matrix of that shape (three arguments, as det_third_vv's: a "
                            "matrix and two directions)",
    "cotangent": "an argument and a cotangent shaped like it, to that shape, along the axes "
                 "(two arguments and an axis keyword, as log_softmax_vjp's: the pullback of "
                 "the primitive without the suffix, applied in one call; or two tensors "
                 "shaped alike under another name, as softmax_minus(x, y))",
    "weighted": "an argument and weights shaped like it (or the two broadcast to one shape, "
                "as numpy broadcasts them), to that shape without the axes it reduces, all of "
                "them by default (two arguments and an axis keyword, as logsumexp_weighted's)",
}
# The number of tensor arguments each shape rule takes.
TENSOR_ARITY = {"square_rhs": 2, "square_square": 2, "square_square_pair": 2,
                "square_square_square": 3, "cotangent": 2, "weighted": 2}
# The shape rules whose primitives work along axes (an axis keyword, or their default axes).
AXIS_SHAPES = ("same", "reduce", "cotangent", "weighted")
# The shape rules of square matrices of one shape (a matrix and its directions): how many
# n x n pairs of axes each adds to the batch axes in its result.
SQUARE_PAIRS = {"square": 1, "square_scalar": 0, "square_pair": 2, "square_triple": 3,
                "square_square": 1, "square_square_pair": 2, "square_square_square": 1}


def rules_dir() -> Path:
    """The shipped rules folder: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    raise RuleError(f"cannot find the rules folder (looked in {here / 'rules'} and "
                    f"{here.parent / 'rules'})")


@lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


class RuleBook:
    """All functions known to the language, by name.

    A rule book that is in use (the process-wide one, or one set with `using_rules`) is frozen:
    it is never changed in place, so any thread may read and iterate it while another loads a
    rule file into a copy (`load_rules` swaps the copy in).
    """

    def __init__(self):
        self.functions: dict[str, Function] = {}
        self.derivatives: dict[tuple[str, str], Derivative] = {}  # (function, param) -> rule
        self.rewrites: dict[str, Rewrite] = {}  # pattern text -> rewrite, in the order added
        self.files: list[Path] = []
        self.frozen = False

    def copy(self) -> "RuleBook":
        """An unfrozen copy, to load or add rules into."""
        other = RuleBook()
        other.functions = dict(self.functions)
        other.derivatives = dict(self.derivatives)
        other.rewrites = dict(self.rewrites)
        other.files = list(self.files)
        return other

    def freeze(self) -> "RuleBook":
        self.frozen = True
        return self

    def derivative(self, function: str, position: int) -> Derivative | None:
        """The rule for the derivative of `function` by its argument number `position`."""
        f = self.functions.get(function)
        if f is None or position >= f.arity:
            return None
        return self.derivatives.get((function, f.params[position]))

    def load(self, path: str | Path, allow_imports: bool = False) -> "RuleBook":
        """Add the rules in `path` (a later rule for a name replaces an earlier one).

        An implementation `module:attribute` imports that module when it is used: a rule file
        with one is trusted code, and loads only with `allow_imports=True`."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read(MAX_RULE_FILE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as e:
            raise RuleError(f"cannot read rule file {path}: {e}") from None
        if len(text) > MAX_RULE_FILE_CHARS:
            raise RuleError(f"rule file {path} is too long: more than {MAX_RULE_FILE_CHARS} "
                            "characters")
        self.add(parse_rules(text, str(path), bodies=True, allow_imports=allow_imports))
        self.files.append(path)
        return self

    def add(self, rules: list) -> "RuleBook":
        if self.frozen:
            raise RuleError("this rule book is in use and is never changed in place",
                            hint="einderiv.load_rules(path) loads a file for every later call; "
                                 "to build a rule book of your own, add to its copy()")
        # A rewrite is an identity of the functions it calls: where a later rule replaces one
        # of them (`def logcosh(x) = ...` over the built-in logcosh), the earlier rewrites that
        # call it no longer hold (and one naming a definition could not be matched at all).
        replaced = {r.name for r in rules if isinstance(r, Function) and r.name in self.functions}
        if replaced:
            self.rewrites = {k: r for k, r in self.rewrites.items()
                             if replaced.isdisjoint(r.functions)}
        for rule in rules:
            if isinstance(rule, Derivative):
                self.derivatives[(rule.function, rule.wrt)] = rule
            elif isinstance(rule, Rewrite):
                # A later rewrite of the same pattern replaces an earlier one, at its own place.
                self.rewrites.pop(rule.pattern, None)
                self.rewrites[rule.pattern] = rule
            else:
                self.functions[rule.name] = rule
        return self

    def get(self, name: str) -> Function | None:
        return self.functions.get(name)

    def in_file_order(self) -> list:
        """Every function, derivative rule and rewrite, by file (in load order) and line."""
        order = {str(p): i for i, p in enumerate(self.files)}

        def key(rule):
            file, _, line = rule.origin.rpartition(":")
            return order.get(file, len(order)), file, int(line) if line.isdigit() else 0
        return sorted([*self.functions.values(), *self.derivatives.values(),
                       *self.rewrites.values()], key=key)


SYNTAX_HINT = "see the comments at the top of rules/*.rules for the syntax, or CONTRIBUTING.md"


def parse_rules(text: str, filename: str = "<rules>", bodies: bool = False,
                allow_imports: bool = False) -> list:
    """The rules of a rule file's `text`. `bodies`: also parse every right-hand side now, so
    that a typo there is reported with a caret in the file rather than when the rule is used.
    `allow_imports`: accept implementations `module:attribute` (trusted code); without it they
    are a `RuleError` at their line."""
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        pos = min(getattr(e, "pos_in_stream", None) or 0, max(0, len(text) - 1))
        raise RuleError(f"{filename}:{e.line}:{e.column}: malformed rule: {_unexpected(e)}",
                        Span(text, pos, pos + 1), hint=SYNTAX_HINT) from None
    functions = []
    for rule in tree.children:
        if not isinstance(rule, lark.Tree):
            continue
        origin = f"{filename}:{rule.meta.line}"
        body = None
        if bodies and rule.data in ("derivative", "definition"):
            body = _parse_body(rule.children[-1], text, origin)
        if rule.data == "rewrite":
            functions.append(_rewrite(rule.children[0], origin, text))
            continue
        name = str(rule.children[0])
        if rule.data == "definition":
            _not_a_builtin(rule, "def", origin, text)
            functions.append(_definition(rule, origin, text))
            continue
        params = _params(rule.children[1], name, origin, text)
        if rule.data == "elementwise":
            _not_a_builtin(rule, "elementwise", origin, text)
            functions.append(Function(name, "elementwise", params,
                                      _impl(rule.children[2], text, origin, allow_imports),
                                      origin=origin))
        elif rule.data == "derivative":
            _not_a_builtin(rule, "derivative", origin, text)
            functions.append(_derivative(rule, origin, text, body))
        elif rule.data == "tensor":
            axis = str(rule.children[2]) if rule.children[2] is not None else None
            shape = str(rule.children[3])
            if shape not in TENSOR_SHAPES:
                raise RuleError(f"{origin}: unknown shape rule '{shape}' for {name}",
                                _token_span(text, rule.children[3]),
                                hint="one of " + ", ".join(TENSOR_SHAPES))
            if axis in params:
                raise RuleError(f"{origin}: the axis keyword {axis} of {name} repeats a "
                                "parameter", _token_span(text, rule.children[2]),
                                hint="give the axis keyword a name of its own (axis)")
            _not_a_builtin(rule, "tensor", origin, text, shape)
            arity = TENSOR_ARITY.get(shape, 1)
            if shape == "cotangent" and axis is None and len(params) == arity:
                raise RuleError(f"{origin}: a tensor primitive of shape rule cotangent works "
                                f"along axes: {name} declares no axis keyword",
                                _token_span(text, rule.children[3]),
                                hint=f"tensor {name}({', '.join(params)}; axis) -> cotangent = "
                                     "...: the axis keyword of the primitive whose pullback "
                                     "it is")
            if len(params) != arity or (axis is not None and arity != 1 and
                                        shape not in AXIS_SHAPES):
                params_tree = rule.children[1]
                what = "one argument" if arity == 1 else f"{arity} arguments" + (
                    "" if shape in AXIS_SHAPES else " and no axis")
                raise RuleError(f"{origin}: a tensor primitive of shape rule {shape} takes "
                                f"{what}, {name} declares {len(params)}"
                                + (" and an axis" if axis is not None else ""),
                                Span(text, params_tree.meta.start_pos, params_tree.meta.end_pos),
                                hint="write a function of several tensors as a `def` in terms "
                                     "of tensor primitives of one argument (square_rhs, "
                                     "square_square, square_square_pair, cotangent and "
                                     "weighted take two, square_square_square three)")
            functions.append(Function(name, "tensor", params,
                                      _impl(rule.children[4], text, origin, allow_imports),
                                      axis=axis, shape=shape, origin=origin))
    return functions


def _param(token, name: str, seen: set, origin: str, text: str) -> str:
    """A parameter's name, checked: a name (not a constant), and not one `seen` before in the
    same list (a rule of f(x, x) could never tell its arguments apart)."""
    if str(token) in ("True", "False", "None"):
        raise RuleError(f"{origin}: {token} is a constant, not a name for a parameter of "
                        f"{name}", _token_span(text, token))
    if str(token) in seen:
        raise RuleError(f"{origin}: the parameter {token} of {name} repeats",
                        _token_span(text, token),
                        hint="give each parameter its own name, as in Python")
    seen.add(str(token))
    return str(token)


def _params(tree: lark.Tree, name: str, origin: str, text: str) -> tuple[str, ...]:
    """The parameters of an elementwise or tensor primitive, or of a derivative rule."""
    seen: set = set()
    return tuple(_param(token, name, seen, origin, text) for token in tree.children)


def _not_a_builtin(rule: lark.Tree, kind: str, origin: str, text: str,
                   shape: str | None = None) -> None:
    """Refuse a rule for a function that the language lowers itself (`sum`, `mean`, `dot`...:
    lower/calls.py's BUILTINS): lowering never asks the rule book for it, so the rule would be
    ignored (`def mean`) or would break the rewrites that call it (`def sum`). `norm`, lowered
    there as the tensor primitive norm of the tables, keeps that kind and shape rule."""
    from ..lower.calls import BUILTINS, TABLE_BACKED
    token = rule.children[0]
    name = str(token)
    if name not in BUILTINS:
        return
    backed = TABLE_BACKED.get(name)
    if backed is not None and (kind == "derivative" or (kind == "tensor" and shape == backed)):
        return
    if backed is not None:
        what = (f"lowered by einderiv as the tensor primitive {name} of shape rule {backed}: "
                f"a rule file may replace its tensor line (shape rule {backed}) or its "
                "derivative, not make it")
        made = {"def": "a definition", "elementwise": "an elementwise primitive"}.get(
            kind, f"a tensor primitive of shape rule {shape}")
        message = f"{name} is {what} {made}"
    elif kind == "derivative":
        message = (f"{name} is a built-in function of the language, which einderiv lowers and "
                   "differentiates itself: a rule file cannot give it a derivative rule")
    else:
        message = (f"{name} is a built-in function of the language, which einderiv lowers "
                   "itself, never looking it up in the rule tables: a rule file cannot "
                   "redefine it")
    raise RuleError(f"{origin}: {message}", _token_span(text, token),
                    hint=f"give your function a name of its own, such as my_{name}")


def _definition(rule: lark.Tree, origin: str, text: str) -> Function:
    """`def NAME(x, y, key=DEFAULT, ...) = BODY`: the tensors first, then the parameters with
    defaults (as Python's, each name once)."""
    name, def_params, body = rule.children
    params, keywords, seen = [], [], set()
    for param in def_params.children:
        token, default = param.children
        _param(token, str(name), seen, origin, text)
        if default is not None:
            keywords.append((str(token), str(default)))
        elif keywords:
            raise RuleError(f"{origin}: the parameter {token} of {name} has no default but "
                            f"follows one with a default", _token_span(text, token),
                            hint="the tensors come first, then the parameters with defaults "
                                 "(as in Python)")
        else:
            params.append(str(token))
    return Function(str(name), "def", tuple(params), body=str(body).strip(), origin=origin,
                    keywords=tuple(keywords))


def _derivative(rule: lark.Tree, origin: str, text: str, parsed=None) -> Derivative:
    """`d NAME(params)[out] / dWRT[wrt] = BODY`, checked: WRT is a parameter, the indices of the
    left are distinct, and (with `parsed`, the body's expression) each is on the right."""
    name, params, out, wrt_token, wrt_idx, body = rule.children
    params = _params(params, str(name), origin, text)
    wrt = str(wrt_token)[1:]
    if wrt not in params:
        raise RuleError(f"{origin}: d{wrt} is not a parameter of {name}({', '.join(params)})",
                        _token_span(text, wrt_token),
                        hint=f"differentiate by one of: {', '.join('d' + p for p in params)}")
    indices = lambda t: tuple(str(i) for i in t.children) if t is not None else ()
    out_idx, wrt_idx_names = indices(out), indices(wrt_idx)
    labels = out_idx + wrt_idx_names
    if len(set(labels)) != len(labels):
        raise RuleError(f"{origin}: an index repeats on the left of the rule for {name}",
                        Span(text, rule.meta.start_pos,
                             wrt_idx.meta.end_pos if wrt_idx else wrt_token.end_pos),
                        hint="give each axis of the result and of the argument its own index")
    if parsed is not None and labels:
        _left_indices_on_the_right(parsed, [*(out.children if out else ()),
                                            *(wrt_idx.children if wrt_idx else ())],
                                   str(name), origin, text)
    start = text.rfind("\n", 0, rule.meta.start_pos) + 1
    end = text.find("\n", rule.meta.start_pos)
    return Derivative(str(name), params, wrt, out_idx, wrt_idx_names, str(body).strip(), origin,
                      text[start:end if end >= 0 else len(text)].rstrip("\r"))


def _left_indices_on_the_right(body, left: list, name: str, origin: str, text: str) -> None:
    """Each index of a rule's left-hand side names an axis of the derivative, so the right-hand
    side must give it: one it lacks has no size and no place in the result (the rule for
    `d inv(X)[i,j] / dX[k,l]` must use i, j, k and l). An index only on the right is summed."""
    from ..parse import ast
    used, stack = [], [body]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Index):
            used += [i.id for i in e.items if isinstance(i, ast.Name)]
            stack += [e.operand, *(i for i in e.items if isinstance(i, ast.Expr))]
        elif isinstance(e, ast.Call):
            stack += [*e.args, *(v for _, v in e.kwargs)]
        elif isinstance(e, ast.Tuple):
            stack += e.items
        elif isinstance(e, ast.Slice):
            stack += [p for p in (e.lo, e.hi, e.step) if p is not None]
        elif isinstance(e, ast.Expr):
            stack += e.children()
    names = [str(t) for t in left]
    for token in left:
        if str(token) not in used:
            summed = sorted(set(used) - set(names))
            raise RuleError(
                f"{origin}: the index {token} of the left-hand side is not on the right: the "
                f"derivative of {name} has an axis {token} that the right-hand side does not "
                "give", _token_span(text, token),
                hint="use every index of the left on the right, as in d inv(X)[i,j] / "
                     "dX[k,l] = -inv(X)[i,k] * inv(X)[l,j]" + (
                         f" (an index only on the right, as {', '.join(summed)} here, is "
                         "summed over)" if summed else ""))


# Calls that lower to index patterns (contractions, deltas), not to function applications.
STRUCTURAL = {"sum", "mean", "dot", "outer", "tr", "trace", "diag", "eye", "einsum", "ones",
              "zeros", "size", "pad", "stack"}
AXIS = "axis"  # in a rewrite, the variable that stands for the axes of its reductions


def _rewrite(token, origin: str, text: str) -> Rewrite:
    """A rewrite line's two sides, parsed and checked: every variable of the replacement is in
    the pattern, none is used more often there, and the replacement calls fewer functions, or
    as many with no more numbers and fewer numbers as terms of a sum (`1 + u`), fewer uses of
    the variables or fewer numbers as exponents (`u ** 2`), or, with no number and no sum on
    the right, at most one call more per number it takes out as a term of a sum (`1 -
    softmax(x) = complement(softmax(x))`): each rewrite then makes the program's expression
    tree smaller, in calls and numbers as terms of a sum, else in leaves, else in the numbers of
    its powers, else (as many of each: `softmax(x) - y = softmax_minus(x, y)`) in its sums, and
    rewriting ends. (`axis` may be used more often: it names axes.)"""
    body = str(token)
    unbalanced = _unbalanced_bracket(body)
    if unbalanced is not None:  # else no '=' is at the top level, and the error would say so
        at, why = unbalanced
        raise RuleError(f"{origin}: {why}", Span(text, token.start_pos + at,
                                                 token.start_pos + at + 1), hint=SYNTAX_HINT)
    split = _top_level_equals(body)
    where = Span(text, token.start_pos + len(body) - len(body.lstrip()), token.end_pos)
    if split is None:
        raise RuleError(f"{origin}: a rewrite is 'rewrite PATTERN = REPLACEMENT'", where,
                        hint=SYNTAX_HINT)
    sides = []
    for lo, hi in ((0, split), (split + 1, len(body))):
        part = body[lo:hi]
        start = token.start_pos + lo + len(part) - len(part.lstrip())
        expr = _parse_expression(part.strip(), text, start, origin)
        sides.append((part.strip(), expr, start))
    (pattern, lhs, lstart), (replacement, rhs, rstart) = sides
    from ..parse import ast
    if isinstance(lhs, ast.Name):
        raise RuleError(f"{origin}: the pattern of a rewrite is a variable alone: it would "
                        "match everything", Span(text, lstart, lstart + len(pattern)))
    left, right = _Uses(lhs), _Uses(rhs)
    for name, node in right.first.items():
        span = Span(text, rstart + node.span.start, rstart + node.span.end) if node.span \
            else where
        if name not in left.count:
            raise RuleError(f"{origin}: '{name}' in the replacement is not a variable of the "
                            "pattern", span, hint="a rewrite can only use what it matched")
        # `axis` is no subtree: it names axes, and passing them to one call more adds no call,
        # leaf or power to the program (`1 - softmax(x, axis) = complement(softmax(x, axis),
        # axis)`)
        if name != AXIS and right.count[name] > left.count[name]:
            raise RuleError(f"{origin}: the replacement uses '{name}' more often than the "
                            "pattern: rewriting might not end", span,
                            hint="each variable at most as often on the right as on the left")
    for uses, start in ((left, lstart), (right, rstart)):
        if uses.misplaced_axis is not None:
            node = uses.misplaced_axis
            raise RuleError(f"{origin}: '{AXIS}' stands for the axes of a reduction: it can "
                            "only be passed as the axis of sum, mean or an axis function",
                            Span(text, start + node.span.start, start + node.span.end)
                            if node.span else where)
    # Each rewrite makes the program's expression tree smaller: fewer function applications,
    # or as many and fewer leaves (each variable stands for a subtree with one leaf at least,
    # and a number or a negation is a constant leaf of the IR), or as many of both and fewer
    # numbers as exponents (`hypot(a, b) ** 2 = square(a) + square(b)`: the exponent is a
    # leaf of its own, `pow(h, 2)`, which no variable's value can take in, unlike a scale),
    # so that (calls, leaves, such exponents) decreases and rewriting ends.
    # A number that is a term of a sum is a leaf too (`log(1 + u) = log1p(u)` takes out the 1),
    # one the matcher cannot make up: a pattern's sum matches a sum that has that term (scaled
    # alike), never a node without it. Not so a negation or a scale, which it can give a
    # variable (`cos(-u)` matches `cos(w)` with u = -w): those count only as no more.
    # A number that is a term of a sum may also pay for one call more, as long as the
    # replacement has no number and no sum at all (`1 - softmax(x) = complement(softmax(x))`):
    # then the replacement makes no number a term of a sum, by itself or with what a variable
    # stands for (a sum of its own could take in a number that a variable matched), so the
    # program's calls and such numbers together are no more, and its leaves fewer (the number
    # is gone, the variables' subtrees are used no more often). The measure that decreases is
    # then (calls + numbers as terms of a sum, leaves, calls, numbers as exponents, sums), and
    # every rule must decrease it: fewer calls only where the numbers as terms do not make up
    # for them, or make up for them exactly with no more leaves (`tanh(u) * tanh(u) = 1 -
    # sech2(u)`; `complement(p) = 1 - p`, one leaf more, would undo the rewrite above forever).
    # Last, as many of all these and fewer sums (`softmax(x) - y = softmax_minus(x, y)`, a
    # difference made one call): the additions a sum makes are one fewer for each, and
    # the variables' subtrees, used no more often, bring no more.
    uses = lambda u: sum(n for name, n in u.count.items() if name != AXIS)  # noqa: E731
    cost_left, cost_right = left.calls + left.terms, right.calls + right.terms
    if right.calls > left.calls:
        # (one call per sum with a number: lowering folds the numbers of a sum into one)
        ends = (right.calls <= left.calls + left.numbered_sums and right.constants == 0 and
                right.sums == 0 and uses(right) <= uses(left) and
                right.exponents <= left.exponents)
    elif right.calls < left.calls:
        ends = cost_right < cost_left or cost_right == cost_left and (
            right.constants + uses(right) <= left.constants + uses(left))
    else:
        ends = right.constants <= left.constants and right.terms <= left.terms and (
            right.terms < left.terms or uses(right) < uses(left) or
            right.exponents < left.exponents or (
                uses(right) == uses(left) and right.exponents == left.exponents and
                right.sums < left.sums))
    if not ends:
        raise RuleError(f"{origin}: the replacement must call fewer functions than the pattern "
                        f"(counting / and **), or as many with no more numbers and fewer numbers "
                        f"as terms of a sum (1 + u), fewer uses of the variables, fewer "
                        f"numbers as exponents (** 2) or fewer sums, so that rewriting ends: "
                        f"{right.calls} is not fewer than {left.calls}", where,
                        hint="one call more only for each number taken out as a term of a sum, "
                             "with no number and no sum on the right (1 - softmax(x) = "
                             "complement(softmax(x)))")
    return Rewrite(pattern, replacement, tuple(left.count), tuple(dict.fromkeys(
        [*left.functions, *right.functions])), origin)


def _unbalanced_bracket(body: str) -> tuple[int, str] | None:
    """(offset, what is wrong) of the first bracket of `body` without its partner, or None."""
    open_ = []
    for k, ch in enumerate(body):
        if ch in "([":
            open_.append(k)
        elif ch in ")]":
            if not open_:
                return k, f"'{ch}' closes no bracket"
            opened = body[open_.pop()]
            if opened != "(["[")]".index(ch)]:
                return k, f"'{ch}' cannot close '{opened}'"
    if open_:
        return open_[-1], f"the bracket '{body[open_[-1]]}' is never closed"
    return None


def _top_level_equals(body: str) -> int | None:
    depth = 0
    for k, ch in enumerate(body):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "=" and depth == 0:
            return k
    return None


def _parse_expression(source: str, text: str, start: int, origin: str):
    from ..errors import ParseError
    from ..parse import ast, parse
    try:
        program = parse(source)
    except ParseError as e:
        lo, hi = (e.span.start, e.span.end) if e.span else (0, len(source))
        raise RuleError(f"{origin}: a side of the rewrite does not parse: {e.message}",
                        Span(text, start + lo, start + max(hi, lo + 1)), hint=e.hint) from None
    if len(program.statements) != 1 or not isinstance(program.statements[0], ast.Expr):
        raise RuleError(f"{origin}: each side of a rewrite is one expression",
                        Span(text, start, start + max(1, len(source))))
    return program.statements[0]


class _Uses:
    """What one side of a rewrite uses: its free names (with counts), the functions it calls,
    how many function applications it makes, and an `axis` out of place (if any)."""

    def __init__(self, expr):
        from ..parse import ast
        self.count: dict[str, int] = {}
        self.first: dict = {}
        self.functions: list[str] = []
        self.calls = 0
        self.constants = 0  # numbers and negations
        self.terms = 0  # numbers that are terms of a sum (the 1 of `1 + u`, of `exp(u) - 1`)
        self.exponents = 0  # numbers as the exponent of a power (`u ** 2`)
        self.sums = 0  # binary + and -
        self.numbered_sums = 0  # sums (a chain of + and -) with a number among their terms
        self.misplaced_axis = None
        stack, axis_slots, inner = [expr], set(), set()
        while stack:  # a side is one line: small, but walked without recursion all the same
            e = stack.pop()
            if isinstance(e, ast.Name):
                if e.id == AXIS and id(e) not in axis_slots:
                    self.misplaced_axis = self.misplaced_axis or e
                self.count[e.id] = self.count.get(e.id, 0) + 1
                self.first.setdefault(e.id, e)
            elif isinstance(e, ast.BinOp):
                self.calls += e.op in ("/", "**")
                if e.op in ("+", "-"):
                    self.sums += 1
                    inner.update(id(t) for t in (e.left, e.right)
                                 if isinstance(t, ast.BinOp) and t.op in ("+", "-"))
                    self.numbered_sums += id(e) not in inner and _has_number_term(e)
                    self.terms += sum(isinstance(t, ast.Number) for t in (e.left, e.right))
                self.exponents += e.op == "**" and isinstance(e.right, ast.Number)
                stack += [e.right, e.left]
            elif isinstance(e, ast.Call):
                self.functions.append(e.func)
                self.calls += e.func not in STRUCTURAL
                if len(e.args) == 2:
                    axis_slots.add(id(e.args[1]))
                axis_slots.update(id(v) for k, v in e.kwargs if k == AXIS)
                stack += [*reversed([v for _, v in e.kwargs]), *reversed(e.args)]
            elif isinstance(e, ast.Tuple):
                stack += reversed(e.items)
            elif isinstance(e, (ast.Number, ast.UnaryOp)):
                self.constants += isinstance(e, ast.Number) or e.op == "-"
                stack += reversed(e.children())
            elif isinstance(e, ast.Index):
                stack += [*reversed([i for i in e.items if isinstance(i, ast.Expr)]), e.operand]
            else:
                stack += reversed(e.children())


def _has_number_term(e) -> bool:
    """Whether a number is a term of the chain of + and - at `e`."""
    from ..parse import ast
    stack = [e]
    while stack:
        t = stack.pop()
        if isinstance(t, ast.Number):
            return True
        if isinstance(t, ast.BinOp) and t.op in ("+", "-"):
            stack += [t.left, t.right]
    return False


def _token_span(text: str, token) -> Span | None:
    start = getattr(token, "start_pos", None)
    return None if start is None else Span(text, start, token.end_pos)


def _unexpected(e: lark.exceptions.UnexpectedInput) -> str:
    """What the rule parser tripped on, in words."""
    token = getattr(e, "token", None)
    if token is not None:
        if token.type in ("_NL", "$END") or not str(token).strip():
            return "the line ends too early"
        return f"unexpected '{str(token).split()[0]}'"
    char = getattr(e, "char", None)
    return f"unexpected '{char}'" if char else "the file ends too early"


def _parse_body(token, text: str, origin: str):
    """Parse a rule's right-hand side, reporting an error at its place in the rule file; its
    expression (None for more than one statement, which applying the rule reports)."""
    from ..errors import ParseError
    from ..parse import parse
    body = str(token)
    start = token.start_pos + len(body) - len(body.lstrip())
    try:
        program = parse(body.strip())
    except ParseError as e:
        lo, hi = (e.span.start, e.span.end) if e.span else (0, len(body.strip()))
        raise RuleError(f"{origin}: the right-hand side does not parse: {e.message}",
                        Span(text, start + lo, start + max(hi, lo + 1)), hint=e.hint) from None
    from ..parse import ast
    statements = program.statements
    return statements[0] if len(statements) == 1 and isinstance(statements[0], ast.Expr) \
        else None


TRUST_HINT = ("a rule file that imports modules is trusted code, like a Python script: if you "
              "trust this one, load it with einderiv.load_rules(path, allow_imports=True) or "
              "pass --allow-imports")


def _impl(tree: lark.Tree, text: str, origin: str, allow_imports: bool) -> str:
    token = tree.children[0]
    impl = str(token)
    problem = impl_problem(impl)
    if problem is None and tree.data != "imported":
        # Resolved now (against numpy, which imports nothing of the file's choosing), so that a
        # name that is not a function is an error at its line, not at the first call.
        problem = _resolve_problem(impl, np)
    if problem:
        raise RuleError(f"{origin}: {problem}", _token_span(text, token), hint=IMPL_HINT)
    if tree.data == "imported" and not allow_imports:
        module = impl.split(":")[0]
        raise RuleError(f"{origin}: the implementation {impl} imports the Python module "
                        f"'{module}', which runs its code; imports are off unless allowed",
                        _token_span(text, token), hint=TRUST_HINT)
    return impl


IMPL_HINT = ("name a function: xp.NAME or xp.linalg.NAME of the array library, "
             "kernel.NAME of einderiv's kernels, or module:NAME (an import: trusted code)")

_PART = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The submodules of the array namespace that an implementation may name a function of. Any
# longer chain could walk through a module that the library imports (numpy.f2py.os,
# numpy.ctypeslib.ctypes) to os.system or sys.exit without an import of the file's own. (Not
# fft: its results are complex, and the language's values are real.)
XP_SUBMODULES = ("linalg",)


def impl_problem(impl: str) -> str | None:
    """Why `impl` may not name an implementation, or None.

    An implementation is a function of the array namespace (`xp.exp`, `xp.linalg.inv`), a
    kernel (`kernel.softmax`) or `module:attribute`; every part is a public name. A part
    starting with '_' would reach private or special attributes (`xp.__class__.__bases__`),
    from which any object of the process can be found; a longer chain would reach the modules
    the library imports (`xp.f2py.sys.exit`).
    """
    if impl.startswith("xp.") or impl.startswith("kernel."):
        parts = impl.split(".")[1:]
    elif impl.count(":") == 1:
        module, attr = impl.split(":")
        parts = [*module.split("."), attr]
    else:
        return f"the implementation {impl!r} is not xp.NAME, kernel.NAME or module:NAME"
    for part in parts:
        if not _PART.fullmatch(part):
            what = "private or special" if part.startswith("_") else "malformed"
            return (f"the implementation {impl!r} reaches the {what} name '{part}': only "
                    "public names may be used")
    if impl.startswith("kernel.") and len(parts) > 1:
        return f"the implementation {impl!r} is not a kernel: write kernel.NAME"
    if impl.startswith("xp.") and len(parts) > 1 and not (
            len(parts) == 2 and parts[0] in XP_SUBMODULES):
        return (f"the implementation {impl!r} is not a function of the array namespace: "
                "only xp.NAME and xp.linalg.NAME are (a longer chain would reach other "
                "modules)")
    return None


def _lookup(impl: str, xp):
    if impl.startswith("xp."):
        target = xp
        for part in impl[3:].split("."):
            target = getattr(target, part)
        return target
    if impl.startswith("kernel."):
        from ..evaluate import kernels
        return getattr(kernels, impl[len("kernel."):])
    module, attr = impl.split(":")
    return getattr(importlib.import_module(module), attr)


def _resolve_problem(impl: str, xp) -> str | None:
    """Why the `xp.`/`kernel.` implementation `impl` (of a valid form) names no function of
    `xp` or of the kernels, or None."""
    try:
        target = _lookup(impl, xp)
    except AttributeError as e:
        return f"cannot find the implementation {impl!r}: {e}"
    return _not_a_function(impl, target)


def _not_a_function(impl: str, target) -> str | None:
    # A module or a class is a way on to other objects (their attributes), never an
    # implementation; a function or a ufunc is what the generated code calls.
    if inspect.isroutine(target) or isinstance(target, np.ufunc):
        return None
    what = ("a module" if inspect.ismodule(target) else "a class" if inspect.isclass(target)
            else f"a {type(target).__name__}")
    return f"the implementation {impl!r} is {what}, not a function"


def resolve(impl: str, xp):
    """The callable that an `impl` string names, for the array namespace `xp`."""
    problem = impl_problem(impl)
    if problem:
        raise RuleError(problem, hint=IMPL_HINT)
    try:
        target = _lookup(impl, xp)
    except (AttributeError, ImportError, ValueError) as e:
        raise RuleError(f"cannot find the implementation {impl!r}: {e}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a trusted module that fails on import, SystemExit included
        raise RuleError(f"importing the module of the implementation {impl!r} failed: "
                        f"{type(e).__name__}: {e}") from None
    if ":" not in impl:  # a trusted module's attribute is whatever that module says it is
        problem = _not_a_function(impl, target)
        if problem:
            raise RuleError(problem, hint=IMPL_HINT)
    return target


# The process-wide rule book. Readers take the reference once and use that book; writers
# (load_rules) build a new book from it under the lock and swap the reference, so a reader never
# sees a book change while it iterates.
_DEFAULT: RuleBook | None = None
_WRITING = threading.RLock()
# A rule book in force for the current thread or context only (`using_rules`), e.g. the rule
# files of one command line run.
_IN_FORCE: contextvars.ContextVar = contextvars.ContextVar("einderiv_rules", default=None)


def default_rulebook() -> RuleBook:
    """The rule book in force: the one `using_rules` set here, else the shipped rules plus any
    added with `load_rules`. It is frozen; safe to use from any thread."""
    book = _IN_FORCE.get()
    if book is not None:
        return book
    book = _DEFAULT
    if book is None:
        book = _shipped()
    return book


def _shipped() -> RuleBook:
    global _DEFAULT
    with _WRITING:
        if _DEFAULT is None:
            book = RuleBook()
            for path in sorted(rules_dir().glob("*.rules")):
                book.load(path, allow_imports=True)  # the shipped tables are trusted
            _DEFAULT = book.freeze()
        return _DEFAULT


def load_rules(path: str | Path, allow_imports: bool = False) -> None:
    """Add a user's rule file to the rules every later call uses, in every thread (the rule book
    in force is `default_rulebook()`). Results made before keep the rules they were made with.

    A rule file whose implementations name `module:attribute` imports that module, so it is
    trusted code: it loads only with `allow_imports=True` (a `RuleError` otherwise). `xp.` and
    `kernel.` implementations and derivative rules are data: no text of a rule file is
    evaluated, and such an implementation must name a function (`xp.NAME`, `xp.linalg.NAME`,
    `kernel.NAME`), never a module or a class.

    >>> import einderiv, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "mine.rules")
    >>> _ = open(p, "w").write("def cube(x) = x * x * x\\n")
    >>> einderiv.load_rules(p)
    >>> float(einderiv.compile("cube(x)", {"x": ()})(x=2.0))
    8.0
    """
    global _DEFAULT
    with _WRITING:  # one writer at a time, so that two loads at once both take effect
        base = _DEFAULT if _DEFAULT is not None else _shipped()
        _DEFAULT = base.copy().load(path, allow_imports=allow_imports).freeze()


@contextlib.contextmanager
def using_rules(book: RuleBook):
    """Within the block, `book` (frozen now) is the rule book in force for this thread (or
    asyncio task) only: the process-wide one is untouched, for other threads and afterwards."""
    token = _IN_FORCE.set(book.freeze())
    try:
        yield book
    finally:
        _IN_FORCE.reset(token)
