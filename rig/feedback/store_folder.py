"""The folder a process keeps its join stores in: its own while it runs, removed by the next one after.

Two processes must never open RocksDB at one path. Workers on one host with one `RIG_HOME` (a second
worker to scale out, the join processes of `RIG_JOIN_PROCESSES`) would otherwise share
`<join dir>/<prefix><partition>`: the worker that takes a partition over deletes the folder to restore
it, under the store its previous holder keeps open in case the partition comes back, and each then
writes files into the other's folder. A new process never reuses a store (it restores partitions
from their changelog), so nothing is lost by a folder per process.

A process owns its folder by a lock on a file in it (`flock`): the kernel releases it however the
process ends, and it holds across PID namespaces (containers sharing a volume), where a pid would
say nothing. A folder whose lock is free belongs to a process that is gone, and is removed; so is a
folder that a process died claiming (`.claiming-*`, named so for the microseconds before its lock),
once it is older than any claim takes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "process-"
LOCK_FILE = "owner.lock"
_CLAIMING = ".claiming-"
CLAIM_GRACE_S = 60.0
"""Age after which a `.claiming-*` folder is abandoned: a claim makes, locks and renames it at once, and
one younger may be in the moment between making and locking, where its lock is still free."""


def claim_store_folder(root: Path) -> Path:
    """Create a folder under `root` that this process owns until it exits (the lock's file descriptor
    stays open until then), after removing the folders of processes that are gone.

    Raises:
        OSError: `root` cannot be created or written.
    """
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    # Locked before it gets a name others look at: a folder named `process-*` is always locked while
    # its owner runs, so a process removing abandoned folders never takes one that is being made.
    claiming = root / f"{_CLAIMING}{name}"
    claiming.mkdir()
    fcntl.flock(_open_lock_file(claiming), fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder = root / f"{PREFIX}{name}"
    claiming.rename(folder)
    return folder


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the folders under `root` whose owner is gone (their lock is free); returns them."""
    removed = []
    for folder in sorted(root.glob(f"{PREFIX}*")) + _abandoned_claims(root):
        if not folder.is_dir():
            continue
        try:
            descriptor = _open_lock_file(folder)
        except FileNotFoundError:  # removed meanwhile by another process starting
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue  # its owner runs
        shutil.rmtree(folder, ignore_errors=True)
        os.close(descriptor)
        removed.append(folder)
    if removed:
        names = ", ".join(folder.name for folder in removed)
        log.info(
            "removed the join stores of %d processes that are gone under %s: %s", len(removed), root, names
        )
    return removed


def _abandoned_claims(root: Path) -> list[Path]:
    """The `.claiming-*` folders under `root` older than `CLAIM_GRACE_S` (their lock decides)."""
    claims = []
    for folder in sorted(root.glob(f"{_CLAIMING}*")):
        try:
            age_s = time.time() - folder.stat().st_mtime
        except FileNotFoundError:  # renamed by its claim, or removed by another process starting
            continue
        if age_s > CLAIM_GRACE_S:
            claims.append(folder)
    return claims


def _open_lock_file(folder: Path) -> int:
    """A descriptor of `folder`'s lock file (made if missing: a folder without one is never in use),
    not inherited by the processes this one starts."""
    return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
