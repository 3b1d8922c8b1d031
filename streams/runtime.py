"""Everything a worker holds while it runs: codecs, feature reader, transform, models, routing, producer.

Built once per worker process, before it consumes: models are loaded and verified and the routing
table is read from the control topic first, so the first batch meets a warm worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Producer

from rig.cache.store import PredictionCache
from rig.config import RigSettings
from rig.errors import RigError
from rig.explain.service import ExplanationService
from rig.features.online_reader import FeastSdkReader, OnlineReader, RedisLayoutReader
from rig.features.stats import FeatureStats
from rig.features.store import FeatureStoreClient
from rig.models.registry import ModelRegistry
from rig.routing.control import ControlFollower
from rig.routing.table import EMPTY_ROUTING, RoutingTable
from rig.serving.backbone import Backbone
from rig.serving.dispatch import TrafficLimiter
from rig.serving.warmer import recent_requests, warm
from rig.transform.fitted import FittedTransform
from rig.transform.model_inputs import column_index
from rig.wire.codec import Codec
from rig.wire.records import ControlEvent, DeadLetter, Prediction, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColumnSelectingModel:
    """A booster fed with only its own columns of the deployment's transform output."""

    booster: Any
    columns: np.ndarray
    width: int

    def inplace_predict(self, data: np.ndarray) -> Any:
        if data.shape[1] != self.width:
            raise RigError(f"model expects the {self.width} columns of its transform, got {data.shape[1]}")
        return self.booster.inplace_predict(data[:, self.columns])


@dataclass
class Runtime:
    """The worker's long-lived parts (one per process)."""

    settings: RigSettings
    registry: ModelRegistry
    reader: OnlineReader
    backbone: Backbone
    follower: ControlFollower
    producer: Producer
    request_codec: Codec[Request]
    prediction_codec: Codec[Prediction]
    dead_letter_codec: Codec[DeadLetter]
    cache: PredictionCache | None = None
    explanations: ExplanationService | None = None
    feature_stats: FeatureStats | None = None
    limiter: TrafficLimiter = field(default_factory=TrafficLimiter)
    explain_limiter: TrafficLimiter = field(default_factory=TrafficLimiter)
    transform: FittedTransform | None = None
    _routing: RoutingTable = EMPTY_ROUTING
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: RigSettings) -> Runtime:
        """Build the runtime, read the routing, and load every routed model (blocking)."""
        registry = ModelRegistry(settings.model_dir)
        client = FeatureStoreClient(settings)
        reader: OnlineReader = (
            RedisLayoutReader(settings, client)
            if settings.online_reader == "redis"
            else FeastSdkReader(client)
        )
        registry_url = settings.schema_registry_url
        runtime = cls(
            settings=settings,
            registry=registry,
            reader=reader,
            backbone=Backbone(
                registry,
                timeout_s=settings.model_timeout_s,
                grace_s=settings.experiment_grace_s,
                wrap_model=lambda version, booster: _select_columns(registry, version, booster),
            ),
            follower=ControlFollower(settings),
            producer=Producer({**settings.kafka_producer_config(), "linger.ms": 5}),
            request_codec=Codec(
                Request, registry_url=registry_url, allow_json=True, max_bytes=settings.max_message_bytes
            ),
            prediction_codec=Codec(Prediction, registry_url=registry_url),
            dead_letter_codec=Codec(DeadLetter, registry_url=registry_url),
        )
        if settings.cache_enabled:
            runtime.cache = PredictionCache(
                settings.redis_url if settings.cache_redis else None,
                namespace=f"{settings.topic_prefix}cache:",
                ttl_s=settings.cache_ttl_s,
                max_entries=settings.cache_max_entries,
                max_bytes=settings.cache_max_bytes,
            )
        runtime.explanations = ExplanationService(registry, reader)
        runtime.follower.on_change = runtime.apply_routing
        runtime.follower.on_purge = runtime.purge_cache
        table = runtime.follower.start().wait_caught_up(timeout_s=None)  # a broker away is waited for
        runtime.apply_routing(table)
        if table.golden is None:
            log.warning("no golden model on %s yet; requests wait in Kafka", settings.topic("control"))
        return runtime

    @property
    def routing(self) -> RoutingTable:
        """The routing in force: switched only after the models it needs are loaded and warmed."""
        return self._routing

    def apply_routing(self, table: RoutingTable) -> None:
        """Load and warm the models a routing table needs, then switch to it (and to its transform)."""
        with self._lock:
            versions = [v for v in (table.golden, *(e.model_version for e in table.live_experiments)) if v]
            try:
                fresh = self.backbone.ensure_loaded(versions)
                transform = self.transform
                if table.golden is not None:
                    version = self.registry.meta(table.golden).transform_version
                    if transform is None or transform.version != version:
                        transform = self.registry.load_transform(version)
                if self.settings.warmer_enabled and transform is not None:
                    self._warm(table, fresh, transform)
            except RigError:
                log.exception("routing needs models that cannot be loaded or warmed versions=%s", versions)
                return
            if table.golden is not None and table.golden != self._routing.golden:
                self.feature_stats = serving_stats(self.registry, table.golden)
            self.transform, self._routing = transform, table  # the switch: two reference assignments
            log.info(
                "routing applied golden=%s experiments=%s",
                table.golden,
                [e.name for e in table.live_experiments],
            )

    def _warm(self, table: RoutingTable, fresh: tuple[str, ...], transform: FittedTransform) -> None:
        new_golden = table.golden is not None and table.golden != self._routing.golden
        if not fresh and not new_golden:
            return
        # The replay only pre-fills the cache: without a cache it would be work that stalls the worker.
        replaying = new_golden and self.cache is not None
        recent = recent_requests(self.settings, self.settings.warmer_replay) if replaying else []
        for version in dict.fromkeys([*fresh, *([table.golden] if new_golden else [])]):
            replay = recent if version == table.golden else []
            report = warm(
                version,
                lambda x, v=version: self.backbone.predict_now(v, x),
                transform,
                self.reader,
                replay,
                self.cache if replay else None,
            )
            log.info(
                "model warmed version=%s warm_up_rows=%d cached_rows=%d seconds=%.3f",
                report.version,
                report.warm_up_rows,
                report.cached_rows,
                report.seconds,
            )

    def purge_cache(self, event: ControlEvent) -> None:
        """Apply a `purge_cache` control event: one entity's entries, one version's, or all."""
        if self.cache is None:
            return
        if event.entity_id:
            result = self.cache.purge_entity(event.entity_id)
        elif event.model_version:
            result = self.cache.purge_model(event.model_version)
        else:
            result = self.cache.purge_all()
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


def _select_columns(registry: ModelRegistry, version: str, booster: Any) -> ColumnSelectingModel:
    meta = registry.meta(version)
    outputs = registry.load_transform(meta.transform_version).output_columns
    return ColumnSelectingModel(booster, column_index(outputs, meta.features), len(outputs))
