"""A data plane for one Faust app: source, ledger, sink, health and the loop that serves batches.

The batches are served by a task of the app's own service, over a plain asyncio queue, not by a Faust
agent over a channel: a Faust stream skips, silently, every event created before its app's latest
rebalance (`message.generation_id != app.consumer_generation_id`) and clears its queues on each
rebalance. The worker's other Faust consumers rebalance whenever a worker joins or leaves, and a
skipped batch would never finish (seen in tests/faults: a second worker joining made the first one
skip batches, whose partitions then stalled). Faust still runs everything around it: the app and
its lifecycle, timers, the web server, `faust -A` deployment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import faust
from mode import Service

from rig.config import KafkaConfig
from rig.errors import Unavailable
from streams.metrics import WorkerMetrics
from streams.plane.health import Health, Waiting
from streams.plane.ledger import OffsetLedger
from streams.plane.ledger import TopicPartition as TP
from streams.plane.priority import GiveWay
from streams.plane.sink import DeliveringSink
from streams.plane.source import BatchSource, SourceBatch, SourceSettings
from streams.plane.transactions import TransactionalSink

log = logging.getLogger(__name__)

T = TypeVar("T")

CRASH_EXIT_CODE = 70
"""Exit code of a worker whose batch handler met an error it cannot handle; its supervisor restarts
it, and its uncommitted requests are answered by the next owner of their partitions."""

Handler = Callable[[SourceBatch], Awaitable[None]]
"""Answers one batch and publishes its outputs through the plane's sink."""
Tick = Callable[[], Awaitable[bool]]
"""Periodic work on the same state as the handler (e.g. a sweep), run between batches; it returns
True when it has more to do, and runs again after the batches queued meanwhile."""


class Plane:
    """The source hands micro-batches to a queue; `handle` (set with `serve`) answers each in order and
    publishes its outputs through `sink`, whose delivery reports finish the batch in `ledger`; the
    source commits what the ledger says is finished."""

    def __init__(
        self,
        app: faust.App,
        client_config: KafkaConfig,
        producer_config: KafkaConfig,
        settings: SourceSettings,
        health: Health,
        *,
        on_assigned: Callable[[set[TP]], None] | None = None,
        on_revoked: Callable[[set[TP], bool], None] | None = None,
        start_offsets: Callable[[set[TP]], dict[TP, int]] | None = None,
        metrics: WorkerMetrics | None = None,
        gives_way_to: GiveWay | None = None,
    ) -> None:
        """`client_config` is the source consumer's base, `producer_config` the sink producer's; see
        `BatchSource` for `on_assigned`, `on_revoked`, `start_offsets` (they run in the source's thread)
        and `metrics` (which also exports what `health` waits for, as `rig_waiting_seconds` of the
        plane's consumer group). A source that does not commit (`settings.commits` False) publishes
        through a `TransactionalSink`: exactly once. Each batch waits for `gives_way_to` first (another
        plane's `give_way`, see `streams.plane.priority`)."""
        self.health = health
        if metrics is not None:
            metrics.watch_waits(settings.group_id, health)
        self.ledger = OffsetLedger()
        self.source = BatchSource(
            client_config,
            settings,
            self.ledger,
            health,
            self._hand_over,
            on_assigned,
            on_revoked,
            start_offsets,
            metrics,
        )
        self.sink: DeliveringSink | TransactionalSink = (  # both are a `Sink`
            DeliveringSink(producer_config, self.ledger.finish, health)
            if settings.commits
            else TransactionalSink(
                producer_config,
                settings.group_id,
                self.ledger,
                health,
                self.source.group_metadata,
                settings.transaction_timeout_s,
            )
        )
        self._start: Callable[[], Awaitable[Handler]] | None = None
        self._handle: Handler | None = None
        self._ticks: list[tuple[float, Tick]] = []
        self.give_way = GiveWay()
        """Idle while this plane has no batch queued or in hand (for planes that give way to it)."""
        self._gives_way_to = gives_way_to
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[SourceBatch | Tick] | None = None
        app.service(self._service())

    def serve(self, start: Callable[[], Awaitable[Handler]]) -> None:
        """Answer every batch with the handler `start()` returns; it is awaited before the source
        joins its group (models loaded and warmed first). An error the handler raises exits the
        worker for a restart."""
        self._start = start

    async def until_available(self, batch: SourceBatch, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """`attempt()` the work of a batch until no dependency it needs is away: each `Unavailable` is
        waited out with backoff, readiness naming it, and nothing of the batch is published meanwhile
        (`attempt` must have no effect it would repeat). None when the batch's partitions were revoked
        or lost meanwhile: given up, their new owner does it from the committed offsets."""
        waiting = Waiting(self.health)
        while self.source.owns(batch):
            try:
                result = await attempt()
            except Unavailable as error:
                self.give_way.idle()  # nothing to do until the dependency is back: others may go on
                await asyncio.sleep(waiting.away(error))
                self.give_way.busy()
                continue
            waiting.done()
            return result
        log.info(
            "batch given up, its partitions moved batch=%d messages=%d", batch.batch_id, len(batch.messages)
        )
        waiting.given_up()
        return None

    def every(self, interval_s: float, tick: Tick) -> None:
        """Run `tick` about every `interval_s`, in turn with the batches (never at the same time)."""
        self._ticks.append((interval_s, tick))

    async def _schedule(self, interval_s: float, tick: Tick) -> None:
        assert self._queue is not None
        while True:
            await asyncio.sleep(interval_s)
            self._queue.put_nowait(tick)

    def _hand_over(self, batch: SourceBatch) -> None:
        """Called in the source's thread. The queue is bounded by the source's `max_open_batches`."""
        assert self._loop is not None and self._queue is not None, "the plane hands over once started"
        self._loop.call_soon_threadsafe(self._queue.put_nowait, batch)

    async def _serve_forever(self) -> None:
        assert self._queue is not None and self._handle is not None
        while True:
            if self._queue.empty():
                self.give_way.idle()
            item = await self._queue.get()
            self.give_way.busy()
            if self._gives_way_to is not None:
                await self._gives_way_to.wait_async()
            try:
                if isinstance(item, SourceBatch):
                    await self._handle(item)
                    self.ledger.handled(item.batch_id)
                elif await item():
                    self._queue.put_nowait(item)
            except Exception:
                log.critical("a batch could not be handled, exiting for a restart", exc_info=True)
                os._exit(CRASH_EXIT_CODE)  # nothing of this batch was committed: the next owner redoes it

    def _service(self) -> type[Service]:
        plane = self

        class DataPlane(Service):
            """Starts the sink, the serving task, then the source; stops the source, then the sink."""

            async def on_start(self) -> None:
                if plane._start is None:
                    raise RuntimeError("Plane.serve(start) must be called before the app starts")
                plane._handle = await plane._start()
                plane._loop = asyncio.get_running_loop()
                plane._queue = asyncio.Queue()
                await asyncio.to_thread(plane.sink.start)
                self.add_future(plane._serve_forever())
                for interval_s, tick in plane._ticks:
                    self.add_future(plane._schedule(interval_s, tick))
                plane.source.start()

            async def on_stop(self) -> None:
                await asyncio.to_thread(plane.source.stop)
                left = await asyncio.to_thread(plane.sink.close)
                if left:
                    log.warning("stopped with %d outputs undelivered (their requests stay uncommitted)", left)

        return DataPlane
