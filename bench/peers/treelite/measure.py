"""Run by bench/bench_compiled_trees.py in bench/peers/treelite/.venv: compiles each model with tl2cgen
and times it against the backbone's call (`rig.models.dense.DenseScorer`), one thread each.

Reads a JSON job on stdin (models, the rows file, batch sizes, trials, budget per trial, the output
file) and writes the measurements as JSON to the job's output file (tl2cgen logs on stdout).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))  # rig.models.dense and bench.support.timing need numpy and xgboost only

import numpy as np  # noqa: E402
import tl2cgen  # noqa: E402
import treelite  # noqa: E402
import xgboost  # noqa: E402

from bench.support.timing import interleaved_us_per_row  # noqa: E402
from rig.models.dense import MODEL_NTHREAD, DenseScorer  # noqa: E402


def measure(
    model_path: str, rows: np.ndarray, batches: list[int], trials: int, budget_s: float
) -> dict[str, Any]:
    """Compile one model, check its scores against XGBoost's on every row, time both per batch size."""
    booster = xgboost.Booster(model_file=model_path)
    booster.set_param({"nthread": MODEL_NTHREAD})
    scorer = DenseScorer(booster)
    with tempfile.TemporaryDirectory() as folder:
        library = str(Path(folder) / "model.so")
        began = time.perf_counter()
        tl2cgen.export_lib(
            treelite.frontend.from_xgboost(booster),
            toolchain="gcc",
            libpath=library,
            params={"parallel_comp": 8},
        )
        compile_s = time.perf_counter() - began
        predictor = tl2cgen.Predictor(library, nthread=1)

        def compiled(batch: np.ndarray) -> np.ndarray:
            return np.asarray(predictor.predict(tl2cgen.DMatrix(batch, dtype="float32"))).reshape(-1)

        difference = float(np.max(np.abs(compiled(rows) - scorer.inplace_predict(rows).reshape(-1))))
        per_batch = {}
        for size in batches:
            batch = np.ascontiguousarray(rows[:size])
            # mypy cannot infer a lambda with a default argument as a Callable[[], object]: ignored.
            samples = interleaved_us_per_row(
                {
                    "xgboost": (lambda b=batch: scorer.inplace_predict(b), 1),  # type: ignore[misc]
                    "tl2cgen": (lambda b=batch: compiled(b), 1),  # type: ignore[misc]
                },
                trials,
                budget_s,
            )
            per_batch[str(size)] = {name: statistics.median(values) for name, values in samples.items()}
    return {"compile_s": compile_s, "max_abs_difference": difference, "us_per_call": per_batch}


def main() -> None:
    job = json.load(sys.stdin)
    rows = np.load(job["rows"])
    out = {
        name: measure(path, rows, job["batches"], job["trials"], job["budget_s"])
        for name, path in job["models"].items()
    }
    versions = {
        "tl2cgen": tl2cgen.__version__,
        "treelite": treelite.__version__,
        "xgboost": xgboost.__version__,
    }
    Path(job["output"]).write_text(json.dumps({"models": out, "versions": versions}))


if __name__ == "__main__":
    main()
