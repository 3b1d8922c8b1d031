"""Join state machine: every kind of outcome is counted once and joined at most once."""

from __future__ import annotations

from collections import Counter
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from rig.feedback.join import (
    Entry,
    StreamClock,
    compact_outcome,
    compact_prediction,
    invalid_joined_reason,
    invalid_outcome_reason,
    joined_rows,
    on_outcome,
    on_prediction,
    sweep,
)
from rig.wire.records import ExperimentScore, JoinedOutcome, ModelScore, Outcome, Prediction

RETENTION = 60_000


def prediction(request_id: str, experiments: int = 2) -> Prediction:
    return Prediction(
        request_id=request_id,
        entity_id="ent-1",
        event_time=1_000,
        score=0.2,
        answered_by="risk.1",
        golden=ModelScore(model_version="risk.1", score=0.2),
        experiments=[
            ExperimentScore(experiment=f"e{i}", model_version=f"risk.{i + 2}", mode="shadow", score=0.1 * i)
            for i in range(experiments)
        ],
        transform_version="t-1",
    )


def outcome(request_id: str, label: int = 1, at: int = 5_000) -> Outcome:
    return Outcome(request_id=request_id, entity_id="ent-1", label=label, event_time=at)


class Table:
    """A dict standing in for the changelogged table, applying steps like the agent does."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.rows: list[JoinedOutcome] = []
        self.counts: Counter[str] = Counter()

    def apply(self, key: str, step) -> None:
        if step.entry is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = step.entry
        self.rows += step.joined
        self.counts.update(step.counts)

    def predict(self, request_id: str, now: int = 0) -> None:
        self.apply(
            request_id,
            on_prediction(
                self.entries.get(request_id),
                request_id,
                compact_prediction(prediction(request_id)),
                now,
                RETENTION,
            ),
        )

    def observe(self, request_id: str, now: int = 0, label: int = 1) -> None:
        self.apply(
            request_id,
            on_outcome(
                self.entries.get(request_id),
                request_id,
                compact_outcome(outcome(request_id, label)),
                now,
                RETENTION,
            ),
        )

    def sweep(self, now: int) -> None:
        for key in list(self.entries):
            self.apply(key, sweep(self.entries[key], now, RETENTION))


def test_an_outcome_joins_one_row_per_model_that_scored_the_request() -> None:
    table = Table()
    table.predict("r1")
    table.observe("r1", label=0)
    assert [(r.model_version, r.role, r.experiment) for r in table.rows] == [
        ("risk.1", "golden", None),
        ("risk.2", "shadow", "e0"),
        ("risk.3", "shadow", "e1"),
    ]
    assert {r.label for r in table.rows} == {0}
    assert table.rows[0].prediction_time == 1_000 and table.rows[0].outcome_time == 5_000
    assert table.counts == Counter(joined=1)


def test_an_outcome_before_its_prediction_joins_when_the_prediction_arrives() -> None:
    table = Table()
    table.observe("r1")
    assert table.rows == []
    table.predict("r1")
    assert len(table.rows) == 3
    assert table.counts == Counter(joined=1, out_of_order=1)


def test_duplicates_of_outcomes_and_predictions_are_counted_and_never_joined_twice() -> None:
    table = Table()
    table.predict("r1")
    table.predict("r1")
    table.observe("r1")
    table.observe("r1")
    table.observe("r1")
    table.predict("r1")
    assert len(table.rows) == 3
    assert table.counts == Counter(joined=1, duplicate_outcomes=2, duplicate_predictions=2)


def test_an_outcome_after_retention_is_late_and_not_joined() -> None:
    table = Table()
    table.predict("r1", now=0)
    table.sweep(now=RETENTION + 1)
    table.observe("r1", now=RETENTION + 2)
    assert table.rows == []
    assert table.counts == Counter(expired_unjoined=1, late=1)
    table.sweep(now=3 * RETENTION)
    assert table.entries == {}, "expired markers are removed after another retention period"


def test_an_outcome_for_an_unknown_request_becomes_an_orphan_after_retention() -> None:
    table = Table()
    table.observe("nobody", now=0)
    table.sweep(now=RETENTION // 2)
    assert table.counts == Counter()
    table.sweep(now=RETENTION + 1)
    assert table.counts == Counter(orphans=1)
    assert table.entries == {}


def test_a_mixed_stream_counts_each_kind_exactly() -> None:
    table = Table()
    for i in range(100):
        table.predict(f"r{i}")
    for i in range(0, 100, 2):
        table.observe(f"r{i}")  # 50 joined
    for i in range(0, 20, 2):
        table.observe(f"r{i}")  # 10 duplicates
    for i in range(10):
        table.observe(f"x{i}")  # 10 for unknown requests
    table.sweep(now=RETENTION + 1)  # 50 unjoined predictions expire, 10 orphans
    for i in range(1, 11, 2):
        table.observe(f"r{i}", now=RETENTION + 2)  # 5 late
    assert len(table.rows) == 50 * 3
    assert table.counts == Counter(joined=50, duplicate_outcomes=10, orphans=10, expired_unjoined=50, late=5)


def test_an_outcome_beyond_retention_is_late_even_if_no_sweep_ran_before_it() -> None:
    swept, unswept = Table(), Table()
    for table in (swept, unswept):
        table.predict("r1", now=0)
    swept.sweep(now=RETENTION + 1)
    swept.observe("r1", now=RETENTION + 2)
    unswept.observe("r1", now=RETENTION + 2)
    assert unswept.rows == [] and unswept.counts == swept.counts == Counter(expired_unjoined=1, late=1)


def test_an_outcome_within_retention_joins_however_late_it_is_read() -> None:
    table = Table()
    table.predict("r1", now=0)
    table.observe("r1", now=RETENTION - 1)  # read from a backlog long after: source time decides
    assert len(table.rows) == 3 and table.counts == Counter(joined=1)


def test_a_prediction_long_after_its_outcome_leaves_an_orphan_and_waits_for_its_own() -> None:
    table = Table()
    table.observe("r1", now=0)
    table.predict("r1", now=RETENTION + 1)
    assert table.rows == [] and table.counts == Counter(orphans=1)
    assert table.entries["r1"]["state"] == "predicted"


@settings(max_examples=400, deadline=None)
@given(prediction_ms=st.integers(0, 3 * RETENTION), outcome_ms=st.integers(0, 3 * RETENTION))
def test_a_request_joins_or_not_by_its_timestamps_whichever_of_its_records_is_read_first(
    prediction_ms: int, outcome_ms: int
) -> None:
    # Over a backlog the join reads both topics at once, and either record of a request may come first.
    prediction_first, outcome_first = Table(), Table()
    prediction_first.predict("r1", now=prediction_ms)
    prediction_first.observe("r1", now=outcome_ms)
    outcome_first.observe("r1", now=outcome_ms)
    outcome_first.predict("r1", now=prediction_ms)

    delay = outcome_ms - prediction_ms
    if abs(delay) < RETENTION:
        expected = Counter(joined=1)
    elif delay > 0:  # the outcome came a retention or more after its prediction
        expected = Counter(expired_unjoined=1, late=1)
    else:  # a retention or more before it: nobody had predicted that request
        expected = Counter(orphans=1)
    assert prediction_first.counts == expected
    assert outcome_first.counts - Counter(out_of_order=1) == expected
    assert len(prediction_first.rows) == len(outcome_first.rows) == (3 if expected["joined"] else 0)
    assert prediction_first.entries == outcome_first.entries


Times = tuple[int | None, int | None]
"""A request's prediction and outcome source times (None: that record never comes)."""
Backlog = tuple[dict[str, Times], list[tuple[str, int]], dict[str, list[tuple[int, str]]]]
"""Requests, the steps of reading them, and each topic's records (time, request id) in offset order."""


@st.composite
def a_backlog_read(draw: st.DrawFn) -> Backlog:
    """Requests with a prediction and an outcome (either may be missing) at source times, and an order
    the join may read them in: each topic in timestamp order, the two interleaved anyhow, a topic
    sometimes read again from a few records back (a redelivery after a rebalance), sweeps in between."""
    requests: dict[str, Times] = {}
    for index in range(draw(st.integers(1, 6))):
        prediction_ms = draw(st.none() | st.integers(0, 4 * RETENTION))
        outcome_ms = draw(st.none() | st.integers(0, 4 * RETENTION))
        requests[f"r{index}"] = (prediction_ms, outcome_ms)
    # Only the times that are not None: a filter on times[side] does not narrow it for mypy.
    topics = cast(
        dict[str, list[tuple[int, str]]],
        {
            kind: sorted((times[side], rid) for rid, times in requests.items() if times[side] is not None)
            for side, kind in enumerate(("prediction", "outcome"))
        },
    )
    steps = draw(st.lists(st.sampled_from(["prediction", "outcome", "again", "sweep"]), max_size=60))
    return requests, [(step, draw(st.integers(1, 3))) for step in steps] + [("rest", 0)], topics


@settings(max_examples=400, deadline=None)
@given(a_backlog_read())
def test_however_the_join_reads_a_backlog_a_request_joins_once_if_its_records_are_within_retention(
    drawn: Backlog,
) -> None:
    requests, steps, topics = drawn
    table = Table()
    read = {"prediction": 0, "outcome": 0}
    newest: dict[str, int] = {}
    joins: Counter[str] = Counter()

    def read_next(kind: str) -> None:
        at_ms, rid = topics[kind][read[kind]]
        read[kind] += 1
        newest[kind] = max(newest.get(kind, at_ms), at_ms)
        rows_before = len(table.rows)
        (table.predict if kind == "prediction" else table.observe)(rid, now=at_ms)
        joins[rid] += len(table.rows) > rows_before

    for step, count in steps:
        if step == "rest":
            for kind in read:
                while read[kind] < len(topics[kind]):
                    read_next(kind)
        elif step == "sweep" and len(newest) == 2:  # StreamClock: the slower source's newest time
            table.sweep(now=min(newest.values()))
        elif step == "again":  # a redelivery: only of records a retention younger than the clock
            clock = min(newest.values()) if len(newest) == 2 else None
            for kind in read:
                back = read[kind] - count
                if back >= 0 and (clock is None or topics[kind][back][0] > clock - RETENTION):
                    read[kind] = back
        elif step in read and read[step] < len(topics[step]):
            read_next(step)

    for rid, (prediction_ms, outcome_ms) in requests.items():
        within = (
            prediction_ms is not None
            and outcome_ms is not None
            and abs(outcome_ms - prediction_ms) < RETENTION
        )
        assert joins[rid] == (1 if within else 0), (rid, requests[rid])


def test_the_stream_clock_holds_at_the_backlog_and_runs_with_the_wall_clock_once_caught_up() -> None:
    clock = StreamClock(started_wall_ms=1_000_000, retention_ms=RETENTION, sources=("only",))
    assert clock.now(1_000_000 + RETENTION - 1) is None, "no event yet: a backlog may be on its way"
    assert clock.now(1_000_000 + RETENTION) == 1_000_000 + RETENTION, "idle for a whole retention"
    clock.observe("only", source_ms=5_000, wall_ms=2_000_000)  # reading a backlog from long ago
    assert clock.now(2_000_000) == 5_000
    clock.observe("only", source_ms=4_000, wall_ms=2_000_100)  # an older message never moves it back
    assert clock.now(2_000_500) == 5_500
    clock.observe("only", source_ms=2_000_900, wall_ms=2_001_000)  # caught up
    assert clock.now(2_011_000) == 2_010_900


def test_the_stream_clock_waits_for_the_slowest_source() -> None:
    clock = StreamClock(started_wall_ms=0, retention_ms=RETENTION, sources=("prediction", "outcome"))
    clock.observe("prediction", source_ms=900_000, wall_ms=1_000)  # new predictions of a backlog first
    assert clock.now(1_000) is None, "the outcomes of the backlog are not read yet"
    clock.observe("outcome", source_ms=100_000, wall_ms=2_000)  # then its older outcomes
    assert clock.now(2_000) == 100_000
    table = Table()
    table.predict("r1", now=100_000 - RETENTION + 1)  # an early prediction of the backlog...
    table.sweep(cast(int, clock.now(2_000)))  # 100_000, as asserted above
    table.observe("r1", now=100_000)  # ...joins its outcome, read after the newer predictions
    assert table.counts == Counter(joined=1)
    clock.observe("outcome", source_ms=800_000, wall_ms=3_000)
    assert clock.now(3_000) == 800_000, "both sources caught up"
    assert clock.now(3_000 + RETENTION) == 800_000 + RETENTION


@pytest.mark.parametrize("label", [2, -1, 7])
def test_an_outcome_with_a_label_other_than_0_or_1_is_invalid_and_says_why(label: int) -> None:
    assert invalid_outcome_reason(outcome("r1", label=label)) == f"label must be 0 or 1, got {label}"


@pytest.mark.parametrize("label", [0, 1])
def test_outcomes_labelled_0_or_1_are_valid(label: int) -> None:
    assert invalid_outcome_reason(outcome("r1", label=label)) is None


def test_joined_rows_the_promoter_could_not_score_are_invalid_and_say_why() -> None:
    golden, challenger = joined_rows(
        "r1", compact_prediction(prediction("r1", experiments=2)), {"label": 1, "event_time": 5}
    )[:2]
    assert invalid_joined_reason(golden) is None
    assert invalid_joined_reason(challenger) is None
    assert invalid_joined_reason(replace(golden, label=2)) == "label must be 0 or 1, got 2"
    assert (
        invalid_joined_reason(replace(golden, score=1.5))
        == "score must be probabilities in [0, 1], got [1.5]"
    )
    nan_score = invalid_joined_reason(replace(golden, score=float("nan")))
    assert nan_score is not None and "score" in nan_score
    assert invalid_joined_reason(replace(challenger, golden_score=None)) == (
        "golden_score must be probabilities in [0, 1], got [None]"
    )
    assert invalid_joined_reason(replace(golden, golden_score=None)) is None, "a golden row has no pair"
    nan_golden = invalid_joined_reason(replace(challenger, golden_score=float("nan")))
    assert nan_golden is not None and nan_golden.startswith("golden_score")
    assert invalid_joined_reason(replace(challenger, label=-1)) == "label must be 0 or 1, got -1"
