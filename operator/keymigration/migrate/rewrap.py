"""Re-wrapping one object: find its envelope, unwrap the data key, wrap it under the target KMS
key, verify, and write ``<key><suffix>``. The object itself (body, metadata, ETag) is never
touched.

Safety rules, in order of the steps:
* The old envelope is read where readers read it (spec: content-metadata.md "Determining S3EC
  Object Status"): object metadata first, else ``<key>.instruction``.
* A wrong source key never yields a data key (unwrap.py); V3 data keys are also checked against
  the key commitment.
* The new envelope is verified before it is written: KMS-decrypted and compared in constant time
  with the data key (or, KMS-to-KMS, proven decryptable without the plaintext leaving KMS).
* Writes are conditional: ``IfNoneMatch='*'`` for a new file, ``IfMatch=<ETag read>`` to replace
  one, and a file is replaced only after a byte-exact backup is stored next to it.
* After the write, the object must still be the one that was read (HEAD IfMatch); otherwise the
  new file is withdrawn and the object retried.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys, Wrapped
from keymigration.aws.s3 import Bucket, StoredFile, failure
from keymigration.errors import (
    ContentError,
    CutOverRefused,
    EnvelopeError,
    KmsError,
    ObjectError,
    PreconditionFailed,
    S3Error,
    UnwrapError,
)
from keymigration.formats import envelope as env_mod
from keymigration.formats.content import check_cbc_tail, check_commitment, verify_body
from keymigration.formats.envelope import Envelope, Location, MetadataKind
from keymigration.formats.secrets import DataKey
from keymigration.formats.source_keys import MasterKey
from keymigration.formats.unwrap import unwrap_data_key
from keymigration.formats.vocabulary import (
    BACKUP_SUFFIX,
    DEFAULT_INSTRUCTION_SUFFIX,
    Mode,
    VerifyLevel,
    check_target,
)
from keymigration.migrate.cutover import (
    envelope_in_metadata,
    record_cut_over,
    refusal,
    store_metadata_backup,
    stripped_metadata,
)
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome

# Metadata on the instruction-file object itself (not in its JSON, which holds only S3EC keys).
MARKER_TARGET = "keymigration-target-key"
MARKER_SOURCE = "keymigration-source"
MARKER_RUN = "keymigration-run"
BACKUP_OF = "keymigration-backup-of"
BACKUP_ETAG = "keymigration-backup-etag"


@dataclass(frozen=True)
class RewrapOptions:
    bucket: str
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    verify: VerifyLevel = VerifyLevel.ENVELOPE
    dry_run: bool = False
    run_id: str = ""
    mode: Mode = Mode.INSTRUCTION_FILE

    def __post_init__(self):
        object.__setattr__(self, "verify", VerifyLevel.parse(self.verify))
        object.__setattr__(self, "mode", check_target(self.mode, self.suffix))


class _Stop(Exception):
    """Ends one object's processing with a result."""

    def __init__(self, result: ObjectResult):
        self.result = result


def source_fingerprint(envelope: Envelope) -> str:
    """Identifies the old envelope (public values only: the EDK and IV are stored in clear)."""
    digest = hashlib.sha256(envelope.encrypted_key + (envelope.iv or envelope.message_id or b""))
    return digest.hexdigest()[:32]


def instruction_file_metadata(target_arn: str, fingerprint: str, run_id: str) -> dict[str, str]:
    # x-amz-crypto-instr-file: "" is what Java v1, Java S3EC and .NET put on instruction files.
    marker = {env_mod.INSTRUCTION_FILE_MARKER: "", MARKER_TARGET: target_arn, MARKER_SOURCE: fingerprint}
    if run_id:
        marker[MARKER_RUN] = run_id
    return marker


class ObjectRewrapper:
    """Processes one object at a time; safe to share between threads."""

    def __init__(self, s3_client, kms: KmsKeys, source_keys: Sequence[MasterKey], settings: RewrapOptions):
        self.bucket = Bucket(s3_client, settings.bucket)
        self.kms = kms
        self.source_keys = list(source_keys)
        self.settings = settings
        self.rewriter = MetadataRewriter(self.bucket)

    # -- entry point ------------------------------------------------------------------------

    def process(self, key: str, hint: ListingHint | None = None) -> ObjectResult:
        result = ObjectResult(key, Outcome.FAILED, "internal-error")
        try:
            try:
                self._process(key, hint, result)
            except _Stop as stop:
                result = stop.result
            if self.settings.mode is Mode.CUTOVER and self._wants_cut_over(result):
                self._cut_over(key, result)
        except _Stop as stop:
            return stop.result
        except ObjectError as error:
            result.fail(error)
        except (ClientError, BotoCoreError) as error:  # a request the AWS layer did not map
            result.fail(failure(error, "request", key))
        return result

    def _stop(self, result: ObjectResult, outcome: Outcome, reason: str, message: str = "", retryable: bool = False):
        result.outcome, result.reason, result.message, result.retryable = outcome, reason, message, retryable
        raise _Stop(result)

    # -- steps ------------------------------------------------------------------------------

    def _read_file(self, name: str, hint: ListingHint | None) -> StoredFile | None:
        if hint is not None and hint.complete and name not in hint.files:
            return None
        return self.bucket.get_small(name)

    def _process(self, key: str, hint: ListingHint | None, result: ObjectResult) -> None:
        settings = self.settings
        head = self.bucket.head(key)
        if head is None:
            self._stop(result, Outcome.SKIPPED, "object-deleted", "the object was deleted after it was listed")
        metadata = env_mod.lower_keys(head.get("Metadata", {}))
        object_etag = head["ETag"]
        result._head = head  # for the cut-over step
        kind = env_mod.detect(metadata)

        default_name = key + DEFAULT_INSTRUCTION_SUFFIX
        target_name = key + settings.suffix
        source_file: StoredFile | None = None
        if kind is MetadataKind.ENVELOPE:
            envelope = env_mod.from_metadata(metadata)
        else:
            source_file = self._read_file(default_name, hint)
            if source_file is None:
                if kind is MetadataKind.NONE:
                    self._stop(result, Outcome.SKIPPED, "not-encrypted", "no S3EC envelope in metadata and no instruction file")
                self._stop(result, Outcome.FAILED, "missing-instruction-file", f"V3 metadata but {default_name!r} does not exist")
            envelope = env_mod.from_instruction_file(source_file.body, metadata)
        result.format, result.wrap = envelope.format, str(envelope.wrap)
        result.location, result.cek_alg = str(envelope.location), envelope.cek_alg
        length = head.get("ContentLength")
        if length is not None and (length < 16 or (envelope.cek_alg == env_mod.CBC and length % 16)):
            # GCM bodies end in a 16-byte tag; CBC bodies are whole 16-byte blocks (at least one).
            self._stop(result, Outcome.FAILED, "content-length-invalid", f"a {envelope.cek_alg} body cannot be {length} bytes long")

        replacing_source = envelope.location is Location.INSTRUCTION_FILE and target_name == default_name
        existing = source_file if replacing_source else self._read_file(target_name, hint)
        fingerprint = source_fingerprint(envelope)
        if existing is not None and self._marked_done(existing, envelope, fingerprint, replacing_source):
            resumed = bool(settings.run_id) and existing.metadata.get(MARKER_RUN) == settings.run_id
            if resumed and not settings.dry_run:
                result.resumed = True
                self._stop(result, Outcome.MIGRATED, "migrated", "written by this run before an interruption")
            self._stop(result, Outcome.SKIPPED, "already-migrated", f"{target_name!r} already wraps the data key under the target key")

        data_key: DataKey | None = None
        if envelope.wrap.is_kms:
            if settings.dry_run:
                self._plan(result, "kms" if self.kms.source_key_ids else None)
            if not self.kms.source_key_ids and self._on_target_key(envelope):
                self._stop(result, Outcome.SKIPPED, "already-on-target-key", "the envelope is already wrapped by the target KMS key")
            try:
                wrapped = self.kms.reencrypt(envelope)
            except KmsError as error:
                # Objects written with the target key already (new writers) are not wrong.
                if error.reason == "wrong-key" and self._on_target_key(envelope):
                    self._stop(result, Outcome.SKIPPED, "already-on-target-key", "the envelope is already wrapped by the target KMS key")
                raise
        else:
            unwrapped = unwrap_data_key(envelope, self.source_keys)
            data_key = unwrapped.data_key
            result.source_key = unwrapped.key_label
            if envelope.format == "v3":
                check_commitment(envelope, data_key)  # proves the data key without reading the body
            elif unwrapped.needs_content_check and settings.verify is not VerifyLevel.BODY and not settings.dry_run:
                # Part of the unwrap's proof, so at every --verify level (body decrypts it all below).
                self._check_tail(key, head, envelope, data_key, result)
            if settings.dry_run:
                self._plan(result, unwrapped.key_label)
            if existing is not None and not replacing_source and self._holds_data_key(existing, metadata, data_key):
                self._stop(result, Outcome.SKIPPED, "already-migrated", f"{target_name!r} already wraps the data key under the target key")
            wrapped = self.kms.encrypt(data_key, envelope)

        fields = env_mod.target_fields(envelope, wrapped.encrypted_key, self.kms.target_wrap(envelope), wrapped.context)
        body = env_mod.instruction_body(fields)
        written = self._check_round_trip(body, metadata, envelope, wrapped)
        if settings.verify is not VerifyLevel.NONE:
            self._verify_envelope(written, data_key)
        if settings.verify is VerifyLevel.BODY:
            if data_key is None:
                data_key = self.kms.decrypt(written.encrypted_key, written.context, self.kms.target_key_id)
            self._verify_body(key, object_etag, envelope, data_key, result)
        marker = instruction_file_metadata(self.kms.target_arn, fingerprint, settings.run_id)

        try:
            if existing is not None:
                self._backup(existing, envelope)
                new_etag = self.bucket.put(target_name, body, marker, if_match=existing.etag)
            else:
                new_etag = self.bucket.put(target_name, body, marker, if_none_match=True)
        except PreconditionFailed:
            new_etag, theirs = self._our_earlier_write(target_name, body)
            if new_etag is None and theirs is not None and self._marked_done(theirs, envelope, fingerprint, False):
                # Another worker on the same prefix (a duplicate Job) got there first.
                self._stop(result, Outcome.SKIPPED, "already-migrated", f"{target_name!r} was written by another keymigration worker")
            if new_etag is None:
                self._stop(
                    result,
                    Outcome.FAILED,
                    "instruction-file-conflict",
                    f"{target_name!r} was created or changed by someone else during the migration; nothing was written",
                )

        result._written = (target_name, new_etag, existing)
        if settings.verify is not VerifyLevel.NONE:
            self._check_object_unchanged(key, object_etag, target_name, new_etag, existing, result)
        result.outcome, result.reason = Outcome.MIGRATED, "migrated"

    def _our_earlier_write(self, name: str, body: bytes) -> tuple[str | None, StoredFile | None]:
        """After a lost response, the SDK retries a conditional PUT that had already landed and
        gets 412. The file then holds exactly our bytes (its fresh EDK makes them unique).
        Returns (its ETag if it is ours, else None; the file found)."""
        current = self.bucket.get_small(name)
        if current is not None and current.body == body:
            return current.etag, current
        return None, current

    def _plan(self, result: ObjectResult, key_label: str | None) -> None:
        if key_label is None:
            self._stop(result, Outcome.FAILED, "no-source-key", "the data key is wrapped by KMS but no source KMS key is configured")
        if self.settings.mode is Mode.CUTOVER:
            refused = self._cut_over_refusal(result.key, result._head)
            if refused:
                self._stop(result, Outcome.FAILED, refused.reason, str(refused))
            self._stop(result, Outcome.PLANNED, "would-migrate-and-cut-over", "would write .instruction, then strip the metadata envelope")
        self._stop(result, Outcome.PLANNED, "would-migrate", f"would write {result.key + self.settings.suffix!r}")

    # -- cut-over (docs/cutover.md) ---------------------------------------------------------

    def _wants_cut_over(self, result: ObjectResult) -> bool:
        head = getattr(result, "_head", None)
        if head is None or not envelope_in_metadata(head.get("Metadata", {})):
            return False
        if result.outcome is Outcome.MIGRATED:
            return True
        return result.outcome in (Outcome.SKIPPED, Outcome.PLANNED) and result.reason == "already-migrated"

    def _cut_over_refusal(self, key: str, head: dict) -> CutOverRefused | None:
        # The cheap checks first: an archived object cannot even answer GetObjectAcl.
        return refusal(head, None) or refusal(head, self.rewriter.acl_grants(key, head))

    def _cut_over(self, key: str, result: ObjectResult) -> None:
        """Strip the old envelope from the metadata once <key>.instruction holds our verified
        KMS envelope; the removed envelope goes to <key>.keymigration-backup first."""
        head = result._head
        removed = envelope_in_metadata(head["Metadata"])
        kept = stripped_metadata(head["Metadata"])
        name = key + DEFAULT_INSTRUCTION_SUFFIX
        stored = self.bucket.get_small(name)
        new = env_mod.from_instruction_file(stored.body, kept) if stored is not None else None
        if new is None or not new.wrap.is_kms or stored.metadata.get(MARKER_TARGET) != self.kms.target_arn:
            self._stop(result, Outcome.FAILED, "cut-over-not-ready", f"{name!r} does not hold the target KMS envelope; not stripping the metadata")
        if stored.metadata.get(MARKER_SOURCE) != source_fingerprint(env_mod.from_metadata(head["Metadata"])):
            self._stop(result, Outcome.FAILED, "cut-over-not-ready", f"{name!r} was written for another version of the object")
        if self.settings.dry_run:
            refused = self._cut_over_refusal(key, head)
            if refused:
                self._stop(result, Outcome.FAILED, refused.reason, str(refused))
            self._stop(result, Outcome.PLANNED, "would-cut-over", "would strip the metadata envelope")
        if result.reason == "already-migrated" and self.settings.verify is not VerifyLevel.NONE:
            self.kms.check_decryptable(new.encrypted_key, new.context)  # written by an earlier run
        refused = self._cut_over_refusal(key, head)
        if refused:
            raise refused
        backup_etag = store_metadata_backup(self.bucket, key, head, removed)
        try:
            self.rewriter.rewrite(key, head, kept)
        except PreconditionFailed:
            now = self.bucket.head(key)
            ours = (
                now is not None
                and env_mod.lower_keys(now.get("Metadata", {})) == kept
                and now.get("ContentLength") == head.get("ContentLength")
            )
            if not ours:
                # Someone wrote the object since we read it: nothing of ours landed. The backup
                # just made and the instruction file just written describe an object that no
                # longer exists: take both back.
                if backup_etag:
                    try:
                        self.bucket.delete(key + BACKUP_SUFFIX, if_match=backup_etag)
                    except PreconditionFailed:
                        pass
                self._withdraw(getattr(result, "_written", None))
                self._stop(result, Outcome.FAILED, "object-changed", "the object changed before its metadata was rewritten; nothing was changed", retryable=True)
            # Otherwise our copy landed and only its response was lost (the SDK's retry then
            # answers 412 because the copy changed the ETag): carry on and verify it.
        after = self.bucket.head(key)
        if after is None or envelope_in_metadata(after.get("Metadata", {})) or env_mod.lower_keys(after.get("Metadata", {})) != kept:
            self._stop(result, Outcome.FAILED, "cut-over-unverified", "after the rewrite the metadata is not what was written")
        if after.get("ContentLength") != head.get("ContentLength"):
            self._stop(result, Outcome.FAILED, "cut-over-unverified", "after the rewrite the object length differs")
        record_cut_over(self.bucket, key, head, removed, after)
        result.outcome, result.reason, result.message = Outcome.MIGRATED, "cut-over", "metadata envelope removed; readers use .instruction"

    def _withdraw(self, written: tuple[str, str, StoredFile | None] | None) -> None:
        """Undo an instruction-file write of this call: restore the file it replaced (with its
        own content type and metadata), or delete ours; never touch a file changed since."""
        if not written:
            return
        name, etag, replaced = written
        try:
            if replaced is not None:
                self.bucket.put(name, replaced.body, replaced.metadata, if_match=etag, content_type=replaced.content_type)
            else:
                self.bucket.delete(name, if_match=etag)
        except PreconditionFailed:
            pass  # someone else has written the file again since; leave theirs

    def _marked_done(self, existing: StoredFile, envelope: Envelope, fingerprint: str, replacing_source: bool) -> bool:
        """Our own marker says this file already wraps this object's data key under the target."""
        if existing.metadata.get(MARKER_TARGET) != self.kms.target_arn:
            return False
        if replacing_source:
            return envelope.wrap.is_kms  # the source envelope is our own output
        return existing.metadata.get(MARKER_SOURCE) == fingerprint

    def _holds_data_key(self, existing: StoredFile, metadata: Mapping[str, str], data_key: DataKey) -> bool:
        """A file someone else wrote that already wraps this data key under the target key."""
        try:
            other = env_mod.from_instruction_file(existing.body, metadata)
        except EnvelopeError:
            return False
        if not other.wrap.is_kms:
            return False
        try:
            return self.kms.decrypt(other.encrypted_key, other.context, self.kms.target_key_id).equals(data_key)
        except KmsError as error:
            if error.retryable:
                raise
            return False

    def _on_target_key(self, envelope: Envelope) -> bool:
        try:
            self.kms.decrypt(envelope.encrypted_key, envelope.context, self.kms.target_key_id)
        except KmsError as error:
            if error.retryable:
                raise
            return False
        return True

    def _verify_envelope(self, written: Envelope, data_key: DataKey | None) -> None:
        """KMS opens the envelope exactly as it will be read back from the file."""
        if data_key is None:
            self.kms.check_decryptable(written.encrypted_key, written.context)
            return
        again = self.kms.decrypt(written.encrypted_key, written.context, self.kms.target_key_id)
        if not again.equals(data_key):
            raise KmsError("verify-failed", "the new envelope does not decrypt to the original data key")

    def _check_tail(self, key: str, head: dict, envelope: Envelope, data_key: DataKey, result: ObjectResult) -> None:
        """A weakly proven CBC data key (legacy RSA PKCS#1, pinned ECB) is checked against the
        body's last blocks before anything is written: one ranged GET of 32 bytes."""
        length = head["ContentLength"]
        try:
            tail = self.bucket.tail(key, 32, length, head["ETag"])
        except PreconditionFailed:
            self._stop(result, Outcome.FAILED, "object-changed", "the object changed while it was checked", retryable=True)
        try:
            check_cbc_tail(envelope, data_key, tail, length)
        except ContentError:
            raise UnwrapError("wrong-key", f"the data key from {result.source_key} does not decrypt the body") from None

    def _verify_body(self, key: str, etag: str, envelope: Envelope, data_key: DataKey, result: ObjectResult) -> None:
        try:
            verify_body(envelope, data_key, self.bucket.stream(key, if_match=etag))
        except PreconditionFailed:
            self._stop(result, Outcome.FAILED, "object-changed", "the object changed while it was verified", retryable=True)

    @staticmethod
    def _check_round_trip(body: bytes, metadata: Mapping[str, str], envelope: Envelope, wrapped: Wrapped) -> Envelope:
        """The file we are about to write parses back to the new envelope (pure, cheap)."""
        v3_metadata = {k: metadata[k] for k in env_mod.V3_OBJECT_ONLY_KEYS if k in metadata}
        parsed = env_mod.from_instruction_file(body, v3_metadata)
        same = (
            parsed.encrypted_key == wrapped.encrypted_key
            and parsed.iv == envelope.iv
            and parsed.cek_alg == envelope.cek_alg
            and parsed.context == wrapped.context
            and parsed.message_id == envelope.message_id
        )
        if not same:
            raise EnvelopeError("internal-error", "the serialized instruction file does not parse back to the new envelope")
        return parsed

    def _backup(self, existing: StoredFile, envelope: Envelope) -> None:
        """Keep a byte-exact copy of an instruction file before replacing it.

        Not for a file of our own that was written for an earlier version of the object while
        the current envelope lives in the metadata: that file wraps a data key that no longer
        exists, it is nobody's original, and rollback must never restore it."""
        if MARKER_TARGET in existing.metadata and envelope.location is Location.METADATA:
            return
        backup_key = existing.key + BACKUP_SUFFIX
        metadata = dict(existing.metadata)
        metadata[BACKUP_OF] = "instruction-file"
        metadata[BACKUP_ETAG] = existing.etag.strip('"')
        try:
            self.bucket.put(backup_key, existing.body, metadata, if_none_match=True)
        except PreconditionFailed:
            stored = self.bucket.get_small(backup_key)
            if stored is None or stored.body != existing.body:
                raise S3Error(
                    "backup-exists",
                    f"{backup_key!r} already holds a different envelope (an earlier migration's backup); "
                    "confirm that migration and prune its backups first",
                ) from None

    def _check_object_unchanged(
        self, key: str, etag: str, target_name: str, new_etag: str, replaced: StoredFile | None, result: ObjectResult
    ) -> None:
        try:
            still_there = self.bucket.head(key, if_match=etag) is not None
        except PreconditionFailed:
            still_there = False
        if still_there:
            return
        # The object was overwritten or deleted after we read it: our file would describe a data
        # key that no longer exists. Put back what was there before.
        self._withdraw((target_name, new_etag, replaced))
        self._stop(result, Outcome.FAILED, "object-changed", "the object changed during the migration; the new file was withdrawn", retryable=True)
