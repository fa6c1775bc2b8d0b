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
from keymigration.migrate import EXIT_CONFIG

from . import oracles
from .test_rewrap_interop import body_for, run_cli


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


# -- item 2: the caller's encryption context survives -----------------------------------------

CONTEXT = {"tenant": "acme", "project": "payroll"}
ENVELOPE_KEYS = set(e.V1_V2_KEYS) | set(e.V3_INSTRUCTION_KEYS)  # what a cut-over removes


def python_objects(interop, prefix):
    """Python S3EC v4 V2 and V3 objects under the old KMS key with a caller context."""
    objects = {}
    for fmt in ("v2", "v3"):
        for size in (0, 17, 70000):
            objects[f"{prefix}python-{fmt}/{size}"] = body_for(size + len(fmt), size)
    oracles.py_s3ec_put(interop.endpoint, [
        {"bucket": interop.bucket, "key": key, "body": body, "kms_key_id": interop.old_kms_key,
         "format": key.split("/")[1].split("-")[1], "encryption_context": CONTEXT}
        for key, body in objects.items()
    ])
    return objects


def as_python_reads_them(interop, objects, prefix):
    """Python S3EC v4 reads an instruction file only when the object metadata holds no envelope
    (the old one stays in instruction-file mode): copies of ``objects`` laid out that way (the
    metadata envelope removed, as a cut-over does) next to a copy of the new file. {copy: body}"""
    copies = {}
    for key, body in objects.items():
        copy = key.replace(prefix, prefix + "as-read/")
        metadata = interop.s3.head_object(Bucket=interop.bucket, Key=key)["Metadata"]
        interop.s3.put_object(Bucket=interop.bucket, Key=copy, Body=interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read(),
                              Metadata={k: v for k, v in metadata.items() if k not in ENVELOPE_KEYS})
        interop.s3.copy_object(Bucket=interop.bucket, Key=copy + ".instruction", CopySource={"Bucket": interop.bucket, "Key": key + ".instruction"})
        copies[copy] = body
    return copies


def python_reads(interop, keys, **item):
    return oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, **item} for k in keys],
                               kms_key_id=interop.new_kms_key)


def test_python_s3ec_context_survives_instruction_file_mode(interop, needs_ruby, needs_go):
    prefix = "ctx-file/"
    objects = python_objects(interop, prefix)
    proc, results, summary = migrate(interop, prefix)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["migrated"] == len(objects)
    assert not any(r.get("context_changed") for r in results.values())  # the readers' context is the same
    for key in objects:
        stored = json.loads(interop.s3.get_object(Bucket=interop.bucket, Key=key + ".instruction")["Body"].read())
        context = json.loads(stored.get("x-amz-matdesc") or stored["x-amz-t"])
        assert context == {**CONTEXT, "aws:x-amz-cek-alg": e.SUITE_115 if "v3" in key else e.GCM}
        assert "kms_cmk_id" not in context
    copies = as_python_reads_them(interop, objects, prefix)
    assert python_reads(interop, copies, encryption_context=CONTEXT) == list(copies.values())
    assert all(isinstance(r, str) and "context" in r.lower() for r in python_reads(interop, copies))  # the context is needed
    v2 = [k for k in objects if "python-v2" in k]  # Ruby 1.117 and Go v1 have no V3
    ruby = oracles.ruby_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "suffix": ".instruction",
                                                "kms_encryption_context": CONTEXT} for k in v2], kms_key_id=interop.new_kms_key)
    assert ruby == [objects[k] for k in v2]
    go = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "load_strategy": "instruction_file"} for k in v2],
                        kms_key_id=interop.new_kms_key)
    assert go == [objects[k] for k in v2]


def test_python_s3ec_context_survives_cut_over(interop, needs_ruby):
    prefix = "ctx-cut/"
    objects = python_objects(interop, prefix)
    proc, results, summary = migrate(interop, prefix, "--mode", "cutover")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["reason"] for r in results.values()} == {"cut-over"} and summary["failed"] == 0
    assert python_reads(interop, objects, encryption_context=CONTEXT) == list(objects.values())
    assert all(isinstance(r, str) for r in python_reads(interop, objects, encryption_context={"tenant": "other"}))
    v2 = [k for k in objects if "python-v2" in k]
    ruby = oracles.ruby_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "kms_encryption_context": CONTEXT} for k in v2],
                            kms_key_id=interop.new_kms_key)
    assert ruby == [objects[k] for k in v2]


def test_aes_and_rsa_sources_take_the_configured_context_and_the_report_says_so(interop, needs_ruby, key_files):
    prefix = "ctx-aes/"
    items = [{"bucket": interop.bucket, "key": f"{prefix}v1-aes", "body": b"one", "client": "v1", "aes_key": interop.aes_key,
              "matdesc": {"owner": "team-a"}},
             {"bucket": interop.bucket, "key": f"{prefix}v2-rsa", "body": b"two", "client": "v2", "rsa_private_pem": interop.rsa_private_pem}]
    oracles.ruby_put(interop.endpoint, items)
    aes, rsa = key_files
    proc, results, _ = migrate(interop, prefix, "--source-key", str(aes), "--source-key", str(rsa),
                               "--encryption-context", "tenant=acme", "--encryption-context", "note=a=b")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for item in items:
        line = results[item["key"]]
        assert line["outcome"] == "migrated" and line["context_changed"] is True
        assert line["reader_context"] == {"tenant": "acme", "note": "a=b"}  # the matdesc {"owner": ...} is not carried
    reads = [{"bucket": interop.bucket, "key": i["key"], "suffix": ".instruction", "kms_encryption_context": {"tenant": "acme", "note": "a=b"}}
             for i in items]
    assert oracles.ruby_get(interop.endpoint, reads, kms_key_id=interop.new_kms_key) == [b"one", b"two"]
    without = [{k: v for k, v in r.items() if k != "kms_encryption_context"} for r in reads]
    assert all(isinstance(r, str) for r in oracles.ruby_get(interop.endpoint, without, kms_key_id=interop.new_kms_key))
    bad = run_cli(interop, "run", "--bucket", interop.bucket, "--prefix", prefix, "--kms-key-id", interop.new_kms_key,
                  "--source-key", str(aes), "--encryption-context", "aws:x-amz-cek-alg=AES/GCM/NoPadding", "--progress", "none")
    assert bad.returncode == EXIT_CONFIG and "reserved" in bad.stderr


# -- item 6: non-ASCII context values, as S3 and moto return them ------------------------------

UNICODE_CONTEXT = {"tenant": "café", "region": "日本"}


def test_non_ascii_context_written_by_ruby_migrates_and_reads_back(interop, needs_ruby, needs_go):
    """Ruby EncryptionV2 sends the context's UTF-8 bytes in x-amz-meta-x-amz-matdesc. moto
    returns them raw, which boto3 reads as Latin-1 ("cafÃ©"); S3 returns them RFC 2047-encoded
    as UTF-8 of those Latin-1 characters. Both decode as the Java S3EC decodes them, so
    ReEncrypt gets the context the data key was encrypted under."""
    prefix = "ctx-unicode/"
    raw, s3_form = prefix + "as-moto-returns-it", prefix + "as-s3-returns-it"
    oracles.ruby_put(interop.endpoint, [{"bucket": interop.bucket, "key": k, "body": k.encode() * 3, "client": "v2",
                                         "kms_key_id": interop.old_kms_key, "matdesc": UNICODE_CONTEXT} for k in (raw, s3_form)])
    metadata = interop.s3.head_object(Bucket=interop.bucket, Key=s3_form)["Metadata"]
    latin1 = metadata["x-amz-matdesc"]
    assert "cafÃ©" in latin1  # what boto3 makes of the raw bytes
    encoded = "=?UTF-8?B?" + base64.b64encode(latin1.encode("utf-8")).decode() + "?="
    replace_metadata(interop, s3_form, {**metadata, "x-amz-matdesc": encoded})
    proc, results, summary = migrate(interop, prefix)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert summary["migrated"] == 2 and not any(r.get("context_changed") for r in results.values())
    keys = [raw, s3_form]
    reads = [{"bucket": interop.bucket, "key": k, "suffix": ".instruction", "kms_encryption_context": UNICODE_CONTEXT} for k in keys]
    assert oracles.ruby_get(interop.endpoint, reads, kms_key_id=interop.new_kms_key) == [k.encode() * 3 for k in keys]
    go = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "load_strategy": "instruction_file"} for k in keys],
                        kms_key_id=interop.new_kms_key)
    assert go == [k.encode() * 3 for k in keys]
