"""kernels.sigmoid's fused forms, which the generated code calls for `sigmoid(-m) * y` (a
logistic loss's gradient): `negated` computes sigmoid(-x) as 1 / (1 + exp(x)) without
negating x, `times` multiplies by y in the division y / (1 + exp(x)), `negative` negates the
result in the pass that adds 1 (-y / -(1 + exp(x))... as -(1 + exp(x)) divides y).

- the kernel against mpmath at 50 digits, both signs, down to the subnormals, at nan and
  infinities, in float32, for every kind of factor (an array of the result's shape and
  dtype, a Python number, a broadcast array, another dtype, a 0-d array) and on torch;
- the Python printer: which products it fuses, that a rule file's own sigmoid is left alone,
  and that the generated code, the IR interpreter and the formula parsed back agree at
  margins where exp overflows.
"""
import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import using_rules

X64 = [0.0, 1e-8, -1.0, 2.5, 30.0, -30.0, 700.0, 720.0, -720.0, 745.0, 800.0, -800.0,
       np.inf, -np.inf]
X32 = [0.0, 1e-8, -1.0, 2.5, 30.0, -30.0, 88.0, 95.0, -95.0, 103.0, 110.0, -110.0, np.inf,
       -np.inf]


def exact(x, negated, times):
    """times * sigmoid(+-x) at 50 digits, entry by entry (times broadcast to x)."""
    x = np.asarray(x, float)
    t = np.broadcast_to(np.asarray(1.0 if times is None else times, float), x.shape)
    with mp.workdps(50):
        return np.array([float(mp.mpf(float(ti)) / (1 + mp.exp(mp.mpf(float(xi)) if negated
                                                               else -mp.mpf(float(xi)))))
                         for xi, ti in zip(x.ravel(), t.ravel())]).reshape(x.shape)


def relative(got, want, dtype):
    got = np.asarray(got, float)
    return np.max(np.abs(got - want) / np.maximum(np.abs(want), np.finfo(dtype).tiny))


@pytest.mark.parametrize("dtype,xs", [(np.float64, X64), (np.float32, X32)])
@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize("many", [False, True], ids=["few", "many"])  # expit, or numpy's passes
@pytest.mark.parametrize("negative", [False, True])
def test_kernel_is_exact_down_to_the_subnormals(dtype, xs, negated, many, negative):
    reps = 40 if many else 1  # 560 entries: past kernels._MANY
    sign = -1.0 if negative else 1.0
    for finite in (True, False):  # the fast path (no entry past exp's bound), the careful one
        values = [v for v in xs if not finite or abs(v) < 88] or xs
        x = np.array(values * reps, dtype)
        y = np.linspace(-3, 3, x.size).astype(dtype)
        for times in (None, y, 2.5):
            got = kernels.sigmoid(x, negated=negated, times=times, negative=negative)
            assert got.dtype == dtype and got.shape == x.shape
            want = sign * exact(x, negated, times)
            assert relative(got, want, dtype) < 4 * np.finfo(dtype).eps, times


def test_kernel_at_nan_and_on_what_it_cannot_divide_into():
    x = np.array([np.nan, 1.0, -2.0] * 100)
    got = kernels.sigmoid(x, negated=True, times=np.ones(x.size))
    assert (np.isnan(got) == np.isnan(x)).all()  # (the careful form: a nan's maximum is nan)
    # a factor that broadcasts, of another dtype, or 0-d: the product, as numpy writes it
    x = np.linspace(-5, 5, 300)
    wide = np.arange(600.0).reshape(2, 300)
    np.testing.assert_allclose(kernels.sigmoid(x, negated=True, times=wide),
                               wide / (1 + np.exp(x)), rtol=1e-15)
    narrow = np.arange(300, dtype=np.float32)
    got = kernels.sigmoid(x, times=narrow)
    assert got.dtype == np.float64  # float64 * float32, as the unfused product
    np.testing.assert_allclose(got, narrow / (1 + np.exp(-x)), rtol=1e-15)
    got = kernels.sigmoid(x, times=np.array(3.0))
    np.testing.assert_allclose(got, 3 / (1 + np.exp(-x)), rtol=1e-15)
    empty = kernels.sigmoid(np.zeros((0, 3)), negated=True, times=np.zeros((0, 3)))
    assert empty.shape == (0, 3)
    # a 0-d argument and a Python float: the careful form, then the product
    assert kernels.sigmoid(np.float64(-800.0), negated=True, times=2.0) == 2.0


def test_kernel_on_torch():
    torch = pytest.importorskip("torch")
    x = torch.tensor([-800.0, -30.0, 0.0, 30.0, 720.0], dtype=torch.float64)
    y = torch.tensor([1.0, -2.0, 3.0, 0.5, 1.0], dtype=torch.float64)
    got = kernels.sigmoid(x, negated=True, times=y).numpy()
    assert relative(got, exact(x.numpy(), True, y.numpy()), np.float64) < 4e-16


LINEAR = {"X": ("n", "d"), "w": ("d",), "y": ("n",)}
LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"


def test_the_logistic_gradient_is_one_fused_call_and_agrees_where_exp_overflows():
    g = einderiv.grad(LOGISTIC, "w", LINEAR)
    # the sign taken into the kernel: `dot(X.T, ...)` of the kernel's result, nothing after
    assert "return _xp.dot(X.T, _kernels.sigmoid(y * _xp.dot(X, w), negated=True, times=y, " \
        "negative=True))" in g.source, g.source
    assert g.formula == "-(X.T @ (sigmoid(-y * (X @ w)) * y))"  # the formula is unchanged
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = np.sign(rng.normal(size=400))
    for scale in (0.1, 300.0):  # margins past exp's overflow at 709
        w = scale * rng.normal(size=3)
        got = g(X=X, w=w, y=y)
        m = y * (X @ w)
        want = -(X.T @ (exact(m, True, y)))
        assert relative(got, want, np.float64) < 1e-12
        np.testing.assert_allclose(got, g.evaluate_ir(X=X, w=w, y=y), rtol=1e-12)
        f32 = g(X=X.astype(np.float32), w=w.astype(np.float32), y=y.astype(np.float32))
        assert f32.dtype == np.float32
        np.testing.assert_allclose(f32, want, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("text,fused", [
    ("sigmoid(-x)", "_kernels.sigmoid(x, negated=True)"),
    ("sigmoid(-2 * x) * y", "_kernels.sigmoid(2.0 * x, negated=True, times=y)"),
    ("y * sigmoid(x)", "_kernels.sigmoid(x, times=y)"),
    ("sigmoid(x) * X", "_kernels.sigmoid(x, times=X)"),       # broadcast: the kernel multiplies
    ("X @ (sigmoid(x) * y)", "_xp.dot(X, _kernels.sigmoid(x, times=y))"),
    ("(sigmoid(-x) * y) ** 2", "_kernels.sigmoid(x, negated=True, times=y) ** 2.0"),
    ("sigmoid(x - y)", "_kernels.sigmoid(x - y)"),             # no leading sign to take
    ("sigmoid(-x)[:, None] * X", "_kernels.sigmoid(x, negated=True)[:, None] * X"),
    # a negated product takes its sign into the kernel where it is the whole result
    ("-(X @ (sigmoid(-x) * y))",
     "_xp.dot(X, _kernels.sigmoid(x, negated=True, times=y, negative=True))"),
    ("-(sigmoid(x) * y)", "_kernels.sigmoid(x, times=y, negative=True)"),
    ("-(X.T @ (sigmoid(x) * y))", "_xp.dot(X.T, _kernels.sigmoid(x, times=y, negative=True))"),
    # ... and only there: inside another operator the sign stays where it is written
    ("(-(X @ (sigmoid(x) * y))) ** 2", "(-_xp.dot(X, _kernels.sigmoid(x, times=y))) ** 2.0"),
    ("2 ** -(X @ (sigmoid(x) * y))", "2.0 ** (-_xp.dot(X, _kernels.sigmoid(x, times=y)))"),
])
def test_which_products_are_fused(text, fused):
    f = einderiv.compile("x: [n]; y: [n]; X: [n, n]; " + text)
    assert f.source.splitlines()[-1].strip() == f"return {fused}"
    rng = np.random.default_rng(1)
    arrays = {"x": 40 * rng.normal(size=5), "y": rng.normal(size=5), "X": rng.normal(size=(5, 5))}
    arrays = {k: v for k, v in arrays.items() if k in f.inputs}
    np.testing.assert_allclose(f(**arrays), f.evaluate_ir(**arrays), rtol=1e-13, atol=1e-300)


def test_a_rule_files_own_sigmoid_is_not_fused(tmp_path):
    """The fused forms are kernels.sigmoid's: a rule file that implements sigmoid otherwise
    gets its own function called, and the product as written."""
    mine = tmp_path / "mine.rules"
    mine.write_text("elementwise sigmoid(x) = scipy.special:expit\n")
    with using_rules(default_rulebook().copy().load(mine, allow_imports=True)):
        f = einderiv.compile("x: [n]; y: [n]; sigmoid(-x) * y")
        assert "negated" not in f.source and "times" not in f.source, f.source
        x, y = np.array([-3.0, 0.0, 40.0]), np.array([1.0, 2.0, 3.0])
        np.testing.assert_allclose(f(x=x, y=y), y / (1 + np.exp(x)), rtol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "dask"])
def test_numbers_and_arrays_of_every_backend(backend):
    """A number's sigmoid is of a 0-d array of the result dtype, as any function's (torch
    takes no Python floats): `tanh(-0.5) * sigmoid(1.0)` fused on every array library."""
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    if backend == "jax":  # else jax makes float32 of every float64 input (as test_backends)
        import jax
        jax.config.update("jax_enable_x64", True)
    f = einderiv.compile("x: [n]; sum(x) * tanh(-0.5) * sigmoid(1.0) + sum(sigmoid(-x) * x)",
                         backend=backend)
    x = np.array([-800.0, -1.0, 0.5, 30.0, 720.0])
    got = f(x=x)
    got = float(got.cpu() if hasattr(got, "cpu") else got)
    with mp.workdps(50):
        want = float(sum(x) * mp.tanh(-0.5) / (1 + mp.exp(-1))
                     + sum(mp.mpf(float(t)) / (1 + mp.exp(float(t))) for t in x))
    assert abs(got - want) < 1e-12 * abs(want)
