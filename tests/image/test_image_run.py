"""The image, built and run (docs/image.md).

scripts/build-image.sh builds the image from the Dockerfile with buildah (on a debootstrap
stand-in for the official base image); then `keymigration run` runs inside it, as uid 65532,
against the moto server on 127.0.0.1, and the migrated objects are checked from outside the image:
each instruction file's envelope opens with the target KMS key, and `keymigration verify` (this
venv's) reads every object with only that key.

No skips: if buildah cannot build or run the image here, these tests fail.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.integration.corpus import make_keys, seed_mixed

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGE = "localhost/keymigration:test"
USER = "65532:65532"  # the Dockerfile's USER, the chart's runAsUser/runAsGroup
PREFIX = "image/"


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    """Builds (or, with buildah's layer cache, mostly reuses) the image; fails loudly."""
    proc = subprocess.run([str(ROOT / "scripts" / "build-image.sh"), IMAGE], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}",
                    pytrace=False)
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("build-image:")))
    assert proc.stdout.splitlines()[-1].startswith(f"image: {IMAGE} ")
    return IMAGE


@pytest.fixture
def container(image):
    """A buildah working container of the image, removed afterwards."""
    name = f"keymigration-test-{uuid.uuid4().hex[:8]}"
    proc = buildah("from", "--pull=never", "--name", name, image)
    assert proc.returncode == 0, proc.stderr
    yield name
    buildah("rm", name)


def run_in(container: str, *command: str, user: str | None = None, volumes: tuple[str, ...] = (),
           env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`buildah run` with chroot isolation and the host's network (moto listens on 127.0.0.1), and
    a tmpfs at /tmp, the emptyDir of the pods (HOME and the working directory of the image)."""
    args = ["run", "--isolation", "chroot", "--network", "host", "--mount", "type=tmpfs,destination=/tmp"]
    if user:
        args += ["--user", user]
    for volume in volumes:
        args += ["--volume", volume]
    for name, value in (env or {}).items():
        args += ["--env", f"{name}={value}"]
    return buildah(*args, container, "--", *command, timeout=timeout)


def written_to_root_filesystem(container: str, mount_points: set[str]) -> list[str]:
    """What the container wrote to its own layer (overlay's upper directory), apart from the empty
    mount points buildah creates for a run."""
    mount = buildah("mount", container)
    assert mount.returncode == 0, mount.stderr
    try:
        upper = pathlib.Path(mount.stdout.strip()).parent / "diff"
        assert upper.is_dir(), f"not an overlay container layer: {upper}"
        return sorted(
            str(path.relative_to(upper)) for path in upper.rglob("*")
            if not (str(path.relative_to(upper)) in mount_points and path.is_dir() and not any(path.iterdir()))
        )
    finally:
        buildah("umount", container)


def test_image_config_and_user(image, container):
    inspect = buildah("inspect", "--type", "image", image)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)["OCIv1"]["config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["keymigration"] and config["Cmd"] == ["--help"]
    assert "/opt/venv/bin" in next(e for e in config["Env"] if e.startswith("PATH="))
    # buildah run takes the image's USER when not given one
    proc = run_in(container, "sh", "-c", "id -u; id -g; python --version; keymigration --version")
    assert proc.returncode == 0, proc.stderr
    uid, gid, python, version = proc.stdout.split("\n")[:4]
    assert (uid, gid) == ("65532", "65532")
    assert python.startswith("Python 3.11.")  # pyproject.toml: requires-python >=3.11
    assert version == "keymigration 0.1.0"


def test_keymigration_run_in_the_image_migrates_a_mixed_prefix(aws, container, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    keys.directory.chmod(0o755)
    for path in (keys.aes, keys.rsa):
        path.chmod(0o644)  # readable by uid 65532 inside, whatever the umask
    seeded = seed_mixed(aws, PREFIX, 40, keys)  # V1/V2/V3, AES/RSA/KMS, metadata/instruction file, plaintext
    credentials = {name: value for name, value in aws.server.env().items() if name != "AWS_ENDPOINT_URL"}

    proc = run_in(
        container,
        "keymigration", "run", "--bucket", aws.bucket, "--prefix", PREFIX,
        "--source-key", f"/keys/{keys.aes.name}", "--source-key", f"/keys/{keys.rsa.name}",
        "--source-kms-key-id", keys.old_kms, "--kms-key-id", aws.target_key,
        "--endpoint-url", aws.server.endpoint, "--region", "us-east-1",
        "--report", "-", "--progress", "none",
        user=USER, volumes=(f"{keys.directory}:/keys:ro",), env=credentials,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]["summary"]
    assert (summary["migrated"], summary["skipped"], summary["failed"]) == (len(seeded.encrypted), len(seeded.plaintext), 0)
    assert {line["key"] for line in lines if "key" in line} == set(seeded.encrypted) | set(seeded.plaintext)

    # One instruction file per encrypted object, none for plaintext ones, each wrapped under the
    # target key: kms+context for V1/V2 sources (x-amz-key-v2 under x-amz-matdesc), V3 (x-amz-3
    # under x-amz-t).
    keys_after = set(aws.keys(PREFIX))
    assert {k for k in keys_after if k.endswith(".instruction")} == {k + ".instruction" for k in seeded.encrypted}
    for key in seeded.encrypted:
        envelope = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key=key + ".instruction")["Body"].read())
        if "x-amz-3" in envelope:
            blob, context = envelope["x-amz-3"], envelope["x-amz-t"]
        else:
            assert envelope["x-amz-wrap-alg"] == "kms+context", (key, envelope)
            blob, context = envelope["x-amz-key-v2"], envelope["x-amz-matdesc"]
        opened = aws.kms.decrypt(CiphertextBlob=base64.b64decode(blob), EncryptionContext=json.loads(context))
        assert opened["KeyId"] == aws.target_key and len(opened["Plaintext"]) == 32, key

    # Every object read back with only the target key, by this venv's keymigration (not the
    # image's): plaintext length must match what was seeded.
    cli = shutil.which("keymigration", path=os.path.dirname(sys.executable)) or "keymigration"
    verify = subprocess.run(
        [cli, "verify", "--bucket", aws.bucket, "--prefix", PREFIX, "--kms-key-id", aws.target_key,
         "--lookup", "explicit", "--report", "-", "--progress", "none"],
        check=False, capture_output=True, text=True, timeout=300, env={**os.environ, **aws.server.env()},
    )
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    results = {line["key"]: line for line in map(json.loads, verify.stdout.splitlines()) if "key" in line}
    for key, body in seeded.encrypted.items():
        assert (results[key]["outcome"], results[key]["message"]) == ("verified", f"{len(body)} bytes"), results[key]

    # The run wrote nothing to the image's root filesystem (the pods mount it read-only).
    assert written_to_root_filesystem(container, {"run", "keys"}) == []
