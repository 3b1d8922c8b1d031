"""A restarted worker with a million pending join entries: start-up to its first answer, the join's
restore from its changelog, and its memory after.

Not a test. One deployment (own Feast project and topics, golden + two shadows, like
bench_feedback.py). Steps:

1. fill: a worker (every role, as shipped) is started; `--pending` (1,000,000) predictions without
   outcomes reach its join, which writes one changelog record per pending prediction to
   `<prefix>join-changelog` (compacted). `--fill predictions` (default) produces the predictions
   directly on `<prefix>predictions` (Prediction records like the worker's: golden + 2 shadow scores,
   keyed by entity id with the rig's murmur2 partitioner), so the real join consumes them and writes the
   real changelog; `--fill requests` produces requests instead and lets the worker predict them first
   (the whole path; ~3x slower). Done when the changelog holds them all and the worker is idle. The
   worker's RSS is read, then it is stopped (SIGTERM).
2. restart: a new worker is started on the same settings (its join store folder is removed and
   restored from the changelog, as on any machine that takes a partition over). Measured from the
   process start: (i) the first answered request (a probe request produced right after the start,
   then one every 0.5 s until one is answered, `bench.support.kafka_io.wait_ready`); (ii) each
   "join partition N restored M changelog records in X s" log line, seen as it is written (the join
   is restored when all partitions are); (iii) /readyz answering 200; and the RSS when the restore
   ended, its peak (VmHWM) and RSS samples every 0.5 s; the restore runs in a child process of the
   worker (streams/join_restore.py), whose own peak the same log lines give.
3. check: outcomes for `--check` (10,000) of the pending predictions are produced; every one must be
   joined for its three models on `<prefix>joined` (the restored state is the state).

Targets (issue "The feedback loop at the same standard"): start-up to first answer <= 10 s with 1 M
pending join entries (before: 57 s at 340 k changelog records). Prints the numbers and writes
bench/results/join_restart.json (machine, load, code revision, command). Stops the workers and
removes the run's topics and Redis keys at the end, also on error or Ctrl-C. Takes ~8 min with the
defaults on 2 cores (the fill is most of it); `--pending 50000 --check 2000` takes ~2 min.

Run (from the repository root): .venv/bin/python bench/bench_join_restart.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.cpu import wait_idle
from bench.support.deploy import Deployment, add_world_arguments, deployed_world, route
from bench.support.feedback import JoinedRows, traffic_with_outcomes
from bench.support.kafka_io import Collector, Message, Sender, connected_producer, end_offsets, wait_ready
from bench.support.memory import RssSampler, peak_rss_mib, rss_mib
from bench.support.report import RESULTS_DIR, RunRecord, publish, say
from bench.support.workers import LogWatch, free_port, get_json, tails_on_error
from rig.processes import stop_processes
from rig.wire.codec import Codec
from rig.wire.records import ExperimentScore, ModelScore, Outcome, Prediction
from sim.deploy import start_worker
from sim.world import make_requests

RESULTS = RESULTS_DIR / "join_restart.json"
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
SHADOWS = ("better", "worse")
TARGET_FIRST_ANSWER_S = 10.0
BEFORE = {"first_answer_s": 57.0, "changelog_records": 340_000}
RESTORED = re.compile(
    r"join partition (\d+) restored (\d+) changelog records in ([\d.]+) s "
    r"\(restore process peak (?:(\d+) MiB|unknown)\)"  # unknown: no /proc (streams/join_restore.py)
)
CHUNK = 50_000


def prediction_chunks(
    deployment: Deployment, template: Prediction, n: int, seed: int
) -> Iterator[list[Message]]:
    """`n` predictions of the world's requests shaped like `template` (its models and transform),
    encoded and keyed by entity id, CHUNK at a time."""
    codec = Codec(Prediction, registry_url=deployment.settings.schema_registry_url)
    frame = make_requests(deployment.world, n, seed=seed)
    ids, entities = frame["request_id"].tolist(), frame["entity_id"].tolist()
    event_ms = (frame["event_time"].astype("int64").to_numpy() // 1_000_000).tolist()
    scores = np.random.default_rng(seed).random((n, 1 + len(template.experiments))).tolist()
    for start in range(0, n, CHUNK):
        messages = []
        for i in range(start, min(n, start + CHUNK)):
            golden = ModelScore(model_version=template.golden.model_version, score=scores[i][0])
            record = Prediction(
                request_id=ids[i],
                entity_id=entities[i],
                event_time=event_ms[i],
                score=golden.score,
                answered_by=template.answered_by,
                golden=golden,
                experiments=[
                    ExperimentScore(
                        experiment=e.experiment, model_version=e.model_version, mode=e.mode, score=s
                    )
                    for e, s in zip(template.experiments, scores[i][1:], strict=True)
                ],
                transform_version=template.transform_version,
            )
            messages.append((ids[i], entities[i].encode(), codec.encode(record)))
        yield messages


def changelog_records(deployment: Deployment) -> int:
    """Records on the join's changelog so far (every partition's high watermark)."""
    return sum(end_offsets(deployment.settings, [deployment.settings.topic("join-changelog")]).values())


def fill(
    deployment: Deployment, worker: subprocess.Popen[bytes], template: Prediction, args: argparse.Namespace
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Bring `args.pending` pending predictions into the worker's join.

    Returns:
        The measurements, and (request id, entity id) of a spread sample of the pending requests.
    """
    settings = deployment.settings
    baseline = changelog_records(deployment)
    if args.fill == "predictions":
        producer = connected_producer(settings, keyed=True)
        sender = Sender(producer, settings.topic("predictions"))
        chunks = prediction_chunks(deployment, template, args.pending, seed=5_000)
    else:
        producer = connected_producer(settings)
        sender = Sender(producer, settings.topic("requests"))
        requests = traffic_with_outcomes(settings, deployment.world, args.pending, seed=5_000).requests
        chunks = (requests[start : start + CHUNK] for start in range(0, args.pending, CHUNK))
    every = max(1, args.pending // max(1, args.check))
    sample: list[tuple[str, str]] = []
    began = time.perf_counter()
    for messages in chunks:
        sender.send(messages)
        offset = sender.sent - len(messages)
        sample += [
            (rid, key.decode()) for i, (rid, key, _) in enumerate(messages) if (offset + i) % every == 0
        ]
        say(f"  produced {sender.sent:,} {args.fill} ({changelog_records(deployment) - baseline:,} pending)")
    if producer.flush(120) or sender.failed:
        raise RuntimeError(f"{args.fill} not all acknowledged")
    produce_s = time.perf_counter() - began
    deadline = time.monotonic() + args.fill_timeout_s
    while (pending := changelog_records(deployment) - baseline) < args.pending:
        if worker.poll() is not None:
            raise RuntimeError(f"the filling worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {pending:,} of {args.pending:,} changelog records after the fill timeout"
            )
        say(f"  {pending:,} changelog records")
        time.sleep(5)
    complete_s = time.perf_counter() - began
    idle_after_s = wait_idle(worker.pid, timeout_s=300)
    return {
        "fill": args.fill,
        "pending": args.pending,
        "produce_s": produce_s,
        "changelog_complete_after_s": complete_s,
        "pending_per_s": args.pending / complete_s,
        "idle_after_s": idle_after_s,
        "changelog_records": changelog_records(deployment),
        "filling_worker_rss_mib": rss_mib(worker.pid),
        "filling_worker_peak_rss_mib": peak_rss_mib(worker.pid),
    }, sample[: args.check]


def restart(
    deployment: Deployment, log: Path, port: int, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a new worker and time, from its start, its first answer, its join restore and readiness."""
    settings = deployment.settings
    producer = connected_producer(settings, linger_ms=0)
    collector = Collector(settings, from_end=True).start()
    probes = traffic_with_outcomes(settings, deployment.world, 2_000, seed=6_000).requests
    watch = LogWatch(log, WATCHED).start()
    began = time.time()
    worker = start_worker(settings, log, "INFO", web_port=port)
    deployment.cleanup.processes.append(worker)
    memory = RssSampler(lambda: {"restarted": worker.pid}, period_s=0.5).start()
    restored: dict[int, dict[str, float]] = {}
    ready_s = rss_at_restore = None
    try:
        sender = Sender(producer, settings.topic("requests"))
        wait_ready(sender, collector, probes, worker, timeout_s=600)
        first_answer_s = time.time() - began  # wait_ready ends as soon as the first answer is read
        deadline = time.monotonic() + args.restore_timeout_s
        while ready_s is None or len(restored) < settings.topic_partitions:
            if worker.poll() is not None:
                raise RuntimeError(f"the restarted worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                say(f"! restore not seen complete within {args.restore_timeout_s:.0f} s")
                break
            if ready_s is None and (get_json(port, "/readyz", timeout_s=1) or {}).get("ready"):
                ready_s = time.time() - began
            for seen_at, line in watch.seen:
                match = RESTORED.search(line)
                if match and int(match[1]) not in restored:
                    restored[int(match[1])] = {
                        "seen_after_s": seen_at - began,
                        "records": int(match[2]),
                        "logged_s": float(match[3]),
                        "restore_process_peak_rss_mib": float(match[4] or "nan"),
                    }
                    if len(restored) == settings.topic_partitions:
                        rss_at_restore = rss_mib(worker.pid)
            time.sleep(0.1)
    finally:
        memory.stop()
        watch.stop()
        collector.close()
    return worker, {
        "first_answer_s": first_answer_s,
        "ready_s": ready_s,
        "restored": {str(partition): restored[partition] for partition in sorted(restored)},
        "restored_records": sum(int(r["records"]) for r in restored.values()),
        "restore_done_after_s": max((r["seen_after_s"] for r in restored.values()), default=float("nan")),
        "restore_logged_s_total": sum(r["logged_s"] for r in restored.values()),
        "rss_mib_at_restore_end": rss_at_restore,
        "peak_rss_mib": peak_rss_mib(worker.pid),
        # the restore runs in a child process (streams/join_restore.py): the worker's pod holds both
        "restore_process_peak_rss_mib": max(
            (
                r["restore_process_peak_rss_mib"]
                for r in restored.values()
                if r["restore_process_peak_rss_mib"] >= 0
            ),
            default=float("nan"),
        ),
        "rss_mib_samples": [(round(at - began, 2), round(mib, 1)) for at, _, _, mib in memory.samples],
        "log_lines": [(round(at - began, 2), line[-200:]) for at, line in watch.seen],
    }


WATCHED = r"restored|kept|partitions assigned|Ready|ERROR|CRITICAL|Traceback"


def check(
    deployment: Deployment,
    worker: subprocess.Popen[bytes],
    pending: Sequence[tuple[str, str]],
    models: Sequence[str],
) -> dict[str, Any]:
    """Outcomes for some pending predictions: each must be joined for every model of its prediction."""
    settings = deployment.settings
    codec = Codec(Outcome, registry_url=settings.schema_registry_url)
    now_ms = int(time.time() * 1000)
    messages = [
        (
            rid,
            entity.encode(),
            codec.encode(Outcome(request_id=rid, entity_id=entity, label=1, event_time=now_ms)),
        )
        for rid, entity in pending
    ]
    ids = [rid for rid, _ in pending]
    joined = JoinedRows(settings, from_end=True).start()
    try:
        producer = connected_producer(settings, keyed=True)
        began = time.perf_counter()
        Sender(producer, settings.topic("outcomes")).send(messages)
        producer.flush(60)
        expected = {rid: tuple(models) for rid in ids}
        deadline = time.monotonic() + 300
        while joined.short(expected) and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.5)
        seconds = time.perf_counter() - began
    finally:
        joined.close()
    short = joined.short(expected)
    return {
        "outcomes": len(ids),
        "joined_requests": len(ids) - len(short),
        "not_joined_sample": short[:5],
        "joined_rows": joined.count(ids),
        "joined_rows_repeated": joined.repeats(ids),
        "seconds": seconds,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_world_arguments(parser)
    parser.add_argument("--pending", type=int, default=1_000_000, help="pending predictions in the join")
    parser.add_argument(
        "--fill", choices=("predictions", "requests"), default="predictions", help="what is produced to fill"
    )
    parser.add_argument(
        "--check", type=int, default=10_000, help="pending predictions given an outcome after"
    )
    parser.add_argument("--fill-timeout-s", type=float, default=1_800.0, help="longest wait for the fill")
    parser.add_argument("--restore-timeout-s", type=float, default=600.0, help="longest wait for the restore")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with deployed_world("join-restart", MODELS, args) as deployment:
        settings, versions = deployment.settings, deployment.versions
        route(settings, versions, SHADOWS)
        logs = {name: settings.home / f"{name}.log" for name in ("filling", "restarted")}
        with tails_on_error(logs.values()):
            say("fill: a worker (every role) is started")
            filling = start_worker(settings, logs["filling"], "INFO", web_port=free_port())
            deployment.cleanup.processes.append(filling)
            collector = Collector(settings, from_end=True).start()
            probes = traffic_with_outcomes(settings, deployment.world, 1_000, seed=4_000).requests
            sender = Sender(connected_producer(settings, linger_ms=0), settings.topic("requests"))
            first_start_s, seen = wait_ready(sender, collector, probes, filling, timeout_s=600)
            collector.close()
            template = seen[0][1]
            say(f"  answered after {first_start_s:.1f} s; filling the join with {args.pending:,} {args.fill}")
            filled, pending = fill(deployment, filling, template, args)
            say(
                f"  {filled['pending']:,} pending after {filled['changelog_complete_after_s']:.0f} s "
                f"({filled['pending_per_s']:,.0f}/s); worker RSS {filled['filling_worker_rss_mib']:.0f} MiB"
            )
            stopped = time.perf_counter()
            stop_processes([filling])
            filled["stop_s"] = time.perf_counter() - stopped
            filled["first_start_first_answer_s"] = first_start_s
            say("restart: a new worker")
            port = free_port()
            worker, restarted = restart(deployment, logs["restarted"], port, args)
            say(
                f"  first answer after {restarted['first_answer_s']:.1f} s, restored "
                f"{restarted['restored_records']:,} records by {restarted['restore_done_after_s']:.1f} s, "
                f"RSS {restarted['rss_mib_at_restore_end'] or float('nan'):.0f} MiB"
            )
            models = (template.golden.model_version, *(e.model_version for e in template.experiments))
            say(f"check: outcomes for {len(pending):,} pending predictions")
            checked = check(deployment, worker, pending, models)
            say(
                f"  {checked['joined_requests']:,} of {checked['outcomes']:,} joined "
                f"in {checked['seconds']:.1f} s"
            )
            counts = get_json(port, "/join/counts/")
    return {
        "settings": {
            "topic_prefix": settings.topic_prefix,
            "topic_partitions": settings.topic_partitions,
            "model_versions": versions,
        },
        "fill": filled,
        "restart": restarted,
        "check": checked,
        "join_counts_restarted": counts,
    }


def print_report(result: dict[str, Any], output: Path) -> None:
    filled, restarted, checked = result["fill"], result["restart"], result["check"]
    print(
        f"\nfill ({filled['fill']}): {filled['pending']:,} pending predictions in the join after "
        f"{filled['changelog_complete_after_s']:.0f} s ({filled['pending_per_s']:,.0f}/s); changelog "
        f"{filled['changelog_records']:,} records; filling worker RSS "
        f"{filled['filling_worker_rss_mib']:.0f} MiB "
        f"(peak {filled['filling_worker_peak_rss_mib']:.0f}); stopped in {filled['stop_s']:.1f} s"
    )
    print("\nrestarted worker, seconds from its process start")
    print(f"  first answered request       {restarted['first_answer_s']:8.1f}")
    ready = restarted["ready_s"]
    print(f"  /readyz 200                  {'not seen' if ready is None else format(ready, '.1f'):>8}")
    for partition, r in restarted["restored"].items():
        print(
            f"  join partition {partition} restored     {r['seen_after_s']:8.1f}  "
            f"({r['records']:,} records in {r['logged_s']:.1f} s)"
        )
    print(
        f"  restore complete             {restarted['restore_done_after_s']:8.1f}  "
        f"({restarted['restored_records']:,} records, {restarted['restore_logged_s_total']:.1f} s restoring)"
    )
    print(
        f"RSS at the end of the restore {restarted['rss_mib_at_restore_end'] or float('nan'):.0f} MiB, peak "
        f"{restarted['peak_rss_mib']:.0f} MiB; the restore's child process peaked at "
        f"{restarted['restore_process_peak_rss_mib']:.0f} MiB"
    )
    target = result["target"]
    print(
        f"target: first answer <= {target['limit']:.0f} s with {filled['pending']:,} pending: "
        f"{target['value']:.1f} s {'PASS' if target['pass'] else 'MISS'} "
        f"(before: {BEFORE['first_answer_s']:.0f} s "
        f"at {BEFORE['changelog_records']:,} changelog records)"
    )
    print(
        f"check: {checked['joined_requests']:,} of {checked['outcomes']:,} pending predictions joined "
        f"after their outcome ({checked['joined_rows']:,} rows, {checked['joined_rows_repeated']} repeated) "
        f"in {checked['seconds']:.1f} s; join counts {result['join_counts_restarted']}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    measured = run(args)
    first = measured["restart"]["first_answer_s"]
    target = {"value": first, "limit": TARGET_FIRST_ANSWER_S, "pass": first <= TARGET_FIRST_ANSWER_S}
    result = record.result("join_restart", args, **measured, target=target, before=BEFORE)
    publish(result, args.output, print_report)


if __name__ == "__main__":
    main()
