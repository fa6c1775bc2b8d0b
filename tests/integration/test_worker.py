"""The prefix worker and CLI, as separate processes against a moto server over HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.migrate import EXIT_CONFIG, EXIT_FAILED_OBJECTS, EXIT_TOO_MANY_FAILURES
from keymigration.migrate.checkpoint import FileCheckpointStore
from keymigration.migrate.reader import read_object
from tests.integration.corpus import make_keys, seed_mixed
from tests.support.fault_proxy import FaultProxy


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "keymigration.cli", *args]


def worker_env(aws, endpoint: str | None = None) -> dict:
    return {**os.environ, **aws.server.env(), **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}


def run(aws, *args, endpoint=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=worker_env(aws, endpoint), timeout=timeout)


def run_args(aws, keys, prefix, *extra) -> list[str]:
    return ["run", "--bucket", aws.bucket, "--prefix", prefix, *keys.cli_args(), "--kms-key-id", aws.target_key,
            "--progress", "none", *extra]


def report_lines(path: Path) -> list[dict]:
    """The report's records. A kill -9 can tear the line being written; the next run ends that
    line before its own (ReportWriter.open), so only the torn fragment is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            assert not line.endswith("}"), f"a whole line that does not parse: {line[:200]}"
    return records


def assert_all_readable(aws, seeded) -> None:
    bucket, kms = Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key)
    for key, body in seeded.encrypted.items():
        assert read_object(bucket, kms, key, ".instruction") == body, key


def assert_one_instruction_file_each(aws, prefix, seeded) -> None:
    keys = set(aws.keys(prefix))
    files = {k for k in keys if k.endswith(".instruction")}
    assert files == {k + ".instruction" for k in seeded.encrypted}  # none missing, none orphaned
    for k in seeded.plaintext:
        assert k + ".instruction" not in keys


def kill_at_report_lines(aws, args: list[str], report: Path, lines: int, timeout: float = 120) -> bool:
    """Start a worker and SIGKILL it once its report has ``lines`` lines; True if it was killed."""
    proc = subprocess.Popen(cli(*args), env=worker_env(aws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if report.exists() and len(report.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


@pytest.fixture
def keys(aws, tmp_path):
    return make_keys(aws, tmp_path / "keys")


def test_mixed_prefix_migrates_with_exact_counts(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "mixed/", 140, keys)
    report = tmp_path / "report.jsonl"
    proc = run(aws, *run_args(aws, keys, "mixed/", "--report", str(report), "--concurrency", "8"))
    assert proc.returncode == 0, proc.stderr
    lines = report_lines(report)
    summary = lines[-1]["summary"]
    assert (summary["migrated"], summary["skipped"], summary["failed"]) == (len(seeded.encrypted), len(seeded.plaintext), 0)
    assert summary["reasons"] == {"migrated:migrated": len(seeded.encrypted), "skipped:not-encrypted": len(seeded.plaintext)}
    per_object = [line for line in lines if "key" in line]
    assert len(per_object) == 140 and {line["key"] for line in per_object} == set(seeded.encrypted) | set(seeded.plaintext)
    for line in per_object:
        if line["outcome"] == "migrated":
            assert {"format", "wrap", "location"} <= set(line)
    assert_all_readable(aws, seeded)
    assert_one_instruction_file_each(aws, "mixed/", seeded)


def test_plan_and_dry_run_write_nothing(aws, keys):
    seeded = seed_mixed(aws, "plan/", 42, keys)
    before = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys("plan/")}
    proc = run(aws, "plan", "--bucket", aws.bucket, "--prefix", "plan/", *keys.cli_args(), "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.splitlines()[-1])["plan"]
    assert plan["planned"] == len(seeded.encrypted) and plan["skipped"] == len(seeded.plaintext)
    assert sum(plan["formats"].values()) == len(seeded.encrypted)
    assert set(plan["source_keys"]) == {str(keys.aes), str(keys.rsa)}
    assert plan.get("kms_requests", {}) == {}
    dry = run(aws, *run_args(aws, keys, "plan/", "--dry-run"))
    assert dry.returncode == 0, dry.stderr
    after = {k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ETag"] for k in aws.keys("plan/")}
    assert after == before


def test_kill_9_at_several_points_then_resume_is_exact(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "kill/", 420, keys)
    checkpoint = tmp_path / "cp.json"
    report = tmp_path / "report.jsonl"
    args = run_args(aws, keys, "kill/", "--checkpoint", str(checkpoint), "--report", str(report), "--concurrency", "4")
    kills = sum(kill_at_report_lines(aws, args, report, lines) for lines in (15, 90, 170, 250, 330))
    assert kills >= 4
    final = run(aws, *args)
    assert final.returncode == 0, final.stderr
    state = FileCheckpointStore(checkpoint).load()
    assert state.done
    counters = state.counters
    assert (counters["scanned"], counters["migrated"], counters["skipped"], counters["failed"]) == (
        420, len(seeded.encrypted), len(seeded.plaintext), 0)
    assert_all_readable(aws, seeded)
    assert_one_instruction_file_each(aws, "kill/", seeded)
    # A finished checkpoint makes another run a no-op.
    again = run(aws, *args)
    assert again.returncode == 0 and report_lines(report)[-1]["summary"]["migrated"] == len(seeded.encrypted)


def test_sigterm_stops_cleanly_and_resumes(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "term/", 200, keys)
    checkpoint = tmp_path / "cp.json"
    report = tmp_path / "report.jsonl"
    args = run_args(aws, keys, "term/", "--checkpoint", str(checkpoint), "--report", str(report), "--concurrency", "4")
    proc = subprocess.Popen(cli(*args), env=worker_env(aws), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (report.exists() and len(report.read_text().splitlines()) >= 40):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 4  # EXIT_INTERRUPTED
    state = FileCheckpointStore(checkpoint).load()
    assert not state.done and state.after is not None and state.counters["scanned"] >= 40
    assert run(aws, *args).returncode == 0
    state = FileCheckpointStore(checkpoint).load()
    assert state.done and state.counters["migrated"] == len(seeded.encrypted)
    assert_one_instruction_file_each(aws, "term/", seeded)


def test_throttling_and_faults_on_10_percent_of_calls_fail_nothing(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "faults/", 150, keys)
    proxy = FaultProxy(aws.server.endpoint).start()
    try:
        proxy.configure(0.10, faults=("slowdown", "error500", "reset"), seed=3)
        report = tmp_path / "report.jsonl"
        proc = run(aws, *run_args(aws, keys, "faults/", "--report", str(report), "--concurrency", "8"), endpoint=proxy.endpoint)
    finally:
        proxy.stop()
    assert proc.returncode == 0, [l for l in report_lines(report) if l.get("outcome") == "failed"][:5]
    summary = report_lines(report)[-1]["summary"]
    assert summary["failed"] == 0 and summary["migrated"] == len(seeded.encrypted)
    injected = proxy.stats["slowdown"] + proxy.stats["error500"] + proxy.stats["reset"]
    assert injected >= 50, proxy.stats
    faults = summary["faults_retried"]
    assert faults.get("throttled", 0) >= 1 and faults.get("server_errors", 0) >= 1
    print(f"\nfault injection: proxy {dict(proxy.stats)}; worker absorbed {faults}; requests {summary['requests']}")
    assert_all_readable(aws, seeded)


def test_bad_objects_get_specific_reasons_and_the_rest_migrate(aws, keys, tmp_path):
    seeded = seed_mixed(aws, "bad/", 28, keys, plaintext_every=0)
    good = dict(seeded.encrypted)
    iv = "AAAAAAAAAAAAAAAAAAAAAA=="
    bad = {
        "bad/corrupt-key": ({"x-amz-key-v2": "not base64!", "x-amz-iv": iv, "x-amz-wrap-alg": "AES/GCM"}, "malformed-envelope"),
        "bad/conflict": ({"x-amz-key": "AAAA", "x-amz-key-v2": "AAAA", "x-amz-iv": iv}, "conflicting-envelope"),
        "bad/unknown-wrap": ({"x-amz-key-v2": "AAAA", "x-amz-iv": iv, "x-amz-wrap-alg": "ROT13"}, "unknown-wrap-algorithm"),
        "bad/unknown-key": (None, "wrong-key"),
    }
    for key, (metadata, _) in bad.items():
        if metadata is None:
            from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
            from keymigration.formats.envelope import WrapAlgorithm
            from tests.unit.keys import aes

            put_encrypted(aws.s3, aws.bucket, key, encrypt_object(b"x", fmt="v2", wrap=WrapAlgorithm.AES_GCM, master=aes()))
        else:
            aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=b"0" * 32, Metadata=metadata)
    aws.s3.put_object(Bucket=aws.bucket, Key="bad/plain", Body=b"hello")
    report = tmp_path / "report.jsonl"
    proc = run(aws, *run_args(aws, keys, "bad/", "--report", str(report)))
    assert proc.returncode == EXIT_FAILED_OBJECTS, proc.stderr  # finished, with failed objects
    by_key = {line["key"]: line for line in report_lines(report) if "key" in line}
    for key, (_, reason) in bad.items():
        assert (by_key[key]["outcome"], by_key[key]["reason"]) == ("failed", reason), by_key[key]
        assert key + ".instruction" not in aws.keys("bad/")
    assert (by_key["bad/plain"]["outcome"], by_key["bad/plain"]["reason"]) == ("skipped", "not-encrypted")
    assert all(by_key[k]["outcome"] == "migrated" for k in good)


def test_max_failures_stops_early(aws, keys, tmp_path):
    for i in range(30):
        aws.s3.put_object(Bucket=aws.bucket, Key=f"stop/{i:03d}", Body=b"0" * 32,
                          Metadata={"x-amz-key-v2": "AAAA", "x-amz-iv": "AAAA", "x-amz-wrap-alg": "AES/GCM"})
    report = tmp_path / "report.jsonl"
    proc = run(aws, *run_args(aws, keys, "stop/", "--report", str(report), "--max-failures", "5", "--concurrency", "2"))
    assert proc.returncode == EXIT_TOO_MANY_FAILURES, proc.stderr
    summary = report_lines(report)[-1]["summary"]
    assert 5 <= summary["failed"] < 30 and "max failures" in summary["stopped"]


def test_bad_configuration_changes_nothing(aws, keys, tmp_path):
    seed_mixed(aws, "cfg/", 5, keys)
    before = sorted(aws.keys("cfg/"))
    bad_key = tmp_path / "bad.key"
    bad_key.write_bytes(b"not a key at all, 41 bytes long.........")
    cases = [
        ["run", "--bucket", aws.bucket, "--prefix", "cfg/", "--source-key", str(bad_key), "--kms-key-id", aws.target_key],
        ["run", "--bucket", aws.bucket, "--prefix", "cfg/", "--source-key", str(tmp_path / "missing"), "--kms-key-id", aws.target_key],
        ["run", "--bucket", aws.bucket, "--prefix", "cfg/", *keys.cli_args(), "--kms-key-id", "alias/does-not-exist"],
    ]
    for args in cases:
        proc = run(aws, *args, "--progress", "none")
        assert proc.returncode == EXIT_CONFIG, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert keys.aes.read_bytes().hex() not in proc.stderr
    assert sorted(aws.keys("cfg/")) == before


def test_checkpoint_of_another_migration_is_refused(aws, keys, tmp_path):
    seed_mixed(aws, "cp1/", 3, keys)
    checkpoint = tmp_path / "cp.json"
    assert run(aws, *run_args(aws, keys, "cp1/", "--checkpoint", str(checkpoint))).returncode == 0
    proc = run(aws, *run_args(aws, keys, "cp2/", "--checkpoint", str(checkpoint)))
    assert proc.returncode == EXIT_CONFIG and "another migration" in proc.stderr


def test_run_and_plan_warn_about_readers_a_mode_leaves_unable_to_read(aws, keys):
    """#13 item 9: .NET reads KMS envelopes only from object metadata, so a cut-over leaves it
    unable to read; in instruction-file mode the metadata-first readers keep the old envelope."""
    cut = run(aws, "plan", "--bucket", aws.bucket, "--prefix", "none/", *keys.cli_args(), "--mode", "cutover", "--progress", "none")
    assert cut.returncode == 0, cut.stderr
    warnings = [line for line in cut.stderr.splitlines() if "reader: " in line]
    assert len(warnings) == 1 and ".NET" in warnings[0] and "object metadata only" in warnings[0]
    files = run(aws, *run_args(aws, keys, "none/"))
    assert files.returncode == 0, files.stderr
    warned = [line.split("reader: ")[1] for line in files.stderr.splitlines() if "reader: " in line]
    assert sorted(w.split(" keeps ")[0].split(" cannot ")[0] for w in warned) == [
        ".NET Amazon.Extensions.S3.Encryption V2/V4", "Go S3EC v3/v4", "Java S3EC v3/v4", "Python S3EC v4"]
