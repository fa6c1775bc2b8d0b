"""Re-wrapping one object: find its envelope, unwrap the data key, wrap it under the target KMS
key, verify, and write ``<key><suffix>``. The object itself (body, metadata, ETag) is never
touched.

Safety rules, in order of the steps:
* The old envelope is read where readers read it: object metadata first, else
  ``<key>.instruction`` (the rule is cited at ``locate_envelope``).
* A wrong source key never yields a data key (unwrap.py); V3 data keys are also checked against
  the key commitment.
* The new envelope is verified before it is written: KMS-decrypted and compared in constant time
  with the data key (or, KMS-to-KMS, proven decryptable without the plaintext leaving KMS).
* Writes are conditional: ``IfNoneMatch='*'`` for a new file, ``IfMatch=<ETag read>`` to replace
  one, and a file is replaced only after a byte-exact backup is stored next to it.
* After the write, the object must still be the one that was read; otherwise the new file is
  withdrawn and the object retried. An object from a listing is confirmed by the worker with its
  page's other objects from one re-listing (``ObjectResult.unconfirmed``); without a listing
  (an inventory, a retry, one key) by a HEAD IfMatch. A cut-over's copy, conditional on the ETag
  read (``CopySourceIfMatch``), confirms it itself.

The steps are named stages over an ``ObjectState`` (``migrate/state.py``), each a small method
that returns the state with what it found added, or ends the object with a ``Verdict``:
read_head -> locate_envelope -> check_body_length -> skip_if_done -> unwrap_data_key ->
prove_data_key -> plan_dry_run -> skip_if_already_wrapped -> wrap_data_key -> build_envelope ->
verify_envelope -> verify_body -> write_file (``rewrap_stages``); in cut-over mode
``migrate/cutover.py`` ``CutOver`` follows; then the confirmation above.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from functools import partial
from typing import Sequence

from keymigration.aws.kms import KmsKeys, Wrapped
from keymigration.aws.s3 import Bucket, StoredFile
from keymigration.errors import ContentError, EnvelopeError, KmsError, ObjectError, PreconditionFailed, UnwrapError
from keymigration.formats import envelope as env_mod
from keymigration.formats.content import GCM_TAG_BITS, check_cbc_tail, check_commitment, verify_body
from keymigration.formats.envelope import Envelope, MetadataKind
from keymigration.formats.secrets import DataKey
from keymigration.formats.source_keys import MasterKey
from keymigration.formats.unwrap import Unwrapped, check_proof_strength, unwrap_candidates
from keymigration.formats.vocabulary import (
    DEFAULT_INSTRUCTION_SUFFIX,
    DEFAULT_SAMPLE_RATE,
    Mode,
    VerifyLevel,
    backup_name,
    check_sample_rate,
    check_target,
)
from keymigration.migrate import cutover, files
from keymigration.migrate.cutover import COPY_STAGE_ENDINGS, CUT_OVER, CutOver
from keymigration.migrate.files import Written
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome, Unconfirmed
from keymigration.migrate.state import MIGRATED, ObjectState, Stage, Verdict, run_stages


@dataclass(frozen=True)
class RewrapOptions:
    bucket: str
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    verify: VerifyLevel = VerifyLevel.ENVELOPE
    dry_run: bool = False
    run_id: str = ""
    mode: Mode = Mode.INSTRUCTION_FILE
    # --verify sample: the share of objects (after the first) whose new envelope KMS opens too
    sample_rate: float = DEFAULT_SAMPLE_RATE

    def __post_init__(self):
        object.__setattr__(self, "verify", VerifyLevel.parse(self.verify))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "mode", check_target(self.mode, self.suffix))


class ObjectRewrapper:
    """Processes one object at a time; safe to share between threads.

    ``process`` passes an ``ObjectState`` through ``self.stages`` (chosen once from the
    options, see ``rewrap_stages``); in cut-over mode, ``CutOver`` then takes the object on."""

    def __init__(self, s3_client, kms: KmsKeys, source_keys: Sequence[MasterKey], options: RewrapOptions):
        self.bucket = Bucket(s3_client, options.bucket)
        self.kms = kms
        self.source_keys = list(source_keys)
        self.options = options
        copies = options.mode.copies_objects
        self.cut_over = CutOver(self.bucket, kms, options.verify, options.dry_run) if copies else None
        self.stages: tuple[Stage[ObjectState], ...] = self.rewrap_stages()
        # Set by the runner when the worker re-lists its pages: an object from the listing (a
        # hint) is then confirmed unchanged from the re-listing instead of a HEAD of its own.
        self.defer_confirmation = False
        self._sampled = 0  # --verify sample: objects whose envelope KMS opened, the first always
        self._sample_lock = threading.Lock()
        self._random = random.Random()

    @property
    def rewriter(self):
        """The in-place copy the cut-over uses (``aws/copy.py``)."""
        return self.cut_over.rewriter if self.cut_over else None

    @rewriter.setter
    def rewriter(self, rewriter) -> None:
        if self.cut_over:
            self.cut_over.rewriter = rewriter

    def rewrap_stages(self) -> tuple[Stage[ObjectState], ...]:
        """The re-wrap of one object, in order. Each stage returns the state with what it found
        added, or ends the object (a ``Verdict``, or an ``ObjectError`` for a failure)."""
        verify = self.options.verify
        checks = (
            *((self.check_envelope_locally,) if verify is not VerifyLevel.NONE else ()),
            *((self.verify_envelope,) if verify in (VerifyLevel.ENVELOPE, VerifyLevel.BODY) else ()),
            *((self.sample_envelope,) if verify is VerifyLevel.SAMPLE else ()),
            *((self.verify_body,) if verify is VerifyLevel.BODY else ()),
        )
        if self.options.mode is Mode.METADATA:
            # The new envelope goes into the object's metadata (a conditional copy onto itself)
            # instead of a file; what the object is checked against is the copy's condition.
            done, write = (self.skip_if_in_metadata,), (self.write_metadata,)
        else:
            done = (self.skip_if_done,)
            write = (self.write_file,)  # then confirmed unchanged (``process``)
        return (
            self.read_head,
            self.locate_envelope,
            self.read_target,
            self.choose_source,
            self.check_body_length,
            *done,
            self.unwrap_data_key,
            self.prove_data_key,
            self.plan_dry_run,
            self.skip_if_already_wrapped,
            self.wrap_data_key,
            self.build_envelope,
            *checks,
            *write,
        )

    # -- entry point ------------------------------------------------------------------------

    def process(self, key: str, hint: ListingHint | None = None) -> ObjectResult:
        state, verdict = run_stages(self.stages, ObjectState.start(key, hint, key + self.options.suffix))
        verdict = verdict or MIGRATED
        result = state.result(verdict)
        if self.options.mode is Mode.CUTOVER and self.cut_over and self.cut_over.wants(state, verdict):
            self.cut_over.run(state, verdict).apply(result)
        if result.outcome in (Outcome.MIGRATED, Outcome.PLANNED) and state.envelope is not None:
            self._note_context(result, state.envelope)
        if self._to_confirm(state, result):
            pending = Unconfirmed(key, state.etag, partial(self._settle, state.written, state.etag))
            if self.defer_confirmation and hint is not None:
                result.unconfirmed = pending  # the worker's re-listing settles it
            else:
                pending.settle(result, None)
        return result

    def _to_confirm(self, state: ObjectState, result: ObjectResult) -> bool:
        """This call wrote a file for the object, and nothing proved the object unchanged since
        it was read: a cut-over's copy (conditional on that ETag) proves it; a lost copy
        condition already withdrew the file; after a copy of unknown outcome the file may hold
        the only backup of the envelope the copy removed, and stays. Not with --verify none."""
        return (
            state.written is not None
            and self.options.verify is not VerifyLevel.NONE
            and result.reason != CUT_OVER.reason
            and result.reason not in COPY_STAGE_ENDINGS
        )

    # -- stages -----------------------------------------------------------------------------

    def read_head(self, state: ObjectState) -> ObjectState:
        head = self.bucket.head(state.key)
        if head is None:
            raise Verdict.skipped("object-deleted", "the object was deleted after it was listed")
        return state.add(head=head, metadata=env_mod.lower_keys(head.get("Metadata", {})))

    ##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
    ##% This logic applies only to objects using ObjectMetadata to store cryptographic metadata.
    ##% If the object matches none of the V1/V2/V3 formats, the S3EC MUST attempt to get the instruction file.
    ##= docs/spec/s3-encryption/data-format/metadata-strategy.md#instruction-file
    ##% The default Instruction File behavior uses the same S3 object key as its associated object suffixed with ".instruction".
    def locate_envelope(self, state: ObjectState) -> ObjectState:
        """The envelope readers use today: object metadata first, else ``<key>.instruction``."""
        kind = env_mod.detect(state.metadata)
        if kind is MetadataKind.ENVELOPE:
            envelope = env_mod.from_metadata(state.metadata)
            fingerprint = files.source_fingerprint(envelope)
            return state.add(envelope=envelope, fingerprint=fingerprint, metadata_fingerprint=fingerprint)
        name = state.key + DEFAULT_INSTRUCTION_SUFFIX
        source_file = self._read_file(name, state.hint)
        if source_file is None:
            if kind is MetadataKind.NONE:
                raise Verdict.skipped("not-encrypted", "no S3EC envelope in metadata and no instruction file")
            raise Verdict.failed("missing-instruction-file", f"V3 metadata but {name!r} does not exist")
        envelope = env_mod.from_instruction_file(source_file.body, state.metadata)
        return state.add(envelope=envelope, source_file=source_file, fingerprint=files.source_fingerprint(envelope))

    def read_target(self, state: ObjectState) -> ObjectState:
        """The file at the target name (metadata mode: also ``<key>.instruction``), if any."""
        existing = state.source_file if state.replaces_source else self._read_file(state.target_name, state.hint)
        state = state.add(existing=existing)
        if self.options.mode is not Mode.METADATA:
            return state
        known = {f.key: f for f in (state.source_file, existing) if f is not None}
        nearby = []
        for name in dict.fromkeys((state.target_name, state.key + DEFAULT_INSTRUCTION_SUFFIX)):
            found = known[name] if name in known else self._read_file(name, state.hint)
            if found is not None:
                nearby.append(found)
        return state.add(nearby=tuple(nearby))

    def choose_source(self, state: ObjectState) -> ObjectState:
        """A rotation: the envelope an earlier migration of this object wrote (a KMS envelope in
        our file at the target suffix, or next to the metadata envelope in metadata mode) is
        re-wrapped, not the original that may still be in the metadata. Also numbers this
        migration's step, and (metadata mode) picks the files the new envelope makes obsolete."""
        previous = self._previous_migration(state)
        if previous is not None:
            envelope = env_mod.from_instruction_file(previous.body, state.metadata)
            state = state.add(envelope=envelope, source_file=previous)
        found = {f.key: f for f in (state.source_file, state.existing, *state.nearby) if f}.values()
        in_metadata = files.step_of(state.metadata) if files.ours_in_metadata(state.metadata, state.metadata_fingerprint) else 0
        # (a stale file of ours counts too: the backups of its chain stay where they are)
        step = 1 + max([in_metadata, *(files.step_of(f.metadata) for f in found)])
        retire = ()
        if self.options.mode is Mode.METADATA:
            retire = tuple(
                f for f in found
                if not files.stale(f, state.metadata_fingerprint) and (f is state.source_file or files.written_for(f, state.fingerprint))
            )
        return state.add(step=step, retire=retire)

    def check_body_length(self, state: ObjectState) -> ObjectState:
        envelope, length = state.envelope, state.head.get("ContentLength")
        if length is not None and (length < 16 or (envelope.cek_alg == env_mod.CBC and length % 16)):
            # GCM bodies end in a 16-byte tag; CBC bodies are whole 16-byte blocks (at least one).
            raise Verdict.failed("content-length-invalid", f"a {envelope.cek_alg} body cannot be {length} bytes long")
        return state

    def skip_if_done(self, state: ObjectState) -> ObjectState:
        """Our marker on the file at the target name says it already holds this data key."""
        existing = state.existing
        if existing is None or not self._marked_done(existing, state, state.replaces_source):
            return state
        options = self.options
        if options.run_id and existing.metadata.get(files.MARKER_RUN) == options.run_id and not options.dry_run:
            raise Verdict(Outcome.MIGRATED, "migrated", "written by this run before an interruption", resumed=True)
        raise Verdict.skipped("already-migrated", f"{state.target_name!r} already wraps the data key under the target key")

    def skip_if_in_metadata(self, state: ObjectState) -> ObjectState:
        """Metadata mode: our marks in the object's metadata say it holds our envelope under the
        target key (no KMS call, no write). An interrupted run's files are still removed."""
        metadata = state.metadata
        if not files.ours_in_metadata(metadata, state.metadata_fingerprint) or metadata[files.MARKER_TARGET] != self.kms.target_arn:
            return state
        step = files.step_of(metadata)
        leftover = [f for f in state.nearby if self._backed_up(f, step)]
        if leftover and not self.options.dry_run:
            for stale_file in leftover:
                try:
                    self.bucket.delete(stale_file.key, if_match=stale_file.etag)
                except PreconditionFailed:
                    pass
            raise Verdict(Outcome.MIGRATED, "migrated", "finished an interrupted migration: removed the old instruction file", resumed=True)
        run_id = self.options.run_id
        if run_id and metadata.get(files.MARKER_RUN) == run_id and not self.options.dry_run:
            raise Verdict(Outcome.MIGRATED, "migrated", "written by this run before an interruption", resumed=True)
        raise Verdict.skipped("already-migrated", "the object's metadata holds the envelope under the target key")

    def unwrap_data_key(self, state: ObjectState) -> ObjectState:
        """AES/RSA sources: the data key, from the source keys that prove it; several only when
        each is weakly proven (legacy RSA PKCS#1, pinned ECB): the body decides, next stage."""
        if state.envelope.wrap.is_kms:
            return state
        found = tuple(unwrap_candidates(state.envelope, self.source_keys))
        return state.add(candidates=found, unwrapped=found[0] if len(found) == 1 else None)

    def prove_data_key(self, state: ObjectState) -> ObjectState:
        """Proofs the unwrap itself could not give, at every --verify level: the V3 commitment;
        for a weak unwrap (or a CBC label the wrap did not bind) the body, the whole GCM body's
        tag or the last CBC block; among several candidates, the one the body accepts, whose
        whole proof must then reach 2^-64 (``check_proof_strength``)."""
        envelope, found = state.envelope, state.candidates
        if envelope.format == "v3" and state.unwrapped is not None:
            check_commitment(envelope, state.unwrapped.data_key)  # proves the data key without reading the body
        if not any(u.needs_content_check for u in found):
            return state
        if self.options.dry_run:  # a plan reads no bodies
            if len(found) > 1:
                raise UnwrapError("ambiguous-key", f"{len(found)} source keys give different data keys; a run decides by the body")
            return state
        proven, failure = [], None
        for candidate in found:
            try:
                proven.append(self._prove_against_body(state, candidate))
            except ObjectError as error:
                failure = error
        if not proven:
            raise failure
        if len(proven) > 1:
            raise UnwrapError("ambiguous-key", f"the data keys of {', '.join(u.key_label for u in proven)} all decrypt the body")
        check_proof_strength(proven[0])
        return state.add(unwrapped=proven[0])

    def plan_dry_run(self, state: ObjectState) -> ObjectState:
        if not self.options.dry_run:
            return state
        if state.data_key is None and not self.kms.source_key_ids and not self._ours_on_target(state):
            raise Verdict.failed("no-source-key", "the data key is wrapped by KMS but no source KMS key is configured")
        if self.options.mode is Mode.METADATA:
            refused = self.cut_over.refusal(state.key, state.head, self._estimated_metadata(state))
            if refused:
                raise Verdict.failed(refused.reason, str(refused))
            raise Verdict.planned("would-migrate-in-metadata", "would replace the metadata envelope")
        if self.cut_over:
            refused = self.cut_over.refusal(state.key, state.head)
            if refused:
                raise Verdict.failed(refused.reason, str(refused))
            raise Verdict.planned("would-migrate-and-cut-over", "would write .instruction, then strip the metadata envelope")
        raise Verdict.planned("would-migrate", f"would write {state.target_name!r}")

    def skip_if_already_wrapped(self, state: ObjectState) -> ObjectState:
        """Envelopes someone else already wrapped under the target key are not wrong."""
        if state.data_key is None:
            if self._ours_on_target(state):
                return state  # metadata mode: our own envelope moves into the metadata
            if not self.kms.source_key_ids and self._on_target_key(state.envelope):
                raise _already_on_target()
            return state
        in_file = self.options.mode is not Mode.METADATA and state.existing is not None and not state.replaces_source
        if in_file and self._holds_data_key(state, state.data_key):
            raise Verdict.skipped("already-migrated", f"{state.target_name!r} already wraps the data key under the target key")
        return state

    def wrap_data_key(self, state: ObjectState) -> ObjectState:
        """The data key under the target key: Encrypt, or KMS-to-KMS ReEncrypt (the plaintext
        data key never leaves KMS)."""
        if state.data_key is not None:
            return state.add(wrapped=self.kms.encrypt(state.data_key, state.envelope))
        if self._ours_on_target(state):
            # Metadata mode moving our own envelope under the target key into the metadata.
            envelope = state.envelope
            return state.add(wrapped=Wrapped(envelope.encrypted_key, dict(envelope.context), self.kms.target_arn))
        try:
            return state.add(wrapped=self.kms.reencrypt(state.envelope))
        except KmsError as error:
            # Objects written with the target key already (new writers) are not wrong.
            if error.reason == "wrong-key" and self._on_target_key(state.envelope):
                raise _already_on_target() from None
            raise

    def build_envelope(self, state: ObjectState) -> ObjectState:
        """The new envelope as the instruction file (metadata mode: the object's metadata) will
        hold it, parsed back (pure, cheap)."""
        envelope, wrapped = state.envelope, state.wrapped
        fields = env_mod.target_fields(envelope, wrapped.encrypted_key, self.kms.target_wrap(envelope), wrapped.context)
        if self.options.mode is Mode.METADATA:
            kept = cutover.stripped_metadata(state.metadata)
            with_envelope = env_mod.metadata_with_envelope(kept, fields)
            new_envelope = _parse_back(env_mod.from_metadata(with_envelope), envelope, wrapped)
            marks = files.object_metadata_marks(self.kms.target_arn, new_envelope, state.step, self.options.run_id)
            new_metadata = {**with_envelope, **marks}
            removed = cutover.leaving(state.metadata, new_metadata)
            return state.add(fields=fields, new_envelope=new_envelope, new_metadata=new_metadata, removed=removed)
        body = env_mod.instruction_body(fields)
        v3_metadata = {k: state.metadata[k] for k in env_mod.V3_OBJECT_ONLY_KEYS if k in state.metadata}
        new_envelope = _parse_back(env_mod.from_instruction_file(body, v3_metadata), envelope, wrapped)
        return state.add(fields=fields, body=body, new_envelope=new_envelope)

    def check_envelope_locally(self, state: ObjectState) -> ObjectState:
        """Every verify level but none, without a request: the new envelope (already parsed back
        from the bytes to be written, ``build_envelope``) is wrapped by the target key's ARN as
        KMS named it, with the target wrap and exactly the context the target asks for."""
        written, wrapped = state.new_envelope, state.wrapped
        problem = None
        if self.kms.pinned and wrapped.key_arn != self.kms.target_arn:
            problem = f"KMS wrapped it under {wrapped.key_arn}, not the target key"
        elif written.wrap is not self.kms.target_wrap(state.envelope):
            problem = f"it names the wrap {written.wrap}, not {self.kms.target_wrap(state.envelope)}"
        elif not self._ours_on_target(state) and written.context != self.kms.target_context(state.envelope):
            problem = "its encryption context is not the one the target asks for"
        if problem:
            raise KmsError("verify-failed", f"the new envelope is not the one intended: {problem}")
        return state

    def sample_envelope(self, state: ObjectState) -> ObjectState:
        """--verify sample: KMS opens the new envelope for the first object and, at random, a
        share ``sample_rate`` of the others (``verify_envelope``); the rest rely on the local
        check and on the unwrap's own proof of the data key."""
        with self._sample_lock:
            chosen = self._sampled == 0 or self._random.random() < self.options.sample_rate
            self._sampled += chosen
        return self.verify_envelope(state) if chosen else state

    def verify_envelope(self, state: ObjectState) -> ObjectState:
        """KMS opens the envelope exactly as it will be read back from the file."""
        written = state.new_envelope
        if state.data_key is None:
            self.kms.check_decryptable(written.encrypted_key, written.context)
            return state
        again = self.kms.decrypt(written.encrypted_key, written.context, self.kms.target_key_id)
        if not again.equals(state.data_key):
            raise KmsError("verify-failed", "the new envelope does not decrypt to the original data key")
        return state

    def verify_body(self, state: ObjectState) -> ObjectState:
        """--verify body: the whole body decrypts with the data key the new envelope holds."""
        if state.unwrapped is not None and state.unwrapped.body_proof == "gcm-tag":
            return state  # the proof already streamed and authenticated the whole body
        data_key = state.data_key
        if data_key is None:
            data_key = self.kms.decrypt(state.new_envelope.encrypted_key, state.new_envelope.context, self.kms.target_key_id)
        try:
            verify_body(state.envelope, data_key, self.bucket.stream(state.key, if_match=state.etag))
        except PreconditionFailed:
            raise Verdict.failed("object-changed", "the object changed while it was verified", retryable=True) from None
        return state

    def write_file(self, state: ObjectState) -> ObjectState:
        """A conditional PUT of ``<key><suffix>``, after a byte-exact backup of a file it replaces."""
        marker = files.instruction_file_metadata(self.kms.target_arn, state.fingerprint, self.options.run_id, state.step)
        if self.options.mode is Mode.CUTOVER:
            marker = cutover.with_file_backup(marker, state.head, state.step)  # for the cut-over that follows
        existing, name = state.existing, state.target_name
        try:
            if existing is not None:
                files.back_up_instruction_file(self.bucket, existing, state.metadata_fingerprint, state.step)
                etag = self.bucket.put(name, state.body, marker, if_match=existing.etag)
            else:
                etag = self.bucket.put(name, state.body, marker, if_none_match=True)
        except PreconditionFailed:
            etag = self._after_lost_condition(state)
        return state.add(written=Written(name, etag, existing, StoredFile(name, state.body, etag, marker)))

    def write_metadata(self, state: ObjectState) -> ObjectState:
        """Metadata mode: backups, then one conditional copy of the object onto itself with the
        new envelope in its metadata, read back; then the older instruction files go."""
        return self.cut_over.write_envelope(state)

    def _settle(self, written: Written | None, etag: str, result: ObjectResult, changed: bool | None) -> None:
        """``Unconfirmed.settle``: after the write, the object must still be the one read
        (``changed`` None: ask S3, a HEAD IfMatch). Otherwise our file would describe a data key
        that no longer exists: put back what was there before, fail the object (retryable)."""
        try:
            if changed is None:
                changed = not self._unchanged(result.key, etag)
            if changed:
                files.withdraw(self.bucket, written)
                result.context_changed, result.reader_context = False, None
                Verdict.failed(
                    "object-changed", "the object changed during the migration; the new file was withdrawn", retryable=True
                ).apply(result)
        except ObjectError as error:
            result.fail(error)

    def _unchanged(self, key: str, etag: str) -> bool:
        try:
            return self.bucket.head(key, if_match=etag) is not None
        except PreconditionFailed:
            return False

    # -- helpers ----------------------------------------------------------------------------

    def _read_file(self, name: str, hint: ListingHint | None) -> StoredFile | None:
        if hint is not None and hint.complete and name not in hint.files:
            return None
        return self.bucket.get_small(name)

    def _previous_migration(self, state: ObjectState) -> StoredFile | None:
        """Our file written for this object's current envelope by an earlier migration, holding
        a KMS envelope to re-wrap from (not the file the current envelope already comes from)."""
        candidates = state.nearby if self.options.mode is Mode.METADATA else (state.existing,)
        for candidate in candidates:
            if candidate is None or candidate is state.source_file or not files.written_for(candidate, state.fingerprint):
                continue
            on_target = candidate.metadata.get(files.MARKER_TARGET) == self.kms.target_arn
            if on_target and self.options.mode is not Mode.METADATA:
                return None  # done already (skip_if_done)
            if not on_target and not self.kms.source_key_ids and self.source_keys:
                continue  # no old KMS key given: re-wrap the original with the keys given
            try:
                envelope = env_mod.from_instruction_file(candidate.body, state.metadata)
            except EnvelopeError:
                continue
            if envelope.wrap.is_kms:
                return candidate
        return None

    def _ours_on_target(self, state: ObjectState) -> bool:
        """The envelope to re-wrap is our own, already under the target key with the target wrap."""
        source = state.source_file
        return (
            source is not None
            and source.metadata.get(files.MARKER_TARGET) == self.kms.target_arn
            and state.envelope.wrap is self.kms.target_wrap(state.envelope)
        )

    def _backed_up(self, stored: StoredFile, step: int) -> bool:
        """This step's backup of ``stored`` holds exactly its bytes: the file was meant to go."""
        backup = self.bucket.get_small(backup_name(stored.key, step))
        return backup is not None and backup.body == stored.body

    def _estimated_metadata(self, state: ObjectState) -> dict[str, str]:
        """For a plan (no KMS call): the metadata the copy would write, with a KMS ciphertext of
        the usual size (184 bytes for a 32-byte data key)."""
        envelope = state.envelope
        size = max(184, len(envelope.encrypted_key) if envelope.wrap.is_kms else 0)
        fields = env_mod.target_fields(envelope, bytes(size), self.kms.target_wrap(envelope), self.kms.target_context(envelope))
        marks = files.object_metadata_marks(self.kms.target_arn or "", envelope, state.step, self.options.run_id)
        return {**env_mod.metadata_with_envelope(cutover.stripped_metadata(state.metadata), fields), **marks}

    def _marked_done(self, existing: StoredFile, state: ObjectState, replaces_source: bool) -> bool:
        return files.marked_done(existing, self.kms.target_arn, state.envelope, state.fingerprint, replaces_source)

    def _after_lost_condition(self, state: ObjectState) -> str:
        """The conditional PUT lost: our own earlier write (its response was lost), another
        keymigration worker's, or someone else's. Returns our file's ETag or ends the object."""
        etag, theirs = files.our_earlier_write(self.bucket, state.target_name, state.body)
        if etag is not None:
            return etag
        if theirs is not None and self._marked_done(theirs, state, False):
            # Another worker on the same prefix (a duplicate Job) got there first.
            raise Verdict.skipped("already-migrated", f"{state.target_name!r} was written by another keymigration worker")
        raise Verdict.failed(
            "instruction-file-conflict",
            f"{state.target_name!r} was created or changed by someone else during the migration; nothing was written",
        )

    def _holds_data_key(self, state: ObjectState, data_key: DataKey) -> bool:
        """A file someone else wrote that already wraps this data key under the target key."""
        try:
            other = env_mod.from_instruction_file(state.existing.body, state.metadata)
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

    def _note_context(self, result: ObjectResult, envelope: Envelope) -> None:
        """Record an object whose readers must now pass another encryption context."""
        after = env_mod.reader_context(self.kms.target_wrap(envelope), self.kms.target_context(envelope))
        if after != env_mod.reader_context(envelope.wrap, envelope.context):
            result.context_changed, result.reader_context = True, after

    def _prove_against_body(self, state: ObjectState, candidate: Unwrapped) -> Unwrapped:
        """Check a data key against the body before anything is written. GCM: stream the whole
        body (1 MiB chunks, constant memory) and verify its tag, which a wrong key passes with
        probability 2^-128 (Java v1 AuthenticatedEncryption wrote RSA PKCS#1 v1.5 keys over GCM
        bodies when no provider named BC was present). CBC: one ranged GET of the last 32 bytes,
        whose final block must unpad (``check_cbc_tail``)."""
        if not candidate.needs_content_check:
            return candidate
        envelope = state.envelope
        try:
            if envelope.cek_alg == env_mod.GCM:
                verify_body(envelope, candidate.data_key, self.bucket.stream(state.key, if_match=state.etag))
                return candidate.proven("gcm-tag", GCM_TAG_BITS)
            length = state.head["ContentLength"]
            tail = self.bucket.tail(state.key, 32, length, state.etag)
            return candidate.proven("cbc-tail", check_cbc_tail(envelope, candidate.data_key, tail, length))
        except PreconditionFailed:
            raise Verdict.failed("object-changed", "the object changed while it was checked", retryable=True) from None
        except ContentError:
            if candidate.proof == "authenticated":  # the key is right; the CBC label is not
                raise EnvelopeError(
                    "cek-alg-mismatch",
                    "the wrap authenticates AES/GCM/NoPadding, not the envelope's x-amz-cek-alg, and the body is not "
                    "AES/CBC under this data key: the object may be altered or corrupted",
                ) from None
            raise UnwrapError("wrong-key", f"the data key from {candidate.key_label} does not decrypt the body") from None


def _already_on_target() -> Verdict:
    return Verdict.skipped("already-on-target-key", "the envelope is already wrapped by the target KMS key")


def _parse_back(parsed: Envelope, envelope: Envelope, wrapped: Wrapped) -> Envelope:
    """What we are about to write parses back to the new envelope."""
    same = (
        parsed.encrypted_key == wrapped.encrypted_key
        and parsed.iv == envelope.iv
        and parsed.cek_alg == envelope.cek_alg
        and parsed.context == wrapped.context
        and parsed.message_id == envelope.message_id
    )
    if not same:
        raise EnvelopeError("internal-error", "the serialized envelope does not parse back to the new envelope")
    return parsed
