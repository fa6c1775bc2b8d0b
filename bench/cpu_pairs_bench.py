#!/usr/bin/env python3
"""Client CPU per object, user and system time apart: the worker at ``--verify envelope``
against the verifying floor, in alternating pairs on one moto server.

Each pair runs the two sides one after the other on their own prefix of ``--objects`` objects
(worker first in even pairs, floor first in odd ones), timing each with ``os.times()`` (this
process only: moto is another process). Prints each pair, then the medians of the per-pair
ratios: this machine's CPU speed drifts with other load by more than the differences left to
measure, and a pair's two sides see nearly the same drift (docs/performance.md).

    python bench/cpu_pairs_bench.py                          # 10 pairs of 300 objects, c = 8
    python bench/cpu_pairs_bench.py --concurrency 1 --objects 150 --pairs 8
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rewrap_bench as rb  # noqa: E402

from keymigration.demo.standins import FAKE_CREDENTIALS, MotoServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    os.environ.update(FAKE_CREDENTIALS)
    n, c = args.objects, args.concurrency
    key_file = Path(tempfile.mkdtemp(), "old.aes")
    key_file.write_bytes(os.urandom(32))
    with MotoServer() as server:
        endpoint = server.endpoint
        s3, kms = rb.clients(endpoint, c)
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        segments = ["warm-w/", "warm-f/"] + [f"w{r}/" for r in range(args.pairs)] + [f"f{r}/" for r in range(args.pairs)]
        rb.seed(s3, segments, n, key_file)
        worker_clients = rb.worker_clients(endpoint, c)

        def run(side: str, segment: str) -> None:
            if side == "worker":
                rb.worker_segment(worker_clients, endpoint, key_arn, key_file, segment, c, "envelope")
            else:
                rb.floor_segment(s3, kms, key_arn, segment, c, verifying=True)

        run("worker", "warm-w/")
        run("floor", "warm-f/")
        pairs = []
        for r in range(args.pairs):
            measured = {}
            for side in ("worker", "floor") if r % 2 == 0 else ("floor", "worker"):
                before, wall = os.times(), time.perf_counter()
                run(side, f"{side[0]}{r}/")
                after = os.times()
                measured[side] = {"user_ms": 1e3 * (after.user - before.user) / n, "sys_ms": 1e3 * (after.system - before.system) / n,
                                  "objects_per_s": n / (time.perf_counter() - wall)}
            pairs.append(measured)
            print(json.dumps({"pair": r, **{side: {k: round(v, 2) for k, v in m.items()} for side, m in measured.items()}}), flush=True)

    def ratio(of) -> float:
        return round(statistics.median(of(p["worker"]) / of(p["floor"]) for p in pairs), 3)

    print(json.dumps({"concurrency": c, "objects": n, "pairs": args.pairs,
                      "worker_over_floor_cpu": ratio(lambda m: m["user_ms"] + m["sys_ms"]),
                      "worker_over_floor_user": ratio(lambda m: m["user_ms"]), "worker_over_floor_sys": ratio(lambda m: m["sys_ms"]),
                      "worker_over_floor_throughput": ratio(lambda m: m["objects_per_s"]),
                      "floor_cpu_ms_per_object": round(statistics.median(p["floor"]["user_ms"] + p["floor"]["sys_ms"] for p in pairs), 2),
                      "worker_cpu_ms_per_object": round(statistics.median(p["worker"]["user_ms"] + p["worker"]["sys_ms"] for p in pairs), 2)}))


if __name__ == "__main__":
    main()
