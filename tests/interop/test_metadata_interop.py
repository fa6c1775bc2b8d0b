"""Metadata mode against the real clients (#15 item 5): after `keymigration run --mode metadata`,
the Python S3EC v4, Ruby V1 and V2 and Go s3crypto read every object with their DEFAULT lookup and
only the new KMS key; an old instruction file is gone, so an explicit-file reader never gets the
old key's envelope; after `keymigration rollback` the original clients read with the old keys; and
a rotation to a third key with only KMS keys is read with only that key.

Settings the readers need beyond the KMS key (docs/cutover.md): V2 objects need a commitment
policy that allows non-committing decryption (Python v4: REQUIRE_ENCRYPT_ALLOW_DECRYPT), CBC
objects (every V1 original) the legacy unauthenticated modes (Python v4); Ruby V2 reads them
with `security_profile: :v2`, Ruby V1 and Go s3crypto (KMS context wrap and the CBC cipher
registered) as configured in the oracles. V3 objects are read by the Python S3EC v4 with its
defaults (REQUIRE_ENCRYPT_REQUIRE_DECRYPT, no legacy modes); Ruby 1.117 and Go v1 have no V3.
"""
from __future__ import annotations

import json

import pytest

from . import oracles
from .test_cutover_interop import HEADERS, expect_all, seed
from .test_rewrap_interop import run_cli

KINDS = [
    ("v1", "aes", "metadata"),
    ("v1", "rsa", "metadata"),
    ("v1", "kms", "metadata"),
    ("v1", "aes", "instruction_file"),
    ("v2", "aes", "metadata"),
    ("v2", "rsa", "metadata"),
    ("v2", "kms", "metadata"),
    ("v2", "rsa", "instruction_file"),
    ("v2", "kms", "instruction_file"),
]
ROTATION_KINDS = [("v1", "aes", "metadata"), ("v1", "kms", "metadata"), ("v2", "rsa", "instruction_file"), ("v2", "kms", "metadata")]
PREFIX = "metadata-mode/"


@pytest.fixture(scope="module")
def migrated(interop, needs_ruby, needs_go, key_files):
    objects = seed(interop, PREFIX, KINDS)
    s3 = interop.s3
    raw = {k: s3.get_object(Bucket=interop.bucket, Key=k)["Body"].read() for k in objects}
    before = {k: s3.head_object(Bucket=interop.bucket, Key=k) for k in objects}
    files = {k: s3.get_object(Bucket=interop.bucket, Key=k + ".instruction")["Body"].read()
             for k, o in objects.items() if o["location"] == "instruction_file"}
    aes, rsa = key_files
    keys = ["--source-key", str(aes), "--source-key", str(rsa), "--source-kms-key-id", interop.old_kms_key]
    plan = run_cli(interop, "plan", "--bucket", interop.bucket, "--prefix", PREFIX, "--mode", "metadata", *keys,
                   "--kms-key-id", interop.new_kms_key, "--progress", "none")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout.splitlines()[-1])["plan"]["reasons"] == {"planned:would-migrate-in-metadata": len(objects)}
    proc = run_cli(interop, "run", "--bucket", interop.bucket, "--prefix", PREFIX, "--mode", "metadata", *keys,
                   "--kms-key-id", interop.new_kms_key, "--report", "-", "--progress", "none")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["migrated"] == len(objects) and summary["failed"] == 0
    return objects, raw, before, files


def v2_keys(objects):
    return [k for k, o in objects.items() if o["client"] != "python-v3"]


def test_bodies_headers_tags_kept_and_old_instruction_files_gone(interop, migrated):
    objects, raw, before, files = migrated
    for key in objects:
        after = interop.s3.head_object(Bucket=interop.bucket, Key=key)
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read() == raw[key]
        assert after["Metadata"]["owner"] == "payroll"
        for name in HEADERS:
            assert after[name] == before[key][name]
        assert interop.s3.get_object_tagging(Bucket=interop.bucket, Key=key)["TagSet"] == [{"Key": "team", "Value": "payroll"}]
    listed = {o["Key"] for o in interop.s3.list_objects_v2(Bucket=interop.bucket, Prefix=PREFIX)["Contents"]}
    assert not [k for k in listed if k.endswith(".instruction")]
    for key, body in files.items():
        backup = interop.s3.get_object(Bucket=interop.bucket, Key=key + ".instruction.keymigration-backup")["Body"].read()
        assert backup == body


def test_python_s3ec_default_lookup_reads_everything(interop, migrated):
    objects, *_ = migrated
    v2 = v2_keys(objects)
    results = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in v2], kms_key_id=interop.new_kms_key)
    expect_all(v2, results, objects)
    v3 = [k for k in objects if k not in v2]  # V3: the Python S3EC's defaults, nothing else
    results = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "legacy": False,
                                                      "commitment_policy": "REQUIRE_ENCRYPT_REQUIRE_DECRYPT"} for k in v3],
                                  kms_key_id=interop.new_kms_key)
    expect_all(v3, results, objects)


@pytest.mark.parametrize("client,profile", [("v2", "v2"), ("v1", None)])
def test_ruby_default_settings_read_every_v2(interop, migrated, client, profile):
    objects, *_ = migrated
    keys = v2_keys(objects)
    items = [{"bucket": interop.bucket, "key": k, "client": client, **({"security_profile": profile} if profile else {})} for k in keys]
    expect_all(keys, oracles.ruby_get(interop.endpoint, items, kms_key_id=interop.new_kms_key), objects)


def test_go_default_load_strategy_reads_every_v2(interop, migrated):
    objects, *_ = migrated
    keys = v2_keys(objects)
    results = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "load_strategy": "default"} for k in keys],
                             kms_key_id=interop.new_kms_key)
    expect_all(keys, results, objects)


def test_explicit_instruction_file_readers_never_get_the_old_envelope(interop, migrated):
    """Ruby asked for .instruction: the file is gone, it falls back to the metadata (new key).
    Go's S3LoadStrategy reads only the file: it fails (the setting must be dropped), never
    decrypting with the old key's envelope."""
    objects, *_ = migrated
    keys = [k for k, o in objects.items() if o["location"] == "instruction_file"]
    ruby = oracles.ruby_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "suffix": ".instruction"} for k in keys],
                            kms_key_id=interop.new_kms_key)
    expect_all(keys, ruby, objects)
    go = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, "load_strategy": "instruction_file"} for k in keys],
                        kms_key_id=interop.new_kms_key)
    assert all(isinstance(r, str) and "NoSuchKey" in r for r in go), go


def test_rollback_lets_the_original_clients_read_with_the_old_keys(interop, migrated):
    objects, raw, before, files = migrated
    proc = run_cli(interop, "rollback", "--bucket", interop.bucket, "--prefix", PREFIX, "--report", "-", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["summary"]["rolled_back"] == len(objects)
    for key in objects:
        assert interop.s3.head_object(Bucket=interop.bucket, Key=key)["Metadata"] == before[key]["Metadata"]
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read() == raw[key]
    for key, body in files.items():
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key + ".instruction")["Body"].read() == body
    reads, ruby_keys = [], []
    for key, o in objects.items():
        if o["client"].startswith("python"):
            continue
        read = {"bucket": interop.bucket, "key": key, "client": o["client"]}
        read.update({"aes": {"aes_key": interop.aes_key}, "rsa": {"rsa_private_pem": interop.rsa_private_pem},
                     "kms": {"kms_key_id": interop.old_kms_key}}[o["kind"]])
        reads.append(read)
        ruby_keys.append(key)
    expect_all(ruby_keys, oracles.ruby_get(interop.endpoint, reads), objects)
    py_keys = [k for k, o in objects.items() if o["client"].startswith("python")]
    expect_all(py_keys, oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in py_keys],
                                            kms_key_id=interop.old_kms_key), objects)


@pytest.mark.parametrize("mode", ["metadata", "cutover", "instruction-file"])
def test_rotation_to_a_third_key_is_read_with_only_that_key(interop, needs_ruby, needs_go, key_files, mode):
    """Original -> new key (any mode) -> a third key with only --source-kms-key-id: the readers
    of the mode open every object with only the third key."""
    prefix = f"rotation-{mode}/"
    objects = seed(interop, prefix, ROTATION_KINDS)
    aes, rsa = key_files
    third = interop.kms.create_key(Description=f"third key {mode}")["KeyMetadata"]["Arn"]
    suffix = [] if mode != "instruction-file" else ["--suffix", ".kms"]
    for sources, target in ((["--source-key", str(aes), "--source-key", str(rsa), "--source-kms-key-id", interop.old_kms_key],
                             interop.new_kms_key), (["--source-kms-key-id", interop.new_kms_key], third)):
        proc = run_cli(interop, "run", "--bucket", interop.bucket, "--prefix", prefix, "--mode", mode, *suffix, *sources,
                       "--kms-key-id", target, "--report", "-", "--progress", "none")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
        assert summary["migrated"] == len(objects) and summary["failed"] == 0, summary
    lookup = {"suffix": ".kms"} if mode == "instruction-file" else {}
    keys = v2_keys(objects)
    ruby = oracles.ruby_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, **lookup} for k in keys], kms_key_id=third)
    expect_all(keys, ruby, objects)
    go_lookup = {"load_strategy": "instruction_file", "suffix": ".kms"} if mode == "instruction-file" else {"load_strategy": "default"}
    go = oracles.go_get(interop.endpoint, [{"bucket": interop.bucket, "key": k, **go_lookup} for k in keys], kms_key_id=third)
    expect_all(keys, go, objects)
    if mode != "instruction-file":  # the Python S3EC reads a custom suffix only when the metadata holds no envelope
        everything = list(objects)
        py = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in everything], kms_key_id=third)
        expect_all(everything, py, objects)
