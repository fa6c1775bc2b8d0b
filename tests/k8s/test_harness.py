"""Tests of the fake cluster itself (tests/support/README.md): API semantics, watch, GC, the Job
controller (JobRunner), kubectl. Each proves a behaviour of a real API server or Job controller
that the operator's tests rely on."""
from __future__ import annotations

import base64
import json
import stat
import sys
import threading
import time

import kubernetes
import pytest
import yaml

from tests.k8s.conftest import CRDS
from tests.support.k8s.cluster import ApiException, FakeCluster, JobRunner, condition
from tests.support.k8s.jobrunner import PodPending, build_pod_launch

API_VERSION = "keymigration.io/v1alpha1"
KM = (API_VERSION, "KeyMigration")


def keymigration(name: str, namespace: str = "default", **spec) -> dict:
    return {"apiVersion": API_VERSION, "kind": "KeyMigration", "metadata": {"name": name, "namespace": namespace},
            "spec": {"bucket": "bucket-b", "prefixes": ["p/"], "sourceKmsKeyIds": ["alias/old"],
                     "target": {"kmsKeyId": "alias/new"}, **spec}}


def owner_ref(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def job_manifest(name: str, args: list[str], *, namespace: str = "default", command: list[str] | None = None,
                 **spec) -> dict:
    container = {"name": "worker", "image": "keymigration:test", "args": args}
    if command:
        container["command"] = command
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, **spec,
                     "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}


# ------------------------------------------------------------------------------------------------
# API semantics


def test_crud_uid_resource_version_generation(fake_cluster: FakeCluster):
    created = fake_cluster.create(keymigration("m1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert created["spec"]["verify"] == "envelope"  # defaulted from the CRD schema
    rv1 = int(meta["resourceVersion"])

    got = fake_cluster.get(*KM, "default", "m1")
    assert got == created

    patched = fake_cluster.patch(*KM, "default", "m1", {"spec": {"bucket": "bucket-other"}})
    assert int(patched["metadata"]["resourceVersion"]) > rv1
    assert patched["metadata"]["generation"] == 2

    # A no-op patch changes nothing: same resourceVersion, no event.
    again = fake_cluster.patch(*KM, "default", "m1", {"spec": {"bucket": "bucket-other"}})
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]

    # Metadata-only changes do not bump the generation.
    labelled = fake_cluster.patch(*KM, "default", "m1", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 2

    with pytest.raises(ApiException) as e:
        fake_cluster.create(keymigration("m1"))
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        fake_cluster.get(*KM, "default", "missing")
    assert e.value.status == 404 and json.loads(e.value.body)["reason"] == "NotFound"

    generated = fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"generateName": "cm-", "namespace": "default"}, "data": {"k": "v"}})
    assert generated["metadata"]["name"].startswith("cm-") and len(generated["metadata"]["name"]) == 8
    assert "generation" not in generated["metadata"]  # built-ins without spec have none

    names = [o["metadata"]["name"] for o in fake_cluster.list(*KM)]
    assert names == ["m1"]
    fake_cluster.delete(*KM, "default", "m1")
    assert fake_cluster.get_or_none(*KM, "default", "m1") is None


def test_status_subresource_semantics(fake_cluster: FakeCluster):
    obj = fake_cluster.create(keymigration("m1"), keep_status=False)
    # status on create is dropped by the server (status subresource)
    raw = fake_cluster.request("POST", fake_cluster.path(*KM, "default"),
                               body=dict(keymigration("m2"), status={"phase": "Fake"}))
    assert "status" not in raw

    # A main-resource write cannot change status; the spec part still applies.
    after = fake_cluster.patch(*KM, "default", "m1", {"spec": {"bucket": "bucket-x"}, "status": {"phase": "Nope"}})
    assert "status" not in after and after["metadata"]["generation"] == 2

    # A status write changes only status, never the generation, and ignores spec changes.
    st = fake_cluster.patch_status(*KM, "default", "m1", {"spec": {"bucket": "bucket-y"},
                                                            "status": {"phase": "Running", "observedGeneration": 2}})
    assert st["status"] == {"phase": "Running", "observedGeneration": 2}
    assert st["spec"]["bucket"] == "bucket-x" and st["metadata"]["generation"] == 2
    assert int(st["metadata"]["resourceVersion"]) > int(after["metadata"]["resourceVersion"])

    # Undeclared status fields are pruned silently, as by a real server with a structural schema.
    pruned = fake_cluster.patch_status(*KM, "default", "m1", {"status": {"undeclared": 1, "prefixCounts": {"total": 3}}})
    assert "undeclared" not in pruned["status"] and pruned["status"]["prefixCounts"] == {"total": 3}

    # Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
    stale = dict(obj, metadata=dict(obj["metadata"]))
    with pytest.raises(ApiException) as e:
        fake_cluster.replace(stale)
    assert e.value.status == 409
    # PUT of a custom resource without resourceVersion is invalid.
    no_rv = dict(obj, metadata={k: v for k, v in obj["metadata"].items() if k != "resourceVersion"})
    with pytest.raises(ApiException) as e:
        fake_cluster.replace(no_rv)
    assert e.value.status == 422
    # A JSON patch whose test op fails is a 422 (kopf relies on this).
    with pytest.raises(ApiException) as e:
        fake_cluster.patch(*KM, "default", "m1", [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                                                  {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}],
                           patch_type="json")
    assert e.value.status == 422
    # Strategic merge patch is refused for custom resources (415), like a real server.
    with pytest.raises(ApiException) as e:
        fake_cluster.patch(*KM, "default", "m1", {"spec": {"bucket": "bucket-z"}}, patch_type="strategic")
    assert e.value.status == 415

    # History of versions, from kmock's object store.
    history = fake_cluster.history(*KM, "default", "m1")
    assert [h["metadata"]["generation"] for h in history if h] == [1, 2, 2, 2]


def test_builtin_strategic_merge_and_job_defaults(fake_cluster: FakeCluster):
    job = fake_cluster.create(job_manifest("j1", ["--version"]))
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["completions"] == 1
    assert job["spec"]["template"]["metadata"]["labels"]["job-name"] == "j1"
    assert job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]
    # conditions merge by type under strategic merge patch (the default of the typed kubernetes client)
    batch = kubernetes.client.BatchV1Api(fake_cluster.api_client)
    batch.patch_namespaced_job_status("j1", "default", {"status": {"conditions": [
        {"type": "A", "status": "True"}]}})
    batch.patch_namespaced_job_status("j1", "default", {"status": {"conditions": [
        {"type": "B", "status": "True"}]}})
    status = batch.read_namespaced_job_status("j1", "default").status
    assert [c.type for c in status.conditions] == ["A", "B"]
    # spec.suspend is mutable; spec.template is not (while the job is not suspended)
    batch.patch_namespaced_job("j1", "default", {"spec": {"suspend": True}})
    with pytest.raises(ApiException) as e:
        fake_cluster.patch("batch/v1", "Job", "default", "j1",
                           {"spec": {"template": {"spec": {"containers": [{"name": "worker", "args": ["x"]}]}}}},
                           patch_type="strategic")
    assert e.value.status == 422 and "immutable" in e.value.body
    # stringData of Secrets becomes base64 data
    secret = fake_cluster.create({"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "s", "namespace": "default"}, "stringData": {"k": "v"}})
    assert secret["data"] == {"k": base64.b64encode(b"v").decode()} and "stringData" not in secret


def test_label_and_field_selectors(fake_cluster: FakeCluster):
    for name, labels in [("a", {"app": "km", "tier": "x"}), ("b", {"app": "km"}), ("c", {"app": "other"})]:
        fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": name, "namespace": "default", "labels": labels}})
    names = lambda **kw: sorted(o["metadata"]["name"] for o in fake_cluster.list("v1", "ConfigMap", "default", **kw))
    assert names(label_selector="app=km") == ["a", "b"]
    assert names(label_selector="app=km,tier") == ["a"]
    assert names(label_selector="!tier") == ["b", "c"]
    assert names(label_selector="app in (km,other),app!=km") == ["c"]
    assert names(label_selector="app notin (km)") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.namespace=default,metadata.name!=a") == ["b", "c"]


def test_watch_with_kubernetes_client(fake_cluster: FakeCluster):
    api = kubernetes.client.CustomObjectsApi(fake_cluster.new_api_client())
    start_rv = fake_cluster.request("GET", fake_cluster.path(*KM, "default"))["metadata"]["resourceVersion"]
    events: list[tuple[str, str, str]] = []
    done = threading.Event()

    def consume() -> None:
        w = kubernetes.watch.Watch()
        for ev in w.stream(api.list_namespaced_custom_object, "keymigration.io", "v1alpha1", "default",
                           "keymigrations", label_selector="watched=yes", resource_version=start_rv,
                           timeout_seconds=5):
            events.append((ev["type"], ev["object"]["metadata"]["name"],
                           (ev["object"].get("status") or {}).get("phase", "")))
            if ev["type"] == "DELETED" and ev["object"]["metadata"]["name"] == "w1":
                w.stop()
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.2)
    fake_cluster.create(dict(keymigration("w1"), metadata={"name": "w1", "namespace": "default",
                                                           "labels": {"watched": "yes"}}))
    fake_cluster.create(keymigration("unwatched"))
    fake_cluster.patch_status(*KM, "default", "w1", {"status": {"phase": "Running"}})
    fake_cluster.patch(*KM, "default", "unwatched", {"metadata": {"labels": {"watched": "yes"}}})  # enters
    fake_cluster.patch(*KM, "default", "unwatched", {"metadata": {"labels": {"watched": "no"}}})  # leaves
    fake_cluster.delete(*KM, "default", "w1")
    assert done.wait(10)
    thread.join()
    assert events == [("ADDED", "w1", ""), ("MODIFIED", "w1", "Running"), ("ADDED", "unwatched", ""),
                      ("DELETED", "unwatched", ""), ("DELETED", "w1", "Running")]

    # Resuming from an old resourceVersion replays what happened since; a too-old one is 410.
    raw = fake_cluster.api_client.rest_client.pool_manager.request(
        "GET", f"{fake_cluster.url}{fake_cluster.path(*KM, 'default')}?watch=true&resourceVersion={start_rv}"
               f"&timeoutSeconds=1", preload_content=True)
    types = [json.loads(line)["type"] for line in raw.data.decode().splitlines()]
    assert types.count("ADDED") == 2 and types.count("DELETED") == 1
    fake_cluster.call(lambda s: setattr(s, "log_floor", s.rv))
    raw = fake_cluster.api_client.rest_client.pool_manager.request(
        "GET", f"{fake_cluster.url}{fake_cluster.path(*KM, 'default')}?watch=true&resourceVersion={start_rv}")
    error = json.loads(raw.data.decode().splitlines()[0])
    assert error["type"] == "ERROR" and error["object"]["code"] == 410


def test_finalizers(fake_cluster: FakeCluster):
    fake_cluster.create(dict(keymigration("f1"), metadata={"name": "f1", "namespace": "default",
                                                           "finalizers": ["keymigration.io/finalizer"]}))
    deleting = fake_cluster.delete(*KM, "default", "f1")
    assert deleting["metadata"]["deletionTimestamp"]
    obj = fake_cluster.get(*KM, "default", "f1")
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:  # no new finalizers while being deleted
        fake_cluster.patch(*KM, "default", "f1", {"metadata": {"finalizers": ["keymigration.io/finalizer", "x/y"]}})
    assert e.value.status == 422
    fake_cluster.patch(*KM, "default", "f1", {"metadata": {"finalizers": None}})
    assert fake_cluster.get_or_none(*KM, "default", "f1") is None


def test_garbage_collection_cascades(fake_cluster: FakeCluster):
    fake_cluster.create_namespace("other")
    km = fake_cluster.create(keymigration("owner"))
    job = fake_cluster.create(dict(job_manifest("child", ["--version"]),
                                   metadata={"name": "child", "namespace": "default",
                                             "ownerReferences": [owner_ref(km)]}))
    grandchild = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "grandchild", "namespace": "default", "ownerReferences": [owner_ref(job)]}}
    fake_cluster.create(grandchild)
    # an owner in another namespace does not count: collected at once, as by the real GC
    fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "cross-ns", "namespace": "other", "ownerReferences": [owner_ref(km)]}})
    assert fake_cluster.gc() == 1
    assert fake_cluster.get_or_none("v1", "ConfigMap", "other", "cross-ns") is None
    assert fake_cluster.get_or_none("batch/v1", "Job", "default", "child") is not None

    fake_cluster.delete(*KM, "default", "owner")
    assert fake_cluster.get_or_none("batch/v1", "Job", "default", "child") is not None  # until gc runs
    assert fake_cluster.gc() == 2  # child, then grandchild (cascading)
    assert fake_cluster.get_or_none("batch/v1", "Job", "default", "child") is None
    assert fake_cluster.get_or_none("v1", "ConfigMap", "default", "grandchild") is None

    # Orphan: dependents stay and lose the owner reference.
    km2 = fake_cluster.create(keymigration("owner2"))
    fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "kept", "namespace": "default", "ownerReferences": [owner_ref(km2)]}})
    fake_cluster.delete(*KM, "default", "owner2", propagation_policy="Orphan")
    fake_cluster.gc()
    assert "ownerReferences" not in fake_cluster.get("v1", "ConfigMap", "default", "kept")["metadata"]

    # Foreground: the owner waits (deletionTimestamp + foregroundDeletion) until dependents are gone.
    km3 = fake_cluster.create(keymigration("owner3"))
    fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "dep3", "namespace": "default", "ownerReferences": [owner_ref(km3)]}})
    fake_cluster.delete(*KM, "default", "owner3", propagation_policy="Foreground")
    assert "foregroundDeletion" in fake_cluster.get(*KM, "default", "owner3")["metadata"]["finalizers"]
    fake_cluster.gc()
    assert fake_cluster.get_or_none("v1", "ConfigMap", "default", "dep3") is None
    assert fake_cluster.get_or_none(*KM, "default", "owner3") is None

    # Background GC loop.
    km4 = fake_cluster.create(keymigration("owner4"))
    fake_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "dep4", "namespace": "default", "ownerReferences": [owner_ref(km4)]}})
    fake_cluster.start_gc(interval=0.1)
    fake_cluster.delete(*KM, "default", "owner4")
    fake_cluster.wait_deleted("v1", "ConfigMap", "default", "dep4", timeout=5)


def test_namespace_deletion_and_crd_lifecycle(fake_cluster: FakeCluster, tmp_path):
    fake_cluster.create_namespace("doomed")
    fake_cluster.create(keymigration("m", namespace="doomed"))
    fake_cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "doomed"}})
    fake_cluster.delete("v1", "Namespace", None, "doomed")
    fake_cluster.wait_deleted("v1", "Namespace", None, "doomed", timeout=5)
    assert fake_cluster.list(*KM, "doomed") == []

    real = yaml.safe_load(CRDS[0].read_text())
    crd = dict(real, metadata={"name": "widgets.example.com"},
               spec=dict(real["spec"], group="example.com",
                         names={"plural": "widgets", "singular": "widget", "kind": "Widget"}))
    crd_path = tmp_path / "widgets.yaml"
    crd_path.write_text(yaml.safe_dump(crd))
    fake_cluster.register_crd(crd_path)  # a YAML path works as well as a dict
    established = fake_cluster.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com")
    assert condition(established, "Established")["status"] == "True"
    fake_cluster.create({"apiVersion": "example.com/v1alpha1", "kind": "Widget",
                         "metadata": {"name": "w", "namespace": "default"}, "spec": {}})
    groups = [g["name"] for g in fake_cluster.request("GET", "/apis")["groups"]]
    assert "example.com" in groups and "keymigration.io" in groups
    fake_cluster.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com")
    fake_cluster.wait_deleted("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com",
                              timeout=5)
    assert "example.com" not in [g["name"] for g in fake_cluster.request("GET", "/apis")["groups"]]


# ------------------------------------------------------------------------------------------------
# JobRunner


def test_job_runs_to_completion(fake_cluster: FakeCluster, job_runner: JobRunner):
    fake_cluster.create(job_manifest("version", ["--version"]))
    job = job_runner.wait_for_job("version", "Complete", timeout=20)
    status = job["status"]
    assert status["succeeded"] == 1 and "active" not in status and status["ready"] == 0
    assert status["startTime"] and status["completionTime"]
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert "keymigration" in job_runner.output("version")
    assert job_runner.exit_codes("version") == [0]
    # ttlSecondsAfterFinished: the TTL controller deletes the finished Job.
    fake_cluster.create(job_manifest("short-lived", ["--version"], ttlSecondsAfterFinished=0))
    fake_cluster.wait_deleted("batch/v1", "Job", "default", "short-lived", timeout=20)
    assert job_runner.exit_codes("short-lived") == [0]


def test_job_pod_failure_policy_fails_fast(fake_cluster: FakeCluster, job_runner: JobRunner):
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [12]}},
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    fake_cluster.create(job_manifest("bad-args", ["run", "--no-such-flag"], backoffLimit=5, podFailurePolicy=policy))
    job = job_runner.wait_for_job("bad-args", "Failed", timeout=20)
    failed = condition(job, "Failed")
    assert failed["reason"] == "PodFailurePolicy" and "exit code 12" in failed["message"]  # the CLI's usage error
    assert job["status"]["failed"] == 1 and job_runner.exit_codes("bad-args") == [12]
    assert "usage: keymigration" in job_runner.output("bad-args")


def test_job_backoff_kill_and_suspend(fake_cluster: FakeCluster, tmp_path):
    sleeper = [sys.executable, "-c", "import sys, time; print('started', flush=True); time.sleep(float(sys.argv[1]))"]
    runner = JobRunner(fake_cluster, entrypoints={"sleeper": sleeper}, workdir=tmp_path / "runner",
                       poll_interval=0.05, grace_period=2)
    with runner:
        fake_cluster.create(job_manifest("sleepy", ["30"], command=["sleeper"], backoffLimit=1))
        fake_cluster.wait_for("batch/v1", "Job", "default", "sleepy", lambda j: j.get("status", {}).get("active") == 1)
        # Suspend: SIGTERM, no failure counted, Suspended condition.
        fake_cluster.patch("batch/v1", "Job", "default", "sleepy", {"spec": {"suspend": True}})
        job = fake_cluster.wait_for("batch/v1", "Job", "default", "sleepy",
                                    lambda j: (condition(j, "Suspended") or {}).get("status") == "True"
                                    and "active" not in j["status"] and j["status"]["terminating"] == 0)
        assert "failed" not in job["status"] and runner.exit_codes("sleepy") == [128 + 15]
        # Resume: a new process.
        fake_cluster.patch("batch/v1", "Job", "default", "sleepy", {"spec": {"suspend": False}})
        fake_cluster.wait_for("batch/v1", "Job", "default", "sleepy",
                              lambda j: j["status"].get("active") == 1
                              and condition(j, "Suspended")["reason"] == "JobResumed")
        # Killed twice with backoffLimit 1: BackoffLimitExceeded.
        runner.kill("sleepy")
        fake_cluster.wait_for("batch/v1", "Job", "default", "sleepy",
                              lambda j: j["status"].get("failed") == 1 and j["status"].get("active") == 1)
        runner.kill("sleepy")
        job = runner.wait_for_job("sleepy", "Failed", timeout=10)
        assert condition(job, "Failed")["reason"] == "BackoffLimitExceeded"
        assert runner.exit_codes("sleepy") == [143, 137, 137]
        # A disruption matching an Ignore rule does not count; deleting the Job stops its process.
        policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
        fake_cluster.create(job_manifest("evicted", ["30"], command=["sleeper"], podFailurePolicy=policy))
        fake_cluster.wait_for("batch/v1", "Job", "default", "evicted", lambda j: j.get("status", {}).get("active") == 1)
        runner.kill("evicted", disruption=True)
        fake_cluster.wait_for("batch/v1", "Job", "default", "evicted",
                              lambda j: len(runner.attempts("evicted")) == 2 and j["status"].get("active") == 1)
        assert "failed" not in fake_cluster.get("batch/v1", "Job", "default", "evicted")["status"]
        fake_cluster.delete("batch/v1", "Job", "default", "evicted")
        assert runner.wait_idle(timeout=10)
        assert runner.exit_codes("evicted") == [137, 143]
        # activeDeadlineSeconds
        fake_cluster.create(job_manifest("slow", ["30"], command=["sleeper"], activeDeadlineSeconds=1))
        job = runner.wait_for_job("slow", "Failed", timeout=10)
        assert condition(job, "Failed")["reason"] == "DeadlineExceeded"
        assert runner.wait_idle(timeout=10) and runner.exit_codes("slow") == [143]


WORKER_SCRIPT = """
import os, sys, kubernetes
kubernetes.config.load_kube_config()  # KUBECONFIG from the runner's base env
api = kubernetes.client.CustomObjectsApi()
ns, name = os.environ["POD_NAMESPACE"], sys.argv[1]
api.create_namespaced_custom_object("keymigration.io", "v1alpha1", ns, "keymigrationprogresses", {
    "apiVersion": "keymigration.io/v1alpha1", "kind": "KeyMigrationProgress",
    "metadata": {"name": name}, "spec": {"migration": "m", "prefix": "p/"}})
api.patch_namespaced_custom_object_status("keymigration.io", "v1alpha1", ns, "keymigrationprogresses", name,
                                          {"status": {"checkpoint": "p/0042", "counters": {"migrated": 42}}})
print("reported", os.environ["HOSTNAME"])
"""


def test_worker_process_reaches_the_fake_api(fake_cluster: FakeCluster, tmp_path):
    runner = JobRunner(fake_cluster, base_env=fake_cluster.env(), workdir=tmp_path / "runner", poll_interval=0.05,
                       entrypoints={"reporter": [sys.executable, "-c", WORKER_SCRIPT]})
    job = job_manifest("reporter", ["progress-1"], command=["reporter"])
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    with runner:
        fake_cluster.create(job)
        runner.wait_for_job("reporter", "Complete", timeout=20)
    progress = fake_cluster.get(API_VERSION, "KeyMigrationProgress", "default", "progress-1")
    assert progress["status"] == {"checkpoint": "p/0042", "counters": {"migrated": 42}}
    assert "reported reporter-" in runner.output("reporter")


def test_volume_materialization_and_rewrite(tmp_path):
    job = job_manifest("mig", ["run", "--bucket", "b", "--source-key", "/var/run/keys/0/key",
                               "--checkpoint=/work/ckpt.json", "--report", "/var/run/keysX/untouched"])
    pod_spec = job["spec"]["template"]["spec"]
    pod_spec["containers"][0]["volumeMounts"] = [
        {"name": "key0", "mountPath": "/var/run/keys/0", "readOnly": True},
        {"name": "work", "mountPath": "/work"},
    ]
    pod_spec["containers"][0]["env"] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "CHECKPOINT_DIR", "value": "/work"},
        {"name": "IGNORED", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    pod_spec["volumes"] = [
        {"name": "key0", "secret": {"secretName": "src-key", "defaultMode": 0o400,
                                    "items": [{"key": "material", "path": "key"}]}},
        {"name": "work", "emptyDir": {}},
    ]
    secrets = {}

    def read(kind, namespace, name):
        return secrets.get((kind, namespace, name))

    with pytest.raises(PodPending, match='secret "src-key" not found'):
        build_pod_launch(job, "mig-abcde", tmp_path / "a", read)
    secrets[("Secret", "default", "src-key")] = {"data": {"material": base64.b64encode(b"\x01\x02secret").decode(),
                                                          "other": base64.b64encode(b"no").decode()}}
    launch = build_pod_launch(job, "mig-abcde", tmp_path / "b", read, base_env={"AWS_REGION": "eu-west-1"})
    key_dir = launch.mounts["/var/run/keys/0"]
    assert launch.argv[:3] == [sys.executable, "-m", "keymigration.cli"]
    assert launch.argv[3:] == ["run", "--bucket", "b", "--source-key", f"{key_dir}/key",
                               f"--checkpoint={launch.mounts['/work']}/ckpt.json", "--report", "/var/run/keysX/untouched"]
    key_file = tmp_path / "b" / "volumes" / "key0" / "key"
    assert key_file.read_bytes() == b"\x01\x02secret"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
    assert not (tmp_path / "b" / "volumes" / "key0" / "other").exists()  # items select keys
    assert launch.env["POD_NAME"] == "mig-abcde" and launch.env["POD_NAMESPACE"] == "default"
    assert launch.env["CHECKPOINT_DIR"] == launch.mounts["/work"] and "IGNORED" not in launch.env
    assert launch.env["AWS_REGION"] == "eu-west-1"


def pods_of(cluster: FakeCluster, job: str) -> list[dict]:
    return cluster.list("v1", "Pod", "default", label_selector=f"job-name={job}")


def waiting(pod: dict) -> dict:
    return ((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state", {}).get("waiting") or {}


def warnings_about(cluster: FakeCluster, name: str) -> dict[str, str]:
    return {e["reason"]: e["message"] for e in cluster.events("default", involved_name=name) if e["type"] == "Warning"}


def eventually(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def event_messages(cluster: FakeCluster, name: str) -> list[str]:
    return [e["message"] for e in cluster.events("default", involved_name=name)]


def test_pod_waits_for_its_secret_and_key_in_container_creating(fake_cluster: FakeCluster, tmp_path):
    """A missing Secret (or Secret key) keeps the pod Pending in ContainerCreating with a FailedMount
    Event naming it, as the kubelet does; the same pod starts once it exists."""
    catter = [sys.executable, "-c", "import sys; print(open(sys.argv[1]).read())"]
    runner = JobRunner(fake_cluster, entrypoints={"catter": catter}, workdir=tmp_path / "runner", poll_interval=0.05)
    job = job_manifest("reader", ["/var/run/keys/0/key"], command=["catter"])
    pod_spec = job["spec"]["template"]["spec"]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "k", "mountPath": "/var/run/keys/0"}]
    pod_spec["volumes"] = [{"name": "k", "secret": {"secretName": "late", "items": [{"key": "key", "path": "key"}]}}]
    with runner:
        fake_cluster.create(job)
        eventually(lambda: pods_of(fake_cluster, "reader") and runner_has_reason(runner, "reader"))
        (pod,) = pods_of(fake_cluster, "reader")
        name = pod["metadata"]["name"]
        eventually(lambda: "FailedMount" in warnings_about(fake_cluster, name))
        pod = fake_cluster.get("v1", "Pod", "default", name)
        assert pod["status"]["phase"] == "Pending" and waiting(pod)["reason"] == "ContainerCreating"
        assert warnings_about(fake_cluster, name)["FailedMount"] == 'MountVolume.SetUp failed for volume "k" : secret "late" not found'
        assert pod["metadata"]["ownerReferences"][0]["name"] == "reader" and pod["spec"]["nodeName"] == "fake-node"
        assert runner.exit_codes("reader") == []
        fake_cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": "default"},
                             "stringData": {"other": "x"}})
        missing_key = 'MountVolume.SetUp failed for volume "k" : references non-existent secret key: key'
        eventually(lambda: missing_key in event_messages(fake_cluster, name))
        fake_cluster.patch("v1", "Secret", "default", "late", {"stringData": {"key": "s3cr3t"}})
        runner.wait_for_job("reader", "Complete", timeout=10)
        assert "s3cr3t" in runner.output("reader")
        (done,) = pods_of(fake_cluster, "reader")
        assert done["metadata"]["name"] == name and done["status"]["phase"] == "Succeeded"


def test_job_without_its_service_account_never_gets_a_pod(fake_cluster: FakeCluster, job_runner: JobRunner):
    """The Job controller cannot create a pod whose ServiceAccount does not exist: no pod, a
    FailedCreate Warning on the Job, retried until the ServiceAccount appears."""
    job = job_manifest("no-account", ["--version"])
    job["spec"]["template"]["spec"]["serviceAccountName"] = "worker"
    fake_cluster.create(job)
    eventually(lambda: "FailedCreate" in warnings_about(fake_cluster, "no-account"))
    assert warnings_about(fake_cluster, "no-account")["FailedCreate"] == (
        'Error creating: pods "no-account-" is forbidden: error looking up service account default/worker: '
        'serviceaccount "worker" not found')
    assert pods_of(fake_cluster, "no-account") == [] and "active" not in fake_cluster.get("batch/v1", "Job", "default", "no-account")["status"]
    fake_cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "worker", "namespace": "default"}})
    job_runner.wait_for_job("no-account", "Complete", timeout=20)
    assert fake_cluster.get("v1", "ServiceAccount", "default", "default")  # every namespace has its default account


def test_unschedulable_and_unpullable_pods_stay_pending_with_the_cause(fake_cluster: FakeCluster, tmp_path):
    runner = JobRunner(fake_cluster, workdir=tmp_path / "runner", poll_interval=0.05,
                       pullable=lambda image: image != "registry.example/missing:1")
    unschedulable = job_manifest("picky", ["--version"])
    unschedulable["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    unpullable = job_manifest("unpullable", ["--version"])
    unpullable["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/missing:1"
    with runner:
        fake_cluster.create(unschedulable)
        fake_cluster.create(unpullable)
        eventually(lambda: runner_has_reason(runner, "picky") and runner_has_reason(runner, "unpullable"))
        (picky,) = pods_of(fake_cluster, "picky")
        scheduled = next(c for c in picky["status"]["conditions"] if c["type"] == "PodScheduled")
        assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable") and "nodeName" not in picky["spec"]
        assert "didn't match Pod's node affinity/selector" in warnings_about(fake_cluster, picky["metadata"]["name"])["FailedScheduling"]
        (pod,) = pods_of(fake_cluster, "unpullable")
        assert waiting(pod) == {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/missing:1"'}
        assert 'Failed to pull image "registry.example/missing:1"' in " ".join(event_messages(fake_cluster, pod["metadata"]["name"]))
        assert runner.attempts("picky") == [] and runner.attempts("unpullable") == []


def runner_has_reason(runner: JobRunner, job: str) -> bool:
    try:
        return bool(runner.pending_reason(job))
    except KeyError:
        return False


def test_terminated_pods_show_exit_code_and_termination_message(fake_cluster: FakeCluster, tmp_path):
    """terminationMessagePath (default /dev/termination-log) is a file the container can write;
    with FallbackToLogsOnError an empty file on failure gives the log's tail, as the kubelet does."""
    writer = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(sys.argv[2]); print('log line'); sys.exit(int(sys.argv[3]))"]
    runner = JobRunner(fake_cluster, entrypoints={"writer": writer}, workdir=tmp_path / "runner", poll_interval=0.05)
    file_job = job_manifest("file", ["/dev/termination-log", "why it stopped", "7"], command=["writer"])
    fallback = job_manifest("fallback", ["/tmp/elsewhere", "", "3"], command=["writer"])
    fallback["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    fallback["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "t", "mountPath": "/tmp"}]
    fallback["spec"]["template"]["spec"]["volumes"] = [{"name": "t", "emptyDir": {}}]
    with runner:
        fake_cluster.create(file_job)
        fake_cluster.create(fallback)
        runner.wait_for_job("file", "Failed", timeout=20)
        runner.wait_for_job("fallback", "Failed", timeout=20)
    (pod,) = pods_of(fake_cluster, "file")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["exitCode"], terminated["reason"], terminated["message"]) == \
        ("Failed", 7, "Error", "why it stopped")
    (pod,) = pods_of(fake_cluster, "fallback")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "log line"


def test_attempt_env_makes_a_first_start_fail(fake_cluster: FakeCluster, tmp_path):
    """A worker whose credentials (or endpoint) are not there at its first start: the hook removes
    or sets variables for chosen attempts only."""
    checker = [sys.executable, "-c", "import os, sys; sys.exit(0 if os.environ.get('TOKEN') == 'ok' else 75)"]
    runner = JobRunner(fake_cluster, entrypoints={"checker": checker}, workdir=tmp_path / "runner", poll_interval=0.05,
                       base_env={"TOKEN": "ok"}, attempt_env=lambda ns, job, attempt: {"TOKEN": None} if attempt == 1 else {})
    with runner:
        fake_cluster.create(job_manifest("flaky", [], command=["checker"], backoffLimit=2))
        runner.wait_for_job("flaky", "Complete", timeout=20)
        assert runner.exit_codes("flaky") == [75, 0]


# ------------------------------------------------------------------------------------------------
# kubectl


def test_kubectl_apply_get_wait(fake_cluster: FakeCluster, kubectl, tmp_path):
    manifest = tmp_path / "km.yaml"
    manifest.write_text(json.dumps(keymigration("kc")))
    assert "created" in kubectl("apply", "-f", str(manifest)).stdout
    assert "unchanged" in kubectl("apply", "-f", str(manifest)).stdout
    manifest.write_text(json.dumps(keymigration("kc", bucket="bucket-changed")))
    assert "configured" in kubectl("apply", "-f", str(manifest)).stdout
    obj = fake_cluster.get(*KM, "default", "kc")
    assert obj["spec"]["bucket"] == "bucket-changed" and obj["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(manifest)).stdout

    # A stale Ready condition (older observedGeneration) must not satisfy kubectl wait.
    ready = {"type": "Ready", "status": "True", "reason": "Done", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}
    fake_cluster.patch_status(*KM, "default", "kc", {"status": {
        "observedGeneration": 1, "conditions": [dict(ready, observedGeneration=1)]}})
    stale = kubectl("wait", "--for=condition=Ready", "keymigration/kc", "--timeout=1s", check=False)
    assert stale.returncode != 0

    def later() -> None:
        time.sleep(0.5)
        fake_cluster.patch_status(*KM, "default", "kc", {"status": {
            "observedGeneration": 2, "conditions": [dict(ready, observedGeneration=2)]}})
    threading.Thread(target=later).start()
    waited = kubectl("wait", "--for=condition=Ready", "keymigration/kc", "--timeout=10s")
    assert "condition met" in waited.stdout

    table = kubectl("get", "keymigrations").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REASON", "MODE", "PREFIXES", "MIGRATED", "FAILED", "AGE"]
    assert table[1].split()[:3] == ["kc", "True", "Done"]
    assert "PHASE" in kubectl("get", "km", "-o", "wide").stdout
    assert json.loads(kubectl("get", "km", "kc", "-o", "json").stdout)["metadata"]["name"] == "kc"
    assert "deleted" in kubectl("delete", "-f", str(manifest)).stdout
    assert fake_cluster.get_or_none(*KM, "default", "kc") is None


def test_kubelet_expansion_of_command_and_args(tmp_path):
    """$(NAME) of a declared variable expands, $$ is one $, anything else stays, as in the kubelet
    (third_party/forked/golang/expansion); undeclared names (HOME: the image's) stay as written."""
    job = job_manifest("exp", ["$(FOO)", "$$(FOO)", "$$$$", "a$b", "$(UNDECLARED)", "$(HOME)", "x$(", "$", "$(BAR)-$(FOO)"])
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "FOO", "value": "bar"}, {"name": "BAR", "value": "$(FOO)/$$x"}]
    launch = build_pod_launch(job, "exp-abcde", tmp_path, lambda *_: None)
    assert launch.argv[3:] == ["bar", "$(FOO)", "$$", "a$b", "$(UNDECLARED)", "$(HOME)", "x$(", "$", "bar/$x-bar"]
    assert launch.env["BAR"] == "bar/$x"


def test_names_and_labels_are_validated(fake_cluster: FakeCluster):
    """422 Invalid, as ValidateObjectMeta answers: names are DNS subdomains (namespaces DNS labels),
    label values at most 63 characters; a Job's name becomes its pod template's job-name label."""
    def refused(obj: dict, needle: str) -> None:
        with pytest.raises(ApiException) as e:
            fake_cluster.create(obj)
        assert e.value.status == 422 and json.loads(e.value.body)["reason"] == "Invalid", e.value.body
        assert needle in json.loads(e.value.body)["message"]

    fake_cluster.create(keymigration("m" * 253))  # the longest valid name
    refused(keymigration("m" * 254), "must be no more than 253 characters")
    refused(keymigration("Upper"), "RFC 1123 subdomain")
    refused({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}, "RFC 1123 label")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default", "labels": {}}}
    refused(dict(config_map, metadata=dict(config_map["metadata"], labels={"k": "v" * 64})), "no more than 63 characters")
    refused(dict(config_map, metadata=dict(config_map["metadata"], labels={"k": "-v"})), "a valid label")
    refused(dict(config_map, metadata=dict(config_map["metadata"], labels={"Bad_Prefix/k": "v"})), "prefix part")
    fake_cluster.create(job_manifest("j" * 63, ["--version"]))
    refused(job_manifest("j" * 64, ["--version"]), "spec.template.labels")
    fake_cluster.create(dict(config_map, metadata=dict(config_map["metadata"], labels={"keymigration.io/x": "v" * 63})))
    with pytest.raises(ApiException) as e:  # updates too
        fake_cluster.patch("v1", "ConfigMap", "default", "c", {"metadata": {"labels": {"k": "v" * 64}}})
    assert e.value.status == 422


def test_chaos_answers_random_429_and_5xx(fake_cluster: FakeCluster):
    """An overloaded API server: a share of requests gets 429 (with retryAfterSeconds) or a 5xx."""
    client = fake_cluster.new_api_client()
    client.user_agent = "some-operator"  # the test helpers' own requests are spared by default
    api = kubernetes.client.CoreV1Api(client)
    fake_cluster.chaos(0.5, statuses=(429, 500, 503))
    outcomes = []
    for _ in range(200):
        try:
            api.list_namespaced_config_map("default")
            outcomes.append(200)
        except ApiException as error:
            body = json.loads(error.body)
            assert body["kind"] == "Status" and body["code"] == error.status
            if error.status == 429:
                assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 1
            outcomes.append(error.status)
    assert set(outcomes) == {200, 429, 500, 503} and 60 < outcomes.count(200) < 140
    assert sum(fake_cluster.chaos_answers().values()) == 200 - outcomes.count(200)
    fake_cluster.list("v1", "ConfigMap", "default")  # spared
    fake_cluster.calm()
    api.list_namespaced_config_map("default")
