"""A whole deployment for end-to-end tests: Feast store, trained models, routing, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig.codec import Codec, Rejected
from rig.config import RigSettings
from rig.control import publish_control
from rig.data import World
from rig.features import FeatureStoreClient, prepare_world
from rig.topics import ensure_topics
from rig.train import load_transform_spec, split_by_time, train_and_register, training_frame
from rig.transform import fit
from tests.conftest import REPO
from tests.integration.conftest import isolated_feast_settings


@dataclass(frozen=True)
class Deployment:
    """A deployed rig: its settings, world, and model versions by role name."""

    settings: RigSettings
    world: World
    versions: dict[str, str]
    processes: tuple[subprocess.Popen[bytes], ...] = ()

    def env(self, **extra: str) -> dict[str, str]:
        """Environment that points a `rig` process at this deployment."""
        s = self.settings
        values = {
            "RIG_TOPIC_PREFIX": s.topic_prefix,
            "RIG_HOME": str(s.home),
            "RIG_FEAST_REPO": str(s.feast_repo),
            "RIG_WORLD_SEED": str(s.world_seed),
            "RIG_WORLD_ENTITIES": str(s.world_entities),
            "RIG_WORLD_DAYS": str(s.world_days),
            "RIG_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "RIG_REDIS_URL": s.redis_url,
            "RIG_MISSING_ENTITY_POLICY": s.missing_entity_policy,
            **extra,
        }
        return {**os.environ, **values}


def deploy(root: Path, models: dict[str, str], rounds: int = 40, **world: Any) -> Deployment:
    """Topics, world, Feast apply + materialize, and one trained model per name → feature set."""
    settings = isolated_feast_settings(root, topic_prefix=f"e2e.{uuid.uuid4().hex[:8]}.", **world)
    ensure_topics(settings)
    world_ = prepare_world(settings)
    client = FeatureStoreClient(settings)
    client.apply()
    client.materialize(world_.start, world_.end, progress=False)
    frame = training_frame(world_, client.historical, n_events=6_000, seed=1)
    transform = fit(load_transform_spec(settings), split_by_time(frame)[0])
    versions = {}
    for seed, (name, feature_set) in enumerate(models.items()):
        report = train_and_register(
            settings, frame, feature_set=feature_set, rounds=rounds, seed=seed, transform=transform
        )
        versions[name] = report.meta.version
    return Deployment(settings=settings, world=world_, versions=versions)


def route(deployment: Deployment, *events: dict[str, Any]) -> None:
    """Publish control events for this deployment."""
    for event in events:
        publish_control(deployment.settings, event)


@contextmanager
def workers(deployment: Deployment, count: int = 1, **env: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `count` worker processes; on exit stop them and show their logs if a test failed."""
    logs = [deployment.settings.home / f"worker-{i}.log" for i in range(count)]
    deployment.settings.home.mkdir(parents=True, exist_ok=True)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "rig.cli", "worker", "--web-port", "0", "--loglevel", "warn"],
            cwd=REPO,
            env=deployment.env(**env),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            print(f"----- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")


def consume(
    settings: RigSettings,
    topic: str,
    schema: str,
    expected: int,
    timeout_s: float = 120,
    where: Callable[[dict[str, Any]], bool] | None = None,
    processes: Sequence[subprocess.Popen[bytes]] = (),
) -> list[dict[str, Any]]:
    """Read `expected` records (those `where` accepts) from the start of `topic`, or what came in time."""
    from confluent_kafka import Consumer

    codec = Codec(schema, registry_url=settings.schema_registry_url)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"e2e-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
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
