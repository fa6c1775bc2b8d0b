#!/usr/bin/env python3
"""Benchmark: the operator's load on the API server, and its memory, at scale.

A KeyMigration of 1,000 prefixes with ``maxJobs: 100`` on the fake cluster (tests/support), the
real ``keymigration operator`` process against it. The benchmark plays the Job controller, the
kubelet and 100 workers: for every Job the operator creates it writes a Running pod and the Job's
status, then the worker's progress writes every 5 s (as ``keymigration run`` in a Job does), and
after ``--writes`` of them the worker's final write (done) and the Job's Complete condition, so the
operator starts the next prefix. Measured over a window once 100 Jobs run:

* requests per second the operator sends the API server, by verb and resource (its own
  User-Agent and kopf's: everything but the benchmark's), and the watch streams it holds open;
* the workers' progress writes per second (what the API server receives from them);
* the operator's resident memory (VmRSS at the end, VmHWM: its peak).

    python bench/operator_bench.py                    # 1,000 prefixes, 100 Jobs, 120 s window
    python bench/operator_bench.py --prefixes 300 --jobs 50 --seconds 60
    python bench/operator_bench.py --operator-pythonpath /tmp/old/operator   # another version's operator
    python bench/operator_bench.py --shards 10000 --finished 5000   # one prefix in 10,000 shards, half done

With ``--shards N`` the KeyMigration has one prefix with ``shards: {count: N}``; its plan (N - 1
boundaries, as the planner Job records it) and ``--finished`` shards' progress objects with a
recorded outcome (as the operator leaves them) are written before the operator starts, so the
measurement is of a migration well under way: N units in the watch cache, ``--jobs`` running.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keymigration.demo.standins import free_port  # noqa: E402
from keymigration.kube.api_types import KeyMigration, WorkUnit, shard_units  # noqa: E402
from keymigration.kube.jobs import ANNOTATION_PREFIX, progress_manifest  # noqa: E402
from tests.support.k8s.cluster import TEST_USER_AGENT, FakeCluster, condition  # noqa: E402
from tests.support.k8s.pods import PodWriter  # noqa: E402

NS, NAME, ACCOUNT = "bench", "bench-migration", "keymigration-worker"
KM = ("keymigration.io/v1alpha1", "KeyMigration")
KMP = ("keymigration.io/v1alpha1", "KeyMigrationProgress")
CRDS = [ROOT / "crds" / "keymigrations.keymigration.io.yaml", ROOT / "crds" / "keymigrationprogresses.keymigration.io.yaml"]
WRITE_INTERVAL = 5.0  # a worker's progress writes (kube/progress_store.py LIVE_INTERVAL)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Workers:
    """The Job controller, kubelet and workers of every Job the operator creates."""

    def __init__(self, cluster: FakeCluster, writes: int):
        self.cluster, self.writes = cluster, writes
        self.pods = PodWriter(cluster)
        self.started: set[str] = set()
        self.progress_writes = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=110)

    def run(self) -> None:
        while not self.stop.is_set():
            for job in self.cluster.list("batch/v1", "Job", NS):
                name = job["metadata"]["name"]
                if name not in self.started and not condition(job, "Complete"):
                    self.started.add(name)
                    self.pool.submit(self._worker, job)
            self.stop.wait(1.0)

    def _worker(self, job: dict) -> None:
        name = job["metadata"]["name"]
        pod = self.pods.create(job, f"{name}-bench", scheduled=True)
        self.pods.running(pod)
        self.cluster.patch_status("batch/v1", "Job", NS, name, {"status": {"active": 1, "ready": 1, "startTime": pod["metadata"]["creationTimestamp"]}})
        for write in range(1, self.writes + 1):
            if self.stop.wait(WRITE_INTERVAL):
                return
            done = write == self.writes
            counters = {"scanned": write * 100, "migrated": write * 95, "skipped": write * 5, "failed": 0}
            status = {"counters": counters, "checkpoint": '{"version": 1, "after": "%s%06d"}' % (job["metadata"]["annotations"][ANNOTATION_PREFIX], write * 100)}
            if done:
                status["done"] = True
            self.cluster.patch_status(*KMP, NS, name, {"status": status})
            with self.lock:
                self.progress_writes += 1
        self.pods.terminated(pod, 0, "", pod["metadata"]["creationTimestamp"])
        self.cluster.patch_status("batch/v1", "Job", NS, name, {"status": {"active": None, "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}})


SHARDED_PREFIX = "data/"


def spec_of(args) -> dict:
    spec = {"bucket": "bench-bucket", "sourceKmsKeyIds": ["alias/old"], "target": {"kmsKeyId": "alias/new"},
            "concurrency": {"maxJobs": args.jobs, "perJob": 16}, "kmsRequestsPerSecond": 100000}
    if args.shards:
        return {**spec, "prefixes": [SHARDED_PREFIX], "shards": {"count": args.shards}}
    return {**spec, "prefixes": [f"p{i:04d}/" for i in range(args.prefixes)]}


def seed_shards(cluster: FakeCluster, km: dict, shards: int, finished: int) -> float:
    """The plan and ``finished`` shards' recorded outcomes, as a run so far leaves them; returns
    the seconds it took."""
    started = time.monotonic()
    migration = KeyMigration.from_fields(km["spec"])
    planner = progress_manifest(km, migration, WorkUnit(SHARDED_PREFIX, planner=True))
    boundaries = [f"{SHARDED_PREFIX}{i * 100000:012d}" for i in range(1, shards)]
    cluster.create(planner)
    cluster.patch_status(*KMP, NS, planner["metadata"]["name"], {"status": {"shardPlan": {
        "boundaries": boundaries, "estimates": [100000] * shards, "estimatedObjects": 100000 * shards, "exact": False}}})
    done = {"counters": {"scanned": 100000, "migrated": 99000, "skipped": 1000, "failed": 0}, "done": True, "state": "Completed",
            "completionTime": "2026-11-30T00:00:00Z", "checkpoint": '{"version": 2, "after": null, "done": true}'}

    def one(unit: WorkUnit) -> None:
        obj = progress_manifest(km, migration, unit)
        cluster.create({**obj, "status": done})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, shard_units(SHARDED_PREFIX, boundaries)[:finished]))
    return time.monotonic() - started


def operator_requests(cluster: FakeCluster, before: set[int]) -> list:
    """The operator's requests served since ``before`` (ids of the requests served until then:
    the fake keeps the last 20,000, so an index would not do after seeding)."""
    return [r for r in list(cluster.requests) if id(r) not in before and r.headers.get("User-Agent") != TEST_USER_AGENT]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100, help="maxJobs: Jobs running at once")
    parser.add_argument("--seconds", type=float, default=120.0, help="the measured window, once every Job runs")
    parser.add_argument("--writes", type=int, default=12, help="progress writes per worker (every 5 s) before done")
    parser.add_argument("--shards", type=int, default=0, help="one prefix in this many shards (instead of --prefixes)")
    parser.add_argument("--finished", type=int, default=0, help="with --shards: shards already finished before the operator starts")
    parser.add_argument("--operator-log-level", default="warning")
    parser.add_argument("--operator-profile", metavar="FILE", help="run the operator under cProfile, its stats written to FILE")
    parser.add_argument("--operator-log", help="keep the operator's log in this file (default: in the fake cluster's workdir)")
    parser.add_argument("--operator-pythonpath", help="run the operator from another source tree (e.g. an older release's "
                        "operator/ directory, unpacked with git archive), for a comparison")
    args = parser.parse_args()

    with FakeCluster(crds=CRDS, namespaces=[NS]) as cluster:
        cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NS}})
        log = open(args.operator_log or Path(cluster.workdir) / "operator.log", "wb")
        seeded = 0.0
        km = None
        if args.shards:  # the KeyMigration, its plan and its finished shards first: the operator starts on a run under way
            km = cluster.create({"apiVersion": KM[0], "kind": KM[1], "metadata": {"name": NAME, "namespace": NS}, "spec": spec_of(args)})
            seeded = seed_shards(cluster, km, args.shards, args.finished)
        launched = time.monotonic()
        operator = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", args.operator_profile] if args.operator_profile else []),
             "-m", "keymigration.cli", "--log-format", "json", "--log-level", args.operator_log_level, "operator", "-n", NS,
             "--liveness", f"http://127.0.0.1:{free_port()}/healthz", "--metrics-port", "0"],
            env={**os.environ, **cluster.env(), **({"PYTHONPATH": args.operator_pythonpath} if args.operator_pythonpath else {})},
            stdout=log, stderr=subprocess.STDOUT)
        workers = Workers(cluster, args.writes)
        feeder = threading.Thread(target=workers.run, daemon=True)
        try:
            if km is None:
                time.sleep(3)
                cluster.create({"apiVersion": KM[0], "kind": KM[1], "metadata": {"name": NAME, "namespace": NS}, "spec": spec_of(args)})
            feeder.start()
            started = time.monotonic()
            while len(workers.started) < args.jobs:
                if time.monotonic() - started > 120:
                    raise SystemExit(f"only {len(workers.started)} Jobs after 120 s; see {log.name}")
                time.sleep(0.5)
            warmup = time.monotonic() - started
            since_launch = time.monotonic() - launched
            start_memory = memory_kib(operator.pid)
            time.sleep(WRITE_INTERVAL * 2)  # every worker writing
            seen = list(cluster.requests)  # held: their ids stay theirs
            mark, writes_before, t0 = {id(r) for r in seen}, workers.progress_writes, time.monotonic()
            cpu0 = cpu_seconds(operator.pid)
            time.sleep(args.seconds)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(operator.pid) - cpu0
            served = operator_requests(cluster, mark)
            writes = workers.progress_writes - writes_before
            memory = memory_kib(operator.pid)
            status = cluster.get(*KM, NS, NAME)["status"]
        finally:
            workers.stop.set()
            operator.terminate()
            operator.wait(timeout=30)
            workers.pool.shutdown(wait=False, cancel_futures=True)

        by_kind = collections.Counter()
        watches = collections.Counter()
        for request in served:
            plural = request.resource.plural if request.resource is not None and request.resource.plural else request.url.path
            verb = str(request.method.value)
            if request.params.get("watch") in ("true", "1"):
                watches[plural] += 1
            else:
                by_kind[f"{verb} {plural}"] += 1
        total = sum(by_kind.values())
        units = f"shards {args.shards} on one prefix ({args.finished} finished before the operator started; seeded in {seeded:.0f} s)" \
            if args.shards else f"prefixes {args.prefixes}"
        print(f"{units}, maxJobs {args.jobs}: {args.jobs} Jobs running after {warmup:.1f} s ({since_launch:.1f} s after the operator's "
              f"launch, VmRSS then {start_memory.get('VmRSS', 0) / 1024:.0f} MiB); window {elapsed:.0f} s")
        print(f"workers' progress writes: {writes / elapsed:.1f}/s ({writes} in the window)")
        print(f"operator requests (watch streams aside): {total / elapsed:.2f}/s ({total} in the window)")
        for kind, count in by_kind.most_common():
            print(f"  {kind:<40} {count / elapsed:7.2f}/s  ({count})")
        print(f"operator watch requests opened in the window: {dict(watches) or 'none'}")
        print(f"operator memory: VmRSS {memory.get('VmRSS', 0) / 1024:.0f} MiB, peak VmHWM {memory.get('VmHWM', 0) / 1024:.0f} MiB")
        print(f"KeyMigration at the end: {status.get('prefixesDone')} done, {status['prefixCounts']}; "
              f"status {len(json.dumps(status)) / 1024:.0f} KiB, {len(status.get('prefixes') or ())} rows")
        print(f"operator CPU in the window: {cpu:.1f} s, {cpu / elapsed:.2f} of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
