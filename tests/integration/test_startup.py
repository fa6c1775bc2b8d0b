"""Start-up failures that pass by themselves exit with the retryable code (a Job runs the pod
again); deliberate outcomes keep codes no crash can produce. Real `keymigration run` processes
against moto, some through the fault proxy."""
from __future__ import annotations

import os
import subprocess
import sys

from keymigration.demo.standins import free_port
from keymigration.migrate import EXIT_CONFIG, EXIT_OK, EXIT_RETRY
from tests.integration.corpus import make_keys, seed_mixed
from tests.support.fault_proxy import FaultProxy


def start(aws, keys, prefix: str, env: dict, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    message = tmp_path / "termination-log"
    args = ["run", "--bucket", aws.bucket, "--prefix", prefix, *keys.cli_args(), "--kms-key-id", aws.target_key,
            "--progress", "none", *extra]
    proc = subprocess.run([sys.executable, "-m", "keymigration.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "KEYMIGRATION_TERMINATION_LOG": str(message), "AWS_MAX_ATTEMPTS": "2"})
    return proc, message.read_text() if message.exists() else ""


def base_env(aws) -> dict:
    return {**os.environ, **aws.server.env(), "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def test_no_credentials_yet_is_retryable(aws, tmp_path):
    """An IRSA token or the Pod Identity agent not ready yet: botocore finds no credentials."""
    keys = make_keys(aws, tmp_path / "keys")
    env = {k: v for k, v in base_env(aws).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    proc, message = start(aws, keys, "nocreds/", env, tmp_path)
    assert proc.returncode == EXIT_RETRY, proc.stderr[-2000:]
    assert "Unable to locate credentials" in message and "Traceback" not in proc.stderr


def test_unreachable_kms_endpoint_is_retryable(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    env = {**base_env(aws), "AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{free_port()}"}
    proc, message = start(aws, keys, "nokms/", env, tmp_path)
    assert proc.returncode == EXIT_RETRY, proc.stderr[-2000:]
    assert "Could not connect to the endpoint URL" in message


def describe_key(headers) -> bool:
    return (headers.get("X-Amz-Target") or "").endswith(".DescribeKey")


def test_throttled_or_failing_describe_key_is_retryable_and_denied_is_not(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    seed_mixed(aws, "throttled/", 3, keys)
    proxy = FaultProxy(aws.server.endpoint).start()
    try:
        env = {**base_env(aws), "AWS_ENDPOINT_URL": proxy.endpoint}
        proxy.rule = lambda method, path, headers, body: "slowdown" if describe_key(headers) else None
        proc, message = start(aws, keys, "throttled/", env, tmp_path)
        assert proc.returncode == EXIT_RETRY and "ThrottlingException" in message, proc.stderr[-2000:]
        proxy.rule = lambda method, path, headers, body: "error500" if describe_key(headers) else None
        assert start(aws, keys, "throttled/", env, tmp_path)[0].returncode == EXIT_RETRY
        proxy.rule = lambda method, path, headers, body: "kms-access-denied" if describe_key(headers) else None
        proc, message = start(aws, keys, "throttled/", env, tmp_path)
        assert proc.returncode == EXIT_CONFIG and "AccessDeniedException" in message  # the configuration must change
        proxy.rule = None
        assert start(aws, keys, "throttled/", env, tmp_path)[0].returncode == EXIT_OK
    finally:
        proxy.stop()


def test_unreachable_api_server_while_loading_the_checkpoint_is_retryable(aws, tmp_path):
    keys = make_keys(aws, tmp_path / "keys")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    env = {**base_env(aws), "KUBECONFIG": str(kubeconfig)}
    proc, message = start(aws, keys, "noapi/", env, tmp_path, "--progress-resource", "ns/progress")
    assert proc.returncode == EXIT_RETRY, proc.stderr[-2000:]
    assert message.startswith("cannot read the checkpoint in progress object ns/progress")
