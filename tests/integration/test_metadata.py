"""The metadata store behaves identically on SQLite and on a real PostgreSQL (ops/postgres/up).

PostgreSQL: `RIG_TEST_POSTGRES_URL`, or the server ops/postgres/up starts. Each test gets its own
PostgreSQL schema (through the connection's search_path), dropped afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa

from rig.errors import MetadataError, MetadataUnavailable
from rig.feedback import migrations
from rig.feedback.metadata import MetadataStore
from rig.wire.records import Decision
from tests.support.metadata_checks import CHECKS, Check, check_id, opened_store
from tests.support.ports import free_port
from tests.support.tcp_relay import TcpRelay
from tests.unit.feedback.migration_checks import (
    create_pre_migration_schema,
    differences,
    read_everything,
    record_one_of_each,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh schema of the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[MetadataStore]:
    with opened_store(url) as opened:
        yield opened


@pytest.mark.parametrize("behaviour", CHECKS, ids=check_id)
def test_store_behaves_the_same_on_sqlite_and_postgresql(store: MetadataStore, behaviour: Check) -> None:
    behaviour(store)


def test_migrations_at_head_build_the_tables_the_store_uses(store: MetadataStore, url: str) -> None:
    assert store.schema_revision() == migrations.head_revision()
    assert differences(url) == []


def test_a_store_written_before_migrations_is_adopted_with_its_rows(url: str) -> None:
    create_pre_migration_schema(url)
    store = MetadataStore(url)
    try:
        record_one_of_each(store, 1_700_000_000_000, "risk")
        before = read_everything(store, ("risk",))
        assert store.schema_revision() is None

        store.create_schema()

        assert store.schema_revision() == migrations.head_revision()
        assert read_everything(store, ("risk",)) == before
    finally:
        store.close()
    assert differences(url) == []


def test_workers_migrating_one_store_at_once_all_succeed(url: str) -> None:
    stores = [MetadataStore(url) for _ in range(6)]
    try:
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            list(pool.map(MetadataStore.create_schema, stores))
        assert {store.schema_revision() for store in stores} == {migrations.head_revision()}
    finally:
        for store in stores:
            store.close()


def test_prune_deletes_old_windows_and_keeps_recent_ones_and_decisions(store: MetadataStore) -> None:
    now_ms, day_ms = int(time.time() * 1000), 86_400_000
    record_one_of_each(store, now_ms - 31 * day_ms, "old")
    record_one_of_each(store, now_ms - 29 * day_ms, "recent")

    deleted = store.prune(now_ms, 30 * day_ms)

    assert sum(deleted.values()) == 8
    after = read_everything(store, ("old", "recent"))
    assert (after["old:metrics"], after["old:serving"], after["old:promoter_status"]) == ([], [], None)
    assert len(after["recent:metrics"]) == len(after["recent:serving"]) == 1
    assert [d.decision_id for d in after["decisions"]] == ["decision-recent", "decision-old"]
    assert len(after["routing"]) == len(after["models"]) == 2


def test_tables_live_in_the_schema_of_the_search_path(postgres_url: str, postgres_engine: sa.Engine) -> None:
    with opened_store(postgres_url) as store:
        store.record_decision(Decision(decision_id="scoped", **_minimal_decision()))
        schema = cast(str, sa.make_url(postgres_url).query["options"]).split("=", 1)[1]  # one options value
        tables = sa.inspect(postgres_engine).get_table_names(schema=schema)
    assert set(tables) >= {"models", "control_events", "decisions", "model_metrics", "feature_stats"}
    assert "decisions" not in sa.inspect(postgres_engine).get_table_names(schema="public")


def test_wrong_password_is_a_metadata_error_naming_ops_postgres_up(postgres_engine: sa.Engine) -> None:
    url = postgres_engine.url.set(password="wrong").render_as_string(hide_password=False)
    store = MetadataStore(url)
    with pytest.raises(MetadataError, match="run ops/postgres/up") as raised:
        store.models()
    assert "password authentication failed" in str(raised.value)
    assert "wrong" not in str(raised.value)


def test_a_store_nobody_answers_for_is_unavailable_so_work_waits_for_it(postgres_engine: sa.Engine) -> None:
    port = free_port()  # nobody listens on it: PostgreSQL stopped
    store = MetadataStore(postgres_engine.url.set(port=port).render_as_string(hide_password=False))
    with pytest.raises(MetadataUnavailable, match="unreachable"):
        store.model_checksum("risk.1")  # what a worker asks before it loads a model


def test_a_store_away_at_start_is_migrated_by_the_first_transaction_that_reaches_it(
    postgres_url: str,
) -> None:
    url = sa.make_url(postgres_url)
    with TcpRelay((url.host or "127.0.0.1", url.port or 5432)) as postgres:  # off: PostgreSQL stopped
        store = MetadataStore(url.set(port=postgres.port).render_as_string(hide_password=False))
        assert store.create_schema_when_reachable() is False
        with pytest.raises(MetadataUnavailable):
            store.load_promoter_state()  # what the promoter waits for before it reads rig.joined

        postgres.on()
        assert store.load_promoter_state() is None, "the tables exist: migrated first"
        assert store.schema_revision() == migrations.head_revision()
        store.close()


def _minimal_decision() -> dict[str, Any]:
    return {
        "decided_at": 1,
        "action": "keep",
        "mode": "manual",
        "golden_version": "risk.1",
        "metric": "log_loss",
        "n": 0,
        "estimate": 0.0,
        "ci_low": -1.0,
        "ci_high": 1.0,
        "reason": "by hand",
    }
