"""Deployments for the benchmarks: service checks, isolated settings, a whole deployment of the world.

A run shares Kafka and Redis with everything else on the machine: it gets its own Feast project and
its own topic prefix, so it never sees (nor leaves behind) anyone else's topics and keys.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.support.cleanup import Cleanup, cleaned_up
from bench.support.report import say
from rig.config import RigSettings
from sim.deploy import isolated_feast_repo, prepare
from sim.settings import WorldSettings
from sim.world import World


def isolated_settings(root: Path, tag: str) -> RigSettings:
    """Settings on a copy of examples/synthetic_world under `root` with its own Feast project and its
    own topic prefix `bench.<tag>.<random>.` (like tests/integration/conftest.py
    `isolated_feast_settings`)."""
    repo = isolated_feast_repo(root, "rig_bench")
    return RigSettings(
        feast_repo=repo,
        home=root / "home",
        transform_spec=repo / "transform.json",
        topic_prefix=f"bench.{tag}.{uuid.uuid4().hex[:8]}.",
    )


def with_prefix(settings: RigSettings, suffix: str) -> RigSettings:
    """The same deployment on topics (and a cache namespace) under `<prefix><suffix>.`."""
    return settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}{suffix}."})


def redis_error(redis_url: str) -> str | None:
    """Why Redis at `redis_url` does not answer a PING, or None when it does."""
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        return f"no Redis at {redis_url} ({error}); start it with ops/redis/up"
    return None


def kafka_error(settings: RigSettings) -> str | None:
    """Why Kafka does not answer, or None when it lists its topics."""
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(settings.kafka_client_config()).list_topics(timeout=10)
    except Exception as error:  # noqa: BLE001 - any client error means the same thing here
        return f"no Kafka at {settings.kafka_bootstrap} ({error}); start it with ops/kafka/up"
    return None


def require_services(settings: RigSettings, kafka: bool = True) -> None:
    """Exit with a clear message when Redis (or, with `kafka`, Kafka) does not answer."""
    error = redis_error(settings.redis_url) or (kafka_error(settings) if kafka else None)
    if error:
        raise SystemExit(error)


@dataclass(frozen=True)
class Deployment:
    """A deployed world: settings (own prefix and Feast project), the world, its models, the cleanup."""

    settings: RigSettings
    world_settings: WorldSettings
    world: World
    versions: dict[str, str]
    cleanup: Cleanup


@contextmanager
def deployed(
    tag: str, models: Mapping[str, str], world: WorldSettings, n_events: int, rounds: int = 150
) -> Iterator[Deployment]:
    """Deploy the world (`sim.deploy.prepare`: topics, Feast apply + materialize, one model per name →
    feature set) on isolated settings; on exit, also on error or SIGTERM, everything is removed.

    Models are trained with one XGBoost thread: two threads on a busy 2-core box were ~10x slower.
    Start worker processes into `deployment.cleanup.processes` so they are stopped too.
    """
    import xgboost

    with tempfile.TemporaryDirectory(prefix=f"rig-bench-{tag}-") as tmp:
        settings = isolated_settings(Path(tmp), tag)
        require_services(settings)
        with cleaned_up(settings) as cleanup:
            say(
                f"deployment: {world.entities} entities x {world.days} days, models {list(models)}, "
                f"prefix {settings.topic_prefix}"
            )
            cleanup.feast_applied = True
            with xgboost.config_context(nthread=1):
                built, versions = prepare(
                    settings,
                    models,
                    world,
                    n_events=n_events,
                    rounds=rounds,
                    on_step=lambda step: say(f"  prepare: {step}"),
                )
            say(f"  models: {versions}")
            yield Deployment(settings, world, built, versions, cleanup)


def route(settings: RigSettings, versions: Mapping[str, str], shadows: Sequence[str]) -> None:
    """On the control topic of `settings`: the version trained as `golden` is the golden model, and
    each name of `shadows` an experiment scoring its version in shadow mode."""
    from rig.routing.control import publish_control
    from rig.routing.table import set_golden_event, start_experiment_event

    publish_control(settings, set_golden_event(versions["golden"], actor="bench"))
    for name in shadows:
        publish_control(settings, start_experiment_event(name, versions[name], "shadow", actor="bench"))


@contextmanager
def deployed_world(tag: str, models: Mapping[str, str], args: argparse.Namespace) -> Iterator[Deployment]:
    """`deployed` with the world and training the options of `add_world_arguments` describe."""
    with deployed(
        tag, models, world_of(args), n_events=args.train_events, rounds=args.rounds_boosting
    ) as deployment:
        yield deployment


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a deployed world: its size, its models' training, its seed."""
    parser.add_argument("--entities", type=int, default=5_000, help="entities of the synthetic world")
    parser.add_argument("--days", type=int, default=4, help="days of feature history")
    parser.add_argument("--rounds-boosting", type=int, default=150, help="boosting rounds of each model")
    parser.add_argument("--train-events", type=int, default=10_000, help="labelled events for training")
    parser.add_argument("--seed", type=int, default=31, help="seed of the world and traffic")


def world_of(args: argparse.Namespace) -> WorldSettings:
    """The world the options of `add_world_arguments` describe."""
    return WorldSettings(seed=args.seed, entities=args.entities, days=args.days)
