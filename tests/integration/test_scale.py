"""Scale-out, as separate processes against a moto server: key-range shards planned by
`keymigration shard` and run concurrently, S3 Inventory input, the adaptive KMS limiter, and the
plan's expected duration."""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate import EXIT_CONFIG
from keymigration.migrate.checkpoint import FileCheckpointStore
from tests.integration.corpus import Seeded, make_keys, seed_mixed
from tests.integration.test_worker import (
    assert_all_readable,
    assert_one_instruction_file_each,
    cli,
    kill_at_report_lines,
    report_lines,
    run,
    run_args,
    worker_env,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.inventory import Row, write_inventory

# Envelopes in instruction files, so a range's last object has a file past its end_key.
FILE_KINDS = [
    ("v1", W.LEGACY, e.CBC, "aes"),
    ("v2", W.AES_GCM, e.GCM, "aes"),
    ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa"),
    ("v3", W.RSA_OAEP_SHA1, None, "rsa"),
]
STEMS = ["a", "a b", "a+b", "a%2Bb", "é", "中文", "😀", "dir/", "~x", "Z"]
VARIANTS = ["", " b", "+1", "-2", "/x"]  # each key a prefix of the next ones, all between it and its file


@pytest.fixture
def keys(aws, tmp_path):
    return make_keys(aws, tmp_path / "keys")


def awkward_names(prefix: str, groups: int) -> list[str]:
    return [f"{prefix}{STEMS[i % len(STEMS)]}{i}{variant}" for i in range(groups) for variant in VARIANTS]


def seed_awkward(aws, prefix: str, groups: int, keys) -> Seeded:
    aes, = load_key_files([str(keys.aes)])
    rsa, = load_key_files([str(keys.rsa)])
    seeded = Seeded()

    def put(item):
        i, key = item
        body = os.urandom(i % 97)
        if i % 7 == 6:
            aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=body)
            return key, None
        fmt, wrap, cek, kind = FILE_KINDS[i % len(FILE_KINDS)]
        enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=aes if kind == "aes" else rsa)
        put_encrypted(aws.s3, aws.bucket, key, enc, location="instruction-file")
        return key, body

    with ThreadPoolExecutor(16) as pool:
        for key, body in pool.map(put, enumerate(awkward_names(prefix, groups))):
            if body is None:
                seeded.plaintext.append(key)
            else:
                seeded.encrypted[key] = body
    return seeded


def shard_plan(aws, prefix: str, *count: str) -> list[dict]:
    proc = run(aws, "shard", "--bucket", aws.bucket, f"--prefix={prefix}", *count)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1])["event"] == "shard-plan"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def range_args(shard: dict) -> list[str]:
    out = []
    if shard["start_after"] is not None:
        out.append(f"--start-after={shard['start_after']}")
    if shard["end_key"] is not None:
        out.append(f"--end-key={shard['end_key']}")
    return out


def run_together(aws, commands: list[list[str]], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cli(*c), env=worker_env(aws), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    out = []
    for proc, command in zip(procs, commands):
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return out


def per_object(paths) -> list[dict]:
    return [line for path in paths for line in report_lines(path) if "key" in line]


def summaries(paths) -> list[dict]:
    return [line["summary"] for path in paths for line in report_lines(path) if "summary" in line]


def test_concurrent_shards_migrate_every_object_exactly_once(aws, keys, tmp_path):
    prefix = "scale/"
    seeded = seed_awkward(aws, prefix, 40, keys)  # 200 objects, 171 with an instruction file
    aws.s3.put_object(Bucket=aws.bucket, Key="scale0-outside", Body=b"x")  # after the prefix, never ours
    shards = shard_plan(aws, prefix, "--shards", "4")
    assert len(shards) == 4 and shards[0]["start_after"] is None and shards[-1]["end_key"] is None
    ends = [s["end_key"] for s in shards[:-1]]
    assert sum(1 for k in ends if k in seeded.encrypted) >= 2  # their files lie in the next range
    reports = [tmp_path / f"report-{i}.jsonl" for i in range(4)]
    commands = [
        run_args(aws, keys, prefix, *range_args(s), "--report", str(reports[i]), "--checkpoint", str(tmp_path / f"cp-{i}.json"),
                 "--concurrency", "4")
        for i, s in enumerate(shards)
    ]
    for proc in run_together(aws, commands):
        assert proc.returncode == 0, proc.stderr[-2000:]
    lines = per_object(reports)
    counts = Counter(line["key"] for line in lines)
    everything = set(seeded.encrypted) | set(seeded.plaintext)
    assert set(counts) == everything and set(counts.values()) == {1}  # every object, exactly once
    outcomes = Counter((line["outcome"], line["reason"]) for line in lines)
    assert outcomes == {("migrated", "migrated"): len(seeded.encrypted), ("skipped", "not-encrypted"): len(seeded.plaintext)}
    for shard, line_set in zip(shards, (report_lines(r) for r in reports)):
        assert line_set[-1]["summary"]["key_range"] == {"start_after": shard["start_after"], "end_key": shard["end_key"]}
    listed_files = sum(s.get("instruction_files_listed", {}).get(".instruction", 0) for s in summaries(reports))
    assert listed_files == len(seeded.encrypted)  # each source file counted by exactly one shard
    assert_all_readable(aws, seeded)
    assert_one_instruction_file_each(aws, prefix, seeded)
    for i, shard in enumerate(shards):  # each checkpoint records its range and is done
        state = FileCheckpointStore(tmp_path / f"cp-{i}.json").load()
        assert state.done and (state.start_after, state.end_key) == (shard["start_after"], shard["end_key"])


def test_a_shard_checkpoint_refuses_another_range(aws, keys, tmp_path):
    seed_mixed(aws, "cp/", 12, keys)
    checkpoint = tmp_path / "cp.json"
    first = run(aws, *run_args(aws, keys, "cp/", "--end-key=cp/obj-000005", "--checkpoint", str(checkpoint)))
    assert first.returncode == 0, first.stderr
    other = run(aws, *run_args(aws, keys, "cp/", "--end-key=cp/obj-000007", "--checkpoint", str(checkpoint)))
    assert other.returncode == EXIT_CONFIG and "end key" in other.stderr
    whole = run(aws, *run_args(aws, keys, "cp/", "--checkpoint", str(checkpoint)))
    assert whole.returncode == EXIT_CONFIG
    empty = run(aws, *run_args(aws, keys, "cp/", "--start-after=cp/b", "--end-key=cp/a"))
    assert empty.returncode == EXIT_CONFIG and "empty key range" in empty.stderr


def inventory_of(aws, seeded: Seeded, files: int, extra: list[Row]) -> str:
    rows = [Row(k) for k in sorted(set(seeded.encrypted) | set(seeded.plaintext))] + extra
    rows += [Row(k + ".instruction") for k in seeded.encrypted if k.endswith("3")]  # files S3 lists as objects
    aws.s3.create_bucket(Bucket=aws.bucket + "-inv")
    return write_inventory(aws.s3, aws.bucket + "-inv", aws.bucket, [rows[i::files] for i in range(files)])


def test_inventory_shards_migrate_exactly_the_listed_objects_without_listing(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "inv/", 90, keys)
    unlisted = seed_mixed(aws, "inv/late-", 5, keys)  # written after the inventory: not migrated
    extra = [Row("inv/obj-000001", latest=False), Row("inv/removed", delete_marker=True), Row("other/x"),
             Row("inv/deleted-since")]
    url = inventory_of(aws, seeded, 3, extra)
    late_before = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys("inv/late-")}
    reports = [tmp_path / f"inv-{i}.jsonl" for i in range(2)]
    commands = [run_args(aws, keys, "inv/", "--inventory", url, f"--inventory-files={i}/2", "--report", str(reports[i]),
                         "--checkpoint", str(tmp_path / f"inv-cp-{i}.json")) for i in range(2)]
    for proc in run_together(aws, commands):
        assert proc.returncode == 0, proc.stderr[-2000:]
    lines = per_object(reports)
    counts = Counter(line["key"] for line in lines)
    assert set(counts.values()) == {1}
    assert set(counts) == set(seeded.encrypted) | set(seeded.plaintext) | {"inv/deleted-since"}
    assert {line["reason"] for line in lines if line["key"] == "inv/deleted-since"} == {"object-deleted"}
    assert not set(counts) & (set(unlisted.encrypted) | set(unlisted.plaintext))
    sums = summaries(reports)
    assert sum(s["migrated"] for s in sums) == len(seeded.encrypted)
    assert all("s3:ListObjectsV2" not in s["requests"] for s in sums)  # no LIST of the bucket
    skipped = Counter()
    for s in sums:
        skipped.update(s.get("inventory_rows_skipped", {}))
    assert skipped == {"not-latest": 1, "delete-marker": 1, "outside-prefix": 1}
    assert sum(s["inventory_files"] for s in sums) == 3
    assert_all_readable(aws, seeded)
    assert {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys("inv/late-")} == late_before


def test_inventory_run_killed_twice_resumes_exactly(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "ik/", 150, keys)
    url = inventory_of(aws, seeded, 3, [])
    checkpoint, report = tmp_path / "cp.json", tmp_path / "report.jsonl"
    args = run_args(aws, keys, "ik/", "--inventory", url, "--checkpoint", str(checkpoint), "--report", str(report),
                    "--concurrency", "4")
    # By default a checkpoint is written at most every 2 s: a fast machine reached line 80 before the first one.
    args += ["--checkpoint-interval", "0"]
    kills = sum(kill_at_report_lines(aws, args, report, lines) for lines in (20, 80))
    assert kills == 2
    state = FileCheckpointStore(checkpoint).load()
    assert state.position is not None and state.inventory == url and not state.done
    final = run(aws, *args)
    assert final.returncode == 0, final.stderr
    state = FileCheckpointStore(checkpoint).load()
    assert state.done
    assert (state.counters["scanned"], state.counters["migrated"], state.counters["failed"]) == (
        150, len(seeded.encrypted), 0)
    assert_all_readable(aws, seeded)


def test_kms_throttling_slows_the_limiter_and_a_rate_file_sets_its_cap(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "thr/", 40, keys, masters=("aes",))
    proxy = FaultProxy(aws.server.endpoint).start()
    throttled = Counter()

    def throttle_encrypt(method, path, headers, body):
        if headers.get("X-Amz-Target") == "TrentService.Encrypt" and throttled["n"] < 12:
            throttled["n"] += 1
            return "slowdown"  # KMS 400 ThrottlingException
        return None

    proxy.rule = throttle_encrypt
    rate_file = tmp_path / "kms-rate"
    rate_file.write_text("150\n")
    report = tmp_path / "report.jsonl"
    try:
        proc = run(aws, *run_args(aws, keys, "thr/", "--report", str(report), "--kms-rate", "400",
                                  "--kms-rate-file", str(rate_file), "--concurrency", "4"), endpoint=proxy.endpoint)
    finally:
        proxy.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = report_lines(report)[-1]["summary"]
    assert summary["migrated"] == len(seeded.encrypted) and summary["failed"] == 0
    limiter = summary["kms_limiter"]
    assert limiter["cap"] == 150  # from the file, not --kms-rate
    assert limiter["throttles"] == 12 and limiter["decreases"] >= 1 and limiter["lowest"] <= 75


def test_plan_gives_the_expected_duration(aws, keys):
    seeded = seed_mixed(aws, "eta/", 30, keys)
    proc = run(aws, "plan", "--bucket", aws.bucket, "--prefix", "eta/", *keys.cli_args(), "--progress", "none",
               "--workers", "2", "--worker-rate", "5", "--kms-budget", "4")
    assert proc.returncode == 0, proc.stderr
    estimate = json.loads(proc.stdout.splitlines()[-1])["plan"]["estimate"]
    n = len(seeded.encrypted)
    assert estimate["objects"] == n and estimate["kms_requests"] == 2 * n
    assert estimate["seconds_by_workers"] == pytest.approx(n / 10, abs=0.1)
    assert estimate["seconds_by_kms"] == pytest.approx(2 * n / 4, abs=0.1)
    assert estimate["bound_by"] == "kms" and "expected duration" in proc.stdout
