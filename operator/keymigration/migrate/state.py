"""The per-object state the migration's stages pass along, and how a stage ends an object.

Like the S3 Encryption Client's materials objects handed from one keyring stage to the next,
an ``ObjectState`` is a frozen value: each stage reads what the stages before it found and
returns a new state with its own findings added (``ObjectState.add``). A stage that decides
the object's outcome early raises a ``Verdict`` instead; an ``ObjectError`` ends it as failed.
``run_stages`` runs a sequence of stages and returns the last state with the verdict, if any.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Sequence, TypeVar

from keymigration.aws.kms import Wrapped
from keymigration.aws.s3 import StoredFile
from keymigration.errors import ObjectError
from keymigration.formats.envelope import Envelope
from keymigration.formats.secrets import DataKey
from keymigration.formats.unwrap import Unwrapped
from keymigration.migrate.files import Written
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome


class Verdict(Exception):
    """Ends one object's stages with an outcome (raised by a stage, caught by ``run_stages``)."""

    def __init__(self, outcome: Outcome, reason: str, message: str = "", retryable: bool = False, resumed: bool = False):
        super().__init__(reason)
        self.outcome, self.reason, self.message = outcome, reason, message
        self.retryable, self.resumed = retryable, resumed

    @classmethod
    def failed(cls, reason: str, message: str, retryable: bool = False) -> "Verdict":
        return cls(Outcome.FAILED, reason, message, retryable)

    @classmethod
    def skipped(cls, reason: str, message: str) -> "Verdict":
        return cls(Outcome.SKIPPED, reason, message)

    @classmethod
    def planned(cls, reason: str, message: str) -> "Verdict":
        return cls(Outcome.PLANNED, reason, message)

    @classmethod
    def of_error(cls, error: ObjectError) -> "Verdict":
        return cls.failed(error.reason, str(error), error.retryable)

    def apply(self, result: ObjectResult) -> ObjectResult:
        """Give ``result`` this outcome; what earlier stages recorded (format, source key,
        resumed) stays."""
        result.outcome, result.reason, result.message, result.retryable = self.outcome, self.reason, self.message, self.retryable
        result.resumed = result.resumed or self.resumed
        return result


MIGRATED = Verdict(Outcome.MIGRATED, "migrated")


@dataclass(frozen=True)
class ObjectState:
    """What the re-wrap stages know about one object, in the order they learn it."""

    key: str
    hint: ListingHint | None
    target_name: str  # <key><suffix>: where the new envelope goes
    # read_head
    head: dict | None = field(default=None, repr=False)  # the HEAD response: ETag, length, ...
    metadata: dict[str, str] = field(default_factory=dict, repr=False)  # its user metadata, keys lower-cased
    # locate_envelope
    envelope: Envelope | None = None  # the envelope to re-wrap: the one readers use today, or
    # (choose_source) the envelope an earlier migration of this object wrote
    source_file: StoredFile | None = None  # the instruction file it came from, if any
    fingerprint: str = ""  # of the envelope readers use today: marks the new file as written for it
    metadata_fingerprint: str | None = None  # the same, when that envelope is in the object's metadata
    # read_target
    existing: StoredFile | None = None  # the file at target_name before we write it, if any
    nearby: tuple[StoredFile, ...] = ()  # metadata mode: <key>.instruction and <key><suffix>, if any
    # choose_source
    step: int = 1  # this migration's step in the object's chain of migrations (names its backups)
    retire: tuple[StoredFile, ...] = ()  # metadata mode: the files with older envelopes, removed
    # unwrap_data_key (AES/RSA sources; a KMS source never shows its data key): the data key,
    # the label of the master key that unwrapped it, and how the unwrap proved it right;
    # ``candidates`` holds every data key a source key yielded (several only when each is weakly
    # proven, until prove_data_key picks the one the body accepts)
    unwrapped: Unwrapped | None = None
    candidates: tuple[Unwrapped, ...] = ()
    # wrap_data_key
    wrapped: Wrapped | None = field(default=None, repr=False)  # the data key under the target key
    # build_envelope
    fields: dict[str, str] = field(default_factory=dict, repr=False)  # the new envelope's S3EC keys
    body: bytes = field(default=b"", repr=False)  # the new instruction file
    new_envelope: Envelope | None = None  # body parsed back, as a reader will see it
    new_metadata: dict[str, str] = field(default_factory=dict, repr=False)  # metadata mode: the object's
    removed: dict[str, str] = field(default_factory=dict, repr=False)  # metadata mode: what leaves it
    # write_file
    written: Written | None = None

    @classmethod
    def start(cls, key: str, hint: ListingHint | None, target_name: str) -> "ObjectState":
        return cls(key, hint, target_name)

    def add(self, **found) -> "ObjectState":
        """This state with a stage's findings added. (``dataclasses.replace`` re-runs
        ``__init__`` over all 25 fields: 13 us, a stage or more per object; this copies the
        instance's dict, about 1 us, and still refuses a name that is not a field.)"""
        unknown = found.keys() - _OBJECT_STATE_FIELDS
        if unknown:
            raise TypeError(f"ObjectState has no field {sorted(unknown)[0]!r}")
        new = object.__new__(ObjectState)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(found)
        return new

    @property
    def data_key(self) -> DataKey | None:
        return self.unwrapped.data_key if self.unwrapped else None

    @property
    def source_key(self) -> str | None:
        return self.unwrapped.key_label if self.unwrapped else None

    @property
    def etag(self) -> str:
        assert self.head is not None
        return self.head["ETag"]

    @property
    def replaces_source(self) -> bool:
        """The new file goes where the old envelope's instruction file is."""
        return self.source_file is not None and self.source_file.key == self.target_name

    def result(self, verdict: Verdict) -> ObjectResult:
        result = ObjectResult(self.key, Outcome.FAILED, "internal-error", source_key=self.source_key)
        if self.envelope is not None:
            envelope = self.envelope
            result.format, result.wrap, result.location, result.cek_alg = (
                envelope.format, str(envelope.wrap), str(envelope.location), envelope.cek_alg
            )
        return verdict.apply(result)


_OBJECT_STATE_FIELDS = frozenset(f.name for f in fields(ObjectState))

S = TypeVar("S")
Stage = Callable[[S], S]


def run_stages(
    stages: Sequence[Callable[[S], S]], state: S, errors: Callable[[ObjectError], Verdict] = Verdict.of_error
) -> tuple[S, Verdict | None]:
    """Pass ``state`` through ``stages`` in order. Returns the last state a stage returned and the
    verdict that ended the object early (``errors`` turns an ObjectError into one), or None when
    every stage ran."""
    for stage in stages:
        try:
            state = stage(state)
        except Verdict as verdict:
            return state, verdict
        except ObjectError as error:
            return state, errors(error)
    return state, None


__all__ = ["MIGRATED", "ObjectState", "Stage", "Verdict", "run_stages"]
