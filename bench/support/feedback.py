"""The feedback loop's side of a benchmark: requests with their outcomes (realistic labels, produced
keyed by entity id like the rig's own producers), and what came back read per request id: predictions
(`Answers`) and joined rows (`JoinedRows`), with what is missing and what is repeated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.support.kafka_io import Message, TopicReader, encode_requests
from rig.config import RigSettings
from rig.wire.codec import Codec, Rejected
from rig.wire.records import JoinedOutcome, Outcome, Prediction, Request
from sim.world import World, make_outcomes, make_requests


@dataclass(frozen=True)
class Traffic:
    """Requests and, in the same order, their outcomes (produce outcomes with a keyed producer:
    `bench.support.kafka_io.connected_producer(settings, keyed=True)`)."""

    requests: list[Message]
    outcomes: list[Message]
    outcome_delay_s: np.ndarray
    """Seconds from each request to its outcome (`sim.world.make_outcomes`' lognormal delays)."""

    @property
    def ids(self) -> list[str]:
        return [request_id for request_id, _, _ in self.requests]


def traffic_with_outcomes(
    settings: RigSettings, world: World, n: int, seed: int, delay_median_s: float = 60.0
) -> Traffic:
    """`n` requests of the world's entities (`sim.world.make_requests`) and their outcomes
    (`sim.world.make_outcomes`: labels drawn from the entities' true probabilities), encoded."""
    frame = make_requests(world, n, seed=seed)
    event_ms = frame["event_time"].astype("int64").to_numpy() // 1_000_000
    columns = zip(frame["request_id"], frame["entity_id"], event_ms, strict=True)
    requests = encode_requests(
        settings, (Request(request_id=rid, entity_id=eid, event_time=int(ms)) for rid, eid, ms in columns)
    )
    outcomes = make_outcomes(world, frame, seed=seed, delay_median_s=delay_median_s)
    outcomes = outcomes.set_index("request_id").loc[frame["request_id"]]  # back in request order
    outcome_ms = outcomes["event_time"].astype("int64").to_numpy() // 1_000_000
    codec = Codec(Outcome, registry_url=settings.schema_registry_url)
    encoded = [
        (
            request_id,
            entity_id.encode(),
            codec.encode(
                Outcome(request_id=request_id, entity_id=entity_id, label=int(label), event_time=int(at_ms))
            ),
        )
        for request_id, entity_id, label, at_ms in zip(
            outcomes.index, outcomes["entity_id"], outcomes["label"], outcome_ms, strict=True
        )
    ]
    return Traffic(requests, encoded, (outcome_ms - event_ms) / 1000)


class Answers(TopicReader):
    """Every prediction on a predictions topic: how many per request id, the Kafka timestamp of the
    first, and the models that scored each request (golden first, then its experiments); with `keep`,
    also the first prediction record of each request (`kept`)."""

    def __init__(self, settings: RigSettings, from_end: bool = False, keep: bool = False) -> None:
        super().__init__(settings, settings.topic("predictions"), from_end)
        self.count: Counter[str] = Counter()
        self.first_ms: dict[str, int] = {}
        self.models: dict[str, tuple[str, ...]] = {}
        self.kept: list[Prediction] = []
        self.keep = keep
        self._codec = Codec(Prediction, registry_url=settings.schema_registry_url)
        self._interned: dict[tuple[str, ...], tuple[str, ...]] = {}

    def fold(self, message: Any) -> None:
        record = self._codec.decode(message.value() or b"")
        if isinstance(record, Rejected):
            return
        self.count[record.request_id] += 1
        if record.request_id in self.first_ms:
            return
        self.first_ms[record.request_id] = message.timestamp()[1]
        models = (record.golden.model_version, *(e.model_version for e in record.experiments))
        self.models[record.request_id] = self._interned.setdefault(models, models)
        if self.keep:
            self.kept.append(record)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The request ids without a prediction."""
        return [request_id for request_id in ids if request_id not in self.count]

    def repeats(self, ids: Iterable[str]) -> int:
        """Predictions beyond the first, over these request ids."""
        return sum(self.count[request_id] - 1 for request_id in ids if self.count[request_id] > 1)


class JoinedRows(TopicReader):
    """Every joined row on a joined topic: the model versions joined per request id (one entry per
    row, so a repeated row shows twice)."""

    def __init__(self, settings: RigSettings, from_end: bool = False) -> None:
        super().__init__(settings, settings.topic("joined"), from_end)
        self.rows: dict[str, list[str]] = {}
        self.total = 0
        self.newest_ms = 0
        self._codec = Codec(JoinedOutcome, registry_url=settings.schema_registry_url)

    def fold(self, message: Any) -> None:
        row = self._codec.decode(message.value() or b"")
        if isinstance(row, Rejected):
            return
        self.rows.setdefault(row.request_id, []).append(row.model_version)
        self.total += 1
        self.newest_ms = max(self.newest_ms, message.timestamp()[1])

    def short(self, expected: Mapping[str, Iterable[str]]) -> list[str]:
        """The request ids lacking a joined row for a model that scored them."""
        return [
            request_id
            for request_id, models in expected.items()
            if not set(models) <= set(self.rows.get(request_id, ()))
        ]

    def repeats(self, ids: Iterable[str]) -> int:
        """Joined rows beyond the first per (request id, model), over these request ids."""
        repeated = 0
        for request_id in ids:
            models = self.rows.get(request_id, [])
            repeated += len(models) - len(set(models))
        return repeated

    def count(self, ids: Iterable[str]) -> int:
        """Joined rows (repeats included) of these request ids."""
        return sum(len(self.rows.get(request_id, ())) for request_id in ids)
