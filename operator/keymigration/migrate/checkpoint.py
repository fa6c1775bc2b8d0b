"""Checkpoints: where a prefix's migration stands, so a killed worker resumes exactly.

The format (JSON, version 1) is an interface shared with the operator (docs/worker.md#checkpoints):

    {"version": 1, "bucket": "...", "prefix": "...", "suffix": ".instruction",
     "target_key": "<target key as configured>", "mode": "instruction-file", "run_id": "...",
     "after": "<key>" | null,     # every object up to and including this key is finished
     "counters": {...},            # outcome counts for exactly those objects
     "done": false, "updated_at": "2026-01-01T00:00:00Z"}

Objects after ``after`` are processed again on resume; one whose instruction file carries this
run's ``run_id`` is counted as migrated then, so counters stay exact across any kill.

Version 2 adds what a shard or an inventory run is, and is written only by those (a plain
prefix run still writes version 1, which the operator reads):

    "start_after": "<key>" | null, "end_key": "<key>" | null,   # the key range (a shard)
    "inventory": "s3://bucket/path/manifest.json" | null,
    "inventory_md5": "<manifest.json's MD5>", "inventory_files": "0/4" | null,
    "position": {"file": 3, "row": 1234} | null   # inventory: finished up to this data row

A version-1 reader refuses version 2 rather than resuming a shard as a whole prefix.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from keymigration.clock import utc_timestamp
from keymigration.errors import CheckpointError

VERSION = 1
VERSION_SCALE = 2  # with a key range or an inventory
SCALE_FIELDS = ("start_after", "end_key", "inventory", "inventory_md5", "inventory_files", "position")



@dataclass
class Checkpoint:
    bucket: str
    prefix: str
    suffix: str
    target_key: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    mode: str = "instruction-file"
    after: str | None = None
    counters: dict = field(default_factory=dict)
    done: bool = False
    updated_at: str = ""
    version: int = VERSION
    start_after: str | None = None
    end_key: str | None = None
    inventory: str | None = None
    inventory_md5: str | None = None
    inventory_files: str | None = None
    position: dict | None = None

    @property
    def is_scale(self) -> bool:
        return any(getattr(self, name) is not None for name in SCALE_FIELDS)

    def to_json(self) -> str:
        self.updated_at = utc_timestamp()
        data = asdict(self)
        if self.is_scale:
            data["version"] = VERSION_SCALE
        else:  # exactly the version-1 format
            for name in SCALE_FIELDS:
                del data[name]
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Checkpoint":
        try:
            data = json.loads(text)
        except ValueError:
            raise CheckpointError("checkpoint is not valid JSON") from None
        if not isinstance(data, dict) or data.get("version") not in (VERSION, VERSION_SCALE):
            raise CheckpointError(f"unsupported checkpoint version {data.get('version') if isinstance(data, dict) else None!r}")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise CheckpointError(f"checkpoint is incomplete: {error}") from None

    def check_matches(self, bucket: str, prefix: str, suffix: str, target_key: str, mode: str, **scale) -> None:
        """A checkpoint belongs to one migration; resuming another with it would skip objects.
        ``scale``: the key range and inventory fields of this run (absent means None)."""
        mine = (self.bucket, self.prefix, self.suffix, self.target_key, self.mode)
        theirs = (bucket, prefix, suffix, target_key, mode)
        names = ("bucket", "prefix", "suffix", "target key", "mode")
        compared = [n for n in SCALE_FIELDS if n != "position"]
        unknown = set(scale) - set(compared)
        if unknown:
            raise TypeError(f"unknown checkpoint fields {sorted(unknown)}")
        mine += tuple(getattr(self, n) for n in compared)
        theirs += tuple(scale.get(n) for n in compared)
        names += tuple(n.replace("_", " ") for n in compared)
        if mine != theirs:
            diff = [f"{n} {a!r} != {b!r}" for n, a, b in zip(names, mine, theirs) if a != b]
            raise CheckpointError("checkpoint belongs to another migration: " + "; ".join(diff))


class CheckpointStore(Protocol):
    def load(self) -> Checkpoint | None: ...

    def save(self, checkpoint: Checkpoint) -> None: ...


class FileCheckpointStore:
    """A checkpoint file, replaced atomically (write, fsync, rename) so a kill never tears it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> Checkpoint | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointError(f"{self.path}: cannot read checkpoint ({error.strerror})") from None
        return Checkpoint.from_json(text)

    def save(self, checkpoint: Checkpoint) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(checkpoint.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with_suppressed_unlink(tmp)
            raise


class MemoryCheckpointStore:
    def __init__(self) -> None:
        self.saved: Checkpoint | None = None

    def load(self) -> Checkpoint | None:
        return self.saved

    def save(self, checkpoint: Checkpoint) -> None:
        self.saved = Checkpoint.from_json(checkpoint.to_json())


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
