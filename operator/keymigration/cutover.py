"""Cut-over: remove the old envelope from an object's metadata so that every S3EC reader's
default lookup finds the new KMS envelope in ``<key>.instruction`` (docs/cutover.md).

Readers that find an envelope in object metadata use it and never look at the instruction file
(Java S3EC v3/v4, Python v4, Go S3EC, .NET, C++; spec content-metadata.md "Determining S3EC
Object Status"). The metadata can only change by rewriting the object: a server-side CopyObject
onto itself with ``MetadataDirective=REPLACE`` and ``CopySourceIfMatch=<ETag read>``, which
keeps the ciphertext bytes and fails if anyone wrote the object in between. Before that, the
removed envelope is stored in ``<key>.keymigration-backup`` for rollback.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Mapping

from botocore.exceptions import BotoCoreError, ClientError

from . import envelope as env_mod
from .s3io import BACKUP_SUFFIX, Bucket, PreconditionFailed, S3Failure, failure, s3_call

METADATA_BACKUP_SUFFIX = BACKUP_SUFFIX  # <key>.keymigration-backup
# Envelope keys that leave the metadata (spec content-metadata.md): all V1/V2 keys, and the V3
# keys that may live in the instruction file; x-amz-c/d/i MUST stay in object metadata.
REMOVED_KEYS = env_mod.V1_V2_KEYS + (
    env_mod.ENCRYPTED_DATA_KEY_V3,
    env_mod.ENCRYPTED_DATA_KEY_ALGORITHM_V3,
    env_mod.MAT_DESC_V3,
    env_mod.ENCRYPTION_CONTEXT_V3,
)
MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit; larger objects use UploadPartCopy
PART_SIZE = 512 * 1024**2
ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}
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


class CutOverRefused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def envelope_in_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    md = env_mod.lower_keys(metadata)
    return {k: md[k] for k in REMOVED_KEYS if k in md}


def stripped_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    md = env_mod.lower_keys(metadata)
    return {k: v for k, v in md.items() if k not in REMOVED_KEYS}


def refusal(head: dict, acl_grants: list | None) -> CutOverRefused | None:
    """Why this object must not be rewritten, or None. Checked before anything is written."""
    if head.get("SSECustomerAlgorithm"):
        return CutOverRefused("sse-c", "the object uses SSE-C; copying it needs the customer key, which keymigration does not hold")
    storage = head.get("StorageClass", "STANDARD")
    if storage in ARCHIVED and 'ongoing-request="false"' not in (head.get("Restore") or ""):
        return CutOverRefused("archived", f"the object is in {storage}; restore it before the cut-over")
    if head.get("ArchiveStatus"):
        return CutOverRefused("archived", f"the object is in Intelligent-Tiering {head['ArchiveStatus']}; restore it first")
    if acl_grants:
        return CutOverRefused(
            "custom-acl", "the object has ACL grants beyond its owner; CopyObject would drop them (see docs/cutover.md)"
        )
    return None


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


def backup_body(key: str, head: dict, removed: dict[str, str], cut_over_etag: str | None = None) -> bytes:
    data = {
        "keymigration-backup": 1,
        "source": "object-metadata",
        "key": key,
        "etag": head["ETag"],
        "length": head.get("ContentLength"),
        "version_id": head.get("VersionId"),
        "envelope": removed,
    }
    if cut_over_etag:
        data["cut_over_etag"] = cut_over_etag  # the object as the cut-over left it
    return json.dumps(data, sort_keys=True, ensure_ascii=False).encode()


def read_backup_record(stored_body: bytes) -> dict:
    try:
        data = json.loads(stored_body)
    except ValueError:
        raise ValueError("not a keymigration metadata backup") from None
    if not isinstance(data, dict) or data.get("keymigration-backup") != 1 or not isinstance(data.get("envelope"), dict):
        raise ValueError("not a keymigration metadata backup")
    return data


def read_metadata_backup(stored_body: bytes) -> dict[str, str]:
    return {str(k): str(v) for k, v in read_backup_record(stored_body)["envelope"].items()}


def record_cut_over(bucket: Bucket, key: str, head: dict, removed: dict[str, str], after: dict) -> None:
    """Add the cut-over object's ETag to its backup, so a rollback can tell that object from one
    written later under the same key. Best effort: without it, rollback falls back to checks."""
    name = key + METADATA_BACKUP_SUFFIX
    stored = bucket.get_small(name)
    if stored is None:
        return
    try:
        bucket.put(name, backup_body(key, head, removed, after["ETag"]), stored.metadata, if_match=stored.etag)
    except PreconditionFailed:
        pass


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

    def acl_grants(self, key: str, head: dict) -> list:
        """Grants beyond the owner's; none when the bucket has ACLs disabled (the S3 default)."""
        client = self.bucket.client
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

    def rewrite(self, key: str, head: dict, metadata: dict[str, str]) -> str:
        """Copy the object onto itself with new user metadata; returns the new ETag.

        The source is the *current* object, never a pinned version: ``CopySourceIfMatch`` then
        makes S3 refuse (412) if the object is no longer the one read (a pinned version's ETag
        never changes, so in a versioned bucket the condition would always hold), and the
        destination's ``IfMatch`` makes the write itself conditional too."""
        client = self.bucket.client
        source = {"Bucket": self.bucket.name, "Key": key}
        params = copy_parameters(head, metadata)

        def copy() -> str:
            if head.get("ContentLength", 0) > self.single_copy_limit:
                return self._multipart(key, source, head, params)
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

    def _multipart(self, key: str, source: dict, head: dict, params: dict) -> str:
        client = self.bucket.client
        create = {k: v for k, v in params.items() if k not in ("MetadataDirective", "TaggingDirective")}
        tags = client.get_object_tagging(Bucket=self.bucket.name, Key=key).get("TagSet", [])
        if tags:
            from urllib.parse import urlencode

            create["Tagging"] = urlencode({t["Key"]: t["Value"] for t in tags})
        upload = client.create_multipart_upload(Bucket=self.bucket.name, Key=key, **create)["UploadId"]
        try:
            parts = []
            size = head["ContentLength"]
            for number, start in enumerate(range(0, size, self.part_size), start=1):
                end = min(start + self.part_size, size) - 1
                part = client.upload_part_copy(
                    Bucket=self.bucket.name,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                    CopySourceIfMatch=head["ETag"],
                )
                parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
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


def store_metadata_backup(bucket: Bucket, key: str, head: dict, removed: dict[str, str]) -> str | None:
    """``<key>.keymigration-backup``: the envelope about to leave the metadata, for rollback.
    Returns the new backup's ETag, or None when the same backup was already there (a resumed
    run); a different existing backup is refused."""
    name = key + METADATA_BACKUP_SUFFIX
    body = backup_body(key, head, removed)
    try:
        return bucket.put(name, body, {"keymigration-backup-of": "object-metadata"}, if_none_match=True)
    except PreconditionFailed:
        stored = bucket.get_small(name)
        try:
            same = stored is not None and read_metadata_backup(stored.body) == removed
        except ValueError:
            same = False
        if not same:
            raise S3Failure(
                "backup-exists",
                f"{name!r} holds a different envelope (an earlier migration's backup); confirm and prune it first",
            ) from None
        return None
