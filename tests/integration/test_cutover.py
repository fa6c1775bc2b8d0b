"""Cut-over, rollback and pruning on a moto server: what is kept, what is refused, races."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.errors import PreconditionFailed
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.migrate.cutover import envelope_in_metadata
from keymigration.migrate.reader import read_object
from keymigration.migrate.results import Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.rollback import Prune, Rollback, RollbackOptions
from tests.support.fault_proxy import FaultProxy
from tests.unit.keys import aes, rsa_key

AES = aes(label="aes-master")
RSA = rsa_key(0, label="rsa-master")
HEADERS = dict(
    ContentType="application/x-custom",
    ContentEncoding="identity",
    ContentDisposition='attachment; filename="x.bin"',
    ContentLanguage="de",
    CacheControl="max-age=60",
    WebsiteRedirectLocation="/elsewhere",
)


def cutover(aws, s3=None, verify="envelope", dry_run=False, keys=(AES, RSA)):
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    return ObjectRewrapper(s3 or aws.s3, kms, keys, RewrapOptions(aws.bucket, verify=verify, dry_run=dry_run, run_id="r1", mode="cutover"))


def put_with_headers(aws, key, fmt="v2", wrap=W.AES_GCM, cek=e.GCM, master=AES, size=300, **extra):
    body = os.urandom(size)
    enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master, kms_client=aws.kms, kms_key_id=extra.pop("kms_key_id", None))
    params = {**HEADERS, **extra}
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=enc.body, Metadata={**enc.fields, "owner": "team-a", "x-custom": "kept"},
                      Tagging="project=blue&tier=gold", **params)
    return body, enc


def metadata_backup(aws, key, step=1):
    """The backup record of what a cut-over took out of the object's metadata: carried by the
    object's instruction file (the cut-over's default), else in ``<key>.keymigration-backup``."""
    from keymigration.aws.s3 import StoredFile
    from keymigration.formats.vocabulary import backup_name
    from keymigration.migrate.cutover import file_backup, read_backup_record

    bucket = Bucket(aws.s3, aws.bucket)
    stored = bucket.get_small(backup_name(key, step))
    if stored is None:
        carrier = bucket.get_small(key + ".instruction")
        stored = file_backup(carrier) if carrier is not None else None
    return read_backup_record(stored.body) if isinstance(stored, StoredFile) else None


def default_read(aws, key):
    return read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), key, None)


@pytest.mark.parametrize("fmt,wrap,cek,master", [("v1", W.LEGACY, e.CBC, AES), ("v2", W.AES_GCM, e.GCM, AES),
                                                  ("v2", W.RSA_OAEP_SHA1, e.GCM, RSA), ("v3", W.AES_GCM, None, AES)])
def test_cut_over_keeps_everything_but_the_envelope(aws, fmt, wrap, cek, master):
    body, enc = put_with_headers(aws, "k", fmt, wrap, cek, master)
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    raw = aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read()
    result = cutover(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "cut-over"), result
    after = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read() == raw
    assert not envelope_in_metadata(after["Metadata"])
    kept = {k: v for k, v in before["Metadata"].items() if k not in envelope_in_metadata(before["Metadata"])}
    mark = after["Metadata"].pop("keymigration-copy")  # only this copy writes it (docs/cutover.md)
    assert len(mark) == 32 and int(mark, 16) >= 0
    assert after["Metadata"] == kept and after["Metadata"]["owner"] == "team-a"
    if fmt == "v3":
        assert {"x-amz-c", "x-amz-d", "x-amz-i"} <= set(after["Metadata"])
    for name in HEADERS:
        assert after.get(name) == before.get(name), name
    tags = aws.s3.get_object_tagging(Bucket=aws.bucket, Key="k")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("project", "blue"), ("tier", "gold")]
    assert default_read(aws, "k") == body  # a default-lookup reader finds the KMS envelope
    # The old envelope is kept, on the instruction file the cut-over wrote (no extra PUT).
    assert "k.keymigration-backup" not in aws.keys()
    assert metadata_backup(aws, "k")["envelope"] == {k: v for k, v in before["Metadata"].items() if k in e.REPLACEABLE_KEYS}
    assert metadata_backup(aws, "k")["copy"] == mark


def test_cut_over_is_idempotent_and_resumes_after_instruction_file_mode(aws):
    body, _ = put_with_headers(aws, "k")
    plain = ObjectRewrapper(aws.s3, KmsKeys(aws.kms, aws.target_key), [AES], RewrapOptions(aws.bucket))
    plain.kms.describe_target()
    assert plain.process("k").reason == "migrated"  # an earlier instruction-file-mode migration
    worker = cutover(aws)
    assert worker.process("k").reason == "cut-over"
    assert set(worker.kms.calls) <= {"describe_key", "re_encrypt"}  # the file was only re-checked
    again = cutover(aws).process("k")
    assert (again.outcome, again.reason) == (Outcome.SKIPPED, "already-migrated")
    assert default_read(aws, "k") == body


def test_storage_class_sse_and_lock_are_kept(aws):
    locked = f"{aws.bucket}-lock"
    aws.s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    until = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    body = b"x" * 100
    enc = encrypt_object(body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    aws.s3.put_object(Bucket=locked, Key="k", Body=enc.body, Metadata=enc.fields, StorageClass="STANDARD_IA",
                      ServerSideEncryption="AES256", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    result = ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(locked, mode="cutover")).process("k")
    assert result.reason == "cut-over", result
    head = aws.s3.head_object(Bucket=locked, Key="k")
    assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] == until


def lock_bucket_with_object(aws, key="k"):
    locked = f"{aws.bucket}-lock"
    aws.s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    until = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    enc = encrypt_object(b"x" * 100, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    aws.s3.put_object(Bucket=locked, Key=key, Body=enc.body, Metadata=enc.fields, ObjectLockMode="GOVERNANCE",
                      ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON")
    return locked, until


def head_without_lock_headers(moto_server, deny_lock_reads: bool):
    """A proxy answering HEAD like S3 does to a role without s3:GetObjectRetention and
    s3:GetObjectLegalHold: no x-amz-object-lock-* headers (and no error). With
    ``deny_lock_reads``, GetObjectRetention/GetObjectLegalHold are denied too (403)."""
    import boto3

    proxy = FaultProxy(moto_server.endpoint).start()

    def hide(method, path, headers):
        return [(k, v) for k, v in headers if not (method == "HEAD" and k.lower().startswith("x-amz-object-lock-"))]

    def deny(method, path, headers, body):
        query = path.partition("?")[2]
        return "s3-access-denied" if deny_lock_reads and method == "GET" and ("retention" in query or "legal-hold" in query) else None

    proxy.response_filter, proxy.rule = hide, deny
    s3 = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return proxy, s3


@pytest.mark.parametrize("mode", ["cutover", "metadata"])
def test_object_lock_is_asked_for_explicitly_and_kept(aws, moto_server, mode):
    """HEAD hides retention and legal hold from a role without s3:GetObjectRetention /
    s3:GetObjectLegalHold; a copy made from HEAD alone left the new version unlocked."""
    locked, until = lock_bucket_with_object(aws)
    proxy, s3 = head_without_lock_headers(moto_server, deny_lock_reads=False)
    try:
        kms = KmsKeys(aws.kms, aws.target_key)
        kms.describe_target()
        result = ObjectRewrapper(s3, kms, [AES], RewrapOptions(locked, mode=mode)).process("k")
    finally:
        proxy.stop()
    assert result.outcome is Outcome.MIGRATED, result
    head = aws.s3.head_object(Bucket=locked, Key="k")
    assert not envelope_in_metadata(head["Metadata"]) or mode == "metadata"
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("GOVERNANCE", until)
    assert head["ObjectLockLegalHoldStatus"] == "ON"


@pytest.mark.parametrize("mode", ["cutover", "metadata"])
def test_object_lock_that_cannot_be_read_is_refused(aws, moto_server, mode):
    locked, _ = lock_bucket_with_object(aws)
    before = aws.s3.head_object(Bucket=locked, Key="k")
    proxy, s3 = head_without_lock_headers(moto_server, deny_lock_reads=True)
    try:
        kms = KmsKeys(aws.kms, aws.target_key)
        kms.describe_target()
        worker = ObjectRewrapper(s3, kms, [AES], RewrapOptions(locked, mode=mode))
        plan = ObjectRewrapper(s3, kms, [AES], RewrapOptions(locked, mode=mode, dry_run=True)).process("k")
        result = worker.process("k")
    finally:
        proxy.stop()
    assert (plan.outcome, plan.reason) == (Outcome.FAILED, "object-lock-unreadable")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "object-lock-unreadable"), result
    after = aws.s3.head_object(Bucket=locked, Key="k")
    assert (after["ETag"], after["VersionId"], after["Metadata"]) == (before["ETag"], before["VersionId"], before["Metadata"])
    names = [o["Key"] for o in aws.s3.list_objects_v2(Bucket=locked).get("Contents", [])]
    assert not [n for n in names if "keymigration-backup" in n]


def test_versioned_bucket_keeps_the_old_envelope_in_the_previous_version(aws):
    aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    body, _ = put_with_headers(aws, "k")
    assert cutover(aws).process("k").reason == "cut-over"
    versions = aws.s3.list_object_versions(Bucket=aws.bucket, Prefix="k")["Versions"]
    of_object = [v for v in versions if v["Key"] == "k"]
    assert len(of_object) == 2
    old = next(v for v in of_object if not v["IsLatest"])
    assert envelope_in_metadata(aws.s3.head_object(Bucket=aws.bucket, Key="k", VersionId=old["VersionId"])["Metadata"])
    assert default_read(aws, "k") == body


def test_multipart_copy_for_large_objects(aws):
    body, _ = put_with_headers(aws, "big", size=12 * 1024 * 1024 + 5)
    raw = aws.s3.get_object(Bucket=aws.bucket, Key="big")["Body"].read()
    worker = cutover(aws)
    worker.rewriter = MetadataRewriter(worker.bucket, single_copy_limit=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    assert worker.process("big").reason == "cut-over"
    head = aws.s3.head_object(Bucket=aws.bucket, Key="big")
    assert head["ETag"].endswith('-3"')  # three parts, proving the multipart path ran
    assert aws.s3.get_object(Bucket=aws.bucket, Key="big")["Body"].read() == raw
    assert head["ContentType"] == HEADERS["ContentType"] and head["Metadata"]["owner"] == "team-a"
    tags = aws.s3.get_object_tagging(Bucket=aws.bucket, Key="big")["TagSet"]
    assert {t["Key"] for t in tags} == {"project", "tier"}
    assert default_read(aws, "big") == body


@pytest.mark.parametrize(
    "extra,reason",
    [({"StorageClass": "GLACIER"}, "archived"), ({"ACL": "public-read"}, "custom-acl")],
)
def test_refusals_change_nothing(aws, extra, reason):
    put_with_headers(aws, "k", **extra)
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    plan = cutover(aws, dry_run=True).process("k")
    assert (plan.outcome, plan.reason) == (Outcome.FAILED, reason)
    result = cutover(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, reason)
    after = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    assert after["ETag"] == before["ETag"] and after["Metadata"] == before["Metadata"]
    assert "k.keymigration-backup" not in aws.keys()
    # No copy, so no backup: the instruction file written for it carries none either, and once
    # the object is written again a rollback finds nothing of that step to restore.
    assert metadata_backup(aws, "k") is None
    put_with_headers(aws, "k", **extra)
    assert Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k").reason == "nothing-to-roll-back"


def test_dry_run_plans_the_cut_over(aws):
    put_with_headers(aws, "k")
    before = aws.keys()
    result = cutover(aws, dry_run=True).process("k")
    assert (result.outcome, result.reason) == (Outcome.PLANNED, "would-migrate-and-cut-over")
    assert aws.keys() == before


def racing_proxy(aws, moto_server, new_enc):
    """A proxy enforcing CopySourceIfMatch like S3, whose rule lets a writer replace "k" right
    before our first CopyObject; returns (proxy, an S3 client through it, the copy sources seen)."""
    import boto3

    proxy = FaultProxy(moto_server.endpoint).start()
    proxy.enforce_copy_source_if_match = True
    sources: list[str] = []

    def writer(method, path, headers, body):
        lowered = {k.lower(): v for k, v in headers.items()}
        if method == "PUT" and "x-amz-copy-source" in lowered and not sources:
            sources.append(lowered["x-amz-copy-source"])
            aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=new_enc.body, Metadata=new_enc.fields)
        return None

    proxy.rule = writer
    s3 = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return proxy, s3, sources


def test_concurrent_write_between_read_and_copy_is_never_clobbered(aws, moto_server):
    """moto ignores CopySourceIfMatch (moto-fidelity.md), so a proxy on 127.0.0.1 enforces it
    like S3 does; a writer replaces the object right before our CopyObject."""
    put_with_headers(aws, "k")
    new_body = b"the concurrent writer's content"
    new_enc = encrypt_object(new_body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    proxy, s3, raced = racing_proxy(aws, moto_server, new_enc)
    try:
        worker = cutover(aws, s3=s3)
        first = worker.process("k")
        assert raced and proxy.stats["copy-source-if-match-412"] == 1
        assert (first.outcome, first.reason, first.retryable) == (Outcome.FAILED, "object-changed", True)
        stored = aws.s3.get_object(Bucket=aws.bucket, Key="k")
        assert stored["Body"].read() == new_enc.body  # the writer's object stands untouched
        assert envelope_in_metadata(stored["Metadata"])
        retry = worker.process("k")  # the worker retries: the new object is migrated and cut over
    finally:
        proxy.stop()
    assert retry.reason == "cut-over", retry
    assert default_read(aws, "k") == new_body


def test_rollback_restores_old_envelopes_then_prune(aws):
    bodies = {}
    for key, location in (("meta", "metadata"), ("file", "instruction-file")):
        bodies[key] = os.urandom(200)
        put_encrypted(aws.s3, aws.bucket, key, encrypt_object(bodies[key], fmt="v1", wrap=W.LEGACY, master=AES), location)
    originals = {k: (aws.s3.head_object(Bucket=aws.bucket, Key=k)["Metadata"]) for k in bodies}
    old_file = aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read()
    worker = cutover(aws)
    assert {worker.process(k).reason for k in bodies} <= {"cut-over", "migrated"}
    assert default_read(aws, "meta") == bodies["meta"] and default_read(aws, "file") == bodies["file"]

    planned = Rollback(aws.s3, RollbackOptions(aws.bucket, dry_run=True)).process("meta")
    assert planned.outcome is Outcome.PLANNED
    rollback = Rollback(aws.s3, RollbackOptions(aws.bucket, remove_instruction_files=True))
    assert [rollback.process(k).outcome for k in bodies] == [Outcome.ROLLED_BACK, Outcome.ROLLED_BACK]
    assert aws.s3.head_object(Bucket=aws.bucket, Key="meta")["Metadata"] == originals["meta"]
    assert aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read() == old_file
    assert "meta.instruction" not in aws.keys()  # removed as asked; the old envelope is back
    # The old key reads both again, the way an old reader would.
    from keymigration.formats.content import decrypt_stream
    from keymigration.formats.unwrap import unwrap_data_key

    for key in bodies:
        metadata = aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"]
        env = e.from_metadata(metadata) if e.detect(metadata) is e.MetadataKind.ENVELOPE else e.from_instruction_file(
            aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")["Body"].read(), metadata)
        dk = unwrap_data_key(env, [AES]).data_key
        raw = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
        assert b"".join(decrypt_stream(env, dk, [raw])) == bodies[key]
    again = rollback.process("meta")
    assert again.outcome is Outcome.SKIPPED  # nothing left to roll back
    # The undone step's backups are live again, so they went with the step.
    assert not [k for k in aws.keys() if "keymigration-backup" in k]

    # Prune keeps the backups of an object a reader cannot open with the target key (here: the
    # old envelope is in its metadata again, as when a cut-over stopped after its backup), and
    # deletes them once it can.
    assert cutover(aws).process("meta").reason == "cut-over"
    prune = Prune(aws.s3, KmsKeys(aws.kms, aws.target_key), aws.bucket, confirm=True)
    aws.s3.copy_object(Bucket=aws.bucket, Key="meta", CopySource={"Bucket": aws.bucket, "Key": "meta"},
                       Metadata=originals["meta"], MetadataDirective="REPLACE")
    assert prune.process("meta").reason == "not-migrated"
    assert metadata_backup(aws, "meta") is not None  # (on meta.instruction)
    assert cutover(aws).process("meta").reason == "cut-over"  # (the same backup, taken over)
    assert "meta.keymigration-backup" not in aws.keys()
    assert Prune(aws.s3, KmsKeys(aws.kms, aws.target_key), aws.bucket, confirm=False).process("meta").reason == "would-prune"
    pruned = prune.process("meta")
    assert (pruned.reason, pruned.message) == ("pruned", "1 backups of 1 migration steps")
    assert "meta.keymigration-backup" not in aws.keys() and metadata_backup(aws, "meta") is None
    assert default_read(aws, "meta") == bodies["meta"]  # the file's bytes unchanged, its backup gone
    assert rollback.process("meta").reason == "nothing-to-roll-back"


@pytest.mark.parametrize("versioned", [False, True])
def test_concurrent_write_is_caught_in_versioned_buckets_too(aws, moto_server, versioned):
    """The copy's source is the current object (never a pinned version, whose ETag never
    changes), so CopySourceIfMatch catches a writer in a versioned bucket as well."""
    if versioned:
        aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    put_with_headers(aws, "k")
    new_enc = encrypt_object(b"newer", fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    proxy, s3, sent = racing_proxy(aws, moto_server, new_enc)
    try:
        first = cutover(aws, s3=s3).process("k")
    finally:
        proxy.stop()
    assert "versionId" not in sent[0]
    assert first.reason == "object-changed"
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read() == new_enc.body
    assert "k.keymigration-backup" not in aws.keys()  # taken back: it described the old object
    assert "k.instruction" not in aws.keys()  # the file written for the old object is withdrawn


def test_a_lost_copy_response_is_recognised_as_our_copy(aws, monkeypatch):
    body, _ = put_with_headers(aws, "k")
    worker = cutover(aws)
    real = worker.rewriter.rewrite

    def lost(key, *args):
        real(key, *args)  # the copy lands...
        raise PreconditionFailed(key)  # ...and the SDK's retry answers 412

    monkeypatch.setattr(worker.rewriter, "rewrite", lost)
    result = worker.process("k")
    assert result.reason == "cut-over", result
    assert metadata_backup(aws, "k") is not None  # the backup is kept
    assert default_read(aws, "k") == body


def test_rollback_plans_restores_once_and_refuses_what_others_wrote(aws):
    """Each rollback step on its own: a planned restore writes nothing, a restored file is not
    restored twice, and neither a foreign instruction file nor a metadata envelope that differs
    from the backup is ever replaced."""
    for key, location in (("meta", "metadata"), ("file", "instruction-file"), ("file2", "instruction-file")):
        put_encrypted(aws.s3, aws.bucket, key, encrypt_object(os.urandom(100), fmt="v1", wrap=W.LEGACY, master=AES), location)
    old_file = aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read()
    worker = cutover(aws)
    assert [worker.process(k).reason for k in ("meta", "file", "file2")] == ["cut-over", "migrated", "migrated"]
    ours = aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read()

    planned = Rollback(aws.s3, RollbackOptions(aws.bucket, dry_run=True)).process("file")
    assert (planned.outcome, planned.reason) == (Outcome.PLANNED, "would-roll-back")
    assert planned.message == "step 1: instruction file .instruction restored"
    assert aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read() == ours
    assert "file.instruction.keymigration-backup" in aws.keys()
    rollback = Rollback(aws.s3, RollbackOptions(aws.bucket))
    done = rollback.process("file")
    assert (done.outcome, done.message) == (Outcome.ROLLED_BACK, "step 1: instruction file .instruction restored")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="file.instruction")["Body"].read() == old_file
    again = rollback.process("file")
    assert (again.outcome, again.reason) == (Outcome.SKIPPED, "nothing-to-roll-back")

    foreign = b'{"x-amz-key":"AAAA","x-amz-iv":"AAAAAAAAAAAAAAAAAAAAAA==","x-amz-matdesc":"{}"}'
    aws.s3.put_object(Bucket=aws.bucket, Key="file2.instruction", Body=foreign)
    refused = rollback.process("file2")
    assert (refused.outcome, refused.reason) == (Outcome.FAILED, "instruction-file-changed")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="file2.instruction")["Body"].read() == foreign
    assert "file2.instruction.keymigration-backup" in aws.keys()  # kept: nothing was undone

    head = aws.s3.head_object(Bucket=aws.bucket, Key="meta")
    other = encrypt_object(os.urandom(100), fmt="v1", wrap=W.LEGACY, master=AES).fields
    aws.s3.copy_object(Bucket=aws.bucket, Key="meta", CopySource={"Bucket": aws.bucket, "Key": "meta"},
                       Metadata={**head["Metadata"], **other}, MetadataDirective="REPLACE")
    before = aws.s3.head_object(Bucket=aws.bucket, Key="meta")
    changed = rollback.process("meta")
    assert (changed.outcome, changed.reason) == (Outcome.FAILED, "metadata-changed")
    assert aws.s3.head_object(Bucket=aws.bucket, Key="meta")["Metadata"] == before["Metadata"]


def test_rollback_refuses_an_object_replaced_after_the_cut_over(aws):
    put_with_headers(aws, "k")
    assert cutover(aws).process("k").reason == "cut-over"
    aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=b"a plaintext object now", Metadata={"owner": "team-a", "x-custom": "kept"})
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    result = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "object-replaced")
    after = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    assert after["Metadata"] == before["Metadata"] and after["ETag"] == before["ETag"]


def test_our_stale_file_is_never_backed_up_or_restored(aws):
    """Migrate, the object is replaced (new data key, envelope in metadata), migrate again: our
    file for the old object is replaced without a backup, and rollback never restores it."""
    put_with_headers(aws, "k")
    plain = ObjectRewrapper(aws.s3, KmsKeys(aws.kms, aws.target_key), [AES], RewrapOptions(aws.bucket))
    plain.kms.describe_target()
    assert plain.process("k").reason == "migrated"
    body, _ = put_with_headers(aws, "k")  # a new version of the object
    assert plain.process("k").reason == "migrated"
    assert not [k for k in aws.keys() if "keymigration-backup" in k]
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction") == body
    # The second migration is step 2 of the object's chain (its step-1 marks were on the stale
    # file): rolling it back removes the file it wrote and restores nothing in its place.
    result = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert (result.outcome, result.message) == (Outcome.ROLLED_BACK, "step 2: KMS instruction file .instruction removed")
    assert "k.instruction" not in aws.keys()
    assert e.detect(aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]) is e.MetadataKind.ENVELOPE  # old key reads it
    assert Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k").reason == "nothing-to-roll-back"


@pytest.mark.parametrize("mode", ["cutover", "metadata"])
def test_a_foreign_same_length_write_at_the_copy_is_never_taken_for_ours(aws, moto_server, mode):
    """#13 item 4: right at our copy, someone writes an object of the same length with exactly
    the user metadata our copy would leave (the envelope removed). moto ignores
    CopySourceIfMatch; the proxy enforces it, so our copy gets 412. Whether the copy is ours is
    decided by what only the copy writes (keymigration-copy), never by length and metadata."""
    import boto3

    put_with_headers(aws, "k")
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    lookalike = {k: v for k, v in before["Metadata"].items() if k not in envelope_in_metadata(before["Metadata"])}
    foreign_body = os.urandom(before["ContentLength"])
    proxy = FaultProxy(moto_server.endpoint).start()
    proxy.enforce_copy_source_if_match = True
    raced: list[str] = []

    def writer(method, path, headers, body):
        if method == "PUT" and "x-amz-copy-source" in {k.lower() for k in headers} and not raced:
            raced.append(path)
            aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=foreign_body, Metadata=lookalike, **HEADERS)
        return None

    proxy.rule = writer
    s3 = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    try:
        kms = KmsKeys(aws.kms, aws.target_key)
        kms.describe_target()
        result = ObjectRewrapper(s3, kms, [AES], RewrapOptions(aws.bucket, run_id="r1", mode=mode)).process("k")
    finally:
        proxy.stop()
    assert raced and proxy.stats["copy-source-if-match-412"] == 1
    assert (result.outcome, result.reason, result.retryable) == (Outcome.FAILED, "object-changed", True), result
    stored = aws.s3.get_object(Bucket=aws.bucket, Key="k")
    assert stored["Body"].read() == foreign_body and stored["Metadata"] == lookalike  # theirs, untouched
    assert aws.keys() == ["k"]  # our backup (and, cut-over, the file written for the old object) taken back
    after_rollback = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert after_rollback.reason == "nothing-to-roll-back"
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == lookalike


def test_a_backup_too_large_for_the_file_is_stored_on_its_own(aws):
    """S3 keeps 2 KB of user metadata per object: a metadata envelope whose backup record would
    not fit beside the instruction file's own marks goes to ``<key>.keymigration-backup`` as
    before, and rollback reads it from there."""
    body = os.urandom(100)
    matdesc = {"purpose": "x" * 900}  # part of the envelope that leaves the metadata
    master = aes(label="described", matdesc=matdesc)
    enc = encrypt_object(body, fmt="v1", wrap=W.LEGACY, master=master, matdesc=matdesc)
    aws.s3.put_object(Bucket=aws.bucket, Key="big", Body=enc.body, Metadata=enc.fields)
    original = aws.s3.head_object(Bucket=aws.bucket, Key="big")["Metadata"]
    assert cutover(aws, keys=(master,)).process("big").reason == "cut-over"
    assert "big.keymigration-backup" in aws.keys()
    assert "keymigration-metadata-backup" not in aws.s3.head_object(Bucket=aws.bucket, Key="big.instruction")["Metadata"]
    assert default_read(aws, "big") == body
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("big")
    assert undone.outcome is Outcome.ROLLED_BACK, undone
    assert aws.s3.head_object(Bucket=aws.bucket, Key="big")["Metadata"] == original
    assert "big.keymigration-backup" not in aws.keys()


def test_an_object_rewritten_since_its_file_gets_a_backup_object_too(aws):
    """The file's backup names the ETag of the object it was written for. The same bytes and
    metadata uploaded again in parts (another ETag) after a stopped cut-over: the cut-over then
    stores a backup object of its own, rollback undoes it from there, and the file's backup is
    dropped with it."""
    body, enc = put_with_headers(aws, "k")
    original = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    plain = cutover(aws)
    plain.cut_over = None  # stop after the instruction file (as a kill before the copy would)
    assert plain.process("k").reason == "migrated"
    carried = metadata_backup(aws, "k")
    raw = aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read()
    upload = aws.s3.create_multipart_upload(Bucket=aws.bucket, Key="k", Metadata=original)
    part = aws.s3.upload_part(Bucket=aws.bucket, Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=raw)
    aws.s3.complete_multipart_upload(Bucket=aws.bucket, Key="k", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["ETag"] != carried["etag"]

    assert cutover(aws).process("k").reason == "cut-over"
    own = metadata_backup(aws, "k")  # the backup object now
    assert "k.keymigration-backup" in aws.keys() and own["etag"] != carried["etag"] and own["copy"] != carried["copy"]
    assert default_read(aws, "k") == body
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert undone.outcome is Outcome.ROLLED_BACK, undone
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == original
    assert "k.keymigration-backup" not in aws.keys()
    assert "keymigration-metadata-backup" not in aws.s3.head_object(Bucket=aws.bucket, Key="k.instruction")["Metadata"]


def test_rollback_restores_a_replaced_file_that_carried_the_backup(aws):
    """The object had its envelope in metadata and someone's own ``.instruction`` beside it:
    the cut-over backs that file up and replaces it with the KMS file carrying the metadata
    backup. Rollback puts both back: the metadata from the carried record, then the original
    file byte for byte (which takes the carried backup with it)."""
    body, _ = put_with_headers(aws, "k")
    original = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    foreign = b'{"note": "not an envelope of ours"}'
    aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction", Body=foreign, Metadata={"x-amz-crypto-instr-file": ""})
    assert cutover(aws).process("k").reason == "cut-over"
    assert metadata_backup(aws, "k") is not None and "k.instruction.keymigration-backup" in aws.keys()
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert undone.outcome is Outcome.ROLLED_BACK, undone
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == original
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == foreign
    assert not [k for k in aws.keys() if "keymigration-backup" in k]
    assert Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k").reason == "nothing-to-roll-back"


@pytest.mark.parametrize("tampered", ["not base64!", "e30=", ""])
def test_a_carried_backup_that_does_not_parse_is_not_used(aws, tampered):
    """A file whose carried backup was altered (not base64, not a backup record, emptied): the
    cut-over does not take it for the backup and stores one of its own before the copy."""
    body, _ = put_with_headers(aws, "k")
    plain = cutover(aws)
    plain.cut_over = None
    assert plain.process("k").reason == "migrated"
    stored = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")
    metadata = {**stored["Metadata"], "keymigration-metadata-backup": tampered}
    aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction", Body=stored["Body"].read(), Metadata=metadata)
    assert cutover(aws).process("k").reason == "cut-over"
    assert "k.keymigration-backup" in aws.keys()
    assert default_read(aws, "k") == body
    assert Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k").outcome is Outcome.ROLLED_BACK


def upload_in_parts(aws, key, metadata):
    """The object's bytes uploaded again in one part: another ETag (a copy changes it too)."""
    raw = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    upload = aws.s3.create_multipart_upload(Bucket=aws.bucket, Key=key, Metadata=metadata)
    part = aws.s3.upload_part(Bucket=aws.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=raw)
    aws.s3.complete_multipart_upload(Bucket=aws.bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})


def test_a_copy_that_landed_but_reported_an_error_keeps_the_file_and_its_backup(aws):
    """Review finding: the copy of an object uploaded in parts lands (a new ETag) but the call
    ends in an error (a timeout, a 5xx). Nothing written for the object may be taken back then:
    the instruction file holds the only backup of the envelope the copy removed. Before the fix
    the confirmation saw the new ETag and withdrew the file: no envelope anywhere."""
    from keymigration.errors import S3Error

    body, _ = put_with_headers(aws, "k")
    original = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    upload_in_parts(aws, "k", original)
    worker = cutover(aws)
    real = worker.rewriter.rewrite

    def landed_then_error(*args, **kwargs):
        real(*args, **kwargs)
        raise S3Error("s3-InternalError", "S3 COPY failed: InternalError", retryable=True)

    worker.rewriter.rewrite = landed_then_error
    result = worker.process("k")
    assert (result.outcome, result.reason, result.retryable) == (Outcome.FAILED, "copy-unconfirmed", True)
    assert not envelope_in_metadata(aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"])  # the copy landed
    assert metadata_backup(aws, "k") is not None and default_read(aws, "k") == body
    again = cutover(aws).process("k")  # what the worker's retry does (same run)
    assert (again.outcome, again.reason, again.resumed) == (Outcome.MIGRATED, "migrated", True)
    assert sorted(aws.keys()) == ["k", "k.instruction"]
    assert Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k").outcome is Outcome.ROLLED_BACK
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == original


def test_a_copy_that_did_not_land_and_reported_an_error_is_finished_by_a_rerun(aws):
    from keymigration.errors import S3Error

    body, _ = put_with_headers(aws, "k")
    worker = cutover(aws)

    def error(*args, **kwargs):
        raise S3Error("s3-connection", "S3 COPY failed: ReadTimeoutError", retryable=True)

    worker.rewriter.rewrite = error
    assert worker.process("k").reason == "copy-unconfirmed"
    assert envelope_in_metadata(aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"])
    assert cutover(aws).process("k").reason == "cut-over"  # adopts the record its file carries
    assert "k.keymigration-backup" not in aws.keys() and default_read(aws, "k") == body


def test_rollback_uses_the_backup_whose_copy_the_object_carries(aws):
    """Review finding: step 1 in metadata mode left ``k.keymigration-backup``; the application
    then wrote the object again (old key, envelope in metadata), and a cut-over (step 1 again:
    metadata mode leaves no file of ours) carried its backup on its file. Rollback must restore
    from that record, not the backup object of the replaced object (it refused forever, and
    prune then deleted both)."""
    from tests.integration.test_metadata_mode import metadata_mode

    put_with_headers(aws, "k")
    assert metadata_mode(aws).process("k").outcome is Outcome.MIGRATED
    assert "k.keymigration-backup" in aws.keys()
    body, _ = put_with_headers(aws, "k")  # the application writes it again
    replaced = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    assert cutover(aws).process("k").reason == "cut-over"
    assert default_read(aws, "k") == body
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert undone.outcome is Outcome.ROLLED_BACK, undone
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == replaced
    assert "k.keymigration-backup" not in aws.keys()  # the replaced object's backup went with the step
    # Again, then prune: the object opens with the target key; both backups go, the data stays.
    assert cutover(aws).process("k").reason == "cut-over"
    pruned = Prune(aws.s3, KmsKeys(aws.kms, aws.target_key), aws.bucket, confirm=True).process("k")
    assert pruned.reason == "pruned", pruned
    assert metadata_backup(aws, "k") is None and default_read(aws, "k") == body
