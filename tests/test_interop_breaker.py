"""Faults found by trying issue 15's products, calls, SciPy flattening and pickling as a user
coming from JAX, SciPy and PyTorch would. Each test states the right behaviour from an
independent reference (numpy by hand, finite differences, the README's own claim), and is an
expected failure until the fault is fixed (strict: a fix turns it into an error, so that the
marker is removed)."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import einderiv
from einderiv import EinderivError, InputError, ShapeError

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)


def _close(actual, expected, tol=1e-9):
    for a, e in zip(actual if isinstance(actual, tuple) else (actual,),
                    expected if isinstance(expected, tuple) else (expected,)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol)


# -- wrt as an einderiv.var of another shape --------------------------------------------------

MATVEC = {"W": ("k", "d"), "x": ("d",)}


@pytest.mark.parametrize("make", [
    lambda x: einderiv.hvp("sum((W @ x) ** 2)", x, MATVEC),
    lambda x: einderiv.jvp("W @ x", x, MATVEC),
    lambda x: einderiv.vjp("W @ x", x, MATVEC),
    lambda x: einderiv.flat("sum((W @ x) ** 2)", x, MATVEC, data={"W": np.ones((2, 3))}),
], ids=["hvp", "jvp", "vjp", "flat"])
def test_a_wrt_var_of_another_shape_is_a_shape_error(make):
    # README: "wrt is a name, an einderiv.var, or a list mixing them; a var whose shape is not
    # the one the expression declares is a ShapeError" (as grad does).
    with pytest.raises(ShapeError):
        einderiv.grad("sum((W @ x) ** 2)", einderiv.var("x", ("q",)), MATVEC)
    with pytest.raises(ShapeError):
        make(einderiv.var("x", ("q",)))


# -- strided slices with several wrt ----------------------------------------------------------

STRIDED = "sum(x[:-1:2] * y[1::2])"  # n = 9: x[0, 2, 4, 6] * y[1, 3, 5, 7]
STRIDED_SHAPES = {"x": ("n",), "y": ("n",)}


def _strided_gradient(x, y):
    dx, dy = np.zeros_like(x), np.zeros_like(y)
    dx[:-1:2], dy[1::2] = y[1::2], x[:-1:2]
    return dx, dy


@pytest.mark.parametrize("kind", ["grad", "vjp", "hvp", "flat"])
def test_strided_slices_with_several_wrt(kind):
    rng = np.random.default_rng(0)
    x, y, tx, ty = rng.normal(size=(4, 9))
    if kind == "grad":
        got = einderiv.grad(STRIDED, ["x", "y"], STRIDED_SHAPES)(x, y)
        _close(got, _strided_gradient(x, y))
    elif kind == "vjp":  # a scalar output: cotangent 2 is twice the gradient
        got = einderiv.vjp(STRIDED, ["x", "y"], STRIDED_SHAPES)(x, y, cotangent=2.0)
        _close(got, tuple(2 * g for g in _strided_gradient(x, y)))
    elif kind == "hvp":  # bilinear: H (tx, ty) is the gradient's pattern applied to (tx, ty)
        got = einderiv.hvp(STRIDED, ["x", "y"], STRIDED_SHAPES)(x, y, tangent=(tx, ty))
        _close(got, _strided_gradient(tx, ty))
    else:
        problem = einderiv.flat(STRIDED + " + sum(x * x)", ["x", "y"], STRIDED_SHAPES,
                                sizes={"n": 9})
        dx, dy = _strided_gradient(x, y)
        _close(problem.jac(np.concatenate([x, y])), np.concatenate([dx + 2 * x, dy]))


def test_hvp_of_a_strided_correlation_by_signal_and_kernel():
    shapes = {"x": ("n",), "w": (3,)}
    expr = "sum(correlate(x, w, stride=2) ** 2)"
    rng = np.random.default_rng(1)
    x, tx = rng.normal(size=(2, 9))
    w, tw = rng.normal(size=(2, 3))
    # Reference: central differences along (tx, tw) of the gradient by each name alone (those
    # run), checked against numpy's correlate first.
    gx = einderiv.grad(expr, "x", shapes)
    gw = einderiv.grad(expr, "w", shapes)
    c = np.correlate(x, w)[::2]
    np.testing.assert_allclose(einderiv.compile(expr, shapes)(x, w), np.sum(c ** 2))
    h = 1e-5
    expected = tuple((g(x + h * tx, w + h * tw) - g(x - h * tx, w - h * tw)) / (2 * h)
                     for g in (gx, gw))
    got = einderiv.hvp(expr, ["x", "w"], shapes)(x, w, tangent=(tx, tw))
    _close(got, expected, tol=1e-6)


# -- products that form the matrix they promise not to ----------------------------------------

def _prod_hessian(x):
    """H[i, j] = prod of the entries other than i and j (0 on the diagonal), by hand."""
    d = len(x)
    H = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if i != j:
                H[i, j] = np.prod([x[k] for k in range(d) if k not in (i, j)])
    return H


def test_hvp_of_prod_with_a_zero_entry_is_finite():
    x = np.array([0.0, 2.0, 3.0, 4.0])
    t = np.array([1.0, -1.0, 0.5, 2.0])
    with np.errstate(all="ignore"):
        got = einderiv.hvp("prod(x)", "x", {"x": ("n",)})(x, tangent=t)
    _close(got, _prod_hessian(x) @ t)  # [4, 12, 8, 6]


def test_hvp_of_prod_never_forms_a_d_by_d_matrix(peak_bytes):
    hv = einderiv.hvp("prod(x)", "x", {"x": ("n",)})
    d = 1500
    rng = np.random.default_rng(2)
    x, t = rng.uniform(0.9, 1.1, size=d), rng.normal(size=d)
    small = rng.uniform(0.5, 1.5, size=5)
    _close(hv(small, tangent=small[::-1]), _prod_hessian(small) @ small[::-1])
    hv(x, tangent=t)
    peak = peak_bytes(lambda: hv(x, tangent=t))
    assert peak < 50 * 8 * d, f"peak {peak / (8 * d):.0f} vectors of d (d x d is {d})"


def test_hvp_of_det_never_forms_the_hessian(peak_bytes):
    hv = einderiv.hvp("det(X)", "X", {"X": ("n", "n")})
    n = 40
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, n)) + n * np.eye(n)
    V = rng.normal(size=(n, n))
    # d/de adj(X + e V).T with adj = det * inv, by hand.
    Xi = np.linalg.inv(X)
    expected = (np.linalg.det(X) * (np.trace(Xi @ V) * Xi - Xi @ V @ Xi)).T
    _close(hv(X, tangent=V) / np.linalg.det(X), expected / np.linalg.det(X), tol=1e-8)
    peak = peak_bytes(lambda: hv(X, tangent=V))
    assert peak < 50 * 8 * n * n, f"peak {peak / (8 * n * n):.0f} matrices of n x n"


# -- einderiv.flat ----------------------------------------------------------------------------

LOGISTIC = "sum(softplus(-y * (X @ w + b))) + (w @ w) / 2"
LOGISTIC_SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",), "b": ()}


def _problem():
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]])
    y = np.array([1.0, -1.0, 1.0])
    return einderiv.flat(LOGISTIC, ["w", "b"], LOGISTIC_SHAPES, data={"X": X, "y": y})


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "pickle problem.hvp"])
def test_flat_pickles_and_copies_like_every_result(how):
    problem = _problem()
    x, p = np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.5, -1.0])
    expected = problem.fun(x), problem.jac(x), problem.hessp(x, p)
    if how == "pickle":
        again = pickle.loads(pickle.dumps(problem))
    elif how == "deepcopy":
        again = copy.deepcopy(problem)
    else:
        hv = pickle.loads(pickle.dumps(problem.hvp))
        products = hv(**problem.data, w=x[:2], b=x[2], tangent=(p[:2], p[2]))
        _close(np.concatenate([np.ravel(v) for v in products]), expected[2])
        return
    _close((again.fun(x), again.jac(x), again.hessp(x, p)), expected)


def test_flat_keeps_a_read_only_copy_of_its_data():
    # fun and jac keep the value at the last x: data changed behind them would make it stale.
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]])
    y = np.array([1.0, -1.0, 1.0])
    problem = einderiv.flat(LOGISTIC, ["w", "b"], LOGISTIC_SHAPES, data={"X": X, "y": y})
    x = np.array([0.1, -0.2, 0.3])
    expected = einderiv.compile(LOGISTIC, LOGISTIC_SHAPES)(X=X, y=y, w=x[:2], b=x[2])
    _close(problem.fun(x), expected)
    X *= 2.0
    _close(problem.fun(x), expected)
    _close(problem.fun(x + 1.0), einderiv.compile(LOGISTIC, LOGISTIC_SHAPES)(
        X=X / 2.0, y=y, w=x[:2] + 1.0, b=x[2] + 1.0))
    with pytest.raises(ValueError, match="read-only"):
        problem.data["X"][0, 0] = 5.0
    with pytest.raises(TypeError):
        problem.data["X"] = X


@pytest.mark.parametrize("size", [-2, 2.5, "2", None])
def test_flat_sizes_must_be_counts(size):
    with pytest.raises(EinderivError):
        einderiv.flat("sum((W @ x) ** 2)", "W", {"W": ("h", "d"), "x": ("d",)},
                      data={"x": np.ones(3)}, sizes={"h": size})


def test_flat_pack_refuses_a_complex_value():
    problem = _problem()
    with pytest.raises(InputError):
        problem.pack(w=np.array([1.0 + 2.0j, 0.0]), b=0.0)


def test_flat_pack_takes_a_variable_named_self():
    problem = einderiv.flat("sum(self ** 2) + sum(x ** 2)", ["self", "x"],
                            {"self": ("n",), "x": ("n",)}, sizes={"n": 2})
    x = problem.pack(**{"self": np.array([1.0, 2.0]), "x": np.array([3.0, 4.0])})
    _close(x, np.array([1.0, 2.0, 3.0, 4.0]))
    _close(problem.jac(x), 2 * x)


# -- einderiv.fn with the language's tuple and string arguments -------------------------------

_X = np.arange(1.0, 6.0)
_A = np.arange(15.0).reshape(3, 5) / 10
_W = np.array([1.0, 2.0, 3.0])


@pytest.mark.parametrize("build, expected", [
    (lambda x, A, z, w: einderiv.fn.pad(x, (1, 2)), np.pad(_X, (1, 2))),
    (lambda x, A, z, w: einderiv.fn.transpose(A, (1, 0)), _A.T),
    (lambda x, A, z, w: einderiv.fn.concatenate((z, z), axis=0), np.concatenate((_X, _X))),
    (lambda x, A, z, w: einderiv.fn.reshape(A, (-1,)), _A.reshape(-1)),
    (lambda x, A, z, w: einderiv.fn.norm(A, "fro"), np.linalg.norm(_A)),
    (lambda x, A, z, w: einderiv.fn.correlate(x, w, mode="same"),
     np.correlate(_X, _W, mode="same")),
], ids=["pad", "transpose", "concatenate", "reshape", "norm-fro", "correlate-same"])
def test_fn_takes_the_tuple_and_string_arguments_of_the_language(build, expected):
    x, A = einderiv.var("x", ("n",)), einderiv.var("A", ("m", "n"))
    z, w = einderiv.var("z", (5,)), einderiv.var("w", (3,))
    expr = build(x, A, z, w)
    f = einderiv.compile(expr)
    arrays = {"x": _X, "A": _A, "z": _X, "w": _W}
    _close(f(**{name: arrays[name] for name in f.inputs}), expected)


@pytest.mark.parametrize("build, expected", [
    # axis=None is every axis, as in the text: softmax's default is the last axis
    (lambda A: einderiv.fn.softmax(A, axis=None), np.exp(_A) / np.exp(_A).sum()),
    (lambda A: einderiv.fn.norm(A, ord="fro"), np.linalg.norm(_A)),
    (lambda A: einderiv.fn.norm(A, ord=np.inf), np.linalg.norm(_A, np.inf)),
    (lambda A: einderiv.fn.norm(A, 1, axis=[1]), np.linalg.norm(_A, 1, axis=1)),
], ids=["softmax-axis-None", "norm-ord-fro", "norm-ord-inf", "norm-axis-list"])
def test_fn_keywords_take_what_the_text_takes(build, expected):
    f = einderiv.compile(build(einderiv.var("A", ("m", "n"))))
    _close(f(A=_A), expected)
    with pytest.raises(EinderivError, match="an axis must be an integer"):
        einderiv.fn.sum(einderiv.var("A", ("m", "n")), axis={0})
    with pytest.raises(EinderivError, match="stride= takes"):
        einderiv.fn.correlate(einderiv.var("x", ("n",)), einderiv.var("w", (3,)), stride=True)
