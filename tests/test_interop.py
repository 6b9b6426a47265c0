"""Results as JAX, multiprocessing and dask users hand them around (issue 15, items 2 and 4).

- Calls: positional arrays in the order the expression declares its variables (`.inputs`),
  mixed with keywords; `wrt` as `einderiv.var` objects; names that are Python keywords.
- `einderiv.var` expressions: `x.sum()`, `x.mean()`, `x.shape`, `abs(x)`, LaTeX in a notebook.
- Pickling: every result pickles, cloudpickles and deep-copies, rebuilt from its source, shapes,
  wrt, options and rule book (as text), and travels to a process pool and a dask cluster.
"""
from __future__ import annotations

import copy
import keyword
import multiprocessing
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einderiv
from einderiv import InputError, ShapeError, api, fn
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import parse_rules, using_rules
from einderiv.symbolic import program_text

LOSS = "sum(log(1 + exp(-y * (X @ w))))"
SHAPES = {"X": ("n", "d"), "y": ("n",), "w": ("d",)}


def _data(seed=0, n=6, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), np.sign(rng.normal(size=n)), rng.normal(size=d)


def _loss_gradient(X, y, w):
    return -X.T @ (y / (1 + np.exp(y * (X @ w))))


def _same(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


# -- calls -------------------------------------------------------------------------------------

def test_positional_arrays_bind_in_declaration_order():
    X, y, w = _data()
    g = einderiv.grad(LOSS, "w", SHAPES)
    assert list(g.inputs) == ["X", "y", "w"]  # the order of `shapes`
    expected = _loss_gradient(X, y, w)
    for value in (g(X, y, w), g(X, y, w=w), g(X, w=w, y=y), g(w=w, X=X, y=y),
                  g.evaluate_ir(X, y, w)):
        np.testing.assert_allclose(value, expected, rtol=1e-12)
    # another declaration order is another positional order
    f = einderiv.compile("sum(a * b ** 2)", {"b": ("n",), "a": ("n",)})
    assert list(f.inputs) == ["b", "a"]
    assert float(f(np.array([3.0]), np.array([2.0]))) == 18.0


def test_inline_declarations_give_the_order():
    f = einderiv.compile("b: [n]\na: [n]\nsum(a - b)")
    assert list(f.inputs) == ["b", "a"]
    assert float(f(np.ones(2), np.zeros(2))) == -2.0


def test_var_expressions_declare_in_the_order_the_vars_were_made():
    """`einderiv.var` is the declaration: the order of the calls, not of appearance."""
    x = einderiv.var("x", ("h",))
    W = einderiv.var("W", ("h", "h"))
    g = einderiv.grad(fn.sum(fn.tanh(W @ x)), "x")
    assert list(g.inputs) == ["x", "W"]
    Wv, xv = np.arange(4.0).reshape(2, 2) / 4, np.array([0.5, -1.0])
    np.testing.assert_allclose(g(xv, Wv), Wv.T @ (1 - np.tanh(Wv @ xv) ** 2), rtol=1e-12)
    a, b = einderiv.var("a", ("n",)), einderiv.var("b", ("n",))  # same shape: order matters
    f = einderiv.compile(fn.sum(b * fn.exp(a)))
    assert list(f.inputs) == ["a", "b"]
    assert float(f(np.zeros(1), np.array([2.0]))) == 2.0
    assert list(pickle.loads(pickle.dumps(f)).inputs) == ["a", "b"]
    assert list(copy.deepcopy(fn.sum(b * fn.exp(a))).declarations) == ["a", "b"]


def test_an_unused_variable_keeps_its_position():
    """The Hessian of x @ A @ x does not read x (`.inputs` leaves it out), yet a call with
    every array in order, as `jax.hessian(f)(x, A)`, works."""
    H = einderiv.hessian("x @ A @ x", "x", {"x": ("n",), "A": ("n", "n")})
    A = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert list(H.inputs) == ["A"]
    np.testing.assert_allclose(H(np.zeros(2), A), A + A.T)
    np.testing.assert_allclose(H(A=A), A + A.T)


def test_positional_mistakes_are_input_errors():
    X, y, w = _data()
    g = einderiv.grad(LOSS, "w", SHAPES)
    with pytest.raises(InputError, match="4 positional arrays, but the expression has 3 "
                                         "variables: X, y, w"):
        g(X, y, w, w)
    with pytest.raises(InputError, match="input 'y' is given twice: as positional array 2"):
        g(X, y, y=y, w=w)
    with pytest.raises(InputError, match="missing input 'w'"):
        g(X, y)


def test_value_and_grad_and_a_list_of_wrt_take_positional_arrays():
    X, y, w = _data(1)
    vg = einderiv.value_and_grad(LOSS, ["w", "X"], SHAPES)
    value, (dw, dX) = vg(X, y, w)
    assert np.isclose(value, np.sum(np.log1p(np.exp(-y * (X @ w)))))
    np.testing.assert_allclose(dw, _loss_gradient(X, y, w), rtol=1e-12)
    assert dX.shape == X.shape


@pytest.mark.parametrize("name", sorted({"self", "lambda", "class", "def", "True", "False",
                                         "args", "arrays", "kwargs", "_evaluate", "inputs"}
                                        | set(keyword.kwlist) - {"None"}))
def test_a_variable_named_like_a_python_keyword(name):
    x = np.array([1.0, 2.0])
    g = einderiv.grad(f"sum({name} * {name} * c)", name, {name: ("n",), "c": ()})
    for value in (g(**{name: x, "c": 3.0}), g(x, 3.0), g(x, c=3.0),
                  g.evaluate_ir(**{name: x, "c": 3.0})):
        np.testing.assert_allclose(value, 6 * x)
    v = einderiv.var(name, ("n",))
    h = einderiv.grad((v * v).sum(), v)
    np.testing.assert_allclose(h(**{name: x}), 2 * x)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(h))(x), 2 * x)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda name: name not in ("None", "c")))
def test_any_name_of_the_grammar_works_by_keyword_and_position(name):
    x = np.array([1.0, 2.0])
    g = einderiv.grad(f"sum({name} * {name} * c)", name, {name: ("n",), "c": ()})
    for value in (g(**{name: x, "c": 3.0}), g(x, 3.0), pickle.loads(pickle.dumps(g))(x, 3.0)):
        np.testing.assert_allclose(value, 6 * x)


def test_wrt_as_vars_and_names_mixed():
    X = einderiv.var("X", ("n", "d"))
    y = einderiv.var("y", ("n",))
    w = einderiv.var("w", ("d",))
    loss = fn.sum(fn.log(1 + fn.exp(-y * (X @ w))))
    Xv, yv, wv = _data(2)
    by_var = einderiv.grad(loss, w)(Xv, yv, wv)
    np.testing.assert_allclose(by_var, _loss_gradient(Xv, yv, wv), rtol=1e-12)
    dw, dX = einderiv.grad(loss, [w, "X"])(Xv, yv, wv)
    np.testing.assert_allclose(dw, by_var)
    H = einderiv.hessian(loss, (w, w))(Xv, yv, wv)
    assert H[0][1].shape == (3, 3)
    # a string expression with a var as wrt
    np.testing.assert_allclose(einderiv.jacobian("X @ w", w, SHAPES)(Xv, yv, wv), Xv)


def test_wrt_var_with_another_shape_or_an_expression_is_an_error():
    x = einderiv.var("x", ("n",))
    with pytest.raises(ShapeError, match="wrt: the variable 'x' has shape \\[m\\], but the "
                                         "expression declares it \\[n\\]"):
        einderiv.grad(fn.sum(x * x), einderiv.var("x", ("m",)))
    with pytest.raises(einderiv.EinderivError, match="wrt takes variables, got the "
                                                     "expression x \\+ 1"):
        einderiv.grad(fn.sum(x * x), x + 1)
    with pytest.raises(einderiv.EinderivError, match="empty list"):
        einderiv.grad(fn.sum(x * x), [])


# -- einderiv.var expressions --------------------------------------------------------------------

def test_var_methods_sum_mean_shape_abs():
    X = einderiv.var("X", ("n", 3))
    Xv = np.arange(6.0).reshape(2, 3) - 2.5
    assert X.shape == ("n", 3)
    assert (X @ X.T).shape == ("n", "n")
    assert X[1:].shape == ("n-1", 3)
    assert X.sum(axis=0).shape == (3,) and X.sum().shape == ()
    for expr, expected in [(X.sum(), Xv.sum()), (X.sum(axis=1), Xv.sum(axis=1)),
                           (X.mean(axis=0), Xv.mean(axis=0)), (abs(X).sum(), np.abs(Xv).sum())]:
        np.testing.assert_allclose(einderiv.compile(expr)(Xv), expected)
    np.testing.assert_allclose(einderiv.grad(abs(X).sum(), X)(Xv), np.sign(Xv))
    # a dimension read from .shape is a dimension name for the functions that take one
    np.testing.assert_allclose(einderiv.compile(X.T @ fn.ones(X.shape[0]))(Xv), Xv.sum(axis=0))


def test_var_comparisons_and_floor_division_are_the_languages():
    x = einderiv.var("x", ("n",))
    y = einderiv.var("y", ("n",))
    xv, yv = np.array([-1.5, 0.0, 1.0, 2.5]), np.array([1.0, 0.0, -1.0, 2.5])
    cases = [(x > 0, xv > 0), (0 < x, 0 < xv), (x <= y, xv <= yv), (x >= 1, xv >= 1),
             (x < y, xv < yv), (x == y, xv == yv), (x != 0, xv != 0),
             (np.float64(0.5) < x, 0.5 < xv), (x // 2, xv // 2), (7 // (x + 3), 7 // (xv + 3))]
    for expr, expected in cases:
        f = einderiv.compile(expr)
        value = f(x=xv, y=yv) if "y" in f.inputs else f(xv)
        np.testing.assert_array_equal(value, expected)
    assert repr(x > 0) == "x > 0" and repr(0 < x) == "x > 0"
    # a mask in a loss: the ReLU's gradient
    np.testing.assert_array_equal(einderiv.grad(fn.sum((x > 0) * x), x)(xv), [0, 0, 1, 1])
    # `==` with what is neither a tensor nor a number is Python's identity; a tensor hashes
    assert (x == None) is False and (x != "x") is True  # noqa: E711
    assert x in [x] and {x: 1}[x] == 1
    with pytest.raises(einderiv.EinderivError, match="no truth value"):
        bool(x == y)


def test_latex_in_a_notebook():
    x = einderiv.var("x", ("n",))
    shown = (fn.exp(x) * 2)._repr_latex_()
    assert shown.startswith("$$") and shown.endswith("$$") and "x" in shown
    assert einderiv.compile(fn.exp(x) * 2)._repr_latex_() == shown
    for result in (einderiv.grad(fn.sum(x * x), x), einderiv.hessian(fn.sum(x ** 3), "x"),
                   einderiv.value_and_grad(fn.sum(x * x), "x"),
                   einderiv.jacobian(fn.exp(x), "x")):
        text = result._repr_latex_()
        assert text.startswith("$$") and text.endswith("$$") and result.latex in text


def test_latex_of_an_expression_that_does_not_compile_is_none():
    x = einderiv.var("x", ("n",))
    y = einderiv.var("y", ("m",))
    assert (x + y)._repr_latex_() is None  # the notebook shows the repr instead


# -- pickling ----------------------------------------------------------------------------------

def _var_loss():
    X, y, w = (einderiv.var(n, s) for n, s in SHAPES.items())
    return fn.sum(fn.log(1 + fn.exp(-y * (X @ w)))), w


RESULTS = {
    "compile": lambda: einderiv.compile(LOSS, SHAPES),
    "grad": lambda: einderiv.grad(LOSS, "w", SHAPES),
    "grad list": lambda: einderiv.grad(LOSS, ["w", "X", "w"], SHAPES),
    "jacobian": lambda: einderiv.jacobian("tanh(X @ w)", "w", SHAPES),
    "hessian": lambda: einderiv.hessian(LOSS, ["w", "y"], SHAPES),
    "value_and_grad": lambda: einderiv.value_and_grad(LOSS, "w", SHAPES),
    "var": lambda: einderiv.grad(*_var_loss()),
    "var hessian": lambda: einderiv.hessian(_var_loss()[0], [_var_loss()[1], "y"]),
    "inline": lambda: einderiv.grad("X: [n, d]\ny: [n]\nw: [d]\n" + LOSS, "w"),
}


@pytest.mark.parametrize("kind", list(RESULTS))
@pytest.mark.parametrize("how", ["pickle", "cloudpickle", "deepcopy", "copy"])
def test_every_result_pickles_and_copies(kind, how):
    result = RESULTS[kind]()
    if how == "cloudpickle":
        cloudpickle = pytest.importorskip("cloudpickle")
        again = cloudpickle.loads(cloudpickle.dumps(result))
    elif how == "pickle":
        again = pickle.loads(pickle.dumps(result))
    else:
        again = getattr(copy, how)(result)
    assert type(again) is type(result) and again is not result
    assert again.formula == result.formula
    assert list(again.inputs) == list(result.inputs)
    assert getattr(again, "wrt", None) == getattr(result, "wrt", None)
    X, y, w = _data(3)
    _same(again(X, y, w), result(X, y, w))
    assert pickle.loads(pickle.dumps(again)).formula == result.formula  # and again


def test_the_backend_travels_with_the_result():
    pytest.importorskip("dask.array")
    g = einderiv.grad(LOSS, "w", SHAPES, backend="dask")
    again = pickle.loads(pickle.dumps(g))
    assert again.backend == "dask"
    X, y, w = _data(4)
    np.testing.assert_allclose(np.asarray(again(X, y, w)), _loss_gradient(X, y, w), rtol=1e-12)


def test_the_pickle_holds_the_call_not_the_ir():
    g = einderiv.grad(LOSS, "w", SHAPES)
    g(*_data())  # built: program, module, function, plans
    text = pickle.dumps(g)
    for internal in (b"einderiv.ir", b"Contract", b"GeneratedFunction", b"RLock"):
        assert internal not in text
    assert LOSS.encode() in text


def test_shapes_changed_after_the_call_do_not_change_the_pickle():
    shapes = {"x": ["n"]}
    g = einderiv.grad("sum(x * x)", "x", shapes)
    shapes["x"].append("m")
    shapes["z"] = ("n",)
    again = pickle.loads(pickle.dumps(g))
    assert list(again.inputs) == ["x"]
    np.testing.assert_allclose(again(np.array([1.0, 2.0])), [2.0, 4.0])


def test_a_result_made_without_a_public_call_says_so():
    f = api.Compiled(api.lower_source("x * 2", {"x": ()}))
    with pytest.raises(einderiv.EinderivError, match="not made by a public function"):
        pickle.dumps(f)
    with pytest.raises(einderiv.EinderivError, match="not made by a public function"):
        copy.deepcopy(f)


def test_var_expressions_pickle_as_text_linear_in_their_nodes():
    """A Python-built expression shares subtrees (a residual step uses h twice) and can be
    deep: its text names each shared or deep part once, so 30 residual steps are 30
    statements, not 2 ** 30 copies, and 3,000 nested steps stay within the parser's limits."""
    x = einderiv.var("x", ("n",))
    h = x
    for _ in range(30):
        h = h + fn.tanh(h) * 0.5
    text = program_text(h.node)
    assert text.count("\n") == 29 and len(text) < 1200
    again = pickle.loads(pickle.dumps(h))
    assert again.declarations == h.declarations
    g, g_again = einderiv.grad(fn.sum(h), x), einderiv.grad(fn.sum(again), x)
    assert g_again.formula == g.formula
    xv = np.linspace(-1, 1, 4)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(g))(xv), g(xv), rtol=1e-13)

    deep = x
    for _ in range(3000):
        deep = fn.sin(deep) * 0.5 + x
    again = copy.deepcopy(deep)
    assert program_text(again.node) == program_text(deep.node)  # the same tree
    assert again.node is not deep.node and again.declarations == deep.declarations


def _cube_rules():
    book = default_rulebook().copy()
    return book.add(parse_rules("def cube(x) = x * x * x\n", "mine.rules"))


def test_the_rule_book_travels_as_text():
    with using_rules(_cube_rules()):
        g = einderiv.grad("sum(cube(x))", "x", {"x": ("n",)})
    text = pickle.dumps(g)
    assert b"def cube(x) = x * x * x" in text
    again = pickle.loads(text)  # made again outside the block, where cube is unknown
    assert again.rules.get("cube").origin == "mine.rules:1"
    np.testing.assert_allclose(again(np.array([1.0, 2.0])), [3.0, 12.0])
    with pytest.raises(einderiv.UnknownNameError):
        einderiv.grad("sum(cube(x))", "x", {"x": ("n",)})


def test_shipped_rules_are_shared_on_load():
    g = einderiv.grad("sum(x * x)", "x", {"x": ("n",)})
    assert pickle.loads(pickle.dumps(g)).rules is g.rules


# Worker functions of the pools: module-level, so that spawned processes import them.
def _call(args):
    result, arrays = args
    return result(*arrays)


@pytest.mark.parametrize("context", [None, "spawn"])
def test_a_gradient_in_a_process_pool(context):
    g = einderiv.grad(LOSS, "w", SHAPES)
    with using_rules(_cube_rules()):
        cubed = einderiv.grad("sum(cube(x))", "x", {"x": ("n",)})
    inputs = [_data(seed) for seed in range(4)]
    jobs = [(g, arrays) for arrays in inputs] + [(cubed, (np.array([1.0, -2.0]),))]
    pool_of = multiprocessing.get_context(context).Pool
    with pool_of(1 if context == "spawn" else 2) as pool:
        values = pool.map_async(_call, jobs).get(timeout=120)
    for arrays, value in zip(inputs, values):
        np.testing.assert_allclose(value, g(*arrays), rtol=1e-13)
        np.testing.assert_allclose(value, _loss_gradient(*arrays), rtol=1e-12)
    np.testing.assert_allclose(values[-1], [3.0, 12.0])


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.array")
    # One worker process: the task graph is pickled to it, as on a real cluster.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def test_a_gradient_on_a_dask_cluster(dask_client):
    g = einderiv.grad(LOSS, "w", SHAPES)
    inputs = [_data(seed) for seed in range(3)]
    futures = [dask_client.submit(g, *arrays) for arrays in inputs]
    for arrays, value in zip(inputs, dask_client.gather(futures)):
        np.testing.assert_allclose(value, g(*arrays), rtol=1e-13)


def test_a_gradient_per_block_with_map_blocks_on_a_cluster(dask_client):
    """The loss is a sum over rows, so its gradient is the sum of the blocks' gradients."""
    import dask.array as da
    X, y, w = _data(5, n=40, d=3)
    g = einderiv.grad(LOSS, "w", SHAPES)
    Xy = da.from_array(np.column_stack([X, y]), chunks=(10, 4))

    def block(Xy):
        return g(Xy[:, :-1], Xy[:, -1], w)[None, :]
    per_block = Xy.map_blocks(block, chunks=(1, 3), dtype=float)
    total = per_block.sum(axis=0).compute(scheduler=dask_client.get)
    np.testing.assert_allclose(total, _loss_gradient(X, y, w), rtol=1e-12)
