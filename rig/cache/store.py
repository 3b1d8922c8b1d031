"""Two-tier prediction cache in front of the backbone: an in-process LRU, then Redis.

Keys. A row's key is `<namespace>p:<model version>:<digest>`; the digest is a 128-bit BLAKE2b of
(model version, transform version, canonical float32 feature row). A promotion or a transform change
changes every digest, so old entries are simply never asked for again and age out by TTL. The model
version is also written in clear (percent-quoted: no `:` and no glob character) so that one version's
keys share a prefix, which `purge_model` finds with SCAN MATCH.

Entities. A key does not name an entity (two entities with equal feature rows share an entry). Each
put adds its keys to the Redis set `<namespace>e:<entity id>` (same TTL, refreshed), and tier 1 keeps
the same index in memory, so `purge_entity` unlinks exactly that entity's keys without a scan.

Values. Redis holds 16 bytes per key, the score and its absolute expiry time (little-endian float64),
so a tier-2 hit copied into tier 1 keeps the expiry it was written with; tier 1 honours the TTL too.

The tiers themselves, and what happens while Redis is down, are in `rig.cache.tiers`.

The cache is synchronous and thread-safe; a batch costs one MGET or one script call. From an event loop,
call it in a worker thread when that round trip matters.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import numpy as np

from rig.cache.tiers import CacheMetrics, LruTier, RedisTier
from rig.errors import CacheError

log = logging.getLogger(__name__)

KEY_FORMAT = b"rig-cache/1"
"""Hashed into every digest: changing the key or value layout changes the whole key space."""

_VALUE = np.dtype([("score", "<f8"), ("expires_at", "<f8")])
_GLOB_ESCAPES = str.maketrans({c: "\\" + c for c in "*?[]\\"})

EntityIds = Sequence[Any] | np.ndarray
"""The entity of each row of a batch: a list, or the array the serving path holds them in
(`rig.serving.cached_scores`)."""


class HitTier(IntEnum):
    """Where `get_many` found each row (the values of its `hit_tier` array)."""

    MISS = 0
    LRU = 1
    REDIS = 2


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created: hits and misses count rows; bypasses and errors count calls."""

    lru_hits: int
    redis_hits: int
    misses: int
    bypasses: int  # get_many/put_many calls that skipped Redis (unavailable, or in back-off)
    errors: int  # failed Redis operations (refused, timeout, malformed value, ...)
    evictions: int  # tier-1 entries dropped by the entry/byte bounds (expired ones not included)
    lru_entries: int
    lru_bytes: int

    @property
    def hit_ratio(self) -> float:
        """Share of looked-up rows answered by either tier (0.0 before any lookup)."""
        looked_up = self.lru_hits + self.redis_hits + self.misses
        return (self.lru_hits + self.redis_hits) / looked_up if looked_up else 0.0


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Entries a purge removed; `redis_removed` is None without tier 2 or when Redis was unreachable."""

    lru_removed: int
    redis_removed: int | None


def canonical_rows(rows: np.ndarray) -> np.ndarray:
    """Rows as the cache keys them: a new C-contiguous float32 array, -0.0 as 0.0, one NaN bit pattern.

    XGBoost predicts on float32, so float64 input is rounded first: rows equal for the model are
    equal for the cache.

    Raises:
        CacheError: `rows` is not a 2-D numeric array.
    """
    try:
        values = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"feature rows must be numeric: {exc}") from exc
    if values.ndim != 2:
        raise CacheError(f"feature rows must be 2-D (rows x features), got shape {values.shape}")
    with np.errstate(invalid="ignore"):  # signalling NaNs are quietened below anyway
        canonical = np.ascontiguousarray(values + np.float32(0.0))  # -0.0 + 0.0 is +0.0
    nan = np.isnan(canonical)
    if nan.any():
        canonical[nan] = np.float32("nan")
    return canonical


class PredictionCache:
    """Scores by (model version, transform version, feature row): tier 1 in process, tier 2 in Redis.

    Args:
        redis_url: Redis of tier 2 (e.g. `redis://127.0.0.1:6379/0`), or None for tier 1 only.
        namespace: prefix of every Redis key of the cache, e.g. `rig:cache:`. It must belong to the
            cache alone: `purge_all` unlinks every key under it.
        ttl_s: lifetime of an entry, in both tiers.
        max_entries: tier-1 bound on entries (0 turns tier 1 off).
        max_bytes: tier-1 bound on approximate bytes (key, value and bookkeeping).
        timeout_s: Redis connect and operation timeout.
        backoff_s: after a Redis failure, Redis is skipped for this long, then tried again.
        metrics: Prometheus metrics to update (on a private registry by default).
        clock: wall-clock seconds; expiry times are absolute so that processes can share them.

    Raises:
        CacheError: the namespace is empty, or a bound, the TTL or a timeout is out of range.
    """

    def __init__(
        self,
        redis_url: str | None,
        namespace: str,
        ttl_s: float,
        max_entries: int,
        max_bytes: int,
        *,
        timeout_s: float = 0.05,
        backoff_s: float = 5.0,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace:
            raise CacheError("the cache namespace must not be empty: purge_all unlinks every key under it")
        if not (ttl_s > 0 and timeout_s > 0 and backoff_s >= 0 and max_entries >= 0 and max_bytes >= 0):
            raise CacheError(
                f"need ttl_s > 0, timeout_s > 0 and backoff_s, max_entries, max_bytes >= 0; got {ttl_s=} "
                f"{timeout_s=} {backoff_s=} {max_entries=} {max_bytes=}"
            )
        self.namespace = namespace
        self.ttl_s = float(ttl_s)
        self.metrics = metrics if metrics is not None else CacheMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._lru = LruTier(max_entries, max_bytes)
        self._redis = (
            None
            if redis_url is None
            else RedisTier(redis_url, namespace, timeout_s, backoff_s, self.metrics, clock)
        )
        self._hashers: dict[tuple[str, str], tuple[str, Any]] = {}
        self._lru_hits = self._redis_hits = self._misses = 0
        self.metrics.redis_up.set(0 if self._redis is None else 1)

    def get_many(
        self, version: str, transform_version: str, rows: np.ndarray, entity_ids: EntityIds
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cached scores of a batch: tier 1 first, then one MGET for the rows tier 1 missed.

        Args:
            version: model version the scores are for.
            transform_version: version of the transform that produced `rows`.
            rows: transformed features, one row per request (n x features).
            entity_ids: entity of each row (a tier-2 hit is indexed under it in tier 1).

        Returns:
            (scores, hit_tier): float64 scores with NaN for misses, and int8 `HitTier` values.

        Raises:
            CacheError: `rows` is not 2-D numeric, or `entity_ids` has another length. Never for Redis.
        """
        keys = self.keys(version, transform_version, rows)
        if len(entity_ids) != len(keys):
            raise CacheError(f"{len(entity_ids)} entity ids for {len(keys)} rows")
        now = self._clock()
        with self._lock:
            scores = np.array(self._lru.get_many(keys, now), dtype=np.float64)  # None becomes NaN
        hit_tier = np.where(np.isnan(scores), HitTier.MISS, HitTier.LRU).astype(np.int8)
        lru_hits = int(np.count_nonzero(hit_tier))
        missing = np.flatnonzero(hit_tier == HitTier.MISS)
        redis_hits = 0
        if missing.size and self._redis is not None:
            redis_hits = self._read_redis(self._redis, keys, entity_ids, missing, now, scores, hit_tier)
        misses = len(keys) - lru_hits - redis_hits
        with self._lock:
            self._lru_hits += lru_hits
            self._redis_hits += redis_hits
            self._misses += misses
        for result, count in (("lru", lru_hits), ("redis", redis_hits), ("miss", misses)):
            self.metrics.lookups.labels(result).inc(count)
        self._update_gauges(0)
        return scores, hit_tier

    def put_many(
        self,
        version: str,
        transform_version: str,
        rows: np.ndarray,
        entity_ids: EntityIds,
        scores: np.ndarray,
    ) -> None:
        """Store a batch's scores in both tiers (one Redis script call). NaN/inf scores are not stored.

        Raises:
            CacheError: rows, entity ids and scores disagree in length. Never for Redis.
        """
        keys = self.keys(version, transform_version, rows)
        entities = _entity_strings(entity_ids, len(keys))
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(keys):
            raise CacheError(f"{values.shape[0]} scores for {len(keys)} rows")
        keep = np.isfinite(values)
        if not keep.all():
            kept = np.flatnonzero(keep)
            keys, entities, values = [keys[i] for i in kept], [entities[i] for i in kept], values[kept]
        if not keys:
            return
        expires_at = self._clock() + self.ttl_s
        evicted = 0
        if self._lru.enabled:
            with self._lock:
                evicted = self._lru.put_many(keys, values.tolist(), [expires_at] * len(keys), entities)
        if self._redis is not None:
            packed = np.empty(len(keys), dtype=_VALUE)
            packed["score"], packed["expires_at"] = values, expires_at
            payload = list(_pieces(packed.tobytes(), _VALUE.itemsize))
            self._redis.put_many(keys, payload, entities, max(1, round(self.ttl_s * 1000)))
        self._update_gauges(evicted)

    def purge_all(self) -> PurgeResult:
        """Drop every entry: all of tier 1, and every Redis key under the namespace (SCAN + UNLINK)."""
        with self._lock:
            lru_removed = self._lru.clear()
        return self._purged("all", lru_removed, self.namespace)

    def purge_model(self, version: str) -> PurgeResult:
        """Drop every entry of one model version (all transform versions), in both tiers.

        Redis: SCAN MATCH `<namespace>p:<version>:*` + UNLINK, idempotent, so every worker may run it on
        the same purge_cache control event. SCAN walks the whole Redis database: meant for rare operator
        actions (a promotion needs no purge, since it changes the key space).
        """
        prefix = self._model_prefix(version)
        with self._lock:
            lru_removed = self._lru.purge_prefix(prefix)
        return self._purged(f"model model_version={version}", lru_removed, prefix)

    def purge_entity(self, entity_id: Any) -> PurgeResult:
        """Drop the entries written for one entity, e.g. when its features are pushed or materialized.

        Keys follow the features, so new features already mean new keys: this frees the old entries
        at once and serves deletion requests. An entry shared with another entity goes too.
        """
        entity = str(entity_id)
        with self._lock:
            lru_removed = self._lru.purge_entity(entity)
        self._update_gauges(0)
        return PurgeResult(lru_removed, None if self._redis is None else self._redis.purge_entity(entity))

    def stats(self) -> CacheStats:
        """Counters since creation, and tier 1's current size."""
        with self._lock:
            return CacheStats(
                lru_hits=self._lru_hits,
                redis_hits=self._redis_hits,
                misses=self._misses,
                bypasses=0 if self._redis is None else self._redis.bypasses,
                errors=0 if self._redis is None else self._redis.errors,
                evictions=self._lru.evictions,
                lru_entries=len(self._lru),
                lru_bytes=self._lru.bytes,
            )

    def keys(self, version: str, transform_version: str, rows: np.ndarray) -> list[str]:
        """The Redis key of each row: `<namespace>p:<quoted version>:<hex BLAKE2b-128>`.

        The digest covers the key format, both versions and the canonical row (`canonical_rows`).

        Raises:
            CacheError: `rows` is not a 2-D numeric array.
        """
        canonical = canonical_rows(rows)
        found = self._hashers.get((version, transform_version))
        if found is None:
            if len(self._hashers) >= 64:  # only a few (model, transform) pairs are live at a time
                self._hashers.clear()
            tag = b"\0".join(
                (KEY_FORMAT, str(len(version)).encode(), version.encode(), transform_version.encode())
            )
            # A hasher that has absorbed the version pair; each row copies it (cheaper than a new one).
            seeded = hashlib.blake2b(hashlib.blake2b(tag, digest_size=32).digest(), digest_size=16)
            found = self._hashers[(version, transform_version)] = (self._model_prefix(version), seeded)
        prefix, seeded = found
        keys = []
        for piece in _pieces(canonical.tobytes(), canonical.shape[1] * 4, canonical.shape[0]):
            hasher = seeded.copy()
            hasher.update(piece)
            keys.append(prefix + hasher.hexdigest())
        return keys

    def _model_prefix(self, version: str) -> str:
        return f"{self.namespace}p:{quote(version, safe='')}:"

    def close(self) -> None:
        """Close the Redis connections; tier 1 stays usable."""
        if self._redis is not None:
            self._redis.close()

    def _read_redis(
        self,
        tier: RedisTier,
        keys: list[str],
        entity_ids: EntityIds,
        missing: np.ndarray,
        now: float,
        scores: np.ndarray,
        hit_tier: np.ndarray,
    ) -> int:
        """Fill `scores` and `hit_tier` of the `missing` rows from Redis; returns the tier-2 hits."""
        found = tier.mget([keys[i] for i in missing])
        if found is None:
            return 0
        good = [
            (j, value) for j, value in enumerate(found) if value is not None and len(value) == _VALUE.itemsize
        ]
        malformed = sum(value is not None for value in found) - len(good)
        if malformed:
            tier.count_errors("decode", malformed)
            log.warning("cache_malformed_values namespace=%s count=%d action=miss", self.namespace, malformed)
        decoded = np.frombuffer(b"".join(value for _, value in good), dtype=_VALUE)
        fresh = decoded["expires_at"] > now
        rows = missing[np.array([j for j, _ in good], dtype=np.intp)[fresh]]
        scores[rows] = decoded["score"][fresh]
        hit_tier[rows] = HitTier.REDIS
        if not self._lru.enabled:
            return int(rows.size)
        with self._lock:
            evicted = self._lru.put_many(
                [keys[i] for i in rows],
                scores[rows].tolist(),
                decoded["expires_at"][fresh].tolist(),
                [str(entity_ids[i]) for i in rows],
            )
        self.metrics.evictions.inc(evicted)
        return int(rows.size)

    def _purged(self, scope: str, lru_removed: int, prefix: str) -> PurgeResult:
        """Finish a purge of everything under `prefix`: Redis, gauges and one log line."""
        redis_removed = None
        if self._redis is not None:
            redis_removed = self._redis.purge_matching(prefix.translate(_GLOB_ESCAPES) + "*")
        self._update_gauges(0)
        log.info(
            "cache_purged namespace=%s scope=%s lru=%d redis=%s",
            self.namespace,
            scope,
            lru_removed,
            redis_removed,
        )
        return PurgeResult(lru_removed, redis_removed)

    def _update_gauges(self, evicted: int) -> None:
        if evicted:
            self.metrics.evictions.inc(evicted)
        self.metrics.lru_entries.set(len(self._lru))
        self.metrics.lru_bytes.set(self._lru.bytes)


def _entity_strings(entity_ids: EntityIds, n_rows: int) -> list[str]:
    if len(entity_ids) != n_rows:
        raise CacheError(f"{len(entity_ids)} entity ids for {n_rows} rows")
    return [e if isinstance(e, str) else str(e) for e in entity_ids]


def _pieces(raw: bytes, width: int, count: int | None = None) -> Iterator[bytes]:
    """`raw` cut into consecutive `width`-byte pieces (`count` of them, for width 0)."""
    if width == 0:
        return iter([b""] * (count or 0))
    return map(raw.__getitem__, map(slice, range(0, len(raw), width), range(width, len(raw) + width, width)))
