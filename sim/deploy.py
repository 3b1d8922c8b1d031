"""Stand up a deployment of the synthetic world: topics, Feast store, trained models, worker processes.

Shared by `make demo`, the end-to-end tests and the benchmarks, so all three run the same thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rig.config import RigSettings
from sim.settings import WorldSettings
from sim.world import World, labelled_events, write_offline_store

if TYPE_CHECKING:
    import pandas as pd

ENV_FIELDS = (
    "topic_prefix",
    "home",
    "feast_repo",
    "kafka_bootstrap",
    "redis_url",
    "missing_entity_policy",
    "schema_registry_url",
    "batch_max",
)


FEAST_REPO = Path(__file__).resolve().parents[1] / "examples" / "synthetic_world"

WORKER_GROUPS: dict[str, tuple[str, ...]] = {
    "predict": ("requests",),
    "join": ("predictions", "outcomes", "join-reroute"),
    "promote": ("joined",),
    "explainer": ("explain",),
}
"""The topics each consumer group of a worker reads (`RigSettings.consumer_group(role)`)."""


def isolated_feast_repo(root: Path, project_prefix: str) -> Path:
    """A copy of examples/synthetic_world under `root` with its own Feast project name, so that runs
    sharing one Redis (tests, benchmarks) never see each other's keys. Returns the copy's path."""
    import shutil
    import uuid

    import yaml

    repo = root / "repo"
    shutil.copytree(FEAST_REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["project"] = f"{project_prefix}_{uuid.uuid4().hex[:10]}"
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return repo


def write_world(settings: RigSettings, world_settings: WorldSettings) -> World:
    """Make the synthetic world and write its snapshots as the Feast repo's offline store."""
    world = world_settings.make()
    write_offline_store(world, settings.feast_data_dir)
    return world


def world_training_frame(
    world: World,
    historical: Callable[[pd.DataFrame], pd.DataFrame],
    n_events: int,
    seed: int,
    drift_at: datetime | None = None,
) -> pd.DataFrame:
    """Labelled events of the world joined point-in-time to their Feast features, in time order."""
    from rig.models.train import training_frame

    return training_frame(labelled_events(world, n_events, seed=seed, drift_at=drift_at), historical)


def prepare(
    settings: RigSettings,
    models: Mapping[str, str],
    world_settings: WorldSettings | None = None,
    n_events: int = 20_000,
    rounds: int = 150,
    on_step: Callable[[str], None] = lambda _: None,
) -> tuple[World, dict[str, str]]:
    """Create topics, write and materialize the world, and train one model per name → feature set
    (of `sim.world.FEATURE_SETS`).

    All models share one transform, fitted on the training part of the same Feast historical read.

    Returns:
        The world, and the model version trained for each name.
    """
    from rig.cli.app import record_checksum
    from rig.features.store import FeatureStoreClient
    from rig.models.train import load_transform_spec, split_by_time, train_and_register
    from rig.transform.fitted import fit
    from rig.wire.topics import ensure_topics
    from sim.world import FEATURE_SETS

    world_settings = world_settings or WorldSettings()
    on_step("topics")
    ensure_topics(settings)
    on_step("feast apply")
    world = write_world(settings, world_settings)
    client = FeatureStoreClient(settings)
    client.apply()
    on_step("feast materialize")
    client.materialize(world.start, world.end, progress=False)
    on_step("training data (Feast historical retrieval)")
    frame = world_training_frame(world, client.historical, n_events=n_events, seed=world_settings.seed)
    transform = fit(load_transform_spec(settings), split_by_time(frame)[0])
    versions = {}
    for seed, (name, feature_set) in enumerate(models.items()):
        on_step(f"train {name} ({feature_set})")
        report = train_and_register(
            settings,
            frame,
            FEATURE_SETS[feature_set],
            rounds=rounds,
            seed=seed,
            transform=transform,
            training={"feature_set": feature_set},
            selection=client.selection(),
        )
        record_checksum(settings, report.meta)
        versions[name] = report.meta.version
    return world, versions


def clear_routing(settings: RigSettings, actor: str) -> None:
    """Leave no golden and no experiment on the control topic: stop every experiment and delete
    (tombstone) the key of every golden in the history, so routing is what is published next and
    the promoter has no golden of an earlier run to roll back to.

    Raises:
        RigError: the broker did not acknowledge a stop event or the tombstones.
    """
    from rig.routing.control import forget_goldens, publish_control, read_routing
    from rig.routing.table import stop_experiment_event

    routing = read_routing(settings)
    for route in routing.experiments:
        publish_control(settings, stop_experiment_event(route.name, actor, reason="routing cleared"))
    forget_goldens(settings, routing.golden_history)


def skip_backlog(settings: RigSettings, timeout_s: float = 30) -> None:
    """Move every worker consumer group to the end of its topics, so that a worker started next reads
    only what is sent from then on: whatever an earlier run left unread would be answered (and timed)
    first.

    Raises:
        RuntimeError: a group has members (a worker on these topics is running), or the cluster
            refused the new offsets.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    # log_level 4 (warnings): its info-level notice on teardown (BGQUEUE "Purging 1 unserved events")
    # would print into the demo's story
    admin = AdminClient({**settings.kafka_client_config(), "log_level": 4})
    topics = admin.list_topics(timeout=timeout_s).topics
    for role, names in WORKER_GROUPS.items():
        partitions = [
            TopicPartition(settings.topic(name), partition)
            for name in names
            for partition in topics[settings.topic(name)].partitions
        ]
        ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout_s)
        group = settings.consumer_group(role)
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(tp.topic, tp.partition, end.result().offset) for tp, end in ends.items()]
        )
        try:
            altered = admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)[group].result()
        except KafkaException as error:
            raise RuntimeError(f"consumer group {group} not moved (is a worker running?): {error}") from error
        refused = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in altered.topic_partitions if tp.error]
        if refused:
            raise RuntimeError(f"consumer group {group} not moved: {refused}")


def settings_env(settings: RigSettings, **extra: str) -> dict[str, str]:
    """Environment for a child process that must see the same settings (`RIG_*` variables)."""
    env = dict(os.environ)
    for name in ENV_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            env[f"RIG_{name.upper()}"] = str(value)
    return {**env, **extra}


def start_worker(
    settings: RigSettings,
    log_path: Path,
    log_level: str = "WARNING",
    web_port: int = 0,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a worker (`rig-worker`) as a child process logging to `log_path` (web server only with
    a port; `env`: more variables, RIG_* settings over those of `settings`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "streams"],
        env=settings_env(settings, RIG_WEB_PORT=str(web_port), RIG_LOG_LEVEL=log_level, **(env or {})),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
