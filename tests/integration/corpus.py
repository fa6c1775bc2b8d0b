"""A mixed prefix for worker tests: every format and location, plaintext, and bad objects."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from tests.unit.keys import _rsa_private

KINDS = [
    ("v1", W.LEGACY, e.CBC, "aes", "metadata"),
    ("v1", W.LEGACY, e.CBC, "rsa", "metadata"),
    ("v1", W.LEGACY, e.CBC, "aes", "instruction-file"),
    ("v2", W.AES_WRAP, e.GCM, "aes", "metadata"),
    ("v2", W.AES_GCM, e.GCM, "aes", "metadata"),
    ("v2", W.AES_GCM, e.GCM, "aes", "instruction-file"),
    ("v2", W.RSA_OAEP_SHA256, e.GCM, "rsa", "metadata"),
    ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa", "metadata"),
    ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa", "instruction-file"),
    ("v2", W.KMS, e.CBC, "kms", "metadata"),
    ("v2", W.KMS_CONTEXT, e.GCM, "kms", "metadata"),
    ("v3", W.AES_GCM, None, "aes", "metadata"),
    ("v3", W.RSA_OAEP_SHA1, None, "rsa", "instruction-file"),
    ("v3", W.KMS_CONTEXT, None, "kms", "metadata"),
]


@dataclass
class KeySet:
    directory: Path
    aes: Path
    rsa: Path
    old_kms: str

    def cli_args(self) -> list[str]:
        return ["--source-key", str(self.aes), "--source-key", str(self.rsa), "--source-kms-key-id", self.old_kms]


def make_keys(aws, directory: Path) -> KeySet:
    directory.mkdir(parents=True, exist_ok=True)
    aes = directory / "old.aes"
    aes.write_bytes(os.urandom(32))
    rsa = directory / "old.pem"
    rsa.write_bytes(_rsa_private(11).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return KeySet(directory, aes, rsa, aws.new_kms_key())


@dataclass
class Seeded:
    encrypted: dict[str, bytes] = field(default_factory=dict)  # key -> plaintext
    plaintext: list[str] = field(default_factory=list)


def seed_mixed(aws, prefix: str, count: int, keys: KeySet, plaintext_every: int = 10, concurrency: int = 16,
               masters: tuple[str, ...] = ("aes", "rsa", "kms")) -> Seeded:
    aes, = load_key_files([str(keys.aes)])
    rsa, = load_key_files([str(keys.rsa)])
    kinds = [k for k in KINDS if k[3] in masters]
    seeded = Seeded()

    def put(i: int):
        key = f"{prefix}obj-{i:06d}"
        body = os.urandom(i % 300)
        if plaintext_every and i % plaintext_every == plaintext_every - 1:
            aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=body)
            return key, None
        fmt, wrap, cek, kind, location = kinds[i % len(kinds)]
        master = {"aes": aes, "rsa": rsa}.get(kind)
        enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master, kms_client=aws.kms, kms_key_id=keys.old_kms)
        put_encrypted(aws.s3, aws.bucket, key, enc, location=location)
        return key, body

    with ThreadPoolExecutor(concurrency) as pool:
        for key, body in pool.map(put, range(count)):
            if body is None:
                seeded.plaintext.append(key)
            else:
                seeded.encrypted[key] = body
    return seeded
