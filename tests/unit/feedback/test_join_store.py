"""The join state on disk: entries by request id and a due index that the sweep reads in order."""

from __future__ import annotations

from pathlib import Path

from rig.feedback.join import Entry
from rig.feedback.join_store import JoinStore, StoreMemory

RETENTION = 1_000


def entry(state: str, at_ms: int) -> dict[str, object]:
    return {"state": state, "at_ms": at_ms, "prediction": None, "outcome": {"label": 1, "event_time": at_ms}}


def test_entries_are_written_read_and_deleted_by_request_id(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0", RETENTION)
    a, b = entry("predicted", 10), entry("outcome_waiting", 20)
    store.write([("r1", None, a), ("r2", None, b)])
    assert store.get_many(["r1", "r2", "r3"]) == [a, b, None]
    store.write([("r1", a, None)])
    assert store.get_many(["r1", "r2"]) == [None, b]
    store.destroy()


def test_the_due_index_lists_entries_whose_retention_passed_earliest_first_and_follows_changes(
    tmp_path: Path,
) -> None:
    store = JoinStore(tmp_path / "p0", RETENTION)
    store.write([("late", None, entry("predicted", 500)), ("early", None, entry("predicted", 100))])
    assert store.due(now_ms=1_099, limit=10) == []
    assert [rid for rid, _ in store.due(now_ms=1_100, limit=10)] == ["early"]
    assert [rid for rid, _ in store.due(now_ms=5_000, limit=10)] == ["early", "late"]
    assert [rid for rid, _ in store.due(now_ms=5_000, limit=1)] == ["early"]

    moved = entry("joined", 3_000)  # a state change moves the entry's due time
    store.write([("early", entry("predicted", 100), moved)])
    assert [rid for rid, _ in store.due(now_ms=1_600, limit=10)] == ["late"]
    assert store.due(now_ms=4_000, limit=10) == [("late", entry("predicted", 500)), ("early", moved)]
    store.write([("late", entry("predicted", 500), None)])
    assert store.due(now_ms=4_000, limit=10) == [("early", moved)], "a deleted entry leaves the index"
    store.destroy()


def test_a_restore_applies_a_changelog_in_order_tombstones_included(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0", RETENTION)
    records: list[tuple[str, Entry | None]] = [(f"r{i}", entry("predicted", i)) for i in range(25_000)]
    records += [("r1", entry("joined", 9_000)), ("r2", None)]
    assert store.restore(records) == 25_002
    assert store.get_many(["r0", "r1", "r2", "r24999"]) == [
        entry("predicted", 0),
        entry("joined", 9_000),
        None,
        entry("predicted", 24_999),
    ]
    due = [rid for rid, _ in store.due(now_ms=RETENTION + 3, limit=100)]
    assert due == ["r0", "r3"], "r1 moved, r2 was deleted: the index follows"
    assert 20_000 < store.estimated_entries() < 30_000
    store.close()
    reopened = JoinStore(tmp_path / "p0", RETENTION)
    assert reopened.get_many(["r24999"]) == [entry("predicted", 24_999)], "the state is on disk"
    reopened.destroy()
    assert not (tmp_path / "p0").exists()


def test_after_a_sweep_moved_past_the_front_an_entry_due_earlier_is_still_found_first(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0", RETENTION)
    first = [(f"r{i}", None, entry("predicted", 100 + i)) for i in range(5)]
    store.write(first)
    assert [rid for rid, _ in store.due(now_ms=5_000, limit=3)] == ["r0", "r1", "r2"]
    store.write([(f"r{i}", entry("predicted", 100 + i), None) for i in range(3)])  # swept away
    assert [rid for rid, _ in store.due(now_ms=5_000, limit=10)] == ["r3", "r4"]

    store.write([("late-comer", None, entry("predicted", 50))])  # due before everything left

    assert [rid for rid, _ in store.due(now_ms=5_000, limit=10)] == ["late-comer", "r3", "r4"]
    store.destroy()


def test_filters_and_indexes_are_partitioned_so_a_lookup_reads_small_blocks(tmp_path: Path) -> None:
    # Whole, a file's filter outgrew a shard of the block cache and was read again for every multi-get
    # (the comment in JoinStore.__init__); RocksDB writes the options in effect to the store's folder.
    store = JoinStore(tmp_path / "p0", RETENTION)
    written = (sorted(store.path.glob("OPTIONS-*"))[-1]).read_text().splitlines()
    store.destroy()
    options = dict(line.strip().split("=", 1) for line in written if "=" in line)
    assert options["index_type"] == "kTwoLevelIndexSearch"
    assert options["partition_filters"] == "true"
    assert options["metadata_block_size"] == "4096"
    assert options["pin_top_level_index_and_filter"] == "true"
    assert options["filter_policy"] == "bloomfilter"


def test_stores_of_one_process_share_one_memory_budget_their_memtables_included(tmp_path: Path) -> None:
    memory = StoreMemory(48 * 2**20)
    stores = [JoinStore(tmp_path / f"p{p}", RETENTION, memory) for p in range(2)]
    assert memory.write_buffers.get_buffer_size() == 16 * 2**20  # a third of the budget
    large = {"state": "predicted", "at_ms": 1, "prediction": {"scores": "s" * 200}, "outcome": None}
    usage = [memory.cache.get_usage()]
    for store in stores:
        store.write([(f"r{i}", None, large) for i in range(2_000)])
        usage.append(memory.cache.get_usage())
    # Each store's memtable (~0.5 MiB here) is charged to the one cache: it grows with either store.
    assert usage[1] - usage[0] > 2**19
    assert usage[2] - usage[1] > 2**19
    assert memory.write_buffers.get_usage() > 2**20
    for store in stores:
        store.destroy()
