"""Shared fixtures. Integration tests need the services started by `ops/` (make test does it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

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


DEFAULT_POSTGRES_URL = "postgresql+psycopg://rig:rig@127.0.0.1:55432/rig"


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[sa.Engine]:
    """An engine on a PostgreSQL that answers (`RIG_TEST_POSTGRES_URL`, or the one ops/postgres/up
    starts); fails clearly when none does."""
    url = os.environ.get("RIG_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        engine.dispose()
        pytest.fail(f"no PostgreSQL at {url} ({error.orig}); run ops/postgres/up")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_engine: sa.Engine) -> Iterator[str]:
    """The PostgreSQL URL, with a fresh schema of this test first on the search_path."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = postgres_engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres_engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
