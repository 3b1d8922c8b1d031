"""rig.wire.avro_writer: the compiled writer writes, for every schema of the rig and any values that fit
it, exactly the bytes fastavro writes; values it cannot write make the codec fall back to fastavro."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import msgspec
import numpy as np
import pytest
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.errors import CodecError
from rig.wire.avro_writer import compile_writer
from rig.wire.codec import SCHEMAS_DIR, Codec
from rig.wire.records import (
    ControlEvent,
    DeadLetter,
    Decision,
    Explanation,
    JoinedOutcome,
    ModelScore,
    Outcome,
    Prediction,
    Record,
    Request,
)

RECORDS: dict[str, type[Record]] = {
    cls.__name__: cls
    for cls in (ControlEvent, DeadLetter, Decision, Explanation, JoinedOutcome, Outcome, Prediction, Request)
}
LIMITS = {"int": 2**31, "long": 2**63}


def raw_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())


def values_of(schema: Any) -> st.SearchStrategy[Any]:
    """Plain values (what fastavro writes) of any Avro schema the rig uses; lists and maps go past 64
    items so that their counts take more than one varint byte."""
    if isinstance(schema, list):
        return st.one_of(*(values_of(branch) for branch in schema))
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, dict | list):
        return values_of(kind)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind in LIMITS:
        limit = LIMITS[kind]
        return st.integers(-limit, limit - 1) | st.integers(-100, 100)
    if kind == "double":
        return st.floats()
    if kind == "float":
        return st.floats(width=32)
    if kind == "string":
        return st.text(max_size=80)
    if kind == "bytes":
        return st.binary(max_size=80)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values_of(schema["items"]), max_size=70)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values_of(schema["values"]), max_size=70)
    if kind == "record":
        return st.fixed_dictionaries({field["name"]: values_of(field["type"]) for field in schema["fields"]})
    raise AssertionError(f"no strategy for {kind!r}")


def fastavro_body(name: str, plain: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(raw_schema(name)), plain)
    return out.getvalue()


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


def test_an_unsupported_union_gives_no_compiled_writer() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "int", "string"]}]}
    assert compile_writer(schema) is None


def prediction(**changes: Any) -> Prediction:
    base = Prediction(
        request_id="req-1",
        entity_id="customer-1",
        event_time=1_718_000_000_123,
        score=0.5,
        answered_by="v1",
        golden=ModelScore(model_version="v1", score=0.5),
        transform_version="tf-1",
    )
    return msgspec.structs.replace(base, **changes)


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
