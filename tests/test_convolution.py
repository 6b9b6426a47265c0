"""Convolutions and correlations of issue 14, item 7: correlate and convolve (numpy's, with
modes and a stride), conv1d and conv2d (PyTorch's, with channels, batch, stride, padding and a
bias) and conv_transpose1d/2d.

Values against numpy and PyTorch; gradients and Hessians against central finite differences
and JAX (float64) on random inputs, and gradients against PyTorch's autograd; what the
derivatives are made of (convolutions again, never a band matrix: O(n) memory at n = 10^6);
the backends; bad input refused with a caret.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

RNG = np.random.default_rng(2014)
VECTORS = {"x": ("n",), "w": (3,)}


def draw(*shape):
    return RNG.normal(size=shape)


def jax_modules():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, jax.numpy, jax.lax


def torch_module():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def agree(text, shapes, arrays, reference=None, hessian=True, tol=1e-10, jax_hessian=True):
    """Each gradient (and Hessian) of `text` agrees with central differences of the value (of
    the gradient), and with JAX's of `reference` (a function of the arrays in order), jitted
    (JAX's Hessians take most of this test's time to compile: `jax_hessian=False` skips them)."""
    hessian_of_jax = hessian and jax_hessian
    f = einderiv.compile(text, shapes)
    if reference is not None:
        jax, _, _ = jax_modules()

        def derivatives(*v):
            return ([jax.grad(reference, argnums=k)(*v) for k in range(len(v))],
                    [jax.hessian(reference, argnums=k)(*v) if hessian_of_jax else None
                     for k in range(len(v))])
        grads, hessians = jax.jit(derivatives)(*arrays.values())
        assert relative_error(f(**arrays), np.asarray(reference(*arrays.values()))) < tol
    for k, wrt in enumerate(arrays):
        g = einderiv.grad(text, wrt, shapes)
        assert relative_error(g(**arrays), finite_difference(f, arrays, wrt)) < 1e-7, (text, wrt)
        if reference is not None:
            assert relative_error(g(**arrays), np.asarray(grads[k])) < tol, (text, wrt)
        if hessian:
            h = einderiv.hessian(text, wrt, shapes)
            assert relative_error(h(**arrays), finite_difference(g, arrays, wrt)) < 1e-6, \
                (text, wrt)
            if reference is not None and hessian_of_jax:
                assert relative_error(h(**arrays), np.asarray(hessians[k])) < tol, (text, wrt)


# -- 1-d: numpy's correlate and convolve ----------------------------------------------------------

ONE_D = [("correlate", "valid", 1), ("correlate", "same", 1), ("correlate", "full", 1),
         ("correlate", "valid", 2), ("correlate", "same", 3), ("correlate", "full", 2),
         ("convolve", "full", 1), ("convolve", "valid", 1), ("convolve", "same", 2),
         ("convolve", "full", 3)]


@pytest.mark.parametrize("name, mode, stride", ONE_D)
@pytest.mark.parametrize("n, k", [(9, 3), (10, 4)])
def test_1d_values_are_numpys(name, mode, stride, n, k):
    x, w = draw(n), draw(k)
    expected = getattr(np, name)(x, w, mode)[::stride]
    for shapes in ({"x": ("n",), "w": (k,)}, {"x": (n,), "w": (k,)}):
        f = einderiv.compile(f'{name}(x, w, mode="{mode}", stride={stride})', shapes)
        assert relative_error(f(x=x, w=w), expected) < 1e-13
        assert f(x=x, w=w).shape == expected.shape
        assert relative_error(f.evaluate_ir(x=x, w=w), expected) < 1e-13


@pytest.mark.parametrize("name, mode, stride", [
    ("correlate", "valid", 2), ("correlate", "same", 3), ("correlate", "full", 1),
    ("convolve", "full", 1), ("convolve", "same", 2), ("convolve", "valid", 1)])
def test_1d_gradients_and_hessians(name, mode, stride):
    _, jnp, _ = jax_modules()
    x, w = draw(11), draw(3)
    text = f'sum(sin({name}(x, w, mode="{mode}", stride={stride})) * x[:1])'

    def reference(x, w):
        return jnp.sum(jnp.sin(getattr(jnp, name)(x, w, mode)[::stride]) * x[:1])
    agree(text, VECTORS, {"x": x, "w": w}, reference)


def test_the_gradients_are_a_convolution_and_a_correlation():
    g = einderiv.grad("sum(correlate(x, w) ** 2)", "x", VECTORS)
    assert g.formula == "convolve(2 * correlate(x, w), w)"
    g = einderiv.grad("sum(correlate(x, w) ** 2)", "w", VECTORS)
    assert g.formula == "correlate(x, 2 * correlate(x, w))"
    # a stride spreads the cotangent (zeros between) before the convolution
    g = einderiv.grad("sum(sin(correlate(x, w, stride=2)))", "x", VECTORS)
    assert g.formula == "convolve(dilate(cos(correlate(x, w, stride=2)), 2, n - 2), w)"
    # the derivative of a convolution by its kernel is a correlation
    g = einderiv.grad("sum(y * convolve(x, w))", "w", {"x": (6,), "w": (3,), "y": (8,)})
    assert g.formula == "correlate(y, x)"


@pytest.mark.parametrize("wrt", ["x", "w"])
def test_formulas_parse_back(wrt):
    """A derivative's formula is a program of the language: compiled again, the same values."""
    x, w = draw(10), draw(3)
    for text in ('sum(tanh(correlate(x, w, mode="same", stride=2)))',
                 "sum(convolve(x, w) ** 2)"):
        g = einderiv.grad(text, wrt, VECTORS)
        again = einderiv.compile(g.formula, VECTORS)
        assert relative_error(again(x=x, w=w), g(x=x, w=w)) < 1e-13


def test_leading_axes_each_row_with_each_kernel():
    """The first argument's leading axes, then the kernel's: each row with each kernel (what
    a Jacobian's or a Hessian's cotangent needs)."""
    X, W = draw(2, 3, 8), draw(4, 3)
    out = einderiv.compile("correlate(X, W, stride=2)", {"X": ("a", "b", "n"), "W": ("c", 3)})
    expected = np.array([[[[np.correlate(X[a, b], W[c])[::2] for c in range(4)]
                           for b in range(3)] for a in range(2)]])[0]
    assert relative_error(out(X=X, W=W), expected) < 1e-13
    full = einderiv.compile("convolve(X, W)", {"X": ("a", "b", "n"), "W": ("c", 3)})
    expected = np.array([[[np.convolve(X[a, b], W[c]) for c in range(4)] for b in range(3)]
                         for a in range(2)])
    assert relative_error(full(X=X, W=W), expected) < 1e-13


def test_jacobian_against_jax():
    jax, jnp, _ = jax_modules()
    x, w = draw(9), draw(3)
    for wrt, argnum in (("x", 0), ("w", 1)):
        J = einderiv.jacobian('tanh(correlate(x, w, mode="full", stride=2))', wrt, VECTORS)
        expected = jax.jacfwd(lambda x, w: jnp.tanh(jnp.correlate(x, w, "full")[::2]),
                              argnums=argnum)(x, w)
        assert relative_error(J(x=x, w=w), np.asarray(expected)) < 1e-12


# -- PyTorch's conv1d, conv2d and conv_transpose --------------------------------------------------

def test_conv_values_are_pytorchs():
    torch, F = torch_module()
    t = torch.from_numpy
    X, W, b = draw(2, 3, 7, 6), draw(4, 3, 3, 2), draw(4)
    shapes = {"X": ("n", 3, "h", "v"), "W": (4, 3, 3, 2), "b": (4,)}
    for stride, padding in ((1, 0), (2, 1), ((2, 1), (0, 2))):
        f = einderiv.compile(f"conv2d(X, W, b, stride={stride}, padding={padding})", shapes)
        expected = F.conv2d(t(X), t(W), t(b), stride=stride, padding=padding).numpy()
        assert relative_error(f(X=X, W=W, b=b), expected) < 1e-13
        assert relative_error(f.evaluate_ir(X=X, W=W, b=b), expected) < 1e-13
    unbatched = einderiv.compile("conv2d(X, W)", {"X": (3, "h", "v"), "W": (4, 3, 3, 2)})
    assert relative_error(unbatched(X=X[0], W=W), F.conv2d(t(X[0]), t(W)).numpy()) < 1e-13
    x, w, c = draw(2, 3, 9), draw(5, 3, 4), draw(5)
    f = einderiv.compile("conv1d(x, w, c, stride=2, padding=1)",
                         {"x": ("n", 3, "l"), "w": (5, 3, 4), "c": (5,)})
    expected = F.conv1d(t(x), t(w), t(c), stride=2, padding=1).numpy()
    assert relative_error(f(x=x, w=w, c=c), expected) < 1e-13
    # the transposes, PyTorch's weight [in_channels, out_channels, k]
    D, V = draw(2, 4, 5, 4), draw(4, 3, 3, 2)
    for stride, padding in ((1, 0), (2, 1)):
        f = einderiv.compile(f"conv_transpose2d(D, V, b[:3], stride={stride}, "
                             f"padding={padding})", {"D": ("n", 4, "h", "v"), "V": (4, 3, 3, 2),
                                                     "b": (4,)})
        expected = F.conv_transpose2d(t(D), t(V), t(b[:3]), stride=stride,
                                      padding=padding).numpy()
        assert relative_error(f(D=D, V=V, b=b), expected) < 1e-13
    d, v = draw(2, 3, 6), draw(3, 2, 4)
    f = einderiv.compile("conv_transpose1d(d, v, stride=3)", {"d": ("n", 3, "l"), "v": (3, 2, 4)})
    expected = F.conv_transpose1d(t(d), t(v), stride=3).numpy()
    assert relative_error(f(d=d, v=v), expected) < 1e-13


CONV2D = [("conv2d(X, W, b)", 1, 0, False), ("conv2d(X, W, b, stride=2, padding=1)", 2, 1, True),
          ("conv2d(X, W, b, stride=(1, 2), padding=(2, 0))", (1, 2), (2, 0), False)]


@pytest.mark.parametrize("text, stride, padding, jax_hessian", CONV2D)
def test_conv2d_gradients_and_hessians_with_channels_and_batch(text, stride, padding,
                                                               jax_hessian):
    _, jnp, lax = jax_modules()
    # (XLA 0.10's algebraic simplifier aborts on JAX's Hessian of the strided, padded
    # convolution of 4 x 4 images: these are 5 x 4)
    X, W, b = draw(2, 2, 5, 4), draw(3, 2, 2, 3), draw(3)
    shapes = {"X": ("n", 2, "h", "v"), "W": (3, 2, 2, 3), "b": (3,)}
    strides = stride if isinstance(stride, tuple) else (stride, stride)
    pads = padding if isinstance(padding, tuple) else (padding, padding)

    def reference(X, W, b):
        out = lax.conv_general_dilated(X, W, strides, [(p, p) for p in pads],
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                       precision=lax.Precision.HIGHEST)
        return jnp.sum(jnp.tanh(out + b[:, None, None]) ** 2)
    agree(f"sum(tanh({text}) ** 2)", shapes, {"X": X, "W": W, "b": b}, reference,
          jax_hessian=jax_hessian)


def test_conv1d_and_transpose_gradients_and_hessians():
    _, jnp, lax = jax_modules()
    x, w = draw(2, 2, 8), draw(3, 2, 3)
    shapes = {"x": ("n", 2, "l"), "w": (3, 2, 3)}

    def reference(x, w):
        out = lax.conv_general_dilated(x, w, (2,), [(1, 1)],
                                       dimension_numbers=("NCH", "OIH", "NCH"),
                                       precision=lax.Precision.HIGHEST)
        return jnp.sum(jnp.sin(out))
    agree("sum(sin(conv1d(x, w, stride=2, padding=1)))", shapes, {"x": x, "w": w}, reference)
    d, v = draw(2, 3, 4), draw(3, 2, 2)
    agree("sum(sin(conv_transpose1d(d, v, stride=2)))", {"d": ("n", 3, "l"), "v": (3, 2, 2)},
          {"d": d, "v": v})


def test_conv2d_gradient_against_pytorch_autograd():
    torch, F = torch_module()
    X, W, b = draw(4, 3, 9, 8), draw(5, 3, 3, 3), draw(5)
    V, Y = draw(5, 2), np.eye(2)[RNG.integers(0, 2, 4)]
    text = """H = relu(conv2d(X, W, b, stride=2, padding=1))
    -sum(Y * log_softmax(mean(H, axis=(2, 3)) @ V, axis=1))"""
    shapes = {"X": ("n", 3, "h", "v"), "W": (5, 3, 3, 3), "b": (5,), "V": (5, 2),
              "Y": ("n", 2)}
    g = einderiv.grad(text, ["X", "W", "b", "V"], shapes)
    ts = [torch.from_numpy(a.copy()).requires_grad_() for a in (X, W, b, V)]
    H = torch.relu(F.conv2d(ts[0], ts[1], ts[2], stride=2, padding=1))
    loss = -(torch.from_numpy(Y) * torch.log_softmax(H.mean(dim=(2, 3)) @ ts[3], 1)).sum()
    expected = torch.autograd.grad(loss, ts)
    for got, want in zip(g(X=X, W=W, b=b, V=V, Y=Y), expected):
        assert relative_error(got, want.numpy()) < 1e-12
    formula = einderiv.grad("sum(conv2d(X, W) ** 2)", "X", shapes).formula
    assert formula == "conv_transpose2d(2 * conv2d(X, W), W)"


def test_float32_stays_float32():
    x, w = draw(10).astype(np.float32), draw(3).astype(np.float32)
    g = einderiv.grad("sum(correlate(x, w, stride=2) ** 2)", "w", VECTORS)
    assert g(x=x, w=w).dtype == np.float32


# -- memory and time: no band matrix ----------------------------------------------------------------

def test_a_million_entries_in_linear_memory(peak_bytes):
    """The gradient of a correlation at n = 10^6, k = 16, by x and by w: a few vectors of
    memory, in the generated code and the IR interpreter (a band matrix would be 128 GB)."""
    n = 10 ** 6
    x, w = RNG.uniform(-1, 1, n), RNG.uniform(-1, 1, 16)
    shapes = {"x": ("n",), "w": (16,)}
    text = "sum(correlate(x, w) ** 2)"
    c = np.correlate(x, w)
    expected = (np.convolve(2 * c, w), np.correlate(x, 2 * c))
    g = einderiv.grad(text, ["x", "w"], shapes)
    for run in (g, g.evaluate_ir):
        got = []
        assert peak_bytes(lambda: got.append(run(x=x, w=w))) < 8 * 8 * n
        assert all(relative_error(a, b) < 1e-10 for a, b in zip(got[0], expected))


# -- backends ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backends_agree_with_numpy(backend):
    if backend == "jax":
        jax_modules()
    else:
        torch_module()
    X, W = draw(2, 3, 6, 5), draw(4, 3, 3, 2)
    shapes = {"X": ("n", 3, "h", "v"), "W": (4, 3, 3, 2)}
    # (jax compiles each operation at its first call: a few of them keep this short)
    text = "sum(conv2d(X, W, stride=2) ** 2)" if backend == "jax" else \
        "sum(tanh(conv2d(X, W, stride=2, padding=1)) ** 2) + " \
        "sum(conv_transpose2d(X, W[:3, :4], stride=2) ** 2)"
    expected = einderiv.grad(text, ["X", "W"], shapes)(X=X, W=W)
    got = einderiv.grad(text, ["X", "W"], shapes, backend=backend)(X=X, W=W)
    for a, e in zip(got, expected):
        assert relative_error(np.asarray(a), e) < 1e-12
    x, w = draw(9), draw(3)
    text = "sum(correlate(x, w, stride=2) ** 2) + sum(convolve(x, w) ** 2)"
    h = einderiv.hessian(text, "w", VECTORS, backend=backend)(x=x, w=w)
    assert relative_error(np.asarray(h), einderiv.hessian(text, "w", VECTORS)(x=x, w=w)) < 1e-12


def test_dask_says_it_has_no_convolution():
    pytest.importorskip("dask.array")
    f = einderiv.compile("correlate(x, w)", VECTORS, backend="dask")
    with pytest.raises(einderiv.EvaluationError, match="not available on the dask backend"):
        f(x=draw(5), w=draw(3))


# -- bad input -----------------------------------------------------------------------------------------

BAD = [
    ("correlate(x, w)", {"x": (3,), "w": (5,)}, einderiv.ShapeError, "longer than the signal"),
    ("conv2d(X, W)", {"X": ("n", 3, 8, 8), "W": (4, 2, 3, 3)}, einderiv.ShapeError,
     "the input has 3 channels and the kernel 2"),
    ("correlate(x, w)", {"x": ("n",), "w": ("k",)}, einderiv.ShapeError,
     "n - k \\+ 1, which is not a dimension"),
    ('correlate(x, w, mode="circular")', VECTORS, einderiv.ParseError, "mode is"),
    ("correlate(x, w, padding=1)", VECTORS, einderiv.ParseError, "unexpected keyword"),
    ("conv1d(x, w)", VECTORS, einderiv.ShapeError, "conv1d\\(\\) takes an input"),
    ("conv2d(X, W, stride=0)", {"X": ("n", 3, 8, 8), "W": (4, 3, 3, 3)}, einderiv.ShapeError,
     "stride must be at least 1"),
    ("conv2d(X, W, b)", {"X": ("n", 3, 8, 8), "W": (4, 3, 3, 3), "b": (3,)},
     einderiv.ShapeError, "one per output channel"),
]


@pytest.mark.parametrize("text, shapes, error, words", BAD)
def test_bad_input_is_a_clear_error_with_a_caret(text, shapes, error, words):
    with pytest.raises(error, match=words) as caught:
        einderiv.compile(text, shapes)
    assert caught.value.span is not None and "^" in str(caught.value)


def test_a_kernel_longer_than_a_named_signal_at_the_call():
    f = einderiv.compile("correlate(x, w)", VECTORS)
    with pytest.raises(einderiv.EinderivError, match="larger than the signal|negative"):
        f(x=draw(2), w=draw(3))
