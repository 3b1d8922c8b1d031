"""`rig-sim`: the synthetic world's side of the rig (write the world, train on it, send its traffic, demo).

`rig` commands serve any Feast repo and any model; these build the example world they are shown on.
World size and seed come from `RIG_WORLD_*` (see `sim.settings.WorldSettings`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from rig.config import RigSettings
from sim.settings import WorldSettings

app = typer.Typer(
    help="The synthetic world of the prediction rig: data, models, traffic, demo.", no_args_is_help=True
)


@app.command()
def world() -> None:
    """Write the synthetic world as the Feast repo's offline store (then: rig features apply, materialize)."""
    from sim.deploy import write_world

    config, world_settings = RigSettings(), WorldSettings()
    written = write_world(config, world_settings)
    typer.echo(f"wrote {written.n_entities} entities over {written.days} days to {config.feast_data_dir}")


@app.command()
def train(
    feature_set: Annotated[str, typer.Option(help="Feature set of sim.world.FEATURE_SETS.")] = "golden",
    name: Annotated[str, typer.Option(help="Model name; versions are numbered per name.")] = "risk",
    events: Annotated[int, typer.Option(help="Labelled events to train and test on.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the labelled events and of XGBoost.")] = 1,
    role: Annotated[str, typer.Option(help="golden, shadow, ab or none.")] = "none",
    experiment: Annotated[str, typer.Option(help="Experiment name when role is shadow or ab.")] = "",
    share: Annotated[float, typer.Option(help="Traffic share of an A/B experiment.")] = 0.1,
) -> None:
    """Train XGBoost on labelled events of the world (Feast historical features) and route it."""
    from rig.cli.app import check_role, record_checksum, route_new_model
    from rig.features.store import FeatureStoreClient
    from rig.models.train import train_and_register
    from sim.deploy import world_training_frame
    from sim.world import FEATURE_SETS

    check_role(role)
    if feature_set not in FEATURE_SETS:
        raise typer.BadParameter(f"one of {sorted(FEATURE_SETS)}", param_hint="--feature-set")
    config = RigSettings()
    client = FeatureStoreClient(config)
    frame = world_training_frame(WorldSettings().make(), client.historical, events, seed)
    report = train_and_register(
        config,
        frame,
        FEATURE_SETS[feature_set],
        name=name,
        seed=seed,
        training={"feature_set": feature_set},
        selection=client.selection(),
    )
    record_checksum(config, report.meta)
    route_new_model(config, report.meta.version, role, experiment, share)
    typer.echo(
        f"trained {report.meta.version} on {report.n_train} rows ({feature_set}): "
        f"held-out AUC {report.auc:.3f}, log loss {report.log_loss:.4f}, "
        f"sha256 {report.meta.sha256[:12]}…, role {role}"
    )


@app.command()
def produce(
    count: Annotated[int, typer.Option(help="Synthetic requests to send.")] = 1000,
    rate: Annotated[float, typer.Option(help="Requests per second; 0 sends as fast as possible.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic requests.")] = 0,
) -> None:
    """Produce requests of the world's entities to the requests topic."""
    from rig.cli.clients import produce_requests
    from rig.errors import NotAcknowledged
    from sim.traffic import synthetic_requests

    config = RigSettings()
    requests = synthetic_requests(WorldSettings(), count, seed)
    try:
        sent = produce_requests(
            config, requests, rate or None, on_progress=lambda n: typer.echo(f"  {n} sent")
        )
    except NotAcknowledged as error:
        typer.secho(f"failed: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"{sent} request(s) acknowledged on {config.topic('requests')}")


@app.command()
def demo() -> None:
    """The rig end to end on the synthetic world (`make demo`): predictions, then outcomes flow back and
    the promoter promotes the better challenger, with its evidence as a PNG; exit code 1 if a step fails."""
    from sim.demo import run_demo

    try:
        run_demo(RigSettings(), WorldSettings())
    except RuntimeError as error:  # the story did not happen: say what, without a traceback
        typer.echo(f"demo failed: {error}", err=True)
        raise typer.Exit(1) from error


if __name__ == "__main__":
    app()
