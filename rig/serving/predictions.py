"""Prediction records (schemas/Prediction.avsc) from a dispatch plan and the backbone's scores."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from rig.serving.backbone import BatchScores
from rig.serving.dispatch import DispatchPlan
from rig.wire.records import ExperimentScore, ModelScore, Prediction, Request


def build_predictions(
    requests: Sequence[Request],
    plan: DispatchPlan,
    scores: BatchScores,
    transform_version: str,
    found: np.ndarray,
    timings_ms: dict[str, float] | None,
    cache_hits: np.ndarray | None = None,
    received_ms: Sequence[float] | None = None,
) -> list[Prediction]:
    """One Prediction record per request (the only place one is built).

    The golden score is always recorded. Every experiment that scored a row adds its score; an A/B
    experiment that failed for this batch hands its rows back to the golden answer. `cache_hits` says
    per request whether the golden's score came from the prediction cache. With `timings_ms` (the
    batch's stage timings; None leaves every record's timings empty) and `received_ms` (when each
    request reached Kafka, epoch ms), each record's timings add `kafka_to_publish`: the time from
    then to now, when its prediction is ready to publish.
    """
    golden = plan.golden
    golden_scores = scores.scores[golden].tolist()
    per_row: list[list[ExperimentScore]] = [[] for _ in requests]
    for version, rows in plan.score_rows.items():
        if version == golden or version not in scores.scores:
            continue
        route = plan.experiment_of[version]
        for row, score in zip(rows.tolist(), scores.scores[version].tolist(), strict=True):
            per_row[row].append(
                ExperimentScore(experiment=route.name, model_version=version, mode=route.mode, score=score)
            )
    hits = [False] * len(requests) if cache_hits is None else cache_hits.tolist()
    entity_found = np.asarray(found, dtype=bool).tolist()
    answered = plan.answered_by.tolist()
    now_ms = time.time() * 1000
    records = []
    for i, request in enumerate(requests):
        golden_score = float(golden_scores[i])
        answered_by = answered[i]
        answer = golden_score
        if answered_by != golden:
            challenger = next((e.score for e in per_row[i] if e.model_version == answered_by), None)
            if challenger is None:  # the A/B model failed this batch: the golden answers instead
                answered_by = golden
            else:
                answer = challenger
        timings = {} if timings_ms is None else timings_ms
        if timings_ms is not None and received_ms is not None:
            timings = {**timings_ms, "kafka_to_publish": round(now_ms - received_ms[i], 3)}
        records.append(
            Prediction(
                request_id=request.request_id,
                entity_id=request.entity_id,
                event_time=request.event_time,
                score=answer,
                answered_by=answered_by,
                golden=ModelScore(model_version=golden, score=golden_score),
                experiments=per_row[i],
                transform_version=transform_version,
                cache_hit=bool(hits[i]),
                entity_found=bool(entity_found[i]),
                timings_ms=timings,
            )
        )
    return records
