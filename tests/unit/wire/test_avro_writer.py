"""rig.wire.avro_writer: the compiled writer writes, for every schema of the rig and any values that fit
it, exactly the bytes fastavro writes; values it cannot write make the codec fall back to fastavro."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import fastavro
import msgspec
import numpy as np
import pytest
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.errors import CodecError
from rig.wire import avro_writer
from rig.wire.avro_writer import compile_writer
from rig.wire.codec import Codec
from rig.wire.records import Prediction
from tests.unit.wire.avro_values import RECORDS, fastavro_body, prediction, raw_schema, values_of


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_schema_of_the_rig_has_a_compiled_writer(name: str) -> None:
    assert compile_writer(expand_schema(raw_schema(name))) is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_compiled_bytes_equal_fastavro_bytes_for_any_values(name: str, data: st.DataObject) -> None:
    schema = expand_schema(raw_schema(name))
    plain = data.draw(values_of(schema))
    try:
        record = msgspec.convert(plain, RECORDS[name])
    except msgspec.ValidationError:
        assume(False)  # values the schema allows but the record class constrains further
    write = compile_writer(schema)
    assert write is not None

    assert write(record) == fastavro_body(name, plain)


INT_AND_LONG = {
    "type": "record",
    "name": "R",
    "fields": [{"name": "i", "type": "int"}, {"name": "l", "type": "long"}],
}


def fastavro_bytes(schema: dict[str, Any], plain: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), plain)
    return buffer.getvalue()


@pytest.mark.parametrize("value", [0, 63, 64, -1, -65, 2**31 - 1, -(2**31), 1_796_280_000_123])
def test_an_int_written_again_comes_from_the_memo_with_the_same_bytes(value: int) -> None:
    write = compile_writer(INT_AND_LONG)
    assert write is not None
    i = value if -(2**31) <= value < 2**31 else 7
    expected = fastavro_bytes(INT_AND_LONG, {"i": i, "l": value})

    assert [write(SimpleNamespace(i=i, l=value)) for _ in range(3)] == [expected] * 3


@given(value=st.integers(-(2**41), -(2**34) - 1) | st.integers(2**34, 2**41 - 1))
@settings(max_examples=300, deadline=None)
def test_a_long_of_six_bytes_is_written_as_fastavro_writes_it(value: int) -> None:
    expected = fastavro_bytes(INT_AND_LONG, {"i": 0, "l": value})[1:]  # after the int's one byte
    assert len(expected) == 6
    assert avro_writer._varint(value, "long") == expected


@pytest.mark.parametrize("value", [2**34 - 1, -(2**34), 2**41, -(2**41) - 1, 2**62])
def test_a_long_just_outside_six_bytes_is_written_as_fastavro_writes_it(value: int) -> None:
    expected = fastavro_bytes(INT_AND_LONG, {"i": 0, "l": value})[1:]
    assert len(expected) != 6
    assert avro_writer._varint(value, "long") == expected


def test_a_long_remembered_is_still_refused_where_an_int_is_due() -> None:
    write = compile_writer(INT_AND_LONG)
    assert write is not None
    write(SimpleNamespace(i=1, l=2**40))  # remembered as a long

    with pytest.raises(OverflowError):
        write(SimpleNamespace(i=2**40, l=1))


def test_the_memo_stays_bounded() -> None:
    write = compile_writer(INT_AND_LONG)
    assert write is not None
    for value in range(1_000, 1_000 + 3 * avro_writer._MEMO_ENTRIES):
        write(SimpleNamespace(i=value, l=value))

    assert all(0 < len(memo) <= avro_writer._MEMO_ENTRIES for memo in avro_writer._MEMO.values())


STRING = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}


@pytest.mark.parametrize("value", ["", "risk.1", "é" * 40, "x" * 200])
def test_a_string_written_again_comes_from_the_memo_with_the_same_bytes(value: str) -> None:
    write = compile_writer(STRING)
    assert write is not None

    assert [write(SimpleNamespace(s=value)) for _ in range(3)] == [fastavro_bytes(STRING, {"s": value})] * 3


@pytest.mark.parametrize("wrong", [b"risk.1", 7, None, ["risk.1"], "\ud800"])
def test_a_string_remembered_is_still_refused_for_a_value_that_is_not_a_valid_string(wrong: Any) -> None:
    write = compile_writer(STRING)
    assert write is not None
    write(SimpleNamespace(s="risk.1"))  # remembered

    with pytest.raises((TypeError, ValueError)):
        write(SimpleNamespace(s=wrong))
    assert "\ud800" not in avro_writer._STRINGS and b"risk.1" not in avro_writer._STRINGS


def test_the_string_memo_stays_bounded() -> None:
    write = compile_writer(STRING)
    assert write is not None
    for value in range(3 * avro_writer._MEMO_ENTRIES):
        write(SimpleNamespace(s=f"request-{value}"))

    assert 0 < len(avro_writer._STRINGS) <= avro_writer._MEMO_ENTRIES


def test_an_unsupported_union_gives_no_compiled_writer() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "int", "string"]}]}
    assert compile_writer(schema) is None


def test_numpy_scalars_are_written_as_their_python_values() -> None:
    codec = Codec(Prediction)
    plain = prediction()
    numpy = prediction(event_time=np.int64(1_718_000_000_123), score=np.float64(0.5))

    assert codec.encode(numpy) == codec.encode(plain)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_time": 2**63}, "event_time"),  # out of a long's range
        ({"entity_id": None}, "entity_id"),
    ],
)
def test_a_value_the_compiled_writer_refuses_is_refused_by_the_codec_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(CodecError, match=field):
        Codec(Prediction).encode(prediction(**changes))


def test_a_value_the_compiled_writer_refuses_but_fastavro_coerces_is_written_as_fastavro_writes_it() -> None:
    codec = Codec(Prediction)
    record = prediction(event_time=1.5)  # fastavro writes a float where a long is due; ours refuses it

    body = fastavro_body("Prediction", msgspec.to_builtins(record))

    assert codec.encode(record) == b"\xc3\x01" + codec.fingerprint + body
