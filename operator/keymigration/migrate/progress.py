"""Progress output: a bar with rate and ETA on a terminal, throttled JSON lines otherwise."""
from __future__ import annotations

import json
import sys
import time
from typing import IO


class TerminalProgress:
    """tqdm bar: it handles terminal width, rate smoothing and ETA better than a hand-written one."""

    def __init__(self, description: str, stream: IO[str] = sys.stderr):
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=description, unit="obj", file=stream, dynamic_ncols=True, smoothing=0.1)

    def update(self, snapshot: dict) -> None:
        if snapshot.get("total") is not None and self.bar.total != snapshot["total"]:
            self.bar.total = snapshot["total"]
        self.bar.n = snapshot["scanned"]
        self.bar.set_postfix(
            migrated=snapshot["migrated"], skipped=snapshot["skipped"], failed=snapshot["failed"], refresh=False
        )
        self.bar.refresh()

    def close(self, summary: dict) -> None:
        self.update({**summary, "total": summary.get("total") or summary["scanned"]})
        self.bar.close()


class JsonProgress:
    """One JSON line per ``interval`` seconds at most (logs of a Job, CI output)."""

    FIELDS = ("scanned", "migrated", "skipped", "failed", "planned", "verified", "total", "elapsed_seconds", "after")

    def __init__(self, stream: IO[str] = sys.stderr, interval: float = 10.0):
        self.stream = stream
        self.interval = interval
        self._last = 0.0

    def update(self, snapshot: dict) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self._emit("progress", snapshot)

    def close(self, summary: dict) -> None:
        self._emit("finished", summary)

    def _emit(self, event: str, data: dict) -> None:
        line = {"event": event, **{k: data.get(k) for k in self.FIELDS if data.get(k) is not None}}
        if data.get("elapsed_seconds") and data.get("scanned"):
            line["objects_per_second"] = round(data["scanned"] / data["elapsed_seconds"], 1)
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()


class MultiProgress:
    def __init__(self, *sinks):
        self.sinks = [s for s in sinks if s is not None]

    def update(self, snapshot: dict) -> None:
        for sink in self.sinks:
            sink.update(snapshot)

    def close(self, summary: dict) -> None:
        for sink in self.sinks:
            sink.close(summary)
