"""One work unit of a KeyMigration (today a prefix; one Job and one progress object each), as the
operator observes it: its state, counters, and what its pods say when it cannot make progress.

Pure: the reconcile step (kube/reconcile.py) calls ``observe_unit`` with what the watch cache
holds for the unit (its Job, its progress object, its pods) and its previous status row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from keymigration.clock import seconds_since
from keymigration.kube.api_types import WorkUnit

PENDING, RUNNING, SUSPENDED = "Pending", "Running", "Suspended"
COMPLETED, COMPLETED_WITH_FAILURES, FAILED = "Completed", "CompletedWithFailures", "Failed"
FINISHED = (COMPLETED, COMPLETED_WITH_FAILURES, FAILED)
STATES = (PENDING, RUNNING, SUSPENDED, COMPLETED, COMPLETED_WITH_FAILURES, FAILED)
COUNTER_NAMES = ("scanned", "migrated", "skipped", "failed")


@dataclass
class UnitView:
    """One work unit of a KeyMigration (a prefix) as observed, and then as planned."""

    prefix: str
    name: str
    state: str
    counters: dict
    total: int | None = None
    checkpoint: str | None = None
    last_error: str | None = None
    start: str | None = None
    completion: str | None = None
    failed_attempts: int = 0  # pods of the (still active) Job that failed: it is being retried
    stuck: str | None = None  # why its Job has had no running pod for a while, if it has not
    waiting: bool = False  # its Job has no running pod yet: look again before it counts as stuck
    recorded: str | None = None  # the terminal state the operator recorded in its progress object
    plan_refused: str | None = None  # a planner: why its shard plan was refused (too many shards or bytes)
    unit: WorkUnit = field(default_factory=lambda: WorkUnit(""))  # which unit (set by the reconcile)


def job_condition(job: dict, kind: str) -> dict | None:
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def job_active(job: dict) -> bool:
    """A Job that still has (or may still start) a pod: not finished and not suspended."""
    if job_condition(job, "Complete") or job_condition(job, "Failed"):
        return False
    return not (job.get("spec") or {}).get("suspend")


def _checkpoint_after(checkpoint: str | None) -> str | None:
    if not checkpoint:
        return None
    try:
        return json.loads(checkpoint).get("after")
    except (ValueError, AttributeError):
        return None


def _done_state(counters: dict) -> str:
    return COMPLETED_WITH_FAILURES if counters["failed"] else COMPLETED


# -- what the pods say ------------------------------------------------------------------------


def _terminated(pod: dict) -> dict | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return None


def failed_pods(pods: list[dict]) -> list[dict]:
    """The unit's pods whose container exited with an error, oldest first."""
    failed = [p for p in pods if (_terminated(p) or {}).get("exitCode", 0) != 0]
    return sorted(failed, key=lambda p: (_terminated(p) or {}).get("finishedAt") or "")


def _pod_error(pod: dict) -> tuple[str, str]:
    """(when, what) of a failed pod: its exit code and termination message (the worker's last
    words, or the log's tail)."""
    terminated = _terminated(pod) or {}
    message = (terminated.get("message") or "").strip().splitlines()
    what = f"exit {terminated.get('exitCode')}: {message[-1]}" if message else f"exit {terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
    return terminated.get("finishedAt") or "", what


def latest_error(progress_status: dict, pods: list[dict]) -> str | None:
    """The newest of the worker's own last error (progress object) and its pods' termination
    messages: a worker that cannot reach the API server leaves only the latter."""
    candidates = []
    if progress_status.get("lastError"):
        candidates.append((progress_status.get("updatedAt") or "", progress_status["lastError"]))
    failed = failed_pods(pods)
    if failed:
        candidates.append(_pod_error(failed[-1]))
    return max(candidates)[1] if candidates else None


# -- work that cannot start -------------------------------------------------------------------


def age_seconds(meta: dict, now: datetime) -> float:
    """Seconds since an object's creationTimestamp (0 without one)."""
    created = meta.get("creationTimestamp")
    if not created:
        return 0.0
    return seconds_since(created, now)


def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _unschedulable(pod: dict) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def _waiting(pod: dict) -> tuple[str, str] | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason") or "Waiting", waiting.get("message") or ""
    return None


def _pod_cause(pod: dict, warnings: dict[str, str]) -> str:
    name = pod["metadata"]["name"]
    unschedulable = _unschedulable(pod)
    if unschedulable:
        return f"pod {name} cannot be scheduled: {unschedulable}"
    reason, message = _waiting(pod) or ("Pending", "")
    detail = message or warnings.get(name)  # ContainerCreating has no message: the kubelet's Event says why
    return f"pod {name} is {reason}" + (f": {detail}" if detail else "")


def stuck_cause(job: dict | None, pods: list[dict], warnings: dict[str, str], now: datetime, stuck_after: float) -> tuple[bool, str | None]:
    """(waiting, cause): whether the active Job has no running pod yet, and why, once that has
    lasted ``stuck_after`` seconds: no pod at all (the Job controller's FailedCreate: no
    ServiceAccount, a quota), or a pod that cannot be scheduled, pull its image, mount its Secret
    or build its configuration."""
    if job is None or not job_active(job):
        return False, None
    live = [p for p in pods if _phase(p) not in ("Succeeded", "Failed")]
    if not live:
        if pods:
            return False, None  # between attempts: the Job controller's back-off, shown as retrying
        age = age_seconds(job["metadata"], now)
        if age < stuck_after:
            return True, None
        cause = warnings.get(job["metadata"]["name"]) or "see the Job's Events"
        return True, f"no pod created in {int(age)} s: {cause}"
    pod = max(live, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if _phase(pod) == "Running":
        return False, None
    if age_seconds(pod["metadata"], now) < stuck_after:
        return True, None
    return True, _pod_cause(pod, warnings)


# -- the unit ---------------------------------------------------------------------------------


def _state_from_job(view: UnitView, job: dict, pods: list[dict]) -> None:
    failed = job_condition(job, "Failed")
    if failed:
        view.state = FAILED
        view.last_error = view.last_error or f"Job failed: {failed.get('reason', '')} {failed.get('message', '')}".strip()
    elif job_condition(job, "Complete"):
        view.state = _done_state(view.counters)
    elif (job.get("spec") or {}).get("suspend"):
        view.state = SUSPENDED
    else:
        view.state = RUNNING
        view.failed_attempts = len(failed_pods(pods))


@dataclass(frozen=True)
class Watch:
    """What a unit's observation needs besides its own objects: the newest Warning Event of each
    of its Jobs and pods (by name), the time, and how long a Job may go without a running pod."""

    warnings: dict
    now: datetime | None = None
    stuck_after: float = 30.0


def observe_unit(prefix: str, name: str, job: dict | None, progress: dict | None, previous: dict | None,
                 pods: list[dict] | None = None, watch: Watch | None = None) -> UnitView:
    status = (progress or {}).get("status") or {}
    pods = pods or []
    counters = {k: int((status.get("counters") or {}).get(k, 0)) for k in COUNTER_NAMES}
    view = UnitView(
        prefix=prefix,
        name=name,
        state=PENDING,
        counters=counters,
        total=status.get("total"),
        checkpoint=_checkpoint_after(status.get("checkpoint")),
        last_error=latest_error(status, pods),
        start=(previous or {}).get("startTime") or ((job or {}).get("status") or {}).get("startTime"),
        completion=(previous or {}).get("completionTime"),
    )
    if status.get("state") in FINISHED:
        # Recorded by the operator when the unit finished: it outlives the Job (TTL) and does not
        # depend on the KeyMigration's status rows (at most 200).
        view.state = view.recorded = status["state"]
        view.completion = status.get("completionTime") or view.completion
        view.last_error = status.get("lastError") if view.state == FAILED else view.last_error
    elif status.get("done"):
        view.state = _done_state(counters)
    elif job is not None:
        _state_from_job(view, job, pods)
    elif previous and previous.get("state") == FAILED:
        view.state = FAILED  # the Job is gone (TTL); the failure stays until a retry is asked for
        view.last_error = previous.get("lastError")
    if view.state == COMPLETED:
        view.last_error = None  # errors of earlier attempts are history once the prefix is done
    if view.state == RUNNING and watch is not None and watch.now is not None:
        view.waiting, view.stuck = stuck_cause(job, pods, watch.warnings, watch.now, watch.stuck_after)
        view.last_error = view.stuck or view.last_error
    return view


__all__ = ["UnitView", "Watch", "age_seconds", "job_active", "job_condition", "observe_unit", "stuck_cause"]
