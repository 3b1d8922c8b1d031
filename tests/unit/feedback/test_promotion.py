"""The promoter's control loop: paired rows feed the right tests through matured cohorts; guardrails
and the sample ratio test hold winners; decisions map to routing changes."""

from __future__ import annotations

import dataclasses
import pickle
from collections import deque

import msgspec
import numpy as np
import pytest
from fastavro.validation import validate
from msgspec.structs import replace

from rig.feedback.delays import DelayModel, WindowConfig
from rig.feedback.guardrails import GuardrailConfig
from rig.feedback.metadata import ServingWindow
from rig.feedback.promotion import (
    PREVIOUS_GOLDEN_EXPERIMENT,
    REDO_MODELS,
    PromotionLoop,
    RecentKeys,
    SeenRows,
    control_events,
    manual_decision,
    redo_rows,
    row_key,
)
from rig.feedback.sequential import PromoterConfig
from rig.routing.table import control_key, fold, set_golden_event, start_experiment_event
from rig.wire.codec import Codec, load_schema
from rig.wire.partitioner import partition_for
from rig.wire.records import Decision, JoinedOutcome, to_plain
from tests.support.records import RequestOutcome

CONFIG = PromoterConfig(min_samples=200, min_effect=0.002, mode="auto")
WINDOW = WindowConfig(fixed_ms=5.0)
"""Rows below are 10 ms apart with outcomes 1 ms later: every request but the last batch's final one
matures by the end of its batch."""


def loop_of(config: PromoterConfig = CONFIG, **guardrails: float) -> PromotionLoop:
    return PromotionLoop(config, GuardrailConfig(**guardrails), WINDOW)


def routing(*events):
    return fold((control_key(e), e) for e in events)


def rows(
    golden: str,
    challenger: str,
    n: int,
    challenger_better: bool,
    seed: int = 0,
    start: int = 0,
    role: str = "shadow",
) -> list[JoinedOutcome]:
    """n requests 10 ms apart from `start` (ms), outcomes 1 ms after: a golden row and a challenger
    row each. The better model says 0.8 / 0.2, the other 0.55 / 0.45 (both calibrated enough)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    good = np.where(labels == 1, 0.8, 0.2)
    poor = np.where(labels == 1, 0.55, 0.45)
    g, c = (poor, good) if challenger_better else (good, poor)
    out = []
    for i in range(n):
        at = start + 10 * i
        common: RequestOutcome = {
            "request_id": f"r{at}",
            "entity_id": f"e{at}",
            "label": int(labels[i]),
            "prediction_time": at,
            "outcome_time": at + 1,
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
                role=role,  # type: ignore[arg-type]
                experiment="x",
                score=float(c[i]),
                golden_model_version=golden,
                golden_score=float(g[i]),
            )
        )
    return out


def decided(loop: PromotionLoop, table, now: int = 0) -> list[tuple[str, str | None, str]]:
    return [(d.action, d.challenger_version, d.reason.split(":")[0]) for d in loop.decide(now, table)]


def serving(challenger: str, batches: int, slowdown: float, failed: int = 0, end: int = 0) -> ServingWindow:
    """A serving window of `batches` batches whose log time ratio is exactly log(slowdown) +- 0.1."""
    timed = batches - failed
    spread = np.resize([0.1, -0.1], timed)
    return ServingWindow(
        scope="w1",
        window_end_ms=end,
        model_version=challenger,
        golden_version="m.1",
        batches=batches,
        failed=failed,
        timed=timed,
        log_ratio_mean=float(np.log(slowdown)),
        log_ratio_m2=float(np.sum(spread**2)),
    )


SHADOW = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "shadow", "t"))


def test_a_clearly_better_shadow_is_promoted_and_the_old_golden_kept_as_shadow() -> None:
    loop = loop_of()
    loop.observe(rows("m.1", "m.2", 100, challenger_better=True), SHADOW)
    assert loop.decide(0, SHADOW) == [], "no decision before the minimum sample"
    loop.observe(rows("m.1", "m.2", 400, challenger_better=True, seed=1, start=1_000), SHADOW)
    decisions = loop.decide(0, SHADOW)
    assert [(d.action, d.challenger_version) for d in decisions] == [("promote", "m.2")]
    checks = {check.name: check.state for check in decisions[0].checks}
    assert checks == {
        "primary": "pass",
        "latency": "unmeasured",
        "failed_batches": "unmeasured",
        "calibration": "pass",
    }, "no worker records serving statistics: those guardrails say so and do not block"
    events = control_events(decisions[0], SHADOW)
    assert [(e.kind, e.model_version, e.experiment) for e in events] == [
        ("set_golden", "m.2", None),
        ("start_experiment", "m.1", PREVIOUS_GOLDEN_EXPERIMENT),
    ]
    # rig.decisions is a topic anybody may write to: a promotion that names no challenger changes nothing
    assert control_events(replace(decisions[0], challenger_version=None), SHADOW) == []


def test_the_previous_golden_beating_the_current_one_is_a_rollback() -> None:
    table = routing(
        set_golden_event("m.1", "t"),
        set_golden_event("m.2", "t"),
        start_experiment_event(PREVIOUS_GOLDEN_EXPERIMENT, "m.1", "shadow", "t"),
    )
    assert table.golden == "m.2" and table.previous_golden == "m.1"
    loop = loop_of()
    loop.observe(rows("m.2", "m.1", 500, challenger_better=True), table)
    loop.observe_serving([dataclasses.replace(serving("m.1", 5, 9.0), golden_version="m.2")])  # no hold
    decisions = loop.decide(0, table)
    assert [d.action for d in decisions] == ["demote"]
    assert decisions[0].reason.startswith("rollback")
    events = control_events(decisions[0], table)
    assert [(e.kind, e.model_version or e.experiment) for e in events] == [
        ("set_golden", "m.1"),
        ("stop_experiment", PREVIOUS_GOLDEN_EXPERIMENT),
    ]


def test_rows_of_another_golden_do_not_count_and_a_switch_starts_over() -> None:
    loop = loop_of()
    loop.observe(rows("m.0", "m.2", 500, challenger_better=True), SHADOW)
    assert loop.decide(0, SHADOW) == []
    assert loop.promoter is not None and loop.promoter.stale_rows == 500
    switched = routing(set_golden_event("m.1", "t"), set_golden_event("m.3", "t"))
    loop.observe([], switched)
    assert loop.promoter is not None and loop.promoter.golden_version == "m.3" and loop.promoter.pairs == {}
    assert loop.cohorts.pending == {}


def test_a_manual_decision_is_a_valid_decision_record() -> None:
    decision = manual_decision("demote", "m.2", None, "by hand", 5)
    assert validate(to_plain(decision), load_schema("Decision"), raise_errors=False)
    assert decision.mode == "manual" and decision.n == 0 and decision.checks == []


def test_redelivered_rows_are_folded_in_once() -> None:
    once, twice = loop_of(), loop_of()
    batch = rows("m.1", "m.2", 300, challenger_better=True)
    assert once.observe(batch, SHADOW) == batch
    twice.observe(batch, SHADOW)
    assert twice.observe(batch[:200], SHADOW) == []  # the uncommitted tail, read again after a restart
    assert twice.duplicate_rows == 200 and once.duplicate_rows == 0
    assert once.promoter is not None and twice.promoter is not None
    # the last request has not matured: its window ends after the latest outcome seen
    assert twice.promoter.pairs["m.2"].n == once.promoter.pairs["m.2"].n == 299
    evidence = [replace(d, decision_id="") for d in once.decide(0, SHADOW)]
    assert [replace(d, decision_id="") for d in twice.decide(0, SHADOW)] == evidence


def test_recent_keys_forget_the_oldest_beyond_capacity() -> None:
    keys = RecentKeys(capacity=2)
    assert keys.first_time(1) and keys.first_time(2)
    assert not keys.first_time(1)
    assert keys.first_time(3)  # 1 is forgotten now
    assert keys.first_time(1)


def test_recent_keys_come_back_from_a_pickle_in_order_and_still_tell_repeats() -> None:
    keys = RecentKeys(capacity=3)
    for request in ("r1", "r2", "r3"):
        keys.first_time(row_key(request, "m"))

    restored = pickle.loads(pickle.dumps(keys))

    assert list(restored) == list(keys)
    assert not restored.first_time(row_key("r2", "m"))
    assert restored.first_time(row_key("r4", "m"))  # r1, the oldest, is forgotten
    assert restored.first_time(row_key("r1", "m"))
    assert not restored.first_time(row_key("r3", "m"))


@pytest.mark.parametrize(
    "state",
    [
        {"capacity": 2, "_order": deque([("r1", "m"), ("r2", "m")]), "_keys": {("r1", "m"), ("r2", "m")}},
        (2, msgspec.msgpack.encode([("r1", "m"), ("r2", "m")])),
    ],
    ids=["attributes", "msgpack pairs"],
)
def test_recent_keys_saved_in_earlier_forms_still_load(state: object) -> None:
    keys = RecentKeys.__new__(RecentKeys)
    keys.__setstate__(state)  # type: ignore[arg-type]

    assert list(keys) == [("r1", "m"), ("r2", "m")]
    assert not keys.first_time(("r1", "m"))
    assert keys.first_time(("r3", "m")) and keys.first_time(("r1", "m"))


def test_the_row_key_is_the_same_in_every_process_and_tells_requests_and_models_apart() -> None:
    assert row_key("r1", "m.1") == 0xAA7E8D5F869D7E0  # saved states hold these: never changes
    keys = {row_key(f"r{i}", f"m.{j}") for i in range(1000) for j in range(3)}
    assert len(keys) == 3000 and all(0 <= key < 2**64 for key in keys)
    assert row_key("r1", "m.12") != row_key("r1m", ".12")


def test_a_repeat_is_told_after_any_number_of_other_partitions_rows_but_not_beyond_its_own_window() -> None:
    """A killed worker's partitions wait out the session timeout while the others go on: the repeat of
    a row comes after many rows of the other partitions, but few of its own."""
    seen = SeenRows(partitions=4, capacity=100)
    first = rows("m.1", "m.2", 1, challenger_better=True)[0]
    home = partition_for(first.entity_id.encode(), 4)
    others = [
        row
        for row in rows("m.1", "m.2", 20_000, challenger_better=True, start=10)
        if row_key_partition(row) != home
    ]
    assert seen.first_time(first)
    assert all(seen.first_time(row) for row in others) and len(others) > 20_000
    assert not seen.first_time(first), "told after 20,000+ rows of the other partitions"
    own = [
        row
        for row in rows("m.1", "m.2", 2_000, challenger_better=True, start=10**6)
        if row_key_partition(row) == home
    ]
    assert all(seen.first_time(row) for row in own[:100])
    assert seen.first_time(first), "forgotten after `capacity` rows of its own partition (redo_rows)"


def row_key_partition(row: JoinedOutcome) -> int:
    return partition_for(row.entity_id.encode(), 4)


def test_the_window_per_partition_holds_the_rows_of_a_crashed_worker_s_batches_in_flight_and_redone() -> None:
    assert redo_rows(max_open_batches=4, batch_max=500) == 2 * 4 * 500 * REDO_MODELS == 40_000


def test_a_state_saved_with_one_window_for_every_partition_goes_on_telling_its_pairs_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = rows("m.1", "m.2", 300, challenger_better=True)
    before = loop_of()
    before.observe(batch, SHADOW)
    old = RecentKeys(capacity=1_000)  # what the loop held then: (request, model) pairs, all partitions
    for row in batch:
        old.first_time((row.request_id, row.model_version))
    before._seen = old  # type: ignore[assignment]
    monkeypatch.setattr(
        RecentKeys, "__getstate__", lambda keys: (keys.capacity, msgspec.msgpack.encode(list(keys)))
    )
    state = before.state()  # as the rig saved it then
    monkeypatch.undo()

    after = loop_of()
    after.restore(state)

    assert after.observe(batch[:200], SHADOW) == [], "the saved pairs are still repeats"
    assert after.duplicate_rows == 200
    later = rows("m.1", "m.2", 600, challenger_better=True, start=10**6)
    assert after.observe(later, SHADOW) == later
    assert after.observe(batch[:2], SHADOW) == batch[:2], "forgotten after as many rows as they were"


def test_the_snapshot_shows_every_test_of_each_challenger_and_the_label_window() -> None:
    loop = loop_of()
    empty = loop.snapshot()
    assert empty["golden"] is None and empty["challengers"] == {} and empty["duplicate_rows"] == 0
    batch = rows("m.1", "m.2", 300, challenger_better=True)
    loop.observe(batch, SHADOW)
    loop.observe(batch[:10], SHADOW)
    snapshot = loop.snapshot(SHADOW)
    pair = loop.promoter.pairs["m.2"]  # type: ignore[union-attr]
    assert snapshot["golden"] == "m.1" and snapshot["duplicate_rows"] == 10
    entry = snapshot["challengers"]["m.2"]
    assert entry["n"] == 299 and entry["mean_gain"] == pair.mean > 0
    assert entry["ci_low"] < entry["mean_gain"] < entry["ci_high"] and entry["p_value"] == pair.p_value
    assert [check["name"] for check in entry["checks"]] == [
        "primary",
        "latency",
        "failed_batches",
        "calibration",
    ]
    assert entry["checks"][0]["estimate"] == -pair.mean
    assert snapshot["label_window_ms"] == 5.0
    assert snapshot["cohorts"] == {
        "watermark_ms": 2_991,
        "pending": 1,
        "counted": 300,
        "beyond_window": 0,
        "waiting_for_window": 0,
    }


def symmetric_rows(n: int, positive_delay_ms: int) -> list[JoinedOutcome]:
    """Alternating labels, golden at 0.5, a challenger better on negatives and worse on positives by
    exactly as much (E[d] = 0), positives known `positive_delay_ms` after their request; by arrival."""
    out = []
    for i in range(n):
        label, at = i % 2, 10 * i
        score = 1 / 2.8 if label else 0.3  # d = -log 1.4 on positives, +log 1.4 on negatives
        common: RequestOutcome = {
            "request_id": f"r{i}",
            "entity_id": f"e{i}",
            "label": label,
            "prediction_time": at,
            "outcome_time": at + (positive_delay_ms if label else 10),
        }
        out.append(JoinedOutcome(**common, model_version="m.1", role="golden", score=0.5))
        out.append(
            JoinedOutcome(
                **common,
                model_version="m.2",
                role="shadow",
                experiment="x",
                score=score,
                golden_model_version="m.1",
                golden_score=0.5,
            )
        )
    return sorted(out, key=lambda row: row.outcome_time)


def test_matured_cohorts_remove_the_bias_of_label_dependent_delays() -> None:
    arrived = [row for row in symmetric_rows(4_000, positive_delay_ms=15_000) if row.outcome_time <= 20_000]
    history = DelayModel()
    history.add(np.r_[np.zeros(1_000), np.ones(1_000)], np.r_[np.full(1_000, 10.0), np.full(1_000, 15_000.0)])
    loop = PromotionLoop(CONFIG, GuardrailConfig(), WindowConfig())
    loop.seed_delays(history)
    for lo in range(0, len(arrived), 500):
        loop.observe(arrived[lo : lo + 500], SHADOW)
    window = loop.label_window_ms
    assert window is not None and 15_000 <= window < 15_000 * 1.13, "the bin edge above the delay"
    pair = loop.promoter.pairs["m.2"]  # type: ignore[union-attr]
    assert pair.n == pytest.approx((20_000 - window) / 10, abs=20), "requests older than W matured"
    assert abs(pair.mean) < 0.01, "matured requests have the population's label mix: E[d] = 0"
    assert not [d for d in loop.decide(0, SHADOW) if d.action == "promote"]
    as_arrived = np.array([(r.golden_score or 0.0, r.score, r.label) for r in arrived if r.role == "shadow"])
    naive = np.where(
        as_arrived[:, 2] == 1, np.log(as_arrived[:, 1] / 0.5), np.log((1 - as_arrived[:, 1]) / 0.5)
    )
    assert naive.mean() > 0.15, "as arrived, negatives dominate and the challenger looks much better"


def test_rows_whose_outcome_came_after_the_window_do_not_count() -> None:
    loop = loop_of()
    late = [
        msgspec.structs.replace(row, outcome_time=row.prediction_time + 50)
        for row in rows("m.1", "m.2", 10, challenger_better=True)
    ]
    loop.observe(late + rows("m.1", "m.2", 100, challenger_better=True, start=1_000), SHADOW)
    assert loop.cohorts.beyond_window == 10 and loop.promoter.pairs["m.2"].n == 99  # type: ignore[union-attr]


def test_a_winner_waiting_for_a_guardrail_is_held_once_and_promoted_when_it_passes() -> None:
    loop = loop_of()
    loop.observe(rows("m.1", "m.2", 500, challenger_better=True), SHADOW)
    loop.observe_serving([serving("m.2", 10, 1.0)])  # too few timed batches to pass
    (held,) = loop.decide(0, SHADOW)
    assert held.action == "keep" and held.reason.startswith(
        "held (not passed: latency pending, failed_batches"
    )
    assert loop.decide(1, SHADOW) == [], "a hold is recorded once"
    loop.observe_serving([serving("m.2", 1_000, 1.0, end=1)])
    assert decided(loop, SHADOW) == [
        ("promote", "m.2", "challenger better by more than the minimum effect 0.002")
    ]


@pytest.mark.parametrize(
    ("window", "failing"),
    [
        (serving("m.2", 1_000, 3.0), "latency fail"),
        (serving("m.2", 1_000, 1.0, failed=100), "failed_batches fail"),
    ],
)
def test_a_winner_that_is_3x_slower_or_fails_batches_is_never_promoted(
    window: ServingWindow, failing: str
) -> None:
    loop = loop_of()
    loop.observe(rows("m.1", "m.2", 500, challenger_better=True), SHADOW)
    loop.observe_serving([window])
    (held,) = loop.decide(0, SHADOW)
    assert held.action == "keep" and failing in held.reason
    loop.observe(rows("m.1", "m.2", 2_000, challenger_better=True, seed=2, start=10_000), SHADOW)
    assert not [
        d
        for d in loop.decide(
            1,
            SHADOW,
        )
        if d.action == "promote"
    ]


def test_a_miscalibrated_winner_is_held_by_the_calibration_guardrail() -> None:
    rng = np.random.default_rng(4)
    n = 10_000
    logit = rng.normal(-1.5, 1.5, n)
    labels = rng.random(n) < 1 / (1 + np.exp(-logit))
    shrink = 2.25 / (2.25 + 1.0)  # the golden sees the log-odds through noise, shrunk: calibrated, blurry
    golden = 1 / (1 + np.exp(-(-1.5 + shrink * (logit + rng.normal(0, 1.0, n) + 1.5))))
    challenger = 1 / (1 + np.exp(-(logit + 0.6)))  # the exact ranking, odds 1.8x too high
    out = []
    for i in range(n):
        common: RequestOutcome = {
            "request_id": f"r{i}",
            "entity_id": "e",
            "label": int(labels[i]),
            "prediction_time": 10 * i,
            "outcome_time": 10 * i + 1,
        }
        out.append(JoinedOutcome(**common, model_version="m.1", role="golden", score=float(golden[i])))
        out.append(
            JoinedOutcome(
                **common,
                model_version="m.2",
                role="shadow",
                experiment="x",
                score=float(challenger[i]),
                golden_model_version="m.1",
                golden_score=float(golden[i]),
            )
        )
    loop = loop_of()
    loop.observe(out, SHADOW)
    decisions = loop.decide(0, SHADOW)
    checks = {check.name: check for check in decisions[0].checks}
    assert checks["primary"].state == "pass", "it wins on log loss"
    calibration = checks["calibration"]
    assert calibration.estimate is not None and calibration.margin is not None
    assert calibration.state != "pass" and calibration.estimate > calibration.margin == 0.03
    assert [d.action for d in decisions] == ["keep"] and f"calibration {calibration.state}" in decisions[
        0
    ].reason


AB = routing(set_golden_event("m.1", "t"), start_experiment_event("x", "m.2", "ab", "t", traffic_share=0.5))


def ab_rows(n: int, lost: float, seed: int) -> list[JoinedOutcome]:
    """A/B: half the entities answered by the (better) challenger; a share `lost` of those entities'
    outcomes never come back."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows("m.1", "m.2", n, challenger_better=True, seed=seed, role="ab"):
        entity = int(row.entity_id[1:])
        in_arm = (entity * 2_654_435_761 % 2**32) / 2**32 < 0.5
        if row.role == "golden" or in_arm:
            out.append(row)
    gone = {row.entity_id for row in out if row.role == "ab" and rng.random() < lost}
    return [row for row in out if row.entity_id not in gone]


def test_an_ab_split_with_outcomes_lost_for_one_arm_is_held_with_a_sample_ratio_decision() -> None:
    loop = loop_of()
    decisions = []
    for step in range(8):
        loop.observe(ab_rows(500, lost=0.4, seed=step), AB)
        decisions += loop.decide(step, AB)
    assert not [d for d in decisions if d.action == "promote"]
    (held,) = [d for d in decisions if d.reason.startswith("held: sample ratio mismatch")]
    assert held.action == "keep" and held.challenger_version == "m.2"
    srm = next(check for check in held.checks if check.name == "srm")
    assert srm.p_value is not None and srm.estimate is not None
    assert srm.state == "fail" and srm.p_value <= 0.05 and srm.estimate < 0.5 and srm.margin == 0.5
    assert loop.snapshot(AB)["srm"]["mismatch"] is True


def test_an_ab_split_without_loss_is_not_flagged() -> None:
    loop = loop_of()
    for step in range(8):
        loop.observe(ab_rows(500, lost=0.0, seed=step), AB)
        assert not [d for d in loop.decide(step, AB) if "sample ratio" in d.reason]
    check = next(c for c in loop.checks(AB)["m.2"] if c.name == "srm")
    assert check.state in ("pending", "pass") and loop.srm.p_value > 0.05


def test_decisions_with_their_checks_fit_the_schema_and_round_trip_the_codec() -> None:
    loop = loop_of()
    decisions = []
    for step in range(8):
        loop.observe(ab_rows(500, lost=0.4, seed=step), AB)
        decisions += loop.decide(step, AB)
    codec = Codec(Decision)
    for decision in decisions:
        assert validate(to_plain(decision), load_schema("Decision"), raise_errors=True)
        assert codec.decode(codec.encode(decision)) == decision
        assert [check.name for check in decision.checks][:1] == ["primary"]


def test_the_snapshot_counts_rows_waiting_for_their_window_and_rows_beyond_it() -> None:
    loop = loop_of()
    table = routing(
        set_golden_event("m.1", actor="t"), start_experiment_event("x", "m.2", "shadow", actor="t")
    )
    loop.observe(rows("m.1", "m.2", 10, challenger_better=True), table)
    entry = loop.snapshot(table)["challengers"]["m.2"]
    # The last request (predicted at 90 ms, outcome at 91 ms) waits until outcome time passes 95 ms.
    assert (entry["n"], entry["waiting"], entry["beyond_window"]) == (9, 1, 0)
    late = [
        replace(row, outcome_time=row.prediction_time + 50) for row in rows("m.1", "m.2", 2, True, start=200)
    ]
    loop.observe(late, table)
    entry = loop.snapshot(table)["challengers"]["m.2"]
    # Their outcomes moved outcome time on (the last one matured) but came 50 ms after their
    # predictions, beyond the 5 ms window: left out.
    assert (entry["n"], entry["waiting"], entry["beyond_window"]) == (10, 0, 2)
