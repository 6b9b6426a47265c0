"""`einderiv rules list | check` (SPEC §3, §5) and the worked example of CONTRIBUTING.md.

Most runs are in-process through `cli.main` (fast); a few go through `python -m einderiv` to
cover the real process: exit status and no traceback.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import cli
from einderiv.rulebook import default_rulebook, rules_dir
from einderiv.rulebook.verify import TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
ERF_RULES = ROOT / "docs" / "erf.rules"


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "einderiv", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of `path` that starts with `text`."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(text):
            return n
    raise AssertionError(f"{text!r} is not in {path}")


def error_on(line: str) -> float:
    """The number after 'error' on a line of `rules check` output."""
    found = re.search(r"error (\S+)", line)
    assert found, line
    return float(found.group(1))


@pytest.fixture
def in_checkout(monkeypatch):
    """Run from the repository root, where the built-in tables show as rules/*.rules."""
    monkeypatch.chdir(ROOT)



# -- rules list -----------------------------------------------------------------------------------

def test_list_shows_every_function_and_rule_with_file_and_line(capsys, in_checkout):
    code, out, _ = run(capsys, "rules", "list")
    assert code == 0
    elementwise = rules_dir() / "elementwise.rules"
    tanh = line_of(elementwise, "d tanh(x)")
    row = next(l for l in out.splitlines() if l.startswith(f"rules/elementwise.rules:{tanh} "))
    assert re.search(r"d tanh\(x\) / dx\s+= sech2\(x\)$", row), row
    inv = line_of(rules_dir() / "tensor.rules", "d inv(X)")
    assert re.search(rf"^rules/tensor.rules:{inv}\s+d inv\(X\)\[i,j\] / dX\[k,l\]\s+= "
                     r"-inv\(X\)\[i,k\] \* inv\(X\)\[l,j\]$", out, re.M), out
    book = default_rulebook()
    assert len(out.splitlines()) == (len(book.functions) + len(book.derivatives)
                                     + len(book.rewrites))
    softplus = line_of(rules_dir() / "rewrites.rules", "rewrite log(1 + exp(u))")
    assert re.search(rf"^rules/rewrites.rules:{softplus}\s+rewrite log\(1 \+ exp\(u\)\)\s+= "
                     r"softplus\(u\)$", out, re.M), out
    # One column for the location, one for '=': the table is aligned.
    assert len({l.index(" = ") for l in out.splitlines() if len(l.split(" = ")[0]) < 70}) == 1


def test_list_by_name_and_with_a_table_on_top(capsys, in_checkout, tmp_path):
    code, out, _ = run(capsys, "rules", "list", "maximum")
    assert code == 0
    assert [l.split()[1] for l in out.splitlines()] == ["elementwise", "d", "d", "rewrite",
                                                         "rewrite", "rewrite"]
    mine = tmp_path / "mine.rules"
    mine.write_text("# a correction\nd tanh(x) / dx = 1 - tanh(x) * tanh(x)\n")
    code, out, _ = run(capsys, "rules", "list", "tanh", "--rules", str(mine))
    assert code == 0
    assert f"{mine}:2" in out and "1 - tanh(x) * tanh(x)" in out
    assert "= sech2(x)" not in out  # replaced, so no longer listed
    assert default_rulebook().derivative("tanh", 0).body == "sech2(x)"  # untouched


def test_list_of_an_unknown_function(capsys):
    code, out, err = run(capsys, "rules", "list", "softmx")
    assert code == 2 and out == ""
    assert err.startswith("einderiv: error:") and "did you mean 'softmax'" in err


# -- rules check ----------------------------------------------------------------------------------

def test_check_the_built_in_tables(capsys, in_checkout):
    code, out, _ = run(capsys, "rules", "check")
    assert code == 0, out
    lines = out.splitlines()
    book = default_rulebook()
    checked = [l for l in lines if l.startswith("ok ")]
    assert len(checked) == len(book.functions) + len(book.derivatives) + len(book.rewrites)
    assert not [l for l in lines if l.startswith("FAIL")]
    tanh = line_of(rules_dir() / "elementwise.rules", "d tanh(x)")
    row = next(l for l in lines if f"rules/elementwise.rules:{tanh} " in l)
    assert "d tanh(x) / dx = sech2(x)" in row and error_on(row) < TOLERANCE
    assert re.search(rf"checked {len(book.derivatives)} derivative rules, "
                     rf"{len(book.functions)} functions and {len(book.rewrites)} rewrites in "
                     r"[\d.]+ s", lines[-1]), lines[-1]
    assert lines[-1].endswith("all ok")


def test_check_quiet_prints_only_the_summary_when_all_pass(capsys):
    code, out, _ = run(capsys, "rules", "check", "--quiet")
    assert code == 0 and len(out.splitlines()) == 1 and "all ok" in out


CBRT_WRONG = """\
# The real cube root (a name the shipped tables do not have: theirs is cbrt), with a
# derivative that forgot the square.
elementwise cuberoot(x) = xp.cbrt

d cuberoot(x) / dx = 1 / (3 * cuberoot(x))
"""
CBRT_RIGHT = CBRT_WRONG.replace("1 / (3 * cuberoot(x))", "1 / (3 * cuberoot(x) ** 2)")
TANH_WRONG = "# a sign slipped\nd tanh(x) / dx = 1 + tanh(x) ** 2\n"


@pytest.mark.parametrize("wrong, right, rule", [
    (CBRT_WRONG, CBRT_RIGHT, "d cuberoot(x) / dx = 1 / (3 * cuberoot(x))"),
    (TANH_WRONG, TANH_WRONG.replace("1 +", "1 -"), "d tanh(x) / dx = 1 + tanh(x) ** 2"),
], ids=["new-function", "built-in-function"])
def test_check_names_the_line_of_a_wrong_rule(capsys, tmp_path, wrong, right, rule):
    path = tmp_path / "planted.rules"
    path.write_text(wrong)
    n = line_of(path, "d ")
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 1, out
    (failed,) = [l for l in out.splitlines() if l.startswith("FAIL")]
    assert f"{path}:{n} " in failed and rule in failed
    assert error_on(failed) > TOLERANCE
    assert out.splitlines()[-1].endswith(f"1 wrong: {path}:{n}")
    # Only the file's own rules are checked, on top of the built-in tables.
    assert all(str(path) in l for l in out.splitlines()[:-1] if l[:4] in ("ok  ", "FAIL"))

    path.write_text(right)
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 0, out
    row = next(l for l in out.splitlines() if f"{path}:{n} " in l)
    assert row.startswith("ok ") and error_on(row) < TOLERANCE


REWRITE_WRONG = "# a sign slipped\nrewrite log(1 + exp(u)) = softplus(-u)\n"


def test_check_names_the_line_of_a_wrong_rewrite(capsys, tmp_path):
    path = tmp_path / "planted.rules"
    path.write_text(REWRITE_WRONG)
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 1, out
    (failed,) = [l for l in out.splitlines() if l.startswith("FAIL")]
    assert f"{path}:2 " in failed and "rewrite log(1 + exp(u)) = softplus(-u)" in failed
    assert error_on(failed) > TOLERANCE
    assert out.splitlines()[-1].endswith(f"1 wrong: {path}:2")
    assert "checked 0 derivative rules, 0 functions and 1 rewrite in" in out
    path.write_text(REWRITE_WRONG.replace("(-u)", "(u)"))
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 0 and out.startswith(f"ok    {path}:2 "), out


@pytest.mark.parametrize("text, why", [
    # The inner 1 / (1 + exp(u)) is rewritten to sigmoid(-u) first: this pattern never meets
    # anything in the form it is written.
    ("rewrite exp(u) * (1 / (1 + exp(u))) = sigmoid(u)\n", "other rewrites change it first"),
    # A matrix product is not a form the matcher proposes values for.
    ("rewrite sqrt(exp(A @ B)) = exp(0.5 * (A @ B))\n", "never matches its own lowered form"),
    ("rewrite sum(abs(u) ** 2) = sum(u)\n", "error"),  # wrong, by the values
    # Finite values made nan (x < 0): a rewrite may not shrink the domain.
    ("rewrite log(x ** 2) = 2 * log(x)\n", "must be finite wherever its pattern is"),
    # Only at 0, where the pattern is 0: zeros are among the inputs.
    ("rewrite abs(sign(u)) ** 2 = sign(u) ** -2\n",
     "at u = 0 the pattern is 0 but the replacement inf"),
    # Off by 1e-7: a rewrite is exact to rounding, not to finite differences' 1e-6.
    ("rewrite log(1 + exp(u)) = softplus(u) + 1e-7\n", "error 1.0e-07 > 1e-12"),
], ids=["shadowed", "unmatched", "wrong", "domain", "at-zero", "inexact"])
def test_check_of_a_rewrite_that_cannot_be_right(capsys, tmp_path, text, why):
    path = tmp_path / "mine.rules"
    path.write_text(text)
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 1 and why in out and out.startswith(f"FAIL  {path}:1"), out


def test_list_shows_the_rewrites_that_call_a_function(capsys, in_checkout):
    code, out, _ = run(capsys, "rules", "list", "softplus")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split()[1:3] == ["elementwise", "softplus(x)"]
    rewrites = [r for r in rows if r.split()[1] == "rewrite"]
    assert any("rewrite log(1 + exp(u))" in r and r.endswith("= softplus(u)") for r in rewrites)
    assert all(r.startswith("rules/rewrites.rules:") for r in rewrites) and len(rewrites) >= 5


def test_check_leaves_the_process_wide_rules_alone(capsys, tmp_path):
    path = tmp_path / "cbrt.rules"
    path.write_text(CBRT_RIGHT)
    assert run(capsys, "rules", "check", str(path))[0] == 0
    assert default_rulebook().get("cuberoot") is None


@pytest.mark.parametrize("text, why", [
    ("elementwise half(x) = numpy:nonexistent\nd half(x) / dx = 0.5\n", "cannot find"),
    ("elementwise total(x) = numpy:sum\nd total(x) / dx = 1\n", "returned shape ()"),
    ("elementwise hyp(a, b) = numpy:hypot\nd hyp(a, b) / da = a / hyp(a, b)\n",
     "no derivative rule for b"),
    (("tensor lsm(x; axis) -> same = scipy.special:log_softmax\n"
      "d lsm(x)[i] / dx[j] = delta[i,j] - softmax(x)[j]\n"), "last axis"),
], ids=["missing-implementation", "not-elementwise", "missing-derivative", "default-axis"])
def test_check_of_a_function_line(capsys, tmp_path, text, why):
    if "scipy" in text:
        pytest.importorskip("scipy")
    path = tmp_path / "mine.rules"
    path.write_text(text)
    code, out, err = run(capsys, "rules", "check", str(path), "--allow-imports")
    assert code == 1 and err == "", out
    assert why in out and f"{path}:1" in out.splitlines()[-1]


def test_check_in_a_process(tmp_path):
    path = tmp_path / "planted.rules"
    path.write_text(TANH_WRONG)
    result = run_process("rules", "check", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{path}:2" in result.stdout
    result = run_process("rules", "check", "--quiet")
    assert result.returncode == 0 and "all ok" in result.stdout


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("rules", "check"), ("rules", "list", "--rules")])
def test_a_missing_file_is_bad_input(capsys, tmp_path, args):
    code, out, err = run(capsys, *args, str(tmp_path / "nowhere.rules"))
    assert code == 2 and out == ""
    assert err.startswith("einderiv: error: cannot read rule file")
    assert "nowhere.rules" in err and "Traceback" not in err


@pytest.mark.parametrize("text, line, marked", [
    ("elementwise erf(x) == scipy.special:erf\n", 1, "="),
    ("# fine so far\nd exp(x) / dy = exp(x)\n", 2, "dy"),
    ("elementwise erf(x) = scipy.special:erf\nd erf(x) / dx = 2 * exp(-x ** * 2)\n", 2, "*"),
    ("rewrite log(1 + exp(u)) = softplus(v)\n", 1, "v"),
    ("rewrite log(exp(u) +) = u\n", 1, ")"),
    ("rewrite sign(u) * abs(u) = u * u * u\n", 1, "u"),
    ("rewrite log(exp(u)) = exp(log(u))\n", 1, "log(exp(u)) = exp(log(u))"),
    ("rewrite log(softmax(x, axis)) = log_softmax(axis)\n", 1, "axis"),
    ("rewrite sqrt(u) = norm(u)\n", 1, "sqrt(u) = norm(u)"),  # as many calls, as many uses
    ("# brackets\nrewrite log(1 + exp(u) = softplus(u)\n", 2, "("),
    ("rewrite log(1 + exp(u))) = softplus(u)\n", 1, ")"),
    ("rewrite log(1 + exp(u]) = softplus(u)\n", 1, "]"),
], ids=["rule-syntax", "not-a-parameter", "right-hand-side-syntax", "rewrite-unbound",
        "rewrite-syntax", "rewrite-copies", "rewrite-does-not-end", "rewrite-axis-as-tensor",
        "rewrite-does-not-shrink", "rewrite-unclosed-bracket", "rewrite-stray-bracket",
        "rewrite-mismatched-bracket"])
def test_a_malformed_rule_is_bad_input_with_a_caret(capsys, tmp_path, text, line, marked):
    path = tmp_path / "bad.rules"
    path.write_text(text)
    code, out, err = run(capsys, "rules", "check", str(path), "--allow-imports")
    assert code == 2 and out == ""
    assert err.startswith("einderiv: error:") and f"bad.rules:{line}" in err
    lines = err.splitlines()
    caret = next(i for i, l in enumerate(lines) if l.strip() and set(l.strip()) == {"^"})
    quoted = text.splitlines()[line - 1]
    assert lines[caret - 1] == "  " + quoted
    start = lines[caret].index("^") - 2
    assert quoted[start:start + lines[caret].count("^")] == marked


@pytest.mark.parametrize("text, why", [
    ("rewrite log(1 + exp(u) = softplus(u)\n", "the bracket '(' is never closed"),
    ("rewrite log(1 + exp(u))) = softplus(u)\n", "')' closes no bracket"),
    ("rewrite log(1 + exp(u]) = softplus(u)\n", "']' cannot close '('"),
])
def test_unbalanced_brackets_in_a_rewrite_are_named(capsys, tmp_path, text, why):
    path = tmp_path / "bad.rules"
    path.write_text(text)
    code, _, err = run(capsys, "rules", "check", str(path))
    assert code == 2 and f"bad.rules:1: {why}" in err and "PATTERN = REPLACEMENT" not in err


def test_a_malformed_rule_in_a_process(tmp_path):
    path = tmp_path / "bad.rules"
    path.write_text("def f(x) x\n")
    result = run_process("rules", "check", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("einderiv: error:") and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("rules",), ("rules", "list"), ("rules", "check")])
def test_help_shows_examples(capsys, args):
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "einderiv rules " in out


# -- the worked example of CONTRIBUTING.md: erf from a rule file alone ---------------------------

def test_erf_example_passes_the_check(capsys, in_checkout):
    pytest.importorskip("scipy")
    code, out, _ = run(capsys, "rules", "check", "docs/erf.rules", "--allow-imports")
    assert code == 0, out
    assert [l.split()[:2] for l in out.splitlines()[:-1]] == [
        ["ok", f"docs/erf.rules:{line_of(ERF_RULES, 'elementwise erf')}"],
        ["ok", f"docs/erf.rules:{line_of(ERF_RULES, 'd erf')}"]]


def test_erf_example_gradient_from_the_command_line(capsys, in_checkout, restore_default_rules):
    special = pytest.importorskip("scipy.special")
    code, out, _ = run(capsys, "grad", "sum(erf(x))", "--wrt", "x", "--shape", "x=n",
                       "--rules", "docs/erf.rules", "--allow-imports", "--check")
    assert code == 0
    formula, check = out.rstrip("\n").split("\n")
    assert check.startswith("# check:") and float(check.split()[-1]) < TOLERANCE
    # The printed formula, evaluated, against central differences of scipy's erf itself.
    x = np.linspace(-2.0, 2.0, 9)
    h = 1e-6
    expected = (special.erf(x + h) - special.erf(x - h)) / (2 * h)
    got = einderiv.compile(formula, {"x": ("n",)})(x=x)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9)


def test_erf_example_from_python(restore_default_rules):
    special = pytest.importorskip("scipy.special")
    einderiv.load_rules(ERF_RULES, allow_imports=True)
    x = np.array([-1.5, 0.0, 0.3, 2.0])
    np.testing.assert_allclose(einderiv.compile("erf(x)", {"x": ("n",)})(x=x), special.erf(x))
    g = einderiv.grad("sum(erf(x))", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), 2 / np.sqrt(np.pi) * np.exp(-x ** 2), rtol=1e-12)


def test_contributing_shows_the_erf_rule_file_as_it_is():
    guide = (ROOT / "CONTRIBUTING.md").read_text()
    assert ERF_RULES.read_text().strip() in guide
    assert "einderiv rules check docs/erf.rules --allow-imports" in guide
