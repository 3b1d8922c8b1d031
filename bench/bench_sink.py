"""The delivering sink's cost per message against the least a counted delivery can cost, in one run.

Every output of the rig (predictions, joined rows, changelog records) goes through
`streams.plane.sink.DeliveringSink`, which counts delivery reports per batch so that a batch's offsets
are committed only once its outputs are safe. Measured on the real broker (`make services-up`), on a
topic of 4 partitions of its own, batches of `--batch` messages of 120 bytes, interleaved:

- `ceiling`: confluent-kafka's `Producer.produce` with the sink's producer settings and one callback
  per batch that only counts down: no retries, no health, no lock;
- `shipped`: `DeliveringSink.publish` (one callback per batch since 71a3a83; before it, an object and
  a partial per message: 13.7-16.3 µs per message against 6.8-7.1, measured side by side that day).

Reported per way: process CPU µs per message (this process and librdkafka's threads) from the first
produce to the last delivery report, and messages per second. Writes bench/results/sink.json; ~1 min.

Run (services up): .venv/bin/python bench/bench_sink.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from rig.config import KafkaConfig, RigSettings
from streams.plane.health import Health
from streams.plane.sink import DeliveringSink, Outgoing

VALUE = b"x" * 120


def ceiling(producer_config: KafkaConfig, topic: str, batches: int, size: int) -> None:
    """Every batch produced with one counting callback per batch; returns once all are delivered."""
    producer = Producer({"linger.ms": 5, **producer_config, "enable.idempotence": True})
    left = [batches * size]

    def report(error: object, _message: object) -> None:
        assert error is None, error
        left[0] -= 1

    for _ in range(batches):
        for i in range(size):
            while True:
                try:
                    producer.produce(topic, VALUE, b"k%d" % i, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    while left[0]:
        producer.poll(0.05)


def shipped(producer_config: KafkaConfig, topic: str, batches: int, size: int) -> None:
    """Every batch published through a `DeliveringSink`; returns once every batch is delivered."""
    delivered: set[int] = set()
    done = threading.Event()

    def on_delivered(batch_id: int) -> None:
        delivered.add(batch_id)
        if len(delivered) == batches:
            done.set()

    sink = DeliveringSink(producer_config, on_delivered, Health(needs_partitions=False)).start()

    async def publish_all() -> None:
        for batch_id in range(batches):
            await sink.publish(batch_id, [Outgoing(topic, b"k%d" % i, VALUE) for i in range(size)])

    asyncio.run(publish_all())
    if not done.wait(120):
        raise RuntimeError(f"only {len(delivered)} of {batches} batches delivered")
    sink.close()


WAYS: dict[str, Callable[[KafkaConfig, str, int, int], None]] = {"ceiling": ceiling, "shipped": shipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages per way and trial")
    parser.add_argument("--batch", type=int, default=500, help="messages per batch (RIG_BATCH_MAX)")
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials of each way")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "sink.json")
    args = parser.parse_args()
    record = RunRecord()
    settings = RigSettings()
    admin = AdminClient(settings.kafka_client_config())
    topic = f"bench.sink.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    batches = args.messages // args.batch
    results: dict[str, dict[str, list[float]]] = {way: {"cpu_us": [], "per_s": []} for way in WAYS}
    try:
        for trial in range(args.trials):
            for way, run in WAYS.items():
                say(f"trial {trial + 1}: {way}, {batches * args.batch:,} messages")
                cpu, wall = time.process_time(), time.perf_counter()
                run(settings.kafka_producer_config(), topic, batches, args.batch)
                count = batches * args.batch
                results[way]["cpu_us"].append((time.process_time() - cpu) * 1e6 / count)
                results[way]["per_s"].append(count / (time.perf_counter() - wall))
    finally:
        admin.delete_topics([topic])
    print(f"\n{'way':<10} {'CPU µs/msg':>11} {'msgs/s':>10}   median of {args.trials}")
    summary = {}
    for way, numbers in results.items():
        cpu, rate = statistics.median(numbers["cpu_us"]), statistics.median(numbers["per_s"])
        summary[way] = {"cpu_us_per_message_median": cpu, "messages_per_s_median": rate, **numbers}
        print(f"{way:<10} {cpu:>11.2f} {rate:>10,.0f}")
    write_results(args.output, record.result("sink", args, ways=summary))


if __name__ == "__main__":
    main()
