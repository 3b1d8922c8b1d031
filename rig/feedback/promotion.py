"""From joined outcomes to decisions to routing changes: the promoter's control loop, pure.

Every challenger row of a joined outcome carries the golden's score of the same request, so a row is
one paired observation. The previous golden, kept scoring as a shadow after a promotion, is just
another challenger: if it beats the current golden, the decision is a rollback (`demote`). The
golden's own rows feed the `GoldenMonitor`, which demotes a golden that degrades against its own
reference window.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from rig.feedback.sequential import GoldenMonitor, Promoter, PromoterConfig, new_decision
from rig.routing.table import RoutingTable, set_golden_event, start_experiment_event, stop_experiment_event
from rig.wire.records import ControlEvent, Decision, DecisionAction, JoinedOutcome

PREVIOUS_GOLDEN_EXPERIMENT = "previous-golden"
ACTOR = "promoter"
RECENT_ROWS = 200_000
"""How many (request, model) keys the loop remembers to drop redelivered rows: a redelivery replays
the uncommitted tail of `rig.joined`, far fewer rows than this."""


class RecentKeys:
    """The last `capacity` keys seen: tells a first sighting from a repeat, in bounded memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[tuple[str, str]] = deque()
        self._keys: set[tuple[str, str]] = set()

    def first_time(self, key: tuple[str, str]) -> bool:
        """True the first time `key` is seen (among the last `capacity` keys), then False."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._keys.discard(self._order.popleft())
        return True


class PromotionLoop:
    """Keeps the promoter and the golden monitor for the current golden; resets them on a switch.

    Joined rows are delivered at least once; a row seen again (same request and model) is counted in
    `duplicate_rows` and not folded in a second time, so no paired observation weighs double.
    """

    def __init__(self, config: PromoterConfig, recent_rows: int = RECENT_ROWS) -> None:
        self.config = config
        self.golden: str | None = None
        self.promoter: Promoter | None = None
        self.monitor: GoldenMonitor | None = None
        self.duplicate_rows = 0
        self._seen = RecentKeys(recent_rows)

    def follow(self, routing: RoutingTable) -> None:
        """Start over when the golden changed (every earlier pair compared another model)."""
        if routing.golden != self.golden:
            self.golden = routing.golden
            self.promoter = None if routing.golden is None else Promoter(self.config, routing.golden)
            self.monitor = None if routing.golden is None else GoldenMonitor(self.config, routing.golden)

    def observe(self, rows: list[JoinedOutcome], routing: RoutingTable) -> list[JoinedOutcome]:
        """Fold a batch of JoinedOutcome records in (rows of other goldens are ignored); returns the
        rows seen for the first time, so whatever else is fed from them does not count repeats."""
        fresh = [row for row in rows if self._seen.first_time((row.request_id, row.model_version))]
        self.duplicate_rows += len(rows) - len(fresh)
        self.follow(routing)
        if self.promoter is None or self.monitor is None:
            return fresh
        pairs: dict[tuple[str, str], list[JoinedOutcome]] = defaultdict(list)
        golden_rows = []
        for row in fresh:
            if row.role == "golden":
                if row.model_version == self.golden:
                    golden_rows.append(row)
            elif row.golden_model_version is not None:
                pairs[(row.golden_model_version, row.model_version)].append(row)
        for (golden, challenger), group in pairs.items():
            labels, golden_scores, scores = columns(group, "label", "golden_score", "score")
            self.promoter.observe(golden, challenger, labels, golden_scores, scores)
        if golden_rows:
            self.monitor.observe(*columns(golden_rows, "label", "score"))
        return fresh

    def snapshot(self) -> dict[str, Any]:
        """Where the tests stand now, for people and dashboards: the golden, and per challenger the
        paired rows folded, the mean loss gain (golden minus challenger) with its always-valid
        interval at level 1 - alpha, and the always-valid p-value; redelivered rows ignored."""
        pairs = {} if self.promoter is None else self.promoter.pairs
        challengers = {}
        for version, pair in pairs.items():
            evidence = pair.evidence(self.config, self.config.alpha)
            challengers[version] = {
                "n": pair.n,
                "mean_gain": pair.mean,
                "ci_low": evidence.low if math.isfinite(evidence.low) else None,
                "ci_high": evidence.high if math.isfinite(evidence.high) else None,
                "p_value": pair.p_value,
            }
        return {"golden": self.golden, "challengers": challengers, "duplicate_rows": self.duplicate_rows}

    def decide(self, now_ms: int, routing: RoutingTable) -> list[Decision]:
        """Decisions now: promotions of challengers, rollbacks to the previous golden, demotions."""
        if self.promoter is None or self.monitor is None:
            return []
        decisions = []
        for decision in self.promoter.decide(now_ms):
            if decision.action == "promote" and decision.challenger_version == routing.previous_golden:
                rollback = f"rollback: {decision.reason}"
                decision = msgspec.structs.replace(decision, action="demote", reason=rollback)
            decisions.append(decision)
        decisions += self.monitor.decide(now_ms)
        return decisions


def control_events(decision: Decision, routing: RoutingTable) -> list[ControlEvent]:
    """The routing changes that apply a decision (none for `keep`).

    A promotion makes the challenger golden and keeps the old golden scoring as the
    `previous-golden` shadow; a demotion rolls back to the previous golden.
    """
    reason = f"decision {decision.decision_id}: {decision.reason}"
    if decision.action == "promote":
        old = decision.golden_version
        return [
            set_golden_event(decision.challenger_version, actor=ACTOR, reason=reason),
            start_experiment_event(PREVIOUS_GOLDEN_EXPERIMENT, old, "shadow", actor=ACTOR, reason=reason),
        ]
    if decision.action == "demote" and routing.previous_golden is not None:
        events = [set_golden_event(routing.previous_golden, actor=ACTOR, reason=reason)]
        if routing.experiment(PREVIOUS_GOLDEN_EXPERIMENT) is not None:
            events.append(stop_experiment_event(PREVIOUS_GOLDEN_EXPERIMENT, actor=ACTOR, reason=reason))
        return events
    return []


def manual_decision(
    action: DecisionAction, golden: str, challenger: str | None, reason: str, now_ms: int
) -> Decision:
    """A Decision record for a promotion or rollback made by hand (`rig promote`, `rig rollback`).

    It carries no statistical evidence (n = 0, estimate and interval 0): a person decided.
    """
    return new_decision(now_ms, action, "manual", (golden, challenger), reason)


def columns(rows: list[JoinedOutcome], *names: str) -> list[np.ndarray]:
    """Numpy columns of some fields of a list of records."""
    return [np.array(list(map(attrgetter(name), rows))) for name in names]
