"""Metadata mode on a moto server: the new KMS envelope replaces the old one in the object's own
metadata (docs/cutover.md): what is kept, the old instruction file, re-runs, races, the 2 KB
limit, and rollback."""
from __future__ import annotations

import json
import os

import pytest

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.errors import NotReadable
from keymigration.formats import envelope as e
from keymigration.formats.content import decrypt_stream
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.unwrap import unwrap_data_key
from keymigration.migrate.reader import read_object
from keymigration.migrate.results import Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.rollback import Rollback, RollbackOptions
from tests.integration.test_cutover import AES, HEADERS, RSA, put_with_headers, racing_proxy

V1_V2 = {"x-amz-key", "x-amz-key-v2", "x-amz-iv", "x-amz-matdesc", "x-amz-wrap-alg", "x-amz-cek-alg", "x-amz-tag-len"}
MARKS = {"keymigration-target-key", "keymigration-step", "keymigration-copy", "keymigration-run"}


def metadata_mode(aws, s3=None, keys=(AES, RSA), dry_run=False, source_kms=(), run_id="r1"):
    kms = KmsKeys(aws.kms, aws.target_key, source_key_ids=list(source_kms))
    kms.describe_target()
    return ObjectRewrapper(s3 or aws.s3, kms, keys, RewrapOptions(aws.bucket, run_id=run_id, mode="metadata", dry_run=dry_run))


def default_read(aws, key):
    return read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), key, None)


def old_key_read(aws, key):
    """Read as the original client with the old AES key would: default lookup."""
    metadata = aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"]
    if e.detect(metadata) is e.MetadataKind.ENVELOPE:
        env = e.from_metadata(metadata)
    else:
        env = e.from_instruction_file(aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")["Body"].read(), metadata)
    raw = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    return b"".join(decrypt_stream(env, unwrap_data_key(env, [AES, RSA]).data_key, [raw]))


KINDS = [("v1", W.LEGACY, e.CBC, AES), ("v2", W.AES_GCM, e.GCM, AES), ("v2", W.RSA_OAEP_SHA1, e.GCM, RSA),
         ("v3", W.AES_GCM, None, AES), ("v3", W.RSA_OAEP_SHA1, None, RSA)]


@pytest.mark.parametrize("fmt,wrap,cek,master", KINDS)
def test_the_new_envelope_replaces_the_old_one_and_everything_else_stays(aws, fmt, wrap, cek, master):
    body, enc = put_with_headers(aws, "k", fmt, wrap, cek, master)
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    raw = aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read()
    worker = metadata_mode(aws)
    result = worker.process("k")
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated"), result
    after = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k")["Body"].read() == raw
    metadata = after["Metadata"]
    assert {"owner": "team-a", "x-custom": "kept"}.items() <= metadata.items()
    envelope = e.from_metadata(metadata)
    assert envelope.wrap is W.KMS_CONTEXT and envelope.location is e.Location.METADATA
    if fmt == "v3":
        for name in ("x-amz-c", "x-amz-d", "x-amz-i"):
            assert metadata[name] == before["Metadata"][name]
        assert metadata["x-amz-w"] == "12" and json.loads(metadata["x-amz-t"]) == {"aws:x-amz-cek-alg": "115"}
        assert not (V1_V2 | {"x-amz-m", "x-amz-unencrypted-content-length"}) & set(metadata)
    else:
        assert not {"x-amz-key", "x-amz-3", "x-amz-c"} & set(metadata)
        assert metadata["x-amz-wrap-alg"] == "kms+context" and metadata["x-amz-iv"] == before["Metadata"]["x-amz-iv"]
        assert ("x-amz-tag-len" in metadata) == (envelope.cek_alg == e.GCM)
    assert metadata["keymigration-target-key"] == worker.kms.target_arn and metadata["keymigration-step"] == "1"
    assert metadata["keymigration-run"] == "r1"
    for name in HEADERS:
        assert after.get(name) == before.get(name), name
    tags = aws.s3.get_object_tagging(Bucket=aws.bucket, Key="k")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("project", "blue"), ("tier", "gold")]
    assert default_read(aws, "k") == body
    backup = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key="k.keymigration-backup")["Body"].read())
    # The backup holds the old envelope: every envelope key, and what else left the metadata.
    assert backup["envelope"] == {k: v for k, v in before["Metadata"].items() if k in V1_V2 | {"x-amz-3", "x-amz-w", "x-amz-m", "x-amz-t"}
                                  or metadata.get(k) != v}
    assert e.from_metadata({**before["Metadata"], **backup["envelope"]}).wrap is wrap
    assert backup["copy"] == metadata["keymigration-copy"]
    assert set(worker.kms.calls) == {"describe_key", "encrypt", "decrypt"}  # wrapped, then verified before the copy


@pytest.mark.parametrize("fmt,wrap,cek", [("v1", W.LEGACY, e.CBC), ("v2", W.AES_GCM, e.GCM), ("v3", W.AES_GCM, None)])
def test_an_old_instruction_file_is_backed_up_and_removed_after_the_copy(aws, fmt, wrap, cek):
    body = os.urandom(500)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=AES), "instruction-file")
    old_file = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")
    old_bytes = old_file["Body"].read()
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    assert metadata_mode(aws).process("k").reason == "migrated"
    assert "k.instruction" not in aws.keys()
    backup = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction.keymigration-backup")
    assert backup["Body"].read() == old_bytes
    assert backup["Metadata"]["keymigration-backup-etag"] == old_file["ETag"].strip('"')
    assert default_read(aws, "k") == body
    # A reader that asks for the instruction file explicitly never gets the old key's envelope.
    with pytest.raises(NotReadable) as unreadable:
        read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction")
    assert unreadable.value.reason == "missing-instruction-file"
    # Nothing left the metadata (V3: x-amz-c/d/i stay); the backup says so.
    record = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key="k.keymigration-backup")["Body"].read())
    assert record["envelope"] == {}
    assert before.items() <= aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"].items()


def test_a_rerun_makes_no_kms_call_and_no_write(aws):
    put_with_headers(aws, "k")
    assert metadata_mode(aws).process("k").reason == "migrated"
    snapshot = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys()}
    resumed = metadata_mode(aws).process("k")  # the same run again (after a kill): counted as its own
    assert (resumed.outcome, resumed.reason, resumed.resumed) == (Outcome.MIGRATED, "migrated", True)
    again = metadata_mode(aws, run_id="r2")
    result = again.process("k")
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "already-migrated")
    assert dict(again.kms.calls) == {"describe_key": 1}
    assert {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys()} == snapshot


def test_a_run_stopped_before_removing_the_old_file_is_finished_by_the_next(aws, monkeypatch):
    body = os.urandom(100)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES), "instruction-file")
    worker = metadata_mode(aws)
    stages = worker.cut_over.metadata_stages
    assert stages[-1] == worker.cut_over.retire_files
    monkeypatch.setattr(worker.cut_over, "metadata_stages", stages[:-1])  # the process died right after the copy
    assert worker.process("k").reason == "migrated"
    assert "k.instruction" in aws.keys() and default_read(aws, "k") == body
    again = metadata_mode(aws)
    result = again.process("k")
    assert (result.outcome, result.reason, result.resumed) == (Outcome.MIGRATED, "migrated", True)
    assert "k.instruction" not in aws.keys() and "k.instruction.keymigration-backup" in aws.keys()
    assert dict(again.kms.calls) == {"describe_key": 1}
    assert metadata_mode(aws, run_id="r2").process("k").reason == "already-migrated"


def test_dry_run_plans_and_writes_nothing(aws):
    put_with_headers(aws, "k")
    before = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys()}
    plan = metadata_mode(aws, dry_run=True)
    result = plan.process("k")
    assert (result.outcome, result.reason) == (Outcome.PLANNED, "would-migrate-in-metadata")
    assert {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys()} == before
    assert set(plan.kms.calls) == {"describe_key"}


def test_metadata_over_2_kb_is_refused_before_anything_is_written(aws):
    """The test server refuses user metadata over 2 KB as S3 does (MetadataTooLarge); the tool
    refuses such an object itself, with a reason, before its backup or copy."""
    body = os.urandom(100)
    enc = encrypt_object(body, fmt="v1", wrap=W.LEGACY, cek_alg=e.CBC, master=AES)
    app = {"notes": "n" * 1600}  # fits beside the small AES envelope, not beside a KMS one
    aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=enc.body, Metadata={**enc.fields, **app})
    before = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    plan = metadata_mode(aws, dry_run=True).process("k")
    assert (plan.outcome, plan.reason) == (Outcome.FAILED, "metadata-too-large")
    result = metadata_mode(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "metadata-too-large"), result
    assert "2048" in result.message and not result.retryable
    after = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    assert (after["ETag"], after["Metadata"]) == (before["ETag"], before["Metadata"])
    assert aws.keys() == ["k"]
    # The same object migrates in the other modes (the envelope goes to a file).
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    assert ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(aws.bucket, mode="cutover")).process("k").reason == "cut-over"


@pytest.mark.parametrize("versioned", [False, True])
def test_a_concurrent_write_is_never_overwritten(aws, moto_server, versioned):
    """moto ignores CopySourceIfMatch: the proxy enforces it as S3 does; a writer replaces the
    object right before our copy."""
    if versioned:
        aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    body = os.urandom(100)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES), "instruction-file")
    new_enc = encrypt_object(b"the concurrent writer's content", fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    proxy, s3, raced = racing_proxy(aws, moto_server, new_enc)
    try:
        worker = metadata_mode(aws, s3=s3)
        first = worker.process("k")
        assert raced and proxy.stats["copy-source-if-match-412"] == 1 and "versionId" not in raced[0]
        assert (first.outcome, first.reason, first.retryable) == (Outcome.FAILED, "object-changed", True)
        stored = aws.s3.get_object(Bucket=aws.bucket, Key="k")
        assert stored["Body"].read() == new_enc.body and stored["Metadata"] == new_enc.fields  # untouched
        assert not [k for k in aws.keys() if "keymigration-backup" in k]  # taken back
        assert "k.instruction" in aws.keys()  # (removed only after a copy that landed)
        retry = worker.process("k")
    finally:
        proxy.stop()
    assert retry.reason == "migrated", retry
    assert default_read(aws, "k") == b"the concurrent writer's content"


def test_rollback_restores_the_old_envelopes_exactly_then_the_old_keys_read(aws):
    bodies, originals, files = {}, {}, {}
    for key, location, fmt, cek in (("meta", "metadata", "v2", e.GCM), ("file", "instruction-file", "v1", e.CBC),
                                    ("v3file", "instruction-file", "v3", None)):
        bodies[key] = os.urandom(300)
        wrap = W.LEGACY if fmt == "v1" else W.AES_GCM
        put_encrypted(aws.s3, aws.bucket, key, encrypt_object(bodies[key], fmt=fmt, wrap=wrap, cek_alg=cek, master=AES), location)
        originals[key] = aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"]
        if location == "instruction-file":
            stored = aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")
            files[key] = (stored["Body"].read(), stored["Metadata"], stored["ContentType"])
    worker = metadata_mode(aws)
    assert [worker.process(k).reason for k in bodies] == ["migrated"] * 3
    rollback = Rollback(aws.s3, RollbackOptions(aws.bucket))
    done = {k: rollback.process(k) for k in bodies}
    assert {k: r.outcome for k, r in done.items()} == dict.fromkeys(bodies, Outcome.ROLLED_BACK), done
    assert done["file"].message == "step 1: metadata envelope restored; step 1: instruction file .instruction restored"
    for key in bodies:
        assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] == originals[key]
        assert old_key_read(aws, key) == bodies[key]
    for key, (body, metadata, content_type) in files.items():
        stored = aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")
        assert (stored["Body"].read(), stored["Metadata"], stored["ContentType"]) == (body, metadata, content_type)
    assert not [k for k in aws.keys() if "keymigration-backup" in k]
    assert {rollback.process(k).reason for k in bodies} == {"nothing-to-roll-back"}


def test_rollback_refuses_an_object_that_is_not_the_tools_copy(aws):
    """Written since by someone else with the same length and the same user metadata (our marks
    and envelope aside): not ours, whatever it looks like."""
    put_with_headers(aws, "k")
    assert metadata_mode(aws).process("k").reason == "migrated"
    now = aws.s3.head_object(Bucket=aws.bucket, Key="k")
    other = encrypt_object(os.urandom(300), fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES)
    assert len(other.body) == now["ContentLength"]
    foreign = {k: v for k, v in now["Metadata"].items() if k not in MARKS | V1_V2} | other.fields
    aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=other.body, Metadata=foreign)
    result = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "metadata-changed")
    assert aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"] == foreign
    assert "k.keymigration-backup" in aws.keys()


@pytest.mark.parametrize("first", ["instruction-file", "cutover"])
def test_a_prefix_migrated_in_another_mode_moves_into_the_metadata_without_a_new_wrap(aws, first):
    """The same target key: the KMS envelope keymigration wrote to .instruction moves into the
    metadata (only the verification calls KMS), and the file goes, backed up as a step of its own."""
    body, _ = put_with_headers(aws, "k")
    kms = KmsKeys(aws.kms, aws.target_key)
    kms.describe_target()
    assert ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(aws.bucket, mode=first)).process("k").outcome is Outcome.MIGRATED
    file_before = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read()
    worker = metadata_mode(aws, keys=())  # no AES/RSA key, no source KMS key: nothing to unwrap
    result = worker.process("k")
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated"), result
    assert dict(worker.kms.calls) == {"describe_key": 1, "re_encrypt": 1}  # the verification only
    metadata = aws.s3.head_object(Bucket=aws.bucket, Key="k")["Metadata"]
    assert metadata["x-amz-key-v2"] == json.loads(file_before)["x-amz-key-v2"] and metadata["keymigration-step"] == "2"
    assert "k.instruction" not in aws.keys()
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction.keymigration-backup.2")["Body"].read() == file_before
    assert default_read(aws, "k") == body
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert undone.outcome is Outcome.ROLLED_BACK, undone
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == file_before
