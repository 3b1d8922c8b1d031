"""Worker health: readiness names every reason, and only an unexplained stall asks for a restart."""

from __future__ import annotations

from streams.plane.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ready_only_with_partitions_no_waits_no_stalls_and_passing_checks() -> None:
    health = Health()
    assert health.readiness().reasons == ("no partitions assigned",)
    health.assigned(2)
    assert health.readiness().ready
    health.add_check(lambda: "no golden model routed")
    assert health.readiness().reasons == ("no golden model routed",)


def test_a_dependency_waited_for_makes_the_worker_unready_until_it_recovers() -> None:
    clock = Clock()
    health = Health(clock)
    health.assigned(1)
    health.waiting("Redis", "connection refused")
    clock.now = 4
    readiness = health.readiness()
    assert not readiness.ready
    assert readiness.reasons == ("waiting for Redis for 4 s: connection refused",)
    health.recovered("Redis")
    assert health.readiness().ready


def test_a_stall_while_a_dependency_is_down_is_explained_one_without_is_not() -> None:
    clock = Clock()
    health = Health(clock)
    health.assigned(1)
    health.waiting("Redis", "down")
    health.stalled({"rig.requests-0": 40})
    clock.now = 100
    assert health.unexplained_stall_s() == 0, "waiting for Redis explains it"
    health.recovered("Redis")
    health.stalled({"rig.requests-0": 140})
    clock.now = 130
    assert health.unexplained_stall_s() == 30
    assert "partition rig.requests-0 stalled for 140 s" in health.readiness().reasons
    health.stalled({})
    assert health.unexplained_stall_s() == 0


def test_something_only_a_restart_mends_makes_the_worker_unready_and_is_reported_as_fatal() -> None:
    health = Health()
    health.assigned(1)
    stopped: list[str] = []
    health.add_fatal(lambda: stopped[0] if stopped else None)
    assert health.readiness().ready and health.fatal() == []
    stopped.append("control follower stopped: KafkaException(...)")
    assert health.fatal() == ["control follower stopped: KafkaException(...)"]
    assert health.readiness().reasons == ("control follower stopped: KafkaException(...)",)
