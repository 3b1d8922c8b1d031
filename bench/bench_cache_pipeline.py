"""Cache benchmark: hit-path latency (µs) of tier 1 and tier 2, and end-to-end throughput of `rig-worker`
at 0 %, 50 % and 90 % repeat traffic, with the prediction cache on and off, in the same run.

Not a test. One deployment (own Feast project on the shared Redis, a synthetic world with more entities
than the backlog has requests, models `golden`, `better`, `worse` trained on Feast historical reads)
serves every measurement; routing is the golden plus two shadow experiments (`better`, `worse`), so
every request is scored by three models (or answered by the cache for all three).

1. Hit path, measured directly with `rig.cache.store.PredictionCache` on real rows (the deployment's
   transform output for 500 entities read from the online store), median of interleaved trials:
   tier-1 hit (in-process LRU), tier-2 hit (Redis MGET, tier 1 off), miss in both tiers, and beside
   them the work a hit saves: `inplace_predict` of the three models on the same rows. µs per row at
   batch 500 (the worker's `batch_max`) and µs per call for a single row. The worker looks up every
   routed version, so a batch costs three lookups.
2. End to end: for each repeat share (0, 0.5, 0.9) and cache on/off (RIG_CACHE_ENABLED), a fresh
   `rig-worker` (sim.deploy.start_worker) on its own topic prefix, hence its own consumer group and
   its own, empty, cache namespace `<prefix>cache:`. Automatic explanations are off by default
   (RIG_EXPLAIN_DISAGREEMENT=1; `--explain` keeps them): with a `worse` shadow nearly every batch
   has disagreements, the explain work runs in the same process and costs far more than a
   prediction, and how much of it falls in a run depends on the run's length and batching, not on
   its requests; in trial runs it moved the numbers more than the cache did.
   After a probe and a warm-up burst on entities the backlog never uses (start-up excluded, the
   worker idle again), a backlog of `--requests` (10,000) is produced as fast as possible. A
   "repeat" asks again for an entity first asked for at least `--gap` requests earlier (so its
   first answer was scored and cached in an earlier micro-batch);
   the store's features do not change during the run, so its transformed feature vector, hence its
   cache key (model version, transform version, feature vector), is the same: a hit. Every other
   request asks for an entity never asked for before. Measured: requests/s from the first to the last
   prediction (the predictions' Kafka timestamps), the share of predictions with `cache_hit` true,
   the worker's CPU per request over that window, its stage timings (from the records' `timings_ms`),
   how many batches it took and how many requests the predict agent queued for the explain agent
   (0 unless `--explain`), and the cores busy outside the worker and this
   script (neighbours, Kafka, Redis; sampled from /proc). `--idle-timeout-s N` also waits until the
   worker is idle again and reports requests/s and CPU per request until then (slow: its other
   agents stay busy long after the last prediction). The same backlog (same request order) is sent
   with the cache on and off; the cache-off run of the same share is the baseline of each ratio.
   Order: off/on, on/off, off/on ... so a drift of the machine's load weighs on both alike.
   `--repeats N` runs every cell N times and reports medians (and each value); run-to-run spread of
   one cell was +-25 % here even on a quiet machine, so read single-run ratios within that.

Prints the tables, writes bench/results/cache_pipeline.json, and always cleans up (also on error or
Ctrl-C): stops the workers, tears the Feast project down, UNLINKs the Redis keys under the run's topic
prefix (every run's `<prefix>cache:*`; SCAN), deletes the run's topics. Takes ~3 min on 2 cores with the
defaults (~5 min when busy).

Deployment, cleanup, Kafka I/O and CPU sampling come from `bench.support`. Models are trained with one
XGBoost thread (two threads on a busy 2-core box were ~10x slower).

Run (from the repository root): .venv/bin/python bench/bench_cache_pipeline.py
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.cleanup import Cleanup
from bench.support.cpu import CpuSampler, cpu_seconds, wait_idle, wait_idle_again
from bench.support.deploy import deployed, with_prefix
from bench.support.kafka_io import Collector, Message, Sender, connected_producer, encode_requests, wait_ready
from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from bench.support.timing import interleaved_us_per_row
from rig.config import RigSettings
from rig.processes import stop_processes
from rig.routing.control import publish_control
from rig.routing.table import set_golden_event, start_experiment_event
from rig.wire.records import Prediction, Request
from sim.deploy import start_worker
from sim.settings import WorldSettings
from sim.world import World

RESULTS = RESULTS_DIR / "cache_pipeline.json"
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
SHADOWS = ("better", "worse")
SHARES = (0.0, 0.5, 0.9)
RESERVED = 400  # entities for the probe and the warm-up burst; never in a backlog
PROBES = 400  # one every 0.5 s until the worker answers
BURST = 300  # warm-up burst after the probe
MICRO_BATCH = 500
MICRO_TRIALS = 9
MICRO_TRIAL_S = 0.05


# -- traffic ------------------------------------------------------------------------------------
def entity_order(world: World) -> list[str]:
    """The world's entities in a fixed shuffled order: RESERVED first, then the backlogs' new ones."""
    return [str(e) for e in np.random.default_rng(world.seed).permutation(world.entity_ids)]


def backlog(world: World, n: int, share: float, gap: int, seed: int) -> list[Request]:
    """`n` requests of which round(share * n) repeat an entity first asked for >= `gap` requests earlier.

    The first `gap` requests are all new entities; after them, repeat positions are drawn at random
    and each repeat picks uniformly among the entities introduced early enough. New entities come
    from a fixed permutation of the world's entities (after the RESERVED first ones).
    """
    rng = np.random.default_rng(seed)
    entities = entity_order(world)[RESERVED:]
    repeats = round(share * n)
    if repeats > n - gap:
        raise SystemExit(f"a share of {share} with --gap {gap} needs more than {n} requests")
    if n - repeats > len(entities):
        raise SystemExit(f"{n - repeats} new entities needed, the world has {len(entities)} (--entities)")
    is_repeat = np.zeros(n, dtype=bool)
    is_repeat[gap + rng.choice(n - gap, size=repeats, replace=False)] = True
    positions: list[int] = []  # where each new entity was first asked for, in order
    introduced: list[str] = []
    fresh = iter(entities)
    start_ms = int(world.end.timestamp() * 1000)
    out = []
    for i in range(n):
        if is_repeat[i]:
            eligible = bisect.bisect_right(positions, i - gap)  # first asked for >= gap requests ago
            entity = introduced[int(rng.integers(eligible))]
        else:
            entity = str(next(fresh))
            positions.append(i)
            introduced.append(entity)
        out.append(
            Request(
                request_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                entity_id=entity,
                event_time=start_ms + i,
            )
        )
    return out


def reserved_requests(world: World, n: int, seed: int) -> list[Request]:
    """Requests on the RESERVED entities only (probe and warm-up burst)."""
    rng = np.random.default_rng(seed)
    entities = entity_order(world)[:RESERVED]
    start_ms = int(world.end.timestamp() * 1000)
    return [
        Request(
            request_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
            entity_id=str(entities[i % RESERVED]),
            event_time=start_ms + i,
        )
        for i in range(n)
    ]


# -- hit path micro-benchmark -------------------------------------------------------------------
def hit_path(settings: RigSettings, versions: dict[str, str], world: World) -> dict[str, Any]:
    """µs per row (batch MICRO_BATCH) and per single-row call of the cache tiers and of the models."""
    from rig.cache.store import HitTier, PredictionCache
    from rig.features.online_reader import RedisLayoutReader
    from rig.features.store import FeatureStoreClient
    from rig.models.dense import MODEL_NTHREAD
    from rig.models.registry import ModelRegistry
    from rig.transform.model_inputs import column_index

    registry = ModelRegistry(settings.model_dir)
    golden = versions["golden"]
    transform = registry.load_transform(registry.meta(golden).transform_version)
    models = []
    for version in versions.values():
        booster = registry.load(version)
        booster.set_param({"nthread": MODEL_NTHREAD})  # as the backbone runs each model
        models.append((booster, column_index(transform.output_columns, registry.meta(version).features)))
    entities = [str(e) for e in world.entity_ids[: 2 * MICRO_BATCH]]
    online = RedisLayoutReader(settings, FeatureStoreClient(settings)).read(entities)
    rows = transform.transform(online.columns).values.astype(np.float32)
    stored, unseen = rows[:MICRO_BATCH], rows[MICRO_BATCH:]
    ids = np.array(entities[:MICRO_BATCH])
    scores = np.asarray(models[0][0].inplace_predict(stored[:, models[0][1]]), dtype=np.float64)
    namespace = f"{settings.topic_prefix}micro.cache:"
    tier1 = PredictionCache(None, namespace, 600.0, max_entries=100_000, max_bytes=1 << 28)
    tier2 = PredictionCache(settings.redis_url, namespace, 600.0, max_entries=0, max_bytes=0, timeout_s=1.0)
    both = PredictionCache(  # the worker's configuration: LRU + Redis
        settings.redis_url, namespace, 600.0, max_entries=100_000, max_bytes=1 << 28, timeout_s=1.0
    )
    try:
        tier1.put_many(golden, transform.version, stored, ids, scores)
        tier2.put_many(golden, transform.version, stored, ids, scores)
        if not (tier2.get_many(golden, transform.version, stored, ids)[1] == HitTier.REDIS).all():
            raise RuntimeError("tier-2 set-up failed: the rows are not in Redis")
        one, one_id = stored[:1], ids[:1]

        def predict_all(x: np.ndarray) -> None:
            for booster, columns in models:
                booster.inplace_predict(x[:, columns])

        cases: dict[str, tuple[Callable[[], object], int]] = {
            "predict_3_models": (lambda: predict_all(stored), MICRO_BATCH),
            "tier1_hit": (lambda: tier1.get_many(golden, transform.version, stored, ids), MICRO_BATCH),
            "tier2_hit": (lambda: tier2.get_many(golden, transform.version, stored, ids), MICRO_BATCH),
            "miss_both_tiers": (lambda: tier2.get_many(golden, transform.version, unseen, ids), MICRO_BATCH),
            "put_both_tiers": (
                lambda: both.put_many(golden, transform.version, stored, ids, scores),
                MICRO_BATCH,
            ),
            "predict_3_models_1_row": (lambda: predict_all(one), 1),
            "tier1_hit_1_row": (lambda: tier1.get_many(golden, transform.version, one, one_id), 1),
            "tier2_hit_1_row": (lambda: tier2.get_many(golden, transform.version, one, one_id), 1),
        }
        samples = interleaved_us_per_row(cases, MICRO_TRIALS, MICRO_TRIAL_S)
        bypasses = tier2.stats().bypasses + both.stats().bypasses
        if bypasses:
            say(f"  Redis was bypassed {bypasses} times during the hit-path measurement (timeouts)")
    finally:
        tier2.purge_all()
        for cache in (tier1, tier2, both):
            cache.close()
    return {
        "batch": MICRO_BATCH,
        "features": int(rows.shape[1]),
        "trials": MICRO_TRIALS,
        "us_per_row": {name: statistics.median(values) for name, values in samples.items()},
        "us_per_row_spread": {name: [min(values), max(values)] for name, values in samples.items()},
    }


# -- one end-to-end run -------------------------------------------------------------------------
def run_once(
    base: RigSettings,
    cleanup: Cleanup,
    versions: dict[str, str],
    share: float,
    cache: bool,
    repeat: int,
    messages: list[Message],
    warm: list[Message],
    logs: Path,
    timeout_s: float,
    idle_timeout_s: float,
    explain: bool,
) -> dict[str, Any]:
    from rig.wire.topics import ensure_topics

    tag = f"{'on' if cache else 'off'}{round(share * 100)}r{repeat}"
    settings = with_prefix(base, tag)
    ensure_topics(settings)
    publish_control(settings, set_golden_event(versions["golden"], actor="bench", reason="cache benchmark"))
    for name in SHADOWS:
        publish_control(settings, start_experiment_event(name, versions[name], "shadow", actor="bench"))
    collector = Collector(settings).start()
    env = {"RIG_CACHE_ENABLED": str(cache).lower(), "RIG_PREDICTION_TIMINGS": "true"}  # stages read below
    if not explain:
        env["RIG_EXPLAIN_DISAGREEMENT"] = "1"  # scores are probabilities: no difference exceeds 1
    worker = start_worker(settings, logs / f"worker-{tag}.log", env=env)
    cleanup.processes.append(worker)
    sampler = CpuSampler(worker.pid).start()
    sender = Sender(connected_producer(settings), settings.topic("requests"))
    try:
        ready_s, _ = wait_ready(sender, collector, warm[:PROBES], worker, timeout_s=180)
        burst = warm[PROBES:]
        sender.send(burst)
        sender.producer.flush(30)
        want = {request_id for request_id, _, _ in burst}
        seen: set[str] = set()
        deadline = time.perf_counter() + 60
        while not want <= seen and time.perf_counter() < deadline:
            seen.update(record.request_id for _, record in collector.take())
            time.sleep(0.05)
        idle_s = wait_idle(worker.pid, timeout_s=10, window_s=0.5, cores=0.25)
        collector.take()  # forget the warm-up's predictions
        explain_before = topic_messages(settings, "explain")
        cpu_before = cpu_seconds(worker.pid)
        began = time.perf_counter()
        sender.send(messages)
        sender.producer.flush(60)
        produce_s = time.perf_counter() - began
        wanted = {request_id for request_id, _, _ in messages}
        answers: dict[str, tuple[int, Prediction]] = {}
        deadline = time.perf_counter() + timeout_s
        while len(answers) < len(wanted) and time.perf_counter() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}")
            for timestamp, record in collector.take():
                if record.request_id in wanted:
                    answers.setdefault(record.request_id, (timestamp, record))
            time.sleep(0.05)
        cpu_s = cpu_seconds(worker.pid) - cpu_before
        explain_asks = topic_messages(settings, "explain") - explain_before
        # the worker's other agents (join, promoter, explain) may still work on what the backlog caused
        busy_after_s, idle_at_s = float("nan"), time.time() - 1.0
        if idle_timeout_s > 0:
            busy_after_s, idle_at_ms = wait_idle_again(
                worker.pid, timeout_s=idle_timeout_s, window_s=1.0, cores=0.2
            )
            idle_at_s = idle_at_ms / 1000
        cpu_until_idle_s = cpu_seconds(worker.pid) - cpu_before
    finally:
        sender.stop()
        sampler.stop()
        collector.close()
        stop_processes([worker])
    outages = (logs / f"worker-{tag}.log").read_text(errors="replace").count("cache_redis_unavailable")
    if len(answers) < len(wanted):
        say(f"  {tag}: only {len(answers)} of {len(wanted)} predictions within {timeout_s:.0f} s")
    stamps = np.sort(np.array([ts for ts, _ in answers.values()], dtype=np.int64))
    window_s = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
    records = [record for _, record in answers.values()]
    created_last = max(sender.create_ms[r] for r in wanted if r in sender.create_ms)
    result = {
        "share": share,
        "cache": cache,
        "repeat": repeat,
        "topic_prefix": settings.topic_prefix,
        "worker_ready_s": ready_s,
        "idle_after_warm_up_s": idle_s,
        "requests": len(messages),
        "predictions": len(answers),
        "requests_per_s": (len(stamps) - 1) / window_s if window_s > 0 else float("nan"),
        "window_s": window_s,
        "backlog_produce_s": produce_s,
        "share_answered_before_backlog_complete": float(np.mean(stamps <= created_last)),
        "cache_hit_share": float(np.mean([r.cache_hit for r in records])),
        "entity_found_share": float(np.mean([r.entity_found for r in records])),
        "shadow_scores_per_prediction": float(np.mean([len(r.experiments) for r in records])),
        "worker_cpu_ms_per_request_in_window": cpu_s * 1000 / max(1, len(answers)),
        "until_idle": until_idle(
            busy_after_s, idle_at_s, min(sender.create_ms.values()) / 1000, cpu_until_idle_s, len(messages)
        ),
        "worker_cores_busy_in_window": cpu_s / window_s if window_s > 0 else float("nan"),
        "redis_cache_outages_logged": outages,
        "cores_busy_in_window": sampler.cores(stamps[0] / 1000, stamps[-1] / 1000) if len(stamps) else {},
        "batches": batch_count(records),
        "explain_asks": explain_asks,
        "stage_ms_per_request": {
            stage: sum_stage(records, stage) / max(1, len(records))
            for stage in ("decode", "enrich", "transform", "dispatch", "predict", "total")
        },
        # wall time per request outside the stages: publish, producer flush, cache fill (cache on), and
        # the worker's other agents (join, promoter, explain) sharing the event loop
        "outside_stages_ms_per_request": (window_s * 1000 - sum_stage(records, "total"))
        / max(1, len(records)),
        "predict_stage_ms_per_request": sum_stage(records, "predict") / max(1, len(records)),
        "dispatch_stage_ms_per_request": sum_stage(records, "dispatch") / max(1, len(records)),
    }
    say(
        f"  {tag}: {result['requests_per_s']:.0f} requests/s, cache hits {result['cache_hit_share']:.1%}, "
        f"{result['worker_cpu_ms_per_request_in_window']:.2f} ms CPU/request"
    )
    return result


def until_idle(busy_after_s: float, idle_at_s: float, first_sent_s: float, cpu_s: float, n: int) -> dict:
    """Rate and CPU per request counted from the first request until the worker is idle again."""
    if not np.isfinite(busy_after_s):
        return {"busy_after_last_prediction_s": busy_after_s}  # nan: not measured, inf: timed out
    seconds = idle_at_s - first_sent_s
    return {
        "busy_after_last_prediction_s": busy_after_s,
        "seconds": seconds,
        "requests_per_s": n / seconds,
        "worker_cpu_ms_per_request": cpu_s * 1000 / n,
    }


def topic_messages(settings: RigSettings, name: str) -> int:
    """Messages written to a topic so far (sum of its partitions' high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(name)
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-count-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        consumer.close()


def sum_stage(records: list[Prediction], stage: str) -> float:
    """Stage milliseconds summed over batches (each record of a batch carries the batch's timings)."""
    batches: dict[tuple[float, ...], float] = {}
    for record in records:
        timings = record.timings_ms
        key = tuple(timings.get(name, 0.0) for name in ("total", "decode", "enrich", "transform"))
        batches[key] = timings.get(stage, 0.0)
    return sum(batches.values())


def batch_count(records: list[Prediction]) -> int:
    return len(
        {
            tuple(r.timings_ms.get(name, 0.0) for name in ("total", "decode", "enrich", "transform"))
            for r in records
        }
    )


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="backlog size per run")
    parser.add_argument("--gap", type=int, default=1_000, help="a repeat follows its first ask by >= this")
    parser.add_argument("--entities", type=int, default=0, help="world size (default: requests + 500)")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--train-events", type=int, default=10_000)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for one backlog")
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=0.0,
        help="also wait (at most this long) until the worker is idle after the last prediction and report "
        "requests/s and CPU per request until then (0: skip; its other agents can stay busy for > 60 s)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="keep automatic explanations on (RIG_EXPLAIN_DISAGREEMENT default): explain work in the "
        "same process that depends on the run's length and batching, not on its requests, and clouds "
        "the cache's effect",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per cell (medians reported; ~2.5 min per repeat)"
    )
    parser.add_argument("--seed", type=int, default=41)
    args = parser.parse_args()
    entities = args.entities or args.requests + RESERVED + 100
    record = RunRecord()
    world_settings = WorldSettings(seed=args.seed, entities=entities, days=args.days)
    logs = Path(tempfile.mkdtemp(prefix="bench-cache-pipeline-logs-"))  # kept: the workers' logs
    say(f"worker logs in {logs}")

    with deployed("cache", MODELS, world_settings, n_events=args.train_events) as deployment:
        base, world, versions = deployment.settings, deployment.world, deployment.versions
        say("hit path (PredictionCache on the deployment's rows) ...")
        micro = hit_path(base, versions, world)
        warm = encode_requests(base, reserved_requests(world, PROBES + BURST, args.seed + 7))
        traffic = {
            share: encode_requests(base, backlog(world, args.requests, share, args.gap, args.seed))
            for share in SHARES
        }
        runs: list[dict[str, Any]] = []
        order = [
            (repeat, share, cache)
            for repeat in range(args.repeats)
            for i, share in enumerate(SHARES)
            for cache in ((False, True) if (i + repeat) % 2 == 0 else (True, False))
        ]
        for repeat, share, cache in order:
            say(
                f"run {len(runs) + 1}/{len(order)}: {share:.0%} repeats, cache {'on' if cache else 'off'}"
                + (f", repeat {repeat}" if args.repeats > 1 else "")
            )
            runs.append(
                run_once(
                    base,
                    deployment.cleanup,
                    versions,
                    share,
                    cache,
                    repeat,
                    traffic[share],
                    warm,
                    logs,
                    args.timeout_s,
                    args.idle_timeout_s,
                    args.explain,
                )
            )

    summary = summarize(runs, micro)
    print_tables(micro, runs, summary, args)
    write_results(
        RESULTS,
        {
            "benchmark": "cache_pipeline",
            "question": "tier-1/tier-2 hit latency; end-to-end throughput at 0/50/90 % repeats, "
            "cache on vs off",
            "deployment": {
                "entities": entities,
                "days": args.days,
                "models": MODELS,
                "versions": versions,
                "routing": {"golden": versions["golden"], "shadows": {s: versions[s] for s in SHADOWS}},
                "batch_max": base.batch_max,
            },
            "plan": vars(args),
            "hit_path": micro,
            "runs": runs,
            "summary": summary,
            "worker_logs": str(logs),
            **record.fields(),
        },
    )
    say(f"done in {record.seconds:.0f} s")


METRICS = {
    "rps": "requests_per_s",
    "hits": "cache_hit_share",
    "cpu": "worker_cpu_ms_per_request_in_window",
    "batches": "batches",
    "explain_asks": "explain_asks",
}


def summarize(runs: list[dict[str, Any]], micro: dict[str, Any]) -> dict[str, Any]:
    """Per repeat share: the median over repeats of each metric, cache off and on, and the ratios."""

    def cell(share: float, cache: bool) -> dict[str, Any]:
        mine = [run for run in runs if run["share"] == share and run["cache"] == cache]
        out: dict[str, Any] = {}
        for name, key in METRICS.items():
            values = [float(run[key]) for run in mine]
            out[name] = float(np.median(values))
            out[f"{name}_all"] = values
        out["others_all"] = [others(run) for run in mine]
        out["others"] = float(np.median(out["others_all"]))
        idle = [run["until_idle"].get("requests_per_s", float("nan")) for run in mine]
        idle_cpu = [run["until_idle"].get("worker_cpu_ms_per_request", float("nan")) for run in mine]
        out["until_idle_rps"] = float(np.median(idle))
        out["until_idle_cpu"] = float(np.median(idle_cpu))
        return out

    baseline = cell(0.0, False)["rps"]
    table = {}
    for share in SHARES:
        off, on = cell(share, False), cell(share, True)
        table[f"{share:.0%}"] = {
            "cache_off": off,
            "cache_on": on,
            "on_vs_off": on["rps"] / off["rps"],
            "on_vs_0pct_off": on["rps"] / baseline,
            "cpu_on_vs_off": on["cpu"] / off["cpu"],
        }
    us = micro["us_per_row"]
    miss = us["miss_both_tiers"] + us["put_both_tiers"]
    return {
        "throughput": table,
        "hit_speedup_vs_predict_3_models": {
            "tier1_x3_lookups": us["predict_3_models"] / (3 * us["tier1_hit"]),
            "tier2_x3_lookups": us["predict_3_models"] / (3 * us["tier2_hit"]),
        },
        # hit share h at which h * hit + (1 - h) * (miss + put + predict) = predict (3 versions, tier 1)
        "break_even_hit_share_cpu": 3 * miss / (3 * miss + us["predict_3_models"] - 3 * us["tier1_hit"]),
    }


def print_tables(
    micro: dict[str, Any], runs: list[dict[str, Any]], summary: dict[str, Any], args: Any
) -> None:
    us = micro["us_per_row"]
    predict = us["predict_3_models"]
    print(f"\nHit path ({micro['features']} features, median of {micro['trials']} interleaved trials)")
    print(f"{'case':<26} {'µs/row':>9} {'vs predict 3 models':>20}")
    for name in ("predict_3_models", "tier1_hit", "tier2_hit", "miss_both_tiers", "put_both_tiers"):
        print(f"{name + f' (batch {MICRO_BATCH})':<26} {us[name]:9.2f} {us[name] / predict:19.3f}x")
    one = us["predict_3_models_1_row"]
    for name in ("predict_3_models_1_row", "tier1_hit_1_row", "tier2_hit_1_row"):
        print(f"{name:<26} {us[name]:9.2f} {us[name] / one:19.3f}x  (µs per single-row call)")
    miss_cost = 3 * (us["miss_both_tiers"] + us["put_both_tiers"])
    print(
        f"per request (3 versions looked up): a tier-1 hit costs {3 * us['tier1_hit']:.1f} µs against "
        f"{predict:.1f} µs of predicting; a miss costs {miss_cost:.1f} µs more (look-up + put, both tiers)"
    )
    print(
        f"\nEnd to end: `rig-worker`, golden + 2 shadows, backlog of {args.requests} requests, repeats >= "
        f"{args.gap} requests after their first ask;\nrequests/s from the first to the last prediction; "
        "CPU = worker CPU ms per request in that window; others = cores busy outside the worker and "
        "this script;\nbatches and explain asks (requests the predict agent queued for the explain agent "
        "of the same process): during the backlog"
    )
    header = (
        f"{'repeats':>7} {'cache off':>10} {'cache on':>10} {'on/off':>7} {'vs 0% off':>9} "
        f"{'hits on':>8} {'hits off':>8} {'CPU off/on':>11} {'others off/on':>14} {'batches':>9} "
        f"{'explain asks':>12}"
    )
    print(header)
    print("-" * len(header))
    for share in SHARES:
        row = summary["throughput"][f"{share:.0%}"]
        off, on = row["cache_off"], row["cache_on"]
        print(
            f"{share:7.0%} {off['rps']:10.0f} {on['rps']:10.0f} {row['on_vs_off']:6.2f}x "
            f"{row['on_vs_0pct_off']:8.2f}x {on['hits']:8.1%} {off['hits']:8.1%} "
            f"{off['cpu']:5.2f}/{on['cpu']:<5.2f} {off['others']:6.2f}/{on['others']:<6.2f} "
            f"{off['batches']:4.0f}/{on['batches']:<4.0f} "
            f"{off['explain_asks']:5.0f}/{on['explain_asks']:<5.0f}"
        )
        if len(off["rps_all"]) > 1:
            each = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(off["rps_all"], on["rps_all"], strict=True))
            print(f"{'':7} each repeat, requests/s off/on: {each}")
        if np.isfinite(off["until_idle_rps"]) or np.isfinite(on["until_idle_rps"]):
            print(
                f"{'':7} until idle: {off['until_idle_rps']:.0f}/{on['until_idle_rps']:.0f} requests/s, "
                f"{off['until_idle_cpu']:.2f}/{on['until_idle_cpu']:.2f} worker CPU ms per request (off/on)"
            )
    print(
        f"break-even hit share on CPU (tier 1, from the hit-path figures): "
        f"{summary['break_even_hit_share_cpu']:.0%}"
    )
    outages = {
        f"{run['share']:.0%} r{run['repeat']}": run["redis_cache_outages_logged"]
        for run in runs
        if run["cache"]
    }
    print(f"Redis cache time-outs logged by the cache-on workers (tier 2 bypassed 5 s each): {outages}")


def others(run: dict[str, Any]) -> float:
    return run.get("cores_busy_in_window", {}).get("others", float("nan"))


if __name__ == "__main__":
    main()
