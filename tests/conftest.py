"""Shared fixtures. Integration tests need the services started by `ops/` (make test does it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from rig.config import RigSettings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> RigSettings:
    """Settings isolated per test: own topic prefix, own working folder."""
    return RigSettings(topic_prefix=f"test.{uuid.uuid4().hex[:10]}.", home=tmp_path / "home")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of a broker that answers; fails clearly when none does."""
    from confluent_kafka.admin import AdminClient

    bootstrap = RigSettings().kafka_bootstrap
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure below
        pytest.fail(f"no Kafka broker at {bootstrap} ({exc}); start one with ops/kafka/up")
    assert metadata.brokers, f"Kafka at {bootstrap} has no brokers"
    return bootstrap


def take_registry_away(patch: pytest.MonkeyPatch) -> None:
    """Make `mock://` schema registries register schemas but never answer a schema id lookup (as a
    registry that went away after start-up), until `patch` is undone."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    def get_schema(self: object, schema_id: int, *args: object, **kwargs: object) -> None:
        raise ConnectionError("registry down")

    patch.setattr(type(SchemaRegistryClient.new_client({"url": "mock://probe"})), "get_schema", get_schema)


@pytest.fixture
def registry_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mock://` schema registries that never answer a schema id lookup (`take_registry_away`)."""
    take_registry_away(monkeypatch)
