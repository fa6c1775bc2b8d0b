"""AWS I/O: the boto3 clients (one per service per process), S3 reads, conditional writes and
in-place copies, KMS wrap/re-wrap/verify calls, and the (adaptive) token bucket that paces KMS."""

from keymigration.aws.clients import ClientOptions, Telemetry, make_clients
from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys, Wrapped
from keymigration.aws.ratelimit import AdaptiveTokenBucket, TokenBucket, watch_throttling
from keymigration.aws.s3 import Bucket, StoredFile

__all__ = [
    "AdaptiveTokenBucket",
    "Bucket",
    "ClientOptions",
    "KmsKeys",
    "MetadataRewriter",
    "StoredFile",
    "Telemetry",
    "TokenBucket",
    "Wrapped",
    "make_clients",
    "watch_throttling",
]
