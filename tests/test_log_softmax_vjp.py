"""log_softmax_vjp: log_softmax's pullback in one call (rules/tensor.rules, shape rule
`cotangent`), which reverse mode applies instead of contracting the adjoint with the
Jacobian's dozen terms.

- the kernel against mpmath at 200 digits, where the textbook `g - softmax(x) * sum(g)`
  cancels (a confident largest entry) and where it does not, along every axis, at ties, at
  infinite and nan entries, in float32, and on the rule's own split for other array libraries;
- gradients through it against the Jacobian's pullback (`fused=False`), JAX and finite
  differences; Hessians and hvp through its own derivative rules;
- the rule check catches a kernel that is not the pullback of its primitive's rule;
- the language: shapes must match, the axis is a keyword or a third argument.
"""
import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv.derive import derivatives
from einderiv.errors import EinderivError, ShapeError
from einderiv.evaluate import kernels
from einderiv.evaluate.plan import Plan
from einderiv.ir.nodes import Var
from einderiv.lower.lower import lower
from einderiv.parse import parse
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.verify import check_function


def reference(x, g, axes):
    """g - softmax(x) * sum(g) along the axes (an int or a tuple), at 200 digits."""
    x, g = np.asarray(x, float), np.asarray(g, float)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    axes = tuple(a % x.ndim for a in axes)
    rest = [a for a in range(x.ndim) if a not in axes]
    xm = np.transpose(x, rest + list(axes)).reshape(*[x.shape[a] for a in rest], -1)
    gm = np.transpose(g, rest + list(axes)).reshape(xm.shape)
    out = np.empty(xm.shape)
    with mp.workdps(200):
        for idx in np.ndindex(xm.shape[:-1]):
            xs = [mp.mpf(float(v)) for v in xm[idx]]
            gs = [mp.mpf(float(v)) for v in gm[idx]]
            top = max(xs)
            es = [mp.exp(v - top) for v in xs]
            total, sg = sum(es), sum(gs)
            out[idx] = [float(gi - ei / total * sg) for gi, ei in zip(gs, es)]
    full = out.reshape(*[x.shape[a] for a in rest], *[x.shape[a] for a in axes])
    return np.transpose(full, np.argsort(rest + list(axes)))


def ulps(got, want) -> float:
    """Largest error in units of the reference's last place (0 where both are 0)."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = np.spacing(np.maximum(np.abs(want), np.finfo(float).tiny))
    return float(np.max(np.abs(got - want) / scale))


@pytest.mark.parametrize("shape,axis", [((11, 9), -1), ((11, 9), 0), ((3, 4, 5), 1),
                                        ((6,), 0), ((2, 3, 4), 2)])
def test_kernel_matches_200_digits_confident_or_not(shape, axis):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * 3
    g = rng.normal(size=shape)
    # some slices led by 30, 60, 100 (softmax rounds to 1 there; 1 - s_m is e^-lead)
    flat = np.moveaxis(x, axis, -1).reshape(-1, shape[axis])
    for row, lead in zip(range(0, len(flat), 2), (30.0, 60.0, 100.0, 745.0)):
        flat[row, row % shape[axis]] += lead
    x = np.moveaxis(flat.reshape(np.moveaxis(x, axis, -1).shape), -1, axis)
    got = kernels.log_softmax_vjp(x, g, axis=axis)
    want = reference(x, g, axis)
    # (a few ulps: g_j - s_j * sum(g) rounds twice; where it is a genuine difference of two
    # terms of one size, both ways lose the same digits, so the bound is relative to g)
    assert np.max(np.abs(got - want) / (np.abs(want) + 1e-16 * np.abs(g).max())) < 1e-14


def test_cross_entropy_at_a_confident_right_class_is_exact():
    """-y at the right class, led by 30 and 100: softmax(z) - y there is -(1 - s_m), e^-30
    and e^-100 to full precision (the textbook form gives 1e-13 of noise and 0)."""
    x = np.array([[30.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 800.0, 1.0]])
    y = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    got = kernels.log_softmax_vjp(x, -y, axis=-1)
    want = reference(x, -y, -1)
    assert ulps(got, want) <= 4
    assert got[0, 0] == pytest.approx(-2 * np.exp(-30) / (1 + 2 * np.exp(-30)), rel=1e-15)
    assert got[1, 0] == pytest.approx(-2 * np.exp(-100), rel=1e-15)


def test_ties_infinities_and_nan_as_the_rules_split():
    """Where the fast path does not hold (a tie for the maximum, an infinite or nan maximum,
    a slice of -inf), the result is the Jacobian rule's split, term by term."""
    x = np.array([[2.0, 2.0, 0.0], [np.inf, 1.0, 0.0], [-np.inf, -np.inf, -np.inf],
                  [np.nan, 0.0, 1.0], [-np.inf, 3.0, 1.0]])
    g = np.array([[1.0, -2.0, 0.5], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0],
                  [0.5, -1.0, 2.0]])
    got = kernels.log_softmax_vjp(x, g, axis=-1)
    s = kernels.softmax(x, axis=-1)
    top = kernels.argmax_onehot(s, axis=-1)
    rest = 1 - top
    with np.errstate(invalid="ignore"):
        split = g * (top * kernels.complement(s, axis=-1) + rest) \
            - s * np.sum(g * rest, axis=-1, keepdims=True) \
            - rest * s * np.sum(g * top, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, split, rtol=1e-15, atol=0)
    np.testing.assert_allclose(got[0], reference(x[:1], g[:1], -1)[0], rtol=1e-15)
    assert np.all(np.isnan(got[3]))  # a nan logit: no value is right
    np.testing.assert_allclose(got[4], reference(x[4:], g[4:], -1)[0], rtol=1e-15)


def test_float32_stays_float32_and_exact():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(5, 7)) * 3).astype(np.float32)
    x[0, 2] += 40
    g = rng.normal(size=(5, 7)).astype(np.float32)
    got = kernels.log_softmax_vjp(x, g, axis=1)
    assert got.dtype == np.float32
    want = reference(x.astype(np.float64), g.astype(np.float64), 1)
    # a few float32 roundings of g and of softmax(x) * sum(g), the terms it is the difference of
    scale = np.abs(g) + np.abs(g).sum(axis=1, keepdims=True)
    assert np.all(np.abs(got - want) <= 4 * np.finfo(np.float32).eps * scale)
    assert abs(got[0, 2] - want[0, 2]) <= 4 * np.spacing(np.float32(abs(want[0, 2])))


def test_other_backends_take_the_rules_split():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, g = rng.normal(size=(4, 6)) * 4, rng.normal(size=(4, 6))
    x[1, 3] += 50
    got = kernels.log_softmax_vjp(torch.tensor(x), torch.tensor(g), axis=-1)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), kernels.log_softmax_vjp(x, g, axis=-1),
                               rtol=1e-14, atol=1e-300)


CE = "-sum(Y * log(softmax(X @ W, axis=1)))"
CE_SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("d", "k")}


def _inputs(lead=0.0):
    rng = np.random.default_rng(6)
    X, W = rng.normal(size=(6, 3)), rng.normal(size=(3, 4))
    X[0] *= 1 + lead
    return {"X": X, "Y": np.eye(4)[[0, 1, 2, 3, 0, 1]], "W": W}


def _unfused_gradient(source, shapes, wrt, arrays):
    rules = default_rulebook()
    lowered = lower(parse(source), shapes, rules)
    (g,) = derivatives(lowered.root, [Var(wrt, lowered.declared[wrt])], rules, fused=False)
    return Plan([g], rules, accepted=lowered.declared)(arrays)[0]


@pytest.mark.parametrize("lead", [0.0, 40.0])
def test_gradient_in_one_call_equals_the_jacobians_pullback(lead):
    g = einderiv.grad(CE, "W", CE_SHAPES)
    assert "log_softmax_vjp(" in g.formula and "complement" not in g.formula
    arrays = _inputs(lead)
    np.testing.assert_allclose(g(**arrays), _unfused_gradient(CE, CE_SHAPES, "W", arrays),
                               rtol=1e-13, atol=1e-15)


def test_hessian_and_hvp_through_its_rules_match_jax(jax):
    jnp = jax.numpy
    arrays = _inputs()

    def loss(W):
        return -jnp.sum(arrays["Y"] * jax.nn.log_softmax(arrays["X"] @ W, axis=1))
    H = np.asarray(jax.hessian(loss)(jnp.asarray(arrays["W"])))
    np.testing.assert_allclose(einderiv.hessian(CE, "W", CE_SHAPES)(**arrays), H,
                               rtol=1e-12, atol=1e-14)
    V = np.random.default_rng(7).normal(size=arrays["W"].shape)
    hv = einderiv.hvp(CE, "W", CE_SHAPES)(**arrays, tangent=V)
    np.testing.assert_allclose(hv, np.tensordot(H, V, 2), rtol=1e-12, atol=1e-14)


def test_its_own_gradient_by_both_arguments_matches_finite_differences():
    shapes = {"Z": ("n", "k"), "G": ("n", "k"), "C": ("n", "k")}
    rng = np.random.default_rng(8)
    arrays = {"Z": rng.normal(size=(3, 4)), "G": rng.normal(size=(3, 4)),
              "C": rng.normal(size=(3, 4))}
    f = einderiv.value_and_grad("sum(log_softmax_vjp(Z, G, axis=1) * C)", ["Z", "G"], shapes)
    _, (dZ, dG) = f(**arrays)
    from einderiv.check import finite_difference

    def loss(**a):
        return np.sum(kernels.log_softmax_vjp(a["Z"], a["G"], axis=1) * a["C"])
    np.testing.assert_allclose(dZ, finite_difference(loss, arrays, "Z"), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dG, finite_difference(loss, arrays, "G"), rtol=1e-6, atol=1e-9)


def test_jacobians_keep_the_rule():
    """A Jacobian (a seed per output entry) contracts the rule's terms, no vjp call."""
    j = einderiv.jacobian("log_softmax(x)", "x", {"x": ("n",)})
    assert "log_softmax_vjp" not in j.formula
    x = np.array([0.5, 40.0, -1.0])
    s = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    want = np.eye(3) - s[None, :]
    want[1, 1] = s[0] + s[2]  # 1 - s_1, which the difference rounds to 0
    np.testing.assert_allclose(j(x=x), want, rtol=1e-15, atol=1e-300)


def test_the_rule_check_catches_a_wrong_kernel(monkeypatch):
    book = default_rulebook()
    f = book.get("log_softmax_vjp")
    assert check_function(f, book).message == ""
    right = kernels.log_softmax_vjp
    monkeypatch.setattr(kernels, "log_softmax_vjp",
                        lambda x, g, axis=-1: right(x, g, axis) * 1.001)
    message = check_function(f, book).message
    assert "differs from the pullback through log_softmax's Jacobian rule" in message


def test_language_errors():
    shapes = {"Z": ("n", "k"), "G": ("k", "n")}
    with pytest.raises(ShapeError, match="not shaped like") as e:
        einderiv.compile("log_softmax_vjp(Z, G)", shapes)
    assert "^" in str(e.value)
    with pytest.raises(EinderivError, match="unexpected keyword"):
        einderiv.compile("log_softmax_vjp(Z, Z, axes=1)", shapes)
    with pytest.raises(EinderivError, match="twice"):
        einderiv.compile("log_softmax_vjp(Z, Z, 0, axis=1)", shapes)
    a = einderiv.compile("log_softmax_vjp(Z, Z, 0)", shapes)
    b = einderiv.compile("log_softmax_vjp(Z, Z, axis=0)", shapes)
    Z = np.random.default_rng(9).normal(size=(3, 4))
    np.testing.assert_array_equal(a(Z=Z), b(Z=Z))
    np.testing.assert_allclose(b(Z=Z), reference(Z, Z, 0), rtol=1e-13)
