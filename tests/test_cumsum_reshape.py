"""cumsum, reversals (`x[::-1]`, `flip`) and the other linear index maps of issue 14 (items 1
and 3), whose Jacobians are dense structured matrices that the derivation never builds.

Each is compared with numpy (values) and JAX (gradients, Jacobians and Hessians, x64 on), and
with central finite differences, over vectors, stacks of rows and 3-D tensors, along each axis.
The gradient of a cumsum is the running sum from the other end, in O(n): at n = 10^6 it takes
the memory of a few vectors in the generated code and in the IR interpreter, where a triangle
of ones would take 8 TB. tests/conftest.py checks for every result that its formula parses back
to the same values and that the generated code agrees with the IR interpreter.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

VECTOR = {"x": ("n",), "w": ("n",)}
MATRIX = {"X": ("b", "n"), "W": ("b", "n")}
CUBE = {"T": ("a", "b", "c"), "U": ("a", "b", "c")}


def draw(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=shape)


def jax_modules():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jax, jnp


def against_jax(text, shapes, arrays, wrt, loss, hessian=True):
    """Value, gradient and (optionally) Hessian of the scalar `text` against the JAX function
    `loss` of the same arrays (keyword arguments), and the gradient against differences."""
    jax, jnp = jax_modules()
    names = list(arrays)
    index = names.index(wrt)
    f = lambda *a: loss(**dict(zip(names, a)))  # noqa: E731
    values = [jnp.asarray(arrays[k]) for k in names]
    value = einderiv.compile(text, shapes)
    assert relative_error(value(**arrays), float(f(*values))) < 1e-13
    g = einderiv.grad(text, wrt, shapes)
    # jit: one compilation is quicker than JAX's operations one by one on such small arrays
    expected = jax.jit(jax.grad(f, index))(*values)
    assert relative_error(g(**arrays), np.asarray(expected)) < 1e-12
    assert relative_error(g(**arrays), finite_difference(value, arrays, wrt)) < 1e-7
    if hessian:
        h = einderiv.hessian(text, wrt, shapes)
        expected = jax.jit(jax.hessian(f, index))(*values)
        assert relative_error(h(**arrays), np.asarray(expected)) < 1e-12
    return g


# -- cumsum ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,axis", [("cumsum(X, axis=0)", 0), ("cumsum(X, axis=1)", 1),
                                       ("cumsum(X, -1)", -1), ("cumsum(X, axis=-2)", -2)])
def test_cumsum_is_numpys(text, axis):
    X = draw(1, (3, 4))
    f = einderiv.compile(text, MATRIX)
    assert relative_error(f(X=X), np.cumsum(X, axis=axis)) < 1e-15
    assert f(X=X.astype(np.float32)).dtype == np.float32


def test_cumsum_of_a_vector_needs_no_axis():
    x = draw(2, (5,))
    f = einderiv.compile("x: [n]; cumsum(x) + cumsum(x, axis=None)")
    assert relative_error(f(x=x), 2 * np.cumsum(x)) < 1e-15
    assert f.formula == "2 * cumsum(x)"


@pytest.mark.parametrize("axis", [0, 1])
def test_cumsum_gradient_and_hessian_against_jax(axis):
    _, jnp = jax_modules()
    X, W = draw(3, (3, 4)), draw(4, (3, 4))
    text = f"sum(W * sin(cumsum(X, axis={axis}))) + sum(cumsum(X ** 2, axis={axis}))"
    against_jax(text, MATRIX, {"X": X, "W": W}, "X",
                lambda X, W: jnp.sum(W * jnp.sin(jnp.cumsum(X, axis=axis)))
                + jnp.sum(jnp.cumsum(X ** 2, axis=axis)))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cumsum_of_a_stack_along_each_axis(axis):
    _, jnp = jax_modules()
    T, U = draw(5, (2, 3, 4)), draw(6, (2, 3, 4))
    text = f"sum(U * cumsum(T, axis={axis}) ** 2)"
    g = against_jax(text, CUBE, {"T": T, "U": U}, "T",
                    lambda T, U: jnp.sum(U * jnp.cumsum(T, axis=axis) ** 2), hessian=False)
    assert "cumsum" in g.formula and "eye" not in g.formula


def test_jacobian_of_cumsum_is_the_triangle():
    jax, jnp = jax_modules()
    x = draw(7, (4,))
    J = einderiv.jacobian("cumsum(x)", "x", {"x": ("n",)})
    assert np.array_equal(J(x=x), np.tril(np.ones((4, 4))))
    J2 = einderiv.jacobian("cumsum(exp(x)) * x", "x", {"x": ("n",)})
    expected = jax.jacfwd(lambda x: jnp.cumsum(jnp.exp(x)) * x)(jnp.asarray(x))
    assert relative_error(J2(x=x), np.asarray(expected)) < 1e-13


def test_the_gradient_is_a_running_sum_from_the_end():
    g = einderiv.grad("sum(w * cumsum(x))", "x", VECTOR)
    assert g.formula == "cumsum(w[::-1])[::-1]"
    assert "_xp.cumsum(_xp.flip(w, axis=0), axis=0)" in g.source
    h = einderiv.grad("sum(cumsum(x) ** 2)", "x", VECTOR)
    assert h.formula == "cumsum((2 * cumsum(x))[::-1])[::-1]"


def test_cumsum_gradient_at_a_million_is_linear(peak_bytes):
    """O(n) time and memory, in the generated code and the IR interpreter (a triangle of ones
    would be 8 TB at n = 10^6)."""
    n = 10 ** 6
    x = np.random.default_rng(8).uniform(0, 1, n)
    g = einderiv.grad("sum(cumsum(x) ** 2) + sum(x[::-1] * cumsum(x))", "x", {"x": ("n",)})
    c = np.cumsum(x)
    expected = np.cumsum((2 * c + x[::-1])[::-1])[::-1] + c[::-1]
    for run in (g, g.evaluate_ir):
        assert relative_error(run(x=x), expected) < 1e-12
        assert peak_bytes(lambda: run(x=x)) < 6 * 8 * n


def test_cumsum_errors():
    with pytest.raises(einderiv.ParseError, match="cumsum\\(\\) takes one axis"):
        einderiv.compile("X: [n, m]; cumsum(X, axis=(0, 1))")
    with pytest.raises(einderiv.ShapeError, match="axis 2 is out of bounds"):
        einderiv.compile("X: [n, m]; cumsum(X, axis=2)")
    with pytest.raises(einderiv.ParseError, match="cumsum\\(\\) got an unexpected keyword"):
        einderiv.compile("x: [n]; cumsum(x, dtype=1)")


# -- reversals ------------------------------------------------------------------------------------

REVERSALS = ["x[::-1]", "x[-1::-1]", "x[:0:-1]", "x[3::-1]", "x[:-4:-1]", "x[4:1:-1]",
             "x[-2:-5:-1]", "x[::-1][1:]"]


@pytest.mark.parametrize("text", REVERSALS)
def test_negative_steps_are_numpys(text):
    """Of a named dimension and of a fixed one, as numpy's slices with step -1."""
    x = draw(9, (6,))
    expected = eval(text, {"x": x})
    if text != "x[-2:-5:-1]":  # counted from both ends: its length is no dimension of n
        assert np.array_equal(einderiv.compile(f"x: [n]; {text}")(x=x), expected)
    assert np.array_equal(einderiv.compile(f"x: [6]; {text}")(x=x), expected)


def test_reversals_of_axes_and_flip():
    X = draw(10, (3, 4))
    shapes = {"X": ("b", "n")}
    for text, expected in [("X[::-1]", X[::-1]), ("X[:, ::-1]", X[:, ::-1]),
                           ("X[::-1, ::-1]", X[::-1, ::-1]), ("flip(X)", np.flip(X)),
                           ("flip(X, axis=1)", np.flip(X, axis=1)),
                           ("flip(X, (0, 1))", np.flip(X, (0, 1))), ("X[1, ::-1]", X[1, ::-1])]:
        assert np.array_equal(einderiv.compile(text, shapes)(X=X), expected), text
    assert einderiv.compile("flip(flip(X, 1), 1) + X[::-1][::-1]", shapes).formula == "2 * X"


def test_reversal_gradient_and_hessian_against_jax():
    _, jnp = jax_modules()
    X, V = draw(11, (3, 4)), draw(12, (3, 3))
    text = "sum(V * exp(X[::-1, 1:]) ** 2) + sum(X[:, ::-1] * X)"
    against_jax(text, {"X": ("b", 4), "V": ("b", 3)}, {"X": X, "V": V}, "X",
                lambda X, V: jnp.sum(V * jnp.exp(X[::-1, 1:]) ** 2) + jnp.sum(X[:, ::-1] * X))


def test_the_reversal_of_an_elementwise_result_cancels():
    """The adjoint of `x[::-1]` reverses the cotangent: no reversal is left where the
    cotangent is itself made of the reversed value."""
    g = einderiv.grad("sum(sin(x[::-1]))", "x", {"x": ("n",)})
    assert g.formula == "cos(x)"


def test_slice_step_errors():
    with pytest.raises(einderiv.ShapeError, match="step cannot be zero"):
        einderiv.compile("x: [n]; x[::0]")
    with pytest.raises(einderiv.ShapeError, match="negative step takes integer bounds"):
        einderiv.compile("x: [n]; m: []; x[n:0:-1]")
    with pytest.raises(einderiv.ParseError, match="a slice step must be an integer constant"):
        einderiv.compile("x: [n]; x[::1.5]")


def test_cumsum_without_axis_flattens_as_numpy():
    X = draw(13, (3, 4))
    f = einderiv.compile("cumsum(X)", {"X": ("b", "n")})
    assert relative_error(f(X=X), np.cumsum(X)) < 1e-15
    assert f.shape == ("n * b",) or f.shape == ("b * n",)
    assert f.formula == "cumsum(reshape(X, (b * n,)))"


# -- reshape ---------------------------------------------------------------------------------------

RESHAPES = [
    # (text, shapes, numpy's)
    ("reshape(X, (b * n,))", {"X": ("b", "n")}, lambda X: X.reshape(-1)),
    ("reshape(X, (n * b,))", {"X": ("b", "n")}, lambda X: X.reshape(-1)),
    ("reshape(X, (-1,))", {"X": ("b", "n")}, lambda X: X.reshape(-1)),
    ("reshape(X, (n, b))", {"X": ("b", "n")}, lambda X: X.reshape(4, 3)),
    ("reshape(X, (b, -1, 2))", {"X": ("b", 4)}, lambda X: X.reshape(3, -1, 2)),
    ("reshape(X, (2 * b, 2))", {"X": ("b", 4)}, lambda X: X.reshape(6, 2)),
    ("reshape(X, b * n)", {"X": ("b", "n")}, lambda X: X.reshape(-1)),
    ("reshape(T, (a, b * c))", CUBE, lambda T: T.reshape(2, -1)),
    ("reshape(T, (a * b, c))", CUBE, lambda T: T.reshape(-1, 4)),
    ("reshape(reshape(T, (-1,)), (a, b, c))", CUBE, lambda T: T),
    ("reshape(x, (1, n, 1))", {"x": ("n",)}, lambda x: x.reshape(1, -1, 1)),
    ("reshape(s, (1, 1))", {"s": ()}, lambda s: np.reshape(s, (1, 1))),
]


@pytest.mark.parametrize("text,shapes,expected", RESHAPES)
def test_reshape_is_numpys(text, shapes, expected):
    sizes = {"b": 3, "n": 4, "a": 2, "c": 4}
    arrays = {k: draw(14, tuple(sizes.get(d, d) for d in shape)) for k, shape in shapes.items()
              if k in text}
    f = einderiv.compile(text, {k: v for k, v in shapes.items() if k in arrays})
    assert np.array_equal(f(**arrays), expected(*arrays.values()))


def test_reshape_sizes_are_products_of_dimensions():
    f = einderiv.compile("reshape(T, (a * b, c))", CUBE)
    assert f.shape == ("a * b", "c")
    assert f.formula == "reshape(T, (a * b, c))"
    g = einderiv.compile("X: [b, n]; sum(reshape(X, (b * n,)) * ones(n * b)) + size(b * n)")
    assert float(g(X=np.ones((2, 3)))) == 12.0


@pytest.mark.parametrize("text", ["sum(W * sin(reshape(X, (n, b))).T)",
                                  "sum(cumsum(reshape(X, (-1,))) ** 2)",
                                  "sum(reshape(X, (n * b,))[1:] * reshape(X, (n * b,))[:-1])"])
def test_reshape_gradient_and_hessian_against_jax(text):
    _, jnp = jax_modules()
    X, W = draw(15, (3, 4)), draw(16, (3, 4))
    jax_text = (text.replace("reshape(X, (n, b))", "jnp.reshape(X, (4, 3))")
                .replace("(n * b,)", "(-1,)").replace("reshape(", "jnp.reshape(")
                .replace("jnp.jnp.", "jnp.").replace("sin(", "jnp.sin(")
                .replace("cumsum(", "jnp.cumsum(").replace("sum(", "jnp.sum(")
                .replace("jnp.jnp.", "jnp.").replace("jnp.cumjnp.sum(", "jnp.cumsum("))
    g = against_jax(text, MATRIX, {"X": X, "W": W}, "X",
                    lambda X, W: eval(jax_text, {"jnp": jnp, "X": X, "W": W}))
    assert "eye" not in g.formula


def test_reshape_of_a_stack_keeps_the_batch():
    """The gradient of a reshape is the reshape back, per row of a stack too."""
    _, jnp = jax_modules()
    T, U = draw(17, (2, 3, 4)), draw(18, (2, 12))
    g = against_jax("sum(U * reshape(T, (a, -1)) ** 3)", {"T": ("a", 3, 4), "U": ("a", 12)},
                    {"T": T, "U": U}, "T", lambda T, U: jnp.sum(U * jnp.reshape(T, (2, -1)) ** 3))
    assert g.formula == "3 * reshape(U, (a, 3, 4)) * T ** 2"


def test_reshape_errors():
    with pytest.raises(einderiv.ShapeError, match="cannot reshape \\[b, n\\] to \\(n,\\)"):
        einderiv.compile("X: [b, n]; reshape(X, (n,))")
    with pytest.raises(einderiv.ShapeError, match="cannot infer the -1"):
        einderiv.compile("X: [b, n]; reshape(X, (2, -1))")
    with pytest.raises(einderiv.ShapeError, match="only one size can be -1"):
        einderiv.compile("X: [b, n]; reshape(X, (-1, -1))")
    with pytest.raises(einderiv.ShapeError, match="cannot reshape \\[3, 4\\] to \\(5, 2\\)"):
        einderiv.compile("X: [3, 4]; reshape(X, (5, 2))")
    with pytest.raises(einderiv.UnknownNameError, match="unknown dimension 'k'"):
        einderiv.compile("X: [b, n]; reshape(X, (k,))")
    with pytest.raises(einderiv.ParseError, match="one product of dimensions plus an integer"):
        einderiv.compile("X: [b, n]; reshape(X, (b + n,))")


# -- kron ------------------------------------------------------------------------------------------

def test_kron_is_numpys_and_differentiates_as_jax():
    _, jnp = jax_modules()
    A, B = draw(19, (2, 3)), draw(20, (3, 2))
    shapes = {"A": ("n", "m"), "B": ("p", "q")}
    f = einderiv.compile("kron(A, B)", shapes)
    assert np.array_equal(f(A=A, B=B), np.kron(A, B))
    assert f.shape == ("n * p", "m * q")
    a, b = draw(21, (3,)), draw(22, (4,))
    v = einderiv.compile("kron(a, b) + kron(a, B)[0, 1]", {"a": ("n",), "b": (4,), "B": (3, 2)})
    assert np.array_equal(v(a=a, b=b, B=B), np.kron(a, b) + np.kron(a, B)[0, 1])
    for wrt in ("A", "B"):
        against_jax("sum(sin(kron(A, B)))", shapes, {"A": A, "B": B}, wrt,
                    lambda A, B: jnp.sum(jnp.sin(jnp.kron(A, B))))


# -- steps -----------------------------------------------------------------------------------------

STEPS = ["x[::2]", "x[1::2]", "x[::3]", "x[2::3]", "x[1:-1:2]", "x[:5:2]", "x[::-2]",
         "x[-2::-3]", "x[5:0:-2]", "x[::2][::2]", "x[::7]"]


@pytest.mark.parametrize("text", STEPS)
@pytest.mark.parametrize("n", [6, 7])
def test_steps_are_numpys(text, n):
    """Of a named dimension and a fixed one, at even and odd lengths."""
    x = draw(23, (n,))
    expected = eval(text, {"x": x})
    if text != "x[5:0:-2]":  # from a fixed entry down: its length is no dimension of n
        f = einderiv.compile(f"x: [n]; {text}")
        assert np.array_equal(f(x=x), expected)
        assert np.array_equal(f.evaluate_ir(x=x), expected)
    assert np.array_equal(einderiv.compile(f"x: [{n}]; {text}")(x=x), expected)


def test_step_lengths_are_quotients():
    assert einderiv.compile("x: [n]; x[::2]").shape == ("(n + 1) // 2",)
    assert einderiv.compile("x: [n]; x[1::2]").shape == ("n // 2",)
    assert einderiv.compile("X: [n, m]; X[::3, 1:-1:2]").shape == ("(n + 2) // 3", "(m - 1) // 2")
    # an even length, reshaped into pairs: x[::2] has n of the 2 * n entries
    f = einderiv.compile("x: [n]; y = reshape(x[:, None] * ones(n, 2), (2 * n,)); y[::2] - x")
    assert f.shape == ("n",)
    assert np.array_equal(f(x=np.arange(3.0)), np.zeros(3))


@pytest.mark.parametrize("text", ["sum(sin(X[::2]))", "sum(W[::2, 1::2] * X[::2, 1::2] ** 2)",
                                  "sum(X[::-2] * X[::2])", "sum(exp(X[1:, ::3]))"])
def test_step_gradient_and_hessian_against_jax(text):
    _, jnp = jax_modules()
    X, W = draw(24, (5, 4)), draw(25, (5, 4))
    jax_text = text.replace("sum(", "jnp.sum(").replace("sin(", "jnp.sin(") \
        .replace("exp(", "jnp.exp(")
    g = against_jax(text, MATRIX, {"X": X, "W": W}, "X",
                    lambda X, W: eval(jax_text, {"jnp": jnp, "X": X, "W": W}))
    assert "dilate" in g.formula and "eye" not in g.formula


def test_step_gradient_at_a_million_is_linear(peak_bytes):
    """The adjoint of x[::3] spreads the cotangent 3 apart: O(n), never a selection matrix."""
    n = 10 ** 6
    x = np.random.default_rng(26).uniform(-1, 1, n)
    g = einderiv.grad("sum(sin(x[1::3]) * x[1::3][::-1]) + sum(x[::-3] ** 2)", "x",
                      {"x": ("n",)})
    y = x[1::3]
    expected = np.zeros(n)
    expected[1::3] += np.cos(y) * y[::-1] + np.sin(y)[::-1]
    expected[::-3] += 2 * x[::-3]
    for run in (g, g.evaluate_ir):
        assert relative_error(run(x=x), expected) < 1e-13
        assert peak_bytes(lambda: run(x=x)) < 6 * 8 * n


def test_dilate_is_the_adjoint_of_a_step():
    x = np.arange(1.0, 4.0)
    f = einderiv.compile("x: [3]; dilate(x, 2, 6) + dilate(x, 2, 5)[:1][0]")
    assert np.array_equal(f(x=x), [2.0, 1.0, 3.0, 1.0, 4.0, 1.0])
    X = np.arange(6.0).reshape(2, 3)
    g = einderiv.compile("X: [2, n]; dilate(X[:, ::2], 2, n, axis=1)")
    assert np.array_equal(g(X=X), [[0.0, 0.0, 2.0], [3.0, 0.0, 5.0]])
    with pytest.raises(einderiv.ShapeError, match="do not make a length of 7"):
        einderiv.compile("x: [3]; dilate(x, 2, 7)")
    with pytest.raises(einderiv.ShapeError, match="the step must be at least 1"):
        einderiv.compile("x: [3]; dilate(x, 0, 7)")


# -- triu and tril ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["triu(X)", "tril(X)", "triu(X, 1)", "tril(X, -1)",
                                  "triu(X, -2)", "tril(triu(X, -1), 1)", "triu(triu(X, 1), -1)"])
def test_triangles_are_numpys(text):
    X = draw(27, (4, 5))
    f = einderiv.compile(text, {"X": ("n", "m")})
    assert np.array_equal(f(X=X), eval(text, {"X": X, "triu": np.triu, "tril": np.tril}))
    T = draw(28, (2, 3, 3))
    stacked = einderiv.compile(text.replace("X", "T"), {"T": ("a", "n", "n")})
    assert np.array_equal(stacked(T=T), eval(text.replace("X", "T"),
                                             {"T": T, "triu": np.triu, "tril": np.tril}))


def test_triangle_gradient_and_hessian_against_jax():
    _, jnp = jax_modules()
    X, W = draw(29, (3, 4)), draw(30, (3, 4))
    g = against_jax("sum(W * triu(X, 1) ** 2) + sum(tril(X) @ tril(X).T)", MATRIX,
                    {"X": X, "W": W}, "X",
                    lambda X, W: jnp.sum(W * jnp.triu(X, 1) ** 2)
                    + jnp.sum(jnp.tril(X) @ jnp.tril(X).T))
    assert "triu(" in g.formula and "eye" not in g.formula


def test_triangle_errors():
    with pytest.raises(einderiv.ShapeError, match="triu\\(\\) takes a matrix"):
        einderiv.compile("x: [n]; triu(x)")
    with pytest.raises(einderiv.ParseError, match="a diagonal must be an integer constant"):
        einderiv.compile("X: [n, n]; tril(X, 0.5)")


@pytest.mark.parametrize("text", ["reshape(X, (-1,))", "X[::2, 1::2]", "triu(X, 1)",
                                  "cumsum(X)", "kron(X[0], X[1])"])
def test_jacobians_of_the_maps_are_their_matrices(text):
    """The Jacobian of a linear map is the matrix it never builds for a derivative (here it is
    the answer): against JAX's jacfwd, and its formula parses back (conftest)."""
    jax, jnp = jax_modules()
    X = draw(31, (3, 4))
    J = einderiv.jacobian(text, "X", {"X": ("b", "n")})
    f = lambda X: eval(text.replace("reshape(X, (-1,))", "jnp.reshape(X, (-1,))")  # noqa: E731
                       .replace("triu", "jnp.triu").replace("cumsum", "jnp.cumsum")
                       .replace("kron", "jnp.kron"), {"X": X, "jnp": jnp})
    assert relative_error(J(X=X), np.asarray(jax.jacfwd(f)(jnp.asarray(X)))) == 0


def test_python_built_expressions_take_steps_and_the_maps():
    x = einderiv.var("x", ("n",))
    X = einderiv.var("X", ("n", "m"))
    e = einderiv.fn.cumsum(x[::-1]) + einderiv.fn.sum(x[1::2])
    a = draw(32, (5,))
    assert relative_error(einderiv.compile(e)(x=a), np.cumsum(a[::-1]) + a[1::2].sum()) < 1e-15
    t = einderiv.fn.triu(X, 1) + einderiv.fn.tril(X[::-1], -1)
    A = draw(33, (3, 3))
    assert np.array_equal(einderiv.compile(t)(X=A), np.triu(A, 1) + np.tril(A[::-1], -1))
