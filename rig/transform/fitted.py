"""Inference-time feature transformer: fits a declarative spec and applies it vectorised over a batch.

The spec (step definitions and their validation) lives in `rig.transform.spec`.

The same `FittedTransform.transform` serves a micro-batch of a few hundred online requests, a
training frame and a batch-prediction run of hundreds of thousands of rows: every op is elementwise
numpy over whole columns, and fitted parameters are fixed after `fit`, so a row's output never
depends on the other rows of its batch (online == batch).

Choices (documented here because callers rely on them):
- Errors are data. `transform` returns a `TransformResult` with `values`, a `row_ok` mask and a
  `reasons` dict (row index -> why) instead of raising for bad rows: a value that is not a number,
  a negative `log1p` input, or any non-finite output (NaN/inf left unhandled, or a float64 beyond the
  float32 range) rejects that row only. Structural problems (missing input column, columns of
  different lengths, no `now` for `time_since`) raise `TransformError` for the whole batch.
- "Missing" means NaN or None. `fill_missing` fills those, never ±inf; `clip` turns ±inf into its
  bounds and `bucketize` puts them in the outer buckets.
- `log1p` rejects negative inputs (the row goes to the dead-letter topic). Put a `clip` with `lo=0`
  before it to clip instead.
- `bucketize` bucket b holds `edges[b-1] <= x < edges[b]` (numpy `searchsorted(side="right")`);
  a missing input gives NaN (index) or NaN in every bucket column (one-hot): fill before if wanted.
- `one_hot` categories are strings; integer inputs (and integral floats, as pandas makes of an
  int column with a gap) compare by their decimal text; unknown or missing values give all zeros.
  On the hot path pass category columns as numpy unicode arrays (`np.array(list_of_str)`):
  object arrays work too but compare several times slower.
- `time_since` reads epoch milliseconds (numbers), datetimes or ISO 8601 text (naive = UTC; other
  text rejects the row) and gives `(now - ts) / 1000` seconds; `now` is the per-request event time
  array (or one scalar) in the same forms. A future timestamp gives a negative age, kept as is.
- Fitted statistics (`median`/`mean` fill, `standardize`) use the finite training values only, of
  the column as the earlier steps left it; a standard deviation of 0 becomes 1.
- `version` is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces)
  of `{format, spec, params}`; `TRANSFORM_FORMAT` is bumped whenever an op's meaning changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from rig.errors import TransformError
from rig.transform.spec import (
    Bucketize,
    Clip,
    FillMissing,
    Kind,
    Log1p,
    OneHot,
    Ratio,
    Standardize,
    Step,
    TimeSince,
    TransformSpec,
)

TRANSFORM_FORMAT = 1
Frame: TypeAlias = pd.DataFrame | Mapping[str, Any]


@dataclass(frozen=True, eq=False, slots=True)
class TransformResult:
    """A transformed batch. Rows with `row_ok` False may hold NaN/inf and must not be predicted on."""

    values: np.ndarray  # float32, shape (n_rows, n_outputs), C-contiguous
    row_ok: np.ndarray  # bool, shape (n_rows,)
    reasons: dict[int, str]  # row index -> why it was rejected; empty when every row is ok
    columns: tuple[str, ...]

    @property
    def ok_values(self) -> np.ndarray:
        """The rows that can be predicted on, in order (float32, C-contiguous)."""
        return np.ascontiguousarray(self.values[self.row_ok])

    @property
    def rejected(self) -> np.ndarray:
        """Row indices to send to the dead-letter topic with `reasons[i]`."""
        return np.flatnonzero(~self.row_ok)


@dataclass(slots=True)
class _Batch:
    n: int
    columns: dict[str, np.ndarray]
    now_ms: np.ndarray | None = None
    rejects: list[tuple[np.ndarray, str]] = field(default_factory=list)


def _reject(batch: _Batch, mask: np.ndarray, reason: str) -> None:
    if mask.any():
        batch.rejects.append((mask, reason))


def _to_float(values: Any, name: str, batch: _Batch) -> np.ndarray:
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
            values = values.to_numpy(dtype=object, na_value=None)
        else:
            values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype == np.float64:
        return arr
    if arr.dtype.kind in "mM":
        raise TransformError(f"column {name!r} holds datetimes; read it with time_since")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        coerced = pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").to_numpy(
            np.float64, na_value=np.nan
        )
        _reject(batch, np.isnan(coerced) & ~pd.isna(arr), f"{name}: not a number")
        return coerced


def _to_category(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series):
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            values = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = values.to_numpy(dtype=object, na_value=None)
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        return arr.astype(str)
    if arr.dtype.kind == "f":
        integral = np.isfinite(arr) & (arr == np.trunc(arr))
        text = np.where(integral, arr, 0).astype(np.int64).astype(str)
        return np.where(integral, text, "")
    return arr


def _to_ms(values: Any, name: str, batch: _Batch) -> np.ndarray:
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        values = values.to_numpy()
    arr = np.atleast_1d(np.asarray(values))
    if arr.dtype.kind in "OUS":  # numbers (epoch ms) or ISO 8601 text / datetime objects
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            series = pd.Series(arr, dtype=object)
            stamps = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
            _reject(batch, stamps.isna().to_numpy() & ~pd.isna(arr), f"{name}: not a timestamp")
            arr = stamps.dt.tz_localize(None).to_numpy()
    if arr.dtype.kind == "M":
        ms = arr.astype("datetime64[ns]").view(np.int64) / 1e6
        return np.where(np.isnat(arr), np.nan, ms)
    return _to_float(arr, name, batch)


def _read_batch(inputs: Mapping[str, Kind], needs_now: bool, frame: Frame, now: Any) -> _Batch:
    if not isinstance(frame, pd.DataFrame | Mapping):
        raise TransformError(f"expected a pandas DataFrame or a dict of arrays, got {type(frame).__name__}")
    missing = [column for column in inputs if column not in frame]
    if missing:
        raise TransformError(f"missing input column(s): {', '.join(map(repr, missing))}")
    batch = _Batch(n=len(frame) if isinstance(frame, pd.DataFrame) else -1, columns={})
    for column, kind in inputs.items():
        if kind == "numeric":
            arr = _to_float(frame[column], column, batch)
        elif kind == "category":
            arr = _to_category(frame[column])
        else:
            arr = _to_ms(frame[column], column, batch)
        if arr.ndim != 1:
            raise TransformError(f"input column {column!r} must be 1-D, got shape {arr.shape}")
        if batch.n < 0:
            batch.n = len(arr)
        elif len(arr) != batch.n:
            raise TransformError(f"input column {column!r} has {len(arr)} rows, expected {batch.n}")
        batch.columns[column] = arr
    if needs_now:
        if now is None:
            raise TransformError("time_since needs `now`, the event time of each request")
        known_rejects = len(batch.rejects)
        now_ms = _to_ms(now, "now", batch)
        if np.ndim(now) == 0:
            if len(batch.rejects) > known_rejects or np.isnan(now_ms[0]):
                raise TransformError(f"`now` is not a timestamp: {now!r}")
            now_ms = np.full(batch.n, now_ms[0])
        if now_ms.shape != (batch.n,):
            raise TransformError(f"`now` has shape {now_ms.shape}, expected ({batch.n},)")
        batch.now_ms = now_ms
    return batch


_Run = Callable[[_Batch], None]


def _compile(step: Step, params: Mapping[str, float]) -> _Run:
    """Turn a step and its fitted params into a function over a batch; constants precomputed here."""
    cols = step.reads()
    src = cols[0]
    out = step.writes()

    if isinstance(step, FillMissing):
        value = params["value"] if step.value is None else step.value

        def run(b: _Batch) -> None:
            x = b.columns[src]
            missing = np.isnan(x)
            b.columns[out[0]] = np.where(missing, value, x)
            if step.indicator:
                b.columns[out[1]] = missing.astype(np.float64)

    elif isinstance(step, Log1p):

        def run(b: _Batch) -> None:
            x = b.columns[src]
            negative = x < 0
            if negative.any():
                b.rejects.append((negative, f"log1p({src}): negative value"))
                x = np.where(negative, np.nan, x)
            b.columns[out[0]] = np.log1p(x)

    elif isinstance(step, Clip):
        lo = -np.inf if step.lo is None else step.lo
        hi = np.inf if step.hi is None else step.hi

        def run(b: _Batch) -> None:
            b.columns[out[0]] = np.clip(b.columns[src], lo, hi)

    elif isinstance(step, Bucketize):
        edges = np.asarray(step.edges, dtype=np.float64)

        def run(b: _Batch) -> None:
            x = b.columns[src]
            missing = np.isnan(x)
            index = np.where(missing, np.nan, np.searchsorted(edges, x, side="right"))
            if step.encoding == "index":
                b.columns[out[0]] = index
                return
            for bucket, name in enumerate(out):
                b.columns[name] = np.where(missing, np.nan, index == bucket)

    elif isinstance(step, OneHot):
        categories = step.categories

        def run(b: _Batch) -> None:
            x = b.columns[src]
            if x.dtype == object and pd.isna(x).any():  # pd.NA cannot be compared; None can
                x = x.copy()
                x[pd.isna(x)] = None
            for category, name in zip(categories, out, strict=True):
                b.columns[name] = (x == category).astype(np.float64)

    elif isinstance(step, Ratio):
        fill = step.fill

        def run(b: _Batch) -> None:
            num, den = b.columns[cols[0]], b.columns[cols[1]]
            zero = den == 0
            quotient = num / np.where(zero, 1.0, den)
            b.columns[out[0]] = np.where(zero & ~np.isnan(num), fill, quotient)

    elif isinstance(step, Standardize):
        mean, std = params["mean"], params["std"]

        def run(b: _Batch) -> None:
            b.columns[out[0]] = (b.columns[src] - mean) / std

    elif isinstance(step, TimeSince):

        def run(b: _Batch) -> None:
            b.columns[out[0]] = (b.now_ms - b.columns[src]) / 1000.0

    else:

        def run(b: _Batch) -> None:
            b.columns[out[0]] = b.columns[src]

    return run


_PARAM_KEYS: dict[str, tuple[str, ...]] = {"standardize": ("mean", "std")}


def _param_keys(step: Step) -> tuple[str, ...]:
    if isinstance(step, FillMissing) and step.strategy != "constant":
        return ("value",)
    return _PARAM_KEYS.get(step.op, ())


def _fit_step(step: Step, batch: _Batch) -> dict[str, float]:
    keys = _param_keys(step)
    if not keys:
        return {}
    x = batch.columns[step.reads()[0]]
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise TransformError(f"cannot fit {step.op} on {step.reads()[0]!r}: no finite training values")
    if isinstance(step, FillMissing):
        return {"value": float(np.median(x) if step.strategy == "median" else np.mean(x))}
    std = float(np.std(x))
    return {"mean": float(np.mean(x)), "std": std if std > 0 and np.isfinite(std) else 1.0}


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class FittedTransform:
    """A spec plus its fitted parameters, compiled once into vectorised steps.

    Build it with `fit`, or load it with `from_json`/`from_dict` beside a model artifact.
    """

    __slots__ = ("_needs_now", "_plan", "input_kinds", "output_columns", "params", "spec", "version")

    def __init__(self, spec: TransformSpec, params: Sequence[Mapping[str, float]]) -> None:
        """Raises: TransformError when `params` do not match the fitted steps of `spec`."""
        if isinstance(params, str | bytes | Mapping) or len(params) != len(spec.steps):
            raise TransformError(f"expected a list of {len(spec.steps)} parameter sets, got {params!r}")
        checked: list[dict[str, float]] = []
        for i, (step, given) in enumerate(zip(spec.steps, params, strict=True)):
            keys = _param_keys(step)
            if not isinstance(given, Mapping) or set(given) != set(keys):
                raise TransformError(f"step {i} ({step.op}) needs params {list(keys)}, got {given!r}")
            try:
                values = {key: float(given[key]) for key in keys}
            except (TypeError, ValueError) as exc:
                raise TransformError(f"step {i} ({step.op}) has non-numeric params {given!r}") from exc
            if not all(np.isfinite(v) for v in values.values()) or values.get("std", 1.0) <= 0:
                raise TransformError(f"step {i} ({step.op}) has invalid params {values}")
            checked.append(values)
        self.spec = spec
        self.params: tuple[dict[str, float], ...] = tuple(checked)
        self.input_kinds = spec.input_kinds
        self._needs_now = "timestamp" in self.input_kinds.values()
        self.output_columns: tuple[str, ...] = spec.outputs
        self._plan = [_compile(step, p) for step, p in zip(spec.steps, self.params, strict=True)]
        body = {"format": TRANSFORM_FORMAT, "spec": spec.to_dict(), "params": list(self.params)}
        self.version: str = hashlib.sha256(_canonical(body).encode()).hexdigest()[:16]

    def transform(self, frame: Frame, now: Any = None) -> TransformResult:
        """Transform a batch.

        Args:
            frame: a pandas DataFrame or a dict of equal-length 1-D arrays holding the input columns.
            now: event time per row (epoch ms or datetime64), or one scalar; needed by time_since.
        Returns:
            TransformResult: float32 values in `output_columns` order, `row_ok`, `reasons`.
        Raises:
            TransformError: a missing input column, columns of different lengths, no/bad `now`.
        """
        batch = _read_batch(self.input_kinds, self._needs_now, frame, now)
        with np.errstate(all="ignore"):
            for run in self._plan:
                run(batch)
            values = np.empty((batch.n, len(self.output_columns)), dtype=np.float32)
            for j, column in enumerate(self.output_columns):
                values[:, j] = batch.columns[column]
        usable = np.isfinite(values) | np.isnan(values) if self.spec.allow_missing else np.isfinite(values)
        finite = np.asarray(usable.all(axis=1))
        row_ok = finite
        for mask, _ in batch.rejects:
            row_ok = row_ok & ~mask
        reasons = {} if row_ok.all() else self._reasons(values, finite, row_ok, batch.rejects)
        return TransformResult(values=values, row_ok=row_ok, reasons=reasons, columns=self.output_columns)

    def _reasons(
        self,
        values: np.ndarray,
        finite: np.ndarray,
        row_ok: np.ndarray,
        rejects: list[tuple[np.ndarray, str]],
    ) -> dict[int, str]:
        found: dict[int, list[str]] = {int(i): [] for i in np.flatnonzero(~row_ok)}
        for mask, reason in rejects:
            for i in np.flatnonzero(mask):
                found[int(i)].append(reason)
        for i in np.flatnonzero(~finite):
            allowed = np.isnan(values[i]) if self.spec.allow_missing else np.zeros(values.shape[1], bool)
            bad = [self.output_columns[j] for j in np.flatnonzero(~np.isfinite(values[i]) & ~allowed)]
            found[int(i)].append(f"non-finite output: {', '.join(bad)}")
        return {i: "; ".join(reasons) for i, reasons in found.items()}

    def __repr__(self) -> str:
        return f"FittedTransform(version={self.version!r}, outputs={len(self.output_columns)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSFORM_FORMAT,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "params": [dict(p) for p in self.params],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedTransform:
        """Raises: TransformError for another format, a bad spec, or a version that does not match."""
        if data.get("format") != TRANSFORM_FORMAT:
            raise TransformError(
                f"transform format {data.get('format')!r}, this code reads {TRANSFORM_FORMAT}"
            )
        fitted = cls(TransformSpec.from_dict(data.get("spec", {})), data.get("params", []))
        if "version" in data and data["version"] != fitted.version:
            raise TransformError(f"stored version {data['version']} != recomputed {fitted.version}")
        return fitted

    @classmethod
    def from_json(cls, text: str | bytes) -> FittedTransform:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TransformError(f"transform JSON is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise TransformError("transform JSON must be an object")
        return cls.from_dict(data)


def identity(columns: Sequence[str]) -> FittedTransform:
    """The transform of a model that reads its features as they are stored, missing values included
    (numeric columns; a model registered without a transform of its own)."""
    steps = [{"op": "passthrough", "column": column} for column in columns]
    spec = TransformSpec.from_dict({"steps": steps, "outputs": list(columns), "allow_missing": True})
    return FittedTransform(spec, [{} for _ in spec.steps])


def fit(spec: TransformSpec, frame: Frame, now: Any = None) -> FittedTransform:
    """Learn the fitted parameters of `spec` once, on training data.

    Steps run in order, so a step's statistics see the column as earlier steps left it.

    Args:
        spec: the transform spec.
        frame: training data (DataFrame or dict of arrays).
        now: event time per training row; needed when the spec has time_since.
    Returns:
        FittedTransform ready to transform new data with these parameters.
    Raises:
        TransformError: a missing column, or a statistic with no finite training value.
    """
    kinds = spec.input_kinds
    batch = _read_batch(kinds, "timestamp" in kinds.values(), frame, now)
    params: list[dict[str, float]] = []
    with np.errstate(all="ignore"):
        for step in spec.steps:
            params.append(_fit_step(step, batch))
            _compile(step, params[-1])(batch)
    return FittedTransform(spec, params)
