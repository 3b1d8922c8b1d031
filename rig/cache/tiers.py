"""Storage tiers of the prediction cache: tier 1, an in-process LRU, and tier 2, Redis.

Only storage lives here: `rig.cache.store.PredictionCache` makes the keys and values, takes the locks tier 1
needs and counts the hits.

Redis down. Any Redis error turns tier 2 off for `backoff_s` (one warning per outage, one info line on
recovery); lookups and writes carry on with tier 1 and count a bypass. Timeouts are short (50 ms by
default) and redis-py retries once, at once, on a new connection (a pooled connection may have been
cut by a Redis restart), so an outage costs at most two short timeouts per back-off period. What the
cache sends is idempotent (MGET, the write script of SET/SADD/PEXPIRE, UNLINK), so a retry is harmless.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.backoff import NoBackoff
from redis.retry import Retry

from rig.errors import CacheError

log = logging.getLogger(__name__)

_SCAN_COUNT = 1000
_CHUNK = 1000  # keys per MGET, rows per write script, keys per UNLINK: each call stays ~1-3 ms in Redis
# One call writes a batch: redis-py spends several µs packing each pipelined command, and a pipeline
# of SET PX + SADD + PEXPIRE per row cost ~6x this script (bench/bench_cache.py measures both).
# KEYS: n entry keys, then one index set per entity. ARGV: TTL in ms, n, n values, n owner positions.
_PUT_SCRIPT = """
local ttl, n = ARGV[1], tonumber(ARGV[2])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 + i], 'PX', ttl)
  redis.call('SADD', KEYS[n + tonumber(ARGV[2 + n + i])], KEYS[i])
end
for j = n + 1, #KEYS do
  redis.call('PEXPIRE', KEYS[j], ttl)
end
return n
"""
# Approximate bytes of a tier-1 entry besides its key and owners: the value tuple, two floats, the
# OrderedDict link and hash slot. It only has to make `max_bytes` a fair bound, not an exact one.
_ENTRY_OVERHEAD = sys.getsizeof((0.0, 0.0, (), 0)) + 2 * sys.getsizeof(0.0) + 100
_Entry = tuple[float, float, tuple[str, ...], int]  # score, expires_at, owning entities, bytes


class CacheMetrics:
    """Prometheus metrics of the cache, in `registry` (a fresh one by default, so tests never clash).

    The worker passes `prometheus_client.REGISTRY` so they appear on its /metrics page.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lookups = Counter(
            "rig_cache_lookups", "Rows looked up, by result: lru, redis, miss.", ["result"], registry=r
        )
        self.bypasses = Counter(
            "rig_cache_bypasses", "Calls that skipped Redis (down or back-off).", ["op"], registry=r
        )
        self.errors = Counter("rig_cache_redis_errors", "Failed Redis operations.", ["op"], registry=r)
        self.evictions = Counter("rig_cache_evictions", "Tier-1 entries evicted by its bounds.", registry=r)
        self.lru_entries = Gauge("rig_cache_lru_entries", "Entries in tier 1.", registry=r)
        self.lru_bytes = Gauge("rig_cache_lru_bytes", "Approximate bytes held by tier 1.", registry=r)
        self.redis_up = Gauge(
            "rig_cache_redis_up", "1 while Redis is in use, 0 during an outage.", registry=r
        )


class LruTier:
    """Tier 1: key -> (score, expires_at, owners, bytes), bounded by entries and bytes; entity index.

    Not thread-safe by itself: `PredictionCache` holds its lock around every call.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.bytes = 0
        self.evictions = 0
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._by_entity: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._data)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def get_many(self, keys: Sequence[str], now: float) -> list[float | None]:
        data = self._data
        out: list[float | None] = []
        for key in keys:
            entry = data.get(key)
            if entry is not None and entry[1] > now:
                data.move_to_end(key)
                out.append(entry[0])
            else:
                if entry is not None:
                    self._remove(key)
                out.append(None)
        return out

    def put_many(
        self, keys: Sequence[str], scores: Sequence[float], expires: Sequence[float], entities: Sequence[str]
    ) -> int:
        """Insert or refresh entries, then evict the least recently used; returns the evictions."""
        data, by_entity, added = self._data, self._by_entity, 0
        for key, score, expires_at, entity in zip(keys, scores, expires, entities, strict=True):
            old = data.pop(key, None)
            if old is None:
                owners: tuple[str, ...] = (entity,)
                size = sys.getsizeof(key) + _ENTRY_OVERHEAD + 8
            elif entity in old[2]:
                owners, size = old[2], old[3]
            else:
                owners, size = (*old[2], entity), old[3] + 8
            if old is not None:
                added -= old[3]
            data[key] = (score, expires_at, owners, size)
            added += size
            keys_of = by_entity.get(entity)
            if keys_of is None:
                by_entity[entity] = {key}
            else:
                keys_of.add(key)
        self.bytes += added
        evicted = 0
        while data and (len(data) > self.max_entries or self.bytes > self.max_bytes):
            self._forget(*data.popitem(last=False))
            evicted += 1
        self.evictions += evicted
        return evicted

    def purge_entity(self, entity: str) -> int:
        keys = list(self._by_entity.get(entity, ()))
        for key in keys:
            self._remove(key)
        return len(keys)

    def purge_prefix(self, prefix: str) -> int:
        keys = [key for key in self._data if key.startswith(prefix)]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> int:
        removed = len(self._data)
        self._data.clear()
        self._by_entity.clear()
        self.bytes = 0
        return removed

    def _remove(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._forget(key, entry)

    def _forget(self, key: str, entry: _Entry) -> None:
        self.bytes -= entry[3]
        for owner in entry[2]:
            keys = self._by_entity.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_entity[owner]


class RedisTier:
    """Tier 2 and its availability: methods return None (and count) instead of raising on Redis errors."""

    def __init__(
        self,
        url: str,
        namespace: str,
        timeout_s: float,
        backoff_s: float,
        metrics: CacheMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.namespace, self.backoff_s = namespace, backoff_s
        self.errors = self.bypasses = 0
        self._metrics, self._clock = metrics, clock
        try:
            self._client = redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
            )
        except ValueError as exc:
            raise CacheError(f"invalid Redis URL for the cache: {exc}") from exc
        kwargs = self._client.connection_pool.connection_kwargs  # for logs: no password
        self._where = (
            f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"
        )
        self._put_script = self._client.register_script(_PUT_SCRIPT)
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._down_since: float | None = None

    def mget(self, keys: list[str]) -> list[bytes | None] | None:
        """Values of `keys`, or None when Redis is skipped (a bypass). One MGET per 1,000 keys."""

        def read() -> list[bytes | None]:
            if len(keys) <= _CHUNK:
                return cast("list[bytes | None]", self._client.mget(keys))
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.mget(keys[start : start + _CHUNK])
            return [value for chunk in pipe.execute() for value in chunk]

        return self._bypassable("get", read)

    def put_many(self, keys: list[str], values: list[bytes], entities: list[str], ttl_ms: int) -> None:
        """SET each key with its TTL and add it to its entity's index set: one script call per 1,000 rows."""

        def write() -> int:
            for start in range(0, len(keys), _CHUNK):
                chunk = slice(start, start + _CHUNK)
                owner_of: dict[str, int] = {}
                owners = [owner_of.setdefault(entity, len(owner_of) + 1) for entity in entities[chunk]]
                indexes = [self.entity_index(entity) for entity in owner_of]
                self._put_script(
                    keys=[*keys[chunk], *indexes], args=[ttl_ms, len(owners), *values[chunk], *owners]
                )
            return len(keys)

        self._bypassable("put", write)

    def purge_entity(self, entity: str) -> int | None:
        def purge() -> int:
            pipe = self._client.pipeline(transaction=True)  # read and drop the index atomically
            pipe.smembers(self.entity_index(entity))
            pipe.unlink(self.entity_index(entity))
            members, _ = pipe.execute()
            return self._unlink(list(members))

        return self._run("purge", purge)

    def purge_matching(self, pattern: str) -> int | None:
        return self._run(
            "purge", lambda: self._unlink(list(self._client.scan_iter(match=pattern, count=_SCAN_COUNT)))
        )

    def entity_index(self, entity: str) -> str:
        return f"{self.namespace}e:{entity}"

    def count_errors(self, op: str, count: int) -> None:
        """Failures that do not make Redis unavailable (malformed values)."""
        with self._lock:
            self.errors += count
        self._metrics.errors.labels(op).inc(count)

    def close(self) -> None:
        self._client.close()

    def _unlink(self, keys: list[Any]) -> int:
        chunks = (keys[i : i + _CHUNK] for i in range(0, len(keys), _CHUNK))
        return sum(int(self._client.unlink(*chunk)) for chunk in chunks)  # type: ignore[arg-type,misc]

    def _bypassable(self, op: str, call: Callable[[], Any]) -> Any:
        """`_run`, but skipped during the back-off; a skip or a failure counts one bypass."""
        result = self._run(op, call) if self._clock() >= self._retry_at else None
        if result is None:
            with self._lock:
                self.bypasses += 1
            self._metrics.bypasses.labels(op).inc()
        return result

    def _run(self, op: str, call: Callable[[], Any]) -> Any:
        """`call()` (never None), or None after a Redis failure, which starts (or extends) the back-off."""
        try:
            result = call()
        except (redis.RedisError, OSError) as exc:
            self._failed(op, exc)
            return None
        if self._down_since is not None:
            self._recovered()
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self.errors += 1
            self._retry_at = now + self.backoff_s
            first = self._down_since is None
            if first:
                self._down_since = now
        self._metrics.errors.labels(op).inc()
        self._metrics.redis_up.set(0)
        error = '"' + f"{type(exc).__name__}: {exc}".replace('"', "'") + '"'
        if first:
            log.warning(
                "cache_redis_unavailable namespace=%s redis=%s op=%s error=%s backoff_s=%.1f action=bypass",
                self.namespace, self._where, op, error, self.backoff_s,
            )  # fmt: skip
        else:
            log.debug("cache_redis_still_unavailable namespace=%s op=%s error=%s", self.namespace, op, error)

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self._metrics.redis_up.set(1)
            log.info(
                "cache_redis_recovered namespace=%s outage_s=%.1f", self.namespace, self._clock() - since
            )
