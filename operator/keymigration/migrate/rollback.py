"""Rollback and backup pruning (docs/cutover.md).

``rollback`` puts the old envelope back where the old readers find it, from the backups the
migration kept: ``<key>.keymigration-backup`` (an envelope removed from object metadata by the
cut-over) is copied back into the metadata; ``<key>.instruction.keymigration-backup`` (an
instruction file replaced by the migration) is restored byte for byte. Only files carrying
keymigration's own marker are replaced or removed; anything written by someone else since is
reported and left alone.

``prune`` deletes the backups once the user confirms the migration; it first checks that the
object is readable through its new KMS envelope by a default-lookup reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import NotReadable, ObjectError, PreconditionFailed
from keymigration.formats import envelope as env_mod
from keymigration.formats.vocabulary import BACKUP_SUFFIX, DEFAULT_INSTRUCTION_SUFFIX
from keymigration.migrate.cutover import (
    METADATA_BACKUP_SUFFIX,
    envelope_in_metadata,
    read_backup_record,
    read_metadata_backup,
)
from keymigration.migrate.files import MARKER_SOURCE, MARKER_TARGET, source_fingerprint
from keymigration.migrate.reader import locate
from keymigration.migrate.results import ObjectResult, Outcome
from keymigration.migrate.state import Verdict, run_stages

FILE_BACKUP_SUFFIX = DEFAULT_INSTRUCTION_SUFFIX + BACKUP_SUFFIX


@dataclass(frozen=True)
class RollbackOptions:
    bucket: str
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    remove_instruction_files: bool = False
    dry_run: bool = False


def _ours(stored) -> bool:
    return stored is not None and MARKER_TARGET in stored.metadata


@dataclass(frozen=True)
class RollbackState:
    """What the rollback steps know about one object, in the order they learn it."""

    key: str
    head: dict | None = field(default=None, repr=False)  # read_head
    metadata_backup: StoredFile | None = None  # restore_metadata_envelope: <key>.keymigration-backup
    done: tuple[str, ...] = ()  # what was (or, in a dry run, would be) put back so far

    @property
    def metadata(self) -> dict[str, str]:
        assert self.head is not None
        return self.head.get("Metadata", {})

    def did(self, step: str) -> "RollbackState":
        return replace(self, done=self.done + (step,))


def _rollback_error(error: ObjectError) -> Verdict:
    if isinstance(error, PreconditionFailed):
        message = "the object or its instruction file changed during the rollback; nothing was overwritten"
        return Verdict.failed("object-changed", message, retryable=True)
    return Verdict.of_error(error)


class Rollback:
    """Puts the old envelope back, one object at a time, in named steps over a RollbackState:
    read_head -> restore_metadata_envelope -> restore_instruction_file (or, without a file
    backup, remove_instruction_file)."""

    def __init__(self, s3_client, options: RollbackOptions):
        self.bucket = Bucket(s3_client, options.bucket)
        self.rewriter = MetadataRewriter(self.bucket)
        self.options = options
        self.stages = (self.read_head, self.restore_metadata_envelope, self.restore_instruction_file)

    def process(self, key: str, hint=None) -> ObjectResult:
        state, verdict = run_stages(self.stages, RollbackState(key), errors=_rollback_error)
        result = ObjectResult(key, Outcome.SKIPPED, "nothing-to-roll-back")
        if verdict is not None:
            return verdict.apply(result)
        if state.done:
            dry = self.options.dry_run
            result.outcome = Outcome.PLANNED if dry else Outcome.ROLLED_BACK
            result.reason = "would-roll-back" if dry else "rolled-back"
            result.message = "; ".join(state.done)
        return result

    # -- steps ------------------------------------------------------------------------------

    def read_head(self, state: RollbackState) -> RollbackState:
        head = self.bucket.head(state.key)
        if head is None:
            raise Verdict.skipped("object-deleted", "")
        return replace(state, head=head)

    def restore_metadata_envelope(self, state: RollbackState) -> RollbackState:
        """``<key>.keymigration-backup``: the envelope the cut-over removed goes back into the
        metadata, unless the object is no longer the one that was cut over."""
        backup = self.bucket.get_small(state.key + METADATA_BACKUP_SUFFIX)
        state = replace(state, metadata_backup=backup)
        if backup is None:
            return state
        envelope = read_metadata_backup(backup.body)
        current = envelope_in_metadata(state.metadata)
        if current and current != envelope:
            raise Verdict.failed("metadata-changed", "the object's metadata holds a different envelope than the backup (rewritten since?)")
        if current:
            return state
        if not self._same_object(state.key, state.head, envelope, read_backup_record(backup.body)):
            raise Verdict.failed("object-replaced", "the object was replaced since its cut-over; its backup belongs to the old one")
        if not self.options.dry_run:
            self.rewriter.rewrite(state.key, state.head, {**env_mod.lower_keys(state.metadata), **envelope})
        return state.did("metadata envelope restored")

    def restore_instruction_file(self, state: RollbackState) -> RollbackState:
        """``<key>.instruction.keymigration-backup``: the instruction file the migration replaced
        goes back, byte for byte, over keymigration's own file only."""
        backup = self.bucket.get_small(state.key + FILE_BACKUP_SUFFIX)
        if backup is None or MARKER_TARGET in backup.metadata:
            # (a copy of keymigration's own output is not an original: never restored)
            return self.remove_instruction_file(state)
        target = state.key + DEFAULT_INSTRUCTION_SUFFIX
        current = self.bucket.get_small(target)
        if current is not None and current.body == backup.body:
            return state  # already restored
        if current is not None and not _ours(current):
            raise Verdict.failed("instruction-file-changed", f"{target!r} was not written by keymigration; not replacing it")
        if not self.options.dry_run:
            original = {k: v for k, v in backup.metadata.items() if not k.startswith("keymigration-backup")}
            if current is None:
                self.bucket.put(target, backup.body, original, if_none_match=True)
            else:
                self.bucket.put(target, backup.body, original, if_match=current.etag)
        return state.did("instruction file restored")

    def remove_instruction_file(self, state: RollbackState) -> RollbackState:
        """With --remove-instruction-files: our KMS file goes once the old envelope is back."""
        if not self.options.remove_instruction_files:
            return state
        name = state.key + self.options.suffix
        ours = self.bucket.get_small(name)
        envelope_in_place = state.metadata_backup is not None or envelope_in_metadata(state.metadata)
        if not (_ours(ours) and envelope_in_place):
            return state
        if not self.options.dry_run:
            self.bucket.delete(name, if_match=ours.etag)
        return state.did("KMS instruction file removed")

    def _same_object(self, key: str, head: dict, envelope: dict[str, str], record: dict) -> bool:
        """The object is still the one that was cut over: the ETag the cut-over recorded, or
        (if the run ended before recording it) the same length and our KMS instruction file
        written for the envelope in the backup."""
        if record.get("cut_over_etag"):
            return head.get("ETag") == record["cut_over_etag"]
        if record.get("length") is not None and head.get("ContentLength") != record["length"]:
            return False
        stored = self.bucket.get_small(key + DEFAULT_INSTRUCTION_SUFFIX)
        if stored is None or MARKER_TARGET not in stored.metadata:
            return False
        metadata = {**env_mod.lower_keys(head.get("Metadata", {})), **envelope}
        try:
            return stored.metadata.get(MARKER_SOURCE) == source_fingerprint(env_mod.from_metadata(metadata))
        except env_mod.EnvelopeError:
            return False


class Prune:
    """Deletes backups of objects that a default-lookup reader opens with the target KMS key."""

    def __init__(self, s3_client, kms: KmsKeys, bucket: str, confirm: bool):
        self.bucket = Bucket(s3_client, bucket)
        self.kms = kms
        self.confirm = confirm

    def process(self, key: str, hint=None) -> ObjectResult:
        result = ObjectResult(key, Outcome.SKIPPED, "no-backup")
        names = [key + METADATA_BACKUP_SUFFIX, key + FILE_BACKUP_SUFFIX]
        backups = [b for b in (self.bucket.get_small(n) for n in names) if b is not None]
        if not backups:
            return result
        try:
            opened = self.bucket.open(key)
            if opened is None:
                result.reason = "object-deleted"
                return result
            metadata, chunks = opened
            chunks.close()
            envelope = locate(self.bucket, key, metadata, None)
            if not envelope.wrap.is_kms:
                raise NotReadable("not-kms", "the envelope readers use is not a KMS envelope")
            self.kms.check_decryptable(envelope.encrypted_key, envelope.context)
        except ObjectError as error:
            result.outcome, result.reason = Outcome.FAILED, "not-migrated"
            result.message = f"keeping the backups: {error}"
            return result
        if not self.confirm:
            result.outcome, result.reason = Outcome.PLANNED, "would-prune"
            return result
        for backup in backups:
            try:
                self.bucket.delete(backup.key, if_match=backup.etag)
            except PreconditionFailed:
                result.outcome, result.reason = Outcome.FAILED, "backup-changed"
                return result
        result.outcome, result.reason = Outcome.PRUNED, "pruned"
        return result
