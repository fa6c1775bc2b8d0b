"""Small S3 helpers with the error mapping the re-wrap needs. Thin over boto3."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from keymigration.errors import PreconditionFailed, S3Error
from keymigration.formats.envelope import MAX_INSTRUCTION_FILE_BYTES

NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict", "409"}
RETRYABLE = {"SlowDown", "503", "500", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException"}
BODY_CHUNK = 1 << 20




def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def failure(error: Exception, action: str, key: str) -> S3Error:
    if isinstance(error, ClientError):
        code = error_code(error)
        return S3Error(f"s3-{code}", f"S3 {action} of {key!r} failed: {code}", retryable=code in RETRYABLE)
    return S3Error("s3-connection", f"S3 {action} of {key!r} failed: {type(error).__name__}", retryable=True)


T = TypeVar("T")


def s3_call(action: str, key: str, call: Callable[[], T], absent_ok: bool = False) -> T | None:
    """Run ``call`` with the re-wrap's error mapping: a lost condition is PreconditionFailed,
    an absent object None (with ``absent_ok``), anything else an S3Error naming the action."""
    try:
        return call()
    except ClientError as error:
        code = error_code(error)
        if absent_ok and code in NOT_FOUND:
            return None
        if code in PRECONDITION:
            raise PreconditionFailed(key) from None
        raise failure(error, action, key) from None
    except BotoCoreError as error:
        raise failure(error, action, key) from None


@dataclass(frozen=True)
class StoredFile:
    """A small S3 object read whole: an instruction file or a backup."""

    key: str
    body: bytes = field(repr=False)
    etag: str
    metadata: Mapping[str, str]
    content_type: str = "application/json"


class Bucket:
    def __init__(self, client, name: str):
        self.client = client
        self.name = name

    def head(self, key: str, if_match: str | None = None) -> dict | None:
        """HEAD; None when the object is gone. With if_match, PreconditionFailed when changed."""
        kwargs = {"IfMatch": if_match} if if_match else {}
        return s3_call("HEAD", key, lambda: self.client.head_object(Bucket=self.name, Key=key, **kwargs), absent_ok=True)

    def _get(self, key: str, **conditions) -> dict | None:
        """GET; None when absent; PreconditionFailed when a condition (IfMatch) lost."""
        return s3_call("GET", key, lambda: self.client.get_object(Bucket=self.name, Key=key, **conditions), absent_ok=True)

    def get_small(self, key: str, limit: int = MAX_INSTRUCTION_FILE_BYTES) -> StoredFile | None:
        """GET a small object whole; None when absent. Refuses bodies over ``limit`` bytes."""
        response = self._get(key)
        if response is None:
            return None
        body_stream = response["Body"]
        try:
            if response.get("ContentLength", 0) > limit:
                raise S3Error("malformed-instruction-file", f"{key!r} is {response['ContentLength']} bytes (limit {limit})")
            body = body_stream.read(limit + 1)
        except BotoCoreError as error:
            raise failure(error, "GET", key) from None
        finally:
            body_stream.close()
        if len(body) > limit:
            raise S3Error("malformed-instruction-file", f"{key!r} is over {limit} bytes")
        metadata = {k.lower(): v for k, v in response.get("Metadata", {}).items()}
        return StoredFile(key, body, response["ETag"], metadata, response.get("ContentType") or "binary/octet-stream")

    def put(
        self,
        key: str,
        body: bytes,
        metadata: Mapping[str, str],
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        """Conditional PUT; returns the new ETag; PreconditionFailed when the condition lost."""
        kwargs: dict = {}
        if if_match:
            kwargs["IfMatch"] = if_match
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        # botocore adds a CRC32 checksum (x-amz-sdk-checksum-algorithm) that S3 verifies: the
        # integrity check Object Lock buckets demand of every PUT, too.
        response = s3_call(
            "PUT",
            key,
            lambda: self.client.put_object(
                Bucket=self.name, Key=key, Body=body, Metadata=dict(metadata), ContentType=content_type, **kwargs
            ),
        )
        return response["ETag"]

    def delete(self, key: str, if_match: str | None = None) -> None:
        kwargs = {"IfMatch": if_match} if if_match else {}
        s3_call("DELETE", key, lambda: self.client.delete_object(Bucket=self.name, Key=key, **kwargs), absent_ok=True)

    def open(self, key: str) -> tuple[dict[str, str], Iterator[bytes]] | None:
        """GET: (metadata, body chunks), or None when absent. Close the chunks when done."""
        response = self._get(key)
        if response is None:
            return None
        return response.get("Metadata", {}), self._chunks(response["Body"], key)

    @staticmethod
    def _chunks(body, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(BODY_CHUNK)
        except BotoCoreError as error:
            raise failure(error, "GET", key) from None
        finally:
            body.close()

    def tail(self, key: str, size: int, length: int, if_match: str) -> bytes:
        """The last ``size`` bytes of an object of ``length`` bytes (a ranged GET)."""
        start = max(0, length - size)
        response = self._get(key, IfMatch=if_match, Range=f"bytes={start}-{length - 1}")
        if response is None:
            raise S3Error("object-deleted", f"{key!r} is gone")
        body = response["Body"]
        try:
            return body.read()
        except BotoCoreError as error:
            raise failure(error, "GET", key) from None
        finally:
            body.close()

    def stream(self, key: str, if_match: str | None = None) -> Iterator[bytes]:
        """The object body in 1 MiB chunks (constant memory); PreconditionFailed if changed."""
        response = self._get(key, **({"IfMatch": if_match} if if_match else {}))
        if response is None:
            raise S3Error("object-deleted", f"{key!r} is gone")
        yield from self._chunks(response["Body"], key)
