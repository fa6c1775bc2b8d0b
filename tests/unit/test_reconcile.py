"""The pure reconcile step: every state transition, the Job template, the cap, suspend, failures."""
import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from keymigration.errors import InvalidKeyMigration
from keymigration.kube.api_types import KeyMigration
from keymigration.kube.jobs import (
    ANNOTATION_RETRY,
    InstallConfig,
    child_name,
    job_manifest,
)
from keymigration.kube.reconcile import Surroundings, reconcile
from keymigration.migrate import EXIT_CONFIG, EXIT_FAILED_OBJECTS, EXIT_RETRY, EXIT_TOO_MANY_FAILURES

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
CONFIG = InstallConfig(worker_image="registry.example/keymigration:1.2.3", worker_service_account="km-worker")


def km(spec_changes=None, status=None, generation=1, annotations=None, prefixes=("a/", "b/", "c/")):
    fields = {
        "bucket": "my-bucket",
        "prefixes": list(prefixes),
        "sourceKeys": [{"secretName": "old-keys", "key": "aes.key", "materialsDescription": {"team": "x"}}],
        "target": {"kmsKeyId": "alias/new"},
        "concurrency": {"maxJobs": 2, "perJob": 8},
    }
    fields.update(spec_changes or {})
    obj = {
        "apiVersion": "keymigration.io/v1alpha1",
        "kind": "KeyMigration",
        "metadata": {"name": "mig", "namespace": "ns", "uid": "uid-1", "generation": generation, "annotations": annotations or {}},
        "spec": fields,
    }
    if status is not None:
        obj["status"] = status
    return obj


def job(prefix, *, failed=None, complete=False, suspend=False):
    conditions = []
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": "pod failed"})
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    return {"metadata": {"name": child_name("mig", prefix)}, "spec": {"suspend": suspend}, "status": {"conditions": conditions}}


def progress(prefix, done=False, **counters):
    status = {"counters": {"scanned": 0, "migrated": 0, "skipped": 0, "failed": 0, **counters}, "done": done}
    status["checkpoint"] = json.dumps({"after": prefix + "last"})
    return {"metadata": {"name": child_name("mig", prefix)}, "status": status}


def conditions(plan):
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def step(obj, jobs=(), progresses=()):
    plan = reconcile(obj, list(jobs), list(progresses), CONFIG, NOW)
    return plan


def test_first_sight_creates_up_to_max_jobs_and_says_not_ready():
    plan = step(km())
    kinds = [o["kind"] for o in plan.create]
    assert kinds == ["KeyMigrationProgress", "Job", "KeyMigrationProgress", "Job"]  # maxJobs=2 of 3 prefixes
    assert [o["metadata"]["annotations"]["keymigration.io/prefix"] for o in plan.create if o["kind"] == "Job"] == ["a/", "b/"]
    assert conditions(plan) == {
        "Ready": ("False", "Progressing"),
        "Reconciling": ("True", "Progressing"),
        "Stalled": ("False", "Progressing"),
        "Suspended": ("False", "NotSuspended"),
    }
    assert plan.status["observedGeneration"] == 1
    assert all(c["observedGeneration"] == 1 for c in plan.status["conditions"])
    assert plan.status["prefixCounts"] == {"total": 3, "pending": 1, "running": 2, "suspended": 0, "completed": 0, "failed": 0}
    assert [e.reason for e in plan.events] == ["JobCreated", "JobCreated", "Validated"]


def test_queued_prefix_starts_when_a_slot_frees_and_finished_prefixes_never_rerun():
    jobs = [job("a/", complete=True), job("b/")]
    progs = [progress("a/", done=True, scanned=10, migrated=9, skipped=1), progress("b/", scanned=3, migrated=3)]
    plan = step(km(), jobs, progs)
    created = [o for o in plan.create if o["kind"] == "Job"]
    assert [o["metadata"]["annotations"]["keymigration.io/prefix"] for o in created] == ["c/"]
    assert plan.status["totals"] == {"scanned": 13, "migrated": 12, "skipped": 1, "failed": 0, "expected": 0}
    assert plan.status["prefixesDone"] == "1/3"
    # The finished Job disappears (TTL): still never re-run, its progress object remembers.
    plan = step(km(status=plan.status), [job("b/"), job("c/")], progs)
    assert not plan.create


def test_all_done_is_ready_with_exact_totals():
    progs = [progress(p, done=True, scanned=5, migrated=4, skipped=1) for p in ("a/", "b/", "c/")]
    plan = step(km(), [], progs)
    assert conditions(plan)["Ready"] == ("True", "Succeeded")
    assert conditions(plan)["Reconciling"] == ("False", "Succeeded")
    assert plan.status["totals"]["migrated"] == 12 and plan.status["phase"] == "Succeeded"
    assert "completionTime" in plan.status
    assert "Succeeded" in [e.reason for e in plan.events]


def test_done_with_failed_objects_is_stalled_not_ready():
    progs = [progress("a/", done=True, scanned=5, migrated=3, failed=2)] + [progress(p, done=True) for p in ("b/", "c/")]
    plan = step(km(), [], progs)
    assert conditions(plan)["Ready"] == ("False", "ObjectsFailed")
    assert conditions(plan)["Stalled"] == ("True", "ObjectsFailed")


def test_failed_job_is_sticky_until_retry_annotation():
    progs = [progress("a/", scanned=2, migrated=2)] + [progress(p, done=True) for p in ("b/", "c/")]
    plan = step(km(), [job("a/", failed="PodFailurePolicy")], progs)
    assert conditions(plan)["Stalled"] == ("True", "PrefixFailed")
    stalled = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert stalled.startswith("1 prefix Jobs failed ('a/'); 'a/': Job failed: PodFailurePolicy")  # why, in the condition
    assert "PrefixFailed" in [e.reason for e in plan.events]
    # The failed Job is removed by its TTL; the prefix stays failed, no new Job.
    plan2 = step(km(status=plan.status), [], progs)
    assert not plan2.create and conditions(plan2)["Stalled"] == ("True", "PrefixFailed")
    # A retry request deletes the failed Job (its name is deterministic) and starts again.
    retry = km(status=plan.status, annotations={ANNOTATION_RETRY: "1"})
    plan3 = step(retry, [job("a/", failed="PodFailurePolicy")], progs)
    assert plan3.delete_jobs == [child_name("mig", "a/")] and not plan3.create
    plan4 = step(km(status=plan3.status, annotations={ANNOTATION_RETRY: "1"}), [], progs)
    assert [o["kind"] for o in plan4.create] == ["Job"]  # its progress object (checkpoint) is kept
    assert plan4.status["retryGeneration"] == "1"


def test_suspend_and_resume():
    jobs = [job("a/"), job("b/")]
    plan = step(km({"suspend": True}), jobs)
    assert sorted(plan.suspend_jobs) == sorted([child_name("mig", "a/"), child_name("mig", "b/")])
    assert not plan.create
    assert conditions(plan)["Ready"] == ("False", "Suspended") and conditions(plan)["Suspended"][0] == "True"
    assert conditions(plan)["Reconciling"][0] == "False"
    suspended = [job("a/", suspend=True), job("b/", suspend=True)]
    plan = step(km({"suspend": False}, status=plan.status, generation=2), suspended)
    assert sorted(plan.resume_jobs) == sorted([child_name("mig", "a/"), child_name("mig", "b/")])
    assert not plan.create  # the cap counts resumed Jobs
    assert conditions(plan)["Reconciling"][0] == "True" and plan.status["observedGeneration"] == 2
    assert "Resumed" in [e.reason for e in plan.events]


def test_too_many_failures_stops_and_suspends():
    plan = step(km({"maxFailedObjects": 3}), [job("a/"), job("b/")], [progress("a/", failed=4)])
    assert conditions(plan)["Stalled"] == ("True", "TooManyFailures")
    assert len(plan.suspend_jobs) == 2 and not plan.create


def test_max_failures_passed_to_jobs_is_what_remains():
    plan = step(km({"maxFailedObjects": 10}), [job("a/")], [progress("a/", failed=4)])
    args = next(o for o in plan.create if o["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-failures") + 1] == "7"


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"bucket": "Bad_Bucket"}, "spec.bucket"),
        ({"prefixes": []}, "spec.prefixes"),
        ({"prefixes": ["a/", "a/b/"]}, "must not overlap"),
        ({"target": {"kmsKeyId": "not a key"}}, "spec.target.kmsKeyId"),
        ({"sourceKeys": [], "sourceKmsKeyIds": []}, "sourceKeys"),
        ({"serviceAccountName": "admin"}, "Additional properties"),
        ({"worker": {"image": "evil"}}, "Additional properties"),
        ({"instructionFileSuffix": "instruction"}, "spec.instructionFileSuffix"),
    ],
)
def test_invalid_specs_are_stalled_with_a_precise_message(change, needle):
    plan = step(km(change))
    assert not plan.create
    ready, stalled = conditions(plan)["Ready"], conditions(plan)["Stalled"]
    assert ready == ("False", "InvalidSpec") and stalled == ("True", "InvalidSpec")
    message = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert needle in message


def test_transition_times_only_move_on_change():
    first = step(km())
    later = reconcile(km(status=first.status), [job("a/"), job("b/")], [], CONFIG, datetime(2026, 11, 27, 13, tzinfo=timezone.utc))
    before = {c["type"]: c["lastTransitionTime"] for c in first.status["conditions"]}
    after = {c["type"]: c["lastTransitionTime"] for c in later.status["conditions"]}
    assert before == after


def test_job_template_is_locked_down():
    migration = KeyMigration.from_fields(km()["spec"] | {"worker": {"nodeSelector": {"pool": "batch"}, "priorityClassName": "low"}})
    manifest = job_manifest(km(), migration, "a/", CONFIG)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert manifest["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["serviceAccountName"] == "km-worker" and container["image"] == "registry.example/keymigration:1.2.3"
    assert pod["restartPolicy"] == "Never"
    assert manifest["spec"]["podReplacementPolicy"] == "Failed"
    assert manifest["spec"]["backoffLimit"] == CONFIG.backoff_limit and manifest["spec"]["ttlSecondsAfterFinished"] > 0
    rules = manifest["spec"]["podFailurePolicy"]["rules"]
    # The deliberate outcomes fail the Job at once; a crash (1), argparse (2), a signal (128+N) and
    # "try again" (75) are retried.
    assert rules[0]["action"] == "FailJob" and set(rules[0]["onExitCodes"]["values"]) == {10, 11, 12}
    assert {EXIT_FAILED_OBJECTS, EXIT_TOO_MANY_FAILURES, EXIT_CONFIG} == {10, 11, 12} and EXIT_RETRY == 75
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The key is a read-only file mount of exactly one Secret key, never an environment variable.
    secret_volumes = [v for v in pod["volumes"] if "secret" in v]
    assert secret_volumes == [{"name": "source-key-0", "secret": {"secretName": "old-keys", "items": [{"key": "aes.key", "path": "aes.key"}], "defaultMode": 0o440}}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "source-key-0")
    assert mount["readOnly"] is True
    assert all("valueFrom" not in e for e in container["env"])
    assert "--source-key" in container["args"]
    assert container["args"][container["args"].index("--source-key") + 1] == f"{mount['mountPath']}/aes.key:" + '{"team":"x"}'
    assert mount["mountPath"] == "/var/run/keymigration/keys/0/old-keys"  # reports name the Secret
    assert pod["nodeSelector"] == {"pool": "batch"} and pod["priorityClassName"] == "low"
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_job_names_are_deterministic_and_short():
    long_name = "m" * 63
    names = {child_name(long_name, p) for p in ("a/", "b/", "a/")}
    assert len(names) == 2 and all(len(n) <= 52 for n in names)


def test_worker_args_parse_back_into_the_same_settings():
    """One model: the Job's arguments are exactly what the CLI accepts, meaning the same thing."""
    from keymigration.cli import build_parser, settings_from_args

    raw = km({"kmsRequestsPerSecond": 100, "verify": "body", "sourceKmsKeyIds": ["alias/old"]})
    migration = KeyMigration.from_fields(raw["spec"])
    args = migration.worker_args("a/", progress_resource="ns/x", max_failures=5)
    settings = settings_from_args(build_parser().parse_args(args))
    assert (settings.bucket, settings.prefix, settings.kms_key_id, settings.wrap, settings.suffix) == ("my-bucket", "a/", "alias/new", "kms+context", ".instruction")
    assert settings.source_key_files == ['/var/run/keymigration/keys/0/old-keys/aes.key:{"team":"x"}']
    assert settings.source_kms_key_ids == ["alias/old"]
    assert (settings.concurrency, settings.verify, settings.kms_rate, settings.max_failures) == (8, "body", 50, 5)
    assert settings.progress_resource == "ns/x" and settings.clients.region is None and not settings.clients.path_style
    rotation = KeyMigration.from_fields(km({"mode": "Metadata", "sourceKeys": [], "sourceKmsKeyIds": ["alias/old"]})["spec"])
    assert settings_from_args(build_parser().parse_args(rotation.worker_args("a/"))).mode == "metadata"


def test_target_encryption_context_reaches_the_worker():
    from keymigration.cli import build_parser, settings_from_args

    raw = km()
    raw["spec"]["target"]["encryptionContext"] = {"tenant": "acme", "note": "a=b c"}
    spec = KeyMigration.from_fields(raw["spec"])
    settings = settings_from_args(build_parser().parse_args(spec.worker_args("a/")))
    assert settings.encryption_context == {"tenant": "acme", "note": "a=b c"}
    raw["spec"]["target"]["encryptionContext"] = {"aws:x-amz-cek-alg": "AES/GCM/NoPadding"}
    with pytest.raises(InvalidKeyMigration, match="reserved"):
        KeyMigration.from_fields(raw["spec"])


def test_grant_tokens_reach_the_workers_kms_client():
    from keymigration.cli import build_parser, settings_from_args
    from keymigration.migrate import Migration

    raw = km({"grantTokens": ["token-a", "token-b"]})
    spec = KeyMigration.from_fields(raw["spec"])
    settings = settings_from_args(build_parser().parse_args(spec.worker_args("a/")))
    assert settings.grant_tokens == ["token-a", "token-b"]
    settings.source_key_files = []  # (mounted in a pod only)
    assert Migration(settings, clients=(object(), object())).kms.grant_tokens == ("token-a", "token-b")
    with pytest.raises(InvalidKeyMigration):
        KeyMigration.from_fields(km({"grantTokens": [f"t{n}" for n in range(11)]})["spec"])




def test_endpoints_and_region_come_only_from_the_installation():
    """A KeyMigration cannot say where its worker sends data keys: the installer's worker.aws (and
    per namespace worker.namespaceAws) becomes the Job's environment and --path-style; one that
    still names an endpoint, region or addressing (written before) is refused, Stalled."""
    from keymigration.kube.jobs import WorkerAws

    config = InstallConfig(aws=WorkerAws(region="eu-west-1", kms_endpoint_url="https://kms.eu-west-1.amazonaws.com"),
                           namespace_aws={"ns": WorkerAws(s3_endpoint_url="https://minio.storage.svc:9000", path_style=True)})
    container = job_manifest(km(), KeyMigration.from_fields(km()["spec"]), "a/", config)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["AWS_REGION"], env["AWS_ENDPOINT_URL_KMS"], env["AWS_ENDPOINT_URL_S3"]) == (
        "eu-west-1", "https://kms.eu-west-1.amazonaws.com", "https://minio.storage.svc:9000")
    assert container["args"][-1] == "--path-style"
    other = dict(km(), metadata=dict(km()["metadata"], namespace="elsewhere"))
    env = {e["name"]: e["value"] for e in job_manifest(other, KeyMigration.from_fields(km()["spec"]), "a/", config)
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AWS_ENDPOINT_URL_S3" not in env and env["AWS_ENDPOINT_URL_KMS"] == "https://kms.eu-west-1.amazonaws.com"
    for aws in ({"kmsEndpointUrl": "https://kms.attacker.example"}, {"s3EndpointUrl": "https://s3.attacker.example"},
                {"region": "eu-west-1"}, {"pathStyle": True}):
        plan = step(km({"aws": aws}))
        assert not plan.create and conditions(plan)["Stalled"] == ("True", "InvalidSpec")
        message = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
        assert f"spec.aws.{next(iter(aws))}: spec.aws is no longer honoured: endpoints, region and addressing come from the operator's installation" in message


def test_a_job_still_finishing_counts_against_the_cap():
    """The worker reported done, but its Job is not Complete yet: no new Job until it is."""
    obj = km({"concurrency": {"maxJobs": 1}})
    plan = step(obj, [job("a/")], [progress("a/", done=True, scanned=1, migrated=1)])
    assert not plan.create and plan.status["prefixesDone"] == "1/3"
    plan = step(obj, [job("a/", complete=True)], [progress("a/", done=True, scanned=1, migrated=1)])
    assert [o["metadata"]["annotations"]["keymigration.io/prefix"] for o in plan.create if o["kind"] == "Job"] == ["b/"]


def test_worker_env_secret_comes_only_from_the_operator_config():
    migration = KeyMigration.from_fields(km()["spec"])
    plain = job_manifest(km(), migration, "a/", CONFIG)["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in plain
    config = InstallConfig(worker_env_secret="aws-static-credentials")
    container = job_manifest(km(), migration, "a/", config)["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "aws-static-credentials"}}]


def pod(job_prefix, name, *, phase="Pending", age=120, waiting=None, unschedulable=None, terminated=None):
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"phase": phase}
    if waiting:
        status["containerStatuses"] = [{"state": {"waiting": dict(zip(("reason", "message"), waiting))}}]
    if terminated:
        status["containerStatuses"] = [{"state": {"terminated": terminated}}]
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def aged_job(prefix, age):
    obj = job(prefix)
    obj["metadata"]["creationTimestamp"] = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


def test_a_missing_worker_service_account_stalls_before_any_job():
    message = "the worker ServiceAccount km-worker does not exist in namespace ns, so no worker pod can start: ..."
    plan = reconcile(km(), [], [], CONFIG, NOW, Surroundings(worker_account=message))
    assert not plan.create and conditions(plan)["Stalled"] == ("True", "WorkerServiceAccountMissing")
    assert next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled") == message
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["WorkerServiceAccountMissing"]
    assert plan.recheck  # nothing else would wake the operator when the account appears


def test_work_that_cannot_start_is_stalled_naming_the_cause():
    jobs = [aged_job("a/", 120), aged_job("b/", 120)]
    mount = 'MountVolume.SetUp failed for volume "source-key-0" : secret "old-keys" not found'
    pods = {child_name("mig", "b/"): [pod("b/", "b-pod", waiting=("ContainerCreating", ""))]}
    failed_create = 'Error creating: pods "x-" is forbidden: error looking up service account ns/km-worker: serviceaccount "km-worker" not found'
    surroundings = Surroundings(pods=pods, warnings={child_name("mig", "a/"): failed_create, "b-pod": mount})
    plan = reconcile(km(), jobs, [], CONFIG, NOW, surroundings)
    assert conditions(plan)["Stalled"] == ("True", "WorkerStuck")
    message = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert f"prefix 'a/': no pod created in 120 s: {failed_create}" in message
    assert f"prefix 'b/': pod b-pod is ContainerCreating: {mount}" in message
    rows = {r["prefix"]: r for r in plan.status["prefixes"]}
    assert mount in rows["b/"]["lastError"] and failed_create in rows["a/"]["lastError"]
    assert ("Warning", "WorkerStuck") in [(e.type, e.reason) for e in plan.events]
    # The scheduler's and the kubelet's own words, without Events to add.
    cases = [
        (pod("a/", "p", unschedulable="0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."),
         "pod p cannot be scheduled: 0/3 nodes are available"),
        (pod("a/", "p", waiting=("ImagePullBackOff", 'Back-off pulling image "registry.example/km:9"')),
         'pod p is ImagePullBackOff: Back-off pulling image "registry.example/km:9"'),
        (pod("a/", "p", waiting=("CreateContainerConfigError", 'secret "aws" not found')),
         'pod p is CreateContainerConfigError: secret "aws" not found'),
    ]
    for stuck, expected in cases:
        plan = reconcile(km(), [aged_job("a/", 120)], [], CONFIG, NOW, Surroundings(pods={child_name("mig", "a/"): [stuck]}))
        assert expected in next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")


def test_a_young_pending_pod_is_not_stuck_yet_but_looked_at_again():
    pending = {child_name("mig", "a/"): [pod("a/", "p", age=5, waiting=("ContainerCreating", ""))]}
    plan = reconcile(km(), [aged_job("a/", 5)], [], CONFIG, NOW, Surroundings(pods=pending, stuck_after=30))
    assert conditions(plan)["Reconciling"] == ("True", "Progressing") and plan.recheck and plan.recheck <= 10
    running = {child_name("mig", "a/"): [pod("a/", "p", phase="Running")]}
    plan = reconcile(km(), [aged_job("a/", 500)], [], CONFIG, NOW, Surroundings(pods=running))
    assert conditions(plan)["Reconciling"] == ("True", "Progressing") and plan.recheck is None


def test_a_prefix_retrying_after_failed_pods_shows_its_last_start_up_error():
    failed = [pod("a/", "p1", phase="Failed", terminated={"exitCode": 75, "finishedAt": "2026-11-27T11:58:00Z",
                                                          "message": "target KMS key: KMS DescribeKey failed: Unable to locate credentials"}),
              pod("a/", "p2", phase="Failed", terminated={"exitCode": 75, "finishedAt": "2026-11-27T11:59:00Z",
                                                          "message": "cannot read the checkpoint: HTTP 503"})]
    progress_a = progress("a/")
    progress_a["status"].update(lastError="target KMS key: KMS DescribeKey failed: Unable to locate credentials",
                                updatedAt="2026-11-27T11:57:59Z")
    plan = reconcile(km(), [aged_job("a/", 200)], [progress_a], CONFIG, NOW, Surroundings(pods={child_name("mig", "a/"): failed}))
    row = next(r for r in plan.status["prefixes"] if r["prefix"] == "a/")
    assert row["lastError"] == "exit 75: cannot read the checkpoint: HTTP 503"  # the newest: the worker could not write it
    reconciling = next(c for c in plan.status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["status"] == "True"
    assert "retrying 'a/' after 2 failed attempt(s): exit 75: cannot read the checkpoint: HTTP 503" in reconciling["message"]


def test_outcomes_are_recorded_once_in_the_progress_object_and_cleared_for_a_retry():
    progs = [progress("a/", scanned=2, migrated=2), progress("b/", done=True, scanned=1, migrated=1), progress("c/", scanned=1)]
    plan = step(km(), [job("a/", failed="BackoffLimitExceeded"), job("c/", complete=True)], progs)
    assert plan.progress_status == {
        child_name("mig", "a/"): {"state": "Failed", "completionTime": "2026-11-27T12:00:00Z", "lastError": "Job failed: BackoffLimitExceeded pod failed"},
        child_name("mig", "b/"): {"state": "Completed", "completionTime": "2026-11-27T12:00:00Z"},
        child_name("mig", "c/"): {"state": "Completed", "completionTime": "2026-11-27T12:00:00Z"},  # its Job completed
    }
    recorded = [dict(p, status={**p["status"], **plan.progress_status[p["metadata"]["name"]]}) for p in progs]
    # Recorded: no Job, no status rows, no new Job, no second Event.
    again = step(km(), [], recorded)
    assert not again.create and not again.progress_status and not [e for e in again.events if e.reason.startswith("Prefix")]
    assert conditions(again)["Stalled"] == ("True", "PrefixFailed") and again.status["prefixesDone"] == "2/3"
    retry = step(km(status=again.status, annotations={ANNOTATION_RETRY: "7"}), [], recorded)
    assert retry.progress_status == {child_name("mig", "a/"): {"state": None, "completionTime": None, "lastError": None}}
    assert [o["kind"] for o in retry.create] == ["Job"]


def test_spec_plus_the_largest_status_stay_well_under_etcds_limit():
    """The largest KeyMigration the schema accepts (prefixes: 256 KiB in all) with the largest
    status the operator writes (200 rows, each with its longest checkpoint key and last error, and
    long condition messages) is well under the 1.5 MiB an object may hold."""
    prefixes = [f"{i:03d}/" + "x" * 1020 for i in range(256)]
    obj = km({"prefixes": prefixes, "concurrency": {"maxJobs": 100, "perJob": 8}})
    long_key = "k" * 1024
    progs = []
    for prefix in prefixes:
        item = progress(prefix, scanned=10**9, migrated=10**9, skipped=10**9, failed=10**9)
        item["status"].update(checkpoint=json.dumps({"after": prefix + long_key}), lastError="e" * 100_000, total=10**9)
        progs.append(item)
    jobs = [job(p) for p in prefixes[:100]] + [job(p, failed="BackoffLimitExceeded") for p in prefixes[100:]]
    plan = step(obj, jobs, progs)
    rows = plan.status["prefixes"]
    assert len(rows) == 200 and all(len(r["checkpoint"]) <= 128 and len(r["lastError"]) <= 256 for r in rows)
    assert all(len(c["message"]) <= 4096 for c in plan.status["conditions"])
    # kubectl apply (client-side) keeps a second copy of the spec in an annotation.
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(obj)
    size = len(json.dumps({**obj, "status": plan.status}).encode())
    assert size < 1024 * 1024, size  # etcd's limit is 1.5 MiB


def test_status_writes_remove_what_the_new_status_no_longer_has():
    """A merge patch keeps every key it does not mention: writing the new status as is would leave
    a finished migration's completionTime (and phase-specific keys) after a retry. The operator
    sends the patch that turns the stored status into the new one."""
    import asyncio

    from keymigration.kube.operator import OperatorOptions, Reconciler
    from tests.support.k8s.semantics import merge_patch as apply_merge_patch

    progs = [progress("a/", scanned=2, migrated=2)] + [progress(p, done=True) for p in ("b/", "c/")]
    failed = step(km(), [job("a/", failed="BackoffLimitExceeded")], progs)
    assert "completionTime" in failed.status
    stored = km(status=failed.status, annotations={ANNOTATION_RETRY: "1"})

    class Api:
        def patch_status(self, namespace, name, patch):
            stored["status"] = apply_merge_patch(stored["status"], patch)  # what the API server does
            return stored

        def __getattr__(self, _):
            return lambda *args, **kwargs: None

    retry = step(stored, [job("a/", failed="BackoffLimitExceeded")], progs)
    assert "completionTime" not in retry.status
    asyncio.run(Reconciler(Api(), OperatorOptions(metrics_port=None)).apply(stored, retry))
    assert stored["status"] == retry.status


def test_priority_classes_and_tolerations_only_from_the_installers_allowlists():
    """A KeyMigration author must not preempt other workloads or reach dedicated nodes: a
    priorityClassName or toleration is honoured only when the Helm values allow it."""
    toleration = {"key": "dedicated", "operator": "Equal", "value": "migration", "effect": "NoSchedule"}
    asking = km({"worker": {"priorityClassName": "system-cluster-critical", "tolerations": [toleration]}})
    plan = step(asking)
    assert not plan.create and conditions(plan)["Stalled"] == ("True", "NotAllowed")
    message = next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert "spec.worker.priorityClassName 'system-cluster-critical' (allowed: none" in message
    assert "spec.worker.tolerations[0]" in message and [e.reason for e in plan.events] == ["NotAllowed"]
    allowing = InstallConfig(allowed_priority_classes=("batch-low", "system-cluster-critical"),
                             allowed_tolerations=({"key": "dedicated", "value": "migration", "effect": "NoSchedule"},))
    plan = reconcile(asking, [], [], allowing, NOW)
    pod = next(o for o in plan.create if o["kind"] == "Job")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical" and pod["tolerations"] == [toleration]
    other = km({"worker": {"tolerations": [dict(toleration, value="elsewhere")]}})
    assert conditions(reconcile(other, [], [], allowing, NOW))["Stalled"] == ("True", "NotAllowed")


def test_kms_keys_only_from_the_installers_allowlists():
    """The worker sends every unwrapped data key to KMS Encrypt under the target key: when the
    installer pins accounts or key ARNs, a KeyMigration naming another key is refused."""
    ours = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    theirs = "arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    accounts = InstallConfig(allowed_kms_accounts=("111122223333",))
    assert [o["kind"] for o in reconcile(km({"target": {"kmsKeyId": ours}}), [], [], accounts, NOW).create][:2] == ["KeyMigrationProgress", "Job"]
    for target, needle in ((theirs, "account 444455556666 (allowed: 111122223333"), ("alias/new", "give the key's or alias's full ARN")):
        plan = reconcile(km({"target": {"kmsKeyId": target}}), [], [], accounts, NOW)
        assert not plan.create and conditions(plan)["Stalled"] == ("True", "NotAllowed")
        assert needle in next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")
    keys = InstallConfig(allowed_kms_keys=("arn:aws:kms:eu-west-1:111122223333:key/*",))
    plan = reconcile(km({"target": {"kmsKeyId": ours}, "sourceKmsKeyIds": [theirs]}), [], [], keys, NOW)
    assert conditions(plan)["Stalled"] == ("True", "NotAllowed")
    assert "spec.sourceKmsKeyIds[0]" in next(c["message"] for c in plan.status["conditions"] if c["type"] == "Stalled")


def test_an_event_cuts_short_the_wait_for_a_recheck():
    """A reconcile that asks to look again later (a Job waiting for its pod: up to 10 s) must not
    hold back an event that comes meanwhile, such as another prefix's Job finishing: its next Job
    is created at once, not when the wait ends."""
    from keymigration.kube.operator import OperatorOptions, Reconciler

    class Counting(Reconciler):
        def __init__(self):
            super().__init__(object(), OperatorOptions(metrics_port=None, debounce=0.0))
            self.seen = asyncio.Event()
            self.calls = 0

        async def reconcile_once(self, namespace, name):
            self.calls += 1
            if self.calls == 2:
                self.seen.set()
            return 3600.0  # look again in an hour

    async def scenario():
        reconciler = Counting()
        reconciler.enqueue("ns", "km")
        while reconciler.calls < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the loop now waits out its hour
        reconciler.enqueue("ns", "km")  # e.g. a Job's Complete event
        await asyncio.wait_for(reconciler.seen.wait(), 30)  # the hour's wait would time this out
        for task in reconciler.tasks.values():
            task.cancel()
        return reconciler.calls

    assert asyncio.run(scenario()) == 2


def test_an_outcome_event_is_posted_with_the_outcome_even_when_the_status_write_waits():
    """A prefix's outcome is recorded in its progress object at once, and the next reconcile
    then sees it recorded and plans no Event for it. So its Event must go out with that record,
    not with the status, whose writes are rate-limited: a PrefixCompleted planned while the
    status write waited was lost (the e2e example test saw Succeeded without it)."""
    import asyncio
    import time

    from keymigration.kube.operator import OperatorOptions, Reconciler

    jobs = [job(p) for p in ("a/", "b/")]
    running = step(km(), jobs, [progress(p, scanned=1, migrated=1) for p in ("a/", "b/")])
    stored = km(status=running.status)
    done = step(stored, jobs, [progress("a/", done=True, scanned=2, migrated=2), progress("b/", scanned=1, migrated=1)])
    assert "PrefixCompleted" in [e.reason for e in done.events] and child_name("mig", "a/") in done.progress_status
    posted, patched = [], []

    class Api:
        def post_event(self, km, type_, reason, message):
            posted.append(reason)

        def patch_status(self, *args):
            patched.append(args)

        def __getattr__(self, _):
            return lambda *args, **kwargs: None

    reconciler = Reconciler(Api(), OperatorOptions(metrics_port=None))
    reconciler.last_status_write[("ns", "mig")] = time.monotonic()  # a status was just written
    wait = asyncio.run(reconciler.apply(stored, done))
    assert wait is not None and wait > 0 and not patched  # the status waits for its interval...
    assert "PrefixCompleted" in posted  # ...the outcome's Event does not
