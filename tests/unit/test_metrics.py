"""The worker's metrics (`streams.metrics`) on registries of their own, and the `/metrics` page."""

from __future__ import annotations

import asyncio
import collections
import math
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from rig.config import RigSettings
from rig.feedback.join import JoinEvent
from streams.app import make_app
from streams.metrics import (
    JOIN_EVENTS,
    SCORE_BUCKETS,
    BatchHistogram,
    WorkerMetrics,
    install_metrics_page,
    with_join_processes,
)
from streams.plane.health import Health
from tests.support.ports import free_port
from tests.support.web import aiohttp_app

EXPORTED = {
    "rig_requests": "counter",
    "rig_predictions": "counter",
    "rig_dead_letters": "counter",
    "rig_stage_seconds": "histogram",
    "rig_end_to_end_seconds": "histogram",
    "rig_batch_size": "histogram",
    "rig_consumer_lag": "gauge",
    "rig_ready": "gauge",
    "rig_waiting_seconds": "gauge",
    "rig_cache_lookups": "counter",
    "rig_cache_redis_up": "gauge",
    "rig_model_events": "counter",
    "rig_model_warm_seconds": "gauge",
    "rig_model_score": "histogram",
    "rig_promoter_n": "gauge",
    "rig_promoter_mean_gain": "gauge",
    "rig_promoter_ci_low": "gauge",
    "rig_promoter_ci_high": "gauge",
    "rig_promoter_p_value": "gauge",
    "rig_promoter_decisions": "counter",
}


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry())


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_metric_is_exported_with_its_type(metrics: WorkerMetrics) -> None:
    families = {family.name: family.type for family in metrics.registry.collect()}
    assert {name: families.get(name) for name in EXPORTED} == EXPORTED


def test_stages_dead_letter_reasons_and_decision_actions_start_at_zero(metrics: WorkerMetrics) -> None:
    assert value(metrics, "rig_stage_seconds_count", stage="publish") == 0
    assert value(metrics, "rig_dead_letters_total", reason="malformed") == 0
    assert value(metrics, "rig_promoter_decisions_total", action="promote") == 0


def test_a_batch_histogram_exposes_what_a_prometheus_histogram_of_the_same_values_does() -> None:
    bounds = (0.1, 0.5, 1.0)
    values = np.array([0.0, 0.1, 0.1000001, 0.5, 0.7, 1.0, 3.0, -1.0])  # bounds themselves included
    batched, native = CollectorRegistry(), CollectorRegistry()
    histogram = BatchHistogram("x_seconds", "x", bounds, ("model",), registry=batched)
    reference = Histogram("x_seconds", "x", ["model"], buckets=bounds, registry=native)

    histogram.observe(values[:3], ("a",))
    histogram.observe(values[3:], ("a",))
    for v in values:
        reference.labels("a").observe(float(v))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(batched) == pytest.approx(samples(native))
    assert samples(batched)[("x_seconds_bucket", "0.1")] == 3, "a value equal to a bound is in its bucket"


def test_a_batch_histogram_refuses_labels_it_was_not_given() -> None:
    histogram = BatchHistogram("y", "y", (1.0,), ("model", "role"))
    with pytest.raises(ValueError, match="takes labels"):
        histogram.observe(np.ones(2), ("golden",))


def test_a_batch_counts_its_requests_predictions_latency_stages_and_scores_once(
    metrics: WorkerMetrics,
) -> None:
    metrics.consumed(4)
    metrics.staged({"decode": 2.0, "predict": 40.0, "publish": 1.0})
    metrics.published(np.array([1_000.0, 1_500.0, 2_000.0]), now_ms=3_000.0)
    metrics.scored({"risk.1": np.array([0.05, 0.95, 1.0]), "risk.2": np.array([0.3])}, golden="risk.1")
    metrics.dead_lettered(["malformed"])

    assert value(metrics, "rig_requests_total") == 4
    assert value(metrics, "rig_batch_size_count") == 1 and value(metrics, "rig_batch_size_sum") == 4
    assert value(metrics, "rig_predictions_total") == 3
    assert value(metrics, "rig_end_to_end_seconds_count") == 3
    assert value(metrics, "rig_end_to_end_seconds_sum") == pytest.approx(2.0 + 1.5 + 1.0)
    assert value(metrics, "rig_end_to_end_seconds_bucket", le="1.0") == 1
    assert value(metrics, "rig_stage_seconds_sum", stage="predict") == pytest.approx(0.04)
    assert value(metrics, "rig_stage_seconds_count", stage="enrich") == 0, "a stage not reached"
    golden = {"model_version": "risk.1", "role": "golden"}
    assert value(metrics, "rig_model_score_count", **golden) == 3
    assert value(metrics, "rig_model_score_bucket", le="0.1", **golden) == 1
    assert value(metrics, "rig_model_score_bucket", le="0.9", **golden) == 1
    assert value(metrics, "rig_model_score_bucket", le="1.0", **golden) == 3
    assert value(metrics, "rig_model_score_count", model_version="risk.2", role="experiment") == 1
    assert value(metrics, "rig_dead_letters_total", reason="malformed") == 1


def test_score_buckets_are_tenths_up_to_one() -> None:
    assert SCORE_BUCKETS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_dead_letters_are_counted_by_reason(metrics: WorkerMetrics) -> None:
    metrics.dead_lettered(["malformed", "unknown_entity", "malformed"])
    metrics.dead_lettered([])
    assert value(metrics, "rig_dead_letters_total", reason="malformed") == 2
    assert value(metrics, "rig_dead_letters_total", reason="unknown_entity") == 1


def test_the_lag_of_a_partition_let_go_is_no_longer_exported(metrics: WorkerMetrics) -> None:
    metrics.partition_lag("rig.requests", 0, 12)
    metrics.partition_lag("rig.requests", 1, 0)
    metrics.partitions_let_go({("rig.requests", 0), ("rig.requests", 7)})  # 7 was never reported
    assert value(metrics, "rig_consumer_lag", topic="rig.requests", partition="0") is None
    assert value(metrics, "rig_consumer_lag", topic="rig.requests", partition="1") == 0


def test_ready_follows_the_workers_readiness_at_each_scrape(metrics: WorkerMetrics) -> None:
    health = Health()
    metrics.watch(health)
    assert value(metrics, "rig_ready") == 0, "no partitions yet"
    health.assigned(3)
    assert value(metrics, "rig_ready") == 1
    health.waiting("Redis", "connection refused")
    assert value(metrics, "rig_ready") == 0


def test_the_waits_of_every_watched_group_are_exported_while_they_last(metrics: WorkerMetrics) -> None:
    now = [100.0]
    join, promote = Health(lambda: now[0]), Health(lambda: now[0])
    metrics.watch_waits("rig.join", join)
    metrics.watch_waits("rig.promote", promote)
    join.waiting("Kafka", "the end of rig.join-changelog-3 not read")
    now[0] = 103.5
    promote.waiting("the metadata store", "connection refused")
    now[0] = 105.0

    assert value(metrics, "rig_waiting_seconds", group="rig.join", dependency="Kafka") == 5.0
    assert value(metrics, "rig_waiting_seconds", group="rig.promote", dependency="the metadata store") == 1.5
    assert value(metrics, "rig_waiting_seconds", group="rig.promote", dependency="Kafka") is None
    join.recovered("Kafka")
    assert value(metrics, "rig_waiting_seconds", group="rig.join", dependency="Kafka") is None
    samples = [s for family in metrics.registry.collect() for s in family.samples]
    assert [s.labels for s in samples if s.name == "rig_waiting_seconds"] == [
        {"group": "rig.promote", "dependency": "the metadata store"}
    ]


def test_the_join_events_are_exported_from_its_counts_at_each_scrape(metrics: WorkerMetrics) -> None:
    assert value(metrics, "rig_join_events_total", event="joined") is None, "not a joining process"
    counts: collections.Counter[JoinEvent] = collections.Counter()
    metrics.join_events.watch(counts)
    assert {
        event: value(metrics, "rig_join_events_total", event=event) for event in JOIN_EVENTS
    } == dict.fromkeys(JOIN_EVENTS, 0), "every event from 0"
    counts.update(("joined", "out_of_order", "joined", "late"))
    assert value(metrics, "rig_join_events_total", event="joined") == 2
    assert value(metrics, "rig_join_events_total", event="out_of_order") == 1
    assert value(metrics, "rig_join_events_total", event="late") == 1


def test_model_events_and_warm_up_time(metrics: WorkerMetrics) -> None:
    metrics.model_event("risk.1", "loaded")
    metrics.model_warmed("risk.1", 0.25)
    metrics.model_event("risk.9", "failed")
    assert value(metrics, "rig_model_events_total", model_version="risk.1", event="loaded") == 1
    assert value(metrics, "rig_model_events_total", model_version="risk.1", event="warmed") == 1
    assert value(metrics, "rig_model_events_total", model_version="risk.9", event="failed") == 1
    assert value(metrics, "rig_model_warm_seconds", model_version="risk.1") == 0.25


def test_the_promoter_gauges_follow_its_latest_status(metrics: WorkerMetrics) -> None:
    entry: dict[str, object] = {
        "n": 40,
        "mean_gain": 0.02,
        "ci_low": None,
        "ci_high": 0.5,
        "p_value": 0.3,
        "checks": [],
    }
    metrics.record_promoter({"golden": "risk.1", "challengers": {"risk.2": entry, "risk.3": entry}})
    metrics.record_promoter({"golden": "risk.1", "challengers": {"risk.2": {**entry, "n": 41}}})
    metrics.decided("keep")

    assert value(metrics, "rig_promoter_n", challenger="risk.2") == 41
    assert value(metrics, "rig_promoter_mean_gain", challenger="risk.2") == 0.02
    assert math.isnan(value(metrics, "rig_promoter_ci_low", challenger="risk.2") or 0.0), "unknown yet"
    assert value(metrics, "rig_promoter_ci_high", challenger="risk.2") == 0.5
    assert value(metrics, "rig_promoter_p_value", challenger="risk.2") == 0.3
    assert value(metrics, "rig_promoter_n", challenger="risk.3") is None, "no longer tested"
    assert value(metrics, "rig_promoter_decisions_total", action="keep") == 1


async def scrape(
    settings: RigSettings, registry: CollectorRegistry, *headers: dict[str, str]
) -> list[tuple[int, str, str]]:
    """(status, content type, body) of GET /metrics with each set of headers, through the app's own
    aiohttp application."""
    app = make_app(settings)
    install_metrics_page(app, registry)
    app.web.init_server()
    async with TestClient(TestServer(aiohttp_app(app))) as client:
        answers = []
        for sent in headers:
            response = await client.get("/metrics", headers=sent)
            answers.append((response.status, response.headers["Content-Type"], await response.text()))
        return answers


def test_the_metrics_page_serves_the_registry_in_prometheus_text_format(
    tmp_path: Path, metrics: WorkerMetrics
) -> None:
    metrics.consumed(7)
    [(status, content_type, body)] = asyncio.run(scrape(RigSettings(home=tmp_path), metrics.registry, {}))

    assert status == 200 and content_type.startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert set(EXPORTED) <= set(families)
    [requests] = families["rig_requests"].samples[:1]
    assert requests.name == "rig_requests_total" and requests.value == 7


def test_with_a_token_the_metrics_page_requires_it(tmp_path: Path, metrics: WorkerMetrics) -> None:
    settings = RigSettings(home=tmp_path, web_token="s3cret")  # type: ignore[arg-type]
    anonymous, bearer = asyncio.run(
        scrape(settings, metrics.registry, {}, {"Authorization": "Bearer s3cret"})
    )
    assert anonymous[0] == 401
    assert bearer[0] == 200 and "rig_requests_total 0.0" in bearer[2]


def test_the_metrics_page_holds_the_join_processes_samples_labelled_with_their_index(
    tmp_path: Path, metrics: WorkerMetrics
) -> None:
    """RIG_JOIN_PROCESSES: one scrape of the worker gives its own samples and each child's, labelled; a
    child that does not answer is `rig_join_process_up` 0, and the page is still whole."""
    metrics.consumed(7)
    child = WorkerMetrics(CollectorRegistry())
    child_counts: collections.Counter[JoinEvent] = collections.Counter({"joined": 5, "orphans": 2})
    child.join_events.watch(child_counts)
    child.partition_lag("rig.predictions", 3, 42)
    child.dead_lettered(["malformed"])

    async def scrape_with_a_child() -> tuple[int, str]:
        child_app = make_app(RigSettings(home=tmp_path / "child"))
        install_metrics_page(child_app, child.registry)
        child_app.web.init_server()
        async with TestServer(aiohttp_app(child_app)) as child_server:
            gone = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
            app = make_app(RigSettings(home=tmp_path))
            install_metrics_page(app, metrics.registry, [str(child_server.make_url("/metrics")), gone])
            app.web.init_server()
            async with TestClient(TestServer(aiohttp_app(app))) as client:
                response = await client.get("/metrics")
                return response.status, await response.text()

    status, body = asyncio.run(scrape_with_a_child())
    assert status == 200
    types = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "one family per name"
    families = {family.name: family for family in text_string_to_metric_families(body)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    assert samples[("rig_requests_total", ())] == 7, "the worker's own, unlabelled"
    assert samples[("rig_requests_total", (("join_process", "0"),))] == 0
    assert samples[("rig_join_events_total", (("event", "joined"), ("join_process", "0")))] == 5
    assert samples[("rig_join_events_total", (("event", "orphans"), ("join_process", "0")))] == 2
    assert (
        samples[
            ("rig_consumer_lag", (("join_process", "0"), ("partition", "3"), ("topic", "rig.predictions")))
        ]
        == 42
    )
    assert samples[("rig_dead_letters_total", (("join_process", "0"), ("reason", "malformed")))] == 1
    assert samples[("rig_join_process_up", (("join_process", "0"),))] == 1
    assert samples[("rig_join_process_up", (("join_process", "1"),))] == 0
    assert not [key for key in samples if ("join_process", "1") in key[1] and key[0] != "rig_join_process_up"]


def test_a_join_process_page_that_is_not_prometheus_text_counts_as_no_answer() -> None:
    [up] = with_join_processes([], ["<html>502 Bad Gateway</html>"])
    assert [(s.labels, s.value) for s in up.samples] == [({"join_process": "0"}, 0.0)]
