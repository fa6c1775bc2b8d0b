"""Client work per object as instructions executed: the worker against the verifying floor.

CPU time on this shared 2-core machine swings by 10-25% from one segment to the next, more than
the differences being measured (docs/performance.md). Instructions executed do not: each side
runs as its own process under valgrind (callgrind, no cache simulation), once over 100 objects
and once over 300, each on its own bucket of one moto server (outside valgrind), and the
difference divided by 200 is the work per object with start-up (imports, clients) cancelled.
Repeated runs of the same code agree to about 0.2%.

Valgrind runs the worker about 50 times slower, which would shrink its batches of writes
confirmed by one re-listing (those of the last 2 s) to a few objects each; the worker here
confirms every 100 s of its slowed time instead, which at this machine's speed under moto is
closer to the batches of a real run (a few hundred objects at 200 objects/s).

Instructions are a proxy: they leave out the kernel's share (system calls: connecting, sending,
receiving), which the two sides pay alike except where a change removes system calls, so a CPU
ratio measured on a quiet machine is closer to 1 than the instruction ratio.

    python bench/instructions_bench.py                  # floor vs worker at --verify envelope
    python bench/instructions_bench.py --verify none    # against the plain floor

Needs valgrind (Debian: apt-get install valgrind). About five minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import rewrap_bench as rb  # noqa: E402

from keymigration.aws.clients import ClientOptions  # noqa: E402
from keymigration.demo.standins import FAKE_CREDENTIALS, REGION, MotoServer  # noqa: E402
from keymigration.migrate.runner import Migration, RunOptions  # noqa: E402

SIZES = (100, 300)


CONFIRM_INTERVAL = 100.0  # seconds under valgrind: about 2 s unslowed (the worker's default)


def one_side(side: str, endpoint: str, key_arn: str, key_file: str, segment: str, concurrency: int, verify: str) -> int:
    """The measured process: one side over one segment (as rewrap_bench runs it)."""
    if side == "floor":
        s3, kms = rb.clients(endpoint, concurrency)
        return rb.floor_segment(s3, kms, key_arn, segment, concurrency, verifying=verify != "none")
    clients = rb.worker_clients(endpoint, concurrency)
    settings = RunOptions(
        bucket=rb.bucket_of(segment), prefix="data/", kms_key_id=key_arn, source_key_files=[key_file], concurrency=concurrency,
        verify=verify, progress="none", clients=ClientOptions(endpoint_url=endpoint, region=REGION, concurrency=concurrency),
        confirm_interval=CONFIRM_INTERVAL,
    )
    summary = Migration(settings, clients=clients).run()
    assert summary.counters.failed == 0, summary.as_dict()
    return summary.counters.migrated


def instructions(args: list[str]) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--child", *args],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if not match or "objects " not in out.stdout:
        raise RuntimeError(f"valgrind run failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", default="envelope", choices=["none", "sample", "envelope"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--child", nargs=6, metavar=("SIDE", "ENDPOINT", "ARN", "KEYFILE", "SEGMENT", "VERIFY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, endpoint, arn, key_file, segment, verify = args.child
        print("objects", one_side(side, endpoint, arn, key_file, segment, args.concurrency, verify))
        return
    os.environ.update(FAKE_CREDENTIALS)
    key_file = Path(tempfile.mkdtemp(), "old.aes")
    key_file.write_bytes(os.urandom(32))
    with MotoServer() as server:
        s3, kms = rb.clients(server.endpoint, 8)
        arn = kms.create_key()["KeyMetadata"]["Arn"]
        runs = [(side, n) for side in ("floor", "worker") for n in SIZES]
        for side, n in runs:
            rb.seed(s3, [f"{side}-{n}/"], n, key_file)
        floor_verify = "envelope" if args.verify != "none" else "none"  # the verifying floor, or the plain one
        with ThreadPoolExecutor(2) as pool:  # one valgrind per core
            counts = dict(zip(runs, pool.map(lambda run: instructions([
                run[0], server.endpoint, arn, str(key_file), f"{run[0]}-{run[1]}/", floor_verify if run[0] == "floor" else args.verify,
                "--concurrency", str(args.concurrency),
            ]), runs)))
    per_object = {side: (counts[(side, SIZES[1])] - counts[(side, SIZES[0])]) / (SIZES[1] - SIZES[0]) for side in ("floor", "worker")}
    result = {
        "verify": args.verify,
        "concurrency": args.concurrency,
        "floor": "verifying" if args.verify != "none" else "plain",
        "floor_instructions_per_object": round(per_object["floor"]),
        "worker_instructions_per_object": round(per_object["worker"]),
        "worker_over_floor": round(per_object["worker"] / per_object["floor"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
