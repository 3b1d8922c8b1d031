"""The join agents: outcomes joined to the prediction of every model, state in a changelogged table.

Predictions and outcomes are keyed by entity id; the join state is keyed by request id. So a first
agent re-keys both streams by request id into an internal topic, and the second agent keeps the
table. The internal topic and the table's changelog are partitioned by one function of the request
id (`request_partition`), so a restarted or moved worker recovers exactly the state of the
partitions it takes over, and a table write never waits on producer metadata: Faust's
`use_partitioner` asks the producer, which has no partitions yet for a changelog it has not written
to, and crashed the agent.

The re-key carries each message's source timestamp along, so retention is judged by when a
prediction or outcome arrived, not by when a worker got round to it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import faust

from rig.config import RigSettings
from rig.feedback.join import (
    Step,
    StreamClock,
    compact_outcome,
    compact_prediction,
    on_outcome,
    on_prediction,
    request_partition,
    sweep,
)
from rig.wire.codec import Codec, Rejected
from rig.wire.intake import Source, dead_letter
from rig.wire.records import DeadLetter, JoinedOutcome, Outcome, Prediction
from streams.timers import supervised

log = logging.getLogger(__name__)


class RequestTable(faust.Table):
    """A table keyed by request id whose changelog partition is `request_partition(key)`."""

    def partition_for_key(self, key: Any) -> int:
        """The changelog partition of `key`, without asking the producer or the current event."""
        assert self.partitions is not None, "a RequestTable is created with its partition count"
        return request_partition(key, self.partitions)


def install_join(app: faust.App, settings: RigSettings, dead_letters: faust.TopicT) -> Counter[str]:
    """Add the join agents, table and sweep timer to `app`; returns the live counters."""
    counts: Counter[str] = Counter()
    prediction_codec = Codec(Prediction, registry_url=settings.schema_registry_url)
    outcome_codec = Codec(Outcome, registry_url=settings.schema_registry_url, allow_json=True)
    joined_codec = Codec(JoinedOutcome, registry_url=settings.schema_registry_url)
    dead_letter_codec = Codec(DeadLetter, registry_url=settings.schema_registry_url)

    predictions_topic = settings.topic("predictions")
    partitions = settings.topic_partitions
    sources = app.topic(
        predictions_topic,
        settings.topic("outcomes"),
        key_serializer="raw",
        value_serializer="raw",
    )
    by_request_name = f"{settings.topic_prefix}join-by-request"
    by_request = app.topic(
        by_request_name,
        key_serializer="json",
        value_serializer="json",
        partitions=partitions,
        internal=True,
    )
    joined = app.topic(settings.topic("joined"), key_serializer="raw", value_serializer="raw")
    table = RequestTable(
        app,
        name="join-state",
        default=None,  # the table's own key and value serializers (json) are also used for recovery
        partitions=partitions,
        beacon=app.tables.beacon,
    )
    app.tables.add(table)
    retention_ms = int(settings.join_retention_s * 1000)
    clock = StreamClock(wall_ms(), retention_ms, sources=("prediction", "outcome"))

    async def reject(message: Any, reason: str, error_type: str) -> None:
        """Count, log and dead-letter a message the join cannot use; the stream goes on."""
        counts["rejected"] += 1
        source = Source(message.topic, message.partition, message.offset, message.key, message.value or b"")
        log.warning(
            "dead letter topic=%s partition=%s offset=%s reason=%s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        letter = dead_letter(source, reason, error_type)
        await dead_letters.send(key=message.key, value=dead_letter_codec.encode(letter))

    @app.agent(sources)
    async def rekey(stream):  # type: ignore[no-untyped-def]
        """Decode predictions and outcomes and re-key them by request id (bad outcomes → DLQ)."""
        async for event in stream.events():
            message = event.message
            is_prediction = message.topic == predictions_topic
            codec: Codec[Prediction] | Codec[Outcome] = prediction_codec if is_prediction else outcome_codec
            decoded = codec.decode(message.value or b"")
            if isinstance(decoded, Rejected):
                await reject(message, decoded.reason, decoded.error_type)
                continue
            record = (
                compact_prediction(decoded) if isinstance(decoded, Prediction) else compact_outcome(decoded)
            )
            kind = "prediction" if is_prediction else "outcome"
            request_id = decoded.request_id
            await by_request.send(
                key=request_id,
                value={"kind": kind, "record": record, "at_ms": int(message.timestamp * 1000)},
                partition=request_partition(request_id, partitions),
            )

    @app.agent(by_request)
    async def join(stream):  # type: ignore[no-untyped-def]
        """Move each request's join entry along and emit the joined rows."""
        async for event in stream.events():
            request_id: str = event.key
            value: dict[str, Any] = event.value
            try:
                kind, record = value["kind"], value["record"]
                # Messages re-keyed by an earlier rig carry no at_ms: their re-key time is the nearest.
                at_ms = int(value.get("at_ms", event.message.timestamp * 1000))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                await reject(event.message, f"unreadable {by_request_name} message: {error!r}", "malformed")
                continue
            entry = table.get(request_id)
            if kind == "prediction":
                step = on_prediction(entry, request_id, record, at_ms, retention_ms)
            else:
                step = on_outcome(entry, request_id, record, at_ms, retention_ms)
            await apply(request_id, step)
            clock.observe(kind, at_ms, wall_ms())

    async def apply(key: str, step: Step) -> None:
        if step.entry is None:
            table.pop(key, None)
        elif step.entry is not table.get(key):
            table[key] = step.entry
        counts.update(step.counts)
        for row in step.joined:
            await joined.send(key=key.encode(), value=joined_codec.encode(row))

    @app.timer(interval=settings.join_sweep_interval_s)
    @supervised
    async def sweep_expired() -> None:
        """Expire predictions without outcomes, drop orphans and old markers; log the counters."""
        now_ms = clock.now(wall_ms())
        if now_ms is not None:
            for key, entry in list(table.items()):
                if entry is not None:
                    await apply(key, sweep(entry, now_ms, retention_ms))
        log.info("join counts %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none")

    @app.page("/join/counts/")
    async def join_counts(web, request):  # type: ignore[no-untyped-def]
        """This process's join counters (joined, late, orphans, duplicates, ...) as JSON."""
        return web.json(dict(counts))

    return counts


def wall_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return int(time.time() * 1000)
