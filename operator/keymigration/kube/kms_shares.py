"""One KMS budget per migration, shared by its running workers, and never overshot.

The operator writes each running worker's share of ``kmsRequestsPerSecond`` into the worker's
progress object: ``status.kmsRate``, with ``kmsRateSerial`` counting the writes and
``kmsRateSince`` the time of the last. The worker reads it back with its next progress write
(every few seconds), moves its KMS limiter's cap, and acknowledges at once: ``kmsRateApplied`` and
``kmsRateAppliedSerial`` (kube/progress_store.py).

While units wait to start, every running worker gets the budget over ``maxJobs``, what a new Job
starts with. Once every unit has started, the running workers share the whole budget, and the
shares grow as units finish: growing shares need no care. A retry (or a Job the operator starts
again) makes units wait once more, and the running workers may still apply a larger share than a
new Job's. So new Jobs are held until every running worker has acknowledged a share no larger than
theirs: the shares in force never sum above the budget. The hold lasts about one progress
interval. A worker that does not acknowledge (an older worker image, a worker that cannot reach
the API server) holds them at most ``ACK_GRACE_SECONDS`` after its lower share was written; then
they start, and a Warning Event names it (its limiter still backs off on KMS throttling).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from keymigration.clock import seconds_since
from keymigration.kube.api_types import KeyMigration
from keymigration.kube.units import PENDING, RUNNING, UnitView

ACK_GRACE_SECONDS = 30.0  # six progress intervals: a worker that has not answered by then will not soon


def uses_kms(view: UnitView) -> bool:
    return view.state == RUNNING and not view.unit.planner


def kms_share(migration: KeyMigration, views: list[UnitView]) -> int | None:
    """Each running worker's share of ``kmsRequestsPerSecond``. While units wait to start (or
    prefixes to be planned), ``maxJobs`` of them will run: the budget over ``maxJobs``, what a
    new Job starts with. Once every unit has started, the running ones share the whole budget,
    and each share grows as units finish."""
    budget = migration.kms_requests_per_second
    if not budget:
        return None
    if any(v.state == PENDING or v.unit.planner for v in views):
        return migration.per_job_kms_rate()
    return max(1, budget // max(1, sum(1 for v in views if uses_kms(v))))


def hand_out(share: int, views: list[UnitView], progresses: dict[str, dict], stamp: str) -> dict[str, dict]:
    """The merge patches that give each running worker ``share``, where its progress object
    holds another: the share, its serial (one more than the last), and when it was written."""
    patches: dict[str, dict] = {}
    for view in views:
        progress = progresses.get(view.name)
        if not uses_kms(view) or progress is None:
            continue
        status = progress.get("status") or {}
        if status.get("kmsRate") != share:
            serial = status.get("kmsRateSerial")
            patches[view.name] = {"kmsRate": share, "kmsRateSerial": (serial if isinstance(serial, int) else 0) + 1,
                                  "kmsRateSince": stamp}
    return patches


SHARE_FIELDS = ("kmsRate", "kmsRateSerial", "kmsRateSince", "kmsRateApplied", "kmsRateAppliedSerial")


def forget(progress: dict | None) -> dict:
    """The merge patch that clears a unit's shares before its Job is started again (a retry):
    the new worker starts at its Job's --kms-rate and is handed shares from serial 1."""
    status = (progress or {}).get("status") or {}
    return {key: None for key in SHARE_FIELDS if status.get(key) is not None}


@dataclass
class Hold:
    """The running workers new Jobs wait for, and those they no longer wait for (overdue)."""

    waiting: list[UnitView] = field(default_factory=list)
    overdue: list[UnitView] = field(default_factory=list)
    recheck: float | None = None  # when the first of the waiting becomes overdue


def _settled(status: dict, new_share: int) -> bool:
    """Whether every share the worker may apply now is at most ``new_share``. It applies the one
    it acknowledged last, or one written since: the serials say which writes it may have seen."""
    written, serial = status.get("kmsRate"), status.get("kmsRateSerial")
    if written is None:
        return True  # nothing handed out yet: it runs at its Job's --kms-rate, the budget over maxJobs
    if not isinstance(serial, int):
        return written <= new_share  # written before acknowledgements existed: all that can be known
    acknowledged, applied = status.get("kmsRateAppliedSerial"), status.get("kmsRateApplied")
    if acknowledged == serial:
        possible = [applied]
    elif acknowledged is None and serial == 1:
        possible = [written]  # or its Job's --kms-rate, the budget over maxJobs
    elif isinstance(acknowledged, int) and acknowledged == serial - 1:
        possible = [applied, written]
    else:
        return False  # shares were written that it may have taken and not acknowledged
    return all(isinstance(rate, (int, float)) and rate <= new_share for rate in possible)


def _waited(status: dict, new_share: int, now: datetime) -> float | None:
    """Seconds since the worker's lower share was written, if it was (else None: not yet)."""
    written, since = status.get("kmsRate"), status.get("kmsRateSince")
    if written is None or written > new_share or not isinstance(since, str):
        return None
    try:
        return seconds_since(since, now)
    except ValueError:
        return ACK_GRACE_SECONDS  # an unreadable time: do not wait on it


def hold(migration: KeyMigration, views: list[UnitView], progresses: dict[str, dict], now: datetime) -> Hold:
    """Which running workers a new Job (starting at the budget over ``maxJobs``) must wait for."""
    new_share = migration.per_job_kms_rate()
    found = Hold()
    if new_share is None:
        return found
    for view in views:
        status = (progresses.get(view.name) or {}).get("status") or {}
        if not uses_kms(view) or _settled(status, new_share):
            continue
        waited = _waited(status, new_share, now)
        if waited is not None and waited >= ACK_GRACE_SECONDS:
            found.overdue.append(view)
            continue
        found.waiting.append(view)
        left = ACK_GRACE_SECONDS - (waited or 0.0)
        found.recheck = left if found.recheck is None else min(found.recheck, left)
    return found
