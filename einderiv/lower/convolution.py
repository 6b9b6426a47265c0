"""Convolutions and correlations: `correlate`, `convolve`, `conv1d`, `conv2d`,
`conv_transpose1d` and `conv_transpose2d`.

Two primitives, each a `Prim` of two arguments:

- a *correlation* (`correlate`, `conv1d`, `conv2d`): x [XB..., C, S...] and w [WB..., C, K...]
  to [XB..., WB..., (S - K) // s + 1 ...], out[b, o, i] = sum_{c, p} x[b, c, s i + p] w[o, c, p]
  ("valid", strided; numpy's correlate, PyTorch's conv1d and conv2d);
- a *full convolution* (`convolve`, `conv_transpose1d`, `conv_transpose2d`): d [XB..., C, S...]
  and w [C, WB..., K...] to [XB..., WB..., S + K - 1 ...], out[b, o, j] = sum_{c, p}
  d[b, c, j - p] w[c, o, p] (numpy's convolve, PyTorch's conv_transpose1d and 2d at stride 1).

S are the N spatial axes (1 or 2), K the kernel's, C the channel axis they contract (none for
`correlate` and `convolve`, one for the others: several are merged into one by a reshape, none
made one of size 1 for the 2-d pair). The leading axes of the first argument (XB, a batch) and
of the kernel (WB, output channels) may be any number, each of the first's with each of the
second's: PyTorch's layouts are the case of one of each, numpy's of none.

Why core code and not a rule-table line: the Jacobian of a correlation is a band matrix,
d out[i] / d x[j] = w[j - s i], whose indices are shifted, where a rule's indices name whole
axes; written as a tensor it would be n by n - k + 1 entries, contracted with the cotangent
in O(n^2). The pullback is another convolution of this module instead, O(output x kernel):
the adjoint of a correlation by x is the full convolution of its cotangent (dilated by the
stride) with the kernel, by w the correlation of x with that cotangent; the adjoints of a full
convolution are correlations. So the family is closed, and Hessians (two passes, the second
with the seed's axes in front, which become batch axes) come out as convolutions too. As for
lower/linear.py's maps, `derive/reverse.py` asks `pullback`, the IR interpreter `evaluator`,
the printers `surface`, and the kernels are evaluate/kernels.py's.
"""
from __future__ import annotations

from ..errors import ParseError, ShapeError
from ..ir import build
from ..ir.dims import Dim, show_shape
from ..ir.nodes import Delta, Node, Prim
from ..parse import ast
from . import dimensions, linear

# name -> (spatial axes, channel axes)
CORRELATIONS = {"correlate": (1, 0), "conv1d": (1, 1), "conv2d": (2, 1)}
FULL = {"convolve": (1, 0), "conv_transpose1d": (1, 1), "conv_transpose2d": (2, 1)}
_BY_FAMILY = {(True, 1, 0): "correlate", (True, 1, 1): "conv1d", (True, 2, 1): "conv2d",
              (False, 1, 0): "convolve", (False, 1, 1): "conv_transpose1d",
              (False, 2, 1): "conv_transpose2d"}
NAMES = frozenset(CORRELATIONS) | frozenset(FULL)


def is_convolution(node: Node) -> bool:
    return type(node) is Prim and node.fn in NAMES


def family(node: Prim) -> tuple[int, int]:
    """(spatial axes, channel axes) of a node of this module."""
    return CORRELATIONS.get(node.fn) or FULL[node.fn]


# -- building ----------------------------------------------------------------------------------

def correlation(x: Node, w: Node, n: int, c: int, strides: tuple[int, ...], where=None) -> Node:
    """The valid correlation of x [XB..., C(c axes), S(n)] with w [WB..., C, K(n)], strided."""
    x, w, c = _channels(x, w, n, c, kernel_first=False)
    _check(x, w, n, c, False, where)
    spatial = tuple(_valid(l, k, s, where) for l, k, s in zip(x.shape[-n:], w.shape[-n:],
                                                               strides))
    shape = (*x.shape[:x.rank - c - n], *w.shape[:w.rank - c - n], *spatial)
    if build.is_zero(x) or build.is_zero(w):
        return build.zeros(shape)
    fn = _BY_FAMILY[True, n, c]
    return Prim(fn, (x, w), (tuple(strides),), shape)


def full(d: Node, w: Node, n: int, c: int, where=None) -> Node:
    """The full convolution of d [XB..., C(c axes), S(n)] with w [C, WB..., K(n)]."""
    d, w, c = _channels(d, w, n, c, kernel_first=True)
    _check(d, w, n, c, True, where)
    spatial = []
    for l, k in zip(d.shape[-n:], w.shape[-n:]):
        try:
            spatial.append(l + k - 1)
        except ValueError:
            raise ShapeError(f"the full convolution of {l} entries with {k} has {l} + {k} - 1, "
                             "which is not a dimension", where, hint=_NAMED_KERNEL) from None
    shape = (*d.shape[:d.rank - c - n], *w.shape[c:w.rank - n], *spatial)
    if build.is_zero(d) or build.is_zero(w):
        return build.zeros(shape)
    return Prim(_BY_FAMILY[False, n, c], (d, w), (), shape)


_NAMED_KERNEL = ("a dimension is one name plus an integer: declare the kernel's size as an "
                 "integer (w: [3]), or the signal's and the kernel's with one name")


def _valid(length: Dim, k: Dim, s: int, where) -> Dim:
    try:
        room = length - k
    except ValueError:
        raise ShapeError(f"a kernel of {k} entries over {length} gives {length} - {k} + 1, which "
                         "is not a dimension", where, hint=_NAMED_KERNEL) from None
    if room.is_concrete and room.offset < 0:
        raise ShapeError(f"the kernel ({k} entries) is longer than the signal ({length})", where,
                         hint="a valid correlation needs a kernel no longer than the signal; "
                              "pad the signal (mode=\"same\" or \"full\", padding=)")
    # ceil((L - k + 1) / s), written as the step of a slice writes it (lower/linear.py's
    # stride), so that the cotangent spread s apart and stepped back is this very dimension
    return dimensions.ceildiv(room + 1, s)


def _channels(x: Node, w: Node, n: int, c: int, kernel_first: bool):
    """The arguments with their c channel axes made the family's count: several merged into
    one, none given an axis of size 1 where the family has one (the 2-d pair has)."""
    want = 0 if n == 1 and c == 0 else 1
    if c == want:
        return x, w, c
    if c:
        merged = dimensions.product(x.shape[x.rank - c - n:x.rank - n])
    else:
        merged = Dim(None, 1)
    x = linear.reshape(x, (merged, *x.shape[x.rank - n:]), c + n)
    if kernel_first:  # the channels lead the kernel: it is reshaped whole
        w = linear.reshape(w, (merged, *w.shape[c:]), w.rank)
    else:
        w = linear.reshape(w, (merged, *w.shape[w.rank - n:]), c + n)
    return x, w, want


def _check(x: Node, w: Node, n: int, c: int, kernel_first: bool, where) -> None:
    if x.rank < c + n or w.rank < c + n:
        raise ShapeError(f"a {n}-d convolution of {show_shape(x.shape)} with "
                         f"{show_shape(w.shape)}: too few axes", where)
    if c:
        have = x.shape[x.rank - n - 1]
        want = w.shape[0] if kernel_first else w.shape[w.rank - n - 1]
        if have != want:
            raise ShapeError(f"the input has {have} channels and the kernel {want}", where,
                             hint="the kernel is [out_channels, in_channels, ...]: its "
                                  "in_channels must be the input's channel axis (axis "
                                  f"{-n - 1})")


# -- derivatives -------------------------------------------------------------------------------

def pullback(node: Prim, bar: Node, lead: int):
    """(argument, its adjoint) for each argument of `node`, given `bar`, the cotangent of the
    node with the seed's `lead` axes in front."""
    n, c = family(node)
    a, w = node.args
    ba, bw = a.rank - c - n, w.rank - c - n  # the leading axes of each argument
    if node.fn in CORRELATIONS:
        (strides,) = node.params
        # The cotangent spread s apart (zeros between) is the cotangent of every position the
        # unstrided correlation would have: L - k + 1 of them.
        spread = bar
        for i, s in enumerate(strides):
            length = a.shape[a.rank - n + i] - w.shape[w.rank - n + i] + 1
            spread = linear.dilate(spread, spread.rank - n + i, s, length)
        # d x: the full convolution of that with w, whose leading axes (WB) it contracts and
        # whose channels (C) it makes: w is [WB, C, K] as it is.
        yield a, full(spread, w, n, bw)
        # d w: the correlation of x, its channels leading [C, XB, S], with the spread cotangent
        # [seed, WB, XB, S'], contracting XB: [C, seed, WB, K], then put in w's order.
        signal = _permute(a, [*_range(ba, c), *_range(0, ba), *_range(ba + c, n)])
        kernel = _permute(spread, [*_range(0, lead), *_range(lead + ba, bw),
                                   *_range(lead, ba), *_range(lead + ba + bw, n)])
        grad = correlation(signal, kernel, n, ba, (1,) * n)
        yield w, _permute(grad, [*_range(c, lead + bw), *_range(0, c),
                                 *_range(c + lead + bw, n)])
    else:
        # d d: the correlation of the cotangent [seed, XB, WB, S + K - 1] with w [C, WB, K],
        # contracting WB.
        yield a, correlation(bar, w, n, bw, (1,) * n)
        # d w: the correlation of the cotangent, WB leading [seed, WB, XB, S + K - 1], with
        # d, its channels leading [C, XB, S], contracting XB: [seed, WB, C, K], then w's order.
        signal = _permute(bar, [*_range(0, lead), *_range(lead + ba, bw), *_range(lead, ba),
                                *_range(lead + ba + bw, n)])
        kernel = _permute(a, [*_range(ba, c), *_range(0, ba), *_range(ba + c, n)])
        grad = correlation(signal, kernel, n, ba, (1,) * n)
        yield w, _permute(grad, [*_range(0, lead), *_range(lead + bw, c), *_range(lead, bw),
                                 *_range(lead + bw + c, n)])


def _range(start: int, count: int) -> range:
    return range(start, start + count)


def _permute(x: Node, order: list[int]) -> Node:
    """x with axis i of the result axis order[i] of x."""
    if order == list(range(x.rank)):
        return x
    return build.contract(tuple(order), [(x, tuple(range(x.rank)))])


# -- lowering the language's calls ---------------------------------------------------------------

def _keywords(call: ast.Call, allowed: tuple[str, ...]) -> dict:
    given = {}
    for k, v in call.kwargs:
        if k not in allowed:
            raise ParseError(f"{call.func}() got an unexpected keyword argument '{k}'",
                             v.span or call.span,
                             hint=f"{call.func} takes {', '.join(a + '=' for a in allowed)}")
        given[k] = v
    return given


def _ints(expr, n: int, what: str, low: int) -> tuple[int, ...]:
    """An integer, or a tuple of n of them (one per spatial axis), each at least `low`."""
    from .lower import constant_int
    items = expr.items if isinstance(expr, ast.Tuple) else (expr,) * n
    if len(items) != n:
        raise ParseError(f"{what} is an integer or {n} of them", expr.span)
    values = tuple(constant_int(i, what) for i in items)
    if any(v < low for v in values):
        raise ShapeError(f"{what} must be at least {low}", expr.span)
    return values


def _mode(expr) -> str:
    if expr is None:
        return None
    if not isinstance(expr, ast.String) or expr.value not in ("valid", "same", "full"):
        raise ParseError('mode is "valid", "same" or "full"', expr.span)
    return expr.value


def _arguments(call: ast.Call, args, lo: int, hi: int):
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} or {hi}"
        raise ParseError(f"{call.func}() takes {want} tensor arguments, got {len(args)}",
                         call.span)


def pad(x: Node, widths: dict[int, tuple]) -> Node:
    """x with zeros before and after it along some axes ({axis: (before, after)}, integers or
    dimensions: `k - 1` around a signal of the kernel's name)."""
    labels, out, ops = list(range(x.rank)), [], []
    for axis, dim in enumerate(x.shape):
        before, after = (Dim.of(w) for w in widths.get(axis, (0, 0)))
        if before is Dim(None, 0) and after is Dim(None, 0):
            out.append(axis)
            continue
        new = 100 + axis
        ops.append((Delta(dim, dim + before + after, before), (axis, new)))
        out.append(new)
    return build.contract(tuple(out), [(x, tuple(labels)), *ops]) if ops else x


def _mode_pad(x: Node, ks, mode: str, where) -> Node:
    """numpy's modes as zeros around x's last len(ks) axes, one kernel length of `ks` each:
    "full" k - 1 on each side, "same" k // 2 before and (k - 1) // 2 after (as many entries as
    x, centred as numpy's `correlate` and scipy.signal's `correlate`), "valid" none."""
    if isinstance(ks, Dim):
        ks = (ks,)
    if mode in (None, "valid"):
        return x
    widths = {}
    for i, k in enumerate(ks):
        axis = x.rank - len(ks) + i
        if not k.is_concrete:
            # A named kernel length pads by dimensions (k - 1): where the padded length is
            # one (the signal and the kernel of one name, autocorrelation), else refused.
            widths[axis] = (k - 1, k - 1) if mode == "full" else \
                (dimensions.floordiv(k, 2), dimensions.floordiv(k - 1, 2))
            continue
        k = k.offset
        if mode == "same" and x.shape[axis].is_concrete and k > x.shape[axis].offset:
            raise ShapeError(f'mode="same" with a kernel ({k} entries) longer than the signal '
                             f"({x.shape[axis]})", where)
        widths[axis] = (k - 1, k - 1) if mode == "full" else (k // 2, (k - 1) // 2)
    try:
        return pad(x, widths)
    except ValueError:
        named = ", ".join(str(k) for k in ks if not k.is_concrete)
        raise ShapeError(f'mode="{mode}" pads by the kernel\'s length, {named}: the padded '
                         f"length is not a dimension here", where,
                         hint=_NAMED_KERNEL) from None


def lower_correlate(call: ast.Call, args, scope) -> Node:
    """correlate(x, w, mode="valid", stride=1): numpy's correlate, every s-th entry of it."""
    return _numpy_style(call, args, flip=False)


def lower_convolve(call: ast.Call, args, scope) -> Node:
    """convolve(x, w, mode="full", stride=1): numpy's convolve (the kernel flipped)."""
    return _numpy_style(call, args, flip=True)


def _numpy_style(call: ast.Call, args, flip: bool) -> Node:
    kw = _keywords(call, ("mode", "stride"))
    _arguments(call, args, 2, 2)
    x, w = args
    if x.rank < 1 or w.rank < 1:
        raise ShapeError(f"{call.func}() takes vectors, got {show_shape(x.shape)} and "
                         f"{show_shape(w.shape)}", call.span)
    mode = _mode(kw.get("mode")) or ("full" if flip else "valid")
    (stride,) = _ints(kw["stride"], 1, "stride", 1) if "stride" in kw else (1,)
    if flip and mode == "full" and stride == 1:
        return full(x, w, 1, 0, call.span)
    if flip:
        w = linear.flip(w, w.rank - 1)
    return correlation(_mode_pad(x, w.shape[-1], mode, call.span), w, 1, 0, (stride,),
                       call.span)


def lower_conv(n: int):
    def lower(call: ast.Call, args, scope) -> Node:
        """conv1d / conv2d(x, w, bias, stride=1, padding=0, mode="valid"): PyTorch's, with
        numpy's `correlate` modes as the padding on each spatial axis: "valid" none (padding=0),
        "same" k // 2 before and (k - 1) // 2 after (as many entries as x, centred as numpy's),
        "full" k - 1 on each side; a stride takes every s-th entry of that."""
        kw = _keywords(call, ("stride", "padding", "mode"))
        _arguments(call, args, 2, 3)
        x, w = args[:2]
        _ranks(call, x, w, n)
        strides = _ints(kw["stride"], n, "stride", 1) if "stride" in kw else (1,) * n
        if "mode" in kw and "padding" in kw:  # both say how much to pad: which would win?
            raise ParseError(f"{call.func}() takes mode= or padding=, not both",
                             kw["padding"].span or call.span,
                             hint='mode="valid" is padding=0; "same" and "full" pad by the '
                                  "kernel's size")
        padding = _ints(kw["padding"], n, "padding", 0) if "padding" in kw else (0,) * n
        x = pad(x, {x.rank - n + i: (p, p) for i, p in enumerate(padding)})
        if "mode" in kw:
            x = _mode_pad(x, w.shape[w.rank - n:], _mode(kw["mode"]), call.span)
        out = correlation(x, w, n, 1, strides, call.span)
        return _biased(call, out, args[2] if len(args) == 3 else None, w.rank - 1 - n, n)
    return lower


def lower_transposed(n: int):
    def lower(call: ast.Call, args, scope) -> Node:
        """conv_transpose1d / 2d(x, w, bias, stride=1, padding=0): PyTorch's, the adjoint of
        conv1d / conv2d by its input."""
        kw = _keywords(call, ("stride", "padding"))
        _arguments(call, args, 2, 3)
        x, w = args[:2]
        _ranks(call, x, w, n, transposed=True)
        strides = _ints(kw["stride"], n, "stride", 1) if "stride" in kw else (1,) * n
        padding = _ints(kw["padding"], n, "padding", 0) if "padding" in kw else (0,) * n
        for i, s in enumerate(strides):  # stride s: the input's entries s apart
            axis = x.rank - n + i
            x = linear.dilate(x, axis, s, dimensions.product([x.shape[axis] - 1, Dim(None, s)])
                              + 1)
        out = full(x, w, n, 1, call.span)
        if any(padding):
            out = build.index(out, [("slice", None, None)] * (out.rank - n) +
                              [("slice", p, -p if p else None) for p in padding])
        return _biased(call, out, args[2] if len(args) == 3 else None, w.rank - 1 - n, n)
    return lower


def _ranks(call, x: Node, w: Node, n: int, transposed: bool = False) -> None:
    layout = "[in_channels, out_channels" if transposed else "[out_channels, in_channels"
    if x.rank < n + 1 or w.rank < n + 2:
        raise ShapeError(f"{call.func}() takes an input [batch, channels, "
                         f"{', '.join(['length'] if n == 1 else ['height', 'width'])}] and a "
                         f"kernel {layout}, {', '.join(['k'] if n == 1 else ['kh', 'kw'])}], "
                         f"got {show_shape(x.shape)} and {show_shape(w.shape)}", call.span,
                         hint="for numpy's 1-d correlation of two vectors, write "
                              "correlate(x, w) or convolve(x, w)" if n == 1 else None)


def _biased(call, out: Node, bias: Node | None, outputs: int, n: int) -> Node:
    """`out` plus a bias per output channel (the kernel's leading axes), broadcast."""
    if bias is None:
        return out
    want = out.shape[out.rank - n - outputs:out.rank - n]
    if bias.shape != want:
        raise ShapeError(f"{call.func}(): the bias {show_shape(bias.shape)} must be "
                         f"{show_shape(want)}, one per output channel", call.args[2].span
                         or call.span)
    labels = tuple(range(out.rank))
    spread = build.contract(labels, [(bias, labels[out.rank - n - outputs:out.rank - n])],
                            dict(zip(labels, out.shape)))
    return build.add([(1.0, out), (1.0, spread)])


# -- evaluation and printing ---------------------------------------------------------------------

def evaluator(node: Prim):
    """A function of the two arguments' arrays computing `node` (the IR interpreter's)."""
    from ..evaluate import kernels
    run = getattr(kernels, node.fn)
    if node.fn in CORRELATIONS:
        (strides,) = node.params
        return lambda a, b: run(a, b, stride=strides)
    return run


def surface(node: Prim, args: tuple[ast.Expr, ast.Expr]) -> ast.Expr:
    """`node` written in the language, its arguments written `args`."""
    kwargs = ()
    if node.fn in CORRELATIONS:
        (strides,) = node.params
        if any(s != 1 for s in strides):
            value = ast.Number(float(strides[0])) if len(set(strides)) == 1 else \
                ast.Tuple(tuple(ast.Number(float(s)) for s in strides))
            kwargs = (("stride", value),)
    return ast.Call(node.fn, tuple(args), kwargs)
