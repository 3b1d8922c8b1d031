"""rig.wire.avro_reader: the compiled reader gives, for every schema of the rig and any values that fit
it, the record fastavro and msgspec give; for any other bytes it gives nothing, or that same record."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.wire.avro_reader import Malformed, compile_reader
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Prediction, Request
from tests.unit.wire.avro_values import (
    RECORDS,
    fastavro_body,
    fastavro_bytes,
    prediction,
    raw_schema,
    values_of,
)


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


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200))
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_any_bytes_give_nothing_or_fastavros_record(name: str, body: bytes) -> None:
    codec = Codec(RECORDS[name])
    data = codec._header + body

    compiled = codec._compiled_record(data)

    if compiled is not None:
        assert same(compiled, fastavro_record(codec, data))


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
        {
            "type": "record",
            "name": "Request",
            "fields": [{"name": f"f{i}", "type": "int"} for i in range(65)],
        },
    ],
)
def test_what_the_compiler_does_not_cover_gets_no_compiled_reader(schema: dict[str, Any]) -> None:
    assert compile_reader(schema, {"Request": Request}) is None


class Numbers(msgspec.Struct):
    i: int
    n: int


INT_AND_LONG = {
    "type": "record",
    "name": "Numbers",
    "fields": [{"name": "i", "type": "int"}, {"name": "n", "type": "long"}],
}


def numbers_reader() -> Any:
    read = compile_reader(INT_AND_LONG, {"Numbers": Numbers})
    assert read is not None
    return read


@settings(max_examples=300, deadline=None)
@given(i=st.integers(-(2**31), 2**31 - 1), value=st.integers(-(2**63), 2**63 - 1))
def test_any_int_and_long_read_as_fastavro_wrote_them(i: int, value: int) -> None:
    data = b"tail" + fastavro_bytes(INT_AND_LONG, {"i": i, "n": value}) + b"tail"

    assert numbers_reader()(data, 4) == (Numbers(i=i, n=value), len(data) - 4)


@pytest.mark.parametrize(
    "body",
    [
        b"\xfe\xff\xff\xff\x1f\x00",  # an int of 2**32 - 1
        b"\x00" + b"\xff" * 9 + b"\x02",  # a long of 2**64 and more
        b"\x00" + b"\x80" * 10 + b"\x00",  # a varint of 11 bytes
        b"\x00\x80",  # a varint cut short
        b"",
    ],
)
def test_a_varint_out_of_its_types_range_or_cut_short_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        numbers_reader()(body, 0)


def test_varints_at_the_edges_of_their_types_are_read() -> None:
    read = numbers_reader()

    assert read(b"\xfe\xff\xff\xff\x0f" + b"\xff" * 9 + b"\x01", 0) == (Numbers(i=2**31 - 1, n=-(2**63)), 15)
    assert read(b"\x00" + b"\x80" * 9 + b"\x01", 0) == (Numbers(i=0, n=2**62), 11)  # not the shortest form


def test_an_offset_outside_the_data_is_malformed() -> None:
    with pytest.raises(Malformed):
        numbers_reader()(b"\x00\x00", 3)


class Empty(msgspec.Struct):
    pass


def test_a_record_without_fields_is_read_from_no_bytes() -> None:
    read = compile_reader({"type": "record", "name": "Empty", "fields": []}, {"Empty": Empty})
    assert read is not None

    assert read(b"\x00", 1) == (Empty(), 1)
