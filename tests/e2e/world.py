"""End-to-end topologies: one suite, two clusters.

Local (default), on the control plane of tests/harness:

    client netns --veth-- node-1 netns (192.0.2.1)      agent + bridge + container netns
                 --veth-- node-2 netns (198.51.100.1)   agent + bridge + container netns
    controller: a process in the root namespace

  The API server listens on the root namespace's 127.0.0.1. Each node netns gets the same port
  on its own 127.0.0.1, bridged over a unix socket (socket files are shared by all network
  namespaces), so no test traffic ever leaves loopback or our own namespaces.

kind (tests/e2e/kind.sh sets BRIDGEPORT_E2E_KUBECONFIG and BRIDGEPORT_E2E_NODE_EXEC, e.g.
"docker exec {node}"): the chart already runs the agents and the controller (on every node,
the control plane included); the two workers are the nodes, the control-plane node is the
client, container netns are made on the workers. Expected counts ("n/n") come from the cluster
(`KubeWorld.expected`), not from the number of test nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.node import bridgeport_argv
from tests.netns import Netns, netns, unique, veth, wait_for

KUBECTL = os.environ.get("BRIDGEPORT_E2E_KUBECTL", "kubectl")  # external clusters only
METRICS_PORT = 9102  # each node netns has its own: no clash (the chart's default too)


@dataclass
class Node:
    name: str
    ns: Netns  # the node's own network namespace
    address: str
    client_address: str  # the client's address as the node sees it
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    agent: subprocess.Popen[str] | None = None

    def start_agent(self, state_file: bool = True) -> None:
        """The agent; without a state file, as the chart runs it (its NodeState remembers)."""
        log = (self.workdir / f"{self.name}.log").open("a")
        state = ["--state-file", str(self.workdir / f"{self.name}.json")] if state_file else []
        cmd = bridgeport_argv(
            "agent", "--node-name", self.name, *state, "--resync", "5",
            "--health-port", "0", "--metrics-port", str(METRICS_PORT),
        )  # fmt: skip
        self.agent = subprocess.Popen(
            self.ns.prefix() + cmd, stdout=log, stderr=log, text=True, env=self.env
        )

    def stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(15)
        self.agent = None

    def metric(self, name: str) -> float:
        """A sample of the agent's /metrics (`name` with its labels, as exposed), 0 if absent."""
        script = (
            "import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())"
        )
        out = self.ns.run(["python3", "-c", script]).stdout
        for line in out.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def nft_map(self, name: str = "pub_any") -> str:
        return self.ns.run(["nft", "list", "map", "ip", "bridgeport", name], check=False).stdout

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / f"{self.name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


@dataclass
class KubeWorld:
    cp: Any  # tests.harness.controlplane.ControlPlane, or None on an external (kind) cluster
    client: Netns
    nodes: list[Node]
    stack: ExitStack
    workdir: Path
    kubeconfig: Path
    controller: subprocess.Popen[str] | None = None
    containers: list[Netns] = field(default_factory=list)

    def _kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self.cp is not None:
            return self.cp.kubectl(*args, input=input, check=check)  # type: ignore[no-any-return]
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self._kubectl(*args, input=input, check=check).stdout

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        out = self._kubectl("get", kind, name, *ns, "-o", "json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}

    def condition(self, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == kind:
                return dict(c)
        return {}

    def expected(self, match_labels: dict[str, str] | None = None) -> str:
        """ "n/n" for a resource selecting `match_labels`: the nodes that run an agent (the
        local world's, or on a cluster those with a NodeState) whose labels match, read from
        the cluster now (the kind chart runs an agent on the control plane too)."""
        if self.cp is not None:
            agents = {n.name for n in self.nodes}
        else:
            agents = {
                n.rsplit("/", 1)[-1]
                for n in self.kubectl("get", "nodestates", "-o", "name").split()
            }
        wanted = match_labels or {}
        count = sum(
            1
            for n in json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
            if n["metadata"]["name"] in agents
            and all(n["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        )
        return f"{count}/{count}"

    def container(self, node: Node, bridge: str, address: str, gateway: str) -> Netns:
        wait_for(
            lambda: node.ns.run(f"ip link show {bridge}", check=False).returncode == 0,
            timeout=30,
            what=f"bridge {bridge} on {node.name} ({node.log_tail()})",
        )
        box = self.stack.enter_context(netns("bpe", host=node.ns.host))
        port = unique("bpq")
        veth(box, "eth0", node.ns, port)
        node.ns.run(f"ip link set {port} master {bridge}")
        box.run(f"ip addr add {address} dev eth0")
        box.run(f"ip route add default via {gateway}")
        self.containers.append(box)
        return box

    def serve(self, ns: Netns, *args: str) -> None:
        proc = ns.popen([*ns.interpreter("peer_server.py"), *args])
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def ask(self, host: str, port: int, timeout: float = 2) -> str:
        return self.client.python(
            "peer_client.py",
            "tcp",
            host,
            str(port),
            str(timeout),
            check=False,
            timeout=timeout + 10,
        ).stdout.strip()

    def start_controller(self) -> None:
        log = (self.workdir / "controller.log").open("a")
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        self.controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridgeport",
                "--log-format",
                "json",
                "controller",
                "--no-peering",
                "--health-port",
                "0",
                "--metrics-port",
                "0",
            ],
            stdout=log,
            stderr=log,
            text=True,
            env=env,
        )


@contextmanager
def loopback_bridge(node: Netns, port: int, workdir: Path) -> Iterator[None]:
    """Make root's 127.0.0.1:port appear as 127.0.0.1:port inside `node`, via a unix socket."""
    sock = workdir / f"api-{node.name}.sock"
    root = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
    )
    wait_for(sock.exists, what="api socket")
    inner = node.popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        for proc in (inner, root):
            proc.terminate()
            proc.wait(5)


@contextmanager
def kube_world(cp: Any, node_count: int = 2) -> Iterator[KubeWorld]:
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bridgeport-e2e-"))
        client = stack.enter_context(netns("bpec"))
        nodes: list[Node] = []
        subnets = [("192.0.2.1", "192.0.2.2"), ("198.51.100.1", "198.51.100.2")]
        port = int(cp.server.rsplit(":", 1)[1])
        for i in range(node_count):
            name = f"e2e-node-{i + 1}"
            ns = stack.enter_context(netns("bpen"))
            veth(client, f"eth{i + 1}", ns, "eth0")
            node_ip, client_ip = subnets[i]
            ns.run(f"ip addr add {node_ip}/24 dev eth0")
            client.run(f"ip addr add {client_ip}/24 dev eth{i + 1}")
            ns.sysctl("net.ipv4.ip_forward", "1")
            stack.enter_context(loopback_bridge(ns, port, workdir))
            env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "NODE_NAME": name}
            node = Node(name, ns, node_ip, client_ip, workdir, env)
            stack.callback(node.stop_agent)
            nodes.append(node)
            cp.kubectl(
                "apply",
                "-f",
                "-",
                input=yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": name,
                            "labels": {"bridgeport.io/e2e": "yes", "zone": f"zone-{i + 1}"},
                        },
                    }
                ),
            )
            stack.callback(cp.kubectl, "delete", "node", name, "--ignore-not-found", check=False)
        world = KubeWorld(cp, client, nodes, stack, workdir, cp.kubeconfig)
        stack.callback(
            lambda: world.controller and (world.controller.terminate(), world.controller.wait(10))
        )
        world.start_controller()
        for node in nodes:
            node.start_agent()
        yield world


@contextmanager
def kind_world(kubeconfig: Path, node_exec: str) -> Iterator[KubeWorld]:
    """An external cluster whose agents and controller the chart runs (tests/e2e/kind.sh)."""
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bridgeport-e2e-"))
        listing = json.loads(
            subprocess.run(
                [KUBECTL, "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["items"]

        def address(node: dict[str, Any]) -> str:
            return next(
                a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"
            )

        def host(name: str) -> tuple[str, ...]:
            return tuple(node_exec.format(node=name).split())

        control = [
            n
            for n in listing
            if "node-role.kubernetes.io/control-plane" in n["metadata"].get("labels", {})
        ]
        wanted = [w for w in os.environ.get("BRIDGEPORT_E2E_WORKERS", "").split(",") if w]
        workers = sorted(
            (
                n
                for n in listing
                if n not in control and (not wanted or n["metadata"]["name"] in wanted)
            ),
            key=lambda n: n["metadata"]["name"],
        )[:2]
        client_node = control[0] if control else listing[0]
        client = Netns("", host=host(client_node["metadata"]["name"]))
        nodes = []
        for i, n in enumerate(workers):
            name = n["metadata"]["name"]
            subprocess.run(
                [
                    KUBECTL,
                    "--kubeconfig",
                    str(kubeconfig),
                    "label",
                    "node",
                    name,
                    "--overwrite",
                    f"zone=zone-{i + 1}",
                ],
                check=True,
                capture_output=True,
            )
            nodes.append(
                Node(name, Netns("", host=host(name)), address(n), address(client_node), workdir)
            )
        yield KubeWorld(None, client, nodes, stack, workdir, kubeconfig)


@contextmanager
def e2e_world(control_plane: Callable[[], Any]) -> Iterator[KubeWorld]:
    """kind when BRIDGEPORT_E2E_KUBECONFIG is set, else the local control plane."""
    external = os.environ.get("BRIDGEPORT_E2E_KUBECONFIG")
    if external:
        with kind_world(
            Path(external), os.environ.get("BRIDGEPORT_E2E_NODE_EXEC", "docker exec {node}")
        ) as w:
            yield w
    else:
        with kube_world(control_plane()) as w:
            yield w
