"""Kafka's murmur2 hash, the default partitioner's (the C extension `_murmur2.c`)."""

from _typeshed import ReadableBuffer

def murmur2(data: ReadableBuffer, /) -> int: ...
