"""The operator's writes to the Kubernetes API (reads come from the watch cache, kube/cache.py).

The synchronous ``kubernetes`` client, called from threads. Custom resources are written with
merge patches (a strategic merge patch is refused with 415 for them).
"""
from __future__ import annotations

import json
import logging

from keymigration import __version__
from keymigration.clock import utc_timestamp
from keymigration.kube.api_types import GROUP, KIND, PLURAL, PROGRESS_PLURAL, VERSION
from keymigration.kube.kubeconfig import load_client_config

log = logging.getLogger("keymigration.operator")
USER_AGENT = f"keymigration-operator/{__version__}"


# Every (API group, resource, verb) the operator needs, and nothing more: the chart's RBAC is
# exactly this (tests/chart), and every request the operator makes in the end-to-end tests is in
# it (tests/k8s). kopf lists and watches what it indexes or watches, and the CRDs it discovers.
OPERATOR_RBAC = frozenset({
    ("keymigration.io", "keymigrations", "list"), ("keymigration.io", "keymigrations", "watch"),
    ("keymigration.io", "keymigrations/status", "patch"),
    # Not a request: OwnerReferencesPermissionEnforcement lets a child name its owner with
    # blockOwnerDeletion only if the creator may update the owner's finalizers.
    ("keymigration.io", "keymigrations/finalizers", "update"),
    ("keymigration.io", "keymigrationprogresses", "create"), ("keymigration.io", "keymigrationprogresses", "get"),
    ("keymigration.io", "keymigrationprogresses", "list"), ("keymigration.io", "keymigrationprogresses", "watch"),
    ("keymigration.io", "keymigrationprogresses/status", "patch"),
    ("batch", "jobs", "create"), ("batch", "jobs", "get"), ("batch", "jobs", "list"), ("batch", "jobs", "watch"),
    ("batch", "jobs", "patch"), ("batch", "jobs", "delete"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("", "serviceaccounts", "get"),
    ("", "events", "create"), ("", "events", "list"),
})
OPERATOR_CLUSTER_RBAC = frozenset({
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
})


def owned(obj: dict, uid: str) -> bool:
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


def _json(response) -> dict:
    return json.loads(response.data)


class KubeApi:
    """The few API calls the operator makes; each returns what the server answered, so the
    cache can use it before the watch brings it."""

    def __init__(self):
        from kubernetes import client

        load_client_config()
        api_client = client.ApiClient()
        api_client.user_agent = USER_AGENT  # audit logs (and tests) tell the operator's requests apart
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ApiException = client.exceptions.ApiException

    def create(self, obj: dict) -> dict | None:
        """Create a child; a 409 AlreadyExists is success only when the existing object is owned by
        the same KeyMigration (a re-run after a crash), else ``ChildConflict`` names it."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            if obj["kind"] == "Job":
                return _json(self.batch.create_namespaced_job(namespace, obj, _preload_content=False))
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PROGRESS_PLURAL, obj)
        except self.ApiException as error:
            if error.status != 409:
                raise
            existing = self._get_child(obj["kind"], namespace, name)
            owner = obj["metadata"]["ownerReferences"][0]
            if existing is not None and not owned(existing, owner["uid"]):
                raise ChildConflict(obj["kind"], namespace, name, existing) from None
            return existing

    def _get_child(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            if kind == "Job":
                return _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PROGRESS_PLURAL, name)
        except self.ApiException as error:
            if error.status == 404:
                return None  # gone meanwhile: the next reconcile creates it
            raise

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> dict:
        return _json(self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False))

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except self.ApiException as error:
            if error.status != 404:
                raise

    def patch_progress_status(self, namespace: str, name: str, patch: dict) -> dict | None:
        """Merge-patch a progress object's status (a prefix's recorded outcome); None if it is gone."""
        try:
            return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PROGRESS_PLURAL, name,
                                                                     {"status": patch})
        except self.ApiException as error:
            if error.status != 404:
                raise
            return None

    def patch_status(self, namespace: str, name: str, patch: dict) -> dict:
        """Merge-patch a KeyMigration's status; returns the object as stored."""
        return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": patch})

    def service_account_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_service_account(name, namespace, _preload_content=False)
            return True
        except self.ApiException as error:
            if error.status == 404:
                return False
            raise

    def newest_warning(self, namespace: str, kind: str, name: str) -> str | None:
        """The message of the newest Warning Event about one object (FailedCreate on a Job,
        FailedMount, FailedScheduling or a failed image pull on a pod)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name},type=Warning"
        events = _json(self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)).get("items", [])
        if not events:
            return None
        newest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp") or "")
        return newest.get("message")

    def post_event(self, km: dict, type_: str, reason: str, message: str) -> None:
        meta = km["metadata"]
        now = utc_timestamp()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
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


__all__ = ["OPERATOR_CLUSTER_RBAC", "OPERATOR_RBAC", "ChildConflict", "KubeApi", "owned"]
