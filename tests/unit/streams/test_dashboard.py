"""The worker's dashboard: a page that needs nothing from outside, its data (routing, live metrics, dead
letters, the promoter's evidence from the metadata store) and the evidence PNG, through the app's own
aiohttp application. The page as a browser draws it: tests/e2e/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram

from rig.config import RigSettings
from rig.feedback.metadata import EvidencePoint, MetadataStore
from rig.feedback.sequential import Evidence, new_decision
from rig.routing.table import control_key, fold, set_golden_event, start_experiment_event
from streams.app import make_app
from streams.dashboard import install_dashboard, metrics_data
from tests.support.web import aiohttp_app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def dashboard_app(settings: RigSettings, metadata: MetadataStore | None) -> faust.App:
    """A worker app with the dashboard, serving golden g.1 and shadow experiment x (c.2)."""
    table = fold(
        (control_key(e), e)
        for e in (set_golden_event("g.1", "t"), start_experiment_event("x", "c.2", "shadow", "t"))
    )

    async def get_runtime() -> Any:
        return SimpleNamespace(routing=table)

    app = make_app(settings)
    install_dashboard(app, settings, get_runtime, metadata)
    app.web.init_server()
    return app


async def get_all(app: faust.App, *paths: str) -> list[tuple[int, str, bytes]]:
    """(status, content type, body) of a GET of each path."""
    async with TestClient(TestServer(aiohttp_app(app))) as client:
        answers = []
        for path in paths:
            response = await client.get(path)
            answers.append((response.status, response.content_type, await response.read()))
        return answers


def test_the_page_its_data_and_the_evidence_png(settings: RigSettings, store: MetadataStore) -> None:
    for at_ms, n in ((1_000, 300), (6_000, 600)):
        point = EvidencePoint(at_ms, "g.1", "c.2", n, 0.02, 0.005, 0.035, 0.01, 0.002)
        store.record_promoter_evidence(at_ms, "g.1", [point])
    promoted = Evidence(600, -0.02, -0.035, -0.005, 50.0)
    store.record_decision(
        new_decision(6_000, "promote", "auto", ("g.1", "c.2"), "better", "log_loss", promoted)
    )
    app = dashboard_app(settings, store)

    page, data, png = asyncio.run(get_all(app, "/dashboard", "/dashboard/data", "/dashboard/evidence.png"))

    status, content_type, body = page
    html = body.decode()
    assert (status, content_type) == (200, "text/html")
    assert "data-challenger" in html and "data-reason" in html, "the hooks the browser test finds"
    assert re.search(r"https?:|src=|@import", html) is None, "no external URL: the page works offline"

    status, content_type, body = data
    assert (status, content_type) == (200, "application/json")
    shown = json.loads(body)
    assert shown["routing"]["golden"] == "g.1"
    assert [
        (e["name"], e["model_version"], e["mode"], e["live"]) for e in shown["routing"]["experiments"]
    ] == [("x", "c.2", "shadow", True)]
    (pair,) = shown["evidence"]["pairs"]
    assert (pair["golden"], pair["challenger"], pair["current"], pair["min_effect"]) == (
        "g.1",
        "c.2",
        True,
        0.002,
    )
    assert pair["points"] == [[300, 0.02, 0.005, 0.035, 0.01, 1_000], [600, 0.02, 0.005, 0.035, 0.01, 6_000]]
    assert [(d["action"], d["n"], d["gain"]) for d in pair["decisions"]] == [("promote", 600, 0.02)]
    assert set(shown["metrics"]) == {
        "requests_total",
        "predictions_total",
        "end_to_end_seconds",
        "dead_letters_total",
        "stage_seconds",
    }
    assert "not read" in shown["dead_letters"]["error"], "this test's dlq topic does not exist"

    status, content_type, body = png
    assert (status, content_type) == (200, "image/png")
    assert body[:8] == PNG_SIGNATURE and len(body) > 10_000


def test_without_a_metadata_store_the_page_says_so(settings: RigSettings) -> None:
    data, png = asyncio.run(
        get_all(dashboard_app(settings, None), "/dashboard/data", "/dashboard/evidence.png")
    )
    assert data[0] == 200 and json.loads(data[2])["evidence"] == {"error": "no metadata store"}
    assert png[0] == 503


def test_metrics_are_read_by_name_and_absent_ones_are_none() -> None:
    registry = CollectorRegistry()
    assert set(metrics_data(registry).values()) == {None}

    Counter("rig_requests", "requests", registry=registry).inc(5)
    Counter("rig_predictions", "predictions", registry=registry).inc(4)
    dead = Counter("rig_dead_letters", "dead letters", ["reason"], registry=registry)
    dead.labels("invalid JSON").inc(2)
    dead.labels("oversized").inc()
    end_to_end = Histogram("rig_end_to_end_seconds", "latency", buckets=(0.1, 1.0), registry=registry)
    end_to_end.observe(0.05)
    end_to_end.observe(0.5)
    stage = Histogram("rig_stage_seconds", "stages", ["stage"], buckets=(0.01,), registry=registry)
    stage.labels("decode").observe(0.002)
    stage.labels("predict").observe(0.02)
    stage.labels("predict").observe(0.04)

    shown = metrics_data(registry)

    assert (shown["requests_total"], shown["predictions_total"]) == (5.0, 4.0)
    assert shown["dead_letters_total"] == {"invalid JSON": 2.0, "oversized": 1.0}
    assert shown["end_to_end_seconds"] == {
        "count": 2.0,
        "sum": pytest.approx(0.55),
        "buckets": [[0.1, 1.0], [1.0, 2.0], [None, 2.0]],
    }
    assert shown["stage_seconds"] == {
        "decode": {"count": 1.0, "sum": pytest.approx(0.002)},
        "predict": {"count": 2.0, "sum": pytest.approx(0.06)},
    }
    json.dumps(shown, allow_nan=False)  # +Inf is a None bound: the page's JSON.parse takes it
