"""The producer of `rig produce`: a broker that does not answer is said, not waited for in silence."""

from __future__ import annotations

import logging

import pytest

from rig.cli import clients
from rig.config import RigSettings
from tests.support.ports import free_port


def test_a_producer_without_an_id_says_so_once_and_gives_up_waiting(
    settings: RigSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    away = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    monkeypatch.setattr(clients, "ID_NOTICE_S", 0.2)

    with caplog.at_level(logging.WARNING, logger=clients.__name__):
        # Returns without an id. Not checked by len(producer) == 0: that counts the callbacks librdkafka
        # holds for the next poll too (rd_kafka_outq_len), such as the statistics it makes every 50 ms.
        clients._producer_with_id(away, timeout_s=1.0)

    notices = [r.getMessage() for r in caplog.records if "no answer from the broker" in r.getMessage()]
    assert len(notices) == 1
    assert away.kafka_bootstrap in notices[0]
