#!/usr/bin/env python3
"""Benchmark: 1, 2 and 4 shard workers in parallel on one prefix (docs/scale.md).

S3 and KMS each on their own moto server (separate processes). Each segment seeds a fresh
bucket with N objects (half V1 AES/CBC, half V2 AES/GCM, envelopes in metadata, 256-byte
bodies), plans k key ranges with the shard planner, and starts k ``keymigration run``
processes, one per range, at the same time. Measured per segment: wall time from the first
start to the last exit, objects/s, each worker's CPU (``os.wait4``: user + system), and the
two moto servers' CPU. Segments rotate the order of k in each round (1 2 4, 2 4 1, 4 1 2, ...)
and the figures are medians over rounds, because this machine is shared and its other load
comes in bursts (../shared/docs/benchmarking.md). Client CPU per object excludes the process's
start-up, measured separately as a run over an empty prefix.

Scaling efficiency = objects/s with k workers / (k x objects/s with one). On a machine whose
cores are all busy (two cores here, shared with other work, and the moto servers on them too)
that measures the machine; objects per CPU-second (workers and moto together) says whether
sharding itself costs anything.

    python bench/scale_bench.py                          # k = 1, 2, 4; 3 rounds; 1,200 objects
    python bench/scale_bench.py --rounds 1 --objects 400 --verify none
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.demo.standins import FAKE_CREDENTIALS, MotoServer
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate.shards import plan_shards

PREFIX = "data/"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def seed(s3, bucket: str, count: int, key_file: Path) -> None:
    master, = load_key_files([str(key_file)])
    body = os.urandom(256)
    s3.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        fmt, wrap, cek = ("v1", W.LEGACY, e.CBC) if i % 2 else ("v2", W.AES_GCM, e.GCM)
        put_encrypted(s3, bucket, f"{PREFIX}obj-{i:06d}", encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


class Bench:
    def __init__(self, s3_server: MotoServer, kms_server: MotoServer, key_file: Path, target: str, tmp: Path, args):
        self.s3_server, self.kms_server = s3_server, kms_server
        self.s3 = s3_server.client("s3")
        self.key_file, self.target, self.tmp, self.args = key_file, target, tmp, args
        self.env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
                    "AWS_ENDPOINT_URL_KMS": kms_server.endpoint}
        self.env.pop("AWS_ENDPOINT_URL", None)

    def command(self, bucket: str, prefix: str, verify: str, report: Path, shard: dict | None = None) -> list[str]:
        args = [sys.executable, "-m", "keymigration.cli", "run", "--bucket", bucket, f"--prefix={prefix}",
                "--source-key", str(self.key_file), "--kms-key-id", self.target, "--verify", verify,
                "--concurrency", str(self.args.concurrency), "--progress", "none", "--no-count", "--report", str(report)]
        if shard and shard["start_after"] is not None:
            args.append(f"--start-after={shard['start_after']}")
        if shard and shard["end_key"] is not None:
            args.append(f"--end-key={shard['end_key']}")
        return args

    def run_all(self, commands: list[list[str]]) -> tuple[float, list[float], float]:
        """Start the commands together; wall seconds, each one's CPU seconds, the servers' CPU."""
        servers = [self.s3_server.process.pid, self.kms_server.process.pid]
        server_cpu = sum(cpu_seconds(p) for p in servers)
        started = time.perf_counter()
        procs = [subprocess.Popen(c, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        cpus = []
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"worker exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            cpus.append(usage.ru_utime + usage.ru_stime)
        wall = time.perf_counter() - started
        return wall, cpus, sum(cpu_seconds(p) for p in servers) - server_cpu

    def startup_cpu(self, verify: str) -> float:
        bucket = f"empty-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=bucket)
        runs = [self.run_all([self.command(bucket, PREFIX, verify, self.tmp / "empty.jsonl")])[1][0] for _ in range(3)]
        return statistics.median(runs)

    def segment(self, workers: int, verify: str, startup: float) -> dict:
        bucket = f"scale-{workers}-{uuid.uuid4().hex[:8]}"
        seed(self.s3, bucket, self.args.objects, self.key_file)
        plan = plan_shards(self.s3, bucket, PREFIX, shards=workers, not_objects=(".instruction", ".keymigration-backup"))
        shards = [s.as_dict() for s in plan.shards]
        reports = [self.tmp / f"{bucket}-{i}.jsonl" for i in range(len(shards))]
        wall, cpus, server_cpu = self.run_all(
            [self.command(bucket, PREFIX, verify, reports[i], shard) for i, shard in enumerate(shards)])
        migrated = sum(json.loads(r.read_text().splitlines()[-1])["summary"]["migrated"] for r in reports)
        if migrated != self.args.objects:
            raise RuntimeError(f"{migrated} of {self.args.objects} migrated")
        n = self.args.objects
        return {"workers": workers, "verify": verify, "objects": n, "wall_seconds": round(wall, 2),
                "objects_per_second": round(n / wall, 1),
                "client_cpu_ms_per_object": round(1000 * (sum(cpus) - startup * len(cpus)) / n, 2),
                "client_cpu_ms_per_object_with_startup": round(1000 * sum(cpus) / n, 2),
                "moto_cpu_ms_per_object": round(1000 * server_cpu / n, 2),
                "objects_per_cpu_second": round(n / (sum(cpus) + server_cpu), 1),
                "shard_sizes": [s["estimated_objects"] for s in shards], "load_average": round(os.getloadavg()[0], 2)}


def summarize(segments: list[dict], workers: list[int]) -> list[dict]:
    out = []
    for verify in sorted({s["verify"] for s in segments}):
        base = None
        for k in workers:
            mine = [s for s in segments if s["workers"] == k and s["verify"] == verify]
            rate = statistics.median(s["objects_per_second"] for s in mine)
            base = base or (rate if k == 1 else None)
            out.append({
                "verify": verify, "workers": k, "segments": len(mine), "objects_per_second": rate,
                "speedup": round(rate / base, 2) if base else None,
                "scaling_efficiency": round(rate / (k * base), 2) if base else None,
                "client_cpu_ms_per_object": statistics.median(s["client_cpu_ms_per_object"] for s in mine),
                "client_cpu_ms_per_object_with_startup": statistics.median(
                    s["client_cpu_ms_per_object_with_startup"] for s in mine),
                "moto_cpu_ms_per_object": statistics.median(s["moto_cpu_ms_per_object"] for s in mine),
                "objects_per_cpu_second": statistics.median(s["objects_per_cpu_second"] for s in mine),
                "load_average": statistics.median(s["load_average"] for s in mine),
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1200, help="objects per segment (all k workers together)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="--concurrency of each worker")
    parser.add_argument("--verify", default="envelope", help="comma-separated --verify levels")
    parser.add_argument("--out", help="write the segments and the summary as JSON here")
    args = parser.parse_args()
    workers = [int(k) for k in args.workers.split(",")]
    segments = []
    with MotoServer() as s3_server, MotoServer() as kms_server, tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "old.aes"
        key_file.write_bytes(os.urandom(32))
        target = kms_server.client("kms").create_key()["KeyMetadata"]["Arn"]
        bench = Bench(s3_server, kms_server, key_file, target, Path(tmp), args)
        for verify in args.verify.split(","):
            startup = bench.startup_cpu(verify)
            print(f"--verify {verify}: start-up CPU of one worker {startup:.2f} s", flush=True)
            for r in range(args.rounds):
                order = workers[r % len(workers):] + workers[: r % len(workers)]
                for k in order:
                    result = bench.segment(k, verify, startup)
                    segments.append(result)
                    print(json.dumps(result), flush=True)
    summary = summarize(segments, workers)
    print("\nverify    k  objects/s  speedup  efficiency  client CPU ms/object (with start-up)  moto CPU ms/object"
          "  objects/CPU-s  load")
    for row in summary:
        print(f"{row['verify']:8} {row['workers']:2} {row['objects_per_second']:10} {row['speedup']:8} "
              f"{row['scaling_efficiency']:11} {row['client_cpu_ms_per_object']:10} ({row['client_cpu_ms_per_object_with_startup']})"
              f"{row['moto_cpu_ms_per_object']:26} {row['objects_per_cpu_second']:14} {row['load_average']:6}")
    if args.out:
        Path(args.out).write_text(json.dumps({"segments": segments, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
