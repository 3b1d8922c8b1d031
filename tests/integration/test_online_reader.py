"""The fast Redis-layout reader against Feast's own online read, on the real Redis.

These tests fail when a Feast upgrade changes its Redis layout (keys, hash fields, value encoding,
found/ttl semantics): every key Feast wrote must be one the fast reader computes, every hash must
hold exactly the fields it reads, and both readers must return the same arrays, NaNs included.
Each run uses its own Feast project and removes only that project's keys.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from rig.config import RigSettings
from rig.errors import FeatureStoreError
from rig.features.online_reader import (
    _DOUBLE_TAG,
    NUMERIC_KINDS,
    FeastSdkReader,
    OnlineFeatures,
    OnlineReader,
    RedisLayoutReader,
    parse_replies,
)
from rig.features.store import FeatureStoreClient
from sim import world as data
from sim.deploy import write_world
from sim.settings import WorldSettings
from tests.integration.conftest import isolated_feast_settings
from tests.unit.features.test_replies import resp

UNKNOWN_IDS = ["ent-999999", "", "ünïcödé-键", "ENT-000001"]


@dataclass(frozen=True)
class Readers:
    settings: RigSettings
    client: FeatureStoreClient
    world: data.World
    sdk: FeastSdkReader
    fast: RedisLayoutReader


def project_keys(settings: RigSettings, project: str) -> set[bytes]:
    import redis

    # Feast's Redis keys are the serialized entity key followed by the project name.
    client = redis.Redis.from_url(settings.redis_url)
    return set(client.scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readers]:
    settings = isolated_feast_settings(tmp_path_factory.mktemp("online_reader"))
    world = write_world(settings, WorldSettings(seed=11, entities=300, days=4))
    client = FeatureStoreClient(settings)
    project = client.repo_config().project
    client.apply()
    try:
        client.materialize(world.start, world.end, progress=False)
        fast = RedisLayoutReader(settings, client)
        yield Readers(settings, client, world, FeastSdkReader(client), fast)
        fast.close()
    finally:
        client.teardown()
        assert project_keys(settings, project) == set()


def assert_same(fast: OnlineFeatures, sdk: OnlineFeatures, n_rows: int) -> None:
    """Exactly the same arrays (NaN equal to NaN), found flags and names."""
    assert fast.feature_names == sdk.feature_names
    assert list(fast.columns) == list(sdk.feature_names) == list(sdk.columns)
    assert len(fast) == len(sdk) == n_rows
    assert fast.found.dtype == sdk.found.dtype == np.dtype(bool)
    np.testing.assert_array_equal(fast.found, sdk.found)
    for name in sdk.feature_names:
        assert fast.columns[name].dtype == sdk.columns[name].dtype == np.dtype(np.float64), name
        assert fast.columns[name].shape == (n_rows,), name
        # Bit-level equality for numbers (so -0.0 differs from 0.0), NaN equal to NaN.
        both_nan = np.isnan(fast.columns[name]) & np.isnan(sdk.columns[name])
        np.testing.assert_array_equal(
            np.where(both_nan, 0, fast.columns[name].view(np.int64)),
            np.where(both_nan, 0, sdk.columns[name].view(np.int64)),
            err_msg=name,
        )


@pytest.mark.integration
def test_both_readers_implement_the_interface(readers: Readers) -> None:
    assert isinstance(readers.fast, OnlineReader)
    assert isinstance(readers.sdk, OnlineReader)
    assert readers.fast.feature_names == readers.sdk.feature_names == data.FEATURE_NAMES


@pytest.mark.integration
def test_fast_reader_equals_feast_sdk_for_every_entity(readers: Readers) -> None:
    world_ids = sorted(readers.world.features["entity_id"].unique())
    ids = random.Random(7).sample(world_ids, len(world_ids))
    ids += UNKNOWN_IDS + ids[:25] + ids[100:103] + UNKNOWN_IDS[:1]  # unknown ids and duplicates

    sdk = readers.sdk.read(ids)
    fast = readers.fast.read(ids)

    assert_same(fast, sdk, len(ids))
    assert sdk.found.sum() == len(ids) - 5, "every world entity found, every unknown one not"
    assert not sdk.found[len(world_ids) : len(world_ids) + len(UNKNOWN_IDS)].any()
    matrix = np.column_stack([sdk.columns[name] for name in sdk.feature_names])
    assert np.isnan(matrix[sdk.found]).any(), "the world must hold stored NaNs (missing values)"
    assert np.isnan(matrix[~sdk.found]).all()
    # Same values as the offline store's latest snapshot, so neither reader is wrong the same way.
    latest = readers.world.latest().set_index("entity_id")
    expected = latest.loc[ids[:10], list(sdk.feature_names)].to_numpy(np.float64)
    np.testing.assert_array_equal(
        np.column_stack([fast.columns[n][:10] for n in fast.feature_names]), expected
    )


@pytest.mark.integration
def test_feature_view_ttl_is_not_applied_online_as_in_feast(readers: Readers) -> None:
    """Feast 0.67's Redis online read returns snapshots older than the view's ttl; so does the fast reader.

    If a Feast upgrade starts dropping stale rows online, this fails and the fast reader must follow.
    """
    ttl = readers.client.store.get_feature_view("entity_features").ttl
    assert ttl is not None and readers.world.end < datetime.now(UTC) - ttl, "snapshots must be stale"
    ids = sorted(readers.world.features["entity_id"].unique())[:20]

    sdk = readers.sdk.read(ids)

    assert sdk.found.all()
    assert_same(readers.fast.read(ids), sdk, len(ids))


@pytest.mark.integration
def test_layout_keys_and_fields_are_the_ones_feast_wrote(readers: Readers) -> None:
    import redis

    fast = readers.fast
    world_ids = readers.world.features["entity_id"].unique()
    written = project_keys(readers.settings, fast.project)

    assert written == {fast.redis_key(entity_id) for entity_id in world_ids}
    client = redis.Redis.from_url(readers.settings.redis_url)
    with client.pipeline(transaction=False) as pipe:
        for key in written:
            pipe.hkeys(key)  # type: ignore[arg-type]  # redis takes bytes keys; its annotations say str
        fields = pipe.execute()
    assert all(set(hash_fields) == set(fast.hash_fields) for hash_fields in fields)
    assert len(set(fast.hash_fields)) == len(data.FEATURE_NAMES) + 1
    assert fast.hash_fields[-1] == b"_ts:entity_features"


@pytest.mark.integration
def test_keys_follow_feasts_serialize_entity_key_for_any_string(readers: Readers) -> None:
    fast = readers.fast
    rng = random.Random(3)
    alphabet = "abcXYZ019-_:*é键😀\x00\n "
    ids = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(300)] + ["x" * 70_000]

    assert fast._key_head is not None, "the template must hold for Feast's current encoding"
    assert [fast.redis_key(entity_id) for entity_id in ids] == [
        fast._feast_key(entity_id) for entity_id in ids
    ]


@pytest.mark.integration
def test_unusual_stored_values_decode_as_feast_reads_them(readers: Readers) -> None:
    """Values Feast's SDK may meet in Redis beyond plain doubles: other kinds, odd timestamps."""
    import redis
    from feast.protos.feast.types.Value_pb2 import Null
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from google.protobuf.timestamp_pb2 import Timestamp

    fast = readers.fast
    fields, ts_field = fast.hash_fields[:-1], fast.hash_fields[-1]

    def encoded(**kind: object) -> bytes:
        return ValueProto(**kind).SerializeToString()  # type: ignore[arg-type]

    def timestamp(seconds: int, nanos: int = 0) -> bytes:
        return Timestamp(seconds=seconds, nanos=nanos).SerializeToString()

    odd_values = [
        encoded(float_val=0.1),
        encoded(int64_val=2**62 + 1),
        encoded(int32_val=-7),
        encoded(bool_val=True),
        encoded(string_val="3.5"),
        encoded(null_val=Null.NULL),
        encoded(double_val=math.nan),
        encoded(double_val=-math.inf),
        encoded(double_val=-0.0),
        encoded(double_val=5e-324),
        encoded(unix_timestamp_val=1_700_000_000),
        b"",
        encoded(double_val=1.0) + encoded(double_val=2.0),  # repeated field: the last one wins
        encoded(float_val=1.5) + encoded(double_val=2.5),  # oneof: the last one set wins
        encoded(double_val=2.5) + encoded(int32_val=4),
        encoded(double_val=0.0),
    ]
    assert len(odd_values) == len(fields)
    rows = {
        "odd-all-kinds": {**dict(zip(fields, odd_values, strict=True)), ts_field: timestamp(1_735_689_600)},
        "odd-no-timestamp": {fields[0]: encoded(double_val=1.25), fields[3]: encoded(double_val=4.0)},
        "odd-only-timestamp": {ts_field: timestamp(1_735_689_600, 999_999_999)},
        "odd-zero-seconds": {fields[0]: encoded(double_val=7.0), ts_field: timestamp(0, 5)},
        "odd-before-1970": {fields[1]: encoded(double_val=8.0), ts_field: timestamp(-86_400)},
        "odd-empty-timestamp": {fields[2]: encoded(double_val=9.0), ts_field: b""},
    }
    client = redis.Redis.from_url(readers.settings.redis_url)
    keys = [fast.redis_key(entity_id) for entity_id in rows]
    try:
        for key, mapping in zip(keys, rows.values(), strict=True):
            client.hset(key, mapping=mapping)  # type: ignore[arg-type]
        ids = [*rows, "ent-000001", "odd-all-kinds"]

        sdk = readers.sdk.read(ids)
        got = readers.fast.read(ids)

        assert_same(got, sdk, len(ids))
        assert list(sdk.found) == [True, False, True, False, True, False, True, True]
    finally:
        client.delete(*keys)


@pytest.mark.integration
def test_hand_rolled_double_decoder_equals_protobuf_parse(readers: Readers) -> None:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    fast = readers.fast
    n_features = len(fast.feature_names)
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**64, size=20 * n_features * 50, dtype=np.uint64)
    specials = np.array([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308])
    doubles = np.concatenate([bits.view(np.float64), specials, rng.normal(size=500)])
    stored: list[bytes | None] = [ValueProto(double_val=float(x)).SerializeToString() for x in doubles]
    stored += [None, b"", ValueProto(float_val=0.3).SerializeToString()]
    stored += [None] * (-len(stored) % n_features)
    replies = [[*stored[start : start + n_features], None] for start in range(0, len(stored), n_features)]

    def reference(value: bytes | None) -> float:
        if not value:
            return math.nan
        proto = ValueProto.FromString(value)
        kind = proto.WhichOneof("val")
        return float(getattr(proto, kind)) if kind in NUMERIC_KINDS else math.nan

    expected = np.array([reference(value) for value in stored]).reshape(len(replies), n_features).T
    data = resp(replies)
    chunks = [data[at : at + 1000] for at in range(0, len(data), 1000)]  # as a socket gives them
    parsed = parse_replies(chunks, len(replies), n_features + 1, n_features, _DOUBLE_TAG)
    values, found = fast._decode(parsed, n_features)
    np.testing.assert_array_equal(
        values.view(np.int64)[~np.isnan(values)], expected.view(np.int64)[~np.isnan(expected)]
    )
    np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))
    assert not found.any()
    assert values.flags.c_contiguous


@pytest.mark.integration
def test_empty_batch_reads_nothing(readers: Readers) -> None:
    for reader in (readers.fast, readers.sdk):
        features = reader.read([])
        assert len(features) == 0
        assert all(column.shape == (0,) for column in features.columns.values())


@pytest.mark.integration
def test_unreachable_redis_is_a_feature_store_error(readers: Readers) -> None:
    settings = readers.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    reader = RedisLayoutReader(settings, FeatureStoreClient(settings))
    with pytest.raises(
        FeatureStoreError, match=r"Redis not reachable at redis://127\.0\.0\.1:1/0; run ops/redis/up"
    ):
        reader.read(["ent-000001"])


@pytest.mark.integration
def test_redis_error_reply_is_a_feature_store_error_and_the_reader_recovers(readers: Readers) -> None:
    import redis

    fast = readers.fast
    client = redis.Redis.from_url(readers.settings.redis_url)
    key = fast.redis_key("odd-not-a-hash")
    client.set(key, b"not a hash")
    try:
        for read in (fast.read, fast.read_quick):
            with pytest.raises(FeatureStoreError, match="refused HMGET"):
                read(["ent-000001", "odd-not-a-hash", "ent-000002"])
    finally:
        client.delete(key)
    ids = ["ent-000001", "ent-000002"]
    assert_same(fast.read(ids), readers.sdk.read(ids), len(ids))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b":1\r\n", "InvalidResponse"),  # not an array: a protocol error, as redis-py's parser says
        (b"-ERR no\r\n", "ResponseError"),
        (b"-LOADING Redis is loading the dataset in memory\r\n", "BusyLoadingError"),  # waited for
        (b"", "ConnectionError"),  # closed before the reply
    ],
)
def test_replies_read_off_the_socket_fail_as_redis_py_fails(
    readers: Readers, answer: bytes, error: str
) -> None:
    import socket
    from types import SimpleNamespace

    import redis

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(answer)
        theirs.shutdown(socket.SHUT_WR)

        with pytest.raises(getattr(redis, error)):
            readers.fast._receive(SimpleNamespace(_sock=ours), 1)


@pytest.mark.integration
def test_quick_read_equals_feast_sdk_and_the_sdk_reader_has_none(readers: Readers) -> None:
    world_ids = sorted(readers.world.features["entity_id"].unique())
    ids = [*world_ids[:40], *UNKNOWN_IDS, world_ids[0], world_ids[3]]  # unknown ids and repeats
    quick = readers.fast.read_quick(ids)
    assert quick is not None
    assert_same(quick, readers.sdk.read(ids), len(ids))
    assert readers.sdk.read_quick(ids) is None


@pytest.mark.integration
def test_quick_read_steps_aside_when_redis_does_not_answer_in_time(
    readers: Readers, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from rig.features import online_reader

    monkeypatch.setattr(online_reader, "QUICK_PAUSE_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        silent.setblocking(False)
        settings = readers.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        reader = RedisLayoutReader(settings, FeatureStoreClient(settings))
        began = time.monotonic()
        assert reader.read_quick(["ent-000001"]) is None
        # Bounded by QUICK_TIMEOUT_S, not by RIG_REDIS_TIMEOUT_S (2 s): it never holds a loop long.
        assert time.monotonic() - began < settings.redis_timeout_s / 2
        silent.accept()[0].close()
        assert reader.read_quick(["ent-000001"]) is None  # paused: no second connection
        with pytest.raises(BlockingIOError):
            silent.accept()
        time.sleep(0.6)
        assert reader.read_quick(["ent-000001"]) is None  # after the pause: tried again
        silent.accept()[0].close()
        reader.close()


@pytest.mark.integration
def test_quick_read_steps_aside_when_redis_refuses_connections(readers: Readers) -> None:
    settings = readers.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    reader = RedisLayoutReader(settings, FeatureStoreClient(settings))
    assert reader.read_quick(["ent-000001"]) is None
    with pytest.raises(FeatureStoreError, match="Redis not reachable"):
        reader.read(["ent-000001"])  # what the caller's thread then says


@pytest.mark.integration
def test_a_redis_loading_its_dump_is_waited_for_not_refused(readers: Readers) -> None:
    import redis

    from rig.errors import FeatureStoreUnavailable

    error = readers.fast._error(redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"))
    assert isinstance(error, FeatureStoreUnavailable), "a batch waits for it (before: exit 70, a crash loop)"
