"""The `rig` command. Heavy libraries (feast, xgboost, kafka) are imported inside the commands that
need them, so `rig --help` answers at once."""

from __future__ import annotations

from typing import Annotated

import typer

from rig.config import RigSettings

app = typer.Typer(
    help="Prediction rig: streaming predictions with Kafka, Faust, Feast and XGBoost.", no_args_is_help=True
)
features_app = typer.Typer(
    help="Feast feature store: apply definitions, materialize into Redis.", no_args_is_help=True
)
topics_app = typer.Typer(help="Kafka topics of the rig.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(topics_app, name="topics")


def settings() -> RigSettings:
    """Settings from the environment (RIG_*)."""
    return RigSettings()


@topics_app.command("create")
def topics_create() -> None:
    """Create every rig topic that does not exist yet (control is compacted)."""
    from rig.topics import ensure_topics

    config = settings()
    created = ensure_topics(config)
    typer.echo(f"created {len(created)} topic(s) on {config.kafka_bootstrap}: {', '.join(created) or '-'}")


@features_app.command("apply")
def features_apply() -> None:
    """Write the synthetic world to the offline store and register the feature repo."""
    from rig.features import FeatureStoreClient, prepare_world

    config = settings()
    world = prepare_world(config)
    FeatureStoreClient(config).apply()
    typer.echo(f"applied {config.feast_repo} with {world.n_entities} entities over {world.days} days")


@features_app.command("materialize")
def features_materialize() -> None:
    """Load the latest feature values of every entity into the Redis online store."""
    from rig.data import make_world
    from rig.features import FeatureStoreClient

    config = settings()
    world = make_world(config.world_seed, config.world_entities, config.world_days)
    FeatureStoreClient(config).materialize(world.start, world.end, progress=True)
    typer.echo(f"materialized {world.n_entities} entities into {config.redis_url}")


@app.command()
def train(
    feature_set: Annotated[str, typer.Option(help="Feature set of rig.data.FEATURE_SETS.")] = "golden",
    name: Annotated[str, typer.Option(help="Model name; versions are numbered per name.")] = "risk",
    events: Annotated[int, typer.Option(help="Labelled events to train and test on.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the labelled events and of XGBoost.")] = 1,
    role: Annotated[str, typer.Option(help="golden, shadow, ab or none.")] = "none",
    experiment: Annotated[str, typer.Option(help="Experiment name when role is shadow or ab.")] = "",
    share: Annotated[float, typer.Option(help="Traffic share of an A/B experiment.")] = 0.1,
) -> None:
    """Train XGBoost on point-in-time-correct Feast data and store it (UBJ + SHA-256)."""
    from rig.data import make_world
    from rig.features import FeatureStoreClient
    from rig.registry import ModelRegistry
    from rig.train import train_and_register, training_frame

    if role not in ("golden", "shadow", "ab", "none"):
        raise typer.BadParameter("role must be golden, shadow, ab or none", param_hint="--role")
    config = settings()
    world = make_world(config.world_seed, config.world_entities, config.world_days)
    frame = training_frame(world, FeatureStoreClient(config).historical, events, seed=seed)
    report = train_and_register(config, frame, feature_set=feature_set, name=name, seed=seed)
    registry = ModelRegistry(config.model_dir)
    if role == "golden":
        registry.set_golden(report.meta.version)
    elif role in ("shadow", "ab"):
        registry.start_experiment(experiment or report.meta.version, report.meta.version, role, share)  # type: ignore[arg-type]
    typer.echo(
        f"trained {report.meta.version} on {report.n_train} rows ({feature_set}): "
        f"held-out AUC {report.auc:.3f}, log loss {report.log_loss:.4f}, "
        f"sha256 {report.meta.sha256[:12]}…, role {role}"
    )


@app.command()
def models() -> None:
    """List stored model versions and their roles."""
    from rich.console import Console
    from rich.table import Table

    from rig.registry import ModelRegistry

    registry = ModelRegistry(settings().model_dir)
    roles = registry.roles()
    experiments = {e.model_version: e for e in roles.experiments}
    table = Table("version", "role", "feature set", "AUC", "sha256", "created")
    for meta in registry.versions():
        if meta.version == roles.golden:
            role = "golden"
        elif meta.version in experiments:
            e = experiments[meta.version]
            role = f"{e.mode}:{e.name}" + (f" {e.traffic_share:.0%}" if e.mode == "ab" else "")
        else:
            role = "-"
        auc = meta.metrics.get("auc")
        table.add_row(
            meta.version,
            role,
            str(meta.training.get("feature_set", "")),
            f"{auc:.3f}" if auc else "",
            meta.sha256[:12],
            meta.created_at[:19],
        )
    Console().print(table)


@app.command()
def demo() -> None:
    """Run what exists of the pipeline end to end on the synthetic world and print a summary."""
    from rig.demo import run_demo

    run_demo(settings())


if __name__ == "__main__":
    app()
