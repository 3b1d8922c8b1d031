"""Settings keep their secrets: the SASL password never shows in repr, URLs are masked for logs."""

from __future__ import annotations

import pytest

from rig.config import RigSettings, masked_url

PASSWORD = "Pa55-w0rd-xyz"


def test_the_sasl_password_is_hidden_from_repr_and_str_but_reaches_the_kafka_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RIG_KAFKA_SASL_PASSWORD", PASSWORD)
    settings = RigSettings(kafka_sasl_mechanism="PLAIN", kafka_sasl_username="rig")

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert settings.kafka_client_config()["sasl.password"] == PASSWORD
    assert settings.kafka_producer_config()["sasl.password"] == PASSWORD


def test_no_sasl_password_leaves_it_out_of_the_kafka_client_config() -> None:
    assert "sasl.password" not in RigSettings().kafka_client_config()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://rig:secret@db:5432/rig", "postgresql+psycopg://rig:***@db:5432/rig"),
        ("postgresql://rig:se@cr:et@db/rig", "postgresql://rig:***@db/rig"),
        ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://rig@db/rig", "postgresql://rig@db/rig"),
        ("sqlite:////var/rig/metadata.db", "sqlite:////var/rig/metadata.db"),
        ("http://[::1:secret@x", "<unparsable URL>"),
    ],
)
def test_masked_url_replaces_only_the_password(url: str, masked: str) -> None:
    assert masked_url(url) == masked
