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
        self.add(parse_rules(text, str(path)))
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


def parse_rules(text: str, filename: str = "<rules>") -> list:
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        pos = getattr(e, "pos_in_stream", None) or 0
        raise RuleError(f"{filename}:{e.line}:{e.column}: malformed rule",
                        Span(text, pos, pos + 1),
                        hint="see the comment at the top of rules/*.rules for the syntax") from None
    functions = []
    for rule in tree.children:
        if not isinstance(rule, lark.Tree):
            continue
        origin = f"{filename}:{rule.meta.line}"
        name = str(rule.children[0])
        params = tuple(str(p) for p in rule.children[1].children)
        if rule.data == "elementwise":
            functions.append(Function(name, "elementwise", params, _impl(rule.children[2]),
                                      origin=origin))
        elif rule.data == "derivative":
            functions.append(_derivative(rule, origin))
        elif rule.data == "tensor":
            axis = str(rule.children[2]) if rule.children[2] is not None else None
            shape = str(rule.children[3])
            if shape not in TENSOR_SHAPES:
                raise RuleError(f"{origin}: unknown shape rule '{shape}' for {name}",
                                hint="one of " + ", ".join(TENSOR_SHAPES))
            functions.append(Function(name, "tensor", params, _impl(rule.children[4]),
                                      axis=axis, shape=shape, origin=origin))
        else:
            functions.append(Function(name, "def", params, body=str(rule.children[2]).strip(),
                                      origin=origin))
    return functions


def _derivative(rule: lark.Tree, origin: str) -> Derivative:
    name, params, out, wrt, wrt_idx, body = rule.children
    params = tuple(str(p) for p in params.children)
    wrt = str(wrt)[1:]
    if wrt not in params:
        raise RuleError(f"{origin}: d{wrt} is not a parameter of {name}({', '.join(params)})")
    indices = lambda t: tuple(str(i) for i in t.children) if t is not None else ()
    out, wrt_idx = indices(out), indices(wrt_idx)
    if len(set(out + wrt_idx)) != len(out + wrt_idx):
        raise RuleError(f"{origin}: an index repeats on the left of the rule for {name}")
    return Derivative(str(name), params, wrt, out, wrt_idx, str(body).strip(), origin)


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
