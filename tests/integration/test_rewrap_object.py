"""Per-object re-wrap over HTTP against a moto server: every format, safety rules, idempotency."""
import json
import os

import pytest

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.vocabulary import BACKUP_SUFFIX
from keymigration.migrate.reader import read_object
from keymigration.migrate.results import Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from tests.unit.keys import aes, rsa_key

FORMATS = [
    ("v1", W.LEGACY, e.CBC, "aes"),
    ("v1", W.LEGACY, e.CBC, "rsa"),
    ("v2", W.AES_WRAP, e.GCM, "aes"),
    ("v2", W.AES_GCM, e.GCM, "aes"),
    ("v2", W.RSA_OAEP_SHA256, e.GCM, "rsa"),
    ("v2", W.RSA_OAEP_SHA1, e.GCM, "rsa"),
    ("v2", W.RSA_OAEP_SHA1, e.CBC, "rsa"),
    ("v3", W.AES_GCM, None, "aes"),
    ("v3", W.RSA_OAEP_SHA1, None, "rsa"),
]
AES = aes(label="aes-master")
RSA = rsa_key(0, label="rsa-master")


def rewrapper(aws, verify="envelope", suffix=".instruction", source_kms=(), keys=(AES, RSA), run_id=""):
    kms = KmsKeys(aws.kms, aws.target_key, source_key_ids=source_kms)
    kms.describe_target()
    return ObjectRewrapper(aws.s3, kms, keys, RewrapOptions(aws.bucket, suffix=suffix, verify=verify, run_id=run_id))


def write(aws, key, body, fmt, wrap, cek, kind, location="metadata", **kw):
    master = AES if kind == "aes" else RSA if kind == "rsa" else None
    enc = encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=master, kms_client=aws.kms, **kw)
    put_encrypted(aws.s3, aws.bucket, key, enc, location=location, extra_metadata={"owner": "team-a"})
    return enc


@pytest.mark.parametrize("location", ["metadata", "instruction-file"])
@pytest.mark.parametrize("fmt,wrap,cek,kind", FORMATS)
def test_every_format_migrates_and_reads_with_kms_only(aws, fmt, wrap, cek, kind, location):
    key = "dir/naïve file +%.bin"
    body = os.urandom(1000)
    write(aws, key, body, fmt, wrap, cek, kind, location)
    before = aws.snapshot(key)
    result = rewrapper(aws, verify="body").process(key)
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated"), result
    assert result.format == fmt and result.wrap == str(wrap)
    assert aws.snapshot(key) == before  # body, ETag, metadata, LastModified untouched
    kms = KmsKeys(aws.kms, aws.target_key)
    assert read_object(Bucket(aws.s3, aws.bucket), kms, key, ".instruction") == body
    stored = aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")
    assert stored["Metadata"]["x-amz-crypto-instr-file"] == ""
    fields = json.loads(stored["Body"].read())
    assert all(isinstance(v, str) for v in fields.values())
    assert set(fields) <= set(e.ALL_ENVELOPE_KEYS) - set(e.V3_OBJECT_ONLY_KEYS)
    if location == "instruction-file":
        backup = aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction" + BACKUP_SUFFIX)["Body"].read()
        assert e.from_instruction_file(backup, before[2]).wrap is wrap  # the old envelope is recoverable


def test_rerun_is_a_noop_without_kms_calls(aws):
    write(aws, "a", b"x", "v2", W.AES_GCM, e.GCM, "aes")
    first = rewrapper(aws)
    assert first.process("a").outcome is Outcome.MIGRATED
    etag = aws.s3.head_object(Bucket=aws.bucket, Key="a.instruction")["ETag"]
    again = rewrapper(aws)
    result = again.process("a")
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "already-migrated")
    assert again.kms.calls.get("encrypt", 0) == 0 and again.kms.calls.get("decrypt", 0) == 0
    assert aws.s3.head_object(Bucket=aws.bucket, Key="a.instruction")["ETag"] == etag


def test_same_run_id_counts_as_migrated_after_resume(aws):
    write(aws, "a", b"x", "v2", W.AES_GCM, e.GCM, "aes")
    assert rewrapper(aws, run_id="run-1").process("a").outcome is Outcome.MIGRATED
    result = rewrapper(aws, run_id="run-1").process("a")
    assert result.outcome is Outcome.MIGRATED and result.resumed


@pytest.mark.parametrize("fmt,wrap,cek,kind", FORMATS)
def test_wrong_source_key_writes_nothing(aws, fmt, wrap, cek, kind):
    write(aws, "obj", b"secret", fmt, wrap, cek, kind)
    wrong = [aes(label="other-aes"), rsa_key(9, label="other-rsa")]
    result = rewrapper(aws, keys=wrong).process("obj")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "wrong-key")
    assert aws.keys() == ["obj"]


def test_not_encrypted_is_skipped(aws):
    aws.s3.put_object(Bucket=aws.bucket, Key="plain.txt", Body=b"hello")
    result = rewrapper(aws).process("plain.txt")
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "not-encrypted")


# V3 has no legacy kms wrap (docs/formats.md §2.9).
@pytest.mark.parametrize("fmt,source_wrap", [("v2", W.KMS), ("v2", W.KMS_CONTEXT), ("v3", W.KMS_CONTEXT)])
def test_kms_to_kms_uses_reencrypt_only(aws, source_wrap, fmt):
    old = aws.new_kms_key()
    body = os.urandom(100)
    write(aws, "k", body, fmt, source_wrap, e.GCM, None, kms_key_id=old)
    worker = rewrapper(aws, source_kms=[old])
    result = worker.process("k")
    assert result.outcome is Outcome.MIGRATED, result
    assert set(worker.kms.calls) == {"describe_key", "re_encrypt"}
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction") == body


def test_kms_source_without_configured_key_fails_clearly(aws):
    write(aws, "k", b"x", "v2", W.KMS_CONTEXT, e.GCM, None, kms_key_id=aws.new_kms_key())
    result = rewrapper(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "no-source-key")
    assert aws.keys() == ["k"]


def test_object_already_on_target_key_is_skipped(aws):
    write(aws, "k", b"x", "v2", W.KMS_CONTEXT, e.GCM, None, kms_key_id=aws.target_key)
    result = rewrapper(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "already-on-target-key")


def test_custom_suffix_keeps_old_instruction_file(aws):
    write(aws, "k", b"body", "v1", W.LEGACY, e.CBC, "aes", location="instruction-file")
    old = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read()
    assert rewrapper(aws, suffix=".rewrapped").process("k").outcome is Outcome.MIGRATED
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == old
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".rewrapped") == b"body"


def test_foreign_file_at_target_is_backed_up_then_replaced(aws):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction", Body=b'{"x-amz-key-v2":"AAAA"}')
    assert rewrapper(aws).process("k").outcome is Outcome.MIGRATED
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction" + BACKUP_SUFFIX)["Body"].read() == b'{"x-amz-key-v2":"AAAA"}'


def test_existing_different_backup_blocks_replacement(aws):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes", location="instruction-file")
    aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction" + BACKUP_SUFFIX, Body=b"{}")
    before = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read()
    result = rewrapper(aws).process("k")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "backup-exists")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == before


def test_file_written_by_someone_else_under_target_key_is_recognised(aws):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    first = rewrapper(aws).process("k")
    assert first.outcome is Outcome.MIGRATED
    # Strip our marker, as if another tool had written the same envelope.
    stored = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read()
    aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction", Body=stored)
    again = rewrapper(aws)
    result = again.process("k")
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "already-migrated")
    assert again.kms.calls.get("encrypt", 0) == 0


def test_instruction_file_created_concurrently_is_not_overwritten(aws):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    worker = rewrapper(aws)

    def racer(params, **_):
        if params.get("Key") == "k.instruction" and "IfNoneMatch" in params:
            aws.s3.put_object(Bucket=aws.bucket, Key="k.instruction", Body=b"theirs")

    worker.bucket.client.meta.events.register("before-parameter-build.s3.PutObject", racer)
    try:
        result = worker.process("k")
    finally:
        worker.bucket.client.meta.events.unregister("before-parameter-build.s3.PutObject", racer)
    assert (result.outcome, result.reason) == (Outcome.FAILED, "instruction-file-conflict")
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == b"theirs"


def test_object_overwritten_during_migration_withdraws_the_file(aws):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    worker = rewrapper(aws)

    def overwrite(params, **_):
        if params.get("Key") == "k.instruction":
            write(aws, "k", b"new body", "v2", W.AES_GCM, e.GCM, "aes")

    worker.bucket.client.meta.events.register("before-parameter-build.s3.PutObject", overwrite)
    try:
        result = worker.process("k")
    finally:
        worker.bucket.client.meta.events.unregister("before-parameter-build.s3.PutObject", overwrite)
    assert (result.outcome, result.reason, result.retryable) == (Outcome.FAILED, "object-changed", True)
    assert "k.instruction" not in aws.keys()


def test_lost_response_to_a_conditional_put_is_recognised_as_ours(aws):
    """The PUT lands, its response is lost, the SDK retries and gets 412: still our write."""
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    worker = rewrapper(aws)
    retried = []

    def lose_first_response(request_dict=None, attempts=None, **_):
        if request_dict and request_dict["url"].endswith("k.instruction") and not retried:
            retried.append(attempts)
            return 0  # ask botocore to send the same PUT again
        return None

    events = worker.bucket.client.meta.events
    events.register_first("needs-retry.s3.PutObject", lose_first_response)
    try:
        result = worker.process("k")
    finally:
        events.unregister("needs-retry.s3.PutObject", lose_first_response)
    assert retried and (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated")
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction") == b"body"


@pytest.mark.parametrize("verify", ["envelope", "none", "body"])
@pytest.mark.parametrize("size", [0, 5, 16, 100])
def test_a_pkcs1_false_accept_is_caught_by_the_body_before_any_write(aws, monkeypatch, size, verify):
    """Raw PKCS#1 v1.5 checking lets a wrong 2048-bit key through about once in 1.4e7; the
    CBC tail (one ranged GET; the whole body with --verify body) catches it before anything is
    written, at every verification level: it is part of the unwrap's proof, not a verification."""
    write(aws, "k", os.urandom(size), "v1", W.LEGACY, e.CBC, "rsa")
    import keymigration.formats.unwrap as unwrap_module

    monkeypatch.setattr(unwrap_module, "unwrap_rsa_pkcs1", lambda key, blob: os.urandom(32))  # a "false accept"
    results = [rewrapper(aws, verify=verify, keys=(RSA,)).process("k") for _ in range(5)]
    assert all(r.outcome is Outcome.FAILED and r.reason in ("wrong-key", "content-mismatch") for r in results), results
    assert aws.keys() == ["k"]
    monkeypatch.undo()
    assert rewrapper(aws, verify=verify, keys=(RSA,)).process("k").outcome is Outcome.MIGRATED  # the right key still passes


# -- #13 item 1: the content cipher the wrap authenticates ------------------------------------


def java_s3ec_rewrapped_cbc(aws, key: str, body: bytes | None = None) -> bytes:
    """A CBC object as Java S3EC v3/v4 reEncryptInstructionFile leaves it after re-wrapping under
    an AES key: AesKeyring binds "AES/GCM/NoPadding" as the AES/GCM wrap's AAD for every
    non-committing suite, while x-amz-cek-alg stays AES/CBC/PKCS5Padding (and x-amz-tag-len "0",
    cipherTagLengthBits of the CBC suite). Returns the plaintext; ``body`` replaces the ciphertext."""
    from keymigration.demo.legacy_writer import encrypt_body, wrap_data_key

    data_key, iv, plaintext = bytes(range(32)), bytes(range(16)), b"a CBC body re-wrapped by Java S3EC" * 3
    fields = {
        "x-amz-key-v2": e.b64encode(wrap_data_key(W.AES_GCM, data_key, e.GCM, AES)),
        "x-amz-iv": e.b64encode(iv), "x-amz-matdesc": "{}", "x-amz-cek-alg": e.CBC,
        "x-amz-wrap-alg": "AES/GCM", "x-amz-tag-len": "0",
    }
    ciphertext = encrypt_body(e.CBC, data_key, iv, plaintext) if body is None else body
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=ciphertext, Metadata={"x-amz-unencrypted-content-length": str(len(plaintext))})
    aws.s3.put_object(Bucket=aws.bucket, Key=key + ".instruction", Body=json.dumps(fields).encode())
    return plaintext


@pytest.mark.parametrize("verify", ["envelope", "none", "body"])
def test_java_s3ec_gcm_identifier_on_a_cbc_object_is_accepted(aws, verify):
    plaintext = java_s3ec_rewrapped_cbc(aws, "k")
    result = rewrapper(aws, verify=verify).process("k")
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated"), result
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction") == plaintext


@pytest.mark.parametrize("verify", ["envelope", "none", "body"])
def test_an_unbound_cbc_label_is_checked_against_the_body(aws, verify):
    """The AES/GCM/NoPadding identifier proves the key but not the CBC label: an object whose
    body is not CBC under that key (relabelled, or damaged) is refused before anything is
    written, rather than given a new envelope whose KMS context authenticates the label."""
    import hashlib

    from keymigration.errors import ContentError
    from keymigration.formats.content import check_cbc_tail
    from keymigration.formats.secrets import DataKey

    not_cbc = hashlib.sha256(b"not a CBC body").digest() * 3  # 96 bytes: whole blocks, bad padding
    java_s3ec_rewrapped_cbc(aws, "k", body=not_cbc)
    envelope = e.from_instruction_file(aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read(), {})
    with pytest.raises(ContentError):  # the precondition, deterministic: this body's last block does not unpad
        check_cbc_tail(envelope, DataKey(bytes(range(32))), not_cbc[-32:], len(not_cbc))
    before = aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read()
    result = rewrapper(aws, verify=verify).process("k")
    assert result.outcome is Outcome.FAILED and result.reason in ("cek-alg-mismatch", "content-mismatch"), result
    if verify != "body":
        assert result.reason == "cek-alg-mismatch"
    assert aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read() == before
    assert sorted(aws.keys()) == ["k", "k.instruction"]


# -- #13 item 7: the target key is pinned ------------------------------------------------------


def kms_requests(client, operations=("Encrypt", "Decrypt", "ReEncrypt")):
    """Record the parameters of every KMS request of ``client`` (a list, filled as it runs)."""
    seen = []
    for operation in operations:
        client.meta.events.register(f"provide-client-params.kms.{operation}", lambda params, operation=operation, **_: seen.append((operation, dict(params))))
    return seen


@pytest.mark.parametrize("source", ["aes", "kms"])
def test_an_alias_repointed_mid_run_cannot_move_objects_to_another_key(aws, source):
    """The alias is resolved once (DescribeKey); every Encrypt, ReEncrypt and Decrypt names the
    key ARN, so an alias repointed while the run goes on changes nothing."""
    import uuid

    alias = f"alias/target-{uuid.uuid4().hex[:8]}"
    aws.kms.create_alias(AliasName=alias, TargetKeyId=aws.target_key)
    old = aws.new_kms_key()
    write(aws, "k", b"body", "v2", W.KMS_CONTEXT if source == "kms" else W.AES_GCM, e.GCM, source if source == "aes" else None,
          kms_key_id=old)
    kms = KmsKeys(aws.kms, alias, source_key_ids=[old] if source == "kms" else [])
    assert kms.describe_target() == aws.target_key
    worker = ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(aws.bucket))
    other = aws.new_kms_key()
    aws.kms.update_alias(AliasName=alias, TargetKeyId=other)  # someone repoints the alias
    seen = kms_requests(aws.kms)
    result = worker.process("k")
    assert (result.outcome, result.reason) == (Outcome.MIGRATED, "migrated"), result
    named = {p.get("KeyId") or p.get("DestinationKeyId") for _, p in seen} | {p["SourceKeyId"] for o, p in seen if o == "ReEncrypt" and p["SourceKeyId"] != old}
    assert named == {aws.target_key}, seen
    assert [o for o, _ in seen] == (["Encrypt", "Decrypt"] if source == "aes" else ["ReEncrypt", "ReEncrypt"])  # wrap, verify
    new = e.from_instruction_file(aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read(), {})
    assert aws.kms.decrypt(CiphertextBlob=new.encrypted_key, EncryptionContext=new.context, KeyId=aws.target_key)["KeyId"] == aws.target_key


@pytest.mark.parametrize("operation", ["Encrypt", "Decrypt"])
def test_a_kms_answer_naming_another_key_fails_the_object(aws, operation):
    write(aws, "k", b"body", "v2", W.AES_GCM, e.GCM, "aes")
    worker = rewrapper(aws)
    other = aws.new_kms_key()

    def another_key(parsed, **_):
        parsed["KeyId"] = other

    aws.kms.meta.events.register(f"after-call.kms.{operation}", another_key)
    try:
        result = worker.process("k")
    finally:
        aws.kms.meta.events.unregister(f"after-call.kms.{operation}", another_key)
    assert (result.outcome, result.reason) == (Outcome.FAILED, "kms-key-mismatch"), result
    assert aws.keys() == ["k"]


def test_a_verification_reencrypt_answering_for_another_source_key_fails(aws):
    """moto's ReEncrypt ignores SourceKeyId (AWS answers IncorrectKeyException): the response's
    SourceKeyId is checked, so the verification proves the blob is under the target key."""
    old = aws.new_kms_key()
    write(aws, "k", b"body", "v2", W.KMS_CONTEXT, e.GCM, None, kms_key_id=old)
    worker = rewrapper(aws, source_kms=[old])
    calls = []

    def count(parsed, **_):
        calls.append(parsed.get("SourceKeyId"))
        if len(calls) == 2:  # the second ReEncrypt is the verification
            parsed["SourceKeyId"] = old

    aws.kms.meta.events.register("after-call.kms.ReEncrypt", count)
    try:
        result = worker.process("k")
    finally:
        aws.kms.meta.events.unregister("after-call.kms.ReEncrypt", count)
    assert len(calls) == 2 and (result.outcome, result.reason) == (Outcome.FAILED, "kms-key-mismatch"), result
    assert aws.keys() == ["k"]


# -- #13 item 8: KMS grant tokens ---------------------------------------------------------------


@pytest.mark.parametrize("source", ["aes", "kms"])
def test_grant_tokens_go_with_every_kms_request(aws, source):
    old = aws.new_kms_key()
    write(aws, "k", b"body", "v2", W.KMS_CONTEXT if source == "kms" else W.AES_GCM, e.GCM, source if source == "aes" else None,
          kms_key_id=old)
    seen = kms_requests(aws.kms, ("DescribeKey", "Encrypt", "Decrypt", "ReEncrypt"))
    kms = KmsKeys(aws.kms, aws.target_key, source_key_ids=[old] if source == "kms" else [], grant_tokens=["grant-token-1", "grant-token-2"])
    kms.describe_target()
    result = ObjectRewrapper(aws.s3, kms, [AES], RewrapOptions(aws.bucket)).process("k")
    assert result.outcome is Outcome.MIGRATED, result
    assert len(seen) == 3 and all(p.get("GrantTokens") == ["grant-token-1", "grant-token-2"] for _, p in seen), seen


# -- #13 item 3: every valid object migrates at the default verify level -----------------------


def test_java_v1_ae_rsa_over_gcm_is_proven_by_the_tag_at_every_verify_level(aws):
    """Java v1 AuthenticatedEncryption without a provider named BC: RSA PKCS#1 v1.5, no
    x-amz-wrap-alg, AES/GCM body (the JCE-made layout: tests/interop/test_java_v1_interop.py).
    The weak PKCS#1 proof is completed by the GCM tag; the CBC tail check never applies to GCM."""
    for verify in ("envelope", "none", "body"):
        key = f"ae-{verify}"
        body = os.urandom(1000)
        write(aws, key, body, "v2", W.LEGACY, e.GCM, "rsa")
        assert e.from_metadata(aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"]).wrap is W.LEGACY
        result = rewrapper(aws, verify=verify, keys=(RSA, rsa_key(3, label="other-rsa"))).process(key)
        assert (result.outcome, result.reason, result.source_key) == (Outcome.MIGRATED, "migrated", "rsa-master"), (verify, result)
        assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), key, ".instruction") == body


@pytest.mark.parametrize("verify", ["envelope", "none", "body"])
def test_a_pkcs1_false_accept_among_candidates_is_resolved_by_the_gcm_tag(aws, monkeypatch, verify):
    """Two unpinned RSA keys both pass the PKCS#1 structure check (a wrong key does about once in
    6.8e6): the body decides instead of failing the object as ambiguous."""
    import keymigration.formats.unwrap as unwrap_module

    body = os.urandom(100)
    write(aws, "k", body, "v2", W.LEGACY, e.GCM, "rsa")
    real = unwrap_module.unwrap_rsa_pkcs1
    monkeypatch.setattr(unwrap_module, "unwrap_rsa_pkcs1", lambda key, blob: os.urandom(32) if key.label == "other-rsa" else real(key, blob))
    result = rewrapper(aws, verify=verify, keys=(rsa_key(3, label="other-rsa"), RSA)).process("k")
    assert (result.outcome, result.source_key) == (Outcome.MIGRATED, "rsa-master"), result
    assert read_object(Bucket(aws.s3, aws.bucket), KmsKeys(aws.kms, aws.target_key), "k", ".instruction") == body


# -- #13 item 2: which objects' readers must now pass another context -------------------------


@pytest.mark.parametrize(
    "wrap,matdesc,changed",
    [
        (W.KMS_CONTEXT, {"tenant": "acme"}, None),  # readers already pass {"tenant": "acme"}
        (W.KMS, {"tenant": "acme"}, {"tenant": "acme"}),  # Java v1 KMSEncryptionMaterials with a description
        (W.KMS, {}, None),  # Ruby v1 / Java v1 without a description: {"kms_cmk_id": ...} only
    ],
)
def test_kms_sources_keep_their_caller_pairs_and_the_report_names_a_change(aws, wrap, matdesc, changed):
    old = aws.new_kms_key()
    write(aws, "k", b"body", "v2", wrap, e.GCM, None, kms_key_id=old, matdesc=matdesc)
    result = rewrapper(aws, source_kms=[old]).process("k")
    assert result.outcome is Outcome.MIGRATED, result
    new = e.from_instruction_file(aws.s3.get_object(Bucket=aws.bucket, Key="k.instruction")["Body"].read(), {})
    assert new.context == {**matdesc, "aws:x-amz-cek-alg": e.GCM}
    assert (result.context_changed, result.reader_context) == ((True, changed) if changed else (False, None))
