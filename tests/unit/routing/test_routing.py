"""rig.routing.table: the routing table folded from the compacted control topic is the same whether a
worker read the whole log or only the latest record per key, and bad records are reported, never
raised out of the fold."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from rig.errors import RoutingError
from rig.routing.table import (
    EMPTY_ROUTING,
    ExperimentRoute,
    RoutingTable,
    apply_control,
    control_key,
    fold,
    fold_report,
    kill_experiment_event,
    purge_cache_event,
    set_golden_event,
    start_experiment_event,
    stop_experiment_event,
)
from rig.wire.codec import SCHEMAS_DIR, Codec
from rig.wire.records import ControlEvent, ExperimentMode

Record = tuple[bytes, ControlEvent | None]


def rec(event: ControlEvent) -> Record:
    return control_key(event), event


def golden(version: str) -> Record:
    return rec(set_golden_event(version, "ana", "test"))


def shadow(name: str, version: str, cap: float | None = None) -> Record:
    return rec(start_experiment_event(name, version, "shadow", "ana", traffic_cap_rps=cap))


def ab(name: str, version: str, share: float) -> Record:
    return rec(start_experiment_event(name, version, "ab", "ana", traffic_share=share))


def stop(name: str) -> Record:
    return rec(stop_experiment_event(name, "ana", "done"))


def compact(log: list[Record]) -> list[Record]:
    """What Kafka log compaction keeps: the last record of every key, in offset order."""
    last = {key: offset for offset, (key, _) in enumerate(log)}
    return [record for offset, record in enumerate(log) if last[record[0]] == offset]


# -- golden -------------------------------------------------------------------------------------
def test_set_golden_keeps_the_previous_golden_for_rollback() -> None:
    table = fold([golden("m.1"), golden("m.2")])
    assert (table.golden, table.previous_golden) == ("m.2", "m.1")


def test_rolling_back_swaps_golden_and_previous_golden() -> None:
    table = fold([golden("m.1"), golden("m.2"), golden("m.1")])
    assert (table.golden, table.previous_golden) == ("m.1", "m.2")


def test_setting_the_same_golden_again_changes_nothing() -> None:
    table = fold([golden("m.1"), golden("m.2")])
    key, event = golden("m.2")
    assert apply_control(table, event, key) is table


def test_previous_golden_survives_compaction() -> None:
    log = [golden("m.1"), golden("m.2"), golden("m.3"), golden("m.2"), golden("m.4")]
    compacted = compact(log)
    assert len(compacted) < len(log)
    table = fold(compacted)
    assert (table.golden, table.previous_golden) == ("m.4", "m.2")
    assert table == fold(log)


def test_a_tombstone_on_the_current_golden_key_reverts_to_the_previous_golden() -> None:
    log = [golden("m.1"), golden("m.2"), (b"golden:m.2", None)]
    table = fold(log)
    assert (table.golden, table.previous_golden) == ("m.1", None)
    assert fold(compact(log)) == table


# -- compaction ---------------------------------------------------------------------------------
def test_folding_the_compacted_log_gives_the_same_table() -> None:
    log = [
        golden("m.1"),
        shadow("wide", "m.2"),
        ab("deep", "m.3", 0.2),
        golden("m.4"),
        ab("deep", "m.3", 0.3),  # reconfigured: replaces the first start
        shadow("tiny", "m.5", cap=50.0),
        stop("wide"),
        rec(purge_cache_event("ana")),
        golden("m.1"),
    ]
    table = fold(log)
    compacted = compact(log)
    assert len(compacted) == len(log) - 3  # first m.1, first "deep", "wide" start
    assert fold(compacted) == table
    assert fold(compact(compacted)) == table
    assert (table.golden, table.previous_golden) == ("m.1", "m.4")
    assert [(r.name, r.model_version, r.traffic_share, r.live) for r in table.experiments] == [
        ("deep", "m.3", 0.3, True),
        ("tiny", "m.5", 1.0, True),
    ]


def test_a_stopped_experiment_stays_stopped_after_compaction() -> None:
    log = [golden("m.1"), shadow("wide", "m.2"), stop("wide")]
    compacted = compact(log)
    assert [event.kind for _, event in compacted if event] == ["set_golden", "stop_experiment"]
    assert fold(compacted).experiment("wide") is None
    assert fold(log).experiment("wide") is None


def _random_record(rng: random.Random) -> Record:
    versions = ["m.1", "m.2", "m.3", "m.4", "m.5"]
    names = ["e1", "e2", "e3"]
    choice = rng.random()
    name, version = rng.choice(names), rng.choice(versions)
    if choice < 0.2:
        return golden(version)
    if choice < 0.5:
        if rng.random() < 0.5:
            return shadow(name, version, cap=rng.choice([None, 10.0]))
        return ab(name, version, rng.choice([0.2, 0.5, 0.7, 1.0]))
    if choice < 0.6:
        return stop(name)
    if choice < 0.7:
        mode: ExperimentMode = rng.choice(["shadow", "ab"])
        route = ExperimentRoute(name, version, mode, rng.choice([1.0, 0.4]) if mode == "ab" else 1.0)
        return rec(kill_experiment_event(route, "ana"))
    if choice < 0.78:
        return (rng.choice([b"golden:" + version.encode(), b"experiment:" + name.encode()]), None)
    if choice < 0.82:
        return rec(purge_cache_event("ana", version=rng.choice([None, version])))
    # Bad records, as a hand-written producer could send them.
    bad = rng.choice(["no_mode", "mismatch", "unknown_kind", "unknown_key", "bad_share"])
    if bad == "no_mode":
        return _with(shadow(name, version), mode=None)
    if bad == "mismatch":
        return b"experiment:" + rng.choice(names).encode(), golden(version)[1]
    if bad == "unknown_kind":
        return _with(golden(version), kind="promote")
    if bad == "unknown_key":
        return b"routing", golden(version)[1]
    return _with(ab(name, version, 0.5), traffic_share=1.5)


@pytest.mark.parametrize("seed", range(300))
def test_any_compaction_of_a_random_log_with_bad_records_folds_to_the_same_table(seed: int) -> None:
    rng = random.Random(seed)
    log = [_random_record(rng) for _ in range(rng.randint(5, 40))]
    expected = fold(log)

    # Kafka compacts lazily: any subset of superseded records may already be gone.
    last = {key: offset for offset, (key, _) in enumerate(log)}
    partial = [r for offset, r in enumerate(log) if last[r[0]] == offset or rng.random() < 0.5]
    fully = compact(log)
    # After delete.retention.ms the tombstones themselves disappear.
    without_tombstones = [r for r in fully if r[1] is not None]

    assert fold(partial) == expected
    assert fold(fully) == expected
    assert fold(without_tombstones) == expected


# -- validation ---------------------------------------------------------------------------------
def _with(record: Record, **changes: Any) -> Record:
    """The record with some fields changed, as a hand-written producer could send them (a record
    is not validated when built; the codec checks types, the fold checks routing rules)."""
    key, event = record
    assert event is not None
    return key, replace(event, **changes)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_with(golden("m.1"), kind="promote"), "unknown control kind 'promote'"),
        (_with(golden("m.1"), model_version=None), "set_golden needs a non-empty model_version"),
        (_with(shadow("e1", "m.2"), mode=None), "needs mode 'shadow' or 'ab'"),
        (_with(shadow("e1", "m.2"), model_version=""), "start_experiment needs a non-empty model_version"),
        (_with(ab("e1", "m.2", 0.5), traffic_share=0.0), r"traffic_share must be in \(0, 1\]"),
        (_with(ab("e1", "m.2", 0.5), traffic_share=1.5), r"traffic_share must be in \(0, 1\]"),
        (_with(ab("e1", "m.2", 0.5), traffic_share=None), r"traffic_share must be in \(0, 1\]"),
        (_with(ab("e1", "m.2", 0.5), traffic_share="half"), "traffic_share must be a finite number"),
        (_with(shadow("e1", "m.2"), traffic_share=0.5), "a shadow scores every request"),
        (_with(shadow("e1", "m.2"), traffic_cap_rps=0.0), "traffic_cap_rps must be > 0"),
        ((b"experiment:e2", shadow("e1", "m.2")[1]), "does not match"),
        ((b"routing", golden("m.1")[1]), "unknown control key"),
        ((b"golden:m.1", ["set_golden", "m.1"]), "must be a record"),
        (_with(stop("e1"), kind="kill_experiment"), "kill_experiment needs a non-empty model_version"),
    ],
)
def test_invalid_control_records_raise_a_clear_routing_error(record: Record, message: str) -> None:
    key, event = record
    with pytest.raises(RoutingError, match=message):
        apply_control(EMPTY_ROUTING, event, key)


def test_event_helpers_refuse_what_the_fold_would_reject() -> None:
    with pytest.raises(RoutingError, match="traffic_share"):
        start_experiment_event("e1", "m.2", "ab", "ana")
    with pytest.raises(RoutingError, match="actor"):
        set_golden_event("m.1", "")
    with pytest.raises(RoutingError, match="model_version"):
        control_key(replace(set_golden_event("m.1", "ana"), model_version=None))


def test_fold_report_skips_bad_records_reports_them_and_applies_the_rest() -> None:
    bad_kind = _with(golden("m.2"), kind="promote")
    bad_share = _with(ab("e2", "m.3", 0.5), traffic_share=2.0)
    log = [golden("m.1"), bad_kind, shadow("e1", "m.2"), bad_share, golden("m.4")]

    result = fold_report(log)

    assert [(r.key, r.reason.split(";")[0]) for r in result.rejected] == [
        (b"golden:m.2", "unknown control kind 'promote'"),
        (
            b"experiment:e2",
            "start_experiment of A/B experiment 'e2': traffic_share must be in (0, 1], got 2.0",
        ),
    ]
    assert (result.table.golden, result.table.previous_golden) == ("m.4", "m.1")
    assert [r.name for r in result.table.live_experiments] == ["e1"]


def test_a_bad_record_under_a_running_experiments_key_stops_it_on_every_worker() -> None:
    log = [golden("m.1"), shadow("e1", "m.2"), _with(shadow("e1", "m.3"), mode="canary")]
    live = fold_report(log)
    assert len(live.rejected) == 1
    # Compaction will delete the good start record, so a replaying worker never sees it: the
    # worker that saw it must not keep it either.
    assert live.table.experiment("e1") is None
    assert fold(compact(log)) == live.table


def test_an_undecodable_value_is_reported_and_drops_its_keys_state() -> None:
    log: list[tuple[bytes, object]] = [
        golden("m.1"),
        shadow("e1", "m.2"),
        (b"experiment:e1", b"\xc3\x01garbage"),
    ]
    result = fold_report(log)
    assert [(r.key, r.reason) for r in result.rejected] == [
        (b"experiment:e1", "a control event must be a record, not bytes")
    ]
    assert result.table.experiment("e1") is None
    assert result.table.golden == "m.1"


def test_a_tombstone_removes_an_experiment() -> None:
    table = fold([golden("m.1"), shadow("e1", "m.2"), (b"experiment:e1", None)])
    assert table.experiments == ()


# -- cross-key rules: held experiments ----------------------------------------------------------
def test_ab_shares_over_one_raise_and_the_later_experiment_waits_held() -> None:
    table = fold([golden("m.1"), ab("first", "m.2", 0.6)])
    key, event = ab("second", "m.3", 0.5)

    with pytest.raises(RoutingError, match=r"'second' is held: A/B shares would total 1.1 > 1"):
        apply_control(table, event, key)

    held = fold_report([(key, event)], table)
    assert [r.reason.split(":")[0] for r in held.rejected] == ["experiment 'second' is held"]
    assert [r.name for r in held.table.live_experiments] == ["first"]
    assert held.table.experiment("second") is not None


def test_a_held_ab_experiment_starts_when_share_frees_up_on_live_and_replaying_workers() -> None:
    log = [golden("m.1"), ab("first", "m.2", 0.6), ab("second", "m.3", 0.5), stop("first")]
    live = fold(log)
    assert [(r.name, r.live) for r in live.experiments] == [("second", True)]
    # The start of "first" is compacted away: a new worker must reach the same table.
    assert fold(compact(log)) == live


def test_an_experiment_on_the_golden_version_is_held_and_resumes_after_a_rollback() -> None:
    promoted = fold([golden("m.1"), ab("deep", "m.2", 0.2), golden("m.2")])
    route = promoted.experiment("deep")
    assert route is not None and not route.live
    assert route.held_because == "its model version m.2 is the golden model"

    rolled_back = fold([golden("m.1")], promoted)
    assert [r.name for r in rolled_back.live_experiments] == ["deep"]


def test_two_experiments_on_one_model_version_hold_the_later_one() -> None:
    table = fold([golden("m.1"), shadow("a", "m.2"), ab("b", "m.2", 0.1)])
    assert [r.name for r in table.live_experiments] == ["a"]
    held = table.experiment("b")
    assert (
        held is not None
        and held.held_because is not None
        and "already runs in experiment 'a'" in held.held_because
    )


# -- kill, purge, revision ----------------------------------------------------------------------
def test_a_killed_experiment_stays_listed_as_killed_after_compaction() -> None:
    running = fold([golden("m.1"), ab("deep", "m.2", 0.2)])
    route = running.experiment("deep")
    assert route is not None
    log = [golden("m.1"), ab("deep", "m.2", 0.2), rec(kill_experiment_event(route, "ops", "p99 over budget"))]

    table = fold(log)
    killed = table.experiment("deep")
    assert killed is not None
    assert (killed.killed, killed.live, killed.model_version, killed.traffic_share) == (
        True,
        False,
        "m.2",
        0.2,
    )
    assert table.live_experiments == ()
    assert fold(compact(log)) == table


def test_purge_cache_is_accepted_and_leaves_routing_unchanged() -> None:
    table = fold([golden("m.1"), shadow("e1", "m.2")])
    for event in (purge_cache_event("ana"), purge_cache_event("ana", version="m.1")):
        assert apply_control(table, event, control_key(event)) is table


def test_revision_counts_changes_and_not_repeats() -> None:
    first = fold([golden("m.1")])
    second = fold([shadow("e1", "m.2")], first)
    repeated = fold([rec(purge_cache_event("ana")), stop("never-started")], second)
    assert (first.revision, second.revision, repeated.revision) == (1, 2, 2)


# -- keys and events ----------------------------------------------------------------------------
def test_control_keys_name_what_each_event_controls() -> None:
    route = ExperimentRoute("deep", "m.2", "ab", 0.2)
    assert control_key(set_golden_event("m.1", "ana")) == b"golden:m.1"
    assert (
        control_key(start_experiment_event("deep", "m.2", "ab", "ana", traffic_share=0.2))
        == b"experiment:deep"
    )
    assert control_key(stop_experiment_event("deep", "ana")) == b"experiment:deep"
    assert control_key(kill_experiment_event(route, "ana")) == b"experiment:deep"
    assert control_key(purge_cache_event("ana")) == b"cache"
    assert control_key(purge_cache_event("ana", version="m.1")) == b"cache:m.1"


def test_event_helpers_fill_every_control_event_field_and_encode_with_the_codec() -> None:
    schema = json.loads(Path(SCHEMAS_DIR, "ControlEvent.avsc").read_text())
    fields = {f["name"] for f in schema["fields"]}
    codec = Codec(ControlEvent)
    before = int(time.time() * 1000)
    events = [
        set_golden_event("m.1", "ana", "first model"),
        start_experiment_event("deep", "m.2", "ab", "ana", traffic_share=0.2, traffic_cap_rps=100),
        start_experiment_event("wide", "m.3", "shadow", "promoter"),
        stop_experiment_event("wide", "ana", "enough data"),
        kill_experiment_event(ExperimentRoute("deep", "m.2", "ab", 0.2), "ops", "latency"),
        purge_cache_event("ana", version="m.1"),
    ]
    after = int(time.time() * 1000)
    for event in events:
        assert set(msgspec.structs.asdict(event)) == fields
        assert codec.decode(codec.encode(event)) == event
        assert isinstance(event.issued_at, int) and before <= event.issued_at <= after
        assert len(event.event_id) == 32 and int(event.event_id, 16) >= 0
    assert len({event.event_id for event in events}) == len(events)
    assert events[1].traffic_cap_rps == 100.0 and isinstance(events[1].traffic_cap_rps, float)


def test_a_table_built_by_hand_must_have_a_consistent_golden() -> None:
    assert RoutingTable(golden="m.2", previous_golden="m.1").golden_history == ("m.1", "m.2")
    with pytest.raises(RoutingError, match="must have a golden"):
        RoutingTable(golden=None, previous_golden="m.1")
