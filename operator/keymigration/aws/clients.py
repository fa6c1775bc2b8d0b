"""boto3 clients for the worker: one shared S3 and one shared KMS client per process.

Endpoints come from the standard AWS settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL_KMS``, region (``AWS_REGION`` too, which botocore alone ignores), credential
chain, IRSA, Pod Identity); an explicit endpoint overrides them. One client per service is shared by all threads (boto3 clients are
thread-safe; per-thread clients cost CPU and memory, docs/performance.md).
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

import boto3
import botocore.handlers
import botocore.session
from botocore.config import Config
from botocore.utils import determine_content_length
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from keymigration.aws.fast_parser import FastParserFactory
from keymigration.aws.response_headers import fast_response_headers
from keymigration.aws.signing import sign_in_one_pass
from keymigration.errors import ConfigurationError

THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestLimitExceeded",
    "LimitExceededException",
}


class Telemetry:
    """Counts what the retry layer absorbed: throttles, server errors, connection errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def attach(self, client) -> None:
        client.meta.events.register("needs-retry", self._on_attempt)
        service = client.meta.service_model.service_name
        client.meta.events.register(f"before-call.{service}", self._on_call)

    def _on_call(self, model=None, **_):
        self._add(f"{model.service_model.service_name}:{model.name}" if model else "unknown")
        return None

    def requests(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.counts.items() if ":" in k}

    def faults(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.counts.items() if ":" not in k}

    def _on_attempt(self, response=None, caught_exception=None, **_):
        if caught_exception is not None:
            self._add("connection_errors")
            return None
        if not response:
            return None
        http, parsed = response
        status = getattr(http, "status_code", 0)
        if status < 300 and not (parsed and "Error" in parsed):
            return None  # a success (not an error S3 sent in a 200's body)
        code = (parsed or {}).get("Error", {}).get("Code")
        if code in THROTTLING_CODES or status == 503:
            self._add("throttled")
        elif status >= 500:
            self._add("server_errors")
        return None

    def _add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


@dataclass(frozen=True)
class ClientOptions:
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    kms_endpoint_url: str | None = None
    region: str | None = None
    concurrency: int = 16
    retry_mode: str = "standard"
    max_attempts: int = 10
    path_style: bool = False



def parse_timestamp(value):
    """botocore's timestamp parser, fast for the forms S3 sends.

    botocore parses every timestamp it receives (each listed object's LastModified, each HEAD's
    Last-Modified) with dateutil, 50-70 us apiece: several percent of a re-wrap's client CPU.
    S3 sends ISO 8601 in XML and RFC 7231 dates in headers, which the standard library parses in
    under 5 us to the same instant; anything else (KMS's epoch numbers, other forms, a result
    without a time zone) goes to botocore's own parser, so values never differ from botocore's.
    """
    if isinstance(value, str):
        try:
            # ISO 8601 starts with the year; RFC 7231 with the day's name ("Thu, 01 Jan ...").
            parsed = datetime.fromisoformat(value) if value[:1].isdigit() else parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None and parsed.utcoffset() is not None:
            return parsed
    return botocore_parse_timestamp(value)


# The AWS SDK for Go v2 asks for `100 Continue` only for bodies from 2 MiB
# (s3.Options.ContinueHeaderThresholdBytes); botocore asks for every PUT body.
EXPECT_CONTINUE_MIN_BYTES = 2 * 1024 * 1024


def expect_continue_for_large_bodies(model, params, **_):
    """botocore's ``add_expect_header`` with Go's threshold.

    `Expect: 100-continue` saves sending a large body the server would refuse; for the worker's
    small PUTs (instruction files, backups: well under 2 KB) it only costs a round trip per PUT
    (the client waits for the `100` before the body) and, measured against moto, 12% of a PUT's
    client CPU (botocore reads the interim response a byte at a time).
    """
    if model.http.get("method", "") not in ("PUT", "POST"):
        return
    body = params.get("body")
    if hasattr(body, "read"):
        length = determine_content_length(body)
        if length is None or length >= EXPECT_CONTINUE_MIN_BYTES:
            params["headers"]["Expect"] = "100-continue"


def region_of(options: ClientOptions) -> str | None:
    """--region, else ``AWS_REGION`` (what EKS, Lambda and the other AWS SDKs set; botocore reads
    only ``AWS_DEFAULT_REGION``), else None: botocore's own chain (AWS_DEFAULT_REGION, config)."""
    return options.region or os.environ.get("AWS_REGION") or None


def make_clients(options: ClientOptions, telemetry: Telemetry | None = None):
    core = botocore.session.get_session()
    parsers = FastParserFactory()
    parsers.set_parser_defaults(timestamp_parser=parse_timestamp)
    core.register_component("response_parser_factory", parsers)
    session = boto3.session.Session(botocore_session=core, region_name=region_of(options))
    if not session.region_name:
        raise ConfigurationError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION")
    config = Config(
        # A streaming body holds a connection while the same thread makes another request.
        max_pool_connections=2 * options.concurrency + 8,
        retries={"mode": options.retry_mode, "max_attempts": options.max_attempts},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if options.path_style else None,
    )
    s3 = session.client("s3", endpoint_url=options.s3_endpoint_url or options.endpoint_url, config=config)
    kms = session.client("kms", endpoint_url=options.kms_endpoint_url or options.endpoint_url, config=config)
    s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    s3.meta.events.register("before-call.s3", expect_continue_for_large_bodies)
    for client in (s3, kms):
        sign_in_one_pass(client)
        fast_response_headers(client)
    if telemetry is not None:
        telemetry.attach(s3)
        telemetry.attach(kms)
    return s3, kms
