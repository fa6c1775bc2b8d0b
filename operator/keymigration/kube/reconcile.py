"""The reconcile step, pure: observed KeyMigration + its Jobs + their progress objects ->
what to create, suspend, resume or delete, the new status, and the events to post.

Conditions follow kstatus (Flux health checks, Helm 4 --wait=watcher, kubectl wait):
``Ready``, ``Reconciling``, ``Stalled``, plus ``Suspended``; every condition and
``status.observedGeneration`` carry ``metadata.generation``.

The shape, like cert-manager's policy chains:

1. ``observe``: each work unit (today a prefix) of the KeyMigration, from its Job, its progress
   object and its previous status row, becomes a ``UnitView`` with a state;
2. ``schedule``: suspend, resume or start Jobs (never more than ``maxJobs`` at once, never a
   finished unit again);
3. ``VERDICTS``: an ordered chain of small functions, each taking the ``Observed`` state and
   returning a ``Verdict`` (phase + the four conditions, each a ``Condition``) or None; the
   first match wins;
4. ``status_of``: the status written back, with the conditions' transition times kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Callable

from keymigration.clock import seconds_since, utc_timestamp
from keymigration.errors import InvalidKeyMigration
from keymigration.kube.api_types import KeyMigration, WorkUnit, check_boundaries, shard_units
from keymigration.kube.jobs import (
    ANNOTATION_RETRY,
    InstallConfig,
    job_manifest,
    progress_manifest,
    unit_name,
)
from keymigration.kube.kms_shares import ACK_GRACE_SECONDS, forget, hand_out, hold, kms_share, uses_kms
from keymigration.kube.policy import not_allowed
from keymigration.kube.units import (
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    COUNTER_NAMES,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    STATES,
    SUSPENDED,
    UnitView,
    Watch,
    job_active,
    observe_unit,
)
from keymigration.migrate import DurationEstimate, human_duration

MAX_STATUS_PREFIXES = 200
MAX_ROW_CHECKPOINT = 128  # characters of a row's checkpoint key (a key may have 1024 bytes)
MAX_ROW_ERROR = 256  # characters of a row's last error
MAX_CONDITION_ERROR = 200  # characters of each failed unit's error in a condition's message
MAX_MESSAGE = 4096  # characters of a condition message
PLAN_GRACE_SECONDS = 60.0  # a planner Job complete this long with no plan recorded has failed


def clip(text: str | None, limit: int) -> str | None:
    """At most ``limit`` characters, an ellipsis marking a cut: spec plus status stay bounded."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # Tied to an action the plan takes now (a Job created, an outcome recorded in its progress
    # object): posted with it. Else a status transition: posted with the status that records it
    # (whose writes are rate-limited), so that it is posted once.
    now: bool = False


@dataclass
class Plan:
    create: list[dict] = field(default_factory=list)  # progress objects, then Jobs
    suspend_jobs: list[str] = field(default_factory=list)
    resume_jobs: list[str] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    recheck: float | None = None  # look again after this many seconds even if nothing changes
    progress_status: dict[str, dict] = field(default_factory=dict)  # progress object -> merge patch of its status


@dataclass
class Surroundings:
    """What the operator saw around a KeyMigration besides its Jobs and progress objects."""

    conflicts: dict[str, str] = field(default_factory=dict)  # child name -> who holds it
    pods: dict[str, list[dict]] = field(default_factory=dict)  # Job name -> its pods
    warnings: dict[str, str] = field(default_factory=dict)  # Job or pod name -> its newest Warning Event
    worker_account: str | None = None  # why no worker pod can run in the namespace, if none can
    stuck_after: float = 30.0  # seconds a Job may go without a running pod before it counts as stuck


# -- conditions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One kstatus condition as a verdict states it: True/False, a CamelCase reason, a message."""

    status: bool
    reason: str
    message: str = ""

    def render(self, kind: str, generation: int, previous: dict, now: str) -> dict:
        value = "True" if self.status else "False"
        old = previous.get(kind) or {}
        changed = old.get("status") != value
        return {
            "type": kind,
            "status": value,
            "reason": self.reason,
            "message": clip(self.message, MAX_MESSAGE),
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or not old.get("lastTransitionTime") else old["lastTransitionTime"],
        }


NOT_SUSPENDED = Condition(False, "NotSuspended")


@dataclass(frozen=True)
class Verdict:
    """What the KeyMigration is, as its status says it: a phase and the four conditions."""

    phase: str
    ready: Condition
    reconciling: Condition
    stalled: Condition
    suspended: Condition = NOT_SUSPENDED
    event: Event | None = None  # posted when the migration enters this verdict (phase and reason)

    @classmethod
    def stall(cls, phase: str, reason: str, message: str, progress: str, suspended: Condition = NOT_SUSPENDED,
              event: Event | None = None) -> "Verdict":
        """Stalled=True: work stopped for ``reason``; a person must act (message says how)."""
        return cls(
            phase,
            ready=Condition(False, reason, message),
            reconciling=Condition(False, reason, progress),
            stalled=Condition(True, reason, message),
            suspended=suspended,
            event=event,
        )

    def conditions(self, generation: int, previous_status: dict | None, now: str) -> list[dict]:
        previous = {c.get("type"): c for c in (previous_status or {}).get("conditions") or ()}
        named = (("Ready", self.ready), ("Reconciling", self.reconciling), ("Stalled", self.stalled), ("Suspended", self.suspended))
        return [condition.render(kind, generation, previous, now) for kind, condition in named]


# -- observing --------------------------------------------------------------------------------


@dataclass
class Observed:
    """Everything the verdicts look at, for one reconcile of one KeyMigration."""

    migration: KeyMigration
    views: list[UnitView]
    totals: dict
    too_many: bool
    surroundings: Surroundings = field(default_factory=Surroundings)
    counts: dict = field(default_factory=dict)
    kms_waiting: list[str] = field(default_factory=list)  # running workers new Jobs wait for (their KMS share)
    kms_recheck: float | None = None

    def count(self) -> None:
        self.counts = {s: sum(1 for v in self.views if v.state == s) for s in STATES}

    @property
    def done(self) -> int:
        return self.counts[COMPLETED] + self.counts[COMPLETED_WITH_FAILURES]

    @property
    def finished(self) -> bool:
        return self.done + self.counts[FAILED] == len(self.views)

    @property
    def noun(self) -> str:
        """What the units are, for messages: prefixes, shards or inventory slices."""
        if self.migration.inventory is not None:
            return "inventory slices"
        return "shards" if self.migration.shards is not None else "prefixes"

    @property
    def planning(self) -> int:
        return sum(1 for v in self.views if v.unit.planner and v.state not in FINISHED)

    def summary(self) -> str:
        planning = f" ({self.planning} prefixes still planning their shards)" if self.planning else ""
        return (
            f"{self.done}/{len(self.views)} {self.noun} done{planning}, {self.counts[RUNNING]} running, {self.counts[PENDING]} queued; "
            f"{self.totals['migrated']} objects migrated, {self.totals['failed']} failed" + self.retrying() + self.held()
        )

    def held(self) -> str:
        """New Jobs held until running workers take their lower KMS share (kube/kms_shares.py)."""
        if not self.kms_waiting:
            return ""
        return f"; new Jobs wait until {_some(self.kms_waiting, 3)} take(s) the lower KMS share"

    def retrying(self) -> str:
        """Running prefixes whose Job is retrying a failed pod, with the last error of each."""
        retried = [v for v in self.views if v.state == RUNNING and v.failed_attempts]
        if not retried:
            return ""
        shown = "; ".join(f"{_label(v)} after {v.failed_attempts} failed attempt(s): {clip(v.last_error, MAX_ROW_ERROR)}"
                          for v in retried[:3])
        more = f" (and {len(retried) - 3} more)" if len(retried) > 3 else ""
        return f"; retrying {shown}{more}"


def _label(view: UnitView) -> str:
    """A unit in a message: the prefix as before (quoted), or which shard or slice."""
    unit = view.unit
    return repr(unit.prefix) if unit.shard is None and unit.files is None and not unit.planner else unit.describe()


def _some(labels: list[str], limit: int) -> str:
    """Up to ``limit`` units named in a message, and how many more there are."""
    return ", ".join(labels[:limit]) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _totals(views: list[UnitView]) -> dict:
    totals = {k: sum(v.counters[k] for v in views) for k in COUNTER_NAMES}
    # Objects the workers counted in their prefixes so far (each worker counts its own): with the
    # rate, what an ETA needs.
    totals["expected"] = sum(v.total or 0 for v in views)
    return totals


# -- scheduling -------------------------------------------------------------------------------


@dataclass
class Scene:
    """One reconcile's inputs, indexed."""

    km: dict
    migration: KeyMigration
    jobs: dict[str, dict]
    progresses: dict[str, dict]
    previous: dict
    config: InstallConfig
    now: datetime
    stamp: str
    surroundings: Surroundings = field(default_factory=Surroundings)

    plans: dict[str, dict] = field(default_factory=dict)  # planner name -> its recorded, valid shard plan

    @cached_property
    def previous_rows(self) -> dict[str, dict]:
        """The previous status rows, by Job (unique per unit; a prefix's row names its Job too)."""
        return {p.get("job"): p for p in self.previous.get("prefixes") or ()}

    def name_of(self, unit: WorkUnit) -> str:
        return unit_name(self.km["metadata"]["name"], unit)

    def units(self) -> tuple[list[WorkUnit], dict[str, str]]:
        """Every unit of the migration: the spec's, with each sharded prefix whose plan is
        recorded replaced by its shards; and why a recorded plan is refused (by planner name)."""
        units: list[WorkUnit] = []
        refused: dict[str, str] = {}
        for unit in self.migration.units():
            name = self.name_of(unit)
            plan = ((self.progresses.get(name) or {}).get("status") or {}).get("shardPlan") if unit.planner else None
            if plan is None:
                units.append(unit)
                continue
            problems = check_boundaries(plan.get("boundaries"))
            if problems:
                refused[name] = "; ".join(problems)
                units.append(unit)
            else:
                self.plans[name] = plan
                units += shard_units(unit.prefix, plan["boundaries"])
        return units, refused

    @property
    def retry(self) -> str | None:
        return (self.km["metadata"].get("annotations") or {}).get(ANNOTATION_RETRY)

    @property
    def retry_requested(self) -> bool:
        return self.retry is not None and self.retry != self.previous.get("retryGeneration")


def _planner_state(view: UnitView, job: dict | None, refused: str | None, now: datetime) -> None:
    """A planner without a usable plan: its Job's completion is not the prefix's (its shards
    are). A plan refused (by the planner, which then records why instead, or by the operator)
    fails it; a Job complete with no plan in sight waits for the progress object's watch event
    a while, then fails."""
    if refused:
        view.state, view.last_error, view.plan_refused = FAILED, f"shard plan refused: {refused}", refused
        return
    if view.state not in (COMPLETED, COMPLETED_WITH_FAILURES):
        return
    completed = ((job or {}).get("status") or {}).get("completionTime")
    waited = seconds_since(completed, now) if completed else 0.0
    if waited < PLAN_GRACE_SECONDS:
        view.state, view.waiting = RUNNING, True
    else:
        view.state, view.last_error = FAILED, "the planner Job completed without recording a shard plan"


def _boundaries_moved(unit: WorkUnit, progress: dict | None) -> str | None:
    """A shard's progress object records the range it was started with (immutable there): one
    that differs from the recorded plan's is never run, so no key is migrated by two shards."""
    spec = (progress or {}).get("spec") or {}
    if unit.shard is None or progress is None:
        return None
    if (spec.get("shard"), spec.get("startAfter"), spec.get("endKey")) == (unit.shard, unit.start_after, unit.end_key):
        return None
    return f"{unit.describe()}: its progress object records other boundaries than the shard plan; not run"


def _observe_one(scene: Scene, unit: WorkUnit, refused: dict[str, str], watch: Watch, now: datetime) -> UnitView:
    name = scene.name_of(unit)
    progress = scene.progresses.get(name)
    view = observe_unit(unit.prefix, name, scene.jobs.get(name), progress, scene.previous_rows.get(name),
                        scene.surroundings.pods.get(name), watch)
    view.unit = unit
    if unit.planner:
        _planner_state(view, scene.jobs.get(name), refused.get(name) or ((progress or {}).get("status") or {}).get("shardPlanRefused"), now)
    moved = _boundaries_moved(unit, progress)
    if moved is not None and view.state not in FINISHED:
        view.state, view.last_error = FAILED, moved
    return view


def _observe_all(scene: Scene, plan: Plan, now: datetime) -> list[UnitView]:
    retry_requested = scene.retry_requested
    watch = Watch(scene.surroundings.warnings, now, scene.surroundings.stuck_after)
    units, refused = scene.units()
    views = []
    for unit in units:
        view = _observe_one(scene, unit, refused, watch, now)
        name = view.name
        if view.state == FAILED and retry_requested:
            if name in scene.jobs:
                plan.delete_jobs.append(name)  # same deterministic name: the new Job needs it free
            if view.recorded or view.plan_refused:
                plan.progress_status[name] = {"state": None, "completionTime": None, "lastError": None}
                if view.unit.planner:
                    plan.progress_status[name]["shardPlanRefused"] = None  # planned again, and refused again if it must be
            stale_shares = forget(scene.progresses.get(name))
            if stale_shares:
                plan.progress_status.setdefault(name, {}).update(stale_shares)
            view.state, view.last_error, view.recorded, view.plan_refused = PENDING, None, None, None
        views.append(view)
    return views


def _stop(views: list[UnitView], plan: Plan) -> None:
    for view in views:
        if view.state == RUNNING:
            plan.suspend_jobs.append(view.name)
            view.state = SUSPENDED


def _resume_and_count(scene: Scene, views: list[UnitView], plan: Plan) -> int:
    running = 0
    for view in views:
        if view.state == SUSPENDED:
            plan.resume_jobs.append(view.name)
            view.state = RUNNING
        if view.state == RUNNING:
            running += 1
        elif view.name in scene.jobs and job_active(scene.jobs[view.name]):
            running += 1  # its worker reported done, but its pod is still finishing
    return running


def _kms_gate(scene: Scene, observed: Observed, plan: Plan, startable: list[UnitView]) -> list[UnitView]:
    """The units that may start now. While a running worker may still apply a larger KMS share
    than a new Job's, no worker starts (kube/kms_shares.py; its acknowledgement wakes us); a
    planner, which makes no KMS request, does. One that never answers is waited for 30 s."""
    migration = observed.migration
    if all(v.unit.planner for v in startable):
        return startable
    held = hold(migration, observed.views, scene.progresses, scene.now)
    if held.waiting:
        observed.kms_waiting, observed.kms_recheck = [_label(v) for v in held.waiting], held.recheck
        return [v for v in startable if v.unit.planner]
    if held.overdue:
        plan.events.append(Event("Warning", "KmsShareNotAcknowledged",
                                 f"starting Jobs although {_some([_label(v) for v in held.overdue], 5)} did not acknowledge the lower KMS share "
                                 f"({migration.per_job_kms_rate()}/s) within {ACK_GRACE_SECONDS:.0f} s: the migration may exceed "
                                 "kmsRequestsPerSecond until they do (their KMS limiters back off on throttling)", now=True))
    return startable


def _start(scene: Scene, observed: Observed, plan: Plan) -> None:
    migration = observed.migration
    running = _resume_and_count(scene, observed.views, plan)
    startable = [v for v in observed.views if v.state == PENDING and v.name not in plan.delete_jobs]
    startable = _kms_gate(scene, observed, plan, startable[:max(0, migration.max_jobs - running)]) if startable else []
    failed = observed.totals["failed"]
    remaining = None if migration.max_failed_objects is None else migration.max_failed_objects - failed + 1
    for view in startable:
        if view.name not in scene.progresses:
            plan.create.append(progress_manifest(scene.km, migration, view.unit))
        plan.create.append(job_manifest(scene.km, migration, view.unit, scene.config, max_failures=remaining))
        view.state, view.start = RUNNING, view.start or scene.stamp
        if not _quiet(view):
            plan.events.append(Event("Normal", "JobCreated", f"Job {view.name} started for {view.unit.describe()}", now=True))


def schedule(scene: Scene, observed: Observed, plan: Plan) -> None:
    """Suspend everything when stopping; otherwise resume suspended Jobs and start queued ones."""
    if observed.migration.suspend or observed.too_many:
        _stop(observed.views, plan)
    elif observed.surroundings.worker_account is None:
        _start(scene, observed, plan)
    # else: no pod could run; Jobs created now would only pile up FailedCreate Events


def _record_outcomes(views: list[UnitView], scene: Scene, plan: Plan) -> None:
    """A unit that just finished (its worker said done, or its Job completed or failed) gets its
    outcome written into its progress object, where it outlives the Job's TTL and the 200 status
    rows; its Event is posted once, then, with the record (the next reconcile sees it recorded)."""
    rows = scene.previous_rows
    for view in views:
        if view.state not in FINISHED or view.recorded == view.state:
            continue
        view.completion = view.completion or scene.stamp
        if view.name not in scene.progresses:  # nowhere to record it: the status row remembers
            if rows.get(view.name, {}).get("state") != view.state:
                _outcome_event(view, plan)
            continue
        record = {"state": view.state, "completionTime": view.completion}
        if view.state == FAILED:
            record["lastError"] = view.last_error or "Job failed"
        plan.progress_status[view.name] = record
        _outcome_event(view, plan, now=True)


def _quiet(view: UnitView) -> bool:
    """Shards and inventory slices (up to thousands) post no Event for what goes as planned:
    their Jobs' creation and completion; failures, yes."""
    return view.unit.shard is not None or view.unit.files is not None


def _outcome_event(view: UnitView, plan: Plan, now: bool = False) -> None:
    what = f"prefix {view.prefix!r}" if not _quiet(view) and not view.unit.planner else view.unit.describe()
    if view.state == COMPLETED and not _quiet(view):
        plan.events.append(Event("Normal", "PrefixCompleted", f"{what}: {view.counters['migrated']} migrated, {view.counters['skipped']} skipped", now))
    elif view.state == COMPLETED_WITH_FAILURES:
        plan.events.append(Event("Warning", "PrefixCompletedWithFailures", f"{what}: {view.counters['failed']} objects failed (see the Job's report)", now))
    elif view.state == FAILED:
        plan.events.append(Event("Warning", "PrefixFailed", f"{what}: {view.last_error or 'Job failed'}"[:1024], now))


# -- verdicts: first match wins ---------------------------------------------------------------


def child_conflict(o: Observed) -> Verdict | None:
    conflicts = o.surroundings.conflicts
    if not conflicts:
        return None
    message = "; ".join(sorted(conflicts.values())[:3]) + (f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else "")
    return Verdict.stall("Stalled", "ChildConflict", message, o.summary(), event=Event("Warning", "ChildConflict", message[:1024]))


def worker_account_missing(o: Observed) -> Verdict | None:
    message = o.surroundings.worker_account
    if message is None:
        return None
    return Verdict.stall("Stalled", "WorkerServiceAccountMissing", message, o.summary(),
                         event=Event("Warning", "WorkerServiceAccountMissing", message[:1024]))


def workers_stuck(o: Observed) -> Verdict | None:
    stuck = [v for v in o.views if v.state == RUNNING and v.stuck]
    if not stuck:
        return None
    message = "; ".join(f"{v.unit.describe()}: {clip(v.stuck, MAX_ROW_ERROR)}" for v in stuck[:3]) + (f" (and {len(stuck) - 3} more)" if len(stuck) > 3 else "")
    return Verdict.stall("Stalled", "WorkerStuck", message, o.summary(), event=Event("Warning", "WorkerStuck", message[:1024]))


def too_many_failures(o: Observed) -> Verdict | None:
    if not o.too_many:
        return None
    message = f"{o.totals['failed']} objects failed, more than maxFailedObjects={o.migration.max_failed_objects}; Jobs suspended"
    suspended = Condition(True, "Suspended") if o.migration.suspend else NOT_SUSPENDED
    return Verdict.stall("Stalled", "TooManyFailures", message, message, suspended, event=Event("Warning", "TooManyFailures", message))


def suspended_by_spec(o: Observed) -> Verdict | None:
    if not o.migration.suspend or o.finished:
        return None
    summary = o.summary()
    return Verdict(
        "Suspended",
        ready=Condition(False, "Suspended", "suspended by spec.suspend; " + summary),
        reconciling=Condition(False, "Suspended", summary),
        stalled=Condition(False, "Suspended"),
        suspended=Condition(True, "Suspended", "spec.suspend is true"),
    )


def shard_plan_refused(o: Observed) -> Verdict | None:
    """A refused shard plan is refused again by a retry (the same objects, the same spec.shards,
    which cannot be changed): the message names the limit and the way out."""
    refused = [v for v in o.views if v.state == FAILED and v.plan_refused]
    if not (o.finished and refused):
        return None
    shown = "; ".join(f"the shard plan of prefix {v.prefix!r} was refused: {clip(v.plan_refused, MAX_ROW_ERROR)}" for v in refused[:3])
    more = f" (and {len(refused) - 3} more prefixes)" if len(refused) > 3 else ""
    others = o.counts[FAILED] - len(refused)
    message = (
        f"{shown}{more}; nothing is migrated under {'it' if len(refused) == 1 else 'them'}. spec.shards cannot be changed: "
        "delete this KeyMigration and create it again with fewer shards (spec.shards.count) or more objects per shard "
        "(spec.shards.objectsPerShard)" + (f"; {others} other {o.noun} failed" if others else "")
    )
    return Verdict.stall("Failed", "ShardPlanRefused", message, o.summary())


def prefixes_failed(o: Observed) -> Verdict | None:
    if not (o.finished and o.counts[FAILED]):
        return None
    failed = [v for v in o.views if v.state == FAILED]
    kind = {"prefixes": "prefix", "shards": "shard", "inventory slices": "inventory slice"}[o.noun]
    # Why, in the condition itself (not only in the status rows): the first failures' errors.
    why = "; ".join(f"{_label(v)}: {clip(v.last_error, MAX_CONDITION_ERROR)}" for v in failed[:3] if v.last_error)
    message = (
        f"{o.counts[FAILED]} {kind} Jobs failed ({', '.join(_label(v) for v in failed[:5])}); "
        + (f"{why}; " if why else "")
        + f"annotate {ANNOTATION_RETRY}=<new value> to retry"
    )
    return Verdict.stall("Failed", "PrefixFailed", message, o.summary())


def objects_failed(o: Observed) -> Verdict | None:
    if not (o.finished and o.totals["failed"]):
        return None
    message = f"{o.totals['failed']} objects failed; see the Jobs' reports (kubectl logs)"
    return Verdict.stall("CompletedWithFailures", "ObjectsFailed", message, o.summary())


def succeeded(o: Observed) -> Verdict | None:
    if not o.finished:
        return None
    message = f"all {len(o.views)} {o.noun} migrated: {o.totals['migrated']} objects migrated, {o.totals['skipped']} skipped"
    return Verdict(
        "Succeeded",
        ready=Condition(True, "Succeeded", message),
        reconciling=Condition(False, "Succeeded", message),
        stalled=Condition(False, "Succeeded"),
    )


def progressing(o: Observed) -> Verdict | None:
    summary = o.summary()
    return Verdict(
        "Running" if o.counts[RUNNING] else "Pending",
        ready=Condition(False, "Progressing", summary),
        reconciling=Condition(True, "Progressing", summary),
        stalled=Condition(False, "Progressing"),
    )


VERDICTS: tuple[Callable[[Observed], Verdict | None], ...] = (
    child_conflict,
    worker_account_missing,
    too_many_failures,
    suspended_by_spec,
    workers_stuck,
    shard_plan_refused,
    prefixes_failed,
    objects_failed,
    succeeded,
    progressing,
)


def decide(observed: Observed) -> Verdict:
    for verdict_of in VERDICTS:
        verdict = verdict_of(observed)
        if verdict is not None:
            return verdict
    raise AssertionError("progressing always decides")  # pragma: no cover


def _stalled_reason(status: dict) -> str | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return condition.get("reason")
    return None


def _phase_events(previous: dict, verdict: Verdict, observed: Observed) -> list[Event]:
    migration = observed.migration
    old_phase = previous.get("phase")
    events = []
    if old_phase in (None, "Invalid"):
        what = (f"the inventory {migration.inventory.manifest} in {migration.inventory.files} slices" if migration.inventory
                else f"{len(migration.prefixes)} prefixes" + (" in shards" if migration.shards else ""))
        events.append(Event("Normal", "Validated", f"spec accepted: {what} of s3://{migration.bucket} to {migration.target_key_id}"))
    entered = old_phase != verdict.phase or _stalled_reason(previous) != (verdict.stalled.reason if verdict.stalled.status else None)
    if verdict.event is not None and entered:
        events.append(verdict.event)
    if old_phase == verdict.phase:
        return events
    if verdict.phase == "Suspended":
        events.append(Event("Normal", "Suspended", "Jobs suspended"))
    elif old_phase == "Suspended":
        events.append(Event("Normal", "Resumed", "Jobs resumed"))
    if verdict.phase == "Succeeded":
        events.append(Event("Normal", "Succeeded", verdict.ready.message))
    return events


# -- status -----------------------------------------------------------------------------------


def _row(view: UnitView) -> dict:
    entry = {"prefix": view.prefix, "job": view.name, "state": view.state, "counters": view.counters}
    unit = view.unit
    for key, value in (("shard", unit.shard), ("startAfter", clip(unit.start_after, MAX_ROW_CHECKPOINT)),
                       ("endKey", clip(unit.end_key, MAX_ROW_CHECKPOINT)), ("files", unit.files),
                       ("total", view.total), ("checkpoint", clip(view.checkpoint, MAX_ROW_CHECKPOINT)),
                       ("lastError", clip(view.last_error, MAX_ROW_ERROR)),
                       ("startTime", view.start), ("completionTime", view.completion)):
        if value is not None:
            entry[key] = value
    return entry


def status_of(scene: Scene, observed: Observed, verdict: Verdict) -> dict:
    generation = scene.km["metadata"].get("generation", 1)
    previous = scene.previous
    # Unfinished first, in the units' order; with shards or an inventory (thousands of units) only
    # the unfinished and failed ones: the counts say the rest.
    ordered = [v for v in observed.views if v.state not in FINISHED]
    if observed.noun == "prefixes":
        ordered += [v for v in observed.views if v.state in FINISHED]
    else:
        ordered += [v for v in observed.views if v.state == FAILED]
    counts = observed.counts
    status = {
        "observedGeneration": generation,
        "phase": verdict.phase,
        "conditions": verdict.conditions(generation, previous, scene.stamp),
        "startTime": previous.get("startTime") or scene.stamp,
        "prefixesDone": f"{observed.done}/{len(observed.views)}",
        "prefixCounts": {
            "total": len(observed.views),
            "pending": counts[PENDING],
            "running": counts[RUNNING],
            "suspended": counts[SUSPENDED],
            "completed": observed.done,
            "failed": counts[FAILED],
        },
        "totals": observed.totals,
        "prefixes": [_row(view) for view in ordered[:MAX_STATUS_PREFIXES]],
        "prefixesTruncated": len(ordered) > MAX_STATUS_PREFIXES,
    }
    if observed.migration.shards is not None:
        status["prefixCounts"]["planning"] = observed.planning
        status["planning"] = _planning(scene)
    if observed.finished:
        status["completionTime"] = previous.get("completionTime") or scene.stamp
    if scene.retry is not None:
        status["retryGeneration"] = scene.retry
    return status


# -- the KMS budget, shared (kube/kms_shares.py) ------------------------------------------------


def _hand_out_kms(scene: Scene, observed: Observed, plan: Plan) -> int | None:
    """Write each running worker's share into its progress object, when it changed; the worker
    reads it back with its next progress write, moves its limiter's cap and acknowledges."""
    share = kms_share(observed.migration, observed.views)
    if share is None:
        return None
    for name, patch in hand_out(share, observed.views, scene.progresses, scene.stamp).items():
        plan.progress_status.setdefault(name, {}).update(patch)
    return share


def _measured_rate(scene: Scene, observed: Observed) -> float | None:
    """The running workers' mean rate (objects/s, from their progress objects), if any reported one."""
    rates = [float(((scene.progresses.get(v.name) or {}).get("status") or {}).get("rate") or 0) for v in observed.views if uses_kms(v)]
    rates = [r for r in rates if r > 0]
    return sum(rates) / len(rates) if rates else None


def _plan_summary(scene: Scene, observed: Observed, share: int | None) -> dict | None:
    """The expected duration: objects (the planners' estimate, else the workers' counts), the
    KMS budget, and the measured per-worker rate (else the measured default, docs/scale.md)."""
    migration = observed.migration
    objects = sum(int(p.get("estimatedObjects") or 0) for p in scene.plans.values()) or observed.totals["expected"]
    if not objects:
        return None
    workers = max(1, min(migration.max_jobs, len(observed.views)))
    rate = _measured_rate(scene, observed)
    estimate = DurationEstimate(objects, migration.verify, workers, rate, migration.kms_requests_per_second)
    whole = estimate.as_dict()
    remaining = DurationEstimate(max(0, objects - observed.totals["scanned"]), migration.verify, workers, rate,
                                 migration.kms_requests_per_second).as_dict()
    return {
        "objects": objects,
        "objectsFrom": "shard plan" if scene.plans else "workers' counts",
        "workers": workers,
        "workerObjectsPerSecond": round(estimate.rate_per_worker, 1),
        "workerRateFrom": "running workers" if rate else "measured default (docs/scale.md)",
        "kmsRequestsPerSecond": migration.kms_requests_per_second,
        "kmsRequestsPerObject": whole["kms_requests_per_object"],
        "kmsPerWorker": share,
        "expectedSeconds": int(whole["expected_seconds"]),
        "remainingSeconds": int(remaining["expected_seconds"]),
        "boundBy": whole["bound_by"],
        "summary": f"{human_duration(whole['expected_seconds'])} for {objects} objects ({workers} worker(s) at "
                   f"{estimate.rate_per_worker:.1f} objects/s; KMS {migration.kms_requests_per_second or 'unlimited'}/s; "
                   f"bound by {whole['bound_by']}); {human_duration(remaining['expected_seconds'])} remaining",
    }


def _planning(scene: Scene) -> dict:
    """How far shard planning got: prefixes planned, their shards and estimated objects."""
    plans = scene.plans.values()
    return {"prefixes": len(scene.migration.prefixes), "planned": len(scene.plans), "shards": sum(len(p["boundaries"]) + 1 for p in plans),
            "estimatedObjects": sum(int(p.get("estimatedObjects") or 0) for p in plans)}


def _refused(km: dict, event: Event, now: str) -> Plan:
    """Nothing is done for a KeyMigration whose spec is invalid (InvalidSpec) or asks for what the
    installation does not allow (NotAllowed): Stalled, the event's message saying why."""
    generation = km["metadata"].get("generation", 1)
    previous = km.get("status") or {}
    verdict = Verdict(
        "Invalid",
        ready=Condition(False, event.reason, event.message),
        reconciling=Condition(False, event.reason, "nothing to do until the spec is fixed"),
        stalled=Condition(True, event.reason, event.message),
    )
    status = {
        **{k: v for k, v in previous.items() if k not in ("conditions", "observedGeneration", "phase")},
        "observedGeneration": generation,
        "phase": verdict.phase,
        "conditions": verdict.conditions(generation, previous, now),
    }
    repeated = previous.get("phase") == "Invalid" and _stalled_reason(previous) == event.reason
    return Plan(status=status, events=[] if repeated else [Event(event.type, event.reason, event.message[:1024])])


def reconcile(km: dict, jobs: list[dict], progresses: list[dict], config: InstallConfig, now: datetime,
              surroundings: Surroundings | None = None) -> Plan:
    """One step of the control loop. Never re-runs a finished prefix."""
    stamp = utc_timestamp(now)
    try:
        migration = KeyMigration.from_fields(km.get("spec"))
    except InvalidKeyMigration as error:
        return _refused(km, Event("Warning", "InvalidSpec", "invalid spec: " + "; ".join(error.problems)), stamp)
    refusals = not_allowed(migration, km["metadata"].get("namespace", ""), config)
    if refusals:
        return _refused(km, Event("Warning", "NotAllowed", "not allowed by the operator's installation: " + "; ".join(refusals)), stamp)
    scene = Scene(
        km=km,
        migration=migration,
        jobs={j["metadata"]["name"]: j for j in jobs},
        progresses={p["metadata"]["name"]: p for p in progresses},
        previous=km.get("status") or {},
        config=config,
        now=now,
        stamp=stamp,
        surroundings=surroundings or Surroundings(),
    )
    plan = Plan()
    views = _observe_all(scene, plan, now)
    totals = _totals(views)
    too_many = migration.max_failed_objects is not None and totals["failed"] > migration.max_failed_objects
    observed = Observed(migration, views, totals, too_many, scene.surroundings)
    schedule(scene, observed, plan)
    _record_outcomes(views, scene, plan)
    share = _hand_out_kms(scene, observed, plan)
    observed.count()
    verdict = decide(observed)
    plan.events += _phase_events(scene.previous, verdict, observed)
    plan.status = status_of(scene, observed, verdict)
    summary = _plan_summary(scene, observed, share)
    if summary is not None:
        plan.status["plan"] = summary
    plan.recheck = _recheck(scene, observed)
    return plan


def _recheck(scene: Scene, observed: Observed) -> float | None:
    """Nothing wakes the operator while a Job waits for a pod that cannot start, while the
    worker ServiceAccount is missing, or while a worker does not acknowledge its lower KMS
    share: look again, so each surfaces (and clears) in time."""
    delays = []
    if scene.surroundings.worker_account or scene.surroundings.conflicts:
        delays.append(15.0)
    if any(v.waiting for v in observed.views):
        delays.append(max(2.0, min(10.0, scene.surroundings.stuck_after / 3)))
    if observed.kms_recheck is not None:
        delays.append(max(1.0, observed.kms_recheck))  # new Jobs wait for an acknowledgement this long at most
    return min(delays, default=None)


_MISSING = object()


def merge_patch(old: dict, new: dict) -> dict:
    """The RFC 7386 merge patch that turns ``old`` into ``new``: what changed, and ``None`` for
    every key ``new`` no longer has (a ``completionTime`` after a retry), nested objects patched
    key by key, lists and values replaced whole. Sending ``new`` itself would leave stale keys."""
    patch: dict = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    return patch


def status_changed(old: dict | None, new: dict) -> bool:
    """Whether a status write is needed (lastTransitionTime aside, conditions compared whole)."""
    return json.dumps(old or {}, sort_keys=True) != json.dumps(new, sort_keys=True)
