"""The functions of issue 14, item 4: erf, erfc, gelu, arcsin, arccos, arctanh, arcsinh, hypot,
floor, ceil, round, lgamma (gammaln), digamma, trigamma, polygamma, logsigmoid, logaddexp.

For each, at random points: the value, gradient and Hessian of `sum(y * f(x))` against a
30-digit mpmath reference (and against JAX where it is installed) and against central finite
differences; the generated code against the IR interpreter and against the formula parsed
back; float32 as well as float64; the torch and dask backends where installed. Then the points
where a textbook formula would lose digits (tails, near +-1, huge arguments) and the kinks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import einderiv
from einderiv.backends import available
from einderiv.check import finite_difference, relative_error
from einderiv.generate.formula import output_programs

M = pytest.importorskip("mpmath")
M.mp.dps = 30

VECTOR = {"x": ("n",), "y": ("n",)}


@dataclass
class Fn:
    text: str  # the function applied to x (and y): the expression is sum(y * text)
    ref: Callable  # mpmath, of mpf arguments
    draw: Callable  # rng -> the points x
    d1: Callable | None = None  # the derivative by x, if not mp.diff of ref
    d2: Callable | None = None  # the second derivative by x
    second: Callable | None = None  # rng -> the second argument (the weights are then 1)

    @property
    def id(self) -> str:
        return self.text.split("(")[0] + ("" if "2," not in self.text else "2")


def uniform(lo, hi):
    return lambda rng: rng.uniform(lo, hi, 6)


def gamma_points(rng):
    """Positive points, and negative ones between poles, where log |Gamma| is still smooth."""
    return np.concatenate([rng.uniform(0.1, 8.0, 4), -2.5 + rng.uniform(-0.4, 0.4, 2)])


def log_abs_gamma(x):
    return M.log(abs(M.gamma(x)))


def nearest_even(x):
    return float(round(float(x)))  # Python rounds halves to even, as numpy


ZERO = lambda x: M.mpf(0)  # noqa: E731
SQRT2 = M.sqrt(2)

FUNCTIONS = [
    Fn("erf(x)", M.erf, uniform(-3, 3)),
    Fn("erfc(x)", M.erfc, uniform(-3, 3)),
    Fn("gelu(x)", lambda x: x * M.erfc(-x / SQRT2) / 2, uniform(-4, 4)),
    Fn("arcsin(x)", M.asin, uniform(-0.95, 0.95)),
    Fn("arccos(x)", M.acos, uniform(-0.95, 0.95)),
    Fn("arctanh(x)", M.atanh, uniform(-0.95, 0.95)),
    Fn("arcsinh(x)", M.asinh, uniform(-5, 5)),
    Fn("hypot(x, y)", M.hypot, uniform(-3, 3), second=uniform(-3, 3)),
    Fn("floor(x)", M.floor, uniform(-3, 3), ZERO, ZERO),
    Fn("ceil(x)", M.ceil, uniform(-3, 3), ZERO, ZERO),
    Fn("round(x)", nearest_even, uniform(-3, 3), ZERO, ZERO),
    Fn("lgamma(x)", log_abs_gamma, gamma_points),
    Fn("gammaln(x)", log_abs_gamma, gamma_points),
    Fn("digamma(x)", lambda x: M.psi(0, x), gamma_points, lambda x: M.psi(1, x),
       lambda x: M.psi(2, x)),
    Fn("trigamma(x)", lambda x: M.psi(1, x), gamma_points, lambda x: M.psi(2, x),
       lambda x: M.psi(3, x)),
    Fn("polygamma(2, x)", lambda x: M.psi(2, x), uniform(0.2, 6), lambda x: M.psi(3, x),
       lambda x: M.psi(4, x)),
    Fn("logsigmoid(x)", lambda x: -M.log(1 + M.exp(-x)), uniform(-8, 8)),
    Fn("logaddexp(x, y)", lambda x, y: M.log(M.exp(x) + M.exp(y)), uniform(-5, 5),
       second=uniform(-5, 5)),
]
IDS = [f.id for f in FUNCTIONS]


def inputs(fn: Fn, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = fn.draw(rng)
    y = fn.second(rng) if fn.second else rng.uniform(0.5, 1.5, x.shape)
    return {"x": x, "y": y}


def references(fn: Fn, a: dict):
    """The value, gradient and Hessian (its diagonal) of sum(y * f(x)), or of sum(f(x, y)),
    each entry to 30 digits."""
    value, grad, hess = 0, [], []
    for x, y in zip(a["x"], a["y"]):
        x, y = M.mpf(float(x)), M.mpf(float(y))
        if fn.second:
            f = lambda t: fn.ref(t, y)  # noqa: E731
            weight = 1
        else:
            f, weight = fn.ref, y
        value += weight * f(x)
        grad.append(weight * (fn.d1(x) if fn.d1 else M.diff(f, x)))
        hess.append(weight * (fn.d2(x) if fn.d2 else M.diff(f, x, 2)))
    return float(value), np.array(grad, dtype=float), np.array(hess, dtype=float)


def source(fn: Fn) -> str:
    return f"sum({fn.text})" if fn.second else f"sum(y * {fn.text})"


def close(actual, expected, rtol):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_value_gradient_hessian_against_mpmath(fn):
    a = inputs(fn)
    value, grad, hess = references(fn, a)
    close(einderiv.compile(source(fn), VECTOR)(**a), value, 1e-13)
    close(einderiv.grad(source(fn), "x", VECTOR)(**a), grad, 1e-12)
    close(einderiv.hessian(source(fn), "x", VECTOR)(**a), np.diag(hess), 1e-11)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_gradient_and_hessian_against_finite_differences(fn):
    a = inputs(fn, seed=1)
    f = einderiv.compile(source(fn), VECTOR)
    g = einderiv.grad(source(fn), "x", VECTOR)
    h = einderiv.hessian(source(fn), "x", VECTOR)
    assert relative_error(g(**a), finite_difference(lambda **k: f(**k), a, "x")) < 1e-6
    assert relative_error(h(**a), finite_difference(lambda **k: g(**k), a, "x")) < 1e-5


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_generated_code_interpreter_and_formula_agree(fn):
    """Three paths to each result: the generated code, the IR interpreter, and the printed
    formula compiled back, in float64 and float32 (whose results stay float32)."""
    a = inputs(fn, seed=2)
    value, grad, hess = references(fn, a)
    for result, expected in ((einderiv.compile(source(fn), VECTOR), value),
                             (einderiv.grad(source(fn), "x", VECTOR), grad),
                             (einderiv.hessian(source(fn), "x", VECTOR), np.diag(hess))):
        out = result(**a)
        close(result.evaluate_ir(**a), out, 1e-12)
        ((_, text),) = output_programs(result.formula, [n for n, _ in result.program.outputs])
        close(einderiv.compile(text, VECTOR)(**a), out, 1e-12)
        single = result(**{k: v.astype(np.float32) for k, v in a.items()})
        assert np.asarray(single).dtype == np.float32
        close(single, expected, 1e-4)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_with_axes_and_batches(fn):
    """f over a matrix, reduced along an axis, weighted by a matrix product: the gradient by the
    matrix against 30 digits."""
    rng = np.random.default_rng(3)
    X = np.stack([fn.draw(rng) for _ in range(3)])
    Y = np.stack([fn.second(rng) for _ in range(3)]) if fn.second else None
    w = rng.uniform(0.5, 1.5, X.shape[0])
    text = re.sub(r"\by\b", "Y", re.sub(r"\bx\b", "X", fn.text))
    shapes = {"X": ("m", "n"), "Y": ("m", "n"), "w": ("m",)}
    g = einderiv.grad(f"w @ sum({text}, axis=1)", "X", shapes)
    expected = np.array([[float(w[i] * (fn.d1(M.mpf(X[i, j])) if fn.d1 else M.diff(
        (lambda t: fn.ref(t, M.mpf(Y[i, j]))) if fn.second else fn.ref, M.mpf(X[i, j]))))
        for j in range(X.shape[1])] for i in range(X.shape[0])])
    arrays = {"X": X, "w": w} if Y is None else {"X": X, "Y": Y, "w": w}
    close(g(**arrays), expected, 1e-12)


@pytest.mark.skipif(not available("torch"), reason="torch is not installed")
@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_torch_backend(fn):
    """The same results from torch tensors, in float64 and float32: the kernels call
    torch.special (and torch's gelu), never numpy or scipy on a tensor."""
    import torch
    a = inputs(fn, seed=4)
    for kind in ("compile", "grad", "hessian"):
        make = getattr(einderiv, kind)
        args = (source(fn), VECTOR) if kind == "compile" else (source(fn), "x", VECTOR)
        expected = make(*args)(**a)
        on_torch = make(*args, backend="torch")
        for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            out = on_torch(**{k: torch.tensor(v, dtype=dtype) for k, v in a.items()})
            assert isinstance(out, torch.Tensor) and out.dtype == dtype
            close(out.numpy(), expected, rtol)


SPECIAL = ["erf(x)", "erfc(x)", "gelu(x)", "lgamma(x)", "digamma(x)", "trigamma(x)",
           "polygamma(2, x)"]


@pytest.mark.skipif(not available("dask"), reason="dask is not installed")
@pytest.mark.parametrize("text", SPECIAL)
def test_dask_backend_stays_lazy(text):
    """On dask arrays the special functions are lazy (scipy's ufuncs chunk by chunk), and
    compute to numpy's results."""
    import dask.array as da
    a = {"x": np.linspace(0.3, 4.0, 8), "y": np.linspace(0.5, 1.5, 8)}
    lazy = {k: da.from_array(v, chunks=3) for k, v in a.items()}
    for kind in ("compile", "grad"):
        make = getattr(einderiv, kind)
        args = (f"sum(y * {text})", VECTOR) if kind == "compile" else \
            (f"sum(y * {text})", "x", VECTOR)
        out = make(*args, backend="dask")(**lazy)
        assert isinstance(out, da.Array)
        close(out.compute(), make(*args)(**a), 1e-12)


JAX_FUNCTIONS = {
    "erf": lambda jnp, jsp, jax: jsp.erf,
    "erfc": lambda jnp, jsp, jax: jsp.erfc,
    "gelu": lambda jnp, jsp, jax: lambda x: jax.nn.gelu(x, approximate=False),
    "arcsin": lambda jnp, jsp, jax: jnp.arcsin,
    "arccos": lambda jnp, jsp, jax: jnp.arccos,
    "arctanh": lambda jnp, jsp, jax: jnp.arctanh,
    "arcsinh": lambda jnp, jsp, jax: jnp.arcsinh,
    "hypot": lambda jnp, jsp, jax: jnp.hypot,
    "floor": lambda jnp, jsp, jax: jnp.floor,
    "ceil": lambda jnp, jsp, jax: jnp.ceil,
    "round": lambda jnp, jsp, jax: jnp.round,
    "lgamma": lambda jnp, jsp, jax: jsp.gammaln,
    "gammaln": lambda jnp, jsp, jax: jsp.gammaln,
    "digamma": lambda jnp, jsp, jax: jsp.digamma,
    "trigamma": lambda jnp, jsp, jax: lambda x: jsp.polygamma(1, x),
    "polygamma2": lambda jnp, jsp, jax: lambda x: jsp.polygamma(2, x),
    "logsigmoid": lambda jnp, jsp, jax: jax.nn.log_sigmoid,
    "logaddexp": lambda jnp, jsp, jax: jnp.logaddexp,
}


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_against_jax(fn):
    """Value, gradient and Hessian against jax.grad and jax.hessian of the same function, and
    einderiv's jax backend (jax.scipy.special in the kernels) against its numpy one."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.scipy.special as jsp
    f = JAX_FUNCTIONS[fn.id](jnp, jsp, jax)
    a = inputs(fn, seed=5)
    y = jnp.asarray(a["y"])
    loss = (lambda x: jnp.sum(f(x, y))) if fn.second else (lambda x: jnp.sum(y * f(x)))
    x = jnp.asarray(a["x"])
    # (the references in one jit: eagerly each of their many small primitives compiles alone)
    value, gradient, hessian = jax.jit(
        lambda x: (loss(x), jax.grad(loss)(x), jax.hessian(loss)(x)))(x)
    close(einderiv.compile(source(fn), VECTOR)(**a), np.asarray(value), 1e-12)
    close(einderiv.grad(source(fn), "x", VECTOR)(**a), np.asarray(gradient), 1e-9)
    close(einderiv.hessian(source(fn), "x", VECTOR)(**a), np.asarray(hessian), 1e-8)
    on_jax = einderiv.grad(source(fn), "x", VECTOR, backend="jax")
    close(np.asarray(on_jax(**{k: jnp.asarray(v) for k, v in a.items()})),
          einderiv.grad(source(fn), "x", VECTOR)(**a), 1e-9)


# -- where a textbook formula loses digits --------------------------------------------------------

def entries(f, points, *rest):
    return np.array([float(f(M.mpf(p), *rest)) for p in points])


def test_erfc_and_gelu_keep_their_tails():
    """erfc(10) is 2.1e-45, where 1 - erf(10) is 0; gelu(-30) is -30 Phi(-30) = -1.5e-196
    and its derivative Phi + x phi is -1.4e-195, where (1 + erf(x / sqrt(2))) / 2 is 0."""
    x = np.array([-30.0, -10.0, 10.0, 26.0])
    shapes = {"x": ("n",)}
    erfc = einderiv.value_and_grad("sum(erfc(x))", "x", shapes)
    close(einderiv.compile("erfc(x)", shapes)(x=x), entries(M.erfc, x), 1e-13)
    close(erfc(x=x)[1], entries(lambda t: -2 / M.sqrt(M.pi) * M.exp(-t * t), x), 1e-13)
    gelu = lambda t: t * M.erfc(-t / SQRT2) / 2  # noqa: E731
    got = einderiv.compile("gelu(x)", shapes)(x=x)
    assert np.all(np.abs(got[:2] / entries(gelu, x[:2]) - 1) < 1e-12)
    g = einderiv.grad("sum(gelu(x))", "x", shapes)(x=x)
    expected = entries(lambda t: M.diff(gelu, t), x)
    assert np.all(np.abs(g[:2] / expected[:2] - 1) < 1e-12)
    close(g, expected, 1e-13)


def test_inverse_functions_near_their_poles():
    """arcsin', arccos' and arctanh' at 1 - 2^-40 and -1 + 2^-40 to full precision: 1 - x ** 2
    would keep only the digits of x ** 2 that differ from 1 (4 of 16 here)."""
    x = np.array([1 - 2.0**-40, -1 + 2.0**-40, 1 - 1e-9])
    shapes = {"x": ("n",)}
    for name, ref in (("arcsin", M.asin), ("arccos", M.acos), ("arctanh", M.atanh)):
        got = einderiv.grad(f"sum({name}(x))", "x", shapes)(x=x)
        expected = entries(lambda t: M.diff(ref, t), x)
        np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_arcsinh_and_hypot_far_out():
    """arcsinh'(x) = 1 / hypot(1, x) is 1e-200 at 1e200, where 1 / sqrt(1 + x ** 2) is 0; the
    gradient of hypot at 3e200, 4e200 is (0.6, 0.8), and at (0, 0) the zero subgradient."""
    shapes = {"x": ("n",), "y": ("n",)}
    got = einderiv.grad("sum(arcsinh(x))", "x", shapes)(x=np.array([1e200, -1e300, 0.5]))
    np.testing.assert_allclose(got, [1e-200, 1e-300, 1 / np.sqrt(1.25)], rtol=1e-15)
    g = einderiv.grad("sum(hypot(x, y))", ["x", "y"], shapes)
    gx, gy = g(x=np.array([3e200, 0.0, -3.0]), y=np.array([4e200, 0.0, 4.0]))
    np.testing.assert_allclose(gx, [0.6, 0.0, -0.6], rtol=1e-15)
    np.testing.assert_allclose(gy, [0.8, 0.0, 0.8], rtol=1e-15)


def test_lgamma_where_gamma_overflows():
    """lgamma(200) and lgamma(1e10) are finite (Gamma overflows from 171.6 on), and so are its
    derivatives digamma and trigamma there."""
    x = np.array([200.0, 1e10, 0.5])
    shapes = {"x": ("n",)}
    close(einderiv.compile("lgamma(x)", shapes)(x=x), entries(log_abs_gamma, x), 1e-14)
    value, g = einderiv.value_and_grad("sum(lgamma(x))", "x", shapes)(x=x)
    close(g, entries(lambda t: M.psi(0, t), x), 1e-14)
    h = einderiv.hessian("sum(lgamma(x))", "x", shapes)(x=x)
    np.testing.assert_allclose(np.diag(h), entries(lambda t: M.psi(1, t), x), rtol=1e-13)


def test_rounding_has_a_zero_derivative_everywhere():
    """floor, ceil and round have the derivative 0, at their jumps too, and a zero derivative
    stays zero through an infinite factor: the gradient of sum(floor(sqrt(x))) at 0 is 0."""
    x = np.array([-2.0, -0.5, 0.0, 0.5, 1.5, 2.5, 3.0])
    shapes = {"x": ("n",)}
    for name in ("floor", "ceil", "round"):
        assert np.array_equal(einderiv.compile(f"{name}(x)", shapes)(x=x), getattr(np, name)(x))
        g = einderiv.grad(f"sum({name}(x) * x)", "x", shapes)
        assert np.array_equal(g(x=x), getattr(np, name)(x))
    g = einderiv.grad("sum(floor(sqrt(x)))", "x", shapes)
    assert np.array_equal(g(x=np.array([0.0, 4.0])), [0.0, 0.0])


def test_polygamma_order():
    """polygamma(n, x) is digamma's n-th derivative at whole n, rounds a fractional order down,
    is nan at a negative one, and its derivative by n is 0."""
    x = np.array([0.3, 1.7, 5.0])
    f = einderiv.compile("polygamma(n, x)", {"n": (), "x": ("k",)})
    for n in (0, 1, 2, 3):
        close(f(n=float(n), x=x), entries(lambda t: M.psi(n, t), x), 1e-13)
    close(f(n=1.5, x=x), f(n=1.0, x=x), 0)
    assert np.all(np.isnan(f(n=-1.0, x=x)))
    g = einderiv.grad("sum(polygamma(n, x))", ["n", "x"], {"n": (), "x": ("k",)})
    dn, dx = g(n=2.0, x=x)
    assert dn == 0
    close(dx, entries(lambda t: M.psi(3, t), x), 1e-13)


def test_formulas_read_as_a_person_writes_them():
    shapes = {"x": ("n",)}
    assert einderiv.grad("sum(lgamma(x))", "x", shapes).formula == "digamma(x)"
    assert einderiv.grad("sum(gammaln(x))", "x", shapes).formula == "digamma(x)"
    assert einderiv.hessian("sum(lgamma(x))", "x", shapes).formula == "diag(trigamma(x))"
    assert einderiv.hessian("sum(digamma(x))", "x", shapes).formula == \
        "diag(polygamma(2, x))"
    assert einderiv.grad("sum(erf(x))", "x", shapes).formula == \
        "1.1283791670955126 * exp(-x ** 2)"
    assert einderiv.grad("sum(arcsin(x))", "x", shapes).formula == \
        "1 / sqrt((1 - x) * (1 + x))"
    assert einderiv.grad("sum(arcsinh(x))", "x", shapes).formula == "1 / hypot(1, x)"
    assert einderiv.grad("sum(round(x) * x)", "x", shapes).formula == "round(x)"


def test_latex_names():
    shapes = {"x": ("n",)}
    latex = einderiv.compile("arcsin(x) + arccos(x) + lgamma(x) + digamma(x) + erf(x)",
                             shapes).latex
    for name in (r"\arcsin", r"\arccos", r"\log\Gamma", r"\psi", r"\operatorname{erf}"):
        assert name in latex
    assert r"\psi'" in einderiv.hessian("sum(lgamma(x))", "x", shapes).latex
