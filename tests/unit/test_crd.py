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


def rules_at(*path):
    """The CEL rules of a node of the KeyMigration (or, with "progress" first, the progress) schema."""
    node = crd.progress_crd() if path and path[0] == "progress" else crd.keymigration_crd()
    node = node["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path[1:] if path and path[0] == "progress" else path:
        node = node["properties"][name]
    return node.get("x-kubernetes-validations", [])


def broken(rules, old, new):
    env = celpy.Environment()
    failed = []
    for rule in rules:
        program = env.program(env.compile(rule["rule"]), functions=K8S_CEL_FUNCTIONS)
        activation = {"self": celpy.json_to_cel(new)} | ({"oldSelf": celpy.json_to_cel(old)} if old is not None else {})
        if not bool(program.evaluate(activation)):
            failed.append(rule["message"])
    return failed


INVENTORY = {"manifest": "s3://inventory-bucket/payments-archive/daily/manifest.json", "files": 4}
NO_PREFIXES = {k: v for k, v in BASE.items() if k != "prefixes"}


@pytest.mark.parametrize("old,new,messages", [
    (BASE, {**BASE, "shards": {"count": 3}}, ["shards are immutable"]),
    ({**BASE, "shards": {"count": 3}}, {**BASE, "shards": {"count": 4}}, ["shards are immutable"]),
    ({**BASE, "shards": {"count": 3}}, BASE, ["shards are immutable"]),
    ({**NO_PREFIXES, "inventory": INVENTORY}, {**NO_PREFIXES, "inventory": {**INVENTORY, "files": 8}}, ["inventory is immutable"]),
    (BASE, {**NO_PREFIXES, "inventory": INVENTORY}, ["prefixes are immutable", "inventory is immutable"]),
    (BASE, NO_PREFIXES, ["give exactly one of prefixes and inventory", "prefixes are immutable"]),
    (BASE, {**BASE, "inventory": INVENTORY}, ["give exactly one of prefixes and inventory", "inventory is immutable"]),
    ({**NO_PREFIXES, "inventory": INVENTORY}, {**NO_PREFIXES, "inventory": INVENTORY, "shards": {"count": 2}},
     ["shards split prefixes; an inventory is split by inventory.files", "shards are immutable"]),
])
def test_cel_rules_of_prefixes_inventory_and_shards(old, new, messages):
    assert violations(old, new) == messages


def test_cel_allows_a_sharded_or_inventory_keymigration_to_be_edited_where_it_may():
    for spec in ({**BASE, "shards": {"objectsPerShard": 100000}}, {**NO_PREFIXES, "inventory": INVENTORY}):
        assert violations(spec, {**spec, "suspend": True, "kmsRequestsPerSecond": 9}) == []


def test_cel_shards_need_exactly_one_of_count_and_objects_per_shard():
    rules = rules_at("spec", "shards")
    assert broken(rules, None, {"count": 3}) == [] and broken(rules, None, {"objectsPerShard": 5000}) == []
    assert broken(rules, None, {}) == broken(rules, None, {"count": 3, "objectsPerShard": 5000}) == [
        "shards: give exactly one of count and objectsPerShard"]


def test_cel_a_progress_objects_unit_and_a_recorded_shard_plan_are_immutable():
    """Boundaries recorded once never change: a shard's key range lives in its progress object's
    spec, the plan in its prefix's progress object's status; neither can be rewritten."""
    spec_rules = rules_at("progress", "spec")
    shard = {"migration": "m", "prefix": "a/", "job": "m-1", "shard": 1, "startAfter": "a/k1", "endKey": "a/k2"}
    assert broken(spec_rules, shard, dict(shard)) == []
    assert broken(spec_rules, shard, {**shard, "endKey": "a/k3"}) == [
        "a progress object's spec (its unit: prefix, shard boundaries, files) is immutable"]
    status_rules = rules_at("progress", "status")
    plan = {"shardPlan": {"boundaries": ["a/k1", "a/k2"], "estimatedObjects": 30}}
    assert broken(status_rules, {}, plan) == []  # recorded the first time
    assert broken(status_rules, plan, {**plan, "counters": {"scanned": 1}, "state": "Failed"}) == []
    assert broken(status_rules, plan, {"shardPlan": {"boundaries": ["a/k0"], "estimatedObjects": 30}}) == ["a recorded shard plan is immutable"]
    assert broken(status_rules, plan, {"counters": {}}) == ["a recorded shard plan is immutable"]
