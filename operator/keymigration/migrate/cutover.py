"""Cut-over: remove the old envelope from an object's metadata so that every S3EC reader's
default lookup finds the new KMS envelope in ``<key>.instruction`` (docs/cutover.md).

Readers that find an envelope in object metadata use it and never look at the instruction file
(Java S3EC v3/v4, Python v4, Go S3EC, .NET, C++; the specification's rule is cited in
``migrate/rewrap.py`` ``locate_envelope``). The metadata can
only change by rewriting the object: a server-side CopyObject (``aws/copy.py``) onto itself with
``MetadataDirective=REPLACE`` and ``CopySourceIfMatch=<ETag read>``, which keeps the ciphertext
bytes and fails if anyone wrote the object in between. Before that, the removed envelope is
stored in ``<key>.keymigration-backup`` for rollback.

``CutOver.run`` is the cut-over of one object as named stages over a ``CutOverState``, after the
re-wrap stages (``migrate/rewrap.py``) wrote and verified the instruction file:
read_new_file -> check_ready -> plan_dry_run -> recheck_earlier_write -> refuse -> store_backup
-> copy -> confirm -> record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Mapping

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import CutOverRefused, PreconditionFailed, S3Error
from keymigration.formats import envelope as env_mod
from keymigration.formats.envelope import Envelope
from keymigration.formats.vocabulary import BACKUP_SUFFIX, DEFAULT_INSTRUCTION_SUFFIX, VerifyLevel
from keymigration.migrate.files import MARKER_SOURCE, MARKER_TARGET, source_fingerprint, withdraw
from keymigration.migrate.results import Outcome
from keymigration.migrate.state import ObjectState, Verdict, run_stages

METADATA_BACKUP_SUFFIX = BACKUP_SUFFIX  # <key>.keymigration-backup
# Envelope keys that leave the metadata: all V1/V2 keys, and the V3 keys that live in the
# instruction file; x-amz-c/d/i stay:
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST store the mapkey "x-amz-c" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-c" and its value in the Instruction File.
##% - The V3 message format MUST store the mapkey "x-amz-d" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-d" and its value in the Instruction File.
##% - The V3 message format MUST store the mapkey "x-amz-i" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-i" and its value in the Instruction File.
REMOVED_KEYS = env_mod.V1_V2_KEYS + (
    env_mod.ENCRYPTED_DATA_KEY_V3,
    env_mod.ENCRYPTED_DATA_KEY_ALGORITHM_V3,
    env_mod.MAT_DESC_V3,
    env_mod.ENCRYPTION_CONTEXT_V3,
)

ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}


def envelope_in_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    md = env_mod.lower_keys(metadata)
    return {k: md[k] for k in REMOVED_KEYS if k in md}


def stripped_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    md = env_mod.lower_keys(metadata)
    return {k: v for k, v in md.items() if k not in REMOVED_KEYS}


def refusal(head: dict, acl_grants: list | None) -> CutOverRefused | None:
    """Why this object must not be rewritten, or None. Checked before anything is written."""
    if head.get("SSECustomerAlgorithm"):
        return CutOverRefused("sse-c", "the object uses SSE-C; copying it needs the customer key, which keymigration does not hold")
    storage = head.get("StorageClass", "STANDARD")
    if storage in ARCHIVED and 'ongoing-request="false"' not in (head.get("Restore") or ""):
        return CutOverRefused("archived", f"the object is in {storage}; restore it before the cut-over")
    if head.get("ArchiveStatus"):
        return CutOverRefused("archived", f"the object is in Intelligent-Tiering {head['ArchiveStatus']}; restore it first")
    if acl_grants:
        return CutOverRefused(
            "custom-acl", "the object has ACL grants beyond its owner; CopyObject would drop them (see docs/cutover.md)"
        )
    return None


def backup_body(key: str, head: dict, removed: dict[str, str], cut_over_etag: str | None = None) -> bytes:
    data = {
        "keymigration-backup": 1,
        "source": "object-metadata",
        "key": key,
        "etag": head["ETag"],
        "length": head.get("ContentLength"),
        "version_id": head.get("VersionId"),
        "envelope": removed,
    }
    if cut_over_etag:
        data["cut_over_etag"] = cut_over_etag  # the object as the cut-over left it
    return json.dumps(data, sort_keys=True, ensure_ascii=False).encode()


def read_backup_record(stored_body: bytes) -> dict:
    try:
        data = json.loads(stored_body)
    except ValueError:
        raise ValueError("not a keymigration metadata backup") from None
    if not isinstance(data, dict) or data.get("keymigration-backup") != 1 or not isinstance(data.get("envelope"), dict):
        raise ValueError("not a keymigration metadata backup")
    return data


def read_metadata_backup(stored_body: bytes) -> dict[str, str]:
    return {str(k): str(v) for k, v in read_backup_record(stored_body)["envelope"].items()}


def record_cut_over(bucket: Bucket, key: str, head: dict, removed: dict[str, str], after: dict) -> None:
    """Add the cut-over object's ETag to its backup, so a rollback can tell that object from one
    written later under the same key. Best effort: without it, rollback falls back to checks."""
    name = key + METADATA_BACKUP_SUFFIX
    stored = bucket.get_small(name)
    if stored is None:
        return
    try:
        bucket.put(name, backup_body(key, head, removed, after["ETag"]), stored.metadata, if_match=stored.etag)
    except PreconditionFailed:
        pass


def store_metadata_backup(bucket: Bucket, key: str, head: dict, removed: dict[str, str]) -> str | None:
    """``<key>.keymigration-backup``: the envelope about to leave the metadata, for rollback.
    Returns the new backup's ETag, or None when the same backup was already there (a resumed
    run); a different existing backup is refused."""
    name = key + METADATA_BACKUP_SUFFIX
    body = backup_body(key, head, removed)
    try:
        return bucket.put(name, body, {"keymigration-backup-of": "object-metadata"}, if_none_match=True)
    except PreconditionFailed:
        stored = bucket.get_small(name)
        try:
            same = stored is not None and read_metadata_backup(stored.body) == removed
        except ValueError:
            same = False
        if not same:
            raise S3Error(
                "backup-exists",
                f"{name!r} holds a different envelope (an earlier migration's backup); confirm and prune it first",
            ) from None
        return None


# ---------------------------------------------------------------------------------------------
# One object's cut-over, in stages


@dataclass(frozen=True)
class CutOverState:
    """What the cut-over stages know about one object, in the order they learn it."""

    object: ObjectState  # what the re-wrap read (head, key) and wrote (written)
    earlier: bool  # the instruction file was written by an earlier run, not verified by this one
    removed: dict[str, str] = field(repr=False)  # the envelope keys leaving the metadata
    new_metadata: dict[str, str] = field(repr=False)  # the user metadata the copy writes
    # read_new_file
    new_file: StoredFile | None = None  # <key>.instruction as it is now
    new_envelope: Envelope | None = None  # the envelope readers will use after the cut-over
    # refuse: the object's Object Lock settings, which the copy carries onto the new version
    lock: dict = field(default_factory=dict, repr=False)
    # store_backup
    backup_etag: str | None = None  # the backup this call stored (None: it was there already)
    # confirm
    after: dict | None = field(default=None, repr=False)  # HEAD of the object after the copy

    @property
    def key(self) -> str:
        return self.object.key

    @property
    def head(self) -> dict:
        assert self.object.head is not None
        return self.object.head


CUT_OVER = Verdict(Outcome.MIGRATED, "cut-over", "metadata envelope removed; readers use .instruction")


class CutOver:
    """Strips the old envelope from an object's metadata once ``<key>.instruction`` holds our
    verified KMS envelope; the removed envelope goes to ``<key>.keymigration-backup`` first."""

    def __init__(self, bucket: Bucket, kms: KmsKeys, verify: VerifyLevel, dry_run: bool):
        self.bucket = bucket
        self.kms = kms
        self.verify = verify
        self.dry_run = dry_run
        self.rewriter = MetadataRewriter(bucket)
        self.stages = (
            self.read_new_file,
            self.check_ready,
            self.plan_dry_run,
            self.recheck_earlier_write,
            self.refuse,
            self.store_backup,
            self.copy,
            self.confirm,
            self.record,
        )

    def wants(self, state: ObjectState, verdict: Verdict) -> bool:
        """The re-wrap left a verified KMS instruction file (now or in an earlier run) and the
        metadata still holds an envelope."""
        if state.head is None or not envelope_in_metadata(state.head.get("Metadata", {})):
            return False
        if verdict.outcome is Outcome.MIGRATED:
            return True
        return verdict.outcome in (Outcome.SKIPPED, Outcome.PLANNED) and verdict.reason == "already-migrated"

    def refusal(self, key: str, head: dict) -> CutOverRefused | None:
        """Why this object must not be copied onto itself, or None."""
        # The cheap checks first: an archived object cannot even answer GetObjectAcl.
        refused = refusal(head, None) or refusal(head, self.rewriter.acl_grants(key, head))
        if refused is None:
            try:
                self.rewriter.object_lock(key, head)
            except CutOverRefused as error:
                return error
        return refused

    def run(self, state: ObjectState, verdict: Verdict) -> Verdict:
        """The cut-over of an object the re-wrap ended with ``verdict``; returns its verdict."""
        metadata = state.head["Metadata"] if state.head else {}
        start = CutOverState(
            state,
            earlier=verdict.reason == "already-migrated",
            removed=envelope_in_metadata(metadata),
            new_metadata=stripped_metadata(metadata),
        )
        _, ending = run_stages(self.stages, start)
        return ending or CUT_OVER

    # -- stages -----------------------------------------------------------------------------

    def read_new_file(self, state: CutOverState) -> CutOverState:
        stored = self.bucket.get_small(state.key + DEFAULT_INSTRUCTION_SUFFIX)
        new = env_mod.from_instruction_file(stored.body, state.new_metadata) if stored is not None else None
        return replace(state, new_file=stored, new_envelope=new)

    def check_ready(self, state: CutOverState) -> CutOverState:
        name = state.key + DEFAULT_INSTRUCTION_SUFFIX
        stored, new = state.new_file, state.new_envelope
        if stored is None or new is None or not new.wrap.is_kms or stored.metadata.get(MARKER_TARGET) != self.kms.target_arn:
            raise Verdict.failed("cut-over-not-ready", f"{name!r} does not hold the target KMS envelope; not stripping the metadata")
        if stored.metadata.get(MARKER_SOURCE) != source_fingerprint(env_mod.from_metadata(state.head["Metadata"])):
            raise Verdict.failed("cut-over-not-ready", f"{name!r} was written for another version of the object")
        return state

    def plan_dry_run(self, state: CutOverState) -> CutOverState:
        if not self.dry_run:
            return state
        refused = self.refusal(state.key, state.head)
        if refused:
            raise Verdict.failed(refused.reason, str(refused))
        raise Verdict.planned("would-cut-over", "would strip the metadata envelope")

    def recheck_earlier_write(self, state: CutOverState) -> CutOverState:
        """A file an earlier run wrote is proven to open with the target key again."""
        if state.earlier and self.verify is not VerifyLevel.NONE:
            assert state.new_envelope is not None
            self.kms.check_decryptable(state.new_envelope.encrypted_key, state.new_envelope.context)
        return state

    def refuse(self, state: CutOverState) -> CutOverState:
        head = state.head
        refused = refusal(head, None) or refusal(head, self.rewriter.acl_grants(state.key, head))
        if refused:
            raise refused
        return replace(state, lock=self.rewriter.object_lock(state.key, head))

    def store_backup(self, state: CutOverState) -> CutOverState:
        return replace(state, backup_etag=store_metadata_backup(self.bucket, state.key, state.head, state.removed))

    def copy(self, state: CutOverState) -> CutOverState:
        try:
            self.rewriter.rewrite(state.key, state.head, state.new_metadata, state.lock)
        except PreconditionFailed:
            if not self._our_copy_landed(state):
                self._take_back(state)
                raise Verdict.failed(
                    "object-changed", "the object changed before its metadata was rewritten; nothing was changed", retryable=True
                ) from None
            # Our copy landed and only its response was lost (the SDK's retry then answers 412
            # because the copy changed the ETag): carry on and verify it.
        return state

    def confirm(self, state: CutOverState) -> CutOverState:
        after = self.bucket.head(state.key)
        if after is None or envelope_in_metadata(after.get("Metadata", {})) or env_mod.lower_keys(after.get("Metadata", {})) != state.new_metadata:
            raise Verdict.failed("cut-over-unverified", "after the rewrite the metadata is not what was written")
        if after.get("ContentLength") != state.head.get("ContentLength"):
            raise Verdict.failed("cut-over-unverified", "after the rewrite the object length differs")
        return replace(state, after=after)

    def record(self, state: CutOverState) -> CutOverState:
        assert state.after is not None
        record_cut_over(self.bucket, state.key, state.head, state.removed, state.after)
        return state

    # -- helpers ----------------------------------------------------------------------------

    def _our_copy_landed(self, state: CutOverState) -> bool:
        now = self.bucket.head(state.key)
        return (
            now is not None
            and env_mod.lower_keys(now.get("Metadata", {})) == state.new_metadata
            and now.get("ContentLength") == state.head.get("ContentLength")
        )

    def _take_back(self, state: CutOverState) -> None:
        """Someone wrote the object since we read it: nothing of ours landed. The backup just
        made and the instruction file just written describe an object that no longer exists."""
        if state.backup_etag:
            try:
                self.bucket.delete(state.key + BACKUP_SUFFIX, if_match=state.backup_etag)
            except PreconditionFailed:
                pass
        withdraw(self.bucket, state.object.written)
