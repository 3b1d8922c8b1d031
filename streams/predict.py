"""The predict agent: a request's journey, top to bottom, one call into `rig/` per arrow.

decode → enrich → transform → cache → dispatch → predict → publish. A bad message goes to the DLQ with
its reason and bytes and the batch goes on. A dependency that is away (Redis, the golden model) makes
the whole batch wait and try again: nothing valid is dead-lettered, and the batch's offsets are
committed only once every one of its outputs is delivered (`streams.plane`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from rig.errors import CodecError, GoldenUnavailable, SchemaRegistryUnavailable
from rig.features.enrich import enrich, invalid_request_values
from rig.serving.cached_scores import fill_cache, look_up, merge
from rig.serving.dispatch import TrafficLimiter, plan_batch
from rig.serving.predictions import build_predictions
from rig.wire.codec import ErrorType
from rig.wire.intake import Source, take_in
from rig.wire.records import DeadLetter, Prediction, Request
from streams.consumed import source_of
from streams.plane.service import Handler, Plane
from streams.plane.sink import Outgoing
from streams.plane.source import SourceBatch
from streams.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What one batch produced, and the work left for after its outputs are published."""

    predictions: list[Prediction]
    dead_letters: list[DeadLetter]
    explain: list[Request]
    columns: dict[str, np.ndarray]
    """Enriched feature columns of the answered requests (serving statistics)."""
    fill_cache: Callable[[], None] | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds the batch spent in each stage it reached (`StageClock`)."""
    received_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    """When each answered request reached Kafka (epoch ms), in the order of `predictions`."""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Each model's scores of the batch (the golden's and every experiment's)."""
    golden: str = ""
    """The version that was golden for the batch."""


async def answer(runtime: Runtime, sources: Sequence[Source]) -> Answer:
    """Answer one micro-batch of request messages.

    Raises:
        Unavailable: a dependency is away (Redis, no golden model yet, golden failing or slow): the
            batch must be tried again later; nothing of it was published.
    """
    serving = runtime.serving  # one routing, its models, transforms, reader and request codec
    if serving is None:
        raise GoldenUnavailable("no golden model is routed yet: requests wait in Kafka")
    clock = StageClock()
    batch = take_in(serving.request_codec, sources)  # decode
    clock.lap("decode")

    fields = serving.selection.request_fields  # request-time inputs of on-demand feature views
    unfit = invalid_request_values(batch.requests, fields, serving.selection.request_types)
    if unfit:  # before the read: one such value fails Feast's read of the whole batch
        bad = {i for i, _, _ in unfit}
        batch.keep([i for i in range(len(batch.requests)) if i not in bad], unfit)
        if not batch:
            return Answer([], batch.dead_letters, [], {}, stages_ms=clock.timings)
    request_data = {name: [r.features.get(name) for r in batch.requests] for name in fields}
    ids = batch.entity_ids()  # enrich: a small batch on this thread, if Redis answers at once
    small = len(ids) <= runtime.settings.feature_inline_rows
    online = serving.reader.read_quick(ids, request_data) if small else None
    if online is None:
        online = await asyncio.to_thread(serving.reader.read, ids, request_data)
    policy = runtime.settings.missing_entity_policy
    enriched = enrich(batch.requests, online.columns, online.found, policy, request_fields=fields)
    batch.keep(enriched.kept, enriched.rejected)
    clock.lap("enrich")
    if not batch:
        return Answer([], batch.dead_letters, [], enriched.columns, stages_ms=clock.timings)

    layout = serving.layout
    laid = layout.transform(enriched.columns, now=[r.event_time for r in batch.requests])  # transform
    ok = np.flatnonzero(laid.ok[layout.golden_block])
    batch.keep(ok, [(i, reason, ErrorType.INVALID_VALUE) for i, reason in laid.reasons.items()])
    values, found = laid.values[ok], enriched.found[ok]
    columns = {name: column[ok] for name, column in enriched.columns.items()}
    clock.lap("transform")
    if not batch:
        return Answer([], batch.dead_letters, [], columns, stages_ms=clock.timings)

    entity_ids = np.array(batch.entity_ids())
    inputs = layout.inputs()
    eligible = {v: laid.ok[i.block][ok] for v, i in inputs.items()}
    plan = plan_batch(serving.routing, entity_ids, limiter=runtime.limiter).restricted(eligible)  # dispatch
    cache, lookup = runtime.cache, None
    if cache is not None:  # cache
        lookup = await asyncio.to_thread(look_up, cache, plan, values, entity_ids, inputs)
    clock.lap("dispatch")
    to_score = plan.score_rows if lookup is None else lookup.to_score
    model_columns = {version: inputs[version].columns for version in to_score}
    computed = await runtime.backbone.predict_batch(values, to_score, plan.golden, model_columns)  # predict
    clock.lap("predict")

    scores, golden_hit = (computed, None) if lookup is None else merge(plan, lookup, computed)
    for version, reason in scores.failed.items():
        log.warning("experiment skipped a batch version=%s reason=%s", version, reason)
    received_ms = [source.timestamp_ms for source in batch.sources]
    transform_version = layout.golden_transform
    timings = clock.total() if runtime.settings.prediction_timings else None
    predictions = build_predictions(
        batch.requests, plan, scores, transform_version, found, timings, golden_hit, received_ms
    )
    refill = None
    if cache is not None and lookup is not None:

        def refill() -> None:
            fill_cache(cache, lookup, computed, values, entity_ids, inputs)

    return Answer(
        predictions,
        batch.dead_letters,
        disagreements(
            batch.requests,
            predictions,
            runtime.settings.explain_disagreement,
            runtime.explain_limiter,
            runtime.settings.explain_rate_per_s,
        ),
        columns,
        refill,
        clock.timings,
        np.array(received_ms),
        scores.scores,
        plan.golden,
    )


def disagreements(
    requests: list[Request],
    predictions: list[Prediction],
    threshold: float,
    limiter: TrafficLimiter,
    rate_per_s: float,
) -> list[Request]:
    """The first requests on which golden and a challenger disagree by more than `threshold`, as many
    as `limiter` allows at `rate_per_s`: they are explained asynchronously, off the critical path.

    The limiter is asked first: under load its bucket is empty for most batches (one explanation a
    second by default), and the scan of every prediction would be thrown away.
    """
    allowed = limiter.available("explain", rate_per_s)
    disagreeing: list[Request] = []
    if not allowed:
        return disagreeing
    for request, prediction in zip(requests, predictions, strict=True):
        golden = prediction.golden.score
        if any(abs(e.score - golden) > threshold for e in prediction.experiments):
            disagreeing.append(request)
            if len(disagreeing) == allowed:
                break
    limiter.take("explain", rate_per_s, len(disagreeing))
    return disagreeing


def outputs(runtime: Runtime, result: Answer) -> Iterator[Outgoing]:
    """Every message the batch publishes: predictions keyed by entity id, dead letters, explain
    requests."""
    settings = runtime.settings
    topic = settings.topic("predictions")
    for prediction in result.predictions:
        yield Outgoing(topic, prediction.entity_id.encode(), runtime.prediction_codec.encode(prediction))
    dlq = settings.topic("dlq")
    for letter in result.dead_letters:
        log.warning(
            "dead letter topic=%s partition=%s offset=%s request_id=%s error_type=%s reason=%s",
            letter.source_topic,
            letter.partition,
            letter.offset,
            letter.request_id,
            letter.error_type,
            letter.reason,
        )
        yield Outgoing(dlq, letter.key, runtime.dead_letter_codec.encode(letter))
    explain = settings.topic("explain")
    codec = runtime.serving.request_codec if runtime.serving is not None else None
    if codec is not None:
        for request in result.explain:
            try:
                value = codec.encode(request)
            except SchemaRegistryUnavailable:
                raise  # waited for, the batch tried again
            except CodecError as error:
                # Explanations are best effort; the batch's answers are not. A request that arrived as
                # JSON can outgrow max_message_bytes in Avro, and the routing (its request codec) may
                # have changed since the batch was decoded: raised, either ended the worker at every try.
                log.warning("explain request not sent request_id=%s: %s", request.request_id, error)
                continue
            yield Outgoing(explain, request.entity_id.encode(), value)


async def serve(runtime: Runtime, plane: Plane, batch: SourceBatch) -> None:
    """Answer a batch, waiting out every outage, and publish its outputs through the plane's sink.

    A batch whose partitions were revoked (or lost) while it waited is given up: their new owner
    answers it from the committed offsets. The worker's metrics count the batch once, however often
    it is tried.
    """
    sources = [source_of(message) for message in batch.messages]
    metrics = runtime.metrics
    metrics.consumed(len(sources))

    async def attempt() -> tuple[Answer, list[Outgoing]]:
        # What may wait for the schema registry comes first (a batch answered twice takes its explain
        # and A/B traffic tokens twice); explain requests are encoded, and so registered, in `outputs`.
        runtime.prediction_codec.register()
        runtime.dead_letter_codec.register()
        result = await answer(runtime, sources)
        return result, list(outputs(runtime, result))

    answered = await plane.until_available(batch, attempt)
    if answered is None:
        return
    result, published = answered
    publishing = time.perf_counter()
    await plane.sink.publish(batch.batch_id, published)
    metrics.staged({**result.stages_ms, "publish": (time.perf_counter() - publishing) * 1000})
    metrics.published(result.received_ms, time.time() * 1000)
    metrics.scored(result.scores, result.golden)
    metrics.dead_lettered(letter.error_type for letter in result.dead_letters)
    # off the latency path: the predictions are on their way
    if runtime.feature_stats is not None and result.predictions:
        runtime.feature_stats.update(result.columns)
    if result.fill_cache is not None:
        await asyncio.to_thread(result.fill_cache)


def install_predict(plane: Plane, get_runtime: Callable[[], Awaitable[Runtime]]) -> None:
    """Answer the micro-batches the plane's source hands over (see `serve`), once the runtime is built."""

    async def start() -> Handler:
        runtime = await get_runtime()
        plane.health.add_check(lambda: None if runtime.routing.golden else "no golden model routed")
        plane.health.add_check(runtime.follower.unapplied)  # this worker's routing is behind the others'
        return lambda batch: serve(runtime, plane, batch)

    plane.serve(start)


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
