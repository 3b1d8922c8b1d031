"""One typed settings object. Environment variables `RIG_*` set it; CLI flags override it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KafkaConfig = dict[str, str | int | float | bool]
"""confluent-kafka client settings (`RigSettings.kafka_client_config`): the value types its clients take."""

TOPIC_NAMES = (
    "requests",
    "predictions",
    "outcomes",
    "joined",
    "decisions",
    "control",
    "dlq",
    "explain",
    "explanations",
    "join-changelog",
    "join-reroute",
)


class RigSettings(BaseSettings):
    """Every setting of the rig; read from `RIG_<FIELD>` environment variables."""

    # A refused setting's message must not quote what was given: that could be a password (the
    # Kafka security checks see every field, SASL password included).
    model_config = SettingsConfigDict(env_prefix="RIG_", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma separated. Point it at any existing cluster."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """`security.protocol` of every Kafka client of the rig. `SSL` and `SASL_SSL` need
    kafka_ssl_ca_location; `SASL_SSL` and `SASL_PLAINTEXT` need the SASL mechanism, user name and
    password. Settings that would connect with less protection than asked for refuse to load."""

    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """`sasl.mechanism`: one of those that take a user name and password (the rig has no settings for
    Kerberos or OAuth)."""

    kafka_sasl_username: str | None = Field(default=None, min_length=1)
    """SASL user name, when the cluster needs one."""

    kafka_sasl_password: SecretStr | None = Field(default=None, min_length=1)
    """SASL password, when the cluster needs one (shown as `**********` by repr and str)."""

    kafka_sasl_plaintext_allowed: bool = False
    """Allow `SASL_PLAINTEXT`, which sends the password (PLAIN) and every record unencrypted: only for
    a network that is private end to end."""

    kafka_ssl_ca_location: Path | None = None
    """PEM file of the CA certificates that signed the brokers' certificates (for a publicly trusted
    cluster, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt): TLS clients trust it alone."""

    kafka_session_timeout_s: float = Field(default=45, ge=1)
    """How long the group waits for a worker that stopped heart-beating (crashed, frozen) before its
    partitions go to another worker."""

    kafka_group_instance_id: str | None = None
    """Static group membership (e.g. the pod name of a StatefulSet): a worker restarted within the
    session timeout gets its partitions back without a rebalance."""

    topic_prefix: str = "rig."
    """Common prefix of every topic the rig reads or writes."""

    topic_partitions: int = Field(default=4, ge=1)
    """Partitions of topics the rig creates; the ceiling on worker replicas."""

    schema_registry_url: str | None = None
    """When set, Avro messages use the Confluent wire format with this registry (mock:// for tests)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis used as Feast online store and as the shared cache tier. It may hold a password: log or
    show it only through `masked_url`."""

    redis_timeout_s: float = Field(default=2.0, gt=0)
    """Connect and read timeout of the rig's Redis clients: a Redis that hangs is waited for and
    retried, never waited on forever."""

    feature_inline_rows: int = Field(default=500, ge=0)
    """Batches of at most this many requests read their online features on the event loop, every
    wait on Redis bounded by 20 ms (`RedisLayoutReader.read_quick`), instead of in a worker thread:
    the hand-over to the thread and back costs ~150 µs of CPU whatever the batch's size, and the
    read's Python work holds the GIL in the thread too. A read that does not finish in time goes to
    a thread, and so do all for the next 30 s. 0: always a thread."""

    home: Path = Path(".rig")
    """Working folder for generated data, model artifacts and the SQLite files."""

    feast_repo: Path = Path("examples/synthetic_world")
    """Feast feature repository (feature definitions and feature_store.yaml)."""

    transform_spec: Path = Path("examples/synthetic_world/transform.json")
    """Declarative inference-time transform (JSON), fitted at training and stored with the models."""

    metadata_url: str | None = None
    """SQLAlchemy URL of the metadata store; defaults to a SQLite file under `home`. It may hold a
    password: log or show it only through `masked_url`."""

    metadata_retention_days: float = Field(default=30, gt=0)
    """How long the metadata store keeps its windows (model metrics, label delays, feature statistics,
    serving windows) and promoter statuses: `rig metadata prune` deletes older ones. Models, routing
    history and decisions are never pruned (the audit trail)."""

    batch_max: int = Field(default=500, ge=1)
    """Largest micro-batch a worker takes from a topic. The predict path's batch is what has arrived
    (never a wait to fill it), so its batches grow only under load; the join and the promoter wait
    `feedback_linger_s` after a small batch."""

    batch_interval_s: float = Field(default=0, ge=0, le=1)
    """Under load, the predict path takes its next batch no sooner than this after the previous one, so
    batches grow and their fixed work is paid less often (0: as soon as the previous one is handled).
    A lone request, as an idle worker gets, is never held back."""

    feedback_linger_s: float = Field(default=0.25, ge=0, le=5)
    """After a batch smaller than `batch_max`, how long the join and the promoter wait before taking
    the next one, which gathers what arrives meanwhile (predictions wait for outcomes anyway): fewer,
    larger batches, whose fixed work would otherwise take turns with the predict path's in the same
    process. The predict path never waits."""

    feedback_gives_way: bool = True
    """In a worker that predicts too, the join and the promoter wait (briefly, `streams.plane.priority`)
    while the predict path has a batch queued or in hand: predictions first, outcomes can wait. False:
    they take turns with it as equals."""

    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """`at_least_once`: a batch's offsets are committed after all its outputs are delivered (a crash
    can repeat the last second of outputs). `exactly_once`: each batch's outputs and offsets are one
    Kafka transaction, so a read_committed consumer sees every output once (costs a round trip per
    batch and a batch at a time)."""

    transaction_timeout_s: float = Field(default=10, ge=1, le=900)
    """Exactly once: how long the broker lets a worker's transaction stay open before it aborts it
    (`transaction.timeout.ms`). A worker killed mid-transaction leaves it open, and until the broker
    aborts it, read_committed readers of every partition it wrote see nothing newer, whoever wrote
    it; librdkafka's default is 60 s, Kafka Streams' 10 s. A batch's transaction takes milliseconds;
    one the broker aborted (a longer outage) is tried again. At most the broker's
    `transaction.max.timeout.ms` (15 min by default)."""

    max_open_batches: int = Field(default=4, ge=1)
    """Batches taken and not yet delivered; at this many a worker stops fetching until one is done."""

    commit_interval_s: float = Field(default=1.0, gt=0)
    """How often a worker commits the offsets of requests whose outputs were all delivered."""

    stall_s: float = Field(default=30, gt=0)
    """A partition with requests waiting and no progress for this long makes the worker unready."""

    stall_exit_s: float = Field(default=120, gt=0)
    """A worker whose partitions stalled this long while it waited for no dependency exits with an
    error, so that its supervisor restarts it (a stall while Redis or the broker is away is waited out)."""

    missing_entity_policy: Literal["defaults", "dlq"] = "defaults"
    """Requests for entities the feature store lacks: `defaults` answers them with the transform's
    training defaults (flagged `entity_found=false`); `dlq` sends them to the dead-letter topic."""

    prediction_timings: bool = False
    """Each Prediction carries its batch's stage timings (ms) and its own `kafka_to_publish` in
    `timings_ms`, for debugging: off by default, since writing them and reading them back in the join
    costs about 8 µs per request (the stages are on /metrics either way, `rig_stage_seconds`)."""

    online_reader: Literal["redis", "feast"] = "redis"
    """Online feature reader: `redis` reads Feast's Redis layout directly (fast); `feast` uses the SDK."""

    max_message_bytes: int = Field(default=100_000, ge=1_000)
    """Larger request messages go to the dead-letter topic as oversized."""

    join_retention_s: float = Field(default=6 * 3600, gt=0)
    """How long a prediction waits for its outcome; a later outcome is counted late, not joined."""

    join_sweep_interval_s: float = Field(default=30, gt=0)
    """How often the join state is swept for expired entries."""

    join_memory_mib: int = Field(default=192, ge=16)
    """RocksDB memory of a worker's join, shared by every partition it holds: the block cache, which
    the memtables (up to a third of it) are charged to. Data beyond it stays on disk."""

    promoter_mode: Literal["suggest", "auto"] = "suggest"
    """`suggest` publishes decisions only; `auto` also applies them on the control topic."""

    promoter_alpha: float = Field(default=0.05, gt=0, lt=1)
    """Family-wise false-promotion rate across all challengers of a golden."""

    promoter_min_samples: int = Field(default=1_000, ge=10)
    """Joined outcomes per golden/challenger pair before any decision."""

    promoter_min_effect: float = Field(default=0.002, ge=0)
    """Smallest loss improvement (log loss) worth a switch."""

    promoter_latency_margin: float = Field(default=0.5, gt=0)
    """Latency guardrail: a challenger may take up to (1 + this) times the golden's batch scoring time
    (geometric mean over batches) and still be promoted."""

    promoter_failed_batch_margin: float = Field(default=0.01, gt=0, lt=1)
    """Failed-batch guardrail: the largest share of its batches a promoted challenger may fail."""

    promoter_calibration_margin: float = Field(default=0.03, gt=0, lt=1)
    """Calibration guardrail: how much larger than the golden's a promoted challenger's expected
    calibration error (10 bins, same outcomes) may be."""

    promoter_srm_tolerance: float = Field(default=0.05, gt=0, lt=1)
    """A/B sample ratio: an A/B challenger is promoted only once its arm's share of entities is shown
    within share x (1 ± this); a mismatch flagged by the sequential SRM test holds the experiment."""

    promoter_label_window_s: float | None = Field(default=None, ge=0)
    """The label window: a request counts for the promoter once this long has passed since it was
    predicted (and only if its outcome came within it). Unset: learned from the label delays recorded
    in the metadata store and seen since, per label (see promoter_label_coverage)."""

    promoter_label_coverage: float = Field(default=0.99, gt=0, lt=1)
    """Share of each label's outcomes the learned label window covers (with 95 % confidence)."""

    cache_enabled: bool = False
    """Cache predictions by (model version, transform version, feature vector). Off by default: for
    models as small as the demo's, a batched XGBoost call costs less than the per-row key hashing and
    lookups (see bench/bench_cache_pipeline.py); turn it on for models that are expensive to score."""

    cache_redis: bool = True
    """Use Redis (`redis_url`) as the shared second cache tier; off: in-process LRU only."""

    cache_ttl_s: float = Field(default=3600, gt=0)
    """Lifetime of a cached prediction in both tiers."""

    cache_max_entries: int = Field(default=200_000, ge=0)
    """Bound on the in-process LRU's entries."""

    cache_max_bytes: int = Field(default=64 * 2**20, ge=0)
    """Bound on the in-process LRU's approximate bytes."""

    model_timeout_s: float = Field(default=2.0, gt=0)
    """Longest a batch waits for the golden model; a slower golden makes the batch wait and try again."""

    model_inline_rows: int = Field(default=500, ge=0)
    """Batches of at most this many rows are scored on the event loop, model after model, instead of in
    the model thread pools: handing three calls to pool threads and back costs ~0.8 ms of CPU per
    batch whatever its size (`rig.serving.backbone`). A version whose inline calls are slow goes to
    the pools by itself. 0: always the pools."""

    experiment_grace_s: float = Field(default=0.25, ge=0)
    """After the golden answered, how much longer experiments may take before they are cut for this
    batch (their scores are then missing from its records; the golden answer is never held longer)."""

    explain_disagreement: float = Field(default=0.3, gt=0, le=1)
    """Golden and a challenger whose scores differ by more than this get the request explained
    automatically (asynchronously, on the explain topic)."""

    explain_rate_per_s: float = Field(default=1.0, gt=0)
    """Most automatic explanations asked per second per worker (each costs far more than a prediction)."""

    explain_yield_max_s: float = Field(default=10.0, ge=0, le=240)
    """While the worker's predict path has a backlog (it took a full batch in the last second), its
    explainer waits up to this long before each explanation: ~100-200 ms of CPU that the requests
    need more. At most one explanation per this many seconds then; the rest wait in Kafka and are
    explained once the backlog is gone. 0: never wait. At most 240: the explainer's consumer waits
    between two polls, and one that does not poll for `max.poll.interval.ms` (300 s) leaves its group."""

    warmer_enabled: bool = True
    """Warm models (warm-up batch, and cache pre-fill for a new golden) before routing switches to them."""

    warmer_replay: int = Field(default=2_000, ge=0)
    """How many recent requests the warmer replays through a new golden to pre-fill the cache."""

    worker_roles: frozenset[Literal["predict", "feedback", "join", "explain"]] = frozenset(
        {"predict", "feedback", "explain"}
    )
    """What a worker runs (JSON list, e.g. ["predict"]): `predict` answers requests, `feedback` joins
    outcomes and runs the promoter, `join` only joins (the role of `join_processes`), `explain`
    answers the explain topic. predict, feedback and explain by default; split them over processes to
    scale or isolate them."""

    join_processes: int = Field(default=0, ge=0, le=64)
    """Child processes a worker that joins (roles `feedback` or `join`) runs its join in, instead of
    in its own process: they share the join's partitions (its consumer group), each with a GIL of
    its own. The worker keeps the rest of its roles (the promoter among them), exits when a child
    does (for its supervisor to restart it), and stops them when it stops. 0: the join runs in the
    worker's process. See the README's architecture section for when it pays."""

    join_dir: Path | None = None
    """Folder of the join's RocksDB stores (default `<home>/join`); each process that joins keeps its
    stores in a folder of its own under it (`rig.feedback.store_folder`)."""

    web_port: int = 6066
    """Port of the worker's web server (metrics, health); 0 turns it off."""

    web_bind: str = "127.0.0.1"
    """Address the worker's web server listens on, on every launch path (0.0.0.0 to reach it from
    other hosts: then set web_token too)."""

    web_token: SecretStr | None = Field(default=None, min_length=1)
    """Bearer token every web endpoint except the probes (/healthz, /readyz) requires
    (`Authorization: Bearer <token>`; 401 without it). Unset: no authentication."""

    web_explain_threads: int = Field(default=2, ge=1)
    """Threads that answer `GET /explain/...`: their own, so a flood of explanations never takes the
    threads feature reads and flushes run on."""

    web_explain_queue: int = Field(default=8, ge=0)
    """`GET /explain/...` calls that may wait for one of those threads; beyond that they get 429."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the worker and CLI."""

    def topic(self, name: str) -> str:
        """Full topic name for one of TOPIC_NAMES, with the configured prefix."""
        if name not in TOPIC_NAMES:
            raise ValueError(f"unknown topic {name!r}; expected one of {TOPIC_NAMES}")
        return f"{self.topic_prefix}{name}"

    def consumer_group(self, role: str) -> str:
        """The consumer group of one of a worker's consumers (e.g. `predict`), with the topic prefix."""
        return f"{self.topic_prefix}{role}"

    @model_validator(mode="after")
    def _refuse_weaker_kafka_security(self) -> RigSettings:
        # A half-set security setting must stop the rig, never fall back quietly: SASL credentials
        # without a SASL protocol would be ignored by librdkafka but make aiokafka (Faust) talk
        # SASL_PLAINTEXT, and TLS without the CA file could not verify the brokers.
        protocol = self.kafka_security_protocol
        credentials = {
            "RIG_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "RIG_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "RIG_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in credentials.items() if value is None]
            if missing:
                raise ValueError(f"RIG_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        elif any(value is not None for value in credentials.values()):
            raise ValueError(
                f"SASL settings are given but RIG_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL: "
                "set it to SASL_SSL"
            )
        if protocol == "SASL_PLAINTEXT" and not self.kafka_sasl_plaintext_allowed:
            raise ValueError(
                "RIG_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the SASL password and every record "
                "unencrypted: use SASL_SSL, or set RIG_KAFKA_SASL_PLAINTEXT_ALLOWED=true on a private network"
            )
        ca = self.kafka_ssl_ca_location
        if protocol.endswith("SSL"):
            if ca is None:
                raise ValueError(
                    f"RIG_KAFKA_SECURITY_PROTOCOL={protocol} needs RIG_KAFKA_SSL_CA_LOCATION, the PEM file "
                    "of the CA that signed the brokers' certificates"
                )
            if not ca.is_file():
                raise ValueError(f"RIG_KAFKA_SSL_CA_LOCATION={ca} is not a file")
        elif ca is not None:
            raise ValueError(
                f"RIG_KAFKA_SSL_CA_LOCATION is set but RIG_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                "use TLS: set it to SASL_SSL or SSL"
            )
        return self

    def kafka_client_config(self) -> KafkaConfig:
        """confluent-kafka client settings: the cluster, and the TLS and SASL ones its protocol uses.
        Every Kafka client of the rig starts from these (or `kafka_producer_config`)."""
        config: KafkaConfig = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
            # librdkafka's default since 2.0, stated so that no client ever skips the host name check.
            config["ssl.endpoint.identification.algorithm"] = "https"
        if self.kafka_sasl_mechanism is not None:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    def kafka_producer_config(self) -> KafkaConfig:
        """confluent-kafka producer settings: the client's, idempotent (no duplicates from retries),
        and Kafka's default partitioner (`murmur2_random`, the Java client's): records keyed by
        entity id land on the same partition whoever produces them, which co-partitions predictions
        and outcomes for the join."""
        return {**self.kafka_client_config(), "enable.idempotence": True, "partitioner": "murmur2_random"}

    @property
    def feast_data_dir(self) -> Path:
        """Folder of the Feast offline store's Parquet files and its SQLite registry."""
        return self.feast_repo / "data"

    @property
    def join_stores(self) -> Path:
        """Folder of the join's RocksDB stores: `join_dir`, by default `<home>/join`."""
        return self.join_dir or self.home / "join"

    @property
    def model_dir(self) -> Path:
        """Folder of stored model artifacts (XGBoost UBJ + metadata)."""
        return self.home / "models"

    @property
    def resolved_metadata_url(self) -> str:
        """The metadata store URL, defaulting to a SQLite file under `home`."""
        return self.metadata_url or f"sqlite:///{(self.home / 'metadata.db').resolve()}"


def masked_url(url: str) -> str:
    """`url` with the password of its user info replaced by `***`, fit for logs and error messages.

    A string that does not parse as a URL and holds an `@` (perhaps after a password) is replaced
    by a placeholder as a whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url if "@" not in url else "<unparsable URL>"
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***{at}{host}"))
