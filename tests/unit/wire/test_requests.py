"""Requests name their entity by the repo's typed join keys; inside the rig it is one entity id."""

from __future__ import annotations

import pytest

from rig.wire.codec import Codec, ErrorType, Rejected, schema_json
from rig.wire.records import Request
from rig.wire.requests import DEFAULT_KEYS, JoinKey, KeySpec

DRIVER = KeySpec((JoinKey("driver_id", "int64"),))
COMPOSITE = KeySpec((JoinKey("driver_id", "int64"), JoinKey("region", "string")))
T0 = 1_735_689_600_000


def test_the_default_keys_give_exactly_the_request_schema_file() -> None:
    codec = Codec(Request, shape=DEFAULT_KEYS)
    assert codec.fingerprint == Codec(Request).fingerprint
    assert DEFAULT_KEYS.request_schema() == schema_json("Request")
    request = Request(request_id="r", entity_id="ent-1", event_time=T0)
    assert codec.encode(request) == Codec(Request).encode(request)


def test_a_json_request_names_its_entity_by_the_typed_join_key() -> None:
    codec = Codec(Request, allow_json=True, shape=DRIVER)
    decoded = codec.decode(b'{"request_id": "r1", "driver_id": 1001, "event_time": 1735689600000}')
    assert decoded == Request(request_id="r1", entity_id="1001", event_time=T0)
    wrong_type = codec.decode(b'{"request_id": "r1", "driver_id": "1001", "event_time": 1735689600000}')
    assert isinstance(wrong_type, Rejected) and wrong_type.error_type == ErrorType.INVALID_RECORD
    assert "driver_id" in wrong_type.reason
    no_key = codec.decode(b'{"request_id": "r1", "entity_id": "1001", "event_time": 1735689600000}')
    assert isinstance(no_key, Rejected) and "entity_id" in no_key.reason


def test_an_avro_request_carries_the_join_keys_typed_and_round_trips() -> None:
    codec = Codec(Request, shape=COMPOSITE)
    fields = {f["name"]: f["type"] for f in COMPOSITE.request_schema()["fields"]}
    assert fields["driver_id"] == "long" and fields["region"] == "string" and "entity_id" not in fields
    request = Request(request_id="r", entity_id='[1001,"eu"]', event_time=T0, features={"x": 1.0})
    assert codec.decode(codec.encode(request)) == request


def test_entity_ids_turn_back_into_typed_values_and_refuse_what_is_not() -> None:
    assert DRIVER.values("1001") == (1001,)
    assert COMPOSITE.values('[7,"eu"]') == (7, "eu")
    assert COMPOSITE.entity_id((7, "eu")) == '[7,"eu"]'
    assert DRIVER.rows(["1", "2"]) == {"driver_id": [1, 2]}
    for bad in ("x", str(2**63)):
        with pytest.raises(ValueError):
            DRIVER.values(bad)
    with pytest.raises(ValueError):
        KeySpec((JoinKey("request_id", "string"),))
