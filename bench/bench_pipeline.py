"""End-to-end pipeline, one run, side by side: the bare confluent-kafka loop over the predict code (the
ceiling), the rig worker's predict agent alone, the rig worker as shipped, and a naive agent.

Not a test. One deployment serves every agent: its own Feast project (on the shared Redis), a
synthetic world of 5,000 entities, three models trained on Feast historical reads, and on each agent's
control topic a golden model plus two shadow experiments (`better`, `worse`), so every agent scores
every request with all three models. Each agent is a process of its own on topics of its own
(`<prefix><agent>.`), with the same settings (`batch_max` 500, prediction cache off, XGBoost `nthread`
1 per model):

- bare_loop:      the ceiling. This script with --serve-bare-loop: `Runtime.create(settings)`, then a
                  plain confluent-kafka loop in one asyncio loop: poll the first request (0.1 s) and
                  take what has arrived behind it up to `batch_max` (`consume(batch_max - 1, timeout=0)`,
                  no waiting window, like the worker's BatchSource) → `streams.predict.answer` → produce
                  every (topic, key, value) of `streams.predict.outputs` (idempotent producer, linger 5
                  ms, as the worker's sink) → `producer.flush()` → `consumer.commit(asynchronous=False)`.
- worker_predict: `rig-worker` (sim.deploy.start_worker) with RIG_WORKER_ROLES='["predict"]': the
                  shipped predict path (streams/plane: BatchSource, DeliveringSink, OffsetLedger) alone.
- worker:         `rig-worker` as shipped: every role (the join, promoter and explainer too), which
                  also work on what the predict path produces.
- naive:          bench/naive_agent.py: a Faust agent that, per message, decodes, reads ONE entity
                  with the Feast SDK, transforms one row, predicts one row per model, awaits one send.
- mlserver (peer): MLServer 1.7.1 in its Kafka mode, in a venv of its own (bench/peers/mlserver/setup,
                  run first), serving the golden model alone (no enrichment, no shadows) to a backlog of
                  `--peer-requests` (20,000) one-row requests, with its defaults and with adaptive
                  batching (bench/peers/mlserver_peer.py); every request id checked (`--no-peers` skips).

Phases (before each, every agent process is idle again; the machine's other load is reported):
1. warm-up: a probe request and its prediction (start-up excluded), then a small burst;
2. throughput: the same backlog of `--requests` (50,000) pre-encoded Avro requests to each rig agent,
   produced as fast as possible (`--naive-requests`, 2,000, of it to the naive agent: at its rate the
   full backlog would take minutes); requests/s from the first to the last prediction (their Kafka
   timestamps); CPU µs per request of the agent's process (/proc, robust to neighbours' load) and
   per thread group (main = event loop, python = other Python threads, rdk:* = librdkafka); also
   requests/s and CPU counted until the process is idle again (the worker's other agents may still
   work on the predictions after the last one). `--rounds` (2) rounds in mirrored order (A B C D,
   D C B A), the better one counts; an agent's capacity is the lower of its backlog and until-idle
   rates;
3. latency: requests at a steady rate, half of the agent's capacity (`--latency-load`; or a fixed
   `--latency-rate`, to compare settings at the same rate) then 100 req/s, `--latency-seconds` (20) each;
   end-to-end = the prediction's Kafka timestamp - the request's CreateTime (both
   `message.timestamp()`, matched by request_id). Requests are produced with `--client-linger-ms` (1):
   the CreateTime is stamped before the linger, so it counts in the latency. With linger.ms 0 every
   request is a produce request of its own, and at 8,000 req/s on this 2-core machine the broker
   alone fell behind (a plain consumer, no rig: p50 709 ms, p99 1,320 ms; with 1 ms, p50 1.8 ms, p99
   6.7 ms). Before each agent's phase at half its capacity, the same paced requests go to a topic no
   agent serves, read by a plain consumer in a process of its own (`bench/support/path_probe.py`):
   the Kafka path alone at that rate, the floor of the agent's latency.

Before all that (`--before`, default 5dff287, the commit before the hot-path issue's first change; `none`
skips it), the bare loop, worker_predict and worker of that commit are measured by its own
bench_pipeline.py, in a git worktree of it, with the same backlog, rounds and worker settings: the
report sets each agent's rate, CPU per request and stages beside today's, measured in the same run.

Where the rig agents' time goes is read from the per-batch `timings_ms` of their predictions (decode,
enrich, transform, dispatch, predict, total), which the rig writes only with RIG_PREDICTION_TIMINGS
(off as shipped: `--worker-env RIG_PREDICTION_TIMINGS=true` for that table, at ~8 µs per request);
wall time outside `total` (publish, delivery, commit, hand-over, and in `worker` its other agents) is
`outside_stages`.

Prints the tables, the ratios worker_predict/bare_loop, worker/bare_loop and bare_loop/naive, and the
targets of "No request lost, four times faster" (predict path >= 80 % of the bare loop; p99 <= 25 ms at
half capacity; p50 <= 10 ms at 100 req/s) with PASS/MISS; writes bench/results/pipeline.json (machine,
load, code revision, command, every number). Stops the agents, removes the Feast project's Redis keys
and the run's topics at the end, also on error or Ctrl-C. Takes ~6 min with the defaults on 2 cores
(longer when the worker's other agents stay busy after a backlog); `--requests 3000 --naive-requests
200 --rounds 1 --latency-seconds 5` takes ~2 min. `--agents` runs a subset, `--worker-env` passes a
RIG_* setting to every rig agent (e.g. RIG_MAX_OPEN_BATCHES=100000 to see the plane without its
backpressure), `--log-level INFO` keeps more of the agents' logs (their last lines print on error).

Run (from the repository root): .venv/bin/python bench/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support import path_probe
from bench.support.cpu import CpuUsage, PhaseCpu, wait_idle
from bench.support.deploy import add_world_arguments, deployed_world, route, with_prefix
from bench.support.kafka_io import Collector, Message, Sender, connected_producer, synthetic_messages
from bench.support.report import (
    REPO,
    RESULTS_DIR,
    PhaseClock,
    RunRecord,
    latency_percentiles,
    say,
    write_results,
)
from bench.support.workers import add_worker_env_argument, tails_on_error, worker_env
from rig.config import RigSettings
from rig.wire.codec import Codec
from rig.wire.records import Prediction, Request
from sim.deploy import settings_env, start_worker
from sim.settings import WorldSettings

RESULTS = RESULTS_DIR / "pipeline.json"
NAIVE_AGENT = REPO / "bench" / "naive_agent.py"
SERVE_BARE_LOOP = "--serve-bare-loop"
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
SHADOWS = ("better", "worse")
AGENTS = ("bare_loop", "worker_predict", "worker", "naive")
RIG_AGENTS = AGENTS[:3]
STAGES = ("decode", "enrich", "transform", "dispatch", "predict", "total")
NAIVE_STAGES = ("decode", "enrich", "transform", "predict", "total")
SLOW_RATE_PER_S = 100.0
TARGETS = {"share_of_bare_loop": 0.80, "p99_ms_at_half_capacity": 25.0, "p50_ms_at_100_per_s": 10.0}
BEFORE = {"faust_predict_agent_req_s": 3_599, "bare_loop_req_s": 14_646}  # the measurement
BEFORE_COMMIT = "5dff287"
"""The commit before the hot-path issue's first change (151f520, the compiled Avro writer)."""
BEFORE_AGENTS = ("bare_loop", "worker_predict", "worker")
HOT_PATH = {
    "cpu_us": 20.0,
    "worker_req_s": 25_000,
    "peer_ratio": 15.0,
}  # "The hot path at the hardware's pace"


# -- the bare loop (this script with --serve-bare-loop) -------------------------------------------
def serve_bare_loop() -> None:
    """The ceiling: the predict pipeline code driven by a plain confluent-kafka loop (RIG_* settings)."""
    import asyncio
    import logging
    import signal

    settings = RigSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    asyncio.run(bare_loop(settings, stop))


async def bare_loop(settings: RigSettings, stop: threading.Event) -> None:
    """consume → answer → produce the outputs → flush → commit, one batch at a time, until `stop`."""
    from confluent_kafka import Consumer, Producer

    from streams.consumed import source_of
    from streams.heap import freeze_heap
    from streams.predict import answer, outputs
    from streams.promote import open_metadata
    from streams.runtime import Runtime

    runtime = Runtime.create(settings, open_metadata(settings))  # as the worker builds it
    freeze_heap()
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": settings.consumer_group("predict"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    producer = Producer({**settings.kafka_producer_config(), "linger.ms": 5})  # as the worker's sink
    failed: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    consumer.subscribe([settings.topic("requests")])
    try:
        while not stop.is_set():
            first = consumer.poll(0.1)
            if first is None:
                continue
            messages = [first, *consumer.consume(settings.batch_max - 1, timeout=0)]
            good = [message for message in messages if message.error() is None]
            if not good:
                continue
            result = await answer(runtime, [source_of(message) for message in good])
            for topic, key, value, *placement in outputs(runtime, result):
                partition, timestamp_ms = (*placement, -1, 0)[:2]  # -1: the partitioner's; 0: now
                producer.produce(topic, value, key, partition, on_delivery=delivered, timestamp=timestamp_ms)
            producer.flush()
            if failed:
                raise RuntimeError(f"{len(failed)} deliveries failed, e.g. {failed[0]}")
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        runtime.close()


# -- the agents -----------------------------------------------------------------------------------
def start_bare_loop(
    settings: RigSettings, log_path: Path, log_level: str, **env: str
) -> subprocess.Popen[bytes]:
    """This script with --serve-bare-loop, logging to `log_path`."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), SERVE_BARE_LOOP],
        env=settings_env(settings, RIG_LOG_LEVEL=log_level, **env),
        cwd=REPO,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


def start_naive_agent(settings: RigSettings, log_path: Path) -> subprocess.Popen[bytes]:
    """bench/naive_agent.py as a Faust worker (no web server): routing and topics under the prefix
    of `settings`."""
    return subprocess.Popen(
        [sys.executable, str(NAIVE_AGENT), "worker", "--loglevel", "warn", "--without-web"],
        env=settings_env(settings, BENCH_NAIVE_TOPIC_PREFIX=settings.topic_prefix),
        cwd=REPO,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


def start_agent(
    name: str, settings: RigSettings, log_path: Path, log_level: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """One agent's process on the topics of `settings` (`env`: RIG_* settings of the rig agents)."""
    if name == "bare_loop":
        return start_bare_loop(settings, log_path, log_level, **env)
    if name == "worker_predict":
        return start_worker(settings, log_path, log_level, env={**env, "RIG_WORKER_ROLES": '["predict"]'})
    if name == "worker":
        return start_worker(settings, log_path, log_level, env=env)
    return start_naive_agent(settings, log_path)


@dataclass(frozen=True)
class Sent:
    """Requests produced in one phase: their Kafka CreateTime by request_id, and the wall times."""

    create_ms: dict[str, int]
    began: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.began


@dataclass(frozen=True)
class Trip:
    """One round trip: what was sent, the predictions by request_id (Kafka timestamp, record), the
    agent's CPU seconds, and how busy the machine was meanwhile."""

    sent: Sent
    answered: dict[str, tuple[int, Prediction]]
    cpu_s: float
    contention: dict[str, float]


@dataclass(frozen=True)
class Agent:
    name: str
    settings: RigSettings  # its requests/predictions topics
    process: subprocess.Popen[bytes]

    def round_trip(
        self, producer: Any, messages: Sequence[Message], rate_per_s: float | None, timeout_s: float
    ) -> Trip:
        """Produce `messages` to the agent (paced, or as fast as possible) and collect their predictions."""
        collector = Collector(self.settings, from_end=True).start()
        usage = CpuUsage(self.process.pid)
        try:
            sender = Sender(producer, self.settings.topic("requests"))
            began = time.perf_counter()
            sender.send(messages, rate_per_s)
            sent = Sent(sender.create_ms, began, time.perf_counter())
            if producer.flush(60) or sender.failed:
                raise RuntimeError(f"requests to {sender.topic} not all acknowledged")
            deadline = time.monotonic() + timeout_s
            while len(collector.raw) < len(messages) and time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                collector.check()
                time.sleep(0.05)
        finally:
            collector.close()
        contention = usage.report()
        answered = first_answers(
            collector.decode(collector.raw), {request_id for request_id, _, _ in messages}
        )
        if len(answered) < len(messages):
            say(f"  {self.name}: {len(answered)} of {len(messages)} predictions within {timeout_s:.0f} s")
        return Trip(sent, answered, contention["agent_cpu_s"], contention)


def first_answers(
    predictions: Iterable[tuple[int, Prediction]], wanted: set[str]
) -> dict[str, tuple[int, Prediction]]:
    """request_id -> (prediction Kafka timestamp ms, record), for the wanted requests (first answer)."""
    found: dict[str, tuple[int, Prediction]] = {}
    for timestamp, record in predictions:
        if record.request_id in wanted and record.request_id not in found:
            found[record.request_id] = (timestamp, record)
    return found


# -- phases ---------------------------------------------------------------------------------------
def warm_up(agent: Agent, producer: Any, world: WorldSettings, burst: int, seed: int) -> dict[str, float]:
    """A probe request and its prediction (waits out the start-up), then a small burst."""
    began = time.perf_counter()
    probe = synthetic_messages(agent.settings, world, 1, seed)
    if not agent.round_trip(producer, probe, None, timeout_s=300).answered:
        raise RuntimeError(f"{agent.name} did not answer the probe request within 300 s")
    probe_s = time.perf_counter() - began
    messages = synthetic_messages(agent.settings, world, burst, seed + 1)
    answered = agent.round_trip(producer, messages, None, timeout_s=120).answered
    return {"probe_answered_after_s": probe_s, "burst": burst, "burst_answered": len(answered)}


def backlog_round(
    agent: Agent, producer: Any, messages: Sequence[Message], pids: Sequence[int], idle_timeout_s: float
) -> tuple[dict[str, Any], list[Prediction]]:
    """A backlog produced as fast as possible; requests/s between the first and the last prediction,
    the agent's CPU per request (process and thread groups), then the same until it is idle again.

    Returns:
        The measurements, and the prediction records.
    """
    n, pid = len(messages), agent.process.pid
    idle_wait_s = wait_idle(*pids, timeout_s=idle_timeout_s)
    phase = PhaseCpu(pid)
    trip = agent.round_trip(producer, messages, None, timeout_s=max(300.0, n / 100))
    threads = phase.threads()
    busy_after_s, idle_at_ms, cpu_until_idle_s = phase.until_idle(idle_timeout_s)
    stamps = np.sort(np.array([timestamp for timestamp, _ in trip.answered.values()], dtype=np.int64))
    window_s = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
    first_request_ms = min(trip.sent.create_ms.values())
    until_idle_s = (idle_at_ms - first_request_ms) / 1000  # bounds when still busy at the limit
    answered = max(1, len(stamps))
    records = [record for _, record in trip.answered.values()]
    result = {
        "requests": n,
        "predictions": len(stamps),
        "requests_per_s": (len(stamps) - 1) / window_s if window_s > 0 else float("nan"),
        "window_s": window_s,
        "backlog_produce_s": trip.sent.seconds,
        "share_answered_before_backlog_complete": float(np.mean(stamps <= max(trip.sent.create_ms.values()))),
        "agent_cpu_s": trip.cpu_s,
        "agent_cpu_us_per_request": trip.cpu_s * 1e6 / answered,
        "agent_cores_busy": trip.cpu_s / window_s if window_s > 0 else float("nan"),
        "thread_cpu_us_per_request": {name: s * 1e6 / answered for name, s in threads.items()},
        "cache_hit_share": float(np.mean([r.cache_hit for r in records])) if records else 0.0,
        "contention": trip.contention,
        "waited_for_idle_before_s": idle_wait_s,
        "busy_after_last_prediction_s": busy_after_s,
        "until_idle": {
            "idle_reached": bool(np.isfinite(busy_after_s)),
            "seconds": until_idle_s,
            "requests_per_s": n / until_idle_s if until_idle_s > 0 else float("nan"),
            "agent_cpu_us_per_request": cpu_until_idle_s * 1e6 / n,
        },
        "stages": naive_stages(records, window_s) if agent.name == "naive" else rig_stages(records, window_s),
    }
    return result, records


def capacity(tp: dict[str, Any]) -> float:
    """Requests/s an agent sustains: the backlog rate, or less when its process stays busy after."""
    return min(tp["requests_per_s"], tp["until_idle"]["requests_per_s"])


def latency(
    agent: Agent,
    producer: Any,
    world: WorldSettings,
    rate_per_s: float,
    seconds: float,
    seed: int,
    pids: Sequence[int],
) -> dict[str, Any]:
    """Requests at a steady rate; end-to-end latency from the two Kafka timestamps."""
    messages = synthetic_messages(agent.settings, world, max(10, int(rate_per_s * seconds)), seed)
    idle_wait_s = wait_idle(*pids)
    trip = agent.round_trip(producer, messages, rate_per_s, timeout_s=seconds + 90)
    sent, answered = trip.sent, trip.answered
    in_order = [answered[r][0] - sent.create_ms[r] for r, _, _ in messages if r in answered]
    return {
        "target_rate_per_s": rate_per_s,
        "achieved_rate_per_s": len(messages) / sent.seconds if sent.seconds > 0 else float("nan"),
        "seconds": sent.seconds,
        "requests": len(messages),
        "predictions": len(answered),
        "agent_cpu_us_per_request": trip.cpu_s * 1e6 / max(1, len(answered)),
        "agent_cores_busy": trip.cpu_s / sent.seconds if sent.seconds > 0 else float("nan"),
        "contention": trip.contention,
        "waited_for_idle_before_s": idle_wait_s,
        "latency_ms": latency_percentiles(in_order),
        "slow_seconds": slow_seconds(in_order, rate_per_s),
        # how the agent batched a steady stream (with RIG_PREDICTION_TIMINGS on; not the naive agent)
        "batch_size": rig_stages([record for _, record in answered.values()], sent.seconds).get("batch_size")
        if agent.name != "naive"
        else None,
        "split_ms": latency_split(
            [(answered[r], sent.create_ms[r]) for r, _, _ in messages if r in answered]
        ),
    }


def slow_seconds(latencies_ms: Sequence[float], rate_per_s: float, limit_ms: float = 25.0) -> dict[str, Any]:
    """Each second of sending (latencies in send order, at a steady rate): how many had a p99 above
    `limit_ms`, and the worst five (second, p99). A few bad seconds mean stalls; most of them, a rate
    the agent cannot keep up with."""
    per_second = max(1, int(rate_per_s))
    values = np.asarray(latencies_ms, dtype=np.float64)
    p99s = [
        float(np.percentile(values[start : start + per_second], 99))
        for start in range(0, values.size - per_second + 1, per_second)
    ]
    worst = sorted(range(len(p99s)), key=lambda second: -p99s[second])[:5]
    return {
        "seconds": len(p99s),
        "above_limit": sum(p99 > limit_ms for p99 in p99s),
        "limit_ms": limit_ms,
        "worst": [[second, p99s[second]] for second in sorted(worst)],
    }


def latency_split(trips: Sequence[tuple[tuple[int, Prediction], int]]) -> dict[str, dict[str, float]]:
    """Where each request's end-to-end latency went, from the worker's own timings (none without
    RIG_PREDICTION_TIMINGS): `before_batch`, from the request's CreateTime until its batch started
    (delivery to the broker, fetch, hand-over, batches ahead of it); `in_batch`, the batch's stages;
    `after_build`, from the predictions' building to their CreateTime (Avro encode, produce calls);
    and `in_batch` split by stage (`stage_<name>`)."""
    timed = [
        (record.timings_ms, timestamp - created)
        for (timestamp, record), created in trips
        if "kafka_to_publish" in record.timings_ms
    ]
    if not timed:
        return {}

    def column(stage: str) -> np.ndarray:
        return np.asarray([timings.get(stage, 0.0) for timings, _ in timed], dtype=np.float64)

    to_publish, total = column("kafka_to_publish"), column("total")
    end_to_end = np.asarray([e2e for _, e2e in timed], dtype=np.float64)
    parts = {
        "before_batch": to_publish - total,
        "in_batch": total,
        "after_build": end_to_end - to_publish,
    }
    for stage in STAGES[:-1]:  # `total` is `in_batch`
        parts[f"stage_{stage}"] = column(stage)
    return {
        name: {q: float(np.percentile(v, int(q[1:]))) for q in ("p50", "p99")} for name, v in parts.items()
    }


def kafka_path(
    settings: RigSettings,
    producer: Any,
    world: WorldSettings,
    rate_per_s: float,
    seconds: float,
    pids: Sequence[int],
) -> dict[str, Any]:
    """The latency floor at `rate_per_s`: the same paced requests to a topic no agent serves, read by
    a plain consumer in a process of its own (from CreateTime to arrival)."""
    from rig.wire.topics import ensure_topics

    own = with_prefix(settings, "kafka-path")
    ensure_topics(own, ["requests"])
    messages = synthetic_messages(own, world, max(10, int(rate_per_s * seconds)), seed=5_000)
    wait_idle(*pids)
    probe = path_probe.start(
        str(settings.kafka_client_config()["bootstrap.servers"]),
        own.topic("requests"),
        len(messages),
        seconds + 60,
    )
    sender = Sender(producer, own.topic("requests"))
    began = time.perf_counter()
    sender.send(messages, rate_per_s)
    sent_s = time.perf_counter() - began
    if producer.flush(60) or sender.failed:
        probe.kill()
        raise RuntimeError(f"requests to {sender.topic} not all acknowledged")
    latencies = path_probe.result(probe, seconds + 90)
    return {
        "target_rate_per_s": rate_per_s,
        "achieved_rate_per_s": len(messages) / sent_s if sent_s > 0 else float("nan"),
        "requests": len(messages),
        "received": len(latencies),
        "latency_ms": latency_percentiles(latencies),
    }


# -- where the time goes --------------------------------------------------------------------------
def rig_stages(records: Sequence[Prediction], window_s: float) -> dict[str, Any]:
    """Per-batch stage timings of a rig agent's predictions (every record of a batch carries the same);
    none when the agent writes no timings (RIG_PREDICTION_TIMINGS off)."""
    if not records or not records[0].timings_ms:
        return {}
    # the stages the agent reports, in its order, `total` last (STAGES when it reports no others)
    named = [k for k in records[0].timings_ms if k not in ("kafka_to_publish", "total")]
    stages_in_order = (*(named or STAGES[:-1]), "total")
    batches: dict[tuple[float, ...], int] = {}
    for record in records:
        key = tuple(record.timings_ms.get(stage, 0.0) for stage in stages_in_order)
        batches[key] = batches.get(key, 0) + 1
    sizes = list(batches.values())
    n = sum(sizes)
    summed = {stage: sum(key[i] for key in batches) for i, stage in enumerate(stages_in_order)}
    summed["outside_stages"] = window_s * 1000 - summed["total"]
    return {
        "batches": len(sizes),
        "batch_size": {
            "mean": statistics.fmean(sizes),
            "median": statistics.median(sizes),
            "min": min(sizes),
            "max": max(sizes),
        },
        "per_stage": {
            stage: {
                "ms_total": ms,
                "us_per_request": ms * 1000 / n,
                "share_of_wall": ms / (window_s * 1000) if window_s > 0 else float("nan"),
            }
            for stage, ms in summed.items()
        },
        "outside_stages_note": "wall time of the backlog not in any batch's `total`: Avro encode of the "
        "outputs, produce, delivery reports, commit, consume and hand-over, and in `worker` its other agents",
    }


def naive_stages(records: Sequence[Prediction], window_s: float) -> dict[str, Any]:
    """Mean per-message stage timings of the naive agent, and the time per message outside them."""
    if not records:
        return {}
    means = {stage: statistics.fmean(r.timings_ms.get(stage, 0.0) for r in records) for stage in NAIVE_STAGES}
    per_message_ms = window_s * 1000 / len(records)
    stages: dict[str, Any] = {stage: {"us_per_request": ms * 1000} for stage, ms in means.items()}
    stages["outside_stages"] = {"us_per_request": (per_message_ms - means["total"]) * 1000}
    return {
        "per_stage": stages,
        "outside_stages_note": "Prediction encode, awaited send, Faust per-message stream overhead",
    }


def codec_costs(records: Sequence[Prediction], requests: Sequence[Message]) -> dict[str, float]:
    """µs per record of the Avro work a rig agent does per request, measured in this process."""
    prediction, request = Codec(Prediction), Codec(Request, allow_json=True)
    sample = list(records[:3000])
    began = time.perf_counter()
    for record in sample:
        prediction.encode(record)
    encode_us = (time.perf_counter() - began) / max(1, len(sample)) * 1e6
    values = [value for _, _, value in requests[:3000]]
    began = time.perf_counter()
    for value in values:
        request.decode(value)
    decode_us = (time.perf_counter() - began) / max(1, len(values)) * 1e6
    return {"prediction_encode_us": encode_us, "request_decode_us": decode_us}


# -- the run --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_world_arguments(parser)
    parser.add_argument("--requests", type=int, default=50_000, help="backlog of each rig agent")
    parser.add_argument("--naive-requests", type=int, default=2_000, help="backlog of the naive agent")
    parser.add_argument("--rounds", type=int, default=2, help="backlog rounds per agent (the better counts)")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of each latency phase")
    parser.add_argument(
        "--client-linger-ms",
        type=int,
        default=1,
        help="linger.ms of the steady-rate requests' producer (counted in the latency)",
    )
    parser.add_argument(
        "--latency-load", type=float, default=0.5, help="rate of the first latency phase, share of capacity"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="rate of the first latency phase in req/s, instead of --latency-load (to compare settings)",
    )
    parser.add_argument(
        "--idle-timeout-s", type=float, default=300.0, help="longest wait for an agent to be idle again"
    )
    parser.add_argument(
        "--agents", default=",".join(AGENTS), help=f"comma-separated subset of {','.join(AGENTS)}"
    )
    add_worker_env_argument(parser, "every rig agent (bare loop and workers)")
    parser.add_argument(
        "--log-level", default="WARNING", help="log level of the rig agents (logs: printed on error)"
    )
    parser.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="skip the MLServer peer (~4 min with its setup)",
    )
    parser.add_argument(
        "--peer-requests", type=int, default=20_000, help="backlog of one-row requests of each peer run"
    )
    parser.add_argument(
        "--before",
        default=BEFORE_COMMIT,
        help="commit whose bench_pipeline.py measures the same agents first, in a git worktree of it "
        f"(default {BEFORE_COMMIT}, the commit before the hot-path issue's first change; 'none' skips)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    args.env = worker_env(parser, args)
    args.agents = [name for name in AGENTS if name in args.agents.split(",")]
    if not args.agents:
        parser.error(f"--agents takes names of {AGENTS}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rig.wire.topics import ensure_topics

    clock = PhaseClock()
    with deployed_world("pipeline", MODELS, args) as deployment:
        settings, versions, world = deployment.settings, deployment.versions, deployment.world_settings
        processes = deployment.cleanup.processes  # stopped at the end, also on error
        worker_env = args.env
        logs = {name: settings.home / f"{name}.log" for name in args.agents}
        with tails_on_error(logs.values()):
            agents: dict[str, Agent] = {}
            for name in args.agents:
                own = with_prefix(settings, name.replace("_", "-"))
                ensure_topics(own)
                route(own, versions, SHADOWS)
                processes.append(start_agent(name, own, logs[name], args.log_level, worker_env))
                agents[name] = Agent(name, own, processes[-1])
            pids = [agent.process.pid for agent in agents.values()]
            backlog_producer, paced_producer = (
                connected_producer(settings),
                connected_producer(settings, args.client_linger_ms),
            )
            clock.lap("deploy_s")

            say(f"warm-up of {', '.join(agents)}: a probe request each, then a small burst")
            warm = {
                name: warm_up(
                    agent, backlog_producer, world, 50 if name == "naive" else 1_000, 1_000 + 10 * i
                )
                for i, (name, agent) in enumerate(agents.items())
            }
            clock.lap("warm_up_s")

            measured: dict[str, dict[str, Any]] = {name: {"throughput_rounds": []} for name in agents}
            sample: list[Prediction] = []
            for round_ in range(args.rounds):
                backlog = synthetic_messages(settings, world, args.requests, seed=2_000 + round_)
                order = list(agents) if round_ % 2 == 0 else list(reversed(agents))
                for name in order:
                    messages = backlog[: args.naive_requests] if name == "naive" else backlog
                    say(f"throughput: {name}, round {round_ + 1}, backlog of {len(messages):,}")
                    tp, records = backlog_round(
                        agents[name], backlog_producer, messages, pids, args.idle_timeout_s
                    )
                    if name != "naive":
                        sample = records[:3_000]
                    measured[name]["throughput_rounds"].append(tp)
                    say(
                        f"  {name}: {tp['requests_per_s']:,.0f} req/s, {tp['agent_cpu_us_per_request']:,.0f} "
                        f"CPU µs/req; until idle {tp['until_idle']['requests_per_s']:,.0f} req/s "
                        f"(other processes {tp['contention']['others_cores']:.2f} cores)"
                    )
            for name in agents:
                rounds = measured[name]["throughput_rounds"]
                measured[name]["throughput"] = max(rounds, key=lambda tp: tp["requests_per_s"])
            clock.lap("throughput_s")

            for i, (name, agent) in enumerate(agents.items()):
                rates = {
                    "latency_half_capacity": args.latency_rate
                    or args.latency_load * capacity(measured[name]["throughput"]),
                    "latency_100_per_s": SLOW_RATE_PER_S,
                }
                for j, (key, rate) in enumerate(rates.items()):
                    if key == "latency_half_capacity":
                        say(f"latency: the Kafka path alone at {rate:,.0f} req/s")
                        floor = kafka_path(settings, paced_producer, world, rate, args.latency_seconds, pids)
                        measured[name]["kafka_path_half_capacity"] = floor
                        ms = floor["latency_ms"]
                        say(f"  Kafka path: p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms")
                    say(f"latency: {name} at {rate:,.0f} req/s for {args.latency_seconds:.0f} s")
                    lat = latency(
                        agent, paced_producer, world, rate, args.latency_seconds, 3_000 + 10 * i + j, pids
                    )
                    measured[name][key] = lat
                    ms = lat["latency_ms"]
                    say(
                        f"  {name}: p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms (other processes "
                        f"{lat['contention']['others_cores']:.2f} cores)"
                    )
            clock.lap("latency_s")
            costs = codec_costs(sample, synthetic_messages(settings, world, 3_000, seed=4_000))
            peers = (
                {"mlserver": mlserver_runs(settings, versions["golden"], args, pids)} if args.peers else {}
            )
            clock.lap("peers_s")

    return {
        "settings": {
            "topic_prefix": settings.topic_prefix,
            "agent_topic_prefixes": {name: agent.settings.topic_prefix for name, agent in agents.items()},
            "entities": args.entities,
            "days": args.days,
            "boosting_rounds": args.rounds_boosting,
            "train_events": args.train_events,
            "batch_max": settings.batch_max,
            "max_open_batches": settings.max_open_batches,
            "cache_enabled": settings.cache_enabled,
            "online_reader": settings.online_reader,
            "topic_partitions": settings.topic_partitions,
            "worker_env": worker_env,
            "model_versions": versions,
            "routing": {"golden": versions["golden"], "shadows": {n: versions[n] for n in SHADOWS}},
            "latency_producer_linger_ms": args.client_linger_ms,
        },
        "phases_s": clock.phases,
        "warm_up": warm,
        "agents": measured,
        "codec_costs_bench_process": costs,
        "peers": peers,
    }


BUILD_EXTENSIONS = """
import tomllib
from setuptools import Distribution, Extension
specs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"].get("ext-modules", [])
extensions = [Extension(s["name"], s["sources"], extra_compile_args=s.get("extra-compile-args", []))
              for s in specs]
distribution = Distribution({"ext_modules": extensions})
distribution.get_command_obj("build_ext").inplace = True
distribution.run_command("build_ext")
"""
"""Builds a source tree's C extensions in place (its cwd): the venv's setuptools predates `ext-modules` in
pyproject.toml, which `pip install` reads with a newer one of its own."""


def run_before(args: argparse.Namespace) -> dict[str, Any]:
    """The agents of `BEFORE_AGENTS` that this run measures, measured first by `args.before`'s own
    bench_pipeline.py in a git worktree of that commit (its code and its bench, on the same broker,
    Redis and machine): its JSON results, or {} with --before none."""
    agents = [name for name in args.agents if name in BEFORE_AGENTS]
    if args.before == "none" or not agents:
        return {}
    with tempfile.TemporaryDirectory(prefix="rig-bench-before-") as folder:
        tree, output = Path(folder) / "tree", Path(folder) / "before.json"
        say(f"before: today's code at {args.before}, by its own bench_pipeline.py ({', '.join(agents)})")
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(tree), args.before],
            check=True,
            capture_output=True,
        )
        try:
            # Its C extensions (build outputs, not in git), built in place from its pyproject.toml.
            subprocess.run(
                [sys.executable, "-c", BUILD_EXTENSIONS], cwd=tree, check=True, capture_output=True
            )
            command = [
                sys.executable,
                str(tree / "bench" / "bench_pipeline.py"),
                f"--agents={','.join(agents)}",
                f"--requests={args.requests}",
                f"--rounds={args.rounds}",
                "--latency-seconds=1",  # its latency phases measured the broker (linger 0): not compared
                f"--output={output}",
                *(f"--worker-env={name}={value}" for name, value in args.env.items()),
            ]
            ran = subprocess.run(command, cwd=tree, capture_output=True, text=True)
            if ran.returncode != 0:
                raise RuntimeError(f"bench_pipeline.py of {args.before} failed:\n{ran.stderr[-4000:]}")
            measured: dict[str, Any] = json.loads(output.read_text())
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    for name in agents:
        tp = measured["agents"][name]["throughput"]
        say(f"  before: {name}: {capacity(tp):,.0f} req/s, {tp['agent_cpu_us_per_request']:.0f} CPU µs/req")
    return {"commit": args.before, "code": measured["code"], "agents": measured["agents"]}


def mlserver_runs(
    settings: RigSettings, golden: str, args: argparse.Namespace, pids: Sequence[int]
) -> dict[str, Any]:
    """The peer: MLServer in its Kafka mode, in a venv of its own (bench/peers/mlserver/setup), on the
    golden model alone, the same broker and a backlog of `--peer-requests` one-row requests, with its
    defaults and with adaptive batching (bench/peers/mlserver_peer.py)."""
    from bench.peers.mlserver_peer import run_mlserver
    from bench.support.served_model import feature_rows, model_file

    say("peer: MLServer's own venv (bench/peers/mlserver/setup)")
    subprocess.run([str(REPO / "bench" / "peers" / "mlserver" / "setup")], check=True)
    wait_idle(*pids)  # the rig agents idle first, as before their own phases
    model, rows = model_file(settings, golden), feature_rows(settings, golden, args.peer_requests)
    runs = {}
    for config in ("adaptive", "defaults"):
        say(f"peer: MLServer ({config}), backlog of {len(rows):,} one-row requests, golden model only")
        result = run_mlserver(with_prefix(settings, f"mlserver-{config}"), model, rows, config).as_dict()
        say(
            f"  mlserver {config}: {result['requests_per_s']:,.0f} req/s, answered {result['answered']:,}, "
            f"lost {result['lost']:,}, {result['server_cpu_us_per_answered']:,.0f} CPU µs/req"
        )
        runs[config] = result
    return runs


# -- ratios, targets, report ----------------------------------------------------------------------
RATIOS = (("worker_predict", "bare_loop"), ("worker", "bare_loop"), ("bare_loop", "naive"))


def ratios(agents: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """a / b of throughput, capacity and CPU per request, for each pair of RATIOS that was measured."""
    out = {}
    for a, b in RATIOS:
        if a not in agents or b not in agents:
            continue
        ta, tb = agents[a]["throughput"], agents[b]["throughput"]
        out[f"{a} / {b}"] = {
            "throughput": ta["requests_per_s"] / tb["requests_per_s"],
            "capacity": capacity(ta) / capacity(tb),
            "cpu_us_per_request": ta["agent_cpu_us_per_request"] / tb["agent_cpu_us_per_request"],
            "cpu_us_per_request_until_idle": ta["until_idle"]["agent_cpu_us_per_request"]
            / tb["until_idle"]["agent_cpu_us_per_request"],
        }
    return out


def targets(agents: dict[str, dict[str, Any]], pairs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The issue's three targets, for the predict agent alone and for the worker as shipped."""
    out: dict[str, Any] = {}
    for name in ("worker_predict", "worker"):
        if name not in agents:
            continue
        checks = {}
        if f"{name} / bare_loop" in pairs:
            share = pairs[f"{name} / bare_loop"]["throughput"]
            checks["share_of_bare_loop"] = (share, share >= TARGETS["share_of_bare_loop"])
        p99 = agents[name]["latency_half_capacity"]["latency_ms"]["p99"]
        checks["p99_ms_at_half_capacity"] = (p99, p99 <= TARGETS["p99_ms_at_half_capacity"])
        p50 = agents[name]["latency_100_per_s"]["latency_ms"]["p50"]
        checks["p50_ms_at_100_per_s"] = (p50, p50 <= TARGETS["p50_ms_at_100_per_s"])
        out[name] = {
            key: {"value": v, "limit": TARGETS[key], "pass": bool(ok)} for key, (v, ok) in checks.items()
        }
    return out


def hot_path(agents: dict[str, dict[str, Any]], peers: dict[str, Any]) -> dict[str, Any]:
    """The hot-path issue's targets: CPU per request of the bare loop, the shipped worker's rate, and
    that rate against the peer's best configuration (golden + 2 shadows against one model)."""
    out: dict[str, Any] = {}
    if "bare_loop" in agents:
        cpu = agents["bare_loop"]["throughput"]["agent_cpu_us_per_request"]
        limit = HOT_PATH["cpu_us"]
        out["bare_loop_cpu_us_per_request"] = {"value": cpu, "limit": limit, "pass": cpu <= limit}
    if "worker" in agents:
        rate = capacity(agents["worker"]["throughput"])
        limit = HOT_PATH["worker_req_s"]
        out["worker_req_s"] = {"value": rate, "limit": limit, "pass": rate >= limit}
        runs = peers.get("mlserver", {})
        if runs:
            best = max(run["requests_per_s"] for run in runs.values())
            ratio = rate / best
            limit = HOT_PATH["peer_ratio"]
            out["worker_over_mlserver_best"] = {"value": ratio, "limit": limit, "pass": ratio >= limit}
            out["mlserver_lost"] = {config: run["lost"] for config, run in runs.items()}
    return out


def print_hot_path(result: dict[str, Any]) -> None:
    """The peer's runs and the hot-path targets."""
    runs = result["peers"].get("mlserver", {})
    if runs:
        print("\npeer: MLServer in its Kafka mode, golden model only, one-row requests in a backlog")
        print(
            f"{'config':<10} {'req/s':>8} {'answered':>9} {'lost':>6} {'dups':>5} "
            f"{'CPU µs/req':>10} {'others':>6}"
        )
        for config, run in runs.items():
            print(
                f"{config:<10} {run['requests_per_s']:>8,.0f} {run['answered']:>9,} {run['lost']:>6,} "
                f"{run['duplicates']:>5,} {run['server_cpu_us_per_answered']:>10,.0f} "
                f"{run['contention']['others_cores']:>6.2f}"
            )
    labels = {
        "bare_loop_cpu_us_per_request": ("bare loop CPU per request <= 20 µs", "{:.1f} µs"),
        "worker_req_s": ("shipped worker >= 25,000 req/s", "{:,.0f} req/s"),
        "worker_over_mlserver_best": ("worker / MLServer's best >= 15x", "{:.1f}x"),
    }
    for key, (label, fmt) in labels.items():
        check = result["hot_path"].get(key)
        if check:
            print(f"{label:<42}{fmt.format(check['value']):>20} {'PASS' if check['pass'] else 'MISS'}")


def fell_behind(lat: dict[str, Any]) -> bool:
    """True when latency grew through a steady run: the agent did not keep up with the rate."""
    ms = lat["latency_ms"]
    return bool(ms["p50_last_tenth"] > 2 * ms["p50_first_tenth"] + 100)


def latency_row(label: str, lat: dict[str, Any], cpu: str, answered: int) -> str:
    """One line of the latency table: rates, percentiles, `cpu` (preformatted), answered/sent."""
    ms = lat["latency_ms"]
    return (
        f"{label:<15} {lat['target_rate_per_s']:>8,.0f} {lat['achieved_rate_per_s']:>8,.0f} "
        f"{ms['p50']:>7.1f} {ms['p90']:>7.1f} {ms['p99']:>7.1f} {ms['max']:>7.1f} {cpu} "
        f"{answered:>6}/{lat['requests']:<6}"
    )


def print_report(result: dict[str, Any], output: Path) -> None:
    agents, config = result["agents"], result["config"]
    print(
        f"\nthroughput: backlog of {config['requests']:,} requests (naive: {config['naive_requests']:,}), "
        f"better of {config['rounds']} rounds"
    )
    print(
        f"{'agent':<15} {'req/s':>8} {'rounds':>15} {'CPU µs/req':>10} {'cores':>5} {'others':>6} "
        f"{'idle req/s':>10} {'idle µs/req':>11} {'capacity':>8}"
    )
    for name, agent in agents.items():
        tp = agent["throughput"]
        rounds = "/".join(f"{r['requests_per_s']:,.0f}" for r in agent["throughput_rounds"])
        idle = tp["until_idle"]
        idle_rate = f"{'' if idle['idle_reached'] else '<='}{idle['requests_per_s']:,.0f}"
        print(
            f"{name:<15} {tp['requests_per_s']:>8,.0f} {rounds:>15} {tp['agent_cpu_us_per_request']:>10,.0f} "
            f"{tp['agent_cores_busy']:>5.2f} {tp['contention']['others_cores']:>6.2f} "
            f"{idle_rate:>10} "
            f"{idle['agent_cpu_us_per_request']:>11,.0f} {capacity(tp):>8,.0f}"
        )
    print(
        "req/s: first to last prediction; CPU µs/req, cores: the agent's process over that backlog; others: "
        "cores every other\nprocess used meanwhile; idle: counted until the agent's process is idle again; "
        "capacity: the lower rate"
    )
    print(f"\nlatency, end to end (ms): {config['latency_seconds']:.0f} s at a steady rate")
    print(
        f"{'agent':<15} {'rate/s':>8} {'achieved':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'CPU µs/req':>10} {'others':>6} {'answered':>13}"
    )
    for name, agent in agents.items():
        for key in ("latency_half_capacity", "latency_100_per_s"):
            lat = agent[key]
            flag = "  ! fell behind" if fell_behind(lat) else ""
            cpu = f"{lat['agent_cpu_us_per_request']:>10,.0f} {lat['contention']['others_cores']:>6.2f}"
            print(latency_row(name, lat, cpu, lat["predictions"]) + flag)
            if lat.get("batch_size"):
                size = lat["batch_size"]
                print(f"{'':<15} batches of {size['median']:.0f} requests (median), {size['mean']:.1f} mean")
            if key == "latency_half_capacity" and "kafka_path_half_capacity" in agent:
                floor = agent["kafka_path_half_capacity"]
                print(latency_row("  Kafka alone", floor, f"{'':>17}", floor["received"]))
            slow = lat.get("slow_seconds")
            if slow and slow["seconds"]:
                worst = ", ".join(f"{second}s {p99:.0f}" for second, p99 in slow["worst"])
                print(
                    f"{'':<15} seconds with p99 > {slow['limit_ms']:.0f} ms: {slow['above_limit']} of "
                    f"{slow['seconds']}; worst (second: p99 ms) {worst}"
                )
            if lat.get("split_ms"):
                parts = ", ".join(
                    f"{k} p50 {v['p50']:.1f} p99 {v['p99']:.1f}" for k, v in lat["split_ms"].items()
                )
                print(f"{'':<15} {parts}")
    print()
    for pair, r in result["ratios"].items():
        print(
            f"{pair:<27} throughput {r['throughput']:>6.2f}x, capacity {r['capacity']:>6.2f}x, "
            f"CPU per request {r['cpu_us_per_request']:>5.2f}x "
            f"({r['cpu_us_per_request_until_idle']:.2f}x until idle)"
        )
    faust, bare = BEFORE["faust_predict_agent_req_s"], BEFORE["bare_loop_req_s"]
    print(
        f"  (the issue's before: Faust predict agent {faust:,} against bare loop {bare:,} req/s, "
        f"{faust / bare:.0%})"
    )
    names = list(result["targets"])
    if names:
        print(f"\n{'target':<42}" + "".join(f"{name:>20}" for name in names))
        labels = {
            "share_of_bare_loop": ("throughput >= 80 % of the bare loop", "{:.0%}"),
            "p99_ms_at_half_capacity": ("p99 <= 25 ms at half of own capacity", "{:.1f} ms"),
            "p50_ms_at_100_per_s": ("p50 <= 10 ms at 100 req/s", "{:.1f} ms"),
        }
        for key, (label, fmt) in labels.items():
            cells = []
            for name in names:
                check = result["targets"][name].get(key)
                cells.append(
                    f"{fmt.format(check['value'])} {'PASS' if check['pass'] else 'MISS'}" if check else ""
                )
            print(f"{label:<42}" + "".join(f"{cell:>20}" for cell in cells))
    print_where_time_goes(agents)
    print_before(result)
    print_hot_path(result)
    costs = result["codec_costs_bench_process"]
    print(
        f"  (measured in this process: Prediction encode {costs['prediction_encode_us']:.1f} µs, "
        f"Request decode {costs['request_decode_us']:.1f} µs per record)"
    )
    machine = result["machine"]
    busiest = max(
        [agent["throughput"]["contention"]["others_cores"] for agent in agents.values()]
        + [
            agent[key]["contention"]["others_cores"]
            for agent in agents.values()
            for key in ("latency_half_capacity", "latency_100_per_s")
        ]
    )
    if busiest > 0.5:
        print(
            f"! the machine was shared: other processes used up to {busiest:.2f} of its {machine['cpus']} "
            "cores during a phase; CPU µs per request does not depend on it, wall-clock rates do"
        )
    print(
        f"\nload average (1 min) {machine['load_average_start'][0]:.2f} at start, "
        f"{machine['load_average_end'][0]:.2f} at end, on {machine['cpus']} cpus; "
        f"{result['seconds']:.0f} s; wrote {output}"
    )


def print_before(result: dict[str, Any]) -> None:
    """Each agent's rate, CPU and stages beside those of the code at `--before`, measured in this run."""
    before = result["before_code"]
    if not before:
        return
    print(f"\ntoday's code beside {before['commit']} (the commit before the hot-path issue), this run")
    print(f"{'agent':<16} {'req/s then':>10} {'now':>8} {'CPU µs/req then':>16} {'now':>6} {'CPU ratio':>9}")
    for name, then in before["agents"].items():
        now = result["agents"].get(name)
        if now is None:
            continue
        tp_then, tp_now = then["throughput"], now["throughput"]
        cpu_then, cpu_now = tp_then["agent_cpu_us_per_request"], tp_now["agent_cpu_us_per_request"]
        print(
            f"{name:<16} {capacity(tp_then):>10,.0f} {capacity(tp_now):>8,.0f} {cpu_then:>16.1f} "
            f"{cpu_now:>6.1f} {cpu_now / cpu_then:>8.2f}x"
        )
        stages_then, stages_now = tp_then.get("stages"), tp_now.get("stages")
        if stages_then and stages_now:  # today's stages need RIG_PREDICTION_TIMINGS
            split = ", ".join(
                f"{stage} {stages_then['per_stage'][stage]['us_per_request']:.1f} -> "
                f"{stages_now['per_stage'][stage]['us_per_request']:.1f}"
                for stage in ("decode", "enrich", "transform", "dispatch", "predict")
                if stage in stages_then["per_stage"] and stage in stages_now["per_stage"]
            )
            print(f"{'':<16} µs per request: {split}")


def print_where_time_goes(agents: dict[str, dict[str, Any]]) -> None:
    """Stage times per request (from the predictions' timings) and CPU per thread group, side by side."""
    rig = [name for name in RIG_AGENTS if name in agents and agents[name]["throughput"]["stages"]]
    if not rig:
        print("\n(no stage timings: run with --worker-env RIG_PREDICTION_TIMINGS=true for them)")
    if rig:
        stages = {name: agents[name]["throughput"]["stages"] for name in rig}
        print("\nwhere the backlog's wall time went, µs per request (share of wall)")
        print(f"{'stage':<15}" + "".join(f"{name:>22}" for name in rig))
        for stage in stages[rig[0]]["per_stage"]:
            cells = []
            for name in rig:
                row = stages[name]["per_stage"].get(stage)
                cells.append(f"{row['us_per_request']:,.1f} ({row['share_of_wall']:.0%})" if row else "")
            print(f"{stage:<15}" + "".join(f"{cell:>22}" for cell in cells))
        print(
            f"{'batches':<15}"
            + "".join(
                f"{s['batches']:>8} x {s['batch_size']['mean']:>3.0f} (max {s['batch_size']['max']:>3})"
                for s in stages.values()
            )
        )
    naive = agents.get("naive", {}).get("throughput", {}).get("stages")
    if naive:
        print(
            "naive, µs per message: "
            + ", ".join(f"{stage} {row['us_per_request']:,.0f}" for stage, row in naive["per_stage"].items())
        )
    print(
        "\nagent CPU per request by thread, µs "
        "(main: event loop; python: other Python threads; rdk: librdkafka)"
    )
    names = [name for name in AGENTS if name in agents]
    groups = sorted(
        {
            group
            for name in names
            for group, us in agents[name]["throughput"]["thread_cpu_us_per_request"].items()
            if us > 0
        },
        key=lambda group: (
            -max(agents[n]["throughput"]["thread_cpu_us_per_request"].get(group, 0.0) for n in names)
        ),
    )
    print(f"{'thread':<15}" + "".join(f"{name:>15}" for name in names))
    for group in groups:
        print(
            f"{group:<15}"
            + "".join(
                f"{agents[n]['throughput']['thread_cpu_us_per_request'].get(group, 0.0):>15,.1f}"
                for n in names
            )
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    before = run_before(args)
    measured = run(args)
    pairs = ratios(measured["agents"])
    result: dict[str, Any] = {
        "benchmark": "pipeline",
        "config": {**vars(args), "output": str(args.output)},
        **measured,
        "ratios": pairs,
        "targets": targets(measured["agents"], pairs),
        "target_limits": TARGETS,
        "hot_path": hot_path(measured["agents"], measured["peers"]),
        "before": BEFORE,
        "before_code": before,
        **record.fields(),
    }
    write_results(args.output, result)
    print_report(result, args.output)


if __name__ == "__main__":
    if sys.argv[1:2] == [SERVE_BARE_LOOP]:
        serve_bare_loop()
    else:
        main()
