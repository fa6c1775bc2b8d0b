"""Per-object report (JSON lines) and outcome counters."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

from keymigration.migrate.results import ObjectResult, Outcome

OUTCOME_FIELDS = ("scanned", "migrated", "skipped", "failed", "planned", "verified", "rolled_back", "pruned")


@dataclass
class Counters:
    """Outcome counts. ``reasons`` keys are ``<outcome>:<reason>``; bounded by the reason codes."""

    scanned: int = 0
    migrated: int = 0
    skipped: int = 0
    failed: int = 0
    planned: int = 0
    verified: int = 0
    rolled_back: int = 0
    pruned: int = 0
    reasons: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    source_keys: Counter = field(default_factory=Counter)

    def add(self, result: ObjectResult) -> None:
        self.scanned += 1
        name = str(result.outcome)
        attribute = name.replace("-", "_")
        setattr(self, attribute, getattr(self, attribute) + 1)
        self.reasons[f"{name}:{result.reason}"] += 1
        if result.format:
            self.formats[f"{result.format}/{result.wrap}/{result.location}"] += 1
        if result.source_key:
            self.source_keys[result.source_key] += 1

    def merge(self, other: "Counters") -> None:
        for name in OUTCOME_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.formats.update(other.formats)
        self.source_keys.update(other.source_keys)

    def as_dict(self) -> dict:
        return {
            **{name: getattr(self, name) for name in OUTCOME_FIELDS},
            "reasons": dict(sorted(self.reasons.items())),
            "formats": dict(sorted(self.formats.items())),
            "source_keys": dict(sorted(self.source_keys.items())),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "Counters":
        data = data or {}
        counters = cls(**{k: int(data.get(k, 0)) for k in OUTCOME_FIELDS})
        counters.reasons.update({str(k): int(v) for k, v in (data.get("reasons") or {}).items()})
        counters.formats.update({str(k): int(v) for k, v in (data.get("formats") or {}).items()})
        counters.source_keys.update({str(k): int(v) for k, v in (data.get("source_keys") or {}).items()})
        return counters

    def copy(self) -> "Counters":
        return Counters.from_dict(self.as_dict())


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as existing:
        existing.seek(0, 2)
        if existing.tell() == 0:
            return False
        existing.seek(-1, 2)
        return existing.read(1) != b"\n"


class ReportWriter:
    """JSON lines, one per object, then one summary line. Appends, so a resumed run continues
    the same report; where a key appears twice, its last line is the outcome."""

    def __init__(self, stream: IO[str], owns: bool):
        self.stream = stream
        self.owns = owns

    @classmethod
    def open(cls, path: str | None) -> "ReportWriter | None":
        if not path:
            return None
        if path == "-":
            return cls(sys.stdout, owns=False)
        stream = open(path, "a", encoding="utf-8")
        if _ends_mid_line(path):
            # A run killed while writing a line left it torn: end it, so that this run's first
            # line stays whole (a reader skips the torn one) instead of joining it.
            stream.write("\n")
        return cls(stream, owns=True)

    def write(self, result: ObjectResult) -> None:
        self.stream.write(json.dumps(result.record(), ensure_ascii=False) + "\n")

    def summary(self, summary: dict) -> None:
        self.stream.write(json.dumps({"summary": summary}, ensure_ascii=False) + "\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()
        if self.owns:
            self.stream.close()


__all__ = ["Counters", "ReportWriter", "Outcome"]
