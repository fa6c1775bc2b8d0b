"""What a KMS envelope authenticates, and the caller's encryption context, against the real
clients (#13 items 1, 2 and 6), over HTTP on a moto server.

Objects are written by the official Python S3EC v4 (V2 and V3, with an ``EncryptionContext``) and
by Ruby ``EncryptionV2`` (a ``kms_encryption_context`` with non-ASCII values), migrated by
``keymigration run`` in a separate process, and read back by those clients with only the target
key and the same context.
"""
from __future__ import annotations

import base64
import json
import os

from keymigration.formats import envelope as e

from . import oracles
from .test_rewrap_interop import run_cli


def migrate(interop, prefix, *extra, report=None):
    args = ["run", "--bucket", interop.bucket, "--prefix", prefix, "--source-kms-key-id", interop.old_kms_key,
            "--kms-key-id", interop.new_kms_key, "--report", "-", "--progress", "none", *extra]
    proc = run_cli(interop, *args)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, {line["key"]: line for line in lines if "key" in line}, lines[-1]["summary"] if lines else {}


def replace_metadata(interop, key, metadata):
    interop.s3.copy_object(Bucket=interop.bucket, Key=key, CopySource={"Bucket": interop.bucket, "Key": key},
                           MetadataDirective="REPLACE", Metadata=metadata)


# -- item 1: the content cipher a kms+context envelope claims is the one its context binds -----


def test_relabelled_kms_context_object_is_refused_and_nothing_written(interop):
    """A Python S3EC V2 (AES/GCM) object whose x-amz-cek-alg was relabelled AES/CBC (with a
    16-byte IV, so the envelope parses): its KMS context still binds AES/GCM/NoPadding. Go, Ruby
    and Java v1 refuse it; so does the migration, before any KMS call, instead of writing a new
    envelope that authenticates the false label."""
    prefix = "cek-relabel/"
    key = prefix + "gcm-as-cbc"
    oracles.py_s3ec_put(interop.endpoint, [{"bucket": interop.bucket, "key": key, "body": b"x" * 32,
                                            "kms_key_id": interop.old_kms_key, "format": "v2"}])
    metadata = interop.s3.head_object(Bucket=interop.bucket, Key=key)["Metadata"]
    assert json.loads(metadata["x-amz-matdesc"]) == {"aws:x-amz-cek-alg": e.GCM}
    relabelled = {k: v for k, v in metadata.items() if k != "x-amz-tag-len"}
    relabelled.update({"x-amz-cek-alg": e.CBC, "x-amz-iv": base64.b64encode(os.urandom(16)).decode()})
    replace_metadata(interop, key, relabelled)
    proc, results, summary = migrate(interop, prefix)
    assert proc.returncode != 0
    assert (results[key]["outcome"], results[key]["reason"]) == ("failed", "cek-alg-mismatch"), results[key]
    assert "re_encrypt" not in summary["kms_requests"]
    listed = interop.s3.list_objects_v2(Bucket=interop.bucket, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [key]
