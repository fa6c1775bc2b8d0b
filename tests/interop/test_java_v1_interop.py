"""Java v1 objects under an RSA key pair, laid out by the JDK's JCE as the AWS SDK for Java v1
writes them (tests/interop/java/JavaV1Layout.java), migrated by ``keymigration run`` in a separate
process and read back by Ruby, Go and the Python S3EC with only the KMS key (#13 item 3).

* AuthenticatedEncryption without a provider named BC: the data key is RSA PKCS#1 v1.5 with no
  ``x-amz-wrap-alg``, over an AES/GCM body. The PKCS#1 structure check alone is weak, so the key
  is proven by the body's GCM tag (the whole body, streamed) at every verify level.
* EncryptionOnly (CBC bodies) with several unpinned RSA keys: the last CBC block's padding adds
  8 bits per padding byte; a proof that stays above 2^-64 per object is required.
"""
from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keymigration.formats import envelope as e
from keymigration.migrate import EXIT_FAILED_OBJECTS

from . import oracles
from .test_context_interop import as_python_reads_them
from .test_rewrap_interop import body_for, run_cli

AE_SIZES = [0, 1, 15, 16, 17, 1024 * 1024 + 3]


def migrate(interop, prefix, *keys):
    args = ["run", "--bucket", interop.bucket, "--prefix", prefix, "--kms-key-id", interop.new_kms_key,
            "--report", "-", "--progress", "none"]
    for key in keys:
        args += ["--source-key", str(key)]
    proc = run_cli(interop, *args)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, {line["key"]: line for line in lines if "key" in line}


@pytest.fixture(scope="module")
def other_rsa(tmp_path_factory):
    """A second RSA key pair, configured alongside the right one (unpinned)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("other") / "other-rsa.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def test_the_layout_is_java_v1s(interop, needs_java):
    """What JavaV1Layout writes is what Java v1 AE (no BC) and EO write: checked field by field,
    the data key opened with PKCS#1 v1.5."""
    oracles.java_v1_put(interop.endpoint, [
        {"bucket": interop.bucket, "key": "java-v1-layout/ae", "body": b"hello", "mode": "AE", "rsa_private_pem": interop.rsa_private_pem},
        {"bucket": interop.bucket, "key": "java-v1-layout/eo", "body": b"hello", "mode": "EO", "rsa_private_pem": interop.rsa_private_pem},
    ])
    private = serialization.load_pem_private_key(interop.rsa_private_pem.encode(), password=None)
    ae = interop.s3.head_object(Bucket=interop.bucket, Key="java-v1-layout/ae")["Metadata"]
    assert set(ae) == {"x-amz-key-v2", "x-amz-iv", "x-amz-matdesc", "x-amz-cek-alg", "x-amz-tag-len", "x-amz-unencrypted-content-length"}
    assert (ae["x-amz-cek-alg"], ae["x-amz-tag-len"], ae["x-amz-matdesc"]) == (e.GCM, "128", "{}")
    assert len(private.decrypt(e.b64decode(ae["x-amz-key-v2"], "k"), padding.PKCS1v15())) == 32
    eo = interop.s3.head_object(Bucket=interop.bucket, Key="java-v1-layout/eo")["Metadata"]
    assert set(eo) == {"x-amz-key", "x-amz-iv", "x-amz-matdesc", "x-amz-unencrypted-content-length"}
    assert len(e.b64decode(eo["x-amz-iv"], "iv")) == 16
    assert e.from_metadata(ae).wrap is e.WrapAlgorithm.LEGACY and e.from_metadata(eo).format == "v1"


def test_java_v1_ae_rsa_without_bc_migrates_at_the_default_verify_level(interop, needs_java, needs_ruby, needs_go, key_files, other_rsa):
    """(Every verify level, in-process: tests/integration/test_rewrap_object.py.)"""
    prefix = "java-v1-ae/"
    objects = {f"{prefix}{size}": body_for(size, size) for size in AE_SIZES}
    oracles.java_v1_put(interop.endpoint, [{"bucket": interop.bucket, "key": k, "body": b, "mode": "AE",
                                            "rsa_private_pem": interop.rsa_private_pem} for k, b in objects.items()])
    aes, rsa_file = key_files
    proc, results = migrate(interop, prefix, aes, rsa_file, other_rsa)  # two unpinned RSA keys
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert {(r["outcome"], r["reason"]) for r in results.values()} == {("migrated", "migrated")}
    assert {r["source_key"] for r in results.values()} == {str(rsa_file)}
    keys = list(objects)
    reads = [{"bucket": interop.bucket, "key": k, "suffix": ".instruction"} for k in keys]
    assert oracles.ruby_get(interop.endpoint, reads, kms_key_id=interop.new_kms_key) == list(objects.values())
    go = [{**r, "load_strategy": "instruction_file"} for r in reads]
    assert oracles.go_get(interop.endpoint, go, kms_key_id=interop.new_kms_key) == list(objects.values())
    copies = as_python_reads_them(interop, objects, prefix)
    py = oracles.py_s3ec_get(interop.endpoint, [{"bucket": interop.bucket, "key": k} for k in copies], kms_key_id=interop.new_kms_key)
    assert py == list(objects.values())


def test_cbc_objects_with_several_unpinned_rsa_keys_need_a_proof_beyond_2_to_the_64(interop, needs_java, key_files, other_rsa):
    """EncryptionOnly (CBC) objects: PKCS#1 proves ~22.7 bits, the last block's padding 8 bits
    per padding byte, and two candidate keys cost one: 6 padding bytes (69.7 bits) pass, 1 (29.7)
    does not. With only the right key configured (the operator's assertion) both migrate."""
    prefix = "java-v1-eo/"
    objects = {f"{prefix}pad-6": b"x" * 10, f"{prefix}pad-1": b"x" * 15, f"{prefix}pad-16": b"x" * 32}
    oracles.java_v1_put(interop.endpoint, [{"bucket": interop.bucket, "key": k, "body": b, "mode": "EO",
                                            "rsa_private_pem": interop.rsa_private_pem} for k, b in objects.items()])
    _, rsa_file = key_files
    proc, results = migrate(interop, prefix, rsa_file, other_rsa)
    assert proc.returncode == EXIT_FAILED_OBJECTS
    assert {k: (r["outcome"], r["reason"]) for k, r in results.items()} == {
        f"{prefix}pad-6": ("migrated", "migrated"), f"{prefix}pad-16": ("migrated", "migrated"),
        f"{prefix}pad-1": ("failed", "proof-too-weak"),
    }
    assert f"{prefix}pad-1.instruction" not in [o["Key"] for o in interop.s3.list_objects_v2(Bucket=interop.bucket, Prefix=prefix)["Contents"]]
    proc, results = migrate(interop, prefix, rsa_file)
    assert proc.returncode == 0 and results[f"{prefix}pad-1"]["outcome"] == "migrated", results
    reads = [{"bucket": interop.bucket, "key": k, "suffix": ".instruction"} for k in objects]
    assert oracles.ruby_get(interop.endpoint, reads, kms_key_id=interop.new_kms_key) == list(objects.values())
