"""Outputs of a batch, produced by an idempotent producer and counted until every one is delivered."""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.plane.health import Health

log = logging.getLogger(__name__)

DEPENDENCY = "Kafka (deliveries)"
FIRST_RETRY_S = 0.2
LAST_RETRY_S = 5.0
FATAL_EXIT_CODE = 70
"""Exit code of a worker whose producer met a fatal error; its supervisor restarts it."""


def exit_if_fatal(error: KafkaError, producer: str) -> None:
    """Exit the process when `error` is fatal to the producer: the idempotent producer cannot go on
    after one, nor can a transactional one whose id the cluster refuses at start; what was not
    committed is redone by the partitions' next owner. (A transactional producer that fails later is
    replaced in the worker: `TransactionalSink`.) `os._exit`, not `SystemExit`: raised in the
    producer's poll thread, that would only end the thread, and the worker would stall with nobody
    reading its delivery reports."""
    if error.fatal():
        log.critical("fatal %s producer error, exiting for a restart: %s", producer, error)
        os._exit(FATAL_EXIT_CODE)


class Outgoing(NamedTuple):
    """A message to publish: `partition` -1 lets the partitioner choose; `value` None is a tombstone;
    `timestamp_ms` 0 means now."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = -1
    timestamp_ms: int = 0


class Sink(Protocol):
    """Where a plane publishes the outputs of its batches: delivered (at least once) or in
    transactions (exactly once)."""

    async def publish(
        self, batch_id: int, messages: Iterable[Outgoing], after: Iterable[Outgoing] = ()
    ) -> None:
        """Publish the batch's outputs; the batch finishes in the ledger once they are safe. `after`:
        outputs that must never be on Kafka without `messages` (e.g. the join's changelog records, which
        say its rows were emitted)."""
        ...

    def close(self, timeout_s: float = 30) -> int:
        """Stop; returns the outputs that stayed undelivered."""
        ...


@dataclass(slots=True, eq=False)
class Held:
    """Outputs of a batch produced only once its other outputs are delivered (`publish(after=...)`)."""

    batch_id: int
    messages: list[Outgoing]
    produced: int = 0


@dataclass(slots=True)
class Output:
    """A message of a batch whose delivery failed, kept until the broker acknowledges it."""

    batch_id: int
    message: Outgoing
    attempt: int = 0


class DeliveringSink:
    """An idempotent producer whose messages belong to batches.

    A batch is delivered when every one of its messages has a successful delivery report;
    `on_delivered(batch_id)` is then called (from the producer's poll thread; from `publish` for a
    batch without outputs). A failed delivery (broker away past `message.timeout.ms`, topic deleted
    or not authorized, ...) is produced again after a backoff, for as long as it takes: it never
    counts as delivered, so the batch's offsets are never committed past it.

    A batch's `after` outputs are produced once all its other outputs are delivered and every earlier
    batch's `after` outputs were produced (so they keep the order of the batches). A producer sends
    each partition's messages on its own: without this, a crash could leave a batch's changelog
    record on Kafka and not the joined rows it says were emitted, and its redo would not emit them.
    """

    def __init__(
        self, producer_config: dict[str, Any], on_delivered: Callable[[int], None], health: Health
    ) -> None:
        """`producer_config`: confluent-kafka producer settings (`RigSettings.kafka_producer_config`);
        the sink makes it idempotent and never lets a produce create a topic."""
        self._producer = Producer(
            {
                "linger.ms": 5,
                **producer_config,
                "enable.idempotence": True,
                # The rig's topics are created on purpose (`rig topics create`), never by a produce:
                # a deleted topic is waited for, not re-created with a broker's defaults.
                "allow.auto.create.topics": False,
            }
        )
        self._on_delivered = on_delivered
        self._health = health
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}
        self._held: deque[Held] = deque()
        self._releasing = threading.Lock()  # one thread at a time produces held outputs, in order
        self._retries: list[tuple[float, int, Output]] = []
        self._order = itertools.count()
        self._failing = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="rig-sink-poll", daemon=True)

    def start(self) -> DeliveringSink:
        """Start serving delivery reports and retries."""
        self._thread.start()
        return self

    async def publish(
        self, batch_id: int, messages: Iterable[Outgoing], after: Iterable[Outgoing] = ()
    ) -> None:
        """Produce messages as outputs of `batch_id`, and `after` once those are delivered (see the
        class); the batch is delivered once every one of both is.

        Waits (without blocking the event loop) while the producer's queue is full.
        """
        messages, after = list(messages), list(after)
        if not messages and not after:
            self._on_delivered(batch_id)
            return
        with self._lock:  # counted in full before the first report can come
            self._pending[batch_id] = len(messages) + len(after)
            if after:
                self._held.append(Held(batch_id, after))
        produced = 0
        while True:
            produced = self._produce(batch_id, messages, produced)
            if produced == len(messages):
                break
            await asyncio.sleep(0.05)  # the producer's queue is full
        if after:
            self._release()

    def _produce(self, batch_id: int, messages: list[Outgoing], start: int) -> int:
        """Produce `messages[start:]` of a batch; returns how far it got: short of the end when the
        producer's queue is full."""
        # One callback per batch, not an object and a partial per message: a failed message is
        # rebuilt from its delivery report, which holds all of it but an explicit timestamp.
        report_partitioned = functools.partial(self._report, batch_id, -1)  # the partitioner chose
        report_placed = functools.partial(self._report, batch_id, None)  # the rig chose the partition
        produce = self._producer.produce
        for index in range(start, len(messages)):
            message = messages[index]
            topic, key, value, partition, timestamp_ms = message
            try:
                if timestamp_ms:
                    kept = functools.partial(self._report_kept, Output(batch_id, message))
                    produce(topic, value, key, partition, kept, timestamp=timestamp_ms)
                else:
                    # By position (the documented first five): keyword matching took a third of
                    # confluent-kafka's ~1 µs produce() (0.96 against 0.63 µs, 200,000 calls).
                    report = report_placed if partition >= 0 else report_partitioned
                    produce(topic, value, key, partition, report)
            except BufferError:
                return index
            except KafkaException as error:  # refused before queueing (e.g. a fatal producer error)
                self._failed(Output(batch_id, message), _kafka_error(error))
        return len(messages)

    def _release(self) -> None:
        """Produce the held outputs of the batches whose other outputs are delivered, oldest batch first;
        stops at a batch still waiting (or when the producer's queue is full: called again by the poll
        loop)."""
        with self._releasing:
            while True:
                with self._lock:
                    if not self._held:
                        return
                    held = self._held[0]
                    # Until its held outputs are produced, all of them count in the batch's pending
                    # outputs: any more pending are its other outputs, not delivered yet.
                    if not held.produced and self._pending[held.batch_id] > len(held.messages):
                        return
                held.produced = self._produce(held.batch_id, held.messages, held.produced)
                if held.produced < len(held.messages):
                    return
                with self._lock:
                    self._held.popleft()

    def _send(self, output: Output) -> bool:
        """Hand a message to librdkafka again; False when its queue is full (try again later)."""
        topic, key, value, partition, timestamp_ms = output.message
        try:
            self._producer.produce(
                topic,
                value,
                key,
                partition,
                on_delivery=functools.partial(self._report_kept, output),
                timestamp=timestamp_ms,
            )
        except BufferError:
            return False
        except KafkaException as error:
            self._failed(output, _kafka_error(error))
        return True

    def _report(
        self, batch_id: int, partition: int | None, error: KafkaError | None, message: Message
    ) -> None:
        """Delivery report of a message of `batch_id` produced to `partition` (-1: the partitioner's
        choice, asked again when it is produced again; None: the partition it was produced to)."""
        if error is not None:
            # A delivery report is of a produced message: confluent-kafka types its topic and
            # partition Optional.
            if partition is None:
                partition = cast(int, message.partition())
            outgoing = Outgoing(cast(str, message.topic()), message.key(), message.value(), partition)
            self._failed(Output(batch_id, outgoing), error)
            return
        with self._lock:
            left = self._pending[batch_id] - 1
            if left:
                self._pending[batch_id] = left
            else:
                del self._pending[batch_id]
        if not left:
            self._on_delivered(batch_id)

    def _report_kept(self, output: Output, error: KafkaError | None, message: Message) -> None:
        """Delivery report of a message kept whole: produced again, or with an explicit timestamp."""
        if error is not None:
            self._failed(output, error)
            return
        if output.attempt:
            with self._lock:
                self._failing -= 1
                recovered = self._failing == 0
            if recovered:
                self._health.recovered(DEPENDENCY)
        self._report(output.batch_id, None, None, message)

    def _failed(self, output: Output, error: KafkaError) -> None:
        """Schedule the message again; the batch stays undelivered meanwhile."""
        exit_if_fatal(error, "idempotent")
        delay = min(LAST_RETRY_S, FIRST_RETRY_S * 2**output.attempt)
        with self._lock:
            if output.attempt == 0:
                self._failing += 1
            output.attempt += 1
            heapq.heappush(self._retries, (time.monotonic() + delay, next(self._order), output))
        self._health.waiting(DEPENDENCY, f"delivery to {output.message.topic} failed: {error.str()}")
        if output.attempt == 1 or output.attempt % 10 == 0:
            log.warning(
                "delivery failed, producing again in %.1f s topic=%s attempt=%d error=%s",
                delay,
                output.message.topic,
                output.attempt,
                error.str(),
            )

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._release()
            now = time.monotonic()
            while True:
                with self._lock:
                    if not self._retries or self._retries[0][0] > now:
                        break
                    _, _, output = heapq.heappop(self._retries)
                if not self._send(output):
                    with self._lock:
                        heapq.heappush(self._retries, (now + 0.05, next(self._order), output))
                    break

    def undelivered(self) -> int:
        """Messages produced and not delivered yet (in flight or waiting for a retry)."""
        with self._lock:
            return sum(self._pending.values())

    def close(self, timeout_s: float = 30) -> int:
        """Wait up to `timeout_s` for outstanding deliveries, stop; returns what stayed undelivered."""
        deadline = time.monotonic() + timeout_s
        while self.undelivered() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=5)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        return self.undelivered()


def _kafka_error(exception: KafkaException) -> KafkaError:
    """The KafkaError a produce call raised (a generic failure when it carries none)."""
    return exception.args[0] if exception.args else KafkaError(KafkaError._FAIL)
