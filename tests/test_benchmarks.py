"""The benchmark's smoke mode runs and prints its tables (issue 5). No timings are asserted."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
PROBLEMS = ["logistic regression", "least squares", "MLP tanh+softmax CE", "hessian x@A@x",
            "hessian logistic", "RNN char model", "LSTM char model", "batched matmul",
            "mean over an axis", "pairwise RBF", "layer norm", "MLP relu+squared"]
PEERS = ["jax.jit", "torch eager", "autograd"]
# A row of the timing table: problem, size, contender, median time, ratio.
ROW = re.compile(r"^(?P<problem>.+?)\s+(?P<size>\d+(?:x\d+)*)\s+(?P<who>\S.*?)\s+"
                 r"(?P<time>[\d.]+ (?:us|ms|s))\s+(?P<ratio>[\d.]+)x$")


SCALING = ROOT / "benchmarks" / "scaling.py"
# Without the peers: `import jax` (torch, autograd) fails as if the package were not installed.
NO_PEERS = ("import runpy, sys; sys.modules.update(jax=None, torch=None, autograd=None); "
            f"sys.argv = [{str(RUN)!r}, '--quick']; "
            f"runpy.run_path({str(RUN)!r}, run_name='__main__')")
# The Python command lines each test runs, by test, with their time limits in seconds.
COMMANDS = {
    "test_quick_run_with_the_installed_peers": {
        "peers": ([str(RUN), "--quick", "--only", "logistic"], 600),
        **{f"import {m}": (["-c", f"import {m}"], 600) for m in ("jax", "torch", "autograd")},
    },
    "test_quick_run_prints_the_table_and_without_the_peers_skips_them": {
        "no peers": (["-c", NO_PEERS], 600),
    },
    "test_quick_scaling_prints_a_row_per_size_with_growth": {
        "scaling": ([str(SCALING), "--quick"], 300),
    },
    "test_a_size_that_times_out_is_a_row_and_the_larger_ones_are_skipped": {
        "timeout": ([str(RUN), "--scaling", "--quick", "--workload", "sum", "--timeout", "0.01"],
                    120),
    },
}


@pytest.fixture(scope="module")
def finished(request, tmp_path_factory):
    """`finished(name)`: the CompletedProcess of a command of COMMANDS. The commands of every
    selected test start together when the first test asks, and run side by side on the cores
    the suite leaves idle (it runs on one) while each test waits for its own."""
    selected = {item.name for item in request.session.items}
    folder = tmp_path_factory.mktemp("benchmarks")
    started = {}
    for test, commands in COMMANDS.items():
        for name, (args, limit) in commands.items() if test in selected else ():
            out, err = (open(folder / f"{name}.{kind}", "w+") for kind in ("out", "err"))
            process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out,
                                       stderr=err, text=True)
            started[name] = (process, limit, out, err)

    def result(name: str) -> subprocess.CompletedProcess:
        process, limit, out, err = started[name]
        process.wait(timeout=limit)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(),
                                           err.read())

    yield result
    for process, _, out, err in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()


def table_rows(done: subprocess.CompletedProcess) -> dict:
    rows: dict = {}
    for line in done.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows.setdefault(m["problem"].strip(), set()).add(m["who"].strip())
    return rows


def check_table(done, rows) -> None:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "ratio" in done.stdout and "FAILED" not in done.stdout
    for problem in PROBLEMS:
        assert {"hand-written numpy", "einderiv"} <= rows.get(problem, set()), (
            problem, rows, done.stdout[-4000:])
    assert "einderiv derivation" in done.stdout


@pytest.mark.no_roundtrip
def test_quick_run_with_the_installed_peers(finished):
    # The peers on two problems (one gradient, one Hessian): jax.jit compiles each problem
    # for seconds, and the whole table runs without them below.
    done = finished("peers")
    rows = table_rows(done)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    problems = ["logistic regression", "hessian logistic"]
    assert set(rows) == set(problems), rows
    for peer, module in zip(PEERS, ["jax", "torch", "autograd"]):
        installed = finished(f"import {module}").returncode == 0
        if installed:
            assert all(peer in rows[p] for p in problems), (peer, rows)
        else:
            assert f"skipped {peer}" in done.stdout


@pytest.mark.no_roundtrip
def test_quick_run_prints_the_table_and_without_the_peers_skips_them(finished):
    # Every problem of the quick suite, with NO_PEERS.
    done = finished("no peers")
    rows = table_rows(done)
    check_table(done, rows)
    for peer in PEERS:
        assert f"skipped {peer}" in done.stdout
        assert not any(peer in who for who in rows.values())


# A row of the scaling table: workload, size, four stage times and their total, then the
# growth over the previous size (absent on a workload's first row), rss MB, call/in.
SCALING_ROW = re.compile(r"^(?P<workload>\S+)\s+(?P<size>\d+)\s+(?P<times>(?:[\d.]+ s\s+){6})"
                         r"(?P<growth>[\d.]+x \([\d.]+x\)\s+)?\d+\s+[\d.]+x$")


@pytest.mark.no_roundtrip
def test_quick_scaling_prints_a_row_per_size_with_growth(finished):
    # The table's shape, not its timings (issue 11).
    done = finished("scaling")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert re.search(r"workload\s+size\s+derive\s+vectorize\s+generate\s+first call\s+total"
                     r"\s+printers\s+growth", done.stdout), done.stdout
    rows: dict = {}
    for line in done.stdout.splitlines():
        m = SCALING_ROW.match(line)
        if m:
            rows.setdefault(m["workload"], []).append((int(m["size"]), bool(m["growth"])))
    assert set(rows) == {"rnn", "rnn-h", "lstm", "sum", "product", "chain", "named", "slice"}, \
        done.stdout
    for workload, sizes in rows.items():
        assert len(sizes) == 2 and sizes[0][0] < sizes[1][0], (workload, done.stdout)
        assert [grew for _, grew in sizes] == [False, True], (workload, done.stdout)
    assert "0 failed sizes" in done.stdout


@pytest.mark.no_roundtrip
def test_a_size_that_times_out_is_a_row_and_the_larger_ones_are_skipped(finished):
    done = finished("timeout")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("sum ")]
    assert len(lines) == 2, done.stdout
    assert "FAILED timed out after 0.01 s" in lines[0]
    assert "skipped: a smaller size timed out" in lines[1]
    assert "1 failed sizes" in done.stdout
