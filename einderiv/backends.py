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
    """Is `backend` usable: its library and what einderiv needs with it installed?"""
    try:
        namespace(backend)
        return True
    except EinderivError:
        return False


def namespace(backend: str):
    """The numpy-named namespace for `backend`; a clear error when it is not installed."""
    if backend not in BACKENDS:
        raise EinderivError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    # The kernels reach a non-numpy array's functions through array-api-compat: without it
    # they would hand torch or cupy arrays to numpy, so it is required like the library itself.
    needed = [_MODULES[backend]] + (["array_api_compat"] if backend != "numpy" else [])
    modules = []
    for name in needed:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise EinderivError(f"backend {backend!r} needs {name.split('.')[0]}, which is "
                                f"not installed",
                                hint=f"pip install 'einderiv[{backend}]'") from None
    module = modules[0]
    return _TorchNumpy(module) if backend == "torch" else module


# Backends whose new arrays must be placed on the inputs' device by einderiv: a specialization
# is made per device, and the constants it creates (ones, eye, ...) are made there. (jax moves
# its new, uncommitted arrays to the inputs' device itself; cupy uses the current device.)
DEVICE_BACKENDS = ("torch",)


def array_type(backend: str) -> type:
    """The class of `backend`'s own arrays: inputs of any other type are converted."""
    if backend == "numpy":
        return np.ndarray
    module = importlib.import_module(_MODULES[backend])
    return {"torch": lambda: module.Tensor, "jax": lambda: importlib.import_module("jax").Array,
            "cupy": lambda: module.ndarray, "dask": lambda: module.Array}[backend]()


def dtype_kind(dtype) -> str:
    """numpy's one-letter kind of `dtype` ('f' float, 'c' complex, 'i' integer, 'b' bool...),
    for torch's dtypes too."""
    if type(dtype).__module__ == "torch":
        return ("c" if dtype.is_complex else "f" if dtype.is_floating_point else
                "b" if str(dtype) == "torch.bool" else "i")
    dtype = np.dtype(dtype)
    if dtype.kind == "V" and "float" in dtype.name:  # ml_dtypes' bfloat16, float8_* (JAX's)
        return "f"
    return dtype.kind


def result_dtype(backend: str, xp, dtypes: list):
    """The dtype of every result: the inputs' dtypes promoted as the backend does (numpy's
    `result_type`), float64 when there are no inputs."""
    if backend == "torch":
        t = xp._torch
        out = t.float64 if not dtypes else dtypes[0]
        for d in dtypes[1:]:
            out = t.promote_types(out, d)
        return out
    return np.result_type(*dtypes) if dtypes else np.dtype(np.float64)


def cast(backend: str, value, dtype):
    """`value` (an array of `backend`) as `dtype`."""
    return value.to(dtype) if backend == "torch" else value.astype(dtype)


def on_device(backend: str, xp, device):
    """`xp` making new arrays on `device` (the inputs'), for one specialization."""
    return _TorchNumpy(xp._torch, device) if backend == "torch" else xp


def owner(backend: str):
    """A function `(result, inputs, dtype)` that returns `result` in `dtype` as an array the
    caller owns: never one of `inputs` nor a view of their memory (writing into a result must
    not change an input), nor a read-only or broadcast view."""
    if backend == "numpy":
        return _own_array
    if backend == "cupy":
        return _array_owner(importlib.import_module("cupy"))
    if backend == "torch":
        return _own_tensor
    return _immutable_owner(namespace(backend))  # jax and dask arrays are values


def apart(backend: str):
    """A function that takes a list of results (each owned, see `owner`) and copies any that
    shares memory with an earlier one, so that writing into one result changes no other."""
    if backend in ("numpy", "cupy"):
        xp = np if backend == "numpy" else importlib.import_module("cupy")
        ndarray, may_share_memory = xp.ndarray, xp.may_share_memory

        def separate(results: list) -> list:
            for i in range(1, len(results)):
                r = results[i]
                if type(r) is not ndarray:
                    continue
                for o in results[:i]:
                    # Two arrays that own their memory (base None) never share it.
                    if type(o) is ndarray and (o is r or (
                            (r.base is not None or o.base is not None)
                            and may_share_memory(r, o))):
                        results[i] = r.copy()
                        break
            return results
        return separate

    if backend == "torch":
        import torch

        def shared(r, o):
            if not (isinstance(r, torch.Tensor) and isinstance(o, torch.Tensor) and r.numel()):
                return False
            try:
                return r.untyped_storage().data_ptr() == o.untyped_storage().data_ptr()
            except (NotImplementedError, RuntimeError):  # torch.func's wrappers: no storage
                return True  # so copied: the outputs never share memory
    else:  # jax arrays are immutable; dask's __setitem__ rebinds only the object itself
        def shared(r, o):
            return r is o and backend == "dask"

    def separate(results: list) -> list:
        for i in range(1, len(results)):
            if any(shared(results[i], o) for o in results[:i]):
                results[i] = results[i].clone() if backend == "torch" else results[i].copy()
        return results
    return separate


def _array_owner(xp):
    ndarray, generic, may_share_memory = xp.ndarray, np.generic, xp.may_share_memory

    def own(r, inputs, dtype):
        if type(r) is ndarray:
            if r.dtype is not dtype and r.dtype != dtype:
                return r.astype(dtype)  # a new array
            if r.base is None:  # made by this call, or an input itself
                for a in inputs:
                    if a is r:
                        return r.copy()
                return r
            # cupy has no read-only flag: a broadcast view (a zero stride) is copied too
            if getattr(r.flags, "writeable", True) and not (r.size > 1 and 0 in r.strides) \
                    and not any(type(a) is ndarray and may_share_memory(r, a) for a in inputs):
                return r  # a view of an array made by this call
            return r.copy()
        if isinstance(r, generic):  # numpy scalars are immutable
            return r if r.dtype is dtype or r.dtype == dtype else r.astype(dtype)
        return xp.asarray(r, dtype=dtype)[()]  # a Python number
    return own


_own_array = _array_owner(np)


def _own_tensor(r, inputs, dtype):
    import torch
    if not isinstance(r, torch.Tensor):  # a Python number
        like = next((a for a in inputs if isinstance(a, torch.Tensor)), None)
        return torch.tensor(r, dtype=dtype, device=None if like is None else like.device)
    if r.dtype != dtype:
        return r.to(dtype)
    if r.numel() > 1 and 0 in r.stride():
        return r.clone()  # expanded (broadcast): one element stands for many
    try:
        storage = r.untyped_storage().data_ptr()
        for a in inputs:
            if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == storage:
                return r.clone()
    except (NotImplementedError, RuntimeError):
        # Under torch.func (vmap, grad) tensors are wrappers without a storage to compare.
        return r.clone()
    return r


def _immutable_owner(xp):
    def own(r, inputs, dtype):
        if not hasattr(r, "dtype"):  # a Python number
            return xp.asarray(r, dtype=dtype)
        if r.dtype != dtype:
            return r.astype(dtype)
        for a in inputs:
            if a is r:  # dask's __setitem__ rebinds the object: hand back another one
                return r.copy()
        return r
    return own


def array_namespace(x):
    """The array namespace of `x` for kernels: numpy for numpy arrays and Python numbers,
    otherwise the array API namespace (via array-api-compat)."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np
    import array_api_compat  # installed with every non-numpy backend (see `namespace`)
    return array_api_compat.array_namespace(x)


class _TorchNumpy:
    """torch under numpy's names, for the names generated code uses. New arrays (`ones`,
    `eye`, `arange`, ...) are made on `device`: the inputs' device."""

    # (dot: numpy's product of arrays of one or two axes, which torch's dot is not: 1-D only)
    _RENAMED = {"power": "pow", "arctan": "arctan", "divide": "divide", "dot": "matmul"}

    def __init__(self, torch, device=None):
        self._torch = torch
        self._device = device
        self.linalg = torch.linalg

    def __getattr__(self, name):
        return getattr(self._torch, self._RENAMED.get(name, name))

    def _tensor(self, value, like):
        t = self._torch
        return value if isinstance(value, t.Tensor) else t.as_tensor(value, dtype=like.dtype,
                                                                      device=like.device)

    def asarray(self, value, dtype=None):
        return self._torch.asarray(value, dtype=dtype, device=self._device)

    def sum(self, x, axis=None):
        return self._torch.sum(x) if axis is None else self._torch.sum(x, dim=axis)

    def mean(self, x, axis=None):
        return self._torch.mean(x) if axis is None else self._torch.mean(x, dim=axis)

    def _dims(self, x, axis) -> tuple:
        """numpy's axis (None, an int or a tuple, negative from the end) as torch dims."""
        if axis is None:
            return tuple(range(x.ndim))
        return tuple(a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis))

    # torch.max/min return (values, indices) for a dim and take no tuple; amax/amin are
    # numpy's max/min (a tuple, and every axis given as all dims).
    def max(self, x, axis=None, keepdims=False):
        dims = self._dims(x, axis)
        return self._torch.amax(x, dim=dims, keepdim=keepdims) if dims else x

    def min(self, x, axis=None, keepdims=False):
        dims = self._dims(x, axis)
        return self._torch.amin(x, dim=dims, keepdim=keepdims) if dims else x

    def prod(self, x, axis=None, keepdims=False):
        # torch.prod takes one dim: one axis at a time, from the last (the others keep place).
        for d in sorted(self._dims(x, axis), reverse=True):
            x = self._torch.prod(x, dim=d, keepdim=keepdims)
        return x

    def maximum(self, a, b):
        like = a if isinstance(a, self._torch.Tensor) else b
        return self._torch.maximum(self._tensor(a, like), self._tensor(b, like))

    def minimum(self, a, b):
        like = a if isinstance(a, self._torch.Tensor) else b
        return self._torch.minimum(self._tensor(a, like), self._tensor(b, like))

    def transpose(self, x, axes=None):  # numpy's: every axis placed (torch's swaps two)
        return x.permute(tuple(range(x.ndim))[::-1] if axes is None else tuple(axes))

    def trace(self, x):  # numpy's: over the first two axes of any rank (torch's: a matrix's)
        return self._torch.diagonal(x, dim1=0, dim2=1).sum(-1)

    def flip(self, x, axis=None):
        return self._torch.flip(x, tuple(range(x.ndim)) if axis is None else
                                (axis,) if isinstance(axis, int) else tuple(axis))

    def pad(self, x, widths):
        flat = [w for pair in reversed(widths) for w in pair]  # torch: last axis first
        return self._torch.nn.functional.pad(x, flat)

    def where(self, condition, a, b):
        t = self._torch
        if isinstance(a, t.Tensor) or isinstance(b, t.Tensor):  # a scalar takes the other's dtype
            like = a if isinstance(a, t.Tensor) else b
            a, b = self._tensor(a, like), self._tensor(b, like)
        return t.where(condition, a, b)

    def arange(self, *args, dtype=None):
        return self._torch.arange(*args, dtype=dtype, device=self._device)

    def eye(self, N, M=None, k=0, dtype=None):
        out = self._torch.zeros((N, N if M is None else M), dtype=dtype, device=self._device)
        out.diagonal(k).fill_(1.0)  # numpy's eye(N, M, k): ones on the k-th diagonal
        return out

    def ones(self, shape, dtype=None):
        return self._torch.ones(shape, dtype=dtype, device=self._device)

    def zeros(self, shape, dtype=None):
        return self._torch.zeros(shape, dtype=dtype, device=self._device)
