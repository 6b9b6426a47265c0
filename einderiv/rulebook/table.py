"""Read rule files into a `RuleBook`: which functions exist, their kind, and how to evaluate them.

The core never names a specific function: lowering asks the rule book whether `foo` is an
elementwise primitive, a tensor primitive or a definition, and evaluation asks it for `foo`'s
implementation.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lark

from ..errors import RuleError, Span


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
    body: str | None = None  # a definition's expression, in the language of SPEC §1
    axis: str | None = None  # a tensor primitive's axis keyword, if it takes one
    shape: str | None = None  # a tensor primitive's shape rule: same, reduce, square, square_scalar
    origin: str = ""  # "file:line"

    @property
    def arity(self) -> int:
        return len(self.params)

    def __str__(self) -> str:
        """The function's line in a rule file (spaces normalised)."""
        params = ", ".join(self.params)
        if self.kind == "def":
            return f"def {self.name}({params}) = {self.body}"
        if self.kind == "tensor":
            axis = f"; {self.axis}" if self.axis else ""
            return f"tensor {self.name}({params}{axis}) -> {self.shape} = {self.impl}"
        return f"{self.kind} {self.name}({params}) = {self.impl}"


# How a tensor primitive's result shape follows from its argument's.
TENSOR_SHAPES = {
    "same": "shaped like the argument (an axis keyword may pick the axes it works along)",
    "reduce": "the argument's shape without the axes it reduces (all of them by default)",
    "square": "a square matrix (or a stack of them) to the same shape",
    "square_scalar": "a square matrix (or a stack of them) to a scalar (one per matrix)",
}


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
    """All functions known to the language, by name."""

    def __init__(self):
        self.functions: dict[str, Function] = {}
        self.derivatives: dict[tuple[str, str], Derivative] = {}  # (function, param) -> rule
        self.files: list[Path] = []

    def copy(self) -> "RuleBook":
        other = RuleBook()
        other.functions = dict(self.functions)
        other.derivatives = dict(self.derivatives)
        other.files = list(self.files)
        return other

    def derivative(self, function: str, position: int) -> Derivative | None:
        """The rule for the derivative of `function` by its argument number `position`."""
        f = self.functions.get(function)
        if f is None or position >= f.arity:
            return None
        return self.derivatives.get((function, f.params[position]))

    def load(self, path: str | Path) -> "RuleBook":
        """Add the rules in `path` (a later rule for a name replaces an earlier one)."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise RuleError(f"cannot read rule file {path}: {e}") from None
        self.add(parse_rules(text, str(path), bodies=True))
        self.files.append(path)
        return self

    def add(self, rules: list) -> "RuleBook":
        for rule in rules:
            if isinstance(rule, Derivative):
                self.derivatives[(rule.function, rule.wrt)] = rule
            else:
                self.functions[rule.name] = rule
        return self

    def get(self, name: str) -> Function | None:
        return self.functions.get(name)

    def in_file_order(self) -> list:
        """Every function and derivative rule, by file (in load order) and line."""
        order = {str(p): i for i, p in enumerate(self.files)}

        def key(rule):
            file, _, line = rule.origin.rpartition(":")
            return order.get(file, len(order)), file, int(line) if line.isdigit() else 0
        return sorted([*self.functions.values(), *self.derivatives.values()], key=key)


SYNTAX_HINT = "see the comments at the top of rules/*.rules for the syntax, or CONTRIBUTING.md"


def parse_rules(text: str, filename: str = "<rules>", bodies: bool = False) -> list:
    """The rules of a rule file's `text`. `bodies`: also parse every right-hand side now, so
    that a typo there is reported with a caret in the file rather than when the rule is used."""
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
        if bodies and rule.data in ("derivative", "definition"):
            _parse_body(rule.children[-1], text, origin)
        name = str(rule.children[0])
        params = tuple(str(p) for p in rule.children[1].children)
        if rule.data == "elementwise":
            functions.append(Function(name, "elementwise", params, _impl(rule.children[2]),
                                      origin=origin))
        elif rule.data == "derivative":
            functions.append(_derivative(rule, origin, text))
        elif rule.data == "tensor":
            axis = str(rule.children[2]) if rule.children[2] is not None else None
            shape = str(rule.children[3])
            if shape not in TENSOR_SHAPES:
                raise RuleError(f"{origin}: unknown shape rule '{shape}' for {name}",
                                _token_span(text, rule.children[3]),
                                hint="one of " + ", ".join(TENSOR_SHAPES))
            if len(params) != 1:
                params_tree = rule.children[1]
                raise RuleError(f"{origin}: a tensor primitive takes one argument, {name} "
                                f"declares {len(params)}",
                                Span(text, params_tree.meta.start_pos, params_tree.meta.end_pos),
                                hint="write a function of several tensors as a `def` in terms "
                                     "of tensor primitives of one argument")
            functions.append(Function(name, "tensor", params, _impl(rule.children[4]),
                                      axis=axis, shape=shape, origin=origin))
        else:
            functions.append(Function(name, "def", params, body=str(rule.children[2]).strip(),
                                      origin=origin))
    return functions


def _derivative(rule: lark.Tree, origin: str, text: str) -> Derivative:
    name, params, out, wrt_token, wrt_idx, body = rule.children
    params = tuple(str(p) for p in params.children)
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
    return Derivative(str(name), params, wrt, out_idx, wrt_idx_names, str(body).strip(), origin)


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


def _parse_body(token, text: str, origin: str) -> None:
    """Parse a rule's right-hand side, reporting an error at its place in the rule file."""
    from ..errors import ParseError
    from ..parse import parse
    body = str(token)
    start = token.start_pos + len(body) - len(body.lstrip())
    try:
        parse(body.strip())
    except ParseError as e:
        lo, hi = (e.span.start, e.span.end) if e.span else (0, len(body.strip()))
        raise RuleError(f"{origin}: the right-hand side does not parse: {e.message}",
                        Span(text, start + lo, start + max(hi, lo + 1)), hint=e.hint) from None


def _impl(tree: lark.Tree) -> str:
    return str(tree.children[0])


def resolve(impl: str, xp):
    """The callable that an `impl` string names, for the array namespace `xp`."""
    try:
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
    except (AttributeError, ImportError, ValueError) as e:
        raise RuleError(f"cannot find the implementation {impl!r}: {e}") from None


_DEFAULT: RuleBook | None = None


def default_rulebook() -> RuleBook:
    """The shipped rules plus any added with `load_rules`."""
    global _DEFAULT
    if _DEFAULT is None:
        book = RuleBook()
        for path in sorted(rules_dir().glob("*.rules")):
            book.load(path)
        _DEFAULT = book
    return _DEFAULT


def load_rules(path: str | Path) -> RuleBook:
    """Add a user's rule file to the rules every later call uses.

    >>> import einderiv, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "mine.rules")
    >>> _ = open(p, "w").write("def cube(x) = x * x * x\\n")
    >>> _ = einderiv.load_rules(p)
    >>> float(einderiv.compile("cube(x)", {"x": ()})(x=2.0))
    8.0
    """
    return default_rulebook().load(path)
