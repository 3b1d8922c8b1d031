"""The join agents: outcomes joined to the prediction of every model, state in a changelogged table.

Predictions and outcomes are keyed by entity id; the join state is keyed by request id. So a first
agent re-keys both streams by request id into an internal topic, and the second agent keeps the
table: its changelog is partitioned by the same key hash as its source, so a restarted or moved
worker recovers exactly the state of the partitions it takes over.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import faust

from rig.codec import Codec, Rejected
from rig.config import RigSettings
from rig.intake import Source, dead_letter
from rig.join import Step, compact_prediction, on_outcome, on_prediction, sweep

log = logging.getLogger(__name__)


def install_join(app: faust.App, settings: RigSettings, dead_letters: faust.TopicT) -> Counter[str]:
    """Add the join agents, table and sweep timer to `app`; returns the live counters."""
    counts: Counter[str] = Counter()
    prediction_codec = Codec("Prediction", registry_url=settings.schema_registry_url)
    outcome_codec = Codec("Outcome", registry_url=settings.schema_registry_url, allow_json=True)
    joined_codec = Codec("JoinedOutcome", registry_url=settings.schema_registry_url)
    dead_letter_codec = Codec("DeadLetter", registry_url=settings.schema_registry_url)

    sources = app.topic(
        settings.topic("predictions"),
        settings.topic("outcomes"),
        key_serializer="raw",
        value_serializer="raw",
    )
    by_request = app.topic(
        f"{settings.topic_prefix}join-by-request",
        key_serializer="json",
        value_serializer="json",
        partitions=settings.topic_partitions,
        internal=True,
    )
    joined = app.topic(settings.topic("joined"), key_serializer="raw", value_serializer="raw")
    table = app.Table(
        "join-state",
        default=None,  # the table's own key and value serializers (json) are also used for recovery
        partitions=settings.topic_partitions,
        use_partitioner=True,  # changelog partition = key hash = the partition of by_request it came from
    )

    @app.agent(sources)
    async def rekey(stream):  # type: ignore[no-untyped-def]
        """Decode predictions and outcomes and re-key them by request id (bad outcomes → DLQ)."""
        async for event in stream.events():
            message = event.message
            is_prediction = message.topic == settings.topic("predictions")
            decoded = (prediction_codec if is_prediction else outcome_codec).decode(message.value or b"")
            if isinstance(decoded, Rejected):
                counts["rejected"] += 1
                source = Source(
                    message.topic, message.partition, message.offset, message.key, message.value or b""
                )
                letter = dead_letter(source, decoded.reason, decoded.error_type)
                log.warning(
                    "dead letter topic=%s partition=%s offset=%s reason=%s",
                    message.topic,
                    message.partition,
                    message.offset,
                    decoded.reason,
                )
                await dead_letters.send(key=message.key, value=dead_letter_codec.encode(letter))
                continue
            record = (
                compact_prediction(decoded)
                if is_prediction
                else {
                    "label": int(decoded["label"]),
                    "event_time": decoded["event_time"],
                }
            )
            kind = "prediction" if is_prediction else "outcome"
            await by_request.send(key=decoded["request_id"], value={"kind": kind, "record": record})

    @app.agent(by_request)
    async def join(stream):  # type: ignore[no-untyped-def]
        """Move each request's join entry along and emit the joined rows."""
        async for event in stream.events():
            request_id: str = event.key
            now_ms = int(event.message.timestamp * 1000)
            value: dict[str, Any] = event.value
            entry = table.get(request_id)
            if value["kind"] == "prediction":
                step = on_prediction(entry, request_id, value["record"], now_ms)
            else:
                step = on_outcome(entry, request_id, value["record"], now_ms)
            await apply(request_id, step)

    async def apply(key: str, step: Step) -> None:
        if step.entry is None:
            table.pop(key, None)
        elif step.entry is not table.get(key):
            table[key] = step.entry
        counts.update(step.counts)
        for row in step.joined:
            await joined.send(key=key.encode(), value=joined_codec.encode(row))

    @app.timer(interval=settings.join_sweep_interval_s)
    async def sweep_expired() -> None:
        """Expire predictions without outcomes, drop orphans and old markers; log the counters."""
        import time

        now_ms = int(time.time() * 1000)
        retention_ms = int(settings.join_retention_s * 1000)
        for key, entry in list(table.items()):
            if entry is not None:
                await apply(key, sweep(entry, now_ms, retention_ms))
        log.info("join counts %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none")

    @app.page("/join/counts/")
    async def join_counts(web, request):  # type: ignore[no-untyped-def]
        """This process's join counters (joined, late, orphans, duplicates, ...) as JSON."""
        return web.json(dict(counts))

    return counts
