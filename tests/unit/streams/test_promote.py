"""The promoter's worker side: joined rows it cannot score are dead-lettered; secrets stay out of
its logs; its state is saved once delivered and a new promoter goes on from it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import TypedDict, cast

import pytest
from confluent_kafka import Message
from msgspec.structs import replace

from rig.config import RigSettings
from rig.errors import MetadataUnavailable, RigError, SchemaRegistryUnavailable
from rig.feedback.metadata import MetadataStore
from rig.feedback.promotion import manual_decision
from rig.routing.table import (
    EMPTY_ROUTING,
    RoutingTable,
    control_key,
    fold,
    set_golden_event,
    start_experiment_event,
)
from rig.wire.codec import Codec
from rig.wire.records import ControlEvent, DeadLetter, JoinedOutcome
from streams.plane.sink import Outgoing
from streams.plane.source import SourceBatch
from streams.promote import QUALITY_WINDOW_S, STATE_SAVE_S, Promotion, open_metadata
from streams.runtime import Runtime
from tests.support.records import accepted

PASSWORD = "Pa55-w0rd-xyz"


def runtime_of(**parts: object) -> Runtime:
    """A stand-in for the worker's runtime with only the parts the promotion reads."""
    return SimpleNamespace(**parts)  # type: ignore[return-value]  # a stub, not a whole Runtime


def test_a_metadata_store_away_at_start_is_kept_and_the_saved_promoter_state_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RIG_METADATA_URL", f"postgresql+psycopg://rig:{PASSWORD}@127.0.0.1:1/rig")
    settings = RigSettings(home=tmp_path)

    with caplog.at_level(logging.INFO):
        store = open_metadata(settings)

    assert store is not None, "the worker's for its whole life: it is migrated once it answers"
    assert "metadata store not answering url=postgresql+psycopg://rig:***@127.0.0.1:1/rig" in caplog.text
    assert PASSWORD not in caplog.text
    promotion = Promotion(settings, runtime_of(control_routing=golden_and_shadow()), store)
    with pytest.raises(MetadataUnavailable):  # the source waits: starting over would drop the tests
        promotion.start_offsets({(settings.topic("joined"), 0)})


def test_a_metadata_store_that_cannot_be_used_is_logged_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RIG_METADATA_URL", f"postgresql+nodriver://rig:{PASSWORD}@127.0.0.1:1/rig")
    settings = RigSettings(home=tmp_path)

    with caplog.at_level(logging.INFO):
        assert open_metadata(settings) is None

    assert "metadata store unusable url=postgresql+nodriver://rig:***@127.0.0.1:1/rig" in caplog.text
    assert PASSWORD not in caplog.text, "neither the log line nor the errors in its traceback"


class KeptSink:
    """A Sink that keeps what it is given to publish."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []

    async def publish(
        self, batch_id: int, messages: Iterable[Outgoing], after: Iterable[Outgoing] = ()
    ) -> None:
        self.published += [*messages, *after]

    def close(self, timeout_s: float = 30) -> int:
        return 0


class PairFields(TypedDict):
    """What the golden's and the challenger's rows of one request share, but their outcome time."""

    request_id: str
    entity_id: str
    label: int
    prediction_time: int


def pair(request_id: str, label: int, at: int) -> list[JoinedOutcome]:
    """The golden's and the shadow challenger's joined rows of one request."""
    common: PairFields = {
        "request_id": request_id,
        "entity_id": "ent-1",
        "label": label,
        "prediction_time": at,
    }
    golden = JoinedOutcome(**common, outcome_time=at + 1, model_version="risk.1", role="golden", score=0.3)
    challenger = JoinedOutcome(
        **common,
        outcome_time=at + 1,
        model_version="risk.2",
        role="shadow",
        experiment="x",
        score=0.2,
        golden_model_version="risk.1",
        golden_score=0.3,
    )
    return [golden, challenger]


def golden_and_shadow() -> RoutingTable:
    """Routing with risk.1 golden and risk.2 in the shadow experiment "x"."""
    return fold(
        (control_key(e), e)
        for e in (set_golden_event("risk.1", "t"), start_experiment_event("x", "risk.2", "shadow", "t"))
    )


def joined_messages(settings: RigSettings, rows: list[JoinedOutcome]) -> list[Message]:
    """The rows as the promoter reads them from `rig.joined`, at offsets 0, 1, ..."""
    encode, joined = Codec(JoinedOutcome).encode, settings.topic("joined")
    return [
        Message(topic=joined, partition=0, offset=i, key=row.request_id.encode(), value=encode(row))
        for i, row in enumerate(rows)
    ]


def test_rows_are_judged_by_the_control_topics_routing_while_this_worker_cannot_serve_it_yet(
    settings: RigSettings,
) -> None:
    """A worker whose models are still loading (or verifying against a metadata store that is away)
    serves no routing yet; the promoter it runs must not take that for "no golden": its tests, restored
    or not, would be dropped and the rows folded meanwhile lost to them."""
    table = golden_and_shadow()
    runtime = runtime_of(control_routing=table, routing=EMPTY_ROUTING)
    promotion = Promotion(settings.model_copy(update={"promoter_label_window_s": 0.001}), runtime, None)
    rows = [row for i in range(50) for row in pair(f"r{i}", i % 2, 10 * i)]

    asyncio.run(promotion.handle(SourceBatch(1, joined_messages(settings, rows)), KeptSink()))

    challenger = promotion.loop.snapshot(table)["challengers"]["risk.2"]
    assert challenger["n"] + challenger["waiting"] + challenger["beyond_window"] == 50


def test_joined_rows_with_a_label_other_than_0_or_1_are_dead_lettered_and_the_rest_are_folded(
    settings: RigSettings,
) -> None:
    table = golden_and_shadow()
    promotion = Promotion(
        settings.model_copy(update={"promoter_label_window_s": 0.001}),
        runtime_of(control_routing=table),
        None,
    )
    good = [row for i in range(20) for row in pair(f"r{i}", i % 2, 10 * i)]
    bad = pair("r-bad", 2, 5)
    messages = joined_messages(settings, [*good[:10], *bad, *good[10:]])
    sink = KeptSink()

    asyncio.run(promotion.handle(SourceBatch(1, messages), sink))

    letters = [
        accepted(Codec(DeadLetter).decode(out.value))
        for out in sink.published
        if out.topic == settings.topic("dlq")
    ]
    assert [(d.request_id, d.reason, d.error_type, d.offset) for d in letters] == [
        ("r-bad", "label must be 0 or 1, got 2", "invalid_value", 10),
        ("r-bad", "label must be 0 or 1, got 2", "invalid_value", 11),
    ]
    assert promotion.loop.observe(good, table) == [], "every valid row was folded in already"


def test_an_auto_decision_changes_routing_before_it_is_published_and_a_failed_control_write_is_retried(
    settings: RigSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = golden_and_shadow()
    promotion = Promotion(
        settings.model_copy(update={"promoter_mode": "auto"}), runtime_of(control_routing=table), None
    )
    decision = replace(manual_decision("promote", "risk.1", "risk.2", "better", 0), mode="auto")
    monkeypatch.setattr(promotion.loop, "decide", lambda now_ms, routing: [decision])
    monkeypatch.setattr("streams.promote.CONTROL_FIRST_RETRY_S", 0.01)
    happened: list[str] = []

    def control_write(_settings: RigSettings, event: ControlEvent) -> None:
        happened.append(f"control {event.kind}")
        if happened.count("control set_golden") == 1 and event.kind == "set_golden":
            raise RigError("the broker did not acknowledge the control write")

    class OrderedSink(KeptSink):
        async def publish(
            self, batch_id: int, messages: Iterable[Outgoing], after: Iterable[Outgoing] = ()
        ) -> None:
            happened.extend(f"published {out.topic}" for out in [*messages, *after])

    monkeypatch.setattr("streams.promote.publish_control", control_write)

    asyncio.run(promotion.handle(SourceBatch(1, []), OrderedSink()))

    assert happened == [
        "control set_golden",  # refused once
        "control set_golden",
        "control start_experiment",
        f"published {settings.topic('decisions')}",
    ]


def test_the_state_is_saved_once_its_batch_is_delivered_and_a_new_promoter_goes_on_from_its_offset(
    settings: RigSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = golden_and_shadow()
    runtime = runtime_of(control_routing=table)
    settings = settings.model_copy(update={"promoter_label_window_s": 0.001})
    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    store.create_schema()
    joined = settings.topic("joined")
    rows = [row for i in range(300) for row in pair(f"r{i}", i % 2, 10 * i)]
    messages = joined_messages(settings, rows)
    batches = [SourceBatch(n, messages[200 * n : 200 * (n + 1)]) for n in range(3)]
    delivered: dict[tuple[str, int], int] = {}
    first = Promotion(settings, runtime, store, delivered.get)

    asyncio.run(first.handle(batches[0], KeptSink()))
    assert store.load_promoter_state() is None, "its decisions are not delivered yet"
    delivered[(joined, 0)] = 200
    asyncio.run(first.save_state())  # the plane's tick
    saved = store.load_promoter_state()
    assert saved is not None and saved[0] == 200
    for batch in batches[1:]:  # within STATE_SAVE_S: no state taken, then the worker crashes
        asyncio.run(first.handle(batch, KeptSink()))
        delivered[(joined, 0)] = cast(int, batch.messages[-1].offset()) + 1  # joined_messages sets it
    assert store.load_promoter_state() == saved and STATE_SAVE_S >= 1

    second = Promotion(settings, runtime, store)
    assert second.start_offsets({(joined, 0)}) == {(joined, 0): 200}
    for batch in batches[1:]:  # what the source reads from offset 200
        asyncio.run(second.handle(batch, KeptSink()))
    assert second.loop.snapshot(table) == first.loop.snapshot(table)
    standing = second.loop.snapshot(table)
    assert standing["duplicate_rows"] == 0 and standing["challengers"]["risk.2"]["n"] == 299, "each once"

    stricter = settings.model_copy(update={"promoter_alpha": 0.01})
    away = MetadataStore(f"sqlite:///{tmp_path / 'no-tables.db'}")
    with caplog.at_level(logging.WARNING):
        assert Promotion(stricter, runtime, store).start_offsets({(joined, 0)}) == {}
        assert Promotion(settings, runtime, away).start_offsets({(joined, 0)}) == {}
    assert "saved promoter state not continued" in caplog.text
    assert "promoter state not read" in caplog.text
    store.close()


def test_a_state_the_store_could_not_take_is_kept_and_saved_once_it_answers(
    settings: RigSettings, tmp_path: Path
) -> None:
    """Dropped, a restart would go on from an older state and publish the decisions since again."""
    folder = tmp_path / "metadata"
    store = MetadataStore(f"sqlite:///{folder / 'metadata.db'}")
    store.create_schema()
    joined = settings.topic("joined")
    messages = joined_messages(settings, [row for i in range(100) for row in pair(f"r{i}", i % 2, 10 * i)])
    promotion = Promotion(
        settings.model_copy(update={"promoter_label_window_s": 0.001}),
        runtime_of(control_routing=golden_and_shadow()),
        store,
        {(joined, 0): 200}.get,  # every output of the batch delivered
    )
    folder.rename(tmp_path / "away")  # the store stops answering: its file cannot be opened
    store.close()  # and no pooled connection holds it open

    asyncio.run(promotion.handle(SourceBatch(0, messages), KeptSink()))
    assert promotion.unsaved is not None and promotion.unsaved[0] == 200, "kept for the next try"

    (tmp_path / "away").rename(folder)
    asyncio.run(promotion.save_state())  # the plane's next tick
    saved = store.load_promoter_state()
    assert saved is not None and saved[0] == 200 and promotion.unsaved is None
    store.close()


def test_model_quality_and_label_delays_are_recorded_once_per_window_not_once_per_batch(
    settings: RigSettings, tmp_path: Path
) -> None:
    table = golden_and_shadow()
    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    store.create_schema()
    promotion = Promotion(settings, runtime_of(control_routing=table), store)
    rows = [row for i in range(30) for row in pair(f"r{i}", i % 2, 10 * i)]
    messages = joined_messages(settings, rows)

    for n in range(3):  # 10 requests each: the first opens the record's clock, the others fall within it
        asyncio.run(promotion.handle(SourceBatch(n, messages[20 * n : 20 * (n + 1)]), KeptSink()))
    assert [m.n for m in store.model_metrics("risk.1")] == [10], "the first batch, recorded at once"
    assert [d.n for d in store.label_delays()] == [10]

    asyncio.run(promotion.record_quality(promotion.next_ms["quality"] - 1))  # not due yet
    assert len(store.model_metrics("risk.1")) == 1
    asyncio.run(promotion.record_quality(promotion.next_ms["quality"]))  # the plane's tick, when due
    for version in ("risk.1", "risk.2"):
        assert [m.n for m in store.model_metrics(version)] == [10, 20], "two batches in one window"
    assert [d.n for d in store.label_delays()] == [10, 20], "golden rows only"
    asyncio.run(promotion.record_quality(promotion.next_ms["quality"] + int(QUALITY_WINDOW_S * 1000)))
    assert len(store.model_metrics("risk.1")) == 2, "an empty window is not recorded"
    store.close()


def test_a_batch_that_meets_the_schema_registry_away_folds_and_publishes_nothing(
    settings: RigSettings, registry_away: None
) -> None:
    table = golden_and_shadow()
    promotion = Promotion(
        settings.model_copy(update={"schema_registry_url": "mock://promote"}),
        runtime_of(control_routing=table),
        None,
    )
    rows = pair("r1", 1, 10)
    framed = b"\x00" + (7).to_bytes(4, "big") + Codec(JoinedOutcome).encode(rows[1])[10:]
    messages = [*joined_messages(settings, rows[:1]), Message(topic=settings.topic("joined"), value=framed)]
    sink = KeptSink()

    with pytest.raises(SchemaRegistryUnavailable, match="schema id 7"):
        asyncio.run(promotion.handle(SourceBatch(1, messages), sink))  # tried again later, as a whole

    assert sink.published == []
    assert promotion.loop.observe(rows[:1], table) == rows[:1], "the row before the wait was not folded"
