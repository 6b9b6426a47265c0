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
