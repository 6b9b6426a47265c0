"""Breaker s26-late on bc23bce (`_paired_selection`, `_on_diagonal`, `_diag_embed`), bc3042a
(`_always` for sizes linear in one name), 360aa1c (kink identities in rules/rewrites.rules)
and 8e4c322 (`.mT` generated as `x.swapaxes(-1, -2)`). References are JAX (float64) at
ordinary points and the mathematics at kinks (the function written there is smooth or linear,
so its derivative is known exactly); never einderiv itself.

Faults (strict xfails), worst first:

1. Silent wrong gradient of a linear function: `sum(relu(x - y) - relu(y - x))` is
   `sum(x - y)`, gradient 1 everywhere, but einderiv gives 0 at x == y (and
   `relu(x - 1) - relu(1 - x)` at x = 1). The rewrite `relu(u) - relu(-u) = u` matches `-u`
   only as a literal negation node: `y - x` (`1 - x`) is its own subtraction, never seen as
   `-(x - y)`, so the kinks' convention (relu' = 0 at 0, twice) is applied. Written
   `relu(-(x - y))` it is rewritten and right.
2. Same mechanism, Hessians of smooth squares: `sum(relu(x - y) ** 2 + relu(y - x) ** 2)`,
   `sum(maximum(x - y, y - x) ** 2)`, `sum(minimum(x - y, y - x) ** 2)`,
   `sum(square(relu(x - y)) + square(relu(y - x)))` are all `sum((x - y) ** 2)`, Hessian 2 I,
   but einderiv gives 0 at x == y (docs/language.md promises the Hessian 2 at 0 for these).
3. The identity split over two reductions is not seen: `sum(relu(x)) - sum(relu(-x))` is
   `sum(x)` (gradient 1, einderiv 0 at x = 0) and `sum(relu(x) ** 2) + sum(relu(-x) ** 2)`
   is `sum(x ** 2)` (Hessian 2 I, einderiv 0 at x = 0): the pattern is matched inside one
   elementwise sum only.
4. Perf, O(T n^2): the Hessian of T unrolled picks of two different places per step,
   `sum_t exp(x[2t+1]) * x[2t]` (einderiv.var), multiplies T x n selection matrices,
   `eye(n)[1:2T:2].T @ (t1[:, None] * eye(n)[:2T-1:2])`: at n = 800, T = 50 6.5 ms, T = 399
   23.8 ms, where `sum_t log(x[2t+1])` (one place per step: paired) is 68 us at every T.
   (Its one-window sibling, `sum(exp(x[1:]) * x[:-1])`, was a dense (n x n) @ (n x n)
   product, O(n^3), at 1562d99: single-threaded n = 800 29 ms, n = 1600 179 ms; fixed in
   27c8ab9 (`_window_row`), placed by pad, 10 -> 26 ms. Its values and form are checked
   below.) The same-place products of this case are now diag(r) placed by the two
   selections (contraction._apart_selections); the cross term is still the product.
   (Fixed: ir/build.py `_window_row` takes lanes.py's every-k-th rows and sums of them as
   terms of the sum it distributes, and each term is placed; tests/test_unrolled_cross_terms.py.)

Held (passing tests below): Hessians/jvp/hvp/third derivatives of sums of strided picks,
slices and repeated or negative unit picks; matrices picked on rows/columns and under .T;
cross terms of two different strided windows; concatenations of strided slices of one name;
the kink rewrites where they must not fire (`maximum(x, -y)`, `relu(x) + relu(-y)`,
broadcast `sqrt(x ** 2 + Y ** 2)`, three squares, `x ** 2 ** 0.5`) and where they must
(squares at 0, values at 1e200, norm over an axis); `.mT` through torch, JAX and dask.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import einderiv
from einderiv import fn

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

# The parametrized cases run one in two by default, all with EINDERIV_SLOW=1 (conftest.py:
# the suite's time budget); a test's own sample(k) takes precedence.
pytestmark = pytest.mark.sample(2)

VEC = {"x": ("n",), "y": ("n",)}


def _paths(result, **arrays):
    """The generated code, the IR interpreter, and the printed formula compiled back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [np.asarray(result(**arrays)), np.asarray(result.evaluate_ir(**arrays))]
        back = einderiv.compile(result.formula, result.inputs)
        out.append(np.asarray(back(**{k: v for k, v in arrays.items() if k in back.inputs})))
    return out


def _close(result, ref, tol=1e-12, **arrays):
    ref = np.asarray(ref)
    for got in _paths(result, **arrays):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * (1 + np.max(np.abs(ref))))


def _jx(a):
    return jnp.asarray(a)


# ----------------------------------------------------------------------------------- faults

# (fixed: the kink rewrites' `-u` is matched by a sum with its terms negated, in any order,
# simplify/pattern.py `_equivalent`: `y - x` is not the node -(x - y) in the IR)
@pytest.mark.parametrize("expr, a, b", [
    ("sum(relu(x - y) - relu(y - x))", np.zeros(3), np.zeros(3)),
    ("sum(relu(x - y) - relu(y - x))", np.array([1.0, -2.0, 0.5]), np.array([1.0, -2.0, 0.5])),
    ("sum(relu(x - 1) - relu(1 - x))", np.ones(3), np.zeros(3)),
    ("sum(relu(x - 2 * y) - relu(2 * y - x))", np.array([1.0, -2.0, 0.5]),
     np.array([0.5, -1.0, 0.25])),
    ("sum(relu(x - y - 1) - relu(1 + y - x))", np.array([2.0, -1.0, 0.5]),
     np.array([1.0, -2.0, -0.5])),
    ("sum(relu(-y + x) - relu(y - x))", np.zeros(3), np.zeros(3)),
])
def test_relu_difference_spelled_with_subtraction_is_linear(expr, a, b):
    g = einderiv.grad(expr, "x", VEC)
    # the function is sum(x - y) (or sum(x - 1)): its gradient is 1 everywhere
    _close(g, np.ones(3), x=a, y=b)


@pytest.mark.parametrize("expr, scale", [
    ("sum(relu(x - y) ** 2 + relu(y - x) ** 2)", 1),
    ("sum(relu(y - x) ** 2 + relu(x - y) ** 2)", 1),
    ("sum(maximum(x - y, y - x) ** 2)", 1),
    ("sum(minimum(x - y, y - x) ** 2)", 1),
    ("sum(minimum(y - x, x - y) ** 2)", 1),
    ("sum(square(relu(x - y)) + square(relu(y - x)))", 1),
    ("sum(relu(2 * x - y) ** 2 + relu(y - 2 * x) ** 2)", 2),
])
def test_kink_squares_spelled_with_subtraction_have_hessian_2(expr, scale):
    h = einderiv.hessian(expr, "x", VEC)
    t = np.array([0.3, -1.0, 2.0])
    # each is sum((scale * x - y) ** 2): the Hessian by x is 2 scale ** 2 I everywhere, at
    # the tie too
    _close(h, 2 * scale ** 2 * np.eye(3), x=t, y=scale * t)


def test_a_sum_that_is_not_the_negation_is_left_alone():
    # relu(x - y) - relu(y - 2 * x) is no `relu(u) - relu(-u)`: relu's convention at the ties
    g = einderiv.grad("sum(relu(x - y) - relu(y - 2 * x))", "x", VEC)
    _close(g, np.full(3, 3.0), x=np.full(3, -1.0), y=np.full(3, -1.5))  # both active: 1 + 2
    _close(g, np.zeros(3), x=np.zeros(3), y=np.zeros(3))  # both at their kinks: 0 + 0
    assert "relu" in einderiv.compile("relu(x - y) - relu(y - 2 * x)", VEC).formula


@pytest.mark.xfail(strict=True, reason="relu(u) - relu(-u) = u is matched inside one "
                   "elementwise sum only, not across two reductions")
def test_relu_difference_split_over_two_sums():
    g = einderiv.grad("sum(relu(x)) - sum(relu(-x))", "x", VEC)
    _close(g, np.ones(3), x=np.zeros(3))  # sum(x): gradient 1


@pytest.mark.xfail(strict=True, reason="relu(u) ** 2 + relu(-u) ** 2 = u ** 2 is matched "
                   "inside one elementwise sum only, not across two reductions")
def test_relu_squares_split_over_two_sums():
    h = einderiv.hessian("sum(relu(x) ** 2) + sum(relu(-x) ** 2)", "x", VEC)
    _close(h, 2 * np.eye(3), x=np.zeros(3))  # sum(x ** 2): Hessian 2 I


def test_stencil_cross_windows_hessian_values():
    # (perf, fixed: at 1562d99 this was a dense (n x n) @ (n x n) product of 0/1 matrices,
    # O(n^3), 29 -> 179 ms from n = 800 to 1600; ir/build.py `_window_row` now takes a window
    # times vectors on its row as a term of the sum it distributes, and each is placed by pad)
    h = einderiv.hessian("sum(exp(x[1:]) * x[:-1])", "x", {"x": ("n",)})
    assert "@" not in h.formula and "eye(" not in h.formula, h.formula
    t = np.linspace(0.5, 1.5, 7)
    ref = np.zeros((7, 7))
    for k in range(6):  # exp(x[k+1]) * x[k]
        e = np.exp(t[k + 1])
        ref[k + 1, k + 1] += e * t[k]
        ref[k, k + 1] += e
        ref[k + 1, k] += e
    _close(h, ref, x=t)


def test_unrolled_two_picks_per_step_hessian_has_no_dense_product():
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(4):
        term = fn.exp(x[2 * t + 1]) * x[2 * t]
        total = term if total is None else total + term
    h = einderiv.hessian(total, x)
    v = np.linspace(0.5, 1.5, 9)
    ref = np.zeros((9, 9))
    for t in range(4):  # exp(x[2t+1]) * x[2t]
        e = np.exp(v[2 * t + 1])
        ref[2 * t + 1, 2 * t + 1] = e * v[2 * t]
        ref[2 * t, 2 * t + 1] = ref[2 * t + 1, 2 * t] = e
    _close(h, ref, x=v)
    assert "@" not in h.formula


# ------------------------------------------------------------------------------------ held

@pytest.mark.parametrize("expr, ref", [
    ("sum(log(x[::3]))", lambda x: jnp.sum(jnp.log(x[::3]))),
    ("sum(log(x[1::3])) + sum(log(x[1:6]))",
     lambda x: jnp.sum(jnp.log(x[1::3])) + jnp.sum(jnp.log(x[1:6]))),
    ("sum(x[::-3] ** 3)", lambda x: jnp.sum(x[::-3] ** 3)),
    ("sum(exp(x[2:9:2]) * x[1:5])", lambda x: jnp.sum(jnp.exp(x[2:9:2]) * x[1:5])),
    ("sum(exp(x[::3][1:] * x[::3][:-1]))", lambda x: jnp.sum(jnp.exp(x[::3][1:] * x[::3][:-1]))),
])
def test_hessian_of_strided_and_sliced_picks(expr, ref):
    h = einderiv.hessian(expr, "x", {"x": ("n",)})
    t = np.random.default_rng(0).uniform(0.5, 2, 13)
    _close(h, jax.jit(jax.hessian(ref))(_jx(t)), x=t)


@pytest.mark.parametrize("expr, counts", [
    ("log(x[3]) + log(x[3])", {3: 2}),
    ("sum(log(stack((x[3], x[3], x[5]))))", {3: 2, 5: 1}),
    ("sum(log(stack((x[3], x[-1], x[5]))))", {3: 1, 12: 1, 5: 1}),
    ("sum(log(stack((x[3], x[-10], x[5]))))", {3: 2, 5: 1}),  # x[-10] is x[3]
])
def test_hessian_of_repeated_and_negative_unit_picks(expr, counts):
    h = einderiv.hessian(expr, "x", {"x": (13,)})
    t = np.random.default_rng(1).uniform(0.5, 2, 13)
    ref = np.zeros((13, 13))
    for p, c in counts.items():
        ref[p, p] = -c / t[p] ** 2
    _close(h, ref, x=t)


def test_hessian_of_product_of_logs_of_picks():
    h = einderiv.hessian("log(x[3]) + log(x[-1]) + log(x[5]) * log(x[3])", "x", {"x": (13,)})
    t = np.random.default_rng(1).uniform(0.5, 2, 13)
    ref = jax.jit(jax.hessian(
        lambda x: jnp.log(x[3]) + jnp.log(x[-1]) + jnp.log(x[5]) * jnp.log(x[3])))
    _close(h, ref(_jx(t)), x=t)


@pytest.mark.parametrize("places", [[3, 3, 5], [3, 3, 3, 3], [-1, 11, 0], [0, 1, 2, 0, 1, 2],
                                    list(range(12))[::-1]])
def test_unrolled_picks_with_repeats(places):
    x = einderiv.var("x", ("n",))
    total = None
    for k, p in enumerate(places):
        term = fn.log(x[p]) * (k + 1.0)
        total = term if total is None else total + term
    h = einderiv.hessian(total, x)
    t = np.random.default_rng(2).uniform(0.5, 2, 12)
    ref = np.zeros((12, 12))
    for k, p in enumerate(places):  # d2 c log(x[p]) = -c / x[p] ** 2 at (p, p)
        ref[p, p] -= (k + 1.0) / t[p] ** 2
    _close(h, ref, x=t)


@pytest.mark.parametrize("expr, counts", [
    ("sum(log(X[1::3, 1:]))", lambda c: c[1::3, 1:].__iadd__(1)),
    ("sum(log(X[::2, ::2]))", lambda c: c[::2, ::2].__iadd__(1)),
    ("sum(log(stack((X[3], X[3], X[-1]))))",
     lambda c: (c[3].__iadd__(2), c[-1].__iadd__(1))),
])
def test_hessian_of_matrix_log_picks(expr, counts):
    # sum of c[i, j] log(X[i, j]): the Hessian is diag(-c / X ** 2) on the (m n) entries
    X = np.random.default_rng(3).uniform(0.5, 2, (7, 4))
    c = np.zeros((7, 4))
    counts(c)
    h = einderiv.hessian(expr, "X", {"X": ("m", "n")})
    ref = np.diag((-c / X ** 2).ravel()).reshape(7, 4, 7, 4)
    _close(h, ref, X=X)


def test_hessian_of_log_of_transposed_strided_product():
    rng = np.random.default_rng(3)
    X, y = rng.uniform(0.5, 2, (7, 4)), rng.uniform(0.5, 2, 7)
    h = einderiv.hessian("sum(log(X.T[1::2] @ y))", "X", {"X": ("m", "n"), "y": ("m",)})
    ref = jax.jit(jax.hessian(lambda X: jnp.sum(jnp.log(X.T[1::2] @ _jx(y)))))(_jx(X))
    _close(h, ref, X=X, y=y)


@pytest.mark.parametrize("expr, ref", [
    ("sum(exp(X[::2] * X[1::2]))", lambda X: jnp.sum(jnp.exp(X[::2] * X[1::2]))),
    ("sum(log(X[::2, ::2]) * X[1::2, 1::2])",
     lambda X: jnp.sum(jnp.log(X[::2, ::2]) * X[1::2, 1::2])),
    ("sum(exp(X.T[::2] * X.T[1::2]))", lambda X: jnp.sum(jnp.exp(X.T[::2] * X.T[1::2]))),
])
def test_hessian_of_two_strided_windows_of_a_matrix(expr, ref):
    X = np.random.default_rng(4).uniform(0.5, 2, (6, 4))
    h = einderiv.hessian(expr, "X", {"X": (6, 4)})
    _close(h, jax.jit(jax.hessian(ref))(_jx(X)), X=X)


def test_third_derivative_and_hvp_of_strided_picks():
    # three reads of one strided selection on a summed row (jax.jacfwd of einderiv's Hessian)
    import einderiv.jax as ej
    F = ej.function("sum(log(x[::3]))", {"x": (7,)})
    t = np.linspace(0.5, 1.5, 7)
    third = np.zeros((7, 7, 7))
    for k in (0, 3, 6):
        third[k, k, k] = 2 / t[k] ** 3  # d3 log(x) = 2 / x ** 3, at the picked entries only
    np.testing.assert_allclose(np.asarray(jax.jacfwd(jax.hessian(F))(_jx(t))), third,
                               rtol=1e-13, atol=1e-13)
    v = np.random.default_rng(6).normal(size=10)
    u = np.random.default_rng(5).uniform(0.5, 2, 10)
    hv = einderiv.hvp("sum(log(x[::3])) ** 2", "x", {"x": ("n",)})
    # f = s ** 2, s = sum(log(x[::3])): H = 2 g g^T - 2 s diag(1 / x ** 2) on the picks
    g = np.zeros(10)
    g[::3] = 1 / u[::3]
    s = np.sum(np.log(u[::3]))
    ref = 2 * g * (g @ v) - 2 * s * g ** 2 * v
    np.testing.assert_allclose(np.asarray(hv(x=u, tangent=v)), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [10])
@pytest.mark.parametrize("expr, ref", [
    ("log(concatenate((x[::3], x[::3], x[::3]))[5])",
     lambda x: jnp.log(jnp.concatenate((x[::3],) * 3)[5])),
    ("log(concatenate((x[::-3], x[::-3]))[3])",
     lambda x: jnp.log(jnp.concatenate((x[::-3], x[::-3]))[3])),
    ("sum(log(concatenate((x[::3], x[::3]))[1::2]))",
     lambda x: jnp.sum(jnp.log(jnp.concatenate((x[::3], x[::3]))[1::2]))),
])
def test_picks_of_concatenated_strided_slices(n, expr, ref):
    g = einderiv.grad(expr, "x", {"x": ("n",)})
    t = np.random.default_rng(n).uniform(0.5, 2, n)
    _close(g, jax.jit(jax.grad(ref))(_jx(t)), x=t)


@pytest.mark.parametrize("expr, ref", [
    ("sum(maximum(x, -y))", lambda x, y: jnp.sum(jnp.maximum(x, -y))),
    ("sum(relu(x) + relu(-y))", lambda x, y: jnp.sum(jax.nn.relu(x) + jax.nn.relu(-y))),
    ("sum(relu(x) - relu(-y))", lambda x, y: jnp.sum(jax.nn.relu(x) - jax.nn.relu(-y))),
    ("sum(maximum(2 * x, -3 * x))", lambda x, y: jnp.sum(jnp.maximum(2 * x, -3 * x))),
    ("sum(sqrt(x ** 2 + y ** 2 + 1))", lambda x, y: jnp.sum(jnp.sqrt(x ** 2 + y ** 2 + 1))),
    ("sum(sqrt(x ** 2 + y ** 2 + x ** 2))", lambda x, y: jnp.sum(jnp.sqrt(2 * x ** 2 + y ** 2))),
    ("sum(abs(x) ** 2 ** 0.5)", lambda x, y: jnp.sum(jnp.abs(x) ** 2 ** 0.5)),
    ("mean(x ** 2) ** 0.5", lambda x, y: jnp.mean(x ** 2) ** 0.5),
])
def test_kink_rewrites_that_must_not_change_values(expr, ref):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=5), rng.normal(size=5)
    for kind, jf in (("grad", jax.grad), ("hessian", jax.hessian)):
        r = getattr(einderiv, kind)(expr, "x", VEC)
        _close(r, jax.jit(jf(lambda x: ref(x, _jx(b))))(_jx(a)), tol=1e-11, x=a, y=b)


def test_hypot_spelling_with_broadcast_shapes():
    shapes = {"x": ("n",), "Y": ("m", "n")}
    rng = np.random.default_rng(8)
    x, Y = rng.normal(size=4), rng.normal(size=(3, 4))
    for expr in ("sum(sqrt(x ** 2 + Y ** 2))", "sum((Y * Y + x * x) ** 0.5)"):
        g = einderiv.grad(expr, "x", shapes)
        ref = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sqrt(x ** 2 + _jx(Y) ** 2))))(_jx(x))
        _close(g, ref, x=x, Y=Y)


@pytest.mark.parametrize("expr", [
    "sum(maximum(x, -x) ** 2)", "sum(minimum(x, -x) * minimum(x, -x))",
    "sum((relu(x) - relu(-x)) ** 2)", "sum(relu(x - y) ** 2 + relu(-(x - y)) ** 2)",
    "sum(sqrt((x - y) * (x - y)) ** 2)", "(sum(x ** 2) ** 0.5) ** 2",
    "sum(sqrt(x ** 2 + y ** 2) * sqrt(x ** 2 + y ** 2))",
])
def test_kink_squares_have_hessian_2_at_zero(expr):
    h = einderiv.hessian(expr, "x", VEC)
    _close(h, 2 * np.eye(3), x=np.zeros(3), y=np.zeros(3))


def test_relu_difference_is_identity_and_owned():
    x = np.array([1.0, -2.0, 0.0])
    g = einderiv.grad("sum(sin(relu(x) - relu(-x)))", "x", VEC)
    _close(g, np.cos(x), x=x)  # derivative 1 * cos at 0 too
    f = einderiv.compile("relu(x) - relu(-x)", VEC)
    out = f(x=x)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


def test_norm_over_axis_spellings_at_zero_and_overflow():
    X = np.array([[0.0, 3.0, 1e200], [0.0, 4.0, 1e200]])
    shapes = {"X": ("m", "n")}
    f = einderiv.compile("sum(sum(X ** 2, axis=0) ** 0.5)", shapes)
    np.testing.assert_allclose(f(X=X), 5.0 + np.sqrt(2) * 1e200, rtol=1e-15)
    g = einderiv.grad("sum(sum(X * X, axis=0) ** 0.5)", "X", shapes)
    ref = np.array([[0.0, 0.6, 2 ** -0.5], [0.0, 0.8, 2 ** -0.5]])  # zero subgradient at 0
    _close(g, ref, X=X)


@pytest.mark.no_roundtrip  # results hold torch / JAX / dask arrays
@pytest.mark.parametrize("backend", ["torch", "jax", "dask"])
def test_stack_transpose_through_backends(backend):
    pytest.importorskip({"torch": "torch", "jax": "jax", "dask": "dask.array"}[backend])
    rng = np.random.default_rng(9)
    A, B, C = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    shapes = {"A": (3, "n", "k"), "B": (3, "k", "m"), "C": (3, "n", "m")}
    expr = "sum((B.mT @ A.mT - C.mT) ** 2) + sum(((A - 1).mT @ C) ** 3)"
    g = einderiv.grad(expr, "A", shapes, backend=backend)
    assert ".swapaxes(-1, -2)" in g.source
    got = g(A=A, B=B, C=C)
    got = got.compute() if hasattr(got, "compute") else got
    got = got.numpy() if hasattr(got, "numpy") and not isinstance(got, np.ndarray) else got
    ref = jax.jit(jax.grad(lambda A: jnp.sum((_jx(B).mT @ A.mT - _jx(C).mT) ** 2)
                           + jnp.sum(((A - 1).mT @ _jx(C)) ** 3)))(_jx(A))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-10)

