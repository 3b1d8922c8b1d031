"""Restoring join partitions from their changelog, in a child process.

A restore is a Python loop over every changelog record (decode it, write it to RocksDB): 1.4-2.7 s
per partition of 63-94 k records in the demo. Run in the worker's process, it held the GIL in the join
source's thread, and the event loop, which gives the GIL up at every socket call, waited up to the
switch interval (5 ms) to get it back each time: while a worker started, the demo's steady p99 was
140-186 ms, against 24-30 ms with the restore in a child process (which restores on an interpreter
of its own; the worker waits for it in the join source's thread, without the GIL).

Run as `python -m streams.join_restore` with a `RestoreJob` as JSON on stdin, then a line with the
worker's pid; it writes one `Restored` line per partition on stdout, and leaves off when the worker
that started it is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from rig.config import KafkaConfig
from rig.errors import JoinRestoreError
from rig.feedback.join import Entry
from rig.feedback.join_store import JoinStore

_decode_entry = msgspec.msgpack.Decoder(dict).decode


class PartitionJob(msgspec.Struct, frozen=True):
    """One partition to restore: its changelog up to `end`, into a new store at `path`."""

    partition: int
    end: int
    path: str


class RestoreJob(msgspec.Struct, frozen=True):
    """What the child restores, and how it reads the changelog."""

    reader_config: KafkaConfig
    """confluent-kafka consumer settings of a reader that never joins its group or commits."""
    changelog: str
    retention_ms: int
    partitions: list[PartitionJob]


class Restored(msgspec.Struct, frozen=True):
    """A partition restored: how many changelog records were applied, in how long, and the child's
    peak memory so far (its own: a worker's pod holds both processes while a restore runs)."""

    partition: int
    records: int
    seconds: float
    peak_rss_bytes: int | None


def restore_in_child(job: RestoreJob) -> list[Restored]:
    """Restore the job's partitions in a child process and wait for it (its errors go to this
    process's stderr).

    Raises:
        JoinRestoreError: the child failed; the partitions' stores are incomplete.
    """
    child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # The worker's pid goes with the job: a child that asked for its parent only once it started
        # would take whoever adopted it for its worker, were the worker killed meanwhile.
        output, _ = child.communicate(msgspec.json.encode(job) + b"\n" + str(os.getpid()).encode())
    finally:
        if child.poll() is None:  # communicate() raised: the child must not write on alone
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise JoinRestoreError(
            f"restoring join partitions {[p.partition for p in job.partitions]} from {job.changelog} "
            f"failed: the child process exited with {child.returncode} (its error is in the log above)"
        )
    return [msgspec.json.decode(line, type=Restored) for line in output.splitlines()]


def restore(job: RestoreJob, parent: int) -> Iterator[Restored]:
    """Restore the job's partitions one after the other; leave off when the process `parent` is gone."""
    for partition in job.partitions:
        started = time.monotonic()
        store = JoinStore(Path(partition.path), job.retention_ms)
        try:
            records = store.restore(changelog(job, partition, parent))
        finally:
            store.close()
        seconds = round(time.monotonic() - started, 3)
        yield Restored(partition.partition, records, seconds, peak_rss_bytes())


def changelog(job: RestoreJob, partition: PartitionJob, parent: int) -> Iterator[tuple[str, Entry | None]]:
    """The changelog partition's committed records, from its start up to `partition.end`.

    Progress is the consumer's position, not the last record's offset: with exactly-once on, the
    changelog is written in transactions, whose commit markers and aborted records are never
    handed out, so the record before `end` is often a marker and no record reaches it (a restore
    that waited for one hung until somebody wrote to the partition again).

    Raises:
        JoinRestoreError: the process `parent` is gone (its stores would be opened by nobody).
    """
    if partition.end <= 0:
        return
    consumer = Consumer(job.reader_config)
    topic_partition = TopicPartition(job.changelog, partition.partition)
    try:
        consumer.assign([TopicPartition(job.changelog, partition.partition, OFFSET_BEGINNING)])
        while True:
            for message in consumer.consume(10_000, timeout=0.2):
                if message.error():
                    continue
                value = message.value()
                # Every changelog record has a request id for key; confluent-kafka types it Optional.
                yield cast(bytes, message.key()).decode(), None if value is None else _decode_entry(value)
            if consumer.position([topic_partition])[0].offset >= partition.end:
                return
            if os.getppid() != parent:
                raise JoinRestoreError("the worker that started this restore is gone")
    finally:
        consumer.close()


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory since it started this program (Linux's `VmHWM`; None
    where /proc does not give it). Not `getrusage`'s `ru_maxrss`: Linux keeps that across `execve`,
    so a child's would start at its worker's peak."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # in kB
    return None


def main() -> None:
    """The child: read the job from stdin, restore, write each partition's `Restored` on stdout."""
    encoded_job, worker = sys.stdin.buffer.read().rsplit(b"\n", 1)
    job = msgspec.json.decode(encoded_job, type=RestoreJob)
    for restored in restore(job, int(worker)):
        sys.stdout.buffer.write(msgspec.json.encode(restored) + b"\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
