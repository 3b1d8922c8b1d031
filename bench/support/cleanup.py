"""Removing what a benchmark run created on the shared Kafka and Redis, whatever happened to the run."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from bench.support.report import say
from rig.config import RigSettings
from rig.processes import stop_processes


def unlink_keys(redis_url: str, pattern: str) -> int:
    """UNLINK every Redis key matching `pattern` (SCAN, 1,000 at a time); returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted, batch = 0, []
    try:
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += cast(int, client.unlink(*batch))  # a sync client's reply, not an Awaitable
                batch = []
        if batch:
            deleted += cast(int, client.unlink(*batch))
    finally:
        client.close()
    return deleted


def delete_topics(settings: RigSettings, prefix: str) -> int:
    """Delete every topic whose name starts with `prefix` (Faust's internal ones included); how many."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    names = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - best effort, reported
                say(f"could not delete a topic: {error}")
    return len(names)


@dataclass
class Cleanup:
    """What a run created, removed by `run()` whatever happened.

    Every topic and Redis key of a run is under the base settings' topic prefix (unique to the run;
    per-worker prefixes extend it, see `bench.support.deploy.with_prefix`), so both go by that prefix:
    topics (Faust's internal ones included) and keys such as the prediction cache's `<prefix>cache:*`.
    """

    base: RigSettings
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    feast_applied: bool = False

    def run(self) -> None:
        try:
            stop_processes(self.processes)
        except Exception as error:  # noqa: BLE001 - cleanup goes on; reported
            say(f"cleanup: could not stop {[p.pid for p in self.processes]}: {error}")
        if self.feast_applied:
            try:
                from rig.features.store import FeatureStoreClient

                FeatureStoreClient(self.base).teardown()
                say("cleanup: feast project torn down")
            except Exception as error:  # noqa: BLE001
                say(f"cleanup: feast teardown failed: {error}")
        prefix = self.base.topic_prefix
        try:
            deleted = unlink_keys(self.base.redis_url, f"{prefix}*")
            say(f"cleanup: unlinked {deleted} Redis keys under {prefix}")
        except Exception as error:  # noqa: BLE001
            say(f"cleanup: Redis keys under {prefix} not deleted: {error}")
        try:
            say(f"cleanup: deleted {delete_topics(self.base, prefix)} topics")
        except Exception as error:  # noqa: BLE001
            say(f"cleanup: topic deletion failed: {error}")


@contextmanager
def cleaned_up(base: RigSettings) -> Iterator[Cleanup]:
    """A Cleanup that runs on exit, on error and on Ctrl-C (SIGTERM is turned into SystemExit)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cleanup = Cleanup(base)
    try:
        yield cleanup
    finally:
        cleanup.run()
        signal.signal(signal.SIGTERM, previous)
