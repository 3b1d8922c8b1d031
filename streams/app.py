"""The Faust application, built from RigSettings."""

from __future__ import annotations

from dataclasses import replace

import faust
from faust.app.base import BootStrategy

from rig.config import RigSettings
from streams.plane.source import SourceSettings


class NoKafkaClients(BootStrategy):
    """Faust starts no Kafka client of its own: every topic is read and written by the rig's data
    plane (`streams.plane`), and an idle Faust consumer would only join a group and heartbeat."""

    enable_kafka = False


class RigApp(faust.App):
    """The Faust application model (agents, timers, services, web, lifecycle) without its Kafka I/O."""

    BootStrategy = NoKafkaClients


def make_app(settings: RigSettings, app_id: str = "rig", **overrides: object) -> faust.App:
    """Build the Faust app for these settings.

    Args:
        settings: cluster address, security and partitioning.
        app_id: Faust application id (also the consumer group id).
        overrides: any other Faust setting (e.g. web_enabled=False in tests).
    """
    broker_credentials = None
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_username:
        broker_credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else "",
            mechanism=settings.kafka_sasl_mechanism,
        )
    settings.home.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of datadir
    bootstrap = ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(","))
    options: dict[str, object] = {
        "broker": bootstrap,
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "broker_credentials": broker_credentials,
        "datadir": str(settings.home / "faust"),
    }
    options.update(overrides)
    return RigApp(app_id, **options)


def source_settings(
    settings: RigSettings, role: str, topics: tuple[str, ...], **changes: object
) -> SourceSettings:
    """How a worker's `role` (predict, join, promote) reads its topics, from the rig's settings;
    `changes` override single fields (e.g. `assignment_strategy`)."""
    base = SourceSettings(
        group_id=settings.consumer_group(role),
        topics=topics,
        batch_max=settings.batch_max,
        max_open_batches=settings.max_open_batches,
        commit_interval_s=settings.commit_interval_s,
        stall_s=settings.stall_s,
        session_timeout_s=settings.kafka_session_timeout_s,
        group_instance_id=settings.kafka_group_instance_id,
        commits=settings.processing_guarantee == "at_least_once",
    )
    return replace(base, **changes)  # type: ignore[arg-type]
