"""docs/install.md, docs/gitops.md and docs/iam-policy.json: consistent with the chart, the
examples and what the worker calls."""
from __future__ import annotations

import json
import re

import yaml

from .conftest import CHART, ROOT

DOCS = ROOT / "docs"


def test_iam_policy_is_least_privilege_for_the_worker():
    policy = json.loads((DOCS / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    actions: dict[str, list[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        names = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert resources and "*" not in resources
        for action in names:
            assert "*" not in action
            actions.setdefault(action, []).extend(resources)
    assert set(actions) == {
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
        "kms:DescribeKey", "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
    }
    # DeleteObject only withdraws the worker's own instruction files.
    assert actions["s3:DeleteObject"] and all(r.endswith("*.instruction") for r in actions["s3:DeleteObject"])
    # Objects under the migrated prefixes only; ListBucket limited by s3:prefix.
    assert all(r.startswith("arn:aws:s3:::payments-archive/20") for r in actions["s3:GetObject"] + actions["s3:PutObject"])
    (listing,) = [s for s in policy["Statement"] if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"]["StringLike"]["s3:prefix"]


def test_install_guide_matches_the_example_and_the_chart():
    guide = (DOCS / "install.md").read_text()
    example = yaml.safe_load((ROOT / "examples" / "keymigration.yaml").read_text())
    name, namespace = example["metadata"]["name"], example["metadata"]["namespace"]
    assert f"kubectl -n {namespace} wait --for=condition=Ready keymigration/{name} --timeout=24h" in guide
    assert f"-l keymigration.io/migration={name}" in guide
    assert "helm install keymigration-operator charts/keymigration-operator" in guide
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["worker"]["serviceAccount"]["name"] in guide
    assert "helm.sh/resource-policy: keep" in guide


def test_relative_links_in_the_docs_resolve():
    for doc in ("install.md", "gitops.md"):
        text = (DOCS / doc).read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (DOCS / target).exists(), f"{doc}: broken link {target}"


def test_copy_modes_policy_lists_what_the_copy_calls():
    """The object rewrite (cut-over, metadata mode, rollback) reads and re-applies Object Lock
    and ACL checks explicitly (aws/copy.py): the documented statements must allow each call."""
    guide = (DOCS / "install.md").read_text()
    snippet = guide[guide.index('"Sid": "CutOverModeOnly"'):]
    snippet = snippet[: snippet.index("```")]
    for action in ("s3:GetObjectTagging", "s3:PutObjectTagging", "s3:GetObjectAcl", "s3:AbortMultipartUpload",
                   "s3:GetObjectRetention", "s3:GetObjectLegalHold", "s3:PutObjectRetention", "s3:PutObjectLegalHold",
                   "s3:GetBucketOwnershipControls", "s3:GetBucketObjectLockConfiguration"):
        assert f'"{action}"' in snippet, action
    from keymigration.aws import copy

    source = (ROOT / "operator" / "keymigration" / "aws" / "copy.py").read_text()
    for call in ("get_object_lock_configuration", "get_object_retention", "get_object_legal_hold", "get_object_acl",
                 "get_bucket_ownership_controls", "get_object_tagging", "abort_multipart_upload"):
        assert f".{call}(" in source, call
    assert copy.LOCK_FIELDS
