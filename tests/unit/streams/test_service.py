"""Plane.until_available: a batch waits out what is away, and a batch given up leaves no wait behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from rig.errors import FeatureStoreUnavailable, SchemaRegistryUnavailable
from streams.plane import health as plane_health
from streams.plane.health import Health
from streams.plane.priority import GiveWay
from streams.plane.service import Plane


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plane_health, "FIRST_RETRY_S", 0.0)


class MarkedGiveWay(GiveWay):
    """A GiveWay that lists how it was marked."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[str] = []

    def busy(self) -> None:
        self.marks.append("busy")
        super().busy()

    def idle(self) -> None:
        self.marks.append("idle")
        super().idle()


def plane_of(owns: list[bool], health: Health) -> SimpleNamespace:
    """What `until_available` uses of a plane: its source's ownership of a batch, its health."""
    owned = iter(owns)
    return SimpleNamespace(
        source=SimpleNamespace(owns=lambda batch: next(owned)), health=health, give_way=GiveWay()
    )


def test_a_batch_waits_for_each_dependency_away_and_goes_on_when_it_is_back() -> None:
    health = Health()
    health.assigned(1)
    away = [FeatureStoreUnavailable("Redis refused"), SchemaRegistryUnavailable("registry refused")]
    seen: list[bool] = []
    plane = plane_of([True] * 3, health)
    plane.give_way = marks = MarkedGiveWay()
    marks.busy()  # as the plane's serving loop marks it while a batch is in hand

    async def attempt() -> str:
        seen.append(health.readiness().ready)
        if away:
            raise away.pop(0)
        return "answered"

    result = asyncio.run(Plane.until_available(plane, SimpleNamespace(batch_id=1, messages=[]), attempt))  # type: ignore[arg-type]

    assert result == "answered"
    assert seen == [True, False, False]  # readiness says what is waited for meanwhile
    # idle while it waits for a dependency: the planes that give way to it go on meanwhile
    assert marks.marks == ["busy", "idle", "busy", "idle", "busy"]
    assert health.readiness().ready and not health.waits_for(FeatureStoreUnavailable.dependency)


def test_a_batch_given_up_while_waiting_leaves_no_wait_behind() -> None:
    now = [0.0]
    health = Health(lambda: now[0])
    health.assigned(1)

    async def redis_away() -> None:
        raise FeatureStoreUnavailable("Redis refused the connection")

    plane = plane_of([True, False], health)  # the batch's partitions move while it waits
    result = asyncio.run(Plane.until_available(plane, SimpleNamespace(batch_id=1, messages=[]), redis_away))  # type: ignore[arg-type]

    assert result is None
    assert health.readiness().ready, health.readiness().reasons
    assert not health.waits_for(FeatureStoreUnavailable.dependency)
    health.stalled({"rig.requests[0]": 30.0})
    now[0] = 10.0
    assert health.unexplained_stall_s() == 10.0, "a wait nobody carries on explains no later stall"
