"""Python's cycle collector paused for the length of one whole-program pass."""
from __future__ import annotations

import contextlib
import gc
import threading

# The collector is one for all threads: the first of overlapping pauses records whether it was
# on and switches it off, the last switches it back on. (Each pause reading and setting it on
# its own, one thread could read "off" from another's pause and, leaving after it, keep the
# collector off for the rest of the process.)
_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def paused_gc():
    """Run the block with the cycle collector off, then restore it as it was.

    The passes over a long program (vectorizing, code generation) allocate millions of small
    acyclic objects (IR nodes, syntax trees, tuples) and keep most of them alive until the end,
    so every generation-2 collection walks an ever larger heap and finds nothing: a third of the
    pass's time at a few thousand steps, growing with the size. Reference counting still frees
    everything they drop; any cycle waits for the next collection after the block. The collector
    is switched back on only if it was on before (a caller that turned it off keeps it off),
    when the last of the pauses that overlap (in several threads) ends.
    """
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
