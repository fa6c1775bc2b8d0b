"""Rewriting an object's metadata envelope in place: the cut-over strips the old envelope so that
every S3EC reader's default lookup finds the new KMS envelope in ``<key>.instruction``; metadata
mode writes the new envelope into the metadata itself, where every reader looks first
(docs/cutover.md).

Readers that find an envelope in object metadata use it and never look at the instruction file
(Java S3EC v3/v4, Python v4, Go S3EC, .NET, C++; the specification's rule is cited in
``migrate/rewrap.py`` ``locate_envelope``). The metadata can
only change by rewriting the object: a server-side CopyObject (``aws/copy.py``) onto itself with
``MetadataDirective=REPLACE`` and ``CopySourceIfMatch=<ETag read>``, which keeps the ciphertext
bytes and fails if anyone wrote the object in between. Before that, what leaves the metadata is
stored for rollback, with the value of ``keymigration-copy`` the copy writes (only this copy
carries it, so the tool and the rollback tell keymigration's copy from anyone else's write): in
the cut-over, on the instruction file the re-wrap wrote (its user metadata, the same PUT:
``with_file_backup``); otherwise, or where it does not fit, in ``<key>.keymigration-backup``
(``backup_name``, one per migration step).

``CutOver.run`` is the cut-over of one object as named stages over a ``CutOverState``, after the
re-wrap stages (``migrate/rewrap.py``) wrote and verified the instruction file:
read_new_file -> check_ready -> adopt_file_backup -> plan_dry_run -> recheck_earlier_write ->
refuse -> store_backup -> copy. A copy whose outcome S3 does not report takes nothing back
(``copy-unconfirmed``). ``CutOver.write_envelope`` is metadata mode's write stage, over the same state:
refuse -> store_backup -> back_up_files -> copy -> retire_files.

What is not re-read: the instruction file this call just wrote (its conditional PUT succeeded),
and the object after the copy: a CopyObject conditional on the ETag read (``CopySourceIfMatch``
and the destination's ``IfMatch``) that S3 answers 200 has replaced exactly that object with
exactly the metadata sent, and in metadata mode that metadata's envelope was parsed back and
verified before the copy (``rewrap.build_envelope``). Only a lost copy response (412 on the
SDK's retry) reads the object again (``_our_copy_landed``).
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Mapping

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import CutOverRefused, EnvelopeError, ObjectError, PreconditionFailed, S3Error
from keymigration.formats import envelope as env_mod
from keymigration.formats.envelope import Envelope
from keymigration.formats.vocabulary import DEFAULT_INSTRUCTION_SUFFIX, VerifyLevel, backup_name
from keymigration.migrate import files
from keymigration.migrate.files import (
    MARKER_COPY,
    MARKER_TARGET,
    METADATA_BACKUP,
    OBJECT_MARKERS,
    source_fingerprint,
    withdraw,
)
from keymigration.migrate.results import Outcome
from keymigration.migrate.state import ObjectState, Verdict, run_stages

# Envelope keys that leave the metadata: all V1/V2 keys, and the V3 keys that live in the
# instruction file; x-amz-c/d/i stay:
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST store the mapkey "x-amz-c" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-c" and its value in the Instruction File.
##% - The V3 message format MUST store the mapkey "x-amz-d" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-d" and its value in the Instruction File.
##% - The V3 message format MUST store the mapkey "x-amz-i" and its value in the Object Metadata when writing with an Instruction File.
##% - The V3 message format MUST NOT store the mapkey "x-amz-i" and its value in the Instruction File.
REMOVED_KEYS = env_mod.REPLACEABLE_KEYS

ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}


def envelope_in_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    md = env_mod.lower_keys(metadata)
    return {k: md[k] for k in REMOVED_KEYS if k in md}


def stripped_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata without any envelope keys or keymigration's marks (x-amz-c/d/i stay)."""
    md = env_mod.lower_keys(metadata)
    return {k: v for k, v in md.items() if k not in REMOVED_KEYS and k not in OBJECT_MARKERS}


def leaving(metadata: Mapping[str, str], new_metadata: Mapping[str, str]) -> dict[str, str]:
    """What a rewrite to ``new_metadata`` takes out of (or changes in) the metadata, for the
    backup: the old envelope keys and keymigration's marks."""
    md = env_mod.lower_keys(metadata)
    replaced = set(REMOVED_KEYS) | set(OBJECT_MARKERS)
    return {k: v for k, v in md.items() if k in replaced or new_metadata.get(k) != v}


def cut_over_metadata(metadata: Mapping[str, str], copy_mark: str) -> tuple[dict[str, str], dict[str, str]]:
    """The cut-over's rewrite of ``metadata``: the metadata the copy writes (the envelope and
    our marks gone, ``keymigration-copy`` set to ``copy_mark``) and what leaves it (for the
    backup). What leaves does not depend on ``copy_mark``."""
    new_metadata = {**stripped_metadata(metadata), MARKER_COPY: copy_mark}
    return new_metadata, leaving(metadata, new_metadata)


def restored_metadata(current: Mapping[str, str], backup: Mapping[str, str]) -> dict[str, str]:
    """The metadata with the backup's keys back in place of whatever envelope and marks the
    migration wrote: exactly the metadata from before."""
    return {**stripped_metadata(current), **backup}


def refusal(head: dict, acl_grants: list | None) -> CutOverRefused | None:
    """Why this object must not be rewritten, or None. Checked before anything is written."""
    if head.get("SSECustomerAlgorithm"):
        return CutOverRefused("sse-c", "the object uses SSE-C; copying it needs the customer key, which keymigration does not hold")
    storage = head.get("StorageClass", "STANDARD")
    if storage in ARCHIVED and 'ongoing-request="false"' not in (head.get("Restore") or ""):
        return CutOverRefused("archived", f"the object is in {storage}; restore it before the cut-over")
    if head.get("ArchiveStatus"):
        return CutOverRefused("archived", f"the object is in Intelligent-Tiering {head['ArchiveStatus']}; restore it first")
    if head.get("MissingMeta"):
        return CutOverRefused(
            "unreadable-metadata", f"{head['MissingMeta']} metadata entries S3 cannot return (unprintable); a rewrite would drop them"
        )
    if acl_grants:
        return CutOverRefused(
            "custom-acl", "the object has ACL grants beyond its owner; CopyObject would drop them (see docs/cutover.md)"
        )
    return None


def size_refusal(new_metadata: Mapping[str, str]) -> CutOverRefused | None:
    size = env_mod.user_metadata_size(new_metadata)
    if size > env_mod.USER_METADATA_LIMIT:
        return CutOverRefused(
            "metadata-too-large",
            f"the rewritten user metadata would be {size} bytes (x-amz-meta- prefixes counted); S3 allows "
            f"{env_mod.USER_METADATA_LIMIT}: use the instruction-file or cut-over mode for this object",
        )
    return None


def backup_body(key: str | None, head: dict, removed: dict[str, str], step: int = 1, copy: str | None = None) -> bytes:
    """The backup record of what leaves an object's metadata (``key`` None: the record rides
    on the object's own instruction file, whose name says whose it is)."""
    data = {
        "keymigration-backup": 1,
        "source": "object-metadata",
        **({"key": key} if key is not None else {}),
        "etag": head["ETag"],
        "length": head.get("ContentLength"),
        "version_id": head.get("VersionId"),
        "envelope": removed,
        "step": step,
    }
    if copy:
        data["copy"] = copy  # the keymigration-copy value of the copy this backup precedes
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


# What the cut-over's instruction file may carry beside its own marks: S3 limits the whole user
# metadata to 2 KB, and a later rotation's byte-exact backup of the file adds two more entries.
FILE_BACKUP_ROOM = env_mod.USER_METADATA_LIMIT - 256


def with_file_backup(file_metadata: Mapping[str, str], head: dict, step: int) -> dict[str, str]:
    """The cut-over's instruction-file metadata, carrying the backup of the envelope the
    cut-over will take out of the object's metadata (a fresh ``keymigration-copy`` value in
    it): the file's own PUT stores the backup, which saves a PutObject per object. Unchanged
    when the record does not fit (the cut-over then stores ``<key>.keymigration-backup``)."""
    metadata = head.get("Metadata", {})
    if not envelope_in_metadata(metadata):
        return dict(file_metadata)
    _, removed = cut_over_metadata(metadata, "")
    record = backup_body(None, head, removed, step, uuid.uuid4().hex)
    carried = {**file_metadata, METADATA_BACKUP: base64.b64encode(record).decode()}
    return carried if env_mod.user_metadata_size(carried) <= FILE_BACKUP_ROOM else dict(file_metadata)


def _carried(stored: StoredFile) -> tuple[bytes, dict] | None:
    """The metadata backup an instruction file carries (``with_file_backup``): its bytes and
    its record; None if it carries none (or one that does not parse)."""
    value = stored.metadata.get(METADATA_BACKUP)
    if not value:
        return None
    try:
        body = base64.b64decode(value, validate=True)
        return body, read_backup_record(body)
    except (binascii.Error, ValueError):
        return None


def file_backup(stored: StoredFile) -> StoredFile | None:
    """The metadata backup an instruction file carries, as a backup record named after the
    file (what rollback reads); None if it carries none (or one that does not parse)."""
    carried = _carried(stored)
    return StoredFile(stored.key, carried[0], stored.etag, {}) if carried is not None else None


def without_file_backup(bucket: Bucket, stored: StoredFile) -> None:
    """Drop the backup an instruction file carries (rollback done, or pruned): the same bytes
    written again without it, only over exactly that file."""
    kept = {k: v for k, v in stored.metadata.items() if k != METADATA_BACKUP}
    bucket.put(stored.key, stored.body, kept, content_type=stored.content_type, if_match=stored.etag)


def store_metadata_backup(bucket: Bucket, key: str, head: dict, removed: dict[str, str], step: int, copy: str) -> str:
    """``<key>.keymigration-backup`` (of migration step ``step``): what is about to leave the
    metadata, and the ``keymigration-copy`` value of the copy that will replace it. Returns the
    backup's ETag. The same backup left by an interrupted attempt is taken over (with this
    copy's value); a different one is refused."""
    name = backup_name(key, step)
    body = backup_body(key, head, removed, step, copy)
    metadata = {files.BACKUP_OF: "object-metadata"}
    try:
        return bucket.put(name, body, metadata, if_none_match=True)
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
        )
    assert stored is not None
    if stored.body == body:
        return stored.etag
    return bucket.put(name, body, metadata, if_match=stored.etag)


# ---------------------------------------------------------------------------------------------
# One object's metadata rewrite, in stages


@dataclass(frozen=True)
class CutOverState:
    """What the metadata-rewrite stages know about one object, in the order they learn it."""

    object: ObjectState  # what the re-wrap read (head, key) and wrote (written)
    earlier: bool  # the instruction file was written by an earlier run, not verified by this one
    removed: dict[str, str] = field(repr=False)  # the envelope keys (and marks) leaving the metadata
    new_metadata: dict[str, str] = field(repr=False)  # the user metadata the copy writes
    copy_mark: str  # the keymigration-copy value in new_metadata: only this copy writes it
    step: int = 1  # the migration step (names the backups)
    expected: Envelope | None = None  # metadata mode: the envelope the metadata must hold (verified)
    retire: tuple[StoredFile, ...] = ()  # metadata mode: instruction files removed after the copy
    # read_new_file
    new_file: StoredFile | None = None  # <key>.instruction as it is now
    new_envelope: Envelope | None = None  # the envelope readers will use after the cut-over
    # refuse: the object's Object Lock settings, which the copy carries onto the new version
    lock: dict = field(default_factory=dict, repr=False)
    # adopt_file_backup: the instruction file carries the metadata backup (and the copy value)
    backup_in_file: bool = False
    # store_backup, back_up_files: the backups this call stored (taken back if the object changed)
    backup_etag: str | None = None
    file_backups: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return self.object.key

    @property
    def head(self) -> dict:
        assert self.object.head is not None
        return self.object.head


CUT_OVER = Verdict(Outcome.MIGRATED, "cut-over", "metadata envelope removed; readers use .instruction")
# A copy whose outcome S3 did not report: the object is either still the one read or our copy;
# everything written for it stays (``rewrap._to_confirm`` leaves it alone), and a rerun finishes.
COPY_UNCONFIRMED = "copy-unconfirmed"
# How the copy stage itself ends an object, having settled what was written for it: taken back
# (the object changed before the copy), or kept on purpose (the copy's outcome is unknown).
COPY_STAGE_ENDINGS = frozenset({"object-changed", COPY_UNCONFIRMED})


def _copy_unconfirmed() -> Verdict:
    return Verdict.failed(
        COPY_UNCONFIRMED,
        "the metadata rewrite's outcome is unknown (S3 did not answer); the instruction file and backups are kept, a rerun finishes it",
        retryable=True,
    )


class CutOver:
    """Rewrites an object's metadata envelope in place once the new KMS envelope is verified:
    strips it (cut-over, ``run``) or replaces it (metadata mode, ``write_envelope``). What
    leaves the metadata is backed up first: on the cut-over's instruction file, or in
    ``<key>.keymigration-backup``."""

    def __init__(self, bucket: Bucket, kms: KmsKeys, verify: VerifyLevel, dry_run: bool):
        self.bucket = bucket
        self.kms = kms
        self.verify = verify
        self.dry_run = dry_run
        self.rewriter = MetadataRewriter(bucket)
        self.stages = (
            self.read_new_file,
            self.check_ready,
            self.adopt_file_backup,
            self.plan_dry_run,
            self.recheck_earlier_write,
            self.refuse,
            self.store_backup,
            self.copy,
        )
        self.metadata_stages = (
            self.refuse,
            self.store_backup,
            self.back_up_files,
            self.copy,
            self.retire_files,
        )

    def wants(self, state: ObjectState, verdict: Verdict) -> bool:
        """The re-wrap left a verified KMS instruction file (now or in an earlier run) and the
        metadata still holds an envelope."""
        if state.head is None or not envelope_in_metadata(state.head.get("Metadata", {})):
            return False
        if verdict.outcome is Outcome.MIGRATED:
            return True
        return verdict.outcome in (Outcome.SKIPPED, Outcome.PLANNED) and verdict.reason == "already-migrated"

    def refusal(self, key: str, head: dict, new_metadata: Mapping[str, str] | None = None) -> CutOverRefused | None:
        """Why this object must not be copied onto itself, or None."""
        # The cheap checks first: an archived object cannot even answer GetObjectAcl.
        refused = refusal(head, None) or (size_refusal(new_metadata) if new_metadata is not None else None)
        refused = refused or refusal(head, self.rewriter.acl_grants(key, head))
        if refused is None:
            try:
                self.rewriter.object_lock(key, head)
            except CutOverRefused as error:
                return error
        return refused

    def run(self, state: ObjectState, verdict: Verdict) -> Verdict:
        """The cut-over of an object the re-wrap ended with ``verdict``; returns its verdict."""
        metadata = state.head["Metadata"] if state.head else {}
        copy_mark = uuid.uuid4().hex
        new_metadata, removed = cut_over_metadata(metadata, copy_mark)
        start = CutOverState(
            state,
            earlier=verdict.reason == "already-migrated",
            removed=removed,
            new_metadata=new_metadata,
            copy_mark=copy_mark,
        )
        last, ending = run_stages(self.stages, start)
        if ending is not None and ending.outcome is Outcome.FAILED and ending.reason not in COPY_STAGE_ENDINGS:
            self._drop_unused_record(last)
        return ending or CUT_OVER

    def write_envelope(self, state: ObjectState) -> ObjectState:
        """Metadata mode's write: the object's metadata gets ``state.new_metadata`` (the new
        envelope and its marks), after backups of what leaves it; the instruction files in
        ``state.retire`` are removed after the copy. Ends the object (a Verdict) if not."""
        start = CutOverState(
            state,
            earlier=False,
            removed=state.removed,
            new_metadata=state.new_metadata,
            copy_mark=state.new_metadata[MARKER_COPY],
            step=state.step,
            expected=state.new_envelope,
            retire=state.retire,
        )
        _, ending = run_stages(self.metadata_stages, start)
        if ending is not None:
            raise ending
        return state

    # -- stages -----------------------------------------------------------------------------

    def read_new_file(self, state: CutOverState) -> CutOverState:
        """``<key>.instruction`` as it is: the file this call just wrote (its conditional PUT
        succeeded, so S3 holds exactly those bytes), else the one the re-wrap read in this call,
        else a GET."""
        name = state.key + DEFAULT_INSTRUCTION_SUFFIX
        written, existing = state.object.written, state.object.existing
        if written is not None and written.file is not None and written.name == name:
            stored: StoredFile | None = written.file
        elif written is None and existing is not None and existing.key == name:
            stored = existing
        else:
            stored = self.bucket.get_small(name)
        new = env_mod.from_instruction_file(stored.body, state.new_metadata) if stored is not None else None
        return replace(state, new_file=stored, new_envelope=new)

    def check_ready(self, state: CutOverState) -> CutOverState:
        name = state.key + DEFAULT_INSTRUCTION_SUFFIX
        stored, new = state.new_file, state.new_envelope
        if stored is None or new is None or not new.wrap.is_kms or stored.metadata.get(MARKER_TARGET) != self.kms.target_arn:
            raise Verdict.failed("cut-over-not-ready", f"{name!r} does not hold the target KMS envelope; not stripping the metadata")
        if not files.written_for(stored, source_fingerprint(env_mod.from_metadata(state.head["Metadata"]))):
            raise Verdict.failed("cut-over-not-ready", f"{name!r} was written for another version of the object")
        return replace(state, step=files.step_of(stored.metadata))

    def adopt_file_backup(self, state: CutOverState) -> CutOverState:
        """The instruction file carries the backup of exactly what leaves the metadata, of
        this object (its ETag) and step (``with_file_backup``): the copy takes that record's
        ``keymigration-copy`` value and no separate backup is stored."""
        assert state.new_file is not None
        carried = _carried(state.new_file)
        if carried is None:
            return state
        record = carried[1]
        same = (record.get("etag"), record.get("step"), record["envelope"]) == (state.head["ETag"], state.step, state.removed)
        if not same or not isinstance(record.get("copy"), str) or not record["copy"]:
            return state
        new_metadata = {**state.new_metadata, MARKER_COPY: record["copy"]}
        return replace(state, copy_mark=record["copy"], new_metadata=new_metadata, backup_in_file=True)

    def plan_dry_run(self, state: CutOverState) -> CutOverState:
        if not self.dry_run:
            return state
        refused = self.refusal(state.key, state.head, state.new_metadata)
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
        refused = refusal(head, None) or size_refusal(state.new_metadata)
        refused = refused or refusal(head, self.rewriter.acl_grants(state.key, head))
        if refused:
            raise refused
        return replace(state, lock=self.rewriter.object_lock(state.key, head))

    def store_backup(self, state: CutOverState) -> CutOverState:
        if state.backup_in_file:
            return state
        etag = store_metadata_backup(self.bucket, state.key, state.head, state.removed, state.step, state.copy_mark)
        return replace(state, backup_etag=etag)

    def back_up_files(self, state: CutOverState) -> CutOverState:
        """Metadata mode: byte-exact backups of the instruction files that go after the copy."""
        stored = []
        for retired in state.retire:
            etag = files.back_up_instruction_file(self.bucket, retired, None, state.step)
            if etag:
                stored.append((backup_name(retired.key, state.step), etag))
        return replace(state, file_backups=tuple(stored))

    def copy(self, state: CutOverState) -> CutOverState:
        if state.expected is not None and not _same_envelope(state.new_metadata, state.expected):
            # Metadata mode: what the copy writes must read back as the envelope verified.
            raise Verdict.failed("cut-over-unverified", "the metadata to write does not read back as the verified envelope")
        try:
            self.rewriter.rewrite(state.key, state.head, state.new_metadata, state.lock)
        except PreconditionFailed:
            landed = self._our_copy_landed(state)
            if landed is False:
                self._take_back(state)
                raise Verdict.failed(
                    "object-changed", "the object changed before its metadata was rewritten; nothing was changed", retryable=True
                ) from None
            if landed is None:
                raise _copy_unconfirmed() from None
            # Our copy landed and only its response was lost (the SDK's retry then answers 412
            # because the copy changed the ETag): carry on and verify it.
        except ObjectError:
            # The copy may have landed (a timeout, a 5xx after S3 took it). Nothing written for
            # the object may be taken back now: the instruction file may hold the only backup of
            # the envelope the copy removed. A rerun reads the object again and finishes.
            raise _copy_unconfirmed() from None
        return state

    def retire_files(self, state: CutOverState) -> CutOverState:
        """Metadata mode: the instruction files that held an older envelope go, so that no reader
        asking for them explicitly gets an older key's envelope (their backups stay)."""
        for retired in state.retire:
            try:
                self.bucket.delete(retired.key, if_match=retired.etag)
            except PreconditionFailed:
                pass  # rewritten by someone since it was read: theirs, left alone
        return state

    # -- helpers ----------------------------------------------------------------------------

    def _our_copy_landed(self, state: CutOverState) -> bool | None:
        """Only our copy writes ``copy_mark``: a write by anyone else, even of the same length
        and metadata, is not taken for ours. None: S3 could not say."""
        try:
            now = self.bucket.head(state.key)
        except ObjectError:
            return None
        return (
            now is not None
            and env_mod.lower_keys(now.get("Metadata", {})) == state.new_metadata
            and now.get("ContentLength") == state.head.get("ContentLength")
        )

    def _drop_unused_record(self, state: CutOverState) -> None:
        """The cut-over ended before its copy (refused, or failed): the backup the instruction
        file carries was never needed. It goes, as no backup object would have been stored, so
        that a rollback after the object is written again does not take it for a step's
        backup. Best effort: a record left behind only makes such a rollback refuse."""
        if self.dry_run or not state.backup_in_file or state.new_file is None:
            return
        try:
            without_file_backup(self.bucket, state.new_file)
        except ObjectError:
            pass

    def _take_back(self, state: CutOverState) -> None:
        """Someone wrote the object since we read it: nothing of ours landed. The backups just
        made and the instruction file just written describe an object that no longer exists."""
        made = list(state.file_backups)
        if state.backup_etag:
            made.append((backup_name(state.key, state.step), state.backup_etag))
        for name, etag in made:
            try:
                self.bucket.delete(name, if_match=etag)
            except PreconditionFailed:
                pass
        withdraw(self.bucket, state.object.written)


def _same_envelope(metadata: Mapping[str, str], expected: Envelope) -> bool:
    try:
        found = env_mod.from_metadata(metadata)
    except EnvelopeError:
        return False
    return (found.encrypted_key, found.context, found.wrap, found.cek_alg, found.iv, found.message_id) == (
        expected.encrypted_key, expected.context, expected.wrap, expected.cek_alg, expected.iv, expected.message_id,
    )
