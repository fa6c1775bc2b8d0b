"""The CRDs offline: generated from kube/api_types.py, examples valid, CEL immutability rules hold."""
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml
from celpy import celtypes

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


# Kubernetes adds CEL libraries cel-python lacks; the one the rules use: lists' sum().
K8S_CEL_FUNCTIONS = {"sum": lambda values: celtypes.IntType(sum(values))}


def violations(old_spec, new_spec):
    env = celpy.Environment()
    failed = []
    for rule in cel_rules():
        program = env.program(env.compile(rule["rule"]), functions=K8S_CEL_FUNCTIONS)
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


def test_cel_bounds_the_prefixes_total_bytes():
    """Spec plus status must stay under etcd's 1.5 MiB: the prefixes (repeated in up to 200 status
    rows) may hold 256 KiB in all, counted in UTF-8 bytes; the operator checks the same."""
    from keymigration.errors import InvalidKeyMigration

    limit = "prefixes may hold at most 262144 bytes (UTF-8) in all"
    fits = [f"{i:03d}/" + "x" * 1020 for i in range(256)]  # 256 x 1024 bytes: exactly the limit
    assert violations({**BASE, "prefixes": fits}, {**BASE, "prefixes": fits}) == []
    KeyMigration.from_fields({**BASE, "prefixes": fits})
    too_long = fits[:-1] + [fits[-1][:-1] + "\u00e9"]  # one more byte: é is two in UTF-8
    assert violations({**BASE, "prefixes": too_long}, {**BASE, "prefixes": too_long}) == [limit]
    with pytest.raises(InvalidKeyMigration, match="at most 262144 bytes"):
        KeyMigration.from_fields({**BASE, "prefixes": too_long})


@pytest.mark.parametrize("aws", [{"s3EndpointUrl": "https://s3.attacker.example"}, {"kmsEndpointUrl": "https://kms.attacker.example"},
                                 {"region": "eu-west-1"}, {"pathStyle": False}])
def test_the_api_server_refuses_a_keymigration_naming_an_endpoint(aws):
    """Endpoints and region are the installer's: the API server refuses a KeyMigration naming one
    (a CEL rule on spec.aws; its fields stay declared so an older object keeps them and the
    operator reports it Stalled instead of running it elsewhere)."""
    (rule,) = schema()["properties"]["spec"]["properties"]["aws"]["x-kubernetes-validations"]
    env = celpy.Environment()
    program = env.program(env.compile(rule["rule"]), functions=K8S_CEL_FUNCTIONS)
    assert not bool(program.evaluate({"self": celpy.json_to_cel(aws)}))
    assert "come from the operator's installation" in rule["message"]
    assert bool(program.evaluate({"self": celpy.json_to_cel({})}))
