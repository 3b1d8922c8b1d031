"""The watchdog's judgement of stuck partitions (pure: no broker)."""

from __future__ import annotations

from faust.types import TP

from streams.rebalance import PartitionProgress, StuckPartitions

OUTCOMES_0 = TP("rig.outcomes", 0)
OUTCOMES_1 = TP("rig.outcomes", 1)


def progress(
    start: int | None = 25, read: int | None = 25, highwater: int | None = 38, **kw
) -> PartitionProgress:
    return PartitionProgress(
        start=start,
        read=read,
        highwater=highwater,
        in_flight=kw.get("in_flight", False),
        held=kw.get("held", False),
    )


def test_a_partition_waiting_without_progress_at_two_looks_is_stuck_once() -> None:
    watch = StuckPartitions(checks=2)
    assert watch.look({OUTCOMES_0: progress()}) == []
    assert watch.look({OUTCOMES_0: progress()}) == [OUTCOMES_0]
    assert watch.look({OUTCOMES_0: progress()}) == [], "watched afresh after a report"
    assert watch.look({OUTCOMES_0: progress()}) == [OUTCOMES_0]


def test_progress_between_looks_is_not_stuck() -> None:
    watch = StuckPartitions(checks=2)
    watch.look({OUTCOMES_0: progress(read=25, start=25)})
    assert watch.look({OUTCOMES_0: progress(read=30, start=25)}) == []
    assert watch.look({OUTCOMES_0: progress(read=30, start=31)}) == []


def test_caught_up_busy_or_held_partitions_are_never_stuck() -> None:
    watch = StuckPartitions(checks=1)
    looks = {
        OUTCOMES_0: progress(start=38, highwater=38),  # nothing waits
        OUTCOMES_1: progress(in_flight=True),  # an agent works on it
        TP("rig.requests", 0): progress(held=True),  # paused, or its stream buffer is full
        TP("rig.requests", 1): progress(start=None),  # its log start is not known yet
        TP("rig.requests", 2): progress(highwater=None),  # never fetched yet
    }
    assert watch.look(looks) == []


def test_a_partition_that_goes_quiet_between_looks_starts_over() -> None:
    watch = StuckPartitions(checks=2)
    watch.look({OUTCOMES_0: progress(), OUTCOMES_1: progress()})
    assert watch.look({OUTCOMES_1: progress()}) == [OUTCOMES_1]
    assert watch.look({OUTCOMES_0: progress()}) == [], "its first look was two looks ago"
