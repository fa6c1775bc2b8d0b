"""``keymigration demo``: the whole job on embedded stand-ins for S3 and KMS (moto's server, two
child processes on 127.0.0.1 that the demo starts and stops). No cloud, no cluster.

It writes a few thousand objects encrypted the old ways (AES and RSA master keys; V1 and V2;
envelopes in metadata and in instruction files; some plaintext), migrates them to a KMS key with
the same code a Kubernetes Job runs, reads every one back with only the KMS key, and prints a
summary. Exit 0 means every encrypted object is readable with the KMS key alone.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keymigration.aws.clients import ClientOptions
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.demo.standins import FAKE_CREDENTIALS, MotoServer
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate.runner import Migration, RunOptions, verify_process
from keymigration.migrate.worker import EXIT_OK

BUCKET = "keymigration-demo"
REGION = "us-east-1"
# (share of objects, format, wrap, content cipher, master key, envelope location)
MIX = [
    (30, "v1", W.LEGACY, e.CBC, "aes", "metadata"),
    (10, "v1", W.LEGACY, e.CBC, "rsa", "metadata"),
    (20, "v2", W.AES_GCM, e.GCM, "aes", "metadata"),
    (15, "v2", W.RSA_OAEP_SHA1, e.GCM, "rsa", "metadata"),
    (10, "v1", W.LEGACY, e.CBC, "aes", "instruction-file"),
    (10, "v2", W.AES_GCM, e.GCM, "aes", "instruction-file"),
    (5, None, None, None, None, None),  # plaintext: reported as not encrypted
]


def _write_keys(directory: Path) -> tuple[Path, Path]:
    aes_path = directory / "old-aes.key"
    aes_path.write_bytes(os.urandom(32))
    rsa_path = directory / "old-rsa.pem"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return aes_path, rsa_path


def _seed(s3, kms, count: int, aes_path: Path, rsa_path: Path, concurrency: int) -> dict[str, int]:
    aes_key, = load_key_files([str(aes_path)])
    rsa_key, = load_key_files([str(rsa_path)])
    rng = random.Random(7)
    weights = [m[0] for m in MIX]
    plan = [(f"data/{i // 100:03d}/object-{i:05d}.bin", rng.choices(MIX, weights)[0], rng.randrange(0, 4096)) for i in range(count)]
    written: dict[str, int] = {}

    def put(item):
        key, (_, fmt, wrap, cek, master, location), size = item
        body = os.urandom(size)
        if fmt is None:
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            return "plaintext"
        encrypted = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=aes_key if master == "aes" else rsa_key)
        put_encrypted(s3, BUCKET, key, encrypted, location=location)
        return f"{fmt} {wrap} ({master}), envelope in {location}"

    with ThreadPoolExecutor(concurrency) as pool:
        for kind in pool.map(put, plan):
            written[kind] = written.get(kind, 0) + 1
    return written


def run_demo(objects: int = 1500, concurrency: int = 16, progress: str = "auto", out=sys.stdout) -> int:
    s3_server, kms_server = MotoServer(), MotoServer()
    for server in (s3_server, kms_server):
        server.start()
    for name, value in FAKE_CREDENTIALS.items():
        os.environ[name] = value
    try:
        with tempfile.TemporaryDirectory(prefix="keymigration-demo-") as tmp:
            directory = Path(tmp)
            clients = ClientOptions(
                s3_endpoint_url=s3_server.endpoint, kms_endpoint_url=kms_server.endpoint, region=REGION, concurrency=concurrency
            )
            settings = RunOptions(
                bucket=BUCKET,
                prefix="data/",
                kms_key_id="alias/keymigration-demo",
                source_key_files=[],
                concurrency=concurrency,
                report=str(directory / "report.jsonl"),
                checkpoint=str(directory / "checkpoint.json"),
                clients=clients,
                progress=progress,
            )
            aes_path, rsa_path = _write_keys(directory)
            settings.source_key_files = [str(aes_path), str(rsa_path)]
            migration = Migration(settings)
            s3, kms = migration.s3, migration.kms_client
            s3.create_bucket(Bucket=BUCKET)
            key_id = kms.create_key(Description="keymigration demo target")["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName="alias/keymigration-demo", TargetKeyId=key_id)

            out.write(f"keymigration demo: S3 stand-in at {s3_server.endpoint}, KMS stand-in at {kms_server.endpoint}\n")
            started = time.monotonic()
            written = _seed(s3, kms, objects, aes_path, rsa_path, concurrency)
            out.write(f"wrote {objects} objects the old way in {time.monotonic() - started:.1f} s:\n")
            for kind, n in sorted(written.items()):
                out.write(f"  {n:>6}  {kind}\n")

            out.write("\nmigrating to alias/keymigration-demo (kms+context), verifying each new envelope...\n")
            migrated = migration.run(description="migrating").as_dict()
            out.write("\nreading every object back with only the KMS key (instruction file)...\n")
            verify_settings = RunOptions(**{**settings.__dict__, "checkpoint": None, "report": None, "verify": "none"})
            checked = Migration(verify_settings).run(lambda m: verify_process(m, ".instruction"), description="verifying").as_dict()
    finally:
        s3_server.stop()
        kms_server.stop()

    rows = [
        ("objects", migrated["scanned"]),
        ("migrated", migrated["migrated"]),
        ("skipped (not encrypted)", migrated["reasons"].get("skipped:not-encrypted", 0)),
        ("failed", migrated["failed"]),
        ("readable with KMS key only", checked["verified"]),
        ("unreadable", checked["failed"]),
        ("KMS requests", sum(migrated.get("kms_requests", {}).values())),
        ("migration rate (objects/s)", migrated.get("objects_per_second")),
    ]
    out.write("\n" + "-" * 44 + "\n")
    for name, value in rows:
        out.write(f"  {name:<30} {value:>10}\n")
    out.write("-" * 44 + "\n")
    encrypted = migrated["scanned"] - migrated["reasons"].get("skipped:not-encrypted", 0)
    ok = migrated["failed"] == 0 and checked["failed"] == 0 and checked["verified"] == encrypted == migrated["migrated"]
    out.write("demo OK: every encrypted object is readable with the KMS key alone\n" if ok else "demo FAILED\n")
    return EXIT_OK if ok else 1
