"""The `rig` command. Heavy libraries (feast, xgboost, kafka) are imported inside the commands that
need them, so `rig --help` answers at once."""

from __future__ import annotations

from typing import Annotated

import typer

from rig.config import RigSettings

app = typer.Typer(
    help="Prediction rig: streaming predictions with Kafka, Faust, Feast and XGBoost.", no_args_is_help=True
)
cache_app = typer.Typer(help="The prediction cache (in-process LRU + Redis).", no_args_is_help=True)
experiment_app = typer.Typer(
    help="Experiments: shadow or A/B challengers of the golden model.", no_args_is_help=True
)
features_app = typer.Typer(
    help="Feast feature store: apply definitions, materialize into Redis.", no_args_is_help=True
)
topics_app = typer.Typer(help="Kafka topics of the rig.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(topics_app, name="topics")
app.add_typer(experiment_app, name="experiment")
app.add_typer(cache_app, name="cache")


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
    # New feature values: cached predictions of the old ones must not be served.
    from rig.control import publish_control
    from rig.errors import RigError
    from rig.routing import purge_cache_event

    try:
        publish_control(config, purge_cache_event("cli", "features materialized"))
    except RigError as error:
        typer.secho(
            f"warning: cache purge not published ({error}); run `rig cache purge`", fg="yellow", err=True
        )


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
    from rig.routing import set_golden_event, start_experiment_event
    from rig.train import train_and_register, training_frame

    if role not in ("golden", "shadow", "ab", "none"):
        raise typer.BadParameter("role must be golden, shadow, ab or none", param_hint="--role")
    config = settings()
    world = make_world(config.world_seed, config.world_entities, config.world_days)
    frame = training_frame(world, FeatureStoreClient(config).historical, events, seed=seed)
    report = train_and_register(config, frame, feature_set=feature_set, name=name, seed=seed)
    version = report.meta.version
    if role == "golden":
        publish(config, set_golden_event(version, actor="cli", reason="rig train --role golden"))
    elif role in ("shadow", "ab"):
        publish(
            config,
            start_experiment_event(
                experiment or version,
                version,
                role,
                actor="cli",
                reason="rig train",
                traffic_share=share if role == "ab" else None,
            ),
        )
    typer.echo(
        f"trained {report.meta.version} on {report.n_train} rows ({feature_set}): "
        f"held-out AUC {report.auc:.3f}, log loss {report.log_loss:.4f}, "
        f"sha256 {report.meta.sha256[:12]}…, role {role}"
    )


def publish(config: RigSettings, event: dict) -> None:
    """Publish a control event after checking it against the current routing; exit 1 if refused."""
    from rig.control import publish_control, read_routing
    from rig.errors import RigError

    try:
        publish_control(config, event, check_against=read_routing(config))
    except RigError as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"published {event['kind']} to {config.topic('control')}")


@cache_app.command("purge")
def cache_purge(
    model: Annotated[str | None, typer.Option(help="Only this model version's entries.")] = None,
    entity: Annotated[
        str | None, typer.Option(help="Only this entity's entries (e.g. its features changed).")
    ] = None,
) -> None:
    """Purge cached predictions on every worker (all, one model version's, or one entity's)."""
    from rig.routing import purge_cache_event

    if model and entity:
        raise typer.BadParameter("give --model or --entity, not both")
    what = f"model {model}" if model else f"entity {entity}" if entity else "everything"
    publish(settings(), purge_cache_event("cli", f"rig cache purge: {what}", version=model, entity_id=entity))


@app.command()
def models() -> None:
    """List stored model versions and their roles (from the control topic)."""
    from rich.console import Console
    from rich.table import Table

    from rig.control import read_routing
    from rig.registry import ModelRegistry

    config = settings()
    table_of = read_routing(config)
    experiments = {e.model_version: e for e in table_of.experiments}
    table = Table("version", "role", "feature set", "AUC", "transform", "sha256", "created")
    for meta in ModelRegistry(config.model_dir).versions():
        role = "-"
        if meta.version == table_of.golden:
            role = "golden"
        elif meta.version in experiments:
            e = experiments[meta.version]
            state = "killed" if e.killed else ("held" if e.held_because else "live")
            role = f"{e.mode}:{e.name} ({state})" + (f" {e.traffic_share:.0%}" if e.mode == "ab" else "")
        auc = meta.metrics.get("auc")
        table.add_row(
            meta.version,
            role,
            str(meta.training.get("feature_set", "")),
            f"{auc:.3f}" if auc else "",
            meta.transform_version,
            meta.sha256[:12],
            meta.created_at[:19],
        )
    Console().print(table)


@experiment_app.command("start")
def experiment_start(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    model: Annotated[str, typer.Option(help="Model version to score.")],
    mode: Annotated[
        str, typer.Option(help="shadow (records only) or ab (answers a share of entities).")
    ] = "shadow",
    share: Annotated[float, typer.Option(help="Share of entities an A/B experiment answers.")] = 0.1,
    cap_rps: Annotated[
        float | None, typer.Option(help="Most requests per second the experiment scores.")
    ] = None,
) -> None:
    """Start (or reconfigure) an experiment; every worker applies it within seconds."""
    from rig.registry import ModelRegistry
    from rig.routing import start_experiment_event

    config = settings()
    ModelRegistry(config.model_dir).meta(model)  # unknown versions are refused before publishing
    if mode not in ("shadow", "ab"):
        raise typer.BadParameter("mode must be shadow or ab", param_hint="--mode")
    event = start_experiment_event(
        name,
        model,
        mode,
        actor="cli",
        reason="rig experiment start",  # type: ignore[arg-type]
        traffic_share=share if mode == "ab" else None,
        traffic_cap_rps=cap_rps,
    )
    publish(config, event)


@experiment_app.command("stop")
def experiment_stop(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """Stop an experiment."""
    from rig.routing import stop_experiment_event

    publish(settings(), stop_experiment_event(name, actor="cli", reason="rig experiment stop"))


@experiment_app.command("kill")
def experiment_kill(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """Kill switch: the experiment stays listed but scores nothing."""
    from rig.control import read_routing
    from rig.routing import kill_experiment_event

    config = settings()
    route = read_routing(config).experiment(name)
    if route is None:
        raise typer.BadParameter(f"no experiment named {name!r}")
    publish(config, kill_experiment_event(route, actor="cli", reason="rig experiment kill"))


@experiment_app.command("list")
def experiment_list() -> None:
    """Golden model and experiments as every worker sees them."""
    from rig.control import read_routing

    table = read_routing(settings())
    typer.echo(f"golden: {table.golden or '-'} (previous: {table.previous_golden or '-'})")
    for e in table.experiments:
        state = "killed" if e.killed else (f"held: {e.held_because}" if e.held_because else "live")
        share = f" share={e.traffic_share:.0%}" if e.mode == "ab" else ""
        cap = f" cap={e.traffic_cap_rps:g}/s" if e.traffic_cap_rps else ""
        typer.echo(f"{e.name}: {e.mode} {e.model_version}{share}{cap} [{state}]")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make golden.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual promotion",
) -> None:
    """Make a version golden by hand (recorded as a manual decision); the old golden stays a shadow."""
    from rig.control import read_routing
    from rig.promotion import control_events, manual_decision
    from rig.registry import ModelRegistry

    config = settings()
    ModelRegistry(config.model_dir).meta(version)  # unknown versions are refused before publishing
    routing = read_routing(config)
    if routing.golden is None:
        from rig.routing import set_golden_event

        publish(config, set_golden_event(version, actor="cli", reason=reason))
        return
    decision = manual_decision("promote", routing.golden, version, reason, now_ms())
    record_decision(config, decision, control_events(decision, routing))


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual rollback") -> None:
    """Roll the golden back to the previous golden (recorded as a manual decision)."""
    from rig.control import read_routing
    from rig.promotion import control_events, manual_decision

    config = settings()
    routing = read_routing(config)
    if routing.golden is None or routing.previous_golden is None:
        typer.secho("refused: there is no previous golden to roll back to", fg="red", err=True)
        raise typer.Exit(1)
    decision = manual_decision("demote", routing.golden, None, reason, now_ms())
    record_decision(config, decision, control_events(decision, routing))


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    import time

    return int(time.time() * 1000)


def record_decision(config: RigSettings, decision: dict, events: list[dict]) -> None:
    """Publish a decision to the decisions topic and the metadata store, then apply its events."""
    from confluent_kafka import Producer

    from rig.codec import Codec
    from rig.metadata import MetadataStore

    producer = Producer(config.kafka_client_config())
    producer.produce(
        config.topic("decisions"),
        key=decision["golden_version"].encode(),
        value=Codec("Decision", registry_url=config.schema_registry_url).encode(decision),
    )
    if producer.flush(30):
        typer.secho("refused: the decision was not acknowledged by Kafka", fg="red", err=True)
        raise typer.Exit(1)
    config.home.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(config.resolved_metadata_url)
    store.create_schema()
    store.record_decision(decision)
    for event in events:
        publish(config, event)
        store.record_control(event)
    typer.echo(f"recorded {decision['action']} {decision['decision_id']}: {decision['reason']}")


@app.command()
def status(limit: Annotated[int, typer.Option(help="How many recent decisions to show.")] = 10) -> None:
    """Routing as the workers see it, and the latest decisions with their evidence."""
    from rig.control import read_routing
    from rig.metadata import MetadataStore

    config = settings()
    routing = read_routing(config)
    typer.echo(f"golden: {routing.golden or '-'} (previous: {routing.previous_golden or '-'})")
    for e in routing.experiments:
        typer.echo(f"  {e.mode} {e.name}: {e.model_version}{' [killed]' if e.killed else ''}")
    store = MetadataStore(config.resolved_metadata_url)
    store.create_schema()
    typer.echo(f"latest decisions ({config.resolved_metadata_url.split('@')[-1]}):")
    for d in store.decisions(limit):
        typer.echo(
            f"  {d['action']:<7} {d['mode']:<7} golden={d['golden_version']} "
            f"challenger={d['challenger_version'] or '-'} n={d['n']} estimate={d['estimate']:.4g} "
            f"CI=[{d['ci_low']:.4g}, {d['ci_high']:.4g}] p={d['p_value']}"
        )
        typer.echo(f"          {d['reason']}")


@app.command()
def worker(
    web_port: Annotated[int, typer.Option(help="Web port (metrics, health); 0 disables it.")] = 6066,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug.")] = "info",
) -> None:
    """Run a stream-processing worker (Faust). Start N of them; Kafka partitions spread the load."""
    import os
    import sys

    os.environ["RIG_WEB_PORT"] = str(web_port)
    from streams.worker import main

    web = ["--without-web"] if web_port == 0 else ["--web-port", str(web_port), "--web-bind", "127.0.0.1"]
    sys.argv = ["rig-worker", "worker", "--loglevel", loglevel, *web]
    main()


@app.command()
def produce(
    count: Annotated[int, typer.Option(help="Synthetic requests to send.")] = 1000,
    rate: Annotated[float, typer.Option(help="Requests per second; 0 sends as fast as possible.")] = 0,
    file: Annotated[
        str | None, typer.Option(help="Send requests from a .jsonl, .csv or .parquet file.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic requests.")] = 0,
) -> None:
    """Produce prediction requests to the requests topic."""
    from pathlib import Path

    from rig.clients import file_requests, produce_requests, synthetic_requests

    config = settings()
    requests = file_requests(Path(file)) if file else synthetic_requests(config, count, seed)
    sent = produce_requests(config, requests, rate or None, on_progress=lambda n: typer.echo(f"  {n} sent"))
    typer.echo(f"{sent} request(s) acknowledged on {config.topic('requests')}")


@app.command()
def tail(
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest prediction.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
) -> None:
    """Pretty-print predictions as they arrive."""
    from rig.clients import tail_predictions

    for p in tail_predictions(settings(), from_beginning, limit):
        experiments = " ".join(f"{e['experiment']}={e['score']:.3f}" for e in p["experiments"])
        typer.echo(
            f"{p['request_id'][:8]} {p['entity_id']} score={p['score']:.4f} by {p['answered_by']} "
            f"golden={p['golden']['score']:.4f} {experiments} found={p['entity_found']} "
            f"{p['timings_ms'].get('total', 0):.1f}ms"
        )


@app.command()
def batch(
    input: Annotated[str, typer.Argument(help="Parquet or CSV with entity_id and event_timestamp columns.")],
    output: Annotated[str, typer.Argument(help="Parquet file to write.")],
    model: Annotated[
        list[str] | None, typer.Option(help="Model version(s) to score; default: every stored one.")
    ] = None,
) -> None:
    """Batch prediction over the Feast offline store, with the same transform and models as online."""
    from pathlib import Path

    from rig.batch import run_batch
    from rig.control import read_routing

    config = settings()
    golden = read_routing(config).golden
    summary = run_batch(config, Path(input), Path(output), model or None, progress=True, golden=golden)
    typer.echo(
        f"{summary.rows:,} rows scored in {summary.seconds:.1f} s ({summary.rejected:,} rejected) "
        f"→ {summary.output_path}"
    )


@app.command()
def demo() -> None:
    """Run what exists of the pipeline end to end on the synthetic world and print a summary."""
    from rig.demo import run_demo

    run_demo(settings())


if __name__ == "__main__":
    app()
