"""Metadata store: models, routing history, decisions, rolling metrics and feature statistics.

One SQLAlchemy Core schema that behaves the same on SQLite (the default: a file under `home`) and on
PostgreSQL (`RIG_METADATA_URL=postgresql+psycopg://...`; `ops/postgres/up` starts one). No dialect-
specific SQL: JSON columns are `sqlalchemy.JSON`, instants are int milliseconds since the epoch, and
idempotent writes are plain INSERTs whose primary-key conflict is caught (no `ON CONFLICT`).

Write semantics:
    record_model          once per version; the same version with another checksum is refused.
    record_control        append-only log of ControlEvent records; a redelivered event_id is ignored.
    record_decision       Decision records, once per decision_id (at-least-once delivery is safe).
                          Both tables have one column per field of the record's schema; reading
                          them gives the records back (`routing_history`, `decisions`).
    record_model_metrics, record_feature_stats, record_label_delays, record_delay_histograms,
    record_model_serving
                          one entry per window; recording a window again replaces it (late labels,
                          redelivery). Several writers of one window must merge first or use their
                          own scope (e.g. `serving:worker-1`).
    record_promoter_status
                          one entry per promoter scope, replaced: where every test stands now.
    record_promoter_evidence
                          EvidencePoint records, one per (instant, golden, challenger): the history of
                          every primary test (the dashboard's charts); an instant recorded again is replaced.
    save_promoter_state   one entry per promoter scope, replaced: the loop's state (bytes) and the
                          `rig.joined` offset after the last row it folded (a restart goes on there).

Schema: `create_schema` applies the Alembic migrations of `rig.feedback.migrations` (on start, or once
the store answers: `create_schema_when_reachable`; and by `rig metadata upgrade`), so a store written by
an older version is upgraded in place, and one written before migrations existed is adopted with its
rows. A change to a table here needs a migration there.

Retention: the windowed tables grow with time (a window per model per promoter batch, per worker
process, per challenger...); `prune` deletes what is older than the retention
(`RIG_METADATA_RETENTION_DAYS`, `rig metadata prune`), the promoter's evidence history too. Models,
routing history and decisions are kept.

The feature statistics themselves (`FeatureStats`, what a window holds) live in `rig.features.stats`.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from fastavro.validation import ValidationError, validate
from sqlalchemy import exc as sa_exc

from rig.config import masked_url
from rig.errors import MetadataError, MetadataUnavailable
from rig.features.stats import FeatureStats, FeatureStatsWindow, json_float
from rig.feedback import migrations
from rig.models.registry import ModelMeta
from rig.wire.codec import load_schema
from rig.wire.records import ControlEvent, Decision, DecisionCheck, Record, to_plain

R = TypeVar("R", bound=Record)

_EXPERIMENT_STATUS = {
    "start_experiment": "running",
    "stop_experiment": "stopped",
    "kill_experiment": "killed",
}


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
DELAY_HISTOGRAMS = sa.Table(
    "label_delay_histograms", _schema,
    sa.Column("window_end_ms", sa.BigInteger, primary_key=True),
    sa.Column("label", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
)  # fmt: skip
MODEL_SERVING = sa.Table(
    "model_serving", _schema,
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
PROMOTER_STATUS = sa.Table(
    "promoter_status", _schema,
    sa.Column("scope", _version, primary_key=True),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("status", sa.JSON, nullable=False),
)  # fmt: skip
PROMOTER_STATE = sa.Table(
    "promoter_state", _schema,
    sa.Column("scope", _version, primary_key=True),
    sa.Column("joined_offset", sa.BigInteger, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("saved_at_ms", sa.BigInteger, nullable=False),
)  # fmt: skip
PROMOTER_EVIDENCE = sa.Table(
    "promoter_evidence", _schema,
    sa.Column("golden_version", _version, primary_key=True),
    sa.Column("challenger_version", _version, primary_key=True),
    sa.Column("at_ms", sa.BigInteger, primary_key=True, index=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("mean_gain", sa.Double, nullable=False),
    sa.Column("ci_low", sa.Double),
    sa.Column("ci_high", sa.Double),
    sa.Column("p_value", sa.Double, nullable=False),
    sa.Column("min_effect", sa.Double, nullable=False),
)  # fmt: skip
_AVRO_SQL: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "long": sa.BigInteger,
    "int": sa.Integer,
    "double": sa.Double,
    "float": sa.Double,
    "boolean": sa.Boolean,
    "string": sa.String,
    "enum": sa.String,
    "array": sa.JSON,
    "map": sa.JSON,
}


def _record_table(name: str, schema_name: str, key: str, indexed: Sequence[str]) -> sa.Table:
    """A table with one column per field of schemas/<schema_name>.avsc: its rows are the records."""
    columns = []
    for field in load_schema(schema_name)["fields"]:
        kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
        kind = next(kind for kind in kinds if kind != "null")
        avro_type = kind["type"] if isinstance(kind, dict) else kind
        column = field["name"]
        columns.append(
            sa.Column(
                column,
                _AVRO_SQL[avro_type](),
                primary_key=column == key,
                nullable="null" in kinds or avro_type in ("array", "map"),
                index=column in indexed,
            )
        )
    return sa.Table(name, _schema, *columns)


CONTROL_EVENTS = _record_table("control_events", "ControlEvent", "event_id", ("issued_at", "experiment"))
DECISIONS = _record_table("decisions", "Decision", "decision_id", ("decided_at", "golden_version"))
_PRUNED: tuple[tuple[sa.Table, sa.Column[int]], ...] = (
    (MODEL_METRICS, MODEL_METRICS.c.window_end_ms),
    (FEATURE_STATS, FEATURE_STATS.c.window_end_ms),
    (LABEL_DELAYS, LABEL_DELAYS.c.window_end_ms),
    (DELAY_HISTOGRAMS, DELAY_HISTOGRAMS.c.window_end_ms),
    (MODEL_SERVING, MODEL_SERVING.c.window_end_ms),
    (PROMOTER_STATUS, PROMOTER_STATUS.c.updated_at_ms),
    (PROMOTER_EVIDENCE, PROMOTER_EVIDENCE.c.at_ms),
)
"""The tables that grow with time, and the instant their rows are pruned by."""


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
class DelayHistogram:
    """Counts of the delays of one label's outcomes over one window, by bin (`rig.feedback.delays`)."""

    window_end_ms: int
    label: int
    n: int
    counts: dict[int, int]


@dataclass(frozen=True)
class ServingWindow:
    """One challenger's serving facts over one window of one worker (`rig.feedback.guardrails`):
    batches it was asked to score, how many failed, and the moments of log(its scoring time / the
    golden's) over the `timed` batches both answered."""

    scope: str
    window_end_ms: int
    model_version: str
    golden_version: str
    batches: int
    failed: int
    timed: int
    log_ratio_mean: float
    log_ratio_m2: float


@dataclass(frozen=True)
class EvidencePoint:
    """Where one challenger's primary test stood at one instant, as the decision rule sees it: the mean
    loss gain d̄ (golden minus challenger; > 0: the challenger did better) over `n` matured paired
    outcomes, its always-valid confidence sequence at level 1 - α/m (None while unbounded), the
    Holm-adjusted always-valid p-value (1 before `min_samples`), and the minimum effect the lower
    bound must exceed for a promotion."""

    at_ms: int
    golden_version: str
    challenger_version: str
    n: int
    mean_gain: float
    ci_low: float | None
    ci_high: float | None
    p_value: float
    min_effect: float

    @classmethod
    def of_check(
        cls, at_ms: int, golden: str, challenger: str, check: DecisionCheck, min_effect: float
    ) -> EvidencePoint:
        """The point of a primary check (`Promoter.primary_checks`), whose sign is the decisions'
        (challenger minus golden): negated, its interval bounds swapped."""
        return cls(
            at_ms=int(at_ms),
            golden_version=golden,
            challenger_version=challenger,
            n=check.n,
            mean_gain=0.0 if check.estimate is None else -check.estimate + 0.0,  # + 0.0: no -0.0
            ci_low=None if check.ci_high is None else -check.ci_high,
            ci_high=None if check.ci_low is None else -check.ci_low,
            p_value=1.0 if check.p_value is None else check.p_value,
            min_effect=min_effect,
        )


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
        except (sa_exc.ArgumentError, ImportError, ValueError) as error:  # ValueError: a port not a number
            raise MetadataError(f"bad metadata store URL {masked_url(url)!r}: {error}") from error
        self._schema_due = False  # see create_schema_when_reachable
        self._schema_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The URL with its password hidden."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    def create_schema(self) -> None:
        """Migrate the schema to the latest revision (`rig.feedback.migrations`), in one transaction:
        creates a new store (and a SQLite file's folder), upgrades an older one, adopts one written
        before migrations existed (its tables and rows kept); safe to repeat and to run concurrently.

        Raises:
            MetadataError: the store is unreachable or a migration failed (nothing of it applied).
        """
        sqlite = self._url.get_backend_name() == "sqlite"
        database = self._url.database
        if sqlite and database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2, 3):  # a concurrent creator on PostgreSQL makes ours fail; a retry sees it
            try:
                with self._begin(migrating=True) as connection:
                    if sqlite:  # its driver runs DDL outside any transaction unless one is open: open
                        # one holding the write lock, so concurrent creators wait for it and see its work
                        connection.exec_driver_sql("BEGIN IMMEDIATE")
                    migrations.upgrade(connection)
                self._schema_due = False
                return
            except MetadataUnavailable:
                raise
            except (MetadataError, sa_exc.IntegrityError, sa_exc.OperationalError) as error:
                if attempt == 3:
                    raise MetadataError(f"cannot migrate the metadata schema: {error}") from error

    def create_schema_when_reachable(self) -> bool:
        """`create_schema` now, or, when the store does not answer, before the first transaction that
        reaches it (a worker started while the store was away works with it once it is back). True
        when the schema was migrated now.

        Raises:
            MetadataError: a migration failed (nothing of it applied).
        """
        try:
            self.create_schema()
            return True
        except MetadataUnavailable:
            self._schema_due = True
            return False

    def schema_revision(self) -> str | None:
        """The migration the schema is at; None for a store that none was applied to (new, or written
        before migrations existed)."""
        with self._begin() as connection:
            return migrations.current_revision(connection)

    def prune(self, now_ms: int, retention_ms: int) -> dict[str, int]:
        """Delete the windows that ended (promoter statuses last updated, evidence points taken) more
        than `retention_ms` before `now_ms`, in one transaction; returns how many rows went, by table.

        Only the tables that grow with time are pruned. Models, the routing history (control events)
        and decisions are never deleted: they are the audit trail of what served and why.

        Raises:
            MetadataError: the store is unreachable, or retention_ms is negative.
        """
        if retention_ms < 0:
            raise MetadataError(f"retention must not be negative, got {retention_ms} ms")
        cutoff = int(now_ms) - int(retention_ms)
        with self._begin() as connection:
            return {
                table.name: connection.execute(table.delete().where(instant < cutoff)).rowcount
                for table, instant in _PRUNED
            }

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

    def model_checksum(self, version: str) -> str | None:
        """The SHA-256 recorded for `version` at registration; None when the version is not recorded.

        Raises:
            MetadataError: the store is unreachable.
        """
        with self._begin() as connection:
            return connection.scalar(sa.select(MODELS.c.sha256).where(MODELS.c.version == version))

    def models(self) -> list[ModelMeta]:
        """Every recorded model version, oldest first."""
        query = sa.select(MODELS).order_by(MODELS.c.created_at, MODELS.c.version)
        with self._begin() as connection:
            rows = connection.execute(query).mappings().all()
        return [ModelMeta(**{**row, "features": tuple(row["features"])}) for row in rows]

    def record_control(self, event: ControlEvent) -> bool:
        """Append a ControlEvent record to the routing history; False for a redelivered event_id.

        Raises:
            MetadataError: the record does not fit schemas/ControlEvent.avsc (or holds NaN).
        """
        row = _checked_row(ControlEvent, event)
        return self._insert_once(CONTROL_EVENTS, row, CONTROL_EVENTS.c.event_id == row["event_id"])

    def routing_history(self, limit: int = 100) -> list[ControlEvent]:
        """The latest `limit` ControlEvent records, newest first."""
        order = (CONTROL_EVENTS.c.issued_at.desc(), CONTROL_EVENTS.c.event_id.desc())
        return self._typed(sa.select(CONTROL_EVENTS).order_by(*order).limit(limit), ControlEvent)

    def experiments(self) -> list[Experiment]:
        """Every experiment named in the routing history, folded from its events, by name."""
        query = (
            sa.select(CONTROL_EVENTS)
            .where(CONTROL_EVENTS.c.experiment.is_not(None))
            .order_by(CONTROL_EVENTS.c.issued_at, CONTROL_EVENTS.c.event_id)
        )
        found: dict[str, Experiment] = {}
        for event in self._typed(query, ControlEvent):
            name, kind, at = event.experiment, event.kind, event.issued_at
            status = _EXPERIMENT_STATUS.get(kind)
            if status is None or name is None:
                continue
            if kind != "start_experiment" and name in found:  # ends the latest start
                found[name] = replace(found[name], status=status, ended_at_ms=at)
                continue
            started = kind == "start_experiment"
            found[name] = Experiment(
                name=name,
                model_version=event.model_version,
                mode=event.mode,
                traffic_share=event.traffic_share,
                traffic_cap_rps=event.traffic_cap_rps,
                status=status,
                started_at_ms=at if started else None,
                ended_at_ms=None if started else at,
            )
        return [found[name] for name in sorted(found)]

    def record_decision(self, decision: Decision) -> bool:
        """Record a Decision record with its evidence; False when its decision_id is already recorded.

        Raises:
            MetadataError: the record does not fit schemas/Decision.avsc (or holds NaN).
        """
        row = _checked_row(Decision, decision)
        return self._insert_once(DECISIONS, row, DECISIONS.c.decision_id == row["decision_id"])

    def decisions(self, limit: int = 100, golden: str | None = None) -> list[Decision]:
        """The latest `limit` Decision records, newest first; only those about golden `golden` if given."""
        query = sa.select(DECISIONS).order_by(DECISIONS.c.decided_at.desc(), DECISIONS.c.decision_id.desc())
        if golden is not None:
            query = query.where(DECISIONS.c.golden_version == golden)
        return self._typed(query.limit(limit), Decision)

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
        row: dict[str, object] = {key: json_float(value) for key, value in values.items()}
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
        quantiles = {str(float(level)): json_float(delay) for level, delay in quantiles_ms.items()}
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

    def record_delay_histograms(
        self, window_end_ms: int, counts_by_label: Mapping[int, Mapping[int, int]]
    ) -> None:
        """Record (or replace) the delay histogram of each label (label -> bin -> count) over one window."""
        rows = [
            {
                "window_end_ms": int(window_end_ms),
                "label": int(label),
                "n": int(sum(counts.values())),
                "counts": {str(int(b)): int(c) for b, c in counts.items()},
            }
            for label, counts in counts_by_label.items()
            if counts
        ]
        self._replace(DELAY_HISTOGRAMS, (DELAY_HISTOGRAMS.c.window_end_ms == window_end_ms,), rows)

    def delay_histograms(self, limit: int | None = None) -> list[DelayHistogram]:
        """The delay histograms of the latest `limit` (default all) windows, oldest first."""
        table = DELAY_HISTOGRAMS
        windows = sa.select(table.c.window_end_ms).distinct().order_by(table.c.window_end_ms.desc())
        query = sa.select(table).where(table.c.window_end_ms.in_(windows.limit(limit).scalar_subquery()))
        return [
            DelayHistogram(
                row["window_end_ms"], row["label"], row["n"], {int(b): c for b, c in row["counts"].items()}
            )
            for row in self._records(query.order_by(table.c.window_end_ms, table.c.label))
        ]

    def record_model_serving(self, windows: Sequence[ServingWindow]) -> None:
        """Record (or replace) serving windows, each keyed by (scope, window_end_ms, model_version)."""
        for window in windows:
            row = asdict(window)
            where = (
                MODEL_SERVING.c.scope == window.scope,
                MODEL_SERVING.c.window_end_ms == window.window_end_ms,
                MODEL_SERVING.c.model_version == window.model_version,
            )
            self._replace(MODEL_SERVING, where, [row])

    def model_serving(self, golden_version: str, after_ms: int = -1) -> list[ServingWindow]:
        """The serving windows of challengers of `golden_version` ending after `after_ms`, oldest first."""
        table = MODEL_SERVING
        query = sa.select(table).where(
            table.c.golden_version == golden_version, table.c.window_end_ms > after_ms
        )
        query = query.order_by(table.c.window_end_ms, table.c.scope, table.c.model_version)
        return [ServingWindow(**row) for row in self._records(query)]

    def serving_recorded(self) -> bool:
        """True when any worker has recorded a serving window (the serving guardrails apply)."""
        with self._begin() as connection:
            return connection.scalar(sa.select(MODEL_SERVING.c.scope).limit(1)) is not None

    def record_promoter_status(self, scope: str, updated_at_ms: int, status: Mapping[str, Any]) -> None:
        """Record (or replace) where a promoter's tests stand (plain JSON values, no NaN).

        Raises:
            MetadataError: the status holds a value JSON cannot store.
        """
        try:
            json.dumps(status, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise MetadataError(f"promoter status holds a value JSON cannot store: {error}") from error
        row = {"scope": scope, "updated_at_ms": int(updated_at_ms), "status": dict(status)}
        self._replace(PROMOTER_STATUS, (PROMOTER_STATUS.c.scope == scope,), [row])

    def promoter_status(self, scope: str = "promoter") -> tuple[int, dict[str, Any]] | None:
        """(updated_at_ms, status) of a promoter scope, or None when none was recorded."""
        rows = self._records(sa.select(PROMOTER_STATUS).where(PROMOTER_STATUS.c.scope == scope))
        return (rows[0]["updated_at_ms"], rows[0]["status"]) if rows else None

    def record_promoter_evidence(self, at_ms: int, golden: str, points: Sequence[EvidencePoint]) -> None:
        """Record (or replace) the evidence of every challenger of `golden` at one instant.

        Raises:
            MetadataError: a point of another instant or golden, or NaN/±inf where a number is required.
        """
        rows = []
        for point in points:
            if (point.at_ms, point.golden_version) != (at_ms, golden):
                raise MetadataError(
                    f"evidence of {point.golden_version} at {point.at_ms} recorded as {golden} at {at_ms}"
                )
            row = asdict(point) | {"ci_low": json_float(point.ci_low), "ci_high": json_float(point.ci_high)}
            required = ("mean_gain", "p_value", "min_effect")
            if any(json_float(row[name]) is None for name in required):
                raise MetadataError(f"evidence of {point.challenger_version} is not finite: {point}")
            rows.append(row)
        table = PROMOTER_EVIDENCE
        self._replace(table, (table.c.at_ms == int(at_ms), table.c.golden_version == golden), rows)

    def promoter_evidence(
        self, golden: str | None = None, challenger: str | None = None, limit: int | None = None
    ) -> list[EvidencePoint]:
        """The latest `limit` (default all) evidence points, oldest first; only those of golden
        `golden` and challenger `challenger` if given."""
        table = PROMOTER_EVIDENCE
        query = sa.select(table)
        if golden is not None:
            query = query.where(table.c.golden_version == golden)
        if challenger is not None:
            query = query.where(table.c.challenger_version == challenger)
        order = (table.c.at_ms.desc(), table.c.golden_version.desc(), table.c.challenger_version.desc())
        return [EvidencePoint(**row) for row in reversed(self._records(query.order_by(*order).limit(limit)))]

    def save_promoter_state(
        self, joined_offset: int, state: bytes, saved_at_ms: int, scope: str = "promoter"
    ) -> None:
        """Record (or replace) a promoter's state (`PromotionLoop.state`) and the `rig.joined` offset
        after the last row folded into it: a promoter that starts reads on from there.

        Raises:
            MetadataError: the store is unreachable.
        """
        row = {
            "scope": scope,
            "joined_offset": int(joined_offset),
            "state": state,
            "saved_at_ms": int(saved_at_ms),
        }
        self._replace(PROMOTER_STATE, (PROMOTER_STATE.c.scope == scope,), [row])

    def load_promoter_state(self, scope: str = "promoter") -> tuple[int, bytes] | None:
        """(joined offset, state) a promoter scope saved last, or None when it saved none.

        Raises:
            MetadataError: the store is unreachable.
        """
        query = sa.select(PROMOTER_STATE.c.joined_offset, PROMOTER_STATE.c.state).where(
            PROMOTER_STATE.c.scope == scope
        )
        rows = self._records(query)
        return (rows[0]["joined_offset"], bytes(rows[0]["state"])) if rows else None

    def forget_promoter_state(self, scope: str = "promoter") -> None:
        """Delete a promoter scope's saved state and status: its next start begins afresh, from its
        consumer group's committed offset (e.g. after the group was moved to the end of `rig.joined`).

        Raises:
            MetadataError: the store is unreachable.
        """
        self._replace(PROMOTER_STATE, (PROMOTER_STATE.c.scope == scope,), [])
        self._replace(PROMOTER_STATUS, (PROMOTER_STATUS.c.scope == scope,), [])

    @contextmanager
    def _begin(self, migrating: bool = False) -> Iterator[sa.Connection]:
        """A transaction; connection and query failures become MetadataError (MetadataUnavailable when
        the store does not answer, so that work waits for it), IntegrityError passes. A schema migration
        still due (`create_schema_when_reachable`) runs first."""
        if self._schema_due and not migrating:
            with self._schema_lock:
                if self._schema_due:
                    self.create_schema()
        try:
            connection = self._engine.connect()
        except sa_exc.DBAPIError as error:
            raise MetadataUnavailable(self._unreachable(error)) from error
        try:
            with connection, connection.begin():
                yield connection
        except sa_exc.IntegrityError:
            raise
        except sa_exc.SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error)
            if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
                raise MetadataUnavailable(
                    f"metadata store {self.url} lost the connection: {reason}"
                ) from error
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

    def _typed(self, query: sa.Select[Any], record_type: type[R]) -> list[R]:
        """The rows of a record table as records (its columns are the record's fields)."""
        try:  # column names are SQLAlchemy's str subclass `quoted_name`: plain str keys for msgspec;
            # NULL in a column added later (an older row) is the field's default
            return [
                msgspec.convert(
                    {str(name): value for name, value in row.items() if value is not None}, record_type
                )
                for row in self._records(query)
            ]
        except msgspec.ValidationError as error:
            raise MetadataError(
                f"a stored {record_type.__name__} does not fit its record: {error}"
            ) from error

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


def _checked_row(record_type: type[Record], record: Record) -> dict[str, Any]:
    """The row of a record: its fields, checked against schemas/<record class name>.avsc.

    Raises:
        MetadataError: not a record of that class, wrong types, timestamps not int ms, or NaN values.
    """
    schema_name = record_type.__name__
    if not isinstance(record, record_type):
        raise MetadataError(f"expected a {schema_name} record, got {type(record).__name__}")
    schema = load_schema(schema_name)
    fields = schema["fields"]
    try:
        row = to_plain(record)
        validate(row, schema, raise_errors=True)
    except (TypeError, ValidationError) as error:
        raise MetadataError(f"invalid {schema_name} record: {error}") from error
    for field in fields:
        value = row[field["name"]]
        is_timestamp = (
            isinstance(field["type"], dict) and field["type"].get("logicalType") == "timestamp-millis"
        )
        if is_timestamp and (not isinstance(value, int) or isinstance(value, bool)):
            raise MetadataError(f"{schema_name}.{field['name']} must be int milliseconds, not {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise MetadataError(f"{schema_name}.{field['name']} is NaN; use null for 'not computed'")
    return row
