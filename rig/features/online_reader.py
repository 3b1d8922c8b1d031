"""Batched online feature reads: one interface, two readers.

`FeastSdkReader` goes through Feast's `get_online_features` (the reference, always correct).
`RedisLayoutReader` reads the same Redis hashes Feast's Redis online store writes, in one pipelined
round trip per batch, and decodes the stored values itself; it costs a fraction of the SDK per row.
tests/integration/test_online_reader.py proves both return the same values and fails when a Feast
upgrade changes the layout; bench/bench_online_reader.py measures them side by side.

Feast's Redis layout (feast 0.67, `feast.infra.online_stores.redis`):
- one hash per entity, key = `serialize_entity_key(EntityKey(join_keys, values), version)` followed
  by the project name (so projects share a Redis database without clashing);
- one field per feature, named by the 4 bytes of murmur3-32 (little endian) of `"<view>:<feature>"`,
  holding a serialized `feast.types.Value` (`double_val` for Float64; an empty string for a NaN or
  missing value);
- one field `_ts:<view>` holding the serialized `google.protobuf.Timestamp` of the snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

from rig.config import RigSettings, masked_url
from rig.errors import FeatureStoreError, FeatureStoreUnavailable, transient_reply
from rig.features import _replies

if TYPE_CHECKING:
    import redis

    from rig.features.selection import FeatureSelection
    from rig.features.store import FeatureStoreClient

log = logging.getLogger(__name__)

NUMERIC_KINDS = frozenset({"double_val", "float_val", "int64_val", "int32_val"})
"""Kinds of `feast.types.Value` read as numbers (as `FeatureStoreClient.online` does); others are NaN."""

_DOUBLE_TAG = 0x29
"""Wire tag of `Value.double_val`: field 5, wire type 1 (fixed 64 bit)."""

_RECEIVE_BYTES = 1 << 16
"""Most bytes one read of a Redis socket takes."""

_KEY_PROBES = ("", "ent-000042", "ünïcödé-键", "x" * 300)
"""Entity ids the key template is checked against Feast's own `serialize_entity_key` with."""

_TS_CACHE_LIMIT = 4096

QUICK_TIMEOUT_S = 0.02
"""Longest a quick read (`read_quick`) waits for Redis in any one step (connect, send, each reply):
it runs on the caller's thread, the event loop's, which nothing else may hold for long."""
QUICK_PAUSE_S = 30.0
"""How long quick reads stay off after one did not get its answer in time: meanwhile every read goes
through `read` in a worker thread, where a Redis that hangs or is away is waited for."""


@dataclass(frozen=True, eq=False)
class OnlineFeatures:
    """Features of a batch of entities, one float64 array per feature (the transformer's input).

    Attributes:
        columns: Feature name -> float64 array in input order (NaN when missing or not found).
        found: True where the online store holds the entity.
        feature_names: Names of `columns`, in the feature view's schema order.
    """

    columns: dict[str, np.ndarray]
    found: np.ndarray
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.found)


@runtime_checkable
class OnlineReader(Protocol):
    """Reads the latest online features of a batch of entities."""

    selection: FeatureSelection

    def read(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures:
        """Features of `entity_ids` in input order; duplicates and unknown ids are allowed.
        `request_data` holds, per request-time field of on-demand views, one value per entity id.

        Raises:
            FeatureStoreError: when the online store cannot be read.
        """
        ...

    def read_quick(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures | None:
        """`read` for a thread that must not wait long (an event loop): the same features, or None
        when this reader cannot answer within `QUICK_TIMEOUT_S` per step now; the caller then reads
        with `read` in a worker thread.
        """
        ...


class FeastSdkReader:
    """The reference reader: Feast's `get_online_features` through `FeatureStoreClient.online`; it
    reads any selection, on-demand feature views included (Feast computes them)."""

    def __init__(self, client: FeatureStoreClient, selection: FeatureSelection | None = None) -> None:
        self.client = client
        self.selection = selection or client.selection()
        self.feature_names: tuple[str, ...] = self.selection.columns

    def read(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures:
        from rig.features.store import ENTITY_FOUND

        frame = self.client.online(entity_ids, self.selection, request_data)
        columns = {name: np.ascontiguousarray(frame[name].to_numpy()) for name in self.feature_names}
        found = frame[ENTITY_FOUND].to_numpy(dtype=bool)
        return OnlineFeatures(columns=columns, found=found, feature_names=self.feature_names)

    def read_quick(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures | None:
        """None: Feast's SDK cannot bound how long a read waits."""
        return None


def layout_unreadable(client: FeatureStoreClient, selection: FeatureSelection) -> str | None:
    """Why `RedisLayoutReader` cannot read a selection (the SDK reader must), or None when it can."""
    config = client.repo_config()
    store = config.online_store
    if getattr(store, "type", None) != "redis" or getattr(store, "redis_type", "redis") != "redis":
        return f"the online store is not a single Redis ({getattr(store, 'type', store)!r})"
    if getattr(config.registry, "enable_online_feature_view_versioning", False):
        return "the registry versions online feature views"
    if selection.on_demand:
        return f"on-demand feature views {list(selection.on_demand)} are computed by Feast"
    if len(selection.join_keys) != 1:
        return f"the entity has several join keys {[key.name for key in selection.join_keys]}"
    other = [
        ref for ref, kind in zip(selection.refs, selection.types, strict=True) if kind not in NUMERIC_TYPES
    ]
    if other:
        return f"features {other} are not numbers"
    return None


NUMERIC_TYPES = frozenset({"Float32", "Float64", "Int32", "Int64"})
"""Feast types the Redis-layout reader decodes (a Bool is read by the SDK reader)."""


@dataclass(slots=True)
class Replies:
    """The replies to a batch's HMGETs as `_replies.parse` leaves them."""

    count: int
    values: bytearray
    """The feature values, float64, entity-major (NaN where `slow` holds the value)."""
    slow: list[tuple[int, int, bytes]]
    """(entity, feature, bytes) of values that are not a Feast `Value` holding only a double."""
    stamps: list[bytes | None]
    """The timestamp fields, entity-major (one per view)."""


def parse_replies(chunks: Iterable[bytes], count: int, fields: int, doubles: int, tag: int) -> Replies:
    """`count` replies to HMGETs of `fields` fields each, from the bytes `chunks` yields, parsed in C
    (`rig/features/_replies.c`) as they arrive: of each, the first `doubles` fields as float64 (a Feast
    `Value` holding only a double, wire tag `tag`, is copied as it is; -1: none is), the others as
    timestamps.

    Raises:
        ReplyError: Redis answered with an error (`rig.features._replies`).
        ValueError: the bytes are not such replies.
    """
    replies = Replies(count, bytearray(8 * doubles * count), [], [])
    received, done, offset = bytearray(), 0, 0
    pieces = iter(chunks)
    while done < count:
        chunk = next(pieces, None)
        if chunk is None:
            raise ValueError(f"the bytes end after {done} of {count} replies")
        received += chunk
        done, offset = _replies.parse(
            received, offset, done, count, fields, doubles, tag, replies.values, replies.slow, replies.stamps
        )
    return replies


class RedisLayoutReader:
    """Fast reader of Feast's Redis layout: one pipelined HMGET per unique entity, one round trip.

    Returns exactly what `FeastSdkReader` returns (proved by tests/integration/test_online_reader.py):
    - an entity is found when its `_ts:<view>` field holds a timestamp whose seconds are not 0
      (Feast reports unknown entities with the zero timestamp);
    - values of kind double/float/int64/int32 become float64; empty, missing and other kinds are NaN;
    - the feature view's ttl is NOT applied: Feast 0.67's Redis online read returns stored values
      whatever their age (the ttl only bounds historical reads and materialization windows), and
      so does this reader. Keys expire only through the online store's `key_ttl_seconds`.

    Construction imports Feast (seconds) and checks the layout helpers once; `read` imports nothing.
    Thread-safe: each read takes its own connection from redis-py's pool. `read_quick` reads the same
    way on connections of a second pool whose every wait is bounded by `QUICK_TIMEOUT_S`, for the
    event loop's thread: handing a read to a worker thread and back costs ~150 µs of CPU whatever its
    size (one entity 248 against 89 µs read on the caller's thread, 40 entities 390 against 244 µs,
    100 entities 568 against 433 µs, real Redis). A quick read that times out turns quick reads off
    for `QUICK_PAUSE_S`.

    Args:
        settings: `redis_url` names the Redis database Feast writes to.
        client: The feature store whose repo config and registry are read.
        selection: What to read (the repo's default when None): the features of one or more views
            of one entity with one join key (their values share one Redis hash per entity).

    Raises:
        FeatureStoreError: when the repo config is unusable or `layout_unreadable` says why this
            reader cannot read the selection.
    """

    def __init__(
        self, settings: RigSettings, client: FeatureStoreClient, selection: FeatureSelection | None = None
    ) -> None:
        import redis
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _mmh3
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from google.protobuf.message import DecodeError
        from google.protobuf.timestamp_pb2 import Timestamp
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.settings = settings
        self.client = client
        self.selection = selection = selection or client.selection()
        reason = layout_unreadable(client, selection)
        if reason is not None:
            raise FeatureStoreError(
                f"RedisLayoutReader cannot read this selection: {reason}; use FeastSdkReader"
            )
        config = client.repo_config()
        [join_key] = selection.join_keys

        self.project: str = config.project
        self.feature_names: tuple[str, ...] = selection.columns
        self.entity_key_serialization_version: int = config.entity_key_serialization_version
        self.view_names: tuple[str, ...] = selection.views
        self.timestamp_fields: tuple[bytes, ...] = tuple(f"_ts:{view}".encode() for view in self.view_names)
        self.hash_fields: tuple[bytes, ...] = (
            *(_mmh3(ref) for ref in selection.refs),
            *self.timestamp_fields,
        )
        """Fields read from every hash: one per feature (selection order), then one timestamp per view."""

        project = self.project.encode()
        version = self.entity_key_serialization_version
        value_field = "string_val" if join_key.kind == "string" else f"{join_key.kind}_val"

        def feast_key(entity_id: str) -> bytes:
            # protobuf's stub types each field's keyword: this one (the join key's kind) is known at run time
            value = ValueProto(**{value_field: join_key.parse(entity_id)})  # type: ignore[arg-type]
            proto = EntityKeyProto(join_keys=[join_key.name], entity_values=[value])
            return serialize_entity_key(proto, entity_key_serialization_version=version) + project

        self._feast_key = feast_key
        self._key_head = self._template_head(feast_key, project) if join_key.kind == "string" else None
        self._value_proto = ValueProto
        self._timestamp = Timestamp
        self._decode_error = DecodeError
        double = ValueProto.DESCRIPTOR.fields_by_name.get("double_val")
        self._fast_doubles = (
            double is not None
            and double.number == 5
            and double.type == double.TYPE_DOUBLE
            and double.containing_oneof is not None
        )
        if not self._fast_doubles:
            log.warning("online_reader=redis_layout fast_doubles=off reason=value_proto_changed")
        # Decoded timestamp field -> found; snapshots share few timestamps, so this stays small.
        self._found_by_ts: dict[bytes | None, bool] = {None: False, b"": False}

        self._redis = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
        )
        self._quick_redis = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=QUICK_TIMEOUT_S,
            socket_timeout=QUICK_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # one try: a quick read that fails steps aside
        )
        self._quick_off_until = 0.0  # time.monotonic() before which quick reads answer None
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._command_tail = b"".join(b"$%d\r\n%s\r\n" % (len(field), field) for field in self.hash_fields)
        self._command_head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(self.hash_fields) + 2)

    # Keys -------------------------------------------------------------------------------------

    @staticmethod
    def _template_head(feast_key: Callable[[str], bytes], project: bytes) -> bytes | None:
        """The bytes before `<len><utf-8 id>` in Feast's key, when Feast's keys follow that template.

        Feast's string entity keys (version 3) are a fixed head (key count, join key, value type),
        the id's UTF-8 length as 4 little-endian bytes, the UTF-8 id, then the project. The head is
        taken from Feast's own `serialize_entity_key` and checked on probe ids; when the check
        fails (a Feast upgrade changed the encoding) every key is computed by Feast instead.
        """
        empty = feast_key("")
        head = empty[: len(empty) - len(project) - 4]
        for probe in _KEY_PROBES:
            raw = probe.encode()
            if feast_key(probe) != head + len(raw).to_bytes(4, "little") + raw + project:
                log.warning("online_reader=redis_layout key_template=off reason=feast_key_mismatch")
                return None
        return head

    def redis_key(self, entity_id: str) -> bytes:
        """Key of the entity's Redis hash, byte for byte as Feast writes it."""
        return self._keys([entity_id])[0]

    def _keys(self, entity_ids: Sequence[str]) -> list[bytes]:
        head = self._key_head
        if head is None:
            return [self._feast_key(entity_id) for entity_id in entity_ids]
        project = self.project.encode()
        try:
            raws = [str.encode(entity_id) for entity_id in entity_ids]
        except TypeError as error:
            raise TypeError(f"entity ids must be str: {error}") from error
        return [head + len(raw).to_bytes(4, "little") + raw + project for raw in raws]

    # Reading ----------------------------------------------------------------------------------

    def read(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures:
        return self._read(entity_ids, self._redis)

    def read_quick(
        self, entity_ids: Sequence[str], request_data: Mapping[str, Sequence[Any]] | None = None
    ) -> OnlineFeatures | None:
        if time.monotonic() < self._quick_off_until:
            return None
        try:
            return self._read(entity_ids, self._quick_redis)
        except FeatureStoreUnavailable as error:
            # `read` in a thread waits for Redis and says why it is away; this only steps aside.
            self._quick_off_until = time.monotonic() + QUICK_PAUSE_S
            log.info("quick feature reads off for %.0f s: %s", QUICK_PAUSE_S, error)
            return None

    def _read(self, entity_ids: Sequence[str], client: redis.Redis) -> OnlineFeatures:
        ids = entity_ids if isinstance(entity_ids, list) else list(entity_ids)
        unique = list(dict.fromkeys(ids))
        n_features = len(self.feature_names)
        if unique:
            replies = self._hmget(self._keys(unique), client)
            values, found = self._decode(replies, n_features)
        else:
            values, found = np.empty((n_features, 0)), np.zeros(0, dtype=bool)
        if len(unique) != len(ids):
            position = {entity_id: index for index, entity_id in enumerate(unique)}
            rows = np.fromiter((position[entity_id] for entity_id in ids), np.intp, len(ids))
            values, found = values[:, rows], found[rows]
        columns = dict(zip(self.feature_names, values, strict=True))
        return OnlineFeatures(columns=columns, found=found, feature_names=self.feature_names)

    def _hmget(self, keys: list[bytes], client: redis.Redis) -> Replies:
        """One HMGET of `hash_fields` per key, sent as one packed pipeline, read in one round trip.

        The commands are packed here (the field list is constant, so only the key varies) and sent
        on a connection of redis-py's pool, with that connection's retry policy, exactly like a
        non-transactional redis-py pipeline does. The replies are read off the connection's socket and
        parsed as they arrive (`_receive`), not one by one through redis-py's parser.
        """
        head, tail = self._command_head, self._command_tail
        packed = b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail) for key in keys])
        pool = client.connection_pool
        try:
            connection = pool.get_connection()
        except self._redis_errors as error:
            raise self._error(error) from error

        def round_trip() -> Replies:
            try:
                connection.send_packed_command([packed])
                return self._receive(connection, len(keys))
            except BaseException:
                # Replies may be left unread: never hand this connection back as it is.
                connection.disconnect()
                raise

        try:
            return connection.retry.call_with_retry(round_trip, lambda _error: connection.disconnect())
        except self._redis_errors as error:
            raise self._error(error) from error
        finally:
            pool.release(connection)

    def _receive(self, connection: Any, count: int) -> Replies:
        """The `count` replies of the HMGETs just sent on `connection`, read off its socket (its
        timeout applies to each read) and parsed as they arrive (`parse_replies`). Socket errors and
        error replies become redis-py's, as its parser raises them, so the connection's retry policy
        and `_error` treat them alike."""
        import redis

        socket = connection._sock

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    chunk = socket.recv(_RECEIVE_BYTES)
                except TimeoutError as error:
                    raise redis.TimeoutError("Timeout reading from socket") from error
                except OSError as error:
                    raise redis.ConnectionError(f"Error while reading from socket: {error.args}") from error
                if not chunk:
                    raise redis.ConnectionError("Connection closed by server.")
                yield chunk

        tag = _DOUBLE_TAG if self._fast_doubles else -1
        try:
            return parse_replies(chunks(), count, len(self.hash_fields), len(self.feature_names), tag)
        except _replies.ReplyError as error:
            message = str(error)
            if message.startswith("LOADING"):  # a restarting Redis reading its dump: waited for
                raise redis.BusyLoadingError(message) from error  # as redis-py's own parser raises it
            raise redis.ResponseError(message) from error
        except ValueError as error:  # not what Redis answers to HMGET: as redis-py's parser says it
            raise redis.InvalidResponse(f"Protocol error: {error}") from error

    def _error(self, error: BaseException) -> FeatureStoreError:
        import redis

        if isinstance(error, redis.ResponseError) and not transient_reply(error):
            return FeatureStoreError(
                f"online feature read: Redis at {masked_url(self.settings.redis_url)} refused HMGET "
                f"on project {self.project!r}: {error}"
            )
        return FeatureStoreUnavailable(
            f"online feature read: Redis not reachable at {masked_url(self.settings.redis_url)}; "
            f"run ops/redis/up ({type(error).__name__}: {error})"
        )

    def _decode(self, replies: Replies, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """(features x entities) float64 matrix and found flags from the parsed HMGET replies."""
        count = replies.count
        values = np.frombuffer(replies.values, np.float64).reshape(count, n_features)
        for row, column, raw in replies.slow:  # values that are not a Value holding only a double
            values[row, column] = self._slow_value(raw)
        values = np.ascontiguousarray(values.T)
        cache = self._found_by_ts
        views = len(self.timestamp_fields)
        found = np.zeros(count, dtype=bool)
        for view in range(views):  # found in any view of the entity
            found |= np.fromiter(
                (
                    # None (no timestamp) is always cached, so a miss is bytes
                    hit if (hit := cache.get(ts)) is not None else self._found(cast(bytes, ts))
                    for ts in replies.stamps[view::views]
                ),
                np.bool_,
                count,
            )
        return values, found

    def _slow_value(self, value: bytes) -> float:
        """Any stored value as a float (NaN when not numeric)."""
        try:
            proto = self._value_proto.FromString(value)
        except self._decode_error as error:
            raise FeatureStoreError(
                f"online feature read: corrupt feature value {value!r} ({error})"
            ) from error
        kind = proto.WhichOneof("val")
        if kind not in NUMERIC_KINDS:
            return float("nan")
        return float(getattr(proto, kind))

    def _found(self, ts: bytes) -> bool:
        """Whether a stored `_ts` field marks the entity found, decided exactly as Feast reports it.

        Feast turns the stored timestamp into a datetime and back, and an unknown entity comes out
        as the zero timestamp: found means the round-tripped seconds are not 0. Cached per value.
        """
        try:
            stored = self._timestamp.FromString(ts)
            moment = datetime.fromtimestamp(stored.seconds + stored.nanos / 1e9, tz=UTC)
        except (self._decode_error, ValueError, OverflowError, OSError) as error:
            raise FeatureStoreError(f"online feature read: corrupt timestamp {ts!r} ({error})") from error
        reported = self._timestamp()
        reported.FromDatetime(moment)
        found = reported.seconds != 0
        if len(self._found_by_ts) >= _TS_CACHE_LIMIT:
            self._found_by_ts = {None: False, b"": False}
        self._found_by_ts[ts] = found
        return found

    def close(self) -> None:
        """Close the reader's Redis connections."""
        self._redis.close()
        self._quick_redis.close()
