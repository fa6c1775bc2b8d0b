"""Rollback and backup pruning (docs/cutover.md).

Every migration of an object is a step of a chain (``migrate/files.py``): step n keeps what it
replaced in backups named ``backup_name(name, n)``: ``<key>.keymigration-backup[.n]`` (what it
took out of the object's metadata; a cut-over keeps that record on its ``<key>.instruction``
instead, ``cutover.with_file_backup``) and ``<file>.keymigration-backup[.n]`` (an instruction
file it replaced or removed, byte for byte, with its own metadata).

``rollback`` undoes the last step of each object: what the step took out of the metadata goes
back (a copy onto the object itself, only if the object is still the step's copy), the files
it replaced or removed are restored byte for byte (only over keymigration's own files), files
it created are removed (a first step's only with ``--remove-instruction-files``), and the step's
backups are deleted once all of that is done, so the next rollback undoes the step before.
Anything written by someone else since is reported and left alone.

``prune`` deletes an object's backups, the whole chain, once the user confirms the migration;
it first checks that the object is readable through its new KMS envelope.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from keymigration.aws.copy import MetadataRewriter
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import EnvelopeError, NotReadable, ObjectError, PreconditionFailed
from keymigration.formats import envelope as env_mod
from keymigration.formats.vocabulary import DEFAULT_INSTRUCTION_SUFFIX, backup_name
from keymigration.migrate import files
from keymigration.migrate.cutover import (
    envelope_in_metadata,
    file_backup,
    read_backup_record,
    restored_metadata,
    without_file_backup,
)
from keymigration.migrate.files import MARKER_COPY, MARKER_TARGET
from keymigration.migrate.reader import locate
from keymigration.migrate.results import ObjectResult, Outcome
from keymigration.migrate.state import Verdict, run_stages


@dataclass(frozen=True)
class RollbackOptions:
    bucket: str
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    remove_instruction_files: bool = False
    dry_run: bool = False


def _ours(stored) -> bool:
    return stored is not None and MARKER_TARGET in stored.metadata


@dataclass(frozen=True)
class Step:
    """The backups one migration step of an object left: of its metadata, and of its files.
    A cut-over's metadata backup may ride on its instruction file (``carrier``) instead of
    being an object of its own (``cutover.with_file_backup``)."""

    number: int
    metadata: StoredFile | None = None  # the metadata backup a rollback restores from
    files: Mapping[str, StoredFile] = field(default_factory=dict)
    carrier: StoredFile | None = None  # the instruction file carrying a record of this step
    stale: tuple[StoredFile, ...] = ()  # backup objects of the step that fit no version of the object now

    @property
    def backups(self) -> list[StoredFile]:
        """The backup objects (deleted once the step is undone or pruned)."""
        carried = self.carrier is not None and self.metadata is not None and self.metadata.key == self.carrier.key
        return [b for b in (None if carried else self.metadata, *self.stale, *self.files.values()) if b is not None]

    @property
    def kept(self) -> int:
        """How many backups the step left: its objects, and one carried by a file."""
        return len(self.backups) + (self.carrier is not None)

    def drop(self, bucket: Bucket, gone: tuple[str, ...] = ()) -> None:
        """Delete the step's backups: its backup objects, and the backup its carrier file holds
        (unless that file is among ``gone``, removed already)."""
        for backup in self.backups:
            bucket.delete(backup.key, if_match=backup.etag)
        if self.carrier is not None and self.carrier.key not in gone:
            without_file_backup(bucket, self.carrier)


class Chain:
    """An object's migration steps, from the marks on what keymigration wrote and the backups
    it kept. The instruction files looked at: ``<key>.instruction`` and ``<key><suffix>``."""

    def __init__(self, bucket: Bucket, suffix: str):
        self.bucket = bucket
        self.suffix = suffix

    def file_names(self, key: str) -> list[str]:
        return list(dict.fromkeys((key + DEFAULT_INSTRUCTION_SUFFIX, key + self.suffix)))

    def read_files(self, key: str) -> dict[str, StoredFile | None]:
        return {name: self.bucket.get_small(name) for name in self.file_names(key)}

    def step(self, key: str, number: int, current: Mapping[str, StoredFile | None], head: dict) -> Step:
        files_ = {name: self.bucket.get_small(backup_name(name, number)) for name in self.file_names(key)}
        found = {k: v for k, v in files_.items() if v}
        own = self.bucket.get_small(backup_name(key, number))
        carrier = current.get(key + DEFAULT_INSTRUCTION_SUFFIX)
        carried = file_backup(carrier) if _ours(carrier) and files.step_of(carrier.metadata) == number else None
        if carried is None:
            return Step(number, own, found)
        metadata, stale = pick_metadata_backup(head, own, carried)
        return Step(number, metadata, found, carrier, stale)

    def last(self, key: str, head: dict, current: Mapping[str, StoredFile | None]) -> Step:
        """The last step: the highest step number marked on what keymigration wrote, or the
        highest with backups (a rollback interrupted after restoring, before deleting them)."""
        number = marked_step(head.get("Metadata", {}), current.values())
        found = None
        while True:
            above = self.step(key, number + 1, current, head)
            if not above.kept:
                break
            found, number = above, number + 1
        if found is not None:
            return found
        return self.step(key, number, current, head) if number else Step(0)

    def all_steps(self, key: str, head: dict, current: Mapping[str, StoredFile | None]) -> list[Step]:
        last = self.last(key, head, current)
        if not last.number:
            return []
        return [self.step(key, n, current, head) for n in range(1, last.number)] + [last]


def pick_metadata_backup(head: dict, own: StoredFile | None, carried: StoredFile) -> tuple[StoredFile | None, tuple[StoredFile, ...]]:
    """Which metadata backup of a step a rollback restores from, when the step's instruction
    file carries one (``carried``) and a backup object may exist too (``own``); and the backup
    objects that fit no version of the object (deleted with the step). The one whose copy the
    object carries wins: a backup object may be older than the carried record (left by a step
    of an object replaced since) or newer (stored by a cut-over that could not use the carried
    one)."""
    if own is None:
        return carried, ()
    fits = step_applies(head, carried)
    if fits is True or (fits is None and step_applies(head, own) is False):
        return carried, (own,)
    return own, ()


def marked_step(metadata: Mapping[str, str], current) -> int:
    """The highest step marked on the object's metadata envelope or an instruction file of ours
    (0: none of keymigration's marks)."""
    md = env_mod.lower_keys(metadata)
    steps = [files.step_of(f.metadata) for f in current if f is not None]
    try:
        if env_mod.detect(md) is env_mod.MetadataKind.ENVELOPE:
            fingerprint = files.source_fingerprint(env_mod.from_metadata(md))
            if files.ours_in_metadata(md, fingerprint):
                steps.append(files.step_of(md))
    except EnvelopeError:
        pass
    return max(steps, default=0)


@dataclass(frozen=True)
class RollbackState:
    """What the rollback steps know about one object, in the order they learn it."""

    key: str
    head: dict | None = field(default=None, repr=False)  # read_head
    current: Mapping[str, StoredFile | None] = field(default_factory=dict, repr=False)  # read_files
    step: Step | None = None  # find_step: the step being undone
    done: tuple[str, ...] = ()  # what was (or, in a dry run, would be) put back so far
    gone: tuple[str, ...] = ()  # files of ours this rollback deleted or wrote over

    @property
    def metadata(self) -> dict[str, str]:
        assert self.head is not None
        return env_mod.lower_keys(self.head.get("Metadata", {}))

    def did(self, step: str, file: str | None = None) -> "RollbackState":
        """``step`` done; ``file``: a file of ours it deleted or wrote over."""
        return replace(self, done=self.done + (step,), gone=self.gone + ((file,) if file else ()))


def _rollback_error(error: ObjectError) -> Verdict:
    if isinstance(error, PreconditionFailed):
        message = "the object or its instruction file changed during the rollback; nothing was overwritten"
        return Verdict.failed("object-changed", message, retryable=True)
    return Verdict.of_error(error)


class Rollback:
    """Undoes the last migration step of one object at a time, in named steps over a
    RollbackState: read_head -> read_files -> find_step -> restore_metadata_envelope ->
    restore_instruction_files -> remove_created_files -> delete_backups."""

    def __init__(self, s3_client, options: RollbackOptions):
        self.bucket = Bucket(s3_client, options.bucket)
        self.rewriter = MetadataRewriter(self.bucket)
        self.options = options
        self.chain = Chain(self.bucket, options.suffix)
        self.stages = (
            self.read_head,
            self.read_files,
            self.find_step,
            self.restore_metadata_envelope,
            self.restore_instruction_files,
            self.remove_created_files,
            self.delete_backups,
        )

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

    def read_files(self, state: RollbackState) -> RollbackState:
        return replace(state, current=self.chain.read_files(state.key))

    def find_step(self, state: RollbackState) -> RollbackState:
        assert state.head is not None
        step = self.chain.last(state.key, state.head, state.current)
        if not step.number:
            raise Verdict.skipped("nothing-to-roll-back", "no migration of keymigration's found")
        return replace(state, step=step)

    def restore_metadata_envelope(self, state: RollbackState) -> RollbackState:
        """What the step took out of the metadata goes back, if the object is still the step's
        copy (its ``keymigration-copy`` value, which only that copy wrote)."""
        assert state.step is not None
        backup = state.step.metadata
        if backup is None:
            return state
        current = state.metadata
        applies = step_applies(state.head, backup)
        if applies is None:
            return state  # the copy never landed, or was undone already
        if not applies:
            if envelope_in_metadata(current):
                raise Verdict.failed("metadata-changed", "the object's metadata holds an envelope keymigration did not write (rewritten since?)")
            raise Verdict.failed("object-replaced", "the object was replaced since its migration; its backup belongs to the old one")
        if not self.options.dry_run:
            record = read_backup_record(backup.body)
            self.rewriter.rewrite(state.key, state.head, restored_metadata(current, record["envelope"]))
        return state.did(f"step {state.step.number}: metadata envelope restored")

    def restore_instruction_files(self, state: RollbackState) -> RollbackState:
        """The instruction files the step replaced or removed come back, byte for byte, never
        over a file someone else wrote."""
        assert state.step is not None
        for name, backup in state.step.files.items():
            if state.step.number == 1 and MARKER_TARGET in backup.metadata:
                continue  # a first step's copy of keymigration's own output is not an original
            current = state.current.get(name)
            if current is not None and current.body == backup.body:
                continue  # already restored
            if current is not None and not _ours(current):
                raise Verdict.failed("instruction-file-changed", f"{name!r} was not written by keymigration; not replacing it")
            if not self.options.dry_run:
                original = {k: v for k, v in backup.metadata.items() if not k.startswith("keymigration-backup")}
                condition = {"if_match": current.etag} if current is not None else {"if_none_match": True}
                self.bucket.put(name, backup.body, original, content_type=backup.content_type, **condition)
            state = state.did(f"step {state.step.number}: instruction file {name[len(state.key):]} restored", name)
        return state

    def remove_created_files(self, state: RollbackState) -> RollbackState:
        """Files of ours the step created (nothing to restore over them) go: a rotation's always,
        a first migration's only with --remove-instruction-files, once the old envelope is where
        the old readers find it (the KMS file otherwise keeps explicit-suffix readers working)."""
        step = state.step
        assert step is not None
        first = step.number == 1
        if first and not self.options.remove_instruction_files:
            return state
        default_name = state.key + DEFAULT_INSTRUCTION_SUFFIX
        default_file = state.current.get(default_name)
        envelope_in_place = (  # where the old readers' default lookup finds it
            step.metadata is not None
            or envelope_in_metadata(state.metadata)
            or default_name in step.files
            or (default_file is not None and not _ours(default_file))
        )
        for name, current in state.current.items():
            created = _ours(current) and files.step_of(current.metadata) == step.number and name not in step.files
            if not created or (first and not envelope_in_place):
                continue
            if not self.options.dry_run:
                self.bucket.delete(name, if_match=current.etag)
            state = state.did(f"step {step.number}: KMS instruction file {name[len(state.key):]} removed", name)
        return state

    def delete_backups(self, state: RollbackState) -> RollbackState:
        """The step is undone: its backups are live again, the next rollback undoes the step
        before."""
        assert state.step is not None
        if self.options.dry_run:
            return state
        state.step.drop(self.bucket, state.gone)
        if state.step.kept and not state.done:
            state = state.did(f"step {state.step.number}: already undone; its backups removed")
        return state


def step_applies(head: dict, backup: StoredFile) -> bool | None:
    """Whether the object is the one a step's metadata backup belongs to: True if the object
    holds exactly what the step's copy wrote (its keymigration-copy value and, beside it, the
    envelope bound to it in metadata mode, or none after a cut-over); None if it still holds
    what the backup holds (the copy never landed, or was undone); False otherwise: the object
    was replaced since, and the backup belongs to the old one. Backups of releases before the
    value existed carry the cut-over's ETag instead."""
    record = read_backup_record(backup.body)
    current = env_mod.lower_keys(head.get("Metadata", {}))
    if restored_metadata(current, {str(k): str(v) for k, v in record["envelope"].items()}) == current:
        return None
    if not record.get("copy"):
        return bool(record.get("cut_over_etag")) and head.get("ETag") == record["cut_over_etag"]
    if current.get(MARKER_COPY) != record["copy"]:
        return False
    if not envelope_in_metadata(current):
        return True
    try:
        return files.source_fingerprint(env_mod.from_metadata(current)) == record["copy"]
    except EnvelopeError:
        return False


class Prune:
    """Deletes the backups of objects that a reader opens with the target KMS key: the default
    lookup (metadata first, then ``<key>.instruction``), or the explicit one at ``suffix``."""

    def __init__(self, s3_client, kms: KmsKeys, bucket: str, confirm: bool, suffix: str = DEFAULT_INSTRUCTION_SUFFIX):
        self.bucket = Bucket(s3_client, bucket)
        self.kms = kms
        self.confirm = confirm
        self.suffix = suffix
        self.chain = Chain(self.bucket, suffix)

    def process(self, key: str, hint=None) -> ObjectResult:
        result = ObjectResult(key, Outcome.SKIPPED, "no-backup")
        head = self.bucket.head(key)
        if head is None:
            result.reason = "object-deleted"
            return result
        steps = self.chain.all_steps(key, head, self.chain.read_files(key))
        kept = sum(step.kept for step in steps)
        if not kept:
            return result
        last = steps[-1].metadata
        replaced = last is not None and step_applies(head, last) is False
        if not replaced:
            # (the backups of an object replaced since its last migration belong to data no
            # longer stored: no rollback could apply them, and they would block its migration)
            try:
                self._check_readable(key)
            except ObjectError as error:
                result.outcome, result.reason = Outcome.FAILED, "not-migrated"
                result.message = f"keeping the backups: {error}"
                return result
        if not self.confirm:
            result.outcome, result.reason = Outcome.PLANNED, "would-prune"
            return result
        for step in steps:
            try:
                step.drop(self.bucket)
            except PreconditionFailed:
                result.outcome, result.reason = Outcome.FAILED, "backup-changed"
                return result
            except ObjectError as error:  # e.g. no s3:PutObject on the instruction file carrying one
                return result.fail(error)
        result.outcome, result.reason = Outcome.PRUNED, "pruned"
        result.message = f"{kept} backups of {len(steps)} migration steps" + (" of a replaced object" if replaced else "")
        return result

    def _check_readable(self, key: str) -> None:
        opened = self.bucket.open(key)
        if opened is None:
            raise NotReadable("object-deleted", "the object is gone")
        metadata, chunks = opened
        chunks.close()
        lookups = [None] if self.suffix == DEFAULT_INSTRUCTION_SUFFIX else [None, self.suffix]
        last: ObjectError | None = None
        for suffix in lookups:
            try:
                envelope = locate(self.bucket, key, metadata, suffix)
                if not envelope.wrap.is_kms:
                    raise NotReadable("not-kms", "the envelope readers use is not a KMS envelope")
                self.kms.check_decryptable(envelope.encrypted_key, envelope.context)
                return
            except ObjectError as error:
                last = error
        assert last is not None
        raise last
