"""The control follower on the real broker: a routing change or purge its callback refuses is retried
until taken, and the follower goes on following."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rig.config import RigSettings
from rig.errors import RegistryError
from rig.routing.control import ControlFollower, publish_control
from rig.routing.table import RoutingTable, purge_cache_event, set_golden_event
from rig.wire.records import ControlEvent
from rig.wire.topics import ensure_topics
from tests.conftest import take_registry_away
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.integration


class Refusing:
    """Callbacks that refuse what `refuse` says, as a worker refuses a routing whose model file is
    still syncing; everything taken is kept in order."""

    def __init__(self, refuse: Callable[[str], bool]) -> None:
        self.refuse = refuse
        self.tables: list[RoutingTable] = []
        self.purges: list[str | None] = []
        self.refusals = 0

    def on_change(self, table: RoutingTable) -> None:
        self._check(f"golden {table.golden}")
        self.tables.append(table)

    def on_purge(self, event: ControlEvent) -> None:
        self._check(f"purge {event.entity_id}")
        self.purges.append(event.entity_id)

    def _check(self, what: str) -> None:
        if self.refuse(what):
            self.refusals += 1
            raise RegistryError(f"{what} refused")


def test_a_refused_routing_is_retried_until_taken_and_the_follower_follows_on(settings: RigSettings) -> None:
    ensure_topics(settings)
    publish_control(settings, set_golden_event("risk.1", actor="test"))
    syncing = {"golden risk.1"}
    callbacks = Refusing(lambda what: what in syncing)
    follower = ControlFollower(settings)
    follower.on_change, follower.on_purge = callbacks.on_change, callbacks.on_purge
    try:
        table = follower.start().wait_caught_up()
        assert table.golden == "risk.1"
        assert callbacks.tables == [] and callbacks.refusals == 1, "the first routing was tried at once"
        reason = follower.unapplied()
        assert reason is not None and "golden risk.1 refused" in reason, reason

        eventually(lambda: callbacks.refusals >= 3, 30, "retried while refused")
        syncing.clear()  # the model file arrived
        eventually(lambda: [t.golden for t in callbacks.tables] == ["risk.1"], 30, "the routing taken")
        assert follower.unapplied() is None and follower.failure() is None

        # A newer table replaces one still refused: only the newest is taken.
        syncing.add("golden risk.2")
        publish_control(settings, set_golden_event("risk.2", actor="test"))
        eventually(lambda: follower.unapplied() is not None, 30, "risk.2 refused")
        publish_control(settings, set_golden_event("risk.3", actor="test"))
        eventually(lambda: [t.golden for t in callbacks.tables] == ["risk.1", "risk.3"], 30, "risk.3 taken")
        assert follower.unapplied() is None
    finally:
        follower.stop()


def test_a_refused_purge_is_retried_in_order_before_later_ones(settings: RigSettings) -> None:
    ensure_topics(settings)
    redis_away = {"purge e1"}
    callbacks = Refusing(lambda what: what in redis_away)
    follower = ControlFollower(settings)
    follower.on_change, follower.on_purge = callbacks.on_change, callbacks.on_purge
    try:
        follower.start().wait_caught_up()
        publish_control(settings, purge_cache_event("test", entity_id="e1"))
        publish_control(settings, purge_cache_event("test", entity_id="e2"))
        eventually(lambda: callbacks.refusals >= 2, 30, "the purge retried")
        assert callbacks.purges == [], "a later purge does not overtake a refused one"
        redis_away.clear()
        eventually(lambda: callbacks.purges == ["e1", "e2"], 30, "both purges taken, in order")
        assert follower.unapplied() is None and follower.failure() is None
    finally:
        follower.stop()


def test_a_control_record_waits_for_the_schema_registry_and_is_applied_when_it_answers(
    settings: RigSettings,
) -> None:
    settings = settings.model_copy(update={"schema_registry_url": f"mock://{settings.topic_prefix}"})
    ensure_topics(settings)
    publish_control(settings, set_golden_event("risk.1", actor="test"))  # registered, framed with its id
    with pytest.MonkeyPatch.context() as away:
        take_registry_away(away)  # the registry goes away before the follower reads
        follower = ControlFollower(settings)
        follower.start()
        try:
            assert not follower.caught_up.wait(3), (
                "a record it cannot decode yet is neither skipped nor applied"
            )
            assert follower.failure() is None
        except BaseException:
            follower.stop()
            raise
    try:
        table = follower.wait_caught_up(30)  # the registry answers again: the record is read
        assert table.golden == "risk.1" and follower.failure() is None
    finally:
        follower.stop()
