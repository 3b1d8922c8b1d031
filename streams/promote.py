"""The promoter agent: joined outcomes in, decisions out (and, in `auto` mode, routing changes).

`rig.joined` has one partition, so exactly one worker runs the promoter and sees every joined
outcome (at least once; `PromotionLoop` drops the rows it has seen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import faust
import numpy as np

from rig.config import RigSettings
from rig.errors import RigError
from rig.feedback.metadata import MetadataStore
from rig.feedback.promotion import PromotionLoop, columns, control_events
from rig.feedback.sequential import PromoterConfig
from rig.models.metrics import window_metrics
from rig.routing.control import publish_control
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Decision, JoinedOutcome
from streams.runtime import Runtime

log = logging.getLogger(__name__)


def install_promoter(
    app: faust.App,
    settings: RigSettings,
    get_runtime: Callable[[], Awaitable[Runtime]],
    metadata: MetadataStore | None,
) -> None:
    """Add the promoter agent to `app` (decisions and model metrics go to `metadata` when given)."""
    joined_codec = Codec(JoinedOutcome, registry_url=settings.schema_registry_url)
    decision_codec = Codec(Decision, registry_url=settings.schema_registry_url)
    joined = app.topic(settings.topic("joined"), key_serializer="raw", value_serializer="raw")
    decisions_topic = app.topic(settings.topic("decisions"), key_serializer="raw", value_serializer="raw")
    config = PromoterConfig(
        alpha=settings.promoter_alpha,
        min_samples=settings.promoter_min_samples,
        min_effect=settings.promoter_min_effect,
        mode=settings.promoter_mode,
    )

    @app.agent(joined)
    async def promote(stream):  # type: ignore[no-untyped-def]
        """Fold joined outcomes into the sequential tests and act on what they decide."""
        runtime = await get_runtime()
        loop = PromotionLoop(config)
        async for events in stream.take_events(1_000, within=1.0):
            rows = [joined_codec.decode(e.message.value or b"") for e in events]
            bad = sum(isinstance(row, Rejected) for row in rows)
            if bad:
                log.warning(
                    "undecodable joined outcomes skipped count=%d topic=%s", bad, settings.topic("joined")
                )
            routing = runtime.routing
            good = [row for row in rows if not isinstance(row, Rejected)]
            fresh = loop.observe(good, routing)
            if len(fresh) < len(good):
                log.info("redelivered joined outcomes ignored count=%d", len(good) - len(fresh))
            if metadata is not None and fresh:
                await asyncio.to_thread(record_window, metadata, fresh, int(time.time() * 1000))
            for decision in loop.decide(int(time.time() * 1000), routing):
                log.info(
                    "decision action=%s golden=%s challenger=%s reason=%s",
                    decision.action,
                    decision.golden_version,
                    decision.challenger_version,
                    decision.reason,
                )
                await decisions_topic.send(
                    key=decision.golden_version.encode(), value=decision_codec.encode(decision)
                )
                if metadata is not None:
                    await asyncio.to_thread(metadata.record_decision, decision)
                if settings.promoter_mode == "auto":
                    for event in control_events(decision, routing):
                        await asyncio.to_thread(publish_control, settings, event)
                        if metadata is not None:
                            await asyncio.to_thread(metadata.record_control, event)


def record_window(metadata: MetadataStore, rows: list[JoinedOutcome], window_end_ms: int) -> None:
    """Per-model quality and the label delay distribution of one batch of joined outcomes."""
    by_model: dict[str, list[JoinedOutcome]] = defaultdict(list)
    for row in rows:
        by_model[row.model_version].append(row)
    for version, group in by_model.items():
        labels, scores = columns(group, "label", "score")
        metadata.record_model_metrics(version, window_end_ms, **window_metrics(labels, scores))
    delays = np.array([row.outcome_time - row.prediction_time for row in rows if row.role == "golden"])
    if delays.size:
        levels = (0.5, 0.9, 0.99)
        metadata.record_label_delays(
            window_end_ms, delays.size, dict(zip(levels, np.quantile(delays, levels), strict=True))
        )


def open_metadata(settings: RigSettings) -> MetadataStore | None:
    """The metadata store, or None (logged) when it cannot be opened: decisions still flow on Kafka."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = MetadataStore(settings.resolved_metadata_url)
        store.create_schema()
        return store
    except RigError:
        log.exception(
            "metadata store unavailable url=%s; decisions are only published", settings.resolved_metadata_url
        )
        return None
