"""`make demo`: the rig end to end on the synthetic world, with a printed summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from rig.config import RigSettings

console = Console()


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then how long it took."""
    console.print(f"[bold cyan]▶ {title}[/]")
    started = time.perf_counter()
    yield
    console.print(f"  [dim]done in {time.perf_counter() - started:.1f} s[/]")


def run_demo(settings: RigSettings, steps: tuple[Callable[[RigSettings], None], ...] = ()) -> None:
    """Topics, feature store, training and registration, then whatever streaming steps exist."""
    from rig.data import FEATURE_SETS
    from rig.features import FeatureStoreClient, prepare_world
    from rig.registry import ModelRegistry
    from rig.topics import ensure_topics
    from rig.train import load_transform_spec, split_by_time, train_and_register, training_frame
    from rig.transform import fit

    with step(f"Kafka topics on {settings.kafka_bootstrap}"):
        created = ensure_topics(settings)
        console.print(f"  created {len(created)} topic(s) with prefix {settings.topic_prefix!r}")

    client = FeatureStoreClient(settings)
    with step(f"Synthetic world → Feast offline store ({settings.world_entities} entities)"):
        world = prepare_world(settings)
        client.apply()
    with step("Materialize features into Redis"):
        client.materialize(world.start, world.end, progress=True)

    with step("Point-in-time training data from Feast historical retrieval"):
        frame = training_frame(world, client.historical, n_events=20_000, seed=settings.world_seed)
        console.print(f"  {len(frame)} labelled events, label rate {frame['label'].mean():.3f}")

    registry = ModelRegistry(settings.model_dir)
    reports = {}
    with step("Train golden and challengers (XGBoost, stored as UBJ + SHA-256)"):
        transform = fit(load_transform_spec(settings), split_by_time(frame)[0])  # one for all models
        for feature_set in FEATURE_SETS:
            reports[feature_set] = report = train_and_register(
                settings, frame, feature_set=feature_set, transform=transform
            )
            console.print(
                f"  {report.meta.version:<10} {feature_set:<7} held-out AUC {report.auc:.3f}  "
                f"log loss {report.log_loss:.4f}"
            )
    registry.set_golden(reports["golden"].meta.version)
    registry.start_experiment("better", reports["better"].meta.version, "shadow")
    registry.start_experiment("worse", reports["worse"].meta.version, "shadow")

    with step("Online read of a few entities from Redis"):
        sample = client.online(world.latest()["entity_id"].head(3).tolist())
        console.print(sample.iloc[:, :5].to_string(index=False))

    for run in steps:
        run(settings)

    roles = registry.roles()
    console.print("[bold green]Summary[/]")
    console.print(f"  golden: {roles.golden}")
    for experiment in roles.experiments:
        console.print(f"  {experiment.mode} experiment {experiment.name}: {experiment.model_version}")
