"""Issue 12, attacked: programs that the stable-by-construction pipeline still gets wrong.

Each test states the right value from an independent reference (mpmath at 50 digits, or a
closed form) and is a strict xfail naming what breaks: a fix turns its mark into a failure, to
remove. Float64 unless a test says otherwise; tolerance 1e-10 relative, as test_stability.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv import cli

mp = pytest.importorskip("mpmath")
mp.mp.dps = 50

VEC = {"x": ("n",), "y": ("n",)}


def sig(t):
    return 1 / (1 + mp.exp(-t))


def softplus(t):
    return mp.log1p(mp.exp(t))


def close(got, want, rtol=1e-10):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), got
    scale = np.maximum(np.abs(want), np.finfo(float).tiny)
    err = np.max(np.abs(got - want) / scale)
    assert err <= rtol, f"got {got}, want {want}, relative error {err:.2e}"


# --- a rewrite sigmoid(-u) - sigmoid(u) = -tanh(0.5 * u) made these worse (it was reverted:
# the derivative became -0.5 * (1 - tanh(u/2) ** 2), which cancels for |u| > 20) -----------

def test_sigmoid_difference_gradient_large_u():
    x = np.array([30.0, -30.0, 100.0])
    got = einderiv.grad("sum(sigmoid(-x) - sigmoid(x))", "x", VEC)(x=x)
    close(got, [float(-2 * sig(t) * sig(-t)) for t in x])


def test_symmetric_softplus_hessian_large_x():
    x = np.array([30.0, -30.0, 45.0])
    got = einderiv.hessian("sum(softplus(x) + softplus(-x))", "x", VEC)(x=x)
    close(np.diag(got), [float(2 * sig(t) * sig(-t)) for t in x])


def test_sigmoid_difference_gradient_float32():
    x = np.array([10.0, -12.0], dtype=np.float32)
    got = einderiv.grad("sum(sigmoid(-x) - sigmoid(x))", "x", VEC)(x=x)
    close(got, [float(-2 * sig(mp.mpf(float(t))) * sig(-mp.mpf(float(t)))) for t in x], rtol=1e-4)


# --- the binary cross-entropy rewrite cancels in the value ---------------------------------

@pytest.mark.xfail(strict=True, reason="rewrite y softplus(-u) + (1 - y) softplus(u) = "
                   "softplus(u) - y u cancels for a confident right answer: per-example loss 0 "
                   "at z = 40 (right 4.2e-18), relative error 3e-7 at z = 20")
def test_bce_per_example_value_confident():
    z, y = np.array([20.0, 40.0]), np.array([1.0, 1.0])
    got = einderiv.compile("-(y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z)))",
                           {"z": ("n",), "y": ("n",)})(z=z, y=y)
    close(got, [float(softplus(-t)) for t in z])


# --- forms the rewrites miss: inf or nan where the value is finite -------------------------

@pytest.mark.xfail(strict=True, reason="log(mean(exp(x))) (mean lowers to sum / size, which "
                   "no rewrite matches) overflows: inf where it is logsumexp(x) - log(n)")
def test_log_mean_exp():
    x = np.array([1000.0, 2000.0, 3000.0])
    xm = [mp.mpf(t) for t in x]
    want = mp.log(mp.fsum(mp.exp(t) for t in xm) / 3)
    vg = einderiv.value_and_grad("log(mean(exp(x)))", "x", VEC)
    value, grad = vg(x=x)
    close(value, float(want))
    close(grad, [float(mp.exp(t - mp.log(mp.fsum(mp.exp(s) for s in xm)))) for t in xm])


@pytest.mark.xfail(strict=True, reason="-log(softmax(x)[k]), cross-entropy by class index, is "
                   "not rewritten to log_softmax: inf value and nan gradient at logit gaps > 709")
def test_cross_entropy_by_index():
    x = np.array([-1000.0, 0.0, 1000.0])
    xm = [mp.mpf(t) for t in x]
    lse = mp.log(mp.fsum(mp.exp(t) for t in xm))
    vg = einderiv.value_and_grad("-log(softmax(x)[0])", "x", VEC)
    value, grad = vg(x=x)
    close(value, float(lse - xm[0]))
    # softmax(x) - e_0, exactly [-1, e^-1000, 1] to double precision
    np.testing.assert_allclose(grad, [-1.0, 0.0, 1.0], rtol=1e-10, atol=1e-300)


@pytest.mark.xfail(strict=True, reason="log(exp(x) + exp(y)) (logaddexp) is not rewritten: inf "
                   "value, nan gradient past 709")
def test_log_add_exp():
    x, y = np.array([800.0]), np.array([1.0])
    want = mp.log(mp.exp(mp.mpf(800)) + mp.exp(mp.mpf(1)))
    vg = einderiv.value_and_grad("sum(log(exp(x) + exp(y)))", "x", VEC)
    value, grad = vg(x=x, y=y)
    close(value, float(want))
    close(grad, [float(sig(mp.mpf(799)))])


@pytest.mark.xfail(strict=True, reason="softmax written with a transpose, exp(X).T / "
                   "sum(exp(X), axis=1), is not matched: nan where it is softmax(X, axis=1).T")
def test_transposed_softmax():
    X = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    got = einderiv.compile("exp(X).T / sum(exp(X), axis=1)", {"X": ("n", "n")})(X=X)
    np.testing.assert_allclose(got, np.eye(2), rtol=1e-10, atol=1e-300)


@pytest.mark.xfail(strict=True, reason="sqrt(sum(x ** 2)) is not rewritten to norm(x): the "
                   "squares overflow and the gradient is silently 0 (value inf) at 1e200")
def test_sqrt_sum_squares_large():
    x = np.array([1e200, 1e200])
    vg = einderiv.value_and_grad("sqrt(sum(x ** 2))", "x", VEC)
    value, grad = vg(x=x)
    close(value, float(mp.sqrt(2) * mp.mpf(1e200)))
    close(grad, [float(1 / mp.sqrt(2))] * 2)


# --- smooth functions written with kinks -----------------------------------------------------

@pytest.mark.xfail(strict=True, reason="square(abs(x)) and abs(x) * abs(x) are x ** 2, but only "
                   "abs(u) ** 2 is rewritten: Hessian 0 at x = 0 (right 2)")
@pytest.mark.parametrize("expr", ["sum(square(abs(x)))", "sum(abs(x) * abs(x))"])
def test_abs_squared_other_spellings_hessian_at_zero(expr):
    got = einderiv.hessian(expr, "x", VEC)(x=np.array([0.0, 1.0]))
    close(got, 2 * np.eye(2))


@pytest.mark.xfail(strict=True, reason="the textbook stable BCE-with-logits, relu(z) - z y + "
                   "log1p(exp(-abs(z))), is softplus(z) - z y (smooth), but no rewrite knows it: "
                   "at z = 0 (every margin at w = 0) the gradient is -y (right 0.5 - y)")
def test_stable_bce_with_logits_at_zero_gradient():
    y = np.array([1.0, 0.0, 0.5])
    got = einderiv.grad("sum(relu(z) - z * y + log1p(exp(-abs(z))))", "z",
                        {"z": ("n",), "y": ("n",)})(z=np.zeros(3), y=y)
    close(got, 0.5 - y)


@pytest.mark.xfail(strict=True, reason="same form with maximum(z, 0): the gradient is right by "
                   "the 1/2 convention, but the Hessian at z = 0 is 0 (right 0.25 I): Newton's "
                   "method from w = 0 sees no curvature")
def test_stable_bce_with_logits_at_zero_hessian():
    got = einderiv.hessian("sum(maximum(z, 0) - z * y + log(1 + exp(-abs(z))))", "z",
                           {"z": ("n",), "y": ("n",)})(z=np.zeros(2), y=np.array([1.0, 0.0]))
    close(got, 0.25 * np.eye(2))


# --- stable kernels at the edges -------------------------------------------------------------

@pytest.mark.xfail(strict=True, reason="Hessian of norm(x) ** 2 at a subnormal x: "
                   "t0 * (-(x / t1) / t1) is 5e-324 * -inf; -inf and nan where it is 2 I")
def test_norm_squared_hessian_subnormal():
    got = einderiv.hessian("norm(x) ** 2", "x", VEC)(x=np.array([5e-324, 0.0]))
    close(got, 2 * np.eye(2))


# --- user rewrites: a wrong one is applied, and --check cannot see it ------------------------

WRONG_SOFTPLUS = "rewrite log(1 + exp(u)) = softplus(-u)\n"


@pytest.mark.xfail(strict=True, reason="a wrong rewrite from --rules is applied silently, and "
                   "--check compares with finite differences of the rewritten program, so it "
                   "passes (4e-11) on -sigmoid(-x), the derivative of softplus(-x), not of "
                   "log(1 + exp(x)) (right: sigmoid(x))")
def test_wrong_user_rewrite_is_caught(tmp_path, capsys):
    rules = tmp_path / "wrong.rules"
    rules.write_text(WRONG_SOFTPLUS)
    code = cli.main(["grad", "sum(log(1 + exp(x)))", "--wrt", "x", "--shape", "x=n",
                     "--rules", str(rules), "--check"])
    capsys.readouterr()
    assert code != 0


@pytest.mark.xfail(strict=True, reason="rules check tries a rewrite only at the first input "
                   "range where both sides are finite: log(x ** 2) = 2 * log(x) passes, though "
                   "it turns finite values (x < 0) into nan")
def test_rules_check_refuses_domain_shrinking_rewrite(tmp_path, capsys):
    rules = tmp_path / "domain.rules"
    rules.write_text("rewrite log(x ** 2) = 2 * log(x)\n")
    code = cli.main(["rules", "check", str(rules)])
    capsys.readouterr()
    assert code == 1


@pytest.mark.xfail(strict=True, reason="rules check holds rewrites (exact identities) to the "
                   "finite-difference tolerance 1e-6: a rewrite that moves every value by 1e-7 "
                   "relative passes")
def test_rules_check_refuses_inexact_rewrite(tmp_path, capsys):
    rules = tmp_path / "inexact.rules"
    rules.write_text("rewrite log(1 + exp(u)) = softplus(u) + 1e-7\n")
    code = cli.main(["rules", "check", str(rules)])
    capsys.readouterr()
    assert code == 1
