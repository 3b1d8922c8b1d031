"""rig.serving.predictions: stage timings are written into each Prediction only when asked for."""

from __future__ import annotations

import numpy as np

from rig.routing.table import control_key, fold, set_golden_event, start_experiment_event
from rig.serving.backbone import BatchScores
from rig.serving.dispatch import plan_batch
from rig.serving.predictions import build_predictions
from rig.wire.records import Prediction, Request

REQUESTS = [Request(request_id=f"r{i}", entity_id=f"e{i}", event_time=1_000 + i) for i in range(3)]


def predictions(timings: dict[str, float] | None, received_ms: list[float] | None) -> list[Prediction]:
    events = (set_golden_event("g1", actor="t"), start_experiment_event("x", "c1", "shadow", actor="t"))
    table = fold([(control_key(event), event) for event in events])
    plan = plan_batch(table, [r.entity_id for r in REQUESTS])
    scores = BatchScores({"g1": np.array([0.1, 0.2, 0.3]), "c1": np.array([0.4, 0.5, 0.6])}, {}, {})
    found = np.ones(3, dtype=bool)
    return build_predictions(REQUESTS, plan, scores, "tf1", found, timings, None, received_ms)


def test_without_timings_every_record_has_an_empty_timings_map_and_all_its_scores() -> None:
    records = predictions(None, [0.0, 0.0, 0.0])

    assert [r.timings_ms for r in records] == [{}, {}, {}]
    assert [(r.golden.score, [e.score for e in r.experiments]) for r in records] == [
        (0.1, [0.4]),
        (0.2, [0.5]),
        (0.3, [0.6]),
    ]


def test_with_timings_each_record_has_the_batch_stages_and_its_own_time_since_kafka() -> None:
    records = predictions({"decode": 1.0, "total": 2.0}, [0.0, 0.0, 1e15])

    assert all(r.timings_ms["decode"] == 1.0 and r.timings_ms["total"] == 2.0 for r in records)
    assert records[0].timings_ms["kafka_to_publish"] > 0 > records[2].timings_ms["kafka_to_publish"]
