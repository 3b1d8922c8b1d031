"""Offsets that mean "answered and delivered": per partition, how far every batch is finished."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class _Span:
    """One batch's offsets on one partition."""

    batch_id: int
    last: int
    finished: bool = False


@dataclass
class _Partition:
    spans: deque[_Span] = field(default_factory=deque)
    committable: int | None = None  # one past the last offset of the longest finished prefix
    committed: int | None = None
    progressed_at: float = 0.0  # when its oldest open batch began, or its offset last moved


class OffsetLedger:
    """Batches handed out, per partition in offset order, and how far each partition is finished.

    A batch spans one or more partitions. `finish(batch)` marks it done on all of them; a partition's
    committable offset then moves past the longest prefix of finished batches, never past an
    unfinished one, so a batch that finishes early never lets the offset skip a slower batch before
    it. Thread-safe: batches begin in the consumer thread and finish in the producer's poll thread.

    A batch begun `in_hand` stays in hand until its handler is done with it (`handled`), or it is
    finished or dropped; `wait_room` waits for that too, so the source cuts the next batch only once
    the handler is free, from everything that arrived meanwhile.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._batches: dict[int, dict[TopicPartition, int]] = {}
        self._in_hand: set[int] = set()
        self._next_id = 0

    def begin(self, lasts: Mapping[TopicPartition, int], in_hand: bool = False) -> int:
        """Record a batch holding, per partition, offsets up to `lasts[tp]`; returns its id.

        The batch must start right after the previous batch of each partition (a consumer reads in
        order); its first offsets need not be recorded. `in_hand`: a handler will say when it is done
        with the batch (`handled`), and no room is made for the next batch before.
        """
        with self._lock:
            batch_id = self._next_id
            self._next_id += 1
            now = self._clock()
            for tp, last in lasts.items():
                partition = self._partitions.setdefault(tp, _Partition())
                if not partition.spans:
                    partition.progressed_at = now  # an idle partition is not a stalled one
                partition.spans.append(_Span(batch_id, last))
            self._batches[batch_id] = dict(lasts)
            if in_hand:
                self._in_hand.add(batch_id)
            return batch_id

    def handled(self, batch_id: int) -> None:
        """The handler is done with the batch (its outputs may still await delivery)."""
        with self._lock:
            self._in_hand.discard(batch_id)
            self._lock.notify_all()

    def finish(self, batch_id: int) -> None:
        """Every output of the batch was delivered: its offsets may be committed (in order)."""
        with self._lock:
            self._in_hand.discard(batch_id)  # delivered: no handler holds it any more
            for tp in self._batches.pop(batch_id, ()):
                partition = self._partitions.get(tp)
                if partition is None:
                    continue  # dropped (revoked or lost) meanwhile
                for span in partition.spans:
                    if span.batch_id == batch_id:
                        span.finished = True
                        break
                while partition.spans and partition.spans[0].finished:
                    partition.committable = partition.spans.popleft().last + 1
                    partition.progressed_at = self._clock()
            self._lock.notify_all()

    def open_batches(self) -> int:
        """How many batches have begun and not finished (nor been dropped)."""
        with self._lock:
            return len(self._batches)

    def wait_room(self, limit: int, timeout_s: float) -> bool:
        """Block until fewer than `limit` batches are open and none is in hand, or `timeout_s`
        passed; True if so."""
        with self._lock:
            return self._lock.wait_for(
                lambda: len(self._batches) < limit and not self._in_hand, timeout=timeout_s
            )

    def offsets_after(self, batch_id: int) -> dict[TopicPartition, int]:
        """Per partition still tracked, the offset after the batch's last message (what a commit of
        the batch alone would store)."""
        with self._lock:
            lasts = self._batches.get(batch_id, {})
            return {tp: last + 1 for tp, last in lasts.items() if tp in self._partitions}

    def holds(self, batch_id: int) -> bool:
        """Whether the batch is still open and still on a partition this ledger tracks."""
        with self._lock:
            return any(tp in self._partitions for tp in self._batches.get(batch_id, ()))

    def to_commit(self) -> dict[TopicPartition, int]:
        """Per partition, the committable offset when it is ahead of the last committed one."""
        with self._lock:
            return {
                tp: p.committable
                for tp, p in self._partitions.items()
                if p.committable is not None and p.committable != p.committed
            }

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """These offsets were committed to the group."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._partitions:
                    self._partitions[tp].committed = offset

    def wait_finished(self, tps: Iterable[TopicPartition], timeout_s: float) -> bool:
        """Block until no open batch holds any of `tps`, or `timeout_s` passed; True if none does."""
        wanted = set(tps)

        def done() -> bool:
            return not any(
                span for tp in wanted if tp in self._partitions for span in self._partitions[tp].spans
            )

        with self._lock:
            return self._lock.wait_for(done, timeout=timeout_s)

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget partitions (revoked after their commit, or lost) and the open batches' offsets on them
        (a partition given back later is a new one: a batch begun before never commits on it); batches
        left on no partition are closed, and their outputs no longer matter to this ledger. Batches of
        outputs only (begun on no partition) stay open."""
        with self._lock:
            dropped = set(tps)
            for tp in dropped:
                self._partitions.pop(tp, None)
            for batch_id, lasts in list(self._batches.items()):
                gone = dropped & lasts.keys()
                if not gone:  # on none of them, or on no partition at all (outputs only)
                    continue
                for tp in gone:
                    del lasts[tp]
                if not lasts:
                    del self._batches[batch_id]
                    self._in_hand.discard(batch_id)
            self._lock.notify_all()

    def consumed(self, batch_id: int) -> bool:
        """Whether the batch holds (or held, before its partitions were dropped) offsets: False only for
        an open batch of outputs only, such as the join's sweep."""
        with self._lock:
            return bool(self._batches.get(batch_id, True))

    def stalled_for(self, now: float | None = None) -> dict[TopicPartition, float]:
        """Seconds since each partition with open batches last moved its committable offset."""
        now = self._clock() if now is None else now
        with self._lock:
            return {tp: now - p.progressed_at for tp, p in self._partitions.items() if p.spans}

    def position(self, tp: TopicPartition) -> int | None:
        """The committable offset of a partition (None before its first finished batch)."""
        with self._lock:
            partition = self._partitions.get(tp)
            return None if partition is None else partition.committable
