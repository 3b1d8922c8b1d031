"""One join partition's state on disk: request id → join entry, and an index of when each is due.

RocksDB (rocksdict) keeps the entries, so memory stays flat however many predictions wait for their
outcomes: a block cache and write buffers within one budget per process (`StoreMemory`), the rest on
disk. Two key spaces in one database:

    e<request id>                          → the entry (msgpack)
    x<due ms, 8 bytes big-endian><request id> → b""   (due = the entry's `at_ms` + retention)

The index orders entries by when the sweep must look at them next, so a sweep reads only what is due,
in slices, instead of walking every entry. A slice's deleted index keys stay behind as tombstones until
RocksDB compacts them, and an iterator steps over every one: a scan that starts at the front of the
index each time costs more with every slice (2.3 s a slice after 2 M entries swept, in
bench/bench_join_memory.py). So the store remembers where the index's first live key was (`_floor`)
and starts there; a key written below it moves it back.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import msgspec
import rocksdict

from rig.feedback.join import Entry

_ENTRY = b"e"
_DUE = b"x"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict).decode

Change = tuple[str, Entry | None, Entry | None]
"""(request id, the entry before, the entry after; None: absent)."""

MEMTABLE_BYTES = 8 * 2**20
"""Size of one of a store's (at most two) memtables."""

ALONE_BYTES = 48 * 2**20
"""The budget of a store opened without one to share (the restore child's, one partition at a time):
a 32 MiB cache and two memtables' worth."""


class StoreMemory:
    """One memory budget for the join stores of a process: a block cache that their memtables are
    charged to as well (RocksDB's write buffer manager), so the stores' memory stays under
    `total_bytes` however many partitions the process holds. A third of it may be memtables: 64 MiB
    of the default 192, as much as four partitions' two memtables each."""

    def __init__(self, total_bytes: int) -> None:
        self.cache = rocksdict.Cache(total_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            total_bytes // 3, False, self.cache
        )


class JoinStore:
    """The entries of one join partition, in a RocksDB database of their own."""

    def __init__(self, path: Path, retention_ms: int, memory: StoreMemory | None = None) -> None:
        """Open (or create) the database at `path`.

        Args:
            path: a folder of this partition's own.
            retention_ms: how long an entry waits before the sweep looks at it (`due`).
            memory: the budget the store shares with the process's other stores (by default one of its
                own, `ALONE_BYTES`).
        """
        self.path = path
        self.retention_ms = retention_ms
        memory = memory if memory is not None else StoreMemory(ALONE_BYTES)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(memory.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(memory.cache)
        table.set_cache_index_and_filter_blocks(True)
        # Almost every multi-get is of request ids not in the store yet (a prediction's first sight):
        # without a filter each looks into every level's files, and a fill slowed down as the store
        # grew (bench/bench_join_memory.py).
        table.set_bloom_filter(10, False)
        # Filters and indexes in partitions of 4 KiB, only their top level pinned in the cache. Whole,
        # a file's filter grows with the file, past what a shard of the block cache (1/64 of it) holds:
        # with a cache of 32 MiB per store, every multi-get read a ~1 MiB filter from the file again, a
        # missing key cost 8.9 µs at 600 k entries (2.0 partitioned), and a fill slowed from 145 k to
        # 62 k entries/s by 3 M (bench/bench_join_memory.py).
        table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        path.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(str(path), options=options)
        # No write-ahead log: a store is never opened again after a crash (the worker restores the
        # partition from the changelog instead, `streams.join`), so the log was only ever written;
        # RocksDB flushes the memtables when a store is closed.
        self._write_options = rocksdict.WriteOptions()
        # A property: rocksdict's stub declares it a method.
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        self._floor = _DUE  # no due key below this one exists
        self.closed = False

    def get_many(self, request_ids: Sequence[str]) -> list[Entry | None]:
        """The entries of these request ids (None where there is none), in one multi-get."""
        if not request_ids:
            return []
        raw = cast(list[bytes | None], self._db.get([_ENTRY + rid.encode() for rid in request_ids]))
        return [None if value is None else _decode(value) for value in raw]

    def write(self, changes: Iterable[Change]) -> None:
        """Apply entry changes and keep the due index in step, in one atomic write batch."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for request_id, before, after in changes:
            rid = request_id.encode()
            if before is not None and (after is None or after["at_ms"] != before["at_ms"]):
                batch.delete(self._due_key(before, rid))
            if after is None:
                batch.delete(_ENTRY + rid)
            else:
                batch.put(_ENTRY + rid, _encode(after))
                if before is None or after["at_ms"] != before["at_ms"]:
                    key = self._due_key(after, rid)
                    batch.put(key, b"")
                    self._floor = min(self._floor, key)
        self._db.write(batch, self._write_options)

    def due(self, now_ms: int, limit: int) -> list[tuple[str, Entry]]:
        """Up to `limit` entries whose retention passed by `now_ms`, earliest first."""
        found: list[tuple[str, Entry]] = []
        iterator = self._db.iter()
        iterator.seek(self._floor)
        if iterator.valid() and iterator.key().startswith(_DUE):
            self._floor = iterator.key()  # the keys the seek stepped over are all deleted
        ids: list[str] = []
        while iterator.valid() and len(ids) < limit:
            key = iterator.key()
            if not key.startswith(_DUE) or int.from_bytes(key[1:9], "big") > now_ms:
                break
            ids.append(key[9:].decode())
            iterator.next()
        for request_id, entry in zip(ids, self.get_many(ids), strict=True):
            if entry is not None:
                found.append((request_id, entry))
        return found

    def restore(self, records: Iterable[tuple[str, Entry | None]]) -> int:
        """Apply a changelog's records in order (None: a tombstone), 10,000 request ids per write
        batch; returns how many records were applied."""
        applied = 0
        latest: dict[str, Entry | None] = {}
        for request_id, entry in records:
            latest[request_id] = entry
            applied += 1
            if len(latest) >= 10_000:
                self._write_latest(latest)
                latest = {}
        self._write_latest(latest)
        return applied

    def _write_latest(self, latest: dict[str, Entry | None]) -> None:
        ids = list(latest)
        self.write((rid, before, latest[rid]) for rid, before in zip(ids, self.get_many(ids), strict=True))

    def estimated_entries(self) -> int:
        """RocksDB's estimate of the keys held (entries and index keys: about twice the entries)."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0) // 2

    def close(self) -> None:
        """Close the database (its files stay)."""
        self._db.close()
        self.closed = True

    def destroy(self) -> None:
        """Close the database and delete its files."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def _due_key(self, entry: Entry, rid: bytes) -> bytes:
        return _DUE + int(entry["at_ms"] + self.retention_ms).to_bytes(8, "big") + rid
