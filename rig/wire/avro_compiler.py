"""What the Avro reader and writer share: a schema's program for the C extension `rig.wire._avro`
(`_avro.c`), built once per schema from its JSON form, and the ranges of Avro's integer types.

A program is a tuple per value: `(kind,)` for a primitive, `("enum", symbols)`, `("record", class,
field names, field programs)`, `("array", items)`, `("map", values)`, `("union", index of null,
other)`. Only the types the rig's schemas use are covered; a schema with anything else (a `fixed`, a
union of two non-null types, a field name that is not an identifier, a recursive schema) is
`Unsupported`, and the codec keeps fastavro for it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rig.wire import _avro

if TYPE_CHECKING:
    from typing_extensions import CapsuleType

INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
"""The lowest and highest value of each Avro integer type."""

_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "string", "bytes")
_MAX_NESTING = 32


class Unsupported(ValueError):
    """The schema uses a type the compiled programs do not cover (the codec keeps fastavro for it)."""


def compile_program(schema: dict[str, Any], classes: Mapping[str, type] | None) -> CapsuleType:
    """The compiled program of a record schema (its JSON form with named types expanded, as
    `fastavro.schema.expand_schema` gives it), for `_avro.read` and `_avro.write`.

    Args:
        schema: The record schema.
        classes: For reading, the record classes by short name (every record of the schema needs
            one); None for writing, which reads a record's fields as attributes.

    Raises:
        Unsupported: The schema uses a type the programs do not cover, or a record has no class.
    """
    return _avro.compile_program(_program(schema, classes, 0))


def _program(schema: Any, classes: Mapping[str, type] | None, nesting: int) -> tuple[Any, ...]:
    if nesting > _MAX_NESTING:
        raise Unsupported("a recursive or deeply nested schema")
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            raise Unsupported(f"union {schema!r}")
        null = schema.index("null")
        return ("union", null, _program(schema[1 - null], classes, nesting + 1))
    kind = _kind(schema)
    if isinstance(kind, dict | list):
        return _program(kind, classes, nesting + 1)  # {"type": {...}} wraps a type
    if kind in _PRIMITIVES:
        return (kind,)
    if kind == "enum":
        return ("enum", tuple(schema["symbols"]))
    if kind == "record":
        return _record(schema, classes, nesting)
    if kind in ("array", "map"):
        items = schema["items"] if kind == "array" else schema["values"]
        # A reader bounds a block's count by the bytes left: items must take a byte at least.
        if classes is not None and _may_be_empty(items):
            raise Unsupported("array or map items that may take no bytes")
        return (kind, _program(items, classes, nesting + 1))
    raise Unsupported(f"Avro type {kind!r}")


def _record(schema: dict[str, Any], classes: Mapping[str, type] | None, nesting: int) -> tuple[Any, ...]:
    record_class = None
    if classes is not None:
        record_class = classes.get(schema["name"].rsplit(".", 1)[-1])
        if record_class is None:
            raise Unsupported(f"no record class for {schema['name']!r}")
    names, programs = [], []
    for field in schema["fields"]:
        if not field["name"].isidentifier():
            raise Unsupported(f"field name {field['name']!r}")
        names.append(sys.intern(field["name"]))
        programs.append(_program(field["type"], classes, nesting + 1))
    if len(names) > _avro.MAX_FIELDS:
        raise Unsupported(f"a record of more than {_avro.MAX_FIELDS} fields")
    return ("record", record_class, tuple(names), tuple(programs))


def _kind(schema: Any) -> Any:
    """A schema's type: its name, or (wrapped in {"type": ...}) the type it wraps; None for a union."""
    return schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else None


def _may_be_empty(schema: Any) -> bool:
    """Whether a value of this schema can be written in zero bytes (null, or a record of such)."""
    kind = _kind(schema)
    if isinstance(kind, dict | list):
        return _may_be_empty(kind)
    if kind == "null":
        return True
    if kind == "record":
        return all(_may_be_empty(field["type"]) for field in schema["fields"])
    return False
