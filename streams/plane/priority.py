"""Predictions first: the feedback path of a worker gives way to its predict path.

A worker that predicts and joins (the default roles) runs both on one event loop and one GIL. The
join's work comes in long stretches (a batch of 500 predictions and outcomes is ~10 ms of Python in a
thread), and a predict batch that arrives meanwhile waits for its turn at the loop, and at the GIL each
time it comes back from Redis or XGBoost. Outcomes wait minutes to hours for their predictions anyway;
a prediction's caller waits for every millisecond.

So the predict plane says when it has batches queued or in hand (`busy` / `idle`; idle too while it
waits for a dependency that is away), and the feedback code waits for it to be idle before each batch
(`wait_async`) and at steps within one (`paced`, every `STEP` records). Each wait is bounded, so under a
predict path that is never idle the feedback path slows down but goes on; it catches up once the
predict path's backlog is answered.

Measured on the 2-core machine, each pair of runs interleaved (RIG_FEEDBACK_GIVES_WAY true / false):
bench/bench_pipeline.py at 10,000 req/s, p99 of the shipped worker over 8 pairs 29-257 ms (median 50)
against 34-254 ms (median 88), the predict path alone 23-26 ms; bench/bench_feedback.py (100,000
requests with outcomes), 5 pairs: until idle (the last joined row) 7,879 against 7,747 req/s on
average, the backlog's predictions answered at a median 29,753 against 23,878 req/s.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

BATCH_WAIT_S = 0.05
"""Longest a feedback batch waits for the predict path to be idle before it starts."""
STEP_WAIT_S = 0.01
"""Longest a step within a feedback batch waits (at worst `STEP` records per this long, ~6,400 a
second, when the predict path is never idle)."""
STEP = 64
"""Records (messages, events, rows) between two steps' waits: ~1.5 ms of the join's work."""


class GiveWay:
    """Whether the predict path is idle, for the feedback path to wait on: from its threads (`wait`,
    through `paced`) and from the event loop (`wait_async`). `busy` and `idle` are called on the event
    loop."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()
        self._idle_on_loop = asyncio.Event()  # binds to the running loop on first use (3.10+)
        self._idle_on_loop.set()

    def busy(self) -> None:
        """The predict path has a batch queued or in hand."""
        self._idle.clear()
        self._idle_on_loop.clear()

    def idle(self) -> None:
        """The predict path has nothing to do."""
        self._idle.set()
        self._idle_on_loop.set()

    def wait(self) -> None:
        """In a thread: return once the predict path is idle, or after `STEP_WAIT_S` (the GIL is free
        meanwhile)."""
        self._idle.wait(STEP_WAIT_S)

    async def wait_async(self) -> None:
        """On the event loop: return once the predict path is idle, or after `BATCH_WAIT_S`."""
        if self._idle_on_loop.is_set():
            return
        try:
            await asyncio.wait_for(self._idle_on_loop.wait(), BATCH_WAIT_S)
        except TimeoutError:
            pass


def paced(records: Iterable[T], gives_way_to: GiveWay | None) -> Iterable[T]:
    """`records` for a loop in a thread that gives way to `gives_way_to` (`wait`) before every `STEP`-th
    of them; as they are without one."""
    return records if gives_way_to is None else _paced(records, gives_way_to)


def _paced(records: Iterable[T], give_way: GiveWay) -> Iterator[T]:
    for index, record in enumerate(records):
        if index % STEP == STEP - 1:
            give_way.wait()
        yield record
