"""The promoter: joined outcomes in, decisions out (and, in `auto` mode, routing changes).

Besides the joined rows, the promoter reads from the metadata store: the label delays recorded by
earlier windows (at start: the label window is known from the first row) and the serving windows
the predict workers record for the latency and failed-batch guardrails (every SERVING_READ_S). It
writes there its own windows (model quality, label delays per label), its decisions and, every
STATUS_S, where every test stands (`rig status`).

Every STATE_SAVE_S it also saves the loop's whole state with the `rig.joined` offset after the last
row folded into it. A promoter that gets `rig.joined` (at start, or moved to another worker) restores
that state and reads on from that offset instead of the committed one, so its always-valid tests go
on where they stood instead of starting over (each fresh start would spend another α).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import numpy as np
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from rig.config import RigSettings, masked_url
from rig.errors import MetadataUnavailable, PromoterError, RigError, RoutingError
from rig.feedback.delays import DelayModel, WindowConfig
from rig.feedback.guardrails import GuardrailConfig
from rig.feedback.join import invalid_joined_reason
from rig.feedback.metadata import MetadataStore
from rig.feedback.promotion import PromotionLoop, columns, control_events, redo_rows
from rig.feedback.sequential import PromoterConfig
from rig.models.metrics import window_metrics
from rig.routing.control import publish_control
from rig.routing.table import RoutingTable
from rig.wire.codec import Codec, ErrorType, Rejected
from rig.wire.records import DeadLetter, Decision, JoinedOutcome
from streams.app import source_settings
from streams.consumed import dead_letter_output
from streams.metrics import WorkerMetrics
from streams.plane.health import Health
from streams.plane.ledger import TopicPartition as TP
from streams.plane.priority import GiveWay, paced
from streams.plane.service import Handler, Plane
from streams.plane.sink import Outgoing, Sink
from streams.plane.source import SourceBatch
from streams.runtime import Runtime

log = logging.getLogger(__name__)

DELAY_WINDOW_S = 60.0
"""How often the label delays seen are recorded as one window of per-label histograms."""
DELAY_HISTORY_WINDOWS = 10_080
"""How many recorded delay windows seed the label window at start (a week of DELAY_WINDOW_S)."""
SERVING_READ_S = 10.0
"""How often the serving windows of the golden's challengers are read from the metadata store."""
QUALITY_WINDOW_S = 10.0
"""How often each model's quality and the label delays of the rows folded since are recorded, as one
window. Recorded per batch instead, their four metadata transactions cost ~6 ms of CPU whatever the
batch's size (30 to 3,000 rows on PostgreSQL): most of the promoter's CPU at a few thousand requests
per second."""
STATUS_S = 5.0
"""How often where every test stands is recorded for `rig status`."""
STATE_SAVE_S = 5.0
"""How often the loop's state is saved for a restart to go on from (what a crash makes it fold again)."""
CONTROL_FIRST_RETRY_S = 0.5
CONTROL_LAST_RETRY_S = 10.0
"""Backoff of a control write (an `auto` decision's routing change) that was not acknowledged."""


class Promotion:
    """The promoter on the data plane: joined rows in (at least once; `PromotionLoop` folds each
    (request, model) row once), decisions out, and in `auto` mode the routing changes they make.

    `rig.joined` has one partition, so one worker at a time holds the promoter's state. Decisions
    are outputs of their batch: the rows that led to them are committed once the decisions are
    delivered. A metadata store that is away loses the statistics it would have recorded (logged),
    never a decision on Kafka.
    """

    def __init__(
        self,
        settings: RigSettings,
        runtime: Runtime,
        metadata: MetadataStore | None,
        delivered: Callable[[TP], int | None] = lambda _tp: None,
        metrics: WorkerMetrics | None = None,
        gives_way_to: GiveWay | None = None,
    ) -> None:
        """`delivered(tp)` is the offset up to which a partition's batches have their outputs delivered
        (the plane's ledger; by default never, so nothing is saved): a state is saved only once the
        decisions of its rows are on Kafka. `metrics`: where the tests' standing, the decisions and
        the dead letters are counted (the worker's; by default on a registry of their own).
        `gives_way_to`: the predict path's, in a worker that predicts too (`streams.plane.priority`)."""
        self.settings = settings
        self.gives_way_to = gives_way_to
        self.metrics = metrics if metrics is not None else WorkerMetrics(CollectorRegistry())
        self.runtime = runtime
        self.metadata = metadata
        self.joined_codec = Codec(JoinedOutcome, registry_url=settings.schema_registry_url)
        self.decision_codec = Codec(Decision, registry_url=settings.schema_registry_url)
        self.dead_letter_codec = Codec(DeadLetter, registry_url=settings.schema_registry_url)
        self.loop = promotion_loop(settings)
        self.delays_seen = DelayModel()
        """Label delays since the last recorded window (DELAY_WINDOW_S)."""
        self.quality = QualityWindow()
        """Rows folded since the last quality window was recorded (QUALITY_WINDOW_S)."""
        self.next_ms = {"delays": 0, "serving": 0, "status": 0, "quality": 0}
        self.joined: TP = (settings.topic("joined"), 0)
        self.delivered = delivered
        self.unsaved: tuple[int, bytes] | None = None
        """A state taken after a batch, with the offset after that batch: saved once it is delivered
        (saved earlier, a crash before the delivery would skip its decisions for good)."""
        self.next_state_ms = 0
        self.restored: PromotionLoop | None = None
        """The saved loop `start_offsets` read (in the source's thread), taken over by the next batch."""
        self.folding = asyncio.Lock()
        """Held while a batch is folded in a thread (off the event loop, which the worker's other roles
        share): what reads the tests on the loop meanwhile (the `/promoter/` page) waits for it instead
        of seeing them half changed."""

    async def start(self) -> None:
        """Seed the label window with the delays the metadata store recorded."""
        if self.metadata is None:
            return
        try:
            history = await asyncio.to_thread(self.metadata.delay_histograms, DELAY_HISTORY_WINDOWS)
        except RigError as error:
            log.warning("recorded label delays not read (the window is learned from scratch): %s", error)
            return
        model = DelayModel()
        for window in history:
            model.add_counts(window.label, window.counts)
        self.loop.seed_delays(model)
        log.info(
            "label delays seeded windows=%d negatives=%d positives=%d window_ms=%s",
            len({window.window_end_ms for window in history}),
            model.n(0),
            model.n(1),
            self.loop.label_window_ms,
        )

    def start_offsets(self, partitions: set[TP]) -> dict[TP, int]:
        """Called by the source (in its thread) with newly assigned partitions: when `rig.joined` is
        one, restore the saved state and start right after the rows it folded. Nothing saved, a store
        that failed or a state this rig cannot continue: the committed offset, tests as they are.

        Raises:
            MetadataUnavailable: the store does not answer: the source waits for it (starting over would
                drop the evidence the saved tests hold).
        """
        if self.joined not in partitions or self.metadata is None:
            return {}
        try:
            saved = self.metadata.load_promoter_state()
        except MetadataUnavailable:
            raise
        except RigError as error:
            log.warning("promoter state not read (its tests start over): %s", error)
            return {}
        if saved is None:
            return {}
        offset, state = saved
        loop = promotion_loop(self.settings)
        try:
            loop.restore(state)
        except PromoterError as error:
            log.warning("saved promoter state not continued (its tests start over): %s", error)
            return {}
        self.restored = loop  # handed over with the first batch the source reads after this call
        log.info("promoter state restored golden=%s from offset=%d", loop.golden, offset)
        return {self.joined: offset}

    def _fold(
        self, batch: SourceBatch, routing: RoutingTable
    ) -> tuple[list[Outgoing], list[JoinedOutcome], list[JoinedOutcome]]:
        """Decode a batch's joined rows and fold them into the tests: its dead letters, the rows
        folded and those seen for the first time."""
        self.decision_codec.register()  # what may wait for the schema registry comes first
        self.dead_letter_codec.register()
        outputs: list[Outgoing] = []
        rows: list[JoinedOutcome] = []
        for message in paced(batch.messages, self.gives_way_to):
            row = self.joined_codec.decode(message.value() or b"")
            if isinstance(row, Rejected):
                outputs.append(self._dead_letter(message, row.reason, row.error_type))
                continue
            reason = invalid_joined_reason(row)
            if reason is not None:  # folded in, it would raise in the losses and stop every test
                outputs.append(self._dead_letter(message, reason, ErrorType.INVALID_VALUE, row.request_id))
                continue
            rows.append(row)
        return outputs, rows, self.loop.observe(rows, routing)

    async def handle(self, batch: SourceBatch, sink: Sink) -> None:
        """Fold a batch of joined rows into the sequential tests, publish what they decide and, in
        `auto` mode, apply it; save the tests' state when due.

        Raises:
            SchemaRegistryUnavailable: before anything of the batch is folded or published (the batch
                is tried again).
        """
        if self.restored is not None:
            self.loop, self.restored, self.unsaved = self.restored, None, None
        routing = self.runtime.control_routing  # not the served one: it lags while models load
        async with self.folding:
            outputs, rows, fresh = await asyncio.to_thread(self._fold, batch, routing)
        if len(fresh) < len(rows):
            log.info("redelivered joined outcomes ignored count=%d", len(rows) - len(fresh))
        now_ms = int(time.time() * 1000)
        if fresh and self.metadata is not None:
            golden = [row for row in fresh if row.role == "golden"]
            labels, predicted, arrived = columns(golden, "label", "prediction_time", "outcome_time")
            self.quality.add(fresh, arrived - predicted)
            if golden:
                self.delays_seen.add(labels, arrived - predicted)
        await self._periodic(now_ms)
        decisions = self.loop.decide(now_ms, routing)
        if decisions:  # where every test stood when they were taken
            self.next_ms["status"] = now_ms
        for decision in decisions:
            log.info(
                "decision action=%s golden=%s challenger=%s reason=%s",
                decision.action,
                decision.golden_version,
                decision.challenger_version,
                decision.reason,
            )
            if self.settings.promoter_mode == "auto":
                await self._apply(decision, routing)
            outputs.append(
                Outgoing(
                    self.settings.topic("decisions"),
                    decision.golden_version.encode(),
                    self.decision_codec.encode(decision),
                )
            )
        await sink.publish(batch.batch_id, outputs)
        if decisions:
            await self._periodic(now_ms)
        for decision in decisions:
            self.metrics.decided(decision.action)
            await self._record(MetadataStore.record_decision, decision)
        await self._take_state(batch, now_ms, decided=bool(decisions))
        await self.save_state()

    async def _take_state(self, batch: SourceBatch, now_ms: int, decided: bool) -> None:
        """The loop's state after this batch, with the offset after its last row: every STATE_SAVE_S,
        and after every batch that decided something (a restart from an older state would fold its
        rows again and publish its decisions a second time)."""
        due = now_ms >= self.next_state_ms and self.unsaved is None
        if self.metadata is None or not (due or decided):
            return
        offsets = [
            offset
            for m in batch.messages
            if (m.topic(), m.partition()) == self.joined and (offset := m.offset()) is not None
        ]
        if offsets:
            self.next_state_ms = now_ms + int(STATE_SAVE_S * 1000)
            self.unsaved = (max(offsets) + 1, await asyncio.to_thread(self.loop.state))

    async def save_state(self) -> bool:
        """Save the state taken last once every output of the rows it covers is delivered (a plane
        tick, so an idle stream saves it too); False: nothing more to do now. A store that does not
        answer keeps the state for the next try: dropped, a restart would go on from an older state
        and publish the decisions taken since a second time."""
        delivered = self.delivered(self.joined)
        if self.unsaved is None or delivered is None or delivered < self.unsaved[0] or self.metadata is None:
            return False
        offset, state = self.unsaved
        try:
            await asyncio.to_thread(self.metadata.save_promoter_state, offset, state, int(time.time() * 1000))
        except MetadataUnavailable as error:
            log.warning("promoter state not saved yet (tried again with the next batch or tick): %s", error)
            return False
        except RigError as error:
            log.warning("promoter state not saved: %s", error)
        self.unsaved = None  # batches and ticks run in turn: no newer state was taken meanwhile
        return False

    async def _apply(self, decision: Decision, routing: RoutingTable) -> None:
        """Change routing as an `auto` decision says, before the decision is published or recorded:
        the audit trail never says "promote" while routing did not change. A control write the
        broker did not acknowledge is retried until it is (a dependency away is waited for); an
        invalid event (RoutingError) is a bug and ends the worker for a restart."""
        for event in control_events(decision, routing):
            delay_s = CONTROL_FIRST_RETRY_S
            while True:
                try:
                    await asyncio.to_thread(publish_control, self.settings, event)
                    break
                except RoutingError:
                    raise
                except RigError as error:
                    log.warning("control write failed, retried in %.1f s: %s", delay_s, error)
                    await asyncio.sleep(delay_s)
                    delay_s = min(CONTROL_LAST_RETRY_S, 2 * delay_s)
            await self._record(MetadataStore.record_control, event)

    def _dead_letter(
        self, message: Message, reason: str, error_type: str, request_id: str | None = None
    ) -> Outgoing:
        self.metrics.dead_lettered([error_type])
        return dead_letter_output(
            self.settings, self.dead_letter_codec, message, reason, error_type, request_id
        )

    async def record_quality(self, now_ms: int) -> None:
        """Record the quality window when it is due and holds rows (also a plane tick, so the rows of
        a stream gone idle are recorded too)."""
        if now_ms < self.next_ms["quality"] or not self.quality:
            return
        self.next_ms["quality"] = now_ms + int(QUALITY_WINDOW_S * 1000)
        window, self.quality = self.quality, QualityWindow()
        await self._record(record_window, window, now_ms)

    async def _periodic(self, now_ms: int) -> None:
        """Record the quality and label delays windows, read new serving windows, record the status,
        when due."""
        if self.metadata is None:
            return
        await self.record_quality(now_ms)
        due = {name: now_ms >= at for name, at in self.next_ms.items()}
        if due["delays"]:
            self.next_ms["delays"] = now_ms + int(DELAY_WINDOW_S * 1000)
            seen, self.delays_seen = self.delays_seen, DelayModel()
            if seen.n(0) or seen.n(1):
                histograms = {label: seen.sparse(label) for label in (0, 1)}
                await self._record(MetadataStore.record_delay_histograms, now_ms, histograms)
        if due["serving"] and self.loop.golden is not None:
            self.next_ms["serving"] = now_ms + int(SERVING_READ_S * 1000)
            await self._read_serving(self.metadata, self.loop.golden)
        if due["status"]:
            self.next_ms["status"] = now_ms + int(STATUS_S * 1000)
            status = self.loop.snapshot(self.runtime.control_routing)
            self.metrics.record_promoter(status)
            await self._record(MetadataStore.record_promoter_status, "promoter", now_ms, status)
            points = self.loop.evidence(now_ms)
            if points:
                golden = points[0].golden_version
                await self._record(MetadataStore.record_promoter_evidence, now_ms, golden, points)

    async def _read_serving(self, metadata: MetadataStore, golden: str) -> None:
        """Fold the serving windows of the golden's challengers not folded yet (a store that is away
        is logged; the guardrails wait)."""
        try:
            recorded = await asyncio.to_thread(metadata.serving_recorded)
            windows = await asyncio.to_thread(metadata.model_serving, golden)
        except RigError as error:
            log.warning("serving windows not read: %s", error)
            return
        if recorded:
            self.loop.serving_measured = True
        self.loop.observe_serving(windows)  # it skips the windows it folded (they are in its state)

    async def _record(self, write: Callable[..., object], *args: object) -> None:
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
    metrics: WorkerMetrics,
    gives_way_to: GiveWay | None = None,
) -> Plane:
    """Run the promoter on a data plane of its own (group `<prefix>promote`, topic `rig.joined`), with
    its standing, decisions, dead letters and lag in `metrics`, giving way to `gives_way_to` (the
    worker's predict plane's, if it has one); returns the plane (for the worker's health watch)."""
    held: list[Promotion] = []

    def start_offsets(partitions: set[TP]) -> dict[TP, int]:
        return held[0].start_offsets(partitions)  # the source joins its group after `start`

    plane = Plane(
        app,
        settings.kafka_client_config(),
        settings.kafka_producer_config(),
        source_settings(
            settings,
            "promote",
            (settings.topic("joined"),),
            batch_max=1_000,
            linger_s=settings.feedback_linger_s,
        ),
        Health(needs_partitions=False),
        start_offsets=start_offsets,
        metrics=metrics,
        gives_way_to=gives_way_to,
    )

    async def start() -> Handler:
        runtime = await get_runtime()
        promotion = Promotion(settings, runtime, metadata, plane.ledger.position, metrics, gives_way_to)
        await promotion.start()
        held.append(promotion)

        async def handle(batch: SourceBatch) -> None:
            await plane.until_available(batch, lambda: promotion.handle(batch, plane.sink))

        return handle

    async def save_state() -> bool:
        await held[0].record_quality(int(time.time() * 1000))
        return await held[0].save_state()

    plane.serve(start)
    plane.every(STATE_SAVE_S, save_state)

    @app.page("/promoter/")
    async def promoter_state(web: Any, request: Any) -> Any:
        """Where this worker's promoter tests stand (empty unless it holds `rig.joined`)."""
        if not held or not plane.source.assignment():
            return web.json({})
        async with held[0].folding:
            return web.json(held[0].loop.snapshot(held[0].runtime.control_routing))

    return plane


def promotion_loop(settings: RigSettings) -> PromotionLoop:
    """The promoter's loop as the `RIG_PROMOTER_*` settings configure it."""
    window_s = settings.promoter_label_window_s
    return PromotionLoop(
        PromoterConfig(
            alpha=settings.promoter_alpha,
            min_samples=settings.promoter_min_samples,
            min_effect=settings.promoter_min_effect,
            mode=settings.promoter_mode,
        ),
        GuardrailConfig(
            latency_margin=settings.promoter_latency_margin,
            failed_batch_margin=settings.promoter_failed_batch_margin,
            calibration_margin=settings.promoter_calibration_margin,
            srm_tolerance=settings.promoter_srm_tolerance,
        ),
        WindowConfig(
            fixed_ms=None if window_s is None else window_s * 1000,
            coverage=settings.promoter_label_coverage,
            max_ms=settings.join_retention_s * 1000,
        ),
        recent_rows=redo_rows(settings.max_open_batches, settings.batch_max),
        partitions=settings.topic_partitions,
    )


class QualityWindow:
    """The joined rows of a window, as the quality records need them: each model's labels and scores,
    and the label delays of the golden's rows (arrays per batch: ~16 bytes a row, not a record)."""

    def __init__(self) -> None:
        self.labels: dict[str, list[np.ndarray]] = defaultdict(list)
        self.scores: dict[str, list[np.ndarray]] = defaultdict(list)
        self.delays: list[np.ndarray] = []

    def __bool__(self) -> bool:
        return bool(self.labels)

    def add(self, rows: list[JoinedOutcome], golden_delays: np.ndarray) -> None:
        """Keep the labels and scores of a batch's fresh rows, and the label delays of its golden rows."""
        by_model: dict[str, list[JoinedOutcome]] = defaultdict(list)
        for row in rows:
            by_model[row.model_version].append(row)
        for version, group in by_model.items():
            labels, scores = columns(group, "label", "score")
            self.labels[version].append(labels)
            self.scores[version].append(scores)
        self.delays.append(golden_delays)


def record_window(metadata: MetadataStore, window: QualityWindow, window_end_ms: int) -> None:
    """Per-model quality and the label delay distribution of a window of joined rows."""
    for version, labels in window.labels.items():
        metrics = window_metrics(np.concatenate(labels), np.concatenate(window.scores[version]))
        metadata.record_model_metrics(version, window_end_ms, **metrics)
    delays = np.concatenate(window.delays)  # one array per batch added: never empty in a window with rows
    if delays.size:
        levels = (0.5, 0.9, 0.99)
        metadata.record_label_delays(
            window_end_ms, delays.size, dict(zip(levels, np.quantile(delays, levels), strict=True))
        )


def open_metadata(settings: RigSettings) -> MetadataStore | None:
    """The metadata store, its schema migrated; or None (logged) when its URL is bad or a migration
    failed: decisions still flow on Kafka. A store that does not answer is the worker's all the same
    (warned): it is migrated once it answers, and meanwhile what needs it waits or is logged."""
    url = masked_url(settings.resolved_metadata_url)
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = MetadataStore(settings.resolved_metadata_url)
        if not store.create_schema_when_reachable():
            log.warning("metadata store not answering url=%s; its schema is migrated once it does", url)
        return store
    except RigError:
        log.exception("metadata store unusable url=%s; decisions are only published", url)
        return None
