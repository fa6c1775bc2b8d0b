"""The re-wrap against the real AWS S3 Encryption Clients, over HTTP on a moto server.

Objects are written by Ruby's V1/V2 clients and the official Python S3EC (every wrap they have,
envelopes in metadata and in instruction files, awkward sizes and key names), migrated by
``keymigration run`` in a separate process, and then read with ONLY the new KMS key by Ruby
``EncryptionV2::Client`` (instruction_file_suffix), Go ``s3crypto`` (S3LoadStrategy) and, where it
reads instruction files, the Python S3EC.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_bytes

from . import oracles

SIZES = [0, 1, 15, 16, 17, 1024 * 1024 + 3]
NAMES = ["plain name", "dir/naïve ünï €", "a+b=c", "100% done"]
RUBY_KINDS = [
    ("v1", "aes", "metadata"),
    ("v1", "aes", "instruction_file"),
    ("v1", "rsa", "metadata"),
    ("v1", "rsa", "instruction_file"),
    ("v1", "kms", "metadata"),
    ("v2", "aes", "metadata"),
    ("v2", "aes", "instruction_file"),
    ("v2", "rsa", "metadata"),
    ("v2", "rsa", "instruction_file"),
    ("v2", "kms", "metadata"),
    ("v2", "kms", "instruction_file"),
]


def body_for(n: int, size: int) -> bytes:
    return (f"object {n} ".encode() * (size // 8 + 2))[:size]


@pytest.fixture(scope="module")
def corpus(interop, needs_ruby, tmp_path_factory):
    """Write the corpus with the real clients; return {key: (plaintext, writer, location)}."""
    prefix = "rewrap/"
    objects: dict[str, tuple[bytes, str, str]] = {}
    ruby_items = []
    n = 0
    for client, kind, location in RUBY_KINDS:
        for size in SIZES:
            key = f"{prefix}ruby-{client}-{kind}-{location}/{NAMES[n % len(NAMES)]} {size}"
            body = body_for(n, size)
            item = {"bucket": interop.bucket, "key": key, "body": body, "client": client, "envelope_location": location}
            item.update(
                {"aes": {"aes_key": interop.aes_key}, "rsa": {"rsa_private_pem": interop.rsa_private_pem},
                 "kms": {"kms_key_id": interop.old_kms_key}}[kind]
            )
            ruby_items.append(item)
            objects[key] = (body, f"ruby-{client}-{kind}", location)
            n += 1
    oracles.ruby_put(interop.endpoint, ruby_items)
    py_items = []
    for fmt in ("v2", "v3"):
        for size in SIZES:
            key = f"{prefix}python-{fmt}/{NAMES[n % len(NAMES)]} {size}"
            body = body_for(n, size)
            py_items.append({"bucket": interop.bucket, "key": key, "body": body, "kms_key_id": interop.old_kms_key, "format": fmt})
            objects[key] = (body, f"python-{fmt}", "metadata")
            n += 1
    oracles.py_s3ec_put(interop.endpoint, py_items)
    return prefix, objects


def run_cli(interop, *args, env_extra=None):
    env = {**os.environ, **interop.server.env(), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "keymigration.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def migrated(interop, corpus, key_files, tmp_path_factory):
    prefix, objects = corpus
    before = {k: interop.s3.head_object(Bucket=interop.bucket, Key=k) for k in objects}
    bodies = {k: interop.s3.get_object(Bucket=interop.bucket, Key=k)["Body"].read() for k in objects}
    report = tmp_path_factory.mktemp("report") / "report.jsonl"
    aes, rsa = key_files
    proc = run_cli(
        interop, "run", "--bucket", interop.bucket, "--prefix", prefix,
        "--source-key", str(aes), "--source-key", str(rsa), "--source-kms-key-id", interop.old_kms_key,
        "--kms-key-id", interop.new_kms_key, "--verify", "body", "--report", str(report), "--progress", "none",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    return prefix, objects, before, bodies, lines


def test_every_object_migrated(migrated):
    _, objects, _, _, lines = migrated
    per_key = {line["key"]: line for line in lines if "key" in line}
    assert set(per_key) == set(objects)
    assert all(line["outcome"] == "migrated" for line in per_key.values()), [l for l in per_key.values() if l["outcome"] != "migrated"]
    summary = lines[-1]["summary"]
    assert summary["migrated"] == len(objects) and summary["failed"] == 0


def test_objects_unchanged(interop, migrated):
    _, objects, before, bodies, _ = migrated
    for key in objects:
        head = interop.s3.head_object(Bucket=interop.bucket, Key=key)
        assert (head["ETag"], head["Metadata"], head["LastModified"]) == (before[key]["ETag"], before[key]["Metadata"], before[key]["LastModified"])
        assert interop.s3.get_object(Bucket=interop.bucket, Key=key)["Body"].read() == bodies[key]


def test_ruby_reads_with_only_the_kms_key(interop, migrated):
    _, objects, *_ = migrated
    keys = [k for k, (_, writer, _) in objects.items() if writer != "python-v3"]  # Ruby 1.117 has no V3
    results = oracles.ruby_get(
        interop.endpoint,
        [{"bucket": interop.bucket, "key": k, "suffix": ".instruction"} for k in keys],
        kms_key_id=interop.new_kms_key,
    )
    failures = {k: r for k, r in zip(keys, results) if r != objects[k][0]}
    assert not failures, {k: (r if isinstance(r, str) else "wrong bytes") for k, r in failures.items()}


def test_ruby_does_not_read_them_with_the_old_kms_key(interop, migrated):
    """Proves the readers above used the new envelope, not the old one (Ruby falls back silently)."""
    _, objects, *_ = migrated
    keys = [k for k, (_, writer, loc) in objects.items() if writer == "ruby-v2-kms" and loc == "instruction_file"]
    results = oracles.ruby_get(
        interop.endpoint, [{"bucket": interop.bucket, "key": k, "suffix": ".instruction"} for k in keys],
        kms_key_id=interop.old_kms_key,
    )
    assert all(isinstance(r, str) for r in results)


def test_go_reads_with_only_the_kms_key(interop, migrated, needs_go):
    _, objects, *_ = migrated
    keys = [k for k, (_, writer, _) in objects.items() if writer != "python-v3"]  # Go v1 has no V3
    results = oracles.go_get(
        interop.endpoint,
        [{"bucket": interop.bucket, "key": k, "load_strategy": "instruction_file", "suffix": ".instruction"} for k in keys],
        kms_key_id=interop.new_kms_key,
    )
    failures = {k: r for k, r in zip(keys, results) if r != objects[k][0]}
    assert not failures, {k: (r if isinstance(r, str) else "wrong bytes") for k, r in failures.items()}


def test_python_s3ec_reads_replaced_instruction_files(interop, migrated):
    """Python v4 reads an instruction file only when the metadata holds no envelope: the
    objects Ruby wrote in instruction-file mode, whose file was replaced in place."""
    _, objects, *_ = migrated
    keys = [k for k, (_, _, location) in objects.items() if location == "instruction_file"]
    results = oracles.py_s3ec_get(
        interop.endpoint, [{"bucket": interop.bucket, "key": k, "suffix": None} for k in keys], kms_key_id=interop.new_kms_key
    )
    failures = {k: r for k, r in zip(keys, results) if r != objects[k][0]}
    assert not failures, failures


def test_keymigration_verify_reads_everything_including_v3(interop, migrated):
    prefix, objects, *_ = migrated
    proc = run_cli(
        interop, "verify", "--bucket", interop.bucket, "--prefix", prefix, "--kms-key-id", interop.new_kms_key,
        "--report", "-", "--progress", "none",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    readable = {line["key"] for line in lines if line.get("outcome") == "verified"}
    assert readable == set(objects)


def test_rerun_writes_nothing_and_calls_no_kms(interop, migrated, key_files):
    prefix, objects, *_ = migrated
    files = {o["Key"]: o["ETag"] for o in interop.s3.list_objects_v2(Bucket=interop.bucket, Prefix=prefix)["Contents"]}
    aes, rsa = key_files
    proc = run_cli(
        interop, "run", "--bucket", interop.bucket, "--prefix", prefix, "--source-key", str(aes), "--source-key", str(rsa),
        "--source-kms-key-id", interop.old_kms_key, "--kms-key-id", interop.new_kms_key, "--report", "-", "--progress", "none",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["skipped"] == len(objects) and summary["migrated"] == 0
    assert set(summary["kms_requests"]) <= {"describe_key"}
    after = {o["Key"]: o["ETag"] for o in interop.s3.list_objects_v2(Bucket=interop.bucket, Prefix=prefix)["Contents"]}
    assert after == files


def test_custom_suffix_read_by_ruby_and_go(interop, needs_ruby, needs_go, key_files):
    prefix = "custom-suffix/"
    items = [
        {"bucket": interop.bucket, "key": f"{prefix}v1-aes", "body": b"one", "client": "v1", "aes_key": interop.aes_key},
        {"bucket": interop.bucket, "key": f"{prefix}v2-rsa", "body": b"two", "client": "v2", "rsa_private_pem": interop.rsa_private_pem},
    ]
    oracles.ruby_put(interop.endpoint, items)
    aes, rsa = key_files
    proc = run_cli(
        interop, "run", "--bucket", interop.bucket, "--prefix", prefix, "--source-key", str(aes), "--source-key", str(rsa),
        "--kms-key-id", interop.new_kms_key, "--suffix", ".rewrapped", "--progress", "none",
    )
    assert proc.returncode == 0, proc.stderr
    reads = [{"bucket": interop.bucket, "key": i["key"], "suffix": ".rewrapped"} for i in items]
    assert oracles.ruby_get(interop.endpoint, reads, kms_key_id=interop.new_kms_key) == [b"one", b"two"]
    go_reads = [{**r, "load_strategy": "instruction_file"} for r in reads]
    assert oracles.go_get(interop.endpoint, go_reads, kms_key_id=interop.new_kms_key) == [b"one", b"two"]


# -- the project's own writer (demo, tests, benchmark) against the real clients ---------------


def test_own_writer_is_read_by_the_real_clients(interop, needs_ruby, needs_go):
    aes = load_key_bytes(interop.aes_key, "aes")[0]
    rsa = load_key_bytes(interop.rsa_private_pem.encode(), "rsa")[0]
    cases = [
        ("v1", W.LEGACY, e.CBC, aes, "metadata"),
        ("v1", W.LEGACY, e.CBC, rsa, "metadata"),
        ("v1", W.LEGACY, e.CBC, aes, "instruction-file"),
        ("v2", W.AES_GCM, e.GCM, aes, "metadata"),
        ("v2", W.AES_GCM, e.GCM, aes, "instruction-file"),
        ("v2", W.RSA_OAEP_SHA1, e.GCM, rsa, "metadata"),
    ]
    ruby_reads = []
    expected = []
    for n, (fmt, wrap, cek, master, location) in enumerate(cases):
        key = f"own-writer/{n}"
        body = body_for(n, 100 + n)
        put_encrypted(interop.s3, interop.bucket, key, encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master), location)
        read = {"bucket": interop.bucket, "key": key}
        read["aes_key" if master is aes else "rsa_private_pem"] = interop.aes_key if master is aes else interop.rsa_private_pem
        ruby_reads.append(read)
        expected.append(body)
    assert oracles.ruby_get(interop.endpoint, ruby_reads) == expected

    kms_cases = [("v2", e.GCM), ("v2", e.CBC), ("v3", None)]
    py_reads, go_reads, kms_expected = [], [], []
    for n, (fmt, cek) in enumerate(kms_cases):
        key = f"own-writer/kms-{n}"
        body = body_for(n, 1000 + n)
        enc = encrypt_object(body, fmt=fmt, wrap=W.KMS_CONTEXT, cek_alg=cek, kms_client=interop.kms, kms_key_id=interop.new_kms_key)
        put_encrypted(interop.s3, interop.bucket, key, enc)
        py_reads.append({"bucket": interop.bucket, "key": key})
        kms_expected.append(body)
        if fmt == "v2":
            go_reads.append(({"bucket": interop.bucket, "key": key}, body))
    assert oracles.py_s3ec_get(interop.endpoint, py_reads, kms_key_id=interop.new_kms_key) == kms_expected
    assert oracles.go_get(interop.endpoint, [r for r, _ in go_reads], kms_key_id=interop.new_kms_key) == [b for _, b in go_reads]
