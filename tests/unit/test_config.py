"""Settings keep their secrets: the SASL password never shows in repr, URLs are masked for logs;
Kafka security settings that would connect with less protection than asked for refuse to load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rig.config import RigSettings, masked_url

PASSWORD = "Pa55-w0rd-xyz"


def test_the_sasl_password_is_hidden_from_repr_and_str_but_reaches_the_kafka_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RIG_KAFKA_SASL_PASSWORD", PASSWORD)
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    settings = RigSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_location=ca,
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="rig",
    )

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


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A file where the CA is expected (the settings check that it exists; clients read it)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return ca


def test_sasl_ssl_puts_tls_with_the_ca_and_the_sasl_user_into_every_kafka_client_config(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    for name, value in {
        "RIG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RIG_KAFKA_SSL_CA_LOCATION": str(ca_file),
        "RIG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RIG_KAFKA_SASL_USERNAME": "rig",
        "RIG_KAFKA_SASL_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)
    settings = RigSettings()

    for config in (settings.kafka_client_config(), settings.kafka_producer_config()):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["ssl.ca.location"] == str(ca_file)
        assert config["ssl.endpoint.identification.algorithm"] == "https"
        assert (config["sasl.mechanism"], config["sasl.username"]) == ("SCRAM-SHA-512", "rig")
        assert config["sasl.password"] == PASSWORD


def test_without_security_settings_clients_connect_in_plaintext_without_tls_or_sasl_keys() -> None:
    assert RigSettings(kafka_bootstrap="kafka:9092").kafka_client_config() == {
        "bootstrap.servers": "kafka:9092",
        "security.protocol": "PLAINTEXT",
    }


SASL_USER = {
    "RIG_KAFKA_SASL_MECHANISM": "PLAIN",
    "RIG_KAFKA_SASL_USERNAME": "rig",
    "RIG_KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        pytest.param(
            {"RIG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", **SASL_USER},
            "SASL_SSL needs RIG_KAFKA_SSL_CA_LOCATION",
            id="sasl-ssl-without-a-ca",
        ),
        pytest.param(
            {
                "RIG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "RIG_KAFKA_SSL_CA_LOCATION": "missing.pem",
                **SASL_USER,
            },
            "RIG_KAFKA_SSL_CA_LOCATION=missing.pem is not a file",
            id="sasl-ssl-with-a-ca-file-that-does-not-exist",
        ),
        pytest.param(
            {"RIG_KAFKA_SECURITY_PROTOCOL": "SSL"},
            "SSL needs RIG_KAFKA_SSL_CA_LOCATION",
            id="ssl-without-a-ca",
        ),
        pytest.param(
            {"RIG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RIG_KAFKA_SSL_CA_LOCATION": "{ca}"},
            "needs RIG_KAFKA_SASL_MECHANISM, RIG_KAFKA_SASL_USERNAME, RIG_KAFKA_SASL_PASSWORD",
            id="sasl-ssl-without-a-user",
        ),
        pytest.param(
            {
                "RIG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "RIG_KAFKA_SSL_CA_LOCATION": "{ca}",
                "RIG_KAFKA_SASL_MECHANISM": "PLAIN",
                "RIG_KAFKA_SASL_USERNAME": "rig",
            },
            "needs RIG_KAFKA_SASL_PASSWORD",
            id="sasl-ssl-without-a-password",
        ),
        pytest.param(
            {"RIG_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **SASL_USER},
            "SASL_PLAINTEXT sends the SASL password and every record unencrypted",
            id="sasl-plaintext-not-allowed",
        ),
        pytest.param(
            SASL_USER,
            "RIG_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL",
            id="a-sasl-user-without-a-sasl-protocol",
        ),
        pytest.param(
            {"RIG_KAFKA_SSL_CA_LOCATION": "{ca}"},
            "RIG_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
            id="a-ca-without-tls",
        ),
    ],
)
def test_kafka_security_settings_that_would_connect_less_protected_refuse_to_load(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path, environment: dict[str, str], reason: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(ca=ca_file))

    with pytest.raises(ValidationError, match=reason) as refused:
        RigSettings()
    assert PASSWORD not in str(refused.value)


def test_sasl_plaintext_loads_only_when_explicitly_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RIG_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **SASL_USER}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RIG_KAFKA_SASL_PLAINTEXT_ALLOWED", "true")

    config = RigSettings().kafka_client_config()

    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert "ssl.ca.location" not in config
