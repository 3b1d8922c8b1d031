"""Explainer cost: CPU and wall time per explanation, side by side in one run.

The explainer thread of a worker shares the machine with the hot path, so what an explanation costs
there is CPU taken from predictions. Measured on a model of the pipeline benchmark's size (150 rounds
on the synthetic world, the deployment's transform), on the same held-out rows each way (those nearest
to the decision, like the requests a worker explains), interleaved:

- `before`: every perturbed row predicted, XGBoost's thread count as trained (2);
- `distinct rows`: only the distinct perturbed rows predicted (`rig.explain.anchors.distinct_rows`),
  2 threads;
- `shipped`: distinct rows and `MODEL_NTHREAD` threads, as the worker's `ExplanationService` runs it;

each with the machine as it is, and with one core kept busy by a spinning process (a worker's hot path
holds one core under load). Prints a table and writes bench/results/explainer.json; takes ~2 min.

Run: .venv/bin/python bench/bench_explainer.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from rig.config import RigSettings
from rig.explain import anchors
from rig.explain.explainer import Explainer
from rig.models.dense import MODEL_NTHREAD
from rig.models.train import fit_booster, load_transform_spec, model_matrix
from rig.transform.fitted import fit
from rig.transform.model_inputs import model_columns
from sim.world import FEATURE_NAMES, as_of_features, labelled_events, make_world

REPO = Path(__file__).resolve().parents[1]
REFERENCE_ROWS = 2_000  # as `rig.explain.service.REFERENCE_ROWS`
WAYS: dict[str, tuple[bool, int]] = {  # way: (distinct rows only, XGBoost threads)
    "before": (False, 2),
    "distinct rows": (True, 2),
    "shipped": (True, MODEL_NTHREAD),
}


DISTINCT_ROWS = anchors.distinct_rows


def every_row(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`distinct_rows` as it was before it: every row predicted."""
    return rows, np.arange(rows.shape[0])


@contextmanager
def one_core_busy(busy: bool) -> Iterator[None]:
    """A process spinning on one core meanwhile (when `busy`)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def per_explanation(explain: Callable[[np.ndarray], object], rows: np.ndarray) -> tuple[float, float]:
    """CPU and wall ms per explanation of `rows` (this process: the explainer and XGBoost's threads)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for row in rows:
        explain(row)
    return (time.process_time() - cpu) * 1e3 / len(rows), (time.perf_counter() - wall) * 1e3 / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10, help="held-out rows explained per trial")
    parser.add_argument("--trials", type=int, default=5, help="interleaved trials of each way")
    parser.add_argument("--rounds-boosting", type=int, default=150, help="boosting rounds of the model")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "explainer.json")
    args = parser.parse_args()
    record = RunRecord()

    say("model: synthetic world, deployment transform")
    world = make_world(seed=11, n_entities=3000, days=8)
    events = labelled_events(world, 12_000, seed=12)
    frame = as_of_features(world, events["entity_id"], events["event_timestamp"])
    settings = RigSettings()
    spec = load_transform_spec(settings.model_copy(update={"transform_spec": REPO / settings.transform_spec}))
    train = 10_000
    transform = fit(spec, frame.iloc[:train])
    features = model_columns(transform.output_columns, FEATURE_NAMES)
    x, ok = model_matrix(transform, frame, features)
    labels = events["label"].to_numpy()
    trained = fit_booster(x[:train], labels[:train], features, rounds=args.rounds_boosting)
    explainers = {}
    for way, (_, threads) in WAYS.items():
        booster = trained.copy()  # the same trees each way; only the thread count differs
        booster.set_param({"nthread": threads})
        explainers[way] = Explainer(booster, features, x[:REFERENCE_ROWS])
    held_out = x[train:][ok[train:]]
    # A worker explains the requests where golden and a challenger disagree (by more than
    # `explain_disagreement`): rows near the decision, whose anchors take the longest searches.
    # Here: the held-out rows whose score is nearest to the threshold.
    scores = explainers["shipped"].booster.inplace_predict(held_out)
    rows = held_out[np.argsort(np.abs(scores - 0.5))[: args.rows]]
    predicted: dict[str, int] = {}
    results: dict[str, dict[str, list[float]]] = {}
    for busy in (False, True):
        condition = "one core busy" if busy else "as is"
        say(f"explaining {args.rows} rows x {args.trials} trials each way, {condition}")
        with one_core_busy(busy):
            for _ in range(args.trials):
                for way, (distinct, _) in WAYS.items():
                    anchors.distinct_rows = DISTINCT_ROWS if distinct else every_row
                    cpu, wall = per_explanation(explainers[way].explain, rows)
                    numbers = results.setdefault(f"{way}, {condition}", {"cpu_ms": [], "wall_ms": []})
                    numbers["cpu_ms"].append(cpu)
                    numbers["wall_ms"].append(wall)
    for way, (distinct, _) in WAYS.items():
        anchors.distinct_rows = DISTINCT_ROWS if distinct else every_row
        predicted[way] = count_predicted_rows(explainers[way], rows)
    anchors.distinct_rows = DISTINCT_ROWS

    print()
    print(f"{'way':<32} {'CPU ms':>8} {'wall ms':>8}   per explanation, median of {args.trials}")
    summary = {}
    for name, numbers in results.items():
        cpu, wall = statistics.median(numbers["cpu_ms"]), statistics.median(numbers["wall_ms"])
        summary[name] = {"cpu_ms_median": cpu, "wall_ms_median": wall, **numbers}
        print(f"{name:<32} {cpu:>8.1f} {wall:>8.1f}")
    print("rows predicted per explanation: " + ", ".join(f"{w} {n:,}" for w, n in predicted.items()))
    write_results(
        args.output,
        record.result(
            "explainer",
            args,
            model={"features": len(features), "rounds": args.rounds_boosting},
            ways={way: {"distinct_rows": d, "nthread": t} for way, (d, t) in WAYS.items()},
            per_explanation=summary,
            rows_predicted_per_explanation=predicted,
        ),
    )


def count_predicted_rows(explainer: Explainer, rows: np.ndarray) -> int:
    """Rows the explainer hands XGBoost per explanation."""
    counted = [0]
    scorer = explainer._scorer  # counting the rows of the calls it makes
    predict = scorer.inplace_predict

    def counting(data: np.ndarray, predict_type: str = "value") -> np.ndarray:
        counted[0] += data.shape[0]
        return predict(data, predict_type)

    scorer.inplace_predict = counting  # type: ignore[method-assign]
    try:
        for row in rows:
            explainer.explain(row)
    finally:
        del scorer.inplace_predict
    return counted[0] // len(rows)


if __name__ == "__main__":
    main()
