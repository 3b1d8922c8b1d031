"""`make demo`: the rig end to end on the synthetic world, with a printed summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from rich.console import Console

from rig.config import RigSettings

console = Console()
DEMO_REQUESTS = 20_000


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then how long it took."""
    console.print(f"[bold cyan]▶ {title}[/]")
    started = time.perf_counter()
    yield
    console.print(f"  [dim]done in {time.perf_counter() - started:.1f} s[/]")


def run_demo(settings: RigSettings) -> None:
    """Topics, feature store, training, routing, a worker, requests in, predictions out, a summary."""
    from rig.clients import produce_requests, synthetic_requests, tail_predictions
    from rig.control import publish_control
    from rig.deploy import prepare, start_worker
    from rig.registry import ModelRegistry
    from rig.routing import set_golden_event, start_experiment_event

    models = {"golden": "golden", "better": "better", "worse": "worse"}
    with step(f"Deploy the synthetic world ({settings.world_entities} entities): topics, Feast, training"):
        _, versions = prepare(settings, models, on_step=lambda name: console.print(f"  · {name}"))
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

    with step(f"Start a worker, send {DEMO_REQUESTS:,} requests, read the predictions"):
        log_path = settings.home / "demo-worker.log"
        worker = start_worker(settings, log_path)
        try:
            requests = list(synthetic_requests(settings, DEMO_REQUESTS, seed=int(time.time())))
            sent_at = time.perf_counter()
            sent = produce_requests(settings, requests)
            ids = {r["request_id"] for r in requests}
            predictions = list(
                tail_predictions(settings, from_beginning=True, limit=sent, timeout_s=300, request_ids=ids)
            )
            elapsed = time.perf_counter() - sent_at
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        console.print(f"  worker log: {log_path}")

    latencies = np.array([p["timings_ms"]["kafka_to_publish"] for p in predictions])
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (float("nan"), float("nan"))
    console.print("[bold green]Summary[/]")
    console.print(
        f"  golden {versions['golden']}; shadows better={versions['better']} worse={versions['worse']}"
    )
    console.print(
        f"  {sent:,} requests sent, {len(predictions):,} predictions read in {elapsed:.1f} s "
        f"({len(predictions) / elapsed:,.0f} predictions/s, worker start-up included)"
    )
    console.print(f"  latency request-in-Kafka → prediction published: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    console.print("  next: .venv/bin/rig tail --from-beginning --limit 5;  .venv/bin/rig experiment list")
