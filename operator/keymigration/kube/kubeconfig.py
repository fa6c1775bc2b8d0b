"""The one place that finds the Kubernetes API: the pod's ServiceAccount in a cluster, else the
user's kubeconfig (``KUBECONFIG``; tests, a shell)."""
from __future__ import annotations


def load_client_config() -> None:
    """Configure the ``kubernetes`` client's default configuration once per process."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


__all__ = ["load_client_config"]
