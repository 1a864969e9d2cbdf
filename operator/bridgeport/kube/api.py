"""One way to reach the API server for both processes' own requests (kopf logs in separately)."""

from __future__ import annotations

from kubernetes import client, config


def load_api() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
