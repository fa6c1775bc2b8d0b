"""The Helm chart: lint, renders, Kubernetes schemas, Pod Security "restricted", values schema,
least-privilege RBAC, the CRDs (identical to crds/), and the operator's configuration."""
from __future__ import annotations

import json
import os
import shutil

import jsonschema
import kubernetes_validate
import pytest
import yaml

from keymigration import cli
from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import RUN_AS, InstallConfig, job_manifest
from keymigration.kube.kubeapi import OPERATOR_CLUSTER_RBAC, OPERATOR_RBAC

from .conftest import CHART, NAMESPACE, ROOT, find, one
from .psa import pod_spec_of, restricted_violations

K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
FULLNAME = "km-keymigration-operator"
WORKER_SA = "keymigration-worker"
CRD_NAMES = ("keymigrations.keymigration.io.yaml", "keymigrationprogresses.keymigration.io.yaml")

RENDERS = {
    "default": None,
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "cluster-with-workers": {"worker": {"namespaces": ["x", "y"]}},
    "no-crds": {"crds": {"install": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "everything": {
        "watchNamespaces": ["a"],
        "worker": {
            "namespaces": ["b"],
            "image": {"repository": "registry.example/km-worker", "tag": "1.2.3"},
            "serviceAccount": {
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/km"},
                "namespaceAnnotations": {"b": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/km-b"}},
                "labels": {"team": "storage"},
            },
        },
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "crds": {"annotations": {"argocd.argoproj.io/sync-options": "Prune=false,ServerSideApply=true"}},
        "operator": {
            "podLabels": {"team": "storage", "app.kubernetes.io/name": "ignored"},
            "podAnnotations": {"prometheus.io/scrape": "false"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
            ]}}},
            "priorityClassName": "system-cluster-critical",
        },
    },
}


def rules_set(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role.get("rules") or ()
        for group in rule.get("apiGroups") or ()
        for resource in rule.get("resources") or ()
        for verb in rule.get("verbs") or ()
    }


# The chart grants exactly what the operator declares it uses (and the e2e tests check every
# request it makes against the same declaration).
OPERATOR_NAMESPACED = set(OPERATOR_RBAC)
OPERATOR_CRDS = set(OPERATOR_CLUSTER_RBAC)
OPERATOR_CLUSTER = OPERATOR_NAMESPACED | OPERATOR_CRDS
WORKER_RULES = {("keymigration.io", "keymigrationprogresses", "get"), ("keymigration.io", "keymigrationprogresses/status", "patch")}


def is_worker(obj: dict) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "worker"


def operator_container(docs: list[dict]) -> dict:
    deployment = one(docs, "Deployment", FULLNAME, NAMESPACE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or ()}


# -- lint and render ------------------------------------------------------------------------


@pytest.mark.parametrize("sets", [[], ["--set", "watchNamespaces={a,b}"]], ids=["cluster", "namespaced"])
def test_helm_lint_strict(helm, sets):
    proc = helm.run("lint", "--strict", str(CHART), *sets)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_renders_and_every_manifest_validates_against_kubernetes(helm, render):
    docs = helm.template(RENDERS[render])
    assert docs
    for doc in docs:
        if doc["apiVersion"].split("/")[0].endswith("keymigration.io"):
            continue  # custom resources: kubernetes-validate only knows built-in kinds
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_every_pod_satisfies_pod_security_restricted(helm, render):
    docs = helm.template(RENDERS[render])
    pods = [d for d in docs if d["kind"] in ("Pod", "Deployment", "Job", "StatefulSet", "DaemonSet")]
    assert {d["kind"] for d in pods} == {"Deployment", "Pod"}  # the operator and the helm test pod
    for obj in pods:
        assert restricted_violations(pod_spec_of(obj)) == [], obj["metadata"]["name"]


def worker_job() -> dict:
    km = {
        "apiVersion": "keymigration.io/v1alpha1",
        "kind": "KeyMigration",
        "metadata": {"name": "mig", "namespace": "payments", "uid": "uid-1", "generation": 1},
        "spec": {
            "bucket": "my-bucket",
            "prefixes": ["a/", "b/"],
            "sourceKeys": [{"secretName": "old-keys", "key": "aes.key"}, {"secretName": "old-rsa", "key": "rsa.pem"}],
            "target": {"kmsKeyId": "alias/new"},
            "worker": {"nodeSelector": {"kubernetes.io/os": "linux"}},
        },
    }
    return job_manifest(km, KeyMigration.from_fields(km["spec"]), "a/", InstallConfig())


def test_the_worker_job_satisfies_pod_security_restricted_and_validates():
    job = worker_job()
    assert restricted_violations(pod_spec_of(job)) == []
    # The API server defaults onPodConditions[].status to "True" before validating (batch/v1
    # SetDefaults_Job); the published OpenAPI schema marks it required, so apply that default.
    defaulted = json.loads(json.dumps(job))
    for rule in defaulted["spec"].get("podFailurePolicy", {}).get("rules", ()):
        for pattern in rule.get("onPodConditions") or ():
            pattern.setdefault("status", "True")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(defaulted, version, strict=True)


def test_the_pod_security_checker_finds_violations():
    pod = pod_spec_of(worker_job())
    bad = json.loads(json.dumps(pod))
    bad["hostNetwork"] = True
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    container = bad["containers"][0]
    container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["securityContext"]["privileged"] = True
    container["securityContext"]["runAsNonRoot"] = False
    container["ports"] = [{"containerPort": 80, "hostPort": 80}]
    bad["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    problems = "\n".join(restricted_violations(bad))
    for expected in ("hostNetwork", "hostPath", "drop ALL", "SYS_ADMIN", "allowPrivilegeEscalation", "privileged",
                     "runAsNonRoot", "hostPort", "Unconfined"):
        assert expected in problems
    assert "NET_BIND_SERVICE" not in problems


# -- values.schema.json ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, unknown",
    [
        ({"watchNamespace": ["a"]}, "watchNamespace"),  # a typo at the top level
        ({"worker": {"serviceAcount": {"name": "x"}}}, "serviceAcount"),  # nested
        ({"image": {"tagg": "1.0"}}, "tagg"),
        ({"operator": {"livenessProbe": {"periodSecond": 5}}}, "periodSecond"),
        ({"crds": {"install": True, "keepp": False}}, "keepp"),
    ],
)
def test_values_schema_rejects_unknown_keys(helm, values, unknown):
    proc = helm.run("template", "km", str(CHART), values=values)
    assert proc.returncode != 0, f"helm template accepted an unknown key {unknown}"
    assert unknown in proc.stderr and "additional properties" in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"worker": {"jobTTLSeconds": -2}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"image": {"digest": "md5:abc"}},
        {"operator": {"logFormat": "xml"}},
    ],
)
def test_values_schema_rejects_bad_values(helm, values):
    assert helm.run("template", "km", str(CHART), values=values).returncode != 0


def test_every_object_level_of_the_values_schema_is_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_maps = {
        "global", "annotations", "podAnnotations", "podLabels", "nodeSelector", "labels", "namespaceAnnotations",
        "nodeAffinity", "podAffinity", "podAntiAffinity", "requests", "limits", "alertLabels",
        "namespaceAws",  # keyed by namespace; each value is closed (checked below)
        "namespaceAnnotations[value]",  # annotations, per namespace
    }

    def walk(node: dict, path: str) -> None:
        if node.get("type") == "object" and path.rsplit(".", 1)[-1] not in open_maps:
            assert node.get("additionalProperties") is False, f"{path or '(root)'} accepts unknown keys"
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}[value]")

    walk(schema, "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)


# -- RBAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_rbac_never_grants_secrets_or_wildcards(helm, render):
    for doc in helm.template(RENDERS[render]):
        if doc["kind"] in ("Role", "ClusterRole"):
            for group, resource, verb in rules_set(doc):
                assert "secret" not in resource, doc["metadata"]["name"]
                assert "*" not in (group, resource, verb), doc["metadata"]["name"]
            assert not doc.get("aggregationRule")


def test_cluster_wide_operator_rbac(helm):
    docs = helm.template(RENDERS["cluster-with-workers"])
    role = one(docs, "ClusterRole", FULLNAME)
    assert rules_set(role) == OPERATOR_CLUSTER
    binding = one(docs, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert one(docs, "ServiceAccount", FULLNAME, NAMESPACE)
    assert [r for r in find(docs, "Role") if not is_worker(r)] == []
    assert len(find(docs, "ClusterRole")) == 1 and len(find(docs, "ClusterRoleBinding")) == 1


def test_per_namespace_operator_rbac(helm):
    docs = helm.template(RENDERS["namespaced"])
    (cluster_role,) = find(docs, "ClusterRole")
    assert rules_set(cluster_role) == OPERATOR_CRDS  # nothing namespaced cluster-wide
    (cluster_binding,) = find(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    for ns in ("a", "b"):
        role = one(docs, "Role", FULLNAME, ns)
        assert rules_set(role) == OPERATOR_NAMESPACED
        binding = one(docs, "RoleBinding", FULLNAME, ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert {r["metadata"]["namespace"] for r in find(docs, "Role") if not is_worker(r)} == {"a", "b"}


@pytest.mark.parametrize(
    "render, namespaces",
    [("default", set()), ("namespaced", {"a", "b"}), ("cluster-with-workers", {"x", "y"}), ("everything", {"a", "b"})],
)
def test_worker_identity_in_every_namespace_where_jobs_run(helm, render, namespaces):
    docs = helm.template(RENDERS[render])
    worker_roles = [r for r in find(docs, "Role") if is_worker(r)]
    assert {r["metadata"]["namespace"] for r in worker_roles} == namespaces
    assert not [r for r in find(docs, "ClusterRole") + find(docs, "ClusterRoleBinding") if is_worker(r)]
    for ns in namespaces:
        sa = one(docs, "ServiceAccount", WORKER_SA, ns)
        role = one(docs, "Role", f"{FULLNAME}-worker", ns)
        assert rules_set(role) == WORKER_RULES  # exactly get/patch on its progress channel
        binding = one(docs, "RoleBinding", f"{FULLNAME}-worker", ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{FULLNAME}-worker"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WORKER_SA, "namespace": ns}]
        assert sa.get("automountServiceAccountToken") is True


def test_worker_service_account_annotations_labels_and_pull_secrets(helm):
    docs = helm.template(RENDERS["everything"])
    a = one(docs, "ServiceAccount", WORKER_SA, "a")
    b = one(docs, "ServiceAccount", WORKER_SA, "b")
    assert a["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/km"}
    assert b["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/km-b"}
    assert a["metadata"]["labels"]["team"] == "storage"
    assert a["imagePullSecrets"] == [{"name": "regcred"}]


def test_worker_service_account_can_be_brought_by_the_admin(helm):
    docs = helm.template({"watchNamespaces": ["a"], "worker": {"serviceAccount": {"create": False, "name": "custom"}}})
    assert not [sa for sa in find(docs, "ServiceAccount") if sa["metadata"]["namespace"] == "a"]
    binding = one(docs, "RoleBinding", f"{FULLNAME}-worker", "a")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "custom", "namespace": "a"}]
    assert env_of(operator_container(docs))["KEYMIGRATION_WORKER_SERVICE_ACCOUNT"] == "custom"


# -- CRDs -----------------------------------------------------------------------------------


def test_chart_crd_copies_are_byte_identical_to_crds():
    chart_copies = sorted(p.name for p in (CHART / "files" / "crds").iterdir())
    assert chart_copies == sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(CRD_NAMES)
    for name in CRD_NAMES:
        assert (CHART / "files" / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/keymigration-operator/files/crds/{name} differs from crds/{name}: run `python -m keymigration.kube.crd`"
        )


def source_crds() -> dict[str, dict]:
    crds = [yaml.safe_load((ROOT / "crds" / name).read_text()) for name in CRD_NAMES]
    return {c["metadata"]["name"]: c for c in crds}


@pytest.mark.parametrize(
    "render, annotations",
    [
        ("default", {"helm.sh/resource-policy": "keep"}),
        ("crds-not-kept", None),
        ("everything", {"helm.sh/resource-policy": "keep", "argocd.argoproj.io/sync-options": "Prune=false,ServerSideApply=true"}),
    ],
)
def test_rendered_crds_equal_crds_apart_from_annotations(helm, render, annotations):
    rendered = {c["metadata"]["name"]: c for c in find(helm.template(RENDERS[render]), "CustomResourceDefinition")}
    expected = source_crds()
    assert rendered.keys() == expected.keys()
    for name, crd in rendered.items():
        crd = json.loads(json.dumps(crd))
        got = crd["metadata"].pop("annotations", None)
        assert got == annotations
        assert crd == expected[name]


def test_rendered_crd_text_is_the_file_text_with_one_inserted_annotation(helm):
    text = helm.template_text()
    for name in CRD_NAMES:
        source = (ROOT / "crds" / name).read_text()
        assert source.count("\nmetadata:\n") == 1
        expected = source.replace("\nmetadata:\n", '\nmetadata:\n  annotations:\n    helm.sh/resource-policy: "keep"\n')
        assert expected.rstrip("\n") in text


def test_crds_install_false_renders_no_crds(helm):
    assert find(helm.template(RENDERS["no-crds"]), "CustomResourceDefinition") == []


def test_crd_that_already_has_annotations_keeps_them(helm, tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "crds" / CRD_NAMES[1]
    text = path.read_text()
    name_line = "\n  name: keymigrationprogresses.keymigration.io\n"
    assert name_line in text
    path.write_text(text.replace(name_line, name_line + "  annotations:\n    example.com/x: y\n", 1))
    docs = [d for d in yaml.safe_load_all(helm.template_text(chart=chart)) if d]
    crd = one(docs, "CustomResourceDefinition", "keymigrationprogresses.keymigration.io")
    assert crd["metadata"]["annotations"] == {"example.com/x": "y", "helm.sh/resource-policy": "keep"}
    crd["metadata"].pop("annotations")
    assert crd == source_crds()["keymigrationprogresses.keymigration.io"]


# -- the operator Deployment ---------------------------------------------------------------


def parse_operator_command(container: dict, monkeypatch) -> object:
    """The Deployment's args and env, parsed by the real `keymigration` CLI."""
    for name in [n for n in os.environ if n.startswith("KEYMIGRATION_")]:
        monkeypatch.delenv(name)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    assert "command" not in container  # the image's ENTRYPOINT (keymigration) runs
    return cli.build_parser().parse_args(container["args"])


def test_operator_deployment_shape(helm):
    docs = helm.template()
    deployment = one(docs, "Deployment", FULLNAME, NAMESPACE)
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsUser"] == RUN_AS and pod["securityContext"]["runAsNonRoot"] is True
    container = operator_container(docs)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    port = container["ports"][0]  # then the metrics port (test_observability.py)
    assert port["name"] == "health"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = one(docs, "Service", FULLNAME, NAMESPACE)
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_operator_command_cluster_wide_with_defaults(helm, monkeypatch):
    docs = helm.template()
    container = operator_container(docs)
    args = parse_operator_command(container, monkeypatch)
    assert args.command == "operator" and args.log_format == "json"
    assert args.all_namespaces is True and args.namespace == []
    assert args.liveness == f"http://0.0.0.0:{container['ports'][0]['containerPort']}/healthz"
    # The chart's defaults are the operator's own defaults.
    defaults = InstallConfig()
    assert args.worker_image == defaults.worker_image == "ghcr.io/keymigration/keymigration:0.1.0"
    assert args.worker_service_account == defaults.worker_service_account == WORKER_SA
    assert args.image_pull_policy == defaults.image_pull_policy
    assert args.backoff_limit == defaults.backoff_limit
    assert args.job_ttl_seconds == defaults.ttl_seconds_after_finished
    assert json.loads(args.worker_resources) == defaults.default_resources


def test_operator_command_carries_watch_namespaces_and_worker_settings_from_values(helm, monkeypatch):
    values = {
        "watchNamespaces": ["a", "b"],
        "image": {"repository": "registry.example/km", "tag": "9.9.9", "pullPolicy": "Always"},
        "operator": {"logLevel": "debug", "healthPort": 9091, "statusIntervalSeconds": 5},
        "worker": {
            "image": {"tag": "1.2.3", "pullPolicy": "IfNotPresent"},
            "serviceAccount": {"name": "km-runner"},
            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "backoffLimit": 2,
            "jobTTLSeconds": 2592000,
        },
    }
    docs = helm.template(values)
    container = operator_container(docs)
    assert container["image"] == "registry.example/km:9.9.9" and container["imagePullPolicy"] == "Always"
    args = parse_operator_command(container, monkeypatch)
    assert args.namespace == ["a", "b"] and args.all_namespaces is False
    assert args.log_level == "debug" and args.status_interval == 5
    assert args.liveness == "http://0.0.0.0:9091/healthz" and container["ports"][0]["containerPort"] == 9091
    assert args.worker_image == "registry.example/km:1.2.3"
    assert args.worker_service_account == "km-runner"
    assert args.image_pull_policy == "IfNotPresent"
    assert args.backoff_limit == 2 and args.job_ttl_seconds == 2592000  # no 2.592e+06
    assert json.loads(args.worker_resources) == values["worker"]["resources"]
    assert {one(docs, "ServiceAccount", "km-runner", ns)["metadata"]["namespace"] for ns in ("a", "b")} == {"a", "b"}


def test_image_digest_wins_and_applies_to_workers(helm, monkeypatch):
    docs = helm.template(RENDERS["everything"])
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/keymigration/keymigration@sha256:" + "a" * 64
    args = parse_operator_command(container, monkeypatch)
    assert args.worker_image == "registry.example/km-worker:1.2.3"  # worker.image set: its own
    plain = operator_container(helm.template({"image": {"digest": "sha256:" + "b" * 64}}))
    assert env_of(plain)["KEYMIGRATION_WORKER_IMAGE"] == "ghcr.io/keymigration/keymigration@sha256:" + "b" * 64


def test_operator_pod_scheduling_and_metadata_from_values(helm):
    docs = helm.template(RENDERS["everything"])
    template = one(docs, "Deployment", FULLNAME, NAMESPACE)["spec"]["template"]
    values = RENDERS["everything"]["operator"]
    assert template["metadata"]["labels"]["team"] == "storage"
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "keymigration-operator"  # selector wins
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    pod = template["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == values[key]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_helm_test_pod_checks_healthz_through_the_service(helm):
    docs = helm.template()
    pod = one(docs, "Pod", f"{FULLNAME}-test-healthz", NAMESPACE)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["image"] == operator_container(docs)["image"]
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][-1] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080/healthz"
    compile(container["command"][2], "helm-test", "exec")  # the inline check is valid Python
    assert find(helm.template({"tests": {"enabled": False}}), "Pod") == []


def test_notes_show_kubectl_wait_and_warn_without_worker_namespaces(helm):
    proc = helm.run("install", "km", str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n NAMESPACE wait --for=condition=Ready keymigration/NAME" in notes
    assert "worker.namespaces is empty" in notes
    proc = helm.run("install", "km", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", values={"watchNamespaces": ["a"]})
    assert "worker.namespaces is empty" not in proc.stdout.split("NOTES:", 1)[1]


def test_operator_service_account_can_be_brought_but_must_be_named(helm):
    values = {"operator": {"serviceAccount": {"create": False}}}
    proc = helm.run("template", "km", str(CHART), values=values)
    assert proc.returncode != 0 and "operator.serviceAccount.name is required" in proc.stderr
    docs = helm.template({"operator": {"serviceAccount": {"create": False, "name": "ops-sa"}}})
    assert find(docs, "ServiceAccount") == []
    assert one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert one(docs, "ClusterRoleBinding", FULLNAME)["subjects"][0]["name"] == "ops-sa"


def test_worker_env_secret_reaches_the_operator(helm):
    docs = helm.template({"worker": {"namespaces": ["payments"], "envFromSecret": "aws-static-credentials"}})
    assert env_of(operator_container(docs))["KEYMIGRATION_WORKER_ENV_SECRET"] == "aws-static-credentials"
    assert "KEYMIGRATION_WORKER_ENV_SECRET" not in env_of(operator_container(helm.template()))


def test_worker_allowlists_reach_the_operator(helm, monkeypatch):
    """worker.allowedPriorityClassNames and worker.allowedTolerations become the operator's
    InstallConfig, through the environment the chart gives it and the CLI's own parser."""
    from keymigration.cli import build_parser, install_config

    toleration = {"key": "dedicated", "operator": "Equal", "value": "migrations", "effect": "NoSchedule"}
    docs = helm.template({"worker": {"namespaces": ["payments"], "allowedPriorityClassNames": ["batch-low"],
                                     "allowedTolerations": [toleration]}})
    for name, value in env_of(operator_container(docs)).items():
        monkeypatch.setenv(name, value)
    config = install_config(build_parser().parse_args(["operator", "--all-namespaces"]))
    assert config.allowed_priority_classes == ("batch-low",) and config.allowed_tolerations == (toleration,)
    for name, value in env_of(operator_container(helm.template())).items():  # the defaults: nothing allowed
        monkeypatch.setenv(name, value)
    config = install_config(build_parser().parse_args(["operator", "--all-namespaces"]))
    assert config.allowed_priority_classes == () and config.allowed_tolerations == ()


def test_worker_aws_settings_and_kms_allowlists_reach_the_operator(helm, monkeypatch):
    """worker.aws, worker.namespaceAws, worker.allowedKmsKeys and worker.allowedKmsAccounts become
    the operator's InstallConfig: where workers send their requests is the installer's only."""
    from keymigration.cli import build_parser, install_config
    from keymigration.kube.jobs import WorkerAws

    values = {"worker": {"namespaces": ["payments"], "aws": {"region": "eu-west-1", "kmsEndpointUrl": "https://kms.vpce.example"},
                         "namespaceAws": {"payments": {"s3EndpointUrl": "https://minio.storage.svc:9000", "pathStyle": True}},
                         "allowedKmsKeys": ["arn:aws:kms:eu-west-1:111122223333:key/*"], "allowedKmsAccounts": ["111122223333"]}}
    for name, value in env_of(operator_container(helm.template(values))).items():
        monkeypatch.setenv(name, value)
    config = install_config(build_parser().parse_args(["operator", "--all-namespaces"]))
    assert config.aws_for("payments") == WorkerAws("eu-west-1", "https://minio.storage.svc:9000", "https://kms.vpce.example", True)
    assert config.aws_for("other") == WorkerAws("eu-west-1", None, "https://kms.vpce.example", False)
    assert config.allowed_kms_keys == ("arn:aws:kms:eu-west-1:111122223333:key/*",) and config.allowed_kms_accounts == ("111122223333",)
    for name, value in env_of(operator_container(helm.template())).items():
        monkeypatch.setenv(name, value)
    config = install_config(build_parser().parse_args(["operator", "--all-namespaces"]))
    assert config.aws_for("payments") == WorkerAws() and config.allowed_kms_keys == () == config.allowed_kms_accounts
