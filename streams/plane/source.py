"""Requests (or any topic) consumed with librdkafka in a thread of its own, handed over in micro-batches."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from rig.config import KafkaConfig
from rig.errors import KafkaUnavailable, Unavailable
from streams.metrics import WorkerMetrics
from streams.plane.health import Health, Waiting
from streams.plane.ledger import OffsetLedger
from streams.plane.ledger import TopicPartition as TP

log = logging.getLogger(__name__)

T = TypeVar("T")

DEPENDENCY = "Kafka (consumer)"
PAUSE_AFTER_S = 1.0
"""How long the source waits for a free batch slot before it pauses fetching (see `_make_room`)."""
COMMITTED_TIMEOUT_S = 60.0
"""Longest wait for a group's committed offsets (asked again after it): while a killed member's
transaction holds offsets of a partition, the broker answers only once it aborts the transaction (the
transaction timeout plus its abort check, 10 s each by default)."""


class SourceStopped(Exception):
    """The source stopped in the middle of an assignment it was waiting to start."""


@dataclass(frozen=True)
class SourceBatch:
    """Messages read together, in offset order per partition; `batch_id` is its entry in the ledger."""

    batch_id: int
    messages: list[Message]


@dataclass(frozen=True)
class SourceSettings:
    """How a `BatchSource` reads."""

    group_id: str
    topics: tuple[str, ...]
    batch_max: int = 500
    linger_s: float = 0.0
    """After a batch smaller than `batch_max`, how long to wait before taking the next one, so that it
    gathers what arrives meanwhile (0: never wait). For sources whose outputs nobody waits for:
    fewer, larger batches. The wait is outside `poll`, so no rebalance is served during it."""
    batch_interval_s: float = 0.0
    """Under load (the latest batch held more than one message), the next batch is taken no sooner than
    this after the latest one, so it gathers what arrives meanwhile: the fixed work of a batch is paid
    less often (0: take the next batch as soon as the handler is free). A lone message, as an idle
    source hands over, never makes the next one wait."""
    max_open_batches: int = 4
    """Batches handed over and not yet delivered; at this many, fetching pauses (backpressure)."""
    commit_interval_s: float = 1.0
    revoke_timeout_s: float = 30.0
    """How long a revoke waits for the partition's open batches before it gives them up."""
    stall_s: float = 30.0
    """A partition with messages waiting and no progress for this long counts as stalled."""
    session_timeout_s: float = 45.0
    group_instance_id: str | None = None
    """Static membership: a restart within the session timeout keeps the partitions."""
    commits: bool = True
    """Commit finished offsets (False: a transactional sink commits them with each batch's outputs)."""
    transaction_timeout_s: float = 10.0
    """With `commits` False: how long the broker keeps a transaction open (`TransactionalSink`)."""
    assignment_strategy: str = "cooperative-sticky"
    """`range` gives a member the same partition numbers of every topic (co-partitioned topics) at
    the price of eager rebalances; `cooperative-sticky` moves only what changes owner."""


class BatchSource:
    """Consumes with confluent-kafka (cooperative-sticky, no auto commit, no auto offset store).

    `poll` waits for the first message only; what has arrived behind it (up to `batch_max`) joins the
    batch without waiting, so batches grow under load and an idle worker answers at once. The next
    batch is cut only once the handler is done with the previous one: everything that arrived while
    it worked makes one batch, not several small ones queued behind it (small batches cost the same
    fixed work per batch: at a quarter of capacity they saturated the worker, p99 ~1 s). Each batch
    is recorded in the ledger, then handed over. The ledger's offsets are committed every
    `commit_interval_s`; revoked partitions are committed on revoke, after their open batches finish;
    lost partitions are dropped without a commit.
    """

    def __init__(
        self,
        client_config: KafkaConfig,
        settings: SourceSettings,
        ledger: OffsetLedger,
        health: Health,
        hand_over: Callable[[SourceBatch], None],
        on_assigned: Callable[[set[TP]], None] | None = None,
        on_revoked: Callable[[set[TP], bool], None] | None = None,
        start_offsets: Callable[[set[TP]], dict[TP, int]] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`on_assigned(partitions)` runs before fetching from newly assigned partitions starts (e.g.
        to restore their state); `on_revoked(partitions, finished)` after revoked or lost ones are let
        go, `finished` False when batches that held them were given up unfinished (their outputs may
        still be on their way, or never come) and for lost ones (another member may hold them already,
        and have written what state they have meanwhile).
        `start_offsets(partitions)` (after `on_assigned`) says where to start reading newly assigned
        partitions instead of their committed offsets (e.g. right after a saved state); partitions it
        leaves out start at their committed offset. Both may raise `Unavailable`: they are called
        again once the dependency answers (`_when_available`). `metrics` gets the lag of every held partition,
        every second."""
        self._client_config = client_config
        self._on_assigned = on_assigned
        self._start_offsets = start_offsets
        self._on_revoked = on_revoked
        self._metrics = metrics
        self.settings = settings
        self._ledger = ledger
        self._health = health
        self._hand_over = hand_over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rig-source-{settings.group_id}", daemon=True)
        self._assignment: set[TP] = set()
        self._lock = threading.Lock()
        self._progress: dict[TP, tuple[tuple[int | None, int], float]] = {}
        self._paused = False
        self._reassigned = False
        self._let_go: set[TP] = set()  # since the current batch began to be taken
        self._starts: dict[TP, int] = {}  # where the latest assignment of a partition began to read
        self._group_metadata: object | None = None
        self._full_at = -math.inf  # when the latest full batch was taken (monotonic)
        self.crashed: BaseException | None = None

    def start(self) -> BatchSource:
        """Start consuming in the source's thread."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60) -> None:
        """Stop consuming: open batches get `revoke_timeout_s` to finish, their offsets are committed."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def alive(self) -> bool:
        """Whether the consuming thread runs."""
        return self._thread.is_alive()

    def owns(self, batch: SourceBatch) -> bool:
        """Whether the batch is still worth answering: open, on a partition still held."""
        return self._ledger.holds(batch.batch_id)

    def group_metadata(self) -> object:
        """The consumer's group metadata as of the latest rebalance (for offsets sent to a
        transaction). Read in the consuming thread at every rebalance: asking the consumer from
        another thread blocks while that thread polls."""
        assert self._group_metadata is not None, "the source has no assignment yet"
        return self._group_metadata

    def assignment(self) -> set[TP]:
        """The partitions held now."""
        with self._lock:
            return set(self._assignment)

    def backlogged(self, within_s: float = 1.0) -> bool:
        """Whether a batch taken in the last `within_s` was full: messages were waiting behind it.
        (Never with `batch_max` 1, where a full batch says nothing.)"""
        return time.monotonic() - self._full_at < within_s

    # -- the consuming thread -----------------------------------------------------------------------
    def _consumer(self) -> Consumer:
        return Consumer(self._consumer_config())

    def _consumer_config(self) -> dict[str, object]:
        config: dict[str, object] = {
            **self._client_config,
            "group.id": self.settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": self.settings.assignment_strategy,
            "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
            # Errors of the client rather than of a partition (brokers down, connections refused)
            # come only here, served by poll/consume in this thread: without the callback librdkafka
            # just logs them, and a broker away for longer than `stall_s` looked like a stall with
            # nothing to wait for, which ends the worker (`RIG_STALL_EXIT_S`).
            "error_cb": self._consumer_error,
        }
        if self.settings.group_instance_id:
            config["group.instance.id"] = self.settings.group_instance_id
        return config

    def _run(self) -> None:
        consumer = self._consumer()
        try:
            consumer.subscribe(
                list(self.settings.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            next_commit = next_look = time.monotonic()
            next_batch = -math.inf
            while not self._stop.is_set():
                self._make_room(consumer)
                if (early_s := next_batch - time.monotonic()) > 0:
                    self._stop.wait(early_s)  # outside poll, as the linger below
                message = consumer.poll(0.1)
                if message is not None:
                    taken_at = time.monotonic()
                    taken = self._take(consumer, message)
                    if taken > 1:
                        next_batch = taken_at + self.settings.batch_interval_s
                    if taken < self.settings.batch_max and self.settings.linger_s > 0:
                        # Here, not as consume()'s timeout: a rebalance served inside consume() would
                        # revoke partitions whose messages the batch being built already holds.
                        self._stop.wait(self.settings.linger_s)
                now = time.monotonic()
                if now >= next_commit:
                    self._commit(consumer, self._ledger.to_commit())
                    next_commit = now + self.settings.commit_interval_s
                if now >= next_look:
                    self._look_for_stalls(consumer, now)
                    next_look = now + 1.0
            self._finish(consumer)
        except SourceStopped as stopped:  # confluent-kafka raises it out of the poll that assigned
            log.info("source stopped group=%s: %s", self.settings.group_id, stopped)
        except BaseException as error:  # reported: the worker exits for a restart
            log.exception("source stopped group=%s", self.settings.group_id)
            self.crashed = error
        finally:
            consumer.close()

    def _take(self, consumer: Consumer, first: Message) -> int:
        """Build a batch from `first` and what has already arrived behind it, and hand it over;
        returns how many messages it holds."""
        messages = [first]
        self._let_go = set()  # poll served its callbacks before it returned `first`
        if self.settings.batch_max > 1:
            messages += consumer.consume(self.settings.batch_max - 1, timeout=0)
            if len(messages) == self.settings.batch_max:
                self._full_at = time.monotonic()
        good: list[Message] = []
        for message in self._still_held(consumer, messages):
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._consumer_error(error)
        if not good:
            return 0
        if self._health.waits_for(DEPENDENCY):
            self._health.recovered(DEPENDENCY)
        lasts: dict[TP, int] = {}
        for message in good:
            # A consumed message without error has all three; confluent-kafka types them Optional.
            lasts[(message.topic(), message.partition())] = message.offset()  # type: ignore[index,assignment]
        self._hand_over(SourceBatch(self._ledger.begin(lasts, in_hand=True), good))
        return len(good)

    def _still_held(self, consumer: Consumer, messages: list[Message]) -> list[Message]:
        """The messages of partitions held all along since `poll` returned. A rebalance served
        inside `consume` may let go of partitions whose messages were already taken (`first`, or
        messages librdkafka did not purge): their new owner reads them from the commit, and a batch
        holding them would record the partitions in the ledger again, its offsets then committed over
        the new owner's. A partition let go and given back meanwhile (eager protocols) is read again
        from where its new assignment starts."""
        let_go = self._let_go
        if not let_go:
            return messages
        back = let_go & self.assignment()
        starts = {tp: self._starts.get(tp, OFFSET_INVALID) for tp in back}
        unknown = {tp for tp, start in starts.items() if start == OFFSET_INVALID}
        if unknown:  # the group's committed offsets then, waited for while Kafka does not answer
            starts |= self._committed(consumer, unknown)
        for (topic, partition), start in starts.items():
            try:
                consumer.seek(TopicPartition(topic, partition, start))
            except KafkaException as error:
                if error.args[0].code() != KafkaError._STATE:
                    raise
                # Its fetch has not started yet: it starts where its assignment says, as sought.
        kept = [m for m in messages if (m.topic(), m.partition()) not in let_go]
        log.info(
            "a rebalance came while a batch was taken: %d messages of partitions let go meanwhile are "
            "left to their owner, read again from %s",
            len(messages) - len(kept),
            sorted(f"{t}-{p}" for t, p in back),
        )
        return kept

    def _consumer_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        self._health.waiting(DEPENDENCY, error.str())

    def _make_room(self, consumer: Consumer) -> None:
        """Backpressure: while `max_open_batches` are open or the handler still holds a batch, wait
        (up to `PAUSE_AFTER_S`) for room. Batches usually finish within milliseconds, and the next
        one then takes everything that arrived meanwhile. Only a longer wait (a dependency away)
        pauses the partitions, so the consumer goes on serving its group without fetching; they
        resume once there is room. Pausing at every full window instead stalled a busy worker:
        librdkafka drops a paused partition's prefetched messages and fetches again only later
        (measured: p99 ~1 s against 9 ms)."""
        room = self._ledger.wait_room(self.settings.max_open_batches, PAUSE_AFTER_S)
        if room and not self._paused and not self._reassigned:
            return
        # After a rebalance the state is set again on every partition: librdkafka keeps a partition's
        # pause flag across its loss and re-assignment, so a partition paused while the broker was away
        # came back paused and was never read again (tests/faults/test_broker_outage.py).
        self._reassigned = False
        partitions = [TopicPartition(t, p) for t, p in self.assignment()]
        if room:
            consumer.resume(partitions)
        else:
            consumer.pause(partitions)  # again each round: partitions assigned meanwhile pause too
        self._paused = not room

    def _commit(self, consumer: Consumer, offsets: dict[TP, int]) -> None:
        if not offsets or not self.settings.commits:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )
        except KafkaException as error:  # the next commit carries the same offsets again
            log.warning("commit failed, retried with the next one offsets=%s error=%s", offsets, error)
            return
        self._ledger.committed(offsets)

    def _look_for_stalls(self, consumer: Consumer, now: float) -> None:
        """Report partitions with messages waiting whose position and finished offset stood still, and
        every partition's lag (from the watermark of the latest fetch: no request to the broker)."""
        stalled: dict[str, float] = {}
        open_for = self._ledger.stalled_for(now)
        for tp in self.assignment():
            partition = TopicPartition(*tp)
            try:
                _, high = consumer.get_watermark_offsets(partition, cached=True)
                [position] = consumer.position([partition])
            except KafkaException:
                continue
            finished = self._ledger.position(tp)
            known = high >= 0 and position.offset >= 0
            behind = known and high > position.offset
            if known and self._metrics is not None:
                self._metrics.partition_lag(tp[0], tp[1], high - position.offset)
            marker = (finished, position.offset)
            seen = self._progress.get(tp)
            if seen is None or seen[0] != marker:
                self._progress[tp] = (marker, now)
                continue
            idle_s = now - seen[1]
            waiting = behind or tp in open_for
            if waiting and idle_s >= self.settings.stall_s:
                stalled[f"{tp[0]}-{tp[1]}"] = idle_s
        self._health.stalled(stalled)
        if self._health.waits_for(DEPENDENCY):
            # The broker answers again even if no message came since, or none can be taken: a stall
            # that outlives the broker's return is then one no wait explains (`RIG_STALL_EXIT_S`).
            try:
                consumer.list_topics(self.settings.topics[0], timeout=1)
                self._health.recovered(DEPENDENCY)
            except KafkaException:
                pass

    def _finish(self, consumer: Consumer) -> None:
        """Stopping: let open batches finish (bounded), commit what they finished, let go of the rest
        (the revoke that closing the consumer brings then has nothing left to wait for)."""
        held = self.assignment()
        finished = self._ledger.wait_finished(held, self.settings.revoke_timeout_s)
        self._commit(consumer, self._ledger.to_commit())
        self._forget(held, finished)

    # -- rebalance callbacks (called inside poll, in the consuming thread) ---------------------------
    def _on_assign(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        self._group_metadata = consumer.consumer_group_metadata()
        tps = {(p.topic, p.partition) for p in partitions}
        if self._on_assigned is not None and tps:
            self._when_available(self._on_assigned, tps)
        starts = (
            self._when_available(self._start_offsets, tps) if self._start_offsets is not None and tps else {}
        )
        unplaced = tps - starts.keys()
        if not self.settings.commits and unplaced:
            # Transactional: each partition starts where the group's committed offsets say, read
            # here and assigned explicitly, not looked up by librdkafka on its own. That lookup, over
            # partitions whose offsets a killed member's open transaction held while the group
            # rebalanced again, once started a partition from its beginning after the transaction was
            # aborted, although committed transactions held its offsets: the new owner answered 327
            # requests again whose answers were committed (tests/faults/test_feedback_faults.py, 2
            # runs of 9).
            starts = {**self._committed(consumer, unplaced), **starts}
        for tp in tps:
            self._starts[tp] = starts.get(tp, OFFSET_INVALID)
        if starts:
            # Assigning in the callback replaces the assignment confluent-kafka would make after it;
            # a partition's offset left unset (OFFSET_INVALID) means its committed offset.
            placed = [
                TopicPartition(p.topic, p.partition, starts.get((p.topic, p.partition), OFFSET_INVALID))
                for p in partitions
            ]
            if self.settings.assignment_strategy == "cooperative-sticky":
                consumer.incremental_assign(placed)
            else:  # eager protocols hand over the whole assignment
                consumer.assign(placed)
            log.info("partitions start at %s", {f"{t}-{p}": o for (t, p), o in starts.items()})
        with self._lock:
            self._assignment |= tps
            count = len(self._assignment)
        self._reassigned = True
        self._health.assigned(count)
        log.info("partitions assigned %s", sorted(f"{p.topic}-{p.partition}" for p in partitions))

    def _committed(self, consumer: Consumer, tps: set[TP]) -> dict[TP, int]:
        """Where the group's committed offsets start these partitions (a partition with none: its
        beginning, as `auto.offset.reset` says), asked again while Kafka does not answer them."""
        return self._when_available(lambda wanted: self._read_committed(consumer, wanted), tps)

    def _read_committed(self, consumer: Consumer, tps: set[TP]) -> dict[TP, int]:
        """`_committed`, asked once. The broker holds its answer while a transaction holds offsets of
        one of the partitions (KIP-447, `isolation.level` read_committed).

        Raises:
            KafkaUnavailable: the offsets were not read.
        """
        try:
            found = consumer.committed(
                [TopicPartition(*tp) for tp in sorted(tps)], timeout=COMMITTED_TIMEOUT_S
            )
        except KafkaException as error:
            raise KafkaUnavailable(f"committed offsets not read: {error}") from error
        failed = [f"{tp.topic}-{tp.partition}: {tp.error}" for tp in found if tp.error is not None]
        if failed:
            raise KafkaUnavailable(f"committed offsets not read: {'; '.join(failed)}")
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in found}

    def _when_available(self, prepare: Callable[[set[TP]], T], tps: set[TP]) -> T:
        """`prepare(tps)` (`on_assigned`, `start_offsets`, `_read_committed`), called again while a
        dependency it needs is away (it raises `Unavailable`), the plane's health naming it: reading the
        partitions without it would drop what it restores. `prepare` must leave things as they were when
        it raises. The group goes on meanwhile (librdkafka heartbeats in a thread of its own); a wait
        longer than `max.poll.interval.ms` makes the member leave, and the next poll joins again.

        Raises:
            SourceStopped: the source stopped while waiting (nothing of these partitions is read).
        """
        waiting = Waiting(self._health)
        while True:
            try:
                prepared = prepare(tps)
            except Unavailable as error:
                if self._stop.is_set():
                    waiting.given_up()
                    raise SourceStopped(f"stopped while waiting for {error.dependency}") from error
                self._stop.wait(waiting.away(error, f"newly assigned partitions wait: {error}"))
                continue
            waiting.done()
            return prepared

    def _on_revoke(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        self._group_metadata = consumer.consumer_group_metadata()
        tps = {(p.topic, p.partition) for p in partitions}
        finished = self._ledger.wait_finished(tps, self.settings.revoke_timeout_s)
        offsets = {tp: offset for tp, offset in self._ledger.to_commit().items() if tp in tps}
        self._commit(consumer, offsets)
        self._forget(tps, finished)
        log.info(
            "partitions revoked %s committed=%s%s",
            sorted(f"{t}-{p}" for t, p in tps),
            {f"{t}-{p}": o for (t, p), o in offsets.items()},
            ""
            if finished
            else " (open batches given up after the revoke timeout: their new owner redoes them)",
        )

    def _on_lost(self, _consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self._forget(tps, finished=False)
        log.warning("partitions lost (not committed) %s", sorted(f"{t}-{p}" for t, p in tps))

    def _forget(self, tps: set[TP], finished: bool) -> None:
        self._let_go |= tps
        self._ledger.drop(tps)
        for tp in tps:
            self._progress.pop(tp, None)
        with self._lock:
            self._assignment -= tps
            count = len(self._assignment)
        self._health.assigned(count)
        if self._metrics is not None:
            self._metrics.partitions_let_go(tps)
        if self._on_revoked is not None and tps:
            self._on_revoked(tps, finished)
