"""kill -9 at 20 random points of a 5,000-object migration, and two workers on one prefix."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.migrate.checkpoint import FileCheckpointStore
from keymigration.migrate.reader import read_object
from tests.integration.corpus import make_keys, seed_mixed

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
    while kills < KILLS:
        lines_before = report_lines(report)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills % 2:
            # Anywhere from start-up on: imports, preflight, listing, the first objects.
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            # Once this run has finished objects, wherever it is then (unwrap, KMS, PUT, verify,
            # checkpoint). Waiting for progress, not a fixed time, keeps the suite meaningful on
            # a loaded machine, where start-up alone can take seconds.
            wait_for_progress(proc, report, lines_before)
            time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is not None:
            break  # finished before this kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
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
