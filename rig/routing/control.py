"""The control topic on Kafka: publish routing changes, and follow them on every worker.

Every worker reads the compacted, single-partition `rig.control` topic from the beginning with a
plain consumer (no consumer group, so every worker sees every record) and folds it into a
`RoutingTable` (see `rig.routing.table`). This is the design's alternative to Faust's GlobalTable, which
has an open report of not working with several worker instances.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rig.config import RigSettings
from rig.errors import SchemaRegistryUnavailable
from rig.routing.table import (
    EMPTY_ROUTING,
    GOLDEN_PREFIX,
    RoutingTable,
    apply_control,
    control_key,
    fold_report,
)
from rig.wire.codec import Codec, Rejected
from rig.wire.records import ControlEvent

log = logging.getLogger(__name__)


def publish_control(
    settings: RigSettings, event: ControlEvent, check_against: RoutingTable | None = None
) -> None:
    """Write one control event to the control topic, keyed for compaction, and wait for the ack.

    Args:
        settings: cluster and topic names.
        event: a record built by the `rig.routing.table` event helpers.
        check_against: when given, the event is first applied to this table and refused if invalid.

    Raises:
        RoutingError: the event is invalid (or, with `check_against`, would be held or rejected).
        RigError: the broker did not acknowledge the write.
    """
    key = control_key(event)
    if check_against is not None:
        apply_control(check_against, event, key)
    encoded = Codec(ControlEvent, registry_url=settings.schema_registry_url).encode(event)
    _write(settings, [(key, encoded)])


def forget_goldens(settings: RigSettings, versions: Iterable[str]) -> None:
    """Delete (tombstone) the golden records of these versions from the compacted control topic:
    routing then knows no such golden, current or previous (nothing to roll back to).

    Raises:
        RigError: the broker did not acknowledge the writes.
    """
    _write(settings, [(GOLDEN_PREFIX + version.encode(), None) for version in versions])


def _write(settings: RigSettings, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    """Write (key, value) records to the control topic (None: a tombstone) and wait for every ack."""
    from confluent_kafka import Producer

    from rig.errors import RigError

    producer = Producer(settings.kafka_producer_config())
    errors: list[str] = []
    for key, value in records:
        producer.produce(
            settings.topic("control"),
            key=key,
            value=value,
            on_delivery=lambda error, _message: errors.append(str(error)) if error else None,
        )
    if producer.flush(30) or errors:
        missing = errors or "timeout"
        raise RigError(f"control records not acknowledged by {settings.kafka_bootstrap}: {missing}")


RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
"""Backoff of a routing change or cache purge whose callback failed: the first retry, and the longest
wait between two (a model file still syncing, Redis or the metadata store away)."""


class ControlFollower:
    """Follows the control topic in a background thread and keeps the current routing table.

    `table` is replaced atomically (one reference assignment) after each batch of records, so a
    reader sees either the old or the new routing, never half of a change.

    `on_change` is called with the table once the records present at start are folded, then with
    every change; `on_purge` with every `purge_cache` event read after that (the cache is cold
    before). A callback that raises has not taken its change: the change is retried with backoff (up
    to `RETRY_MAX_S` apart) until it is taken, or, for a table, until a newer table replaces it. A
    worker that missed a promotion because a model file was still syncing would otherwise serve the
    old golden until the next control record, and nothing but a log line would say so.
    """

    def __init__(
        self,
        settings: RigSettings,
        on_change: Callable[[RoutingTable], None] | None = None,
        poll_timeout_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.table: RoutingTable = EMPTY_ROUTING
        self.on_change = on_change
        self.on_purge: Callable[[ControlEvent], None] | None = None
        """Called with every `purge_cache` event read after start-up (the cache is cold before)."""
        self.poll_timeout_s = poll_timeout_s
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._codec = Codec(ControlEvent, registry_url=settings.schema_registry_url)
        self._unapplied: RoutingTable | None = None  # the newest table, while `on_change` refused it
        self._purges: list[ControlEvent] = []  # purge events `on_purge` has not taken yet, in order
        self._retry_at = 0.0
        self._retry_delay_s = RETRY_FIRST_S
        self._refused: tuple[str, float] | None = None  # the latest refusal, and since when (monotonic)

    def start(self) -> ControlFollower:
        """Start following in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="control-follower", daemon=True)
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float | None = 30) -> RoutingTable:
        """Block until the records present at start have been folded (`timeout_s=None`: however long
        the broker takes to answer).

        Raises:
            RigError: the follower failed or did not catch up in time.
        """
        from rig.errors import RigError

        if not self.caught_up.wait(timeout_s):
            raise RigError(f"control topic {self.settings.topic('control')} not read within {timeout_s} s")
        if self._failure is not None:
            raise RigError(f"control follower failed: {self._failure}") from self._failure
        return self.table

    def unapplied(self) -> str | None:
        """Why a routing change or cache purge read from the topic is not taken yet (it is being
        retried), or None when every one is."""
        refused = self._refused
        if refused is None:
            return None
        reason, since = refused
        return f"control change not applied for {time.monotonic() - since:.0f} s (retrying): {reason}"

    def failure(self) -> str | None:
        """Why the follower stopped following (routing changes no longer reach this process), or None."""
        return None if self._failure is None else f"control follower stopped: {self._failure!r}"

    def stop(self) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        topic = self.settings.topic("control")
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": "rig-control-follower",  # required by the client; never joined or committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = self._wait_for_topic(consumer, topic)
            if partitions is None:
                return  # stopped while waiting
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            pending_eof = set(partitions)
            if all(ends[1] == 0 for ends in partitions.values()):
                self.caught_up.set()
            while not self._stop.is_set():
                self._apply_pending()
                messages = consumer.consume(500, timeout=self.poll_timeout_s)
                records = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending_eof.discard(message.partition())
                            continue
                        log.warning("control read error topic=%s error=%s", topic, error)
                        continue
                    value = message.value()
                    decoded = None if value is None else self._decoded(value)
                    if self._stop.is_set():
                        return  # stopped while waiting for the schema registry
                    records.append((message.key() or b"", decoded))
                if records:
                    self._fold(records, topic)
                if not pending_eof and not self.caught_up.is_set():
                    if self.table is not EMPTY_ROUTING:
                        self._unapplied = self.table  # the first routing: applied before start-up goes on
                    self._apply_pending()
                    self.caught_up.set()
        except BaseException as exc:  # the worker must learn it runs without routing updates
            self._failure = exc
            self.caught_up.set()
            log.exception("control follower stopped topic=%s", topic)
        finally:
            consumer.close()

    def _wait_for_topic(self, consumer: Any, topic: str) -> dict[int, tuple[int, int]] | None:
        """The control topic's partitions and their (low, high) offsets, once the broker answers and
        the topic exists: a broker that is away at start-up is waited for (warned every 30 s), never a
        reason to give up. None when stopped meanwhile."""
        from confluent_kafka import KafkaException, TopicPartition

        # The first warning waits a few seconds: a topic created a moment ago has no leader yet.
        delay, next_warning = 0.2, time.monotonic() + 3
        while not self._stop.is_set():
            try:
                metadata = consumer.list_topics(topic, timeout=10).topics[topic]
                if metadata.error is not None:
                    raise KafkaException(metadata.error)
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    for p in metadata.partitions
                }
            except KafkaException as error:
                if time.monotonic() >= next_warning:
                    log.warning("waiting for the control topic %s: %s", topic, error)
                    next_warning = time.monotonic() + 30
                self._stop.wait(delay)
                delay = min(5.0, delay * 2)
        return None

    def _decoded(self, value: bytes) -> ControlEvent | Rejected | None:
        """A control record decoded, waiting while the schema registry does not answer (from
        `RETRY_FIRST_S` doubling to `RETRY_MAX_S`): a routing change is never skipped for that. None
        when stopped meanwhile."""
        delay_s = RETRY_FIRST_S
        while True:
            try:
                return self._codec.decode(value)
            except SchemaRegistryUnavailable as error:
                log.warning("control record waits for %s: %s", error.dependency, error)
                if self._stop.wait(delay_s):
                    return None
                delay_s = min(RETRY_MAX_S, delay_s * 2)

    def _fold(self, records: list[tuple[bytes, ControlEvent | Rejected | None]], topic: str) -> None:
        if self.caught_up.is_set():
            self._purges += [
                event
                for _, event in records
                if isinstance(event, ControlEvent) and event.kind == "purge_cache"
            ]
        result = fold_report(records, self.table)
        for rejected in result.rejected:
            log.warning(
                "control record rejected topic=%s key=%s reason=%s", topic, rejected.key, rejected.reason
            )
        if result.table is not self.table:
            self.table = result.table
            if self.caught_up.is_set():
                self._unapplied = self.table
        if self._purges or self._unapplied is not None:
            # News: tried at once, by the loop's next turn (`_run`), not after the backoff.
            self._retry_at, self._retry_delay_s = 0.0, RETRY_FIRST_S

    def _apply_pending(self) -> None:
        """Hand the callbacks what they have not taken yet, purges first (in order), when due."""
        if (not self._purges and self._unapplied is None) or time.monotonic() < self._retry_at:
            return
        try:
            while self._purges:
                if self.on_purge is not None:
                    self.on_purge(self._purges[0])
                del self._purges[0]
            if self._unapplied is not None:
                if self.on_change is not None:
                    self.on_change(self._unapplied)
                self._unapplied = None
        except Exception as error:  # noqa: BLE001 - any refusal is retried, never the end of the follower
            reason = f"{type(error).__name__}: {error}"
            since = self._refused[1] if self._refused is not None else time.monotonic()
            self._refused = (reason, since)
            log.warning("control change not applied (retried in %.1f s): %s", self._retry_delay_s, reason)
            self._retry_at = time.monotonic() + self._retry_delay_s
            self._retry_delay_s = min(RETRY_MAX_S, self._retry_delay_s * 2)
            return
        if self._refused is not None:
            log.warning(
                "control changes applied after %.1f s of retries", time.monotonic() - self._refused[1]
            )
        self._refused, self._retry_delay_s = None, RETRY_FIRST_S


def read_routing(settings: RigSettings, timeout_s: float = 30) -> RoutingTable:
    """The routing table as the control topic holds it now (reads it once, then stops)."""
    follower = ControlFollower(settings).start()
    try:
        return follower.wait_caught_up(timeout_s)
    finally:
        follower.stop()
