"""The CustomResourceDefinitions, generated from kube/api_types.py (the one source of truth).

``python -m keymigration.kube.crd`` rewrites crds/ and the chart's byte-identical copy in
charts/keymigration-operator/files/crds/; tests fail when either differs from what this module
generates.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from keymigration.kube.api_types import (
    GROUP,
    KIND,
    PLURAL,
    PROGRESS_KIND,
    PROGRESS_PLURAL,
    PROGRESS_SCHEMA,
    VERSION,
    crd_schema,
)

HEADER = "# Generated from operator/keymigration/kube/api_types.py by `python -m keymigration.kube.crd`. Do not edit.\n"
LABELS = {"app.kubernetes.io/name": "keymigration", "app.kubernetes.io/part-of": "keymigration"}


def _crd(kind: str, plural: str, singular: str, short: str, columns: list[dict], schema: dict) -> dict:
    """A namespaced, single-version CRD of the project's group with a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": LABELS},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": singular, "shortNames": [short], "listKind": f"{kind}List", "categories": ["keymigration"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def keymigration_crd() -> dict:
    condition = lambda t: f'.status.conditions[?(@.type=="{t}")]'  # noqa: E731
    columns = [
        {"name": "Ready", "type": "string", "jsonPath": condition("Ready") + ".status"},
        {"name": "Reason", "type": "string", "jsonPath": condition("Ready") + ".reason"},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "description": "where the new envelopes go"},
        {"name": "Prefixes", "type": "string", "jsonPath": ".status.prefixesDone", "description": "completed/total"},
        {"name": "Migrated", "type": "integer", "jsonPath": ".status.totals.migrated"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.totals.failed"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1, "description": "kubectl get -o wide"},
    ]
    return _crd(KIND, PLURAL, "keymigration", "km", columns, crd_schema())


def progress_crd() -> dict:
    columns = [
        {"name": "Prefix", "type": "string", "jsonPath": ".spec.prefix"},
        {"name": "State", "type": "string", "jsonPath": ".status.state"},
        {"name": "Done", "type": "boolean", "jsonPath": ".status.done"},
        {"name": "Migrated", "type": "integer", "jsonPath": ".status.counters.migrated"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.counters.failed"},
        {"name": "Updated", "type": "date", "jsonPath": ".status.updatedAt"},
    ]
    base = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    schema = {"type": "object", "properties": {**base, **PROGRESS_SCHEMA["properties"]}}
    return _crd(PROGRESS_KIND, PROGRESS_PLURAL, "keymigrationprogress", "kmp", columns, schema)


def render(crd: dict) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120)


def files() -> dict[str, str]:
    """File name -> content, as they stand in crds/ and charts/keymigration-operator/files/crds/."""
    return {
        f"{PLURAL}.{GROUP}.yaml": render(keymigration_crd()),
        f"{PROGRESS_PLURAL}.{GROUP}.yaml": render(progress_crd()),
    }


CHART_COPY = Path("charts") / "keymigration-operator" / "files" / "crds"


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path.cwd()
    for directory in (root / "crds", root / CHART_COPY):
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files().items():
            (directory / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
