"""Logging set-up: text for people, JSON with stable field names for log pipelines."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from keymigration.clock import utc_timestamp

# Fields a caller may attach with ``extra=``; anything else stays out of the JSON line.
STRUCTURED_FIELDS = ("migration", "namespace", "prefix", "object_key", "outcome", "reason", "job", "event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": utc_timestamp(datetime.fromtimestamp(record.created, timezone.utc), precise=True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False)


def setup_logging(fmt: str = "text", level: str = "info", stream=sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore at debug level logs request bodies (KMS Plaintext); never below WARNING.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
