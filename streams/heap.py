"""The garbage collector and the heap a worker builds once."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Move everything alive now (modules, models, the Feast store) out of the garbage collector's
    sight, once the runtime is built. Every full collection walked all of it with the GIL held:
    ~90 ms every few thousand batches, the periodic slow slices of bench/bench_join_memory.py and
    the worker's latency outliers. What is allocated later is still collected."""
    gc.collect()
    gc.freeze()
