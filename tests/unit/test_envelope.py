"""Envelope detection, parsing and serialization (pure)."""
import base64
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
    # Single-encoded (not what S3 sends; Java S3EC would read U+FFFD): kept MIME-decoded.
    encoded = "=?UTF-8?B?" + base64.b64encode('{"owner":"zoë"}'.encode()).decode() + "?="
    assert e.from_metadata({**V2, "x-amz-matdesc": encoded}).context == {"owner": "zoë"}


# Non-ASCII context values as readers get them back from object metadata (#13 item 6). A writer
# sends UTF-8; S3 reads each byte as ISO-8859-1 and returns the UTF-8 of those characters,
# RFC 2047-encoded; a server returning the raw bytes (moto) reaches boto3 as the same Latin-1
# characters. The Java S3EC undoes both.
CONTEXT = {"tenant": "café", "region": "日本", "aws:x-amz-cek-alg": e.GCM}
CONTEXT_JSON = json.dumps(CONTEXT, ensure_ascii=False, separators=(",", ":"))


def read_as_latin1(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def s3_rfc2047(text: str, words: int = 1) -> str:
    """What S3 returns for a header value whose bytes were UTF-8 ``text``."""
    doubled = read_as_latin1(text).encode("utf-8")
    cut = [len(doubled) * n // words for n in range(words + 1)]
    return " ".join("=?UTF-8?B?" + base64.b64encode(doubled[a:b]).decode() + "?=" for a, b in zip(cut, cut[1:]))


@pytest.mark.parametrize(
    "encode", [s3_rfc2047, lambda text: s3_rfc2047(text, words=3), read_as_latin1],
    ids=["s3-rfc2047", "s3-rfc2047-split", "raw-bytes-as-latin1"],
)
def test_double_encoded_context_decodes_as_java_s3ec_does(encode):
    v2 = {**V2, "x-amz-wrap-alg": "kms+context", "x-amz-matdesc": encode(CONTEXT_JSON)}
    assert e.from_metadata(v2).context == CONTEXT
    v3 = {**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": encode(CONTEXT_JSON.replace(e.GCM, "115"))}
    assert e.from_metadata(v3).context == {**CONTEXT, "aws:x-amz-cek-alg": "115"}
    v3m = {**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "02", "x-amz-m": encode('{"owner":"zoë"}')}
    assert e.from_metadata(v3m).context == {"owner": "zoë"}


def test_java_s3ec_decoding_vectors():
    d = e.decode_metadata_value
    assert d("=?UTF-8?B?w4PCtg==?=") == ""  # Java drops a trailing non-ASCII run (JSON ends in "}")
    assert d("=?UTF-8?B?w4PCtg==?=}") == "ö}"
    assert d('{"a":"' + read_as_latin1("日本") + '"}') == '{"a":"日本"}'
    assert d('{"plain":"ascii =?x"}') == '{"plain":"ascii =?x"}'
    assert d("=?UNKNOWN-CHARSET?B?w4PCtg==?=") == "=?UNKNOWN-CHARSET?B?w4PCtg==?="


def test_instruction_file_values_are_not_mime_decoded():
    """Double encoding is "specific to Object Metadata": a file's JSON is taken as it is."""
    literal = '{"note":"=?UTF-8?B?w6k=?="}'
    body = json.dumps({**V2, "x-amz-matdesc": literal}).encode()
    assert e.from_instruction_file(body, {}).context == {"note": "=?UTF-8?B?w6k=?="}
    body = json.dumps({**V2, "x-amz-matdesc": json.dumps({"tenant": "café"}, ensure_ascii=False)}, ensure_ascii=False)
    assert e.from_instruction_file(body.encode(), {}).context == {"tenant": "café"}


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
    body = json.dumps({"x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": '{"aws:x-amz-cek-alg":"115"}'}).encode()
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


# #13 item 1: a kms+context envelope's content cipher is authenticated only by the context.
KMS_V2 = {**V2, "x-amz-wrap-alg": "kms+context", "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}'}
KMS_V2_CBC = {**{k: v for k, v in KMS_V2.items() if k != "x-amz-tag-len"}, "x-amz-iv": IV16,
              "x-amz-cek-alg": e.CBC, "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/CBC/PKCS5Padding","tenant":"acme"}'}


@pytest.mark.parametrize(
    "metadata",
    [
        {**KMS_V2_CBC, "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding","tenant":"acme"}'},  # GCM relabelled CBC
        {**KMS_V2, "x-amz-matdesc": '{"aws:x-amz-cek-alg":"AES/CBC/PKCS5Padding"}'},
        {**KMS_V2, "x-amz-matdesc": '{"tenant":"acme"}'},  # not bound at all
        {**KMS_V2, "x-amz-matdesc": '{"aws:x-amz-cek-alg":"aes/gcm/nopadding"}'},  # compared exactly, as Go does
        {**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}'},
        {**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "12"},  # V3 without x-amz-t: {}
    ],
)
def test_kms_context_must_bind_the_content_cipher(metadata):
    with pytest.raises(EnvelopeError) as info:
        e.from_metadata(metadata)
    assert info.value.reason == "cek-alg-mismatch"
    file_keys = {k: v for k, v in metadata.items() if k not in e.V3_OBJECT_ONLY_KEYS}
    with pytest.raises(EnvelopeError) as info:
        e.from_instruction_file(json.dumps(file_keys).encode(), metadata)
    assert info.value.reason in ("cek-alg-mismatch", "conflicting-envelope")


def test_kms_context_binding_the_content_cipher_is_accepted():
    assert e.from_metadata(KMS_V2_CBC).cek_alg == e.CBC
    assert e.from_metadata(KMS_V2).cek_alg == e.GCM
    # The legacy kms wrap binds no cipher: nothing to compare.
    legacy = {**KMS_V2_CBC, "x-amz-wrap-alg": "kms", "x-amz-matdesc": '{"kms_cmk_id":"alias/old"}'}
    assert e.from_metadata(legacy).wrap is WrapAlgorithm.KMS


# #13 item 2: the caller's encryption context survives the re-wrap.


def test_kms_source_keeps_every_caller_pair_in_order_without_kms_cmk_id():
    python_v2 = {**KMS_V2, "x-amz-matdesc": '{"tenant": "acme", "zone": "b", "aws:x-amz-cek-alg": "AES/GCM/NoPadding"}'}
    env = e.from_metadata(python_v2)
    assert list(e.kms_context_for(env).items()) == [("tenant", "acme"), ("zone", "b"), ("aws:x-amz-cek-alg", e.GCM)]
    legacy = e.from_metadata({**KMS_V2_CBC, "x-amz-wrap-alg": "kms", "x-amz-matdesc": '{"kms_cmk_id":"alias/old","tenant":"acme"}'})
    assert e.kms_context_for(legacy) == {"tenant": "acme", "aws:x-amz-cek-alg": e.CBC}
    assert e.legacy_kms_context("alias/new", e.caller_context(legacy.context)) == {"kms_cmk_id": "alias/new", "tenant": "acme"}
    fields = e.target_fields(env, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(env))
    assert fields["x-amz-matdesc"] == '{"tenant":"acme","zone":"b","aws:x-amz-cek-alg":"AES/GCM/NoPadding"}'
    v3 = e.from_metadata({**v3_object(), "x-amz-3": "AAAA", "x-amz-w": "12", "x-amz-t": '{"tenant": "acme", "aws:x-amz-cek-alg": "115"}'})
    assert e.target_fields(v3, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(v3))["x-amz-t"] == '{"tenant":"acme","aws:x-amz-cek-alg":"115"}'


def test_aes_rsa_sources_take_the_configured_context_never_their_matdesc():
    env = e.from_metadata({"x-amz-key": "AAAA", "x-amz-iv": IV16, "x-amz-matdesc": '{"owner":"team-a"}'})
    assert e.kms_context_for(env) == {"aws:x-amz-cek-alg": e.CBC}
    assert e.kms_context_for(env, {"tenant": "acme"}) == {"tenant": "acme", "aws:x-amz-cek-alg": e.CBC}


def test_non_ascii_context_values_are_written_ascii_escaped():
    env = e.from_metadata({"x-amz-key": "AAAA", "x-amz-iv": IV16, "x-amz-matdesc": "{}"})
    fields = e.target_fields(env, b"new", WrapAlgorithm.KMS_CONTEXT, e.kms_context_for(env, {"tenant": "café", "region": "日本"}))
    body = e.instruction_body(fields)
    assert body.isascii() and json.loads(json.loads(body)["x-amz-matdesc"]) == {"tenant": "café", "region": "日本", "aws:x-amz-cek-alg": e.CBC}


@pytest.mark.parametrize("pairs", [{"aws:x-amz-cek-alg": "x"}, {"kms_cmk_id": "k"}, {"AWS:anything": "x"}, {"": "x"}, {"k": 5}])
def test_a_configured_context_may_not_use_reserved_keys(pairs):
    from keymigration.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        e.check_caller_context(pairs, "--encryption-context")


def test_reader_context_is_what_a_reader_passes():
    assert e.reader_context(WrapAlgorithm.KMS_CONTEXT, {"tenant": "a", "aws:x-amz-cek-alg": e.GCM, "kms_cmk_id": "k"}) == {"tenant": "a"}
    assert e.reader_context(WrapAlgorithm.KMS, {"kms_cmk_id": "k", "tenant": "a"}) == {}
    assert e.reader_context(WrapAlgorithm.AES_GCM, {"owner": "x"}) == {}


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
