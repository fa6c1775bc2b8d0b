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

import json
from typing import Mapping

from keymigration.aws.s3 import Bucket
from keymigration.errors import CutOverRefused, PreconditionFailed, S3Error
from keymigration.formats import envelope as env_mod
from keymigration.formats.vocabulary import BACKUP_SUFFIX

METADATA_BACKUP_SUFFIX = BACKUP_SUFFIX  # <key>.keymigration-backup
# Envelope keys that leave the metadata (spec content-metadata.md): all V1/V2 keys, and the V3
# keys that may live in the instruction file; x-amz-c/d/i MUST stay in object metadata.
REMOVED_KEYS = env_mod.V1_V2_KEYS + (
    env_mod.ENCRYPTED_DATA_KEY_V3,
    env_mod.ENCRYPTED_DATA_KEY_ALGORITHM_V3,
    env_mod.MAT_DESC_V3,
    env_mod.ENCRYPTION_CONTEXT_V3,
)

ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}


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
            raise S3Error(
                "backup-exists",
                f"{name!r} holds a different envelope (an earlier migration's backup); confirm and prune it first",
            ) from None
        return None
