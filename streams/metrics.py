"""The worker's Prometheus metrics, and its `/metrics` page.

`WorkerMetrics` holds every metric of a worker on one registry: the worker builds it on
prometheus_client's default registry (`REGISTRY`, with the process and garbage collector metrics
prometheus_client adds), tests build it on registries of their own.
The hot path pays once per batch, never per request: counters take `inc(n)`, and the per-request
distributions (end-to-end latency, model scores) are `BatchHistogram`s, which bucket a whole batch with
numpy. prometheus_client's `Histogram.observe` costs about 1 µs a value (2 µs with labels), and a
request has an end-to-end time and a score per model: several times the budget of all metrics together.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiohttp
import faust
import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from rig.cache.tiers import CacheMetrics
from rig.feedback.join import JOIN_EVENTS, JoinEvent
from rig.wire.codec import ErrorType
from rig.wire.records import DecisionAction
from streams.plane.health import Health

STAGES = ("decode", "enrich", "transform", "dispatch", "predict", "publish")
"""The predict path's stages, as `streams.predict` times them."""
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
ModelEvent = Literal["loaded", "warmed", "failed"]
JOIN_PROCESS_LABEL = "join_process"
"""The label of a join process's samples on its worker's `/metrics` (`RIG_JOIN_PROCESSES`)."""
PROMOTER_GAUGES = ("n", "mean_gain", "ci_low", "ci_high", "p_value")
"""Fields of each challenger in `PromotionLoop.snapshot`, one gauge `rig_promoter_<field>` each."""


@dataclass
class _Series:
    counts: np.ndarray
    """Observations per bucket (not cumulative), the last one above every bound."""
    total: float


class BatchHistogram(Collector):
    """A histogram family observed a batch of values at a time: per label values, numpy bucket counts
    and a sum, exposed as a Prometheus histogram (cumulative `_bucket{le}`, `_count`, `_sum`).
    Thread-safe."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`buckets`: the finite upper bounds (`+Inf` is implicit); registered in `registry` if given."""
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = np.array(sorted(buckets), dtype=np.float64)
        self._le = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, values: np.ndarray, labels: tuple[str, ...] = ()) -> None:
        """Add every value of `values` to the series of `labels` (one value per label name).

        Raises:
            ValueError: not one label value per label name.
        """
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        if not len(values):
            return
        # A value equal to a bound belongs to that bound's bucket (`le`): the left insertion point.
        counts = np.bincount(np.searchsorted(self.bounds, values), minlength=len(self._le))
        total = float(values.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                self._series[labels] = _Series(counts, total)
            else:
                series.counts += counts
                series.total += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The family with one histogram per label values observed so far."""
        with self._lock:
            observed = [(labels, s.counts.cumsum().tolist(), s.total) for labels, s in self._series.items()]
        family = self.describe()[0]
        for labels, cumulative, total in sorted(observed):
            family.add_metric(list(labels), list(zip(self._le, cumulative, strict=True)), total)
        yield family

    def describe(self) -> list[HistogramMetricFamily]:
        """The family without samples (what the registry checks names against)."""
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]


class WaitsCollector(Collector):
    """`rig_waiting_seconds`: how long each consumer group of the worker has waited for each dependency
    that is away, read from the groups' health at every scrape. The predict path's waits also turn
    `rig_ready` to 0; the join's and the promoter's do not (readiness is about answering requests),
    and this is where they show."""

    NAME = "rig_waiting_seconds"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._watched: list[tuple[str, Health]] = []
        registry.register(self)

    def watch(self, group: str, health: Health) -> None:
        """Export the waits of consumer group `group`, as `health` holds them."""
        self._watched.append((group, health))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per (group, dependency) waited for now; none while nothing is."""
        family = self.describe()[0]
        for group, health in self._watched:
            for dependency, seconds in sorted(health.waits().items()):
                family.add_metric([group, dependency], seconds)
        yield family

    def describe(self) -> list[GaugeMetricFamily]:
        """The family without samples (what the registry checks names against)."""
        return [
            GaugeMetricFamily(
                self.NAME,
                "Seconds a consumer group of the worker has waited for a dependency that is away.",
                labels=["group", "dependency"],
            )
        ]


class JoinEventsCollector(Collector):
    """`rig_join_events_total`: what the join's events came to (joined, late, orphans, duplicates,
    ...), read at every scrape from the join's own counts, which its batches update without a metric
    call. No sample in a process that does not join."""

    NAME = "rig_join_events"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: Mapping[JoinEvent, int] | None = None
        registry.register(self)

    def watch(self, counts: Mapping[JoinEvent, int]) -> None:
        """Export `counts` (the join's `Counter`), every event of `JOIN_EVENTS` from 0."""
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One sample per event once the join is watched."""
        family = self.describe()[0]
        if self._counts is not None:
            counts = dict(self._counts)  # one copy under the GIL: the join's thread updates it meanwhile
            for event in JOIN_EVENTS:
                family.add_metric([event], counts.get(event, 0))
        yield family

    def describe(self) -> list[CounterMetricFamily]:
        """The family without samples (what the registry checks names against)."""
        return [
            CounterMetricFamily(
                self.NAME,
                f"The join's events by what they came to: {', '.join(JOIN_EVENTS)} (out_of_order: "
                "joined, the outcome first).",
                labels=["event"],
            )
        ]


class WorkerMetrics:
    """Every metric of a worker, in `registry` (see the README's "Metrics" for what each means)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        self.requests = Counter("rig_requests", "Requests consumed by the predict path.", registry=r)
        self.predictions = Counter(
            "rig_predictions",
            "Prediction records published: counted when a batch's outputs are handed to the sink "
            "(one per answered request).",
            registry=r,
        )
        self.dead_letters = Counter(
            "rig_dead_letters",
            "Dead letters written by the predict path, the join and the promoter, by reason (the "
            "error type: malformed, unknown_schema, invalid_record, invalid_value, oversized, "
            "unknown_entity).",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "rig_stage_seconds",
            "Seconds a batch of the predict path spent in each stage (one observation per batch and stage).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.end_to_end = BatchHistogram(
            "rig_end_to_end_seconds",
            "Seconds from a request's Kafka timestamp to its prediction handed to the sink "
            "(one observation per answered request).",
            END_TO_END_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rig_batch_size",
            "Requests per batch of the predict path.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "rig_consumer_lag",
            "Messages of an assigned partition not consumed yet (high watermark - position), every second.",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "rig_ready", "1 while the worker is ready (/readyz answers 200), else 0.", registry=r
        )
        self.waits = WaitsCollector(r)
        self.join_events = JoinEventsCollector(r)
        self.cache = CacheMetrics(r)
        self.model_events = Counter(
            "rig_model_events",
            "Model events: loaded (verified and loaded), warmed, failed (a routing that needs the "
            "version could not be applied).",
            ["model_version", "event"],
            registry=r,
        )
        self.model_warm_seconds = Gauge(
            "rig_model_warm_seconds",
            "Seconds the latest warm-up of a model version took.",
            ["model_version"],
            registry=r,
        )
        self.model_score = BatchHistogram(
            "rig_model_score",
            "Scores each model gave, by role (golden or experiment), one observation per scored request.",
            SCORE_BUCKETS,
            ("model_version", "role"),
            registry=r,
        )
        self.promoter = {
            field: Gauge(
                f"rig_promoter_{field}",
                f"The promoter's `{field}` of each challenger against the golden (its latest status).",
                ["challenger"],
                registry=r,
            )
            for field in PROMOTER_GAUGES
        }
        self.promoter_decisions = Counter(
            "rig_promoter_decisions", "Decisions the promoter published, by action.", ["action"], registry=r
        )
        # Series that exist from the start, at 0: a rate over them is defined before the first event.
        # The stages' children are kept: looking one up by its label costs about a microsecond.
        self._stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        for reason in ErrorType:
            self.dead_letters.labels(reason.value)
        for action in get_args(DecisionAction):
            self.promoter_decisions.labels(action)

    # -- the predict path -------------------------------------------------------------------------------
    def consumed(self, requests: int) -> None:
        """The predict path took a batch of `requests`."""
        self.requests.inc(requests)
        self.batch_size.observe(requests)

    def published(self, received_ms: np.ndarray, now_ms: float) -> None:
        """The predictions of requests that reached Kafka at `received_ms` (epoch ms, one per
        prediction) were handed to the sink at `now_ms`."""
        self.predictions.inc(len(received_ms))
        self.end_to_end.observe((now_ms - received_ms) / 1000)

    def staged(self, stages_ms: Mapping[str, float]) -> None:
        """The milliseconds one batch spent in each stage (`StageClock`'s unit)."""
        for stage, ms in stages_ms.items():
            (self._stages.get(stage) or self.stage_seconds.labels(stage)).observe(ms / 1000)

    def scored(self, scores: Mapping[str, np.ndarray], golden: str) -> None:
        """Each model's scores of one batch (the golden's and every experiment's)."""
        for version, values in scores.items():
            self.model_score.observe(values, (version, "golden" if version == golden else "experiment"))

    def dead_lettered(self, reasons: Iterable[str]) -> None:
        """Dead letters written, one error type each."""
        for reason, count in collections.Counter(reasons).items():
            self.dead_letters.labels(reason).inc(count)

    # -- the source ------------------------------------------------------------------------------------
    def partition_lag(self, topic: str, partition: int, lag: int) -> None:
        """An assigned partition is `lag` messages behind its high watermark."""
        self.consumer_lag.labels(topic, str(partition)).set(lag)

    def partitions_let_go(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked or lost: their lag is someone else's now."""
        for topic, partition in partitions:
            self.consumer_lag.remove(topic, str(partition))

    def watch(self, health: Health) -> None:
        """`rig_ready` tells `health`'s readiness, asked at every scrape."""
        self.ready.set_function(lambda: float(health.readiness().ready))

    def watch_waits(self, group: str, health: Health) -> None:
        """`rig_waiting_seconds` tells what consumer group `group` waits for (`health`'s waits)."""
        self.waits.watch(group, health)

    # -- models ----------------------------------------------------------------------------------------
    def model_event(self, version: str, event: ModelEvent) -> None:
        """A model version was loaded, warmed, or failed."""
        self.model_events.labels(version, event).inc()

    def model_warmed(self, version: str, seconds: float) -> None:
        """A version was warmed in `seconds`."""
        self.model_event(version, "warmed")
        self.model_warm_seconds.labels(version).set(seconds)

    # -- the promoter ----------------------------------------------------------------------------------
    def record_promoter(self, status: Mapping[str, Any]) -> None:
        """Set the promoter's gauges from its status (`PromotionLoop.snapshot`): per challenger tested
        now; an unknown value (an interval not finite yet) is NaN; challengers no longer tested go."""
        challengers: Mapping[str, Mapping[str, Any]] = status.get("challengers", {})
        for field, gauge in self.promoter.items():
            gauge.clear()
            for challenger, entry in challengers.items():
                value = entry.get(field)
                gauge.labels(challenger).set(float("nan") if value is None else float(value))

    def decided(self, action: str) -> None:
        """The promoter published a decision."""
        self.promoter_decisions.labels(action).inc()


def install_metrics_page(
    app: faust.App,
    registry: CollectorRegistry,
    join_processes: Sequence[str] = (),
    token: str | None = None,
) -> None:
    """Serve `registry` at `/metrics` in Prometheus' text format. It is not a probe: with a web token
    set it needs the token too (`streams.app.OPEN_PATHS`).

    With `join_processes` (the `/metrics` URLs of the worker's join processes, `RIG_JOIN_PROCESSES`)
    the page holds theirs too, each sample labelled with its process's index (`with_join_processes`):
    one scrape target per worker, as without them. They are asked at each scrape (with `token`), at
    most `JOIN_PROCESS_SCRAPE_S` each; one that does not answer shows as `rig_join_process_up` 0.
    """

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        """Every metric of this worker (and of its join processes), for Prometheus to scrape."""
        if join_processes:
            texts = await scrape_join_processes(join_processes, token)
            # Parsing the children's pages takes milliseconds: not on the event loop.
            own = list(registry.collect())
            body = await asyncio.to_thread(lambda: exposition(with_join_processes(own, texts)))
        else:
            body = generate_latest(registry)
        # A header, not `content_type=`: aiohttp refuses a charset in that argument.
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


JOIN_PROCESS_SCRAPE_S = 2.0
"""How long the worker's `/metrics` waits for a join process's page."""


async def scrape_join_processes(urls: Sequence[str], token: str | None) -> list[str | None]:
    """The text of each URL's page, None where it did not answer 200 in `JOIN_PROCESS_SCRAPE_S`."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=JOIN_PROCESS_SCRAPE_S)

    async def page(session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url, headers=headers) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async with aiohttp.ClientSession(timeout=timeout) as session:
        return list(await asyncio.gather(*(page(session, url) for url in urls)))


def with_join_processes(own: Iterable[Metric], texts: Sequence[str | None]) -> list[Metric]:
    """The worker's metric families with its join processes' samples in them: one family per name,
    a process's samples labelled `join_process="<index>"` (`texts[index]`: its page, None if it did
    not answer), and `rig_join_process_up` saying which answered (a page that is not in Prometheus'
    text format counts as no answer).

    A child's family whose name the worker has with another type is left out (one name, one type), as
    are its `*_created` series: generate_latest writes those of a counter or histogram family from the
    family's own samples, so a child's would be a second family of that name.
    """
    families = {family.name: family for family in own}
    up = GaugeMetricFamily(
        "rig_join_process_up",
        "1 if the join process answered this scrape of its worker's /metrics, else 0.",
        labels=[JOIN_PROCESS_LABEL],
    )
    for index, text in enumerate(texts):
        page = _families_of(text)
        up.add_metric([str(index)], 0.0 if page is None else 1.0)
        parsed = page or []
        with_created = {family.name + "_created" for family in parsed if family.type != "gauge"}
        for family in parsed:
            held = families.get(family.name)
            if family.name in with_created or (held is not None and held.type != family.type):
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples = [
                *(held.samples if held is not None else ()),
                *(s._replace(labels={**s.labels, JOIN_PROCESS_LABEL: str(index)}) for s in family.samples),
            ]
            families[family.name] = merged
    families[up.name] = up
    return list(families.values())


def _families_of(page: str | None) -> list[Metric] | None:
    """The metric families of a page in Prometheus' text format; None for none, or another format."""
    if page is None:
        return None
    try:
        return list(text_string_to_metric_families(page))
    except ValueError:
        return None


def exposition(families: Iterable[Metric]) -> bytes:
    """`families` in Prometheus' text format (what `generate_latest` makes of a registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    return generate_latest(registry)


class _Families(Collector):
    """Metric families already collected, as a collector of a registry of their own."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
