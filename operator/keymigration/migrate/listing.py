"""Streaming a prefix's listing, with instruction files folded into hints for their objects.

S3 lists keys in UTF-8 byte order, which is Python's code-point order for ``str``, so
``<key><suffix>`` always comes after ``<key>``. A bounded look-ahead window holds each object
until the listing has passed every name its instruction files could have; the object then
leaves with a complete hint (which files exist, with their ETags), saving a GET per object.
When the window is full, the oldest object leaves with an incomplete hint (the worker then asks
S3). Memory stays bounded by the window whatever the prefix holds.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

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


def with_hints(
    listing: Iterable[Listed],
    file_suffixes: Sequence[str],
    skip_suffixes: Sequence[str] = (),
    window: int = 2000,
    skipped: Counter | None = None,
) -> Iterator[ListedObject]:
    """Objects in listing order, each with the instruction files the listing saw for it.

    ``file_suffixes``: instruction-file names to report (``.instruction`` and the target
    suffix); ``skip_suffixes``: further names that are not objects (backups). Keys passed over
    are counted in ``skipped`` by suffix.
    """
    file_suffixes = sorted(set(file_suffixes), key=len, reverse=True)
    not_objects = sorted(set(file_suffixes) | set(skip_suffixes), key=len, reverse=True)
    pending: OrderedDict[str, dict[str, str]] = OrderedDict()
    last_name: dict[str, str] = {}  # the largest name one of the object's files can have

    def release(current: str | None) -> Iterator[ListedObject]:
        while pending:
            key = next(iter(pending))
            passed = current is None or current > last_name[key]
            if not passed and len(pending) <= window:
                return
            files = pending.pop(key)
            del last_name[key]
            yield ListedObject(key, ListingHint(files, complete=passed))

    for item in listing:
        yield from release(item.key)
        suffix = matching_suffix(item.key, not_objects)
        if suffix is not None:
            base = item.key[: -len(suffix)]
            if base in pending:
                pending[base][item.key] = item.etag
            if skipped is not None:
                skipped[suffix] += 1
            continue
        pending[item.key] = {}
        last_name[item.key] = max(item.key + s for s in file_suffixes)
    yield from release(None)
