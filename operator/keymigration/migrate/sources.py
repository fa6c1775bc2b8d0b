"""Where a worker's objects come from, and how its checkpoint records how far it got.

Two sources: a prefix listing, optionally one key range of it (a shard: ``start_after < key <=
end_key`` in S3's UTF-8 byte order, which is Python's code-point order for ``str``), and an S3
Inventory (``inventory.py``). Each yields work items in a fixed order with a *position*; the
worker hands back the position of the last item of its contiguous finished run, and the source
writes it into the checkpoint, from where a resumed run starts after it.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence

from keymigration.migrate.checkpoint import Checkpoint
from keymigration.migrate.listing import changed_keys, list_keys, with_hints
from keymigration.migrate.results import ListingHint


class WorkItem(NamedTuple):  # a tuple: an inventory makes 100,000s a second
    key: str
    hint: ListingHint | None  # None: nothing known, the worker asks S3
    position: Any  # what the checkpoint records once this item and all before it are done


@dataclass(frozen=True)
class KeyRange:
    """Keys ``start_after < key <= end_key``; None is open on that side."""

    start_after: str | None = None
    end_key: str | None = None

    def __post_init__(self):
        if self.start_after is not None and self.end_key is not None and self.start_after >= self.end_key:
            raise ValueError(f"empty key range: start_after {self.start_after!r} is not before end_key {self.end_key!r}")

    def __contains__(self, key: str) -> bool:
        return (self.start_after is None or key > self.start_after) and (self.end_key is None or key <= self.end_key)

    @property
    def bounded(self) -> bool:
        return self.start_after is not None or self.end_key is not None

    def as_dict(self) -> dict:
        return {"start_after": self.start_after, "end_key": self.end_key}


class ObjectSource(Protocol):
    def items(self, checkpoint: Checkpoint, aux: Counter) -> Iterator[WorkItem]:
        """Work items after the checkpoint's mark, in order. Keys that are not objects
        (instruction files, backups, filtered rows) are counted in ``aux``."""
        ...

    def mark(self, checkpoint: Checkpoint, position: Any) -> None:
        """Record that everything up to and including ``position`` is finished."""
        ...

    def count(self, stop: threading.Event) -> int | None:
        """How many objects ``items`` yields from the start (for the ETA); None if unknown."""
        ...


@dataclass
class ListingSource:
    """A prefix's ``ListObjectsV2`` listing, or one key range of it."""

    s3: Any
    bucket: str
    prefix: str
    file_suffixes: Sequence[str]
    skip_suffixes: Sequence[str] = ()
    window: int = 2000
    key_range: KeyRange = field(default_factory=KeyRange)

    def _listed(self, after: str | None, aux: Counter | None) -> Iterator[WorkItem]:
        start = max((k for k in (after, self.key_range.start_after) if k is not None), default=None)
        listing = list_keys(self.s3, self.bucket, self.prefix, start_after=start)
        for obj in with_hints(listing, self.file_suffixes, self.skip_suffixes, self.window, aux, self.key_range.end_key):
            yield WorkItem(obj.key, obj.hint, obj.key)

    def items(self, checkpoint: Checkpoint, aux: Counter) -> Iterator[WorkItem]:
        return self._listed(checkpoint.after, aux)

    def mark(self, checkpoint: Checkpoint, position: Any) -> None:
        checkpoint.after = position

    def changed(self, expected: Mapping[str, str]) -> set[str]:
        """Of these objects (key -> ETag read), the ones replaced or deleted since: one
        re-listing of their keys (``listing.changed_keys``)."""
        return changed_keys(self.s3, self.bucket, self.prefix, expected)

    def count(self, stop: threading.Event) -> int | None:
        n = 0
        for _ in self._listed(None, Counter()):
            n += 1
            if stop.is_set():
                return None
        return n
