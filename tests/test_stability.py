"""Numerically stable programs by construction (issue 12): the acceptance tests.

Every case of the issue and every rewrite of its Deliver item 1 is compiled (`compile` for the
value, `grad` and `hessian` of a scalar form for the derivatives) and run at ordinary points and
at extreme ones: |u| = 30, 100, 800, 1e5, exact zeros, ties of `maximum`/`minimum`, singular
matrices, and +-inf where the true value is finite. Each result is run both as generated code
and through `.evaluate_ir`, on float64 and on float32 copies of the point.

The reference is mpmath at 50 digits and is independent of einderiv: each case writes its
function, gradient and Hessian in closed form in mpmath (tensors are numpy object arrays of
`mpf`). mpmath has no overflow, so the closed forms only avoid cancellation (`1 - sigmoid(u)`
is written `sigmoid(-u)`, `log(1 + e)` is `log1p(e)`, `1 - softmax(x)[i]` the sum of the
other entries' softmax). `test_reference_closed_forms` checks every closed form against
`mpmath.diff` of the case's function at a smooth point. The reference is computed from the
exact values of the arrays passed (so the float32 copy of a point has its own reference) and
rounded to float64 for the comparison.

Criteria, per output array `a` against the reference `r` (float64 `rtol` 1e-10, float32 1e-4):

- where `r` is finite, `a` is finite (no NaN or inf), unless |r| exceeds the dtype's largest
  number (not representable: then only NaN fails); where `r` is +-inf, `a` is the same inf;
- relative error, with an absolute floor `s` (below which values are compared absolutely):
  * values of elementwise functions, elementwise: max_i |a_i - r_i| / max(|r_i|, s);
  * everything else norm-wise: max_i |a_i - r_i| / max(max_i |r_i|, s).
  `s` is the dtype's smallest normal number (a true value below it is not representable to
  full precision), except for one family of results:
  * `det` takes Hadamard's bound (the product of the row norms that its value, cofactors and
    second cofactors are made of): where they vanish, as at singular matrices, a relative
    change of eps in the entries moves them by up to eps times that bound, so no algorithm
    on floats is exact relative to 0 (the cofactors at rank 1 come out near 1e-15, not 0).
  The softmax family has no such floor: the textbook Jacobians of softmax and log_softmax,
  `diag(s) - outer(s, s)` and `I - outer(1, s)`, cancel in their largest entry, `s_m - s_m^2`
  and `1 - s_m`, when one logit leads the others by 30 or more (3 digits left at a lead of 30,
  none from 37 on), and so did the Hessian of logsumexp, the gradient of `c @ softmax(x)` and of
  a confident cross-entropy. The rules split them on the argmax (`argmax_onehot`) into delta
  and outer-product terms with no entry in common where they would cancel, `1 - s_m` being
  `complement(s)`, the sum of the other entries: every product through them stays O(n),
  and the derivatives are exact relative to results of e^-30 and e^-100 (the `gap_*` points).
  The sigmoid family has no such floor: the rules `dsigmoid(x)` (sech(x / 2) ** 2 / 4) for
  sigmoid's derivative and `sech2(x)` for tanh's are exact where `sigmoid(x) * (1 -
  sigmoid(x))` and `1 - tanh(x) ** 2` cancel, and so are their own derivatives, products of
  tanh, sech2 and dsigmoid
  (`_family_points` checks each magnitude apart, exact zero and the subnormals included).
  Binary cross-entropy's gradient `sigmoid(z) - y`, the issue's golden one-sigmoid form, is
  compared norm-wise at points with a misclassified entry: it is exact to rounding relative to
  max(y, sigmoid(z)), which is as well as `y` is known (at y = 1 and z = 30 the result,
  -9.4e-14, changes by 1e-3 of itself with the last bit of y).

Kink conventions (issue 12, item 3): `maximum`/`minimum` split the derivative 1/2-1/2 at ties
(as JAX); `relu'(0) = 0`, `abs'(0) = sign(0) = 0`, `sign' = 0`; `norm` has the zero
subgradient at zero. Where every entry is -inf (log 0), `softmax` is 0 and so is the gradient of
`logsumexp`, which stays -inf under any finite change of the entries (the zero gradient asked
for in jax-ml/jax#6811 and pytorch/pytorch#31829, for the log semiring of CTC-like losses).

Tests that fail on the current tree are strict xfails (tables `XFAIL` and `NAMED_XFAIL`), each
naming the issue item that fixes it: a fix turns its mark into a failure, to remove.

The issue's own examples are also stated with their right values, in plain numbers
(`test_named_acceptance_point`, which parses each output's `.formula` back as well), and its
golden formulas are checked as text. Compiled results are made once per module (`result`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import einderiv
from einderiv.generate.formula import output_programs

try:  # the `test` extra has it; without it the reference tests skip (pytest.importorskip)
    import mpmath as M
except ImportError:  # pragma: no cover
    M = None

DPS = 50
RTOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = (np.float64, np.float32)
PATHS = ("generated", "evaluate_ir")
KINDS = ("value", "grad", "hess")
INF = np.inf


# --- the mpmath reference: numpy object arrays of mpf --------------------------------------

def ew(f, *arrays):
    """`f` of mpf scalars applied entrywise (numpy broadcasting) into an object array."""
    return np.vectorize(f, otypes=[object])(*arrays)


def mp_array(a) -> np.ndarray:
    """An array's exact values as mpf (a float32 value converts exactly to float64 first)."""
    return ew(lambda t: M.mpf(float(t)), np.asarray(a, dtype=np.float64))


def zeros(*shape) -> np.ndarray:
    return ew(lambda _: M.mpf(0), np.zeros(shape))


def diag(v) -> np.ndarray:
    out = zeros(len(v), len(v))
    for i, t in enumerate(v):
        out[i, i] = t
    return out


def sig(t):
    return 1 / (1 + M.exp(-t))


def softplus(t):
    return M.log1p(M.exp(t))  # log1p keeps exp(t) when it is below 10^-50


def lse(x):
    m = max(x)
    if m == -M.inf:
        return -M.inf
    # log1p of the others' share: log(1 + e^-100) would keep 7 of the 50 digits
    k = list(x).index(m)
    return m + M.log1p(sum(M.exp(t - m) for i, t in enumerate(x) if i != k))


def softmax(x):
    """softmax of a vector; 0 where every entry is -inf (the convention, see the docstring)."""
    m = max(x)
    if m == -M.inf:
        return ew(lambda _: M.mpf(0), x)
    e = ew(lambda t: M.exp(t - m), x)
    return e / sum(e)


def complement(s):
    """1 - s for a softmax s, each entry as the sum of the others (1 - s_m for s_m = 1 - e^-100
    keeps 7 of the 50 digits); 1 where s is 0 (every entry -inf)."""
    if not any(s):
        return ew(lambda _: M.mpf(1), s)
    return np.array([sum(t for j, t in enumerate(s) if j != i) for i in range(len(s))],
                    dtype=object)


def softmax_hess(s):
    """d softmax(x) / dx = diag(s) - outer(s, s), its diagonal s * (1 - s): also the Hessian of
    logsumexp."""
    out = -np.outer(s, s)
    for i, t in enumerate(s * complement(s)):
        out[i, i] = t
    return out


def det(X):
    """Laplace expansion: exact for the small dyadic matrices used here."""
    n = X.shape[0]
    if n == 0:
        return M.mpf(1)
    return sum((-1) ** j * X[0, j] * det(np.delete(X[1:], j, axis=1)) for j in range(n))


def unit(n, i, j):
    E = zeros(n, n)
    E[i, j] = M.mpf(1)
    return E


def det_grad(X):
    """det is affine in each entry, so d det / dX[i,j] = det(X + E_ij) - det(X), exactly."""
    n = X.shape[0]
    out = zeros(n, n)
    for i in range(n):
        for j in range(n):
            out[i, j] = det(X + unit(n, i, j)) - det(X)
    return out


def det_hess(X):
    """The mixed second difference, exact for the same reason (0 on one entry twice)."""
    n = X.shape[0]
    out = zeros(n, n, n, n)
    for i in range(n):
        for j in range(n):
            for k in range(n):
                for l in range(n):
                    out[i, j, k, l] = (det(X + unit(n, i, j) + unit(n, k, l))
                                       - det(X + unit(n, i, j)) - det(X + unit(n, k, l))
                                       + det(X))
    return out


def hadamard(removed: int):
    """The scale of det's value (removed=0), cofactors (1) and second cofactors (2): the
    product of the largest row norms but `removed`, from the float inputs."""
    def scale(env):
        norms = sorted(np.linalg.norm(np.asarray(env["X"], np.float64), axis=1), reverse=True)
        return float(np.prod(norms[:len(norms) - removed]))
    return scale


# --- cases --------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    value_expr: str  # compiled for the value
    expr: str  # the scalar whose grad and hessian are taken
    shapes: dict
    wrt: str | tuple
    value: Callable  # env of mpf arrays -> value of value_expr
    grad: Callable  # -> shaped like wrt (a list of blocks for a tuple wrt)
    hess: Callable  # -> wrt + wrt (a list of lists of blocks for a tuple wrt)
    points: dict  # label -> (env of float64 arrays, kinds checked there)
    scalar: Callable | None = None  # expr's value, for the closed-form check (default: value)
    elementwise: bool = False  # the value is compared entry by entry
    scale: dict = field(default_factory=dict)  # kind -> absolute floor (float or env -> float)
    smooth: str = "ordinary"  # a point away from kinks, for test_reference_closed_forms


def arr(*values):
    return np.array(values, dtype=np.float64)


def pt(kinds=KINDS, **env):
    return ({k: np.asarray(v, dtype=np.float64) for k, v in env.items()}, tuple(kinds))


ORDINARY = arr(-1.5, -0.25, 0.0, 0.75, 2.0)
EXTREMES = {"large": arr(-100, -30, 30, 100), "huge": arr(-1e5, -800, 800, 1e5),
            "inf": arr(-INF, INF)}


def elementwise_case(id, text, f, d1, d2, points=None, scale=None, smooth="ordinary"):
    """A function of one vector applied entrywise: the value is `text` itself (compared entry
    by entry), the derivatives are those of `sum(text)` (a vector and a diagonal matrix)."""
    if points is None:
        points = {"ordinary": pt(x=ORDINARY), **{k: pt(x=v) for k, v in EXTREMES.items()}}
    return Case(id, text, f"sum({text})", {"x": ("n",)}, "x",
                value=lambda e: ew(f, e["x"]), grad=lambda e: ew(d1, e["x"]),
                hess=lambda e: diag(ew(d2, e["x"])), points=points,
                scalar=lambda e: sum(ew(f, e["x"])), elementwise=True, scale=scale or {},
                smooth=smooth)


def step_or_half(a, b):
    return M.mpf(1) if a > b else M.mpf(0.5) if a == b else M.mpf(0)


def kink_case(id, name, pick):
    """`name(a, b)` with its derivative 1/2-1/2 at ties (issue 12, item 3)."""
    def grads(e):
        da = ew(lambda a, b: pick(step_or_half(a, b), step_or_half(b, a)), e["a"], e["b"])
        return [da, 1 - da]

    def hesses(e):
        n = len(e["a"])
        return [[zeros(n, n), zeros(n, n)], [zeros(n, n), zeros(n, n)]]
    op = max if name == "maximum" else min
    return Case(id, f"{name}(a, b)", f"sum({name}(a, b))", {"a": ("n",), "b": ("n",)},
                ("a", "b"), value=lambda e: ew(op, e["a"], e["b"]), grad=grads, hess=hesses,
                scalar=lambda e: sum(ew(op, e["a"], e["b"])), elementwise=True, points={
                    "ordinary": pt(a=arr(1, -2, 0.5), b=arr(0, 3, -1)),
                    "ties": pt(a=arr(1, 0, -3, 1e5, 2), b=arr(1, 0, -3, 1e5, 1)),
                    "inf": pt(a=arr(-INF, 3, INF), b=arr(2, INF, 5))})


# pow: a ** b, with its limits at a == 0 < b written out (log(0) * 0 is not a number in mpmath)
def pow_db(a, b):
    return M.mpf(0) if a == 0 else M.power(a, b) * M.log(a)


def pow_dbb(a, b):
    return M.mpf(0) if a == 0 else M.power(a, b) * M.log(a) ** 2


def pow_daa(a, b):
    return M.mpf(0) if b in (0, 1) else b * (b - 1) * M.power(a, b - 2)


def pow_case(id, wrt, d1, d2, points):
    return Case(id, "a ** b", "sum(a ** b)", {"a": ("n",), "b": ("n",)}, wrt,
                value=lambda e: ew(M.power, e["a"], e["b"]),
                grad=lambda e: ew(d1, e["a"], e["b"]),
                hess=lambda e: diag(ew(d2, e["a"], e["b"])),
                scalar=lambda e: sum(ew(M.power, e["a"], e["b"])), elementwise=True,
                points=points)


def logistic_refs():
    def margins(e):
        return e["y"] * (e["X"] @ e["w"])

    def value(e):
        return sum(ew(lambda t: softplus(-t), margins(e)))

    def grad(e):
        return -(e["X"].T @ (e["y"] * ew(lambda t: sig(-t), margins(e))))

    def hess(e):
        d = e["y"] ** 2 * ew(lambda t: sig(t) * sig(-t), margins(e))
        return (e["X"].T * d) @ e["X"]
    return dict(value=value, grad=grad, hess=hess)


def bce_refs(logits):
    """sum(y * softplus(-z) + (1 - y) * softplus(z)), z = logits(env), and its derivatives
    by the chain rule through z's Jacobian J (identity, or X)."""
    def value(e):
        z = logits(e)
        return sum(ew(lambda t, y: y * softplus(-t) + (1 - y) * softplus(t), z, e["y"]))

    def inner(e):
        z = logits(e)
        return ew(sig, z) - e["y"], ew(lambda t: sig(t) * sig(-t), z)
    return value, inner


BCE = "sum(-(y * log(sigmoid({z})) + (1 - y) * log(1 - sigmoid({z}))))"


def _bce_case():
    value, inner = bce_refs(lambda e: e["z"])
    return Case("bce", BCE.format(z="z"), BCE.format(z="z"), {"z": ("n",), "y": ("n",)}, "z",
                value=value, grad=lambda e: inner(e)[0], hess=lambda e: diag(inner(e)[1]),
                points={
                    "ordinary": pt(z=arr(-1.5, 0.5, 2), y=arr(1, 0, 0.25)),
                    "issue": pt(z=arr(40, 100, -50, -800, 800), y=arr(1, 1, 1, 1, 0)),
                    "large": pt(z=arr(30, -30, 100, -100), y=arr(1, 0, 0, 1)),
                    "huge": pt(z=arr(1e5, -1e5, 1e5), y=arr(0, 1, 1)),
                    # the value is 1 * 0 + 0 * inf there: only the derivatives are defined
                    "inf": pt(("grad", "hess"), z=arr(INF, -INF), y=arr(1, 0))})


def _bce_linear_case():
    value, inner = bce_refs(lambda e: e["X"] @ e["w"])

    def hess(e):
        return (e["X"].T * inner(e)[1]) @ e["X"]
    text = BCE.format(z="X @ w")
    return Case("bce_linear", text, text, {"X": ("n", "d"), "y": ("n",), "w": ("d",)}, "w",
                value=value, grad=lambda e: e["X"].T @ inner(e)[0], hess=hess,
                points={
                    "ordinary": pt(X=[[1, 0.5], [-0.5, 2], [0.25, -1]], y=arr(1, 0, 1),
                                   w=arr(0.5, -0.25)),
                    "large": pt(X=np.eye(3), y=arr(1, 1, 0), w=arr(40, -800, 800)),
                    "huge": pt(X=[[1, 0], [0, 1], [1, 1]], y=arr(0, 1, 1), w=arr(1e5, -1e5))})


def weighted_softmax_grad(x, c):
    """d (c @ softmax(x)) / dx = s * (c - c @ s)."""
    return softmax(x) * centered(x, c)


def centered(x, c):
    """c - c @ softmax(x), each entry as sum_i s_i (c_j - c_i) (c_m - c @ s cancels where s_m
    is near 1); c where s is 0 (every entry -inf)."""
    s = softmax(x)
    if not any(s):
        return c
    return ew(lambda cj: sum(si * (cj - ci) for si, ci in zip(s, c)), c)


def weighted_softmax_hess(x, c):
    """d2 (c @ softmax(x)) / dx_j dx_k, from d s_j / dx_k = s_j (delta_jk - s_k)."""
    s, d = softmax(x), centered(x, c)
    J = softmax_hess(s)  # s_j (delta_jk - s_k)
    n = len(s)
    out = zeros(n, n)
    for j in range(n):
        for k in range(n):
            out[j, k] = J[j, k] * d[j] - s[j] * s[k] * d[k]
    return out


def log_softmax(x):
    return x - lse(x)


def weighted_log_softmax_grad(x, c):
    """d (c @ log_softmax(x)) / dx = c - sum(c) * s, as c * (1 - s) - s * (sum(c) - c)."""
    s = softmax(x)
    return c * complement(s) - s * (sum(c) - c)


def weighted_log_softmax_hess(x, c):
    return -sum(c) * softmax_hess(softmax(x))


def per_column(fn, L, C=None):
    """`fn` of each column of L (and the same column of C): a matrix shaped like L."""
    out = zeros(*L.shape)
    for j in range(L.shape[1]):
        out[:, j] = fn(L[:, j]) if C is None else fn(L[:, j], C[:, j])
    return out


def per_column_hessian(fn, L, C):
    """The Hessian by L of a sum of functions of single columns: `fn` of each column (and the
    same column of C) on the diagonal blocks, 0 across columns. Shape L.shape + L.shape."""
    m, n = L.shape
    out = zeros(m, n, m, n)
    for j in range(n):
        out[:, j, :, j] = fn(L[:, j], C[:, j])
    return out


def _softmax_cases():
    vec = {"x": ("n",), "c": ("n",)}
    mat = {"L": ("m", "n"), "C": ("m", "n")}
    nine = 1000 * np.arange(1.0, 10.0)  # the logits
    vector_points = {
        "ordinary": pt(x=arr(-1, 0.5, 2), c=arr(1, -2, 0.5)),
        "large": pt(x=nine, c=np.linspace(-1, 1, 9)),
        "huge": pt(x=arr(-1e5, 0, 1e5, 1e5), c=arr(1, -1, 0.5, 0.25)),
        "neg_inf": pt(x=arr(-INF, 0, 1), c=arr(1, -2, 0.5)),
        "gap_30": pt(x=arr(0, 30, -30), c=arr(1, -2, 0.5)),
        "gap_100": pt(x=arr(100, 0, 1), c=arr(-1, 0.5, 2))}
    matrix_points = {
        "ordinary": pt(L=[[-1, 0.5], [0.25, 2], [1, -3]], C=[[1, -1], [0.5, 2], [-2, 0.25]]),
        "large": pt(L=[[1000, -1e5], [3000, 0], [2000, 1e5]], C=[[1, -1], [0.5, 2], [-2, 1]]),
        "gaps": pt(L=[[0, 100], [30, 0], [-30, 1]], C=[[1, -1], [-2, 0.5], [0.5, 2]])}
    cases = []
    # the primitive logsumexp, and its rewrite from log(sum(exp(x)))
    for id, text in (("logsumexp", "logsumexp(x)"), ("lse_rewrite", "log(sum(exp(x)))")):
        cases.append(Case(
            id, text, text, {"x": ("n",)}, "x", value=lambda e: lse(e["x"]),
            grad=lambda e: softmax(e["x"]), hess=lambda e: softmax_hess(softmax(e["x"])),
            points={
                "ordinary": pt(x=arr(-1, 0.5, 2)),
                "large": pt(x=nine),
                "huge": pt(x=arr(-1e5, 0, 1e5, 2e5)),
                "neg_inf": pt(x=arr(-INF, 0, 1)),
                "all_neg_inf": pt(x=arr(-INF, -INF)),
                "gap_30": pt(x=arr(0, -30, -60)),  # the value is log1p(e^-30 + e^-60)
                "gap_100": pt(x=arr(100, 0, 1))}))

    # the sum(log(sum(exp(l), axis=-1))): a logsumexp per row
    def lse_rows_hess(e):
        L = e["L"]
        m, n = L.shape
        out = zeros(m, n, m, n)
        for i in range(m):
            out[i, :, i, :] = softmax_hess(softmax(L[i]))
        return out
    cases.append(Case(
        "lse_axis", "log(sum(exp(L), axis=-1))", "sum(log(sum(exp(L), axis=-1)))",
        {"L": ("m", "n")}, "L", value=lambda e: np.array([lse(r) for r in e["L"]], dtype=object),
        grad=lambda e: per_column(softmax, e["L"].T).T, hess=lse_rows_hess,
        scalar=lambda e: sum(lse(r) for r in e["L"]), elementwise=True,
        points={
            "ordinary": pt(L=[[-1, 0.5, 2], [0, 0.25, -3]]),
            "large": pt(L=[[1000, 2000, 3000], [-1e5, 0, 1e5]]),
            "neg_inf": pt(L=[[-INF, 0, 1], [2, -INF, -INF]]),
            "gaps": pt(L=[[0, -30, -60], [100, 0, 1]])}))

    # exp(x) / sum(exp(x), axis) -> softmax(x, axis)
    cases.append(Case(
        "softmax_rewrite", "exp(x) / sum(exp(x))", "c @ (exp(x) / sum(exp(x)))", vec, "x",
        value=lambda e: softmax(e["x"]),
        grad=lambda e: weighted_softmax_grad(e["x"], e["c"]),
        hess=lambda e: weighted_softmax_hess(e["x"], e["c"]),
        scalar=lambda e: e["c"] @ softmax(e["x"]), elementwise=True,
        points={**vector_points, "all_neg_inf": pt(x=arr(-INF, -INF), c=arr(1, -1))}))
    cases.append(Case(
        "softmax_axis0", "exp(L) / sum(exp(L), axis=0)",
        "sum(C * (exp(L) / sum(exp(L), axis=0)))", mat, "L",
        value=lambda e: per_column(softmax, e["L"]),
        grad=lambda e: per_column(weighted_softmax_grad, e["L"], e["C"]),
        hess=lambda e: per_column_hessian(weighted_softmax_hess, e["L"], e["C"]),
        scalar=lambda e: np.sum(e["C"] * per_column(softmax, e["L"])), elementwise=True,
        points={
            **matrix_points,
            "neg_inf": pt(L=[[-INF, 0], [0, -INF], [1, -INF]], C=[[1, -1], [0.5, 2], [-2, 1]])}))

    # log(softmax(x, axis)) -> log_softmax(x, axis), and the cross-entropy
    cases.append(Case(
        "log_softmax_rewrite", "log(softmax(x))", "c @ log(softmax(x))", vec, "x",
        value=lambda e: log_softmax(e["x"]),
        grad=lambda e: weighted_log_softmax_grad(e["x"], e["c"]),
        hess=lambda e: weighted_log_softmax_hess(e["x"], e["c"]),
        scalar=lambda e: e["c"] @ log_softmax(e["x"]),
        points=vector_points))
    cases.append(Case(
        "log_softmax_axis0", "log(softmax(L, axis=0))", "sum(C * log(softmax(L, axis=0)))",
        mat, "L", value=lambda e: per_column(log_softmax, e["L"]),
        grad=lambda e: per_column(weighted_log_softmax_grad, e["L"], e["C"]),
        hess=lambda e: per_column_hessian(weighted_log_softmax_hess, e["L"], e["C"]),
        scalar=lambda e: np.sum(e["C"] * per_column(log_softmax, e["L"])),
        points=matrix_points))
    cases.append(Case(
        "cross_entropy", "-(y @ log(softmax(x)))", "-(y @ log(softmax(x)))",
        {"x": ("n",), "y": ("n",)}, "x", value=lambda e: -(e["y"] @ log_softmax(e["x"])),
        grad=lambda e: -weighted_log_softmax_grad(e["x"], e["y"]),
        hess=lambda e: -weighted_log_softmax_hess(e["x"], e["y"]),
        points={
            "ordinary": pt(x=arr(-1, 0.5, 2), y=arr(0.25, 0.5, 0.25)),
            "issue": pt(x=nine, y=np.eye(9)[0]),
            "huge": pt(x=arr(1e5, 2e5, 3e5), y=arr(1, 0, 0)),
            # y @ log_softmax(x) is 0 * -inf there: only the derivatives are defined
            "neg_inf": pt(("grad", "hess"), x=arr(-INF, 0, 1), y=arr(0, 1, 1)),
            # the right class far ahead, the gradient -(1 - s) and sum(y) s - y is tiny
            "confident": pt(x=arr(0, 30, -30), y=arr(0, 1, 0)),
            "gap_100": pt(x=arr(100, 0, 1), y=arr(0.5, 0.25, 0.25))}))
    return cases


def _norm_cases():
    def norm(v):
        return M.sqrt(sum(t * t for t in np.ravel(v)))

    def grad(e):
        n = norm(e["x"])
        return e["x"] / n if n else zeros(len(e["x"]))  # the zero subgradient at zero

    def hess(e):
        x, n = e["x"], norm(e["x"])
        return (diag(ew(lambda _: M.mpf(1), x)) - np.outer(x, x) / n ** 2) / n

    def residual(e):
        return e["A"] @ e["X"] - e["B"]

    def fit_grad(e):
        R = residual(e)
        n = norm(R)
        return e["A"].T @ R / n if n else zeros(*e["X"].shape)

    def fit_hess(e):
        n, g, AtA = norm(residual(e)), fit_grad(e), e["A"].T @ e["A"]
        d, k = e["X"].shape
        out = zeros(d, k, d, k)
        for a in range(d):
            for b in range(k):
                for c in range(d):
                    for q in range(k):
                        out[a, b, c, q] = (AtA[a, c] * (b == q) - g[a, b] * g[c, q]) / n
        return out
    A = np.array([[1.0, 2], [3, 4], [5, 6]])
    X = np.array([[1.0, 0.5], [-1, 2]])
    return [
        Case("norm", "norm(x)", "norm(x)", {"x": ("n",)}, "x", value=lambda e: norm(e["x"]),
             grad=grad, hess=hess, points={
                 "ordinary": pt(x=arr(3, -4, 12)),
                 "large": pt(x=arr(1e5, -800, 30)),
                 # the Hessian is unbounded at zero
                 "zero": pt(("value", "grad"), x=arr(0, 0, 0))}),
        Case("norm_fit", "norm(A @ X - B)", "norm(A @ X - B)",
             {"A": ("m", "d"), "X": ("d", "k"), "B": ("m", "k")}, "X",
             value=lambda e: norm(residual(e)), grad=fit_grad, hess=fit_hess, points={
                 "ordinary": pt(A=A, X=X, B=[[0, 1], [1, 0], [2, 2]]),
                 "exact_fit": pt(("value", "grad"), A=A, X=X, B=A @ X)}),
    ]


def _det_case():
    X0 = [[2, -1, 0.5], [1, 3, 1], [0.25, 1, 4]]
    return Case("det", "det(X)", "det(X)", {"X": ("n", "n")}, "X", value=lambda e: det(e["X"]),
                grad=lambda e: det_grad(e["X"]), hess=lambda e: det_hess(e["X"]),
                scale={"value": hadamard(0), "grad": hadamard(1), "hess": hadamard(2)},
                points={
                    "ordinary": pt(X=X0),
                    "large": pt(X=1e5 * np.array(X0)),
                    "singular_2x2": pt(X=[[1, 2], [2, 4]]),
                    "rank_2": pt(X=[[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
                    "rank_1": pt(X=[[1, 2, 3], [2, 4, 6], [-3, -6, -9]]),
                    "zero": pt(X=np.zeros((3, 3)))})


def _logistic_case():
    text = "sum(log(1 + exp(-y * (X @ w))))"
    return Case("logistic", text, text, {"X": ("n", "d"), "y": ("n",), "w": ("d",)}, "w",
                **logistic_refs(), points={
                    "ordinary": pt(X=[[1, 0.5], [-0.5, 2], [0.25, -1]], y=arr(1, -1, 1),
                                   w=arr(0.5, -0.25)),
                    "readme_margin_minus_800": pt(X=[[1, 0]], y=arr(1), w=arr(-800, 3)),
                    "readme_margins_800_800_0": pt(X=[[1, 0], [0, 1], [1, 1]], y=arr(1, -1, 1),
                                                   w=arr(800, -800)),
                    "large": pt(X=np.eye(4), y=arr(1, 1, -1, -1), w=arr(30, -100, 30, -100)),
                    "huge": pt(X=np.eye(4), y=arr(1, -1, 1, -1), w=arr(1e5, 1e5, -800, -800))})


def _abs_squared_linear_case():
    """A smooth function written with a kink: its Hessian is 2 A.T @ A wherever A @ x has
    zeros too."""
    A = [[1, 2], [-2, 1], [1, -0.5]]
    return Case("abs_squared_linear", "abs(A @ x) ** 2", "sum(abs(A @ x) ** 2)",
                {"A": ("m", "n"), "x": ("n",)}, "x",
                value=lambda e: ew(lambda t: t * t, e["A"] @ e["x"]),
                grad=lambda e: 2 * e["A"].T @ (e["A"] @ e["x"]),
                hess=lambda e: 2 * e["A"].T @ e["A"],
                scalar=lambda e: sum(ew(lambda t: t * t, e["A"] @ e["x"])), elementwise=True,
                points={"ordinary": pt(A=A, x=arr(0.5, -1.5)),
                        "zeros_of_A_x": pt(A=A, x=arr(2, -1)),  # A @ x = [0, -5, 2.5]
                        "zero": pt(A=A, x=arr(0, 0)),
                        "huge": pt(A=A, x=arr(1e5, -800))})


def _sqrt_points():
    return {"ordinary": pt(x=arr(-1.5, -0.25, 0.75, 2, 4)),
            "issue": pt(x=arr(-1, 4)),
            "zero": pt(("value",), x=arr(0)),  # the derivative is unbounded at 0
            "large": pt(x=arr(-100, -30, 30, 100)),
            "huge": pt(x=arr(-1e5, -800, 800, 1e5)),
            "inf": pt(x=arr(-INF, INF))}


def _family_points(subnormal64, subnormal32):
    """Points for the sigmoid family (sigmoid, softplus, tanh, sech2), one magnitude each, so
    that the norm-wise comparison of derivatives is entrywise: exact zero; near it, where
    sigmoid'' = -x/8 and tanh'' = -2x come from a difference unless written as products; 30
    and 100, where 1 - sigmoid and 1 - tanh ** 2 cancel; magnitudes where the value or a
    derivative is subnormal in float64 or in float32; and beyond, where they underflow."""
    return {"ordinary": pt(x=ORDINARY), "zero": pt(x=arr(0)), "small": pt(x=arr(1e-8, -1e-8)),
            "one": pt(x=arr(1, -1)), "thirty": pt(x=arr(30, -30)),
            "hundred": pt(x=arr(100, -100)),
            "subnormal": pt(x=arr(-subnormal64, subnormal64)),
            "subnormal_float32": pt(x=arr(-subnormal32, subnormal32)),
            "huge": pt(x=EXTREMES["huge"]), "inf": pt(x=EXTREMES["inf"])}


def _cases():
    def nonneg(f):
        return lambda t: f(t) if t > 0 else M.mpf(0)
    sqrt_d1 = nonneg(lambda t: 1 / (2 * M.sqrt(t)))
    sqrt_d2 = nonneg(lambda t: -1 / (4 * t * M.sqrt(t)))
    sqrt_f = nonneg(M.sqrt)
    one, zero = (lambda _: M.mpf(1)), (lambda _: M.mpf(0))
    sig_d1 = lambda t: sig(t) * sig(-t)  # noqa: E731
    sig_d2 = lambda t: sig(t) * sig(-t) * (sig(-t) - sig(t))  # noqa: E731
    softplus_hess = lambda t: sig(t) * sig(-t)  # noqa: E731
    sech2 = lambda t: M.sech(t) ** 2  # noqa: E731
    cases = [
        # Deliver 1: the rewrites, elementwise
        elementwise_case("softplus_rewrite_a", "log(1 + exp(x))", softplus, sig, softplus_hess,
                         points=_family_points(720, 95)),
        elementwise_case("softplus_rewrite_b", "log(exp(x) + 1)", softplus, sig, softplus_hess),
        # the same pattern of a compound argument, and rewrites that enable one another
        elementwise_case("softplus_rewrite_compound", "log(1 + exp(-2 * x))",
                         lambda t: softplus(-2 * t), lambda t: -2 * sig(-2 * t),
                         lambda t: 4 * softplus_hess(2 * t)),
        elementwise_case("log_sigmoid_chain", "log(exp(x) / (1 + exp(x)))",
                         lambda t: -softplus(-t), lambda t: sig(-t), lambda t: -sig(t) * sig(-t)),
        elementwise_case("log_sigmoid_rewrite", "log(sigmoid(x))", lambda t: -softplus(-t),
                         lambda t: sig(-t), lambda t: -sig(t) * sig(-t)),
        elementwise_case("log_1m_sigmoid_rewrite", "log(1 - sigmoid(x))", lambda t: -softplus(t),
                         lambda t: -sig(t), lambda t: -sig(t) * sig(-t)),
        elementwise_case("sigmoid_rewrite_a", "exp(x) / (1 + exp(x))", sig, sig_d1, sig_d2,
                         points=_family_points(720, 95)),
        elementwise_case("sigmoid_rewrite_b", "1 / (1 + exp(-x))", sig, sig_d1, sig_d2,
                         points=_family_points(720, 95)),
        # Deliver 2: the stable derivative of tanh, sech2(x) = sech(x) ** 2; tanh's derivative
        # as a program, whose Hessian is tanh's third derivative
        elementwise_case("tanh", "tanh(x)", M.tanh, sech2,
                         lambda t: -2 * M.tanh(t) * sech2(t), points=_family_points(360, 48)),
        elementwise_case("sech2", "sech2(x)", sech2, lambda t: -2 * M.tanh(t) * sech2(t),
                         lambda t: 2 * sech2(t) * (2 * M.tanh(t) ** 2 - sech2(t)),
                         points=_family_points(360, 48)),
        # sigmoid's derivative, the logistic density sech(x / 2) ** 2 / 4: its value and
        # derivatives are products, exact where s(x) (1 - s(x)) and s(-x) - s(x) cancel
        elementwise_case("dsigmoid", "dsigmoid(x)", sig_d1, sig_d2,
                         lambda t: sig_d1(t) * (M.tanh(t / 2) ** 2 - M.sech(t / 2) ** 2 / 2),
                         points=_family_points(720, 95)),
        elementwise_case("abs_squared_rewrite", "abs(x) ** 2", lambda t: t * t, lambda t: 2 * t,
                         lambda t: M.mpf(2), points={
                             "ordinary": pt(x=ORDINARY), "issue": pt(x=arr(0, 1)),
                             **{k: pt(x=v) for k, v in EXTREMES.items()}}),
        _abs_squared_linear_case(),
        elementwise_case("sign_abs_rewrite", "sign(x) * abs(x)", lambda t: t, one, zero),
        # Deliver 2: a masked product is a select
        elementwise_case("sqrt_relu", "sqrt(relu(x))", sqrt_f, sqrt_d1, sqrt_d2,
                         points=_sqrt_points()),
        elementwise_case("sqrt_maximum", "sqrt(maximum(x, 0))", sqrt_f, sqrt_d1, sqrt_d2,
                         points=_sqrt_points()),
        # Deliver 3: kinks, by convention
        elementwise_case("relu", "relu(x)", lambda t: max(t, 0), lambda t: M.mpf(t > 0), zero,
                         smooth="large"),
        elementwise_case("abs", "abs(x)", abs, M.sign, zero, smooth="large"),
        elementwise_case("sign", "sign(x)", M.sign, zero, zero, smooth="large"),
        kink_case("maximum", "maximum", lambda a_wins, b_wins: a_wins),
        kink_case("minimum", "minimum", lambda a_wins, b_wins: b_wins),
        # Deliver 2: d a ** b / db is 0 at a == 0 < b; and its second derivative by a
        pow_case("pow_wrt_b", "b", pow_db, pow_dbb, points={
            "ordinary": pt(a=arr(0.5, 2, 3), b=arr(1.5, -2, 0.5)),
            "issue": pt(a=arr(0, 2), b=arr(1, 1)),
            "zero_base": pt(a=arr(0, 0, 0), b=arr(0.5, 2, 30)),
            "large": pt(a=arr(2, 0.5, 1.5), b=arr(30, 100, -30))}),
        pow_case("pow_wrt_a", "a", lambda a, b: b * M.power(a, b - 1), pow_daa, points={
            "ordinary": pt(a=arr(0.5, 2, 3), b=arr(1.5, -2, 0.5)),
            "zero_base": pt(a=arr(0, 0, 0), b=arr(1, 2, 3))}),
        _det_case(),
        *_norm_cases(),
        _logistic_case(),
        _bce_case(),
        _bce_linear_case(),
        *_softmax_cases(),
    ]
    return {c.id: c for c in cases}


CASES = _cases() if M is not None else {}


# --- comparison ---------------------------------------------------------------------------

def blocks(structured) -> list:
    """The arrays of a result, in output order (value_and_grad, a tuple wrt, its Hessian's
    tuple of tuples)."""
    if isinstance(structured, tuple):
        return [b for s in structured for b in blocks(s)]
    return [structured]


def to_float(ref) -> np.ndarray:
    return np.vectorize(float, otypes=[np.float64])(np.asarray(ref, dtype=object))


def mismatch(actual, ref: np.ndarray, dtype, elementwise: bool, floor: float) -> str | None:
    """Why `actual` fails the criteria of the module docstring against `ref` (float64 rounding
    of the 50-digit reference), or None."""
    a = np.asarray(actual)
    if a.shape != ref.shape:
        return f"shape {a.shape} instead of {ref.shape}"
    if a.dtype != dtype:
        return f"dtype {a.dtype} instead of {np.dtype(dtype)}"
    a = a.astype(np.float64)
    assert not np.isnan(ref).any(), "the reference is not a number somewhere"
    finite = np.isfinite(ref)
    big = finite & (np.abs(ref) > np.finfo(dtype).max)  # finite, not representable
    where = []
    if (bad := (finite & ~big & ~np.isfinite(a)) | (big & np.isnan(a))).any():
        where.append(f"NaN or inf where the true value is finite at {_at(bad, a, ref)}")
    if (bad := ~finite & (a != ref)).any():
        where.append(f"not the true inf at {_at(bad, a, ref)}")
    ok = finite & ~big & np.isfinite(a)
    if ok.any():
        floor = max(floor, float(np.finfo(dtype).tiny))
        with np.errstate(all="ignore"):
            diff = np.where(ok, np.abs(a - ref), 0.0)
            if elementwise:
                err = diff / np.maximum(np.abs(ref), floor)
            else:
                err = diff / max(float(np.max(np.abs(ref[ok]), initial=0.0)), floor)
        if (worst := float(np.max(err))) > RTOL[dtype]:
            where.append(f"relative error {worst:.3g} > {RTOL[dtype]:g} at "
                         f"{_at(err == worst, a, ref)}")
    return "; ".join(where) or None


def _at(mask, a, ref) -> str:
    idx = tuple(int(i[0]) for i in np.nonzero(mask)) if np.ndim(ref) else ()
    return f"{list(idx)}: got {a[idx]!r}, true {ref[idx]!r}"


def floor_of(case: Case, kind: str, env) -> float:
    s = case.scale.get(kind, 0.0)
    return float(s(env) if callable(s) else s)


_RESULTS: dict = {}


def result(case: Case, kind: str):
    """The compiled result of a case for a kind, made once per module."""
    key = (case.id, kind)
    if key not in _RESULTS:
        if kind == "value":
            _RESULTS[key] = einderiv.compile(case.value_expr, case.shapes)
        else:
            make = einderiv.grad if kind == "grad" else einderiv.hessian
            _RESULTS[key] = make(case.expr, list(case.wrt) if isinstance(case.wrt, tuple)
                                 else case.wrt, case.shapes)
    return _RESULTS[key]


def reference(case: Case, kind: str, arrays: dict) -> list[np.ndarray]:
    with M.workdps(DPS):
        env = {k: mp_array(v) for k, v in arrays.items()}
        ref = getattr(case, kind)(env)
    if isinstance(ref, list):
        flat = [b for row in ref for b in (row if isinstance(row, list) else [row])]
        return [to_float(b) for b in flat]
    return [to_float(ref)]


def check(case: Case, label: str, kind: str) -> list[str]:
    env, kinds = case.points[label]
    assert kind in kinds
    failures = []
    res = result(case, kind)
    for dtype in DTYPES:
        arrays = {k: v.astype(dtype) for k, v in env.items()}
        refs = reference(case, kind, arrays)
        elementwise = case.elementwise and kind == "value"
        floor = floor_of(case, kind, env)
        for path in PATHS:
            run = res if path == "generated" else res.evaluate_ir
            try:
                with np.errstate(all="ignore"):
                    got = blocks(run(**arrays))
            except einderiv.EinderivError as e:
                failures.append(f"{np.dtype(dtype)} {path}: {type(e).__name__}: {e}")
                continue
            if len(got) != len(refs):
                failures.append(f"{np.dtype(dtype)} {path}: {len(got)} arrays, not {len(refs)}")
                continue
            for i, (a, r) in enumerate(zip(got, refs)):
                why = mismatch(a, r, dtype, elementwise, floor)
                if why:
                    block = f" block {i}" if len(refs) > 1 else ""
                    failures.append(f"{np.dtype(dtype)} {path}{block}: {why}")
    return failures


# --- the case matrix ----------------------------------------------------------------------

def _xfail_table(*groups) -> dict:
    """{test id: reason} from (case, reason, "label-kind ...") groups."""
    table = {}
    for case, reason, ids in groups:
        for id in ids.split():
            assert f"{case}-{id}" not in table, id
            table[f"{case}-{id}"] = f"issue 12: {reason}"
    return table


# The tests that fail on the current tree, and why (none at present).
XFAIL = _xfail_table()


def _matrix():
    params = []
    for case in CASES.values():
        for label, (_, kinds) in case.points.items():
            for kind in kinds:
                id = f"{case.id}-{label}-{kind}"
                marks = ([pytest.mark.xfail(strict=True, reason=XFAIL[id])] if id in XFAIL
                         else [])
                params.append(pytest.param(case.id, label, kind, id=id, marks=marks))
    return params


@pytest.mark.parametrize("case_id, label, kind", _matrix())
def test_stability(case_id, label, kind):
    """The value, gradient or Hessian of a case at one point: generated code and the IR
    interpreter, float64 and float32, against the 50-digit reference."""
    pytest.importorskip("mpmath")
    failures = check(CASES[case_id], label, kind)
    assert not failures, f"{case_id} at {label}, {kind}:\n" + "\n".join(failures)


def test_xfail_table_names_cases_of_the_matrix():
    """A mark in the table that names no test would hide nothing and never be removed."""
    pytest.importorskip("mpmath")
    ids = {p.id for p in _matrix()}
    assert sorted(set(XFAIL) - ids) == []


def _flat_hessian(h, sizes):
    if isinstance(h, list):  # blocks of a tuple wrt
        return np.block([[np.reshape(b, (sizes[i], sizes[j])) for j, b in enumerate(row)]
                         for i, row in enumerate(h)])
    n = sum(sizes)
    return np.reshape(h, (n, n))


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_reference_closed_forms(case_id):
    """The reference's closed-form gradient and Hessian of each case agree with mpmath.diff of
    its function at a smooth point (the conventions at kinks are stated, not derived)."""
    pytest.importorskip("mpmath")
    case = CASES[case_id]
    env, _ = case.points[case.smooth]
    wrt = case.wrt if isinstance(case.wrt, tuple) else (case.wrt,)
    with M.workdps(DPS):
        menv = {k: mp_array(v) for k, v in env.items()}
        sizes = [menv[w].size for w in wrt]
        x0 = [t for w in wrt for t in menv[w].ravel()]

        def f(*flat):
            e, at = dict(menv), 0
            for w, size in zip(wrt, sizes):
                e[w] = np.array(flat[at:at + size], dtype=object).reshape(menv[w].shape)
                at += size
            return (case.scalar or case.value)(e)

        def order(*at):
            return tuple(sum(1 for a in at if a == i) for i in range(len(x0)))
        grad = case.grad(menv)
        grad = np.concatenate([np.ravel(g) for g in grad]) if isinstance(grad, list) \
            else np.ravel(grad)
        hess = _flat_hessian(case.hess(menv), sizes)
        for i in range(len(x0)):
            assert abs(M.diff(f, x0, order(i)) - grad[i]) < M.mpf(10) ** -30, (i, grad[i])
            for j in range(i, len(x0)):
                h = M.diff(f, x0, order(i, j))
                assert abs(h - hess[i, j]) < M.mpf(10) ** -30, (i, j, h, hess[i, j])
                assert hess[i, j] == hess[j, i]


# --- named acceptance points of the issue (closed-form numbers, no mpmath) ----------------

LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"
LIN = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
Z = np.array([40.0, 100, -50, -800, 800])
ZY = np.array([1.0, 1, 1, 1, 0])


def _stable_sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


NAMED = [
    # id, API, expression, wrt, shapes, arrays, the expected arrays in output order
    ("readme_value_800_at_margin_-800", "value_and_grad", LOGISTIC, "w", LIN,
     dict(X=[[1.0, 0]], y=[1.0], w=[-800.0, 3]), [800.0, [-1.0, 0]]),
    ("readme_hessian_at_margins_800_800_0", "hessian", LOGISTIC, "w", LIN,
     dict(X=[[1.0, 0], [0, 1], [1, 1]], y=[1.0, -1, 1], w=[800.0, -800]),
     [[[0.25, 0.25], [0.25, 0.25]]]),
    ("bce_through_sigmoid", "value_and_grad", BCE.format(z="z"), "z",
     {"z": ("n",), "y": ("n",)}, dict(z=Z, y=ZY),
     [float(np.sum(ZY * np.logaddexp(0, -Z) + (1 - ZY) * np.logaddexp(0, Z))),
      _stable_sigmoid(Z) - ZY]),
    ("softmax_cross_entropy_8000", "value_and_grad", "-(y @ log(softmax(x)))", "x",
     {"x": ("n",), "y": ("n",)}, dict(x=1000 * np.arange(1.0, 10), y=np.eye(9)[0]),
     [8000.0, [-1.0, 0, 0, 0, 0, 0, 0, 0, 1]]),
    ("logsumexp_grad_at_all_-inf", "grad", "logsumexp(x)", "x", {"x": ("n",)},
     dict(x=[-INF, -INF]), [[0.0, 0.0]]),
    ("sqrt_relu_grad", "grad", "sum(sqrt(relu(x)))", "x", {"x": ("n",)}, dict(x=[-1.0, 4]),
     [[0.0, 0.25]]),
    ("pow_grad_wrt_b_at_zero_base", "grad", "sum(a ** b)", "b", {"a": ("n",), "b": ("n",)},
     dict(a=[0.0, 2], b=[1.0, 1]), [[0.0, 2 * np.log(2)]]),
    ("abs_squared_hessian_is_2I", "hessian", "sum(abs(x) ** 2)", "x", {"x": ("n",)},
     dict(x=[0.0, 1]), [2 * np.eye(2)]),
    ("det_grad_at_singular_is_cofactors", "grad", "det(X)", "X", {"X": ("n", "n")},
     dict(X=[[1.0, 2], [2, 4]]), [[[4.0, -2], [-2, 1]]]),
    ("norm_grad_at_zero_is_zero", "grad", "norm(x)", "x", {"x": ("n",)}, dict(x=[0.0, 0, 0]),
     [[0.0, 0, 0]]),
    ("norm_fit_grad_at_exact_fit_is_zero", "grad", "norm(A @ X - B)", "X",
     {"A": ("m", "d"), "X": ("d", "k"), "B": ("m", "k")},
     dict(A=[[1.0, 2], [3, 4], [5, 6]], X=[[1.0, 0.5], [-1, 2]],
          B=[[-1.0, 4.5], [-1, 9.5], [-1, 14.5]]), [np.zeros((2, 2))]),
    ("maximum_ties_split_half", "grad", "sum(maximum(a, b))", ["a", "b"],
     {"a": ("n",), "b": ("n",)}, dict(a=[1.0, 2, 0], b=[1.0, 1, 3]),
     [[0.5, 1, 0], [0.5, 0, 1]]),
    ("minimum_ties_split_half", "grad", "sum(minimum(a, b))", ["a", "b"],
     {"a": ("n",), "b": ("n",)}, dict(a=[1.0, 2, 0], b=[1.0, 1, 3]),
     [[0.5, 0, 1], [0.5, 1, 0]]),
]
NAMED_XFAIL: dict = {}  # id -> reason, as XFAIL


@pytest.mark.parametrize("api, text, wrt, shapes, arrays, expected", [
    pytest.param(*rest, id=id, marks=[pytest.mark.xfail(strict=True, reason=NAMED_XFAIL[id])]
                 if id in NAMED_XFAIL else []) for id, *rest in NAMED])
def test_named_acceptance_point(api, text, wrt, shapes, arrays, expected):
    """The issue's own examples with their right values: generated code, the IR interpreter,
    and each output's `.formula` parsed back through `einderiv.compile`."""
    res = getattr(einderiv, api)(text, wrt, shapes)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    expected = [np.asarray(e, dtype=np.float64) for e in expected]
    failures = []
    with np.errstate(all="ignore"):
        for path, run in (("generated", res), ("evaluate_ir", res.evaluate_ir)):
            try:
                got = blocks(run(**arrays))
            except einderiv.EinderivError as e:
                failures.append(f"{path}: {type(e).__name__}: {e}")
                continue
            failures += [f"{path}: {why}" for a, r in zip(got, expected)
                         if (why := mismatch(a, r, np.float64, False, 0.0))]
        names = [name for name, _ in res.program.outputs]
        for (name, program), r in zip(output_programs(res.formula, names), expected):
            try:
                again = einderiv.compile(program, shapes)(**arrays)
            except einderiv.EinderivError as e:
                failures.append(f"formula {name}: {type(e).__name__}: {e}")
                continue
            if why := mismatch(again, r, np.float64, False, 0.0):
                failures.append(f"formula {name} parsed back: {why}")
    assert not failures, f"formula:\n{res.formula}\n" + "\n".join(failures)


# --- golden formulas of the acceptance --------------------------------------------

def one_sigmoid(formula: str) -> bool:
    """One `sigmoid`, and none of the unstable pieces it replaces."""
    return (formula.count("sigmoid(") == 1 and "exp(" not in formula
            and "log(" not in formula and "/" not in formula)


def test_readme_gradient_has_one_sigmoid():
    """-(X.T @ (y * sigmoid(-(y * (X @ w))))) or the equivalent with one sigmoid."""
    formula = einderiv.grad(LOGISTIC, "w", LIN).formula
    assert one_sigmoid(formula), formula


def test_bce_gradient_is_sigmoid_minus_y():
    """X.T @ (sigmoid(X @ w) - y), or an arrangement of the same one-sigmoid form."""
    formula = einderiv.grad(BCE.format(z="X @ w"), "w", LIN).formula
    assert one_sigmoid(formula), formula


def call_arguments(formula: str, name: str) -> list[str]:
    """The argument text of each `name(...)` call in `formula` (not of a longer name ending in
    it), in order."""
    args, at = [], formula.find(f"{name}(")
    while at >= 0:
        start = end = at + len(name) + 1
        depth = 1
        while depth:
            depth += {"(": 1, ")": -1}.get(formula[end], 0)
            end += 1
        if at == 0 or not (formula[at - 1].isalnum() or formula[at - 1] == "_"):
            args.append(formula[start:end - 1])
        at = formula.find(f"{name}(", end)
    return args


def one_logistic_density(formula: str) -> bool:
    """sigmoid'(m), the logistic density: one `dsigmoid` call and no sigmoid, sech2 nor any
    of the forms that cancel or overflow (`1 - s`, a division, exp or log)."""
    return (len(call_arguments(formula, "dsigmoid")) == 1
            and not call_arguments(formula, "sigmoid") and not call_arguments(formula, "sech2")
            and "1 - " not in formula and "/" not in formula and "exp(" not in formula
            and "log(" not in formula)


@pytest.mark.parametrize("loss", [LOGISTIC, BCE.format(z="X @ w")], ids=["logistic", "bce"])
def test_hessian_weight_is_one_logistic_density(loss):
    """The issue asked for one sigmoid and no `1 / t1 / t1`. s * (1 - s) has one sigmoid but
    cancels (relative error 1e-3 at a margin of 30, all of it at 100); sigmoid(m) *
    sigmoid(-m) is exact but its own derivative cancels near 0, and so does that of any form
    in sigmoid alone (sigmoid'' vanishes at 0, and a polynomial in s(x) and s(-x), both near
    1/2 there, reaches it only by a difference). So the Hessian's weight is sigmoid'(m) =
    dsigmoid(m) = sech(m / 2) ** 2 / 4: one function call, exact at every margin, and so are
    its derivatives (rules/elementwise.rules)."""
    formula = einderiv.hessian(loss, "w", LIN).formula
    assert one_logistic_density(formula), formula
    assert formula.endswith("[:, None] * X)") and formula.count("X @ w") == 1, formula


def test_logistic_density_check():
    assert one_logistic_density("X.T @ (dsigmoid(t0)[:, None] * X)")
    assert one_logistic_density("t0 = X @ w\nt1 = dsigmoid(-t0)\nX.T @ (t1[:, None] * X)")
    assert not one_logistic_density("0.25 * sech2(0.5 * m)")  # the density, not by name
    assert not one_logistic_density("dsigmoid(m) * dsigmoid(m)")
    assert not one_logistic_density("t0 = sigmoid(m)\nt0 * (1 - t0)")
    assert not one_logistic_density("dsigmoid(m) * sigmoid(m)")
    assert not one_logistic_density("dsigmoid(m) / dsigmoid(n)")
    assert call_arguments("logsigmoid(a) + sigmoid(b)", "sigmoid") == ["b"]
