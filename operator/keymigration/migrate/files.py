"""The files keymigration writes next to an object, and the marks it leaves on them.

An instruction file written by keymigration carries, in its own S3 metadata (never in its JSON,
which holds only S3EC keys), the target key's ARN and a fingerprint of the envelope it replaced:
that is how a later run, the cut-over and the rollback recognise keymigration's own output. A
file it replaces is first kept byte for byte in ``<name>.keymigration-backup``.

An object that keymigration copies onto itself (cut-over, metadata mode) carries
``keymigration-copy``: a value unique to that copy, also stored in the copy's backup, so that
the tool (after a lost response) and the rollback tell keymigration's copy from anyone else's
write. In metadata mode the object also carries the target key's ARN and the step (below), and
the copy value is the fingerprint of the envelope written with it, binding the marks to it.

Every migration of an object is a step: 1 for the first, one more than the step of the
envelope it replaces for a rotation (``keymigration-step`` on what it writes). The backups of
step n are named ``backup_name(name, n)``, so a rotation never collides with the backups of an
earlier one, and a rollback undoes the last step only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import PreconditionFailed, S3Error
from keymigration.formats import envelope as env_mod
from keymigration.formats.envelope import Envelope
from keymigration.formats.vocabulary import backup_name

# Metadata on the instruction-file object itself (not in its JSON, which holds only S3EC keys).
MARKER_TARGET = "keymigration-target-key"
MARKER_SOURCE = "keymigration-source"
MARKER_RUN = "keymigration-run"
MARKER_STEP = "keymigration-step"
MARKER_COPY = "keymigration-copy"  # object metadata only
# What keymigration may put into an object's metadata besides the envelope.
OBJECT_MARKERS = (MARKER_TARGET, MARKER_STEP, MARKER_COPY, MARKER_RUN)
# On a cut-over's instruction file: the backup of the metadata envelope the cut-over removes
# (``migrate/cutover.py`` ``file_backup``). Not ``keymigration-backup-*``: a restored file keeps it.
METADATA_BACKUP = "keymigration-metadata-backup"
BACKUP_OF = "keymigration-backup-of"
BACKUP_ETAG = "keymigration-backup-etag"


def source_fingerprint(envelope: Envelope) -> str:
    """Identifies the old envelope (public values only: the EDK and IV are stored in clear)."""
    digest = hashlib.sha256(envelope.encrypted_key + (envelope.iv or envelope.message_id or b""))
    return digest.hexdigest()[:32]


def instruction_file_metadata(target_arn: str, fingerprint: str, run_id: str, step: int = 1) -> dict[str, str]:
    # x-amz-crypto-instr-file: "" is what Java v1, Java S3EC and .NET put on instruction files.
    marker = {env_mod.INSTRUCTION_FILE_MARKER: "", MARKER_TARGET: target_arn, MARKER_SOURCE: fingerprint}
    if run_id:
        marker[MARKER_RUN] = run_id
    if step > 1:
        marker[MARKER_STEP] = str(step)
    return marker


def object_metadata_marks(target_arn: str, envelope: Envelope, step: int, run_id: str = "") -> dict[str, str]:
    """The marks of a metadata-mode envelope on the object itself."""
    marks = {MARKER_TARGET: target_arn, MARKER_STEP: str(step), MARKER_COPY: source_fingerprint(envelope)}
    if run_id:
        marks[MARKER_RUN] = run_id
    return marks


def step_of(metadata: Mapping[str, str] | None) -> int:
    """The migration step that wrote a file or object envelope with these marks; 0: not ours."""
    if not metadata or MARKER_TARGET not in metadata:
        return 0
    value = metadata.get(MARKER_STEP, "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def ours_in_metadata(metadata: Mapping[str, str], metadata_fingerprint: str | None) -> bool:
    """The object's metadata envelope (of this fingerprint) was written by keymigration's
    metadata mode: the marks are bound to exactly this envelope."""
    return metadata_fingerprint is not None and MARKER_TARGET in metadata and metadata.get(MARKER_COPY) == metadata_fingerprint


def written_for(existing: StoredFile, fingerprint: str) -> bool:
    """A file keymigration wrote for the object envelope with this fingerprint."""
    return MARKER_TARGET in existing.metadata and existing.metadata.get(MARKER_SOURCE) == fingerprint


def marked_done(existing: StoredFile, target_arn: str, envelope: Envelope, fingerprint: str, replaces_source: bool) -> bool:
    """Our own marker says this file already wraps this object's data key under the target."""
    if existing.metadata.get(MARKER_TARGET) != target_arn:
        return False
    if replaces_source:
        return envelope.wrap.is_kms  # the source envelope is our own output
    return existing.metadata.get(MARKER_SOURCE) == fingerprint


@dataclass(frozen=True)
class Written:
    """An instruction file this call wrote: its name, its ETag, the file it replaced, and the
    file as written (what a read of it would give now: the conditional write proves it)."""

    name: str
    etag: str
    replaced: StoredFile | None
    file: StoredFile | None = None


def withdraw(bucket: Bucket, written: Written | None) -> None:
    """Undo an instruction-file write of this call: restore the file it replaced (with its own
    content type and metadata), or delete ours; never touch a file changed since."""
    if written is None:
        return
    replaced = written.replaced
    try:
        if replaced is not None:
            bucket.put(written.name, replaced.body, replaced.metadata, if_match=written.etag, content_type=replaced.content_type)
        else:
            bucket.delete(written.name, if_match=written.etag)
    except PreconditionFailed:
        pass  # someone else has written the file again since; leave theirs


def our_earlier_write(bucket: Bucket, name: str, body: bytes) -> tuple[str | None, StoredFile | None]:
    """After a lost response, the SDK retries a conditional PUT that had already landed and
    gets 412. The file then holds exactly our bytes (its fresh EDK makes them unique).
    Returns (its ETag if it is ours, else None; the file found)."""
    current = bucket.get_small(name)
    if current is not None and current.body == body:
        return current.etag, current
    return None, current


def stale(existing: StoredFile, metadata_fingerprint: str | None) -> bool:
    """A file of our own written for an earlier version of the object, while the current
    envelope lives in the metadata (``metadata_fingerprint`` is its fingerprint): it wraps a data
    key that no longer exists, it is nobody's original, and rollback must never restore it."""
    return MARKER_TARGET in existing.metadata and metadata_fingerprint is not None and not written_for(existing, metadata_fingerprint)


def back_up_instruction_file(bucket: Bucket, existing: StoredFile, metadata_fingerprint: str | None, step: int = 1) -> str | None:
    """Keep a byte-exact copy of an instruction file before replacing or removing it, as
    migration step ``step``'s backup of it; not for a ``stale`` file (above). Returns the
    backup's ETag if this call stored it (None: not needed, or there already)."""
    if stale(existing, metadata_fingerprint):
        return None
    backup_key = backup_name(existing.key, step)
    metadata = dict(existing.metadata)
    metadata[BACKUP_OF] = "instruction-file"
    metadata[BACKUP_ETAG] = existing.etag.strip('"')
    try:
        return bucket.put(backup_key, existing.body, metadata, if_none_match=True, content_type=existing.content_type)
    except PreconditionFailed:
        stored = bucket.get_small(backup_key)
        if stored is None or stored.body != existing.body:
            raise S3Error(
                "backup-exists",
                f"{backup_key!r} already holds a different envelope (an earlier migration's backup); "
                "confirm that migration and prune its backups first",
            ) from None
    return None
