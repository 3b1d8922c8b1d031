"""Prediction cache latency against the XGBoost prediction it saves, measured in the same run.

Baseline: one `inplace_predict` of a 200-tree, depth-6 model on 20 features (trained here on random
data, nthread as in the backbone) for a batch of 500 rows. Measured on the same batch: the key alone
(canonical rows + BLAKE2b), a tier-1 hit, a tier-2 hit (Redis, tier 1 off), a miss in tier 1 only
and in both tiers, and `put_many` with and without Redis. Each figure is the median of interleaved
trials. Prints µs per row and ratios to the baseline, and the break-even hit ratio above which the
cache saves time: (miss lookup + put) / (predict + put). Writes bench/results/cache.json; < 60 s.

Run: .venv/bin/python bench/bench_cache.py   (Redis from RIG_REDIS_URL or the settings default)
"""

from __future__ import annotations

import statistics
import sys
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np
import redis
import xgboost

from bench.support.deploy import redis_error
from bench.support.report import RESULTS_DIR, RunRecord, write_results
from bench.support.timing import interleaved_us_per_row
from rig.cache.store import HitTier, PredictionCache
from rig.config import RigSettings
from rig.models.dense import MODEL_NTHREAD

N_FEATURES = 20
N_TREES = 200
MAX_DEPTH = 6
BATCH = 500
TRIALS = 15
TRIAL_BUDGET_S = 0.12
RESULTS = RESULTS_DIR / "cache.json"
MODEL, TRANSFORM = "bench.1", "bench-transform"


def train() -> xgboost.Booster:
    """A model of realistic size on random data (weak signal plus noise, so trees grow to full depth)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": MAX_DEPTH, "eta": 0.1, "seed": 0}
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=N_TREES)
    booster.set_param({"nthread": MODEL_NTHREAD})
    return booster


def measure(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """µs per row of each case (a call handles the batch): median of TRIALS interleaved trials."""
    samples = interleaved_us_per_row(
        {name: (fn, BATCH) for name, fn in cases.items()}, TRIALS, TRIAL_BUDGET_S
    )
    return {name: statistics.median(values) for name, values in samples.items()}


def redis_url_or_none() -> str | None:
    url = RigSettings().redis_url
    error = redis_error(url)
    if error:
        print(f"{error}: tier-2 figures skipped")
        return None
    return url


@dataclass(frozen=True)
class Batch:
    rows: np.ndarray
    unseen: np.ndarray  # rows never stored: every lookup of them misses
    entity_ids: list[str]
    scores: np.ndarray


def tier1_cases(booster: xgboost.Booster, batch: Batch, namespace: str) -> dict[str, Callable[[], object]]:
    cache = PredictionCache(None, namespace, 600.0, max_entries=1_000_000, max_bytes=1 << 30)
    cache.put_many(MODEL, TRANSFORM, batch.rows, batch.entity_ids, batch.scores)
    return {
        "xgboost_predict": lambda: booster.inplace_predict(batch.rows),
        "key_only": lambda: cache.keys(MODEL, TRANSFORM, batch.rows),
        "tier1_hit": lambda: cache.get_many(MODEL, TRANSFORM, batch.rows, batch.entity_ids),
        "miss_tier1_only": lambda: cache.get_many(MODEL, TRANSFORM, batch.unseen, batch.entity_ids),
        "put_tier1_only": lambda: cache.put_many(
            MODEL, TRANSFORM, batch.rows, batch.entity_ids, batch.scores
        ),
    }


def tier2_cases(url: str, batch: Batch, namespace: str, stack: ExitStack) -> dict[str, Callable[[], object]]:
    """Cases on Redis; `stack` purges the namespace and closes the connections at the end."""
    writer = PredictionCache(url, namespace, 600.0, max_entries=1_000_000, max_bytes=1 << 30, timeout_s=1.0)
    remote_only = PredictionCache(url, namespace, 600.0, max_entries=0, max_bytes=0, timeout_s=1.0)
    client = redis.Redis.from_url(url)
    for closable in (client, remote_only, writer):
        stack.callback(closable.close)
    stack.callback(writer.purge_all)

    def no_bypass() -> None:
        for cache in (writer, remote_only):
            if cache.stats().bypasses:
                raise SystemExit(f"Redis was bypassed during the benchmark: {cache.stats()}")

    stack.callback(no_bypass)
    writer.put_many(MODEL, TRANSFORM, batch.rows, batch.entity_ids, batch.scores)
    if not (remote_only.get_many(MODEL, TRANSFORM, batch.rows, batch.entity_ids)[1] == HitTier.REDIS).all():
        raise SystemExit("tier-2 set-up failed: the batch is not in Redis")
    keys = writer.keys(MODEL, TRANSFORM, batch.rows)
    values = [score.tobytes() * 2 for score in batch.scores]  # the cache's value size
    indexes = [f"{namespace}e:{entity}" for entity in batch.entity_ids]

    def pipeline_put() -> None:
        """The alternative to the cache's write script: SET PX + SADD + PEXPIRE per row, pipelined."""
        pipe = client.pipeline(transaction=False)
        for key, value, index in zip(keys, values, indexes, strict=True):
            pipe.set(key, value, px=600_000)
            pipe.sadd(index, key)
            pipe.pexpire(index, 600_000)
        pipe.execute()

    return {
        "tier2_hit": lambda: remote_only.get_many(MODEL, TRANSFORM, batch.rows, batch.entity_ids),
        "miss_both_tiers": lambda: remote_only.get_many(MODEL, TRANSFORM, batch.unseen, batch.entity_ids),
        "put_both_tiers": lambda: writer.put_many(
            MODEL, TRANSFORM, batch.rows, batch.entity_ids, batch.scores
        ),
        "redis_mget_only": lambda: client.mget(keys),
        "put_redis_pipeline_alternative": pipeline_put,
    }


def main() -> None:
    record = RunRecord()
    print(
        f"training the baseline model ({N_FEATURES} features, {N_TREES} trees, depth {MAX_DEPTH}) ...",
        flush=True,
    )
    booster = train()
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(BATCH, N_FEATURES)).astype(np.float32)
    scores = np.asarray(booster.inplace_predict(rows), dtype=np.float64)
    batch = Batch(
        rows, rng.normal(size=rows.shape).astype(np.float32), [f"entity-{i}" for i in range(BATCH)], scores
    )
    namespace = f"rig:bench:cache:{uuid.uuid4().hex[:8]}:"
    url = redis_url_or_none()

    with ExitStack() as stack:
        cases = tier1_cases(booster, batch, namespace)
        if url is not None:
            cases |= tier2_cases(url, batch, namespace, stack)
        print(f"measuring {len(cases)} cases at batch {BATCH}, {TRIALS} interleaved trials ...", flush=True)
        us = measure(cases)

    predict = us["xgboost_predict"]
    print(f"\n{'case':<31} {'µs/row':>8} {'vs predict':>11}")
    for name, value in us.items():
        print(f"{name:<31} {value:8.2f} {value / predict:10.3f}x")
    tiers = {
        "tier1_only": ("miss_tier1_only", "put_tier1_only"),
        "both_tiers": ("miss_both_tiers", "put_both_tiers"),
    }
    break_even = {
        name: (us[miss] + us[put]) / (predict + us[put]) for name, (miss, put) in tiers.items() if miss in us
    }
    speedup = {name: predict / us[name] for name in ("tier1_hit", "tier2_hit") if name in us}
    print()
    for name, ratio in speedup.items():
        print(f"{name}: {ratio:.1f}x the speed of predicting the batch")
    for name, ratio in break_even.items():
        print(f"break-even hit ratio ({name}): {ratio:.0%}" + ("  (never pays off)" if ratio >= 1 else ""))

    write_results(
        RESULTS,
        {
            "benchmark": "cache",
            "model": {
                "features": N_FEATURES,
                "trees": N_TREES,
                "max_depth": MAX_DEPTH,
                "nthread": MODEL_NTHREAD,
            },
            "batch_size": BATCH,
            "trials": TRIALS,
            "redis": url is not None,
            "us_per_row": us,
            "ratio_vs_predict": {name: value / predict for name, value in us.items()},
            "speedup_of_hit": speedup,
            "break_even_hit_ratio": break_even,
            **record.fields(),
        },
    )


if __name__ == "__main__":
    main()
