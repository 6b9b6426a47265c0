"""Breaker s27 on c52f3bc (the change was uncommitted when this began; "before" below is its
parent 559fee9): UNROLLED sums of per-step products of picks (ir/build.py
`_window_pair`/`_window_row`/`_factor_common`, ir/deltas.py `is_window`,
vectorize/contraction.py `_scatter`/`_scatter_one`, vectorize/lanes.py
`_progressions`/`_even`/`MAX_INTERLEAVED`), built as Python loops of `einderiv.var` picks.
References: JAX (float64) on the same function written in jax.numpy, or the derivative by hand
at poles (an entry no step reaches is an exact 0); never einderiv itself. Every path is read:
generated code, `evaluate_ir`, and the printed formula compiled back.

Attacked: strides 1-4 and offsets per pick, picks in the other order, decreasing and
reversed places (x[2(T-1-t)+1]), permuted steps, negative picks (x[-1-2t]), overlapping
picks between steps (x[t] x[t+1] x[t+2], x[2t] x[2t+1] x[2t+2]), the same place twice in a
step, two and three and four picks, mixed step forms (cycled and in blocks), T = 1..25 around
MIN_LANES = 3, interleavings of k = 2..9 patterns around MAX_INTERLEAVED = 8, picks of 2-D
arrays (X[t, 2t], X[2t][t], X[:, 2t][t]), picks of slices (x[1:][2t], x[::2][t]), two
variables (Hessian blocks wrt [x, y]), a shared vector (tanh(w @ x)), an RNN-like chain mixed
with picks, a vector output (Jacobian, jvp, vjp, hvp), per-step coefficients (t + 1, signs,
gamma ** t, one odd step), float32, poles (x = 0 under log and 1 / x: structural zeros),
too-small n (index errors), text versions through the CLI with --check, and size/time at
T = 50..3200 (numbers in the report, never asserted as times here).

Faults (strict xfails below), worst first:

1. Silent wrong gradient/Hessian of per-step weighted sums: `sum_t c_t * exp(x[2t+1]) *
   x[2t]` with c = [1, 1, 1, 1e-20] gives 0 at the last step's entries (want 1e-20 * ...,
   relative error 1); a discounted sum `0.1 ** t` at T = 20 gives 0 from t = 17 on;
   `0.5 ** t` at T = 40 is off by 1.6e-5; even `sum_t c_t * exp(x[t])`. At a pole with
   alternating signs an entry that is +-inf is nan. lanes.py `_Batcher._sum` writes
   `sum_t c_t B[t]` as `c * sum_t B[t] + sum_t (c_t - c) * B[t]` (c the most common
   coefficient): for c_t << c, `c_t - c` rounds to -c and the row cancels to 0 (inf - inf =
   nan at a pole). evaluate_ir is right. (Also before.) FIXED the same day: the correction
   is used only where every c_t - c adds to c; else each row keeps its own coefficient.
2. Regression (before: 61 nan of 484, none outside the pole's steps): the Hessian of
   `sum_t log(x[2t+2]) * x[2t] * x[2t+1]` (T = 9, n = 22) at x[4] = 0 is nan in all 484
   entries of the generated code (evaluate_ir: 20, the pole's own); H[12:15, 12:15], far from
   the pole, is finite. lanes.py `_progressions` splits the gradient's terms
   ([2t+2, 2t] and [2t+2, 2t+1] places) into every-other parts; each is lifted as
   `v[:, None] * eye(n)[2:17:2]` (a dense lanes x n product: inf * 0 is nan across a row) and
   the parts' rows are placed with `(...).T @ concatenate((eye(10)[2:9][:, 1:2], ...))`, a
   0/1 product that spreads that row's nan over the whole matrix. FIXED: lanes.py `lift`
   reads the steps' picks (unit vectors) as every k-th row or a stack of their own, never as a
   window of a stack another part made of them (`_picks_of_steps`), which the vectorizer
   multiplied as a dense selection matrix; the parts are now placed by pad/dilate/diag (no `@`
   or `eye(`; T = 399, n = 802: 2.9 s -> 70 ms). The pole's own column was still nan at its
   zeros on every path (fault 9's kind, then in the generated code too): FIXED with 9.
3. Structural zeros (README "Structural zeros are exact"): the Jacobian of
   `stack(log(x[2t+1]) * x[2t] for t < 4)` at x[3] = 0 has row 1 all nan (want
   [0, 0, -inf, inf, 0, ...]); the Hessian of `sum_t c_t log(x[2t+1]) * x[2t]` with one odd
   coefficient (a loss's factor on the last step) has a nan row and column. A vector on the
   rows of lanes' every-k-th identity rows (`<stride>` of a delta) with the lane axis an
   output is written `v[:, None] * eye(n)[1:8:2]` (contraction.py has no exact placement,
   `dilate(diag(v), k, .., axis=1)`, for it, as `_diag_embed` has for a plain window).
   (Also before.) FIXED: contraction.py `_strided_rows_embed` writes it
   `pad(dilate(diag(v), k, m, axis=1), ((0, 0), (s, n - s - m)))` (strides 2-4, any offset,
   a vector on either axis).
4. Reversed or permuted pairs, `sum_t log(x[2t]) * x[2(T-1-t)+1]`, at one pole: the whole
   gradient is nan in the generated code and the formula (its finite entries too); the IR is
   right. The rows out of step order are gathered by `(stack(eye(T)[..]).T @
   stack(eye(n)[2T-2], eye(n)[2T-4], ...)).T @ v`, a 0/1 product (inf * 0 = nan in every
   entry). (Also before. The `_scatter` pad fix made their Hessian callable, and it holds.)
   FIXED: contraction.py `_composed_unit_rows` reads a product of a window or a stack of
   unit rows with a stack of unit rows (rows out of step order) as the stack of rows it is,
   and `_unit_rows_on_output` places it by index with several partners on its lanes
   (`concatenate((t3[3:4], zeros(1), t3[2:3], ...))`); program.py `_placed_by_units` places
   `sum_t outer(a_t, e_(p_t))` (steps too few to batch) by rows, not `stack(a).T @
   stack(eye(n)[p]...)`.
5. O(T^3) time and memory: the gradient of `sum_t x[2t] * x[2t+1] * exp(x[2t+2])` takes
   8.7 ms at T = 100, 374 ms at T = 400, 1.9 s and 4.1 GB at T = 800, and is killed (out of
   memory) at T = 1600. contraction.py `rows_placed` repeats its unnamed `expr`
   (`eye(T+1)[2:]`) in every part of the concatenate it builds, so the generated code builds
   a (T-1) x (T+1) identity per column, all alive until the concatenate; and the product
   with it is `@ x`. (Also before.) FIXED, twice over: with 2 (lanes.py `_picks_of_steps`:
   the expression placed is no longer a window of a stack of unit rows; T = 400: 711 ->
   0.5 ms), and at the mechanism: contraction.py `_scaled_unit_rows` reads a window
   (or every k-th row) of a stack of unit rows as the unit rows it selects
   (`_window_of_unit_rows`), so its partner's rows are placed by slicing, and rows at evenly
   spaced places by `dilate` and `pad` (`_evenly_spaced`); lanes.py `lift` reads evenly
   spaced unit vectors as every k-th row of the identity even where another batch's stack
   holds them in a run (`_even_units`), and `_progressions` leaves a pattern with fewer than
   MIN_LANES members (the first step's `x[1] exp(x[2]) e_0`) as it is instead of stacking the
   whole group. T = 800: 0.04 ms against 2.6 s; T = 1600: 0.06 ms; a formula of constant
   size.
6. Perf regression: the Hessian of overlapping picks `x[t] * x[t+1] * exp(x[t+2])` now has
   a dense `(rows x n).T @ (rows x n)` 0/1 product (O(T n^2)): single-threaded n = 3204
   1987 ms against 558 ms before (n = 1604: 336 against 126 ms), which had no `@`.
   lanes.py `_progressions` splits the gradient's terms ([[2, 0], [3, 1], [3, 2], [4, 2],
   ...]) into every-other parts whose rows overlap; the Hessian's block is then placed by
   `(...).T @ concatenate((zeros(4, 1), eye(8)[4:][:, :1] + eye(8)[4:][:, 1:2], ...),
   axis=1)`. (With MAX_INTERLEAVED = 0 it is gone.) FIXED with 2 (lanes.py
   `_picks_of_steps`: no `@`, n = 1604: 202 -> 56 ms), and at the mechanism: the window
   of unit rows is unit rows (fault 5's fix: placed by slicing, no product), and lanes.py
   `_chains` splits a group that no every-k-th split makes even by the rows its inputs have
   in batches made before (`x[t] exp(x[t+2])` and `x[t+1] exp(x[t+2])`, t and t + 1 against row t of
   `exp(x[2:])`): the gradient and Hessian formulas no longer grow with T (n = 3204, one
   thread, a shared host: 0.21-0.29 s against 1.49 s, and 0.38-0.60 s with MAX_INTERLEAVED
   = 0).
7. Perf, O(T n^2): per-step coefficients (`(t + 1) * exp(x[2t+1]) * x[2t]`) leave every row
   "odd" in lanes.py `_sum`/`_odd`, each corrected as its own n x n pad in the Hessian:
   T = 50 2.3 ms, T = 400 508 ms (formula 7.6k -> 66k characters). (Also before.) FIXED:
   `_sum` corrects at most MAX_CORRECTED = 2 odd rows, and only where exact; else the sum is
   `c @ B`, c the vector of the coefficients (`_by_step`, `_coefficients`: a sum of scaled
   unit vectors in the IR, printed `stack(1, 2, ...)`, in the code an array of the result's
   dtype); per-step sums that are multiples of one another (`c_t x[2t] e + c_t e`) are one
   template, scaled by a vector of each member's own first coefficient (`_fields`,
   `_scaled_by_lane`). T = 400: 18-33 ms against 740; T = 800: 53-75 ms against 21.6 s.
8. Formula round trip at a pole: the Hessian of the reversed pairs (T = 3, x[2] = 0) is
   right in the generated code, but its formula compiled back is nan at structural zeros:
   the printed `concatenate((zeros(3, 1), diag(t1)[:, 2:3], ...), axis=1)` is lowered again
   as `t1[:, None] * (stack(eye(3)[2], ...).T @ stack(eye(n)[1], ...))`. FIXED: that
   product of stacks is read as rows placed (`_composed_unit_rows`, above), and a unit vector
   on a summed label that several terms carry picks each (`_pick_each`: `t[6] * A[6]`, not
   `A.T @ (t * eye(8)[6])`, the row of a product compiled back).
9. evaluate_ir only: the Hessian of `sum_t log(x[2t]) * log(x[2t]) * x[2t+1]` at x[2] = 0 has
   nan in column 2 at structural zeros (the generated code is exact since this change), and
   that of `sum_t x[3t] * x[3t+1] * log(x[3t+2])` at x[5] = 0 down column 5: the derivative
   keeps `(2 x[3] / x[2] e_2 + 2 log(x[2]) e_3) * (1 / x[2]) * e_2`, a sum of unit vectors
   times an infinite factor, which the interpreter multiplies out densely. (Also before.)
   Not the interpreter's alone: `sqrt(x[3t]) * x[3(T-1-t)+2]` (any T) and
   `log(x[2t+2]) * x[2t] * x[2t+1]` (stride 2) keep such a factor in the derivative, and all
   three paths are nan down the pole's column (also before, where the generated code was
   nan over far more). FIXED: the reverse pass multiplies an adjoint (a sum of picks) by a
   local partial (1 / x[p]); ir/build.py `contract` now multiplies a factor that may be
   infinite into each term of such a sum (`_over_unit_terms`: `c * (a e_i + b e_j)` ->
   `(c a) e_i + (c b) e_j`, at most `MAX_DISTRIBUTED_TERMS` products, so the IR stays linear),
   and every path places each unit vector with its own factor. The benchmark problems'
   generated code is unchanged.
10. Formula size: the gradient of three step forms cycled (`exp(x[3t]) * x[3t+1]`,
   `sin(x[3t+1]) * x[3t+2]`, `x[3t] * x[3t+2] * cos(x[3t+1])`) reads one batch's rows in
   order as `concatenate((t5[:1], t5[1:2], ..., t5[k:k+1]))` (which is t5): 456 characters at
   T = 50, 2006 at T = 400 (linear; the rest of it is constant). FIXED: lanes.py `rebuild`
   reads a stack whose items became rows row, row + 1, ... of one batch made later as that
   batch's window (`_read_in_order`): `x[1:101:9] * t5`, 477 characters at any T.

Held (ordinary tests below; random fuzzing of step forms, places, orders, coefficients and
T = 1..25 outside this file found no other wrong value): values of gradients and Hessians
(all three paths, JAX) for every pick pattern above at ordinary points, T = 1, 3, 9,
reversed and permuted steps, interleavings up to k = 9 (k <= 8 read by every-k-th rows:
no stack), 2-D
picks, slice picks, shared vectors, RNN chains, Hessian blocks wrt [x, y], hvp/jvp/vjp and a
Jacobian of x * s; structural zeros for picks in step order with strides 2-4 (the fix);
float32 in and out; clean EinderivErrors for an n too small on every path; the CLI's text
versions pass --check; formulas of evenly spaced picks do not grow with T.
"""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import einderiv
from three_paths import paths as _paths, quiet as _quiet
from einderiv import fn

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

# The parametrized cases run one in two by default, all with EINDERIV_SLOW=1 (conftest.py:
# the suite's time budget); a test's own sample(k) takes precedence.
pytestmark = pytest.mark.sample(2)


class _J:
    exp, sin, cos, tanh, log, stack = jnp.exp, jnp.sin, jnp.cos, jnp.tanh, jnp.log, jnp.stack
    sqrt = jnp.sqrt




def _unrolled(steps, body, m=fn, **variables):
    total = None
    for t in range(steps):
        term = body(m, t, steps, **variables)
        total = term if total is None else total + term
    return total


_COMPILED: dict = {}


def _derivatives(form, arity):
    """One step's gradient and Hessian by its picks, vmapped over steps and jitted once per
    step function (the tests share a few)."""
    key = (form, arity)
    if key not in _COMPILED:
        one = lambda picks: form(_J, *[picks[i] for i in range(arity)])  # noqa: E731
        _COMPILED[key] = jax.jit(lambda p: (jax.vmap(jax.grad(one))(p),
                                            jax.vmap(jax.hessian(one))(p)))
    return _COMPILED[key]


def _step_reference(steps, spec, v):
    """The gradient and Hessian of sum_t form_t(v[places_t]) by JAX, one vmap per form, added
    at the places each step reads (places may be tuples of a 2-D array's indices)."""
    g, h = np.zeros(v.size), np.zeros((v.size, v.size))
    groups: dict = {}
    for t in range(steps):
        form, places = spec(t, steps)
        flat = [int(np.ravel_multi_index(p, v.shape)) if isinstance(p, tuple) else
                int(np.arange(v.size)[p]) for p in places]
        groups.setdefault(form, []).append(flat)
    for form, rows in groups.items():
        rows = np.array(rows)
        both = _derivatives(form, rows.shape[1])
        gs, hs = (np.asarray(a) for a in both(jnp.asarray(v.reshape(-1)[rows])))
        for r, row in enumerate(rows):
            np.add.at(g, row, gs[r])
            np.add.at(h, np.ix_(row, row), hs[r])
    return g.reshape(v.shape), h.reshape(v.shape + v.shape)


def _built(steps, spec, x):
    total = None
    for t in range(steps):
        form, places = spec(t, steps)
        term = form(fn, *[x[p] for p in places])
        total = term if total is None else total + term
    return total


def _against_jax(spec, steps, n, kinds=("grad", "hessian"), seed=0, tol=1e-10):
    """`spec(t, T)` -> (a step's function of its picks, the places it picks)."""
    x = einderiv.var("x", ("n",))
    total = _built(steps, spec, x)
    v = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    refs = dict(zip(("grad", "hessian"), _step_reference(steps, spec, v)))
    for kind in kinds:
        result = getattr(einderiv, kind)(total, x)
        for path, got in _paths(result, x=v).items():
            assert got.shape == refs[kind].shape, (kind, path)
            np.testing.assert_allclose(got, refs[kind], rtol=tol, atol=tol,
                                       err_msg=f"{kind} {path}")
    return x, total


def _same(got, want):
    """Equal, nan where nan, inf where inf (poles)."""
    return got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want)) and \
        np.allclose(np.nan_to_num(got, posinf=9e99, neginf=-9e99),
                    np.nan_to_num(want, posinf=9e99, neginf=-9e99), rtol=1e-10, atol=1e-12)


def _log_pairs(places, steps, n, pole, coefs=None):
    """sum_t c_t log(x[i_t]) * x[j_t] as a var expression, a point with x[pole] = 0, and its
    gradient and Hessian by hand."""
    coefs = coefs or [1.0] * steps
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(steps):
        i, j = places(t)
        term = fn.log(x[i]) * x[j] if coefs[t] == 1.0 else coefs[t] * fn.log(x[i]) * x[j]
        total = term if total is None else total + term
    v = np.linspace(0.5, 1.5, n)
    v[pole] = 0.0
    g, h = np.zeros(n), np.zeros((n, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            i, j = places(t)
            a, b, c = v[i], v[j], coefs[t]
            g[i] += c * b / a
            g[j] += c * np.log(a)
            h[i, i] += -c * b / a ** 2
            h[i, j] += c / a
            h[j, i] += c / a
    return x, total, v, g, h


# ----------------------------------------------------------------------------------- faults

def _f2(m, a, b):
    return m.exp(a) * b


def _f3(m, a, b, c):
    return a * b * m.exp(c)


def _sin_exp(m, a, b):
    return m.exp(a) * m.sin(b)



def _exp_pair(c):
    return lambda m, a, b: c * m.exp(a) * b


def _exp_pairs_by_hand(coefs, v):
    """sum_t c_t exp(v[2t+1]) v[2t]: its gradient and Hessian."""
    g, h = np.zeros(v.size), np.zeros((v.size, v.size))
    for t, c in enumerate(coefs):
        a, b = 2 * t + 1, 2 * t
        e = c * np.exp(v[a])
        g[a], g[b] = e * v[b], e
        h[a, a], h[a, b], h[b, a] = e * v[b], e, e
    return g, h


WEIGHTED = {  # name -> coefficients; step t is c_t * exp(x[2t+1]) * x[2t]
    "one tiny step": [1.0, 1.0, 1.0, 1e-20],
    "discounted 0.1 ** t": [0.1 ** t for t in range(20)],
    "discounted 0.5 ** t": [0.5 ** t for t in range(40)],
}


@pytest.mark.no_roundtrip  # (the formula has the same cancellation; the values are read here)
# (fixed the same day: lanes._Batcher._sum corrects a row by c_t - c only where that adds
# to c; else every row is its member again, with its own coefficient)
@pytest.mark.parametrize("name", list(WEIGHTED))
def test_weighted_steps_keep_small_coefficients(name):
    coefs = WEIGHTED[name]
    steps = len(coefs)
    x = einderiv.var("x", ("n",))
    total = _built(steps, lambda t, T: (_exp_pair(coefs[t]), (2 * t + 1, 2 * t)), x)
    v = np.linspace(0.5, 1.5, 2 * steps + 2)
    want = _exp_pairs_by_hand(coefs, v)[0]
    g = einderiv.grad(total, x)
    np.testing.assert_allclose(_quiet(g.evaluate_ir, x=v), want, rtol=1e-12)  # holds
    np.testing.assert_allclose(_quiet(g, x=v), want, rtol=1e-12)


@pytest.mark.no_roundtrip
# (fixed the same day: lanes._Batcher._sum corrects a row by c_t - c only where that adds
# to c; else every row is its member again, with its own coefficient)
def test_weighted_single_picks_keep_small_coefficient():
    coefs = [1.0] * 5 + [1e-20]
    x = einderiv.var("x", ("n",))
    total = _built(6, lambda t, T: ((lambda m, a, c=coefs[t]: c * m.exp(a)), (t,)), x)
    g = einderiv.grad(total, x)
    v = np.zeros(6)
    np.testing.assert_allclose(_quiet(g.evaluate_ir, x=v), coefs, rtol=1e-12)  # holds
    np.testing.assert_allclose(_quiet(g, x=v), coefs, rtol=1e-12)


@pytest.mark.no_roundtrip
# (fixed the same day: lanes._Batcher._sum corrects a row by c_t - c only where that adds
# to c; else every row is its member again, with its own coefficient)
def test_alternating_signs_at_pole_keep_infinities():
    x, total, v, g, _ = _log_pairs(lambda t: (2 * t + 1, 2 * t), 4, 10, 3,
                                   coefs=[1.0, -1.0, 1.0, -1.0])
    grad = einderiv.grad(total, x)
    assert _same(_quiet(grad.evaluate_ir, x=v), g)  # holds
    assert _same(_quiet(grad, x=v), g), _quiet(grad, x=v)


def _log_first(m, c, a, b):
    return m.log(c) * a * b


def _log_triple(t, T):
    return _log_first, (2 * t + 2, 2 * t, 2 * t + 1)


@pytest.mark.no_roundtrip
def test_split_parts_keep_finite_hessian_entries_away_from_a_pole():
    steps, n = 9, 22
    x = einderiv.var("x", ("n",))
    total = _built(steps, _log_triple, x)
    v = np.linspace(0.5, 1.5, n)
    v[4] = 0.0
    clean = np.array([i > 6 for i in range(n)])  # steps 0..2 read x[4]; the rest do not
    w = v.copy()
    w[4] = 1.0  # (the entries of the other steps do not depend on x[4])
    ref = _step_reference(steps, _log_triple, w)[1][np.ix_(clean, clean)]
    h = einderiv.hessian(total, x)
    np.testing.assert_allclose(_quiet(h.evaluate_ir, x=v)[np.ix_(clean, clean)], ref,
                               rtol=1e-10, atol=1e-12)  # holds (and before: 61 nan of 484)
    np.testing.assert_allclose(_quiet(h, x=v)[np.ix_(clean, clean)], ref, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.no_roundtrip
def test_jacobian_of_stacked_step_products_at_pole_has_exact_zeros():
    steps, n = 4, 12
    x = einderiv.var("x", ("n",))
    J = einderiv.jacobian(fn.stack(*[fn.log(x[2 * t + 1]) * x[2 * t] for t in range(steps)]), x)
    v = np.linspace(0.5, 1.5, n)
    v[3] = 0.0
    want = np.zeros((steps, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            want[t, 2 * t + 1] = v[2 * t] / v[2 * t + 1]
            want[t, 2 * t] = np.log(v[2 * t + 1])
    assert _same(_quiet(J.evaluate_ir, x=v), want)  # holds
    for path, got in _paths(J, x=v).items():
        assert _same(got, want), (path, got[1])


@pytest.mark.no_roundtrip
def test_hessian_with_one_odd_coefficient_at_pole_has_exact_zeros():
    steps = 5
    coefs = [1.0] * (steps - 1) + [2.0]
    x, total, v, _, h = _log_pairs(lambda t: (2 * t + 1, 2 * t), steps, 14, 3, coefs)
    H = einderiv.hessian(total, x)
    assert _same(_quiet(H.evaluate_ir, x=v), h)  # holds
    assert _same(_quiet(H, x=v), h)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("steps", [4, 9])
def test_reversed_pairs_gradient_at_pole(steps):
    x, total, v, g, _ = _log_pairs(lambda t: (2 * t, 2 * (steps - 1 - t) + 1), steps,
                                   2 * steps + 4, 2)
    grad = einderiv.grad(total, x)
    assert _same(_quiet(grad.evaluate_ir, x=v), g)  # holds
    for path, got in _paths(grad, x=v).items():
        assert _same(got, g), (path, got)


def _overlapping_pairs(t, T):
    return _f3, (2 * t, 2 * t + 1, 2 * t + 2)


def test_overlapping_stride_two_gradient_does_not_rebuild_identities():
    _against_jax(_overlapping_pairs, 6, 16, kinds=("grad",))  # (values hold)

    def counts(steps):
        x = einderiv.var("x", ("n",))
        g = einderiv.grad(_built(steps, _overlapping_pairs, x), x)
        return g.formula.count("eye("), g.source.count("== _xp.arange(")
    short, long = counts(6), counts(18)
    assert long[0] <= short[0] and long[1] <= short[1], (short, long)


def _overlapping_triples(t, T):
    return _f3, (t, t + 1, t + 2)


def test_overlapping_triples_hessian_has_no_dense_product():
    x, total = _against_jax(_overlapping_triples, 10, 14, kinds=("hessian",))
    form = einderiv.hessian(total, x).formula
    assert "@" not in form, form


_WEIGHTS = {}


def _weighted_by_step(t, T):
    return _WEIGHTS.setdefault(t, _exp_pair(t + 1.0)), (2 * t + 1, 2 * t)


def test_per_step_coefficients_hessian_does_not_grow_with_steps():
    x = einderiv.var("x", ("n",))
    v = np.linspace(0.5, 1.5, 11)
    h = einderiv.hessian(_built(4, _weighted_by_step, x), x)
    np.testing.assert_allclose(h(x=v), _exp_pairs_by_hand([1.0, 2.0, 3.0, 4.0], v)[1],
                               rtol=1e-12)  # (values hold)

    def form(steps):
        x = einderiv.var("x", ("n",))
        return einderiv.hessian(_built(steps, _weighted_by_step, x), x).formula
    short, long = form(4), form(12)
    assert long.count("pad(") <= short.count("pad(") + 1, (short, long)


def _three_forms(t, T):
    return [((lambda m, a, b: m.exp(a) * b), (3 * t, 3 * t + 1)),
            ((lambda m, a, b: m.sin(a) * b), (3 * t + 1, 3 * t + 2)),
            ((lambda m, a, b, c: a * b * m.cos(c)), (3 * t, 3 * t + 2, 3 * t + 1))][t % 3]


_THREE_FORMS = [_three_forms(0, 0)[0], _three_forms(1, 0)[0], _three_forms(2, 0)[0]]


def _three_forms_fixed(t, T):  # (one function object per form, for the reference's groups)
    return _THREE_FORMS[t % 3], _three_forms(t, T)[1]


def test_cycled_forms_gradient_formula_does_not_grow():
    def form(steps):
        x = einderiv.var("x", ("n",))
        return re.sub(r"\d+", "#", einderiv.grad(_built(steps, _three_forms_fixed, x), x).formula)
    short, long = form(12), form(36)
    assert len(long) <= len(short) + 8, (short, long)


@pytest.mark.no_roundtrip
def test_reversed_pairs_hessian_formula_round_trip_at_pole():
    x, total, v, _, h = _log_pairs(lambda t: (2 * t, 2 * (2 - t) + 1), 3, 10, 2)
    H = einderiv.hessian(total, x)
    paths = _paths(H, x=v)
    assert _same(paths["generated"], h) and _same(paths["ir"], h)  # hold (the _scatter fix)
    assert _same(paths["formula"], h)


@pytest.mark.no_roundtrip
# (fault 9, fixed: build.contract multiplies the factor 1 / x[2] into each term of the sum of
# unit vectors, (2 x[3] / x[2] e_2 + 2 log(x[2]) e_3) * (1 / x[2]) * e_2, which evaluate_ir
# multiplied out densely: inf * 0 = nan down column 2)
def test_squared_log_pick_hessian_ir_at_pole():
    steps, n = 3, 8
    x = einderiv.var("x", ("n",))
    total = _built(steps, lambda t, T: ((lambda m, a, b: m.log(a) * m.log(a) * b),
                                        (2 * t, 2 * t + 1)), x)
    v = np.linspace(0.5, 1.5, n)
    v[2] = 0.0
    want = np.zeros((n, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            a, b = v[2 * t], v[2 * t + 1]
            want[2 * t, 2 * t] = b * (2 - 2 * np.log(a)) / a ** 2
            want[2 * t, 2 * t + 1] = want[2 * t + 1, 2 * t] = 2 * np.log(a) / a
    H = einderiv.hessian(total, x)
    for path, got in _paths(H, x=v).items():
        assert _same(got, want), path


@pytest.mark.no_roundtrip
# (fault 9, fixed: the sum of unit vectors (x[4] e_3 + x[3] e_4) times 1 / x[5] is multiplied
# out, each unit vector with its own factor: no inf * 0 = nan down column 5)
def test_three_picks_hessian_ir_at_pole():
    steps, n = 9, 32
    x = einderiv.var("x", ("n",))
    total = _built(steps, lambda t, T: (_log_last, (3 * t, 3 * t + 1, 3 * t + 2)), x)
    v = np.linspace(0.5, 1.5, n)
    v[5] = 0.0
    want = np.zeros((n, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            a, b, c = 3 * t, 3 * t + 1, 3 * t + 2
            want[a, b] = want[b, a] = np.log(v[c])
            want[a, c] = want[c, a] = v[b] / v[c]
            want[b, c] = want[c, b] = v[a] / v[c]
            want[c, c] = -v[a] * v[b] / v[c] ** 2
    for path, H in _paths(einderiv.hessian(total, x), x=v).items():
        assert _same(H, want), (path, H[:, 5])


def _log_last(m, a, b, c):
    return a * b * m.log(c)


# ------------------------------------------------------------------------------------- held

def _f4(m, a, b, c, d):
    return a * b * c * m.exp(d)


def _log_pair(m, a, b):
    return m.log(a) * b


PATTERNS = {  # name -> spec(t, T) = (a step's function of its picks, the places it picks)
    "reversed": lambda t, T: (_f2, (2 * (T - 1 - t) + 1, 2 * (T - 1 - t))),
    "negative": lambda t, T: (_f2, (-1 - 2 * t, -2 - 2 * t)),
    "overlap three": _overlapping_triples,
    "overlap stride two": _overlapping_pairs,
    "same place twice": lambda t, T: (_f3, (2 * t + 1, 2 * t, 2 * t)),
    "constant partner": lambda t, T: (_sin_exp, (5, 2 * t)),
    "strides 1 and 3": lambda t, T: (_f2, (t, 3 * t + 1)),
    "strides 2, 5, 1": lambda t, T: (_f3, (5 * t + 1, t, 2 * t)),
    "three forms cycled": _three_forms_fixed,
    "four picks": lambda t, T: (_f4, (4 * t, 4 * t + 1, 4 * t + 2, 4 * t + 3)),
    "permuted": lambda t, T: (_f2, ((7 * t) % (2 * T + 1), (7 * t + 3) % (2 * T + 1))),
    "log pairs reversed": lambda t, T: (_log_pair, (2 * t, 2 * (T - 1 - t) + 1)),
}


@pytest.mark.sample(2)
@pytest.mark.parametrize("steps", [1, 3, 9])
@pytest.mark.parametrize("name", [n for n in PATTERNS if not n.startswith("overlap")])
def test_unrolled_pick_patterns_match_jax(name, steps):
    _against_jax(PATTERNS[name], steps, 5 * steps + 8, seed=steps)


@pytest.mark.parametrize("name", ["overlap three", "overlap stride two"])
def test_overlapping_picks_match_jax(name):
    _against_jax(PATTERNS[name], 9, 22, seed=9)


@pytest.mark.parametrize("k", [2, 8, 9])
def test_interleaved_patterns_around_max_interleaved(k):
    perm = [int(p) for p in np.random.default_rng(k).permutation(k)]
    steps = 3 * k
    spec = lambda t, T: (_f2, (k * t + perm[t % k], k * t + (perm[t % k] + 1) % k))  # noqa
    x, total = _against_jax(spec, steps, k * steps + 4)
    if k <= 8:  # every k-th member is its own part, read by every-k-th rows
        form = einderiv.grad(total, x).formula
        assert "stack(" not in form and "@" not in form, form


TWO_D = {
    "X[t, 2t]": lambda t, T: (_f2, ((t, 2 * t + 1), (t, 2 * t))),
    "X[t][2t] X[t+1][t]": lambda t, T: (_f3, ((t, 2 * t), (t + 1, t), (t, 2 * t + 1))),
    "X[2t][t]": lambda t, T: (_sin_exp, ((2 * t, t), (t, 2 * t))),
}


@pytest.mark.parametrize("steps", [3, 5])
@pytest.mark.parametrize("name", list(TWO_D))
def test_two_dimensional_picks(name, steps):
    X = einderiv.var("X", ("m", "n"))
    spec = TWO_D[name]
    total = _built(steps, spec, X)
    v = np.random.default_rng(steps).uniform(0.5, 1.5, (2 * steps + 2, 2 * steps + 3))
    refs = _step_reference(steps, spec, v)
    for kind, ref in zip(("grad", "hessian"), refs):
        for path, got in _paths(getattr(einderiv, kind)(total, X), X=v).items():
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10, err_msg=f"{kind} {path}")


def test_slice_picks_read_the_same_places():
    steps, n = 9, 22
    x = einderiv.var("x", ("n",))
    v = np.random.default_rng(3).uniform(0.5, 1.5, n)
    refs = _step_reference(steps, lambda t, T: (_f2, (2 * t + 2, 2 * t + 1)), v)
    for slices in (lambda t: fn.exp(x[:-1][2 * t + 2]) * x[1:][2 * t],
                   lambda t: fn.exp(x[::2][t + 1]) * x[1::2][t]):
        total = None
        for t in range(steps):
            total = slices(t) if total is None else total + slices(t)
        for kind, ref in zip(("grad", "hessian"), refs):
            for path, got in _paths(getattr(einderiv, kind)(total, x), x=v).items():
                np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_shared_vector_and_chain_small():
    steps, n = 3, 10
    rng = np.random.default_rng(1)
    v, wv = rng.uniform(0.5, 1.5, n), rng.uniform(-1, 1, n)
    x, w = einderiv.var("x", ("n",)), einderiv.var("w", ("n",))

    def shared(m, x, w):
        s = m.tanh(w @ x)
        return _unrolled(steps, lambda m, t, T, x: x[2 * t] * s * x[2 * t + 1], m, x=x)

    def chain(m, x, w):
        h, total = x[0], None
        for t in range(steps):
            h = m.tanh(h * x[2 * t + 1] + x[2 * t + 2])
            total = h * x[2 * t + 2] if total is None else total + h * x[2 * t + 2]
        return total
    for f in (shared, chain):
        ref = jax.jit(jax.hessian(lambda a: f(_J, a, wv)))(v)
        for path, got in _paths(einderiv.hessian(f(fn, x, w), x), x=v, w=wv).items():
            np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-10, atol=1e-10)


def test_two_variables_products_and_vector_output():
    steps, n = 3, 14
    rng = np.random.default_rng(steps)
    xv, yv, tv, cv = (rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n),
                      rng.uniform(-1, 1, n), rng.uniform(-1, 1, n))
    body = lambda m, t, T, x, y: x[3 * t] * y[3 * t + 1] * m.exp(x[3 * t + 2])  # noqa: E731
    x, y = einderiv.var("x", ("n",)), einderiv.var("y", ("n",))
    s = _unrolled(steps, body, x=x, y=y)
    js = lambda a, b: _unrolled(steps, body, _J, x=a, y=b)  # noqa: E731
    H = einderiv.hessian(s, [x, y])(x=xv, y=yv)
    ref = jax.jit(jax.hessian(js, argnums=(0, 1)))(xv, yv)
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(H[i][j], np.asarray(ref[i][j]), rtol=1e-10, atol=1e-10)
    hv = einderiv.hvp(s, x)(x=xv, y=yv, tangent=tv)
    np.testing.assert_allclose(hv, jax.jvp(jax.grad(lambda a: js(a, yv)), (xv,), (tv,))[1],
                               rtol=1e-10, atol=1e-10)
    vec = lambda a: a * js(a, yv)  # noqa: E731
    J = einderiv.jacobian(x * s, x)
    for path, got in _paths(J, x=xv, y=yv).items():
        np.testing.assert_allclose(got, np.asarray(jax.jacrev(vec)(xv)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(einderiv.vjp(x * s, x)(x=xv, y=yv, cotangent=cv),
                               jax.vjp(vec, xv)[1](cv)[0], rtol=1e-10, atol=1e-10)
    _, out = einderiv.jvp(x * s, x)(x=xv, y=yv, tangent=tv)
    np.testing.assert_allclose(out, jax.jvp(vec, (xv,), (tv,))[1], rtol=1e-10, atol=1e-10)


@pytest.mark.no_roundtrip  # every path checked here, at the pole
@pytest.mark.parametrize("steps", [3, 4, 9])
@pytest.mark.parametrize("places", [lambda t: (2 * t + 1, 2 * t), lambda t: (2 * t, 2 * t + 1),
                                    lambda t: (3 * t + 2, 3 * t), lambda t: (4 * t + 3, 4 * t + 1)],
                         ids=["2t+1, 2t", "2t, 2t+1", "3t+2, 3t", "4t+3, 4t+1"])
def test_step_order_picks_keep_structural_zeros(places, steps):
    # (before, the generated code was nan over whole rows here; fixed by this change)
    x, total, v, g, h = _log_pairs(places, steps, 4 * steps + 6, places(1)[0])
    for kind, want in (("grad", g), ("hessian", h)):
        for path, got in _paths(getattr(einderiv, kind)(total, x), x=v).items():
            assert _same(got, want), (kind, path)


@pytest.mark.no_roundtrip
def test_three_picks_structural_zeros_at_pole():
    steps, n = 9, 32
    x = einderiv.var("x", ("n",))
    total = _built(steps, lambda t, T: (_log_last, (3 * t, 3 * t + 1, 3 * t + 2)), x)
    v = np.linspace(0.5, 1.5, n)
    v[5] = 0.0  # step 1's log
    reached = np.zeros((n, n), bool)
    for t in range(steps):
        p = [3 * t, 3 * t + 1, 3 * t + 2]
        reached[np.ix_(p, p)] = True
    for path, H in _paths(einderiv.hessian(total, x), x=v).items():
        assert np.all(H[~reached] == 0), path
        assert np.all(np.isfinite(H[6:, 6:])), path


def test_float32_in_float32_out():
    x = einderiv.var("x", ("n",))
    total = _built(10, _three_forms_fixed, x)
    v = np.random.default_rng(0).uniform(0.5, 1.5, 35)
    for kind in ("grad", "hessian"):
        r = getattr(einderiv, kind)(total, x)
        ref = r(x=v)
        for got in (r(x=v.astype(np.float32)), r.evaluate_ir(x=v.astype(np.float32))):
            assert np.asarray(got).dtype == np.float32
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.no_roundtrip  # (calls that fail on purpose)
@pytest.mark.parametrize("kind", ["grad", "hessian"])
def test_too_small_n_is_a_clean_error(kind):
    x = einderiv.var("x", ("n",))
    total = _built(10, lambda t, T: (_f3, (3 * t, 3 * t + 1, 3 * t + 2)), x)
    r = getattr(einderiv, kind)(total, x)
    for n in (29, 20, 1):
        for call in (r, r.evaluate_ir):
            with pytest.raises(einderiv.EinderivError):
                _quiet(call, x=np.ones(n))


@pytest.mark.parametrize("kind", ["hessian"])
def test_cli_text_versions_pass_check(kind):
    steps = 9
    text = " + ".join(f"x[{3 * t}] * x[{3 * t + 1}] * exp(x[{3 * t + 2}])" if t % 2 else
                      f"log(x[{2 * (steps - 1 - t) + 1}]) * x[{3 * t}]" for t in range(steps))
    run = subprocess.run([sys.executable, "-m", "einderiv", kind, text, "--wrt", "x",
                          "--shape", f"x={3 * steps + 3}", "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "check: largest relative error" in run.stdout


@pytest.mark.parametrize("name", ["two picks", "three picks", "strides 4, offsets 3 and 1"])
def test_even_picks_formula_does_not_grow(name):
    spec = {"two picks": lambda t, T: (_f2, (2 * t + 1, 2 * t)),
            "three picks": lambda t, T: (_f3, (3 * t, 3 * t + 1, 3 * t + 2)),
            "strides 4, offsets 3 and 1": lambda t, T: (_f2, (4 * t + 3, 4 * t + 1))}[name]

    def forms(steps):
        x = einderiv.var("x", ("n",))
        total = _built(steps, spec, x)
        return [re.sub(r"\d+", "#", getattr(einderiv, k)(total, x).formula)
                for k in ("grad", "hessian")]
    short, long = forms(12), forms(120)
    for a, b in zip(short, long):
        assert len(b) <= len(a) + 8 and "@" not in b and "stack(" not in b, (a, b)


# ------------------------------------------- placements by 0/1 selections, at poles (2, 3, 4, 8)

def _log_products(places, steps, n, pole, coefs=None):
    """sum_t c_t log(x[p_0]) * x[p_1] * ... (places(t) = (p_0, p_1, ...), distinct within a
    step) as a var expression, a point with x[pole] = 0, and its gradient and Hessian by hand:
    an entry no step reaches is an exact 0."""
    coefs = coefs or [1.0] * steps
    x = einderiv.var("x", ("n",))
    total = None
    for t in range(steps):
        first, *rest = places(t)
        term = fn.log(x[first])
        for p in rest:
            term = term * x[p]
        term = term if coefs[t] == 1.0 else coefs[t] * term
        total = term if total is None else total + term
    v = np.linspace(0.5, 1.5, n)
    v[pole] = 0.0
    g, h = np.zeros(n), np.zeros((n, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            first, *rest = places(t)
            c, a, log = coefs[t], v[first], np.log(v[first])

            def prod(skip=()):
                return np.prod([v[p] for k, p in enumerate(rest) if k not in skip])
            g[first] += c * prod() / a
            h[first, first] += -c * prod() / a ** 2
            for k, p in enumerate(rest):
                g[p] += c * log * prod((k,))
                h[first, p] += c * prod((k,)) / a
                h[p, first] += c * prod((k,)) / a
                for m, q in enumerate(rest):
                    if m != k:
                        h[p, q] += c * log * prod((k, m))
    return x, total, v, g, h


def _no_dense_selection(formula: str):
    """No 0/1 matrix product or identity in the formula: values are placed by index, slice,
    pad, dilate or diag (O(n) or the result's size, never lanes x n x n)."""
    assert "@" not in formula and "eye(" not in formula, formula


def _perm(steps, seed):
    order = list(range(steps))
    if steps > 2:
        np.random.default_rng(seed).shuffle(order)
    return order


ORDERS = {  # name -> (T -> the step each step's second pick reads)
    "reversed": lambda T: list(range(T))[::-1],
    "rotated": lambda T: [(t + 1) % T for t in range(T)],
    "shuffled": lambda T: _perm(T, T),
}


@pytest.mark.no_roundtrip  # every path checked here, at the pole
@pytest.mark.parametrize("at", ["first", "last"])
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("order", list(ORDERS))
def test_steps_out_of_order_keep_structural_zeros(order, stride, steps, at):
    # (fault 4: rows out of step order were gathered by a product of stacks of unit rows,
    # nan in every entry; now placed by index)
    perm = ORDERS[order](steps)
    pole_step = 0 if at == "first" else steps - 1
    places = lambda t: (stride * t, stride * perm[t] + 1)  # noqa: E731
    x, total, v, g, h = _log_products(places, steps, stride * steps + 3, places(pole_step)[0])
    for kind, want in (("grad", g), ("hessian", h)):
        result = getattr(einderiv, kind)(total, x)
        for path, got in _paths(result, x=v).items():
            assert _same(got, want), (kind, path, got)
        if steps == 9:
            _no_dense_selection(result.formula)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("at", ["first", "last"])
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
@pytest.mark.parametrize("stride, offsets", [(2, (1, 0)), (3, (2, 0)), (3, (1, 2)),
                                             (4, (3, 1)), (4, (0, 2))])
def test_jacobian_of_stacked_steps_keeps_structural_zeros(stride, offsets, steps, at):
    # (fault 3: a vector on every stride-th identity row with the lane axis an output was
    # v[:, None] * eye(n)[1:8:2]; now pad(dilate(diag(v), ...)))
    i, j = offsets
    n = stride * steps + 3
    x = einderiv.var("x", ("n",))
    J = einderiv.jacobian(fn.stack(*[fn.log(x[stride * t + i]) * x[stride * t + j]
                                     for t in range(steps)]), x)
    v = np.linspace(0.5, 1.5, n)
    v[stride * (0 if at == "first" else steps - 1) + i] = 0.0
    want = np.zeros((steps, n))
    with np.errstate(all="ignore"):
        for t in range(steps):
            a, b = v[stride * t + i], v[stride * t + j]
            want[t, stride * t + i] = b / a
            want[t, stride * t + j] = np.log(a)
    for path, got in _paths(J, x=v).items():
        assert _same(got, want), (path, got)
    if steps == 9:
        _no_dense_selection(J.formula)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("steps", [2, 3, 9])
@pytest.mark.parametrize("odd", ["first", "last", "two"])
@pytest.mark.parametrize("stride", [2, 3, 4])
def test_odd_coefficients_keep_structural_zeros(stride, odd, steps):
    # (fault 3's Hessian: the odd rows keep the batch on every stride-th identity row)
    coefs = [1.0] * steps
    coefs[{"first": 0, "last": -1, "two": 1}[odd]] = 2.0
    if odd == "two":
        coefs[-1] = 3.0
    places = lambda t: (stride * t + 1, stride * t)  # noqa: E731
    for pole_step in (0, steps - 1):
        x, total, v, g, h = _log_products(places, steps, stride * steps + 3,
                                          places(pole_step)[0], coefs)
        for kind, want in (("grad", g), ("hessian", h)):
            for path, got in _paths(getattr(einderiv, kind)(total, x), x=v).items():
                assert _same(got, want), (kind, path, pole_step, got)


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("steps", [3, 9])
@pytest.mark.parametrize("stride", [2, 3])
def test_split_parts_keep_structural_zeros(stride, steps):
    # (fault 2: the every-other parts of log(x[k t + 2]) * x[k t] * x[k t + 1] read a window
    # of another part's stack of unit rows, multiplied as 0/1 matrices: nan everywhere)
    places = lambda t: (stride * t + 2, stride * t, stride * t + 1)  # noqa: E731
    for pole_step in (0, steps - 1):
        x, total, v, g, h = _log_products(places, steps, stride * steps + 4,
                                          places(pole_step)[0])
        for kind, want in (("grad", g), ("hessian", h)):
            result = getattr(einderiv, kind)(total, x)
            # (the pole's own column too, since fault 9's fix: the sum of unit vectors times
            # 1 / x[pole] there is multiplied out, each unit vector with its own factor)
            for path, got in _paths(result, x=v).items():
                assert _same(got, want), (kind, path, pole_step, got)
            if steps == 9:
                _no_dense_selection(result.formula)


ORDERED_SPECS = {
    "stride 3 reversed": lambda t, T: (_f2, (3 * t, 3 * (T - 1 - t) + 2)),
    "stride 4 shuffled": lambda t, T: (_f2, (4 * t + 1, 4 * _perm(T, 5)[t] + 3)),
    "stride 3 rotated, three picks": lambda t, T: (_f3, (3 * t, 3 * ((t + 1) % T) + 1,
                                                          3 * t + 2)),
    "log triple stride 3": lambda t, T: (_log_first, (3 * t + 2, 3 * t, 3 * t + 1)),
    "log triple stride 4": lambda t, T: (_log_first, (4 * t + 2, 4 * t, 4 * t + 3)),
}


@pytest.mark.sample(2)
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
@pytest.mark.parametrize("name", list(ORDERED_SPECS))
def test_ordered_and_strided_steps_match_jax(name, steps):
    # ordinary points: the exact placements give the values they gave, with no n x n
    # product. (A vector times a sum of selections on lanes x n, `v[:, None] * (stack(pad(
    # ...)) + eye(n)[2:27:3])`, is left: O(steps n), as before.)
    x, total = _against_jax(ORDERED_SPECS[name], steps, 4 * steps + 5, seed=steps)
    if steps == 9:
        for kind in ("grad", "hessian"):
            form = getattr(einderiv, kind)(total, x).formula
            assert "@" not in form and (kind == "hessian" or "eye(" not in form), form


@pytest.mark.no_roundtrip
@pytest.mark.parametrize("at", [0, 2])
def test_products_of_unit_row_stacks_in_a_formula_are_placed_by_index(at):
    # (fault 8's kind written by hand: a product of two stacks of unit rows is a stack of
    # rows, placed by index, not multiplied as 0/1 matrices)
    back = einderiv.compile(
        "t1 = log(x[:4])\n(stack(eye(4)[0], eye(4)[1], eye(4)[2], eye(4)[3]).T @ "
        "stack(eye(n)[6], eye(n)[4], eye(n)[2], eye(n)[0])).T @ t1", {"x": ("n",)})
    v = np.linspace(0.5, 1.5, 10)
    v[at] = 0.0
    want = np.zeros(10)
    with np.errstate(all="ignore"):
        want[[6, 4, 2, 0]] = np.log(v[:4])
    assert _same(_quiet(back, x=v), want), _quiet(back, x=v)
    _no_dense_selection(back.formula)


# ------------------------------------- faults 5, 6, 7 and 10 fixed: other inputs of their kinds

def _sin_mid(m, a, b, c):
    return a * m.sin(b) * m.exp(c)


OVERLAPPING = {  # picks that the next step reads again, at other strides, offsets and orders
    "stride 3, last is next first": lambda t, T: (_f3, (3 * t, 3 * t + 1, 3 * t + 3)),
    "stride 3, out of order": lambda t, T: (_f3, (3 * t + 2, 3 * t, 3 * t + 3)),
    "stride 2, offset 1": lambda t, T: (_sin_mid, (2 * t + 1, 2 * t + 2, 2 * t + 3)),
    "stride 4, offsets 1 3 5": lambda t, T: (_f3, (4 * t + 1, 4 * t + 3, 4 * t + 5)),
    "stride 1 pairs": lambda t, T: (_f2, (t + 1, t)),
}


@pytest.mark.sample(2)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("name", list(OVERLAPPING))
def test_overlapping_picks_other_strides_match_jax(name, steps):
    _against_jax(OVERLAPPING[name], steps, 4 * steps + 8, seed=steps)


def _sizes(spec, steps, kinds=("grad", "hessian")):
    """Per derivative: the formula's length with its numbers as #, and its counts of `eye(`,
    `@` and `stack(`, and the generated code's one-hot rows or windows (`== _xp.arange(`)."""
    x = einderiv.var("x", ("n",))
    total = _built(steps, spec, x)
    out = []
    for kind in kinds:
        r = getattr(einderiv, kind)(total, x)
        f = r.formula
        out.append((len(re.sub(r"\d+", "#", f)), f.count("eye("), f.count("@"),
                    f.count("stack("), r.source.count("== _xp.arange(")))
    return out


@pytest.mark.parametrize("name", list(OVERLAPPING) + ["overlap three", "overlap stride two"])
def test_overlapping_picks_formula_does_not_grow(name):
    # (fault 5: a window of a stack of unit rows was placed as a matrix, rebuilt per part; 6:
    # its block placed by a dense 0/1 product)
    spec = OVERLAPPING.get(name) or PATTERNS[name]
    for short, long in zip(_sizes(spec, 12), _sizes(spec, 48)):
        assert long[0] <= short[0] + 8 and long[1:] == short[1:], (short, long)
        assert long[2] == 0 and long[3] == 0, long  # no product, no stack


def test_overlapping_two_dimensional_picks():
    spec = lambda t, T: (_f3, ((t, t), (t, t + 1), (t + 1, t + 1)))  # noqa: E731
    for steps in (2, 3, 5):
        X = einderiv.var("X", ("m", "n"))
        total = _built(steps, spec, X)
        v = np.random.default_rng(steps).uniform(0.5, 1.5, (steps + 2, steps + 3))
        for kind, ref in zip(("grad", "hessian"), _step_reference(steps, spec, v)):
            for path, got in _paths(getattr(einderiv, kind)(total, X), X=v).items():
                np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10,
                                           err_msg=f"{kind} {path} {steps}")


PER_STEP = {  # name -> coefficients; step t is c_t * exp(x[2t+1]) * x[2t]
    "t + 1, one step": [1.0],
    "t + 1, two steps": [1.0, 2.0],
    "t + 1, three steps": [1.0, 2.0, 3.0],
    "t + 1, nine steps": [t + 1.0 for t in range(9)],
    "a 1e-20 among t + 1": [1.0, 2.0, 1e-20, 4.0, 5.0],
    "alternating halves": [(-0.5) ** t for t in range(9)],
    "two odd (corrected)": [1.0, 1.0, 1.0, 2.0, 3.0],
    "three odd": [1.0, 1.0, 2.0, 3.0, 4.0],
    "one tiny last": [1.0, 1.0, 1.0, 1.0, 1e-20],
}


@pytest.mark.parametrize("name", list(PER_STEP))
def test_per_step_coefficients_match_by_hand(name):
    coefs = PER_STEP[name]
    steps = len(coefs)
    x = einderiv.var("x", ("n",))
    total = _built(steps, lambda t, T: (_exp_pair(coefs[t]), (2 * t + 1, 2 * t)), x)
    v = np.linspace(0.5, 1.5, 2 * steps + 3)
    for kind, want in zip(("grad", "hessian"), _exp_pairs_by_hand(coefs, v)):
        for path, got in _paths(getattr(einderiv, kind)(total, x), x=v).items():
            # (relative to each entry: 1e-20 * ... is not 0)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{kind} {path}")


def test_per_step_coefficients_formula_does_not_grow():
    def sizes(steps):
        x = einderiv.var("x", ("n",))
        total = _built(steps, lambda t, T: (_exp_pair((-0.5) ** t), (2 * t + 1, 2 * t)), x)
        return [(f.count("pad("), f.count("eye("), f.count("@"))
                for f in (getattr(einderiv, k)(total, x).formula for k in ("grad", "hessian"))]
    assert sizes(16) == sizes(4), (sizes(4), sizes(16))


def test_per_step_coefficients_keep_float32():
    coefs = [t + 1.0 for t in range(6)]
    x = einderiv.var("x", ("n",))
    total = _built(6, lambda t, T: (_exp_pair(coefs[t]), (2 * t + 1, 2 * t)), x)
    v = np.linspace(0.5, 1.5, 14)
    for kind, want in zip(("grad", "hessian"), _exp_pairs_by_hand(coefs, v)):
        got = getattr(einderiv, kind)(total, x)(x=v.astype(np.float32))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _two_forms(t, T):
    return [(_f2, (2 * t, 2 * t + 1)), (_sin_exp, (2 * t + 1, 2 * t))][t % 2]


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_two_cycled_forms_match_jax(steps):
    _against_jax(_two_forms, steps, 2 * steps + 4, seed=steps)


@pytest.mark.parametrize("spec", [_two_forms, _three_forms_fixed], ids=["two", "three"])
def test_cycled_forms_formulas_do_not_grow(spec):
    # (fault 10: a stack of one batch's rows in order was read a part per step)
    for short, long in zip(_sizes(spec, 12), _sizes(spec, 48)):
        assert long[0] <= short[0] + 8 and long[1:] == short[1:], (short, long)


def test_window_of_unit_rows_is_unit_rows():
    # contraction.py: rows of a stack of unit vectors (lanes.py reading a run of a stack that
    # another batch built) are themselves unit rows: placed by slicing, not as a matrix
    from einderiv.ir.nodes import Add, Contract, Delta, Unit
    from einderiv.ir.dims import Dim
    from einderiv.lower.linear import stride
    from einderiv.vectorize.contraction import _scaled_unit_rows
    n, places = Dim("n"), [1, 0, 3, 5, 7, 9, 11]
    lanes = Dim.of(len(places))
    stack = Add([(1.0, Contract((0, 1), [(Unit(lanes, k), (0,)), (Unit(n, p), (1,))]))
                 for k, p in enumerate(places)])
    for window, want in ((Delta(5, lanes, 2), [3, 5, 7, 9, 11]),
                         (stride(Delta(5, lanes, 1), 0, 2), [0, 5, 9])):
        found = _scaled_unit_rows(Contract((0, 1), [(window, (0, 2)), (stack, (2, 1))]))
        assert found is not None and found[0] == 1.0
        assert [k.offset for k, _ in found[1]] == want


def _scaled_sum_step(m, c, a, b):
    return c * (m.exp(b) * a + 3.0 * a * a)


@pytest.mark.parametrize("coefs", [[1e300, 1e-10, 1e300, 1e-10, 5.0],
                                   [1e-300, 1e300, 1.0, 2.0, 3.0, 4.0],
                                   [0.0, 1.0, 2.0, 1e-20, 5.0, 6.0]])
def test_per_step_scaled_sums_keep_extreme_coefficients(coefs):
    # lanes.py `_fields` groups sums that are multiples of one another by their coefficients
    # relative to the first; a ratio that overflows (1e300 / 1e-10) or underflows
    # (1e-300 / 1e300) must not be what a member is rebuilt from
    x = einderiv.var("x", ("n",))
    total = None
    for t, c in enumerate(coefs):
        term = _scaled_sum_step(fn, c, x[2 * t], x[2 * t + 1])
        total = term if total is None else total + term
    v = np.linspace(0.5, 1.5, 2 * len(coefs) + 2)

    def ref(a):
        return sum(_scaled_sum_step(_J, c, a[2 * t], a[2 * t + 1]) for t, c in enumerate(coefs))
    for kind, jf in (("grad", jax.grad), ("hessian", jax.hessian)):
        result = getattr(einderiv, kind)(total, x)
        want = np.asarray(jax.jit(jf(ref))(jnp.asarray(v)))
        for path, got in _paths(result, x=v).items():
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{kind} {path}")


# ------------------------------------------- fault 9's kind: the pole's own column (fixed)

# A function with a pole at 0 and its first and second derivatives by hand (numpy, so that at
# 0 they are the exact infinities the derivative has there).
POLES = {
    "log": (lambda m, a: m.log(a), np.log, lambda a: 1 / a, lambda a: -1 / a ** 2),
    "sqrt": (lambda m, a: m.sqrt(a), np.sqrt, lambda a: 0.5 / np.sqrt(a),
             lambda a: -0.25 / a ** 1.5),
    "1/x": (lambda m, a: 1.0 / a, lambda a: 1 / a, lambda a: -1 / a ** 2, lambda a: 2 / a ** 3),
}

# layout -> (the places of step t of T at stride s, the pole's place first; the pole's factor
# written last in the step's product?)
POLE_LAYOUTS = {
    "pair": (lambda s, t, T: (s * t + s - 1, s * t), False),
    "reversed pair": (lambda s, t, T: (s * t, s * (T - 1 - t) + s - 1), False),
    "triple, pole last": (lambda s, t, T: (s * t + 2, s * t, s * t + 1), True),
}

_POLE_FORMS: dict = {}


def _pole_form(pole, arity, last):
    """g(a) * b * ... (or b * ... * g(a)): one function per kind, so that JAX compiles it once."""
    key = (pole, arity, last)
    if key not in _POLE_FORMS:
        g = POLES[pole][0]

        def form(m, a, *rest):
            total = None
            for factor in ([*rest, g(m, a)] if last else [g(m, a), *rest]):
                total = factor if total is None else total * factor
            return total
        _POLE_FORMS[key] = form
    return _POLE_FORMS[key]


def _pole_spec(pole, layout, stride):
    places, last = POLE_LAYOUTS[layout]

    def spec(t, T):
        found = places(stride, t, T)
        return _pole_form(pole, len(found), last), found
    return spec


def _pole_by_hand(pole, spec, steps, v):
    """The gradient and Hessian of sum_t g(v[p_t]) * v[q_t] * ... by hand, and which Hessian
    entries some step reaches (every other one is an exact 0)."""
    _, g0, g1, g2 = POLES[pole]
    n = v.size
    grad, hess, reached = np.zeros(n), np.zeros((n, n)), np.zeros((n, n), bool)
    with np.errstate(all="ignore"):
        for t in range(steps):
            first, *rest = spec(t, steps)[1]
            a = v[first]

            def prod(skip=()):
                return np.prod([v[p] for k, p in enumerate(rest) if k not in skip])
            grad[first] += g1(a) * prod()
            hess[first, first] += g2(a) * prod()
            for k, p in enumerate(rest):
                grad[p] += g0(a) * prod((k,))
                hess[first, p] += g1(a) * prod((k,))
                hess[p, first] += g1(a) * prod((k,))
                for m, q in enumerate(rest):
                    if m != k:
                        hess[p, q] += g0(a) * prod((k, m))
            places = [first, *rest]
            reached[np.ix_(places, places)] = True
    return grad, hess, reached


@pytest.mark.no_roundtrip  # every path checked here, at the pole
@pytest.mark.sample(2)
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("layout", list(POLE_LAYOUTS))
@pytest.mark.parametrize("pole", list(POLES))
def test_pole_column_keeps_structural_zeros(pole, layout, stride, steps):
    # (fault 9: the Hessian kept the adjoint's sum of unit vectors times 1 / x[p], sqrt's
    # 0.5 / sqrt(x[p]) or 1 / x[p] ** 2, dense: nan down the pole's column on every path)
    if layout == "triple, pole last" and stride < 3:
        pytest.skip("three picks of a step need stride 3 or more")
    spec = _pole_spec(pole, layout, stride)
    n = stride * steps + 2
    x = einderiv.var("x", ("n",))
    total = _built(steps, spec, x)
    results = {kind: getattr(einderiv, kind)(total, x) for kind in ("grad", "hessian")}
    for pole_step in sorted({0, steps - 1}):
        v = np.linspace(0.5, 1.5, n)
        v[spec(pole_step, steps)[1][0]] = 0.0
        grad, hess, reached = _pole_by_hand(pole, spec, steps, v)
        for kind, want in (("grad", grad), ("hessian", hess)):
            for path, got in _paths(results[kind], x=v).items():
                assert _same(got, want), (kind, path, pole_step, got)
                if kind == "hessian":
                    assert np.all(got[~reached] == 0), (path, pole_step)
    if steps == 9:  # (the factor multiplied in is placed by index, not by 0/1 products)
        for result in results.values():
            _no_dense_selection(result.formula)


@pytest.mark.sample(4)
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("layout", list(POLE_LAYOUTS))
@pytest.mark.parametrize("pole", list(POLES))
def test_pole_forms_match_jax_at_ordinary_points(pole, layout, stride, steps):
    # (the products multiplied out over sums of picks give the values they gave)
    if layout == "triple, pole last" and stride < 3:
        pytest.skip("three picks of a step need stride 3 or more")
    _against_jax(_pole_spec(pole, layout, stride), steps, stride * steps + 2, seed=steps)


@pytest.mark.no_roundtrip
def test_squared_log_picks_at_pole_in_first_and_last_step():
    # (fault 9's first form, log(a) * log(a) * b, at stride 2 to 4 and T = 1 to 9)
    for stride in (2, 3, 4):
        for steps in (1, 2, 9):
            x = einderiv.var("x", ("n",))
            total = _built(steps, lambda t, T: ((lambda m, a, b: m.log(a) * m.log(a) * b),
                                                (stride * t, stride * t + 1)), x)
            H = einderiv.hessian(total, x)
            n = stride * steps + 1
            for pole_step in (0, steps - 1):
                v = np.linspace(0.5, 1.5, n)
                v[stride * pole_step] = 0.0
                want = np.zeros((n, n))
                with np.errstate(all="ignore"):
                    for t in range(steps):
                        a, b = v[stride * t], v[stride * t + 1]
                        want[stride * t, stride * t] = b * (2 - 2 * np.log(a)) / a ** 2
                        want[stride * t, stride * t + 1] = want[stride * t + 1, stride * t] = \
                            2 * np.log(a) / a
                for path, got in _paths(H, x=v).items():
                    assert _same(got, want), (stride, steps, pole_step, path, got)
