"""Breaker checks of kernels.stacked_product (13a3a34, 225bad3): the fused input projections'
`a @ reshape(stack(W...), (G * H, K)).T` or `a @ reshape(stack(W..., axis=1), (K, G * H))`,
printed as one kernel call that stacks small weights (or where the rows outnumber K) and
otherwise multiplies weight by weight into column blocks of one result (numpy only).

Each fault found is a test of the right value, marked xfail(strict=True) until it is fixed.
conftest.py also checks every result called here against the IR interpreter and its formula
parsed back.
"""
import numpy as np
import pytest

import einderiv
from einderiv import var
from einderiv.check import relative_error
from einderiv.evaluate import kernels

# the parametrized sweeps: one case in two by default (conftest.py; EINDERIV_SLOW=1 all)
pytestmark = pytest.mark.sample(2)

GATED = ["Wn", "Wz", "Un", "Uz", "bn", "bz"]
STEPS = 4


def _gated(transposed=True, steps=STEPS):
    """A two-gate recurrent unit whose input projections are fused: `U_g @ x_t` (U_g [H, V])
    or, not `transposed`, `x_t @ U_g` (U_g [V, H])."""
    W = {g: var("W" + g, ("H", "H")) for g in "nz"}
    b = {g: var("b" + g, ("H",)) for g in "nz"}
    U = {g: var("U" + g, ("H", "V") if transposed else ("V", "H")) for g in "nz"}
    X = var("X", ("T", "V"))
    h = loss = None
    for t in range(steps):
        pre = {g: (U[g] @ X[t] if transposed else X[t] @ U[g]) + b[g] for g in "nz"}
        if h is not None:
            pre = {g: W[g] @ h + pre[g] for g in "nz"}
        z, n = einderiv.fn.sigmoid(pre["z"]), einderiv.fn.tanh(pre["n"])
        h = (1 - z) * n if h is None else z * h + (1 - z) * n
        loss = einderiv.fn.sum(h * h) if loss is None else loss + einderiv.fn.sum(h * h)
    return loss


def _arrays(V, H, transposed=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for g in "nz":
        arrays["W" + g] = rng.normal(size=(H, H)) / np.sqrt(H)
        arrays["U" + g] = rng.normal(size=(H, V) if transposed else (V, H)) / np.sqrt(V)
        arrays["b" + g] = rng.normal(size=H) / 2
    arrays["X"] = rng.normal(size=(STEPS, V))
    return arrays


def _stacked(a, weights, transposed):
    return a @ (np.concatenate(weights).T if transposed else np.concatenate(weights, axis=1))


@pytest.fixture(scope="module", params=[True, False], ids=["U@x", "x@U"])
def gated(request):
    g = einderiv.grad(_gated(request.param), GATED)
    assert "_kernels.stacked_product(X[:4], [Un, Uz]" in g.source, g.source
    return request.param, g


@pytest.mark.parametrize("transposed", [True, False])
def test_weights_of_mixed_dtypes_are_multiplied_in_the_result_dtype(transposed):
    # a float32 operand, one float32 weight and one float64: the stack is float64, so the
    # product is float64 throughout; multiplied weight by weight, the float32 pair was
    # multiplied in float32 and only then written into the float64 result (9e-7 off, where
    # the stacked product is 1e-16 off); now in the result's dtype.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 300)).astype(np.float32)
    shape = (300, 300)
    weights = [rng.normal(size=shape).astype(np.float32), rng.normal(size=shape)]
    want = _stacked(a.astype(np.float64), weights, transposed)
    got = kernels.stacked_product(a, weights, (600, 300) if transposed else (300, 600), np,
                                  transposed=transposed)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("a_dtype, w_dtype", [(np.float32, np.float64),
                                              (np.float64, np.float32),
                                              (np.int64, np.int64)])
def test_operand_and_weights_of_other_dtypes_give_numpys_dtype(transposed, a_dtype, w_dtype):
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(8, 300)) * 4).astype(a_dtype)
    weights = [(rng.normal(size=(300, 300)) * 4).astype(w_dtype) for _ in range(3)]
    want = _stacked(a, weights, transposed)
    got = kernels.stacked_product(a, weights, (900, 300) if transposed else (300, 900), np,
                                  transposed=transposed)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("transposed", [True, False])
def test_views_aliases_read_only_and_batched_operands(transposed):
    rng = np.random.default_rng(2)
    big = rng.normal(size=(300, 600))
    locked = rng.normal(size=(300, 300))
    locked.flags.writeable = False
    weights = [big[:, :300], big[:, ::2], np.asfortranarray(locked), locked.T, locked]
    shape = (1500, 300) if transposed else (300, 1500)
    for a in (rng.normal(size=(4, 300)), np.asfortranarray(rng.normal(size=(4, 300))),
              rng.normal(size=600)[::2], rng.normal(size=(2, 3, 300)), np.zeros((0, 300))):
        got = kernels.stacked_product(a, weights, shape, np, transposed=transposed)
        np.testing.assert_allclose(got, _stacked(a, weights, transposed), rtol=1e-12,
                                   atol=1e-12)
    assert not locked.flags.writeable


@pytest.mark.parametrize("library", ["torch", "jax", "dask"])
def test_other_backends_fall_back_to_the_stacked_product(library):
    xp = pytest.importorskip({"torch": "torch", "jax": "jax.numpy",
                              "dask": "dask.array"}[library])
    rng = np.random.default_rng(3)
    a, weights = rng.normal(size=(4, 300)), [rng.normal(size=(300, 300)) for _ in range(2)]
    to = {"torch": lambda x: xp.from_numpy(x), "jax": lambda x: xp.asarray(x, dtype=np.float32),
          "dask": lambda x: xp.from_array(x, chunks=-1)}[library]
    for transposed in (True, False):
        got = kernels.stacked_product(to(a), [to(w) for w in weights],
                                      (600, 300) if transposed else (300, 600), xp,
                                      transposed=transposed)
        np.testing.assert_allclose(np.asarray(got), _stacked(a, weights, transposed),
                                   rtol=1e-5 if library == "jax" else 1e-12, atol=1e-4)


# 2 * H * V entries on either side of 16384, rows (4) on either side of V
@pytest.mark.parametrize("V, H", [(3, 4), (128, 64), (129, 64), (2731, 3), (1639, 5)])
def test_programs_on_either_side_of_the_thresholds(gated, V, H):
    transposed, g = gated
    arrays = _arrays(V, H, transposed)
    variants = {"plain": arrays, "one array for both weights": {**arrays, "Uz": arrays["Un"]},
                "Fortran order": {k: np.asfortranarray(v) for k, v in arrays.items()},
                "strided": {**arrays, "Un": np.repeat(arrays["Un"], 2, axis=1)[:, ::2]}}
    for name, given in variants.items():
        for got, want in zip(g(**given), g.evaluate_ir(**given)):
            assert relative_error(got, want) < 1e-12, (name, V, H)


def test_gradient_against_finite_differences(gated):
    # (along one random direction per input: the weights have 9000 entries each)
    transposed, g = gated
    arrays = _arrays(300, 30, transposed)  # 2 * 30 * 300 entries, 4 rows: one by one
    f = einderiv.compile(_gated(transposed), {})
    rng, eps = np.random.default_rng(6), 1e-6
    for name, value in zip(g.wrt, g(**arrays)):
        v = rng.normal(size=arrays[name].shape)
        up = f(**{**arrays, name: arrays[name] + eps * v})
        down = f(**{**arrays, name: arrays[name] - eps * v})
        assert abs(np.sum(value * v) - (up - down) / (2 * eps)) < 1e-6 * np.abs(value).sum(), name


def test_hvp_runs_the_stacked_product():
    hv = einderiv.hvp(_gated(steps=3), ["Un", "Uz"])
    assert "_kernels.stacked_product(" in hv.source
    arrays = _arrays(150, 120)
    rng = np.random.default_rng(4)
    tangent = (rng.normal(size=(120, 150)), rng.normal(size=(120, 150)))
    for got, want in zip(hv(**arrays, tangent=tangent), hv.evaluate_ir(**arrays,
                                                                        tangent=tangent)):
        assert relative_error(got, want) < 1e-12


SHAPES = {"X": ("r", "m"), "A": ("n", "m"), "B": ("n", "m"), "C": ("m", "n"), "D": ("m", "n")}


@pytest.mark.parametrize("expr, printed", [
    # a user's own products of the pattern: printed as the kernel, values right
    ("sum(tanh(X @ reshape(stack(A, B), (2 * n, m)).T))", True),
    ("sum(tanh(X @ reshape(stack(C, D, axis=1), (m, 2 * n))))", True),
    # not the pattern: a stack along another axis, the stack's rows read across weights
    ("sum(tanh(X @ reshape(stack(C, D, axis=2), (m, 2 * n))))", False),
    ("sum(tanh(X @ reshape(stack(A, B, axis=1), (2 * n, m)).T))", False),
    ("sum(tanh(X @ swapaxes(reshape(stack(A, B), (2, n, m)), 1, 2)))", False),
])
@pytest.mark.parametrize("n, m", [(3, 4), (100, 200)])
def test_a_users_expression(expr, printed, n, m):
    f = einderiv.compile(expr, SHAPES)
    assert ("_kernels.stacked_product(" in f.source) == printed, f.source
    rng = np.random.default_rng(5)
    sizes = {"r": 2, "n": n, "m": m}
    arrays = {k: rng.normal(size=tuple(sizes[d] for d in s)) / 10 for k, s in SHAPES.items()
              if k in expr}
    assert relative_error(f(**arrays), f.evaluate_ir(**arrays)) < 1e-12
