"""Faust's rebalance handling, fixed where it loses or stalls messages.

1. Seek before resume. faust-streaming (0.15.3 and earlier) finishes a rebalance by resuming the
   stream partitions and only then seeking them to their committed offsets. With the fetcher already
   running (it reads the changelogs during recovery), the agents receive messages in between; the
   seek then resets the read offsets under them, and Faust's gap bookkeeping counts the messages
   that were in flight as acked: they are committed and never processed. Measured in
   `tests/e2e/test_join.py`: a worker started over a backlog of 13 outcomes per partition skipped 2
   to 9 of them in 3 of 4 runs. `SeekThenResumeRecovery` is Faust's own two methods, reordered: seek
   while the partitions are still paused, then resume.

2. A watchdog for silent partitions. Rarely, a worker started over a backlog never reads one of its
   partitions: no error, no skipped-message line, the committed offset unchanged (`StuckPartitions`
   has the details). `install_partition_watchdog` finds such a partition and reads it again.

`streams.app.make_app` installs both.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import cast

import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka
from faust.types import TP

from streams.timers import supervised

log = logging.getLogger(__name__)


class SeekThenResumeRecovery(Recovery):
    """`Recovery` that seeks stream partitions to their committed offsets before resuming them."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Call when active table recovery is completed (Faust's steps, seek before resume)."""
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume_streams()
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Resume streams after a rebalance without table recovery (seek before resume)."""
        app = self.app
        consumer = app.consumer
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume_streams()
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _seek_then_resume_streams(self) -> None:
        consumer = self.app.consumer
        assignment = consumer.assignment()
        if not assignment:
            return
        self.log.info("Seek stream partitions to committed offsets, then resume them.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})


class SeekThenResumeTableManager(TableManager):
    """Faust's `TableManager` with `SeekThenResumeRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        """Recovery service used by this table manager."""
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(
                self.app, cast(TableManager, self), beacon=self.beacon, loop=self.loop
            )
        return self._recovery


@dataclass(frozen=True)
class PartitionProgress:
    """What Faust knows of one stream partition at one moment."""

    start: int | None  # where reading resumes: the committed offset, else the log start
    read: int | None  # last offset handed to the streams
    highwater: int | None  # the log end offset, as last fetched
    in_flight: bool  # messages read and not yet acked
    held: bool  # paused by Faust, or held back by a full stream buffer

    def waiting(self) -> bool:
        """Messages wait on the broker while nothing is being worked on."""
        return (
            not self.in_flight
            and not self.held
            and self.start is not None
            and self.highwater is not None
            and self.highwater > self.start
        )


class StuckPartitions:
    """Finds stream partitions that have messages waiting and make no progress.

    faust-streaming can leave a partition silent after a worker starts over a backlog: its messages
    are never handed to the streams, and nothing is logged (seen in `tests/e2e/test_join.py` and in
    CI: 13 outcomes on one partition never read in 3 minutes, the committed offset unchanged). A
    partition counts as stuck when it was `waiting` with the same read and start offsets at `checks`
    consecutive looks; seeking it to its start offset makes the consumer read it again.
    """

    def __init__(self, checks: int = 2) -> None:
        self._checks = checks
        self._seen: dict[TP, tuple[int | None, int | None, int]] = {}

    def look(self, progress: dict[TP, PartitionProgress]) -> list[TP]:
        """The partitions stuck as of this look (each reported once, then watched afresh)."""
        stuck: list[TP] = []
        seen: dict[TP, tuple[int | None, int | None, int]] = {}
        for tp, now in progress.items():
            if not now.waiting():
                continue
            before = self._seen.get(tp)
            times = before[2] + 1 if before and before[:2] == (now.read, now.start) else 1
            if times >= self._checks:
                stuck.append(tp)
            else:
                seen[tp] = (now.read, now.start, times)
        self._seen = seen
        return stuck


async def partition_progress(consumer: aiokafka.Consumer) -> dict[TP, PartitionProgress]:
    """The progress of every assigned stream partition (changelogs are read by recovery)."""
    tps = [tp for tp in consumer.assignment() if not consumer._is_changelog_tp(tp)]
    committed = {tp: consumer._committed_offset.get(tp) for tp in tps}
    # Only a partition with messages can be waiting: ask the broker for the log start of those alone.
    never_committed = [tp for tp, offset in committed.items() if offset is None and consumer.highwater(tp)]
    log_start = await consumer.earliest_offsets(*never_committed) if never_committed else {}
    in_flight = {message.tp for message in list(consumer._unacked_messages)}
    held = consumer._paused_partitions | consumer._buffered_partitions
    return {
        tp: PartitionProgress(
            start=committed[tp] if committed[tp] is not None else log_start.get(tp),
            read=consumer._read_offset.get(tp),
            highwater=consumer.highwater(tp),
            in_flight=tp in in_flight,
            held=tp in held,
        )
        for tp in tps
    }


def install_partition_watchdog(app: faust.App, interval_s: float) -> None:
    """Every `interval_s`, seek stuck partitions (see `StuckPartitions`) to their start offsets."""
    watch = StuckPartitions()

    @app.timer(interval=interval_s)
    @supervised
    async def watch_partitions() -> None:
        consumer = cast(aiokafka.Consumer, app.consumer)
        if app.rebalancing or not consumer.flow_active:
            watch.look({})
            return
        progress = await partition_progress(consumer)
        for tp in watch.look(progress):
            start = cast(int, progress[tp].start)  # a waiting partition has one
            log.warning(
                "partition stuck, reading it again from offset %s topic=%s partition=%s highwater=%s",
                start,
                tp.topic,
                tp.partition,
                progress[tp].highwater,
            )
            consumer.resume_partitions({tp})
            await consumer.seek(tp, start)
