"""einderiv benchmarks: generated derivatives against hand-written numpy, JAX, PyTorch and
HIPS autograd, measured in one process.

    pip install -e '.[bench]'           # the peers: jax, jaxlib, autograd, torch==2.13.0 (CPU)
    python benchmarks/run.py            # the full tables (under 10 minutes)
    python benchmarks/run.py --quick    # small sizes, few repeats: a smoke test (under a minute)
    python benchmarks/run.py --scaling  # stage times against size of long programs (scaling.py)

Everything is float64 with fixed seeds, on one thread: BLAS, torch and XLA are limited to one
thread before numpy, torch or jax loads, so that ratios are stable on a shared machine. Every
hand-written derivative is checked against central finite differences on a small instance, and
every contender's result is checked against the hand-written one before it is timed. A peer
that is not installed is skipped with a note.

Tables: median time per call and its ratio to the hand-written numpy derivative; einderiv's
derivation time (expression to first result) beside JAX's compile time (first call of the
jitted function less a warm call); FLOPs of einderiv's derivative program against its forward
program (counted on the IR with opt_einsum's contract_path); peak memory of sparse structure.
"""
from __future__ import annotations

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if _XLA not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

import einderiv  # noqa: E402
import problems  # noqa: E402
from contenders import CONTENDERS, HAND, Unavailable  # noqa: E402
from flops import forward_and_derivative_flops  # noqa: E402

RTOL = 1e-6  # a contender's result against the hand-written one
SETTINGS = {  # seconds of timing per (instance, contender), runs per median
    "full": {"budget": 2.0, "repeat": 9},
    "quick": {"budget": 0.05, "repeat": 3},
}


def set_peer_threads() -> list[str]:
    """One thread for torch too (jax and BLAS read the environment set above)."""
    notes = []
    try:
        import torch
    except ImportError:
        return notes
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError as e:  # only settable before torch starts parallel work
        notes.append(f"torch.set_num_interop_threads: {e}")
    return notes


def versions() -> str:
    out = [f"python {platform.python_version()}", f"numpy {np.__version__}",
           f"einderiv {einderiv.__version__}"]
    for name in ("jax", "jaxlib", "torch", "autograd"):
        try:
            __import__(name)
            out.append(f"{name} {importlib.metadata.version(name)}")
        except (ImportError, importlib.metadata.PackageNotFoundError):
            out.append(f"{name} not installed")
    return ", ".join(out)


def timed(f):
    t0 = time.perf_counter()
    result = f()
    return result, time.perf_counter() - t0


def time_runs(calls: list, budget: float, repeat: int) -> list[list[float]]:
    """Times per call of each of `calls`, over runs timed in interleaved rounds (in a rotating
    order) so that a burst of load from other processes hits every contender alike. Each
    contender gets `repeat` runs of enough calls to take about budget/repeat; one whose single
    call is slower than that runs one call per run, in at least 3 and at most `repeat` runs
    within about 3x the budget (the first, calibrating call counts as one)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        plans = []  # (calls per run, runs) per contender
        runs: list[list[float]] = []
        for f in calls:
            t0 = time.perf_counter()
            f()
            one = max(time.perf_counter() - t0, 1e-7)
            number = int(budget / repeat / one)
            if number >= 1:
                plans.append((number, repeat))
                runs.append([])
            else:
                slow = max(3, min(repeat, int(3 * budget / one)))
                plans.append((1, slow - 1))
                runs.append([one])
        entries = list(zip(calls, plans, runs))
        for r in range(max(n for _, n in plans)):
            # rotate the order each round: what a call follows (a framework that has just
            # freed a lot of memory, say) should not always be the same for one contender
            k = r % len(entries)
            for f, (number, n), times in entries[k:] + entries[:k]:
                if r >= n:
                    continue
                t0 = time.perf_counter()
                for _ in range(number):
                    f()
                times.append((time.perf_counter() - t0) / number)
        return runs
    finally:
        if was_enabled:
            gc.enable()


def mismatch(actual: list, expected: list) -> str | None:
    """Why a contender's result is not the hand-written one, or None when they agree."""
    if len(actual) != len(expected):
        return f"{len(actual)} results instead of {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            return f"result {k}: shape {a.shape} instead of {e.shape}"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        if not np.allclose(a, e, rtol=RTOL, atol=RTOL * 1e-3 * max(scale, 1.0)):
            err = float(np.max(np.abs(a - e) / (np.abs(e) + 1e-3 * max(scale, 1.0))))
            return f"result {k}: largest relative difference {err:.2e}"
    return None


def warm_up() -> None:
    """One-time costs of a process (einderiv's grammar and rule tables, JAX's backend) are not
    charged to the first problem's derivation or compile time."""
    einderiv.grad("sum(x * x)", "x", {"x": ("n",)})(x=np.ones(3))
    try:
        import jax
        jax.block_until_ready(jax.jit(jax.grad(lambda x: (x * x).sum()))(np.ones(3)))
    except ImportError:
        pass


class Report:
    def __init__(self):
        self.rows = []  # (problem, size, contender, median seconds, ratio)
        self.setup = {}  # (problem, size) -> {contender: (seconds, resolved)}
        self.flops = []  # (problem, size, kind, forward, derivative)
        self.notes = []
        self.failures = []
        self.unavailable = {}


def run_instance(inst, mode: str, skip: set, report: Report, table) -> None:
    """Check every contender against the hand-written result, then time them together."""
    ready = []  # (name, call, seconds in setup(), seconds of the first call)
    expected = None
    for name, prepare in CONTENDERS.items():
        if name in skip or name in report.unavailable:
            continue
        where = f"{inst.problem} {inst.size} {name}"
        try:
            setup, to_numpy = prepare(inst)
            t0 = time.perf_counter()
            call = setup()
            t1 = time.perf_counter()
            result = call()
            t2 = time.perf_counter()
        except Unavailable as e:
            report.unavailable[name] = str(e)
            continue
        except Exception as e:
            report.failures.append(f"{where}: raised {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
            if name == HAND:
                return
            continue
        values = to_numpy(result)
        del result
        if name == HAND:
            expected = values
        else:
            why = mismatch(values, expected)
            if why:
                report.failures.append(f"{where}: result differs from hand-written: {why}")
                continue
        ready.append((name, call, t1 - t0, t2 - t1))
    expected = values = None
    settings = SETTINGS[mode]
    runs = time_runs([call for _, call, _, _ in ready], settings["budget"], settings["repeat"])
    t_hand = statistics.median(runs[0])
    for (name, call, t_setup, t_first), times in zip(ready, runs):
        t = statistics.median(times)
        row = (inst.problem, inst.size, name, t, t / t_hand)
        report.rows.append(row)
        table(row)
        if name in ("einderiv", "jax.jit"):
            # setup() derives (traces, compiles); the first call may generate code (compile).
            # When the first call exceeds a warm one by less than the spread of warm calls and
            # that spread is not small beside the setup, the value is marked as not resolved.
            extra, spread = t_first - t, max(times) - min(times)
            resolved = extra > spread or spread < 0.1 * t_setup
            report.setup.setdefault((inst.problem, inst.size), {})[name] = (
                t_setup + max(extra, 0.0), resolved)
        if name == "einderiv":
            try:
                fw, dv = forward_and_derivative_flops(call.derived, inst.dims)
                report.flops.append((inst.problem, inst.size, inst.kind, fw, dv))
            except Exception as e:
                report.notes.append(f"FLOPs of {inst.problem} {inst.size}: {type(e).__name__}: "
                                    f"{e}")
    del ready
    gc.collect()


def show_time(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3f} ms"
    return f"{t * 1e6:.1f} us"


HEADER = f"{'problem':<22} {'size':>17}  {'contender':<20} {'median':>11} {'ratio':>8}"


def print_row(row) -> None:
    problem, size, who, t, ratio = row
    print(f"{problem:<22} {size:>17}  {who:<20} {show_time(t):>11} {ratio:>7.2f}x", flush=True)


def print_summary(report: Report) -> None:
    """Ratios to hand-written numpy, one line per instance."""
    names = [n for n in CONTENDERS if n != HAND]
    print("\nratio to hand-written numpy (median time / median time of the hand-written):")
    print(f"{'problem':<22} {'size':>17}  " + " ".join(f"{n:>12}" for n in names))
    by_instance = {}
    for problem, size, who, _, ratio in report.rows:
        by_instance.setdefault((problem, size), {})[who] = ratio
    for (problem, size), ratios in by_instance.items():
        cells = [f"{ratios[n]:>11.2f}x" if n in ratios else f"{'-':>12}" for n in names]
        print(f"{problem:<22} {size:>17}  " + " ".join(cells))


def print_setup(report: Report) -> None:
    print("\nderivation / compile time (expression to first result, less one warm call):")
    print(f"{'problem':<22} {'size':>17}  {'einderiv derivation':>20} {'jax.jit compile':>16}")
    marked = False
    for (problem, size), times in report.setup.items():
        cells = []
        for name in ("einderiv", "jax.jit"):
            if name not in times:
                cells.append("-")
                continue
            t, resolved = times[name]
            cells.append(show_time(t) + ("" if resolved else "*"))
            marked |= not resolved
        print(f"{problem:<22} {size:>17}  {cells[0]:>20} {cells[1]:>16}")
    print("einderiv: parse or build the expression, lower, derive, generate code, first call; "
          "jax: trace, lower, compile (jit(...).lower().compile()), first call")
    if marked:
        print("* not resolved: the first call exceeded a warm call by less than the spread "
              "of warm calls, which is not small beside the time shown")


def print_flops(report: Report) -> None:
    print("\neinderiv FLOPs (opt_einsum contract_path cost of each contraction, one per element "
          "for elementwise steps):")
    print(f"{'problem':<22} {'size':>17}  {'forward':>14} {'derivative':>14} {'ratio':>8}")
    for problem, size, kind, fw, dv in report.flops:
        print(f"{problem:<22} {size:>17}  {fw:>14,} {dv:>14,} {dv / fw:>7.2f}x"
              + ("  (Hessian)" if kind == "hessian" else ""))


def peak_memory(f) -> int:
    """Peak bytes numpy allocates while `f` runs (tracemalloc sees numpy's buffers)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    f()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def memory_rows(mode: str):
    """Sparse diagonal structure stays sparse: gradient of sum(exp(x)) in O(n) memory."""
    n = 10_000_000 if mode == "full" else 100_000
    x = np.random.default_rng(2).normal(size=n)
    g = einderiv.grad("sum(exp(x))", "x", {"x": ("n",)})
    J = einderiv.jacobian("exp(x)", "x", {"x": ("n",)})
    np.testing.assert_allclose(g(x=x), np.exp(x))
    rows = [("grad sum(exp(x))", n, HAND, peak_memory(lambda: np.exp(x))),
            ("grad sum(exp(x))", n, "einderiv", peak_memory(lambda: g(x=x)))]
    small = x[:2000]
    rows.append(("jacobian exp(x)", 2000, HAND, peak_memory(lambda: np.diag(np.exp(small)))))
    rows.append(("jacobian exp(x)", 2000, "einderiv", peak_memory(lambda: J(x=small))))
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scaling" in argv:  # the scaling table (benchmarks/scaling.py) takes its own options
        import scaling
        return scaling.main([a for a in argv if a != "--scaling"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scaling", action="store_true",
                        help="instead, time each stage against the size of long programs "
                             "(benchmarks/scaling.py: its options follow)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, few repeats: a smoke test")
    parser.add_argument("--only", metavar="TEXT", default="",
                        help="only the problems whose name contains TEXT (case-insensitive)")
    parser.add_argument("--skip", metavar="NAMES", default="",
                        help=f"comma-separated contenders to leave out, of: "
                             f"{', '.join(n for n in CONTENDERS if n != HAND)}")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(CONTENDERS) | ({HAND} & skip)
    if unknown:
        parser.error(f"cannot skip {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    report = Report()
    report.notes += set_peer_threads()
    print(f"einderiv benchmarks ({mode}): {versions()}")
    print("float64, one thread (BLAS, torch, XLA); medians; every result checked against the "
          "hand-written one (rtol 1e-6) before it is timed")

    worst = 0.0
    for make, size in problems.SMALL:
        worst = max(worst, problems.check_hand_written(make, size))
    print(f"hand-written derivatives vs central finite differences on {len(problems.SMALL)} "
          f"small instances: largest relative error {worst:.1e}\n")

    warm_up()
    print(HEADER)
    for inst in problems.instances(mode):
        if args.only.lower() not in inst.problem.lower():
            continue
        run_instance(inst, mode, skip, report, print_row)
        del inst
        gc.collect()

    print_summary(report)
    print_setup(report)
    print_flops(report)
    if not args.only:
        print(f"\n{'peak memory':<22} {'n':>17}  {'contender':<20} {'peak':>11} {'per entry':>9}")
        for problem, n, who, peak in memory_rows(mode):
            print(f"{problem:<22} {n:>17}  {who:<20} {peak / 2**20:>8.1f}MiB {peak / n:>8.1f}B")

    print()
    for name, why in report.unavailable.items():
        print(f"skipped {name}: {why} (pip install -e '.[bench]')")
    for note in report.notes:
        print(f"note: {note}")
    for failure in report.failures:
        print(f"FAILED {failure}")
    print(f"{len(report.rows)} timings, {len(report.failures)} failures, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
