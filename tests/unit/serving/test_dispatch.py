"""rig.serving.dispatch: golden scores every row, shadows score and never answer, A/B experiments answer
sticky, non-overlapping shares of entities, caps skip rows, and there is no routing without a golden."""

from __future__ import annotations

import numpy as np
import pytest

from rig.errors import RoutingError
from rig.routing.table import (
    RoutingTable,
    control_key,
    fold,
    kill_experiment_event,
    set_golden_event,
    start_experiment_event,
)
from rig.serving.dispatch import DispatchPlan, TrafficLimiter, plan_batch
from rig.wire.records import ControlEvent

ENTITIES = [f"customer-{i}" for i in range(100_000)]


def table(*events: ControlEvent, start: RoutingTable | None = None) -> RoutingTable:
    records = [(control_key(event), event) for event in events]
    return fold(records) if start is None else fold(records, start)


def golden(version: str) -> ControlEvent:
    return set_golden_event(version, "ana")


def shadow(name: str, version: str, cap: float | None = None) -> ControlEvent:
    return start_experiment_event(name, version, "shadow", "ana", traffic_cap_rps=cap)


def ab(name: str, version: str, share: float, cap: float | None = None) -> ControlEvent:
    return start_experiment_event(name, version, "ab", "ana", traffic_share=share, traffic_cap_rps=cap)


def answers(plan: DispatchPlan, entities: list[str]) -> dict[str, str]:
    return dict(zip(entities, plan.answered_by.tolist(), strict=True))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_golden_scores_and_answers_every_row_when_no_experiment_runs() -> None:
    plan = plan_batch(table(golden("m.1")), ENTITIES[:7])
    assert plan.golden == "m.1"
    assert list(plan.score_rows) == ["m.1"]
    assert plan.score_rows["m.1"].tolist() == list(range(7))
    assert plan.answered_by.tolist() == ["m.1"] * 7
    assert plan.experiment_of == {} and plan.capped == {}


def test_shadows_score_every_row_and_never_answer() -> None:
    routing = table(golden("m.1"), shadow("wide", "m.2"), shadow("tiny", "m.3"))
    plan = plan_batch(routing, ENTITIES[:50])
    for version in ("m.1", "m.2", "m.3"):
        assert plan.score_rows[version].tolist() == list(range(50))
    assert set(plan.answered_by.tolist()) == {"m.1"}
    assert {v: r.name for v, r in plan.experiment_of.items()} == {"m.2": "wide", "m.3": "tiny"}


def test_ab_experiments_answer_their_configured_share_of_100k_entities() -> None:
    routing = table(golden("m.1"), ab("deep", "m.2", 0.2), ab("wide", "m.3", 0.35), shadow("s", "m.4"))
    plan = plan_batch(routing, ENTITIES)
    shares = {v: float(np.mean(plan.answered_by == v)) for v in ("m.1", "m.2", "m.3", "m.4")}
    assert shares["m.2"] == pytest.approx(0.2, abs=0.01)
    assert shares["m.3"] == pytest.approx(0.35, abs=0.01)
    assert shares["m.1"] == pytest.approx(0.45, abs=0.01)
    assert shares["m.4"] == 0.0
    # The A/B experiment scores exactly the rows it answers.
    assert plan.score_rows["m.2"].tolist() == np.flatnonzero(plan.answered_by == "m.2").tolist()


def test_two_ab_experiments_never_share_an_entity() -> None:
    routing = table(golden("m.1"), ab("deep", "m.2", 0.5), ab("wide", "m.3", 0.5))
    plan = plan_batch(routing, ENTITIES[:20_000])
    deep, wide = set(plan.score_rows["m.2"].tolist()), set(plan.score_rows["m.3"].tolist())
    assert deep and wide and not deep & wide
    # Shares adding up to 1 leave nothing to golden as answer, yet golden still scores every row.
    assert len(deep) + len(wide) == 20_000
    assert plan.score_rows["m.1"].size == 20_000


def test_assignment_is_sticky_across_calls_batches_and_row_positions() -> None:
    routing = table(golden("m.1"), ab("deep", "m.2", 0.3))
    whole = answers(plan_batch(routing, ENTITIES[:3000]), ENTITIES[:3000])
    again = answers(plan_batch(routing, ENTITIES[:3000]), ENTITIES[:3000])
    rng = np.random.default_rng(7)
    shuffled = [ENTITIES[i] for i in rng.permutation(3000)]
    in_batches: dict[str, str] = {}
    for start in range(0, 3000, 500):
        batch = [*shuffled[start : start + 500], "customer-0"]  # repeats inside and across batches
        in_batches.update(answers(plan_batch(routing, batch), batch))
    assert again == whole
    assert in_batches == whole
    assert set(whole.values()) == {"m.1", "m.2"}


def test_adding_a_shadow_moves_no_ab_assignment() -> None:
    before = table(golden("m.1"), ab("deep", "m.2", 0.3))
    after = table(shadow("wide", "m.3", cap=5.0), shadow("more", "m.4"), start=before)
    entities = ENTITIES[:5000]
    plan = plan_batch(after, entities, limiter=TrafficLimiter(FakeClock()))
    assert plan.answered_by.tolist() == plan_batch(before, entities).answered_by.tolist()
    assert plan.score_rows["m.3"].size == 5  # the shadow was there, and capped


def test_starting_a_second_ab_experiment_keeps_every_entity_of_the_first() -> None:
    before = table(golden("m.1"), ab("deep", "m.2", 0.3))
    after = table(ab("wide", "m.3", 0.4), start=before)
    entities = ENTITIES[:5000]
    first = plan_batch(before, entities).score_rows["m.2"].tolist()
    plan = plan_batch(after, entities)
    assert plan.score_rows["m.2"].tolist() == first
    assert plan.score_rows["m.3"].size > 0


def test_a_new_ab_experiment_draws_other_entities_than_the_one_before() -> None:
    entities = ENTITIES[:20_000]
    old = set(plan_batch(table(golden("m.1"), ab("old", "m.2", 0.2)), entities).score_rows["m.2"].tolist())
    new = set(plan_batch(table(golden("m.1"), ab("new", "m.3", 0.2)), entities).score_rows["m.3"].tolist())
    # Independent draws overlap on ~20 % of either group, not on all of it.
    assert len(old & new) / len(new) == pytest.approx(0.2, abs=0.03)


def test_the_salt_reshuffles_ab_assignment() -> None:
    routing = table(golden("m.1"), ab("deep", "m.2", 0.5))
    entities = ENTITIES[:2000]
    plain = plan_batch(routing, entities).answered_by
    salted = plan_batch(routing, entities, salt="2025-q3").answered_by
    assert np.mean(plain == salted) == pytest.approx(0.5, abs=0.05)


def test_killed_and_held_experiments_score_nothing() -> None:
    routing = table(golden("m.1"), ab("deep", "m.2", 0.6), shadow("wide", "m.3"), ab("late", "m.4", 0.5))
    deep = routing.experiment("deep")
    assert deep is not None
    routing = table(kill_experiment_event(deep, "ops", "errors"), start=routing)
    # "late" was held (0.6 + 0.5 > 1) and starts now that "deep" is killed.
    assert [r.name for r in routing.live_experiments] == ["wide", "late"]

    plan = plan_batch(routing, ENTITIES[:1000])
    assert "m.2" not in plan.score_rows and "m.2" not in plan.answered_by.tolist()
    assert set(plan.score_rows) == {"m.1", "m.3", "m.4"}

    held = table(golden("m.1"), ab("deep", "m.2", 0.6), ab("late", "m.4", 0.5))
    assert set(plan_batch(held, ENTITIES[:1000]).score_rows) == {"m.1", "m.2"}


def test_traffic_cap_limits_rows_scored_per_second_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = TrafficLimiter(clock, burst_seconds=1.0)
    routing = table(golden("m.1"), shadow("wide", "m.2", cap=100.0), shadow("free", "m.3"))
    batch = ENTITIES[:500]

    first = plan_batch(routing, batch, limiter=limiter)
    clock.now += 0.25
    second = plan_batch(routing, batch, limiter=limiter)
    clock.now += 60.0
    third = plan_batch(routing, batch, limiter=limiter)

    assert first.score_rows["m.2"].tolist() == list(range(100))  # a full bucket: one second's worth
    assert first.capped == {"wide": 400}
    assert second.score_rows["m.2"].size == 25 and second.capped == {"wide": 475}
    assert third.score_rows["m.2"].size == 100  # the bucket never holds more than its burst
    assert all(plan.score_rows["m.3"].size == 500 for plan in (first, second, third))


def test_capped_ab_rows_fall_back_to_golden_and_are_not_given_to_another_experiment() -> None:
    clock = FakeClock()
    routing = table(golden("m.1"), ab("deep", "m.2", 0.5, cap=10.0), ab("wide", "m.3", 0.5))
    entities = ENTITIES[:400]
    uncapped = plan_batch(routing, entities)
    plan = plan_batch(routing, entities, limiter=TrafficLimiter(clock))

    assigned = uncapped.score_rows["m.2"]
    assert plan.score_rows["m.2"].tolist() == assigned[:10].tolist()
    assert plan.capped == {"deep": assigned.size - 10}
    assert set(plan.answered_by[assigned[10:]].tolist()) == {"m.1"}
    assert plan.score_rows["m.3"].tolist() == uncapped.score_rows["m.3"].tolist()


def test_no_golden_model_is_a_routing_error() -> None:
    with pytest.raises(RoutingError, match="no golden model"):
        plan_batch(RoutingTable(), ENTITIES[:3])


def test_an_empty_batch_plans_only_the_golden() -> None:
    plan = plan_batch(table(golden("m.1"), shadow("wide", "m.2"), ab("deep", "m.3", 0.5)), [])
    assert {v: rows.size for v, rows in plan.score_rows.items()} == {"m.1": 0}
    assert plan.answered_by.size == 0


def test_plan_row_arrays_are_read_only() -> None:
    plan = plan_batch(table(golden("m.1"), shadow("wide", "m.2")), ENTITIES[:5])
    with pytest.raises(ValueError, match="read-only"):
        plan.score_rows["m.2"][0] = 4


def test_limiter_refills_at_its_rate_and_gives_at_least_one_row_for_slow_caps() -> None:
    clock = FakeClock()
    limiter = TrafficLimiter(clock, burst_seconds=2.0)
    assert limiter.take("a", 10.0, 100) == 20
    assert limiter.take("a", 10.0, 100) == 0
    clock.now += 0.5
    assert limiter.take("a", 10.0, 3) == 3
    assert limiter.take("a", 10.0, 100) == 2
    assert limiter.take("slow", 0.1, 5) == 1  # capacity is never below one row
    clock.now += 5.0
    assert limiter.take("slow", 0.1, 5) == 0
    clock.now += 5.0
    assert limiter.take("slow", 0.1, 5) == 1


def test_available_tells_what_take_would_grant_without_taking_it() -> None:
    clock = FakeClock()
    limiter = TrafficLimiter(clock, burst_seconds=1.0)
    assert limiter.available("x", 10.0) == 10
    assert limiter.available("x", 10.0) == 10
    assert limiter.take("x", 10.0, 4) == 4
    assert limiter.available("x", 10.0) == 6
    clock.now += 0.2
    assert limiter.available("x", 10.0) == 8
    assert limiter.take("x", 10.0, 100) == 8
    assert limiter.available("x", 10.0) == 0
