"""The three paths every result is checked on: the generated code, the IR interpreter, and the
printed formula compiled back with `einderiv.compile` (shared by the breaker and structural-zero
test files, which each had a copy)."""
from __future__ import annotations

import warnings

import numpy as np

import einderiv


def quiet(f, *a, **k):
    """f(*a, **k) as an array, numpy's warnings silenced (a pole's inf is the point)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(f(*a, **k))


def paths(result, **arrays) -> dict:
    """The generated code, the IR interpreter, and the printed formula compiled back, called
    with those of `arrays` the result takes."""
    back = einderiv.compile(result.formula, result.inputs)
    kw = {k: v for k, v in arrays.items() if k in result.inputs}
    return {"generated": quiet(result, **kw), "ir": quiet(result.evaluate_ir, **kw),
            "formula": quiet(back, **kw)}


def close(actual, expected, rtol=1e-12):
    """Every entry within rtol of the largest expected entry, and the same non-finite ones (nan
    where nan, the same infinities)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.array_equal(np.isfinite(actual), np.isfinite(expected)), (actual, expected)
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), (actual, expected)
    finite = np.isfinite(expected)
    assert np.array_equal(actual[~finite], expected[~finite], equal_nan=True), (actual, expected)
    if finite.any():
        scale = max(float(np.max(np.abs(expected[finite]))), 1e-300)
        err = float(np.max(np.abs(actual[finite] - expected[finite]))) / scale
        assert err <= rtol, f"relative error {err:.3g}\n{actual}\nvs\n{expected}"


def three(result, expected, rtol=1e-12, **arrays):
    """The generated code, the IR interpreter and the formula compiled back, each `close`."""
    for path, value in paths(result, **arrays).items():
        try:
            close(value, expected, rtol)
        except AssertionError as e:
            raise AssertionError(f"{path}: {e}\n{result.formula}") from None
