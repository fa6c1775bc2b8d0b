#!/usr/bin/env python3
"""Benchmark: the shard planner's balance and cost on synthetic key layouts.

An in-memory ListObjectsV2 (tests/support/fake_listing.py; moto re-sorts the bucket on every
page, so it cannot list millions of keys) holds N keys in one of four layouts, the planner
plans k shards, and every key is assigned to its range. Printed per layout and k: the
ListObjectsV2 requests the planning made (against the N / page_size of a full listing), the
estimated object count against the true one, and the largest and smallest shard against the
mean. ``--page-size`` below S3's 1,000 stands in for a larger bucket: 1,000,000 keys at 100 a
page have the trie of 10,000,000 keys at 1,000 a page.

    python bench/shard_bench.py                       # 1,000,000 keys, page 100, k = 4, 64, 1024
    python bench/shard_bench.py --keys 200000 --page-size 1000 --shards 4,64
"""
from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keymigration.migrate.shards import plan_shards  # noqa: E402
from tests.support.fake_listing import FakeListing  # noqa: E402

FILES = (".instruction", ".keymigration-backup")


def layouts(n: int, rng: random.Random) -> dict[str, list[str]]:
    dated = []
    for i in range(n):  # days decay exponentially: the first day holds a quarter of the keys
        day = min(27, int(rng.expovariate(0.3)))
        dated.append(f"p/logs/2026-02-{day + 1:02d}/{rng.randrange(24):02d}/evt-{i}.json")
    with_files = []
    for i in range(n // 2):  # half the keys are instruction files, which are not counted
        key = f"p/u{rng.randrange(10**6):06d}/doc-{i}"
        with_files += [key, key + ".instruction"]
    return {
        "sequential": [f"p/obj-{i:09d}" for i in range(n)],
        "uuid": [f"p/{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(n)],
        "dated-skewed": dated,
        "with-files": with_files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--shards", default="4,64,1024")
    parser.add_argument("--seeds", type=int, default=3, help="planner seeds per case (the table shows the worst)")
    args = parser.parse_args()
    print(f"{'layout':13} {'objects':>9} {'shards':>6} {'requests':>8} {'full list':>9} {'est/true':>8} "
          f"{'max/mean':>8} {'min/mean':>8} {'seconds':>7}")
    for name, keys in layouts(args.keys, random.Random(1)).items():
        s3 = FakeListing(keys)
        objects = [k for k in s3.keys if not k.endswith(FILES)]
        for k in (int(x) for x in args.shards.split(",")):
            worst = None
            for seed in range(args.seeds):
                started = time.perf_counter()
                plan = plan_shards(s3, "b", "p/", shards=k, not_objects=FILES, page_size=args.page_size, seed=seed)
                elapsed = time.perf_counter() - started
                ends = [bisect.bisect_right(objects, s.key_range.end_key) for s in plan.shards[:-1]]
                counts = [b - a for a, b in zip([0, *ends], [*ends, len(objects)])]
                assert sum(counts) == len(objects)
                mean = len(objects) / len(plan.shards)
                row = (max(counts) / mean, min(counts) / mean, plan, elapsed)
                worst = row if worst is None or row[0] > worst[0] else worst
            high, low, plan, elapsed = worst
            print(f"{name:13} {len(objects):>9} {k:>6} {plan.requests:>8} {len(s3.keys) // args.page_size:>9} "
                  f"{plan.estimated_objects / len(objects):>8.2f} {high:>8.2f} {low:>8.2f} {elapsed:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
