"""Proxy benchmark (not a test): throughput and new connections/s, side by side in one run.

    client netns  c0 198.51.100.2 --veth-- node netns n1 198.51.100.1  (nft DNAT: the ceiling)
                                           node netns n0 192.0.2.1 --veth-- target netns t0
                                                 192.0.2.2: iperf3 -s :5201, httpd :80
Paths: kernel DNAT from the client netns; bridgeport's proxy (its default of one worker per
CPU, and one worker); bridgeport's loopback: Kernel (127.0.0.1 DNATed by our own rendered
ruleset in the node's output path, route_localnet on n0); docker-proxy (when
hack/docker-proxy.sh can build it); socat -b 131072; a plain asyncio-Protocol relay (the
alternative we did not keep); a BPF sockmap relay (a prototype, only when named in --only:
sockmap_relay.py); the target dialled
directly from the node (reference). Rounds interleave the paths; medians are shown.
Proxies listen on 127.0.0.1 in the node netns and their clients run there, as for Docker's
loopback traffic.

usage (root): .venv/bin/python bench/proxy/run.py [--seconds 10] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.netns import TOOLS, Netns, netns, veth, wait_for  # noqa: E402

HERE = Path(__file__).parent
TARGET, NODE_UP, NODE, CLIENT = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
# loopback: Kernel masquerades 127.0.0.1 to NODE_UP and keeps the client's port, so its
# connections share (NODE_UP:port -> TARGET:80) with `direct` and the proxies' upstreams. The
# bench shortens conntrack's TIME_WAIT to 1 s, so the NAT may pick a tuple whose previous
# connection the target still holds (TIME_WAIT, or an orphaned FIN_WAIT2 that answers a SYN
# with RST: wrk's first connection refused, once in a smoke run). Its own target address
# keeps its tuples apart.
TARGET_LO = "192.0.2.3"
IPERF, HTTP = 5201, 80
NAT = f"""
table ip benchnat {{
    chain pre {{ type nat hook prerouting priority -100; policy accept;
        tcp dport 9201 dnat to {TARGET}:{IPERF}
        tcp dport 9080 dnat to {TARGET}:{HTTP}
    }}
}}
"""


@dataclass
class Path_:
    name: str
    ns: Netns  # where the clients run
    host: str
    iperf_port: int
    http_port: int
    pids: tuple[int, ...] = ()  # the proxy's processes, for CPU accounting
    # The sockmap relay's bytes are sent by kernel workqueue threads: their CPU counts too.
    kworkers: bool = False


@dataclass
class World:
    client: Netns
    node: Netns
    target: Netns
    stack: ExitStack
    httpd: Path


def setup(stack: ExitStack, workers: int) -> World:
    client, node, target = (stack.enter_context(netns(p)) for p in ("bbc", "bbn", "bbt"))
    veth(client, "c0", node, "n1")
    veth(node, "n0", target, "t0")
    client.run(f"ip addr add {CLIENT}/24 dev c0")
    client.run(f"ip route add default via {NODE}")
    node.run(f"ip addr add {NODE}/24 dev n1")
    node.run(f"ip addr add {NODE_UP}/24 dev n0")
    target.run(f"ip addr add {TARGET}/24 dev t0")
    target.run(f"ip addr add {TARGET_LO}/24 dev t0")
    target.run(f"ip route add default via {NODE_UP}")
    node.sysctl("net.ipv4.ip_forward", "1")
    for ns in (client, node, target):
        # Listeners use ports below 20000, so no client's ephemeral port can be holding one.
        ns.sysctl("net.ipv4.ip_local_port_range", "20000 65000")
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")
    # ~250k short connections per run would fill conntrack's table with TIME_WAIT entries.
    node.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
    node.run(["nft", "-f", "-"], input=NAT)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bp-bench-")))
    httpd = tmp / "httpd"
    subprocess.run(["gcc", "-O2", "-o", str(httpd), str(HERE.parent / "httpd.c")], check=True)
    w = World(client, node, target, stack, httpd)
    ready(target.popen([str(httpd), str(HTTP), str(workers)]))
    target.popen(["iperf3", "-s", "-p", str(IPERF)])
    wait_for(lambda: listening(target, IPERF), what="iperf3")
    return w


def listening(ns: Netns, port: int) -> bool:
    return bool(ns.run(f"ss -Hltn sport = :{port}").stdout.strip())


def ready(proc: subprocess.Popen[str], word: str = "ready") -> subprocess.Popen[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if word not in line:
        raise RuntimeError(f"did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


@contextmanager
def driver(node: Netns, *options: str) -> Iterator[subprocess.Popen[str]]:
    log = open(os.devnull, "w")  # noqa: SIM115
    proc = node.popen(
        [sys.executable, str(TOOLS / "proxy_driver.py"), *options],
        stdin=subprocess.PIPE,
        stderr=log,
    )
    ready(proc, '"ready"')
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        node.procs.remove(proc)
        log.close()


def command(proc: subprocess.Popen[str], cmd: dict[str, object]) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()
    return dict(json.loads(proc.stdout.readline()))


def proxy_ports(port: int, target_port: int) -> dict[str, object]:
    return {
        "listen": "127.0.0.1",
        "port": port,
        "protocol": "TCP",
        "target": TARGET,
        "target_port": target_port,
        "owner": "bench/p",
    }


@contextmanager
def serving(w: World, name: str) -> Iterator[Path_]:
    """Start what a path needs; yield where its clients connect."""
    node = w.node
    base = 10000 + 100 * PATHS.index(name)  # fresh ports per path: no TIME_WAIT left over
    ip, hp = base + 1, base + 80
    if name == "kernel DNAT":
        yield Path_(name, w.client, NODE, 9201, 9080)
    elif name == "direct":
        yield Path_(name, node, TARGET, IPERF, HTTP)
    elif name.startswith("bridgeport"):
        opts = ("--workers", "1") if "1 worker" in name else ()
        with driver(node, "--uvloop", *opts) as proc:
            statuses = command(proc, {"sync": [proxy_ports(ip, IPERF), proxy_ports(hp, HTTP)]})
            if "failed" in json.dumps(statuses):
                raise RuntimeError(f"proxy did not bind: {statuses}")
            yield Path_(name, node, "127.0.0.1", ip, hp, (proc.pid, *children(proc.pid)))
    elif name == "loopback: Kernel":
        with kernel_loopback(w, ((ip, IPERF), (hp, HTTP))):
            yield Path_(name, node, "127.0.0.1", ip, hp)
    elif name in ("socat -b131072", "docker-proxy"):
        with per_port_processes(w, name, ((ip, IPERF), (hp, HTTP))) as pids:
            yield Path_(name, node, "127.0.0.1", ip, hp, pids)
    else:  # the asyncio Protocol relay we did not keep, or the BPF sockmap prototype
        script = "sockmap_relay.py" if name.startswith("sockmap") else "alt_relay.py"
        proc = ready(
            node.popen(
                [
                    sys.executable,
                    str(HERE / script),
                    *os.environ.get("SOCKMAP_ARGS", "").split(),
                    f"127.0.0.1:{ip}={TARGET}:{IPERF}",
                    f"127.0.0.1:{hp}={TARGET}:{HTTP}",
                ]
            )
        )
        pids = (proc.pid, *children(proc.pid))
        yield Path_(name, node, "127.0.0.1", ip, hp, pids, kworkers=script != "alt_relay.py")
        proc.kill()
        proc.wait()
        node.procs.remove(proc)


@contextmanager
def kernel_loopback(w: World, ports: tuple[tuple[int, int], ...]) -> Iterator[None]:
    """bridgeport's tables for loopback: Kernel publications of `ports`, as the agent renders
    them (n0 stands in for the target's bridge), in the node netns for the duration."""
    import ipaddress

    from bridgeport.core import ruleset
    from bridgeport.core.plan import BridgePlan, Dnat, NodePlan
    from bridgeport.core.specs import Protocol, ResourceRef

    owner = ResourceRef("PortPublication", "bench", "p")
    bridge = BridgePlan(
        "bench",
        "n0",
        (),
        1500,
        ipaddress.IPv4Network("192.0.2.0/24"),
        None,
        masquerade=False,
        internal=False,
        inter_container=True,
        shared=False,
        route_localnet=True,
    )
    dnats = tuple(
        Dnat(
            4,
            ipaddress.IPv4Address("127.0.0.1"),
            Protocol.TCP,
            lp,
            lp,
            ipaddress.IPv4Address(TARGET_LO),
            tp,
            owner,
        )
        for lp, tp in ports
    )
    table = ruleset.render(NodePlan("bench", bridges=(bridge,), dnats=dnats))[0]
    w.node.run(["nft", "-f", "-"], input=table.text())
    w.node.sysctl("net.ipv4.conf.n0.route_localnet", "1")
    try:
        yield
    finally:
        w.node.run("nft delete table ip bridgeport")
        w.node.sysctl("net.ipv4.conf.n0.route_localnet", "0")


@contextmanager
def per_port_processes(
    w: World, name: str, ports: tuple[tuple[int, int], ...]
) -> Iterator[tuple[int, ...]]:
    """One proxy process per (listen port, target port), killed afterwards; yields their pids.

    socat forks per connection (reaped children count in the parent's cutime/cstime);
    docker-proxy runs as dockerd runs it and reports readiness on fd 3, which must exist or
    it closes its own listener."""

    def argv(lp: int, tp: int) -> list[str]:
        if name == "docker-proxy":
            return [
                "bash",
                "-c",
                f"exec {DOCKER_PROXY} -proto tcp -host-ip 127.0.0.1 "
                f"-host-port {lp} -container-ip {TARGET} -container-port {tp} 3>/dev/null",
            ]
        return [
            "socat",
            "-b",
            "131072",
            f"TCP-LISTEN:{lp},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
            f"TCP:{TARGET}:{tp}",
        ]

    procs = [w.node.popen(argv(lp, tp)) for lp, tp in ports]
    wait_for(lambda: all(listening(w.node, lp) for lp, _ in ports), what=name)
    try:
        yield tuple(p.pid for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
            w.node.procs.remove(p)


def children(pid: int) -> tuple[int, ...]:
    """The agent's proxy workers: their CPU is the proxy's CPU."""
    out = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return tuple(int(x) for x in out.split())


def cpu_seconds(pids: tuple[int, ...], kworkers: bool = False) -> float:
    """user + system time of the processes and their reaped children (and, with `kworkers`,
    of every kernel workqueue thread: on a machine running only the bench, mostly ours)."""
    total = 0
    if kworkers:
        pids += tuple(
            int(d.name)
            for d in Path("/proc").iterdir()
            if d.name.isdigit() and _comm(d).startswith("kworker")
        )
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # a kworker that exited
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _comm(proc_dir: Path) -> str:
    try:
        return (proc_dir / "comm").read_text()
    except OSError:
        return ""


def host_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs; /proc/stat minus idle and iowait):
    the proxy, the clients, the target and the kernel's work for all of them."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def iperf(p: Path_, seconds: int) -> float:
    out = p.ns.run(
        ["iperf3", "-c", p.host, "-p", str(p.iperf_port), "-t", str(seconds), "-J"],
        timeout=seconds + 30,
        check=False,
    ).stdout
    result = json.loads(out)
    if "error" in result:
        print(f"  {p.name}: iperf3: {result['error']}", file=sys.stderr)
        return float("nan")
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def wrk(p: Path_, seconds: int) -> tuple[float, int]:
    out = p.ns.run(
        [
            "wrk",
            "-c",
            "50",
            "-d",
            f"{seconds}s",
            "-H",
            "Connection: close",
            f"http://{p.host}:{p.http_port}/",
        ],
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    count = sum(int(x) for x in errors.groups()) if errors else 0
    return rate, count + (int(non2xx.group(1)) if non2xx else 0)


def rss_kib(pids: tuple[int, ...]) -> int:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def rss_for_ports(w: World, count: int) -> tuple[float, float, float]:
    """(MiB of the agent and its workers with one TCP port, MiB added by `count` more,
    seconds to bind them)."""
    with driver(w.node, "--uvloop") as proc:
        command(proc, {"sync": [proxy_ports(11999, HTTP)]})
        time.sleep(0.5)  # the workers have imported what they need
        pids = (proc.pid, *children(proc.pid))
        base = rss_kib(pids)
        ports = [proxy_ports(12000 + i, HTTP) for i in range(count)]
        seconds = float(command(proc, {"sync": ports})["seconds"])  # type: ignore[arg-type]
        time.sleep(0.5)  # and have registered every listener
        added = rss_kib(pids) - base
    return base / 1024, added / 1024, seconds


def _docker_proxy() -> str:
    """hack/docker-proxy.sh builds Docker's proxy from moby's Go module (cached); "" if not.
    BRIDGEPORT_DOCKER_PROXY_BUILD=0 (the smoke run) uses a cached binary only, never builds."""
    proc = subprocess.run(
        ["bash", str(HERE.parent.parent / "hack" / "docker-proxy.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


DOCKER_PROXY = _docker_proxy()
PATHS = [
    "kernel DNAT",
    "direct",
    "bridgeport",
    "bridgeport 1 worker",
    *(["docker-proxy"] if DOCKER_PROXY else []),
    "socat -b131072",
    "asyncio relay",
    "loopback: Kernel",
    "sockmap relay (prototype)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="runs per path; medians are shown")
    # The prototype runs only when named: it needs BPF (see bench/proxy/README.md).
    default = [p for p in PATHS if "prototype" not in p]
    ap.add_argument("--only", nargs="*", default=default, choices=PATHS)
    ap.add_argument("--httpd-workers", type=int, default=1)
    ap.add_argument("--ports", type=int, default=1000, help="proxied ports for the RSS row")
    a = ap.parse_args()
    if os.geteuid() != 0 or not all(map(shutil.which, ("iperf3", "wrk", "socat", "gcc", "nft"))):
        sys.exit("needs root, iperf3, wrk, socat, gcc and nft")
    paths = ["kernel DNAT", *[p for p in a.only if p != "kernel DNAT"]]
    runs: dict[str, list[Run]] = {p: [] for p in paths}
    load = [os.getloadavg()[0]]
    with ExitStack() as stack:
        w = setup(stack, a.httpd_workers)
        # Rounds interleave the paths, and ratios are taken within a round, so drift in the
        # machine's load (it is shared) hits the path and its kernel reference alike.
        for r in range(a.rounds):
            for name in paths:
                with serving(w, name) as p:
                    cpu0 = cpu_seconds(p.pids, p.kworkers)
                    gbit = iperf(p, a.seconds)
                    cpu1 = cpu_seconds(p.pids, p.kworkers)
                    time.sleep(1)
                    host0 = host_busy()
                    rate, errors = wrk(p, a.seconds)
                    host = host_busy() - host0
                    cpu2 = cpu_seconds(p.pids, p.kworkers)
                run = Run(
                    gbit,
                    rate,
                    errors,
                    (cpu1 - cpu0) / a.seconds,
                    (cpu2 - cpu1) / a.seconds,
                    host / (rate * a.seconds) * 1e6 if rate else float("nan"),
                )
                runs[name].append(run)
                print(f"  round {r + 1} {name}: {run}", file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
        base_mib, added_mib, bind_seconds = rss_for_ports(w, a.ports)
    table(runs)
    print(
        f"load average (1 min) at the start and after each round: "
        f"{' '.join(f'{x:.1f}' for x in load)}"
    )
    print(
        f"bridgeport: agent + workers {base_mib:.1f} MiB RSS with one TCP port; {a.ports:,} more "
        f"add {added_mib:.1f} MiB, bound in {bind_seconds:.2f}s"
    )
    print(
        f"(medians of {a.rounds} rounds; x kernel = median of per-round ratios; cpu = the "
        f"proxy's processes' CPU, 100% = one core (the sockmap relay's: with every kworker "
        f"thread's); host us/conn = the machine's busy CPU per wrk connection, everything "
        f"included; iperf3 -t {a.seconds}; wrk -c 50 "
        f"-d {a.seconds}s -H 'Connection: close'; {os.cpu_count()} CPUs, "
        f"kernel {os.uname().release})"
    )


def table(runs: dict[str, list[Run]]) -> None:
    """Medians; ratios are medians of per-round ratios, against kernel DNAT and, when it ran,
    docker-proxy (issue 14's targets: >= 1.0x its throughput, >= 1.5x its conn/s)."""
    kernel, docker = runs["kernel DNAT"], runs.get("docker-proxy")

    def med(rs: list[Run], f: Callable[[Run], float]) -> float:
        return statistics.median(f(x) for x in rs)

    def ratio(rs: list[Run], ref: list[Run] | None, f: Callable[[Run], float]) -> str:
        if ref is None:
            return ""
        return f"{statistics.median(f(x) / f(r) for x, r in zip(rs, ref, strict=True)):.2f}"

    def gbit(x: Run) -> float:
        return x.gbit

    def rate(x: Run) -> float:
        return x.rate

    width = max(22, *map(len, runs))
    print(
        f"\n{'path':{width}} {'Gbit/s':>7} {'x kernel':>9} {'x docker':>9} {'cpu':>5} {'conn/s':>8}"
        f" {'x kernel':>9} {'x docker':>9} {'cpu':>5} {'errors':>6} {'host us/conn':>12}"
    )
    for name, rs in runs.items():
        tput = f"{med(rs, gbit):7.1f} {ratio(rs, kernel, gbit):>9} {ratio(rs, docker, gbit):>9}"
        conns = f"{med(rs, rate):8.0f} {ratio(rs, kernel, rate):>9} {ratio(rs, docker, rate):>9}"
        print(
            f"{name:{width}} {tput} {med(rs, lambda x: x.cpu_iperf):5.0%} {conns}"
            f" {med(rs, lambda x: x.cpu_wrk):5.0%} {sum(x.errors for x in rs):6d}"
            f" {med(rs, lambda x: x.host_us):12.0f}"
        )


@dataclass
class Run:
    gbit: float
    rate: float
    errors: int
    cpu_iperf: float
    cpu_wrk: float
    host_us: float  # the whole machine's busy CPU per wrk connection, microseconds

    def __str__(self) -> str:
        return (
            f"{self.gbit:.1f} Gbit/s (cpu {self.cpu_iperf:.0%}), {self.rate:.0f} conn/s "
            f"(cpu {self.cpu_wrk:.0%}, {self.errors} errors, host {self.host_us:.0f} us/conn)"
        )


if __name__ == "__main__":
    main()
