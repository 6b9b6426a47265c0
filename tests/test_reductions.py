"""The reductions of issue 14, item 3: var, std, max, min, prod (every axis or chosen ones) and
clip(x, lo, hi).

For each, over a stack of rows `X: [b, n]` (every entry, along each axis, along both) and a
3-D `T: [b, n, k]`: the value against numpy (var and std against 30-digit mpmath too); the
gradient and Hessian of `sum(sin(F))` against central finite differences; the generated code
against the IR interpreter and the printed formula compiled back (tests/conftest.py checks that
for every result, and the tests below do it once explicitly); the gradient by a vector is
matrix code, no dense n x n. Then the conventions: the gradient of max and min is split evenly
among ties (as JAX), clip's at a bound is split between x and the bound, prod's gradient is
exact at zeros and its Hessian is nan where an entry is exactly 0 (documented in
rules/tensor.rules and docs/language.md).
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error
from einderiv.generate.formula import output_programs

M = pytest.importorskip("mpmath")

MATRIX = {"X": ("b", "n")}
CUBE = {"T": ("b", "n", "k")}
AXES = [(None, None), ("axis=1", 1), ("axis=0", 0), ("(0, 1)", (0, 1))]
NUMPY = {"var": np.var, "std": np.std, "max": np.max, "min": np.min, "prod": np.prod}
CASES = [(name, text, axis) for name in NUMPY for text, axis in AXES]


def call(name: str, arg: str, axis_text: str | None) -> str:
    return f"{name}({arg})" if axis_text is None else f"{name}({arg}, {axis_text})"


def draw(seed: int, shape=(3, 4)) -> np.ndarray:
    """Entries of either sign, apart from each other and from 0: no ties, no zeros."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.linspace(0.3, 1.7, int(np.prod(shape)))).reshape(shape) * \
        rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("name,axis_text,axis", CASES)
def test_value_gradient_and_hessian(name, axis_text, axis):
    X = draw(1)
    f = einderiv.compile(call(name, "X", axis_text), MATRIX)
    assert relative_error(f(X=X), NUMPY[name](X, axis=axis)) < 1e-14
    loss = f"sum(sin({call(name, 'X', axis_text)}))"
    value = einderiv.compile(loss, MATRIX)
    g = einderiv.grad(loss, "X", MATRIX)
    assert relative_error(g(X=X), finite_difference(value, {"X": X}, "X")) < 1e-7
    h = einderiv.hessian(loss, "X", MATRIX)
    assert relative_error(h(X=X), finite_difference(g, {"X": X}, "X")) < 1e-6
    if name in ("max", "min"):  # piecewise linear: the Hessian is 0 off the extreme entries
        m = NUMPY[name](X, axis=axis)
        off = X != (m if axis is None else np.expand_dims(m, axis))
        assert (h(X=X)[off] == 0).all() and (h(X=X)[..., off] == 0).all()


@pytest.mark.parametrize("name", ["var", "std"])
def test_var_and_std_against_mpmath(name):
    """Population statistics (ddof 0, numpy's default) of data far from 0, where the one-pass
    E[x**2] - E[x]**2 would keep no digit, against 30 digits."""
    M.mp.dps = 30
    X = 1e8 + draw(2)
    f = einderiv.compile(f"{name}(X, axis=1)", MATRIX)
    expected = []
    for row in X:
        entries = [M.mpf(float(v)) for v in row]
        mean = M.fsum(entries) / len(entries)
        var = M.fsum((v - mean) ** 2 for v in entries) / len(entries)
        expected.append(float(var if name == "var" else M.sqrt(var)))
    assert relative_error(f(X=X), np.array(expected)) < 1e-9 * max(expected)
    assert np.allclose(f(X=X), np.array(expected), rtol=1e-7)


@pytest.mark.parametrize("name", list(NUMPY))
def test_batched_three_axes(name):
    """A stack of matrices, reduced over its two last axes and over the middle one."""
    T = draw(3, (2, 3, 2))
    for axis_text, axis in (("axis=(1, 2)", (1, 2)), ("1", 1), ("axis=-1", -1)):
        text = call(name, "T", axis_text)
        assert relative_error(einderiv.compile(text, CUBE)(T=T), NUMPY[name](T, axis=axis)) \
            < 1e-14
        loss = f"sum(cos({text}))"
        g = einderiv.grad(loss, "T", CUBE)
        fd = finite_difference(einderiv.compile(loss, CUBE), {"T": T}, "T")
        assert relative_error(g(T=T), fd) < 1e-7


@pytest.mark.parametrize("name", list(NUMPY))
def test_three_paths_and_matrix_code(name):
    """Generated code, IR interpreter and the formula parsed back agree; the gradient of the
    reduction of a vector is vector code (no eye, outer, diag or n x n broadcast)."""
    x = draw(4, (5,))
    shapes = {"x": ("n",)}
    for result in (einderiv.compile(f"{name}(x)", shapes), einderiv.grad(f"{name}(x)", "x",
                                                                         shapes)):
        out = result(x=x)
        assert relative_error(result.evaluate_ir(x=x), out) < 1e-14
        ((_, text),) = output_programs(result.formula, [n for n, _ in result.program.outputs])
        assert relative_error(einderiv.compile(text, shapes)(x=x), out) < 1e-14
    formula = einderiv.grad(f"{name}(x)", "x", shapes).formula
    for dense in ("eye(", "outer(", "diag(", "[:, None]", "[None"):
        assert dense not in formula, formula


def test_max_and_min_split_ties_evenly():
    """As JAX: each of the k entries at the maximum gets 1 / k of the gradient."""
    X = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0], [5.0, 5.0, 5.0]])
    g = einderiv.grad("sum(max(X, axis=1))", "X", MATRIX)
    assert g.formula == "max_weights(X)"
    np.testing.assert_array_equal(g(X=X), [[0, 0.5, 0.5], [1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    g = einderiv.grad("max(X)", "X", MATRIX)
    np.testing.assert_array_equal(g(X=X), np.where(X == 5, 1 / 3, 0))
    g = einderiv.grad("sum(min(X, axis=0))", "X", MATRIX)
    np.testing.assert_array_equal(g(X=X), [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    g = einderiv.grad("min(X)", "X", MATRIX)
    np.testing.assert_array_equal(g(X=X), np.where(X == -1, 1.0, 0))
    # a scalar's max over no axes is itself
    assert float(einderiv.grad("max(x)", "x", {"x": ()})(x=2.0)) == 1.0


def test_clip_with_numbers_and_tensors_as_bounds():
    x = np.array([-2.0, 0.2, 0.5, 0.8, 3.0])
    shapes = {"x": ("n",), "lo": ("n",), "hi": ()}
    f = einderiv.compile("clip(x, 0.2, 0.8)", shapes)
    np.testing.assert_array_equal(f(x=x), np.clip(x, 0.2, 0.8))
    # at a bound, half to x and half to the bound (maximum's and minimum's convention)
    np.testing.assert_array_equal(einderiv.grad("sum(clip(x, 0.2, 0.8))", "x", shapes)(x=x),
                                  [0, 0.5, 1, 0.5, 0])
    lo = np.array([0.0, -1.0, 1.0, 0.0, 0.0])
    g = einderiv.compile("clip(x, lo, hi)", shapes)
    np.testing.assert_array_equal(g(x=x, lo=lo, hi=2.0), np.clip(x, lo, 2.0))
    loss = "sum(sin(clip(x, lo, hi)) * x)"
    y = np.array([-2.0, 0.3, 0.5, 0.9, 3.0])
    for wrt in ("x", "lo", "hi"):
        d = einderiv.grad(loss, wrt, shapes)
        a = {"x": y, "lo": lo, "hi": 2.0}
        fd = finite_difference(einderiv.compile(loss, shapes), a, wrt)
        assert relative_error(d(**a), fd) < 1e-7, wrt


def test_prod_at_zeros():
    """The gradient, the product of the other entries, is exact at one zero and at two (not
    prod / x = 0 / 0); so is the Hessian, the product of the entries other than two, at one,
    two and three zeros (rules/tensor.rules)."""
    shapes = {"x": ("n",)}
    g = einderiv.grad("prod(x)", "x", shapes)
    assert g.formula == "prod_others(x)"
    np.testing.assert_array_equal(g(x=np.array([2.0, 0.0, 3.0, -1.0])), [0, -6, 0, 0])
    np.testing.assert_array_equal(g(x=np.array([0.0, 2.0, 0.0])), [0, 0, 0])
    h = einderiv.hessian("prod(x)", "x", shapes)
    np.testing.assert_array_equal(h(x=np.array([1.0, 2.0, 3.0])), [[0, 3, 2], [3, 0, 1],
                                                                     [2, 1, 0]])
    np.testing.assert_array_equal(h(x=np.array([2.0, 0.0, 3.0])), [[0, 3, 0], [3, 0, 2],
                                                                     [0, 2, 0]])
    np.testing.assert_array_equal(h(x=np.array([0.0, 5.0, 0.0, 2.0])),
                                  [[0, 0, 10, 0], [0, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(h(x=np.array([0.0, 0.0, 0.0])), np.zeros((3, 3)))
    # along an axis, with zeros in some rows
    X = np.array([[1.0, 0.0, 2.0], [3.0, 4.0, 5.0]])
    g = einderiv.grad("sum(prod(X, axis=1))", "X", MATRIX)
    np.testing.assert_array_equal(g(X=X), [[0, 2, 0], [20, 15, 12]])


def test_std_at_constant_data_is_nan():
    """std has no derivative where every entry is equal: nan (0 / 0), as JAX's, as documented;
    var's is 0 there."""
    shapes = {"x": ("n",)}
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.isnan(einderiv.grad("std(x)", "x", shapes)(x=np.ones(3))).all()
    np.testing.assert_array_equal(einderiv.grad("var(x)", "x", shapes)(x=np.ones(3)), 0)


def test_var_std_axis_errors():
    with pytest.raises(einderiv.errors.ShapeError, match="out of bounds"):
        einderiv.compile("var(X, axis=2)", MATRIX)
    with pytest.raises(einderiv.errors.ParseError, match="unexpected keyword"):
        einderiv.compile("std(X, correction=1)", MATRIX)


@pytest.mark.parametrize("backend", ["torch", "dask"])
def test_other_backends(backend):
    """The kernels (max_weights, prod_others) and xp.max/min/prod run on torch and dask arrays
    and give numpy's results."""
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    X = np.array([[1.0, 0.0, 3.0], [2.0, 3.0, 3.0]])
    loss = "sum(max(X, axis=1)) + prod(X) + var(X) + sum(min(X, axis=0)) + std(X)"
    expected = einderiv.grad(loss, "X", MATRIX)(X=X)
    if backend == "torch":
        import torch
        arg = torch.tensor(X)
    else:
        import dask.array
        arg = dask.array.from_array(X)
    out = einderiv.grad(loss, "X", MATRIX, backend=backend)(X=arg)
    out = out.compute() if backend == "dask" else out.numpy()
    assert relative_error(out, expected) < 1e-14
