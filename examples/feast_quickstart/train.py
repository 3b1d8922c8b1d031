"""Train an XGBoost model on Feast's quickstart repo, as a user would, and save it for `rig register`.

The repo is the one `feast init` creates (drivers 1001-1005, hourly stats). This script knows nothing
of the rig: it runs `feast apply` on the repo, reads point-in-time features for a grid of
(driver, hour) rows with Feast's historical retrieval, makes a label up (an hour whose conversion
rate is above one half counts as a conversion), fits an XGBClassifier and saves it with `save_model`.

    python examples/feast_quickstart/train.py REPO --features driver_hourly_stats_fresh:conv_rate,... \
        --out model.ubj
    python examples/feast_quickstart/train.py REPO --service driver_activity_v1 --out shadow.ubj

With a feature service whose on-demand views read request-time fields (`val_to_add`, `val_to_add_2`),
the rows carry those fields too (fixed values, as requests will send them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import xgboost
from feast import FeatureStore

DRIVERS = (1001, 1002, 1003, 1004, 1005)
REQUEST_FIELDS = {"val_to_add": 1, "val_to_add_2": 2}


def training_rows(hours: int) -> pd.DataFrame:
    """One row per driver and hour over the last `hours` hours."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    times = [now - timedelta(hours=h) for h in range(1, hours + 1)]
    return pd.DataFrame(
        [{"driver_id": d, "event_timestamp": t, **REQUEST_FIELDS} for d in DRIVERS for t in times]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", type=Path, help="the feature_repo folder `feast init` made")
    parser.add_argument("--features", help="comma-separated view:feature refs")
    parser.add_argument("--service", help="a feature service instead of --features")
    parser.add_argument("--out", type=Path, required=True, help="where to save the model (.ubj or .json)")
    parser.add_argument("--hours", type=int, default=24 * 14)
    args = parser.parse_args()

    repo, out = args.repo.resolve(), args.out.resolve()  # before the chdir Feast's file sources need
    feast = Path(sys.executable).with_name("feast")  # the CLI of this Python's Feast
    subprocess.run([str(feast), "apply"], cwd=repo, check=True, capture_output=True)
    os.chdir(repo)
    store = FeatureStore(repo_path=str(repo))
    if args.service:
        features = store.get_feature_service(args.service)
        names = [f.name for view in features.feature_view_projections for f in view.features]
    else:
        features = args.features.split(",")
        names = [ref.split(":", 1)[1] for ref in features]
    frame = store.get_historical_features(entity_df=training_rows(args.hours), features=features).to_df()
    frame = frame.dropna(subset=["conv_rate"])
    label = (frame["conv_rate"] > 0.5).astype(int)
    model = xgboost.XGBClassifier(n_estimators=40, max_depth=3, learning_rate=0.2)
    model.fit(frame[names].astype("float64"), label)
    model.save_model(out)
    print(f"trained on {len(frame)} rows, features {names}; saved {out}")


if __name__ == "__main__":
    main()
