"""The Faust application, built from RigSettings."""

from __future__ import annotations

import faust

from rig.config import RigSettings
from streams.rebalance import SeekThenResumeTableManager, install_partition_watchdog


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
            password=settings.kafka_sasl_password or "",
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
        "TableManager": SeekThenResumeTableManager,  # no skipped messages after a rebalance
        "stream_processing_timeout": settings.stall_alert_s,
    }
    options.update(overrides)
    app = faust.App(app_id, **options)
    install_partition_watchdog(app, settings.partition_watchdog_s)
    return app
