"""Batch prediction over the Feast offline store: the seed's "FEAST batch pred" notebook as code.

A table of `entity_id` + `event_timestamp` rows → Feast historical retrieval (each row's features as
of its time, point-in-time correct) → the fitted transform stored with the models (once per
transform version, whatever the number of models sharing it) → each model's columns → XGBoost
`inplace_predict` (through `DenseScorer`, as online). Transform and models are the very artifacts
the online path serves.

Choices (callers rely on them):
- No row is dropped or reordered. A row that cannot be scored keeps its place with NaN scores and
  says why in `rejected_reason` (empty string when every model scored it).
- `entity_found` is False when Feast has no snapshot of the entity at or before the row's time
  within the feature view's ttl (every feature comes back missing). Such rows follow
  `settings.missing_entity_policy`, as online: `defaults` scores them on the transform's training
  defaults (its fill steps), `dlq` rejects them with `NOT_FOUND_REASON`.
- A row whose key is unusable (missing `entity_id`, `event_timestamp` that is not a timestamp) is
  rejected without a feature lookup; it never fails the batch.
- `event_timestamp` comes back parsed as UTC: datetimes (naive = UTC), ISO 8601 text, or numbers
  read as epoch milliseconds (the unit of the requests topic).
- With several transform versions in one run, `transform_version` names the golden's (the first
  version's when no golden is given) and other transforms' rejections are prefixed `[<version>]`.
- Work goes chunk by chunk (`DEFAULT_CHUNK_ROWS`): one Feast retrieval, one transform pass per
  transform version and one `inplace_predict` per model per chunk; `run_batch` streams Parquet input
  and output, so memory holds one chunk of features at a time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rig.config import RigSettings
from rig.errors import BatchInputError, RegistryError
from rig.features.selection import FeatureSelection
from rig.features.store import FeatureStoreClient
from rig.models.dense import DenseScorer
from rig.models.registry import ModelRegistry
from rig.transform.model_inputs import column_index

if TYPE_CHECKING:
    import pyarrow as pa

    from rig.transform.fitted import FittedTransform

ENTITY_COLUMN = "entity_id"
TIME_COLUMN = "event_timestamp"
SCORE_COLUMN = "score"
"""The golden's score (present only when a golden is given): what the rig would answer."""
SCORE_PREFIX = "score_"
TRANSFORM_COLUMN = "transform_version"
FOUND_COLUMN = "entity_found"
REASON_COLUMN = "rejected_reason"
DEFAULT_CHUNK_ROWS = 100_000
NOT_FOUND_REASON = "entity not found: no feature snapshot at or before event_timestamp within the ttl"
INPUT_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class BatchSummary:
    """What one `run_batch` wrote."""

    rows: int
    rejected: int
    seconds: float
    output_path: Path


def score_column(version: str) -> str:
    """Name of the output column holding `version`'s scores."""
    return f"{SCORE_PREFIX}{version}"


@dataclass(frozen=True)
class _Model:
    version: str
    scorer: DenseScorer  # the online path's call into XGBoost
    columns: np.ndarray  # positions of the model's features in its transform's output


@dataclass(frozen=True)
class _TransformGroup:
    transform: FittedTransform
    models: tuple[_Model, ...]


class _Scorer:
    """Models grouped by transform version, and the feature store they read: scores one chunk."""

    def __init__(self, settings: RigSettings, versions: Sequence[str], golden: str | None) -> None:
        if isinstance(versions, str):
            versions = [versions]
        self.versions = tuple(dict.fromkeys([*([golden] if golden else []), *versions]))
        if not self.versions:
            raise RegistryError("no model version to score: pass at least one version")
        self.golden = golden
        self.score_missing_entities = settings.missing_entity_policy == "defaults"
        registry = ModelRegistry(settings.model_dir)
        self.groups = _load_groups(registry, self.versions)
        self.client = FeatureStoreClient(settings)
        self.selection = self._selection(registry)
        self.keys = self.selection.key_spec.names

    def _selection(self, registry: ModelRegistry) -> FeatureSelection:
        """What every scored model reads, together (the repo's default for a model that did not
        record it)."""
        combined: FeatureSelection | None = None
        for version in self.versions:
            recorded = registry.meta(version).selection
            selection = FeatureSelection.from_dict(recorded) if recorded else self.client.selection()
            combined = selection if combined is None else combined.union(selection)
        assert combined is not None  # at least one version
        return combined

    @property
    def output_columns(self) -> tuple[str, ...]:
        scores = tuple(score_column(version) for version in self.versions)
        golden = (SCORE_COLUMN,) if self.golden else ()
        return (*golden, *scores, TRANSFORM_COLUMN, FOUND_COLUMN, REASON_COLUMN)

    def check_columns(self, columns: Sequence[str], source: str) -> None:
        """Raises: BatchInputError when key columns are missing or output names are taken."""
        needed = (*self.keys, TIME_COLUMN)
        missing = [name for name in needed if name not in columns]
        if missing:
            raise BatchInputError(f"{source} lacks column(s) {missing}; it needs {', '.join(needed)}")
        taken = [name for name in self.output_columns if name in columns]
        if taken:
            raise BatchInputError(f"{source} already has output column(s) {taken}; rename them")

    def score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """`chunk` (index kept) with `event_timestamp` parsed as UTC and the output columns added."""
        n = len(chunk)
        keys = {name: chunk[name].to_numpy(dtype=object) for name in self.keys}
        times, reasons = _parse_keys(keys, chunk[TIME_COLUMN])
        valid = reasons == ""
        features = self._features(keys, times, valid)
        found = valid & features.notna().any(axis=1).to_numpy()
        usable = valid & (found | self.score_missing_entities)
        reasons[valid & ~usable] = NOT_FOUND_REASON
        scores: dict[str, np.ndarray] = {}
        several = len(self.groups) > 1
        for group in self.groups:
            result = group.transform.transform(features, now=times)
            rows = np.flatnonzero(result.row_ok & usable)
            for model in group.models:
                scores[model.version] = np.full(n, np.nan)
                if rows.size:
                    x = result.values[np.ix_(rows, model.columns)]
                    scores[model.version][rows] = model.scorer.inplace_predict(x)
            prefix = f"[{group.transform.version}] " if several else ""
            for row, why in result.reasons.items():
                if usable[row]:
                    reasons[row] = f"{reasons[row]}; {prefix}{why}" if reasons[row] else prefix + why
        out = chunk.copy()
        out[TIME_COLUMN] = times.array  # positional: the caller's index may repeat labels
        if self.golden:
            out[SCORE_COLUMN] = scores[self.golden]
        for version in self.versions:
            out[score_column(version)] = scores[version]
        out[TRANSFORM_COLUMN] = self.groups[0].transform.version
        out[FOUND_COLUMN] = found
        out[REASON_COLUMN] = reasons
        return out

    def _features(self, keys: dict[str, np.ndarray], times: pd.Series, valid: np.ndarray) -> pd.DataFrame:
        """Raw features per row (NaN for rows not looked up or not found), positionally aligned."""
        names = list(self.selection.columns)
        n = len(times)
        frame = pd.DataFrame({name: np.full(n, np.nan) for name in names})
        if valid.any():
            lookup = pd.DataFrame({name: values[valid] for name, values in keys.items()})
            for key in self.selection.join_keys:
                lookup[key.name] = lookup[key.name].astype(str if key.kind == "string" else np.int64)
            lookup[TIME_COLUMN] = times[valid].to_numpy()
            found = self.client.historical(lookup, self.selection)[names]
            for name in names:
                column = found[name].to_numpy()
                frame[name] = frame[name].astype(column.dtype if column.dtype.kind in "fiub" else object)
                frame.loc[valid, name] = column
        return frame


def _load_groups(registry: ModelRegistry, versions: Sequence[str]) -> list[_TransformGroup]:
    """Verified boosters grouped by transform version, the first version's group first.

    Raises:
        RegistryError: an unknown version, a model stored without a transform, or a transform
            that lacks a column the model reads.
    """
    transforms: dict[str, FittedTransform] = {}
    members: dict[str, list[_Model]] = {}
    for version in versions:
        meta = registry.meta(version)
        if not meta.transform_version:
            raise RegistryError(
                f"model {version} was stored without a transform; retrain it with `rig train`"
            )
        if meta.transform_version not in transforms:
            transforms[meta.transform_version] = registry.load_transform(meta.transform_version)
        transform = transforms[meta.transform_version]
        try:
            columns = column_index(transform.output_columns, meta.features)
        except KeyError as error:
            raise RegistryError(f"model {version}: {error.args[0]}") from error
        members.setdefault(meta.transform_version, []).append(
            _Model(version, DenseScorer(registry.load(version)), columns)
        )
    return [_TransformGroup(transforms[key], tuple(models)) for key, models in members.items()]


def _parse_keys(keys: dict[str, np.ndarray], raw_times: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC times (NaT where unusable) and a reason per row ("" when its keys are usable)."""
    times = _utc_times(raw_times)
    reasons = np.full(len(raw_times), "", dtype=object)
    bad_time = times.isna().to_numpy()
    for row in np.flatnonzero(bad_time):
        value = raw_times.iloc[row]
        reasons[row] = (
            f"{TIME_COLUMN}: missing" if pd.isna(value) else f"{TIME_COLUMN}: {value!r} is not a timestamp"
        )
    for name, ids in keys.items():
        missing_id = pd.isna(ids) | (pd.Series(ids, dtype=object).astype(str).str.strip() == "").to_numpy()
        reasons[missing_id] = f"{name}: missing"
    return times, reasons


def _utc_times(values: pd.Series) -> pd.Series:
    """Datetimes (naive = UTC), ISO 8601 text or epoch milliseconds → UTC datetimes, NaT if unusable."""
    values = values.reset_index(drop=True)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        times = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        times = values.dt.tz_localize("UTC")
    elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        times = pd.to_datetime(values, unit="ms", utc=True, errors="coerce")
    else:
        times = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return times.dt.as_unit("ns")


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over `total` rows (a no-op when disabled); yields `advance(rows)`."""
    if not enabled:
        yield lambda _rows: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total)
        yield lambda rows: bar.advance(task, rows)


def predict_batch_frame(
    settings: RigSettings,
    entity_df: pd.DataFrame,
    versions: Sequence[str],
    golden: str | None = None,
    *,
    progress: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> pd.DataFrame:
    """Score every row of `entity_df` with every model in `versions`, on point-in-time features.

    Args:
        settings: `feast_repo` (offline store, applied), `model_dir` (models, transforms) and
            `missing_entity_policy` (rows without features) are used.
        entity_df: `entity_id` and `event_timestamp` per row; other columns are kept as they are.
        versions: Stored model versions to score with (duplicates ignored).
        golden: Version whose score also goes to `score` and whose transform names
            `transform_version`; scored even when not in `versions`.
        progress: Show a progress bar.
        chunk_rows: Rows per Feast retrieval and transform pass.

    Returns:
        `entity_df` in its order and with its index, `event_timestamp` parsed as UTC, plus `score`
        (only with a golden), one `score_<version>` per model (NaN where rejected),
        `transform_version`, `entity_found` and `rejected_reason` ("" when scored).

    Raises:
        BatchInputError: no rows, a missing key column, or an input column named like an output.
        RegistryError: an unknown model version, or a model without its transform.
        FeatureStoreError: the offline store is missing or not applied (`rig features apply`).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    scorer = _Scorer(settings, versions, golden)
    scorer.check_columns(list(entity_df.columns), "entity_df")
    if entity_df.empty:
        raise BatchInputError("entity_df has no rows to score")
    parts = []
    with _progress(progress, len(entity_df), "batch prediction") as advance:
        for start in range(0, len(entity_df), chunk_rows):
            parts.append(scorer.score(entity_df.iloc[start : start + chunk_rows]))
            advance(len(parts[-1]))
    return pd.concat(parts)


def run_batch(
    settings: RigSettings,
    input_path: Path,
    output_path: Path,
    versions: Sequence[str] | None = None,
    progress: bool = True,
    *,
    golden: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> BatchSummary:
    """Score a Parquet or CSV table of `entity_id` + `event_timestamp` rows into a Parquet file.

    The input is read and the output written one chunk at a time (CSV input is read whole first);
    the output appears at `output_path` only once complete. Its columns are those of
    `predict_batch_frame`, in input order.

    Args:
        input_path: `.parquet`/`.pq` or `.csv` file; CSV `entity_id` is read as text.
        output_path: Parquet file to write (replaced when it exists; folders are created).
        versions: Model versions to score; every stored version when None.
        progress: Show a progress bar.
        golden: See `predict_batch_frame`.
        chunk_rows: Rows per chunk.

    Raises:
        BatchInputError: unreadable, empty or unsupported input, or a missing key column.
        RegistryError: an unknown model version, or no stored model at all.
        FeatureStoreError: the offline store is missing or not applied (`rig features apply`).
    """
    import pyarrow.parquet as pq

    began = time.perf_counter()
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if versions is None:
        versions = [meta.version for meta in ModelRegistry(settings.model_dir).versions()]
        if not versions and not golden:
            raise RegistryError(f"no model stored in {settings.model_dir}; train one with `rig train`")
    scorer = _Scorer(settings, versions, golden)
    total, schema, batches = _open_input(Path(input_path), chunk_rows)
    scorer.check_columns(schema.names, str(input_path))
    if total == 0:
        raise BatchInputError(f"{input_path} has no rows to score")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(output_path.name + ".tmp")
    rows = rejected = 0
    try:
        with _progress(progress, total, f"scoring {Path(input_path).name}") as advance:
            writer: pq.ParquetWriter | None = None
            try:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    scored = scorer.score(batch.to_pandas())
                    table = _output_table(batch, scored, scorer.output_columns)
                    if writer is None:
                        writer = pq.ParquetWriter(temporary, table.schema)
                    writer.write_table(table)
                    rows += batch.num_rows
                    rejected += int((scored[REASON_COLUMN] != "").sum())
                    advance(batch.num_rows)
            finally:
                if writer is not None:
                    writer.close()
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)
    return BatchSummary(
        rows=rows, rejected=rejected, seconds=time.perf_counter() - began, output_path=output_path
    )


def _open_input(path: Path, chunk_rows: int) -> tuple[int, pa.Schema, Iterator[pa.RecordBatch]]:
    """Row count, schema and record batches of a Parquet or CSV file.

    Raises:
        BatchInputError: missing, unsupported or unreadable file.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BatchInputError(f"input {path} must be Parquet or CSV ({', '.join(INPUT_SUFFIXES)})")
    if not path.is_file():
        raise BatchInputError(f"input file {path} does not exist")
    try:
        if kind == "parquet":
            file = pq.ParquetFile(path)
            batches = _reading(path, file.iter_batches(batch_size=chunk_rows))
            return file.metadata.num_rows, file.schema_arrow, batches
        options = pacsv.ConvertOptions(column_types={ENTITY_COLUMN: pa.string()})  # ids as text
        table = pacsv.read_csv(path, convert_options=options)
    except (pa.ArrowException, OSError) as error:
        raise BatchInputError(f"cannot read {path}: {error}") from error
    return table.num_rows, table.schema, iter(table.to_batches(max_chunksize=chunk_rows))


def _reading(path: Path, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches`, with a read failure half-way through the file raised as BatchInputError."""
    import pyarrow as pa

    try:
        yield from batches
    except (pa.ArrowException, OSError) as error:
        raise BatchInputError(f"cannot read {path}: {error}") from error


def _output_table(batch: pa.RecordBatch, scored: pd.DataFrame, columns: Sequence[str]) -> pa.Table:
    """The input batch's columns as read (timestamps parsed as UTC) plus the output columns."""
    import pyarrow as pa

    types: dict[str, Any] = {
        TRANSFORM_COLUMN: pa.string(),
        FOUND_COLUMN: pa.bool_(),
        REASON_COLUMN: pa.string(),
    }
    table = pa.Table.from_batches([batch]).replace_schema_metadata(None)  # pandas metadata would be stale
    position = table.schema.get_field_index(TIME_COLUMN)
    times = pa.array(scored[TIME_COLUMN], type=pa.timestamp("ns", tz="UTC"))
    table = table.set_column(position, TIME_COLUMN, times)
    for name in columns:
        values = scored[name].to_numpy()
        table = table.append_column(name, pa.array(values, type=types.get(name, pa.float64())))
    return table
