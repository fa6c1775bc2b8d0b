"""Writes S3EC objects the old ways, for the demo, tests and benchmarks.

It produces what Java v1, Ruby V1/V2, Go and the Python S3EC write: V1 (AES/ECB or RSA PKCS#1
wrap, CBC body), V2 (AESWrap, AES/GCM, RSA-OAEP-256, RSA-OAEP-SHA1, kms, kms+context; CBC or
GCM body) and V3 (suite 115 with key commitment), with the envelope in object metadata or in an
instruction file. Its output is checked against the real clients (tests/interop).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from keymigration.formats import envelope as e
from keymigration.formats.content import SUITE_115_ID, V3_NONCE, derive_v3_keys
from keymigration.formats.envelope import WrapAlgorithm
from keymigration.formats.source_keys import AesMasterKey, RsaMasterKey
from keymigration.formats.vocabulary import DEFAULT_INSTRUCTION_SUFFIX


@dataclass(frozen=True)
class Encrypted:
    body: bytes
    fields: dict[str, str]  # the whole envelope (V3: including x-amz-c/d/i)


def encrypt_body(cek_alg: str, data_key: bytes, iv: bytes, plaintext: bytes, message_id: bytes | None = None) -> bytes:
    if cek_alg == e.CBC:
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        encryptor = Cipher(algorithms.AES(data_key), modes.CBC(iv)).encryptor()
        return encryptor.update(padded) + encryptor.finalize()
    if cek_alg == e.GCM:
        return AESGCM(data_key).encrypt(iv, plaintext, None)
    assert message_id is not None
    content_key, _ = derive_v3_keys(data_key, message_id)
    return AESGCM(content_key).encrypt(V3_NONCE, plaintext, SUITE_115_ID)


def wrap_data_key(
    wrap: WrapAlgorithm, data_key: bytes, identifier: str, master: AesMasterKey | RsaMasterKey | None
) -> bytes:
    """Wrap a data key with an AES/RSA master key the way the old clients did."""
    if isinstance(master, AesMasterKey):
        kek = master.key.reveal()
        if wrap is WrapAlgorithm.LEGACY:
            padder = padding.PKCS7(128).padder()
            encryptor = Cipher(algorithms.AES(kek), modes.ECB()).encryptor()
            return encryptor.update(padder.update(data_key) + padder.finalize()) + encryptor.finalize()
        if wrap is WrapAlgorithm.AES_WRAP:
            return aes_key_wrap(kek, data_key)
        if wrap is WrapAlgorithm.AES_GCM:
            iv = os.urandom(12)
            return iv + AESGCM(kek).encrypt(iv, data_key, identifier.encode())
    if isinstance(master, RsaMasterKey):
        public = master.private_key.public_key()
        if wrap is WrapAlgorithm.LEGACY:
            return public.encrypt(data_key, asym_padding.PKCS1v15())
        if wrap is WrapAlgorithm.RSA_OAEP_SHA256:
            return public.encrypt(
                data_key, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA256(), label=None)
            )
        if wrap is WrapAlgorithm.RSA_OAEP_SHA1:
            pseudo = bytes([len(data_key)]) + data_key + identifier.encode()
            return public.encrypt(
                pseudo, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
            )
    raise ValueError(f"cannot wrap with {wrap} and {type(master).__name__}")


def encrypt_object(
    plaintext: bytes,
    *,
    fmt: str,
    wrap: WrapAlgorithm,
    cek_alg: str | None = None,
    master: AesMasterKey | RsaMasterKey | None = None,
    kms_client=None,
    kms_key_id: str | None = None,
    matdesc: Mapping[str, str] | None = None,
    data_key: bytes | None = None,
) -> Encrypted:
    """Encrypt ``plaintext`` as an S3EC client of that format would."""
    data_key = data_key or os.urandom(32)
    if fmt == "v3":
        cek_alg = e.SUITE_115
    elif fmt == "v1":
        cek_alg = e.CBC
    cek_alg = cek_alg or e.GCM
    identifier = e.SUITE_115 if fmt == "v3" else cek_alg
    iv = os.urandom(12 if cek_alg == e.GCM else 16)
    message_id = os.urandom(28) if fmt == "v3" else None
    body = encrypt_body(cek_alg, data_key, iv, plaintext, message_id)
    context = dict(matdesc or {})
    if wrap.is_kms:
        if wrap is WrapAlgorithm.KMS:
            context = {"kms_cmk_id": kms_key_id, **context}
        else:
            context = {**context, "aws:x-amz-cek-alg": identifier}
        edk = kms_client.encrypt(KeyId=kms_key_id, Plaintext=data_key, EncryptionContext=context)["CiphertextBlob"]
    else:
        edk = wrap_data_key(wrap, data_key, identifier, master)
    context_json = json.dumps(context, separators=(",", ":"))
    if fmt == "v3":
        _, commitment = derive_v3_keys(data_key, message_id)
        fields = {
            e.CONTENT_CIPHER_V3: e.SUITE_115,
            e.ENCRYPTED_DATA_KEY_V3: e.b64encode(edk),
            e.ENCRYPTED_DATA_KEY_ALGORITHM_V3: e.V3_WRAP_CODE_OF[wrap],
            (e.ENCRYPTION_CONTEXT_V3 if wrap.is_kms else e.MAT_DESC_V3): context_json,
            e.KEY_COMMITMENT_V3: e.b64encode(commitment),
            e.MESSAGE_ID_V3: e.b64encode(message_id),
        }
    elif fmt == "v1":
        fields = {e.KEY_V1: e.b64encode(edk), e.IV: e.b64encode(iv), e.MATDESC: context_json}
    else:
        fields = {e.KEY_V2: e.b64encode(edk), e.IV: e.b64encode(iv), e.MATDESC: context_json, e.CEK_ALG: cek_alg}
        if wrap is not WrapAlgorithm.LEGACY:
            fields[e.WRAP_ALG] = wrap.value
        if cek_alg == e.GCM:
            fields[e.TAG_LEN] = "128"
    if fmt != "v3" and cek_alg == e.CBC:
        fields[e.UNENCRYPTED_LENGTH] = str(len(plaintext))
    return Encrypted(body, fields)


def put_encrypted(s3, bucket: str, key: str, encrypted: Encrypted, location: str = "metadata", extra_metadata=None) -> None:
    """Store an encrypted object with its envelope in metadata or in ``<key>.instruction``."""
    metadata = dict(extra_metadata or {})
    if location == "metadata":
        metadata.update(encrypted.fields)
        s3.put_object(Bucket=bucket, Key=key, Body=encrypted.body, Metadata=metadata)
        return
    object_only = {k: v for k, v in encrypted.fields.items() if k in e.V3_OBJECT_ONLY_KEYS or k == e.UNENCRYPTED_LENGTH}
    in_file = {k: v for k, v in encrypted.fields.items() if k not in object_only}
    metadata.update(object_only)
    s3.put_object(Bucket=bucket, Key=key, Body=encrypted.body, Metadata=metadata)
    s3.put_object(
        Bucket=bucket,
        Key=key + DEFAULT_INSTRUCTION_SUFFIX,
        Body=json.dumps(in_file).encode(),
        Metadata={e.INSTRUCTION_FILE_MARKER: ""},
    )
