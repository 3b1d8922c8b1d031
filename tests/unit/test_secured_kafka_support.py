"""tests/support/secured_kafka.py formats its broker's storage with ids StorageTool accepts."""

from __future__ import annotations

import base64

from tests.support.secured_kafka import random_cluster_id


def test_a_cluster_id_is_16_bytes_of_url_safe_base64_never_starting_with_a_dash() -> None:
    ids = [random_cluster_id() for _ in range(5_000)]  # with the old draw, ~78 would start with "-"

    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(cluster_id + "==")) == 16 for cluster_id in ids)
    assert len(set(ids)) == len(ids)
