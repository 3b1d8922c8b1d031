"""Explanations: the explain topic and the worker's `GET /explain/<entity_id>/?model=<version>`.

Requests on the explain topic (the Request schema; the predict agent adds those where golden and a
challenger disagree) are explained by a plain consumer in its own thread and consumer group, never
by a Faust agent: an explanation takes far longer than a prediction, and a slow Faust stream would
hold up message delivery to the predict agent. A backlog of explanations waits in Kafka instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import faust

from rig.config import RigSettings
from rig.errors import GoldenUnavailable, NotAcknowledged, RegistryError, RigError, Unavailable
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Explanation, Request, to_plain
from streams.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


def explain_with_golden(runtime: Runtime, request: Request, version: str | None = None) -> Explanation:
    """An Explanation record of `version` (default: the golden) for `request` (blocking).

    Raises:
        Unavailable: no golden is routed yet, or Redis does not answer.
        RigError: the model is not routed, or the request cannot be transformed.
    """
    serving = runtime.serving
    model = version or runtime.routing.golden
    if model is None or serving is None or runtime.explanations is None:
        raise GoldenUnavailable("no golden model is routed")
    return runtime.explanations.explain(request, model, serving.reader, serving.layout)


class ExplainConsumer:
    """Explains the requests on the explain topic in a background thread (at-least-once).

    A request's offset is stored only once its explanation is delivered, or once it proves one that
    cannot be explained (logged). A dependency that is away (Redis, the metadata store the model's
    checksum is read from, no golden routed yet, the broker not acknowledging) makes the thread wait
    and try the same request again, with backoff: an explanation is never dropped for it. If the
    thread dies, `failure` says why and the worker exits for a restart.

    The thread shares the worker's cores with the predict path: while that path has a backlog
    (`backlogged()`), each explanation first waits up to `explain_yield_max_s`. An explanation costs
    ~106 ms of CPU, 83 ms of it in XGBoost (a 200-tree model, 36,883 rows predicted). On this 2-core
    machine, over a backlog of 300,000 requests (`bench/bench_pipeline.py --agents worker`, two
    interleaved pairs), the worker answered 21,307 and 22,160 req/s at 46-48 µs of CPU per request
    with the explainer yielding, 19,178 and 20,982 req/s at 52-57 µs without.
    """

    def __init__(
        self, settings: RigSettings, runtime: Runtime, backlogged: Callable[[], bool] = lambda: False
    ) -> None:
        """`backlogged()`: whether the predict path has requests waiting (asked from this thread)."""
        self.settings = settings
        self.runtime = runtime
        self.backlogged = backlogged
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="explainer", daemon=True)
        self._failure: Exception | None = None
        self._default_codec = Codec(Request, registry_url=settings.schema_registry_url, allow_json=True)
        self._explanation_codec = Codec(Explanation, registry_url=settings.schema_registry_url)

    def failure(self) -> str | None:
        """Why the explainer thread stopped (explain requests then wait in Kafka), or None."""
        return None if self._failure is None else f"explainer stopped: {self._failure!r}"

    def start(self) -> ExplainConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def yield_to_requests(self) -> float:
        """Wait while the predict path has a backlog, at most `explain_yield_max_s` (or until
        stopped); returns the seconds waited."""
        began = time.monotonic()
        deadline = began + self.settings.explain_yield_max_s
        while self.backlogged() and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return time.monotonic() - began

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        settings = self.settings
        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"{settings.topic_prefix}explainer",
                "auto.offset.reset": "earliest",
                "enable.auto.offset.store": False,  # an offset is stored only once its request is done
            }
        )
        consumer.subscribe([settings.topic("explain")])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                self.yield_to_requests()
                # A consumed message has its offset; confluent-kafka types it Optional.
                if not self._explain_until_done(message.value() or b"", cast(int, message.offset())):
                    return  # stopped while waiting: the request is explained again after a restart
                try:
                    consumer.store_offsets(message)
                except KafkaException as error:  # its partition moved on meanwhile: its owner redoes it
                    log.warning("explain offset not stored offset=%s error=%s", message.offset(), error)
        except Exception as error:  # the worker exits for a restart (`failure`)
            self._failure = error
            log.exception("explainer stopped topic=%s", settings.topic("explain"))
        finally:
            consumer.close()

    def _explain_until_done(self, value: bytes, offset: int) -> bool:
        """Explain one request and wait for its explanation's delivery, trying again with backoff
        (0.1 s doubling to 5 s) while a dependency is away; False when stopped meanwhile."""
        delay, waiting = 0.1, False
        while not self._stop.is_set():
            try:
                self._explain(value, offset)
                if waiting:
                    log.warning("explainer goes on: what it waited for is back")
                return True
            except Unavailable as error:
                if not waiting:
                    log.warning("explainer waits for %s: %s", error.dependency, error)
            except NotAcknowledged as error:
                if not waiting:
                    log.warning("explainer waits for the broker: %s", error)
            waiting = True
            self._stop.wait(delay)
            delay = min(5.0, delay * 2)
        return False

    def _explain(self, value: bytes, offset: int) -> None:
        """Explain the request in `value` and deliver its explanation; a request that cannot be
        explained is logged and done with.

        Raises:
            Unavailable: a dependency is away; nothing was produced.
            NotAcknowledged: the explanation was not delivered (it may be produced again).
        """
        serving = self.runtime.serving  # explain requests name the entity as requests do
        codec = self._default_codec if serving is None else serving.request_codec
        request = codec.decode(value)
        if isinstance(request, Rejected):
            log.warning("explain request rejected offset=%s reason=%s", offset, request.reason)
            return
        try:
            record = explain_with_golden(self.runtime, request)
        except Unavailable:
            raise
        except RigError as error:
            log.warning("not explained request_id=%s reason=%s", request.request_id, error)
            return
        errors: list[object] = []
        producer = self.runtime.producer
        producer.produce(
            self.settings.topic("explanations"),
            key=request.entity_id.encode(),
            value=self._explanation_codec.encode(record),
            on_delivery=lambda error, _message: errors.append(error),
        )
        # One flush per explanation: it costs ~106 ms of CPU (see above), the flush a round trip.
        if producer.flush(30) or errors != [None]:
            raise NotAcknowledged(f"explanation of {request.request_id} not delivered: {errors or 'timeout'}")


class BoundedPool:
    """Threads of their own with a bounded queue: at most `threads` calls run and `queue` more wait;
    a call beyond that is refused at once instead of waiting behind the others."""

    def __init__(self, threads: int, queue: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(threads + queue)

    def submit(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T] | None:
        """`fn(*args)` on one of the pool's threads, as a future of the running event loop; None
        when every thread is busy and the queue is full."""
        if not self._slots.acquire(blocking=False):
            return None
        future = self._executor.submit(fn, *args)
        # Freed when the call ends, not when its caller stops waiting: a client that hangs up must
        # not let more calls run than the bound.
        future.add_done_callback(lambda _: self._slots.release())
        return asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Drop the waiting calls; the running ones finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def install_explain_endpoint(
    app: faust.App, settings: RigSettings, get_runtime: Callable[[], Awaitable[Runtime]]
) -> None:
    """Add `GET /explain/<entity_id>/` to the worker's web server.

    Explanations run on a pool of their own (`web_explain_threads`, `web_explain_queue`), never on
    the default thread pool that feature reads and flushes use; a call beyond the pool's queue gets
    429 at once.
    """
    pool = BoundedPool(settings.web_explain_threads, settings.web_explain_queue, "explain-web")

    @app.page("/explain/{entity_id}/")
    async def explain_entity(web, request, entity_id: str):
        """Explain the golden's (or `?model=`) score for this entity now."""
        runtime = await get_runtime()
        answer = pool.submit(explain_answer, runtime, entity_id, request.query.get("model"))
        if answer is None:
            busy = {"error": "too many explanations in progress; try again later"}
            return web.json(busy, status=429, headers={"Retry-After": "1"})
        body, status = await answer
        return web.json(body, status=status)

    # mode types a signal handler so that no function matches it (mypy rejects every one).
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_explaining(sender: faust.App, **kwargs: object) -> None:
        pool.shutdown()


def explain_answer(runtime: Runtime, entity_id: str, model: str | None) -> tuple[dict[str, Any], int]:
    """The answer to `GET /explain/<entity_id>/?model=<version>` (blocking): the Explanation as plain
    values and 200, or an error and its status.

    `model` comes from anyone who can reach the web port: anything but a registered version is
    refused with 404 before it names a file. What cannot be explained now (no golden routed, a model
    not served, an entity the transform cannot take) is a 422.
    """
    if model:  # `?model=` with no value asks for the golden, as no `?model` does
        try:
            runtime.registry.folder(model)
        except RegistryError as error:
            return {"error": str(error)}, 404
    ask = Request(
        request_id=f"http-{uuid.uuid4().hex}", entity_id=entity_id, event_time=int(time.time() * 1000)
    )
    try:
        record = explain_with_golden(runtime, ask, model)
    except RigError as error:
        return {"error": str(error)}, 422
    return to_plain(record), 200
