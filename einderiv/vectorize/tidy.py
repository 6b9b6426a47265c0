"""The last touches of a vectorized program: the forms a person writes.

The translation from the IR writes each product, sum and scale as it comes (`-log(p) + -1`,
`0.5 * (1 / sqrt(x))`, `y * x * y`, `-(-(1 / x) / x)`); these are the same values written the
way a person would (`-log(p) - 1`, `0.5 / sqrt(x)`, `y ** 2 * x`, `1 / x / x`). Each rule is
local, looks a bounded depth into its operands, and is exact or within rounding of the original:

- signs: `a + -b` is `a - b`, `a - -b` is `a + b`, `-a + b` is `b - a`, `--a` is `a`, two
  minus signs cancel through a matrix product (`-(A @ -u)` is `A @ u`), and a negated product
  or quotient carries its minus on its first factor (`-(1 / x)` is `-1 / x`);
- reciprocals: `c * (1 / y)` is `c / y`, and a scale that is the reciprocal of a whole number
  divides (`0.3333333333333333 * x` is `x / 3`); `a / b / b` stays, where `a / b ** 2` would
  overflow with b ** 2 (the quotient rule is written `-(a / b) / b` for that);
- a number multiplies the first factor of a product (`2 * (y * x)` is `2 * y * x`);
- a factor times itself is its power (`y * y` is `y ** 2`, `y ** 2 * y` is `y ** 3`, `2 * y *
  y` is `2 * y ** 2`), where the product multiplies nothing else first but a number. `y * x *
  y` stays: joined as `y ** 2 * x` it would reorder the multiplications, and two small factors
  would meet before the large one that kept them apart (the Hessian of
  `sum(sqrt(softplus(x)))` at x = -400, `t0 * (-t2 / t1) * t0`, was twice its value as
  `t0 ** 2 * (t2 / t1)`, t0 ** 2 subnormal), as `a / b ** 2` would overflow where `a / b / b`
  does not.

Programs are rewritten bottom-up with an explicit stack, and every rule walks a bounded part of
its operands (or, for a minus, the first factors of one product), so the pass is linear in the
program however long its sums and chains are. `renumber` then names the temporaries t0, t1, ...
in the order they are defined.
"""
from __future__ import annotations

from math import prod

from ..ir.nodes import Const, Contract, Map, Size
from ..parse import ast
from .contraction import number
from .share import _TEMPORARY, _children, _with_children

# Subexpressions compared for equal factors have at most this many parts: enough for
# `t0[:, None]` or `sigmoid(-x)`, and a bound on the work at each product.
MAX_COMPARED_PARTS = 24
# A product is searched for a repeated factor over at most this many factors.
MAX_SEARCHED_FACTORS = 16


def tidy(temporaries: list, outputs: list) -> tuple[list, list]:
    """Every line's expression rewritten by the rules above, bottom-up, each part once."""
    rewrite = _bottom_up(lambda e, rebuilt: _local(rebuilt))
    return ([(name, rewrite(e)) for name, e in temporaries],
            [(name, rewrite(e)) for name, e in outputs])


def tidy_part(e: ast.Expr) -> ast.Expr:
    """`e`, whose children are tidied already, by the rules above (for a pass that rebuilds
    the program bottom-up anyway: `share_repeats`)."""
    return _local(e)


def _bottom_up(make):
    """A function rebuilding an expression children first, without recursion: each part
    becomes `make(part, part with its children rebuilt)`, once for all the lines it is called
    on (a part shared by lines is rebuilt once)."""
    done: dict[int, ast.Expr] = {}
    alive = []  # keeps the ids in `done` unique

    def rebuild(root):
        stack = [(root, False)]
        while stack:
            e, ready = stack.pop()
            if id(e) in done:
                continue
            parts = _children(e)
            if not ready:
                stack.append((e, True))
                stack.extend((p, False) for p in parts if id(p) not in done)
                continue
            done[id(e)] = make(e, _with_children(e, [done[id(p)] for p in parts]))
            alive.append(e)
        return done[id(root)]

    return rebuild


def renumber(temporaries: list, outputs: list, reserved: set) -> tuple[list, list]:
    """Temporaries named `t<k>` by the vectorizer (not in `reserved`, the user's names) renamed
    t0, t1, ... in the order they are defined: sharing and batching add and drop some."""
    mapping, counter = {}, 0
    for name, _ in temporaries:
        if name in reserved or not _TEMPORARY.fullmatch(name):
            continue
        while f"t{counter}" in reserved:
            counter += 1
        mapping[name] = f"t{counter}"
        counter += 1
    if all(old == new for old, new in mapping.items()):
        return temporaries, outputs
    rename = _bottom_up(lambda e, rebuilt: ast.Name(mapping[e.id]) if isinstance(e, ast.Name)
                        and e.id in mapping else rebuilt)
    return ([(mapping.get(name, name), rename(e)) for name, e in temporaries],
            [(name, rename(e)) for name, e in outputs])


def mean_of(node, named) -> tuple | None:
    """`(x, axes)` when `node` is `mean(x, axes)` as lowering expands it, `sum(x, axes)` times
    one over the axes' sizes that are numbers, divided by those that are names; so that it
    prints as the user wrote it. None otherwise, or when the sum is a temporary of its own
    (`named`: ids of nodes with one), which the division then reads."""
    if type(node) is Contract and len(node.dims) == len(node.out):
        # Nothing summed: a mean only as a scaled sum of its own (`0.5 * sum(x, 0)`), which
        # most products (`c * x`) are not; they are told apart here, once per node translated.
        ops = node.operands
        if len(ops) != 2 or type(ops[0][0]) is not Const or type(ops[1][0]) is not Contract:
            return None
    total, sizes = node, []
    if isinstance(node, Map) and node.fn == "div" and len(node.args) == 2:
        total, size = node.args
        sizes = [size] if isinstance(size, Size) else \
            [s for s, _ in size.operands] if isinstance(size, Contract) and not size.out else [None]
        if id(total) in named or not all(isinstance(s, Size) for s in sizes):
            return None
    if not isinstance(total, Contract):
        return None
    operands, scale = list(total.operands), 1.0
    if len(operands) == 2 and isinstance(operands[0][0], Const):
        scale = operands.pop(0)[0].value
        (inner, labels), = operands
        if isinstance(inner, Contract) and labels == total.out:  # a scaled sum
            total, operands = inner, list(inner.operands)
    if len(operands) != 1:
        return None
    (x, labels), = operands
    if len(set(labels)) != len(labels) or tuple(l for l in labels if l in total.out) != total.out:
        return None
    axes = tuple(a for a, l in enumerate(labels) if l not in total.out)
    dims = [x.shape[a] for a in axes]
    count = prod(d.offset for d in dims if d.is_concrete)
    named_dims = sorted(str(d) for d in dims if not d.is_concrete)
    if not axes or count == 0 or (not sizes and count == 1) or scale != 1.0 / count or \
            sorted(str(s.dim) for s in sizes) != named_dims:
        return None
    return x, axes


# -- the rules -----------------------------------------------------------------------------------

def _local(e: ast.Expr) -> ast.Expr:
    # Each rule is given `e` too, and returns it where it changes nothing: most parts.
    kind = type(e)
    if kind is ast.BinOp:
        rule = _BINARY.get(e.op)
        return e if rule is None else rule(e.left, e.right, e)
    if kind is ast.UnaryOp and e.op == "-":
        return _neg(e.operand, e)
    return e


def _binary(op: str, a: ast.Expr, b: ast.Expr, same: ast.BinOp | None) -> ast.BinOp:
    """`a op b`: `same` itself where it is that."""
    if same is not None and same.op == op and same.left is a and same.right is b:
        return same
    return ast.BinOp(op, a, b, matrix=same is not None and same.op == op and same.matrix)


def _neg(e: ast.Expr, same: ast.UnaryOp | None = None) -> ast.Expr:
    """`-e`: no double minus, and a product's or quotient's minus on its first factor."""
    if isinstance(e, ast.UnaryOp) and e.op == "-":
        return e.operand
    positive = _negated_product(e)
    if positive is not None:  # -(A @ -u) is A @ u
        return positive
    spine = _spine(e, ("*", "/"))
    if spine:
        return _rebuilt(spine, _neg(spine[0].left))
    return same if same is not None and same.operand is e else ast.UnaryOp("-", e)


def _negated(e: ast.Expr) -> ast.Expr | None:
    """`e` without its leading minus (`-a`, `-a * b`), or None when it has none."""
    spine = _spine(e, ("*", "/"))
    first = spine[0].left if spine else e
    if not (isinstance(first, ast.UnaryOp) and first.op == "-"):
        return None
    return _rebuilt(spine, first.operand)


def _negated_product(e: ast.Expr) -> ast.Expr | None:
    """A matrix product with a minus on an operand (`A @ (-u * v)`) without it, or None. Only
    where the minus cancels another one: moved out of the product, it would negate the
    product's result, which the vectorizer left to the smaller operand."""
    if not (isinstance(e, ast.BinOp) and e.op == "@"):
        return None
    positive = _negated(e.right)
    if positive is not None:
        return ast.BinOp("@", e.left, positive, matrix=e.matrix)
    positive = _negated(e.left)
    return None if positive is None else ast.BinOp("@", positive, e.right, matrix=e.matrix)


def _add(a: ast.Expr, b: ast.Expr, same=None) -> ast.Expr:
    positive = _negated(b)
    if positive is None:
        positive = _negated_product(b)
    if positive is not None:
        return ast.BinOp("-", a, positive)
    positive = _negated(a)
    if positive is None:
        positive = _negated_product(a)
    if positive is not None:  # -a + b is b - a, exactly
        return ast.BinOp("-", b, positive)
    return _binary("+", a, b, same)


def _sub(a: ast.Expr, b: ast.Expr, same=None) -> ast.Expr:
    positive = _negated(b)
    if positive is None:
        positive = _negated_product(b)
    if positive is not None:
        return _add(a, positive)
    return _binary("-", a, b, same)


def _mul(a: ast.Expr, b: ast.Expr, same=None) -> ast.Expr:
    c, d = _number(a), _number(b)
    if c is not None and d is not None:
        return number(c * d)
    positive = _negated(b)
    if positive is not None:  # a * -b is -a * b
        return _neg(_mul(a, positive))
    if c is not None:
        return _scale(a, c, b, same)
    if _is_reciprocal(b):  # x * (1 / y) is x / y
        return _quotient(a, b.right)
    if _is_reciprocal(a):
        return _quotient(b, a.right)
    return _collect(a, b, same)


def _scale(a: ast.Expr, c: float, b: ast.Expr, same=None) -> ast.Expr:
    """The number `a` (of value `c`) times `b`."""
    k = _reciprocal_integer(c)
    if k is not None:  # 0.3333333333333333 * x is x / 3
        return _quotient(b if k > 0 else _neg(b), ast.Number(float(abs(k))))
    if _is_reciprocal(b):  # 0.5 * (1 / sqrt(x)) is 0.5 / sqrt(x)
        return _quotient(a, b.right)
    spine = _spine(b, ("*", "/"))
    if 0 < len(spine) < MAX_SEARCHED_FACTORS:  # 2 * (y * x) is 2 * y * x
        return _rebuilt(spine, _mul(a, spine[0].left))
    return _binary("*", a, b, same)


_BINARY = {"+": _add, "-": _sub, "*": _mul}


def _collect(a: ast.Expr, b: ast.Expr, same=None) -> ast.Expr:
    """`a * b`, as one power where `a` is `b`, a power of it, minus either, or a number times
    either (`y * y`, `y ** 2 * y`, `-y * y`, `2 * y * y`): the same multiplications in the same
    order but for the number's, never a factor joined across others (see the module
    docstring)."""
    joined = _joined(a, b)
    if joined is None and isinstance(a, ast.UnaryOp) and a.op == "-":
        joined = _joined(a.operand, b)  # -x * x is -x ** 2
        joined = None if joined is None else ast.UnaryOp("-", joined)
    if joined is None and isinstance(a, ast.BinOp) and a.op == "*" and \
            _number(a.left) is not None:  # 2 * x * x is 2 * x ** 2: a scale moves exactly
        joined = _joined(a.right, b)
        joined = None if joined is None else ast.BinOp("*", a.left, joined)
    return _binary("*", a, b, same) if joined is None else joined


def _joined(a: ast.Expr, b: ast.Expr) -> ast.Expr | None:
    """`a * b` as one power (`y * y` is `y ** 2`, `y ** 2 * y` is `y ** 3`), or None."""
    (base_a, exp_a), (base_b, exp_b) = _power(a), _power(b)
    if exp_a is None or exp_b is None or _number(base_a) is not None:
        return None
    key = _key(base_a)
    if key is None or key != _key(base_b):
        return None
    return ast.BinOp("**", base_a, ast.Number(float(exp_a + exp_b)))


def _power(e: ast.Expr) -> tuple[ast.Expr, float | None]:
    """`(base, n)` for `base ** n` with a whole n >= 1 (`x ** a * x ** b` is `x ** (a + b)` for
    every real x only then), `(e, 1)` for anything else but a power, `(e, None)` for a power."""
    if isinstance(e, ast.BinOp) and e.op == "**":
        n = _number(e.right)
        return (e.left, n) if n is not None and n >= 1 and n == int(n) else (e, None)
    return e, 1.0


# -- the parts the rules look at -----------------------------------------------------------------

def _spine(e: ast.Expr, ops: tuple) -> list:
    """The links of a chain of `ops` down its left side, innermost first: `a * b / c` ->
    [a * b, (a * b) / c], each the left operand of the next; [] when `e` is no such chain."""
    spine = []
    while isinstance(e, ast.BinOp) and e.op in ops:
        spine.append(e)
        e = e.left
    return spine[::-1]


def _rebuilt(spine: list, first: ast.Expr) -> ast.Expr:
    """The chain `spine` with `first` as its innermost left operand."""
    node = first
    for s in spine:
        node = ast.BinOp(s.op, node, s.right)
    return node


def _number(e: ast.Expr) -> float | None:
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.UnaryOp) and e.op == "-" and isinstance(e.operand, ast.Number):
        return -e.operand.value
    return None


def _quotient(a: ast.Expr, b: ast.Expr) -> ast.Expr:
    return ast.BinOp("/", a, b)


def _is_reciprocal(e: ast.Expr) -> bool:
    return isinstance(e, ast.BinOp) and e.op == "/" and _number(e.left) == 1.0


def _reciprocal_integer(c: float) -> int | None:
    """k when `c` is the double nearest 1 / k for a whole k and prints longer than `/ k`."""
    if c == 0 or c != c or abs(c) >= 1 or len(repr(abs(c))) <= 6:
        return None
    k = round(1 / c)
    return k if abs(k) < 2**53 and 1 / k == c else None


def _key(e: ast.Expr) -> tuple | None:
    """A structural key of a small expression (None past MAX_COMPARED_PARTS parts): equal keys,
    the same expression."""
    key, stack = [], [e]
    while stack:
        x = stack.pop()
        if len(key) >= MAX_COMPARED_PARTS:
            return None
        if x is None:
            key.append(None)
        elif isinstance(x, ast.Number):
            key.append(("number", repr(float(x.value))))
        elif isinstance(x, ast.Name):
            key.append(("name", x.id))
        elif isinstance(x, ast.String):
            key.append(("string", x.value))
        elif isinstance(x, ast.NoneLit):
            key.append(("none",))
        elif isinstance(x, ast.BinOp):
            key.append(("binop", x.op))
            stack += [x.right, x.left]
        elif isinstance(x, (ast.UnaryOp, ast.Attribute)):
            key.append((type(x).__name__, getattr(x, "op", None), getattr(x, "attr", None)))
            stack.append(x.operand)
        elif isinstance(x, ast.Index):
            key.append(("index", len(x.items)))
            stack += [*reversed(x.items), x.operand]
        elif isinstance(x, ast.Slice):
            key.append(("slice",))
            stack += [x.step, x.hi, x.lo]
        elif isinstance(x, ast.Tuple):
            key.append(("tuple", len(x.items)))
            stack += reversed(x.items)
        elif isinstance(x, ast.Call):
            key.append(("call", x.func, len(x.args), tuple(k for k, _ in x.kwargs)))
            stack += [*reversed([v for _, v in x.kwargs]), *reversed(x.args)]
        else:
            return None
    return tuple(key)
