"""What the promoter keeps in the metadata store (SQLite): label delay histograms, serving windows, its
status, decisions with their checks, and a decisions table from before `checks` existed."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from rig.errors import MetadataError
from rig.feedback.metadata import DelayHistogram, MetadataStore, ServingWindow
from rig.feedback.sequential import new_decision
from rig.wire.records import DecisionCheck


def test_delay_histograms_round_trip_per_label_and_the_latest_windows_come_oldest_first(
    store: MetadataStore,
) -> None:
    store.record_delay_histograms(1_000, {0: {3: 10, 40: 2}, 1: {80: 5}})
    store.record_delay_histograms(2_000, {0: {3: 7}, 1: {}})
    store.record_delay_histograms(1_000, {0: {3: 11}, 1: {81: 6}})  # a window recorded again replaces it
    assert store.delay_histograms() == [
        DelayHistogram(1_000, 0, 11, {3: 11}),
        DelayHistogram(1_000, 1, 6, {81: 6}),
        DelayHistogram(2_000, 0, 7, {3: 7}),
    ]
    assert [h.window_end_ms for h in store.delay_histograms(limit=1)] == [2_000]


def test_serving_windows_are_read_per_golden_after_a_time(store: MetadataStore) -> None:
    assert not store.serving_recorded()
    first = ServingWindow("w1", 1_000, "c", "g", 10, 1, 9, 0.1, 0.5)
    other = ServingWindow("w2", 1_000, "c", "g", 5, 0, 5, -0.1, 0.2)
    old_golden = ServingWindow("w1", 1_500, "c", "g0", 5, 0, 5, 0.0, 0.0)
    store.record_model_serving([first, other, old_golden])
    store.record_model_serving([ServingWindow("w1", 2_000, "c", "g", 3, 0, 3, 0.2, 0.1)])
    assert store.serving_recorded()
    assert [(w.scope, w.window_end_ms) for w in store.model_serving("g")] == [
        ("w1", 1_000),
        ("w2", 1_000),
        ("w1", 2_000),
    ]
    assert store.model_serving("g", after_ms=1_000) == [
        ServingWindow("w1", 2_000, "c", "g", 3, 0, 3, 0.2, 0.1)
    ]


def test_the_promoter_status_is_replaced_and_refused_when_json_cannot_hold_it(store: MetadataStore) -> None:
    assert store.promoter_status() is None
    store.record_promoter_status("promoter", 1, {"golden": "g", "challengers": {}})
    store.record_promoter_status("promoter", 2, {"golden": "h", "challengers": {"c": {"n": 3}}})
    assert store.promoter_status() == (2, {"golden": "h", "challengers": {"c": {"n": 3}}})
    with pytest.raises(MetadataError, match="JSON"):
        store.record_promoter_status("promoter", 3, {"n": float("nan")})


CHECKS = [
    DecisionCheck(
        name="primary", state="pass", n=10, estimate=-0.1, ci_low=-0.2, ci_high=-0.05, margin=-0.002
    ),
    DecisionCheck(name="latency", state="unmeasured", n=0, detail="no serving statistics"),
]


def test_decisions_keep_their_checks(store: MetadataStore) -> None:
    decision = new_decision(5, "keep", "suggest", ("g", "c"), "held", "log_loss", checks=CHECKS)
    assert store.record_decision(decision)
    assert store.decisions() == [decision]


def test_a_decisions_table_from_before_checks_gains_the_column_and_its_rows_read_with_none(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE decisions (decision_id VARCHAR PRIMARY KEY, decided_at BIGINT NOT NULL, "
                "action VARCHAR NOT NULL, mode VARCHAR NOT NULL, golden_version VARCHAR NOT NULL, "
                "challenger_version VARCHAR, metric VARCHAR NOT NULL, n BIGINT NOT NULL, "
                "estimate FLOAT NOT NULL, ci_low FLOAT NOT NULL, ci_high FLOAT NOT NULL, p_value FLOAT, "
                "e_value FLOAT, reason VARCHAR NOT NULL)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO decisions VALUES ('old', 1, 'keep', 'suggest', 'g', NULL, 'log_loss', "
                "0, 0, 0, 0, NULL, NULL, 'before checks')"
            )
        )
    engine.dispose()
    store = MetadataStore(url)
    store.create_schema()
    store.create_schema()  # safe to repeat
    new = new_decision(2, "promote", "auto", ("g", "c"), "better", "log_loss", checks=CHECKS)
    store.record_decision(new)
    assert store.decisions() == [new, *[d for d in store.decisions() if d.decision_id == "old"]]
    (old,) = [d for d in store.decisions() if d.decision_id == "old"]
    assert old.checks == [] and old.reason == "before checks"
    store.close()


def test_the_promoter_state_is_replaced_and_read_back_with_its_offset(store: MetadataStore) -> None:
    assert store.load_promoter_state() is None
    store.save_promoter_state(120, b"\x00first", saved_at_ms=1_000)
    store.save_promoter_state(250, b"\x00second\xff" * 1_000, saved_at_ms=2_000)  # replaces the first
    store.save_promoter_state(7, b"other", saved_at_ms=2_000, scope="promoter:other")
    assert store.load_promoter_state() == (250, b"\x00second\xff" * 1_000)
    assert store.load_promoter_state("promoter:other") == (7, b"other")
    assert store.prune(10**13, 0)["model_metrics"] == 0
    assert store.load_promoter_state() is not None, "pruning never resets the tests"


def test_forgetting_a_promoter_scope_deletes_its_state_and_status_only(store: MetadataStore) -> None:
    for scope in ("promoter", "promoter:other"):
        store.save_promoter_state(5, b"state", saved_at_ms=1_000, scope=scope)
        store.record_promoter_status(scope, 1_000, {"golden": "g.1"})

    store.forget_promoter_state()

    assert store.load_promoter_state() is None and store.promoter_status() is None
    assert store.load_promoter_state("promoter:other") == (5, b"state")
    assert store.promoter_status("promoter:other") == (1_000, {"golden": "g.1"})
