"""Promoter simulation: false-promotion rate, power and time to decision under continuous monitoring.

Real models on real synthetic data: a world from `sim.world`, XGBoost models trained with
`rig.models.train.fit_booster` on point-in-time (`as_of_features`) events — golden (feature set `golden`),
a twin (same set, another seed), `better` and `worse` — score a pool of simulated requests. Each run
draws `--outcomes` requests from the pool with replacement and fresh labels from the *true*
probability, so runs are independent and every challenger's true mean gain is known exactly
(expected loss difference over the pool). The promoter looks every `--every` outcomes.

Cases: A/A with the literally identical model (d = 0), A/A with the twin, A/A with the twin and
golden/twin roles swapped at random per request (an exact null with realistic d), truly better, truly
worse, the three challengers at once (Holm), and de-promotion (stable golden vs drift).
Baseline in the same run: a naive fixed-sample t-test re-checked every 1,000 outcomes at α = 0.05.

Beyond the primary test (`bench/support/promoter_cases.py`, the same runs count): label-dependent
delays (positives known 5x later), where the as-arrived test runs beside the matured-cohort one the
promoter uses, and the whole promotion rule (primary test on matured cohorts, latency, failed-batch
and calibration guardrails, and for A/B the sample ratio test) on a truly better challenger, on one
that is 3x slower, miscalibrated or failing batches, and on A/B arms with a correct split or 10 %
of an arm lost.

The statistics are vectorised across runs with the same functions `rig.feedback.sequential` uses; the
first runs of every case also go through `Promoter` / `GoldenMonitor` themselves and must decide
identically.

Run: .venv/bin/python bench/promoter_sim.py   (writes bench/results/promoter_sim.json and .png)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student_t

from bench.support import promoter_cases as beyond
from bench.support.promoter_cases import first_true, summarise
from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from rig.feedback.guardrails import GuardrailConfig
from rig.feedback.monitor import GoldenMonitor
from rig.feedback.sequential import (
    Promoter,
    PromoterConfig,
    holm_adjust,
    log_mixture_ratio,
    mixture_radius,
)
from rig.models.train import fit_booster
from sim import world as data

NAIVE_EVERY = 1000
NAIVE_ALPHA = 0.05
CHECKED_RUNS = 5
TAU_FACTORS = (1.0, 2.0, 5.0, 10.0, 25.0)
MARGINAL_WEIGHT = 0.05
"""The `marginal` challenger blends golden and better in logit space (5 % better): a true gain just
above min_effect, where the practical-effect guardrail decides how long promotion takes."""
MISCALIBRATION_SHIFT = 0.4
"""The `miscalibrated` challenger is `better` with log-odds +0.4 (odds x1.5): still better on log loss,
with an expected calibration error several points above the golden's."""
SRM_CONCENTRATIONS = (50.0, 200.0, 500.0, 2_000.0)


@dataclass
class Pool:
    """Requests with each model's score and the true probability of fraud (and after drift)."""

    truth: np.ndarray
    truth_drifted: np.ndarray
    scores: dict[str, np.ndarray]
    entity_ids: np.ndarray


def build_pool(args: argparse.Namespace) -> Pool:
    """World, models and a pool of scored requests."""
    world = data.make_world(seed=args.seed, n_entities=args.entities, days=args.days)
    say(f"world: {args.entities} entities x {args.days} days")
    events = data.labelled_events(world, args.train_events, seed=args.seed + 1)
    frame = data.as_of_features(world, events["entity_id"], events["event_timestamp"])
    labels = events["label"].to_numpy()
    models = {"golden": ("golden", 0), "twin": ("golden", 1), "better": ("better", 0), "worse": ("worse", 0)}
    requests = data.make_requests(world, args.pool, seed=args.seed + 2)
    pool = data.as_of_features(world, requests["entity_id"], requests["event_time"])
    scores = {}
    for name, (feature_set, seed) in models.items():
        columns = list(data.FEATURE_SETS[feature_set])
        booster = fit_booster(
            frame[columns].to_numpy(np.float32), labels, tuple(columns), params={"seed": seed}
        )
        scores[name] = booster.inplace_predict(pool[columns].to_numpy(np.float32)).astype(float)
        say(f"trained {name} on {len(frame)} events ({feature_set} features, seed {seed})")
    logit = {name: np.log(scores[name]) - np.log1p(-scores[name]) for name in ("golden", "better")}
    blend = (1 - MARGINAL_WEIGHT) * logit["golden"] + MARGINAL_WEIGHT * logit["better"]
    scores["marginal"] = 1.0 / (1.0 + np.exp(-blend))
    truth = data.true_probability(pool)
    golden_loss = expected_loss(truth, scores["golden"])
    trap = brentq(lambda c: expected_loss(truth, shifted(logit["better"], c)) - golden_loss, -3.0, 0.0)
    scores["trap"] = shifted(logit["better"], trap)
    scores["miscalibrated"] = shifted(logit["better"], MISCALIBRATION_SHIFT)
    say(f"trap challenger: better shifted by {trap:+.4f} in logit (same expected loss as the golden)")
    return Pool(truth, data.true_probability(pool, drifted=True), scores, requests["entity_id"].to_numpy())


def shifted(logit: np.ndarray, shift: float) -> np.ndarray:
    """Scores of a model whose log-odds are `logit + shift`."""
    return 1.0 / (1.0 + np.exp(-(logit + shift)))


def expected_loss(truth: np.ndarray, scores: np.ndarray) -> float:
    """Expected log loss over the pool under the true probabilities."""
    p = np.clip(scores, 1e-15, 1 - 1e-15)
    return float(np.mean(-truth * np.log(p) - (1 - truth) * np.log1p(-p)))


def row_losses(metric: str, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss of score p when the label is 1 and when it is 0."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    if metric == "brier":
        return (1 - p) ** 2, p**2
    return -np.log(p), -np.log1p(-p)


@dataclass
class Case:
    """One simulated case: per-row loss difference d when the label is 1 / 0, and the truth."""

    name: str
    challenger: str
    d1: np.ndarray
    d0: np.ndarray
    theta: float
    swap: bool = False


def make_cases(pool: Pool, metric: str) -> list[Case]:
    """The single-challenger cases and their true mean gain E[d] over the pool."""
    lg1, lg0 = row_losses(metric, pool.scores["golden"])
    cases = []
    for name, challenger, swap in (
        ("A/A identical", "golden", False),
        ("A/A twin", "twin", False),
        ("A/A twin, roles swapped", "twin", True),
        ("marginal", "marginal", False),
        ("better", "better", False),
        ("worse", "worse", False),
    ):
        lc1, lc0 = row_losses(metric, pool.scores[challenger])
        d1, d0 = lg1 - lc1, lg0 - lc0
        theta = 0.0 if swap else float(np.mean(pool.truth * d1 + (1 - pool.truth) * d0))
        cases.append(Case(name, challenger, d1, d0, theta, swap))
    return cases


def draw(rng: np.random.Generator, pool: Pool, runs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and labels (from the true probability) of `runs` independent runs of n outcomes."""
    index = rng.integers(0, pool.truth.size, size=(runs, n))
    labels = rng.random((runs, n)) < pool.truth[index]
    return index, labels


def running_stats(d: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n, mean and sample variance at every checkpoint, shape (runs, checkpoints)."""
    runs, n = d.shape
    blocks = d.reshape(runs, n // every, every)
    counts = np.arange(1, n // every + 1) * every
    sums = np.cumsum(blocks.sum(axis=2), axis=1)
    mean = sums / counts
    squares = np.cumsum(np.square(blocks - blocks.mean(axis=2, keepdims=True)).sum(axis=2), axis=1)
    # Chan's merge of block M2s: add the between-block part via cumulative sums of block means.
    block_means = blocks.mean(axis=2)
    between = np.cumsum(every * block_means**2, axis=1) - counts * mean**2
    var = (squares + between) / (counts - 1)
    return np.broadcast_to(counts, mean.shape), mean, np.maximum(var, 0.0)


def msprt(n: np.ndarray, mean: np.ndarray, var: np.ndarray, cfg: PromoterConfig, m: int = 1) -> dict:
    """Always-valid p-values (running min from min_samples on) and CS bounds at every checkpoint."""
    tau2 = cfg.mixing_variance
    ready = n >= cfg.min_samples
    log_lr = log_mixture_ratio(n, mean, var, tau2)
    p = np.minimum.accumulate(np.where(ready, np.exp(-np.minimum(log_lr, 709.0)), 1.0), axis=1)
    radius = mixture_radius(n, var, tau2, cfg.alpha / m)
    return {"p": p, "low": mean - radius, "high": mean + radius, "ready": ready}


def naive_promote(
    n: np.ndarray, mean: np.ndarray, var: np.ndarray, every: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-sample two-sided t-test re-run every NAIVE_EVERY outcomes: first promote / any rejection."""
    looks = (n % NAIVE_EVERY == 0) & (n >= NAIVE_EVERY)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / n)
    p = 2 * student_t.sf(np.abs(t), n - 1)
    reject = looks & (p < NAIVE_ALPHA)  # NaN (d identically 0) never rejects
    return first_true(reject & (mean > 0)), first_true(reject)


def check_with_promoter(
    pool: Pool,
    case: Case,
    index: np.ndarray,
    labels: np.ndarray,
    cfg: PromoterConfig,
    every: int,
    hits: np.ndarray,
) -> None:
    """Feed the first runs through `Promoter` itself; its first promote must match the vectorised path.

    (Skipped for the swapped case, whose random role swaps are drawn inside the vectorised path.)
    """
    if case.swap:
        return
    golden, challenger = pool.scores["golden"], pool.scores[case.challenger]
    for run in range(min(CHECKED_RUNS, index.shape[0])):
        promoter = Promoter(cfg, "golden")
        found = -1
        for k in range(index.shape[1] // every):
            rows = index[run, k * every : (k + 1) * every]
            promoter.observe(
                "golden",
                "challenger",
                labels[run, k * every : (k + 1) * every],
                golden[rows],
                challenger[rows],
            )
            if found < 0 and any(d.action == "promote" for d in promoter.decide(k)):
                found = k
        if found != hits[run]:
            raise SystemExit(
                f"{case.name} run {run}: Promoter promoted at {found}, vectorised at {hits[run]}"
            )


def single_challenger(
    pool: Pool, case: Case, number: int, args: argparse.Namespace, cfg: PromoterConfig, check: bool = True
) -> dict:
    """All runs of one case, in chunks (memory), mSPRT and naive side by side; with `check`, the first
    runs also go through `Promoter` itself."""
    rng = np.random.default_rng([args.seed, number])
    every, total = args.every, args.outcomes
    promote, worse, rejected, naive, naive_any, p_paths = [], [], [], [], [], []
    for start in range(0, args.runs, args.chunk):
        runs = min(args.chunk, args.runs - start)
        index, labels = draw(rng, pool, runs, total)
        d = np.where(labels, case.d1[index], case.d0[index])
        if case.swap:
            d = np.where(rng.random(d.shape) < 0.5, -d, d)
        n, mean, var = running_stats(d, every)
        test = msprt(n, mean, var, cfg)
        hits = first_true(test["ready"] & (test["p"] <= cfg.alpha) & (test["low"] > cfg.min_effect))
        promote.append(hits)
        worse.append(first_true(test["ready"] & (test["p"] <= cfg.alpha) & (mean < 0)))
        rejected.append(first_true(test["ready"] & (test["p"] <= cfg.alpha)))
        naive_hits, naive_rejects = naive_promote(n, mean, var, every)
        naive.append(naive_hits)
        naive_any.append(naive_rejects)
        if start == 0 and check:
            check_with_promoter(pool, case, index, labels, cfg, every, hits)
            p_paths = test["p"][:20].tolist()
    counts = np.arange(1, total // every + 1) * every
    result = {
        "challenger": case.challenger,
        "true_gain": case.theta,
        "runs": args.runs,
        "msprt_promoted": summarise(np.concatenate(promote), counts),
        "msprt_recorded_worse": summarise(np.concatenate(worse), counts),
        "msprt_any_rejection": summarise(np.concatenate(rejected), counts),
        "naive_promoted": summarise(np.concatenate(naive), counts),
        "naive_any_rejection": summarise(np.concatenate(naive_any), counts),
        "p_paths": p_paths,
    }
    if not check:
        return result
    say(
        f"{case.name:<24} true gain {case.theta:+.5f}  mSPRT promote {result['msprt_promoted']['rate']:.3f}"
        f"  naive promote {result['naive_promoted']['rate']:.3f}"
    )
    return result


def tau_sensitivity(pool: Pool, cases: list[Case], args: argparse.Namespace, cfg: PromoterConfig) -> dict:
    """The same runs (same seeds) with τ = k · min_effect for several k: power, time, null rejections."""
    out: dict = {}
    for factor in TAU_FACTORS:
        tuned = replace(cfg, tau2=(factor * cfg.min_effect) ** 2)
        row = {}
        for number, case in enumerate(cases):
            if case.name in ("A/A twin, roles swapped", "marginal", "better"):
                result = single_challenger(pool, case, number, args, tuned, check=False)
                row[case.name] = {
                    "promoted": result["msprt_promoted"]["rate"],
                    "median_outcomes": result["msprt_promoted"]["median_outcomes"],
                    "any_rejection": result["msprt_any_rejection"]["rate"],
                }
        out[f"{factor:g}"] = row
        say(f"tau = {factor:g} x min_effect: {json.dumps(row)}")
    return out


def family(pool: Pool, cases: list[Case], args: argparse.Namespace, cfg: PromoterConfig) -> dict:
    """Twin, better and worse challengers at once on the same requests: Holm + CS at α/3, best passing."""
    chosen = [c for c in cases if c.name in ("A/A twin", "better", "worse")]
    rng = np.random.default_rng([args.seed, 99])
    every, total, m = args.every, args.outcomes, len(chosen)
    winners = []
    for start in range(0, args.runs, args.chunk):
        runs = min(args.chunk, args.runs - start)
        index, labels = draw(rng, pool, runs, total)
        stats = [running_stats(np.where(labels, c.d1[index], c.d0[index]), every) for c in chosen]
        tests = [msprt(*s, cfg, m=m) for s in stats]
        p = np.stack([t["p"] for t in tests])  # (m, runs, checkpoints)
        adjusted = np.apply_along_axis(holm_adjust, 0, p.reshape(m, -1)).reshape(p.shape)
        passing = np.stack([t["ready"] & (t["low"] > cfg.min_effect) for t in tests]) & (
            adjusted <= cfg.alpha
        )
        gain = np.where(passing, np.stack([s[1] for s in stats]), -np.inf)
        first = first_true(cast(np.ndarray, passing.any(axis=0)))  # an array: any over one axis of 3
        best = gain.argmax(axis=0)
        rows = np.arange(runs)
        winners.append(np.where(first >= 0, best[rows, np.maximum(first, 0)], -1))
    winner = np.concatenate(winners)
    result = {c.name: float(np.mean(winner == i)) for i, c in enumerate(chosen)}
    result["none"] = float(np.mean(winner < 0))
    say(f"three challengers at once: promoted {result}")
    return result


def demotion(pool: Pool, args: argparse.Namespace, cfg: PromoterConfig) -> dict:
    """GoldenMonitor's reference track: stable golden vs a drift starting right after the reference,
    and later (the monitor's cumulative mean reacts more slowly to a late drift)."""
    every, total = args.every, args.outcomes
    ref_n = GoldenMonitor(cfg, "golden").reference_size
    lg1, lg0 = row_losses(cfg.metric, pool.scores["golden"])
    out = {}
    for name, drift_at in (
        ("stable", None),
        ("drift after reference", ref_n),
        ("drift 5,000 after reference", ref_n + 5000),
    ):
        rng = np.random.default_rng([args.seed, 7, drift_at or 0])
        hits, checked = [], False
        for start in range(0, args.runs, args.chunk):
            runs = min(args.chunk, args.runs - start)
            index = rng.integers(0, pool.truth.size, size=(runs, total + ref_n))
            truth = pool.truth[index]
            if drift_at is not None:
                truth[:, drift_at:] = pool.truth_drifted[index[:, drift_at:]]
            labels = rng.random(truth.shape) < truth
            loss = np.where(labels, lg1[index], lg0[index])
            ref = loss[:, :ref_n]
            n, mean, var = running_stats(loss[:, ref_n:], every)
            split = cfg.alpha / 2
            ref_half = norm.ppf(1 - split / 2) * ref.std(axis=1, ddof=1, keepdims=True) / math.sqrt(ref_n)
            low = mean - ref.mean(axis=1, keepdims=True) - mixture_radius(n, var, cfg.mixing_variance, split)
            found = first_true((n >= cfg.min_samples) & (low - ref_half > cfg.min_effect))
            hits.append(found)
            if not checked:
                checked = True
                for run in range(min(CHECKED_RUNS, runs)):
                    monitor = GoldenMonitor(cfg, "golden")
                    monitor.observe(labels[run, :ref_n], pool.scores["golden"][index[run, :ref_n]])
                    seen = -1
                    for k in range(total // every):
                        cut = slice(ref_n + k * every, ref_n + (k + 1) * every)
                        monitor.observe(labels[run, cut], pool.scores["golden"][index[run, cut]])
                        if seen < 0 and monitor.decide(k):
                            seen = k
                    if seen != found[run]:
                        raise SystemExit(
                            f"demotion {name} run {run}: monitor at {seen}, vectorised {found[run]}"
                        )
        counts = np.arange(1, total // every + 1) * every
        out[name] = summarise(np.concatenate(hits), counts)
        say(
            f"de-promotion, {name:<28} demoted {out[name]['rate']:.3f}"
            f"  median n {out[name]['median_outcomes']}"
        )
    return out


def beyond_primary(pool: Pool, args: argparse.Namespace, cfg: PromoterConfig) -> dict:
    """Label-dependent delays, guardrails and A/B sample ratios (bench/support/promoter_cases.py)."""
    window_ms, history = beyond.label_window(pool.truth, args.seed)
    say(
        f"label window W = {window_ms / 1000:.0f} s from {beyond.HISTORY_OUTCOMES} recorded delays "
        f"(true 99 % quantile: negatives {beyond.true_quantile_s(0.99, False):.0f} s, positives "
        f"{beyond.true_quantile_s(0.99, True):.0f} s)"
    )
    world = beyond.make_world(
        pool.truth,
        pool.scores["golden"],
        pool.entity_ids,
        (cfg, GuardrailConfig(), window_ms),
        args.every,
        args.outcomes,
        args.runs,
        args.chunk,
    )
    scores = pool.scores
    delay_cases = {
        "A/A identical": beyond.Challenger("identical", scores["golden"]),
        "A/A twin": beyond.Challenger("twin", scores["twin"]),
        "trap: better on negatives, same loss": beyond.Challenger("trap", scores["trap"]),
        "better": beyond.Challenger("better", scores["better"]),
    }
    guard_cases = {
        "better, 3x slower": beyond.Challenger("slow", scores["better"], slowdown=3.0),
        "better, miscalibrated": beyond.Challenger("miscalibrated", scores["miscalibrated"]),
        "better, fails 5 % of batches": beyond.Challenger("failing", scores["better"], fail_rate=0.05),
    }
    ab_cases = {
        "A/B better, correct split": beyond.Challenger("ab", scores["better"], ab=True),
        "A/B better, 10 % of the arm's entities lost": beyond.Challenger(
            "ab-lost-units", scores["better"], ab=True, lost_units=beyond.SRM_LOSS
        ),
        "A/B better, 10 % of the arm's outcomes lost": beyond.Challenger(
            "ab-lost-outcomes", scores["better"], ab=True, lost_outcomes=beyond.SRM_LOSS
        ),
    }
    out: dict = {
        "label_window_s": window_ms / 1000,
        "delay_model": {
            "negative_median_s": beyond.NEGATIVE_MEDIAN_S,
            "positive_factor": beyond.POSITIVE_FACTOR,
            "sigma": beyond.DELAY_SIGMA,
            "history_outcomes": beyond.HISTORY_OUTCOMES,
            "history_positives": history.n(1),
            "seconds_per_request": beyond.STEP_MS / 1000,
        },
        "guardrails": asdict(world.guard),
        "delays": {},
        "guardrail_cases": {},
        "ab": {},
    }
    for number, (name, challenger) in enumerate(delay_cases.items()):
        out["delays"][name] = result = beyond.run_case(world, challenger, number, args.seed, as_arrived=True)
        say(
            f"{name:<38} gain {result['true_gain']:+.5f}  as-arrived {result['as_arrived']['rate']:.3f}  "
            f"matured {result['primary_alone']['rate']:.3f}  whole rule {result['promoted']['rate']:.3f} "
            f"(median {result['promoted']['median_outcomes']})"
        )
    for number, (name, challenger) in enumerate(guard_cases.items(), start=10):
        out["guardrail_cases"][name] = result = beyond.run_case(world, challenger, number, args.seed)
        alone, promoted = result["primary_alone"]["rate"], result["promoted"]["rate"]
        say(f"{name:<38} primary alone {alone:.3f}  promoted {promoted:.3f}")
    for number, (name, challenger) in enumerate(ab_cases.items(), start=20):
        out["ab"][name] = result = beyond.run_case(world, challenger, number, args.seed)
        say(
            f"{name:<46} SRM flagged {result['srm_flagged']['rate']:.3f} (median "
            f"{result['srm_flagged']['median_outcomes']})  promoted {result['promoted']['rate']:.3f}  "
            f"request-level SRM flagged {result['naive_request_srm_flagged']['rate']:.3f}"
        )
    lost = ab_cases["A/B better, 10 % of the arm's entities lost"]
    out["srm_concentration"] = beyond.srm_concentrations(world, lost, args.seed, SRM_CONCENTRATIONS)
    return out


def plot(results: dict, args: argparse.Namespace, path: Path) -> None:
    """Cumulative promotion rate over n (mSPRT vs naive), p-value paths, demotion curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.arange(1, args.outcomes // args.every + 1) * args.every
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colours = {
        "A/A twin": "tab:blue",
        "A/A twin, roles swapped": "tab:cyan",
        "better": "tab:green",
        "marginal": "tab:olive",
        "worse": "tab:red",
    }
    for ax, names in (
        (axes[0, 0], ("A/A twin", "A/A twin, roles swapped", "worse")),
        (axes[0, 1], ("better", "marginal")),
    ):
        for name in names:
            case = results["cases"][name]
            ax.plot(counts, case["msprt_promoted"]["curve"], color=colours[name], label=f"{name}: mSPRT")
            ax.plot(
                counts,
                case["naive_promoted"]["curve"],
                "--",
                color=colours[name],
                label=f"{name}: naive t-test",
            )
        ax.axhline(results["config"]["alpha"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("joined outcomes")
        ax.set_ylabel("share of runs promoted so far")
        ax.legend(fontsize=8)
    axes[0, 0].set_title("Null and worse challengers: false promotions under continuous monitoring")
    axes[0, 1].set_title("Truly better challenger: power")
    ax = axes[1, 0]
    for name in ("A/A twin, roles swapped", "better", "worse"):
        for i, path_p in enumerate(results["cases"][name]["p_paths"]):
            ax.plot(counts, path_p, color=colours[name], alpha=0.35, label=name if i == 0 else None)
    ax.axhline(results["config"]["alpha"], color="black", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_ylim(1e-12, 1.5)
    ax.set_xlabel("joined outcomes")
    ax.set_ylabel("always-valid p-value")
    ax.set_title("Always-valid p-value paths (20 runs each)")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for name, item in results["demotion"].items():
        ax.plot(counts, item["curve"], label=name)
    ax.set_xlabel("joined outcomes after the reference window")
    ax.set_ylabel("share of runs demoted so far")
    ax.set_title("De-promotion (GoldenMonitor, reference track)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_beyond(results: dict, args: argparse.Namespace, path: Path) -> None:
    """As-arrived vs matured cohorts under label-dependent delays, guardrails, SRM detection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.arange(1, args.outcomes // args.every + 1) * args.every
    alpha = results["config"]["alpha"]
    beyond_results = results["beyond_primary"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for name, colour in (("A/A twin", "tab:blue"), ("trap: better on negatives, same loss", "tab:red")):
        case = beyond_results["delays"][name]
        ax.plot(counts, case["as_arrived"]["curve"], "--", color=colour, label=f"{name}: as arrived")
        ax.plot(counts, case["promoted"]["curve"], color=colour, label=f"{name}: matured cohorts")
    ax.axhline(alpha, color="grey", lw=0.8, ls=":")
    ax.set_title("Nulls under label-dependent delays: false promotions")
    ax = axes[0, 1]
    case = beyond_results["delays"]["better"]
    ax.plot(
        counts, case["as_arrived"]["curve"], "--", color="tab:green", label="better: as arrived (primary)"
    )
    ax.plot(counts, case["primary_alone"]["curve"], ":", color="tab:green", label="better: matured (primary)")
    ax.plot(counts, case["promoted"]["curve"], color="tab:green", label="better: matured, whole rule")
    for (name, item), colour in zip(
        beyond_results["guardrail_cases"].items(), ("tab:red", "tab:orange", "tab:purple"), strict=True
    ):
        ax.plot(counts, item["promoted"]["curve"], color=colour, label=f"{name}: whole rule")
    ax.set_title("Power, and winners held by a guardrail")
    ax = axes[1, 0]
    looks = [
        int(k) for k in beyond_results["delays"]["trap: better on negatives, same loss"]["bias_as_arrived"]
    ]
    for name in ("trap: better on negatives, same loss", "better"):
        case = beyond_results["delays"][name]
        ax.plot(looks, list(case["bias_as_arrived"].values()), "--o", label=f"{name}: as arrived")
        matured = [math.nan if v is None else v for v in case["bias_matured"].values()]
        ax.plot(looks, matured, "-o", label=f"{name}: matured cohorts")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("mean estimate minus true gain")
    ax.set_title("Bias of the mean log-loss gain")
    ax = axes[1, 1]
    for name, item in beyond_results["ab"].items():
        ax.plot(counts, item["srm_flagged"]["curve"], label=f"{name}: entities")
    correct = beyond_results["ab"]["A/B better, correct split"]
    ax.plot(
        counts, correct["naive_request_srm_flagged"]["curve"], "--", label="correct split: requests (naive)"
    )
    ax.axhline(alpha, color="grey", lw=0.8, ls=":")
    ax.set_title("Sample ratio mismatch flagged")
    for ax in axes.ravel():
        if ax is not axes[1, 0]:
            ax.set_xlabel("joined outcomes")
            ax.set_ylabel("share of runs so far")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> None:
    """The summary table."""
    head = (
        f"{'case':<26}{'true gain':>11}{'mSPRT promote':>15}{'median n':>10}{'mSPRT any':>11}"
        f"{'naive promote':>15}{'naive any':>11}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, case in results["cases"].items():
        ms, nv = case["msprt_promoted"], case["naive_promoted"]
        med = "-" if ms["median_outcomes"] is None else f"{ms['median_outcomes']:.0f}"
        print(
            f"{name:<26}{case['true_gain']:>+11.5f}{ms['rate']:>15.3f}{med:>10}"
            f"{case['msprt_any_rejection']['rate']:>11.3f}{nv['rate']:>15.3f}"
            f"{case['naive_any_rejection']['rate']:>11.3f}"
        )
    print(f"\nthree challengers at once (Holm): {results['family']}")
    print("\ntau = k x min_effect   (promoted share / median outcomes; null rejections of the exact A/A)")
    for factor, row in results["tau_sensitivity"].items():
        cells = [f"{name} {v['promoted']:.3f}/{v['median_outcomes'] or 0:.0f}" for name, v in row.items()]
        null = row["A/A twin, roles swapped"]["any_rejection"]
        print(f"  k={factor:<4} " + "  ".join(cells[1:]) + f"  A/A any rejection {null:.3f}")
    for name, item in results["demotion"].items():
        print(f"de-promotion {name:<24} rate {item['rate']:.3f}  median n {item['median_outcomes']}")
    table_beyond(results["beyond_primary"])
    print("\ntargets:")
    for target, passed in results["targets"].items():
        print(f"  {'PASS' if passed else 'MISS'}  {target}")


def defined(value: float | None) -> float:
    return math.nan if value is None else value


def table_beyond(beyond_results: dict) -> None:
    """The delays, guardrails and A/B tables."""

    def med(summary: dict) -> str:
        return "-" if summary["median_outcomes"] is None else f"{summary['median_outcomes']:.0f}"

    print(f"\nlabel-dependent delays (label window W = {beyond_results['label_window_s']:.0f} s)")
    head = (
        f"{'case':<38}{'true gain':>11}{'as-arrived':>12}{'matured':>9}{'whole rule':>12}{'median n':>10}"
        f"{'bias@10k arrived':>18}{'bias@10k matured':>18}"
    )
    print(head + "\n" + "-" * len(head))
    for name, case in beyond_results["delays"].items():
        print(
            f"{name:<38}{case['true_gain']:>+11.5f}{case['as_arrived']['rate']:>12.3f}"
            f"{case['primary_alone']['rate']:>9.3f}{case['promoted']['rate']:>12.3f}{med(case['promoted']):>10}"
            f"{case['bias_as_arrived']['10000']:>+18.5f}{defined(case['bias_matured']['10000']):>+18.5f}"
        )
    better = beyond_results["delays"]["better"]
    print(f"better: median matured outcomes at promotion {better['matured_n_at_promotion']}")
    print("\nguardrails (matured cohorts, whole rule)")
    for name, case in beyond_results["guardrail_cases"].items():
        alone, promoted = case["primary_alone"]["rate"], case["promoted"]["rate"]
        print(f"  {name:<36} primary alone {alone:.3f}  promoted {promoted:.3f}")
    print("\nA/B sample ratio (entities per arm; 50/50 split)")
    for name, case in beyond_results["ab"].items():
        print(
            f"  {name:<46} flagged {case['srm_flagged']['rate']:.3f} (median {med(case['srm_flagged'])})  "
            f"promoted {case['promoted']['rate']:.3f} (median {med(case['promoted'])})  "
            f"request-level test flagged {case['naive_request_srm_flagged']['rate']:.3f}"
        )
    print(f"  SRM concentration C (10 % of the arm's entities lost): {beyond_results['srm_concentration']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--outcomes", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=100, help="runs simulated at once (memory)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--train-events", type=int, default=60_000)
    parser.add_argument("--pool", type=int, default=200_000)
    parser.add_argument("--tau2", type=float, default=None, help="mixing variance; default from min_effect")
    parser.add_argument("--min-effect", type=float, default=0.002)
    args = parser.parse_args()
    record = RunRecord()
    if args.outcomes % args.every or NAIVE_EVERY % args.every:
        raise SystemExit("--outcomes and 1000 must be multiples of --every")
    cfg = PromoterConfig(min_effect=args.min_effect, tau2=args.tau2)
    pool = build_pool(args)
    cases = make_cases(pool, cfg.metric)
    results: dict = {
        "config": {**asdict(cfg), "mixing_variance": cfg.mixing_variance, **vars(args)},
        "cases": {case.name: single_challenger(pool, case, i, args, cfg) for i, case in enumerate(cases)},
    }
    results["family"] = family(pool, cases, args, cfg)
    results["tau_sensitivity"] = tau_sensitivity(pool, cases, args, cfg)
    results["demotion"] = demotion(pool, args, cfg)
    results["beyond_primary"] = extra = beyond_primary(pool, args, cfg)
    cases_out = results["cases"]
    delays, guards, ab = extra["delays"], extra["guardrail_cases"], extra["ab"]
    lost = [ab[f"A/B better, 10 % of the arm's {what} lost"] for what in ("entities", "outcomes")]
    results["targets"] = {
        "A/A false promotion <= alpha": all(
            cases_out[name]["msprt_promoted"]["rate"] <= cfg.alpha
            for name in ("A/A identical", "A/A twin", "A/A twin, roles swapped")
        ),
        "power >= 0.9 within outcomes": cases_out["better"]["msprt_promoted"]["rate"] >= 0.9,
        "worse never promoted": cases_out["worse"]["msprt_promoted"]["rate"] == 0.0,
        "label-dependent delays: delay-aware A/A false promotion <= alpha (identical, twin, trap)": all(
            max(delays[name]["primary_alone"]["rate"], delays[name]["promoted"]["rate"]) <= cfg.alpha
            for name in ("A/A identical", "A/A twin", "trap: better on negatives, same loss")
        ),
        f"label-dependent delays: power >= 0.9 for the +0.027 challenger within {args.outcomes:,} outcomes": (
            delays["better"]["promoted"]["rate"] >= 0.9
        ),
        "3x slower challenger never promoted": guards["better, 3x slower"]["promoted"]["rate"] == 0.0,
        "miscalibrated challenger never promoted": guards["better, miscalibrated"]["promoted"]["rate"] == 0.0,
        "10 % SRM (arm's entities lost) flagged in a median of <= 5,000 outcomes": (
            (lost[0]["srm_flagged"]["median_outcomes"] or math.inf) <= 5_000
        ),
        "10 % SRM (arm's entities lost) never promoted": lost[0]["promoted"]["rate"] == 0.0,
        "10 % of the arm's outcomes lost (entities that come back often still appear) never promoted": (
            lost[1]["promoted"]["rate"] == 0.0
        ),
        "correct split flagged in <= alpha of runs": (
            ab["A/B better, correct split"]["srm_flagged"]["rate"] <= cfg.alpha
        ),
    }
    write_results(
        RESULTS_DIR / "promoter_sim.json", {"benchmark": "promoter_sim", **results, **record.fields()}
    )
    plot(results, args, RESULTS_DIR / "promoter_sim.png")
    plot_beyond(results, args, RESULTS_DIR / "promoter_sim_beyond.png")
    say(f"wrote {RESULTS_DIR / 'promoter_sim.png'} and {RESULTS_DIR / 'promoter_sim_beyond.png'}")
    table(results)


if __name__ == "__main__":
    main()
