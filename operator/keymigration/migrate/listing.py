"""Streaming a prefix's listing, with instruction files folded into hints for their objects.

S3 lists keys in UTF-8 byte order, which is Python's code-point order for ``str``, so
``<key><suffix>`` always comes after ``<key>``. A bounded look-ahead window holds each object
until the listing has passed every name its instruction files could have; the object then
leaves with a complete hint (which files exist, with their ETags), saving a GET per object.
When the window is full, the oldest object leaves with an incomplete hint (the worker then asks
S3). Memory stays bounded by the window whatever the prefix holds.

A key range (``start_after < key <= end_key``, a shard) owns *objects*, never instruction
files: an object's ``<key>.instruction`` may lie just past ``end_key``, so the listing goes on
past the end (at most one window of keys) to complete the hints of the range's last objects,
without taking any object from there. Whether a key is an object or a file is decided by its
name alone, so every shard decides it the same way.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

from keymigration.formats.vocabulary import BACKUP_SUFFIX
from keymigration.migrate.results import ListingHint


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class ListedObject:
    key: str
    hint: ListingHint


def list_keys(s3, bucket: str, prefix: str, start_after: str | None = None, page_size: int = 1000) -> Iterator[Listed]:
    kwargs = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
        for item in page.get("Contents", ()):
            yield Listed(item["Key"], item.get("ETag", ""), item.get("Size", 0))


def matching_suffix(key: str, suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        if key.endswith(suffix) and len(key) > len(suffix):
            return suffix
    return None


class _Window:
    """Objects waiting for the listing to pass every name their files could have."""

    def __init__(self, file_suffixes: Sequence[str], size: int):
        self.file_suffixes = file_suffixes
        self.size = size
        self.pending: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.last_name: dict[str, str] = {}  # the largest name one of the object's files can have

    def add(self, key: str) -> None:
        self.pending[key] = {}
        self.last_name[key] = max(key + s for s in self.file_suffixes)

    def attach(self, base: str, key: str, etag: str) -> None:
        if base in self.pending:
            self.pending[base][key] = etag

    def release(self, current: str | None) -> Iterator[ListedObject]:
        """Objects whose names the listing has passed (all when ``current`` is None: the
        listing ended), and the oldest beyond the window's size with incomplete hints."""
        while self.pending:
            key = next(iter(self.pending))
            passed = current is None or current > self.last_name[key]
            if not passed and len(self.pending) <= self.size:
                return
            files = self.pending.pop(key)
            del self.last_name[key]
            yield ListedObject(key, ListingHint(files, complete=passed))

    def drain(self) -> Iterator[ListedObject]:
        """The listing stopped early: what is left has incomplete hints."""
        while self.pending:
            key, files = self.pending.popitem(last=False)
            yield ListedObject(key, ListingHint(files, complete=False))


def chained_suffix(key: str, suffixes: Sequence[str]) -> str | None:
    """``<name>.keymigration-backup.<n>``: a later migration step's backup (``backup_name``);
    returns the backup suffix among ``suffixes`` it ends in, before the ``.<n>``."""
    head, dot, tail = key.rpartition(".")
    if dot and tail.isdigit():
        suffix = matching_suffix(head, suffixes)
        if suffix is not None and suffix.endswith(BACKUP_SUFFIX):
            return suffix
    return None


def not_an_object(key: str, suffixes: Sequence[str]) -> str | None:
    """The suffix that makes ``key`` an instruction file or a backup, not an object, or None."""
    return matching_suffix(key, suffixes) or (chained_suffix(key, suffixes) if key[-1:].isdigit() else None)


def with_hints(
    listing: Iterable[Listed],
    file_suffixes: Sequence[str],
    skip_suffixes: Sequence[str] = (),
    window: int = 2000,
    skipped: Counter | None = None,
    end_key: str | None = None,
) -> Iterator[ListedObject]:
    """Objects in listing order, each with the instruction files the listing saw for it.

    ``file_suffixes``: instruction-file names to report (``.instruction`` and the target
    suffix); ``skip_suffixes``: further names that are not objects (backups; with a ``.<n>``
    after them too, the backups of later migration steps). Keys passed over are counted in
    ``skipped`` by suffix. With ``end_key``, objects after it are not yielded; the listing is
    read past it only while an object of the range may still get a file, and for at most
    ``window`` keys (then the remaining objects leave with incomplete hints).
    """
    file_suffixes = sorted(set(file_suffixes), key=len, reverse=True)
    not_objects = sorted(set(file_suffixes) | set(skip_suffixes), key=len, reverse=True)
    objects = _Window(file_suffixes, window)
    overrun = 0  # keys read past end_key
    for item in listing:
        yield from objects.release(item.key)
        beyond = end_key is not None and item.key > end_key
        if beyond:
            overrun += 1
            if not objects.pending or overrun > window:
                yield from objects.drain()
                return
        chained = chained_suffix(item.key, skip_suffixes)
        if chained is not None:
            if skipped is not None and not beyond:
                skipped[chained] += 1
            continue
        suffix = matching_suffix(item.key, not_objects)
        if suffix is not None:
            objects.attach(item.key[: -len(suffix)], item.key, item.etag)
            if skipped is not None and not beyond:
                skipped[suffix] += 1
        elif not beyond:  # an object past the end is the next range's
            objects.add(item.key)
    yield from objects.release(None)  # the listing is exhausted: every hint is complete


MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length


def start_after_for(key: str) -> str | None:
    """A ``StartAfter`` that lists ``key`` first (S3's StartAfter is exclusive): the string just
    below it in UTF-8 byte order, ``key`` with its last character one lower, then U+10FFFF (the
    largest character). Only keys that continue with U+10FFFF there can sort between the two;
    a listing shows them too and the caller passes them over."""
    if not key:
        return None
    last = ord(key[-1])
    if last == 0:
        return key[:-1] or None
    below = last - 1 if not 0xD800 <= last - 1 <= 0xDFFF else 0xD7FF  # no surrogates in UTF-8
    start = key[:-1] + chr(below)
    padded = start + "\U0010ffff"
    return padded if len(padded.encode()) <= MAX_KEY_BYTES else start


def changed_keys(s3, bucket: str, prefix: str, expected: Mapping[str, str]) -> set[str]:
    """The keys of ``expected`` (key -> ETag read) that a listing now shows with another ETag, or
    not at all (deleted, or a delete marker on top). One ListObjectsV2 from just below the
    smallest key to past the largest: a request per 1,000 keys listed.

    The first page is sized to the batch (``relisting_page_size``): S3 would otherwise send a
    full page of 1,000 keys for a batch of 50, most of them past its largest key, and the
    client parses every one (the worker's re-listings parsed about 15 entries per object
    confirmed, more than all its other listing work together). Pages after it take 1,000: a
    batch spread over many keys (most objects of the range skipped) costs one request more at
    most."""
    if not expected:
        return set()
    wanted = {key: etag.strip('"') for key, etag in expected.items()}
    last = max(wanted)
    seen: dict[str, str] = {}
    kwargs = {"Bucket": bucket, "Prefix": prefix, "StartAfter": start_after_for(min(wanted)),
              "MaxKeys": relisting_page_size(len(wanted))}
    while True:
        page = s3.list_objects_v2(**kwargs)
        for item in page.get("Contents", ()):
            if item["Key"] > last:
                break
            if item["Key"] in wanted:
                seen[item["Key"]] = item.get("ETag", "").strip('"')
        else:
            if page.get("IsTruncated") and page.get("NextContinuationToken"):
                kwargs.update(ContinuationToken=page["NextContinuationToken"], MaxKeys=1000)
                continue
        break
    return {key for key, etag in wanted.items() if seen.get(key) != etag}


def relisting_page_size(batch: int) -> int:
    """Keys per page for re-listing ``batch`` objects: each object and its instruction file,
    and room for the keys of other objects in between (still in flight, or not migrated), so
    that one request usually covers the batch; at most S3's 1,000."""
    return min(1000, 3 * batch + 100)
