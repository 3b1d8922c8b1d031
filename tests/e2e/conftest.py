"""A whole deployment for end-to-end tests: Feast store, trained models, routing, worker processes."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rig.config import RigSettings
from rig.routing.control import publish_control
from rig.wire.codec import Codec, Rejected
from rig.wire.records import ControlEvent, Record
from sim.deploy import prepare, start_worker, stop_processes
from sim.settings import WorldSettings
from sim.world import World
from tests.integration.conftest import isolated_feast_settings

R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Deployment:
    """A deployed rig: its settings, world, model versions by role name, and running workers."""

    settings: RigSettings
    world_settings: WorldSettings
    world: World
    versions: dict[str, str]
    processes: tuple[subprocess.Popen[bytes], ...] = ()


def deploy(
    root: Path, models: dict[str, str], world: WorldSettings, rounds: int = 40, **settings: Any
) -> Deployment:
    """A deployment on its own Feast project and topic prefix: one trained model per name → feature set."""
    rig_settings = isolated_feast_settings(root, topic_prefix=f"e2e.{uuid.uuid4().hex[:8]}.", **settings)
    built, versions = prepare(rig_settings, models, world, n_events=6_000, rounds=rounds)
    return Deployment(settings=rig_settings, world_settings=world, world=built, versions=versions)


def route(deployment: Deployment, *events: ControlEvent) -> None:
    """Publish control events for this deployment."""
    for event in events:
        publish_control(deployment.settings, event)


@contextmanager
def workers(deployment: Deployment, count: int = 1, **env: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `count` worker processes; on exit stop them and print the tail of their logs."""
    logs = [deployment.settings.home / f"worker-{i}.log" for i in range(count)]
    processes = [start_worker(deployment.settings, log, **env) for log in logs]
    try:
        yield processes
    finally:
        stop_processes(processes)
        for log in logs:
            print(f"----- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")


def consume(
    settings: RigSettings,
    topic: str,
    record_type: type[R],
    expected: int,
    timeout_s: float = 120,
    where: Callable[[R], bool] | None = None,
    processes: Sequence[subprocess.Popen[bytes]] = (),
) -> list[R]:
    """Read `expected` records (those `where` accepts) from the start of `topic`, or what came in time."""
    from confluent_kafka import Consumer

    codec = Codec(record_type, registry_url=settings.schema_registry_url)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"e2e-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[R] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            dead = [p.args for p in processes if p.poll() is not None]
            assert not dead, f"worker process(es) exited: {dead}"
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                decoded = codec.decode(message.value())
                assert not isinstance(decoded, Rejected), decoded.reason
                if where is None or where(decoded):
                    records.append(decoded)
    finally:
        consumer.close()
    return records


def get_json(url: str) -> Any:
    """GET a JSON document."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def worker_group_members(settings: RigSettings) -> list[list[int]]:
    """Requests-topic partitions held by each member of the workers' predict consumer group."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    group = settings.consumer_group("predict")
    description = admin.describe_consumer_groups([group])[group].result()
    return [
        [tp.partition for tp in member.assignment.topic_partitions if tp.topic == settings.topic("requests")]
        for member in description.members
    ]


def eventually(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Call `probe` every second until it returns something truthy (connection errors count as not
    yet: a worker's web server may still be starting); return that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
