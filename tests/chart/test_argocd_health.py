"""docs/argocd-health.lua, Argo CD's health check for KeyMigration, run with Lua 5.1 (Argo CD uses
gopher-lua, a Lua 5.1 implementation) on hand-written statuses and on statuses produced by the
operator's real reconcile step."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import lupa.lua51 as lupa_lua51  # noqa: E402  (a test dependency; Lua 5.1, as Argo CD's gopher-lua)

from keymigration.kube.jobs import InstallConfig, child_name
from keymigration.kube.reconcile import reconcile

from .conftest import ROOT

SCRIPT = (ROOT / "docs" / "argocd-health.lua").read_text()
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def health(obj: dict) -> tuple[str, str]:
    lua = lupa_lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    hs = lua.execute(SCRIPT)
    return hs["status"], hs["message"]


def cond(type_: str, status: str, reason: str = "R", message: str = "", generation: int = 1) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": generation,
            "lastTransitionTime": "2026-11-27T12:00:00Z"}


def km(status: dict | None = None, generation: int = 1, spec_changes: dict | None = None) -> dict:
    obj = {
        "apiVersion": "keymigration.io/v1alpha1",
        "kind": "KeyMigration",
        "metadata": {"name": "mig", "namespace": "ns", "uid": "uid-1", "generation": generation},
        "spec": {
            "bucket": "my-bucket",
            "prefixes": ["a/", "b/"],
            "sourceKeys": [{"secretName": "old-keys", "key": "aes.key"}],
            "target": {"kmsKeyId": "alias/new"},
            **(spec_changes or {}),
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_missing_status_is_progressing():
    assert health(km())[0] == "Progressing"
    obj = km()
    del obj["metadata"]["generation"]
    assert health(obj)[0] == "Progressing"


def test_progressing():
    status = {"observedGeneration": 1, "conditions": [
        cond("Ready", "False", "Progressing", "1/2 prefixes done"), cond("Reconciling", "True", "Progressing"),
        cond("Stalled", "False", "Progressing"), cond("Suspended", "False", "NotSuspended")]}
    assert health(km(status)) == ("Progressing", "1/2 prefixes done")


def test_ready_is_healthy():
    status = {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Succeeded", "all done"),
                                                      cond("Stalled", "False", "Succeeded")]}
    assert health(km(status)) == ("Healthy", "all done")


def test_stalled_is_degraded_even_if_ready_says_otherwise():
    status = {"observedGeneration": 1, "conditions": [cond("Ready", "False", "PrefixFailed"),
                                                      cond("Stalled", "True", "PrefixFailed", "1 prefix Jobs failed")]}
    assert health(km(status)) == ("Degraded", "1 prefix Jobs failed")
    status["conditions"][1]["message"] = ""
    assert health(km(status)) == ("Degraded", "PrefixFailed")


def test_suspended():
    status = {"observedGeneration": 1, "conditions": [cond("Ready", "False", "Suspended"),
                                                      cond("Suspended", "True", "Suspended", "spec.suspend is true")]}
    assert health(km(status)) == ("Suspended", "spec.suspend is true")


def test_status_of_an_older_generation_is_progressing():
    status = {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Succeeded", "done")]}
    assert health(km(status, generation=2))[0] == "Progressing"
    # observedGeneration current, but a condition left from an older generation: not trusted
    status = {"observedGeneration": 2, "conditions": [cond("Stalled", "True", "PrefixFailed", generation=1)]}
    assert health(km(status, generation=2))[0] == "Progressing"
    assert health(km({"conditions": [cond("Ready", "True")]}))[0] == "Progressing"  # no observedGeneration


def test_empty_or_unknown_conditions_are_progressing():
    assert health(km({"observedGeneration": 1}))[0] == "Progressing"
    assert health(km({"observedGeneration": 1, "conditions": []}))[0] == "Progressing"
    assert health(km({"observedGeneration": 1, "conditions": [cond("Ready", "Unknown")]}))[0] == "Progressing"


# -- statuses written by the operator's reconcile step ---------------------------------------


def progress(prefix: str, done: bool, **counters) -> dict:
    counts = {"scanned": 0, "migrated": 0, "skipped": 0, "failed": 0, **counters}
    return {"metadata": {"name": child_name("mig", prefix)}, "status": {"counters": counts, "done": done}}


def job(prefix: str, failed: bool = False) -> dict:
    conditions = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "x"}] if failed else []
    return {"metadata": {"name": child_name("mig", prefix)}, "spec": {"suspend": False}, "status": {"conditions": conditions}}


def operator_status(obj: dict, jobs=(), progresses=()) -> dict:
    plan = reconcile(obj, list(jobs), list(progresses), InstallConfig(), NOW)
    return {**obj, "status": plan.status}


def test_real_operator_statuses():
    assert health(operator_status(km()))[0] == "Progressing"  # first sight: Ready=False
    done = [progress(p, True, scanned=3, migrated=3) for p in ("a/", "b/")]
    assert health(operator_status(km(), progresses=done))[0] == "Healthy"
    failed = [job("a/", failed=True)]
    assert health(operator_status(km(), failed, [progress("a/", False), progress("b/", True)]))[0] == "Degraded"
    objects_failed = [progress("a/", True, scanned=3, migrated=2, failed=1), progress("b/", True)]
    assert health(operator_status(km(), progresses=objects_failed))[0] == "Degraded"
    assert health(operator_status(km(spec_changes={"suspend": True}), [job("a/"), job("b/")]))[0] == "Suspended"
    invalid = km(spec_changes={"prefixes": ["a/", "a/b/"]})  # overlapping prefixes: Stalled
    assert health(operator_status(invalid))[0] == "Degraded"


def test_gitops_doc_embeds_exactly_this_script():
    doc = (ROOT / "docs" / "gitops.md").read_text()
    indented = "".join(("    " + line if line.strip() else line) for line in SCRIPT.splitlines(True))
    assert "  resource.customizations.health.keymigration.io_KeyMigration: |\n" + indented in doc


def test_script_avoids_lua_5_2_and_later_features():
    # Running under lupa.lua51 already rejects 5.2+ syntax; also catch 5.2+ library calls.
    code = "\n".join(line.split("--", 1)[0] for line in SCRIPT.splitlines())
    for feature in ("goto", "::", "//", "<<", ">>", "table.unpack", "table.pack", "utf8.", "<const>", "<close>", "_ENV"):
        assert feature not in code, feature
