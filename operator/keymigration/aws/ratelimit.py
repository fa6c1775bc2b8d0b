"""Pacing KMS requests: a thread-safe token bucket, and an adaptive one that backs off when KMS
throttles and grows back slowly while it does not (AIMD, as TCP does with its window)."""
from __future__ import annotations

import threading
import time

from keymigration.aws.clients import THROTTLING_CODES


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

    def _refill(self, now: float) -> None:
        """Under the lock: add the tokens earned since the last call."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, tokens: float = 1.0) -> None:
        if self.rate <= 0:
            return
        while True:
            with self._lock:
                self._refill(self._clock())
                if self._tokens >= tokens - 1e-9:  # float dust must not spin the loop
                    self._tokens = max(0.0, self._tokens - tokens)
                    return
                wait = (tokens - self._tokens) / self.rate
                self.waited_seconds += wait
            self._sleep(wait)


class AdaptiveTokenBucket(TokenBucket):
    """A token bucket whose rate adapts between ``floor`` and ``cap``:

    * ``throttled()`` (KMS answered ThrottlingException or 429, also on attempts botocore then
      retried) multiplies the rate by ``decrease``, at most once per ``cooldown`` seconds: the
      requests in flight when the quota was hit come back throttled together, and count as one
      signal;
    * while no throttle comes, the rate grows by ``increase`` requests/s every second, up to the
      cap;
    * ``set_cap()`` changes the cap at run time (the KMS budget handed out as shards come and
      go); a lower cap applies at once, a higher one is grown into.

    The burst follows the rate (a tenth of a second of requests, at least one).
    """

    def __init__(
        self,
        cap: float,
        *,
        decrease: float = 0.5,
        increase: float | None = None,
        floor: float = 1.0,
        cooldown: float = 1.0,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        if cap <= 0:
            raise ValueError("an adaptive limiter needs a positive cap")
        super().__init__(cap, burst=max(1.0, cap / 10), clock=clock, sleep=sleep)
        self.cap = float(cap)
        self.decrease = decrease
        self.increase = increase
        self.floor = min(floor, self.cap)
        self.cooldown = cooldown
        self.throttles = 0  # throttled responses seen
        self.decreases = 0  # times the rate was cut
        self.lowest = self.rate
        self._last_decrease = float("-inf")
        self._last_grow = self._last

    def _step(self) -> float:
        return self.increase if self.increase is not None else max(0.5, self.cap / 50)

    def _refill(self, now: float) -> None:
        if self.rate < self.cap:
            self.rate = min(self.cap, self.rate + self._step() * (now - self._last_grow))
            self.burst = max(1.0, self.rate / 10)
        self._last_grow = now
        super()._refill(now)

    def throttled(self) -> None:
        with self._lock:
            now = self._clock()
            self.throttles += 1
            if now - self._last_decrease < self.cooldown:
                return
            self._refill(now)
            self.rate = max(self.floor, self.rate * self.decrease)
            self.burst = max(1.0, self.rate / 10)
            self._tokens = min(self._tokens, self.burst)
            self.lowest = min(self.lowest, self.rate)
            self.decreases += 1
            self._last_decrease = now

    def set_cap(self, cap: float) -> None:
        if cap <= 0:
            raise ValueError("the KMS rate cap must be positive")
        with self._lock:
            self._refill(self._clock())
            self.cap = float(cap)
            self.floor = min(self.floor, self.cap)
            if self.rate > self.cap:
                self.rate = self.cap
                self.burst = max(1.0, self.rate / 10)
                self._tokens = min(self._tokens, self.burst)
                self.lowest = min(self.lowest, self.rate)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "cap": round(self.cap, 3),
                "rate": round(self.rate, 3),
                "lowest": round(self.lowest, 3),
                "throttles": self.throttles,
                "decreases": self.decreases,
                "waited_seconds": round(self.waited_seconds, 3),
            }


def watch_throttling(client, limiter: AdaptiveTokenBucket) -> None:
    """Tell ``limiter`` about every throttled response of ``client`` (a KMS client), including
    the attempts botocore's retry handler then retries: it sees each response before deciding."""
    service = client.meta.service_model.service_name

    def on_attempt(response=None, **_):
        if not response:
            return None
        http, parsed = response
        code = (parsed or {}).get("Error", {}).get("Code")
        if code in THROTTLING_CODES or getattr(http, "status_code", 0) == 429:
            limiter.throttled()
        return None

    client.meta.events.register(f"needs-retry.{service}", on_attempt)
