"""Everything a worker holds while it runs: codecs, feature reader, transform, models, routing, producer.

Built once per worker process, before it consumes: models are loaded and verified and the routing
table is read from the control topic first, so the first batch meets a warm worker.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from rig.cache.store import PredictionCache
from rig.config import RigSettings
from rig.errors import CacheUnavailable, ModelIntegrityError, RigError
from rig.explain.service import ExplanationService
from rig.features.online_reader import FeastSdkReader, OnlineReader, RedisLayoutReader, layout_unreadable
from rig.features.selection import FeatureSelection
from rig.features.stats import FeatureStats
from rig.features.store import FeatureStoreClient
from rig.feedback.metadata import MetadataStore
from rig.models.registry import ModelRegistry, sha256_of
from rig.routing.control import ControlFollower
from rig.routing.table import EMPTY_ROUTING, RoutingTable
from rig.serving.backbone import Backbone
from rig.serving.dispatch import TrafficLimiter
from rig.serving.warmer import recent_requests, warm
from rig.transform.layout import InputLayout
from rig.transform.model_inputs import column_index
from rig.wire.codec import Codec
from rig.wire.records import ControlEvent, DeadLetter, Prediction, Request
from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class VerifiedRegistry(ModelRegistry):
    """A registry whose loads are also checked against the checksum the metadata store recorded at
    registration. The checksum in `meta.json` only catches corruption: whoever can rewrite a model
    file can rewrite the file beside it, but not the metadata store."""

    def __init__(self, root: Path, metadata: MetadataStore) -> None:
        super().__init__(root)
        self.metadata = metadata

    def load_bytes(self, version: str) -> bytes:
        """The artifact's bytes, checked against `meta.json` and then against the metadata store.
        A version the store has no record of (registered before checksums were recorded there) is
        loaded with a warning.

        Raises:
            RegistryError: not a registered version.
            ModelIntegrityError: the file is missing, or its checksum differs from `meta.json`'s or
                from the metadata store's.
            MetadataError: the metadata store is unreachable (the model is not loaded unverified).
        """
        data = super().load_bytes(version)
        recorded = self.metadata.model_checksum(version)
        if recorded is None:
            log.warning(
                "model %s has no checksum in the metadata store (registered before checksums were "
                "recorded there): checked against its meta.json only",
                version,
            )
            return data
        actual = sha256_of(data)
        if actual != recorded:
            raise ModelIntegrityError(
                f"checksum mismatch for {version}: the metadata store recorded {recorded[:16]}…, the "
                f"file has {actual[:16]}…; refusing a model that is not the one registered"
            )
        return data


@dataclass(frozen=True)
class Serving:
    """Everything a routing table needs to answer a batch, switched as one reference: a batch takes
    it once, so it never mixes the models of one routing with the transforms of another."""

    routing: RoutingTable
    selection: FeatureSelection
    """What the routed models read from Feast, together (one read per batch serves them all)."""
    reader: OnlineReader
    layout: InputLayout
    request_codec: Codec[Request]
    """Requests naming the entity by the deployment's join keys (`rig.wire.requests`)."""


@dataclass
class Runtime:
    """The worker's long-lived parts (one per process)."""

    settings: RigSettings
    registry: ModelRegistry
    client: FeatureStoreClient
    backbone: Backbone
    follower: ControlFollower
    producer: Producer
    prediction_codec: Codec[Prediction]
    dead_letter_codec: Codec[DeadLetter]
    metrics: WorkerMetrics
    cache: PredictionCache | None = None
    explanations: ExplanationService | None = None
    feature_stats: FeatureStats | None = None
    limiter: TrafficLimiter = field(default_factory=TrafficLimiter)
    explain_limiter: TrafficLimiter = field(default_factory=TrafficLimiter)
    serving: Serving | None = None
    _readers: dict[tuple[str, ...], OnlineReader] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls, settings: RigSettings, metadata: MetadataStore | None, metrics: WorkerMetrics | None = None
    ) -> Runtime:
        """Build the runtime, read the routing, and load every routed model (blocking).

        Models are verified against the checksums `metadata` recorded (`VerifiedRegistry`: a store that
        does not answer makes their loading wait); with no metadata store (its URL is bad or its schema
        could not be migrated), against their `meta.json` only (logged). The runtime
        and its cache record into `metrics` (the worker's; by default on a registry of their own).
        """
        if metadata is None:
            log.warning("model checksums are checked against meta.json only: no metadata store")
            registry = ModelRegistry(settings.model_dir)
        else:
            registry = VerifiedRegistry(settings.model_dir, metadata)
        registry_url = settings.schema_registry_url
        runtime = cls(
            settings=settings,
            registry=registry,
            client=FeatureStoreClient(settings),
            backbone=Backbone(
                registry,
                timeout_s=settings.model_timeout_s,
                grace_s=settings.experiment_grace_s,
                inline_rows=settings.model_inline_rows,
            ),
            follower=ControlFollower(settings),
            producer=Producer({**settings.kafka_producer_config(), "linger.ms": 5}),
            prediction_codec=Codec(Prediction, registry_url=registry_url),
            dead_letter_codec=Codec(DeadLetter, registry_url=registry_url),
            metrics=metrics if metrics is not None else WorkerMetrics(CollectorRegistry()),
        )
        if settings.cache_enabled:
            runtime.cache = PredictionCache(
                settings.redis_url if settings.cache_redis else None,
                namespace=f"{settings.topic_prefix}cache:",
                ttl_s=settings.cache_ttl_s,
                max_entries=settings.cache_max_entries,
                max_bytes=settings.cache_max_bytes,
                metrics=runtime.metrics.cache,
            )
        runtime.explanations = ExplanationService(registry)
        runtime.follower.on_change = runtime.apply_routing
        runtime.follower.on_purge = runtime.purge_cache
        # The follower applies the routing it read before this returns; one it cannot apply yet (a
        # model file still syncing, Redis away while warming) it retries, and requests wait in Kafka.
        table = runtime.follower.start().wait_caught_up(timeout_s=None)  # a broker away is waited for
        if table.golden is None:
            log.warning("no golden model on %s yet; requests wait in Kafka", settings.topic("control"))
        return runtime

    @property
    def routing(self) -> RoutingTable:
        """The routing in force: switched only after the models it needs are loaded and warmed."""
        return EMPTY_ROUTING if self.serving is None else self.serving.routing

    @property
    def control_routing(self) -> RoutingTable:
        """The routing the control topic holds, whether this worker serves it yet or not (`routing` lags
        behind while a model loads, or Redis or the metadata store is away): what joined rows are
        judged by. Read before the worker consumes (`create` waits for the follower to catch up)."""
        return self.follower.table

    def apply_routing(self, table: RoutingTable) -> None:
        """Load and warm what a routing table needs (models, their transforms and features, the
        reader and request codec of its entity), then switch to it in one assignment. Until then the
        routing in force stays (the control follower retries a table this refuses).

        Raises:
            RigError: a model, transform or feature cannot be served (yet), or warming failed.
        """
        with self._lock:
            versions = [v for v in (table.golden, *(e.model_version for e in table.live_experiments)) if v]
            if table.golden is None:
                return
            try:
                serving = self._serving(table, versions)
                fresh = self.backbone.ensure_loaded(versions)
                for version in fresh:
                    self.metrics.model_event(version, "loaded")
                if self.settings.warmer_enabled:
                    self._warm(serving, fresh)
            except RigError:
                for version in versions:
                    self.metrics.model_event(version, "failed")
                raise
            if table.golden != self.routing.golden:
                self.feature_stats = serving_stats(self.registry, table.golden)
            self.serving = serving  # the switch: one reference assignment
            log.info(
                "routing applied golden=%s experiments=%s reader=%s",
                table.golden,
                [e.name for e in table.live_experiments],
                type(serving.reader).__name__,
            )

    def _serving(self, table: RoutingTable, versions: list[str]) -> Serving:
        """What serving `table` needs (see `Serving`).

        Raises:
            RigError: a model, transform or feature is missing or cannot be served.
        """
        metas = {version: self.registry.meta(version) for version in versions}
        transforms = {
            meta.transform_version: self.registry.load_transform(meta.transform_version)
            for meta in metas.values()
        }
        selections = {}
        for version, meta in metas.items():
            selection = (
                FeatureSelection.from_dict(meta.selection) if meta.selection else self.client.selection()
            )
            kinds = transforms[meta.transform_version].input_kinds
            selection.check_types(column for column, kind in kinds.items() if kind == "category")
            selections[version] = selection
        combined = selections[str(table.golden)]
        for version in versions:
            combined = combined.union(selections[version])
        layout = InputLayout(
            transforms,
            {
                version: (meta.transform_version, meta.features, combined.renaming(selections[version]))
                for version, meta in metas.items()
            },
            str(table.golden),
        )
        current = self.serving
        codec = (
            current.request_codec
            if current is not None and current.selection.key_spec == combined.key_spec
            else Codec(
                Request,
                registry_url=self.settings.schema_registry_url,
                allow_json=True,
                max_bytes=self.settings.max_message_bytes,
                shape=combined.key_spec,
            )
        )
        return Serving(table, combined, self._reader(combined), layout, codec)

    def _reader(self, selection: FeatureSelection) -> OnlineReader:
        """The fastest reader of a selection, built once per distinct selection."""
        if selection.refs not in self._readers:
            reason = (
                layout_unreadable(self.client, selection) if self.settings.online_reader == "redis" else ""
            )
            if reason is None:
                self._readers[selection.refs] = RedisLayoutReader(self.settings, self.client, selection)
            else:
                if reason:
                    log.info("features read through the Feast SDK: %s", reason)
                self._readers[selection.refs] = FeastSdkReader(self.client, selection)
        return self._readers[selection.refs]

    def _warm(self, serving: Serving, fresh: tuple[str, ...]) -> None:
        table = serving.routing
        new_golden = table.golden is not None and table.golden != self.routing.golden
        if not fresh and not new_golden:
            return
        # The replay only pre-fills the cache: without a cache it would be work that stalls the worker.
        replaying = new_golden and self.cache is not None
        recent = (
            recent_requests(self.settings, self.settings.warmer_replay, serving.request_codec)
            if replaying
            else []
        )
        for version in dict.fromkeys([*fresh, *([table.golden] if new_golden else [])]):
            meta = self.registry.meta(str(version))
            transform = serving.layout.transforms[meta.transform_version]
            columns = column_index(transform.output_columns, meta.features)
            replay = recent if version == table.golden else []
            report = warm(
                str(version),
                functools.partial(self._predict_columns, str(version), columns),
                transform,
                serving.reader,
                replay,
                self.cache if replay else None,
            )
            self.metrics.model_warmed(report.version, report.seconds)
            log.info(
                "model warmed version=%s warm_up_rows=%d cached_rows=%d seconds=%.3f",
                report.version,
                report.warm_up_rows,
                report.cached_rows,
                report.seconds,
            )

    def _predict_columns(self, version: str, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`version`'s scores of `rows`, a transform's whole output, of which the model takes `columns`."""
        return self.backbone.predict_now(version, rows[:, columns])

    def purge_cache(self, event: ControlEvent) -> None:
        """Apply a `purge_cache` control event: one entity's entries, one version's, or all.

        Raises:
            CacheUnavailable: the cache's Redis tier did not answer, so its entries are still there
                (the control follower tries the purge again).
        """
        if self.cache is None:
            return
        if event.entity_id:
            result = self.cache.purge_entity(event.entity_id)
        elif event.model_version:
            result = self.cache.purge_model(event.model_version)
        else:
            result = self.cache.purge_all()
        if self.settings.cache_redis and result.redis_removed is None:
            raise CacheUnavailable(
                f"cache purge entity={event.entity_id} version={event.model_version} not applied to Redis: "
                "unreachable"
            )
        log.info("cache purged entity=%s version=%s result=%s", event.entity_id, event.model_version, result)

    def close(self) -> None:
        """Stop following the control topic, flush the producer and stop the model pools."""
        self.follower.stop()
        self.producer.flush(30)
        self.backbone.close()


def serving_stats(registry: ModelRegistry, golden: str) -> FeatureStats | None:
    """Empty serving feature statistics, with the golden's training features as the reference."""
    reference = registry.reference(golden)
    if reference is None:
        log.warning("model %s has no reference rows: serving feature statistics are off", golden)
        return None
    return FeatureStats.from_reference(reference)
