"""einderiv inside PyTorch and JAX training code (issue 15 item 5): `einderiv.torch.function` is a
`torch.autograd.Function` and `einderiv.jax.function` a JAX primitive's function, each
computing with einderiv's generated code and differentiating with its symbolic vjp.

Every gradient is compared with the framework's own autograd of the same computation written
in the framework (float64, random inputs): a scalar loss (logistic regression), a tensor
output (tanh(W @ x)) against a random cotangent, `torch.autograd.gradcheck`, and a few SGD
steps of a linear model in a plain PyTorch loop. The README's sessions of the two modules
(```pycon-torch and ```pycon-jax blocks, which tests/test_docs.py leaves to this file) run
here. Tests of a framework that is not installed are skipped.
"""
from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
import einderiv.pullback
from einderiv import EinderivError, InputError, ShapeError

ROOT = Path(__file__).resolve().parents[1]
LOGISTIC = "sum(log(1 + exp(-y * (X @ w))))"
LOGISTIC_SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
LAYER = "tanh(W @ x)"
LAYER_SHAPES = {"W": ("m", "n"), "x": ("n",)}


def data(seed=0, n=7, d=3):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)), np.sign(r.normal(size=n)), r.normal(size=d)


def readme_session(tag: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(rf"^```{tag}\n(.*?)^```\s*$", text, re.M | re.S)
    assert blocks, f"README.md has no ```{tag} block"
    return "".join(blocks)


def run_session(text: str, name: str):
    parser, runner, report = doctest.DocTestParser(), doctest.DocTestRunner(), []
    runner.run(parser.get_doctest(text, {}, name, "README.md", 0), out=report.append)
    assert runner.failures == 0, "".join(report)


def test_import_einderiv_imports_no_framework():
    code = ("import sys, einderiv, einderiv.torch, einderiv.jax\n"
            "assert einderiv.torch.function and einderiv.jax.function\n"
            "print(sorted({'torch', 'jax'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module, framework", [("torch", "torch"), ("jax", "jax")])
def test_a_missing_framework_is_an_einderiv_error(module, framework, monkeypatch):
    monkeypatch.setitem(sys.modules, framework, None)  # `import torch` raises ImportError
    adapter = getattr(einderiv, module)
    with pytest.raises(EinderivError, match=f"needs .*not installed") as info:
        adapter.function("sum(x)", {"x": ("n",)})
    assert f"einderiv[{framework}]" in info.value.hint


# -- PyTorch ----------------------------------------------------------------------------------

def test_torch_logistic_loss_gradients_match_autograd(torch):
    F = einderiv.torch.function(LOGISTIC, LOGISTIC_SHAPES)
    assert issubclass(F, torch.autograd.Function)
    assert F.inputs == {"X": ("n", "d"), "y": ("n",), "w": ("d",)}
    ours = [torch.tensor(a, requires_grad=True) for a in data()]
    theirs = [torch.tensor(a, requires_grad=True) for a in data()]
    loss = F(*ours)
    X, y, w = theirs
    reference = torch.nn.functional.softplus(-y * (X @ w)).sum()
    assert loss.shape == () and loss.dtype == torch.float64
    torch.testing.assert_close(loss, reference)
    loss.backward()
    reference.backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


def test_torch_tensor_output_backward_is_the_vjp(torch):
    F = einderiv.torch.function(LAYER, LAYER_SHAPES)
    r = np.random.default_rng(1)
    W0, x0, u = r.normal(size=(4, 3)), r.normal(size=3), torch.tensor(r.normal(size=4))
    W, x = torch.tensor(W0, requires_grad=True), torch.tensor(x0, requires_grad=True)
    out = F(W=W, x=x)  # keywords too
    out.backward(u)
    W1, x1 = torch.tensor(W0, requires_grad=True), torch.tensor(x0, requires_grad=True)
    torch.tanh(W1 @ x1).backward(u)
    torch.testing.assert_close(out, torch.tanh(W1 @ x1).detach())
    torch.testing.assert_close(W.grad, W1.grad)
    torch.testing.assert_close(x.grad, x1.grad)
    # out.sum()'s backward hands over an expanded cotangent (stride 0)
    W.grad = W1.grad = None
    F(W, x).sum().backward()
    torch.tanh(W1 @ x1).sum().backward()
    torch.testing.assert_close(W.grad, W1.grad)


def test_torch_gradcheck(torch):
    F = einderiv.torch.function(LAYER, LAYER_SHAPES)
    r = np.random.default_rng(2)
    W = torch.tensor(r.normal(size=(3, 2)), requires_grad=True)
    x = torch.tensor(r.normal(size=2), requires_grad=True)
    assert torch.autograd.gradcheck(F.apply, (W, x))
    L = einderiv.torch.function(LOGISTIC, LOGISTIC_SHAPES)
    assert torch.autograd.gradcheck(
        L, tuple(torch.tensor(a, requires_grad=True) for a in data(3, n=4, d=2)))


def test_torch_backward_derives_only_what_needs_a_gradient(torch, monkeypatch):
    asked = []
    derive = einderiv.pullback.vjp

    def spy(expr, wrt, *args, **kwargs):
        asked.append(tuple(wrt))
        return derive(expr, wrt, *args, **kwargs)
    monkeypatch.setattr(einderiv.pullback, "vjp", spy)
    F = einderiv.torch.function(LOGISTIC, LOGISTIC_SHAPES)
    X, y, w = (torch.tensor(a) for a in data())
    w.requires_grad_()
    for _ in range(2):  # derived once, kept
        F(X, y, w).backward()
    assert asked == [("w",)]
    assert X.grad is None and y.grad is None
    X.requires_grad_()
    F(X, y, w).backward()
    assert asked == [("w",), ("X", "w")]


def test_torch_training_loop_takes_the_steps_autograd_takes(torch):
    r = np.random.default_rng(4)
    X, Y = torch.tensor(r.normal(size=(16, 3))), torch.tensor(r.normal(size=(16, 2)))
    start = [r.normal(size=(2, 3)), r.normal(size=2)]
    F = einderiv.torch.function("mean((X @ W.T + b - Y) ** 2)",
                                {"W": ("k", "d"), "b": ("k",), "X": ("n", "d"),
                                 "Y": ("n", "k")})

    def train(loss_of):
        W, b = (torch.tensor(p, requires_grad=True) for p in start)
        optimizer = torch.optim.SGD([W, b], lr=0.1)
        for _ in range(5):
            optimizer.zero_grad()
            loss = loss_of(W, b)
            loss.backward()
            optimizer.step()
        return W.detach(), b.detach(), loss.item()

    ours = train(lambda W, b: F(W, b, X, Y))
    theirs = train(lambda W, b: ((X @ W.T + b - Y) ** 2).mean())
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a, b)
    assert ours[2] == pytest.approx(theirs[2], rel=1e-12)
    assert not torch.allclose(ours[0], torch.tensor(start[0]))  # it did move


def test_torch_gradients_keep_each_inputs_dtype_and_take_numbers(torch):
    F = einderiv.torch.function("sum(log(1 + exp(-y * (X @ w)))) + lam / 2 * (w @ w)",
                                {**LOGISTIC_SHAPES, "lam": ()})
    X, y, w = data(5)
    X, y = torch.tensor(X), torch.tensor(y)
    w32 = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    loss = F(X, y, w32, 0.5)  # a Python number for lam: no gradient asked of it
    assert loss.dtype == torch.float64  # the promoted dtype, as every einderiv call
    loss.backward()
    assert w32.grad.dtype == torch.float32
    w64 = torch.tensor(w, requires_grad=True)
    (torch.nn.functional.softplus(-y * (X @ w64)).sum() + 0.25 * (w64 @ w64)).backward()
    torch.testing.assert_close(w32.grad, w64.grad.float())


def test_torch_errors(torch):
    F = einderiv.torch.function(LOGISTIC, LOGISTIC_SHAPES)
    X, y, w = (torch.tensor(a, requires_grad=True) for a in data())
    with pytest.raises(InputError, match="missing input 'w'"):
        F(X, y)
    with pytest.raises(InputError, match="unexpected input 'v'"):
        F(X, y, w, v=w)
    with pytest.raises(ShapeError):
        F(X, y[:3], w)
    (g,) = torch.autograd.grad(F(X, y, w), w, create_graph=False)
    torch.testing.assert_close(g, torch.autograd.grad(F(X, y, w), w)[0])
    # Double backward is einderiv's too (tests/test_jax_higher_order.py has more orders).
    (g,) = torch.autograd.grad(F(X, y, w), w, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), w)
    (r,) = torch.autograd.grad(torch.nn.functional.softplus(-y * (X @ w)).sum(), w,
                               create_graph=True)
    torch.testing.assert_close(h, torch.autograd.grad(r.sum(), w)[0])


def test_torch_variable_named_like_the_cotangent(torch):
    """The output cotangent of backward is a variable of the vjp program: a fresh name."""
    F = einderiv.torch.function("sum(cotangent * x) + sum(cotangent_1 * x)",
                                {"cotangent": ("n",), "x": ("n",), "cotangent_1": ("n",)})
    r = np.random.default_rng(9)
    a, x, c = (torch.tensor(r.normal(size=3), requires_grad=True) for _ in range(3))
    F(a, x, c).backward()
    torch.testing.assert_close(x.grad, (a + c).detach())
    torch.testing.assert_close(a.grad, x.detach())
    assert "cotangent_2" in F.backward_result(["x"]).inputs


def test_torch_readme_session(torch):
    run_session(readme_session("pycon-torch"), "README.md (torch)")


# -- JAX --------------------------------------------------------------------------------------

def test_jax_logistic_loss_gradients_match_jax_grad(jax):
    jnp = jax.numpy
    f = einderiv.jax.function(LOGISTIC, LOGISTIC_SHAPES)
    assert f.inputs == {"X": ("n", "d"), "y": ("n",), "w": ("d",)}

    def reference(X, y, w):
        return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w)))
    X, y, w = data(6)
    # Jitted: eager JAX compiles every operation on its own, seconds in all.
    np.testing.assert_allclose(f(X, y, w), jax.jit(reference)(X, y, w), rtol=1e-12)
    ours = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(X, y, w)
    theirs = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(X, y, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Under jit, by keyword, and as value_and_grad: one traced program.
    value, dw = jax.jit(jax.value_and_grad(lambda w: f(X=X, y=y, w=w)))(w)
    np.testing.assert_allclose(value, jax.jit(reference)(X, y, w), rtol=1e-12)
    np.testing.assert_allclose(dw, theirs[2], rtol=1e-10, atol=1e-12)


def test_jax_tensor_output_vjp_matches(jax):
    f = einderiv.jax.function(LAYER, LAYER_SHAPES)
    r = np.random.default_rng(7)
    W, x, u = r.normal(size=(4, 3)), r.normal(size=3), r.normal(size=4)
    out, pull = jax.vjp(jax.jit(f), W, x)
    out_ref, pull_ref = jax.vjp(jax.jit(lambda W, x: jax.numpy.tanh(W @ x)), W, x)
    np.testing.assert_allclose(out, out_ref, rtol=1e-12)
    for a, b in zip(pull(u), pull_ref(u)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_jax_second_derivatives_and_integer_inputs(jax):
    jnp = jax.numpy
    f = einderiv.jax.function(LOGISTIC, LOGISTIC_SHAPES)
    X, y, w = data(8)
    labels = y.astype(np.int64)  # an integer input: its cotangent is JAX's float0 zero

    def reference(X, y, w):
        return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w)))
    np.testing.assert_allclose(jax.jit(jax.grad(f, argnums=2))(X, labels, w),
                               jax.jit(jax.grad(reference, argnums=2))(X, labels, w),
                               rtol=1e-10)
    assert jax.grad(f, argnums=1, allow_int=True)(X, labels, w).dtype == jax.dtypes.float0
    np.testing.assert_allclose(jax.jit(jax.hessian(f, argnums=2))(X, y, w),
                               jax.jit(jax.hessian(reference, argnums=2))(X, y, w),
                               rtol=1e-10, atol=1e-12)
    # Forward mode too (einderiv's jvp; tests/test_jax_higher_order.py has more orders).
    for a, b in zip(jax.jvp(lambda w: f(X, y, w), (w,), (w,)),
                    jax.jvp(lambda w: reference(X, y, w), (w,), (w,))):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_jax_errors(jax):
    f = einderiv.jax.function(LOGISTIC, LOGISTIC_SHAPES)
    X, y, w = data()
    with pytest.raises(InputError, match="missing input 'w'"):
        f(X, y)
    with pytest.raises(ShapeError):
        jax.grad(f, argnums=2)(X, y[:3], w)


def test_jax_readme_session(jax):
    run_session(readme_session("pycon-jax"), "README.md (jax)")
