"""rig.wire.avro_reader: the compiled reader gives, for every schema of the rig and any values that fit
it, the record fastavro and msgspec give; for any other bytes it gives nothing, or that same record."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.wire.avro_reader import _HIGH_PARTS, Malformed, _long, _varint, compile_reader
from rig.wire.avro_writer import _varint as varint_bytes
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Prediction, Request
from tests.unit.wire.avro_values import RECORDS, fastavro_body, prediction, raw_schema, values_of


def message(name: str, plain: dict[str, Any]) -> bytes:
    codec = Codec(RECORDS[name])
    return codec._header + fastavro_body(name, plain)


def fastavro_record(codec: Codec[Any], data: bytes) -> Any:
    """What the codec gives without its compiled reader."""
    return codec._read_body(data, 10, None)


def same(a: Any, b: Any) -> bool:
    """Equal records with equal types of values (1 is not 1.0), NaN equal to NaN."""
    return type(a) is type(b) and msgspec.json.encode(a) == msgspec.json.encode(b)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_schema_of_the_rig_has_a_compiled_reader(name: str) -> None:
    assert Codec(RECORDS[name])._read_compiled is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_compiled_record_equals_fastavros_for_any_values(name: str, data: st.DataObject) -> None:
    plain = data.draw(values_of(expand_schema(raw_schema(name))))
    codec = Codec(RECORDS[name])
    body = message(name, plain)
    expected = fastavro_record(codec, body)
    assume(not isinstance(expected, Rejected))  # values the schema allows but the class constrains

    compiled = codec._compiled_record(body)

    assert compiled is not None and same(compiled, expected)
    assert same(codec.decode(body), expected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", ["Request", "Prediction", "Outcome", "JoinedOutcome"])
def test_bytes_taken_apart_give_nothing_or_fastavros_record(name: str, data: st.DataObject) -> None:
    plain = data.draw(values_of(expand_schema(raw_schema(name))))
    body = bytearray(message(name, plain))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(10, max(10, len(body) - 1)))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if how == "flip" and at < len(body):
            body[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del body[at:]
        elif how == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif at < len(body):
            del body[at]
    codec = Codec(RECORDS[name])

    compiled = codec._compiled_record(bytes(body))

    if compiled is not None:
        assert same(compiled, fastavro_record(codec, bytes(body)))


def request_body(features: bytes) -> bytes:
    """A Request message whose features map is written as `features` (ids "r" and "e", time 1)."""
    codec = Codec(Request)
    return codec._header + b"\x02r" + b"\x02e" + b"\x02" + features + b"\x00"


def test_a_block_with_a_negative_count_and_its_size_is_read_as_fastavro_reads_it() -> None:
    # count -1 (zigzag 0x01), block size 10 bytes (0x14), "a" -> 1.5, then the empty block
    entry = b"\x02a" + b"\x00\x00\x00\x00\x00\x00\xf8\x3f"
    data = request_body(b"\x01\x14" + entry + b"\x00")
    codec = Codec(Request)

    compiled = codec._compiled_record(data)

    assert compiled is not None and compiled.features == {"a": 1.5}
    assert same(compiled, fastavro_record(codec, data))


@pytest.mark.parametrize(
    "features",
    [
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a count varint of 11 bytes
        b"\x7e",  # a count of 63 items in the few bytes left
        b"\x02\x02a\x00\x00",  # a double cut short
        b"\x02\x04\xff\xfe" + b"\x00" * 8 + b"\x00",  # a key that is not UTF-8
    ],
)
def test_a_malformed_body_gets_no_compiled_record_and_fastavro_says_why(features: bytes) -> None:
    codec = Codec(Request)
    data = request_body(features)

    assert codec._compiled_record(data) is None
    decoded = codec.decode(data)
    assert isinstance(decoded, Rejected) and decoded.reason


def test_a_boolean_byte_other_than_0_or_1_is_left_to_fastavro() -> None:
    codec = Codec(Prediction)
    good = codec.encode(prediction(transform_version="t"))
    at = good.index(b"\x02t") + 2  # cache_hit follows the transform version
    assert good[at] == 0
    data = good[:at] + b"\x02" + good[at + 1 :]

    assert codec._compiled_record(data) is None
    assert same(codec.decode(data), fastavro_record(codec, data))


def test_a_trailing_byte_gets_no_compiled_record() -> None:
    codec = Codec(Request)
    data = codec.encode(Request(request_id="r", entity_id="e", event_time=1)) + b"\x00"

    assert codec._compiled_record(data) is None
    assert isinstance(codec.decode(data), Rejected)


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "record",
            "name": "Request",
            "fields": [{"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}}],
        },
        {"type": "record", "name": "Request", "fields": [{"name": "f", "type": ["null", "int", "string"]}]},
        {
            "type": "record",
            "name": "Request",
            "fields": [{"name": "f", "type": {"type": "array", "items": "null"}}],
        },
        {"type": "record", "name": "Unknown", "fields": [{"name": "f", "type": "int"}]},
    ],
)
def test_what_the_compiler_does_not_cover_gets_no_compiled_reader(schema: dict[str, Any]) -> None:
    assert compile_reader(schema, {"Request": Request}) is None


def test_a_varint_out_of_the_range_of_an_int_is_malformed() -> None:
    with pytest.raises(Malformed):
        _varint(b"\xfe\xff\xff\xff\x1f", 0, "int")  # 2**32 - 1
    assert _varint(b"\xfe\xff\xff\xff\x0f", 0, "int") == (2**31 - 1, 5)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(2**34, 2**35), min_size=1, max_size=20))
def test_remembered_longs_read_as_varint_reads_them_however_often_they_repeat(values: list[int]) -> None:
    data = b"".join(varint_bytes(v) for v in values * 2) + b"\x01tail"  # each twice: the second is remembered
    p, read = 0, []
    for _ in range(len(values) * 2):
        value, end = _long(data, p)
        assert (value, end) == _varint(data, p, "long")
        read.append(value)
        p = end
    assert read == values * 2


def test_a_varint_not_of_six_bytes_around_a_remembered_high_part_is_not_taken_for_one() -> None:
    timestamp = varint_bytes(1_796_289_070_406)
    assert len(timestamp) == 6
    _long(timestamp, 0)
    assert timestamp[3:] in _HIGH_PARTS
    shorter = bytes([timestamp[0] & 0x7F]) + timestamp[1:]  # a one-byte varint, then five other bytes
    two_bytes = bytes([timestamp[0], timestamp[1] & 0x7F]) + timestamp[2:]  # a two-byte varint
    for data in (shorter, two_bytes):
        assert _long(data, 0) == _varint(data, 0, "long")
    assert _long(shorter, 0) == (((timestamp[0] & 0x7F) >> 1) ^ -(timestamp[0] & 1), 1)
    assert _long(two_bytes, 0)[1] == 2


@settings(max_examples=300, deadline=None)
@given(low=st.integers(0, 2**21 - 1), high=st.integers(2**14, 2**21 - 1))
def test_six_byte_longs_sharing_a_high_part_read_as_varint_reads_them(low: int, high: int) -> None:
    zigzag = high << 21 | low  # six bytes: the high part takes the last three
    value = (zigzag >> 1) ^ -(zigzag & 1)
    neighbour = ((zigzag ^ 0x155555) >> 1) ^ -((zigzag ^ 0x155555) & 1)  # the same high part
    data = varint_bytes(neighbour) + varint_bytes(value)
    assert len(data) == 12
    assert _long(data, 0) == _varint(data, 0, "long")  # remembers the high part
    assert _long(data, 6) == _varint(data, 6, "long") == (value, 12)
