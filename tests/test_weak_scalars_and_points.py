"""Three faults helper-76 found (tests/test_breaker_s25_user.py), checked on further inputs of
the same kinds:

- a Python number is weakly typed everywhere: through `einderiv.jax.function`, `jax.jit` and
  `jax.vmap` with JAX's x64 mode on, it takes the arrays' dtype, as JAX's own arithmetic does
  (evaluate/plan.py `weak`; jax.py's abstract evaluation says the same);
- `einderiv.flat` reuses its last result only for the same point: the same bits of the same
  dtype (not equal values: float32 after float64, -0.0 after 0.0);
- `hvp`, `jvp` and `vjp` take `sizes=` as `grad` does.
"""
import pickle

import numpy as np
import pytest

import einderiv


# -- weak Python numbers under JAX ------------------------------------------------------------

@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("array_api_compat")
    with jax.enable_x64(True):
        yield jax


def test_a_python_number_takes_the_arrays_dtype_under_every_transform(x64):
    import jax.numpy as jnp
    import einderiv.jax as ej
    f = ej.function("sum(x * c) + c * c", {"x": ("n",), "c": ()})
    x32 = jnp.arange(3, dtype=jnp.float32)

    def own(x, c):
        return jnp.sum(x * c) + c * c
    for transform in (lambda g: g, x64.jit):
        got, want = transform(f)(x32, 1.5), transform(own)(x32, 1.5)
        assert got.dtype == want.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)
    batched = x64.vmap(f, in_axes=(0, None))(jnp.ones((2, 3), jnp.float32), 1.5)
    assert batched.dtype == jnp.float32
    dx, dc = x64.grad(f, argnums=(0, 1))(x32, 1.5)
    assert dx.dtype == jnp.float32
    np.testing.assert_allclose(dx, [1.5] * 3)
    np.testing.assert_allclose(dc, 0 + 1 + 2 + 2 * 1.5, rtol=1e-6)
    # a weakly typed jax scalar is weak too; a float64 array is not, as in JAX
    assert f(x32, jnp.asarray(1.5)).dtype == (x32 * jnp.asarray(1.5)).dtype == jnp.float32
    strong = jnp.array(1.5, dtype=jnp.float64)
    assert f(x32, strong).dtype == (x32 * strong).dtype == jnp.float64


def test_the_numpy_api_keeps_float32_for_a_python_number():
    g = einderiv.grad("sum(x * c) ** 2", "x", {"x": ("n",), "c": ()})
    x = np.arange(3, dtype=np.float32)
    got = g(x=x, c=2.0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 2 * np.sum(x * 2.0) * 2.0)


# -- flat's last point ------------------------------------------------------------------------

def test_flat_tells_float32_from_float64_at_equal_values():
    problem = einderiv.flat("sum(w ** 3)", "w", {"w": (2,)})
    x32 = np.array([0.1, 0.3], dtype=np.float32)
    x64 = x32.astype(np.float64)
    assert problem.jac(x32).dtype == np.float32
    assert problem.jac(x64).dtype == np.float64
    np.testing.assert_allclose(problem.jac(x64), 3 * x64 ** 2, rtol=1e-15)
    assert problem.fun(x64) == pytest.approx(float(np.sum(x64 ** 3)), rel=1e-15)


def test_flat_tells_negative_zero_from_zero():
    problem = einderiv.flat("sum(1 / w)", "w", {"w": (2,)})
    with np.errstate(divide="ignore"):
        assert problem.fun(np.array([0.0, 1.0])) == np.inf
        assert problem.fun(np.array([-0.0, 1.0])) == -np.inf


def test_flat_reuses_the_same_point_and_sees_one_changed_in_place():
    problem = einderiv.flat("sum(w ** 2)", "w", {"w": (3,)})
    x = np.array([1.0, 2.0, 3.0])
    assert problem.fun(x) == 14.0
    np.testing.assert_allclose(problem.jac(x), 2 * x)
    x[0] = 0.0  # SciPy may change its array in place between calls
    assert problem.fun(x) == 13.0
    np.testing.assert_allclose(problem.jac(list(x)), 2 * x)


# -- sizes for the products -------------------------------------------------------------------

def test_products_with_sizes_pickle_and_agree_with_the_hessian():
    shapes = {"x": ("n",), "A": ("n", "n")}
    expr = "x @ A @ x * sum(eye(k))"  # = k * x @ A @ x
    rng = np.random.default_rng(0)
    A, x, t = rng.normal(size=(3, 3)), rng.normal(size=3), rng.normal(size=3)
    H = einderiv.hessian(expr, "x", shapes, sizes={"k": 4})(A=A, x=x)
    np.testing.assert_allclose(H, 4 * (A + A.T), rtol=1e-12)
    hv = einderiv.hvp(expr, "x", shapes, sizes={"k": 4})
    for product in (hv, pickle.loads(pickle.dumps(hv))):
        np.testing.assert_allclose(product(A=A, x=x, tangent=t), H @ t, rtol=1e-12)
    value, pushed = einderiv.jvp(expr, "x", shapes, sizes={"k": 4})(A=A, x=x, tangent=t)
    np.testing.assert_allclose(value, 4 * x @ A @ x, rtol=1e-12)
    np.testing.assert_allclose(pushed, 4 * (x @ (A + A.T)) @ t, rtol=1e-12)
    pulled = einderiv.vjp(expr, "x", shapes, sizes={"k": 4})(A=A, x=x, cotangent=2.0)
    np.testing.assert_allclose(pulled, 8 * (A + A.T) @ x, rtol=1e-12)
