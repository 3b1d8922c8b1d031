"""The data plane on the real broker: offsets advance only past delivered batches, revokes commit them,
and a start-offset hook makes a source read from where it says."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.plane.health import Health
from streams.plane.ledger import OffsetLedger
from streams.plane.ledger import TopicPartition as TP
from streams.plane.sink import DeliveringSink, Outgoing
from streams.plane.source import DEPENDENCY, BatchSource, SourceBatch, SourceSettings

pytestmark = pytest.mark.integration


def create_topic(bootstrap: str, partitions: int = 4, name: str | None = None) -> str:
    name = name or f"test.plane.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    return name


def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(start, start + count):
        producer.produce(topic, f"m{i}".encode(), f"k{i % 17}".encode())
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


class Plane:
    """A source whose batches land in a queue, with its ledger and health."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        start_offsets: Callable[[set[TP]], dict[TP, int]] | None = None,
        source: type[BatchSource] = BatchSource,
        on_revoked: Callable[[set[TP], bool], None] | None = None,
        **settings: object,
    ) -> None:
        self.batches: queue.Queue[SourceBatch] = queue.Queue()
        self.ledger = OffsetLedger()
        self.health = Health()
        self.source = source(
            {"bootstrap.servers": bootstrap},
            SourceSettings(group_id=group, topics=(topic,), commit_interval_s=0.2, **settings),  # type: ignore[arg-type]
            self.ledger,
            self.health,
            self.batches.put,
            on_revoked=on_revoked,
            start_offsets=start_offsets,
        )

    def take(self, timeout_s: float = 30) -> SourceBatch:
        return self.batches.get(timeout=timeout_s)

    def values(self, batch: SourceBatch) -> list[bytes]:
        return [cast(bytes, m.value()) for m in batch.messages]  # consumed messages: each has a value


@contextmanager
def running(plane: Plane) -> Iterator[Plane]:
    plane.source.start()
    try:
        yield plane
    finally:
        plane.source.stop()


def wait_assigned(plane: Plane, timeout_s: float = 30) -> None:
    """Until the source holds partitions (or `timeout_s` passed)."""
    deadline = time.monotonic() + timeout_s
    while not plane.source.assignment() and time.monotonic() < deadline:
        time.sleep(0.05)


def drain(plane: Plane, expected: int, finish: bool = True, timeout_s: float = 30) -> list[bytes]:
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        try:
            batch = plane.take(timeout_s=1)
        except queue.Empty:
            continue
        seen += plane.values(batch)
        if finish:
            plane.ledger.finish(batch.batch_id)
    return seen


def drain_both(one: Plane, other: Plane, expected: int, timeout_s: float = 30) -> list[bytes]:
    """What two members hand over, every batch finished, until `expected` messages and a second
    more (so that repeats show)."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for plane in (one, other):
            try:
                batch = plane.take(timeout_s=0.1)
            except queue.Empty:
                continue
            seen += plane.values(batch)
            plane.ledger.finish(batch.batch_id)
        if len(seen) >= expected:
            deadline = min(deadline, time.monotonic() + 1)
    return seen


def test_finished_batches_are_committed_and_unfinished_ones_are_not(kafka_bootstrap: str) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=1), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 100)
    plane = Plane(kafka_bootstrap, group, topic, batch_max=30, revoke_timeout_s=1)
    with running(plane):
        first = plane.take()
        plane.ledger.finish(first.batch_id)
        unfinished = plane.take()  # handed over, never delivered
        time.sleep(1)
    done = cast(int, first.messages[-1].offset()) + 1  # a consumed message has its offset
    assert unfinished.messages[0].offset() == done
    assert committed(kafka_bootstrap, group, topic, partitions=1) == {0: done}

    again = Plane(kafka_bootstrap, group, topic)
    with running(again):
        values = drain(again, 100 - done)
    assert values == [f"m{i}".encode() for i in range(done, 100)], "the next owner starts at the commit"


def test_a_source_is_backlogged_for_a_while_after_it_takes_a_full_batch(kafka_bootstrap: str) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=1), f"test-{uuid.uuid4().hex}"
    plane = Plane(kafka_bootstrap, group, topic, batch_max=10)
    assert not plane.source.backlogged(), "nothing taken yet"
    produce(kafka_bootstrap, topic, 50)
    with running(plane):
        first = plane.take()
        backlogged_then = plane.source.backlogged()
        plane.ledger.finish(first.batch_id)
        drain(plane, 40)
    assert len(first.messages) == 10
    assert backlogged_then, "a full batch: messages were waiting behind it"
    assert not plane.source.backlogged(within_s=0.0), "only for a while"


def test_an_idle_source_hands_over_a_single_message_at_once(kafka_bootstrap: str) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=1), f"test-{uuid.uuid4().hex}"
    plane = Plane(kafka_bootstrap, group, topic, batch_max=500)
    with running(plane):
        wait_assigned(plane)
        produce(kafka_bootstrap, topic, 1)
        started = time.monotonic()
        batch = plane.take()
        waited = time.monotonic() - started
        plane.ledger.finish(batch.batch_id)
    assert plane.values(batch) == [b"m0"]
    print(f"one message handed over {waited * 1000:.1f} ms after it was acknowledged")


def test_a_lingering_source_waits_after_a_small_batch_so_the_next_gathers_what_arrives(
    kafka_bootstrap: str,
) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=1), f"test-{uuid.uuid4().hex}"
    plane = Plane(kafka_bootstrap, group, topic, batch_max=100, linger_s=3.0)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    with running(plane):
        wait_assigned(plane)
        producer.produce(topic, b"m0")
        assert producer.flush(30) == 0
        first = plane.take()
        plane.ledger.finish(first.batch_id)
        for i in range(1, 10):  # one at a time: without the linger each would make a batch of its own
            producer.produce(topic, f"m{i}".encode())
            assert producer.flush(30) == 0
            time.sleep(0.02)
        second = plane.take()
        plane.ledger.finish(second.batch_id)
    assert plane.values(first) == [b"m0"], "an idle source hands over the first message at once"
    assert plane.values(second) == [f"m{i}".encode() for i in range(1, 10)]


def test_under_load_a_source_takes_its_next_batch_no_sooner_than_its_interval_but_never_holds_a_lone_one(
    kafka_bootstrap: str,
) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=1), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 5)  # one record batch: the source's first batch holds all five
    plane = Plane(kafka_bootstrap, group, topic, batch_max=100, batch_interval_s=3.0)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})

    def send(value: bytes) -> None:
        producer.produce(topic, value)
        assert producer.flush(30) == 0

    with running(plane):
        first = plane.take()
        first_at = time.monotonic()
        plane.ledger.finish(first.batch_id)
        for i in range(5, 10):  # one at a time: without the interval each would make a batch of its own
            send(f"m{i}".encode())
            time.sleep(0.02)
        second = plane.take()
        second_after_s = time.monotonic() - first_at
        plane.ledger.finish(second.batch_id)
        send(b"m10")  # waits out the interval that the second batch started: a batch of one
        third = plane.take()
        plane.ledger.finish(third.batch_id)
        send(b"m11")
        sent_at = time.monotonic()
        fourth = plane.take()
        fourth_after_s = time.monotonic() - sent_at
        plane.ledger.finish(fourth.batch_id)
    assert plane.values(first) == [f"m{i}".encode() for i in range(5)]
    assert plane.values(second) == [f"m{i}".encode() for i in range(5, 10)]
    assert second_after_s >= 3.0 - 0.05, "the batch after a batch of five waits out the interval"
    assert plane.values(third) == [b"m10"] and plane.values(fourth) == [b"m11"]
    assert fourth_after_s < 1.5, "a batch of one message does not hold the next one back"


def test_a_second_member_takes_partitions_where_the_first_committed_them_without_loss_or_repeat(
    kafka_bootstrap: str,
) -> None:
    topic, group = create_topic(kafka_bootstrap), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 2_000)
    first = Plane(kafka_bootstrap, group, topic, batch_max=50)
    second = Plane(kafka_bootstrap, group, topic, batch_max=50)
    seen: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work(plane: Plane) -> None:
        while not stop.is_set():
            try:
                batch = plane.take(timeout_s=0.2)
            except queue.Empty:
                continue
            time.sleep(0.01)  # an agent at work: batches are open when the revoke comes
            with lock:
                seen.extend(plane.values(batch))
            plane.ledger.finish(batch.batch_id)

    workers = [threading.Thread(target=work, args=(p,), daemon=True) for p in (first, second)]
    for thread in workers:
        thread.start()
    with running(first):
        time.sleep(1.5)
        with running(second):
            deadline = time.monotonic() + 60
            while not second.source.assignment() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert first.source.assignment() and second.source.assignment(), "both members hold partitions"
            produce(kafka_bootstrap, topic, 2_000, start=2_000)
            while len(seen) < 4_000 and time.monotonic() < deadline:
                time.sleep(0.2)
    stop.set()
    repeats = len(seen) - len(set(seen))
    print(f"messages seen {len(seen)}, distinct {len(set(seen))}, repeats {repeats}")
    assert set(seen) == {f"m{i}".encode() for i in range(4_000)}
    assert repeats == 0, "a cooperative join commits on revoke: nothing is redone"


def test_partitions_let_go_say_whether_their_batches_finished_or_were_given_up(kafka_bootstrap: str) -> None:
    """The join keeps a let-go partition's store for its return only when every batch that held it
    finished: a given-up batch's changes may never reach Kafka."""
    topic, group = create_topic(kafka_bootstrap, partitions=2), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 40)
    first_let_go: list[tuple[set[TP], bool]] = []
    second_let_go: list[tuple[set[TP], bool]] = []
    first = Plane(
        kafka_bootstrap,
        group,
        topic,
        on_revoked=lambda tps, finished: first_let_go.append((tps, finished)),
        revoke_timeout_s=0.5,
    )
    second = Plane(
        kafka_bootstrap, group, topic, on_revoked=lambda tps, finished: second_let_go.append((tps, finished))
    )
    with running(first):
        open_on: set[int] = set()
        while open_on != {0, 1}:  # batches handled, never finished (outputs not delivered), on both
            batch = first.take()
            first.ledger.handled(batch.batch_id)
            open_on |= {cast(int, m.partition()) for m in batch.messages}  # consumed: each has one
        with running(second):
            deadline = time.monotonic() + 60
            while not first_let_go and time.monotonic() < deadline:
                time.sleep(0.1)
            while not second.source.assignment() and time.monotonic() < deadline:
                time.sleep(0.1)
            produce(kafka_bootstrap, topic, 10, start=40)
            while time.monotonic() < deadline:
                try:
                    second.ledger.finish(second.take(timeout_s=1).batch_id)
                except queue.Empty:
                    break
    assert first_let_go and first_let_go[0][1] is False, "a revoke gave up the open batches"
    assert second_let_go and all(finished for _, finished in second_let_go), "every batch finished"


class ConsumeUntilARebalance(Consumer):
    """A real consumer whose first `consume` goes on taking messages until a rebalance served inside
    it changed the assignment: the race of a rebalance that comes while a batch is taken, made
    certain (librdkafka purges some, not all, of the messages it already took)."""

    entered = threading.Event()

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self.entered.is_set():
            return super().consume(num_messages, timeout)
        held = len(self.assignment())
        self.entered.set()
        taken: list[Message] = []
        deadline = time.monotonic() + 60
        while len(self.assignment()) in (0, held) and time.monotonic() < deadline:
            taken += super().consume(num_messages - len(taken), 0.1)
        taken += super().consume(num_messages - len(taken), 0.5)  # what the new assignment reads
        return taken


class SourceTakingThroughARebalance(BatchSource):
    def _consumer(self) -> Consumer:
        return ConsumeUntilARebalance(self._consumer_config())


def values_below(bootstrap: str, topic: str, offset: int, partitions: int = 4) -> set[bytes]:
    """The values of every partition's messages before `offset`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: set[bytes] = set()
    deadline = time.monotonic() + 30
    try:
        while len(found) < offset * partitions and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            # A consumed message has its offset and (produced with one) a value.
            if message is not None and message.error() is None and cast(int, message.offset()) < offset:
                found.add(cast(bytes, message.value()))
    finally:
        consumer.close()
    return found


@pytest.mark.parametrize(
    ("strategy", "start_at"),
    [("cooperative-sticky", None), ("range", None), ("range", 10)],
    ids=["cooperative-sticky", "range", "range-with-start-offsets"],
)
def test_a_rebalance_served_while_a_batch_is_taken_leaves_its_messages_to_their_owner(
    kafka_bootstrap: str, strategy: str, start_at: int | None
) -> None:
    """`start_at`: both members start every partition they are assigned there (a start-offset hook, as
    the join's): a partition given back within the take is read again from there, not from its
    commit."""
    topic, group = create_topic(kafka_bootstrap), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 400)
    ConsumeUntilARebalance.entered.clear()

    def start_offsets(partitions: set[TP]) -> dict[TP, int]:
        return {} if start_at is None else dict.fromkeys(partitions, start_at)

    first = Plane(
        kafka_bootstrap,
        group,
        topic,
        start_offsets,
        source=SourceTakingThroughARebalance,
        batch_max=1_000,
        assignment_strategy=strategy,
    )
    second = Plane(
        kafka_bootstrap, group, topic, start_offsets, batch_max=1_000, assignment_strategy=strategy
    )
    skipped = values_below(kafka_bootstrap, topic, start_at) if start_at else set()
    expected = {f"m{i}".encode() for i in range(400)} - skipped
    with running(first):
        assert ConsumeUntilARebalance.entered.wait(30), "the first batch is being taken"
        with running(second):
            batch = first.take(timeout_s=60)
            held = first.source.assignment()
            plane_of_batch = {(m.topic(), m.partition()) for m in batch.messages}
            first.ledger.finish(batch.batch_id)
            seen = first.values(batch) + drain_both(first, second, len(expected) - len(batch.messages))
    print(
        f"held after the rebalance {sorted(held)}, batch of {len(batch.messages)} on {sorted(plane_of_batch)}"
    )
    assert 0 < len(held) < 4, "the rebalance split the partitions"
    assert plane_of_batch <= held, "the batch holds only partitions held when it was handed over"
    assert sorted(seen) == sorted(expected), "nothing lost or repeated"


def test_a_delivery_to_a_missing_topic_is_retried_until_the_topic_exists(kafka_bootstrap: str) -> None:
    topic = f"test.plane.{uuid.uuid4().hex[:10]}"  # not created yet
    delivered: list[int] = []
    health = Health()
    sink = DeliveringSink(
        {"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 2_000},
        delivered.append,
        health,
    ).start()
    try:
        outputs = [
            Outgoing(topic, b"k", b"v1"),  # partition and timestamp left to the producer
            Outgoing(topic, b"k", b"v2"),
            Outgoing(topic, b"k", b"v3", 0, 1_700_000_000_000),  # both given: both kept on every attempt
        ]
        asyncio.run(sink.publish(7, outputs))
        time.sleep(4)
        assert delivered == [], "not delivered while the topic is missing"
        assert health.waits_for("Kafka (deliveries)")
        create_topic(kafka_bootstrap, partitions=1, name=topic)
        deadline = time.monotonic() + 60
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        left = sink.close(timeout_s=10)
    assert delivered == [7] and left == 0
    assert not health.waits_for("Kafka (deliveries)")
    timestamps = {
        cast(bytes, message.value()): message.timestamp()[1]  # produced with a value
        for message in read_topic(kafka_bootstrap, topic, 3)
    }
    assert sorted(timestamps) == [b"v1", b"v2", b"v3"]
    assert timestamps[b"v3"] == 1_700_000_000_000


def test_outputs_published_after_are_produced_once_the_batch_s_others_are_delivered_in_batch_order(
    kafka_bootstrap: str,
) -> None:
    """The join's changelog records (`after`) must never be on Kafka without the joined rows of their
    batch: a crash would leave entries that say "joined" for rows nobody received."""
    rows = f"test.plane.{uuid.uuid4().hex[:10]}"  # not created yet: the rows cannot be delivered
    changelog = create_topic(kafka_bootstrap, partitions=1)
    delivered: list[int] = []
    sink = DeliveringSink(
        {"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 2_000}, delivered.append, Health()
    ).start()
    try:

        async def publish() -> None:
            await sink.publish(
                1, [Outgoing(rows, b"r1", b"row")], after=[Outgoing(changelog, b"r1", b"c1", 0)]
            )
            await sink.publish(2, [], after=[Outgoing(changelog, b"r2", b"c2", 0)])  # behind batch 1's

        asyncio.run(publish())
        time.sleep(4)
        assert delivered == [] and sink.undelivered() == 3
        assert read_topic(kafka_bootstrap, changelog, 1, timeout_s=3) == [], "nothing before the rows"
        create_topic(kafka_bootstrap, partitions=1, name=rows)
        deadline = time.monotonic() + 60
        while len(delivered) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        left = sink.close(timeout_s=10)
    assert delivered == [1, 2] and left == 0
    assert [m.value() for m in read_topic(kafka_bootstrap, changelog, 2)] == [b"c1", b"c2"]
    assert [m.value() for m in read_topic(kafka_bootstrap, rows, 1)] == [b"row"]


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 30) -> list[Message]:
    """The first `count` messages of a topic (fewer when `timeout_s` passes first)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            messages.append(message)
    consumer.close()
    return messages


@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range"])
def test_a_start_offset_hook_makes_the_source_read_its_partitions_from_the_offsets_it_gives(
    kafka_bootstrap: str, strategy: str
) -> None:
    topic, group = create_topic(kafka_bootstrap, partitions=2), f"test-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, topic, 60)
    first = Plane(kafka_bootstrap, group, topic, assignment_strategy=strategy)
    with running(first):
        drain(first, 60)
        deadline = time.monotonic() + 30
        while sum(committed(kafka_bootstrap, group, topic, 2).values()) < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
    ends = committed(kafka_bootstrap, group, topic, partitions=2)
    asked: list[set[TP]] = []

    def start_offsets(partitions: set[TP]) -> dict[TP, int]:
        asked.append(partitions)
        return {(topic, 0): 5}  # partition 1 is left out: it starts at its commit (its end)

    again = Plane(kafka_bootstrap, group, topic, start_offsets, assignment_strategy=strategy)
    read: list[tuple[int, int]] = []
    with running(again):
        while len(read) < ends[0] - 5:
            batch = again.take()
            again.ledger.finish(batch.batch_id)
            read += [(cast(int, m.partition()), cast(int, m.offset())) for m in batch.messages]  # consumed
        time.sleep(1)  # anything else it would read arrives meanwhile
    assert asked == [{(topic, 0), (topic, 1)}]
    assert again.batches.empty(), "partition 1 was read from its committed offset: nothing left"
    assert read == [(0, offset) for offset in range(5, ends[0])]
    assert committed(kafka_bootstrap, group, topic, partitions=2) == ends


def test_a_stall_that_outlives_the_broker_s_return_is_no_longer_explained_by_it(kafka_bootstrap: str) -> None:
    """A wait for Kafka set while the broker was away (its error callback) is cleared once the broker
    answers, stalled or not: kept, it would explain a stall that only a restart mends for good."""
    topic = create_topic(kafka_bootstrap, partitions=1)
    produce(kafka_bootstrap, topic, 3)  # messages wait behind the partition's position
    health = Health(needs_partitions=False)
    ledger = OffsetLedger()
    settings = SourceSettings(group_id=f"g-{uuid.uuid4().hex[:8]}", topics=(topic,), stall_s=1.0)
    source = BatchSource({"bootstrap.servers": kafka_bootstrap}, settings, ledger, health, lambda batch: None)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.group_id})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        consumer.consume(1, timeout=10)  # fetching: the watermark is known, the position moved to 1
        source._assignment = {(topic, 0)}
        ledger.begin({(topic, 0): 0})  # a batch that never finishes
        now = time.monotonic()
        source._look_for_stalls(consumer, now)  # first seen
        health.waiting(DEPENDENCY, "1/1 brokers are down")  # the error callback, the broker away
        for later_s in (2.0, 3.0):  # stalled, the broker answering again (the wait cleared); stalled
            source._look_for_stalls(consumer, now + later_s)
    finally:
        consumer.close()

    assert not health.waits_for(DEPENDENCY), "the broker answered"
    assert health.unexplained_stall_s() > 0, "the stall counts towards RIG_STALL_EXIT_S"
    assert [reason for reason in health.readiness().reasons if "stalled" in reason]
