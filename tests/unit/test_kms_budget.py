"""The adaptive KMS limiter on a fake clock (no sleeping), the run-time cap hook, and the plan's
duration estimate."""
from __future__ import annotations

import os

import pytest

from keymigration.aws.ratelimit import AdaptiveTokenBucket, TokenBucket
from keymigration.formats.vocabulary import VerifyLevel
from keymigration.migrate.estimate import DurationEstimate, human_duration
from keymigration.migrate.kms_budget import KmsBudget, RateFile


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def limiter(cap=100.0, **options):
    clock = FakeClock()
    return AdaptiveTokenBucket(cap, clock=clock, sleep=clock.sleep, **options), clock


def requests_in(bucket: TokenBucket, clock: FakeClock, seconds: float) -> int:
    """How many acquire() calls fit in ``seconds`` of fake time."""
    end, n = clock.now + seconds, 0
    while True:
        bucket.acquire()
        if clock.now > end:
            return n
        n += 1


def test_full_rate_until_throttled_then_halved():
    bucket, clock = limiter(100)
    assert 95 <= requests_in(bucket, clock, 10) / 10 <= 111
    bucket.throttled()
    assert bucket.rate == 50
    assert 45 <= requests_in(bucket, clock, 1) <= 62  # the next second runs at about half


def test_throttles_within_the_cooldown_count_once():
    bucket, clock = limiter(100, cooldown=1.0)
    for _ in range(20):  # the requests in flight come back throttled together
        bucket.throttled()
    assert bucket.rate == 50 and bucket.throttles == 20 and bucket.decreases == 1
    clock.now += 1.01
    bucket.throttled()
    assert bucket.decreases == 2 and bucket.rate == pytest.approx((50 + 2 * 1.01) / 2)  # grew 1.01 s at cap/50, halved


def test_grows_additively_back_to_the_cap_never_above():
    bucket, clock = limiter(100, increase=2.0)
    bucket.throttled()
    bucket.throttled()  # within the cooldown: one cut
    assert bucket.rate == 50
    clock.now += 10
    bucket.acquire()
    assert bucket.rate == pytest.approx(70)  # 2 requests/s per second, linear
    clock.now += 1000
    bucket.acquire()
    assert bucket.rate == 100  # the cap, not beyond


def test_never_below_the_floor():
    bucket, clock = limiter(8, floor=1.0)
    for _ in range(10):
        bucket.throttled()
        clock.now += 1.5
    assert bucket.rate >= 1.0 and bucket.lowest >= 1.0
    assert bucket.snapshot()["decreases"] == 10


def test_set_cap_lowers_at_once_and_raises_by_growing():
    bucket, clock = limiter(100, increase=10.0)
    bucket.set_cap(20)
    assert bucket.rate == 20 and bucket.cap == 20
    assert 18 <= requests_in(bucket, clock, 5) / 5 <= 23
    bucket.set_cap(60)
    assert bucket.rate == 20  # grown into, not jumped to
    clock.now += 2
    bucket.acquire()
    assert bucket.rate == pytest.approx(40)
    with pytest.raises(ValueError):
        bucket.set_cap(0)


def test_unlimited_bucket_never_waits():
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    for _ in range(10000):
        bucket.acquire()
    assert clock.slept == 0


def test_rate_file_drives_the_cap(tmp_path):
    path = tmp_path / "rate"
    budget = KmsBudget(100, str(path))
    budget.poll_once()  # no file yet: nothing changes
    assert budget.adaptive.cap == 100
    path.write_text("40\n")
    budget.poll_once()
    assert budget.adaptive.cap == 40 and budget.adaptive.rate == 40
    budget.adaptive.set_cap(70)
    budget.poll_once()  # unchanged file: not applied again
    assert budget.adaptive.cap == 70
    path.write_text("not a number")
    os.utime(path, ns=(1, 1))
    budget.poll_once()
    assert budget.adaptive.cap == 70
    path.write_text("-3")
    assert RateFile(path).poll() is None
    assert budget.summary()["kms_limiter"]["cap"] == 70


def test_a_rate_file_needs_a_starting_rate_and_no_rate_means_no_limiter(tmp_path):
    with pytest.raises(ValueError):
        KmsBudget(None, str(tmp_path / "rate"))
    budget = KmsBudget(None)
    assert budget.adaptive is None and budget.summary() == {}
    with pytest.raises(ValueError):
        budget.set_cap(5)


def test_duration_is_bound_by_the_slower_of_kms_and_workers():
    by_kms = DurationEstimate(1_000_000, VerifyLevel.ENVELOPE, workers=10, worker_rate=100, kms_budget=500).as_dict()
    assert by_kms["kms_requests"] == 2_000_000 and by_kms["seconds_by_kms"] == 4000
    assert by_kms["seconds_by_workers"] == 1000 and by_kms["expected_seconds"] == 4000 and by_kms["bound_by"] == "kms"
    by_workers = DurationEstimate(1_000_000, VerifyLevel.NONE, workers=2, worker_rate=100, kms_budget=10_000).as_dict()
    assert by_workers["expected_seconds"] == 5000 and by_workers["bound_by"] == "workers"
    default = DurationEstimate(1000, VerifyLevel.ENVELOPE).as_dict()
    assert default["seconds_by_kms"] is None and default["worker_rate_from"].startswith("measured")
    assert [human_duration(s) for s in (30, 600, 7200, 4 * 86400)] == ["30 s", "10 min", "2.0 h", "4.0 days"]
