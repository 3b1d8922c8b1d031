"""Model runtime: loaded boosters by version, one `inplace_predict` per model per batch, off the loop.

`Backbone.predict_batch` scores one batch for the golden model and every experiment, each model in
ONE call on exactly its rows, all models in parallel in bounded thread pools. The golden answer never
waits on an experiment for longer than a bounded grace: a slow or failing experiment becomes an entry
in `BatchScores.failed`, never an exception. `MicroBatcher` gathers single rows (HTTP endpoint,
explainer) into batches, MLServer-style: a bounded queue, a future per request, flush on size or time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rig.errors import BackboneError

if TYPE_CHECKING:
    import xgboost

    from rig.models.registry import ModelRegistry

log = logging.getLogger(__name__)

# Threads per booster: 1. Measured by bench/bench_backbone.py on this 2-core machine (16 features, 200 trees
# of depth 6, two models on the same batch, medians of 7 interleaved trials, machine shared with other
# work): nthread=1 per model with the two models in parallel threads vs nthread=2 one after the other
# took 4.9 vs 5.1 ms, 5.1 vs 5.6 ms and 6.3 vs 6.7 ms for 1,000 rows, and 0.92 vs 1.06 ms for 10 rows;
# in one run while the neighbours were busy, 10.2 vs 48.0 ms (an OpenMP team of 2 stalls when another
# process holds one of the two cores). One thread per model also avoids oversubscription: the golden
# and each experiment already run in their own pool threads.
MODEL_NTHREAD = 1


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
        wrap_model: ModelWrapper | None = None,
    ) -> None:
        """A runtime with no model loaded.

        Args:
            registry: where versions are loaded from (checksums verified on every load).
            max_workers: threads per pool (golden pool, experiment pool).
            timeout_s: longest wait for any model in one batch; a golden that takes longer is an error.
            grace_s: after the golden answered, experiments get max(grace_s, the golden's time) more,
                still within `timeout_s` of the start. This bounds how long the golden answer waits.
            wrap_model: optional hook around each verified booster (instrumentation, tests).

        Raises:
            BackboneError: a bound is not positive.
        """
        if max_workers < 1 or timeout_s <= 0 or grace_s < 0:
            raise BackboneError(
                "need max_workers >= 1, timeout_s > 0, grace_s >= 0; "
                f"got {max_workers}, {timeout_s}, {grace_s}"
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
            fresh[version] = booster if self._wrap_model is None else self._wrap_model(version, booster)
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
        self, features: np.ndarray, score_rows: Mapping[str, np.ndarray], golden: str
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

        Returns:
            BatchScores with the golden's scores and every experiment's scores or failure reason.

        Raises:
            BackboneError: bad features, golden not loaded or without rows, golden failed or timed out,
                or the backbone is closed.
        """
        if self._closed:
            raise BackboneError("backbone is closed")
        if not isinstance(features, np.ndarray) or features.ndim != 2 or features.dtype != np.float32:
            raise BackboneError("features must be a 2-D float32 numpy array")
        if golden not in score_rows:
            raise BackboneError(f"golden {golden} has no entry in score_rows")
        golden_model = self._models.get(golden)
        if golden_model is None:
            raise BackboneError(f"golden model {golden} is not loaded (loaded: {', '.join(self.loaded())})")

        start = time.perf_counter()
        golden_call = self._submit(self._golden_pool, golden, golden_model, features, score_rows[golden])
        experiments: dict[str, _Call] = {}
        failed: dict[str, str] = {}
        for version, rows in score_rows.items():
            if version == golden:
                continue
            model = self._models.get(version)
            if model is None:
                failed[version] = "not loaded"
            elif self._abandoned.get(version, 0):
                failed[version] = "skipped: an earlier call was abandoned (timed out) and is still running"
            else:
                experiments[version] = self._submit(self._experiment_pool, version, model, features, rows)
        try:
            await asyncio.wait([golden_call.future], timeout=self._timeout_s)
            answer = _outcome_of(golden_call)
            if answer is None:
                raise BackboneError(f"golden model {golden} timed out after {self._timeout_s * 1e3:.0f} ms")
            if answer.scores is None:
                raise BackboneError(f"golden model {golden} failed: {answer.error!r}") from answer.error

            golden_took = answer.finished_at - start
            deadline = min(start + self._timeout_s, answer.finished_at + max(self._grace_s, golden_took))
            if experiments:
                remaining = max(0.0, deadline - time.perf_counter())
                await asyncio.wait([call.future for call in experiments.values()], timeout=remaining)
            cut_at = time.perf_counter()

            scores = {golden: answer.scores}
            elapsed_ms = {golden: golden_took * 1e3}
            for version, call in experiments.items():
                outcome = _outcome_of(call)
                if outcome is None:
                    elapsed_ms[version] = (cut_at - start) * 1e3
                    failed[version] = (
                        f"timed out: cut {(cut_at - answer.finished_at) * 1e3:.1f} ms after the golden "
                        f"answered, {elapsed_ms[version]:.1f} ms into the batch"
                    )
                    continue
                elapsed_ms[version] = (outcome.finished_at - start) * 1e3
                if outcome.scores is None:
                    failed[version] = f"{type(outcome.error).__name__}: {outcome.error}"
                else:
                    scores[version] = outcome.scores
            return BatchScores(scores=scores, failed=failed, elapsed_ms=elapsed_ms)
        finally:
            for call in (golden_call, *experiments.values()):
                if not call.thread_future.done():
                    self._abandon(call)

    def _submit(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        version: str,
        model: Model,
        features: np.ndarray,
        rows: np.ndarray,
    ) -> _Call:
        thread_future = pool.submit(_score, model, features, rows)
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


def _score(model: Model, features: np.ndarray, rows: np.ndarray) -> _Outcome:
    """Runs in a worker thread: one `inplace_predict` on the version's rows."""
    try:
        data = _rows_of(features, rows)
        if data.shape[0] == 0:
            return _Outcome(np.empty(0), None, time.perf_counter())
        scores = np.asarray(model.inplace_predict(data), dtype=np.float64)
        if scores.shape != (data.shape[0],):
            raise BackboneError(f"model returned shape {scores.shape} for {data.shape[0]} rows")
        return _Outcome(scores, None, time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - a model may raise anything; it is returned as data
        return _Outcome(None, exc, time.perf_counter())


class MicroBatcher:
    """Gathers single rows into batches for one `predict_fn` call (HTTP endpoint, explainer).

    A bounded queue (a full queue makes `submit` wait: backpressure), a future per request, a batch
    flushed when it holds `max_batch` rows or `max_wait_s` after its first row, one batch in flight at
    a time, and an error handed to every caller of the failed batch. The flushing task is supervised:
    if it dies, every waiting caller gets a BackboneError and `stop()` raises it.

    Wiring to the backbone, golden only:
        async def predict(x): return (await backbone.predict_batch(x, {v: np.arange(len(x))}, v)).scores[v]
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Awaitable[np.ndarray]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        """A stopped batcher; `start()` it inside the event loop that will call `submit`.

        Raises:
            BackboneError: a bound is not positive.
        """
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise BackboneError(
                "need max_batch >= 1, max_wait_s >= 0, max_queue >= 1; "
                f"got {max_batch}, {max_wait_s}, {max_queue}"
            )
        self._predict_fn = predict_fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[float]]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._crash: BaseException | None = None

    @property
    def queued(self) -> int:
        """Rows waiting in the queue (not yet taken into a batch)."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the flushing task (once).

        Raises:
            BackboneError: already started or stopped.
        """
        if self._task is not None or self._stopped:
            raise BackboneError("micro-batcher can be started once")
        self._task = asyncio.create_task(self._flush_forever(), name="rig-micro-batcher")
        self._task.add_done_callback(self._on_flusher_done)

    async def stop(self) -> None:
        """Stop the flushing task; callers still waiting (queued or in flight) get a BackboneError.

        Raises:
            BackboneError: the flushing task had crashed (the crash is its cause).
        """
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        self._fail_queued("micro-batcher stopped")
        if self._crash is not None:
            raise BackboneError("micro-batcher's flushing task crashed") from self._crash

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def submit(self, row: np.ndarray) -> float:
        """Score one row in the next batch; waits while the queue is full.

        Raises:
            BackboneError: not running, the row is not 1-D, or its batch failed (cause attached).
        """
        self._check_running()
        row = np.asarray(row)
        if row.ndim != 1:
            raise BackboneError(f"submit takes one 1-D row, got shape {row.shape}")
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        await self._queue.put((row, future))
        if not future.done():
            self._check_running()  # stopped or crashed while this call waited for room
        return await future

    def _check_running(self) -> None:
        if self._crash is not None:
            raise BackboneError("micro-batcher's flushing task crashed") from self._crash
        if self._task is None or self._stopped:
            raise BackboneError("micro-batcher is not running (call start(), and not after stop())")

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                await self._fill(batch)
                await self._flush(batch)
            except BaseException as exc:  # stopped, or the flusher dies: nobody may be left waiting
                stopped = isinstance(exc, asyncio.CancelledError)
                reason = "micro-batcher stopped" if stopped else "micro-batcher's flushing task crashed"
                for _, future in batch:
                    _fail(
                        future,
                        BackboneError(f"{reason} before this batch was scored"),
                        None if stopped else exc,
                    )
                raise

    async def _fill(self, batch: list[tuple[np.ndarray, asyncio.Future[float]]]) -> None:
        """Add queued rows to `batch` until it holds `max_batch` or `max_wait_s` passed since its first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return

    async def _flush(self, batch: list[tuple[np.ndarray, asyncio.Future[float]]]) -> None:
        """One `predict_fn` call for the rows whose callers still wait; its error goes to each of them."""
        waiting = [(row, future) for row, future in batch if not future.done()]  # skip cancelled callers
        if not waiting:
            return
        try:
            scores = np.asarray(await self._predict_fn(np.stack([row for row, _ in waiting])))
            if scores.shape != (len(waiting),):
                raise BackboneError(f"predict_fn returned shape {scores.shape} for {len(waiting)} rows")
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller of the batch
            for _, future in waiting:
                _fail(future, BackboneError(f"batch of {len(waiting)} rows failed: {exc!r}"), cause=exc)
            return
        for (_, future), score in zip(waiting, scores.tolist(), strict=True):
            if not future.done():
                future.set_result(score)

    def _on_flusher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._crash = task.exception()
        if self._crash is not None:
            log.error("micro_batcher_crashed error=%r", self._crash)
            self._fail_queued("micro-batcher's flushing task crashed", cause=self._crash)

    def _fail_queued(self, reason: str, cause: BaseException | None = None) -> None:
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            _fail(future, BackboneError(reason), cause)


def _fail(future: asyncio.Future[float], error: BackboneError, cause: BaseException | None = None) -> None:
    if not future.done():
        error.__cause__ = cause
        future.set_exception(error)
