"""Structural zeros stay exact zeros: the entries of a derivative that the delta algebra says
are zero (off a pick, off a stack of picks, outside a slice of a concatenation) are 0 whatever
the rest of the product is, also where that rest is infinite (1 / x at x = 0).

Each product of a 0/1 structure (unit vectors, windows, their stacks) with a value used to be
written as a product with a 0/1 matrix, so an infinite value made 0 * inf = nan over its whole
row or column. Now:

- the delta algebra contracts a unit vector with a window, and two windows, on a summed label
  (ir/deltas.py `contract_units`): to a unit vector, one window, a shifted diagonal, or exactly
  zero where they never meet (`concatenate((x, x))[:1]` against the second half);
- a stack of unit vectors on an output axis (a stack of picks, or lanes.py's rows out of order)
  places the rest by padding and concatenating, never by a product
  (vectorize/contraction.py `_unit_rows_on_output`);
- the IR interpreter masks a 0/1 pattern of unit vectors on the output (evaluate/plan.py).

The reference is the definition by hand, d f(x[p_k]) / dx_j = [j == p_k] f'(x[p_k]), and JAX
(float64) away from the pole. JAX's own jacrev and jacfwd give nan at some of these entries
(a cotangent or tangent 0 times 1 / x at x = 0), so at the pole the reference is by hand. Every
path is checked: the generated code, the IR interpreter, and the printed formula compiled back.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import einderiv

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

POLE = np.array([0.0, 1.0, 2.0, 0.5])  # log and sqrt have an infinite derivative at x[0]
AWAY = np.array([3.0, 1.0, 2.0, 0.5])

# (expression of x, the same in JAX, the entries of x each output entry reads: its row of
# the Jacobian is nonzero there only)
VECTOR = [
    ("log(stack((x[0], x[2])))", lambda x: jnp.log(jnp.stack((x[0], x[2]))), [[0], [2]]),
    ("log(stack((x[-1], x[0], x[-1])))",
     lambda x: jnp.log(jnp.stack((x[-1], x[0], x[-1]))), [[3], [0], [3]]),
    ("log(concatenate((x[:1], x[2:3], x[1:2])))",
     lambda x: jnp.log(jnp.concatenate((x[:1], x[2:3], x[1:2]))), [[0], [2], [1]]),
    ("log(concatenate((x, x))[:1])", lambda x: jnp.log(jnp.concatenate((x, x))[:1]), [[0]]),
    ("log(concatenate((x, x))[n:n+2])",
     lambda x: jnp.log(jnp.concatenate((x, x))[4:6]), [[0], [1]]),
    ("log(concatenate((x, x, x))[n+1:n+3])",
     lambda x: jnp.log(jnp.concatenate((x, x, x))[5:7]), [[1], [2]]),
    ("log(concatenate((x[:2], x))[1:3])",
     lambda x: jnp.log(jnp.concatenate((x[:2], x))[1:3]), [[1], [0]]),
    ("sqrt(stack((x[3], x[1], x[0])))",
     lambda x: jnp.sqrt(jnp.stack((x[3], x[1], x[0]))), [[3], [1], [0]]),
]
SHAPES = {"x": ("n",)}


def _paths(result, arrays, shapes) -> dict:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"generated": np.asarray(result(**arrays)),
                "ir": np.asarray(result.evaluate_ir(**arrays)),
                "formula": np.asarray(einderiv.compile(result.formula, shapes)(**arrays))}


def _by_hand(reads, x, derivative) -> np.ndarray:
    """The Jacobian of f(x[p]) stacked: row k has f'(x[p_k]) at p_k, exact zeros elsewhere."""
    jac = np.zeros((len(reads), x.size))
    with np.errstate(all="ignore"):
        for k, (p,) in enumerate(reads):
            jac[k, p] = derivative(x[p])
    return jac


def _derivative(src):
    return (lambda v: 0.5 / np.sqrt(v)) if src.startswith("sqrt") else (lambda v: 1.0 / v)


@pytest.mark.no_roundtrip  # (every path is checked here, at the pole too)
@pytest.mark.parametrize("src, jf, reads", VECTOR, ids=[c[0] for c in VECTOR])
def test_jacobian_of_picks_is_exact_at_the_pole(src, jf, reads):
    jac = einderiv.jacobian(src, "x", SHAPES)
    want = _by_hand(reads, POLE, _derivative(src))
    for path, value in _paths(jac, {"x": POLE}, SHAPES).items():
        np.testing.assert_array_equal(value, want, err_msg=path)
    away = jax.jit(jax.jacrev(jf))(AWAY)
    for path, value in _paths(jac, {"x": AWAY}, SHAPES).items():
        np.testing.assert_allclose(value, away, rtol=1e-12, err_msg=path)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("src, jf, reads", VECTOR, ids=[c[0] for c in VECTOR])
def test_gradient_of_picks_is_exact_at_the_pole(src, jf, reads):
    g = einderiv.grad(f"sum({src})", "x", SHAPES)
    want = _by_hand(reads, POLE, _derivative(src)).sum(axis=0)
    for path, value in _paths(g, {"x": POLE}, SHAPES).items():
        np.testing.assert_array_equal(value, want, err_msg=path)
    away = jax.jit(jax.grad(lambda x: jnp.sum(jf(x))))(AWAY)
    for path, value in _paths(g, {"x": AWAY}, SHAPES).items():
        np.testing.assert_allclose(value, away, rtol=1e-12, err_msg=path)


def test_slice_of_a_concatenation_inside_one_part_is_a_pad():
    # the part the slice does not reach contributes nothing: no product with a 0/1 matrix
    g = einderiv.grad("sum(log(concatenate((x, x))[:1]))", "x", SHAPES)
    assert "eye(" not in g.formula and "pad(" in g.formula, g.formula


def test_stacked_picks_place_rows_without_a_selection_matrix():
    jac = einderiv.jacobian("log(stack((x[0], x[2])))", "x", SHAPES)
    assert "eye(" not in jac.formula, jac.formula


# Rows read out of range order and more than once, as a recurrent program's steps do: the
# gradient is one concatenate of runs of rows, zeros and sums (contraction.rows_placed).
ROWS = [[0, 1, 3], [3, 1, 3, 4], [4, 2, 0], [1, 2, 3, 5, 0]]


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("rows", ROWS, ids=[str(r) for r in ROWS])
def test_rows_out_of_order_scatter_exactly(rows):
    n = 6
    src = " + ".join(f"sum(log(X[{k}]))" for k in rows)
    shapes = {"X": (n, 2)}
    g = einderiv.grad(src, "X", shapes)
    X = np.ones((n, 2)) + np.arange(2 * n).reshape(n, 2) / 10
    X[rows[0], 0] = 0.0  # an infinite cotangent in the first row read
    want = np.zeros((n, 2))
    with np.errstate(divide="ignore"):
        for k in rows:
            want[k] += 1 / X[k]
    for path, value in _paths(g, {"X": X}, shapes).items():
        np.testing.assert_array_equal(value, want, err_msg=path)
    assert "eye(" not in g.formula, g.formula


@pytest.mark.parametrize("rows", ROWS, ids=[str(r) for r in ROWS])
def test_rows_out_of_order_match_jax_in_a_recurrent_program(rows):
    # the rows feed a recurrence, so they are batched by lanes.py (a stack of unit vectors)
    n, h = 6, 3
    src = "h0 = tanh(W @ X[%d])\n" % rows[0]
    for t, k in enumerate(rows[1:], start=1):
        src += f"h{t} = tanh(W @ X[{k}] + U @ h{t - 1})\n"
    src += f"sum(h{len(rows) - 1} ** 2)"
    shapes = {"W": (h, 2), "U": (h, h), "X": (n, 2)}
    rng = np.random.default_rng(len(rows))
    a = {"W": rng.normal(size=(h, 2)), "U": rng.normal(size=(h, h)) / 2,
         "X": rng.normal(size=(n, 2))}

    def loss(W, U, X):
        s = jnp.tanh(W @ X[rows[0]])
        for k in rows[1:]:
            s = jnp.tanh(W @ X[k] + U @ s)
        return jnp.sum(s ** 2)
    g = einderiv.grad(src, ["W", "U", "X"], shapes)
    for got, want in zip(g(**a), jax.grad(loss, argnums=(0, 1, 2))(a["W"], a["U"], a["X"])):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# The Hessian of a sum over picks taken every k-th entry or from a slice, batched by lanes.py:
# S[k,i] * h[k] * S[k,j] is the diagonal of h placed by S (contraction._paired_selection),
# O(n) entries written, not selection matrices multiplied (O(steps n^2), nan beside a pole).
PAIRED = [(range(0, 12, 2), 12), (range(1, 12, 3), 12), (range(2, 9), 12), (range(0, 40, 2), 40)]


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("picks, n", PAIRED, ids=[f"{list(p)[:3]}..-{n}" for p, n in PAIRED])
def test_hessian_of_picked_entries_is_a_placed_diagonal(picks, n):
    src = " + ".join(f"log(x[{k}])" for k in picks)
    shapes = {"x": (n,)}
    h = einderiv.hessian(src, "x", shapes)
    x = np.linspace(0.5, 2.0, n)
    x[list(picks)[0]] = 0.0  # the pole: -inf on the diagonal, exact zeros beside it
    want = np.zeros((n, n))
    with np.errstate(divide="ignore"):
        for k in picks:
            want[k, k] = -1 / x[k] ** 2
    for path, value in _paths(h, {"x": x}, shapes).items():
        # (1 / x / x against 1 / x ** 2: rounding; zeros and the -inf exact, atol 0)
        np.testing.assert_allclose(value, want, rtol=1e-14, atol=0, err_msg=path)
    assert "eye(" not in h.formula and "diag(" in h.formula, h.formula
    away = np.linspace(0.5, 2.0, n)
    np.testing.assert_allclose(h(x=away), jax.jit(jax.hessian(
        lambda x: sum(jnp.log(x[k]) for k in picks)))(away), rtol=1e-12)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("steps", [3, 6])
def test_hessian_of_two_places_per_step_matches_jax(steps):
    # two different selections of the steps' entries, S1[k,i] r[k] S2[k,j]: diag(r) placed
    # by each on one axis (contraction._apart_selections), values as JAX's on every path
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(steps):
        term = einderiv.fn.exp(x[2 * t + 1]) * einderiv.fn.tanh(x[2 * t])
        total = term if total is None else total + term
    h = einderiv.hessian(total, x)
    v = np.linspace(0.5, 1.5, 2 * steps + 1)
    want = jax.jit(jax.hessian(lambda x: sum(jnp.exp(x[2 * t + 1]) * jnp.tanh(x[2 * t])
                                             for t in range(steps))))(v)
    for path, value in _paths(h, {"x": v}, {"x": ("n",)}).items():
        np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-14, err_msg=path)


@pytest.mark.parametrize("text, finite", [
    ("1 - softmax(x)", True),  # complement(softmax(x)): in [0, 1]
    ("softmax(x) - y", True),  # softmax_minus(x, y)
    ("log(1 - softmax(x))", False),  # log1m_softmax: -inf where one entry has all the mass
    ("log(sum(y * exp(x)))", False),  # logsumexp_weighted: -inf where the sum is 0
])
def test_which_new_primitives_are_finite_where_their_inputs_are(text, finite):
    # (complement and softmax_minus were missing, so programs using them took the pole paths)
    from einderiv.ir.deltas import finite_where_inputs_are
    f = einderiv.compile(text, {"x": ("n",), "y": ("n",)})
    assert finite_where_inputs_are(f.lowered.root) is finite, f.formula
