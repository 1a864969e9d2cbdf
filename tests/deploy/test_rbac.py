"""The chart's RBAC is least privilege, and enough: proven against the real API server.

The chart is rendered with `helm template` and applied server-side (its pods never run: there
is no kubelet). Then, as each ServiceAccount:

- `kubectl auth can-i` with impersonation checks every verb each component needs and a list of
  verbs it must not have;
- a SelfSubjectRulesReview made with the ServiceAccount's own token (`kubectl create token`)
  must equal, rule for rule, what the code uses;
- real requests with those tokens are refused (specs, Secrets, Pods, NodeStates...);
- the real code runs with those tokens: `bridgeport agent --source kube` for a fake Node in a
  throwaway network namespace (so the kernel it programs is the namespace's), then
  `bridgeport controller` (with kopf peering), and both must get their work done (NodeState
  written; PortPublication status, Events, peering keep-alive written) with no 403 in their
  logs. If the code starts using an API the chart does not grant, this test fails; a control
  run of the agent with a token lacking its permissions shows the log check catches that.
- the optional ValidatingAdmissionPolicy limits each agent to the NodeState of its own node,
  with pod-bound tokens like the ones kubelet mounts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import API
from tests.deploy.test_chart import render, render_text
from tests.e2e.world import loopback_bridge
from tests.harness.node import bridgeport_argv
from tests.netns import netns, wait_for

pytestmark = [pytest.mark.root, pytest.mark.apiserver]

NS = "bridgeport-rbac"  # where the chart is installed
APPS = "rbac-apps"  # where the test's PortPublication lives
RELEASE = "rbac"
AGENT_SA, CONTROLLER_SA = f"{RELEASE}-bridgeport-agent", f"{RELEASE}-bridgeport-controller"
NODE = "rbac-node-1"
BP = "bridgeport.io"
PEERING = "bridgeport-controller"
FORBIDDEN = re.compile(r"(?<![\d.])403(?!\d)|forbidden", re.IGNORECASE)


def user(sa: str) -> str:
    return f"system:serviceaccount:{NS}:{sa}"


@dataclass
class Installed:
    cp: Any  # tests.harness.controlplane.ControlPlane
    workdir: Path
    manifests: str

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check)  # type: ignore[no-any-return]

    def request(
        self,
        token: str,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/merge-patch+json",
    ) -> tuple[int, dict[str, Any]]:
        """One raw API request with a ServiceAccount's token (no kubectl in between: kubectl
        would GET before a PATCH, or list CRDs to validate, and fail on those instead)."""
        ctx = ssl.create_default_context(cafile=str(self.cp.ca_file))
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.cp.server + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Content-Type": "application/json" if method == "POST" else content_type,
            },
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return int(resp.status), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"{}")

    def token(self, sa: str, *bound: str) -> str:
        out = self.kubectl("create", "token", sa, "-n", NS, "--duration=2h", *bound)
        return out.stdout.strip()

    def pod_bound_token(self, sa: str, pod: str, node: str) -> str:
        """A token bound to a Pod on `node`, like the one kubelet projects into the pod."""
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS},
                    "spec": {
                        "nodeName": node,
                        "serviceAccountName": sa,
                        "containers": [{"name": "c", "image": "bridgeport:rbac-test"}],
                    },
                }
            ),
        )
        uid = self.kubectl("get", "pod", pod, "-n", NS, "-o", "jsonpath={.metadata.uid}").stdout
        return self.token(
            sa, "--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}"
        )

    def kubeconfig(self, name: str, token: str) -> Path:
        ca = base64.b64encode(self.cp.ca_file.read_bytes()).decode()
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": name,
                    "clusters": [
                        {
                            "name": name,
                            "cluster": {"server": self.cp.server, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": name, "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": name,
                            "context": {"cluster": name, "user": name, "namespace": "default"},
                        }
                    ],
                }
            )
        )
        path.chmod(0o600)
        return path

    def get(self, *what: str) -> dict[str, Any]:
        out = self.kubectl("get", *what, "-o", "json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def force_delete(inst: Installed, *what: str) -> None:
    inst.kubectl(
        "delete",
        *what,
        "--ignore-not-found",
        "--grace-period=0",
        "--force",
        "--wait=false",
        check=False,
    )


@pytest.fixture(scope="module")
def installed(control_plane: Any, crds: Any) -> Iterator[Installed]:
    """The chart (with the NodeState admission policy on) applied server-side, a Node, and a
    BridgeNetwork + PortPublication for the agent and the controller to work on."""
    manifests = render_text({"nodeStatePolicy.enabled": True}, release=RELEASE, namespace=NS)
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bridgeport-rbac-"))
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(workdir)], check=False))
        inst = Installed(control_plane, workdir, manifests)
        for ns in (NS, APPS):
            inst.kubectl("create", "namespace", ns)
            stack.callback(
                inst.kubectl,
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )
            # The chart's test pod needs the namespace's default ServiceAccount, which the
            # controller-manager creates (late while it re-acquires its lease, e.g. after
            # another module's API server outage).
            wait_for(
                lambda n=ns: (
                    inst.kubectl(
                        "get", "serviceaccount", "default", "-n", n, check=False
                    ).returncode
                    == 0
                ),
                timeout=120,
                what=f"the default ServiceAccount of {ns}",
            )
        stack.callback(
            inst.kubectl,
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            "--wait=false",
            input=manifests,
            check=False,
        )
        inst.kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-", input=manifests)
        inst.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump_all(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": NODE, "labels": {"bridgeport.io/rbac-test": "yes"}},
                    },
                    {
                        "apiVersion": API,
                        "kind": "BridgeNetwork",
                        "metadata": {"name": "rbac"},
                        "spec": {"bridge": "bp-rbac", "subnet": "10.99.0.0/24"},
                    },
                    {
                        "apiVersion": API,
                        "kind": "PortPublication",
                        "metadata": {"name": "web", "namespace": APPS},
                        "spec": {
                            "hostPort": 18080,
                            "network": "rbac",
                            "target": {"address": "10.99.0.2", "port": 80},
                        },
                    },
                ]
            ),
        )
        stack.callback(
            inst.kubectl, "delete", "nodestates", NODE, "--ignore-not-found", check=False
        )
        stack.callback(inst.kubectl, "delete", "node", NODE, "--ignore-not-found", check=False)
        stack.callback(
            inst.kubectl, "delete", "bridgenetwork", "rbac", "--ignore-not-found", check=False
        )
        # Pods bound to a node that has no kubelet never finish a graceful deletion.
        stack.callback(force_delete, inst, "pods", "--all", "-n", NS)
        yield inst


# -- what each ServiceAccount may and may not do (authorization only) ----------------------------

# (verb, resource, flags, allowed)
AGENT_MATRIX = [
    ("list", f"portpublications.{BP}", "-A", True),
    ("watch", f"portpublications.{BP}", "-A", True),
    ("list", f"bridgenetworks.{BP}", "", True),
    ("watch", f"bridgenetworks.{BP}", "", True),
    ("list", "nodes", "", True),
    ("watch", "nodes", "", True),
    ("create", f"nodestates.{BP}", "", True),
    ("patch", f"nodestates.{BP}", "--subresource=status", True),
    ("get", f"nodestates.{BP}", "", True),  # reads back its assigned host ports at start
    # never writes to shared objects, specs or status
    *(
        (verb, f"{res}.{BP}", flags, False)
        for res, flags in (("portpublications", "-A"), ("bridgenetworks", ""))
        for verb in ("get", "create", "update", "patch", "delete")
    ),
    *(
        (verb, f"{res}.{BP}", f"{flags} --subresource=status", False)
        for res, flags in (("portpublications", "-A"), ("bridgenetworks", ""))
        for verb in ("update", "patch")
    ),
    # its NodeState: only create, get + patch status
    *(
        (verb, f"nodestates.{BP}", "", False)
        for verb in ("list", "watch", "update", "patch", "delete", "deletecollection")
    ),
    ("update", f"nodestates.{BP}", "--subresource=status", False),
    ("get", "nodes", "", False),
    ("patch", "nodes", "", False),
    ("patch", "nodes", "--subresource=status", False),
    ("get", "secrets", "-A", False),
    ("list", "secrets", "-A", False),
    ("list", "configmaps", "-A", False),
    ("create", "pods", "-A", False),
    ("create", "events", "-A", False),
    ("create", "events.events.k8s.io", "-A", False),
    ("list", "clusterkopfpeerings.kopf.dev", "", False),
    ("create", "serviceaccounts", f"-n {NS} --subresource=token", False),
    ("impersonate", "serviceaccounts", "-A", False),
]

CONTROLLER_MATRIX = [
    *(
        (verb, f"{res}.{BP}", flags, True)
        for res, flags in (("portpublications", "-A"), ("bridgenetworks", ""), ("nodestates", ""))
        for verb in ("list", "watch")
    ),
    ("patch", f"portpublications.{BP}", "-A --subresource=status", True),
    ("patch", f"bridgenetworks.{BP}", "--subresource=status", True),
    ("create", "events.events.k8s.io", "-A", True),
    ("create", "events.events.k8s.io", "-n default", True),
    ("list", "clusterkopfpeerings.kopf.dev", "", True),
    ("watch", "clusterkopfpeerings.kopf.dev", "", True),
    ("get", f"clusterkopfpeerings.kopf.dev/{PEERING}", "", True),
    ("patch", f"clusterkopfpeerings.kopf.dev/{PEERING}", "", True),
    # specs are the users'; status only by merge patch
    *(
        (verb, f"{res}.{BP}", flags, False)
        for res, flags in (("portpublications", "-A"), ("bridgenetworks", ""))
        for verb in ("get", "create", "update", "patch", "delete")
    ),
    ("update", f"portpublications.{BP}", "-A --subresource=status", False),
    ("update", f"bridgenetworks.{BP}", "--subresource=status", False),
    # NodeStates are the agents'
    *(
        (verb, f"nodestates.{BP}", "", False)
        for verb in ("get", "create", "update", "patch", "delete")
    ),
    ("patch", f"nodestates.{BP}", "--subresource=status", False),
    # other peerings, peering lifecycle
    ("get", "clusterkopfpeerings.kopf.dev/default", "", False),
    ("patch", "clusterkopfpeerings.kopf.dev/default", "", False),
    ("create", "clusterkopfpeerings.kopf.dev", "", False),
    ("delete", f"clusterkopfpeerings.kopf.dev/{PEERING}", "", False),
    ("create", "events", "-A", False),  # it uses events.k8s.io/v1, not core v1
    ("list", "nodes", "", False),
    ("get", "secrets", "-A", False),
    ("list", "secrets", "-A", False),
    ("create", "pods", "-A", False),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "", False),
]


def can_i(inst: Installed, sa: str, verb: str, resource: str, flags: str) -> bool:
    out = inst.kubectl(
        "auth", "can-i", verb, resource, *flags.split(), f"--as={user(sa)}", check=False
    )
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("sa", "matrix"),
    [(AGENT_SA, AGENT_MATRIX), (CONTROLLER_SA, CONTROLLER_MATRIX)],
    ids=["agent", "controller"],
)
def test_can_i(installed: Installed, sa: str, matrix: list[tuple[str, str, str, bool]]) -> None:
    wrong = [
        f"{verb} {res} {flags}: {'denied' if allowed else 'ALLOWED'}"
        for verb, res, flags, allowed in matrix
        if can_i(installed, sa, verb, res, flags) != allowed
    ]
    assert wrong == []


# -- exactly these rules, as the ServiceAccount itself sees them (its own token) -----------------

DEFAULT_RULE_GROUPS = {"authorization.k8s.io", "authentication.k8s.io"}  # self-reviews


def own_rules(inst: Installed, sa: str) -> set[tuple[str, str, str, str]]:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": APPS},
    }
    code, body = inst.request(
        inst.token(sa), "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", review
    )
    assert code == 201, body
    status = body["status"]
    assert not status.get("incomplete"), status
    rules = set()
    for r in status["resourceRules"]:
        for g in r.get("apiGroups", []):
            if g in DEFAULT_RULE_GROUPS:
                continue
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    for n in r.get("resourceNames") or ["*"]:
                        rules.add((g, res, v, n))
    return rules


def test_agent_rules_are_exactly_what_it_uses(installed: Installed) -> None:
    assert own_rules(installed, AGENT_SA) == {
        (BP, "portpublications", "list", "*"),
        (BP, "portpublications", "watch", "*"),
        (BP, "bridgenetworks", "list", "*"),
        (BP, "bridgenetworks", "watch", "*"),
        ("", "nodes", "list", "*"),
        ("", "nodes", "watch", "*"),
        (BP, "nodestates", "create", "*"),
        (BP, "nodestates", "get", "*"),
        (BP, "nodestates/status", "patch", "*"),
    }


def test_controller_rules_are_exactly_what_it_uses(installed: Installed) -> None:
    assert own_rules(installed, CONTROLLER_SA) == {
        *(
            (BP, res, verb, "*")
            for res in ("portpublications", "bridgenetworks", "nodestates")
            for verb in ("list", "watch")
        ),
        (BP, "portpublications/status", "patch", "*"),
        (BP, "bridgenetworks/status", "patch", "*"),
        ("events.k8s.io", "events", "create", "*"),
        ("kopf.dev", "clusterkopfpeerings", "list", "*"),
        ("kopf.dev", "clusterkopfpeerings", "watch", "*"),
        ("kopf.dev", "clusterkopfpeerings", "get", PEERING),
        ("kopf.dev", "clusterkopfpeerings", "patch", PEERING),
    }


PP_PATH = f"/apis/{BP}/v1alpha1/namespaces/{APPS}/portpublications/web"
BN_PATH = f"/apis/{BP}/v1alpha1/bridgenetworks/rbac"
NS_PATH = f"/apis/{BP}/v1alpha1/nodestates"
SPEC_PATCH = {"spec": {"hostPort": 18081}}
STATUS_PATCH = {"status": {"ready": "9/9"}}
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "x"},
    "spec": {"containers": [{"name": "c", "image": "x"}]},
}
NODESTATE = {
    "apiVersion": API,
    "kind": "NodeState",
    "metadata": {"name": "rbac-probe"},
    "spec": {"nodeName": "rbac-probe"},
}
# (method, path, body): requests each ServiceAccount's own token must be refused (403, by RBAC)
REFUSED = {
    "agent": [
        ("GET", "/api/v1/secrets", None),
        ("GET", f"/api/v1/namespaces/{NS}/secrets", None),
        ("GET", PP_PATH, None),
        ("PATCH", PP_PATH, SPEC_PATCH),
        ("PATCH", f"{PP_PATH}/status", STATUS_PATCH),
        ("PATCH", BN_PATH, {"spec": {"mtu": 1400}}),
        ("PATCH", f"{BN_PATH}/status", STATUS_PATCH),
        ("DELETE", BN_PATH, None),
        ("GET", NS_PATH, None),  # a list; its own NodeState it may get (assigned ports)
        ("PATCH", f"{NS_PATH}/{NODE}", {"metadata": {"labels": {"x": "y"}}}),
        ("DELETE", f"{NS_PATH}/{NODE}", None),
        ("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"labels": {"x": "y"}}}),
        ("POST", f"/api/v1/namespaces/{NS}/pods?dryRun=All", POD),
        ("POST", f"/api/v1/namespaces/{APPS}/events?dryRun=All", {}),
    ],
    "controller": [
        ("GET", "/api/v1/secrets", None),
        ("PATCH", PP_PATH, SPEC_PATCH),
        ("PATCH", BN_PATH, {"spec": {"mtu": 1400}}),
        ("DELETE", PP_PATH, None),
        ("GET", f"{NS_PATH}/{NODE}", None),
        ("POST", f"{NS_PATH}?dryRun=All", NODESTATE),
        ("PATCH", f"{NS_PATH}/{NODE}/status", STATUS_PATCH),
        ("GET", "/api/v1/nodes", None),
        ("POST", f"/api/v1/namespaces/{NS}/pods?dryRun=All", POD),
        ("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/default", None),
    ],
}


@pytest.mark.parametrize("who", ["agent", "controller"])
def test_real_tokens_are_refused_what_they_lack(installed: Installed, who: str) -> None:
    token = installed.token(AGENT_SA if who == "agent" else CONTROLLER_SA)
    wrong = []
    for method, path, body in REFUSED[who]:
        code, reply = installed.request(token, method, path, body)
        if code != 403 or "cannot" not in reply.get("message", ""):  # RBAC's wording
            wrong.append(f"{method} {path}: {code} {reply.get('message')}")
    assert wrong == []


def test_real_tokens_may_do_what_the_code_does(installed: Installed) -> None:
    """The same tokens, the allowed side (the runs below exercise it for real)."""
    inst = installed
    agent, controller = inst.token(AGENT_SA), inst.token(CONTROLLER_SA)
    for token, method, path, body in [
        (agent, "GET", f"/apis/{BP}/v1alpha1/portpublications", None),
        (agent, "GET", f"/apis/{BP}/v1alpha1/bridgenetworks", None),
        (agent, "GET", "/api/v1/nodes", None),
        (controller, "GET", f"/apis/{BP}/v1alpha1/nodestates", None),
        (controller, "GET", "/apis/kopf.dev/v1/clusterkopfpeerings", None),
        (controller, "GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}", None),
        (controller, "PATCH", f"{PP_PATH}/status?dryRun=All", {"status": {}}),
        (controller, "PATCH", f"{BN_PATH}/status?dryRun=All", {"status": {}}),
    ]:
        code, reply = inst.request(token, method, path, body)
        assert code == 200, (method, path, reply.get("message"))


# -- the real code paths, with the chart's ServiceAccounts -------------------------------------


def wait_logged(predicate: Any, what: str, log: Path, timeout: float = 30) -> None:
    """wait_for, with the tail of `log` (read at the time of failure) in the message."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n---- {log.name} ----\n{log.read_text()[-4000:]}") from None


def no_forbidden(log: str) -> list[str]:
    """The log lines (JSON, timestamps dropped: digits there are not status codes) that
    mention an HTTP 403 or Forbidden."""
    hits = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
            text = json.dumps({k: v for k, v in record.items() if k != "timestamp"})
        except (ValueError, AttributeError):
            text = line
        if FORBIDDEN.search(text):
            hits.append(line)
    return hits


@contextmanager
def agent_in_netns(inst: Installed, kubeconfig: Path, node: str) -> Iterator[Path]:
    """`bridgeport agent --source kube` for `node` inside a throwaway network namespace; the
    API server's 127.0.0.1 port is bridged into it over a unix socket. Yields the log path."""
    log = inst.workdir / f"agent-{node}.log"
    port = int(inst.cp.server.rsplit(":", 1)[1])
    with netns("bprb") as ns, loopback_bridge(ns, port, inst.workdir):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "NODE_NAME": node}
        cmd = bridgeport_argv(
            "agent", "--source", "kube", "--node-name", node, "--resync", "5",
            "--health-port", "0", "--metrics-port", "0",
        )  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.Popen(ns.prefix() + cmd, stdout=out, stderr=out, env=env)
        try:
            yield log
        finally:
            stop(proc)


@contextmanager
def controller_process(inst: Installed, kubeconfig: Path) -> Iterator[Path]:
    log = inst.workdir / "controller.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": "rbac-controller-0"}
    # With kopf peering, as deployed.
    cmd = bridgeport_argv("controller", "--health-port", "0", "--metrics-port", "0")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
    try:
        yield log
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM as Kubernetes would; SIGKILL if it does not exit in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_agent_and_controller_work_with_the_charts_permissions(installed: Installed) -> None:
    inst = installed
    # The agent's token is pod-bound to a pod on NODE, as in a real DaemonSet pod, so the
    # NodeState admission policy (enabled in this install) lets it write its own NodeState.
    agent_kc = inst.kubeconfig("agent", inst.pod_bound_token(AGENT_SA, "agent-1", NODE))
    controller_kc = inst.kubeconfig("controller", inst.token(CONTROLLER_SA))

    with agent_in_netns(inst, agent_kc, NODE) as agent_log:

        def reported() -> bool:
            state = inst.get("nodestates", NODE)
            return int(state.get("status", {}).get("applied", {}).get("count", 0)) == 2

        wait_logged(reported, f"NodeState {NODE} with both resources", agent_log)
        state = inst.get("nodestates", NODE)
        assert state["metadata"]["ownerReferences"][0]["name"] == NODE
        # Both Applied: summarised in the digests, nothing listed as an exception.
        assert state["status"]["resources"] == [], state["status"]
        assert state["status"]["counts"]["Applied"] == 2, state["status"]

        with controller_process(inst, controller_kc) as controller_log:

            def pp_ready() -> bool:
                pp = inst.get("pp", "web", "-n", APPS)
                status = pp.get("status", {})
                return bool(
                    status.get("ready") == "1/1"
                    and status.get("observedGeneration") == pp["metadata"]["generation"]
                )

            wait_logged(pp_ready, "pp status written by the controller", controller_log, 40)
            wait_logged(
                lambda: inst.get("bn", "rbac").get("status", {}).get("ready") == "1/1",
                "bn status written by the controller",
                controller_log,
            )
            peering = inst.get("clusterkopfpeering", PEERING)
            assert "rbac-controller-0" in peering.get("status", {}), peering
            # Condition transitions post events.k8s.io/v1 Events: wait until it tried (what the
            # server said to it, other than 403, is the controller's business, not RBAC's).
            wait_logged(
                lambda: re.search(
                    r'"event": "(event posted|cannot post event)"', controller_log.read_text()
                ),
                "the controller to post its Ready events",
                controller_log,
            )
            # A few more reconciles and resyncs, then the logs must be free of 403s.
            inst.kubectl(
                "patch",
                "pp",
                "web",
                "-n",
                APPS,
                "--type=merge",
                "-p",
                '{"spec":{"hostPort":18082}}',
            )
            wait_logged(pp_ready, "pp status at generation 2", controller_log)
        controller_text = controller_log.read_text()
    agent_text = agent_log.read_text()
    assert no_forbidden(agent_text) == []
    assert no_forbidden(controller_text) == []
    assert "NodeState created" in agent_text
    assert "status written" in controller_text


def test_a_missing_permission_shows_up_as_a_403(installed: Installed) -> None:
    """Control for the test above: an agent run with the controller's token (no nodes, no
    NodeState writes) logs 403s and writes nothing, so a permission the chart lacked would
    fail that test rather than pass unnoticed."""
    inst = installed
    node = "rbac-node-control"
    kubeconfig = inst.kubeconfig("agent-with-controller-token", inst.token(CONTROLLER_SA))
    with agent_in_netns(inst, kubeconfig, node) as log:
        wait_logged(lambda: no_forbidden(log.read_text()), "a 403 in the agent's log", log)
    assert inst.get("nodestates", node) == {}


# -- the optional admission policy: each agent writes only its own NodeState --------------------


def test_nodestate_policy_limits_agents_to_their_own_node(installed: Installed) -> None:
    inst = installed
    other = "rbac-node-2"
    inst.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": other}}),
    )
    try:
        policy = inst.get("validatingadmissionpolicy", f"{RELEASE}-bridgeport-agent-own-nodestate")
        assert not policy.get("status", {}).get("typeChecking", {}).get("expressionWarnings")
        on_node = inst.pod_bound_token(AGENT_SA, "agent-2", other)
        unbound = inst.token(AGENT_SA)

        def create(token: str, name: str) -> tuple[int, dict[str, Any]]:
            body = {**NODESTATE, "metadata": {"name": name}, "spec": {"nodeName": name}}
            return inst.request(token, "POST", f"{NS_PATH}?dryRun=All", body)

        def denied(reply: tuple[int, dict[str, Any]]) -> bool:
            return reply[0] == 403 and "may only write NodeState" in reply[1].get("message", "")

        # The policy is enforced once the API server's admission informers have it.
        wait_for(
            lambda: denied(create(on_node, "rbac-node-3")),
            timeout=30,
            interval=0.5,
            what="the admission policy to deny another node's NodeState",
        )
        code, reply = create(on_node, other)
        assert code == 201, reply  # its own: allowed
        reply = inst.request(
            on_node, "PATCH", f"{NS_PATH}/{NODE}/status?dryRun=All", {"status": {"errors": ["x"]}}
        )
        assert denied(reply), reply  # someone else's, existing: denied
        reply = create(unbound, other)
        assert denied(reply) and "not a node-bound token" in reply[1]["message"], reply
        # Nobody else is matched: the admin may still repair any NodeState.
        name = "rbac-node-3"
        inst.kubectl(
            "create",
            "--dry-run=server",
            "-f",
            "-",
            input=yaml.safe_dump(
                {**NODESTATE, "metadata": {"name": name}, "spec": {"nodeName": name}}
            ),
        )
    finally:
        force_delete(inst, "pod", "agent-2", "-n", NS)
        inst.kubectl("delete", "node", other, "--ignore-not-found", check=False)


def test_rendered_chart_is_what_was_applied(installed: Installed) -> None:
    """Every object of the install exists (the server accepted all of them)."""
    for obj in render({"nodeStatePolicy.enabled": True}, release=RELEASE, namespace=NS):
        meta = obj["metadata"]
        kind = obj["kind"].lower()
        where = ["-n", meta["namespace"]] if meta.get("namespace") else []
        group = obj["apiVersion"].rpartition("/")[0]
        resource = f"{kind}.{group}" if group else kind
        assert installed.get(resource, meta["name"], *where), (kind, meta["name"])
