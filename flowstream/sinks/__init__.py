"""Where elements go: `collect()`, `callback(fn)`, `stdout()`, `jsonl(path)`, `http(url)`,
`redis(url)`, `sqs(queue_url)`, `sns(topic_arn)`, `eventbridge(bus)`, `kinesis(stream)`,
`lambda_function(name)`, `dynamodb(table)`."""

from flowstream.sinks.base import Batch as Batch
from flowstream.sinks.base import SendResult as SendResult
from flowstream.sinks.base import Sink as Sink
from flowstream.sinks.base import SinkWriter as SinkWriter
from flowstream.sinks.callback import callback as callback
from flowstream.sinks.collect import collect as collect
from flowstream.sinks.dynamodb import dynamodb as dynamodb
from flowstream.sinks.eventbridge import eventbridge as eventbridge
from flowstream.sinks.http import http as http
from flowstream.sinks.jsonl import jsonl as jsonl
from flowstream.sinks.kinesis import kinesis as kinesis
from flowstream.sinks.lambda_function import lambda_function as lambda_function
from flowstream.sinks.redis import redis as redis
from flowstream.sinks.sns import sns as sns
from flowstream.sinks.sqs import sqs as sqs
from flowstream.sinks.stdout import stdout as stdout

__all__ = [
    "Batch",
    "SendResult",
    "Sink",
    "SinkWriter",
    "callback",
    "collect",
    "dynamodb",
    "eventbridge",
    "http",
    "jsonl",
    "kinesis",
    "lambda_function",
    "redis",
    "sns",
    "sqs",
    "stdout",
]
