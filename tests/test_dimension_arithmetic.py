"""Dimension arithmetic everywhere a shape is written (issue 14, item 2).

- Declared shapes take dimension expressions, in every way a shape is given (the `shapes`
  dict, inline declarations, `einderiv.var`, `--shape`): `y: [n - 1]`, `[n + 1]`, `[2 * n]`,
  `[m * n]`. Each name's size is read off the arrays (from a shape that has it alone, else from a
  product it is one factor of), every axis is checked, and a mismatch names the input.
- Like products add (`n + n` is `2 * n`): a `z: [4 * h]` splits into gates `z[h:2 * h]`.
- A dimension that no input has (`eye(k)`) is fixed when the result is made, `sizes={"k": 3}`.
- `einderiv.fn` takes tuples of sizes (`reshape(X, ("n * m",))`); the step's internal map
  does not clash with a rule file's function `stride`.

Values and gradients are compared with numpy, central differences and JAX; the suite's
conftest also parses every formula back and runs the IR interpreter on each call.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import einderiv
from einderiv import cli, fn
from einderiv.check import finite_difference, relative_error
from einderiv.errors import ParseError, ShapeError, UnknownNameError

RNG = np.random.default_rng(14)


def jax_modules():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jax, jnp


def check_gradients(text, shapes, arrays, wrt_names, sizes=None):
    """Every gradient of the scalar `text` against central differences of its value."""
    value = einderiv.compile(text, shapes, sizes=sizes)
    for wrt in wrt_names:
        g = einderiv.grad(text, wrt, shapes, sizes=sizes)
        assert g(**arrays).shape == arrays[wrt].shape
        assert relative_error(g(**arrays), finite_difference(value, arrays, wrt)) < 1e-7
    return value


# -- n - 1 and n + 1 in declared shapes -----------------------------------------------------

SHIFTED = "sum(x[1:] * y)"


@pytest.mark.parametrize("make", [
    lambda: einderiv.compile(SHIFTED, {"x": ("n",), "y": ("n - 1",)}),
    lambda: einderiv.compile(SHIFTED, {"x": "n", "y": "n-1"}),
    lambda: einderiv.compile("x: [n]; y: [n - 1]; " + SHIFTED),
    lambda: einderiv.compile(fn.sum(einderiv.var("x", ("n",))[1:] *
                                    einderiv.var("y", ("n - 1",)))),
], ids=["shapes", "shapes-compact", "inline", "var"])
def test_a_shape_one_shorter(make):
    """`sum(x[1:] * y)` with y one shorter than x: 'dimension n - 1 is not a valid name' and a
    ParseError before; numpy's value now, whichever way the shape is given."""
    f = make()
    x, y = RNG.normal(size=6), RNG.normal(size=5)
    assert f(x=x, y=y) == pytest.approx(float(np.sum(x[1:] * y)), rel=1e-13)
    assert f.lowered.declared["y"] == (einderiv.ir.dims.Dim("n", -1),)


def test_gradients_and_hessian_of_a_shifted_product():
    shapes = {"x": ("n",), "y": ("n - 1",)}
    x, y = RNG.normal(size=5), RNG.normal(size=4)
    text = "sum(x[1:] * y * x[:-1]) + sum(y ** 2)"
    check_gradients(text, shapes, {"x": x, "y": y}, ["x", "y"])
    gy = einderiv.grad(text, "y", shapes)(x=x, y=y)
    np.testing.assert_allclose(gy, x[1:] * x[:-1] + 2 * y, rtol=1e-13)
    gx = einderiv.grad(text, "x", shapes)(x=x, y=y)
    expected = np.zeros(5)
    expected[1:] += y * x[:-1]
    expected[:-1] += y * x[1:]
    np.testing.assert_allclose(gx, expected, rtol=1e-13)
    h = einderiv.hessian(text, "y", shapes)(x=x, y=y)
    np.testing.assert_allclose(h, 2 * np.eye(4), atol=1e-14)


def test_a_shape_one_longer_and_its_jacobian():
    shapes = {"x": ("n",), "y": ("n + 1",)}
    x, y = RNG.normal(size=3), RNG.normal(size=4)
    f = einderiv.compile("x * y[1:] - y[:n]", shapes)
    np.testing.assert_allclose(f(x=x, y=y), x * y[1:] - y[:3], rtol=1e-13)
    assert f.shape == ("n",)
    J = einderiv.jacobian("x * y[1:] - y[:n]", "y", shapes)(x=x, y=y)
    expected = np.zeros((3, 4))
    expected[np.arange(3), np.arange(1, 4)] = x
    expected[np.arange(3), np.arange(3)] -= 1
    np.testing.assert_allclose(J, expected, atol=1e-14)


def test_a_name_no_input_has_alone_is_read_from_its_offset():
    """Only `y: [n - 1]` has n: n is y's length plus 1, in the generated code and the IR."""
    f = einderiv.compile("y: [n - 1]; sum(y * y) + size(n) + sum(ones(n))")
    y = RNG.normal(size=4)
    assert f(y=y) == pytest.approx(float(y @ y) + 10.0, rel=1e-13)
    assert "_dim_n = y.shape[0] + 1" in f.source


def test_mismatched_lengths_name_the_input_and_where_the_size_came_from():
    f = einderiv.compile(SHIFTED, {"x": ("n",), "y": ("n - 1",)})
    with pytest.raises(ShapeError) as info:
        f(x=np.ones(5), y=np.ones(5))
    message = str(info.value)
    assert "input 'y' should have shape [n-1], got an array of shape (5,)" in message
    assert "n is 5 (from 'x'), so n-1 is 4" in message
    with pytest.raises(ShapeError, match="n would be -1"):
        einderiv.compile("y: [n + 1]; sum(y)")(y=np.ones(0))


# -- products: 2 * n, m * n, 4 * h ----------------------------------------------------------

def test_a_shape_twice_as_long_splits_in_halves_against_jax():
    jax, jnp = jax_modules()
    text = "sum(tanh(z[:n]) * z[n:] ** 2) + sum(z[n:] * x)"
    shapes = {"z": ("2 * n",), "x": ("n",)}
    z, x = RNG.normal(size=6), RNG.normal(size=3)

    def loss(z, x):
        return jnp.sum(jnp.tanh(z[:3]) * z[3:] ** 2) + jnp.sum(z[3:] * x)
    value = check_gradients(text, shapes, {"z": z, "x": x}, ["z", "x"])
    assert value(z=z, x=x) == pytest.approx(float(loss(z, x)), rel=1e-13)
    g = einderiv.grad(text, "z", shapes)(z=z, x=x)
    # jit: one compilation is quicker than JAX's operations one by one on such small arrays
    np.testing.assert_allclose(g, jax.jit(jax.grad(loss))(z, x), rtol=1e-12)
    h = einderiv.hessian(text, "z", shapes)(z=z, x=x)
    np.testing.assert_allclose(h, jax.jit(jax.hessian(loss))(z, x), rtol=1e-12, atol=1e-14)


def test_lstm_gates_of_a_stacked_weight_against_jax():
    """W: [4 * h, d], split into four gates of h rows: the hidden size h is read off W."""
    jax, jnp = jax_modules()
    text = ("z = W @ x; c = sigmoid(z[:h]) * c0 + sigmoid(z[h:2 * h]) * tanh(z[2 * h:3 * h]); "
            "sum(sigmoid(z[3 * h:]) * tanh(c))")
    shapes = {"W": ("4 * h", "d"), "x": ("d",), "c0": ("h",)}
    W, x, c0 = RNG.normal(size=(12, 2)), RNG.normal(size=2), RNG.normal(size=3)

    def loss(W, x, c0):
        z = W @ x
        c = jax.nn.sigmoid(z[:3]) * c0 + jax.nn.sigmoid(z[3:6]) * jnp.tanh(z[6:9])
        return jnp.sum(jax.nn.sigmoid(z[9:]) * jnp.tanh(c))
    f = einderiv.compile(text, shapes)
    assert f(W=W, x=x, c0=c0) == pytest.approx(float(loss(W, x, c0)), rel=1e-13)
    g = einderiv.grad(text, "W", shapes)
    np.testing.assert_allclose(g(W=W, x=x, c0=c0), jax.jit(jax.grad(loss))(W, x, c0),
                               rtol=1e-12)
    assert "eye(" not in g.formula  # the gates' adjoints are pads, never selection matrices
    with pytest.raises(ShapeError, match="h is 2 \\(from 'c0'\\), so 4 \\* h is 8"):
        f(W=np.ones((10, 2)), x=x, c0=np.ones(2))
    with pytest.raises(ShapeError, match="no size of h makes 4 \\* h 10"):
        einderiv.compile("z: [4 * h]; sum(z[h:2 * h])")(z=np.ones(10))


def test_a_product_of_names_is_read_once_its_other_factor_is_known():
    """y: [m * n] and x: [m]: n is y's length over m (generated code and IR alike)."""
    text = "sum(reshape(y, (m, n)) * x[:, None]) + size(n)"
    shapes = {"y": ("m * n",), "x": ("m",)}
    y, x = RNG.normal(size=6), RNG.normal(size=2)
    f = check_gradients(text, shapes, {"y": y, "x": x}, ["y", "x"])
    assert f(y=y, x=x) == pytest.approx(float(np.sum(y.reshape(2, 3) * x[:, None])) + 3,
                                        rel=1e-13)
    assert "_dim_n = y.shape[0] // _dim_m" in f.source
    with pytest.raises(ShapeError, match=r"no size of n makes m \* n 7 \(m is 2 \(from 'x'\)\)"):
        f(y=np.ones(7), x=x)
    # A product whose names come from other inputs is checked against them.
    g = einderiv.compile("X: [n, m]; y: [n * m]; sum(reshape(X, (m * n,)) * y)")
    X = RNG.normal(size=(2, 3))
    assert g(X=X, y=np.arange(6.0)) == pytest.approx(float(X.ravel() @ np.arange(6.0)))
    with pytest.raises(ShapeError, match=r"m is 3 \(from 'X'\), n is 2 \(from 'X'\), so m \* n "
                                         r"is 6"):
        g(X=X, y=np.ones(5))


def test_a_product_with_offsets_and_a_chain_of_readings():
    """n from y: [2 * (n - 1) + 1], then m from x: [m * (n - 1)], then k from z: [k * m * n]:
    n = 4, m = 2, k = 3."""
    f = einderiv.compile("y: [2 * (n - 1) + 1]; x: [m * (n - 1)]; z: [k * m * n]; "
                         "sum(y[:n]) + sum(x) * size(m) + sum(z) * size(k)")
    y, x, z = np.arange(7.0), np.ones(6), np.ones(24)
    assert f(y=y, x=x, z=z) == 6.0 + 6.0 * 2 + 24.0 * 3
    assert f.evaluate_ir(y=y, x=x, z=z) == 6.0 + 6.0 * 2 + 24.0 * 3
    with pytest.raises(ShapeError, match=r"no size of k makes k \* m \* n 25"):
        f(y=y, x=x, z=np.ones(25))


def test_a_name_that_no_shape_tells_is_refused_when_built():
    with pytest.raises(ShapeError) as info:
        einderiv.compile("y: [(n + 1) // 2]; sum(y)")
    message = str(info.value)
    assert "the size of 'n' cannot be read off the inputs" in message
    assert "sizes={'n': 3}" in message and "^" in message
    with pytest.raises(ShapeError, match="the size of 'n' cannot be read"):
        einderiv.grad("sum(y * y)", "y", {"y": ("n * n",)})
    # Another input that has n tells it: then the quotient is checked against it.
    f = einderiv.compile("x: [n]; y: [(n + 1) // 2]; sum(x[::2] * y)")
    x = np.arange(5.0)
    assert f(x=x, y=np.ones(3)) == 6.0
    with pytest.raises(ShapeError, match=r"n is 5 \(from 'x'\), so \(n \+ 1\) // 2 is 3"):
        f(x=x, y=np.ones(2))
    # sizes fixes it
    g = einderiv.compile("y: [(n + 1) // 2]; sum(y) * size(n)", sizes={"n": 5})
    assert g.lowered.declared["y"] == (einderiv.ir.dims.Dim(None, 3),)
    assert g(y=np.ones(3)) == 15.0


@pytest.mark.parametrize("shape, message", [
    ("n + m", "not a sum of two names"),
    ("n +", "is not a dimension expression: unexpected end of input"),
    ("2.5", "a dimension is an integer, not 2.5"),
    ("n - 5 - n", "negative dimension"),
    ("x[0]", "must be an integer constant"),
])
def test_a_bad_dimension_expression_in_shapes(shape, message):
    with pytest.raises(ShapeError, match=message):
        einderiv.compile("sum(y)", {"y": (shape,)})


def test_a_bad_dimension_expression_inline_has_a_caret():
    with pytest.raises(ShapeError) as info:
        einderiv.compile("y: [n * m + k]; sum(y)")
    assert (info.value.line, info.value.column) == (1, 5)
    with pytest.raises(ParseError, match="a dimension is an integer, not 3.0"):
        einderiv.compile("y: [3.0]; sum(y)")


def test_two_spellings_of_a_dimension_are_one():
    """`n-1`, `n - 1` and `-1 + n` are one dimension; `n * m` is `m * n`."""
    f = einderiv.compile("x: [n - 1]; y: [-1 + n]; z: [n * m]; w: [m * n]; x @ y + z @ w")
    assert f(x=np.ones(2), y=np.ones(2), z=np.ones(6), w=np.ones(6)) == 8.0
    a = einderiv.var("y", ("n - 1",))
    b = einderiv.var("y", ("n-1",))
    assert (a + b).declarations == {"y": ("n-1",)}
    assert einderiv.var("z", ("2*n",)).shape == ("2 * n",)


# -- like products add -----------------------------------------------------------------------

def test_concatenating_a_vector_with_itself_is_twice_as_long():
    x = RNG.normal(size=3)
    f = einderiv.compile("x: [n]; concatenate((x, 2 * x, x[1:])) + ones(3 * n - 1)")
    assert f.shape == ("3 * n - 1",)
    np.testing.assert_allclose(f(x=x), np.concatenate((x, 2 * x, x[1:])) + 1, rtol=1e-13)
    w = RNG.normal(size=6)
    g = einderiv.grad("sum(concatenate((x, x)) * w)", "x", {"x": ("n",), "w": ("2 * n",)})
    np.testing.assert_allclose(g(x=x, w=w), w[:3] + w[3:], rtol=1e-13)
    assert "eye(" not in g.formula
    with pytest.raises(ShapeError, match="n \\+ m, do not add up to a dimension"):
        einderiv.compile("x: [n]; y: [m]; concatenate((x, y))")


def test_pads_and_slices_between_like_products():
    x = np.arange(3.0)
    f = einderiv.compile("x: [n]; pad(x, (1, n - 1))")
    assert f.shape == ("2 * n",)
    np.testing.assert_allclose(f(x=x), np.pad(x, (1, 2)))
    z = RNG.normal(size=12)
    f = einderiv.compile("z: [4 * h]; z[h:3 * h] + z[2 * h - 1:4 * h - 1]")
    assert f.shape == ("2 * h",)
    np.testing.assert_allclose(f(z=z), z[3:9] + z[5:11], rtol=1e-13)
    check_gradients("sum(z[h:3 * h] * z[2 * h - 1:4 * h - 1])", {"z": ("4 * h",)}, {"z": z},
                    ["z"])
    with pytest.raises(ShapeError, match="cannot slice from 2 \\* h to h"):
        einderiv.compile("z: [4 * h]; z[2 * h:h]")


# -- sizes: a dimension no input has ---------------------------------------------------------

def test_eye_and_ones_of_a_dimension_no_input_has():
    x = RNG.normal(size=2)
    f = einderiv.compile("x: [n]; x @ eye(n, k) + ones(k) + sum(zeros(k, n))", sizes={"k": 3})
    assert f.shape == ("3",)
    np.testing.assert_allclose(f(x=x), x @ np.eye(2, 3) + 1, rtol=1e-13)
    assert "k" not in f.formula  # built with the integer: the formula reads `3`
    x3 = RNG.normal(size=3)
    g = einderiv.grad("sum((x @ eye(n, k) - ones(k)) ** 2) + sum(x[:k - 2])", "x",
                      {"x": ("n",)}, sizes={"k": 4})
    expected = 2 * (x3 @ np.eye(3, 4) - 1) @ np.eye(3, 4).T + [1.0, 1.0, 0.0]
    np.testing.assert_allclose(g(x=x3), expected, rtol=1e-13)
    h = einderiv.hessian("sum((x @ eye(n, k)) ** 2)", "x", {"x": ("n",)}, sizes={"k": 4})
    np.testing.assert_allclose(h(x=x3), 2 * np.eye(3), atol=1e-14)
    vg = einderiv.value_and_grad("sum(x * ones(k))", "x", {"x": ("k",)}, sizes={"k": 2})
    assert vg(x=x)[0] == pytest.approx(float(x.sum()))
    J = einderiv.jacobian("x * size(k)", "x", {"x": ("n",)}, sizes={"k": 5})
    np.testing.assert_allclose(J(x=x), 5 * np.eye(2))


def test_without_sizes_the_error_says_how_to_give_one():
    with pytest.raises(UnknownNameError) as info:
        einderiv.compile("x: [n]; x @ eye(n, k)")
    assert (info.value.line, info.value.column) == (1, 20)
    assert "'k' is in no variable's shape" in info.value.hint
    assert "sizes={'k': 3}" in info.value.hint
    with pytest.raises(UnknownNameError, match="unknown dimension 'k'"):
        einderiv.compile("x: [n]; x[:k]")
    with pytest.raises(UnknownNameError, match="did you mean 'k'"):  # a typo of a size given
        einderiv.compile("x: [n]; ones(kk)", sizes={"k": 3})


def test_sizes_fix_a_declared_name_and_are_checked():
    f = einderiv.compile("x: [n]; sum(x) * size(n)", sizes={"n": 4})
    assert f.lowered.declared["x"] == (einderiv.ir.dims.Dim(None, 4),)
    assert f(x=np.ones(4)) == 16.0
    with pytest.raises(ShapeError, match="should have shape \\[4\\]"):
        f(x=np.ones(3))
    x = einderiv.var("x", ("k",))
    assert einderiv.grad(fn.sum(x * x), x, sizes={"k": 2})(x=np.array([1.0, 2.0])).tolist() \
        == [2.0, 4.0]
    for bad, message in [({"k": -1}, "a size is an integer"), ({"k": 2.0}, "a size is an integer"),
                         ({"k": True}, "a size is an integer"), ({"k k": 1}, "not a valid name"),
                         ([("k", 1)], "must be a dict")]:
        with pytest.raises(ShapeError, match=message):
            einderiv.compile("x: [n]; x", sizes=bad)


def test_a_result_made_with_sizes_pickles():
    f = einderiv.compile("x: [n]; x @ eye(n, k)", sizes={"k": 3})
    g = pickle.loads(pickle.dumps(f))
    np.testing.assert_allclose(g(x=np.ones(2)), [1.0, 1.0, 0.0])


# -- einderiv.fn: tuples of sizes, dimension expressions --------------------------------------

def test_fn_reshape_takes_a_tuple_of_sizes():
    X = einderiv.var("X", ("n", "m"))
    values = np.arange(6.0).reshape(2, 3)
    f = einderiv.compile(fn.reshape(X, ("n * m",)) + fn.ones("m * n"))
    assert f.shape == ("m * n",)
    np.testing.assert_allclose(f(X=values), values.ravel() + 1)
    assert einderiv.compile(fn.reshape(X, (-1,))).shape == ("m * n",)
    assert einderiv.compile(fn.reshape(X, ("m", "n"))).shape == ("m", "n")
    np.testing.assert_allclose(einderiv.compile(fn.reshape(X, [3, 2]), {"X": (2, 3)})(X=values),
                               values.reshape(3, 2))
    X23 = einderiv.var("X", (2, 3))
    g = einderiv.grad(fn.sum(fn.reshape(X23, (np.int64(3), -1)) ** 2), X23)
    np.testing.assert_allclose(g(X=values), 2 * values)
    y = einderiv.var("y", ("n - 1",))
    np.testing.assert_allclose(einderiv.compile(fn.ones("n - 1") + y)(y=np.ones(3)), 2.0)
    with pytest.raises(ParseError, match="einderiv.fn.reshape: the dimension 'n \\+' is not a "
                                         "dimension expression"):
        fn.reshape(X, ("n +",))


# -- the step's internal map and a user's `stride` -------------------------------------------

def test_a_rule_file_function_named_stride_is_its_own(tmp_path, restore_default_rules):
    """The step x[::k] is a linear map of lower/linear.py; it was named 'stride', and a rule
    file's `stride` was taken for it (an IndexError in the printer)."""
    path = tmp_path / "stride.rules"
    path.write_text("tensor stride(x; axis) -> same = kernel.softmax\n"
                    "d stride(x)[i] / dx[j] = delta[i,j] * stride(x)[i] - stride(x)[i] * "
                    "stride(x)[j]\n")
    einderiv.load_rules(path)
    x = np.arange(1.0, 5.0)
    f = einderiv.compile("x: [n]; stride(x) + x[::2][1]")
    assert "stride(x)" in f.formula
    np.testing.assert_allclose(f(x=x), np.exp(x) / np.exp(x).sum() + 3.0, rtol=1e-13)
    check_gradients("sum(stride(x[::2]) * x[::2] ** 2)", {"x": ("n",)}, {"x": x}, ["x"])
    g = einderiv.grad("sum(x[::2] * x[::2])", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), [2.0, 0.0, 6.0, 0.0])


# -- the command line -----------------------------------------------------------------------

def test_shape_expressions_on_the_command_line(capsys):
    assert cli.main(["grad", "sum(x[1:] * y)", "--wrt", "y", "--shape", "x=n",
                     "--shape", "y=n-1", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "x[1:]"
    assert cli.main(["grad", "sum(reshape(z, (2, n)) ** 2)", "--wrt", "z", "--shape",
                     "z=2*n", "--check"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 * z"
    with pytest.raises(SystemExit) as info:
        cli.main(["grad", "sum(z)", "--wrt", "z", "--shape", "z=n+m"])
    assert info.value.code == 2
    assert "not a sum of two names" in capsys.readouterr().err


def test_the_broadcasting_hint_says_a_size_can_be_an_expression():
    with pytest.raises(ShapeError) as info:
        einderiv.compile("x: [n]; y: [m]; x[1:] * y")
    assert "declare one in terms of the other (y: [n - 1]" in info.value.hint
