"""einderiv scaling: time and memory of each pipeline stage against the size of long programs
(issue 11).

    python benchmarks/scaling.py                  # the full table (minutes; --timeout per size)
    python benchmarks/scaling.py --quick          # small sizes: a smoke test (seconds)
    python benchmarks/scaling.py --workload rnn --timeout 120
    python benchmarks/run.py --scaling [options]  # the same

Every (workload, size) runs in a fresh subprocess, so peak memory and einderiv's caches belong
to that size alone, at Python's default recursion limit and under an address-space limit
(--memory-limit). A size that raises (RecursionError, MemoryError, an EinderivError), crashes
or runs past --timeout is a row saying so, not the end of the table; after a timeout the larger
sizes of that workload are skipped.

Columns: derive (build the expression, parse, lower and derive: the `grad` call), vectorize
(`.program`), generate (`.source`), first call (compile the module, run it), their total,
printers (`.formula`, `.einstein`, `.einsum` and `.latex`, not in the total), the total's
growth over the previous size (beside the growth of the size), the growth of resident
memory over the process's baseline (ru_maxrss, after imports and inputs), and the peak memory
numpy allocates in a warm call (tracemalloc; for generated code over 100,000 characters, the
growth of the peak resident size, as tracemalloc is quadratic there) as a multiple of the
inputs' size.
"""
from __future__ import annotations

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

H, V = 8, 4  # hidden and input sizes of the recurrent networks: small, the program is long
N_X = 16  # entries of x in the sums


def _model(kind: str, T: int, wrt=None):
    """The character model of einderiv.models (per-step input X[t], per-step softmax loss
    against Y[t]) over T steps; grad wrt `wrt`, or all its weights."""
    import numpy as np
    import einderiv
    from einderiv import models
    build = models.rnn_loss if kind == "rnn" else models.lstm_loss
    weights = build(1)[1]
    rng = np.random.default_rng(0)
    eye = np.eye(V)
    inputs = {"X": eye[rng.integers(V, size=T)], "Y": eye[rng.integers(V, size=T)]}
    shapes = {"W": (H, H), "U": (H, V), "b": (H,), "Wy": (V, H), "by": (V,)}
    for name in weights:
        inputs[name] = rng.normal(size=shapes[name if name in shapes else name[0]]) / H
    return lambda: einderiv.grad(build(T)[0], wrt or weights), inputs


def _rnn(T: int):
    """models.rnn_loss: h = tanh(W @ h + U @ X[t] + b), a softmax loss per step; grad wrt W."""
    return _model("rnn", T, "W")


def _lstm(T: int):
    """models.lstm_loss: an LSTM with 8 weight matrices (W and U of four gates), biases and a
    softmax loss per step; grad wrt all its weights."""
    return _model("lstm", T)


def _rnn_h(T: int):
    """h = tanh(W @ h + U @ X[t]) over T steps, built with einderiv.var, loss sum(h) of the
    last step; grad wrt W."""
    import numpy as np
    import einderiv
    from einderiv import fn

    def derive():
        W, U, X = einderiv.var("W", ("H", "H")), einderiv.var("U", ("H", "V")), \
            einderiv.var("X", ("T", "V"))
        h = fn.tanh(U @ X[0])
        for t in range(1, T):
            h = fn.tanh(W @ h + U @ X[t])
        return einderiv.grad(fn.sum(h), "W")

    rng = np.random.default_rng(0)
    inputs = {"W": rng.normal(size=(H, H)) / H, "U": rng.normal(size=(H, V)),
              "X": rng.normal(size=(T, V))}
    return derive, inputs


def _sum(N: int):
    """sum(tanh(x * c_i)) for i < N, added up; grad wrt x."""
    import numpy as np
    import einderiv
    from einderiv import fn

    def derive():
        x = einderiv.var("x", ("n",))
        total = None
        for i in range(N):
            term = fn.sum(fn.tanh(x * ((i + 1) / N)))
            total = term if total is None else total + term
        return einderiv.grad(total, "x")

    return derive, {"x": np.random.default_rng(0).normal(size=N_X)}


def _product(N: int):
    """sum(cos(x * c_i)) for i < N, multiplied; grad wrt x (one entry, small: no overflow)."""
    import numpy as np
    import einderiv
    from einderiv import fn

    def derive():
        x = einderiv.var("x", ("n",))
        total = None
        for i in range(N):
            factor = fn.sum(fn.cos(x * ((i + 1) / N)))
            total = factor if total is None else total * factor
        return einderiv.grad(total, "x")

    return derive, {"x": np.array([0.01])}


def chain_text(chars: int) -> str:
    """`x ** x ** ... ** x`, as many x as fit in `chars` characters."""
    return " ** ".join(["x"] * ((chars + 4) // 5))


def _chain(chars: int):
    """The text `x ** x ** ... ** x` of about `chars` characters; grad wrt x."""
    import numpy as np
    import einderiv
    text = chain_text(chars)
    return (lambda: einderiv.grad(text, "x", {"x": ()}), {"x": np.float64(1.2)})


def _slice(m: int):
    """grad("sum(x[:p] * y)", "x") with p = m / 2: its memory against the inputs' size."""
    import numpy as np
    import einderiv
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=m), "y": rng.normal(size=m // 2)}
    return (lambda: einderiv.grad("sum(x[:p] * y)", "x", {"x": ("m",), "y": ("p",)}), inputs)


def _named(K: int):
    """K short statements `t_i = sin(t_{i-1}) * 0.5 + x`, each named: compile, and print."""
    import numpy as np
    import einderiv
    text = "\n".join(["t0 = x"] + [f"t{i} = sin(t{i - 1}) * 0.5 + x" for i in range(1, K)])
    return (lambda: einderiv.grad(text, "x", {"x": ()}), {"x": np.float64(0.3)})


def _limit() -> int:
    """The longest `x ** x ** ...` text einderiv differentiates: one operation per `**`, up to
    the derivation limit (the parser's MAX_GRADIENT_OPERATIONS)."""
    try:
        from einderiv.parse.parser import MAX_GRADIENT_OPERATIONS
    except ImportError:  # an einderiv from before the limit
        return 200_000
    return 5 * (MAX_GRADIENT_OPERATIONS + 1) - 4


def _named_limit() -> int:
    """The most statements `t_i = sin(t_{i-1}) * 0.5 + x` (three operations each) einderiv
    differentiates as text."""
    try:
        from einderiv.parse.parser import MAX_GRADIENT_OPERATIONS
    except ImportError:
        return 16000
    return MAX_GRADIENT_OPERATIONS // 3


# name: (builder, full sizes, quick sizes, what a size counts)
WORKLOADS = {
    "rnn": (_rnn, [100, 300, 1000, 3000], [5, 10], "T"),
    "rnn-h": (_rnn_h, [100, 300, 1000, 3000], [5, 10], "T"),
    "lstm": (_lstm, [100, 300, 1000, 3000], [3, 6], "T"),
    "sum": (_sum, [250, 1000, 5000, 20000], [10, 20], "N"),
    "product": (_product, [200, 800, 2000], [10, 20], "N"),
    "chain": (_chain, None, [100, 200], "chars"),  # full: up to the derivation limit
    "named": (_named, None, [10, 20], "statements"),  # full: up to the derivation limit
    "slice": (_slice, [10 ** 5, 10 ** 6, 10 ** 7], [1000, 10000], "m"),
}


def sizes(name: str, quick: bool) -> list[int]:
    _, full, small, _ = WORKLOADS[name]
    if quick:
        return small
    if full is None and name == "chain":  # 2 KB, 4 KB, 10 KB, the longest text derived
        return [2000, 4000, 10000, _limit()]
    if full is None:  # named statements: up to the most derived as text
        return [_named_limit() // 4, _named_limit() // 2, _named_limit()]
    return full


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


# tracemalloc looks up the line of every allocation, and CPython finds it by a scan of the
# function's line table from the start: in one generated function of 100,000 lines that is
# quadratic (a 20,000-term sum's warm call took minutes under it, 0.2 s without).
TRACED_SOURCE_CHARS = 100_000


def _call_peak(call, source_chars: int) -> int:
    """Peak bytes a warm call allocates: tracemalloc for ordinary programs; for very long
    ones the growth of the peak resident size over the call (Linux: VmHWM reset through
    /proc/self/clear_refs), coarser but without the per-allocation look-up."""
    if source_chars < TRACED_SOURCE_CHARS:
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
        before = _status("VmRSS")
        call()
        return max(_status("VmHWM") - before, 0)
    except OSError:
        return 0


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def _printed(g) -> None:
    """Every printer of a result: the formula, the indexed and einsum forms and LaTeX (each
    must be linear in the program's size)."""
    for text in (g.formula, g.einstein, g.einsum, g.latex):
        assert text


def child(name: str, size: int) -> dict:
    """Runs one size, stage by stage; the result (or how it failed, and where) as a dict."""
    import numpy as np
    import einderiv
    row = {"einderiv": einderiv.__file__}
    einderiv.grad("sum(x * x)", "x", {"x": ("n",)})(x=np.ones(3))  # one-time costs
    derive, inputs = WORKLOADS[name][0](size)  # derive() builds the expression too
    row["inputs"] = int(sum(np.asarray(a).nbytes for a in inputs.values()))
    base = _maxrss()
    stage = "derive"
    try:
        t0 = time.perf_counter()
        g = derive()
        row[stage] = time.perf_counter() - t0
        for stage, step in [("vectorize", lambda: g.program), ("generate", lambda: g.source),
                            ("first call", lambda: g(**inputs)), ("printers", lambda: _printed(g))]:
            t0 = time.perf_counter()
            step()
            row[stage] = time.perf_counter() - t0
        row["rss"] = _maxrss() - base
        stage = "warm call"
        peak = _call_peak(lambda: g(**inputs), len(g.source))
        if peak:  # 0: the call fit in memory the process already held (the rss measure)
            row["call peak"] = peak
    except Exception as e:  # RecursionError and MemoryError included: they are rows
        first = (str(e).splitlines() or [""])[0][:80]
        row["error"] = f"{stage}: {type(e).__name__}: {first}"
        row["rss"] = _maxrss() - base
    return row


def run_size(name: str, size: int, timeout: float, memory_gb: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, str(size),
           "--memory-limit", str(memory_gb)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s", "timeout": True}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:100]
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    return {"error": f"crashed ({how}, {time.perf_counter() - t0:.0f} s): {tail}"}


STAGES = ["derive", "vectorize", "generate", "first call"]
HEADER = (f"{'workload':<8} {'size':>8}  " + " ".join(f"{s:>10}" for s in STAGES)
          + f" {'total':>9} {'printers':>9} {'growth':>14} {'rss MB':>8} {'call/in':>8}")


def secs(t) -> str:
    return "-" if t is None else f"{t:.3f} s"


def format_row(name: str, size: int, row: dict, previous: tuple | None) -> str:
    """One line of the table; `previous` is (size, total) of the last completed size."""
    times = [row.get(s) for s in STAGES]
    total = sum(times) if None not in times else None
    growth = ""
    if total is not None and previous is not None:
        growth = f"{total / max(previous[1], 1e-9):.1f}x ({size / previous[0]:.1f}x)"
    rss = f"{row['rss'] / 2 ** 20:.0f}" if "rss" in row else "-"
    ratio = (f"{row['call peak'] / row['inputs']:.2f}x" if "call peak" in row
             and row.get("inputs") else "-")
    line = (f"{name:<8} {size:>8}  " + " ".join(f"{secs(t):>10}" for t in times)
            + f" {secs(total):>9} {secs(row.get('printers')):>9} {growth:>14} {rss:>8} "
            f"{ratio:>8}")
    if "error" in row:
        line += f"  FAILED {row['error']}"
    return line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--workload", choices=list(WORKLOADS), action="append",
                        help="only this workload (repeatable); default: all")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds per size before it counts as timed out (default 60)")
    parser.add_argument("--memory-limit", type=float, default=8.0, metavar="GB",
                        help="address-space limit of each size's process (default 8)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        limit = int(args.memory_limit * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(child(args.child[0], int(args.child[1]))), flush=True)
        return 0
    import einderiv
    start = time.perf_counter()
    print(f"einderiv scaling ({'quick' if args.quick else 'full'}): einderiv "
          f"{einderiv.__version__} from {os.path.dirname(einderiv.__file__)}, python "
          f"{sys.version.split()[0]}, recursion limit {sys.getrecursionlimit()}, one process "
          f"per size, timeout {args.timeout:g} s, memory limit {args.memory_limit:g} GB")
    print(f"size: T steps (rnn, rnn-h, lstm; H={H} V={V}), N terms (sum) or factors (product), "
          "characters (chain), m entries (slice, p = m/2), statements (named)")
    print("growth: total over the previous size's (the size's growth); rss: resident memory "
          "over the baseline; call/in: peak of a warm call over the inputs' size")
    print(HEADER)
    failures = 0
    for name in args.workload or list(WORKLOADS):
        previous = None
        skipping = False
        for size in sizes(name, args.quick):
            if skipping:
                print(f"{name:<8} {size:>8}  skipped: a smaller size timed out", flush=True)
                continue
            row = run_size(name, size, args.timeout, args.memory_limit)
            print(format_row(name, size, row, previous), flush=True)
            if "error" in row:
                failures += 1
                skipping = bool(row.get("timeout"))
            else:
                previous = (size, sum(row[s] for s in STAGES))
    print(f"{failures} failed sizes, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
