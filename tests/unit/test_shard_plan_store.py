"""The planner Job's side of a sharded prefix: `keymigration shard --progress-resource` records the
boundaries in the prefix's progress object once, and refuses a plan one object cannot hold."""
import json

import pytest

from keymigration import cli
from keymigration.errors import ConfigurationError
from keymigration.kube import KubernetesProgress
from keymigration.migrate import EXIT_CONFIG, EXIT_OK
from keymigration.migrate.shards import Shard, ShardPlan
from keymigration.migrate.sources import KeyRange


class FakeApi:
    """get/patch of one progress object's status, as the API server answers them."""

    def __init__(self, status=None):
        self.obj = {"metadata": {"name": "p"}, "status": dict(status or {})}
        self.patches = []

    def get_namespaced_custom_object(self, *args):
        return json.loads(json.dumps(self.obj))

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        self.patches.append(body)
        self.obj["status"].update(body["status"])
        return json.loads(json.dumps(self.obj))


def test_the_plan_is_recorded_with_its_estimates():
    api = FakeApi()
    store = KubernetesProgress("ns/p", api=api)
    store.record_shard_plan(["a/1", "a/2"], [10, 11, 12], 33, False, 40)
    plan = api.obj["status"]["shardPlan"]
    assert (plan["boundaries"], plan["estimates"], plan["estimatedObjects"], plan["exact"], plan["listRequests"]) == (
        ["a/1", "a/2"], [10, 11, 12], 33, False, 40)
    assert store.shard_plan()["boundaries"] == ["a/1", "a/2"]


@pytest.mark.parametrize("boundaries,needle", [([f"k{i:05d}" for i in range(10000)], "10001 shards, more than 10000"),
                                                ([f"{i:05d}" + "x" * 1000 for i in range(1000)], "bytes, more than the 1000000")])
def test_a_plan_one_object_cannot_hold_is_refused_and_only_why_is_written(boundaries, needle):
    api = FakeApi()
    with pytest.raises(ConfigurationError, match=needle) as refused:
        KubernetesProgress("ns/p", api=api).record_shard_plan(boundaries, [], 0, False, 0)
    assert str(refused.value).startswith("shard plan refused: ") and "ask for fewer shards" in str(refused.value)
    assert [set(p["status"]) for p in api.patches] == [{"shardPlanRefused", "updatedAt"}]
    assert needle in api.obj["status"]["shardPlanRefused"] and "shardPlan" not in api.obj["status"]


def plan_of(*bounds):
    keys = [None, *bounds, None]
    return ShardPlan([Shard(KeyRange(keys[i], keys[i + 1]), 5) for i in range(len(keys) - 1)], 5 * (len(keys) - 1), True, 1)


def shard_command(monkeypatch, api, plan):
    planned = []
    monkeypatch.setattr(cli, "_plan_and_print", lambda args: planned.append(args) or plan)
    monkeypatch.setattr("keymigration.kube.progress_store.custom_objects_api", lambda: api)
    code = cli.main(["shard", "--bucket", "b", "--prefix", "a/", "--shards", "3", "--progress-resource", "ns/p"])
    return code, planned


def test_the_planner_records_once_and_keeps_a_recorded_plan(monkeypatch):
    api = FakeApi()
    code, planned = shard_command(monkeypatch, api, plan_of("a/1", "a/2"))
    assert code == EXIT_OK and len(planned) == 1 and api.obj["status"]["shardPlan"]["boundaries"] == ["a/1", "a/2"]
    # A second planner pod (a retry, a restarted node) keeps the plan: it does not even sample.
    code, planned = shard_command(monkeypatch, api, plan_of("a/0"))
    assert code == EXIT_OK and planned == [] and api.obj["status"]["shardPlan"]["boundaries"] == ["a/1", "a/2"]


def test_the_planner_says_why_it_refused_in_the_progress_object(monkeypatch):
    api = FakeApi()
    code, _ = shard_command(monkeypatch, api, plan_of(*[f"a/{i:05d}" + "x" * 1000 for i in range(1000)]))
    assert code == EXIT_CONFIG and "shardPlan" not in api.obj["status"]
    assert api.obj["status"]["lastError"].startswith("shard plan refused: the boundaries take") and api.obj["status"]["exitCode"] == EXIT_CONFIG
    assert "more than the 1000000" in api.obj["status"]["shardPlanRefused"]
