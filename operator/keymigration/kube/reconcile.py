"""The reconcile step, pure: observed KeyMigration + its Jobs + their progress objects ->
what to create, suspend, resume or delete, the new status, and the events to post.

Conditions follow kstatus (Flux health checks, Helm 4 --wait=watcher, kubectl wait):
``Ready``, ``Reconciling``, ``Stalled``, plus ``Suspended``; every condition and
``status.observedGeneration`` carry ``metadata.generation``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from keymigration.clock import utc_timestamp
from keymigration.errors import InvalidKeyMigration
from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import (
    ANNOTATION_RETRY,
    InstallConfig,
    child_name,
    job_manifest,
    progress_manifest,
)

MAX_STATUS_PREFIXES = 200
COUNTER_NAMES = ("scanned", "migrated", "skipped", "failed")

PENDING, RUNNING, SUSPENDED = "Pending", "Running", "Suspended"
COMPLETED, COMPLETED_WITH_FAILURES, FAILED = "Completed", "CompletedWithFailures", "Failed"
FINISHED = (COMPLETED, COMPLETED_WITH_FAILURES, FAILED)


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    create: list[dict] = field(default_factory=list)  # progress objects, then Jobs
    suspend_jobs: list[str] = field(default_factory=list)
    resume_jobs: list[str] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass
class PrefixView:
    prefix: str
    name: str
    state: str
    counters: dict
    total: int | None = None
    checkpoint: str | None = None
    last_error: str | None = None
    start: str | None = None
    completion: str | None = None


def _timestamp(now: datetime) -> str:
    return utc_timestamp(now)


def _job_condition(job: dict, kind: str) -> dict | None:
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _job_active(job: dict) -> bool:
    """A Job that still has (or may still start) a pod: not finished and not suspended."""
    if _job_condition(job, "Complete") or _job_condition(job, "Failed"):
        return False
    return not (job.get("spec") or {}).get("suspend")


def _checkpoint_after(checkpoint: str | None) -> str | None:
    if not checkpoint:
        return None
    try:
        return json.loads(checkpoint).get("after")
    except (ValueError, AttributeError):
        return None


def observe_prefix(prefix: str, name: str, job: dict | None, progress: dict | None, previous: dict | None) -> PrefixView:
    status = (progress or {}).get("status") or {}
    counters = {k: int((status.get("counters") or {}).get(k, 0)) for k in COUNTER_NAMES}
    view = PrefixView(
        prefix=prefix,
        name=name,
        state=PENDING,
        counters=counters,
        total=status.get("total"),
        checkpoint=_checkpoint_after(status.get("checkpoint")),
        last_error=status.get("lastError"),
        start=(previous or {}).get("startTime") or ((job or {}).get("status") or {}).get("startTime"),
        completion=(previous or {}).get("completionTime"),
    )
    if status.get("done"):
        view.state = COMPLETED_WITH_FAILURES if counters["failed"] else COMPLETED
    elif job is not None:
        failed = _job_condition(job, "Failed")
        if failed:
            view.state = FAILED
            view.last_error = view.last_error or f"Job failed: {failed.get('reason', '')} {failed.get('message', '')}".strip()
        elif _job_condition(job, "Complete"):
            view.state = COMPLETED_WITH_FAILURES if counters["failed"] else COMPLETED
        elif (job.get("spec") or {}).get("suspend"):
            view.state = SUSPENDED
        else:
            view.state = RUNNING
    elif previous and previous.get("state") == FAILED:
        view.state = FAILED  # the Job is gone (TTL); the failure stays until a retry is asked for
        view.last_error = previous.get("lastError")
    return view


def _condition(kind: str, status: bool, reason: str, message: str, generation: int, previous: dict, now: str) -> dict:
    value = "True" if status else "False"
    old = previous.get(kind) or {}
    changed = old.get("status") != value
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed or not old.get("lastTransitionTime") else old["lastTransitionTime"],
    }


def conditions(ready, reconciling, stalled, suspended, generation, previous_status, now) -> list[dict]:
    previous = {c.get("type"): c for c in (previous_status or {}).get("conditions") or ()}
    return [
        _condition("Ready", *ready, generation, previous, now),
        _condition("Reconciling", *reconciling, generation, previous, now),
        _condition("Stalled", *stalled, generation, previous, now),
        _condition("Suspended", *suspended, generation, previous, now),
    ]


def _invalid(km: dict, error: InvalidKeyMigration, now: str) -> Plan:
    generation = km["metadata"].get("generation", 1)
    previous = km.get("status") or {}
    message = "invalid spec: " + "; ".join(error.problems)
    status = {
        **{k: v for k, v in previous.items() if k not in ("conditions", "observedGeneration", "phase")},
        "observedGeneration": generation,
        "phase": "Invalid",
        "conditions": conditions(
            (False, "InvalidSpec", message),
            (False, "InvalidSpec", "nothing to do until the spec is fixed"),
            (True, "InvalidSpec", message),
            (False, "NotSuspended", ""),
            generation,
            previous,
            now,
        ),
    }
    events = [] if previous.get("phase") == "Invalid" else [Event("Warning", "InvalidSpec", message[:1024])]
    return Plan(status=status, events=events)


def reconcile(km: dict, jobs: list[dict], progresses: list[dict], config: InstallConfig, now: datetime) -> Plan:
    """One step of the control loop. Never re-runs a finished prefix."""
    stamp = _timestamp(now)
    meta = km["metadata"]
    generation = meta.get("generation", 1)
    previous = km.get("status") or {}
    try:
        spec = KeyMigration.from_fields(km.get("spec"))
    except InvalidKeyMigration as error:
        return _invalid(km, error, stamp)

    jobs_by_name = {j["metadata"]["name"]: j for j in jobs}
    progress_by_name = {p["metadata"]["name"]: p for p in progresses}
    previous_prefixes = {p.get("prefix"): p for p in previous.get("prefixes") or ()}
    plan = Plan()

    retry = (meta.get("annotations") or {}).get(ANNOTATION_RETRY)
    retry_requested = retry is not None and retry != previous.get("retryGeneration")

    views: list[PrefixView] = []
    for prefix in spec.prefixes:
        name = child_name(meta["name"], prefix)
        view = observe_prefix(prefix, name, jobs_by_name.get(name), progress_by_name.get(name), previous_prefixes.get(prefix))
        if view.state == FAILED and retry_requested:
            if name in jobs_by_name:
                plan.delete_jobs.append(name)  # same deterministic name: the new Job needs it free
            view.state, view.last_error = PENDING, None
        views.append(view)

    totals = {k: sum(v.counters[k] for v in views) for k in COUNTER_NAMES}
    # Objects the workers counted in their prefixes so far (each worker counts its own): with the
    # rate, what an ETA needs.
    totals["expected"] = sum(v.total or 0 for v in views)
    too_many = spec.max_failed_objects is not None and totals["failed"] > spec.max_failed_objects
    stopping = spec.suspend or too_many

    if stopping:
        for view in views:
            if view.state == RUNNING:
                plan.suspend_jobs.append(view.name)
                view.state = SUSPENDED
    else:
        running = 0
        for view in views:
            if view.state == SUSPENDED:
                plan.resume_jobs.append(view.name)
                view.state = RUNNING
            if view.state == RUNNING:
                running += 1
            elif view.name in jobs_by_name and _job_active(jobs_by_name[view.name]):
                running += 1  # its worker reported done, but its pod is still finishing
        remaining = None if spec.max_failed_objects is None else spec.max_failed_objects - totals["failed"] + 1
        for view in views:
            if running >= spec.max_jobs:
                break
            if view.state != PENDING or view.name in plan.delete_jobs:
                continue
            if view.name not in progress_by_name:
                plan.create.append(progress_manifest(km, spec, view.prefix))
            plan.create.append(job_manifest(km, spec, view.prefix, config, max_failures=remaining))
            view.state, view.start = RUNNING, view.start or stamp
            running += 1
            plan.events.append(Event("Normal", "JobCreated", f"Job {view.name} started for prefix {view.prefix!r}"))

    for view in views:
        if view.state in FINISHED and not view.completion:
            view.completion = stamp
        old = previous_prefixes.get(view.prefix, {}).get("state")
        if old != view.state and view.state in FINISHED:
            if view.state == COMPLETED:
                plan.events.append(Event("Normal", "PrefixCompleted", f"prefix {view.prefix!r}: {view.counters['migrated']} migrated, {view.counters['skipped']} skipped"))
            elif view.state == COMPLETED_WITH_FAILURES:
                plan.events.append(Event("Warning", "PrefixCompletedWithFailures", f"prefix {view.prefix!r}: {view.counters['failed']} objects failed (see the Job's report)"))
            else:
                plan.events.append(Event("Warning", "PrefixFailed", f"prefix {view.prefix!r}: {view.last_error or 'Job failed'}"[:1024]))

    counts = {s: sum(1 for v in views if v.state == s) for s in (PENDING, RUNNING, SUSPENDED, COMPLETED, COMPLETED_WITH_FAILURES, FAILED)}
    done = counts[COMPLETED] + counts[COMPLETED_WITH_FAILURES]
    total = len(views)
    finished = done + counts[FAILED] == total
    summary = f"{done}/{total} prefixes done, {counts[RUNNING]} running, {counts[PENDING]} queued; {totals['migrated']} objects migrated, {totals['failed']} failed"

    if too_many:
        phase = "Stalled"
        msg = f"{totals['failed']} objects failed, more than maxFailedObjects={spec.max_failed_objects}; Jobs suspended"
        conds = ((False, "TooManyFailures", msg), (False, "TooManyFailures", msg), (True, "TooManyFailures", msg), (spec.suspend, "Suspended" if spec.suspend else "NotSuspended", ""))
    elif spec.suspend and not finished:
        phase = "Suspended"
        conds = ((False, "Suspended", "suspended by spec.suspend; " + summary), (False, "Suspended", summary), (False, "Suspended", ""), (True, "Suspended", "spec.suspend is true"))
    elif finished and counts[FAILED]:
        phase = "Failed"
        failed_prefixes = [v.prefix for v in views if v.state == FAILED]
        msg = f"{counts[FAILED]} prefix Jobs failed ({', '.join(repr(p) for p in failed_prefixes[:5])}); annotate {ANNOTATION_RETRY}=<new value> to retry"
        conds = ((False, "PrefixFailed", msg), (False, "PrefixFailed", summary), (True, "PrefixFailed", msg), (False, "NotSuspended", ""))
    elif finished and totals["failed"]:
        phase = "CompletedWithFailures"
        msg = f"{totals['failed']} objects failed; see the Jobs' reports (kubectl logs)"
        conds = ((False, "ObjectsFailed", msg), (False, "ObjectsFailed", summary), (True, "ObjectsFailed", msg), (False, "NotSuspended", ""))
    elif finished:
        phase = "Succeeded"
        msg = f"all {total} prefixes migrated: {totals['migrated']} objects migrated, {totals['skipped']} skipped"
        conds = ((True, "Succeeded", msg), (False, "Succeeded", msg), (False, "Succeeded", ""), (False, "NotSuspended", ""))
    else:
        phase = "Running" if counts[RUNNING] else "Pending"
        conds = ((False, "Progressing", summary), (True, "Progressing", summary), (False, "Progressing", ""), (False, "NotSuspended", ""))

    old_phase = previous.get("phase")
    if old_phase in (None, "Invalid"):
        plan.events.append(Event("Normal", "Validated", f"spec accepted: {total} prefixes of s3://{spec.bucket} to {spec.target_key_id}"))
    if old_phase != phase:
        if phase == "Suspended":
            plan.events.append(Event("Normal", "Suspended", "Jobs suspended"))
        elif old_phase == "Suspended":
            plan.events.append(Event("Normal", "Resumed", "Jobs resumed"))
        if phase == "Succeeded":
            plan.events.append(Event("Normal", "Succeeded", conds[0][2]))
        elif phase == "Stalled":
            plan.events.append(Event("Warning", "TooManyFailures", conds[2][2]))

    ordered = sorted(views, key=lambda v: (v.state in FINISHED, spec.prefixes.index(v.prefix)))
    entries = []
    for view in ordered[:MAX_STATUS_PREFIXES]:
        entry = {"prefix": view.prefix, "job": view.name, "state": view.state, "counters": view.counters}
        for key, value in (("total", view.total), ("checkpoint", view.checkpoint), ("lastError", view.last_error),
                           ("startTime", view.start), ("completionTime", view.completion)):
            if value is not None:
                entry[key] = value
        entries.append(entry)

    status = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions(*conds, generation=generation, previous_status=previous, now=stamp),
        "startTime": previous.get("startTime") or stamp,
        "prefixesDone": f"{done}/{total}",
        "prefixCounts": {
            "total": total,
            "pending": counts[PENDING],
            "running": counts[RUNNING],
            "suspended": counts[SUSPENDED],
            "completed": done,
            "failed": counts[FAILED],
        },
        "totals": totals,
        "prefixes": entries,
        "prefixesTruncated": len(views) > MAX_STATUS_PREFIXES,
    }
    if finished:
        status["completionTime"] = previous.get("completionTime") or stamp
    if retry is not None:
        status["retryGeneration"] = retry
    plan.status = status
    return plan


def status_changed(old: dict | None, new: dict) -> bool:
    """Whether a status write is needed (lastTransitionTime aside, conditions compared whole)."""
    return json.dumps(old or {}, sort_keys=True) != json.dumps(new, sort_keys=True)
