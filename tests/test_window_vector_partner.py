"""A window (a slice, or its adjoint) on an axis that a broadcast vector also carries:
`sum(sin(X[:, 1:]) * w)`, whose gradient is `w[k] * cos(X[:, 1:])[i, k] * delta[k+1, j]`.
The window is placed by a pad (or, on the other side, read as a slice of each partner), the
vector multiplied elementwise; never a product with a dense selection matrix
`w[:, None] * eye(t + 1)[1:]`, which was O(n t^2) time, O(t^2) memory, and 0 * inf = nan along
the row of an infinite entry (vectorize/contraction.py: `_window_on_shared_row`,
`_window_each`, `_window_diagonal_of_all`). Every result is checked on the three paths
(generated code, IR interpreter, printed formula compiled back) against jitted float64 JAX,
or, at a pole, against the value worked out by hand."""
import re
import tracemalloc

import numpy as np
import pytest

import einderiv
from three_paths import paths as _paths

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

RNG = np.random.default_rng(31)




def _same(got, want, rtol=1e-9, atol=1e-11):
    """Equal, nan where nan, inf where inf (so a structural zero must be an exact 0)."""
    got, want = np.asarray(got), np.asarray(want)
    return got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want)) and \
        np.array_equal(np.isinf(got), np.isinf(want)) and \
        np.allclose(np.nan_to_num(got, posinf=9e99, neginf=-9e99),
                    np.nan_to_num(want, posinf=9e99, neginf=-9e99), rtol=rtol, atol=atol)


def _jax(expr, names):
    """The expression (numpy syntax) as a function of JAX arrays."""
    body = re.sub(r"\b(sum|sin|cos|log|exp|sqrt)\(", r"jnp.\1(", expr)
    return eval(f"lambda {', '.join(names)}: {body}", {"jnp": jnp})  # noqa: S307


def _jax_derivative(kind, f, wrt, arrays):
    d = {"grad": jax.grad, "hessian": jax.hessian}[kind]
    return np.asarray(jax.jit(lambda **a: d(lambda x: f(**{**a, wrt: x}))(a[wrt]))(**arrays))


def _no_selection_matrix(result):
    assert "eye(" not in result.formula and "eye(" not in result.source, result.formula


# The window's slice, the symbolic length of the axis it slices (for a window of t entries),
# and the concrete length at t = 3.
SLICES = [("1:", "t + 1", 4), (":-1", "t + 1", 4), ("2:-3", "t + 5", 8), ("::2", "2 * t", 6),
          ("1::2", "2 * t + 1", 7)]

# Where the window and its vector lie: the sliced operand's axes ("L" the sliced one), how it
# is indexed, and how the vector w [t] is broadcast onto it.
PLACES = [
    ("last", ("n", "L"), "X[:, {s}]", "w"),
    ("first", ("L", "n"), "X[{s}]", "w[:, None]"),
    ("3d_last", ("a", "n", "L"), "X[:, :, {s}]", "w"),
    ("3d_middle", ("a", "L", "n"), "X[:, {s}]", "w[:, None]"),
    ("3d_first", ("L", "a", "n"), "X[{s}]", "w[:, None, None]"),
]
SIZES = {"n": 3, "a": 2}


def _case(place, s):
    """(expression template filler, shapes, concrete X shape) of one place and slice."""
    _, axes, index, vector = place
    sl, length, concrete = s
    shapes = {"X": tuple(length if d == "L" else d for d in axes), "w": ("t",)}
    shape = tuple(concrete if d == "L" else SIZES[d] for d in axes)
    return index.format(s=sl), vector, shapes, shape


@pytest.mark.sample(2)
@pytest.mark.parametrize("s", SLICES, ids=[s[0] for s in SLICES])
@pytest.mark.parametrize("place", PLACES, ids=[p[0] for p in PLACES])
@pytest.mark.parametrize("form", ["sum(sin({x}) * {w})", "sum(sin({x} * {w}))"],
                         ids=["outside", "inside"])
def test_gradient_of_a_window_times_a_vector(form, place, s):
    x, w, shapes, shape = _case(place, s)
    expr = form.format(x=x, w=w)
    arrays = dict(X=RNG.standard_normal(shape), w=RNG.standard_normal(3))
    g = einderiv.grad(expr, "X", shapes)
    _no_selection_matrix(g)
    want = _jax_derivative("grad", _jax(expr, ("X", "w")), "X", arrays)
    for path, got in _paths(g, **arrays).items():
        assert _same(got, want), (path, expr, g.formula)


@pytest.mark.parametrize("s", SLICES[:3], ids=[s[0] for s in SLICES[:3]])
def test_per_lag_weighted_differences(s):
    # two windows of one axis (X[:, 1:] - X[:, :-1] and its like), each met by the weights
    sl, length, concrete = s
    lo, hi = {"1:": ("1:", ":-1"), ":-1": (":-1", "1:"), "2:-3": ("2:-3", "1:-4")}[sl]
    expr = f"sum(w * (X[:, {lo}] - X[:, {hi}]) ** 2)"
    shapes = {"X": ("n", length), "w": ("t",)}
    arrays = dict(X=RNG.standard_normal((3, concrete)), w=RNG.random(3))
    g = einderiv.grad(expr, "X", shapes)
    _no_selection_matrix(g)
    want = _jax_derivative("grad", _jax(expr, ("X", "w")), "X", arrays)
    for path, got in _paths(g, **arrays).items():
        assert _same(got, want), (path, g.formula)


@pytest.mark.parametrize("s", [SLICES[0], SLICES[2], SLICES[3]],
                         ids=[SLICES[0][0], SLICES[2][0], SLICES[3][0]])
@pytest.mark.parametrize("place", [PLACES[0], PLACES[1], PLACES[3]],
                         ids=[PLACES[0][0], PLACES[1][0], PLACES[3][0]])
def test_hessian_and_hvp_of_a_window_times_a_vector(place, s):
    x, w, shapes, shape = _case(place, s)
    expr = f"sum(sin({x}) * {w})"
    arrays = dict(X=RNG.standard_normal(shape), w=RNG.standard_normal(3))
    want = _jax_derivative("hessian", _jax(expr, ("X", "w")), "X", arrays)
    h = einderiv.hessian(expr, "X", shapes)
    for path, got in _paths(h, **arrays).items():
        assert _same(got, want, 1e-9, 1e-10), (path, h.formula)
    tangent = RNG.standard_normal(shape)
    hv = einderiv.hvp(expr, "X", shapes)
    _no_selection_matrix(hv)
    want_hv = np.tensordot(want, tangent, axes=len(shape))
    for path, got in _paths(hv, **arrays, tangent=tangent).items():
        assert _same(got, want_hv, 1e-9, 1e-10), (path, hv.formula)


POLES = [("1:", "t + 1", 4, slice(1, None), 2), (":-1", "t + 1", 4, slice(None, -1), 1),
         ("2:-3", "t + 5", 8, slice(2, -3), 3), ("1::2", "2 * t + 1", 7, slice(1, None, 2), 3),
         ("::2", "2 * t", 6, slice(None, None, 2), 2)]


@pytest.mark.parametrize("pole", POLES, ids=[p[0] for p in POLES])
@pytest.mark.parametrize("place", PLACES, ids=[p[0] for p in PLACES])
def test_a_pole_in_the_window_keeps_structural_zeros(place, pole):
    # log(X[:, 1:]) * w at one X entry 0 inside the window: the gradient there is inf, every
    # other entry finite or an exact 0 (a product with the 0/1 window was nan across the row)
    sl, length, concrete, index, at = pole
    x, w, shapes, shape = _case(place, (sl, length, concrete))
    expr = f"sum(log({x}) * {w})"
    axis = place[1].index("L")
    X_ = np.abs(RNG.standard_normal(shape)) + 0.5
    hit = [0] * len(shape)
    hit[axis] = at
    X_[tuple(hit)] = 0.0
    v = np.array([1.0, 2.0, 3.0])
    window = (slice(None),) * axis + (index,)
    vb = v.reshape((3,) + (1,) * (len(shape) - axis - 1))
    want = np.zeros(shape)
    with np.errstate(divide="ignore"):
        want[window] = vb / X_[window]
    g = einderiv.grad(expr, "X", shapes)
    _no_selection_matrix(g)
    for path, got in _paths(g, X=X_, w=v).items():
        assert _same(got, want), (path, g.formula, got)
    _check_pole_hessian(expr, shapes, X_, v, window, vb, hit)
    # the hvp along a tangent that is 0 at the pole's entry: finite, exact
    tangent = RNG.standard_normal(shape)
    tangent[tuple(hit)] = 1.0
    want_hv = np.zeros(shape)
    with np.errstate(divide="ignore"):
        want_hv[window] = -vb * tangent[window] / X_[window] ** 2
    hv = einderiv.hvp(expr, "X", shapes)
    for path, got in _paths(hv, X=X_, w=v, tangent=tangent).items():
        assert _same(got, want_hv), (path, hv.formula)


def _check_pole_hessian(expr, shapes, X_, v, window, vb, hit):
    """The Hessian: -w / x^2 on the diagonal of the window's entries, -inf at the pole, exact
    zeros elsewhere, on the three paths."""
    shape = X_.shape
    diag = np.zeros(shape)
    with np.errstate(divide="ignore"):
        diag[window] = -vb / X_[window] ** 2
    want = np.diag(diag.ravel()).reshape(shape + shape)
    want[tuple(hit) + tuple(hit)] = -np.inf
    h = einderiv.hessian(expr, "X", shapes)
    for path, got in _paths(h, X=X_, w=v).items():
        assert _same(got, want), (path, h.formula)


@pytest.mark.parametrize("pole", POLES[3:], ids=[p[0] for p in POLES[3:]])
def test_a_pole_in_a_strided_window_keeps_the_hessian_s_structural_zeros(pole):
    sl, length, concrete, index, at = pole
    X_ = np.abs(RNG.standard_normal((3, concrete))) + 0.5
    X_[0, at] = 0.0
    v = np.array([1.0, 2.0, 3.0])
    _check_pole_hessian(f"sum(log(X[:, {sl}]) * w)", {"X": ("n", length), "w": ("t",)}, X_, v,
                        (slice(None), index), v, [0, at])


def test_float32_stays_float32():
    shapes = {"X": ("n", "t + 1"), "w": ("t",)}
    expr = "sum(w * (X[:, 1:] - X[:, :-1]) ** 2) + sum(sin(X[:, 1:]) * w)"
    A64 = dict(X=RNG.standard_normal((4, 6)), w=RNG.standard_normal(5))
    A32 = {k: v.astype(np.float32) for k, v in A64.items()}
    g = einderiv.grad(expr, "X", shapes)
    _no_selection_matrix(g)
    want = _jax_derivative("grad", _jax(expr, ("X", "w")), "X", A64)
    for path, got in _paths(g, **A32).items():
        assert got.dtype == np.float32, path
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), path
    hv = einderiv.hvp(expr, "X", shapes)
    tangent = RNG.standard_normal((4, 6)).astype(np.float32)
    got = hv(**A32, tangent=tangent)
    assert got.dtype == np.float32
    assert np.allclose(got, hv(**A64, tangent=tangent.astype(np.float64)), rtol=1e-4, atol=1e-5)


def test_the_window_read_on_its_columns_is_a_slice_of_each_partner():
    # (X * w)[:, 1:]: the window's summed column carries X and w, of different axes: each is
    # sliced, `w[1:] * X[:, 1:]`, not `X @ (w * eye(t + 1)[1:]).T`
    shapes = {"X": ("n", "t + 1"), "w": ("t + 1",), "v": ("t",)}
    arrays = dict(X=RNG.standard_normal((3, 5)), w=RNG.standard_normal(5),
                  v=RNG.standard_normal(4))
    for expr in ("(X * w)[:, 1:]", "(X * w)[:, 1:] @ v", "sum(sin((X * w)[:, 1:]) * v)"):
        f = einderiv.compile(expr, shapes)
        _no_selection_matrix(f)
        want = np.asarray(jax.jit(_jax(expr, ("X", "w", "v")))(**arrays))
        assert _same(f(**arrays), want) and _same(f.evaluate_ir(**arrays), want)
        assert _same(einderiv.compile(f.formula, shapes)(**arrays), want)
    expr = "sum(sin((X * w)[:, 1:]) * v)"
    for wrt in ("X", "w"):
        g = einderiv.grad(expr, wrt, shapes)
        _no_selection_matrix(g)
        want = _jax_derivative("grad", _jax(expr, ("X", "w", "v")), wrt, arrays)
        for path, got in _paths(g, **arrays).items():
            assert _same(got, want), (path, wrt, g.formula)


def test_vjp_and_everyday_models():
    shapes = {"X": ("n", "t + 1"), "w": ("t",)}
    X_, w = RNG.standard_normal((3, 5)), RNG.standard_normal(4)
    cot = RNG.standard_normal((3, 4))
    r = einderiv.vjp("w * X[:, 1:]", "X", shapes)
    _no_selection_matrix(r)
    want = np.zeros((3, 5))
    want[:, 1:] = w * cot
    for path, got in _paths(r, X=X_, w=w, cotangent=cot).items():
        assert _same(got, want), path
    arrays = dict(X=X_, w=w)
    for expr, f in [
            ("sum(sqrt(sum(X[:, 1:] ** 2, axis=0)) * w)",
             lambda X, w: jnp.sum(jnp.linalg.norm(X[:, 1:], axis=0) * w)),
            ("sum(norm(X[:, 1:], axis=0) * w)",
             lambda X, w: jnp.sum(jnp.linalg.norm(X[:, 1:], axis=0) * w)),
            ("sum(max(X[:, 1:], axis=0) * w)",
             lambda X, w: jnp.sum(jnp.max(X[:, 1:], axis=0) * w))]:
        g = einderiv.grad(expr, "X", shapes)
        _no_selection_matrix(g)
        want = _jax_derivative("grad", f, "X", arrays)
        for path, got in _paths(g, **arrays).items():
            assert _same(got, want), (path, expr, g.formula)
    shapes = {"X": ("n", "d"), "W": ("2 * k", "d"), "v": ("k",)}
    arrays = dict(X=RNG.standard_normal((4, 3)), W=RNG.standard_normal((6, 3)),
                  v=RNG.standard_normal(3))
    expr = "h = X @ W.T; sum((h[:, :k] * sigmoid(h[:, k:])) @ v)"

    def glu(X, W, v):
        h = X @ W.T
        return jnp.sum((h[:, :3] * jax.nn.sigmoid(h[:, 3:])) @ v)
    for wrt in ("W", "X"):
        g = einderiv.grad(expr, wrt, shapes)
        _no_selection_matrix(g)
        want = _jax_derivative("grad", glu, wrt, arrays)
        for path, got in _paths(g, **arrays).items():
            assert _same(got, want), (path, wrt, g.formula)


@pytest.mark.parametrize("expr", [
    "sum(w * (X[:, 1:] - X[:, :-1]) ** 2)", "sum(sin(X[:, 2:-3]) * w)",
    "sum(sin(X[1:]) * w[:, None])", "sum(log(X[:, 1:]) * w)"])
def test_gradient_memory_is_linear_in_the_output(expr):
    t = 2000
    length = t + 5 if "2:-3" in expr else t + 1
    shapes = {"X": ("t + 5" if "2:-3" in expr else "t + 1", "n") if "X[1:]" in expr
              else ("n", "t + 5" if "2:-3" in expr else "t + 1"), "w": ("t",)}
    shape = (length, 20) if "X[1:]" in expr else (20, length)
    g = einderiv.grad(expr, "X", shapes)
    X_, w = np.abs(RNG.standard_normal(shape)) + 0.5, RNG.standard_normal(t)
    g(X=X_, w=w)
    for run in (g, g.evaluate_ir):
        tracemalloc.start()
        try:
            out = run(X=X_, w=w)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * out.nbytes, (run, peak, out.nbytes)
