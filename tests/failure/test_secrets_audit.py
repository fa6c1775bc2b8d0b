"""Secrets audit: every command, at debug level with JSON logs, through injected faults and
failing objects; then logs, reports, checkpoints, the bucket itself and exception texts are
scanned for the master keys and every data key, raw, hex and base64: zero hits."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from cryptography.hazmat.primitives import serialization

from keymigration.aws.kms import KmsKeys
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.errors import KmsError, UnwrapError
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.formats.unwrap import unwrap_data_key
from keymigration.migrate import EXIT_CONFIG, EXIT_FAILED_OBJECTS, EXIT_OK
from tests.support.fault_proxy import FaultProxy
from tests.unit.keys import _rsa_private

KINDS = [
    ("v1", W.LEGACY, e.CBC, "aes"), ("v1", W.LEGACY, e.CBC, "rsa"), ("v2", W.AES_WRAP, e.GCM, "aes"),
    ("v2", W.AES_GCM, e.GCM, "aes"), ("v2", W.RSA_OAEP_SHA256, e.GCM, "rsa"), ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa"),
    ("v2", W.KMS, e.CBC, "kms"), ("v2", W.KMS_CONTEXT, e.GCM, "kms"), ("v3", W.AES_GCM, None, "aes"),
    ("v3", W.RSA_OAEP_SHA1, None, "rsa"), ("v3", W.KMS_CONTEXT, None, "kms"),
]


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could leak into text or bytes."""
    b64 = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, b64.rstrip(b"="), url, url.rstrip(b"="),
            json.dumps(secret.hex()).encode()]


def hits(haystacks: dict[str, bytes], secrets: dict[str, bytes]) -> list[str]:
    found = []
    for where, data in haystacks.items():
        for name, secret in secrets.items():
            if any(form in data for form in forms(secret)):
                found.append(f"{name} in {where}")
    return found


def test_no_key_material_anywhere(aws, moto_server, tmp_path):
    aes_key = os.urandom(32)
    (tmp_path / "old.aes").write_bytes(aes_key)
    private = _rsa_private(21)
    (tmp_path / "old.pem").write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    old_kms = aws.new_kms_key()
    aes, = load_key_files([str(tmp_path / "old.aes")])
    rsa, = load_key_files([str(tmp_path / "old.pem")])
    numbers = private.private_numbers()
    secrets = {
        "AES master key": aes_key,
        "RSA private exponent": numbers.d.to_bytes((numbers.d.bit_length() + 7) // 8, "big"),
        "RSA prime p": numbers.p.to_bytes((numbers.p.bit_length() + 7) // 8, "big"),
    }
    for i in range(3 * len(KINDS)):
        fmt, wrap, cek, kind = KINDS[i % len(KINDS)]
        data_key = os.urandom(32)
        secrets[f"data key {i}"] = data_key
        enc = encrypt_object(os.urandom(50 + i), fmt=fmt, wrap=wrap, cek_alg=cek, master={"aes": aes, "rsa": rsa}.get(kind),
                             kms_client=aws.kms, kms_key_id=old_kms, data_key=data_key)
        put_encrypted(aws.s3, aws.bucket, f"audit/{i:03d}", enc, "instruction-file" if i % 4 == 0 else "metadata")
    # Objects that fail: wrong master key, corrupt envelope.
    from tests.unit.keys import aes as other_aes

    wrong_dk = os.urandom(32)
    secrets["data key (wrong-key object)"] = wrong_dk
    put_encrypted(aws.s3, aws.bucket, "audit/wrong-key", encrypt_object(b"x" * 20, fmt="v2", wrap=W.AES_GCM, master=other_aes(), data_key=wrong_dk))
    aws.s3.put_object(Bucket=aws.bucket, Key="audit/corrupt", Body=bytes(32), Metadata={"x-amz-key-v2": "!!", "x-amz-iv": "AAAA"})

    proxy = FaultProxy(moto_server.endpoint).start()
    proxy.configure(0.1, faults=("slowdown", "error500", "reset"), seed=11)
    env = {**os.environ, **moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    keys = ["--source-key", str(tmp_path / "old.aes"), "--source-key", str(tmp_path / "old.pem"), "--source-kms-key-id", old_kms]
    common = ["--bucket", aws.bucket, "--prefix", "audit/", "--progress", "json"]
    commands = [
        ["plan", *common, *keys],
        ["run", *common, *keys, "--kms-key-id", aws.target_key, "--verify", "body", "--checkpoint", str(tmp_path / "cp.json"),
         "--report", str(tmp_path / "run.jsonl")],
        ["run", *common, *keys, "--kms-key-id", aws.target_key, "--mode", "cutover", "--report", str(tmp_path / "cutover.jsonl")],
        ["verify", *common, "--kms-key-id", aws.target_key, "--lookup", "default", "--report", str(tmp_path / "verify.jsonl")],
        ["rollback", *common, "--report", str(tmp_path / "rollback.jsonl")],
        ["prune-backups", *common, "--kms-key-id", aws.target_key, "--report", str(tmp_path / "prune.jsonl")],
        ["run", *common, *keys, "--kms-key-id", aws.target_key, "--mode", "metadata", "--report", str(tmp_path / "metadata.jsonl")],
        ["rollback", *common, "--report", str(tmp_path / "rollback-metadata.jsonl")],
        ["run", *common, "--source-key", str(tmp_path / "old.aes"), "--kms-key-id", "alias/missing"],  # a config error
    ]
    outputs: dict[str, bytes] = {}
    try:
        for n, args in enumerate(commands):
            proc = subprocess.run([sys.executable, "-m", "keymigration.cli", "--log-level", "debug", "--log-format", "json", *args],
                                  env=env, capture_output=True, timeout=300)
            outputs[f"stdout of {args[0]} #{n}"] = proc.stdout
            outputs[f"stderr of {args[0]} #{n}"] = proc.stderr
            assert proc.returncode in (EXIT_OK, EXIT_FAILED_OBJECTS, EXIT_CONFIG), proc.stderr[-2000:]
    finally:
        proxy.stop()
    assert b'"level": "debug"' in b"".join(outputs.values())  # debug logging really was on
    assert sum(proxy.stats[k] for k in ("slowdown", "error500", "reset")) > 20
    for path in tmp_path.glob("*.json*"):
        outputs[path.name] = path.read_bytes()
    # The bucket: instruction files and backups hold wrapped keys only.
    for key in aws.keys():
        outputs[f"s3://{key}"] = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
        outputs[f"s3://{key} metadata"] = json.dumps(aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"]).encode()
    # Exception texts of the failure paths, in process.
    texts = []
    for metadata_key in ("audit/wrong-key",):
        env_ = e.from_metadata(aws.s3.head_object(Bucket=aws.bucket, Key=metadata_key)["Metadata"])
        try:
            unwrap_data_key(env_, [aes, rsa])
        except UnwrapError as error:
            texts.append(repr(error) + str(error))
    try:
        KmsKeys(aws.kms, "alias/missing").encrypt(__import__("keymigration.formats.secrets", fromlist=["DataKey"]).DataKey(wrong_dk), env_)
    except KmsError as error:
        texts.append(repr(error) + str(error))
    outputs["exception texts"] = "\n".join(texts).encode()
    assert hits(outputs, secrets) == []
