"""Rotations: after a migration to KMS key A (in any mode), A -> B and B -> C with no AES/RSA key
present (#15 item 7). Each step keeps its own backups (a chain that never collides), a rollback
undoes one step at a time, and pruning knows the whole chain."""
from __future__ import annotations

import os

import pytest

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.errors import KmsError, NotReadable
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.migrate.reader import read_object
from keymigration.migrate.results import Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.rollback import Prune, Rollback, RollbackOptions
from tests.integration.test_cutover import AES
from tests.integration.test_metadata_mode import old_key_read

OBJECTS = [  # key, format, wrap, content cipher, where the original envelope is
    ("v1-meta", "v1", W.LEGACY, e.CBC, "metadata"),
    ("v2-file", "v2", W.AES_GCM, e.GCM, "instruction-file"),
    ("v3-meta", "v3", W.AES_GCM, None, "metadata"),
    ("v3-file", "v3", W.AES_GCM, None, "instruction-file"),
]
MODES = [("instruction-file", ".kms"), ("cutover", ".instruction"), ("metadata", ".instruction")]


def migrate(aws, mode, suffix, target, *, source_kms=(), keys=(), run="run", objects=tuple(o[0] for o in OBJECTS)):
    kms = KmsKeys(aws.kms, target, source_key_ids=list(source_kms))
    kms.describe_target()
    worker = ObjectRewrapper(aws.s3, kms, list(keys), RewrapOptions(aws.bucket, suffix=suffix, run_id=run, mode=mode))
    results = {key: worker.process(key) for key in objects}
    return results, worker.kms.calls


def read_with(aws, key, target, mode, suffix):
    """The lookup the mode serves: the file at the suffix (instruction-file mode), else the
    default lookup (metadata first, then <key>.instruction)."""
    lookup = suffix if mode == "instruction-file" else None
    return read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, target), key, lookup)


def seed(aws, size: int) -> dict[str, bytes]:
    bodies = {}
    for key, fmt, wrap, cek, location in OBJECTS:
        bodies[key] = os.urandom(size)
        put_encrypted(aws.s3, aws.bucket, key, encrypt_object(bodies[key], fmt=fmt, wrap=wrap, cek_alg=cek, master=AES), location)
    return bodies


def backups(aws):
    return sorted(k for k in aws.keys() if "keymigration-backup" in k)


@pytest.mark.parametrize("mode,suffix", MODES)
def test_a_to_b_to_c_with_only_kms_keys_then_back_one_step_at_a_time(aws, mode, suffix):
    bodies = seed(aws, 200)
    originals = {key: aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] for key in bodies}
    a, b, c = aws.new_kms_key(), aws.new_kms_key(), aws.new_kms_key()

    first, _ = migrate(aws, mode, suffix, a, keys=[AES])
    assert {r.outcome for r in first.values()} == {Outcome.MIGRATED}, first
    after_first = backups(aws)
    states = [{key: aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] for key in bodies}]
    for source, target in ((a, b), (b, c)):
        results, calls = migrate(aws, mode, suffix, target, source_kms=[source])  # no AES/RSA key at all
        assert {r.outcome for r in results.values()} == {Outcome.MIGRATED}, results
        assert "encrypt" not in calls and calls["re_encrypt"] >= len(bodies)  # ReEncrypt: the data key never left KMS
        states.append({key: aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] for key in bodies})
        again, calls = migrate(aws, mode, suffix, target, source_kms=[source], run="another-run")
        assert {r.reason for r in again.values()} == {"already-migrated"}, again
    for key, body in bodies.items():
        assert read_with(aws, key, c, mode, suffix) == body  # only C is needed
        with pytest.raises((KmsError, NotReadable)):
            read_with(aws, key, b, mode, suffix)
    # Three steps, three sets of backups, none overwriting another.
    chain = backups(aws)
    assert set(after_first) <= set(chain)
    assert any(name.endswith(".keymigration-backup.2") for name in chain)
    assert any(name.endswith(".keymigration-backup.3") for name in chain)

    rollback = Rollback(aws.s3, RollbackOptions(aws.bucket, suffix=suffix, remove_instruction_files=True))
    for previous, key_before in ((states[1], b), (states[0], a)):
        undone = {key: rollback.process(key) for key in bodies}
        assert {r.outcome for r in undone.values()} == {Outcome.ROLLED_BACK}, undone
        for key, body in bodies.items():
            assert read_with(aws, key, key_before, mode, suffix) == body
            assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] == previous[key]
    assert backups(aws) == after_first
    undone = {key: rollback.process(key) for key in bodies}
    assert {r.outcome for r in undone.values()} == {Outcome.ROLLED_BACK}, undone
    for key, body in bodies.items():
        assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] == originals[key]
        assert old_key_read(aws, key) == body
    assert backups(aws) == []
    assert {rollback.process(key).reason for key in bodies} == {"nothing-to-roll-back"}


@pytest.mark.parametrize("mode,suffix", MODES)
def test_prune_deletes_the_whole_chain_once_the_last_key_reads_everything(aws, mode, suffix):
    bodies = seed(aws, 100)
    a, b = aws.new_kms_key(), aws.new_kms_key()
    migrate(aws, mode, suffix, a, keys=[AES])
    results, _ = migrate(aws, mode, suffix, b, source_kms=[a])
    assert {r.outcome for r in results.values()} == {Outcome.MIGRATED}
    assert backups(aws)
    plan = Prune(aws.s3, KmsKeys(aws.kms, b), aws.bucket, confirm=False, suffix=suffix)
    assert {plan.process(key).reason for key in bodies} <= {"would-prune", "no-backup"}
    prune = Prune(aws.s3, KmsKeys(aws.kms, b), aws.bucket, confirm=True, suffix=suffix)
    pruned = {key: prune.process(key) for key in bodies}
    assert {r.reason for r in pruned.values()} <= {"pruned", "no-backup"}, pruned
    assert backups(aws) == []
    for key, body in bodies.items():
        assert read_with(aws, key, b, mode, suffix) == body
    # Without backups there is nothing to roll back: a rotation after pruning starts a new chain.
    c = aws.new_kms_key()
    results, _ = migrate(aws, mode, suffix, c, source_kms=[b])
    assert {r.outcome for r in results.values()} == {Outcome.MIGRATED}, results


def test_backups_of_an_object_replaced_since_its_migration_are_pruned_and_stop_blocking_it(aws):
    """An old writer rewrote the object after its metadata-mode migration: the old chain's
    backups belong to data no longer stored, and would collide with the new migration's."""
    body = os.urandom(100)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES), "metadata")
    a = aws.new_kms_key()
    kms = KmsKeys(aws.kms, a)
    kms.describe_target()
    worker = ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(aws.bucket, mode="metadata"))
    assert worker.process("k").reason == "migrated"
    newer = os.urandom(100)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(newer, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES), "metadata")
    blocked = worker.process("k")
    assert (blocked.outcome, blocked.reason) == (Outcome.FAILED, "backup-exists")
    refused = Rollback(aws.s3, RollbackOptions(aws.bucket)).process("k")
    assert (refused.outcome, refused.reason) == (Outcome.FAILED, "metadata-changed")
    pruned = Prune(aws.s3, KmsKeys(aws.kms, a), aws.bucket, confirm=True).process("k")
    assert (pruned.outcome, pruned.message) == (Outcome.PRUNED, "1 backups of 1 migration steps of a replaced object")
    assert worker.process("k").reason == "migrated"
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, a), "k", None) == newer


def test_backups_rollback_and_prune_work_with_any_suffix(aws):
    """#13 item 8: a file replaced at a custom suffix is backed up, restored and pruned like one
    at .instruction (rollback and prune only knew <key>.instruction.keymigration-backup)."""
    body = os.urandom(100)
    put_encrypted(aws.s3, aws.bucket, "k", encrypt_object(body, fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM, master=AES), "metadata")
    foreign = b'{"x-amz-key-v2":"AAAA","x-amz-iv":"AAAAAAAAAAAAAAAA","x-amz-matdesc":"{}","x-amz-wrap-alg":"AES/GCM","x-amz-cek-alg":"AES/GCM/NoPadding"}'
    aws.s3.put_object(Bucket=aws.bucket, Key="k.v2", Body=foreign, Metadata={"written-by": "someone"})
    results, _ = migrate(aws, "instruction-file", ".v2", aws.target_key, keys=[AES], objects=["k"])
    assert results["k"].reason == "migrated"
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.v2.keymigration-backup")["Body"].read() == foreign
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".v2") == body

    plan = Prune(aws.s3, KmsKeys(aws.kms, aws.target_key), aws.bucket, confirm=False, suffix=".v2").process("k")
    assert plan.reason == "would-prune"  # the object opens with the target key at the suffix
    undone = Rollback(aws.s3, RollbackOptions(aws.bucket, suffix=".v2")).process("k")
    assert (undone.outcome, undone.message) == (Outcome.ROLLED_BACK, "step 1: instruction file .v2 restored")
    restored = aws.s3.get_object(Bucket=aws.bucket, Key="k.v2")
    assert restored["Body"].read() == foreign and restored["Metadata"] == {"written-by": "someone"}
    assert backups(aws) == []

    results, _ = migrate(aws, "instruction-file", ".v2", aws.target_key, keys=[AES], run="again", objects=["k"])
    assert results["k"].reason == "migrated"
    pruned = Prune(aws.s3, KmsKeys(aws.kms, aws.target_key), aws.bucket, confirm=True, suffix=".v2").process("k")
    assert pruned.reason == "pruned" and backups(aws) == []
