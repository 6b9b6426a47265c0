"""`--check` of a Hessian differences the value as written twice (never a derived gradient), and
`--format json` names the outputs as the other printouts do.

Reference values are worked out by hand here (numpy), not by einderiv.
"""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest

import einderiv
from einderiv import cli
from einderiv.check import (MAX_CHECK_STEPS, check_affordable, relative_error,
                            second_difference, second_difference_steps)
from einderiv.errors import EinderivError


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def check_error(out: str) -> float:
    line = next(l for l in out.splitlines() if l.startswith("# check:"))
    return float(line.rsplit(" ", 1)[1])


# -- second_difference ------------------------------------------------------------------------

def test_second_difference_of_a_cubic_against_the_hand_hessian():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 3))
    f = lambda x, A: np.sum(x ** 3) + x @ A @ x
    x = rng.uniform(0.5, 1.5, size=3)
    H = second_difference(f, {"x": x, "A": A}, "x")
    np.testing.assert_allclose(H, np.diag(6 * x) + A + A.T, rtol=1e-6, atol=1e-6)


def test_second_difference_blocks_of_two_variables_and_a_repeat():
    f = lambda x, y: np.sum(x * x * y) + np.sum(np.exp(y))
    x, y = np.array([0.7, 1.2]), np.array([0.9, 1.1])
    blocks = second_difference(f, {"x": x, "y": y}, ["x", "y", "x"])
    hand = {("x", "x"): np.diag(2 * y), ("x", "y"): np.diag(2 * x), ("y", "x"): np.diag(2 * x),
            ("y", "y"): np.diag(np.exp(y))}
    names = ["x", "y", "x"]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert relative_error(blocks[i][j], hand[a, b]) < 1e-6, (a, b)


def test_second_difference_of_a_matrix_variable_has_shape_wrt_plus_wrt():
    f = lambda X: np.sum(X ** 4)
    X = np.array([[0.6, 0.8, 1.0], [1.1, 1.3, 0.7]])
    H = second_difference(f, {"X": X}, "X")
    assert H.shape == (2, 3, 2, 3)
    hand = np.zeros((2, 3, 2, 3))
    for idx in np.ndindex(2, 3):
        hand[idx + idx] = 12 * X[idx] ** 2
    assert relative_error(H, hand) < 1e-6


def test_second_differences_are_refused_beyond_the_step_budget():
    assert second_difference_steps(3) == 6  # pairs, each with itself included
    n = next(n for n in range(1, 1000) if second_difference_steps(n) > MAX_CHECK_STEPS)
    with pytest.raises(EinderivError, match="pairs of entries together"):
        check_affordable(n * n, second_difference_steps(n), second_order=True)
    check_affordable((n - 1) ** 2, second_difference_steps(n - 1), second_order=True)


# -- hessian --check --------------------------------------------------------------------------

@pytest.mark.no_roundtrip
@pytest.mark.parametrize("rule", ["d tanh(x) / dx = 2 * sech2(x)",
                                  "d tanh(x) / dx = 1 - tanh(x)"])
def test_hessian_check_catches_a_wrong_first_derivative_rule(tmp_path, rule):
    rules = tmp_path / "wrong.rules"
    rules.write_text(rule + "\n")
    status, out, err = run("hessian", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                           "--rules", str(rules), "--check")
    assert status == 1 and "check failed" in err and check_error(out) > 1e-2, (out, err)


@pytest.mark.no_roundtrip
def test_hessian_check_catches_a_wrong_second_derivative_rule(tmp_path):
    # The first derivative right, its own derivative (the Hessian's) wrong: sech2's is
    # -2 tanh sech2, here + 2 tanh sech2.
    rules = tmp_path / "wrong.rules"
    rules.write_text("d sech2(x) / dx = 2 * tanh(x) * sech2(x)\n")
    status, out, err = run("hessian", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                           "--rules", str(rules), "--check")
    assert status == 1 and "check failed" in err, (out, err)
    # The gradient does not use that rule: it passes.
    status, out, _ = run("grad", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                         "--rules", str(rules), "--check")
    assert status == 0 and check_error(out) < 1e-8


@pytest.mark.no_roundtrip
def test_hessian_check_catches_a_wrong_rule_in_a_mixed_block(tmp_path):
    rules = tmp_path / "wrong.rules"
    rules.write_text("d tanh(x) / dx = 2 * sech2(x)\n")
    status, out, err = run("hessian", "sum(tanh(W @ x))", "--wrt", "W", "--wrt", "x",
                           "--shape", "W=m,n", "--shape", "x=n", "--rules", str(rules),
                           "--check", "--format", "json")
    assert status == 1 and "check failed" in err
    assert json.loads(out)["check"]["ok"] is False


@pytest.mark.parametrize("expr, wrt, shapes", [
    ("x @ A @ x", ["x"], ["A=n,n", "x=n"]),
    ("sum(log(1 + exp(-y * (X @ w))))", ["w"], ["X=n,d", "y=n", "w=d"]),
    ("sum(tanh(x))", ["x"], ["x=n"]),
    ("logdet(X)", ["X"], ["X=n,n"]),
    ("sum(tanh(W @ x) ** 2)", ["W", "x"], ["W=m,n", "x=n"]),
    ("sum(x * x * y)", ["x", "y", "x"], ["x=n", "y=n"]),
    ("-sum(y * log(softmax(W @ x)))", ["W"], ["W=k,d", "x=d", "y=k"]),
    ("sum(x ** 3) * c", ["c", "x"], ["x=n", "c="]),
])
def test_right_hessians_pass_the_check_well_inside_the_tolerance(expr, wrt, shapes):
    args = ["hessian", expr]
    for w in wrt:
        args += ["--wrt", w]
    for s in shapes:
        args += ["--shape", s]
    status, out, err = run(*args, "--check")
    assert status == 0, (out, err)
    assert check_error(out) < 1e-6, out


def test_a_right_hessian_of_a_function_much_larger_than_it_passes():
    # sum(X @ X) of a 10 x 10 X (a multiple of the identity added): a value 1e4 times its
    # Hessian's entries, where plain second differences at steps of 1e-4 err by 1e-4 already.
    status, out, err = run("hessian", "sum(X @ X)", "--wrt", "X", "--shape", "X=10,10",
                           "--check")
    assert status == 0 and check_error(out) < 1e-5, (out, err)


def test_hessian_check_refuses_too_many_pairs():
    status, out, err = run("hessian", "sum(x ** 3)", "--wrt", "x", "--shape", "x=200", "--check")
    assert status == 2 and "# check" not in out
    assert "pairs of entries together" in err and "give dimensions as names" in err


# -- --format json: output names --------------------------------------------------------------

def _json(*args):
    status, out, err = run(*args, "--format", "json")
    assert status == 0, err
    return json.loads(out)


def _einstein_labels(document) -> set[str]:
    return {line.split("[")[0].split(" =")[0] for line in document["einstein"].splitlines()}


@pytest.mark.parametrize("args, expected", [
    (("grad", "sum(dx * x)", "--wrt", "x", "--shape", "x=n", "--shape", "dx=n"),
     {"dx_1": ["n"]}),
    (("grad", "sum(dx * x * dy * y)", "--wrt", "x", "--wrt", "y", "--shape", "x=n",
      "--shape", "dx=n", "--shape", "y=n", "--shape", "dy=n"), {"dx_1": ["n"], "dy_1": ["n"]}),
    (("jacobian", "dx * x", "--wrt", "x", "--shape", "x=n", "--shape", "dx=n"),
     {"dx_1": ["n", "n"]}),
    (("hessian", "sum(dxdx * x * x)", "--wrt", "x", "--shape", "x=n", "--shape", "dxdx=n"),
     {"dxdx_1": ["n", "n"]}),
    (("grad", "sum(x * x)", "--wrt", "x", "--shape", "x=3"), {"dx": [3]}),
])
def test_json_outputs_are_the_printed_names(args, expected):
    document = _json(*args)
    assert document["outputs"] == expected
    assert set(document["outputs"]).isdisjoint(document["inputs"])
    assert set(document["outputs"]) <= _einstein_labels(document)
    # The generated function says what it computes by the same names.
    computes = re.search(r'"""Compute (.*)\."""', document["python"]).group(1)
    assert computes.split(", ") == list(expected)


def test_json_outputs_of_a_multi_output_formula_are_its_left_hand_sides():
    document = _json("hessian", "sum(dxdx * x * dx)", "--wrt", "x", "--wrt", "dx",
                     "--shape", "x=n", "--shape", "dx=n", "--shape", "dxdx=n")
    outputs = list(document["outputs"])
    assert outputs == ["dxdx_1", "dxddx", "ddxdx", "ddxddx"]
    assert not {"x", "dx", "dxdx"} & set(outputs)
    formula_names = {line.split(" = ")[0] for line in document["formula"].splitlines()}
    assert set(outputs) <= formula_names  # each output has its line, by the same name


def test_json_of_value_and_grad_and_compile_results_uses_the_printed_names():
    shapes = {"x": ("n",), "dx": ("n",), "out": ("n",)}
    vg = einderiv.value_and_grad("sum(dx * x) + sum(out)", "x", shapes)
    document = json.loads(cli.render(vg, "json"))
    assert document["kind"] == "value_and_grad"
    assert list(document["outputs"]) == ["out_1", "dx_1"]
    assert [l.split(" = ")[0] for l in document["formula"].splitlines()] == ["out_1", "dx_1"]
    compiled = einderiv.compile("dx * x + out", shapes)
    document = json.loads(cli.render(compiled, "json"))
    assert document["kind"] == "compile" and document["wrt"] == []
    assert list(document["outputs"]) == ["out_1"]
