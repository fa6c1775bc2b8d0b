#!/usr/bin/env python3
"""Benchmark: the re-wrap worker against the floor, on one moto server (S3 and KMS).

The floor is plain boto3 doing only the calls a re-wrap needs per object: its share of a
ListObjectsV2 page, HEAD, KMS Encrypt, PUT of an instruction file; one shared client per
service, a thread pool of ``c`` threads. The worker at ``--verify none`` is compared with it; at
``--verify envelope`` and ``sample`` with the *verifying floor*, which also KMS-decrypts each
new envelope before its PUT (what ``--verify envelope`` proves). The worker is ``keymigration run``'s code path
(runner.Migration) at the same ``c``. Both run against the same server, alternating in short
segments (F W W F), and the ratio is the median of the per-pair ratios, because whole-run
ratios on this shared machine drift with other load (docs/performance.md).

Then peak RSS of ``keymigration run`` (a separate process) at two prefix sizes.

    python bench/rewrap_bench.py                      # c = 1, 8, 32; RSS at 10k and 100k objects
    python bench/rewrap_bench.py --rss-objects 2000,20000 --reps 2   # quicker
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

from keymigration.aws.clients import ClientOptions, Telemetry, make_clients
from keymigration.demo.legacy_writer import encrypt_object
from keymigration.demo.standins import FAKE_CREDENTIALS, REGION, MotoServer
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate.runner import Migration, RunOptions

BUCKET = "bench"


def clients(endpoint: str, concurrency: int):
    config = Config(max_pool_connections=2 * concurrency + 8, retries={"mode": "standard", "max_attempts": 10})
    session = boto3.session.Session(region_name=REGION)
    return session.client("s3", endpoint_url=endpoint, config=config), session.client("kms", endpoint_url=endpoint, config=config)


def bucket_of(segment: str) -> str:
    """One bucket per segment: moto sorts a whole bucket for every ListObjectsV2 page, which
    would charge each segment for all the others (docs/performance.md)."""
    return f"{BUCKET}-{segment.strip('/').replace('/', '-').lower()}"


def seed(s3, segments: list[str], per_segment: int, key_file: Path, concurrency: int = 16) -> None:
    master, = load_key_files([str(key_file)])
    body = os.urandom(256)
    for segment in segments:
        s3.create_bucket(Bucket=bucket_of(segment))

    def put(item):
        segment, i = item
        fmt, wrap, cek = (("v1", W.LEGACY, e.CBC), ("v2", W.AES_GCM, e.GCM))[i % 2]
        enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master)
        s3.put_object(Bucket=bucket_of(segment), Key=f"data/{i:07d}", Body=enc.body, Metadata=enc.fields)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, [(p, i) for p in segments for i in range(per_segment)]))


def floor_segment(s3, kms, key_arn: str, segment: str, concurrency: int, verifying: bool = False) -> int:
    """The minimum per object: list share + HEAD + KMS Encrypt + PUT. ``verifying``: the
    verifying floor, with a KMS Decrypt of the new envelope (compared with the data key)
    before the PUT: the calls ``--verify envelope`` needs."""
    bucket = bucket_of(segment)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", ()) if not o["Key"].endswith((".floor", ".instruction"))]
    context = {"aws:x-amz-cek-alg": e.GCM}

    def one(key: str) -> None:
        s3.head_object(Bucket=bucket, Key=key)
        data_key = os.urandom(32)
        blob = kms.encrypt(KeyId=key_arn, Plaintext=data_key, EncryptionContext=context)["CiphertextBlob"]
        if verifying:
            opened = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context, KeyId=key_arn)["Plaintext"]
            assert opened == data_key
        s3.put_object(Bucket=bucket, Key=key + ".floor", Body=json.dumps({"x-amz-key-v2": e.b64encode(blob)}).encode())

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, keys))
    return len(keys)


def worker_clients(endpoint: str, concurrency: int):
    """The clients `keymigration run` builds (aws.make_clients: its configuration, timestamp
    parser and telemetry hooks), built once per concurrency as the floor's are: building them
    (loading the service models) costs about 0.15 s of CPU, which belongs to a run's start, not
    to each object."""
    return make_clients(ClientOptions(endpoint_url=endpoint, region=REGION, concurrency=concurrency), Telemetry())


def worker_segment(clients, endpoint: str, key_arn: str, key_file: Path, segment: str, concurrency: int, verify: str) -> int:
    settings = RunOptions(
        bucket=bucket_of(segment), prefix="data/", kms_key_id=key_arn, source_key_files=[str(key_file)], concurrency=concurrency,
        verify=verify, progress="none", clients=ClientOptions(endpoint_url=endpoint, region=REGION, concurrency=concurrency),
    )
    summary = Migration(settings, clients=clients).run()
    assert summary.counters.failed == 0, summary.as_dict()
    return summary.counters.migrated


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return n, time.perf_counter() - wall, time.process_time() - cpu


def load_average() -> float:
    return os.getloadavg()[0]


def throughput(endpoint: str, key_arn: str, key_file: Path, concurrencies, reps: int, segment: int, envelope_reps: int):
    plans = {}
    levels = ("none", "sample", "envelope")  # sample and envelope against the verifying floor
    for c in concurrencies:
        plans[c] = [("none", r) for r in range(reps)] + [(v, r) for v in levels[1:] for r in range(envelope_reps)]
    sizes = {c: segment or {1: 200, 8: 600}.get(c, 1200) for c in concurrencies}
    s3, kms = clients(endpoint, max(concurrencies))
    started = time.perf_counter()
    total = 0
    for c, runs in plans.items():
        prefixes = [f"c{c}/{verify}{r}/{part}{i}/" for verify, r in runs for i, part in enumerate("FWWF")]
        seed(s3, prefixes, sizes[c], key_file)
        total += len(prefixes) * sizes[c]
    print(f"seeded {total} objects in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for c, runs in plans.items():
        s3, kms = clients(endpoint, c)
        w_clients = worker_clients(endpoint, c)
        for verify in levels:
            ratios, floor_rates, worker_rates, floor_cpu, worker_cpu, loads, cpu_ratios = [], [], [], [], [], [], []
            for v, r in runs:
                if v != verify:
                    continue
                results = {}
                for i, part in enumerate("FWWF"):
                    prefix = f"c{c}/{verify}{r}/{part}{i}/"
                    loads.append(load_average())
                    if part == "F":
                        verifying = verify != "none"
                        results[i] = ("F",) + timed(lambda: floor_segment(s3, kms, key_arn, prefix, c, verifying))
                    else:
                        results[i] = ("W",) + timed(lambda: worker_segment(w_clients, endpoint, key_arn, key_file, prefix, c, verify))
                f = [x for x in results.values() if x[0] == "F"]
                w = [x for x in results.values() if x[0] == "W"]
                f_rate = sum(x[1] for x in f) / sum(x[2] for x in f)
                w_rate = sum(x[1] for x in w) / sum(x[2] for x in w)
                ratios.append(w_rate / f_rate)
                floor_rates.append(f_rate)
                worker_rates.append(w_rate)
                floor_cpu.append(1000 * sum(x[3] for x in f) / sum(x[1] for x in f))
                worker_cpu.append(1000 * sum(x[3] for x in w) / sum(x[1] for x in w))
                cpu_ratios.append(worker_cpu[-1] / floor_cpu[-1])  # each group's own: drift between groups cancels
            if not ratios:
                continue
            row = {
                "concurrency": c,
                "verify": verify,
                "floor": "verifying" if verify != "none" else "plain",
                "pairs": len(ratios),
                "segment_objects": sizes[c],
                "floor_objects_per_s": round(statistics.median(floor_rates), 1),
                "worker_objects_per_s": round(statistics.median(worker_rates), 1),
                "ratio_worker_over_floor": round(statistics.median(ratios), 3),
                "floor_cpu_ms_per_object": round(statistics.median(floor_cpu), 2),
                "worker_cpu_ms_per_object": round(statistics.median(worker_cpu), 2),
                "cpu_ratio_worker_over_floor": round(statistics.median(cpu_ratios), 3),
                "max_load_average": round(max(loads), 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def peak_rss(endpoint: str, key_arn: str, key_file: Path, count: int, concurrency: int, verify: str) -> dict:
    s3, _ = clients(endpoint, 16)
    segment = f"rss{count}"
    started = time.perf_counter()
    seed(s3, [segment], count, key_file)
    seeded = time.perf_counter() - started
    env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    command = [
        sys.executable, "-c",
        # VmHWM, not getrusage's ru_maxrss: Linux folds the pre-exec high-water mark of the
        # forking parent (this benchmark, which grows with N) into ru_maxrss.
        "import sys; from keymigration.cli import main; code = main(sys.argv[1:]); "
        "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')); "
        "print('PEAK_RSS_KB', hwm, file=sys.stderr); sys.exit(code)",
        "run", "--bucket", bucket_of(segment), "--prefix", "data/", "--source-key", str(key_file), "--kms-key-id", key_arn,
        "--concurrency", str(concurrency), "--verify", verify, "--progress", "none",
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {proc.stderr[-2000:]}")
    rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    row = {"objects": count, "peak_rss_mb": round(rss_kb / 1024, 1), "seconds": round(elapsed, 1),
           "objects_per_s": round(count / elapsed, 1), "seed_seconds": round(seeded, 1), "concurrency": concurrency}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--reps", type=int, default=3, help="F W W F groups per concurrency (verify=none)")
    parser.add_argument("--envelope-reps", type=int, default=1, help="groups with --verify envelope")
    parser.add_argument(
        "--segment", type=int, default=0,
        help="objects per segment (default: 200 at c=1, 600 at c=8, 1200 at c=32: a few seconds each, long "
        "enough that a run's start and drain do not dominate)",
    )
    parser.add_argument("--rss-objects", default="10000,100000")
    parser.add_argument("--rss-concurrency", type=int, default=32)
    parser.add_argument("--rss-verify", default="none")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.update(FAKE_CREDENTIALS)
    results = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": load_average()}}
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "old.aes"
        key_file.write_bytes(os.urandom(32))
        with MotoServer() as server:
            s3, kms = clients(server.endpoint, 8)
            key_arn = kms.create_key()["KeyMetadata"]["Arn"]
            if not args.skip_throughput:
                concurrencies = [int(c) for c in args.concurrency.split(",")]
                results["throughput"] = throughput(
                    server.endpoint, key_arn, key_file, concurrencies, args.reps, args.segment, args.envelope_reps
                )
        results["rss"] = []
        for count in [int(n) for n in args.rss_objects.split(",") if n]:
            with MotoServer() as server:  # a fresh server: moto's memory and listing cost grow
                s3, kms = clients(server.endpoint, 8)
                key_arn = kms.create_key()["KeyMetadata"]["Arn"]
                results["rss"].append(peak_rss(server.endpoint, key_arn, key_file, count, args.rss_concurrency, args.rss_verify))
    if len(results["rss"]) >= 2:
        first, last = results["rss"][0], results["rss"][-1]
        print(f"peak RSS {last['objects']} vs {first['objects']} objects: {last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
