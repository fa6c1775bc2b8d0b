"""The operator: kopf handlers that only translate cluster events into calls of the pure
``reconcile`` step and apply its plan.

* Every event of a KeyMigration, of one of its Jobs or of a KeyMigrationProgress enqueues the
  owning KeyMigration; one task per KeyMigration debounces and reconciles it, retrying with
  back-off on API errors. Only ``on.event`` and ``index`` handlers are used, so kopf puts no
  finalizer on a KeyMigration: deleting one never hangs, even with the operator uninstalled; the
  garbage collector removes its Jobs and progress objects through their owner references.
* A reconcile reads nothing from the API server: kopf indices hold the latest KeyMigrations,
  Jobs and progress objects from the watch streams (kube/cache.py), and the watches of Jobs and
  progress objects select the operator's own children on the server (a label selector).
* ``KeyMigration.status`` is written only by this process, only when it changed, and at most
  once per ``status_interval`` seconds per object (progress arrives within about 10 s).
* kopf's own storage (should any be used) is branded with the project's API group.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import kopf

from keymigration.clock import utc_now
from keymigration.kube.api_types import GROUP, PLURAL, PROGRESS_PLURAL, VERSION
from keymigration.kube.cache import Children, KopfView, Overlay, trimmed, trimmed_job
from keymigration.kube.jobs import ANNOTATION_MIGRATION, LABEL_MIGRATION_UID, MANAGED_BY, InstallConfig
from keymigration.kube.kubeapi import ChildConflict, KubeApi
from keymigration.kube.metrics import OperatorMetrics
from keymigration.kube.reconcile import Plan, Surroundings, merge_patch, reconcile, status_changed
from keymigration.kube.units import age_seconds, job_active

log = logging.getLogger("keymigration.operator")

ACCOUNT_CHECK_SECONDS = 10.0  # how long a worker ServiceAccount lookup is trusted
WARNING_CHECK_SECONDS = 15.0  # how often the Events of one waiting Job or pod are read
SUSPECT_AFTER_SECONDS = 5.0  # a Job or pod without a running pod this long has its Events read
MANAGED_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
PROGRESS_SPEC_KEYS = ("prefix", "planner", "shard", "startAfter", "endKey", "files")  # what a reconcile reads of a progress spec
INDICES = ("migrations", "migration_jobs", "migration_progresses", "migration_pods")  # KopfView's order


# A failed reconcile is retried after 1, 2, 4, 8 s, then every 8 s: a reconcile reads only the
# watch cache and its writes are idempotent, so retrying often costs the API server little,
# while a 60 s cap stalled a migration for minutes when one request in four was refused (429/5xx).
MAX_RECONCILE_BACKOFF = 8.0


@dataclass
class OperatorOptions:
    config: InstallConfig = field(default_factory=InstallConfig)
    status_interval: float = 3.0
    debounce: float = 0.3
    resync_interval: float = 300.0
    metrics_port: int | None = 9090
    stall_seconds: float = 900.0
    stuck_seconds: float = 30.0  # a Job without a running pod this long is reported (WorkerStuck)


def _rv(obj: dict | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class Reconciler:
    """A per-KeyMigration work queue: debounced, one reconcile at a time per object."""

    def __init__(self, api: KubeApi, settings: OperatorOptions, metrics: OperatorMetrics | None = None, view=None):
        self.api = api
        self.settings = settings
        self.metrics = metrics or OperatorMetrics(settings.stall_seconds)
        self.view = view  # KopfView, bound at the first event
        self.overlay = Overlay()
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.wake: dict[tuple[str, str], asyncio.Event] = {}  # cuts a loop's wait short when an event comes
        self.last_status_write: dict[tuple[str, str], float] = {}
        self.written: dict[tuple[str, str], dict] = {}  # the KeyMigration as our last status write stored it
        self.known: dict[tuple[str, str], str] = {}  # -> uid
        self.conflicts: dict[tuple[str, str], dict[str, str]] = {}
        self.accounts: dict[str, tuple[float, bool]] = {}  # namespace -> (when, the worker ServiceAccount exists)
        self.warnings: dict[tuple[str, str, str], tuple[float, str | None]] = {}  # (ns, kind, name) -> (when, message)
        self.reconciles = 0

    def bind(self, view) -> None:
        if self.view is None:
            self.view = view

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.known.setdefault(key, "")
        self.dirty.add(key)
        if key in self.wake:
            self.wake[key].set()
        task = self.tasks.get(key)
        if task is None or task.done():
            self.tasks[key] = asyncio.get_running_loop().create_task(self._loop(key), name=f"reconcile {namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        uid = self.known.pop(key, "")
        if uid:
            self.overlay.forget(uid)
        for table in (self.last_status_write, self.written, self.conflicts, self.wake):
            table.pop(key, None)
        self.metrics.migrations.forget(namespace, name)

    async def _loop(self, key: tuple[str, str]) -> None:
        backoff = 1.0
        while key in self.dirty:
            await asyncio.sleep(self.settings.debounce)
            self.dirty.discard(key)
            started = time.monotonic()
            try:
                delay = await self.reconcile_once(*key)
                backoff = 1.0
                self.metrics.reconciles.labels("ok").inc()
            except Exception as error:
                self.metrics.reconciles.labels("error").inc()
                log.warning("reconcile of %s/%s failed (%s); retrying in %.0f s", *key, type(error).__name__, backoff,
                            extra={"namespace": key[0], "migration": key[1]})
                log.debug("reconcile failure", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RECONCILE_BACKOFF)
                self.dirty.add(key)
                continue
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            if delay:
                await self._wait(key, delay)
                self.dirty.add(key)

    async def _wait(self, key: tuple[str, str], delay: float) -> None:
        """Sleep ``delay`` seconds, or less when an event for this KeyMigration comes: a Job that
        finishes while the loop waits to look at a pending pod again must not wait for it (a
        plain sleep held the next Job back by up to 10 s; the status write stays rate-limited by
        its own clock, ``_status_wait``)."""
        if key in self.dirty:  # an event came during the reconcile
            return
        event = self.wake.setdefault(key, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _migration(self, namespace: str, name: str) -> dict | None:
        """The KeyMigration as the watch has it, or as our own last status write stored it when
        that is newer (the watch event of a write may come after the next reconcile)."""
        km = self.view.migration(namespace, name) if self.view is not None else None
        written = self.written.get((namespace, name))
        if km is None or written is None:
            return km
        if written["metadata"].get("uid") == km["metadata"].get("uid") and _rv(written) > _rv(km):
            return written
        return km

    def _children(self, uid: str) -> Children:
        seen = self.view.children(uid)
        return Children(self.overlay.apply(uid, "Job", seen.jobs), self.overlay.apply(uid, "KeyMigrationProgress", seen.progresses),
                        seen.pods)

    async def reconcile_once(self, namespace: str, name: str) -> float | None:
        """One reconcile; returns a delay after which to look again (a deferred status write)."""
        km = self._migration(namespace, name)
        if km is None:
            self.forget(namespace, name)
            return None
        uid = km["metadata"]["uid"]
        self.known[(namespace, name)] = uid
        children = self._children(uid)
        surroundings = await self._surroundings(km, children)
        plan = reconcile(km, children.jobs, children.progresses, self.settings.config, utc_now(), surroundings)
        self.reconciles += 1
        self.metrics.migrations.record(namespace, name, plan.status, children.progresses)
        return await self.apply(km, plan, children)

    async def _surroundings(self, km: dict, children: Children) -> Surroundings:
        namespace = km["metadata"]["namespace"]
        return Surroundings(
            conflicts=dict(self.conflicts.get((namespace, km["metadata"]["name"]), {})),
            pods=children.pods_by_job(),
            warnings=await self._warnings(namespace, children),
            worker_account=await self._worker_account(namespace),
            stuck_after=self.settings.stuck_seconds,
        )

    async def _worker_account(self, namespace: str) -> str | None:
        """Why no worker pod can run in ``namespace`` (its ServiceAccount is missing), if so:
        in a cluster-wide install a KeyMigration may come from a namespace the chart did not
        prepare, and its Jobs would only collect FailedCreate Events."""
        account = self.settings.config.worker_service_account
        when, exists = self.accounts.get(namespace, (0.0, True))
        if time.monotonic() - when > ACCOUNT_CHECK_SECONDS:
            exists = await asyncio.to_thread(self.api.service_account_exists, namespace, account)
            self.accounts[namespace] = (time.monotonic(), exists)
        if exists:
            return None
        return (f"the worker ServiceAccount {account} does not exist in namespace {namespace}, so no worker pod can "
                f"start: add {namespace} to the chart's worker.namespaces (or watchNamespaces), or create it")

    async def _warnings(self, namespace: str, children: Children) -> dict[str, str]:
        """The newest Warning Event of each Job without a pod and each pod that has not started,
        once they have waited a few seconds (read again at most every WARNING_CHECK_SECONDS)."""
        found: dict[str, str] = {}
        for kind, name in _suspects(children, SUSPECT_AFTER_SECONDS)[:20]:
            key = (namespace, kind, name)
            when, message = self.warnings.get(key, (0.0, None))
            if time.monotonic() - when > WARNING_CHECK_SECONDS:
                message = await asyncio.to_thread(self.api.newest_warning, namespace, kind, name)
                self.warnings[key] = (time.monotonic(), message)
            if message:
                found[name] = message
        return found

    async def apply(self, km: dict, plan: Plan, children: Children | None = None) -> float | None:
        """Carry out a plan: the actions first, then (rate-limited) the status and its events."""
        await self._act(km, plan, children or Children())
        recheck = plan.recheck
        if not status_changed(km.get("status"), plan.status):
            return recheck
        wait = self._status_wait(km, plan)
        if wait > 0:
            return wait  # bounded write rate: look again (and write) when the interval has passed
        await self._write_status(km, plan)
        return recheck

    async def _act(self, km: dict, plan: Plan, children: Children) -> None:
        namespace, uid = km["metadata"]["namespace"], km["metadata"]["uid"]
        jobs = {j["metadata"]["name"]: j for j in children.jobs}
        # Outcomes first: a prefix's recorded outcome must be cleared before its Job is deleted
        # for a retry, and recorded before a status that counts it is written.
        for name, patch in plan.progress_status.items():
            stored = await asyncio.to_thread(self.api.patch_progress_status, namespace, name, patch)
            if stored is not None:
                self.overlay.wrote(uid, "KeyMigrationProgress", trimmed(stored, PROGRESS_SPEC_KEYS))
        for job in plan.delete_jobs:
            await asyncio.to_thread(self.api.delete_job, namespace, job)
            self.overlay.deleted(uid, "Job", job, jobs.get(job))
        await self._create(km, plan.create)
        for names, suspend in ((plan.suspend_jobs, True), (plan.resume_jobs, False)):
            for job in names:
                stored = await asyncio.to_thread(self.api.set_job_suspended, namespace, job, suspend)
                self.overlay.wrote(uid, "Job", trimmed_job(stored))
        # Tied to an action taken now, not to a status transition: posted at once.
        await self._post(km, [e for e in plan.events if e.now])

    async def _create(self, km: dict, objects: list[dict]) -> None:
        """Create the planned children; a name taken by a foreign object is remembered (the next
        reconcile reports it as Stalled, ChildConflict) and asked again at every reconcile."""
        key, uid = (km["metadata"]["namespace"], km["metadata"]["name"]), km["metadata"]["uid"]
        before = self.conflicts.pop(key, {})
        conflicts: dict[str, str] = {}
        for obj in objects:
            if obj["kind"] == "Job" and obj["metadata"]["name"] in conflicts:
                continue  # its progress object's name is taken: the Job would find no checkpoint store
            try:
                stored = await asyncio.to_thread(self.api.create, obj)
            except ChildConflict as conflict:
                conflicts[conflict.name] = conflict.message
                continue
            if stored is not None:
                self.overlay.wrote(uid, obj["kind"], trimmed_job(stored) if obj["kind"] == "Job" else trimmed(stored))
        if conflicts:
            self.conflicts[key] = conflicts
        if conflicts != before:
            self.dirty.add(key)  # reconcile again at once, to report (or clear) them

    def _status_wait(self, km: dict, plan: Plan) -> float:
        """Seconds to wait before this status may be written (0: now). The first status, and one
        that records created or deleted Jobs, is written at once."""
        if not km.get("status") or plan.create or plan.delete_jobs:
            return 0.0
        key = (km["metadata"]["namespace"], km["metadata"]["name"])
        return self.settings.status_interval - (time.monotonic() - self.last_status_write.get(key, 0.0))

    async def _write_status(self, km: dict, plan: Plan) -> None:
        namespace, name = km["metadata"]["namespace"], km["metadata"]["name"]
        patch = merge_patch(km.get("status") or {}, plan.status)
        stored = await asyncio.to_thread(self.api.patch_status, namespace, name, patch)
        if isinstance(stored, dict) and stored.get("metadata"):
            self.written[(namespace, name)] = stored
        self.metrics.status_writes.inc()
        self.last_status_write[(namespace, name)] = time.monotonic()
        # Transitions: posted once, with the status that records them.
        await self._post(km, [e for e in plan.events if not e.now])

    async def _post(self, km: dict, events: list) -> None:
        for event in events:
            await asyncio.to_thread(self.api.post_event, km, event.type, event.reason, event.message)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            for namespace, name in list(self.known):
                self.enqueue(namespace, name)


def _suspects(children: Children, after: float) -> list[tuple[str, str]]:
    """Jobs with no pod, and pods not running, for ``after`` seconds or more: their Events say why."""
    now = utc_now()
    pods = children.pods_by_job()
    suspects = [("Job", j["metadata"]["name"]) for j in children.jobs
                if job_active(j) and not pods.get(j["metadata"]["name"]) and age_seconds(j["metadata"], now) >= after]
    suspects += [("Pod", p["metadata"]["name"]) for p in children.pods
                 if (p.get("status") or {}).get("phase", "Pending") == "Pending" and age_seconds(p["metadata"], now) >= after]
    return suspects


def _configure(settings: kopf.OperatorSettings) -> None:
    # Brand kopf's storage with our API group; kopf's defaults would be kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.consistency_timeout = 0
    settings.posting.enabled = False  # our own Events only; never kopf's handler logs as Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Only the operator's own children, selected on the server: a cluster-wide operator must not
    # receive every Job of the cluster.
    settings.watching.label_selectors["batch", "jobs"] = MANAGED_SELECTOR
    settings.watching.label_selectors[GROUP, PROGRESS_PLURAL] = MANAGED_SELECTOR
    settings.watching.label_selectors["v1", "pods"] = MANAGED_SELECTOR


def _register_lifecycle(registry: kopf.OperatorRegistry, state: dict, reconciler) -> None:
    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # A private registry gets none of kopf's default login handlers: in a pod the
        # ServiceAccount token, elsewhere the kubeconfig (KUBECONFIG).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_):
        _configure(settings)
        # Created now, not at the first event, so /metrics answers from the start.
        state["resync"] = asyncio.get_running_loop().create_task(reconciler().resync())

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_):
        for task in [state.get("resync"), *getattr(state.get("reconciler"), "tasks", {}).values()]:
            if task is not None:
                task.cancel()


def _register_indices(registry: kopf.OperatorRegistry) -> None:
    # Explicit ids: an index reaches handlers as a keyword argument of its id.
    @kopf.index(GROUP, VERSION, PLURAL, id="migrations", registry=registry)
    def migrations(namespace, name, body, **_):
        return {(namespace, name): trimmed(body, tuple(body.get("spec") or ()))}

    @kopf.index("batch", "v1", "jobs", labels={LABEL_MIGRATION_UID: kopf.PRESENT}, id="migration_jobs", registry=registry)
    def migration_jobs(labels, body, **_):
        return {labels[LABEL_MIGRATION_UID]: trimmed_job(body)}

    @kopf.index(GROUP, VERSION, PROGRESS_PLURAL, labels={LABEL_MIGRATION_UID: kopf.PRESENT}, id="migration_progresses",
                registry=registry)
    def migration_progresses(labels, body, **_):
        return {labels[LABEL_MIGRATION_UID]: trimmed(body, PROGRESS_SPEC_KEYS)}

    # The workers' pods: why a prefix cannot start (pending) or keeps failing at start-up (their
    # termination messages), when the worker could not write it to its progress object.
    @kopf.index("v1", "pods", labels={LABEL_MIGRATION_UID: kopf.PRESENT}, id="migration_pods", registry=registry)
    def migration_pods(labels, body, **_):
        return {labels[LABEL_MIGRATION_UID]: trimmed(body)}


def _register_watches(registry: kopf.OperatorRegistry, reconciler) -> None:
    def bound(indices: dict) -> Reconciler:
        found = reconciler()
        found.bind(KopfView(*(indices[name] for name in INDICES)))
        return found

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def migration_event(event, namespace, name, **kwargs):
        found = bound(kwargs)
        if event.get("type") == "DELETED":
            found.forget(namespace, name)
            return
        found.enqueue(namespace, name)

    for group_version, plural in (("batch/v1", "jobs"), (f"{GROUP}/{VERSION}", PROGRESS_PLURAL), ("v1", "pods")):
        @kopf.on.event(group_version, plural, labels={LABEL_MIGRATION_UID: kopf.PRESENT}, id=f"{plural}_event", registry=registry)
        async def child_event(namespace, body, **kwargs):
            _enqueue_owner(bound(kwargs), namespace, body)


def _enqueue_owner(reconciler: Reconciler, namespace: str, body) -> None:
    """A child's event wakes its KeyMigration, named in the child's annotation (a label value
    cannot hold every valid name)."""
    name = (body.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_MIGRATION)
    if name:
        reconciler.enqueue(namespace, name)


def quiet_toggle_sets() -> None:
    """Make kopf's index start-up linear in the objects it indexes.

    kopf (1.45, and upstream as of this writing) holds back every handler until the indices hold
    the initial listing: each listed object of an indexed kind adds a toggle to one ``ToggleSet``,
    indexes itself, drops its toggle and waits for the set to be on; every add and every drop
    wakes *every* waiter (``notify_all``). With n objects that is about n^2 / 2 wake-ups: an
    operator restarting with 2,000 finished shards' progress objects spent 90 s before its first
    reconcile, 30,000 (Jobs, pods and progress objects of 10,000 shards) would take hours
    (bench/operator_bench.py --shards, docs/scale.md). A waiter waits for the set's state, which
    an add or a drop changes only when it flips: notifying then only is the same for every
    waiter, and n wake-ups in all."""
    from kopf._cogs.aiokits import aiotoggles

    toggle_set = aiotoggles.ToggleSet
    if getattr(toggle_set, "_keymigration_quiet", False):
        return

    async def changed(self, change) -> None:
        async with self._condition:
            before = self.is_on()
            change(self._toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    async def make_toggle(self, __val: bool = False, *, name: str | None = None):
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        await changed(self, lambda toggles: toggles.add(toggle))
        return toggle

    async def drop_toggle(self, toggle) -> None:
        await changed(self, lambda toggles: toggles.discard(toggle))

    async def drop_toggles(self, toggles) -> None:
        dropped = list(toggles)
        await changed(self, lambda present: present.difference_update(dropped))

    toggle_set.make_toggle, toggle_set.drop_toggle, toggle_set.drop_toggles = make_toggle, drop_toggle, drop_toggles
    toggle_set._keymigration_quiet = True


def build_registry(settings: OperatorOptions, api_factory=KubeApi) -> tuple[kopf.OperatorRegistry, dict]:
    """A fresh kopf registry with the operator's handlers (tests build one per operator)."""
    quiet_toggle_sets()
    registry = kopf.OperatorRegistry()
    state: dict = {}

    def reconciler() -> Reconciler:
        if "reconciler" not in state:
            metrics = OperatorMetrics(settings.stall_seconds)
            if settings.metrics_port:
                metrics.serve(settings.metrics_port)
            state["reconciler"] = Reconciler(api_factory(), settings, metrics)
        return state["reconciler"]

    _register_lifecycle(registry, state, reconciler)
    _register_indices(registry)
    _register_watches(registry, reconciler)
    return registry, state


def run_operator(
    settings: OperatorOptions,
    namespaces: list[str],
    all_namespaces: bool,
    liveness: str | None,
    standalone: bool = True,
    stop_flag=None,
    ready_flag=None,
) -> None:
    registry, _ = build_registry(settings)
    kopf.run(
        registry=registry,
        standalone=standalone,
        clusterwide=all_namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
