"""What processing one object produced, and what the listing already knows about it. Shared by
every per-object step (re-wrap, cut-over, verify, rollback, prune), the worker and the report."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Callable, Mapping

from keymigration.errors import ObjectError


class Outcome(str, Enum):
    MIGRATED = "migrated"
    SKIPPED = "skipped"
    FAILED = "failed"
    PLANNED = "planned"  # dry run: would be migrated
    VERIFIED = "verified"  # verify: readable with only the KMS key
    ROLLED_BACK = "rolled-back"  # rollback: the old envelope is back where old readers look
    PRUNED = "pruned"  # prune-backups: the backups are deleted

    def __str__(self) -> str:
        return self.value


@dataclass
class ObjectResult:
    key: str
    outcome: Outcome
    reason: str
    message: str = ""
    format: str | None = None
    wrap: str | None = None
    location: str | None = None
    cek_alg: str | None = None
    source_key: str | None = None
    retryable: bool = False
    resumed: bool = False  # written by this run before an interruption, counted now
    # The context a reader must pass changed (the new envelope's caller pairs, or none): readers
    # that pass a context (Java S3EC, Python, Ruby V2, ...) must pass ``reader_context`` now.
    context_changed: bool = False
    reader_context: dict[str, str] | None = None
    # A write whose object is still to be confirmed unchanged (from a re-listing, by the
    # worker); never reported.
    unconfirmed: "Unconfirmed | None" = field(default=None, repr=False, compare=False)

    def fail(self, error: ObjectError) -> "ObjectResult":
        """This object failed with ``error``: its reason, message and whether to retry it."""
        self.outcome, self.reason, self.message, self.retryable = Outcome.FAILED, error.reason, str(error), error.retryable
        return self

    def record(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "unconfirmed"}
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items() if v not in (None, "", False)}
        data["outcome"] = str(self.outcome)
        return data


@dataclass(frozen=True)
class Unconfirmed:
    """An object this call wrote for, read with ``etag``: the write stands only if the object
    is still that one afterwards. Whoever finds out (a re-listing of the page, or a HEAD) calls
    ``settle(result, changed)``: ``changed`` True withdraws the write and fails the object
    (``object-changed``, retryable), False keeps it, None (not known: the re-listing failed)
    asks S3 for this object alone."""

    key: str
    etag: str
    settle: Callable[["ObjectResult", "bool | None"], None] = field(repr=False)


@dataclass(frozen=True)
class ListingHint:
    """Instruction files the listing saw for this object: key -> ETag. When ``complete``, a name
    missing from ``files`` is known to be absent (saves a GET per object)."""

    files: Mapping[str, str]
    complete: bool


__all__ = ["ListingHint", "ObjectResult", "Outcome", "Unconfirmed"]
