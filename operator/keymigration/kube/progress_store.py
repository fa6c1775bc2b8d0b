"""The worker's progress channel in Kubernetes: the status of its KeyMigrationProgress object.

The operator creates one KeyMigrationProgress per prefix (same name as the Job) and is the only
writer of KeyMigration.status; the worker only patches its own progress object's status: the
checkpoint it resumes from after a pod restart, live counters, and the final outcome. RBAC for
the worker: get and patch on keymigrationprogresses and keymigrationprogresses/status, nothing
else (docs/operator.md).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from keymigration.clock import utc_timestamp
from keymigration.errors import CheckpointError, ConfigurationError, Unavailable
from keymigration.kube.api_types import GROUP, PROGRESS_PLURAL, VERSION, check_boundaries
from keymigration.kube.kubeconfig import load_client_config
from keymigration.migrate.checkpoint import Checkpoint

log = logging.getLogger("keymigration.progress")


def _now() -> str:
    return utc_timestamp()


USER_AGENT = "keymigration-worker"
# An API server answering 429 or 5xx (API Priority and Fairness, a restart), or unreachable for
# a moment: retried with these pauses before the write is given up (a checkpoint is written
# again 5 s later anyway) or the start-up says "try again later".
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)


def custom_objects_api():
    from kubernetes import client

    load_client_config()
    api_client = client.ApiClient()
    api_client.user_agent = USER_AGENT
    return client.CustomObjectsApi(api_client)


def _transient(error: Exception) -> bool:
    """429, 5xx, or no answer at all (connection refused or reset, timeout)."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        return status == 429 or status >= 500
    return True  # urllib3/socket errors carry no status


def with_retries(call, pauses=RETRY_PAUSES, sleep=time.sleep):
    """``call()``, again after each pause while it fails transiently; the last error is raised."""
    for pause in (*pauses, None):
        try:
            return call()
        except Exception as error:
            if pause is None or not _transient(error):
                raise
            sleep(pause)


class KubernetesProgress:
    """CheckpointStore and ProgressSink over one KeyMigrationProgress object's status."""

    LIVE_INTERVAL = 5.0

    def __init__(self, resource: str, api=None):
        namespace, sep, name = resource.partition("/")
        if not sep or not namespace or not name:
            raise ValueError("--progress-resource must be NAMESPACE/NAME")
        self.namespace, self.name = namespace, name
        self.api = api or custom_objects_api()
        self._last_live = 0.0
        self._lock = threading.Lock()
        self.sleep = time.sleep
        # The operator's share of the migration's KMS budget for this worker (status.kmsRate), read
        # back from the object at start and with every progress write (no request of its own);
        # the CLI points this at the KMS limiter's set_cap. Taking a new share is acknowledged at
        # once, and again with every later write (kube/kms_shares.py: new Jobs wait for it).
        self.on_kms_rate: Callable[[float], None] | None = None
        self._kms_rate: float | None = None
        self._kms_taken = False
        self._kms_acknowledged: dict = {}  # kmsRateApplied and kmsRateAppliedSerial, once a share is taken
        self._share_lock = threading.Lock()

    def _saw(self, obj: object) -> dict | None:
        """Take the share the operator wrote, if it is new; the acknowledgement to write at once,
        if one is due (the object does not hold it yet)."""
        status = ((obj or {}).get("status") or {}) if isinstance(obj, dict) else {}
        rate, serial = status.get("kmsRate"), status.get("kmsRateSerial")
        if self.on_kms_rate is None or not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
            return None
        with self._share_lock:
            if rate != self._kms_rate:
                self._kms_rate, self._kms_taken = float(rate), True
                try:
                    self.on_kms_rate(float(rate))
                except ValueError as error:
                    log.warning("ignoring the KMS share %s: %s", rate, error)
                    self._kms_taken = False
            if not self._kms_taken:
                return None  # not taken, so not acknowledged
            acknowledged = {"kmsRateApplied": rate, "kmsRateAppliedSerial": serial}
            if serial is None or acknowledged == self._kms_acknowledged:
                return None
            self._kms_acknowledged = acknowledged
        held = {"kmsRateApplied": status.get("kmsRateApplied"), "kmsRateAppliedSerial": status.get("kmsRateAppliedSerial")}
        return None if held == acknowledged else acknowledged

    def _patch(self, status: dict, pauses=RETRY_PAUSES[:2]) -> bool:
        # The acknowledgement rides on every write: one lost with a failed write is sent again.
        status = {**status, **self._kms_acknowledged, "updatedAt": _now()}
        with self._lock:
            try:
                stored = with_retries(lambda: self.api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, self.namespace, PROGRESS_PLURAL, self.name, {"status": status}
                ), pauses, self.sleep)
            except Exception as error:  # the API being away must not stop the migration
                log.warning("could not update progress %s/%s: %s", self.namespace, self.name, type(error).__name__)
                return False
        if self._saw(stored) is not None:
            self._patch({}, pauses)  # acknowledge the new share now: new Jobs may be waiting for it
        return True

    def _read(self) -> dict:
        """The progress object (retried); ``Unavailable`` when the API server cannot be asked,
        ``CheckpointError`` when it is missing or may not be read."""
        try:
            return with_retries(
                lambda: self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PROGRESS_PLURAL, self.name),
                sleep=self.sleep,
            ) or {}
        except Exception as error:
            what = f"progress object {self.namespace}/{self.name}"
            if _transient(error):
                raise Unavailable(f"cannot read {what}: {_describe(error)}") from None
            raise CheckpointError(f"cannot read {what}: {_describe(error)}") from None

    # The shard plan of a prefix (its planner Job's output)
    def shard_plan(self) -> dict | None:
        """The shard plan recorded in this progress object, if one is."""
        return (self._read().get("status") or {}).get("shardPlan")

    def record_shard_plan(self, boundaries: list[str], estimates: list[int], estimated_objects: int, exact: bool,
                          requests: int) -> None:
        """Record the plan, once: ``ConfigurationError`` if it cannot be kept in one object (too
        many shards or bytes; why is recorded instead, in ``shardPlanRefused``, for the operator),
        ``Unavailable`` if the API server does not take it."""
        problems = check_boundaries(boundaries)
        if problems:
            why = "; ".join(problems)
            self._patch({"shardPlanRefused": why[:1024]}, RETRY_PAUSES)
            raise ConfigurationError(f"shard plan refused: {why}: ask for fewer shards or more objects per shard")
        plan = {"boundaries": boundaries, "estimates": estimates, "estimatedObjects": estimated_objects, "exact": exact,
                "listRequests": requests, "plannedAt": _now()}
        try:
            with_retries(lambda: self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PROGRESS_PLURAL, self.name, {"status": {"shardPlan": plan, "updatedAt": _now()}}
            ), sleep=self.sleep)
        except Exception as error:
            raise Unavailable(f"cannot record the shard plan in {self.namespace}/{self.name}: {_describe(error)}") from None

    # CheckpointStore
    def load(self) -> Checkpoint | None:
        """The checkpoint; ``Unavailable`` when the API server cannot be asked (after retries),
        ``CheckpointError`` when the progress object is missing or may not be read."""
        try:
            obj = with_retries(
                lambda: self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PROGRESS_PLURAL, self.name),
                sleep=self.sleep,
            )
        except Exception as error:
            what = f"progress object {self.namespace}/{self.name}"
            if _transient(error):
                raise Unavailable(f"cannot read the checkpoint in {what}: {_describe(error)}") from None
            raise CheckpointError(f"cannot read the checkpoint in {what}: {_describe(error)}") from None
        if self._saw(obj) is not None:
            self._patch({})
        text = ((obj or {}).get("status") or {}).get("checkpoint")
        if not text:
            return None
        try:
            return Checkpoint.from_json(text)
        except CheckpointError:
            log.warning("ignoring an unreadable checkpoint in %s/%s", self.namespace, self.name)
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        status = {"checkpoint": checkpoint.to_json()}
        if checkpoint.done:
            status["done"] = True
            status["counters"] = _counters(checkpoint.counters)
        self._patch(status, RETRY_PAUSES if checkpoint.done else RETRY_PAUSES[:2])

    # ProgressSink
    def update(self, snapshot: dict) -> None:
        now = time.monotonic()
        if now - self._last_live < self.LIVE_INTERVAL:
            return
        self._last_live = now
        self._patch(_live(snapshot))

    def close(self, summary: dict) -> None:
        status = _live(summary)
        status["exitCode"] = summary.get("exit_code")
        if summary.get("stopped"):
            status["lastError"] = f"stopped: {summary['stopped']}"[:1024]
        elif summary.get("failed"):
            status["lastError"] = f"{summary['failed']} objects failed; see the report in the Job's log"
        self._patch(status, RETRY_PAUSES)

    def failed(self, message: str, exit_code: int) -> None:
        """Start-up failed: the operator shows ``message`` in the prefix's row and conditions."""
        self._patch({"lastError": message[:1024], "exitCode": exit_code}, RETRY_PAUSES[:1])


def _describe(error: Exception) -> str:
    status = getattr(error, "status", None)
    if status:
        return f"HTTP {status} {getattr(error, 'reason', '')}".strip()
    return f"{type(error).__name__}: {error}"[:300]


def _counters(counters: dict) -> dict:
    return {k: counters.get(k, 0) for k in ("scanned", "migrated", "skipped", "failed", "planned", "verified")} | {
        "reasons": counters.get("reasons", {})
    }


def _live(snapshot: dict) -> dict:
    status = {"counters": _counters(snapshot)}
    if snapshot.get("total") is not None:
        status["total"] = snapshot["total"]
    elapsed = snapshot.get("elapsed_seconds")
    if elapsed:
        status["rate"] = round(snapshot.get("scanned", 0) / elapsed, 2)
    faults = snapshot.get("faults_retried")
    if faults:
        status["faults"] = faults
    return status


__all__ = ["KubernetesProgress", "json"]
