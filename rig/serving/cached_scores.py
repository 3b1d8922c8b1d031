"""Scoring a dispatched batch through the prediction cache: look up, score the misses, merge, store.

The cache sits in front of the backbone: rows whose (model version, transform version, feature
vector) was scored before are answered from the cache; only the misses reach the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rig.cache.store import PredictionCache
from rig.serving.backbone import BatchScores
from rig.serving.dispatch import DispatchPlan
from rig.transform.layout import ModelInput


@dataclass(frozen=True)
class CacheLookup:
    """What the cache answered for one batch.

    Attributes:
        hits: per version, the scores aligned to `plan.score_rows[version]` (NaN where missed).
        to_score: per version, the rows (batch indices) the models must still score.
    """

    hits: dict[str, np.ndarray]
    to_score: dict[str, np.ndarray]


def look_up(
    cache: PredictionCache,
    plan: DispatchPlan,
    values: np.ndarray,
    entity_ids: np.ndarray,
    inputs: Mapping[str, ModelInput],
) -> CacheLookup:
    """Cached scores of every (version, row) the plan wants, and the rows left to score; each model's
    key is its own input row and transform version (`rig.transform.layout`)."""
    hits, to_score = {}, {}
    for version, rows in plan.score_rows.items():
        own = inputs[version]
        rows_values = values[np.ix_(rows, own.columns)]
        scores, _tier = cache.get_many(version, own.transform_version, rows_values, entity_ids[rows])
        hits[version] = scores
        to_score[version] = rows[np.isnan(scores)]
    return CacheLookup(hits=hits, to_score=to_score)


def merge(plan: DispatchPlan, lookup: CacheLookup, computed: BatchScores) -> tuple[BatchScores, np.ndarray]:
    """Scores aligned to the plan's rows (cached where hit, computed elsewhere), and per batch row
    whether the golden's score came from the cache. A version that failed keeps only what was cached
    if that covers all its rows; otherwise it stays failed."""
    scores: dict[str, np.ndarray] = {}
    failed = dict(computed.failed)
    for version in plan.score_rows:
        merged = lookup.hits[version].copy()
        missed = np.isnan(merged)
        if version in computed.scores:
            merged[missed] = computed.scores[version]
            failed.pop(version, None)
        elif missed.any():
            continue  # failed, and the cache does not cover it
        else:
            failed.pop(version, None)
        scores[version] = merged
    golden_hit = ~np.isnan(lookup.hits[plan.golden])
    return BatchScores(scores=scores, failed=failed, elapsed_ms=computed.elapsed_ms), golden_hit


def fill_cache(
    cache: PredictionCache,
    lookup: CacheLookup,
    computed: BatchScores,
    values: np.ndarray,
    entity_ids: np.ndarray,
    inputs: Mapping[str, ModelInput],
) -> None:
    """Put every freshly computed score in the cache (after the predictions are published)."""
    for version, rows in lookup.to_score.items():
        if rows.size and version in computed.scores:
            own = inputs[version]
            rows_values = values[np.ix_(rows, own.columns)]
            cache.put_many(
                version, own.transform_version, rows_values, entity_ids[rows], computed.scores[version]
            )
