"""rig.wire.records: every record class is its Avro schema (same fields in the same order, same types and
defaults, nested records included), and a record built from its defaults round-trips through the codec."""

from __future__ import annotations

import json
from typing import Any, cast

import msgspec
import pytest
from msgspec import inspect

from rig.wire.codec import SCHEMAS_DIR, Codec
from rig.wire.records import TOPIC_RECORDS, Record

_SCALARS: dict[str, type[inspect.Type]] = {
    "string": inspect.StrType,
    "long": inspect.IntType,
    "int": inspect.IntType,
    "double": inspect.FloatType,
    "float": inspect.FloatType,
    "boolean": inspect.BoolType,
    "bytes": inspect.BytesType,
}
NAMES = [record.__name__ for record in TOPIC_RECORDS]


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())


def _check_type(avro: Any, info: inspect.Type, named: dict[str, Any], where: str) -> None:
    """Fail unless the msgspec type `info` is what the Avro type `avro` decodes to."""
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):
        branches = [branch for branch in avro if branch != "null"]
        assert len(branches) == 1 and "null" in avro, f"{where}: only [null, X] unions are used"
        assert isinstance(info, inspect.UnionType), f"{where}: {info} is not optional"
        others = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        assert len(others) == 1 and len(info.types) == 2, f"{where}: {info}"
        _check_type(branches[0], others[0], named, where)
        return
    kind = avro if isinstance(avro, str) else avro["type"]
    if kind in _SCALARS:
        assert isinstance(info, _SCALARS[kind]), f"{where}: {kind} is not {info}"
    elif kind == "enum":
        named[avro["name"]] = avro
        assert isinstance(info, inspect.LiteralType), f"{where}: enum {avro['name']} is not a Literal"
        # An Avro enum's Literal holds only strings.
        assert sorted(cast(tuple[str, ...], info.values)) == sorted(avro["symbols"]), (
            f"{where}: {info.values} != {avro['symbols']}"
        )
    elif kind == "array":
        assert isinstance(info, inspect.ListType), f"{where}: array is not {info}"
        _check_type(avro["items"], info.item_type, named, f"{where}[]")
    elif kind == "map":
        assert isinstance(info, inspect.DictType) and isinstance(info.key_type, inspect.StrType), where
        _check_type(avro["values"], info.value_type, named, f"{where}{{}}")
    elif kind == "record":
        named[avro["name"]] = avro
        assert isinstance(info, inspect.StructType), f"{where}: record {avro['name']} is not {info}"
        _check_record(avro, info, named)
    else:
        raise AssertionError(f"{where}: Avro type {kind} has no check")


def _check_record(schema: dict[str, Any], info: inspect.StructType, named: dict[str, Any]) -> None:
    name = schema["name"].split(".")[-1]
    assert info.cls.__name__ == name
    assert issubclass(info.cls, Record) and info.cls.__doc__, f"{name}: a documented Record"
    assert [f.name for f in info.fields] == [f["name"] for f in schema["fields"]], name
    for avro, field in zip(schema["fields"], info.fields, strict=True):
        where = f"{name}.{field.name}"
        _check_type(avro["type"], field.type, named, where)
        if "default" in avro:
            default = (
                field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
            )
            assert default == avro["default"] and type(default) is type(avro["default"]), where
        else:
            assert field.required, f"{where} has a default the schema does not have"


@pytest.mark.parametrize("record", TOPIC_RECORDS, ids=NAMES)
def test_record_class_has_the_fields_types_and_defaults_of_its_schema(record: type[Record]) -> None:
    # The type info of a Struct class is a StructType.
    _check_record(_schema(record.__name__), cast(inspect.StructType, inspect.type_info(record)), {})


def test_every_schema_file_has_its_record_class() -> None:
    assert sorted(NAMES) == sorted(path.stem for path in SCHEMAS_DIR.glob("*.avsc"))


def _example(info: inspect.Type) -> Any:
    """A value of a type, different from any default, for a record with every field set."""
    if isinstance(info, inspect.UnionType):
        return _example(next(t for t in info.types if not isinstance(t, inspect.NoneType)))
    if isinstance(info, inspect.LiteralType):
        return info.values[-1]
    if isinstance(info, inspect.ListType):
        return [_example(info.item_type)]
    if isinstance(info, inspect.DictType):
        return {"k": _example(info.value_type)}
    if isinstance(info, inspect.StructType):
        return info.cls(**{f.name: _example(f.type) for f in info.fields})
    examples = {
        inspect.StrType: "text",
        inspect.IntType: 7,
        inspect.FloatType: 0.5,
        inspect.BoolType: True,
        inspect.BytesType: b"\x00\xff",
    }
    return examples[type(info)]


@pytest.mark.parametrize("record", TOPIC_RECORDS, ids=NAMES)
def test_a_record_with_every_field_set_round_trips_through_the_codec(record: type[Record]) -> None:
    full = _example(inspect.type_info(record))
    codec = Codec(record, allow_json=True)
    assert codec.decode(codec.encode(full)) == full
    assert codec.decode(codec.encode_json(full)) == full


def test_records_are_frozen() -> None:
    record = _example(inspect.type_info(TOPIC_RECORDS[0]))
    with pytest.raises(AttributeError):
        record.request_id = "changed"
