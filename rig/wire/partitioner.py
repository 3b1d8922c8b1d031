"""Kafka's default partitioner (murmur2, as the Java client and librdkafka's `murmur2_random` hash
keys), so that records the rig produces and records other clients produce land on the same partition
for the same key: predictions and outcomes keyed by entity id are co-partitioned."""

from __future__ import annotations

from rig.wire._murmur2 import murmur2

__all__ = ["murmur2", "partition_for"]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's `murmur2_random`) picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
