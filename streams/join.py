"""The join: outcomes joined to every model's prediction, on the data plane, with its state on disk.

Predictions and outcomes are keyed by entity id and partitioned with Kafka's default partitioner
(murmur2; the rig's producers use it too, see `RigSettings.kafka_producer_config`), so partition p
of both topics holds the same entities. The join's consumer group assigns partitions by range, so a
worker holds partition p of both topics and joins them in p's store (`rig.feedback.join_store`) with
no re-key hop. A record that arrives on another partition than its entity's (a producer with another
partitioner) takes one hop through `<prefix>join-reroute`, on the right partition and with its
original timestamp; the join reads that topic too.

Every change of a partition's state is also written to its partition of the compacted
`<prefix>join-changelog`, as an output of the batch: the batch's offsets are committed only once its
joined rows and its changelog records are delivered. The changelog records are produced only once the
batch's joined rows are delivered (`DeliveringSink.publish(after=...)`): a record that says "joined"
on Kafka without its rows would, after a crash, make the redo of the batch count the outcome as a
duplicate and never emit them. The other way round, a crash repeats rows, which the promoter drops.
A worker that takes a partition over restores its store from the changelog first (or keeps the store
it had, when nobody wrote since). Retention is judged on the source timestamps of the records
(`rig.feedback.join`); the sweep reads only what is due, from an index, in slices between batches.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import msgspec
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from rig.config import KafkaConfig, RigSettings
from rig.errors import ConfigError, KafkaUnavailable
from rig.feedback.join import (
    JoinEvent,
    StreamClock,
    compact_outcome,
    compact_prediction,
    invalid_outcome_reason,
    on_outcome,
    on_prediction,
    sweep,
)
from rig.feedback.join_store import Change, JoinStore, StoreMemory
from rig.feedback.store_folder import claim_store_folder
from rig.wire.codec import Codec, ErrorType, Rejected
from rig.wire.partitioner import partition_for
from rig.wire.records import DeadLetter, JoinedOutcome, Outcome, Prediction
from streams.app import source_settings
from streams.consumed import dead_letter_output
from streams.join_restore import PartitionJob, RestoreJob, restore_in_child
from streams.metrics import WorkerMetrics
from streams.plane.health import Health
from streams.plane.ledger import TopicPartition as TP
from streams.plane.priority import GiveWay, paced
from streams.plane.service import Handler, Plane
from streams.plane.sink import Outgoing
from streams.plane.source import SourceBatch
from streams.timers import supervised

log = logging.getLogger(__name__)

SWEEP_SLICE = 250
"""Entries one sweep turn expires or removes, on one partition. A turn holds the join's serving task
(the work runs in a thread; the event loop goes on), so it is kept short: 5-10 ms of CPU at the median,
at most 14 ms over 2 M entries and 26 ms over 10 M (bench/bench_join_memory.py, heap frozen as in the
worker)."""
CHANGELOG_END_TIMEOUT_S = 30.0
"""How long reading a changelog partition's end may take before Kafka counts as away."""
_encode_entry = msgspec.msgpack.Encoder().encode


@dataclass(eq=False)  # by identity: a batch's changes name the state they were computed from
class Partition:
    """The join state of one partition: its store and the clock its sweep follows."""

    store: JoinStore
    clock: StreamClock
    changelog_end: int | None = None
    """The changelog's end offset when the partition was let go (kept while nobody else writes)."""


class Join:
    """The join of the partitions a worker holds (see the module docstring)."""

    def __init__(
        self, settings: RigSettings, metrics: WorkerMetrics | None = None, gives_way_to: GiveWay | None = None
    ) -> None:
        """`metrics`: where dead letters are counted (the worker's; by default on a registry of its own);
        `gives_way_to`: the predict path's, in a worker that predicts too (see `streams.plane.priority`)."""
        self.settings = settings
        self.gives_way_to = gives_way_to
        self.metrics = metrics if metrics is not None else WorkerMetrics(CollectorRegistry())
        self.retention_ms = int(settings.join_retention_s * 1000)
        self.counts: Counter[JoinEvent] = Counter()
        self.topics = {
            "prediction": settings.topic("predictions"),
            "outcome": settings.topic("outcomes"),
            "reroute": settings.topic("join-reroute"),
        }
        self.changelog = settings.topic("join-changelog")
        self.joined = settings.topic("joined")
        self.partitions = settings.topic_partitions
        self.held: dict[int, Partition] = {}
        self.memory = StoreMemory(settings.join_memory_mib * 2**20)  # one budget, however many are held
        self._sweeping: set[int] = set()  # partitions that may have entries due in this sweep round
        self.let_go: dict[int, Partition] = {}
        self._writing = threading.Lock()
        """Held while a store is written or destroyed (`write` may write to a store let go, which an
        assignment in the source's thread may destroy)."""
        self._stores: Path | None = None
        registry = settings.schema_registry_url
        self.prediction_codec = Codec(Prediction, registry_url=registry)
        self.outcome_codec = Codec(Outcome, registry_url=registry, allow_json=True)
        self.joined_codec = Codec(JoinedOutcome, registry_url=registry)
        self.dead_letter_codec = Codec(DeadLetter, registry_url=registry)

    def folder(self, partition: int) -> Path:
        """Where a partition's store lives: in this process's own folder (`rig.feedback.store_folder`),
        claimed at the first assignment."""
        if self._stores is None:
            self._stores = claim_store_folder(self.settings.join_stores)
        return self._stores / f"{self.settings.topic_prefix}{partition}"

    # -- assignment (the source's thread) -----------------------------------------------------------
    def assigned(self, tps: set[TP]) -> None:
        """Restore the state of newly held partitions before their records are read (in a child
        process: `streams.join_restore`).

        Raises:
            KafkaUnavailable: a changelog's end could not be read; the source calls again once Kafka
                answers, and finds the partitions as they were.
        """
        to_restore: list[PartitionJob] = []
        for partition in sorted({p for _, p in tps} - set(self.held)):
            end = self._changelog_end(partition)  # first: a broker that is away changes nothing here
            kept = self.let_go.pop(partition, None)
            if kept is not None and kept.changelog_end == end:
                self.held[partition] = kept
                log.info("join partition %d kept (nobody wrote its changelog meanwhile)", partition)
                continue
            if kept is not None:
                with self._writing:
                    kept.store.destroy()
            shutil.rmtree(self.folder(partition), ignore_errors=True)
            to_restore.append(PartitionJob(partition, end, str(self.folder(partition))))
        if not to_restore:
            return
        job = RestoreJob(self._reader_config(), self.changelog, self.retention_ms, to_restore)
        for restored in restore_in_child(job):
            store = JoinStore(self.folder(restored.partition), self.retention_ms, self.memory)
            clock = StreamClock(wall_ms(), self.retention_ms, SOURCES)
            self.held[restored.partition] = Partition(store, clock)
            peak = restored.peak_rss_bytes
            log.info(
                "join partition %d restored %d changelog records in %.1f s (restore process peak %s)",
                restored.partition,
                restored.records,
                restored.seconds,
                "unknown" if peak is None else f"{peak / 2**20:.0f} MiB",
            )

    def revoked(self, tps: set[TP], finished: bool) -> None:
        """Let go of partitions no longer held: keep their store with the changelog's end, in case they
        come back before anybody else writes to them. Not when batches were given up or lost unfinished
        (`finished` False): the store is written as a batch is published, so it may hold changes whose
        changelog records and joined rows never reach Kafka; reused, a redo of those batches would find
        their requests joined and not emit their rows. Such a store is only closed when the partition
        comes back (a given-up batch may still be reading it), and restored then. Nor when the
        partitions were lost (`finished` False too): another worker may have written their changelog
        before this one learnt of it, and the end read now would match its store."""
        for partition in {p for _, p in tps} & set(self.held):
            state = self.held.pop(partition)
            state.changelog_end = None  # never the end a return finds: restored then
            if finished:
                try:
                    state.changelog_end = self._changelog_end(partition)
                except KafkaUnavailable:
                    pass
            else:
                log.info("join partition %d let go unfinished or lost: restored if it comes back", partition)
            self.let_go[partition] = state

    def _changelog_end(self, partition: int) -> int:
        """Where the changelog partition's committed records end: its last stable offset, as a
        read_committed reader sees it (a transaction still open, e.g. a killed worker's that the broker
        will abort, lies past it)."""
        consumer = self._reader()
        changelog = TopicPartition(self.changelog, partition)
        try:
            return int(consumer.get_watermark_offsets(changelog, timeout=CHANGELOG_END_TIMEOUT_S)[1])
        except KafkaException as error:
            raise KafkaUnavailable(f"the end of {self.changelog}-{partition} not read: {error}") from error
        finally:
            consumer.close()

    def _reader(self) -> Consumer:
        return Consumer(self._reader_config())

    def _reader_config(self) -> KafkaConfig:
        return {
            **self.settings.kafka_client_config(),
            "group.id": f"{self.settings.consumer_group('join')}-restore",  # never joined or committed
            "enable.auto.commit": False,
        }

    # -- batches (in a thread of the plane's serving task) --------------------------------------------
    def join_batch(
        self, batch: SourceBatch
    ) -> tuple[list[Outgoing], list[Outgoing], dict[Partition, list[Change]]]:
        """The outputs of a batch (joined rows, dead letters, re-routed records), its changelog records
        (published once those are delivered: a changelog record of a joined entry must never be on Kafka
        without the rows it says were emitted) and, per partition state, the store changes to write once
        both are published (`write`)."""
        # What may wait for the schema registry comes first, before anything is counted or changed:
        # the batch is tried again then (`Plane.until_available`).
        self.joined_codec.register()
        self.dead_letter_codec.register()
        by_partition: dict[int, list[tuple[Message, Prediction | Outcome | Rejected]]] = {}
        for message in paced(batch.messages, self.gives_way_to):
            # A consumed message has its partition; confluent-kafka types it Optional.
            by_partition.setdefault(message.partition(), []).append((message, self._decode(message)))  # type: ignore[arg-type]
        outputs: list[Outgoing] = []
        changelog: list[Outgoing] = []
        changes: dict[Partition, list[Change]] = {}
        for partition, decoded in by_partition.items():
            state = self.held.get(partition)
            if state is None:
                continue  # let go meanwhile: its new owner reads it from the last commit
            events = list(self._events(partition, decoded, outputs))
            changes[state] = self._apply(state, events, outputs)
            changelog += self._changelog_records(partition, changes[state])
        return outputs, changelog, changes

    def write(self, changes: dict[Partition, list[Change]]) -> None:
        """Write published changes to the stores they were computed from, held or let go meanwhile: a
        revoke waits for the batches of its partitions to be delivered (or committed), not written, and
        a store kept for a partition's return must hold every change its changelog's end includes;
        skipped, a batch's "joined" markers would be missing and its outcomes' redeliveries join again.
        A store let go unfinished is never reused, and one destroyed meanwhile is left alone."""
        with self._writing:
            for state, partition_changes in changes.items():
                if not state.store.closed:
                    state.store.write(partition_changes)

    def _events(
        self,
        partition: int,
        messages: list[tuple[Message, Prediction | Outcome | Rejected]],
        outputs: list[Outgoing],
    ) -> Iterator[tuple[str, str, dict[str, object], int]]:
        """(kind, request id, compact record, source ms) of each usable (message, decoded record); bad
        ones become dead letters (outcomes with a label the promoter cannot score among them), ones on
        the wrong partition are re-routed."""
        for message, decoded in messages:
            if isinstance(decoded, Rejected):
                outputs.append(self._dead_letter(message, decoded.reason, decoded.error_type))
                continue
            reason = invalid_outcome_reason(decoded) if isinstance(decoded, Outcome) else None
            if reason is not None:
                outputs.append(
                    self._dead_letter(message, reason, ErrorType.INVALID_VALUE, decoded.request_id or None)
                )
                continue
            at_ms = int(message.timestamp()[1])
            right = partition_for(decoded.entity_id.encode(), self.partitions)
            if right != partition:
                self.counts["rerouted"] += 1
                key = decoded.entity_id.encode()
                outputs.append(Outgoing(self.topics["reroute"], key, message.value(), right, at_ms))
                continue
            if isinstance(decoded, Prediction):
                yield "prediction", decoded.request_id, compact_prediction(decoded), at_ms
            else:
                yield "outcome", decoded.request_id, compact_outcome(decoded), at_ms

    def _decode(self, message: Message) -> Prediction | Outcome | Rejected:
        value = message.value() or b""
        if message.topic() == self.topics["prediction"]:
            return self.prediction_codec.decode(value)
        decoded = self.outcome_codec.decode(value)
        if message.topic() == self.topics["reroute"] and isinstance(decoded, Rejected):
            prediction = self.prediction_codec.decode(value)  # a re-routed prediction
            if not isinstance(prediction, Rejected):
                return prediction
        return decoded

    def _dead_letter(
        self, message: Message, reason: str, error_type: str, request_id: str | None = None
    ) -> Outgoing:
        self.counts["rejected"] += 1
        self.metrics.dead_lettered([error_type])
        return dead_letter_output(
            self.settings, self.dead_letter_codec, message, reason, error_type, request_id
        )

    def _apply(
        self, state: Partition, events: list[tuple[str, str, dict[str, object], int]], outputs: list[Outgoing]
    ) -> list[Change]:
        """Move the entries of a partition along, add the joined rows to `outputs`; returns the
        entries' changes."""
        ids = list(dict.fromkeys(request_id for _, request_id, _, _ in events))
        before = dict(zip(ids, state.store.get_many(ids), strict=True))
        current = dict(before)
        newest: dict[str, int] = {}
        for kind, request_id, record, at_ms in paced(events, self.gives_way_to):
            event = on_prediction if kind == "prediction" else on_outcome
            step = event(current[request_id], request_id, record, at_ms, self.retention_ms)
            current[request_id] = step.entry
            if step.counts:
                self.counts.update(step.counts)
            if step.joined:
                outputs += self._joined(step.joined)
            if kind not in newest or at_ms > newest[kind]:
                newest[kind] = at_ms
        now = wall_ms()
        for kind, at_ms in newest.items():  # the clock keeps each source's newest: once a batch will do
            state.clock.observe(kind, at_ms, now)
        return [(rid, before[rid], current[rid]) for rid in ids if current[rid] != before[rid]]

    def _joined(self, rows: Iterable[JoinedOutcome]) -> list[Outgoing]:
        return [Outgoing(self.joined, row.request_id.encode(), self.joined_codec.encode(row)) for row in rows]

    def _changelog_records(self, partition: int, changes: list[Change]) -> list[Outgoing]:
        return [
            Outgoing(self.changelog, rid.encode(), None if after is None else _encode_entry(after), partition)
            for rid, _, after in changes
        ]

    # -- the sweep (between batches) -------------------------------------------------------------------
    def sweep_slices(self) -> tuple[list[Outgoing], dict[Partition, list[Change]], bool]:
        """One turn of a sweep round: expire (or remove) what retention passed on one held partition,
        a slice of it. Returns the changelog records of the changes, the changes (to write once
        published), and whether the round goes on (a partition may still have entries due)."""
        if not self._sweeping:
            self._sweeping = set(self.held)  # a new round
        while self._sweeping:
            partition = min(self._sweeping)
            state = self.held.get(partition)
            now_ms = None if state is None else state.clock.now(wall_ms())
            if state is None or now_ms is None:  # let go meanwhile, or its source time is unknown yet
                self._sweeping.discard(partition)
                continue
            due = state.store.due(now_ms, SWEEP_SLICE)
            if len(due) < SWEEP_SLICE:
                self._sweeping.discard(partition)
            changes: list[Change] = []
            for request_id, entry in due:
                step = sweep(entry, now_ms, self.retention_ms)
                self.counts.update(step.counts)
                changes.append((request_id, entry, step.entry))
            return self._changelog_records(partition, changes), {state: changes}, bool(self._sweeping)
        return [], {}, False

    def log_counts(self) -> None:
        """The join's counters, one line."""
        log.info("join counts %s", " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none")


SOURCES = ("prediction", "outcome")


def install_join(
    app: faust.App, settings: RigSettings, metrics: WorkerMetrics, gives_way_to: GiveWay | None = None
) -> Plane:
    """Run the join on a data plane of its own (group `<prefix>join`, range assignment), with its dead
    letters and its partitions' lag in `metrics`, giving way to `gives_way_to` (the worker's predict
    plane's, if it has one); returns the plane (for the worker's health watch)."""
    join = Join(settings, metrics, gives_way_to)
    metrics.join_events.watch(join.counts)
    topics = (settings.topic("predictions"), settings.topic("outcomes"), settings.topic("join-reroute"))
    plane = Plane(
        app,
        settings.kafka_client_config(),
        settings.kafka_producer_config(),
        source_settings(
            settings, "join", topics, assignment_strategy="range", linger_s=settings.feedback_linger_s
        ),
        Health(needs_partitions=False),  # readiness is about answering requests
        on_assigned=join.assigned,
        on_revoked=join.revoked,
        metrics=metrics,
        gives_way_to=gives_way_to,
    )

    async def start() -> Handler:
        await asyncio.to_thread(check_copartitioned, settings, topics)

        async def handle(batch: SourceBatch) -> None:
            joined = await plane.until_available(batch, lambda: asyncio.to_thread(join.join_batch, batch))
            if joined is None:
                return
            outputs, changelog, changes = joined
            await plane.sink.publish(batch.batch_id, outputs, after=changelog)
            await asyncio.to_thread(join.write, changes)  # after: an aborted transaction left no trace

        return handle

    async def sweep() -> bool:
        changelog, changes, more = await asyncio.to_thread(join.sweep_slices)
        if changelog:  # behind the changelog records of the batches before (no offsets wait for these)
            await plane.sink.publish(plane.ledger.begin({}), (), after=changelog)
            await asyncio.to_thread(join.write, changes)
        return more

    plane.serve(start)
    plane.every(settings.join_sweep_interval_s, sweep)

    @app.timer(interval=30.0)
    @supervised
    async def log_join_counts() -> None:
        join.log_counts()

    @app.page("/join/counts/")
    async def join_counts(web: Any, request: Any) -> Any:
        """This process's join counters (joined, late, orphans, duplicates, ...) as JSON."""
        return web.json(dict(join.counts))

    return plane


def check_copartitioned(settings: RigSettings, topics: tuple[str, ...]) -> None:
    """Refuse to join topics whose partition counts differ: their partition p would not hold the
    same entities.

    Raises:
        ConfigError: the counts differ (the message says which).
    """
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(settings.kafka_client_config()).list_topics(timeout=30).topics
    counts = {topic: len(metadata[topic].partitions) for topic in topics if topic in metadata}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"the join needs co-partitioned topics, with as many partitions each: {counts}")


def wall_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return int(time.time() * 1000)
