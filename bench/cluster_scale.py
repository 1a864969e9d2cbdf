"""Cluster scale through the real API server (not a test): the controller, and one agent.

Controller: a control plane from tests/harness, P PortPublications (half select every node,
the rest one of G node groups) and N NodeStates written through the API as agents write them
(labels, exceptions, digests). Measured: the first full pass and the full relist after a
restart; the time from one NodeState change to the resource's status (a node reports a
resource Failed, then Applied again), and the status writes and Events per change; a spec
change that every node then reports; the controller's RSS; etcd's database size.

Agent: a fresh control plane, A PortPublications of which 1% select the agent's node, one
real agent in a node network namespace: its RSS and the time from start to its first
complete plan applied. `--baseline REF` first runs the agent of a git ref on the same objects
(before and after in one run); `--tracemalloc` then runs each again under tracemalloc and
prints where its memory is (bench/agent_tracemalloc.py).

Run as root: `.venv/bin/python bench/cluster_scale.py [--nodes 1000 --publications 10000
--agent-publications 100000]`; `--smoke` runs a tiny size (bench/smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.e2e.world import loopback_bridge  # noqa: E402
from tests.harness import controlplane  # noqa: E402
from tests.netns import netns  # noqa: E402

from bridgeport.core import summary  # noqa: E402
from bridgeport.core.specs import API_VERSION as API  # noqa: E402
from bridgeport.core.specs import GROUP, VERSION, ResourceRef  # noqa: E402

NS = "scale"
Item = tuple[ResourceRef, str, int]


# -- plumbing ------------------------------------------------------------------------------------


def api_client(cp: Any) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return client.CustomObjectsApi(client.ApiClient(cfg))


def parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 12) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(fn: Callable[[], Any], what: str, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def publication(i: int, selector: dict[str, str] | None, ns: str = NS) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hostPort": 1024 + i % 60000,
        "loopback": "Never",
        "target": {"address": f"10.{60 + i // 65536}.{i // 256 % 256}.{i % 256}", "port": 80},
    }
    if selector:
        spec["nodeSelector"] = {"matchLabels": selector}
    return {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {"name": f"p{i:06d}", "namespace": ns},
        "spec": spec,
    }


def create_all(co: Any, docs: list[dict[str, Any]]) -> list[Item]:
    def one(doc: dict[str, Any]) -> Item:
        obj = co.create_namespaced_custom_object(
            GROUP, VERSION, doc["metadata"]["namespace"], "portpublications", doc
        )
        meta = obj["metadata"]
        return (
            ResourceRef("PortPublication", meta["namespace"], meta["name"]),
            meta["uid"],
            meta["generation"],
        )

    return parallel(one, docs)


def namespace(cp: Any, name: str) -> None:
    cp.kubectl("create", "namespace", name)


@contextmanager
def control_plane(tmp: Path) -> Iterator[Any]:
    try:
        cp = controlplane.start(tmp)
    except controlplane.ControlPlaneError as exc:  # as tests/harness/apiserver.py: once more
        print(f"control plane start failed, retrying once: {exc}", file=sys.stderr)
        cp = controlplane.start(tmp.with_name(tmp.name + "-retry"))
    try:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield cp
    finally:
        cp.stop()


# -- the controller at scale ---------------------------------------------------------------------


def node_status(
    labels: dict[str, str], applied: list[Item], listed: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "agentVersion": "bench",
        "lastSync": "2026-01-01T00:00:00Z",
        "tableDigest": "x",
        "counts": {"Applied": len(applied), "Failed": len(listed or [])},
        "errors": [],
        "labels": labels,
        "resources": listed or [],
        "applied": {
            "count": len(applied),
            "buckets": summary.BUCKETS,
            "digest": summary.encode(summary.digests(applied)),
        },
    }


class Metrics:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def sample(self, name: str) -> float:
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return -1.0
        return sum(
            float(m.group(1))
            for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        )

    def writes(self) -> float:
        return self.sample("bridgeport_controller_status_writes_total") + self.sample(
            "bridgeport_controller_events_total"
        )

    def passes(self) -> float:
        return self.sample("bridgeport_controller_reconcile_duration_seconds_count")


def start_controller(cp: Any, log: Path) -> tuple[subprocess.Popen[bytes], Metrics]:
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridgeport",
            "--log-format",
            "json",
            "--log-level",
            "WARNING",
            "controller",
            "--no-peering",
            "--health-port",
            "0",
            "--metrics-port",
            str(port),
        ],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, Metrics(port)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def etcd_size(cp: Any) -> tuple[float, float]:
    env = dict(
        line.split("=", 1)
        for line in (cp.run_dir / "cluster.env").read_text().splitlines()
        if "=" in line
    )
    port = env.get("ETCD_PORT", "").strip("'\"")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def metric(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) / 2**20 if m else -1.0

    return (
        metric("etcd_mvcc_db_total_size_in_bytes"),
        metric("etcd_mvcc_db_total_size_in_use_in_bytes"),
    )


def controller_scale(args: argparse.Namespace, tmp: Path, rows: list[tuple[str, str]]) -> None:
    n_nodes, n_pubs, groups = args.nodes, args.publications, args.groups
    with control_plane(tmp / "kube-controller") as cp:
        co = api_client(cp)
        namespace(cp, NS)
        started = time.monotonic()
        docs = [
            publication(i, None if i % 2 == 0 else {"group": f"g{i % groups}"})
            for i in range(n_pubs)
        ]
        items = create_all(co, docs)
        create_s = time.monotonic() - started
        everywhere = [it for i, it in enumerate(items) if i % 2 == 0]
        per_group = {
            g: everywhere + [it for i, it in enumerate(items) if i % 2 and i % groups == g]
            for g in range(groups)
        }
        statuses = {
            f"node-{n:04d}": ({"group": f"g{n % groups}"}, per_group[n % groups])
            for n in range(n_nodes)
        }

        def write_node(
            name: str, status: dict[str, Any] | None = None, create: bool = False
        ) -> None:
            labels, applied = statuses[name]
            if create:
                co.create_cluster_custom_object(
                    GROUP,
                    VERSION,
                    "nodestates",
                    {
                        "apiVersion": API,
                        "kind": "NodeState",
                        "metadata": {"name": name},
                        "spec": {"nodeName": name},
                    },
                )
            co.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                "nodestates",
                name,
                {"status": status or node_status(labels, applied)},
                _content_type="application/merge-patch+json",
            )

        started = time.monotonic()
        parallel(lambda name: write_node(name, create=True), list(statuses))
        report_s = time.monotonic() - started
        report_bytes = [len(json.dumps(node_status(*statuses[n]))) for n in list(statuses)[:3]]
        rows.append(
            (
                "setup through the API",
                f"{n_pubs:,} publications in {create_s:.0f}s, {n_nodes:,} NodeStates in "
                f"{report_s:.0f}s ({statistics.mean(report_bytes) / 1024:.1f} KiB each, "
                f"{len(per_group[0]):,} resources applied per node)",
            )
        )

        log = tmp / "controller.log"
        proc, metrics = start_controller(cp, log)
        try:
            started = time.monotonic()
            wait(
                lambda: metrics.sample("bridgeport_controller_status_writes_total") >= n_pubs,
                "every status written",
                timeout=3600,
                interval=0.5,
            )
            first_s = time.monotonic() - started
            stop(proc)
            proc, metrics = start_controller(cp, log)
            started = time.monotonic()
            wait(
                lambda: metrics.passes() >= 1,
                "the first pass after a restart",
                timeout=3600,
                interval=0.2,
            )
            relist_s = time.monotonic() - started
            relist_writes = metrics.writes()
            rows.append(
                (
                    "controller: first full pass / full relist after restart",
                    f"{first_s:.1f}s / {relist_s:.1f}s ({relist_writes:.0f} writes on relist)",
                )
            )

            # One node's report changes: one resource Failed on it, then Applied again.
            latencies, writes = [], []
            rng = random.Random(14)
            for _ in range(args.changes):
                node = rng.choice(list(statuses))
                labels, applied = statuses[node]
                target = rng.choice(everywhere)
                ref, uid, gen = target
                failed = {
                    "kind": ref.kind,
                    "namespace": ref.namespace,
                    "name": ref.name,
                    "uid": uid,
                    "observedGeneration": gen,
                    "state": "Failed",
                    "reason": "NftRejected",
                    "message": "bench",
                }
                for status, ready in (
                    (
                        node_status(labels, [a for a in applied if a != target], [failed]),
                        f"{n_nodes - 1}/{n_nodes}",
                    ),
                    (node_status(labels, applied), f"{n_nodes}/{n_nodes}"),
                ):
                    before = metrics.writes()
                    write_node(node, status)
                    t0 = time.monotonic()
                    wait(
                        lambda r=ref, want=ready: (
                            co.get_namespaced_custom_object(
                                GROUP, VERSION, r.namespace, "portpublications", r.name
                            )
                            .get("status", {})
                            .get("ready")
                            == want
                        ),
                        f"{ref.name} {ready}",
                        timeout=120,
                    )
                    latencies.append(time.monotonic() - t0)
                    time.sleep(1.0)  # let the pass finish before counting its writes
                    writes.append(metrics.writes() - before)
            rows.append(
                (
                    "controller: NodeState change -> resource status",
                    f"p50 {pct(latencies, 50) * 1000:.0f} ms, p99 "
                    f"{pct(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f}"
                    f" ms over {len(latencies)} changes",
                )
            )
            rows.append(
                (
                    "controller: API writes per change (status + Events)",
                    f"mean {statistics.mean(writes):.2f}, max {max(writes):.0f}",
                )
            )

            # A spec change every node then reports (each as its agent would: one write).
            ref, uid, _ = everywhere[0]
            before = metrics.writes()
            obj = co.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ref.namespace,
                "portpublications",
                ref.name,
                {"spec": {"hostPort": 65000}},
                _content_type="application/merge-patch+json",
            )
            gen = obj["metadata"]["generation"]
            for applied in per_group.values():
                applied[applied.index(everywhere[0])] = (ref, uid, gen)
            started = time.monotonic()
            parallel(write_node, list(statuses))
            reported_s = time.monotonic() - started
            t0 = time.monotonic()
            wait(
                lambda: (
                    (
                        s := co.get_namespaced_custom_object(
                            GROUP, VERSION, ref.namespace, "portpublications", ref.name
                        ).get("status", {})
                    ).get("ready")
                    == f"{n_nodes}/{n_nodes}"
                    and s.get("observedGeneration") == gen
                ),
                "the spec change everywhere",
                timeout=600,
            )
            rows.append(
                (
                    "controller: a spec change, then every node reports it",
                    f"{n_nodes:,} reports written in {reported_s:.1f}s; status "
                    f"{n_nodes}/{n_nodes} {time.monotonic() - t0:.2f}s after the last; "
                    f"{metrics.writes() - before:.0f} status writes + Events",
                )
            )
            rows.append(
                (
                    "controller RSS (now / peak)",
                    f"{rss_mib(proc.pid):.0f} / {rss_mib(proc.pid, 'VmHWM'):.0f} MiB",
                )
            )
        finally:
            stop(proc)
        total, in_use = etcd_size(cp)
        rows.append(("etcd database size (total / in use)", f"{total:.0f} / {in_use:.0f} MiB"))


# -- one agent among many publications ------------------------------------------------------------


def checkout(ref: str, tmp: Path) -> Path:
    """The operator/ tree of a git ref (for a before/after comparison in one run)."""
    out = tmp / f"ref-{re.sub(r'[^A-Za-z0-9_.-]', '_', ref)}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "operator"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "operator"


def run_agent(
    cp: Any, workdir: Path, node_name: str, mine: int, pythonpath: Path | None, traced: bool
) -> tuple[float, float, float, str]:
    """One agent from start to its first plan applied: (seconds, RSS MiB, peak RSS MiB,
    tracemalloc's report or "")."""
    workdir.mkdir()
    with ExitStack() as stack:
        node = stack.enter_context(netns("bpcs"))
        node.sysctl("net.ipv4.ip_forward", "1")
        stack.enter_context(loopback_bridge(node, int(cp.server.rsplit(":", 1)[1]), workdir))
        state = workdir / "state.json"
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "NODE_NAME": node_name}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        report = workdir / "tracemalloc.txt"
        runner = [str(ROOT / "bench" / "agent_tracemalloc.py")] if traced else ["-m", "bridgeport"]
        if traced:
            env["TRACEMALLOC_OUT"] = str(report)
        log = (workdir / "agent.log").open("w")
        started = time.monotonic()
        agent = node.popen(
            [
                sys.executable,
                *runner,
                "--log-format",
                "json",
                "--log-level",
                "WARNING",
                "agent",
                "--node-name",
                node_name,
                "--state-file",
                str(state),
                "--resync",
                "3600",
                "--no-proxy",
                "--health-port",
                "0",
                "--metrics-port",
                "0",
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        stack.callback(stop, agent)

        def planned() -> bool:
            """Every publication that selects the node Applied (the agents before the
            list-watch also listed the others, Inactive)."""
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited: {(workdir / 'agent.log').read_text()}")
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            return int(doc["counts"].get("Applied", 0)) >= mine

        wait(planned, f"the agent's plan of {mine} publications", timeout=3600, interval=0.1)
        plan_s = time.monotonic() - started
        rss, peak = rss_mib(agent.pid), rss_mib(agent.pid, "VmHWM")
        text = ""
        if traced:
            Path(f"{report}.go").touch()
            wait(
                lambda: report.exists() and report.stat().st_size > 0,
                "tracemalloc's report",
                timeout=600,
                interval=0.5,
            )
            time.sleep(0.5)
            text = report.read_text()
            print(
                f"\ntracemalloc, {workdir.name} (at its first plan applied):\n{text}",
                file=sys.stderr,
                flush=True,
            )
        node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)
        return plan_s, rss, peak, text


def agent_scale(args: argparse.Namespace, tmp: Path, rows: list[tuple[str, str]]) -> None:
    total = args.agent_publications
    mine = max(1, total * args.agent_select // 100)
    node_name = "scale-agent"
    with control_plane(tmp / "kube-agent") as cp:
        co = api_client(cp)
        namespace(cp, NS)
        started = time.monotonic()
        step = total // mine
        docs = [
            publication(
                i // step if i % step == 0 else i, {"bench-agent": "yes" if i % step == 0 else "no"}
            )
            for i in range(total)
        ]
        for i, doc in enumerate(docs):
            doc["metadata"]["name"] = f"p{i:06d}"
        create_all(co, docs)
        create_s = time.monotonic() - started
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node_name, "labels": {"bench-agent": "yes"}},
                }
            ),
        )
        what = (
            f"agent watching {total:,} publications ({mine:,} select it; created in "
            f"{create_s:.0f}s)"
        )
        variants: list[tuple[str, Path | None]] = []
        if args.baseline:
            variants.append((f"{args.baseline} (before)", checkout(args.baseline, tmp)))
        variants.append(("this tree", None))
        figures = {}
        for i, (label, path) in enumerate(variants):
            plan_s, rss, peak, _ = run_agent(
                cp, tmp / f"agent-{i}", node_name, mine, path, traced=False
            )
            figures[label] = (plan_s, rss)
            rows.append(
                (
                    f"{what}, {label}",
                    f"start -> plan applied {plan_s:.1f}s; RSS {rss:.0f} MiB (peak {peak:.0f})",
                )
            )
        if len(figures) == 2:
            (t0, r0), (t1, r1) = figures.values()
            rows.append(
                (
                    "agent: after / before, in this run",
                    f"start -> plan {t1 / t0:.2f}x, RSS {r1 / r0:.2f}x",
                )
            )
        if args.tracemalloc:
            for i, (label, path) in enumerate(variants):
                _, _, _, text = run_agent(
                    cp, tmp / f"agent-traced-{i}", node_name, mine, path, traced=True
                )
                rows.append((f"agent under tracemalloc, {label}", text.splitlines()[0]))


class Rows(list[tuple[str, str]]):
    """Printed as they come too: a later failure must not lose what was measured."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"  {row[0]}: {row[1]}", file=sys.stderr, flush=True)
        super().append(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--publications", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--changes", type=int, default=25, help="NodeState changes (x2) timed")
    ap.add_argument("--agent-publications", type=int, default=100_000)
    ap.add_argument(
        "--agent-select", type=int, default=1, help="percent of them that select the agent's node"
    )
    ap.add_argument("--skip-agent", action="store_true")
    ap.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the agent of this git ref, first, on the same objects "
        "(e.g. main): before and after in one run",
    )
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="then run each agent again under tracemalloc and print where its "
        "memory is at its first plan (slower; not the figures above)",
    )
    ap.add_argument("--skip-controller", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny size (bench/smoke.py)")
    args = ap.parse_args()
    # SIGTERM (or SIGINT, ignored in background jobs) still stops the control planes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.smoke:
        args.nodes, args.publications, args.groups = 6, 40, 2
        args.changes, args.agent_publications = 2, 300
    controlplane.ensure_built()
    rows = Rows()
    with tempfile.TemporaryDirectory(prefix="bp-cluster-scale-") as tmp:
        if not args.skip_controller:
            controller_scale(args, Path(tmp), rows)
        if not args.skip_agent:
            agent_scale(args, Path(tmp), rows)
    width = max(len(k) for k, _ in rows)
    print(
        f"\ncluster scale: {args.nodes:,} nodes, {args.publications:,} publications; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
