"""Malformed KeyMigrations: each is either rejected by the CRD's schema (what the API server
enforces, checked offline with jsonschema on openAPIV3Schema) or accepted by the schema and
reported Stalled with a precise message by the operator's reconcile step."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml

from keymigration.kube import crd
from keymigration.kube.jobs import InstallConfig
from keymigration.kube.reconcile import reconcile

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "examples" / "keymigration.yaml").read_text())
SCHEMA = crd.keymigration_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

# (change to the example's spec, where it is caught, a piece of the message)
TABLE = [
    ({"bucket": "UPPER_case"}, "schema", "bucket"),
    ({"bucket": "ab"}, "schema", "bucket"),
    ({"bucket": "x" * 64}, "schema", "bucket"),
    ({"prefixes": []}, "schema", "prefixes"),
    ({"prefixes": "2019/"}, "schema", "prefixes"),
    ({"prefixes": ["p"] * 1001}, "schema", "prefixes"),
    ({"prefixes": ["a" * 1025]}, "schema", "prefixes"),
    ({"sourceKeys": [{"secretName": "Bad_Name", "key": "k"}]}, "schema", "secretName"),
    ({"sourceKeys": [{"secretName": "s"}]}, "schema", "key"),
    ({"sourceKeys": [{"secretName": "s", "key": "k/../../etc"}]}, "schema", "key"),
    ({"sourceKeys": [{"secretName": "s", "key": ".."}]}, "schema", "key"),
    ({"sourceKeys": [{"secretName": "s", "key": "..data"}]}, "schema", "key"),
    ({"sourceKeys": [{"secretName": "s", "key": "k", "materialsDescription": {"a": 1}}]}, "schema", "materialsDescription"),
    ({"sourceKmsKeyIds": ["not a key"]}, "schema", "sourceKmsKeyIds"),
    ({"target": {}}, "schema", "kmsKeyId"),
    ({"target": {"kmsKeyId": "alias/x", "wrap": "AESWrap"}}, "schema", "wrap"),
    ({"target": {"kmsKeyId": "arn:aws:kms:us-east-1:12345:key/abc"}}, "schema", "kmsKeyId"),
    ({"instructionFileSuffix": "instruction"}, "schema", "instructionFileSuffix"),
    ({"instructionFileSuffix": ".a/b"}, "schema", "instructionFileSuffix"),
    ({"mode": "Yolo"}, "schema", "mode"),
    ({"concurrency": {"maxJobs": 0}}, "schema", "maxJobs"),
    ({"concurrency": {"perJob": 1000}}, "schema", "perJob"),
    ({"kmsRequestsPerSecond": 0}, "schema", "kmsRequestsPerSecond"),
    ({"verify": "maybe"}, "schema", "verify"),
    ({"suspend": "yes"}, "schema", "suspend"),
    ({"maxFailedObjects": -1}, "schema", "maxFailedObjects"),
    ({"aws": {"s3EndpointUrl": "ftp://x"}}, "schema", "s3EndpointUrl"),
    ({"worker": {"image": "evil/image"}}, "schema", "Additional properties"),
    ({"worker": {"serviceAccountName": "admin"}}, "schema", "Additional properties"),
    ({"serviceAccountName": "admin"}, "schema", "Additional properties"),
    ({"worker": {"tolerations": [{"operator": "Sometimes"}]}}, "schema", "operator"),
    ({"worker": {"activeDeadlineSeconds": 5}}, "schema", "activeDeadlineSeconds"),
    # Accepted by the schema, refused by the operator with a precise Stalled message.
    ({"prefixes": ["2019/", "2019/"]}, "stalled", "duplicate prefixes"),
    ({"prefixes": ["2019/", "2019/06/"]}, "stalled", "'2019/' contains '2019/06/'"),
    ({"prefixes": ["", "2019/"]}, "stalled", "must not overlap"),
    ({"sourceKeys": []}, "stalled", "give sourceKeys"),
    ({"instructionFileSuffix": ".keymigration-backup"}, "stalled", "reserved for backups"),
    ({"mode": "CutOver", "instructionFileSuffix": ".rewrapped"}, "stalled", "mode CutOver writes .instruction"),
    # Written before endpoints became the installer's (and refused by the API server now, CEL).
    ({"aws": {"kmsEndpointUrl": "https://kms.attacker.example"}}, "stalled", "spec.aws.kmsEndpointUrl: spec.aws is no longer honoured"),
    ({"aws": {"region": "eu-west-1"}}, "stalled", "come from the operator's installation"),
]


def document(change: dict) -> dict:
    doc = json.loads(json.dumps(EXAMPLE))
    doc["spec"].update(change)
    doc["metadata"].update({"uid": "u1", "generation": 3})
    return doc


@pytest.mark.parametrize("change,where,needle", TABLE, ids=[f"{w}:{n}" for _, w, n in TABLE])
def test_malformed_keymigration(change, where, needle):
    doc = document(change)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]
    if where == "schema":
        assert errors, "the schema accepted it"
        assert any(needle in error for error in errors), errors
        return
    assert errors == []
    plan = reconcile(doc, [], [], InstallConfig(), datetime(2026, 1, 1, tzinfo=timezone.utc))
    stalled = next(c for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert needle in stalled["message"] and stalled["observedGeneration"] == 3
    assert not plan.create


def test_the_table_is_large_enough():
    assert len(TABLE) >= 30
