"""How both processes reach the API server: the client for their own requests, and the kopf
settings they share (kopf logs in separately)."""

from __future__ import annotations

import kopf
from kubernetes import client, config


def load_api() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def kopf_settings() -> kopf.OperatorSettings:
    """What the agent and the controller both want from kopf; each adds its own on top."""
    s = kopf.OperatorSettings()
    s.scanning.disabled = True  # fixed kinds: no CRD watching, no namespace discovery
    s.posting.enabled = False  # kopf's own events: N agents would flood objects; the
    # controller's handlers have nothing to report
    s.watching.reconnect_backoff = 1.0
    # Ride out an API server outage of any sane length (kopf's default gives up after ~90 s):
    # keep retrying, slowly.
    s.networking.error_backoffs = [1, 2, 4, 8, *([15] * 240)]
    return s
