"""The pipeline as an AWS Lambda function for DynamoDB stream event source mappings:
`Pipeline.lambda_handler()` and `Pipeline.lambda_filter_criteria()` (docs/lambda.md)."""

from flowstream.aws_lambda.handler import LambdaBatchError, LambdaContext, LambdaHandler

__all__ = ["LambdaBatchError", "LambdaContext", "LambdaHandler"]
