"""Breaker session 25: differential fuzzing of einderiv against independent references.

Every expected value here is computed without einderiv: by numpy by hand, from the function's
own definition, or by JAX (float64) where it is installed. Each fault found is a strict xfail
asserting the right value; the edges that held are ordinary tests.

Faults found:

- (fixed) The gradient of an integer index (`x[0]`, `A[0]`, `A[:, 0]`, `A[0, 0]`) was a one-hot
  product (`eye(n)[0] / x[0]`, `outer(eye(n)[0], g)`), not a pad: where the cotangent of the
  picked entries is infinite, every entry the output does not depend on became 0 * inf = nan
  instead of 0; so did the pad of a constant, divided (`pad(ones(1), ...) / s`, 0 / 0 at the
  padded entries). Now the rest of the product is padded: `pad(ones(1) / x[0], ((0, n - 1),))`.
- (fixed next session) The same through the slice of a concatenation
  (`eye(2 * n)[n:][:, :1] @ g`, which made even the picked entry nan): the delta algebra now
  contracts windows that never meet to zero and a window inside another to one window
  (ir/deltas.py `_apart`, `_composed`): `pad(g, ((0, n - 1),))`.
- (fixed) `log(x[None, 0])` (a new axis, then an integer index, under log or sqrt) raised an
  internal `ValueError` ("Contract: a label with no operand needs a broadcast size") from the
  rewriter, not an `EinderivError`, in `compile` and `grad` alike.
- (fixed) The gradient of `mean` of an empty fixed-size slice (`mean(x[2:2])`) is folded to
  `1e999 * pad(ones(0), ((2, 2),))`: the generated code (and the printed formula) gave nan at
  every entry, where the IR interpreter gives 0, as JAX does. The constant now multiplies the
  empty array inside the pad.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import einderiv

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

try:  # an optional reference
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover
    jax = None

needs_jax = pytest.mark.skipif(jax is None, reason="jax is not installed")


def _paths(result, arrays, shapes):
    """The generated code, the IR interpreter and the printed formula compiled back."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "generated": np.asarray(result(**arrays), dtype=np.float64),
            "ir": np.asarray(result.evaluate_ir(**arrays), dtype=np.float64),
            "formula": np.asarray(einderiv.compile(result.formula, shapes)(**arrays),
                                  dtype=np.float64),
        }


def _assert_all(result, arrays, shapes, expected, rtol=1e-9, atol=1e-12):
    for path, value in _paths(result, arrays, shapes).items():
        np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, equal_nan=False,
                                   err_msg=f"path: {path}")


# ---------------------------------------------------------------------------------------------
# Fixed fault: nan leaked from the picked entries of an index into the entries the output
# ignores (the vectorizer and the IR interpreter now pad the rest of the product with zeros:
# vectorize/contraction.py _scatter_later, evaluate/plan.py). The concatenation's is left.
# ---------------------------------------------------------------------------------------------

_LEAK = ("the gradient of an integer index is a one-hot product (eye(n)[0] / x[0]), not a pad: "
         "an infinite cotangent at the picked entry makes 0 * inf = nan at every entry the output "
         "does not depend on (right: 0, as JAX and as a slice x[0:1] gives)")


def test_grad_of_log_of_index_is_zero_off_the_index():
    shapes = {"x": ("n",)}
    x = np.array([0.0, 1.0, 2.0])
    g = einderiv.grad("log(x[0])", "x", shapes)
    # log(x[0]) does not depend on x[1], x[2]: those partials are exactly 0; d/dx0 = 1/0 = inf.
    _assert_all(g, {"x": x}, shapes, np.array([np.inf, 0.0, 0.0]))


def test_grad_of_row_index_is_zero_off_the_row():
    shapes = {"A": ("n", "n")}
    A = np.array([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 1.0, 4.0]])
    g = einderiv.grad("sum(log(A[0]))", "A", shapes)
    expected = np.zeros((3, 3))
    with np.errstate(divide="ignore"):
        expected[0] = 1.0 / A[0]  # [inf, 0.5, 1.0]; the other rows do not enter the output
    _assert_all(g, {"A": A}, shapes, expected)


def test_grad_of_column_index_is_zero_off_the_column():
    shapes = {"A": ("n", "n")}
    A = np.array([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 1.0, 4.0]])
    g = einderiv.grad("sum(log(A[:, 0]))", "A", shapes)
    expected = np.zeros((3, 3))
    with np.errstate(divide="ignore"):
        expected[:, 0] = 1.0 / A[:, 0]  # [inf, 1/3, 1]
    _assert_all(g, {"A": A}, shapes, expected)


@pytest.mark.no_roundtrip
def test_grad_through_slice_of_concatenation_keeps_zeros():
    shapes = {"x": ("n",)}
    x = np.array([0.0, 1.0, 2.0])
    g = einderiv.grad("sum(log(concatenate((x, x))[:1]))", "x", shapes)
    # the output is log(x[0]): d/dx0 = inf, the others 0
    _assert_all(g, {"x": x}, shapes, np.array([np.inf, 0.0, 0.0]))


def test_grad_of_log_of_sum_of_slice_keeps_zeros():
    shapes = {"x": ("n",)}
    x = np.array([0.0, 1.0, 2.0])
    g = einderiv.grad("log(sum(x[0:1]))", "x", shapes)
    _assert_all(g, {"x": x}, shapes, np.array([np.inf, 0.0, 0.0]))


@pytest.mark.no_roundtrip
def test_grad_of_log_of_slice_keeps_zeros():
    # the same function written with a slice: a pad, right
    shapes = {"x": ("n",)}
    g = einderiv.grad("sum(log(x[0:1]))", "x", shapes)
    _assert_all(g, {"x": np.array([0.0, 1.0, 2.0])}, shapes, np.array([np.inf, 0.0, 0.0]))


@needs_jax
@pytest.mark.no_roundtrip
def test_jax_agrees_on_the_index_gradient_reference():
    # the reference of the xfails above is JAX's too
    g = jax.grad(lambda x: jnp.log(x[0]))(jnp.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(g), [np.inf, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Fixed fault: an internal ValueError for a new axis followed by an integer index under log /
# sqrt ('Contract: a label with no operand needs a broadcast size', from the rewriter's
# pattern matcher, which rebuilt a sum without its broadcast axis: simplify/pattern.py).
# ---------------------------------------------------------------------------------------------

def test_log_of_new_axis_then_index_compiles():
    x = np.array([2.0, 3.0, 5.0])
    f = einderiv.compile("x: [n]; log(x[None, 0])")
    np.testing.assert_allclose(f(x=x), np.log(x[None, 0]))


def test_grad_of_sqrt_of_index_then_new_axis():
    x = np.array([4.0, 3.0, 5.0])
    g = einderiv.grad("sum(sqrt(x[0, None]))", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), [0.25, 0.0, 0.0])


def test_grad_of_log_of_new_axis_then_index_times_another_entry():
    x = np.array([0.5, 2.0, 3.0])  # d/dx of log(x0) * x1: [x1 / x0, log(x0), 0]
    g = einderiv.grad("sum(log(x[None, 0]) * x[1])", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), [4.0, np.log(0.5), 0.0], rtol=1e-14)


def test_new_axis_then_index_without_log_holds():
    # the same index under exp or tanh is fine
    x = np.array([0.5, 3.0, 5.0])
    f = einderiv.compile("x: [n]; sum(exp(x[None, 0]))")
    np.testing.assert_allclose(f(x=x), np.exp(0.5))
    g = einderiv.grad("sum(tanh(x[:, None][0]))", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), [1 - np.tanh(0.5) ** 2, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Fault: the gradient of the mean of an empty slice, inf * 0 in the generated code.
# ---------------------------------------------------------------------------------------------

def test_grad_of_mean_of_empty_slice_is_zero():
    shapes = {"x": (4,)}
    g = einderiv.grad("mean(x[2:2])", "x", shapes)
    _assert_all(g, {"x": np.arange(4.0)}, shapes, np.zeros(4))


@pytest.mark.no_roundtrip
def test_grad_of_mean_of_empty_slice_ir_is_zero():
    g = einderiv.grad("mean(x[2:2])", "x", {"x": (4,)})
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(g.evaluate_ir(x=np.arange(4.0)), np.zeros(4))
    if jax is not None:
        ref = jax.grad(lambda v: jnp.mean(v[2:2]))(jnp.arange(4.0))
        np.testing.assert_array_equal(np.asarray(ref), np.zeros(4))


# ---------------------------------------------------------------------------------------------
# Edges that held.
# ---------------------------------------------------------------------------------------------

def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


_SLICES = [
    ("sum(x[::-1] * y)", lambda x, y: np.sum(x[::-1] * y)),
    ("sum(x[1::2][::-1] ** 2)", lambda x, y: np.sum(x[1::2][::-1] ** 2)),
    ("sum(x[::2][::2] ** 3)", lambda x, y: np.sum(x[::2][::2] ** 3)),
    ("sum(x[-1:0:-2] ** 2 * y[-1:0:-2])", lambda x, y: np.sum(x[-1:0:-2] ** 2 * y[-1:0:-2])),
    ("sum(x[3::-1] ** 3)", lambda x, y: np.sum(x[3::-1] ** 3)),
    ("sum(x[:0:-1] * x[1:])", lambda x, y: np.sum(x[:0:-1] * x[1:])),
    ("sum(cumsum(x ** 2)[::-2])", lambda x, y: np.sum(np.cumsum(x ** 2)[::-2])),
    ("sum(x[1:][::-1][::2] ** 2)", lambda x, y: np.sum(x[1:][::-1][::2] ** 2)),
    ("x[-1] * x[0] * x[-2]", lambda x, y: x[-1] * x[0] * x[-2]),
    ("sum(concatenate((x[1:], x[:1])) * y)", lambda x, y: np.sum(np.concatenate((x[1:], x[:1])) * y)),
]


@pytest.mark.parametrize("src,ref", _SLICES, ids=[s for s, _ in _SLICES])
@pytest.mark.parametrize("n", [5, 6])
def test_strided_and_reversed_slices_grad(src, ref, n):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    shapes = {"x": ("n",), "y": ("n",)}
    g = einderiv.grad(src, "x", shapes)
    expected = _fd_grad(lambda v: ref(v, y), x)
    for path, value in _paths(g, {"x": x, "y": y}, shapes).items():
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-8, err_msg=path)


def test_fixed_size_slices_clip_as_numpy():
    x = np.arange(5.0)
    for text in ["x[5:]", "x[3:1]", "x[-10:]", "x[::-2][::2]", "x[10:2:-1]", "x[:-10:-1]",
                 "x[-1:-6:-2]", "x[::-1][1:3]"]:
        f = einderiv.compile("x: [5]; " + text)
        np.testing.assert_array_equal(f(x=x), eval(text, {"x": x}), err_msg=text)


@pytest.mark.parametrize("name", ["t0", "t1", "_xp", "_kernels", "np", "self", "lambda",
                                  "exp", "sum", "out", "dx", "n", "delta", "einsum", "pad"])
def test_names_that_collide_with_temporaries_functions_and_keywords(name):
    x = np.array([0.5, -1.0, 2.0])
    shapes = {name: ("n",)}
    g = einderiv.grad(f"sum(tanh({name}) ** 2 * exp({name}))", name, shapes)
    t = np.tanh(x)
    expected = (2 * t * (1 - t ** 2) + t ** 2) * np.exp(x)
    _assert_all(g, {name: x}, shapes, expected, rtol=1e-12)


def test_rebinding_and_shared_forward_with_temporary_names():
    shapes = {"x": ("n",)}
    src = "t0 = x * x; t1 = t0 * x; t0 = tanh(t1) + t0; sum(sigmoid(t0) * tanh(t1))"
    x = np.array([0.3, -1.2, 0.8, 1.1])

    def f(v):
        t1 = v ** 3
        t0 = np.tanh(t1) + v ** 2
        return np.sum(1 / (1 + np.exp(-t0)) * np.tanh(t1))

    g = einderiv.grad(src, "x", shapes)
    _assert_all(g, {"x": x}, shapes, _fd_grad(f, x), rtol=1e-6, atol=1e-9)


def test_softmax_family_at_extreme_logits():
    shapes = {"x": ("n",), "y": ("n",)}
    x = np.array([1000.0, -1000.0, 0.0])
    y = np.array([0.2, 0.3, 0.5])
    # softmax(x) is [1, 0, 0] to working precision
    _assert_all(einderiv.grad("sum(softmax(x) * y)", "x", shapes), {"x": x, "y": y}, shapes,
                np.zeros(3), atol=1e-300)
    _assert_all(einderiv.grad("sum(log_softmax(x) * y)", "x", shapes), {"x": x, "y": y},
                shapes, y - np.array([1.0, 0.0, 0.0]) * y.sum())
    _assert_all(einderiv.compile("logsumexp(x)", shapes), {"x": x}, shapes, 1000.0)


def test_softmax_grad_at_tied_maxima():
    shapes = {"x": ("n",), "y": ("n",)}
    y = np.array([0.3, -1.2, 2.0])
    for x in [np.array([1.0, 1.0, 0.0]), np.array([40.0, 40.0, 0.0]), np.array([2.0, 2.0, 2.0])]:
        s = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        expected = s * (y - np.dot(s, y))
        _assert_all(einderiv.grad("sum(softmax(x) * y)", "x", shapes), {"x": x, "y": y},
                    shapes, expected, rtol=1e-9, atol=1e-15)


def test_minmax_ties_split_evenly():
    shapes = {"x": ("n",), "y": ("n",)}
    x = np.array([-1.0, 0.0, 4.0])
    _assert_all(einderiv.grad("sum(maximum(x, y))", "x", shapes), {"x": x, "y": np.zeros(3)},
                shapes, np.array([0.0, 0.5, 1.0]))
    _assert_all(einderiv.grad("max(x)", "x", shapes), {"x": np.array([1.0, 3.0, 3.0])},
                shapes, np.array([0.0, 0.5, 0.5]))


@pytest.mark.parametrize("src", ["sum(x ** 2)", "logsumexp(x)", "mean(x)", "prod(x)", "norm(x)",
                                 "sum(softmax(x))", "sum(cumsum(x))", "x @ x"])
def test_empty_dimension(src):
    shapes = {"x": ("n",)}
    for r, shape in [(einderiv.grad(src, "x", shapes), (0,)),
                     (einderiv.hessian(src, "x", shapes), (0, 0))]:
        for value in (r(x=np.zeros(0)), r.evaluate_ir(x=np.zeros(0))):
            assert np.shape(value) == shape


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_kernels_keep_dtype_and_digits(dtype):
    shapes = {"x": ("n",)}
    xs = np.array([-100.0, -20.0, -1e-3, 0.0, 5.0, 20.0, 50.0])
    src = "sum(sech2(x) + dsigmoid(x) + logcosh(x) + softplus(x) + logsigmoid(x))"
    g = einderiv.grad(src, "x", shapes)
    x = xs.astype(dtype)
    # by hand in float64: the derivative of each term
    sig = 1 / (1 + np.exp(-xs))
    t = np.tanh(xs)
    sech2 = 1 / np.cosh(xs) ** 2
    expected = (-2 * t * sech2 + sig * (1 - sig) * (1 - 2 * sig) + t + sig + (1 - sig))
    tol = 1e-5 if dtype == np.float32 else 5e-3
    for value in (g(x=x), g.evaluate_ir(x=x)):
        assert value.dtype == dtype
        np.testing.assert_allclose(value.astype(np.float64), expected, rtol=tol, atol=tol)


def test_equal_dimension_names_at_runtime():
    shapes = {"X": ("n", "m"), "Y": ("m", "n"), "B": ("m", "m")}
    rng = np.random.default_rng(3)
    X, Y, B = rng.standard_normal((4, 4)), rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    arrays = {"X": X, "Y": Y, "B": B}
    g = einderiv.grad("sum(X * Y.T) + sum((X @ B) * X)", "X", shapes)
    _assert_all(g, arrays, shapes, Y.T + X @ B.T + X @ B, rtol=1e-12)


def test_transposed_terms_are_not_collected_as_one():
    shapes = {"A": ("n", "n"), "B": ("n", "n"), "x": ("n",)}
    rng = np.random.default_rng(4)
    A, B, x = rng.standard_normal((4, 4)), rng.standard_normal((4, 4)), rng.standard_normal(4)
    arrays = {"A": A, "B": B, "x": x}
    g = einderiv.grad("sum(A * B) + sum(A.T * B) + x @ A @ x", "A", shapes)
    _assert_all(g, arrays, shapes, B + B.T + np.outer(x, x), rtol=1e-12)
    h = einderiv.hessian("x @ A @ B @ x", "x", shapes)
    _assert_all(h, arrays, shapes, A @ B + (A @ B).T, rtol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_random_unrolled_recurrence_grad(seed):
    # an unrolled tanh recurrence with rows of X read in a random order (the vectorizer stacks
    # them); reference: central differences
    rng = np.random.default_rng(seed)
    order = rng.permutation(5)[: 3 + seed % 3]
    lines, h = [], "h0"
    for t, row in enumerate(order):
        lines.append(f"h{t + 1} = tanh(W @ {h} + U @ X[{row}] + b)")
        h = f"h{t + 1}"
    src = "\n".join(lines + [f"sum({h} ** 2) + sum(softmax(V @ h1) * Y[0])"])
    shapes = {"h0": (3,), "W": (3, 3), "U": (3, "d"), "b": (3,), "X": ("t", "d"), "V": (3, 3),
              "Y": ("t", 3)}
    arrays = {k: rng.standard_normal(tuple(5 if d == "t" else 2 if d == "d" else d for d in s))
              for k, s in shapes.items()}

    def f(**a):
        hh = a["h0"]
        h1 = None
        for row in order:
            hh = np.tanh(a["W"] @ hh + a["U"] @ a["X"][row] + a["b"])
            h1 = hh if h1 is None else h1
        z = a["V"] @ h1
        s = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return np.sum(hh ** 2) + np.sum(s * a["Y"][0])

    wrt = ["W", "U", "X", "h0"][seed % 4]
    g = einderiv.grad(src, wrt, shapes)
    expected = _fd_grad(lambda v: f(**dict(arrays, **{wrt: v})), arrays[wrt])
    for path, value in _paths(g, arrays, shapes).items():
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-8, err_msg=path)
