"""Requests name their entity as the Feast repo does: by its typed join keys.

A deployment's entity is a tuple of join keys (`KeySpec`), e.g. `driver_id` (int64) for Feast's
quickstart repo or `entity_id` (string) for the synthetic world. On the wire a request carries them
as fields of their own:

    {"request_id": "r1", "driver_id": 1001, "event_time": 1735689600000}

and an Avro request is written with the schema `KeySpec.request_schema` derives (the synthetic
world's is exactly `schemas/Request.avsc`). Inside the rig an entity is one string, its *entity id*:
the single key's value as text (`1001`), or the JSON array of the values for several keys
(`[1001,"eu"]`). It keys predictions and outcomes on Kafka, so that every producer, whatever its
language, can compute it; `KeySpec.values` turns it back into typed values for Feast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from rig.wire.codec import schema_json

KeyKind = Literal["string", "int64", "int32"]
"""Join key types the rig serves (Feast value types STRING, INT64, INT32)."""

_AVRO_TYPES: dict[str, str] = {"string": "string", "int64": "long", "int32": "int"}
_INT_RANGE = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1)}
ENTITY_ID = "entity_id"


@dataclass(frozen=True)
class JoinKey:
    """One join key of the deployment's entity."""

    name: str
    kind: KeyKind

    def parse(self, text: str) -> str | int:
        """The key's typed value from its text in an entity id.

        Raises:
            ValueError: not a value of this key's type.
        """
        if self.kind == "string":
            return text
        value = int(text)
        low, high = _INT_RANGE[self.kind]
        if not low <= value <= high:
            raise ValueError(f"{self.name}={value} is out of the {self.kind} range")
        return value


@dataclass(frozen=True)
class KeySpec:
    """The join keys that name an entity; also the wire shape of a request (`rig.wire.codec.Shape`)."""

    keys: tuple[JoinKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("an entity has at least one join key")
        names = [key.name for key in self.keys]
        reserved = {"request_id", "event_time", "features", "context"} & set(names)
        if reserved or len(set(names)) != len(names):
            raise ValueError(f"join keys {names} repeat or use a request field name ({sorted(reserved)})")

    @cached_property  # read for every request decoded (`to_record`)
    def names(self) -> tuple[str, ...]:
        """Join key names, in order."""
        return tuple(key.name for key in self.keys)

    @cached_property
    def is_plain_entity_id(self) -> bool:
        """The keys are the one `entity_id` string of the rig's own request schema."""
        return self.names == (ENTITY_ID,)

    def entity_id(self, values: Sequence[Any]) -> str:
        """The entity id of typed key values (see the module docstring)."""
        if len(self.keys) == 1:
            return str(values[0])
        return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)

    def values(self, entity_id: str) -> tuple[str | int, ...]:
        """Typed key values of an entity id.

        Raises:
            ValueError: the id does not hold values of these keys.
        """
        if len(self.keys) == 1:
            return (self.keys[0].parse(entity_id),)
        parts = json.loads(entity_id)
        if not isinstance(parts, list) or len(parts) != len(self.keys):
            raise ValueError(f"entity id {entity_id!r} is not a JSON array of {len(self.keys)} values")
        return tuple(key.parse(str(part)) for key, part in zip(self.keys, parts, strict=True))

    def rows(self, entity_ids: Sequence[str]) -> dict[str, list[str | int]]:
        """Feast entity rows (join key name → typed values) of entity ids, in order."""
        columns: dict[str, list[str | int]] = {key.name: [] for key in self.keys}
        for entity_id in entity_ids:
            for key, value in zip(self.keys, self.values(entity_id), strict=True):
                columns[key.name].append(value)
        return columns

    # -- the wire shape of a request -----------------------------------------------------------------
    @property
    def schema(self) -> dict[str, Any]:
        """The Avro schema of a request naming its entity by these keys."""
        return self.request_schema()

    def request_schema(self) -> dict[str, Any]:
        """`schemas/Request.avsc` with `entity_id` replaced by the typed join keys."""
        base = schema_json("Request")
        if self.keys == (JoinKey(ENTITY_ID, "string"),):
            return base
        fields: list[dict[str, Any]] = []
        for field in base["fields"]:
            if field["name"] != ENTITY_ID:
                fields.append(field)
                continue
            for key in self.keys:
                fields.append(
                    {
                        "name": key.name,
                        "type": _AVRO_TYPES[key.kind],
                        "doc": f"Join key {key.name} of the entity to score ({key.kind}); the Kafka key.",
                    }
                )
        return {**base, "fields": fields}

    def to_record(self, plain: dict[str, Any]) -> dict[str, Any]:
        """A wire request as a `Request` record's fields: its join keys become the entity id."""
        if self.is_plain_entity_id:
            return plain
        record = {name: value for name, value in plain.items() if name not in self.names}
        record[ENTITY_ID] = self.entity_id([plain[name] for name in self.names])
        return record

    def to_wire(self, plain: dict[str, Any]) -> dict[str, Any]:
        """A `Request` record's fields as the wire request: the entity id becomes its join keys."""
        if self.is_plain_entity_id:
            return plain
        wire = {name: value for name, value in plain.items() if name != ENTITY_ID}
        wire.update(zip(self.names, self.values(plain[ENTITY_ID]), strict=True))
        return wire


DEFAULT_KEYS = KeySpec((JoinKey(ENTITY_ID, "string"),))
"""The synthetic world's entity (and the default): one string join key, `entity_id`."""
