"""Suite-wide checks on every result the tests create (issue 4).

Every `einderiv` result (`compile`, `grad`, `jacobian`, `hessian`, `value_and_grad`) that a test
calls successfully with arrays is checked after the test, on the arrays of its first calls:

- round trip: for each output, the text of `.formula` (the temporaries, then that output's line)
  compiles through `einderiv.compile` with the shapes the result was declared with, and evaluates
  on the same arrays to the same values as the result;
- independent path: the generated code agrees with `.evaluate_ir`, which interprets the IR.

A test that deliberately builds results only to make them fail can opt out with
`@pytest.mark.no_roundtrip`; a failing round trip is a bug of the library, never a reason to
opt out.

A formula text is compiled once per shapes and rule book (a frozen one, which never changes):
the same text met again, in another parametrization of a test or as a test's own
`einderiv.compile(result.formula, shapes)`, reuses that compiled result. Every comparison is
still made, on every checked call's arrays.
"""
from __future__ import annotations

import copy
import functools
import gc
import os
import sys
import zlib
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

import einderiv
from einderiv import api
from einderiv.generate.formula import output_programs
from einderiv.ir.nodes import topological
from einderiv.rulebook.table import using_rules

CALLS_PER_RESULT = 2  # calls checked per result (the first ones that succeed)
RESULTS_PER_TEST = 12  # results checked per test, spread evenly (hypothesis makes hundreds)
# `.evaluate_ir` plans one opt_einsum path per IR node, which takes seconds on the stress tests'
# IR of thousands of nodes (products of hundreds of factors); above this size only the formula
# round trip is checked.
IR_NODES_FOR_EVALUATE_IR = 1500
RTOL = 1e-9
# Compiled formula programs kept for the rest of a test module (the most recently used; a
# formula longer than COMPILED_CHARS is kept only within its test).
COMPILED_KEPT = 256
COMPILED_CHARS = 20_000

# While a test runs: result id -> (result, [(arrays, returned value), ...]) in creation order.
_state = {"active": False, "checking": False, "records": {}}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_roundtrip: skip the suite-wide formula round trip and generated-code vs "
        "IR comparison (only for tests that deliberately make invalid inputs or errors)")
    config.addinivalue_line(
        "markers", "sample(k): a parametrized stress test whose default run (and CI's) runs "
        "one case in k, the same ones every run (sample(k, tests=True) on a module of stress "
        "tests: one test in k); EINDERIV_SLOW=1 runs every case")


# The suite's time budget (~5 minutes on 2 cores, CI included): a parametrized test marked
# `@pytest.mark.sample(k)` runs one case in k by default. The cases kept are chosen by a hash of
# their id, so every run (every CI run) keeps the same ones, spread across the parameters
# rather than the first k; `EINDERIV_SLOW=1` runs them all. `sample(k, tests=True)` on a module
# of stress tests (test_scale.py) runs one test in k, chosen by a hash of its name. The others are skipped, with a
# reason that says so, never deselected silently.
SLOW = bool(os.environ.get("EINDERIV_SLOW"))


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    for item in items:
        marker = item.get_closest_marker("sample")
        if marker is None or not (hasattr(item, "callspec") or marker.kwargs.get("tests")):
            continue
        k = int(marker.args[0])
        # (a parametrized case by its id; with tests=True, any test of the module by its name)
        key = item.callspec.id if hasattr(item, "callspec") else item.name
        if zlib.crc32(key.encode()) % k:
            item.add_marker(pytest.mark.skip(
                reason=f"sampled out (one case in {k} runs by default): set EINDERIV_SLOW=1"))


def _copy(value):
    try:
        return copy.deepcopy(value)
    except Exception:  # an object a test passes on purpose to provoke an error
        return value


# Every call, with keyword or positional arrays, evaluates through `_evaluate(arrays)` with
# the arrays by name, except repeats of the signature a result saw first, which its bound
# entry computes directly (api `_Result.__call__`): that signature is recorded at its first call.
_original_call = api._Result._evaluate


def _recording_call(self, arrays):
    if not _state["active"] or _state["checking"] or _traced(arrays):
        return _original_call(self, arrays)
    _, calls = _state["records"].get(id(self), (self, []))
    if len(calls) >= CALLS_PER_RESULT:
        return _original_call(self, arrays)
    saved = {k: _copy(v) for k, v in arrays.items()}
    result = _original_call(self, arrays)
    calls.append((saved, _copy(result)))
    _state["records"].setdefault(id(self), (self, calls))
    return result


api._Result._evaluate = _recording_call


def _traced(arrays: dict) -> bool:
    """A call under a JAX transformation (jit, grad: einderiv.jax.function) gets tracers, whose
    values are gone after it: not recorded (its eager calls are)."""
    jax = sys.modules.get("jax")
    if jax is not None and any(isinstance(v, jax.core.Tracer) for v in arrays.values()):
        return True
    torch = sys.modules.get("torch")  # under torch.func or vmap: wrappers with no storage
    return torch is not None and any(isinstance(v, torch.Tensor) and not _stored(v)
                                     for v in arrays.values())


def _stored(tensor) -> bool:
    try:
        tensor.untyped_storage()
        return True
    except (NotImplementedError, RuntimeError):
        return False


def _flatten(structured) -> list:
    if isinstance(structured, tuple):
        return [leaf for item in structured for leaf in _flatten(item)]
    return [structured]


def _per_output(result, structured) -> list | None:
    """One value per output of `result`, from what a call returned: a repeated `wrt` returns
    an output at several places (`result.positions` says which), every one checked here equal
    to the first."""
    values = _flatten(structured)
    positions = list(getattr(result, "positions", range(len(values))))
    if len(values) != len(positions) or set(positions) != set(range(len(result.roots))):
        return None
    first = [values[positions.index(i)] for i in range(len(result.roots))]
    if any(v is not first[p] and _mismatch(v, first[p]) for v, p in zip(values, positions)):
        return None
    return first


def _shapes(result) -> dict:
    return {name: tuple(d.offset if d.name is None else str(d) for d in shape)
            for name, shape in result.lowered.declared.items()}


def _source(result, width: int = 400) -> str:
    text = result.lowered.source or "<no source text>"
    return text if len(text) <= width else text[:width] + f" ... ({len(text)} characters)"


def _host(value):
    """A value of any backend as numpy: torch tensors (on any device) and cupy arrays are
    copied to the host; numpy, jax and Python values pass through `np.asarray` as they are."""
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    return value


def _host_arrays(arrays: dict) -> dict:
    """The call's inputs as numpy arrays: the IR interpreter and the parsed-back formula run
    on numpy, whatever backend the result was made for."""
    return {k: _host(v) for k, v in _copy(arrays).items()}


def _mismatch(actual, expected) -> str | None:
    """Why `actual` is not `expected`, or None when they agree (non-finite outputs skipped)."""
    expected = np.asarray(_host(expected))
    actual = np.asarray(_host(actual))
    if expected.dtype == object or actual.dtype == object:
        return f"non-numeric values: {actual!r} vs {expected!r}"
    if actual.shape != expected.shape:
        return f"shape {actual.shape} instead of {expected.shape}"
    if expected.size == 0:
        return None
    # Results keep the inputs' dtype: float32 results agree to float32's precision only.
    rtol = max(RTOL, 100 * _eps(actual.dtype), 100 * _eps(expected.dtype))
    expected = expected.astype(np.complex128 if expected.dtype.kind == "c" else np.float64,
                               copy=False)
    actual = actual.astype(expected.dtype, copy=False)
    magnitude = np.abs(expected)
    scale = float(np.max(magnitude))
    if not np.isfinite(scale):  # max propagates nan, so this is every entry finite
        return None
    # Two evaluation orders of one program differ by rounding relative to the intermediate
    # values, which can cancel to an exact zero: an absolute floor of 1e-12 covers that.
    atol = rtol * max(scale, 1e-3)
    # np.allclose's test, |actual - expected| <= atol + rtol * |expected|, with both finite
    # (a nan or inf difference fails it), written out: allclose costs ten times more.
    with np.errstate(all="ignore"):
        difference = np.abs(actual - expected)
        if not np.all(difference <= atol + rtol * magnitude):
            err = float(np.max(difference))
            return f"max abs difference {err:.3g} (largest expected entry {scale:.3g})"
    return None


@functools.lru_cache(maxsize=None)
def _eps(dtype: np.dtype) -> float:
    """Machine epsilon of a float or complex dtype, 0 for others (np.finfo is slow to ask)."""
    return float(np.finfo(dtype).eps) if dtype.kind in "fc" else 0.0


def _abridged(formula: str, lines: int = 24, width: int = 400) -> list[str]:
    """The formula's lines for a report, cut down when it is huge."""
    text = formula.split("\n")
    if len(text) > lines:
        text = text[:lines // 2] + [f"... {len(text) - lines} lines ..."] + text[-lines // 2:]
    return [t if len(t) <= width else t[:width] + f" ... ({len(t)} characters)" for t in text]


# (formula text, shapes, rule book) -> the result of compiling that text with those shapes
# under that rule book: the check's own compiles, the most recently used kept across the tests
# of a module. using_rules freezes the rule book, so an entry never goes stale.
_compiled: OrderedDict = OrderedDict()


def _compile_key(text: str, shapes: dict, rules) -> tuple:
    return text, tuple(shapes.items()), rules


def _made_from_text(records: list) -> dict:
    """The results among `records` that the test made with `einderiv.compile(text, shapes)`
    (default options), by their compile key: what the check would get compiling that text."""
    made = {}
    for result, _ in records:
        function, args, kwargs = getattr(result, "_made_by", None) or (None, (), {})
        if function is einderiv.compile and len(args) == 2 and isinstance(args[0], str) and \
                not kwargs and result.rules.frozen:
            made[_compile_key(args[0], _shapes(result), result.rules)] = result
    return made


def _compile(text: str, shapes: dict, rules, made: dict):
    """`einderiv.compile(text, shapes)` under `rules`, or the same compiled before."""
    key = _compile_key(text, shapes, rules)
    if key in made:
        return made[key]
    if key in _compiled:
        _compiled.move_to_end(key)
        return _compiled[key]
    with using_rules(rules):  # the rules the result was made with (--rules)
        compiled = einderiv.compile(text, shapes)
    if len(text) > COMPILED_CHARS:
        made[key] = compiled
    else:
        _compiled[key] = compiled
        while len(_compiled) > COMPILED_KEPT:
            _compiled.popitem(last=False)
    return compiled


def _check_result(result, calls, made: dict) -> list[str]:
    problems = []
    head = f"expression: {_source(result)!r} ({type(result).__name__}"
    head += f" {result.kind} wrt {result.wrt})" if hasattr(result, "wrt") else ")"
    try:
        formula = result.formula
    except Exception as e:
        return [f"{head}\n  .formula raised {type(e).__name__}: {e}"]
    shown = "\n    ".join(_abridged(formula))
    head += f"\n  formula:\n    {shown}"
    try:
        programs = output_programs(formula, [name for name, _ in result.program.outputs])
    except ValueError as e:
        return [f"{head}\n  {e}"]
    shapes = _shapes(result)
    ir_size = len(topological(*result.roots.values()))
    compiled = {}
    for name, text in programs:
        try:
            compiled[name] = _compile(text, shapes, result.rules, made)
        except Exception as e:
            problems.append(f"{head}\n  output '{name}': the formula does not compile back: "
                            f"{type(e).__name__}: {e}")
    for arrays, structured in calls:
        values = _per_output(result, structured)
        if values is None or len(values) != len(programs):
            problems.append(f"{head}\n  the {len(_flatten(structured))} values returned do not "
                            f"match the {len(programs)} outputs at their positions")
            continue
        # On the host once: a dask value is computed again each time numpy reads it.
        values = [np.asarray(_host(v)) for v in values]
        via_ir = None
        if ir_size <= IR_NODES_FOR_EVALUATE_IR:
            try:
                via_ir = _per_output(result, result.evaluate_ir(**_host_arrays(arrays)))
                if via_ir is None:
                    problems.append(f"{head}\n  evaluate_ir's values do not match the outputs")
            except Exception as e:
                problems.append(f"{head}\n  evaluate_ir raised {type(e).__name__}: {e}")
        for i, (name, _) in enumerate(programs):
            if via_ir is not None:
                why = _mismatch(values[i], via_ir[i])
                if why:
                    problems.append(f"{head}\n  output '{name}': generated code and "
                                    f"evaluate_ir differ: {why}")
            if name not in compiled:
                continue
            try:
                again = compiled[name](**_host_arrays(arrays))
            except Exception as e:
                problems.append(f"{head}\n  output '{name}': the parsed-back formula fails on "
                                f"the same arrays: {type(e).__name__}: {e}")
                continue
            why = _mismatch(again, values[i])
            if why:
                problems.append(f"{head}\n  output '{name}': the parsed-back formula gives "
                                f"other values: {why}")
    return problems


def _sample(records: list) -> list:
    """At most RESULTS_PER_TEST records, the first and last included, evenly spread."""
    if len(records) <= RESULTS_PER_TEST:
        return records
    step = (len(records) - 1) / (RESULTS_PER_TEST - 1)
    return [records[round(i * step)] for i in range(RESULTS_PER_TEST)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if item.get_closest_marker("no_roundtrip") is not None:
        return (yield)
    _state["active"], _state["records"] = True, {}
    try:
        outcome = yield  # raises if the test failed: nothing more to check then
    finally:
        _state["active"] = False
    records, _state["records"] = list(_state["records"].values()), {}
    made = _made_from_text(records)
    problems = []
    _state["checking"] = True
    try:
        with np.errstate(all="ignore"):
            for result, calls in _sample(records):
                problems += _check_result(result, calls, made)
    finally:
        _state["checking"] = False
    if problems:
        shown = problems[:5]
        more = f"\n... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise AssertionError("formula round trip / generated code vs IR:\n"
                             + "\n".join(shown) + more)
    return outcome


@pytest.fixture(autouse=True, scope="module")
def frozen_survivors():
    """Before each test module, what the earlier ones left alive (JAX and torch once imported,
    pytest's items, tables and caches: most of a million objects) leaves the cycle collector's
    generations (gc.freeze): every full collection walked all of it again, a tenth of the
    suite's time. Nothing a test makes is frozen, and the collector is otherwise as it was.
    The check's compiled formulas are let go first: once frozen, one dropped later would stay
    (a generated module refers to itself)."""
    _compiled.clear()
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture
def restore_default_rules():
    """Undo what a test loads into the process-wide rule book."""
    import einderiv.rulebook.table as table
    saved = table._DEFAULT
    table._DEFAULT = saved.copy() if saved else None
    yield
    table._DEFAULT = saved


def _run_threads(*calls, timeout: float = 120.0) -> None:
    """Run each `(target, *args)` in its own thread with the interpreter switching threads
    every microsecond (as often as it can), and wait for all; the interval is restored."""
    import sys
    import threading
    threads = [threading.Thread(target=target, args=args) for target, *args in calls]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    finally:
        sys.setswitchinterval(interval)


@pytest.fixture
def run_threads():
    """`run_threads((target, *args), ...)`: the thread harness of the thread-safety tests."""
    return _run_threads


def _peak_bytes(f) -> int:
    """The peak of what Python and numpy allocate while `f()` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def peak_bytes():
    """`peak_bytes(f)`: the peak memory allocated while `f()` runs, in bytes."""
    return _peak_bytes


# -- every `.latex` a test makes renders with matplotlib's mathtext (issue 15) ----------------
# A block's rows are rendered one at a time (mathtext has no `aligned`). Rendering takes about
# 0.1 to 0.5 ms a character (a second for a row of an unrolled product), so a test's distinct
# rows are taken spread evenly, at most LATEX_ROWS_PER_TEST of them and LATEX_CHARACTERS in
# all (tests/test_latex.py checks a broad corpus: every row well formed, and rows holding all
# that the corpus writes rendered).
LATEX_ROWS_PER_TEST = 12
LATEX_CHARACTERS = 1500
_latex_made: list[str] = []
_original_latex = api._Result.latex


def _recording_latex(self):
    text = _original_latex.fget(self)
    _latex_made.append(text)
    return text


api._Result.latex = property(_recording_latex, doc=_original_latex.__doc__)


def _mathtext_problems(latex, limit: int | None = None) -> list[str]:
    """What matplotlib's mathtext cannot render among the rows of a `.latex` block (or of a
    list of them)."""
    from einderiv.generate.latex import mathtext_lines
    from matplotlib.mathtext import MathTextParser
    blocks = [latex] if isinstance(latex, str) else latex
    rows = list(dict.fromkeys(row for text in blocks for row in mathtext_lines(text)))
    if limit is not None:
        if len(rows) > limit:
            rows = [rows[round(i * (len(rows) - 1) / (limit - 1))] for i in range(limit)]
        budget, taken = LATEX_CHARACTERS, []
        for row in sorted(rows, key=len):
            if len(row) <= budget:
                taken.append(row)
                budget -= len(row)
        rows = taken
    parser = MathTextParser("agg")
    problems = []
    for row in rows:
        try:
            parser.parse(f"${row}$")
        except ValueError as e:
            problems.append(f"{row}\n    {str(e).splitlines()[-1]}")
    return problems


@pytest.fixture
def mathtext():
    """`mathtext(latex)`: the rows of a `.latex` block that matplotlib cannot render."""
    pytest.importorskip("matplotlib")
    return _mathtext_problems


@pytest.fixture(autouse=True)
def latex_renders():
    _latex_made.clear()
    yield
    if not _latex_made:
        return
    try:
        import matplotlib  # noqa: F401 - the test extra has it
    except ImportError:
        return
    made = list(_latex_made)
    _latex_made.clear()
    problems = _mathtext_problems(made, LATEX_ROWS_PER_TEST)
    if problems:
        pytest.fail("LaTeX that matplotlib's mathtext cannot render:\n" + "\n".join(problems))


# The frameworks, skipped where not installed; JAX with x64, as every JAX reference of the suite.
@pytest.fixture
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # as the other JAX references of the suite
    return jax


@pytest.fixture
def torch():
    return pytest.importorskip("torch")
