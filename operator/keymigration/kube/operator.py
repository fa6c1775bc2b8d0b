"""The operator: kopf handlers that only translate cluster events into calls of the pure
``reconcile`` step and apply its plan.

* Every event of a KeyMigration, of a labelled Job or of a KeyMigrationProgress enqueues the
  owning KeyMigration; one task per KeyMigration debounces and reconciles it, retrying with
  back-off on API errors. Only ``on.event`` handlers are used, so kopf puts no finalizer on a
  KeyMigration: deleting one never hangs, even with the operator uninstalled; the garbage
  collector removes its Jobs and progress objects through their owner references.
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

from keymigration.clock import utc_now, utc_timestamp
from keymigration.kube.api_types import GROUP, KIND, PLURAL, PROGRESS_PLURAL, VERSION
from keymigration.kube.jobs import ANNOTATION_MIGRATION, LABEL_MIGRATION_UID, InstallConfig
from keymigration.kube.kubeconfig import load_client_config
from keymigration.kube.metrics import OperatorMetrics
from keymigration.kube.reconcile import Plan, Surroundings, reconcile, status_changed

log = logging.getLogger("keymigration.operator")

CONFLICT_RECHECK_SECONDS = 15.0  # a conflicting object may be deleted by someone: look again


@dataclass
class OperatorOptions:
    config: InstallConfig = field(default_factory=InstallConfig)
    status_interval: float = 3.0
    debounce: float = 0.3
    resync_interval: float = 300.0
    metrics_port: int | None = 9090
    stall_seconds: float = 900.0


class KubeApi:
    """The few API calls the operator makes, with the synchronous kubernetes client in threads."""

    def __init__(self):
        from kubernetes import client

        load_client_config()
        self.client = client
        self.custom = client.CustomObjectsApi()
        self.batch = client.BatchV1Api()
        self.core = client.CoreV1Api()
        self.ApiException = client.exceptions.ApiException

    def get_migration(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except self.ApiException as error:
            if error.status == 404:
                return None
            raise

    def children(self, namespace: str, uid: str) -> tuple[list[dict], list[dict]]:
        selector = f"{LABEL_MIGRATION_UID}={uid}"
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        job_items = _json(jobs).get("items", [])
        progress = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PROGRESS_PLURAL, label_selector=selector)
        # Filter by owner too: a selector is a hint (and some API fakes ignore it).
        return [j for j in job_items if _owned(j, uid)], [p for p in progress.get("items", []) if _owned(p, uid)]

    def create(self, obj: dict) -> None:
        """Create a child; a 409 AlreadyExists is success only when the existing object is owned by
        the same KeyMigration (a re-run after a crash), else ``ChildConflict`` names it."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            if obj["kind"] == "Job":
                self.batch.create_namespaced_job(namespace, obj)
            else:
                self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PROGRESS_PLURAL, obj)
        except self.ApiException as error:
            if error.status != 409:
                raise
            existing = self._get_child(obj["kind"], namespace, name)
            owner = obj["metadata"]["ownerReferences"][0]
            if existing is not None and not _owned(existing, owner["uid"]):
                raise ChildConflict(obj["kind"], namespace, name, existing) from None

    def _get_child(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            if kind == "Job":
                return _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PROGRESS_PLURAL, name)
        except self.ApiException as error:
            if error.status == 404:
                return None  # gone meanwhile: the next reconcile creates it
            raise

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except self.ApiException as error:
            if error.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def post_event(self, km: dict, type_: str, reason: str, message: str) -> None:
        meta = km["metadata"]
        now = utc_timestamp()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "keymigration-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except self.ApiException as error:  # events are best effort
            log.warning("could not post event %s: %s", reason, error.status)


def _json(response) -> dict:
    import json

    return json.loads(response.data)


def _owned(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or ())


class ChildConflict(Exception):
    """A Job or progress object of the planned name exists and belongs to something else."""

    def __init__(self, kind: str, namespace: str, name: str, existing: dict):
        owners = [f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})" for ref in existing["metadata"].get("ownerReferences") or ()]
        self.name = name
        self.message = (
            f"{kind} {namespace}/{name} already exists and is not owned by this KeyMigration "
            f"(owner: {', '.join(owners) or 'none'}); delete or rename it"
        )
        super().__init__(self.message)


class Reconciler:
    """A per-KeyMigration work queue: debounced, one reconcile at a time per object."""

    def __init__(self, api: KubeApi, settings: OperatorOptions, metrics: OperatorMetrics | None = None):
        self.api = api
        self.settings = settings
        self.metrics = metrics or OperatorMetrics(settings.stall_seconds)
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.last_status_write: dict[tuple[str, str], float] = {}
        self.known: set[tuple[str, str]] = set()
        self.conflicts: dict[tuple[str, str], dict[str, str]] = {}
        self.reconciles = 0

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.known.add(key)
        self.dirty.add(key)
        task = self.tasks.get(key)
        if task is None or task.done():
            self.tasks[key] = asyncio.get_running_loop().create_task(self._loop(key), name=f"reconcile {namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        self.known.discard((namespace, name))
        self.last_status_write.pop((namespace, name), None)
        self.conflicts.pop((namespace, name), None)
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
                backoff = min(backoff * 2, 60.0)
                self.dirty.add(key)
                continue
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            if delay:
                await asyncio.sleep(delay)
                self.dirty.add(key)

    async def reconcile_once(self, namespace: str, name: str) -> float | None:
        """One reconcile; returns a delay after which to look again (a deferred status write)."""
        km = await asyncio.to_thread(self.api.get_migration, namespace, name)
        if km is None:
            self.forget(namespace, name)
            return None
        jobs, progresses = await asyncio.to_thread(self.api.children, namespace, km["metadata"]["uid"])
        surroundings = Surroundings(conflicts=dict(self.conflicts.get((namespace, name), {})))
        plan = reconcile(km, jobs, progresses, self.settings.config, utc_now(), surroundings)
        self.reconciles += 1
        self.metrics.migrations.record(namespace, name, plan.status, progresses)
        return await self.apply(km, plan)

    async def apply(self, km: dict, plan: Plan) -> float | None:
        """Carry out a plan: the actions first, then (rate-limited) the status and its events."""
        await self._act(km, plan)
        recheck = CONFLICT_RECHECK_SECONDS if self.conflicts.get((km["metadata"]["namespace"], km["metadata"]["name"])) else None
        if not status_changed(km.get("status"), plan.status):
            return recheck
        wait = self._status_wait(km, plan)
        if wait > 0:
            return wait  # bounded write rate: look again (and write) when the interval has passed
        await self._write_status(km, plan)
        return recheck

    async def _act(self, km: dict, plan: Plan) -> None:
        namespace = km["metadata"]["namespace"]
        for job in plan.delete_jobs:
            await asyncio.to_thread(self.api.delete_job, namespace, job)
        await self._create(km, plan.create)
        for names, suspend in ((plan.suspend_jobs, True), (plan.resume_jobs, False)):
            for job in names:
                await asyncio.to_thread(self.api.set_job_suspended, namespace, job, suspend)
        # Tied to an action taken now, not to a status transition: posted at once.
        await self._post(km, [e for e in plan.events if e.reason == "JobCreated"])

    async def _create(self, km: dict, objects: list[dict]) -> None:
        """Create the planned children; a name taken by a foreign object is remembered (the next
        reconcile reports it as Stalled, ChildConflict) and asked again at every reconcile."""
        key = (km["metadata"]["namespace"], km["metadata"]["name"])
        before = self.conflicts.pop(key, {})
        conflicts: dict[str, str] = {}
        for obj in objects:
            if obj["kind"] == "Job" and obj["metadata"]["name"] in conflicts:
                continue  # its progress object's name is taken: the Job would find no checkpoint store
            try:
                await asyncio.to_thread(self.api.create, obj)
            except ChildConflict as conflict:
                conflicts[conflict.name] = conflict.message
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
        await asyncio.to_thread(self.api.patch_status, namespace, name, plan.status)
        self.metrics.status_writes.inc()
        self.last_status_write[(namespace, name)] = time.monotonic()
        # Transitions: posted once, with the status that records them.
        await self._post(km, [e for e in plan.events if e.reason != "JobCreated"])

    async def _post(self, km: dict, events: list) -> None:
        for event in events:
            await asyncio.to_thread(self.api.post_event, km, event.type, event.reason, event.message)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            for namespace, name in list(self.known):
                self.enqueue(namespace, name)


def _configure(settings: kopf.OperatorSettings) -> None:
    # Brand kopf's storage with our API group; kopf's defaults would be kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.consistency_timeout = 0
    settings.posting.enabled = False  # our own Events only; never kopf's handler logs as Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


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


def _register_watches(registry: kopf.OperatorRegistry, reconciler) -> None:
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def migration_event(event, namespace, name, **_):
        if event.get("type") == "DELETED":
            reconciler().forget(namespace, name)
            return
        reconciler().enqueue(namespace, name)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_MIGRATION_UID: kopf.PRESENT}, registry=registry)
    async def job_event(namespace, body, **_):
        _enqueue_owner(reconciler(), namespace, body)

    @kopf.on.event(GROUP, VERSION, PROGRESS_PLURAL, labels={LABEL_MIGRATION_UID: kopf.PRESENT}, registry=registry)
    async def progress_event(namespace, body, **_):
        _enqueue_owner(reconciler(), namespace, body)


def _enqueue_owner(reconciler, namespace: str, body) -> None:
    """A child's event wakes its KeyMigration, named in the child's annotation (a label value
    cannot hold every valid name)."""
    name = (body.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_MIGRATION)
    if name:
        reconciler.enqueue(namespace, name)


def build_registry(settings: OperatorOptions, api_factory=KubeApi) -> tuple[kopf.OperatorRegistry, dict]:
    """A fresh kopf registry with the operator's handlers (tests build one per operator)."""
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
