"""Online feature reads: the fast Redis-layout reader against Feast's SDK, in the same run.

Materializes a synthetic world (5,000 entities, 16 float features) into a temporary Feast project
on the real Redis, then reads random batches of 1, 10, 100 and 500 entities with both readers,
alternating them batch by batch so machine load hits both alike. Prints µs per row and the ratio
fast/SDK, writes bench/results/online_reader.json and removes the project's keys. Takes < 60 s
(`import feast` alone takes seconds).

Run: .venv/bin/python bench/bench_online_reader.py
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import numpy as np

from bench.support.deploy import isolated_settings, require_services
from bench.support.report import RESULTS_DIR, RunRecord, say, write_results
from rig.features.online_reader import FeastSdkReader, OnlineReader, RedisLayoutReader
from rig.features.store import FeatureStoreClient
from sim.deploy import write_world
from sim.settings import WorldSettings

N_ENTITIES = 5_000
WORLD_DAYS = 3
BATCH_SIZES = (1, 10, 100, 500)
SECONDS_PER_SIZE = 4.0
MIN_ROUNDS = 5
WORLD = WorldSettings(seed=17, entities=N_ENTITIES, days=WORLD_DAYS)
RESULTS = RESULTS_DIR / "online_reader.json"


def assert_same(ids: Sequence[str], fast: OnlineReader, sdk: OnlineReader) -> None:
    """The readers must agree before their speeds mean anything."""
    a, b = fast.read(ids), sdk.read(ids)
    assert np.array_equal(a.found, b.found)
    assert all(np.array_equal(a.columns[n], b.columns[n], equal_nan=True) for n in b.feature_names)


def measure(
    readers: dict[str, OnlineReader],
    ids: list[str],
    size: int,
    seed: int,
    request_data: Callable[[int], dict[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """Random batches of `size` entities (drawn with replacement when there are fewer ids), every
    reader on the same batch, in alternating order. `request_data(size)` gives the request-time
    fields of on-demand views, when the readers need them."""
    rng = random.Random(seed)

    def draw() -> list[str]:
        return rng.sample(ids, size) if size <= len(ids) else rng.choices(ids, k=size)

    extra = request_data(size) if request_data else None
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    for reader in readers.values():
        reader.read(draw(), extra)  # warm-up
    start = time.perf_counter()
    rounds = 0
    while rounds < MIN_ROUNDS or time.perf_counter() - start < SECONDS_PER_SIZE:
        batch = draw()
        order = list(readers.items()) if rounds % 2 == 0 else list(reversed(readers.items()))
        for name, reader in order:
            began = time.perf_counter()
            reader.read(batch, extra)
            seconds[name].append(time.perf_counter() - began)
        rounds += 1
    row: dict[str, Any] = {"batch_size": size, "batches": rounds}
    for name, times in seconds.items():
        row[name] = {
            "us_per_row": sum(times) / len(times) / size * 1e6,
            "batch_ms_p50": statistics.median(times) * 1e3,
            "batch_ms_p99": float(np.quantile(times, 0.99)) * 1e3,
        }
    return row


def breakdown(reader: RedisLayoutReader, ids: list[str], size: int, seed: int) -> dict[str, float]:
    """Where the fast reader's time goes at one batch size: keys, the Redis round trip, decoding.

    Also times the same round trip through a plain redis-py `Pipeline`, the alternative to packing.
    """
    rng = random.Random(seed)
    batches = [rng.sample(ids, size) for _ in range(40)]
    keys = [reader._keys(batch) for batch in batches]
    replies = [reader._hmget(batch_keys, reader._redis) for batch_keys in keys]
    n_features = len(reader.feature_names)

    def per_row(fn: Callable[[int], object]) -> float:
        began = time.perf_counter()
        for i in range(len(batches)):
            fn(i)
        return (time.perf_counter() - began) / len(batches) / size * 1e6

    def pipeline(i: int) -> list[Any]:
        """The same HMGETs through a redis-py `Pipeline` (what the reader packs itself instead)."""
        with reader._redis.pipeline(transaction=False) as pipe:
            for key in keys[i]:
                # redis takes bytes keys and a tuple of fields; its annotations say str and list.
                pipe.hmget(key, reader.hash_fields)  # type: ignore[arg-type]
            return pipe.execute()

    # The parsed replies hold what redis-py's pipeline reads: each value (decoded one by one through
    # protobuf, empty ones NaN) and each timestamp.
    piped = pipeline(0)
    values, _ = reader._decode(replies[0], n_features)
    slow = [[reader._slow_value(v) if v else float("nan") for v in reply[:n_features]] for reply in piped]
    np.testing.assert_array_equal(values, np.array(slow).T)
    assert replies[0].stamps == [stamp for reply in piped for stamp in reply[n_features:]]
    return {
        "keys_us_per_row": per_row(lambda i: reader._keys(batches[i])),
        "redis_py_pipeline_round_trip_us_per_row": per_row(pipeline),
        "redis_round_trip_us_per_row": per_row(lambda i: reader._hmget(keys[i], reader._redis)),
        "decode_us_per_row": per_row(lambda i: reader._decode(replies[i], n_features)),
    }


def main() -> None:
    record = RunRecord()
    with tempfile.TemporaryDirectory(prefix="rig-bench-online-") as tmp:
        settings = isolated_settings(Path(tmp), "online")
        require_services(settings, kafka=False)
        say(f"world: {N_ENTITIES} entities x {WORLD_DAYS} days ...")
        world = write_world(settings, WORLD)
        client = FeatureStoreClient(settings)
        say(f"feast apply + materialize into project {client.repo_config().project} ...")
        client.apply()
        try:
            began = time.perf_counter()
            client.materialize(world.start, world.end, progress=True)
            materialize_s = time.perf_counter() - began
            fast = RedisLayoutReader(settings, client)
            readers: dict[str, OnlineReader] = {"fast": fast, "sdk": FeastSdkReader(client)}
            ids = sorted(world.features["entity_id"].unique())
            assert_same([*ids[:300], "ent-unknown", ids[0]], fast, readers["sdk"])
            rows = []
            for size in BATCH_SIZES:
                say(f"batch size {size}: {SECONDS_PER_SIZE:.0f} s ...")
                row = measure(readers, ids, size, seed=size)
                row["ratio_fast_over_sdk"] = row["fast"]["us_per_row"] / row["sdk"]["us_per_row"]
                rows.append(row)
            split = breakdown(fast, ids, 500, seed=1)
            fast.close()
        finally:
            client.teardown()

    result: dict[str, Any] = {
        "benchmark": "online_reader",
        "world": {
            "entities": N_ENTITIES,
            "features": len(fast.feature_names),
            "materialize_s": materialize_s,
        },
        "results": rows,
        "fast_breakdown_batch_500": split,
        **record.fields(),
    }
    write_results(RESULTS, result)

    print(f"{'batch':>6} {'fast µs/row':>12} {'SDK µs/row':>11} {'fast/SDK':>9} {'speed-up':>9}")
    for row in rows:
        ratio = row["ratio_fast_over_sdk"]
        print(
            f"{row['batch_size']:>6} {row['fast']['us_per_row']:>12.1f} {row['sdk']['us_per_row']:>11.1f} "
            f"{ratio:>9.3f} {1 / ratio:>8.1f}x"
        )
    print("fast reader at batch 500, µs/row: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
    machine = result["machine"]
    print(f"load average {machine['load_average_end'][0]:.2f} on {machine['cpus']} cpus; wrote {RESULTS}")


if __name__ == "__main__":
    main()
