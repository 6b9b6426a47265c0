"""Python's cycle collector paused for the length of one whole-program pass."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def paused_gc():
    """Run the block with the cycle collector off, then restore it as it was.

    The passes over a long program (vectorizing, code generation) allocate millions of small
    acyclic objects (IR nodes, syntax trees, tuples) and keep most of them alive until the end,
    so every generation-2 collection walks an ever larger heap and finds nothing: a third of the
    pass's time at a few thousand steps, growing with the size. Reference counting still frees
    everything they drop; any cycle waits for the next collection after the block. The collector
    is switched back on only if it was on before (a caller that turned it off keeps it off).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
