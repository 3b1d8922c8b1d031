"""Warm-up benchmark: p99 latency of the first 1,000 requests after a promotion, with and without the
warmer, beside the steady-state p99 measured in the same worker run. Target: with the warmer, within
1.5x of steady state.

Not a test. One deployment (own Feast project on the shared Redis, a synthetic world of 3,000
entities, models `golden` and challenger `better` trained on Feast historical reads) serves every run.
Each run gets a fresh `rig-worker` (sim.deploy.start_worker) on its own topic prefix, hence its own
consumer group and its own prediction-cache namespace `<prefix>cache:`, so the cold case is really cold:

1. routing: golden only (`better` is not loaded and has no cache entries);
2. the worker answers a probe request (start-up is excluded), then a background thread produces
   synthetic requests at a fixed rate well under capacity (`--rate`, 200/s: at 400/s a `rig-worker`
   with its join/promoter/explain agents fell seconds behind here), Zipf-popular entities,
   so repeats (cache hits) are natural;
3. warm-up: the first `--warm-requests`; steady state: the next `--steady` requests;
4. promotion: `set_golden(better)` is published on the control topic while traffic goes on;
5. after: the first `--after` requests (in send order) answered by the new golden
   (`golden.model_version == better`); also, for honesty, the first `--after` requests sent after the
   promotion whoever answered them (the old golden answers while the new one is loaded and warmed);
6. settled: `--after` requests sent from ~1 s after those, a control window: a slow-down that is
   still there then is drift of the machine, not a cold start.

Variants: the worker started with RIG_WARMER_ENABLED=true ("warm": warm-up batch, then the last
RIG_WARMER_REPLAY requests replayed through the new golden into the cache before the switch) or
=false ("cold"). Both run with RIG_CACHE_ENABLED=true (the cache is what the warmer pre-fills; the
product default is off: `--no-cache` measures that). Each variant runs `--repeats` times, in ABBA
order (warm, cold, cold, warm, ...) so a drift of the machine's load weighs on both alike; repeat r
of both variants sends the same requests.

Latency of a request = its prediction's Kafka timestamp - the request's Kafka CreateTime, both read
with confluent-kafka `message.timestamp()` (the request's from the producer's delivery report), matched
by request_id. The worker's own `timings_ms["kafka_to_publish"]` is reported beside it as a cross-check.
Ratios are post-promotion p99 / steady p99 of the same run.

The machine is shared: the CPU busy outside the worker and this script (neighbours, Kafka, Redis) is
sampled from /proc for every window, and a run is marked "disturbed" when that exceeded
DISTURBED_CORES or the worker fell behind the rate (p50 of the last tenth of the steady window over
twice the first tenth's + 50 ms); the verdict is given over all runs and over undisturbed runs.
Models are trained with one XGBoost thread (two threads on a busy 2-core box were ~10x slower); the
workers score as shipped.

Prints a table, writes bench/results/warmup.json, and always cleans up (also on error or Ctrl-C):
stops the workers, tears the Feast project down, UNLINKs the Redis keys under the run's topic prefix
(each run's `<prefix>cache:*`; SCAN), deletes the run's topics. Takes ~4 min on 2 cores with the
defaults (2 repeats).

Run (from the repository root): .venv/bin/python bench/bench_warmup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.cleanup import Cleanup
from bench.support.cpu import CpuSampler
from bench.support.deploy import deployed, with_prefix
from bench.support.kafka_io import (
    Collector,
    Message,
    Sender,
    connected_producer,
    synthetic_messages,
    wait_ready,
)
from bench.support.report import RESULTS_DIR, RunRecord, latency_percentiles, say, write_results
from rig.config import RigSettings
from rig.processes import stop_processes
from rig.routing.control import publish_control
from rig.routing.table import set_golden_event
from rig.wire.records import Prediction
from sim.deploy import start_worker
from sim.settings import WorldSettings

RESULTS = RESULTS_DIR / "warmup.json"
TARGET_RATIO = 1.5
DISTURBED_CORES = 0.5  # a run is "disturbed" when everything else on the machine took more than this
MODELS = {"golden": "golden", "better": "better"}


# -- statistics ---------------------------------------------------------------------------------
def latency_summary(
    latencies_ms: Sequence[float], hits: Sequence[bool], in_worker_ms: Sequence[float]
) -> dict[str, Any]:
    if len(latencies_ms) == 0:
        return {"requests": 0}
    return {
        "requests": len(latencies_ms),
        # p50_ms ... max_ms; p50 growing from the first to the last tenth: the worker fell behind the rate
        **{f"{name}_ms": value for name, value in latency_percentiles(latencies_ms).items()},
        "cache_hit_share": float(np.mean(hits)) if len(hits) else float("nan"),
        "kafka_to_publish_p99_ms": float(np.percentile(in_worker_ms, 99))
        if len(in_worker_ms)
        else float("nan"),
    }


# -- one run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    rate: float
    warm_requests: int
    steady: int
    after: int
    cache: bool


def run_once(
    base: RigSettings,
    cleanup: Cleanup,
    versions: dict[str, str],
    variant: str,
    repeat: int,
    messages: list[Message],
    probes: list[Message],
    plan: Plan,
    logs: Path,
) -> dict[str, Any]:
    """One worker, warmer on or off: steady traffic, a promotion, the first answers of the new golden."""
    from rig.wire.topics import ensure_topics

    settings = with_prefix(base, f"{variant}{repeat}")
    ensure_topics(settings)
    golden, better = versions["golden"], versions["better"]
    publish_control(
        settings, set_golden_event(golden, actor="bench", reason="warm-up benchmark: initial golden")
    )
    collector = Collector(settings).start()
    log_path = logs / f"worker-{variant}{repeat}.log"
    worker = start_worker(
        settings,
        log_path,
        log_level="INFO",  # the "model warmed" lines
        env={
            "RIG_WARMER_ENABLED": str(variant == "warm").lower(),
            "RIG_CACHE_ENABLED": str(plan.cache).lower(),
            "RIG_PREDICTION_TIMINGS": "true",  # the worker's own kafka_to_publish, the cross-check
        },
    )
    cleanup.processes.append(worker)
    sampler = CpuSampler(worker.pid).start()
    sender = Sender(connected_producer(settings), settings.topic("requests"))
    try:
        ready_s, answered_raw = wait_ready(sender, collector, probes, worker, timeout_s=180)
        say(
            f"  {variant}{repeat}: worker answered its probe after {ready_s:.1f} s; "
            f"traffic at {plan.rate:.0f}/s"
        )
        index = {request_id: i for i, (request_id, _, _) in enumerate(messages)}
        answers: dict[str, tuple[int, Prediction]] = {}

        def absorb(batch: list[tuple[int, Prediction]]) -> None:
            for timestamp, record in batch:
                answers.setdefault(record.request_id, (timestamp, record))

        absorb(answered_raw)
        sender.start(messages, plan.rate)
        promote_at = plan.warm_requests + plan.steady
        while sender.sent < promote_at:
            sender.check()
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}")
            absorb(collector.take())
            time.sleep(0.05)
        publish_control(
            settings, set_golden_event(better, actor="bench", reason="warm-up benchmark: promotion")
        )
        promoted_ms = time.time() * 1000
        promoted_index = sender.sent  # requests from here on were sent after the promotion was acknowledged
        say(f"  {variant}{repeat}: promoted {better} after request {promoted_index}")

        settled_from = plan.after + int(plan.rate)  # the control window starts ~1 s after the first one
        until = promoted_index + settled_from + plan.after
        while sender.sent < until:
            sender.check()
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}")
            if sender.sent >= len(messages):
                raise RuntimeError(f"{variant}{repeat}: ran out of requests ({len(messages)})")
            time.sleep(0.1)
            absorb(collector.take())
        sender.stop()
        wanted = set(sender.create_ms)
        drain_deadline = time.perf_counter() + 30
        while not wanted <= answers.keys() and time.perf_counter() < drain_deadline:
            time.sleep(0.1)
            absorb(collector.take())
    finally:
        sender.stop()
        sampler.stop()
        collector.close()
        stop_processes([worker])

    def window(ids: Sequence[str]) -> dict[str, Any]:
        rows = [(answers[r], sender.create_ms[r]) for r in ids if r in answers and r in sender.create_ms]
        summary = latency_summary(
            [ts - created for (ts, _), created in rows],
            [record.cache_hit for (_, record), _ in rows],
            [record.timings_ms.get("kafka_to_publish", float("nan")) for (_, record), _ in rows],
        )
        if rows:
            sent_from, sent_to = min(c for _, c in rows) / 1000, max(c for _, c in rows) / 1000
            summary["cores_busy"] = sampler.cores(sent_from, sent_to)
        return summary

    sent_ids = [request_id for request_id, _, _ in messages[: sender.sent]]
    steady_ids = sent_ids[plan.warm_requests : plan.warm_requests + plan.steady]
    after_ids = sent_ids[promoted_index:]
    by_new = [r for r in after_ids if r in answers and answers[r][1].golden.model_version == better]
    old_after = [
        r for r in after_ids[: plan.after] if r in answers and answers[r][1].golden.model_version == golden
    ]
    if len(by_new) < plan.after:
        raise RuntimeError(
            f"{variant}{repeat}: only {len(by_new)} answers of {better} after the promotion "
            f"(the switch took longer than {settled_from / plan.rate:.0f} s?)"
        )
    first_new_ms = min((answers[r][0] for r in by_new), default=float("nan"))
    steady = window(steady_ids)
    new_golden = window(by_new[: plan.after])
    transition = window(after_ids[: plan.after])
    settled = window(after_ids[settled_from : settled_from + plan.after])
    first_200 = window(by_new[:200])
    worst = sorted(
        by_new[: plan.after], key=lambda r: answers[r][0] - sender.create_ms.get(r, answers[r][0])
    )[-10:]
    log_text = log_path.read_text(errors="replace")
    warmed = re.findall(
        rf"model warmed version={re.escape(better)} warm_up_rows=(\d+) cached_rows=(\d+) seconds=([\d.]+)",
        log_text,
    )
    result = {
        "variant": variant,
        "repeat": repeat,
        "topic_prefix": settings.topic_prefix,
        "worker_ready_s": ready_s,
        "requests_sent": sender.sent,
        "requests_answered": len(wanted & answers.keys()),
        "promoted_after_request": promoted_index,
        "switch_after_promotion_s": (first_new_ms - promoted_ms) / 1000,
        "answered_by_old_golden_in_first_after": len(old_after),
        "warmer_log": [
            {"warm_up_rows": int(a), "cached_rows": int(b), "seconds": float(c)} for a, b, c in warmed
        ],
        "steady": steady,
        "new_golden_first": new_golden,
        "sent_after_promotion_first": transition,
        "new_golden_first_200": first_200,
        "settled_after_promotion": settled,
        "settled_window_requests_after_promotion": [settled_from, settled_from + plan.after],
        "worst_new_golden": [
            {
                "requests_after_promotion": index[r] - promoted_index,
                "latency_ms": answers[r][0] - sender.create_ms[r],
                "cache_hit": answers[r][1].cache_hit,
            }
            for r in reversed(worst)
            if r in sender.create_ms
        ],
        "ratio_new_golden_p99_to_steady": new_golden["p99_ms"] / steady["p99_ms"],
        "ratio_sent_after_p99_to_steady": transition["p99_ms"] / steady["p99_ms"],
        "ratio_new_golden_p99_to_settled": new_golden["p99_ms"] / settled["p99_ms"],
        "worker_log": str(log_path),
    }
    result["redis_cache_outages_logged"] = log_text.count("cache_redis_unavailable")
    result["fell_behind_in_steady"] = steady["p50_last_tenth_ms"] > 2 * steady["p50_first_tenth_ms"] + 50
    others = [w.get("cores_busy", {}).get("others", float("nan")) for w in (steady, new_golden, settled)]
    result["others_cores_max"] = max(others)
    result["disturbed"] = bool(result["fell_behind_in_steady"] or max(others) > DISTURBED_CORES)
    if result["fell_behind_in_steady"]:
        say(
            f"  {variant}{repeat}: the worker fell behind {plan.rate:.0f}/s "
            f"(p50 {steady['p50_first_tenth_ms']:.0f} -> {steady['p50_last_tenth_ms']:.0f} ms): "
            "lower --rate, the numbers measure a queue"
        )
    if not warmed and variant == "warm":
        say(f"  warm{repeat}: no 'model warmed' line for {better} in {log_path}")
    if result["requests_answered"] < len(wanted):
        say(
            f"  {variant}{repeat}: {len(wanted) - result['requests_answered']} requests unanswered after 30 s"
        )
    say(
        f"  {variant}{repeat}: steady p99 {steady['p99_ms']:.1f} ms, "
        f"new golden p99 {new_golden['p99_ms']:.1f} ms "
        f"(x{result['ratio_new_golden_p99_to_steady']:.2f}), hits {steady['cache_hit_share']:.0%} -> "
        f"{new_golden['cache_hit_share']:.0%}, switch {result['switch_after_promotion_s']:.2f} s"
    )
    return result


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s, well under capacity")
    parser.add_argument("--warm-requests", type=int, default=2_000, help="traffic before the steady window")
    parser.add_argument("--steady", type=int, default=2_000, help="requests in the steady-state window")
    parser.add_argument("--after", type=int, default=1_000, help="first requests answered by the new golden")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (ABBA order)")
    parser.add_argument("--train-events", type=int, default=10_000)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run the workers with the prediction cache off (the product default): the warmer then "
        "only warms the model (the recent-request replay only fills the cache, so it is skipped)",
    )
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    plan = Plan(args.rate, args.warm_requests, args.steady, args.after, not args.no_cache)
    record = RunRecord()
    world = WorldSettings(seed=args.seed, entities=args.entities, days=args.days)

    logs = Path(tempfile.mkdtemp(prefix="bench-warmup-logs-"))  # kept: the workers' logs
    say(f"worker logs in {logs}")
    with deployed("warmup", MODELS, world, n_events=args.train_events) as deployment:
        base, versions = deployment.settings, deployment.versions
        budget = plan.warm_requests + plan.steady + 2 * plan.after + int(plan.rate * 15)
        traffic = {
            r: synthetic_messages(base, world, budget, seed=args.seed * 100 + r) for r in range(args.repeats)
        }
        probes = synthetic_messages(base, world, 400, seed=args.seed * 100 + 99)
        order = [("warm", "cold"), ("cold", "warm")]
        runs: list[dict[str, Any]] = []
        for r in range(args.repeats):
            for variant in order[r % 2]:
                say(f"run {len(runs) + 1}/{2 * args.repeats}: {variant}, repeat {r}")
                runs.append(
                    run_once(base, deployment.cleanup, versions, variant, r, traffic[r], probes, plan, logs)
                )

    summary = summarize(runs)
    print_table(runs, summary, plan)
    write_results(
        RESULTS,
        {
            "benchmark": "warmup",
            "question": "p99 of the first requests after a promotion, warmer on/off, vs steady-state p99",
            "target_ratio": TARGET_RATIO,
            "latency": "prediction Kafka timestamp - request Kafka CreateTime (message.timestamp()), "
            "matched by request_id",
            "deployment": {
                "entities": args.entities,
                "days": args.days,
                "models": MODELS,
                "versions": versions,
            },
            "plan": vars(args),
            "warmer_replay": base.warmer_replay,
            "batch_max": base.batch_max,
            "runs": runs,
            "summary": summary,
            "worker_logs": str(logs),
            **record.fields(),
        },
    )
    say(f"done in {record.seconds:.0f} s")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in ("warm", "cold"):
        mine = [run for run in runs if run["variant"] == variant]
        quiet = [run["ratio_new_golden_p99_to_steady"] for run in mine if not run["disturbed"]]
        ratios = [run["ratio_new_golden_p99_to_steady"] for run in mine]
        out[variant] = {
            "runs": len(mine),
            "steady_p99_ms": [run["steady"]["p99_ms"] for run in mine],
            "new_golden_p99_ms": [run["new_golden_first"]["p99_ms"] for run in mine],
            "settled_p99_ms": [run["settled_after_promotion"]["p99_ms"] for run in mine],
            "ratios": ratios,
            "median_ratio": float(np.median(ratios)),
            "worst_ratio": float(max(ratios)),
            "runs_within_target": sum(ratio <= TARGET_RATIO for ratio in ratios),
            "ratios_to_settled": [run["ratio_new_golden_p99_to_settled"] for run in mine],
            "sent_after_ratios": [run["ratio_sent_after_p99_to_steady"] for run in mine],
            "new_golden_cache_hit_share": [run["new_golden_first"]["cache_hit_share"] for run in mine],
            "undisturbed_ratios": quiet,
            "undisturbed_within_target": sum(ratio <= TARGET_RATIO for ratio in quiet),
        }
    out["target_met_with_warmer"] = out["warm"]["runs_within_target"] == out["warm"]["runs"]
    out["target_met_with_warmer_undisturbed_runs"] = (
        out["warm"]["undisturbed_within_target"] == len(out["warm"]["undisturbed_ratios"]) > 0
    )
    out["warm_vs_cold_median_new_golden_p99"] = float(
        np.median(out["warm"]["new_golden_p99_ms"]) / np.median(out["cold"]["new_golden_p99_ms"])
    )
    return out


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any], plan: Plan) -> None:
    print(
        f"\nWarm-up after a promotion at {plan.rate:.0f} requests/s (latency = prediction Kafka timestamp - "
        "request CreateTime).\n"
        f"steady = {plan.steady} requests before the promotion; after = first {plan.after} requests answered "
        f"by the new golden;\nsettled = {plan.after} requests sent from ~1 s after those (drift control); "
        "hits = golden scores from the cache; switch = promotion -> first answer of the new golden.\n"
    )
    header = (
        f"{'run':<6} {'steady p99':>10} {'after p99':>10} {'ratio':>6} {'target':>7} {'after max':>10} "
        f"{'settled p99':>11} {'after/settled':>13} {'hits st/af':>11} {'switch s':>8} {'others st/af':>12}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        steady, new, settled = run["steady"], run["new_golden_first"], run["settled_after_promotion"]
        ok = "met" if run["ratio_new_golden_p99_to_steady"] <= TARGET_RATIO else "MISSED"
        print(
            f"{run['variant'] + str(run['repeat']):<6} {steady['p99_ms']:8.0f}ms {new['p99_ms']:8.0f}ms "
            f"{run['ratio_new_golden_p99_to_steady']:5.2f}x {ok:>7} {new['max_ms']:8.0f}ms "
            f"{settled['p99_ms']:9.0f}ms {run['ratio_new_golden_p99_to_settled']:12.2f}x "
            f"{steady['cache_hit_share']:5.0%}/{new['cache_hit_share']:<5.0%} "
            f"{run['switch_after_promotion_s']:8.2f} "
            f"{steady.get('cores_busy', {}).get('others', float('nan')):5.2f}/"
            f"{new.get('cores_busy', {}).get('others', float('nan')):<5.2f}"
            + ("  disturbed" if run["disturbed"] else "")
        )
    print()
    for variant in ("warm", "cold"):
        s = summary[variant]
        print(
            f"{variant}: after p99 / steady p99 = "
            + ", ".join(f"{r:.2f}x" for r in s["ratios"])
            + f" (median {s['median_ratio']:.2f}x, worst {s['worst_ratio']:.2f}x; "
            f"within {TARGET_RATIO}x in {s['runs_within_target']}/{s['runs']} runs; undisturbed runs: "
            f"{s['undisturbed_within_target']}/{len(s['undisturbed_ratios'])})"
        )
    print(
        f"median after p99, warm / cold = {summary['warm_vs_cold_median_new_golden_p99']:.2f}x; "
        f"target (warm within {TARGET_RATIO}x of steady in every run): "
        + ("MET" if summary["target_met_with_warmer"] else "MISSED")
        + "; in every undisturbed run: "
        + ("MET" if summary["target_met_with_warmer_undisturbed_runs"] else "MISSED or no such run")
    )
    print(
        f"others = cores busy outside the worker and this script (neighbours, Kafka, Redis) during the "
        f"steady/after windows; disturbed = others > {DISTURBED_CORES} cores or the worker fell behind."
    )


if __name__ == "__main__":
    main()
