"""A Kafka broker of a test's own that clients reach only over TLS with SASL/PLAIN, and the
certificates it needs (a CA and a server certificate for 127.0.0.1, made on the spot).

ops/kafka/up writes a fixed PLAINTEXT configuration, so this broker is started here from the jars it
fetched (ops/kafka/libs). The inter-broker and controller listeners stay PLAINTEXT on ports of their
own: the readiness check (ops/kafka/wait_ready.py) asks the PLAINTEXT one.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port

KAFKA_DIR = Path(__file__).resolve().parents[2] / "ops" / "kafka"

USERS = {"admin": "admin-secret", "rig": "rig-secret-0451"}
"""SASL/PLAIN users the broker accepts, with their passwords."""


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server key and certificate it signed (for 127.0.0.1 and localhost), and an
    unrelated CA that must not be trusted."""

    ca: Path
    server_key: Path
    server_chain: Path
    other_ca: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None, issuer_key: rsa.RSAPrivateKey | None
) -> x509.Certificate:
    """A certificate valid for a day: a self-signed CA without an issuer, else a server certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        alt_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_certificates(folder: Path) -> Certificates:
    """Write a CA, a server certificate it signed and an unrelated CA into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, other_key = _key(), _key(), _key()
    ca = _certificate("rig test CA", ca_key, None, None)
    server = _certificate("127.0.0.1", server_key, ca.subject, ca_key)
    other = _certificate("some other CA", other_key, None, None)
    files = Certificates(
        ca=folder / "ca.pem",
        server_key=folder / "server-key.pem",
        server_chain=folder / "server-chain.pem",
        other_ca=folder / "other-ca.pem",
    )
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.other_ca.write_bytes(other.public_bytes(pem))
    files.server_chain.write_bytes(server.public_bytes(pem) + ca.public_bytes(pem))
    # Kafka's PEM key store takes PKCS#8 keys only.
    files.server_key.write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def _inline(path: Path) -> str:
    """A PEM file as one properties value (the `\\n` escapes become line breaks when Kafka reads it)."""
    return path.read_text().strip().replace("\n", "\\n")


@dataclass
class SecuredKafka:
    """A single-node KRaft broker whose client listener is SASL_SSL (PLAIN, users in `USERS`)."""

    folder: Path
    certificates: Certificates
    port: int = field(default_factory=free_port)
    plaintext_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Address of the SASL_SSL listener."""
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> str:
        users = " ".join(f'user_{user}="{password}"' for user, password in USERS.items())
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{USERS["admin"]}" {users};'
        )
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.plaintext_port},"
                f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.plaintext_port},"
                f"SASL_SSL://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
                "sasl.enabled.mechanisms=PLAIN",
                f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.certificate.chain={_inline(self.certificates.server_chain)}",
                f"ssl.keystore.key={_inline(self.certificates.server_key)}",
                f"log.dirs={self.folder / 'data'}",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )

    def start(self) -> None:
        """Format the storage, start the broker and wait until it answers (on its PLAINTEXT port)."""
        if not (KAFKA_DIR / "libs" / ".complete").exists():
            raise RuntimeError("no broker jars in ops/kafka/libs: run ops/kafka/up once to fetch them")
        self.folder.mkdir(parents=True, exist_ok=True)
        properties = self.folder / "server.properties"
        properties.write_text(self._properties())
        cluster_id = random_cluster_id()
        java = ["java", "-cp", str(KAFKA_DIR / "libs" / "*"), "-Xms128m", "-Xmx512m"]
        subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
             "--config", str(properties), "--ignore-formatted"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        with (self.folder / "kafka.out").open("ab") as log:
            self.process = subprocess.Popen(
                [*java, "kafka.Kafka", str(properties)], stdout=log, stderr=subprocess.STDOUT
            )
        ready = subprocess.run(
            [sys.executable, str(KAFKA_DIR / "wait_ready.py"), f"127.0.0.1:{self.plaintext_port}", "90"],
            timeout=120,
        )
        if ready.returncode != 0:
            self.stop()
            tail = (self.folder / "kafka.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the SASL_SSL test broker did not start:\n{tail}")

    def stop(self) -> None:
        """Stop the broker (the process this object started) and wait for it to exit."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def random_cluster_id() -> str:
    """16 random bytes in URL-safe base64, as `StorageTool random-uuid` prints them, and like Kafka's
    `Uuid.randomUuid` never starting with "-": StorageTool reads such an id as an option and refuses
    to format (1 run in 64 failed so)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
