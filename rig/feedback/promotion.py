"""From joined outcomes to decisions to routing changes: the promoter's control loop, pure.

Every challenger row of a joined outcome carries the golden's score of the same request, so a row is
one paired observation. Rows go through three stages:

1. As they arrive: the sample ratio test of the A/B split (`rig.feedback.srm`, entities per arm) and
   the label delays (`rig.feedback.delays.DelayModel`, one delay per request, from the golden's row).
2. Matured cohorts (`rig.feedback.delays.MaturedCohorts`): a request counts once its label window
   has passed, and only if its outcome came within it; the moments of its loss differences, the
   golden's losses and the calibration bins wait in their cohort until then.
3. The tests: the paired mSPRT per challenger with Holm (`rig.feedback.sequential.Promoter`), the
   golden's reference track (`rig.feedback.monitor.GoldenMonitor`) and the calibration guardrail get
   the matured cohorts; the latency and failed-batch guardrails get the serving windows the predict
   path records (`observe_serving`).

A challenger is promoted only when it wins the primary test and passes every guardrail (and, in an
A/B experiment, the sample ratio check). A flagged sample ratio mismatch holds every A/B challenger of
the split and is recorded as a `keep` decision saying why. The previous golden, kept scoring as a
shadow after a promotion, is just another challenger (exempt from guardrails: it served as golden):
if it beats the current golden, the decision is a rollback (`demote`).

The whole loop (tests, cohorts, seen keys, backlog) is saved with `state` and continued with
`restore`, so a restarted or moved promoter goes on with the same always-valid tests instead of
starting them over (k fresh starts would allow up to k·α false promotions).
"""

from __future__ import annotations

import math
import pickle
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import mmh3
import msgspec
import numpy as np

from rig.errors import PromoterError
from rig.feedback.delays import DelayModel, MaturedCohorts, WindowConfig, cohort_width_ms, groups
from rig.feedback.guardrails import (
    GuardrailConfig,
    PairCalibration,
    ServingStats,
    calibration_check,
    failure_check,
    latency_check,
    unmeasured,
)
from rig.feedback.metadata import EvidencePoint, ServingWindow
from rig.feedback.monitor import GoldenMonitor
from rig.feedback.sequential import (
    NO_EVIDENCE,
    Moments,
    Promoter,
    PromoterConfig,
    losses,
    new_decision,
)
from rig.feedback.srm import SrmMonitor
from rig.routing.table import RoutingTable, set_golden_event, start_experiment_event, stop_experiment_event
from rig.wire.partitioner import partition_for
from rig.wire.records import ControlEvent, Decision, DecisionAction, DecisionCheck, JoinedOutcome, to_plain

PREVIOUS_GOLDEN_EXPERIMENT = "previous-golden"
ACTOR = "promoter"
REDO_MODELS = 10
"""Most models per request the seen rows' windows are sized for (`redo_rows`): a golden and nine
challengers."""
BACKLOG_ROWS = 200_000
"""Most rows kept while the label window is not known yet (the oldest are dropped beyond)."""
SERVING_UNMEASURED = "no worker records serving statistics (model_serving): not enforced"
STATE_FORMAT = 1
"""Version of `PromotionLoop.state`'s layout: a saved state of another format is refused (the tests
then start over), never misread. Raise it whenever the loop's or its parts' attributes change."""


_decode_pairs = msgspec.msgpack.Decoder(list[tuple[str, str]]).decode


def redo_rows(max_open_batches: int, batch_max: int) -> int:
    """How many rows of one join partition a repeated row can come behind its first delivery.

    The join repeats rows only after a crash, and only those of the batches it had in flight: a batch's
    changelog records are produced once its rows are delivered, so a redone batch whose records are on
    Kafka emits nothing again. Between a row and its repeat, the partition emits at most the rows of the
    crashed worker's other open batches and of as many batches redone before it: 2 x `max_open_batches`
    batches of `batch_max` records, each request scored by up to REDO_MODELS models.
    """
    return 2 * max_open_batches * batch_max * REDO_MODELS


def row_key(request_id: str, model_version: str) -> int:
    """A 64-bit fingerprint of a (request, model) pair, the same in every process (a str's `hash` is
    not): ~0.3 µs, one int held instead of a tuple and two strings, and 8 bytes in a saved state. Two
    pairs share one with probability 2^-64."""
    return mmh3.hash128(f"{request_id}\0{model_version}") >> 64


class RecentKeys:
    """The last `capacity` keys seen: tells a first sighting from a repeat, in bounded memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[Any] = deque()
        self._keys: set[Any] = set()

    def __getstate__(self) -> tuple[int, str, bytes]:
        """Pickled as the keys (64-bit fingerprints) in order, one array: a promoter saves its state every
        few seconds, and pickling the keys one by one held the GIL for ~100 ms each time."""
        return self.capacity, "u64", np.fromiter(self._order, np.uint64, len(self._order)).tobytes()

    def __setstate__(self, state: tuple[int, str, bytes] | tuple[int, bytes] | dict[str, Any]) -> None:
        if isinstance(state, dict):  # pickled before __getstate__ existed: its attributes as they were
            vars(self).update(state)
            return
        if len(state) == 2:  # saved before the fingerprints: (request, model) pairs in one msgpack body
            self.capacity, encoded = state
            self._order = deque(_decode_pairs(encoded))
        else:
            self.capacity, _, raw = state
            self._order = deque(np.frombuffer(raw, np.uint64).tolist())
        self._keys = set(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[Any]:
        """The keys, oldest first."""
        return iter(self._order)

    def first_time(self, key: Any) -> bool:
        """True the first time `key` is seen (among the last `capacity` keys), then False."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        while len(self._order) > self.capacity:
            self._keys.discard(self._order.popleft())
        return True


class SeenRows:
    """The rows seen lately, per join partition (the partition of the row's entity): tells a first
    sighting from a repeat.

    A repeat comes from the partition of the first one, at most `capacity` of its rows later
    (`redo_rows`), however long the partition waited for a new owner meanwhile. One window over every
    partition would not do: while a killed worker's partitions wait out the session timeout (45 s), the
    others go on, 135,000 rows at 1,000 requests/s scored by three models.
    """

    def __init__(self, partitions: int, capacity: int) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self._windows: dict[int, RecentKeys] = {}
        self._before: RecentKeys | None = None
        """Pairs of a state saved with one window for every partition, asked until as many rows went by."""
        self._before_left = 0

    @classmethod
    def after(cls, before: RecentKeys, partitions: int, capacity: int) -> SeenRows:
        """Rows seen, continued from the single window of a state saved before there was one per
        partition (its entities unknown): its pairs count as seen for as many rows as it held."""
        seen = cls(partitions, capacity)
        seen._before = RecentKeys(before.capacity)
        for request_id, model_version in before:
            seen._before.first_time(row_key(request_id, model_version))
        seen._before_left = before.capacity
        return seen

    def first_time(self, row: JoinedOutcome) -> bool:
        """True the first time this (request, model) row is seen, then False."""
        key = row_key(row.request_id, row.model_version)
        if self._before is not None:
            if key in self._before:
                return False
            self._before_left -= 1
            if self._before_left <= 0:
                self._before = None
        partition = partition_for(row.entity_id.encode(), self.partitions)
        window = self._windows.get(partition)
        if window is None:
            window = self._windows[partition] = RecentKeys(self.capacity)
        return window.first_time(key)

    def resize(self, capacity: int) -> None:
        """Keep `capacity` rows per partition from now on."""
        self.capacity = capacity
        for window in self._windows.values():
            window.capacity = capacity


@dataclass
class GoldenTests:
    """Everything measured against one golden: started over when the golden changes."""

    promoter: Promoter
    monitor: GoldenMonitor
    calibration: dict[str, PairCalibration] = field(default_factory=dict)
    serving: dict[str, ServingStats] = field(default_factory=dict)
    serving_windows: set[tuple[str, int, str]] = field(default_factory=set)
    """(scope, window end, model version) of the serving windows folded: each is folded once."""
    srm_reported: set[str] = field(default_factory=set)


class PromotionLoop:
    """Keeps the tests of the current golden; starts them over on a switch.

    Joined rows are delivered at least once; a row seen again (same request and model) is counted in
    `duplicate_rows` and not folded in a second time, so no paired observation weighs double.
    """

    def __init__(
        self,
        config: PromoterConfig,
        guardrails: GuardrailConfig | None = None,
        window: WindowConfig | None = None,
        recent_rows: int = redo_rows(4, 500),
        partitions: int = 1,
    ) -> None:
        """`recent_rows`: rows remembered per join partition to tell repeats (`redo_rows` of the join's
        settings); `partitions`: the join's (`RigSettings.topic_partitions`)."""
        self.config = config
        self.guardrails = guardrails or GuardrailConfig()
        self.window = window or WindowConfig()
        self.golden: str | None = None
        self.tests: GoldenTests | None = None
        self.delays = DelayModel()
        """Delays per label, from the metadata store's history (`seed_delays`) and every request seen."""
        self.cohorts = MaturedCohorts()
        self.srm = SrmMonitor(config.alpha, self.guardrails.srm_tolerance)
        self.serving_measured = False
        """True once any serving window was seen: from then on the latency and failed-batch guardrails
        are enforced (before, no worker records them and they are reported `unmeasured`)."""
        self.duplicate_rows = 0
        self.beyond_window: Counter[str] = Counter()
        """Per challenger, paired rows left out because their outcome came after the label window."""
        self._seen = SeenRows(partitions, recent_rows)
        self._backlog: deque[JoinedOutcome] = deque(maxlen=BACKLOG_ROWS)

    @property
    def promoter(self) -> Promoter | None:
        """The primary tests of the current golden's challengers."""
        return None if self.tests is None else self.tests.promoter

    @property
    def monitor(self) -> GoldenMonitor | None:
        """The current golden's degradation monitor."""
        return None if self.tests is None else self.tests.monitor

    @property
    def label_window_ms(self) -> float | None:
        """The label window W in use (None while it cannot be learned yet)."""
        return self.window.window_ms(self.delays)

    def seed_delays(self, history: DelayModel) -> None:
        """Start from recorded label delays (the metadata store's), so W is known from the start."""
        self.delays.merge(history)

    def follow(self, routing: RoutingTable) -> None:
        """Start over when the golden changed (every earlier pair compared another model)."""
        if routing.golden != self.golden:
            self.golden = routing.golden
            self.tests = None
            if routing.golden is not None:
                self.tests = GoldenTests(
                    Promoter(self.config, routing.golden), GoldenMonitor(self.config, routing.golden)
                )
            self.cohorts.clear()
            self.beyond_window.clear()
            self._backlog.clear()

    def observe(self, rows: list[JoinedOutcome], routing: RoutingTable) -> list[JoinedOutcome]:
        """Fold a batch of JoinedOutcome records in (rows of other goldens are ignored); returns the
        rows seen for the first time, so whatever else is fed from them does not count repeats."""
        fresh = [row for row in rows if self._seen.first_time(row)]
        self.duplicate_rows += len(rows) - len(fresh)
        self.follow(routing)
        if self.tests is None:
            return fresh
        self.srm.follow(routing, self.cohorts.watermark_ms)
        self.srm.observe(fresh)
        golden = [row for row in fresh if row.role == "golden" and row.model_version == self.golden]
        if golden:
            labels, predicted, arrived = columns(golden, "label", "prediction_time", "outcome_time")
            self.delays.add(labels, arrived - predicted)
        if fresh:
            self.cohorts.advance(columns(fresh, "outcome_time")[0])
        window = self.label_window_ms
        if window is None:
            self._backlog.extend(fresh)
            return fresh
        waiting = [*self._backlog, *fresh]
        self._backlog.clear()
        self._place(waiting, window)
        self._release(window)
        return fresh

    def state(self) -> bytes:
        """Everything the loop has learned, as bytes for `restore` (format `STATE_FORMAT`).

        Pickle, because the state is a graph of plain dataclasses, deques and sets that must come back
        exactly (float for float, key for key), and a second schema of it would have to follow every
        change of the tests. Unpickling runs code named by the bytes, so a state is only ever loaded
        from the rig's own metadata store, which this promoter alone writes.
        """
        return pickle.dumps((STATE_FORMAT, vars(self)), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes) -> None:
        """Continue from a `state` of a loop with the same settings: every test, cohort, seen key and
        waiting row comes back, so the rows after the state's offset are folded as if never stopped.

        Raises:
            PromoterError: the state is unreadable, of another format, or was taken under other
                promoter settings (alpha, guardrails, label window: a different test; start over).
        """
        try:
            saved_format, saved = pickle.loads(state)
        except Exception as error:  # whatever unpickling a foreign or damaged state raises
            raise PromoterError(f"promoter state unreadable: {error!r}") from error
        if saved_format != STATE_FORMAT:
            raise PromoterError(f"promoter state of format {saved_format!r}, this rig reads {STATE_FORMAT}")
        settings = ("config", "guardrails", "window")
        changed = [name for name in settings if saved[name] != getattr(self, name)]
        if changed:
            raise PromoterError(f"promoter state taken under other settings ({', '.join(changed)})")
        seen = saved["_seen"]
        if isinstance(seen, RecentKeys):  # saved before the windows per partition
            saved["_seen"] = SeenRows.after(seen, self._seen.partitions, self._seen.capacity)
        else:
            seen.resize(self._seen.capacity)  # the join's batches may have grown meanwhile
        vars(self).update(saved)

    def observe_serving(self, windows: Sequence[ServingWindow]) -> None:
        """Fold serving windows (`ServingTally`, read from the metadata store) of the current golden's
        challengers into the latency and failed-batch guardrails; a window folded before is skipped."""
        if windows:
            self.serving_measured = True
        if self.tests is None:
            return
        for window in windows:
            key = (window.scope, window.window_end_ms, window.model_version)
            if window.golden_version == self.golden and key not in self.tests.serving_windows:
                self.tests.serving_windows.add(key)
                held = self.tests.serving.get(window.model_version, ServingStats())
                self.tests.serving[window.model_version] = held.merge(ServingStats.of_window(window))

    def _place(self, rows: list[JoinedOutcome], window: float) -> None:
        """Put the moments of every row that counts into its cohort."""
        tests, cohorts, metric = self.tests, self.cohorts, self.config.metric
        if tests is None or not rows:
            return
        width = cohort_width_ms(window)
        pairs: dict[str, list[JoinedOutcome]] = defaultdict(list)
        golden_rows = []
        for row in rows:
            if row.role == "golden":
                if row.model_version == self.golden:
                    golden_rows.append(row)
            elif row.golden_model_version == self.golden:
                pairs[row.model_version].append(row)
            elif row.golden_model_version is not None:
                tests.promoter.stale_rows += 1
        if golden_rows:
            labels, scores, predicted, arrived = columns(
                golden_rows, "label", "score", "prediction_time", "outcome_time"
            )
            (loss,) = losses(metric, labels, scores)
            keep, keys = cohorts.place(predicted, arrived - predicted, window)
            for key, idx in groups(keys[keep]):
                cohorts.add((width, key), "golden", Moments.of(loss[keep][idx]))
        for challenger, group in pairs.items():
            labels, golden_scores, scores, predicted, arrived = columns(
                group, "label", "golden_score", "score", "prediction_time", "outcome_time"
            )
            loss_g, loss_c = losses(metric, labels, golden_scores, scores)
            keep, keys = cohorts.place(predicted, arrived - predicted, window, count=False)
            self.beyond_window[challenger] += int(keep.size - keep.sum())
            d, y, gs, cs = (loss_g - loss_c)[keep], labels[keep], golden_scores[keep], scores[keep]
            for key, idx in groups(keys[keep]):
                cohorts.add((width, key), f"pair:{challenger}", Moments.of(d[idx]))
                cohorts.add(
                    (width, key), f"calibration:{challenger}", PairCalibration.of(y[idx], cs[idx], gs[idx])
                )

    def _release(self, window: float) -> None:
        """Fold the cohorts that matured into the tests: merged first, so each test looks once."""
        tests = self.tests
        if tests is None:
            return
        merged: dict[str, Any] = {}
        for cohort in self.cohorts.release(window):
            for stream, stats in cohort.items():
                merged[stream] = stats if stream not in merged else merged[stream].merge(stats)
        for stream, stats in merged.items():
            kind, _, name = stream.partition(":")
            if kind == "golden":
                tests.monitor.fold(stats)
            elif kind == "pair":
                tests.promoter.fold(name, stats)
            else:
                held = tests.calibration.get(name)
                tests.calibration[name] = stats if held is None else held.merge(stats)

    def checks(self, routing: RoutingTable) -> dict[str, list[DecisionCheck]]:
        """Per challenger, its guardrail checks and (A/B) its sample ratio check, in that order."""
        tests, cfg, margins = self.tests, self.config, self.guardrails
        if tests is None:
            return {}
        srm = self.srm.checks()
        names = sorted({*tests.promoter.pairs, *tests.calibration, *tests.serving, *srm})
        out = {}
        for name in names:
            serving = tests.serving.get(name, ServingStats())
            if self.serving_measured:
                latency = latency_check(serving, margins.latency_margin, cfg.alpha)
                failures = failure_check(serving, margins.failed_batch_margin, cfg.alpha)
            else:
                latency = unmeasured("latency", SERVING_UNMEASURED)
                failures = unmeasured("failed_batches", SERVING_UNMEASURED)
            calibration = calibration_check(
                tests.calibration.get(name, PairCalibration()),
                margins.calibration_margin,
                cfg.alpha,
                cfg.min_samples,
            )
            out[name] = [latency, failures, calibration, *([srm[name]] if name in srm else [])]
        return out

    def snapshot(self, routing: RoutingTable | None = None) -> dict[str, Any]:
        """Where every test stands now, for people and dashboards (plain JSON values): the golden; per
        challenger the paired rows folded, the mean loss gain (golden minus challenger) with its
        always-valid interval at level 1 - alpha, the always-valid p-value and every check (primary,
        guardrails, SRM); the label window and the cohorts; the A/B split; redelivered rows ignored."""
        tests = self.tests
        challengers: dict[str, Any] = {}
        if tests is not None:
            others = self.checks(routing) if routing is not None else {}
            for version in sorted({*tests.promoter.pairs, *others}):
                pair = tests.promoter.pairs.get(version)
                entry: dict[str, Any] = {
                    "n": 0,
                    "mean_gain": 0.0,
                    "ci_low": None,
                    "ci_high": None,
                    "p_value": 1.0,
                }
                if pair is not None:
                    evidence = pair.evidence(self.config, self.config.alpha)
                    entry = {
                        "n": pair.n,
                        "mean_gain": pair.mean,
                        "ci_low": evidence.low if math.isfinite(evidence.low) else None,
                        "ci_high": evidence.high if math.isfinite(evidence.high) else None,
                        "p_value": pair.p_value,
                    }
                checks = [tests.promoter.primary_check(version), *others.get(version, [])]
                entry["checks"] = [to_plain(check) for check in checks]
                entry["waiting"] = self._waiting(version)
                entry["beyond_window"] = self.beyond_window[version]
                challengers[version] = entry
        window = self.label_window_ms
        return {
            "golden": self.golden,
            "challengers": challengers,
            "duplicate_rows": self.duplicate_rows,
            "label_window_ms": window,
            "label_delays": {
                str(label): {
                    "n": self.delays.n(label),
                    "coverage_bound_ms": self.delays.quantile_bound_ms(
                        label, self.window.coverage, self.window.confidence
                    ),
                }
                for label in (0, 1)
            },
            "cohorts": {
                "watermark_ms": self.cohorts.watermark_ms,
                "pending": len(self.cohorts.pending),
                "counted": self.cohorts.counted,
                "beyond_window": self.cohorts.beyond_window,
                "waiting_for_window": len(self._backlog),
            },
            "srm": self.srm.snapshot(),
            "serving_measured": self.serving_measured,
        }

    def evidence(self, at_ms: int) -> list[EvidencePoint]:
        """Where each challenger of the current golden stands now: its primary test, at the level and
        with the p-value the decision rule uses (the dashboard's history of the confidence sequences)."""
        promoter = self.promoter
        if promoter is None:
            return []
        return [
            EvidencePoint.of_check(at_ms, promoter.golden_version, challenger, check, self.config.min_effect)
            for challenger, check in promoter.primary_checks().items()
        ]

    def _waiting(self, challenger: str) -> int:
        """Paired rows of a challenger seen but not folded yet: in cohorts whose label window is still
        open, or waiting for the window to be learned."""
        stream = f"pair:{challenger}"
        pending = sum(
            stats.n
            for cohort in self.cohorts.pending.values()
            if isinstance(stats := cohort.get(stream), Moments)
        )
        backlog = sum(1 for row in self._backlog if row.role != "golden" and row.model_version == challenger)
        return pending + backlog

    def decide(self, now_ms: int, routing: RoutingTable) -> list[Decision]:
        """Decisions now: sample ratio holds, promotions of challengers, rollbacks to the previous
        golden, demotions."""
        tests = self.tests
        if tests is None:
            return []
        checks = self.checks(routing)
        holds: dict[str, tuple[str, str]] = {}
        for name, items in checks.items():
            if name == routing.previous_golden:
                continue
            srm = next((check for check in items if check.name == "srm"), None)
            if srm is not None and srm.state == "fail":
                holds[name] = ("srm", "sample ratio mismatch")
                continue
            waiting = [f"{check.name} {check.state}" for check in items if check.state in ("pending", "fail")]
            if waiting:
                holds[name] = ("guardrails", "not passed: " + ", ".join(waiting))
        decisions = self._srm_holds(now_ms, checks)
        for decision in tests.promoter.decide(now_ms, holds=holds, checks=checks):
            if decision.action == "promote" and decision.challenger_version == routing.previous_golden:
                rollback = f"rollback: {decision.reason}"
                decision = msgspec.structs.replace(decision, action="demote", reason=rollback)
            decisions.append(decision)
        decisions += tests.monitor.decide(now_ms)
        return decisions

    def _srm_holds(self, now_ms: int, checks: dict[str, list[DecisionCheck]]) -> list[Decision]:
        """One `keep` per A/B challenger of a flagged split (once per split), saying why it is held."""
        tests = self.tests
        if tests is None or not self.srm.mismatch:
            return []
        snapshot = self.srm.snapshot()
        out = []
        for version, check in self.srm.checks().items():
            if version in tests.srm_reported:
                continue
            tests.srm_reported.add(version)
            reason = (
                f"held: sample ratio mismatch in the A/B split, every decision of its experiments waits; "
                f"entities per arm {snapshot['arms']} for shares {snapshot['shares']}, always-valid "
                f"p={self.srm.p_value:.3g} <= {self.config.alpha:g}"
            )
            pair = tests.promoter.pairs.get(version)
            evidence = (
                NO_EVIDENCE if pair is None else pair.evidence(self.config, self.config.alpha).flipped()
            )
            items = [tests.promoter.primary_check(version), *checks.get(version, [check])]
            versions = (tests.promoter.golden_version, version)
            out.append(
                new_decision(
                    now_ms,
                    "keep",
                    self.config.mode,
                    versions,
                    reason,
                    self.config.metric,
                    evidence,
                    None,
                    items,
                )
            )
        return out


def control_events(decision: Decision, routing: RoutingTable) -> list[ControlEvent]:
    """The routing changes that apply a decision (none for `keep`, or for a promotion that names no
    challenger).

    A promotion makes the challenger golden and keeps the old golden scoring as the
    `previous-golden` shadow; a demotion rolls back to the previous golden.
    """
    reason = f"decision {decision.decision_id}: {decision.reason}"
    if decision.action == "promote" and decision.challenger_version is not None:
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
