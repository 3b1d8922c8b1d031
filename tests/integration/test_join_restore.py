"""The join restores a partition's state from a changelog written in Kafka transactions (exactly-once
on): committed records only, and the restore ends although commit markers, never handed to a reader,
close the partition (or a killed worker's transaction is still open)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rig.config import RigSettings
from rig.errors import JoinRestoreError
from rig.feedback.join import Entry
from rig.feedback.join_store import Change
from streams.join import Join, Partition
from streams.join_restore import PartitionJob, RestoreJob, restore_in_child

pytestmark = pytest.mark.integration

RESTORE_BOUND_S = 30


def entry(at_ms: int) -> Entry:
    return {"state": "outcome_waiting", "at_ms": at_ms, "prediction": None, "outcome": [1, at_ms]}


@pytest.fixture
def join(settings: RigSettings, kafka_bootstrap: str) -> Iterator[Join]:
    join = Join(settings.model_copy(update={"topic_partitions": 1, "kafka_bootstrap": kafka_bootstrap}))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(join.changelog, 1, 1)])[join.changelog].result()
    yield join
    for state in join.held.values():
        state.store.close()


def transaction(producer: Producer, topic: str, records: dict[str, Entry | None], commit: bool) -> None:
    producer.begin_transaction()
    for request_id, value in records.items():
        body = None if value is None else msgspec.msgpack.encode(value)
        producer.produce(topic, body, request_id.encode(), 0)
    if commit:
        producer.commit_transaction(30)
    else:
        assert producer.flush(30) == 0  # written, never committed: a worker killed mid-transaction


def restore(join: Join) -> None:
    worker = threading.Thread(target=join.assigned, args=({(join.topics["prediction"], 0)},), daemon=True)
    worker.start()
    worker.join(RESTORE_BOUND_S)
    assert not worker.is_alive(), f"the restore did not end within {RESTORE_BOUND_S} s"


@pytest.mark.parametrize("killed_mid_transaction", [False, True])
def test_a_transactional_changelog_is_restored_to_its_committed_records(
    join: Join, kafka_bootstrap: str, killed_mid_transaction: bool
) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": join.changelog})
    producer.init_transactions(30)
    transaction(producer, join.changelog, {"r-1": entry(1), "r-2": entry(2)}, commit=True)
    transaction(producer, join.changelog, {"r-1": None, "r-3": entry(3)}, commit=True)
    if killed_mid_transaction:
        transaction(producer, join.changelog, {"r-2": None, "r-4": entry(4)}, commit=False)

    restore(join)

    store = join.held[0].store
    assert store.get_many(["r-1", "r-2", "r-3", "r-4"]) == [None, entry(2), entry(3), None]


def test_a_restore_reports_its_records_and_the_child_process_peak_memory(
    join: Join, kafka_bootstrap: str, tmp_path: Path
) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(3):
        producer.produce(join.changelog, msgspec.msgpack.encode(entry(i)), f"r-{i}".encode(), 0)
    assert producer.flush(30) == 0
    job = RestoreJob(join._reader_config(), join.changelog, 1_000, [PartitionJob(0, 3, str(tmp_path / "p0"))])
    worker_memory = bytearray(400 * 2**20)  # resident (zeroed) in the "worker" when the child starts

    [restored] = restore_in_child(job)

    assert (restored.partition, restored.records) == (0, 3)
    # An interpreter with librdkafka and RocksDB loaded: tens of MiB, its own only (a peak read from
    # getrusage would start at this process's 400 MiB and more; kB read as bytes, at ~60 kB).
    assert restored.peak_rss_bytes is not None and 10 * 2**20 < restored.peak_rss_bytes < 300 * 2**20
    del worker_memory


def test_a_restore_that_fails_in_its_child_process_raises(join: Join, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    job = RestoreJob(join._reader_config(), join.changelog, 1_000, [PartitionJob(0, 1, str(blocked / "p0"))])

    with pytest.raises(JoinRestoreError, match=r"partitions \[0\].*exited with 1"):
        restore_in_child(job)


def test_a_restore_whose_worker_is_gone_leaves_off(join: Join, tmp_path: Path) -> None:
    # A "worker" that restores a partition whose changelog never reaches its end, then is killed:
    # its child must not go on writing a store that a new worker would open.
    job = RestoreJob(
        join._reader_config(), join.changelog, 1_000, [PartitionJob(0, 10**9, str(tmp_path / "p0"))]
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, msgspec; from streams.join_restore import RestoreJob, restore_in_child;"
            " restore_in_child(msgspec.json.decode(sys.stdin.buffer.read(), type=RestoreJob))",
        ],
        stdin=subprocess.PIPE,
    )
    assert worker.stdin is not None
    worker.stdin.write(msgspec.json.encode(job))
    worker.stdin.close()
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
    deadline = time.monotonic() + RESTORE_BOUND_S
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    [child] = [int(pid) for pid in children.read_text().split()]

    worker.kill()
    worker.wait()

    deadline = time.monotonic() + 10
    while _state(child) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    went_on = _state(child) not in ("gone", "Z")
    if went_on:
        os.kill(child, signal.SIGKILL)  # not left running after the test
    assert not went_on, "the restore went on without its worker"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_partition_taken_over_on_the_same_home_leaves_the_store_its_holder_kept_untouched(
    join: Join,
) -> None:
    """Two workers on one host and one RIG_HOME: the one taking a partition over restores it into a
    new folder, while the one that let it go keeps its store open in case it comes back."""
    restore(join)
    join.held[0].store.write([("r-1", None, entry(1))])
    kept_path = join.held[0].store.path
    kept_inode = kept_path.stat().st_ino
    join.revoked({(join.topics["prediction"], 0)}, finished=True)
    other = Join(join.settings)

    restore(other)

    assert 0 in other.held, "the other join restored the partition (see the restore thread's error)"
    other.held[0].store.close()
    assert other.held[0].store.path != kept_path
    assert kept_path.stat().st_ino == kept_inode, "the kept store's folder was neither removed nor made anew"
    restore(join)  # back: nobody wrote its changelog meanwhile, so the kept store is held again
    assert join.held[0].store.path == kept_path and join.held[0].store.get_many(["r-1"]) == [entry(1)]


def test_a_batch_written_after_its_partition_was_let_go_is_in_the_store_kept_for_its_return(
    join: Join,
) -> None:
    """A revoke waits for a batch's delivery (or commit), then reads the changelog's end; the batch's
    store write may come after. Skipped then, the kept store would lack what its changelog's end says
    it holds, and the partition would come back without it."""
    restore(join)
    # A batch published, its store write not done yet:
    changes: dict[Partition, list[Change]] = {join.held[0]: [("r-1", None, entry(1))]}
    join.revoked({(join.topics["prediction"], 0)}, finished=True)

    join.write(changes)
    restore(join)  # back, nobody wrote its changelog meanwhile: the store is kept

    assert join.held[0].store.get_many(["r-1"]) == [entry(1)]
