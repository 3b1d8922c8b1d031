"""Schema migrations of the metadata store (SQLite): a new store is created at the latest revision, a
store written before migrations is adopted with its rows, and the migrations build the store's tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rig.cli.app import app
from rig.errors import MetadataError
from rig.feedback import migrations
from rig.feedback.metadata import MetadataStore
from tests.unit.feedback.migration_checks import (
    create_pre_migration_schema,
    differences,
    read_everything,
    record_one_of_each,
)


def test_migrations_at_head_build_the_tables_the_store_uses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    store = MetadataStore(url)
    store.create_schema()
    assert store.schema_revision() == migrations.head_revision()
    store.close()
    assert differences(url) == []


def test_a_store_written_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    create_pre_migration_schema(url)
    store = MetadataStore(url)
    record_one_of_each(store, 1_700_000_000_000, "risk")
    before = read_everything(store, ("risk",))
    assert store.schema_revision() is None

    store.create_schema()

    assert store.schema_revision() == migrations.head_revision()
    assert read_everything(store, ("risk",)) == before
    record_one_of_each(store, 1_700_000_060_000, "fraud")  # and it is written as before
    assert len(store.decisions()) == 2
    store.close()
    assert differences(url) == []


def test_a_store_at_a_revision_this_rig_does_not_know_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    store = MetadataStore(url)
    store.create_schema()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    engine.dispose()
    with pytest.raises(MetadataError, match="written by a newer rig"):
        store.create_schema()
    store.close()


def test_rig_metadata_upgrade_adopts_a_store_written_before_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    create_pre_migration_schema(url)
    store = MetadataStore(url)
    record_one_of_each(store, 1_700_000_000_000, "risk")

    result = CliRunner().invoke(app, ["metadata", "upgrade"], env={"RIG_METADATA_URL": url})

    assert result.exit_code == 0, result.output
    assert f"is at revision {migrations.head_revision()}" in result.output
    assert [meta.version for meta in store.models()] == ["risk.1"]
    assert store.schema_revision() == migrations.head_revision()
    store.close()


def test_rig_metadata_upgrade_reports_an_unreachable_store_without_its_password() -> None:
    url = "postgresql+psycopg://rig:secret@127.0.0.1:1/rig"
    result = CliRunner().invoke(app, ["metadata", "upgrade"], env={"RIG_METADATA_URL": url})
    assert result.exit_code == 1
    assert "run ops/postgres/up" in result.output
    assert "secret" not in result.output
