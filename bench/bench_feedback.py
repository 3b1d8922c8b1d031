"""The feedback loop at the same standard as the predict path: the shipped worker with the join on,
against the bare loop's ceiling, at least once and exactly once, and the join's CPU per joined row.

Not a test. One deployment (its own Feast project on the shared Redis, a synthetic world of 5,000
entities, golden + two shadow experiments `better` and `worse`: every request is scored by three
models, so every joined request gives three joined rows). Every agent is a process of its own on
topics and consumer groups of its own (`<prefix><agent>.`); only one works at a time, the others idle:

- bare_loop:      the ceiling, bench/bench_pipeline.py's bare confluent-kafka loop (its
                  --serve-bare-loop mode, imported from there) over the predict code; no join.
- worker_predict: `rig-worker` with RIG_WORKER_ROLES='["predict"]': the predict path alone.
- worker:         `rig-worker` as shipped (every role: predict, the join + promoter, explain),
                  at least once (the default).
- worker_eos:     the same with RIG_PROCESSING_GUARANTEE=exactly_once (each batch one transaction).
- feedback:       `rig-worker` with RIG_WORKER_ROLES='["feedback"]' (the join + promoter alone), fed a
                  pre-made backlog: the predictions worker_predict (or another rig worker) made of the
                  same round's requests, copied onto its predictions topic, and their outcomes.
- feedback_eos:   the same, exactly once.

The backlog of each round: `--requests` (50,000) requests and their outcomes (labels from
`sim.world.make_outcomes`, produced keyed by entity id with the rig's murmur2 partitioner), both
produced as fast as possible (requests first, then outcomes, ~1 s apart: most outcomes reach the join
before their predictions, as in a backlog after an outage). Measured per agent (before each phase
every agent process is idle; the machine's other load is reported):

- bare_loop, worker_predict: as in bench_pipeline (`backlog_round`): requests/s first to last
  prediction, until the process is idle again, CPU µs per request;
- worker, worker_eos: sustained requests/s until idle = N / (the later of: the process idle again,
  the last joined row) - the first request's CreateTime, where "joined" means every backlog request has
  a joined row on `<prefix>joined` for every model of its prediction (read_committed); CPU µs per
  request and per joined row of the whole process (its join processes included, with
  `--worker-env RIG_JOIN_PROCESSES=N`) until idle; predictions and joined rows repeated;
  the worker's own join counters (/join/counts/) and promoter (/promoter/);
- feedback, feedback_eos: joined rows/s and CPU µs per joined row of the feedback role alone (measured
  directly: its process's CPU until idle / the joined rows it produced).

The join's CPU per joined row two ways, both printed: "direct" = the feedback agent's; "difference" =
(worker CPU until idle - worker_predict CPU until idle) / joined rows (this one also holds the
explainer, which explains at most 1 request/s). Targets (issue "The feedback loop at the same
standard"): the worker (join on) sustained until idle >= 50 % of the bare loop; CPU per joined row <=
200 µs (before: ~1.9 ms); exactly once beside at least once (no target). Before: 881 req/s against a
bare loop of 14,646.

`--rounds` (1) backlogs per agent, the better one counts (the rig agents' order mirrored in even
rounds; the feedback agents always last, on that round's predictions). Prints the tables, writes
bench/results/feedback.json (machine, load, code revision, command, every number). Stops the agents,
removes the Feast project's Redis keys and the run's topics at the end, also on error or Ctrl-C. Takes
~8 min with the defaults on 2 cores; `--requests 3000` takes ~3 min. `--agents` runs a subset,
`--worker-env` passes a RIG_* setting to every rig agent, `--log-level INFO` keeps more of the agents'
logs (their last lines print on error).

Run (from the repository root): .venv/bin/python bench/bench_feedback.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.bench_pipeline import Agent, backlog_round, capacity, start_bare_loop
from bench.support.cpu import CpuUsage, PhaseCpu, process_tree, wait_idle
from bench.support.deploy import add_world_arguments, deployed_world, route, with_prefix
from bench.support.feedback import Answers, JoinedRows, Traffic, traffic_with_outcomes
from bench.support.kafka_io import Message, Sender, connected_producer
from bench.support.report import RESULTS_DIR, PhaseClock, RunRecord, publish, say
from bench.support.workers import (
    add_worker_env_argument,
    free_port,
    get_json,
    tails_on_error,
    worker_env,
)
from rig.config import RigSettings
from rig.wire.codec import Codec
from rig.wire.records import Prediction
from sim.deploy import start_worker

RESULTS = RESULTS_DIR / "feedback.json"
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
SHADOWS = ("better", "worse")
AGENTS = ("bare_loop", "worker_predict", "worker", "worker_eos", "feedback", "feedback_eos")
PREDICTING = ("bare_loop", "worker_predict")  # measured as bench_pipeline measures them
JOINING = ("worker", "worker_eos")  # requests and outcomes in, predictions and joined rows out
FEEDBACK_ONLY = ("feedback", "feedback_eos")  # predictions and outcomes in, joined rows out
EOS = {"RIG_PROCESSING_GUARANTEE": "exactly_once"}
FEEDBACK_ROLE = {"RIG_WORKER_ROLES": '["feedback"]'}
TARGETS = {"share_of_bare_loop": 0.50, "cpu_us_per_joined_row": 200.0}
BEFORE = {"worker_join_on_req_s": 881, "bare_loop_req_s": 14_646, "cpu_us_per_joined_row": 1_900}


@dataclass(frozen=True)
class Worker:
    """An agent process and the port of its web server (0: none)."""

    agent: Agent
    port: int

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def pid(self) -> int:
        return self.agent.process.pid


def start_agent(
    name: str, settings: RigSettings, log_path: Path, log_level: str, env: dict[str, str]
) -> Worker:
    """One agent's process on the topics of `settings`."""
    if name == "bare_loop":
        return Worker(Agent(name, settings, start_bare_loop(settings, log_path, log_level, **env)), 0)
    port = free_port()
    extra = {
        "worker_predict": {"RIG_WORKER_ROLES": '["predict"]'},
        "worker": {},
        "worker_eos": EOS,
        "feedback": FEEDBACK_ROLE,
        "feedback_eos": {**FEEDBACK_ROLE, **EOS},
    }[name]
    process = start_worker(settings, log_path, log_level, web_port=port, env={**env, **extra})
    return Worker(Agent(name, settings, process), port)


# -- one backlog through a worker with the join ---------------------------------------------------
@dataclass
class Inputs:
    """What one phase produces to an agent: messages per topic (short name), in order."""

    topics: dict[str, Sequence[Message]]
    expected_models: dict[str, tuple[str, ...]] | None = None
    """Per request id, the models whose joined rows complete it (None: from the agent's predictions)."""


def produce(worker: Worker, inputs: Inputs, plain: Any, keyed: Any) -> tuple[int, int]:
    """Produce every input as fast as possible (requests with the plain producer, what the join reads
    keyed by entity with murmur2); returns the first and last CreateTime (ms)."""
    stamps: list[int] = []
    for short_name, messages in inputs.topics.items():
        producer = plain if short_name == "requests" else keyed
        sender = Sender(producer, worker.agent.settings.topic(short_name))
        sender.send(messages)
        if producer.flush(120) or sender.failed:
            raise RuntimeError(f"{short_name} to {sender.topic} not all acknowledged")
        stamps += [min(sender.create_ms.values()), max(sender.create_ms.values())]
    return min(stamps), max(stamps)


def joined_round(
    worker: Worker,
    inputs: Inputs,
    producers: tuple[Any, Any],
    pids: Sequence[int],
    ids: Sequence[str],
    timeout_s: float,
    idle_timeout_s: float,
) -> tuple[dict[str, Any], list[Prediction]]:
    """Produce the inputs, wait until every request is answered (when the agent predicts) and joined
    for every model of its prediction, then until the process is idle; rates, CPU, repeats, counters.

    Returns:
        The measurements, and the agent's predictions (empty for a feedback-only agent).
    """
    agent, pid = worker.agent, worker.pid
    predicts = inputs.expected_models is None
    idle_wait_s = wait_idle(*pids, timeout_s=idle_timeout_s)
    counts_before = get_json(worker.port, "/join/counts/") or {}
    children = process_tree(pid)[1:]  # join processes (RIG_JOIN_PROCESSES): the worker's CPU too
    answers = Answers(agent.settings, from_end=True, keep=True).start() if predicts else None
    joined = JoinedRows(agent.settings, from_end=True).start()
    try:
        usage = CpuUsage(pid, *children)
        phase = PhaseCpu(pid, *children)
        first_ms, produced_ms = produce(worker, inputs, *producers)
        expected, short = wait_joined(worker, inputs, answers, joined, ids, timeout_s)
        threads = phase.threads()
        contention = usage.report()
        busy_after_s, idle_at_ms, cpu_until_idle_s = phase.until_idle(idle_timeout_s)
    finally:
        joined.close()
        if answers is not None:
            answers.close()
    counts_after = get_json(worker.port, "/join/counts/") or {}
    n, rows = len(ids), joined.count(ids)
    until_idle_s = (max(idle_at_ms, joined.newest_ms) - first_ms) / 1000
    result: dict[str, Any] = {
        "requests": n,
        "joined_requests": n - len(short),
        "not_joined": len(short),
        "not_joined_sample": short[:5],
        "joined_rows": rows,
        "expected_joined_rows": sum(len(models) for models in expected.values()),
        "scored_without_every_shadow": sum(
            1 for models in expected.values() if len(models) < 1 + len(SHADOWS)
        ),
        "joined_rows_repeated": joined.repeats(ids),
        "produce_s": (produced_ms - first_ms) / 1000,
        "all_joined_after_s": (joined.newest_ms - first_ms) / 1000,
        "joined_rows_per_s": rows / ((joined.newest_ms - first_ms) / 1000),
        "agent_cpu_s_until_joined": contention["agent_cpu_s"],
        "thread_cpu_us_per_joined_row": {name: s * 1e6 / max(1, rows) for name, s in threads.items()},
        "contention": contention,
        "waited_for_idle_before_s": idle_wait_s,
        "busy_after_last_joined_s": busy_after_s,
        "until_idle": {
            "idle_reached": bool(np.isfinite(busy_after_s)),
            "seconds": until_idle_s,
            "requests_per_s": n / until_idle_s if until_idle_s > 0 else float("nan"),
            "joined_rows_per_s": rows / until_idle_s if until_idle_s > 0 else float("nan"),
            "agent_cpu_s": cpu_until_idle_s,
            "agent_cpu_us_per_request": cpu_until_idle_s * 1e6 / n,
            "agent_cpu_us_per_joined_row": cpu_until_idle_s * 1e6 / max(1, rows),
        },
        "join_counts": {key: counts_after.get(key, 0) - counts_before.get(key, 0) for key in counts_after},
        "joined_pairs_by_model": dict(Counter(model for models in expected.values() for model in models)),
        **settled_promoter(worker.port),
    }
    records: list[Prediction] = []
    if answers is not None:
        stamps = sorted(
            timestamp for timestamp in [answers.first_ms.get(rid) for rid in ids] if timestamp is not None
        )
        window_s = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
        result.update(
            {
                "predictions": len(stamps),
                "predictions_repeated": answers.repeats(ids),
                "requests_per_s": (len(stamps) - 1) / window_s if window_s > 0 else float("nan"),
                "predict_window_s": window_s,
            }
        )
        records = answers.kept
    return result, records


def settled_promoter(port: int, timeout_s: float = 30) -> dict[str, Any]:
    """The promoter's state (/promoter/) once it stopped changing for 2 s, and how long that took: a
    process idle for a second may still have joined rows to fold."""
    began = time.perf_counter()
    state = get_json(port, "/promoter/")
    while time.perf_counter() - began < timeout_s:
        time.sleep(2)
        again = get_json(port, "/promoter/")
        if again == state:
            break
        state = again
    return {"promoter": state, "promoter_settled_after_s": time.perf_counter() - began}


def promoter_check(folded: dict[str, Any] | None, expected: Counter[str]) -> dict[str, Any]:
    """The (request, challenger) pairs the promoter folded against those joined on the agent's topic
    (every phase so far, warm-up included); `missing` > 0 means joined rows it never counted."""
    challengers = (folded or {}).get("challengers", {})
    return {
        version: {
            "folded": entry["n"],
            "joined": expected[version],
            "missing": expected[version] - entry["n"],
        }
        for version, entry in challengers.items()
    }


def wait_joined(
    worker: Worker,
    inputs: Inputs,
    answers: Answers | None,
    joined: JoinedRows,
    ids: Sequence[str],
    timeout_s: float,
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Wait until every request id is answered (when the agent predicts) and has a joined row for
    each model of its prediction; returns the expected models and the ids still short at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if worker.agent.process.poll() is not None:
            raise RuntimeError(f"{worker.name} exited with {worker.agent.process.returncode}")
        joined.check()
        if answers is not None:
            answers.check()
        if answers is None or len(answers.models) >= len(ids):  # else some are not answered yet
            expected = expected_models(inputs, answers, ids)
            if len(expected) == len(ids) and joined.total >= sum(len(models) for models in expected.values()):
                short = joined.short(expected)
                if not short:
                    return expected, []
        if time.monotonic() >= deadline:
            expected = expected_models(inputs, answers, ids)
            short = joined.short(expected) + [rid for rid in ids if rid not in expected]
            say(f"  {worker.name}: {len(short)} of {len(ids)} requests not joined within {timeout_s:.0f} s")
            return expected, short
        time.sleep(0.2)


def expected_models(
    inputs: Inputs, answers: Answers | None, ids: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """The models each answered request was scored by: its joined rows to wait for. Built only once
    every request may be answered: over 100,000 ids every 0.2 s it was 23 % of the bench's samples
    (py-spy) while the worker was measured."""
    if answers is None:
        return inputs.expected_models or {}
    return {rid: answers.models[rid] for rid in ids if rid in answers.models}


def prediction_messages(records: Sequence[Prediction]) -> tuple[list[Message], dict[str, tuple[str, ...]]]:
    """Predictions as the worker publishes them (keyed by entity id), and the models of each."""
    codec = Codec(Prediction)
    messages = [(r.request_id, r.entity_id.encode(), codec.encode(r)) for r in records]
    models = {
        r.request_id: (r.golden.model_version, *(e.model_version for e in r.experiments)) for r in records
    }
    return messages, models


# -- the run --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_world_arguments(parser)
    parser.add_argument("--requests", type=int, default=50_000, help="backlog of requests (and outcomes)")
    parser.add_argument("--warm-up", type=int, default=1_000, help="requests of each agent's warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="backlog rounds per agent (the better counts)")
    parser.add_argument(
        "--idle-timeout-s", type=float, default=300.0, help="longest wait for an agent to be idle again"
    )
    parser.add_argument(
        "--agents", default=",".join(AGENTS), help=f"comma-separated subset of {','.join(AGENTS)}"
    )
    add_worker_env_argument(parser, "every rig agent")
    parser.add_argument("--log-level", default="WARNING", help="log level of the agents (printed on error)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    args.env = worker_env(parser, args)
    args.agents = [name for name in AGENTS if name in args.agents.split(",")]
    if not args.agents:
        parser.error(f"--agents takes names of {AGENTS}")
    if any(name in FEEDBACK_ONLY for name in args.agents) and not any(
        name in (*JOINING, "worker_predict") for name in args.agents
    ):
        parser.error(
            "the feedback agents need a rig worker that predicts (worker_predict, worker, worker_eos)"
        )
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    clock = PhaseClock()
    with deployed_world("feedback", MODELS, args) as deployment:
        from rig.wire.topics import ensure_topics

        settings, versions = deployment.settings, deployment.versions
        env = args.env
        logs = {name: settings.home / f"{name}.log" for name in args.agents}
        with tails_on_error(logs.values()):
            workers: dict[str, Worker] = {}
            for name in args.agents:
                own = with_prefix(settings, name.replace("_", "-"))
                ensure_topics(own)
                route(own, versions, SHADOWS)
                workers[name] = start_agent(name, own, logs[name], args.log_level, env)
                deployment.cleanup.processes.append(workers[name].agent.process)
            pids = [worker.pid for worker in workers.values()]
            plain, keyed = connected_producer(settings), connected_producer(settings, keyed=True)
            clock.lap("deploy_s")

            say(f"warm-up of {', '.join(workers)}: {args.warm_up:,} requests (and outcomes) each")
            warm_traffic = traffic_with_outcomes(settings, deployment.world, args.warm_up, seed=1_000)
            warm = {}
            pairs: dict[str, Counter[str]] = {name: Counter() for name in workers}
            predictions: list[Prediction] = []
            for name in ordered(list(workers), 0):
                began = time.perf_counter()
                measured, records = one_phase(
                    workers[name], warm_traffic, predictions, (plain, keyed), pids, args, timeout_s=300
                )
                predictions = records or predictions
                pairs[name].update(measured.get("joined_pairs_by_model", {}))
                warm[name] = {
                    "seconds": time.perf_counter() - began,
                    "joined_requests": measured.get("joined_requests"),
                }
            clock.lap("warm_up_s")

            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
            for round_ in range(args.rounds):
                traffic = traffic_with_outcomes(
                    settings, deployment.world, args.requests, seed=2_000 + round_
                )
                predictions = []
                for name in ordered(list(workers), round_):
                    say(f"backlog: {name}, round {round_ + 1}, {args.requests:,} requests and outcomes")
                    timeout_s = max(300.0, args.requests / 50)
                    measured, records = one_phase(
                        workers[name], traffic, predictions, (plain, keyed), pids, args, timeout_s
                    )
                    predictions = records or predictions
                    if "promoter" in measured:
                        pairs[name].update(measured["joined_pairs_by_model"])
                        measured["promoter_check"] = promoter_check(measured["promoter"], pairs[name])
                    rounds[name].append(measured)
                    say(f"  {name}: {summary_line(name, measured)}")
            clock.lap("backlog_s")

    return {
        "settings": {
            "topic_prefix": settings.topic_prefix,
            "agent_topic_prefixes": {name: w.agent.settings.topic_prefix for name, w in workers.items()},
            "entities": args.entities,
            "days": args.days,
            "batch_max": settings.batch_max,
            "max_open_batches": settings.max_open_batches,
            "topic_partitions": settings.topic_partitions,
            "join_retention_s": settings.join_retention_s,
            "worker_env": env,
            "model_versions": versions,
            "routing": {"golden": versions["golden"], "shadows": {n: versions[n] for n in SHADOWS}},
        },
        "phases_s": clock.phases,
        "warm_up": warm,
        "agents": {
            name: {"rounds": measured, "best": best(name, measured)} for name, measured in rounds.items()
        },
    }


def ordered(names: list[str], round_: int) -> list[str]:
    """The round's order: the predicting and joining agents (mirrored in odd rounds), then the
    feedback-only agents, which need this round's predictions."""
    first = [name for name in names if name not in FEEDBACK_ONLY]
    return (first if round_ % 2 == 0 else first[::-1]) + [name for name in names if name in FEEDBACK_ONLY]


def one_phase(
    worker: Worker,
    traffic: Traffic,
    predictions: list[Prediction],
    producers: tuple[Any, Any],
    pids: Sequence[int],
    args: argparse.Namespace,
    timeout_s: float,
) -> tuple[dict[str, Any], list[Prediction]]:
    """One backlog through one agent, measured as its kind is (see the module docstring)."""
    name = worker.name
    if name in PREDICTING:
        return backlog_round(worker.agent, producers[0], traffic.requests, pids, args.idle_timeout_s)
    if name in JOINING:
        inputs = Inputs({"requests": traffic.requests, "outcomes": traffic.outcomes})
        return joined_round(worker, inputs, producers, pids, traffic.ids, timeout_s, args.idle_timeout_s)
    wanted = set(traffic.ids)
    mine = [record for record in predictions if record.request_id in wanted]
    messages, models = prediction_messages(mine)
    inputs = Inputs({"predictions": messages, "outcomes": traffic.outcomes}, expected_models=models)
    measured, _ = joined_round(worker, inputs, producers, pids, list(models), timeout_s, args.idle_timeout_s)
    return measured, []


def best(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round that counts: the fastest until idle."""
    if name in PREDICTING:
        return max(rounds, key=capacity)
    return max(rounds, key=lambda measured: measured["until_idle"]["requests_per_s"])


def summary_line(name: str, measured: dict[str, Any]) -> str:
    idle = measured["until_idle"]
    if name in PREDICTING:
        return (
            f"{measured['requests_per_s']:,.0f} req/s, until idle {idle['requests_per_s']:,.0f} req/s, "
            f"{idle['agent_cpu_us_per_request']:,.0f} CPU µs/req (others "
            f"{measured['contention']['others_cores']:.2f} cores)"
        )
    return (
        f"until idle {idle['requests_per_s']:,.0f} req/s, {idle['joined_rows_per_s']:,.0f} joined rows/s, "
        f"{idle['agent_cpu_us_per_request']:,.0f} CPU µs/req, {idle['agent_cpu_us_per_joined_row']:,.0f} "
        f"CPU µs/joined row; {measured['joined_requests']:,}/{measured['requests']:,} joined, repeated rows "
        f"{measured['joined_rows_repeated']} (others {measured['contention']['others_cores']:.2f} cores)"
    )


# -- ratios, targets, report ----------------------------------------------------------------------
def derived(agents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Shares of the bare loop, the join's CPU per joined row both ways, exactly once / at least once."""
    out: dict[str, Any] = {}
    bare = agents.get("bare_loop", {}).get("best")
    for name in JOINING:
        if bare and name in agents:
            out[f"{name} / bare_loop"] = agents[name]["best"]["until_idle"]["requests_per_s"] / capacity(bare)
    predict = agents.get("worker_predict", {}).get("best")
    if predict and "worker" in agents:
        worker = agents["worker"]["best"]
        predict_cpu_s = predict["until_idle"]["agent_cpu_us_per_request"] * predict["requests"] / 1e6
        extra_s = worker["until_idle"]["agent_cpu_s"] - predict_cpu_s
        out["cpu_us_per_joined_row_difference"] = extra_s * 1e6 / max(1, worker["joined_rows"])
    for name in FEEDBACK_ONLY:
        if name in agents:
            out[f"cpu_us_per_joined_row_direct_{name}"] = agents[name]["best"]["until_idle"][
                "agent_cpu_us_per_joined_row"
            ]
    for eos, alo in (("worker_eos", "worker"), ("feedback_eos", "feedback")):
        if eos in agents and alo in agents:
            a, b = agents[eos]["best"]["until_idle"], agents[alo]["best"]["until_idle"]
            out[f"{eos} / {alo}"] = {
                "requests_per_s": a["requests_per_s"] / b["requests_per_s"],
                "cpu_us_per_joined_row": a["agent_cpu_us_per_joined_row"] / b["agent_cpu_us_per_joined_row"],
            }
    return out


def targets(ratios: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "worker / bare_loop" in ratios:
        share = ratios["worker / bare_loop"]
        out["share_of_bare_loop"] = {
            "value": share,
            "limit": TARGETS["share_of_bare_loop"],
            "pass": share >= 0.5,
        }
    direct = ratios.get("cpu_us_per_joined_row_direct_feedback")
    value = direct if direct is not None else ratios.get("cpu_us_per_joined_row_difference")
    if value is not None:
        out["cpu_us_per_joined_row"] = {
            "value": value,
            "how": "direct (feedback agent)"
            if direct is not None
            else "difference (worker - worker_predict)",
            "limit": TARGETS["cpu_us_per_joined_row"],
            "pass": value <= TARGETS["cpu_us_per_joined_row"],
        }
    return out


def print_report(result: dict[str, Any], output: Path) -> None:
    agents, config = result["agents"], result["config"]
    print(
        f"\nbacklog of {config['requests']:,} requests and their outcomes, "
        f"better of {config['rounds']} round(s)"
    )
    print(
        f"{'agent':<15} {'req/s':>8} {'idle req/s':>10} {'rows/s':>8} {'µs/req':>8} {'µs/row':>8} "
        f"{'joined':>13} {'rep.pred':>8} {'rep.rows':>8} {'others':>6}"
    )
    for name, agent in agents.items():
        m = agent["best"]
        idle = m["until_idle"]
        flag = "" if idle["idle_reached"] else "<="
        if name in PREDICTING:
            print(
                f"{name:<15} {m['requests_per_s']:>8,.0f} "
                f"{flag + format(idle['requests_per_s'], ',.0f'):>10} {'':>8} "
                f"{idle['agent_cpu_us_per_request']:>8,.0f} {'':>8} {'':>13} {'':>8} {'':>8} "
                f"{m['contention']['others_cores']:>6.2f}"
            )
            continue
        rate = m.get("requests_per_s")
        print(
            f"{name:<15} {'' if rate is None else format(rate, ',.0f'):>8} "
            f"{flag + format(idle['requests_per_s'], ',.0f'):>10} {idle['joined_rows_per_s']:>8,.0f} "
            f"{idle['agent_cpu_us_per_request']:>8,.0f} {idle['agent_cpu_us_per_joined_row']:>8,.0f} "
            f"{m['joined_requests']:>6,}/{m['requests']:<6,} {m.get('predictions_repeated', 0):>8} "
            f"{m['joined_rows_repeated']:>8} {m['contention']['others_cores']:>6.2f}"
        )
    print(
        "req/s: first to last prediction; idle req/s: requests / (first request to the later of idle and "
        "the last joined row);\nrows/s: joined rows over the same span; µs/req, µs/row: the agent's CPU "
        "until idle per request, per joined row;\nrep.: repeated predictions / joined rows; others: cores "
        "every other process used meanwhile"
    )
    ratios = result["ratios"]
    print()
    for key, value in ratios.items():
        if isinstance(value, dict):
            print(
                f"{key:<44} req/s {value['requests_per_s']:.2f}x, "
                f"CPU per joined row {value['cpu_us_per_joined_row']:.2f}x"
            )
        elif key.startswith("cpu_us"):
            print(f"{key:<44} {value:,.0f} µs")
        else:
            print(f"{key:<44} {value:.0%}")
    print(
        f"  (the issue's before: worker with the join {BEFORE['worker_join_on_req_s']:,} against bare loop "
        f"{BEFORE['bare_loop_req_s']:,} req/s; ~{BEFORE['cpu_us_per_joined_row']:,} µs per joined row)"
    )
    for key, check in result["targets"].items():
        how = f" ({check['how']})" if "how" in check else ""
        value = f"{check['value']:.0%}" if key == "share_of_bare_loop" else f"{check['value']:,.0f} µs"
        print(f"target {key}: {value}{how}, limit {check['limit']}: {'PASS' if check['pass'] else 'MISS'}")
    for name in JOINING + FEEDBACK_ONLY:
        if name in agents:
            m = agents[name]["best"]
            check = {v: f"{c['folded']:,}/{c['joined']:,}" for v, c in m.get("promoter_check", {}).items()}
            print(
                f"{name}: join counts {m['join_counts']}; promoter folded/joined pairs {check} (warm-up "
                f"included; settled after {m['promoter_settled_after_s']:.0f} s)"
            )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    measured = run(args)
    ratios = derived(measured["agents"])
    checks = targets(ratios)
    result = record.result("feedback", args, **measured, ratios=ratios, targets=checks, before=BEFORE)
    publish(result, args.output, print_report)


if __name__ == "__main__":
    main()
