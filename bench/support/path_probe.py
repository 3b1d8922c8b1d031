"""The Kafka path alone, the floor of any agent's end-to-end latency: a consumer in a process of its own
reads a topic from its end and reports, per message, the time from its CreateTime to its arrival.

It runs with the consumer settings of the rig's source (librdkafka's defaults, `poll` for the first
message then `consume` without waiting for what arrived behind it), so producer, broker and fetch are
measured as a rig agent meets them, with nothing of the agent's own work.

Run as `python -m bench.support.path_probe BOOTSTRAP TOPIC COUNT TIMEOUT_S`: prints `ready` once its
partitions are assigned at their high watermarks, then, after COUNT messages or TIMEOUT_S, one JSON
line: {"received": n, "latency_ms": [...]}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

BATCH_MAX = 500
"""Messages taken behind the first one per round, as the rig's source does (`RIG_BATCH_MAX`'s default);
`consume` also refuses more than 1,000,000 at once."""


def probe(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[float]:
    """Milliseconds from each message's CreateTime to its arrival here, in arrival order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"path-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions]
        consumer.assign([TopicPartition(topic, p, end) for p, end in zip(partitions, ends, strict=True)])
        print("ready", flush=True)
        latencies: list[float] = []
        deadline = time.monotonic() + timeout_s
        while len(latencies) < count and time.monotonic() < deadline:
            first = consumer.poll(0.1)
            if first is None:
                continue
            now_ms = time.time() * 1000
            for message in [first, *consumer.consume(min(BATCH_MAX, count - len(latencies)), timeout=0)]:
                if message.error() is None:
                    latencies.append(now_ms - message.timestamp()[1])
        return latencies
    finally:
        consumer.close()


def start(bootstrap: str, topic: str, count: int, timeout_s: float) -> subprocess.Popen[str]:
    """Start a probe process and wait until it reads from the topic's end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.support.path_probe", bootstrap, topic, str(count), str(timeout_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"the path probe of {topic} did not start")
    return process


def result(process: subprocess.Popen[str], timeout_s: float) -> list[float]:
    """The latencies a started probe measured (waits for it to finish)."""
    out, _ = process.communicate(timeout=timeout_s)
    return [float(value) for value in json.loads(out)["latency_ms"]]


if __name__ == "__main__":
    found = probe(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    print(json.dumps({"received": len(found), "latency_ms": found}))
