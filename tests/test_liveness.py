"""Long programs hold what is still to be read, and windows only their own entries (issue 11).

- The generated code `del`s each temporary after the line that reads it last, and the IR
  interpreter drops each node's value after its last reader: a chain cut into temporaries holds
  one link at a time, not every one until the function returns.
- `eye(n)[lo:hi]` standing alone (the Jacobian of a window) is built rows by columns on every
  backend, never as the n-by-n identity.
- The interpreter multiplies a product of scalars or of arrays on the output's labels instead of
  searching for a contraction order, and takes greedy's order where a search cannot pay.
"""
from __future__ import annotations

import ast

import numpy as np
import opt_einsum
import pytest

import einderiv
from einderiv.backends import available
from einderiv.evaluate.plan import _path



def _sin_chain(depth: int):
    e = einderiv.var("x", ("n",))
    for _ in range(depth):
        e = einderiv.fn.sin(e) * 0.9
    return einderiv.fn.sum(e)


@pytest.fixture(scope="module")
def sin_chain():
    return einderiv.compile(_sin_chain(1000))


# Before: the generated code held every temporary (~250x the input here), the interpreter every
# node's value (~2000x).
@pytest.mark.parametrize("path", ["generated", "interpreter"])
def test_a_deep_chain_holds_one_link_at_a_time(sin_chain, path, peak_bytes):
    x = np.linspace(0, 1, 4000)
    run = (lambda: sin_chain(x=x)) if path == "generated" else (lambda: sin_chain.evaluate_ir(x=x))
    expected = x
    for _ in range(1000):
        expected = np.sin(expected) * 0.9
    np.testing.assert_allclose(run(), expected.sum(), rtol=1e-12)
    # the link being computed, its sine and its product: three arrays of the input's size
    assert peak_bytes(run) < 5 * x.nbytes


def _deleted_and_read(source: str):
    """The generated function's arguments, and per statement the names it deletes / reads /
    binds."""
    (body,) = [d for d in ast.parse(source).body if isinstance(d, ast.FunctionDef)]
    arguments = {a.arg for a in body.args.args}
    lines = []
    for statement in body.body:
        deleted = {t.id for d in [statement] if isinstance(d, ast.Delete) for t in d.targets}
        read = {n.id for n in ast.walk(statement)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        bound = {n.id for n in ast.walk(statement)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        lines.append((deleted, read, bound))
    return arguments, lines


PROGRAMS = [  # outputs that are temporaries, read by other lines; results sharing a temporary
    lambda: einderiv.value_and_grad("sum(tanh(W @ x) ** 2)", "W", {"W": ("h", "d"), "x": ("d",)}),
    lambda: einderiv.hessian("mean((x - c) ** 2)", ["x", "c"], {"x": ("n",), "c": ("n",)}),
    lambda: einderiv.compile("a = sin(x)\nb = a * a + x\nc = b * a", {"x": ("n",)}),
    lambda: einderiv.grad("sum(v" + "[1:]" * 120 + " * w)", "v", {"v": (200,), "w": (80,)}),
]


@pytest.mark.parametrize("make", PROGRAMS)
def test_a_temporary_is_deleted_after_its_last_reader_and_nothing_else(make):
    result = make()
    arguments, lines = _deleted_and_read(result.source)
    for k, (deleted, _, _) in enumerate(lines):
        assert not deleted & arguments  # never an input
        for later, read, bound in lines[k + 1:]:
            assert not deleted & read, (deleted & read, result.source)  # nor a name still read
    # Every temporary the return statement does not read is deleted.
    bound = set().union(*(b for _, _, b in lines))
    returned = lines[-1][1]
    deleted = set().union(*(d for d, _, _ in lines))
    assert bound - returned - {n for n in bound if n.startswith("_dim")} == deleted


@pytest.fixture
def spied(monkeypatch):
    """The subscripts and `optimize` of every opt_einsum.contract_expression call."""
    calls, real = [], opt_einsum.contract_expression

    def spy(*args, **kwargs):
        calls.append((args[0], kwargs.get("optimize", "auto")))
        return real(*args, **kwargs)
    monkeypatch.setattr(opt_einsum, "contract_expression", spy)
    return calls


def test_the_interpreter_multiplies_products_of_scalars(spied):
    # x ** -x ** ...: each level's derivative is a product of 6 to 9 scalars, for which
    # opt_einsum's search took ~4 ms (10 s at 2,000 levels)
    source = " ** ".join(["x"] + ["-x"] * 59)
    g, f = einderiv.grad(source, "x", {"x": ()}), einderiv.compile(source, {"x": ()})
    x = 0.9
    spied.clear()
    value = g.evaluate_ir(x=np.array(x))
    assert spied == []
    h = 1e-6
    slope = (f.evaluate_ir(x=np.array(x + h)) - f.evaluate_ir(x=np.array(x - h))) / (2 * h)
    np.testing.assert_allclose(value, slope, rtol=1e-6)
    np.testing.assert_allclose(value, g(x=np.array(x)), rtol=1e-12)


def test_the_interpreter_multiplies_arrays_on_the_output_labels(spied):
    f = einderiv.compile("a = sin(x) * cos(x) * x\nb = a * x * exp(x) * 2", {"x": ("n",)})
    x = np.linspace(-1, 1, 7)
    spied.clear()
    np.testing.assert_allclose(f.evaluate_ir(x=x), np.sin(x) * np.cos(x) * x * x * np.exp(x) * 2,
                               rtol=1e-14)
    assert spied == []


def test_many_small_operands_take_greedys_order(spied):
    f = einderiv.compile("sum(A * B[0, 0] * (A * 2.0) * sum(B) * mean(B))",
                         {"A": (3, 4), "B": (4, 5)})
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(4, 5))
    spied.clear()
    np.testing.assert_allclose(f.evaluate_ir(A=A, B=B),
                               np.sum(A * B[0, 0] * A * 2 * B.sum() * B.mean()), rtol=1e-13)
    (many,) = [optimize for spec, optimize in spied if spec.count(",") >= 4]
    assert isinstance(many, list)  # greedy's path, no branch-and-bound search


def test_a_search_that_can_pay_is_kept():
    assert _path("ab,bc,cd,de,ef->af", [(600, 600)] * 5) == "auto"
    assert _path("ab,bc,cd->ad", [(2, 2)] * 3) == "auto"  # optimal: cheap for so few
    assert isinstance(_path("ab,bc,cd,de,ef->af", [(2, 2)] * 5), list)


def _converters():
    out = {"numpy": (np.asarray, np.asarray)}
    if available("torch"):
        import torch
        out["torch"] = (torch.as_tensor, lambda t: t.cpu().numpy())
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
        out["dask"] = (lambda a: da.from_array(a, chunks=3), lambda r: np.asarray(r.compute()))
    return out


WINDOWS = [("x[-2:]", lambda m: np.eye(m)[-2:]), ("x[1:-1] * 3", lambda m: 3 * np.eye(m)[1:-1]),
           ("x[2:5]", lambda m: np.eye(m)[2:5])]


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "cupy", "dask"])
@pytest.mark.parametrize("expr, expected", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_the_jacobian_of_a_window_builds_no_identity(backend, expr, expected):
    if backend != "numpy" and not available(backend):
        pytest.skip(f"{backend} is not installed")
    J = einderiv.jacobian(expr, "x", {"x": ("m",)}, backend=backend)
    assert "eye(" not in J.source and "eye(m)[" in J.formula
    to, back = _converters()[backend]
    for m in (7, 9):  # the second size from the same specialization cache
        got = J(x=to(np.linspace(0, 1, m)))
        assert type(got).__module__.split(".")[0] != "numpy" or backend in ("numpy", "cupy")
        np.testing.assert_array_equal(back(got), expected(m))


def test_the_jacobian_of_a_window_with_named_bounds_and_float32(peak_bytes):
    J = einderiv.jacobian("x[:p] * sum(y)", "x", {"x": ("m",), "y": ("p",)})
    x, y = np.ones(6, dtype=np.float32), np.ones(4, dtype=np.float32)
    got = J(x=x, y=y)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, 4 * np.eye(6)[:4])
    m = 4000  # 128 MB as an m-by-m identity; its 2 rows are 64 KB
    J = einderiv.jacobian("x[-2:]", "x", {"x": ("m",)})
    x = np.ones(m)
    J(x=x)
    assert peak_bytes(lambda: J(x=x)) < 3 * (x.nbytes + 2 * m * 8)


@pytest.mark.skipif(not available("torch"), reason="torch is not installed")
def test_the_window_is_made_on_the_inputs_gpu():
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    J = einderiv.jacobian("x[1:3] * 2", "x", {"x": ("m",)}, backend="torch")
    got = J(x=torch.linspace(0, 1, 6, device="cuda", dtype=torch.float64))
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), 2 * np.eye(6)[1:3])
