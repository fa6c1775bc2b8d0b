"""The ``KeyMigration`` API type: one model for the CRD schema, the operator, the Job and the CLI.

``KEYMIGRATION_SCHEMA`` is the OpenAPI v3 schema the API server enforces (crds/ is generated from it by
``python -m keymigration.kube.crd``); ``KeyMigration.from_fields`` applies the same schema plus the
checks a schema cannot express; ``worker_args`` turns a KeyMigration and one prefix into the exact
``keymigration run`` arguments a Job runs, which the CLI parses back into ``RunOptions``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from keymigration.errors import ConfigurationError, InvalidKeyMigration
from keymigration.formats.envelope import check_caller_context
from keymigration.formats.vocabulary import (
    DEFAULT_INSTRUCTION_SUFFIX,
    DEFAULT_SAMPLE_RATE,
    SUFFIX_PATTERN,
    Mode,
    VerifyLevel,
    check_target,
)

GROUP = "keymigration.io"
VERSION = "v1alpha1"
KIND = "KeyMigration"
PLURAL = "keymigrations"
PROGRESS_KIND = "KeyMigrationProgress"
PROGRESS_PLURAL = "keymigrationprogresses"

KEY_MOUNT_ROOT = "/var/run/keymigration/keys"

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
KMS_KEY_PATTERN = (
    r"^(arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[a-zA-Z0-9-]{1,128}|alias/[a-zA-Z0-9/_-]{1,250})"
    r"|alias/[a-zA-Z0-9/_-]{1,250}|(mrk-)?[a-fA-F0-9-]{32,36})$"
)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret data key as Kubernetes allows it: not ".", not "..", not starting with ".." (it
# becomes a file name in the worker pod).
SECRET_KEY_PATTERN = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
URL_PATTERN = r"^https?://[^\s]+$"

AWS_FIELDS = ("region", "s3EndpointUrl", "kmsEndpointUrl", "pathStyle")
AWS_FIELDS_REFUSED = (
    "spec.aws is no longer honoured: endpoints, region and addressing come from the operator's installation "
    "(Helm values worker.aws, worker.namespaceAws), never from a KeyMigration; remove it"
)

# Spec plus status must stay well under etcd's 1.5 MiB per object: the prefixes' total (they are
# repeated in up to 200 status rows) is bounded, as are the rows' other strings (kube/reconcile.py).
MAX_PREFIX_BYTES = 256 * 1024
# Shards of one prefix, and the bytes their boundaries may take in that prefix's progress object
# (kube/progress_store.py records them there; etcd holds at most 1.5 MiB per object).
MAX_SHARDS_PER_PREFIX = 10000
MAX_BOUNDARY_BYTES = 1000 * 1000
MAX_INVENTORY_FILES = 10000
INVENTORY_URL_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+$"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 256}, "maxProperties": 32}


def _immutable(field_name: str, message: str) -> dict:
    return {
        "rule": f"has(self.{field_name}) == has(oldSelf.{field_name}) && (!has(self.{field_name}) || self.{field_name} == oldSelf.{field_name})",
        "message": message,
    }


KEYMIGRATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "What to migrate and how. bucket, prefixes or inventory, shards, source keys, target, suffix and mode "
    "are immutable.",
    "required": ["bucket", "target"],
    "additionalProperties": False,
    "properties": {
        "bucket": {"type": "string", "description": "S3 bucket name.", "pattern": BUCKET_PATTERN, "maxLength": 63},
        "prefixes": {
            "type": "array",
            "description": "Key prefixes; one worker Job each. \"\" means the whole bucket. Must not overlap.",
            "minItems": 1,
            "maxItems": 1000,
            "items": {"type": "string", "maxLength": 1024},
        },
        "shards": {
            "type": "object",
            "additionalProperties": False,
            "description": "Split each prefix into key ranges, one worker Job each, planned at start by a planner Job per "
            "prefix (keymigration shard) and recorded in the prefix's KeyMigrationProgress. Give count or objectsPerShard.",
            "properties": {
                "count": {"type": "integer", "minimum": 1, "maximum": MAX_SHARDS_PER_PREFIX, "description": "Shards per prefix."},
                "objectsPerShard": {"type": "integer", "minimum": 1000, "description": "Shards of about this many objects."},
            },
            "x-kubernetes-validations": [
                {"rule": "has(self.count) != has(self.objectsPerShard)", "message": "shards: give exactly one of count and objectsPerShard"},
            ],
        },
        "inventory": {
            "type": "object",
            "additionalProperties": False,
            "required": ["manifest"],
            "description": "Migrate the objects an S3 Inventory (CSV) lists instead of listing prefixes: its data files are "
            "split over 'files' worker Jobs (keymigration run --inventory-files I/N).",
            "properties": {
                "manifest": {"type": "string", "pattern": INVENTORY_URL_PATTERN, "maxLength": 2048,
                             "description": "s3://BUCKET/PATH/manifest.json"},
                "files": {"type": "integer", "minimum": 1, "maximum": MAX_INVENTORY_FILES, "default": 1,
                          "description": "Work units: unit I of N takes data files I, I+N, I+2N, ..."},
            },
        },
        "sourceKeys": {
            "type": "array",
            "description": "Old AES (raw or base64) or RSA (PEM) master keys, each a key of a Secret in this namespace, "
            "mounted read-only as a file into the worker only.",
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["secretName", "key"],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                    "key": {"type": "string", "pattern": SECRET_KEY_PATTERN, "maxLength": 253, "description": "Key within the Secret's data."},
                    "materialsDescription": {
                        **_STRING_MAP,
                        "description": "Pin this key to objects with exactly this x-amz-matdesc (Java v1's materials accessor).",
                    },
                },
            },
        },
        "sourceKmsKeyIds": {
            "type": "array",
            "description": "Old KMS keys (KMS-to-KMS re-wrap with kms:ReEncrypt).",
            "maxItems": 20,
            "items": {"type": "string", "pattern": KMS_KEY_PATTERN, "maxLength": 2048},
        },
        "target": {
            "type": "object",
            "required": ["kmsKeyId"],
            "additionalProperties": False,
            "properties": {
                "kmsKeyId": {"type": "string", "pattern": KMS_KEY_PATTERN, "maxLength": 2048, "description": "Key id, ARN or alias."},
                "wrap": {"type": "string", "enum": ["kms+context", "kms"], "default": "kms+context"},
                "encryptionContext": {
                    **_STRING_MAP,
                    "description": "Caller pairs of the new envelope's KMS encryption context for objects wrapped by AES/RSA "
                    "keys (readers must then pass them). Objects wrapped by KMS keep their own caller context.",
                },
            },
        },
        "grantTokens": {
            "type": "array",
            "description": "KMS grant tokens the workers send with every KMS request (Encrypt, Decrypt, ReEncrypt, "
            "DescribeKey), for permissions from a grant that is not yet visible everywhere. Not secret.",
            "maxItems": 10,
            "items": {"type": "string", "minLength": 1, "maxLength": 8192},
        },
        "instructionFileSuffix": {
            "type": "string",
            "pattern": SUFFIX_PATTERN,
            "default": ".instruction",
            "description": "Suffix of the instruction files, with its dot.",
        },
        "mode": {
            "type": "string",
            "enum": sorted(m.api_name for m in Mode),
            "default": "InstructionFile",
            "description": "InstructionFile: write instruction files only. CutOver: also remove the old envelope from "
            "each object's metadata (backed up first) so the default lookup of readers that read KMS envelopes from "
            "instruction files uses the new one (not .NET: docs/formats.md reader matrix). "
            "Metadata: replace the old envelope in each object's metadata with the KMS envelope (backed up first; an "
            "old .instruction is backed up and removed), read by every reader's default lookup in one request.",
        },
        "concurrency": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maxJobs": {"type": "integer", "minimum": 1, "maximum": 500, "default": 4, "description": "Worker Jobs at once."},
                "perJob": {"type": "integer", "minimum": 1, "maximum": 256, "default": 16, "description": "Objects in flight per Job."},
            },
        },
        "kmsRequestsPerSecond": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1000000,
            "description": "Cap on KMS requests per second for the whole migration, shared by the running Jobs and "
            "handed to the others as Jobs finish.",
        },
        "verify": {
            "type": "string",
            "enum": [v.value for v in (VerifyLevel.ENVELOPE, VerifyLevel.BODY, VerifyLevel.SAMPLE, VerifyLevel.NONE)],
            "default": "envelope",
            "description": "What is proven before each new envelope is written. envelope: KMS opens every new envelope. "
            "sample: every envelope is checked locally (parsed back, target key ARN, context) and KMS opens the first "
            "and a share (verifySampleRate) of the others: about half the KMS requests, a KMS-side fault may go unseen "
            "for unsampled objects (docs/worker.md#verification). body: also decrypt every body. none: the unwrap's "
            "own proof only.",
        },
        "verifySampleRate": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": DEFAULT_SAMPLE_RATE,
            "description": "verify: sample: the share of objects whose new envelope KMS opens.",
        },
        "suspend": {"type": "boolean", "default": False, "description": "Stop work (Jobs suspended); false resumes."},
        "maxFailedObjects": {
            "type": "integer",
            "minimum": 0,
            "description": "Stop the migration (Stalled, TooManyFailures) once more objects than this have failed.",
        },
        "aws": {
            "type": "object",
            "additionalProperties": False,
            "description": "Removed: no longer honoured, and refused. Endpoints, region and addressing come from the "
            "operator's installation (Helm values worker.aws, worker.namespaceAws) only: a KeyMigration naming an "
            "endpoint could have its worker send every unwrapped data key there. Still declared so that a KeyMigration "
            "written before keeps these fields (they are not pruned) and is reported (Stalled, InvalidSpec).",
            "properties": {
                "region": {"type": "string", "pattern": r"^[a-z0-9-]{2,32}$"},
                "s3EndpointUrl": {"type": "string", "pattern": URL_PATTERN, "maxLength": 2048},
                "kmsEndpointUrl": {"type": "string", "pattern": URL_PATTERN, "maxLength": 2048},
                "pathStyle": {"type": "boolean"},
            },
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.region) && !has(self.s3EndpointUrl) && !has(self.kmsEndpointUrl) && !has(self.pathStyle)",
                    "message": AWS_FIELDS_REFUSED,
                },
            ],
        },
        "worker": {
            "type": "object",
            "additionalProperties": False,
            "description": "Limited pod overrides. The image and ServiceAccount come from the operator's configuration.",
            "properties": {
                "resources": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "limits": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}},
                        "requests": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}},
                    },
                },
                "nodeSelector": _STRING_MAP,
                "tolerations": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "key": {"type": "string", "maxLength": 316},
                            "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                            "value": {"type": "string", "maxLength": 256},
                            "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                            "tolerationSeconds": {"type": "integer"},
                        },
                    },
                },
                "priorityClassName": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 60},
            },
        },
    },
    "x-kubernetes-validations": [
        {"rule": "self.bucket == oldSelf.bucket", "message": "bucket is immutable"},
        {"rule": "has(self.prefixes) != has(self.inventory)", "message": "give exactly one of prefixes and inventory"},
        {"rule": "!has(self.shards) || has(self.prefixes)", "message": "shards split prefixes; an inventory is split by inventory.files"},
        _immutable("prefixes", "prefixes are immutable"),
        _immutable("inventory", "inventory is immutable"),
        _immutable("shards", "shards are immutable"),
        {
            "rule": f"!has(self.prefixes) || self.prefixes.map(p, size(bytes(p))).sum() <= {MAX_PREFIX_BYTES}",
            "message": f"prefixes may hold at most {MAX_PREFIX_BYTES} bytes (UTF-8) in all",
        },
        _immutable("sourceKeys", "sourceKeys are immutable"),
        _immutable("sourceKmsKeyIds", "sourceKmsKeyIds are immutable"),
        {"rule": "self.target == oldSelf.target", "message": "target is immutable"},
        _immutable("instructionFileSuffix", "instructionFileSuffix is immutable"),
        _immutable("mode", "mode is immutable"),
    ],
}

_COUNTERS = {
    "type": "object",
    "properties": {name: {"type": "integer"} for name in ("scanned", "migrated", "skipped", "failed", "planned", "verified")},
    "x-kubernetes-preserve-unknown-fields": True,
}
_CONDITIONS = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "conditions": _CONDITIONS,
        "phase": {"type": "string", "description": "Convenience for printer columns; use conditions."},
        "startTime": {"type": "string", "format": "date-time"},
        "completionTime": {"type": "string", "format": "date-time"},
        "prefixesDone": {"type": "string", "description": "completed/total work units (prefixes, shards or inventory slices), "
                         "for kubectl get"},
        "prefixCounts": {
            "type": "object",
            "description": "work units by state: prefixes, or shards and inventory slices (a prefix still being planned "
            "counts as one unit)",
            "properties": {n: {"type": "integer"} for n in ("total", "pending", "running", "completed", "failed", "suspended",
                                                            "planning")},
        },
        "planning": {
            "type": "object",
            "description": "shard planning: prefixes whose boundaries are recorded, and the objects the planners estimated",
            "properties": {n: {"type": "integer"} for n in ("prefixes", "planned", "shards", "estimatedObjects")},
        },
        "totals": _COUNTERS,
        "prefixes": {
            "type": "array",
            "description": "Per-unit progress (at most 200 entries, unfinished first; with shards or an inventory only the "
            "unfinished and failed ones; all of it lives in KeyMigrationProgress objects).",
            "items": {
                "type": "object",
                "properties": {
                    "prefix": {"type": "string"},
                    "shard": {"type": "integer"},
                    "startAfter": {"type": "string"},
                    "endKey": {"type": "string"},
                    "files": {"type": "string", "description": "the inventory's data files of this unit, I/N"},
                    "job": {"type": "string"},
                    "state": {"type": "string"},
                    "counters": _COUNTERS,
                    "total": {"type": "integer"},
                    "checkpoint": {"type": "string", "description": "every key up to this one is finished"},
                    "lastError": {"type": "string"},
                    "startTime": {"type": "string", "format": "date-time"},
                    "completionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
        "prefixesTruncated": {"type": "boolean"},
        "plan": {
            "type": "object",
            "description": "the expected duration: objects (the shard plan's estimate, else the workers' counts), the KMS "
            "budget and the per-worker rate (the running workers' mean, else the measured default)",
            "properties": {
                **{n: {"type": "integer"} for n in ("objects", "workers", "kmsRequestsPerSecond", "kmsRequestsPerObject",
                                                    "kmsPerWorker", "expectedSeconds", "remainingSeconds")},
                "workerObjectsPerSecond": {"type": "number"},
                **{n: {"type": "string"} for n in ("objectsFrom", "workerRateFrom", "boundBy", "summary")},
            },
        },
        "retryGeneration": {"type": "string", "description": "last keymigration.io/retry annotation value acted on"},
    },
}

PROGRESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "migration": {"type": "string", "maxLength": 253},
                "bucket": {"type": "string", "maxLength": 63},
                "prefix": {"type": "string", "maxLength": 1024},
                "job": {"type": "string", "maxLength": 63},
                "planner": {"type": "boolean", "description": "this object records the shard plan of its prefix"},
                "shard": {"type": "integer"},
                "startAfter": {"type": "string", "maxLength": 1024, "description": "the shard holds the keys after this one"},
                "endKey": {"type": "string", "maxLength": 1024, "description": "... up to and including this one"},
                "files": {"type": "string", "maxLength": 32, "description": "the inventory's data files of this unit, I/N"},
            },
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "a progress object's spec (its unit: prefix, shard boundaries, files) is immutable"},
            ],
        },
        "status": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "!has(oldSelf.shardPlan) || (has(self.shardPlan) && self.shardPlan == oldSelf.shardPlan)",
                 "message": "a recorded shard plan is immutable"},
            ],
            "properties": {
                "shardPlan": {
                    "type": "object",
                    "description": "the prefix's shards, recorded once by its planner Job: boundaries b1 < ... < bk give the "
                    "shards (none, b1], (b1, b2], ..., (bk, none]",
                    "properties": {
                        # Bounded, so the API server's CEL cost estimate of the immutability rule fits its budget.
                        "boundaries": {"type": "array", "maxItems": MAX_SHARDS_PER_PREFIX - 1, "items": {"type": "string", "maxLength": 1024}},
                        "estimates": {"type": "array", "maxItems": MAX_SHARDS_PER_PREFIX, "items": {"type": "integer"},
                                      "description": "estimated objects per shard"},
                        "estimatedObjects": {"type": "integer"},
                        "exact": {"type": "boolean"},
                        "listRequests": {"type": "integer"},
                        "plannedAt": {"type": "string", "format": "date-time"},
                    },
                },
                "shardPlanRefused": {"type": "string", "maxLength": 1024,
                                     "description": "why the planner recorded no shard plan: the plan it made exceeds what one "
                                     "object may hold (shards or bytes); the prefix fails and nothing is migrated under it"},
                "kmsRate": {"type": "number", "description": "this unit's share of the migration's KMS budget (requests/s), "
                            "written by the operator, read by the worker"},
                "kmsRateSerial": {"type": "integer", "minimum": 1, "description": "counts the operator's writes of kmsRate"},
                "kmsRateSince": {"type": "string", "format": "date-time", "description": "when the operator last wrote kmsRate"},
                "kmsRateApplied": {"type": "number", "description": "the share the worker's KMS limiter applies, written by the "
                                   "worker once it took it (new Jobs wait for a lower share to be acknowledged)"},
                "kmsRateAppliedSerial": {"type": "integer", "description": "the kmsRateSerial of the share in kmsRateApplied"},
                "checkpoint": {"type": "string", "description": "the worker's checkpoint (JSON, docs/worker.md#checkpoints)"},
                "counters": _COUNTERS,
                "total": {"type": "integer"},
                "done": {"type": "boolean"},
                "exitCode": {"type": "integer"},
                "lastError": {"type": "string"},
                "state": {
                    "type": "string",
                    "enum": ["Completed", "CompletedWithFailures", "Failed"],
                    "description": "the prefix's outcome, recorded by the operator when it finished (it outlives the Job)",
                },
                "completionTime": {"type": "string", "format": "date-time"},
                "rate": {"type": "number"},
                "faults": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "updatedAt": {"type": "string", "format": "date-time"},
            },
        },
    },
}



def _prefix_problems(prefixes: tuple[str, ...]) -> list[str]:
    problems = []
    if sum(len(p.encode("utf-8")) for p in prefixes) > MAX_PREFIX_BYTES:
        problems.append(f"spec.prefixes: at most {MAX_PREFIX_BYTES} bytes (UTF-8) in all")
    if len(set(prefixes)) != len(prefixes):
        problems.append("spec.prefixes: duplicate prefixes")
    for a in prefixes:
        for b in prefixes:
            if a != b and b.startswith(a):
                problems.append(f"spec.prefixes: {a!r} contains {b!r}; prefixes must not overlap")
    return problems


def _unit_problems(fields: dict) -> list[str]:
    """What the CEL rules say about prefixes, inventory and shards, for an API server without
    them (and the operator's own check)."""
    problems = []
    if bool(fields.get("prefixes")) == bool(fields.get("inventory")):
        problems.append("spec: give exactly one of prefixes and inventory")
    shards = fields.get("shards")
    if shards is not None and ("count" in shards) == ("objectsPerShard" in shards):
        problems.append("spec.shards: give exactly one of count and objectsPerShard")
    if shards is not None and fields.get("inventory"):
        problems.append("spec.shards: shards split prefixes; an inventory is split by inventory.files")
    return problems


def _aws_problems(fields: dict) -> list[str]:
    """A KeyMigration written before endpoints became the installer's keeps its aws fields (they
    are declared, so not pruned): it is refused, never run against an endpoint it names."""
    aws = fields.get("aws") or {}
    return [f"spec.aws.{name}: {AWS_FIELDS_REFUSED}" for name in AWS_FIELDS if name in aws]


@dataclass(frozen=True)
class ShardRequest:
    """``spec.shards``: a count per prefix, or about this many objects per shard."""

    count: int | None = None
    objects_per_shard: int | None = None

    def planner_args(self) -> list[str]:
        return ["--shards", str(self.count)] if self.count else ["--objects-per-shard", str(self.objects_per_shard)]


@dataclass(frozen=True)
class InventoryRef:
    """``spec.inventory``: an S3 Inventory manifest, its data files split over ``files`` units."""

    manifest: str
    files: int = 1


@dataclass(frozen=True)
class WorkUnit:
    """One Job's worth of a KeyMigration: a prefix, one key range of a sharded prefix, the planner
    of a sharded prefix (its Job plans, records the boundaries and migrates nothing), or a slice
    of an inventory's data files. ``identity`` names its Job and progress object."""

    prefix: str
    shard: int | None = None
    start_after: str | None = None
    end_key: str | None = None
    files: str | None = None  # inventory slice, I/N
    planner: bool = False

    @property
    def identity(self) -> str:
        if self.files is not None:
            return f"\0inventory\0{self.files}"
        if self.shard is not None:
            return f"{self.prefix}\0shard\0{self.shard}"
        return self.prefix  # a prefix, or its planner (which records the plan in the prefix's progress object)

    def describe(self) -> str:
        if self.files is not None:
            return f"inventory files {self.files}"
        if self.shard is not None:
            return f"prefix {self.prefix!r} shard {self.shard}"
        return f"prefix {self.prefix!r}" + (" (planning shards)" if self.planner else "")

    def spec_fields(self) -> dict:
        """What the unit's progress object's spec records (immutable there: a CEL rule)."""
        fields: dict = {}
        if self.planner:
            fields["planner"] = True
        if self.shard is not None:
            fields["shard"] = self.shard
            fields.update({k: v for k, v in (("startAfter", self.start_after), ("endKey", self.end_key)) if v is not None})
        if self.files is not None:
            fields["files"] = self.files
        return fields


def shard_units(prefix: str, boundaries: list[str]) -> list[WorkUnit]:
    """The shards boundaries b1 < ... < bk give: (None, b1], (b1, b2], ..., (bk, None]; every key of
    the prefix in exactly one whatever the boundaries are."""
    keys: list[str | None] = [None, *boundaries, None]
    return [WorkUnit(prefix, index, keys[index], keys[index + 1]) for index in range(len(keys) - 1)]


def check_boundaries(boundaries: object) -> list[str]:
    """The problems of a recorded shard plan's boundaries (a list of strictly increasing keys,
    in UTF-8 order, at most MAX_SHARDS_PER_PREFIX - 1 of them and MAX_BOUNDARY_BYTES in all)."""
    if not isinstance(boundaries, list) or not all(isinstance(b, str) for b in boundaries):
        return ["the boundaries are not a list of keys"]
    problems = []
    if len(boundaries) >= MAX_SHARDS_PER_PREFIX:
        problems.append(f"{len(boundaries) + 1} shards, more than {MAX_SHARDS_PER_PREFIX} per prefix")
    size = len(json.dumps(boundaries, ensure_ascii=False).encode("utf-8"))
    if size > MAX_BOUNDARY_BYTES:
        problems.append(f"the boundaries take {size} bytes, more than the {MAX_BOUNDARY_BYTES} one progress object may hold")
    if any(b.encode("utf-8") >= a.encode("utf-8") for b, a in zip(boundaries, boundaries[1:])):
        problems.append("the boundaries are not strictly increasing")
    return problems


@dataclass(frozen=True)
class SourceKeyRef:
    secret_name: str
    key: str
    materials_description: dict[str, str] | None = None


@dataclass(frozen=True)
class KeyMigration:
    bucket: str
    prefixes: tuple[str, ...]
    target_key_id: str
    wrap: str = "kms+context"
    target_encryption_context: dict[str, str] = field(default_factory=dict)
    source_keys: tuple[SourceKeyRef, ...] = ()
    source_kms_key_ids: tuple[str, ...] = ()
    grant_tokens: tuple[str, ...] = ()
    suffix: str = ".instruction"
    mode: Mode = Mode.INSTRUCTION_FILE
    max_jobs: int = 4
    per_job_concurrency: int = 16
    kms_requests_per_second: int | None = None
    verify: str = "envelope"
    verify_sample_rate: float = DEFAULT_SAMPLE_RATE
    suspend: bool = False
    max_failed_objects: int | None = None
    worker: dict = field(default_factory=dict)
    shards: ShardRequest | None = None
    inventory: InventoryRef | None = None

    @classmethod
    def from_fields(cls, fields: dict | None) -> "KeyMigration":
        fields = fields or {}
        validator = jsonschema.Draft7Validator({k: v for k, v in KEYMIGRATION_SCHEMA.items() if k != "x-kubernetes-validations"})
        problems = sorted(
            f"spec.{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in validator.iter_errors(fields)
        )
        if problems:
            raise InvalidKeyMigration(problems)
        prefixes = tuple(fields.get("prefixes") or ())
        problems = _prefix_problems(prefixes) + _aws_problems(fields) + _unit_problems(fields)
        if not fields.get("sourceKeys") and not fields.get("sourceKmsKeyIds"):
            problems.append("spec: give sourceKeys (AES/RSA Secrets) and/or sourceKmsKeyIds")
        suffix = fields.get("instructionFileSuffix", DEFAULT_INSTRUCTION_SUFFIX)
        try:
            mode = check_target(fields.get("mode", Mode.INSTRUCTION_FILE.api_name), suffix, api_names=True)
        except ConfigurationError as error:
            problems.append(f"spec.instructionFileSuffix: {error}")
        try:
            check_caller_context(fields["target"].get("encryptionContext") or {}, "spec.target.encryptionContext")
        except ConfigurationError as error:
            problems.append(str(error))
        if problems:
            raise InvalidKeyMigration(problems)
        concurrency = fields.get("concurrency") or {}
        return cls(
            bucket=fields["bucket"],
            prefixes=prefixes,
            target_key_id=fields["target"]["kmsKeyId"],
            wrap=fields["target"].get("wrap", "kms+context"),
            target_encryption_context=dict(fields["target"].get("encryptionContext") or {}),
            source_keys=tuple(
                SourceKeyRef(k["secretName"], k["key"], k.get("materialsDescription")) for k in fields.get("sourceKeys") or ()
            ),
            source_kms_key_ids=tuple(fields.get("sourceKmsKeyIds") or ()),
            grant_tokens=tuple(fields.get("grantTokens") or ()),
            suffix=suffix,
            mode=mode,
            max_jobs=concurrency.get("maxJobs", 4),
            per_job_concurrency=concurrency.get("perJob", 16),
            kms_requests_per_second=fields.get("kmsRequestsPerSecond"),
            verify=fields.get("verify", "envelope"),
            verify_sample_rate=float(fields.get("verifySampleRate", DEFAULT_SAMPLE_RATE)),
            suspend=bool(fields.get("suspend", False)),
            max_failed_objects=fields.get("maxFailedObjects"),
            worker=dict(fields.get("worker") or {}),
            shards=ShardRequest(fields["shards"].get("count"), fields["shards"].get("objectsPerShard")) if fields.get("shards") else None,
            inventory=InventoryRef(fields["inventory"]["manifest"], fields["inventory"].get("files", 1)) if fields.get("inventory") else None,
        )

    def units(self) -> list[WorkUnit]:
        """The units known from the spec alone: each prefix (its planner when sharded), or the
        inventory's slices. A sharded prefix's shards come from its recorded plan."""
        if self.inventory is not None:
            return [WorkUnit("", files=f"{i}/{self.inventory.files}") for i in range(self.inventory.files)]
        return [WorkUnit(prefix, planner=self.shards is not None) for prefix in self.prefixes]

    # -- the Job's view -----------------------------------------------------------------------

    def key_dir(self, index: int) -> str:
        """The directory source key ``index`` is mounted at in the worker: one per key, named
        after the Secret, holding one file named after its key, so reports name the Secret."""
        return f"{KEY_MOUNT_ROOT}/{index}/{self.source_keys[index].secret_name}"

    def key_file(self, index: int) -> str:
        return f"{self.key_dir(index)}/{self.source_keys[index].key}"

    def per_job_kms_rate(self) -> int | None:
        if not self.kms_requests_per_second:
            return None
        return max(1, self.kms_requests_per_second // self.max_jobs)

    def _kms_options(self) -> list[str]:
        """The target's encryption context and the KMS grant tokens, as ``run`` options."""
        args = []
        for key, value in self.target_encryption_context.items():
            args += ["--encryption-context", f"{key}={value}"]
        for token in self.grant_tokens:
            args += ["--grant-token", token]
        return args

    def planner_args(self, prefix: str, progress_resource: str) -> list[str]:
        """The exact ``keymigration shard`` arguments of the planner Job of a sharded prefix: it
        records the boundaries in ``progress_resource`` (once: a recorded plan is kept)."""
        assert self.shards is not None
        return ["--log-format", "json", "shard", "--bucket", self.bucket, f"--prefix={prefix}", "--suffix", self.suffix,
                *self.shards.planner_args(), "--progress-resource", progress_resource]

    def _where(self, unit: WorkUnit) -> list[str]:
        """A unit's objects as ``run`` options (``--opt=KEY``: a key may start with '-')."""
        args = []
        if self.inventory is not None:
            args += ["--inventory", self.inventory.manifest, "--inventory-files", unit.files or "0/1"]
        for option, value in (("--start-after", unit.start_after), ("--end-key", unit.end_key)):
            if value is not None:
                args.append(f"{option}={value}")
        return args

    def worker_args(self, prefix: str | WorkUnit, progress_resource: str | None = None, max_failures: int | None = None) -> list[str]:
        """The exact ``keymigration run`` arguments of the Job for a unit (a prefix, a shard, an
        inventory slice)."""
        unit = prefix if isinstance(prefix, WorkUnit) else WorkUnit(prefix)
        args = ["--log-format", "json", "run", "--bucket", self.bucket, f"--prefix={unit.prefix}", *self._where(unit)]
        for index, ref in enumerate(self.source_keys):
            path = self.key_file(index)
            if ref.materials_description is not None:
                path += ":" + json.dumps(ref.materials_description, separators=(",", ":"), sort_keys=True)
            args += ["--source-key", path]
        for key_id in self.source_kms_key_ids:
            args += ["--source-kms-key-id", key_id]
        args += ["--kms-key-id", self.target_key_id, "--wrap", self.wrap, "--suffix", self.suffix, "--mode", self.mode.value]
        args += self._kms_options()
        args += ["--concurrency", str(self.per_job_concurrency), "--verify", self.verify]
        if self.verify == VerifyLevel.SAMPLE.value:
            args += ["--verify-sample-rate", repr(self.verify_sample_rate)]
        rate = self.per_job_kms_rate()
        if rate:
            args += ["--kms-rate", str(rate)]
        if max_failures is not None:
            args += ["--max-failures", str(max_failures)]
        if progress_resource:
            args += ["--progress-resource", progress_resource]
        args += ["--report", "-", "--progress", "json"]
        return args


def crd_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": KEYMIGRATION_SCHEMA,
            "status": STATUS_SCHEMA,
        },
        "required": ["spec"],
    }
