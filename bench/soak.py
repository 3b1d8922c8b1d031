"""Soak: a million requests with their outcomes through two workers while members come and go and
one is killed; afterwards EVERY request id is checked, answered and joined.

Not a test. One deployment (own Feast project and topics, golden + two shadows: three joined rows
per request). Two workers (`rig-worker` as shipped, every role, at least once unless
`--worker-env RIG_PROCESSING_GUARANTEE=exactly_once`) share the work; `--requests` (1,000,000)
requests are produced at `--rate` (1,000/s) and each one's outcome (label from
`sim.world.make_outcomes`, keyed by entity id with murmur2) follows it after a lognormal delay of
median `--outcome-delay-s` (5 s). While the traffic flows, by the share of requests sent:

- 15 %: a third worker C joins (rebalance 1);
- 30 %: C leaves, SIGTERM (rebalance 2);
- 45 %: worker B is restarted gracefully, SIGTERM then a new B2 (rebalance 3, leave and join);
- 65 %: worker A is killed with SIGKILL and a replacement A2 started at once (its partitions move
  when the group sees A gone: RIG_KAFKA_SESSION_TIMEOUT_S, 45 s by default, `--session-timeout-s`).

Sampled every `--sample-s` (5 s): the consumer lag of the predict group (`<prefix>predict` on the
requests topic) and of the join group (`<prefix>join` on predictions, outcomes and re-routed records),
from AdminClient.list_consumer_group_offsets and the partitions' high watermarks; requests sent but
not answered yet; every worker's RSS (/proc/<pid>/status, VmRSS and VmHWM every 2 s).

At the end (every request answered and joined, or `--drain-timeout-s`): for EVERY request id, whether
it was answered on `<prefix>predictions` and joined on `<prefix>joined` for every model of its
prediction (read_committed readers from the beginning); predictions and joined rows repeated; dead
letters; the surviving workers' join counters and promoter state; errors in the workers' logs.
Prints a summary and writes bench/results/soak.json. Stops the workers and removes the run's topics
and Redis keys at the end, also on error or Ctrl-C.

Takes ~20 min with the defaults on 2 cores (about 17 of them producing); `--requests 100000 --rate
800` takes ~4 min. Check first what two workers sustain on the machine (bench/bench_feedback.py's
worker row, halved per worker, minus what the kill costs): a rate they cannot keep up with only
grows the lag.

Run (from the repository root): .venv/bin/python bench/soak.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.cpu import wait_idle
from bench.support.deploy import Deployment, add_world_arguments, deployed_world, route
from bench.support.feedback import Answers, JoinedRows, Traffic, traffic_with_outcomes
from bench.support.kafka_io import connected_producer, end_offsets
from bench.support.memory import RssSampler
from bench.support.report import RESULTS_DIR, RunRecord, publish, say
from bench.support.workers import (
    add_worker_env_argument,
    free_port,
    get_json,
    log_tail,
    tails_on_error,
    worker_env,
)
from rig.config import RigSettings
from rig.processes import stop_processes
from sim.deploy import start_worker

RESULTS = RESULTS_DIR / "soak.json"
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
SHADOWS = ("better", "worse")
EVENTS = (
    (0.15, "C joins"),
    (0.30, "C leaves (SIGTERM)"),
    (0.45, "B restarted (SIGTERM, B2)"),
    (0.65, "A kill -9, A2"),
)


# -- the traffic ----------------------------------------------------------------------------------
class Mix:
    """Produces requests at a steady rate and each one's outcome after its delay, in one time order,
    from a thread: requests with a plain producer, outcomes keyed by entity id with murmur2."""

    def __init__(self, settings: RigSettings, traffic: Traffic, rate_per_s: float) -> None:
        n = len(traffic.requests)
        at = np.arange(n) / rate_per_s
        times = np.concatenate([at, at + traffic.outcome_delay_s])
        self.order = np.argsort(times, kind="stable")
        self.times = times[self.order]
        self.traffic = traffic
        self.topics = (settings.topic("requests"), settings.topic("outcomes"))
        self.producers = (connected_producer(settings), connected_producer(settings, keyed=True))
        self.requests_sent = 0
        self.failed: list[str] = []
        self.began = 0.0
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mix", daemon=True)

    def start(self) -> Mix:
        self.began = time.perf_counter()
        self._thread.start()
        return self

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed.append(str(error))

    def _run(self) -> None:
        try:
            n = len(self.traffic.requests)
            for index, at in zip(self.order.tolist(), self.times.tolist(), strict=True):
                if self._stop.is_set():
                    return
                ahead = at - (time.perf_counter() - self.began)
                if ahead > 0:
                    time.sleep(ahead)
                kind = 0 if index < n else 1
                _, key, value = (self.traffic.requests if kind == 0 else self.traffic.outcomes)[index % n]
                producer = self.producers[kind]
                while True:
                    try:
                        producer.produce(self.topics[kind], value, key, on_delivery=self._delivered)
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
                self.requests_sent += 1 - kind
            for producer in self.producers:
                if producer.flush(120):
                    self.failed.append("not flushed within 120 s")
        except BaseException as error:  # noqa: BLE001 - reported by check()
            self._failure = error

    def check(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the traffic thread failed: {self._failure}") from self._failure

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=130)


# -- the workers ----------------------------------------------------------------------------------
@dataclass
class Workers:
    """The run's worker processes by name (A, B, C, B2, A2), their ports, logs and fate."""

    deployment: Deployment
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, tuple[float, int | None, str]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        self.ports[name] = free_port()
        self.logs[name] = self.deployment.settings.home / f"worker-{name}.log"
        process = start_worker(
            self.deployment.settings, self.logs[name], "INFO", self.ports[name], env=self.env
        )
        self.deployment.cleanup.processes.append(process)
        self.processes[name] = process
        self.started[name] = time.time()
        say(f"  worker {name} started (pid {process.pid})")

    def stop(self, name: str) -> None:
        """SIGTERM, waiting for the exit (SIGKILL after 30 s)."""
        began = time.perf_counter()
        stop_processes([self.processes[name]])
        self.ended[name] = (time.time(), self.processes[name].returncode, "SIGTERM")
        say(
            f"  worker {name} stopped in {time.perf_counter() - began:.1f} s "
            f"(exit {self.processes[name].returncode})"
        )

    def kill(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(10)
        self.ended[name] = (time.time(), self.processes[name].returncode, "SIGKILL")
        say(f"  worker {name} killed (SIGKILL)")

    def wait_ready(self, name: str, timeout_s: float = 180) -> float:
        """Seconds until the worker's /readyz answers 200 (it holds requests partitions and answers)."""
        began = time.perf_counter()
        while time.perf_counter() - began < timeout_s and self.processes[name].poll() is None:
            if (get_json(self.ports[name], "/readyz", timeout_s=1) or {}).get("ready"):
                return time.perf_counter() - began
            time.sleep(0.25)
        say(f"! worker {name} not ready within {timeout_s:.0f} s")
        return float("inf")

    def alive(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def check(self) -> None:
        """Record (and say) a worker that exited without being stopped by the run: the run goes on
        with the others, and the end of it shows what that cost."""
        for name, process in self.processes.items():
            if name not in self.ended and process.poll() is not None:
                self.ended[name] = (time.time(), process.returncode, "exited by itself")
                tail = log_tail(self.logs[name], 15)
                say(f"! worker {name} exited by itself with {process.returncode}:\n{tail}")


def wait_answering(workers: Workers, answers: Answers, probes: Traffic, timeout_s: float = 300) -> float:
    """Seconds until the workers answer a probe request (their start-up); one probe every 0.5 s."""
    settings = workers.deployment.settings
    producer = connected_producer(settings)
    began = time.perf_counter()
    for _, key, value in probes.requests:
        producer.produce(settings.topic("requests"), value, key)
        producer.flush(10)
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            if answers.count:
                return time.perf_counter() - began
            workers.check()
            time.sleep(0.05)
        if time.perf_counter() - began > timeout_s:
            break
    raise RuntimeError(f"no worker answered a probe within {timeout_s:.0f} s")


# -- lag ------------------------------------------------------------------------------------------
class LagSampler:
    """Every `period_s`: the committed lag of the predict and join groups, and requests sent but not
    answered yet."""

    def __init__(self, settings: RigSettings, mix: Mix, answers: Answers, period_s: float) -> None:
        self.settings = settings
        self.mix = mix
        self.answers = answers
        self.period_s = period_s
        self.groups = {
            "predict": (settings.topic("requests"),),
            "join": (
                settings.topic("predictions"),
                settings.topic("outcomes"),
                settings.topic("join-reroute"),
            ),
        }
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka_client_config())
        while not self._stop.wait(self.period_s):
            sample: dict[str, Any] = {
                "at": time.time(),
                "unanswered": self.mix.requests_sent - len(self.answers.count),
            }
            try:
                for role, topics in self.groups.items():
                    group = self.settings.consumer_group(role)
                    ends = end_offsets(self.settings, topics)
                    request = [ConsumerGroupTopicPartitions(group)]
                    listed = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
                    committed = {
                        (tp.topic, tp.partition): max(0, tp.offset) for tp in listed.topic_partitions
                    }
                    sample[role] = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())
            except Exception as error:  # noqa: BLE001 - a sample is skipped, the run goes on
                sample["error"] = str(error)
            self.samples.append(sample)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def peak(self, key: str) -> tuple[int, float]:
        """The largest value of a sampled quantity and when (epoch s)."""
        kept = [(s[key], s["at"]) for s in self.samples if key in s]
        return max(kept, default=(0, float("nan")))


# -- the run --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_world_arguments(parser)
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests (each with its outcome)")
    parser.add_argument("--rate", type=float, default=1_000.0, help="requests per second")
    parser.add_argument("--outcome-delay-s", type=float, default=5.0, help="median delay of an outcome")
    parser.add_argument("--session-timeout-s", type=float, default=None, help="RIG_KAFKA_SESSION_TIMEOUT_S")
    parser.add_argument("--sample-s", type=float, default=5.0, help="period of the lag samples")
    parser.add_argument("--drain-timeout-s", type=float, default=900.0, help="longest wait after the traffic")
    add_worker_env_argument(parser, "every worker")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rig-soak-logs",
        help="where the workers' logs are copied before the deployment is removed",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    args.env = worker_env(parser, args)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    with deployed_world("soak", MODELS, args) as deployment:
        settings, versions = deployment.settings, deployment.versions
        route(settings, versions, SHADOWS)
        env = dict(args.env)
        if args.session_timeout_s is not None:
            env["RIG_KAFKA_SESSION_TIMEOUT_S"] = str(args.session_timeout_s)
        workers = Workers(deployment, env)
        with tails_on_error(workers.logs.values()):
            say(f"traffic: {args.requests:,} requests and outcomes encoded")
            traffic = traffic_with_outcomes(
                settings, deployment.world, args.requests, seed=7_000, delay_median_s=args.outcome_delay_s
            )
            ids = traffic.ids
            answers = Answers(settings).start()
            joined = JoinedRows(settings).start()
            say("workers A and B")
            workers.start("A")
            workers.start("B")
            probes = traffic_with_outcomes(settings, deployment.world, 600, seed=8_000)  # not checked
            startup_s = wait_answering(workers, answers, probes)
            say(f"  answering after {startup_s:.1f} s; traffic at {args.rate:,.0f} requests/s")
            mix = Mix(settings, traffic, args.rate)
            lag = LagSampler(settings, mix, answers, args.sample_s)
            memory = RssSampler(workers.alive).start()
            mix.start()
            lag.start()
            events = drive(workers, mix, args)
            say(f"traffic sent in {time.perf_counter() - mix.began:.0f} s; draining")
            drained_s, short = drain(workers, mix, answers, joined, ids, args.drain_timeout_s)
            lag.stop()
            idle_s = wait_idle(*workers.alive().values(), timeout_s=120)
            final = {
                name: {
                    "join_counts": get_json(workers.ports[name], "/join/counts/"),
                    "promoter": get_json(workers.ports[name], "/promoter/"),
                }
                for name in workers.alive()
            }
            memory.sample()
            memory.stop()
            dead_letters = sum(end_offsets(settings, [settings.topic("dlq")]).values())
            missing = answers.missing(ids)
            result = {
                "requests": len(ids),
                "requests_sent": mix.requests_sent,
                "producer_failures": mix.failed[:5],
                "answered": len(ids) - len(missing),
                "not_answered": len(missing),
                "not_answered_sample": missing[:10],
                "predictions_repeated": answers.repeats(ids),
                "predictions_repeated_by_event": by_event(
                    [i for i, rid in enumerate(ids) if answers.count[rid] > 1], args.rate, events
                ),
                "requests_answered_more_than_once": sum(1 for rid in ids if answers.count[rid] > 1),
                "answered_without_every_shadow": sum(
                    1 for rid in ids if 0 < len(answers.models.get(rid, ())) < 1 + len(SHADOWS)
                ),
                "joined": len(ids) - len(short),
                "not_joined": len(short),
                "not_joined_sample": short[:10],
                "joined_rows": joined.count(ids),
                "joined_rows_repeated": joined.repeats(ids),
                "dead_letters": dead_letters,
                "send_s": mix_seconds(mix),
                "drain_s": drained_s,
                "idle_after_drain_s": idle_s,
                "events": events,
                "lag": {
                    "predict_max": lag.peak("predict")[0],
                    "join_max": lag.peak("join")[0],
                    "unanswered_max": lag.peak("unanswered")[0],
                    "samples": [{**s, "at": round(s["at"] - mix_epoch(mix), 1)} for s in lag.samples],
                },
                "peak_rss_mib": memory.peak_mib,
                "rss_samples": [
                    (round(at - mix_epoch(mix), 1), name, round(mib, 1))
                    for at, name, _, mib in memory.samples
                ],
                "workers": {
                    name: {
                        "started_s": round(workers.started[name] - mix_epoch(mix), 1),
                        "ended": workers.ended.get(name),
                        "exit_code": process.poll(),
                        "log": log_facts(workers.logs[name]),
                    }
                    for name, process in workers.processes.items()
                },
                "final": final,
            }
            result["logs_kept_in"] = keep_logs(workers, args.keep_logs / settings.topic_prefix.strip("."))
    result["settings"] = {
        "topic_prefix": settings.topic_prefix,
        "topic_partitions": settings.topic_partitions,
        "session_timeout_s": float(env.get("RIG_KAFKA_SESSION_TIMEOUT_S", settings.kafka_session_timeout_s)),
        "worker_env": env,
        "model_versions": versions,
    }
    return result


def mix_epoch(mix: Mix) -> float:
    """The epoch time the traffic started (samples are reported relative to it)."""
    return time.time() - (time.perf_counter() - mix.began)


def mix_seconds(mix: Mix) -> float:
    return float(mix.times[-1]) if len(mix.times) else 0.0


def drive(workers: Workers, mix: Mix, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Cause the run's membership changes as the traffic goes; returns when it is all sent."""
    events: list[dict[str, Any]] = []
    pending = list(EVENTS)
    last_report = 0.0
    while not mix.done():
        mix.check()
        workers.check()
        share = mix.requests_sent / args.requests
        if pending and share >= pending[0][0]:
            at, what = pending.pop(0)
            say(f"event at {share:.0%} of the requests: {what}")
            began = time.time()
            started = None
            if what.startswith("C joins"):
                started = "C"
            elif what.startswith("C leaves"):
                workers.stop("C")
            elif what.startswith("B restarted"):
                workers.stop("B")
                started = "B2"
            else:
                workers.kill("A")
                started = "A2"
            event = {
                "share": at,
                "what": what,
                "at_s": round(began - mix_epoch(mix), 1),
                "sent": mix.requests_sent,
            }
            if started is not None:  # the next event waits until this member answers
                workers.start(started)
                event["ready_after_s"] = workers.wait_ready(started)
                say(f"  worker {started} ready after {event['ready_after_s']:.1f} s")
            events.append(event)
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            say(f"  sent {mix.requests_sent:,} requests; alive {sorted(workers.alive())}")
        time.sleep(0.2)
    mix.check()
    return events


def by_event(
    indexes: Sequence[int], rate_per_s: float, events: Sequence[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """These requests (by their index in the traffic) grouped by the event sent nearest to them: how
    many, and from when to when they were sent, in seconds from the event (negative: before it). A
    kill repeats what was answered and not committed yet, sent just BEFORE it: counted by the phase
    they were sent in, they fell in the phase before the kill."""
    groups: dict[str, list[float]] = {}
    for index in indexes:
        if not events:
            groups.setdefault("no event", []).append(index / rate_per_s)
            continue
        nearest = min(events, key=lambda event: abs(index - int(event["sent"])))
        groups.setdefault(str(nearest["what"]), []).append((index - int(nearest["sent"])) / rate_per_s)
    return {
        what: {"requests": len(offsets), "sent_from_s": min(offsets), "sent_to_s": max(offsets)}
        for what, offsets in groups.items()
    }


def drain(
    workers: Workers, mix: Mix, answers: Answers, joined: JoinedRows, ids: Sequence[str], timeout_s: float
) -> tuple[float, list[str]]:
    """Wait until every request is answered and joined for each model of its prediction; returns the
    seconds it took and the ids still not joined at the timeout."""
    began = time.perf_counter()
    while True:
        workers.check()
        answers.check()
        joined.check()
        missing = len(ids) - sum(1 for rid in ids if rid in answers.first_ms)
        short = joined.short({rid: answers.models.get(rid, ("?",)) for rid in ids})
        say(f"  not answered {missing:,}, not joined {len(short):,}")
        if not short or time.perf_counter() - began > timeout_s:
            return time.perf_counter() - began, short
        time.sleep(10)


def keep_logs(workers: Workers, folder: Path) -> str:
    """Copy the workers' logs out of the deployment's home (removed at the end); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, log in workers.logs.items():
        if log.is_file():
            shutil.copy(log, folder / f"worker-{name}.log")
    return str(folder)


def log_facts(path: Path) -> dict[str, Any]:
    """What a worker's log says about rebalances, restores and errors."""
    if not path.is_file():
        return {}
    lines = path.read_text(errors="replace").splitlines()
    counts = {
        key: sum(1 for line in lines if needle in line)
        for key, needle in {
            "partitions_assigned": "partitions assigned",
            "partitions_revoked": "partitions revoked",
            "partitions_lost": "partitions lost",
            "join_restored": "changelog records in",
            "join_kept": "join partition",
            "batches_given_up": "given up",
            "experiment_skipped_a_batch": "experiment skipped a batch",
            "warnings": "WARNING",
            "errors": "ERROR",
            "critical": "CRITICAL",
            "tracebacks": "Traceback",
        }.items()
    }
    counts["join_kept"] -= counts["join_restored"]
    facts: dict[str, int | list[str]] = dict(counts)  # the counts, then the lines quoted
    facts["error_lines"] = [line[-300:] for line in lines if "ERROR" in line or "CRITICAL" in line][:10]
    facts["experiment_skipped_lines"] = [
        line[-200:] for line in lines if "experiment skipped a batch" in line
    ][:5]
    facts["restore_lines"] = [line[-160:] for line in lines if "changelog records in" in line][:20]
    return facts


def print_report(result: dict[str, Any], output: Path) -> None:
    config = result["config"]
    print(
        f"\nsoak: {result['requests']:,} requests with outcomes at {config['rate']:,.0f}/s "
        f"through 2 workers, "
        f"sent in {result['send_s']:.0f} s, drained in {result['drain_s']:.0f} s"
    )
    rows = [
        ("answered (rig.predictions)", f"{result['answered']:,} of {result['requests']:,}"),
        ("not answered", f"{result['not_answered']:,} {result['not_answered_sample'][:3]}"),
        (
            "predictions repeated",
            f"{result['predictions_repeated']:,} ({result['requests_answered_more_than_once']:,} requests)",
        ),
        ("joined for every model (rig.joined)", f"{result['joined']:,} of {result['requests']:,}"),
        ("not joined", f"{result['not_joined']:,} {result['not_joined_sample'][:3]}"),
        ("joined rows / repeated", f"{result['joined_rows']:,} / {result['joined_rows_repeated']:,}"),
        ("dead letters", f"{result['dead_letters']:,}"),
        ("answered without every shadow's score", f"{result['answered_without_every_shadow']:,}"),
        ("max lag, predict group (requests)", f"{result['lag']['predict_max']:,}"),
        ("max lag, join group (records)", f"{result['lag']['join_max']:,}"),
        ("max requests sent, not answered", f"{result['lag']['unanswered_max']:,}"),
    ]
    for label, value in rows:
        print(f"  {label:<38} {value}")
    print("  repeated predictions, by the event their requests were sent nearest to:")
    for what, group in result["predictions_repeated_by_event"].items():
        print(
            f"    {what}: {group['requests']:,} (sent {group['sent_from_s']:+.2f} s to "
            f"{group['sent_to_s']:+.2f} s from it)"
        )
    print("\nevents (seconds after the traffic started)")
    for event in result["events"]:
        print(f"  {event['at_s']:>7.1f} s  {event['what']} (at {event['sent']:,} requests sent)")
    print(
        f"\n{'worker':<7} {'started':>8} {'ended':>16} {'peak RSS':>9} {'assigned':>8} {'revoked':>8} "
        f"{'lost':>5} {'restored':>8} {'errors':>6}"
    )
    for name, worker in result["workers"].items():
        ended = worker["ended"]
        how = "running" if ended is None else f"{ended[2]} ({ended[1]})"
        log = worker["log"]
        print(
            f"{name:<7} {worker['started_s']:>8.1f} {how:>16} {result['peak_rss_mib'].get(name, 0):>9.0f} "
            f"{log.get('partitions_assigned', 0):>8} {log.get('partitions_revoked', 0):>8} "
            f"{log.get('partitions_lost', 0):>5} {log.get('join_restored', 0):>8} "
            f"{log.get('errors', 0) + log.get('critical', 0):>6}"
        )
    for name, final in result["final"].items():
        print(f"{name}: join counts {final['join_counts']}")
        promoter = final["promoter"] or {}
        if promoter:
            folded = {v: c["n"] for v, c in promoter.get("challengers", {}).items()}
            print(f"{name}: promoter folded {folded} (since it took rig.joined over)")
    for name, worker in result["workers"].items():
        for line in worker["log"].get("error_lines", []):
            print(f"  {name}: {line}")
        skipped = worker["log"].get("experiment_skipped_a_batch", 0)
        if skipped:
            print(
                f"  {name}: {skipped} 'experiment skipped a batch', "
                f"e.g. {worker['log']['experiment_skipped_lines'][0]}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    measured = run(args)
    complete = measured["not_answered"] == 0 and measured["not_joined"] == 0
    result = record.result("soak", args, **measured, complete=complete)
    publish(result, args.output, print_report)


if __name__ == "__main__":
    main()
