"""Breaker checks of today's vectorizer and kernels: an LSTM's joined input terms stacked once
for all steps, and stacks along an inner axis printed as `stack(..., axis=k)` (74b8bcc); a
quotient by a broadcast denominator split into a factor and a reciprocal, a negated operand's
sign joined to the constant (ff98b11); two minus signs cancelled through a matrix product
(f259c29); kernels.where's boolean condition cast to its bit mask (fd410c6); and
log_softmax_vjp's row sums as a product with ones (0ca5c1e).

Each fault found is a test of the right value, marked xfail(strict=True) until it is fixed.
conftest.py also checks every result called here against the IR interpreter and its printed
formula parsed back.
"""
import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels


# --- kernels ------------------------------------------------------------------------------------

def test_cross_entropy_gradient_over_a_long_float32_row_is_exact():
    # A vocabulary of 32000 classes, every logit but the top one log(0.1) below it: the row
    # sums of exp run over 32000 equal terms.
    g = einderiv.grad("-sum(y * log_softmax(Z, axis=1))", "Z", {"Z": ("n", "k"), "y": ("n", "k")})
    Z = np.full((2, 32000), np.log(0.1), np.float32)
    Z[:, 0] = 0.0
    y = np.zeros_like(Z)
    y[:, 1] = 1.0
    got = g(Z=Z, y=y)
    s = np.exp(Z.astype(np.float64))
    s /= s.sum(axis=1, keepdims=True)
    expected = s - y
    assert got.dtype == np.float32
    assert np.max(np.abs(got - expected) / np.abs(expected)) < 4 * np.finfo(np.float32).eps


def test_where_of_a_boolean_condition_stored_as_any_nonzero_byte():
    # numpy takes any nonzero byte of a bool array as true (np.frombuffer of packed flags).
    c = np.frombuffer(bytes([2, 0, 255, 1, 3]), dtype=np.bool_)
    for dtype in (np.float64, np.float32):
        a = np.array([0.1, 0.3, 1 / 3, 0.7, np.pi], dtype)
        np.testing.assert_array_equal(kernels.where(c, a, 0.0), np.where(c, a, 0.0))


def test_where_keeps_the_sign_of_a_negative_zero_branch():
    c = np.array([True, False])
    a = np.array([1.5, 2.5])
    for b in (-0.0, np.asarray(-0.0)):
        got = kernels.where(c, a, b)
        np.testing.assert_array_equal(np.signbit(got), [False, True])



# --- quotients by a broadcast denominator --------------------------------------------------------

SHAPES = {"d": ("n",), "x": ("n",), "c": ()}


@pytest.mark.parametrize("numerator", ["1", "c", "x[:, None]", "-x[:, None]"])
def test_a_quotient_no_wider_than_its_denominator_is_divided_first(numerator):
    # c / d[i] broadcast over 4 columns is the [n] quotient broadcast: dividing it first is the
    # smallest division (as before ff98b11), with no reciprocal times the numerator, no 1 *,
    # and one broadcast.
    text = f"sum({numerator} / (d[:, None] * ones(n, 4)), axis=1)"
    result = einderiv.compile(text, SHAPES)
    formula = result.formula
    assert "1 *" not in formula and formula.count("ones(") == 1, formula
    assert ("(1 / d)" in formula) == (numerator == "1"), formula
    rng = np.random.default_rng(0)
    x, d, c = rng.normal(size=3), rng.normal(size=3), np.array(0.7)
    arrays = {k: v for k, v in {"x": x, "d": d, "c": c}.items() if k in result.inputs}
    top = {"1": 1.0, "c": c, "x[:, None]": x, "-x[:, None]": -x}[numerator]
    np.testing.assert_allclose(result(**arrays), 4 * top / d, rtol=1e-12)


# --- stacks along an inner axis ----------------------------------------------------------------

def test_latex_of_a_stack_of_vectors_along_its_second_axis():
    # (was: a stack of vectors along axis 1, printed as stack(x, y, axis=1) since 74b8bcc,
    # read as stack(x, y), its transpose, and its entry [i, 0] as stack(x, y)_{i0})
    shapes = {"x": ("n",), "y": ("n",), "z": (2,)}
    along_1 = einderiv.compile("stack((x, y), axis=1) @ z", shapes)
    assert along_1.formula == "stack(x, y, axis=1) @ z"
    assert along_1.latex != einderiv.compile("stack((x, y)) @ z", {**shapes, "z": ("n",)}).latex
    # Its entry [i, 0] is x_i (so it read before 74b8bcc: 2 x_{i}).
    latex = einderiv.grad("sum(stack((x, y), axis=1) ** 2)", "x", shapes).latex
    assert "x_{i}" in latex and "_{i0}" not in latex, latex
