"""The promoter's cases beyond the primary test, for bench/promoter_sim.py: label-dependent delays
(as-arrived vs matured cohorts), guardrails and the A/B sample ratio test.

Time: request i is predicted at i seconds (STEP_MS); its label comes after a lognormal delay whose
median is NEGATIVE_MEDIAN_S for a negative and POSITIVE_FACTOR times that for a positive
(`sim.world.label_delays`). The promoter looks after every `every` joined outcomes (arrival order),
so "outcomes" on every axis are joined outcomes, as the live promoter counts them. The label window
W is learned by `DelayModel` from a history of HISTORY_OUTCOMES delays (what the metadata store
holds) and then fixed.

Serving: one batch every BATCH_REQUESTS requests; per batch, log(challenger / golden scoring time)
~ N(log slowdown, LATENCY_SD) and the challenger fails it with probability `fail_rate`.

A/B: entities (the world's, with its Zipf-like popularity) are assigned by the rig's own hash
(`rig.serving.dispatch.assignment_draws`) to a challenger arm of share AB_SHARE; only its requests
are paired; the sample ratio test counts entities per arm.

Everything is vectorised across runs; the first CHECKED_RUNS runs of every case also go through
`PromotionLoop` itself (joined rows in arrival order, serving windows, routing) and must decide to
promote at the same look.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.support.report import say
from rig.feedback.delays import DelayModel, WindowConfig, cohort_width_ms
from rig.feedback.guardrails import CALIBRATION_BINS, MIN_TIMED_BATCHES, GuardrailConfig
from rig.feedback.metadata import ServingWindow
from rig.feedback.promotion import PromotionLoop
from rig.feedback.rates import log_beta_mixture_ratio
from rig.feedback.sequential import Moments, PromoterConfig, log_mixture_ratio, mixture_radius
from rig.feedback.srm import SRM_CONCENTRATION, log_srm_bayes_factor
from rig.routing.table import RoutingTable, control_key, fold, set_golden_event, start_experiment_event
from rig.serving.dispatch import assignment_draws, entity_hashes
from rig.wire.records import ExperimentMode, JoinedOutcome, ModelRole
from sim.world import label_delays
from tests.support.records import RequestOutcome

STEP_MS = 1_000
NEGATIVE_MEDIAN_S = 200.0
POSITIVE_FACTOR = 5.0
DELAY_SIGMA = 0.75
HISTORY_OUTCOMES = 100_000
BATCH_REQUESTS = 10
LATENCY_SD = 0.3
AB_SHARE = 0.5
AB_NAME = "ab-test"
SRM_LOSS = 0.10
CHECKED_RUNS = 3
BIAS_AT = (2_000, 5_000, 10_000, 20_000)


@dataclass(frozen=True)
class World:
    """The pool (per request: true probability, golden score, entity id, entity index, whether the
    rig's hash puts the entity in the A/B arm) and the promoter's settings."""

    truth: np.ndarray
    golden: np.ndarray
    entity_ids: np.ndarray
    entity_index: np.ndarray
    arm: np.ndarray
    cfg: PromoterConfig
    guard: GuardrailConfig
    window_ms: float
    every: int
    outcomes: int
    runs: int
    chunk: int


@dataclass(frozen=True)
class Challenger:
    """A challenger: its scores on the pool, how much slower it scores, how often it fails a batch,
    and whether it runs as an A/B arm (with a share of its arm's entities or outcomes lost)."""

    name: str
    scores: np.ndarray
    slowdown: float = 1.0
    fail_rate: float = 0.0
    ab: bool = False
    lost_units: float = 0.0
    lost_outcomes: float = 0.0


def make_world(
    truth: np.ndarray,
    golden: np.ndarray,
    entity_ids: np.ndarray,
    settings: tuple[PromoterConfig, GuardrailConfig, float],
    every: int,
    outcomes: int,
    runs: int,
    chunk: int,
) -> World:
    """The simulated world of these cases (entity indices and A/B arms computed once)."""
    cfg, guard, window_ms = settings
    index = np.unique(entity_ids, return_inverse=True)[1]
    arm = assignment_draws(entity_hashes(entity_ids), AB_NAME) < AB_SHARE
    return World(truth, golden, entity_ids, index, arm, cfg, guard, window_ms, every, outcomes, runs, chunk)


def label_window(truth: np.ndarray, seed: int) -> tuple[float, DelayModel]:
    """W learned from a history of delays, as the promoter learns it from the metadata store."""
    rng = np.random.default_rng([seed, 31])
    labels = rng.random(HISTORY_OUTCOMES) < truth[rng.integers(0, truth.size, HISTORY_OUTCOMES)]
    delays = label_delays(rng, labels, NEGATIVE_MEDIAN_S, DELAY_SIGMA, POSITIVE_FACTOR) * 1000
    model = DelayModel()
    model.add(labels, np.floor(delays))
    window = WindowConfig().window_ms(model)
    if window is None:
        raise SystemExit("the delay history is too small to learn a label window")
    return window, model


def true_quantile_s(probability: float, positive: bool) -> float:
    """The delay quantile of one label, in seconds (lognormal)."""
    from scipy.stats import norm

    median = NEGATIVE_MEDIAN_S * (POSITIVE_FACTOR if positive else 1.0)
    return float(median * math.exp(DELAY_SIGMA * norm.ppf(probability)))


@dataclass
class Chunk:
    """Some runs: pool rows, labels, delays and which rows exist, per request in prediction order."""

    index: np.ndarray
    labels: np.ndarray
    delay_ms: np.ndarray
    exists: np.ndarray
    arm: np.ndarray
    order: np.ndarray
    """Requests by arrival (existing ones first, by outcome time)."""
    cuts_time: np.ndarray
    """Outcome time of the last outcome joined at each look, (runs, looks)."""


def draw_chunk(rng: np.random.Generator, world: World, challenger: Challenger, runs: int) -> Chunk:
    """Draw `runs` runs long enough for `world.outcomes` joined outcomes."""
    lost = max(challenger.lost_units, challenger.lost_outcomes) * AB_SHARE
    n = int(world.outcomes / (1.0 - lost)) + 2_000
    index = rng.integers(0, world.truth.size, size=(runs, n))
    labels = rng.random((runs, n)) < world.truth[index]
    delay_ms = np.floor(label_delays(rng, labels, NEGATIVE_MEDIAN_S, DELAY_SIGMA, POSITIVE_FACTOR) * 1000)
    delay_ms = delay_ms.astype(np.int64)
    exists = np.ones((runs, n), dtype=bool)
    arm = np.zeros((runs, n), dtype=bool)
    if challenger.ab:
        arm = world.arm[index]
        if challenger.lost_units:
            # each run loses its own random share of the arm's entities (all their outcomes)
            entities = world.entity_index[index]
            gone = rng.random((runs, int(world.entity_index.max()) + 1)) < challenger.lost_units
            exists &= ~(arm & np.take_along_axis(gone, entities, axis=1))
        if challenger.lost_outcomes:
            exists &= ~(arm & (rng.random((runs, n)) < challenger.lost_outcomes))
    predicted = np.arange(n, dtype=np.int64) * STEP_MS
    arrival = np.where(exists, predicted + delay_ms, np.iinfo(np.int64).max)
    order = np.argsort(arrival, axis=1, kind="stable")
    looks = np.arange(1, world.outcomes // world.every + 1) * world.every
    cuts_time = np.take_along_axis(arrival, order[:, looks - 1], axis=1)
    if (cuts_time >= n * STEP_MS).any():
        raise SystemExit("a run ran out of requests before its last look; draw more")
    return Chunk(index, labels, delay_ms, exists, arm, order, cuts_time)


def prefix_stats(values: np.ndarray, mask: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, ...]:
    """n, mean and sample variance of `values[mask]` over the first `cuts` rows of each run."""
    v = np.where(mask, values, 0.0)
    count = np.concatenate([np.zeros((v.shape[0], 1)), np.cumsum(mask, axis=1)], axis=1)
    s1 = np.concatenate([np.zeros((v.shape[0], 1)), np.cumsum(v, axis=1)], axis=1)
    s2 = np.concatenate([np.zeros((v.shape[0], 1)), np.cumsum(v * v, axis=1)], axis=1)
    n, total, squares = (np.take_along_axis(a, cuts, axis=1) for a in (count, s1, s2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, total / n, 0.0)
        var = np.where(n > 1, np.maximum(squares - n * mean * mean, 0.0) / (n - 1), 0.0)
    return n, mean, var


def primary(n: np.ndarray, mean: np.ndarray, var: np.ndarray, cfg: PromoterConfig) -> dict:
    """The mSPRT as `PairState` runs it: p (running min from min_samples on) and the promote rule."""
    ready = n >= cfg.min_samples
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = log_mixture_ratio(n, mean, var, cfg.mixing_variance)
        radius = np.where(
            n > 1, mixture_radius(np.maximum(n, 2), var, cfg.mixing_variance, cfg.alpha), np.inf
        )
    p = np.minimum.accumulate(np.where(ready, np.exp(-np.minimum(log_lr, 709.0)), 1.0), axis=1)
    return {"pass": ready & (p <= cfg.alpha) & (mean - radius > cfg.min_effect), "p": p, "mean": mean}


def losses(labels: np.ndarray | bool, scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores, 1e-15, 1 - 1e-15)
    return np.where(labels, -np.log(p), -np.log1p(-p))


def calibration_pass(
    chunk: Chunk, challenger: np.ndarray, golden: np.ndarray, mask: np.ndarray, cuts: np.ndarray, world: World
) -> np.ndarray:
    """`calibration_check` passing at every look, from per-bin prefix sums over matured rows."""
    y = chunk.labels.astype(float)
    ece, second, n = {}, {}, None
    for name, scores in (("c", challenger), ("g", golden)):
        bins = np.minimum((scores * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        residual = np.where(mask, y - scores, 0.0)
        sums, squares = [], []
        for b in range(CALIBRATION_BINS):
            z = np.where(bins == b, residual, 0.0)
            zero = np.zeros((z.shape[0], 1))
            sums.append(
                np.take_along_axis(np.concatenate([zero, np.cumsum(z, axis=1)], axis=1), cuts, axis=1)
            )
            squares.append(
                np.take_along_axis(np.concatenate([zero, np.cumsum(z * z, axis=1)], axis=1), cuts, axis=1)
            )
        n = np.take_along_axis(
            np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(mask, axis=1)], axis=1), cuts, axis=1
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ece[name] = np.where(n > 0, np.sum(np.abs(sums), axis=0) / n, 0.0)
            second[name] = np.where(n > 0, np.sum(squares, axis=0) / n, 0.0)
    assert n is not None, "set by both passes of the loop"
    margin = world.guard.calibration_margin
    union = world.cfg.alpha / 2 / 2**CALIBRATION_BINS
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = np.where(n > 1, mixture_radius(np.maximum(n, 2), second["c"], margin * margin, union), np.inf)
        rg = np.where(n > 1, mixture_radius(np.maximum(n, 2), second["g"], margin * margin, union), np.inf)
    high = ece["c"] + rc - np.maximum(0.0, ece["g"] - rg)
    return (n >= world.cfg.min_samples) & (high <= margin)


def serving_draws(rng: np.random.Generator, challenger: Challenger, runs: int, n_batches: int) -> tuple:
    """Per batch: log ratio of scoring times and whether the challenger failed it."""
    log_ratio = rng.normal(math.log(challenger.slowdown), LATENCY_SD, (runs, n_batches))
    failed = rng.random((runs, n_batches)) < challenger.fail_rate
    return log_ratio, failed


def serving_pass(
    log_ratio: np.ndarray, failed: np.ndarray, batches_done: np.ndarray, world: World
) -> np.ndarray:
    """Latency and failed-batch guardrails both passing at every look."""
    n, mean, var = prefix_stats(log_ratio, ~failed, batches_done)
    bound = math.log1p(world.guard.latency_margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(
            n > 1, mixture_radius(np.maximum(n, 2), var, bound * bound, world.cfg.alpha), np.inf
        )
    latency = (n >= MIN_TIMED_BATCHES) & (mean + radius < bound)
    fails = np.take_along_axis(
        np.concatenate([np.zeros((failed.shape[0], 1)), np.cumsum(failed, axis=1)], axis=1),
        batches_done,
        axis=1,
    )
    m = world.guard.failed_batch_margin
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = log_beta_mixture_ratio(fails, batches_done, m, 1.0, 1.0 / m - 1.0) - math.log(
            1 / world.cfg.alpha
        )
        failures = (batches_done > 0) & (excess > 0) & (fails < m * batches_done)
    return latency & failures


def srm_state(chunk: Chunk, world: World, every: int, concentration: float = SRM_CONCENTRATION) -> dict:
    """Per look: flagged so far (entities per arm, Dirichlet-multinomial), the arm's share interval
    within tolerance, and the naive request-level test's flag for comparison."""
    runs, looks = chunk.cuts_time.shape
    share, tol, alpha = AB_SHARE, world.guard.srm_tolerance, world.cfg.alpha
    units_arm = np.zeros((runs, looks))
    units = np.zeros((runs, looks))
    requests_arm = np.zeros((runs, looks))
    cut = np.arange(1, looks + 1) * every
    for run in range(runs):
        arrived = chunk.order[run, : cut[-1]]
        first = np.zeros(arrived.size, dtype=bool)
        _, first_at = np.unique(world.entity_index[chunk.index[run, arrived]], return_index=True)
        first[first_at] = True
        arm = chunk.arm[run, arrived]
        units[run] = np.cumsum(first)[cut - 1]
        units_arm[run] = np.cumsum(first & arm)[cut - 1]
        requests_arm[run] = np.cumsum(arm)[cut - 1]
    shares = np.array([share, 1 - share])
    log_bf = log_srm_bayes_factor(np.stack([units_arm, units - units_arm], axis=-1), shares, concentration)
    flagged = np.minimum.accumulate(np.exp(-np.clip(log_bf, 0, 709)), axis=1) <= alpha
    naive_bf = log_srm_bayes_factor(
        np.stack([requests_arm, cut - requests_arm], axis=-1), shares, concentration
    )
    naive = np.minimum.accumulate(np.exp(-np.clip(naive_bf, 0, 709)), axis=1) <= alpha
    prior = concentration * share
    level = math.log(1 / alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = (
            log_beta_mixture_ratio(units_arm, units, share * (1 - tol), prior, concentration - prior) >= level
        )
        hi = (
            log_beta_mixture_ratio(units_arm, units, share * (1 + tol), prior, concentration - prior) >= level
        )
        centre = units_arm / np.maximum(units, 1)
    inside = lo & hi & (centre > share * (1 - tol)) & (centre < share * (1 + tol))
    return {"flagged": flagged, "pass": inside & ~flagged, "naive_flagged": naive, "units": units}


def first_true(flags: np.ndarray) -> np.ndarray:
    """Index of the first True per row, -1 when none."""
    hit = flags.any(axis=1)
    return np.where(hit, flags.argmax(axis=1), -1)


def summarise(hit: np.ndarray, counts: np.ndarray) -> dict:
    """Rate of runs with a hit and median outcomes to it (among hits), and the cumulative curve."""
    n_at = counts[hit[hit >= 0]]
    return {
        "rate": float(np.mean(hit >= 0)),
        "median_outcomes": float(np.median(n_at)) if n_at.size else None,
        "curve": [float(np.mean((hit >= 0) & (hit <= k))) for k in range(counts.size)],
    }


def run_case(world: World, challenger: Challenger, number: int, seed: int, as_arrived: bool = False) -> dict:
    """All runs of one case: the full promotion rule on matured cohorts (primary, guardrails, and for
    A/B the sample ratio), the primary test alone, and (shadow cases) the as-arrived primary test."""
    rng = np.random.default_rng([seed, 50, number])
    every, looks = world.every, world.outcomes // world.every
    counts = np.arange(1, looks + 1) * every
    width = cohort_width_ms(world.window_ms)
    out: dict[str, list] = {
        key: [] for key in ("full", "primary", "arrived", "srm", "naive_srm", "matured_n")
    }
    bias: dict[str, list] = {"arrived": [], "matured": []}
    theta = float(
        np.mean(
            world.truth * (losses(True, world.golden) - losses(True, challenger.scores))
            + (1 - world.truth) * (losses(False, world.golden) - losses(False, challenger.scores))
        )
    )
    for start in range(0, world.runs, world.chunk):
        runs = min(world.chunk, world.runs - start)
        chunk = draw_chunk(rng, world, challenger, runs)
        n_requests = chunk.index.shape[1]
        golden = world.golden[chunk.index]
        scores = challenger.scores[chunk.index]
        d = losses(chunk.labels, golden) - losses(chunk.labels, scores)
        paired = chunk.exists & (chunk.arm if challenger.ab else True)
        counted = paired & (chunk.delay_ms <= world.window_ms)
        ends = (np.arange(n_requests, dtype=np.int64) * STEP_MS // width + 1) * width
        matured = np.searchsorted(ends + world.window_ms, chunk.cuts_time, side="right")
        n, mean, var = prefix_stats(d, counted, matured)
        test = primary(n, mean, var, world.cfg)
        passes = test["pass"] & calibration_pass(chunk, scores, golden, counted, matured, world)
        batches_done = chunk.cuts_time // (BATCH_REQUESTS * STEP_MS)
        log_ratio, failed = serving_draws(rng, challenger, runs, n_requests // BATCH_REQUESTS + 1)
        passes &= serving_pass(log_ratio, failed, batches_done, world)
        if challenger.ab:
            srm = srm_state(chunk, world, every)
            passes &= srm["pass"]
            out["srm"].append(first_true(srm["flagged"]))
            out["naive_srm"].append(first_true(srm["naive_flagged"]))
        hits = first_true(passes)
        out["full"].append(hits)
        out["primary"].append(first_true(test["pass"]))
        out["matured_n"].append(np.where(hits >= 0, n[np.arange(runs), np.maximum(hits, 0)], -1))
        bias["matured"].append(np.where(n > 0, mean - theta, np.nan)[:, [k // every - 1 for k in BIAS_AT]])
        if as_arrived:
            by_arrival = np.take_along_axis(d, chunk.order[:, : world.outcomes], axis=1)
            cuts = np.broadcast_to(counts, (runs, looks))
            n_a, mean_a, var_a = prefix_stats(by_arrival, np.ones_like(by_arrival, dtype=bool), cuts)
            out["arrived"].append(first_true(primary(n_a, mean_a, var_a, world.cfg)["pass"]))
            bias["arrived"].append((mean_a - theta)[:, [k // every - 1 for k in BIAS_AT]])
        if start == 0:
            check_with_loop(world, challenger, chunk, log_ratio, failed, hits)
    result: dict = {
        "challenger": challenger.name,
        "true_gain": theta,
        "runs": world.runs,
        "promoted": summarise(np.concatenate(out["full"]), counts),
        "primary_alone": summarise(np.concatenate(out["primary"]), counts),
        "matured_n_at_promotion": (
            float(np.median(np.concatenate(out["matured_n"])[np.concatenate(out["matured_n"]) >= 0]))
            if (np.concatenate(out["matured_n"]) >= 0).any()
            else None
        ),
        "bias_matured": dict(zip(map(str, BIAS_AT), mean_where_defined(bias["matured"]), strict=True)),
    }
    if as_arrived:
        result["as_arrived"] = summarise(np.concatenate(out["arrived"]), counts)
        result["bias_as_arrived"] = dict(
            zip(map(str, BIAS_AT), np.mean(np.concatenate(bias["arrived"]), axis=0).tolist(), strict=True)
        )
    if challenger.ab:
        result["srm_flagged"] = summarise(np.concatenate(out["srm"]), counts)
        result["naive_request_srm_flagged"] = summarise(np.concatenate(out["naive_srm"]), counts)
    return result


def mean_where_defined(parts: list[np.ndarray]) -> list[float | None]:
    """Column means over the runs where the value is defined (None where no run has one yet)."""
    values = np.concatenate(parts)
    defined = ~np.isnan(values)
    return [
        float(values[defined[:, j], j].mean()) if defined[:, j].any() else None
        for j in range(values.shape[1])
    ]


def routing_for(challenger: Challenger) -> RoutingTable:
    mode: ExperimentMode = "ab" if challenger.ab else "shadow"
    events = [
        set_golden_event("golden", actor="sim"),
        start_experiment_event(
            AB_NAME, challenger.name, mode, actor="sim", traffic_share=AB_SHARE if challenger.ab else 1.0
        ),
    ]
    return fold((control_key(event), event) for event in events)


def check_with_loop(
    world: World,
    challenger: Challenger,
    chunk: Chunk,
    log_ratio: np.ndarray,
    failed: np.ndarray,
    hits: np.ndarray,
) -> None:
    """Feed the first runs through `PromotionLoop` (rows in arrival order, serving windows, routing):
    its first promotion must come at the same look as the vectorised path's."""
    routing = routing_for(challenger)
    every, looks = world.every, world.outcomes // world.every
    for run in range(min(CHECKED_RUNS, chunk.index.shape[0])):
        loop = PromotionLoop(world.cfg, world.guard, WindowConfig(fixed_ms=world.window_ms))
        rows = request_rows(world, challenger, chunk, run)
        done, found = 0, -1
        for k in range(looks):
            requests = chunk.order[run, k * every : (k + 1) * every]
            loop.observe([row for i in requests.tolist() for row in rows(i)], routing)
            upto = int(chunk.cuts_time[run, k] // (BATCH_REQUESTS * STEP_MS))
            if upto > done:
                ok = ~failed[run, done:upto]
                moments = Moments.of(log_ratio[run, done:upto][ok])
                window = ServingWindow(
                    scope="sim",
                    window_end_ms=k,
                    model_version=challenger.name,
                    golden_version="golden",
                    batches=upto - done,
                    failed=int((~ok).sum()),
                    timed=moments.n,
                    log_ratio_mean=moments.mean,
                    log_ratio_m2=moments.m2,
                )
                loop.observe_serving([window])
                done = upto
            decisions = loop.decide(k, routing)
            if found < 0 and any(d.action == "promote" for d in decisions):
                found = k
        if found != hits[run]:
            raise SystemExit(
                f"{challenger.name} run {run}: PromotionLoop promoted at {found}, vectorised at {hits[run]}"
            )


def request_rows(
    world: World, challenger: Challenger, chunk: Chunk, run: int
) -> Callable[[int], list[JoinedOutcome]]:
    """The joined rows of request i of a run (golden, and the challenger's when it scored it)."""
    index, labels, delay = chunk.index[run], chunk.labels[run], chunk.delay_ms[run]
    role: ModelRole = "ab" if challenger.ab else "shadow"

    def rows(i: int) -> list[JoinedOutcome]:
        row = int(index[i])
        common: RequestOutcome = {
            "request_id": f"r{i}",
            "entity_id": str(world.entity_ids[row]),
            "label": int(labels[i]),
            "prediction_time": i * STEP_MS,
            "outcome_time": i * STEP_MS + int(delay[i]),
        }
        golden = float(world.golden[row])
        out = [JoinedOutcome(**common, model_version="golden", role="golden", score=golden)]
        if not challenger.ab or chunk.arm[run, i]:
            out.append(
                JoinedOutcome(
                    **common,
                    model_version=challenger.name,
                    role=role,
                    experiment=AB_NAME,
                    score=float(challenger.scores[row]),
                    golden_model_version="golden",
                    golden_score=golden,
                )
            )
        return out

    return rows


def srm_concentrations(world: World, challenger: Challenger, seed: int, values: tuple[float, ...]) -> dict:
    """Median outcomes to flag and flag rate of the sample ratio test for several concentrations C,
    on the same runs."""
    rng = np.random.default_rng([seed, 77])
    looks = world.outcomes // world.every
    counts = np.arange(1, looks + 1) * world.every
    hits: dict[float, list] = {c: [] for c in values}
    for start in range(0, world.runs, world.chunk):
        chunk = draw_chunk(rng, world, challenger, min(world.chunk, world.runs - start))
        for c in values:
            hits[c].append(first_true(srm_state(chunk, world, world.every, c)["flagged"]))
    out = {}
    for c in values:
        summary = summarise(np.concatenate(hits[c]), counts)
        out[f"{c:g}"] = {"rate": summary["rate"], "median_outcomes": summary["median_outcomes"]}
    say(f"SRM concentration ({challenger.name}): {out}")
    return out
