"""Feast definitions of the rig: one entity (an account) and its daily feature snapshots.

Loaded by `feast apply` (run in this folder) and by `rig.features.FeatureStoreClient.apply`.
The Parquet file is written by `rig.data.write_offline_store` (`rig features apply`).
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

from rig.data import FEATURE_NAMES, OFFLINE_STORE_FILE

entity = Entity(
    name="entity",
    join_keys=["entity_id"],
    value_type=ValueType.STRING,
    description="A card account of the synthetic world, e.g. ent-000042.",
)

entity_features_source = FileSource(
    name="entity_features_source",
    path=f"data/{OFFLINE_STORE_FILE}",
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
    description="Daily snapshot of the account's payment behaviour (see rig/data.py).",
)
