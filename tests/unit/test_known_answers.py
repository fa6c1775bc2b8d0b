"""Known-answer tests: every vector in tests/fixtures/s3ec-vectors.json (from ../shared/docs)."""
import base64
import json
from pathlib import Path

import pytest

from keymigration.errors import ContentError
from keymigration.formats import envelope as e
from keymigration.formats.content import derive_v3_keys, verify_body
from keymigration.formats.envelope import Envelope, Location, WrapAlgorithm
from keymigration.formats.secrets import DataKey
from keymigration.formats.source_keys import load_key_bytes
from keymigration.formats.unwrap import unwrap_data_key

VECTORS = {v["id"]: v for v in json.loads((Path(__file__).parent.parent / "fixtures" / "s3ec-vectors.json").read_text())["vectors"]}


def aes_key(vector):
    return load_key_bytes(bytes.fromhex(vector["master_key_hex"]), "kat-aes")


def rsa_key():
    return load_key_bytes(VECTORS["rsa-wraps"]["private_key_pem_pkcs8"].encode(), "kat-rsa")


def envelope(edk_b64, wrap, fmt="v2", cek=e.GCM):
    iv = bytes(12 if cek == e.GCM else 16)
    if fmt == "v3":
        return Envelope("v3", base64.b64decode(edk_b64), wrap, e.SUITE_115, {}, Location.METADATA,
                        message_id=bytes(28), commitment=bytes(28))
    return Envelope(fmt, base64.b64decode(edk_b64), wrap, cek, {}, Location.METADATA, iv=iv)


def data_key(vector):
    return bytes.fromhex(vector["data_key_hex"])


def test_aeswrap_rfc3394():
    v = VECTORS["aeswrap-rfc3394-256"]
    got = unwrap_data_key(envelope(v["encrypted_data_key_b64"], WrapAlgorithm.AES_WRAP), aes_key(v))
    assert got.data_key.reveal() == data_key(v)


def test_legacy_aes_ecb_v1():
    v = VECTORS["legacy-aes-ecb-v1"]
    env = envelope(v["encrypted_data_key_b64"], WrapAlgorithm.LEGACY, fmt="v1", cek=e.CBC)
    assert unwrap_data_key(env, aes_key(v)).data_key.reveal() == data_key(v)


@pytest.mark.parametrize("fmt,field", [("v2", "encrypted_data_key_v2_b64"), ("v3", "encrypted_data_key_v3_b64")])
def test_aes_gcm_keywrap(fmt, field):
    v = VECTORS["aes-gcm-keywrap"]
    env = envelope(v[field], WrapAlgorithm.AES_GCM, fmt=fmt)
    assert unwrap_data_key(env, aes_key(v)).data_key.reveal() == data_key(v)


def test_aes_gcm_keywrap_v2_blob_does_not_open_as_v3():
    v = VECTORS["aes-gcm-keywrap"]
    env = envelope(v["encrypted_data_key_v2_b64"], WrapAlgorithm.AES_GCM, fmt="v3")
    with pytest.raises(Exception, match="does not unwrap"):
        unwrap_data_key(env, aes_key(v))


@pytest.mark.parametrize(
    "path,wrap,fmt",
    [
        (("rsa_oaep_sha1", "encrypted_data_key_v2_b64"), WrapAlgorithm.RSA_OAEP_SHA1, "v2"),
        (("rsa_oaep_sha1", "encrypted_data_key_v3_b64"), WrapAlgorithm.RSA_OAEP_SHA1, "v3"),
        (("legacy_rsa_pkcs1v15", "encrypted_data_key_b64"), WrapAlgorithm.LEGACY, "v1"),
        (("legacy_rsa_oaep_sha256_mgf1sha1", "encrypted_data_key_b64"), WrapAlgorithm.RSA_OAEP_SHA256, "v2"),
    ],
)
def test_rsa_wraps(path, wrap, fmt):
    v = VECTORS["rsa-wraps"]
    env = envelope(v[path[0]][path[1]], wrap, fmt=fmt, cek=e.CBC if fmt == "v1" else e.GCM)
    assert unwrap_data_key(env, rsa_key()).data_key.reveal() == data_key(v)


def test_rsa_oaep_sha1_pseudo_keys_match_vector():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding as p

    v = VECTORS["rsa-wraps"]["rsa_oaep_sha1"]
    key = rsa_key()[0].private_key
    oaep = p.OAEP(mgf=p.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    assert key.decrypt(base64.b64decode(v["encrypted_data_key_v2_b64"]), oaep).hex() == v["pseudo_data_key_v2_hex"]
    assert key.decrypt(base64.b64decode(v["encrypted_data_key_v3_b64"]), oaep).hex() == v["pseudo_data_key_v3_hex"]


def test_content_gcm_and_cbc():
    v = VECTORS["content-gcm-and-cbc"]
    dk = DataKey(data_key(v))
    plain_len = len(bytes.fromhex(v["plaintext_hex"]))
    gcm = Envelope("v2", b"x", WrapAlgorithm.KMS_CONTEXT, e.GCM, {}, Location.METADATA, iv=bytes.fromhex(v["gcm"]["iv_hex"]))
    cbc = Envelope("v2", b"x", WrapAlgorithm.KMS_CONTEXT, e.CBC, {}, Location.METADATA, iv=bytes.fromhex(v["cbc"]["iv_hex"]),
                   unencrypted_length=plain_len)
    gcm_body = bytes.fromhex(v["gcm"]["object_body_hex"])
    cbc_body = bytes.fromhex(v["cbc"]["object_body_hex"])
    # Fed in awkward chunk sizes: the tag and the padding block straddle chunks.
    for size in (1, 7, 16, 33, 4096):
        chunks = lambda b: [b[i:i + size] for i in range(0, len(b), size)]
        assert verify_body(gcm, dk, chunks(gcm_body)) == plain_len
        assert verify_body(cbc, dk, chunks(cbc_body)) == plain_len
    assert gcm_body.endswith(bytes.fromhex(v["gcm"]["tag_hex"]))
    wrong = DataKey(bytes(32))
    with pytest.raises(ContentError):
        verify_body(gcm, wrong, [gcm_body])
    tampered = gcm_body[:-1] + bytes([gcm_body[-1] ^ 1])
    with pytest.raises(ContentError):
        verify_body(gcm, dk, [tampered])


def test_v3_commit_key_suite_115():
    v = VECTORS["v3-commit-key-suite-115"]
    dk = data_key(v)
    content_key, commitment = derive_v3_keys(dk, bytes.fromhex(v["message_id_hex"]))
    assert content_key.hex() == v["derived_key_hex"]
    assert commitment.hex() == v["commitment_hex"]
    metadata = {"x-amz-c": "115", "x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": '{"aws:x-amz-cek-alg":"115"}', "x-amz-d": v["x-amz-d"], "x-amz-i": v["x-amz-i"]}
    env = e.from_metadata(metadata)
    body = bytes.fromhex(v["object_body_hex"])
    assert verify_body(env, DataKey(dk), [body]) == len(bytes.fromhex(v["plaintext_hex"]))
    with pytest.raises(ContentError, match="commitment"):
        verify_body(env, DataKey(bytes(32)), [body])
