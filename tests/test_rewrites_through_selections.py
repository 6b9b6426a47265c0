"""Stable forms reached through the ways operands are laid out (einderiv/simplify/selections.py,
rewrite.py, pattern.py), each checked on the generated code, the IR interpreter and the
printed formula compiled back, against scipy at inputs where the written form overflows:

- an elementwise rewrite seen through any selection of a tensor: a diagonal, a slice with a
  step, a reversed slice, `flip`, a reshape, and compositions of them (`log(softmax(x)[::2])`
  is `log_softmax(x)[::2]`, the CLIP loss's `log(diag(softmax(L)))` is `diag(log_softmax(L))`),
  and a sum of one selection (`logsumexp(L, axis=1) - diag(L)`);
- the functions of a pattern matched where they are broadcast or selected (`log(exp(p)[:, None]
  + exp(N))` is `logaddexp(p[:, None], N)`, `exp(N) / (exp(N) + exp(a))` is `sigmoid(N - a)`);
- `log(sum(w * exp(x), axis))` where w and x broadcast against each other, as the matrix
  products it lowers to (`log(exp(L) @ pi)`, `log(R @ exp(eta))`, `log(exp(eta) @ R)`), to
  `logsumexp_weighted`, which broadcasts its weights as scipy's `b=`;
- `log(mean(w * exp(x)))`, the log of a quotient by a count, `logsumexp_weighted(x, w) - log(n)`.

And what is no such form is left as written, with its value: a placed diagonal, a pad or a
triangle (zeros among the entries), two different selections, operands that broadcast along
other axes than the pattern's, a quotient by a number of unknown sign.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.special import expit, log_softmax, logsumexp, softmax

import einderiv
from three_paths import close, paths, quiet, three

X6 = np.array([-900.0, 3.0, 800.0, -1000.0, 0.5, 40.0])
L4 = 1000 * np.random.default_rng(16).standard_normal((4, 4))
N23 = np.array([[800.0, -5.0, 3.0], [-900.0, 2.0, 750.0]])
P2 = np.array([790.0, -800.0])
Q3 = np.array([1.0, 760.0, -5.0])


def functions_in(formula: str) -> set[str]:
    return set(re.findall(r"([a-z_]\w*)\(", formula))


def _called(result, **arrays) -> list:
    """The outputs of a result of several (gradients by several inputs), as arrays."""
    with np.errstate(all="ignore"):
        return [np.asarray(v) for v in result(**arrays)]


def _softplus(u):
    return np.logaddexp(0.0, u)


def _log1m_softmax(x, axis=-1):
    """log(1 - softmax(x)) as the log of the others' share, entry by entry (exact where an
    entry leads the others by 750, where 1 - softmax(x) is 0)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        row = x[index]
        out[index] = [logsumexp(np.delete(row, i)) - logsumexp(row) for i in range(len(row))]
    return np.moveaxis(out, -1, axis)


# -- 1. elementwise rewrites through selections ------------------------------------------------

SELECTIONS = [
    # steps and reversals, and compositions of them with windows
    ("log(softmax(x)[1::2])", "log_softmax", lambda x: log_softmax(x)[1::2]),
    ("log(softmax(x)[::3])", "log_softmax", lambda x: log_softmax(x)[::3]),
    ("log(softmax(x)[::-2])", "log_softmax", lambda x: log_softmax(x)[::-2]),
    ("log(softmax(x)[4:0:-2])", "log_softmax", lambda x: log_softmax(x)[4:0:-2]),
    ("log(softmax(x)[::-1][1:])", "log_softmax", lambda x: log_softmax(x)[::-1][1:]),
    ("log(softmax(x)[1:][::-1])", "log_softmax", lambda x: log_softmax(x)[1:][::-1]),
    ("log(softmax(x)[1:][::2][::-1])", "log_softmax", lambda x: log_softmax(x)[1:][::2][::-1]),
    ("log(reshape(softmax(x), (2, 3)))", "log_softmax", lambda x: log_softmax(x).reshape(2, 3)),
    ("log(reshape(softmax(x), (3, 2))[::-1, 1])", "log_softmax",
     lambda x: log_softmax(x).reshape(3, 2)[::-1, 1]),
    # other functions and other rewrites
    ("log(sigmoid(x)[::2])", "softplus", lambda x: -_softplus(-x[::2])),
    ("log(1 - sigmoid(x)[::-1])", "softplus", lambda x: -_softplus(x[::-1])),
    ("log(1 + exp(x)[::-2])", "softplus", lambda x: _softplus(x[::-2])),
    ("log(1 - softmax(x)[::2])", "log1m_softmax", lambda x: _log1m_softmax(x)[::2]),
    ("1 - softmax(x)[::-1]", "complement", lambda x: (1 - softmax(x))[::-1]),
    ("exp(x[::2]) / sum(exp(x))", "softmax", lambda x: softmax(x)[::2]),
    ("exp(x)[::-1] / sum(exp(x))", "softmax", lambda x: softmax(x)[::-1]),
    ("logsumexp(x) - x[::-1]", "log_softmax", lambda x: -log_softmax(x)[::-1]),
    ("logsumexp(x) - x[1::2]", "log_softmax", lambda x: -log_softmax(x)[1::2]),
    ("log(2 * softmax(x)[::2])", "log_softmax", lambda x: np.log(2) + log_softmax(x)[::2]),
]


@pytest.mark.parametrize("source, becomes, reference", SELECTIONS,
                         ids=[s for s, _, _ in SELECTIONS])
def test_rewrites_through_steps_reversals_and_reshapes(source, becomes, reference):
    expected = reference(X6)
    f = einderiv.compile(source, {"x": (6,) if "reshape" in source else ("m",)})
    assert becomes in functions_in(f.formula) and "exp" not in functions_in(f.formula), \
        f.formula
    three(f, expected, x=X6)


MATRIX_SELECTIONS = [
    ("log(diag(softmax(L, axis=1)))", "log_softmax", lambda L: np.diag(log_softmax(L, 1))),
    ("log(diag(softmax(L, axis=0)))", "log_softmax", lambda L: np.diag(log_softmax(L, 0))),
    ("log(diag(softmax(L, axis=1))[::-1])", "log_softmax",
     lambda L: np.diag(log_softmax(L, 1))[::-1]),
    ("log(diag(softmax(L, axis=1))[1:])", "log_softmax", lambda L: np.diag(log_softmax(L, 1))[1:]),
    # the anti-diagonal: a reversal, then a diagonal
    ("log(diag(softmax(L, axis=1)[::-1]))", "log_softmax",
     lambda L: np.diag(log_softmax(L, 1)[::-1])),
    ("log(diag(flip(softmax(L, axis=1), axis=1)))", "log_softmax",
     lambda L: np.diag(log_softmax(L, 1)[:, ::-1])),
    ("log(softmax(L, axis=1)[::2, ::-1])", "log_softmax", lambda L: log_softmax(L, 1)[::2, ::-1]),
    ("log(softmax(L, axis=0).T[::-1])", "log_softmax", lambda L: log_softmax(L, 0).T[::-1]),
    ("log(diag(softmax(L, axis=1).T))", "log_softmax", lambda L: np.diag(log_softmax(L, 1))),
    ("log(diag(sigmoid(L)))", "softplus", lambda L: -_softplus(-np.diag(L))),
    ("log(1 - diag(softmax(L, axis=1)))", "log1m_softmax", lambda L: np.diag(_log1m_softmax(L, 1))),
    ("log(diag(exp(L)) / sum(exp(L), axis=1))", "log_softmax",
     lambda L: np.diag(log_softmax(L, 1))),
    # the CLIP / InfoNCE loss, with log_softmax and written by hand
    ("-0.5 * (mean(log(diag(softmax(L, axis=1)))) + mean(log(diag(softmax(L, axis=0)))))",
     "log_softmax",
     lambda L: -0.5 * (np.mean(np.diag(log_softmax(L, 1))) + np.mean(np.diag(log_softmax(L, 0))))),
    ("logsumexp(L, axis=1) - diag(L)", "log_softmax", lambda L: -np.diag(log_softmax(L, 1))),
    ("logsumexp(L, axis=0) - diag(L)", "log_softmax", lambda L: -np.diag(log_softmax(L, 0))),
    ("diag(L) - logsumexp(L, axis=0)", "log_softmax", lambda L: np.diag(log_softmax(L, 0))),
]


@pytest.mark.parametrize("source, becomes, reference", MATRIX_SELECTIONS,
                         ids=[s for s, _, _ in MATRIX_SELECTIONS])
def test_rewrites_through_diagonals_and_their_compositions(source, becomes, reference):
    expected = reference(L4)
    assert np.all(np.isfinite(expected))
    f = einderiv.compile(source, {"L": ("n", "n")})
    assert becomes in functions_in(f.formula), f.formula
    assert not functions_in(f.formula) & {"exp", "softmax", "logsumexp"}, f.formula
    three(f, expected, L=L4)


def test_hand_written_clip_loss_has_an_exact_gradient():
    """`mean(logsumexp(L, axis=1) - diag(L))` is `-mean(diag(log_softmax(L)))`: its gradient at
    an entry that leads its row by 40 is the others' share, -e^-40 / n, not softmax - 1, 0."""
    L = np.array([[40.0, 0.0, -1.0], [0.0, 45.0, 2.0], [-3.0, 1.0, 50.0]])
    f = einderiv.grad("mean(logsumexp(L, axis=1) - diag(L))", "L", {"L": ("n", "n")})
    s = softmax(L, axis=1)
    expected = s.copy()
    for i in range(3):
        expected[i, i] = -np.sum(np.delete(s[i], i))  # s_ii - 1, as the others' share
    expected /= 3
    for path, value in paths(f, L=L).items():
        denom = np.abs(expected)
        assert np.max(np.abs(value - expected) / denom) < 1e-12, (path, value, expected)


SELECTION_GRADIENTS = [
    ("sum(log(softmax(x)[::-2]))", "x", lambda x: np.eye(6)[::-2].sum(0) - 3 * softmax(x)),
    ("sum(log(sigmoid(x)[1::2]))", "x", lambda x: np.where(np.arange(6) % 2 == 1, expit(-x), 0)),
]


@pytest.mark.parametrize("source, wrt, reference", SELECTION_GRADIENTS,
                         ids=[s for s, _, _ in SELECTION_GRADIENTS])
def test_gradients_through_selections(source, wrt, reference):
    f = einderiv.grad(source, wrt, {"x": ("m",)})
    three(f, reference(X6), x=X6)


NOT_SELECTIONS = [
    # a placed diagonal (zeros off it), a pad, a triangle: log(0) is -inf there, not 0
    ("log(diag(softmax(x)))", {"x": (4,)}, lambda a: np.log(np.diag(softmax(a["x"])))),
    ("log(pad(softmax(x), (1, 2)))", {"x": (4,)},
     lambda a: np.log(np.pad(softmax(a["x"]), (1, 2)))),
    ("log(triu(softmax(X, axis=1)))", {"X": (3, 3)}, lambda a: np.log(np.triu(softmax(a["X"], 1)))),
    # two different selections, a sum, a product with another tensor
    ("log(softmax(x)[::2] + softmax(x)[1::2])", {"x": (4,)},
     lambda a: np.log(softmax(a["x"])[::2] + softmax(a["x"])[1::2])),
    ("log(sum(softmax(X, axis=1), axis=0))", {"X": (3, 3)},
     lambda a: np.log(np.sum(softmax(a["X"], 1), 0))),
    ("log(softmax(x)[::-1] * y)", {"x": (4,), "y": (4,)},
     lambda a: np.log(softmax(a["x"])[::-1] * a["y"])),
    # a column's sums against the diagonal: not a softmax of the rows
    ("exp(diag(X)) / sum(exp(X), axis=0)[::-1]", {"X": (3, 3)},
     lambda a: np.exp(np.diag(a["X"])) / np.sum(np.exp(a["X"]), 0)[::-1]),
    ("exp(x[::2]) / sum(exp(x[1:]))", {"x": (4,)},
     lambda a: np.exp(a["x"][::2]) / np.sum(np.exp(a["x"][1:]))),
]


@pytest.mark.parametrize("source, shapes, reference", NOT_SELECTIONS,
                         ids=[s for s, _, _ in NOT_SELECTIONS])
def test_what_no_selection_hides_is_left_with_its_value(source, shapes, reference):
    f = einderiv.compile(source, shapes)
    assert not functions_in(f.formula) & {"log_softmax", "softmax", "logsumexp", "complement"} \
        - functions_in(source), f.formula
    rng = np.random.default_rng(3)
    arrays = {k: rng.uniform(-2.0, 2.0, size=s) for k, s in shapes.items()}
    arrays.setdefault("y", None)
    if arrays["y"] is None:
        del arrays["y"]
    else:
        arrays["y"] = np.abs(arrays["y"])
    with np.errstate(divide="ignore"):
        expected = reference(arrays)
    three(f, expected, rtol=1e-13, **arrays)


# -- 2. patterns whose functions are broadcast ---------------------------------------------------

BROADCAST_SHAPES = {"N": ("n", "k"), "p": ("n",), "q": ("k",), "a": (), "S": ("n", "n")}
BROADCASTS = [
    ("log(exp(p)[:, None] + exp(N))", "logaddexp", lambda v: np.logaddexp(v["p"][:, None], v["N"])),
    ("log(exp(N) + exp(p)[:, None])", "logaddexp", lambda v: np.logaddexp(v["p"][:, None], v["N"])),
    ("log(exp(p[:, None]) + exp(N))", "logaddexp", lambda v: np.logaddexp(v["p"][:, None], v["N"])),
    ("log(exp(a) + exp(N))", "logaddexp", lambda v: np.logaddexp(v["a"], v["N"])),
    ("log(exp(N) + exp(a))", "logaddexp", lambda v: np.logaddexp(v["a"], v["N"])),
    ("log(exp(p)[:, None] + exp(q)[None, :])", "logaddexp",
     lambda v: np.logaddexp(v["p"][:, None], v["q"][None, :])),
    ("log(exp(p[:, None]) + exp(q))", "logaddexp", lambda v: np.logaddexp(v["p"][:, None], v["q"])),
    ("log(exp(q)[::-1] + exp(N))", "logaddexp", lambda v: np.logaddexp(v["q"][::-1], v["N"])),
    # a square matrix: the broadcast along its rows, not its columns
    ("log(exp(p)[:, None] + exp(S))", "logaddexp", lambda v: np.logaddexp(v["p"][:, None], v["S"])),
    ("log(exp(p)[None, :] + exp(S))", "logaddexp", lambda v: np.logaddexp(v["p"][None, :], v["S"])),
    ("exp(N) / (exp(N) + exp(a))", "sigmoid", lambda v: expit(v["N"] - v["a"])),
    ("exp(a) / (exp(N) + exp(a))", "sigmoid", lambda v: expit(v["a"] - v["N"])),
    ("exp(a) / (exp(a) + exp(N))", "sigmoid", lambda v: expit(v["a"] - v["N"])),
    ("exp(a) / (exp(a) + exp(q)[::-1])", "sigmoid", lambda v: expit(v["a"] - v["q"][::-1])),
    ("exp(a) / (exp(p)[:, None] + exp(a))", "sigmoid", lambda v: expit(v["a"] - v["p"][:, None])),
    ("exp(p)[:, None] / (exp(p)[:, None] + exp(N))", "sigmoid",
     lambda v: expit(v["p"][:, None] - v["N"])),
    ("exp(N) / (exp(N) + exp(p)[:, None])", "sigmoid", lambda v: expit(v["N"] - v["p"][:, None])),
    ("exp(p[:, None]) / (exp(N) + exp(p[:, None]))", "sigmoid",
     lambda v: expit(v["p"][:, None] - v["N"])),
    ("exp(q)[None, :] / (exp(q)[None, :] + exp(p)[:, None])", "sigmoid",
     lambda v: expit(v["q"][None, :] - v["p"][:, None])),
    ("exp(p)[None, :] / (exp(p)[None, :] + exp(S))", "sigmoid",
     lambda v: expit(v["p"][None, :] - v["S"])),
]


def _broadcast_inputs():
    return {"N": N23, "p": P2, "q": Q3, "a": 760.0,
            "S": np.array([[800.0, -795.0], [-900.0, 10.0]])}


@pytest.mark.parametrize("source, becomes, reference", BROADCASTS,
                         ids=[s for s, _, _ in BROADCASTS])
def test_patterns_whose_operands_broadcast(source, becomes, reference):
    v = _broadcast_inputs()
    expected = reference(v)
    assert np.all(np.isfinite(expected))
    f = einderiv.compile(source, BROADCAST_SHAPES)
    assert becomes in functions_in(f.formula) and "exp" not in functions_in(f.formula), f.formula
    three(f, expected, **v)


def test_hypot_of_a_scalar_and_a_matrix():
    f = einderiv.compile("sqrt(a ** 2 + N ** 2)", BROADCAST_SHAPES)
    assert "hypot" in functions_in(f.formula), f.formula
    three(f, np.hypot(1e200, N23 * 1e198), a=1e200, N=N23 * 1e198)
    f = einderiv.compile("sqrt((p ** 2)[:, None] + N ** 2)", BROADCAST_SHAPES)
    assert "hypot" in functions_in(f.formula), f.formula
    three(f, np.hypot(P2[:, None] * 1e198, N23 * 1e198), p=P2 * 1e198, N=N23 * 1e198)


def test_gradient_of_a_logaddexp_of_broadcast_operands():
    """sum(log(exp(p)[:, None] + exp(N))): d/dN = sigmoid(N - p), d/dp = sum_k sigmoid(p - N),
    finite at logits of 900."""
    f = einderiv.grad("sum(log(exp(p)[:, None] + exp(N)))", ["p", "N"], BROADCAST_SHAPES)
    dp, dN = _called(f, N=N23, p=P2)
    close(dN, expit(N23 - P2[:, None]))
    close(dp, expit(P2[:, None] - N23).sum(axis=1))
    g = einderiv.grad("sum(exp(N) / (exp(N) + exp(a)))", "a", BROADCAST_SHAPES)
    close(quiet(g, N=N23, a=760.0), -np.sum(expit(N23 - 760.0) * expit(760.0 - N23)))


NOT_BROADCASTS = [
    # not one u: the numerator broadcast along the other axis
    "exp(p)[:, None] / (exp(p)[None, :] + exp(S))",
    "exp(p)[:, None] / (exp(q)[None, :] + exp(N))",
    # not e^a + e^b: a coefficient, a difference
    "log(2 * exp(p)[:, None] + exp(N))",
    "log(exp(p)[:, None] - exp(N))",
]


@pytest.mark.parametrize("source", NOT_BROADCASTS)
def test_broadcast_operands_of_no_pattern_keep_their_value(source):
    f = einderiv.compile(source, BROADCAST_SHAPES)
    assert not functions_in(f.formula) & {"sigmoid", "logaddexp"}, f.formula
    v = {"N": N23 / 100, "p": P2 / 1000, "q": Q3 / 100, "S": np.array([[0.5, -1.0], [2.0, 0.1]])}
    env = {k: v[k] for k in ("N", "p", "q", "S")}
    expected = eval(source.replace("exp", "np.exp").replace("log", "np.log"), {"np": np}, env)
    with np.errstate(invalid="ignore"):
        three(f, expected, rtol=1e-13, **v)


# -- 3. weighted logsumexp with weights that broadcast -----------------------------------------

WEIGHTED_SHAPES = {"L": ("n", "k"), "pi": ("k",), "r": ("n",), "R": ("n", "n"), "eta": ("n",),
                   "W": ("n", "k"), "x": ("k",), "w": ("k",), "t": ()}
LW = np.array([[-1000.0, -1001.0, -1003.0], [-2.0, -1.0, -3.0], [700.0, 712.0, 690.0]])
PI = np.array([0.2, 0.5, 0.3])
ETA = np.array([310.0, -290.0, 705.0])
RISK = np.triu(np.ones((3, 3))) + np.array([[0.0, -0.5, 0.0], [0.0, 0.0, 0.25], [0.0, 0.0, 0.0]])

WEIGHTED = [
    ("log(sum(pi * exp(L), axis=1))",
     lambda: logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1)),
    ("log(sum(exp(L) * pi, axis=1))",
     lambda: logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1)),
    ("log(exp(L) @ pi)", lambda: logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1)),
    ("log(pi @ exp(L).T)", lambda: logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1)),
    # weights per row, summed down the columns
    ("log(sum(r[:, None] * exp(L), axis=0))",
     lambda: logsumexp(LW, b=np.broadcast_to(PI[:, None], LW.shape), axis=0)),
    ("log(r @ exp(L))", lambda: logsumexp(LW, b=np.broadcast_to(PI[:, None], LW.shape), axis=0)),
    # a risk-set matrix against exp of a vector, on either side, weights of either sign
    ("log(sum(R * exp(eta), axis=1))",
     lambda: logsumexp(np.broadcast_to(ETA, RISK.shape), b=RISK, axis=1)),
    ("log(R @ exp(eta))", lambda: logsumexp(np.broadcast_to(ETA, RISK.shape), b=RISK, axis=1)),
    ("log(exp(eta) @ R)",
     lambda: logsumexp(np.broadcast_to(ETA[:, None], RISK.shape), b=RISK, axis=0)),
    ("log(sum(exp(eta)[:, None] * R, axis=0))",
     lambda: logsumexp(np.broadcast_to(ETA[:, None], RISK.shape), b=RISK, axis=0)),
    # ... and divided by the count
    ("log(mean(pi * exp(L), axis=1))",
     lambda: logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1) - np.log(3)),
    ("log(mean(R * exp(eta), axis=1))",
     lambda: logsumexp(np.broadcast_to(ETA, RISK.shape), b=RISK, axis=1) - np.log(3)),
]


@pytest.mark.parametrize("source, reference", WEIGHTED, ids=[s for s, _ in WEIGHTED])
@pytest.mark.parametrize("sizes", ["named", "numbers"])
def test_weighted_logsumexp_with_weights_that_broadcast(source, reference, sizes):
    shapes = WEIGHTED_SHAPES if sizes == "named" else {
        k: tuple(3 for _ in s) for k, s in WEIGHTED_SHAPES.items()}
    expected = reference()
    assert np.all(np.isfinite(expected))
    f = einderiv.compile(source, shapes)
    assert "logsumexp_weighted" in functions_in(f.formula) and \
        "exp" not in functions_in(f.formula), f.formula
    three(f, expected, L=LW, pi=PI, r=PI, R=RISK, eta=ETA)


def test_gradients_of_weighted_logsumexps_with_broadcast_weights():
    """The mixture log-likelihood by L and by pi, and a Cox partial likelihood by eta and by the
    risk set, at log-likelihoods of +-1000 and linear predictors of 700 (nan as written)."""
    m = LW.max(axis=1, keepdims=True)
    resp = PI * np.exp(LW - m)
    resp /= resp.sum(axis=1, keepdims=True)  # d/dL of sum(log(exp(L) @ pi))
    f = einderiv.grad("sum(log(exp(L) @ pi))", ["L", "pi"], WEIGHTED_SHAPES)
    dL, dpi = _called(f, L=LW, pi=PI)
    close(dL, resp)
    close(dpi, (resp / PI).sum(axis=0))
    d = np.array([1.0, 0.0, 1.0])
    lse = logsumexp(np.broadcast_to(ETA, RISK.shape), b=RISK, axis=1)
    share = RISK * np.exp(ETA[None, :] - lse[:, None])  # d lse_i / d eta_j
    g = einderiv.grad("sum(d * (log(R @ exp(eta)) - eta))", ["eta", "R"],
                      {**WEIGHTED_SHAPES, "d": ("n",)})
    deta, dR = _called(g, R=RISK, eta=ETA, d=d)
    close(deta, d @ share - d)
    close(dR, d[:, None] * np.exp(ETA[None, :] - lse[:, None]))


def test_logsumexp_weighted_takes_weights_that_broadcast():
    f = einderiv.compile("logsumexp_weighted(eta, R, axis=1)", WEIGHTED_SHAPES)
    three(f, logsumexp(np.broadcast_to(ETA, RISK.shape), b=RISK, axis=1), R=RISK, eta=ETA)
    f = einderiv.compile("logsumexp_weighted(L, pi)", WEIGHTED_SHAPES)
    three(f, logsumexp(LW, b=np.broadcast_to(PI, LW.shape)), L=LW, pi=PI)
    f = einderiv.compile("logsumexp_weighted(L, pi, axis=1, keepdims=True)", WEIGHTED_SHAPES)
    three(f, logsumexp(LW, b=np.broadcast_to(PI, LW.shape), axis=1, keepdims=True), L=LW, pi=PI)
    with pytest.raises(einderiv.EinderivError, match="weights"):
        einderiv.compile("logsumexp_weighted(eta, pi)", {"eta": ("n",), "pi": ("k",)})


NOT_WEIGHTED = [
    # a matrix times a matrix: weights on other axes than the sum's on both sides
    ("log(exp(L) @ W.T)", lambda v: np.log(np.exp(v["L"]) @ v["W"].T)),
    # exp of a vector broadcast along the summed axis: e^eta_i sum_j R_ij, no weighted sum
    ("log(sum(R * exp(eta)[:, None], axis=1))",
     lambda v: np.log(np.sum(v["R"] * np.exp(v["eta"])[:, None], axis=1))),
]


@pytest.mark.parametrize("source, reference", NOT_WEIGHTED, ids=[s for s, _ in NOT_WEIGHTED])
def test_sums_that_are_no_weighted_logsumexp_keep_their_value(source, reference):
    rng = np.random.default_rng(5)
    v = {"L": rng.uniform(-2, 2, (3, 3)), "W": rng.uniform(0.1, 1, (3, 3)),
         "R": rng.uniform(0.1, 1, (3, 3)), "eta": rng.uniform(-2, 2, 3)}
    f = einderiv.compile(source, WEIGHTED_SHAPES)
    assert "logsumexp_weighted" not in functions_in(f.formula), f.formula
    three(f, reference(v), rtol=1e-13, **v)


# -- 4. the log of a weighted mean ---------------------------------------------------------------

MEANS = [
    ("log(mean(w * exp(x)))", lambda x, w: logsumexp(x, b=w) - np.log(3)),
    ("log(mean(exp(x) * w))", lambda x, w: logsumexp(x, b=w) - np.log(3)),
    ("log(sum(w * exp(x)) / 4)", lambda x, w: logsumexp(x, b=w) - np.log(4)),
    ("log(0.5 * sum(w * exp(x)))", lambda x, w: logsumexp(x, b=w) + np.log(0.5)),
    ("log(sum(w * exp(x)) / (2 * size(k)))", lambda x, w: logsumexp(x, b=w) - np.log(6)),
    ("log(mean(W * exp(L), axis=1))", lambda x, w: logsumexp(LW, b=np.tile(w, (3, 1)), axis=1)
     - np.log(3)),
    ("log(mean(W * exp(L), axis=0))", lambda x, w: logsumexp(LW, b=np.tile(w, (3, 1)), axis=0)
     - np.log(3)),
    ("log(mean(W * exp(L)))", lambda x, w: logsumexp(LW, b=np.tile(w, (3, 1))) - np.log(9)),
]


@pytest.mark.parametrize("source, reference", MEANS, ids=[s for s, _ in MEANS])
@pytest.mark.parametrize("sizes", ["named", "numbers"])
def test_log_of_a_weighted_mean_of_exponentials(source, reference, sizes):
    x, w = np.array([800.0, 1.0, 805.0]), np.array([0.2, 0.5, 0.3])
    shapes = WEIGHTED_SHAPES if sizes == "named" else {
        k: tuple(3 for _ in s) for k, s in WEIGHTED_SHAPES.items()}
    if sizes == "numbers" and "size(k)" in source:
        source = source.replace("size(k)", "3")
    expected = reference(x, w)
    assert np.all(np.isfinite(expected))
    f = einderiv.compile(source, shapes)
    assert "logsumexp_weighted" in functions_in(f.formula), f.formula
    three(f, expected, x=x, w=w, W=np.tile(w, (3, 1)), L=LW)


def test_log_of_a_weighted_mean_has_an_exact_gradient():
    x, w = np.array([800.0, 1.0, 805.0]), np.array([0.2, 0.5, 0.3])
    f = einderiv.grad("log(mean(w * exp(x)))", ["x", "w"], WEIGHTED_SHAPES)
    dx, dw = _called(f, x=x, w=w)
    share = np.exp(x - logsumexp(x, b=w))
    close(dx, w * share)
    close(dw, share)


@pytest.mark.parametrize("source", [
    "log(sum(w * exp(x)) / t)",  # a divisor of unknown sign: log(-1 / -2) is finite
    "log(sum(w * exp(x)) / -3)",
    "log(-mean(w * exp(x)))",
])
def test_log_of_a_quotient_by_a_number_of_unknown_sign_keeps_its_value(source):
    """Negative weights with a negative sum, divided by a negative number: a positive quotient,
    whose log is finite; logsumexp_weighted(x, w) - log(t) would be nan."""
    x, w = np.array([1.0, 2.0, 0.5]), np.array([-0.2, -0.5, 0.1])
    f = einderiv.compile(source, WEIGHTED_SHAPES)
    assert "logsumexp_weighted" not in functions_in(f.formula), f.formula
    total = np.sum(w * np.exp(x))
    expected = {"log(sum(w * exp(x)) / t)": np.log(total / -2.0),
                "log(sum(w * exp(x)) / -3)": np.log(total / -3.0),
                "log(-mean(w * exp(x)))": np.log(-total / 3)}[source]
    assert np.isfinite(expected)
    three(f, expected, rtol=1e-13, x=x, w=w, t=-2.0)


@pytest.mark.parametrize("expr, shapes, printed", [
    ("log(exp(L) @ pi)", {"L": ("n", "k"), "pi": ("k",)}, "logsumexp_weighted(L, pi, axis=1)"),
    ("log(R @ exp(eta))", {"R": ("n", "n"), "eta": ("n",)},
     "logsumexp_weighted(eta, R, axis=1)"),
    ("log(sum(R * exp(eta), axis=1))", {"R": ("n", "n"), "eta": ("n",)},
     "logsumexp_weighted(eta, R, axis=1)"),
    ("log(pi @ exp(L).T)", {"L": ("n", "k"), "pi": ("k",)}, "logsumexp_weighted(L, pi, axis=1)"),
])
def test_broadcast_weights_are_written_narrow_not_times_ones(expr, shapes, printed):
    # the weighted logsumexp broadcasts its arguments (scipy's b=): `pi`, not `pi * ones(n, k)`
    f = einderiv.compile(expr, shapes)
    assert f.formula == printed
    assert "ones" not in f.source and "broadcast_to" not in f.source, f.source
    rng = np.random.default_rng(3)
    sizes = {"n": 3, "k": 4}
    arrays = {k: (300 * rng.normal(size=tuple(sizes[d] for d in v)) if k in ("L", "eta") else
                  rng.uniform(0.1, 1, size=tuple(sizes[d] for d in v))) for k, v in shapes.items()}
    exp_arg = arrays.get("L", arrays.get("eta"))
    weights = arrays.get("pi", arrays.get("R"))
    if "pi @ exp(L).T" in expr or "exp(L) @ pi" in expr:
        want = logsumexp(exp_arg, b=weights, axis=1)
    else:
        want = logsumexp(np.broadcast_to(exp_arg, weights.shape), b=weights, axis=1)
    three(f, want, rtol=1e-12, **arrays)
    g = einderiv.grad("sum(" + expr + ")", "L" if "L" in shapes else "eta", shapes)
    assert "ones" not in g.formula, g.formula
    gi = {k: v for k, v in arrays.items() if k in g.inputs}
    np.testing.assert_allclose(g(**gi), g.evaluate_ir(**gi), rtol=1e-12)
