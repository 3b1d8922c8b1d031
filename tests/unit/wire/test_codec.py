"""rig.wire.codec: every schema round-trips in every wire format, matches the reference `avro` package
byte for byte, and every kind of bad message becomes a typed rejection instead of an exception."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

import avro.io
import avro.schema
import fastavro
import msgspec
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro.schema import to_parsing_canonical_form
from msgspec.structs import replace

from rig.errors import CodecError, SchemaRegistryUnavailable
from rig.wire.codec import SCHEMAS_DIR, Codec, ErrorType, Rejected, load_schema
from rig.wire.records import (
    AnchorRule,
    Condition,
    ControlEvent,
    Counterfactual,
    DeadLetter,
    Decision,
    ExperimentScore,
    Explanation,
    FeatureChange,
    FeatureContribution,
    JoinedOutcome,
    ModelScore,
    Outcome,
    Prediction,
    Record,
    Request,
    ShapValues,
    to_plain,
)
from tests.support.ports import free_port

T0 = 1_718_000_000_123  # 2024-06-10T06:13:20.123Z, in ms

SchemaName = Literal[
    "Request",
    "Prediction",
    "Outcome",
    "JoinedOutcome",
    "Decision",
    "ControlEvent",
    "Explanation",
    "DeadLetter",
]


class Samples(TypedDict):
    """One sample per schema, each typed as its record class: SAMPLES["Request"] is a Request."""

    Request: Request
    Prediction: Prediction
    Outcome: Outcome
    JoinedOutcome: JoinedOutcome
    Decision: Decision
    ControlEvent: ControlEvent
    Explanation: Explanation
    DeadLetter: DeadLetter


SAMPLES: Samples = {
    "Request": Request(
        request_id="req-000042",
        entity_id="customer-17",
        event_time=T0,
        features={"basket_value": 84.5, "items_in_basket": 3.0},
        context={"channel": "web", "client": "kcat"},
    ),
    "Prediction": Prediction(
        request_id="req-000042",
        entity_id="customer-17",
        event_time=T0,
        score=0.8125,
        answered_by="churn-v3",
        golden=ModelScore(model_version="churn-v2", score=0.75),
        experiments=[
            ExperimentScore(experiment="exp-v3-ab", model_version="churn-v3", mode="ab", score=0.8125),
            ExperimentScore(experiment="exp-v4-shadow", model_version="churn-v4", mode="shadow", score=0.5),
        ],
        transform_version="tf-7",
        cache_hit=True,
        entity_found=False,
        timings_ms={"decode": 0.02, "enrich": 0.9, "predict": 0.11},
    ),
    "Outcome": Outcome(
        request_id="req-000042",
        entity_id="customer-17",
        label=1,
        event_time=T0 + 86_400_000,
    ),
    "JoinedOutcome": JoinedOutcome(
        request_id="req-000042",
        entity_id="customer-17",
        model_version="churn-v4",
        role="shadow",
        experiment="exp-v4-shadow",
        score=0.5,
        label=1,
        prediction_time=T0,
        outcome_time=T0 + 86_400_000,
        golden_model_version="churn-v3",
        golden_score=0.25,
    ),
    "Decision": Decision(
        decision_id="dec-9",
        decided_at=T0 + 3_600_000,
        action="promote",
        mode="auto",
        golden_version="churn-v2",
        challenger_version="churn-v3",
        metric="log_loss",
        n=12_345,
        estimate=-0.0125,
        ci_low=-0.02,
        ci_high=-0.005,
        p_value=0.0031,
        e_value=322.5,
        reason="challenger better by 0.0125 log loss (always-valid 95% CI excludes 0), n >= 10000",
    ),
    "ControlEvent": ControlEvent(
        event_id="ctl-3",
        issued_at=T0 + 3_600_500,
        kind="start_experiment",
        model_version="churn-v4",
        experiment="exp-v4-ab",
        mode="ab",
        traffic_share=0.1,
        traffic_cap_rps=200.0,
        actor="alice",
        reason="try v4 on 10% of customers",
        entity_id=None,
    ),
    "Explanation": Explanation(
        request_id="req-000042",
        entity_id="customer-17",
        model_version="churn-v4",
        explanation_key="ab" * 32,
        score=0.8,
        decision=True,
        threshold=0.5,
        shap=ShapValues(
            margin=1.386,
            score=0.8,
            bias=-1.0,
            top=[FeatureContribution(feature="utilization", value=0.9, contribution=1.5)],
            contributions={"utilization": 1.5, "age": 0.886},
        ),
        anchor=AnchorRule(
            rule="utilization > 0.8",
            conditions=[Condition(feature="utilization", lower=0.8, upper=None, missing=False)],
            decision=True,
            precision=0.97,
            precision_lower=0.95,
            coverage=0.12,
            n_samples=2000,
            met_target=True,
        ),
        counterfactual=Counterfactual(
            changes=[FeatureChange(feature="utilization", from_value=0.9, to_value=0.3)],
            original_score=0.8,
            score=0.4,
            decision=False,
            distance=1.2,
        ),
        counterfactual_note="",
    ),
    "DeadLetter": DeadLetter(
        received_at=T0,
        source_topic="rig.requests",
        partition=3,
        offset=9_876_543_210,
        key=b"customer-17",
        original=b"\xc3\x01\xff\x00 not avro \xfe",
        reason="unknown message format (first byte 0xc3)",
        error_type="malformed",
        request_id="req-000042",
    ),
}
SCHEMA_NAMES = sorted(SAMPLES)
# A TypedDict's values type as object: each of these is a Record.
RECORD_TYPES: dict[str, type[Record]] = {
    name: type(sample) for name, sample in cast(dict[str, Record], SAMPLES).items()
}


class RequestFields(TypedDict):
    """The required fields of a Request, as keyword arguments."""

    request_id: str
    entity_id: str
    event_time: int


JSON_REQUEST: RequestFields = {"request_id": "req-1", "entity_id": "customer-1", "event_time": T0}


def codec_of(name: str, **options: Any) -> Codec[Any]:
    """The codec of the record class named `name`."""
    return Codec(RECORD_TYPES[name], **options)


def _timestamp_fields(name: str) -> list[str]:
    schema = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
    return [
        field["name"]
        for field in schema["fields"]
        if isinstance(field["type"], dict) and field["type"].get("logicalType") == "timestamp-millis"
    ]


def _with_datetimes(name: str, record: Record) -> dict[str, Any]:
    """The record as the reference `avro` package wants it: a dict, timestamp-millis as aware datetimes."""
    converted = to_plain(record)
    for field in _timestamp_fields(name):
        converted[field] = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            milliseconds=converted[field]
        )
    return converted


def _avro_schema(name: str) -> avro.schema.Schema:
    return avro.schema.parse((SCHEMAS_DIR / f"{name}.avsc").read_text())


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO (Rabin) as the Avro specification writes it, little-endian like the Java reference."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(v) for v in schema]
    return schema


def _rejected(result: Record | Rejected) -> Rejected:
    assert isinstance(result, Rejected), f"expected a rejection, got {result!r}"
    return result


# -- schemas ----------------------------------------------------------------------------------------
def test_schemas_folder_holds_exactly_the_documented_schemas() -> None:
    assert sorted(p.stem for p in SCHEMAS_DIR.glob("*.avsc")) == SCHEMA_NAMES


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_parses_standalone_in_namespace_rig_with_docs_on_record_and_fields(name: str) -> None:
    raw = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
    assert load_schema(name)["name"] == f"rig.{name}"
    assert raw["namespace"] == "rig" and raw["doc"]
    assert [f["name"] for f in raw["fields"] if not f.get("doc")] == []


def test_load_schema_reads_an_overridden_folder_and_names_unknown_schemas(tmp_path: Path) -> None:
    (tmp_path / "Ping.avsc").write_text(json.dumps({"type": "record", "name": "Ping", "fields": []}))
    assert load_schema("Ping", tmp_path)["name"] == "Ping"
    with pytest.raises(CodecError, match="Ping"):
        load_schema("NoSuchSchema", tmp_path)


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_single_object_round_trip_keeps_every_field(name: SchemaName) -> None:
    codec = codec_of(name)
    data = codec.encode(SAMPLES[name])
    assert data[:2] == b"\xc3\x01" and data[2:10] == codec.fingerprint
    assert codec.decode(data) == SAMPLES[name]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_json_round_trip_gives_the_same_record_as_avro(name: SchemaName) -> None:
    codec = codec_of(name, allow_json=True)
    decoded = codec.decode(codec.encode_json(SAMPLES[name]))
    assert decoded == SAMPLES[name] == codec.decode(codec.encode(SAMPLES[name]))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_confluent_round_trip_through_mock_registry_shares_the_avro_body(name: SchemaName) -> None:
    url = f"mock://roundtrip-{name}"
    data = codec_of(name, registry_url=url).encode(SAMPLES[name])
    schema_id = int.from_bytes(data[1:5], "big")
    assert data[0] == 0 and schema_id > 0
    assert data[5:] == codec_of(name).encode(SAMPLES[name])[10:]
    assert codec_of(name, registry_url=url).decode(data) == SAMPLES[name]  # a second client of the registry


def test_registry_codec_also_reads_single_object_messages() -> None:
    single = Codec(Request).encode(SAMPLES["Request"])
    assert Codec(Request, registry_url="mock://mixed").decode(single) == SAMPLES["Request"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_timestamps_decode_as_int_millis_in_every_format(name: SchemaName) -> None:
    codec = codec_of(name, allow_json=True, registry_url=f"mock://ints-{name}")
    single = codec_of(name).encode(SAMPLES[name])
    for data in (single, codec.encode(SAMPLES[name]), codec.encode_json(SAMPLES[name])):
        record = codec.decode(data)
        assert isinstance(record, RECORD_TYPES[name])
        assert {f: type(getattr(record, f)) for f in _timestamp_fields(name)} == dict.fromkeys(
            _timestamp_fields(name), int
        )


def test_encoding_aware_datetimes_gives_the_same_bytes_as_int_millis() -> None:
    codec = Codec(Outcome)
    with_datetimes = Outcome(**_with_datetimes("Outcome", SAMPLES["Outcome"]))
    assert codec.encode(with_datetimes) == codec.encode(SAMPLES["Outcome"])


def test_json_fills_documented_defaults_of_missing_optional_fields() -> None:
    request = Codec(Request, allow_json=True).decode(json.dumps(JSON_REQUEST).encode())
    assert request == Request(**JSON_REQUEST, features={}, context={})
    control: dict[str, Any] = {"event_id": "c1", "issued_at": T0, "kind": "purge_cache", "actor": "bob"}
    decoded = Codec(ControlEvent, allow_json=True).decode(json.dumps(control).encode())
    assert decoded == ControlEvent(
        **control,
        model_version=None,
        experiment=None,
        mode=None,
        traffic_share=None,
        traffic_cap_rps=None,
        reason="",
        entity_id=None,
    )


def test_json_accepts_iso_times_with_timezone_and_integral_float_millis() -> None:
    codec = Codec(Request, allow_json=True)
    iso = codec.decode(json.dumps({**JSON_REQUEST, "event_time": "2024-06-10T06:13:20.123Z"}).encode())
    floats = codec.decode(json.dumps({**JSON_REQUEST, "event_time": float(T0)}).encode())
    assert isinstance(iso, Request) and iso.event_time == T0
    assert isinstance(floats, Request) and floats.event_time == T0
    naive = _rejected(
        codec.decode(json.dumps({**JSON_REQUEST, "event_time": "2024-06-10T06:13:20"}).encode())
    )
    assert naive.error_type == ErrorType.INVALID_RECORD and "timezone" in naive.reason


def test_confluent_message_of_an_older_schema_version_is_resolved_with_defaults(tmp_path: Path) -> None:
    old = json.loads((SCHEMAS_DIR / "Request.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("features", "context")]
    (tmp_path / "Request.avsc").write_text(json.dumps(old))
    # The record class of that older version, as an older producer has it.
    # defstruct types its class as a Struct: with bases=(Record,) it is a Record.
    old_request = cast(
        type[Record],
        msgspec.defstruct(
            "Request",
            [("request_id", str), ("entity_id", str), ("event_time", int)],
            bases=(Record,),
            kw_only=True,
        ),
    )
    url = "mock://evolution"
    old_message = Codec(old_request, registry_url=url, schemas_dir=tmp_path).encode(
        old_request(**JSON_REQUEST)
    )
    current = Codec(Request, registry_url=url)
    new_message = current.encode(Request(**JSON_REQUEST))
    assert int.from_bytes(old_message[1:5], "big") != int.from_bytes(new_message[1:5], "big")
    assert current.decode(old_message) == Request(**JSON_REQUEST, features={}, context={})


# -- compatibility with the reference avro package -------------------------------------------------
@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_fastavro_body_equals_reference_avro_body(name: SchemaName) -> None:
    buffer = io.BytesIO()
    avro.io.DatumWriter(_avro_schema(name)).write(
        _with_datetimes(name, SAMPLES[name]), avro.io.BinaryEncoder(buffer)
    )
    assert codec_of(name).encode(SAMPLES[name])[10:] == buffer.getvalue()


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_body_written_by_reference_avro_decodes_once_framed(name: SchemaName) -> None:
    codec = codec_of(name)
    buffer = io.BytesIO()
    avro.io.DatumWriter(_avro_schema(name)).write(
        _with_datetimes(name, SAMPLES[name]), avro.io.BinaryEncoder(buffer)
    )
    assert codec.decode(b"\xc3\x01" + codec.fingerprint + buffer.getvalue()) == SAMPLES[name]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_reference_avro_reads_the_body_fastavro_writes(name: SchemaName) -> None:
    body = codec_of(name).encode(SAMPLES[name])[10:]
    read = avro.io.DatumReader(_avro_schema(name)).read(avro.io.BinaryDecoder(io.BytesIO(body)))
    assert read == _with_datetimes(name, SAMPLES[name])


def test_independent_crc64_avro_matches_reference_avro_fingerprint() -> None:
    for schema in ('"int"', '"string"', '{"type":"fixed","name":"md5","size":16}'):
        assert (
            _crc64_avro(avro.schema.parse(schema).canonical_form.encode())
            == avro.schema.parse(schema).fingerprint()
        )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_header_fingerprint_is_crc64_avro_of_the_parsing_canonical_form(name: str) -> None:
    codec = codec_of(name)
    assert codec.fingerprint == _crc64_avro(to_parsing_canonical_form(load_schema(name)).encode())
    # The reference avro package (1.12) keeps {"type":"long"} for logical types in its canonical form
    # instead of the spec's "long"; the same schema without logicalType gives the spec's form.
    without_logical = json.dumps(_strip_logical_types(json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())))
    assert codec.fingerprint == avro.schema.parse(without_logical).fingerprint()


def _framed_by_avro_package(name: SchemaName) -> bytes:
    """A single-object message as a producer using the reference `avro` package frames it: the
    header carries that package's fingerprint of the schema."""
    schema = _avro_schema(name)
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(_with_datetimes(name, SAMPLES[name]), avro.io.BinaryEncoder(buffer))
    return b"\xc3\x01" + schema.fingerprint() + buffer.getvalue()


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_single_object_message_with_the_avro_package_fingerprint_decodes(name: SchemaName) -> None:
    assert codec_of(name).decode(_framed_by_avro_package(name)) == SAMPLES[name]


def test_message_of_another_schema_with_the_avro_package_fingerprint_is_named() -> None:
    rejected = _rejected(Codec(Request).decode(_framed_by_avro_package("Decision")))
    assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "rig.Decision" in rejected.reason


# -- rejections ------------------------------------------------------------------------------------
def test_random_bytes_are_rejected_as_malformed() -> None:
    rng = random.Random(7)
    codec = Codec(Request, allow_json=True, registry_url="mock://random")
    for _ in range(200):
        data = bytes([rng.choice([0x01, 0x7F, 0xAB])]) + rng.randbytes(rng.randint(0, 64))
        rejected = _rejected(codec.decode(data))
        assert rejected.error_type == ErrorType.MALFORMED and rejected.raw == data


def test_random_body_after_a_valid_header_is_rejected_not_raised() -> None:
    rng = random.Random(11)
    codec = Codec(Prediction)
    header = codec.encode(SAMPLES["Prediction"])[:10]
    for _ in range(300):
        rejected = _rejected(codec.decode(header + rng.randbytes(rng.randint(0, 80))))
        assert rejected.error_type == ErrorType.MALFORMED


def test_empty_message_and_tombstone_are_rejected_as_malformed() -> None:
    codec = Codec(ControlEvent)
    empty = _rejected(codec.decode(b""))
    tombstone = _rejected(codec.decode(None))
    assert (empty.error_type, tombstone.error_type) == (ErrorType.MALFORMED, ErrorType.MALFORMED)
    assert "empty" in empty.reason and "tombstone" in tombstone.reason


def test_message_of_another_schema_is_rejected_as_unknown_schema_naming_it() -> None:
    decision = Codec(Decision).encode(SAMPLES["Decision"])
    rejected = _rejected(Codec(Request).decode(decision))
    assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "rig.Decision" in rejected.reason


def test_unknown_fingerprint_is_rejected_as_unknown_schema() -> None:
    data = b"\xc3\x01" + bytes(8) + Codec(Request).encode(SAMPLES["Request"])[10:]
    rejected = _rejected(Codec(Request).decode(data))
    assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "fingerprint" in rejected.reason


def test_unknown_fingerprints_read_the_schemas_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("Request", "Outcome"):
        (tmp_path / f"{name}.avsc").write_text((SCHEMAS_DIR / f"{name}.avsc").read_text())
    listings = []
    glob = Path.glob

    def counting_glob(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == tmp_path:
            listings.append(args)
        return glob(self, *args, **kwargs)

    monkeypatch.setattr(Path, "glob", counting_glob)
    codec = Codec(Request, schemas_dir=tmp_path)
    body = codec.encode(SAMPLES["Request"])[10:]

    for i in range(500):
        rejected = _rejected(codec.decode(b"\xc3\x01" + i.to_bytes(8, "little") + body))
        assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "fingerprint" in rejected.reason
    outcome = Codec(Outcome, schemas_dir=tmp_path).encode(SAMPLES["Outcome"])

    assert "rig.Outcome" in _rejected(codec.decode(outcome)).reason
    assert len(listings) == 1


def _confluent(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + Codec(Request).encode(SAMPLES["Request"])[10:]


def test_registry_is_asked_once_for_an_unknown_id_however_many_came_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mock_client = type(SchemaRegistryClient.new_client({"url": "mock://probe"}))
    asked: Counter[int] = Counter()
    get_schema = mock_client.get_schema

    def counting_get_schema(self: Any, schema_id: int, *args: Any, **kwargs: Any) -> Any:
        asked[schema_id] += 1
        return get_schema(self, schema_id, *args, **kwargs)

    monkeypatch.setattr(mock_client, "get_schema", counting_get_schema)
    codec = Codec(Request, registry_url="mock://unknown-ids")
    for schema_id in range(1, 2001):
        _rejected(codec.decode(_confluent(schema_id)))

    for _ in range(100):
        rejected = _rejected(codec.decode(_confluent(5000)))
        assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "5000" in rejected.reason
    _rejected(codec.decode(_confluent(1)))

    assert asked[5000] == 1
    assert asked[1] == 2  # the oldest answers leave the cache: it is bounded


def test_a_failing_registry_makes_messages_wait_and_is_asked_again_only_after_its_retry_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mock_client = type(SchemaRegistryClient.new_client({"url": "mock://probe"}))
    asked: list[int] = []

    def failing_get_schema(self: Any, schema_id: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(schema_id)
        raise ConnectionError("registry down")

    monkeypatch.setattr(mock_client, "get_schema", failing_get_schema)
    codec = Codec(Request, registry_url="mock://failing")
    now = time.monotonic()
    reasons = []
    with monkeypatch.context() as clock:
        clock.setattr(time, "monotonic", lambda: now)
        for schema_id in range(1, 101):
            with pytest.raises(SchemaRegistryUnavailable) as away:
                codec.decode(_confluent(schema_id))
            reasons.append(str(away.value))
        now += 60.0
        with pytest.raises(SchemaRegistryUnavailable):
            codec.decode(_confluent(7))

    assert asked == [1, 7]
    assert "registry down" in reasons[0] and all("registry failing" in reason for reason in reasons[1:])


def test_a_registry_nobody_answers_for_is_an_outage_to_wait_for_not_a_bad_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # a port that refuses connections: the registry is down
    codec = Codec(Request, registry_url=url)

    with pytest.raises(SchemaRegistryUnavailable, match="schema id 3"):
        codec.decode(_confluent(3))
    with pytest.raises(SchemaRegistryUnavailable, match=r"cannot register rig\.Request"):
        codec.encode(SAMPLES["Request"])


def test_confluent_message_of_another_schema_is_rejected_as_unknown_schema() -> None:
    url = "mock://other-schema"
    decision = Codec(Decision, registry_url=url).encode(SAMPLES["Decision"])
    rejected = _rejected(Codec(Request, registry_url=url).decode(decision))
    assert rejected.error_type == ErrorType.UNKNOWN_SCHEMA and "rig.Decision" in rejected.reason


def test_confluent_message_with_unregistered_id_or_without_registry_is_unknown_schema() -> None:
    body = Codec(Request).encode(SAMPLES["Request"])[10:]
    data = b"\x00" + (4242).to_bytes(4, "big") + body
    unregistered = _rejected(Codec(Request, registry_url="mock://empty").decode(data))
    no_registry = _rejected(Codec(Request).decode(data))
    assert unregistered.error_type == no_registry.error_type == ErrorType.UNKNOWN_SCHEMA
    assert "4242" in unregistered.reason and "registry" in no_registry.reason


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_truncation_of_a_body_is_rejected_as_malformed(name: SchemaName) -> None:
    codec = codec_of(name)
    data = codec.encode(SAMPLES[name])
    for cut in range(2, len(data)):
        assert _rejected(codec.decode(data[:cut])).error_type == ErrorType.MALFORMED, cut


def test_trailing_garbage_after_the_record_is_rejected_as_malformed() -> None:
    codec = Codec(Outcome)
    rejected = _rejected(codec.decode(codec.encode(SAMPLES["Outcome"]) + b"\x00\x01"))
    assert rejected.error_type == ErrorType.MALFORMED and "2 trailing bytes" in rejected.reason


@pytest.mark.parametrize(
    ("name", "record", "field"),
    [
        ("Request", {"request_id": "r", "event_time": T0}, "entity_id"),
        ("Outcome", {"request_id": "r", "entity_id": "e", "event_time": T0}, "label"),
        ("Prediction", {**to_plain(SAMPLES["Prediction"]), "golden": {"model_version": "v"}}, "golden.score"),
    ],
)
def test_json_missing_a_required_field_is_rejected_naming_the_field(
    name: str, record: dict[str, Any], field: str
) -> None:
    rejected = _rejected(codec_of(name, allow_json=True).decode(json.dumps(record).encode()))
    assert (
        rejected.error_type == ErrorType.INVALID_RECORD
        and f"missing required field '{field}'" in rejected.reason
    )


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("Request", {"entity_id": 17}, "entity_id"),
        ("Request", {"event_time": "yesterday"}, "event_time"),
        ("Request", {"features": {"basket_value": "high"}}, "features['basket_value']"),
        ("Request", {"context": ["web"]}, "context"),
        ("Outcome", {"label": 0.5}, "label"),
        ("Outcome", {"label": True}, "label"),
        ("DeadLetter", {"partition": 2**31}, "partition"),
        ("JoinedOutcome", {"role": "champion"}, "role"),
        (
            "Prediction",
            {"experiments": [{**to_plain(SAMPLES["Prediction"].experiments[0]), "mode": "canary"}]},
            "mode",
        ),
        ("Decision", {"p_value": "small"}, "p_value"),
    ],
)
def test_json_with_a_wrong_type_is_rejected_naming_the_field(
    name: SchemaName, change: dict[str, Any], field: str
) -> None:
    codec = codec_of(name, allow_json=True)
    record = json.loads(codec.encode_json(SAMPLES[name]))
    rejected = _rejected(codec.decode(json.dumps({**record, **change}).encode()))
    assert rejected.error_type == ErrorType.INVALID_RECORD and field in rejected.reason


def test_json_with_an_unknown_field_is_rejected_naming_it() -> None:
    rejected = _rejected(
        Codec(Request, allow_json=True).decode(json.dumps({**JSON_REQUEST, "featurs": {}}).encode())
    )
    assert rejected.error_type == ErrorType.INVALID_RECORD and "featurs" in rejected.reason


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": "r\ud800"}, "request_id"),
        ({"entity_id": "\udfff"}, "entity_id"),
        ({"context": {"channel": "w\udc80b"}}, "context['channel']"),
        ({"features": {"\ud800": 1.0}}, "features key"),
    ],
)
def test_json_with_a_lone_surrogate_is_rejected_naming_the_field(change: dict[str, Any], field: str) -> None:
    rejected = _rejected(
        Codec(Request, allow_json=True).decode(json.dumps({**JSON_REQUEST, **change}).encode())
    )
    assert rejected.error_type == ErrorType.INVALID_RECORD
    assert field in rejected.reason and "surrogate" in rejected.reason


def test_json_with_a_surrogate_pair_is_accepted_as_the_character_it_escapes() -> None:
    decoded = Codec(Request, allow_json=True).decode(json.dumps({**JSON_REQUEST, "entity_id": "😀"}).encode())
    assert isinstance(decoded, Request) and decoded.entity_id == "😀"


def test_json_number_beyond_a_double_is_rejected_naming_the_field() -> None:
    data = json.dumps({**JSON_REQUEST, "features": {"basket_value": 10**400}}).encode()
    rejected = _rejected(Codec(Request, allow_json=True).decode(data))
    assert rejected.error_type == ErrorType.INVALID_RECORD and "basket_value" in rejected.reason


def test_broken_json_and_json_where_not_allowed_are_rejected_as_malformed() -> None:
    broken = _rejected(Codec(Request, allow_json=True).decode(b'  {"request_id": "r",'))
    not_allowed = _rejected(Codec(Request).decode(json.dumps(JSON_REQUEST).encode()))
    assert broken.error_type == not_allowed.error_type == ErrorType.MALFORMED
    assert "invalid JSON" in broken.reason and "not accepted" in not_allowed.reason


def test_oversized_messages_are_rejected_before_parsing() -> None:
    codec = Codec(Request, allow_json=True, max_bytes=64)
    big = replace(SAMPLES["Request"], context={"note": "x" * 100})
    for data in (Codec(Request).encode(big), Codec(Request).encode_json(big)):
        rejected = _rejected(codec.decode(data))
        assert rejected.error_type == ErrorType.OVERSIZED and str(len(data)) in rejected.reason


# -- encode errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_time": "yesterday"}, "event_time"),
        ({"features": {"x": "high"}}, "features"),
        ({"entity_id": None}, "entity_id"),
    ],
)
def test_encode_of_an_invalid_record_raises_codec_error_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    record = replace(SAMPLES["Request"], **changes)
    for encode in (Codec(Request).encode, Codec(Request).encode_json):
        with pytest.raises(CodecError, match=field):
            encode(record)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"request_id": "r", "event_time": T0}, "entity_id"),
        ({**to_plain(SAMPLES["Request"]), "featurs": {}}, "featurs"),
    ],
)
def test_a_record_missing_a_field_or_with_an_unknown_one_cannot_be_built_naming_it(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(TypeError, match=field):
        Request(**fields)


def test_encode_refuses_a_record_of_another_class() -> None:
    for encode in (Codec(Request).encode, Codec(Request).encode_json):
        with pytest.raises(CodecError, match="expected a Request record, got Outcome"):
            encode(SAMPLES["Outcome"])  # type: ignore[arg-type]


def test_encode_of_a_nested_invalid_value_names_its_record_and_field() -> None:
    bad = replace(SAMPLES["Prediction"], golden=ModelScore(model_version="v", score="high"))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"ModelScore\.score"):
        Codec(Prediction).encode(bad)


def test_encode_refuses_a_record_larger_than_max_bytes() -> None:
    with pytest.raises(CodecError, match="max_bytes"):
        Codec(Request, max_bytes=40).encode(replace(SAMPLES["Request"], context={"note": "x" * 100}))


# -- typed decoding --------------------------------------------------------------------------------
def test_a_message_that_decodes_but_does_not_fit_the_record_class_is_rejected_naming_the_field(
    tmp_path: Path,
) -> None:
    schema = json.loads((SCHEMAS_DIR / "Outcome.avsc").read_text())
    schema["fields"] = [{**f, "type": "string"} if f["name"] == "label" else f for f in schema["fields"]]
    (tmp_path / "Outcome.avsc").write_text(json.dumps(schema))
    codec = Codec(Outcome, schemas_dir=tmp_path)
    body = io.BytesIO()
    record = {**to_plain(SAMPLES["Outcome"]), "label": "yes"}
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)

    rejected = _rejected(codec.decode(b"\xc3\x01" + codec.fingerprint + body.getvalue()))

    assert rejected.error_type == ErrorType.INVALID_RECORD and "$.label" in rejected.reason


def test_a_prediction_encodes_to_the_bytes_of_the_same_values_written_as_a_plain_dict() -> None:
    """The typed record changes nothing on the wire: the bytes are those fastavro writes for a dict."""
    record = {
        "request_id": "req-7",
        "entity_id": "customer-3",
        "event_time": T0,
        "score": 0.25,
        "answered_by": "churn-v2",
        "golden": {"model_version": "churn-v2", "score": 0.25},
        "experiments": [{"experiment": "wide", "model_version": "churn-v5", "mode": "shadow", "score": 0.5}],
        "transform_version": "tf-7",
        "cache_hit": False,
        "entity_found": True,
        "timings_ms": {"decode": 0.01, "total": 1.5, "kafka_to_publish": 3.25},
    }
    schema = fastavro.parse_schema(json.loads((SCHEMAS_DIR / "Prediction.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    codec = Codec(Prediction)
    typed = Prediction(
        request_id="req-7",
        entity_id="customer-3",
        event_time=T0,
        score=0.25,
        answered_by="churn-v2",
        golden=ModelScore(model_version="churn-v2", score=0.25),
        experiments=[ExperimentScore(experiment="wide", model_version="churn-v5", mode="shadow", score=0.5)],
        transform_version="tf-7",
        timings_ms={"decode": 0.01, "total": 1.5, "kafka_to_publish": 3.25},
    )

    assert codec.encode(typed) == b"\xc3\x01" + codec.fingerprint + body.getvalue()
