"""The Kubernetes layer: the KeyMigration API types and CRDs, worker Job manifests, the pure
reconcile step, the worker's progress store, metrics, and the kopf operator shell
(``keymigration.kube.operator``, imported on its own: it pulls in kopf)."""

from keymigration.kube.api_types import KeyMigration, SourceKeyRef
from keymigration.kube.jobs import InstallConfig, WorkerAws, child_name, job_manifest, progress_manifest
from keymigration.kube.progress_store import KubernetesProgress
from keymigration.kube.reconcile import Plan, reconcile

__all__ = [
    "InstallConfig",
    "KeyMigration",
    "KubernetesProgress",
    "Plan",
    "SourceKeyRef",
    "WorkerAws",
    "child_name",
    "job_manifest",
    "progress_manifest",
    "reconcile",
]
