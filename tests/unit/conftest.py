"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.feedback.metadata import MetadataStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    """An empty metadata store on a SQLite file of the test's own."""
    opened = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    opened.create_schema()
    yield opened
    opened.close()


@pytest.fixture
def registry_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mock://` schema registries register schemas but never answer a schema id lookup (as a
    registry that went away after start-up)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    def get_schema(self: object, schema_id: int, *args: object, **kwargs: object) -> None:
        raise ConnectionError("registry down")

    monkeypatch.setattr(
        type(SchemaRegistryClient.new_client({"url": "mock://probe"})), "get_schema", get_schema
    )
