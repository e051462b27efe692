"""Process tuning for the engine (garbage collection while it runs).

CPython's cyclic garbage collector runs a young-generation pass every 700 container
allocations and, as the heap grows, full passes over every tracked object. A worker
allocates a few dicts per event and keeps large caches (tokens, data keys, LDP memos)
of tuples, so with the default thresholds most of a batch's time went to scanning
those caches (measured: the privatizer core at 25k events/s with the defaults, 92k
with the thresholds below, on the same warm batches). The engines allocate almost
no reference cycles, so collecting less often costs little memory; reference
counting still frees everything else immediately.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["ENGINE_GC_THRESHOLDS", "relaxed_gc"]

#: (young, middle, old) thresholds used while an engine runs.
ENGINE_GC_THRESHOLDS = (100_000, 50, 1000)


@contextlib.contextmanager
def relaxed_gc(thresholds: tuple[int, int, int] = ENGINE_GC_THRESHOLDS) -> Iterator[None]:
    """Run the block with less frequent cyclic GC; the previous thresholds are restored after."""
    previous = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
