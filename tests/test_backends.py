"""Backends: the generated code on torch, jax, cupy and dask, each against numpy.

Each backend's tests run where it is installed and are skipped otherwise; CI installs dask and
jax (the test extra).
GPU checks run only where torch sees CUDA or cupy is installed.
"""
import numpy as np
import pytest

import einderiv
from einderiv.backends import available

LOGISTIC = ("sum(log(1 + exp(-y * (X @ w))))", "w", {"X": ("n", "d"), "y": ("n",), "w": ("d",)})
CASES = [
    LOGISTIC,
    ("sum(softmax(X, axis=0) * X) + sum(relu(X @ w)) + sum(maximum(w, 0.5)) + logsumexp(w)", "w",
     {"X": ("n", "d"), "w": ("d",)}),
    ("logdet(A) + tr(inv(A) @ A.T) + sum(diag(A))", "A", {"A": ("d", "d")}),
    ("sum(einsum('ij,jk,kl->il', A, A, A)) + sum(A[1:, :-1]) + A[0, -1]", "A", {"A": ("d", "d")}),
    ("sum(tanh(W @ X + b[:, None]) * Y)", "W", {"W": ("h", "d"), "X": ("d", "n"), "b": ("h",),
                                                "Y": ("h", "n")}),
]
SIZES = {"n": 12, "d": 4, "h": 3}


def _arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        a = rng.normal(size=[SIZES[d] for d in shape])
        if len(shape) == 2 and shape[0] == shape[1]:
            a = a + 4 * np.eye(SIZES[shape[0]])
        out[name] = a
    return out


def _converters():
    out = {}
    if available("torch"):
        import torch
        out["torch"] = (torch.as_tensor, lambda t: t.numpy())
    if available("jax"):
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        out["jax"] = (jnp.asarray, np.asarray)
    if available("cupy"):
        import cupy
        out["cupy"] = (cupy.asarray, cupy.asnumpy)
    if available("dask"):
        import dask.array as da
        out["dask"] = (lambda a: da.from_array(a, chunks=5), lambda r: r.compute())
    return out


BACKENDS = ["torch", "jax", "cupy", "dask"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("expr, wrt, shapes", CASES, ids=[c[0][:40] for c in CASES])
def test_gradient_matches_numpy(backend, expr, wrt, shapes):
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    to, back = _converters()[backend]
    arrays = _arrays(shapes)
    expected = einderiv.grad(expr, wrt, shapes)(**arrays)
    g = einderiv.grad(expr, wrt, shapes, backend=backend)
    result = g(**{k: to(v) for k, v in arrays.items()})
    assert type(result).__module__.split(".")[0] != "numpy" or backend == "cupy"
    np.testing.assert_allclose(back(result), expected, rtol=1e-10, atol=1e-12)
    # The second call with the same shapes comes from the cache and is still right.
    again = g(**{k: to(v) for k, v in _arrays(shapes, seed=1).items()})
    np.testing.assert_allclose(back(again), einderiv.grad(expr, wrt, shapes)(
        **_arrays(shapes, seed=1)), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not available("dask"), reason="dask is not installed")
def test_dask_gradient_on_chunked_data_is_lazy_and_right():
    import dask
    import dask.array as da
    rng = np.random.default_rng(5)
    n, d = 20_000, 8
    X = da.random.default_rng(5).normal(size=(n, d), chunks=(2_000, d))
    y = da.where(da.random.default_rng(6).random(n, chunks=2_000) > 0.5, 1.0, -1.0)
    w = rng.normal(size=d) * 0.1
    expr, wrt, shapes = LOGISTIC
    g = einderiv.grad(expr, wrt, shapes, backend="dask")
    lazy = g(X=X, y=y, w=da.from_array(w))
    assert isinstance(lazy, da.Array) and lazy.shape == (d,)
    with dask.config.set(scheduler="synchronous"):
        result = lazy.compute()
        Xn, yn = X.compute(), y.compute()
    np.testing.assert_allclose(result, einderiv.grad(expr, wrt, shapes)(X=Xn, y=yn, w=w),
                               rtol=1e-10)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(einderiv.EinderivError, match="unknown backend"):
        einderiv.grad(*LOGISTIC, backend="tensorflow")


def test_missing_backend_says_how_to_install(monkeypatch):
    import importlib
    real = importlib.import_module

    def refuse(name, *args):
        if name == "cupy":
            raise ImportError("no cupy")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(einderiv.EinderivError, match="pip install"):
        einderiv.grad(*LOGISTIC, backend="cupy")


def _cuda() -> bool:
    if not available("torch"):
        return False
    import torch
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU")
def test_torch_on_gpu():
    import torch
    expr, wrt, shapes = LOGISTIC
    arrays = _arrays(shapes)
    g = einderiv.grad(expr, wrt, shapes, backend="torch")
    result = g(**{k: torch.as_tensor(v, device="cuda") for k, v in arrays.items()})
    assert result.device.type == "cuda"
    np.testing.assert_allclose(result.cpu().numpy(), einderiv.grad(expr, wrt, shapes)(**arrays),
                               rtol=1e-10)
