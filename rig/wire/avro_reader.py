"""Avro binary bodies read straight into record classes, by a program compiled once per schema and
run by the C extension `rig.wire._avro`.

fastavro's `schemaless_reader` builds a dict per record (and per nested record), which the codec then
converts to the record class: ~4.4 µs of a Request's ~5.9 µs decode. The compiled program reads the
bytes and builds the record class (and its nested records) directly.

It only ever answers for well-formed input: anything unusual (a short or corrupt body, a varint out of
range, an enum or union index out of range, a boolean byte other than 0 or 1, invalid UTF-8, more
items than bytes left) raises `Malformed`, and the codec then reads the message with fastavro, which
says what is wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from rig.wire import _avro
from rig.wire.avro_compiler import Unsupported, compile_program

Reader = Callable[[bytes, int], tuple[Any, int]]
"""(message, offset of the body) to the record and the offset after it."""

Malformed: type[ValueError] = _avro.Malformed
"""The bytes are not a well-formed body of the schema (fastavro then says why)."""


def compile_reader(schema: dict[str, Any], classes: Mapping[str, type]) -> Reader | None:
    """A reader of this record schema (its JSON form with named types expanded, as
    `fastavro.schema.expand_schema` gives it) building the classes named like its records (`classes`,
    by short name: `rig.wire.records`), or None when the schema uses a type it does not cover or a
    record has no class. The reader raises `Malformed` (or UnicodeDecodeError for invalid UTF-8) for
    anything but a well-formed body."""
    try:
        program = compile_program(schema, classes)
    except Unsupported:
        return None
    return functools.partial(_avro.read, program)
