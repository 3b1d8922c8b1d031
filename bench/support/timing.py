"""Timing small functions in-process: seconds per call, and several cases in interleaved trials."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def seconds_per_call(
    fn: Callable[[], object], budget_s: float, min_calls: int = 3, warm_up: bool = False
) -> float:
    """Seconds per call of `fn`, calling it for about `budget_s` and at least `min_calls` times
    (after one untimed call with `warm_up`)."""
    if warm_up:
        fn()
    calls = 0
    began = time.perf_counter()
    while calls < min_calls or time.perf_counter() - began < budget_s:
        fn()
        calls += 1
    return (time.perf_counter() - began) / calls


def interleaved_us_per_row(
    cases: Mapping[str, tuple[Callable[[], object], int]], trials: int, budget_s: float
) -> dict[str, list[float]]:
    """µs per row of each case (a function and the rows one call handles), one value per trial.

    Every case is called once first (warm-up), then each trial times every case in turn, so a busy
    neighbour weighs on all of them alike; report the median (and the spread) of the trials.
    """
    for fn, _ in cases.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(trials):
        for name, (fn, rows) in cases.items():
            samples[name].append(seconds_per_call(fn, budget_s) / rows * 1e6)
    return samples
