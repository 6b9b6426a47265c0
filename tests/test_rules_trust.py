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
