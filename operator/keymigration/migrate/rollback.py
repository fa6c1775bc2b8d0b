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

from dataclasses import dataclass

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.errors import NotReadable, ObjectError, PreconditionFailed, S3Error
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

FILE_BACKUP_SUFFIX = DEFAULT_INSTRUCTION_SUFFIX + BACKUP_SUFFIX


@dataclass(frozen=True)
class RollbackOptions:
    bucket: str
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    remove_instruction_files: bool = False
    dry_run: bool = False


def _ours(stored) -> bool:
    return stored is not None and MARKER_TARGET in stored.metadata


class Rollback:
    def __init__(self, s3_client, settings: RollbackOptions):
        self.bucket = Bucket(s3_client, settings.bucket)
        self.rewriter = MetadataRewriter(self.bucket)
        self.settings = settings

    def process(self, key: str, hint=None) -> ObjectResult:
        result = ObjectResult(key, Outcome.SKIPPED, "nothing-to-roll-back")
        try:
            self._process(key, result)
        except PreconditionFailed:
            message = "the object or its instruction file changed during the rollback; nothing was overwritten"
            result.fail(S3Error("object-changed", message, retryable=True))
        except ObjectError as error:
            result.fail(error)
        return result

    def _process(self, key: str, result: ObjectResult) -> None:
        dry = self.settings.dry_run
        head = self.bucket.head(key)
        if head is None:
            result.reason = "object-deleted"
            return
        done = []
        metadata_backup = self.bucket.get_small(key + METADATA_BACKUP_SUFFIX)
        if metadata_backup is not None:
            record = read_backup_record(metadata_backup.body)
            envelope = read_metadata_backup(metadata_backup.body)
            current = envelope_in_metadata(head.get("Metadata", {}))
            if current and current != envelope:
                result.outcome, result.reason = Outcome.FAILED, "metadata-changed"
                result.message = "the object's metadata holds a different envelope than the backup (rewritten since?)"
                return
            if not current and not self._same_object(key, head, envelope, record):
                result.outcome, result.reason = Outcome.FAILED, "object-replaced"
                result.message = "the object was replaced since its cut-over; its backup belongs to the old one"
                return
            if not current:
                if not dry:
                    merged = {**env_mod.lower_keys(head.get("Metadata", {})), **envelope}
                    self.rewriter.rewrite(key, head, merged)
                done.append("metadata envelope restored")
        file_backup = self.bucket.get_small(key + FILE_BACKUP_SUFFIX)
        target = key + DEFAULT_INSTRUCTION_SUFFIX
        if file_backup is not None and MARKER_TARGET in file_backup.metadata:
            file_backup = None  # a copy of keymigration's own output, not an original: never restored
        if file_backup is not None:
            current_file = self.bucket.get_small(target)
            if current_file is not None and current_file.body == file_backup.body:
                pass  # already restored
            elif current_file is not None and not _ours(current_file):
                result.outcome, result.reason = Outcome.FAILED, "instruction-file-changed"
                result.message = f"{target!r} was not written by keymigration; not replacing it"
                return
            else:
                if not dry:
                    original = {k: v for k, v in file_backup.metadata.items() if not k.startswith("keymigration-backup")}
                    if current_file is None:
                        self.bucket.put(target, file_backup.body, original, if_none_match=True)
                    else:
                        self.bucket.put(target, file_backup.body, original, if_match=current_file.etag)
                done.append("instruction file restored")
        elif self.settings.remove_instruction_files:
            name = key + self.settings.suffix
            ours = self.bucket.get_small(name)
            envelope_in_place = metadata_backup is not None or envelope_in_metadata(head.get("Metadata", {}))
            if _ours(ours) and envelope_in_place:
                if not dry:
                    self.bucket.delete(name, if_match=ours.etag)
                done.append("KMS instruction file removed")
        if done:
            result.outcome = Outcome.PLANNED if dry else Outcome.ROLLED_BACK
            result.reason = "would-roll-back" if dry else "rolled-back"
            result.message = "; ".join(done)


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
