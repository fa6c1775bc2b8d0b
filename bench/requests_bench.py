#!/usr/bin/env python3
"""Requests per object: what a migration of N objects costs in S3 and KMS requests, per mode and
--verify level, counted twice: by a proxy in front of the moto server (every request moto
served, retries included) and by the worker's own per-operation counters (the summary's
``requests``). Objects hold their envelope in metadata (V1 AES/CBC and V2 AES/GCM, alternating,
under an AES master key), as in ``rewrap_bench.py``; every run starts on a fresh bucket, with
ACLs disabled unless ``--acls enabled``. The per-run constants (DescribeKey, the bucket's ownership and Object Lock configuration) are
included, as a real run pays them.

    python bench/requests_bench.py                     # 200 objects, every mode and level
    python bench/requests_bench.py --objects 1000 --modes cutover --verify envelope
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (the test server, the proxy)

from keymigration.aws.clients import ClientOptions  # noqa: E402
from keymigration.demo.legacy_writer import encrypt_object  # noqa: E402
from keymigration.formats import envelope as e  # noqa: E402
from keymigration.formats.envelope import WrapAlgorithm as W  # noqa: E402
from keymigration.formats.source_keys import load_key_files  # noqa: E402
from keymigration.migrate.runner import Migration, RunOptions  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.moto_server import FAKE_CREDENTIALS, REGION, MotoServer  # noqa: E402

MODES = ("instruction-file", "cutover", "metadata")
LEVELS = ("none", "envelope", "sample", "body")


def seed(s3, bucket: str, count: int, key_file: Path) -> None:
    master, = load_key_files([str(key_file)])
    body = os.urandom(256)
    s3.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        fmt, wrap, cek = (("v1", W.LEGACY, e.CBC), ("v2", W.AES_GCM, e.GCM))[i % 2]
        enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master)
        s3.put_object(Bucket=bucket, Key=f"data/{i:07d}", Body=enc.body, Metadata=enc.fields)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))


def count_requests(
    server: MotoServer, key_arn: str, key_file: Path, mode: str, verify: str, count: int, run: int, acls: bool,
    confirm_interval: float = 600.0,
) -> dict:
    s3 = server.client("s3")
    bucket = f"req-{run}-{mode}-{verify}".replace("instruction-file", "if")
    seed(s3, bucket, count, key_file)
    if not acls:  # S3's default for new buckets (moto's buckets keep ACLs on)
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    proxy = FaultProxy(server.endpoint).start()
    proxy.log_requests = True
    try:
        options = RunOptions(
            bucket=bucket, prefix="data/", kms_key_id=key_arn, source_key_files=[str(key_file)], concurrency=8,
            verify=verify, mode=mode, progress="none", clients=ClientOptions(endpoint_url=proxy.endpoint, region=REGION),
            confirm_interval=confirm_interval,
        )
        summary = Migration(options).run().as_dict()
    finally:
        proxy.stop()
    assert summary["failed"] == 0 and summary["migrated"] == count, summary
    served = proxy.requests
    kms = sum(1 for r in served if r.kms)
    operations = {k.split(":", 1)[1]: round(v / count, 3) for k, v in sorted(summary["requests"].items())}
    return {
        "mode": mode,
        "verify": verify,
        "acls": "enabled" if acls else "disabled",
        "seconds": summary["elapsed_seconds"],
        "objects": count,
        "served_per_object": round(len(served) / count, 3),
        "s3_per_object": round((len(served) - kms) / count, 3),
        "kms_per_object": round(kms / count, 3),
        "operations_per_object": operations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--verify", default=",".join(LEVELS))
    parser.add_argument("--acls", choices=("enabled", "disabled"), default="disabled",
                        help="the bucket's ACLs: disabled (BucketOwnerEnforced, S3's default) or enabled (moto's default)")
    parser.add_argument("--confirm-interval", type=float, default=600.0,
                        help="seconds after which waiting writes are re-listed even before 1,000 gathered (a run's "
                        "default is 2; the default here counts one re-listing per 1,000 objects, as a worker at "
                        "500 objects/s or more makes)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.update(FAKE_CREDENTIALS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as server:
        key_file = Path(tmp) / "old.aes"
        key_file.write_bytes(os.urandom(32))
        key_arn = server.client("kms").create_key()["KeyMetadata"]["Arn"]
        for run, (mode, verify) in enumerate((m, v) for m in args.modes.split(",") for v in args.verify.split(",")):
            row = count_requests(server, key_arn, key_file, mode, verify, args.objects, run, args.acls == "enabled", args.confirm_interval)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
