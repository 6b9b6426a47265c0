"""Steps that read every k-th row of an array (`X[2 * t]`), or rows picked one by one out of
range order (`X[0]`, `X[1]`, `X[4]`), batched across steps (vectorize/lanes.py) and summed over
steps (vectorize/program.py).

Before: a stack of the steps' unit vectors, a lanes x n selection matrix built entry by entry
(`stack(eye(12)[0], eye(12)[2], ...)`), multiplied with X: the gradient of 200 steps reading
X[2 * t] took 3.1 ms against 22 us for X[t], and grew with the square of the steps; the forward
steps were not batched at all. Now: a strided view, `X[:11:2]`, or a stack of the rows
themselves, `stack(X[0], X[1], X[2], X[4])`. Values are checked against hand-written numpy,
finite differences, and (conftest.py) the IR interpreter and the formula parsed back.
"""
import re

import numpy as np
import pytest

import einderiv
from einderiv import fn, var
from einderiv.check import finite_difference, relative_error

H, V = 3, 4


def _arrays(n, seed=0, recurrent=False):
    rng = np.random.default_rng(seed)
    a = {"W": rng.normal(size=(H, V)), "X": rng.normal(size=(n, V)), "u": rng.normal(size=H)}
    if recurrent:
        a["R"] = rng.normal(size=(H, H)) / 2
    return a


def _feedforward(rows):
    return " + ".join(f"sum(tanh(W @ X[{k}] + u))" for k in rows)


def _feedforward_grad(a, rows):
    """d/dW and d/du of sum_k sum(tanh(W @ X[k] + u)), by hand."""
    dW, du = np.zeros((H, V)), np.zeros(H)
    for k in rows:
        s = 1 / np.cosh(a["W"] @ a["X"][k] + a["u"]) ** 2
        dW += np.outer(s, a["X"][k])
        du += s
    return dW, du


def _selection_matrix(formula: str) -> bool:
    return "eye(" in formula or "arange(" in formula


@pytest.mark.parametrize("rows, view", [
    ([2 * k for k in range(6)], "X[:11:2]"),
    ([1 + 3 * k for k in range(4)], "X[1:11:3]"),
    ([2 * k for k in range(6)][::-1], "X[:11:2]"),  # summed in any order
    ([5 + 2 * k for k in range(4)], "X[5::2]"),  # up to the last row
])
def test_every_kth_row_is_a_strided_view(rows, view):
    n = 12
    g = einderiv.grad(_feedforward(rows), ["W", "u"], {"W": (H, V), "X": (n, V), "u": (H,)})
    assert f"t0 = {view}" in g.formula
    assert not _selection_matrix(g.formula), g.formula
    assert len(re.findall(r"sech2\(", g.formula)) == 1  # the steps batched: one call
    a = _arrays(n)
    for got, want in zip(g(**a), _feedforward_grad(a, rows)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rows", [[0, 1, 2, 4], [2, 0, 1, 4], [5, 3, 0, 9, 1]])
def test_rows_out_of_range_order_are_a_stack_of_the_rows(rows):
    n = 12
    g = einderiv.grad(_feedforward(rows), ["W", "u"], {"W": (H, V), "X": (n, V), "u": (H,)})
    picked = ", ".join(f"X[{k}]" for k in sorted(rows))
    assert f"t0 = stack({picked})" in g.formula
    assert not _selection_matrix(g.formula), g.formula
    assert len(re.findall(r"sech2\(", g.formula)) == 1
    a = _arrays(n)
    for got, want in zip(g(**a), _feedforward_grad(a, rows)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_every_kth_column():
    n = 12
    src = " + ".join(f"sum(tanh(W @ X[:, {2 * k + 1}] + u))" for k in range(5))
    g = einderiv.grad(src, ["W", "u"], {"W": (H, V), "X": (V, n), "u": (H,)})
    assert "X[:, 1:10:2]" in g.formula and not _selection_matrix(g.formula), g.formula
    a = _arrays(n)
    a["X"] = a["X"].T.copy()
    rows = [2 * k + 1 for k in range(5)]
    for got, want in zip(g(**a), _feedforward_grad({**a, "X": a["X"].T}, rows)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_the_code_grows_linearly_with_the_steps():
    # 200 steps of X[2 * t]: the same few lines as 20 steps (a selection matrix of 200 unit
    # vectors was 34 KB of source and O(steps^2) work)
    sources = []
    for steps in (20, 200):
        g = einderiv.grad(_feedforward([2 * k for k in range(steps)]), ["W", "u"],
                          {"W": (H, V), "X": (2 * steps, V), "u": (H,)})
        assert not _selection_matrix(g.formula)
        sources.append(g.source)
        a = _arrays(2 * steps, seed=1)
        for got, want in zip(g(**a), _feedforward_grad(a, range(0, 2 * steps, 2))):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    assert len(sources[1]) < len(sources[0]) + 40, sources[1]


@pytest.mark.parametrize("rows", [[0, 2, 4], [1, 4, 7], [0, 2, 4, 6, 8], [8, 6, 4, 2, 0],
                                  [2, 0, 1, 4], [0, 3, 1, 4, 2]])
def test_a_recurrence_over_rows_in_any_order(rows):
    W, X, u, R = var("W", (H, V)), var("X", (9, V)), var("u", (H,)), var("R", (H, H))
    h, loss = None, 0
    for k in rows:
        z = W @ X[k] + u
        h = fn.tanh(z if h is None else R @ h + z)
        loss = loss + fn.sum(h ** 2)
    g = einderiv.grad(loss, ["W", "u", "R"])
    f = einderiv.compile(loss, {})
    a = _arrays(9, seed=2, recurrent=True)
    for name, got in zip(["W", "u", "R"], g(**a)):
        assert relative_error(got, finite_difference(f, a, name)) < 1e-7, name
    if rows in ([0, 2, 4], [1, 4, 7]):  # every k-th row: one view, read forward and back
        start, step = rows[0], rows[1] - rows[0]
        assert f"t0 = X[{start or ''}:{rows[-1] + 1}:{step}]\n" in g.formula
        assert "stack(X" not in g.formula and not _selection_matrix(g.formula), g.formula


def test_every_other_row_of_an_lstm():
    from einderiv.models import GATES
    T = 5
    p = {}
    for gate in GATES:
        p["W" + gate] = var("W" + gate, (H, H))
        p["U" + gate] = var("U" + gate, (H, V))
        p["b" + gate] = var("b" + gate, (H,))
    X = var("X", (2 * T, V))
    h = c = None
    loss = 0
    for t in range(T):
        def gate(g, act):
            z = p["U" + g] @ X[2 * t] + p["b" + g]
            return act(z if h is None else p["W" + g] @ h + z)
        f, i, o, cc = (gate("f", fn.sigmoid), gate("i", fn.sigmoid), gate("o", fn.sigmoid),
                       gate("c", fn.tanh))
        c = i * cc if c is None else f * c + i * cc
        h = o * fn.tanh(c)
        loss = loss + fn.sum(h ** 2)
    wrt = sorted(p)
    g = einderiv.grad(loss, wrt)
    assert not _selection_matrix(g.formula), g.formula
    rng = np.random.default_rng(3)
    a = {name: rng.normal(size=v.shape) / 2 for name, v in p.items()}
    a["X"] = rng.normal(size=(2 * T, V))
    f = einderiv.compile(loss, {})
    for name, got in zip(wrt, g(**a)):
        assert relative_error(got, finite_difference(f, a, name)) < 1e-7, name
