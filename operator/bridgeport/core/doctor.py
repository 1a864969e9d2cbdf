"""`bridgeport doctor`: what stands between a publication and its traffic on this node (pure).

Input is a read-only view of the node (sysctls, the nft ruleset as libnftables JSON plus its
`nft -a` text for naming rules, listening sockets, conntrack support); output is a list of
findings, each with a severity, the thing it is about, and what to do. Listing foreign tables
is this module's whole job; the agent's programming path never does it.

In nftables a packet must be accepted by *every* base chain on its hook: another table's
`drop` (or `policy drop`) is final whatever our table says, which is how Docker's
`FORWARD` policy kills forwarded publications on nodes that run both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bridgeport.core.ruleset import COMMENT, TABLE

INFO, WARNING, ERROR = "info", "warning", "error"
SEVERITIES = (INFO, WARNING, ERROR)
EXIT_CODES = {INFO: 0, WARNING: 1, ERROR: 2}
OUR_BASE_CHAINS = ("prerouting", "output", "postrouting", "forward")
# Hooks a published flow passes: forwarded (DNAT) traffic, and input for the proxy.
_HOOK_IMPACT = {"forward": ERROR, "prerouting": ERROR, "postrouting": ERROR, "input": WARNING}
_MAX_CONDITIONAL = 5  # conditional drops listed per chain: enough to point, not a dump


@dataclass(frozen=True)
class Finding:
    check: str  # forwarding | br_netfilter | rp_filter | tables | foreign | listener | conntrack
    severity: str
    message: str
    rule: str = ""  # the foreign rule, as `nft -a list ruleset` prints it
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass(frozen=True)
class Listener:
    protocol: str  # tcp | udp | sctp
    address: str  # "0.0.0.0", "::", "*" or a specific address
    port: int
    process: str  # "nginx (pid 12)" or "" when unknown
    ours: bool  # the agent's own socket (its claim or its proxy)


@dataclass(frozen=True)
class NodeView:
    sysctls: Mapping[str, str | None]  # absent keys read as None
    ruleset: Mapping[str, Any]  # `nft -j list ruleset`
    ruleset_text: str  # `nft -a list ruleset`
    listeners: Sequence[Listener] = ()
    conntrack: bool = True
    bridges: Sequence[str] = field(default_factory=tuple)  # ours, for rp_filter


def diagnose(view: NodeView) -> list[Finding]:
    findings = [
        *_forwarding(view.sysctls),
        *_br_netfilter(view.sysctls),
        *_rp_filter(view.sysctls, view.bridges),
        *_our_tables(view.ruleset, _table_comments(view.ruleset_text)),
        *_foreign(view.ruleset, _rule_texts(view.ruleset_text), view.bridges),
        *_listeners(view.ruleset, view.listeners),
    ]
    if not view.conntrack:
        findings.append(
            Finding(
                "conntrack",
                ERROR,
                "connection tracking is not available (no "
                "/proc/sys/net/netfilter/nf_conntrack_max): DNAT, masquerade and the reply path "
                "of every publication need it",
                fix="modprobe nf_conntrack (and nf_nat)",
            )
        )
    return findings


def summary(findings: Sequence[Finding], limit: int = 3) -> str:
    """One line for a condition message: the worst few findings."""
    ranked = sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))
    text = "; ".join(f"{f.severity}: {f.message}" for f in ranked[:limit])
    more = len(ranked) - limit
    return text + (f" (+{more} more: bridgeport doctor)" if more > 0 else "")


def worst(findings: Iterable[Finding]) -> str:
    return max((f.severity for f in findings), key=SEVERITIES.index, default=INFO)


def _forwarding(sysctls: Mapping[str, str | None]) -> list[Finding]:
    out = []
    for family, key in (("IPv4", "net.ipv4.ip_forward"), ("IPv6", "net.ipv6.conf.all.forwarding")):
        if sysctls.get(key) == "0":
            out.append(
                Finding(
                    "forwarding",
                    WARNING,
                    f"{family} forwarding is off ({key} = 0): no kernel "
                    f"DNAT for {family}; the userland proxy serves its publications instead",
                    fix=f"sysctl -w {key}=1 (or run the agent with --manage-sysctls)",
                )
            )
    return out


def _br_netfilter(sysctls: Mapping[str, str | None]) -> list[Finding]:
    key = "net.bridge.bridge-nf-call-iptables"
    value = sysctls.get(key)
    if value == "1":
        return []
    why = "br_netfilter is not loaded" if value is None else f"{key} = 0"
    return [
        Finding(
            "br_netfilter",
            INFO,
            f"{why}: traffic between two ports of one bridge skips the ip "
            "hooks, so a container reaching its own published port through the node "
            "(self-hairpin) is dropped; everything else works",
            fix="modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1",
        )
    ]


def _rp_filter(sysctls: Mapping[str, str | None], bridges: Sequence[str]) -> list[Finding]:
    """The kernel applies max(all, interface): 1 (strict) drops asymmetric traffic."""
    every = int(sysctls.get("net.ipv4.conf.all.rp_filter") or 0)
    strict = [
        name
        for name in (bridges or ["all"])
        if max(every, int(sysctls.get(f"net.ipv4.conf.{name}.rp_filter") or 0)) == 1
    ]
    return (
        [
            Finding(
                "rp_filter",
                WARNING,
                f"strict reverse-path filtering on {', '.join(strict)} "
                "(rp_filter = 1 there or on all): packets arriving on an interface that is not "
                "the route back to their source are dropped (multi-homed nodes, hostIP "
                "publications on a secondary address)",
                fix="sysctl -w net.ipv4.conf.all.rp_filter=2 (loose), and the "
                "same for the interfaces named",
            )
        ]
        if strict
        else []
    )


def _items(ruleset: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item[kind] for item in ruleset.get("nftables", []) if kind in item]


def _ours(family: str, table: str) -> bool:
    return table == TABLE and family in ("ip", "ip6")


def _table_comments(text: str) -> dict[tuple[str, str], str]:
    """libnftables 1.0.6 JSON leaves table comments out: read them from the text listing."""
    out: dict[tuple[str, str], str] = {}
    table: tuple[str, str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if m := re.match(r"table (\S+) (\S+) \{", s):
            table = (m.group(1), m.group(2))
        elif table and (m := re.match(r'comment "(.*)"$', s)):
            out[table] = m.group(1)
            table = None
        elif s:
            table = None  # the comment comes first or not at all
    return out


def _our_tables(
    ruleset: Mapping[str, Any], comments: Mapping[tuple[str, str], str]
) -> list[Finding]:
    tables = {(t["family"], t["name"]): t for t in _items(ruleset, "table")}
    chains = {(c["family"], c["table"], c["name"]) for c in _items(ruleset, "chain")}
    out = []
    for family in ("ip", "ip6"):
        table = tables.get((family, TABLE))
        if table is None:
            out.append(
                Finding(
                    "tables",
                    WARNING,
                    f"table {family} {TABLE} does not exist: "
                    "the agent has not programmed this node (or is not running)",
                )
            )
            continue
        if comments.get((family, TABLE), "") != COMMENT:
            out.append(
                Finding(
                    "tables",
                    ERROR,
                    f"table {family} {TABLE} exists but was not "
                    "created by bridgeport (its comment differs): the agent would "
                    "replace it",
                    fix="rename or remove the other tool's table",
                )
            )
            continue
        missing = [c for c in OUR_BASE_CHAINS if (family, TABLE, c) not in chains]
        if missing:
            out.append(
                Finding(
                    "tables",
                    ERROR,
                    f"table {family} {TABLE} lacks chains "
                    f"{', '.join(missing)}: the agent restores them at its next "
                    "resync; if this persists, its drift repair is failing",
                )
            )
    return out


_TOOLS = (  # (pattern on "table chain", tool, what to do)
    (
        re.compile(r"\bDOCKER"),
        "Docker",
        "iptables -I DOCKER-USER -o {b} -j ACCEPT; "
        "iptables -I DOCKER-USER -i {b} -j ACCEPT (an accept in its own table is what counts)",
    ),
    (
        re.compile(r"^firewalld\b"),
        "firewalld",
        "firewall-cmd --zone=trusted --add-interface={b} --permanent; firewall-cmd --reload",
    ),
    (
        re.compile(r"(^kube-proxy\b|\bKUBE-)"),
        "kube-proxy",
        "kube-proxy drops only traffic to "
        "Services without endpoints; check that the port is not also a Service's",
    ),
    (
        re.compile(r"(\bCNI-|\bcali-|cilium|\bFLANNEL|\bantrea|\bWEAVE)", re.I),
        "a CNI plugin",
        "allow the bridge's traffic in the plugin's policy (or exempt its interfaces)",
    ),
)


def _tool(table: str, chains: str) -> tuple[str, str]:
    """Who owns a table, judged by its name and its chains' (Docker's FORWARD is iptables'
    own chain: the DOCKER* chains beside it give Docker away)."""
    names = f"{table} {chains}"
    for pattern, tool, fix in _TOOLS:
        if pattern.search(names):
            return tool, fix.replace("{b}", "bp-+")
    return "another tool", "accept the bridgeport bridges' traffic in that chain (it is final)"


def _rule_texts(text: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> the rule line of `nft -a list ruleset`."""
    out: dict[tuple[str, str, str, int], str] = {}
    family = table = chain = ""
    for line in text.splitlines():
        s = line.strip()
        if m := re.match(r"table (\S+) (\S+) \{", s):
            family, table = m.groups()
        elif m := re.match(r"chain (\S+) \{", s):
            chain = m.group(1)
        elif m := re.match(r"(.*\S)\s+# handle (\d+)$", s):
            rule = re.sub(r"counter packets \d+ bytes \d+", "counter", m.group(1))
            out[(family, table, chain, int(m.group(2)))] = rule
    return out


def _verdict(expr: Sequence[Mapping[str, Any]]) -> str:
    last = expr[-1] if expr else {}
    for verdict in ("drop", "reject"):
        if verdict in last:
            return verdict
    return ""


def _conditional(expr: Sequence[Mapping[str, Any]]) -> bool:
    return any(not ({"counter", "drop", "reject", "log", "limit"} & e.keys()) for e in expr)


def _accepts_ours(
    texts: Mapping[tuple[str, str, str, int], str], family: str, table: str, bridges: Sequence[str]
) -> str:
    """A rule of that table accepting our bridges' traffic (the documented fix), if any."""
    names = [f'"{b}"' for b in bridges] + ['"bp-*"', '"bp-+"']
    for (f, t, _, _), text in texts.items():
        if (f, t) == (family, table) and text.endswith("accept") and any(n in text for n in names):
            return text
    return ""


def _foreign(
    ruleset: Mapping[str, Any],
    texts: Mapping[tuple[str, str, str, int], str],
    bridges: Sequence[str] = (),
) -> list[Finding]:
    out = []
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    names: dict[tuple[str, str], str] = {}
    for c in _items(ruleset, "chain"):
        key = (c["family"], c["table"])
        names[key] = f"{names.get(key, '')} {c['name']}"
    for r in _items(ruleset, "rule"):
        rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    for c in _items(ruleset, "chain"):
        family, table, chain, hook = c["family"], c["table"], c["name"], c.get("hook", "")
        if _ours(family, table) or hook not in _HOOK_IMPACT or family not in ("ip", "ip6", "inet"):
            continue
        tool, fix = _tool(table, names[(family, table)])
        where = f"table {family} {table} chain {chain} (hook {hook}, {tool})"
        severity = _HOOK_IMPACT[hook]
        accepted = _accepts_ours(texts, family, table, bridges)
        if accepted:
            severity, fix = INFO, ""
            where += f", which accepts our bridges: {accepted}"
        if c.get("policy") == "drop":
            out.append(
                Finding(
                    "foreign",
                    severity,
                    f"{where} has policy drop: our {hook} traffic dies there "
                    "unless one of its rules accepts it",
                    rule=f"chain {chain} {{ type {c.get('type')} hook {hook} priority "
                    f"{c.get('prio')}; policy drop; }}",
                    fix=fix,
                )
            )
        conditional = 0
        for r in rules.get((family, table, chain), []):
            verdict = _verdict(r["expr"])
            if not verdict:
                continue
            text = texts.get((family, table, chain, r["handle"]), f"handle {r['handle']}")
            if not _conditional(r["expr"]):
                out.append(
                    Finding(
                        "foreign",
                        severity,
                        f"{where} ends in an unconditional "
                        f"{verdict}: whatever it does not accept first is dropped",
                        rule=text,
                        fix=fix,
                    )
                )
            elif conditional < _MAX_CONDITIONAL:
                conditional += 1
                out.append(
                    Finding("foreign", INFO, f"{where} may {verdict} our traffic", rule=text)
                )
    return out


def _published(ruleset: Mapping[str, Any]) -> list[tuple[str, str, int, int]]:
    """(address or "*", protocol, first port, last port) of every DNAT in our tables."""
    out = []
    for m in _items(ruleset, "map"):
        if not _ours(m["family"], m["table"]) or not m["name"].startswith("pub_"):
            continue
        for entry in m.get("elem", []):
            elem = entry[0] if isinstance(entry, list) else entry
            val = elem.get("elem", elem).get("val") if isinstance(elem, dict) else None
            parts = val.get("concat", []) if isinstance(val, dict) else []
            if len(parts) < 2:
                continue
            port = parts[-1]
            first, last = port["range"] if isinstance(port, dict) else (port, port)
            address = str(parts[0]) if len(parts) == 3 else "*"
            out.append((address, str(parts[-2]), int(first), int(last)))
    return out


def _listeners(ruleset: Mapping[str, Any], listeners: Sequence[Listener]) -> list[Finding]:
    out = []
    for address, protocol, first, last in _published(ruleset):
        for li in listeners:
            if li.ours or li.protocol != protocol or not first <= li.port <= last:
                continue
            wildcard = li.address in ("0.0.0.0", "::", "*")
            if address != "*" and not wildcard and li.address != address:
                continue
            who = li.process or "an unknown process"
            out.append(
                Finding(
                    "listener",
                    ERROR,
                    f"{who} listens on {li.address}:{li.port}/{protocol}, "
                    f"which bridgeport publishes (DNAT of {address}:{first}-{last}): it never sees "
                    "that traffic from outside, while local clients of 127.0.0.1 reach it",
                    fix="move the process or the publication; the agent reports the port "
                    "Conflicted (PortInUse) when the process was there first",
                )
            )
    return out
