"""Prediction cache, tier 1 only (no Redis): keys, versions, canonical rows, LRU bounds, TTL, purges."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rig.cache.store import HitTier, PredictionCache, PurgeResult, canonical_rows
from rig.cache.tiers import CacheMetrics
from rig.errors import CacheError

MODEL = "risk.1"
TRANSFORM = "0123456789abcdef"
N_FEATURES = 6


class FakeClock:
    """Wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


def entities(n: int, prefix: str = "e") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def cache(max_entries: int = 10_000, max_bytes: int = 10**8, **kwargs: object) -> PredictionCache:
    return PredictionCache(None, "rig:test:", 60.0, max_entries, max_bytes, **kwargs)  # type: ignore[arg-type]


def test_identical_rows_hit_tier_one_with_the_stored_scores() -> None:
    c = cache()
    x = rows(50)
    scores = np.linspace(0.0, 1.0, 50)

    first, first_tier = c.get_many(MODEL, TRANSFORM, x, entities(50))
    c.put_many(MODEL, TRANSFORM, x, entities(50), scores)
    again, tier = c.get_many(MODEL, TRANSFORM, x.copy(), entities(50))

    assert np.isnan(first).all() and (first_tier == HitTier.MISS).all()
    assert first.dtype == np.float64 and first_tier.dtype == np.int8
    np.testing.assert_array_equal(again, scores)
    assert (tier == HitTier.LRU).all()
    stats = c.stats()
    assert (stats.lru_hits, stats.redis_hits, stats.misses) == (50, 0, 50)
    assert stats.hit_ratio == 0.5


def test_partial_hits_leave_nan_exactly_where_rows_are_new() -> None:
    c = cache()
    known, new = rows(10, seed=1), rows(5, seed=2)
    c.put_many(MODEL, TRANSFORM, known, entities(10), np.arange(10.0))

    mixed = np.vstack([new[:2], known[3:6], new[2:]])
    scores, tier = c.get_many(MODEL, TRANSFORM, mixed, entities(len(mixed)))

    np.testing.assert_array_equal(tier, [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(scores[2:5], [3.0, 4.0, 5.0])
    assert np.isnan(scores[[0, 1, 5, 6, 7]]).all()


def test_new_model_version_or_transform_version_misses() -> None:
    c = cache()
    x = rows(20)
    c.put_many(MODEL, TRANSFORM, x, entities(20), np.ones(20))

    _, other_model = c.get_many("risk.2", TRANSFORM, x, entities(20))
    _, other_transform = c.get_many(MODEL, "fedcba9876543210", x, entities(20))
    _, same = c.get_many(MODEL, TRANSFORM, x, entities(20))

    assert (other_model == HitTier.MISS).all()
    assert (other_transform == HitTier.MISS).all()
    assert (same == HitTier.LRU).all()


def test_lru_keeps_at_most_max_entries_and_evicts_the_least_recently_used() -> None:
    c = cache(max_entries=10)
    x = rows(25)
    c.put_many(MODEL, TRANSFORM, x[:10], entities(10), np.arange(10.0))
    c.get_many(MODEL, TRANSFORM, x[:1], entities(1))  # row 0 becomes the most recently used
    c.put_many(MODEL, TRANSFORM, x[10:25], entities(15), np.arange(10.0, 25.0))

    stats = c.stats()
    assert stats.lru_entries == 10
    assert stats.evictions == 15
    _, tier = c.get_many(MODEL, TRANSFORM, x, entities(25))
    np.testing.assert_array_equal(np.flatnonzero(tier == HitTier.LRU), np.arange(15, 25))


def test_lru_keeps_at_most_max_bytes() -> None:
    probe = cache()
    probe.put_many(MODEL, TRANSFORM, rows(1), ["e0"], np.ones(1))
    entry_bytes = probe.stats().lru_bytes
    assert entry_bytes > 0

    c = cache(max_bytes=int(entry_bytes * 7.5))
    x = rows(40)
    for start in range(0, 40, 8):
        c.put_many(MODEL, TRANSFORM, x[start : start + 8], entities(8), np.ones(8))
        assert c.stats().lru_bytes <= entry_bytes * 7.5

    stats = c.stats()
    assert stats.lru_entries == 7
    assert stats.evictions == 33
    _, tier = c.get_many(MODEL, TRANSFORM, x, entities(40))
    np.testing.assert_array_equal(np.flatnonzero(tier == HitTier.LRU), np.arange(33, 40))


def test_zero_bounds_turn_tier_one_off() -> None:
    c = cache(max_entries=0)
    x = rows(3)
    c.put_many(MODEL, TRANSFORM, x, entities(3), np.ones(3))
    _, tier = c.get_many(MODEL, TRANSFORM, x, entities(3))
    assert (tier == HitTier.MISS).all()
    assert c.stats().lru_entries == 0 and c.stats().lru_bytes == 0


def test_negative_zero_and_every_nan_share_a_key() -> None:
    c = cache()
    stored = np.array([[0.0, np.nan, 1.5], [2.0, -1.0, np.nan]], dtype=np.float32)
    c.put_many(MODEL, TRANSFORM, stored, ["a", "b"], np.array([0.25, 0.75]))

    other_nans = np.array([0x7FC00001, 0xFFC00000, 0x7F800001], dtype=np.uint32).view(np.float32)
    assert np.isnan(other_nans).all()
    lookup = np.array(
        [[-0.0, other_nans[0], 1.5], [2.0, -1.0, other_nans[1]], [0.0, other_nans[2], 1.5]], dtype=np.float32
    )
    scores, tier = c.get_many(MODEL, TRANSFORM, lookup, ["a", "b", "c"])

    np.testing.assert_array_equal(scores, [0.25, 0.75, 0.25])
    assert (tier == HitTier.LRU).all()


def test_float64_rows_are_keyed_as_the_float32_the_model_sees() -> None:
    c = cache()
    x32 = rows(4)
    c.put_many(MODEL, TRANSFORM, x32.astype(np.float64), entities(4), np.arange(4.0))
    scores, tier = c.get_many(MODEL, TRANSFORM, np.asfortranarray(x32), entities(4))
    assert (tier == HitTier.LRU).all()
    np.testing.assert_array_equal(scores, np.arange(4.0))


def test_canonical_rows_returns_a_new_contiguous_float32_array() -> None:
    x = np.array([[-0.0, np.nan], [np.inf, -np.inf]], dtype=np.float64).T
    canonical = canonical_rows(x)
    assert canonical.dtype == np.float32 and canonical.flags.c_contiguous
    assert not np.signbit(canonical[0, 0])
    assert canonical[1, 0].view(np.uint32) == np.float32("nan").view(np.uint32)
    assert np.signbit(x[0, 0])  # the input is left alone
    with pytest.raises(CacheError):
        canonical_rows(np.zeros(3, dtype=np.float32))


def test_purge_entity_removes_exactly_that_entitys_entries() -> None:
    c = cache()
    x = rows(6)
    owners = ["alice", "bob", "alice", "carol", "bob", "alice"]
    c.put_many(MODEL, TRANSFORM, x, owners, np.arange(6.0))

    result = c.purge_entity("alice")

    assert result == PurgeResult(lru_removed=3, redis_removed=None)
    _, tier = c.get_many(MODEL, TRANSFORM, x, owners)
    np.testing.assert_array_equal(tier, [0, 1, 0, 1, 1, 0])
    assert c.purge_entity("alice") == PurgeResult(0, None)
    assert c.stats().lru_entries == 3


def test_integer_entity_ids_are_purged_by_their_string() -> None:
    c = cache()
    x = rows(2)
    c.put_many(MODEL, TRANSFORM, x, np.array([7, 8]), np.ones(2))
    assert c.purge_entity(7).lru_removed == 1
    assert c.purge_entity("8").lru_removed == 1


def test_an_entry_shared_by_two_entities_goes_with_either() -> None:
    c = cache()
    x = rows(1)
    c.put_many(MODEL, TRANSFORM, np.vstack([x, x]), ["alice", "bob"], np.array([0.5, 0.5]))
    assert c.stats().lru_entries == 1
    assert c.purge_entity("bob").lru_removed == 1
    assert c.purge_entity("alice").lru_removed == 0
    assert c.stats().lru_entries == 0


def test_keys_are_the_same_in_every_process() -> None:
    """Tier 2 is shared between workers, so a key must not depend on the process (e.g. hash seeds)."""
    script = (
        "import numpy as np; from rig.cache.store import PredictionCache; "
        "x = np.arange(12, dtype=np.float32).reshape(3, 4); "
        f"print(*PredictionCache(None, 'rig:test:', 60.0, 10, 10**6).keys({MODEL!r}, {TRANSFORM!r}, x))"
    )
    here = cache().keys(MODEL, TRANSFORM, np.arange(12, dtype=np.float32).reshape(3, 4))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.split() == here
    assert all(
        key.startswith("rig:test:p:risk.1:") and len(key) == len("rig:test:p:risk.1:") + 32 for key in here
    )
    assert len(set(here)) == 3


def test_purge_model_drops_one_version_even_when_another_version_extends_its_name() -> None:
    c = cache()
    x = rows(5)
    for version in ("risk:1", "risk:1:b", "risk*"):
        c.put_many(version, TRANSFORM, x, entities(5), np.ones(5))

    assert c.purge_model("risk:1") == PurgeResult(lru_removed=5, redis_removed=None)

    assert (c.get_many("risk:1", TRANSFORM, x, entities(5))[1] == HitTier.MISS).all()
    assert (c.get_many("risk:1:b", TRANSFORM, x, entities(5))[1] == HitTier.LRU).all()
    assert (c.get_many("risk*", TRANSFORM, x, entities(5))[1] == HitTier.LRU).all()


def test_purge_all_empties_tier_one() -> None:
    c = cache()
    c.put_many(MODEL, TRANSFORM, rows(8), entities(8), np.ones(8))
    assert c.purge_all() == PurgeResult(lru_removed=8, redis_removed=None)
    stats = c.stats()
    assert stats.lru_entries == 0 and stats.lru_bytes == 0
    assert c.purge_entity("e1").lru_removed == 0


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    c = cache(clock=clock)
    x = rows(3)
    c.put_many(MODEL, TRANSFORM, x, entities(3), np.ones(3))

    clock.now += 59.0
    assert (c.get_many(MODEL, TRANSFORM, x, entities(3))[1] == HitTier.LRU).all()
    clock.now += 2.0
    assert (c.get_many(MODEL, TRANSFORM, x, entities(3))[1] == HitTier.MISS).all()
    assert c.stats().lru_entries == 0


def test_a_new_put_refreshes_score_and_expiry() -> None:
    clock = FakeClock()
    c = cache(clock=clock)
    x = rows(1)
    c.put_many(MODEL, TRANSFORM, x, ["a"], np.array([0.1]))
    clock.now += 50.0
    c.put_many(MODEL, TRANSFORM, x, ["a"], np.array([0.2]))
    clock.now += 50.0
    scores, tier = c.get_many(MODEL, TRANSFORM, x, ["a"])
    assert tier[0] == HitTier.LRU and scores[0] == 0.2
    assert c.stats().lru_entries == 1


def test_non_finite_scores_are_not_stored() -> None:
    c = cache()
    x = rows(3)
    c.put_many(MODEL, TRANSFORM, x, entities(3), np.array([0.5, np.nan, np.inf]))
    _, tier = c.get_many(MODEL, TRANSFORM, x, entities(3))
    np.testing.assert_array_equal(tier, [1, 0, 0])


def test_mismatched_lengths_raise_cache_error() -> None:
    c = cache()
    x = rows(3)
    with pytest.raises(CacheError):
        c.get_many(MODEL, TRANSFORM, x, entities(2))
    with pytest.raises(CacheError):
        c.put_many(MODEL, TRANSFORM, x, entities(3), np.ones(4))
    with pytest.raises(CacheError):
        PredictionCache(None, "", 60.0, 10, 10_000)
    with pytest.raises(CacheError):
        PredictionCache(None, "rig:test:", 0.0, 10, 10_000)
    with pytest.raises(CacheError):
        PredictionCache("http://127.0.0.1:6379", "rig:test:", 60.0, 10, 10_000)
    with pytest.raises(CacheError):
        c.get_many(MODEL, TRANSFORM, x[0], ["e0"])


def test_empty_batches_are_fine() -> None:
    c = cache()
    empty = np.empty((0, N_FEATURES), dtype=np.float32)
    c.put_many(MODEL, TRANSFORM, empty, [], np.empty(0))
    scores, tier = c.get_many(MODEL, TRANSFORM, empty, [])
    assert scores.shape == (0,) and tier.shape == (0,)


def test_prometheus_counters_follow_lookups_and_evictions() -> None:
    metrics = CacheMetrics()
    c = cache(max_entries=2, metrics=metrics)
    x = rows(3)
    c.put_many(MODEL, TRANSFORM, x, entities(3), np.ones(3))
    c.get_many(MODEL, TRANSFORM, x, entities(3))

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("rig_cache_lookups_total", result="lru") == 2
    assert sample("rig_cache_lookups_total", result="miss") == 1
    assert sample("rig_cache_evictions_total") == 1
    assert sample("rig_cache_lru_entries") == 2
    assert sample("rig_cache_redis_up") == 0
    # A second cache with its own default registry does not clash with the first.
    assert cache().metrics.registry is not metrics.registry
