"""Minimal CRD manifests for the harness's own tests (not the project's real CRDs).

They mirror the shape the project expects (keymigration.io/v1alpha1, namespaced, status
subresource) with small schemas, so the harness's pruning/defaulting/printer columns get
exercised. The operator's end-to-end tests pass the real CRDs from crds/ instead
(FakeCluster(crds=[path])).
"""
from __future__ import annotations

import copy
from typing import Any

GROUP = "keymigration.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_CONDITIONS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    },
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def _crd(kind: str, plural: str, spec_props: dict[str, Any], status_props: dict[str, Any],
         columns: list[dict[str, Any]], short_names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List",
                      "shortNames": short_names, "categories": ["keymigration"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": spec_props},
                        "status": {"type": "object", "properties": status_props},
                    },
                }},
            }],
        },
    }


KEYMIGRATION_CRD = _crd(
    "KeyMigration", "keymigrations",
    spec_props={
        "bucket": {"type": "string"},
        "prefixes": {"type": "array", "items": {"type": "string"}},
        "kmsKeyId": {"type": "string"},
        "maxParallel": {"type": "integer", "default": 4},
        "suspend": {"type": "boolean", "default": False},
        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
    status_props={
        "observedGeneration": {"type": "integer"},
        "phase": {"type": "string"},
        "conditions": _CONDITIONS,
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    columns=[
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    short_names=["km"],
)

KEYMIGRATIONPROGRESS_CRD = _crd(
    "KeyMigrationProgress", "keymigrationprogresses",
    spec_props={"migration": {"type": "string"}, "prefix": {"type": "string"}},
    status_props={
        "observedGeneration": {"type": "integer"},
        "checkpoint": {"type": "string"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "conditions": _CONDITIONS,
    },
    columns=[],
    short_names=["kmp"],
)

TEST_CRDS = [KEYMIGRATION_CRD, KEYMIGRATIONPROGRESS_CRD]


def keymigration(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "KeyMigration",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"bucket": "b", "prefixes": ["p/"], "kmsKeyId": "arn:aws:kms:eu-west-1:1:key/k", **spec}}


def crd_copy(crd: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(crd)
