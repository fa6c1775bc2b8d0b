"""Unwrapping a data key with an old AES or RSA master key. Pure functions.

A wrong key must never yield a data key. Each algorithm function returns the data key only when
the wrap proves it right, and says how certain that proof is:

* AES/GCM, AESWrap (RFC 3394 integrity check), RSA-OAEP (OAEP check plus, for RSA-OAEP-SHA1,
  the pseudo-key length and cipher suffix) are authenticated: a wrong key fails.
* Legacy AES/ECB (V1) is not authenticated. A 16- or 32-byte data key is followed by a full
  PKCS#5 padding block (16 bytes of 0x10), which a wrong key produces with probability 2^-128;
  a 24-byte key has only 8 padding bytes, so it is accepted only from a key pinned by matdesc.
* Legacy RSA PKCS#1 v1.5 (V1): cryptography >= 42 applies implicit rejection and returns random
  bytes for a wrong key instead of failing, so the block is checked here from raw RSA: 00 02,
  at least 8 non-zero padding bytes, 00, and a 16/24/32-byte payload.

Keys are chosen as Java v1's EncryptionMaterialsAccessor did: keys pinned to the envelope's
materials description first; otherwise every unpinned key of the right type, accepting a result
only if exactly one distinct data key comes out.
"""
from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, replace
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from keymigration.errors import UnwrapError
from keymigration.formats.envelope import GCM, SUITE_115, Envelope
from keymigration.formats.secrets import DataKey
from keymigration.formats.source_keys import (
    AES_KEY_SIZES,
    AesMasterKey,
    MasterKey,
    RsaMasterKey,
)
from keymigration.formats.vocabulary import WrapAlgorithm

DATA_KEY_SIZES = (16, 24, 32)



# How a check proves a data key, in bits: -log2 of the chance that a wrong key passes it. The
# weak proofs call for a check against the body; with several candidate keys, the whole proof
# must leave a wrong key less than 2^-64 per object (check_proof_strength).
WEAK_PROOFS = ("pkcs1-structure", "pinned")
MIN_PROOF_BITS = 64.0
WRAP_PROOF_BITS = {
    WrapAlgorithm.AES_WRAP: 64.0,  # RFC 3394's 64-bit integrity check value
    WrapAlgorithm.AES_GCM: 128.0,  # the GCM tag
    WrapAlgorithm.RSA_OAEP_SHA256: 256.0,  # OAEP's label hash (SHA-256), and more
    WrapAlgorithm.RSA_OAEP_SHA1: 160.0,  # OAEP's label hash (SHA-1), and the pseudo key's suffix
}


@dataclass(frozen=True)
class Unwrapped:
    data_key: DataKey
    key_label: str
    # How the wrap proved the key right: "authenticated" (GCM, AESWrap, OAEP), "padding-block"
    # (ECB with a full padding block), or the weaker "pkcs1-structure" (raw PKCS#1 v1.5 check,
    # ~1e-7 false accept per wrong 2048-bit key) and "pinned" (ECB with 8 padding bytes from a
    # matdesc-pinned key): the last two call for a check against the body (rewrap.py).
    proof: str = "authenticated"
    # Whether the wrap authenticated the object's own content cipher (AES/GCM AAD, RSA-OAEP-SHA1
    # suffix): True; False when it authenticated only Java S3EC's fallback identifier for a CBC
    # object (the x-amz-cek-alg label is then unproven, checked against the body); None for
    # wraps that bind no cipher.
    cek_alg_bound: bool | None = None
    bits: float = 128.0  # the wrap's own proof (WRAP_PROOF_BITS, pkcs1_proof_bits)
    candidates: int = 1  # keys of this kind that were tried: any of them might have passed
    body_bits: float = 0.0  # what the check against the body added (GCM tag, CBC padding)
    body_proof: str = ""  # "gcm-tag" (the whole body streamed) or "cbc-tail" (its last block)

    @property
    def needs_content_check(self) -> bool:
        return self.proof in WEAK_PROOFS or self.cek_alg_bound is False

    def proven(self, body_proof: str, body_bits: float) -> "Unwrapped":
        return replace(self, body_proof=body_proof, body_bits=body_bits)


# ---------------------------------------------------------------------------------------------
# One algorithm, one key. Each returns the data key bytes, or None when this key is wrong.


def unwrap_legacy_aes_ecb(kek: bytes, blob: bytes, pinned: bool) -> bytes | None:
    """V1 x-amz-key with an AES master key: AES/ECB/PKCS5Padding (Java "AES", Ruby aes-*-ecb)."""
    if len(kek) not in AES_KEY_SIZES or len(blob) not in (32, 48):
        return None
    decryptor = Cipher(algorithms.AES(kek), modes.ECB()).decryptor()
    plain = decryptor.update(blob) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 16 or not hmac.compare_digest(plain[-pad:], bytes([pad]) * pad):
        return None
    data_key = plain[:-pad]
    if len(data_key) not in DATA_KEY_SIZES:
        return None
    if pad != 16 and not pinned:
        return None  # only 8 padding bytes: not proof enough for an unpinned key
    return data_key


def unwrap_aes_wrap(kek: bytes, blob: bytes) -> bytes | None:
    """x-amz-wrap-alg AESWrap: RFC 3394 with the default IV (Java v1 AuthenticatedEncryption)."""
    if len(kek) not in AES_KEY_SIZES or len(blob) - 8 not in DATA_KEY_SIZES:
        return None
    try:
        return aes_key_unwrap(kek, blob)
    except InvalidUnwrap:
        return None


def unwrap_aes_gcm(kek: bytes, blob: bytes, aads: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """x-amz-wrap-alg AES/GCM (V3 x-amz-w 02): IV(12) || ciphertext || tag(16), AAD = cipher id.
    Returns the data key and the AAD that authenticated it."""
    if len(kek) not in AES_KEY_SIZES or len(blob) - 28 not in DATA_KEY_SIZES:
        return None
    for aad in aads:
        try:
            return AESGCM(kek).decrypt(blob[:12], blob[12:], aad), aad
        except InvalidTag:
            continue
    return None


try:  # GMP's modular exponentiation is ~10x faster than Python's pow for RSA-2048
    from gmpy2 import powmod as _powmod  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - optional speed-up
    _powmod = pow


def _rsa_raw(key: RsaMasterKey, blob: bytes) -> bytes | None:
    numbers = key.private_key.private_numbers()
    n = numbers.public_numbers.n
    size = key.modulus_bytes
    if len(blob) != size:
        return None
    c = int.from_bytes(blob, "big")
    if c >= n:
        return None
    # CRT, as OpenSSL does.
    m1 = int(_powmod(c, numbers.dmp1, numbers.p))
    m2 = int(_powmod(c, numbers.dmq1, numbers.q))
    h = (numbers.iqmp * (m1 - m2)) % numbers.p
    return (m2 + h * numbers.q).to_bytes(size, "big")


def unwrap_rsa_pkcs1(key: RsaMasterKey, blob: bytes) -> bytes | None:
    """V1 x-amz-key with an RSA key pair: RSA PKCS#1 v1.5 (Java "RSA", Ruby public_encrypt).

    Checked from raw RSA because cryptography's implicit rejection never raises (see module doc).
    """
    block = _rsa_raw(key, blob)
    if block is None or block[0] != 0 or block[1] != 2:
        return None
    separator = block.find(b"\x00", 2)
    if separator < 10:  # fewer than 8 padding bytes, or no separator
        return None
    data_key = block[separator + 1 :]
    return data_key if len(data_key) in DATA_KEY_SIZES else None


def unwrap_rsa_oaep_sha256(key: RsaMasterKey, blob: bytes) -> bytes | None:
    """RSA/ECB/OAEPWithSHA-256AndMGF1Padding (Java v1 AE): SunJCE means MGF1-SHA1; BC SHA-256."""
    if len(blob) != key.modulus_bytes:
        return None
    for mgf in (hashes.SHA1(), hashes.SHA256()):
        try:
            data_key = key.private_key.decrypt(
                blob, asym_padding.OAEP(mgf=asym_padding.MGF1(mgf), algorithm=hashes.SHA256(), label=None)
            )
        except ValueError:
            continue
        return data_key if len(data_key) in DATA_KEY_SIZES else None
    return None


def unwrap_rsa_oaep_sha1(key: RsaMasterKey, blob: bytes, identifiers: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """RSA-OAEP-SHA1 (V3 x-amz-w 22): pseudo key = len(dk) || dk || cipher identifier. Returns
    the data key and the identifier it carried (compared whole, in constant time: stricter than
    Java S3EC, which compares only as many bytes as it expects)."""
    if len(blob) != key.modulus_bytes:
        return None
    try:
        pseudo = key.private_key.decrypt(
            blob, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        )
    except ValueError:
        return None
    n = pseudo[0] if pseudo else 0
    if n not in DATA_KEY_SIZES:
        return None
    suffix = pseudo[1 + n :]
    for ident in identifiers:
        if hmac.compare_digest(suffix, ident):
            return pseudo[1 : 1 + n], ident
    return None


# ---------------------------------------------------------------------------------------------
# Choosing the key


def _cipher_identifiers(envelope: Envelope) -> list[bytes]:
    """The identifiers an AES/GCM wrap's AAD or an RSA-OAEP-SHA1 pseudo key may carry for this
    object, the object's own cipher first, each one some real writer produces:

    * V3: "115", the suite id (Java S3EC, Python, Go S3EC, .NET, PHP V3).
    * V2 GCM: "AES/GCM/NoPadding" (Ruby V2, Java v1's V2 client, Java S3EC, .NET).
    * V2 CBC: "AES/CBC/PKCS5Padding" (Java v1's V2 client re-wrapping a CBC object with
      putInstructionFile binds the object's cipher), then "AES/GCM/NoPadding": Java S3EC v3/v4
      reEncryptInstructionFile re-wraps CBC objects with AesKeyring / RsaKeyring, which bind
      ALG_AES_256_GCM_IV12_TAG16_NO_KDF's cipher name for every non-committing suite. That
      fallback authenticates the key but not the CBC label (Unwrapped.cek_alg_bound False).
    """
    if envelope.format == "v3":
        return [SUITE_115.encode()]
    ids = [envelope.cek_alg.encode()]
    if envelope.cek_alg != GCM:
        ids.append(GCM.encode())
    return ids


_Opened = tuple[bytes, "bool | None"]  # the data key; whether the object's cipher was bound


def _bound(opened: tuple[bytes, bytes] | None, envelope: Envelope) -> _Opened | None:
    if opened is None:
        return None
    data_key, identifier = opened
    return data_key, identifier == _cipher_identifiers(envelope)[0]


def _try_key(envelope: Envelope, key: MasterKey, pinned: bool) -> _Opened | None:
    blob = envelope.encrypted_key
    wrap = envelope.wrap
    if isinstance(key, AesMasterKey):
        kek = key.key.reveal()
        if wrap is WrapAlgorithm.AES_GCM:
            return _bound(unwrap_aes_gcm(kek, blob, _cipher_identifiers(envelope)), envelope)
        if wrap is WrapAlgorithm.LEGACY:
            data_key = unwrap_legacy_aes_ecb(kek, blob, pinned)
        elif wrap is WrapAlgorithm.AES_WRAP:
            data_key = unwrap_aes_wrap(kek, blob)
        else:
            return None
    elif wrap is WrapAlgorithm.RSA_OAEP_SHA1:
        return _bound(unwrap_rsa_oaep_sha1(key, blob, _cipher_identifiers(envelope)), envelope)
    elif wrap is WrapAlgorithm.LEGACY:
        data_key = unwrap_rsa_pkcs1(key, blob)
    elif wrap is WrapAlgorithm.RSA_OAEP_SHA256:
        data_key = unwrap_rsa_oaep_sha256(key, blob)
    else:
        return None
    return None if data_key is None else (data_key, None)


def _key_fits(wrap: WrapAlgorithm, key: MasterKey) -> bool:
    if wrap is WrapAlgorithm.LEGACY:
        return True
    if wrap in (WrapAlgorithm.AES_WRAP, WrapAlgorithm.AES_GCM):
        return isinstance(key, AesMasterKey)
    return isinstance(key, RsaMasterKey)


def pkcs1_proof_bits(key: RsaMasterKey) -> float:
    """-log2 of the chance that a wrong key's raw RSA output passes unwrap_rsa_pkcs1: the first
    byte 00 (at most 2^8(k-1) / n, since n >= 2^(bits-1)), then 02, the 00 separator exactly
    before a 16, 24 or 32-byte payload, and no 00 in the padding before it. For RSA-2048 about
    22.7 bits (1 in 6.8e6; the structure alone, counting the first byte as 1/256, 1 in 1.4e7)."""
    k = key.modulus_bytes
    first_byte = 8.0 * (k - 1) - (key.private_key.key_size - 1)  # log2 of P(first byte is 00)
    payloads = sum((255 / 256) ** (k - 3 - n) for n in DATA_KEY_SIZES)  # PS non-zero, for each length
    return -(first_byte - 16.0 + math.log2(payloads))


def _proof(envelope: Envelope, key: MasterKey, data_key: bytes) -> tuple[str, float]:
    """How the wrap proved this data key, and the proof's strength in bits."""
    if envelope.wrap is not WrapAlgorithm.LEGACY:
        return "authenticated", WRAP_PROOF_BITS[envelope.wrap]
    if isinstance(key, RsaMasterKey):
        return "pkcs1-structure", pkcs1_proof_bits(key)
    return ("padding-block", 128.0) if len(data_key) in (16, 32) else ("pinned", 64.0)


def unwrap_candidates(envelope: Envelope, keys: Sequence[MasterKey]) -> list[Unwrapped]:
    """Every distinct data key a configured key yields, each proven by the wrap. More than one
    only when every one of them is weakly proven (legacy RSA PKCS#1, pinned ECB): the body then
    decides (rewrap.py). Raises UnwrapError: no-source-key, wrong-key, ambiguous-key."""
    if envelope.wrap.is_kms:
        raise UnwrapError("kms-wrapped", "the data key is wrapped by KMS, not by an AES/RSA master key")
    fitting = [k for k in keys if _key_fits(envelope.wrap, k)]
    if not fitting:
        kind = {WrapAlgorithm.LEGACY: "AES or RSA"}.get(envelope.wrap, "AES" if envelope.wrap in (WrapAlgorithm.AES_WRAP, WrapAlgorithm.AES_GCM) else "RSA")
        raise UnwrapError("no-source-key", f"no {kind} source key is configured for wrap {envelope.wrap}")
    pinned = [k for k in fitting if k.matdesc is not None and k.matdesc == envelope.context]
    candidates = pinned or [k for k in fitting if k.matdesc is None]
    if not candidates:
        raise UnwrapError(
            "no-source-key",
            "no source key matches this object's materials description and no unpinned key is configured",
        )
    found: list[Unwrapped] = []
    for key in candidates:
        opened = _try_key(envelope, key, pinned=bool(pinned))
        if opened is None or (envelope.format == "v3" and len(opened[0]) != 32):  # V3 data keys are 32 bytes
            continue
        data_key, bound = opened
        if any(hmac.compare_digest(data_key, u.data_key.reveal()) for u in found):
            continue
        proof, bits = _proof(envelope, key, data_key)
        same_kind = sum(1 for k in candidates if type(k) is type(key))
        found.append(Unwrapped(DataKey(data_key), key.label, proof, bound, bits, same_kind))
    if not found:
        which = "the source key pinned to this materials description" if pinned else f"any of {len(candidates)} source keys"
        raise UnwrapError("wrong-key", f"the data key ({envelope.wrap}) does not unwrap with {which}")
    if len(found) > 1 and not all(u.proof in WEAK_PROOFS for u in found):
        raise _ambiguous(found)
    return found


def unwrap_data_key(envelope: Envelope, keys: Sequence[MasterKey]) -> Unwrapped:
    """The envelope's data key, recovered with exactly one proven configured master key."""
    found = unwrap_candidates(envelope, keys)
    if len(found) > 1:
        raise _ambiguous(found)
    return found[0]


def _ambiguous(found: Sequence[Unwrapped]) -> UnwrapError:
    labels = ", ".join(u.key_label for u in found)
    return UnwrapError("ambiguous-key", f"several source keys give different data keys ({labels}); pin one with a materials description")


def check_proof_strength(unwrapped: Unwrapped) -> None:
    """A weak proof (legacy RSA PKCS#1, pinned ECB) chosen among several candidate keys must,
    with the body check, leave a wrong key less than 2^-64 per object: any of the candidates
    could have passed, so their number counts against it. A single candidate is the operator's
    own assertion and keeps the wrap and body checks alone (docs/formats.md)."""
    if unwrapped.proof not in WEAK_PROOFS or unwrapped.candidates < 2:
        return
    bits = unwrapped.bits + unwrapped.body_bits - math.log2(unwrapped.candidates)
    if bits < MIN_PROOF_BITS:
        raise UnwrapError(
            "proof-too-weak",
            f"the data key from {unwrapped.key_label}, one of {unwrapped.candidates} candidate keys, is proven only to about "
            f"1 in 2^{bits:.0f} (the legacy wrap and the body's last CBC block), not 1 in 2^64: pin each key to its objects' "
            "materials description (--source-key FILE:{...}), or migrate these objects with that key alone",
        )
