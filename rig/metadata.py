"""Metadata store: models, routing history, decisions, rolling metrics and feature statistics.

One SQLAlchemy Core schema that behaves the same on SQLite (the default: a file under `home`) and on
PostgreSQL (`RIG_METADATA_URL=postgresql+psycopg://...`; `ops/postgres/up` starts one). No dialect-
specific SQL: JSON columns are `sqlalchemy.JSON`, instants are int milliseconds since the epoch, and
idempotent writes are plain INSERTs whose primary-key conflict is caught (no `ON CONFLICT`).

Write semantics:
    record_model          once per version; the same version with another checksum is refused.
    record_control        append-only log of ControlEvent records; a redelivered event_id is ignored.
    record_decision       Decision records, once per decision_id (at-least-once delivery is safe).
    record_model_metrics, record_feature_stats, record_label_delays
                          one entry per window; recording a window again replaces it (late labels,
                          redelivery). Several writers of one window must merge first or use their
                          own scope (e.g. `serving:worker-1`).

`FeatureStats` is the pure part: per feature, counts, missing rate, mean/std and a histogram over bin
edges taken from the training (reference) distribution. Histograms on the same edges merge by
addition, so windows and workers combine exactly, and PSI compares serving data with the reference
on those same bins.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from fastavro.validation import ValidationError, validate
from sqlalchemy import exc as sa_exc

from rig.codec import load_schema
from rig.errors import MetadataError
from rig.registry import ModelMeta

DEFAULT_BINS = 10
PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI, so that an empty bin gives a large but finite term."""
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Quantile levels written by `FeatureStats.to_dict`."""
_EXPERIMENT_STATUS = {
    "start_experiment": "running",
    "stop_experiment": "stopped",
    "kill_experiment": "killed",
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_schema = sa.MetaData()
_version = sa.String(200)
MODELS = sa.Table(
    "models", _schema,
    sa.Column("version", _version, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("transform_version", _version, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("training", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(64), nullable=False),
)  # fmt: skip
MODEL_METRICS = sa.Table(
    "model_metrics", _schema,
    sa.Column("model_version", _version, primary_key=True),
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("mean_loss", sa.Double),
    sa.Column("auc", sa.Double),
    sa.Column("mean_score", sa.Double),
    sa.Column("positive_rate", sa.Double),
)  # fmt: skip
FEATURE_STATS = sa.Table(
    "feature_stats", _schema,
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
LABEL_DELAYS = sa.Table(
    "label_delays", _schema,
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("quantiles_ms", sa.JSON, nullable=False),
)  # fmt: skip
_AVRO_SQL: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "long": sa.BigInteger,
    "int": sa.Integer,
    "double": sa.Double,
    "float": sa.Double,
    "boolean": sa.Boolean,
    "string": sa.String,
    "enum": sa.String,
}


def _record_table(name: str, schema_name: str, key: str, indexed: Sequence[str]) -> sa.Table:
    """A table with one column per field of schemas/<schema_name>.avsc: its rows are the records."""
    columns = []
    for field in load_schema(schema_name)["fields"]:
        kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
        kind = next(kind for kind in kinds if kind != "null")
        sql_type = _AVRO_SQL[kind["type"] if isinstance(kind, dict) else kind]
        column = field["name"]
        columns.append(
            sa.Column(
                column,
                sql_type(),
                primary_key=column == key,
                nullable="null" in kinds,
                index=column in indexed,
            )
        )
    return sa.Table(name, _schema, *columns)


CONTROL_EVENTS = _record_table("control_events", "ControlEvent", "event_id", ("issued_at", "experiment"))
DECISIONS = _record_table("decisions", "Decision", "decision_id", ("decided_at", "golden_version"))


@dataclass(frozen=True)
class ModelMetrics:
    """Quality of one model version over one window of joined outcomes."""

    model_version: str
    window_end_ms: int
    n: int
    mean_loss: float | None
    auc: float | None
    mean_score: float | None
    positive_rate: float | None


@dataclass(frozen=True)
class Experiment:
    """An experiment as the routing history tells it: its latest start and how it ended, if it did."""

    name: str
    model_version: str | None
    mode: str | None
    traffic_share: float | None
    traffic_cap_rps: float | None
    status: str  # running | stopped | killed
    started_at_ms: int | None
    ended_at_ms: int | None


@dataclass(frozen=True)
class LabelDelays:
    """Quantiles of the delay between a prediction and its outcome, over one window."""

    window_end_ms: int
    n: int
    quantiles_ms: dict[float, float]


@dataclass(frozen=True)
class FeatureStatsWindow:
    """Feature statistics of one scope (a model version or `serving`) over one window."""

    scope: str
    window_end_ms: int
    stats: FeatureStats


@dataclass
class _Sketch:
    """One feature: counts per bin (index 0 = missing, then one bin per interval between edges)."""

    edges: FloatArray
    reference: IntArray
    counts: IntArray
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    @property
    def n(self) -> int:
        return int(self.counts[1:].sum())

    def add(self, values: FloatArray) -> None:
        finite = values[np.isfinite(values)]
        self.counts[0] += values.size - finite.size
        if finite.size == 0:
            return
        n_before, batch_mean = self.n, float(finite.mean())
        bins = np.searchsorted(self.edges, finite, side="right")
        self.counts[1:] += np.bincount(bins, minlength=self.edges.size + 1)
        batch_m2 = float(np.square(finite - batch_mean).sum())
        self.mean, self.m2 = _moments(n_before, self.mean, self.m2, finite.size, batch_mean, batch_m2)
        self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))

    def merged(self, other: _Sketch) -> _Sketch:
        if not (np.array_equal(self.edges, other.edges) and np.array_equal(self.reference, other.reference)):
            raise MetadataError("feature statistics on different bins or references cannot be merged")
        mean, m2 = _moments(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        low, high = min(self.low, other.low), max(self.high, other.high)
        return _Sketch(self.edges, self.reference, self.counts + other.counts, mean, m2, low, high)

    def psi(self) -> float:
        if self.counts.sum() == 0 or self.reference.sum() == 0:
            return math.nan
        expected = np.maximum(self.reference / self.reference.sum(), PSI_EPSILON)
        actual = np.maximum(self.counts / self.counts.sum(), PSI_EPSILON)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def quantiles(self, levels: Sequence[float]) -> FloatArray:
        """Quantiles read off the histogram, interpolated linearly inside a bin (exact to one bin)."""
        hist = self.counts[1:]
        if self.n == 0:
            return np.full(len(levels), math.nan)
        bounds = np.clip(np.concatenate(([self.low], self.edges, [self.high])), self.low, self.high)
        cumulative = np.cumsum(hist)
        target = np.clip(np.asarray(levels, dtype=float), 0.0, 1.0) * self.n
        index = np.minimum(np.searchsorted(cumulative, target, side="left"), hist.size - 1)
        inside = (target - (cumulative[index] - hist[index])) / np.maximum(hist[index], 1)
        left, right = bounds[index], bounds[index + 1]
        return left + np.clip(inside, 0.0, 1.0) * (right - left)

    def to_dict(self) -> dict[str, Any]:
        n, missing = self.n, int(self.counts[0])
        return {
            "edges": self.edges.tolist(),
            "reference": self.reference.tolist(),
            "counts": self.counts.tolist(),
            "n": n,
            "missing": missing,
            "missing_rate": _json_float(missing / (n + missing) if n + missing else math.nan),
            "mean": _json_float(self.mean if n else math.nan),
            "std": _json_float(math.sqrt(self.m2 / n) if n else math.nan),
            "m2": self.m2,
            "min": _json_float(self.low),
            "max": _json_float(self.high),
            "psi": _json_float(self.psi()),
            "quantiles": dict(
                zip(map(str, QUANTILES), map(_json_float, self.quantiles(QUANTILES)), strict=True)
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Sketch:
        edges = np.asarray(data["edges"], dtype=np.float64)
        reference, counts = (np.asarray(data[key], dtype=np.int64) for key in ("reference", "counts"))
        if counts.size != edges.size + 2 or reference.size != counts.size:
            raise MetadataError("feature sketch has counts that do not fit its bin edges")
        mean, low, high = (data[key] for key in ("mean", "min", "max"))
        return cls(
            edges,
            reference,
            counts,
            mean=0.0 if mean is None else float(mean),
            m2=float(data["m2"]),
            low=math.inf if low is None else float(low),
            high=-math.inf if high is None else float(high),
        )


class FeatureStats:
    """Mergeable statistics of numeric features, with PSI drift against a reference distribution.

    Build one with `from_reference` (training data) or `from_dict` (stored); feed serving batches
    with `update`. Missing means NaN, None or ±inf; it counts in its own PSI bin.
    """

    def __init__(self, sketches: Mapping[str, _Sketch]) -> None:
        self._sketches = dict(sketches)

    @classmethod
    def from_reference(cls, frame: pd.DataFrame, bins: int = DEFAULT_BINS) -> FeatureStats:
        """Statistics with bin edges at the reference's quantiles and no serving data yet.

        Args:
            frame: Reference (training) rows; numeric and boolean columns are tracked, others ignored.
            bins: Number of equal-frequency bins wanted; ties (discrete features) give fewer.
        """
        if bins < 1:
            raise MetadataError("feature statistics need at least one bin")
        sketches = {}
        for name in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[name]):
                continue
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[np.isfinite(values)]
            levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
            edges = np.unique(np.quantile(finite, levels)) if finite.size else np.empty(0)
            probe = _Sketch(edges, np.zeros(edges.size + 2, np.int64), np.zeros(edges.size + 2, np.int64))
            probe.add(values)
            sketches[str(name)] = _Sketch(edges, probe.counts, np.zeros_like(probe.counts))
        return cls(sketches)

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> FeatureStats:
        """Statistics as `to_dict` gave them (derived fields are recomputed, not read)."""
        try:
            return cls({name: _Sketch.from_dict(sketch) for name, sketch in data.items()})
        except (KeyError, TypeError, ValueError) as error:
            raise MetadataError(f"unreadable feature statistics: {error!r}") from error

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._sketches)

    def update(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        """Add one batch of serving rows; a tracked feature absent from `columns` is missing in all.

        Raises:
            MetadataError: columns of different lengths, or a tracked column that is not numeric.
        """
        lengths = {int(np.size(column)) for column in columns.values()}
        if len(lengths) > 1:
            raise MetadataError(f"feature columns have different lengths: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0
        for name, sketch in self._sketches.items():
            if name not in columns:
                sketch.counts[0] += rows
                continue
            try:
                values = np.asarray(columns[name], dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise MetadataError(f"feature {name!r} is not numeric: {error}") from error
            sketch.add(values.reshape(-1))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of both inputs' data together; both must come from the same reference."""
        if set(self._sketches) != set(other._sketches):
            raise MetadataError("feature statistics of different feature sets cannot be merged")
        return FeatureStats({name: s.merged(other._sketches[name]) for name, s in self._sketches.items()})

    def empty(self) -> FeatureStats:
        """Same reference and bins, no serving data: the start of the next window."""
        return FeatureStats(
            {
                name: _Sketch(s.edges, s.reference, np.zeros_like(s.counts))
                for name, s in self._sketches.items()
            }
        )

    def psi(self) -> dict[str, float]:
        """Population stability index per feature (NaN before any data); > 0.25 is a large shift."""
        return {name: sketch.psi() for name, sketch in self._sketches.items()}

    def quantiles(self, levels: Sequence[float] = QUANTILES) -> dict[str, list[float]]:
        """Approximate quantiles per feature, exact to within one bin."""
        return {name: sketch.quantiles(levels).tolist() for name, sketch in self._sketches.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready statistics per feature (NaN and ±inf written as None)."""
        return {name: sketch.to_dict() for name, sketch in self._sketches.items()}


class MetadataStore:
    """The rig's metadata tables behind one SQLAlchemy URL (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        """Raises: MetadataError: the URL is malformed or names a driver that is not installed."""
        try:
            self._url = sa.make_url(url)
            postgres = self._url.get_backend_name() == "postgresql"
            connect_args = {"connect_timeout": 5} if postgres else {}
            self._engine = sa.create_engine(
                self._url,
                pool_pre_ping=True,
                connect_args=connect_args,
                json_serializer=functools.partial(json.dumps, allow_nan=False),  # as strict as PostgreSQL
            )
        except (sa_exc.ArgumentError, ImportError) as error:
            raise MetadataError(f"bad metadata store URL {url!r}: {error}") from error

    @property
    def url(self) -> str:
        """The URL with its password hidden."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    def create_schema(self) -> None:
        """Create the tables that do not exist yet (and a SQLite file's folder); safe to repeat."""
        database = self._url.database
        if self._url.get_backend_name() == "sqlite" and database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2, 3):  # a concurrent creator makes create_all fail; a re-check sees its tables
            try:
                with self._begin() as connection:
                    _schema.create_all(connection)
                return
            except (MetadataError, sa_exc.IntegrityError) as error:
                if attempt == 3:
                    raise MetadataError(f"cannot create the metadata schema: {error}") from error

    def record_model(self, meta: ModelMeta) -> bool:
        """Record a stored model version; False when it was already recorded.

        Raises:
            MetadataError: the version is recorded with another checksum, or holds NaN or ±inf.
        """
        row = {**asdict(meta), "features": list(meta.features)}
        try:
            json.dumps(row, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise MetadataError(f"model {meta.version} holds a value JSON cannot store: {error}") from error
        if self._insert_once(MODELS, row, MODELS.c.version == meta.version):
            return True
        with self._begin() as connection:
            recorded = connection.scalar(sa.select(MODELS.c.sha256).where(MODELS.c.version == meta.version))
        if recorded != meta.sha256:
            raise MetadataError(f"model {meta.version} is already recorded with checksum {recorded}")
        return False

    def models(self) -> list[ModelMeta]:
        """Every recorded model version, oldest first."""
        query = sa.select(MODELS).order_by(MODELS.c.created_at, MODELS.c.version)
        with self._begin() as connection:
            rows = connection.execute(query).mappings().all()
        return [ModelMeta(**{**row, "features": tuple(row["features"])}) for row in rows]

    def record_control(self, event: Mapping[str, Any]) -> bool:
        """Append a ControlEvent record to the routing history; False for a redelivered event_id."""
        row = _checked_record("ControlEvent", event)
        return self._insert_once(CONTROL_EVENTS, row, CONTROL_EVENTS.c.event_id == row["event_id"])

    def routing_history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest `limit` ControlEvent records, newest first."""
        order = (CONTROL_EVENTS.c.issued_at.desc(), CONTROL_EVENTS.c.event_id.desc())
        return self._records(sa.select(CONTROL_EVENTS).order_by(*order).limit(limit))

    def experiments(self) -> list[Experiment]:
        """Every experiment named in the routing history, folded from its events, by name."""
        query = (
            sa.select(CONTROL_EVENTS)
            .where(CONTROL_EVENTS.c.experiment.is_not(None))
            .order_by(CONTROL_EVENTS.c.issued_at, CONTROL_EVENTS.c.event_id)
        )
        found: dict[str, Experiment] = {}
        for event in self._records(query):
            name, kind, at = event["experiment"], event["kind"], event["issued_at"]
            status = _EXPERIMENT_STATUS.get(kind)
            if status is None:
                continue
            if kind != "start_experiment" and name in found:  # ends the latest start
                found[name] = replace(found[name], status=status, ended_at_ms=at)
                continue
            started = kind == "start_experiment"
            found[name] = Experiment(
                name=name,
                model_version=event["model_version"],
                mode=event["mode"],
                traffic_share=event["traffic_share"],
                traffic_cap_rps=event["traffic_cap_rps"],
                status=status,
                started_at_ms=at if started else None,
                ended_at_ms=None if started else at,
            )
        return [found[name] for name in sorted(found)]

    def record_decision(self, decision: Mapping[str, Any]) -> bool:
        """Record a Decision record with its evidence; False when its decision_id is already recorded.

        Raises:
            MetadataError: the record does not fit schemas/Decision.avsc (or holds NaN).
        """
        row = _checked_record("Decision", decision)
        return self._insert_once(DECISIONS, row, DECISIONS.c.decision_id == row["decision_id"])

    def decisions(self, limit: int = 100, golden: str | None = None) -> list[dict[str, Any]]:
        """The latest `limit` Decision records, newest first; only those about golden `golden` if given."""
        query = sa.select(DECISIONS).order_by(DECISIONS.c.decided_at.desc(), DECISIONS.c.decision_id.desc())
        if golden is not None:
            query = query.where(DECISIONS.c.golden_version == golden)
        return self._records(query.limit(limit))

    def record_model_metrics(
        self,
        model_version: str,
        window_end_ms: int,
        n: int,
        mean_loss: float | None,
        auc: float | None,
        mean_score: float | None,
        positive_rate: float | None,
    ) -> None:
        """Record (or replace) one model's quality over the window ending at `window_end_ms`."""
        values = {
            "mean_loss": mean_loss,
            "auc": auc,
            "mean_score": mean_score,
            "positive_rate": positive_rate,
        }
        row = {key: _json_float(value) for key, value in values.items()}
        row |= {"model_version": model_version, "window_end_ms": int(window_end_ms), "n": int(n)}
        where = (
            MODEL_METRICS.c.model_version == model_version,
            MODEL_METRICS.c.window_end_ms == window_end_ms,
        )
        self._replace(MODEL_METRICS, where, [row])

    def model_metrics(self, model_version: str, limit: int | None = None) -> list[ModelMetrics]:
        """The latest `limit` (default all) windows of one model version, oldest first."""
        query = sa.select(MODEL_METRICS).where(MODEL_METRICS.c.model_version == model_version)
        query = query.order_by(MODEL_METRICS.c.window_end_ms.desc()).limit(limit)
        return [ModelMetrics(**row) for row in reversed(self._records(query))]

    def record_feature_stats(self, scope: str, window_end_ms: int, stats: FeatureStats) -> None:
        """Record (or replace) the feature statistics of `scope` (a model version or `serving`)."""
        key = {"scope": scope, "window_end_ms": int(window_end_ms)}
        summary = ("n", "missing", "mean", "std", "psi")
        rows = [
            {**key, "feature": feature, "sketch": sketch, **{name: sketch[name] for name in summary}}
            for feature, sketch in stats.to_dict().items()
        ]
        where = (FEATURE_STATS.c.scope == scope, FEATURE_STATS.c.window_end_ms == window_end_ms)
        self._replace(FEATURE_STATS, where, rows)

    def feature_stats(self, scope: str, limit: int | None = None) -> list[FeatureStatsWindow]:
        """The latest `limit` (default all) windows of `scope`, oldest first."""
        table = FEATURE_STATS
        windows = sa.select(table.c.window_end_ms).where(table.c.scope == scope).distinct()
        windows = windows.order_by(table.c.window_end_ms.desc()).limit(limit)
        query = sa.select(table.c.window_end_ms, table.c.feature, table.c.sketch).where(
            table.c.scope == scope, table.c.window_end_ms.in_(windows.scalar_subquery())
        )
        grouped: dict[int, dict[str, Any]] = {}
        for row in self._records(query.order_by(table.c.window_end_ms, table.c.feature)):
            grouped.setdefault(row["window_end_ms"], {})[row["feature"]] = row["sketch"]
        return [FeatureStatsWindow(scope, end, FeatureStats.from_dict(data)) for end, data in grouped.items()]

    def record_label_delays(self, window_end_ms: int, n: int, quantiles_ms: Mapping[float, float]) -> None:
        """Record (or replace) label delay quantiles (level in 0..1 -> delay in ms) over one window."""
        quantiles = {str(float(level)): _json_float(delay) for level, delay in quantiles_ms.items()}
        row = {"window_end_ms": int(window_end_ms), "n": int(n), "quantiles_ms": quantiles}
        self._replace(LABEL_DELAYS, (LABEL_DELAYS.c.window_end_ms == window_end_ms,), [row])

    def label_delays(self, limit: int | None = None) -> list[LabelDelays]:
        """The latest `limit` (default all) windows of label delays, oldest first."""
        query = sa.select(LABEL_DELAYS).order_by(LABEL_DELAYS.c.window_end_ms.desc()).limit(limit)
        rows = reversed(self._records(query))
        return [
            LabelDelays(row["window_end_ms"], row["n"], {float(q): d for q, d in row["quantiles_ms"].items()})
            for row in rows
        ]

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        """A transaction; connection and query failures become MetadataError, IntegrityError passes."""
        try:
            connection = self._engine.connect()
        except sa_exc.DBAPIError as error:
            raise MetadataError(self._unreachable(error)) from error
        try:
            with connection, connection.begin():
                yield connection
        except sa_exc.IntegrityError:
            raise
        except sa_exc.SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error)
            missing = "no such table" in reason or "does not exist" in reason
            hint = " (tables missing? call create_schema())" if missing else ""
            raise MetadataError(f"metadata store {self.url} failed: {reason}{hint}") from error

    def _unreachable(self, error: sa_exc.DBAPIError) -> str:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if self._url.get_backend_name() == "postgresql":
            return f"metadata store {self.url} is unreachable ({reason}); run ops/postgres/up"
        return f"cannot open metadata store {self.url} ({reason}); create_schema() makes its folder"

    def _records(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._begin() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def _insert_once(self, table: sa.Table, row: dict[str, Any], key: sa.ColumnElement[bool]) -> bool:
        try:
            with self._begin() as connection:
                connection.execute(table.insert(), row)
            return True
        except sa_exc.IntegrityError as error:
            with self._begin() as connection:
                if connection.scalar(sa.select(sa.func.count()).select_from(table).where(key)):
                    return False
            raise MetadataError(f"cannot record into {table.name}: {error.orig}") from error

    def _replace(
        self, table: sa.Table, where: Sequence[sa.ColumnElement[bool]], rows: list[dict[str, Any]]
    ) -> None:
        for attempt in (1, 2):  # a concurrent writer of the same key makes the first attempt conflict
            try:
                with self._begin() as connection:
                    connection.execute(table.delete().where(*where))
                    if rows:
                        connection.execute(table.insert(), rows)
                return
            except sa_exc.IntegrityError as error:
                if attempt == 2:
                    raise MetadataError(f"cannot record into {table.name}: {error.orig}") from error


def _moments(
    n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float
) -> tuple[float, float]:
    """Mean and sum of squared deviations of two merged samples (Chan et al.)."""
    n = n_a + n_b
    if n == 0:
        return 0.0, 0.0
    delta = mean_b - mean_a
    return mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def _json_float(value: float | None) -> float | None:
    """None for None, NaN and ±inf (JSON has none of them; SQLite stores NaN as NULL), else a float."""
    return None if value is None or not math.isfinite(value) else float(value)


def _checked_record(schema_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with defaults filled in, checked against schemas/<schema_name>.avsc.

    Raises:
        MetadataError: unknown or missing fields, wrong types, timestamps not int ms, or NaN values.
    """
    schema = load_schema(schema_name)
    fields = schema["fields"]
    unknown = sorted(set(record) - {field["name"] for field in fields})
    if unknown:
        raise MetadataError(f"{schema_name} record has unknown fields {unknown}")
    full = {field["name"]: record.get(field["name"], field.get("default")) for field in fields}
    try:
        validate(full, schema, raise_errors=True)
    except ValidationError as error:
        raise MetadataError(f"invalid {schema_name} record: {error}") from error
    for field in fields:
        value = full[field["name"]]
        is_timestamp = (
            isinstance(field["type"], dict) and field["type"].get("logicalType") == "timestamp-millis"
        )
        if is_timestamp and (not isinstance(value, int) or isinstance(value, bool)):
            raise MetadataError(f"{schema_name}.{field['name']} must be int milliseconds, not {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise MetadataError(f"{schema_name}.{field['name']} is NaN; use null for 'not computed'")
    return full
