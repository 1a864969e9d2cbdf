"""The `bridgeport` command: agent, plan, cleanup."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bridgeport import __version__
from bridgeport.core.plan import Fwmark, NodePlan
from bridgeport.core.report import Report
from bridgeport.core.ruleset import Table
from bridgeport.core.source import Source
from bridgeport.core.specs import hostport


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def _port_range(text: str) -> tuple[int, int]:
    """'32768-60999' -> (32768, 60999)."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH") from None
    if not sep or not 1 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port range within 1-65535")
    return first, last


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ssh, etcd, the API server, kubelet (healthz, API, read-only), kube-proxy (metrics, healthz),
# controller-manager, scheduler. README "Security" says why each is here.
DEFAULT_RESERVED = "22,2379-2381,6443,10248-10250,10255-10257,10259"


def _ports(text: str) -> frozenset[int]:
    """'22,2379-2380' -> {22, 2379, 2380}; '' -> none."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a port or a range") from None
        if not 1 <= first <= last <= 65535:
            raise argparse.ArgumentTypeError(f"{part!r} is not a port range within 1-65535")
        out.update(range(first, last + 1))
    return frozenset(out)


def _fwmark(text: str) -> Fwmark:
    try:
        return Fwmark.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _seconds(zero_allowed: bool) -> Callable[[str], float]:
    """An argparse type: seconds, > 0 (or >= 0 where 0 means never)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{text} is not a finite number of seconds {'>= 0' if zero_allowed else '> 0'}"
            )
        return value

    return parse


ACCEPT_FWMARK_HELP = (
    "packets with this mark (MARK[/MASK]) pass bridgeport's forward drops: "
    "set it in your own nftables chain at a priority below 0"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridgeport", description=__doc__)
    p.add_argument("--version", action="version", version=f"bridgeport {__version__}")
    p.add_argument("--log-level", default=os.environ.get("BRIDGEPORT_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--library-log-level",
        metavar="LEVEL",
        default=os.environ.get("BRIDGEPORT_LIBRARY_LOG_LEVEL", "WARNING"),
        help="level for the libraries' own logs: pyroute2 (at DEBUG it prints every "
        "netlink message), kubernetes, urllib3, asyncio, kopf's per-object lines",
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="converge this node to the resources (the DaemonSet process)")
    a.add_argument(
        "--source",
        default="kube",
        help="kube (default) or dir:PATH (standalone: a directory of manifests)",
    )
    a.add_argument("--node-name", default=os.environ.get("NODE_NAME"))
    a.add_argument("--node-label", action="append", type=_label, default=[], metavar="K=V")
    a.add_argument("--state-file", type=Path)
    a.add_argument("--resync", type=float, default=30.0, metavar="SECONDS")
    a.add_argument(
        "--cleanup",
        action="store_true",
        help="remove every table and bridge bridgeport owns on this node, then exit",
    )
    a.add_argument(
        "--no-proxy",
        action="store_true",
        help="never run the userland fallback proxy (whatever spec.loopback says); "
        "DNATed ports are still claimed with bound sockets",
    )
    a.add_argument(
        "--reserved-ports",
        type=_ports,
        metavar="LIST",
        default=_ports(os.environ.get("BRIDGEPORT_RESERVED_PORTS", DEFAULT_RESERVED)),
        help="host ports no publication may take, e.g. 22,2379-2380 (default: "
        f"{DEFAULT_RESERVED}; the agent's own --health-port and --metrics-port "
        "are always added; '' for none)",
    )
    a.add_argument(
        "--manage-sysctls",
        action="store_true",
        default=os.environ.get("BRIDGEPORT_MANAGE_SYSCTLS", "").lower() == "true",
        help="turn IPv4/IPv6 forwarding on (Docker does); otherwise only read them",
    )
    a.add_argument(
        "--udp-idle-timeout",
        type=_seconds(zero_allowed=False),
        default=90.0,
        metavar="SECONDS",
        help="how long a proxied UDP flow lives without traffic",
    )
    a.add_argument(
        "--proxy-max-connections",
        type=_count(1),
        default=4096,
        metavar="N",
        help="live proxied TCP connections per listener, across all workers; a client "
        "past it is reset",
    )
    a.add_argument(
        "--proxy-connect-timeout",
        type=_seconds(zero_allowed=False),
        default=5.0,
        metavar="SECONDS",
        help="how long the proxy's connect to the target may take before the client is reset",
    )
    a.add_argument(
        "--proxy-max-udp-flows",
        type=_count(1),
        default=4096,
        metavar="N",
        help="proxied UDP flows per listener; datagrams of a new client past it are dropped",
    )
    a.add_argument(
        "--proxy-max-connections-per-source",
        type=_count(0),
        default=1024,
        metavar="N",
        help="live proxied TCP connections per listener and client address (0: no limit)",
    )
    a.add_argument(
        "--proxy-tcp-idle-timeout",
        type=_seconds(zero_allowed=True),
        default=3600.0,
        metavar="SECONDS",
        help="reset a proxied TCP connection idle this long (0: never)",
    )
    a.add_argument(
        "--proxy-max-udp-flows-per-source",
        type=_count(0),
        default=1024,
        metavar="N",
        help="proxied UDP flows per listener and client address; beyond it the "
        "client's oldest flow is closed (0: no limit)",
    )
    a.add_argument(
        "--proxy-workers",
        type=int,
        metavar="N",
        default=int(os.environ.get("BRIDGEPORT_PROXY_WORKERS", "0")),
        help="processes relaying proxied TCP and UDP (0: one per CPU, at most 4)",
    )
    a.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("HEALTH_PORT", "9103")),
        help="liveness endpoint /healthz (kube source; 0 disables)",
    )
    a.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("METRICS_PORT", "9102")),
        help="Prometheus /metrics (0 disables)",
    )
    a.add_argument(
        "--accept-fwmark",
        type=_fwmark,
        metavar="MARK[/MASK]",
        default=os.environ.get("BRIDGEPORT_ACCEPT_FWMARK") or None,
        help=ACCEPT_FWMARK_HELP,
    )
    a.add_argument(
        "--no-publication-counters",
        action="store_true",
        default=os.environ.get("BRIDGEPORT_PUBLICATION_COUNTERS", "").lower() == "false",
        help="no per-publication packet/byte counters in the kernel path",
    )
    a.add_argument(
        "--doctor-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="run the `doctor` checks on a resync at most this often (0: never); "
        "findings go to /metrics and the NodeState's NodeHealthy condition",
    )

    c = sub.add_parser("controller", help="aggregate NodeStates into each resource's .status")
    c.add_argument("--health-port", type=int, default=int(os.environ.get("HEALTH_PORT", "8080")))
    c.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "9102")))
    c.add_argument(
        "--no-peering",
        action="store_true",
        help="run without kopf peering (a single replica, e.g. in tests)",
    )

    d = sub.add_parser(
        "doctor",
        help="what on this node stands between a publication and its "
        "traffic (exit 0 fine, 1 warnings, 2 errors)",
    )
    d.add_argument("--format", choices=("human", "json"), default="human")

    t = sub.add_parser(
        "trace",
        help="send one traced probe through this node's ruleset and "
        "print every chain, rule and verdict it meets (exit 0 delivered, "
        "1 dropped, 2 no verdict)",
    )
    t.add_argument("client", type=_address, help="the client address the probe comes from")
    t.add_argument("target", help="HOST:PORT/PROTO, e.g. 192.0.2.1:8080/tcp")

    st = sub.add_parser(
        "state",
        help="print a standalone agent's state file with every "
        "entry (folded from its journal); exit 1 when unreadable",
    )
    st.add_argument("state_file", type=Path, metavar="STATE_FILE")

    pl = sub.add_parser("plan", help="print what the agent would program (no root, no kernel)")
    pl.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        type=Path,
        required=True,
        help="manifest file or directory (repeatable)",
    )
    pl.add_argument("--node-name", default="node")
    pl.add_argument("--node-ip", action="append", type=_address, default=[])
    pl.add_argument("--node-label", action="append", type=_label, default=[], metavar="K=V")
    pl.add_argument(
        "--no-ip-forward", action="store_true", help="plan for a node with IP forwarding off"
    )
    pl.add_argument("--format", choices=("nft", "json"), default="nft")
    pl.add_argument("--accept-fwmark", type=_fwmark, metavar="MARK[/MASK]", help=ACCEPT_FWMARK_HELP)
    pl.add_argument(
        "--manage-sysctls",
        action="store_true",
        help="plan for an agent that manages sysctls (loopback: Kernel needs it)",
    )
    pl.add_argument(
        "--port-range",
        type=_port_range,
        default=(32768, 60999),
        metavar="LOW-HIGH",
        help="the node's net.ipv4.ip_local_port_range, where publications without "
        "a hostPort get theirs (default 32768-60999)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bridgeport import log

    log.setup(
        args.log_level,
        None if args.log_format == "auto" else args.log_format == "json",
        library_level=args.library_log_level,
    )
    if args.command == "plan":
        return cmd_plan(args)
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "state":
        return cmd_state(args)
    if args.command == "trace":
        return cmd_trace(args)
    if args.command == "controller":
        return cmd_controller(args)
    return cmd_agent(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from bridgeport.adapters.dirsource import SUFFIXES, load_files
    from bridgeport.core import planner, ruleset
    from bridgeport.core.plan import NodeFacts, State

    paths: list[Path] = []
    for f in args.files:
        paths += sorted(p for p in f.iterdir() if p.suffix in SUFFIXES) if f.is_dir() else [f]
    resources, errors = load_files(paths)
    facts = NodeFacts(
        name=args.node_name,
        labels=dict(args.node_label),
        addresses=frozenset(args.node_ip),
        ipv4_forwarding=not args.no_ip_forward,
        ipv6_forwarding=not args.no_ip_forward,
        accept_mark=args.accept_fwmark,
        route_localnet=args.manage_sysctls,
        port_range=args.port_range,
    )
    plan = planner.plan(resources, facts)
    tables = ruleset.render(plan)
    if args.format == "json":
        print(json.dumps(_plan_json(plan, tables, ruleset.digest(tables)), indent=2))
    else:
        for o in plan.outcomes:
            print(f"# {o.ref}: {o.state.value} ({o.reason}) {o.message}")
            if o.assigned is not None:
                first, last = o.assigned
                print(f"#   assigned host port(s) {first if first == last else f'{first}-{last}'}")
        for p in plan.proxies:
            print(
                f"# proxy {hostport(p.listen)}:{p.port}/{p.protocol.value} -> "
                f"{hostport(p.target)}:{p.target_port} ({p.why}, {p.owner})"
            )
        for c in plan.claims:
            print(f"# claim {hostport(c.listen)}:{c.port}/{c.protocol.value} ({c.owner})")
        print("".join(t.text() for t in tables), end="")
    problems = [
        *errors,
        *plan.errors,
        *(o.message for o in plan.outcomes if o.state is State.INVALID),
    ]
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    return 1 if problems else 0


def cmd_state(args: argparse.Namespace) -> int:
    from bridgeport.adapters import statefile

    state = statefile.load(args.state_file)
    if state is None:
        print(f"error: {args.state_file}: no readable state file", file=sys.stderr)
        return 1
    print(json.dumps(state, indent=2, sort_keys=True))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from bridgeport.adapters.nodeview import gather
    from bridgeport.core.doctor import EXIT_CODES, SEVERITIES, diagnose, worst

    try:
        findings = diagnose(gather())
    except (OSError, RuntimeError) as exc:
        print(f"error: cannot inspect this node: {exc}", file=sys.stderr)
        return 3
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    severity = worst(findings)
    if args.format == "json":
        print(
            json.dumps(
                {"severity": severity, "findings": [f.as_dict() for f in findings]}, indent=2
            )
        )
        return EXIT_CODES[severity]
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    print(
        f"bridgeport doctor: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} note(s)"
    )
    for f in findings:
        print(f"{f.severity.upper():8}{f.check:13}{f.message}")
        if f.rule:
            print(f"{'':21}rule: {f.rule}")
        if f.fix:
            print(f"{'':21}fix:  {f.fix}")
    return EXIT_CODES[severity]


def cmd_trace(args: argparse.Namespace) -> int:
    import random

    from bridgeport.adapters.tracer import trace
    from bridgeport.core.trace import Probe, parse_events, parse_target

    try:
        host, port, protocol = parse_target(args.target)
        if args.client.version != 4:
            raise ValueError(f"{args.client}: trace sends IPv4 probes only")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    probe = Probe(args.client, host, port, protocol, random.randint(40000, 59000))
    try:
        events = trace(probe)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"error: cannot trace on this node (root and nft needed): {exc}", file=sys.stderr)
        return 3
    result = parse_events(events)
    print(f"probe {protocol.upper()} {args.client}:{probe.sport} -> {host}:{port}")
    print("\n".join(result.lines()))
    return {"delivered": 0, "dropped": 1}.get(result.verdict, 2)


def _plan_json(plan: NodePlan, tables: Sequence[Table], digest: str) -> dict[str, Any]:
    return {
        "node": plan.node,
        "digest": digest,
        "outcomes": [
            {
                "kind": o.ref.kind,
                "namespace": o.ref.namespace,
                "name": o.ref.name,
                "state": o.state.value,
                "reason": o.reason,
                "message": o.message,
                **({"assignedPorts": list(o.assigned)} if o.assigned else {}),
            }
            for o in plan.outcomes
        ],
        "bridges": [
            {
                "name": b.name,
                "network": b.network,
                "mtu": b.mtu,
                "addresses": [str(a) for a in b.addresses],
            }
            for b in plan.bridges
        ],
        "dnats": [
            {
                "family": f"IPv{d.family}",
                "hostIP": str(d.host_ip or ""),
                "protocol": d.protocol.value,
                "ports": [d.port, d.port_end],
                "target": f"{hostport(d.target)}:{d.target_port}",
                "owner": d.owner.key,
                "proxyFrom": d.proxy_from,
            }
            for d in plan.dnats
        ],
        "proxies": [
            {
                "listen": str(p.listen),
                "port": p.port,
                "protocol": p.protocol.value,
                "target": f"{hostport(p.target)}:{p.target_port}",
                "owner": p.owner.key,
                "why": p.why,
                "holds": p.holds,
            }
            for p in plan.proxies
        ],
        "claims": [
            {
                "listen": str(c.listen),
                "port": c.port,
                "protocol": c.protocol.value,
                "owner": c.owner.key,
            }
            for c in plan.claims
        ],
        # gatewayMode routed: container ports open to direct routing (no host port).
        "routed": [
            {
                "target": str(r.target),
                "protocol": r.protocol.value,
                "port": r.port,
                "portEnd": r.port_end,
                "owner": r.owner.key,
            }
            for r in plan.routed
        ],
        "nft": {t.family: t.text() for t in tables},
        "errors": list(plan.errors),
    }


def cmd_agent(args: argparse.Namespace) -> int:
    import structlog

    from bridgeport import agent

    log = structlog.get_logger("bridgeport.cli")
    # The event loop (health, the workers' messages) needs the GIL back after every socket
    # call. While a thread parses or plans thousands of resources, the default 5 ms switch
    # interval makes each handoff wait up to 5 ms. (Measured when the loop still relayed UDP:
    # gaps of 260-340 ms at 5,000 resources (bench/input_stall.py), 6-12 ms at 0.5 ms.)
    sys.setswitchinterval(0.0005)
    if args.cleanup:
        removed = agent.cleanup()
        log.info("cleaned up", tables="ip/ip6 bridgeport", bridges=removed)
        return 0
    if not args.node_name:
        print("error: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    if args.proxy_workers < 0:
        print("error: --proxy-workers must be 0 (one per CPU) or more", file=sys.stderr)
        return 2
    if args.state_file is not None:
        from bridgeport.adapters.statefile import journal_path, remove_temporaries

        if leftovers := remove_temporaries(args.state_file) + remove_temporaries(
            journal_path(args.state_file)
        ):
            log.info("removed temporary state files of an interrupted write", count=leftovers)
    reporters: list[Callable[[Report], Awaitable[None]]] = []
    recall = None
    if args.source.startswith("dir:"):
        from bridgeport.adapters.dirsource import DirSource

        source: Source = DirSource(
            Path(args.source[4:]), ignore=[args.state_file] if args.state_file else []
        )
    elif args.source == "kube":
        from bridgeport.kube.nodestate import NodeStateReporter
        from bridgeport.kube.source import KubeSource

        kube = KubeSource(args.node_name, liveness_endpoint=_endpoint(args.health_port))
        nodestate = NodeStateReporter(args.node_name, lambda: kube.node_uid)
        reporters.append(nodestate.publish)
        # Without a state file, the NodeState remembers the host ports this node assigned.
        recall = nodestate.recall if args.state_file is None else None
        source = kube
    else:
        print(f"error: --source {args.source!r}: use kube or dir:PATH", file=sys.stderr)
        return 2
    if not _serve_metrics(args.metrics_port):
        return 1
    from bridgeport.metrics import REGISTRY
    from bridgeport.proxy.manager import Fairness, ProxyManager
    from bridgeport.proxy.worker import raise_fd_limit

    raise_fd_limit()  # listeners and port claims are file descriptors of the agent
    # Even with --no-proxy the manager runs: it holds the claims on every DNATed port.
    fairness = Fairness(
        args.proxy_max_connections_per_source,
        args.proxy_tcp_idle_timeout,
        args.proxy_max_udp_flows_per_source,
    )
    proxies = ProxyManager(
        registry=REGISTRY,
        udp_idle_timeout=args.udp_idle_timeout,
        max_udp_flows=args.proxy_max_udp_flows,
        max_tcp_connections=args.proxy_max_connections,
        connect_timeout=args.proxy_connect_timeout,
        workers=args.proxy_workers or None,
        fairness=fairness,
    )
    reserved = args.reserved_ports | {p for p in (args.health_port, args.metrics_port) if p}
    if args.metrics_port:
        _publication_metrics(proxies, kernel=not args.no_publication_counters)
    settings = agent.AgentSettings(
        args.node_name,
        dict(args.node_label),
        state_file=args.state_file,
        resync=args.resync,
        manage_sysctls=args.manage_sysctls,
        proxy_enabled=not args.no_proxy,
        reserved_ports=frozenset(reserved),
        accept_mark=args.accept_fwmark,
        counters=not args.no_publication_counters,
        doctor_interval=args.doctor_interval,
    )
    the_agent = agent.Agent(source, settings, proxies=proxies, reporters=reporters, recall=recall)
    return _run_until_signal(the_agent.run())


def cmd_controller(args: argparse.Namespace) -> int:
    from bridgeport.kube.controller import ControllerSettings, run_controller
    from bridgeport.metrics import PortTaken

    try:
        return run_controller(
            ControllerSettings(
                liveness_endpoint=_endpoint(args.health_port),
                metrics_port=args.metrics_port or None,
                peering=not args.no_peering,
            )
        )
    except PortTaken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _endpoint(port: int) -> str | None:
    return f"http://0.0.0.0:{port}/healthz" if port else None


def _serve_metrics(port: int) -> bool:
    from bridgeport.metrics import REGISTRY, PortTaken, serve

    try:
        serve(port, REGISTRY)
    except PortTaken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def _publication_metrics(proxies: Any, kernel: bool) -> None:
    """bridgeport_publication_*: the kernel's element counters and the proxy's, one family."""
    from bridgeport.adapters.pubcounters import KernelCounters, Key, PublicationCollector, Traffic
    from bridgeport.metrics import REGISTRY

    def proxied() -> Any:
        for row in proxies.rows() if proxies is not None else ():
            yield (
                Key(row.owner.namespace, row.owner.name, row.key.protocol.value),
                Traffic(row.stats.connections, 0, row.stats.bytes_in + row.stats.bytes_out),
            )

    read = KernelCounters().read if kernel else dict
    REGISTRY.register(PublicationCollector(read, proxied))


def _run_until_signal(coro: Any) -> int:
    """Run until SIGTERM/SIGINT; kernel state is deliberately left in place."""
    import structlog

    log = structlog.get_logger("bridgeport.cli")

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopping; kernel state left in place so traffic keeps flowing")

    from bridgeport.core.source import SourceError

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _loop_factory() -> Any:
    """uvloop when installed (the `fast` extra; bench/proxy/README.md has the figures), the
    standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
