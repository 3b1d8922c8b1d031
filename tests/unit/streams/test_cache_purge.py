"""A purge_cache control event the cache's Redis tier cannot take is refused, so the control
follower tries it again (`rig.routing.control`), instead of counting as done with the entries left."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rig.cache.store import PredictionCache
from rig.config import RigSettings
from rig.errors import CacheUnavailable
from rig.routing.table import purge_cache_event
from streams.runtime import Runtime


def runtime_with(cache: PredictionCache, cache_redis: bool) -> Runtime:
    """What `purge_cache` reads of the worker's runtime: its cache and whether it has a Redis tier."""
    return SimpleNamespace(cache=cache, settings=RigSettings(cache_redis=cache_redis))  # type: ignore[return-value]


def test_a_purge_that_cannot_reach_redis_is_refused_for_a_retry() -> None:
    cache = PredictionCache("redis://127.0.0.1:1/0", "rig:test:", 60.0, 100, 10**6)
    cache.put_many("risk.1", "t", np.zeros((1, 2), dtype=np.float32), ["e1"], np.ones(1))
    try:
        with pytest.raises(CacheUnavailable, match="entity=e1"):
            Runtime.purge_cache(
                runtime_with(cache, cache_redis=True), purge_cache_event("test", entity_id="e1")
            )
        assert cache.stats().lru_entries == 0, "tier 1 was purged all the same (a retry purges it again)"
    finally:
        cache.close()


def test_a_purge_of_a_cache_without_a_redis_tier_is_done_in_memory() -> None:
    cache = PredictionCache(None, "rig:test:", 60.0, 100, 10**6)
    cache.put_many("risk.1", "t", np.zeros((1, 2), dtype=np.float32), ["e1"], np.ones(1))
    Runtime.purge_cache(runtime_with(cache, cache_redis=False), purge_cache_event("test", entity_id="e1"))
    assert cache.stats().lru_entries == 0
    cache.close()
