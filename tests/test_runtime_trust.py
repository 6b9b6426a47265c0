"""The runtime that calls generated code and the IR interpreter can be trusted (issue 10):
the same inputs give the same answer whatever was called before, a result is never an input
or a view of one, results keep the inputs' dtype, complex inputs are refused, concurrent first
calls do not interfere, and a failing call is an EinderivError, never a raw traceback.
"""

import numpy as np
import pytest

import einderiv
from einderiv import EvaluationError, InputError, ShapeError
from einderiv.backends import available
from einderiv.evaluate.plan import Plan

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

SQUARE = {"A": ("n", "n"), "B": ("n", "n")}
A = np.array([[1.0, 2.0], [3.0, 4.0]])


# 1. The fast path trusts only what the checks would hand to the code -------------------------

def test_a_matrix_after_an_array_is_not_a_matrix_product():
    f = einderiv.compile("sum(A * B)", SQUARE)
    assert f(A=A, B=A + 1) == 40.0
    assert f(A=np.matrix(A), B=np.matrix(A + 1)) == 40.0  # was 74: np.matrix's * ran
    assert f(A=A, B=A + 1) == 40.0


def test_a_matrix_first_then_an_array():
    f = einderiv.compile("sum(A * B)", SQUARE)
    for _ in range(3):
        assert f(A=np.matrix(A), B=np.matrix(A + 1)) == 40.0
        assert f(A=A, B=A + 1) == 40.0


@pytest.mark.parametrize("convert", [
    np.matrix, list, np.ma.masked_array, lambda a: a.astype(np.int64),
    lambda a: np.asarray(a, dtype=np.float32).astype(np.float64),
], ids=["matrix", "list", "masked", "int64", "float64-copy"])
def test_every_kind_of_input_gives_the_same_answer_after_a_fast_call(convert):
    f = einderiv.compile("sum(A * B)", SQUARE)
    g = einderiv.grad("sum(A @ B)", "A", SQUARE)
    expected = np.ones((2, 2)) @ (A + 1).T
    for _ in range(2):  # the second round runs on cached specializations
        assert f(A=A, B=A + 1) == 40.0
        assert f(A=convert(A), B=convert(A + 1)) == 40.0
        np.testing.assert_array_equal(g(A=A, B=A + 1), expected)
        np.testing.assert_array_equal(g(A=convert(A), B=convert(A + 1)), expected)


def test_dask_arrays_on_the_numpy_backend_are_converted():
    if not available("dask"):
        pytest.skip("dask is not installed")
    import dask.array as da
    f = einderiv.compile("sum(A * B)", SQUARE)
    assert f(A=A, B=A + 1) == 40.0
    result = f(A=da.from_array(A), B=da.from_array(A + 1))
    assert type(result).__module__.split(".")[0] == "numpy" and result == 40.0


def test_torch_tensors_on_the_numpy_backend_are_converted():
    if not available("torch"):
        pytest.skip("torch is not installed")
    import torch
    g = einderiv.grad("sum(x * y)", "y", {"x": ("n",), "y": ("n",)})
    x = np.arange(3.0)
    g(x=x, y=x)
    result = g(x=torch.as_tensor(x), y=torch.as_tensor(x))
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, x)


# 3. Results never alias an input -----------------------------------------------------------

def _assert_owned(result, *inputs):
    for r in result if isinstance(result, tuple) else (result,):
        if isinstance(r, np.ndarray):
            assert r.flags.writeable
            for a in inputs:
                assert r is not a and not np.may_share_memory(r, a)


def test_a_gradient_is_not_the_callers_array():
    g = einderiv.grad("sum(x * y)", "y", {"x": ("n",), "y": ("n",)})
    x, y = np.array([1.0, 2.0, 3.0]), np.ones(3)
    for call in (g, g.evaluate_ir, g):  # the second g call takes the fast path
        dy = call(x=x, y=y)
        assert dy is not x and not np.may_share_memory(dy, x)
        dy *= 0.1  # an update in place must not rescale the user's data
        np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("expr", ["x", "x.T", "x[1:]", "x[-2:]", "X[:, 1]", "X.T", "X[0]", "X + 0",
                                  "X * 1"])
def test_no_result_shares_memory_with_an_input(expr):
    shapes = {"x": ("n",), "X": ("n", "n")}
    f = einderiv.compile(expr, shapes)
    x, X = np.arange(3.0), np.arange(9.0).reshape(3, 3)
    inputs = {k: v for k, v in {"x": x, "X": X}.items() if k in f.inputs}
    for call in (f, f, f.evaluate_ir):
        _assert_owned(call(**inputs), x, X)


def test_a_noncontiguous_input_makes_no_view_either():
    f = einderiv.compile("X.T", {"X": ("n", "n")})
    X = np.arange(16.0).reshape(4, 4)
    strided, contiguous = X[::2, ::2], np.ascontiguousarray(X[::2, ::2])
    _assert_owned(f(X=strided), X)  # the same signature, other memory layouts
    _assert_owned(f(X=contiguous), contiguous)
    _assert_owned(f(X=strided), X)


@pytest.mark.parametrize("expr", ["(y - x) @ abs(x)", "x @ (B @ C) @ y", "x @ B @ y"])
def test_results_do_not_share_memory_with_each_other(expr):
    # Hessian blocks [0][1] and [1][0] were one array twice, or an array and its transpose.
    shapes = {"x": ("n",), "y": ("n",), "B": ("n", "n"), "C": ("n", "n")}
    h = einderiv.hessian(expr, ["x", "y"], shapes)
    rng = np.random.default_rng(2)
    arrays = {k: rng.normal(size=(3,) * len(v)) for k, v in shapes.items()}
    for call in (h, h, h.evaluate_ir):
        blocks = [b for row in call(**arrays) for b in row]
        _assert_owned(tuple(blocks), *arrays.values())
        for i, a in enumerate(blocks):
            for b in blocks[i + 1:]:
                assert a is not b and not np.may_share_memory(a, b)


def test_a_python_float_takes_the_arrays_dtype():
    # As numpy's result_type: a Python number is weak, a numpy scalar or 0-d array is not.
    f = einderiv.compile("s * x + s", {"s": (), "x": ("n",)})
    g = einderiv.grad("s * sum(x)", "s", {"s": (), "x": ("n",)})
    x = np.ones(3, np.float32)
    for call in (f, f.evaluate_ir, g, g.evaluate_ir):
        assert call(s=2.0, x=x).dtype == np.float32
        assert call(s=2, x=x).dtype == np.float32
        assert call(s=np.float64(2.0), x=x).dtype == np.float64
        assert call(s=np.array(2.0), x=x).dtype == np.float64
        assert call(s=2.0, x=x).dtype == np.float32  # not the float64 specialization


def test_broadcast_and_constant_results_are_owned_arrays():
    # ones, eye and broadcast results are writeable arrays of the caller's own, and a
    # constant kept by the interpreter (an identity) is not handed out to be written into.
    jac = einderiv.jacobian("x", "x", {"x": ("n",)})
    grad = einderiv.grad("sum(x)", "x", {"x": ("n",)})
    x = np.ones(3)
    for f in (jac, grad):
        for call in (f, f.evaluate_ir):
            first = call(x=x)
            _assert_owned(first, x)
            expected = first.copy()
            first[...] = 7.0
            np.testing.assert_array_equal(call(x=x), expected)


def test_dask_results_are_new_objects():
    if not available("dask"):
        pytest.skip("dask is not installed")
    import dask.array as da
    g = einderiv.grad("sum(x * y)", "y", {"x": ("n",), "y": ("n",)}, backend="dask")
    x = da.from_array(np.arange(3.0))
    dy = g(x=x, y=x)
    assert dy is not x
    dy[0] = 5.0  # dask's __setitem__ rebinds the array it is called on
    np.testing.assert_array_equal(x.compute(), [0.0, 1.0, 2.0])


def test_torch_results_do_not_share_storage_with_an_input():
    if not available("torch"):
        pytest.skip("torch is not installed")
    import torch
    g = einderiv.grad("sum(x * y)", "y", {"x": ("n",), "y": ("n",)}, backend="torch")
    f = einderiv.compile("x[1:]", {"x": ("n",)}, backend="torch")
    x = torch.arange(3.0)
    for _ in range(2):
        dy = g(x=x, y=x)
        dy *= 10
        tail = f(x=x)
        tail *= 10
        assert x.tolist() == [0.0, 1.0, 2.0]


# 9. Complex inputs are refused -------------------------------------------------------------

COMPLEX = np.array([1 + 2j, -0.5 + 0.3j])


def test_complex_inputs_are_an_input_error_naming_the_variable():
    f = einderiv.compile("norm(x)", {"x": ("n",)})
    g = einderiv.grad("sum(abs(x * x))", "x", {"x": ("n",)})
    for call in (f, f.evaluate_ir, g, g.evaluate_ir):
        with pytest.raises(InputError, match="'x' is complex"):
            call(x=COMPLEX)
        with pytest.raises(InputError, match="'x' is complex"):
            call(x=[1j, 2.0])
    g(x=COMPLEX.real)  # a real array of the same shape: cached...
    with pytest.raises(InputError, match="'x' is complex"):
        g(x=COMPLEX)  # ...and the complex one is still refused


@pytest.mark.parametrize("value", [np.array(["a", "b"]), np.array([None, 1.0], dtype=object)])
def test_non_numeric_inputs_are_an_input_error(value):
    f = einderiv.compile("sum(x)", {"x": ("n",)})
    for call in (f, f.evaluate_ir):
        with pytest.raises(InputError, match="'x' has dtype"):
            call(x=value)


@pytest.mark.no_roundtrip
def test_a_masked_array_is_refused_not_unmasked():
    # np.asarray drops the mask: sum of [1, 2, --] would silently be 103, not numpy's 3.
    f = einderiv.compile("sum(x)", {"x": ("n",)})
    f(x=np.ones(3))  # a fast call first: the masked array must not take its path either
    masked = np.ma.masked_array([1.0, 2.0, 100.0], mask=[0, 0, 1])
    for call in (f, f.evaluate_ir):
        with pytest.raises(InputError, match="'x' is a masked array"):
            call(x=masked)


def test_a_function_the_backend_lacks_is_an_evaluation_error():
    if not available("dask"):
        pytest.skip("dask is not installed")
    import dask.array as da
    # dask has no det (a missing attribute), and its SVD (in adj, det's derivative) no square
    # matrices (NotImplementedError): each is an EvaluationError that points at the backend.
    f = einderiv.compile("det(X)", {"X": ("n", "n")}, backend="dask")
    with pytest.raises(EvaluationError, match="det") as info:
        f(X=da.from_array(np.eye(2) + 1))
    assert "backend" in str(info.value)
    g = einderiv.grad("det(X)", "X", {"X": ("n", "n")}, backend="dask")
    with pytest.raises(EvaluationError, match="dask") as info:
        g(X=da.from_array(np.eye(2) + 1))
    assert "backend" in str(info.value)


def test_complex_inputs_are_refused_on_dask():
    if not available("dask"):
        pytest.skip("dask is not installed")
    import dask.array as da
    g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)}, backend="dask")
    for value in (COMPLEX, da.from_array(COMPLEX)):
        with pytest.raises(InputError, match="'x' is complex"):
            g(x=value)


def test_complex_inputs_are_refused_on_torch():
    if not available("torch"):
        pytest.skip("torch is not installed")
    import torch
    g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)}, backend="torch")
    for value in (COMPLEX, torch.as_tensor(COMPLEX)):
        with pytest.raises(InputError, match="'x' is complex"):
            g(x=value)


# 12. The result dtype is the inputs' result type -------------------------------------------

VECTORS = {"x": ("n",), "y": ("n",), "A": ("n", "n"), "X": ("n", "d"), "w": ("d",)}
SWEEP = [  # (kind, expression, wrt): each constant constructor, kernel and number form
    ("grad", "sum(x[1:])", "x"), ("grad", "mean(x)", "x"), ("grad", "sum(relu(x))", "x"),
    ("grad", "sum(x * x)", "y"), ("grad", "sum(x[1:] * x[:-1])", "x"),
    ("grad", "x[1] * sum(x)", "x"), ("grad", "sum(maximum(x, 0.5))", "x"),
    ("grad", "logsumexp(x)", "x"), ("grad", "sum(x) / size(n) + 2.5", "x"),
    ("grad", "logdet(A)", "A"), ("grad", "det(A)", "A"), ("grad", "sum(inv(A))", "A"),
    ("grad", "sum(x * y)", ["x", "y"]), ("grad", "sum(softplus(X @ w))", "w"),
    ("jacobian", "softmax(x)", "x"), ("jacobian", "x[1:]", "x"), ("jacobian", "x", "x"),
    ("jacobian", "A @ x", "A"), ("jacobian", "sigmoid(x) * 3", "x"),
    ("hessian", "x @ A @ x", "x"), ("hessian", "sum(relu(x) * x)", "x"),
    ("hessian", "logsumexp(x)", "x"), ("hessian", "sum(x * y)", ["x", "y"]),
    ("value_and_grad", "sum(tanh(X @ w)) + mean(w)", "w"),
    ("compile", "A + eye(n)", None), ("compile", "sum(x) + size(n)", None),
    ("compile", "ones(n) * 2", None), ("compile", "softmax(x)", None),
    ("compile", "zeros(n) + sum(x)", None), ("compile", "2.5", None),
    ("compile", "sum(x) * exp(2) + tanh(-0.5) * sigmoid(1.0)", None),
    ("grad", "sum(x * log(3) + maximum(x, -0.5))", "x"),
]


def _build(kind, expr, wrt):
    shapes = {k: v for k, v in VECTORS.items()}
    if kind == "compile":
        return einderiv.compile(expr, shapes)
    return getattr(einderiv, kind)(expr, wrt, shapes)


def _sweep_inputs(dtypes):
    rng = np.random.default_rng(0)
    sizes = {"n": 3, "d": 2}
    out = {}
    for name, shape in VECTORS.items():
        a = rng.normal(size=[sizes[d] for d in shape]) + (4 * np.eye(3) if name == "A" else 0)
        out[name] = a.astype(dtypes.get(name, dtypes["*"]))
    return out


def _leaves(result):
    if isinstance(result, tuple):
        return [leaf for r in result for leaf in _leaves(r)]
    return [result]


@pytest.mark.parametrize("dtypes", [{"*": np.float32}, {"*": np.float64},
                                    {"*": np.float32, "A": np.float64},
                                    {"*": np.float16, "w": np.float32}],
                         ids=["float32", "float64", "mixed", "mixed-half"])
def test_every_result_has_the_inputs_result_type(dtypes):
    arrays = _sweep_inputs(dtypes)
    wrong = []
    for kind, expr, wrt in SWEEP:
        f = _build(kind, expr, wrt)
        given = {k: v for k, v in arrays.items() if k in VECTORS}
        expected = np.result_type(*given.values())
        for how, call in (("generated", f), ("again", f), ("ir", f.evaluate_ir)):
            with np.errstate(all="ignore"):
                for leaf in _leaves(call(**given)):
                    if leaf.dtype != expected:  # a Python float has no dtype: a failure too
                        wrong.append(f"{kind} {expr} ({how}): {leaf.dtype}")
    assert not wrong, f"{len(wrong)} results of another dtype than {expected}:\n" + \
        "\n".join(wrong)


def test_float32_results_agree_with_float64():
    for kind, expr, wrt in SWEEP:
        f = _build(kind, expr, wrt)
        low = _leaves(f(**_sweep_inputs({"*": np.float32})))
        high = _leaves(f(**_sweep_inputs({"*": np.float64})))
        for a, b in zip(low, high):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4, err_msg=f"{kind} {expr}")


def _backend(name):
    """(backend, to the backend's float32 arrays, back to numpy, is it on the right device)."""
    backend = name.split("-")[0]
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    if name == "torch-cuda":
        import torch
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        return (backend, lambda a: torch.as_tensor(a, device="cuda"),
                lambda t: t.cpu().numpy(), lambda t: t.device.type == "cuda")
    if backend == "torch":
        import torch
        return backend, torch.as_tensor, lambda t: t.numpy(), lambda t: t.device.type == "cpu"
    if backend == "dask":
        import dask.array as da
        return (backend, lambda a: da.from_array(a, chunks=2), lambda a: np.asarray(a.compute()),
                lambda a: isinstance(a, da.Array))
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        return backend, jnp.asarray, np.asarray, lambda a: isinstance(a, jax.Array)
    import cupy
    return backend, cupy.asarray, cupy.asnumpy, lambda a: isinstance(a, cupy.ndarray)


@pytest.mark.parametrize("name", ["dask", "torch", "torch-cuda", "jax", "cupy"])
def test_float32_on_other_backends(name):
    backend, to, back, placed = _backend(name)
    arrays = _sweep_inputs({"*": np.float32})
    for kind, expr, wrt in SWEEP:
        if backend == "dask" and ("det(" in expr or "inv(" in expr):
            continue  # dask.array.linalg has no det; inv needs scipy: covered by test_backends
        expected = _leaves(_build(kind, expr, wrt)(**arrays))
        g = getattr(einderiv, kind)(expr, wrt, dict(VECTORS), backend=backend) \
            if kind != "compile" else einderiv.compile(expr, dict(VECTORS), backend=backend)
        for leaf, want in zip(_leaves(g(**{k: to(v) for k, v in arrays.items()})), expected):
            assert str(leaf.dtype).endswith("float32"), f"{kind} {expr}: {leaf.dtype}"
            assert placed(leaf), f"{kind} {expr}: {type(leaf)} {getattr(leaf, 'device', '')}"
            np.testing.assert_allclose(back(leaf), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{kind} {expr}")


# Numpy inputs on another backend, and failures that are no bad input -----------------------

def test_numpy_inputs_on_dask_are_converted():
    if not available("dask"):
        pytest.skip("dask is not installed")
    import dask.array as da
    shapes = {"A": ("d", "d")}
    expr = "logdet(A) + tr(inv(A) @ A.T) + sum(diag(A))"  # was `AttributeError: chunks`
    a = np.random.default_rng(1).normal(size=(3, 3)) + 4 * np.eye(3)
    result = einderiv.grad(expr, "A", shapes, backend="dask")(A=a)
    assert isinstance(result, da.Array)
    np.testing.assert_allclose(result.compute(), einderiv.grad(expr, "A", shapes)(A=a),
                               rtol=1e-10)


def test_numpy_inputs_on_torch_are_converted():
    if not available("torch"):
        pytest.skip("torch is not installed")
    import torch
    shapes = {"A": ("n", "n"), "x": ("n",)}
    g = einderiv.grad("sum(A @ x)", "x", shapes, backend="torch")
    result = g(A=np.ones((3, 3)), x=np.ones(3))  # was a TypeError blaming the rule tables
    assert isinstance(result, torch.Tensor) and result.tolist() == [3.0, 3.0, 3.0]


def test_a_torch_runtime_error_is_an_evaluation_error():
    if not available("torch"):
        pytest.skip("torch is not installed")
    import torch
    g = einderiv.grad("sum(inv(A))", "A", {"A": ("n", "n")}, backend="torch")
    with pytest.raises(EvaluationError, match="singular"):  # torch raises a RuntimeError
        g(A=torch.zeros(2, 2))


def test_running_out_of_memory_is_an_evaluation_error():
    # A broadcast input takes no memory, but a result of its shape needs 2**61 bytes: more
    # than any address space, so the allocation fails at once whatever the overcommit policy.
    X = np.broadcast_to(np.zeros(()), (2**29, 2**29))
    for expr in ("X * 2 + 1", "X"):  # computed, or a copy of the input
        f = einderiv.compile(expr, {"X": ("n", "m")})
        for call in (f, f, f.evaluate_ir):
            with pytest.raises(EvaluationError, match="out of memory"):
                call(X=X)


# 6(b). Concurrent first calls with different shapes ----------------------------------------

SLICE = "x: [m]; z: [p]; sum(x[:p] * z)"


def test_concurrent_first_calls_with_different_shapes(run_threads):
    # 8 threads make first calls of new shape signatures on the same functions, about one in
    # four invalid (a slice x[:p] with p > m): every invalid call must raise ShapeError, every
    # valid one must be right, whatever the other threads are doing. Fresh functions each
    # round, so that most calls are first calls.
    rounds, threads_per_round, calls_per_thread = 8, 8, 100
    wrong, spurious, missed, done = [], [], [], []

    def expected(kind, x, z):
        p = len(z)
        if kind == "grad":
            return np.concatenate([z, np.zeros(len(x) - p)])
        return float(x[:p] @ z)

    def worker(functions, seed):
        rng = np.random.default_rng(seed)
        for _ in range(calls_per_thread):
            m, p = int(rng.integers(1, 25)), int(rng.integers(1, 30))
            kind, f = functions[int(rng.integers(len(functions)))]
            x, z = rng.normal(size=m), rng.normal(size=p)
            done.append(1)
            try:
                result = f(x=x, z=z)
            except ShapeError:
                if p <= m:
                    spurious.append((kind, m, p))
                continue
            except Exception as e:  # noqa: BLE001 - any other error is spurious too
                spurious.append((kind, m, p, repr(e)))
                continue
            if p > m:
                missed.append((kind, m, p))  # numpy's clipped value, not an error
            elif not np.allclose(result, expected(kind, x, z), rtol=1e-12, atol=1e-12):
                wrong.append((kind, m, p))

    for r in range(rounds):
        compiled = einderiv.compile(SLICE)
        plan = Plan(list(compiled.roots.values()), accepted=compiled.lowered.declared)
        functions = [("value", compiled), ("grad", einderiv.grad(SLICE, "x")),
                     ("value", lambda **arrays: plan(arrays)[0])]  # one shared Plan
        run_threads(*[(worker, functions, 100 * r + k) for k in range(threads_per_round)])
    assert len(done) == rounds * threads_per_round * calls_per_thread
    assert not wrong and not spurious and not missed, (wrong[:5], spurious[:5], missed[:5])
