"""Prediction records (schemas/Prediction.avsc) from a dispatch plan and the backbone's scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rig.serving.backbone import BatchScores
from rig.serving.dispatch import DispatchPlan


def build_predictions(
    requests: Sequence[dict[str, Any]],
    plan: DispatchPlan,
    scores: BatchScores,
    transform_version: str,
    found: np.ndarray,
    timings_ms: dict[str, float],
    cache_hits: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One Prediction record per request.

    The golden score is always recorded. Every experiment that scored a row adds its score; an A/B
    experiment that failed for this batch hands its rows back to the golden answer. `cache_hits` says
    per request whether the golden's score came from the prediction cache.
    """
    golden = plan.golden
    golden_scores = scores.scores[golden]
    per_row: list[list[dict[str, Any]]] = [[] for _ in requests]
    for version, rows in plan.score_rows.items():
        if version == golden or version not in scores.scores:
            continue
        route = plan.experiment_of[version]
        for row, score in zip(rows.tolist(), scores.scores[version].tolist(), strict=True):
            per_row[row].append(
                {"experiment": route.name, "model_version": version, "mode": route.mode, "score": score}
            )
    records = []
    for i, request in enumerate(requests):
        golden_score = float(golden_scores[i])
        answered_by = plan.answered_by[i]
        answer = golden_score
        if answered_by != golden:
            answer = next((e["score"] for e in per_row[i] if e["model_version"] == answered_by), None)
            if answer is None:  # the A/B model failed this batch: the golden answers instead
                answered_by, answer = golden, golden_score
        records.append(
            {
                "request_id": request["request_id"],
                "entity_id": request["entity_id"],
                "event_time": request["event_time"],
                "score": answer,
                "answered_by": answered_by,
                "golden": {"model_version": golden, "score": golden_score},
                "experiments": per_row[i],
                "transform_version": transform_version,
                "cache_hit": bool(cache_hits[i]) if cache_hits is not None else False,
                "entity_found": bool(found[i]),
                "timings_ms": timings_ms,
            }
        )
    return records
