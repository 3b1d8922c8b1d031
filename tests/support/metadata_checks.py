"""Behaviour checks of `rig.feedback.metadata.MetadataStore`, shared by the SQLite unit tests and the
integration tests that run them on SQLite and on a real PostgreSQL.

Each check takes an empty store whose schema exists and proves one behaviour through the public API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from msgspec.structs import replace as replace_field

from rig.errors import MetadataError
from rig.features.stats import FeatureStats
from rig.feedback.metadata import Experiment, LabelDelays, MetadataStore, ModelMetrics
from rig.models.registry import ModelMeta
from rig.routing.table import (
    ExperimentRoute,
    kill_experiment_event,
    purge_cache_event,
    set_golden_event,
    start_experiment_event,
    stop_experiment_event,
)
from rig.wire.records import Decision, to_plain

Check = Callable[[MetadataStore], None]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    CHECKS.append(function)
    return function


def check_id(function: Check) -> str:
    return function.__name__


@contextmanager
def opened_store(url: str) -> Iterator[MetadataStore]:
    """A store on `url` with its schema created, closed afterwards."""
    store = MetadataStore(url)
    try:
        store.create_schema()
        yield store
    finally:
        store.close()


def decision(decision_id: str = "d1", **fields: Any) -> Decision:
    """A Decision record with every field set (as the codec decodes it)."""
    values = {
        "decision_id": decision_id,
        "decided_at": 1_700_000_000_000,
        "action": "keep",
        "mode": "suggest",
        "golden_version": "risk.1",
        "challenger_version": "risk.2",
        "metric": "log_loss",
        "n": 1_200,
        "estimate": -0.013,
        "ci_low": -0.031,
        "ci_high": 0.004,
        "p_value": 0.21,
        "e_value": 1.7,
        "reason": "not enough evidence yet",
    }
    # fields may be deliberately invalid (the store must refuse them), so they stay untyped.
    return Decision(**(values | fields))  # type: ignore[arg-type]


def reference_frame(rows: int = 5_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.lognormal(3, 1, rows), "age": rng.integers(18, 90, rows)})


def model_meta(version: str, created_at: str, sha256: str = "ab" * 32) -> ModelMeta:
    return ModelMeta(
        version=version,
        name=version.split(".")[0],
        sha256=sha256,
        features=("amount", "age"),
        created_at=created_at,
        transform_version="t-3f2a",
        metrics={"auc": 0.81, "log_loss": 0.42},
        training={"rows": 20_000, "seed": 7, "source": "world"},
    )


@check
def create_schema_is_idempotent(store: MetadataStore) -> None:
    store.record_model(model_meta("risk.1", "2026-01-01T00:00:00+00:00"))
    store.create_schema()
    assert [meta.version for meta in store.models()] == ["risk.1"]


@check
def models_round_trip_oldest_first_and_are_recorded_once(store: MetadataStore) -> None:
    second = model_meta("risk.2", "2026-01-02T00:00:00+00:00", sha256="cd" * 32)
    first = model_meta("risk.1", "2026-01-01T00:00:00+00:00")

    assert store.record_model(second) is True
    assert store.record_model(first) is True
    assert store.record_model(first) is False

    assert store.models() == [first, second]


@check
def a_model_version_recorded_with_another_checksum_is_refused(store: MetadataStore) -> None:
    store.record_model(model_meta("risk.1", "2026-01-01T00:00:00+00:00"))
    with pytest.raises(MetadataError, match="already recorded with checksum"):
        store.record_model(model_meta("risk.1", "2026-01-01T00:00:00+00:00", sha256="ef" * 32))


@check
def a_model_with_a_nan_metric_is_refused_because_json_has_no_nan(store: MetadataStore) -> None:
    meta = replace(model_meta("risk.1", "2026-01-01T00:00:00+00:00"), metrics={"auc": math.nan})
    with pytest.raises(MetadataError, match="JSON"):
        store.record_model(meta)
    assert store.models() == []


@check
def routing_history_keeps_every_change_newest_first_and_ignores_redelivery(store: MetadataStore) -> None:
    events = [
        set_golden_event("risk.1", "ana", issued_at=1_000),
        start_experiment_event("x", "risk.2", "shadow", "ana", issued_at=2_000),
        set_golden_event("risk.2", "promoter", "better", issued_at=3_000),
    ]
    assert [store.record_control(event) for event in events] == [True, True, True]
    assert store.record_control(events[1]) is False  # at-least-once redelivery

    assert store.routing_history() == events[::-1]
    assert store.routing_history(limit=2) == [events[2], events[1]]


@check
def a_control_event_without_optional_fields_gets_the_schema_defaults(store: MetadataStore) -> None:
    event = purge_cache_event("ana", issued_at=5)
    store.record_control(event)
    (stored,) = store.routing_history()
    assert stored == event
    assert (stored.model_version, stored.experiment, stored.mode, stored.entity_id, stored.reason) == (
        None,
        None,
        None,
        None,
        "",
    )
    assert (stored.traffic_share, stored.traffic_cap_rps) == (None, None)


@check
def experiments_are_folded_from_the_routing_history(store: MetadataStore) -> None:
    events = [
        start_experiment_event("a", "risk.2", "shadow", "ana", issued_at=1_000),
        start_experiment_event("b", "risk.3", "ab", "ana", traffic_share=0.2, issued_at=1_500),
        stop_experiment_event("a", "ana", issued_at=2_000),
        kill_experiment_event(ExperimentRoute("b", "risk.3", "ab", 0.2), "ana", issued_at=2_500),
        start_experiment_event("a", "risk.4", "shadow", "ana", issued_at=3_000),
        set_golden_event("risk.1", "ana", issued_at=3_500),
    ]
    for event in events:
        store.record_control(event)

    assert store.experiments() == [
        Experiment("a", "risk.4", "shadow", None, None, "running", 3_000, None),
        Experiment("b", "risk.3", "ab", 0.2, None, "killed", 1_500, 2_500),
    ]


@check
def decision_insert_is_idempotent(store: MetadataStore) -> None:
    assert store.record_decision(decision()) is True
    assert store.record_decision(decision()) is False
    assert store.decisions() == [decision()]


@check
def concurrent_redeliveries_of_a_decision_insert_it_once(store: MetadataStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        inserted = list(pool.map(lambda _: store.record_decision(decision("race")), range(16)))
    assert inserted.count(True) == 1
    assert [record.decision_id for record in store.decisions()] == ["race"]


@check
def decisions_round_trip_newest_first_with_infinite_bounds_and_filter_by_golden(store: MetadataStore) -> None:
    early = decision("d1", decided_at=1_000, ci_low=-math.inf, p_value=None, e_value=None)
    late = decision("d2", decided_at=2_000, action="promote", mode="auto", ci_high=math.inf)
    other = decision(
        "d3", decided_at=3_000, golden_version="risk.2", challenger_version=None, action="demote"
    )
    for record in (early, late, other):
        store.record_decision(record)

    assert store.decisions() == [other, late, early]
    assert store.decisions(limit=1) == [other]
    assert store.decisions(golden="risk.1") == [late, early]
    assert store.decisions(golden="risk.9") == []


@check
def records_that_do_not_fit_their_schema_are_refused_and_not_stored(store: MetadataStore) -> None:
    bad: list[Any] = [
        decision(action="maybe"),
        decision(estimate=math.nan),
        decision(decided_at=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()),
        decision(metric=None),
        # Not Decision records: a plain dict with an extra field, and one with a field missing.
        {**to_plain(decision()), "evidence": "extra field"},
        {key: value for key, value in to_plain(decision()).items() if key != "metric"},
    ]
    for record in bad:
        with pytest.raises(MetadataError):
            store.record_decision(record)
    with pytest.raises(MetadataError):
        store.record_control(replace_field(set_golden_event("risk.1", "ana", issued_at=1), mode="canary"))
    assert store.decisions() == []
    assert store.routing_history() == []


@check
def model_metrics_round_trip_oldest_first_and_a_window_recorded_again_is_replaced(
    store: MetadataStore,
) -> None:
    store.record_model_metrics("risk.1", 2_000, 500, 0.41, 0.80, 0.31, 0.30)
    store.record_model_metrics("risk.1", 1_000, 400, 0.45, None, 0.30, 0.28)
    store.record_model_metrics("risk.2", 1_000, 400, 0.40, 0.82, 0.29, 0.28)
    store.record_model_metrics("risk.1", 2_000, 650, 0.39, 0.81, 0.32, 0.31)  # late labels: recomputed

    assert store.model_metrics("risk.1") == [
        ModelMetrics("risk.1", 1_000, 400, 0.45, None, 0.30, 0.28),
        ModelMetrics("risk.1", 2_000, 650, 0.39, 0.81, 0.32, 0.31),
    ]
    assert store.model_metrics("risk.1", limit=1) == [
        ModelMetrics("risk.1", 2_000, 650, 0.39, 0.81, 0.32, 0.31)
    ]
    assert store.model_metrics("risk.9") == []


@check
def feature_stats_round_trip_per_scope_and_window(store: MetadataStore) -> None:
    reference = FeatureStats.from_reference(reference_frame())
    rng = np.random.default_rng(11)
    windows = {}
    for end in (1_000, 2_000, 3_000):
        stats = reference.empty()
        amount = rng.lognormal(3 + end / 2_000, 1, 300)
        amount[: end // 100] = np.nan
        stats.update({"amount": amount, "age": rng.integers(18, 90, 300)})
        store.record_feature_stats("serving", end, stats)
        windows[end] = stats
    store.record_feature_stats("risk.1", 1_000, reference.empty())
    windows[3_000].update({"amount": np.ones(10), "age": np.full(10, 40)})
    store.record_feature_stats("serving", 3_000, windows[3_000])  # recomputed window replaces

    stored = store.feature_stats("serving")
    assert [(window.scope, window.window_end_ms) for window in stored] == [
        ("serving", 1_000),
        ("serving", 2_000),
        ("serving", 3_000),
    ]
    assert [window.stats.to_dict() for window in stored] == [windows[end].to_dict() for end in windows]
    assert [window.window_end_ms for window in store.feature_stats("serving", limit=2)] == [2_000, 3_000]
    assert store.feature_stats("risk.1")[0].stats.to_dict() == reference.empty().to_dict()
    assert store.feature_stats("risk.9") == []


@check
def label_delays_round_trip_oldest_first(store: MetadataStore) -> None:
    store.record_label_delays(2_000, 80, {0.5: 60_000.0, 0.9: 240_000.0, 0.99: 900_000.0})
    store.record_label_delays(1_000, 50, {0.5: 55_000.0, 0.9: 200_000.0})
    store.record_label_delays(2_000, 90, {0.5: 61_000.0, 0.9: 250_000.0, 0.99: 910_000.0})

    assert store.label_delays() == [
        LabelDelays(1_000, 50, {0.5: 55_000.0, 0.9: 200_000.0}),
        LabelDelays(2_000, 90, {0.5: 61_000.0, 0.9: 250_000.0, 0.99: 910_000.0}),
    ]
    assert [delays.window_end_ms for delays in store.label_delays(limit=1)] == [2_000]
