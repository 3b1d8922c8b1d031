"""Plain values of the rig's Avro schemas (Hypothesis strategies) and the bytes fastavro writes for
them: what the compiled writer and reader are held to (tests/unit/wire/test_avro_writer.py,
test_avro_reader.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import msgspec
from hypothesis import strategies as st

from rig.wire.codec import SCHEMAS_DIR
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
    return fastavro_bytes(raw_schema(name), plain)


def fastavro_bytes(schema: dict[str, Any], plain: dict[str, Any]) -> bytes:
    """The Avro body fastavro writes for `plain` in `schema`."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), plain)
    return out.getvalue()


def prediction(**changes: Any) -> Prediction:
    """A small valid Prediction (golden only), with `changes`."""
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
