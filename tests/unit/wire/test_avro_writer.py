"""rig.wire.avro_writer: the compiled writer writes, for every schema of the rig and any values that fit
it, exactly the bytes fastavro writes; values it cannot write make the codec fall back to fastavro."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import msgspec
import numpy as np
import pytest
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.errors import CodecError
from rig.wire.avro_writer import compile_writer
from rig.wire.codec import Codec
from rig.wire.records import Prediction
from tests.unit.wire.avro_values import (
    RECORDS,
    fastavro_body,
    fastavro_bytes,
    prediction,
    raw_schema,
    values_of,
)


def record_schema(name: str) -> dict[str, Any]:
    """The named record's schema, expanded: fastavro types any schema, a record's is a dict."""
    return cast(dict[str, Any], expand_schema(raw_schema(name)))


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_schema_of_the_rig_has_a_compiled_writer(name: str) -> None:
    assert compile_writer(record_schema(name)) is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_compiled_bytes_equal_fastavro_bytes_for_any_values(name: str, data: st.DataObject) -> None:
    schema = record_schema(name)
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


@given(i=st.integers(-(2**31), 2**31 - 1), value=st.integers(-(2**63), 2**63 - 1))
@settings(max_examples=300, deadline=None)
def test_any_int_and_long_are_written_as_fastavro_writes_them(i: int, value: int) -> None:
    write = compile_writer(INT_AND_LONG)
    assert write is not None

    assert write(SimpleNamespace(i=i, l=value)) == fastavro_bytes(INT_AND_LONG, {"i": i, "l": value})


@pytest.mark.parametrize(
    ("i", "value"), [(2**31, 1), (-(2**31) - 1, 1), (1, 2**63), (1, -(2**63) - 1), (1, 10**30)]
)
def test_an_int_out_of_its_types_range_is_refused(i: int, value: int) -> None:
    write = compile_writer(INT_AND_LONG)
    assert write is not None

    with pytest.raises(OverflowError):
        write(SimpleNamespace(i=i, l=value))


STRING = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}


@pytest.mark.parametrize("value", ["", "risk.1", "é" * 40, "x" * 200, "y" * 5_000])
def test_a_string_is_written_as_fastavro_writes_it(value: str) -> None:
    write = compile_writer(STRING)
    assert write is not None

    assert write(SimpleNamespace(s=value)) == fastavro_bytes(STRING, {"s": value})


@pytest.mark.parametrize("wrong", [b"risk.1", 7, None, ["risk.1"], "\ud800"])
def test_a_value_that_is_not_a_valid_string_is_refused(wrong: Any) -> None:
    write = compile_writer(STRING)
    assert write is not None

    with pytest.raises((TypeError, ValueError)):
        write(SimpleNamespace(s=wrong))


def test_a_record_missing_a_field_is_refused() -> None:
    write = compile_writer(STRING)
    assert write is not None

    with pytest.raises(AttributeError):
        write(SimpleNamespace(t="risk.1"))


class GrowsWhenRead:
    """A double that adds an item to the array it is in when it is written."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __float__(self) -> float:
        self.items.append(0.5)
        return 1.5


def test_an_array_that_changes_size_while_written_is_refused() -> None:
    schema = {
        "type": "record",
        "name": "A",
        "fields": [{"name": "xs", "type": {"type": "array", "items": "double"}}],
    }
    write = compile_writer(schema)
    assert write is not None
    items: list[Any] = []
    items.append(GrowsWhenRead(items))

    with pytest.raises(RuntimeError):
        write(SimpleNamespace(xs=items))


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
