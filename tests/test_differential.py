"""Differential fuzz test (issue 10's acceptance): random programs, each result computed several
independent ways that must agree.

A seeded generator (numpy's `default_rng([SEED, index])`, so program `index` is reproducible on
its own: `python tests/test_differential.py INDEX` replays it verbosely) writes programs over the
dimensions `n`, `m` and `p` (sizes 0..4, `p <= n`), with the constructs that outside testing
found faults in: every slice-bound form (`x[n:]`, `x[n:n]`, `X[n:, 1:]`, `x[:0]`, negative and
reversed bounds, `x[1:n]`, `x[n-1:]`, the named bound `x[:p]`), integer picks, `None` axes,
bindings named like outputs and temporaries (`dx`, `out`, `t0`, `value`, `grad`, ...), variables
with prefix-sharing names (`x`, `xdx`, `dx`, `x_`, ...) used as several `wrt` (sometimes
repeated), float32/float64 inputs and mixes of both, elementwise functions of the rule tables kept
in their smooth domain (log and sqrt of positive expressions, relu/abs/maximum away from their
kinks), reductions (sum/mean/logsumexp with axes, softmax), matmul/dot/outer/tr/diag/eye and
transposes, and a few programs with sums and products of 400-600 terms. Some programs use names
Python reads specially (`self`, `float`, `lambda`, ...): those may be refused with an
`EinderivError`, and otherwise must be right. Some declare a name that equals another only after
NFKC normalization (`𝐱` next to `x`): those must be refused with an `EinderivError`.

Every program is built into its numpy reference as it is written (the generator evaluates each
node eagerly, which is how it keeps values finite, bounded and away from kinks), then:

- `compile`, `grad`, `value_and_grad`, `jacobian` or `hessian` (one or several `wrt`) of it is
  called: the **generated code**;
- `result.evaluate_ir(**arrays)`: the **IR interpreter**;
- each output's `.formula` lines (the temporaries up to that output's `name = ...` line) are
  compiled back with `einderiv.compile(text, shapes)` and called: the **formula**;
- the value against the **numpy** reference; first derivatives against central **finite
  differences** of the numpy reference (in float64); a Hessian against finite differences of
  `einderiv.grad`, itself checked against differences of the reference.

Besides values: every result's dtype is `np.result_type` of the arrays passed; no returned array
shares memory with an input or with another returned array; inputs are not modified; a second
call with the same values in other containers (copies, strided views, Fortran order, read-only,
`np.matrix`, Python floats) or in the other float dtype gives the same results (in its own
result type), and a third call with the first arrays the first results, which stay as they were.
`result.source`, run on its own, gives the generated code's results.

Tolerances scale with the dtype of the result: relative to `max(1, largest expected entry)`,
1e-9 (float64) or 1e-4 (float32) between two evaluations or against the numpy value, plus 1e-5
against finite differences. The generator keeps every intermediate value of the program within
+-100 (and arguments of log, sqrt and divisions above 0.1), so that these bounds hold for any
correct evaluation order; with mixed float32/float64 inputs the call computes in the widest.

`CI_PROGRAMS` random programs (1,000, in batches of 100: six of the ten batches run by default,
`sample` in conftest.py) and `CI_BIG` programs of 400-600 terms run always; every batch and the
`slow` tests (10,000 more, and more big programs) run with `EINDERIV_SLOW=1`.
"""
from __future__ import annotations

import os
import re
import sys
import time
import warnings
import zlib

import numpy as np
import pytest

import einderiv
from einderiv import EinderivError
from einderiv.generate.formula import output_programs

SEED = 20240610
CI_PROGRAMS = 1000
BATCH = 100  # programs per test: a failing batch lists its failing programs
SLOW_PROGRAMS = 10_000
CI_BIG = 3
SLOW_BIG = 24
SHOW = 6  # failing programs shown in full per failing test

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow differential fuzz: set EINDERIV_SLOW=1")

BOUND = 100.0  # every intermediate value of a program stays within +-BOUND
KINK = 0.05  # the argument of relu/abs/maximum/minimum stays this far from its kink
POSITIVE = 0.1  # the argument of log/sqrt/division/fractional powers stays above this
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}
RTOL_FD = 1e-5
FD_STEP = 1e-6

# -- names -----------------------------------------------------------------------------------

PREFIX = ["x", "xdx", "dx", "x_", "dxdx", "ddx", "xd", "dx_1", "x_1"]
OUTPUTISH = ["out", "value", "grad", "t0", "t1", "t2", "dy", "y", "out_1", "dout", "t0_1"]
PLAIN = ["w", "v", "u", "A", "B", "W", "X", "s", "c", "q", "z", "h", "b"]
BINDINGS = ["dx", "dy", "out", "t0", "t1", "value", "grad", "ddx", "dxdx", "out_1", "t3", "h",
            "dx_1", "dxdxdx"]
# Names Python or the generated module read specially: refusing them is allowed, not wrong.
HAZARDS = ["self", "float", "abs", "np", "_xp", "_kernels", "lambda", "def", "max", "e", "pi",
           "inf", "nan", "sum", "T", "arrays", "_c0", "print", "__class__"]

N, M, P = ("n",), ("m",), ("p",)
S = ()
NN, NM, MN = ("n", "n"), ("n", "m"), ("m", "n")
# (shape, how many variables): the second (N, 1) is a third vector, in 60% of programs
SLOTS = [(N, 2), (N, 1), (M, 1), (P, 1), (NN, 1), (NM, 1), (S, 1)]
CONSTANTS = ["0.5", "2", "1.5", "0.25", "3", "0.1", "1"]


def twin(name: str) -> str:
    """A name that NFKC-normalizes to `name` (mathematical bold or fullwidth letters)."""
    bold = "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else
                   chr(0x1D400 + ord(c) - 65) if "A" <= c <= "Z" else
                   chr(0x1D7CE + ord(c) - 48) if c.isdigit() else c for c in name)
    full = "".join(chr(0xFF41 + ord(c) - 97) if "a" <= c <= "z" else
                   chr(0xFF21 + ord(c) - 65) if "A" <= c <= "Z" else
                   chr(0xFF10 + ord(c) - 48) if c.isdigit() else c for c in name)
    return bold if len(name) % 2 else full


# -- numpy reference functions ---------------------------------------------------------------

def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _logsumexp(a, axis=None):
    top = np.max(a, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _softmax(a, axis=-1):
    if a.size == 0:
        return a.copy()
    e = np.exp(a - np.max(a, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


UNARY = {  # template -> reference; {0} is the argument's text
    "tanh({0})": np.tanh, "sigmoid({0})": _sigmoid, "softplus({0})": lambda a: np.logaddexp(0, a),
    "sin({0})": np.sin, "cos({0})": np.cos, "arctan({0})": np.arctan, "square({0})": np.square,
    "exp(tanh({0}))": lambda a: np.exp(np.tanh(a)), "expm1(tanh({0}))": lambda a: np.expm1(
        np.tanh(a)), "log1p(square({0}))": lambda a: np.log1p(np.square(a)),
    "sinh(tanh({0}))": lambda a: np.sinh(np.tanh(a)),
}
OF_POSITIVE = {  # functions smooth on positive arguments
    "log({0})": np.log, "sqrt({0})": np.sqrt, "({0} ** 0.5)": np.sqrt,
    "({0} ** -1)": lambda a: 1 / a, "({0} ** 1.5)": lambda a: a ** 1.5,
    "({0} ** -0.5)": lambda a: a ** -0.5,
}
POSITIVES = {  # positive expressions of an argument
    "(1 + {0} * {0})": lambda a: 1 + a * a, "exp(tanh({0}))": lambda a: np.exp(np.tanh(a)),
    "sigmoid({0})": _sigmoid, "softplus({0})": lambda a: np.logaddexp(0, a),
    "(2 + tanh({0}))": lambda a: 2 + np.tanh(a), "(1.5 + sin({0}))": lambda a: 1.5 + np.sin(a),
}
ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply}


class Reject(Exception):
    """The value drawn is out of bounds, in a kink or outside a domain: draw something else."""


class E:
    """A generated expression: its text, symbolic shape, numpy reference and value at the base
    point."""
    __slots__ = ("text", "shape", "fn", "val")

    def __init__(self, text, shape, fn, val):
        self.text, self.shape, self.fn, self.val = text, shape, fn, val


class Generator:
    """Writes one random program together with its numpy reference."""

    def __init__(self, rng, sizes: dict, env: dict, variables: dict):
        self.rng = rng
        self.sizes = sizes
        self.env = env  # float64 base values of the variables, and of bindings once made
        self.leaves: dict[tuple, list[E]] = {}
        for name, shape in variables.items():
            self.leaves.setdefault(shape, []).append(E(name, shape, _getter(name), env[name]))
        for x in list(self.leaves.get(NM, [])):
            self.leaves.setdefault(MN, []).append(
                E(f"{x.text}.T", MN, lambda env, f=x.fn: f(env).T, x.val.T))
        self.slice_forms_used: set[str] = set()

    # -- helpers -----------------------------------------------------------------------------

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def size(self, shape) -> tuple:
        return tuple(self.sizes[d] for d in shape)

    def node(self, text, shape, fn, *, positive=False) -> E:
        with np.errstate(all="ignore"):
            val = np.asarray(fn(self.env), dtype=np.float64)
        assert val.shape == self.size(shape), (text, val.shape, shape)  # a generator bug
        if not np.all(np.isfinite(val)) or (val.size and np.max(np.abs(val)) > BOUND):
            raise Reject
        if positive and val.size and np.min(val) < POSITIVE:
            raise Reject
        return E(text, shape, fn, val)

    def away_from_kink(self, val):
        if np.size(val) and np.min(np.abs(val)) < KINK:
            raise Reject

    # -- the recursive generator -------------------------------------------------------------

    def leaf(self, shape) -> E:
        options = list(self.leaves.get(shape, []))
        if shape == S and (not options or self.chance(0.3)):
            c = self.pick(CONSTANTS)
            options.append(E(c, S, lambda env, v=float(c): np.float64(v), np.float64(float(c))))
            d = self.pick(["n", "m", "p"])  # size(d) is at most 4
            options.append(E(f"size({d})", S, lambda env: np.float64(self.sizes[d]),
                             np.float64(self.sizes[d])))
        if len(shape) == 1 and self.chance(0.1):
            d = shape[0]
            which, value = self.pick([("ones", 1.0), ("zeros", 0.0)])
            options.append(E(f"{which}({d})", shape,
                             lambda env: np.full(self.sizes[d], value), np.full(self.sizes[d],
                                                                                 value)))
        if not options or (shape == P and self.chance(0.3)):
            return self.derived_leaf(shape)
        if shape == S and self.chance(0.15):
            try:
                return self.constant_expression()
            except Reject:  # 1 / size(p) at p = 0: a leaf is never refused
                pass
        return self.pick(options)

    def constant_expression(self) -> E:
        """Arithmetic of numbers and sizes, which einderiv folds: with numpy's float64 semantics,
        and without turning a float32 program into float64."""
        def constant():
            if self.chance(0.7):
                c = self.pick(CONSTANTS)
                return c, float(c)
            d = self.pick(["n", "m", "p"])
            return f"size({d})", float(self.sizes[d])
        (a, x), (b, y) = constant(), constant()
        op = self.pick(["+", "-", "*", "/", "**"])
        with np.errstate(all="ignore"):
            value = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                     "**": np.power}[op](np.float64(x), np.float64(y))
        return self.node(f"({a} {op} {b})", S, lambda env: value)

    def derived_leaf(self, shape) -> E:
        """A leaf for a shape no variable has: from the variables, cheaply."""
        if shape == P:
            a = self.pick(self.leaves[N])
            self.slice_forms_used.add(":p")
            return self.node(f"{a.text}[:p]", P, lambda env, f=a.fn: f(env)[:self.sizes["p"]])
        if shape == MN:
            a = self.pick(self.leaves[NM])
            return self.node(f"{a.text}.T", MN, lambda env, f=a.fn: f(env).T)
        raise AssertionError(shape)

    def expr(self, shape, depth: int) -> E:
        if depth <= 0 or self.chance(0.1):
            return self.leaf(shape)
        productions = [self.p_arith, self.p_arith, self.p_div, self.p_pow, self.p_neg,
                       self.p_unary, self.p_unary, self.p_log, self.p_kink, self.p_minmax]
        productions.append(self.p_einsum)
        if shape == S:
            productions += [self.p_reduce_all, self.p_reduce_all, self.p_dot, self.p_trace,
                            self.p_pick_scalar, self.p_slice_scalar, self.p_slice_scalar,
                            self.p_slice_scalar, self.p_none_scalar]
        elif len(shape) == 1:
            productions += [self.p_softmax, self.p_reduce_axis, self.p_matvec, self.p_pick_row,
                            self.p_slice_vector, self.p_none_vector, self.p_vector_T]
            if shape == N:
                productions += [self.p_diag_of, self.p_slice_vector]
            if shape == P:
                productions += [self.p_named_bound, self.p_named_bound]
        else:
            productions += [self.p_softmax, self.p_outer, self.p_matmul, self.p_transpose]
            if shape == NN:
                productions += [self.p_diag_to, self.p_eye]
        for _ in range(4):
            try:
                return self.pick(productions)(shape, depth - 1)
            except Reject:
                continue
        return self.leaf(shape)

    def broadcastable(self, shape, depth):
        """An operand that broadcasts to `shape`: (text, reference) of the same shape, a
        scalar, or for a matrix a row vector, `v[:, None]` or `v[None, :]`."""
        options = ["same", "same", "scalar"]
        if len(shape) == 2:
            options += ["row", "column", "row_none"]
        kind = self.pick(options)
        if kind == "same":
            e = self.expr(shape, depth)
            return e.text, e.fn
        if kind == "scalar":
            e = self.expr(S, depth)
            return e.text, e.fn
        if kind == "row":
            e = self.expr(shape[1:], depth)
            return e.text, e.fn
        if kind == "column":
            e = self.expr(shape[:1], depth)
            return f"{e.text}[:, None]", lambda env, f=e.fn: f(env)[:, None]
        e = self.expr(shape[1:], depth)
        return f"{e.text}[None, :]", lambda env, f=e.fn: f(env)[None, :]

    def p_arith(self, shape, depth):
        op = self.pick(list(ARITH))
        a = self.expr(shape, depth)
        text, fn = self.broadcastable(shape, depth)
        f = ARITH[op]
        if self.chance(0.5):
            return self.node(f"({a.text} {op} {text})", shape,
                             lambda env: f(a.fn(env), fn(env)))
        return self.node(f"({text} {op} {a.text})", shape, lambda env: f(fn(env), a.fn(env)))

    def positive(self, shape, depth) -> E:
        template = self.pick(list(POSITIVES))
        a = self.expr(shape, depth)
        g = POSITIVES[template]
        return self.node(template.format(a.text), shape, lambda env: g(a.fn(env)),
                         positive=True)

    def p_div(self, shape, depth):
        a = self.expr(shape, depth)
        d = self.positive(self.pick([shape, S]), depth)
        return self.node(f"({a.text} / {d.text})", shape, lambda env: a.fn(env) / d.fn(env))

    def p_pow(self, shape, depth):
        kind = self.pick(["int", "int", "fractional", "variable"])
        if kind == "int":
            a = self.expr(shape, depth)
            k = self.pick([2, 3])
            return self.node(f"({a.text} ** {k})", shape, lambda env: a.fn(env) ** k)
        if kind == "fractional":
            return self.p_log(shape, depth)
        base = self.positive(shape, depth)  # a positive base to a bounded variable exponent
        b = self.expr(self.pick([shape, S]), depth)
        return self.node(f"({base.text} ** tanh({b.text}))", shape,
                         lambda env: base.fn(env) ** np.tanh(b.fn(env)))

    def p_neg(self, shape, depth):
        a = self.expr(shape, depth)
        return self.node(f"(-{a.text})", shape, lambda env: -a.fn(env))

    def p_unary(self, shape, depth):
        template = self.pick(list(UNARY))
        a = self.expr(shape, depth)
        g = UNARY[template]
        return self.node(template.format(a.text), shape, lambda env: g(a.fn(env)))

    def p_log(self, shape, depth):
        template = self.pick(list(OF_POSITIVE))
        a = self.positive(shape, depth)
        g = OF_POSITIVE[template]
        return self.node(template.format(a.text), shape, lambda env: g(a.fn(env)))

    def p_kink(self, shape, depth):
        a = self.expr(shape, depth)
        self.away_from_kink(a.val)
        template, g = self.pick([("relu({0})", lambda v: np.maximum(v, 0)), ("abs({0})", np.abs)])
        return self.node(template.format(a.text), shape, lambda env: g(a.fn(env)))

    def p_minmax(self, shape, depth):
        a = self.expr(shape, depth)
        text, fn = self.broadcastable(shape, depth)
        with np.errstate(all="ignore"):
            self.away_from_kink(a.val - fn(self.env))
        name, g = self.pick([("maximum", np.maximum), ("minimum", np.minimum)])
        if self.chance(0.5):
            return self.node(f"{name}({a.text}, {text})", shape, lambda env: g(a.fn(env),
                                                                               fn(env)))
        return self.node(f"{name}({text}, {a.text})", shape, lambda env: g(fn(env), a.fn(env)))

    def p_einsum(self, shape, depth):
        """Explicit Einstein input, where a form of this shape exists."""
        forms = {S: [("i,i", (N, N)), ("ij,ij->", (NM, NM)), ("ii", (NN,)), ("ij->", (MN,))],
                 N: [("ij,j->i", (NM, M)), ("ii->i", (NN,)), ("ji,j", (MN, M))],
                 M: [("ij,i->j", (NM, N)), ("ij->j", (NM,))],
                 NN: [("ij,kj->ik", (NM, NM)), ("ij->ji", (NN,))],
                 NM: [("ij,jk->ik", (NN, NM)), ("ij,j->ij", (NM, M))],
                 MN: [("ij->ji", (NM,))]}.get(shape)
        if not forms:
            raise Reject
        spec, shapes = self.pick(forms)
        args = [self.expr(s, depth) for s in shapes]
        quote = self.pick(['"', "'"])
        text = f"einsum({quote}{spec}{quote}, {', '.join(a.text for a in args)})"
        return self.node(text, shape, lambda env: np.einsum(spec, *[a.fn(env) for a in args]))

    def p_softmax(self, shape, depth):
        a = self.expr(shape, depth)
        axis = self.pick([None, -1, 0] if len(shape) == 1 else [None, 0, 1, -1, -2])
        text = f"softmax({a.text})" if axis is None else f"softmax({a.text}, axis={axis})"
        ax = -1 if axis is None else axis
        return self.node(text, shape, lambda env: _softmax(a.fn(env), ax))

    # -- scalars -----------------------------------------------------------------------------

    def p_reduce_all(self, shape, depth):
        src = self.pick([N, M, P, NN, NM, MN])
        a = self.expr(src, depth)
        kind = self.pick(["sum", "sum", "mean", "logsumexp", "sum_axes"])
        if kind in ("mean", "logsumexp") and a.val.size == 0:
            raise Reject
        if kind == "sum":
            return self.node(f"sum({a.text})", S, lambda env: np.sum(a.fn(env)))
        if kind == "mean":
            return self.node(f"mean({a.text})", S, lambda env: np.mean(a.fn(env)))
        if kind == "logsumexp":
            return self.node(f"logsumexp({a.text})", S, lambda env: _logsumexp(a.fn(env)))
        axes = "(0, 1)" if len(src) == 2 else self.pick(["0", "-1", "(0,)"])
        return self.node(f"sum({a.text}, axis={axes})", S, lambda env: np.sum(a.fn(env)))

    def p_dot(self, shape, depth):
        d = self.pick([N, M, P])
        a, b = self.expr(d, depth), self.expr(d, depth)
        if self.chance(0.5):
            return self.node(f"dot({a.text}, {b.text})", S, lambda env: np.dot(a.fn(env),
                                                                                b.fn(env)))
        return self.node(f"({a.text} @ {b.text})", S, lambda env: a.fn(env) @ b.fn(env))

    def p_trace(self, shape, depth):
        a = self.expr(NN, depth)
        name = self.pick(["tr", "trace"])
        return self.node(f"{name}({a.text})", S, lambda env: np.trace(a.fn(env)))

    def p_pick_scalar(self, shape, depth):
        src = self.pick([N, M, NM, NN])
        sizes = self.size(src)
        if 0 in sizes:
            raise Reject
        a = self.expr(src, depth)
        ks = [int(self.rng.integers(-s, s)) for s in sizes]
        text = f"{a.text}[{', '.join(map(str, ks))}]"
        return self.node(text, S, lambda env: a.fn(env)[tuple(ks)])

    def slice_form(self, dim: str) -> tuple[str, slice]:
        """A slice of an axis `dim` whose bounds numpy needs no clipping for at these sizes."""
        size = self.sizes[dim]
        lo, hi = sorted(int(k) for k in self.rng.integers(0, size + 1, size=2))
        options = [(":", slice(None), ":"), (f"{dim}:", slice(size, None), "n:"),
                   (f"{dim}:{dim}", slice(size, size), "n:n"), (":0", slice(0, 0), ":0"),
                   ("0:0", slice(0, 0), "0:0"), (f"{lo}:", slice(lo, None), "k:"),
                   (f":{hi}", slice(None, hi), ":k"), (f"{lo}:{hi}", slice(lo, hi), "k:k"),
                   (f":{dim}", slice(None), ":n"), (f"0:{dim}", slice(0, size), "0:n")]
        if size >= 1:
            k = int(self.rng.integers(1, size + 1))
            j = int(self.rng.integers(1, k + 1))
            options += [(f"-{k}:", slice(-k, None), "-k:"), (f":-{k}", slice(None, -k), ":-k"),
                        (f"1:{dim}", slice(1, size), "1:n"),
                        (f"{dim}-1:", slice(size - 1, None), "n-1:"),
                        (f":{dim}-1", slice(None, size - 1), ":n-1"),
                        (f"-{k}:-{j}", slice(-k, -j), "-k:-k"),
                        (f"{hi}:{lo}", slice(hi, lo), "reversed"),
                        (f"{dim}-{k}:", slice(size - k, None), "n-k:")]
        if dim == "n":
            options += [(":p", slice(None, self.sizes["p"]), ":p")] * 3
        text, py, label = self.pick(options)
        self.slice_forms_used.add(label)
        return text, py

    def p_slice_scalar(self, shape, depth):
        if self.chance(0.3):  # two axes: X[n:, 1:]
            src = self.pick([NN, NM])
            (t0, s0), (t1, s1) = self.slice_form(src[0]), self.slice_form(src[1])
            a, b = self.expr(src, depth), self.expr(src, depth)
            return self.node(f"sum({a.text}[{t0}, {t1}] * {b.text}[{t0}, {t1}])", S,
                             lambda env: np.sum(a.fn(env)[s0, s1] * b.fn(env)[s0, s1]))
        d = self.pick([N, N, M])
        text, sl = self.slice_form(d[0])
        a, b = self.expr(d, depth), self.expr(d, depth)
        kind = self.pick(["dot", "sum", "square", "lse"])
        if kind == "lse":
            if a.val[sl].size == 0:
                raise Reject
            return self.node(f"logsumexp({a.text}[{text}])", S,
                             lambda env: _logsumexp(a.fn(env)[sl]))
        if kind == "dot":
            return self.node(f"({a.text}[{text}] @ {b.text}[{text}])", S,
                             lambda env: a.fn(env)[sl] @ b.fn(env)[sl])
        if kind == "square":
            return self.node(f"sum({a.text}[{text}] ** 2)", S,
                             lambda env: np.sum(a.fn(env)[sl] ** 2))
        return self.node(f"sum({a.text}[{text}] * {b.text}[{text}])", S,
                         lambda env: np.sum(a.fn(env)[sl] * b.fn(env)[sl]))

    def p_none_scalar(self, shape, depth):
        d = self.pick([N, M])
        a, b = self.expr(d, depth), self.expr(d, depth)
        kind = self.pick(["outer_sum", "matmul", "scalar"])
        if kind == "outer_sum":
            return self.node(f"sum({a.text}[None, :] * {b.text}[:, None])", S,
                             lambda env: np.sum(a.fn(env)[None, :] * b.fn(env)[:, None]))
        if kind == "matmul":
            return self.node(f"({a.text}[None, :] @ {b.text}[:, None])[0, 0]", S,
                             lambda env: (a.fn(env)[None, :] @ b.fn(env)[:, None])[0, 0])
        s = self.expr(S, depth)
        return self.node(f"sum({s.text}[None] * {a.text})", S,
                         lambda env: np.sum(s.fn(env)[None] * a.fn(env)))

    # -- vectors -----------------------------------------------------------------------------

    def p_reduce_axis(self, shape, depth):
        d = shape[0]
        other = self.pick(["n", "m"])
        src, axis = self.pick([((d, other), self.pick([1, -1])), ((other, d), self.pick([0, -2]))])
        if src == ("m", "m") or "p" in src:
            raise Reject
        a = self.expr(src, depth)
        kind = self.pick(["sum", "sum", "mean", "logsumexp"])
        if kind != "sum" and self.sizes[other] == 0:
            raise Reject
        ref = {"sum": np.sum, "mean": np.mean, "logsumexp": _logsumexp}[kind]
        keyword = "axis=" if self.chance(0.7) else ""
        return self.node(f"{kind}({a.text}, {keyword}{axis})", shape,
                         lambda env: ref(a.fn(env), axis=axis))

    def p_matvec(self, shape, depth):
        d = shape[0]
        if d == "p":
            raise Reject
        c = self.pick(["n", "m"])
        if self.chance(0.5):  # matrix @ vector
            if (d, c) == ("m", "m"):
                raise Reject
            A, v = self.expr((d, c), depth), self.expr((c,), depth)
            if self.chance(0.3):
                return self.node(f"dot({A.text}, {v.text})", shape,
                                 lambda env: np.dot(A.fn(env), v.fn(env)))
        else:  # vector @ matrix
            if (c, d) == ("m", "m"):
                raise Reject
            v, A = self.expr((c,), depth), self.expr((c, d), depth)
            return self.node(f"({v.text} @ {A.text})", shape, lambda env: v.fn(env) @ A.fn(env))
        if self.chance(0.2):  # through a column: (A @ v[:, None])[:, 0]
            return self.node(f"({A.text} @ {v.text}[:, None])[:, 0]", shape,
                             lambda env: (A.fn(env) @ v.fn(env)[:, None])[:, 0])
        return self.node(f"({A.text} @ {v.text})", shape, lambda env: A.fn(env) @ v.fn(env))

    def p_pick_row(self, shape, depth):
        d = shape[0]
        if d == "p":
            raise Reject
        other = self.pick(["n", "m"])
        if (d, other) == ("m", "m"):
            raise Reject
        if self.sizes[other] == 0:
            raise Reject
        k = int(self.rng.integers(-self.sizes[other], self.sizes[other]))
        if self.chance(0.5):
            a = self.expr((other, d), depth)
            return self.node(f"{a.text}[{k}]", shape, lambda env: a.fn(env)[k])
        a = self.expr((d, other), depth)
        return self.node(f"{a.text}[:, {k}]", shape, lambda env: a.fn(env)[:, k])

    def p_slice_vector(self, shape, depth):
        d = shape[0]
        if d == "p":
            raise Reject
        c = self.pick(["n", "m"])
        if (d, c) == ("m", "m"):
            raise Reject
        text, sl = self.slice_form(c)
        A, v = self.expr((d, c), depth), self.expr((c,), depth)
        return self.node(f"({A.text}[:, {text}] @ {v.text}[{text}])", shape,
                         lambda env: A.fn(env)[:, sl] @ v.fn(env)[sl])

    def p_none_vector(self, shape, depth):
        d = shape[0]
        if self.chance(0.5) or d == "p":
            s, v = self.expr(S, depth), self.expr(shape, depth)
            return self.node(f"({s.text}[None] * {v.text})", shape,
                             lambda env: s.fn(env)[None] * v.fn(env))
        other = self.pick(["n", "m"])
        if (d, other) == ("m", "m"):
            raise Reject
        v, A = self.expr(shape, depth), self.expr((d, other), depth)
        return self.node(f"sum({v.text}[:, None] * {A.text}, axis=1)", shape,
                         lambda env: np.sum(v.fn(env)[:, None] * A.fn(env), axis=1))

    def p_vector_T(self, shape, depth):
        a = self.expr(shape, depth)
        return self.node(f"{a.text}.T", shape, lambda env: a.fn(env).T)

    def p_diag_of(self, shape, depth):
        a = self.expr(NN, depth)
        return self.node(f"diag({a.text})", N, lambda env: np.diag(a.fn(env)))

    def p_named_bound(self, shape, depth):
        """`x[:p]` (p a separate dimension, p <= n) and `A[:p, :p] @ z`."""
        self.slice_forms_used.add(":p")
        p = self.sizes["p"]
        if self.chance(0.5):
            a = self.expr(N, depth)
            return self.node(f"{a.text}[:p]", P, lambda env: a.fn(env)[:p])
        A, z = self.expr(NN, depth), self.expr(P, depth)
        return self.node(f"({A.text}[:p, :p] @ {z.text})", P,
                         lambda env: A.fn(env)[:p, :p] @ z.fn(env))

    # -- matrices ----------------------------------------------------------------------------

    def p_outer(self, shape, depth):
        u, v = self.expr(shape[:1], depth), self.expr(shape[1:], depth)
        kind = self.pick(["outer", "none", "matmul"])
        if kind == "outer":
            return self.node(f"outer({u.text}, {v.text})", shape,
                             lambda env: np.outer(u.fn(env), v.fn(env)))
        if kind == "none":
            return self.node(f"({u.text}[:, None] * {v.text}[None, :])", shape,
                             lambda env: u.fn(env)[:, None] * v.fn(env)[None, :])
        return self.node(f"({u.text}[:, None] @ {v.text}[None, :])", shape,
                         lambda env: u.fn(env)[:, None] @ v.fn(env)[None, :])

    def p_matmul(self, shape, depth):
        a, b = shape
        c = self.pick(["n", "m"])
        if (a, c) == ("m", "m") or (c, b) == ("m", "m"):
            raise Reject
        A, B = self.expr((a, c), depth), self.expr((c, b), depth)
        return self.node(f"({A.text} @ {B.text})", shape, lambda env: A.fn(env) @ B.fn(env))

    def p_transpose(self, shape, depth):
        src = shape[::-1]
        if src == ("m", "m"):
            raise Reject
        a = self.expr(src, depth)
        return self.node(f"{a.text}.T", shape, lambda env: a.fn(env).T)

    def p_diag_to(self, shape, depth):
        v = self.expr(N, depth)
        return self.node(f"diag({v.text})", NN, lambda env: np.diag(v.fn(env)))

    def p_eye(self, shape, depth):
        s = self.expr(S, depth)
        return self.node(f"(eye(n) * {s.text})", NN,
                         lambda env: np.eye(self.sizes["n"]) * s.fn(env))


def _getter(name):
    return lambda env: env[name]


# -- programs --------------------------------------------------------------------------------

class Case:
    """One program: source, shapes, arrays, what to derive, and the reference."""

    def __init__(self, **kw):
        self.index = None
        self.expect = "ok"  # "ok", "maybe" (a hazardous name), or "reject" (a non-ASCII name)
        self.big = False
        self.__dict__.update(kw)

    def describe(self, width: int = 900) -> str:
        source = self.source
        if len(source) > width:
            source = source[:width] + f" ... ({len(self.source)} characters)"
        dtypes = {k: str(v.dtype) for k, v in self.arrays.items()}
        wrt = "" if self.kind == "compile" else f" wrt {self.wrt!r}"
        return (f"program {self.index}: einderiv.{self.kind}{wrt}\n  source: {source!r}\n"
                f"  shapes: {self.shapes!r}\n  sizes: {self.sizes}\n  dtypes: {dtypes}\n"
                f"  replay: python tests/test_differential.py {self.index}")


def _names(rng, hazard: bool) -> dict:
    """Variable name -> shape."""
    names = set()

    def draw(pool):
        free = [n for n in pool if n not in names]
        name = free[int(rng.integers(len(free)))]
        names.add(name)
        return name

    variables = {}
    for shape, count in SLOTS:
        if shape == N and count == 1 and rng.random() < 0.4:
            continue  # the optional third vector
        for _ in range(count):
            pool = PREFIX if shape == N and rng.random() < 0.75 else PREFIX + OUTPUTISH + PLAIN
            variables[draw(pool)] = shape
    if hazard:
        old = list(variables)[int(rng.integers(len(variables)))]
        new = HAZARDS[int(rng.integers(len(HAZARDS)))]
        variables = {(new if k == old else k): v for k, v in variables.items()}
    return variables


def _arrays(rng, variables, sizes, dtypes) -> dict:
    arrays = {}
    for name, shape in variables.items():
        dims = tuple(sizes[d] for d in shape)
        magnitude = rng.uniform(0.3, 1.2, size=dims)
        values = np.where(rng.random(dims) < 0.5, -magnitude, magnitude)
        arrays[name] = np.asarray(values, dtype=dtypes[name])
    return arrays


def make_case(index: int) -> Case:
    rng = np.random.default_rng([SEED, index])
    zero = rng.random() < 0.15  # sometimes 0-size dimensions
    n = int(rng.integers(0 if zero else 1, 5))
    m = int(rng.integers(0 if zero else 1, 5))
    sizes = {"n": n, "m": m, "p": int(rng.integers(0, n + 1))}
    hazard = rng.random() < 0.04
    variables = _names(rng, hazard)
    mode = rng.choice(["f64", "f64", "f32", "mix"])
    dtypes = {k: np.dtype(np.float32 if mode == "f32" or (mode == "mix" and rng.random() < 0.5)
                          else np.float64) for k in variables}
    arrays = _arrays(rng, variables, sizes, dtypes)
    env = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}

    kind = str(rng.choice(["compile", "grad", "grad", "value_and_grad", "jacobian", "hessian"]))
    scalar_out = kind in ("grad", "value_and_grad", "hessian") or rng.random() < 0.5
    gen = Generator(rng, sizes, env, variables)
    statements, bindings = [], []
    free = [b for b in BINDINGS if b not in variables]
    for _ in range(int(rng.integers(0, 4))):
        shape = [S, N, M, P, NN, NM][int(rng.integers(6))]
        e = gen.expr(shape, int(rng.integers(1, 4)))
        name = free.pop(int(rng.integers(len(free))))
        statements.append(f"{name} = {e.text}")
        bindings.append((name, e))
        env[name] = e.val
        gen.leaves.setdefault(shape, []).append(E(name, shape, _getter(name), e.val))
    out_shape = S if scalar_out else [N, M, P, NN, NM, MN][int(rng.integers(6))]
    out = gen.expr(out_shape, int(rng.integers(2, 6)))
    if rng.random() < 0.2 and free:  # the program's value is its last binding
        name = free.pop(int(rng.integers(len(free))))
        statements.append(f"{name} = {out.text}")
    else:
        statements.append(out.text)

    declared = {k: v for k, v in variables.items()}
    shapes, inline = {}, []
    how = rng.choice(["dict", "dict", "inline", "mixed"])
    for name, shape in declared.items():
        if how == "inline" or (how == "mixed" and rng.random() < 0.5):
            inline.append(f"{name}: [{', '.join(shape)}]")
        else:
            shapes[name] = shape
    sep = "\n" if rng.random() < 0.5 else "; "
    source = sep.join(inline + statements)

    wrt = None
    if kind != "compile":
        names = list(declared)
        used = [v for v in names if re.search(rf"(?<![\w.]){re.escape(v)}(?!\w)", source)]
        k = int(rng.integers(1, 3 if kind == "hessian" else 4))
        pool = used if used and rng.random() < 0.9 else names
        wrt = [pool[int(i)] for i in rng.permutation(len(pool))[:k]]
        if rng.random() < 0.06:
            wrt.append(wrt[0])  # a repeated wrt returns the entry again (as jax)
        if len(wrt) == 1 and rng.random() < 0.6:
            wrt = wrt[0]

    def reference(**arrays):
        env = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        with np.errstate(all="ignore"):
            for name, e in bindings:
                env[name] = e.fn(env)
            return np.asarray(out.fn(env), dtype=np.float64)

    case = Case(index=index, source=source, shapes=shapes or None, sizes=sizes, arrays=arrays,
                kind=kind, wrt=wrt, reference=reference, expect="maybe" if hazard else "ok",
                forms=gen.slice_forms_used, declared=declared, sep=sep)
    if rng.random() < 0.03:
        _nfkc_twin(rng, case)
    return case


def _nfkc_twin(rng, case: Case) -> None:
    """Declare and use a name that equals a variable's only after NFKC: must be refused."""
    name = list(case.declared)[int(rng.integers(len(case.declared)))]
    other = twin(name)
    where = str(rng.choice(["use", "shapes", "wrt"]))
    if where == "wrt" and case.kind in ("compile", "jacobian"):
        where = "shapes"
    if where == "use":  # declared inline, and used in place of one occurrence of `name`
        *head, last = case.source.split(case.sep)
        last = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", other, last, count=1)
        decl = f"{other}: [{', '.join(case.declared[name])}]"
        case.source = case.sep.join([decl, *head, last])
    elif where == "shapes":
        case.shapes = {**(case.shapes or {}), other: case.declared[name]}
    else:
        case.wrt = [other] if isinstance(case.wrt, list) else other
    case.arrays = {**case.arrays, other: case.arrays[name]}
    case.expect = "reject"


# -- big programs: sums and products of 400-600 terms ----------------------------------------

def make_big(index: int) -> Case:
    rng = np.random.default_rng([SEED, 7, index])
    terms = int(rng.integers(400, 601))
    family = ["shared_sum", "deep_sum", "product"][index % 3]
    n = int(rng.integers(1, 4))
    dtype = np.dtype(np.float32 if rng.random() < 0.25 else np.float64)
    coefficients = [round(0.5 + k / terms, 6) for k in range(terms)]
    if family == "shared_sum":
        # Two outputs that are long sums differing only in their first term (issue 10, 5):
        # written as separate terms, through a binding (named like an output), or inline.
        a, b = [PREFIX[int(i)] for i in rng.permutation(len(PREFIX))[:2]]
        form = ["split", "binding", "inline"][(index // 3) % 3]
        body = " + ".join(f"tanh(z * {c})" for c in coefficients)
        if form == "split":
            source = " + ".join(f"sum({a} * tanh(z * {c})) + sum({b} * tanh(z * {c}))"
                                for c in coefficients) + f" + sum({a} * p) + sum({b} * q)"
        else:
            binding = str(rng.choice(["S", "t0", "out", "d" + a, "value"]))
            shared = f"({body})" if form == "inline" else binding
            source = (("" if form == "inline" else f"{binding} = {body}\n")
                      + f"sum(({a} + {b}) * {shared}) + sum({a} * p) + sum({b} * q)")
        variables = {a: ("n",), b: ("n",), "z": ("n",), "p": ("n",), "q": ("n",)}

        def reference(**arrs):
            e = {k: np.asarray(v, np.float64) for k, v in arrs.items()}
            total = sum(np.tanh(e["z"] * c) for c in coefficients)
            return np.asarray(np.sum((e[a] + e[b]) * total) + np.sum(e[a] * e["p"])
                              + np.sum(e[b] * e["q"]))
        kind, wrt = ["grad", "value_and_grad"][(index // 9) % 2], [a, b]
    elif family == "deep_sum":
        # A gradient deep enough that a printer with a depth limit elides it (issue 10, 11).
        source = " + ".join(f"sum(tanh(x * {c}))" for c in coefficients)
        variables = {"x": ("n",)}

        def reference(**arrs):
            x = np.asarray(arrs["x"], np.float64)
            return np.asarray(sum(np.sum(np.tanh(x * c)) for c in coefficients))
        kind, wrt = str(rng.choice(["grad", "value_and_grad", "compile"])), "x"
    else:
        factors = " * ".join(f"(1 + 0.001 * tanh(z * {c}))" for c in coefficients)
        source = f"sum(x * {factors})"
        variables = {"x": ("n",), "z": ("n",)}

        def reference(**arrs):
            x, z = (np.asarray(arrs[k], np.float64) for k in "xz")
            product = np.ones_like(z)
            for c in coefficients:
                product = product * (1 + 0.001 * np.tanh(z * c))
            return np.asarray(np.sum(x * product))
        kind, wrt = ["grad", "compile"][(index // 3) % 2], ["x", "z"]
    sizes = {"n": n}
    arrays = _arrays(rng, variables, sizes, {k: dtype for k in variables})
    return Case(index=f"big{index}", source=source, shapes=variables, sizes=sizes,
                arrays=arrays, kind=kind, wrt=wrt, reference=reference, big=True, forms=set(),
                declared=variables)


# -- checking ----------------------------------------------------------------------------------

def _build(case: Case, kind: str | None = None, wrt=None):
    kind = kind or case.kind
    if kind == "compile":
        return einderiv.compile(case.source, case.shapes)
    return getattr(einderiv, kind)(case.source, case.wrt if wrt is None else wrt, case.shapes)


def _wrt_names(case: Case) -> list[str]:
    return [case.wrt] if isinstance(case.wrt, str) else list(case.wrt)


def _flatten(case: Case, structured) -> list[tuple[str, object]]:
    """(label, array) per returned array, checking the structure the call must return."""
    kind, many = case.kind, not isinstance(case.wrt, str)
    names = [] if kind == "compile" else _wrt_names(case)
    if kind == "compile":
        return [("value", structured)]
    if kind == "value_and_grad":
        if not (isinstance(structured, tuple) and len(structured) == 2):
            raise AssertionError(f"value_and_grad returned {type(structured).__name__}, "
                                 f"not (value, gradient)")
        value, grads = structured
        return [("value", value)] + _flatten_first(names, grads, many, "d")
    if kind == "hessian":
        if not many:
            return [(f"d2/d{names[0]}2", structured)]
        if not (isinstance(structured, tuple) and len(structured) == len(names)
                and all(isinstance(r, tuple) and len(r) == len(names) for r in structured)):
            raise AssertionError(f"hessian wrt {len(names)} names did not return a "
                                 f"{len(names)}x{len(names)} tuple of tuples")
        return [(f"d2/d{a} d{b}", structured[i][j]) for i, a in enumerate(names)
                for j, b in enumerate(names)]
    return _flatten_first(names, structured, many, "d")


def _flatten_first(names, structured, many, prefix):
    if not many:
        return [(f"{prefix}/d{names[0]}", structured)]
    if not (isinstance(structured, tuple) and len(structured) == len(names)):
        got = len(structured) if isinstance(structured, tuple) else type(structured).__name__
        raise AssertionError(f"wrt {len(names)} names returned {got} entries")
    return [(f"{prefix}/d{n}", v) for n, v in zip(names, structured)]


def _differences(f, arrays: dict, wrt: str) -> list[np.ndarray]:
    """Central differences of each array `f(**arrays)` returns (a list) by arrays[wrt]:
    shape output + wrt."""
    x = np.asarray(arrays[wrt], dtype=np.float64)
    base = [np.asarray(v, dtype=np.float64) for v in f(**arrays)]
    out = [np.empty(b.shape + x.shape) for b in base]
    for idx in np.ndindex(*x.shape):
        step = FD_STEP * max(1.0, abs(x[idx]))
        plus, minus = x.copy(), x.copy()
        plus[idx] += step
        minus[idx] -= step
        fp = f(**{**arrays, wrt: plus})
        fm = f(**{**arrays, wrt: minus})
        for o, p, m in zip(out, fp, fm):
            o[(...,) + idx] = (np.asarray(p, np.float64) - np.asarray(m, np.float64)) / (2 * step)
    return out


def _mismatch(actual, expected, rtol: float, what: str) -> str | None:
    """Why `actual` is not `expected` (relative to max(1, largest |expected|)), or None."""
    try:
        actual = np.asarray(actual)
    except Exception as e:  # an object that is no array at all
        return f"{what}: not an array ({type(e).__name__})"
    expected = np.asarray(expected, dtype=np.float64)
    if actual.dtype == object or np.iscomplexobj(actual):
        return f"{what}: dtype {actual.dtype}"
    if actual.shape != expected.shape:
        return f"{what}: shape {actual.shape} instead of {expected.shape}"
    if expected.size == 0:
        return None
    actual = actual.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(expected))))
    with np.errstate(all="ignore"):
        err = float(np.max(np.abs(actual - expected)))
    if not np.all(np.isfinite(actual)) or not err <= rtol * scale:
        where = np.unravel_index(int(np.nanargmax(np.abs(actual - expected))), expected.shape) \
            if np.all(np.isfinite(actual)) else "non-finite"
        return (f"{what}: max abs difference {err:.3g} at {where} (scale {scale:.3g}, "
                f"tolerance {rtol * scale:.3g})\n      got      {_short(actual)}\n"
                f"      expected {_short(expected)}")
    return None


def _short(a) -> str:
    text = np.array2string(np.asarray(a), precision=6, threshold=12, edgeitems=3)
    return text.replace("\n", " ")


def _variant(rng, arrays: dict, kind: str) -> dict:
    """The same values in other containers."""
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if kind == "strided" and a.ndim:
            big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
            view = big[tuple(slice(1, None, 2) for _ in a.shape)]
            view[...] = a
            out[name] = view
        elif kind == "fortran" and a.ndim == 2:
            out[name] = np.asfortranarray(a)
        elif kind == "matrix" and a.ndim == 2:
            out[name] = np.matrix(a)
        elif kind == "scalars" and a.ndim == 0:
            out[name] = float(a)  # a Python float: numpy's weak scalar, it keeps float32
        elif kind == "other dtype":
            out[name] = a.astype(np.float32 if a.dtype == np.float64 else np.float64)
        elif kind == "readonly":
            b = a.copy()
            b.flags.writeable = False
            out[name] = b
        else:
            out[name] = a.copy()
    return out


STATS: dict = {}


def _count(key: str, k: int = 1) -> None:
    STATS[key] = STATS.get(key, 0) + k


def check_case(case: Case, verbose: bool = False) -> list[str]:
    """The disagreements of one program (empty when every way agrees)."""
    problems: list[str] = []

    def problem(text):
        problems.append(text)
        if verbose:
            print("PROBLEM:", text)

    arrays = case.arrays
    pristine = {k: np.array(v, copy=True) for k, v in arrays.items()}
    try:
        result = _build(case)
        if case.expect == "reject":
            result(**arrays)
            return ["a name equal to another after NFKC was accepted, not refused "
                    "(EinderivError expected)"]
        structured = result(**arrays)
    except EinderivError as e:
        if case.expect in ("reject", "maybe"):
            _count("refused " + case.expect)
            return []
        return [f"generated code raised {type(e).__name__}: {str(e)[:300]}"]
    except Exception as e:
        return [f"generated code raised a raw {type(e).__name__}: {str(e)[:300]}"]
    try:
        slots = _flatten(case, structured)
    except AssertionError as e:
        return [f"the call returned the wrong structure: {e}"]
    _count("programs checked")
    _count(f"kind {case.kind}")
    dtype = np.result_type(*arrays.values())
    rtol = RTOL[np.dtype(dtype)]
    saved = [np.array(v, copy=True) for _, v in slots]

    # The expected values: numpy for the value, differences of numpy for derivatives.
    f64 = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    names = [] if case.kind == "compile" else _wrt_names(case)
    expected: list = []
    try:
        if case.kind in ("compile", "value_and_grad"):
            expected.append(("numpy", case.reference(**f64), 0.0))
        if case.kind in ("grad", "value_and_grad", "jacobian"):
            fd = {n: _differences(lambda **a: [case.reference(**a)], f64, n)[0]
                  for n in dict.fromkeys(names)}
            expected += [("finite differences", fd[n], RTOL_FD) for n in names]
        if case.kind == "hessian":
            distinct = list(dict.fromkeys(names))
            g = einderiv.grad(case.source, distinct, case.shapes)
            gvals = g(**f64)
            for n, v in zip(distinct, gvals):
                ref = _differences(lambda **a: [case.reference(**a)], f64, n)[0]
                why = _mismatch(v, ref, RTOL[np.dtype(np.float64)] + RTOL_FD,
                                f"einderiv.grad wrt {n} (for the Hessian) vs finite differences")
                if why:
                    problem(why)
            columns = {n: _differences(lambda **a: list(g(**a)), f64, n) for n in distinct}
            expected += [("finite differences of einderiv.grad",
                          columns[b][distinct.index(a)], RTOL_FD) for a in names for b in names]
    except Exception as e:
        problem(f"computing the expected values raised {type(e).__name__}: {e}")
        return problems
    if len(expected) != len(slots):
        problem(f"{len(slots)} arrays returned, {len(expected)} expected")
        return problems

    for (label, value), (way, want, fd_tol) in zip(slots, expected):
        why = _mismatch(value, want, rtol + fd_tol, f"{label}: generated code vs {way}")
        if why:
            problem(why)
        got = np.asarray(value).dtype
        if got != dtype:
            problem(f"{label}: generated code returned dtype {got}, the inputs' result type "
                    f"is {dtype}")

    # No aliasing: of the inputs, of each other; the inputs are left as they were.
    for i, (label, value) in enumerate(slots):
        if isinstance(value, np.ndarray) and value.size:
            for name, a in arrays.items():
                if np.shares_memory(value, a):
                    problem(f"{label} shares memory with the input '{name}'")
            for other, v in slots[i + 1:]:
                if isinstance(v, np.ndarray) and np.shares_memory(value, v):
                    problem(f"{label} and {other} share memory")
    for name, a in arrays.items():
        if not np.array_equal(np.asarray(a), pristine[name]):
            problem(f"the call modified the input '{name}'")

    # The IR interpreter.
    try:
        via_ir = _flatten(case, result.evaluate_ir(**arrays))
        for (label, value), (_, ir) in zip(slots, via_ir):
            why = _mismatch(value, ir, rtol, f"{label}: generated code vs evaluate_ir")
            if why:
                problem(why)
    except Exception as e:
        problem(f"evaluate_ir raised {type(e).__name__}: {str(e)[:300]}")

    # The formula, parsed back output by output.
    try:
        formula = result.formula
        if verbose:
            print("formula:\n" + formula)
        positions = list(getattr(result, "positions", range(len(slots))))
        if "..." in formula:
            problem("the formula contains an elision '...'")
        programs = output_programs(formula, [name for name, _ in result.program.outputs])
        shapes = dict(case.declared)  # the formula has no inline declarations
        for k, (label, value) in enumerate(slots):
            name, text = programs[positions[k]]
            again = einderiv.compile(text, shapes)(**arrays)
            why = _mismatch(again, value, rtol,
                            f"{label}: the formula's '{name}' parsed back vs generated code")
            if why:
                problem(why)
            if np.asarray(again).dtype != dtype:
                problem(f"{label}: the formula's '{name}' parsed back returned dtype "
                        f"{np.asarray(again).dtype}, not {dtype}")
    except Exception as e:
        problem(f"the formula round trip raised {type(e).__name__}: {str(e)[:300]}")

    # The generated module on its own (SPEC 4: importable and runnable by itself).
    try:
        scope: dict = {}
        exec(result.source, scope)  # einderiv's generated module, never user text
        function = scope[re.findall(r"^def (\w+)\(", result.source, re.M)[-1]]
        # Positional, in the module's order: a parameter need not carry the user's name
        # (`lambda` is not a valid one).
        values = function(*[arrays[name] for name in result._generated().arguments])
        values = list(values) if isinstance(values, tuple) else [values]
        positions = list(getattr(result, "positions", range(len(slots))))
        for k, (label, value) in enumerate(slots):
            # On its own, the module computes as numpy would: without the call's widening of
            # mixed precision inputs to their result type, float32 parts stay float32.
            loose = max(RTOL[np.dtype(a.dtype)] for a in arrays.values())
            why = _mismatch(values[positions[k]], value, loose,
                            f"{label}: result.source run on its own vs generated code")
            if why:
                problem(why)
    except Exception as e:
        problem(f"result.source run on its own raised {type(e).__name__}: {str(e)[:300]}")

    # A second call with the same values in other containers (or the other float dtype), then
    # the first call again: caches keyed on what came before must not change any answer.
    rng = np.random.default_rng([SEED, 3, zlib.crc32(case.source.encode())])
    how = str(rng.choice(["copy", "strided", "fortran", "matrix", "readonly", "scalars",
                          "other dtype"]))
    try:
        variant = _variant(rng, arrays, how)
        second = _flatten(case, result(**variant))
        dtype2 = np.result_type(*variant.values())  # a Python float is weak: keeps float32
        # Casting float64 inputs to float32 rounds them: then only float32 agreement is due.
        # (A Python float for a float64 scalar can make the result type float32.)
        tol = 10 * RTOL[np.dtype(np.float32)] if how == "other dtype" else max(
            rtol, RTOL[np.dtype(dtype2)])
        for (label, value), (_, v2) in zip(slots, second):
            why = _mismatch(v2, value, tol, f"{label}: second call ({how} inputs) vs first call")
            if why:
                problem(why)
            if np.asarray(v2).dtype != dtype2:
                problem(f"{label}: second call ({how} inputs) returned dtype "
                        f"{np.asarray(v2).dtype}, the inputs' result type is {dtype2}")
        third = _flatten(case, result(**arrays))
        for (label, value), (_, v3) in zip(slots, third):
            why = _mismatch(v3, value, rtol, f"{label}: third call (the first inputs again, "
                                             f"after {how} inputs) vs first call")
            if why:
                problem(why)
    except Exception as e:
        problem(f"a second call with {how} inputs raised {type(e).__name__}: {str(e)[:300]}")
    for (label, value), before in zip(slots, saved):
        if not np.array_equal(np.asarray(value), before, equal_nan=True):
            problem(f"{label}: the first call's result changed during later calls")
    return problems


def run(cases, verbose=False) -> tuple[list[str], float]:
    failures = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix
        for case in cases:
            for form in case.forms:
                _count(f"slice {form}")
            problems = check_case(case, verbose)
            if problems:
                _count("programs failing")
                failures.append(case.describe() + "\n  " + "\n  ".join(problems))
    return failures, time.perf_counter() - start


def report(failures: list[str], total: int) -> str:
    shown = "\n\n".join(failures[:SHOW])
    more = f"\n\n... and {len(failures) - SHOW} more failing programs" if len(
        failures) > SHOW else ""
    return f"{len(failures)} of {total} programs disagree:\n\n{shown}{more}"


# -- the tests ---------------------------------------------------------------------------------

@pytest.mark.sample(2)  # (five of the ten batches by default: the suite's time budget)
@pytest.mark.parametrize("start", range(0, CI_PROGRAMS, BATCH),
                         ids=lambda s: f"programs{s}-{s + BATCH - 1}")
def test_random_programs(start):
    failures, _ = run(make_case(i) for i in range(start, start + BATCH))
    if failures:
        pytest.fail(report(failures, BATCH), pytrace=False)


# The round trip of conftest.py is this test's own third way already: on formulas of thousands
# of lines, doing it twice would double the test's time.
@pytest.mark.no_roundtrip
@pytest.mark.parametrize("index", range(CI_BIG))
def test_big_programs(index):
    failures, _ = run([make_big(index)])
    if failures:
        pytest.fail(report(failures, 1), pytrace=False)


def test_the_generator_covers_the_constructs():
    """The CI programs include every construct the issue lists (a generator change that
    stopped writing one would leave it untested)."""
    forms, text, kinds, dtypes, hazards, twins = set(), "", set(), set(), 0, 0
    for i in range(CI_PROGRAMS):
        case = make_case(i)
        forms |= case.forms
        text += case.source + "\n"
        kinds.add((case.kind, isinstance(case.wrt, list) and len(case.wrt) > 1))
        dtypes.add(tuple(sorted({str(a.dtype) for a in case.arrays.values()})))
        hazards += case.expect == "maybe"
        twins += case.expect == "reject"
    for form in ["n:", "n:n", ":0", "0:0", "1:n", ":p", "-k:", ":-k", "n-1:", ":n-1", "-k:-k",
                 "k:k", "k:", ":k", "reversed", "n-k:", ":n", "0:n"]:
        assert form in forms, form
    for pattern in [r"\[n:, ", r"\[\w+, \w+\]", r"\[None, :\]", r"\[:, None\]", r"\bdx = ",
                    r"\bout = ", r"\bt0 = ", r"\bvalue = ", r"\bgrad = ", r"softmax\(",
                    r"logsumexp\(", r"mean\(", r"\bdot\(", r"outer\(", r"\btr\(", r"diag\(",
                    r"\.T\b", r"log\(", r"sqrt\(", r"relu\(", r"softplus\(", r"sigmoid\(",
                    r"axis=", r" @ ", r"eye\(n\)"]:
        assert re.search(pattern, text), pattern
    for kind in ["compile", "grad", "value_and_grad", "jacobian", "hessian"]:
        assert (kind, False) in kinds and (kind == "compile" or (kind, True) in kinds), kind
    assert {("float64",), ("float32",), ("float32", "float64")} <= dtypes
    assert hazards >= 10 and twins >= 10
    assert CI_PROGRAMS >= 1000


# bold t0, italic x, fullwidth x, x + combining accent, e-acute, the fi ligature, the Kelvin
# sign, black-letter H, x squared
NON_ASCII = ["\U0001d42d0", "\U0001d465", "\uff58", "x\u0301", "\u00e9", "\ufb01", "\u212a",
             "\u210c", "x\u00b2"]


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("name", NON_ASCII)
def test_names_equal_after_nfkc_are_refused(name):
    """Per the decision on issue 10 (7): a non-ASCII name is refused with a clear
    EinderivError wherever it enters (source text, shapes, dimensions, wrt, einderiv.var),
    never computed."""
    with pytest.raises(EinderivError):
        einderiv.compile(f"t0: [n]; {name}: [n]; sum({name} * t0)")
    with pytest.raises(EinderivError):
        einderiv.compile("sum(t0 * t0)", {"t0": ("n",), name: ("n",)})
    with pytest.raises(EinderivError):
        einderiv.compile("sum(t0 * t0)", {"t0": (name,)})
    with pytest.raises(EinderivError):
        einderiv.grad("sum(x * x)", name, {"x": ("n",)})
    with pytest.raises(EinderivError):
        einderiv.var(name, ("n",))
    with pytest.raises(EinderivError):
        einderiv.compile("sum(x * x)", {"x": ("n",)})(x=np.ones(2), **{name: np.ones(2)})


@slow
@pytest.mark.parametrize("start", range(CI_PROGRAMS, CI_PROGRAMS + SLOW_PROGRAMS, 1000),
                         ids=lambda s: f"programs{s}-{s + 999}")
def test_random_programs_slow(start):
    failures, _ = run(make_case(i) for i in range(start, start + 1000))
    if failures:
        pytest.fail(report(failures, 1000), pytrace=False)


@slow
@pytest.mark.no_roundtrip
@pytest.mark.parametrize("index", range(CI_BIG, CI_BIG + SLOW_BIG))
def test_big_programs_slow(index):
    failures, _ = run([make_big(index)])
    if failures:
        pytest.fail(report(failures, 1), pytrace=False)


def main(argv: list[str]) -> int:
    """`python tests/test_differential.py INDEX [INDEX ...]` replays programs verbosely
    (`bigK` for a big one); `--count N [START]` runs programs START..START+N-1 (START 0 by
    default) and prints every failure and a summary."""
    if argv[:1] == ["--count"]:
        total, first = int(argv[1]), int(argv[2]) if len(argv) > 2 else 0
        failures, seconds = run(make_case(i) for i in range(first, first + total))
        print("\n\n".join(failures))
        print(f"\n{len(failures)} of {total} programs disagree; {seconds:.1f} s")
        for key in sorted(STATS):
            print(f"  {key}: {STATS[key]}")
        return 1 if failures else 0
    bad = 0
    for arg in argv:
        case = make_big(int(arg[3:])) if arg.startswith("big") else make_case(int(arg))
        print(case.describe(width=10**9))
        problems = check_case(case, verbose=True)
        print("ok" if not problems else f"{len(problems)} problems")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
