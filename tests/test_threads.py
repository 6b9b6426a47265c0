"""Everything public is safe to call from several threads (issue 10, fault 6).

One stress test interleaves, from 8 threads with a one-microsecond switch interval, the places
that used to race, round after round:

- building the same *new* expression in every thread at once (hash-consing of the IR),
- first calls of one fresh result with a different shape signature in every thread (binding
  dimension names and specializing), some of them invalid (`x[:p]` with p > m),
- loading a rule file while the other threads build with `einderiv.fn` and the rule book.

Every answer is compared with a hand-written numpy value; an invalid call must raise
`ShapeError` every time and a valid one never.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import einderiv
from einderiv import ShapeError

THREADS = 8
# Four calls per thread and round (a fresh gradient built and called three times, a fresh slice
# result called once): 5,120 calls in all (issue 10: at least 5,000), 1,280 derivations.
ROUNDS = 160


@pytest.mark.no_roundtrip  # the suite-wide recorder of results is not meant for threads
def test_threads_build_call_and_load_rules(tmp_path, restore_default_rules, run_threads):
    rules = tmp_path / "cube.rules"
    rules.write_text("def cube(x) = x * x * x\n")
    slices = [einderiv.grad("sum(x[:p] * y)", "x", {"x": ("m",), "y": ("p",)})
              for _ in range(ROUNDS)]  # a fresh result (empty caches) per round
    barrier = threading.Barrier(THREADS)
    failures: list = []
    calls = [0] * THREADS

    def worker(t):
        rng = np.random.default_rng(t)
        for r in range(ROUNDS):
            barrier.wait()
            c = 0.5 + r + t % 2 / 4  # new constants each round: new IR nodes, built by 4 at once
            try:
                if t == 0 and r % 10 == 0:
                    einderiv.load_rules(rules)
                n = int(rng.integers(0, 5))
                x, y = rng.standard_normal(n), rng.standard_normal(n)
                v = einderiv.var("x", ("n",))
                source = einderiv.fn.sum(einderiv.fn.tanh(v * c) * einderiv.var("y", ("n",)))
                g = einderiv.grad(source, "x")
                for k in range(3):  # its first call (specializing it) and two more, other sizes
                    if k:
                        n = int(rng.integers(0, 5))
                        x, y = rng.standard_normal(n), rng.standard_normal(n)
                    got = g(x=x, y=y)
                    calls[t] += 1
                    # tanh' = sech^2, written without overflow and without 1 - tanh^2's
                    # cancellation
                    e = np.exp(-2 * np.abs(c * x))
                    want = c * y * (4 * e / (1 + e) ** 2)
                    # Below the smallest normal number values are compared absolutely.
                    tiny = np.finfo(np.float64).tiny
                    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-12,
                                                                  atol=tiny):
                        failures.append((t, r, "build", got, want))
            except Exception as e:  # noqa: BLE001 - every error here is a failure to report
                failures.append((t, r, "build", type(e).__name__, str(e)))
            m = 1 + (t + r) % 4
            p = m + 1 if (t + r) % 5 == 0 else (t * 7 + r) % (m + 1)  # p > m is invalid
            x, y = rng.standard_normal(m), rng.standard_normal(p)
            try:
                got = slices[r](x=x, y=y)
                calls[t] += 1
            except ShapeError as e:
                calls[t] += 1
                if p <= m:
                    failures.append((t, r, "slice", "spurious ShapeError", str(e)))
                continue
            except Exception as e:  # noqa: BLE001
                failures.append((t, r, "slice", type(e).__name__, str(e)))
                continue
            want = np.concatenate([y, np.zeros(m - p)]) if p <= m else None
            if want is None or got.shape != want.shape or not np.array_equal(got, want):
                failures.append((t, r, "slice", got, want))

    run_threads(*[(worker, t) for t in range(THREADS)])
    assert sum(calls) >= 5000
    assert not failures, f"{len(failures)} of {sum(calls)} calls went wrong: {failures[:5]}"
