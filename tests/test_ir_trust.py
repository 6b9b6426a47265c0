"""The IR can be trusted: one node per structure under threads, constants folded as float64.

Issue 10, faults 6(a) and 10: threads that built the same new expression at once could each
create their own node (a gradient that never met its variable came out zero), and constants
were folded with Python floats (OverflowError, ZeroDivisionError, a complex power) where numpy
gives inf or nan.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import einderiv
from einderiv.api import lower_source
from einderiv.derive import derivatives
from einderiv.evaluate.plan import Plan
from einderiv.ir import build
from einderiv.ir.build import fold
from einderiv.ir.nodes import Const, Var
from einderiv.rulebook import default_rulebook

# -- 6(a): hash-consing under threads --------------------------------------------------------

THREADS, ROUNDS = 8, 250


def _build(r: int):
    """A program no earlier round built (its variables are new too), and its gradients."""
    x, y = f"x{r}", f"y{r}"
    lowered = lower_source(f"sum(tanh({x} * {r + 0.25}) * {y} + {x} * {x})",
                           {x: ("n",), y: ("n",)})
    grads = derivatives(lowered.root, [Var(x, ("n",)), Var(y, ("n",))], default_rulebook())
    return lowered.root, tuple(grads)


def test_threads_building_the_same_new_expression_share_its_nodes(run_threads):
    built = [[None] * ROUNDS for _ in range(THREADS)]
    failures: list = []
    start = threading.Barrier(THREADS)

    def work(k):
        try:
            for r in range(ROUNDS):
                start.wait()  # every thread builds round r at the same moment
                built[k][r] = _build(r)
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)
            start.abort()

    run_threads(*[(work, k) for k in range(THREADS)])
    assert not failures, failures

    x = np.linspace(-1.0, 1.0, 5)
    y = np.linspace(0.5, 2.0, 5)
    split = wrong = 0
    for r in range(ROUNDS):
        c = r + 0.25
        want = (c * (1 - np.tanh(c * x) ** 2) * y + 2 * x, np.tanh(c * x))
        root, grads = built[0][r]
        split += sum(b[0] is not root or any(g is not h for g, h in zip(b[1], grads))
                     for b in (built[k][r] for k in range(THREADS)))
        # Every distinct gradient object a thread got is evaluated (one, when none split).
        for g in {id(b[1]): b[1] for b in (built[k][r] for k in range(THREADS))}.values():
            shapes = {f"x{r}": ("n",), f"y{r}": ("n",)}  # a split gradient may use neither
            got = Plan(list(g), accepted=shapes)({f"x{r}": x, f"y{r}": y})
            wrong += not all(np.allclose(a, b) for a, b in zip(got, want))
    assert (split, wrong) == (0, 0), \
        f"{split} builds got nodes of their own, {wrong} gradients wrong, of {THREADS * ROUNDS}"


def test_nan_is_one_constant():
    assert Const(float("nan")) is Const(float("nan")) is Const(np.nan)
    assert Const(-0.0) is Const(0.0)


# -- 10: constants follow numpy float64 -------------------------------------------------------

def _float64(f):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "Mean of empty slice"
        return f()


def _all_ways(source: str, arrays: dict, wrt=None):
    """The generated code, the IR interpreter, and the printed formula compiled back."""
    made = einderiv.grad(source, wrt) if wrt else einderiv.compile(source)
    shapes = {name: tuple(d) for name, d in made.lowered.declared.items()}
    again = einderiv.compile(made.formula, shapes)
    return [made(**arrays), made.evaluate_ir(**arrays), again(**arrays)]


CONSTANTS = [
    # source, arrays, the value as numpy computes it
    ("x: [n]; sum(x) * 10 ** 400", {"x": np.ones(3)},
     lambda x: np.sum(x) * np.float64(10) ** 400),
    ("x: [n]; sum(x) * 10 ** 400", {"x": -np.ones(3)},
     lambda x: np.sum(x) * np.float64(10) ** 400),
    ("x: [n]; sum(x) * 10 ** 400", {"x": np.zeros(3)},  # 0 * inf
     lambda x: np.sum(x) * np.float64(10) ** 400),
    ("x: [n]; sum(x) * (0 * 10 ** 400)", {"x": np.ones(3)},
     lambda x: np.sum(x) * (0 * np.float64(10) ** 400)),
    ("x: [n]; x * (10 ** 400 - 10 ** 400)", {"x": np.ones(3)},
     lambda x: x * (np.float64(10) ** 400 - np.float64(10) ** 400)),
    ("x: [n]; zeros(n) * 10 ** 400 + x", {"x": np.ones(3)},
     lambda x: np.zeros(3) * np.float64(10) ** 400 + x),
    ("x: [n]; x * (-8) ** (1 / 3)", {"x": np.ones(3)},  # Python: a complex number
     lambda x: x * np.float64(-8) ** (1 / 3)),
    ("x: [n]; sum(x) + 1 / 0", {"x": np.ones(3)}, lambda x: np.sum(x) + np.float64(1) / 0),
    ("x: [n]; sum(x) + 0 / 0", {"x": np.ones(3)}, lambda x: np.sum(x) + np.float64(0) / 0),
    ("x: [n]; x * 0 ** -1", {"x": np.ones(3)}, lambda x: x * np.float64(0) ** -1),
    ("x: [n]; sum(x) + 1 / size(n)", {"x": np.ones(0)}, lambda x: np.sum(x) + 1 / np.float64(0)),
    ("x: [n]; sum(x) + 1 / size(n)", {"x": np.ones(4)}, lambda x: np.sum(x) + 1 / 4),
    ("x: [n]; sum(x * 2 ** size(n))", {"x": np.ones(2000)},  # Python: OverflowError
     lambda x: np.sum(x * np.float64(2) ** 2000)),
    ("x: [n]; mean(x)", {"x": np.ones(0)}, lambda x: np.mean(x)),
    ("x: [0]; mean(x)", {"x": np.ones(0)}, lambda x: np.mean(x)),
    ("X: [n, 3]; mean(X, axis=0)", {"X": np.ones((0, 3))}, lambda X: np.mean(X, axis=0)),
]


@pytest.mark.parametrize("source, arrays, numpy", CONSTANTS,
                         ids=[f"{c[0]} at {[a.shape for a in c[1].values()]}" for c in CONSTANTS])
def test_constants_are_float64(source, arrays, numpy):
    want = _float64(lambda: numpy(**arrays))
    for got in _float64(lambda: _all_ways(source, arrays)):
        np.testing.assert_array_equal(got, want)


def test_mean_of_nothing_has_an_empty_gradient():
    for source in ("x: [n]; mean(x)", "x: [0]; mean(x)"):
        for got in _float64(lambda: _all_ways(source, {"x": np.ones(0)}, "x")):
            assert np.shape(got) == (0,)
    for got in _all_ways("x: [n]; mean(x)", {"x": np.ones(4)}, "x"):
        np.testing.assert_array_equal(got, np.full(4, 0.25))
    # The size is a scalar of the inputs' dtype: it does not widen float32.
    for n in (0, 4):
        x = np.ones(n, np.float32)
        got = _float64(lambda: einderiv.compile("x: [n]; sum(x) + 1 / size(n)")(x=x))
        want = _float64(lambda: np.float32(n) + np.float32(1) / np.float32(n))
        assert got.dtype == np.float32 and got == want


def test_gradients_of_infinite_constants():
    for got in _float64(lambda: _all_ways("x: [n]; sum(x * 10 ** 400)", {"x": np.ones(3)}, "x")):
        np.testing.assert_array_equal(got, np.full(3, np.inf))
    for got in _float64(lambda: _all_ways("x: [n]; sum(x * x * (0 * 10 ** 400))",
                                          {"x": np.ones(3)}, "x")):
        np.testing.assert_array_equal(got, np.full(3, np.nan))


def test_zero_times_an_infinite_constant_is_nan_in_a_long_product():
    # Past the operands a product inlines, the infinite constant stays an operand of its own.
    x = Var("x", ("n",))
    infinite = build.broadcast_to(Const(np.inf), x.shape)
    for zero in (Const(0.0), build.zeros(x.shape)):
        node = build.contract((0,), [(x, (0,))] * 9 + [(infinite, (0,)), (zero, zero.rank * (0,))])
        got = _float64(lambda: Plan([node])({"x": np.full(3, 0.5)})[0])
        np.testing.assert_array_equal(got, np.full(3, np.nan))


def test_folding_warns_as_numpy_does():
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert fold("pow", 10.0, 400.0) == np.inf
    with pytest.warns(RuntimeWarning, match="divide by zero"):
        assert fold("div", -1.0, 0.0) == -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):  # the caller's choice holds while folding
            assert np.isnan(fold("div", 0.0, 0.0))
            einderiv.compile("x: [n]; sum(x) * 10 ** 400")
    with np.errstate(all="raise"):  # a constant is folded while building: a warning, no raise
        with pytest.warns(RuntimeWarning):
            assert fold("pow", 2.0, 5000.0) == np.inf
    assert fold("pow", 2.0, 10.0) == 1024.0 and fold("div", 1.0, 3.0) == 1 / 3
