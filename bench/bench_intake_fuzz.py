"""Intake fuzzed with Hypothesis at scale: the property of tests/unit/wire/test_intake_fuzz.py on
`--examples` (100,000) messages instead of 2,000.

Messages are random bytes, random JSON, and valid requests in every wire format taken apart
(`tests/unit/wire/intake_messages.py`), for a deployment keyed by `entity_id` and one keyed by typed
join keys. Each must become one request or one dead letter with a reason, and either must encode
again; a message that breaks this stops the run with Hypothesis's smallest failing example.

Not a test; no services. Prints examples per second (generation included), the µs intake spends per
message, and the count of each outcome (a request, or a dead letter by error type); writes
bench/results/intake_fuzz.json. Takes ~10-12 min for 100,000 examples on one core; most of it is
Hypothesis generating the messages.

Run (from the repository root): .venv/bin/python bench/bench_intake_fuzz.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

from hypothesis import HealthCheck, given, settings

from bench.support.report import RESULTS_DIR, RunRecord, publish, say
from rig.wire.requests import KeySpec
from tests.unit.wire.intake_messages import OUTCOMES, messages, take_one_in

RESULTS = RESULTS_DIR / "intake_fuzz.json"
PROGRESS_EVERY = 10_000


def fuzz(examples: int) -> dict[str, Any]:
    """Run the property on `examples` messages; the outcome counts and where the time went."""
    outcomes: Counter[str] = Counter()
    by_keys: Counter[str] = Counter()
    intake_s = 0.0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),  # a benchmark: only the property's failures count
    )
    @given(messages())
    def property_holds(message: tuple[KeySpec, bytes]) -> None:
        nonlocal intake_s
        keys, value = message
        began = time.perf_counter()
        outcome = take_one_in(keys, value)
        intake_s += time.perf_counter() - began
        outcomes[outcome] += 1
        by_keys["+".join(keys.names)] += 1
        if outcomes.total() % PROGRESS_EVERY == 0:
            say(f"{outcomes.total():,} examples")

    began = time.perf_counter()
    property_holds()
    seconds = time.perf_counter() - began
    total = outcomes.total()
    return {
        "examples": total,
        "seconds": seconds,
        "examples_per_s": total / seconds,
        "intake_seconds": intake_s,
        "intake_us_per_message": intake_s / total * 1e6,
        "outcomes": {outcome: outcomes[outcome] for outcome in OUTCOMES},
        "deployments": dict(by_keys),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--examples", type=int, default=100_000, help="messages Hypothesis generates")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    record = RunRecord()
    say(f"fuzzing intake with {args.examples:,} examples ...")
    result = record.result("intake_fuzz", args, fuzz=fuzz(args.examples))
    publish(result, args.output, print_report)


def print_report(result: dict[str, Any], output: Path) -> None:
    run = result["fuzz"]
    print(
        f"\n{run['examples']:,} examples in {run['seconds']:.0f} s: {run['examples_per_s']:,.0f} examples/s "
        f"(intake {run['intake_us_per_message']:.0f} µs a message); none raised, every one a request or "
        "a dead letter with a reason"
    )
    print(f"{'outcome':>16} {'messages':>9} {'share':>7}")
    for outcome, count in run["outcomes"].items():
        print(f"{outcome:>16} {count:>9,} {count / run['examples']:>7.1%}")
    print("deployments: " + ", ".join(f"{keys} {count:,}" for keys, count in run["deployments"].items()))


if __name__ == "__main__":
    main()
