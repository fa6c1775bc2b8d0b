"""A thread-safe token bucket: keeps KMS requests under the account's quota share."""
from __future__ import annotations

import threading
import time


class TokenBucket:
    """``acquire()`` blocks until a token is free. ``rate`` tokens per second, ``burst`` at most.

    A rate of None or 0 means unlimited (acquire never blocks).
    """

    def __init__(self, rate: float | None, burst: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self.rate = rate or 0.0
        self.burst = burst if burst is not None else max(1.0, self.rate)
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()
        self.waited_seconds = 0.0

    def acquire(self, tokens: float = 1.0) -> None:
        if self.rate <= 0:
            return
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= tokens - 1e-9:  # float dust must not spin the loop
                    self._tokens = max(0.0, self._tokens - tokens)
                    return
                wait = (tokens - self._tokens) / self.rate
                self.waited_seconds += wait
            self._sleep(wait)
