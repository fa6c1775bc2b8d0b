"""Fixtures for the interoperability oracles: one real moto server per test module.

`interop_moto_server` is deliberately not called `moto_server`, so that it does not shadow the
session-scoped fixture of that name in tests/conftest.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.moto_server import MotoServer

from . import oracles


@dataclass
class InteropEnv:
    """A running moto server plus the keys every oracle test uses."""

    server: MotoServer
    endpoint: str
    s3: object  # boto3 S3 client for the server (plain, no encryption)
    kms: object  # boto3 KMS client for the server
    bucket: str
    old_kms_key: str  # ARN of the "old" KMS master key (writers use it)
    new_kms_key: str  # ARN of the "new" KMS master key (re-wrap target)
    aes_key: bytes  # 32-byte AES master key
    rsa_private_pem: str  # RSA-2048 private key, PKCS#8 PEM
    rsa_private_pem_pkcs1: str  # the same key, PKCS#1 ("RSA PRIVATE KEY") PEM


@pytest.fixture(scope="module")
def interop_moto_server():
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def interop(interop_moto_server) -> InteropEnv:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    s3 = interop_moto_server.client("s3")
    kms = interop_moto_server.client("kms")
    bucket = "interop-oracles"
    s3.create_bucket(Bucket=bucket)
    old_key = kms.create_key(Description="old master key")["KeyMetadata"]["Arn"]
    new_key = kms.create_key(Description="new master key")["KeyMetadata"]["Arn"]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return InteropEnv(
        server=interop_moto_server,
        endpoint=interop_moto_server.endpoint,
        s3=s3,
        kms=kms,
        bucket=bucket,
        old_kms_key=old_key,
        new_kms_key=new_key,
        aes_key=bytes(range(32)),
        rsa_private_pem=pkcs8,
        rsa_private_pem_pkcs1=pkcs1,
    )


def _missing(reason: str):
    # A missing oracle is a missing install step (make system-deps), never a silent pass.
    pytest.fail(f"interop oracle unavailable: {reason}; run `make system-deps`", pytrace=False)


@pytest.fixture(scope="session")
def needs_ruby():
    reason = oracles.ruby_available()
    if reason:
        _missing(reason)


@pytest.fixture(scope="session")
def needs_go():
    reason = oracles.go_available()
    if reason:
        _missing(reason)
    oracles.go_build()  # once per session (content-addressed cache across sessions)


@pytest.fixture(scope="session")
def needs_java():
    reason = oracles.java_available()
    if reason:
        _missing(reason)
    oracles.java_build()


@pytest.fixture(scope="module")
def key_files(interop, tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    aes = directory / "old.aes"
    aes.write_bytes(interop.aes_key)
    rsa = directory / "old-rsa.pem"
    rsa.write_text(interop.rsa_private_pem_pkcs1)  # PKCS#1 PEM, as many teams store it
    return aes, rsa
