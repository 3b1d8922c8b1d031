"""Client tools: produce requests (from a file or any iterable) and tail predictions."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from rig.config import RigSettings
from rig.errors import CodecError, NotAcknowledged
from rig.wire.codec import Codec, Rejected, to_millis
from rig.wire.records import Outcome, Prediction, Request
from rig.wire.requests import DEFAULT_KEYS, KeySpec

log = logging.getLogger(__name__)


def file_requests(path: Path, keys: KeySpec = DEFAULT_KEYS) -> Iterator[Request]:
    """Requests from a JSON-lines, CSV or Parquet file: request_id, event_time, the entity by its
    join key column(s) (`keys`), optionally `features` and `context`.

    Raises:
        CodecError: a line or row is not a request (the message names the field).
    """
    if path.suffix in (".jsonl", ".json"):
        with path.open() as lines:
            rows: Iterable[dict[str, Any]] = (json.loads(line) for line in lines if line.strip())
            yield from _requests(path, rows, keys)
        return
    yield from _requests(path, read_table(path).to_dict("records"), keys)


def _requests(path: Path, rows: Iterable[dict[str, Any]], keys: KeySpec) -> Iterator[Request]:
    """Rows as Request records; a datetime event_time (a Parquet timestamp column) becomes int ms."""
    for number, row in enumerate(rows, start=1):
        if isinstance(row.get("event_time"), dt.datetime):
            row = {**row, "event_time": to_millis(row["event_time"])}
        try:
            yield msgspec.convert(keys.to_record(row), Request)
        except (msgspec.ValidationError, KeyError, ValueError) as error:
            raise CodecError(f"{path}: request {number} is not a request: {error!r}") from error


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet (`.parquet`), JSON lines (`.jsonl`, `.json`) or CSV file as a DataFrame."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=True)
    return pd.read_csv(path)


def file_outcomes(path: Path, keys: KeySpec) -> Iterator[Outcome]:
    """Outcomes from a file: `request_id`, `label` (0/1), `event_time` (or `time`; epoch ms or ISO
    8601), and the entity as `entity_id` or as its join key columns.

    Raises:
        KeyError: a column is missing. ValueError: a label is not 0 or 1, a time is not a time.
    """
    frame = read_table(path)
    time_column = "event_time" if "event_time" in frame.columns else "time"
    missing = [c for c in ("request_id", "label", time_column) if c not in frame.columns]
    if missing:
        raise KeyError(f"{path} lacks column(s) {missing}")
    if "entity_id" in frame.columns:
        entities = frame["entity_id"].astype(str).tolist()
    else:
        absent = [name for name in keys.names if name not in frame.columns]
        if absent:
            raise KeyError(f"{path} names no entity: add entity_id or the join key column(s) {absent}")
        entities = [keys.entity_id(row) for row in frame[list(keys.names)].itertuples(index=False)]
    times = frame[time_column]
    if pd.api.types.is_numeric_dtype(times):
        millis = times.astype("int64")
    else:
        millis = pd.to_datetime(times, utc=True, format="ISO8601").astype("int64") // 1_000_000
    for request_id, entity, label, moment in zip(
        frame["request_id"], entities, frame["label"], millis, strict=True
    ):
        if label not in (0, 1, True, False):
            raise ValueError(f"outcome of {request_id}: label {label!r} is not 0 or 1")
        yield Outcome(request_id=str(request_id), entity_id=entity, label=int(label), event_time=int(moment))


def produce_requests(
    settings: RigSettings,
    requests: Iterable[Request],
    rate_per_s: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    keys: KeySpec = DEFAULT_KEYS,
) -> int:
    """Send requests to the requests topic (Avro, naming the entity by `keys`, keyed by entity id),
    optionally paced to a rate.

    Returns:
        How many requests the broker acknowledged: all of them.

    Raises:
        CodecError: a request does not fit the request schema.
        NotAcknowledged: some requests were not acknowledged (the message says how many and why).
    """
    codec = Codec(Request, registry_url=settings.schema_registry_url, shape=keys)
    return _produce(settings, settings.topic("requests"), codec, requests, rate_per_s, on_progress)


def produce_outcomes(
    settings: RigSettings, outcomes: Iterable[Outcome], rate_per_s: float | None = None
) -> int:
    """Send outcomes to the outcomes topic (Avro, keyed by entity id), optionally paced; returns how
    many the broker acknowledged (all of them: `NotAcknowledged` otherwise)."""
    codec = Codec(Outcome, registry_url=settings.schema_registry_url)
    return _produce(settings, settings.topic("outcomes"), codec, outcomes, rate_per_s)


FLUSH_TIMEOUT_S = 60
"""How long a send waits, after its last record, for the broker to acknowledge them all."""
ID_NOTICE_S = 2.0
"""How long a send waits for its producer id before it says so (the broker answers in ~0.5 s)."""


def _produce(
    settings: RigSettings,
    topic: str,
    codec: Codec[Any],
    records: Iterable[Request | Outcome],
    rate_per_s: float | None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    producer = _producer_with_id(settings)
    delivered, sent = 0, 0
    errors: list[str] = []

    def count(error: Any, _message: object) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1
        elif len(errors) < 3:
            errors.append(error.str())

    started = time.perf_counter()
    for sent, record in enumerate(records, start=1):
        producer.produce(topic, key=record.entity_id.encode(), value=codec.encode(record), on_delivery=count)
        producer.poll(0)
        if rate_per_s:
            ahead = sent / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(sent)
    waiting = producer.flush(FLUSH_TIMEOUT_S)
    if delivered < sent:
        why = "; ".join(errors) or f"{waiting} still waiting for the broker after {FLUSH_TIMEOUT_S} s"
        raise NotAcknowledged(
            f"{sent - delivered} of {sent} record(s) for {topic} were not acknowledged by the broker at "
            f"{settings.kafka_bootstrap} ({why}); they may be missing from the topic"
        )
    return delivered


def _producer_with_id(settings: RigSettings, timeout_s: float = 30) -> Any:
    """The rig's (idempotent) producer, once it holds its producer id, or after `timeout_s` (the broker
    away: records then wait in the producer, as they would anyway); a wait longer than `ID_NOTICE_S`
    is logged, once.

    A record's CreateTime is stamped when it is produced, and a new idempotent producer holds its
    first records until the broker gave it an id. librdkafka asks as it starts, before a connection
    is up, and asks again 500 ms later (`rd_kafka_idemp_pid_timer_restart`): the first half second
    of paced requests counted ~500 ms that was the client's, not the rig's (the demo's steady p99 of
    3,000 requests read 422-504 ms). The id shows in librdkafka's statistics (`eos.idemp_state`).
    """
    from confluent_kafka import Producer

    state = {"idemp_state": ""}

    def statistics(raw: str) -> None:
        if state["idemp_state"] != "Assigned":  # afterwards, nothing to read
            state["idemp_state"] = json.loads(raw).get("eos", {}).get("idemp_state", "")

    producer = Producer(
        {
            **settings.kafka_producer_config(),
            "linger.ms": 5,
            "statistics.interval.ms": 50,
            "stats_cb": statistics,
        }
    )
    began = time.monotonic()
    noticed = False
    while state["idemp_state"] != "Assigned" and time.monotonic() - began < timeout_s:
        producer.poll(0.05)
        if not noticed and time.monotonic() - began >= ID_NOTICE_S:
            noticed = True  # once: the user sees why nothing happens yet
            log.warning(
                "no answer from the broker at %s after %.0f s (producer id %s); waiting up to %.0f s, "
                "then the records wait in the producer",
                settings.kafka_bootstrap,
                ID_NOTICE_S,
                state["idemp_state"] or "not requested yet",
                timeout_s,
            )
    return producer


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
