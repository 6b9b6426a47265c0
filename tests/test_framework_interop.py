"""`einderiv.torch.function` and `einderiv.jax.function` as objects other code moves around and
transforms (issue 15 items 4 and 5): pickle, cloudpickle and deepcopy round trips give the same
values and derivatives (rebuilt from the expression, shapes and rule book: nothing of the
process that made them, no lock, is sent), a `multiprocessing` spawn pool computes with them,
and PyTorch's torch.func transforms (vmap, grad, jacrev, jacfwd, hessian) and forward mode go
through the torch Function to einderiv's own derivatives. References are the framework's own
autograd of the same computation written in the framework. Tests of a framework that is not
installed are skipped.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import pickle

import numpy as np
import pytest

import einderiv

slow = pytest.mark.skipif(not os.environ.get("EINDERIV_SLOW"),
                          reason="slow interop check (a sample runs in CI): set EINDERIV_SLOW=1")

TEXT = "sum(tanh(W @ x) ** 2) + det(W @ W.T)"
SHAPES = {"W": ("m", "n"), "x": ("n",)}


def _torch_reference(torch):
    return lambda W, x: (torch.tanh(W @ x) ** 2).sum() + torch.linalg.det(W @ W.T)


def _jax_reference(jax):
    jnp = jax.numpy
    return lambda W, x: jnp.sum(jnp.tanh(W @ x) ** 2) + jnp.linalg.det(W @ W.T)


def _round_trips():
    trips = {"pickle": lambda f: pickle.loads(pickle.dumps(f)), "deepcopy": copy.deepcopy}
    try:
        import cloudpickle
        trips["cloudpickle"] = lambda f: cloudpickle.loads(cloudpickle.dumps(f))
    except ImportError:
        pass
    return trips


def _close(actual, expected, tol=1e-10):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, 3)), rng.normal(size=3)


@pytest.mark.parametrize("how", sorted(_round_trips()))
def test_torch_function_round_trips(torch, how):
    F = einderiv.torch.function(TEXT, SHAPES)
    W0, x0 = map(torch.tensor, _arrays())
    W = W0.clone().requires_grad_()
    (g,) = torch.autograd.grad(F(W, x0), W, create_graph=True)  # derives programs first
    G = _round_trips()[how](F)
    assert issubclass(G, torch.autograd.Function)
    assert G.inputs == F.inputs and G.forward_result.formula == F.forward_result.formula
    ref = _torch_reference(torch)
    for fn in (G, ref):
        W = W0.clone().requires_grad_()
        value = fn(W, x=x0) if fn is G else fn(W, x0)
        (g,) = torch.autograd.grad(value, W, create_graph=True)
        (h,) = torch.autograd.grad(g[0, 1], W)
        if fn is G:
            got = value, g, h
    for a, b in zip(got, (value, g, h)):
        _close(a.detach().numpy(), b.detach().numpy())
    # and again: what was loaded pickles as well
    _close(pickle.loads(pickle.dumps(G))(W0, x0).numpy(), value.detach().numpy())


@pytest.mark.parametrize("how", sorted(_round_trips()))
def test_jax_function_round_trips(jax, how):
    f = einderiv.jax.function(TEXT, SHAPES)
    W, x = _arrays(1)
    jax.grad(f)(W, x)  # derives programs first
    g = _round_trips()[how](f)
    assert g.inputs == f.inputs and g.forward_result.formula == f.forward_result.formula
    ref = _jax_reference(jax)
    _close(g(W, x=x), ref(W, x))
    for a, b in zip(jax.grad(g, (0, 1))(W, x), jax.grad(ref, (0, 1))(W, x)):
        _close(a, b)
    _close(jax.jit(jax.hessian(g, 1))(W, x), jax.hessian(ref, 1)(W, x))


def test_the_rule_book_goes_with_the_function(torch, jax, tmp_path):
    """A function made under a rule book of its own derives under it, wherever its backward
    is called, and is made under it again when loaded where that book is not in force."""
    from einderiv.rulebook import default_rulebook
    from einderiv.rulebook.table import using_rules
    path = tmp_path / "cube.rules"
    path.write_text("def cube(x) = x ** 3\n")
    book = default_rulebook().copy()
    book.load(path)
    with using_rules(book):
        F = einderiv.torch.function("sum(cube(x))", {"x": ("n",)})
        f = einderiv.jax.function("sum(cube(x))", {"x": ("n",)})
    with pytest.raises(einderiv.EinderivError, match="cube"):
        einderiv.compile("cube(x)", {"x": ()})  # not in force here
    x = np.array([1.0, 2.0])
    for G in (F, pickle.loads(pickle.dumps(F))):
        xt = torch.tensor(x, requires_grad=True)
        (g,) = torch.autograd.grad(G(xt), xt)
        _close(g.numpy(), 3 * x ** 2)
    for g in (f, pickle.loads(pickle.dumps(f))):
        _close(jax.grad(g)(x), 3 * x ** 2)


def _value_and_grad_in_worker(F, arrays):
    """Run in a spawned process: F's value and gradient by its first input."""
    import torch
    W, x = (torch.tensor(a, requires_grad=k == 0) for k, a in enumerate(arrays))
    value = F(W, x)
    (g,) = torch.autograd.grad(value, W)
    return value.item(), g.numpy()


def _jax_value_and_grad_in_worker(f, arrays):
    import jax
    jax.config.update("jax_enable_x64", True)
    value, g = jax.value_and_grad(f)(*arrays)
    return float(value), np.asarray(g)


@slow
def test_a_spawn_pool_computes_with_both(torch, jax):
    F = einderiv.torch.function(TEXT, SHAPES)
    f = einderiv.jax.function(TEXT, SHAPES)
    arrays = _arrays(2)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results = [pool.apply(_value_and_grad_in_worker, (F, arrays)),
                   pool.apply(_jax_value_and_grad_in_worker, (f, arrays))]
    W = torch.tensor(arrays[0], requires_grad=True)
    value = _torch_reference(torch)(W, torch.tensor(arrays[1]))
    (g,) = torch.autograd.grad(value, W)
    for v, grad in results:
        _close(v, value.item())
        _close(grad, g.numpy())


# -- torch.func and forward mode ----------------------------------------------------------------

def _transforms(torch):
    func = torch.func
    W, xs = torch.tensor(_arrays(3)[0]), torch.tensor(np.random.default_rng(4).normal(size=(4, 3)))
    return [
        ("vmap", lambda f: func.vmap(f, (None, 0))(W, xs)),
        ("per-sample grads", lambda f: func.vmap(func.grad(f, (0, 1)), (None, 0))(W, xs)),
        ("jacrev", lambda f: func.jacrev(f, (0, 1))(W, xs[0])),
        ("jacrev of jacrev", lambda f: func.vmap(func.jacrev(func.jacrev(f, 1), 0),
                                                 (None, 0))(W, xs)),
        ("jvp", lambda f: func.jvp(lambda W: f(W, xs[0]), (W,), (W.flip(0),))),
        ("jacfwd", lambda f: func.jacfwd(f, 1)(W, xs[0])),
        ("hessian", lambda f: func.vmap(func.hessian(f, 1), (None, 0))(W, xs)),
        ("hessian by W", lambda f: func.hessian(f, 0)(W, xs[0])),
        ("jacobian vectorize", lambda f: torch.autograd.functional.jacobian(
            lambda x: func.grad(f, 1)(W, x), xs[0], vectorize=True)),
    ]


@pytest.mark.parametrize("name", ["vmap", "per-sample grads", "jacrev", "jacrev of jacrev",
                                  "jvp", "jacfwd", "hessian", "hessian by W",
                                  "jacobian vectorize"])
def test_torch_func_transforms(torch, name):
    F = einderiv.torch.function(TEXT, SHAPES)
    transform = dict(_transforms(torch))[name]
    got = torch.utils._pytree.tree_leaves(transform(F))
    expected = torch.utils._pytree.tree_leaves(transform(_torch_reference(torch)))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a.detach().numpy(), b.detach().numpy())


def test_torch_forward_ad_keeps_the_output_dtype(torch):
    """Forward mode through torch.autograd.forward_ad: a float32 input's tangent with a
    float64 one promotes the program's tangent; the output's tangent has the output's dtype."""
    import torch.autograd.forward_ad as fwAD
    F = einderiv.torch.function("sum(x * y)", {"x": ("n",), "y": ("n",)})
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([3.0, -1.0], dtype=torch.float64)
    with fwAD.dual_level():
        out = F(fwAD.make_dual(x, torch.tensor([1.0, 0.0], dtype=torch.float64)), y)
        primal, tangent = fwAD.unpack_dual(out)
    assert tangent.dtype == primal.dtype == torch.float64
    _close(tangent.numpy(), 3.0)


def test_torch_gradchecks_with_forward_mode_and_batched_grads(torch):
    F = einderiv.torch.function(TEXT, SHAPES)
    W, x = (torch.tensor(a, requires_grad=True) for a in _arrays(5))
    assert torch.autograd.gradcheck(F, (W, x), check_forward_ad=True, check_batched_grad=True,
                                    check_backward_ad=True)
    assert torch.autograd.gradgradcheck(F, (W, x))


def test_an_older_jax_is_a_clear_error(monkeypatch):
    jax = pytest.importorskip("jax")
    import einderiv.jax as ejax
    monkeypatch.setattr(jax, "__version__", "0.4.30")
    monkeypatch.setattr(ejax, "_made", [])  # the primitive is defined (and checked) anew
    f = ejax.function("sum(x * x)", {"x": ("n",)})
    with pytest.raises(einderiv.EinderivError, match="needs jax >= 0.5"):
        f(jax.numpy.ones(2))
