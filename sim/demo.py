"""`make demo`: the rig end to end on the synthetic world, told as a story.

Predictions at a steady rate and from a backlog; then the world's true outcomes of those requests flow
back, the worker's promoter (in `auto` mode) promotes the better challenger with its evidence and never
the worse one; last, a PNG of the evidence. Every run starts from fresh routing and consumer groups and
trains new model versions, so a second run tells the same story instead of continuing the first.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich.console import Console

from rig.config import RigSettings
from sim.settings import WorldSettings

if TYPE_CHECKING:
    from rig.feedback.metadata import EvidencePoint, MetadataStore
    from rig.wire.records import Decision, Outcome, Prediction, Request
    from sim.world import World

console = Console()
MODELS = {"golden": "golden", "better": "better", "worse": "worse"}
"""Model name → feature set (`sim.world.FEATURE_SETS`): the golden and its two shadow challengers."""
DEMO_REQUESTS = 20_000
PACED_REQUESTS = 3_000
PACED_RATE = 300
AFTER_PROMOTION_REQUESTS = 1_000
OUTCOME_ROUNDS = 10
OUTCOME_DELAY_S = 1.0
"""Median delay of an outcome after its request, on the world's clock."""
PROMOTER = {
    "promoter_mode": "auto",
    # The production default: a guardrail against deciding on the first few hundred rows. The
    # better model's gain needs more than that anyway (a few thousand paired outcomes here).
    "promoter_min_samples": 1_000,
    # Outcomes come within seconds of their request: a fixed window, so that every run counts rows
    # alike instead of learning W from the label delays earlier runs recorded.
    "promoter_label_window_s": 10.0,
}
"""The demo worker's promoter settings (`RIG_PROMOTER_*`)."""
OUTCOME_RATE = 400
"""Outcomes per second: a round flows for longer than the promoter's status interval (5 s), so that
each round ends a few seconds after the promoter last recorded where its tests stand."""
PROMOTION_WAIT_S = 60.0
"""How long the promoter may take to promote after the last outcome was sent."""


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then how long it took."""
    console.print(f"[bold cyan]▶ {title}[/]")
    started = time.perf_counter()
    yield
    console.print(f"  [dim]done in {time.perf_counter() - started:.1f} s[/]")


def run_demo(settings: RigSettings, world_settings: WorldSettings) -> None:
    """Topics, feature store, training, routing, a worker, requests in, predictions out, outcomes back,
    a promotion, a PNG of the evidence and a summary.

    Raises:
        RuntimeError: requests unanswered, no promotion within the demo's bounds, or the worse
            challenger promoted.
    """
    from rig.feedback.evidence_plot import write_evidence_png
    from rig.feedback.metadata import MetadataStore
    from rig.feedback.promotion import PREVIOUS_GOLDEN_EXPERIMENT
    from sim.deploy import start_worker
    from sim.traffic import synthetic_requests

    world, versions = deploy(settings, world_settings)
    dashboard = f"http://{settings.web_bind}:{settings.web_port}/dashboard"
    env = {f"RIG_{name.upper()}": str(value) for name, value in PROMOTER.items()}
    env["RIG_PREDICTION_TIMINGS"] = "true"  # the latency printed is each prediction's kafka_to_publish
    store = MetadataStore(settings.resolved_metadata_url)
    seeds = itertools.count(time.time_ns() % 2**31)  # new request ids every run

    def requests(count: int) -> list[Request]:
        return list(synthetic_requests(world_settings, count, seed=next(seeds)))

    log_path = settings.home / "demo-worker.log"
    with socket.socket() as probe:  # a worker that cannot bind its web port would never answer
        if probe.connect_ex((settings.web_bind, settings.web_port)) == 0:
            raise RuntimeError(
                f"{settings.web_bind}:{settings.web_port} is taken (another worker?): stop it, or set "
                "RIG_WEB_PORT to a free port"
            )
    worker = start_worker(settings, log_path, web_port=settings.web_port, env=env)
    try:
        with step("Start a worker (rig-worker, promoter in auto mode) and wait until it answers a request"):
            console.print(f"  worker log: {log_path}")
            console.print(f"  dashboard: open {dashboard} while the demo runs (the worker stops with it)")
            send_and_read(settings, requests(1), timeout_s=180)
        with step(f"Steady traffic: {PACED_REQUESTS:,} requests at {PACED_RATE:,}/s"):
            paced_requests = requests(PACED_REQUESTS)
            paced = send_and_read(settings, paced_requests, rate=PACED_RATE)
        with step(f"Backlog: {DEMO_REQUESTS:,} requests at once"):
            backlog_requests = requests(DEMO_REQUESTS)
            started = time.perf_counter()
            backlog = send_and_read(settings, backlog_requests)
            elapsed = time.perf_counter() - started
        answered = [*paced_requests, *backlog_requests]
        level = 1 - settings.promoter_alpha / 2  # the decision rule's intervals: 1 - α/m, m = 2 challengers
        with step(
            f"Outcomes: the world's true labels of those {len(answered):,} requests flow back in "
            f"{OUTCOME_ROUNDS} rounds (gain: golden − challenger log loss; intervals always valid at "
            f"{level:.1%})"
        ):
            outcomes = world_outcomes(world, answered, next(seeds))
            promotion = feed_outcomes(settings, store, outcomes, versions)
        with step(f"After the promotion: {AFTER_PROMOTION_REQUESTS:,} requests at once"):
            after = send_and_read(settings, requests(AFTER_PROMOTION_REQUESTS))
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    decisions = run_decisions(store, versions)
    worse_promoted = [
        d for d in decisions if d.action == "promote" and d.challenger_version == versions["worse"]
    ]
    if worse_promoted:
        raise RuntimeError(f"the worse challenger was promoted: {worse_promoted}")
    worse_points = store.promoter_evidence(versions["golden"], versions["worse"], limit=1)
    png = write_evidence_png(
        store.promoter_evidence(golden=versions["golden"]), decisions, settings.home / "demo-evidence.png"
    )

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
    console.print(f"  promoted: better {versions['better']}, {decision_text(promotion)}")
    worse_at_end = point_text(worse_points[-1]) if worse_points else "no evidence recorded"
    console.print(f"  never promoted: worse {versions['worse']}, at the end {worse_at_end}")
    served = sum(p.golden.model_version == versions["better"] for p in after)
    shadowed = sum(
        (e.experiment, e.model_version) == (PREVIOUS_GOLDEN_EXPERIMENT, versions["golden"])
        for p in after
        for e in p.experiments
    )
    console.print(
        f"  after the promotion: {served:,} of {len(after):,} requests answered by {versions['better']}, "
        f"{shadowed:,} scored by {versions['golden']} as the {PREVIOUS_GOLDEN_EXPERIMENT} shadow"
    )
    console.print(f"  evidence: {png}  (live: {dashboard} while a worker runs)")
    console.print("  next: .venv/bin/rig tail --from-beginning --limit 5;  .venv/bin/rig status")


def deploy(settings: RigSettings, world_settings: WorldSettings) -> tuple[World, dict[str, str]]:
    """Deploy the world and its models (new versions every run) and route them afresh: what an earlier
    run left on the control topic, in the workers' consumer groups and in the promoter's saved state is
    cleared first.

    Returns:
        The world, and the model version of each name of MODELS.
    """
    from rig.feedback.metadata import MetadataStore
    from rig.models.registry import ModelRegistry
    from rig.routing.control import publish_control
    from rig.routing.table import set_golden_event, start_experiment_event
    from sim.deploy import clear_routing, prepare, skip_backlog

    with step(f"Deploy the synthetic world ({world_settings.entities} entities): topics, Feast, training"):
        world, versions = prepare(
            settings, MODELS, world_settings, on_step=lambda name: console.print(f"  · {name}")
        )
        registry = ModelRegistry(settings.model_dir)
        for name, version in versions.items():
            meta = registry.meta(version)
            console.print(
                f"  {version:<10} {name:<7} held-out AUC {meta.metrics['auc']:.3f}  "
                f"log loss {meta.metrics['log_loss']:.4f}  sha256 {meta.sha256[:12]}…"
            )
    with step("Routing on the control topic: golden + two shadow experiments (an earlier run's cleared)"):
        clear_routing(settings, actor="demo")
        skip_backlog(settings)
        # The promoter would carry over an earlier run's watermark and counters (and its offset,
        # which the moved group replaces): each run's tests start from nothing.
        store = MetadataStore(settings.resolved_metadata_url)
        try:
            store.forget_promoter_state()
        finally:
            store.close()
        publish_control(settings, set_golden_event(versions["golden"], actor="demo"))
        for name in ("better", "worse"):
            publish_control(settings, start_experiment_event(name, versions[name], "shadow", actor="demo"))
    return world, versions


def send_and_read(
    settings: RigSettings, requests: Sequence[Request], rate: float | None = None, timeout_s: float = 300
) -> list[Prediction]:
    """Send requests (paced to `rate` per second) and read their predictions.

    Raises:
        RuntimeError: not every request was answered within the timeout.
    """
    from rig.cli.clients import produce_requests, tail_predictions

    sent = produce_requests(settings, requests, rate)
    ids = {r.request_id for r in requests}
    predictions = list(tail_predictions(settings, True, limit=sent, timeout_s=timeout_s, request_ids=ids))
    if len(predictions) < len(requests):
        raise RuntimeError(f"only {len(predictions)} of {len(requests)} requests answered in {timeout_s} s")
    return predictions


def world_outcomes(world: World, requests: Sequence[Request], seed: int) -> list[Outcome]:
    """The true outcomes of `requests` (`sim.world.make_outcomes`), in the order they become known."""
    from sim.world import make_outcomes, outcome_records

    frame = pd.DataFrame(
        {
            "request_id": [r.request_id for r in requests],
            "entity_id": [r.entity_id for r in requests],
            "event_time": pd.to_datetime([r.event_time for r in requests], unit="ms", utc=True),
        }
    )
    return outcome_records(make_outcomes(world, frame, seed=seed, delay_median_s=OUTCOME_DELAY_S))


def feed_outcomes(
    settings: RigSettings, store: MetadataStore, outcomes: Sequence[Outcome], versions: dict[str, str]
) -> Decision:
    """Send `outcomes` in OUTCOME_ROUNDS rounds at OUTCOME_RATE until the promoter promotes, printing
    after each round where its tests stand and every decision it took; returns the promotion.

    Raises:
        RuntimeError: no promotion PROMOTION_WAIT_S after the last outcome, or one of another challenger.
    """
    from rig.cli.clients import produce_outcomes

    golden, names = versions["golden"], {version: name for name, version in versions.items()}
    sent, shown = 0, set()
    for number, chunk in enumerate(np.array_split(np.arange(len(outcomes)), OUTCOME_ROUNDS), start=1):
        sent += produce_outcomes(settings, [outcomes[i] for i in chunk], rate_per_s=OUTCOME_RATE)
        promotion = wait_for_promotion(store, golden, timeout_s=0)
        standing = "; ".join(
            f"{name} {point_text(points[-1])}"
            for name in ("better", "worse")
            if (points := store.promoter_evidence(golden, versions[name], limit=1))
        )
        console.print(
            f"  round {number}/{OUTCOME_ROUNDS}: {sent:,} outcomes sent; {standing or 'no pair yet'}"
        )
        for decision in run_decisions(store, versions):
            if decision.decision_id not in shown:
                shown.add(decision.decision_id)
                console.print(f"    decision: {decision_line(decision, names)}")
        if promotion is not None:
            break
    else:
        promotion = wait_for_promotion(store, golden, PROMOTION_WAIT_S)
    if promotion is None:
        raise RuntimeError(
            f"better {versions['better']} not promoted within {PROMOTION_WAIT_S:.0f} s of the last outcome "
            f"(see {settings.home / 'demo-worker.log'}, .venv/bin/rig status)"
        )
    if promotion.challenger_version != versions["better"]:
        raise RuntimeError(f"promoted {promotion.challenger_version}, not better {versions['better']}")
    return promotion


def wait_for_promotion(store: MetadataStore, golden: str, timeout_s: float) -> Decision | None:
    """The promotion of a challenger of `golden` once the promoter recorded it; None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        promoted = next((d for d in store.decisions(golden=golden) if d.action == "promote"), None)
        if promoted is not None or time.monotonic() >= deadline:
            return promoted
        time.sleep(0.5)


def run_decisions(store: MetadataStore, versions: dict[str, str]) -> list[Decision]:
    """The decisions about this run's models (earlier runs trained other versions), oldest first."""
    ours = set(versions.values())
    return [d for d in reversed(store.decisions(1_000)) if d.golden_version in ours]


def gain_text(n: int, gain: float, low: float | None, high: float | None, p_value: float | None) -> str:
    """Evidence in one line: paired outcomes, mean loss gain (golden − challenger; > 0: the challenger
    is better) with its always-valid interval (None: unbounded yet), p-value (None: not tested yet)."""
    bounds = f"[{-np.inf if low is None else low:+.4f}, {np.inf if high is None else high:+.4f}]"
    p_text = "–" if p_value is None else f"{p_value:.2g}"
    return f"n {n:,}, gain {gain:+.4f} {bounds}, p {p_text}"


def point_text(point: EvidencePoint) -> str:
    """`gain_text` of an evidence point (already golden − challenger)."""
    return gain_text(point.n, point.mean_gain, point.ci_low, point.ci_high, point.p_value)


def decision_text(decision: Decision) -> str:
    """`gain_text` of a decision, whose estimate is challenger − golden: negated, bounds swapped."""
    gain = -decision.estimate + 0.0  # + 0.0: no -0.0
    return gain_text(decision.n, gain, -decision.ci_high, -decision.ci_low, decision.p_value)


def decision_line(decision: Decision, names: dict[str, str]) -> str:
    """A decision in one line: action, challenger (by its name in `names`, version → name), evidence
    and the state of every check."""
    challenger = decision.challenger_version or "-"
    checks = " · ".join(f"{check.name} {check.state}" for check in decision.checks)
    return (
        f"{decision.action} {names.get(challenger, '?')} {challenger} over {decision.golden_version}: "
        f"{decision_text(decision)}; checks {checks}"
    )
