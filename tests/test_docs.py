"""The documentation says what the code does (issue 10): every example it shows runs here.

- Docstring examples (`>>>`) of every module of the `einderiv` package run as doctests.
- The guides (README.md, CONTRIBUTING.md, docs/*.md) show the command line in ```console blocks:
  `$ einderiv ARGS` runs through `einderiv.cli.main` in this process, from the repository root,
  and the lines after it, up to the next `$ `, are its output (stdout and stderr as they
  interleave), compared exactly. Its exit status must be 0 unless the next line is `$ echo $?`,
  which shows it. `$ cat FILE` shows a file of the repository. Only the seconds a command
  reports it took (`in 0.17 s`) are not compared.
- Python in the guides is shown as ```pycon sessions (`>>>`), run as one doctest per file.
- The README's two commands: the test command is the one `.ci/run` runs, and the main job prints
  what the README says it prints.
- The examples under `examples:` of every `--help` run and print the lines shown under them.
- Facts the prose states are measured: the README's list of functions is the language's, the
  LSTM's size ratio is what the code gives, quoted rule lines are in the rule files, and the
  table of examples lists every script.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import doctest
import importlib
import io
import pkgutil
import re
import shlex
import sys
from pathlib import Path

import pytest

import einderiv
from einderiv import cli

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.M | re.S)
SECONDS = re.compile(r"\bin \d+\.\d+ s\b")


def fences(path: Path) -> list[tuple[str, int, str]]:
    """(language, line of the first line inside, text) of each fenced block of `path`."""
    text = path.read_text()
    return [(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in FENCE.finditer(text)]


def sessions(text: str) -> list[tuple[str, str]]:
    """(command, shown output) for each `$ ` line of a console block."""
    shown: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            shown.append((line[2:], []))
        elif not shown:
            raise AssertionError(f"output before any command: {line!r}")
        else:
            shown[-1][1].append(line + "\n")
    return [(command, "".join(out)) for command, out in shown]


def run_einderiv(args: list[str]) -> tuple[int, str]:
    """Exit status and output (stdout and stderr, interleaved) of `einderiv ARGS`."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            status = cli.main(args)
        except SystemExit as e:  # argparse: --help, usage errors
            status = e.code if isinstance(e.code, int) else 1
    return status, buffer.getvalue()


def console_blocks() -> list:
    return [pytest.param(path, text, id=f"{path.name}:{line}")
            for path in GUIDES for lang, line, text in fences(path) if lang == "console"]


@pytest.mark.parametrize("path, text", console_blocks())
def test_console_example(path, text, monkeypatch, restore_default_rules):
    monkeypatch.chdir(ROOT)
    steps = sessions(text)
    status = None
    for k, (command, want) in enumerate(steps):
        words = shlex.split(command)
        if words[0] == "einderiv":
            status, got = run_einderiv(words[1:])
            shows_status = k + 1 < len(steps) and steps[k + 1][0] == "echo $?"
            assert shows_status or status == 0, (
                f"{path.name}: `{command}` exited with status {status}:\n{got}")
        elif words == ["echo", "$?"]:
            assert status is not None, f"{path.name}: `echo $?` follows no einderiv command"
            got = f"{status}\n"
        elif words[0] == "cat" and len(words) == 2:
            got = (ROOT / words[1]).read_text()
        else:
            raise AssertionError(f"{path.name}: a console example may run `einderiv ...`, "
                                 f"`echo $?` and `cat FILE`, not `{command}`")
        if SECONDS.sub("in <seconds> s", got) != SECONDS.sub("in <seconds> s", want):
            diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                "shown", "printed"))
            raise AssertionError(f"{path.name}: `{command}` prints something else:\n{diff}")


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_python_sessions(path, monkeypatch, restore_default_rules):
    monkeypatch.chdir(ROOT)
    parser, runner, report = doctest.DocTestParser(), doctest.DocTestRunner(), []
    globs: dict = {}  # one namespace per guide, as a reader runs it top to bottom
    for lang, line, text in fences(path):
        if lang == "pycon":
            test = parser.get_doctest(text, globs, f"{path.name}:{line}", str(path), line - 1)
            runner.run(test, out=report.append, clear_globs=False)
            globs = test.globs  # the next block continues this one's session
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_every_example_in_a_guide_is_checked(path):
    """Shown commands and Python sit in blocks the tests above run, never in unchecked ones."""
    for lang, line, text in fences(path):
        where = f"{path.name}:{line}"
        if lang == "console":
            assert text.startswith("$ "), f"{where}: a console block starts with a command"
        elif lang == "python":
            raise AssertionError(f"{where}: show Python as a ```pycon session (>>>), which "
                                 f"the tests run")
        else:
            assert not re.search(r"^\$ ", text, re.M), (
                f"{where}: a block with `$ ` commands is a ```console block, which the tests run")


# -- the README's two commands ---------------------------------------------------------------------

def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def two_commands() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(section)]


def test_readme_main_job_prints_what_it_shows(monkeypatch):
    monkeypatch.chdir(ROOT)
    (lang, command), (_, shown) = two_commands()[:2]
    assert lang == "sh"
    install, _, job = command.strip().partition(" && ")
    assert install == "pip install -e ."
    words = shlex.split(job)
    assert words[0] == "einderiv"
    scripts = pyproject()["scripts"]
    assert scripts["einderiv"] == "einderiv.cli:main"  # the command is the function run here
    assert run_einderiv(words[1:]) == (0, shown)


def test_readme_test_command_is_what_ci_runs():
    blocks = two_commands()
    assert len(blocks) == 3, "install and run the main job, what it prints, run the tests"
    lang, command = blocks[2]
    assert lang == "sh"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [command.strip()]


def test_commands_to_copy_name_what_exists():
    """The ```sh blocks of the guides (installs, scripts, test files) name real things."""
    extras = pyproject()["optional-dependencies"]
    for path in GUIDES:
        for lang, line, text in fences(path):
            if lang != "sh":
                continue
            for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", text):
                assert extra in extras, f"{path.name}:{line}: no extra '{extra}'"
            for file in re.findall(r"(?<![\w/.])((?:tests|examples|benchmarks)/[\w/]+\.py)",
                                   text):
                assert (ROOT / file).is_file(), f"{path.name}:{line}: no file {file}"


# -- docstrings --------------------------------------------------------------------------------

MODULES = sorted(m.name for m in pkgutil.walk_packages(einderiv.__path__, "einderiv.")
                 if m.name != "einderiv.__main__")  # importing it runs the command line


def docstring_tests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder().find(module, name) if t.examples]


@pytest.mark.parametrize("name", ["einderiv", *MODULES])
def test_docstring_examples(name, restore_default_rules):
    runner, report = doctest.DocTestRunner(), []
    for test in docstring_tests(name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_the_public_api_shows_examples():
    """Docstrings on the public API carry a runnable example (STYLE.md)."""
    shown = {t.name.rpartition(".")[2] for t in docstring_tests("einderiv.api")}
    assert {"Compiled", "Derived", "grad"} <= shown
    assert sum(len(t.examples) for name in ["einderiv", *MODULES]
               for t in docstring_tests(name)) >= 30


def test_readme_lstm_size_ratio_is_measured():
    """'an LSTM over 32 steps: 1.85× the forward graph's nodes' is what the code gives."""
    from einderiv.api import lower_source
    from einderiv.derive import derivatives
    from einderiv.ir.nodes import Var, topological
    from einderiv.models import lstm_loss
    from einderiv.rulebook import default_rulebook

    readme = " ".join((ROOT / "README.md").read_text().split())
    steps, ratio = re.search(r"an LSTM over (\d+) steps: (\d+\.\d+)× the forward graph's nodes",
                             readme).groups()
    loss, weights = lstm_loss(int(steps))
    lowered = lower_source(loss, None)
    grads = derivatives(lowered.root, [Var(w, lowered.declared[w]) for w in weights],
                        default_rulebook())
    measured = len(topological(*grads)) / len(topological(lowered.root))
    assert f"{measured:.2f}" == ratio


# -- the examples of `einderiv --help` ---------------------------------------------------------

def help_epilogs() -> list[tuple[str, str]]:
    """(command path, epilog) of the parser and every subcommand's parser."""
    found, todo = [], [("einderiv", cli.build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser.epilog or ""))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def help_examples() -> list:
    """Each `einderiv ...` line under `examples:` of a --help, with the output lines shown
    (more deeply indented) under it."""
    params = []
    for name, epilog in help_epilogs():
        shown = []
        for line in epilog.splitlines():
            if re.match(r"  (echo .* \| )?einderiv ", line):
                shown.append((line.strip(), []))
            elif line.startswith("      ") and shown:
                shown[-1][1].append(line.strip())
        params += [pytest.param(command, out, id=f"{name}: {re.sub(r'  +#.*', '', command)}")
                   for command, out in shown]
    return params


_BUILT_IN_CHECKS: dict = {}  # `einderiv rules check [--quiet]` -> (status, output)


@pytest.mark.parametrize("command, shown", help_examples())
def test_help_example(command, shown, monkeypatch, tmp_path, restore_default_rules):
    """Each runs with status 0 and prints the lines shown under it, in order, where `...`
    stands for text left out and columns may be aligned otherwise (an excerpt of a table).
    `my.rules` stands for a rule file of the user's: here docs/wrong.rules, a tanh rule with a
    sign slipped, which is what the examples show (`rules check` of it exits 1)."""
    monkeypatch.chdir(ROOT)
    words = shlex.split(command, comments=True)
    if words[0] == "echo":
        monkeypatch.setattr(sys, "stdin", io.StringIO(words[1] + "\n"))
        words = words[3:]
    if "my.rules" in words:
        (tmp_path / "my.rules").write_text((ROOT / "docs" / "wrong.rules").read_text())
        monkeypatch.chdir(tmp_path)
    if words[1:3] == ["rules", "check"] and "my.rules" not in words:
        # (two helps show `einderiv rules check` of the built-in tables, 6 s each: run once)
        if tuple(words) not in _BUILT_IN_CHECKS:
            _BUILT_IN_CHECKS[tuple(words)] = run_einderiv(words[1:])
        status, got = _BUILT_IN_CHECKS[tuple(words)]
    else:
        status, got = run_einderiv(words[1:])
    assert status == (1 if words[1:3] == ["rules", "check"] and "my.rules" in words else 0), got

    def tidy(line: str) -> str:
        return " ".join(SECONDS.sub("in <seconds> s", line).split())

    printed = iter(tidy(line) for line in got.splitlines())
    for line in shown:
        if line == "...":
            continue
        pattern = re.compile(".*".join(map(re.escape, tidy(line).split("..."))))
        assert any(pattern.fullmatch(p) for p in printed), (
            f"`{command}` does not print {line!r} (in this order):\n{got}")


def test_readme_names_every_function_of_the_language():
    """The README's list of functions is the language's: the built-in calls and the functions
    of the built-in rule tables (less `div` and `pow`, which are the operators `/` and `**`)."""
    from einderiv.lower.calls import BUILTINS
    from einderiv.rulebook import default_rulebook

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The language", 1)[1].split("\n\n", 2)[1]
    listed = section.split("Functions:", 1)[1].split("The full contract", 1)[0]
    # In each `...`: the words that stand alone or are called (not `x` of `step(x)`, `axis=`).
    named = {word for quoted in re.findall(r"`([^`]*)`", listed)
             for word in re.findall(r"(?<![\w\"])([a-z]\w*)(?=\(|\s|$)", quoted)}
    language = (set(BUILTINS) | set(default_rulebook().functions)) - {"div", "pow"}
    assert named == language


def test_rule_lines_shown_are_in_the_rule_files():
    """A block of rule lines in a guide quotes rules/*.rules or docs/*.rules as they are."""
    def tidy(line: str) -> str:
        return " ".join(line.split())

    lines = {tidy(line) for path in [*(ROOT / "rules").glob("*.rules"),
                                     *(ROOT / "docs").glob("*.rules")]
             for line in path.read_text().splitlines()}
    quoted = 0
    for path in GUIDES:
        for lang, line, text in fences(path):
            rows = [row for row in text.splitlines() if row.strip()]
            if lang or not rows or not all(
                    row.startswith(("elementwise ", "tensor ", "d ", "def ", "rewrite ", "#"))
                    for row in rows):
                continue
            for row in rows:
                assert tidy(row) in lines, f"{path.name}:{line}: {row!r} is in no rule file"
                quoted += 1
    assert quoted >= 10


def test_readme_lists_every_example_script():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| \[examples/(\w+)\.py\]\(examples/\1\.py\) \|", readme, re.M))
    assert listed == {p.stem for p in (ROOT / "examples").glob("*.py")}


def test_readme_states_the_parser_limits_in_force():
    """The limits the README gives are the parser's own numbers."""
    from einderiv.parse import parser
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"one statement is at most {parser.MAX_SOURCE_CHARS:,} characters" in text
    assert f"brackets nest at most {parser.MAX_NESTING} deep" in text
    assert (f"at most {parser.MAX_PROGRAM_CHARS:,} characters and {parser.MAX_OPERATIONS:,} "
            f"operations") in text
    assert (f"at most {parser.MAX_GRADIENT_OPERATIONS:,} operations for a gradient or Jacobian "
            f"and {parser.MAX_HESSIAN_OPERATIONS:,} for a Hessian") in text
