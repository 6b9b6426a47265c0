"""A new user's tour of einderiv (README, docs/, `einderiv --help`), trying to break it.

The seven faults it found (section "Faults") were strict xfails asserting the right behaviour,
computed independently (numpy by hand, JAX, the algebra of the rule given); all are fixed and
plain tests now. The other tests are edges that held. Every reference value here is worked out without einderiv.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, stdin=None):
    """`einderiv ARGS` in this process, as tests/test_docs.py runs it: (status, stdout, stderr).
    An exception that escapes `cli.main` (a traceback for the user) fails the test."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(list(args))
            except SystemExit as e:  # argparse: usage errors
                status = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = saved
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def run_cli_process(*args):
    return subprocess.run([sys.executable, "-m", "einderiv", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"
LOGISTIC_SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}


def logistic_gradient(X, y, w):
    """By hand: d/dw sum(log(1 + exp(-y X w))) = -X.T (y * sigmoid(-y X w))."""
    X, y, w = (np.asarray(a, dtype=np.float64) for a in (X, y, w))
    m = -y * (X @ w)
    return -(X.T @ (y / (1.0 + np.exp(-m))))


def _data(seed=0, n=5, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.choice([-1.0, 1.0], size=n), rng.normal(size=d)


# =============================================================================================
# Faults
# =============================================================================================

def test_jax_function_python_float_takes_the_arrays_dtype():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import einderiv.jax as ej
    f = ej.function("x * c", {"x": ("n",), "c": ()})
    with jax.enable_x64(True):
        x32 = jnp.ones(3, dtype=jnp.float32)
        expected = (x32 * 1.5).dtype  # JAX's own promotion: float32
        assert expected == jnp.float32
        assert f(x32, 1.5).dtype == expected


@pytest.mark.no_roundtrip
def test_hessian_check_fails_a_wrong_hessian_from_a_rule_file(tmp_path):
    rules = tmp_path / "twice.rules"
    rules.write_text("d tanh(x) / dx = 2 * sech2(x)\n")  # the true derivative is sech2(x)
    done = run_cli("hessian", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                   "--rules", str(rules), "--check")
    # einderiv prints diag(-4 * tanh(x) * sech2(x)); the Hessian of sum(tanh(x)) is
    # diag(-2 * tanh(x) * sech2(x)), so a check of the value must fail.
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.no_roundtrip
def test_grad_check_does_fail_the_same_wrong_rule(tmp_path):
    rules = tmp_path / "twice.rules"
    rules.write_text("d tanh(x) / dx = 2 * sech2(x)\n")
    done = run_cli("grad", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                   "--rules", str(rules), "--check")
    assert done.returncode == 1 and "check failed" in done.stderr


def test_flat_cache_does_not_reuse_a_float32_result_for_float64_x():
    problem = einderiv.flat("sum(w ** 2)", "w", {"w": (2,)})
    x32 = np.array([0.1, 0.2], dtype=np.float32)
    problem.fun(x32)
    x64 = x32.astype(np.float64)
    expected = float(x64[0] ** 2 + x64[1] ** 2)  # 0.05000000149011612
    assert problem.jac(x64).dtype == np.float64
    assert problem.fun(x64) == pytest.approx(expected, rel=1e-12)


def test_flat_in_float64_from_the_start_is_float64():
    problem = einderiv.flat("sum(w ** 2)", "w", {"w": (2,)})
    x64 = np.array([0.1, 0.2], dtype=np.float32).astype(np.float64)
    assert problem.fun(x64) == pytest.approx(float(x64[0] ** 2 + x64[1] ** 2), rel=1e-12)
    assert problem.jac(x64).dtype == np.float64


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("maker", ["hvp", "jvp", "vjp"])
def test_products_take_sizes_like_grad(maker):
    shapes = {"x": ("n",)}
    x, t = np.array([1.0, 2.0]), np.array([1.0, -1.0])
    if maker == "hvp":  # sum(x * x) * sum(eye(2)) = 2 * x @ x: H = 4 I
        r = einderiv.hvp("sum(x * x) * sum(eye(k))", "x", shapes, sizes={"k": 2})
        np.testing.assert_allclose(r(x, tangent=t), 4 * t)
    elif maker == "jvp":
        r = einderiv.jvp("x * sum(eye(k))", "x", shapes, sizes={"k": 2})
        np.testing.assert_allclose(r(x, tangent=t)[1], 2 * t)
    else:
        r = einderiv.vjp("x * sum(eye(k))", "x", shapes, sizes={"k": 2})
        np.testing.assert_allclose(r(x, cotangent=t), 2 * t)


@pytest.mark.no_roundtrip
def test_the_hint_for_a_free_dimension_names_sizes():
    with pytest.raises(einderiv.UnknownNameError, match="sizes="):
        einderiv.hvp("sum(x * x) * sum(eye(k))", "x", {"x": ("n",)})
    g = einderiv.grad("sum(x * x) * sum(eye(k))", "x", {"x": ("n",)}, sizes={"k": 2})
    np.testing.assert_allclose(g(np.array([1.0, 2.0])), [4.0, 8.0])


def test_json_outputs_never_take_an_inputs_name():
    done = run_cli("grad", "sum(dx * x)", "--wrt", "x", "--shape", "x=n", "--shape", "dx=n",
                   "--format", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert "dx" in document["inputs"]
    label = document["einstein"].split("[")[0]  # 'dx_1', as printed
    assert set(document["outputs"]).isdisjoint(document["inputs"])
    assert label in document["outputs"]


def test_generated_function_takes_inputs_in_call_order():
    g = einderiv.grad("sum(exp(z) * a)", "z", {"z": ("n",), "a": ("n",)})
    assert list(g.inputs) == ["z", "a"]
    namespace: dict = {}
    exec(g.source, namespace)
    z, a = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    arrays = {"z": z, "a": a}
    np.testing.assert_allclose(namespace["grad"](*[arrays[k] for k in g.inputs]), np.exp(z) * a)


def test_latex_labels_a_gradient_as_a_partial_derivative_whatever_the_inputs_are_called():
    g = einderiv.grad("sum(dx * x ** 2)", "x", {"x": ("n",), "dx": ("n",)})
    assert r"\frac{\partial f}{\partial x}" in g.latex


def test_latex_label_without_a_clash():
    g = einderiv.grad("sum(v * x ** 2)", "x", {"x": ("n",), "v": ("n",)})
    assert r"\frac{\partial f}{\partial x}" in g.latex


# =============================================================================================
# Edges that held
# =============================================================================================

@pytest.mark.parametrize("kind", ["fortran", "noncontiguous", "readonly", "matrix", "masked",
                                  "memmap", "list", "broadcast"])
def test_array_kinds_give_the_hand_gradient(kind, tmp_path):
    X, y, w = _data(1)
    if kind == "fortran":
        X = np.asfortranarray(X)
    elif kind == "noncontiguous":
        X = np.repeat(X, 2, axis=1)[:, ::2]
        y = np.repeat(y, 3)[::3]
    elif kind == "readonly":
        X = X.copy()
        X.setflags(write=False)
    elif kind == "matrix":
        X = np.matrix(X)
    elif kind == "masked":
        X = np.ma.masked_array(X, mask=np.zeros(X.shape, dtype=bool))
    elif kind == "memmap":
        m = np.memmap(tmp_path / "X.dat", dtype=np.float64, mode="w+", shape=X.shape)
        m[:] = X
        X = m
    elif kind == "list":
        X, y, w = X.tolist(), y.tolist(), w.tolist()
    elif kind == "broadcast":
        X = np.broadcast_to(X[0], X.shape)  # stride 0
    g = einderiv.grad(LOGISTIC, "w", LOGISTIC_SHAPES)
    out = g(X, y, w)
    assert type(out) is np.ndarray and out.dtype == np.float64
    np.testing.assert_allclose(out, logistic_gradient(X, y, w), rtol=1e-12)


@pytest.mark.no_roundtrip
def test_masked_entries_and_complex_inputs_are_input_errors():
    X, y, w = _data(2)
    g = einderiv.grad(LOGISTIC, "w", LOGISTIC_SHAPES)
    with pytest.raises(einderiv.InputError):
        g(np.ma.masked_array(X, mask=np.eye(*X.shape, dtype=bool)), y, w)
    with pytest.raises(einderiv.InputError):
        g(X + 0j, y, w)
    with pytest.raises(einderiv.InputError):
        g(X, y, w, w)
    with pytest.raises(einderiv.InputError):
        g(X, y, w=w, X=X)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_keeps_its_dtype_and_accuracy(dtype):
    X, y, w = (a.astype(dtype) for a in _data(3))
    out = einderiv.grad(LOGISTIC, "w", LOGISTIC_SHAPES)(X, y, w)
    assert out.dtype == dtype
    tol = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(out.astype(float), logistic_gradient(X, y, w), rtol=tol, atol=tol)


def test_same_array_as_two_inputs_and_repeated_wrt_give_owned_results():
    a = np.arange(3.0)
    g = einderiv.grad("sum(x * y)", ["x", "y"], {"x": ("n",), "y": ("n",)})
    dx, dy = g(a, a)
    np.testing.assert_array_equal(dx, a)
    np.testing.assert_array_equal(dy, a)
    assert not np.shares_memory(dx, dy) and not np.shares_memory(dx, a)
    d1, d2 = einderiv.grad("sum(x * x)", ["x", "x"], {"x": ("n",)})(a)
    np.testing.assert_array_equal(d1, 2 * a)
    assert not np.shares_memory(d1, d2)
    d1 *= 100  # the caller changes a result: the next call is not affected
    np.testing.assert_array_equal(einderiv.grad("sum(x * x)", ["x", "x"], {"x": ("n",)})(a)[0],
                                  2 * a)
    np.testing.assert_array_equal(a, np.arange(3.0))


def test_products_with_lists_of_wrt_against_hand_derivatives():
    rng = np.random.default_rng(4)
    W, x = rng.normal(size=(3, 2)), rng.normal(size=2)
    tW, tx = rng.normal(size=(3, 2)), rng.normal(size=2)
    shapes = {"W": ("m", "n"), "x": ("n",)}
    t = np.tanh(W @ x)
    s = 1 - t ** 2
    # jvp of tanh(W @ x) along (tW, tx): s * (tW @ x + W @ tx)
    value, tangent = einderiv.jvp("tanh(W @ x)", ["W", "x"], shapes)(W, x, tangent=(tW, tx))
    np.testing.assert_allclose(value, t)
    np.testing.assert_allclose(tangent, s * (tW @ x + W @ tx))
    # vjp by (W, x): (outer(s * c, x), W.T @ (s * c))
    c = rng.normal(size=3)
    vW, vx = einderiv.vjp("tanh(W @ x)", ["W", "x"], shapes)(W, x, cotangent=c)
    np.testing.assert_allclose(vW, np.outer(s * c, x))
    np.testing.assert_allclose(vx, W.T @ (s * c))
    # hvp of sum(tanh(W @ x) ** 2) by x: W.T diag(2 s^2 - 4 t^2 s) W
    hv = einderiv.hvp("sum(tanh(W @ x) ** 2)", "x", shapes)
    H = W.T @ ((2 * s * s - 4 * t * t * s)[:, None] * W)
    np.testing.assert_allclose(hv(W, x, tangent=tx), H @ tx)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(hv))(W, x, tangent=tx), H @ tx)


def test_eight_threads_on_fresh_products():
    shapes = {"W": ("m", "n"), "x": ("n",)}
    hv = einderiv.hvp("sum(tanh(W @ x) ** 2)", "x", shapes)
    vj = einderiv.vjp("tanh(W @ x)", "x", shapes)
    barrier = threading.Barrier(8)

    def job(i):
        rng = np.random.default_rng(100 + i)
        m, n = 2 + i % 3, 2 + i % 2
        W, x, v, c = (rng.normal(size=(m, n)), rng.normal(size=n), rng.normal(size=n),
                      rng.normal(size=m))
        barrier.wait()
        t = np.tanh(W @ x)
        s = 1 - t ** 2
        H = W.T @ ((2 * s * s - 4 * t * t * s)[:, None] * W)
        return (np.allclose(hv(W, x, tangent=v), H @ v)
                and np.allclose(vj(W, x, cotangent=c), W.T @ (s * c)))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(8)))


def test_jax_function_derivatives_match_jax():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import einderiv.jax as ej
    f = ej.function("sum(tanh(W @ x) ** 2) * c", {"W": ("m", "n"), "x": ("n",), "c": ()})
    ref = lambda W, x, c: jnp.sum(jnp.tanh(W @ x) ** 2) * c
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        W, x, c = jnp.array(rng.normal(size=(3, 2))), jnp.array(rng.normal(size=2)), 1.5
        ours = jax.grad(f, argnums=(0, 1))(W, x, c)
        theirs = jax.grad(ref, argnums=(0, 1))(W, x, c)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-10)
        g = ej.function("x * c", {"x": ("n",), "c": ()})
        assert g(jnp.ones(3, dtype=jnp.float32), jnp.float32(1.5)).dtype == jnp.float32


def test_torch_function_gradients_and_dtypes():
    torch = pytest.importorskip("torch")
    import einderiv.torch as et
    F = et.function("sum(tanh(W @ x) ** 2)", {"W": ("m", "n"), "x": ("n",)})
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, dtype=torch.float32, generator=gen, requires_grad=True)
    x = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    out = F(W, x)
    assert out.dtype == torch.float64
    out.backward()
    assert W.grad.dtype == torch.float32 and x.grad.dtype == torch.float64
    t = np.tanh(W.detach().double().numpy() @ x.detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), W.detach().double().numpy().T @ (2 * t * (1 - t ** 2)))
    G = et.function("x * c", {"x": ("n",), "c": ()})
    assert G(torch.ones(3, dtype=torch.float32), 1.5).dtype == torch.float32


def test_flat_against_hand_derivatives():
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.2]])
    y = np.array([1.0, -1.0, 0.5])
    problem = einderiv.flat("sum((X @ w - y) ** 2)", "w", LOGISTIC_SHAPES, data={"X": X, "y": y})
    fun, jac, hess, hessp = problem
    w = np.array([0.3, -0.7])
    assert fun(w) == pytest.approx(float(np.sum((X @ w - y) ** 2)), rel=1e-14)
    np.testing.assert_allclose(jac(w), 2 * X.T @ (X @ w - y))
    np.testing.assert_allclose(hess(w), 2 * X.T @ X)
    np.testing.assert_allclose(hessp(w, np.array([1.0, 2.0])), 2 * X.T @ X @ [1.0, 2.0])
    assert problem.data["X"].flags.writeable is False


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("args, message", [
    (["grad", "sum(x", "--wrt", "x", "--shape", "x=n"], "unexpected end of input"),
    (["grad", "sum(\u00e9)", "--wrt", "x", "--shape", "x=n"], "expressions are written in ASCII"),
    (["grad", "x", "--wrt", "x", "--shape", "x=n"], "needs a scalar output"),
    (["grad", "sum(x)", "--wrt", "x", "--shape", "x=n+m"], "not a sum of two names"),
    (["grad", "sum(x)", "--wrt", "x", "--shape", "x=n", "--tol", "1e-3"], "add --check"),
    (["grad", "sum(x)", "--wrt", "x", "--shape", "x=n", "--rules", "/nonexistent"],
     "cannot read rule file"),
])
def test_cli_bad_input_is_a_clean_error_with_status_2(args, message):
    done = run_cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and message in done.stderr


@pytest.mark.no_roundtrip
def test_cli_parse_error_points_with_a_caret_past_tabs():
    done = run_cli_process("grad", "x: [n];\t\tsum(x ** * 2)", "--wrt", "x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    shown, caret = done.stderr.splitlines()[1:3]
    assert shown[caret.index("^")] == "*"


def test_cli_expression_from_standard_input_with_crlf():
    done = run_cli("grad", "-", "--wrt", "x", stdin="x: [n]\r\nsum(x * x)\r\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2 * x"


def test_cli_check_in_json_reports_and_passes_a_right_gradient():
    done = run_cli("grad", LOGISTIC, "--wrt", "w", "--shape", "X=n,d", "--shape", "y=n",
                   "--shape", "w=d", "--check", "--format", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["check"]["ok"] is True and document["check"]["error"] < 1e-6
    assert document["inputs"] == {"X": ["n", "d"], "y": ["n"], "w": ["d"]}
