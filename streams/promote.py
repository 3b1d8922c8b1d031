"""The promoter: joined outcomes in, decisions out (and, in `auto` mode, routing changes)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

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
from rig.wire.intake import dead_letter
from rig.wire.records import DeadLetter, Decision, JoinedOutcome
from streams.app import source_settings
from streams.plane.health import Health
from streams.plane.service import Handler, Plane
from streams.plane.sink import Outgoing, Sink
from streams.plane.source import SourceBatch
from streams.predict import source_of
from streams.runtime import Runtime

log = logging.getLogger(__name__)


class Promotion:
    """The promoter on the data plane: joined rows in (at least once; `PromotionLoop` folds each
    (request, model) row once), decisions out, and in `auto` mode the routing changes they make.

    `rig.joined` has one partition, so one worker at a time holds the promoter's state. Decisions
    are outputs of their batch: the rows that led to them are committed once the decisions are
    delivered. A metadata store that is away loses the statistics it would have recorded (logged),
    never a decision on Kafka.
    """

    def __init__(self, settings: RigSettings, runtime: Runtime, metadata: MetadataStore | None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metadata = metadata
        self.joined_codec = Codec(JoinedOutcome, registry_url=settings.schema_registry_url)
        self.decision_codec = Codec(Decision, registry_url=settings.schema_registry_url)
        self.dead_letter_codec = Codec(DeadLetter, registry_url=settings.schema_registry_url)
        self.loop = PromotionLoop(
            PromoterConfig(
                alpha=settings.promoter_alpha,
                min_samples=settings.promoter_min_samples,
                min_effect=settings.promoter_min_effect,
                mode=settings.promoter_mode,
            )
        )

    async def handle(self, batch: SourceBatch, sink: Sink) -> None:
        """Fold a batch of joined rows into the sequential tests, publish what they decide and, in
        `auto` mode, apply it."""
        outputs: list[Outgoing] = []
        rows: list[JoinedOutcome] = []
        for message in batch.messages:
            row = self.joined_codec.decode(message.value() or b"")
            if isinstance(row, Rejected):
                source = source_of(message)
                log.warning(
                    "dead letter topic=%s offset=%s reason=%s", source.topic, source.offset, row.reason
                )
                letter = dead_letter(source, row.reason, row.error_type)
                outputs.append(
                    Outgoing(self.settings.topic("dlq"), message.key(), self.dead_letter_codec.encode(letter))
                )
            else:
                rows.append(row)
        routing = self.runtime.routing
        fresh = self.loop.observe(rows, routing)
        if len(fresh) < len(rows):
            log.info("redelivered joined outcomes ignored count=%d", len(rows) - len(fresh))
        now_ms = int(time.time() * 1000)
        if fresh:
            await self._record(record_window, fresh, now_ms)
        decisions = self.loop.decide(now_ms, routing)
        for decision in decisions:
            log.info(
                "decision action=%s golden=%s challenger=%s reason=%s",
                decision.action,
                decision.golden_version,
                decision.challenger_version,
                decision.reason,
            )
            outputs.append(
                Outgoing(
                    self.settings.topic("decisions"),
                    decision.golden_version.encode(),
                    self.decision_codec.encode(decision),
                )
            )
        await sink.publish(batch.batch_id, outputs)
        for decision in decisions:
            await self._record(MetadataStore.record_decision, decision)
            if self.settings.promoter_mode == "auto":
                for event in control_events(decision, routing):
                    await asyncio.to_thread(publish_control, self.settings, event)
                    await self._record(MetadataStore.record_control, event)

    async def _record(self, write: Callable[..., None], *args: object) -> None:
        """A metadata write; a store that is away is logged, never fatal."""
        if self.metadata is None:
            return
        try:
            await asyncio.to_thread(write, self.metadata, *args)
        except RigError as error:
            log.warning("metadata not recorded (%s): %s", getattr(write, "__name__", "write"), error)


def install_promoter(
    app: faust.App,
    settings: RigSettings,
    get_runtime: Callable[[], Awaitable[Runtime]],
    metadata: MetadataStore | None,
) -> None:
    """Run the promoter on a data plane of its own (group `<prefix>promote`, topic `rig.joined`)."""
    plane = Plane(
        app,
        settings.kafka_client_config(),
        settings.kafka_producer_config(),
        source_settings(settings, "promote", (settings.topic("joined"),), batch_max=1_000),
        Health(needs_partitions=False),
    )

    held: list[Promotion] = []

    async def start() -> Handler:
        promotion = Promotion(settings, await get_runtime(), metadata)
        held.append(promotion)
        return lambda batch: promotion.handle(batch, plane.sink)

    plane.serve(start)

    @app.page("/promoter/")
    async def promoter_state(web: Any, request: Any) -> Any:
        """Where this worker's promoter tests stand (empty unless it holds `rig.joined`)."""
        return web.json(held[0].loop.snapshot() if held and plane.source.assignment() else {})


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
