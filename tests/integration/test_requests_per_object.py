"""Requests per object, counted as moto served them (a proxy in front of the server), for a
migration of 200 objects per mode; and the confirmation that replaces a HEAD per object: a
re-listing of the page just done (docs/performance.md#requests-per-object)."""
from __future__ import annotations

import os
from collections import Counter

import boto3
import pytest

from keymigration.aws.clients import ClientOptions
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.legacy_writer import encrypt_object
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate.checkpoint import Checkpoint
from keymigration.migrate.reader import read_object
from keymigration.migrate.report import ReportWriter
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.runner import Migration, RunOptions
from keymigration.migrate.sources import ListingSource
from keymigration.migrate.worker import PrefixWorker, WorkerOptions
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import FAKE_CREDENTIALS, REGION

N = 200


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "old.aes"
    path.write_bytes(os.urandom(32))
    return path


@pytest.fixture
def proxy(moto_server, monkeypatch):
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    proxy = FaultProxy(moto_server.endpoint).start()
    yield proxy
    proxy.stop()


def seed(aws, key_file, count=N, prefix="data/") -> dict[str, bytes]:
    """Objects with their envelope in metadata: V1 AES/CBC and V2 AES/GCM, alternating."""
    master, = load_key_files([str(key_file)])
    bodies = {}
    for i in range(count):
        fmt, wrap, cek = (("v1", W.LEGACY, e.CBC), ("v2", W.AES_GCM, e.GCM))[i % 2]
        bodies[f"{prefix}{i:04d}"] = body = os.urandom(100 + i % 50)
        enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master)
        aws.s3.put_object(Bucket=aws.bucket, Key=f"{prefix}{i:04d}", Body=enc.body, Metadata=enc.fields)
    return bodies


def migrate(aws, proxy, key_file, mode, verify, **extra) -> dict:
    options = RunOptions(
        bucket=aws.bucket, prefix="data/", kms_key_id=aws.target_key, source_key_files=[str(key_file)], concurrency=8,
        verify=verify, mode=mode, progress="none", clients=ClientOptions(endpoint_url=proxy.endpoint, region=REGION), **extra,
    )
    return Migration(options).run().as_dict()


# (mode, --verify, ceiling of requests per object). The ceilings count everything a run of 200
# objects makes, the per-run requests too (DescribeKey, the bucket's ownership and Object Lock
# configuration, the listings). Buckets have ACLs disabled (BucketOwnerEnforced, S3's default
# for new buckets): with ACLs on, the cut-over and metadata modes read each object's ACL too.
CEILINGS = [
    ("instruction-file", "envelope", 4.05),  # HEAD, Encrypt, Decrypt, PUT; LIST and re-LIST
    ("instruction-file", "sample", 3.10),  # HEAD, Encrypt, PUT; a Decrypt for 1% (and the first)
    # HEAD, Encrypt, Decrypt, PUT .instruction (carrying the metadata backup), CopyObject
    ("cutover", "envelope", 5.05),
    ("metadata", "envelope", 5.05),  # HEAD, Encrypt, Decrypt, PUT backup, CopyObject
]


@pytest.mark.parametrize("mode,verify,ceiling", CEILINGS)
def test_requests_per_object(aws, proxy, key_file, mode, verify, ceiling):
    bodies = seed(aws, key_file)
    aws.s3.put_bucket_ownership_controls(
        Bucket=aws.bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    )
    proxy.log_requests = True
    # One re-listing per 1,000 objects (a run of 200: one), not one every 2 s of a slow run.
    summary = migrate(aws, proxy, key_file, mode, verify, confirm_interval=600)
    proxy.log_requests = False
    assert (summary["migrated"], summary["failed"]) == (N, 0), summary
    served = Counter(r.operation for r in proxy.requests)
    per_object = len(proxy.requests) / N
    print(f"\n{mode} --verify {verify}: {per_object:.3f} requests per object: {dict(served)}")
    assert per_object <= ceiling, dict(served)
    assert served["HeadObject"] == N  # the read; no HEAD to confirm, none after the copy
    assert served["GetObject"] == 0  # nothing this run wrote is read back
    assert served["ListObjectsV2"] <= 3  # the listing, the count for the ETA, the re-listing
    if mode == "cutover":  # the backups ride on the instruction files: one PUT per object
        assert served["PutObject"] == N, dict(served)
    kms, lookup = KmsKeys(aws.kms, aws.target_key), ".instruction" if mode == "instruction-file" else None
    for key in list(bodies)[:: N // 10]:
        assert read_object(Bucket(aws.s3, aws.bucket), kms, key, lookup) == bodies[key]


def overwrite_after_our_write(aws, client, key_file, victim: str) -> bytes:
    """Before our PUT of ``victim``'s instruction file goes out, someone replaces ``victim``
    (after our HEAD read it, before any re-listing). Returns the new object's body."""
    master, = load_key_files([str(key_file)])
    new_body = b"written by someone else during the migration"
    done = []

    def writer(params, **_):
        if params.get("Key") == victim + ".instruction" and not done:
            done.append(True)
            enc = encrypt_object(new_body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=master)
            aws.s3.put_object(Bucket=aws.bucket, Key=victim, Body=enc.body, Metadata=enc.fields)

    client.meta.events.register("before-parameter-build.s3.PutObject", writer)
    return new_body


def test_an_object_replaced_before_the_relisting_gets_no_file(aws, proxy, key_file, tmp_path):
    """No retries: the object ends object-changed and the file written for the old object is
    withdrawn; the re-listing (not a HEAD) found it."""
    seed(aws, key_file, 30)
    s3 = boto3.client("s3", endpoint_url=proxy.endpoint, region_name=REGION, aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    rewrapper = ObjectRewrapper(s3, kms, load_key_files([str(key_file)]), RewrapOptions(aws.bucket, run_id="r"))
    rewrapper.defer_confirmation = True
    overwrite_after_our_write(aws, s3, key_file, "data/0007")
    report = tmp_path / "report.jsonl"
    options = WorkerOptions(aws.bucket, "data/", concurrency=4, object_retries=0, count_total=False, confirm_interval=600)
    source = ListingSource(s3, aws.bucket, "data/", [".instruction"])
    proxy.log_requests = True
    writer = ReportWriter.open(str(report))
    summary = PrefixWorker(s3, rewrapper.process, options, Checkpoint(aws.bucket, "data/", ".instruction", aws.target_key),
                           report=writer, source=source).run()
    writer.close()
    assert (summary.counters.migrated, summary.counters.failed) == (29, 1)
    lines = [line for line in report.read_text().splitlines() if '"data/0007"' in line]
    assert len(lines) == 1 and '"object-changed"' in lines[0] and '"retryable": true' in lines[0]
    assert "data/0007.instruction" not in aws.keys("data/")
    assert sum(1 for r in proxy.requests if r.operation == "HeadObject") == 30  # the reads only
    assert sum(1 for r in proxy.requests if r.operation == "ListObjectsV2") == 2  # listing, re-listing


def test_an_object_replaced_before_the_relisting_is_migrated_again(aws, proxy, key_file, tmp_path):
    """With retries (the default): the retry reads the new object, migrates it and confirms it
    with a HEAD of its own; the file then opens the new object."""
    seed(aws, key_file, 30)
    options = RunOptions(
        bucket=aws.bucket, prefix="data/", kms_key_id=aws.target_key, source_key_files=[str(key_file)], concurrency=4,
        progress="none", report=str(tmp_path / "report.jsonl"), clients=ClientOptions(endpoint_url=proxy.endpoint, region=REGION),
    )
    migration = Migration(options)
    new_body = overwrite_after_our_write(aws, migration.s3, key_file, "data/0012")
    proxy.log_requests = True
    summary = migration.run().as_dict()
    assert (summary["migrated"], summary["failed"]) == (30, 0), summary
    heads = [r for r in proxy.requests if r.operation == "HeadObject"]
    assert len(heads) == 32  # 30 reads; the retry's read and its confirming HEAD
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "data/0012", ".instruction") == new_body


def test_verify_sample_checks_every_envelope_and_sends_a_share_to_kms(aws, key_file):
    seed(aws, key_file, 12)
    keys = load_key_files([str(key_file)])
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    never = ObjectRewrapper(aws.s3, kms, keys, RewrapOptions(aws.bucket, verify="sample", sample_rate=0.0))
    assert [never.process(f"data/{i:04d}").reason for i in range(6)] == ["migrated"] * 6
    assert kms.calls["decrypt"] == 1  # the first object only
    always = ObjectRewrapper(aws.s3, kms, keys, RewrapOptions(aws.bucket, verify="sample", sample_rate=1.0))
    assert [always.process(f"data/{i:04d}").reason for i in range(6, 12)] == ["migrated"] * 6
    assert kms.calls["decrypt"] == 7


def test_verify_sample_refuses_an_envelope_not_under_the_target_key(aws, key_file, monkeypatch):
    """The local check of every envelope: a wrap KMS answered for another key is never written,
    even for an object the sample does not send to KMS."""
    seed(aws, key_file, 3)
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    worker = ObjectRewrapper(aws.s3, kms, load_key_files([str(key_file)]), RewrapOptions(aws.bucket, verify="sample", sample_rate=0.0))
    assert worker.process("data/0000").reason == "migrated"  # the first: KMS opens it
    other = aws.new_kms_key()
    real_encrypt = kms.encrypt

    def elsewhere(data_key, envelope):
        wrapped = real_encrypt(data_key, envelope)
        return type(wrapped)(wrapped.encrypted_key, wrapped.context, other)

    monkeypatch.setattr(kms, "encrypt", elsewhere)
    result = worker.process("data/0001")
    assert (result.outcome.value, result.reason) == ("failed", "verify-failed"), result
    assert "data/0001.instruction" not in aws.keys("data/")
