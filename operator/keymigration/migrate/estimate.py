"""How long a migration will take: the plan's expected duration.

Two limits, the slower one wins:

* the KMS budget: every object to migrate costs ``KMS_REQUESTS_PER_OBJECT`` requests (an Encrypt
  or a ReEncrypt, plus the verification's Decrypt or ReEncrypt unless ``--verify none``), and
  the migration may make ``kms_budget`` requests per second in all;
* the workers: ``workers`` processes (shards running at once) at ``worker_rate`` objects per
  second each.

``WORKER_RATE`` is measured, not assumed: one worker process's client CPU per object in
bench/scale_bench.py (docs/scale.md), which bounds a process against AWS (one Python process
uses one core for its signing, HTTP and parsing; KMS and S3 answer in parallel). ``--worker-rate``
overrides it with a rate measured where the migration runs (a short ``keymigration run`` on a
sample prefix prints its ``objects_per_second``).
"""
from __future__ import annotations

from dataclasses import dataclass

from keymigration.formats.vocabulary import DEFAULT_SAMPLE_RATE, VerifyLevel

# --verify sample: the Encrypt, and the verifying Decrypt for the default share of objects.
KMS_REQUESTS_PER_OBJECT = {VerifyLevel.NONE: 1, VerifyLevel.SAMPLE: 1 + DEFAULT_SAMPLE_RATE, VerifyLevel.ENVELOPE: 2, VerifyLevel.BODY: 2}
# objects/s of one worker process, CPU-bound: 1000 / its client CPU ms per object, measured by
# bench/scale_bench.py on the 2-core CI machine kind (docs/scale.md: 14.45 ms at --verify envelope,
# 9.3 ms at none, medians of three rounds), rounded down to a multiple of 5. --verify body adds a
# read of every body, which depends on object sizes and is not measured: its rate is the envelope
# one, an upper bound (pass --worker-rate). --verify sample makes the requests of none (and one
# Decrypt per 100 objects): its rate is taken as none's.
WORKER_RATE = {VerifyLevel.NONE: 105.0, VerifyLevel.SAMPLE: 105.0, VerifyLevel.ENVELOPE: 65.0, VerifyLevel.BODY: 65.0}


@dataclass(frozen=True)
class DurationEstimate:
    objects: int  # objects to migrate
    verify: VerifyLevel
    workers: int = 1
    worker_rate: float | None = None  # None: the measured default for the verify level
    kms_budget: float | None = None  # KMS requests/s for the whole migration; None: no limit

    @property
    def rate_per_worker(self) -> float:
        return self.worker_rate or WORKER_RATE[self.verify]

    def as_dict(self) -> dict:
        kms_requests = round(self.objects * KMS_REQUESTS_PER_OBJECT[self.verify])
        by_workers = self.objects / (self.rate_per_worker * max(1, self.workers))
        by_kms = kms_requests / self.kms_budget if self.kms_budget else None
        expected = max(by_workers, by_kms or 0.0)
        return {
            "objects": self.objects,
            "kms_requests": kms_requests,
            "kms_requests_per_object": KMS_REQUESTS_PER_OBJECT[self.verify],
            "kms_budget_per_second": self.kms_budget,
            "workers": self.workers,
            "worker_objects_per_second": self.rate_per_worker,
            "worker_rate_from": "--worker-rate" if self.worker_rate else "measured default (docs/scale.md)",
            "seconds_by_workers": round(by_workers, 1),
            "seconds_by_kms": round(by_kms, 1) if by_kms is not None else None,
            "expected_seconds": round(expected, 1),
            "bound_by": "kms" if by_kms is not None and by_kms >= by_workers else "workers",
        }


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
