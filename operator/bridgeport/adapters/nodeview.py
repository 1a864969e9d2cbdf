"""Read-only view of the node for `doctor`: sysctls, the whole nft ruleset, listeners.

Only `doctor` (the command and the agent's periodic check) lists the whole ruleset: it is a
diagnosis of what other tools do. Nothing here writes anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from bridgeport.core.doctor import Listener, NodeView
from bridgeport.core.ruleset import TABLE

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.rp_filter",
)
_SS = re.compile(
    r"^(\S+)\s+\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s+\S+"
    r'(?:\s+users:\(\("([^"]+)",pid=(\d+))?'
)


def sysctl(key: str, proc: Path = Path("/proc/sys")) -> str | None:
    try:
        return (proc / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def gather() -> NodeView:
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(True)
    rc, out, err = nft.cmd("list ruleset")
    if rc != 0:
        raise RuntimeError(f"nft list ruleset: {err.strip()}")
    ruleset = json.loads(out) if out else {}
    nft.set_json_output(False)
    nft.set_handle_output(True)
    _, text, _ = nft.cmd("list ruleset")
    bridges = _our_bridges(ruleset)
    keys = [*SYSCTLS, *(f"net.ipv4.conf.{b}.rp_filter" for b in bridges)]
    return NodeView(
        sysctls={k: sysctl(k) for k in keys},
        ruleset=ruleset,
        ruleset_text=text,
        listeners=listeners(),
        conntrack=sysctl("net.netfilter.nf_conntrack_max") is not None,
        bridges=bridges,
    )


def _our_bridges(ruleset: dict[str, object]) -> list[str]:
    for item in ruleset.get("nftables", []):  # type: ignore[attr-defined]
        m = item.get("map")
        if m and m["family"] == "ip" and m["table"] == TABLE and m["name"] == "fwd_in":
            return sorted(e[0] for e in m.get("elem", []) if isinstance(e, list))
    return []


def listeners() -> list[Listener]:
    """Listening TCP/UDP sockets with their process (`ss -Hlntupe`, iproute2). Without
    CAP_SYS_PTRACE (the agent's pod) ss names no process: our own sockets are then known by
    their inode, which the proxy workers share with the agent."""
    try:
        proc = subprocess.run(
            ["ss", "-Hlntupe"], capture_output=True, text=True, timeout=10, check=False
        )
    except FileNotFoundError:
        return []  # no iproute2: the listener check is skipped
    me, mine = os.getpid(), _own_socket_inodes()
    out = []
    for line in proc.stdout.splitlines():
        m = _SS.match(line)
        if not m:
            continue
        protocol, address, port, name, pid = m.groups()
        address = address.strip("[]").split("%")[0]
        inode = re.search(r"\bino:(\d+)", line)
        ours = (inode is not None and inode.group(1) in mine) or (
            pid is not None and (int(pid) == me or _is_bridgeport(int(pid)))
        )
        who = f"{name} (pid {pid})" if name else ""
        out.append(Listener(protocol, address, int(port), who, ours))
    return out


def _own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _is_bridgeport(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(
        part == b"bridgeport" or part.startswith(b"bridgeport.") or part.endswith(b"/bridgeport")
        for part in cmdline[:4]
    )
