"""Property test: random well-typed expressions over the whole language, differentiated
symbolically and compared with central finite differences.

A recursive hypothesis strategy builds the source text of an expression together with its
shape, over the dimensions `n` and `m` (sizes 2..4, drawn per example): variables shaped (),
(n,), (m,), (n,m), (m,n), (n,n); the operators + - * / @ ** (a positive base or a small
constant exponent), unary minus, .T, broadcasting (`v[:, None]`, scalars), indexing and slices,
elementwise functions kept inside their domains, sum/mean with and without axis,
logsumexp/softmax with axes, dot/outer/tr/diag, inv/det/logdet of a well-conditioned matrix,
norm, einsum, eye, axes of size 1, and bound temporaries; comparisons as masks (in products and
as where's condition) and argmax as a value; the linear index maps cumsum, reversals, steps and
dilate, reshape (sizes products of dimensions), triu/tril and kron; solve (of a well-conditioned
matrix, symmetric or not), cholesky of a symmetric positive definite one, matrix_power with a
small literal exponent (negative ones of a well-conditioned matrix), pinv of a tall matrix of
full rank (a positive definite block on top of another), einsum with `...`, and the
convolutions correlate and convolve (every mode, a stride), conv1d and conv2d (padding), their
kernels of integer sizes made by stack, slices or outer.

For each expression, `jacobian` and `grad` (of the scalar output, or of `sum((expr) * C)` with a
random weight C) are compared with central differences of the compiled forward expression
(Richardson-extrapolated from two steps), scale-aware: |a - b| <= 1e-5 * max(1, max|b|) + 1e-8.
A scalar output's Hessian (every block, for up to three variables) is compared with differences
of its gradient. An example is skipped (and counted) when its value is not finite or huge, when
the argument of a kink (abs, relu, sign, maximum, minimum, norm, a comparison; argmax's top two
entries) comes within 1e-2 of it, or when
the differences at the two steps disagree by more than the tolerance (they are then no
reference). No generated text is ever evaluated by Python: expressions go to einderiv as strings.

`EINDERIV_SLOW=1` checks every drawn expression. The default run draws the same ones (and
asserts the same coverage of the constructs drawn) and checks every third, and every one with a
construct of `CONSTRUCTS` checked fewer than `MIN_EACH` times so far.
"""
from __future__ import annotations

import os
import time

import hypothesis
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import einderiv

MAX_EXAMPLES = 600
MIN_CHECKED = 550  # expressions that must be fully checked (not skipped) in one full run
SAMPLE = 1 if os.environ.get("EINDERIV_SLOW") else 3  # the default run checks every third

RTOL = 1e-5
ATOL = 1e-8
HUGE = 1e4  # forward values beyond this are skipped: differences lose their precision

N, M = "n", "m"
SHAPES = [(), (N,), (M,), (N, M), (M, N), (N, N), (M, M)]

# The variables of every example, by shape. (m, m) has none: it is always built.
VARIABLES = {
    (): ["s0", "s1"],
    (N,): ["u0", "u1"],
    (M,): ["v0", "v1"],
    (N, M): ["A0", "A1"],
    (M, N): ["B0"],
    (N, N): ["S0", "S1"],
}
DECLARED = {name: shape for shape, names in VARIABLES.items() for name in names}

# Unary templates safe on the whole real line; {0} is the argument (already parenthesized).
SAFE_UNARY = [
    "sin({0})", "cos({0})", "tanh({0})", "arctan({0})", "sigmoid({0})", "softplus({0})",
    "square({0})", "exp(tanh({0}))", "expm1(tanh({0}))", "sinh(tanh({0}))", "cosh(tanh({0}))",
    "tan(tanh({0}))", "log(1 + {0} * {0})", "log1p(square({0}))", "sqrt(2 + tanh({0}))",
    "sqrt(1 + {0} * {0})", "exp(0.3 * sin({0}))",
    "erf({0})", "erfc({0})", "gelu({0})", "arcsinh({0})", "arcsin(0.9 * tanh({0}))",
    "arccos(0.9 * tanh({0}))", "arctanh(0.9 * tanh({0}))", "hypot({0}, 0.5)",
    "lgamma(1.5 + square({0}))", "digamma(1.5 + square({0}))", "trigamma(1 + square({0}))",
    "logsigmoid({0})", "logaddexp({0}, 0.5 * {0})",
]
# Unary templates with a kink at 0 of the argument.
KINK_UNARY = ["abs({0})", "relu({0})", "(sign({0}) * {0})"]
# Positive expressions of an argument (bases of powers, denominators).
POSITIVE = ["(1 + {0} * {0})", "exp(tanh({0}))", "(1.5 + sin({0}))", "sqrt(2 + cos({0}))",
            "sigmoid({0})", "(2 + tanh({0}))", "softplus({0})"]
CONST_EXPONENTS = ["2", "3", "0.5", "1.5", "-1", "-0.5", "2.5"]
CONSTANTS = ["0.5", "2", "1.5", "3", "0.25"]


class Builder:
    """Draws one expression: `expr(shape)` returns source text of that shape."""

    def __init__(self, draw, budget: int):
        self.draw = draw
        self.budget = budget
        self.guards: list[str] = []  # scalar expressions that must stay away from 0
        self.temporaries: dict[tuple, list[str]] = {}

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def dim(self):
        return self.choice([N, M])

    # -- leaves --------------------------------------------------------------------------------

    def leaf(self, shape) -> str:
        options = list(VARIABLES.get(shape, [])) + self.temporaries.get(shape, [])
        if shape == ():
            options += CONSTANTS
        if shape == (M, M):
            options += ["(B0 @ A0)", "outer(v0, v1)"]
        return self.choice(options)

    # -- the recursive generator ---------------------------------------------------------------

    def expr(self, shape) -> str:
        if self.budget <= 0:
            return self.leaf(shape)
        self.budget -= 1
        productions = ["leaf", "arith", "arith", "div", "pow", "neg", "unary", "unary", "kink",
                       "minmax", "matmul", "reduce", "index", "slice", "einsum", "linalg",
                       "mask", "linear", "linear", "conv",
                       # (twice more: cholesky and kron, one option among several there, were
                       # drawn as rarely as 0 to 2 times in 600 in some runs)
                       "linalg", "linalg", "linear"]
        if len(shape) >= 1:
            productions += ["softmax", "broadcast", "size_one", "transpose"]
        else:
            productions += ["size_one"]
        return getattr(self, "p_" + self.choice(productions))(shape)

    def p_leaf(self, shape):
        return self.leaf(shape)

    def sub_shape(self, shape):
        """A shape that broadcasts to `shape`, with the text to place it there."""
        options = [(shape, "{}"), ((), "{}")]
        if len(shape) == 2:
            options += [(shape[1:], "{}"), ((shape[0],), "{}[:, None]"),
                        ((shape[1],), "{}[None, :]")]
        return self.choice(options)

    def p_arith(self, shape):
        op = self.choice(["+", "-", "*"])
        left = self.expr(shape)
        sub, template = self.sub_shape(shape)
        right = template.format(self.expr(sub))
        if self.draw(st.booleans()):
            left, right = right, left
        return f"({left} {op} {right})"

    def positive(self, shape) -> str:
        return self.choice(POSITIVE).format(self.expr(shape))

    def p_div(self, shape):
        sub, template = self.sub_shape(shape)
        if self.draw(st.booleans()):
            return f"({self.expr(shape)} / {template.format(self.positive(sub))})"
        return f"({template.format(self.expr(sub))} / {self.positive(shape)})"

    def p_pow(self, shape):
        kind = self.choice(["const", "int", "variable", "base"])
        if kind == "const":
            return f"({self.positive(shape)} ** {self.choice(CONST_EXPONENTS)})"
        if kind == "int":
            return f"({self.expr(shape)} ** {self.choice(['2', '3'])})"
        if kind == "variable":  # a positive base to a variable exponent
            sub, template = self.sub_shape(shape)
            exponent = template.format(f"tanh({self.expr(sub)})")
            if self.draw(st.booleans()):
                return f"({self.positive(shape)} ** {exponent})"
            return f"({template.format(self.positive(sub))} ** tanh({self.expr(shape)}))"
        return f"({self.choice(['2', '0.5', '1.5'])} ** tanh({self.expr(shape)}))"

    def p_neg(self, shape):
        return f"(-{self.expr(shape)})" if self.draw(st.booleans()) else f"(+{self.expr(shape)})"

    def p_unary(self, shape):
        return self.choice(SAFE_UNARY).format(self.expr(shape))

    def p_kink(self, shape):
        arg = self.expr(shape)
        self.guards.append(f"{arg}")
        return self.choice(KINK_UNARY).format(arg)

    def p_minmax(self, shape):
        fn = self.choice(["maximum", "minimum"])
        a = self.expr(shape)
        sub, template = self.sub_shape(shape)
        b = template.format(self.expr(sub)) if self.draw(st.booleans()) else self.choice(
            ["0.3", "-0.2"])
        self.guards.append(f"({a} - {b})")
        return f"{fn}({a}, {b})" if self.draw(st.booleans()) else f"{fn}({b}, {a})"

    def p_matmul(self, shape):
        op = self.choice(["@", "dot"])
        c = self.dim()
        if len(shape) == 2:
            a, b = (shape[0], c), (c, shape[1])
        elif len(shape) == 1:
            a, b = self.choice([((shape[0], c), (c,)), ((c,), (c, shape[0]))])
        else:
            a, b = (c,), (c,)
        left, right = self.expr(a), self.expr(b)
        return f"({left} @ {right})" if op == "@" else f"dot({left}, {right})"

    def p_transpose(self, shape):
        if len(shape) == 1:  # a vector's .T is itself
            return f"{self.expr(shape)}.T"
        return f"{self.expr((shape[1], shape[0]))}.T"

    def p_size_one(self, shape):
        """Axes of size 1: inserted with None, contracted by @, reduced or picked away."""
        if shape == ():
            c = self.dim()
            return self.choice([
                f"({self.expr((c,))}[None, :] @ {self.expr((c,))}[:, None])[0, 0]",
                f"sum({self.expr(())}[None] * {self.expr((c,))})",
                f"logsumexp({self.expr((c,))}[None, :], axis=1)[0]",
            ])
        if len(shape) == 1:
            a, c = shape[0], self.dim()
            return self.choice([
                f"({self.expr((a,))}[None, :] @ {self.expr((a, a))})[0]",
                f"sum({self.expr((a,))}[:, None], axis=1)",
                f"mean({self.expr((a,))}[None, :] * {self.expr((c, a))}, axis=0)",
                f"softmax({self.expr((a,))}[None, :], axis=0)[0]",
                f"({self.expr((a, c))} @ {self.expr((c,))}[:, None])[:, 0]",
            ])
        a, b = shape
        return self.choice([
            f"({self.expr((a,))}[:, None] @ {self.expr((b,))}[None, :])",
            f"(sum({self.expr(shape)}, axis=0)[None, :] + {self.expr(shape)})",
            f"({self.expr(shape)} * logsumexp({self.expr(shape)}, axis=1)[:, None])",
        ])

    def p_reduce(self, shape):
        if shape == ():
            src = self.choice([s for s in SHAPES if s])
            inner = self.expr(src)
            kind = self.choice(["sum", "mean", "logsumexp", "norm", "sum-all-axes", "var",
                                "prod"])
            if kind == "norm":
                self.guards.append(f"sum({inner} * {inner})")
                return f"norm({inner})"
            if kind == "sum-all-axes":
                axes = "(0, 1)" if len(src) == 2 else "0"
                return f"{self.choice(['sum', 'mean', 'logsumexp'])}({inner}, axis={axes})"
            return f"{kind}({inner})"
        if len(shape) == 1:
            c = self.dim()
            src, axis = self.choice([((shape[0], c), self.choice(["1", "-1"])),
                                     ((c, shape[0]), self.choice(["0", "-2"]))])
            fn = self.choice(["sum", "mean", "logsumexp", "var", "prod"])
            keyword = "axis=" if self.draw(st.booleans()) else ""
            return f"{fn}({self.expr(src)}, {keyword}{axis})"
        # a matrix from a reduction, broadcast back along the reduced axis
        return f"(sum({self.expr(shape)}, axis=0)[None, :] * {self.expr(shape)})"

    def p_softmax(self, shape):
        inner = self.expr(shape)
        if len(shape) == 1:
            return self.choice([f"softmax({inner})", f"softmax({inner}, axis=0)"])
        return self.choice([f"softmax({inner})", f"softmax({inner}, axis=0)",
                            f"softmax({inner}, axis=-1)", f"softmax({inner}, axis=(0, 1))"])

    def p_broadcast(self, shape):
        if len(shape) == 1:
            return f"({self.expr(shape)} * {self.expr(())})"
        a, b = shape
        return self.choice([
            f"({self.expr((a,))}[:, None] * {self.expr((b,))}[None, :])",
            f"({self.expr((a,))}[:, None] + {self.expr((b,))})",
            f"({self.expr((b,))}[None, :] - {self.expr(shape)})",
        ])

    def p_mask(self, shape):
        """Comparisons as masks (issue 14): in a product and as a where's condition, their
        operands kept apart (a guard), and argmax as a value, its top two entries apart."""
        a, b = self.expr(shape), self.expr(shape)
        sub, template = self.sub_shape(shape)
        c = template.format(self.expr(sub))
        op = self.choice(["<", "<=", ">", ">="])
        self.guards.append(f"({b} - {c})")
        kind = self.choice(["argmax", "product", "where"] if shape == () else
                           ["product", "where"])
        if kind == "product":
            return f"({a} * ({b} {op} {c}))"
        if kind == "where":
            return f"where({b} {op} {c}, {a}, {self.expr(shape)})"
        v = self.expr((self.dim(),))
        # the gap between the largest entry and the next: argmax stays put within it
        self.guards.append(f"(max({v}) - max({v} - 1000 * argmax_onehot({v})))")
        return f"({a} * argmax({v}))"

    def p_linear(self, shape):
        """The linear index maps of issue 14: cumsum, reversals, steps and their adjoint
        dilate, reshape (sizes products of dimensions), triu/tril and kron."""
        if shape == ():
            c, d = self.dim(), self.dim()
            return self.choice([
                f"sum(sin(kron({self.expr((c, d))}, {self.expr((d, c))})))",
                f"sum(sin(cumsum({self.expr((c, d))}, axis={self.choice(['0', '1'])})))",
                f"sum(cumsum({self.expr((c, d))}) * {self.expr(())})",
                f"({self.expr((c,))}[::2] @ {self.expr((c,))}[::-2])",
                f"sum({self.expr((c, d))}[1::2, ::-1] ** 2)",
                f"sum(reshape({self.expr((c, d))}, (-1,)) * reshape({self.expr((c, d))}, "
                f"({d} * {c},)))",
                f"sum({self.expr((c, d))}[::-1, 1::2])",
            ])
        if len(shape) == 1:
            a = shape[0]
            return self.choice([
                f"flip({self.expr(shape)})", f"cumsum({self.expr(shape)})",
                f"{self.expr(shape)}[::-1]",
                f"cumsum({self.expr((self.dim(), a))}, axis=1)[-1]",
                f"dilate({self.expr(shape)}[::2], 2, {a})",
                f"reshape({self.expr((a, self.dim()))}, (-1,))[:{a}]",
            ])
        a, b = shape
        return self.choice([
            f"triu({self.expr(shape)}, {self.choice(['0', '1', '-1'])})",
            f"tril({self.expr(shape)}, {self.choice(['0', '1', '-1'])})",
            f"cumsum({self.expr(shape)}, axis={self.choice(['0', '1', '-1'])})",
            f"{self.expr(shape)}[::-1]", f"{self.expr(shape)}[:, ::-1]",
            f"reshape({self.expr((b, a))}, ({a}, {b}))",
            f"reshape(reshape({self.expr(shape)}, ({a} * {b},)), ({a}, {b}))",
            f"dilate({self.expr(shape)}[::2], 2, {a})",
        ])

    def p_index(self, shape):
        j = self.choice(["0", "1", "-1"])
        c = self.dim()
        if shape == ():
            if self.draw(st.booleans()):
                return f"{self.expr((c,))}[{j}]"
            return f"{self.expr((c, self.dim()))}[{j}, {self.choice(['0', '1', '-1'])}]"
        if len(shape) == 1:
            if self.draw(st.booleans()):
                return f"{self.expr((shape[0], c))}[:, {j}]"
            return f"{self.expr((c, shape[0]))}[{j}]"
        return f"{self.expr(shape)}[:, :]"

    def p_slice(self, shape):
        c = self.dim()
        if shape == ():
            v = self.expr((c,))
            return self.choice([f"sum({v}[1:] * {v}[:-1])", f"({v}[0:2] @ {v}[-2:])",
                                f"sum({self.expr((c, self.dim()))}[1:, :-1])"])
        if len(shape) == 1:
            return f"({self.expr((shape[0], c))}[:, 1:] @ {self.expr((c,))}[1:])"
        a, b = shape
        return f"({self.expr((c, a))}[0:2, :].T @ {self.expr((c, b))}[-2:])"

    def p_einsum(self, shape):
        c = self.dim()
        ellipsis = self.draw(st.booleans())  # `...`: the axes no letter names (issue 14)
        if len(shape) == 2:
            a, b = shape
            if ellipsis:
                return self.pick(
                    lambda: f'einsum("...ij,...jk->...ik", {self.expr((a, c))}, '
                            f'{self.expr((c, b))})',
                    lambda: f'einsum("...i,i->...i", {self.expr(shape)}, {self.expr((b,))})',
                    lambda: f'einsum("...j,...j->...j", {self.expr(shape)}, '
                            f'{self.expr((b,))}[None, :])',  # a size-1 axis broadcast
                )
            return self.choice([
                f'einsum("ij,jk->ik", {self.expr((a, c))}, {self.expr((c, b))})',
                f'einsum("ij->ji", {self.expr((b, a))})',
                f'einsum("ij,i->ij", {self.expr(shape)}, {self.expr((a,))})',
            ])
        if len(shape) == 1:
            a = shape[0]
            if ellipsis:
                return self.pick(
                    lambda: f'einsum("...ij,...j->...i", {self.expr((a, c))}, '
                            f'{self.expr((c,))})',
                    lambda: f'einsum("...i,...i->...", {self.expr((a, c))}, '
                            f'{self.expr((a, c))})',
                    lambda: f'einsum("i...->...", {self.expr((c, a))})',
                )
            return self.choice([
                f'einsum("ij,j->i", {self.expr((a, c))}, {self.expr((c,))})',
                f'einsum("ii->i", {self.expr((a, a))})',
                f'einsum("ji,j", {self.expr((c, a))}, {self.expr((c,))})',
            ])
        if ellipsis:
            return self.pick(
                lambda: f'einsum("...i,...i", {self.expr((c,))}, {self.expr((c,))})',
                lambda: f'einsum("...ii", {self.expr((c, c))})',
                lambda: f'sum(einsum("...ij,...j", {self.expr((c, c))}, {self.expr((c,))}))',
            )
        d = self.dim()
        return self.choice([
            f'einsum("ij,ij->", {self.expr((c, d))}, {self.expr((c, d))})',
            f'einsum("i,i", {self.expr((c,))}, {self.expr((c,))})',
            f'einsum("ii", {self.expr((c, c))})',
        ])

    def well_conditioned(self, d) -> str:
        """A symmetric positive definite matrix with eigenvalues >= 1.5."""
        e = self.expr((d, self.dim()))
        return self.choice([f"({e} @ {e}.T + eye({d}) * 2)", f"(eye({d}) * 1.5 + {e} @ {e}.T)"])

    def regular(self, d) -> str:
        """A matrix, not symmetric, whose singular values are >= 0.4: 2 I plus one whose
        2-norm is at most 0.4 d <= 1.6 (entries in (-0.4, 0.4))."""
        return f"(eye({d}) * 2 + 0.4 * tanh({self.expr((d, d))}))"

    def tall(self, d) -> str:
        """A [2 d, d] matrix of full rank, its singular values >= 1.5 (those of its top)."""
        return f"concatenate(({self.well_conditioned(d)}, {self.expr((d, d))}))"

    def pick(self, *options) -> str:
        """One of the options (callables), only that one drawn."""
        return self.choice(options)()

    def p_linalg(self, shape):
        """Matrix functions of well-conditioned matrices (issue 14 item 5 too: solve,
        cholesky, matrix_power, pinv)."""
        if shape == ():
            c = self.dim()
            return self.choice([
                f"tr({self.expr((c, c))})", f"trace({self.expr((c, c))})",
                f"logdet({self.well_conditioned(c)})",
                f"(det({self.well_conditioned(c)}) * 0.01)",
                f"sum(inv({self.well_conditioned(c)}) * {self.expr((c, c))})",
            ]) if self.draw(st.booleans()) else self.pick(
                lambda: f"({self.expr((c,))} @ solve({self.regular(c)}, {self.expr((c,))}))",
                lambda: f"sum(log(diag(cholesky({self.well_conditioned(c)}))))",
                lambda: f"tr(matrix_power({self.expr((c, c))}, {self.choice(['2', '3'])}))",
                lambda: f"sum(sin(pinv({self.tall(c)})))",
            )
        if len(shape) == 1:
            a = shape[0]
            return self.pick(
                lambda: f"diag({self.expr((a, a))})",
                lambda: f"(inv({self.well_conditioned(a)}) @ {self.expr((a,))})",
                lambda: f"solve({self.regular(a)}, {self.expr((a,))})",
                lambda: f"(cholesky({self.well_conditioned(a)}) @ {self.expr((a,))})",
                lambda: f"(pinv({self.tall(a)}) @ concatenate(({self.expr((a,))}, "
                        f"{self.expr((a,))})))",
            )
        a, b = shape
        options = [lambda: f"outer({self.expr((a,))}, {self.expr((b,))})",
                   lambda: f"solve({self.regular(a)}, {self.expr(shape)})",
                   lambda: f"(pinv({self.tall(a)}) @ concatenate(({self.expr(shape)}, "
                           f"{self.expr(shape)})))"]
        if a == b:
            options += [
                lambda: f"diag({self.expr((a,))})", lambda: f"inv({self.well_conditioned(a)})",
                lambda: f"(eye({a}) * {self.expr(())} + {self.expr(shape)})",
                lambda: f"cholesky({self.well_conditioned(a)})",
                lambda: f"matrix_power({self.expr(shape)}, {self.choice(['0', '2', '3'])})",
                lambda: f"matrix_power({self.regular(a)}, {self.choice(['-1', '-2'])})",
                lambda: f"pinv({self.regular(a)})"]
        return self.pick(*options)

    def kernel(self, k: int) -> str:
        """A vector of k entries (an integer size, as a kernel must have)."""
        if k == 2 and self.draw(st.booleans()):
            return f"{self.expr((self.dim(),))}[{self.choice([':2', '-2:'])}]"
        return f"stack(({', '.join(self.expr(()) for _ in range(k))}))"

    def p_conv(self, shape):
        """Convolutions and correlations (issue 14 item 7), numpy's of vectors and PyTorch's
        layers: kernels of integer sizes, signals of the shape's dimensions (a batch and
        channels of size 1 added and taken off), modes, padding and a stride that give sizes
        back in the shape's dimensions, or reduced."""
        if shape == ():
            return self.pick(
                lambda: f"sum(sin(correlate({self.expr((self.dim(),))}, {self.kernel(2)}, "
                        f"stride=2)))",
                lambda: f"sum(correlate({self.expr((self.dim(),))}, {self.kernel(2)}) ** 2)",
                lambda: f"sum(sin(convolve({self.expr((self.dim(),))}, {self.kernel(3)})))",
                lambda: f"sum(tanh(conv2d({self.expr((self.dim(), self.dim()))}[None, None], "
                        f"{self.expr((self.dim(), self.dim()))}[:2, :2][None, None])))",
            )
        if len(shape) == 1:
            fn = self.choice(["correlate", "convolve"])
            return self.pick(
                lambda: f'{fn}({self.expr(shape)}, {self.kernel(self.choice([2, 3]))}, '
                        f'mode="same")',
                lambda: f'{fn}({self.expr(shape)}, {self.kernel(2)}, mode="full")[1:]',
                lambda: f"pad(correlate({self.expr(shape)}, {self.kernel(2)}), (1, 0))",
            )
        a, b = shape
        c = self.dim()
        return self.pick(
            # [1, c, b] by [a, c, 3], padding 1: [1, a, b]
            lambda: f"conv1d({self.expr((c, b))}[None], stack(({self.expr((a, c))}, "
                    f"{self.expr((a, c))}, {self.expr((a, c))}), axis=-1), padding=1)[0]",
            # a 3 x 3 kernel of rank one, padding 1
            lambda: f"conv2d({self.expr(shape)}[None, None], outer({self.kernel(3)}, "
                    f"{self.kernel(3)})[None, None], padding=1)[0, 0]",
            # a 2 x 2 kernel, padding 1: one more row and column, the first ones dropped
            lambda: f"conv2d({self.expr(shape)}[None, None], {self.expr((c, self.dim()))}"
                    f"[:2, :2][None, None], padding=1)[0, 0, 1:, 1:]",
        )


@st.composite
def programs(draw, max_budget=16):
    """(statements, body, output shape, guards, sizes, seed)."""
    builder = Builder(draw, draw(st.integers(2, max_budget)))
    statements = []
    if draw(st.integers(0, 3)) == 0:  # sometimes a bound temporary, a likely leaf below
        shape = draw(st.sampled_from(SHAPES))
        statements.append(f"t0 = {builder.expr(shape)}")
        builder.temporaries[shape] = ["t0"] * 3
        builder.budget = draw(st.integers(2, 12))
    out_shape = draw(st.sampled_from(SHAPES))
    body = builder.expr(out_shape)
    sizes = {N: draw(st.integers(2, 4)), M: draw(st.integers(2, 4))}
    seed = draw(st.integers(0, 2**32 - 1))
    return statements, body, out_shape, builder.guards, sizes, seed


def source_of(statements, body):
    return "; ".join([*statements, body])


def make_inputs(sizes, seed):
    rng = np.random.default_rng(seed)
    return {name: 0.8 * rng.standard_normal(tuple(sizes[d] for d in shape))
            for name, shape in DECLARED.items()}


def _differences(f, arrays, wrt, h):
    x = np.asarray(arrays[wrt], dtype=float)
    base = np.asarray(f(**arrays), dtype=float)
    out = np.empty(base.shape + x.shape)
    for idx in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[idx]))
        plus, minus = x.copy(), x.copy()
        plus[idx] += step
        minus[idx] -= step
        fp = np.asarray(f(**{**arrays, wrt: plus}), dtype=float)
        fm = np.asarray(f(**{**arrays, wrt: minus}), dtype=float)
        out[(...,) + idx] = (fp - fm) / (2 * step)
    return out


class Reference:
    """d f / d arrays[wrt] (shape f.shape + wrt.shape) by central differences at steps h and
    h/2, combined by Richardson extrapolation. `reliable` is False where the two plain
    estimates already disagree by more than the tolerance (a rapidly oscillating or steep
    function): there differences are no reference at all, and the example is skipped."""

    def __init__(self, f, arrays, wrt, h=1e-6):
        coarse = _differences(f, arrays, wrt, h)
        fine = _differences(f, arrays, wrt, h / 2)
        self.value = (4 * fine - coarse) / 3
        spread = float(np.max(np.abs(fine - coarse))) if fine.size else 0.0
        self.reliable = bool(np.all(np.isfinite(self.value))) and spread <= RTOL * scale_of(
            self.value)

    def weighted(self, weight):
        return np.tensordot(weight, self.value, axes=weight.ndim)


def scale_of(expected) -> float:
    return max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0


def assert_matches(actual, expected, what, source):
    actual = np.asarray(actual, dtype=float)
    assert actual.shape == expected.shape, (what, source, actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = scale_of(expected)
    assert err <= RTOL * scale + ATOL, (
        f"{what} of {source!r}: error {err:.3e} (scale {scale:.3e})\n"
        f"einderiv:\n{actual}\nfinite differences:\n{expected}")


STATS = {"checked": 0, "skipped": {}, "hessians": 0, "by_shape": {}, "constructs": {},
         "drawn": {}, "examples": 0}
# Constructs of issue 14 that the drawn expressions must contain, each at least MIN_EACH times,
# and the checked ones (not skipped by a guard) at least once: a change to the generator that
# stops drawing one, or that makes every one skipped, fails, not skips, the test. (How many
# of a construct's drawn expressions are checked varies between runs, 2 to 7 of cholesky's:
# which examples hypothesis draws after one a guard rejects depends on the last bits of the
# values, and those on what the process built before, the suite's earlier tests.)
CONSTRUCTS = ["solve(", "cholesky(", "matrix_power(", "pinv(", "einsum(\"...", "correlate(",
              "convolve(", "conv1d(", "conv2d(", "stack(", "concatenate(", "cumsum(", "kron(",
              "where("]
MIN_EACH = 3


def skip_unless(condition: bool, reason: str) -> None:
    if not condition:
        STATS["skipped"][reason] = STATS["skipped"].get(reason, 0) + 1
    assume(condition)


# The seed derandomize=True drew from this function's source before the default run's sample
# was added to it (hypothesis hashes the source): the full run draws the examples it drew.
STREAM = int("1509821092812229362140890497704910145323398414631278991180675507570141094647185"
             "7709869218297430419054473252343637277")


@hypothesis.seed(STREAM)
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(programs())
def check_random_expression(program):
    statements, body, out_shape, guards, sizes, seed = program
    source = source_of(statements, body)
    for construct in CONSTRUCTS:
        if construct in source:
            STATS["drawn"][construct] = STATS["drawn"].get(construct, 0) + 1
    STATS["examples"] += 1
    rare = any(c in source and STATS["constructs"].get(c, 0) < MIN_EACH for c in CONSTRUCTS)
    if STATS["examples"] % SAMPLE and not rare:
        return  # not in the default run's sample
    arrays = make_inputs(sizes, seed)
    forward = einderiv.compile(source, DECLARED)
    assert forward.shape == out_shape, (source, forward.shape, out_shape)

    value = np.asarray(forward(**arrays), dtype=float)
    expected_shape = tuple(sizes[d] for d in out_shape)
    assert value.shape == expected_shape, (source, value.shape, expected_shape)
    skip_unless(bool(np.all(np.isfinite(value))) and float(np.max(np.abs(value))) < HUGE,
                "huge value")
    for guard in guards:  # kinks: the argument must stay clear of 0
        g = np.asarray(einderiv.compile(source_of(statements, guard), DECLARED)(**arrays))
        skip_unless(bool(np.all(np.isfinite(g))) and float(np.min(np.abs(g))) > 1e-2,
                    "near a kink")

    wrt = sorted(forward.inputs)
    references = {name: Reference(forward, arrays, name) for name in wrt}
    skip_unless(all(r.reliable for r in references.values()), "differences disagree")

    if wrt:
        # The Jacobian: output shape + wrt shape, for every variable at once.
        jacobians = einderiv.jacobian(source, wrt, DECLARED)(**arrays)
        assert isinstance(jacobians, tuple) and len(jacobians) == len(wrt)
        for name, J in zip(wrt, jacobians):
            assert_matches(J, references[name].value, f"jacobian wrt {name}", source)

        # The gradient of the scalar output, or of the output weighted by a random C.
        if out_shape == ():
            grads = einderiv.grad(source, wrt, DECLARED)(**arrays)
            expected = [references[name].value for name in wrt]
            what = source
        else:
            weight = np.random.default_rng(seed + 1).standard_normal(expected_shape)
            what = source_of(statements, f"sum(({body}) * C)")
            grads = einderiv.grad(what, wrt, {**DECLARED, "C": out_shape})(**arrays, C=weight)
            expected = [references[name].weighted(weight) for name in wrt]
        for name, g, ref in zip(wrt, grads, expected):
            assert_matches(g, ref, f"grad wrt {name}", what)

    # The Hessian of a scalar output, against differences of the gradient checked above.
    if out_shape == () and 0 < len(wrt) <= 3:
        hessian = einderiv.hessian(source, wrt, DECLARED)(**arrays)
        blocks = []
        for i, a in enumerate(wrt):
            grad_a = einderiv.grad(source, a, DECLARED)
            blocks += [(hessian[i][j], Reference(grad_a, arrays, b), f"d{a}d{b}")
                       for j, b in enumerate(wrt)]
        if all(ref.reliable for _, ref, _ in blocks):
            for block, ref, label in blocks:
                assert_matches(block, ref.value, f"hessian block {label}", source)
            STATS["hessians"] += 1

    STATS["checked"] += 1
    for construct in CONSTRUCTS:
        if construct in source:
            STATS["constructs"][construct] = STATS["constructs"].get(construct, 0) + 1
    STATS["by_shape"][out_shape] = STATS["by_shape"].get(out_shape, 0) + 1


def test_random_expressions_against_finite_differences():
    STATS.update(checked=0, skipped={}, hessians=0, by_shape={}, constructs={}, drawn={},
                 examples=0)
    start = time.perf_counter()
    check_random_expression()
    elapsed = time.perf_counter() - start
    print(f"\n{STATS['checked']} of {STATS['examples']} random expressions checked against "
          f"finite differences ({STATS['hessians']} Hessians too) in {elapsed:.1f} s; skipped: "
          f"{STATS['skipped']}; by output shape: {STATS['by_shape']}; by construct: "
          f"{STATS['constructs']}")
    assert STATS["examples"] >= MIN_CHECKED  # drawn, not skipped by the sample
    assert STATS["checked"] >= MIN_CHECKED // SAMPLE
    assert len(STATS["by_shape"]) == len(SHAPES)  # every output shape was exercised
    rare = {c: STATS["drawn"].get(c, 0) for c in CONSTRUCTS
            if STATS["drawn"].get(c, 0) < MIN_EACH}
    assert not rare, f"constructs drawn fewer than {MIN_EACH} times: {rare}"
    unchecked = [c for c in CONSTRUCTS if not STATS["constructs"].get(c)]
    assert not unchecked, f"constructs never checked (every one skipped): {unchecked}"
