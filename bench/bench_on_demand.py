"""What on-demand feature views cost: Feast's SDK reader with and without them, and the fast reader.

On the repo `feast init` creates (5 drivers, int64 join key `driver_id`), in a temporary folder and
its own Feast project on the real Redis: batches of 1, 100 and 500 requests (drivers drawn with
replacement) read three ways, alternating batch by batch so machine load hits all alike:

- `fast`: the Redis-layout reader, the plain features of `driver_hourly_stats` (what the rig uses
  when a deployment reads no on-demand view);
- `sdk_plain`: Feast's `get_online_features` on the same features;
- `sdk_on_demand`: Feast's `get_online_features` on the feature service `driver_activity_v1`, whose
  on-demand view `transformed_conv_rate` adds request-time fields (`val_to_add`, `val_to_add_2`)
  to `conv_rate` in Feast's own transformation (what the rig does when a model reads it).

Prints µs per request and the ratios, writes bench/results/on_demand.json, removes the project.

Run: .venv/bin/python bench/bench_on_demand.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

from bench.bench_online_reader import measure
from bench.support.deploy import require_services
from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from rig.config import RigSettings
from rig.features.online_reader import FeastSdkReader, OnlineReader, RedisLayoutReader
from rig.features.store import FeatureStoreClient

BATCH_SIZES = (1, 100, 500)
DRIVERS = ["1001", "1002", "1003", "1004", "1005"]
PLAIN = [f"driver_hourly_stats:{name}" for name in ("conv_rate", "acc_rate", "avg_daily_trips")]
SERVICE = "driver_activity_v1"
RESULTS = RESULTS_DIR / "on_demand.json"


def request_fields(size: int) -> dict[str, list[Any]]:
    """The on-demand view's request-time fields, one value per request."""
    return {"val_to_add": [1] * size, "val_to_add_2": [2] * size}


def main() -> None:
    record = RunRecord()
    with tempfile.TemporaryDirectory(prefix="rig-bench-odfv-") as tmp:
        name = f"rig_bench_odfv_{uuid.uuid4().hex[:8]}"
        feast = Path(sys.executable).with_name("feast")
        say(f"feast init {name} ...")
        subprocess.run([str(feast), "init", name], cwd=tmp, check=True, capture_output=True)
        repo = Path(tmp) / name / "feature_repo"
        settings = RigSettings(feast_repo=repo, home=Path(tmp) / "home")
        require_services(settings, kafka=False)
        client = FeatureStoreClient(settings)
        client.apply()
        try:
            client.materialize(datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC), progress=False)
            plain = client.selection(refs=PLAIN)
            on_demand = client.selection(SERVICE)
            say(f"{SERVICE}: {', '.join(on_demand.refs)} (on-demand views {list(on_demand.on_demand)})")
            readers: dict[str, OnlineReader] = {
                "fast": RedisLayoutReader(settings, client, plain),
                "sdk_plain": FeastSdkReader(client, plain),
                "sdk_on_demand": FeastSdkReader(client, on_demand),
            }
            rows = []
            for size in BATCH_SIZES:
                say(f"batch size {size} ...")
                # The on-demand reader needs the request fields; the plain readers ignore them.
                rows.append(measure(readers, DRIVERS, size, seed=size, request_data=request_fields))
        finally:
            client.teardown()

    for row in rows:
        us = {name: row[name]["us_per_row"] for name in readers}
        row["ratio_on_demand_over_sdk_plain"] = us["sdk_on_demand"] / us["sdk_plain"]
        row["ratio_on_demand_over_fast"] = us["sdk_on_demand"] / us["fast"]
    write_results(RESULTS, {"benchmark": "on_demand", "service": SERVICE, "results": rows, **record.fields()})
    print(
        f"{'batch':>6} {'fast':>8} {'SDK':>8} {'SDK+ODFV':>9} {'ODFV/SDK':>9} {'ODFV/fast':>10}  µs/request"
    )
    for row in rows:
        us = {name: row[name]["us_per_row"] for name in readers}
        print(
            f"{row['batch_size']:>6} {us['fast']:>8.1f} {us['sdk_plain']:>8.1f} {us['sdk_on_demand']:>9.1f} "
            f"{row['ratio_on_demand_over_sdk_plain']:>9.2f} {row['ratio_on_demand_over_fast']:>10.1f}"
        )


if __name__ == "__main__":
    main()
