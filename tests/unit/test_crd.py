"""The CRDs offline: generated from kube/api_types.py, examples valid, CEL immutability rules hold."""
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml

from keymigration.kube import crd
from keymigration.kube.api_types import KeyMigration

ROOT = Path(__file__).resolve().parents[2]


def test_crds_directory_is_generated_from_the_model():
    for name, text in crd.files().items():
        assert (ROOT / "crds" / name).read_text() == text, f"crds/{name} is stale: run python -m keymigration.kube.crd"


def schema():
    return crd.keymigration_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def examples():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "KeyMigration":
                yield path.name, doc


@pytest.mark.parametrize("name,doc", list(examples()))
def test_examples_validate_against_the_crd_schema(name, doc):
    jsonschema.Draft7Validator(schema()).validate(doc)
    KeyMigration.from_fields(doc["spec"])


def test_crd_object_is_valid_kubernetes():
    import kubernetes_validate

    for name in crd.files():
        manifest = yaml.safe_load((ROOT / "crds" / name).read_text())
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def cel_rules():
    return crd.keymigration_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]


def violations(old_spec, new_spec):
    env = celpy.Environment()
    failed = []
    for rule in cel_rules():
        program = env.program(env.compile(rule["rule"]))
        activation = {"self": celpy.json_to_cel(new_spec), "oldSelf": celpy.json_to_cel(old_spec)}
        if not bool(program.evaluate(activation)):
            failed.append(rule["message"])
    return failed


BASE = next(doc for _, doc in examples())["spec"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"bucket": "another-bucket"}, "bucket is immutable"),
        ({"prefixes": ["2019/"]}, "prefixes are immutable"),
        ({"sourceKeys": [{"secretName": "other", "key": "k"}]}, "sourceKeys are immutable"),
        ({"sourceKmsKeyIds": ["alias/old"]}, "sourceKmsKeyIds are immutable"),
        ({"target": {"kmsKeyId": "alias/other"}}, "target is immutable"),
        ({"instructionFileSuffix": ".other"}, "instructionFileSuffix is immutable"),
        ({"mode": "Metadata"}, "mode is immutable"),
    ],
)
def test_cel_rejects_changing_what_is_immutable(change, message):
    assert violations(BASE, {**BASE, **change}) == [message]
    if "mode" in change:  # from one mode to another, too
        assert violations({**BASE, "mode": "CutOver"}, {**BASE, **change}) == [message]


@pytest.mark.parametrize("change", [{"suspend": True}, {"concurrency": {"maxJobs": 9}}, {"kmsRequestsPerSecond": 5}, {"maxFailedObjects": 3}])
def test_cel_allows_editing_what_may_change(change):
    assert violations(BASE, {**BASE, **change}) == []


def test_mode_enum_and_printer_column_follow_the_vocabulary():
    from keymigration.formats.vocabulary import Mode
    from keymigration.kube.crd import keymigration_crd

    version = keymigration_crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["mode"]
    assert schema["enum"] == ["CutOver", "InstructionFile", "Metadata"] == sorted(m.api_name for m in Mode)
    assert {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "description": "where the new envelopes go"} in (
        version["additionalPrinterColumns"])
