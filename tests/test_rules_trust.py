"""Rule files are data unless they import (issue 10): imports are opt-in, implementations name
public attributes only, and whatever an implementation raises fails its check.

The module `evilmod` of these tests lies beside the rule file, as it would beside a downloaded
one; importing it leaves a marker file, so a test sees whether it was imported.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv import cli
from einderiv.rulebook import default_rulebook, rules_dir
from einderiv.rulebook.table import RuleBook, parse_rules, resolve

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def downloaded(tmp_path, monkeypatch):
    """A rule file using `evilmod:twice`, with evilmod.py beside it, importable."""
    module = f"evilmod_{tmp_path.name}"  # a fresh name: no test sees another's import
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def twice(x):\n    return 2 * x\n")
    path = tmp_path / "downloaded.rules"
    path.write_text(f"# looks harmless\nelementwise twice(x) = {module}:twice\n"
                    "d twice(x) / dx = 2 + 0 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path, marker, module
    sys.modules.pop(module, None)


def test_load_rules_refuses_an_import_unless_allowed(downloaded, restore_default_rules):
    path, marker, module = downloaded
    with pytest.raises(einderiv.RuleError) as info:
        einderiv.load_rules(path)
    message = str(info.value)
    assert f"downloaded.rules:2" in message and f"imports the Python module '{module}'" in message
    assert "trusted code" in message and "allow_imports=True" in message
    assert f"  elementwise twice(x) = {module}:twice" in message  # the line, with a caret
    assert not marker.exists() and module not in sys.modules
    assert default_rulebook().get("twice") is None

    einderiv.load_rules(path, allow_imports=True)
    x = np.array([1.0, -3.0])
    np.testing.assert_allclose(einderiv.compile("twice(x)", {"x": ("n",)})(x=x), 2 * x)
    assert marker.exists()


@pytest.mark.parametrize("command", [
    ("rules", "check"),
    ("grad", "sum(twice(x))", "--wrt", "x", "--shape", "x=n", "--check", "--rules"),
])
def test_the_command_line_refuses_an_import_unless_allowed(capsys, downloaded, command):
    path, marker, module = downloaded
    code, out, err = run(capsys, *command, str(path))
    assert code == 2 and out == ""
    assert "trusted code" in err and "--allow-imports" in err and "Traceback" not in err
    assert not marker.exists() and module not in sys.modules

    code, out, err = run(capsys, *command, str(path), "--allow-imports")
    assert code == 0, out + err
    assert marker.exists()
    if command[0] == "grad":
        assert out.splitlines()[0] == "2 * ones(n)"
    assert default_rulebook().get("twice") is None  # for that run only


def test_rules_list_reads_a_file_with_imports_without_importing(capsys, downloaded):
    path, marker, module = downloaded
    code, out, _ = run(capsys, "rules", "list", "twice", "--rules", str(path))
    assert code == 0 and f"{module}:twice" in out
    assert not marker.exists()


def test_help_says_a_rule_file_with_imports_is_trusted_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["rules", "check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "is trusted code" in out and "--allow-imports" in out
    assert "no text of a rule file is evaluated" in out
    readme = " ".join((ROOT / "README.md").read_text().split())
    guide = " ".join((ROOT / "CONTRIBUTING.md").read_text().split())
    assert "trusted code" in readme and "allow_imports=True" in readme
    assert "trusted code" in guide and "--allow-imports" in guide


def test_the_shipped_tables_import_nothing():
    for path in sorted(rules_dir().glob("*.rules")):
        parse_rules(path.read_text(), str(path), bodies=True, allow_imports=False)
    assert RuleBook().load(ROOT / "docs" / "erf.rules", allow_imports=True).get("erf")


@pytest.mark.parametrize("impl, part", [
    ("xp.__class__.__bases__", "__class__"),
    ("xp._private", "_private"),
    ("xp.linalg.__dict__", "__dict__"),
    ("kernel.__builtins__", "__builtins__"),
    ("kernel._check", "_check"),
    ("os:_exit", "_exit"),
    ("_thread:exit", "_thread"),
    ("os.__loader__:load_module", "__loader__"),
])
def test_an_implementation_reaches_public_names_only(capsys, tmp_path, impl, part):
    path = tmp_path / "sneaky.rules"
    path.write_text(f"elementwise sneaky(x) = {impl}\nd sneaky(x) / dx = 0 * x\n")
    code, out, err = run(capsys, "rules", "check", str(path), "--allow-imports")
    assert code == 2 and out == ""
    assert f"sneaky.rules:1" in err and f"the private or special name '{part}'" in err
    with pytest.raises(einderiv.RuleError, match="private or special"):
        resolve(impl, np)  # a Function built in Python is checked where it is resolved


EXITS = """\
elementwise die(x) = sys:exit
d die(x) / dx = 0 * x
elementwise boom(x) = {module}:boom
d boom(x) / dx = 0 * x
elementwise cbrt(x) = xp.cbrt
d cbrt(x) / dx = 1 / (3 * cbrt(x) ** 2)
"""


def test_whatever_an_implementation_raises_fails_its_check(capsys, tmp_path, monkeypatch):
    module = f"boom_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "class Boom(BaseException):\n    pass\n"
        "def boom(x):\n    raise Boom('not an Exception')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "exits.rules"
    path.write_text(EXITS.format(module=module))
    try:
        code, out, err = run(capsys, "rules", "check", str(path), "--allow-imports")
    finally:
        sys.modules.pop(module, None)
    assert code == 1 and err == "", err
    lines = out.splitlines()
    failed = [l for l in lines if l.startswith("FAIL")]
    assert any("exits.rules:1 " in l for l in failed), out
    assert "SystemExit" in out and "Boom: not an Exception" in out
    # The check went on to the end of the file: the right rule after them passed.
    assert any(l.startswith("ok ") and "exits.rules:6 " in l for l in lines), out
    assert lines[-1].startswith("checked 3 derivative rules and 3 functions")
    assert "exits.rules:1" in lines[-1] and "exits.rules:3" in lines[-1]


def test_no_text_of_a_rule_file_is_evaluated(capsys, tmp_path):
    # A derivative body is an expression of the language: `__import__` is an unknown function,
    # never Python's.
    path = tmp_path / "body.rules"
    path.write_text('elementwise cbrt(x) = xp.cbrt\nd cbrt(x) / dx = __import__("antigravity")\n'
                    'd cbrt(x) / dx = __import__(x)\n')
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 1 and "body.rules:3" in out.splitlines()[-1]
    assert "unknown function '__import__'" in out
    path.write_text('elementwise cbrt(x) = xp.cbrt\nd cbrt(x) / dx = __import__("antigravity")\n')
    code, out, _ = run(capsys, "rules", "check", str(path))
    assert code == 1 and "a string is not a tensor expression" in out
    assert "antigravity" not in sys.modules


# -- an implementation without an import names a function of the array library or the kernels --

# Public names all the way, but through modules numpy imports: os, sys, subprocess, ctypes.
WALKS = ["xp.f2py.sys.exit", "xp.f2py.os.system", "xp.f2py.subprocess.run",
         "xp.ctypeslib.ctypes.CDLL", "xp.ma.core.np.exp", "xp.lib.format.os.system"]


@pytest.mark.parametrize("impl", WALKS)
def test_an_implementation_chain_cannot_walk_to_other_modules(capsys, tmp_path, impl,
                                                              restore_default_rules):
    path = tmp_path / "bye.rules"
    path.write_text(f"elementwise bye(x) = {impl}\nd bye(x) / dx = 1 + 0 * x\n")
    for allow in ((), ("--allow-imports",)):  # not an import: allowing imports changes nothing
        code, out, err = run(capsys, "rules", "check", str(path), *allow)
        assert code == 2 and out == "", err
        assert "bye.rules:1" in err and f"'{impl}' is not " in err and "Traceback" not in err
        assert f"  elementwise bye(x) = {impl}\n" in err and "^" * len(impl) in err  # the caret
    code, out, err = run(capsys, "grad", "sum(bye(x))", "--wrt", "x", "--shape", "x=n",
                         "--rules", str(path), "--check")
    assert code == 2 and out == "" and "bye.rules:1" in err
    with pytest.raises(einderiv.RuleError, match="bye.rules:1"):
        einderiv.load_rules(path)
    with pytest.raises(einderiv.RuleError, match="is not"):
        resolve(impl, np)  # a Function built in Python is checked where it is resolved


@pytest.mark.parametrize("impl, problem", [
    ("xp.f2py", "is a module, not a function"),
    ("xp.linalg", "is a module, not a function"),
    ("kernel.np", "is a module, not a function"),
    ("xp.vectorize", "is a class, not a function"),
    ("xp.pi", "is a float, not a function"),
    ("xp.nosuch", "cannot find the implementation 'xp.nosuch'"),
    ("kernel.nosuch", "cannot find the implementation 'kernel.nosuch'"),
    ("xp.fft.fft", "only xp.NAME and xp.linalg.NAME"),  # complex results
])
def test_an_implementation_is_a_function(tmp_path, impl, problem):
    path = tmp_path / "odd.rules"
    path.write_text(f"# one\nelementwise odd(x) = {impl}\n")
    with pytest.raises(einderiv.RuleError) as info:
        RuleBook().load(path)  # at load time, not at the first call
    assert "odd.rules:2" in str(info.value) and problem in str(info.value)
    assert info.value.line == 2 and info.value.column == len("elementwise odd(x) = ") + 1


def test_functions_of_the_array_library_and_kernels_load(tmp_path):
    path = tmp_path / "fine.rules"
    path.write_text("elementwise c(x) = xp.cbrt\ntensor i(X) -> square = xp.linalg.inv\n"
                    "elementwise s(x) = kernel.sigmoid\n")
    book = RuleBook().load(path)
    assert [book.get(n).impl for n in "cis"] == ["xp.cbrt", "xp.linalg.inv", "kernel.sigmoid"]


EXIT_RULES = "elementwise die(x) = sys:exit\nd die(x) / dx = 0 * x\n"


def test_an_implementation_that_exits_is_an_evaluation_error(capsys, tmp_path,
                                                             restore_default_rules):
    path = tmp_path / "die.rules"
    path.write_text(EXIT_RULES)
    einderiv.load_rules(path, allow_imports=True)
    f = einderiv.compile("die(x)", {"x": ("n",)})
    for evaluate in (f, f.evaluate_ir):  # the generated code and the IR interpreter
        with pytest.raises(einderiv.EvaluationError, match="an implementation called exit"):
            evaluate(x=np.ones(2))
    code, out, err = run(capsys, "jacobian", "die(x)", "--wrt", "x", "--shape", "x=n",
                         "--rules", str(path), "--allow-imports", "--check")
    assert code == 2 and "an implementation called exit" in err and "Traceback" not in err


def test_a_module_that_cannot_be_imported_is_a_rule_error(capsys, tmp_path,
                                                          restore_default_rules):
    path = tmp_path / "gone.rules"
    path.write_text("elementwise gone(x) = no_such_module_einderiv:f\nd gone(x) / dx = 0 * x\n")
    einderiv.load_rules(path, allow_imports=True)
    f = einderiv.compile("gone(x)", {"x": ("n",)})
    for evaluate in (f, f.evaluate_ir):
        with pytest.raises(einderiv.RuleError, match="No module named 'no_such_module_einderiv'"):
            evaluate(x=np.ones(2))
    code, _, err = run(capsys, "grad", "sum(gone(x))", "--wrt", "x", "--shape", "x=n",
                       "--rules", str(path), "--allow-imports", "--check")
    assert code == 2 and "no_such_module_einderiv" in err and "Traceback" not in err
