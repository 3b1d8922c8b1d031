"""Which model scores which rows of a micro-batch, and which model answers each request.

- The golden model scores every row; its score is always recorded.
- Every live shadow experiment scores every row (recorded, never returned).
- A/B experiments answer sticky, hash-assigned shares of *entities*, without overlap. They are taken
  in the routing table's order (the order of their control records, the same on every worker); the
  k-th one takes an entity not taken by an earlier one when `u_k < share_k / (1 - shares before k)`,
  so its expected share is exactly `share_k`. `u_k` is a uniform in [0, 1) drawn from the entity id,
  the salt and the experiment's name:

      h   = CRC-32 (zlib) of salt UTF-8 + b"\\0" + entity_id UTF-8, as uint64
      k   = blake2b(b"rig.ab\\0" + name UTF-8, digest_size=8) as little-endian uint64
      u_k = (splitmix64_finalizer(h XOR k) >> 11) / 2**53

  The per-row hash is CRC-32 rather than blake2b because it runs once per row in Python: blake2b
  costs ~1.5 us a call here (0.75 ms for 500 rows, most of the budget), CRC-32 ~0.2 us. It is not
  used for security, only spread, which the 64-bit finalizer provides. The per-experiment part is
  numpy. Draws are independent between experiments, so a new experiment does not inherit the
  entities of the previous one. The answer for an entity changes only when routing changes:
  adding, stopping or killing a shadow moves nothing; starting an A/B experiment moves nothing
  already assigned (it comes last); stopping, killing or resizing an A/B experiment reshuffles
  the A/B experiments after it.
- Traffic caps: `TrafficLimiter` is a token bucket per experiment. Rows over the cap are not scored by
  that experiment (the first rows of the batch get the tokens); an A/B row over the cap is answered by
  the golden model. Capped rows are counted per experiment.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rig.errors import RoutingError
from rig.routing.table import SHARE_TOLERANCE, ExperimentRoute, RoutingTable

if TYPE_CHECKING:
    import numpy.typing as npt

_SPLITMIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53


@dataclass(frozen=True)
class DispatchPlan:
    """What to score and what to return for one micro-batch.

    Attributes:
        golden: The golden model version (it scores every row).
        score_rows: Model version -> sorted row indices it scores; the golden maps to every row.
            Experiments that score no row of this batch are absent.
        answered_by: Per row, the model version whose score is returned.
        experiment_of: Experiment model version -> its route, for every experiment in `score_rows`.
        capped: Experiment name -> rows it skipped in this batch because of its traffic cap.
    """

    golden: str
    score_rows: dict[str, np.ndarray]
    answered_by: np.ndarray
    experiment_of: dict[str, ExperimentRoute]
    capped: dict[str, int]

    def restricted(self, eligible: Mapping[str, np.ndarray]) -> DispatchPlan:
        """The plan with each experiment scoring only the rows its input allows (`eligible`: per
        version, a boolean mask over the batch, e.g. the rows its transform accepted); an A/B row
        left out is answered by the golden."""
        score_rows = dict(self.score_rows)
        answered_by = self.answered_by
        for version, rows in self.score_rows.items():
            mask = eligible.get(version)
            if version == self.golden or mask is None or mask[rows].all():
                continue
            kept = _frozen(rows[mask[rows]])
            dropped = rows[~mask[rows]]
            if answered_by is self.answered_by:
                answered_by = self.answered_by.copy()
            answered_by[dropped[answered_by[dropped] == version]] = self.golden
            if kept.size:
                score_rows[version] = kept
            else:
                del score_rows[version]
        experiment_of = {v: route for v, route in self.experiment_of.items() if v in score_rows}
        return DispatchPlan(self.golden, score_rows, answered_by, experiment_of, self.capped)


class TrafficLimiter:
    """Token buckets, one per experiment, refilled at the experiment's `traffic_cap_rps`.

    A bucket holds at most `burst_seconds` worth of tokens (at least one) and starts full. Not
    thread-safe: one limiter per consumer loop.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, burst_seconds: float = 1.0) -> None:
        """Args:
        clock: Seconds, monotonic; injected in tests.
        burst_seconds: How many seconds of traffic a bucket can save up.
        """
        if burst_seconds <= 0:
            raise RoutingError(f"burst_seconds must be > 0, got {burst_seconds}")
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, rate_rps: float, wanted: int) -> int:
        """Take up to `wanted` tokens from experiment `name`'s bucket.

        Returns:
            How many rows the experiment may score now (0..wanted).
        """
        now = self._clock()
        tokens = self._tokens(name, rate_rps, now)
        granted = max(0, min(wanted, int(tokens + 1e-9)))
        self._buckets[name] = (tokens - granted, now)
        return granted

    def available(self, name: str, rate_rps: float) -> int:
        """How many tokens `take` would grant now, taking none: lets a caller skip work whose result
        would be refused."""
        return int(self._tokens(name, rate_rps, self._clock()) + 1e-9)

    def _tokens(self, name: str, rate_rps: float, now: float) -> float:
        capacity = max(rate_rps * self._burst_seconds, 1.0)
        tokens, last = self._buckets.get(name, (capacity, now))
        return min(capacity, tokens + max(0.0, now - last) * rate_rps)


def entity_hashes(entity_ids: Sequence[str] | np.ndarray, salt: str = "") -> npt.NDArray[np.uint64]:
    """A stable hash per entity id (CRC-32 of salt and id), as a uint64 array."""
    seed = zlib.crc32(salt.encode() + b"\0")
    return np.array([zlib.crc32(str(entity).encode(), seed) for entity in entity_ids], dtype=np.uint64)


def assignment_draws(hashes: npt.NDArray[np.uint64], experiment: str) -> np.ndarray:
    """Uniform draws in [0, 1), one per entity hash, independent between experiment names."""
    key = np.frombuffer(hashlib.blake2b(b"rig.ab\0" + experiment.encode(), digest_size=8).digest(), "<u8")
    x = hashes ^ key.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _SPLITMIX_1
    x = (x ^ (x >> np.uint64(27))) * _SPLITMIX_2
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def plan_batch(
    table: RoutingTable,
    entity_ids: Sequence[str] | np.ndarray,
    salt: str = "",
    *,
    limiter: TrafficLimiter | None = None,
) -> DispatchPlan:
    """Decide which models score which rows and which model answers each row.

    Args:
        table: The current routing table.
        entity_ids: Entity id of each row of the batch.
        salt: Mixed into the A/B hash; change it to reshuffle every A/B assignment.
        limiter: Applies the experiments' traffic caps; without one, caps are not enforced.

    Returns:
        The DispatchPlan of the batch.

    Raises:
        RoutingError: The table has no golden model (send the requests to the DLQ).
    """
    golden = table.golden
    if golden is None:
        raise RoutingError("no golden model: the routing table has no set_golden")
    n = len(entity_ids)
    every_row = _frozen(np.arange(n, dtype=np.intp))
    score_rows: dict[str, np.ndarray] = {golden: every_row}
    answered_by = np.empty(n, dtype=object)
    answered_by.fill(golden)  # ~10x faster than np.full for object arrays
    experiment_of: dict[str, ExperimentRoute] = {}
    capped: dict[str, int] = {}

    routes = _scoring_routes(table, golden)
    ab_routes = [route for route in routes if route.mode == "ab"]
    if ab_routes and n:
        hashes = entity_hashes(entity_ids, salt)
        free = np.ones(n, dtype=bool)
        remaining = 1.0
        for route in ab_routes:
            share = route.traffic_share
            if share >= remaining - SHARE_TOLERANCE:
                threshold = 1.0
            else:
                threshold = share / remaining if remaining > 0 else 0.0
            mine = free & (assignment_draws(hashes, route.name) < threshold)
            free &= ~mine
            remaining -= share
            rows = _capped_rows(route, np.flatnonzero(mine), limiter, capped)
            if rows.size:
                score_rows[route.model_version] = rows
                experiment_of[route.model_version] = route
                answered_by[rows] = route.model_version
    for route in routes:
        if route.mode == "shadow" and n:
            rows = _capped_rows(route, every_row, limiter, capped)
            if rows.size:
                score_rows[route.model_version] = rows
                experiment_of[route.model_version] = route
    return DispatchPlan(
        golden=golden,
        score_rows=score_rows,
        answered_by=answered_by,
        experiment_of=experiment_of,
        capped=capped,
    )


def _scoring_routes(table: RoutingTable, golden: str) -> list[ExperimentRoute]:
    """Live experiments, each model version once and never the golden one (a table built by hand
    may break the rules the fold enforces)."""
    seen = {golden}
    routes = []
    for route in table.live_experiments:
        if route.model_version not in seen:
            seen.add(route.model_version)
            routes.append(route)
    return routes


def _capped_rows(
    route: ExperimentRoute, rows: np.ndarray, limiter: TrafficLimiter | None, capped: dict[str, int]
) -> np.ndarray:
    if limiter is None or route.traffic_cap_rps is None:
        return _frozen(rows)
    granted = limiter.take(route.name, route.traffic_cap_rps, int(rows.size))
    if granted < rows.size:
        capped[route.name] = int(rows.size) - granted
    return _frozen(rows[:granted])


def _frozen(rows: np.ndarray) -> np.ndarray:
    rows.flags.writeable = False
    return rows
