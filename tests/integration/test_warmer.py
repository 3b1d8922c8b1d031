"""The warmer on the real broker, Redis and Feast: recent requests pre-fill the cache for a new golden."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from rig.cache.store import HitTier, PredictionCache
from rig.cli.clients import produce_requests
from rig.features.online_reader import RedisLayoutReader
from rig.features.store import FeatureStoreClient
from rig.models.registry import ModelRegistry
from rig.serving.warmer import recent_requests, warm
from sim.deploy import prepare
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.integration.conftest import isolated_feast_settings

pytestmark = pytest.mark.integration


def test_warming_a_new_golden_prefills_the_cache_with_its_scores_of_recent_traffic(tmp_path) -> None:
    settings = isolated_feast_settings(
        tmp_path,
        topic_prefix=f"warm.{uuid.uuid4().hex[:8]}.",
    )
    world = WorldSettings(seed=51, entities=300, days=3)
    _, versions = prepare(
        settings, {"golden": "golden", "better": "better"}, world, n_events=3_000, rounds=20
    )
    requests = list(synthetic_requests(world, 500, seed=3))
    assert produce_requests(settings, requests) == 500

    recent = recent_requests(settings, 200)
    assert 150 <= len(recent) <= 200, "about the last 200 requests, spread over the partitions"
    assert {r.request_id for r in recent} <= {r.request_id for r in requests}

    registry = ModelRegistry(settings.model_dir)
    version = versions["better"]
    transform = registry.load_transform(registry.meta(version).transform_version)
    booster = registry.load(version)
    columns = [transform.output_columns.index(f) for f in registry.meta(version).features]
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return booster.inplace_predict(x[:, columns])

    reader = RedisLayoutReader(settings, FeatureStoreClient(settings))
    cache = PredictionCache(settings.redis_url, f"{settings.topic_prefix}cache:", 600, 10_000, 2**24)
    report = warm(version, predict, transform, reader, recent, cache)

    assert report.cached_rows == len(recent) and calls[0] <= 256, "a warm-up batch, then the replay"
    online = reader.read([r.entity_id for r in recent])
    values = transform.transform(online.columns).values
    scores, tiers = cache.get_many(
        version, transform.version, values, np.array([r.entity_id for r in recent])
    )
    assert (tiers != HitTier.MISS).all(), "every replayed request is now a cache hit for the new golden"
    np.testing.assert_allclose(scores, booster.inplace_predict(values[:, columns]), atol=1e-6)
    cache.purge_all()
