"""A whole deployment for end-to-end tests: Feast store, trained models, routing, worker processes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from rig.config import RigSettings
from rig.models.registry import ModelRegistry
from rig.processes import stop_processes
from rig.routing.control import publish_control
from rig.routing.table import set_golden_event, start_experiment_event
from rig.transform.model_inputs import column_index
from rig.wire.codec import Codec
from rig.wire.records import ControlEvent, JoinedOutcome, Outcome, Prediction, Record, Request
from sim.deploy import prepare, start_worker
from sim.settings import WorldSettings
from sim.world import World, outcome_records
from tests.integration.conftest import isolated_feast_settings
from tests.support.records import accepted

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


def offline_scores(deployment: Deployment, version: str, entity_ids: list[str]) -> np.ndarray:
    """Model `version`'s predictions of the entities' latest features, computed without the streaming
    path (the online store holds each entity's latest snapshot)."""
    registry = ModelRegistry(deployment.settings.model_dir)
    meta = registry.meta(version)
    transform = registry.load_transform(meta.transform_version)
    latest = deployment.world.latest().set_index("entity_id").loc[entity_ids].reset_index()
    result = transform.transform(latest)
    assert result.row_ok.all()
    x = result.values[:, column_index(result.columns, meta.features)]
    return registry.load(meta.version).inplace_predict(x)


def route(deployment: Deployment, *events: ControlEvent) -> None:
    """Publish control events for this deployment."""
    for event in events:
        publish_control(deployment.settings, event)


def deploy_with_shadow(root: Path, shadow: str, world: WorldSettings, rounds: int = 40) -> Deployment:
    """A deployment of a golden model and a challenger trained on feature set `shadow`, routed: the
    golden, and the challenger as the shadow experiment `shadow`."""
    deployment = deploy(root, {"golden": "golden", shadow: shadow}, world, rounds=rounds)
    versions = deployment.versions
    route(
        deployment,
        set_golden_event(versions["golden"], actor="test"),
        start_experiment_event(shadow, versions[shadow], "shadow", actor="test"),
    )
    return deployment


@contextmanager
def workers(
    deployment: Deployment,
    count: int = 1,
    web_ports: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `count` worker processes (worker i with a web server on `web_ports[i]`, if given); on exit
    stop them and print the tail of their logs."""
    logs = [deployment.settings.home / f"worker-{i}.log" for i in range(count)]
    ports = [*web_ports, *[0] * count][:count]
    processes = [
        start_worker(deployment.settings, log, web_port=port, env=env)
        for log, port in zip(logs, ports, strict=True)
    ]
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
                decoded = accepted(codec.decode(message.value()))
                if where is None or where(decoded):
                    records.append(decoded)
    finally:
        consumer.close()
    return records


def send_requests(settings: RigSettings, frame: pd.DataFrame) -> set[str]:
    """Produce the synthetic world's requests (`make_requests`), keyed by entity; returns their ids."""
    codec = Codec(Request)
    producer = Producer(settings.kafka_producer_config())
    for row in frame.itertuples():
        event_time = int(row.event_time.timestamp() * 1000)
        request = Request(request_id=row.request_id, entity_id=row.entity_id, event_time=event_time)
        producer.produce(settings.topic("requests"), key=row.entity_id.encode(), value=codec.encode(request))
    assert producer.flush(30) == 0
    return set(frame["request_id"])


def send_outcomes(settings: RigSettings, outcomes: pd.DataFrame) -> None:
    """Produce the synthetic world's outcomes (`make_outcomes`), keyed by entity."""
    codec = Codec(Outcome)
    producer = Producer(settings.kafka_producer_config())
    for outcome in outcome_records(outcomes):
        key = outcome.entity_id.encode()
        producer.produce(settings.topic("outcomes"), key=key, value=codec.encode(outcome))
    assert producer.flush(30) == 0


def predictions_of(deployment: Deployment, ids: set[str]) -> list[Prediction]:
    """The predictions of every request in `ids` (asserted complete)."""
    predictions = consume(
        deployment.settings,
        deployment.settings.topic("predictions"),
        Prediction,
        len(ids),
        where=lambda p: p.request_id in ids,
        processes=deployment.processes,
        timeout_s=600,
    )
    assert len(predictions) == len(ids)
    return predictions


def wait_joined(deployment: Deployment, ids: set[str], scored: int) -> None:
    """Wait until the join published `scored` (request, model) rows of the requests in `ids`."""
    joined = consume(
        deployment.settings,
        deployment.settings.topic("joined"),
        JoinedOutcome,
        scored,
        where=lambda row: row.request_id in ids,
        processes=deployment.processes,
        timeout_s=600,
    )
    assert len(joined) >= scored, f"{len(joined)} of {scored} (request, model) pairs joined"


def get_json(url: str) -> Any:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""A worker's metric samples by (name, labels)."""


def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    """Every sample of the worker's `/metrics` by (name, labels), and each family's type."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return samples, {f.name: f.type for f in families}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when the worker exports none with these labels)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


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
