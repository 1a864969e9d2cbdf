"""Send one nftrace-marked probe into this node's stack and collect the kernel's trace events.

The probe enters through a temporary TUN device (as if it arrived from outside: prerouting,
routing, forward or input, postrouting), so the real ruleset of every table judges it. Our
table `ip bridgeport_trace` marks it for tracing (raw priority, before anything else) and
drops it at the end of postrouting and input: it never reaches the target or a socket. The
device, the table and the probe's conntrack entry are removed afterwards.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import time

from bridgeport.core.trace import TRACE_TABLE, Probe

_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def _table(device: str) -> str:
    return f"""table ip {TRACE_TABLE} {{
    comment "bridgeport trace: one probe, removed when the trace ends"
    chain probe_in {{ type filter hook prerouting priority -400; policy accept;
        iifname "{device}" meta nftrace set 1; }}
    chain probe_end_forward {{ type filter hook postrouting priority 2147483647; policy accept;
        iifname "{device}" drop; }}
    chain probe_end_input {{ type filter hook input priority 2147483647; policy accept;
        iifname "{device}" drop; }}
}}
"""


def _nft(script: str) -> None:
    proc = subprocess.run(
        ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft: {proc.stderr.strip()}")


def trace(probe: Probe, timeout: float = 3.0, attempts: int = 3) -> str:
    """The `nft monitor trace` text of the probe (retried with a new source port if the
    monitor had not subscribed yet)."""
    device = f"bptr{os.getpid() % 100000}"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", device.encode(), _IFF_TUN | _IFF_NO_PI))
        subprocess.run(["ip", "link", "set", device, "up"], check=True, timeout=10)
        _nft(f"add table ip {TRACE_TABLE}\ndelete table ip {TRACE_TABLE}\n{_table(device)}")
        monitor = subprocess.Popen(
            ["nft", "monitor", "trace"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert monitor.stdout is not None
            os.set_blocking(monitor.stdout.fileno(), False)
            text = ""
            for attempt in range(attempts):
                sent = Probe(
                    probe.client, probe.host, probe.port, probe.protocol, probe.sport + attempt
                )
                time.sleep(0.2 * (attempt + 1))  # the monitor subscribes asynchronously
                os.write(fd, sent.packet())
                text = _read_until_final(monitor.stdout, timeout)
                _forget(sent)
                if "trace id" in text:
                    return text
            return text
        finally:
            monitor.terminate()
            monitor.wait(5)
    finally:
        subprocess.run(
            ["nft", "delete", "table", "ip", TRACE_TABLE],
            capture_output=True,
            timeout=10,
            check=False,
        )
        os.close(fd)  # a non-persistent TUN device disappears with its descriptor


def _read_until_final(stream: object, timeout: float) -> str:
    """Events until a final verdict (policy or drop at the end of the path) plus a moment."""
    fileno = stream.fileno()  # type: ignore[attr-defined]
    chunks: list[str] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        wait = min(deadline, quiet_until or deadline) - time.monotonic()
        ready, _, _ = select.select([fileno], [], [], max(0.0, wait))
        if not ready:
            if quiet_until is not None:
                break
            continue
        data = os.read(fileno, 65536).decode(errors="replace")
        if not data:
            break
        chunks.append(data)
        if "trace id" in data:
            quiet_until = time.monotonic() + 0.5  # the rest of the path arrives at once
    return "".join(chunks)


def _forget(probe: Probe) -> None:
    """The probe created a conntrack entry (with its DNAT): remove it if conntrack(8) exists."""
    subprocess.run(
        [
            "conntrack",
            "-D",
            "-s",
            str(probe.client),
            "-p",
            probe.protocol,
            "--sport",
            str(probe.sport),
        ],
        capture_output=True,
        timeout=10,
        check=False,
    )
