"""Predictions first: the feedback path waits (bounded) while the predict plane has batches in hand."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from streams.plane.priority import BATCH_WAIT_S, STEP, STEP_WAIT_S, GiveWay, paced
from streams.plane.service import Plane
from streams.plane.source import SourceBatch


def test_a_feedback_batch_waits_while_the_predict_path_is_busy_and_starts_once_it_is_idle() -> None:
    async def scenario() -> tuple[bool, bool]:
        give_way = GiveWay()
        give_way.busy()
        waiting = asyncio.ensure_future(give_way.wait_async())
        await asyncio.sleep(0)
        waited = not waiting.done()
        give_way.idle()
        await asyncio.wait_for(waiting, BATCH_WAIT_S / 2)  # woken, not timed out
        return waited, waiting.done()

    assert asyncio.run(scenario()) == (True, True)


def test_a_feedback_batch_starts_after_at_most_BATCH_WAIT_S_when_the_predict_path_stays_busy() -> None:
    async def scenario() -> float:
        give_way = GiveWay()
        give_way.busy()
        started = time.monotonic()
        await asyncio.wait_for(give_way.wait_async(), 5.0)  # never waits for good
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= BATCH_WAIT_S * 0.9


def test_steps_wait_at_every_STEP_th_record_and_for_at_most_STEP_WAIT_S(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    give_way = GiveWay()
    give_way.busy()
    started = time.monotonic()
    for _ in paced(range(2 * STEP), give_way):
        pass
    assert time.monotonic() - started >= 2 * STEP_WAIT_S * 0.9  # two waits, each bounded

    waits: list[float | None] = []
    monkeypatch.setattr(give_way, "_idle", SimpleNamespace(wait=waits.append))
    assert list(paced(range(3 * STEP), give_way)) == list(range(3 * STEP))
    assert waits == [STEP_WAIT_S] * 3


def test_the_serving_loop_is_busy_from_taking_a_batch_until_its_queue_is_empty_again() -> None:
    async def scenario() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        plane = SimpleNamespace(
            _queue=asyncio.Queue(), give_way=GiveWay(), _gives_way_to=None, ledger=SimpleNamespace()
        )
        plane.ledger.handled = lambda batch_id: None

        async def handle(batch: SourceBatch) -> None:
            seen.append((f"b{batch.batch_id}", plane.give_way._idle.is_set()))

        plane._handle = handle
        for batch_id in range(2):
            plane._queue.put_nowait(SourceBatch(batch_id, []))
        serving = asyncio.ensure_future(Plane._serve_forever(plane))  # type: ignore[arg-type]
        while len(seen) < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(("after", plane.give_way._idle.is_set()))
        serving.cancel()
        return seen

    assert asyncio.run(scenario()) == [("b0", False), ("b1", False), ("after", True)]
