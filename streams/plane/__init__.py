"""The rig's own data plane on librdkafka, under the Faust agents.

A `BatchSource` consumes a topic with confluent-kafka in a thread of its own (cooperative-sticky
assignment, no auto commit, no auto offset store) and hands micro-batches to an agent. The agent
publishes every output of a batch through a `DeliveringSink`, an idempotent producer that counts
delivery reports per batch. The `OffsetLedger` lets a partition's offset advance only past batches
whose outputs were all delivered; the source commits it on a timer and, for revoked partitions, on
revoke after their batches finished. `Health` tells readiness: dependencies being waited for,
partitions assigned, partitions stalled.
"""
