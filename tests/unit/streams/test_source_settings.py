"""How a worker's roles read and publish, from the rig's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rig.config import RigSettings
from streams.app import source_settings


def test_exactly_once_publishes_in_transactions_with_the_rigs_timeout(tmp_path: Path) -> None:
    settings = RigSettings(home=tmp_path, processing_guarantee="exactly_once", transaction_timeout_s=5)
    source = source_settings(settings, "predict", ("rig.requests",))
    assert not source.commits and source.transaction_timeout_s == 5


def test_at_least_once_commits_and_transactions_time_out_after_10_s_by_default(tmp_path: Path) -> None:
    source = source_settings(RigSettings(home=tmp_path), "predict", ("rig.requests",))
    assert source.commits and source.transaction_timeout_s == 10


@pytest.mark.parametrize("timeout_s", [0.5, 901])
def test_a_transaction_timeout_out_of_bounds_is_refused(tmp_path: Path, timeout_s: float) -> None:
    with pytest.raises(ValidationError, match="transaction_timeout_s"):
        RigSettings(home=tmp_path, transaction_timeout_s=timeout_s)
