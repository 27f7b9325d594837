"""The runtime: the engine that runs a plan, the shard scheduler (discovery and lineage),
one runner per shard, and the checkpointer that records each shard's ack frontier."""
