"""The join's intake: outcomes the promoter could not score are dead-lettered, never joined."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from confluent_kafka import Message

import streams.join
from rig.config import RigSettings
from rig.errors import KafkaUnavailable, SchemaRegistryUnavailable
from rig.feedback.join import StreamClock
from rig.feedback.join_store import Change, JoinStore
from rig.wire.codec import Codec
from rig.wire.records import DeadLetter, JoinedOutcome, ModelScore, Outcome, Prediction
from streams.join import SOURCES, SWEEP_SLICE, Join, Partition
from streams.plane.source import SourceBatch
from tests.support.records import accepted


@pytest.fixture
def join(settings: RigSettings) -> Iterator[Join]:
    """A join holding partition 0 of one-partition topics (so nothing is re-routed)."""
    join = Join(settings.model_copy(update={"topic_partitions": 1}))
    store = JoinStore(settings.home / "join-0", join.retention_ms)
    join.held[0] = Partition(store, StreamClock(0, join.retention_ms, SOURCES))
    yield join
    store.close()


BAD_OUTCOME = b'{"request_id": "r-bad", "entity_id": "ent-1", "label": 2, "event_time": 5}'
"""What a client may well produce: JSON with a label the promoter cannot score."""


def message(topic: str, offset: int, value: bytes) -> Message:
    return Message(
        topic=topic, partition=0, offset=offset, key=b"ent-1", value=value, timestamp=(1, 1_000 + offset)
    )


def prediction(request_id: str) -> Prediction:
    golden = ModelScore(model_version="risk.1", score=0.3)
    return Prediction(
        request_id=request_id,
        entity_id="ent-1",
        event_time=1_000,
        score=0.3,
        answered_by="risk.1",
        golden=golden,
        transform_version="t-1",
    )


def test_an_outcome_labelled_2_is_dead_lettered_with_its_reason_and_never_joined(join: Join) -> None:
    predictions, outcomes = join.settings.topic("predictions"), join.settings.topic("outcomes")
    encode_prediction, encode_outcome = Codec(Prediction).encode, Codec(Outcome).encode
    batch = SourceBatch(
        1,
        [
            message(predictions, 0, encode_prediction(prediction("r-good"))),
            message(predictions, 1, encode_prediction(prediction("r-bad"))),
            message(
                outcomes,
                0,
                encode_outcome(Outcome(request_id="r-good", entity_id="ent-1", label=1, event_time=5)),
            ),
            message(outcomes, 1, BAD_OUTCOME),
        ],
    )

    outputs, changelog, changes = join.join_batch(batch)
    join.write(changes)

    letters = [
        accepted(Codec(DeadLetter).decode(out.value))
        for out in outputs
        if out.topic == join.settings.topic("dlq")
    ]
    assert [(d.request_id, d.reason, d.error_type, d.offset) for d in letters] == [
        ("r-bad", "label must be 0 or 1, got 2", "invalid_value", 1)
    ]
    joined = [accepted(Codec(JoinedOutcome).decode(out.value)) for out in outputs if out.topic == join.joined]
    assert [(row.request_id, row.label) for row in joined] == [("r-good", 1)]
    assert join.counts["rejected"] == 1
    # The changelog records come apart, for the sink to produce once the joined rows are delivered.
    assert {out.topic for out in outputs} == {join.settings.topic("dlq"), join.joined}
    # The changelog's records are keyed by request id: none is None.
    assert sorted(cast(bytes, out.key) for out in changelog if out.topic == join.changelog) == [
        b"r-bad",
        b"r-good",
    ]
    assert len(changelog) == 2
    (bad,) = join.held[0].store.get_many(["r-bad"])
    assert bad is not None and bad["state"] == "predicted", "still waits for a valid outcome"


def test_a_sweep_turn_is_one_slice_of_one_partition_until_every_partition_is_swept(
    settings: RigSettings,
) -> None:
    join = Join(settings.model_copy(update={"topic_partitions": 2}))
    pending = {0: SWEEP_SLICE + 1, 1: 2}
    for partition, count in pending.items():
        store = JoinStore(settings.home / f"join-{partition}", join.retention_ms)
        join.held[partition] = Partition(store, StreamClock(0, join.retention_ms, SOURCES))
        entry = {"state": "predicted", "at_ms": 1_000, "prediction": None, "outcome": None}
        store.write([(f"r{partition}-{i}", None, entry) for i in range(count)])

    def by_partition(changes: dict[Partition, list[Change]]) -> dict[int, list[Change]]:
        return {partition: changes[state] for partition, state in join.held.items() if state in changes}

    turns, more = [], True
    while more:
        _, changes, more = join.sweep_slices()
        join.write(changes)
        turns.append({partition: len(swept) for partition, swept in by_partition(changes).items()})

    assert turns == [{0: SWEEP_SLICE}, {0: 1}, {1: 2}]
    assert join.counts["expired_unjoined"] == sum(pending.values())
    # a new round finds nothing due (the expired entries wait another retention), one turn a partition
    rounds = [join.sweep_slices()[1:] for _ in pending]
    assert [(by_partition(changes), more) for changes, more in rounds] == [({0: []}, True), ({1: []}, False)]
    for state in join.held.values():
        state.store.close()


def test_a_partition_let_go_with_batches_unfinished_is_restored_when_it_comes_back(join: Join) -> None:
    """Its store may hold changes of batches whose outputs never reach Kafka: reused, a redo of them
    would find their requests joined and emit nothing."""
    join.revoked({(join.settings.topic("predictions"), 0)}, finished=False)

    assert 0 not in join.held
    assert join.let_go[0].changelog_end is None, "matches no changelog end: restored if it comes back"


def test_a_batch_published_after_its_partition_was_let_go_is_written_to_the_store_it_was_joined_in(
    join: Join, settings: RigSettings
) -> None:
    """A revoke waits for a batch's delivery, not for its store write: the write must reach the store
    the batch was joined in, kept for the partition's return, and never a store restored since."""
    predictions = join.settings.topic("predictions")
    batch = SourceBatch(1, [message(predictions, 0, Codec(Prediction).encode(prediction("r-1")))])
    _, _, changes = join.join_batch(batch)
    joined_in = join.held[0]
    join.revoked({(predictions, 0)}, finished=False)
    back = JoinStore(settings.home / "join-0-back", join.retention_ms)
    join.held[0] = Partition(back, StreamClock(0, join.retention_ms, SOURCES))  # restored meanwhile
    try:
        join.write(changes)

        assert [e and e["state"] for e in joined_in.store.get_many(["r-1"])] == ["predicted"]
        assert back.get_many(["r-1"]) == [None]
    finally:
        back.close()


def test_a_store_destroyed_before_its_batch_is_written_is_left_alone(settings: RigSettings) -> None:
    join = Join(settings.model_copy(update={"topic_partitions": 1}))
    store = JoinStore(settings.home / "join-0", join.retention_ms)
    state = Partition(store, StreamClock(0, join.retention_ms, SOURCES))
    store.destroy()  # its partition came back and was restored anew

    join.write(
        {state: [("r-1", None, {"state": "predicted", "at_ms": 1, "prediction": None, "outcome": None})]}
    )

    assert store.closed and not store.path.exists()


def test_a_broker_away_when_a_partition_comes_back_leaves_it_as_it_was_for_the_next_call(
    join: Join, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source calls `assigned` again once Kafka answers: the store let go must still be there to
    be kept or restored then (popped first, it would be left open and its folder deleted under it)."""
    monkeypatch.setattr(streams.join, "CHANGELOG_END_TIMEOUT_S", 1.0)
    join.settings = join.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})  # refused
    predictions = join.settings.topic("predictions")
    join.revoked({(predictions, 0)}, finished=True)  # its changelog's end unknown: restored on return
    kept = join.let_go[0]

    with pytest.raises(KafkaUnavailable, match="not read"):
        join.assigned({(predictions, 0)})

    assert join.let_go[0] is kept and 0 not in join.held


def test_a_batch_that_meets_the_schema_registry_away_changes_and_counts_nothing(
    settings: RigSettings, registry_away: None
) -> None:
    join = Join(settings.model_copy(update={"topic_partitions": 1, "schema_registry_url": "mock://join"}))
    store = JoinStore(settings.home / "join-0", join.retention_ms)
    join.held[0] = Partition(store, StreamClock(0, join.retention_ms, SOURCES))
    framed = b"\x00" + (7).to_bytes(4, "big") + Codec(Prediction).encode(prediction("r-2"))[10:]
    batch = SourceBatch(
        1,
        [
            message(join.settings.topic("outcomes"), 0, BAD_OUTCOME),  # a dead letter, before the wait
            message(join.settings.topic("predictions"), 0, framed),  # its writer schema cannot be looked up
        ],
    )
    try:
        with pytest.raises(SchemaRegistryUnavailable, match="schema id 7"):
            join.join_batch(batch)  # the batch is tried again later, as a whole

        assert not join.counts and store.get_many(["r-bad", "r-2"]) == [None, None]
    finally:
        store.close()


def test_two_joins_on_one_home_keep_a_partitions_store_in_folders_of_their_own(settings: RigSettings) -> None:
    """Workers on one host with one RIG_HOME: the one taking a partition over deletes its folder to
    restore it, which must not be where the other keeps its store of that partition."""
    first, second = Join(settings), Join(settings)

    assert first.folder(0) != second.folder(0)
    assert first.folder(0).parent.parent == second.folder(0).parent.parent == settings.join_stores
    assert first.folder(0) == first.folder(0), "one folder per process, claimed once"
