"""Compiled trees (tl2cgen, from Treelite) against the backbone's XGBoost call, on the rig's models.

The hot-path issue asks to evaluate compiled trees and keep them only if they are at least 2x faster
than XGBoost at batch 500, with scores equal to XGBoost's to 1e-6. This measures exactly that, side by
side in one run, one thread on each side (the `rig.models.dense.MODEL_NTHREAD`):
- xgboost: `rig.models.dense.DenseScorer`, the call the backbone and `rig batch` make;
- tl2cgen: the same model compiled to C by tl2cgen (gcc) and called through its `Predictor`, a
  `tl2cgen.DMatrix` built per call as a batch would need it.

Models, trained here on random data with a weak signal (trees grow to full depth), 32 features with
5 % missing values: the rig's training defaults (`rig.models.train.DEFAULT_PARAMS`, 150 rounds of depth
5) and the issue's anchor (200 rounds of depth 6). Every cell is the median of interleaved trials.
tl2cgen lives in a venv of its own (bench/peers/treelite/setup, run here when it is missing): the
project does not depend on it unless it is kept.

Run: .venv/bin/python bench/bench_compiled_trees.py   (~1 min; writes bench/results/compiled_trees.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.report import REPO, RESULTS_DIR, RunRecord, run_line, say, write_results
from rig.models.train import fit_booster

PEER_DIR = REPO / "bench" / "peers" / "treelite"
PEER_PYTHON = PEER_DIR / ".venv" / "bin" / "python"
N_FEATURES = 32
MISSING_SHARE = 0.05


class ModelSpec(TypedDict):
    """How one model is trained: boosting rounds and the parameters besides the seed."""

    rounds: int
    params: dict[str, object]


MODELS: dict[str, ModelSpec] = {
    "rig_defaults": {"rounds": 150, "params": {}},
    "issue_anchor": {"rounds": 200, "params": {"max_depth": 6}},
}
TARGET_SPEEDUP_AT = 500
TARGETS = {"speedup": 2.0, "max_abs_difference": 1e-6}


def rows_and_labels(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 rows with missing values, and labels a deep tree can only partly explain."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(count, N_FEATURES)).astype(np.float32)
    signal = rows[:, 0] + 0.5 * rows[:, 1] * rows[:, 2] + 0.3 * np.sin(rows[:, 3] * 3)
    labels = (signal + rng.normal(scale=1.0, size=count) > 0).astype(int)
    rows[rng.random(rows.shape) < MISSING_SHARE] = np.nan
    return rows, labels


def verdict(model: dict[str, Any]) -> dict[str, Any]:
    """The issue's rule on one model: kept only if >= 2x faster at batch 500 and equal to 1e-6."""
    at = model["us_per_call"][str(TARGET_SPEEDUP_AT)]
    speedup = at["xgboost"] / at["tl2cgen"]
    equal = model["max_abs_difference"] <= TARGETS["max_abs_difference"]
    return {"speedup_at_500": speedup, "equal": equal, "keep": speedup >= TARGETS["speedup"] and equal}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,5,50,500", help="comma-separated batch sizes")
    parser.add_argument("--trials", type=int, default=7, help="interleaved trials per batch size")
    parser.add_argument("--budget-s", type=float, default=0.2, help="seconds of calls per case and trial")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "compiled_trees.json")
    args = parser.parse_args(argv)
    if TARGET_SPEEDUP_AT not in [int(b) for b in args.batches.split(",")]:
        parser.error(f"--batches must include {TARGET_SPEEDUP_AT}, the size the rule is judged at")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    if not PEER_PYTHON.exists():
        say("tl2cgen's own venv (bench/peers/treelite/setup)")
        subprocess.run([str(PEER_DIR / "setup")], check=True)
    rows, labels = rows_and_labels(20_000, args.seed)
    features = tuple(f"f{i:02d}" for i in range(N_FEATURES))
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for name, spec in MODELS.items():
            say(f"train {name}: {spec['rounds']} rounds {spec['params'] or 'of the defaults'}")
            booster = fit_booster(
                rows[:10_000],
                labels[:10_000],
                features,
                spec["rounds"],
                {"seed": args.seed, **spec["params"]},
            )
            paths[name] = str(Path(folder) / f"{name}.ubj")
            booster.save_model(paths[name])
        np.save(Path(folder) / "rows.npy", rows[10_000:])
        job = {
            "models": paths,
            "rows": str(Path(folder) / "rows.npy"),
            "batches": [int(b) for b in args.batches.split(",")],
            "trials": args.trials,
            "budget_s": args.budget_s,
            "output": str(Path(folder) / "measured.json"),
        }
        say("compile and measure, in bench/peers/treelite/.venv")
        ran = subprocess.run(
            [str(PEER_PYTHON), str(PEER_DIR / "measure.py")],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        if ran.returncode != 0:
            raise RuntimeError(f"measure.py failed:\n{ran.stderr[-4000:]}")
        measured = json.loads(Path(job["output"]).read_text())
    verdicts = {name: verdict(model) for name, model in measured["models"].items()}
    result = record.result("compiled_trees", args, **measured, verdicts=verdicts, targets=TARGETS)
    print_report(result, args.output)
    write_results(args.output, result)


def print_report(result: dict[str, Any], output: Path) -> None:
    print()
    print("µs per call, one thread, medians of interleaved trials (xgboost: DenseScorer; tl2cgen: compiled)")
    for name, model in result["models"].items():
        spec = MODELS[name]
        print(
            f"{name}: {spec['rounds']} trees, {N_FEATURES} features; compiled in {model['compile_s']:.1f} s; "
            f"max |difference| over {10_000:,} rows {model['max_abs_difference']:.1e}"
        )
        print(f"  {'batch':>6} {'xgboost':>9} {'tl2cgen':>9} {'ratio':>6}")
        for size, cell in model["us_per_call"].items():
            ratio = cell["xgboost"] / cell["tl2cgen"]
            print(f"  {size:>6} {cell['xgboost']:>9.1f} {cell['tl2cgen']:>9.1f} {ratio:>5.2f}x")
        decided = result["verdicts"][name]
        outcome = "KEEP" if decided["keep"] else "REJECT"
        print(
            f"  rule: >= {TARGETS['speedup']:.0f}x at batch {TARGET_SPEEDUP_AT} and equal to "
            f"{TARGETS['max_abs_difference']:.0e}: {decided['speedup_at_500']:.2f}x, "
            f"{'equal' if decided['equal'] else 'NOT equal'} -> {outcome}"
        )
    print(f"versions: {result['versions']}")
    print(run_line(result, output))


if __name__ == "__main__":
    main()
