"""Each process that joins keeps its stores in a folder of its own; the next one removes those of
processes that are gone, never those of a process that runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rig.feedback.store_folder import (
    CLAIM_GRACE_S,
    LOCK_FILE,
    PREFIX,
    claim_store_folder,
    remove_abandoned,
)

CLAIM_AND_WAIT = (
    "import sys; from pathlib import Path; from rig.feedback.store_folder import claim_store_folder; "
    "print(claim_store_folder(Path(sys.argv[1])), flush=True); sys.stdin.read()"
)


def claim_in_process(root: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process that claims a folder under `root` and runs until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_two_claims_under_one_root_get_two_folders_and_keep_them(tmp_path: Path) -> None:
    first, second = claim_store_folder(tmp_path / "join"), claim_store_folder(tmp_path / "join")

    assert first != second and first.parent == second.parent == tmp_path / "join"
    assert first.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert remove_abandoned(tmp_path / "join") == [], "both are locked by this process"
    assert first.is_dir() and second.is_dir()


def test_the_folder_of_a_process_that_runs_is_kept_and_removed_once_it_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "join"
    other, theirs = claim_in_process(root)
    (theirs / "rig.0").mkdir()  # a store of theirs
    try:
        mine = claim_store_folder(root)
        assert theirs.is_dir() and mine != theirs
    finally:
        other.send_signal(signal.SIGKILL)  # however it ends, the kernel releases its lock
        other.wait()

    assert remove_abandoned(root) == [theirs]
    assert not theirs.exists() and mine.is_dir()


def test_a_folder_left_without_its_lock_file_is_removed_and_other_folders_are_left_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "join"
    half_removed = root / f"{PREFIX}123-abc"  # a removal cut short: its lock file went first
    half_removed.mkdir(parents=True)
    not_ours = root / "rig.3"  # what an older version kept here, or anything else: not ours to remove
    not_ours.mkdir()

    folder = claim_store_folder(root)

    assert not half_removed.exists()
    assert not_ours.is_dir() and (folder / LOCK_FILE).is_file()


def test_a_claim_cut_short_is_removed_once_older_than_a_claim_takes_and_not_before(tmp_path: Path) -> None:
    root = tmp_path / "join"
    died_claiming = root / ".claiming-123-abc"  # made, then its process died before renaming it
    died_claiming.mkdir(parents=True)
    (died_claiming / LOCK_FILE).touch()
    long_ago = time.time() - CLAIM_GRACE_S - 1
    os.utime(died_claiming, (long_ago, long_ago))
    being_made = root / ".claiming-456-def"  # another process may be between making and locking it
    being_made.mkdir()

    assert remove_abandoned(root) == [died_claiming]
    assert not died_claiming.exists() and being_made.is_dir()
