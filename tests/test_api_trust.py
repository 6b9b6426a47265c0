"""The API surface and the command line never return a wrong value silently (issue 10).

Names: one check (`einderiv.parse.parser.check_name`) for every way a name comes in. Repeated
`wrt`: the repeated entries, mapped by position. The rule book under threads. `--check` and its
tolerance. Symbolic tensors that Python or numpy would iterate or convert. Bounded reads of
standard input, and `--rules` scoped to one run of the command line.
"""
from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import cli, fn
from einderiv.errors import EinderivError, ParseError, RuleError, ShapeError
from einderiv.rulebook import default_rulebook

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- 7: names are ASCII, however they come in --------------------------------------------------

# Python reads these (NFKC) as t0, x and n: accepted, they would be the generated temporary t0,
# or collide with the variable x in the generated code.
BOLD_T0, ITALIC_X, ITALIC_N = "\U0001d42d0", "\U0001d465", "\U0001d45b"


@pytest.mark.parametrize("make, error", [
    (lambda: einderiv.var(BOLD_T0, ("n",)), ParseError),
    (lambda: einderiv.var(ITALIC_X, ("n",)) + einderiv.var("x", ("n",)), ParseError),
    (lambda: einderiv.var("x", (ITALIC_N,)), ShapeError),
    (lambda: einderiv.compile("x", {ITALIC_X: ("n",)}), ShapeError),
    (lambda: einderiv.compile("x", {"x": (ITALIC_N,)}), ShapeError),
    (lambda: einderiv.grad("sum(x * x)", ITALIC_X, {"x": ("n",)}), ParseError),
    (lambda: einderiv.grad("sum(x * x)", ["x", BOLD_T0], {"x": ("n",)}), ParseError),
    (lambda: fn.ones(ITALIC_N), ParseError),
], ids=["var-temporary", "var-folds-to-x", "var-dimension", "shapes-key", "shapes-dimension",
        "wrt", "wrt-list", "fn-dimension"])
def test_a_name_python_would_fold_is_a_clear_error(make, error):
    with pytest.raises(error) as info:
        make()
    message = str(info.value)
    assert "is not a valid name" in message and "write it in ASCII" in message
    assert (BOLD_T0 in message) or (ITALIC_X in message) or (ITALIC_N in message)


@pytest.mark.parametrize("name", ["None", "1x", "x-y", "", "x y"])
def test_other_bad_names(name):
    with pytest.raises(ParseError, match="is not a valid name"):
        einderiv.var(name, ("n",))
    with pytest.raises(ShapeError, match="is not a valid name"):
        einderiv.compile("sum(x)", {"x": ("n",), name: ()})


def test_a_folded_name_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["grad", "sum(x * x)", "--wrt", "x", "--shape", f"{ITALIC_X}=n"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "is not a valid name" in err and "'x'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["grad", "sum(x * x)", "--wrt", "x", "--shape", f"x={ITALIC_N}"])
    assert "dimension" in capsys.readouterr().err


def test_a_temporary_named_t0_by_the_user_stays_the_users():
    # An ASCII `t0` is a name like any other: the printers keep it apart from their temporaries.
    t0 = einderiv.var("t0", ("n",))
    g = einderiv.grad(fn.sum(fn.tanh(t0) * fn.tanh(t0) * t0), "t0")
    x = np.array([0.3, -1.2, 2.0])
    expected = np.tanh(x) ** 2 + 2 * x * np.tanh(x) * (1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(g(t0=x), expected, rtol=1e-12)


# -- einderiv.var: shapes and numpy integers --------------------------------------------------

def test_var_takes_numpy_integers_as_sizes():
    x = einderiv.var("x", np.int64(3))
    A = einderiv.var("A", (np.int32(2), np.int64(3)))
    f = einderiv.compile(A @ x)
    assert f.shape == ("2",)
    np.testing.assert_allclose(f(A=np.ones((2, 3)), x=np.arange(3.0)), [3.0, 3.0])
    with pytest.raises(ShapeError, match=r"should have shape \[3\]"):
        einderiv.compile(fn.sum(x))(x=np.ones(4))
    # shapes= too, as an array's .shape gives them
    g = einderiv.compile("sum(x)", {"x": (np.int64(3),)})
    assert float(g(x=np.ones(3))) == 3.0


@pytest.mark.parametrize("shape", [None, 2.5, (None,), ("n", 1.0), (True,)])
def test_var_with_a_bad_shape_is_a_shape_error(shape):
    with pytest.raises(ShapeError, match="the shape of 'x'"):
        einderiv.var("x", shape)


# -- symbolic tensors are not arrays -----------------------------------------------------------

def test_iterating_a_symbolic_tensor_is_a_type_error():
    X = einderiv.var("X", ("n", "d"))
    for attempt in (lambda: [row for row in X], lambda: list(X), lambda: 3 in X,
                    lambda: len(X), lambda: np.asarray(X)):
        with pytest.raises(TypeError) as info:
            attempt()
        assert isinstance(info.value, EinderivError) and "symbolic tensor" in str(info.value)


@pytest.mark.parametrize("call, name", [
    (np.exp, "einderiv.fn.exp"), (np.tanh, "einderiv.fn.tanh"), (np.abs, "einderiv.fn.abs"),
    (np.sum, "einderiv.fn.sum"), (lambda x: np.maximum(x, 0.0), "einderiv.fn.maximum"),
    (np.hypot.reduce, "einderiv.fn.hypot"), (np.arctan2.reduce, "einderiv.fn has no arctan2"),
])
def test_a_numpy_function_of_a_symbolic_tensor_names_the_einderiv_one(call, name):
    with pytest.raises(TypeError) as info:
        call(einderiv.var("x", ("n",)))
    assert isinstance(info.value, EinderivError) and name in str(info.value)


@pytest.mark.parametrize("attempt, words", [
    (lambda x: float(fn.sum(x)), "sum(x) has no value for float()"),
    (lambda x: int(fn.sum(x)), "has no value for int()"),
    (lambda x: round(x), "has no value for round()"),
    (lambda x: np.ones(3)[x], "no values"),
    (lambda x: x % 2, "has no % on tensors"),
    (lambda x: 2 % x, "has no % on tensors"),
    (lambda x: divmod(x, 2), "has no divmod on tensors"),
])
def test_what_python_does_with_values_is_a_clear_type_error(attempt, words):
    with pytest.raises(TypeError) as info:
        attempt(einderiv.var("x", ("n",)))
    assert isinstance(info.value, EinderivError) and words in str(info.value)
    assert "hint: " in str(info.value)


def test_abs_and_huge_numbers_of_symbolic_tensors():
    x = einderiv.var("x", ("n",))
    v = np.array([-1.5, 2.0])
    np.testing.assert_array_equal(einderiv.compile(abs(x))(x=v), [1.5, 2.0])
    np.testing.assert_array_equal(einderiv.grad(fn.sum(abs(x)), "x")(x=v), [-1.0, 1.0])
    # As the language reads the literal 1e400: infinite.
    np.testing.assert_array_equal(einderiv.compile(x + 10 ** 400)(x=v), [np.inf, np.inf])
    np.testing.assert_array_equal(einderiv.compile(x - 10 ** 400)(x=v), [-np.inf, -np.inf])
    np.testing.assert_array_equal(einderiv.compile(-(10 ** 400) * x)(x=v), [np.inf, -np.inf])
    with pytest.raises(EinderivError, match="an axis must be an integer"):
        fn.sum(einderiv.var("X", ("n", "d")), axis=1.0)


def test_numbers_still_combine_with_symbolic_tensors():
    x = einderiv.var("x", ("n",))
    f = einderiv.compile(fn.sum(np.float64(2.0) * x + np.int64(1) - x * np.float32(0.5)))
    assert float(f(x=np.array([1.0, 2.0]))) == pytest.approx(2 * 3 + 2 - 1.5)
    with pytest.raises(EinderivError, match="cannot combine a symbolic tensor with ndarray"):
        np.ones(2) + x


# -- 8: a repeated or prefix-sharing wrt --------------------------------------------------------

SHAPES = {"x": ("n",), "xdx": ("n",)}
X = np.array([1.0, 2.0])
XDX = np.array([3.0, 0.5])


def test_hessian_blocks_of_names_whose_labels_concatenate_alike():
    # f = sum(x*x*xdx) + sum(xdx**3): the labels 'd'+'x'+'d'+'xdx' and 'd'+'xdx'+'d'+'x' are one
    # string; each block is its own output all the same.
    H = einderiv.hessian("sum(x*x*xdx) + sum(xdx**3)", ["x", "xdx"], SHAPES)
    blocks = H(x=X, xdx=XDX)
    assert [len(row) for row in blocks] == [2, 2]
    np.testing.assert_allclose(blocks[0][0], np.diag(2 * XDX))
    np.testing.assert_allclose(blocks[0][1], np.diag(2 * X))
    np.testing.assert_allclose(blocks[1][0], np.diag(2 * X))
    np.testing.assert_allclose(blocks[1][1], np.diag(6 * XDX))
    assert len(set(H.roots)) == 4


def test_a_repeated_wrt_returns_the_repeated_entries():
    g = einderiv.grad("sum(x*x)", ["x", "x"], {"x": ("n",)})
    first, second = g(x=X)
    np.testing.assert_allclose(first, 2 * X)
    np.testing.assert_allclose(second, 2 * X)
    assert first is not second  # updating one in place leaves the other alone
    assert len(g.roots) == 1  # derived and computed once

    value, grads = einderiv.value_and_grad("sum(x*x*xdx)", ["xdx", "x", "xdx"], SHAPES)(
        x=X, xdx=XDX)
    assert float(value) == pytest.approx(float(np.sum(X * X * XDX)))
    assert len(grads) == 3
    for got, want in zip(grads, (X * X, 2 * X * XDX, X * X)):
        np.testing.assert_allclose(got, want)

    (J1, J2) = einderiv.jacobian("x * xdx", ["x", "x"], SHAPES)(x=X, xdx=XDX)
    np.testing.assert_allclose(J1, np.diag(XDX))
    np.testing.assert_allclose(J2, np.diag(XDX))


def test_a_hessian_with_a_repeated_wrt():
    H = einderiv.hessian("sum(x*x*xdx)", ["x", "xdx", "x"], SHAPES)
    blocks = H(x=X, xdx=XDX)
    assert [len(row) for row in blocks] == [3, 3, 3]
    expected = {("x", "x"): np.diag(2 * XDX), ("x", "xdx"): np.diag(2 * X),
                ("xdx", "x"): np.diag(2 * X), ("xdx", "xdx"): np.zeros((2, 2))}
    names = ["x", "xdx", "x"]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            np.testing.assert_allclose(blocks[i][j], expected[a, b], err_msg=f"{a}, {b}")
    assert blocks[0][0] is not blocks[2][2]


def test_a_repeated_wrt_on_the_command_line(capsys):
    code, out, err = run(capsys, "hessian", "sum(x*x*xdx) + sum(xdx**3)", "--wrt", "x",
                         "--wrt", "xdx", "--wrt", "x", "--shape", "x=n", "--shape", "xdx=n",
                         "--check")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("# check:")


# -- 13: --check fails above its tolerance ----------------------------------------------------

TANH_WRONG = "# a sign slipped\nd tanh(x) / dx = 1 + tanh(x) ** 2\n"


def check_error(out: str) -> float:
    return float(out.splitlines()[-1].split()[-1])


def test_check_passes_a_right_derivative(capsys):
    code, out, err = run(capsys, "grad", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                         "--check")
    assert code == 0 and err == "" and check_error(out) < 1e-8


def test_check_fails_a_derivative_from_a_wrong_user_rule(capsys, tmp_path):
    path = tmp_path / "wrong.rules"
    path.write_text(TANH_WRONG)
    code, out, err = run(capsys, "grad", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n",
                         "--rules", str(path), "--check")
    assert code == 1
    assert check_error(out) > 0.1
    assert err.startswith("einderiv: check failed:") and "above the tolerance 0.0001" in err


@pytest.mark.parametrize("expr", ["sum(log(x - 9))", "sum(sqrt(-x - 9))",
                                  "sum(arctanh(x) * log(x - 1))"])
def test_check_fails_when_it_cannot_compare(capsys, expr):
    # At the random inputs of every range the check tries (entries from -2.5 to 2.5) both
    # sides are nan somewhere: nothing is verified. (log(x - 1) is checked in [1.5, 2.5].)
    code, out, err = run(capsys, "grad", expr, "--wrt", "x", "--shape", "x=n", "--check")
    assert code == 1 and out.splitlines()[-1].endswith("nan")
    assert "check failed" in err and "not finite" in err and "Warning" not in err


def test_check_tolerance_option(capsys):
    args = ("grad", "sum(tanh(x))", "--wrt", "x", "--shape", "x=n", "--check")
    code, _, err = run(capsys, *args, "--tol", "1e-30")
    assert code == 1 and "above the tolerance 1e-30" in err
    assert run(capsys, *args, "--tol", "0.5")[0] == 0
    for bad in ("0", "-1", "nan", "inf", "abc"):
        with pytest.raises(SystemExit) as info:
            cli.main([*args, "--tol", bad])
        assert info.value.code == 2
        assert "expected a positive number" in capsys.readouterr().err
    code, _, err = run(capsys, *args[:-1], "--tol", "1e-3")
    assert code == 2 and "--tol sets the tolerance of --check" in err


def test_help_describes_check_and_tol(capsys):
    with pytest.raises(SystemExit):
        cli.main(["grad", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit 1 when it is above --tol" in out and "default 0.0001" in out
    assert "as the IR interpreter computes it (an independent path" in out


# Not round-tripped: the generated code is made wrong on purpose here.
@pytest.mark.no_roundtrip
@pytest.mark.parametrize("kind, expr", [("grad", "sum(x * x)"), ("jacobian", "x * x"),
                                        ("hessian", "sum(x * x * x)")])
def test_check_does_not_trust_the_generated_code(capsys, monkeypatch, kind, expr):
    # Generated code wrong in the same way for the value and the derivative (every result
    # doubled): differences of the generated forward would agree with it; the IR interpreter's
    # do not.
    from einderiv.generate.function import GeneratedFunction
    call = GeneratedFunction.__call__
    monkeypatch.setattr(GeneratedFunction, "__call__",
                        lambda self, arrays: tuple(2 * r for r in call(self, arrays)))
    code, out, err = run(capsys, kind, expr, "--wrt", "x", "--shape", "x=n", "--check")
    assert code == 1 and check_error(out) > 0.3 and "check failed" in err


@pytest.mark.parametrize("args, message", [
    (("grad", "sum(x)", "--shape", "x=" + ",".join(["n"] * 20)),
     "the random inputs of the check would have more than 10,000,000 entries"),
    (("grad", "sum(x)", "--shape", "x=999999999999999"), "('x' has shape (999999999999999,))"),
    (("grad", "sum(x)", "--shape", "x=1000000000"), "the check allocates at most 10,000,000"),
    (("grad", "sum(x)", "--shape", "x=100000"), "would perturb 100,000 entries one at a time"),
    (("jacobian", "x * y", "--shape", "x=5000", "--shape", "y=5000"),
     "the derivatives to check would have 25,000,000 entries"),
    (("hessian", "sum(x)", "--shape", "x=6000"), "would have 36,000,000 entries"),
])
def test_check_refuses_sizes_it_cannot_afford(capsys, args, message):
    code, out, err = run(capsys, *args, "--wrt", "x", "--check")
    assert code == 2 and "# check" not in out and "Traceback" not in err
    assert err.startswith("einderiv: error: ") and message in err
    assert "give dimensions as names" in err


def test_random_inputs_are_refused_before_they_are_allocated():
    from einderiv.check import random_inputs
    with pytest.raises(EinderivError, match="more than 10,000,000 entries"):
        random_inputs({"x": (10 ** 30,), "y": ("n",)}, np.random.default_rng(0))
    arrays = random_inputs({"x": ("n", "n"), "y": ("n",)}, np.random.default_rng(0))
    assert arrays["x"].shape == arrays["y"].shape * 2 and 2 <= len(arrays["y"]) <= 4


# -- C3: a repeated --shape -------------------------------------------------------------------

def test_a_variable_given_two_shapes_on_the_command_line_is_an_error(capsys):
    for second, shown in (("x=m", "[n] and [m]"), ("x=", "[n] and []"), ("x=n,n", "[n] and [n, n]")):
        with pytest.raises(SystemExit) as info:
            cli.main(["grad", "sum(x)", "--wrt", "x", "--shape", "x=n", "--shape", second])
        assert info.value.code == 2
        assert f"--shape gives 'x' two shapes: {shown}" in capsys.readouterr().err
    code, out, _ = run(capsys, "grad", "sum(x)", "--wrt", "x", "--shape", "x=n", "--shape",
                       "x= n")
    assert code == 0 and out == "ones(n)\n"  # the same shape again is fine


# -- reading standard input and rule files is bounded -----------------------------------------

def test_standard_input_is_read_up_to_the_limit(capsys, monkeypatch):
    from einderiv.parse.parser import MAX_PROGRAM_CHARS
    asked = []

    class Endless(io.TextIOBase):
        def read(self, n=-1):
            if n is None or n < 0:
                raise AssertionError("read without a limit")
            asked.append(n)
            return "\0" * n
    monkeypatch.setattr(sys, "stdin", Endless())
    code, out, err = run(capsys, "grad", "-", "--wrt", "x")
    assert code == 2 and out == ""
    assert asked == [MAX_PROGRAM_CHARS + 1]
    assert f"standard input is too long: more than {MAX_PROGRAM_CHARS} characters" in err


def test_standard_input_holds_a_program_longer_than_one_statement(capsys, monkeypatch):
    # A whole program (a long network's formula) may exceed one statement's limit.
    # (Long names: past one statement's characters, within a derivation's operations.)
    from einderiv.parse.parser import MAX_GRADIENT_OPERATIONS, MAX_SOURCE_CHARS
    name = "y" * 60
    source = f"{name} = x * x\n" * (MAX_SOURCE_CHARS // 60 + 1) + f"sum({name})"
    assert len(source) > MAX_SOURCE_CHARS and source.count("*") < MAX_GRADIENT_OPERATIONS
    monkeypatch.setattr(sys, "stdin", io.StringIO(source))
    code, out, err = run(capsys, "grad", "-", "--wrt", "x", "--shape", "x=n")
    assert code == 0, err
    assert "2 * x" in out


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_ends_in_a_process():
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run([sys.executable, "-m", "einderiv", "grad", "-", "--wrt", "x"],
                                stdin=zero, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "too long" in result.stderr
    result = subprocess.run([sys.executable, "-m", "einderiv", "rules", "check", "/dev/zero"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "too long" in result.stderr
    assert "Traceback" not in result.stderr


# -- --rules holds for one run of the command line --------------------------------------------

def test_rules_files_are_scoped_to_one_run(capsys, tmp_path):
    path = tmp_path / "cube.rules"
    path.write_text("def cube(x) = x * x * x\n")
    before = default_rulebook()
    for _ in range(3):
        code, out, err = run(capsys, "grad", "sum(cube(x))", "--wrt", "x", "--shape", "x=n",
                             "--rules", str(path))
        assert code == 0, err
        x = np.array([0.5, -2.0])
        np.testing.assert_allclose(einderiv.compile(out, {"x": ("n",)})(x=x), 3 * x ** 2)
    assert default_rulebook() is before and before.get("cube") is None
    with pytest.raises(EinderivError, match="unknown function 'cube'"):
        einderiv.compile("cube(x)", {"x": ()})
    code, _, err = run(capsys, "grad", "sum(cube(x))", "--wrt", "x", "--shape", "x=n")
    assert code == 2 and "unknown function 'cube'" in err


# -- 6(c): the rule book under threads ---------------------------------------------------------

def test_load_rules_while_other_threads_use_the_rules(tmp_path, restore_default_rules, run_threads):
    files = []
    for k in range(40):
        path = tmp_path / f"f{k}.rules"
        path.write_text(f"def f{k}(x) = x * {k + 1}\n")
        files.append(path)
    errors, done = [], threading.Event()
    x = np.array([1.0, 2.0])

    def load():
        try:
            for path in files:
                einderiv.load_rules(path)
        except BaseException as e:  # pragma: no cover - what the test looks for
            errors.append(e)
        finally:
            done.set()

    def use():
        try:
            while not done.is_set():
                assert "tanh" in dir(fn)
                g = einderiv.grad(fn.sum(fn.tanh(einderiv.var("x", ("n",)))), "x")
                np.testing.assert_allclose(g(x=x), 1 - np.tanh(x) ** 2)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    run_threads((load,), (use,), (use,), (use,), timeout=60)
    assert not errors, errors
    # Every load took effect, none lost to another.
    assert all(default_rulebook().get(f"f{k}") is not None for k in range(40))
    assert float(einderiv.compile("f39(x)", {"x": ()})(x=1.0)) == 40.0


def test_the_rule_book_in_force_is_never_changed_in_place(restore_default_rules, tmp_path):
    einderiv.load_rules(ROOT / "rules" / "definitions.rules")  # any file: the book is swapped
    book = default_rulebook()
    with pytest.raises(RuleError, match="never changed in place"):
        book.load(ROOT / "rules" / "definitions.rules")
    assert not book.copy().frozen


def test_a_result_keeps_the_rules_it_was_made_with(restore_default_rules, tmp_path):
    g = einderiv.grad("sum(tanh(x))", "x", {"x": ("n",)})
    path = tmp_path / "wrong.rules"
    path.write_text(TANH_WRONG)
    einderiv.load_rules(path)
    x = np.array([0.5, -1.0])
    np.testing.assert_allclose(g(x=x), 1 - np.tanh(x) ** 2)  # made before the load
    later = einderiv.grad("sum(tanh(x))", "x", {"x": ("n",)})
    np.testing.assert_allclose(later(x=x), 1 + np.tanh(x) ** 2)
