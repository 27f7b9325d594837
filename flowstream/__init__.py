"""flowstream: declarative, concurrent, correct processing of DynamoDB change streams."""

from flowstream import checkpoints as checkpoints
from flowstream import leases as leases
from flowstream import patterns as patterns
from flowstream import sinks as sinks
from flowstream import sources as sources
from flowstream.deadletter import DeadLetter as DeadLetter
from flowstream.deadletter import decode_dead_letter as decode_dead_letter
from flowstream.errors import AttributeValueError as AttributeValueError
from flowstream.errors import CheckpointError as CheckpointError
from flowstream.errors import DeliveryError as DeliveryError
from flowstream.errors import FlowstreamError as FlowstreamError
from flowstream.errors import NotSentError as NotSentError
from flowstream.errors import PipelineError as PipelineError
from flowstream.errors import RecordDecodeError as RecordDecodeError
from flowstream.errors import ShardStoppedError as ShardStoppedError
from flowstream.errors import SinkError as SinkError
from flowstream.errors import SourceError as SourceError
from flowstream.errors import StreamNotFoundError as StreamNotFoundError
from flowstream.errors import TrimmedDataError as TrimmedDataError
from flowstream.patterns import PatternError as PatternError
from flowstream.pipeline import Pipeline as Pipeline
from flowstream.pipeline import When as When
from flowstream.pipeline import when as when
from flowstream.policy import FailurePolicy as FailurePolicy
from flowstream.record import EventName as EventName
from flowstream.record import Record as Record
from flowstream.record import StreamViewType as StreamViewType
from flowstream.record import decode_records as decode_records
from flowstream.replay import replay_dead_letters as replay_dead_letters
from flowstream.report import LeaseReport as LeaseReport
from flowstream.report import RunReport as RunReport
from flowstream.report import ShardReport as ShardReport
from flowstream.report import ShardState as ShardState
from flowstream.report import SinkReport as SinkReport

__version__ = "0.1.0"

__all__ = [
    "AttributeValueError",
    "CheckpointError",
    "DeadLetter",
    "DeliveryError",
    "EventName",
    "FailurePolicy",
    "FlowstreamError",
    "LeaseReport",
    "NotSentError",
    "PatternError",
    "Pipeline",
    "PipelineError",
    "Record",
    "RecordDecodeError",
    "RunReport",
    "ShardReport",
    "ShardState",
    "ShardStoppedError",
    "SinkError",
    "SinkReport",
    "SourceError",
    "StreamNotFoundError",
    "StreamViewType",
    "TrimmedDataError",
    "When",
    "checkpoints",
    "decode_dead_letter",
    "decode_records",
    "leases",
    "patterns",
    "replay_dead_letters",
    "sinks",
    "sources",
    "when",
]
