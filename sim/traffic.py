"""Synthetic traffic for the rig: Request records of the world's entities."""

from __future__ import annotations

from collections.abc import Iterator

from rig.wire.records import Request
from sim.settings import WorldSettings
from sim.world import make_requests


def synthetic_requests(world: WorldSettings, n: int, seed: int) -> Iterator[Request]:
    """`n` requests of the synthetic world's entities (ones the feature store knows)."""
    frame = make_requests(world.make(), n, seed=seed)
    event_ms = frame["event_time"].astype("int64") // 1_000_000
    for request_id, entity_id, event_time in zip(
        frame["request_id"], frame["entity_id"], event_ms, strict=True
    ):
        yield Request(request_id=request_id, entity_id=entity_id, event_time=int(event_time))
