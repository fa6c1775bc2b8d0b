"""Copying an object onto itself with new user metadata: the only way S3 changes metadata. Its
bytes, and everything a copy can keep, stay as they were (docs/cutover.md).

``CopySourceIfMatch`` makes S3 refuse (412) when the object is no longer the one read; the
destination's ``IfMatch`` makes the write itself conditional too.
"""
from __future__ import annotations

import base64
import hashlib
import threading
from datetime import datetime, timezone
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from keymigration.aws.s3 import RETRYABLE, Bucket, error_code, failure, s3_call
from keymigration.errors import CutOverRefused

MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit; larger objects use UploadPartCopy
PART_SIZE = 512 * 1024**2  # the preferred part; larger when 10,000 of them would not hold the object
# S3's multipart limits: "Maximum number of parts per upload 10,000", "Part size 5 MiB to 5 GiB"
# (so objects up to 10,000 x 5 GiB, 48.8 TiB, S3's current maximum object size).
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * 1024**3
# Object Lock settings of the object, as HEAD names them and CopyObject takes them. A copy is a
# new version: it gets them only if the request sets them (or from the bucket's default).
LOCK_FIELDS = ("ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus")
# "no retention / no legal hold on this object" and "the bucket has no Object Lock".
NO_LOCK = {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError", "InvalidRequest"}
CHECKSUMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")  # as the Checksum<name> fields say them
# HEAD fields carried over by CopyObject parameters of the same name.
CARRIED = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
    "WebsiteRedirectLocation",
    "ObjectLockMode",
    "ObjectLockRetainUntilDate",
    "ObjectLockLegalHoldStatus",
)


def copy_parameters(head: dict, metadata: dict[str, str]) -> dict:
    params: dict = {"MetadataDirective": "REPLACE", "TaggingDirective": "COPY", "Metadata": metadata}
    for name in CARRIED:
        if head.get(name) is not None:
            params[name] = head[name]
    until = head.get("ObjectLockRetainUntilDate")
    if until is not None and until <= datetime.now(timezone.utc):
        # An expired retention is no retention; S3 refuses a retain-until date in the past.
        params.pop("ObjectLockRetainUntilDate", None)
        params.pop("ObjectLockMode", None)
    if head.get("Expires") is not None:
        params["Expires"] = head["Expires"]
    storage = head.get("StorageClass")
    if storage:
        params["StorageClass"] = storage
    sse = head.get("ServerSideEncryption")
    if sse:
        params["ServerSideEncryption"] = sse
        if head.get("SSEKMSKeyId"):
            params["SSEKMSKeyId"] = head["SSEKMSKeyId"]
        if head.get("BucketKeyEnabled") is not None:
            params["BucketKeyEnabled"] = head["BucketKeyEnabled"]
    return params


def part_size_for(size: int, preferred: int = PART_SIZE) -> int:
    """The part size of a multipart copy of ``size`` bytes: ``preferred``, or the smallest whole
    MiB that fits the object into 10,000 parts. Refuses objects S3 cannot hold in parts."""
    mib = 1024**2
    needed = -(-size // MAX_PARTS)
    part = max(preferred, -(-needed // mib) * mib)
    if part > MAX_PART_SIZE:
        raise CutOverRefused(
            "object-too-large", f"{size} bytes do not fit into {MAX_PARTS} parts of at most {MAX_PART_SIZE} bytes"
        )
    return part


EMPTY_BODY_MD5 = base64.b64encode(hashlib.md5(b"").digest()).decode()


def _content_md5_for_lock_headers(request, **_):
    """Writes carrying Object Lock headers must carry Content-MD5 (S3 and S3-compatible stores
    insist; CopyObject has no body, so it is the MD5 of the empty body)."""
    if "x-amz-object-lock-mode" in request.headers and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = EMPTY_BODY_MD5


class MetadataRewriter:
    """Rewrites an object's user metadata in place, keeping its bytes and everything else."""

    def __init__(self, bucket: Bucket, single_copy_limit: int = MAX_SINGLE_COPY, part_size: int = PART_SIZE):
        bucket.client.meta.events.register(
            "before-sign.s3.CopyObject", _content_md5_for_lock_headers, unique_id="keymigration-lock-md5"
        )
        self.bucket = bucket
        self.single_copy_limit = single_copy_limit
        self.part_size = part_size
        self._acls_disabled: bool | None = None
        self._lock_enabled: bool | None = None
        self._lock_asked = False
        self._bucket_lookups = threading.Lock()  # the bucket-level answers: asked once per run

    def acl_grants(self, key: str, head: dict) -> list:
        """Grants beyond the owner's; none when the bucket has ACLs disabled (the S3 default)."""
        client = self.bucket.client
        with self._bucket_lookups:
            if self._acls_disabled is None:
                try:
                    rules = client.get_bucket_ownership_controls(Bucket=self.bucket.name)["OwnershipControls"]["Rules"]
                    self._acls_disabled = any(r.get("ObjectOwnership") == "BucketOwnerEnforced" for r in rules)
                except (ClientError, BotoCoreError, KeyError):
                    self._acls_disabled = False
        if self._acls_disabled:
            return []
        kwargs = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        try:
            acl = client.get_object_acl(Bucket=self.bucket.name, Key=key, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise failure(error, "GetObjectAcl", key) from None
        owner = (acl.get("Owner") or {}).get("ID")
        return [g for g in acl.get("Grants", []) if (g.get("Grantee") or {}).get("ID") != owner]

    def object_lock(self, key: str, head: dict) -> dict:
        """The object's retention and legal hold, asked for explicitly on a bucket that may have
        Object Lock: HEAD returns them only to a role with s3:GetObjectRetention and
        s3:GetObjectLegalHold, and says nothing otherwise, so a copy made from HEAD alone
        would silently leave the new version unlocked. Raises ``CutOverRefused``
        (``object-lock-unreadable``) when they cannot be read. {} on a bucket without Object Lock."""
        if self._bucket_locked() is False:
            return {}
        client, name = self.bucket.client, self.bucket.name
        version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        retention = self._lock_read("GetObjectRetention", key, lambda: client.get_object_retention(Bucket=name, Key=key, **version))
        hold = self._lock_read("GetObjectLegalHold", key, lambda: client.get_object_legal_hold(Bucket=name, Key=key, **version))
        retention, hold = retention.get("Retention") or {}, hold.get("LegalHold") or {}
        return {
            "ObjectLockMode": retention.get("Mode"),
            "ObjectLockRetainUntilDate": retention.get("RetainUntilDate"),
            "ObjectLockLegalHoldStatus": hold.get("Status"),
        }

    def _bucket_locked(self) -> bool | None:
        """Object Lock on the bucket: True, False, or None when its configuration cannot be read."""
        with self._bucket_lookups:
            return self._read_bucket_lock()

    def _read_bucket_lock(self) -> bool | None:
        if not self._lock_asked:
            self._lock_asked = True  # an unreadable answer (AccessDenied) is not asked again either
            try:
                config = self.bucket.client.get_object_lock_configuration(Bucket=self.bucket.name)
                self._lock_enabled = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as error:
                if error_code(error) in NO_LOCK:
                    self._lock_enabled = False
                # else (AccessDenied): unknown, ask each object
            except BotoCoreError:
                pass
        return self._lock_enabled

    @staticmethod
    def _lock_read(action: str, key: str, call) -> dict:
        try:
            return call()
        except ClientError as error:
            code = error_code(error)
            if code in NO_LOCK:
                return {}
            if code in RETRYABLE:
                raise failure(error, action, key) from None
            raise CutOverRefused(
                "object-lock-unreadable",
                f"S3 {action} of {key!r} failed ({code}); without the object's retention and legal hold the copy "
                "would leave the new version unlocked (the worker needs s3:GetObjectRetention and s3:GetObjectLegalHold)",
            ) from None
        except BotoCoreError as error:
            raise failure(error, action, key) from None

    def rewrite(self, key: str, head: dict, metadata: dict[str, str], lock: dict | None = None) -> str:
        """Copy the object onto itself with new user metadata; returns the new ETag. ``lock``:
        the object's Object Lock settings (``object_lock``), read now when not given.

        The source is the *current* object, never a pinned version: ``CopySourceIfMatch`` then
        makes S3 refuse (412) if the object is no longer the one read (a pinned version's ETag
        never changes, so in a versioned bucket the condition would always hold), and the
        destination's ``IfMatch`` makes the write itself conditional too."""
        client = self.bucket.client
        source = {"Bucket": self.bucket.name, "Key": key}
        lock = self.object_lock(key, head) if lock is None else lock
        params = copy_parameters({**head, **lock}, metadata)
        size = head.get("ContentLength", 0)
        part_size = part_size_for(size, self.part_size) if size > self.single_copy_limit else 0

        def copy() -> str:
            if part_size:
                return self._multipart(key, source, head, params, part_size)
            response = client.copy_object(
                Bucket=self.bucket.name,
                Key=key,
                CopySource=source,
                CopySourceIfMatch=head["ETag"],
                IfMatch=head["ETag"],
                **params,
            )
            return response["CopyObjectResult"]["ETag"]

        return s3_call("CopyObject", key, copy)

    def _checksum_algorithm(self, key: str, head: dict) -> str | None:
        """The object's checksum algorithm (HEAD shows checksums only when asked for them)."""
        checked = self.bucket.client.head_object(Bucket=self.bucket.name, Key=key, IfMatch=head["ETag"], ChecksumMode="ENABLED")
        return next((name for name in CHECKSUMS if checked.get(f"Checksum{name}")), None)

    def _multipart(self, key: str, source: dict, head: dict, params: dict, part_size: int) -> str:
        client = self.bucket.client
        create = {k: v for k, v in params.items() if k not in ("MetadataDirective", "TaggingDirective")}
        tags = client.get_object_tagging(Bucket=self.bucket.name, Key=key).get("TagSet", [])
        if tags:
            create["Tagging"] = urlencode({t["Key"]: t["Value"] for t in tags})
        # CopyObject keeps an object's checksum; a multipart copy keeps its algorithm only if the
        # upload asks for it (the value becomes the parts' composite checksum).
        algorithm = self._checksum_algorithm(key, head)
        if algorithm:
            create["ChecksumAlgorithm"] = algorithm
        upload = client.create_multipart_upload(Bucket=self.bucket.name, Key=key, **create)["UploadId"]
        try:
            parts = []
            size = head["ContentLength"]
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                part = client.upload_part_copy(
                    Bucket=self.bucket.name,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                    CopySourceIfMatch=head["ETag"],
                )
                result = part["CopyPartResult"]
                checksum = {f"Checksum{algorithm}": result[f"Checksum{algorithm}"]} if f"Checksum{algorithm}" in result else {}
                parts.append({"PartNumber": number, "ETag": result["ETag"], **checksum})
            done = client.complete_multipart_upload(
                Bucket=self.bucket.name, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfMatch=head["ETag"]
            )
            return done["ETag"]
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=self.bucket.name, Key=key, UploadId=upload)
            except (ClientError, BotoCoreError):
                pass
            raise


__all__ = ["MetadataRewriter", "copy_parameters", "part_size_for"]
