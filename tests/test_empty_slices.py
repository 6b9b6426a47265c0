"""Sizes at which a slice is empty: numpy's value, or the error numpy raises.

The differential fuzz (program 2740 of test_differential's slow set) found the Hessian of
`sum((eye(n) * out)[1:n, -1:] * b.T[1:n, -1:])` refused at n = 1 ("dimension n-2 is
negative"), where numpy's value is 0: the delta algebra (ir/deltas.py) composed the windows
`[1:n]` and `[-1:]` of eye's axes into one window at n - 2, which holds from n = 2 on only
(`_always` counted the sizes where every window is non-empty). A window or unit vector the
algebra makes now holds at every size where the windows it comes from are windows, empty ones
too (`empty_too`), or the product is left as it is.

Picks the user writes stay checked: `x[1:][0]` at n = 1 is an error, as numpy's IndexError.
An index may be a dimension expression (`x[n - 2]`), as a slice bound may: the printed formulas
pick so where a position depends on the sizes, and they must compile back.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import einderiv

SHAPES = {"x": ("n",), "out": (), "b": ("n", "n")}


def _arrays(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {"x": rng.normal(size=n), "out": np.float64(rng.normal()),
            "b": rng.normal(size=(n, n))}


def _numpy(text: str, arrays: dict, n: int) -> float:
    """The text evaluated by numpy itself (these texts are numpy as written)."""
    scope = {"eye": np.eye, "sum": np.sum, "concatenate": np.concatenate, "n": n, **arrays}
    return float(eval(text, {"__builtins__": {}}, scope))  # our own test texts only


def _gradient(text: str, arrays: dict, n: int, wrt: str) -> np.ndarray:
    """Central differences of numpy's value (the texts are linear in each variable: exact to
    rounding)."""
    base = np.asarray(arrays[wrt], dtype=float)
    grad = np.zeros(base.shape)
    for k in np.ndindex(base.shape):
        step = np.zeros(base.shape)
        step[k] = 0.5
        up = _numpy(text, {**arrays, wrt: base + step}, n)
        down = _numpy(text, {**arrays, wrt: base - step}, n)
        grad[k] = up - down
    return grad


def _paths(result, arrays: dict) -> dict:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {"generated": np.asarray(result(**arrays)),
                "ir": np.asarray(result.evaluate_ir(**arrays)),
                "formula": np.asarray(einderiv.compile(result.formula, SHAPES)(**arrays))}


TEXTS = [
    "sum((eye(n) * out)[1:n, -1:] * b.T[1:n, -1:])",  # the fuzz's program 2740
    "sum(x[1:] * eye(n)[1:, -1])",
    "sum(x[1:] * eye(n)[1:, 0])",
    "sum(x[:-1] * eye(n)[:-1, -1])",
    "sum(eye(n)[1:, -1:] * b[:-1, :1])",
    "sum(eye(n)[:-1, 1:] * b[1:, :-1])",
    "sum(eye(n)[1:, :-1] * b[1:, 1:]) * out",
    "sum(concatenate((x, x))[1:n] * x[1:])",
]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("text", TEXTS)
def test_values_at_sizes_where_a_slice_is_empty(text, n):
    arrays = _arrays(n)
    want = _numpy(text, arrays, n)
    for path, got in _paths(einderiv.compile(text, SHAPES), arrays).items():
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=path)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("text", TEXTS)
def test_gradients_at_sizes_where_a_slice_is_empty(text, n):
    arrays = _arrays(n)
    wrt = [w for w in ("x", "b", "out") if w in text.replace("b.T", "b")]
    for name in wrt:
        want = _gradient(text, arrays, n, name)
        for path, got in _paths(einderiv.grad(text, name, SHAPES), arrays).items():
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{path} d/d{name}")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_fuzz_programs_hessian_at_every_size(n):
    text = ("dxdx: [n]; W: [m]; v: [n, m]; dx = (einsum(\"ji,j\", v.T, W) / "
            "exp(tanh(mean(b)))); out_1 = cos(abs(v)); dxdxdx = (-(-sum(out_1, -2))); "
            "t3 = sum((eye(n) * out)[1:n, -1:] * b.T[1:n, -1:])")
    shapes = {"xdx": ("n",), "dy": ("p",), "b": ("n", "n"), "out": ()}
    h = einderiv.hessian(text, "out", shapes)
    rng = np.random.default_rng(n)
    arrays = {"b": rng.normal(size=(n, n)), "out": np.float64(0.3)}
    assert float(h(**arrays)) == 0.0  # linear in out
    g = einderiv.grad(text, "out", shapes)
    want = float(np.sum(np.eye(n)[1:n, -1:] * arrays["b"].T[1:n, -1:]))
    np.testing.assert_allclose(float(g(**arrays)), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(g.evaluate_ir(**arrays)), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("text", ["x[1:][0]", "x[1:n][-1]", "sum(x[1:][0] * x)", "x[:-1][-1]"])
def test_a_pick_the_user_writes_past_an_empty_axis_is_an_error(text):
    f = einderiv.compile(text, SHAPES)
    with pytest.raises(einderiv.ShapeError):
        f(x=np.ones(1))
    assert np.isfinite(f(x=np.arange(1.0, 4.0)))


# --- an index that is a dimension expression --------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5])
def test_an_index_of_the_sizes(n):
    x = np.arange(1.0, n + 1)
    f = einderiv.compile("x[n - 2] * x[0] + x[n - 1]", SHAPES)
    assert float(f(x=x)) == x[n - 2] * x[0] + x[n - 1]
    g = einderiv.grad("x[n - 2] * x[0] + x[n - 1]", "x", SHAPES)
    want = np.zeros(n)
    want[n - 2] += x[0]
    want[0] += x[n - 2]
    want[n - 1] += 1.0
    for path, got in _paths(g, {"x": x}).items():
        np.testing.assert_allclose(got, want, rtol=1e-15, err_msg=path)


def test_an_index_of_the_sizes_outside_its_axis_is_an_error():
    f = einderiv.compile("x[n - 2]", SHAPES)
    with pytest.raises(einderiv.ShapeError):
        f(x=np.ones(1))  # numpy: x[-1] of x[n - 2] at n = 1 is another entry; refused
    g = einderiv.compile("y: [m]; x[m]", SHAPES)
    with pytest.raises(einderiv.ShapeError, match="out of bounds"):
        g(x=np.ones(3), y=np.ones(3))
    assert float(g(x=np.arange(4.0), y=np.ones(3))) == 3.0
    with pytest.raises(einderiv.ShapeError, match="out of bounds"):
        einderiv.compile("x[n]", {"x": ("n",)}, sizes={"n": 3})


@pytest.mark.parametrize("text", ["x[argmax(x)]", "x[x]", "x[n * 2]"])
def test_an_index_that_is_no_dimension_expression_is_a_parse_error(text):
    with pytest.raises(einderiv.EinderivError, match="an index must be an integer constant"):
        einderiv.compile(text, SHAPES)
    with pytest.raises(einderiv.UnknownNameError, match="unknown dimension 'unknown'"):
        einderiv.compile("x[unknown - 1]", SHAPES)


def test_a_printed_pick_at_a_position_of_the_sizes_compiles_back():
    # the Jacobian of a pick of a concatenation reads eye(2n)[n:] at column n (`[:, n]`)
    J = einderiv.jacobian("log(concatenate((x, x))[n - 1:n + 1])", "x", SHAPES)
    for n in (1, 2, 4):
        x = np.linspace(0.5, 1.5, n)
        paths = _paths(J, {"x": x})
        want = np.zeros((2, n))
        want[0, n - 1] = 1 / x[n - 1]
        want[1, 0] = 1 / x[0]
        for path, got in paths.items():
            np.testing.assert_allclose(got, want, rtol=1e-15, err_msg=path)
