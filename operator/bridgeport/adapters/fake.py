"""An in-memory Dataplane for unit tests: no root, no kernel, and strict.

Like knftables' Fake, it executes the very commands the real adapter would send (`ruleset.diff`
output: add/flush/delete chain, add rule, add/delete element) against a model of our tables,
all or nothing, and refuses what nftables refuses (a missing table, chain or element, a map
element whose key exists with another value, a jump to a missing chain, deleting a chain
still jumped to). Like moby's stub firewaller it also checks invariants the kernel would not:
nothing outside `ip`/`ip6 bridgeport` is ever addressed, each incremental transaction turns
exactly what was applied before into what is applied now, and only our own bridges are
created or removed. A broken
invariant raises `InvariantBroken` (an AssertionError: a bug in the caller, never a condition
to handle).

Tests drive it from outside as a human or another tool would: `tamper_*` changes the "kernel"
behind the agent's back, `refuse_next_apply` / `refuse_bridge` make the next attempt fail,
`attach_port` announces a port to the watch.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridgeport.adapters.nft import NftError
from bridgeport.core import doctor
from bridgeport.core.plan import BridgePlan, NodeFacts
from bridgeport.core.ruleset import FAMILIES, TABLE, Element, Lookup, Table, diff
from bridgeport.core.settle import KeptBridge, LinkFailure
from bridgeport.core.specs import IPAddress

_COMMAND = re.compile(
    r"^(?P<verb>add|flush|delete) (?P<what>chain|rule|element) (?P<family>\S+) (?P<table>\S+)"
    r" (?P<name>\S+)(?: (?P<rest>.*))?$"
)
_JUMP = re.compile(r"\b(?:jump|goto) (\S+)")


class InvariantBroken(AssertionError):
    """The caller did something the real kernel might accept but bridgeport must never do."""


@dataclass
class _Model:
    """One of our tables as the fake kernel holds it."""

    lookups: dict[str, Lookup]
    chains: dict[str, tuple[str, list[str]]]  # name -> (hook, rules)
    elements: dict[str, dict[str, Element]]  # set -> key -> element

    @classmethod
    def of(cls, table: Table) -> _Model:
        return cls(
            {s.name: s for s in table.lookups},
            {c.name: (c.hook, list(c.rules)) for c in table.chains},
            {s.name: {e.key: e for e in table.elements.get(s.name, ())} for s in table.lookups},
        )

    def copy(self) -> _Model:
        return _Model(
            dict(self.lookups),
            {k: (h, list(r)) for k, (h, r) in self.chains.items()},
            {k: dict(v) for k, v in self.elements.items()},
        )

    def same_as(self, table: Table) -> bool:
        return (
            self.lookups == {s.name: s for s in table.lookups}
            and {k: (h, tuple(r)) for k, (h, r) in self.chains.items()}
            == {c.name: (c.hook, c.rules) for c in table.chains}
            and {k: set(v.values()) for k, v in self.elements.items()}
            == {s.name: set(table.elements.get(s.name, ())) for s in table.lookups}
        )

    def fingerprint(self) -> dict[str, int]:
        counts = {f"chain {name}": len(rules) for name, (_, rules) in self.chains.items()}
        counts |= {f"set {name}": len(self.elements.get(name, {})) for name in self.lookups}
        return counts

    def jumps_to(self, chain: str) -> bool:
        in_rules = any(
            chain in _JUMP.findall(r) for _, rules in self.chains.values() for r in rules
        )
        in_maps = any(
            chain in _JUMP.findall(e.value)
            for elements in self.elements.values()
            for e in elements.values()
        )
        return in_rules or in_maps


@dataclass(frozen=True)
class Transaction:
    """One accepted apply: per family, `None` for a wholesale replace, else the commands."""

    commands: Mapping[str, tuple[str, ...] | None]
    count: int  # what apply_tables returned (the real adapter's count of script lines)

    @property
    def full(self) -> bool:
        return any(c is None for c in self.commands.values())


@dataclass
class FakeDataplane:
    """The node as the agent sees it, in memory. Facts are plain attributes: set them."""

    addresses: set[IPAddress] = field(default_factory=set)
    ipv4_forwarding: bool = True
    ipv6_forwarding: bool = True
    foreign_interfaces: set[str] = field(default_factory=set)
    tables: dict[str, _Model] = field(default_factory=dict)  # the "kernel"'s tables
    bridges: dict[str, BridgePlan] = field(default_factory=dict)  # our bridges, by name
    ports: dict[str, str] = field(default_factory=dict)  # port -> bridge it is attached to
    port_flags: dict[str, tuple[int, int]] = field(default_factory=dict)  # (hairpin, isolated)
    transactions: list[Transaction] = field(default_factory=list)
    forgotten_udp: list[frozenset[tuple[int, int]]] = field(default_factory=list)
    forwarding_enabled: int = 0  # times enable_forwarding was called
    findings: list[doctor.Finding] = field(default_factory=list)  # what check_node reports
    # Assigned host ports: the ephemeral range, its reserved ports, what processes listen on.
    port_range: tuple[int, int] = (32768, 60999)
    local_reserved_ports: set[int] = field(default_factory=set)
    listening: dict[str, set[int]] = field(default_factory=dict)
    _applied: dict[str, Table] = field(default_factory=dict)
    _refuse_apply: list[str] = field(default_factory=list)
    _refuse_bridges: dict[str, str] = field(default_factory=dict)
    _watchers: list[Callable[[], object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- facts
    def gather_facts(self, node: str, labels: Mapping[str, str]) -> NodeFacts:
        return NodeFacts(
            name=node,
            labels=dict(labels),
            addresses=frozenset(self.addresses),
            ipv4_forwarding=self.ipv4_forwarding,
            ipv6_forwarding=self.ipv6_forwarding,
            foreign_interfaces=frozenset(self.foreign_interfaces),
            port_range=self.port_range,
            local_reserved_ports=frozenset(self.local_reserved_ports),
        )

    def listening_ports(self) -> dict[str, frozenset[int]]:
        return {proto: frozenset(ports) for proto, ports in self.listening.items()}

    def check_node(self) -> list[doctor.Finding]:
        return list(self.findings)

    def refresh(self) -> None:
        """Nothing is cached here."""

    def enable_forwarding(self) -> None:
        self.forwarding_enabled += 1
        self.ipv4_forwarding = self.ipv6_forwarding = True

    # -- bridges
    def converge_bridges(self, bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
        failures = []
        for plan in bridges:
            refused = self._refuse_bridges.pop(plan.name, None)
            if plan.name in self.foreign_interfaces:
                refused = f"interface {plan.name} exists and is not managed by bridgeport"
            if refused is not None:
                failures.append(LinkFailure(plan.network, plan.name, refused))
                continue
            self.bridges[plan.name] = plan
            want = (1, int(not plan.inter_container))
            for port, bridge in self.ports.items():
                if bridge == plan.name:
                    self.port_flags[port] = want
        return failures

    def remove_stale_bridges(
        self,
        keep: Iterable[str],
        protect: Collection[str] = (),
    ) -> tuple[list[str], list[KeptBridge]]:
        keep = set(keep)
        kept: list[KeptBridge] = []
        stale: list[str] = []
        for name in sorted(set(self.bridges) - keep):
            attached = [p for p, b in self.ports.items() if b == name]
            if self.bridges[name].network in protect and attached:
                kept.append(KeptBridge(self.bridges[name].network, name, len(attached)))
            else:
                stale.append(name)
        for name in stale:
            if name in self.foreign_interfaces:
                raise InvariantBroken(f"removing {name}, which is not ours")
            del self.bridges[name]
            for port in [p for p, b in self.ports.items() if b == name]:
                del self.ports[port]  # the kernel frees a deleted bridge's ports
        return stale, kept

    def watch_ports(self, changed: Callable[[], object]) -> None:
        with self._lock:
            self._watchers.append(changed)

    def attach_port(self, port: str, bridge: str) -> None:
        """A container's veth joins `bridge`: the watch tells the agent, flags still unset."""
        self.ports[port] = bridge
        self.port_flags[port] = (0, 0)
        with self._lock:
            watchers = list(self._watchers)
        for changed in watchers:
            changed()

    def refuse_bridge(self, name: str, message: str) -> None:
        """The next converge of bridge `name` fails with `message`."""
        self._refuse_bridges[name] = message

    # -- tables
    def apply_tables(self, tables: Sequence[Table], full: bool) -> int:
        commands: dict[str, tuple[str, ...] | None] = {}
        parts: list[str] = []
        for table in tables:
            self._check_ours(table.family, TABLE)
            old = None if full else self._applied.get(table.family)
            cmds = diff(old, table) if old is not None else None
            commands[table.family] = None if cmds is None else tuple(cmds)
            parts.append(table.replace_script() if cmds is None else "\n".join(cmds))
        script = "\n".join(p for p in parts if p)
        if self._refuse_apply and script.strip():
            self._applied.clear()  # as the real adapter: next sync is full
            raise NftError(self._refuse_apply.pop(0))
        staged = {family: model.copy() for family, model in self.tables.items()}
        try:
            for table in tables:
                cmds_for = commands[table.family]
                if cmds_for is None:
                    staged[table.family] = _Model.of(table)
                    continue
                self._check_diff(self._applied[table.family], table, cmds_for)
                for cmd in cmds_for:
                    self._execute(staged, cmd)
        except NftError:
            self._applied.clear()
            raise
        self.tables = staged  # all or nothing, as one nftables transaction
        for table in tables:
            self._applied[table.family] = table
        count = script.count("\n") + 1 if script.strip() else 0
        self.transactions.append(Transaction(commands, count))
        return count

    def drifted(self) -> list[str]:
        return [
            family
            for family, table in self._applied.items()
            if (
                family not in self.tables
                or self.tables[family].fingerprint() != table.fingerprint()
            )
        ]

    def refuse_next_apply(self, message: str = "Error: Could not process rule") -> None:
        """The next non-empty transaction is rejected as a whole."""
        self._refuse_apply.append(message)

    def tamper_delete_table(self, family: str) -> None:
        """Someone runs `nft delete table <family> bridgeport`."""
        self.tables.pop(family, None)

    def tamper_flush_chain(self, family: str, chain: str) -> None:
        """Someone runs `nft flush chain <family> bridgeport <chain>`."""
        self.tables[family].chains[chain][1].clear()

    # -- conntrack
    def forget_udp(self, ports: Iterable[tuple[int, int]]) -> int:
        self.forgotten_udp.append(frozenset(ports))
        return 0

    def _check_diff(self, old: Table, new: Table, cmds: Sequence[str]) -> None:
        """The commands must turn exactly what was last applied into `new`, whatever someone
        else did to the kernel meanwhile (that is the drift check's business)."""
        expected = {old.family: _Model.of(old)}
        try:
            for cmd in cmds:
                self._execute(expected, cmd)
        except NftError as exc:
            raise InvariantBroken(f"the diff from {old.ident} is refused: {exc}") from None
        if not expected[old.family].same_as(new):
            raise InvariantBroken(
                f"the diff does not turn {old.ident} into the new table: {list(cmds)}"
            )

    # -- the transaction language
    def _execute(self, staged: dict[str, _Model], command: str) -> None:
        m = _COMMAND.match(command)
        if m is None:
            raise InvariantBroken(f"not a command the fake knows: {command!r}")
        family, name, rest = m["family"], m["name"], m["rest"] or ""
        self._check_ours(family, m["table"])
        model = staged.get(family)
        if model is None:
            raise NftError(f"Error: No such file or directory (table {family} {TABLE}): {command}")
        verb, what = m["verb"], m["what"]
        if what == "chain":
            self._chain(model, verb, name, command)
        elif what == "rule":
            if name not in model.chains:
                raise NftError(f"Error: No such file or directory (chain {name}): {command}")
            self._check_jumps(model, rest, command)
            model.chains[name][1].append(rest)
        else:
            self._element(model, verb, name, rest, command)

    @staticmethod
    def _chain(model: _Model, verb: str, name: str, command: str) -> None:
        if verb == "add":
            model.chains.setdefault(name, ("", []))
        elif name not in model.chains:
            raise NftError(f"Error: No such file or directory (chain {name}): {command}")
        elif verb == "flush":
            model.chains[name][1].clear()
        else:
            if model.jumps_to(name):
                raise NftError(f"Error: Device or resource busy (chain {name}): {command}")
            del model.chains[name]

    def _element(self, model: _Model, verb: str, name: str, rest: str, command: str) -> None:
        decl = model.lookups.get(name)
        if decl is None:
            raise NftError(f"Error: No such file or directory (set {name}): {command}")
        if not (rest.startswith("{ ") and rest.endswith(" }")):
            raise InvariantBroken(f"malformed element list: {command!r}")
        members = model.elements.setdefault(name, {})
        for text in rest[2:-2].split(", "):
            if verb == "delete":
                if text not in members:
                    raise NftError(f"Error: No such file or directory (element {text}): {command}")
                del members[text]
                continue
            element = _parse_element(text)
            if (decl.keyword == "map") != bool(element.value):
                raise NftError(f"Error: element {text!r} does not fit {decl.type}: {command}")
            self._check_jumps(model, element.value, command)
            old = members.get(element.key)
            if old is not None and old.value != element.value:
                raise NftError(f"Error: File exists (element {element.key}): {command}")
            members[element.key] = element

    @staticmethod
    def _check_jumps(model: _Model, text: str, command: str) -> None:
        for target in _JUMP.findall(text):
            if target not in model.chains:
                raise NftError(
                    f"Error: Could not process rule: No such file or directory "
                    f"(jump {target}): {command}"
                )

    @staticmethod
    def _check_ours(family: str, table: str) -> None:
        if family not in FAMILIES or table != TABLE:
            raise InvariantBroken(f"table {family} {table} is not ours")


def _parse_element(text: str) -> Element:
    """`key [comment "c"] [: value]`, as `ruleset.Element.text` writes it."""
    head, _, value = text.partition(" : ")
    key, _, comment = head.partition(' comment "')
    return Element(key, value, comment.removesuffix('"'))
