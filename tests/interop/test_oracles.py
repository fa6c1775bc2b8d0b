"""Self-checks for the interoperability oracles (tests/interop/oracles.py).

Everything runs against a real moto server over HTTP (module-scoped fixture in conftest.py):
Ruby's S3EC V1/V2 clients, the Go v1 SDK ``s3crypto`` client and the official Python S3EC v4.
Besides proving that each oracle works, several tests pin down *observed* behaviour of the
real clients (metadata they write, what a ``kms+context`` instruction file must contain for
each reader); tests/interop/README.md summarises the findings.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest

from . import oracles

KEY_NAMES = [
    "plain.txt",
    "dir/naïve ünï €.txt",
    "a+b c%d=e.bin",
    "pct%2Bliteral+plus",
    "sp ace/x=y+z",
]
SMALL_SIZES = [0, 1, 15, 16, 17]
MIB = 1024 * 1024

GCM = "AES/GCM/NoPadding"
CBC = "AES/CBC/PKCS5Padding"


def body_for(name: str, size: int) -> bytes:
    """Deterministic pseudo-random body."""
    return hashlib.shake_256(f"{name}|{size}".encode()).digest(size) if size else b""


def describe(result) -> str:
    return f"error: {result}" if isinstance(result, str) else f"{len(result)} bytes"


def assert_all_equal(items, results, what):
    bad = [
        f"{it['key']!r}: expected {len(it['body'])} bytes, got {describe(r)}"
        for it, r in zip(items, results)
        if r != it["body"]
    ]
    assert not bad, f"{what}: {len(bad)} of {len(items)} mismatched:\n" + "\n".join(bad[:20])


def master_key_fields(env, kind: str) -> dict:
    if kind == "aes":
        return {"aes_key": env.aes_key}
    if kind == "rsa":
        return {"rsa_private_pem": env.rsa_private_pem}
    return {"kms_key_id": env.old_kms_key}


def object_set(prefix: str) -> list[tuple[str, bytes]]:
    """Every key name x small size, plus one ~1 MiB object with a unicode name."""
    objs = [(f"{prefix}/{size}/{name}", body_for(name, size)) for name in KEY_NAMES for size in SMALL_SIZES]
    objs.append((f"{prefix}/big/dir/naïve ünï €.bin", body_for("big", MIB + 3)))
    return objs


# ------------------------------------------------------------------------------------ Ruby


KINDS = [(c, k) for c in ("v1", "v2") for k in ("aes", "rsa", "kms")]
LOCATIONS = ["metadata", "instruction_file"]


@pytest.fixture(scope="module")
def ruby_objects(interop, needs_ruby):
    """Objects written by Ruby for every (client, master key, envelope location)."""
    written = {}
    items = []
    for client, kind in KINDS:
        for location in LOCATIONS:
            prefix = f"ruby/{client}-{kind}-{location}"
            objs = []
            for key, body in object_set(prefix):
                item = {
                    "bucket": interop.bucket,
                    "key": key,
                    "body": body,
                    "client": client,
                    "envelope_location": location,
                    **master_key_fields(interop, kind),
                }
                if not (client == "v1" and kind == "kms"):
                    item["matdesc"] = {"purpose": "oracle-test"}
                objs.append(item)
            written[(client, kind, location)] = objs
            items.extend(objs)
    oracles.ruby_put(interop.endpoint, items)
    return written


def test_ruby_writes_every_kind_and_reads_back(interop, ruby_objects):
    reads, expected = [], []
    for (client, kind, location), objs in ruby_objects.items():
        for it in objs:
            base = {"bucket": it["bucket"], "key": it["key"], **master_key_fields(interop, kind)}
            if kind == "kms" and client == "v2":
                base["kms_encryption_context"] = it["matdesc"]
            # default settings (metadata first, then key.instruction)
            reads.append({**base, "suffix": None})
            expected.append(it)
            if location == "instruction_file":
                # explicit instruction-file read with the default suffix
                reads.append({**base, "suffix": ".instruction"})
                expected.append(it)
    results = oracles.ruby_get(interop.endpoint, reads)
    assert_all_equal(expected, results, "Ruby V2 (v2_and_legacy) reading Ruby writes")


def test_ruby_v1_client_reads_its_own_and_v2_writes(interop, ruby_objects):
    reads, expected = [], []
    for (client, kind, location), objs in ruby_objects.items():
        for it in objs[:3]:
            reads.append({"bucket": it["bucket"], "key": it["key"], "client": "v1",
                          **master_key_fields(interop, kind)})
            expected.append(it)
    results = oracles.ruby_get(interop.endpoint, reads)
    assert_all_equal(expected, results, "Ruby V1 client reading Ruby writes")


@pytest.mark.usefixtures("needs_ruby")
def test_ruby_accepts_pkcs1_pkcs8_and_public_pem(interop):
    from cryptography.hazmat.primitives import serialization

    public_pem = (
        serialization.load_pem_private_key(interop.rsa_private_pem.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    b = interop.bucket
    items = [
        {"bucket": b, "key": "pem/v1-pkcs1", "body": b"pkcs1", "client": "v1",
         "rsa_private_pem": interop.rsa_private_pem_pkcs1},
        {"bucket": b, "key": "pem/v2-pkcs1", "body": b"pkcs1", "client": "v2",
         "rsa_private_pem": interop.rsa_private_pem_pkcs1},
        {"bucket": b, "key": "pem/v1-public", "body": b"public", "client": "v1", "rsa_private_pem": public_pem},
        {"bucket": b, "key": "pem/v2-public", "body": b"public", "client": "v2", "rsa_private_pem": public_pem},
    ]
    oracles.ruby_put(interop.endpoint, items)
    reads = [{"bucket": b, "key": it["key"], "rsa_private_pem": interop.rsa_private_pem} for it in items]
    assert_all_equal(items, oracles.ruby_get(interop.endpoint, reads), "RSA PEM formats")


@pytest.mark.usefixtures("needs_ruby")
def test_ruby_kms_decrypt_key_id_model_patch():
    """Debian's aws-sdk-kms 1.24.0 lacks Decrypt KeyId; oracle_common.rb adds it to the model."""
    script = r"""
      require_relative 'oracle_common'
      kms = Aws::KMS::Client.new(stub_responses: true, region: 'us-east-1',
                                 credentials: S3ECOracle.credentials)
      before = begin
        kms.decrypt(ciphertext_blob: 'x', key_id: 'k'); 'accepted'
      rescue ArgumentError => e
        e.message.lines.first.strip
      end
      state = S3ECOracle.patch_kms_decrypt_key_id!
      kms2 = Aws::KMS::Client.new(stub_responses: true, region: 'us-east-1',
                                  credentials: S3ECOracle.credentials)
      kms2.decrypt(ciphertext_blob: 'x', key_id: 'k')
      io = kms2.api_requests.last[:context].http_request.body
      io.rewind
      body = io.read
      print JSON.generate('before' => before, 'state' => state.to_s, 'wire' => JSON.parse(body),
                          'again' => S3ECOracle.patch_kms_decrypt_key_id!.to_s)
    """
    proc = subprocess.run(
        ["ruby", "-W0", "-e", script], cwd=oracles.RUBY_DIR, capture_output=True,
        env=oracles._child_env(), timeout=60, check=True,
    )
    out = json.loads(proc.stdout)
    assert "unexpected value at params[:key_id]" in out["before"]
    assert out["state"] == "patched"
    assert out["again"] == "already_present"
    assert out["wire"]["KeyId"] == "k"


def test_ruby_sends_kms_key_id_on_decrypt(interop, ruby_objects):
    """KeyId really reaches KMS: the wrong CMK is refused by moto, any-CMK mode is not."""
    it = ruby_objects[("v2", "kms", "metadata")][3]
    base = {"bucket": it["bucket"], "key": it["key"], "kms_encryption_context": it["matdesc"]}
    wrong, right, any_cmk = oracles.ruby_get(interop.endpoint, [
        {**base, "kms_key_id": interop.new_kms_key},
        {**base, "kms_key_id": interop.old_kms_key},
        {**base, "any_cmk": True},
    ])
    assert isinstance(wrong, str) and "AccessDenied" in wrong
    assert right == it["body"]
    assert any_cmk == it["body"]


def test_ruby_kms_context_must_match_exactly(interop, ruby_objects):
    it = ruby_objects[("v2", "kms", "metadata")][2]
    missing_ctx, extra_ctx = oracles.ruby_get(interop.endpoint, [
        {"bucket": it["bucket"], "key": it["key"], "kms_key_id": interop.old_kms_key},
        {"bucket": it["bucket"], "key": it["key"], "kms_key_id": interop.old_kms_key,
         "kms_encryption_context": {**it["matdesc"], "extra": "x"}},
    ])
    for r in (missing_ctx, extra_ctx):
        assert isinstance(r, str) and "does not match the provided encryption context" in r


def test_ruby_missing_instruction_file_falls_back_to_metadata(interop, ruby_objects):
    """Surprise: asking Ruby for an instruction file that does not exist silently uses metadata."""
    gcm = ruby_objects[("v2", "kms", "metadata")][4]
    v1aes = ruby_objects[("v1", "aes", "metadata")][4]
    interop.s3.put_object(Bucket=gcm["bucket"], Key=gcm["key"] + ".garbage", Body=b"not json")
    r_kms, r_garbage, r_aes, r_v2_profile = oracles.ruby_get(interop.endpoint, [
        {"bucket": gcm["bucket"], "key": gcm["key"], "suffix": ".does-not-exist",
         "kms_key_id": interop.old_kms_key, "kms_encryption_context": gcm["matdesc"]},
        {"bucket": gcm["bucket"], "key": gcm["key"], "suffix": ".garbage",
         "kms_key_id": interop.old_kms_key, "kms_encryption_context": gcm["matdesc"]},
        {"bucket": v1aes["bucket"], "key": v1aes["key"], "suffix": ".does-not-exist",
         "aes_key": interop.aes_key},
        # the :v2 profile refuses V1 (x-amz-key) envelopes
        {"bucket": v1aes["bucket"], "key": v1aes["key"], "aes_key": interop.aes_key,
         "security_profile": "v2"},
    ])
    assert r_kms == gcm["body"]
    assert r_garbage == gcm["body"]  # an unparsable instruction file is ignored as well
    assert r_aes == v1aes["body"]
    assert isinstance(r_v2_profile, str) and "LegacyDecryptionError" in r_v2_profile


# --------------------------------------------------------------------------------- formats


def detect_format(meta: dict) -> str:
    """Format of an envelope (object metadata or instruction-file JSON), per s3ec-formats.md §1.3."""
    if "x-amz-3" in meta or ("x-amz-c" in meta and "x-amz-d" in meta and "x-amz-i" in meta):
        return "V3"
    if "x-amz-key-v2" in meta:
        return f"V2 {meta.get('x-amz-wrap-alg')} {meta.get('x-amz-cek-alg')}"
    if "x-amz-key" in meta:
        return "V1"
    return "none"


def test_metadata_written_by_each_client(interop, ruby_objects):
    """Documents exactly which metadata keys each writer produces (see README)."""
    s3 = interop.s3
    expected_format = {
        ("v1", "aes"): "V1",
        ("v1", "rsa"): "V1",
        ("v1", "kms"): f"V2 kms {CBC}",
        ("v2", "aes"): f"V2 AES/GCM {GCM}",
        ("v2", "rsa"): f"V2 RSA-OAEP-SHA1 {GCM}",
        ("v2", "kms"): f"V2 kms+context {GCM}",
    }
    envelope_keys = {
        ("v1", "aes"): {"x-amz-key", "x-amz-iv", "x-amz-matdesc"},
        ("v1", "rsa"): {"x-amz-key", "x-amz-iv", "x-amz-matdesc"},
        ("v1", "kms"): {"x-amz-key-v2", "x-amz-iv", "x-amz-matdesc", "x-amz-cek-alg", "x-amz-wrap-alg"},
    }
    v2_keys = {"x-amz-key-v2", "x-amz-iv", "x-amz-matdesc", "x-amz-cek-alg", "x-amz-wrap-alg", "x-amz-tag-len"}
    for (client, kind, location), objs in ruby_objects.items():
        it = objs[1]  # 1-byte body
        head = s3.head_object(Bucket=it["bucket"], Key=it["key"])
        meta = head["Metadata"]
        want_keys = envelope_keys.get((client, kind), v2_keys)
        # Ruby always adds x-amz-unencrypted-content-length to the *object* metadata
        assert meta["x-amz-unencrypted-content-length"] == str(len(it["body"]))
        if location == "metadata":
            envelope = meta
            assert set(meta) == want_keys | {"x-amz-unencrypted-content-length"}, (client, kind, meta)
        else:
            # with an instruction file the object keeps only the plaintext length
            assert set(meta) == {"x-amz-unencrypted-content-length"}, (client, kind, meta)
            instr = s3.get_object(Bucket=it["bucket"], Key=it["key"] + ".instruction")
            assert instr["Metadata"] == {}  # Ruby writes no x-amz-crypto-instr-file marker
            envelope = json.loads(instr["Body"].read())
            assert set(envelope) == want_keys, (client, kind, envelope)
            assert all(isinstance(v, str) for v in envelope.values())
        assert detect_format(envelope) == expected_format[(client, kind)], (client, kind, envelope)
        iv = base64.b64decode(envelope["x-amz-iv"])
        assert len(iv) == (12 if client == "v2" else 16)
        if client == "v2":
            assert envelope["x-amz-tag-len"] == "128"
        else:
            assert "x-amz-tag-len" not in envelope
        matdesc = json.loads(envelope["x-amz-matdesc"])
        if (client, kind) == ("v1", "kms"):
            assert matdesc == {"kms_cmk_id": interop.old_kms_key}
        elif (client, kind) == ("v2", "kms"):
            assert matdesc == {"aws:x-amz-cek-alg": GCM, "purpose": "oracle-test"}
        else:
            assert matdesc == {"purpose": "oracle-test"}
        edk = base64.b64decode(envelope.get("x-amz-key") or envelope["x-amz-key-v2"])
        if (client, kind) == ("v1", "aes"):
            assert len(edk) == 48  # AES/ECB/PKCS5 of a 32-byte data key
        elif kind == "rsa":
            assert len(edk) == 256  # RSA-2048
        elif (client, kind) == ("v2", "aes"):
            assert len(edk) == 60  # 12-byte IV || 32-byte key || 16-byte tag

    # Python S3EC v4 writes metadata only: V2 (non-committing) and V3 (committing)
    b = interop.bucket
    oracles.py_s3ec_put(interop.endpoint, [
        {"bucket": b, "key": "fmt/py-v2", "body": b"v2", "kms_key_id": interop.old_kms_key, "format": "v2"},
        {"bucket": b, "key": "fmt/py-v3", "body": b"v3", "kms_key_id": interop.old_kms_key, "format": "v3"},
    ])
    v2 = s3.head_object(Bucket=b, Key="fmt/py-v2")["Metadata"]
    assert set(v2) == v2_keys
    assert detect_format(v2) == f"V2 kms+context {GCM}"
    assert json.loads(v2["x-amz-matdesc"]) == {"aws:x-amz-cek-alg": GCM}
    assert v2["x-amz-tag-len"] == "128"
    v3 = s3.head_object(Bucket=b, Key="fmt/py-v3")["Metadata"]
    assert set(v3) == {"x-amz-c", "x-amz-3", "x-amz-w", "x-amz-t", "x-amz-d", "x-amz-i"}
    assert detect_format(v3) == "V3"
    assert (v3["x-amz-c"], v3["x-amz-w"]) == ("115", "12")
    assert json.loads(v3["x-amz-t"]) == {"aws:x-amz-cek-alg": "115"}
    assert len(base64.b64decode(v3["x-amz-d"])) == 28 and len(base64.b64decode(v3["x-amz-i"])) == 28


# -------------------------------------------------------------------------------------- Go


@pytest.mark.usefixtures("needs_go")
def test_go_reads_kms_objects(interop, ruby_objects):
    b = interop.bucket
    py_items = [
        {"bucket": b, "key": f"py-for-go/{key}", "body": body, "kms_key_id": interop.old_kms_key, "format": fmt}
        for fmt in ("v2", "v3")
        for key, body in object_set(f"py-{fmt}")
    ]
    oracles.py_s3ec_put(interop.endpoint, py_items)
    py_v2 = [it for it in py_items if it["format"] == "v2"]
    py_v3 = [it for it in py_items if it["format"] == "v3"]

    ok_reads, ok_expected = [], []

    def add(objs, **opts):
        for it in objs:
            ok_reads.append({"bucket": it["bucket"], "key": it["key"], **opts})
            ok_expected.append(it)

    add(ruby_objects[("v2", "kms", "metadata")], load_strategy="default")
    add(ruby_objects[("v2", "kms", "instruction_file")], load_strategy="default")
    add(ruby_objects[("v2", "kms", "instruction_file")], load_strategy="instruction_file", suffix=".instruction")
    add(ruby_objects[("v1", "kms", "metadata")], load_strategy="default")  # legacy `kms` wrap, CBC body
    add(py_v2, load_strategy="default")
    results = oracles.go_get(interop.endpoint, ok_reads, kms_key_id=interop.old_kms_key)
    assert_all_equal(ok_expected, results, "Go s3crypto reads")

    v1_aes = ruby_objects[("v1", "aes", "metadata")][1]
    v1_aes_instr = ruby_objects[("v1", "aes", "instruction_file")][1]
    wrong_key, v1, v1_instr, v3 = oracles.go_get(interop.endpoint, [
        {"bucket": b, "key": py_v2[1]["key"], "kms_key_id": interop.new_kms_key},
        {"bucket": b, "key": v1_aes["key"]},
        {"bucket": b, "key": v1_aes_instr["key"]},
        {"bucket": b, "key": py_v3[1]["key"]},
    ], kms_key_id=interop.old_kms_key)
    assert "AccessDeniedException" in wrong_key
    assert "V1NotSupportedError" in v1
    # instruction file holds x-amz-key (V1): Go's Envelope has no wrap alg at all
    assert "InvalidWrapAlgorithmError" in v1_instr
    # no x-amz-key-v2 in metadata, so Go looks for key + ".instruction"
    assert "NoSuchKey" in v3


# ---------------------------------------------------------------------------------- Python


def test_python_s3ec_round_trip_v2_and_v3(interop):
    b = interop.bucket
    items = [
        {"bucket": b, "key": f"py-rt/{fmt}/{key}", "body": body, "kms_key_id": interop.old_kms_key, "format": fmt}
        for fmt in ("v2", "v3")
        for key, body in object_set("o")
    ]
    oracles.py_s3ec_put(interop.endpoint, items)
    reads = [{"bucket": it["bucket"], "key": it["key"]} for it in items]
    results = oracles.py_s3ec_get(interop.endpoint, reads, kms_key_id=interop.old_kms_key)
    assert_all_equal(items, results, "Python S3EC v4 round trip")

    v2 = next(it for it in items if it["format"] == "v2")
    strict, wrong_key = oracles.py_s3ec_get(interop.endpoint, [
        {"bucket": b, "key": v2["key"], "commitment_policy": "REQUIRE_ENCRYPT_REQUIRE_DECRYPT"},
        {"bucket": b, "key": v2["key"], "kms_key_id": interop.new_kms_key},
    ], kms_key_id=interop.old_kms_key)
    assert isinstance(strict, str) and "commit" in strict.lower()
    assert isinstance(wrong_key, str) and "AccessDenied" in wrong_key


def test_python_s3ec_reads_ruby_kms_writes(interop, ruby_objects):
    reads, expected = [], []
    for client in ("v1", "v2"):
        for location in LOCATIONS:
            for it in ruby_objects[(client, "kms", location)]:
                r = {"bucket": it["bucket"], "key": it["key"], "kms_key_id": interop.old_kms_key}
                if client == "v2":
                    r["encryption_context"] = it["matdesc"]
                reads.append(r)
                expected.append(it)
    assert_all_equal(expected, oracles.py_s3ec_get(interop.endpoint, reads), "Python reading Ruby KMS")

    # Ruby V1 KMS objects need both legacy switches: wrap `kms` and the CBC content cipher
    cbc_kms = ruby_objects[("v1", "kms", "metadata")][1]
    base = {"bucket": cbc_kms["bucket"], "key": cbc_kms["key"], "kms_key_id": interop.old_kms_key}
    no_legacy, no_cbc, no_kms_wrap = oracles.py_s3ec_get(interop.endpoint, [
        {**base, "legacy": False},
        {**base, "legacy_wrapping": True, "legacy_unauthenticated": False},
        {**base, "legacy_wrapping": False, "legacy_unauthenticated": True},
    ])
    assert "Enable legacy wrapping algorithms" in no_legacy  # the wrap is checked first
    assert "ALG_AES_256_CBC_IV16_NO_KDF" in no_cbc
    assert "Enable legacy wrapping algorithms" in no_kms_wrap


# ----------------------------------------------- what a re-wrapped instruction file needs


def _unwrap_original(env, meta: dict) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if "x-amz-key" in meta:  # Ruby V1 AES: AES/ECB/PKCS5 legacy wrap
        dec = Cipher(algorithms.AES(env.aes_key), modes.ECB()).decryptor()
        unpad = padding.PKCS7(128).unpadder()
        raw = dec.update(base64.b64decode(meta["x-amz-key"])) + dec.finalize()
        return unpad.update(raw) + unpad.finalize()
    return env.kms.decrypt(
        CiphertextBlob=base64.b64decode(meta["x-amz-key-v2"]),
        EncryptionContext=json.loads(meta["x-amz-matdesc"]),
        KeyId=env.old_kms_key,
    )["Plaintext"]


def _kms_context_envelope(env, data_key: bytes, iv_b64: str, cek_alg: str, ec: dict | None = None) -> dict:
    ec = ec if ec is not None else {"aws:x-amz-cek-alg": cek_alg}
    blob = env.kms.encrypt(KeyId=env.new_kms_key, Plaintext=data_key, EncryptionContext=ec)["CiphertextBlob"]
    out = {
        "x-amz-key-v2": base64.b64encode(blob).decode(),
        "x-amz-iv": iv_b64,
        "x-amz-cek-alg": cek_alg,
        "x-amz-wrap-alg": "kms+context",
        "x-amz-matdesc": json.dumps(ec, separators=(",", ":")),
    }
    if cek_alg == GCM:
        out["x-amz-tag-len"] = "128"
    return out


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


OK = "ok"
# variant -> (source, expected Ruby V2, expected Go v1, expected Python v4); an expected error
# is a substring of the reader's message. Ruby is read with instruction_file_suffix
# (original object, metadata still holding the old envelope) *and* with default settings on a
# metadata-stripped copy whose file is key.instruction; Go with S3LoadStrategy and with the
# default strategy likewise; Python only on the stripped copy (metadata always wins there).
REWRAP_MATRIX = {
    "gcm/full": (OK, OK, OK),
    "gcm/instr-object-meta-crypto-instr-file": (OK, OK, OK),
    "gcm/instr-object-meta-keymigration": (OK, OK, OK),
    "gcm/json-crypto-instr-file": (OK, OK, OK),
    "gcm/json-unencrypted-content-length": (OK, OK, "invalid keys"),
    "gcm/json-keymigration-key": (OK, OK, "invalid keys"),
    "gcm/tag-len-number": (OK, OK, OK),
    "gcm/no-tag-len": ("x-amz-tag-len does not match expected", OK, OK),
    "gcm/tag-len-96": ("x-amz-tag-len does not match expected", OK, OK),
    "gcm/no-matdesc": ("missing: x-amz-matdesc", "unexpected end of JSON input", "InvalidCiphertext"),
    "gcm/matdesc-as-json-object": ("TypeError", "cannot unmarshal object", "JSON object must be str"),
    "gcm/no-cek-alg": ("unsupported content encrypting key (cek) format: nil",
                       "does not match the algorithm stored", "Unable to determine"),
    "gcm/no-wrap-alg": ("unsupported key wrapping algorithm: nil", "InvalidWrapAlgorithmError",
                        "Unable to determine"),
    "gcm/no-iv": ("missing: x-amz-iv", "incorrect nonce length", "Unable to determine"),
    "gcm/ec-with-kms_cmk_id": ("does not match the provided encryption context", OK, OK),
    "cbc/full": (OK, OK, OK),
    "cbc/instr-object-meta-crypto-instr-file": (OK, OK, OK),
    "cbc/instr-object-meta-keymigration": (OK, OK, OK),
    "cbc/json-unencrypted-content-length": (OK, OK, "invalid keys"),
    "cbc/cek-pkcs7": (OK, "cek algorithm isn't supported, AES/CBC/PKCS7Padding",
                      "Unknown content encryption algorithm: AES/CBC/PKCS7Padding"),
    "cbc/tag-len-128": (OK, OK, OK),
    "cbc/tag-len-empty": (OK, OK, OK),
    "cbc/ec-with-kms_cmk_id": ("does not match the provided encryption context", OK, OK),
}


@pytest.mark.usefixtures("needs_ruby", "needs_go")
def test_rewrapped_kms_context_instruction_file_matrix(interop):
    """Which instruction-file contents each real reader accepts (new KMS key, kms+context)."""
    s3, b = interop.s3, interop.bucket
    body = body_for("rewrap", 4099)
    sources = {"gcm": "rewrap/src gcm+ü", "cbc": "rewrap/src cbc+ü"}
    oracles.ruby_put(interop.endpoint, [
        {"bucket": b, "key": sources["gcm"], "body": body, "client": "v2", "kms_key_id": interop.old_kms_key},
        {"bucket": b, "key": sources["cbc"], "body": body, "client": "v1", "aes_key": interop.aes_key},
    ])
    originals = {src: s3.head_object(Bucket=b, Key=key)["Metadata"] for src, key in sources.items()}

    envelopes = {}
    for src, meta in originals.items():
        dk = _unwrap_original(interop, meta)
        cek = GCM if src == "gcm" else CBC
        full = _kms_context_envelope(interop, dk, meta["x-amz-iv"], cek)
        envelopes[f"{src}/full"] = (full, None)
        envelopes[f"{src}/instr-object-meta-crypto-instr-file"] = (full, {"x-amz-crypto-instr-file": ""})
        envelopes[f"{src}/instr-object-meta-keymigration"] = (
            full, {"keymigration-source-key": "arn:old", "keymigration-version": "1"})
        envelopes[f"{src}/json-crypto-instr-file"] = ({**full, "x-amz-crypto-instr-file": ""}, None)
        envelopes[f"{src}/json-unencrypted-content-length"] = (
            {**full, "x-amz-unencrypted-content-length": str(len(body))}, None)
        envelopes[f"{src}/json-keymigration-key"] = ({**full, "keymigration-version": "1"}, None)
        envelopes[f"{src}/tag-len-number"] = ({**full, "x-amz-tag-len": 128}, None)
        envelopes[f"{src}/no-tag-len"] = (_without(full, "x-amz-tag-len"), None)
        envelopes[f"{src}/tag-len-96"] = ({**full, "x-amz-tag-len": "96"}, None)
        envelopes[f"{src}/tag-len-128"] = ({**full, "x-amz-tag-len": "128"}, None)
        envelopes[f"{src}/tag-len-empty"] = ({**full, "x-amz-tag-len": ""}, None)
        envelopes[f"{src}/no-matdesc"] = (_without(full, "x-amz-matdesc"), None)
        envelopes[f"{src}/matdesc-as-json-object"] = (
            {**full, "x-amz-matdesc": json.loads(full["x-amz-matdesc"])}, None)
        envelopes[f"{src}/no-cek-alg"] = (_without(full, "x-amz-cek-alg"), None)
        envelopes[f"{src}/no-wrap-alg"] = (_without(full, "x-amz-wrap-alg"), None)
        envelopes[f"{src}/no-iv"] = (_without(full, "x-amz-iv"), None)
        envelopes[f"{src}/ec-with-kms_cmk_id"] = (
            _kms_context_envelope(interop, dk, meta["x-amz-iv"], cek,
                                  {"aws:x-amz-cek-alg": cek, "kms_cmk_id": interop.new_kms_key}), None)
        if src == "cbc":
            envelopes["cbc/cek-pkcs7"] = (
                _kms_context_envelope(interop, dk, meta["x-amz-iv"], "AES/CBC/PKCS7Padding"), None)

    rb_reads, go_reads, py_reads = [], [], []
    for variant in REWRAP_MATRIX:
        src = variant.split("/")[0]
        envelope, instr_meta = envelopes[variant]
        original = sources[src]
        stripped = f"rewrap/stripped/{variant} ü+%"
        # copy without the envelope keys (what modern readers need); body bytes unchanged
        keep = {k: v for k, v in originals[src].items() if k == "x-amz-unencrypted-content-length"}
        s3.copy_object(Bucket=b, Key=stripped, CopySource={"Bucket": b, "Key": original},
                       MetadataDirective="REPLACE", Metadata=keep)
        suffix = f".rw-{variant.replace('/', '-')}"
        extra = {"Metadata": instr_meta} if instr_meta is not None else {}
        payload = json.dumps(envelope).encode()
        s3.put_object(Bucket=b, Key=original + suffix, Body=payload, **extra)
        s3.put_object(Bucket=b, Key=stripped + ".instruction", Body=payload, **extra)
        rb_reads += [{"bucket": b, "key": original, "suffix": suffix},
                     {"bucket": b, "key": stripped, "suffix": None}]
        go_reads += [{"bucket": b, "key": original, "load_strategy": "instruction_file", "suffix": suffix},
                     {"bucket": b, "key": stripped, "load_strategy": "default"}]
        py_reads.append({"bucket": b, "key": stripped})

    new = interop.new_kms_key
    rb = oracles.ruby_get(interop.endpoint, rb_reads, kms_key_id=new)
    go = oracles.go_get(interop.endpoint, go_reads, kms_key_id=new)
    py = oracles.py_s3ec_get(interop.endpoint, py_reads, kms_key_id=new)

    def verdict(result, expected):
        if expected == OK:
            return result == body
        return isinstance(result, str) and expected in result

    problems = []
    for i, (variant, (exp_rb, exp_go, exp_py)) in enumerate(REWRAP_MATRIX.items()):
        for reader, result, exp in (
            ("ruby suffix", rb[2 * i], exp_rb), ("ruby default/stripped", rb[2 * i + 1], exp_rb),
            ("go S3LoadStrategy", go[2 * i], exp_go), ("go default/stripped", go[2 * i + 1], exp_go),
            ("python stripped", py[i], exp_py),
        ):
            if not verdict(result, exp):
                problems.append(f"{variant} / {reader}: expected {exp!r}, got {describe(result)}")
    assert not problems, "\n".join(problems)

    # Python v4 ignores a custom suffix while the object metadata still holds an envelope:
    # it decrypts the OLD envelope (here: with the new key only, so KMS refuses it).
    gcm_suffix = ".rw-gcm-full"
    meta_wins, = oracles.py_s3ec_get(interop.endpoint, [
        {"bucket": b, "key": sources["gcm"], "suffix": gcm_suffix, "kms_key_id": new}])
    assert isinstance(meta_wins, str) and "AccessDenied" in meta_wins
    # ... and Go's default strategy and Ruby's default settings do the same
    go_default, = oracles.go_get(interop.endpoint, [{"bucket": b, "key": sources["gcm"]}], kms_key_id=new)
    rb_default, = oracles.ruby_get(interop.endpoint, [{"bucket": b, "key": sources["gcm"]}], kms_key_id=new)
    assert "AccessDeniedException" in go_default and "AccessDenied" in rb_default
    # while the explicit instruction-file readers use the new envelope on the original object
    assert oracles.go_get(interop.endpoint, [{"bucket": b, "key": sources["gcm"], "load_strategy":
                                              "instruction_file", "suffix": gcm_suffix}], kms_key_id=new) == [body]


def test_versions_of_the_oracles():
    v = oracles.versions()
    assert v["amazon-s3-encryption-client-python"] == "4.0.0"
    if oracles.ruby_available() is None:
        assert v["ruby"]["aws-sdk-s3"] == "1.117.2"
        assert v["ruby"]["aws-sdk-kms"] == "1.24.0"
        assert v["ruby"]["aws-sdk-core"] == "3.168.1"
    if oracles.go_available() is None:
        assert v["go"]["aws-sdk-go"] == "1.44.133"
