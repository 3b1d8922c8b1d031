"""`make demo`: the rig end to end on the synthetic world, with a printed summary."""

from __future__ import annotations

import os
import subprocess
import sys
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
    from rig.data import FEATURE_SETS
    from rig.features import FeatureStoreClient, prepare_world
    from rig.routing import set_golden_event, start_experiment_event
    from rig.topics import ensure_topics
    from rig.train import load_transform_spec, split_by_time, train_and_register, training_frame
    from rig.transform import fit

    with step(f"Kafka topics on {settings.kafka_bootstrap}"):
        created = ensure_topics(settings)
        console.print(f"  created {len(created)} topic(s) with prefix {settings.topic_prefix!r}")

    client = FeatureStoreClient(settings)
    with step(f"Synthetic world → Feast offline store ({settings.world_entities} entities)"):
        world = prepare_world(settings)
        client.apply()
    with step("Materialize features into Redis"):
        client.materialize(world.start, world.end, progress=True)

    with step("Point-in-time training data from Feast historical retrieval"):
        frame = training_frame(world, client.historical, n_events=20_000, seed=settings.world_seed)
        console.print(f"  {len(frame)} labelled events, label rate {frame['label'].mean():.3f}")

    versions = {}
    with step("Train golden and challengers (XGBoost, stored as UBJ + SHA-256)"):
        transform = fit(load_transform_spec(settings), split_by_time(frame)[0])  # one for all models
        for feature_set in FEATURE_SETS:
            report = train_and_register(settings, frame, feature_set=feature_set, transform=transform)
            versions[feature_set] = report.meta.version
            console.print(
                f"  {report.meta.version:<10} {feature_set:<7} held-out AUC {report.auc:.3f}  "
                f"log loss {report.log_loss:.4f}"
            )

    with step("Routing on the control topic: golden + two shadow experiments"):
        publish_control(settings, set_golden_event(versions["golden"], actor="demo"))
        for name in ("better", "worse"):
            publish_control(settings, start_experiment_event(name, versions[name], "shadow", actor="demo"))

    with step("Start a worker (rig worker), send requests, read predictions"):
        log_path = settings.home / "demo-worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "rig.cli", "worker", "--web-port", "0", "--loglevel", "warn"],
            env={**os.environ, "RIG_TOPIC_PREFIX": settings.topic_prefix},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            sent_at = time.perf_counter()
            requests = list(synthetic_requests(settings, DEMO_REQUESTS, seed=int(time.time())))
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
        f"  {sent} requests sent, {len(predictions)} predictions read in {elapsed:.1f} s "
        f"({len(predictions) / elapsed:,.0f} predictions/s including worker start-up)"
    )
    console.print(f"  latency request-in-Kafka → prediction published: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    console.print(
        "  try: .venv/bin/rig tail --from-beginning --limit 5   and   .venv/bin/rig experiment list"
    )
