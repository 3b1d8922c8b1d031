"""Client tools: produce requests (from a file or any iterable) and tail predictions."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from rig.config import RigSettings
from rig.errors import CodecError
from rig.wire.codec import Codec, Rejected, to_millis
from rig.wire.records import Prediction, Request


def file_requests(path: Path) -> Iterator[Request]:
    """Requests from a JSON-lines, CSV or Parquet file (columns request_id, entity_id, event_time).

    Raises:
        CodecError: a line or row is not a Request (the message names the field).
    """
    if path.suffix in (".jsonl", ".json"):
        with path.open() as lines:
            rows: Iterable[dict[str, Any]] = (json.loads(line) for line in lines if line.strip())
            yield from _requests(path, rows)
        return
    yield from _requests(path, read_table(path).to_dict("records"))


def _requests(path: Path, rows: Iterable[dict[str, Any]]) -> Iterator[Request]:
    """Rows as Request records; a datetime event_time (a Parquet timestamp column) becomes int ms."""
    for number, row in enumerate(rows, start=1):
        if isinstance(row.get("event_time"), dt.datetime):
            row = {**row, "event_time": to_millis(row["event_time"])}
        try:
            yield msgspec.convert(row, Request)
        except msgspec.ValidationError as error:
            raise CodecError(f"{path}: request {number} is not a Request: {error}") from error


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet (`.parquet`) or CSV file as a DataFrame."""
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def produce_requests(
    settings: RigSettings,
    requests: Iterable[Request],
    rate_per_s: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Send requests to the requests topic (Avro, keyed by entity id), optionally paced to a rate.

    Returns:
        How many requests the broker acknowledged.

    Raises:
        CodecError: a request does not match schemas/Request.avsc.
    """
    from confluent_kafka import Producer

    codec = Codec(Request, registry_url=settings.schema_registry_url)
    producer = Producer({**settings.kafka_producer_config(), "linger.ms": 5})
    topic = settings.topic("requests")
    delivered = 0

    def count(error: object, _message: object) -> None:
        nonlocal delivered
        delivered += error is None

    started = time.perf_counter()
    for sent, request in enumerate(requests, start=1):
        producer.produce(
            topic, key=request.entity_id.encode(), value=codec.encode(request), on_delivery=count
        )
        producer.poll(0)
        if rate_per_s:
            ahead = sent / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(sent)
    producer.flush(60)
    return delivered


def tail_predictions(
    settings: RigSettings,
    from_beginning: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
    request_ids: set[str] | None = None,
) -> Iterator[Prediction]:
    """Decoded predictions as they arrive (a throwaway consumer group, never committing).

    Args:
        from_beginning: start at the oldest prediction instead of the next one.
        limit: stop after this many predictions.
        timeout_s: stop when this much time passed.
        request_ids: only predictions of these requests.
    """
    import uuid

    from confluent_kafka import Consumer

    codec = Codec(Prediction, registry_url=settings.schema_registry_url)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"rig-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("predictions")])
    seen = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while (limit is None or seen < limit) and (deadline is None or time.monotonic() < deadline):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            decoded = codec.decode(message.value())
            if isinstance(decoded, Rejected):
                continue
            if request_ids is not None and decoded.request_id not in request_ids:
                continue
            seen += 1
            yield decoded
    finally:
        consumer.close()
