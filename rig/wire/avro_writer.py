"""Avro binary bodies written from records by a program compiled once per schema and run by the C
extension `rig.wire._avro`.

fastavro's `schemaless_writer` re-walks the schema and checks every value on each call: about 15 µs
for one Prediction record. The compiled program reads a record's fields as attributes (no dict is
built) and writes the same bytes in one call.

It writes what it is sure of: plain ints (bools included) in range, str, bytes, lists and tuples for
arrays, dicts for maps, anything `float()` takes for a double, known enum symbols. Anything else (a
numpy int, a datetime for a timestamp, a wrong type, an int out of range) raises, and the codec
writes the record with fastavro instead, which coerces it or names the field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rig.wire import _avro
from rig.wire.avro_compiler import Unsupported, compile_program

Writer = Callable[[Any], bytes]
"""A record (attributes named as the schema's fields) to its Avro binary body."""


def compile_writer(schema: dict[str, Any]) -> Writer | None:
    """A writer of this record schema (its JSON form with named types expanded, as
    `fastavro.schema.expand_schema` gives it), or None when the schema uses a type it does not cover."""
    try:
        program = compile_program(schema, None)
    except Unsupported:
        return None
    return functools.partial(_avro.write, program)
