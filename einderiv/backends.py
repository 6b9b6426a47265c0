"""Array libraries the generated code runs on: numpy (default), torch, jax, cupy and dask.

Generated code is written against numpy's names (`_xp.exp`, `_xp.sum(x, axis=0)`, `_xp.outer`,
`@`, `.T`). Each backend is that set of names on another library: jax.numpy, cupy and
dask.array have them already; torch gets a thin adapter for the few that differ. opt_einsum
dispatches contractions to the same library by name.
"""
from __future__ import annotations

import importlib

import numpy as np

from .errors import EinderivError

BACKENDS = ("numpy", "torch", "jax", "cupy", "dask")
_MODULES = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy", "cupy": "cupy",
            "dask": "dask.array"}


def available(backend: str) -> bool:
    try:
        importlib.import_module(_MODULES[backend])
        return True
    except ImportError:
        return False


def namespace(backend: str):
    """The numpy-named namespace for `backend`; a clear error when it is not installed."""
    if backend not in BACKENDS:
        raise EinderivError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(_MODULES[backend])
    except ImportError:
        raise EinderivError(f"backend {backend!r} needs {_MODULES[backend].split('.')[0]}, "
                            f"which is not installed",
                            hint=f"pip install 'einderiv[{backend}]'") from None
    return _TorchNumpy(module) if backend == "torch" else module


def array_namespace(x):
    """The array namespace of `x` for kernels: numpy for numpy arrays and Python numbers,
    otherwise the array API namespace (via array-api-compat)."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np
    try:
        import array_api_compat
    except ImportError:  # pragma: no cover - only reached with a non-numpy array
        return np
    return array_api_compat.array_namespace(x)


class _TorchNumpy:
    """torch under numpy's names, for the names generated code uses."""

    _RENAMED = {"power": "pow", "arctan": "arctan", "divide": "divide"}

    def __init__(self, torch):
        self._torch = torch
        self.linalg = torch.linalg

    def __getattr__(self, name):
        return getattr(self._torch, self._RENAMED.get(name, name))

    def _tensor(self, value, like):
        t = self._torch
        return value if isinstance(value, t.Tensor) else t.as_tensor(value, dtype=like.dtype,
                                                                      device=like.device)

    def sum(self, x, axis=None):
        return self._torch.sum(x) if axis is None else self._torch.sum(x, dim=axis)

    def mean(self, x, axis=None):
        return self._torch.mean(x) if axis is None else self._torch.mean(x, dim=axis)

    def maximum(self, a, b):
        like = a if isinstance(a, self._torch.Tensor) else b
        return self._torch.maximum(self._tensor(a, like), self._tensor(b, like))

    def minimum(self, a, b):
        like = a if isinstance(a, self._torch.Tensor) else b
        return self._torch.minimum(self._tensor(a, like), self._tensor(b, like))

    def pad(self, x, widths):
        flat = [w for pair in reversed(widths) for w in pair]  # torch: last axis first
        return self._torch.nn.functional.pad(x, flat)

    def where(self, condition, a, b):
        t = self._torch
        def tensor(v):
            return v if isinstance(v, t.Tensor) else t.tensor(v, dtype=t.float64)
        return t.where(condition, tensor(a), tensor(b))

    def eye(self, N, M=None, k=0):
        out = self._torch.zeros((N, N if M is None else M), dtype=self._torch.float64)
        out.diagonal(k).fill_(1.0)  # numpy's eye(N, M, k): ones on the k-th diagonal
        return out

    def ones(self, shape):
        return self._torch.ones(shape, dtype=self._torch.float64)

    def zeros(self, shape):
        return self._torch.zeros(shape, dtype=self._torch.float64)
