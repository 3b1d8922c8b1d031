"""The Faust application, built from RigSettings."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import faust
from aiohttp import web
from faust.app.base import BootStrategy
from faust.types.auth import CredentialsT

from rig.config import RigSettings
from streams.plane.source import SourceSettings


class NoKafkaClients(BootStrategy):
    """Faust starts no Kafka client of its own: every topic is read and written by the rig's data
    plane (`streams.plane`), and an idle Faust consumer would only join a group and heartbeat."""

    enable_kafka = False


class RigApp(faust.App):
    """The Faust application model (agents, timers, services, web, lifecycle) without its Kafka I/O."""

    BootStrategy = NoKafkaClients


# Kubernetes asks the probes (streams/health.py) without credentials; they tell only whether the
# worker is alive and ready.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token_required(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware that answers 401 to every request but the probes' that lacks
    `Authorization: Bearer <token>`. It guards Faust's own pages (tables, router, stats) too."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        # Constant-time comparison: the time to refuse must not tell how much of a guess was right.
        if request.path in OPEN_PATHS or hmac.compare_digest(given, expected):
            return await handler(request)
        return web.json_response(
            {"error": "a bearer token is required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )

    return require_token


def broker_credentials(settings: RigSettings) -> CredentialsT | None:
    """Credentials of Faust's own Kafka clients (aiokafka): the protocol, CA and SASL user of the
    rig's confluent-kafka clients (`RigSettings.kafka_client_config`).

    aiokafka speaks TLS only when given an SSL context: SASL credentials without one would mean
    SASL_PLAINTEXT whatever `kafka_security_protocol` says.

    Raises:
        OSError: the CA file cannot be read or holds no certificate (`ssl.SSLError`).
    """
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        # The settings refuse TLS without a CA file; the default context also checks host names.
        context = ssl.create_default_context(cafile=str(settings.kafka_ssl_ca_location))
    if protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=None if password is None else password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return None if context is None else faust.SSLCredentials(context)


def make_app(
    settings: RigSettings, app_id: str = "rig", faust_kafka: bool = False, **overrides: object
) -> faust.App:
    """Build the Faust app for these settings.

    The web server listens on `settings.web_bind` (127.0.0.1 unless set; Faust's own default is
    every interface) and, with `settings.web_token`, requires that bearer token.

    Args:
        settings: cluster address, security, partitioning and web server.
        app_id: Faust application id (also the consumer group id).
        faust_kafka: start Faust's own Kafka clients (only for a plain Faust agent, such as the
            benchmarks' naive baseline; the rig's workers do their Kafka I/O on the data plane).
        overrides: any other Faust setting (e.g. web_enabled=False in tests).
    """
    settings.home.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of datadir
    bootstrap = ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(","))
    options: dict[str, Any] = {
        "broker": bootstrap,
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "broker_credentials": broker_credentials(settings),
        "datadir": str(settings.home / "faust"),
        "web_port": settings.web_port or 6066,  # Faust validates the port even when the web server is off
        "web_enabled": settings.web_port > 0,
        "web_bind": settings.web_bind,
    }
    if settings.web_token is not None:
        token = settings.web_token.get_secret_value()
        options["web_application_options"] = {"middlewares": [bearer_token_required(token)]}
    options.update(overrides)
    return (faust.App if faust_kafka else RigApp)(app_id, **options)


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
        transaction_timeout_s=settings.transaction_timeout_s,
    )
    return replace(base, **changes)  # type: ignore[arg-type]
