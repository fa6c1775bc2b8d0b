"""The bad-input corpus (tests/fixtures/bad_inputs.json plus cases that need live crypto or a
race): each bad object gets its specific reason and no write, and every good object beside them
is migrated. The worker runs as a separate process through a fault proxy on 127.0.0.1 that plays
the races (a delete or an overwrite between our HEAD and our PUT, a file created by someone
else) and a KMS key the worker has no permission for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
from keymigration.formats import envelope as e
from keymigration.formats.envelope import WrapAlgorithm as W
from keymigration.formats.source_keys import load_key_files
from keymigration.migrate import EXIT_FAILED_OBJECTS
from tests.integration.corpus import make_keys
from tests.support.fault_proxy import FaultProxy

CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "bad_inputs.json").read_text())["cases"]
PREFIX = "corpus/"
AWKWARD = ["sp ace", "ünï/cødé", "plus+sign", "percent%2B", "semi;colon", 'quote"d', "apos'trophe", "back\\slash",
           "emoji😀", "tab\tkey", "dot../..", "trailing space ", "#hash", "?query", "&amp", "=equals", "x" * 900]


def bad_body(case) -> bytes | None:
    text = case["instruction_file"]
    if text is None:
        return None
    if text == "HUGE":
        return b'{"x-amz-key-v2":"' + b"A" * (70 * 1024) + b'"}'
    if text == "\udcff":
        return b"\xff\xfe{}"
    return text.encode()


@pytest.fixture
def setup(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    aes, = load_key_files([str(keys.aes)])
    expected: dict[str, tuple[str, str]] = {}
    for case in CORPUS:
        key = PREFIX + "bad/" + case["name"]
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=bytes(32), Metadata=case["metadata"])
        body = bad_body(case)
        if body is not None:
            aws.s3.put_object(Bucket=aws.bucket, Key=key + ".instruction", Body=body)
        expected[key] = (case["outcome"], case["reason"])

    def good(key, fmt="v2", wrap=W.AES_GCM, cek=e.GCM, size=64, **kw):
        body = os.urandom(size)
        put_encrypted(aws.s3, aws.bucket, key, encrypt_object(body, fmt=fmt, wrap=wrap, cek_alg=cek, master=aes, **kw))
        return body

    # Live-crypto cases.
    good(PREFIX + "live/zero-length-gcm")  # a valid envelope, then the body truncated to nothing
    head = aws.s3.head_object(Bucket=aws.bucket, Key=PREFIX + "live/zero-length-gcm")
    aws.s3.put_object(Bucket=aws.bucket, Key=PREFIX + "live/zero-length-gcm", Body=b"", Metadata=head["Metadata"])
    expected[PREFIX + "live/zero-length-gcm"] = ("failed", "content-length-invalid")
    good(PREFIX + "live/cbc-partial-block", fmt="v1", wrap=W.LEGACY, cek=e.CBC)
    head = aws.s3.head_object(Bucket=aws.bucket, Key=PREFIX + "live/cbc-partial-block")
    raw = aws.s3.get_object(Bucket=aws.bucket, Key=PREFIX + "live/cbc-partial-block")["Body"].read()
    aws.s3.put_object(Bucket=aws.bucket, Key=PREFIX + "live/cbc-partial-block", Body=raw[:-3], Metadata=head["Metadata"])
    expected[PREFIX + "live/cbc-partial-block"] = ("failed", "content-length-invalid")
    from tests.unit.keys import aes as other_aes

    put_encrypted(aws.s3, aws.bucket, PREFIX + "live/wrong-master-key",
                  encrypt_object(b"x" * 40, fmt="v1", wrap=W.LEGACY, master=other_aes()))
    expected[PREFIX + "live/wrong-master-key"] = ("failed", "wrong-key")
    denied = encrypt_object(b"x" * 40, fmt="v2", wrap=W.KMS_CONTEXT, kms_client=aws.kms, kms_key_id=keys.old_kms)
    put_encrypted(aws.s3, aws.bucket, PREFIX + "live/kms-no-permission", denied)
    denied_edk = denied.fields[e.KEY_V2]  # the proxy denies KMS calls on this ciphertext
    expected[PREFIX + "live/kms-no-permission"] = ("failed", "kms-AccessDeniedException")
    # Races, played by the proxy (below).
    for name in ("deleted-in-between", "overwritten-in-between", "file-created-by-someone-else"):
        good(PREFIX + "race/" + name)
    expected[PREFIX + "race/deleted-in-between"] = ("skipped", "object-deleted")
    expected[PREFIX + "race/overwritten-in-between"] = ("migrated", "migrated")  # the new content, after a retry
    expected[PREFIX + "race/file-created-by-someone-else"] = ("failed", "instruction-file-conflict")
    # Good objects with every awkward character: they migrate.
    goods = {PREFIX + "good/" + name: good(PREFIX + "good/" + name) for name in AWKWARD}
    for key in goods:
        expected[key] = ("migrated", "migrated")
    return keys, expected, goods, denied_edk


def race_rule(aws, denied_edk):
    done = set()
    overwrite = encrypt_object(b"new content", fmt="v2", wrap=W.AES_GCM, cek_alg=e.GCM,
                               master=load_key_files([str(aws._keys.aes)])[0]) if hasattr(aws, "_keys") else None

    def rule(method, path, headers, body):
        key = urllib.parse.unquote(path.split("?")[0]).split("/", 2)[-1]
        if headers.get("X-Amz-Target", "").startswith("TrentService.") and denied_edk.encode() in body:
            return "kms-access-denied"
        if method != "PUT" or not key.endswith(".instruction") or key in done:
            return None
        base = key[: -len(".instruction")]
        if base == PREFIX + "race/deleted-in-between":
            done.add(key)
            aws.s3.delete_object(Bucket=aws.bucket, Key=base)
        elif base == PREFIX + "race/overwritten-in-between" and overwrite is not None:
            done.add(key)
            put_encrypted(aws.s3, aws.bucket, base, overwrite)
        elif base == PREFIX + "race/file-created-by-someone-else":
            done.add(key)
            aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=b'{"someone":"else"}')
        return None

    return rule


def test_every_bad_input_gets_its_reason_and_no_write(aws, setup, moto_server, tmp_path):
    keys, expected, goods, denied_edk = setup
    aws._keys = keys
    before = {o: aws.s3.head_object(Bucket=aws.bucket, Key=o)["ETag"] for o in aws.keys(PREFIX)}
    proxy = FaultProxy(moto_server.endpoint).start()
    proxy.rule = race_rule(aws, denied_edk)
    report = tmp_path / "report.jsonl"
    env = {**os.environ, **moto_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keymigration.cli", "run", "--bucket", aws.bucket, "--prefix", PREFIX, *keys.cli_args(),
             "--kms-key-id", aws.target_key, "--report", str(report), "--progress", "none", "--concurrency", "4"],
            env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        proxy.stop()
    assert proc.returncode == EXIT_FAILED_OBJECTS, proc.stderr[-3000:]  # finished; some objects failed
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    got = {line["key"]: (line["outcome"], line["reason"]) for line in lines if "key" in line}
    assert len(expected) >= 30 + len(AWKWARD)
    mismatches = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not mismatches, mismatches
    after = set(aws.keys(PREFIX))
    for key, (outcome, reason) in expected.items():
        if outcome != "migrated":
            # No write: an instruction file exists only where it existed before, unchanged.
            name = key + ".instruction"
            if name in before:
                assert aws.s3.head_object(Bucket=aws.bucket, Key=name)["ETag"] == before[name], key
            elif reason != "instruction-file-conflict":
                assert name not in after, key
    assert aws.s3.get_object(Bucket=aws.bucket, Key=PREFIX + "race/file-created-by-someone-else.instruction")["Body"].read() == b'{"someone":"else"}'
    summary = lines[-1]["summary"]
    assert summary["migrated"] == len(goods) + 1
