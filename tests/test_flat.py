"""`einderiv.flat` (issue 15, item 3): several parameters as one flat vector for
`scipy.optimize.minimize`, with no packing written by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

import einderiv
from einderiv import EinderivError, InputError, ShapeError, UnknownNameError
from einderiv.check import relative_error

# A two-layer network's loss with a matrix, a vector and a scalar parameter.
LOSS = "sum((tanh(X @ W) @ v + c - y) ** 2) / 2 + lam * (sum(W * W) + v @ v) / 2"
SHAPES = {"X": ("n", "d"), "W": ("d", "h"), "v": ("h",), "c": (), "y": ("n",), "lam": ()}


def _data(n=12, d=3, h=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=n)
    start = {"W": 0.5 * rng.normal(size=(d, h)), "v": 0.5 * rng.normal(size=h), "c": 0.1}
    return {"X": X, "y": y, "lam": 0.1}, start


def _close(a, b, tol=1e-10):
    assert relative_error(a, b) < tol, relative_error(a, b)


def test_the_layout_and_every_function_against_the_results_they_flatten():
    data, start = _data()
    problem = einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data, sizes={"h": 4})
    assert problem.size == 3 * 4 + 4 + 1
    assert problem.layout == {"W": (slice(0, 12), (3, 4)), "v": (slice(12, 16), (4,)),
                              "c": (slice(16, 17), ())}
    assert repr(problem) == "<einderiv.Flat over W [3, 4], v [4], c []: 17 entries>"
    x = problem.pack(**start)
    assert x.shape == (17,) and x.dtype == np.float64
    np.testing.assert_array_equal(x, np.concatenate([start["W"].ravel(), start["v"], [0.1]]))
    back = problem.unpack(x)
    assert list(back) == ["W", "v", "c"]
    for name in start:
        np.testing.assert_array_equal(back[name], start[name])

    fun, jac, hess, hessp = problem
    value, grads = einderiv.value_and_grad(LOSS, ["W", "v", "c"], SHAPES)(**data, **start)
    assert isinstance(fun(x), float)
    _close(fun(x), value)
    _close(jac(x), np.concatenate([np.ravel(g) for g in grads]))
    blocks = einderiv.hessian(LOSS, ["W", "v", "c"], SHAPES)(**data, **start)
    sizes = [12, 4, 1]
    H = np.block([[np.reshape(blocks[i][j], (sizes[i], sizes[j])) for j in range(3)]
                  for i in range(3)])
    _close(hess(x), H)
    _close(hess(x), hess(x).T)
    p = np.random.default_rng(1).normal(size=17)
    _close(hessp(x, p), H @ p)
    assert problem.hvp.kind == "hvp" and "hvp_W = " in problem.hvp.formula
    assert problem.hessian.kind == "hessian" and "out = " in problem.value_and_grad.formula


# Multinomial logistic regression with L2: strictly convex, one optimum for every method.
SOFTMAX = "-sum(Y * log_softmax(X @ W.T + b, axis=1)) + lam * (sum(W * W) + b @ b) / 2"
SOFTMAX_SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W": ("k", "d"), "b": ("k",), "lam": ()}


def test_newton_cg_with_hessp_reaches_the_optimum_of_the_full_hessian_and_of_bfgs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    Y = np.eye(4)[np.argmax(X @ rng.normal(size=(3, 4)) + rng.normal(size=(60, 4)), axis=1)]
    problem = einderiv.flat(SOFTMAX, ["W", "b"], SOFTMAX_SHAPES,
                            data={"X": X, "Y": Y, "lam": 0.5})
    fun, jac, hess, hessp = problem
    x0 = problem.pack(W=np.zeros((4, 3)), b=np.zeros(4))
    runs = {
        "hessp": minimize(fun, x0, jac=jac, hessp=hessp, method="Newton-CG",
                          options={"xtol": 1e-12}),
        "hess": minimize(fun, x0, jac=jac, hess=hess, method="Newton-CG",
                         options={"xtol": 1e-12}),
        "bfgs": minimize(fun, x0, jac=jac, method="BFGS", options={"gtol": 1e-9}),
    }
    for name, r in runs.items():
        assert np.linalg.norm(jac(r.x)) < 1e-7, (name, r.message)
        _close(r.x, runs["hess"].x, 1e-7)
    assert runs["hessp"].nhev > 0 and runs["hessp"].fun < fun(x0)
    # and the network of LOSS, not convex: Newton-CG with hessp reaches a stationary point
    data, start = _data(n=40)
    problem = einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data, sizes={"h": 4})
    r = minimize(problem.fun, problem.pack(**start), jac=problem.jac, hessp=problem.hessp,
                 method="Newton-CG", options={"xtol": 1e-12})
    assert np.linalg.norm(problem.jac(r.x)) < 1e-7 and r.fun < problem.fun(problem.pack(**start))


def test_a_result_brings_its_expression_and_wrt():
    data, start = _data()
    g = einderiv.grad(LOSS, ["W", "v", "c"], SHAPES)
    problem = einderiv.flat(g, data=data, sizes={"h": 4})
    assert problem.names == ["W", "v", "c"]
    x = problem.pack(**start)
    _close(problem.jac(x), np.concatenate([np.ravel(a) for a in g(**data, **start)]))
    compiled = einderiv.compile(LOSS, SHAPES)
    only_c = einderiv.flat(compiled, "c", data={**data, "W": start["W"], "v": start["v"]})
    assert only_c.size == 1
    _close(only_c.fun(np.array([0.1])), compiled(**data, **start))
    with pytest.raises(EinderivError, match="flat needs wrt"):
        einderiv.flat(compiled, data=data)
    with pytest.raises(EinderivError, match="takes the shapes it was made with"):
        einderiv.flat(g, shapes=SHAPES, data=data)


def test_sizes_from_integer_shapes_and_var_expressions():
    x = einderiv.var("x", (3,))
    problem = einderiv.flat(einderiv.fn.sum((x - 1.0) ** 4) + einderiv.fn.sum(x * x), "x")
    r = minimize(problem.fun, np.zeros(3), jac=problem.jac, hessp=problem.hessp,
                 method="Newton-CG", options={"xtol": 1e-12})
    assert np.linalg.norm(problem.jac(r.x)) < 1e-8
    # 4 (x - 1) ** 3 + 2 x = 0 has one real root, the same for each entry
    assert np.ptp(r.x) < 1e-8 and abs(4 * (r.x[0] - 1) ** 3 + 2 * r.x[0]) < 1e-8


def test_fun_and_jac_share_one_forward_pass_per_point():
    data, start = _data()
    problem = einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data, sizes={"h": 4})
    calls = []
    inner = problem._value_and_grad
    problem._value_and_grad = lambda **a: calls.append(1) or inner(**a)
    x = problem.pack(**start)
    problem.fun(x), problem.jac(x), problem.fun(x)
    assert len(calls) == 1
    x[0] += 1.0  # SciPy may move its vector in place: a new point
    value = problem.fun(x)
    assert len(calls) == 2
    _close(value, einderiv.compile(LOSS, SHAPES)(**data, **problem.unpack(x)))
    assert problem.jac(x) is not problem.jac(x)  # the caller owns each gradient


def test_bad_input_is_an_einderiv_error():
    data, start = _data()
    problem = einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data, sizes={"h": 4})
    with pytest.raises(InputError, match=r"x should be a 1-D vector of 17 entries \(W \[3, 4\], "
                                         r"v \[4\], c \[\]\), got shape \(16,\)"):
        problem.fun(np.zeros(16))
    with pytest.raises(InputError, match="1-D vector"):
        problem.jac(np.zeros((17, 1)))
    with pytest.raises(InputError, match="p should be a 1-D vector of 17"):
        problem.hessp(np.zeros(17), np.zeros(3))
    with pytest.raises(InputError, match="missing c"):
        problem.pack(W=start["W"], v=start["v"])
    with pytest.raises(InputError, match="not in wrt: X"):
        problem.pack(**start, X=data["X"])
    with pytest.raises(ShapeError, match=r"'v' should have shape \(4,\), got \(5,\)"):
        problem.pack(**{**start, "v": np.zeros(5)})
    with pytest.raises(UnknownNameError, match="'lamb'.*does not declare(?s:.*)'lam'"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data={**data, "lamb": 1.0},
                      sizes={"h": 4})
    with pytest.raises(InputError, match="'c' is in wrt and in data"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data={**data, "c": 1.0}, sizes={"h": 4})
    with pytest.raises(InputError, match="data has no array for y"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data={"X": data["X"], "lam": 0.1},
                      sizes={"h": 4})
    with pytest.raises(ShapeError, match="dimension 'h' of 'W' is not known(?s:.*)sizes"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data)
    with pytest.raises(ShapeError, match="sizes gives dimension 'd' as 5, but the arrays"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data=data, sizes={"h": 4, "d": 5})
    with pytest.raises(ShapeError, match="input 'y' should have shape"):
        einderiv.flat(LOSS, ["W", "v", "c"], SHAPES, data={**data, "y": np.zeros(5)},
                      sizes={"h": 4})
    with pytest.raises(ShapeError, match="flat needs a scalar output"):
        einderiv.flat("tanh(X @ W)", "W", SHAPES, data=data)
    with pytest.raises(EinderivError, match="twice"):
        einderiv.flat(LOSS, ["W", "W"], SHAPES, data=data, sizes={"h": 4})
