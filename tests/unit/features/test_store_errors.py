"""Redis errors on the feature read: replies that say "not now" are waited for, the others are not."""

from __future__ import annotations

import pytest
import redis

from rig.config import RigSettings
from rig.errors import FeatureStoreError, FeatureStoreUnavailable
from rig.features.store import FeatureStoreClient

BUSY = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."


@pytest.mark.parametrize(
    "reply", [BUSY, "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."]
)
def test_a_redis_busy_or_cut_off_from_its_master_is_waited_for(settings: RigSettings, reply: str) -> None:
    """redis-py raises these as plain ResponseErrors: taken for errors, they ended the worker."""
    with pytest.raises(FeatureStoreUnavailable), FeatureStoreClient(settings)._errors("online feature read"):
        raise redis.ResponseError(reply)


def test_a_reply_refusing_the_read_is_an_error_not_a_wait(settings: RigSettings) -> None:
    with (
        pytest.raises(FeatureStoreError) as refused,
        FeatureStoreClient(settings)._errors("online feature read"),
    ):
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    assert not isinstance(refused.value, FeatureStoreUnavailable)
