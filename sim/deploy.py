"""Stand up a deployment of the synthetic world: topics, Feast store, trained models, worker processes.

Shared by `make demo`, the end-to-end tests and the benchmarks, so all three run the same thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rig.config import RigSettings
from rig.data import World

ENV_FIELDS = (
    "topic_prefix",
    "home",
    "feast_repo",
    "world_seed",
    "world_entities",
    "world_days",
    "kafka_bootstrap",
    "redis_url",
    "missing_entity_policy",
    "schema_registry_url",
    "batch_max",
    "batch_within_s",
)


FEAST_REPO = Path(__file__).resolve().parents[1] / "ops" / "feast"


def isolated_feast_repo(root: Path, project_prefix: str) -> Path:
    """A copy of ops/feast under `root` with its own Feast project name, so that runs sharing one
    Redis (tests, benchmarks) never see each other's keys. Returns the copy's path."""
    import shutil
    import uuid

    import yaml

    repo = root / "repo"
    shutil.copytree(FEAST_REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["project"] = f"{project_prefix}_{uuid.uuid4().hex[:10]}"
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return repo


def prepare(
    settings: RigSettings,
    models: Mapping[str, str],
    n_events: int = 20_000,
    rounds: int = 150,
    on_step: Callable[[str], None] = lambda _: None,
) -> tuple[World, dict[str, str]]:
    """Create topics, write and materialize the world, and train one model per name → feature set.

    All models share one transform, fitted on the training part of the same Feast historical read.

    Returns:
        The world, and the model version trained for each name.
    """
    from rig.features import FeatureStoreClient, prepare_world
    from rig.topics import ensure_topics
    from rig.train import load_transform_spec, split_by_time, train_and_register, training_frame
    from rig.transform import fit

    on_step("topics")
    ensure_topics(settings)
    on_step("feast apply")
    world = prepare_world(settings)
    client = FeatureStoreClient(settings)
    client.apply()
    on_step("feast materialize")
    client.materialize(world.start, world.end, progress=False)
    on_step("training data (Feast historical retrieval)")
    frame = training_frame(world, client.historical, n_events=n_events, seed=settings.world_seed)
    transform = fit(load_transform_spec(settings), split_by_time(frame)[0])
    versions = {}
    for seed, (name, feature_set) in enumerate(models.items()):
        on_step(f"train {name} ({feature_set})")
        report = train_and_register(
            settings, frame, feature_set, rounds=rounds, seed=seed, transform=transform
        )
        versions[name] = report.meta.version
    return world, versions


def settings_env(settings: RigSettings, **extra: str) -> dict[str, str]:
    """Environment for a child process that must see the same settings (`RIG_*` variables)."""
    env = dict(os.environ)
    for name in ENV_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            env[f"RIG_{name.upper()}"] = str(value)
    return {**env, **extra}


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited after `grace_s`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def start_worker(
    settings: RigSettings, log_path: Path, loglevel: str = "warn", web_port: int = 0, **env: str
) -> subprocess.Popen[bytes]:
    """Start `rig worker` as a child process logging to `log_path` (web server only with a port)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "rig.cli", "worker", "--web-port", str(web_port), "--loglevel", loglevel],
        env=settings_env(settings, **env),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
