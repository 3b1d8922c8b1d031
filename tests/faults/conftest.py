"""Fault tests: the whole pipeline on the real stack while a dependency fails; every request id checked.

Each fault runs against services of its own where the fault would disturb other tests: a Redis of the
test's own (stopped, restarted on its own dump, or frozen with SIGSTOP) and, for a broker outage, a
Kafka broker of its own (started and stopped with ops/kafka/up and ops/kafka/down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from rig.config import RigSettings
from rig.processes import stop_processes
from rig.routing.table import set_golden_event, start_experiment_event
from rig.wire.codec import Codec, Rejected
from rig.wire.records import DeadLetter, JoinedOutcome, Outcome, Prediction, Request
from sim.deploy import prepare, start_worker
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.conftest import REPO
from tests.integration.conftest import isolated_feast_settings
from tests.support.ports import free_port
from tests.support.records import accepted

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

FAULT_ENV = {
    # Short enough that a test sees a dead member replaced within seconds, not 45 s.
    "RIG_KAFKA_SESSION_TIMEOUT_S": "6",
    "RIG_REDIS_TIMEOUT_S": "1",
}


@dataclass
class OwnRedis:
    """A redis-server of the test's own, on its own port and folder."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "yes",
             "--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid"),
             "--logfile", str(self.folder / "redis.log"), "--save", "", "--appendonly", "no"],
            check=True,
        )  # fmt: skip
        self._wait(lambda: self.ping(), "answer PING")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def pid(self) -> int:
        return int((self.folder / "redis.pid").read_text())

    def shutdown(self, save: bool) -> None:
        """Stop the server; with `save`, its data is written to a dump it reloads on start."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "save" if save else "nosave"],
            capture_output=True,
            check=False,
        )
        self._wait(lambda: not self.ping(), "stop")

    def _wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"redis on port {self.port} did not {what}"
            time.sleep(0.05)


@dataclass
class OwnKafka:
    """A single-node Kafka broker of the test's own (ops/kafka/up with its own state and ports)."""

    folder: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RIG_KAFKA_STATE_DIR": str(self.folder),
            "RIG_KAFKA_PORT": str(self.port),
            "RIG_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "RIG_KAFKA_BOOTSTRAP": self.bootstrap,
        }

    def up(self) -> None:
        subprocess.run([str(REPO / "ops/kafka/up")], env=self.env(), check=True, timeout=180)

    def down(self, purge: bool = False) -> None:
        command = [str(REPO / "ops/kafka/down"), *(["--purge"] if purge else [])]
        subprocess.run(command, env=self.env(), check=True, timeout=120)


@dataclass
class Stack:
    """A deployed rig (golden + 2 shadows) on the given Redis and broker."""

    settings: RigSettings
    world: WorldSettings
    root: Path

    @contextmanager
    def worker(
        self, name: str, web_port: int = 0, env: Mapping[str, str] | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        log = self.root / f"{name}.log"
        process = start_worker(
            self.settings, log, log_level="INFO", web_port=web_port, env={**FAULT_ENV, **(env or {})}
        )
        try:
            yield process
        finally:
            stop_processes([process])
            print(f"----- {name} (tail)\n{log.read_text(errors='replace')[-4000:]}")


def deploy_stack(root: Path, **settings: object) -> Stack:
    """Topics, the synthetic world in Feast, golden + `better` and `worse` shadows, routed."""
    rig = isolated_feast_settings(root, topic_prefix=f"fault.{uuid.uuid4().hex[:8]}.", **settings)
    world = WorldSettings(seed=91, entities=400, days=3)
    _, versions = prepare(rig, {"golden": "golden", "better": "better", "worse": "worse"}, world, 4_000, 20)
    from rig.routing.control import publish_control

    publish_control(rig, set_golden_event(versions["golden"], actor="test"))
    for name in ("better", "worse"):
        publish_control(rig, start_experiment_event(name, versions[name], "shadow", actor="test"))
    return Stack(settings=rig, world=world, root=root)


class Traffic:
    """Requests produced at a steady rate from a thread; every id is remembered. With `outcomes`,
    each request's outcome (keyed by its entity, label from its id) follows it at once."""

    def __init__(
        self, stack: Stack, count: int, rate_per_s: float, seed: int, outcomes: bool = False
    ) -> None:
        from confluent_kafka import Producer

        self.requests: list[Request] = list(synthetic_requests(stack.world, count, seed))
        self.ids = {r.request_id for r in self.requests}
        self.sent = 0
        self._rate = rate_per_s
        self._topic = stack.settings.topic("requests")
        self._outcomes = stack.settings.topic("outcomes") if outcomes else None
        self._codec = Codec(Request)
        self._outcome_codec = Codec(Outcome)
        # Waits out a broker outage: messages are retried for up to 5 minutes, never dropped.
        self._producer = Producer({**stack.settings.kafka_producer_config(), "message.timeout.ms": 300_000})
        self._failed: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        """A delivery report: a message that could not be delivered is kept, to fail the test."""
        if error is not None:
            self._failed.append(str(error))

    def _run(self) -> None:
        started = time.monotonic()
        for i, request in enumerate(self.requests, start=1):
            self._producer.produce(
                self._topic,
                self._codec.encode(request),
                request.entity_id.encode(),
                on_delivery=self._delivered,
            )
            if self._outcomes is not None:
                outcome = Outcome(
                    request_id=request.request_id,
                    entity_id=request.entity_id,
                    label=int(request.request_id[-1], 16) % 2,
                    event_time=request.event_time + 1_000,
                )
                self._producer.produce(
                    self._outcomes,
                    self._outcome_codec.encode(outcome),
                    request.entity_id.encode(),
                    on_delivery=self._delivered,
                )
            self._producer.poll(0)
            self.sent = i
            ahead = i / self._rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        assert self._producer.flush(300) == 0
        del self._producer  # its connections end with the traffic, not with the test session

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def wait_sent(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < count:
            assert time.monotonic() < deadline, f"only {self.sent} of {count} requests sent"
            time.sleep(0.05)

    def join(self, timeout_s: float = 400) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "traffic did not finish"
        assert not self._failed, f"the test's own producer lost requests: {self._failed[:3]}"


class Answers:
    """Every prediction and dead letter of the deployment, read continuously from the start."""

    def __init__(self, settings: RigSettings) -> None:
        self.predictions: Counter[str] = Counter()
        self.models: dict[str, set[str]] = {}
        """Per request id, the models that scored it (golden and every experiment of its prediction)."""
        self.dead_letters: dict[str, str] = {}
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        predictions, dlq = self._settings.topic("predictions"), self._settings.topic("dlq")
        codecs: dict[str, Codec[Prediction] | Codec[DeadLetter]] = {
            predictions: Codec(Prediction),
            dlq: Codec(DeadLetter),
        }
        consumer = Consumer(
            {
                **self._settings.kafka_client_config(),
                "group.id": f"faults-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1_000,  # a re-created topic is read again soon
            }
        )
        consumer.subscribe([predictions, dlq])
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1_000, timeout=0.2):
                    if message.error():
                        continue
                    # A consumed message has its topic.
                    record = codecs[cast(str, message.topic())].decode(message.value())
                    # Not accepted(): over two codecs it would type the record as any Record.
                    assert not isinstance(record, Rejected), record.reason
                    if isinstance(record, Prediction):
                        self.predictions[record.request_id] += 1
                        scored = {record.golden.model_version, *(e.model_version for e in record.experiments)}
                        self.models[record.request_id] = scored
                    elif record.request_id:
                        self.dead_letters[record.request_id] = record.reason
        finally:
            consumer.close()

    def start(self) -> Answers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, ids: set[str], timeout_s: float) -> set[str]:
        """Wait until every id has a prediction (or the timeout); returns the ids still missing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._thread.is_alive(), "the reader of predictions stopped"
            missing = ids - self.predictions.keys()
            if not missing:
                return set()
            time.sleep(0.25)
        return ids - self.predictions.keys()

    def report(self, traffic: Traffic, what: str, missing: set[str]) -> int:
        """Print the outcome of a fault; returns the number of repeated predictions."""
        answered = traffic.ids & self.predictions.keys()
        repeats = sum(self.predictions[i] - 1 for i in answered)
        dead_valid = traffic.ids & self.dead_letters.keys()
        print(
            f"{what}: sent {len(traffic.ids)}, answered {len(answered)}, missing {len(missing)}, "
            f"repeated predictions {repeats}, valid requests dead-lettered {len(dead_valid)}"
        )
        return repeats

    def assert_complete(self, traffic: Traffic, what: str, timeout_s: float = 180) -> int:
        """Every request answered, none dead-lettered; returns the repeats (printed)."""
        missing = self.wait_for(traffic.ids, timeout_s)
        repeats = self.report(traffic, what, missing)
        assert not missing, f"{len(missing)} requests never answered, e.g. {sorted(missing)[:5]}"
        dead_valid = traffic.ids & self.dead_letters.keys()
        assert not dead_valid, (
            f"valid requests dead-lettered: {[self.dead_letters[i] for i in dead_valid][:3]}"
        )
        return repeats


class JoinedRows:
    """Every joined row of the deployment, counted per (request id, model version), read from the
    start (read_committed, librdkafka's default)."""

    def __init__(self, settings: RigSettings) -> None:
        self.rows: Counter[tuple[str, str]] = Counter()
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        codec = Codec(JoinedOutcome)
        consumer = Consumer(
            {
                **self._settings.kafka_client_config(),
                "group.id": f"faults-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self._settings.topic("joined")])
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1_000, timeout=0.2):
                    if not message.error():
                        row = accepted(codec.decode(message.value()))
                        self.rows[(row.request_id, row.model_version)] += 1
        finally:
            consumer.close()

    def start(self) -> JoinedRows:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, expected: dict[str, set[str]], timeout_s: float) -> set[str]:
        """Wait until every request id has a joined row for each model that scored it; returns the
        ids still short of one."""
        deadline = time.monotonic() + timeout_s
        while True:
            short = {i for i, models in expected.items() if any((i, m) not in self.rows for m in models)}
            if not short or time.monotonic() >= deadline:
                return short
            time.sleep(0.5)


def readiness(port: int) -> tuple[int, dict[str, object]]:
    """The worker's /readyz status code and body (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except OSError:
        return 0, {}


class ReadinessWatch:
    """Polls a worker's /readyz in a thread and keeps every distinct answer in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.codes: list[int] = []
        self.reasons: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            code, body = readiness(self.port)
            if not self.codes or self.codes[-1] != code:
                self.codes.append(code)
            reasons = body.get("reasons", [])
            assert isinstance(reasons, list), f"/readyz reasons are a list, not {reasons!r}"
            self.reasons += [r for r in reasons if r not in self.reasons]
            time.sleep(0.25)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while readiness(port)[0] != 200:
        assert process.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"worker on port {port} not ready: {readiness(port)}"
        time.sleep(0.25)


def pause(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.shutdown(save=False)
