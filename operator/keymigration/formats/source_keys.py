"""Old master keys: AES and RSA key files, each with an optional materials description.

A key is identified in reports by its label (the file path or Secret reference), never by
anything derived from its bytes.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
)

from keymigration.errors import KeyFileError
from keymigration.formats.secrets import SecretBytes

AES_KEY_SIZES = (16, 24, 32)



@dataclass(frozen=True)
class AesMasterKey:
    label: str
    key: SecretBytes = field(repr=False)
    matdesc: dict[str, str] | None = None

    kind = "aes"


@dataclass(frozen=True)
class RsaMasterKey:
    label: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    matdesc: dict[str, str] | None = None

    kind = "rsa"

    @property
    def modulus_bytes(self) -> int:
        return (self.private_key.key_size + 7) // 8


MasterKey = AesMasterKey | RsaMasterKey


def parse_matdesc(text: str, where: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise KeyFileError(f"{where}: materials description is not valid JSON") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise KeyFileError(f"{where}: materials description must be a JSON object of strings")
    return value


def split_key_argument(argument: str) -> tuple[str, dict[str, str] | None]:
    """``FILE`` or ``FILE:MATDESC_JSON`` (the JSON starts at the first ``:{``)."""
    path, sep, rest = argument.partition(":{")
    if not sep:
        return argument, None
    return path, parse_matdesc("{" + rest, path)


def _aes_candidates(data: bytes) -> list[bytes]:
    """Raw 16/24/32 bytes, or base64 text of such a key; both when a file is both."""
    found = []
    if len(data) in AES_KEY_SIZES:
        found.append(data)
    text = data.strip()
    if text and len(text) <= 64:
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) in AES_KEY_SIZES and decoded not in found:
            found.append(decoded)
    stripped = data.rstrip(b"\r\n")  # a raw text key saved by `echo` ends with a newline
    if stripped != data and len(stripped) in AES_KEY_SIZES and stripped not in found:
        found.append(stripped)
    return found


def _pem_rsa_key(data: bytes, label: str) -> rsa.RSAPrivateKey:
    if b"PRIVATE KEY-----" not in data:
        raise KeyFileError(f"{label}: PEM file holds no private key (a public key cannot unwrap data keys)")
    if b"ENCRYPTED" in data:
        raise KeyFileError(f"{label}: encrypted (password-protected) private keys are not supported")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{label}: not a readable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{label}: private key is not RSA")
    return key


def _der_rsa_key(data: bytes) -> rsa.RSAPrivateKey | None:
    """A DER RSA private key, or None (the bytes may be a raw AES key starting with 0x30)."""
    if len(data) <= 64 or data[:1] != b"\x30":
        return None
    try:
        key = load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, rsa.RSAPrivateKey) else None


def load_key_bytes(data: bytes, label: str, matdesc: dict[str, str] | None = None) -> list[MasterKey]:
    """Master keys in one file's bytes: an RSA private key (PEM PKCS#1/PKCS#8, or DER) or an AES key.

    A file that is both a valid raw AES key and valid base64 of one yields both candidates;
    unwrapping then only accepts the one that is proven right (see unwrap.py).
    """
    if b"-----BEGIN" in data:
        return [RsaMasterKey(label, _pem_rsa_key(data, label), matdesc)]
    der = _der_rsa_key(data)
    if der is not None:
        return [RsaMasterKey(label, der, matdesc)]
    candidates = _aes_candidates(data)
    if not candidates:
        raise KeyFileError(
            f"{label}: not an AES key (16, 24 or 32 raw bytes, or their base64) nor an RSA private key (PEM or DER); "
            f"the file is {len(data)} bytes"
        )
    if len(candidates) == 1:
        return [AesMasterKey(label, SecretBytes(candidates[0], "AES master key"), matdesc)]
    return [
        AesMasterKey(f"{label} (reading {n + 1} of {len(candidates)})", SecretBytes(value, "AES master key"), matdesc)
        for n, value in enumerate(candidates)
    ]


def load_key_file(argument: str) -> list[MasterKey]:
    """Keys from a CLI/Job argument ``FILE`` or ``FILE:MATDESC_JSON``."""
    path, matdesc = split_key_argument(argument)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read key file ({error.strerror})") from None
    return load_key_bytes(data, path, matdesc)


def load_key_files(arguments: list[str]) -> list[MasterKey]:
    keys: list[MasterKey] = []
    for argument in arguments:
        keys.extend(load_key_file(argument))
    return keys
