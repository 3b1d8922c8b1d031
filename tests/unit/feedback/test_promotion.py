"""The promoter's control loop: paired rows feed the right tests; decisions map to routing changes."""

from __future__ import annotations

import numpy as np
from fastavro.validation import validate
from msgspec.structs import replace

from rig.feedback.promotion import (
    PREVIOUS_GOLDEN_EXPERIMENT,
    PromotionLoop,
    RecentKeys,
    control_events,
    manual_decision,
)
from rig.feedback.sequential import PromoterConfig
from rig.routing.table import control_key, fold, set_golden_event, start_experiment_event
from rig.wire.codec import load_schema
from rig.wire.records import JoinedOutcome, to_plain

CONFIG = PromoterConfig(min_samples=200, min_effect=0.002, mode="auto")


def routing(*events):
    return fold((control_key(e), e) for e in events)


def rows(golden: str, challenger: str, n: int, challenger_better: bool, seed: int = 0) -> list[JoinedOutcome]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    good = np.where(labels == 1, 0.8, 0.2)
    poor = np.where(labels == 1, 0.55, 0.45)
    g, c = (poor, good) if challenger_better else (good, poor)
    out = []
    for i in range(n):
        common = {
            "request_id": f"r{i}",
            "entity_id": "e",
            "label": int(labels[i]),
            "prediction_time": 0,
            "outcome_time": 1,
        }
        out.append(
            JoinedOutcome(
                **common,
                model_version=golden,
                role="golden",
                experiment=None,
                score=float(g[i]),
                golden_model_version=None,
                golden_score=None,
            )
        )
        out.append(
            JoinedOutcome(
                **common,
                model_version=challenger,
                role="shadow",
                experiment="x",
                score=float(c[i]),
                golden_model_version=golden,
                golden_score=float(g[i]),
            )
        )
    return out


def test_a_clearly_better_shadow_is_promoted_and_the_old_golden_kept_as_shadow() -> None:
    table = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "shadow", "t"))
    loop = PromotionLoop(CONFIG)
    loop.observe(rows("m.1", "m.2", 100, challenger_better=True), table)
    assert loop.decide(0, table) == [], "no decision before the minimum sample"
    loop.observe(rows("m.1", "m.2", 400, challenger_better=True, seed=1), table)
    decisions = loop.decide(0, table)
    assert [(d.action, d.challenger_version) for d in decisions] == [("promote", "m.2")]
    events = control_events(decisions[0], table)
    assert [(e.kind, e.model_version, e.experiment) for e in events] == [
        ("set_golden", "m.2", None),
        ("start_experiment", "m.1", PREVIOUS_GOLDEN_EXPERIMENT),
    ]


def test_the_previous_golden_beating_the_current_one_is_a_rollback() -> None:
    table = routing(
        set_golden_event("m.1", "t"),
        set_golden_event("m.2", "t"),
        start_experiment_event(PREVIOUS_GOLDEN_EXPERIMENT, "m.1", "shadow", "t"),
    )
    assert table.golden == "m.2" and table.previous_golden == "m.1"
    loop = PromotionLoop(CONFIG)
    loop.observe(rows("m.2", "m.1", 500, challenger_better=True), table)
    decisions = loop.decide(0, table)
    assert [d.action for d in decisions] == ["demote"]
    assert decisions[0].reason.startswith("rollback")
    events = control_events(decisions[0], table)
    assert [(e.kind, e.model_version or e.experiment) for e in events] == [
        ("set_golden", "m.1"),
        ("stop_experiment", PREVIOUS_GOLDEN_EXPERIMENT),
    ]


def test_rows_of_another_golden_do_not_count_and_a_switch_starts_over() -> None:
    table = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "shadow", "t"))
    loop = PromotionLoop(CONFIG)
    loop.observe(rows("m.0", "m.2", 500, challenger_better=True), table)
    assert loop.decide(0, table) == []
    switched = routing(set_golden_event("m.1", "t"), set_golden_event("m.3", "t"))
    loop.observe([], switched)
    assert loop.promoter is not None and loop.promoter.golden_version == "m.3" and loop.promoter.pairs == {}


def test_a_manual_decision_is_a_valid_decision_record() -> None:
    decision = manual_decision("demote", "m.2", None, "by hand", 5)
    assert validate(to_plain(decision), load_schema("Decision"), raise_errors=False)
    assert decision.mode == "manual" and decision.n == 0


def test_redelivered_rows_are_folded_in_once() -> None:
    table = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "shadow", "t"))
    once, twice = PromotionLoop(CONFIG), PromotionLoop(CONFIG)
    batch = rows("m.1", "m.2", 300, challenger_better=True)
    assert once.observe(batch, table) == batch
    twice.observe(batch, table)
    assert twice.observe(batch[:200], table) == []  # the uncommitted tail, read again after a restart
    assert twice.duplicate_rows == 200 and once.duplicate_rows == 0
    assert once.promoter is not None and twice.promoter is not None
    assert twice.promoter.pairs["m.2"].n == once.promoter.pairs["m.2"].n == 300
    evidence = [replace(d, decision_id="") for d in once.decide(0, table)]
    assert [replace(d, decision_id="") for d in twice.decide(0, table)] == evidence


def test_recent_keys_forget_the_oldest_beyond_capacity() -> None:
    keys = RecentKeys(capacity=2)
    assert keys.first_time(("r1", "m")) and keys.first_time(("r2", "m"))
    assert not keys.first_time(("r1", "m"))
    assert keys.first_time(("r3", "m"))  # r1 is forgotten now
    assert keys.first_time(("r1", "m"))


def test_the_snapshot_shows_each_challengers_folded_pairs_gain_and_interval() -> None:
    table = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "shadow", "t"))
    loop = PromotionLoop(CONFIG)
    assert loop.snapshot() == {"golden": None, "challengers": {}, "duplicate_rows": 0}
    batch = rows("m.1", "m.2", 300, challenger_better=True)
    loop.observe(batch, table)
    loop.observe(batch[:10], table)
    snapshot = loop.snapshot()
    pair = loop.promoter.pairs["m.2"]  # type: ignore[union-attr]
    assert snapshot["golden"] == "m.1" and snapshot["duplicate_rows"] == 10
    entry = snapshot["challengers"]["m.2"]
    assert entry["n"] == 300 and entry["mean_gain"] == pair.mean > 0
    assert entry["ci_low"] < entry["mean_gain"] < entry["ci_high"] and entry["p_value"] == pair.p_value
