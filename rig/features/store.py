"""Feast wrapper: registers the feature repo, materializes it into Redis, and reads features.

`import feast` takes seconds, so it happens lazily, on the first call that needs the store.
The feature repo in `settings.feast_repo` is used as written, except two settings taken from the
rig's own: the Redis online store comes from `settings.redis_url`, and the registry file lives in
`settings.feast_data_dir`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import yaml

from rig.config import RigSettings, masked_url
from rig.errors import ConfigError, FeatureStoreError, FeatureStoreUnavailable, transient_reply
from rig.features.selection import SERVED_TYPES, FeatureSelection, full_name, resolve

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

REGISTRY_FILE = "rig_registry.db"
"""The rig's Feast registry (a SQLite `sql` registry) in the repo's data folder."""

ENTITY_FOUND = "entity_found"
"""Boolean column of `FeatureStoreClient.online`: False for entities the online store lacks."""

_NUMERIC_VALUES = frozenset({"double_val", "float_val", "int64_val", "int32_val"})


def redis_connection_string(redis_url: str, timeout_s: float | None = None) -> str:
    """Translate a `redis://` / `rediss://` URL into Feast's `host:port,db=0,...` connection string;
    `timeout_s` bounds connecting and every reply (Feast's client waits for ever by default, and a
    Redis that hangs would hold a read, and the batch, with nothing said).

    Raises:
        ConfigError: for other schemes (e.g. unix sockets) or a URL without a host.
    """
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"redis_url must look like redis://host:port/db, got {masked_url(redis_url)!r}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"redis_url database must be a number, got {db!r} in {masked_url(redis_url)!r}")
    params = [f"{parts.hostname}:{parts.port or 6379}", f"db={db}"]
    if parts.username:
        params.append(f"username={unquote(parts.username)}")
    if parts.password:
        password = unquote(parts.password)
        if "," in password:
            raise ConfigError("Feast's Redis connection string cannot carry a password with a comma")
        params.append(f"password={password}")
    if parts.scheme == "rediss":
        params.append("ssl=true")
    if timeout_s is not None:
        params += [f"socket_timeout={timeout_s}", f"socket_connect_timeout={timeout_s}"]
    return ",".join(params)


def _decode(response: Any, selection: FeatureSelection) -> tuple[dict[str, Any], np.ndarray]:
    """Columns and found flags from Feast's response protobuf.

    Feast 0.67's Redis store reports status PRESENT even for unknown entities, so an entity counts
    as found when one of its stored views has an event timestamp (the zero timestamp when nothing
    is stored); on-demand features carry no stored timestamp and do not count. Numbers become
    float64 (stored NaNs and missing values alike become NaN); strings stay strings.
    """
    # Feast names each answer by the feature (or, with full names, `view__feature`).
    wanted = {
        (full_name(ref) if selection.full_names else ref.split(":", 1)[1]): (column, feast_type, ref)
        for ref, column, feast_type in zip(selection.refs, selection.columns, selection.types, strict=True)
    }
    names = response.proto.metadata.feature_names.val
    found: np.ndarray | None = None
    columns: dict[str, Any] = {}
    for answered, result in zip(names, response.proto.results, strict=True):
        if answered not in wanted:
            continue  # a join key or request field
        column, feast_type, ref = wanted[answered]
        kinds = [value.WhichOneof("val") for value in result.values]
        if feast_type in SERVED_TYPES:
            numbers = [
                float(getattr(value, kind)) if kind in _NUMERIC_VALUES else np.nan
                for value, kind in zip(result.values, kinds, strict=True)
            ]
            columns[column] = np.array(numbers, dtype=np.float64)
        else:
            texts = [
                getattr(value, kind) if kind else None
                for value, kind in zip(result.values, kinds, strict=True)
            ]
            columns[column] = np.array(texts, dtype=object)
        if ref.split(":", 1)[0] not in selection.on_demand:
            present = np.fromiter((ts.seconds != 0 for ts in result.event_timestamps), bool, len(kinds))
            found = present if found is None else found | present
    n = len(next(iter(columns.values()))) if columns else 0
    return {column: columns[column] for column in selection.columns}, (
        found if found is not None else np.ones(n, dtype=bool)
    )


@contextlib.contextmanager
def _inside(repo: Path) -> Iterator[None]:
    """Run in the repo's folder with it on the import path, as `feast apply` does; restored after."""
    previous = os.getcwd()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(previous)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Feast's prints and tqdm bars unless `enabled`."""
    if enabled:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


class FeatureStoreClient:
    """One Feast feature store for the rig's settings: apply, materialize, online and historical reads.

    Every Feast or Redis failure surfaces as `FeatureStoreError` with what to do about it.
    """

    def __init__(self, settings: RigSettings) -> None:
        self.settings = settings
        self.repo_path = settings.feast_repo.resolve()
        self.data_dir = settings.feast_data_dir.resolve()
        self._selections: dict[tuple[str | None, tuple[str, ...] | None], FeatureSelection] = {}

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate Feast, Redis and file errors into FeatureStoreError."""
        import feast.errors
        import redis

        try:
            yield
        except FeatureStoreError:
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
            if isinstance(error, redis.ResponseError) and not transient_reply(error):
                raise FeatureStoreError(f"{action} failed: {type(error).__name__}: {error}") from error
            raise FeatureStoreUnavailable(
                f"{action}: Redis not reachable at {masked_url(self.settings.redis_url)}; "
                f"run ops/redis/up ({error})"
            ) from error
        except (feast.errors.FeatureViewNotFoundException, feast.errors.EntityNotFoundException) as error:
            raise FeatureStoreError(
                f"{action}: feature definitions are not registered in {self.data_dir}; "
                f"run `rig features apply` ({error})"
            ) from error
        except FileNotFoundError as error:
            raise FeatureStoreError(
                f"{action}: file missing ({error}); the offline store of {self.repo_path} must exist first"
            ) from error
        except (feast.errors.FeastError, redis.RedisError, OSError, ValueError, KeyError) as error:
            raise FeatureStoreError(f"{action} failed: {type(error).__name__}: {error}") from error

    def repo_config(self) -> RepoConfig:
        """The Feast `RepoConfig`: `feature_store.yaml` with the rig's Redis URL and registry path.

        Raises:
            FeatureStoreError: when `feature_store.yaml` is missing or invalid.
        """
        from feast.repo_config import RepoConfig

        yaml_path = self.repo_path / "feature_store.yaml"
        try:
            raw = yaml.safe_load(yaml_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise FeatureStoreError(f"cannot read Feast repo config {yaml_path}: {error}") from error
        # The registry is a SQLite database (Feast's `sql` registry) in the repo's data folder, under a
        # name of its own: a repo's own `feast apply` keeps its file registry (data/registry.db) apart.
        registry = given if isinstance(given := raw.get("registry"), dict) else {}
        raw["registry"] = {
            **registry,
            "registry_type": "sql",
            "path": f"sqlite:///{self.data_dir / REGISTRY_FILE}",
        }
        # The online store is the rig's Redis whatever the repo names (e.g. `feast init`'s SQLite);
        # a repo's own Redis options (key_ttl_seconds, ...) are kept.
        online = given if isinstance(given := raw.get("online_store"), dict) else {}
        kept = online if online.get("type") == "redis" else {}
        raw["online_store"] = {
            **kept,
            "type": "redis",
            "connection_string": redis_connection_string(
                self.settings.redis_url, self.settings.redis_timeout_s
            ),
        }
        try:
            config = RepoConfig(**raw)
        except ValueError as error:
            raise FeatureStoreError(f"invalid Feast repo config {yaml_path}: {error}") from error
        config.repo_path = self.repo_path
        return config

    @cached_property
    def store(self) -> FeatureStore:
        """The underlying `feast.FeatureStore` (built on first use; imports feast)."""
        from feast import FeatureStore

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._errors("opening the Feast feature store"):
            return FeatureStore(repo_path=str(self.repo_path), config=self.repo_config())

    def selection(self, service: str | None = None, refs: Sequence[str] | None = None) -> FeatureSelection:
        """The features a model reads: a feature service, explicit `view:feature` refs, or the repo's
        default (see `rig.features.selection.resolve`), resolved against the applied registry.

        Raises:
            FeatureStoreError: an unknown service, view or feature, or the repo is not applied.
        """
        key = (service, tuple(refs) if refs else None)
        if key not in self._selections:
            with self._errors("reading the Feast registry"):
                self._selections[key] = resolve(self.store, service, refs)
        return self._selections[key]

    @property
    def feature_names(self) -> list[str]:
        """Raw feature columns of the repo's default selection, in order."""
        return list(self.selection().columns)

    @property
    def join_key(self) -> str:
        """The single join key of the repo's default selection.

        Raises:
            FeatureStoreError: its entity has several join keys (use `selection().join_keys`).
        """
        keys = self.selection().join_keys
        if len(keys) != 1:
            raise FeatureStoreError(f"the entity has several join keys {[k.name for k in keys]}")
        return keys[0].name

    def apply(self) -> None:
        """Register every object the repo defines, the way `feast apply` does (it imports every
        Python file of the repo), with the rig's Redis and registry.

        Raises:
            FeatureStoreError: on an invalid definition or an unreachable online store.
        """
        from feast.repo_operations import apply_total_with_repo_instance, parse_repo

        with self._errors("feast apply"):
            with _inside(self.repo_path):
                repo = parse_repo(self.repo_path)
            store = self.store
            with _quiet(False):
                apply_total_with_repo_instance(
                    store, store.project, store.registry, repo, skip_source_validation=False
                )
        self._selections.clear()

    def materialize(self, start: datetime, end: datetime, progress: bool = True) -> None:
        """Load the latest value per entity with timestamps in `[start, end]` into Redis.

        Args:
            start: Earliest snapshot time to consider.
            end: Latest snapshot time to consider.
            progress: Show Feast's progress bar and log lines.

        Raises:
            FeatureStoreError: when Redis is down, the offline store is missing, or nothing is applied.
        """
        with self._errors("feast materialize"), _quiet(progress):
            self.store.materialize(start_date=start, end_date=end)

    def online(
        self,
        entity_ids: Sequence[str],
        selection: FeatureSelection | None = None,
        request_data: Mapping[str, Sequence[Any]] | None = None,
    ) -> pd.DataFrame:
        """Latest features of entities from the online store, in one batched Feast call (on-demand
        views computed by Feast, from `request_data` for their request-time fields).

        Args:
            entity_ids: Entity ids (`rig.wire.requests`); duplicates allowed.
            selection: What to read; the repo's default when None.
            request_data: Request-time field → one value per entity id.

        Returns:
            DataFrame in input order: the join keys, one column per selected feature (float64 for
            numbers, NaN when missing; as stored for a String), and `entity_found` (False for entities
            the online store does not hold in any view of the selection).

        Raises:
            FeatureStoreError: when Redis is down or the selection is not registered.
        """
        selection = selection or self.selection()
        ids = list(entity_ids)
        names = list(selection.columns)
        if not ids:
            return pd.DataFrame({**{name: pd.Series(dtype=np.float64) for name in names}, ENTITY_FOUND: []})
        try:
            rows = selection.key_spec.rows(ids)
        except ValueError as error:
            raise FeatureStoreError(f"online feature read: {error}") from error
        for name, kind in zip(selection.request_fields, selection.request_types, strict=True):
            values = list((request_data or {}).get(name, [None] * len(ids)))
            if kind in ("Int64", "Int32"):  # request features travel as doubles
                values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
            rows[name] = values
        entity_rows = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
        with self._errors("online feature read"):
            response = self.store.get_online_features(
                features=list(selection.refs),
                entity_rows=entity_rows,
                full_feature_names=selection.full_names,
            )
            columns, found = _decode(response, selection)
        frame = pd.DataFrame(
            {**{key: pd.Series(values, dtype=object) for key, values in rows.items()}, **columns}
        )
        frame = frame.drop(columns=list(selection.request_fields))
        frame[ENTITY_FOUND] = found
        return frame

    def historical(self, entity_df: pd.DataFrame, selection: FeatureSelection | None = None) -> pd.DataFrame:
        """Point-in-time correct features for training rows, from the offline store.

        Args:
            entity_df: Rows with the entity's join keys and `event_timestamp` (and the request-time
                fields of on-demand views); other columns (e.g. `label`) are kept.
            selection: What to read; the repo's default when None.

        Returns:
            `entity_df` in its order with every selected feature added (NaN when no snapshot within
            the feature view's ttl at or before the row's time).

        Raises:
            FeatureStoreError: when the offline store is missing or the entity frame is invalid.
        """
        selection = selection or self.selection()
        keys = [*selection.key_spec.names, "event_timestamp"]
        missing = set(keys) - set(entity_df.columns)
        if missing:
            raise FeatureStoreError(f"entity_df lacks column(s) {sorted(missing)}")
        # Feast keeps one row per (entity, time) and its file offline store drops rows whose entity
        # has snapshots but none within the ttl: ask for each distinct pair once, numbered, and
        # join the answers back so every input row survives (NaN features when nothing matched).
        group = entity_df.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
        rows = entity_df.reset_index(drop=True).assign(_rig_group=group)
        distinct = rows[[*keys, *selection.request_fields, "_rig_group"]].drop_duplicates("_rig_group")
        with self._errors("historical feature read"):
            job = self.store.get_historical_features(
                entity_df=distinct, features=list(selection.refs), full_feature_names=selection.full_names
            )
            found = job.to_df()
        if selection.full_names:
            found = found.rename(
                columns={
                    full_name(ref): column
                    for ref, column in zip(selection.refs, selection.columns, strict=True)
                }
            )
        names = list(selection.columns)
        numeric = [name for name, kind in zip(names, selection.types, strict=True) if kind in SERVED_TYPES]
        found = found[["_rig_group", *names]].astype(dict.fromkeys(numeric, np.float64))
        frame = rows.merge(found, on="_rig_group", how="left", validate="many_to_one")
        return frame.drop(columns="_rig_group")

    def push(self, source: str, frame: pd.DataFrame) -> None:
        """Push fresh feature rows to a push source (online and offline), as Feast's `push` does.

        Raises:
            FeatureStoreError: unknown push source, rows that do not fit it, or Redis away.
        """
        from feast.data_source import PushMode

        with self._errors(f"push to {source}"):
            self.store.push(source, frame, to=PushMode.ONLINE_AND_OFFLINE)

    def teardown(self) -> None:
        """Delete this project's online rows from Redis and its objects from the registry."""
        with self._errors("feast teardown"):
            self.store.teardown()
