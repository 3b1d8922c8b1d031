"""Bring your own: the repo `feast init` creates, models trained by a user-side script, served.

The repo is generated in the test (never copied into the project): an int64 join key `driver_id`,
Float32/Int64 features beside Map/Json/Struct ones, on-demand views reading request-time fields,
feature services and a push source.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import pytest
import xgboost

from rig.config import RigSettings
from rig.processes import stop_processes
from rig.routing.control import read_routing
from rig.wire.records import DeadLetter, JoinedOutcome, Prediction
from sim.deploy import settings_env, start_worker
from tests.conftest import REPO
from tests.e2e.conftest import consume, eventually, get_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

GOLDEN_REFS = ",".join(
    f"driver_hourly_stats_fresh:{name}" for name in ("conv_rate", "acc_rate", "avg_daily_trips")
)
SHADOW_SERVICE = "driver_activity_v1"  # conv_rate and an on-demand view of request-time fields
REQUEST_FIELDS = {"val_to_add": 1.0, "val_to_add_2": 2.0}
DRIVERS = (1001, 1002, 1003, 1004, 1005)
WEB_PORT = 6091


def run(
    *command: str, env: dict[str, str], cwd: Path = REPO, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def rig(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "rig.cli.app", *args, env=env, check=check)


def online_rows(settings: RigSettings, refs: list[str], drivers: list[int]) -> dict[str, list[float]]:
    """The online features the rig should have read, asked from Feast directly (the driver_id column
    holds the ints asked for)."""
    from rig.features.store import FeatureStoreClient

    store = FeatureStoreClient(settings).store
    rows = [{"driver_id": d, "val_to_add": 1, "val_to_add_2": 2} for d in drivers]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def offline_scores(model: Path, columns: dict[str, list[float]], names: list[str]) -> np.ndarray:
    booster = xgboost.Booster()
    booster.load_model(str(model))
    x = np.array([columns[name] for name in names], dtype=np.float32).T
    return booster.inplace_predict(x).astype(np.float64)


def send_json(settings: RigSettings, requests: list[DriverRequest]) -> None:
    """Requests as plain JSON from an outside client (kcat), keyed by the driver id."""
    for request in requests:
        subprocess.run(
            [
                "kcat",
                "-P",
                "-b",
                settings.kafka_bootstrap,
                "-t",
                settings.topic("requests"),
                "-k",
                str(request["driver_id"]),
            ],
            input=json.dumps(request).encode(),
            check=True,
            timeout=30,
        )


def nan_model(model: Path, path: Path) -> Path:
    """A copy of a model that predicts NaN: +inf leaves in its first tree, -inf in its second."""
    booster = xgboost.Booster()
    booster.load_model(str(model))
    booster.save_model(str(path))
    data = json.loads(path.read_text())
    trees = data["learner"]["gradient_booster"]["model"]["trees"]
    for tree, marker in zip(trees[:2], ("__POS__", "__NEG__"), strict=True):
        tree["split_conditions"] = [marker] * len(tree["split_conditions"])
    text = json.dumps(data).replace('"__POS__"', "1E999").replace('"__NEG__"', "-1E999")  # JSON has no inf
    path.write_text(text)
    return path


class DriverRequest(TypedDict):
    """A request as the outside client writes it: the driver id is the entity."""

    request_id: str
    driver_id: int
    event_time: int
    features: dict[str, float]


def requests_for(drivers: list[int]) -> list[DriverRequest]:
    now = int(time.time() * 1000)
    return [
        {
            "request_id": f"byo-{uuid.uuid4().hex}",
            "driver_id": d,
            "event_time": now,
            "features": REQUEST_FIELDS,
        }
        for d in drivers
    ]


def test_a_feast_init_repo_and_models_trained_elsewhere_are_registered_and_served(tmp_path: Path) -> None:
    name = f"byo_{uuid.uuid4().hex[:8]}"
    feast = str(Path(sys.executable).with_name("feast"))
    run(feast, "init", name, env=dict(settings_env(RigSettings())), cwd=tmp_path)
    repo = tmp_path / name / "feature_repo"
    settings = RigSettings(
        feast_repo=repo, home=tmp_path / "home", topic_prefix=f"byo.{uuid.uuid4().hex[:8]}."
    )
    env = settings_env(settings)

    # A user trains two models with plain Feast and XGBoost (the script runs its own `feast apply`).
    script = REPO / "examples" / "feast_quickstart" / "train.py"
    golden_file, shadow_file = tmp_path / "golden.ubj", tmp_path / "shadow.json"
    run(sys.executable, str(script), str(repo), "--features", GOLDEN_REFS, "--out", str(golden_file), env=env)
    run(
        sys.executable,
        str(script),
        str(repo),
        "--service",
        SHADOW_SERVICE,
        "--out",
        str(shadow_file),
        env=env,
    )

    rig("topics", "create", env=env)
    rig("features", "apply", env=env)
    rig("features", "materialize", env=env)
    rig("register", str(golden_file), "--name", "drivers", "--features", GOLDEN_REFS, "--role", "golden",
        "--metric", "auc=0.91", "--training-window", "last 14 days", env=env)  # fmt: skip
    rig("register", str(shadow_file), "--name", "drivers-odfv", "--feature-service", SHADOW_SERVICE,
        "--role", "shadow", "--experiment", "odfv", env=env)  # fmt: skip
    routing = read_routing(settings)
    assert routing.golden == "drivers.1" and [e.model_version for e in routing.experiments] == [
        "drivers-odfv.1"
    ]

    # Refused, and routing unchanged: features that do not match the service; a model predicting NaN.
    mismatch = rig("register", str(golden_file), "--name", "mismatch", "--feature-service", SHADOW_SERVICE,
                   "--role", "golden", env=env, check=False)  # fmt: skip
    assert (
        mismatch.returncode == 1 and "refused" in mismatch.stderr and "conv_rate_plus_val1" in mismatch.stderr
    )
    nan_file = nan_model(golden_file, tmp_path / "nan.json")
    nan = rig("register", str(nan_file), "--name", "nan", "--features", GOLDEN_REFS, "--role", "golden",
              env=env, check=False)  # fmt: skip
    assert nan.returncode == 1 and "finite probability" in nan.stderr, nan.stderr
    assert read_routing(settings) == routing

    worker = start_worker(
        settings,
        settings.home / "worker.log",
        web_port=WEB_PORT,
        env={"RIG_PROMOTER_MIN_SAMPLES": "10", "RIG_PROMOTER_LABEL_WINDOW_S": "2"},
    )
    try:
        eventually(
            lambda: get_json(f"http://127.0.0.1:{WEB_PORT}/readyz").get("ready"), 180, "the worker ready"
        )
        first = requests_for(list(DRIVERS))
        send_json(settings, first)
        ids = {r["request_id"] for r in first}
        answered = consume(settings, settings.topic("predictions"), Prediction, len(ids),
                           where=lambda p: p.request_id in ids, processes=[worker])  # fmt: skip
        assert len(answered) == len(ids)
        by_driver = {int(p.entity_id): p for p in answered}

        # A request-time value its Int64 field cannot hold is its own request's bad input; the others
        # are answered. Before, Feast failed the read of the whole batch and the worker exited, again
        # at every restart.
        mixed = requests_for(list(DRIVERS))
        mixed[0]["features"] = {**REQUEST_FIELDS, "val_to_add": 1e19}
        send_json(settings, mixed)
        good = {r["request_id"] for r in mixed[1:]}
        answered_too = consume(settings, settings.topic("predictions"), Prediction, len(good),
                               where=lambda p: p.request_id in good, processes=[worker])  # fmt: skip
        assert {p.request_id for p in answered_too} == good
        unfit = mixed[0]["request_id"]
        [letter] = consume(settings, settings.topic("dlq"), DeadLetter, 1,
                           where=lambda d: d.request_id == unfit, processes=[worker])  # fmt: skip
        assert letter.error_type == "invalid_value" and "'val_to_add' must be a whole number" in letter.reason

        # The golden's score is the model's offline prediction on the same features, to 1e-6.
        golden_refs = GOLDEN_REFS.split(",")
        names = [ref.split(":")[1] for ref in golden_refs]
        online = online_rows(settings, golden_refs, list(DRIVERS))
        expected = offline_scores(golden_file, online, names)
        for i, driver in enumerate(online["driver_id"]):
            assert by_driver[cast(int, driver)].golden.score == pytest.approx(expected[i], abs=1e-6)
        # The shadow reads its own features (an on-demand view of request-time fields) through its
        # own transform, and scores what it would offline.
        shadow_names = ["conv_rate", "conv_rate_plus_val1", "conv_rate_plus_val2"]
        shadow_online = online_rows(
            settings,
            [
                "driver_hourly_stats:conv_rate",
                "transformed_conv_rate:conv_rate_plus_val1",
                "transformed_conv_rate:conv_rate_plus_val2",
            ],
            list(DRIVERS),
        )
        shadow_expected = offline_scores(shadow_file, shadow_online, shadow_names)
        for i, driver in enumerate(shadow_online["driver_id"]):
            [experiment] = by_driver[cast(int, driver)].experiments
            assert experiment.model_version == "drivers-odfv.1"
            assert experiment.score == pytest.approx(shadow_expected[i], abs=1e-6)

        # A push to the push source changes the next prediction of that driver.
        pushed = tmp_path / "push.parquet"
        import pandas as pd

        now = pd.Timestamp.now(tz="UTC")
        before = online_rows(settings, ["driver_hourly_stats_fresh:avg_daily_trips"], [1001])
        # `feast init` draws its data at random and trees saturate: push the first candidate row whose
        # offline score differs from the one served, so the change is observable.
        candidates = [
            {"conv_rate": [c], "acc_rate": [a], "avg_daily_trips": [before["avg_daily_trips"][0] + d]}
            for c, a, d in ((0.99, 0.01, 500), (0.01, 0.99, -500), (0.5, 0.5, 0), (0.01, 0.01, 1000))
        ]
        served = by_driver[1001].golden.score
        pushed_row, fresh = next(
            (row, score)
            for row in candidates
            if abs((score := offline_scores(golden_file, row, names)[0]) - served) > 1e-4
        )
        pd.DataFrame({
            "driver_id": [1001], "event_timestamp": [now], "created": [now], **pushed_row,
            "driver_metadata": [{"vehicle": "sedan"}], "driver_config": ["{}"],
            "driver_profile": [{"name": "x", "age": "1"}],
        }).to_parquet(pushed)  # fmt: skip
        rig("features", "push", "driver_stats_push_source", str(pushed), env=env)
        second = requests_for([1001])
        send_json(settings, second)
        wanted = second[0]["request_id"]
        [after] = consume(
            settings, settings.topic("predictions"), Prediction, 1,
            where=lambda p: p.request_id == wanted, processes=[worker],
        )  # fmt: skip
        assert after.golden.score == pytest.approx(fresh, abs=1e-6)
        assert abs(after.golden.score - served) > 1e-4

        # Outcomes sent with `rig outcomes` are joined to both models' predictions and reach the promoter.
        # Labels are known a second after each request; the promoter folds a request once its label
        # window (2 s here) has passed in outcome time, which the later request's outcome moves on.
        outcomes = tmp_path / "outcomes.jsonl"
        outcomes.write_text("".join(
            json.dumps({"request_id": r["request_id"], "driver_id": r["driver_id"], "label": i % 2,
                        "event_time": int(r["event_time"]) + 1_000}) + "\n"
            for i, r in enumerate([*first, *second])
        ))  # fmt: skip
        rig("outcomes", str(outcomes), env=env)
        known = ids | {wanted}
        joined = consume(settings, settings.topic("joined"), JoinedOutcome, 2 * len(known),
                         where=lambda row: row.request_id in known, processes=[worker])  # fmt: skip
        assert {(row.request_id, row.model_version) for row in joined} == {
            (i, m) for i in known for m in ("drivers.1", "drivers-odfv.1")
        }
        state = eventually(
            lambda: (s := get_json(f"http://127.0.0.1:{WEB_PORT}/promoter/")) and s.get("challengers") and s,
            60,
            "the promoter to fold the joined rows",
        )
        assert state["golden"] == "drivers.1" and state["label_window_ms"] == 2_000
        assert state["challengers"]["drivers-odfv.1"]["n"] == len(ids)
    finally:
        stop_processes([worker])
        print((settings.home / "worker.log").read_text(errors="replace")[-4000:])
