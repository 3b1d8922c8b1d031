"""Retention of the metadata store (SQLite): `prune` deletes the windows older than the retention,
keeps the recent ones, and never touches models, routing history or decisions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rig.cli.app import app
from rig.errors import MetadataError
from rig.feedback.metadata import MetadataStore
from tests.unit.feedback.migration_checks import read_everything, record_one_of_each

DAY_MS = 86_400_000
NOW_MS = 1_800_000_000_000


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metadata.db'}"


@pytest.fixture
def store(url: str) -> Iterator[MetadataStore]:
    opened = MetadataStore(url)
    opened.create_schema()
    yield opened
    opened.close()


def test_prune_deletes_old_windows_and_keeps_recent_ones_and_the_audit_trail(store: MetadataStore) -> None:
    record_one_of_each(store, NOW_MS - 31 * DAY_MS, "old")
    record_one_of_each(store, NOW_MS - 29 * DAY_MS, "recent")
    before = read_everything(store, ("old", "recent"))

    deleted = store.prune(NOW_MS, 30 * DAY_MS)

    assert deleted == {
        "model_metrics": 1,
        "feature_stats": 2,  # a row per feature
        "label_delays": 1,
        "label_delay_histograms": 2,  # a row per label
        "model_serving": 1,
        "promoter_status": 1,
        "promoter_evidence": 0,  # none recorded here: test_metadata_evidence.py prunes it
    }
    after = read_everything(store, ("old", "recent"))
    for kept in ("models", "routing", "decisions"):  # the audit trail, old or not
        assert after[kept] == before[kept]
    assert [d.decision_id for d in after["decisions"]] == ["decision-recent", "decision-old"]
    for name in ("metrics", "feature_stats", "serving"):
        assert after[f"old:{name}"] == []
        assert after[f"recent:{name}"] == before[f"recent:{name}"]
    assert after["old:promoter_status"] is None
    assert after["recent:promoter_status"] == before["recent:promoter_status"]
    assert [w.window_end_ms for w in after["label_delays"]] == [NOW_MS - 29 * DAY_MS]
    assert {h.window_end_ms for h in after["delay_histograms"]} == {NOW_MS - 29 * DAY_MS}


def test_prune_refuses_a_negative_retention(store: MetadataStore) -> None:
    with pytest.raises(MetadataError, match="must not be negative"):
        store.prune(NOW_MS, -1)


def test_rig_metadata_prune_keeps_the_configured_days(url: str, store: MetadataStore) -> None:
    record_one_of_each(store, int(time.time() * 1000) - 8 * DAY_MS, "old")
    record_one_of_each(store, int(time.time() * 1000) - 6 * DAY_MS, "recent")

    result = CliRunner().invoke(
        app, ["metadata", "prune"], env={"RIG_METADATA_URL": url, "RIG_METADATA_RETENTION_DAYS": "7"}
    )

    assert result.exit_code == 0, result.output
    assert "pruned 8 row(s) older than 7 day(s)" in result.output
    assert store.model_metrics("old.1") == [] and len(store.model_metrics("recent.1")) == 1
    assert len(store.decisions()) == 2


def test_rig_metadata_prune_days_option_overrides_the_setting(url: str, store: MetadataStore) -> None:
    record_one_of_each(store, 0, "ancient")
    result = CliRunner().invoke(
        app, ["metadata", "prune", "--days", "1000000"], env={"RIG_METADATA_URL": url}
    )
    assert result.exit_code == 0, result.output
    assert "pruned 0 row(s)" in result.output
    assert len(store.model_metrics("ancient.1")) == 1
