"""MLServer 1.7.1 in its Kafka mode beside the rig: a backlog of one-row requests to the golden model.

The deployment's golden XGBoost model, no feature enrichment (the rows come transformed), one V2
inference request (JSON) per row; measured: requests answered and lost, req/s, CPU per request.

`run_mlserver` (called by bench_pipeline.py, or by this script alone):

1. a model repository in a temporary folder: `settings.json` (Kafka on, the run's own input and output
   topics, free ports) and `golden/model-settings.json` (`mlserver_xgboost.XGBoostModel` on a copy
   of the model file; config `adaptive` adds `max_batch_size` 64 and `max_batch_time` 0.01 s,
   `defaults` leaves every MLServer default, so no adaptive batching);
2. `mlserver start` from bench/peers/mlserver/.venv (made by bench/peers/mlserver/setup) with
   OMP_NUM_THREADS=1: XGBoost's default two threads per call make one-row predictions ~10x slower
   when the other core is busy;
3. ready: its model ready over HTTP, then a probe request answered over Kafka (its consumer has
   then taken its position), then a warm-up burst answered;
4. SIGSTOP, the backlog produced, SIGCONT: its consumer has no group and starts at the newest
   offset, so it would skip whatever was produced before it took its position, and a backlog
   produced while it runs would be a race between the producer and the server, not a backlog;
5. its outputs read until every request id is answered, or none arrived for `quiet_s` (60 s: it
   gives a send up after aiokafka's 40 s request timeout and only logs it), or `timeout_s`;
6. the server stopped (SIGTERM), its topics deleted.

Measured: requests answered and lost (by request id), requests/s from the first to the last answer
(their Kafka timestamps, as bench_pipeline.py counts the rig's), CPU seconds of the server's process
tree (the main process that runs the Kafka loop, and its parallel inference workers) from SIGCONT to
the last answer, how busy the rest of the machine was meanwhile (`others_cores`: on 2 shared cores
wall-clock rates depend on it, CPU per request much less), and how far the answers are from the
model's own predictions of the same rows (a check that the peer serves the same model).

Run alone (from the repository root, after bench/peers/mlserver/setup): deploys a world on the shared
Kafka and Redis and trains its golden model as bench_pipeline.py does (~1 min), runs each config and
writes bench/results/mlserver_peer.json:

    .venv/bin/python bench/peers/mlserver_peer.py --config adaptive --requests 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `bench.support` as a script too

import numpy as np

from bench.support.cleanup import delete_topics
from bench.support.cpu import CpuUsage, process_tree
from bench.support.deploy import add_world_arguments, deployed_world, with_prefix
from bench.support.kafka_io import Collector, Message, Sender, connected_producer
from bench.support.report import RESULTS_DIR, RunRecord, publish, say
from bench.support.served_model import feature_rows, model_file
from bench.support.workers import free_port, tails_on_error
from rig.config import RigSettings
from rig.processes import stop_processes

PEER_DIR = Path(__file__).resolve().parent / "mlserver"
MLSERVER = PEER_DIR / ".venv" / "bin" / "mlserver"
RESULTS = RESULTS_DIR / "mlserver_peer.json"
MODEL_NAME = "golden"
MODEL_HEADER = "mlserver-model"  # MLServer's Kafka server takes the model's name from this header
MODEL_FILES = (".ubj", ".json", ".bst")  # what mlserver_xgboost loads as `model<suffix>`
PACKAGES = ("mlserver", "mlserver-xgboost", "xgboost", "aiokafka", "uvloop", "numpy", "pydantic")

Config = Literal["defaults", "adaptive"]
BATCHING: dict[str, dict[str, Any]] = {
    "defaults": {},
    "adaptive": {"max_batch_size": 64, "max_batch_time": 0.01},
}
"""What each config adds to the model's settings (`defaults`: MLServer's own, no adaptive batching)."""


@dataclass(frozen=True)
class PeerResult:
    """One backlog through a peer server."""

    peer: str
    packages: dict[str, str]
    """Versions in the peer's own environment."""
    config: str
    model_settings: dict[str, Any]
    requests: int
    answered: int
    lost: int
    lost_ids_sample: list[str]
    """Up to 20 ids of requests never answered."""
    duplicates: int
    requests_per_s: float
    """Answers from the first to the last (their Kafka timestamps): (answered - 1) / window_s."""
    window_s: float
    requests_per_s_since_sigcont: float
    """Answers / (the last answer's Kafka timestamp - SIGCONT): the backlog's drain rate, which also
    counts the time before the first answer (seconds, at times, while MLServer takes the backlog in)."""
    first_answer_after_s: float
    """From SIGCONT to the first answer's Kafka timestamp."""
    backlog_produce_s: float
    ready_after_s: float
    """From `mlserver start` to its first answer over Kafka."""
    warm_up_answered: int
    warm_up_requests: int
    server_processes: int
    server_cpu_s: float
    """CPU seconds of the server's process tree from SIGCONT to the last answer."""
    server_cpu_us_per_answered: float
    server_cores_busy: float
    server_cpu_s_until_end: float
    """The same until the reading stopped (all answered, or `quiet_s` without an answer)."""
    main_process_cpu_s_until_end: float
    """Of which its main process (Kafka consumer and producer, JSON, the event loop; the rest is its
    inference workers')."""
    contention: dict[str, float]
    """`CpuUsage.report()` from SIGCONT to the last answer (`agent`: the server's process tree)."""
    max_abs_diff_vs_model: float
    """Largest |answer - the model's prediction of the same row here| over the answers."""
    log_errors: dict[str, int]
    """The server log's ERROR lines, by their text (up to 5 kinds), e.g. sends that timed out."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the server -----------------------------------------------------------------------------------
def write_repository(
    root: Path, model_path: Path, settings: RigSettings, config: Config, ports: dict[str, int]
) -> dict[str, Any]:
    """MLServer's settings.json and the model's folder under `root`; returns the model's settings.

    Raises:
        ValueError: the model file is not one mlserver_xgboost loads, or the cluster needs TLS or
            SASL (MLServer's Kafka clients take bootstrap servers only).
    """
    if model_path.suffix not in MODEL_FILES:
        raise ValueError(f"{model_path} is not an XGBoost model file MLServer loads ({MODEL_FILES})")
    if settings.kafka_security_protocol != "PLAINTEXT":
        raise ValueError("MLServer's Kafka server connects in PLAINTEXT only: no TLS or SASL settings")
    server = {
        "host": "127.0.0.1",
        **ports,
        "kafka_enabled": True,
        "kafka_servers": settings.kafka_bootstrap,
        "kafka_topic_input": settings.topic("requests"),
        "kafka_topic_output": settings.topic("predictions"),
    }
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    model = {"name": MODEL_NAME, "implementation": "mlserver_xgboost.XGBoostModel", **BATCHING[config]}
    folder = root / MODEL_NAME
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2))
    shutil.copyfile(model_path, folder / f"model{model_path.suffix}")  # a name it finds without a uri
    return model


def peer_packages() -> dict[str, str]:
    """Versions of `PACKAGES` in the peer's environment (its Python, not this one)."""
    versions = f"{{name: m.version(name) for name in {PACKAGES}}}"
    script = f"import importlib.metadata as m, json; print(json.dumps({versions}))"
    ran = subprocess.run([MLSERVER.parent / "python", "-c", script], capture_output=True, check=True)
    return dict(json.loads(ran.stdout))


@contextmanager
def running_server(root: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`mlserver start <root>` from the peer's own environment, logging to `log_path`; stopped on exit
    (`stop_server`), also on error."""
    process = subprocess.Popen(
        [str(MLSERVER), "start", str(root)],
        cwd=root,  # its .metrics and .envs folders go there
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        stop_server(process)


def wait_ready(process: subprocess.Popen[bytes], http_port: int, timeout_s: float) -> None:
    """Until the server says its model is ready over HTTP (it describes the model before that, and
    answers a request sent meanwhile with an error in its log only).

    Raises:
        RuntimeError: the server exited, or its model was not ready within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while not http_ok(http_port, f"/v2/models/{MODEL_NAME}/ready"):
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited with {process.returncode} during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"MLServer's model {MODEL_NAME} was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def http_ok(port: int, path: str) -> bool:
    """Whether GET http://127.0.0.1:<port><path> answers 200 (MLServer's ready endpoints have no body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # not listening yet, or an error status (urllib's HTTPError is an OSError)
        return False


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGCONT (a stopped process does not act on SIGTERM), SIGTERM, then SIGKILL whichever of its
    processes is left after the grace time."""
    pids = process_tree(process.pid) if process.poll() is None else []
    if pids:
        process.send_signal(signal.SIGCONT)
    stop_processes([process], grace_s=30)
    for pid in pids:
        if pid != process.pid and runs_from_peer_venv(pid):
            os.kill(pid, signal.SIGKILL)  # an inference worker its parent left behind


def runs_from_peer_venv(pid: int) -> bool:
    """Whether process `pid` still runs and runs from the peer's environment (not a reused pid)."""
    try:
        return str(PEER_DIR) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


# -- requests and answers -------------------------------------------------------------------------
def v2_requests(rows: np.ndarray, id_prefix: str) -> list[Message]:
    """One V2 inference request (JSON) per row; its id is also the Kafka key, and MLServer answers
    with the key as the response's id (and its key)."""
    messages = []
    for i, row in enumerate(rows.tolist()):
        request_id = f"{id_prefix}{i}"
        body = {
            "id": request_id,
            "inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP64", "data": row}],
        }
        messages.append((request_id, request_id.encode(), json.dumps(body, allow_nan=False).encode()))
    return messages


class Answers:
    """The server's outputs, parsed as they arrive: request id -> (Kafka timestamp ms, score)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.first: dict[str, tuple[int, float]] = {}
        self.duplicates = 0
        self._parsed = 0

    def update(self) -> list[str]:
        """Parse the outputs that arrived since the last call; returns the ids answered first now."""
        self.collector.check()
        end = len(self.collector.raw)
        fresh = []
        for timestamp, value in self.collector.raw[self._parsed : end]:
            response = json.loads(value)
            if response["id"] in self.first:
                self.duplicates += 1
                continue
            self.first[response["id"]] = (timestamp, float(response["outputs"][0]["data"][0]))
            fresh.append(response["id"])
        self._parsed = end
        return fresh


def await_answers(
    answers: Answers,
    wanted: set[str],
    process: subprocess.Popen[bytes],
    usage: CpuUsage,
    quiet_s: float,
    timeout_s: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Read answers until all of `wanted` are in, none came for `quiet_s`, or `timeout_s` passed.

    Returns:
        `usage.report()` when the last wanted answer arrived (within one 50 ms poll), and when the
        reading stopped.

    Raises:
        RuntimeError: the server exited.
    """
    missing = set(wanted) - answers.first.keys()
    began = last_answer = time.monotonic()
    at_last = usage.report()
    while missing:
        fresh = missing.intersection(answers.update())
        now = time.monotonic()
        if fresh:
            missing -= fresh
            last_answer, at_last = now, usage.report()
        elif now - last_answer > quiet_s or now - began > timeout_s:
            break
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited with {process.returncode}")
        time.sleep(0.05)
    return at_last, usage.report()


def await_probe(answers: Answers, sender: Sender, probes: Sequence[Message], timeout_s: float) -> None:
    """Send a probe request every second until one is answered: the server's consumer has then taken
    its position on the input topic (at its end), so nothing produced from now on is skipped.

    Raises:
        RuntimeError: no probe was answered within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    for probe in probes:
        sender.send([probe])
        sender.producer.flush(10)
        answer_by = time.monotonic() + 1
        while time.monotonic() < answer_by:
            if answers.update():
                return
            time.sleep(0.05)
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"MLServer answered no probe request within {timeout_s:.0f} s")


def log_errors(log_path: Path, kinds: int = 5) -> dict[str, int]:
    """The log's ERROR lines by their text after `ERROR` (the most frequent `kinds`)."""
    if not log_path.is_file():
        return {}
    counts = Counter(
        line.split("ERROR", 1)[1].strip()[:160]
        for line in log_path.read_text(errors="replace").splitlines()
        if "ERROR" in line
    )
    return dict(counts.most_common(kinds))


def model_agreement(model_path: Path, rows: np.ndarray, scores: dict[int, float]) -> float:
    """Largest |score - the model's prediction of its row| (rows by index), one XGBoost thread."""
    import xgboost

    if not scores:
        return float("nan")
    booster = xgboost.Booster(params={"nthread": 1}, model_file=str(model_path))
    index = np.fromiter(scores, dtype=np.intp, count=len(scores))
    expected = booster.inplace_predict(rows[index])
    return float(np.max(np.abs(np.fromiter(scores.values(), dtype=np.float64) - expected)))


# -- one run --------------------------------------------------------------------------------------
def run_mlserver(
    settings: RigSettings,
    model_path: Path,
    rows: np.ndarray,
    config: Config,
    timeout_s: float = 900,
    quiet_s: float = 60,
    warm_up: int = 500,
) -> PeerResult:
    """A backlog of one request per row through MLServer in its Kafka mode (see the module's doc).

    Args:
        settings: the cluster and the run's own topics: `settings.topic("requests")` in,
            `settings.topic("predictions")` out, made here with `settings.topic_partitions`
            partitions, and every topic under `settings.topic_prefix` deleted at the end.
        model_path: the XGBoost model file (UBJ, JSON or BST) MLServer serves as `golden`.
        rows: the model's input rows (its features in its order), one request each.
        config: `adaptive` (batches of up to 64 within 10 ms) or `defaults` (MLServer's own).
        timeout_s: longest wait for the backlog's answers after SIGCONT.
        quiet_s: give up when no answer arrived for this long.
        warm_up: requests (the first rows) answered before the backlog.

    Raises:
        RuntimeError: the server did not start, exited, or answered no probe.
        ValueError: see `write_repository`.
    """
    from rig.wire.topics import ensure_topics

    if not MLSERVER.is_file():
        raise RuntimeError(f"no {MLSERVER}: run {PEER_DIR / 'setup'} first")
    ensure_topics(settings, ("requests", "predictions"))
    try:
        with tempfile.TemporaryDirectory(prefix="mlserver-peer-") as tmp:
            root = Path(tmp)
            log_path = root / "mlserver.log"
            with tails_on_error([log_path]):
                return serve_backlog(
                    root, log_path, settings, model_path, rows, config, timeout_s, quiet_s, warm_up
                )
    finally:
        delete_topics(settings, settings.topic_prefix)


def serve_backlog(
    root: Path,
    log_path: Path,
    settings: RigSettings,
    model_path: Path,
    rows: np.ndarray,
    config: Config,
    timeout_s: float,
    quiet_s: float,
    warm_up: int,
) -> PeerResult:
    """`run_mlserver` inside its folder `root` and on its topics (made): start, measure, stop."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    model_settings = write_repository(root, model_path, settings, config, ports)
    producer = connected_producer(settings)
    sender = Sender(producer, settings.topic("requests"), headers=[(MODEL_HEADER, MODEL_NAME.encode())])
    began = time.perf_counter()
    with closing(Collector(settings).start()) as collector, running_server(root, log_path) as process:
        answers = Answers(collector)
        wait_ready(process, ports["http_port"], timeout_s=180)
        await_probe(answers, sender, v2_requests(rows[:60], "probe-"), timeout_s=60)
        ready_after_s = time.perf_counter() - began
        warm = v2_requests(rows[:warm_up], "warm-")
        sender.send(warm)
        warm_ids = {request_id for request_id, _, _ in warm}
        await_answers(answers, warm_ids, process, CpuUsage(process.pid), quiet_s=10, timeout_s=120)
        warm_answered = len(warm_ids & answers.first.keys())
        pids = process_tree(process.pid)  # its inference workers are up once it has answered

        backlog = v2_requests(rows, "request-")
        process.send_signal(signal.SIGSTOP)
        sent_at = time.perf_counter()
        sender.send(backlog)
        if producer.flush(60) or sender.failed:
            raise RuntimeError(f"the backlog to {sender.topic} was not all acknowledged")
        produce_s = time.perf_counter() - sent_at
        say(f"  mlserver ({config}): backlog of {len(backlog):,} produced in {produce_s:.1f} s, SIGCONT")
        usage, main = CpuUsage(*pids), CpuUsage(process.pid)
        resumed_ms = time.time() * 1000  # epoch ms, as Kafka timestamps
        process.send_signal(signal.SIGCONT)
        wanted = {request_id for request_id, _, _ in backlog}
        at_last, at_end = await_answers(answers, wanted, process, usage, quiet_s, timeout_s)
        main_cpu_s = main.report()["agent_cpu_s"]

    answered = {request_id: answers.first[request_id] for request_id in wanted if request_id in answers.first}
    stamps = np.array(sorted(timestamp for timestamp, _ in answered.values()), dtype=np.int64)
    window_s = float(stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
    drain_s = float(stamps[-1] - resumed_ms) / 1000 if len(stamps) else float("nan")
    cpu_s = at_last["agent_cpu_s"]
    lost = sorted(wanted - answered.keys(), key=lambda request_id: int(request_id.split("-")[1]))
    scores = {int(request_id.split("-")[1]): score for request_id, (_, score) in answered.items()}
    return PeerResult(
        peer="mlserver",
        packages=peer_packages(),
        config=config,
        model_settings=model_settings,
        requests=len(wanted),
        answered=len(answered),
        lost=len(lost),
        lost_ids_sample=lost[:20],
        duplicates=answers.duplicates,
        requests_per_s=(len(stamps) - 1) / window_s if window_s > 0 else float("nan"),
        window_s=window_s,
        requests_per_s_since_sigcont=len(stamps) / drain_s if drain_s > 0 else float("nan"),
        first_answer_after_s=float(stamps[0] - resumed_ms) / 1000 if len(stamps) else float("nan"),
        backlog_produce_s=produce_s,
        ready_after_s=ready_after_s,
        warm_up_answered=warm_answered,
        warm_up_requests=len(warm),
        server_processes=len(pids),
        server_cpu_s=cpu_s,
        server_cpu_us_per_answered=cpu_s * 1e6 / max(1, len(answered)),
        server_cores_busy=at_last["agent_cores"],
        server_cpu_s_until_end=at_end["agent_cpu_s"],
        main_process_cpu_s_until_end=main_cpu_s,
        contention=at_last,
        max_abs_diff_vs_model=model_agreement(model_path, rows, scores),
        log_errors=log_errors(log_path),
    )


# -- alone: a deployment of its own ---------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_world_arguments(parser)
    configs = get_args(Config)
    parser.add_argument(
        "--config", choices=(*configs, "both"), default="both", help="MLServer's batching (both: in turn)"
    )
    parser.add_argument("--requests", type=int, default=20_000, help="backlog of one-row requests")
    parser.add_argument("--warm-up", type=int, default=500, help="requests answered before the backlog")
    parser.add_argument("--timeout-s", type=float, default=900, help="longest wait for the backlog")
    parser.add_argument("--quiet-s", type=float, default=60, help="give up after this long without answers")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    args.configs = list(configs) if args.config == "both" else [args.config]
    return args


def print_report(result: dict[str, Any], output: Path) -> None:
    versions = next(iter(result["peers"].values()))["packages"]
    print(
        f"\nMLServer {versions['mlserver']} (Kafka mode), model {result['model_version']}: a backlog of "
        "one-row requests"
    )
    print(
        f"{'config':<10} {'answered':>15} {'lost':>7} {'req/s':>8} {'drain/s':>8} {'1st s':>6} "
        f"{'CPU µs/req':>10} {'main':>5} {'cores':>5} {'others':>6} {'max |diff|':>10}  errors in its log"
    )
    for name, peer in result["peers"].items():
        errors = sum(peer["log_errors"].values())
        main = peer["main_process_cpu_s_until_end"] / max(peer["server_cpu_s_until_end"], 1e-9)
        rate, drain, first, cores, diff = (
            float("nan") if peer[key] is None else peer[key]  # NaN was written as null
            for key in (
                "requests_per_s",
                "requests_per_s_since_sigcont",
                "first_answer_after_s",
                "server_cores_busy",
                "max_abs_diff_vs_model",
            )
        )
        print(
            f"{name:<10} {peer['answered']:>7,}/{peer['requests']:<7,} {peer['lost']:>7,} {rate:>8,.0f} "
            f"{drain:>8,.0f} {first:>6.1f} {peer['server_cpu_us_per_answered']:>10,.0f} {main:>5.0%} "
            f"{cores:>5.2f} {peer['contention']['others_cores']:>6.2f} {diff:>10.1e}  {errors:,}"
        )
    print(
        "req/s: first to last answer; drain/s: SIGCONT to the last answer; 1st s: SIGCONT to the first "
        "answer;\nCPU µs/req, cores: the server's process tree (main + inference workers) per answered "
        "request, SIGCONT to the last answer; main: its main process's share of the CPU;\nothers: cores "
        "every other process used meanwhile; max |diff|: answers against the model's predictions here"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    peers: dict[str, dict[str, Any]] = {}
    with deployed_world("mlserver", {MODEL_NAME: MODEL_NAME}, args) as deployment:
        settings, version = deployment.settings, deployment.versions[MODEL_NAME]
        rows = feature_rows(settings, version, args.requests)
        for config in args.configs:
            say(f"mlserver ({config}): {args.requests:,} requests of {rows.shape[1]} features")
            peer = run_mlserver(
                with_prefix(settings, f"mlserver-{config}"),
                model_file(settings, version),
                rows,
                config,
                timeout_s=args.timeout_s,
                quiet_s=args.quiet_s,
                warm_up=args.warm_up,
            )
            peers[config] = peer.as_dict()
            say(
                f"  mlserver ({config}): {peer.answered:,} of {peer.requests:,} answered, "
                f"{peer.requests_per_s:,.0f} req/s, {peer.server_cpu_us_per_answered:,.0f} CPU µs/req"
            )
    result = record.result("mlserver_peer", args, model_version=version, peers=peers)
    publish(result, args.output, print_report)


if __name__ == "__main__":
    main()
