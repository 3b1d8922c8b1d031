"""Backbone: exact scores, experiments never break or hold up the golden answer."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost

from rig.errors import BackboneError, GoldenUnavailable, ModelIntegrityError
from rig.models.dense import MODEL_NTHREAD
from rig.models.registry import MODEL_FILE, ModelRegistry
from rig.serving import backbone as backbone_module
from rig.serving.backbone import (
    INLINE_CALL_BUDGET_S,
    INLINE_RETRY_S,
    INLINE_SLOW_CALLS,
    Backbone,
    BatchScores,
    Model,
    ModelWrapper,
)

FEATURES = ("a", "b", "c", "d")
N_ROWS = 200


def train(seed: int, features: tuple[str, ...] = FEATURES) -> xgboost.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(features))).astype(np.float32)
    y = (x[:, 0] - 0.7 * x[:, -1] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    dtrain = xgboost.DMatrix(x, label=y, feature_names=list(features))
    params = {"objective": "binary:logistic", "max_depth": 4, "seed": seed}
    return xgboost.train(params, dtrain, num_boost_round=15)


@dataclass(frozen=True)
class World:
    registry: ModelRegistry
    golden: str
    experiment_a: str
    experiment_b: str
    features: np.ndarray


@pytest.fixture
def world(tmp_path: Path) -> World:
    registry = ModelRegistry(tmp_path / "models")
    versions = [registry.save(train(seed), "risk", FEATURES).version for seed in (1, 2, 3)]
    features = np.random.default_rng(9).normal(size=(N_ROWS, len(FEATURES))).astype(np.float32)
    golden, experiment_a, experiment_b = versions
    return World(registry, golden, experiment_a, experiment_b, features=features)


@pytest.fixture
def backbones() -> Iterator[list[Backbone]]:
    """Backbones made by a test; closed afterwards."""
    made: list[Backbone] = []
    yield made
    for backbone in made:
        backbone.close()


class HeldModel:
    """Wraps a booster; every call waits until `release` is set (bounded, so no thread outlives a test)."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls = 0

    def inplace_predict(self, data: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.release.wait(timeout=30)
        try:
            return self.inner.inplace_predict(data)
        finally:
            self.finished.set()


class RecordingModel:
    """Wraps a booster and keeps the array of every call."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.seen: list[np.ndarray] = []

    def inplace_predict(self, data: np.ndarray) -> np.ndarray:
        self.seen.append(data)
        return self.inner.inplace_predict(data)


class FakeClock:
    """Stands in for the backbone's `time`: `perf_counter` moves only when a model call moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class ThreadRecordingModel:
    """Wraps a booster; keeps the name of the thread of every call, and sleeps `delay_s` in each (or,
    with a `clock`, moves that clock by `delay_s`: the call takes exactly that long to the backbone)."""

    def __init__(self, inner: Model, delay_s: float = 0.0, clock: FakeClock | None = None) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.clock = clock
        self.threads: list[str] = []

    def inplace_predict(self, data: np.ndarray) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        if self.clock is not None:
            self.clock.now += self.delay_s
        else:
            time.sleep(self.delay_s)
        return self.inner.inplace_predict(data)


class BarrierModel:
    """Wraps a booster; predicts only once `parties` calls are inside at the same time."""

    def __init__(self, inner: Model, barrier: threading.Barrier) -> None:
        self.inner = inner
        self.barrier = barrier

    def inplace_predict(self, data: np.ndarray) -> np.ndarray:
        self.barrier.wait()
        return self.inner.inplace_predict(data)


def holding(held_version: str, held: HeldModel) -> ModelWrapper:
    """A `wrap_model` hook that swaps in `held` for one version and leaves the others alone."""
    return lambda version, booster: held if version == held_version else booster


def reference(world: World, version: str, rows: np.ndarray) -> np.ndarray:
    return world.registry.load(version).inplace_predict(world.features[rows])


# --- Backbone -------------------------------------------------------------------------------------------


def test_batch_scores_equal_inplace_predict_on_each_versions_rows(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    rng = np.random.default_rng(4)
    score_rows = {
        world.golden: np.arange(N_ROWS),
        world.experiment_a: np.arange(0, N_ROWS, 2),
        world.experiment_b: rng.permutation(N_ROWS)[:37],  # unsorted subset
    }

    result = asyncio.run(backbone.predict_batch(world.features, score_rows, world.golden))

    assert isinstance(result, BatchScores)
    assert result.failed == {}
    assert set(result.scores) == set(score_rows) == set(result.elapsed_ms)
    for version, rows in score_rows.items():
        assert result.scores[version].dtype == np.float64
        np.testing.assert_allclose(result.scores[version], reference(world, version, rows), rtol=0, atol=1e-7)
    # Different models really give different answers, so the check above tells versions apart.
    assert not np.allclose(result.scores[world.golden][::2], result.scores[world.experiment_a])


def test_boolean_masks_select_the_same_rows_as_indices(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a])
    mask = np.zeros(N_ROWS, dtype=bool)
    mask[[3, 50, 199]] = True

    result = asyncio.run(
        backbone.predict_batch(world.features, {world.golden: mask, world.experiment_a: mask}, world.golden)
    )

    expected = reference(world, world.experiment_a, np.array([3, 50, 199]))
    np.testing.assert_allclose(result.scores[world.experiment_a], expected, rtol=0, atol=1e-7)
    assert result.scores[world.golden].shape == (3,)


def test_each_model_gets_one_call_and_full_batches_are_not_copied(world: World, backbones: list) -> None:
    recorders: dict[str, RecordingModel] = {}

    def record(version: str, booster: xgboost.Booster) -> Model:
        recorders[version] = RecordingModel(booster)
        return recorders[version]

    backbone = Backbone(world.registry, wrap_model=record)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    all_rows_mask = np.ones(N_ROWS, dtype=bool)
    score_rows = {
        world.golden: np.arange(N_ROWS),
        world.experiment_a: all_rows_mask,
        world.experiment_b: [5, 6],
    }

    # A list of rows too: rig types the rows as arrays, and the test checks a list is taken as well.
    asyncio.run(backbone.predict_batch(world.features, score_rows, world.golden))  # type: ignore[arg-type]

    assert [len(recorders[v].seen) for v in score_rows] == [1, 1, 1]
    assert recorders[world.golden].seen[0] is world.features
    assert recorders[world.experiment_a].seen[0] is world.features
    selected = recorders[world.experiment_b].seen[0]
    assert selected.shape == (2, len(FEATURES)) and not np.shares_memory(selected, world.features)


def test_golden_and_experiments_run_at_the_same_time(world: World, backbones: list) -> None:
    # Each model blocks until all three are inside predict: run one after another, they would break it.
    barrier = threading.Barrier(3, timeout=10)
    backbone = Backbone(world.registry, wrap_model=lambda _, booster: BarrierModel(booster, barrier))
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    rows = np.arange(N_ROWS)
    score_rows = {world.golden: rows, world.experiment_a: rows, world.experiment_b: rows}

    result = asyncio.run(backbone.predict_batch(world.features, score_rows, world.golden))

    assert result.failed == {}
    assert set(result.scores) == set(score_rows)


def test_loaded_boosters_use_the_chosen_thread_count(world: World, backbones: list) -> None:
    boosters: list[xgboost.Booster] = []

    def kept(_version: str, booster: xgboost.Booster) -> xgboost.Booster:
        boosters.append(booster)
        return booster

    backbone = Backbone(world.registry, wrap_model=kept)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden])
    config = json.loads(boosters[0].save_config())
    assert config["learner"]["generic_param"]["nthread"] == str(MODEL_NTHREAD)


def test_load_unload_and_loaded_track_versions(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    assert backbone.ensure_loaded([world.golden, world.experiment_a, world.golden]) == (
        world.golden,
        world.experiment_a,
    )
    assert backbone.ensure_loaded([world.golden]) == ()
    assert backbone.loaded() == tuple(sorted([world.golden, world.experiment_a]))
    assert backbone.unload(world.experiment_a) is True
    assert backbone.unload(world.experiment_a) is False
    assert backbone.loaded() == (world.golden,)


def test_checksum_failure_surfaces_at_load_and_loads_nothing(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    root = world.registry.root
    (root / world.experiment_b / MODEL_FILE).write_bytes((root / world.golden / MODEL_FILE).read_bytes())

    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        backbone.ensure_loaded([world.golden, world.experiment_b])
    assert backbone.loaded() == ()


def test_failing_experiment_is_reported_and_golden_is_intact(world: World, backbones: list) -> None:
    # A model trained on 3 features cannot score 4-feature rows: XGBoost raises inside its call.
    narrow = world.registry.save(train(7, ("a", "b", "c")), "narrow", ("a", "b", "c")).version
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, narrow, world.experiment_a])
    rows = np.arange(N_ROWS)
    score_rows = {world.golden: rows, narrow: rows, world.experiment_a: rows, "never-loaded.1": rows}

    result = asyncio.run(backbone.predict_batch(world.features, score_rows, world.golden))

    assert set(result.failed) == {narrow, "never-loaded.1"}
    assert "not loaded" in result.failed["never-loaded.1"]
    assert result.failed[narrow]  # carries XGBoost's message
    np.testing.assert_allclose(result.scores[world.golden], reference(world, world.golden, rows), atol=1e-7)
    np.testing.assert_allclose(
        result.scores[world.experiment_a], reference(world, world.experiment_a, rows), atol=1e-7
    )


def test_experiment_with_bad_rows_is_reported_not_raised(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a])
    score_rows = {world.golden: np.arange(10), world.experiment_a: np.array([1, N_ROWS])}

    result = asyncio.run(backbone.predict_batch(world.features, score_rows, world.golden))

    assert "row indices" in result.failed[world.experiment_a]
    assert result.scores[world.golden].shape == (10,)


def test_slow_experiment_is_cut_after_the_grace_and_golden_does_not_wait_for_it(
    world: World, backbones: list
) -> None:
    held = HeldModel(world.registry.load(world.experiment_a))
    # timeout_s is long: if the golden answer waited for the held experiment, it could only come after
    # the experiment finished, and `finished` below would be set.
    backbone = Backbone(
        world.registry, timeout_s=60.0, grace_s=0.0, wrap_model=holding(world.experiment_a, held)
    )
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    rows = np.arange(N_ROWS)
    score_rows = {world.golden: rows, world.experiment_a: rows, world.experiment_b: rows}

    async def two_batches() -> tuple[BatchScores, bool, BatchScores]:
        first = await backbone.predict_batch(world.features, score_rows, world.golden)
        still_running_at_answer = not held.finished.is_set()
        second = await backbone.predict_batch(world.features, score_rows, world.golden)
        return first, still_running_at_answer, second

    try:
        first, still_running_at_answer, second = asyncio.run(two_batches())
    finally:
        held.release.set()

    assert still_running_at_answer
    assert "timed out" in first.failed[world.experiment_a]
    assert world.experiment_a not in first.scores
    np.testing.assert_allclose(first.scores[world.golden], reference(world, world.golden, rows), atol=1e-7)
    # The stuck call is not queued again behind itself: the next batch skips that experiment.
    assert "still running" in second.failed[world.experiment_a]
    assert held.calls == 1
    np.testing.assert_allclose(second.scores[world.golden], first.scores[world.golden], atol=0)


def test_slow_experiment_is_cut_at_the_timeout_when_the_grace_is_longer(
    world: World, backbones: list
) -> None:
    held = HeldModel(world.registry.load(world.experiment_a))
    backbone = Backbone(
        world.registry, timeout_s=1.0, grace_s=60.0, wrap_model=holding(world.experiment_a, held)
    )
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a])
    rows = np.arange(N_ROWS)

    async def one_batch() -> tuple[BatchScores, bool]:
        result = await backbone.predict_batch(
            world.features, {world.golden: rows, world.experiment_a: rows}, world.golden
        )
        return result, not held.finished.is_set()

    try:
        result, still_running_at_answer = asyncio.run(one_batch())
    finally:
        held.release.set()

    assert still_running_at_answer
    assert "timed out" in result.failed[world.experiment_a]
    assert result.elapsed_ms[world.experiment_a] >= result.elapsed_ms[world.golden]


def test_experiment_is_scored_again_once_its_stuck_call_ends(world: World, backbones: list) -> None:
    held = HeldModel(world.registry.load(world.experiment_a))
    backbone = Backbone(
        world.registry, timeout_s=60.0, grace_s=0.0, wrap_model=holding(world.experiment_a, held)
    )
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a])
    score_rows = {world.golden: np.arange(N_ROWS), world.experiment_a: np.arange(N_ROWS)}

    async def cut_then_recover() -> tuple[BatchScores, BatchScores]:
        cut = await backbone.predict_batch(world.features, score_rows, world.golden)
        held.release.set()
        for _ in range(500):  # the stuck thread ends on its own time; poll, do not assert on time
            later = await backbone.predict_batch(world.features, score_rows, world.golden)
            if world.experiment_a in later.scores:
                break
            await asyncio.sleep(0.01)
        return cut, later

    try:
        cut, later = asyncio.run(cut_then_recover())
    finally:
        held.release.set()

    assert world.experiment_a in cut.failed
    assert world.experiment_a in later.scores
    np.testing.assert_allclose(
        later.scores[world.experiment_a], reference(world, world.experiment_a, np.arange(N_ROWS)), atol=1e-7
    )


def test_golden_failure_raises_backbone_error(world: World, backbones: list) -> None:
    narrow = world.registry.save(train(7, ("a", "b", "c")), "narrow", ("a", "b", "c")).version
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([narrow, world.experiment_a])
    rows = np.arange(N_ROWS)

    with pytest.raises(BackboneError, match=f"golden model {narrow} failed") as raised:
        asyncio.run(backbone.predict_batch(world.features, {narrow: rows, world.experiment_a: rows}, narrow))
    assert raised.value.__cause__ is not None


def test_golden_timeout_raises_backbone_error(world: World, backbones: list) -> None:
    held = HeldModel(world.registry.load(world.golden))
    backbone = Backbone(world.registry, timeout_s=0.2, wrap_model=lambda _, booster: held)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden])
    try:
        with pytest.raises(BackboneError, match="timed out"):
            asyncio.run(backbone.predict_batch(world.features, {world.golden: np.arange(5)}, world.golden))
    finally:
        held.release.set()


def test_golden_not_loaded_or_without_rows_or_bad_features_raise(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry)
    backbones.append(backbone)
    backbone.ensure_loaded([world.experiment_a])
    rows = {world.golden: np.arange(3), world.experiment_a: np.arange(3)}

    with pytest.raises(BackboneError, match="not loaded"):
        asyncio.run(backbone.predict_batch(world.features, rows, world.golden))
    with pytest.raises(BackboneError, match="no entry"):
        asyncio.run(backbone.predict_batch(world.features, {world.experiment_a: np.arange(3)}, world.golden))
    with pytest.raises(BackboneError, match="float32"):
        asyncio.run(backbone.predict_batch(world.features.astype(np.float64), rows, world.experiment_a))
    backbone.close()
    with pytest.raises(BackboneError, match="closed"):
        asyncio.run(backbone.predict_batch(world.features, rows, world.experiment_a))


# --- small batches, scored inline -------------------------------------------------------------------


def recording(
    delays: dict[str, float], made: dict[str, ThreadRecordingModel], clock: FakeClock | None = None
) -> ModelWrapper:
    def wrap(version: str, booster: xgboost.Booster) -> Model:
        made[version] = ThreadRecordingModel(booster, delays.get(version, 0.0), clock)
        return made[version]

    return wrap


def test_a_small_batch_is_scored_on_the_calling_thread_with_the_same_scores(
    world: World, backbones: list
) -> None:
    models: dict[str, ThreadRecordingModel] = {}
    backbone = Backbone(world.registry, inline_rows=8, wrap_model=recording({}, models))
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    small, large = world.features[:8], world.features
    rows = {world.golden: np.arange(8), world.experiment_a: np.arange(0, 8, 2), world.experiment_b: [7]}

    # A list of rows too (experiment_b): rig types the rows as arrays, and a list is taken as well.
    inline = asyncio.run(backbone.predict_batch(small, rows, world.golden))  # type: ignore[arg-type]
    pooled = asyncio.run(backbone.predict_batch(large, rows, world.golden))  # type: ignore[arg-type]

    caller = threading.current_thread().name
    for version, selected in rows.items():
        assert models[version].threads[0] == caller
        assert models[version].threads[1] != caller  # 200 rows: the pools
        expected = reference(world, version, np.asarray(selected))
        np.testing.assert_allclose(inline.scores[version], expected, rtol=0, atol=1e-7)
        np.testing.assert_allclose(pooled.scores[version], expected, rtol=0, atol=1e-7)
    assert inline.failed == {} and set(inline.elapsed_ms) == set(rows)


def test_a_model_slower_than_the_inline_budget_is_scored_in_the_pools(world: World, backbones: list) -> None:
    models: dict[str, ThreadRecordingModel] = {}
    slow = {world.experiment_a: INLINE_CALL_BUDGET_S * 4}
    backbone = Backbone(world.registry, inline_rows=8, grace_s=1.0, wrap_model=recording(slow, models))
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a])
    rows = {world.golden: np.arange(4), world.experiment_a: np.arange(4)}

    results = [
        asyncio.run(backbone.predict_batch(world.features[:4], rows, world.golden))
        for _ in range(INLINE_SLOW_CALLS + 1)
    ]

    caller = threading.current_thread().name
    assert all(set(result.scores) == set(rows) for result in results)
    inline_then_pools = [True] * INLINE_SLOW_CALLS + [False]
    assert [name == caller for name in models[world.experiment_a].threads] == inline_then_pools
    assert [name == caller for name in models[world.golden].threads] == inline_then_pools


def golden_on_a_fake_clock(
    world: World, backbones: list, monkeypatch: pytest.MonkeyPatch
) -> tuple[Callable[[float], None], ThreadRecordingModel, FakeClock]:
    """A backbone scoring the golden alone on a fake clock, so that a real hiccup of this host during a
    fast call cannot count as a slow call (it did once in CI); returns a call scoring one 4-row batch
    whose golden call takes `delay_s` by that clock, the golden's recording model, and the clock."""
    clock = FakeClock()
    monkeypatch.setattr(backbone_module, "time", clock)
    models: dict[str, ThreadRecordingModel] = {}
    backbone = Backbone(world.registry, inline_rows=8, grace_s=1.0, wrap_model=recording({}, models, clock))
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden])

    def score(delay_s: float) -> None:
        models[world.golden].delay_s = delay_s
        asyncio.run(backbone.predict_batch(world.features[:4], {world.golden: np.arange(4)}, world.golden))

    return score, models[world.golden], clock


def test_slow_inline_calls_that_are_not_in_a_row_leave_the_model_inline(
    world: World, backbones: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call over the budget now and then is the host's hiccup (a preempted thread), not the model's
    cost: the model stays on the calling thread."""
    score, golden, _ = golden_on_a_fake_clock(world, backbones, monkeypatch)
    slow = INLINE_CALL_BUDGET_S * 2
    delays = [slow, 0.0, slow, slow, 0.0, slow, 0.0]  # at most two over the budget in a row
    assert INLINE_SLOW_CALLS > 2

    for delay_s in delays:
        score(delay_s)

    assert golden.threads == [threading.current_thread().name] * len(delays)


def test_a_model_sent_to_the_pools_is_tried_inline_again_after_the_retry_time(
    world: World, backbones: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow calls in a row may have been the host's (the GIL held by other threads): the pools are not
    for good. Back inline, the model needs as many slow calls in a row again to leave."""
    score, golden, clock = golden_on_a_fake_clock(world, backbones, monkeypatch)
    slow = INLINE_CALL_BUDGET_S * 2

    for _ in range(INLINE_SLOW_CALLS):
        score(slow)  # inline, over the budget: the last one sends it to the pools
    clock.now += INLINE_RETRY_S / 2
    score(0.0)  # still in the pools
    clock.now += INLINE_RETRY_S / 2 + 0.001
    score(0.0)  # inline again
    score(slow)  # one slow call is not enough to leave again
    score(0.0)

    on_caller = [name == threading.current_thread().name for name in golden.threads]
    assert on_caller == [True] * INLINE_SLOW_CALLS + [False, True, True, True]


def test_inline_experiments_past_the_goldens_grace_are_cut_and_the_golden_answer_stands(
    world: World, backbones: list
) -> None:
    models: dict[str, ThreadRecordingModel] = {}
    slow = {world.experiment_a: 0.02}
    backbone = Backbone(world.registry, inline_rows=8, grace_s=0.0, wrap_model=recording(slow, models))
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden, world.experiment_a, world.experiment_b])
    rows = {world.golden: np.arange(4), world.experiment_a: np.arange(4), world.experiment_b: np.arange(4)}

    result = asyncio.run(backbone.predict_batch(world.features[:4], rows, world.golden))

    assert "cut before it ran" in result.failed[world.experiment_b]
    assert models[world.experiment_b].threads == []
    np.testing.assert_allclose(
        result.scores[world.golden], reference(world, world.golden, np.arange(4)), rtol=0, atol=1e-7
    )


def test_a_failing_golden_scored_inline_raises_golden_unavailable(world: World, backbones: list) -> None:
    backbone = Backbone(world.registry, inline_rows=8)
    backbones.append(backbone)
    backbone.ensure_loaded([world.golden])
    wrong_width = np.zeros((2, len(FEATURES) + 3), dtype=np.float32)

    with pytest.raises(GoldenUnavailable, match="failed"):
        asyncio.run(backbone.predict_batch(wrong_width, {world.golden: np.arange(2)}, world.golden))
