"""Feast wrapper: registers the feature repo, materializes it into Redis, and reads features.

`import feast` takes seconds, so it happens lazily, on the first call that needs the store.
The feature repo in `settings.feast_repo` is used as written, except two settings taken from the
rig's own: the Redis online store comes from `settings.redis_url`, and the registry file lives in
`settings.feast_data_dir`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import yaml

from rig.config import RigSettings
from rig.errors import ConfigError, FeatureStoreError, FeatureStoreUnavailable

if TYPE_CHECKING:
    from feast import Entity, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

DEFINITIONS_FILE = "features.py"
"""File of the feature repo that defines the Feast objects."""

ENTITY_FOUND = "entity_found"
"""Boolean column of `FeatureStoreClient.online`: False for entities the online store lacks."""

_NUMERIC_VALUES = frozenset({"double_val", "float_val", "int64_val", "int32_val"})


def redis_connection_string(redis_url: str) -> str:
    """Translate a `redis://` / `rediss://` URL into Feast's `host:port,db=0,...` connection string.

    Raises:
        ConfigError: for other schemes (e.g. unix sockets) or a URL without a host.
    """
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"redis_url must look like redis://host:port/db, got {redis_url!r}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"redis_url database must be a number, got {db!r} in {redis_url!r}")
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
    return ",".join(params)


def _load_definitions(path: Path) -> ModuleType:
    """Import the repo's definitions file by path (a fresh module each time)."""
    if not path.is_file():
        raise FeatureStoreError(f"Feast definitions not found at {path}")
    name = f"rig_feast_definitions_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FeatureStoreError(f"cannot import Feast definitions from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


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

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate Feast, Redis and file errors into FeatureStoreError."""
        import feast.errors
        import redis

        try:
            yield
        except FeatureStoreError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise FeatureStoreUnavailable(
                f"{action}: Redis not reachable at {self.settings.redis_url}; run ops/redis/up ({error})"
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
        # The registry is a SQLite database (Feast's `sql` registry) in the rig's data folder.
        registry = raw.get("registry") if isinstance(raw.get("registry"), dict) else {}
        raw["registry"] = {
            **registry,
            "registry_type": "sql",
            "path": f"sqlite:///{self.data_dir / 'registry.db'}",
        }
        raw["online_store"] = {
            **(raw.get("online_store") or {}),
            "type": "redis",
            "connection_string": redis_connection_string(self.settings.redis_url),
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

    @cached_property
    def definitions(self) -> tuple[list[Entity], list[FeatureView]]:
        """Entities and feature views defined in the repo's `features.py`."""
        from feast import Entity, FeatureView

        module = _load_definitions(self.repo_path / DEFINITIONS_FILE)
        objects = list(vars(module).values())
        entities = [item for item in objects if isinstance(item, Entity)]
        views = [item for item in objects if isinstance(item, FeatureView)]
        if not views:
            raise FeatureStoreError(f"no FeatureView defined in {self.repo_path / DEFINITIONS_FILE}")
        return entities, views

    @property
    def feature_view(self) -> FeatureView:
        """The (single) feature view the rig reads."""
        return self.definitions[1][0]

    @property
    def feature_names(self) -> list[str]:
        """Feature names of the feature view, in its schema order."""
        return [field.name for field in self.feature_view.features]

    @property
    def join_key(self) -> str:
        """Join key of the feature view's entity (`entity_id`).

        Read from the entity definition: a FeatureView's own `join_keys` stay empty until applied.
        """
        entities = {entity.name: entity for entity in self.definitions[0]}
        name = self.feature_view.entities[0]
        if name not in entities:
            raise FeatureStoreError(f"entity {name!r} of {self.feature_view.name} is not defined")
        return entities[name].join_key

    def feature_refs(self) -> list[str]:
        """`view:feature` references of every feature, for Feast reads."""
        return [f"{self.feature_view.name}:{name}" for name in self.feature_names]

    def apply(self) -> None:
        """Register the repo's entities and feature views (creates the registry when missing).

        Raises:
            FeatureStoreError: on an invalid definition or an unreachable online store.
        """
        entities, views = self.definitions
        with self._errors("feast apply"):
            self.store.apply([*entities, *views])

    def materialize(self, start: datetime, end: datetime, progress: bool = True) -> None:
        """Load the latest value per entity with timestamps in `[start, end]` into Redis.

        Args:
            start: Earliest snapshot time to consider.
            end: Latest snapshot time to consider.
            progress: Show Feast's progress bar and log lines.

        Raises:
            FeatureStoreError: when Redis is down, the offline Parquet is missing, or nothing is applied.
        """
        with self._errors("feast materialize"), _quiet(progress):
            self.store.materialize(start_date=start, end_date=end)

    def online(self, entity_ids: Sequence[str]) -> pd.DataFrame:
        """Latest features of entities from the online store, in one batched Feast call.

        Args:
            entity_ids: Entity ids; duplicates allowed.

        Returns:
            DataFrame in input order: the join key, every feature (float64; NaN when missing) and
            `entity_found` (False for entities the online store does not hold).

        Raises:
            FeatureStoreError: when Redis is down or the feature view is not registered.
        """
        ids = list(entity_ids)
        names = self.feature_names
        unique_ids = list(dict.fromkeys(ids))
        values = np.full((len(unique_ids), len(names)), np.nan)
        found = np.zeros(len(unique_ids), dtype=bool)
        if unique_ids:
            with self._errors("online feature read"):
                response = self.store.get_online_features(
                    features=self.feature_refs(), entity_rows={self.join_key: unique_ids}
                )
                self._decode(response, names, values, found)
        rows = pd.Index(unique_ids, dtype=object).get_indexer(ids)
        frame = pd.DataFrame(values[rows], columns=names)
        frame.insert(0, self.join_key, pd.Series(ids, dtype=object))
        frame[ENTITY_FOUND] = found[rows]
        return frame

    @staticmethod
    def _decode(response: Any, names: list[str], values: np.ndarray, found: np.ndarray) -> None:
        """Fill `values` (rows x features) and `found` from Feast's response protobuf.

        Feast 0.67's Redis store reports status PRESENT even for unknown entities, so a row counts
        as found when its event timestamp is set (it is the zero timestamp when nothing is stored).
        Stored NaNs come back as empty values, as do missing ones: both become NaN.
        """
        column = {name: index for index, name in enumerate(names)}
        response_names = response.proto.metadata.feature_names.val
        for name, result in zip(response_names, response.proto.results, strict=True):
            if name not in column:
                continue  # the join key
            kinds = (value.WhichOneof("val") for value in result.values)
            values[:, column[name]] = [
                getattr(value, kind) if kind in _NUMERIC_VALUES else np.nan
                for value, kind in zip(result.values, kinds, strict=True)
            ]
            found |= np.fromiter((ts.seconds != 0 for ts in result.event_timestamps), bool, len(found))

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time correct features for training rows, from the offline store.

        Args:
            entity_df: Rows with the join key and `event_timestamp`; other columns (e.g. `label`)
                are kept.

        Returns:
            `entity_df` in its order with every feature added (NaN when no snapshot within the
            feature view's ttl at or before the row's time).

        Raises:
            FeatureStoreError: when the offline Parquet is missing or the entity frame is invalid.
        """
        missing = {self.join_key, "event_timestamp"} - set(entity_df.columns)
        if missing:
            raise FeatureStoreError(f"entity_df lacks column(s) {sorted(missing)}")
        keys = [self.join_key, "event_timestamp"]
        # Feast keeps one row per (entity, time) and its file offline store drops rows whose entity
        # has snapshots but none within the ttl: ask for each distinct pair once, numbered, and
        # join the answers back so every input row survives (NaN features when nothing matched).
        group = entity_df.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
        rows = entity_df.reset_index(drop=True).assign(_rig_group=group)
        distinct = rows[[*keys, "_rig_group"]].drop_duplicates("_rig_group")
        with self._errors("historical feature read"):
            job = self.store.get_historical_features(entity_df=distinct, features=self.feature_refs())
            found = job.to_df()
        names = self.feature_names
        found = found[["_rig_group", *names]].astype(dict.fromkeys(names, np.float64))
        frame = rows.merge(found, on="_rig_group", how="left", validate="many_to_one")
        return frame.drop(columns="_rig_group")

    def teardown(self) -> None:
        """Delete this project's online rows from Redis and its objects from the registry."""
        with self._errors("feast teardown"):
            self.store.teardown()
