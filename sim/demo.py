"""`make demo`: the rig end to end on the synthetic world, with a printed summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from rig.config import RigSettings
from sim.settings import WorldSettings

if TYPE_CHECKING:
    from rig.wire.records import Prediction

console = Console()
DEMO_REQUESTS = 20_000
PACED_REQUESTS = 3_000
PACED_RATE = 300


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then how long it took."""
    console.print(f"[bold cyan]▶ {title}[/]")
    started = time.perf_counter()
    yield
    console.print(f"  [dim]done in {time.perf_counter() - started:.1f} s[/]")


def run_demo(settings: RigSettings, world: WorldSettings) -> None:
    """Topics, feature store, training, routing, a worker, requests in, predictions out, a summary."""
    from rig.models.registry import ModelRegistry
    from rig.routing.control import publish_control
    from rig.routing.table import set_golden_event, start_experiment_event
    from sim.deploy import prepare, start_worker

    models = {"golden": "golden", "better": "better", "worse": "worse"}
    with step(f"Deploy the synthetic world ({world.entities} entities): topics, Feast, training"):
        _, versions = prepare(settings, models, world, on_step=lambda name: console.print(f"  · {name}"))
        registry = ModelRegistry(settings.model_dir)
        for name, version in versions.items():
            meta = registry.meta(version)
            console.print(
                f"  {version:<10} {name:<7} held-out AUC {meta.metrics['auc']:.3f}  "
                f"log loss {meta.metrics['log_loss']:.4f}  sha256 {meta.sha256[:12]}…"
            )

    with step("Routing on the control topic: golden + two shadow experiments"):
        publish_control(settings, set_golden_event(versions["golden"], actor="demo"))
        for name in ("better", "worse"):
            publish_control(settings, start_experiment_event(name, versions[name], "shadow", actor="demo"))

    with step("Start a worker (rig-worker) and wait until it answers a first request"):
        log_path = settings.home / "demo-worker.log"
        worker = start_worker(settings, log_path)
        console.print(f"  worker log: {log_path}")
    try:
        send_and_read(settings, world, 1, rate=None, timeout_s=180)
        with step(f"Steady traffic: {PACED_REQUESTS:,} requests at {PACED_RATE:,}/s"):
            paced = send_and_read(settings, world, PACED_REQUESTS, rate=PACED_RATE)
        with step(f"Backlog: {DEMO_REQUESTS:,} requests at once"):
            started = time.perf_counter()
            backlog = send_and_read(settings, world, DEMO_REQUESTS, rate=None)
            elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    latencies = np.array([p.timings_ms["kafka_to_publish"] for p in paced])
    p50, p99 = np.percentile(latencies, [50, 99])
    console.print("[bold green]Summary[/]")
    console.print(
        f"  golden {versions['golden']}; shadows better={versions['better']} worse={versions['worse']}"
    )
    console.print(
        f"  steady {PACED_RATE:,}/s: {len(paced):,} predictions; latency request-in-Kafka → prediction "
        f"published p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    console.print(
        f"  backlog: {len(backlog):,} predictions in {elapsed:.1f} s "
        f"= {len(backlog) / elapsed:,.0f} requests/s"
    )
    agree = np.mean([abs(p.golden.score - e.score) < 0.1 for p in backlog for e in p.experiments])
    console.print(f"  shadows agree with golden within 0.1 on {agree:.0%} of scores")
    console.print("  next: .venv/bin/rig tail --from-beginning --limit 5;  .venv/bin/rig experiment list")


def send_and_read(
    settings: RigSettings, world: WorldSettings, count: int, rate: float | None, timeout_s: float = 300
) -> list[Prediction]:
    """Send `count` synthetic requests (paced to `rate` per second) and read their predictions.

    Raises:
        RuntimeError: not every request was answered within the timeout.
    """
    from rig.cli.clients import produce_requests, tail_predictions
    from sim.traffic import synthetic_requests

    requests = list(synthetic_requests(world, count, seed=time.time_ns() % 2**32))
    sent = produce_requests(settings, requests, rate)
    ids = {r.request_id for r in requests}
    predictions = list(tail_predictions(settings, True, limit=sent, timeout_s=timeout_s, request_ids=ids))
    if len(predictions) < count:
        raise RuntimeError(f"only {len(predictions)} of {count} requests answered in {timeout_s} s")
    return predictions
