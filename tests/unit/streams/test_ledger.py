"""The offset ledger: a partition's offset advances only past batches whose outputs were all delivered."""

from __future__ import annotations

import threading

from streams.plane.ledger import OffsetLedger

A, B = ("rig.requests", 0), ("rig.requests", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_committable_before_a_batch_finishes() -> None:
    ledger = OffsetLedger()
    ledger.begin({A: 9})
    assert ledger.to_commit() == {}
    assert ledger.open_batches() == 1


def test_a_finished_batch_makes_the_offset_after_its_last_message_committable() -> None:
    ledger = OffsetLedger()
    batch = ledger.begin({A: 9, B: 4})
    ledger.finish(batch)
    assert ledger.to_commit() == {A: 10, B: 5}
    assert ledger.open_batches() == 0


def test_a_batch_finishing_early_never_lets_the_offset_skip_a_slower_batch_before_it() -> None:
    ledger = OffsetLedger()
    first = ledger.begin({A: 9})
    second = ledger.begin({A: 19, B: 3})
    ledger.finish(second)
    assert ledger.to_commit() == {B: 4}, "A waits for the first batch"
    ledger.finish(first)
    assert ledger.to_commit() == {A: 20, B: 4}


def test_committed_offsets_are_not_offered_again_until_they_move() -> None:
    ledger = OffsetLedger()
    ledger.finish(ledger.begin({A: 9}))
    ledger.committed({A: 10})
    assert ledger.to_commit() == {}
    ledger.finish(ledger.begin({A: 12}))
    assert ledger.to_commit() == {A: 13}


def test_dropped_partitions_close_the_batches_that_were_only_on_them() -> None:
    ledger = OffsetLedger()
    only_a = ledger.begin({A: 9})
    both = ledger.begin({A: 19, B: 3})
    ledger.drop([A])
    assert not ledger.holds(only_a)
    assert ledger.holds(both), "still on B"
    assert ledger.open_batches() == 1
    ledger.finish(both)
    assert ledger.to_commit() == {B: 4}, "nothing is committed for a dropped partition"


def test_a_partition_dropped_and_given_back_is_not_one_an_older_batch_commits_on() -> None:
    """Exactly once, a batch's transaction commits its `offsets_after`: had it kept A, given back and
    read on meanwhile, it would set A's committed offset back to its own."""
    ledger = OffsetLedger()
    both = ledger.begin({A: 19, B: 3})
    ledger.drop([A])
    ledger.begin({A: 40})  # A given back, read on from the new owner's commit

    assert ledger.offsets_after(both) == {B: 4}
    ledger.finish(both)
    assert ledger.to_commit() == {B: 4}, "A waits for its own batch"


def test_a_batch_of_outputs_only_stays_open_across_a_drop_and_says_it_consumed_nothing() -> None:
    """The exactly-once sink gives up a batch that consumed offsets and holds none any more; a batch of
    outputs only (the join's sweep) holds none from the start and is committed."""
    ledger = OffsetLedger()
    outputs_only = ledger.begin({})
    on_a = ledger.begin({A: 9})
    ledger.drop([A])

    assert (ledger.consumed(outputs_only), ledger.consumed(on_a)) == (False, True)
    assert ledger.open_batches() == 1
    ledger.finish(outputs_only)
    assert ledger.open_batches() == 0


def test_wait_finished_returns_once_the_partitions_batches_finish_in_another_thread() -> None:
    ledger = OffsetLedger()
    batch = ledger.begin({A: 9})
    other = ledger.begin({B: 9})
    finisher = threading.Timer(0.05, ledger.finish, args=(batch,))
    finisher.start()
    assert ledger.wait_finished([A], timeout_s=5)
    assert not ledger.wait_finished([B], timeout_s=0.05), "B's batch is still open"
    ledger.finish(other)
    assert ledger.wait_finished([A, B], timeout_s=0)


def test_stall_time_counts_from_the_oldest_open_batch_or_the_last_progress() -> None:
    clock = Clock()
    ledger = OffsetLedger(clock)
    first = ledger.begin({A: 9})
    clock.now += 30
    assert ledger.stalled_for() == {A: 30}
    ledger.finish(first)
    assert ledger.stalled_for() == {}, "no open batch, nothing stalls"
    clock.now += 500
    ledger.begin({A: 19})
    clock.now += 2
    assert ledger.stalled_for() == {A: 2}, "an idle partition starts a new batch with a fresh clock"


def test_no_room_while_the_handler_holds_a_batch_even_below_the_open_limit() -> None:
    ledger = OffsetLedger()
    batch = ledger.begin({A: 9}, in_hand=True)
    assert not ledger.wait_room(limit=4, timeout_s=0.01)
    ledger.handled(batch)
    assert ledger.wait_room(limit=4, timeout_s=0.01)
    assert ledger.open_batches() == 1  # handled is not delivered: its offsets still wait


def test_wait_room_wakes_when_the_handler_lets_go_in_another_thread() -> None:
    ledger = OffsetLedger()
    batch = ledger.begin({A: 9}, in_hand=True)
    threading.Timer(0.05, ledger.handled, (batch,)).start()
    assert ledger.wait_room(limit=4, timeout_s=5)


def test_batches_not_in_hand_count_only_against_the_open_limit() -> None:
    ledger = OffsetLedger()
    ledger.begin({})  # outputs that no offset waits for (the join's sweep)
    assert ledger.wait_room(limit=2, timeout_s=0.01)
    ledger.begin({A: 9})
    assert not ledger.wait_room(limit=2, timeout_s=0.01)


def test_a_finished_or_dropped_batch_is_no_longer_in_hand() -> None:
    ledger = OffsetLedger()
    ledger.finish(ledger.begin({A: 9}, in_hand=True))
    assert ledger.wait_room(limit=4, timeout_s=0.01)
    ledger.begin({B: 9}, in_hand=True)
    ledger.drop([B])
    assert ledger.wait_room(limit=4, timeout_s=0.01)
