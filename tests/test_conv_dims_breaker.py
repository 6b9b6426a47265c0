"""Faults found by a breaker in issue 14's convolutions (item 7) and dimension arithmetic
(item 2). Each test states the right behaviour from an independent reference (numpy) and is
marked xfail(strict=True) until the library is fixed."""
from __future__ import annotations

import numpy as np
import pytest

import einderiv

X = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


# -- negative derived sizes --------------------------------------------------------------------

@pytest.mark.no_roundtrip  # the call must fail; the IR interpreter already refuses it
# Was a silent -2 from the generated code (sum(ones(n - 5)) simplified to size(n - 5)).
@pytest.mark.parametrize("text", ["sum(x) + sum(ones(n - 5))", "size(n - 5)",
                                  "trace(eye(n - 5))"])
def test_negative_derived_size_of_a_constructor_is_a_shape_error(text):
    f = einderiv.compile("x: [n]; " + text)
    with pytest.raises(einderiv.ShapeError, match="n-5|n - 5"):
        f(x=np.ones(3))


@pytest.mark.no_roundtrip
def test_negative_derived_size_of_ones_names_the_dimension():
    f = einderiv.compile("x: [n]; ones(n - 5)")
    with pytest.raises(einderiv.ShapeError, match="n-5|n - 5"):
        f(x=np.ones(3))


# -- tall eye with named sizes -----------------------------------------------------------------

def test_vector_times_tall_eye_of_names():
    f = einderiv.compile("x: [n]; x @ eye(n, n - 1)")
    np.testing.assert_allclose(f(x=X), X @ np.eye(5, 4))  # [1, 2, 3, 4]


@pytest.mark.xfail(strict=True, reason="x @ eye(n, k) with sizes={'k': 2} < n becomes "
                   "pad(x, ((0, 2 - n),)), a negative pad: ShapeError about a slice the user "
                   "never wrote; numpy gives x[:2]")
def test_vector_times_eye_with_fixed_smaller_size():
    f = einderiv.compile("x: [n]; x @ eye(n, k)", sizes={"k": 2})
    np.testing.assert_allclose(f(x=X), X @ np.eye(5, 2))  # [1, 2]


# -- "full"/"same" modes with a kernel whose length is a name --------------------------------

NAMED_KERNEL = [
    ('correlate(x, x, mode="full")', {"x": ("n",)}, lambda x, y: np.correlate(x, x, "full")),
    ('correlate(x, x, mode="same")', {"x": ("n",)}, lambda x, y: np.correlate(x, x, "same")),
    ('convolve(x, x, mode="same")', {"x": ("n",)}, lambda x, y: np.convolve(x, x, "same")),
    ('correlate(x, y, mode="full")', {"x": ("n",), "y": ("n - 1",)},
     lambda x, y: np.correlate(x, y, "full")),
    ('convolve(x, y, stride=2)', {"x": ("n",), "y": ("n - 1",)},
     lambda x, y: np.convolve(x, y)[::2]),
]


_SAME = pytest.mark.xfail(strict=True, reason='mode="same" pads by k // 2 and (k - 1) // 2: '
                          "with a named k the padded length n + k // 2 + (k - 1) // 2 is not "
                          "one dimension (quotients do not add to names), so it is refused "
                          "with a ShapeError; numpy gives n entries")


@pytest.mark.parametrize("text, shapes, reference", [
    pytest.param(t, s, r, marks=[_SAME] if "same" in t else [], id=t)
    for t, s, r in NAMED_KERNEL])
def test_full_and_same_modes_with_a_named_kernel_length(text, shapes, reference):
    y = np.array([1.0, 0.0, -1.0, 2.0])
    arrays = {"x": X, "y": y} if "y" in shapes else {"x": X}
    got = einderiv.compile(text, shapes)(**arrays)
    np.testing.assert_allclose(got, reference(X, y))


def test_full_mode_convolve_of_named_kernel_works_already():
    """The control for the test above: the default (full) convolve of the same shapes works."""
    y = np.array([1.0, 0.0, -1.0, 2.0])
    f = einderiv.compile("convolve(x, y)", {"x": ("n",), "y": ("n - 1",)})
    np.testing.assert_allclose(f(x=X, y=y), np.convolve(X, y))
