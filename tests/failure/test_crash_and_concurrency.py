"""kill -9 at random points of a 5,000-object migration (and of a metadata-mode and a cut-over
migration, with every object checked readable after each kill), and two workers on one prefix."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.errors import KmsError
from keymigration.formats.content import decrypt_stream
from keymigration.formats.source_keys import load_key_files
from keymigration.formats.unwrap import unwrap_data_key
from keymigration.migrate.checkpoint import FileCheckpointStore
from keymigration.migrate.reader import locate, read_object
from tests.integration.corpus import KeySet, Seeded, make_keys, seed_mixed
from tests.support.fault_proxy import FaultProxy

OBJECTS = 5000
KILLS = 20


def cli(*args):
    return [sys.executable, "-m", "keymigration.cli", *args]


def snapshot(aws, prefix):
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def assert_final_state(aws, prefix, seeded, before):
    after = snapshot(aws, prefix)
    objects = set(seeded.encrypted) | set(seeded.plaintext)
    assert {k: after[k] for k in objects} == {k: before[k] for k in objects}  # no body or metadata changed
    files = {k for k in after if k.endswith(".instruction")}
    assert files == {k + ".instruction" for k in seeded.encrypted}  # none missing, none orphaned
    # Backups exactly where an instruction file was replaced; nothing else written.
    backups = {k + ".keymigration-backup" for k in before if k.endswith(".instruction")}
    assert set(after) == objects | files | backups
    bucket, kms = Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key)
    sample = random.Random(5).sample(sorted(seeded.encrypted), 300)
    for key in sample:
        assert read_object(bucket, kms, key, ".instruction") == seeded.encrypted[key], key


def report_lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_progress(proc, report, lines_before, timeout=120.0):
    deadline = time.monotonic() + timeout
    while report_lines(report) <= lines_before and proc.poll() is None:
        assert time.monotonic() < deadline, "the worker made no progress in 2 minutes"
        time.sleep(0.05)


def start_and_kill(args, env, report, rng: random.Random, kills: int, spread: float = 2.0) -> bool:
    """Start the migration and kill -9 it: on odd kills anywhere from start-up on (imports,
    preflight, listing, the first objects); on even ones once this run has finished objects,
    wherever it is then (unwrap, KMS, backups, writes, copies, checkpoint). Waiting for
    progress, not a fixed time, keeps the suite meaningful on a loaded machine, where start-up
    alone can take seconds. Returns False if the migration finished first."""
    lines_before = report_lines(report)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kills % 2:
        time.sleep(rng.uniform(0.2, 3.0))
    else:
        wait_for_progress(proc, report, lines_before)
        time.sleep(rng.uniform(0.0, spread))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_kill_9_at_20_random_points(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    seeded = seed_mixed(aws, "crash/", OBJECTS, keys, plaintext_every=25)
    before = snapshot(aws, "crash/")
    checkpoint = tmp_path / "cp.json"
    args = cli("run", "--bucket", aws.bucket, "--prefix", "crash/", *keys.cli_args(), "--kms-key-id", aws.target_key,
               "--checkpoint", str(checkpoint), "--progress", "none", "--concurrency", "8", "--report", str(tmp_path / "r.jsonl"))
    env = {**os.environ, **aws.server.env()}
    rng = random.Random(2026)
    kills, marks = 0, []
    report = tmp_path / "r.jsonl"
    while kills < KILLS and start_and_kill(args, env, report, rng, kills):
        kills += 1
        state = FileCheckpointStore(checkpoint).load()
        marks.append(state.counters.get("scanned", 0) if state else 0)
    assert kills == KILLS, f"the migration finished after {kills} kills; make it longer"
    assert marks[-1] > marks[0]  # progress survived the kills
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    state = FileCheckpointStore(checkpoint).load()
    counters = state.counters
    assert state.done
    assert (counters["scanned"], counters["migrated"], counters["skipped"], counters["failed"]) == (
        OBJECTS, len(seeded.encrypted), len(seeded.plaintext), 0)
    assert_final_state(aws, "crash/", seeded, before)
    print(f"\ncrash suite: {OBJECTS} objects, {kills} kill -9, checkpoint marks {marks}")


METADATA_OBJECTS = 1000
METADATA_KILLS = 8


def readable_with_old_or_new_key(aws, keys: KeySet, key: str, body: bytes) -> str | None:
    """None if the lookup every reader's default makes (metadata first, then .instruction),
    and the explicit .instruction lookup where that file exists, give ``body`` with the old
    keys or the new one; else what went wrong."""
    bucket = Bucket(aws.s3, aws.bucket)
    masters = load_key_files([str(keys.aes), str(keys.rsa)])
    head = aws.s3.head_object(Bucket=aws.bucket, Key=key)
    raw = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    lookups = [None] + ([".instruction"] if bucket.get_small(key + ".instruction") else [])
    for lookup in lookups:
        envelope = locate(bucket, key, head["Metadata"], lookup)
        if envelope.wrap.is_kms:
            for kms_key in (aws.target_key, keys.old_kms):
                try:
                    data_key = KmsKeys(aws.kms, kms_key).decrypt(envelope.encrypted_key, envelope.context, kms_key)
                    break
                except KmsError:
                    continue
            else:
                return f"{lookup or 'default'}: neither KMS key opens it"
        else:
            data_key = unwrap_data_key(envelope, masters).data_key
        if b"".join(decrypt_stream(envelope, data_key, [raw])) != body:
            return f"{lookup or 'default'}: wrong plaintext"
    return None


# mode -> (objects, kills): the cut-over's suite is smaller (its copy path is the metadata
# mode's; what it adds is the backup on the instruction file, and the rollback checked after).
COPYING_MODES = {"metadata": (METADATA_OBJECTS, METADATA_KILLS), "cutover": (600, 6)}


@pytest.mark.parametrize("mode", list(COPYING_MODES))
def test_kill_9_during_a_copying_migration_leaves_every_object_readable(aws, tmp_path, mode):
    """#15 item 3 (metadata mode) and the cut-over: at any kill, every object opens with the old
    key or the new one (never neither), through the proxy that enforces CopySourceIfMatch as S3
    does; the resumed runs finish with exact counters and exactly the expected files. After the
    cut-over, a rollback puts every object's metadata back exactly (from the backups its
    instruction files carry)."""
    count, kill_target = COPYING_MODES[mode]
    keys = make_keys(aws, tmp_path / "keys")
    seeded: Seeded = seed_mixed(aws, "meta/", count, keys, plaintext_every=25)
    before = snapshot(aws, "meta/")
    original = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["Metadata"] for k in seeded.encrypted}
    proxy = FaultProxy(aws.server.endpoint).start()
    proxy.enforce_copy_source_if_match = True
    checkpoint = tmp_path / "cp.json"
    args = cli("run", "--bucket", aws.bucket, "--prefix", "meta/", "--mode", mode, *keys.cli_args(),
               "--kms-key-id", aws.target_key, "--checkpoint", str(checkpoint), "--progress", "none", "--concurrency", "8",
               "--report", str(tmp_path / "r.jsonl"))
    env = {**os.environ, **aws.server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    rng = random.Random(15)
    kills, checked, last, report = 0, 0, before, tmp_path / "r.jsonl"
    try:
        while kills < kill_target and start_and_kill(args, env, report, rng, kills, spread=1.5):
            kills += 1
            # Every object whose bytes, metadata, instruction file or backups changed since the
            # last kill (the others read as they did then); all of them by the end.
            now = snapshot(aws, "meta/")
            names = set(now) | set(last)
            changed = {k for k in seeded.encrypted
                       if any(now.get(n) != last.get(n) for n in names if n == k or n.startswith(k + "."))}
            with ThreadPoolExecutor(8) as pool:
                problems = dict(zip(changed, pool.map(
                    lambda key: readable_with_old_or_new_key(aws, keys, key, seeded.encrypted[key]), changed)))
            unreadable = {k: p for k, p in problems.items() if p}
            assert not unreadable, f"after kill {kills}: {dict(list(unreadable.items())[:5])}"
            checked, last = checked + len(changed), now
            print(f"kill {kills} after {report_lines(report)} objects: {len(changed)} changed objects read with the old or new key")
        assert kills == kill_target, f"the migration finished after {kills} kills; make it longer"
        final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    finally:
        proxy.stop()
    assert final.returncode == 0, final.stderr[-3000:]
    counters = FileCheckpointStore(checkpoint).load().counters
    assert (counters["scanned"], counters["migrated"], counters["skipped"], counters["failed"]) == (
        count, len(seeded.encrypted), len(seeded.plaintext), 0)
    after = snapshot(aws, "meta/")
    had_file = {k[: -len(".instruction")] for k in before if k.endswith(".instruction")}
    objects = set(seeded.encrypted) | set(seeded.plaintext)
    if mode == "metadata":  # every old .instruction retired (backed up), nothing else left
        expected = objects | {k + ".keymigration-backup" for k in seeded.encrypted} | {k + ".instruction.keymigration-backup" for k in had_file}
    else:  # the KMS files (carrying the metadata backups: no backup objects), the old files' backups
        expected = objects | {k + ".instruction" for k in seeded.encrypted} | {k + ".instruction.keymigration-backup" for k in had_file}
    assert set(after) == expected
    bucket, kms = Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key)
    with ThreadPoolExecutor(8) as pool:
        reads = dict(zip(seeded.encrypted, pool.map(lambda key: read_object(bucket, kms, key, None), seeded.encrypted)))
    assert reads == seeded.encrypted  # every object, with only the new key
    print(f"\n{mode} crash suite: {count} objects, {kills} kill -9, {checked} reads of changed objects")
    if mode == "cutover":
        undo = subprocess.run(cli("rollback", "--bucket", aws.bucket, "--prefix", "meta/", "--remove-instruction-files",
                                  "--progress", "none"), env={**os.environ, **aws.server.env()},
                              capture_output=True, text=True, timeout=600)
        assert undo.returncode == 0, undo.stderr[-3000:]
        restored = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["Metadata"] for k in seeded.encrypted}
        assert restored == original
        assert snapshot(aws, "meta/") == before  # the old files back, byte for byte; nothing of ours left


def test_two_workers_on_one_prefix_never_corrupt_anything(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    seeded = seed_mixed(aws, "dup/", 600, keys, plaintext_every=20)
    before = snapshot(aws, "dup/")
    env = {**os.environ, **aws.server.env()}
    procs = []
    for n in range(2):
        args = cli("run", "--bucket", aws.bucket, "--prefix", "dup/", *keys.cli_args(), "--kms-key-id", aws.target_key,
                   "--progress", "none", "--concurrency", "8", "--report", str(tmp_path / f"r{n}.jsonl"))
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    migrated_by = {}
    for n in range(2):
        for line in (tmp_path / f"r{n}.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("outcome") == "migrated":
                assert record["key"] not in migrated_by, "an object was migrated twice"
                migrated_by[record["key"]] = n
    assert set(migrated_by) == set(seeded.encrypted)  # each object written exactly once, by one worker
    assert_final_state(aws, "dup/", seeded, before)
