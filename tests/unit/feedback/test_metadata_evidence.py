"""The promoter's evidence history in the metadata store (SQLite): recorded per instant and read back
oldest first by pair, replaced when an instant is recorded again, pruned with the other windows, and
created by migration 0003 in a store at 0002."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from rig.errors import MetadataError
from rig.feedback import migrations
from rig.feedback.metadata import EvidencePoint, MetadataStore
from rig.wire.records import DecisionCheck
from tests.unit.feedback.migration_checks import differences, record_one_of_each


def point(
    at_ms: int, challenger: str, n: int, golden: str = "g.1", low: float | None = 0.001
) -> EvidencePoint:
    return EvidencePoint(at_ms, golden, challenger, n, 0.01, low, 0.02, 0.2, 0.002)


def test_evidence_is_read_back_oldest_first_by_pair_and_the_latest_within_a_limit(
    store: MetadataStore,
) -> None:
    store.record_promoter_evidence(
        1_000, "g.1", [point(1_000, "c.2", 100, low=None), point(1_000, "c.3", 90)]
    )
    store.record_promoter_evidence(2_000, "g.1", [point(2_000, "c.2", 200), point(2_000, "c.3", 180)])
    store.record_promoter_evidence(3_000, "c.2", [point(3_000, "g.1", 10, golden="c.2")])

    assert [(p.at_ms, p.golden_version, p.challenger_version) for p in store.promoter_evidence()] == [
        (1_000, "g.1", "c.2"),
        (1_000, "g.1", "c.3"),
        (2_000, "g.1", "c.2"),
        (2_000, "g.1", "c.3"),
        (3_000, "c.2", "g.1"),
    ]
    assert store.promoter_evidence(golden="g.1", challenger="c.2") == [
        point(1_000, "c.2", 100, low=None),
        point(2_000, "c.2", 200),
    ]
    assert [p.n for p in store.promoter_evidence(golden="g.1", limit=3)] == [90, 200, 180]
    assert store.promoter_evidence(challenger="nobody") == []


def test_an_instant_recorded_again_replaces_its_points(store: MetadataStore) -> None:
    store.record_promoter_evidence(1_000, "g.1", [point(1_000, "c.2", 100), point(1_000, "c.3", 90)])
    store.record_promoter_evidence(1_000, "g.1", [point(1_000, "c.2", 150)])  # after a decision, same ms
    assert [(p.challenger_version, p.n) for p in store.promoter_evidence()] == [("c.2", 150)]


def test_points_of_another_instant_or_golden_and_values_that_are_not_finite_are_refused(
    store: MetadataStore,
) -> None:
    with pytest.raises(MetadataError, match=r"recorded as g\.1 at 1000"):
        store.record_promoter_evidence(1_000, "g.1", [point(999, "c.2", 100)])
    with pytest.raises(MetadataError, match=r"recorded as g\.2"):
        store.record_promoter_evidence(1_000, "g.2", [point(1_000, "c.2", 100)])
    not_finite = EvidencePoint(1_000, "g.1", "c.2", 5, float("nan"), None, None, 1.0, 0.002)
    with pytest.raises(MetadataError, match="not finite"):
        store.record_promoter_evidence(1_000, "g.1", [not_finite])
    assert store.promoter_evidence() == []


def test_an_unbounded_interval_is_stored_as_none(store: MetadataStore) -> None:
    unbounded = EvidencePoint(1_000, "g.1", "c.2", 1, 0.5, float("-inf"), float("inf"), 1.0, 0.002)
    store.record_promoter_evidence(1_000, "g.1", [unbounded])
    (read,) = store.promoter_evidence()
    assert (read.ci_low, read.ci_high, read.mean_gain) == (None, None, 0.5)


def test_a_primary_check_becomes_a_point_in_the_gain_sign() -> None:
    check = DecisionCheck(name="primary", state="pass", n=400, estimate=-0.03, ci_low=-0.05, ci_high=-0.01)
    assert EvidencePoint.of_check(7, "g.1", "c.2", check, 0.002) == EvidencePoint(
        7, "g.1", "c.2", 400, 0.03, 0.01, 0.05, 1.0, 0.002
    )
    pending = DecisionCheck(name="primary", state="pending", n=0, p_value=None)
    assert EvidencePoint.of_check(7, "g.1", "c.2", pending, 0.002).mean_gain == 0.0


def test_prune_deletes_old_evidence_and_keeps_recent_evidence(store: MetadataStore) -> None:
    day_ms, now_ms = 86_400_000, 1_800_000_000_000
    old, recent = now_ms - 31 * day_ms, now_ms - 29 * day_ms
    store.record_promoter_evidence(old, "g.1", [point(old, "c.2", 100), point(old, "c.3", 90)])
    store.record_promoter_evidence(recent, "g.1", [point(recent, "c.2", 200)])

    deleted = store.prune(now_ms, 30 * day_ms)

    assert deleted["promoter_evidence"] == 2
    assert [p.at_ms for p in store.promoter_evidence()] == [recent]


def test_migration_0003_adds_the_evidence_table_to_a_store_at_0002_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    store = MetadataStore(url)
    store.create_schema()
    record_one_of_each(store, 1_700_000_000_000, "risk")
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # the store as revision 0002 left it: 0003 only adds this table
        connection.execute(sa.text("DROP TABLE promoter_evidence"))
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
        assert "promoter_evidence" not in sa.inspect(connection).get_table_names()
    engine.dispose()
    assert store.schema_revision() == "0002"

    store.create_schema()

    assert store.schema_revision() == migrations.head_revision()
    assert [d.decision_id for d in store.decisions()] == ["decision-risk"]
    store.record_promoter_evidence(1_000, "g.1", [point(1_000, "c.2", 100)])
    assert store.promoter_evidence() == [point(1_000, "c.2", 100)]
    store.close()
    assert differences(url) == []
