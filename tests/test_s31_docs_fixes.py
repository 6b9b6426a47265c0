"""The faults of breaker session 31 (tests/test_breaker_s31_docs.py), fixed, on other inputs of
the same kinds: values and derivatives past numpy's 32 axes, positional arrays bound by
`.inputs`, `--shape` errors, `--check` inside the expression's domain, non-integer sizes,
`mode=` of conv1d and conv2d, numpy's trace of a non-square matrix."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import InputError, ShapeError
from einderiv.ir.dims import MAX_RANK

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args, timeout=120):
    p = subprocess.run([sys.executable, "-m", "einderiv", *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def shape_of(rank: int, prefix: str = "d") -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(rank))


# -- 1. at most 32 axes: refused where made, never numpy's error at the call ----------------------

@pytest.mark.parametrize("make", [
    lambda: einderiv.compile("x * 2", {"x": shape_of(33)}),
    lambda: einderiv.compile("x: [" + ", ".join(["1"] * 33) + "]; x * 2"),
    lambda: einderiv.var("x", shape_of(33)),
    lambda: einderiv.compile("X[None] * 2", {"X": shape_of(32)}),
    lambda: einderiv.compile("X[:, None] + Y", {"X": shape_of(32), "Y": (1,) * 33}),
    lambda: einderiv.grad("sum(stack((y, y)) * x)", "x", {"x": (), "y": shape_of(32)}),
    lambda: einderiv.hessian("sum(exp(X))", "X", {"X": shape_of(17)}),
    lambda: einderiv.jacobian("sin(X)", "X", {"X": shape_of(20)}),
    lambda: einderiv.jacobian("y @ x", "y", {"x": ("n",), "y": shape_of(31) + ("n",)}),
])
def test_a_value_or_derivative_past_32_axes_is_a_shape_error_when_made(make):
    with pytest.raises(ShapeError, match=rf"axes.*more than the {MAX_RANK}") as info:
        make()
    assert "numpy's limit" in (info.value.hint or "")


def test_the_place_of_a_value_past_the_limit_has_a_caret():
    with pytest.raises(ShapeError) as info:
        einderiv.compile("x: [n]; y = exp(x); sum(y" + "[None]" * 33 + ")")
    # under the first subexpression with 33 axes, not the whole statement
    assert (info.value.line, info.value.column) == (1, 25) and "has 33 axes" in str(info.value)


def test_a_jacobian_at_the_limit_computes_every_way():
    """32 axes in all: the output's (some of size 1) and the input's."""
    x = np.array([0.2, -0.4, 1.1])
    J = einderiv.jacobian("y: [n]; tanh(x[None, None] * y) ** 2", "x", {"x": ("n",)})
    assert J(x=x, y=x).shape == (1, 1, 3, 3)
    # rank 29 + 1 output axes and 1 + 1 of x: at the limit exactly
    expr = "x: [n]; exp(x" + "[None]" * 29 + ")[None]"
    J = einderiv.jacobian(expr, "x")
    assert "eye(1)" not in J.formula
    want = np.diag(np.exp(x))
    for got in (J(x=x), J.evaluate_ir(x=x), einderiv.compile(J.formula, {"x": ("n",)})(x=x)):
        assert got.shape == (1,) * 30 + (3, 3) and np.allclose(got.reshape(3, 3), want)


@pytest.mark.parametrize("shape", [(1, "n"), ("n", 1), (1, "n", 1), (1, 1)])
def test_jacobians_of_axes_of_size_one_have_no_eye_of_one(shape):
    sizes = {"n": 3}
    X = np.random.default_rng(0).normal(size=[sizes.get(d, d) for d in shape])
    J = einderiv.jacobian("sin(X)", "X", {"X": shape})
    assert "eye(1)" not in J.formula
    want = np.diag(np.cos(X).ravel()).reshape(X.shape + X.shape)
    assert np.allclose(J(X=X), want) and np.allclose(J.evaluate_ir(X=X), want)
    assert np.allclose(einderiv.compile(J.formula, {"X": shape})(X=X), want)


def test_hessians_and_products_below_the_limit_run():
    X = np.full((2,) + (1,) * 15, 0.3)
    H = einderiv.hessian("sum(exp(X))", "X", {"X": shape_of(16)})
    assert H(X=X).shape == X.shape * 2
    # vjp, jvp and hvp of a 27-axis input: shaped like it, never 54 axes
    shapes = {"X": shape_of(27)}
    X = np.full((1,) * 27, 0.5)
    hv = einderiv.hvp("sum(exp(X))", "X", shapes)(X=X, tangent=np.ones_like(X))
    assert hv.shape == X.shape and float(hv.ravel()[0]) == pytest.approx(np.exp(0.5))


def test_numpy_axis_limits_at_the_call_are_evaluation_errors():
    """The safety net under the checks: numpy's own messages about axes become an
    EvaluationError that says what and why, never a raw IndexError or RuntimeError."""
    from einderiv.evaluate.plan import EVALUATION_FAILURES, evaluation_error
    failures = []
    for make in (lambda: np.ones((1,) * 40)[(None,) * 30],
                 lambda: np.broadcast_shapes((1,) * 40, (1,) * 40)):
        try:
            make()
        except Exception as e:  # whichever numpy is installed, 1.x or 2.x
            failures.append(e)
    assert failures
    for e in failures:
        assert isinstance(e, EVALUATION_FAILURES)
        error = evaluation_error(e)
        assert "more axes" in error.message and "numpy's limit" in error.hint


def test_cli_commands_on_a_value_past_the_limit_exit_2_with_a_caret():
    big = "x" + "[None]" * 40
    for args in (("einstein", big, "--shape", "x=n"),
                 ("jacobian", f"sin({big})", "--wrt", "x", "--shape", "x=n", "--check"),
                 ("hessian", "sum(exp(X))", "--wrt", "X", "--shape",
                  "X=" + ",".join(shape_of(17)), "--check")):
        status, out, err = cli(*args)
        assert status == 2 and err.startswith("einderiv: error:"), (args, err)
        assert "Traceback" not in err and "more than the 32" in err


# -- 2. positional arrays: every declared variable, or exactly .inputs -------------------------

def _linear():
    """a, x, b declared; the gradient by x needs a and b only."""
    return einderiv.grad("sum(a * x) + sum(x * b) + sum(a * b)", "x",
                         {"a": ("n",), "x": ("n",), "b": ("n",)})


def test_positional_arrays_bind_as_inputs_or_as_declared_in_either_order_of_first_calls():
    rng = np.random.default_rng(1)
    a, x, b = rng.normal(size=(3, 4))
    for first in ("inputs", "declared", "keywords"):
        g = _linear()
        assert list(g.inputs) == ["a", "b"]
        if first == "inputs":
            g(a, b)
        elif first == "declared":
            g(a, x, b)
        else:
            g(a=a, b=b)
        for _ in range(3):  # the guard is built at the first call: the same answers after it
            for got in (g(a, b), g(a, x, b), g(a, b=b), g(a, x, b=b), g(b=b, a=a),
                        g(*[{"a": a, "b": b}[n] for n in g.inputs]), g.evaluate_ir(a, b),
                        g.evaluate_ir(a, x, b)):
                assert np.allclose(got, a + b)


def test_positional_arrays_of_value_and_grad_and_hessian_blocks():
    A = np.array([[2.0, 1.0], [0.5, 3.0]])
    x = np.array([0.3, -0.2])
    vg = einderiv.value_and_grad("x @ A @ x + sum(c)", "x",
                                 {"c": ("n",), "x": ("n",), "A": ("n", "n")})
    assert list(vg.inputs) == ["c", "x", "A"]  # all needed: one order
    value, dx = vg(np.ones(2), x, A)
    assert np.allclose(dx, (A + A.T) @ x) and value == pytest.approx(x @ A @ x + 2)
    H = einderiv.hessian("x @ A @ x + sum(c * x)", ["x", "c"],
                         {"c": ("n",), "x": ("n",), "A": ("n", "n")})
    assert list(H.inputs) == ["A"]
    for blocks in (H(A), H(np.ones(2), x, A), H(A=A)):
        assert np.allclose(blocks[0][0], A + A.T) and np.allclose(blocks[0][1], np.eye(2))


def test_positional_arrays_of_a_product_with_its_direction():
    A = np.array([[2.0, 1.0], [0.5, 3.0]])
    hv = einderiv.hvp("x @ A @ x + sum(unused)", "x",
                      {"unused": ("n",), "x": ("n",), "A": ("n", "n")})
    assert list(hv.inputs) == ["A", "tangent"]
    v = np.array([1.0, -1.0])
    for got in (hv(A, v), hv(A, tangent=v), hv(np.ones(2), np.zeros(2), A, v),
                hv(np.ones(2), np.zeros(2), A, tangent=v)):
        assert np.allclose(got, (A + A.T) @ v)


def test_positional_arrays_with_a_direction_given_as_a_tuple_bind_as_declared():
    # a bilinear form: the product with the direction needs only the direction (.inputs), so
    # two arrays could be x, y or tangent_x, tangent_y; the tuple gives the latter already
    hv = einderiv.hvp("sum(x * y)", ["x", "y"], {"x": ("n",), "y": ("n",)})
    assert list(hv.inputs) == ["tangent_x", "tangent_y"]
    x, y, tx, ty = np.random.default_rng(5).normal(size=(4, 3))
    for _ in range(2):  # the first call, then the guard built from it
        for got in (hv(x, y, tangent=(tx, ty)), hv(tx, ty), hv(tangent=(tx, ty)),
                    hv(tangent_x=tx, tangent_y=ty)):
            assert np.array_equal(got[0], ty) and np.array_equal(got[1], tx)
    got = hv(tx, ty, tangent=(x, y))  # x and y by position: the direction is the tuple
    assert np.array_equal(got[0], y) and np.array_equal(got[1], x)
    with pytest.raises(InputError, match="given twice"):
        hv(tx, ty, tangent=(x, y), tangent_x=x)


def test_positional_arrays_prefer_the_order_that_leaves_no_input_out():
    # x is read only for its length m (an input read for its shape may be left out where
    # another binds its dimension; none does here): one array binds to x, not to the unused u
    g = einderiv.grad("sum(x[:p] * y)", "x", {"u": ("k",), "x": ("m",), "y": ("p",)})
    assert list(g.inputs) == ["x", "y"]
    x, y = np.arange(5.0), np.array([1.0, 2.0, 3.0])
    for _ in range(2):  # the first call, then the guard built from it
        for got in (g(x, y=y), g(x, y), g(x=x, y=y), g(np.zeros(2), x, y)):
            assert np.array_equal(got, [1.0, 2.0, 3.0, 0.0, 0.0])


def test_positional_arrays_that_fit_neither_order_name_both():
    g = _linear()
    a = np.ones(3)
    with pytest.raises(InputError, match="fit neither order") as info:
        g(a, a, x=a, b=a)  # declared: a, x (given by keyword too); inputs: a, b (so too)
    assert "(a, x, b)" in info.value.hint and "(a, b)" in info.value.hint
    with pytest.raises(InputError, match="missing input 'b'"):
        g(a, x=a)  # a is first in both orders; b is left out
    with pytest.raises(InputError, match="4 positional arrays") as info:
        g(a, a, a, a)
    assert "(a, b)" in info.value.hint
    with pytest.raises(InputError, match="given twice"):
        g(a, a=a)


def test_positional_binding_from_threads_at_the_first_calls():
    rng = np.random.default_rng(2)
    a, x, b = rng.normal(size=(3, 5))
    g = _linear()
    wrong, start = [], threading.Barrier(6)

    def work(k):
        start.wait()
        for i in range(100):
            form = (i + k) % 4
            got = (g(a, b) if form == 0 else g(a, x, b) if form == 1 else g(a=a, b=b)
                   if form == 2 else g(a, b=b))
            if not np.allclose(got, a + b):
                wrong.append((k, i, form))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# -- 3. --shape errors: einderiv's format, a caret under the bad part, exit 2 --------------

@pytest.mark.parametrize("value, message, caret", [
    ("x=n,,d", "has an empty dimension", "^"),
    ("x=n+m", "not a sum of two names", "^^^"),
    ("x=n,2.5", "a dimension is an integer, not 2.5", "^^^"),
    ("=n", "--shape expects NAME=DIMS", "^^"),
    ("x", "--shape expects NAME=DIMS", "^"),
    ("x=n-5-n", "negative dimension", "^^^^^"),
    ("x y=n", "is not a valid name", "^^^"),
    ("x=n,\x07", "not a dimension expression", "^"),
])
def test_bad_shape_strings_are_errors_with_a_caret(value, message, caret):
    status, out, err = cli("grad", "sum(x)", "--wrt", "x", "--shape", value)
    assert status == 2 and err.startswith("einderiv: error: --shape"), err
    assert message in err and "usage:" not in err and "--shape: --shape" not in err
    lines = err.splitlines()
    shown = next(i for i, line in enumerate(lines) if line.strip().startswith("--shape"))
    assert lines[shown + 1].strip() == caret, err
    assert "\x07" not in err  # a control character is shown as '?', never echoed


def test_a_second_shape_of_a_variable_has_a_caret_and_a_trailing_comma_is_fine():
    status, out, err = cli("einstein", "x", "--shape", "x=n", "--shape", "x=n,m")
    assert status == 2 and "--shape gives 'x' two shapes: [n] and [n, m]" in err
    assert re.search(r"^\s*\^+\s*$", err, re.M) and "usage:" not in err
    assert cli("einstein", "x", "--shape", "x=n,m,") == (0, "out[i,j] = x[i,j]\n", "")


# -- 4. --check inside the expression's domain ------------------------------------------------

@pytest.mark.parametrize("kind, expr, wrt, shapes", [
    ("grad", "sum(arccos(x))", "x", ["x=n"]),
    ("grad", "sum(arctanh(x) ** 2)", "x", ["x=n"]),
    ("grad", "sum(log1p(-x))", "x", ["x=n"]),
    ("grad", "sum(sqrt(-x) * x)", "x", ["x=n"]),
    ("grad", "sum(log(x - 1.2))", "x", ["x=n"]),              # in [1.5, 2.5]
    ("grad", "sum(sqrt(-x) + log(y))", "x", ["x=n", "y=n"]),  # one range per variable
    ("jacobian", "arcsin(x) * y", "y", ["x=n", "y=n"]),
    ("hessian", "sum(arcsin(x))", "x", ["x=n"]),
    ("grad", "sum(arcsin(X) @ v)", "X", ["X=n,n", "v=n"]),  # square, without the identity
    ("grad", "logdet(X) + sum(sqrt(-v))", "X", ["X=n,n", "v=n"]),
])
def test_check_passes_right_derivatives_inside_their_domain(kind, expr, wrt, shapes):
    args = [kind, expr, "--wrt", wrt, "--check"] + [a for s in shapes for a in ("--shape", s)]
    status, out, err = cli(*args)
    assert status == 0 and "# check: largest relative error" in out, (out, err)
    error = float(out.rsplit(":", 1)[1])
    assert error < 1e-6


def test_check_still_fails_a_wrong_derivative_inside_the_domain(tmp_path):
    rules = tmp_path / "asin.rules"
    rules.write_text("elementwise myasin(x) = xp.arcsin\nd myasin(x) / dx = 1 / sqrt(1 - x)\n")
    status, out, err = cli("grad", "sum(myasin(x))", "--wrt", "x", "--shape", "x=n",
                           "--rules", str(rules), "--check")
    assert status == 1 and "above the tolerance" in err and "nan" not in out


def test_check_fails_where_the_expression_has_no_domain():
    status, out, err = cli("grad", "sum(arcsin(x) + log(x - 3))", "--wrt", "x",
                           "--shape", "x=n", "--check")
    assert status == 1 and "not a number" in err and "any range" in err


def test_domain_search_keeps_the_first_draw_where_it_is_finite():
    from einderiv.check import inputs_in_domain, random_inputs
    base = random_inputs({"x": ("n",), "A": ("n", "n")}, np.random.default_rng(0))
    assert inputs_in_domain(base, lambda at: True) is base
    moved = inputs_in_domain(base, lambda at: bool(np.all(at["x"] < 0) and np.all(at["A"] < 1)))
    assert np.all(moved["x"] < 0) and moved["A"].shape == base["A"].shape
    assert inputs_in_domain(base, lambda at: False) is base


# -- 5. sizes are integers everywhere ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2.0,), ("2.0",), ("1e3",), ("n * 2.0",), (np.float64(3),),
                                   ("n", 2.5), ("3.",)])
def test_a_non_integer_size_in_shapes_is_refused(shape):
    with pytest.raises(ShapeError, match="a dimension is an integer, not") as info:
        einderiv.compile("x * 2", {"x": shape})
    assert info.value.hint == "a size is a count of entries: 3, not 3.0"


@pytest.mark.parametrize("source", ["x: [2.0 * n]; x", "x: [n]; reshape(x, (1.0, n))",
                                    "x: [n]; eye(2.0) @ x[:2]", "x: [n, 1.]; x"])
def test_a_non_integer_size_in_a_text_is_refused_with_a_caret(source):
    with pytest.raises(einderiv.EinderivError, match="a dimension is an integer, not") as info:
        einderiv.compile(source)
    assert "^" in str(info.value)


def test_a_non_integer_size_elsewhere_is_refused_and_integers_of_any_type_are_fine():
    with pytest.raises(ShapeError, match="not 2.0"):
        einderiv.var("x", (2.0,))
    with pytest.raises(ShapeError, match="not 2.0"):
        einderiv.grad("sum(x)", "x", {"x": ("n", 2.0)})
    for size in (3, np.int64(3), "3"):
        assert einderiv.compile("x * 2", {"x": (size,)}).shape == ("3",)
    status, out, err = cli("einstein", "x", "--shape", "x=n,2.0")
    assert status == 2 and "a dimension is an integer, not 2.0" in err and "^^^" in err


# -- 6. conv1d and conv2d take mode= ----------------------------------------------------------

def _correlate_nd(x, w, mode):
    scipy_signal = pytest.importorskip("scipy.signal")
    return scipy_signal.correlate(x, w, mode=mode)


@pytest.mark.parametrize("mode", ["valid", "same", "full"])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv1d_and_conv2d_modes_are_numpys_and_scipys(mode, k, stride):
    rng = np.random.default_rng(k)
    x, w = rng.normal(size=(2, 3, 9)), rng.normal(size=(4, 3, k))
    f = einderiv.compile(f'conv1d(x, w, mode="{mode}", stride={stride})',
                         {"x": ("b", 3, "n"), "w": (4, 3, k)})
    want = np.array([[sum(np.correlate(x[b, c], w[o, c], mode) for c in range(3))
                      for o in range(4)] for b in range(2)])[..., ::stride]
    assert np.allclose(f(x=x, w=w), want) and np.allclose(f.evaluate_ir(x=x, w=w), want)
    X, W = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(4, 3, k, 3))
    c = rng.normal(size=4)
    g = einderiv.compile(f'conv2d(X, W, c, mode="{mode}", stride={stride})',
                         {"X": ("b", 3, "h", "v"), "W": (4, 3, k, 3), "c": (4,)})
    want = np.array([[sum(_correlate_nd(X[b, i], W[o, i], mode) for i in range(3)) + c[o]
                      for o in range(4)] for b in range(2)])[..., ::stride, ::stride]
    assert np.allclose(g(X=X, W=W, c=c), want)
    again = einderiv.compile(g.formula, {"X": ("b", 3, "h", "v"), "W": (4, 3, k, 3), "c": (4,)})
    assert np.allclose(again(X=X, W=W, c=c), want)


def _numeric_gradient(f, arrays, name, h=1e-6):
    x = arrays[name]
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        out[idx] = (f(**{**arrays, name: plus}) - f(**{**arrays, name: minus})) / (2 * h)
    return out


@pytest.mark.parametrize("mode, stride", [("same", 1), ("same", 2), ("full", 2), ("valid", 3)])
def test_gradients_of_conv_modes_match_finite_differences(mode, stride):
    rng = np.random.default_rng(5)
    shapes = {"X": (2, 2, 5, "v"), "W": (3, 2, 2, 3)}
    arrays = {"X": rng.normal(size=(2, 2, 5, 4)), "W": rng.normal(size=(3, 2, 2, 3))}
    expr = f'sum(tanh(conv2d(X, W, mode="{mode}", stride={stride})) ** 2)'
    value = einderiv.compile(expr, shapes)
    for name in ("X", "W"):
        got = einderiv.grad(expr, name, shapes)(**arrays)
        assert np.allclose(got, _numeric_gradient(value, arrays, name), atol=1e-6)
    shapes1 = {"x": (1, 2, "n"), "w": (2, 2, 3)}
    arrays1 = {"x": rng.normal(size=(1, 2, 6)), "w": rng.normal(size=(2, 2, 3))}
    expr1 = f'sum(sin(conv1d(x, w, mode="{mode}", stride={stride})))'
    H = einderiv.hessian(expr1, "w", shapes1)(**arrays1)
    gradient = einderiv.grad(expr1, "w", shapes1)
    numeric = np.stack([_numeric_gradient(lambda **a: gradient(**a)[idx], arrays1, "w")
                        for idx in np.ndindex(2, 2, 3)]).reshape(H.shape)
    assert np.allclose(H, numeric, atol=1e-5)


def test_conv_modes_match_jax_gradients():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(6)
    X, W = rng.normal(size=(2, 3, 6, 5)).astype(np.float32), \
        rng.normal(size=(4, 3, 4, 3)).astype(np.float32)
    pads = {"same": [(2, 1), (1, 1)], "full": [(3, 3), (2, 2)]}
    for mode in pads:
        expr = f'sum(conv2d(X, W, mode="{mode}", stride=2) ** 2)'
        shapes = {"X": ("b", 3, "h", "v"), "W": (4, 3, 4, 3)}

        def loss(X, W):
            y = jax.lax.conv_general_dilated(X, W, (2, 2), pads[mode])
            return jnp.sum(y ** 2)
        for i, name in enumerate(("X", "W")):
            got = einderiv.grad(expr, name, shapes)(X=X, W=W)
            want = np.asarray(jax.grad(loss, argnums=i)(X, W))
            assert np.allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("source, message", [
    ('conv1d(x, w, mode="same", padding=1)', "mode= or padding=, not both"),
    ('conv1d(x, w, mode="wide")', 'mode is "valid", "same" or "full"'),
    ("conv2d(X, W, mode=1)", 'mode is "valid", "same" or "full"'),
    ('conv1d(x, w, mode="same", dilation=2)', "unexpected keyword argument 'dilation'"),
])
def test_conv_mode_errors(source, message):
    shapes = {"x": ("b", 2, "n"), "w": (3, 2, 3), "X": ("b", 2, "h", "v"), "W": (3, 2, 2, 2)}
    with pytest.raises(einderiv.EinderivError, match=re.escape(message)) as info:
        einderiv.compile(source, shapes)
    assert "^" in str(info.value)


# -- 7. tr of a non-square matrix is numpy's trace ----------------------------------------------

@pytest.mark.parametrize("shape, sizes", [((3, 2), {}), ((2, 3, 4), {}), ((3, 2, "b"), {"b": 2}),
                                          (("n", "n - 1"), {"n": 4}), (("n - 2", "n"), {"n": 4}),
                                          (("n", "n", "b"), {"n": 3, "b": 2})])
def test_trace_is_numpys_for_any_matrix_with_its_derivative(shape, sizes):
    concrete = tuple(d if isinstance(d, int) else eval(d, {}, sizes) for d in shape)
    X = np.random.default_rng(7).normal(size=concrete)
    shapes = {"X": shape}
    f = einderiv.compile("tr(X)", shapes)
    assert np.allclose(f(X=X), np.trace(X))
    assert np.allclose(einderiv.compile("trace(X)", shapes).evaluate_ir(X=X), np.trace(X))
    g = einderiv.grad("sum(sin(trace(X)))", "X", shapes)
    want = _numeric_gradient(lambda X: np.sum(np.sin(np.trace(X))), {"X": X}, "X")
    assert np.allclose(g(X=X), want, atol=1e-6)
    assert np.allclose(einderiv.compile(g.formula, shapes)(X=X), want, atol=1e-6)


def test_trace_of_two_unrelated_names_says_why_it_is_refused():
    with pytest.raises(ShapeError, match=r"min\(n, m\)") as info:
        einderiv.compile("tr(X)", {"X": ("n", "m")})
    assert "[n, n]" in info.value.hint and "^" in str(info.value)
    with pytest.raises(ShapeError, match="takes a matrix"):
        einderiv.compile("tr(x)", {"x": ("n",)})
