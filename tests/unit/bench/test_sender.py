"""The benchmarks' request sender: paced sends keep a steady rate (no garbage collection meanwhile)."""

from __future__ import annotations

import gc
from typing import Any

from confluent_kafka import Producer

from bench.support.kafka_io import Sender


def unconnected_producer() -> Producer:
    """A real producer whose messages only queue: nothing listens on its bootstrap address."""
    return Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1000, "log_level": 0})


def collections_while(send: Any) -> int:
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    try:
        send()
    finally:
        gc.callbacks.remove(count)
    return len(started)


MESSAGES = [(f"r{i}", b"e", b"v" * 10) for i in range(3000)]


def test_a_paced_send_runs_no_collection_and_leaves_the_collector_on() -> None:
    sender = Sender(unconnected_producer(), "requests")

    assert collections_while(lambda: sender.send(MESSAGES, rate_per_s=1_000_000)) == 0
    assert gc.isenabled()
    assert sender.sent == len(MESSAGES)


def test_an_unpaced_send_collects_as_usual() -> None:
    # The control: the same send allocates enough (a delivery callback per message) to collect.
    sender = Sender(unconnected_producer(), "requests")

    assert collections_while(lambda: sender.send(MESSAGES)) > 0
