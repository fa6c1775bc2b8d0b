"""Envelope detection, parsing and serialization (pure)."""
import json

import pytest

from keymigration.errors import EnvelopeError
from keymigration.formats import envelope as e
from keymigration.formats.envelope import Location, MetadataKind, WrapAlgorithm

IV16 = "AAAAAAAAAAAAAAAAAAAAAA=="
IV12 = "AAAAAAAAAAAAAAAA"
V2 = {"x-amz-key-v2": "AAAA", "x-amz-iv": IV12, "x-amz-cek-alg": e.GCM, "x-amz-wrap-alg": "AES/GCM",
      "x-amz-matdesc": "{}", "x-amz-tag-len": "128"}


def v3_object():
    import base64
    return {"x-amz-c": "115", "x-amz-d": base64.b64encode(bytes(28)).decode(), "x-amz-i": base64.b64encode(bytes(28)).decode()}


@pytest.mark.parametrize(
    "metadata,kind",
    [
        ({}, MetadataKind.NONE),
        ({"content-owner": "x"}, MetadataKind.NONE),
        ({"x-amz-key": "AAAA", "x-amz-iv": IV16, "x-amz-matdesc": "{}"}, MetadataKind.ENVELOPE),
        (V2, MetadataKind.ENVELOPE),
        ({k.upper(): v for k, v in V2.items()}, MetadataKind.ENVELOPE),
        (None, MetadataKind.V3_INSTRUCTION),
    ],
)
def test_detect(metadata, kind):
    assert e.detect(v3_object() if metadata is None else metadata) is kind


@pytest.mark.parametrize(
    "metadata,reason",
    [
        ({"x-amz-key": "AAAA", "x-amz-key-v2": "AAAA", "x-amz-iv": IV16}, "conflicting-envelope"),
        ({**V2, "x-amz-3": "AAAA"}, "conflicting-envelope"),
        ({"x-amz-key-v2": "AAAA"}, "malformed-envelope"),
        ({"x-amz-3": "AAAA", "x-amz-w": "12"}, "malformed-envelope"),
        ({"x-amz-c": "115"}, "malformed-envelope"),
        ({**V2, "x-amz-c": "115"}, "conflicting-envelope"),
    ],
)
def test_detect_rejects(metadata, reason):
    with pytest.raises(EnvelopeError) as info:
        e.detect(metadata)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"x-amz-key-v2": "!!!"}, "malformed-envelope"),
        ({"x-amz-iv": "AAAA"}, "malformed-envelope"),
        ({"x-amz-wrap-alg": "ROT13"}, "unknown-wrap-algorithm"),
        ({"x-amz-cek-alg": "AES/CTR/NoPadding"}, "unknown-content-algorithm"),
        ({"x-amz-matdesc": "{not json"}, "malformed-envelope"),
        ({"x-amz-matdesc": "[1]"}, "malformed-envelope"),
        ({"x-amz-tag-len": "96"}, "malformed-envelope"),
    ],
)
def test_bad_values(change, reason):
    with pytest.raises(EnvelopeError) as info:
        e.from_metadata({**V2, **change})
    assert info.value.reason == reason


def test_v1_defaults_to_cbc_and_legacy_wrap():
    env = e.from_metadata({"x-amz-key": "AAAA", "x-amz-iv": IV16, "x-amz-matdesc": '{"a":"b"}',
                           "x-amz-unencrypted-content-length": "5"})
    assert (env.format, env.cek_alg, env.wrap, env.context, env.unencrypted_length) == ("v1", e.CBC, WrapAlgorithm.LEGACY, {"a": "b"}, 5)


def test_ruby_pkcs7_name_is_cbc():
    metadata = {k: v for k, v in V2.items() if k != "x-amz-tag-len"}
    env = e.from_metadata({**metadata, "x-amz-cek-alg": "AES/CBC/PKCS7Padding", "x-amz-iv": IV16})
    assert env.cek_alg == e.CBC


def test_rfc2047_encoded_matdesc():
    # S3 returns non-ASCII metadata values RFC 2047-encoded.
    encoded = "=?UTF-8?B?" + __import__("base64").b64encode('{"owner":"zoë"}'.encode()).decode() + "?="
    assert e.from_metadata({**V2, "x-amz-matdesc": encoded}).context == {"owner": "zoë"}


def test_instruction_file_v2():
    body = json.dumps({k: v for k, v in V2.items()}).encode()
    env = e.from_instruction_file(body, {"x-amz-unencrypted-content-length": "3"})
    assert env.location is Location.INSTRUCTION_FILE and env.format == "v2"


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"not json", "malformed-instruction-file"),
        (b"[1,2]", "malformed-instruction-file"),
        (b'{"x-amz-key-v2":"AAAA","x-amz-key-v2":"AAAA"}', "malformed-instruction-file"),
        (json.dumps({**V2, "colour": "blue"}).encode(), "malformed-instruction-file"),
        (json.dumps({**V2, "x-amz-iv": 5}).encode(), "malformed-instruction-file"),
        (json.dumps({**V2, "x-amz-d": "AAAA"}).encode(), "conflicting-envelope"),
        (json.dumps({"x-amz-iv": IV12}).encode(), "malformed-instruction-file"),
        (json.dumps({**V2, "x-amz-key": "AAAA"}).encode(), "conflicting-envelope"),
        (b"{" + b" " * (e.MAX_INSTRUCTION_FILE_BYTES + 1) + b"}", "malformed-instruction-file"),
        (b"\xff\xfe", "malformed-instruction-file"),
    ],
)
def test_instruction_file_rejects(body, reason):
    with pytest.raises(EnvelopeError) as info:
        e.from_instruction_file(body, {})
    assert info.value.reason == reason


def test_go_v1_instruction_file_with_extra_length_is_read():
    body = json.dumps({**V2, "x-amz-unencrypted-content-length": 12}).encode()
    assert e.from_instruction_file(body, {}).unencrypted_length == 12


def test_v3_instruction_file_needs_object_keys():
    body = json.dumps({"x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": "{}"}).encode()
    env = e.from_instruction_file(body, v3_object())
    assert env.format == "v3" and env.wrap is WrapAlgorithm.KMS_CONTEXT and len(env.message_id) == 28
    with pytest.raises(EnvelopeError):
        e.from_instruction_file(body, {})


def test_target_fields_v2_gcm():
    env = e.from_metadata(V2)
    fields = e.target_fields(env, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(env))
    assert fields == {
        "x-amz-key-v2": "bmV3", "x-amz-iv": IV12, "x-amz-cek-alg": e.GCM, "x-amz-wrap-alg": "kms+context",
        "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}', "x-amz-tag-len": "128",
    }
    assert all(isinstance(v, str) for v in json.loads(e.instruction_body(fields)).values())


def test_target_fields_v1_becomes_v2_cbc_without_tag_len():
    env = e.from_metadata({"x-amz-key": "AAAA", "x-amz-iv": IV16, "x-amz-matdesc": '{"kms_cmk_id":"old"}'})
    fields = e.target_fields(env, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(env))
    assert fields["x-amz-cek-alg"] == e.CBC and "x-amz-tag-len" not in fields and "x-amz-key" not in fields
    assert json.loads(fields["x-amz-matdesc"]) == {"aws:x-amz-cek-alg": "AES/CBC/PKCS5Padding"}


def test_target_fields_v3_only_file_keys():
    md = {**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "02", "x-amz-m": "{}"}
    env = e.from_metadata(md)
    fields = e.target_fields(env, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(env))
    assert fields == {"x-amz-3": "bmV3", "x-amz-w": "12", "x-amz-t": '{"aws:x-amz-cek-alg":"115"}'}
    with pytest.raises(EnvelopeError):
        e.target_fields(env, b"new", WrapAlgorithm.KMS, {"kms_cmk_id": "k"})


def test_instruction_body_refuses_non_s3ec_keys():
    with pytest.raises(ValueError):
        e.instruction_body({"x-amz-unencrypted-content-length": "5"})
    with pytest.raises(ValueError):
        e.instruction_body({"x-amz-c": "115"})


def test_check_target_takes_metadata_mode_with_any_suffix_and_keeps_backup_names_reserved():
    from keymigration.errors import ConfigurationError
    from keymigration.formats.vocabulary import Mode, check_target

    assert check_target("metadata", ".kms") is Mode.METADATA  # the suffix an earlier migration wrote
    assert check_target("Metadata", ".instruction", api_names=True) is Mode.METADATA
    with pytest.raises(ConfigurationError):
        check_target("cutover", ".kms")
    for suffix in (".keymigration-backup", ".keymigration-backup.2", ".x.keymigration-backup.v"):
        with pytest.raises(ConfigurationError, match="reserved for backups"):
            check_target("instruction-file", suffix)


def test_backup_names_of_a_chain():
    from keymigration.formats.vocabulary import backup_name, is_backup_name

    assert backup_name("k") == "k.keymigration-backup" == backup_name("k", 1)
    assert backup_name("k.instruction", 3) == "k.instruction.keymigration-backup.3"
    assert all(is_backup_name(backup_name(n, s)) for n in ("k", "a/b.instruction") for s in (1, 2, 17))
    assert not any(is_backup_name(n) for n in ("k", "k.2", "k.keymigration-backup.x", "k.keymigration-backup.0"))


def test_the_metadata_form_of_a_new_envelope():
    from keymigration.formats import envelope as e

    v3_object = {"x-amz-c": "115", "x-amz-d": "d", "x-amz-i": "i", "x-amz-3": "old", "x-amz-w": "02", "x-amz-m": "{}",
                 "x-amz-unencrypted-content-length": "5", "owner": "a"}
    fields = {"x-amz-3": "new", "x-amz-w": "12", "x-amz-t": '{"aws:x-amz-cek-alg":"115"}'}
    assert e.metadata_with_envelope(v3_object, fields) == {"x-amz-c": "115", "x-amz-d": "d", "x-amz-i": "i", "owner": "a", **fields}
    v1_object = {"x-amz-key": "k", "x-amz-iv": "iv", "x-amz-matdesc": "{}", "x-amz-unencrypted-content-length": "5", "owner": "a"}
    v2 = {"x-amz-key-v2": "n", "x-amz-iv": "iv", "x-amz-matdesc": "{}", "x-amz-wrap-alg": "kms+context", "x-amz-cek-alg": e.CBC}
    assert e.metadata_with_envelope(v1_object, v2) == {"x-amz-unencrypted-content-length": "5", "owner": "a", **v2}
    with pytest.raises(e.EnvelopeError):
        e.metadata_with_envelope({"owner": "a"}, fields)  # a V3 envelope needs x-amz-c/d/i beside it
    assert e.user_metadata_size({"ab": "cde"}) == len("x-amz-meta-ab") + 3
