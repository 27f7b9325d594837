"""Leases: worker processes share a DynamoDB stream through a lease table, each shard
processed by one worker at a time (docs/scaling.md)."""

from flowstream.leases.dynamodb import DynamoDBLeases as DynamoDBLeases
from flowstream.leases.dynamodb import dynamodb as dynamodb

__all__ = ["DynamoDBLeases", "dynamodb"]
