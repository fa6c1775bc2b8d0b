"""The pure reconcile step with shards and inventories (issue 16 item 3): planning, shard units,
the maxJobs cap, terminal outcomes, immutable boundaries, a bounded status at 10,000 shards."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from keymigration.cli import build_parser
from keymigration.errors import InvalidKeyMigration
from keymigration.kube.api_types import KeyMigration, WorkUnit, check_boundaries
from keymigration.kube.jobs import ANNOTATION_RETRY, InstallConfig, unit_name
from keymigration.kube.reconcile import reconcile

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
CONFIG = InstallConfig(worker_image="registry.example/keymigration:1.2.3", worker_service_account="km-worker")


def km(spec_changes=None, status=None, annotations=None, prefixes=("a/", "b/")):
    fields = {
        "bucket": "my-bucket",
        "prefixes": list(prefixes),
        "sourceKeys": [{"secretName": "old-keys", "key": "aes.key"}],
        "target": {"kmsKeyId": "alias/new"},
        "concurrency": {"maxJobs": 2, "perJob": 8},
        "shards": {"count": 3},
    }
    fields.update(spec_changes or {})
    fields = {k: v for k, v in fields.items() if v is not None}
    obj = {"apiVersion": "keymigration.io/v1alpha1", "kind": "KeyMigration",
           "metadata": {"name": "mig", "namespace": "ns", "uid": "uid-1", "generation": 1, "annotations": annotations or {}},
           "spec": fields}
    if status is not None:
        obj["status"] = status
    return obj


def name(unit):
    return unit_name("mig", unit)


def planner(prefix):
    return WorkUnit(prefix, planner=True)


def shard(prefix, index, start_after, end_key):
    return WorkUnit(prefix, index, start_after, end_key)


def planned(prefix, boundaries, estimated=3000):
    """The prefix's progress object once its planner recorded the plan."""
    return {"metadata": {"name": name(planner(prefix))}, "spec": {"prefix": prefix, "planner": True},
            "status": {"shardPlan": {"boundaries": list(boundaries), "estimatedObjects": estimated}}}


def shard_progress(unit, done=False, **counters):
    spec = {"prefix": unit.prefix, "shard": unit.shard, **{k: v for k, v in (("startAfter", unit.start_after), ("endKey", unit.end_key)) if v}}
    status = {"counters": {"scanned": 0, "migrated": 0, "skipped": 0, "failed": 0, **counters}, "done": done}
    return {"metadata": {"name": name(unit)}, "spec": spec, "status": status}


def job(unit, *, failed=None, complete=False, completed_at=None):
    conditions = []
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": "pod failed"})
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    status = {"conditions": conditions}
    if completed_at:
        status["completionTime"] = completed_at
    return {"metadata": {"name": name(unit)}, "spec": {"suspend": False}, "status": status}


def conditions(plan):
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def args_of(manifest):
    """The container's arguments as the worker receives them (the kubelet turns $$ into $)."""
    return [a.replace("$$", "$") for a in manifest["spec"]["template"]["spec"]["containers"][0]["args"]]


def step(obj, jobs=(), progresses=()):
    return reconcile(obj, list(jobs), list(progresses), CONFIG, NOW)


A0, A1, A2 = shard("a/", 0, None, "a/k1"), shard("a/", 1, "a/k1", "a/k2"), shard("a/", 2, "a/k2", None)


def test_a_sharded_prefix_is_planned_first_by_a_planner_job_recording_into_its_progress_object():
    plan = step(km())
    assert [o["kind"] for o in plan.create] == ["KeyMigrationProgress", "Job"] * 2
    progress, job_a = plan.create[0], plan.create[1]
    assert progress["metadata"]["name"] == job_a["metadata"]["name"] == name(planner("a/"))
    assert progress["spec"]["planner"] is True and progress["spec"]["prefix"] == "a/"
    assert args_of(job_a) == ["--log-format", "json", "shard", "--bucket", "my-bucket", "--prefix=a/", "--suffix", ".instruction",
                              "--shards", "3", "--progress-resource", f"ns/{name(planner('a/'))}"]
    parsed = build_parser().parse_args(args_of(job_a))
    assert (parsed.command, parsed.prefix, parsed.shards, parsed.progress_resource) == ("shard", "a/", 3, f"ns/{name(planner('a/'))}")
    assert plan.status["prefixCounts"]["planning"] == 2 and plan.status["planning"] == {
        "prefixes": 2, "planned": 0, "shards": 0, "estimatedObjects": 0}
    assert "2 prefixes still planning" in dict((c["type"], c["message"]) for c in plan.status["conditions"])["Reconciling"]
    per_shard = step(km({"shards": {"objectsPerShard": 100000}}))
    assert args_of(per_shard.create[1])[-4:-2] == ["--objects-per-shard", "100000"]


def test_recorded_boundaries_become_shard_jobs_with_their_key_ranges_within_the_cap():
    progresses = [planned("a/", ["a/k1", "a/k2"]), planned("b/", ["b/m"])]
    plan = step(km(), [job(planner("a/"), complete=True), job(planner("b/"), complete=True)], progresses)
    jobs = [o for o in plan.create if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == [name(A0), name(A1)]  # maxJobs 2 of 5 shards
    assert len({name(u) for u in (A0, A1, A2, planner("a/"), shard("b/", 0, None, "b/m"))}) == 5
    first, second = (build_parser().parse_args(args_of(j)) for j in jobs)
    assert (first.prefix, first.start_after, first.end_key) == ("a/", None, "a/k1")
    assert (second.prefix, second.start_after, second.end_key) == ("a/", "a/k1", "a/k2")
    assert "--progress-resource" in args_of(jobs[0]) and f"ns/{name(A0)}" in args_of(jobs[0])
    spec = next(o for o in plan.create if o["kind"] == "KeyMigrationProgress" and o["metadata"]["name"] == name(A1))["spec"]
    assert spec == {"migration": "mig", "bucket": "my-bucket", "prefix": "a/", "job": name(A1), "shard": 1, "startAfter": "a/k1", "endKey": "a/k2"}
    assert plan.status["prefixCounts"] == {"total": 5, "pending": 3, "running": 2, "suspended": 0, "completed": 0, "failed": 0, "planning": 0}
    assert plan.status["planning"] == {"prefixes": 2, "planned": 2, "shards": 5, "estimatedObjects": 6000}
    assert plan.status["prefixesDone"] == "0/5"
    assert not [e for e in plan.events if e.reason == "JobCreated"]  # thousands of shards: no Event each


def test_keys_the_kubelet_or_argparse_would_change_reach_the_worker_exactly():
    keys = ["-dash/$$y", "-dash/$(HOME)/x", "-dash/z"]
    progresses = [planned("-dash/", keys)]
    plan = step(km({"concurrency": {"maxJobs": 4}}, prefixes=("-dash/",)), [], progresses)
    ranges = [(p.start_after, p.end_key) for p in (build_parser().parse_args(args_of(j)) for j in plan.create if j["kind"] == "Job")]
    assert ranges == [(None, keys[0]), (keys[0], keys[1]), (keys[1], keys[2]), (keys[2], None)]


def test_planners_and_shards_share_the_max_jobs_cap():
    progresses = [planned("a/", ["a/k1", "a/k2"])]
    running = [job(planner("b/")), job(A0)]
    plan = step(km(), running, progresses + [shard_progress(A0)])
    assert not [o for o in plan.create if o["kind"] == "Job"]  # b/'s planner and one shard: the 2 slots
    assert plan.status["prefixCounts"]["running"] == 2 and plan.status["prefixCounts"]["planning"] == 1


def test_shard_outcomes_are_recorded_and_outlive_their_jobs():
    progresses = [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0, done=True, scanned=5, migrated=4, skipped=1),
                  shard_progress(A1, scanned=2, migrated=2)]
    plan = step(km(prefixes=("a/",)), [job(A0, complete=True), job(A1, failed="BackoffLimitExceeded")], progresses)
    assert plan.progress_status[name(A0)]["state"] == "Completed"
    assert plan.progress_status[name(A1)]["state"] == "Failed"
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["PrefixFailed"]
    assert "prefix 'a/' shard 1" in next(e.message for e in plan.events if e.reason == "PrefixFailed")
    assert [j["metadata"]["name"] for j in plan.create if j["kind"] == "Job"] == [name(A2)]
    recorded = [dict(p, status={**p["status"], **plan.progress_status.get(p["metadata"]["name"], {})}) for p in progresses]
    recorded.append(shard_progress(A2, done=True, scanned=3, migrated=3))
    after_ttl = step(km(prefixes=("a/",), status=plan.status), [], recorded)  # every Job gone (TTL)
    assert not after_ttl.create and after_ttl.status["totals"]["scanned"] == 10
    assert conditions(after_ttl)["Stalled"] == ("True", "PrefixFailed")
    assert "1 shard Jobs failed (prefix 'a/' shard 1)" in dict((c["type"], c["message"]) for c in after_ttl.status["conditions"])["Stalled"]
    retry = step(km(prefixes=("a/",), status=after_ttl.status, annotations={ANNOTATION_RETRY: "1"}), [], after_ttl_recorded(recorded, after_ttl))
    assert [o["metadata"]["name"] for o in retry.create] == [name(A1)]  # the Job only: its progress object keeps its checkpoint
    assert retry.progress_status == {name(A1): {"state": None, "completionTime": None, "lastError": None}}


def after_ttl_recorded(recorded, plan):
    return [dict(p, status={**p["status"], **plan.progress_status.get(p["metadata"]["name"], {})}) for p in recorded]


def test_every_shard_done_is_ready_with_exact_totals():
    progresses = [planned("a/", ["a/k1", "a/k2"])] + [shard_progress(u, done=True, scanned=4, migrated=3, skipped=1) for u in (A0, A1, A2)]
    plan = step(km(prefixes=("a/",)), [], progresses)
    assert conditions(plan)["Ready"] == ("True", "Succeeded") and plan.status["prefixesDone"] == "3/3"
    assert plan.status["totals"]["migrated"] == 9 and plan.status["prefixes"] == []  # finished shards have no rows
    assert "all 3 shards migrated" in dict((c["type"], c["message"]) for c in plan.status["conditions"])["Ready"]


def test_a_shard_whose_progress_object_records_other_boundaries_never_runs():
    moved = shard_progress(shard("a/", 1, "a/k0", "a/k2"))
    plan = step(km(prefixes=("a/",), spec_changes={"concurrency": {"maxJobs": 5}}), [], [planned("a/", ["a/k1", "a/k2"]), moved])
    assert name(A1) not in [o["metadata"]["name"] for o in plan.create]
    row = next(r for r in plan.status["prefixes"] if r.get("shard") == 1)
    assert row["state"] == "Failed" and "other boundaries than the shard plan" in row["lastError"]


@pytest.mark.parametrize("boundaries,needle", [(["b", "a"], "not strictly increasing"), (["a", "a"], "not strictly increasing"),
                                                (["x" * 1000] * 0 + [f"{i:05d}" + "y" * 200 for i in range(5000)], "bytes, more than"),
                                                ("a", "not a list")])
def test_an_unusable_recorded_plan_fails_the_prefix_with_why(boundaries, needle):
    progress = planned("a/", [])
    progress["status"]["shardPlan"]["boundaries"] = boundaries
    plan = step(km(prefixes=("a/",)), [job(planner("a/"), complete=True)], [progress])
    assert not plan.create and conditions(plan)["Stalled"] == ("True", "ShardPlanRefused")
    assert needle in plan.status["prefixes"][0]["lastError"] and needle in messages(plan)["Stalled"]
    assert check_boundaries(boundaries)


def messages(plan):
    return {c["type"]: c["message"] for c in plan.status["conditions"]}


def test_a_plan_the_planner_refused_fails_the_prefix_with_the_limit_and_the_way_out():
    """The planner records why instead of a plan one object cannot hold (shardPlanRefused): the
    migration is Failed and Stalled (ShardPlanRefused) once the other prefixes are done, naming
    the limit; a retry would plan the same again, so the message says how to change spec.shards
    (immutable: create the KeyMigration again). A retry still plans again, the refusal cleared."""
    why = "the boundaries take 1014984 bytes, more than the 1000000 one progress object may hold"
    no_plan = {"metadata": {"name": name(planner("a/"))}, "spec": {"prefix": "a/", "planner": True},
               "status": {"shardPlanRefused": why, "lastError": f"shard plan refused: {why}: ask for fewer shards", "exitCode": 12}}
    b_done = {"metadata": {"name": name(planner("b/"))}, "spec": {"prefix": "b/", "planner": True},
              "status": {"shardPlan": {"boundaries": [], "estimatedObjects": 3}}}
    b0 = shard("b/", 0, None, None)
    running = step(km(), [job(planner("a/"), failed="PodFailurePolicy"), job(b0)], [no_plan, b_done, shard_progress(b0)])
    assert conditions(running)["Reconciling"] == ("True", "Progressing") and not running.create  # b/ still migrating
    plan = step(km(), [job(planner("a/"), failed="PodFailurePolicy")], [no_plan, b_done, shard_progress(b0, done=True, scanned=3, migrated=3)])
    assert conditions(plan)["Stalled"] == ("True", "ShardPlanRefused") and conditions(plan)["Ready"] == ("False", "ShardPlanRefused")
    assert plan.status["phase"] == "Failed" and not plan.create
    message = messages(plan)["Stalled"]
    assert message.startswith(f"the shard plan of prefix 'a/' was refused: {why}; nothing is migrated under it.")
    assert "spec.shards.count" in message and "create it again" in message and "retry" not in message
    row = next(r for r in plan.status["prefixes"] if r["prefix"] == "a/")
    assert row["state"] == "Failed" and row["lastError"] == f"shard plan refused: {why}"
    assert plan.progress_status[name(planner("a/"))] == {"state": "Failed", "completionTime": plan.status["completionTime"],
                                                         "lastError": f"shard plan refused: {why}"}
    recorded = dict(no_plan, status={**no_plan["status"], **plan.progress_status[name(planner("a/"))]})
    retry = step(km(status=plan.status, annotations={ANNOTATION_RETRY: "1"}), [], [recorded, b_done, shard_progress(b0, done=True)])
    assert [args_of(o)[2] for o in retry.create if o["kind"] == "Job"] == ["shard"]
    assert retry.progress_status[name(planner("a/"))] == {"state": None, "completionTime": None, "lastError": None, "shardPlanRefused": None}


def test_a_planner_job_complete_without_a_plan_waits_for_the_watch_then_fails():
    fresh = step(km(prefixes=("a/",)), [job(planner("a/"), complete=True, completed_at="2026-11-27T11:59:50Z")], [planned("a/", [])])
    # planned("a/", []) records a plan of one shard: the planner's Job is no unit any more
    assert [o["metadata"]["name"] for o in fresh.create if o["kind"] == "Job"] == [name(shard("a/", 0, None, None))]
    no_plan = {"metadata": {"name": name(planner("a/"))}, "spec": {"prefix": "a/", "planner": True}, "status": {}}
    waiting = step(km(prefixes=("a/",)), [job(planner("a/"), complete=True, completed_at="2026-11-27T11:59:50Z")], [no_plan])
    assert waiting.status["prefixCounts"]["running"] == 1 and not waiting.create and waiting.recheck
    late = (NOW - timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = step(km(prefixes=("a/",)), [job(planner("a/"), complete=True, completed_at=late)], [no_plan])
    assert conditions(failed)["Stalled"] == ("True", "PrefixFailed")
    assert "without recording a shard plan" in failed.status["prefixes"][0]["lastError"]


def test_a_planner_that_failed_fails_its_prefix_and_a_retry_plans_again():
    no_plan = {"metadata": {"name": name(planner("a/"))}, "spec": {"prefix": "a/", "planner": True},
               "status": {"lastError": "cannot list s3://my-bucket/a/: AccessDenied", "exitCode": 12}}
    plan = step(km(prefixes=("a/",)), [job(planner("a/"), failed="PodFailurePolicy")], [no_plan])
    assert conditions(plan)["Stalled"] == ("True", "PrefixFailed") and plan.progress_status[name(planner("a/"))]["state"] == "Failed"
    assert "AccessDenied" in plan.status["prefixes"][0]["lastError"]
    recorded = dict(no_plan, status={**no_plan["status"], **plan.progress_status[name(planner("a/"))]})
    retry = step(km(prefixes=("a/",), status=plan.status, annotations={ANNOTATION_RETRY: "1"}), [], [recorded])
    assert [o["kind"] for o in retry.create] == ["Job"] and args_of(retry.create[0])[2] == "shard"


def test_status_stays_bounded_with_ten_thousand_shards():
    boundaries = [f"a/{i:08d}" + "k" * 80 for i in range(1, 10000)]  # 93 bytes each: 0.93 MB, under the limit
    units = [shard("a/", i, ([None] + boundaries)[i], (boundaries + [None])[i]) for i in range(10000)]
    progresses = [planned("a/", boundaries, estimated=10**9)]
    progresses += [dict(shard_progress(u, done=True, scanned=100, migrated=100), status={
        "counters": {"scanned": 100, "migrated": 100, "skipped": 0, "failed": 0}, "done": True, "state": "Completed"}) for u in units[:9000]]
    failed = [dict(shard_progress(u, scanned=1, failed=1), status={"counters": {"scanned": 1, "migrated": 0, "skipped": 0, "failed": 1},
                                                                 "state": "Failed", "lastError": "e" * 5000}) for u in units[9000:9050]]
    running = [shard_progress(u, scanned=7, migrated=7) for u in units[9050:9150]]
    obj = km(prefixes=("a/",), spec_changes={"concurrency": {"maxJobs": 100}})
    plan = step(obj, [job(u) for u in units[9050:9150]], progresses + failed + running)
    counts = plan.status["prefixCounts"]
    assert counts == {"total": 10000, "pending": 850, "running": 100, "suspended": 0, "completed": 9000, "failed": 50, "planning": 0}
    assert plan.status["totals"]["scanned"] == 9000 * 100 + 50 + 100 * 7
    rows = plan.status["prefixes"]
    assert len(rows) == 200 and plan.status["prefixesTruncated"]
    assert all(r["state"] != "Completed" for r in rows)  # unfinished first, then the failed ones; never the finished
    assert [r["state"] for r in rows[:100]] == ["Running"] * 100
    size = len(json.dumps(plan.status).encode())
    assert size < 256 * 1024, size


def test_an_inventory_is_split_into_file_slices():
    obj = km({"prefixes": None, "shards": None, "inventory": {"manifest": "s3://inv-bucket/my-bucket/daily/manifest.json", "files": 3}})
    plan = step(obj)
    jobs = [o for o in plan.create if o["kind"] == "Job"]
    parsed = [build_parser().parse_args(args_of(j)) for j in jobs]
    assert [(p.inventory, p.inventory_files, p.prefix) for p in parsed] == [
        ("s3://inv-bucket/my-bucket/daily/manifest.json", "0/3", ""), ("s3://inv-bucket/my-bucket/daily/manifest.json", "1/3", "")]
    assert plan.status["prefixCounts"]["total"] == 3 and "planning" not in plan.status
    spec = next(o for o in plan.create if o["kind"] == "KeyMigrationProgress")["spec"]
    assert spec["files"] == "0/3"


@pytest.mark.parametrize("changes,needle", [
    ({"prefixes": None}, "exactly one of prefixes and inventory"),
    ({"inventory": {"manifest": "s3://inv-bucket/x/manifest.json"}}, "exactly one of prefixes and inventory"),
    ({"shards": {"count": 2, "objectsPerShard": 5000}}, "exactly one of count and objectsPerShard"),
    ({"shards": {}}, "exactly one of count and objectsPerShard"),
    ({"shards": {"count": 10001}}, "spec.shards.count"),
    ({"prefixes": None, "inventory": {"manifest": "s3://inv-bucket/x/manifest.json"}}, "shards split prefixes"),
    ({"prefixes": None, "shards": None, "inventory": {"manifest": "https://example.com/manifest.json"}}, "spec.inventory.manifest"),
])
def test_invalid_shard_and_inventory_specs_are_refused(changes, needle):
    with pytest.raises(InvalidKeyMigration, match=needle):
        KeyMigration.from_fields(km(changes)["spec"])


def test_metrics_sum_the_running_shards_of_a_prefix_into_one_series():
    """Prometheus refuses two samples with the same labels: running shards of one prefix are one
    series per prefix and outcome, their counters summed."""
    from keymigration.kube.metrics import MigrationMetrics

    progresses = [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0, scanned=5, migrated=5), shard_progress(A1, scanned=3, migrated=2, skipped=1)]
    plan = step(km(prefixes=("a/",)), [job(A0), job(A1)], progresses)
    metrics = MigrationMetrics()
    metrics.record("ns", "mig", plan.status, progresses)
    samples = [(s.name, tuple(sorted(s.labels.items())), s.value) for family in metrics.collect() for s in family.samples
               if s.name.startswith("keymigration_prefix_objects")]
    assert len(samples) == len({(n, labels) for n, labels, _ in samples}) > 0
    scanned = [v for n, labels, v in samples if ("outcome", "scanned") in labels and ("prefix", "a/") in labels]
    assert scanned == [8.0]


# -- one KMS budget per migration (issue 16 item 4) ---------------------------------------------


KMS_SPEC = {"kmsRequestsPerSecond": 1200, "concurrency": {"maxJobs": 4}}


def kms_km(**changes):
    return km({**KMS_SPEC, **changes}, prefixes=("a/",))


def with_rate(progress, rate=None, objects_per_second=None):
    progress["status"].update({k: v for k, v in (("kmsRate", rate), ("rate", objects_per_second)) if v is not None})
    return progress


def test_while_units_wait_each_running_worker_gets_the_budget_over_max_jobs():
    progresses = [planned("a/", [f"a/k{i}" for i in range(1, 10)])]  # 10 shards, 4 at once
    plan = step(kms_km(), [], progresses)
    jobs = [o for o in plan.create if o["kind"] == "Job"]
    assert len(jobs) == 4 and all(build_parser().parse_args(args_of(j)).kms_rate == 300 for j in jobs)
    running = [shard("a/", i, ([None] + [f"a/k{n}" for n in range(1, 10)])[i], f"a/k{i + 1}") for i in range(4)]
    plan = step(kms_km(), [job(u) for u in running], progresses + [with_rate(shard_progress(u), 400) for u in running])
    assert {plan.progress_status[name(u)]["kmsRate"] for u in running} == {300}  # 6 still to start: 4 x 300


def test_once_every_unit_started_the_running_ones_share_the_whole_budget_and_it_is_handed_on():
    progresses = [planned("a/", ["a/k1", "a/k2"])]
    units = (A0, A1, A2)
    plan = step(kms_km(), [job(u) for u in units], progresses + [with_rate(shard_progress(u), 300) for u in units])
    assert {n: p["kmsRate"] for n, p in plan.progress_status.items()} == {name(u): 400 for u in units}
    assert plan.status["plan"]["kmsPerWorker"] == 400
    # A0 finishes: A1 and A2 get 600 each (never more than the budget in all).
    done = [with_rate(shard_progress(A0, done=True), 400)] + [with_rate(shard_progress(u), 400) for u in (A1, A2)]
    plan = step(kms_km(), [job(A0, complete=True), job(A1), job(A2)], progresses + done)
    assert {n: p.get("kmsRate") for n, p in plan.progress_status.items() if "kmsRate" in p} == {name(A1): 600, name(A2): 600}
    # Shares already written are not written again.
    settled = [with_rate(shard_progress(A0, done=True), 400)] + [with_rate(shard_progress(u), 600) for u in (A1, A2)]
    plan = step(kms_km(), [job(A0, complete=True), job(A1), job(A2)], progresses + settled)
    assert not [p for p in plan.progress_status.values() if "kmsRate" in p]


def test_planners_use_no_kms_and_keep_the_shares_at_the_max_jobs_split():
    plan = step(kms_km(), [job(planner("a/"))], [{"metadata": {"name": name(planner("a/"))}, "spec": {"planner": True}, "status": {}}])
    assert not plan.progress_status and "plan" not in plan.status  # nothing counted yet: no plan


def test_without_a_budget_nothing_is_handed_out():
    progresses = [planned("a/", ["a/k1", "a/k2"])] + [shard_progress(u) for u in (A0, A1, A2)]
    plan = step(km(prefixes=("a/",), spec_changes={"concurrency": {"maxJobs": 4}}), [job(u) for u in (A0, A1, A2)], progresses)
    assert not plan.progress_status and plan.status["plan"]["kmsPerWorker"] is None


def test_the_status_plan_gives_the_expected_duration_from_the_planned_count_budget_and_measured_rate():
    progresses = [planned("a/", ["a/k1", "a/k2"], estimated=1_200_000)]
    plan = step(kms_km(), [], progresses)
    expected = plan.status["plan"]
    # 1.2M objects, 2 KMS requests each at 1200/s = 2000 s; 3 workers at the default 65/s = 6154 s.
    assert expected["objects"] == 1_200_000 and expected["objectsFrom"] == "shard plan" and expected["workers"] == 3
    assert expected["workerObjectsPerSecond"] == 65.0 and expected["workerRateFrom"].startswith("measured default")
    assert (expected["expectedSeconds"], expected["boundBy"]) == (6153, "workers")
    assert expected["kmsRequestsPerSecond"] == 1200 and expected["kmsRequestsPerObject"] == 2
    assert "1.7 h for 1200000 objects" in expected["summary"]
    # Once workers report their rate, theirs is used: 3 x 400/s is faster than KMS allows.
    running = [with_rate(shard_progress(u, scanned=1000), 400, objects_per_second=400.0) for u in (A0, A1, A2)]
    plan = step(kms_km(), [job(u) for u in (A0, A1, A2)], progresses + running)
    expected = plan.status["plan"]
    assert expected["workerObjectsPerSecond"] == 400.0 and expected["workerRateFrom"] == "running workers"
    assert (expected["expectedSeconds"], expected["boundBy"]) == (2000, "kms")
    assert expected["remainingSeconds"] == (1_200_000 - 3000) * 2 // 1200


def test_the_worker_takes_its_share_from_its_progress_object_into_its_kms_limiter():
    from keymigration.kube import KubernetesProgress
    from keymigration.migrate.kms_budget import KmsBudget

    class Api:
        def __init__(self):
            self.status = {"kmsRate": 250}

        def get_namespaced_custom_object(self, *args):
            return {"status": dict(self.status)}

        def patch_namespaced_custom_object_status(self, *args):
            self.status.update(args[-1]["status"])
            return {"status": dict(self.status)}

    api, budget = Api(), KmsBudget(300)
    store = KubernetesProgress("ns/p", api=api)
    store.on_kms_rate = budget.set_cap
    store.load()
    assert budget.adaptive.snapshot()["cap"] == 250  # the share at start, with the checkpoint
    api.status["kmsRate"] = 600  # the operator hands on a finished shard's share
    store.update({"scanned": 1})
    assert budget.adaptive.snapshot()["cap"] == 600


# -- the shares in force never sum above the budget: new Jobs wait for lower shares to be taken --


def applied(progresses, plan):
    """The progress objects once the plan's merge patches of their status are written."""
    out = []
    for progress in progresses:
        status = dict(progress["status"])
        for key, value in plan.progress_status.get(progress["metadata"]["name"], {}).items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        out.append(dict(progress, status=status))
    return out


def acknowledge(progress):
    """What a worker writes once it took the share in its progress object."""
    status = progress["status"]
    return dict(progress, status={**status, "kmsRateApplied": status["kmsRate"], "kmsRateAppliedSerial": status["kmsRateSerial"]})


def share(progress, rate, serial, acknowledged=True, since="2026-11-27T11:00:00Z"):
    progress["status"].update({"kmsRate": rate, "kmsRateSerial": serial, "kmsRateSince": since})
    return acknowledge(progress) if acknowledged else progress


def created_jobs(plan):
    return [o["metadata"]["name"] for o in plan.create if o["kind"] == "Job"]


def in_force(progresses, new_jobs, rate):
    """The most each worker may apply now: its acknowledged share or one written since; a new Job its --kms-rate."""
    most = 0
    for progress in progresses:
        status = progress["status"]
        if not progress["status"].get("done") and status.get("state") is None and "kmsRate" in status:
            most += max(status.get("kmsRateApplied") or 0, status["kmsRate"])
    return most + rate * len(new_jobs)


def test_after_a_retry_new_jobs_wait_until_every_running_worker_took_the_lower_share():
    """A0 failed after A1 and A2 were handed 600/s each (1200 in all). Retrying A0 makes a unit
    wait again: its Job would start at 1200 / maxJobs = 300 while A1 and A2 still apply 600, 1500
    in all. The operator writes 300 to both and starts A0 only once both acknowledged it."""
    failed = share(shard_progress(A0, scanned=5, failed=5), 400, 1)
    failed["status"].update(state="Failed", lastError="5 objects failed")
    running = [share(shard_progress(u, scanned=10), 600, 2) for u in (A1, A2)]
    progresses = [planned("a/", ["a/k1", "a/k2"]), failed, *running]
    before = step(kms_km(), [job(A1), job(A2)], progresses)
    retry_km = km(KMS_SPEC, status=before.status, annotations={ANNOTATION_RETRY: "1"}, prefixes=("a/",))

    lowered = reconcile(retry_km, [job(A1), job(A2)], progresses, CONFIG, NOW)
    assert created_jobs(lowered) == []
    assert {n: (p["kmsRate"], p["kmsRateSerial"]) for n, p in lowered.progress_status.items() if p.get("kmsRate")} == {
        name(A1): (300, 3), name(A2): (300, 3)}
    # The retried unit's old shares are cleared: its new worker starts at its Job's --kms-rate.
    assert all(lowered.progress_status[name(A0)][k] is None for k in ("kmsRate", "kmsRateSerial", "kmsRateApplied"))
    message = dict((c["type"], c["message"]) for c in lowered.status["conditions"])["Reconciling"]
    assert "new Jobs wait until prefix 'a/' shard 1, prefix 'a/' shard 2 take(s) the lower KMS share" in message
    assert lowered.recheck is not None and lowered.recheck <= 30.0  # or sooner: the acknowledgements' watch events

    progresses = applied(progresses, lowered)
    km_after = km(KMS_SPEC, status=lowered.status, annotations={ANNOTATION_RETRY: "1"}, prefixes=("a/",))
    one = [progresses[0], progresses[1], acknowledge(progresses[2]), progresses[3]]  # A1 took 300, A2 not yet
    waiting = reconcile(km_after, [job(A1), job(A2)], one, CONFIG, NOW + timedelta(seconds=4))
    assert created_jobs(waiting) == [] and waiting.recheck is not None and waiting.recheck <= 26.0
    assert "new Jobs wait until prefix 'a/' shard 2 take(s)" in dict((c["type"], c["message"]) for c in waiting.status["conditions"])["Reconciling"]

    both = [one[0], one[1], one[2], acknowledge(one[3])]
    started = reconcile(km_after, [job(A1), job(A2)], both, CONFIG, NOW + timedelta(seconds=5))
    assert created_jobs(started) == [name(A0)]
    (new_job,) = [o for o in started.create if o["kind"] == "Job"]
    assert build_parser().parse_args(args_of(new_job)).kms_rate == 300
    assert not [e for e in started.events if e.type == "Warning"]
    assert in_force(both, created_jobs(started), 300) <= 1200


def test_a_worker_that_never_acknowledges_holds_new_jobs_thirty_seconds_then_a_warning_names_it():
    progresses = [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0)]
    running = [acknowledge(share(shard_progress(u, scanned=10), 600, 2)) for u in (A1, A2)]
    since = (NOW - timedelta(seconds=29)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for progress in running:  # 300 written at serial 3; A1 took it, A2 (an older worker image) never answers
        progress["status"].update(kmsRate=300, kmsRateSerial=3, kmsRateSince=since)
    running[0] = acknowledge(running[0])
    held = step(kms_km(), [job(A1), job(A2)], progresses + running)
    assert created_jobs(held) == [] and held.recheck == 1.0
    late = reconcile(kms_km(), [job(A1), job(A2)], progresses + running, CONFIG, NOW + timedelta(seconds=1))
    assert created_jobs(late) == [name(A0)]
    (warning,) = [e for e in late.events if e.type == "Warning"]
    assert warning.reason == "KmsShareNotAcknowledged" and warning.now
    assert "prefix 'a/' shard 2 did not acknowledge the lower KMS share (300/s) within 30 s" in warning.message
    assert "shard 1" not in warning.message


@pytest.mark.parametrize("status, holds", [
    ({}, False),  # nothing handed out yet: it runs at its Job's --kms-rate (300)
    ({"kmsRate": 300, "kmsRateSerial": 1}, False),  # its first share, not yet taken: 300 either way
    ({"kmsRate": 300, "kmsRateSerial": 2}, True),  # it may have taken serial 1's share, whatever it was, unacknowledged
    ({"kmsRate": 300, "kmsRateSerial": 2, "kmsRateApplied": 300, "kmsRateAppliedSerial": 1}, False),
    ({"kmsRate": 300, "kmsRateSerial": 2, "kmsRateApplied": 600, "kmsRateAppliedSerial": 1}, True),  # may still apply 600
    ({"kmsRate": 600, "kmsRateSerial": 2, "kmsRateApplied": 600, "kmsRateAppliedSerial": 2}, True),  # the lowering is not written yet
    # 300 -> 600 -> 300: it may have taken 600 between its acknowledgements; only serial 3's says it did not
    ({"kmsRate": 300, "kmsRateSerial": 3, "kmsRateApplied": 300, "kmsRateAppliedSerial": 1}, True),
    ({"kmsRate": 300, "kmsRateSerial": 3, "kmsRateApplied": 300, "kmsRateAppliedSerial": 3}, False),
    ({"kmsRate": 600}, True),  # written by an operator before acknowledgements: all that can be known
    ({"kmsRate": 300}, False),
])
def test_which_running_worker_holds_new_jobs(status, holds):
    running = shard_progress(A1)
    running["status"].update(status, kmsRateSince=utc(NOW))
    plan = step(kms_km(), [job(A1)], [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0), running, shard_progress(A2)])
    assert (created_jobs(plan) == []) is holds
    if not holds:
        assert created_jobs(plan) == [name(A0), name(A2)]


def test_without_a_budget_nothing_holds_new_jobs():
    running = shard_progress(A1)
    running["status"].update(kmsRate=600, kmsRateSerial=2, kmsRateApplied=600, kmsRateAppliedSerial=2)
    spec = {"concurrency": {"maxJobs": 4}}
    plan = step(km(spec, prefixes=("a/",)), [job(A1)], [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0), running])
    assert created_jobs(plan) == [name(A0), name(A2)]


def utc(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressApi:
    """A progress object's status behind the two calls the worker makes; ``down`` fails writes."""

    def __init__(self, status):
        self.status, self.writes, self.down = dict(status), [], False

    def get_namespaced_custom_object(self, *args):
        return {"status": dict(self.status)}

    def patch_namespaced_custom_object_status(self, *args):
        if self.down:
            raise ConnectionError("API server away")
        written = args[-1]["status"]
        self.writes.append(written)
        self.status.update(written)
        return {"status": dict(self.status)}


def worker_store(status, rate=300):
    from keymigration.kube import KubernetesProgress
    from keymigration.migrate.kms_budget import KmsBudget

    api, budget = ProgressApi(status), KmsBudget(rate) if rate else KmsBudget(None)
    store = KubernetesProgress("ns/p", api=api)
    store.sleep = lambda _: None
    store.on_kms_rate = budget.set_cap
    return api, budget, store


def acknowledged(status):
    return status.get("kmsRateApplied"), status.get("kmsRateAppliedSerial")


def test_the_worker_acknowledges_a_new_share_at_once_and_with_every_later_write():
    api, budget, store = worker_store({"kmsRate": 250, "kmsRateSerial": 1})
    store.load()
    assert budget.adaptive.snapshot()["cap"] == 250 and acknowledged(api.status) == (250, 1) and len(api.writes) == 1
    api.status.update(kmsRate=600, kmsRateSerial=2)  # the operator hands on a finished shard's share
    store.update({"scanned": 1})
    assert budget.adaptive.snapshot()["cap"] == 600
    assert len(api.writes) == 2 + 1 and acknowledged(api.writes[-1]) == (600, 2)  # the progress write, then the acknowledgement
    store.close({"scanned": 2, "exit_code": 0})
    assert acknowledged(api.writes[-1]) == (600, 2) and len(api.writes) == 4  # carried along, no extra write
    # 600 -> 300 -> 600 again, between two of its writes: the same cap, but serial 4 is acknowledged.
    api.status.update(kmsRate=600, kmsRateSerial=4)
    store._last_live = 0.0
    store.update({"scanned": 3})
    assert acknowledged(api.status) == (600, 4)


def test_a_lost_acknowledgement_is_sent_again_and_a_share_not_taken_is_not_acknowledged():
    api, budget, store = worker_store({"kmsRate": 250, "kmsRateSerial": 1})
    api.down = True
    store.load()  # its acknowledgement cannot be written
    assert budget.adaptive.snapshot()["cap"] == 250 and acknowledged(api.status) == (None, None)
    api.down = False
    store.update({"scanned": 1})
    assert acknowledged(api.status) == (250, 1) and len(api.writes) == 1
    # A pod started again finds its acknowledgement already recorded: no extra write.
    api, budget, store = worker_store(dict(api.status))
    store.load()
    assert not api.writes and budget.adaptive.snapshot()["cap"] == 250
    # A worker run without --kms-rate has no limiter to move: it says nothing it did not do.
    api, budget, store = worker_store({"kmsRate": 250, "kmsRateSerial": 1}, rate=None)
    store.load()
    store.update({"scanned": 1})
    assert acknowledged(api.status) == (None, None)


def test_planners_start_while_workers_wait_for_an_acknowledgement():
    running = shard_progress(A1)
    running["status"].update(kmsRate=300, kmsRateSerial=3, kmsRateApplied=600, kmsRateAppliedSerial=2, kmsRateSince=utc(NOW))
    spec = {**KMS_SPEC, "concurrency": {"maxJobs": 4}}
    plan = step(km(spec, prefixes=("a/", "b/")), [job(A1)], [planned("a/", ["a/k1", "a/k2"]), shard_progress(A0), running])
    assert created_jobs(plan) == [name(planner("b/"))]  # not A0 nor A2: A1 may still apply 600
    assert "new Jobs wait until prefix 'a/' shard 1" in dict((c["type"], c["message"]) for c in plan.status["conditions"])["Reconciling"]
