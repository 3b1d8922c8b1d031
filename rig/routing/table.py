"""Routing state (golden model, experiments) folded from the compacted `rig.control` topic.

Every worker rebuilds the same `RoutingTable` by reading `rig.control` from the beginning and folding
each (key, value) record with `fold_report`. The topic is compacted, so a worker that starts late sees
only the latest record of each key, in offset order. The fold is therefore written so that **the
table is a function of the latest record per key and of their order**: folding the full log and
folding any compacted form of it give equal tables (`revision`, a local change counter, aside).
The control topic has one partition, so that order is the same for every worker.

Keys (see `control_key`):
    golden:<version>       set_golden. One key per version that was ever golden, not one `golden`
                           key: compaction keeps the latest set_golden of every version in offset
                           order, so the golden (last) *and* the previous golden (the one before) are
                           still known after compaction. With a single key the previous golden would
                           be compacted away and a rollback target lost on restart.
    experiment:<name>      start_experiment, stop_experiment, kill_experiment of that experiment.
    cache | cache:<ver>    purge_cache (a command, not routing state; accepted and ignored here).

Stopping: `stop_experiment` is written as an ordinary value under the experiment's key, not as a
tombstone. It supersedes the start record, so after compaction the experiment stays stopped; unlike
a tombstone it records who stopped it and why, it decodes like every other record, and it has no
`delete.retention.ms` window after which a slow reader could miss it. The cost is one small record
per experiment name ever used. A tombstone (value `None`) is still understood: it removes the key's
state (for `golden:<v>`, version v leaves the golden history, so deleting the current golden's key
reverts to the previous golden), which is exactly what compaction leaves behind once it is gone.

`kill_experiment` also replaces the start record under the experiment's key, so it carries the
experiment's whole configuration (`kill_experiment_event` copies it from the route): a killed
experiment stays listed with `killed=True` after compaction. It scores nothing and holds no share.

Bad records. A record that fails validation still supersedes its key's earlier value: Kafka will
compact that value away, so a replaying worker never sees it. `fold_report` therefore reports the
record and continues with the key's state removed (a bad record under `experiment:<name>` stops that
experiment; under `golden:<v>` v stops being golden). Checks that involve several keys are made
when the table is built, not when a record arrives, because compaction can delete the other key's
record that made an event bad: an experiment is *held* (listed, scoring nothing) while its model
version is the golden one or is already used by an earlier experiment, or while its A/B share does
not fit under a total of 1 beside the A/B experiments started before it. A held experiment starts by
itself once the conflict goes away, on every worker alike. `apply_control` raises `RoutingError`
for a bad record and for a start that ends held, so a producer can check an event before sending it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, cast, get_args

from rig.errors import RoutingError
from rig.wire.records import ControlEvent, ControlKind, ExperimentMode

KINDS: tuple[str, ...] = get_args(ControlKind)
EXPERIMENT_MODES: tuple[str, ...] = get_args(ExperimentMode)
GOLDEN_PREFIX = b"golden:"
EXPERIMENT_PREFIX = b"experiment:"
CACHE_KEY = b"cache"
SHARE_TOLERANCE = 1e-9

# (key, value) as read from the topic. The value is the decoded ControlEvent, None for a tombstone,
# or anything else (e.g. the codec's Rejected) for a value that could not be decoded.
ControlRecord = tuple[bytes, object]


@dataclass(frozen=True)
class ExperimentRoute:
    """How one experiment takes part in routing.

    `held_because` is set by the table, never by an event: it says why a started experiment scores
    nothing for now (see the module docstring).
    """

    name: str
    model_version: str
    mode: ExperimentMode
    traffic_share: float = 1.0
    traffic_cap_rps: float | None = None
    killed: bool = False
    held_because: str | None = None

    @property
    def live(self) -> bool:
        """True when the experiment scores requests: neither killed nor held."""
        return not self.killed and self.held_because is None


@dataclass(frozen=True)
class RoutingTable:
    """Golden model and experiments as folded from the control topic.

    `experiments` are in the order of their latest control record; A/B shares are admitted and
    partitioned in that order. `golden_history` lists every version that is golden through its
    `golden:<version>` key, least recently set first; its last two are `golden` and
    `previous_golden`. `revision` counts the changes this process folded: it differs between a
    worker that read the whole log and one that read a compacted log, so equality ignores it.
    """

    golden: str | None = None
    previous_golden: str | None = None
    experiments: tuple[ExperimentRoute, ...] = ()
    revision: int = field(default=0, compare=False)
    golden_history: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.golden_history:
            derived = tuple(v for v in (self.previous_golden, self.golden) if v is not None)
            if self.golden is None and self.previous_golden is not None:
                raise RoutingError("a routing table with a previous golden must have a golden")
            object.__setattr__(self, "golden_history", tuple(dict.fromkeys(derived)))
        history = self.golden_history
        if not history:
            return
        if self.golden != history[-1] or self.previous_golden != (history[-2] if len(history) > 1 else None):
            raise RoutingError(
                f"golden={self.golden!r}, previous_golden={self.previous_golden!r} disagree with "
                f"golden_history={history!r}"
            )

    def experiment(self, name: str) -> ExperimentRoute | None:
        """The route of experiment `name`, or None when it is not started."""
        return next((route for route in self.experiments if route.name == name), None)

    @property
    def live_experiments(self) -> tuple[ExperimentRoute, ...]:
        """Experiments that score requests now, in admission order."""
        return tuple(route for route in self.experiments if route.live)


EMPTY_ROUTING = RoutingTable()


@dataclass(frozen=True)
class RejectedControl:
    """A control record the fold could not apply, and why."""

    key: bytes
    event: object
    reason: str


@dataclass(frozen=True)
class FoldResult:
    """The table after a fold, and the records it rejected (in log order)."""

    table: RoutingTable
    rejected: tuple[RejectedControl, ...] = ()


# -- keys and validation ------------------------------------------------------------------------
def control_key(event: ControlEvent) -> bytes:
    """The compaction key of a control event; the latest value per key is the routing state.

    Args:
        event: A ControlEvent record.

    Returns:
        `golden:<version>`, `experiment:<name>`, `cache:<version>`, `cache-entity:<id>` or `cache`.

    Raises:
        RoutingError: The event is invalid (unknown kind, missing or bad field).
    """
    return _check_event(event)


def _check_event(event: object) -> bytes:
    """Validate one event on its own (no other key involved) and return the key it belongs under."""
    if not isinstance(event, ControlEvent):
        raise RoutingError(f"a control event must be a record, not {type(event).__name__}")
    kind = event.kind
    if kind not in KINDS:
        raise RoutingError(f"unknown control kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "set_golden":
        return GOLDEN_PREFIX + _text(event, "model_version", kind).encode()
    if kind == "purge_cache":
        if event.entity_id is not None:
            return CACHE_KEY + b"-entity:" + _text(event, "entity_id", kind).encode()
        version = event.model_version
        return (
            CACHE_KEY if version is None else CACHE_KEY + b":" + _text(event, "model_version", kind).encode()
        )
    name = _text(event, "experiment", kind)
    if kind in ("start_experiment", "kill_experiment"):
        _route_from(event)
    return EXPERIMENT_PREFIX + name.encode()


def _text(event: ControlEvent, name: str, kind: str) -> str:
    value = getattr(event, name)
    if not isinstance(value, str) or not value:
        raise RoutingError(f"{kind} needs a non-empty {name}, got {value!r}")
    return value


def _number(event: ControlEvent, name: str, kind: str) -> float | None:
    value = getattr(event, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RoutingError(f"{kind}: {name} must be a finite number, got {value!r}")
    return float(value)


def _route_from(event: ControlEvent) -> ExperimentRoute:
    """The route described by a start_experiment or kill_experiment event (validated)."""
    kind = str(event.kind)
    name = _text(event, "experiment", kind)
    version = _text(event, "model_version", kind)
    mode = event.mode
    if mode not in EXPERIMENT_MODES:
        raise RoutingError(f"{kind} of {name!r} needs mode 'shadow' or 'ab', got {mode!r}")
    share = _number(event, "traffic_share", kind)
    if mode == "ab":
        if share is None or not 0.0 < share <= 1.0:
            raise RoutingError(
                f"{kind} of A/B experiment {name!r}: traffic_share must be in (0, 1], got {share}"
            )
    elif share is not None and share != 1.0:
        raise RoutingError(
            f"{kind} of shadow experiment {name!r}: a shadow scores every request, so traffic_share must "
            f"be empty or 1, got {share}; limit its load with traffic_cap_rps"
        )
    cap = _number(event, "traffic_cap_rps", kind)
    if cap is not None and cap <= 0:
        raise RoutingError(f"{kind} of {name!r}: traffic_cap_rps must be > 0 (or empty), got {cap}")
    return ExperimentRoute(
        name=name,
        model_version=version,
        mode=mode,
        traffic_share=1.0 if share is None else share,
        traffic_cap_rps=cap,
        killed=kind == "kill_experiment",
    )


# -- folding ------------------------------------------------------------------------------------
def apply_control(table: RoutingTable, event: ControlEvent | None, key: bytes) -> RoutingTable:
    """Fold one control record into the table (pure).

    Args:
        table: The current table.
        event: The record's value; None for a tombstone.
        key: The record's key.

    Returns:
        The new table; `table` itself when routing did not change (e.g. purge_cache).

    Raises:
        RoutingError: The record is invalid (unknown kind or key, missing version or mode, share
            outside (0, 1], key not matching the event) or the experiment it starts is held
            (A/B shares over 1, version already golden or in another experiment). To skip such a
            record and go on, use `fold_report`: the record still replaces its key's earlier value,
            as it will after compaction, so "skipping" is not "keeping the old table".
    """
    new, reason = _step(table, key, event)
    if reason is not None:
        raise RoutingError(reason)
    return new


def fold_report(records: Iterable[ControlRecord], table: RoutingTable = EMPTY_ROUTING) -> FoldResult:
    """Fold control records in log order; bad records are reported, never raised.

    Args:
        records: (key, value) pairs in offset order; value None for a tombstone. Pass a value that
            could not be decoded as it is (anything but a ControlEvent, e.g. the codec's Rejected): it is
            reported, and its key's earlier state is dropped as compaction will drop it.
        table: The table to start from (empty when reading the topic from the beginning).

    Returns:
        The table a worker replaying the compacted topic would reach, and the rejected records.
    """
    rejected: list[RejectedControl] = []
    for key, event in records:
        table, reason = _step(table, key, event)
        if reason is not None:
            rejected.append(RejectedControl(key=key, event=event, reason=reason))
    return FoldResult(table=table, rejected=tuple(rejected))


def fold(records: Iterable[ControlRecord], table: RoutingTable = EMPTY_ROUTING) -> RoutingTable:
    """`fold_report(records, table).table`: the routing table, bad records skipped."""
    return fold_report(records, table).table


def _step(table: RoutingTable, key: bytes, event: object) -> tuple[RoutingTable, str | None]:
    """The next table and, when the record is rejected or ends held, the reason."""
    history = list(table.golden_history)
    routes = {route.name: route for route in table.experiments}
    target = _parse_key(key)
    if target is None:
        return table, (
            f"unknown control key {key!r}; expected golden:<version>, experiment:<name>, "
            "cache[:<version>] or cache-entity:<id>"
        )
    slot, ident = target
    # The record supersedes the key's earlier value whatever it holds: forget that value first.
    if slot == "golden" and ident in history:
        history.remove(ident)
    elif slot == "experiment":
        routes.pop(ident, None)
    reason: str | None = None
    started: str | None = None
    if event is not None:
        try:
            expected = _check_event(event)
            record = cast(ControlEvent, event)
            if expected != key:
                raise RoutingError(
                    f"record key {key!r} does not match its {record.kind} event ({expected!r})"
                )
        except RoutingError as exc:
            reason = str(exc)
        else:
            kind = record.kind
            if kind == "set_golden":
                history.append(ident)
            elif kind in ("start_experiment", "kill_experiment"):
                routes[ident] = _route_from(record)
                started = ident if kind == "start_experiment" else None
    new = _build(tuple(history), tuple(routes.values()))
    if started is not None:
        route = new.experiment(started)
        if route is not None and route.held_because is not None:
            reason = f"experiment {started!r} is held: {route.held_because}"
    if new == table:
        return table, reason
    return replace(new, revision=table.revision + 1), reason


def _parse_key(key: bytes) -> tuple[str, str] | None:
    try:
        text = bytes(key).decode()
    except (TypeError, UnicodeDecodeError):
        return None
    if text.startswith(GOLDEN_PREFIX.decode()) and len(text) > len(GOLDEN_PREFIX):
        return "golden", text[len(GOLDEN_PREFIX) :]
    if text.startswith(EXPERIMENT_PREFIX.decode()) and len(text) > len(EXPERIMENT_PREFIX):
        return "experiment", text[len(EXPERIMENT_PREFIX) :]
    if text == "cache" or (text.startswith("cache:") and len(text) > len("cache:")):
        return "cache", text[len("cache:") :]
    if text.startswith("cache-entity:") and len(text) > len("cache-entity:"):
        return "cache", text[len("cache-entity:") :]
    return None


def _build(history: tuple[str, ...], routes: tuple[ExperimentRoute, ...]) -> RoutingTable:
    """A table from the golden history and the routes in record order; decides who is held."""
    golden = history[-1] if history else None
    previous = history[-2] if len(history) > 1 else None
    versions: dict[str, str] = {}
    ab_running: list[ExperimentRoute] = []
    admitted: list[ExperimentRoute] = []
    for route in routes:
        held: str | None = None
        if not route.killed:
            ab_total = sum(r.traffic_share for r in ab_running)
            if route.model_version == golden:
                held = f"its model version {route.model_version} is the golden model"
            elif route.model_version in versions:
                owner = versions[route.model_version]
                held = f"model version {route.model_version} already runs in experiment {owner!r}"
            elif route.mode == "ab" and ab_total + route.traffic_share > 1.0 + SHARE_TOLERANCE:
                running = ", ".join(f"{r.name}={r.traffic_share:g}" for r in ab_running)
                held = (
                    f"A/B shares would total {ab_total + route.traffic_share:g} > 1 beside the A/B "
                    f"experiments started before it ({running}); it waits until share frees up"
                )
            else:
                versions[route.model_version] = route.name
                if route.mode == "ab":
                    ab_running.append(route)
        admitted.append(replace(route, held_because=held))
    return RoutingTable(
        golden=golden, previous_golden=previous, experiments=tuple(admitted), golden_history=history
    )


# -- events -------------------------------------------------------------------------------------
def _event(
    kind: ControlKind,
    actor: str,
    reason: str,
    issued_at: int | None,
    **fields: Any,
) -> ControlEvent:
    """The one constructor of ControlEvent records: every factory below, and only they, call it."""
    if not actor:
        raise RoutingError(f"{kind} needs an actor (a person's name, or 'promoter')")
    event = ControlEvent(
        event_id=uuid.uuid4().hex,
        issued_at=int(time.time() * 1000) if issued_at is None else int(issued_at),
        kind=kind,
        actor=actor,
        reason=reason,
        **fields,
    )
    _check_event(event)
    return event


def set_golden_event(
    version: str, actor: str, reason: str = "", *, issued_at: int | None = None
) -> ControlEvent:
    """A ControlEvent making `version` the golden model (every field present).

    Raises:
        RoutingError: empty version or actor.
    """
    return _event("set_golden", actor, reason, issued_at, model_version=version)


def start_experiment_event(
    experiment: str,
    version: str,
    mode: ExperimentMode,
    actor: str,
    reason: str = "",
    *,
    traffic_share: float | None = None,
    traffic_cap_rps: float | None = None,
    issued_at: int | None = None,
) -> ControlEvent:
    """A ControlEvent starting (or reconfiguring) `experiment` on model `version`.

    Args:
        experiment: Experiment name.
        version: Challenger model version.
        mode: "shadow" (scores every request, never answers) or "ab" (answers a sticky share).
        actor: Who issues it.
        reason: Why.
        traffic_share: Share of entities an A/B experiment answers, in (0, 1]; required for "ab",
            empty or 1 for "shadow".
        traffic_cap_rps: Most requests per second it scores; None for no cap.
        issued_at: Milliseconds since the epoch; now by default.

    Raises:
        RoutingError: The event would be rejected by the fold on its own.
    """
    return _event(
        "start_experiment",
        actor,
        reason,
        issued_at,
        experiment=experiment,
        model_version=version,
        mode=mode,
        traffic_share=None if traffic_share is None else float(traffic_share),
        traffic_cap_rps=None if traffic_cap_rps is None else float(traffic_cap_rps),
    )


def stop_experiment_event(
    experiment: str, actor: str, reason: str = "", *, issued_at: int | None = None
) -> ControlEvent:
    """A ControlEvent stopping `experiment` (an ordinary value under its key, see the module doc)."""
    return _event("stop_experiment", actor, reason, issued_at, experiment=experiment)


def kill_experiment_event(
    route: ExperimentRoute, actor: str, reason: str = "", *, issued_at: int | None = None
) -> ControlEvent:
    """A ControlEvent killing the experiment of `route` (take it from the current table).

    The event repeats the route's configuration because it replaces the start record under the
    experiment's key; after compaction it is the only record describing the experiment.
    """
    return _event(
        "kill_experiment",
        actor,
        reason,
        issued_at,
        experiment=route.name,
        model_version=route.model_version,
        mode=route.mode,
        traffic_share=route.traffic_share,
        traffic_cap_rps=route.traffic_cap_rps,
    )


def purge_cache_event(
    actor: str,
    reason: str = "",
    *,
    version: str | None = None,
    entity_id: str | None = None,
    issued_at: int | None = None,
) -> ControlEvent:
    """A ControlEvent asking workers to purge their cache: all of it, one model version's, or one
    entity's (its features changed)."""
    return _event("purge_cache", actor, reason, issued_at, model_version=version, entity_id=entity_id)
