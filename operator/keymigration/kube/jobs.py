"""The worker Job and its progress object for one prefix (pure manifest builders)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from keymigration.kube.api_types import (
    GROUP,
    KIND,
    PROGRESS_KIND,
    VERSION,
    KeyMigration,
    WorkUnit,
)
from keymigration.migrate.worker import (
    EXIT_CONFIG,
    EXIT_FAILED_OBJECTS,
    EXIT_TOO_MANY_FAILURES,
)

LABEL_MIGRATION = f"{GROUP}/migration"  # the KeyMigration's name, or a short form of a long one
LABEL_MIGRATION_UID = f"{GROUP}/migration-uid"  # what the operator selects children by
LABEL_PREFIX_HASH = f"{GROUP}/prefix-hash"
ANNOTATION_MIGRATION = f"{GROUP}/migration"  # the KeyMigration's full name (on pods too)
ANNOTATION_PREFIX = f"{GROUP}/prefix"
ANNOTATION_RETRY = f"{GROUP}/retry"
ANNOTATION_UNIT = f"{GROUP}/unit"  # which shard or inventory slice, for people (the spec of its progress object says it too)
MANAGED_BY = ("app.kubernetes.io/managed-by", "keymigration-operator")
CONTAINER = "worker"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS = 65532  # the image's non-root user (Dockerfile)


@dataclass(frozen=True)
class WorkerAws:
    """Where the workers' AWS requests go: the installer's choice (Helm values worker.aws and
    worker.namespaceAws), never a KeyMigration's: an endpoint is where a worker sends every data
    key it unwraps (the body of KMS Encrypt) and its signed requests. Unset: the standard AWS
    chain of the worker's environment (IRSA and Pod Identity set AWS_REGION)."""

    region: str | None = None
    s3_endpoint_url: str | None = None
    kms_endpoint_url: str | None = None
    path_style: bool = False

    @classmethod
    def from_fields(cls, fields: dict) -> "WorkerAws":
        return cls(fields.get("region") or None, fields.get("s3EndpointUrl") or None, fields.get("kmsEndpointUrl") or None,
                   bool(fields.get("pathStyle", False)))

    def over(self, base: "WorkerAws") -> "WorkerAws":
        """These settings where set, ``base``'s elsewhere (a namespace's over the defaults)."""
        return WorkerAws(self.region or base.region, self.s3_endpoint_url or base.s3_endpoint_url,
                         self.kms_endpoint_url or base.kms_endpoint_url, self.path_style or base.path_style)

    def env(self) -> list[dict]:
        pairs = (("AWS_REGION", self.region), ("AWS_ENDPOINT_URL_S3", self.s3_endpoint_url),
                 ("AWS_ENDPOINT_URL_KMS", self.kms_endpoint_url))
        return [{"name": name, "value": value} for name, value in pairs if value]


@dataclass(frozen=True)
class InstallConfig:
    """What the operator's installer decides (Helm values), never the KeyMigration author."""

    worker_image: str = "ghcr.io/keymigration/keymigration:0.1.0"
    worker_service_account: str = "keymigration-worker"
    image_pull_policy: str = "IfNotPresent"
    backoff_limit: int = 6
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    default_resources: dict = field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    )
    termination_grace_seconds: int = 60
    # Name of a Secret (in each KeyMigration namespace) whose keys become the worker's environment,
    # e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY where IRSA/Pod Identity do not exist (kind,
    # MinIO). The installer's choice; a KeyMigration cannot name it.
    worker_env_secret: str | None = None
    # What a KeyMigration's spec.worker may ask for (kube/policy.py): priority classes by name,
    # tolerations that must equal one of these. Empty: none.
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_tolerations: tuple[dict, ...] = ()
    # Where workers send their AWS requests, by default and per namespace (WorkerAws).
    aws: WorkerAws = field(default_factory=WorkerAws)
    namespace_aws: dict = field(default_factory=dict)  # namespace -> WorkerAws
    # KMS keys a KeyMigration may name as target or source (kube/policy.py): key or alias ARNs,
    # shell-style patterns ("arn:aws:kms:eu-west-1:111122223333:key/*"), and account ids. Empty: any.
    allowed_kms_keys: tuple[str, ...] = ()
    allowed_kms_accounts: tuple[str, ...] = ()

    def aws_for(self, namespace: str) -> WorkerAws:
        return self.namespace_aws.get(namespace, WorkerAws()).over(self.aws)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:10]


def prefix_hash(prefix: str) -> str:
    return _hash(prefix)


def child_name(migration: str, prefix: str) -> str:
    """The Job (and progress object) of one prefix: ``<start of the name>-<hash of name and
    prefix>``, at most 52 characters (the Job's pods add 6 and their ``job-name`` label holds 63),
    and unique per KeyMigration and prefix for any valid names: two names with the same first 41
    characters still hash apart. Deterministic, so a re-run after a crash finds its children."""
    return f"{migration[:41].rstrip('-.')}-{_hash(migration, prefix)}"


def label_value(name: str) -> str:
    """A KeyMigration name as a label value (at most 63 characters): itself when it fits, else
    its start and a hash of the whole."""
    return name if len(name) <= 63 else f"{name[:52].rstrip('-.')}-{_hash(name)}"


def kubelet_literal(text: str) -> str:
    """``text`` as a container argument the kubelet passes on unchanged: it expands ``$(VAR)``
    and turns ``$$`` into ``$`` in command and args, so every ``$`` is doubled."""
    return text.replace("$", "$$")


def owner_reference(km: dict) -> dict:
    meta = km["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(km: dict, prefix: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "keymigration-worker",
        "app.kubernetes.io/part-of": "keymigration",
        MANAGED_BY[0]: MANAGED_BY[1],
        LABEL_MIGRATION: label_value(km["metadata"]["name"]),
        LABEL_MIGRATION_UID: km["metadata"]["uid"],
        LABEL_PREFIX_HASH: prefix_hash(prefix),
    }


def _unit(unit: str | WorkUnit) -> WorkUnit:
    return unit if isinstance(unit, WorkUnit) else WorkUnit(unit)


def unit_name(migration: str, unit: WorkUnit) -> str:
    """The Job and progress object of a unit (a prefix keeps the name it always had)."""
    return child_name(migration, unit.identity)


def annotations(km: dict, unit: str | WorkUnit) -> dict[str, str]:
    unit = _unit(unit)
    found = {ANNOTATION_MIGRATION: km["metadata"]["name"], ANNOTATION_PREFIX: unit.prefix}
    if unit.shard is not None or unit.files is not None or unit.planner:
        found[ANNOTATION_UNIT] = unit.describe()[:1024]
    return found


def progress_manifest(km: dict, migration: KeyMigration, unit: str | WorkUnit) -> dict:
    unit = _unit(unit)
    prefix = unit.prefix
    name = unit_name(km["metadata"]["name"], unit)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": PROGRESS_KIND,
        "metadata": {
            "name": name,
            "namespace": km["metadata"]["namespace"],
            "labels": labels(km, prefix),
            "annotations": annotations(km, unit),
            "ownerReferences": [owner_reference(km)],
        },
        "spec": {"migration": km["metadata"]["name"], "bucket": migration.bucket, "prefix": prefix, "job": name, **unit.spec_fields()},
    }


def container_args(migration: KeyMigration, unit: WorkUnit, resource: str, max_failures: int | None) -> list[str]:
    """The worker's arguments for a unit: ``keymigration shard`` for a planner, ``run`` else."""
    if unit.planner:
        return migration.planner_args(unit.prefix, resource)
    return migration.worker_args(unit, progress_resource=resource, max_failures=max_failures)


def job_manifest(km: dict, migration: KeyMigration, unit: str | WorkUnit, config: InstallConfig, max_failures: int | None = None) -> dict:
    unit = _unit(unit)
    prefix = unit.prefix
    meta = km["metadata"]
    name = unit_name(meta["name"], unit)
    namespace = meta["namespace"]
    pod_labels = labels(km, prefix)
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    for index, ref in enumerate(migration.source_keys):
        volume = f"source-key-{index}"
        # One directory per key, holding one file: only the named key of the Secret is mounted.
        mounts.append({"name": volume, "mountPath": migration.key_dir(index), "readOnly": True})
        volumes.append(
            {"name": volume, "secret": {"secretName": ref.secret_name, "items": [{"key": ref.key, "path": ref.key}], "defaultMode": 0o440}}
        )
    env = [
        {"name": "KEYMIGRATION_MIGRATION", "value": meta["name"]},
        {"name": "KEYMIGRATION_NAMESPACE", "value": namespace},
        # Where the worker writes why it stopped: the pod's termination message, which the
        # operator shows when the worker could not reach the API server to say it.
        {"name": "KEYMIGRATION_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]
    aws = config.aws_for(namespace)
    env += aws.env()  # declared env wins over envFrom: the installer's endpoints, whatever a Secret says
    worker = migration.worker
    env_from = [{"secretRef": {"name": config.worker_env_secret}}] if config.worker_env_secret else []
    container = {
        "name": CONTAINER,
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": [kubelet_literal(arg) for arg in container_args(migration, unit, f"{namespace}/{name}", max_failures)]
        + (["--path-style"] if aws.path_style else []),
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "resources": worker.get("resources") or config.default_resources,
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict = {
        "restartPolicy": "Never",
        "serviceAccountName": config.worker_service_account,
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if worker.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(worker["nodeSelector"])
    if worker.get("tolerations"):
        pod_spec["tolerations"] = [dict(t) for t in worker["tolerations"]]
    if worker.get("priorityClassName"):
        pod_spec["priorityClassName"] = worker["priorityClassName"]
    job_spec: dict = {
        "backoffLimit": config.backoff_limit,
        # Never two pods on one prefix at once: a replacement starts only after the old pod failed.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                # Permanent outcomes: bad configuration, objects that failed, too many failures.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_FAILED_OBJECTS, EXIT_CONFIG, EXIT_TOO_MANY_FAILURES],
                    },
                },
                # Node drains and preemption do not count against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "suspend": False,
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations(km, unit)}, "spec": pod_spec},
    }
    if config.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    if worker.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = worker["activeDeadlineSeconds"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pod_labels,
            "annotations": annotations(km, unit),
            "ownerReferences": [owner_reference(km)],
        },
        "spec": job_spec,
    }
