"""The operator's worker Jobs as the kubelet starts them: what reaches `keymigration run`.

Each Job is built by kube/jobs.py and turned into a process by the fake kubelet
(tests/support/k8s/jobrunner.py: build_pod_launch), which expands command and args as the real
kubelet does; the resulting argv is parsed by the CLI's own parser.
"""
from __future__ import annotations

import base64

from keymigration.cli import build_parser, settings_from_args
from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import InstallConfig, job_manifest
from tests.support.k8s.jobrunner import build_pod_launch

SECRET = {"data": {"aes.key": base64.b64encode(b"k" * 32).decode()}}


def km(**fields) -> dict:
    spec = {"bucket": "my-bucket", "prefixes": ["a/"], "target": {"kmsKeyId": "alias/new"},
            "sourceKeys": [{"secretName": "old-keys", "key": "aes.key"}], **fields}
    return {"apiVersion": "keymigration.io/v1alpha1", "kind": "KeyMigration",
            "metadata": {"name": "mig", "namespace": "ns", "uid": "0b6f3c54-8a51-4d2e-9a52-4c3e0f7d9e11"}, "spec": spec}


def launched_run_options(obj: dict, prefix: str, tmp_path, config: InstallConfig = InstallConfig()):
    migration = KeyMigration.from_fields(obj["spec"])
    job = job_manifest(obj, migration, prefix, config)
    launch = build_pod_launch(job, "mig-abcde", tmp_path / "pod", lambda kind, ns, name: SECRET if kind == "Secret" else None)
    return settings_from_args(build_parser().parse_args(launch.argv[3:])), launch


def test_dollar_signs_reach_the_worker_byte_exact(tmp_path):
    """The kubelet turns $$ into $ and expands $(VAR) of the container's variables: every $ in the
    container's args is escaped, so prefixes and materials descriptions arrive as written."""
    prefixes = ["cache/$$tmp/", "x/$(HOME)/", "x/$(KEYMIGRATION_NAMESPACE)/", "y/$/", "z/$$$(/"]
    matdesc = {"team": "$(KEYMIGRATION_MIGRATION)", "cost": "$$5"}
    obj = km(prefixes=prefixes, sourceKeys=[{"secretName": "old-keys", "key": "aes.key", "materialsDescription": matdesc}])
    for index, prefix in enumerate(prefixes):
        options, launch = launched_run_options(obj, prefix, tmp_path / str(index))
        assert options.prefix == prefix
        path, _, description = options.source_key_files[0].partition(":")
        assert description == '{"cost":"$$5","team":"$(KEYMIGRATION_MIGRATION)"}'
        assert open(path, "rb").read() == b"k" * 32  # the mount path survived escaping too


def test_children_of_any_valid_keymigration_name_are_valid_and_never_shared(fake_cluster):
    """Names up to 253 characters; two long names with the same first 41+ characters get their own
    Jobs and progress objects, and every label value is valid (the fake API server answers 422
    otherwise, as a real one does)."""
    from datetime import datetime, timezone

    from keymigration.kube.reconcile import reconcile

    common = "payments-archive-" + "x" * 60
    names = [common + "-a" * 80, common + "-b" * 80, "m" * 253]
    children: dict[str, set[str]] = {}
    for name in names:
        assert len(name) <= 253
        obj = km(prefixes=["2019/", "2020/"])
        obj["metadata"] = {"name": name, "namespace": "default"}
        obj = fake_cluster.create(obj)
        plan = reconcile(obj, [], [], InstallConfig(), datetime(2026, 1, 1, tzinfo=timezone.utc))
        for child in plan.create:
            fake_cluster.create(child)  # 422 for an invalid name or label, 409 for a shared name
        children[name] = {child["metadata"]["name"] for child in plan.create}
        assert all(len(child) <= 52 for child in children[name])  # room for the pods' suffix in a 63-char label
    assert len(set().union(*children.values())) == 2 * len(names)
