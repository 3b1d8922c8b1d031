"""Real Feast on the real Redis: apply, materialize, online and point-in-time historical reads.

Each run uses a copy of examples/synthetic_world with its own Feast project, and removes only that
project's keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rig.config import RigSettings
from rig.errors import ConfigError, FeatureStoreError
from rig.features.store import ENTITY_FOUND, FeatureStoreClient, redis_connection_string
from sim import world as data
from sim.deploy import write_world
from sim.settings import WorldSettings
from sim.world import FEATURE_NAMES
from tests.integration.conftest import isolated_feast_settings


@dataclass(frozen=True)
class AppliedStore:
    settings: RigSettings
    client: FeatureStoreClient
    world: data.World


def project_keys(redis_url: str, project: str) -> list[bytes]:
    import redis

    # Feast's Redis keys are the serialized entity key followed by the project name.
    return list(redis.Redis.from_url(redis_url).scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppliedStore]:
    settings = isolated_feast_settings(tmp_path_factory.mktemp("feast"))
    redis_url = settings.redis_url
    project = FeatureStoreClient(settings).repo_config().project
    world = write_world(settings, WorldSettings(seed=3, entities=200, days=5))
    client = FeatureStoreClient(settings)
    client.apply()
    client.materialize(world.start, world.end, progress=False)
    try:
        yield AppliedStore(settings, client, world)
    finally:
        client.teardown()
        assert project_keys(redis_url, project) == []


@pytest.mark.integration
def test_materialize_writes_one_redis_hash_per_entity(applied: AppliedStore) -> None:
    keys = project_keys(applied.settings.redis_url, applied.client.store.project)
    assert len(keys) == applied.world.n_entities


@pytest.mark.integration
def test_online_read_equals_latest_offline_snapshot(applied: AppliedStore) -> None:
    latest = applied.world.latest()
    with_missing = latest.loc[latest[list(data.MISSING_RATES)].isna().any(axis=1), "entity_id"]
    sample = pd.concat([latest["entity_id"].sample(40, random_state=1), with_missing.head(3)])
    assert len(with_missing) > 0, "the sample must include snapshots with missing values"

    online = applied.client.online(sample.tolist())

    assert list(online.columns) == ["entity_id", *FEATURE_NAMES, ENTITY_FOUND]
    assert list(online["entity_id"]) == sample.tolist()
    assert online[ENTITY_FOUND].all()
    expected = latest.set_index("entity_id").loc[sample, list(FEATURE_NAMES)].reset_index(drop=True)
    pd.testing.assert_frame_equal(online[list(FEATURE_NAMES)], expected, check_exact=True)


@pytest.mark.integration
def test_online_read_flags_unknown_entities_and_keeps_order(applied: AppliedStore) -> None:
    ids = ["ent-000007", "ent-999999", "ent-000003", "ent-000007"]

    online = applied.client.online(ids)

    assert list(online["entity_id"]) == ids
    assert list(online[ENTITY_FOUND]) == [True, False, True, True]
    assert online.loc[1, list(FEATURE_NAMES)].isna().all()
    pd.testing.assert_series_equal(online.loc[0], online.loc[3], check_names=False)
    assert applied.client.online([]).empty


@pytest.mark.integration
def test_historical_read_is_point_in_time(applied: AppliedStore) -> None:
    world = applied.world
    snapshots = world.features[world.features["entity_id"].isin(["ent-000010", "ent-000020"])]
    day1 = snapshots.groupby("entity_id").nth(1).set_index("entity_id")
    day2 = snapshots.groupby("entity_id").nth(2).set_index("entity_id")
    between = day1["event_timestamp"] + (day2["event_timestamp"] - day1["event_timestamp"]) / 2
    entity_df = pd.DataFrame(
        {
            "entity_id": ["ent-000010", "ent-000020", "ent-000010"],
            "event_timestamp": [
                between["ent-000010"],
                between["ent-000020"],
                day2.loc["ent-000010", "event_timestamp"],
            ],
            "label": [1, 0, 1],
        }
    )

    historical = applied.client.historical(entity_df)

    pd.testing.assert_frame_equal(historical[list(entity_df.columns)], entity_df)
    features = historical[list(FEATURE_NAMES)].to_numpy()
    np.testing.assert_array_equal(features[0], day1.loc["ent-000010", list(FEATURE_NAMES)].to_numpy(float))
    np.testing.assert_array_equal(features[1], day1.loc["ent-000020", list(FEATURE_NAMES)].to_numpy(float))
    np.testing.assert_array_equal(features[2], day2.loc["ent-000010", list(FEATURE_NAMES)].to_numpy(float))


@pytest.mark.integration
def test_historical_read_agrees_with_as_of_lookup(applied: AppliedStore) -> None:
    events = data.labelled_events(applied.world, 300, seed=8)
    shuffled = events.sample(frac=1.0, random_state=4).reset_index(drop=True)
    duplicated = pd.concat([shuffled, shuffled.head(5)], ignore_index=True)

    historical = applied.client.historical(duplicated)

    expected = data.as_of_features(applied.world, duplicated["entity_id"], duplicated["event_timestamp"])
    pd.testing.assert_frame_equal(historical[list(duplicated.columns)], duplicated)
    pd.testing.assert_frame_equal(historical[list(FEATURE_NAMES)], expected[list(FEATURE_NAMES)])


@pytest.mark.integration
def test_historical_read_keeps_rows_without_features(applied: AppliedStore) -> None:
    world = applied.world
    entity_df = pd.DataFrame(
        {
            "entity_id": ["ent-000001", "ent-000001", "ent-999999"],
            "event_timestamp": [
                pd.Timestamp(world.start) - pd.Timedelta(days=1),  # before any snapshot
                pd.Timestamp(world.end) + pd.Timedelta(days=30),  # beyond the ttl
                pd.Timestamp(world.end),  # unknown entity
            ],
        }
    )

    historical = applied.client.historical(entity_df)

    assert len(historical) == 3
    assert historical[list(FEATURE_NAMES)].isna().all().all()


@pytest.mark.integration
def test_unreachable_redis_is_a_feature_store_error(applied: AppliedStore) -> None:
    settings = applied.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    expected = re.escape("Redis not reachable at redis://127.0.0.1:1/0; run ops/redis/up")
    with pytest.raises(FeatureStoreError, match=expected):  # after redis-py's retries (~6 s)
        FeatureStoreClient(settings).online(["ent-000001"])


def test_redis_url_becomes_feast_connection_string() -> None:
    assert redis_connection_string("redis://127.0.0.1:6379/0") == "127.0.0.1:6379,db=0"
    assert redis_connection_string("redis://cache") == "cache:6379,db=0"
    assert (
        redis_connection_string("rediss://user:s%40cret@cache.example:6380/2")
        == "cache.example:6380,db=2,username=user,password=s@cret,ssl=true"
    )
    with pytest.raises(ConfigError):
        redis_connection_string("unix:///tmp/redis.sock")


def test_feasts_redis_client_gets_the_rigs_timeouts() -> None:
    """Without them Feast's client waits for ever for a Redis that hangs (redis-py's default)."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

    string = redis_connection_string("redis://127.0.0.1:6379/0", timeout_s=2.0)
    client = RedisOnlineStore()._get_client(RedisOnlineStoreConfig(connection_string=string))

    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 2.0)


def test_missing_repo_config_is_a_feature_store_error(tmp_path: Path) -> None:
    settings = RigSettings(feast_repo=tmp_path / "nowhere", home=tmp_path / "home")
    with pytest.raises(FeatureStoreError, match=r"feature_store\.yaml"):
        FeatureStoreClient(settings).repo_config()
