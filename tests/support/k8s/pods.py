"""The Pod objects and Events the Job controller, the scheduler and the kubelet would write.

``JobRunner`` runs a Job's pod as a local process; this module makes the cluster show it the way
a real one does, so an operator watching pods and Events sees what it would see in production:

* ``Pod`` objects (owned by the Job, labelled with its template's labels), whose status moves
  Pending -> Running -> Succeeded/Failed, with the container's ``waiting`` reason while it cannot
  start (``ContainerCreating``, ``ErrImagePull``/``ImagePullBackOff``,
  ``CreateContainerConfigError``), ``PodScheduled=False``/``Unschedulable``, and at the end a
  ``terminated`` state with the exit code and the termination message;
* core ``v1`` Events: ``FailedCreate`` on the Job (its ServiceAccount does not exist),
  ``FailedScheduling``, ``FailedMount``, ``Failed`` (image pull, container config) on the pod.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import semantics as sem

if TYPE_CHECKING:
    from .cluster import FakeCluster

logger = logging.getLogger("tests.support.k8s.pods")
JSON = dict[str, Any]

NODE = "fake-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
TERMINATION_MESSAGE_LIMIT = 4096  # bytes, as the kubelet reads the file
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # FallbackToLogsOnError: the log's tail


def unschedulable_reason(pod_spec: Mapping[str, Any], node_labels: Mapping[str, str]) -> str | None:
    """The scheduler's verdict on a one-node cluster (nodeSelector only; the node has no taints)."""
    selector = pod_spec.get("nodeSelector") or {}
    if all(node_labels.get(k) == v for k, v in selector.items()):
        return None
    return ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are "
            "available: 1 Preemption is not helpful for scheduling.")


def termination_message(policy: str | None, file_text: str, log_tail: bytes, exit_code: int) -> str:
    """What the kubelet puts in ``state.terminated.message``."""
    message = file_text[:TERMINATION_MESSAGE_LIMIT]
    if not message and policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = log_tail.decode("utf-8", "replace").splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message


class PodWriter:
    """Writes one Job's Pod objects and the Events about them, through the fake API server."""

    def __init__(self, cluster: "FakeCluster"):
        self.cluster = cluster
        self.posted: set[tuple[str, str, str]] = set()  # (object, reason, message): each posted once

    # -- Events -------------------------------------------------------------------------------

    def event(self, involved: JSON, type_: str, reason: str, message: str, component: str) -> None:
        meta = involved["metadata"]
        key = (meta.get("uid", meta["name"]), reason, message)
        if key in self.posted:
            return  # the real recorder aggregates repeats into a count; once is what tests need
        self.posted.add(key)
        now = sem.now_rfc3339()
        try:
            self.cluster.create({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta.get("uid")},
                "type": type_, "reason": reason, "message": message, "source": {"component": component},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            })
        except Exception as error:  # noqa: BLE001 - events are best effort, as in the real recorder
            logger.info("could not post event %s: %s", reason, error)

    def failed_create(self, job: JSON, service_account: str) -> str:
        meta = job["metadata"]
        message = (f'Error creating: pods "{meta["name"]}-" is forbidden: error looking up service account '
                   f'{meta["namespace"]}/{service_account}: serviceaccount "{service_account}" not found')
        self.event(job, "Warning", "FailedCreate", message, "job-controller")
        return message

    # -- Pods ---------------------------------------------------------------------------------

    def create(self, job: JSON, pod_name: str, scheduled: bool) -> JSON:
        """The Job controller's pod (already bound to the node when ``scheduled``: the fake has no
        separate binding step)."""
        meta, template = job["metadata"], (job.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": meta["namespace"],
                "labels": dict(tmeta.get("labels") or {}), "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
            "status": {"phase": "Pending", "conditions": [], "qosClass": "Burstable"},
        }
        if scheduled:
            pod["spec"]["nodeName"] = NODE
        return self.cluster.create(pod)

    def _container(self, pod: JSON) -> JSON:
        return ((pod.get("spec") or {}).get("containers") or [{}])[0]

    def _status(self, pod: JSON, status: JSON) -> None:
        meta = pod["metadata"]
        try:
            self.cluster.patch_status("v1", "Pod", meta["namespace"], meta["name"], {"status": status})
        except Exception as error:  # noqa: BLE001 - deleted meanwhile (GC): nothing to show any more
            logger.info("pod status %s: %s", meta["name"], error)

    def unschedulable(self, pod: JSON, message: str) -> None:
        self._status(pod, {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
             "lastTransitionTime": sem.now_rfc3339()}]})
        self.event(pod, "Warning", "FailedScheduling", message, "default-scheduler")

    def waiting(self, pod: JSON, reason: str, message: str, events: list[tuple[str, str]]) -> None:
        """Scheduled, but the container cannot start: ``reason`` as the kubelet reports it."""
        container = self._container(pod)
        now = sem.now_rfc3339()
        self._status(pod, {"phase": "Pending", "hostIP": "127.0.0.1", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now}],
            "containerStatuses": [{"name": container.get("name"), "image": container.get("image"), "ready": False,
                                   "restartCount": 0, "started": False,
                                   "state": {"waiting": {"reason": reason, **({"message": message} if message else {})}}}]})
        for event_reason, event_message in events:
            self.event(pod, "Warning", event_reason, event_message, "kubelet")

    def running(self, pod: JSON) -> None:
        container = self._container(pod)
        now = sem.now_rfc3339()
        self._status(pod, {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now, "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": container.get("name"), "image": container.get("image"), "ready": True,
                                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}}}]})

    def terminated(self, pod: JSON, exit_code: int, message: str, started: str) -> None:
        container = self._container(pod)
        now = sem.now_rfc3339()
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "startedAt": started, "finishedAt": now}
        if message:
            terminated["message"] = message
        self._status(pod, {"phase": "Succeeded" if exit_code == 0 else "Failed", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
            "containerStatuses": [{"name": container.get("name"), "image": container.get("image"), "ready": False,
                                   "restartCount": 0, "started": False, "state": {"terminated": terminated}}]})

    def delete(self, pod: JSON) -> None:
        meta = pod["metadata"]
        self.cluster.delete("v1", "Pod", meta["namespace"], meta["name"], ignore_missing=True)
