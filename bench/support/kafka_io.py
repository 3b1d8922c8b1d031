"""Kafka I/O of the benchmarks: requests encoded before any clock starts, produced with their Kafka
CreateTime recorded (`Sender`), predictions read back with their Kafka timestamps (`Collector`).

End-to-end latency is always the prediction's Kafka timestamp minus the request's CreateTime, both
read with confluent-kafka `message.timestamp()`, matched by request_id.
"""

from __future__ import annotations

import gc
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

from rig.config import RigSettings
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Prediction, Request
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests

Message = tuple[str, bytes, bytes]
"""A request ready to produce: request_id, key (the entity id), encoded Avro value."""


def encode_requests(settings: RigSettings, requests: Iterable[Request]) -> list[Message]:
    """Request records encoded as the rig reads them."""
    codec = Codec(Request, registry_url=settings.schema_registry_url)
    return [(r.request_id, r.entity_id.encode(), codec.encode(r)) for r in requests]


def synthetic_messages(settings: RigSettings, world: WorldSettings, n: int, seed: int) -> list[Message]:
    """`n` synthetic requests of the world's entities (`sim.traffic`), encoded."""
    return encode_requests(settings, synthetic_requests(world, n, seed=seed))


def connected_producer(settings: RigSettings, linger_ms: int = 5, keyed: bool = False) -> Any:
    """One producer for a whole run, connected before any clock starts.

    A message's CreateTime is stamped when it is produced: a producer still connecting to the broker
    would add its connection time to the first requests' latency, and its `linger_ms` is counted in
    every request's latency (0 for a client that sends each request at once). `keyed`: the rig's own
    producer settings (idempotent, Kafka's murmur2 partitioner), required for what the join reads
    (outcomes, predictions): it finds them on their entity's partition.
    """
    from confluent_kafka import Producer

    base = settings.kafka_producer_config() if keyed else settings.kafka_client_config()
    producer = Producer({**base, "linger.ms": linger_ms, "acks": "all"})
    producer.list_topics(timeout=10)
    return producer


class Sender:
    """Produces pre-encoded requests, paced (in a thread) or as fast as possible; records each
    request's Kafka CreateTime from the delivery report. `headers`, when given, go with every request
    (e.g. the model a peer server is to use)."""

    def __init__(self, producer: Any, topic: str, headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.headers = list(headers) if headers is not None else None
        self.create_ms: dict[str, int] = {}
        self.failed = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _callback(self, request_id: str) -> Callable[[Any, Any], None]:
        def delivered(error: Any, message: Any) -> None:
            if error is None:
                self.create_ms[request_id] = message.timestamp()[1]
            else:
                self.failed += 1

        return delivered

    def send(self, messages: Sequence[Message], rate_per_s: float | None = None) -> None:
        """Produce `messages` on the calling thread (stops early when `stop()` is called).

        Paced, with this process's garbage collector paused: its full collections (the world, Feast,
        the models and the requests all live here) took 150-320 ms each, about every 9 s of a latency
        phase at 20,000 req/s; the sender stopped meanwhile and then produced ~3,000 requests at once, and
        the agent's p99 measured that burst, not a steady rate. Nothing the sender allocates is cyclic.
        """
        if not rate_per_s:
            self._send(messages, None)
            return
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._send(messages, rate_per_s)
        finally:
            if collecting:
                gc.enable()

    def _send(self, messages: Sequence[Message], rate_per_s: float | None) -> None:
        began = time.perf_counter()
        for index, (request_id, key, value) in enumerate(messages):
            if self._stop.is_set():
                break
            if rate_per_s:
                ahead = index / rate_per_s - (time.perf_counter() - began)
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        key=key,
                        value=value,
                        headers=self.headers,
                        on_delivery=self._callback(request_id),
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.sent += 1
            self.producer.poll(0)

    def start(self, messages: Sequence[Message], rate_per_s: float) -> Sender:
        """Produce `messages` at `rate_per_s` in a background thread (`sent` counts them from 0)."""
        self.sent = 0

        def run() -> None:
            try:
                self.send(messages, rate_per_s)
            except BaseException as error:  # noqa: BLE001 - reported by check()
                self._failure = error

        self._thread = threading.Thread(target=run, name="sender", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"sender failed: {self._failure}") from self._failure

    def stop(self) -> None:
        """Stop the background thread and wait for every delivery report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.producer.flush(60):
            raise RuntimeError(f"requests to {self.topic} not acknowledged within 60 s")


class TopicReader:
    """Reads every partition of a topic in a thread, handing each message to `fold` (in that thread).

    `from_end=False` reads the topic from the beginning; `from_end=True` starts at the high watermarks
    at `start()`, so nothing produced after it is missed. The consumer never joins a group nor
    commits, and reads committed messages only (librdkafka's default): what a downstream consumer of
    an exactly-once worker sees.
    """

    def __init__(self, settings: RigSettings, topic: str, from_end: bool = False) -> None:
        self.settings = settings
        self.topic = topic
        self.from_end = from_end
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"reader-{topic}", daemon=True)

    def fold(self, message: Any) -> None:
        """Take one message in (subclasses)."""
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError(f"could not read {self.topic}: {self._failure}")
        return self

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",  # never joined or committed
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            assignment = []
            for partition in partitions:
                offset = OFFSET_BEGINNING
                if self.from_end:
                    _, offset = consumer.get_watermark_offsets(
                        TopicPartition(self.topic, partition), timeout=10
                    )
                assignment.append(TopicPartition(self.topic, partition, offset))
            consumer.assign(assignment)
            self._ready.set()
            while not self._stop.is_set():
                for message in consumer.consume(2000, timeout=0.1):
                    if message.error() is None:
                        self.fold(message)
        except BaseException as error:  # noqa: BLE001 - reported by start/check
            self._failure = error
        finally:
            self._ready.set()
            consumer.close()

    def check(self) -> None:
        """Raise if the reading thread failed."""
        if self._failure is not None:
            raise RuntimeError(f"reading {self.topic} failed: {self._failure}") from self._failure

    def close(self) -> None:
        """Stop reading (idempotent)."""
        self._stop.set()
        self._thread.join(timeout=10)


class Collector(TopicReader):
    """Reads a predictions topic in a thread, keeping raw (Kafka timestamp, value) in `raw`.

    Decoding is left to the caller (`take`), so the reader takes as little CPU as it can from the
    worker being measured.
    """

    def __init__(self, settings: RigSettings, from_end: bool = False) -> None:
        super().__init__(settings, settings.topic("predictions"), from_end)
        self.raw: list[tuple[int, bytes]] = []
        self._taken = 0
        self._codec = Codec(Prediction, registry_url=settings.schema_registry_url)

    def fold(self, message: Any) -> None:
        self.raw.append((message.timestamp()[1], message.value()))

    def decode(self, raw: Iterable[tuple[int, bytes]]) -> list[tuple[int, Prediction]]:
        """(Kafka timestamp ms, Prediction record) of raw messages; undecodable ones are skipped."""
        out = []
        for timestamp, value in raw:
            record = self._codec.decode(value)
            if not isinstance(record, Rejected):
                out.append((timestamp, record))
        return out

    def take(self) -> list[tuple[int, Prediction]]:
        """Decoded predictions that arrived since the last call: (Kafka timestamp ms, record)."""
        self.check()
        end = len(self.raw)
        fresh = self.raw[self._taken : end]
        self._taken = end
        return self.decode(fresh)


def wait_ready(
    sender: Sender,
    collector: Collector,
    probes: Sequence[Message],
    worker: subprocess.Popen[bytes],
    timeout_s: float,
) -> tuple[float, list[tuple[int, Prediction]]]:
    """Send a probe request every 0.5 s until one is answered (the worker's start-up is then over).

    Returns:
        Seconds until the first answer, and the predictions read meanwhile.
    """
    began = time.perf_counter()
    seen: list[tuple[int, Prediction]] = []
    for probe in probes:
        sender.send([probe])
        sender.producer.flush(10)
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            seen.extend(collector.take())
            if seen:
                return time.perf_counter() - began, seen
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode} during start-up")
            time.sleep(0.05)
        if time.perf_counter() - began > timeout_s:
            break
    raise RuntimeError(f"the worker answered no probe within {timeout_s:.0f} s")


def end_offsets(settings: RigSettings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of these topics: (topic, partition) -> offset."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-ends-{uuid.uuid4().hex[:8]}"})
    try:
        ends = {}
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends[(topic, partition)] = int(high)
        return ends
    finally:
        consumer.close()
