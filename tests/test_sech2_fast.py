"""sech2 given tanh(x) (issue 13): the generated gradient of a tanh layer passes its forward value,
`_kernels.sech2(t0, t1)`, and the kernel takes 1 - t * t where that is exact to a few units in
the last place, 1 / cosh(x) ** 2 elsewhere. Checked against mpmath's sech(x) ** 2 at 50 digits:
the relative error, in units of the dtype's machine epsilon, is at most 8 on every path."""
from __future__ import annotations

import ast as pyast

import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import parse_rules, using_rules

M = pytest.importorskip("mpmath")
M.mp.dps = 50

ULPS = 8  # relative error bound, in machine epsilons (kernels.py: 6.5 float64, 7.5 float32)
MLP = "H = tanh(X @ W1 + b1)\nZ = H @ W2 + b2\n-sum(Y * log(softmax(Z, axis=1)))"
MLP_SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W1": ("d", "h"), "b1": ("h",),
              "W2": ("h", "k"), "b2": ("k",)}
WRT = ["W1", "b1", "W2", "b2"]


def _reference(x: np.ndarray) -> np.ndarray:
    """sech(x) ** 2 of the exact values of x, at 50 digits, rounded to float64."""
    return np.array([float(M.sech(M.mpf(float(v))) ** 2) if np.isfinite(v) else
                     (0.0 if np.isinf(v) else np.nan) for v in x.ravel()]).reshape(x.shape)


def _error(result: np.ndarray, x: np.ndarray) -> float:
    """The largest relative error in machine epsilons of x's dtype (nan where both are nan)."""
    assert result.dtype == x.dtype and result.shape == x.shape
    ref = _reference(x)
    assert np.array_equal(np.isnan(result), np.isnan(ref))
    finite = ~np.isnan(ref)
    a, r = result[finite].astype(np.float64), ref[finite]
    tiny = np.finfo(x.dtype).tiny  # below it a value has fewer digits: compared absolutely
    return float(np.max(np.abs(a - r) / np.maximum(r, tiny), initial=0) / np.finfo(x.dtype).eps)


def _near_points(dtype, seed=0):
    """x mostly where |tanh(x)| <= 0.9 (1 - t * t), evenly up to that bound and 200 entries
    around it, and about 300 far entries (under the kernel's share): 94 over [-30, 30], 100
    where 0.9 < |tanh(x)| < 0.995 (where 1 - t * t would be off by up to 13 to 100 eps), +-inf,
    nan, 0 and +-800."""
    rng = np.random.default_rng(seed)
    bound = np.arctanh(0.9)
    sign = rng.choice([-1, 1], 300)
    x = np.concatenate([np.linspace(-bound, bound, 11800),
                        bound * (1 + rng.uniform(-1e-6, 1e-6, 200)) * sign[:200],
                        rng.uniform(-30, 30, 94),
                        rng.uniform(bound, np.arctanh(0.995), 100) * sign[200:],
                        [np.inf, -np.inf, np.nan, 0.0, 800.0, -800.0]])
    return rng.permutation(x).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_given_tanh_exact_against_mpmath(dtype):
    x = _near_points(dtype)
    t = np.tanh(x)
    assert kernels._sech2_near(x, t) is not None  # the path under test: 1 - t * t, and the far
    with np.errstate(invalid="ignore"):           # entries gathered
        assert 0 < np.count_nonzero(~(t * t <= kernels._SECH2_NEAR)) < x.size / 32
    assert _error(kernels.sech2(x, t), x) <= ULPS
    assert _error(kernels.sech2(x), x) <= ULPS  # the exact path, as the IR interpreter calls it
    # from |x| = 19 on, 1 - t * t has no digit left (9 in float32); sech2 keeps them all
    far = (np.abs(x) >= 19) & (np.abs(x) <= 30)
    assert far.any() and (1 - t[far] * t[far] == 0).all() and (kernels.sech2(x, t)[far] > 0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_many_far_entries_take_the_exact_formula(dtype):
    # [-30, 30] evenly: most entries far, where a sample sends the whole array to cosh
    x = np.concatenate([np.linspace(-30, 30, 12001), [np.inf, -np.inf, np.nan]]).astype(dtype)
    t = np.tanh(x)
    assert kernels._sech2_near(x, t) is None
    assert _error(kernels.sech2(x, t), x) <= ULPS


def test_layouts_and_small_arrays():
    rng = np.random.default_rng(1)
    base = 0.5 * rng.normal(size=(96, 128))
    x = base.T  # not C-contiguous: its entries gathered from a copy in C order
    t = np.ascontiguousarray(np.tanh(x))
    assert kernels._sech2_near(x, t) is not None
    assert _error(kernels.sech2(x, t), x) <= ULPS
    assert _error(kernels.sech2(x, np.tanh(x)), x) <= ULPS  # tanh not C-contiguous: cosh
    assert _error(kernels.sech2(x, np.tanh(x).astype(np.float32)), x) <= ULPS  # other dtype
    for x in (np.linspace(-3, 3, 99), np.array(0.5), np.array(np.inf), np.empty(0),
              np.empty((0, 9000)), np.linspace(-3, 3, 99).astype(np.float32)):
        result = kernels.sech2(x, np.tanh(x))  # below _SECH2_MANY, 0-d and empty: cosh
        assert np.shape(result) == x.shape
        if x.size:
            assert _error(np.asarray(result, dtype=x.dtype), x) <= ULPS


def test_other_backends_ignore_the_tanh(torch):
    x = torch.linspace(-30, 30, 10001, dtype=torch.float64)
    result = kernels.sech2(x, torch.tanh(x))
    assert isinstance(result, torch.Tensor)
    assert _error(result.numpy(), x.numpy()) <= ULPS


def _mlp_arrays(n=128, d=16, h=96, k=10, scale=0.4, seed=2):
    """Pre-activations mostly where |tanh| <= 0.9, a few rows of X large enough to saturate."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:2] *= 8  # 2 of 128 rows: far entries, under the kernel's share
    return {"X": X, "Y": np.eye(k)[rng.integers(0, k, n)],
            "W1": scale * rng.normal(size=(d, h)) / np.sqrt(d), "b1": 0.1 * rng.normal(size=h),
            "W2": rng.normal(size=(h, k)) / np.sqrt(h), "b2": 0.1 * rng.normal(size=k)}


def test_mlp_gradient_passes_the_forward_tanh():
    g = einderiv.grad(MLP, WRT, MLP_SHAPES)
    assert "t0 = X @ W1 + b1\n    H = _xp.tanh(t0)\n" in g.source
    assert _sech2_calls(g.source) == [["t0", "H"]]
    arrays = _mlp_arrays()
    pre = arrays["X"] @ arrays["W1"] + arrays["b1"]
    assert pre.size >= kernels._SECH2_MANY
    assert kernels._sech2_near(pre, np.tanh(pre)) is not None  # the fast path in the gradient
    result = g(**arrays)
    # the IR interpreter's sech2(x), one argument (conftest checks it too), and a hand-written
    # gradient with the exact sech2
    for a, b in zip(result, g.evaluate_ir(**arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    H = np.tanh(pre)
    Z = H @ arrays["W2"] + arrays["b2"]
    S = np.exp(Z - Z.max(axis=1, keepdims=True))
    dZ = S / S.sum(axis=1, keepdims=True) - arrays["Y"]
    dA = (dZ @ arrays["W2"].T) * kernels.sech2(pre)
    for a, b in zip(result, (arrays["X"].T @ dA, dA.sum(axis=0), H.T @ dZ, dZ.sum(axis=0))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # and central differences of the loss along a random direction of W1
    f = einderiv.compile(MLP, MLP_SHAPES)
    V = np.random.default_rng(3).normal(size=arrays["W1"].shape)
    step = 1e-5
    plus = f(**{**arrays, "W1": arrays["W1"] + step * V})
    minus = f(**{**arrays, "W1": arrays["W1"] - step * V})
    assert abs((plus - minus) / (2 * step) - np.sum(result[0] * V)) < 1e-7 * abs(plus)


def _sech2_calls(source: str) -> list[list[str]]:
    """The arguments of each `_kernels.sech2(...)` call of a generated module, as text."""
    return [[pyast.unparse(a) for a in node.args] for node in pyast.walk(pyast.parse(source))
            if isinstance(node, pyast.Call) and pyast.unparse(node.func) == "_kernels.sech2"]


def test_tanh_of_another_argument_is_not_passed():
    # sech2(2 * x) and sech2(x) with tanh(x) and tanh(2 * x) inline, not lines: nothing to pass
    g = einderiv.grad("sum(tanh(x) * tanh(2 * x))", "x", {"x": ("n",)})
    assert sorted(_sech2_calls(g.source)) == [["t0"], ["x"]]
    x = np.linspace(-2, 2, 9)
    expected = 1 / np.cosh(x) ** 2 * np.tanh(2 * x) + 2 * np.tanh(x) / np.cosh(2 * x) ** 2
    np.testing.assert_allclose(g(x=x), expected, rtol=1e-13)


def test_a_users_own_tanh_gets_sech2_of_one_argument():
    # another implementation of tanh (here a wrong one, to tell them apart): its value is not
    # known to be tanh(x), and sech2 gets x alone
    book = default_rulebook().copy().add(parse_rules("elementwise tanh(x) = xp.sinh\n"))
    with using_rules(book):
        g = einderiv.grad(MLP, WRT, MLP_SHAPES)
        assert "_xp.sinh(" in g.source
        assert _sech2_calls(g.source) == [["t0"]]


def test_tanh_of_an_input_passed_in_the_returned_expression():
    g = einderiv.grad("H = tanh(x)\nsum(H @ A @ H)", "x", {"x": ("n",), "A": ("n", "n")})
    assert _sech2_calls(g.source) == [["x", "H"]]  # H is read by the return statement: kept
    rng = np.random.default_rng(4)
    x, A = rng.normal(size=5), rng.normal(size=(5, 5))
    np.testing.assert_allclose(g(x=x, A=A), (A + A.T) @ np.tanh(x) / np.cosh(x) ** 2,
                               rtol=1e-13)


def test_mlp_gradient_on_torch(torch):
    arrays = _mlp_arrays()
    expected = einderiv.grad(MLP, WRT, MLP_SHAPES)(**arrays)
    g = einderiv.grad(MLP, WRT, MLP_SHAPES, backend="torch")
    assert _sech2_calls(g.source) == [["t0", "H"]]
    result = g(**{k: torch.as_tensor(v) for k, v in arrays.items()})
    for a, b in zip(result, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-15)
