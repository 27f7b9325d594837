"""Where elements go: `collect()`, `callback(fn)`, `stdout()`, `jsonl(path)`, `http(url)`,
`redis(url)`, `kinesis(stream)`, `lambda_function(name)`, `dynamodb(table)` (and SQS, SNS,
EventBridge)."""

from flowstream.sinks.base import Batch as Batch
from flowstream.sinks.base import SendResult as SendResult
from flowstream.sinks.base import Sink as Sink
from flowstream.sinks.base import SinkWriter as SinkWriter
from flowstream.sinks.callback import callback as callback
from flowstream.sinks.collect import collect as collect
from flowstream.sinks.dynamodb import dynamodb as dynamodb
from flowstream.sinks.http import http as http
from flowstream.sinks.jsonl import jsonl as jsonl
from flowstream.sinks.kinesis import kinesis as kinesis
from flowstream.sinks.lambda_function import lambda_function as lambda_function
from flowstream.sinks.redis import redis as redis
from flowstream.sinks.stdout import stdout as stdout

__all__ = [
    "Batch",
    "SendResult",
    "Sink",
    "SinkWriter",
    "callback",
    "collect",
    "dynamodb",
    "http",
    "jsonl",
    "kinesis",
    "lambda_function",
    "redis",
    "stdout",
]
