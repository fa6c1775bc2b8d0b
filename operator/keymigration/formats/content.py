"""Decrypting an object body to prove a data key right, in constant memory. Plaintext is dropped.

Suites (spec: content-metadata.md "Algorithm Suite"; key-derivation.md for V3):
* ALG_AES_256_CBC_IV16_NO_KDF: AES/CBC/PKCS5Padding with x-amz-iv; unauthenticated, so the check
  is the padding and, when recorded, x-amz-unencrypted-content-length.
* ALG_AES_256_GCM_IV12_TAG16_NO_KDF: AES/GCM, x-amz-iv, no AAD, 16-byte tag appended.
* ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY (115): HKDF-SHA512 with salt = x-amz-i derives the
  content key and a 28-byte commitment that MUST equal x-amz-d (compared in constant time);
  nonce 12 x 0x01, AAD 00 73.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from keymigration.errors import ContentError
from keymigration.formats.envelope import CBC, GCM, SUITE_115, Envelope
from keymigration.formats.secrets import DataKey

TAG_BYTES = 16
SUITE_115_ID = b"\x00\x73"
V3_NONCE = b"\x01" * 12



def derive_v3_keys(data_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """(content key, commitment) per key-derivation.md: HKDF-Extract(salt=message id, ikm=dk)."""
    prk = hmac.new(message_id, data_key, hashlib.sha512).digest()
    content_key = HKDFExpand(hashes.SHA512(), 32, SUITE_115_ID + b"DERIVEKEY").derive(prk)
    commitment = HKDFExpand(hashes.SHA512(), 28, SUITE_115_ID + b"COMMITKEY").derive(prk)
    return content_key, commitment


def check_commitment(envelope: Envelope, data_key: DataKey) -> bytes:
    """The V3 content key, after checking the key commitment (spec: MUST, constant time)."""
    assert envelope.message_id is not None and envelope.commitment is not None
    content_key, commitment = derive_v3_keys(data_key.reveal(), envelope.message_id)
    if not hmac.compare_digest(commitment, envelope.commitment):
        raise ContentError("commitment-mismatch", "V3 key commitment (x-amz-d) does not match the data key")
    return content_key


def verify_body(envelope: Envelope, data_key: DataKey, chunks: Iterable[bytes]) -> int:
    """Decrypt the body stream with the data key, dropping the plaintext; returns its length."""
    return sum(len(piece) for piece in decrypt_stream(envelope, data_key, chunks))


def decrypt_stream(envelope: Envelope, data_key: DataKey, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Plaintext pieces of the body. GCM plaintext is authentic only once the stream ends without
    an error (the tag is checked last); CBC padding and recorded length are checked at the end."""
    if envelope.cek_alg == SUITE_115:
        key = check_commitment(envelope, data_key)
        yield from _gcm(key, V3_NONCE, SUITE_115_ID, chunks)
        return
    assert envelope.iv is not None
    if envelope.cek_alg == GCM:
        yield from _gcm(data_key.reveal(), envelope.iv, None, chunks)
        return
    if envelope.cek_alg != CBC:
        raise ContentError("unknown-content-algorithm", f"cannot decrypt content algorithm {envelope.cek_alg}")
    length = 0
    for piece in _cbc(data_key.reveal(), envelope.iv, chunks):
        length += len(piece)
        yield piece
    if envelope.unencrypted_length is not None and envelope.unencrypted_length != length:
        raise ContentError(
            "content-mismatch",
            f"CBC plaintext is {length} bytes, x-amz-unencrypted-content-length says {envelope.unencrypted_length}",
        )


def _gcm(key: bytes, nonce: bytes, aad: bytes | None, chunks: Iterable[bytes]) -> Iterator[bytes]:
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
    if aad:
        decryptor.authenticate_additional_data(aad)
    held = b""  # the last 16 bytes seen may be the tag; hold them back
    for chunk in chunks:
        held += chunk
        if len(held) > TAG_BYTES:
            yield decryptor.update(held[:-TAG_BYTES])
            held = held[-TAG_BYTES:]
    if len(held) < TAG_BYTES:
        raise ContentError("content-mismatch", "GCM body is shorter than its tag")
    try:
        yield decryptor.finalize_with_tag(held)
    except InvalidTag:
        raise ContentError("content-mismatch", "GCM tag does not verify: the data key does not decrypt this body") from None


def _cbc(key: bytes, iv: bytes, chunks: Iterable[bytes]) -> Iterator[bytes]:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    held = b""  # the last block holds the padding; release everything before it
    for chunk in chunks:
        held += decryptor.update(chunk)
        if len(held) > 16:
            yield held[:-16]
            held = held[-16:]
    try:
        held += decryptor.finalize()
    except ValueError:
        raise ContentError("content-mismatch", "CBC body length is not a multiple of 16") from None
    if len(held) < 16:
        raise ContentError("content-mismatch", "CBC body is empty")
    pad = held[-1]
    if not 1 <= pad <= 16 or not hmac.compare_digest(held[-pad:], bytes([pad]) * pad):
        raise ContentError("content-mismatch", "CBC padding is invalid: the data key does not decrypt this body")
    yield held[:-pad]


def check_cbc_tail(envelope: Envelope, data_key: DataKey, tail: bytes, body_length: int) -> None:
    """Check a CBC data key against the last block(s) of the body, from a ranged GET of the last
    32 bytes: the final block's PKCS#5 padding must be valid, and match the recorded plaintext
    length when there is one. A wrong key passes with probability about 2^-8 (2^-128 with a
    recorded length whose padding is a full block), on top of what the wrap check caught."""
    assert envelope.iv is not None
    if body_length < 16 or body_length % 16 or len(tail) not in (16, 32):
        raise ContentError("content-mismatch", "CBC body length is not a whole number of blocks")
    previous = tail[:16] if len(tail) == 32 else envelope.iv
    decryptor = Cipher(algorithms.AES(data_key.reveal()), modes.CBC(previous)).decryptor()
    block = decryptor.update(tail[-16:]) + decryptor.finalize()
    pad = block[-1]
    if not 1 <= pad <= 16 or not hmac.compare_digest(block[-pad:], bytes([pad]) * pad):
        raise ContentError("content-mismatch", "CBC padding is invalid: the data key does not decrypt this body")
    if envelope.unencrypted_length is not None and body_length - pad != envelope.unencrypted_length:
        raise ContentError("content-mismatch", "CBC plaintext length does not match x-amz-unencrypted-content-length")
