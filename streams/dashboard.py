"""The worker's dashboard: `/dashboard` (one static page), `/dashboard/data` (what it draws, as JSON)
and `/dashboard/evidence.png` (the promoter's evidence, drawn on request).

The page (`dashboard.html`) is plain HTML with vanilla JavaScript and inline SVG: no build step and
no external URL, so it works offline. It polls `/dashboard/data` every few seconds and computes
rates between two polls. The data:

- routing: the routing this worker serves (golden, previous golden, experiments);
- metrics: this worker's live Prometheus metrics (`streams.metrics`), cumulative, None when absent;
- dead letters: the dlq topic counted by reason with the latest few (`rig dlq show`'s reading),
  read at most every DLQ_CACHE_S;
- evidence: the promoter's evidence history and decisions from the metadata store, per pair.

Blocking work (the metadata store, the dlq topic, matplotlib) runs on a small pool of its own, never
on the default pool the predict path's feature reads use; a request beyond its queue gets 429.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaException
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.samples import Sample

from rig.config import RigSettings
from rig.errors import RigError
from rig.feedback.evidence_plot import by_pair, write_evidence_png
from rig.feedback.metadata import MetadataStore
from rig.routing.table import RoutingTable
from rig.wire.dead_letters import Selection, read_dead_letters, summarize, summary_json
from streams.explain import BoundedPool
from streams.runtime import Runtime

EVIDENCE_POINTS = 2_000
"""The latest evidence points drawn (every pair's, a point per challenger every STATUS_S)."""
DECISIONS = 200
"""The latest decisions read to mark the charts."""
DLQ_CACHE_S = 5.0
"""How long one reading of the dlq topic is shown before it is read again."""
DLQ_IDLE_TIMEOUT_S = 3.0
"""A dlq reading that hears nothing from the broker for this long gives up (the page says why)."""
DLQ_LATEST = 5
"""How many of the latest dead letters the page lists."""
BUSY = {"error": "the dashboard is busy; try again later"}


def install_dashboard(
    app: faust.App,
    settings: RigSettings,
    get_runtime: Callable[[], Awaitable[Runtime]],
    metadata: MetadataStore | None,
) -> None:
    """Add `/dashboard`, `/dashboard/data` and `/dashboard/evidence.png` to the worker's web server."""
    page = resources.files("streams").joinpath("dashboard.html").read_text(encoding="utf-8")
    pool = BoundedPool(2, 4, "dashboard")
    dead_letters = DeadLetterView(settings, pool)

    @app.page("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        """The page."""
        return web.html(page)

    @app.page("/dashboard/data")
    async def dashboard_data(web: Any, request: Any) -> Any:
        """Routing, metrics, dead letters and the promoter's evidence, as JSON."""
        runtime = await get_runtime()
        routing = runtime.routing
        evidence = pool.submit(evidence_data, metadata, routing.golden)
        if evidence is None:
            return web.json(BUSY, status=429, headers={"Retry-After": "1"})
        body = {
            "at_ms": int(time.time() * 1000),
            "routing": routing_data(routing),
            "metrics": metrics_data(REGISTRY),
            "dead_letters": await dead_letters.summary(),
            "evidence": await evidence,
        }
        return web.json(body)

    @app.page("/dashboard/evidence.png")
    async def evidence_png(web: Any, request: Any) -> Any:
        """Every pair's confidence sequence and decisions, drawn now (`write_evidence_png`)."""
        if metadata is None:
            return web.json({"error": "no metadata store"}, status=503)
        drawing = pool.submit(evidence_png_bytes, metadata)
        if drawing is None:
            return web.json(BUSY, status=429, headers={"Retry-After": "1"})
        try:
            png = await drawing
        except RigError as error:  # the metadata store is away
            return web.json({"error": str(error)}, status=503)
        return web.bytes(png, content_type="image/png")

    # mode types a signal handler so that no function matches it (mypy rejects every one).
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_dashboard(sender: faust.App, **kwargs: object) -> None:
        pool.shutdown()


class DeadLetterView:
    """The dlq topic's summary, read on the pool at most every DLQ_CACHE_S and shared meanwhile:
    every reading starts from the topic's beginning, so pages polling at once must not each do one."""

    def __init__(self, settings: RigSettings, pool: BoundedPool) -> None:
        self._settings = settings
        self._pool = pool
        self._lock = asyncio.Lock()
        self._summary: dict[str, Any] = BUSY
        self._read_at = -math.inf

    async def summary(self) -> dict[str, Any]:
        """The latest reading (`rig dlq show --json`'s document, or {"error": why})."""
        async with self._lock:
            if time.monotonic() - self._read_at >= DLQ_CACHE_S:
                reading = self._pool.submit(dead_letter_summary, self._settings)
                if reading is not None:
                    self._summary = await reading
                    self._read_at = time.monotonic()
            return self._summary


def dead_letter_summary(settings: RigSettings) -> dict[str, Any]:
    """Every dead letter counted by reason and error type, with the latest few (blocking)."""
    topic = settings.topic("dlq")
    try:
        records = read_dead_letters(settings, idle_timeout_s=DLQ_IDLE_TIMEOUT_S)
        return summary_json(summarize(topic, records, Selection(), DLQ_LATEST))
    except (RigError, KafkaException) as error:
        return {"error": f"{topic} not read: {error}"}


def routing_data(routing: RoutingTable) -> dict[str, Any]:
    """The routing as plain values: golden, previous golden, every experiment (and whether it scores)."""
    return {
        "golden": routing.golden,
        "previous_golden": routing.previous_golden,
        "experiments": [asdict(route) | {"live": route.live} for route in routing.experiments],
    }


def metrics_data(registry: CollectorRegistry) -> dict[str, Any]:
    """The rig's metrics in `registry`, cumulative since the worker started (the page takes the
    differences between polls); a metric not registered (yet) is None.

    Summed over labels except: dead letters by `reason` (their error type), stage timings by `stage`;
    the end-to-end histogram keeps its cumulative buckets (`le`, None for +Inf) for quantiles.
    """
    samples = [sample for family in registry.collect() for sample in family.samples]
    return {
        "requests_total": _total(samples, "rig_requests_total"),
        "predictions_total": _total(samples, "rig_predictions_total"),
        "end_to_end_seconds": _histogram(samples, "rig_end_to_end_seconds"),
        "dead_letters_total": _by_label(samples, "rig_dead_letters_total", "reason"),
        "stage_seconds": _stages(samples, "rig_stage_seconds"),
    }


def _total(samples: list[Sample], name: str) -> float | None:
    values = [sample.value for sample in samples if sample.name == name]
    return float(sum(values)) if values else None


def _by_label(samples: list[Sample], name: str, label: str) -> dict[str, float] | None:
    named = [sample for sample in samples if sample.name == name]
    if not named:
        return None
    found: dict[str, float] = {}
    for sample in named:
        key = sample.labels.get(label, "")
        found[key] = found.get(key, 0.0) + sample.value
    return found


def _histogram(samples: list[Sample], name: str) -> dict[str, Any] | None:
    count = _total(samples, f"{name}_count")
    if count is None:
        return None
    buckets = _by_label(samples, f"{name}_bucket", "le") or {}
    ordered = sorted((float(le), n) for le, n in buckets.items())
    return {
        "count": count,
        "sum": _total(samples, f"{name}_sum"),
        "buckets": [[le if math.isfinite(le) else None, n] for le, n in ordered],
    }


def _stages(samples: list[Sample], name: str) -> dict[str, dict[str, float]] | None:
    counts = _by_label(samples, f"{name}_count", "stage")
    if counts is None:
        return None
    sums = _by_label(samples, f"{name}_sum", "stage") or {}
    return {stage: {"count": n, "sum": sums.get(stage, 0.0)} for stage, n in sorted(counts.items())}


def evidence_data(metadata: MetadataStore | None, golden: str | None) -> dict[str, Any]:
    """The promoter's evidence per (golden, challenger) pair, the current golden's pairs first, each
    with its points `[n, mean gain, ci low, ci high, p-value, at ms]` (oldest first) and its
    decisions (gain = -estimate: the points' sign); or {"error": why} (blocking)."""
    if metadata is None:
        return {"error": "no metadata store"}
    try:
        points = metadata.promoter_evidence(limit=EVIDENCE_POINTS)
        decisions = metadata.decisions(DECISIONS)
    except RigError as error:
        return {"error": str(error)}
    pairs: list[dict[str, Any]] = [
        {
            "golden": pair_golden,
            "challenger": challenger,
            "current": pair_golden == golden,
            "min_effect": series[-1].min_effect,
            "points": [[p.n, p.mean_gain, p.ci_low, p.ci_high, p.p_value, p.at_ms] for p in series],
            "decisions": [
                {
                    "action": d.action,
                    "n": d.n,
                    "gain": -d.estimate + 0.0,
                    "decided_at": d.decided_at,
                    "reason": d.reason,
                }
                for d in reversed(decisions)  # oldest first, as the points
                if (d.golden_version, d.challenger_version) == (pair_golden, challenger)
            ],
        }
        for (pair_golden, challenger), series in by_pair(points).items()
    ]
    pairs.sort(key=lambda pair: (not pair["current"], -pair["points"][-1][5]))
    return {"pairs": pairs}


def evidence_png_bytes(metadata: MetadataStore) -> bytes:
    """`write_evidence_png` of the latest evidence and decisions, as PNG bytes (blocking)."""
    points = metadata.promoter_evidence(limit=EVIDENCE_POINTS)
    decisions = metadata.decisions(DECISIONS)
    with tempfile.TemporaryDirectory(prefix="rig-evidence-") as folder:
        return write_evidence_png(points, decisions, Path(folder) / "evidence.png").read_bytes()
