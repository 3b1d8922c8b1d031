"""murmur2 partitioning as Kafka's Java client does it (its own test vectors)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.wire.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest#testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def reference_murmur2(data: bytes) -> int:
    """Utils#murmur2 line by line, in Python (the rig's own until the hash moved to C)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    for shift, byte in reversed(list(enumerate(data[whole:]))):  # the tail, its last byte first
        h ^= byte << (8 * shift)
    if len(data) % 4:
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_murmur2_matches_the_reference_for_any_bytes_every_tail_length_included(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data)


def test_murmur2_takes_any_bytes_like_object_and_refuses_a_str() -> None:
    assert murmur2(bytearray(b"foobar")) == murmur2(memoryview(b"foobar")) == -790332482
    with pytest.raises(TypeError):
        murmur2("foobar")  # type: ignore[arg-type]


def test_a_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    assert partition_for(b"foobar", 4) == (-790332482 & 0x7FFFFFFF) % 4
    assert {partition_for(f"ent-{i:06d}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
