"""The predict agent: a request's journey, top to bottom, one call into `rig/` per arrow.

decode → enrich → transform → dispatch → predict → publish; every bad message goes to the DLQ with
its reason and bytes, and the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import faust
import numpy as np

from rig.errors import RigError
from rig.features.enrich import enrich
from rig.serving.cached_scores import fill_cache, look_up, merge
from rig.serving.dispatch import plan_batch
from rig.serving.predictions import build_predictions
from rig.wire.codec import ErrorType
from rig.wire.intake import Source, take_in
from rig.wire.records import DeadLetter, Prediction, Request
from streams.runtime import Runtime

log = logging.getLogger(__name__)


async def handle_batch(runtime: Runtime, events: Sequence[faust.types.EventT]) -> tuple[int, int]:
    """Answer one micro-batch of request events. Returns (predictions, dead letters) published."""
    clock = StageClock()
    batch = take_in(runtime.request_codec, [source_of(e.message) for e in events])  # decode
    clock.lap("decode")

    online = await asyncio.to_thread(runtime.reader.read, batch.entity_ids())  # enrich
    enriched = enrich(batch.requests, online.columns, online.found, runtime.settings.missing_entity_policy)
    batch.keep(enriched.kept, enriched.rejected)
    if runtime.feature_stats is not None and batch:
        runtime.feature_stats.update(enriched.columns)
    clock.lap("enrich")

    transform = runtime.transform
    if transform is None:
        batch.reject_all("no golden model is routed", ErrorType.INVALID_VALUE)
    records: list[Prediction] = []
    if batch:
        result = transform.transform(
            enriched.columns, now=[r.event_time for r in batch.requests]
        )  # transform
        ok = np.flatnonzero(result.row_ok)
        batch.keep(ok, [(i, reason, ErrorType.INVALID_VALUE) for i, reason in result.reasons.items()])
        values, found = result.values[ok], enriched.found[ok]
        clock.lap("transform")
    lookup = None
    if batch:
        entity_ids = np.array(batch.entity_ids())
        try:
            plan = plan_batch(runtime.routing, entity_ids, limiter=runtime.limiter)  # dispatch
            if runtime.cache is not None:  # cache
                lookup = await asyncio.to_thread(
                    look_up, runtime.cache, plan, values, entity_ids, transform.version
                )
            clock.lap("dispatch")
            to_score = plan.score_rows if lookup is None else lookup.to_score
            computed = await runtime.backbone.predict_batch(values, to_score, plan.golden)  # predict
            clock.lap("predict")
        except RigError as error:
            log.error(
                "batch not scored topic=%s first_offset=%s error=%s",
                batch.sources[0].topic,
                batch.sources[0].offset,
                error,
            )
            batch.reject_all(f"not scored: {error}", ErrorType.INVALID_VALUE)
        else:
            scores, golden_hit = (computed, None) if lookup is None else merge(plan, lookup, computed)
            for version, reason in scores.failed.items():
                log.warning("experiment skipped a batch version=%s reason=%s", version, reason)
            received_ms = [source.timestamp_ms for source in batch.sources]
            records = build_predictions(
                batch.requests, plan, scores, transform.version, found, clock.total(), golden_hit, received_ms
            )
            ask_explanations(runtime, batch.requests, records)

    publish(runtime, records, batch.dead_letters)  # publish
    await asyncio.to_thread(runtime.producer.flush, 30)
    if lookup is not None and records:  # fill the cache off the latency path
        await asyncio.to_thread(
            fill_cache, runtime.cache, lookup, computed, values, entity_ids, transform.version
        )
    return len(records), len(batch.dead_letters)


class StageClock:
    """Milliseconds spent in each stage of one batch."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round((now - self.mark) * 1000, 3)
        self.mark = now

    def total(self) -> dict[str, float]:
        """The stage timings plus `total`."""
        return {**self.timings, "total": round((time.perf_counter() - self.started) * 1000, 3)}


def source_of(message: faust.types.Message) -> Source:
    """Where a Faust message came from (a tombstone's value is read as empty bytes)."""
    return Source(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value or b"",
        message.timestamp * 1000,
    )


def ask_explanations(runtime: Runtime, requests: list[Request], records: list[Prediction]) -> None:
    """Queue the requests on which golden and a challenger disagree on the explain topic, at most
    `explain_rate_per_s` per second: they are explained asynchronously, off the critical path."""
    threshold = runtime.settings.explain_disagreement
    disagreeing = [
        request
        for request, record in zip(requests, records, strict=True)
        if any(abs(e.score - record.golden.score) > threshold for e in record.experiments)
    ]
    allowed = runtime.explain_limiter.take("explain", runtime.settings.explain_rate_per_s, len(disagreeing))
    for request in disagreeing[:allowed]:
        runtime.producer.produce(
            runtime.settings.topic("explain"),
            key=request.entity_id.encode(),
            value=runtime.request_codec.encode(request),
        )


def publish(runtime: Runtime, predictions: list[Prediction], dead_letters: list[DeadLetter]) -> None:
    """Queue predictions (keyed by entity id) and dead letters on the producer."""
    settings, producer = runtime.settings, runtime.producer
    topic = settings.topic("predictions")
    for record in predictions:
        producer.produce(topic, key=record.entity_id.encode(), value=runtime.prediction_codec.encode(record))
        producer.poll(0)
    dlq = settings.topic("dlq")
    for letter in dead_letters:
        log.warning(
            "dead letter topic=%s partition=%s offset=%s request_id=%s error_type=%s reason=%s",
            letter.source_topic,
            letter.partition,
            letter.offset,
            letter.request_id,
            letter.error_type,
            letter.reason,
        )
        producer.produce(dlq, key=letter.key, value=runtime.dead_letter_codec.encode(letter))
