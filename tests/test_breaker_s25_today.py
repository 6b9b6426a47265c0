"""Breaker session 25 (today's changes): strided row batches (vectorize/lanes.py,
contraction.py, program.py), the scatter of picks and slices (pads of exact zeros), and weak
Python numbers under JAX.

Every expected value is computed without einderiv: numpy by hand, or JAX (float64).

Faults (strict xfails):

- Three or more steps reading x[k] (a progression, a strided view, or rows out of range
  order): the gradient is a selection-matrix product `eye(n)[::2].T @ (1 / x[::2])` (or a
  stack of unit vectors), so an infinite cotangent at one picked entry makes every entry
  nan: log(x[0]) + log(x[2]) + log(x[4]) at x = [0, 1, 1, 1, 1] gives [inf, nan, nan, nan,
  nan], where JAX gives [inf, 0, 1, 0, 1]. (Two steps are a concatenate and hold.) The
  gradient by X of strided steps also keeps an n x n `eye(n)` (quadratic in the steps).
- A pick of a slice, `log(x[1:][0])`: `pad(eye(n - 1)[0] / x[1:][0], ...)`: nan off the
  pick (generated code), nan everywhere (IR interpreter).
- The Hessian of `sum(log(x[::2]))` at x[0] = 0: `dilate(... * eye(n)[:, ::2], ...)` gives nan
  in column 0 below the diagonal, where the Hessian is 0 (and is 0 in row 0).
- Jacobians: of `log(stack((x[0], x[2])))` / `log(concatenate((x[:1], x[2:3])))` (row 0 is
  [inf, nan, nan, nan], JAX's jacrev [inf, 0, 0, 0]), of `log(x[0]) * x[1:3]` (a one-hot
  `log(t0) * eye(n)[1:3]`: nan at x[0] and x[3]), and the IR interpreter's Jacobian of
  `log(x[0:2])` (row 0 [inf, nan, nan, nan], the generated code right).
- Fixed: `jax.jit(f)(x_float32, True)` was float64; jax.py `_promoted` casts to JAX's dtype.

All of these are fixed. The last ones, in the next session: rows out of range order now scatter
as one concatenate of runs of rows and zeros, the Jacobian of stacked picks is a stack of
padded rows (vectorize/contraction.py `_unit_rows_on_output`), and the IR interpreter masks a
0/1 pattern of unit vectors (evaluate/plan.py).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import einderiv
from einderiv import fn, var

# The parametrized cases run one in two by default, all with EINDERIV_SLOW=1 (conftest.py:
# the suite's time budget); a test's own sample(k) takes precedence.
pytestmark = pytest.mark.sample(2)

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

H, V = 3, 4


def _paths(result, arrays, shapes):
    """Generated code, IR interpreter, and the printed formula compiled back (last output)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = result(**arrays)
        ir = result.evaluate_ir(**arrays)
        formula = einderiv.compile(result.formula, shapes)(**arrays)
    return gen, ir, formula


def _assert_paths(result, arrays, shapes, want, rtol=1e-10, atol=1e-12):
    gen, ir, formula = _paths(result, arrays, shapes)
    wants = want if isinstance(want, (list, tuple)) else [want]
    gens = gen if isinstance(gen, (list, tuple)) else [gen]
    irs = ir if isinstance(ir, (list, tuple)) else [ir]
    for g, i, w in zip(gens, irs, wants):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=atol,
                                   err_msg="generated")
        np.testing.assert_allclose(np.asarray(i, np.float64), w, rtol=rtol, atol=atol,
                                   err_msg="IR")
    np.testing.assert_allclose(np.asarray(formula, np.float64), wants[-1], rtol=rtol,
                               atol=atol, err_msg="formula")


def _selection_matrix(formula: str) -> bool:
    return "eye(" in formula or "arange(" in formula


def _ff(rows, col=False):
    pick = (lambda k: f"X[:, {k}]") if col else (lambda k: f"X[{k}]")
    return " + ".join(f"sum(tanh(W @ {pick(k)} + u))" for k in rows)


def _jff(rows, col=False):
    def f(W, u, X):
        return sum(jnp.sum(jnp.tanh(W @ (X[:, k] if col else X[k]) + u)) for k in rows)
    return f


# =============================================================================================
# Faults
# =============================================================================================

@pytest.mark.no_roundtrip
def test_fault_strided_picks_spread_nan_from_an_infinite_cotangent():
    # (fixed with the strided scatter: was eye(n)[:5:2].T @ (1 / x[:5:2]), nan at every entry;
    # the generated code now dilates and pads)
    shapes = {"x": (5,)}
    x = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    g = einderiv.grad("log(x[0]) + log(x[2]) + log(x[4])", "x", shapes)
    want = np.asarray(jax.jit(jax.grad(lambda x: jnp.log(x[0]) + jnp.log(x[2]) + jnp.log(x[4])))(
        x))
    np.testing.assert_array_equal(want, [np.inf, 0, 1, 0, 1])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(g(x=x), want)


@pytest.mark.no_roundtrip
def test_fault_rows_out_of_order_spread_nan_from_an_infinite_cotangent():
    shapes = {"X": (5, 2)}
    X = np.ones((5, 2))
    X[0, 0] = 0.0
    src = "sum(log(X[0])) + sum(log(X[1])) + sum(log(X[3]))"
    want = np.zeros((5, 2))
    with np.errstate(divide="ignore"):
        for k in (0, 1, 3):
            want[k] = 1 / X[k]  # row 0: [inf, 1]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(einderiv.grad(src, "X", shapes)(X=X), want)


def test_fault_gradient_by_the_strided_array_has_no_selection_matrix():
    # (fixed: was eye(n)[::2].T @ (...), a dense n x n identity, quadratic in the steps; now
    # pad(dilate(t1 @ W, 2, 11), ...), vectorize/contraction.py)
    steps = 6
    n = 2 * steps
    rows = [2 * k for k in range(steps)]
    shapes = {"W": (H, V), "X": (n, V), "u": (H,)}
    g = einderiv.grad(_ff(rows), "X", shapes)
    rng = np.random.default_rng(0)
    a = {"W": rng.normal(size=(H, V)), "X": rng.normal(size=(n, V)), "u": rng.normal(size=H)}
    want = jax.jit(jax.grad(_jff(rows), argnums=2))(a["W"], a["u"], a["X"])
    np.testing.assert_allclose(g(**a), want, rtol=1e-10, atol=1e-12)  # (the values hold)
    assert not _selection_matrix(g.formula), g.formula


@pytest.mark.no_roundtrip
def test_fault_pick_of_a_slice_spreads_nan():
    # (fixed: was pad(eye(n - 1)[0] / x[1:][0], ((1, 0),)), nan off the pick, and nan
    # everywhere in the IR interpreter; the pick is now taken out after the window)
    shapes = {"x": ("n",)}
    x = np.array([1.0, 0.0, 1.0, 1.0])
    g = einderiv.grad("log(x[1:][0])", "x", shapes)
    want = np.asarray(jax.jit(jax.grad(lambda x: jnp.log(x[1:][0])))(x))
    np.testing.assert_array_equal(want, [0, np.inf, 0, 0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(g(x=x), want)
        np.testing.assert_array_equal(g.evaluate_ir(x=x), want)


@pytest.mark.no_roundtrip
def test_fault_hessian_of_a_strided_slice_spreads_nan():
    # (fixed in the generated code: was dilate(-1 / t0 / t0 * eye(n)[:, ::2], ...), nan at
    # H[1:, 0]; now dilate(dilate(diag(-1 / t0 / t0), 2, n), 2, n, axis=1). The IR
    # interpreter masks the strided identity since the next session)
    x = np.array([0.0, 1.0, 2.0, 0.5])
    h = einderiv.hessian("sum(log(x[::2]))", "x", {"x": ("n",)})
    want = np.diag([-np.inf, 0.0, -0.25, 0.0])  # d2/dx_k2 log x_k = -1 / x_k ** 2, k even
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(h(x=x), want)
        np.testing.assert_array_equal(h.evaluate_ir(x=x), want)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("src, jf", [
    ("log(stack((x[0], x[2])))", lambda x: jnp.log(jnp.stack((x[0], x[2])))),
    ("log(concatenate((x[:1], x[2:3])))",
     lambda x: jnp.log(jnp.concatenate((x[:1], x[2:3])))),
])
def test_fault_jacobian_of_stacked_picks_spreads_nan(src, jf):
    # (fixed: was concatenate((eye(n)[0][None], eye(n)[2][None])) / s[:, None], nan at
    # [0, 1:]; the rows are now placed by padding, stack(pad(t0[0][None], ((0, n - 1),)),
    # ...), contraction._lanes_placed, and the IR interpreter masks the 0/1 pattern.)
    # The reference is by hand: d log(x[p_k]) / dx_j = [j == p_k] / x[p_k]. JAX's jacrev
    # gives its own 0 * inf nan at [1, 0] (the cotangent [0, 1] times 1 / s at s[0] = 0).
    x = np.array([0.0, 1.0, 2.0, 0.5])
    want = np.array([[np.inf, 0, 0, 0], [0, 0, 0.5, 0]])
    with np.errstate(all="ignore"):
        jac = einderiv.jacobian(src, "x", {"x": ("n",)})
        np.testing.assert_array_equal(jac(x=x), want)
        np.testing.assert_array_equal(jac.evaluate_ir(x=x), want)
        np.testing.assert_array_equal(einderiv.compile(jac.formula, {"x": ("n",)})(x=x), want)
        finite = np.array([3.0, 1.0, 2.0, 0.5])  # JAX agrees away from the pole
        np.testing.assert_allclose(jac(x=finite), jax.jit(jax.jacrev(jf))(finite), rtol=1e-12)


@pytest.mark.no_roundtrip
def test_fault_jacobian_of_a_pick_times_a_slice():
    # (fixed: was log(t0) * eye(n)[1:3] + ..., -inf * 0 = nan at x[0] and x[3]; now the number
    # is placed on the shifted diagonal, pad(diag(log(t0) * ones(2)), ...))
    x = np.array([0.0, 1.0, 2.0, 0.5])
    j = einderiv.jacobian("log(x[0]) * x[1:3]", "x", {"x": ("n",)})
    # d(log(x0) * x_k)/dx = [x_k / x0, ..., log(x0) at k, ...]
    want = np.array([[np.inf, -np.inf, 0, 0], [np.inf, 0, -np.inf, 0]])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(j(x=x), want)


@pytest.mark.no_roundtrip
def test_fault_ir_jacobian_of_a_slice_spreads_nan():
    # (fixed: the IR interpreter's row 0 was [inf, nan, nan, nan]; a window on two output
    # labels is now a shifted diagonal there too, plan.ContractionStep.post_pads. The
    # reference is by hand: d log(x[i]) / d x[j] = [i == j] / x[i]; JAX's jacrev gives its own
    # 0 * inf nan at [1, 0] here)
    x = np.array([0.0, 1.0, 2.0, 0.5])
    j = einderiv.jacobian("log(x[0:2])", "x", {"x": ("n",)})
    want = np.array([[np.inf, 0, 0, 0], [0, 1, 0, 0]])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(j(x=x), want)
        np.testing.assert_array_equal(j.evaluate_ir(x=x), want)


def test_fault_python_bool_under_jit_keeps_float32():
    pytest.importorskip("array_api_compat")
    import einderiv.jax as ej
    with jax.enable_x64(True):
        f = ej.function("x * c", {"x": ("n",), "c": ()})
        x = jnp.ones(3, jnp.float32)
        assert f(x, True).dtype == jnp.float32  # holds
        assert jax.jit(lambda x, c: x * c)(x, True).dtype == jnp.float32
        assert jax.jit(f)(x, True).dtype == jnp.float32


# =============================================================================================
# Edges that held
# =============================================================================================

_ROWS = [(list(range(2, 15, 3)), False), ([14, 11, 8], True), ([3, 1, 3, 5], True),
         ([0, 2, 4, 5, 7, 9], False)]


@pytest.mark.parametrize("rows, col", _ROWS)
def test_strided_and_shuffled_rows_match_jax(rows, col):
    n = 15
    rng = np.random.default_rng(len(rows))
    X = rng.normal(size=(n, V))
    a = {"W": rng.normal(size=(H, V)), "X": X.T.copy() if col else X, "u": rng.normal(size=H)}
    shapes = {"W": (H, V), "X": (V, n) if col else (n, V), "u": (H,)}
    g = einderiv.grad(_ff(rows, col), ["W", "u", "X"], shapes)
    want = [np.asarray(w) for w in jax.jit(jax.grad(_jff(rows, col), argnums=(0, 1, 2)))(
        a["W"], a["u"], a["X"])]
    _assert_paths(g, a, shapes, want)
    gw = einderiv.grad(_ff(rows, col), ["W", "u"], shapes)
    assert not _selection_matrix(gw.formula), gw.formula


@pytest.mark.parametrize("rows", [[-1, -4, -7, -10]])
def test_three_d_rows_match_jax(rows):
    T = 11
    shapes = {"X": (T, 3, 4), "w": (4,), "u": (3,)}
    rng = np.random.default_rng(7)
    a = {"X": rng.normal(size=(T, 3, 4)), "w": rng.normal(size=4), "u": rng.normal(size=3)}
    src = " + ".join(f"sum(tanh(X[{k}] @ w + u)) + sum(X[{k}, :, 1] * u)" for k in rows)

    def jf(X, w, u):
        return sum(jnp.sum(jnp.tanh(X[k] @ w + u)) + jnp.sum(X[k, :, 1] * u) for k in rows)
    g = einderiv.grad(src, ["X", "w", "u"], shapes)
    _assert_paths(g, a, shapes, [np.asarray(v) for v in jax.jit(
        jax.grad(jf, argnums=(0, 1, 2)))(a["X"], a["w"], a["u"])])


@pytest.mark.parametrize("rx, rz", [([0, 2, 4, 6], [0, 3, 6, 9]), ([0, 3, 6, 9], [-1, -2, -3, -4])])
def test_two_arrays_with_different_strides_in_one_step(rx, rz):
    shapes = {"X": (12, 4), "Z": (12, 3), "W": (3, 4)}
    rng = np.random.default_rng(8)
    a = {k: rng.normal(size=s) for k, s in shapes.items()}
    src = " + ".join(f"sum(tanh(W @ X[{i}] + Z[{j}]) * Z[{j}])" for i, j in zip(rx, rz))

    def jf(X, Z, W):
        return sum(jnp.sum(jnp.tanh(W @ X[i] + Z[j]) * Z[j]) for i, j in zip(rx, rz))
    g = einderiv.grad(src, ["X", "Z", "W"], shapes)
    _assert_paths(g, a, shapes, [np.asarray(v) for v in jax.jit(
        jax.grad(jf, argnums=(0, 1, 2)))(a["X"], a["Z"], a["W"])])


@pytest.mark.parametrize("pairs", [[(0, 9), (2, 6), (4, 3)], [(-1, -1), (-3, -3), (-5, -5)]])
def test_steps_moving_along_two_axes(pairs):
    shapes = {"X": (10, 10, 3), "w": (3,)}
    rng = np.random.default_rng(9)
    a = {"X": rng.normal(size=(10, 10, 3)), "w": rng.normal(size=3)}
    src = " + ".join(f"tanh(X[{i}, {j}] @ w)" for i, j in pairs)

    def jf(X, w):
        return sum(jnp.tanh(X[i, j] @ w) for i, j in pairs)
    g = einderiv.grad(src, ["X", "w"], shapes)
    _assert_paths(g, a, shapes, [np.asarray(v) for v in jax.jit(jax.grad(jf, argnums=(0, 1)))(
        a["X"], a["w"])])


@pytest.mark.parametrize("rx, ry", [([12, 9, 6], [1, 4, 7])])
def test_rnn_reading_strided_rows_matches_jax(rx, ry):
    W, U, b = var("W", ("H", "H")), var("U", ("H", "V")), var("b", ("H",))
    Wy, by = var("Wy", ("V", "H")), var("by", ("V",))
    X, Y = var("X", ("T", "V")), var("Y", ("T", "V"))
    h = loss = None
    for kx, ky in zip(rx, ry):
        z = U @ X[kx] + b
        h = fn.tanh(z if h is None else W @ h + z)
        step = -fn.sum(Y[ky] * fn.log(fn.softmax(Wy @ h + by)))
        loss = step if loss is None else loss + step

    def jf(W, U, b, Wy, by, X, Y):
        h, total = None, 0
        for kx, ky in zip(rx, ry):
            z = U @ X[kx] + b
            h = jnp.tanh(z if h is None else W @ h + z)
            total = total - jnp.sum(Y[ky] * jax.nn.log_softmax(Wy @ h + by))
        return total
    names = ["W", "U", "b", "Wy", "by", "X", "Y"]
    sym = {"W": ("H", "H"), "U": ("H", "V"), "b": ("H",), "Wy": ("V", "H"), "by": ("V",),
           "X": ("T", "V"), "Y": ("T", "V")}
    size = {"H": 3, "V": 4, "T": 13}
    rng = np.random.default_rng(10)
    a = {k: rng.normal(size=tuple(size[d] for d in s)) / 2 for k, s in sym.items()}
    g = einderiv.grad(loss, names)
    want = jax.jit(jax.grad(jf, argnums=tuple(range(7))))(*[a[k] for k in names])
    _assert_paths(g, a, sym, [np.asarray(w) for w in want])


@pytest.mark.parametrize("rows", [[7, 4, 1]])
def test_hessian_and_float32_of_strided_steps(rows):
    n = 10
    shapes = {"W": (3, 4), "X": (n, 4), "u": (3,)}
    rng = np.random.default_rng(11)
    a = {k: rng.normal(size=s) for k, s in shapes.items()}
    src = " + ".join(f"sum(tanh(W @ X[{k}] + u))" for k in rows)

    def jf(W, X, u):
        return sum(jnp.sum(jnp.tanh(W @ X[k] + u)) for k in rows)
    h = einderiv.hessian(src, "u", shapes)
    z = [a["W"] @ a["X"][k] + a["u"] for k in rows]  # d2/du2 sum(tanh(z)): -2 tanh sech2
    _assert_paths(h, a, shapes, np.diag(sum(-2 * np.tanh(v) / np.cosh(v) ** 2 for v in z)))
    g = einderiv.grad(src, ["W", "X", "u"], shapes)
    a32 = {k: v.astype(np.float32) for k, v in a.items()}
    want = jax.jit(jax.grad(jf, argnums=(0, 1, 2)))(a["W"], a["X"], a["u"])
    for got, w in zip(g(**a32), want):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-5)


def test_source_does_not_grow_with_strided_steps_of_several_kinds():
    pats = [lambda t: f"sum(tanh(W @ X[{2 * t}] + Z[{3 * t}]))",
            lambda t: f"sum(tanh(W @ X[{-1 - 2 * t}] + u))",
            lambda t: f"sum(tanh(P[{3 * t}] @ v + u))"]
    for p in pats:
        lens = []
        for steps in (10, 40):
            n = 3 * steps + 6
            full = {"W": (3, 4), "X": (n, 4), "Z": (n, 3), "u": (3,), "P": (n, 3, 4), "v": (4,)}
            src = " + ".join(p(t) for t in range(steps))
            names = sorted(set(re.findall(r"\b([A-Zuv])\b", src)) - {"X", "P"})
            g = einderiv.grad(src, names, {k: full[k] for k in full if k in src})
            lens.append(len(g.source))
        assert lens[1] < lens[0] + 40, lens


# -- the scatter of picks and slices at infinite cotangents ---------------------------------

_X = np.array([0.0, 1.0, 2.0, 0.5])
_A = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 2.0], [1.0, 1.0, 4.0]])
_T = np.arange(24.0).reshape(2, 3, 4) / 7 + 0.5
_T[0, 0, 1] = 0.0
_T[1, 2, 1] = 0.0
_M = np.array([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 0.0, 4.0], [2.0, 1.0, 0.5]])
_ARR = {"x": _X, "A": _A, "T": _T, "X": _M}
_SYM = {"x": ("n",), "A": ("n", "n"), "T": ("a", "b", "c"), "X": ("m", "k")}
_FIX = {"x": (4,), "A": (3, 3), "T": (2, 3, 4), "X": (4, 3)}

_INF_CASES = [
    ("log(x[0])", lambda x: jnp.log(x[0]), "x"),
    ("1 / x[0]", lambda x: 1 / x[0], "x"),
    ("sqrt(x[0])", lambda x: jnp.sqrt(x[0]), "x"),
    ("sum(log(x[::2]))", lambda x: jnp.sum(jnp.log(x[::2])), "x"),
    ("sum(sqrt(x[None, 0]))", lambda x: jnp.sum(jnp.sqrt(x[None, 0])), "x"),
    ("sum(log(x[0, None]))", lambda x: jnp.sum(jnp.log(x[0, None])), "x"),
    ("log(x[:3][::2][0])", lambda x: jnp.log(x[:3][::2][0]), "x"),
    ("x[1] / x[0]", lambda x: x[1] / x[0], "x"),
    ("sum(softmax(log(x[0:3])) * x[1:4])",
     lambda x: jnp.sum(jax.nn.softmax(jnp.log(x[0:3])) * x[1:4]), "x"),
    ("sum(log(A[:, 1]))", lambda A: jnp.sum(jnp.log(A[:, 1])), "A"),
    ("sum(log(A[0]) @ A)", lambda A: jnp.sum(jnp.log(A[0]) @ A), "A"),
    ("sum(A @ log(A[:, 0]))", lambda A: jnp.sum(A @ jnp.log(A[:, 0])), "A"),
    ("sum(log(T[0, :, 1]))", lambda T: jnp.sum(jnp.log(T[0, :, 1])), "T"),
    ("sum(log(X[1:, :2]))", lambda X: jnp.sum(jnp.log(X[1:, :2])), "X"),
    ("sum(log(stack((x[0], x[2]))))", lambda x: jnp.sum(jnp.log(jnp.stack((x[0], x[2])))), "x"),
    ("sum(log(concatenate((x[0:1], x[2:3]))))",
     lambda x: jnp.sum(jnp.log(jnp.concatenate((x[0:1], x[2:3])))), "x"),
    ("mean(log(x[:2]))", lambda x: jnp.mean(jnp.log(x[:2])), "x"),
]


@pytest.mark.parametrize("sym", [True])
@pytest.mark.parametrize("src, jf, v", _INF_CASES, ids=[c[0] for c in _INF_CASES])
def test_scatter_at_infinite_cotangents_matches_jax(src, jf, v, sym):
    shapes = {v: (_SYM if sym else _FIX)[v]}
    g = einderiv.grad(src, v, shapes)
    with np.errstate(all="ignore"):
        want = np.asarray(jax.jit(jax.grad(jf))(_ARR[v]))
    gen, ir, formula = _paths(g, {v: _ARR[v]}, shapes)
    for path, got in (("generated", gen), ("IR", ir), ("formula", formula)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-10, atol=0,
                                   equal_nan=True, err_msg=path)
        assert np.array_equal(np.isnan(got), np.isnan(want)), path


_ORD_CASES = [
    ("log(x[0]) * x[-1] + x[1:3] @ x[2:4]", lambda x: jnp.log(x[0]) * x[-1] + x[1:3] @ x[2:4],
     "x"),
    ("x[1:][0] ** 3 * x[::2][1]", lambda x: x[1:][0] ** 3 * x[::2][1], "x"),
    ("A[1, 2] * A[2, 1] ** 2 + sum(A[1:, :2] ** 3)",
     lambda A: A[1, 2] * A[2, 1] ** 2 + jnp.sum(A[1:, :2] ** 3), "A"),
]
_ORD = {"x": np.array([0.7, 1.3, 0.9, 1.8, 0.6]),
        "A": np.random.default_rng(12).uniform(0.5, 2, size=(4, 4)),
        "T": np.random.default_rng(13).uniform(0.5, 2, size=(2, 3, 4))}


@pytest.mark.parametrize("sym", [True])
@pytest.mark.parametrize("src, jf, v", _ORD_CASES, ids=[c[0] for c in _ORD_CASES])
def test_picks_at_ordinary_inputs_match_jax(src, jf, v, sym):
    shapes = {v: ({"x": ("n",), "A": ("n", "n"), "T": ("a", "b", "c")} if sym else
                  {"x": (5,), "A": (4, 4), "T": (2, 3, 4)})[v]}
    a = {v: _ORD[v]}
    t = np.random.default_rng(14).normal(size=_ORD[v].shape)
    # (JAX's gradient, Hessian-vector and Jacobian-vector products in one jit)
    gradient, hv, jv = (np.asarray(r) for r in jax.jit(lambda x, t: (
        jax.grad(jf)(x), jax.jvp(jax.grad(jf), (x,), (t,))[1], jax.jvp(jf, (x,), (t,))[1]))(
            _ORD[v], t))
    _assert_paths(einderiv.grad(src, v, shapes), a, shapes, gradient)
    np.testing.assert_allclose(einderiv.hvp(src, v, shapes)(**a, tangent=t),
                               hv, rtol=1e-9, atol=1e-12)
    _, pushed = einderiv.jvp(src, v, shapes)(**a, tangent=t)
    np.testing.assert_allclose(pushed, jv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(einderiv.vjp(src, v, shapes)(**a, cotangent=1.7),
                               1.7 * gradient, rtol=1e-9, atol=1e-12)


def test_jacobians_of_picks_at_an_infinite_cotangent_are_zero_off_the_pick():
    x = _X
    with np.errstate(all="ignore"):
        j = einderiv.jacobian("log(A[0])", "A", {"A": ("n", "n")})(A=_A)
        want = np.zeros((3, 3, 3))
        for k in range(3):
            want[k, 0, k] = 1 / _A[0, k]
        np.testing.assert_array_equal(j, want)
        j = einderiv.jacobian("log(x[::2])", "x", {"x": ("n",)})(x=x)
        np.testing.assert_array_equal(j, [[np.inf, 0, 0, 0], [0, 0, 0.5, 0]])
        h = einderiv.hessian("log(x[0]) + log(x[2])", "x", {"x": (4,)})(x=x)
        np.testing.assert_array_equal(h, np.diag([-np.inf, 0, -0.25, 0]))


def test_printouts_of_picks_parse_back_and_read_as_pads():
    for src, shapes in [("log(x[0])", {"x": ("n",)}), ("sum(log(A[:, 2]))", {"A": ("n", "n")}),
                        ("log(A[1, 2])", {"A": (3, 4)}),
                        ("sum(log(T[0, :, 1]))", {"T": ("a", "b", "c")})]:
        g = einderiv.grad(src, list(shapes), shapes)
        assert "eye(" not in g.formula, g.formula
        latex = g.latex if isinstance(g.latex, str) else g.latex()
        assert "\\frac" in latex
    g = einderiv.grad("log(A[1, 2])", "A", {"A": (3, 4)})
    A = np.random.default_rng(15).uniform(0.5, 2, size=(3, 4))
    want = np.zeros((3, 4))
    want[1, 2] = 1 / A[1, 2]
    np.testing.assert_allclose(einderiv.compile(g.formula, {"A": (3, 4)})(A=A), want)


# -- Python numbers under JAX ------------------------------------------------------------------

@pytest.mark.parametrize("x64", [True])
def test_weak_numbers_under_jit_vmap_grad_jvp(x64):
    pytest.importorskip("array_api_compat")
    import einderiv.jax as ej
    with jax.enable_x64(x64):
        f = ej.function("sum(exp(x / c)) + c * c", {"x": ("n",), "c": ()})

        def own(x, c):
            return jnp.sum(jnp.exp(x / c)) + c * c
        x = jnp.arange(1, 4, dtype=jnp.float32)
        strong = jnp.array(1.5, jnp.float64)
        assert f(x, strong).dtype == own(x, strong).dtype == jnp.float64
        for c in [1.5]:
            for tr in (lambda g: g, jax.jit):
                got, want = tr(f)(x, c), tr(own)(x, c)
                assert got.dtype == want.dtype, (c, got.dtype, want.dtype)
                np.testing.assert_allclose(got, want, rtol=1e-5)
            got = jax.vmap(f, in_axes=(0, None))(jnp.stack([x, 2 * x]), c)
            want = jax.vmap(own, in_axes=(0, None))(jnp.stack([x, 2 * x]), c)
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-5)
            p, t = jax.jvp(lambda x: f(x, c), (x,), (jnp.ones_like(x),))
            pw, tw = jax.jvp(lambda x: own(x, c), (x,), (jnp.ones_like(x),))
            assert t.dtype == tw.dtype
            np.testing.assert_allclose(t, tw, rtol=1e-5)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("expr, own", [
    ("log(x[0]) * x", lambda x: jnp.log(x[0]) * x),
    ("sum(log(x)) * x", lambda x: jnp.sum(jnp.log(x)) * x),
    ("log(x[0]) * x[1:3]", lambda x: jnp.log(x[0]) * x[1:3]),
    ("(1 / x[0]) * x[:2]", lambda x: (1 / x[0]) * x[:2])])
def test_a_number_times_a_diagonal_is_exactly_zero_off_it(expr, own):
    # the lead's check of the same kind: a number (infinite here) times an identity or a
    # shifted identity is placed on the diagonal, never multiplied by its zeros
    x = np.array([0.0, 1.0, 2.0, 3.0])
    want = np.asarray(jax.jacfwd(own)(jnp.asarray(x)))  # (eager: jit changes JAX's nan here)
    with np.errstate(all="ignore"):
        got = einderiv.jacobian(expr, "x", {"x": ("n",)})(x=x)
    off = ~np.isnan(want)  # (JAX's own 0 * inf where its rule multiplies)
    np.testing.assert_array_equal(got[off], want[off])
