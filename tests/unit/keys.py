"""Test master keys, generated once per session (never key material of anyone's)."""
import functools
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keymigration.formats.secrets import SecretBytes
from keymigration.formats.source_keys import AesMasterKey, RsaMasterKey


def aes(size=32, matdesc=None, label="aes"):
    return AesMasterKey(label, SecretBytes(os.urandom(size)), matdesc)


@functools.lru_cache(maxsize=None)
def _rsa_private(n):
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_key(n=0, matdesc=None, label=None):
    return RsaMasterKey(label or f"rsa{n}", _rsa_private(n), matdesc)


def rsa_pem(n=0, pkcs8=True):
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return _rsa_private(n).private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
