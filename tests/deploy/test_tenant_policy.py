"""Tenant policy at admission, evaluated by the real kube-apiserver (issue 15).

The chart's ValidatingAdmissionPolicy (tenantPolicy.enabled) with its parameters in a
HostPortPolicy, and real tenant identities: a ServiceAccount per namespace allowed by RBAC to
write PortPublications there, acting with its own token. Scenarios:
- the API server serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (GA)
- allowed: a port inside the namespace's rule; a UDP port on the host IP its rule names
- assigned host ports: an assignFrom range inside a rule is allowed; one reaching outside, and
  one from the nodes' ephemeral range (the API server cannot know it: checked as 1-65535),
  are denied
- denied, the message naming the policy and the rules that apply: a port outside, a range that
  only starts inside, UDP without the named host IP, another namespace's rule, a namespace
  that no rule covers
- updates: moving an admitted publication out of its allowance is denied and changes nothing;
  after the administrator narrows the policy, the tenant's next update is denied, while the
  existing object stays and a cluster administrator (exempt group) can still change it
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import API, publication
from tests.deploy.test_chart import render
from tests.harness.apiserver import Kubectl

pytestmark = pytest.mark.apiserver

POLICY = {
    "apiVersion": API,
    "kind": "HostPortPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "rules": [
            {
                "name": "team-a-web",
                "namespaces": ["tp-team-a"],
                "ports": [{"from": 8000, "to": 8099}],
                "protocols": ["TCP"],
            },
            {
                "name": "team-a-dns",
                "namespaces": ["tp-team-a"],
                "ports": [{"from": 5353}],
                "protocols": ["UDP"],
                "hostIPs": ["192.0.2.10"],
            },
            {
                "name": "shared-high",
                "namespaces": ["tp-team-a", "tp-team-b"],
                "ports": [{"from": 30000, "to": 30099}],
            },
        ]
    },
}
TENANTS = ("tp-team-a", "tp-team-b", "tp-team-c")


def pp(name: str, port: int, **spec: Any) -> dict[str, Any]:
    doc = publication(name, port, **spec)
    del doc["metadata"]["namespace"]  # the tenant's kubeconfig says which
    return doc


class Tenant:
    """kubectl with a ServiceAccount's own token (no impersonation, no admin certificate)."""

    def __init__(self, cp: Any, namespace: str, token: str, workdir: Path) -> None:
        self.cp, self.namespace = cp, namespace
        ca = base64.b64encode(cp.ca_file.read_bytes()).decode()
        self.kubeconfig = workdir / f"{namespace}.kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "t",
                    "clusters": [
                        {
                            "name": "t",
                            "cluster": {"server": cp.server, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": "t", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "t",
                            "context": {"cluster": "t", "user": "t", "namespace": namespace},
                        }
                    ],
                }
            )
        )
        self.kubeconfig.chmod(0o600)
        self.cache = workdir / f"{namespace}-cache"

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(self.cp.kubectl_path),
                "--kubeconfig",
                str(self.kubeconfig),
                "--cache-dir",
                str(self.cache),
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def create(self, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self("create", "-f", "-", input=json.dumps(doc))


@pytest.fixture(scope="module")
def tenants(
    control_plane: Any, kubectl: Kubectl, crds: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Tenant]]:
    workdir = tmp_path_factory.mktemp("tenants")
    policy_docs = [
        d
        for d in render({"tenantPolicy.enabled": True})
        if d["kind"].startswith("ValidatingAdmissionPolicy") and "tenant" in d["metadata"]["name"]
    ]
    assert len(policy_docs) == 2
    out: dict[str, Tenant] = {}
    try:
        kubectl.ok("apply", "-f", "-", input=yaml.safe_dump_all([POLICY, *policy_docs]))
        for ns in TENANTS:
            kubectl.ok("create", "namespace", ns)
            kubectl.ok("create", "serviceaccount", "tenant", "-n", ns)
            kubectl.ok(
                "create",
                "role",
                "publisher",
                "-n",
                ns,
                "--verb=*",
                "--resource=portpublications.bridgeport.io",
            )
            kubectl.ok(
                "create",
                "rolebinding",
                "publisher",
                "-n",
                ns,
                "--role=publisher",
                f"--serviceaccount={ns}:tenant",
            )
            token = kubectl.ok("create", "token", "tenant", "-n", ns, "--duration=1h").strip()
            out[ns] = Tenant(control_plane, ns, token, workdir)
        # The API server compiles a new policy and its binding asynchronously: wait until a
        # request the policy must refuse is refused (bounded).
        probe = out["tp-team-c"]
        deadline = time.monotonic() + 60
        while True:
            result = probe.create(pp("probe", 8080))
            if result.returncode != 0 and "HostPortPolicy" in result.stderr:
                break
            if result.returncode == 0:
                probe("delete", "pp", "probe", "--wait=false")
            assert time.monotonic() < deadline, f"policy never took effect: {result.stderr}"
            time.sleep(0.5)
        yield out
    finally:
        for ns in TENANTS:
            kubectl("delete", "namespace", ns, "--wait=false")
        kubectl(
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            "--wait=false",
            input=yaml.safe_dump_all([POLICY, *policy_docs]),
        )


def test_the_api_server_serves_vap_ga(kubectl: Kubectl) -> None:
    out = kubectl.ok("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "wide")
    assert any(
        line.startswith("validatingadmissionpolicies ")
        and "admissionregistration.k8s.io/v1 " in line
        for line in out.splitlines()
    ), out


def test_allowed(tenants: dict[str, Tenant]) -> None:
    a, b = tenants["tp-team-a"], tenants["tp-team-b"]
    assert a.create(pp("web", 8080)).returncode == 0
    assert a.create(pp("web-range", 8010, hostPortEnd=8020)).returncode == 0
    assert a.create(pp("dns", 5353, protocol="UDP", hostIP="192.0.2.10")).returncode == 0
    assert b.create(pp("high", 30001, protocol="UDP")).returncode == 0
    # An assigned port is checked with the range it comes from.
    assert a.create(assigned("picked", assignFrom={"start": 8050, "end": 8059})).returncode == 0


def assigned(name: str, **spec: Any) -> dict[str, Any]:
    """A publication whose nodes assign the host port."""
    doc = pp(name, 1, **spec)
    del doc["spec"]["hostPort"]
    return doc


@pytest.mark.parametrize(
    ("ns", "doc", "message"),
    [
        (
            "tp-team-a",
            pp("ssh", 22),
            "PortPublication tp-team-a/ssh: 22/TCP is outside HostPortPolicy default rule(s) "
            "team-a-web, team-a-dns, shared-high for namespace tp-team-a",
        ),
        ("tp-team-a", pp("spill", 8090, hostPortEnd=8100), "8090-8100/TCP is outside"),
        ("tp-team-a", pp("udp-web", 8080, protocol="UDP"), "8080/UDP is outside"),
        ("tp-team-a", pp("dns-any", 5353, protocol="UDP"), "5353/UDP is outside"),
        (
            "tp-team-a",
            pp("dns-other", 5353, protocol="UDP", hostIP="192.0.2.11"),
            "192.0.2.11:5353/UDP is outside",
        ),
        (
            "tp-team-b",
            pp("web", 8080),
            "8080/TCP is outside HostPortPolicy default rule(s) shared-high "
            "for namespace tp-team-b",
        ),
        (
            "tp-team-a",
            assigned("ephemeral"),
            "tp-team-a/ephemeral: a port assigned from 1-65535/TCP is outside",
        ),
        (
            "tp-team-a",
            assigned("wide", assignFrom={"start": 8050, "end": 8150}),
            "a port assigned from 8050-8150/TCP is outside",
        ),
        (
            "tp-team-c",
            pp("web", 30001),
            "PortPublication tp-team-c/web: 30001/TCP is denied: no rule of HostPortPolicy default "
            "covers namespace tp-team-c",
        ),
    ],
)
def test_denied_naming_the_rule(
    tenants: dict[str, Tenant], ns: str, doc: dict[str, Any], message: str
) -> None:
    result = tenants[ns].create(doc)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "ValidatingAdmissionPolicy" in result.stderr


def test_updates_out_of_the_allowance(tenants: dict[str, Tenant], kubectl: Kubectl) -> None:
    a = tenants["tp-team-a"]
    assert a.create(pp("moving", 8081)).returncode == 0
    moved = a("patch", "pp", "moving", "--type=merge", "-p", '{"spec":{"hostPort":9090}}')
    assert moved.returncode != 0
    assert "9090/TCP is outside HostPortPolicy default rule(s) team-a-web" in moved.stderr
    assert kubectl.json("get", "pp", "moving", "-n", "tp-team-a")["spec"]["hostPort"] == 8081
    # The administrator narrows the policy: team-a keeps only its DNS rule.
    narrowed = json.loads(json.dumps(POLICY))
    narrowed["spec"]["rules"] = [r for r in narrowed["spec"]["rules"] if r["name"] != "team-a-web"]
    try:
        kubectl.ok("apply", "-f", "-", input=yaml.safe_dump(narrowed))
        deadline = time.monotonic() + 30
        while True:  # the parameter object reaches the policy through an informer
            touched = a(
                "label", "pp", "moving", f"touch={int(time.monotonic() * 1000)}", "--overwrite"
            )
            if touched.returncode != 0:
                break
            assert time.monotonic() < deadline, "the narrowed policy never took effect"
            time.sleep(0.5)
        assert "8081/TCP is outside HostPortPolicy default rule(s) team-a-dns, shared-high" in (
            touched.stderr
        )
        assert kubectl.json("get", "pp", "moving", "-n", "tp-team-a")  # still there
        kubectl.ok("label", "pp", "moving", "-n", "tp-team-a", "reviewed=yes")  # admin: exempt
    finally:
        kubectl.ok("apply", "-f", "-", input=yaml.safe_dump(POLICY))
