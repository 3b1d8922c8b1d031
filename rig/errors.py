"""One exception hierarchy for the rig; every concern has its own subclass."""


class RigError(Exception):
    """Root of every error the rig raises on purpose."""


class ConfigError(RigError):
    """Settings are missing or inconsistent."""


class CodecError(RigError):
    """Bytes or records that cannot be encoded or decoded against a schema."""


class Unavailable(RigError):
    """A dependency is away (Redis, a model being loaded or failing, ...): the work waits and is
    retried, and is never dead-lettered. `dependency` names what is waited for."""

    dependency = "a dependency"


class SchemaRegistryUnavailable(Unavailable, CodecError):
    """The schema registry does not answer (refused, timed out, or any error but "not found" and a
    refused schema): a message whose schema it must look up waits, it is never dead-lettered."""

    dependency = "the schema registry"


class KafkaUnavailable(Unavailable):
    """The Kafka cluster did not answer a request the rig had to make (e.g. a partition's end offset)."""

    dependency = "Kafka"


class TopicError(RigError):
    """A Kafka topic could not be created or described, or exists with the wrong configuration."""


class FeatureStoreError(RigError):
    """The Feast feature store could not be read or written."""


class FeatureStoreUnavailable(Unavailable, FeatureStoreError):
    """The online store (Redis) does not answer: refused, timed out, or connection lost."""

    dependency = "Redis (online features)"


class ModelIntegrityError(RigError):
    """A stored model does not match its recorded checksum, or is unreadable."""


class RegistryError(RigError):
    """The model registry refused an operation (unknown model, bad role, ...)."""


class BackboneError(RigError):
    """The model runtime could not score a batch (golden failed or timed out, model not loaded, ...)."""


class GoldenUnavailable(Unavailable, BackboneError):
    """No golden model can answer now: none routed yet, not loaded, timed out or failing."""

    dependency = "the golden model"


class TransformError(RigError):
    """A feature transform spec, its fitted parameters or an input batch is structurally invalid."""


class RoutingError(RigError):
    """A control event or routing table cannot be applied (bad event, no golden model, ...)."""


class BatchInputError(RigError):
    """A batch-prediction input is unusable as a whole (unreadable, empty, key columns missing)."""


class PromoterError(RigError):
    """The promoter got unusable input or settings (mismatched batch lengths, scores outside [0, 1], ...)."""


class CacheError(RigError):
    """The prediction cache was misused (bad settings, rows/entities/scores of different lengths).

    Never raised because Redis is unavailable: the cache bypasses Redis instead.
    """


class CacheUnavailable(Unavailable, CacheError):
    """A purge could not reach the cache's Redis tier: the entries it should remove are still there
    (lookups bypass Redis instead; a purge cannot)."""

    dependency = "Redis (prediction cache)"


class MetadataError(RigError):
    """The metadata store is unreachable, its schema is missing, or a record cannot be stored."""


class MetadataUnavailable(Unavailable, MetadataError):
    """The metadata store does not answer: refused, timed out, or the connection was lost."""

    dependency = "the metadata store"


class ExplainerError(RigError):
    """An explanation cannot be computed (bad row shape, unknown mutable feature, unusable reference)."""


class JoinRestoreError(RigError):
    """A join partition's state could not be restored from its changelog."""


class NotAcknowledged(RigError):
    """Records were produced but the broker did not acknowledge every one in time (broker away,
    topic missing or not authorized): those may not be on the topic."""


TRANSIENT_REDIS_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Redis error replies that say "not now" (a dump loading, a long script, a replica cut off from its
master, a cluster resharding or down): waited for, like a refused connection. redis-py maps only
LOADING to a connection error; the others arrive as plain `ResponseError`s."""


def transient_reply(error: BaseException) -> bool:
    """Whether a Redis error is one of `TRANSIENT_REDIS_REPLIES`."""
    return str(error).startswith(TRANSIENT_REDIS_REPLIES)
