"""`bridgeport trace`: build the probe packet and read the kernel's nftrace events (pure).

The probe is one IPv4 TCP SYN or UDP datagram from the client's address to host:port, as if
it arrived on the node. nftables reports every chain, rule and verdict it passes (the
`nft monitor trace` events); a table of our own stops the probe at the very end of the
postrouting and input hooks, so nothing ever reaches the target or a local socket, and
reaching that stop means every other table let it through.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field

TRACE_TABLE = "bridgeport_trace"  # ip family; created and deleted by one trace run
_NOISE = re.compile(
    r" (ip (dscp|ecn|ttl|id|length)|tcp window) \S+"
    r"|(?<=counter) packets \d+ bytes \d+"
)
_EVENT = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (.*)$")
_PROTOCOLS = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class Probe:
    client: ipaddress.IPv4Address
    host: ipaddress.IPv4Address
    port: int
    protocol: str  # tcp | udp
    sport: int

    def packet(self) -> bytes:
        proto = _PROTOCOLS[self.protocol]
        if proto == 6:  # SYN, window 64240, no options
            l4 = struct.pack(
                "!HHIIBBHHH", self.sport, self.port, 0x62703031, 0, 5 << 4, 0x02, 64240, 0, 0
            )
        else:
            payload = b"bridgeport trace probe"
            l4 = struct.pack("!HHHH", self.sport, self.port, 8 + len(payload), 0) + payload
        pseudo = self.client.packed + self.host.packed + struct.pack("!BBH", 0, proto, len(l4))
        checksum = _checksum(pseudo + l4)
        offset = 16 if proto == 6 else 6
        l4 = l4[:offset] + struct.pack("!H", checksum or 0xFFFF) + l4[offset + 2 :]
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(l4),
            0x6274,
            0,
            64,
            proto,
            0,
            self.client.packed,
            self.host.packed,
        )
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        return header + l4


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse_target(text: str) -> tuple[ipaddress.IPv4Address, int, str]:
    """`HOST:PORT/PROTO` -> (address, port, protocol); ValueError with a clear message."""
    m = re.fullmatch(r"([0-9.]+):(\d+)/(tcp|udp)", text.strip().lower())
    if not m:
        raise ValueError(f"{text!r}: expected HOST:PORT/tcp or HOST:PORT/udp (IPv4)")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not 1-65535")
    return ipaddress.IPv4Address(m.group(1)), port, m.group(3)


@dataclass(frozen=True)
class Step:
    family: str
    table: str
    chain: str
    what: str  # "rule <text> (verdict x)", "verdict x", "policy x", "packet: ..."

    @property
    def where(self) -> str:
        return f"table {self.family} {self.table} chain {self.chain}"


@dataclass
class Result:
    steps: list[Step] = field(default_factory=list)
    verdict: str = "unknown"  # delivered | dropped | unknown
    by: Step | None = None  # the step that dropped it
    last_packet: str = ""  # the probe as the last chain saw it (after DNAT)

    def lines(self) -> list[str]:
        out = []
        for s in self.steps:
            if s.table == TRACE_TABLE:
                continue
            if s.what.startswith("packet:"):
                out.append(f"  {s.family} {s.table} {s.chain}: {s.what}")
            else:
                out.append(f"    {s.family} {s.table} {s.chain}: {s.what}")
        if self.verdict == "delivered":
            out.append(
                f"DELIVERED: every table let the probe through; it would leave as: "
                f"{self.last_packet}"
            )
        elif self.verdict == "dropped" and self.by is not None:
            out.append(f"DROPPED by {self.by.where}: {self.by.what}")
        else:
            out.append(
                "NO VERDICT: the probe left nftables' view before any final hook "
                "(routing, rp_filter or a missing route dropped it; see `ip route get`)"
            )
        return out


def parse_events(text: str, trace_id: str | None = None) -> Result:
    """`nft monitor trace` lines -> the path of one probe (the first trace id seen)."""
    result = Result()
    for line in text.splitlines():
        m = _EVENT.match(line.strip())
        if not m:
            continue
        tid, family, table, chain, what = m.groups()
        trace_id = trace_id or tid
        if tid != trace_id:
            continue
        step = Step(family, table, chain, _NOISE.sub("", what))
        result.steps.append(step)
        if what.startswith("packet:") and table != TRACE_TABLE:
            result.last_packet = step.what.removeprefix("packet:").strip()
        if table == TRACE_TABLE:
            if chain.startswith("probe_end") and "drop" in what:
                result.verdict = "delivered"
            continue
        if re.search(r"\(verdict drop\)$|^verdict drop$|^policy drop$", what):
            result.verdict, result.by = "dropped", step
    return result
