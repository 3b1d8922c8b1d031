"""Avro binary bodies written by Python code compiled once from a schema.

fastavro's `schemaless_writer` re-walks the schema and checks every value on each call: about 15 µs
for one Prediction record, a quarter of the predict path's CPU (py-spy, bench/bench_pipeline.py's bare
loop). The code compiled here reads a record's fields as attributes (no dict is built) and appends
precomputed bytes where it can: the same bytes in a few µs.

It covers the types the rig's schemas use: primitives, records, enums, arrays, maps, and unions of
null with one other type. A schema with anything else gets no compiled writer. A value the compiled
code cannot write (a wrong type, an int out of range, a datetime for a timestamp, an unknown enum
symbol) raises, and the caller writes the record with fastavro instead, which names the field.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from rig.wire.avro_compiler import INT_RANGES, CodeBuilder, Unsupported

Writer = Callable[[Any], bytes]
"""A record (attributes named as the schema's fields) to its Avro binary body."""

# zigzag(n) is 2n for 0 <= n < 64: one byte below 128, the common case of lengths and small counts.
_SMALL = [bytes([2 * n]) for n in range(64)]


def _varint(value: Any, kind: str = "long") -> bytes:
    """The zigzag varint of an int or long, refusing what fastavro refuses (floats, out of range)."""
    if type(value) is not int:  # a plain int (the common case) needs no check of its type
        if not isinstance(value, bool | int | np.integer):
            raise TypeError(f"{type(value).__name__} is not an Avro {kind}")
        value = int(value)
    low, high = INT_RANGES[kind]
    if not low <= value <= high:
        raise OverflowError(f"{value} is out of the range of an Avro {kind}")
    zigzag = (value << 1) ^ (value >> 63)
    if 1 << 35 <= zigzag < 1 << 42:  # six bytes, an epoch-ms timestamp (until 2039): no loop
        return bytes(
            (
                zigzag & 0x7F | 0x80,
                zigzag >> 7 & 0x7F | 0x80,
                zigzag >> 14 & 0x7F | 0x80,
                zigzag >> 21 & 0x7F | 0x80,
                zigzag >> 28 & 0x7F | 0x80,
                zigzag >> 35,
            )
        )
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


# Varints of the ints and longs written lately, by kind: timestamps repeat (a request's joined rows all
# carry its two timestamps; requests of a batch share milliseconds), and a lookup costs 34 ns against
# 1.35 µs to compute a timestamp's. Bounded: cleared when full. Plain ints only, so a value of another
# type is still checked by _varint each time.
_MEMO_ENTRIES = 4096
_MEMO: dict[str, dict[int, bytes]] = {"int": {}, "long": {}}


def _remember(memo: dict[Any, bytes], key: Any, encoded: bytes) -> bytes:
    """Keep `encoded` under `key` in a memo of at most `_MEMO_ENTRIES` (cleared when full); returns it."""
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[key] = encoded
    return encoded


def _varint_remembered(value: Any, kind: str) -> bytes:
    """`_varint(value, kind)`, remembered for plain ints."""
    encoded = _varint(value, kind)  # raises for what the kind cannot hold: nothing is remembered then
    return _remember(_MEMO[kind], value, encoded) if type(value) is int else encoded


# Strings written lately, with their length prefix: model versions, experiment names, transform
# versions and map keys repeat in every record, and a lookup costs ~45 ns against ~200 ns to encode
# one and append its length. Bounded like _MEMO; unique strings (request ids) only cycle through it.
_STRINGS: dict[str, bytes] = {}


def _string_remembered(value: Any) -> bytes:
    """The Avro string `value` (its length, then its UTF-8), remembered; raises for what is not a str."""
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is not an Avro string")
    raw = value.encode()  # raises for what does not encode: nothing is remembered then
    return _remember(_STRINGS, value, _length(len(raw)) + raw)


def _length(count: int) -> bytes:
    return _SMALL[count] if count < 64 else _varint(count)


class _Compiler(CodeBuilder):
    """Generates the body of `write(record, a)`, `a` appending bytes to the output."""

    def __init__(self) -> None:
        super().__init__(
            {
                "_SMALL": _SMALL,
                "_varint": _varint,
                "_varint_remembered": _varint_remembered,
                "_MEMO_int": _MEMO["int"],
                "_MEMO_long": _MEMO["long"],
                "_length": _length,
                "_STRINGS": _STRINGS,
                "_string_remembered": _string_remembered,
                "_double": struct.Struct("<d").pack,
                "_float": struct.Struct("<f").pack,
            }
        )

    def value(self, schema: Any, expr: str, depth: int, nesting: int = 0) -> None:
        """Code writing the value `expr` (a local name or attribute access) of this schema."""
        if nesting > 32:
            raise Unsupported("a recursive or deeply nested schema")
        kind = schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else None
        if isinstance(schema, list):
            self.union(schema, expr, depth, nesting)
        elif isinstance(kind, dict | list):
            self.value(kind, expr, depth, nesting + 1)  # {"type": {...}} wraps a type
        elif kind == "null":
            pass
        elif kind == "boolean":
            self.emit(depth, f"a(b'\\x01' if {expr} else b'\\x00')")
        elif kind in ("int", "long"):
            name = self.fresh("n")
            self.emit(depth, f"{name} = {expr}")
            # Plain ints 0..63 take the table, other plain ints written lately the memo; anything else
            # (numpy, bool, or a wrong type) goes through _varint, which checks it as fastavro would.
            self.emit(depth, f"if type({name}) is int:")
            remembered = f"_MEMO_{kind}.get({name}) or _varint_remembered({name}, {kind!r})"
            self.emit(depth + 1, f"a(_SMALL[{name}] if 0 <= {name} < 64 else {remembered})")
            self.emit(depth, "else:")
            self.emit(depth + 1, f"a(_varint({name}, {kind!r}))")
        elif kind == "double":
            self.emit(depth, f"a(_double({expr}))")
        elif kind == "float":
            self.emit(depth, f"a(_float({expr}))")
        elif kind == "string":
            name = self.fresh("s")
            self.emit(depth, f"{name} = {expr}")
            self.emit(depth, f"a(_STRINGS.get({name}) or _string_remembered({name}))")
        elif kind == "bytes":
            name = self.fresh("b")
            self.emit(depth, f"{name} = {expr}")
            self.emit(depth, f"if not isinstance({name}, bytes): raise TypeError('bytes expected')")
            self.emit(depth, f"a(_length(len({name}))); a({name})")
        elif kind == "enum":
            table = self.fresh("E")
            self.constants[table] = {symbol: _varint(i) for i, symbol in enumerate(schema["symbols"])}
            self.emit(depth, f"a({table}[{expr}])")
        elif kind == "record":
            name = self.fresh("r")
            self.emit(depth, f"{name} = {expr}")
            for field in schema["fields"]:
                if not field["name"].isidentifier():
                    raise Unsupported(f"field name {field['name']!r}")
                self.value(field["type"], f"{name}.{field['name']}", depth, nesting + 1)
        elif kind in ("array", "map"):
            self.block(schema, kind, expr, depth, nesting)
        else:
            raise Unsupported(f"Avro type {kind!r}")

    def block(self, schema: dict[str, Any], kind: str, expr: str, depth: int, nesting: int) -> None:
        """An array or map: one block of every item, then the empty block."""
        items = self.fresh("l")
        self.emit(depth, f"{items} = {expr}")
        self.emit(depth, f"if {items}:")
        self.emit(depth + 1, f"a(_length(len({items})))")
        item = self.fresh("i")
        if kind == "array":
            self.emit(depth + 1, f"for {item} in {items}:")
            self.value(schema["items"], item, depth + 2, nesting + 1)
        else:
            key = self.fresh("k")
            self.emit(depth + 1, f"for {key}, {item} in {items}.items():")
            self.value("string", key, depth + 2, nesting + 1)
            self.value(schema["values"], item, depth + 2, nesting + 1)
        self.emit(depth, "a(b'\\x00')")

    def union(self, branches: list[Any], expr: str, depth: int, nesting: int) -> None:
        """A union of null and one other type: the branch index, then the value."""
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported(f"union {branches!r}")
        null = branches.index("null")
        name = self.fresh("u")
        self.emit(depth, f"{name} = {expr}")
        self.emit(depth, f"if {name} is None:")
        self.emit(depth + 1, f"a({_varint(null)!r})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"a({_varint(1 - null)!r})")
        self.value(branches[1 - null], name, depth + 1, nesting + 1)


def compile_writer(schema: dict[str, Any]) -> Writer | None:
    """A writer of this record schema (its JSON form with named types expanded, as
    `fastavro.schema.expand_schema` gives it), or None when the schema uses a type it does not cover."""
    compiler = _Compiler()
    try:
        compiler.value(schema, "record", 1)
    except Unsupported:
        return None
    head = ["    out = []", "    a = out.append"]
    label = f"avro writer of {schema.get('name', 'record')}"
    return compiler.function("write(record)", head, ["    return b''.join(out)"], label)
