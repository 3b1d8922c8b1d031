"""A worker's `/metrics` on the real broker, Redis and Feast: N requests move the counters by exactly N."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.cli.clients import produce_requests
from rig.processes import stop_processes
from rig.wire.records import Prediction
from sim.deploy import start_worker
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.e2e.conftest import (
    Samples,
    consume,
    deploy_with_shadow,
    eventually,
    get_json,
    sample,
    scrape,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e
REQUESTS = 300


def test_n_requests_move_requests_predictions_and_end_to_end_by_exactly_n(tmp_path: Path) -> None:
    deployment = deploy_with_shadow(
        tmp_path, "better", WorldSettings(seed=37, entities=400, days=3), rounds=20
    )
    settings, versions = deployment.settings, deployment.versions
    port = free_port()
    log = settings.home / "metrics-worker.log"
    worker = start_worker(settings, log, log_level="INFO", web_port=port)
    try:
        eventually(lambda: get_json(f"http://127.0.0.1:{port}/readyz")["ready"], 120, "the worker ready")
        before, types = scrape(port)
        requests = list(synthetic_requests(deployment.world_settings, REQUESTS, seed=9))
        assert produce_requests(settings, requests) == REQUESTS
        ids = {r.request_id for r in requests}
        predictions = consume(
            settings,
            settings.topic("predictions"),
            Prediction,
            REQUESTS,
            timeout_s=60,
            where=lambda p: p.request_id in ids,
            processes=[worker],
        )
        assert len(predictions) == REQUESTS
        # The requests topic's lag is read every second: wait until it shows everything consumed.
        after, _ = eventually(lambda: caught_up(port, settings.topic("requests")), 30, "no lag")
    finally:
        stop_processes([worker])
        print(f"----- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("rig_requests_total") == REQUESTS
    assert grew("rig_predictions_total") == REQUESTS
    assert grew("rig_end_to_end_seconds_count") == REQUESTS
    assert 0 < grew("rig_end_to_end_seconds_sum") < 60 * REQUESTS
    assert grew("rig_batch_size_sum") == REQUESTS
    batches = grew("rig_batch_size_count")
    assert batches >= 1 and grew("rig_stage_seconds_count", stage="predict") == batches
    golden = {"model_version": versions["golden"], "role": "golden"}
    assert grew("rig_model_score_count", **golden) == REQUESTS
    assert grew("rig_model_score_bucket", le="+Inf", **golden) == REQUESTS
    assert grew("rig_model_score_count", model_version=versions["better"], role="experiment") == REQUESTS
    assert total(after, "rig_dead_letters_total") == total(before, "rig_dead_letters_total") == 0
    assert sample(after, "rig_ready") == 1
    for version in versions.values():
        assert sample(after, "rig_model_events_total", model_version=version, event="loaded") == 1
        assert sample(after, "rig_model_events_total", model_version=version, event="warmed") == 1
    assert types["rig_cache_lookups"] == "counter", "the cache's metrics are on the same page"
    assert types["process_cpu_seconds"] == "counter", "and prometheus_client's process metrics"


def total(samples: Samples, name: str) -> float:
    """The sum of `name` over all its labels."""
    return sum(v for (sample_name, _), v in samples.items() if sample_name == name)


def caught_up(port: int, topic: str) -> tuple[Samples, dict[str, str]] | None:
    """A scrape whose lag of `topic` is reported and 0 on every partition the worker holds, or None."""
    scraped = scrape(port)
    lags = [
        v
        for (name, labels), v in scraped[0].items()
        if name == "rig_consumer_lag" and ("topic", topic) in labels
    ]
    return scraped if lags and not any(lags) else None
