"""kernels.sech2 given the forward pass's tanh (`sech2(t0, tanh=t1)` in generated code): on a
large float array it is 1 - tanh ** 2 where that is at least 1 / 64, and 1 / cosh(x) ** 2 below,
where the difference cancels (every digit lost from |x| = 19 on in float64).

- the kernel against mpmath at 30 digits on 20,000+ points per dtype, both signs, through the
  floor and past where tanh rounds to +-1: within 2 / floor ulps (the bound the kernel's
  comment gives, 64 ulps, with a factor 2 for tanh's own rounding); past the floor, the very
  values of the exact path;
- nan, infinities, subnormal arguments; the cases that keep the exact path (no tanh, a small
  array, float16, a strided view, an ndarray subclass, a tanh of another dtype or shape);
- the Python printer: the hint is the live temporary `tanh(u)` of the same argument, and
  nothing else (a rule file's own tanh, no tanh in the program); the generated gradient
  agrees with the IR interpreter (exact sech2) where the pre-activations cancel.
"""
import mpmath as mp
import numpy as np
import pytest

import einderiv
from einderiv.evaluate import kernels
from einderiv.rulebook import default_rulebook
from einderiv.rulebook.table import using_rules

ULPS = 2 / kernels._SECH2_FLOOR


def exact(x):
    with mp.workdps(30):
        return np.array([float(mp.sech(mp.mpf(float(v))) ** 2) for v in np.ravel(x)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("span", ["fast", "saturated"])
def test_within_the_bound_of_mpmath_and_exact_past_the_floor(dtype, span):
    """`fast`: under 1 / 16 of the entries below the floor (|x| > 2.77), each of those from
    the exact path; `saturated`: most below, the exact path on every entry."""
    top = 2.9 if span == "fast" else 12.0
    far = [19.5, -19.5, 25.0, -25.0, 39.0, -39.0]  # (float32's smallest from 52 on)
    grid = np.concatenate([np.linspace(-top, top, 16001), np.geomspace(1e-9, top, 2000),
                           -np.geomspace(1e-9, top, 2000), far])
    x = grid.astype(dtype)
    assert x.size >= kernels._SECH2_FROM_TANH
    t = np.tanh(x)
    below = (1 - t * t) < kernels._SECH2_FLOOR
    assert (below.mean() < 1 / kernels._SECH2_FEW_BELOW) == (span == "fast")
    got = kernels.sech2(x, tanh=t)
    assert got.dtype == dtype and got.shape == x.shape
    want = exact(x)
    seen = want >= np.finfo(dtype).tiny  # (a subnormal result has fewer digits to keep)
    rel = np.abs(got[seen].astype(float) - want[seen]) / want[seen]
    assert rel.max() <= ULPS * np.finfo(dtype).eps, rel.max()
    # where 1 - tanh ** 2 is below the floor, the exact path's own values; above it, on the
    # fast span, 1 - tanh ** 2 (not the exact path's bits everywhere)
    assert below.sum() > 500
    np.testing.assert_array_equal(got[below], kernels.sech2(x[below]))
    if span == "fast":
        assert np.any(got[~below] != kernels.sech2(x[~below]))
    # and the plain formula is what it saves us from: no digit left at |x| = 19
    far = np.abs(x) > 19
    assert np.all((1 - t * t)[far] == 0) and np.all(got[far] > 0)


def test_nan_infinities_and_subnormals():
    x = np.linspace(-3, 3, 9000)
    x[:6] = [np.nan, np.inf, -np.inf, 5e-324, -5e-324, 30.0]
    got = kernels.sech2(x, tanh=np.tanh(x))
    assert np.isnan(got[0]) and got[1] == got[2] == 0.0
    assert got[3] == got[4] == 1.0
    assert got[5] == pytest.approx(float(exact([30.0])[0]), rel=1e-15)
    np.testing.assert_allclose(got[6:], kernels.sech2(x[6:]), rtol=ULPS * 2.3e-16)


@pytest.mark.parametrize("case", ["none", "small", "float16", "strided", "subclass",
                                  "other_dtype", "other_shape"])
def test_the_exact_path_where_the_hint_cannot_be_used(case):
    rng = np.random.default_rng(3)
    x = 4 * rng.normal(size=(128, 128))
    t = np.tanh(x)
    if case == "none":
        t = None
    elif case == "small":
        x, t = x[:8].copy(), t[:8].copy()
    elif case == "float16":
        x = x.astype(np.float16)
        t = np.tanh(x)
    elif case == "strided":
        x, t = x.T, t.T
    elif case == "subclass":
        class Mine(np.ndarray):
            pass
        x, t = x.view(Mine), t.view(Mine)
    elif case == "other_dtype":
        t = t.astype(np.float32)
    elif case == "other_shape":
        t = t.reshape(-1)
    with np.errstate(over="ignore"):
        plain = np.square(1 / np.cosh(x.view(np.ndarray)))
    got = kernels.sech2(x, tanh=t)
    np.testing.assert_array_equal(np.asarray(got), plain)


MLP = "-sum(Y * log(softmax(tanh(X @ W1 + b1) @ W2 + b2, axis=1)))"
MLP_SHAPES = {"X": ("n", "d"), "Y": ("n", "k"), "W1": ("d", "h"), "b1": ("h",),
              "W2": ("h", "k"), "b2": ("k",)}


def _mlp_arrays(scale, n=128, d=16, h=96, k=5):
    rng = np.random.default_rng(7)
    Y = np.eye(k)[rng.integers(0, k, size=n)]
    return {"X": rng.normal(size=(n, d)), "Y": Y, "W1": scale * rng.normal(size=(d, h)),
            "b1": rng.normal(size=h), "W2": rng.normal(size=(h, k)), "b2": rng.normal(size=k)}


@pytest.mark.parametrize("scale", [0.3, 10.0])
def test_the_mlp_gradient_reads_the_forward_tanh_and_agrees_with_the_interpreter(scale):
    """At scale 10 most pre-activations are past |x| = 19, where 1 - tanh ** 2 is 0: the
    gradient by W1 is then all from the exact path, as the IR interpreter's."""
    g = einderiv.grad(MLP, ["W1", "b1", "W2", "b2"], MLP_SHAPES)
    assert "_kernels.sech2(t0, tanh=t1)" in g.source, g.source
    arrays = _mlp_arrays(scale)
    assert arrays["X"].shape[0] * arrays["W1"].shape[1] >= kernels._SECH2_FROM_TANH
    got, want = g(**arrays), g.evaluate_ir(**arrays)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    if scale > 1:
        dW1 = got[0]
        assert np.count_nonzero(dW1) == dW1.size  # no entry lost to cancellation


def test_no_hint_without_a_tanh_temporary_nor_for_a_rule_files_tanh(tmp_path):
    g = einderiv.grad("sum(tanh(X @ w))", "w", {"X": ("n", "d"), "w": ("d",)})
    assert "sech2" in g.source and "tanh=" not in g.source, g.source
    mine = tmp_path / "mine.rules"
    mine.write_text("elementwise tanh(x) = numpy:tanh\nd tanh(x) / dx = sech2(x)\n")
    with using_rules(default_rulebook().copy().load(mine, allow_imports=True)):
        g = einderiv.grad(MLP, ["W1"], MLP_SHAPES)
        assert "sech2" in g.source and "tanh=" not in g.source, g.source
        arrays = _mlp_arrays(1.0)
        np.testing.assert_allclose(g(**arrays), g.evaluate_ir(**arrays), rtol=1e-12)


def test_the_hint_is_read_before_its_temporary_is_deleted():
    """Every `tanh=` name is assigned on an earlier line and deleted on none before it."""
    g = einderiv.grad("sum(tanh(X @ W) ** 3) + sum(tanh(X @ W) * (X @ W))", ["W"],
                      {"X": ("n", "d"), "W": ("d", "h")})
    lines = g.source.splitlines()
    hinted = [i for i, line in enumerate(lines) if "tanh=" in line]
    assert hinted, g.source
    for i in hinted:
        name = lines[i].split("tanh=")[1].split(")")[0]
        assert any(line.strip().startswith(f"{name} = ") for line in lines[:i])
        assert not any(line.strip().startswith("del ") and name in
                       line.strip()[4:].split(", ") for line in lines[:i])
    rng = np.random.default_rng(5)
    arrays = {"X": rng.normal(size=(100, 8)), "W": 3 * rng.normal(size=(8, 90))}
    np.testing.assert_allclose(g(**arrays), g.evaluate_ir(**arrays), rtol=1e-12)
