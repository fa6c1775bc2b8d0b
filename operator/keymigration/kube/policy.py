"""What the installer allows a KeyMigration to ask for (Helm values, through InstallConfig).

Whoever may create a KeyMigration chooses its bucket, prefixes, keys and a few pod overrides; the
installer decides what those may be: a priorityClassName or toleration is honoured only when the
installation allows it (a KeyMigration author cannot preempt other workloads or reach dedicated
nodes), and KMS keys only from the allowed accounts or key ARNs when those are set (the worker
sends every unwrapped data key to KMS Encrypt under the target key: a key in another account
would hand the data keys to whoever holds it). A KeyMigration asking for more is Stalled
(NotAllowed), and no Job is created. (Endpoints and region are no KeyMigration field at all.)
"""
from __future__ import annotations

import fnmatch
import re

from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import InstallConfig


def _toleration(toleration: dict) -> dict:
    """A toleration as Kubernetes defaults it (operator Equal), for comparing."""
    return {"operator": "Equal", **{k: v for k, v in toleration.items() if v not in (None, "")}}


ARN_ACCOUNT = re.compile(r"^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:([0-9]{12}):")


def _kms_problems(migration: KeyMigration, config: InstallConfig) -> list[str]:
    keys = [("spec.target.kmsKeyId", migration.target_key_id)]
    keys += [(f"spec.sourceKmsKeyIds[{index}]", key) for index, key in enumerate(migration.source_kms_key_ids)]
    accounts, patterns = config.allowed_kms_accounts, config.allowed_kms_keys
    problems = []
    for where, key in keys:
        if accounts:
            found = ARN_ACCOUNT.match(key)
            if found is None:
                problems.append(f"{where} {key!r}: give the key's or alias's full ARN (Helm value worker.allowedKmsAccounts "
                                f"allows keys of {', '.join(accounts)} only, and a bare id or alias names no account)")
            elif found.group(1) not in accounts:
                problems.append(f"{where} {key!r}: account {found.group(1)} (allowed: {', '.join(accounts)}; "
                                "Helm value worker.allowedKmsAccounts)")
        if patterns and not any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            problems.append(f"{where} {key!r}: not among the allowed KMS keys (Helm value worker.allowedKmsKeys)")
    return problems


def not_allowed(migration: KeyMigration, namespace: str, config: InstallConfig) -> list[str]:
    """What ``migration`` asks for that the installation does not allow (empty: all allowed)."""
    problems = _kms_problems(migration, config)
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
