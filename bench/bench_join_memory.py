"""The join's state with millions of pending predictions: memory, disk, and the sweep's longest slice.

Not a test; no Kafka, no worker. This process drives `rig.feedback.join_store.JoinStore` directly, as
the join does (`streams/join.py`): one store per partition (`--partitions`, 4 like the rig's topics),
all within one memory budget (`--memory-mib`, RIG_JOIN_MEMORY_MIB's default 192), each request on its
entity's partition (murmur2, `rig.wire.partitioner.partition_for`), entries made by
`rig.feedback.join.on_prediction` from `compact_prediction`-shaped predictions (a golden and two shadow
scores, as in a deployment with golden + 2 shadows).

1. fill: `--entries` (10,000,000) pending predictions in batches of `--batch` (1,000), each batch like
   one of the join's: per partition one `get_many` of its request ids, `on_prediction` per request, one
   `write` of the changes. Source time advances `--rate` (5,000) predictions per second. Every
   `--sample-every` (500,000) entries: this process's RSS (VmRSS of /proc/self/status), the stores'
   size on disk, the fill rate and the longest batch since the previous sample.
2. sweep: source time jumps past the retention, so every entry is due; the partitions are swept one
   after the other in slices of `streams.join.SWEEP_SLICE` (250), a slice a turn, as
   `Join.sweep_slices` does: `due` → `sweep` per entry (predicted → expired) → msgpack of the
   changelog value → `write`. Reports the longest slice (ms), the slice percentiles and the rate; a
   slice is what holds the join's serving task, so the issue's target is no slice over 50 ms. With
   `--remove-pass` a second sweep one retention later removes the
   expired entries (the other half of an entry's life).

Reports the peak RSS and its slope (MiB per million entries, least squares over the samples after
the first million), against the issue's target "memory flat with 10 M pending predictions". Prints the
tables and writes bench/results/join_memory.json (machine, load, code revision, every sample). The
stores live in a temporary folder, removed at the end, also on error or Ctrl-C.

Takes ~4-8 min with the defaults on 2 cores (fill ~60 k entries/s, sweep faster). If 10 M does not fit
(`--max-seconds`, 780 s by default), the fill stops where the budget ends and the report says so, and
extrapolates RSS and disk to 10 M from the measured slope: explicitly labelled as an extrapolation.
`--entries 500000 --sample-every 100000` takes ~20 s.

Run (from the repository root): .venv/bin/python bench/bench_join_memory.py
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

import msgspec
import numpy as np

from bench.support.memory import disk_mib, peak_rss_mib, rss_mib
from bench.support.report import RESULTS_DIR, RunRecord, publish, say
from rig.config import RigSettings
from rig.feedback.join import compact_prediction, on_prediction, sweep
from rig.feedback.join_store import Change, JoinStore, StoreMemory
from rig.wire.partitioner import partition_for
from rig.wire.records import ExperimentScore, ModelScore, Prediction
from streams.heap import freeze_heap
from streams.join import SWEEP_SLICE

RESULTS = RESULTS_DIR / "join_memory.json"
TARGET_ENTRIES = 10_000_000
TARGET_SLICE_MS = 50.0  # the "no slice blocks > 50 ms"
RETENTION_MS = 6 * 3600 * 1000  # RigSettings.join_retention_s's default
START_MS = 1_767_225_600_000  # 2026-01-01, source time of the first prediction
_encode = msgspec.msgpack.Encoder().encode


def compact_of(request_id: str, entity_id: str, at_ms: int, index: int) -> dict[str, Any]:
    """What the join stores of a prediction by golden + 2 shadows (`compact_prediction` of a record
    shaped like the worker's)."""
    score = (index % 997) / 997
    prediction = Prediction(
        request_id=request_id,
        entity_id=entity_id,
        event_time=at_ms,
        score=score,
        answered_by="risk.1",
        golden=ModelScore(model_version="risk.1", score=score),
        experiments=[
            ExperimentScore(experiment="better", model_version="risk.2", mode="shadow", score=1 - score),
            ExperimentScore(experiment="worse", model_version="risk.3", mode="shadow", score=score / 2),
        ],
        transform_version="t1",
    )
    return compact_prediction(prediction)


def request_id(index: int) -> str:
    """A UUID-shaped request id, unique per index (the rig's ids are UUID4 strings)."""
    digits = f"{index:032x}"
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-8{digits[17:20]}-{digits[20:]}"


def fill(stores: list[JoinStore], folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write `args.entries` pending predictions in join-like batches; sample RSS and disk."""
    partitions, entities = len(stores), args.entities
    entity_ids = [f"ent-{i:06d}" for i in range(entities)]
    partition_of = [partition_for(entity.encode(), partitions) for entity in entity_ids]
    samples: list[dict[str, Any]] = []
    began = last_time = time.perf_counter()
    written, last_written, longest_batch_ms, batch_ms_all = 0, 0, 0.0, []
    stopped_early = False
    sample_at = args.sample_every
    while written < args.entries:
        if time.perf_counter() - began > args.max_seconds:
            stopped_early = True
            break
        by_partition: dict[int, list[tuple[str, dict[str, Any], int]]] = {}
        for index in range(written, min(written + args.batch, args.entries)):
            entity = index * 7919 % entities  # every entity, spread over the batch
            at_ms = START_MS + index * 1000 // args.rate
            rid = request_id(index)
            compact = compact_of(rid, entity_ids[entity], at_ms, index)
            by_partition.setdefault(partition_of[entity], []).append((rid, compact, at_ms))
        batch_began = time.perf_counter()  # the join's part: read, move along, write
        for partition, items in by_partition.items():
            store = stores[partition]
            ids = [rid for rid, _, _ in items]
            changes: list[Change] = []
            for (rid, compact, at_ms), before in zip(items, store.get_many(ids), strict=True):
                step = on_prediction(before, rid, compact, at_ms, RETENTION_MS)
                changes.append((rid, before, step.entry))
            store.write(changes)
            written += len(items)
        batch_ms = (time.perf_counter() - batch_began) * 1000
        batch_ms_all.append(batch_ms)
        longest_batch_ms = max(longest_batch_ms, batch_ms)
        if written >= sample_at or written >= args.entries:
            now = time.perf_counter()
            sample = {
                "entries": written,
                "seconds": now - began,
                "rss_mib": rss_mib(),
                "disk_mib": disk_mib(folder),
                "entries_per_s": (written - last_written) / (now - last_time),
                "longest_batch_ms": longest_batch_ms,
            }
            samples.append(sample)
            say(
                f"  fill {written:>11,}: RSS {sample['rss_mib']:7.1f} MiB, "
                f"disk {sample['disk_mib']:8.1f} MiB, {sample['entries_per_s']:>8,.0f} entries/s, "
                f"longest batch {longest_batch_ms:6.1f} ms"
            )
            last_time, last_written, longest_batch_ms = now, written, 0.0
            sample_at += args.sample_every
    batches = np.array(batch_ms_all)
    return {
        "entries_written": written,
        "stopped_early_at_time_budget": stopped_early,
        "seconds": time.perf_counter() - began,
        "entries_per_s": written / (time.perf_counter() - began),
        "batch_ms": {
            "p50": float(np.percentile(batches, 50)),
            "p99": float(np.percentile(batches, 99)),
            "max": float(batches.max()),
        },
        "samples": samples,
        "peak_rss_mib_after": peak_rss_mib(),
        "estimated_entries": sum(store.estimated_entries() for store in stores),
    }


def sweep_pass(stores: list[JoinStore], now_ms: int, label: str) -> dict[str, Any]:
    """Sweep every partition in slices of SWEEP_SLICE until nothing is due at `now_ms`, partition by
    partition, one slice a turn (like `Join.sweep_slices`); time each slice."""
    slices_ms: list[float] = []
    slices_cpu_ms: list[float] = []  # the sweeping thread's CPU: wall minus CPU is waiting (I/O, a busy core)
    parts_ms: list[tuple[float, float, float]] = []  # due, sweep + changelog values, write
    counts: dict[str, int] = {}
    swept = 0
    began = time.perf_counter()
    sweeping = list(stores)
    while sweeping:  # one slice of the first partition with entries due is one turn
        store = sweeping[0]
        slice_began, slice_cpu_began = time.perf_counter(), time.thread_time()
        due = store.due(now_ms, SWEEP_SLICE)
        due_at = time.perf_counter()
        changes: list[Change] = []
        for rid, entry in due:
            step = sweep(entry, now_ms, RETENTION_MS)
            for name in step.counts:  # one name per occurrence
                counts[name] = counts.get(name, 0) + 1
            if step.entry is not None:
                _encode(step.entry)  # the changelog value the join publishes
            changes.append((rid, entry, step.entry))
        swept_at = time.perf_counter()
        store.write(changes)
        ended = time.perf_counter()
        slices_ms.append((ended - slice_began) * 1000)
        slices_cpu_ms.append((time.thread_time() - slice_cpu_began) * 1000)
        parts_ms.append(
            ((due_at - slice_began) * 1000, (swept_at - due_at) * 1000, (ended - swept_at) * 1000)
        )
        swept += len(due)
        if len(due) < SWEEP_SLICE:
            sweeping.pop(0)
        if len(slices_ms) % 500 == 0:
            say(
                f"  {label}: {swept:>11,} swept, longest slice so far {max(slices_ms):6.1f} ms, "
                f"RSS {rss_mib():7.1f} MiB"
            )
    seconds = time.perf_counter() - began
    values, cpu = np.array(slices_ms), np.array(slices_cpu_ms)
    longest = int(values.argmax())
    return {
        "swept": swept,
        "counts": counts,
        "seconds": seconds,
        "entries_per_s": swept / seconds if seconds > 0 else float("nan"),
        "slices": len(slices_ms),
        "slice_ms": {
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "max": float(values.max()),
            "longest_at_slice": longest,
            "longest_slice_rate_entries_per_s": SWEEP_SLICE / (values.max() / 1000),
            # growing from the first to the last tenth: each slice skips what the earlier ones deleted
            "p50_first_tenth": float(np.median(values[: max(1, len(values) // 10)])),
            "p50_last_tenth": float(np.median(values[-max(1, len(values) // 10) :])),
        },
        "slice_cpu_ms": {
            "p50": float(np.percentile(cpu, 50)),
            "p99": float(np.percentile(cpu, 99)),
            "max": float(cpu.max()),
            "in_longest": float(cpu[longest]),
        },
        "slice_parts_ms": {
            name: {
                "mean": float(column.mean()),
                "max": float(column.max()),
                "in_longest": float(column[longest]),
            }
            for name, column in zip(("due", "sweep", "write"), np.array(parts_ms).T, strict=True)
        },
        "slices_over_target": int((values > TARGET_SLICE_MS).sum()),
        "rss_mib_after": rss_mib(),
        "peak_rss_mib_after": peak_rss_mib(),
    }


def slope_mib_per_million(samples: Sequence[dict[str, Any]]) -> float:
    """Least-squares slope of RSS against entries (MiB per million), over the samples after the
    first million (start-up and the first memtables and cache filling are not growth)."""
    kept = [s for s in samples if s["entries"] > 1_000_000] or list(samples)
    if len(kept) < 2:
        return float("nan")
    x = np.array([s["entries"] / 1e6 for s in kept])
    y = np.array([s["rss_mib"] for s in kept])
    return float(np.polyfit(x, y, 1)[0])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", type=int, default=TARGET_ENTRIES, help="pending predictions to write")
    parser.add_argument("--batch", type=int, default=1_000, help="predictions per join-like batch")
    parser.add_argument("--partitions", type=int, default=4, help="join partitions (one store each)")
    parser.add_argument(
        "--memory-mib",
        type=int,
        default=RigSettings.model_fields["join_memory_mib"].default,
        help="RocksDB memory shared by the stores, as a worker's join shares RIG_JOIN_MEMORY_MIB",
    )
    parser.add_argument("--entities", type=int, default=5_000, help="distinct entity ids")
    parser.add_argument("--rate", type=int, default=5_000, help="predictions per second of source time")
    parser.add_argument("--sample-every", type=int, default=500_000, help="entries between two samples")
    parser.add_argument("--max-seconds", type=float, default=780.0, help="time budget of the fill")
    parser.add_argument("--remove-pass", action="store_true", help="also sweep the expired entries away")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    folder = Path(tempfile.mkdtemp(prefix="rig-bench-join-memory-"))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stores: list[JoinStore] = []
    try:
        rss_start = rss_mib()
        memory = StoreMemory(args.memory_mib * 2**20)
        stores = [JoinStore(folder / str(p), RETENTION_MS, memory) for p in range(args.partitions)]
        freeze_heap()  # as the worker does once it is built: no full collection walks the imports
        say(f"fill: {args.entries:,} pending predictions over {args.partitions} stores in {folder}")
        filled = fill(stores, folder, args)
        last_ms = START_MS + filled["entries_written"] * 1000 // args.rate
        say("sweep: every entry due (predicted → expired)")
        sweeps = {"expire": sweep_pass(stores, last_ms + RETENTION_MS + 1, "expire")}
        if args.remove_pass:
            say("sweep: one retention later (expired → removed)")
            sweeps["remove"] = sweep_pass(stores, last_ms + 2 * RETENTION_MS + 2, "remove")
        disk_after_sweeps = disk_mib(folder)
    finally:
        for store in stores:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    result = report(args, filled, sweeps, rss_start, disk_after_sweeps, record)
    publish(result, args.output, print_report)


def report(
    args: argparse.Namespace,
    filled: dict[str, Any],
    sweeps: dict[str, dict[str, Any]],
    rss_start: float,
    disk_after_sweeps: float,
    record: RunRecord,
) -> dict[str, Any]:
    samples = filled["samples"]
    slope = slope_mib_per_million(samples)
    written = filled["entries_written"]
    last = samples[-1] if samples else {"rss_mib": float("nan"), "disk_mib": float("nan")}
    disk_slope = (
        float(np.polyfit([s["entries"] / 1e6 for s in samples], [s["disk_mib"] for s in samples], 1)[0])
        if len(samples) >= 2
        else float("nan")
    )
    short = TARGET_ENTRIES - written
    why = "the time budget ended" if filled["stopped_early_at_time_budget"] else "--entries"
    extrapolated = (
        {
            "note": f"EXTRAPOLATED: {written:,} entries written ({why}); "
            f"values at {TARGET_ENTRIES:,} = last sample + slope x {short / 1e6:.2f} M",
            "rss_mib": last["rss_mib"] + slope * short / 1e6,
            "disk_mib": last["disk_mib"] + disk_slope * short / 1e6,
        }
        if short > 0
        else None
    )
    longest = max(s["slice_ms"]["max"] for s in sweeps.values())
    slice_check = {"value": longest, "limit": TARGET_SLICE_MS, "pass": longest <= TARGET_SLICE_MS}
    return record.result(
        "join_memory",
        args,
        retention_ms=RETENTION_MS,
        sweep_slice=SWEEP_SLICE,
        rss_mib_at_start=rss_start,
        fill=filled,
        sweeps=sweeps,
        disk_mib_after_sweeps=disk_after_sweeps,
        memory={
            "peak_rss_mib": peak_rss_mib(),
            "rss_slope_mib_per_million_entries": slope,
            "disk_slope_mib_per_million_entries": disk_slope,
            "at_10m_extrapolated": extrapolated,
        },
        targets={
            "memory_flat": "RSS slope ~0 MiB per million entries after the first million",
            "longest_slice_ms": slice_check,
        },
    )


def print_report(result: dict[str, Any], output: Path) -> None:
    filled, memory = result["fill"], result["memory"]
    print(f"\nfill: {filled['entries_written']:,} pending predictions in {filled['seconds']:.0f} s")
    print(f"{'entries':>12} {'RSS MiB':>9} {'disk MiB':>9} {'entries/s':>10} {'longest batch ms':>17}")
    for s in filled["samples"]:
        print(
            f"{s['entries']:>12,} {s['rss_mib']:>9.1f} {s['disk_mib']:>9.1f} {s['entries_per_s']:>10,.0f} "
            f"{s['longest_batch_ms']:>17.1f}"
        )
    print(
        f"batch of {result['config']['batch']:,}: p50 {filled['batch_ms']['p50']:.1f} ms, "
        f"p99 {filled['batch_ms']['p99']:.1f} ms, max {filled['batch_ms']['max']:.1f} ms"
    )
    print(
        f"peak RSS {memory['peak_rss_mib']:.1f} MiB (start {result['rss_mib_at_start']:.1f}, end of fill "
        f"{filled['peak_rss_mib_after']:.1f}); RSS slope "
        f"{memory['rss_slope_mib_per_million_entries']:+.2f} MiB per million entries; disk "
        f"{memory['disk_slope_mib_per_million_entries']:.1f} MiB per million"
    )
    if memory["at_10m_extrapolated"]:
        extra = memory["at_10m_extrapolated"]
        print(f"! {extra['note']}: RSS {extra['rss_mib']:.0f} MiB, disk {extra['disk_mib']:.0f} MiB")
    print(f"\nsweep, slices of {result['sweep_slice']:,} entries of one partition (a slice is a turn)")
    print(
        f"{'pass':<8} {'swept':>11} {'s':>6} {'entries/s':>10} {'slices':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'> 50 ms':>7}"
    )
    for name, s in result["sweeps"].items():
        ms = s["slice_ms"]
        print(
            f"{name:<8} {s['swept']:>11,} {s['seconds']:>6.0f} {s['entries_per_s']:>10,.0f} "
            f"{s['slices']:>7,} {ms['p50']:>7.1f} {ms['p99']:>7.1f} {ms['max']:>7.1f} "
            f"{s['slices_over_target']:>7}"
        )
    for name, s in result["sweeps"].items():
        parts = s["slice_parts_ms"]
        print(
            f"  {name}: mean slice = due {parts['due']['mean']:.1f} + sweep {parts['sweep']['mean']:.1f} + "
            f"write {parts['write']['mean']:.1f} ms; longest = {parts['due']['in_longest']:.1f} + "
            f"{parts['sweep']['in_longest']:.1f} + {parts['write']['in_longest']:.1f} ms; p50 of the first "
            f"tenth of slices {s['slice_ms']['p50_first_tenth']:.1f} ms, "
            f"of the last {s['slice_ms']['p50_last_tenth']:.1f} ms"
        )
        cpu = s["slice_cpu_ms"]
        print(
            f"  {name}: the sweeping thread's CPU per slice p50 {cpu['p50']:.1f}, p99 {cpu['p99']:.1f}, "
            f"max {cpu['max']:.1f} ms, {cpu['in_longest']:.1f} ms in the longest (the rest: waiting)"
        )
    check = result["targets"]["longest_slice_ms"]
    print(f"longest slice {check['value']:.1f} ms (target <= 50 ms): {'PASS' if check['pass'] else 'MISS'}")


if __name__ == "__main__":
    main()
