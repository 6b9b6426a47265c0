"""Structural zeros at poles through strided windows, slices of the diagonal, and places
that unrolled steps read in reverse (helper s29).

1. The Hessian through a strided window, `sum(log(X[:, 1::2]) * w)`: its identity and window
   are one IR node, a step of their product (`<stride>(delta[i,k] * delta[l+1,j], axis=3)`),
   which the vectorizer wrote as a product with the dense strided identity
   `(eye(n)[:, None, :, None] * eye(2 * t + 1)[1:].T[:, None])[:, :, :, ::2]`: 0 * inf = nan
   beside a pole. Read as its factors, the step on the window (contraction.py
   `_strided_factors_expanded`), it is placed on a diagonal and dilated
   (`_window_diagonal_of_all`, `_strided_rows_embed`).
2. A function of a slice of diag(X): the identity narrowed to the slice's rows is a window
   (contraction.py `_identity_narrowed`: `pad(diag(1 / diag(X)[1:]), ((1, 0), (1, 0)))`),
   embedded after the pad in the IR interpreter (plan.py `_padded_identity`), where both
   multiplied `eye(n)[1:]` by the pole; and `(1 / t0 ** 2) * t0` is `1 / t0` (ir/build.py
   `_power_cancelled`), inf at 0 where it was 0 * inf = nan.
3. Places stepping down (`sum_t log(x[2t]) * x[2(T-1-t)+1]`): the unit vectors are every k-th
   row of the identity reversed (lanes.py `_even_units`), which the vectorizer reads as the rows
   in order with the other terms reversed (contraction.py `_unflipped`): one reversed read
   placed by dilate and pad, `pad(dilate(log(t0)[::-1], 2, 7), ((1, n - 8),))`, where each
   step's row was a part of a concatenate (the formula linear in T).

Every result is checked on the three paths (generated code, IR interpreter, printed formula
compiled back) against jitted float64 JAX, or at a pole against the value worked out by hand.
"""

import os

import numpy as np
import pytest

import einderiv
from three_paths import paths as _paths, quiet as _quiet
from einderiv import fn

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

# The parametrized cases run one in two by default, all with EINDERIV_SLOW=1 (conftest.py:
# the suite's time budget); a test's own sample(k) takes precedence.
pytestmark = pytest.mark.sample(2)

RNG = np.random.default_rng(2929)




def _same(got, want, rtol=1e-9, atol=1e-11):
    """Equal, nan where nan, inf where inf (so a structural zero must be an exact 0)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want)) and \
        np.array_equal(np.isinf(got), np.isinf(want)) and \
        np.allclose(np.nan_to_num(got, posinf=9e99, neginf=-9e99),
                    np.nan_to_num(want, posinf=9e99, neginf=-9e99), rtol=rtol, atol=atol)


def _no_dense_selection(result):
    """No 0/1 selection matrix multiplied in (a diagonal's select mask, `where(eye(n) > 0,
    ...)`, is exact)."""
    assert "eye(" not in result.formula.replace("where(eye(", ""), result.formula


# -- 1. the Hessian through a strided window --------------------------------------------------

# (slice, symbolic length of the sliced axis for a window of t entries, concrete length at
# t = 3, the numpy index of the window)
STRIDED = [("1::2", "2 * t + 1", 7, slice(1, None, 2)), ("::2", "2 * t", 6, slice(None, None, 2)),
           ("2::3", "3 * t + 2", 11, slice(2, None, 3)), ("::3", "3 * t", 9, slice(None, None, 3)),
           ("1:-1:2", "2 * t + 1", 7, slice(1, -1, 2))]


def _strided_hessian_by_hand(X_, v, index, axis):
    """-v / x ** 2 on the diagonal at the window's entries, exact zeros elsewhere."""
    shape = X_.shape
    diag = np.zeros(shape)
    window = (slice(None),) * axis + (index,)
    vb = v.reshape((-1,) + (1,) * (len(shape) - axis - 1))
    with np.errstate(divide="ignore"):
        diag[window] = -vb / X_[window] ** 2
    return np.diag(diag.ravel()).reshape(shape + shape)


@pytest.mark.parametrize("s", STRIDED, ids=[s[0] for s in STRIDED])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_hessian_through_a_strided_window_at_a_pole(s, at):
    sl, length, concrete, index = s
    expr = f"sum(log(X[:, {sl}]) * w)"
    shapes = {"X": ("n", length), "w": ("t",)}
    X_ = np.abs(RNG.standard_normal((3, concrete))) + 0.5
    column = np.arange(concrete)[index][at]
    X_[1, column] = 0.0
    v = np.array([1.0, -2.0, 3.0])
    want = _strided_hessian_by_hand(X_, v, index, 1)
    h = einderiv.hessian(expr, "X", shapes)
    _no_dense_selection(h)
    for path, got in _paths(h, X=X_, w=v).items():
        assert _same(got, want), (path, h.formula)


@pytest.mark.parametrize("s", STRIDED, ids=[s[0] for s in STRIDED])
def test_hessian_through_a_strided_window_of_rows_and_of_a_vector(s):
    sl, length, concrete, index = s
    v = np.array([0.5, 2.0, -1.0])
    # rows: X[1::2] met by w[:, None]
    X_ = np.abs(RNG.standard_normal((concrete, 2))) + 0.5
    X_[np.arange(concrete)[index][1], 0] = 0.0
    h = einderiv.hessian(f"sum(log(X[{sl}]) * w[:, None])", "X",
                         {"X": (length, "n"), "w": ("t",)})
    _no_dense_selection(h)
    want = _strided_hessian_by_hand(X_, v, index, 0)
    for path, got in _paths(h, X=X_, w=v).items():
        assert _same(got, want), (path, h.formula)
    # a vector: sum(log(x[1::2]) * w)
    x_ = np.abs(RNG.standard_normal(concrete)) + 0.5
    x_[np.arange(concrete)[index][2]] = 0.0
    h = einderiv.hessian(f"sum(log(x[{sl}]) * w)", "x", {"x": (length,), "w": ("t",)})
    _no_dense_selection(h)
    want = _strided_hessian_by_hand(x_, v, index, 0)
    for path, got in _paths(h, x=x_, w=v).items():
        assert _same(got, want), (path, h.formula)


@pytest.mark.parametrize("s", STRIDED[:3], ids=[s[0] for s in STRIDED[:3]])
def test_hessian_and_gradient_through_a_strided_window_against_jax(s):
    sl, length, concrete, index = s
    expr = f"sum(log(X[:, {sl}]) * w) + sum(sin(X[:, {sl}]) ** 2 * w)"
    shapes = {"X": ("n", length), "w": ("t",)}
    X_ = np.abs(RNG.standard_normal((2, concrete))) + 0.5
    v = RNG.standard_normal(3)

    def f(X, w):
        Y = X[:, index]
        return jnp.sum(jnp.log(Y) * w) + jnp.sum(jnp.sin(Y) ** 2 * w)

    for kind, d in (("grad", jax.grad), ("hessian", jax.hessian)):
        want = np.asarray(jax.jit(d(f))(X_, v))
        r = getattr(einderiv, kind)(expr, "X", shapes)
        for path, got in _paths(r, X=X_, w=v).items():
            assert _same(got, want, 1e-9, 1e-10), (kind, path, r.formula)


def test_strided_window_hessian_keeps_float32():
    shapes = {"X": ("n", "2 * t + 1"), "w": ("t",)}
    X_ = (np.abs(RNG.standard_normal((2, 7))) + 0.5).astype(np.float32)
    X_[0, 3] = 0.0
    v = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    h = einderiv.hessian("sum(log(X[:, 1::2]) * w)", "X", shapes)
    want = _strided_hessian_by_hand(X_.astype(np.float64), v.astype(np.float64),
                                    slice(1, None, 2), 1)
    for path, got in _paths(h, X=X_, w=v).items():
        assert got.dtype == np.float32, path
        assert _same(got, want, 1e-5, 1e-6), path


# -- 2. a slice of the diagonal ---------------------------------------------------------------

DIAGONAL = [("[1:]", [1, 2, 3]), ("[:-1]", [0, 1, 2]), ("[1:-1]", [1, 2]), ("[::2]", [0, 2]),
            ("[1::2]", [1, 3])]


@pytest.mark.parametrize("sl, rows", DIAGONAL, ids=[d[0] for d in DIAGONAL])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("pole", [0, 1, 2, 3])
def test_gradient_of_a_slice_of_the_diagonal_at_a_pole(sl, rows, weighted, pole):
    X_ = np.eye(4) + 0.1 * np.abs(RNG.standard_normal((4, 4)))
    X_[pole, pole] = 0.0
    v = np.array([1.0, -2.0, 3.0, 4.0])
    expr = f"sum(log(diag(X){sl}) * v{sl})" if weighted else f"sum(log(diag(X){sl}))"
    g = einderiv.grad(expr, "X", {"X": ("n", "n"), "v": ("n",)})
    _no_dense_selection(g)
    want = np.zeros((4, 4))
    with np.errstate(divide="ignore"):
        want[rows, rows] = (v[rows] if weighted else 1.0) / X_[rows, rows]
    for path, got in _paths(g, X=X_, v=v).items():
        assert _same(got, want), (path, g.formula)


@pytest.mark.parametrize("k", [0, 1, -1, 2])
def test_gradient_of_one_diagonal_entry_at_its_pole(k):
    X_ = np.eye(3) + 0.2
    X_[k, k] = 0.0
    g = einderiv.grad(f"log(diag(X)[{k}])", "X", {"X": ("n", "n")})
    _no_dense_selection(g)
    want = np.zeros((3, 3))
    want[k, k] = np.inf
    for path, got in _paths(g, X=X_).items():
        assert _same(got, want), (path, g.formula)
    # away from the pole: 1 / X[k, k] there, zeros elsewhere
    X_[k, k] = 2.0
    want[k, k] = 0.5
    for path, got in _paths(g, X=X_).items():
        assert _same(got, want), (path, g.formula)


@pytest.mark.parametrize("power", [2, 3])
@pytest.mark.parametrize("sl", ["[:-1]", "[1:]", ""])
def test_a_power_under_log_cancels_to_inf_at_zero(power, sl):
    # d/dX log(d ** p) = p / d: inf at d = 0, where `p * d ** (p - 1) / d ** p` was 0 / 0
    # (whole powers only: d ** 2.5 is nan where d < 0, and so must its derivative stay, so
    # 2.5 * d ** 1.5 / d ** 2.5 is not cancelled, and is 0 / 0 = nan at d = 0:
    # test_breaker_s29_late.py)
    X_ = np.eye(3) + 0.1
    X_[1, 1] = 0.0
    g = einderiv.grad(f"sum(log(diag(X){sl} ** {power}))", "X", {"X": ("n", "n")})
    rows = {"[:-1]": [0, 1], "[1:]": [1, 2], "": [0, 1, 2]}[sl]
    want = np.zeros((3, 3))
    with np.errstate(divide="ignore"):
        want[rows, rows] = power / X_[rows, rows]
    for path, got in _paths(g, X=X_).items():
        assert _same(got, want), (path, g.formula)
    assert "** " not in g.formula, g.formula
    # a vector, against JAX off the pole
    x_ = np.abs(RNG.standard_normal(5)) + 0.5
    r = einderiv.grad(f"sum(log(x ** {power}) * w)", "x", {"x": ("n",), "w": ("n",)})
    w = RNG.standard_normal(5)
    want = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(jnp.log(x ** power) * w)))(x_))
    for path, got in _paths(r, x=x_, w=w).items():
        assert _same(got, want), (path, r.formula)


def test_hessian_of_a_slice_of_the_diagonal_at_a_pole():
    X_ = np.eye(3) + 0.1
    X_[2, 2] = 0.0
    h = einderiv.hessian("sum(log(diag(X)[1:]))", "X", {"X": ("n", "n")})
    want = np.zeros((3, 3, 3, 3))
    want[1, 1, 1, 1] = -1 / X_[1, 1] ** 2
    want[2, 2, 2, 2] = -np.inf
    for path, got in _paths(h, X=X_).items():
        assert _same(got, want), (path, h.formula)


def test_diagonal_slice_keeps_float32():
    X_ = (np.eye(3) + 0.1).astype(np.float32)
    X_[1, 1] = 0.0
    g = einderiv.grad("sum(log(diag(X)[1:]))", "X", {"X": ("n", "n")})
    want = np.zeros((3, 3))
    want[1, 1], want[2, 2] = np.inf, 1 / np.float32(1.1)
    for path, got in _paths(g, X=X_).items():
        assert got.dtype == np.float32, path
        assert _same(got, want, 1e-6, 1e-7), path


# -- 3. places read in reverse ----------------------------------------------------------------

def _unrolled(T, first, second):
    """sum_t log(x[first(t)]) * x[second(t)], T terms summed in a Python loop."""
    x = einderiv.var("x", ("n",))
    f = None
    for t in range(T):
        term = fn.log(x[first(t)]) * x[second(t)]
        f = term if f is None else f + term
    return f


def _by_hand(x_, places):
    """Gradient and Hessian of sum log(x[a]) * x[b] over (a, b) in places, worked out."""
    n = len(x_)
    g, H = np.zeros(n), np.zeros((n, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, b in places:
            g[a] += x_[b] / x_[a]
            g[b] += np.log(x_[a])
            H[a, a] += -x_[b] / x_[a] ** 2
            H[a, b] += 1 / x_[a]
            H[b, a] += 1 / x_[a]
    return g, H


# (first place, second place) of step t of T
PATTERNS = {
    "reversed odd": (lambda t, T: 2 * t, lambda t, T: 2 * (T - 1 - t) + 1),
    "reversed by 3": (lambda t, T: 3 * t, lambda t, T: 3 * (T - 1 - t) + 2),
    "both reversed": (lambda t, T: 2 * (T - 1 - t), lambda t, T: 2 * (T - 1 - t) + 1),
    "reversed first": (lambda t, T: 2 * (T - 1 - t) + 1, lambda t, T: 2 * t),
    "reversed shifted": (lambda t, T: 2 * t + 1, lambda t, T: 2 * (T - 1 - t) + 4),
    "irregular": (lambda t, T: 2 * t, lambda t, T: [5, 1, 7, 3, 11, 9][t % 6] + 12 * (t // 6)),
}


def _places(pattern, T):
    first, second = PATTERNS[pattern]
    return [(first(t, T), second(t, T)) for t in range(T)]


def _program(pattern, T):
    first, second = PATTERNS[pattern]
    return _unrolled(T, lambda t: first(t, T), lambda t: second(t, T))


# (T = 12 for every pattern with EINDERIV_SLOW=1; T = 4 in CI: the suite's time budget)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("T", [4, pytest.param(12, marks=pytest.mark.skipif(
    not os.environ.get("EINDERIV_SLOW"), reason="12 steps of every pattern: EINDERIV_SLOW=1"))])
def test_reversed_reads_against_jax(pattern, T):
    places = _places(pattern, T)
    n = max(max(p) for p in places) + 3
    x_ = np.abs(RNG.standard_normal(n)) + 0.5
    a = jnp.array([p for p, _ in places])
    b = jnp.array([q for _, q in places])

    def f(x):
        return jnp.sum(jnp.log(x[a]) * x[b])

    prog = _program(pattern, T)
    for kind, d in (("grad", jax.grad), ("hessian", jax.hessian)):
        want = np.asarray(jax.jit(d(f))(x_))
        r = getattr(einderiv, kind)(prog, "x")
        for path, got in _paths(r, x=x_).items():
            assert _same(got, want, 1e-9, 1e-10), (pattern, kind, path, r.formula)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_reversed_reads_at_a_pole(pattern, which):
    T = 6
    places = _places(pattern, T)
    n = max(max(p) for p in places) + 3
    x_ = np.abs(RNG.standard_normal(n)) + 0.5
    pole = {"first": places[0][0], "middle": places[T // 2][0], "last": places[-1][0]}[which]
    x_[pole] = 0.0
    want_g, want_h = _by_hand(x_, places)
    prog = _program(pattern, T)
    for kind, want in (("grad", want_g), ("hessian", want_h)):
        r = getattr(einderiv, kind)(prog, "x")
        for path, got in _paths(r, x=x_).items():
            assert _same(got, want), (pattern, kind, path, r.formula)


@pytest.mark.parametrize("pattern", ["reversed odd", "reversed by 3", "both reversed",
                                     "reversed first", "reversed shifted"])
def test_reversed_reads_have_a_formula_constant_in_the_steps(pattern):
    sizes = {}
    for T in (4, 40, 80):
        prog = _program(pattern, T)
        g, h = einderiv.grad(prog, "x"), einderiv.hessian(prog, "x")
        sizes[T] = (len(g.formula), g.source.count("\n"), len(h.formula), h.source.count("\n"))
        assert "concatenate" not in g.formula and "eye(" not in g.formula, g.formula
        assert "concatenate" not in h.formula and "eye(" not in h.formula, h.formula
    # (the numbers in the formula have more digits as T grows: a few characters)
    for k in range(4):
        assert abs(sizes[80][k] - sizes[4][k]) <= 30, (pattern, sizes)


def test_reversed_reads_formula_is_a_reversed_read_placed_by_dilate():
    g = einderiv.grad(_program("reversed odd", 4), "x")
    assert g.formula == ("t0 = x[:7:2]\npad(dilate(log(t0)[::-1], 2, 7), ((1, n - 8),)) + "
                         "pad(dilate(x[1:8:2][::-1] / t0, 2, 7), ((0, n - 7),))"), g.formula


def test_reversed_reads_keep_float32():
    prog = _program("reversed odd", 8)
    places = _places("reversed odd", 8)
    x_ = (np.abs(RNG.standard_normal(19)) + 0.5).astype(np.float32)
    x_[4] = 0.0
    want_g, want_h = _by_hand(x_.astype(np.float64), places)
    for kind, want in (("grad", want_g), ("hessian", want_h)):
        r = getattr(einderiv, kind)(prog, "x")
        for path, got in _paths(r, x=x_).items():
            assert got.dtype == np.float32, (kind, path)
            assert _same(got, want, 1e-5, 1e-6), (kind, path)


# reversed slices (a slice's text, and its entries of a 9-vector)
REVERSED_SLICES = ["[::-1]", "[::-2]", "[::-3]", "[:0:-1]", "[-2::-1]", "[:2:-1]", "[::-1][1:]",
                   "[-3:1:-1]", "[3:-1][::-1]", "[::-1][::2]"]


def _entries(sl):
    return eval(f"np.arange(9){sl}")  # noqa: S307  (the test's own slice text)


@pytest.mark.parametrize("sl", REVERSED_SLICES)
@pytest.mark.parametrize("pole", [0, 3, 7, 8])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_hessian_through_a_reversed_slice_at_a_pole(sl, pole, weighted):
    # the Hessian through x[::-1] was `(-v / t0 ** 2 * eye(n)[:, ::-1])[:, ::-1]`, through
    # x[:0:-1] a product with `eye(n)[:-1][:, ::-1].T`: nan beside the pole
    x_ = np.abs(RNG.standard_normal(9)) + 0.5
    x_[pole] = 0.0
    v = RNG.standard_normal(9)
    expr = f"sum(log(x{sl}) * v{sl})" if weighted else f"sum(log(x{sl}))"
    h = einderiv.hessian(expr, "x", {"x": ("n",), "v": ("n",)})
    _no_dense_selection(h)
    entries = _entries(sl)
    diag = np.zeros(9)
    with np.errstate(divide="ignore"):
        diag[entries] = -(v[entries] if weighted else 1.0) / x_[entries] ** 2
    want = np.diag(diag)
    for path, got in _paths(h, x=x_, v=v).items():
        if path == "ir" and weighted and sl in BOUNDED_REVERSED:
            continue  # (the IR interpreter: the xfail below)
        assert _same(got, want), (path, h.formula)


# reversed slices with a bound, whose weight is read through the same slice
BOUNDED_REVERSED = ["[:0:-1]", "[-2::-1]", "[:2:-1]", "[::-1][1:]", "[-3:1:-1]"]


@pytest.mark.xfail(strict=True, reason=(
    "evaluate/plan.py: the IR `(flip(eye, 1)[i,l] * flip(v)[m] * delta[k,m] * delta[k,l]) * "
    "r[k] * delta[k,j]` (the Hessian of sum(log(x[:0:-1]) * v[:0:-1])) evaluates the "
    "parenthesized product, a reversed window times v, as a dense array, then multiplies it "
    "by r, infinite at the pole: nan in the pole's row and column (the generated code and "
    "the formula read it as a reversed window, contraction.py `_flipped_pair_factors`, and "
    "are exact)"))
@pytest.mark.parametrize("sl", BOUNDED_REVERSED)
def test_ir_hessian_through_a_weighted_bounded_reversed_slice_at_a_pole(sl):
    x_ = np.abs(RNG.standard_normal(9)) + 0.5
    x_[3] = 0.0
    v = RNG.standard_normal(9)
    h = einderiv.hessian(f"sum(log(x{sl}) * v{sl})", "x", {"x": ("n",), "v": ("n",)})
    entries = _entries(sl)
    diag = np.zeros(9)
    with np.errstate(divide="ignore"):
        diag[entries] = -v[entries] / x_[entries] ** 2
    assert _same(_quiet(h.evaluate_ir, x=x_, v=v), np.diag(diag))


@pytest.mark.parametrize("sl", ["[::-1]", "[:0:-1]", "[::-2]"])
def test_hessian_through_a_reversed_slice_against_jax(sl):
    x_ = np.abs(RNG.standard_normal(9)) + 0.5
    v = RNG.standard_normal(9)
    entries = jnp.asarray(_entries(sl))
    want = np.asarray(jax.jit(jax.hessian(
        lambda x: jnp.sum(jnp.log(x[entries]) * jnp.sin(x[entries]) * v[entries])))(x_))
    h = einderiv.hessian(f"sum(log(x{sl}) * sin(x{sl}) * v{sl})", "x",
                         {"x": ("n",), "v": ("n",)})
    for path, got in _paths(h, x=x_, v=v).items():
        assert _same(got, want, 1e-9, 1e-10), (path, h.formula)


@pytest.mark.xfail(strict=True, reason=(
    "vectorize: the Hessian through a reversed strided slice with a bound, `x[5::-2]`, "
    "`x[6:0:-2]`, `x[-2::-2]`, is `<stride>(flip(eye, 1)[i,k] * delta[j+o,k], axis=1)`, a step "
    "of a product with a summed label that `_strided_factors_expanded` does not split (and "
    "the step of a reversed window, with a symbolic n, starts at a place of unknown "
    "parity): written `eye(n)[-7:-1][:, ::-1].T[:, ::2]` times the pole, nan beside it in "
    "the generated code and the formula (the IR is exact)"))
@pytest.mark.parametrize("sl", ["[5::-2]", "[6:0:-2]", "[-2::-2]"])
def test_hessian_through_a_bounded_reversed_strided_slice_at_a_pole(sl):
    x_ = np.abs(RNG.standard_normal(9)) + 0.5
    entries = _entries(sl)
    x_[entries[1]] = 0.0
    h = einderiv.hessian(f"sum(log(x{sl}))", "x", {"x": ("n",)})
    diag = np.zeros(9)
    with np.errstate(divide="ignore"):
        diag[entries] = -1 / x_[entries] ** 2
    for path, got in _paths(h, x=x_).items():
        assert _same(got, np.diag(diag)), (path, h.formula)
