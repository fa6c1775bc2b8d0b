#!/usr/bin/env python3
"""Benchmark: reading an S3 Inventory (CSV, gzip) as the worker does: rows/s and peak RSS.

Writes an inventory of N rows (the versioned schema, 8 columns; keys like S3's, URL-encoded)
into a moto S3 server, then, in a fresh process per size, runs ``InventorySource.items`` over
all of it: the manifest and its checksum, each data file's MD5 pass and its parse pass (two
GETs), gzip, CSV, key decoding, the row filters. Prints rows/s and the process's peak RSS
(VmHWM), and the rate of a local pass (gzip, CSV and key decoding of bytes in memory, no S3,
no filters) to show what the parsing alone costs.

    python bench/inventory_bench.py                   # 100,000 and 1,000,000 rows
    python bench/inventory_bench.py --rows 20000 --reps 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keymigration.demo.standins import FAKE_CREDENTIALS, MotoServer  # noqa: E402
from tests.support.inventory import Row, write_inventory  # noqa: E402

SOURCE = "inventoried"
DESTINATION = "inventories"

CHILD = r"""
import json, sys, time
from collections import Counter
import boto3
from keymigration.migrate.checkpoint import Checkpoint
from keymigration.migrate.inventory import InventorySource, load_manifest, select_files

url, endpoint = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint)
started = time.perf_counter()
cpu = time.process_time()
manifest = load_manifest(s3, url)
source = InventorySource(s3, manifest, manifest.source_bucket, "", (".instruction", ".keymigration-backup"),
                         select_files(len(manifest.files), None))
n = sum(1 for _ in source.items(Checkpoint(manifest.source_bucket, "", ".instruction", "t"), Counter()))
elapsed = time.perf_counter() - started
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"objects": n, "rows": source.rows_read, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu,
                  "peak_rss_mb": hwm / 1024}))
"""

LOCAL = r"""
import csv, gzip, io, json, sys, time
from keymigration.migrate.inventory import decode_key
data = [open(p, "rb").read() for p in sys.argv[1:]]
started = time.perf_counter()
n = 0
for body in data:
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as raw:
        for row in csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
            decode_key(row[1])
            n += 1
print(json.dumps({"rows": n, "seconds": time.perf_counter() - started}))
"""


def rows(count: int, start: int = 0):
    for i in range(start, start + count):
        if i % 50 == 49:
            yield Row(f"data/2026/{i % 12 + 1:02d}/{i % 28 + 1:02d}/old version {i:09d}.bin", latest=False)
        else:
            yield Row(f"data/2026/{i % 12 + 1:02d}/{i % 28 + 1:02d}/object+{i:09d}.bin", size=i % 100000)


def build(s3, count: int, files: int) -> str:
    per = -(-count // files)
    return write_inventory(s3, DESTINATION, SOURCE, [rows(min(per, count - f * per), f * per) for f in range(files)],
                           prefix=f"n{count}")


def measure(url: str, endpoint: str) -> dict:
    env = {**os.environ, **FAKE_CREDENTIALS}
    out = subprocess.run([sys.executable, "-c", CHILD, url, endpoint], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def local_rate(s3, url: str, tmp: Path) -> float:
    from keymigration.migrate.inventory import load_manifest

    manifest = load_manifest(s3, url)
    paths = []
    for f in manifest.files:
        path = tmp / Path(f.key).name
        path.write_bytes(s3.get_object(Bucket=manifest.data_bucket, Key=f.key)["Body"].read())
        paths.append(str(path))
    out = subprocess.run([sys.executable, "-c", LOCAL, *paths], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return result["rows"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--files", type=int, default=4, help="data files per inventory")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    import tempfile

    results = []
    with MotoServer() as server, tempfile.TemporaryDirectory() as tmp:
        s3 = server.client("s3")
        s3.create_bucket(Bucket=DESTINATION)
        for count in (int(x) for x in args.rows.split(",")):
            t = time.perf_counter()
            url = build(s3, count, args.files)
            size = sum(o["Size"] for o in s3.list_objects_v2(Bucket=DESTINATION, Prefix=f"n{count}/")["Contents"])
            print(f"{count:,} rows: inventory written in {time.perf_counter() - t:.1f} s ({size / 1e6:.1f} MB gzip)", flush=True)
            runs = [measure(url, server.endpoint) for _ in range(args.reps)]
            rate = statistics.median(r["rows"] / r["seconds"] for r in runs)
            cpu_rate = statistics.median(r["rows"] / r["cpu_seconds"] for r in runs)
            local = local_rate(s3, url, Path(tmp))
            result = {"rows": count, "objects": runs[0]["objects"], "gzip_mb": round(size / 1e6, 2),
                      "rows_per_second": round(rate), "rows_per_cpu_second": round(cpu_rate),
                      "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                      "local_parse_rows_per_second": round(local), "runs": runs}
            results.append(result)
            print(f"  through S3 (moto): {rate:,.0f} rows/s ({cpu_rate:,.0f} per CPU second), "
                  f"peak RSS {result['peak_rss_mb']} MB; local parse only: {local:,.0f} rows/s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
