#!/usr/bin/env python3
"""Benchmark: proving a weak unwrap by the GCM tag streams the body in constant memory.

A Java v1 AuthenticatedEncryption object wrapped with RSA PKCS#1 v1.5 (no x-amz-wrap-alg, AES/GCM
body) is proven by decrypting its whole body, 1 MiB at a time, before anything is written
(migrate/rewrap.py ``_prove_against_body``). This uploads such objects of growing size to a moto
server and re-wraps each one in this process, printing the peak of Python allocations
(tracemalloc) during the re-wrap and its time. The peak must not grow with the object. (The
process's RSS is no measure here: it made and uploaded the objects itself.)

    python bench/gcm_proof_bench.py                  # 16, 64 and 256 MiB
    python bench/gcm_proof_bench.py --sizes 8,32     # MiB
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc

from cryptography.hazmat.primitives.asymmetric import rsa

from keymigration.aws.kms import KmsKeys
from keymigration.demo.legacy_writer import encrypt_object
from keymigration.demo.standins import MotoServer
from keymigration.formats.envelope import GCM
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import RsaMasterKey
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="object sizes in MiB, comma-separated")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    master = RsaMasterKey("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with MotoServer() as server:
        s3, kms_client = server.client("s3"), server.client("kms")
        s3.create_bucket(Bucket="bench")
        target = kms_client.create_key()["KeyMetadata"]["Arn"]
        print(f"{'object':>8} {'peak traced':>12} {'re-wrap':>8}")
        for size in sizes:
            encrypted = encrypt_object(os.urandom(size * MIB), fmt="v2", wrap=W.LEGACY, cek_alg=GCM, master=master)
            s3.put_object(Bucket="bench", Key=f"ae-{size}", Body=encrypted.body, Metadata=encrypted.fields)
            del encrypted
            kms = KmsKeys(kms_client, target)
            kms.describe_target()
            worker = ObjectRewrapper(s3, kms, [master], RewrapOptions("bench"))
            tracemalloc.start()
            started = time.perf_counter()
            result = worker.process(f"ae-{size}")
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert result.reason == "migrated", result
            print(f"{size:>5} MiB {peak / MIB:>8.1f} MiB {elapsed:>6.2f} s")


if __name__ == "__main__":
    main()
