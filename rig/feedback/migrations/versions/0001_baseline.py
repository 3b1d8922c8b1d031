"""Baseline: the tables as `MetadataStore.create_schema()` built them before migrations existed.

A store written before then (its tables present, no `alembic_version`) is adopted, not recreated: the
tables it lacks are created, the nullable columns its tables lack are added (fields a record schema
gained, such as `decisions.checks`, were added that way before migrations), and its rows stay.

The tables are written out here, not imported from `rig.feedback.metadata`: a migration is what the
schema was at its revision, whatever the store's tables become later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

SCHEMA = sa.MetaData()
"""The tables at this revision: what a store written before migrations holds (its tests build one)."""
_version = sa.String(200)
sa.Table(
    "models", SCHEMA,
    sa.Column("version", _version, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("transform_version", _version, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("training", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(64), nullable=False),
)  # fmt: skip
sa.Table(
    "model_metrics", SCHEMA,
    sa.Column("model_version", _version, primary_key=True),
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("mean_loss", sa.Double),
    sa.Column("auc", sa.Double),
    sa.Column("mean_score", sa.Double),
    sa.Column("positive_rate", sa.Double),
)  # fmt: skip
sa.Table(
    "feature_stats", SCHEMA,
    sa.Column("scope", _version, primary_key=True),
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("feature", sa.String(200), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("missing", sa.BigInteger, nullable=False),
    sa.Column("mean", sa.Double),
    sa.Column("std", sa.Double),
    sa.Column("psi", sa.Double),
    sa.Column("sketch", sa.JSON, nullable=False),
)  # fmt: skip
sa.Table(
    "label_delays", SCHEMA,
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("quantiles_ms", sa.JSON, nullable=False),
)  # fmt: skip
sa.Table(
    "label_delay_histograms", SCHEMA,
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("label", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
)  # fmt: skip
sa.Table(
    "model_serving", SCHEMA,
    sa.Column("scope", _version, primary_key=True),
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("model_version", _version, primary_key=True),
    sa.Column("golden_version", _version, nullable=False, index=True),
    sa.Column("batches", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("timed", sa.BigInteger, nullable=False),
    sa.Column("log_ratio_mean", sa.Double, nullable=False),
    sa.Column("log_ratio_m2", sa.Double, nullable=False),
)  # fmt: skip
sa.Table(
    "promoter_status", SCHEMA,
    sa.Column("scope", _version, primary_key=True),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("status", sa.JSON, nullable=False),
)  # fmt: skip
# The record tables: one column per field of schemas/ControlEvent.avsc and schemas/Decision.avsc.
sa.Table(
    "control_events", SCHEMA,
    sa.Column("event_id", sa.String, primary_key=True),
    sa.Column("issued_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("model_version", sa.String),
    sa.Column("experiment", sa.String, index=True),
    sa.Column("mode", sa.String),
    sa.Column("traffic_share", sa.Double),
    sa.Column("traffic_cap_rps", sa.Double),
    sa.Column("actor", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("entity_id", sa.String),
)  # fmt: skip
sa.Table(
    "decisions", SCHEMA,
    sa.Column("decision_id", sa.String, primary_key=True),
    sa.Column("decided_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("mode", sa.String, nullable=False),
    sa.Column("golden_version", sa.String, nullable=False, index=True),
    sa.Column("challenger_version", sa.String),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("estimate", sa.Double, nullable=False),
    sa.Column("ci_low", sa.Double, nullable=False),
    sa.Column("ci_high", sa.Double, nullable=False),
    sa.Column("p_value", sa.Double),
    sa.Column("e_value", sa.Double),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("checks", sa.JSON),
)  # fmt: skip


def upgrade() -> None:
    """Create the tables the store lacks and add the nullable columns its tables lack."""
    connection = op.get_bind()
    SCHEMA.create_all(connection)  # checks first: the tables a store already has are kept
    inspector = sa.inspect(connection)
    for table in SCHEMA.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.nullable and column.name not in present:
                op.add_column(table.name, sa.Column(column.name, column.type))
