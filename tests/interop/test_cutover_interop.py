"""Cut-over and rollback against the real clients: after `keymigration run --mode cutover`, every
reader's DEFAULT lookup (Python S3EC v4, Ruby EncryptionV2, Go s3crypto) decrypts with only the
KMS key; after `keymigration rollback`, the original clients with the old keys read again."""
from __future__ import annotations

import json

import pytest

from . import oracles
from .test_rewrap_interop import body_for, run_cli

HEADERS = {"ContentType": "application/x-payroll", "ContentDisposition": "inline", "CacheControl": "no-store", "ContentLanguage": "fr"}
KINDS = [
    ("v1", "aes", "metadata"),
    ("v1", "rsa", "metadata"),
    ("v1", "aes", "instruction_file"),
    ("v2", "aes", "metadata"),
    ("v2", "rsa", "metadata"),
    ("v2", "kms", "metadata"),
    ("v2", "rsa", "instruction_file"),
]
SIZES = [0, 17, 70000]


def seed(interop, prefix, kinds=KINDS):
    """Objects written by Ruby V1/V2 (``kinds``: client, master key, envelope location) and the
    Python S3EC v4 (V2 and V3 under the old KMS key), with content headers and tags a copy of
    the object must keep. Returns {key: {"body", "client", "kind", "location"}}."""
    objects = {}
    items = []
    n = 0
    for client, kind, location in kinds:
        for size in SIZES:
            key = f"{prefix}{client}-{kind}-{location}/obj +%ü {size}"
            body = body_for(n, size)
            item = {"bucket": interop.bucket, "key": key, "body": body, "client": client, "envelope_location": location,
                    "metadata": {"owner": "payroll"}}
            item.update({"aes": {"aes_key": interop.aes_key}, "rsa": {"rsa_private_pem": interop.rsa_private_pem},
                         "kms": {"kms_key_id": interop.old_kms_key}}[kind])
            items.append(item)
            objects[key] = {"body": body, "client": client, "kind": kind, "location": location}
            n += 1
    oracles.ruby_put(interop.endpoint, items)
    py_items = []
    for fmt in ("v2", "v3"):
        for size in SIZES:
            key = f"{prefix}python-{fmt}/obj {size}"
            body = body_for(n, size)
            py_items.append({"bucket": interop.bucket, "key": key, "body": body, "kms_key_id": interop.old_kms_key,
                             "format": fmt, "metadata": {"owner": "payroll"}})
            objects[key] = {"body": body, "client": f"python-{fmt}", "kind": "kms", "location": "metadata"}
            n += 1
    oracles.py_s3ec_put(interop.endpoint, py_items)
    for key in objects:  # content headers and tags that the copy must keep
        head = interop.s3.head_object(Bucket=interop.bucket, Key=key)
        interop.s3.copy_object(Bucket=interop.bucket, Key=key, CopySource={"Bucket": interop.bucket, "Key": key},
                               MetadataDirective="REPLACE", Metadata=head["Metadata"], **HEADERS)
        interop.s3.put_object_tagging(Bucket=interop.bucket, Key=key, Tagging={"TagSet": [{"Key": "team", "Value": "payroll"}]})
    return objects


@pytest.fixture(scope="module")
def cut(interop, needs_ruby, needs_go, key_files):
    prefix = "cutover/"
    objects = seed(interop, prefix)
    s3 = interop.s3
    raw = {k: s3.get_object(Bucket=interop.bucket, Key=k)["Body"].read() for k in objects}
    before = {k: s3.head_object(Bucket=interop.bucket, Key=k) for k in objects}

    aes, rsa = key_files
    plan = run_cli(interop, "plan", "--bucket", interop.bucket, "--prefix", prefix, "--mode", "cutover", "--source-key", str(aes),
                   "--source-key", str(rsa), "--source-kms-key-id", interop.old_kms_key, "--progress", "none")
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout.splitlines()[-1])["plan"]
    assert planned["reasons"] == {"planned:would-migrate-and-cut-over": len(objects)}
    proc = run_cli(interop, "run", "--bucket", interop.bucket, "--prefix", prefix, "--mode", "cutover",
                   "--source-key", str(aes), "--source-key", str(rsa), "--source-kms-key-id", interop.old_kms_key,
                   "--kms-key-id", interop.new_kms_key, "--report", "-", "--progress", "none")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["migrated"] == len(objects) and summary["failed"] == 0
    return prefix, objects, raw, before


def expect_all(keys, results, objects):
    failures = {k: (r if isinstance(r, str) else "wrong bytes") for k, r in zip(keys, results) if r != objects[k]["body"]}
    assert not failures, failures


def test_bodies_metadata_headers_and_tags_are_kept(interop, cut):
    _, objects, raw, before = cut
    for key in objects:
        after = interop.s3.head_object(Bucket=interop.bucket, Key=key)
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read() == raw[key]
        assert after["Metadata"]["owner"] == "payroll"
        assert not {"x-amz-key", "x-amz-key-v2", "x-amz-iv", "x-amz-matdesc", "x-amz-3"} & set(after["Metadata"])
        for name in HEADERS:
            assert after[name] == before[key][name]
        tags = interop.s3.get_object_tagging(Bucket=interop.bucket, Key=key)["TagSet"]
        assert tags == [{"Key": "team", "Value": "payroll"}]


def test_python_s3ec_default_lookup_reads_everything(interop, cut):
    _, objects, *_ = cut
    keys = list(objects)
    results = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in keys], kms_key_id=interop.new_kms_key)
    expect_all(keys, results, objects)


def test_ruby_v2_default_settings_read_every_v2(interop, cut):
    _, objects, *_ = cut
    keys = [k for k, o in objects.items() if o["client"] != "python-v3"]  # Ruby 1.117 has no V3
    results = oracles.ruby_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in keys], kms_key_id=interop.new_kms_key)
    expect_all(keys, results, objects)


def test_go_default_load_strategy_reads_every_v2(interop, cut):
    _, objects, *_ = cut
    keys = [k for k, o in objects.items() if o["client"] != "python-v3"]  # Go v1 has no V3
    results = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "load_strategy": "default"} for k in keys],
                             kms_key_id=interop.new_kms_key)
    expect_all(keys, results, objects)


def test_rollback_lets_the_original_clients_read_with_the_old_keys(interop, cut):
    prefix, objects, raw, before = cut
    proc = run_cli(interop, "rollback", "--bucket", interop.bucket, "--prefix", prefix, "--remove-instruction-files",
                   "--report", "-", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["rolled_back"] == len(objects)
    for key in objects:
        assert interop.s3.head_object(Bucket=interop.bucket, Key=key)["Metadata"] == before[key]["Metadata"]
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read() == raw[key]
    ruby_reads, ruby_keys = [], []
    for key, o in objects.items():
        if o["client"].startswith("python"):
            continue
        read = {"bucket": interop.bucket, "key": key, "client": o["client"]}
        if o["kind"] == "aes":
            read["aes_key"] = interop.aes_key
        elif o["kind"] == "rsa":
            read["rsa_private_pem"] = interop.rsa_private_pem
        else:
            read["kms_key_id"] = interop.old_kms_key
        ruby_reads.append(read)
        ruby_keys.append(key)
    expect_all(ruby_keys, oracles.ruby_get(interop.endpoint, ruby_reads), objects)
    py_keys = [k for k, o in objects.items() if o["client"].startswith("python")]
    py = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in py_keys], kms_key_id=interop.old_kms_key)
    expect_all(py_keys, py, objects)
