"""Avro/JSON encode and decode against the schemas in `schemas/`; decoding never raises.

Wire formats, told apart by their first bytes:
- Avro single-object encoding (default): 0xC3 0x01, the 8-byte little-endian CRC-64-AVRO fingerprint
  of the schema's Parsing Canonical Form, then the Avro binary body. Decoding also accepts the
  fingerprint the reference `avro` package computes for the same schema (see `_avro_package_form`).
- Confluent wire format (when a schema registry URL is set): 0x00, the 4-byte big-endian schema id,
  then the Avro binary body. Writer schemas of other ids are fetched and resolved to ours.
- JSON (when allowed): a UTF-8 object checked against the schema; defaults fill missing fields;
  union values are given plainly (`"x"`, not `{"string": "x"}`); unknown fields are rejected.

A codec is typed by its record class (`rig.wire.records`), whose name names the schema: `Codec(Prediction)`
reads and writes `schemas/Prediction.avsc`. Timestamp-millis fields are int milliseconds since the epoch
(JSON may also give them as ISO-8601 text with a timezone).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import io
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import msgspec
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema, fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from rig.errors import CodecError, SchemaRegistryUnavailable
from rig.wire.avro_compiler import INT_RANGES
from rig.wire.avro_reader import compile_reader
from rig.wire.avro_writer import compile_writer
from rig.wire.records import Record, to_plain

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0x00
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DEFAULT_MAX_BYTES = 1_000_000
"""A codec's `max_bytes` unless given: Kafka's default limit on a message (1 MiB) with room for headers."""
_MAX_CACHED_SCHEMA_IDS = 1024
# After a registry failure, ids not cached yet wait this long before it is asked again: a lookup is a
# synchronous HTTP call (on the event loop in the predict path), and an outage must not make each
# message one. The same reason bounds each call (no retries inside the client: the caller's batch is
# retried, with the worker's backoff and readiness).
_REGISTRY_RETRY_S = 5.0
_REGISTRY_TIMEOUT_S = 5.0
_REGISTRY_REFUSALS = frozenset({404, 409, 422})
"""HTTP statuses that are the registry's answer (no such id or subject, an incompatible or invalid
schema); any other failure means it is away."""
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

T = TypeVar("T", bound=Record)


class ErrorType(StrEnum):
    """Why a message was rejected; the `error_type` of a dead letter."""

    MALFORMED = "malformed"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_RECORD = "invalid_record"
    INVALID_VALUE = "invalid_value"
    OVERSIZED = "oversized"
    UNKNOWN_ENTITY = "unknown_entity"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not be decoded: its original bytes and why, in words a person reads."""

    raw: bytes
    reason: str
    error_type: str


class _Invalid(CodecError):
    """A JSON value that does not fit the schema; the message names the field (never leaves the codec)."""


@functools.lru_cache(maxsize=64)
def _schema_json(name: str, schemas_dir: Path) -> dict[str, Any]:
    path = schemas_dir / f"{name}.avsc"
    if not path.is_file():
        known = sorted(p.stem for p in schemas_dir.glob("*.avsc"))
        raise CodecError(f"unknown schema {name!r}: no {path}; known schemas: {known}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CodecError(f"schema file {path} is not valid JSON: {exc}") from exc


def schema_json(name: str) -> dict[str, Any]:
    """A schema of `schemas/` as its JSON (a copy: safe to change)."""
    return copy.deepcopy(_schema_json(name, SCHEMAS_DIR))


@functools.lru_cache(maxsize=64)
def load_schema(name: str, schemas_dir: Path | None = None) -> dict[str, Any]:
    """Load and parse one Avro schema, once per process.

    Args:
        name: Schema file name without `.avsc`, e.g. "Request".
        schemas_dir: Folder of the `.avsc` files; the repository's `schemas/` by default.

    Returns:
        The schema parsed by `fastavro.parse_schema`; shared, so do not mutate it.

    Raises:
        CodecError: The file does not exist, or is not a valid Avro record schema.
    """
    raw = _schema_json(name, schemas_dir or SCHEMAS_DIR)
    try:
        parsed = parse_schema(copy.deepcopy(raw))
    except Exception as exc:
        raise CodecError(f"schema {name!r} is not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise CodecError(f"schema {name!r} is not an Avro record schema")
    return parsed


def _strip_logical_types(schema: Any) -> Any:
    """The same schema without logicalType: readers then return timestamps as int milliseconds."""
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(item) for item in schema]
    return schema


def _crc64_avro(canonical: str) -> bytes:
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _fingerprints(parsed: dict[str, Any]) -> tuple[bytes, bytes]:
    """The fingerprint of a schema's Parsing Canonical Form, and the one the `avro` package computes."""
    return _crc64_avro(to_parsing_canonical_form(parsed)), _crc64_avro(_avro_package_form(parsed))


def _avro_package_form(parsed: dict[str, Any]) -> str:
    """The canonical form of a parsed schema as the reference `avro` package (1.11, 1.12) writes it.

    It differs from the specification's form (fastavro's) in one way: a primitive declared as an
    object with attributes, e.g. `{"type": "long", "logicalType": "timestamp-millis"}`, stays
    `{"type":"long"}` instead of `"long"`. Producers using that package put the fingerprint of this
    form in single-object headers.
    """

    def canonical(schema: Any) -> Any:
        if isinstance(schema, str):
            return schema  # a primitive, or a named type defined earlier (by its full name)
        if isinstance(schema, list):
            return [canonical(branch) for branch in schema]
        kind = schema["type"]
        if kind in _PRIMITIVES:
            return {"type": kind} if len(schema) > 1 else kind
        form: dict[str, Any] = {"name": schema["name"]} if "name" in schema else {}
        form["type"] = kind
        if kind == "record":
            form["fields"] = [{"name": f["name"], "type": canonical(f["type"])} for f in schema["fields"]]
        elif kind == "enum":
            form["symbols"] = schema["symbols"]
        elif kind == "array":
            form["items"] = canonical(schema["items"])
        elif kind == "map":
            form["values"] = canonical(schema["values"])
        elif kind == "fixed":
            form["size"] = schema["size"]
        return form

    return json.dumps(canonical(parsed), separators=(",", ":"))


@functools.lru_cache(maxsize=16)
def _schemas_by_fingerprint(schemas_dir: Path) -> dict[bytes, str]:
    """The full name of every schema of a folder by both its fingerprints: read once per process, so
    that naming a message of another schema, or refusing an unknown one, costs one dict lookup."""
    names: dict[bytes, str] = {}
    for path in sorted(schemas_dir.glob("*.avsc")):
        try:
            other = load_schema(path.stem, schemas_dir)
        except CodecError:
            continue
        for fp in _fingerprints(other):
            names.setdefault(fp, other["name"])
    return names


def _registry_refused(error: Exception) -> bool:
    """Whether a registry call's error is the registry's answer (see `_REGISTRY_REFUSALS`), not an
    outage."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return isinstance(error, SchemaRegistryError) and error.http_status_code in _REGISTRY_REFUSALS


@functools.cache
def _registry_client(url: str) -> Any:
    """One client per URL, so that codecs on one `mock://` URL share one in-memory registry."""
    from confluent_kafka.schema_registry import SchemaRegistryClient  # heavy: imported on use

    return SchemaRegistryClient.new_client({"url": url, "timeout": _REGISTRY_TIMEOUT_S, "max.retries": 0})


class Shape(Protocol):
    """How a record class is laid out on the wire when that is not its schema file: e.g. a request
    whose entity is the deployment's typed join keys (`rig.wire.requests.KeySpec`)."""

    @property
    def schema(self) -> dict[str, Any]:
        """The Avro record schema (JSON form) of the wire layout."""
        ...

    def to_record(self, plain: dict[str, Any]) -> dict[str, Any]:
        """A decoded wire record as the record class's fields. Raises ValueError when it cannot be."""
        ...

    def to_wire(self, plain: dict[str, Any]) -> dict[str, Any]:
        """The record class's fields as the wire record."""
        ...


class Codec(Generic[T]):
    """Encodes and decodes records of one class; see the module docstring for the wire formats."""

    def __init__(
        self,
        record_type: type[T],
        *,
        registry_url: str | None = None,
        subject: str | None = None,
        allow_json: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        schemas_dir: Path | None = None,
        shape: Shape | None = None,
    ) -> None:
        """Prepare headers and parsed schemas once, so that no message parses a schema.

        Args:
            record_type: The record class (`rig.wire.records`); its name names the schema file,
                e.g. `Request` for `schemas/Request.avsc`.
            registry_url: Schema registry URL (`mock://...` in tests); switches encoding to the
                Confluent wire format.
            subject: Registry subject; the record's full name (e.g. `rig.Request`) by default.
            allow_json: Accept JSON objects on decode.
            max_bytes: Messages longer than this are rejected as oversized.
            schemas_dir: Folder of the `.avsc` files; the repository's `schemas/` by default.
            shape: The wire layout, when it is not the record class's schema file.

        Raises:
            CodecError: The schema cannot be loaded.
        """
        self.record_type = record_type
        self.schema_name = schema_name = record_type.__name__
        self._schemas_dir = schemas_dir or SCHEMAS_DIR
        if (
            shape is not None
            and schemas_dir is None
            and shape.schema == _schema_json(schema_name, SCHEMAS_DIR)
        ):
            shape = None  # laid out as its schema file says (e.g. the synthetic world's entity_id): no shape
        self._shape = shape
        if shape is None:
            self.schema = load_schema(schema_name, schemas_dir)
            raw = _schema_json(schema_name, self._schemas_dir)
        else:
            raw = shape.schema
            try:
                # fastavro types any schema's result as any schema; a record schema's is its dict
                self.schema = cast(dict[str, Any], parse_schema(copy.deepcopy(raw)))
            except Exception as exc:
                raise CodecError(f"the {schema_name} wire schema is not a valid Avro schema: {exc}") from exc
        self.full_name: str = self.schema["name"]
        self.allow_json = allow_json
        self.max_bytes = max_bytes
        self._raw_json = json.dumps(raw)
        self._reader = parse_schema(_strip_logical_types(raw))
        self._json_schema = cast(dict[str, Any], expand_schema(raw))  # a record schema expands to a dict
        # A record laid out by a shape is rewritten as a dict first: it keeps fastavro's writer.
        self._compiled = compile_writer(self._json_schema) if shape is None else None
        # The compiled reader builds the record classes without msgspec's conversion, so only for the
        # repository's schemas, which tests/unit/wire/test_records.py keeps equal to the classes.
        self._read_compiled = None
        if shape is None and schemas_dir is None:
            classes = {cls.__name__: cls for cls in Record.__subclasses__()}
            self._read_compiled = compile_reader(self._json_schema, {**classes, schema_name: record_type})
        self._canonical = to_parsing_canonical_form(self.schema)
        self.fingerprint, avro_package_fingerprint = _fingerprints(self.schema)
        self._accepted_fingerprints = frozenset({self.fingerprint, avro_package_fingerprint})
        self._other_schemas = _schemas_by_fingerprint(self._schemas_dir)
        self._header = SINGLE_OBJECT_MAGIC + self.fingerprint
        self._registry_url = registry_url
        self._subject = subject or self.full_name
        self._schema_id: int | None = None
        self._writers: OrderedDict[int, dict[str, Any] | str | None] = OrderedDict()
        self._registry_retry_at = 0.0

    # -- encode -------------------------------------------------------------------------------
    def encode(self, record: T) -> bytes:
        """Encode one record in the configured Avro wire format.

        Args:
            record: A record of this codec's class; timestamps as int ms (an aware datetime is
                written the same). Like other Avro writers, numbers are coerced (an int for a
                double, a bool for a number, a numpy scalar for its value).

        Returns:
            The framed message.

        Raises:
            CodecError: The record is not of this codec's class or a value does not fit the schema
                (the message names the field), it is larger than max_bytes, or the schema registry
                refused the schema.
        """
        header = self._header if self._registry_url is None else self._confluent_header()
        data = self._compiled_message(header, record)
        if data is None:
            buffer = io.BytesIO()
            buffer.write(header)
            self._write_body(buffer, self._plain(record))
            data = buffer.getvalue()
        if len(data) > self.max_bytes:
            raise CodecError(f"{self.full_name} record is {len(data)} bytes, over max_bytes={self.max_bytes}")
        return data

    def encode_json(self, record: T) -> bytes:
        """Encode one record as compact UTF-8 JSON (timestamps as int ms, bytes as latin-1 text).

        Args:
            record: As for `encode`.

        Returns:
            The JSON document; `decode` of a codec with allow_json reads it back.

        Raises:
            CodecError: The record does not fit the schema.
        """
        plain = self._plain(record)
        self._write_body(io.BytesIO(), plain)
        return json.dumps(plain, default=_json_default, separators=(",", ":")).encode()

    def _compiled_message(self, header: bytes, record: T) -> bytes | None:
        """The message written by the compiled writer, or None for fastavro to write it (no
        compiled writer, or a value it refuses: fastavro then names the field or coerces it)."""
        if self._compiled is None or type(record) is not self.record_type:
            return None
        try:
            return header + self._compiled(record)
        except Exception:  # noqa: BLE001 - any refusal means: let fastavro write it (or say why not)
            return None

    def _plain(self, record: T) -> dict[str, Any]:
        """The record as the plain dict fastavro writes (bytes and datetimes kept as they are)."""
        if not isinstance(record, self.record_type):
            raise CodecError(f"expected a {self.schema_name} record, got {type(record).__name__}")
        try:
            plain = to_plain(record)
            return plain if self._shape is None else self._shape.to_wire(plain)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"invalid {self.full_name} record: {exc}") from exc

    def _write_body(self, buffer: io.BytesIO, record: dict[str, Any]) -> None:
        try:
            schemaless_writer(buffer, self.schema, record, strict_allow_default=True)
        except Exception as exc:
            try:  # the validator names the field (with its path); the writer's message is the fallback
                validate(record, self.schema, raise_errors=True)
                detail = f"{type(exc).__name__}: {exc}"
            except ValidationError as validation:
                detail = "; ".join(str(error) for error in validation.errors)
            except (ValueError, TypeError) as validation:
                detail = str(validation)
            raise CodecError(f"invalid {self.full_name} record: {detail}") from exc

    def register(self) -> None:
        """Look up (registering it if need be) this codec's schema id in the schema registry, once: an
        `encode` after it never calls the registry. Nothing to do without a registry.

        Raises:
            SchemaRegistryUnavailable: the registry does not answer (wait and call again).
            CodecError: the registry refused the schema (e.g. incompatible with the subject's).
        """
        if self._registry_url is not None and self._schema_id is None:
            from confluent_kafka.schema_registry import Schema

            try:
                client = _registry_client(str(self._registry_url))
                self._schema_id = client.register_schema(self._subject, Schema(self._raw_json, "AVRO"))
            except Exception as exc:
                what = f"cannot register {self.full_name} under {self._subject!r}: {exc}"
                if _registry_refused(exc):
                    raise CodecError(what) from exc
                raise SchemaRegistryUnavailable(what) from exc

    def _confluent_header(self) -> bytes:
        self.register()
        assert self._schema_id is not None, "register() sets it or raises"  # never schema id 0
        return bytes([CONFLUENT_MAGIC]) + int(self._schema_id).to_bytes(4, "big")

    # -- decode -------------------------------------------------------------------------------
    def decode(self, data: bytes | None) -> T | Rejected:
        """Decode one message in any configured format. Bad bytes never raise: they are Rejected.

        Args:
            data: The message value as read from Kafka (None, a tombstone's, is Rejected).

        Returns:
            The record, or a Rejected with the reason and an ErrorType (INVALID_RECORD, naming the
            field, for a message that decodes but does not fit the record class).

        Raises:
            SchemaRegistryUnavailable: a Confluent-framed message whose schema id is not cached, while
                the registry does not answer: the message is fine, it must wait (never dead-lettered).
        """
        if not isinstance(data, bytes):
            if data is None:
                return Rejected(b"", "message has no value (a tombstone)", ErrorType.MALFORMED)
            data = bytes(data)
        if len(data) > self.max_bytes:
            reason = f"message is {len(data)} bytes, over the limit of {self.max_bytes}"
            return Rejected(data, reason, ErrorType.OVERSIZED)
        if not data:
            return Rejected(data, "empty message", ErrorType.MALFORMED)
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                return Rejected(data, "truncated single-object header", ErrorType.MALFORMED)
            if data[2:10] not in self._accepted_fingerprints:
                return Rejected(data, self._foreign_fingerprint(data[2:10]), ErrorType.UNKNOWN_SCHEMA)
            record = self._compiled_record(data)
            return record if record is not None else self._read_body(data, 10, None)
        if data[0] == CONFLUENT_MAGIC:
            return self._decode_confluent(data)
        if data[:1] in b"{ \t\r\n" and data.lstrip()[:1] == b"{":
            if not self.allow_json:
                return Rejected(data, f"JSON is not accepted for {self.full_name}", ErrorType.MALFORMED)
            return self._decode_json(data)
        accepted = "Avro single-object (0xC3 0x01)" + (", JSON object" if self.allow_json else "")
        if self._registry_url is not None:
            accepted += ", Confluent (0x00)"
        reason = f"unknown message format (first byte 0x{data[0]:02x}); expected {accepted}"
        return Rejected(data, reason, ErrorType.MALFORMED)

    def _compiled_record(self, data: bytes) -> T | None:
        """The single-object message's record read by the compiled reader, or None for fastavro to read
        it (no compiled reader, or anything but a well-formed body: fastavro then says what is wrong)."""
        if self._read_compiled is None:
            return None
        try:
            record, end = self._read_compiled(data, 10)
        except Exception:  # noqa: BLE001 - any refusal means: let fastavro read it (and say why)
            return None
        return record if end == len(data) else None

    def _read_body(self, data: bytes, start: int, writer: dict[str, Any] | None) -> T | Rejected:
        buffer = io.BytesIO(data)
        buffer.seek(start)
        try:
            if writer is None:
                record = schemaless_reader(buffer, self._reader, None)
            else:
                record = schemaless_reader(buffer, writer, self._reader)
        except (EOFError, IndexError):
            return Rejected(data, f"{self.full_name} body ends early (truncated)", ErrorType.MALFORMED)
        except Exception as exc:  # noqa: BLE001 - hostile bytes make fastavro raise many types
            reason = f"corrupt {self.full_name} body: {type(exc).__name__}: {str(exc)[:200]}"
            return Rejected(data, reason, ErrorType.MALFORMED)
        if buffer.tell() != len(data):
            reason = f"{len(data) - buffer.tell()} trailing bytes after the {self.full_name} record"
            return Rejected(data, reason, ErrorType.MALFORMED)
        return self._typed(data, record)

    def _typed(self, data: bytes, record: Any) -> T | Rejected:
        """The decoded plain record as this codec's class, or why it does not fit (naming the field)."""
        try:
            if self._shape is not None:
                record = self._shape.to_record(record)
            return msgspec.convert(record, self.record_type)
        except (msgspec.ValidationError, ValueError) as exc:
            return Rejected(data, f"invalid {self.full_name}: {exc}", ErrorType.INVALID_RECORD)

    def _foreign_fingerprint(self, fp: bytes) -> str:
        other = self._other_schemas.get(fp)
        if other is not None:
            return f"message is a {other}, not a {self.full_name} (fingerprint {fp.hex()})"
        return f"unknown schema fingerprint {fp.hex()}; {self.full_name} has {self.fingerprint.hex()}"

    def _decode_confluent(self, data: bytes) -> T | Rejected:
        if self._registry_url is None:
            reason = "Confluent wire format (magic byte 0x00) but no schema registry is configured"
            return Rejected(data, reason, ErrorType.UNKNOWN_SCHEMA)
        if len(data) < 5:
            return Rejected(data, "truncated Confluent header", ErrorType.MALFORMED)
        writer = self._cached_writer_schema(int.from_bytes(data[1:5], "big"))
        if isinstance(writer, str):
            return Rejected(data, writer, ErrorType.UNKNOWN_SCHEMA)
        return self._read_body(data, 5, writer)

    def _cached_writer_schema(self, schema_id: int) -> dict[str, Any] | str | None:
        """`_writer_schema` behind a cache of the most recently used ids, refusals included, so that a
        flood of unknown ids costs one registry call each; for `_REGISTRY_RETRY_S` after the registry
        failed, an uncached id raises SchemaRegistryUnavailable again without calling it."""
        if schema_id in self._writers:
            self._writers.move_to_end(schema_id)
            return self._writers[schema_id]
        now = time.monotonic()
        if now < self._registry_retry_at:
            wait = self._registry_retry_at - now
            raise SchemaRegistryUnavailable(
                f"schema registry failing; schema id {schema_id} not looked up (asked again in {wait:.1f} s)"
            )
        try:
            writer = self._writer_schema(schema_id)
        except SchemaRegistryUnavailable:
            self._registry_retry_at = now + _REGISTRY_RETRY_S
            raise
        self._writers[schema_id] = writer
        if len(self._writers) > _MAX_CACHED_SCHEMA_IDS:
            self._writers.popitem(last=False)
        return writer

    def _writer_schema(self, schema_id: int) -> dict[str, Any] | str | None:
        """The writer schema of an id: None when it is ours, a parsed schema to resolve to ours, or
        the reason it is unusable (the registry's answer, cached).

        Raises:
            SchemaRegistryUnavailable: the registry did not answer (an outage is never an answer).
        """
        try:
            registered = _registry_client(str(self._registry_url)).get_schema(schema_id)
        except Exception as exc:  # network errors of any kind (re-raised): the registry is away
            if _registry_refused(exc):
                return f"schema id {schema_id} unknown to the registry: {exc}"
            raise SchemaRegistryUnavailable(
                f"schema registry failing for schema id {schema_id}: {exc}"
            ) from exc
        try:
            writer = parse_schema(_strip_logical_types(json.loads(registered.schema_str)))
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types for a bad schema
            return f"schema id {schema_id} is not a valid Avro schema: {exc}"
        if not isinstance(writer, dict) or writer.get("name") != self.full_name:
            name = writer.get("name") if isinstance(writer, dict) else writer
            return f"schema id {schema_id} is {name}, not {self.full_name}"
        return None if to_parsing_canonical_form(writer) == self._canonical else writer

    def _decode_json(self, data: bytes) -> T | Rejected:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as exc:
            return Rejected(data, f"invalid JSON: {exc}", ErrorType.MALFORMED)
        try:
            record = _from_json(self._json_schema, value, "")
        except _Invalid as exc:
            return Rejected(data, f"invalid {self.full_name}: {exc}", ErrorType.INVALID_RECORD)
        return self._typed(data, record)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dt.datetime):
        return to_millis(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_millis(value: dt.datetime) -> int:
    """Milliseconds since the epoch of a datetime, a naive one taken as UTC (as Avro writers do)."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return (aware - _EPOCH) // dt.timedelta(milliseconds=1)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _from_json(schema: Any, value: Any, path: str) -> Any:
    """Check a parsed JSON value against an expanded schema and return it in decoded form."""
    where = path or "record"
    if isinstance(schema, list):
        if value is None and "null" in schema:
            return None
        branches = [branch for branch in schema if branch != "null"]
        if len(branches) == 1:
            return _from_json(branches[0], value, path)
        for branch in branches:
            try:
                return _from_json(branch, value, path)
            except _Invalid:
                continue
        raise _Invalid(f"{where}: {_kind(value)} fits none of {schema}")
    kind = schema if isinstance(schema, str) else schema["type"]
    if (
        isinstance(schema, dict)
        and schema.get("logicalType") == "timestamp-millis"
        and isinstance(value, str)
    ):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(f"{where}: {value!r} is not an ISO-8601 time or int milliseconds") from None
        if moment.tzinfo is None:
            raise _Invalid(f"{where}: time {value!r} needs a timezone (e.g. Z)")
        return to_millis(moment)
    if kind == "null" and value is None:
        return None
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind in INT_RANGES and isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.7e12 from a JSON writer that prints every number as a float
    if kind in INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = INT_RANGES[kind]
        if not low <= value <= high:
            raise _Invalid(f"{where}: {value} is out of the range of an Avro {kind}")
        return value
    if kind in ("float", "double") and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a JSON integer beyond any double, e.g. 10**400
            raise _Invalid(f"{where}: {str(value)[:40]}... is out of the range of an Avro {kind}") from None
    if kind == "string" and isinstance(value, str):
        return _unicode(value, where)
    if kind == "bytes" and isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Invalid(f"{where}: bytes must be latin-1 text (one char per byte)") from None
    if kind == "enum" and isinstance(value, str):
        if value not in schema["symbols"]:
            raise _Invalid(f"{where}: {value!r} is not one of {schema['symbols']}")
        return value
    if kind == "array" and isinstance(value, list):
        return [_from_json(schema["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        return {
            _unicode(k, f"{where} key"): _from_json(schema["values"], v, f"{path}[{k!r}]")
            for k, v in value.items()
        }
    if kind == "record" and isinstance(value, dict):
        return _record_from_json(schema, value, path)
    raise _Invalid(f"{where}: expected {kind}, got {_kind(value)} {str(value)[:40]!r}")


def _unicode(text: str, where: str) -> str:
    """`text` if it is valid Unicode. JSON can escape lone surrogates (`"\\ud800"`); no UTF-8 writer
    (Avro, Kafka keys, Redis) accepts them, so they must stop here rather than fail a later stage."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"{where}: {text[:40]!r} holds a lone surrogate (not valid Unicode)") from None
    return text


def _record_from_json(schema: dict[str, Any], value: dict[str, Any], path: str) -> dict[str, Any]:
    names = [field["name"] for field in schema["fields"]]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise _Invalid(f"{path or 'record'}: unknown field(s) {unknown}; {schema['name']} has {names}")
    record = {}
    for field in schema["fields"]:
        name = field["name"]
        field_path = f"{path}.{name}" if path else name
        if name in value:
            record[name] = _from_json(field["type"], value[name], field_path)
        elif "default" in field:
            record[name] = _from_json(field["type"], copy.deepcopy(field["default"]), field_path)
        else:
            raise _Invalid(f"missing required field {field_path!r}")
    return record
