"""What the installer allows a KeyMigration to ask for (Helm values, through InstallConfig).

Whoever may create a KeyMigration chooses its bucket, prefixes, keys and a few pod overrides; the
installer decides what those overrides may be: a priorityClassName or toleration is honoured only
when the installation allows it, so a KeyMigration author cannot preempt other workloads or reach
dedicated nodes. A KeyMigration asking for more is Stalled (NotAllowed), and no Job is created.
"""
from __future__ import annotations

from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import InstallConfig


def _toleration(toleration: dict) -> dict:
    """A toleration as Kubernetes defaults it (operator Equal), for comparing."""
    return {"operator": "Equal", **{k: v for k, v in toleration.items() if v not in (None, "")}}


def not_allowed(migration: KeyMigration, namespace: str, config: InstallConfig) -> list[str]:
    """What ``migration`` asks for that the installation does not allow (empty: all allowed)."""
    problems = []
    worker = migration.worker
    priority = worker.get("priorityClassName")
    if priority and priority not in config.allowed_priority_classes:
        allowed = ", ".join(config.allowed_priority_classes) or "none"
        problems.append(f"spec.worker.priorityClassName {priority!r} (allowed: {allowed}; Helm value worker.allowedPriorityClassNames)")
    allowed_tolerations = [_toleration(t) for t in config.allowed_tolerations]
    for index, toleration in enumerate(worker.get("tolerations") or ()):
        if _toleration(toleration) not in allowed_tolerations:
            problems.append(f"spec.worker.tolerations[{index}] {toleration} (Helm value worker.allowedTolerations)")
    return problems


__all__ = ["not_allowed"]
