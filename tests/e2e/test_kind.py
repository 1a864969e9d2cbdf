"""What only a real kubelet can show: the chart's pods on a kind cluster (tests/e2e/kind.sh).

Scenarios (skipped without BRIDGEPORT_E2E_KUBECONFIG, i.e. outside tests/e2e/kind.sh):
- the agent runs with exactly the chart's privileges: not privileged, capabilities NET_ADMIN and
  NET_BIND_SERVICE only (the running process's sets, read on the node), read-only root
- a `helm upgrade` that rolls the agent DaemonSet keeps an established TCP connection through a
  published port, and a new connection works at once (5 s timeout) after each new pod is Ready
- deleting an agent pod loses no kernel-path traffic (every request answered meanwhile)
- killing the controller pod does not stop status from converging
- 10,000 PortPublications: the agent and its proxy workers stay within the chart's memory limit
  (their summed RSS and peak reported)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import API
from tests.e2e.world import KubeWorld, e2e_world
from tests.netns import wait_for

pytestmark = [
    pytest.mark.apiserver,
    pytest.mark.docker,
    pytest.mark.skipif(
        not os.environ.get("BRIDGEPORT_E2E_KUBECONFIG"),
        reason="needs a kind cluster (tests/e2e/kind.sh or make e2e-kind)",
    ),
]

NAMESPACE = os.environ.get("BRIDGEPORT_E2E_NAMESPACE", "bridgeport")
RELEASE = os.environ.get("BRIDGEPORT_E2E_RELEASE", "bridgeport")
AGENT = {"app.kubernetes.io/component": "agent"}
NET_BIND_SERVICE, NET_ADMIN = 10, 12  # capability numbers (linux/capability.h)
MANY_NS = "bridgeport-e2e-many"
REPORT = Path(os.environ.get("BRIDGEPORT_E2E_REPORT", "/tmp/bridgeport-kind-report.txt"))


def publication(name: str, host_port: int, port: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostPort": host_port,
            "network": "kind",
            "target": {"address": "10.89.0.2", "port": port},
            **spec,
        },
    }


@pytest.fixture(scope="module")
def w() -> Iterator[KubeWorld]:
    with e2e_world(lambda: None) as world:
        world.apply(
            {
                "apiVersion": API,
                "kind": "BridgeNetwork",
                "metadata": {"name": "kind"},
                "spec": {"bridge": "bp-kind", "subnet": "10.89.0.0/24", "subnet6": "fd00:89::/64"},
            }
        )
        for node in world.nodes:
            box = world.container(node, "bp-kind", "10.89.0.2/24", "10.89.0.1")
            world.serve(box, "--tcp", "80")
            echo = world.container(node, "bp-kind", "10.89.0.3/24", "10.89.0.1")
            world.serve(echo, "--tcp", "90", "--echo")
        try:
            yield world
        finally:
            world.kubectl("delete", "pp", "--all", "-n", "default", "--wait=true", check=False)
            world.kubectl("delete", "bn", "kind", "--ignore-not-found", "--wait=true", check=False)


def agent_pods(w: KubeWorld) -> list[dict[str, Any]]:
    sel = ",".join(f"{k}={v}" for k, v in AGENT.items())
    return list(
        json.loads(w.kubectl("get", "pods", "-n", NAMESPACE, "-l", sel, "-o", "json"))["items"]
    )


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def ready(
    w: KubeWorld, name: str, generation: int | None = None, timeout: float = 60
) -> dict[str, Any]:
    obj: dict[str, Any] = {}

    def check() -> bool:
        nonlocal obj
        obj = w.get("pp", name, "default")
        status = obj.get("status", {})
        return bool(
            status.get("ready") == w.expected()
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and (generation is None or obj["metadata"]["generation"] == generation)
        )

    wait_for(check, timeout=timeout, what=f"pp {name} ready")
    return obj


def on_node(node: str, *cmd: str, timeout: float = 30) -> str:
    return subprocess.run(
        ["docker", "exec", node, *cmd], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def agent_pid(node: str) -> int:
    """The agent's main process on `node` (the python running `bridgeport ... agent`)."""
    for line in on_node(node, "ps", "-eo", "pid=,args=").splitlines():
        pid, _, args = line.strip().partition(" ")
        if "bridgeport" in args and " agent" in args and "python" in args:
            return int(pid)
    raise AssertionError(f"no agent process on {node}")


def agent_memory(node: str) -> tuple[int, int, int]:
    """RSS and peak RSS (VmHWM) in bytes, summed over the agent and its proxy workers (spawned
    interpreters, so little is shared), and the process count: the container's memory limit
    charges them all, not the main process alone."""
    main = agent_pid(node)
    pids = [main]
    for line in on_node(node, "ps", "-eo", "pid=,ppid=").splitlines():
        pid, ppid = (int(x) for x in line.split())
        if ppid == main:
            pids.append(pid)
    rss = hwm = 0
    for pid in pids:
        fields = dict(
            line.split(":", 1) for line in on_node(node, "cat", f"/proc/{pid}/status").splitlines()
        )
        rss += int(fields["VmRSS"].split()[0]) * 1024
        hwm += int(fields["VmHWM"].split()[0]) * 1024
    return rss, hwm, len(pids)


def test_agent_runs_with_exactly_the_charts_privileges(w: KubeWorld) -> None:
    """Not privileged; CapEff = CapPrm = CapBnd = {NET_ADMIN, NET_BIND_SERVICE}; read-only /."""
    pods = agent_pods(w)
    assert pods and all(is_ready(p) for p in pods)
    for pod in pods:
        ctx = pod["spec"]["containers"][0]["securityContext"]
        assert not ctx.get("privileged", False)
        assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
        assert ctx["readOnlyRootFilesystem"] is True
    node = w.nodes[0].name
    status = dict(
        line.split(":\t", 1)
        for line in on_node(node, "cat", f"/proc/{agent_pid(node)}/status").splitlines()
        if ":\t" in line
    )
    want = (1 << NET_ADMIN) | (1 << NET_BIND_SERVICE)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == want, (field, status[field])
    assert status["NoNewPrivs"].strip() == "1"
    pod = next(p for p in pods if p["spec"]["nodeName"] == node)["metadata"]["name"]
    touch = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            str(w.kubeconfig),
            "exec",
            "-n",
            NAMESPACE,
            pod,
            "--",
            "python3",
            "-c",
            "open('/x', 'w')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_subnet6_is_applied_on_dual_stack_nodes(w: KubeWorld) -> None:
    """kind-config.yaml is dual stack: the bridge gets its IPv6 gateway, reason Programmed."""
    for node in w.nodes:
        state = w.get("nodestates", node.name)
        # Plainly Applied outcomes are summarised, not listed; an Applied/IPv6Disabled (or any
        # problem) would be listed (tests/controller/test_nodestate.py).
        listed = [r for r in state["status"]["resources"] if r["name"] == "kind"]
        assert not listed, listed
        assert state["status"]["applied"]["count"] >= 1, state["status"]
        assert "fd00:89::1/64" in on_node(node.name, "ip", "-6", "addr", "show", "bp-kind")


class Held:
    """One TCP connection held open from the client node through a published port."""

    def __init__(self, client: str, host: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [
                "docker",
                "exec",
                "-i",
                client,
                "python3",
                "/bridgeport-tools/peer_client.py",
                "hold",
                host,
                str(port),
                "5",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def echo(self, text: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(15)


def test_helm_upgrade_rolls_agents_without_breaking_connections(w: KubeWorld) -> None:
    """Rolling the agents: the held connection keeps echoing; after each new pod is Ready a new
    connection is answered on the first try (5 s timeout)."""
    w.apply(publication("held", 8090, 90, target={"address": "10.89.0.3", "port": 90}))
    w.apply(publication("fresh", 8091, 80))
    ready(w, "held")
    ready(w, "fresh")
    client = w.client.host[-1]
    held = [Held(client, node.address, 8090) for node in w.nodes]
    try:
        assert [h.echo("before") for h in held] == ["before"] * len(held)
        old = {p["metadata"]["uid"] for p in agent_pods(w)}
        helm = os.environ["BRIDGEPORT_E2E_HELM"]
        subprocess.run(
            [
                helm,
                "upgrade",
                RELEASE,
                os.environ["BRIDGEPORT_E2E_CHART"],
                "--kubeconfig",
                str(w.kubeconfig),
                "-n",
                NAMESPACE,
                "--reuse-values",
                "--set-string",
                f"agent.podAnnotations.restartedAt={time.time()}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        checked: set[str] = set()
        deadline = time.monotonic() + 300
        while len(checked) < len(old) and time.monotonic() < deadline:
            for pod in agent_pods(w):
                uid = pod["metadata"]["uid"]
                if uid in old or uid in checked or not is_ready(pod):
                    continue
                node = pod["spec"].get("nodeName", "")
                target = next((n for n in w.nodes if n.name == node), None)
                if target is not None:  # a worker: a new connection through its port
                    assert (
                        w.ask(target.address, 8091, timeout=5) == f"{target.client_address} 80"
                    ), f"new connection after {node} Ready"
                assert [h.echo(f"during {node}") for h in held] == [f"during {node}"] * len(held)
                checked.add(uid)
            time.sleep(0.5)
        assert len(checked) == len(old), "rollout did not finish in 300 s"
        assert [h.echo("after") for h in held] == ["after"] * len(held)
    finally:
        for h in held:
            h.close()


def test_deleting_an_agent_pod_loses_no_kernel_path_traffic(w: KubeWorld) -> None:
    """Requests through the DNAT path keep being answered while the agent pod is replaced."""
    w.apply(publication("steady", 8092, 80))
    ready(w, "steady")
    node = w.nodes[0]
    pod = next(p for p in agent_pods(w) if p["spec"]["nodeName"] == node.name)
    w.kubectl("delete", "pod", "-n", NAMESPACE, pod["metadata"]["name"], "--wait=false")
    answers, replaced = [], False
    for _ in range(400):  # bounded: until the replacement is Ready, then 5 more requests
        answers.append(w.ask(node.address, 8092, timeout=2))
        fresh = [p for p in agent_pods(w) if p["spec"].get("nodeName") == node.name]
        if fresh and fresh[0]["metadata"]["uid"] != pod["metadata"]["uid"] and is_ready(fresh[0]):
            replaced = True
            answers += [w.ask(node.address, 8092, timeout=2) for _ in range(5)]
            break
    assert replaced, "the agent pod was not replaced"
    lost = [a for a in answers if a != f"{node.client_address} 80"]
    assert not lost, f"{len(lost)} of {len(answers)} requests failed: {lost[:3]}"


def test_status_converges_after_the_controller_pod_is_killed(w: KubeWorld) -> None:
    """Force-delete the controller pod, change a spec: the status follows the new generation."""
    w.apply(publication("ctl", 8093, 80))
    ready(w, "ctl")
    w.kubectl(
        "delete",
        "pod",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=controller",
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    w.apply(publication("ctl", 8093, 81))
    obj = ready(w, "ctl", generation=2, timeout=180)
    assert obj["status"]["ready"] == w.expected()


@pytest.mark.timeout(1800)
def test_agent_memory_with_10000_publications(w: KubeWorld) -> None:
    """10,000 PortPublications on one node: the agent programs them all, is not restarted, and
    the summed peak RSS of the agent and its proxy workers stays under the chart's memory limit.
    The figures are printed and written to REPORT."""
    count = int(os.environ.get("BRIDGEPORT_E2E_MANY", "10000"))
    node = w.nodes[0]
    pod = next(p for p in agent_pods(w) if p["spec"]["nodeName"] == node.name)
    limit = pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * {"Mi": 2**20, "Gi": 2**30}[limit[-2:]]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    docs = [
        publication(
            f"many-{i}",
            20000 + i,
            80,
            nodeSelector={"matchLabels": {"kubernetes.io/hostname": node.name}},
        )
        for i in range(count)
    ]
    # In a namespace of their own: deleting it removes them in the background (10,000 single
    # DELETEs, or a DeleteCollection, take minutes at this machine's load).
    for doc in docs:
        doc["metadata"]["namespace"] = MANY_NS
    w.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MANY_NS}})
    started = time.monotonic()
    # Created by 8 kubectl processes at once (each POST waits on etcd: latency-bound).
    creators = []
    for i in range(8):
        proc = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(w.kubeconfig), "create", "-f", "-", "-o", "name"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        creators.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs[i::8]}))
        proc.stdin.close()
    try:
        for proc in creators:
            assert proc.wait(1200) == 0, proc.stderr.read() if proc.stderr else ""
        restarted: dict[str, Any] = {}

        def programmed() -> bool:
            now = next(p for p in agent_pods(w) if p["spec"].get("nodeName") == node.name)
            state = now["status"]["containerStatuses"][0]
            if state["restartCount"] != restarts:  # stop waiting: it failed (e.g. OOMKilled)
                restarted.update(state.get("lastState", {}), count=state["restartCount"])
                return True
            out = on_node(
                node.name, "nft", "-j", "list", "map", "ip", "bridgeport", "pub_any", timeout=60
            )
            elems = next(
                (o["map"].get("elem", []) for o in json.loads(out)["nftables"] if "map" in o), []
            )
            return len(elems) >= count

        wait_for(
            programmed,
            timeout=1200,
            interval=10,
            what=f"{count} publications programmed on {node.name}",
        )
        assert not restarted, (
            f"agent on {node.name} restarted while programming {count} publications: {restarted}"
        )
        took = time.monotonic() - started
        rss, hwm, procs = agent_memory(node.name)
        now = next(p for p in agent_pods(w) if p["spec"]["nodeName"] == node.name)
        line = (
            f"agent with {count} PortPublications on {node.name}: RSS {rss / 2**20:.0f} MiB,"
            f" peak {hwm / 2**20:.0f} MiB ({procs} processes: the agent and its proxy workers),"
            f" limit {limit}; programmed in {took:.0f} s"
        )
        print(line)
        with REPORT.open("a") as f:
            f.write(line + "\n")
        assert now["metadata"]["uid"] == pod["metadata"]["uid"]
        assert now["status"]["containerStatuses"][0]["restartCount"] == restarts
        assert hwm < limit_bytes
    finally:
        w.kubectl("delete", "namespace", MANY_NS, "--wait=false", check=False)
