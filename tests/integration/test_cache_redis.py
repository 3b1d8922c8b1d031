"""Prediction cache against a real Redis: tier-2 hits across instances, purges, TTL, and Redis outages.

Each test writes under its own namespace and deletes only its own keys (never FLUSHALL). The outage
test starts, kills and restarts a private `redis-server` on a free port; the shared Redis is never
stopped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import redis

from rig.cache.store import HitTier, PredictionCache
from rig.config import RigSettings
from tests.integration.conftest import require_redis
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

MODEL = "risk.1"
TRANSFORM = "0123456789abcdef"
TTL_S = 120.0

CacheFactory = Callable[..., PredictionCache]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def entities(n: int) -> list[str]:
    return [f"e{i}" for i in range(n)]


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = RigSettings().redis_url
    require_redis(url)
    return url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test alone; its keys are deleted afterwards (and only its keys)."""
    ns = f"rig:test:cache:{uuid.uuid4().hex[:12]}:"
    yield ns
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=ns + "*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_cache(redis_url: str, namespace: str) -> Iterator[CacheFactory]:
    """Caches on the shared Redis under the test's namespace, each with a fresh tier 1; closed afterwards."""
    made: list[PredictionCache] = []

    def make(**overrides: object) -> PredictionCache:
        settings: dict[str, object] = {
            "redis_url": redis_url,
            "namespace": namespace,
            "ttl_s": TTL_S,
            "max_entries": 100_000,
            "max_bytes": 10**8,
            "timeout_s": 0.5,  # generous on a busy CI machine; the outage tests use the default
        }
        settings.update(overrides)
        made.append(PredictionCache(**settings))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for cache in made:
        cache.close()


def keys_under(client: redis.Redis, pattern: str) -> set[bytes]:
    return set(client.scan_iter(match=pattern, count=1000))


def test_a_second_instance_gets_tier_two_hits_and_then_tier_one_hits(make_cache: CacheFactory) -> None:
    writer, reader = make_cache(), make_cache()
    x = rows(300)
    scores = np.random.default_rng(1).random(300)
    writer.put_many(MODEL, TRANSFORM, x, entities(300), scores)

    first, first_tier = reader.get_many(MODEL, TRANSFORM, x, entities(300))
    second, second_tier = reader.get_many(MODEL, TRANSFORM, x, entities(300))

    np.testing.assert_array_equal(first, scores)
    assert (first_tier == HitTier.REDIS).all()
    np.testing.assert_array_equal(second, scores)
    assert (second_tier == HitTier.LRU).all()
    stats = reader.stats()
    assert (stats.lru_hits, stats.redis_hits, stats.misses, stats.bypasses, stats.errors) == (
        300,
        300,
        0,
        0,
        0,
    )
    assert reader.metrics.registry.get_sample_value("rig_cache_lookups_total", {"result": "redis"}) == 300
    assert writer.stats().bypasses == 0 and writer.stats().errors == 0


def test_batches_larger_than_one_redis_call_round_trip(
    make_cache: CacheFactory, raw: redis.Redis, namespace: str
) -> None:
    writer, reader = make_cache(), make_cache()
    x = rows(2_500, seed=5)
    owners = [f"e{i % 700}" for i in range(2_500)]
    scores = np.random.default_rng(6).random(2_500)
    writer.put_many(MODEL, TRANSFORM, x, owners, scores)

    got, tier = reader.get_many(MODEL, TRANSFORM, x, owners)

    np.testing.assert_array_equal(got, scores)
    assert (tier == HitTier.REDIS).all()
    assert raw.scard(f"{namespace}e:e3") == 4  # rows 3, 703, 1403, 2103 (across two write calls)
    assert writer.purge_entity("e3").redis_removed == 4


def test_new_model_or_transform_version_misses_in_both_tiers(make_cache: CacheFactory) -> None:
    writer, reader = make_cache(), make_cache()
    x = rows(20)
    writer.put_many(MODEL, TRANSFORM, x, entities(20), np.ones(20))

    _, other_model = reader.get_many("risk.2", TRANSFORM, x, entities(20))
    _, other_transform = reader.get_many(MODEL, "fedcba9876543210", x, entities(20))

    assert (other_model == HitTier.MISS).all()
    assert (other_transform == HitTier.MISS).all()
    assert reader.stats().misses == 40


def test_purge_entity_removes_exactly_that_entitys_entries_in_both_tiers(
    make_cache: CacheFactory, raw: redis.Redis, namespace: str
) -> None:
    cache = make_cache()
    x = rows(9)
    owners = ["alice", "bob", "carol"] * 3
    cache.put_many(MODEL, TRANSFORM, x, owners, np.arange(9.0))
    assert raw.scard(f"{namespace}e:alice") == 3

    result = cache.purge_entity("alice")

    assert (result.lru_removed, result.redis_removed) == (3, 3)
    alice = np.array([owner == "alice" for owner in owners])
    _, tier = cache.get_many(MODEL, TRANSFORM, x, owners)
    np.testing.assert_array_equal(tier, np.where(alice, HitTier.MISS, HitTier.LRU))
    _, fresh_tier = make_cache().get_many(MODEL, TRANSFORM, x, owners)
    np.testing.assert_array_equal(fresh_tier, np.where(alice, HitTier.MISS, HitTier.REDIS))
    assert not raw.exists(f"{namespace}e:alice")
    assert raw.scard(f"{namespace}e:bob") == 3
    assert len(keys_under(raw, f"{namespace}p:*")) == 6


def test_purge_model_drops_that_version_only(
    make_cache: CacheFactory, raw: redis.Redis, namespace: str
) -> None:
    cache = make_cache()
    x = rows(30)
    for version in ("risk.1", "risk.10", "risk:1"):
        cache.put_many(version, TRANSFORM, x, entities(30), np.full(30, 0.5))

    result = cache.purge_model("risk.1")

    assert (result.lru_removed, result.redis_removed) == (30, 30)
    reader = make_cache()
    assert (reader.get_many("risk.1", TRANSFORM, x, entities(30))[1] == HitTier.MISS).all()
    assert (reader.get_many("risk.10", TRANSFORM, x, entities(30))[1] == HitTier.REDIS).all()
    assert (reader.get_many("risk:1", TRANSFORM, x, entities(30))[1] == HitTier.REDIS).all()
    assert (cache.get_many("risk.1", TRANSFORM, x, entities(30))[1] == HitTier.MISS).all()
    assert len(keys_under(raw, f"{namespace}p:*")) == 60


def test_purge_all_removes_the_namespace_and_nothing_else(
    make_cache: CacheFactory, raw: redis.Redis, namespace: str
) -> None:
    bystander = f"rig:test:bystander:{uuid.uuid4().hex[:12]}"
    raw.set(bystander, b"keep", ex=60)
    try:
        cache = make_cache()
        cache.put_many(MODEL, TRANSFORM, rows(10), entities(10), np.ones(10))

        result = cache.purge_all()

        assert result.lru_removed == 10
        assert result.redis_removed == 20  # 10 entries and 10 entity index sets
        assert keys_under(raw, namespace + "*") == set()
        assert raw.get(bystander) == b"keep"
    finally:
        raw.delete(bystander)


def test_entries_and_entity_indexes_carry_the_ttl(
    make_cache: CacheFactory, raw: redis.Redis, namespace: str
) -> None:
    cache = make_cache(ttl_s=30.0)
    x = rows(5)
    cache.put_many(MODEL, TRANSFORM, x, entities(5), np.ones(5))

    written = keys_under(raw, namespace + "*")
    expected = {key.encode() for key in cache.keys(MODEL, TRANSFORM, x)}
    expected |= {f"{namespace}e:{entity}".encode() for entity in entities(5)}
    assert written == expected
    for key in written:
        assert 25_000 < cast(int, raw.pttl(key)) <= 30_000, key  # a sync client's reply, not an Awaitable


def test_a_tier_two_value_past_its_expiry_is_a_miss(make_cache: CacheFactory) -> None:
    writer = make_cache(ttl_s=30.0)
    x = rows(4)
    writer.put_many(MODEL, TRANSFORM, x, entities(4), np.ones(4))
    late_reader = make_cache(clock=lambda: time.time() + 31.0)  # its clock is past the written expiry
    assert (late_reader.get_many(MODEL, TRANSFORM, x, entities(4))[1] == HitTier.MISS).all()


def test_a_malformed_redis_value_is_a_miss_and_an_error(make_cache: CacheFactory, raw: redis.Redis) -> None:
    writer, reader = make_cache(), make_cache()
    x = rows(3)
    writer.put_many(MODEL, TRANSFORM, x, entities(3), np.array([0.1, 0.2, 0.3]))
    raw.set(writer.keys(MODEL, TRANSFORM, x)[1], b"not a score", ex=60)

    scores, tier = reader.get_many(MODEL, TRANSFORM, x, entities(3))

    np.testing.assert_array_equal(tier, [HitTier.REDIS, HitTier.MISS, HitTier.REDIS])
    assert scores[0] == 0.1 and np.isnan(scores[1]) and scores[2] == 0.3
    assert reader.stats().errors == 1 and reader.stats().bypasses == 0


def test_redis_unreachable_means_bypass_without_errors_raised(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PredictionCache("redis://127.0.0.1:1/0", namespace, TTL_S, 1000, 10**7, backoff_s=0.0)
    x = rows(50)
    caplog.set_level(logging.DEBUG, logger="rig.cache.tiers")

    started = time.perf_counter()
    for _ in range(5):
        scores, tier = cache.get_many(MODEL, TRANSFORM, x, entities(50))
        assert np.isnan(scores).all() and (tier == HitTier.MISS).all()
        cache.put_many("risk.2", TRANSFORM, x, entities(50), np.ones(50))
    elapsed = time.perf_counter() - started

    stats = cache.stats()
    assert stats.bypasses == 10 and stats.errors == 10
    assert stats.lru_entries == 50  # tier 1 still works
    assert (cache.get_many("risk.2", TRANSFORM, x, entities(50))[1] == HitTier.LRU).all()
    assert cache.purge_entity("e1").redis_removed is None
    assert cache.metrics.registry.get_sample_value("rig_cache_bypasses_total", {"op": "get"}) == 5
    assert cache.metrics.registry.get_sample_value("rig_cache_redis_up") == 0
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "cache_redis_unavailable" in r.message
    ]
    assert len(warnings) == 1, "one warning per outage, not one per batch"
    assert elapsed < 2.0
    cache.close()


def test_back_off_skips_redis_without_trying_it(namespace: str) -> None:
    cache = PredictionCache("redis://127.0.0.1:1/0", namespace, TTL_S, 1000, 10**7, backoff_s=60.0)
    x = rows(10)
    for _ in range(4):
        cache.get_many(MODEL, TRANSFORM, x, entities(10))
    stats = cache.stats()
    assert stats.errors == 1, "only the first call reached for Redis; the rest fell in the back-off"
    assert stats.bypasses == 4
    cache.close()


class PrivateRedis:
    """A redis-server of the test alone, on a free port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; ops/redis/up installs it")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    pytest.fail(f"private redis-server on port {self.port} did not start")
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def test_redis_dying_mid_stream_means_bypass_and_it_comes_back_after_the_back_off(
    private_redis: PrivateRedis,
) -> None:
    backoff_s = 1.0
    settings = {"namespace": "rig:test:outage:", "ttl_s": TTL_S, "max_entries": 100_000, "max_bytes": 10**8}
    worker = PredictionCache(private_redis.url, backoff_s=backoff_s, **settings)  # type: ignore[arg-type]
    batches = [rows(200, seed=seed) for seed in range(6)]
    scores = [np.random.default_rng(100 + i).random(200) for i in range(6)]

    # Healthy: another instance sees the worker's writes in tier 2.
    worker.put_many(MODEL, TRANSFORM, batches[0], entities(200), scores[0])
    before = PredictionCache(private_redis.url, **settings)  # type: ignore[arg-type]
    assert (before.get_many(MODEL, TRANSFORM, batches[0], entities(200))[1] == HitTier.REDIS).all()

    private_redis.kill()

    # Down: the stream goes on; new rows miss, tier 1 still answers, nothing raises or stalls.
    for i in (1, 2, 3):
        started = time.perf_counter()
        got, tier = worker.get_many(MODEL, TRANSFORM, batches[i], entities(200))
        assert np.isnan(got).all() and (tier == HitTier.MISS).all()
        worker.put_many(MODEL, TRANSFORM, batches[i], entities(200), scores[i])
        assert time.perf_counter() - started < 1.0
    got, tier = worker.get_many(MODEL, TRANSFORM, batches[0], entities(200))
    np.testing.assert_array_equal(got, scores[0])
    assert (tier == HitTier.LRU).all()
    cold = PredictionCache(private_redis.url, backoff_s=backoff_s, **settings)  # type: ignore[arg-type]
    got, tier = cold.get_many(MODEL, TRANSFORM, batches[0], entities(200))
    assert np.isnan(got).all() and (tier == HitTier.MISS).all()
    down = worker.stats()
    assert down.bypasses >= 6 and down.errors >= 1
    assert worker.metrics.registry.get_sample_value("rig_cache_redis_up") == 0

    private_redis.start()  # same port, empty (no persistence)
    time.sleep(backoff_s + 0.2)

    # Back: the worker writes to Redis again and a fresh instance reads it from tier 2.
    worker.put_many(MODEL, TRANSFORM, batches[4], entities(200), scores[4])
    after = PredictionCache(private_redis.url, **settings)  # type: ignore[arg-type]
    got, tier = after.get_many(MODEL, TRANSFORM, batches[4], entities(200))
    np.testing.assert_array_equal(got, scores[4])
    assert (tier == HitTier.REDIS).all()
    assert worker.stats().bypasses == down.bypasses
    assert worker.metrics.registry.get_sample_value("rig_cache_redis_up") == 1
    for cache in (worker, before, cold, after):
        cache.close()
