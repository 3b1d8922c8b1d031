"""Feast definitions of the synthetic world: one entity (an account) and its daily feature snapshots.

Loaded by `feast apply` (run in this folder) and by `rig features apply`. The Parquet file is written
by `rig-sim world` (`sim.world.write_offline_store`); the feature names are the world's.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

FEATURE_NAMES = (
    "txn_amount_mean_7d",
    "txn_count_7d",
    "txn_count_30d",
    "distinct_merchants_30d",
    "declined_txn_ratio_7d",
    "foreign_txn_ratio_30d",
    "mobile_txn_ratio_7d",
    "credit_utilization",
    "credit_limit",
    "chargeback_count_90d",
    "account_age_days",
    "days_since_last_login",
    "device_count_30d",
    "income_estimate",
    "support_tickets_30d",
    "session_length_mean_s",
)

entity = Entity(
    name="entity",
    join_keys=["entity_id"],
    value_type=ValueType.STRING,
    description="A card account of the synthetic world, e.g. ent-000042.",
)

entity_features_source = FileSource(
    name="entity_features_source",
    path="data/entity_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

entity_features = FeatureView(
    name="entity_features",
    entities=[entity],
    # Snapshots are daily: a value older than three days is treated as missing in training data.
    ttl=timedelta(days=3),
    schema=[Field(name=name, dtype=Float64) for name in FEATURE_NAMES],
    online=True,
    source=entity_features_source,
    description="Daily snapshot of the account's payment behaviour (see sim/world.py).",
)
