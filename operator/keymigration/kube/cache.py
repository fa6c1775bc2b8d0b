"""What the operator knows of the cluster, without asking: the watch streams' latest objects.

kopf indices (``@kopf.index``) keep every KeyMigration, and the Jobs, progress objects and pods of
each (by the ``keymigration.io/migration-uid`` label), up to date from the watch events; kopf starts
no other handler before they hold the initial listing. A reconcile reads them and makes no read
request of its own: a progress write costs the operator one watch event, never a LIST.

A watch event may arrive after the write that caused it is answered, so what the operator wrote
itself (a created Job, a suspended one, a KeyMigration status) is overlaid until the watch
catches up (``Overlay``); a deleted child is hidden until its DELETED event arrives.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "labels", "annotations", "ownerReferences",
         "deletionTimestamp")
OVERLAY_SECONDS = 120.0


def trimmed(body: Mapping[str, Any], spec_keys: tuple[str, ...] = ()) -> dict:
    """The parts of a child the reconcile reads (a Job's pod template is most of its size)."""
    meta = body.get("metadata") or {}
    out: dict = {"metadata": copy.deepcopy({k: meta[k] for k in _META if k in meta})}
    spec = body.get("spec") or {}
    if spec_keys:
        out["spec"] = copy.deepcopy({k: spec[k] for k in spec_keys if k in spec})
    if body.get("status") is not None:
        out["status"] = copy.deepcopy(dict(body["status"]))
    return out


def trimmed_job(body: Mapping[str, Any]) -> dict:
    return trimmed(body, ("suspend",))


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


@dataclass
class Children:
    jobs: list[dict] = field(default_factory=list)
    progresses: list[dict] = field(default_factory=list)
    pods: list[dict] = field(default_factory=list)

    def pods_by_job(self) -> dict[str, list[dict]]:
        by_job: dict[str, list[dict]] = {}
        for pod in self.pods:
            for ref in pod["metadata"].get("ownerReferences") or ():
                if ref.get("kind") == "Job" and ref.get("controller"):
                    by_job.setdefault(ref["name"], []).append(pod)
        return by_job


class KopfView:
    """The kopf indices, as the reconciler reads them."""

    def __init__(self, migrations: Mapping, jobs: Mapping, progresses: Mapping, pods: Mapping):
        self.migrations, self.jobs, self.progresses, self.pods = migrations, jobs, progresses, pods

    @staticmethod
    def _one(index: Mapping, key) -> Any:
        for value in index.get(key, ()):
            return value
        return None

    def migration(self, namespace: str, name: str) -> dict | None:
        body = self._one(self.migrations, (namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def children(self, uid: str) -> Children:
        return Children(list(self.jobs.get(uid, ())), list(self.progresses.get(uid, ())), list(self.pods.get(uid, ())))


@dataclass
class _Entry:
    body: dict | None  # None: deleted
    uid: str
    rv: int
    at: float


class Overlay:
    """The operator's own writes, until the watch brings them (or something newer)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.entries: dict[str, dict[tuple[str, str], _Entry]] = {}  # owner uid -> (kind, name) -> entry

    def wrote(self, owner: str, kind: str, body: dict) -> None:
        meta = body["metadata"]
        self.entries.setdefault(owner, {})[(kind, meta["name"])] = _Entry(body, meta.get("uid", ""), _rv(body), self.clock())

    def deleted(self, owner: str, kind: str, name: str, seen: dict | None) -> None:
        uid = ((seen or {}).get("metadata") or {}).get("uid", "")
        self.entries.setdefault(owner, {})[(kind, name)] = _Entry(None, uid, _rv(seen), self.clock())

    def forget(self, owner: str) -> None:
        self.entries.pop(owner, None)

    def apply(self, owner: str, kind: str, observed: list[dict]) -> list[dict]:
        """``observed`` (from the watch) with this kind's pending writes of ``owner`` laid over it."""
        pending = self.entries.get(owner)
        if not pending:
            return observed
        by_name = {o["metadata"]["name"]: o for o in observed}
        now = self.clock()
        for (entry_kind, name), entry in list(pending.items()):
            if entry_kind != kind:
                continue
            seen = by_name.get(name)
            if now - entry.at > OVERLAY_SECONDS or self._caught_up(entry, seen):
                del pending[(entry_kind, name)]
            elif entry.body is None:
                by_name.pop(name, None)
            else:
                by_name[name] = entry.body
        return list(by_name.values())

    @staticmethod
    def _caught_up(entry: _Entry, seen: dict | None) -> bool:
        if entry.body is None:  # a deletion: done once the watch no longer shows that object
            return seen is None or seen["metadata"].get("uid") != entry.uid
        # A different uid is the watch still showing an older object of that name (a Job deleted for
        # a retry): not caught up yet.
        return seen is not None and seen["metadata"].get("uid") == entry.uid and _rv(seen) >= entry.rv


__all__ = ["Children", "KopfView", "Overlay", "trimmed", "trimmed_job"]
