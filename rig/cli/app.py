"""The `rig` command. Heavy libraries (feast, xgboost, kafka) are imported inside the commands that
need them, so `rig --help` answers at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from rig.cli.dlq import dlq_app
from rig.cli.metadata import metadata_app
from rig.config import RigSettings, masked_url
from rig.features.feast_checks import skip_feast_type_checks

if TYPE_CHECKING:
    from rig.wire.requests import KeySpec

if TYPE_CHECKING:
    from rig.models.registry import ModelMeta
    from rig.wire.records import ControlEvent, Decision, ExperimentMode

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
app.add_typer(dlq_app, name="dlq")
app.add_typer(metadata_app, name="metadata")

# How a new model is routed, the same for `rig train` and `rig register`.
RoleOption = Annotated[str, typer.Option(help="golden, shadow, ab or none.")]
ExperimentOption = Annotated[str, typer.Option(help="Experiment name when role is shadow or ab.")]
ShareOption = Annotated[float, typer.Option(help="Traffic share of an A/B experiment.")]


def settings() -> RigSettings:
    """Settings from the environment (RIG_*)."""
    return RigSettings()


@app.callback()
def rig_command(context: typer.Context) -> None:
    """Every command but `rig features apply` reads Feast definitions that `feast apply` checked:
    Feast is imported without its run-time type checks (seconds less per command)."""
    if context.invoked_subcommand != "features":
        skip_feast_type_checks()


@features_app.callback()
def features_command(context: typer.Context) -> None:
    """`rig features apply` runs the user's definitions: Feast checks their types, as `feast apply` does."""
    if context.invoked_subcommand != "apply":
        skip_feast_type_checks()


@topics_app.command("create")
def topics_create() -> None:
    """Create every rig topic that does not exist yet (control is compacted)."""
    from rig.wire.topics import ensure_topics

    config = settings()
    created = ensure_topics(config)
    typer.echo(f"created {len(created)} topic(s) on {config.kafka_bootstrap}: {', '.join(created) or '-'}")


@features_app.command("apply")
def features_apply() -> None:
    """Register the feature repo's entities and feature views (`feast apply` with the rig's Redis)."""
    from rig.features.store import FeatureStoreClient

    config = settings()
    FeatureStoreClient(config).apply()
    typer.echo(f"applied {config.feast_repo}")


@features_app.command("materialize")
def features_materialize(
    start: Annotated[
        str, typer.Option(help="Earliest feature timestamp to load (ISO date or time, UTC).")
    ] = "1970-01-01",
    end: Annotated[str | None, typer.Option(help="Latest feature timestamp to load; default now.")] = None,
) -> None:
    """Load the latest feature values of every entity (from --start to --end) into the Redis online store."""
    from datetime import UTC, datetime

    from rig.features.store import FeatureStoreClient
    from rig.routing.table import purge_cache_event

    def moment(text: str) -> datetime:
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    config = settings()
    FeatureStoreClient(config).materialize(moment(start), moment(end) if end else datetime.now(UTC))
    typer.echo(f"materialized {config.feast_repo} into {masked_url(config.redis_url)}")
    # New feature values: cached predictions of the old ones must not be served.
    purge_cached(config, [purge_cache_event("cli", "features materialized")])


def purge_cached(config: RigSettings, events: list[ControlEvent]) -> None:
    """Publish cache purges after features changed; a warning (not a failure) when that cannot be
    done. Without a control topic no worker has run, so nothing is cached."""
    from rig.errors import RigError
    from rig.routing.control import publish_control
    from rig.wire.topics import topic_exists

    try:
        if not topic_exists(config, "control"):
            typer.echo(f"no {config.topic('control')} topic yet: nothing cached to purge")
            return
        for event in events:
            publish_control(config, event)
    except RigError as error:
        typer.secho(
            f"warning: cache purge not published ({error}); run `rig cache purge`", fg="yellow", err=True
        )
        return
    typer.echo(f"cache purged ({len(events)} control event(s))")


@features_app.command("push")
def features_push(
    source: Annotated[str, typer.Argument(help="Feast push source.")],
    file: Annotated[
        str, typer.Argument(help="Rows to push: Parquet, CSV or JSON lines, as the source's schema.")
    ],
) -> None:
    """Push fresh feature rows (online and offline), then purge the cached predictions of their entities."""
    from pathlib import Path

    from rig.cli.clients import read_table
    from rig.errors import RigError
    from rig.features.store import FeatureStoreClient
    from rig.routing.table import purge_cache_event

    config = settings()
    frame = read_table(Path(file))
    try:
        FeatureStoreClient(config).push(source, frame)
        keys = deployment_keys(config)
        entities = sorted({keys.entity_id(row) for row in frame[list(keys.names)].itertuples(index=False)})
    except (RigError, KeyError) as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    reason = f"pushed to {source}"
    events = (
        [purge_cache_event("cli", reason, entity_id=entity) for entity in entities]
        if len(entities) <= 100
        else [purge_cache_event("cli", f"{reason} ({len(entities)} entities)")]
    )
    typer.echo(f"pushed {len(frame)} row(s) of {len(entities)} entities to {source}")
    purge_cached(config, events)


@app.command()
def train(
    entities: Annotated[
        str,
        typer.Argument(
            help="Parquet or CSV of labelled events: the entity join key, event_timestamp, label."
        ),
    ],
    label: Annotated[str, typer.Option(help="Name of the label column (0/1).")] = "label",
    feature_service: Annotated[
        str | None, typer.Option(help="Feast feature service the model reads; default: the repo's.")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Comma-separated `view:feature` refs to read instead of a feature service."),
    ] = None,
    name: Annotated[str, typer.Option(help="Model name; versions are numbered per name.")] = "risk",
    seed: Annotated[int, typer.Option(help="Seed of XGBoost.")] = 1,
    role: RoleOption = "none",
    experiment: ExperimentOption = "",
    share: ShareOption = 0.1,
) -> None:
    """Train XGBoost on point-in-time-correct Feast data for labelled events, store it (UBJ + SHA-256)."""
    from pathlib import Path

    from rig.cli.clients import read_table
    from rig.errors import RigError
    from rig.features.store import FeatureStoreClient
    from rig.models.train import LABEL_COLUMN, train_and_register, training_frame

    check_role(role)
    config = settings()
    path = Path(entities)
    events = read_table(path).rename(columns={label: LABEL_COLUMN})
    client = FeatureStoreClient(config)
    refs = [f.strip() for f in features.split(",") if f.strip()] if features else None
    selection = client.selection(feature_service, refs)
    frame = training_frame(events, lambda entity_df: client.historical(entity_df, selection))
    report = train_and_register(
        config,
        frame,
        selection.columns,
        name=name,
        seed=seed,
        training={"events": path.name},
        selection=selection,
    )
    try:
        record_checksum(config, report.meta)
    except RigError as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    route_new_model(config, report.meta.version, role, experiment, share)
    typer.echo(
        f"trained {report.meta.version} on {report.n_train} rows: held-out AUC {report.auc:.3f}, "
        f"log loss {report.log_loss:.4f}, sha256 {report.meta.sha256[:12]}…, role {role}"
    )


def record_checksum(config: RigSettings, meta: ModelMeta) -> None:
    """Record a freshly stored model, with its checksum, in the metadata store: workers verify the
    file against that record on load. The checksum in `meta.json` only catches corruption, since
    whoever can rewrite the model file can rewrite the file beside it.

    When no metadata store is configured (`RIG_METADATA_URL` unset) and the default SQLite file cannot
    be created, a warning is printed and the model stays unrecorded (workers load it with a warning).

    Raises:
        MetadataError: the configured store cannot be reached, or it holds this version with another
            checksum (a model directory reused with an older store).
    """
    from contextlib import closing

    from rig.errors import MetadataError
    from rig.feedback.metadata import MetadataStore

    with closing(MetadataStore(config.resolved_metadata_url)) as store:
        try:
            store.create_schema()  # creates the default SQLite file (and its folder) if missing
        except (MetadataError, OSError) as error:
            if config.metadata_url is not None:
                raise MetadataError(f"cannot record model {meta.version}: {error}") from error
            typer.secho(
                f"warning: model {meta.version} is not recorded in the metadata store ({error}); "
                "workers will only check it against its meta.json",
                fg="yellow",
                err=True,
            )
            return
        store.record_model(meta)


def check_role(role: str) -> None:
    """Refuse a role other than golden, shadow, ab or none."""
    if role not in ("golden", "shadow", "ab", "none"):
        raise typer.BadParameter("role must be golden, shadow, ab or none", param_hint="--role")


def route_new_model(config: RigSettings, version: str, role: str, experiment: str, share: float) -> None:
    """Route a freshly trained version: as the golden, as a shadow or A/B experiment, or not at all."""
    from rig.routing.table import set_golden_event, start_experiment_event

    if role == "golden":
        publish(config, set_golden_event(version, actor="cli", reason="routed with --role golden"))
    elif role in ("shadow", "ab"):
        publish(
            config,
            start_experiment_event(
                experiment or version,
                version,
                role,  # type: ignore[arg-type]
                actor="cli",
                reason="routed with --role " + role,
                traffic_share=share if role == "ab" else None,
            ),
        )


def publish(config: RigSettings, event: ControlEvent) -> None:
    """Publish a control event after checking it against the current routing; exit 1 if refused.
    The rig's topics are created first when missing (a routing change is a deployment's first step)."""
    from rig.errors import RigError
    from rig.routing.control import publish_control, read_routing
    from rig.wire.topics import ensure_topics

    try:
        ensure_topics(config)
        publish_control(config, event, check_against=read_routing(config))
    except RigError as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"published {event.kind} to {config.topic('control')}")


@cache_app.command("purge")
def cache_purge(
    model: Annotated[str | None, typer.Option(help="Only this model version's entries.")] = None,
    entity: Annotated[
        str | None, typer.Option(help="Only this entity's entries (e.g. its features changed).")
    ] = None,
) -> None:
    """Purge cached predictions on every worker (all, one model version's, or one entity's)."""
    from rig.routing.table import purge_cache_event

    if model and entity:
        raise typer.BadParameter("give --model or --entity, not both")
    what = f"model {model}" if model else f"entity {entity}" if entity else "everything"
    publish(settings(), purge_cache_event("cli", f"rig cache purge: {what}", version=model, entity_id=entity))


@app.command()
def models() -> None:
    """List stored model versions and their roles (from the control topic)."""
    from rich.console import Console
    from rich.table import Table

    from rig.models.registry import ModelRegistry
    from rig.routing.control import read_routing

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
    from rig.models.registry import ModelRegistry
    from rig.routing.table import start_experiment_event

    config = settings()
    ModelRegistry(config.model_dir).meta(model)  # unknown versions are refused before publishing
    if mode not in ("shadow", "ab"):
        raise typer.BadParameter("mode must be shadow or ab", param_hint="--mode")
    experiment_mode: ExperimentMode = "ab" if mode == "ab" else "shadow"  # typer's option is a str
    event = start_experiment_event(
        name,
        model,
        experiment_mode,
        actor="cli",
        reason="rig experiment start",
        traffic_share=share if experiment_mode == "ab" else None,
        traffic_cap_rps=cap_rps,
    )
    publish(config, event)


@experiment_app.command("stop")
def experiment_stop(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """Stop an experiment."""
    from rig.routing.table import stop_experiment_event

    publish(settings(), stop_experiment_event(name, actor="cli", reason="rig experiment stop"))


@experiment_app.command("kill")
def experiment_kill(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """Kill switch: the experiment stays listed but scores nothing."""
    from rig.routing.control import read_routing
    from rig.routing.table import kill_experiment_event

    config = settings()
    route = read_routing(config).experiment(name)
    if route is None:
        raise typer.BadParameter(f"no experiment named {name!r}")
    publish(config, kill_experiment_event(route, actor="cli", reason="rig experiment kill"))


@experiment_app.command("list")
def experiment_list() -> None:
    """Golden model and experiments as every worker sees them."""
    from rig.routing.control import read_routing

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
    from rig.feedback.promotion import control_events, manual_decision
    from rig.models.registry import ModelRegistry
    from rig.routing.control import read_routing

    config = settings()
    ModelRegistry(config.model_dir).meta(version)  # unknown versions are refused before publishing
    routing = read_routing(config)
    if routing.golden is None:
        from rig.routing.table import set_golden_event

        publish(config, set_golden_event(version, actor="cli", reason=reason))
        return
    decision = manual_decision("promote", routing.golden, version, reason, now_ms())
    record_decision(config, decision, control_events(decision, routing))


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual rollback") -> None:
    """Roll the golden back to the previous golden (recorded as a manual decision)."""
    from rig.feedback.promotion import control_events, manual_decision
    from rig.routing.control import read_routing

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


def record_decision(config: RigSettings, decision: Decision, events: list[ControlEvent]) -> None:
    """Publish a decision to the decisions topic and the metadata store, then apply its events."""
    from confluent_kafka import Producer

    from rig.feedback.metadata import MetadataStore
    from rig.wire.codec import Codec
    from rig.wire.records import Decision

    producer = Producer(config.kafka_producer_config())
    producer.produce(
        config.topic("decisions"),
        key=decision.golden_version.encode(),
        value=Codec(Decision, registry_url=config.schema_registry_url).encode(decision),
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
    typer.echo(f"recorded {decision.action} {decision.decision_id}: {decision.reason}")


@app.command()
def status(limit: Annotated[int, typer.Option(help="How many recent decisions to show.")] = 10) -> None:
    """Routing as the workers see it, where every test of every challenger stands (primary test,
    guardrails, sample ratio; even with nothing decided), and the latest decisions with their evidence."""
    import time

    from rig.feedback.metadata import MetadataStore
    from rig.routing.control import read_routing
    from rig.wire.records import to_plain

    config = settings()
    routing = read_routing(config)
    typer.echo(f"golden: {routing.golden or '-'} (previous: {routing.previous_golden or '-'})")
    for e in routing.experiments:
        typer.echo(f"  {e.mode} {e.name}: {e.model_version}{' [killed]' if e.killed else ''}")
    store = MetadataStore(config.resolved_metadata_url)
    store.create_schema()
    recorded = store.promoter_status()
    if recorded is None:
        typer.echo("promoter: no status recorded yet")
    else:
        at_ms, state = recorded
        window = state.get("label_window_ms")
        window_text = "not known yet" if window is None else f"{window / 1000:.4g} s"
        age_s = time.time() - at_ms / 1000
        typer.echo(
            f"promoter ({age_s:.0f} s ago): golden {state.get('golden') or '-'}, "
            f"label window {window_text}, cohorts {state.get('cohorts')}"
        )
        if state.get("srm"):
            typer.echo(f"  A/B split: {state['srm']}")
        for version, entry in state.get("challengers", {}).items():
            typer.echo(f"  challenger {version}:")
            for check in entry.get("checks", []):
                typer.echo(f"    {_check_line(check)}")
    typer.echo(f"latest decisions ({masked_url(config.resolved_metadata_url)}):")
    for d in store.decisions(limit):
        typer.echo(
            f"  {d.action:<7} {d.mode:<7} golden={d.golden_version} "
            f"challenger={d.challenger_version or '-'} n={d.n} estimate={d.estimate:.4g} "
            f"CI=[{d.ci_low:.4g}, {d.ci_high:.4g}] p={d.p_value}"
        )
        typer.echo(f"          {d.reason}")
        for check in d.checks:
            typer.echo(f"          {_check_line(to_plain(check))}")


def _check_line(check: dict) -> str:
    """One test's state in a line: name, state, n, estimate, interval, bound, p-value, what it is."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    interval = f"[{number(check.get('ci_low'))}, {number(check.get('ci_high'))}]"
    return (
        f"{check['name']:<14} {check['state']:<10} n={check['n']} estimate={number(check.get('estimate'))} "
        f"CI={interval} bound={number(check.get('margin'))} p={number(check.get('p_value'))}  "
        f"{check.get('detail', '')}"
    )


@app.command()
def produce(
    file: Annotated[str, typer.Argument(help="Requests in a .jsonl, .csv or .parquet file.")],
    rate: Annotated[float, typer.Option(help="Requests per second; 0 sends as fast as possible.")] = 0,
) -> None:
    """Produce prediction requests from a file to the requests topic."""
    from pathlib import Path

    from rig.cli.clients import file_requests, produce_requests
    from rig.errors import RigError

    config = settings()
    try:
        keys = deployment_keys(config)
        sent = produce_requests(
            config,
            file_requests(Path(file), keys),
            rate or None,
            on_progress=lambda n: typer.echo(f"  {n} sent"),
            keys=keys,
        )
    except (RigError, OSError) as error:  # routing or file unreadable, a bad request, not acknowledged
        typer.secho(f"failed: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"{sent} request(s) acknowledged on {config.topic('requests')}")


@app.command()
def register(
    path: Annotated[
        str, typer.Argument(help="Model file written by save_model (UBJ or JSON; Booster or XGBClassifier).")
    ],
    name: Annotated[str, typer.Option(help="Model name; versions are numbered per name.")],
    feature_service: Annotated[
        str | None, typer.Option(help="Feast feature service the model reads; default: the repo's.")
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="Comma-separated `view:feature` refs instead of a feature service.")
    ] = None,
    transform: Annotated[
        str | None, typer.Option(help="Fitted transform JSON; default: the features as stored.")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="Parquet/CSV of training rows (join keys, event_timestamp): probe and reference."),
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="A metric of the model card, name=value (repeatable).")
    ] = None,
    training_window: Annotated[
        str, typer.Option(help="Data the model was trained on, e.g. 2025-01/2025-06.")
    ] = "",
    description: Annotated[str, typer.Option(help="What the model is, for the model card.")] = "",
    role: RoleOption = "none",
    experiment: ExperimentOption = "",
    share: ShareOption = 0.1,
) -> None:
    """Register an XGBoost model trained elsewhere: checked against its features, then stored."""
    from pathlib import Path

    from rig.cli.clients import read_table
    from rig.errors import RigError
    from rig.features.store import FeatureStoreClient
    from rig.models.register import ModelCard
    from rig.models.register import register as register_model
    from rig.transform.fitted import FittedTransform

    check_role(role)
    config = settings()
    try:
        card = ModelCard(_metrics(metric or []), training_window, description)
        client = FeatureStoreClient(config)
        refs = [f.strip() for f in features.split(",") if f.strip()] if features else None
        selection = client.selection(feature_service, refs)
        fitted = FittedTransform.from_json(Path(transform).read_text()) if transform else None
        rows = client.historical(read_table(Path(reference)), selection) if reference else None
        meta = register_model(config, Path(path), name, selection, card, fitted, rows)
        record_checksum(config, meta)
    except (RigError, OSError, ValueError) as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    route_new_model(config, meta.version, role, experiment, share)
    typer.echo(
        f"registered {meta.version}: {len(meta.features)} columns from "
        f"{selection.service or ', '.join(selection.refs)}, sha256 {meta.sha256[:12]}…, role {role}"
    )


def _metrics(pairs: list[str]) -> dict[str, float]:
    """`name=value` pairs as metrics."""
    metrics = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"a metric is name=value, got {pair!r}")
        metrics[name.strip()] = float(value)
    return metrics


@app.command()
def outcomes(
    file: Annotated[
        str,
        typer.Argument(
            help="JSON lines, CSV or Parquet: request_id, label (0/1), event_time, the entity's keys."
        ),
    ],
    rate: Annotated[float, typer.Option(help="Outcomes per second; 0 sends as fast as possible.")] = 0,
) -> None:
    """Send ground truth (outcomes of earlier requests) to the outcomes topic, keyed by entity."""
    from pathlib import Path

    from rig.cli.clients import file_outcomes, produce_outcomes
    from rig.errors import RigError

    config = settings()
    try:
        key_spec = deployment_keys(config)
        sent = produce_outcomes(config, file_outcomes(Path(file), key_spec), rate or None)
    except (RigError, OSError, ValueError, KeyError) as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"{sent} outcome(s) acknowledged on {config.topic('outcomes')}")


def deployment_keys(config: RigSettings) -> KeySpec:
    """The join keys requests and outcomes name their entity by: the golden model's (the repo's
    default when no golden is routed or it recorded none)."""
    from rig.features.selection import FeatureSelection
    from rig.features.store import FeatureStoreClient
    from rig.models.registry import ModelRegistry
    from rig.routing.control import read_routing

    golden = read_routing(config).golden
    recorded = ModelRegistry(config.model_dir).meta(golden).selection if golden else None
    if recorded:
        return FeatureSelection.from_dict(recorded).key_spec
    return FeatureStoreClient(config).selection().key_spec


@app.command()
def tail(
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest prediction.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
) -> None:
    """Pretty-print predictions as they arrive."""
    from rig.cli.clients import tail_predictions

    for p in tail_predictions(settings(), from_beginning, limit):
        experiments = " ".join(f"{e.experiment}={e.score:.3f}" for e in p.experiments)
        total = p.timings_ms.get("total")  # written with RIG_PREDICTION_TIMINGS only
        typer.echo(
            f"{p.request_id[:8]} {p.entity_id} score={p.score:.4f} by {p.answered_by} "
            f"golden={p.golden.score:.4f} {experiments} found={p.entity_found}"
            + ("" if total is None else f" {total:.1f}ms")
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

    from rig.models.batch import run_batch
    from rig.routing.control import read_routing

    config = settings()
    golden = read_routing(config).golden
    summary = run_batch(config, Path(input), Path(output), model or None, progress=True, golden=golden)
    typer.echo(
        f"{summary.rows:,} rows scored in {summary.seconds:.1f} s ({summary.rejected:,} rejected) "
        f"→ {summary.output_path}"
    )


if __name__ == "__main__":
    app()
