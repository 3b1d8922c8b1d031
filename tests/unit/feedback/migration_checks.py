"""Metadata stores as older versions of the rig left them, and a row in every table: shared by the
SQLite unit tests and the integration tests that run them on a real PostgreSQL."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rig.features.stats import FeatureStats
from rig.feedback.metadata import MODELS, MetadataStore, ServingWindow
from rig.routing.table import set_golden_event
from tests.support.metadata_checks import decision, model_meta, reference_frame

BASELINE = importlib.import_module("rig.feedback.migrations.versions.0001_baseline")


def create_pre_migration_schema(url: str) -> None:
    """The tables as `create_schema()` built them before migrations existed (`create_all`, no
    `alembic_version`); test_migrations_at_head_build_the_tables_the_store_uses proves the baseline
    is that schema."""
    engine = sa.create_engine(url)
    try:
        BASELINE.SCHEMA.create_all(engine)
    finally:
        engine.dispose()


def differences(url: str) -> list[object]:
    """What Alembic's autogenerate would change in the database at `url` to match the store's tables
    (tables, columns, types, nullability, indexes): nothing, when the migrations are complete."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), MODELS.metadata)
    finally:
        engine.dispose()


def record_one_of_each(store: MetadataStore, at_ms: int, key: str) -> None:
    """A row (or window) in every table, at `at_ms`; `key` tells the rows of different calls apart."""
    store.record_model(model_meta(f"{key}.1", "2026-01-01T00:00:00+00:00"))
    store.record_control(set_golden_event(f"{key}.1", "test", issued_at=at_ms))
    store.record_decision(decision(f"decision-{key}", decided_at=at_ms, golden_version=f"{key}.1"))
    store.record_model_metrics(f"{key}.1", at_ms, 100, 0.4, 0.8, 0.3, 0.25)
    stats = FeatureStats.from_reference(reference_frame(rows=500))
    stats.update({"amount": np.linspace(1, 50, 40), "age": np.full(40, 33.0)})
    store.record_feature_stats(f"serving:{key}", at_ms, stats)
    store.record_label_delays(at_ms, 40, {0.5: 1_000.0, 0.9: 5_000.0})
    store.record_delay_histograms(at_ms, {0: {3: 10}, 1: {7: 2}})
    store.record_model_serving(
        [ServingWindow(f"serving:{key}", at_ms, f"{key}.2", f"{key}.1", 9, 1, 8, 0.1, 0.02)]
    )
    store.record_promoter_status(f"promoter:{key}", at_ms, {"golden": f"{key}.1", "challengers": {}})


def read_everything(store: MetadataStore, keys: tuple[str, ...]) -> dict[str, Any]:
    """What every read of the store returns for the rows `record_one_of_each(..., key)` wrote."""
    return {
        "models": store.models(),
        "routing": store.routing_history(),
        "decisions": store.decisions(),
        "label_delays": store.label_delays(),
        "delay_histograms": store.delay_histograms(),
        **{
            f"{key}:{name}": read
            for key in keys
            for name, read in {
                "metrics": store.model_metrics(f"{key}.1"),
                "feature_stats": [
                    (window.window_end_ms, window.stats.to_dict())
                    for window in store.feature_stats(f"serving:{key}")
                ],
                "serving": store.model_serving(f"{key}.1"),
                "promoter_status": store.promoter_status(f"promoter:{key}"),
            }.items()
        },
    }
