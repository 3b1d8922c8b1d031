"""Model runtime: loaded boosters by version, one `inplace_predict` per model per batch.

`Backbone.predict_batch` scores one batch for the golden model and every experiment, each model in
ONE call on exactly its rows, all models in parallel in bounded thread pools. The golden answer never
waits on an experiment for longer than a bounded grace: a slow or failing experiment becomes an entry
in `BatchScores.failed`, never an exception.

A batch of at most `inline_rows` rows is scored on the calling thread instead, golden first. Handing
three calls to pool threads and back (futex wake-ups, the event loop's self-pipe, the GIL, a cold
thread) costs ~0.8 ms of CPU per batch whatever its size, more than three models take on a few
hundred rows. Measured in-process on this 2-core machine (golden + 2 shadows, 200 trees each, CPU of
`predict_batch` with every thread): 1 row 1,006 µs in the pools against 230 µs inline; 250 rows 9.4
against 6.3 µs per row; 500 rows 6.9 against 5.5 µs per row. Each call goes through
`rig.models.dense.DenseScorer`: XGBoost's own C call without ~110 µs of Python around it. A version
whose inline calls take longer than `INLINE_CALL_BUDGET_S` `INLINE_SLOW_CALLS` times in a row is
scored in the pools, where the timeouts apply, for `INLINE_RETRY_S`; then inline again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rig.errors import BackboneError, GoldenUnavailable
from rig.models.dense import MODEL_NTHREAD, DenseScorer

if TYPE_CHECKING:
    import xgboost

    from rig.models.registry import ModelRegistry

log = logging.getLogger(__name__)

INLINE_CALL_BUDGET_S = 0.005
"""Longest an inline call may take (it holds the event loop) before its version goes to the pools."""
INLINE_SLOW_CALLS = 3
"""Inline calls over the budget in a row that send a version to the pools. One slow call is
more often the host's hiccup than the model's cost: on this shared 2-core machine a 32-row call that
takes ~0.13 ms took 6.9 ms once, in a worker at 6,000 req/s, and every batch paid the pools' thread
hand-overs from then on."""
INLINE_RETRY_S = 60.0
"""How long a version sent to the pools stays there before it is tried inline again. Its slow calls may
have been the host's, not its own: in a worker with every role an inline call also waits for the GIL
that the explainer and the join hold, and in one run at 6,000 req/s (bench/bench_pipeline.py, py-spy)
such waits sent every model to the pools. For good, the worker would have paid the pools' hand-overs
for the rest of its life."""


class Model(Protocol):
    """What the backbone needs from a model: XGBoost's `inplace_predict` on a 2-D float32 array."""

    def inplace_predict(self, data: np.ndarray) -> Any:
        """One score per row of `data`."""
        ...


ModelWrapper = Callable[[str, "xgboost.Booster"], Model]
"""Called with (version, verified booster) after loading; returns the model the backbone will call."""


@dataclass(frozen=True)
class BatchScores:
    """Result of one batch.

    Attributes:
        scores: per version, float64 scores aligned to that version's rows (the golden is always here).
        failed: per experiment version that produced no scores, the reason (error, timeout, not loaded).
        elapsed_ms: per version that was started, milliseconds from the start of the batch until its
            scores or error were ready, or until it was cut off (queueing in the pool included).
    """

    scores: dict[str, np.ndarray]
    failed: dict[str, str]
    elapsed_ms: dict[str, float]


@dataclass(frozen=True)
class _Outcome:
    """What a worker thread hands back; a model error is data here, never an exception."""

    scores: np.ndarray | None
    error: Exception | None
    finished_at: float


@dataclass(frozen=True)
class _Call:
    version: str
    thread_future: concurrent.futures.Future[_Outcome]
    future: asyncio.Future[_Outcome]


class Backbone:
    """Boosters by version and the thread pools that score them.

    The golden model runs in its own pool and experiments share another, both of `max_workers` threads:
    an experiment whose calls hang can fill the experiment pool but never delay the golden.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        max_workers: int = 2,
        timeout_s: float = 2.0,
        *,
        grace_s: float = 0.05,
        inline_rows: int = 0,
        wrap_model: ModelWrapper | None = None,
    ) -> None:
        """A runtime with no model loaded.

        Args:
            registry: where versions are loaded from (checksums verified on every load).
            max_workers: threads per pool (golden pool, experiment pool).
            timeout_s: longest wait for any model in one batch; a golden that takes longer is an error.
            grace_s: after the golden answered, experiments get max(grace_s, the golden's time) more,
                still within `timeout_s` of the start. This bounds how long the golden answer waits.
            inline_rows: batches of at most this many rows are scored on the calling thread, one
                model after the other (see the module's docstring); 0: never.
            wrap_model: optional hook around each verified booster (instrumentation, tests); without
                it each booster is scored through a `DenseScorer` (XGBoost's C call, no Python
                wrapper work per call).

        Raises:
            BackboneError: a bound is not positive.
        """
        if max_workers < 1 or timeout_s <= 0 or grace_s < 0 or inline_rows < 0:
            raise BackboneError(
                "need max_workers >= 1, timeout_s > 0, grace_s >= 0, inline_rows >= 0; "
                f"got {max_workers}, {timeout_s}, {grace_s}, {inline_rows}"
            )
        self._registry = registry
        self._timeout_s = timeout_s
        self._grace_s = grace_s
        self._wrap_model = wrap_model
        self._models: dict[str, Model] = {}
        self._golden_pool = concurrent.futures.ThreadPoolExecutor(max_workers, "rig-golden")
        self._experiment_pool = concurrent.futures.ThreadPoolExecutor(max_workers, "rig-experiment")
        self._lock = threading.Lock()
        self._abandoned: dict[str, int] = {}  # timed-out calls still running, per version
        self._inline_rows = inline_rows
        self._pooled: dict[str, float] = {}  # version -> until when (perf_counter) it is scored in the pools
        self._slow_inline: dict[str, int] = {}  # inline calls over the budget in a row, per version
        self._closed = False

    def ensure_loaded(self, versions: Iterable[str]) -> tuple[str, ...]:
        """Load every version not loaded yet (all or nothing). Blocking: off the loop, use a thread.

        Returns:
            The versions that were newly loaded.

        Raises:
            ModelIntegrityError: a file is missing or its checksum differs; nothing is loaded then.
            RegistryError: unknown version; nothing is loaded then.
        """
        fresh: dict[str, Model] = {}
        for version in dict.fromkeys(versions):
            if version in self._models:
                continue
            booster = self._registry.load(version)
            booster.set_param({"nthread": MODEL_NTHREAD})
            wrap = self._wrap_model
            fresh[version] = DenseScorer(booster) if wrap is None else wrap(version, booster)
        self._models.update(fresh)
        return tuple(fresh)

    def unload(self, version: str) -> bool:
        """Forget a version (calls in flight finish with the model they hold). True if it was loaded."""
        return self._models.pop(version, None) is not None

    def loaded(self) -> tuple[str, ...]:
        """Loaded versions, sorted."""
        return tuple(sorted(self._models))

    def predict_now(self, version: str, features: np.ndarray) -> np.ndarray:
        """Score rows with a loaded version on the calling thread (warm-up, explanations; not the hot path).

        Raises:
            BackboneError: the version is not loaded.
        """
        model = self._models.get(version)
        if model is None:
            raise BackboneError(f"model {version} is not loaded")
        return np.asarray(model.inplace_predict(features), dtype=np.float64)

    def close(self) -> None:
        """Stop both pools; queued calls are dropped and later `predict_batch` calls raise."""
        self._closed = True
        self._golden_pool.shutdown(wait=False, cancel_futures=True)
        self._experiment_pool.shutdown(wait=False, cancel_futures=True)

    async def predict_batch(
        self,
        features: np.ndarray,
        score_rows: Mapping[str, np.ndarray],
        golden: str,
        columns: Mapping[str, np.ndarray] | None = None,
    ) -> BatchScores:
        """Score one batch: golden and every experiment, one `inplace_predict` each, in parallel.

        The golden is awaited for up to `timeout_s`; experiments then get a bounded grace (see
        `__init__`). An experiment that fails, is not loaded, times out, or still runs a call that timed
        out earlier is reported in `failed`; a timed-out call's result is discarded. If the golden
        fails, the caller owns the batch: retry it, or send its requests to the DLQ.

        Args:
            features: 2-D float32 array, one row per request of the batch.
            score_rows: per version, the row indices (1-D ints, or a boolean mask) it scores; must
                include `golden`. Rows covering the whole batch in order are passed without a copy.
            golden: the version whose answer is returned to users.
            columns: per version, the columns of `features` it reads (`rig.transform.layout`); every
                column when None.

        Returns:
            BatchScores with the golden's scores and every experiment's scores or failure reason.

        Raises:
            GoldenUnavailable: the golden is not loaded, failed or timed out (wait and retry).
            BackboneError: bad features, golden without rows, or the backbone is closed.
        """
        if self._closed:
            raise BackboneError("backbone is closed")
        if not isinstance(features, np.ndarray) or features.ndim != 2 or features.dtype != np.float32:
            raise BackboneError("features must be a 2-D float32 numpy array")
        if golden not in score_rows:
            raise BackboneError(f"golden {golden} has no entry in score_rows")
        golden_model = self._models.get(golden)
        if golden_model is None:
            raise GoldenUnavailable(
                f"golden model {golden} is not loaded (loaded: {', '.join(self.loaded())})"
            )

        own = columns or {}
        if features.shape[0] <= self._inline_rows and not self._in_pools(score_rows):
            return self._predict_inline(golden_model, features, score_rows, golden, own)
        tally = _Tally(time.perf_counter())
        golden_call = self._submit(
            self._golden_pool, golden, golden_model, features, score_rows[golden], own.get(golden)
        )
        experiments: dict[str, _Call] = {}
        for version, rows, model in self._experiments(score_rows, golden, tally.failed):
            experiments[version] = self._submit(
                self._experiment_pool, version, model, features, rows, own.get(version)
            )
        try:
            await asyncio.wait([golden_call.future], timeout=self._timeout_s)
            answer = _outcome_of(golden_call)
            if answer is None:
                raise GoldenUnavailable(
                    f"golden model {golden} timed out after {self._timeout_s * 1e3:.0f} ms"
                )
            tally.add_golden(golden, answer)
            deadline = self._deadline(tally.start, answer.finished_at)
            if experiments:
                remaining = max(0.0, deadline - time.perf_counter())
                await asyncio.wait([call.future for call in experiments.values()], timeout=remaining)
            cut_at = time.perf_counter()
            for version, call in experiments.items():
                outcome = _outcome_of(call)
                if outcome is None:
                    tally.elapsed_ms[version] = (cut_at - tally.start) * 1e3
                    tally.failed[version] = (
                        f"timed out: cut {(cut_at - answer.finished_at) * 1e3:.1f} ms after the golden "
                        f"answered, {tally.elapsed_ms[version]:.1f} ms into the batch"
                    )
                else:
                    tally.add(version, outcome)
            return tally.scores_of_batch()
        finally:
            for call in (golden_call, *experiments.values()):
                if not call.thread_future.done():
                    self._abandon(call)

    def _predict_inline(
        self,
        golden_model: Model,
        features: np.ndarray,
        score_rows: Mapping[str, np.ndarray],
        golden: str,
        columns: Mapping[str, np.ndarray],
    ) -> BatchScores:
        """`predict_batch` on the calling thread: the golden, then each experiment while the golden's
        grace lasts (the same deadline as in the pools); the rest are reported as cut."""
        tally = _Tally(time.perf_counter())
        answer = self._score_inline(golden, golden_model, features, score_rows[golden], columns)
        tally.add_golden(golden, answer)
        deadline = self._deadline(tally.start, answer.finished_at)
        for version, rows, model in self._experiments(score_rows, golden, tally.failed):
            if time.perf_counter() >= deadline:
                tally.failed[version] = "timed out: cut before it ran, the golden's grace had passed"
            else:
                tally.add(version, self._score_inline(version, model, features, rows, columns))
        return tally.scores_of_batch()

    def _in_pools(self, versions: Iterable[str]) -> bool:
        """Whether any of these versions is still scored in the pools after slow inline calls."""
        if not self._pooled:
            return False
        now = time.perf_counter()
        return any(self._pooled.get(version, 0.0) > now for version in versions)

    def _experiments(
        self, score_rows: Mapping[str, np.ndarray], golden: str, failed: dict[str, str]
    ) -> Iterator[tuple[str, np.ndarray, Model]]:
        """(version, rows, model) of each experiment to score in this batch; the others are added to
        `failed` with the reason."""
        for version, rows in score_rows.items():
            if version == golden:
                continue
            model = self._models.get(version)
            if model is None:
                failed[version] = "not loaded"
            elif self._abandoned.get(version, 0):
                failed[version] = "skipped: an earlier call was abandoned (timed out) and is still running"
            else:
                yield version, rows, model

    def _deadline(self, start: float, golden_finished: float) -> float:
        """When experiments are cut: the golden's time again (at least the grace), within the timeout."""
        return min(start + self._timeout_s, golden_finished + max(self._grace_s, golden_finished - start))

    def _score_inline(
        self,
        version: str,
        model: Model,
        features: np.ndarray,
        rows: np.ndarray,
        columns: Mapping[str, np.ndarray],
    ) -> _Outcome:
        began = time.perf_counter()
        outcome = _score(model, features, rows, columns.get(version))
        took = outcome.finished_at - began
        slow = self._slow_inline.get(version, 0) + 1 if took > INLINE_CALL_BUDGET_S else 0
        self._slow_inline[version] = slow
        if slow >= INLINE_SLOW_CALLS:
            self._pooled[version] = outcome.finished_at + INLINE_RETRY_S
            self._slow_inline[version] = 0  # back inline, it needs as many slow calls in a row again
            log.warning(
                "model_scored_in_pools version=%s for_s=%.0f inline_call_ms=%.1f budget_ms=%.1f in_a_row=%d",
                version,
                INLINE_RETRY_S,
                took * 1e3,
                INLINE_CALL_BUDGET_S * 1e3,
                slow,
            )
        return outcome

    def _submit(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        version: str,
        model: Model,
        features: np.ndarray,
        rows: np.ndarray,
        columns: np.ndarray | None,
    ) -> _Call:
        thread_future = pool.submit(_score, model, features, rows, columns)
        return _Call(version, thread_future, asyncio.wrap_future(thread_future))

    def _abandon(self, call: _Call) -> None:
        """Drop a call nobody waits for: cancelled if not started, else counted until its thread ends."""
        call.future.cancel()
        if call.thread_future.cancel():
            return
        with self._lock:
            self._abandoned[call.version] = self._abandoned.get(call.version, 0) + 1
        log.warning("model_call_abandoned version=%s reason=timeout_or_cancelled", call.version)
        call.thread_future.add_done_callback(lambda _: self._release(call.version))

    def _release(self, version: str) -> None:
        with self._lock:
            left = self._abandoned.get(version, 0) - 1
            if left > 0:
                self._abandoned[version] = left
            else:
                self._abandoned.pop(version, None)


@dataclass
class _Tally:
    """What one batch's calls gave, as they come in."""

    start: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_ms: dict[str, float] = field(default_factory=dict)

    def add_golden(self, golden: str, outcome: _Outcome) -> None:
        """The golden's scores; a golden that failed makes the whole batch wait and try again."""
        if outcome.scores is None:
            raise GoldenUnavailable(f"golden model {golden} failed: {outcome.error!r}") from outcome.error
        self.add(golden, outcome)

    def add(self, version: str, outcome: _Outcome) -> None:
        self.elapsed_ms[version] = (outcome.finished_at - self.start) * 1e3
        if outcome.scores is None:
            self.failed[version] = f"{type(outcome.error).__name__}: {outcome.error}"
        else:
            self.scores[version] = outcome.scores

    def scores_of_batch(self) -> BatchScores:
        return BatchScores(scores=self.scores, failed=self.failed, elapsed_ms=self.elapsed_ms)


def _outcome_of(call: _Call) -> _Outcome | None:
    """The call's outcome if its thread is done (read from the thread's future, which is set first)."""
    if not call.thread_future.done():
        return None
    if call.thread_future.cancelled():
        return _Outcome(None, BackboneError("cancelled before it ran (backbone closed)"), time.perf_counter())
    return call.thread_future.result()


def _rows_of(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`features[rows]`, or `features` itself (no copy) when the rows are the whole batch in order."""
    n = features.shape[0]
    rows = np.asarray(rows)
    if rows.size == 0:
        return features[:0]
    if rows.dtype == np.bool_:
        if rows.shape != (n,):
            raise BackboneError(f"boolean row mask has shape {rows.shape}, batch has {n} rows")
        return features if rows.all() else features[rows]
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise BackboneError("rows must be 1-D integer indices or a boolean mask")
    if rows.min() < 0 or rows.max() >= n:
        raise BackboneError(f"row indices must be in [0, {n}), got [{rows.min()}, {rows.max()}]")
    if rows.shape[0] == n and np.array_equal(rows, np.arange(n)):
        return features
    return features[rows]


def _score(model: Model, features: np.ndarray, rows: np.ndarray, columns: np.ndarray | None) -> _Outcome:
    """One `inplace_predict` on the version's rows (and columns), in a pool thread or inline."""
    try:
        data = _rows_of(features, rows)
        if columns is not None:
            data = data[:, columns]
        if data.shape[0] == 0:
            return _Outcome(np.empty(0), None, time.perf_counter())
        scores = np.asarray(model.inplace_predict(data), dtype=np.float64)
        if scores.shape != (data.shape[0],):
            raise BackboneError(f"model returned shape {scores.shape} for {data.shape[0]} rows")
        return _Outcome(scores, None, time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - a model may raise anything; it is returned as data
        return _Outcome(None, exc, time.perf_counter())
