"""The rig worker: `rig-worker` (or `python -m streams`, or `faust -A streams.worker worker`).

Every setting comes from `RIG_*` variables (`RIG_WEB_PORT`, `RIG_LOG_LEVEL`, ...), on every launch path.

One Faust app per process; the predict agent consumes the requests topic in micro-batches. The
runtime (models, routing, feature reader) is built before the first batch is consumed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

import faust
from confluent_kafka import KafkaException
from mode.utils.loops import get_event_loop
from prometheus_client import REGISTRY

from rig.config import RigSettings
from rig.errors import RigError
from rig.features.feast_checks import skip_feast_type_checks
from rig.wire.topics import MisconfiguredTopic, ensure_topics
from streams.app import make_app, source_settings
from streams.health import install_health
from streams.heap import freeze_heap
from streams.join import install_join
from streams.join_processes import JoinProcesses, become_join_process, install_counts_page
from streams.metrics import WorkerMetrics, install_metrics_page
from streams.plane.health import Health
from streams.plane.service import Plane
from streams.timers import supervised

if TYPE_CHECKING:
    from streams.runtime import Runtime

# The modules of the other roles (predict, promoter, explainer, dashboard) are imported below only by
# a process that runs them: a join process (`streams.join_processes`) then loads no XGBoost, Feast,
# pandas or scipy.

# import feast ~4.5 s sooner: the worker reads what `feast apply` checked. Here, not in main(), so that
# `faust -A streams.worker worker`, which never calls main(), skips them too (this module imports no
# Feast: its runtime does, later).
skip_feast_type_checks()
settings = RigSettings()
log = logging.getLogger("rig.worker")
app = make_app(settings, app_id=f"{settings.topic_prefix}worker")
roles = settings.worker_roles
health = Health(needs_partitions="predict" in roles)
metrics = WorkerMetrics(REGISTRY)  # what /metrics serves
metrics.watch(health)
plane = (
    Plane(
        app,
        settings.kafka_client_config(),
        settings.kafka_producer_config(),
        source_settings(
            settings, "predict", (settings.topic("requests"),), batch_interval_s=settings.batch_interval_s
        ),
        health,
        metrics=metrics,
    )
    if "predict" in roles
    else None
)
planes = [plane] if plane is not None else []  # every plane is watched (`install_health`)
feedback_gives_way_to = plane.give_way if plane is not None and settings.feedback_gives_way else None
joins = "feedback" in roles or "join" in roles
join_process = roles == {"join"}  # what a worker's join processes run (`streams.join_processes`)
if joins and not settings.join_processes:
    planes.append(install_join(app, settings, metrics, feedback_gives_way_to))
# Once, before consuming: agents must not wait before their loop. A join process records nothing there.
metadata = None
if not join_process:
    from streams.promote import open_metadata

    metadata = open_metadata(settings)
built_runtime: Runtime | None = None  # set by main() before the worker consumes
runtime_ready: asyncio.Future[Runtime] | None = None


async def get_runtime() -> Runtime:
    """The process's runtime: the one main() built, or (under `faust -A streams.worker`) one built
    on first use, off the event loop."""
    global runtime_ready
    if built_runtime is not None:
        return built_runtime
    if runtime_ready is None:
        runtime_ready = asyncio.ensure_future(asyncio.to_thread(build_runtime))
    return await runtime_ready


def build_runtime() -> Runtime:
    """Topics, then the runtime (models loaded and warmed), then the explainer thread; then the heap
    is frozen (`freeze_heap`). A broker that is away at start-up is waited for."""
    from streams.explain import ExplainConsumer
    from streams.runtime import Runtime

    wait_for_topics()
    runtime = Runtime.create(settings, metadata, metrics)
    health.add_fatal(runtime.follower.failure)  # routing changes would no longer reach this worker
    if "explain" in roles:
        backlogged = plane.source.backlogged if plane is not None else lambda: False
        explainer = ExplainConsumer(settings, runtime, backlogged).start()
        health.add_fatal(explainer.failure)  # explain requests would wait in Kafka for good

        # mode types a signal handler so that no function matches it (mypy rejects every one).
        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def stop_explainer(sender: faust.App, **kwargs: object) -> None:
            # Leave the explainer group now: a member that just vanishes holds its partitions for
            # the whole session timeout.
            await asyncio.to_thread(explainer.stop)

    freeze_heap()
    return runtime


def wait_for_topics() -> None:
    """`ensure_topics`, tried again (warned every 30 s) until the cluster answers. A misconfigured
    topic stops the worker: waiting would not fix it."""
    delay, next_warning = 0.2, 0.0
    while True:
        try:
            ensure_topics(settings)
            return
        except MisconfiguredTopic:
            raise
        except (RigError, KafkaException) as error:
            if time.monotonic() >= next_warning:
                log.warning("waiting for the Kafka cluster to check the topics: %s", error)
                next_warning = time.monotonic() + 30
            time.sleep(delay)
            delay = min(5.0, delay * 2)


@app.timer(interval=60.0)
@supervised
async def record_feature_stats() -> None:
    """Flush this worker's serving feature statistics (with PSI against training) to the metadata store.

    A metadata store that is away loses this window's statistics (logged), never the worker.
    """
    if "predict" not in roles:
        return  # only the predict path gathers them (and a join process builds no runtime)
    runtime = await get_runtime()
    stats = runtime.feature_stats
    if stats is None or metadata is None:
        return
    runtime.feature_stats = stats.empty()
    scope = f"serving:{socket.gethostname()}:{os.getpid()}"
    try:
        await asyncio.to_thread(metadata.record_feature_stats, scope, int(time.time() * 1000), stats)
    except RigError as error:
        log.warning("serving feature statistics not recorded: %s", error)


if plane is not None:
    from streams.predict import install_predict

    install_predict(plane, get_runtime)
if "feedback" in roles:
    from streams.promote import install_promoter

    planes.append(install_promoter(app, settings, get_runtime, metadata, metrics, feedback_gives_way_to))
if "explain" in roles:
    from streams.explain import install_explain_endpoint

    install_explain_endpoint(app, settings, get_runtime)
if not join_process:  # a join process builds no runtime for it to show
    from streams.dashboard import install_dashboard

    install_dashboard(app, settings, get_runtime, metadata)
web_token = settings.web_token.get_secret_value() if settings.web_token is not None else None
join_process_pages: list[str] = []  # the join processes' /metrics, which the worker's includes
if joins and settings.join_processes:
    join_processes = JoinProcesses(settings)
    join_process_pages = join_processes.urls("/metrics")
    install_counts_page(app, join_processes.urls("/join/counts/"), web_token)
    health.add_fatal(join_processes.failure)

    @app.task
    async def start_join_processes() -> None:
        # On the event loop's (main) thread: a child's PR_SET_PDEATHSIG fires when the thread that
        # forked it ends, not the process.
        join_processes.start()

    # mode types a signal handler so that no function matches it (mypy rejects every one).
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_join_processes(sender: faust.App, **kwargs: object) -> None:
        await asyncio.to_thread(join_processes.stop)


install_health(app, settings, health, planes)
install_metrics_page(app, metrics.registry, join_process_pages, web_token)


def main() -> None:
    """`rig-worker`: build the runtime (models loaded and warmed, routing read), then run the Faust worker.

    The runtime is ready before the worker joins its consumer group: an agent that started consuming
    and then waited for its models would hold messages of partitions a rebalance moves elsewhere.
    """
    global built_runtime
    started_by_worker = become_join_process()
    try:
        if join_process:  # the join needs no models, routing or feature reader
            # Not in a worker's join process: its worker checked the topics before starting it, and one
            # created here could undo an operator's deletion made since (the topic would come back,
            # empty, while the worker holds its answers until the operator creates it again).
            if not started_by_worker:
                wait_for_topics()
            freeze_heap()
        else:
            built_runtime = build_runtime()
    except MisconfiguredTopic as error:
        raise SystemExit(f"refusing to start: {error}") from error
    # Faust leaves the root logger at DEBUG: aiokafka would build several records per message.
    for name in ("aiokafka", "kafka"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    app.finalize()
    app.worker_init()
    app.worker_init_post_autodiscover()
    worker = faust.Worker(app, loglevel=settings.log_level, loop=get_event_loop(), redirect_stdouts=False)
    worker.execute_from_commandline()
