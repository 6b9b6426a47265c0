"""Breaker checks of the fused input projections (einderiv/vectorize/projections.py, b8b1237):
products of one shared operand by several input weights of one shape computed as one product of
the weights stacked, read by rows; and a pick of a pick printed as one index (dc476ce).

Each fault found is a test of the right value (finite differences), marked xfail(strict=True)
until it is fixed. conftest.py also checks every result called here against the IR interpreter
(which runs the unfused graph) and its printed formula parsed back.
"""
import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error


def _arrays(shapes, sizes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(size=tuple(sizes.get(d, d) for d in shape)) / 2).astype(dtype)
            for name, shape in shapes.items()}


def _check_grad(expr, shapes, sizes, seed=0):
    """The gradient of `expr` by every input, against central finite differences; its formula."""
    g = einderiv.grad(expr, list(shapes), shapes)
    arrays = _arrays(shapes, sizes, seed)
    f = einderiv.compile(expr, shapes)
    for name, value in zip(g.wrt, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name
    return g.formula


WEIGHTS = {"A": ("h", "v"), "B": ("h", "v"), "a": ("h",), "b": ("h",)}
SIZES = {"n": 6, "v": 3, "h": 4}


def test_a_weight_that_is_also_a_factor_of_the_shared_operand():
    # (X * A) @ A.T: A is the weight and a factor of the rows; it was fused as X @ A.T
    # (every operand that was the weight's node left out of the rows), dX 0.12 off. (Each
    # product's rows 0 and 1 stacked, so that fusing would pay.)
    shapes = {"X": ("h", "v"), **WEIGHTS}
    _check_grad("sum(((X * A) @ A.T)[0] * (X @ B.T)[1])", shapes, SIZES)
    _check_grad("sum(stack(((X * A) @ A.T)[0], (X @ B.T)[0]) * stack(((X * A) @ A.T)[1], "
                "(X @ B.T)[1]))", shapes, SIZES)


def test_a_bias_on_one_product_of_the_group_only():
    # The fused product has no bias (not every product has one), but the sum with a was
    # replaced by the bare product's part: da, dX and dB wrong (da 0.35 off).
    shapes = {"X": ("n", "v"), **WEIGHTS}
    _check_grad("sum((X @ A.T + a)[2] * (X @ B.T)[3])", shapes, SIZES)
    _check_grad("sum(tanh(stack((X @ A.T + a)[2], (X @ B.T)[2])))", shapes, SIZES)


def test_windows_far_apart_in_a_symbolic_length_are_not_fused():
    # X[:n-300] and X[300:]: one product of all n rows for each weight, where each asks for
    # n - 300. At n = 400, v = 8, h = 200 the gradient took 16.8 times as long (1000 rows,
    # 900 apart: 23 times).
    shapes = {"X": ("n", "v"), **WEIGHTS}
    formula = _check_grad("sum(tanh((X[:n-300] @ A.T + a)[0]) * tanh((X[300:] @ B.T + b)[0]))",
                          shapes, {**SIZES, "n": 303})
    assert "stack(A, B)" not in formula, formula


def test_windows_a_row_apart_in_a_symbolic_length_are_fused():
    # (each step's row of both gates stacked: a row of the fused product)
    shapes = {"X": ("n", "v"), **WEIGHTS}
    formula = _check_grad("sum(tanh(stack((X[:n-1] @ A.T + a)[2], (X[1:] @ B.T + b)[1])))",
                          shapes, SIZES)
    assert "reshape(X @ reshape(stack(A, B), (2 * h, v)).T" in formula, formula
    assert "stack((" not in formula and "stack(t" not in formula, formula


def test_products_whose_rows_are_never_stacked_are_not_fused():
    # Two products read by rows, never stacked: fusing them saves one product's call and
    # adds the stacks of weights and biases and three reshapes; the gradient was 1.03 to 1.05
    # times as long (n x v x h: 4x8x8, 16x8x16, 16x16x64), and 1.20 times at 400x200x400
    # with the rows of X[160:] computed from row 0 (1.25 times the rows asked for).
    shapes = {"X": ("n", "v"), **WEIGHTS}
    for expr in ("sum(tanh((X @ A.T + a)[0]) * tanh((X @ B.T + b)[1]))",
                 "sum(tanh((X @ A.T + a)[0]) * tanh((X[1:] @ B.T + b)[2]))"):
        formula = _check_grad(expr, shapes, SIZES)
        assert "stack(A, B)" not in formula, formula


# --- where the fused product pays ------------------------------------------------------------
#
# The fused product copies every weight of the group into a stack on every call (they are
# inputs): G * H * V entries, a large temporary beside the recurrent weights' stack. What it
# saves is (G - 1) products' calls and, in a recurrent net, the stack of the gates' rows along
# an inner axis (T * G * H entries). Measured same-process (gradient of einderiv.models'
# lstm_loss, one BLAS thread, V x H x T): 9x9x11 0.97x, 16x64x32 0.98x, 32x32x32 0.98x; but
# 100x100x8 1.05x, 128x128x8 1.06x (2.1x in another run), 1000x200x4 1.08x, 300x300x8 1.49x to
# 1.66x (2750 minor page faults a call against 1375: glibc returns the freed stacks to the
# system and maps them again on the next call).

def _lstm_formula(steps, sizes):
    from einderiv.models import lstm_loss
    loss, weights = lstm_loss(steps)
    return einderiv.grad(loss, weights, sizes=sizes).formula


def test_weights_wider_than_the_rows_are_not_stacked_at_known_sizes():
    # V = 300 columns per weight against 4 rows: the copy is 75 times the rows it saves.
    assert "stack(Uc" not in _lstm_formula(4, {"H": 300, "V": 300})
    assert "stack(Uc" not in _lstm_formula(4, {"H": 4, "V": 5})


def test_weights_no_wider_than_the_rows_are_stacked_at_known_sizes():
    assert _lstm_formula(4, {"H": 300, "V": 4}).count("stack(Uc, Uf, Ui, Uo)") == 1


# With symbolic sizes the pass cannot tell how large the weights are: it fuses at any size, and
# the generated code's kernels.stacked_product decides at the call. A stack of large weights
# copies them on every call (at V = H = 300, 8 steps, the gradient was 1.5 to 1.66 times the
# unfused one in a fresh process, whose allocator maps a freed large array out and in again:
# 2750 minor page faults a call against 1375); there each weight is multiplied on its own.

@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("rows, k, h, stacked", [
    (11, 9, 9, True),  # small weights: one product of the stack
    (8, 300, 300, False),  # large weights, few rows: a product per weight
    (400, 300, 300, True),  # large weights, more rows than a weight's columns
    (1, 300, 300, False),  # a vector
    (8, 300, 20, False),
])
def test_stacked_products_stack_only_small_weights_or_many_rows(monkeypatch, rows, k, h,
                                                                stacked, transposed):
    from einderiv.evaluate import kernels
    rng = np.random.default_rng(0)
    a = rng.normal(size=(rows, k) if rows > 1 else (k,))
    weights = [rng.normal(size=(h, k) if transposed else (k, h)) for _ in range(4)]
    want = a @ (np.concatenate(weights).T if transposed else np.concatenate(weights, axis=1))
    made = []
    real = kernels.stack
    monkeypatch.setattr(kernels, "stack", lambda *args, **kw: made.append(1) or real(*args, **kw))
    shape = (4 * h, k) if transposed else (k, 4 * h)
    got = kernels.stacked_product(a, weights, shape, np, transposed=transposed)
    assert bool(made) == stacked
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_an_lstm_with_symbolic_sizes_multiplies_large_weights_one_by_one():
    from einderiv.models import lstm_loss
    loss, weights = lstm_loss(4)
    g = einderiv.grad(loss, weights)
    assert "_kernels.stacked_product(" in g.source  # (the sizes are names: decided per call)
    rng = np.random.default_rng(0)
    shapes = {"W": (40, 40), "U": (40, 200), "b": (40,), "Wy": (200, 40), "by": (200,)}
    arrays = {w: rng.normal(size=shapes[w if w in shapes else w[0]]) / 20 for w in weights}
    arrays.update(X=np.eye(200)[rng.integers(0, 200, 4)], Y=np.eye(200)[rng.integers(0, 200, 4)])
    for got, want in zip(g(**arrays), g.evaluate_ir(**arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
