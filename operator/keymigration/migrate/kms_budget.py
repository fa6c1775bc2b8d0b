"""A process's share of the migration's KMS budget: the adaptive limiter in front of every KMS
request, the hook that changes its cap at run time, and a file that drives that hook.

The cap comes from ``--kms-rate``. While the run goes on, ``set_cap()`` moves it: today from
``--kms-rate-file`` (a number of requests per second, re-read when it changes; what an operator
or a person can write), later from the operator's shared budget through the progress store.
Without ``--kms-rate`` there is no limiter (botocore's retries absorb throttling, and
``--retry-mode adaptive`` paces it).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from keymigration.aws.ratelimit import AdaptiveTokenBucket, TokenBucket, watch_throttling

log = logging.getLogger("keymigration.kms")


class RateFile:
    """A file holding the KMS cap in requests per second; ``poll()`` returns a new value once
    when the file changed (and holds a positive number), else None."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None

    def poll(self) -> float | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            value = float(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            log.warning("ignoring %s: not a number of KMS requests per second", self.path)
            return None
        if value <= 0:
            log.warning("ignoring %s: the KMS rate must be positive", self.path)
            return None
        return value


class KmsBudget:
    """The limiter for one process, and what changes its cap."""

    def __init__(self, rate: float | None, rate_file: str | None = None, interval: float = 2.0):
        self.limiter: TokenBucket = AdaptiveTokenBucket(rate) if rate else TokenBucket(None)
        self.rate_file = RateFile(rate_file) if rate_file else None
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.rate_file and not rate:
            raise ValueError("--kms-rate-file needs --kms-rate (the starting cap)")

    @property
    def adaptive(self) -> AdaptiveTokenBucket | None:
        return self.limiter if isinstance(self.limiter, AdaptiveTokenBucket) else None

    def attach(self, kms_client) -> None:
        """Feed the KMS client's throttled responses to the limiter."""
        if self.adaptive is not None:
            watch_throttling(kms_client, self.adaptive)

    def set_cap(self, rate: float) -> None:
        """The hook: this process may make ``rate`` KMS requests per second from now on."""
        if self.adaptive is None:
            raise ValueError("no KMS limiter to change: the run has no --kms-rate")
        self.adaptive.set_cap(rate)
        log.info("KMS rate cap set to %s requests/s", rate)

    def poll_once(self) -> None:
        if self.rate_file is not None:
            value = self.rate_file.poll()
            if value is not None:
                self.set_cap(value)

    def start(self) -> None:
        if self.rate_file is None:
            return
        self.poll_once()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.poll_once()

        self._thread = threading.Thread(target=loop, name="kms-rate-file", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict:
        return {"kms_limiter": self.adaptive.snapshot()} if self.adaptive is not None else {}
