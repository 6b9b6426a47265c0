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


def run_quick(*python_args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([sys.executable, *python_args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    rows: dict = {}
    for line in done.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows.setdefault(m["problem"].strip(), set()).add(m["who"].strip())
    return done, rows


def check_table(done, rows) -> None:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "ratio" in done.stdout and "FAILED" not in done.stdout
    for problem in PROBLEMS:
        assert {"hand-written numpy", "einderiv"} <= rows.get(problem, set()), (
            problem, rows, done.stdout[-4000:])
    assert "einderiv derivation" in done.stdout


@pytest.mark.no_roundtrip
def test_quick_run_with_the_installed_peers():
    # The peers on two problems (one gradient, one Hessian): jax.jit compiles each problem
    # for seconds, and the whole table runs without them below.
    done, rows = run_quick(str(RUN), "--quick", "--only", "logistic")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    problems = ["logistic regression", "hessian logistic"]
    assert set(rows) == set(problems), rows
    for peer, module in zip(PEERS, ["jax", "torch", "autograd"]):
        installed = subprocess.run([sys.executable, "-c", f"import {module}"],
                                   capture_output=True).returncode == 0
        if installed:
            assert all(peer in rows[p] for p in problems), (peer, rows)
        else:
            assert f"skipped {peer}" in done.stdout


@pytest.mark.no_roundtrip
def test_quick_run_prints_the_table_and_without_the_peers_skips_them():
    # Every problem of the quick suite; `import jax` (torch, autograd) fails as if the package
    # were not installed.
    block = ("import runpy, sys; sys.modules.update(jax=None, torch=None, autograd=None); "
             f"sys.argv = [{str(RUN)!r}, '--quick']; "
             f"runpy.run_path({str(RUN)!r}, run_name='__main__')")
    done, rows = run_quick("-c", block)
    check_table(done, rows)
    for peer in PEERS:
        assert f"skipped {peer}" in done.stdout
        assert not any(peer in who for who in rows.values())


SCALING = ROOT / "benchmarks" / "scaling.py"
# A row of the scaling table: workload, size, four stage times and their total, then the
# growth over the previous size (absent on a workload's first row), rss MB, call/in.
SCALING_ROW = re.compile(r"^(?P<workload>\S+)\s+(?P<size>\d+)\s+(?P<times>(?:[\d.]+ s\s+){6})"
                         r"(?P<growth>[\d.]+x \([\d.]+x\)\s+)?\d+\s+[\d.]+x$")


@pytest.mark.no_roundtrip
def test_quick_scaling_prints_a_row_per_size_with_growth():
    # The table's shape, not its timings (issue 11).
    done = subprocess.run([sys.executable, str(SCALING), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
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
def test_a_size_that_times_out_is_a_row_and_the_larger_ones_are_skipped():
    done = subprocess.run([sys.executable, str(RUN), "--scaling", "--quick", "--workload", "sum",
                           "--timeout", "0.01"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("sum ")]
    assert len(lines) == 2, done.stdout
    assert "FAILED timed out after 0.01 s" in lines[0]
    assert "skipped: a smaller size timed out" in lines[1]
    assert "1 failed sizes" in done.stdout
