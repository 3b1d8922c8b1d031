"""Avro binary bodies read by Python code compiled once from a schema, straight into record classes.

fastavro's `schemaless_reader` builds a dict per record (and per nested record), which the codec then
converts to the record class: ~4.4 µs of a Request's ~5.9 µs decode, and the largest single cost of the
predict and join paths after the models (py-spy, bench/bench_pipeline.py and bench/bench_feedback.py).
The code compiled here reads the bytes with an offset and builds the record class (and its nested
records) directly, with the schema's types: the same record in a fraction of the time.

It only ever answers for well-formed input: anything unusual (a short or corrupt body, a varint out of
range, an enum or union index out of range, a boolean byte other than 0 or 1, invalid UTF-8) raises
`Malformed`, and the codec then reads the message with fastavro, which says what is wrong. It covers
the types the rig's schemas use (as `rig.wire.avro_writer` does), and only arrays and maps whose items
take at least one byte, so a block count is bounded by the bytes left.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from rig.wire.avro_compiler import INT_RANGES, CodeBuilder, Unsupported

Reader = Callable[[bytes, int], tuple[Any, int]]
"""(message, offset of the body) to the record and the offset after it."""

_MAX_VARINT_BYTES = 10


class Malformed(ValueError):
    """The bytes are not a well-formed body of the schema (fastavro then says why)."""


def _varint(data: bytes, p: int, kind: str = "long") -> tuple[int, int]:
    """The zigzag varint at `p` and the offset after it; refuses more than 10 bytes or a value out of
    the range of an Avro `kind`."""
    byte = data[p]
    result, shift, end = byte & 0x7F, 7, p + _MAX_VARINT_BYTES
    p += 1
    while byte & 0x80:
        if p == end:
            raise Malformed("a varint of more than 10 bytes")
        byte = data[p]
        result |= (byte & 0x7F) << shift
        shift += 7
        p += 1
    value = (result >> 1) ^ -(result & 1)
    low, high = INT_RANGES[kind]
    if not low <= value <= high:
        raise Malformed(f"{value} is out of the range of an Avro {kind}")
    return value, p


# Longs of six bytes (epoch milliseconds, until 2039) are read in two parts: the low 21 bits from the
# varint's first three bytes, by arithmetic, and the rest from its last three bytes, remembered by
# those bytes. The high part changes every 2**21 ms (35 minutes), so a few entries serve a whole stream,
# unique timestamps included: 0.7 µs a long against 1.4 µs for _varint's loop (and 0.35 µs to remember
# whole timestamps, which only helped when a timestamp repeated). Bounded: cleared when full. A key
# holds a six-byte varint's last three bytes, continuation bits included, and a value is read through
# it only when the first three bytes carry theirs: bytes that match are that varint.
_HIGH_PARTS: dict[bytes, int] = {}
_HIGH_PARTS_ENTRIES = 4096


def _long(data: bytes, p: int) -> tuple[int, int]:
    """`_varint(data, p, "long")`, with the high part of varints of six bytes remembered."""
    key = data[p + 3 : p + 6]
    high = _HIGH_PARTS.get(key)
    if high is not None:
        b0, b1, b2 = data[p], data[p + 1], data[p + 2]
        if b0 & b1 & b2 & 0x80:
            raw = high | (b0 & 0x7F) | (b1 & 0x7F) << 7 | (b2 & 0x7F) << 14
            return (raw >> 1) ^ -(raw & 1), p + 6
    value, end = _varint(data, p, "long")  # raises for what a long cannot hold: nothing is remembered
    if end - p == 6:
        if len(_HIGH_PARTS) >= _HIGH_PARTS_ENTRIES:
            _HIGH_PARTS.clear()
        b3, b4, b5 = key
        _HIGH_PARTS[key] = (b3 & 0x7F) << 21 | (b4 & 0x7F) << 28 | b5 << 35
    return value, end


def _count(data: bytes, p: int) -> tuple[int, int]:
    """A block's item count (the absolute value; a negative count is followed by the block's size in
    bytes, skipped). The generated code refuses more items than bytes left, whichever way it read it."""
    count, p = _varint(data, p)
    if count < 0:
        count = -count
        _, p = _varint(data, p)
    return count, p


def _text(data: bytes, p: int) -> tuple[str, int]:
    length, p = _varint(data, p)
    end = p + length
    if length < 0 or end > len(data):
        raise Malformed("a string longer than the bytes left")
    return data[p:end].decode(), end  # strict UTF-8: invalid bytes raise (a ValueError)


def _bytes(data: bytes, p: int) -> tuple[bytes, int]:
    length, p = _varint(data, p)
    end = p + length
    if length < 0 or end > len(data):
        raise Malformed("bytes longer than the bytes left")
    return data[p:end], end


def _boolean(data: bytes, p: int) -> tuple[bool, int]:
    byte = data[p]
    if byte > 1:
        raise Malformed(f"boolean byte {byte}")
    return byte == 1, p + 1


class _Compiler(CodeBuilder):
    """Generates the body of `read(data, p)`: each value read into a local, `p` moved past it."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        super().__init__(
            {
                "_varint": _varint,
                "_long": _long,
                "_count": _count,
                "_text": _text,
                "_bytes": _bytes,
                "_boolean": _boolean,
                "_double": struct.Struct("<d").unpack_from,
                "_float": struct.Struct("<f").unpack_from,
                "Malformed": Malformed,
            }
        )
        self.classes = classes

    def value(self, schema: Any, depth: int, nesting: int = 0) -> str:
        """Code reading one value of this schema; returns the local name (or literal) holding it."""
        if nesting > 32:
            raise Unsupported("a recursive or deeply nested schema")
        kind = schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else None
        if isinstance(schema, list):
            return self.union(schema, depth, nesting)
        if isinstance(kind, dict | list):
            return self.value(kind, depth, nesting + 1)  # {"type": {...}} wraps a type
        if kind == "null":
            return "None"
        name = self.fresh("v")
        if kind in ("int", "long"):
            self.varint(name, kind, depth)
        elif kind == "string":
            # A length of one byte (below 64) inline; longer ones through _text.
            end = self.fresh("e")
            self.emit(depth, f"{name} = data[p]")
            self.emit(depth, f"if {name} < 0x80 and not {name} & 1:")
            self.emit(depth + 1, f"{end} = p + 1 + ({name} >> 1)")
            self.emit(
                depth + 1, f"if {end} > len(data): raise Malformed('a string longer than the bytes left')"
            )
            self.emit(depth + 1, f"{name} = data[p + 1 : {end}].decode(); p = {end}")
            self.emit(depth, f"else: {name}, p = _text(data, p)")
        elif kind == "bytes":
            self.emit(depth, f"{name}, p = _bytes(data, p)")
        elif kind == "boolean":
            self.emit(depth, f"{name}, p = _boolean(data, p)")
        elif kind in ("double", "float"):
            size = 8 if kind == "double" else 4
            self.emit(depth, f"{name} = _{kind}(data, p)[0]; p += {size}")
        elif kind == "enum":
            symbols = self.fresh("S")
            self.constants[symbols] = tuple(schema["symbols"])
            index = self.fresh("i")
            self.varint(index, "long", depth)
            self.emit(depth, f"if not 0 <= {index} < {len(schema['symbols'])}: raise Malformed('enum index')")
            self.emit(depth, f"{name} = {symbols}[{index}]")
        elif kind == "record":
            self.record(schema, name, depth, nesting)
        elif kind in ("array", "map"):
            self.block(schema, kind, name, depth, nesting)
        else:
            raise Unsupported(f"Avro type {kind!r}")
        return name

    def varint(self, name: str, kind: str, depth: int) -> None:
        """Code reading a zigzag varint into `name`: one byte (0..63 and -64..-1, every union branch and
        enum index) inline, the common case; longer ones through _long (longs) or _varint."""
        self.emit(depth, f"{name} = data[p]")
        self.emit(depth, f"if {name} < 0x80: {name} = ({name} >> 1) ^ -({name} & 1); p += 1")
        longer = "_long(data, p)" if kind == "long" else f"_varint(data, p, {kind!r})"
        self.emit(depth, f"else: {name}, p = {longer}")

    def record(self, schema: dict[str, Any], name: str, depth: int, nesting: int) -> None:
        record_class = self.classes.get(schema["name"].rsplit(".", 1)[-1])
        if record_class is None:
            raise Unsupported(f"no record class for {schema['name']!r}")
        fields = []
        for field in schema["fields"]:
            if not field["name"].isidentifier():
                raise Unsupported(f"field name {field['name']!r}")
            fields.append(f"{field['name']}={self.value(field['type'], depth, nesting + 1)}")
        constructor = self.fresh("C")
        self.constants[constructor] = record_class
        self.emit(depth, f"{name} = {constructor}({', '.join(fields)})")

    def block(self, schema: dict[str, Any], kind: str, name: str, depth: int, nesting: int) -> None:
        """An array or map: blocks of items until the empty block."""
        items = schema["items"] if kind == "array" else schema["values"]
        if _may_be_empty(items):
            raise Unsupported("array or map items that may take no bytes")
        count = self.fresh("n")
        self.emit(depth, f"{name} = {'[]' if kind == 'array' else '{}'}")
        self.emit(depth, "while True:")
        # A count of one byte (0..63) inline; a longer or negative one (with a block size) via _count.
        self.emit(depth + 1, f"{count} = data[p]")
        self.emit(depth + 1, f"if {count} < 0x80 and not {count} & 1: {count} >>= 1; p += 1")
        self.emit(depth + 1, f"else: {count}, p = _count(data, p)")
        self.emit(depth + 1, f"if {count} > len(data) - p: raise Malformed('more items than bytes left')")
        self.emit(depth + 1, f"if not {count}: break")
        self.emit(depth + 1, f"for _ in range({count}):")
        if kind == "array":
            item = self.value(items, depth + 2, nesting + 1)
            self.emit(depth + 2, f"{name}.append({item})")
        else:
            key = self.value("string", depth + 2, nesting + 1)
            item = self.value(items, depth + 2, nesting + 1)
            self.emit(depth + 2, f"{name}[{key}] = {item}")

    def union(self, branches: list[Any], depth: int, nesting: int) -> str:
        """A union of null and one other type: the branch index, then the value."""
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported(f"union {branches!r}")
        null = branches.index("null")
        name, index = self.fresh("u"), self.fresh("i")
        self.varint(index, "long", depth)
        self.emit(depth, f"if {index} == {null}:")
        self.emit(depth + 1, f"{name} = None")
        self.emit(depth, f"elif {index} == {1 - null}:")
        self.emit(depth + 1, f"{name} = {self.value(branches[1 - null], depth + 1, nesting + 1)}")
        self.emit(depth, "else:")
        self.emit(depth + 1, "raise Malformed('union index')")
        return name


def _may_be_empty(schema: Any) -> bool:
    """Whether a value of this schema can be written in zero bytes (null, or a record of such)."""
    kind = schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, dict | list):
        return _may_be_empty(kind)
    if kind == "null":
        return True
    if kind == "record":
        return all(_may_be_empty(field["type"]) for field in schema["fields"])
    return False


def compile_reader(schema: dict[str, Any], classes: Mapping[str, type]) -> Reader | None:
    """A reader of this record schema (its JSON form with named types expanded, as
    `fastavro.schema.expand_schema` gives it) building the classes named like its records (`classes`,
    by short name: `rig.wire.records`), or None when the schema uses a type it does not cover or a
    record has no class. The reader raises `Malformed` (or another ValueError, IndexError or
    struct.error) for anything but a well-formed body."""
    compiler = _Compiler(classes)
    try:
        result = compiler.value(schema, 1)
    except Unsupported:
        return None
    label = f"avro reader of {schema.get('name', 'record')}"
    return compiler.function("read(data, p)", [], [f"    return {result}, p"], label)
