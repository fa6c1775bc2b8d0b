"""Unwrapping with AES/RSA master keys: right keys work, wrong keys never yield a data key."""
import os

import pytest

from keymigration.demo.legacy_writer import encrypt_object
from keymigration.errors import UnwrapError
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.unwrap import (
    unwrap_data_key,
    unwrap_legacy_aes_ecb,
    unwrap_rsa_pkcs1,
)

from .keys import aes, rsa_key

CASES = [
    # (format, wrap, content cipher, key factory)
    ("v1", W.LEGACY, e.CBC, "aes"),
    ("v1", W.LEGACY, e.CBC, "rsa"),
    ("v2", W.AES_WRAP, e.GCM, "aes"),
    ("v2", W.AES_GCM, e.GCM, "aes"),
    ("v2", W.AES_GCM, e.CBC, "aes"),
    ("v2", W.RSA_OAEP_SHA256, e.GCM, "rsa"),
    ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa"),
    ("v3", W.AES_GCM, None, "aes"),
    ("v3", W.RSA_OAEP_SHA1, None, "rsa"),
]


def make_key(kind, n=0, matdesc=None):
    return aes(matdesc=matdesc, label=f"aes{n}") if kind == "aes" else rsa_key(n, matdesc=matdesc)


def parsed(fmt, wrap, cek, master, matdesc=None, data_key=None):
    enc = encrypt_object(b"hello", fmt=fmt, wrap=wrap, cek_alg=cek, master=master, matdesc=matdesc, data_key=data_key)
    return e.from_metadata(enc.fields)


@pytest.mark.parametrize("fmt,wrap,cek,kind", CASES)
def test_right_key_unwraps(fmt, wrap, cek, kind):
    master = make_key(kind)
    dk = os.urandom(32)
    env = parsed(fmt, wrap, cek, master, data_key=dk)
    assert env.wrap is wrap and env.format == fmt
    result = unwrap_data_key(env, [make_key("aes", 5), rsa_key(7), master])
    assert result.data_key.reveal() == dk
    assert result.key_label == master.label


@pytest.mark.parametrize("fmt,wrap,cek,kind", CASES)
def test_wrong_key_is_rejected(fmt, wrap, cek, kind):
    env = parsed(fmt, wrap, cek, make_key(kind, 1))
    wrong = [make_key(kind, 2), make_key(kind, 3)]
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env, wrong)
    assert info.value.reason == "wrong-key"


def test_wrong_rsa_pkcs1_key_never_passes_over_many_blobs():
    """Implicit rejection returns 32 random bytes ~1/250 times: the raw check must catch all."""
    right, wrong = rsa_key(1), rsa_key(2)
    accepted = 0
    for _ in range(600):
        blob = right.private_key.public_key().encrypt(os.urandom(32), __import__("cryptography.hazmat.primitives.asymmetric.padding", fromlist=["PKCS1v15"]).PKCS1v15())
        if unwrap_rsa_pkcs1(wrong, blob) is not None:
            accepted += 1
        assert unwrap_rsa_pkcs1(right, blob) is not None
    assert accepted == 0


def test_ecb_24_byte_data_key_needs_a_pinned_key():
    master = aes()
    env = parsed("v1", W.LEGACY, e.CBC, master, data_key=os.urandom(24))
    assert unwrap_legacy_aes_ecb(master.key.reveal(), env.encrypted_key, pinned=False) is None
    with pytest.raises(UnwrapError):
        unwrap_data_key(env, [master])
    pinned = type(master)(master.label, master.key, {})
    assert len(unwrap_data_key(env, [pinned]).data_key) == 24


def test_matdesc_pins_the_key():
    a = aes(matdesc={"team": "a"}, label="a")
    b = aes(matdesc={"team": "b"}, label="b")
    env = parsed("v1", W.LEGACY, e.CBC, b, matdesc={"team": "b"})
    assert unwrap_data_key(env, [a, b]).key_label == "b"
    # A pinned key is not tried on another description, and unpinned keys are not tried when a pin matches.
    env_a = parsed("v1", W.LEGACY, e.CBC, b, matdesc={"team": "a"})
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env_a, [a, b])
    assert info.value.reason == "wrong-key"


def test_pinned_keys_never_tried_for_other_descriptions():
    b = aes(matdesc={"team": "b"}, label="b")
    env = parsed("v2", W.AES_GCM, e.GCM, b, matdesc={"team": "c"})
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env, [b])
    assert info.value.reason == "no-source-key"


def test_two_different_keys_that_both_open_are_ambiguous(monkeypatch):
    import keymigration.formats.unwrap as u

    env = parsed("v1", W.LEGACY, e.CBC, aes())
    monkeypatch.setattr(u, "_try_key", lambda envelope, key, pinned: (key.label.encode() * 4, None))
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env, [aes(label="k1"), aes(label="k2")])
    assert info.value.reason == "ambiguous-key"


def test_kms_wrapped_needs_kms():
    env = e.from_metadata({"x-amz-key-v2": "AAAA", "x-amz-iv": "AAAAAAAAAAAAAAAA", "x-amz-wrap-alg": "kms+context",
                           "x-amz-cek-alg": e.GCM, "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}'})
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env, [aes()])
    assert info.value.reason == "kms-wrapped"


def test_no_key_of_the_needed_type():
    env = parsed("v2", W.RSA_OAEP_SHA1, e.GCM, rsa_key())
    with pytest.raises(UnwrapError, match="no RSA source key"):
        unwrap_data_key(env, [aes()])


def test_key_bytes_never_in_repr_or_errors():
    master = aes()
    env = parsed("v2", W.AES_GCM, e.GCM, master)
    result = unwrap_data_key(env, [master])
    text = repr(master) + str(master) + repr(result) + repr(result.data_key) + str(result.data_key)
    for secret in (master.key.reveal(), result.data_key.reveal()):
        assert secret.hex() not in text and repr(secret) not in text
    with pytest.raises(TypeError):
        __import__("pickle").dumps(result.data_key)


# -- #13 item 3: how strong each proof is -------------------------------------------------------


def test_pkcs1_proof_strength_per_key_size():
    from keymigration.formats.unwrap import pkcs1_proof_bits

    bits = pkcs1_proof_bits(rsa_key(0))  # RSA-2048
    assert 22.5 < bits < 23.0  # 00 (<= 2^-7), 02, the separator before a 16/24/32-byte key, non-zero padding


def test_cbc_tail_proves_eight_bits_per_padding_byte():
    from keymigration.formats.content import check_cbc_tail
    from keymigration.formats.secrets import DataKey

    master = aes()
    for size, pad in ((15, 1), (10, 6), (32, 16)):
        dk = os.urandom(32)
        enc = encrypt_object(b"x" * size, fmt="v1", wrap=W.LEGACY, cek_alg=e.CBC, master=master, data_key=dk)
        env = e.from_metadata(enc.fields)
        assert check_cbc_tail(env, DataKey(dk), enc.body[-32:], len(enc.body)) == 8 * pad


@pytest.mark.parametrize(
    "candidates,body_bits,passes",
    [(1, 8.0, True), (2, 8.0, False), (2, 40.0, False), (2, 48.0, True), (3, 48.0, True), (2, 128.0, True), (1000, 48.0, False)],
)
def test_several_candidates_need_a_proof_beyond_2_to_the_64(candidates, body_bits, passes):
    from dataclasses import replace

    from keymigration.formats.unwrap import check_proof_strength, pkcs1_proof_bits

    master = rsa_key(0)
    env = parsed("v1", W.LEGACY, e.CBC, master)
    unwrapped = replace(unwrap_data_key(env, [master]), candidates=candidates).proven("cbc-tail", body_bits)
    assert unwrapped.proof == "pkcs1-structure" and unwrapped.bits == pkcs1_proof_bits(master)
    if passes:
        check_proof_strength(unwrapped)
    else:
        with pytest.raises(UnwrapError) as info:
            check_proof_strength(unwrapped)
        assert info.value.reason == "proof-too-weak"


def test_every_weak_candidate_is_kept_for_the_body_to_decide(monkeypatch):
    import keymigration.formats.unwrap as u

    right, wrong = rsa_key(0, label="right"), rsa_key(1, label="wrong")
    env = parsed("v2", W.LEGACY, e.GCM, right)
    real = u.unwrap_rsa_pkcs1
    monkeypatch.setattr(u, "unwrap_rsa_pkcs1", lambda key, blob: os.urandom(32) if key.label == "wrong" else real(key, blob))
    found = u.unwrap_candidates(env, [wrong, right, aes()])
    assert [x.key_label for x in found] == ["wrong", "right"] and all(x.candidates == 2 for x in found)
    with pytest.raises(UnwrapError) as info:
        unwrap_data_key(env, [wrong, right])
    assert info.value.reason == "ambiguous-key"
