"""The scripts in examples/ run and learn what they say they learn (issue 6).

Each example's `main()` returns a small dict of results; the assertions below would fail if a
derivative were wrong (training would stall, Newton would not converge, the fit would miss the
closed form). No timings are asserted.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, capsys) -> tuple[dict, str]:
    result = load(name).main()
    return result, capsys.readouterr().out


def test_every_example_is_tested():
    tested = {"quickstart", "mlp", "gaussian_mle", "softmax_regression", "newton", "char_lstm",
              "newton_cg_logistic", "cnn"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart(capsys):
    r, out = run("quickstart", capsys)
    assert "dw = " in out and "X.T @" in out  # the derived formula is printed first
    assert out.index("dw = ") < out.index("step")
    assert r["final_loss"] < 0.3 * r["initial_loss"]
    assert r["accuracy"] > 0.9


def test_mlp(capsys):
    r, out = run("mlp", capsys)
    assert all(f"d{name} = " in out for name in ("W1", "b1", "W2", "b2"))
    assert r["final_loss"] < 0.05 * r["initial_loss"]
    assert r["accuracy"] >= 0.97


def test_gaussian_mle_matches_the_closed_form(capsys):
    r, out = run("gaussian_mle", capsys)
    assert "logdet" in out and "inv(" in out
    np.testing.assert_allclose(r["mean"], r["sample_mean"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(r["cov"], r["sample_cov"], rtol=1e-3, atol=1e-6)
    # and the closed form is not where the descent started (zero mean, identity covariance)
    assert np.abs(r["sample_mean"]).max() > 0.5
    assert np.abs(r["sample_cov"] - np.eye(3)).max() > 0.5


def test_softmax_regression(capsys):
    r, out = run("softmax_regression", capsys)
    assert "softmax_minus(Z, Y)" in out  # softmax(Z) - Y, exact at a confident right class
    assert r["final_loss"] < 0.5 * r["initial_loss"]
    assert r["accuracy"] > 0.8


def test_newton_converges_quadratically_to_the_optimum(capsys):
    newton = load("newton")
    r = newton.main()
    assert r["converged"] and r["gradient_norms"][-1] < 1e-8
    assert r["iterations"] <= 10
    norms = r["gradient_norms"]
    # quadratic: once below 1, each step squares the norm (up to a constant), until rounding
    small = [g for g in norms if g < 1.0]
    pairs = [(a, b) for a, b in zip(small, small[1:]) if b > 1e-12]
    assert len(pairs) >= 2 and all(b < 10 * a * a for a, b in pairs)
    # the point reached is the optimum by a gradient written by hand
    X, y = newton.make_data()
    w = r["w"]
    hand = w - X.T @ (y / (1.0 + np.exp(y * (X @ w))))  # lam = 1
    assert np.linalg.norm(hand) < 1e-6


def test_newton_cg_with_hessp_converges_to_the_optimum_of_the_full_hessian(capsys):
    """examples/newton_cg_logistic.py at a tenth of its size: SciPy's Newton-CG through
    einderiv.flat, with einderiv.hvp, a hand-written H v and the full Hessian."""
    r = load("newton_cg_logistic").main(n=2000, d=20)
    out = capsys.readouterr().out
    assert "Newton-CG, hessp" in out and "hvp_w = " in out
    runs = r["runs"]
    assert set(runs) == {"hessp", "by hand", "hess"}
    for run in runs.values():
        assert run["result"].success and run["gradient_norm"] < 1e-6
        np.testing.assert_allclose(run["result"].x, runs["hess"]["result"].x, atol=1e-8)
    assert runs["hessp"]["result"].nhev > runs["hessp"]["result"].nit  # products, not Hessians
    # the optimum by a gradient written by hand
    X, y, w, b, lam = r["X"], r["y"], r["w"], r["b"], r["lam"]
    s = y / (1.0 + np.exp(y * (X @ w + b)))
    assert np.linalg.norm(lam * w - X.T @ s) < 1e-6 and abs(s.sum()) < 1e-6


def test_char_lstm_says_hello_world(capsys):
    r, out = run("char_lstm", capsys)
    assert r["text"] == "hello world!"
    assert r["final_loss"] < 0.01 * r["initial_loss"]
    assert "'hello world!'" in out


def test_cnn_learns_stripes_and_checkerboards(capsys):
    """examples/cnn.py: conv2d -> relu -> mean over each map -> linear -> cross-entropy,
    trained on generated images; the filters' gradient is printed as a convolution."""
    r, out = run("cnn", capsys)
    assert "dK = " in out and "conv2d(" in out
    losses = r["losses"]
    assert r["final_loss"] < 0.05 * r["initial_loss"]
    assert all(b < a for a, b in zip(losses[::30], losses[30::30]))  # falling all along
    assert r["accuracy"] >= 0.95  # on images it was not trained on
