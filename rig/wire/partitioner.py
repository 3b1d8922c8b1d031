"""Kafka's default partitioner (murmur2, as the Java client and librdkafka's `murmur2_random` hash
keys), so that records the rig produces and records other clients produce land on the same partition
for the same key: predictions and outcomes keyed by entity id are co-partitioned."""

from __future__ import annotations

import functools

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`: a signed 32-bit hash of the bytes."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@functools.lru_cache(maxsize=65_536)  # the join asks for every record; entities repeat, murmur2 takes ~1.8 µs
def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's `murmur2_random`) picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
