"""Breaker tests of sigmoid's fused kernel (kernels.sigmoid's `negated` and `times`, which the
generated code calls for `sigmoid(-m) * y`) and of its derivative dsigmoid.

Each test is a fault found by attacking the two changes, with its right value from mpmath.
"""
import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels


def scaled(x, times, negated=False):
    """times * sigmoid(+-x) at 50 digits, rounded once to float64."""
    with mp.workdps(50):
        t = -mp.mpf(float(x)) if negated else mp.mpf(float(x))
        return float(mp.mpf(float(times)) / (1 + mp.exp(-t)))


def ulps(got, want, dtype):
    """|got - want| in units of the spacing of `dtype` at want (subnormal spacing at least)."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    with np.errstate(over="ignore"):  # (the spacing at inf)
        spacing = np.abs(np.spacing(want.astype(dtype))).astype(float)
    return np.abs(got - want) / np.maximum(spacing, float(np.finfo(dtype).smallest_subnormal))


# 1. A product with sigmoid far left, where sigmoid(x) is subnormal or 0 but the product is not
# (a loss scaled as mixed precision scales it: the scale is there to keep small gradients from
# underflowing). The careful form multiplied by `times` after the sigmoid had underflowed: 0 for
# 1024 * sigmoid(-18) in float16 (1.56e-5), 0 for 65536 * sigmoid(-110) in float32 and
# 1e300 * sigmoid(-800) in float64, and digits lost short of that; the fast form's one division
# keeps them, so an entry's value depended on whether another entry was below the bound.
SCALED = [(np.float16, 1024.0, [-18.0, -14.0, -10.0, 0.0, 3.0]),
          (np.float32, 65536.0, [-110.0, -95.0, -30.0, 0.0, 3.0]),
          (np.float64, 1e300, [-800.0, -740.0, -30.0, 0.0, 3.0])]


@pytest.mark.parametrize("dtype,scale,xs", SCALED, ids=["float16", "float32", "float64"])
@pytest.mark.parametrize("negated", [False, True])
def test_a_scaled_sigmoid_keeps_the_digits_its_product_has(dtype, scale, xs, negated):
    x = np.array([-t for t in xs] if negated else xs, dtype)
    want = [scaled(t, scale, negated) for t in x]
    for times in (scale, np.full(x.shape, scale, dtype)):
        got = kernels.sigmoid(x, negated=negated, times=times)
        assert got.dtype == dtype
        assert ulps(got, want, dtype).max() <= 4, (got, want)


def test_a_scaled_gradient_in_half_precision():
    """The gradient of a loss scaled by 1024 (softplus's is 1024 * sigmoid(x), one fused call):
    at x = -18 it is 1.56e-5, a float16 number, not 0; on torch too."""
    g = einderiv.grad("x: [n]; sum(1024 * softplus(x))", "x")
    assert "times=1024.0" in g.source
    x = np.array([-18.0, -14.0, -1.0], np.float16)
    want = [scaled(t, 1024.0) for t in x]
    got = g(x=x)
    assert got.dtype == np.float16 and ulps(got, want, np.float16).max() <= 4, got
    torch = pytest.importorskip("torch")
    got = einderiv.grad("x: [n]; sum(1024 * softplus(x))", "x", backend="torch")(
        x=torch.from_numpy(x))
    assert got.dtype == torch.float16 and ulps(got.numpy(), want, np.float16).max() <= 4, got


def test_the_recomputed_far_left_in_any_layout():
    """numpy's four passes in place, with the entries where exp overflows computed again: in a
    transposed (Fortran-ordered) array, beside a nan and infinities, with a factor that is an
    array of the layout or a Python float; inf times a positive sigmoid is inf, not nan."""
    x = np.array([[-800.0, 1.0, 30.0, -1e4], [np.nan, -np.inf, 720.0, -30.0]]).T
    t = np.array([[1e300, -2.0, 0.5, 1e300], [1.0, 3.0, np.inf, 7.0]]).T
    for negated in (False, True):
        arg = -x if negated else x
        for times in (t, 1e300):
            got = kernels.sigmoid(arg, negated=negated, times=times)
            tb = np.broadcast_to(times, x.shape)
            want = [[np.nan if np.isnan(a) else 0.0 if a == -np.inf else
                     np.inf if b == np.inf else scaled(a, b) for a, b in zip(r, q)]
                    for r, q in zip(x, tb)]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert ulps(np.nan_to_num(got), np.nan_to_num(want), np.float64).max() <= 4


# 2. kernels.sigmoid's new parameters were positional: a rule file that names it for a
# function of two arguments (`elementwise sig2(x, y) = kernel.sigmoid`) computed sigmoid(-x)
# wherever y was a true scalar, and "the truth value of an array is ambiguous" for an array,
# where a kernel of one argument said so before. Only the generated code passes them, by name.
def test_a_rule_that_gives_the_kernel_two_arguments_is_refused(tmp_path):
    from einderiv.rulebook import default_rulebook
    from einderiv.rulebook.table import using_rules
    mine = tmp_path / "two.rules"
    mine.write_text("elementwise sig2(x, y) = kernel.sigmoid\n")
    with using_rules(default_rulebook().copy().load(mine)):
        for shape in ("[]", "[n]"):
            f = einderiv.compile(f"x: [n]; y: {shape}; sig2(x, y)")
            y = np.ones(() if shape == "[]" else 2)
            for run in (f, f.evaluate_ir):
                with pytest.raises(einderiv.EvaluationError, match="positional argument"):
                    run(x=np.array([1.0, 2.0]), y=y)
