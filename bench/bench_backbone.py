"""Backbone throughput: `predict_batch` (golden + 2 shadows) against one `inplace_predict` per row.

The baseline is measured in the same run on the same boosters: for every row, one `inplace_predict`
per model, one after the other. Also measured: the booster thread setting behind `MODEL_NTHREAD`
(nthread=1 per model with two models in parallel vs nthread=2 one model after the other), and one
model's cost per call at 1, 21 and 500 rows (interleaved trials, medians): XGBoost's
`Booster.inplace_predict`, `DenseScorer` handing XGBoost no proxy DMatrix (a new one per call, as
before 2026-12-04) and `DenseScorer` as shipped (the thread's own proxy). Prints a table and writes
bench/results/backbone.json; takes < 90 s.

Run: .venv/bin/python bench/bench_backbone.py
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

from types import SimpleNamespace

import numpy as np
import xgboost

from bench.support.report import RESULTS_DIR, RunRecord, write_results
from bench.support.timing import interleaved_us_per_row, seconds_per_call
from rig.models import dense
from rig.models.dense import MODEL_NTHREAD, DenseScorer
from rig.models.registry import ModelRegistry
from rig.serving.backbone import Backbone

N_FEATURES = 16
N_TREES = 200
MAX_DEPTH = 6
BATCH_SIZES = (1, 10, 100, 1000)
SECONDS_PER_SIZE = 1.5
NAIVE_ROWS = 200
NTHREAD_TRIAL_S = 0.15
CALL_ROWS = (1, 21, 500)
CALL_TRIALS = 7
CALL_TRIAL_S = 0.3
RESULTS = RESULTS_DIR / "backbone.json"
FEATURE_NAMES = tuple(f"f{i:02d}" for i in range(N_FEATURES))


def train(seed: int) -> xgboost.Booster:
    """A model of realistic size on random data (a weak signal plus noise, so trees grow to full depth)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8000, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=1.0, size=len(x)) > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": MAX_DEPTH, "eta": 0.1, "seed": seed}
    dtrain = xgboost.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES))
    return xgboost.train(params, dtrain, num_boost_round=N_TREES)


def naive_us_per_row(boosters: list[xgboost.Booster], features: np.ndarray) -> float:
    """µs per row when every row is one `inplace_predict` per model, sequentially."""

    def every_row_every_model() -> None:
        for i in range(NAIVE_ROWS):
            row = features[i : i + 1]
            for booster in boosters:
                booster.inplace_predict(row)

    return seconds_per_call(every_row_every_model, budget_s=0.0, min_calls=1, warm_up=True) / NAIVE_ROWS * 1e6


def nthread_choice(boosters: list[xgboost.Booster], features: np.ndarray) -> dict[str, dict[str, float]]:
    """Two models on the same batch: nthread=1 each in parallel threads vs nthread=2 one after the other."""
    two = boosters[:2]
    out: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(2) as pool:

        def in_parallel(batch: np.ndarray) -> None:
            list(pool.map(lambda booster: booster.inplace_predict(batch), two))

        def in_sequence(batch: np.ndarray) -> None:
            for booster in two:
                booster.inplace_predict(batch)

        for rows in (10, 1000):
            batch = features[:rows]
            parallel: list[float] = []
            sequential: list[float] = []
            for _ in range(7):  # interleaved trials: a busy neighbour hurts both sides alike
                for booster in two:
                    booster.set_param({"nthread": 1})
                parallel.append(
                    seconds_per_call(functools.partial(in_parallel, batch), NTHREAD_TRIAL_S, warm_up=True)
                )
                for booster in two:
                    booster.set_param({"nthread": 2})
                sequential.append(
                    seconds_per_call(functools.partial(in_sequence, batch), NTHREAD_TRIAL_S, warm_up=True)
                )
            out[f"rows_{rows}"] = {
                "nthread1_parallel_ms_median": statistics.median(parallel) * 1e3,
                "nthread2_sequential_ms_median": statistics.median(sequential) * 1e3,
                "nthread1_parallel_ms_min": min(parallel) * 1e3,
                "nthread2_sequential_ms_min": min(sequential) * 1e3,
            }
    for booster in two:
        booster.set_param({"nthread": MODEL_NTHREAD})
    return out


def call_costs(booster: xgboost.Booster, features: np.ndarray) -> dict[str, dict[str, float]]:
    """µs per call of one model, by rows per call: XGBoost's wrapper, `DenseScorer` without and with
    the thread's own proxy DMatrix (medians of interleaved trials)."""
    scorer = DenseScorer(booster)
    shipped = dense._PROXIES
    no_proxy = SimpleNamespace(proxy=SimpleNamespace(handle=ctypes.c_void_p()))  # XGBoost makes one per call

    def without_proxy(batch: np.ndarray) -> None:
        dense._PROXIES = no_proxy  # type: ignore[assignment]
        try:
            scorer.inplace_predict(batch)
        finally:
            dense._PROXIES = shipped

    out: dict[str, dict[str, float]] = {}
    for rows in CALL_ROWS:
        batch = np.ascontiguousarray(features[:rows])
        cases: dict[str, tuple[Callable[[], object], int]] = {
            "xgboost_inplace_predict": (functools.partial(booster.inplace_predict, batch), 1),
            "dense_scorer_new_proxy_per_call": (functools.partial(without_proxy, batch), 1),
            "dense_scorer": (functools.partial(scorer.inplace_predict, batch), 1),
        }
        samples = interleaved_us_per_row(cases, CALL_TRIALS, CALL_TRIAL_S)
        out[f"rows_{rows}"] = {f"{name}_us_per_call": statistics.median(v) for name, v in samples.items()}
    return out


async def backbone_rates(backbone: Backbone, versions: list[str], features: np.ndarray) -> list[dict]:
    """rows/s of predict_batch with golden + 2 shadows scoring every row, per batch size."""
    golden = versions[0]
    results = []
    for size in BATCH_SIZES:
        batch = features[:size]
        score_rows = {version: np.arange(size) for version in versions}
        await backbone.predict_batch(batch, score_rows, golden)  # warm-up
        latencies: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < SECONDS_PER_SIZE or len(latencies) < 5:
            began = time.perf_counter()
            result = await backbone.predict_batch(batch, score_rows, golden)
            latencies.append(time.perf_counter() - began)
            if result.failed:
                raise SystemExit(f"benchmark batch had failures: {result.failed}")
        elapsed = time.perf_counter() - start
        rows_per_s = size * len(latencies) / elapsed
        results.append(
            {
                "batch_size": size,
                "batches": len(latencies),
                "rows_per_s": rows_per_s,
                "us_per_row": 1e6 / rows_per_s,
                "batch_ms_p50": statistics.median(latencies) * 1e3,
                "batch_ms_p99": float(np.percentile(latencies, 99)) * 1e3,
            }
        )
    return results


async def main() -> None:
    record = RunRecord()
    print(f"training 3 models ({N_FEATURES} features, {N_TREES} trees, depth {MAX_DEPTH}) ...", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        registry = ModelRegistry(Path(folder))
        versions = [registry.save(train(seed), "bench", FEATURE_NAMES).version for seed in (1, 2, 3)]
        features = np.random.default_rng(0).normal(size=(5000, N_FEATURES)).astype(np.float32)
        boosters = [registry.load(version) for version in versions]
        for booster in boosters:
            booster.set_param({"nthread": MODEL_NTHREAD})

        print("measuring nthread=1 in parallel vs nthread=2 in sequence (2 models) ...", flush=True)
        nthread = nthread_choice(boosters, features)
        print(f"measuring the naive baseline ({NAIVE_ROWS} rows x 3 models, one call each) ...", flush=True)
        naive = naive_us_per_row(boosters, features)
        print(f"measuring one model's cost per call at {CALL_ROWS} rows ...", flush=True)
        calls = call_costs(boosters[0], features)

        backbone = Backbone(registry, max_workers=2, timeout_s=10.0)
        try:
            backbone.ensure_loaded(versions)
            print("measuring predict_batch (golden + 2 shadows) ...", flush=True)
            rates = await backbone_rates(backbone, versions, features)
        finally:
            backbone.close()

    for rate in rates:
        rate["speedup_vs_naive"] = naive / rate["us_per_row"]
    print()
    print(f"naive baseline, 3 models: {naive:8.1f} µs/row  ({1e6 / naive:9.0f} rows/s)")
    print(f"{'batch':>6} {'rows/s':>10} {'µs/row':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs naive':>9}")
    for rate in rates:
        print(
            f"{rate['batch_size']:>6} {rate['rows_per_s']:>10.0f} {rate['us_per_row']:>9.1f} "
            f"{rate['batch_ms_p50']:>8.2f} {rate['batch_ms_p99']:>8.2f} {rate['speedup_vs_naive']:>8.1f}x"
        )
    for size, numbers in nthread.items():  # not `rows`: the loop below binds that to an int
        print(
            f"nthread, 2 models, {size}: nthread=1 parallel {numbers['nthread1_parallel_ms_median']:.2f} ms, "
            f"nthread=2 sequential {numbers['nthread2_sequential_ms_median']:.2f} ms (medians of 7)"
        )
    print(f"\none model, µs per call (medians of {CALL_TRIALS} interleaved trials)")
    print(f"{'rows':>6} {'xgboost':>9} {'new proxy':>10} {'own proxy':>10}")
    for rows in CALL_ROWS:
        cost = calls[f"rows_{rows}"]
        wrapper, new, own = (
            cost[f"{name}_us_per_call"]
            for name in ("xgboost_inplace_predict", "dense_scorer_new_proxy_per_call", "dense_scorer")
        )
        print(f"{rows:>6} {wrapper:>9.1f} {new:>10.1f} {own:>10.1f}")

    write_results(
        RESULTS,
        {
            "benchmark": "backbone",
            "model": {"features": N_FEATURES, "trees": N_TREES, "max_depth": MAX_DEPTH, "count": 3},
            "model_nthread": MODEL_NTHREAD,
            "naive_us_per_row_3_models": naive,
            "predict_batch_golden_plus_2_shadows": rates,
            "nthread_measurement": nthread,
            "one_model_us_per_call": calls,
            **record.fields(),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
