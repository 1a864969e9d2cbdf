"""The CRDs in crds/ against a real kube-apiserver, and against the agent's own parser.

Scenarios (``kube``: needs the local control plane; the rest read the YAML only):
- kube: every CRD installs server-side and becomes Established; names, short names,
  categories and the status subresource are as documented.
- kube: examples/*.yaml apply cleanly with strict field validation and read back with the
  schema defaults filled in; the agent parses what the server returns to the same spec.
- kube: a minimal BridgeNetwork / PortPublication gets the same defaults from the server as
  from the agent.
- kube: every examples/invalid/*.yaml is refused by the server with a message naming the field
  (and the agent refuses it too); an unknown field is refused with strict field validation
  and pruned (with a warning) without it.
- kube: known differences: what only the agent can check is accepted by the server, and the
  few inputs the schema is stricter about are refused by the server only.
- kube: `kubectl get pp|bn|bpns|bridgeport` print the documented columns.
- kube: NodeState .status is written through the status subresource only; the agent's own
  status document is stored unpruned; a 10,000-resource report fits; spec.nodeName must
  equal the name.
- kube: the controller's status shape (conditions, nodes, ready, problemNodes) is accepted
  and bounded.
- schema vs agent: enums, defaults and integer bounds equal bridgeport.core.specs'; list
  bounds are the writers' limits; the IP patterns accept exactly what Python's ipaddress
  accepts; every CEL rule has an invalid example; CEL uses only Kubernetes 1.28 functions.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import ipaddress
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridgeport.core import specs
from bridgeport.core.plan import State
from tests.builders import API
from tests.harness.apiserver import CRD_DIR, EXAMPLES_DIR, Kubectl, load_manifests

apiserver = pytest.mark.apiserver

INVALID_DIR = EXAMPLES_DIR / "invalid"
BN_CRD, PP_CRD, NS_CRD = (
    f"{p}.bridgeport.io" for p in ("bridgenetworks", "portpublications", "nodestates")
)
PEERING_CRD = "clusterkopfpeerings.kopf.dev"
HPP_CRD = "hostportpolicies.bridgeport.io"


# -- reading the CRDs and the examples ---------------------------------------------------------


@functools.cache
def crd_manifests() -> dict[str, dict[str, Any]]:
    """crds/*.yaml by CRD name (read once; do not modify)."""
    return {
        doc["metadata"]["name"]: doc
        for path in sorted(CRD_DIR.glob("*.yaml"))
        for doc in load_manifests(path)
    }


def root_schema(crd: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd_manifests()[crd]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return schema


def schema_at(crd: str, path: str) -> dict[str, Any]:
    """The schema of a dotted path such as ``spec.target.port``."""
    node = root_schema(crd)
    for part in path.split("."):
        node = node["properties"][part]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) for a schema and every schema below it ([] for list items)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def cel_rules(crd: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, rule)
        for path, node in walk(root_schema(crd))
        for rule in node.get("x-kubernetes-validations", [])
    ]


@dataclass(frozen=True)
class InvalidExample:
    """One file of examples/invalid/ and the expectations in its comment header."""

    path: Path
    doc: dict[str, Any]
    field: str
    expect: tuple[str, ...]
    strict: bool

    @classmethod
    def load(cls, path: Path) -> InvalidExample:
        header: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            m = re.match(r"#\s*(field|expect|strict):\s*(.*)$", line)
            if m:
                header.setdefault(m[1], []).append(m[2].strip())
        (doc,) = load_manifests(path)
        return cls(
            path,
            doc,
            header["field"][0],
            tuple(header.get("expect", [])),
            header.get("strict", ["false"])[0] == "true",
        )

    @property
    def resource(self) -> str:
        return "bn" if self.doc["kind"] == specs.BRIDGE_NETWORK else "pp"


INVALID_EXAMPLES = sorted(INVALID_DIR.glob("*.yaml"))


def minimal(kind: str, **spec: Any) -> dict[str, Any]:
    """A valid document of ``kind`` with only the required fields, plus ``spec``."""
    if kind == specs.BRIDGE_NETWORK:
        return {
            "apiVersion": API,
            "kind": kind,
            "metadata": {"name": "minimal"},
            "spec": {"subnet": "10.77.0.0/24", **spec},
        }
    return {
        "apiVersion": API,
        "kind": kind,
        "metadata": {"name": "minimal", "namespace": "default"},
        "spec": {"hostPort": 8080, "target": {"address": "10.77.0.2", "port": 80}, **spec},
    }


def without_host_port(doc: dict[str, Any]) -> dict[str, Any]:
    del doc["spec"]["hostPort"]
    return doc


def parsed(doc: dict[str, Any]) -> specs.Spec:
    result = specs.parse(doc)
    assert not isinstance(result, specs.InvalidResource), result.message
    return result


def same_spec(a: specs.Spec, b: specs.Spec) -> bool:
    """Equal apart from metadata (uid, generation, creationTimestamp)."""
    return dataclasses.replace(a, meta=b.meta) == b


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def table(output: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's table output as (header, rows), cut at the header's column offsets (an empty
    cell is ""). Header names are separated by 2+ spaces."""
    header_line, *lines = [ln for ln in output.splitlines() if ln.strip()]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s{2}))\S", header_line)]
    cut = [(a, b) for a, b in zip(starts, [*starts[1:], None], strict=True)]
    header = [header_line[a:b].strip() for a, b in cut]
    return header, [[ln[a:b].strip() for a, b in cut] for ln in lines]


# -- against the API server --------------------------------------------------------------------


@apiserver
def test_crds_are_established(crds: dict[str, dict[str, Any]], kubectl: Kubectl) -> None:
    """All five CRDs install server-side, are Established, and have the documented names."""
    assert set(crds) == {BN_CRD, PP_CRD, NS_CRD, PEERING_CRD, HPP_CRD}
    for name in crds:
        crd = kubectl.json("get", "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", (name, conditions)
        assert conditions["NamesAccepted"] == "True", (name, conditions)
    expected = {
        BN_CRD: ("Cluster", ["bn"]),
        PP_CRD: ("Namespaced", ["pp"]),
        NS_CRD: ("Cluster", ["bpns"]),
        HPP_CRD: ("Cluster", ["hpp"]),
    }
    for name, (scope, short) in expected.items():
        spec = kubectl.json("get", "crd", name)["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["shortNames"]) == (
            "bridgeport.io",
            scope,
            short,
        )
        assert spec["names"]["categories"] == ["bridgeport"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        # A HostPortPolicy is only read (by admission): it has no status.
        assert version.get("subresources") == (None if name == HPP_CRD else {"status": {}})
    peering = kubectl.json("get", "crd", PEERING_CRD)["spec"]
    assert (peering["group"], peering["scope"], peering["names"]["kind"]) == (
        "kopf.dev",
        "Cluster",
        "ClusterKopfPeering",
    )
    resources = kubectl.ok("api-resources", "--api-group=bridgeport.io", "-o", "name")
    assert set(resources.split()) == {
        f"{p}.bridgeport.io"
        for p in ("bridgenetworks", "portpublications", "nodestates", "hostportpolicies")
    }
    assert kubectl("get", "bridgeport", "-A").rc == 0


@pytest.fixture
def applied_examples(crds: Any, kubectl: Kubectl) -> Iterator[list[dict[str, Any]]]:
    """examples/*.yaml applied with strict field validation; deleted afterwards."""
    files = sorted(EXAMPLES_DIR.glob("*.yaml"))
    args = [a for f in files for a in ("-f", str(f))]
    kubectl.ok("apply", "--validate=strict", *args)
    try:
        yield [doc for f in files for doc in load_manifests(f)]
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", *args)


def get(kubectl: Kubectl, doc: dict[str, Any]) -> dict[str, Any]:
    resource = "bn" if doc["kind"] == specs.BRIDGE_NETWORK else "pp"
    ns = doc["metadata"].get("namespace")
    obj: dict[str, Any] = kubectl.json(
        "get", resource, doc["metadata"]["name"], *(["-n", ns] if ns else [])
    )
    return obj


@apiserver
def test_examples_apply_and_read_back_with_defaults(
    applied_examples: list[dict[str, Any]], kubectl: Kubectl
) -> None:
    """examples/*.yaml are accepted; the server adds only the schema defaults; same spec."""
    assert {d["kind"] for d in applied_examples} == set(specs.KINDS)
    for doc in applied_examples:
        obj = get(kubectl, doc)
        crd = BN_CRD if doc["kind"] == specs.BRIDGE_NETWORK else PP_CRD
        defaults = {
            name: prop["default"]
            for name, prop in schema_at(crd, "spec")["properties"].items()
            if "default" in prop
        }
        assert obj["spec"] == {**defaults, **doc["spec"]}, doc["metadata"]["name"]
        assert same_spec(parsed(doc), parsed(obj))
    dns = get(kubectl, next(d for d in applied_examples if d["metadata"]["name"] == "dns-range"))
    assert dns["spec"]["loopback"] == "Auto"  # not in the file


@apiserver
def test_minimal_resources_get_the_agents_defaults(
    crds: Any, kubectl: Kubectl, namespace: str
) -> None:
    """A resource with only required fields reads back with the agent's defaults."""
    bn = minimal(specs.BRIDGE_NETWORK)
    bn["metadata"]["name"] = f"minimal-{namespace}"
    pp = minimal(specs.PORT_PUBLICATION)
    pp["metadata"]["namespace"] = namespace
    kubectl.ok(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [bn, pp]}),
    )
    try:
        got_bn, got_pp = get(kubectl, bn), get(kubectl, pp)
        assert got_bn["spec"] == {
            **bn["spec"],
            "mtu": 1500,
            "masquerade": True,
            "internal": False,
            "interContainer": True,
            "isolation": "Isolated",
            "gatewayMode": "nat",
            "gatewayMode6": "nat",
        }
        assert got_pp["spec"] == {**pp["spec"], "protocol": "TCP", "loopback": "Auto"}
        assert same_spec(parsed(bn), parsed(got_bn))
        assert same_spec(parsed(pp), parsed(got_pp))
    finally:
        kubectl("delete", "bn", bn["metadata"]["name"], "--wait=false")


@apiserver
@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=lambda p: p.stem)
def test_invalid_example_is_refused(path: Path, crds: Any, kubectl: Kubectl) -> None:
    """The server refuses the file with a message naming the field; so does the agent."""
    example = InvalidExample.load(path)
    agent = specs.parse(example.doc)
    assert isinstance(agent, specs.InvalidResource), "the agent accepts it"
    assert example.field in agent.message, agent.message
    # --validate=false (fieldValidation=Ignore): the server's schema refuses it, not kubectl.
    validate = "--validate=strict" if example.strict else "--validate=false"
    result = kubectl("create", validate, "-f", str(path))
    if result.rc == 0:  # leave nothing behind for the other tests
        kubectl("delete", "-f", str(path), "--wait=false")
    assert result.rc != 0, f"the server accepted {path.name}"
    assert example.field in result.stderr, result.stderr
    for text in example.expect:
        assert text in result.stderr, result.stderr


@apiserver
def test_unknown_fields_are_pruned_without_strict_validation(
    crds: Any, kubectl: Kubectl, kube_client: Any
) -> None:
    """Without Strict field validation the server drops an unknown field (Warn: with a warning)."""
    from kubernetes import client

    example = InvalidExample.load(INVALID_DIR / "pp-unknown-field.yaml")
    assert example.strict
    name = example.doc["metadata"]["name"]
    result = kubectl("create", "--validate=warn", "-f", str(example.path))
    try:
        assert result.rc == 0, result.stderr
        assert 'Warning: unknown field "spec.loopBack"' in result.stderr
        spec = kubectl.json("get", "pp", name, "-n", "default")["spec"]
        assert "loopBack" not in spec
        assert spec["loopback"] == "Auto"
    finally:
        kubectl("delete", "pp", name, "-n", "default", "--wait=true")
    # The API's own default (no fieldValidation parameter) prunes too.
    api: Any = client.CustomObjectsApi(kube_client)
    created = api.create_namespaced_custom_object(
        "bridgeport.io", "v1alpha1", "default", "portpublications", example.doc
    )
    try:
        assert "loopBack" not in created["spec"]
    finally:
        api.delete_namespaced_custom_object(
            "bridgeport.io", "v1alpha1", "default", "portpublications", name
        )


# (description, document, accepted by the server, accepted by the agent)
DIFFERENCES: list[tuple[str, dict[str, Any], bool, bool]] = [
    # Only the agent can check these: no IPv6 arithmetic in 1.28's CEL.
    ("subnet6 host bits", minimal(specs.BRIDGE_NETWORK, subnet6="fd00:77::1/64"), True, False),
    (
        "gateway6 outside subnet6",
        minimal(specs.BRIDGE_NETWORK, subnet6="fd00:77::/64", gateway6="fd00:78::1"),
        True,
        False,
    ),
    (
        "gateway6 is the subnet6 address",
        minimal(specs.BRIDGE_NETWORK, subnet6="fd00:77::/64", gateway6="fd00:77::"),
        True,
        False,
    ),
    # The schema is stricter: only the canonical CIDR and address forms.
    ("netmask form", minimal(specs.BRIDGE_NETWORK, subnet="10.77.0.0/255.255.255.0"), False, True),
    ("leading zero in prefix", minimal(specs.BRIDGE_NETWORK, subnet="10.77.0.0/024"), False, True),
    (
        "IPv6 zone",
        minimal(
            specs.PORT_PUBLICATION, hostIP="fe80::1%eth0", target={"address": "fe80::2", "port": 80}
        ),
        False,
        True,
    ),
    # CEL cost bound: at most 64 matchLabels.
    (
        "65 matchLabels",
        minimal(
            specs.PORT_PUBLICATION, nodeSelector={"matchLabels": {f"k{i}": "v" for i in range(65)}}
        ),
        False,
        True,
    ),
]


@apiserver
@pytest.mark.parametrize(
    ("what", "doc", "server", "agent"), DIFFERENCES, ids=[d[0] for d in DIFFERENCES]
)
def test_known_differences_between_schema_and_agent(
    what: str, doc: dict[str, Any], server: bool, agent: bool, crds: Any, kubectl: Kubectl
) -> None:
    """Documents what only the agent checks and where the schema is stricter than the agent."""
    assert isinstance(specs.parse(doc), specs.InvalidResource) is not agent, what
    result = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(doc))
    assert (result.rc == 0) is server, result.stderr


# Docker's everyday forms: both the schema and the agent accept them.
DUAL = {"address": "10.77.0.2", "address6": "fd00:77::2", "port": 80}
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("hostIP 0.0.0.0", minimal(specs.PORT_PUBLICATION, hostIP="0.0.0.0")),
    (
        "hostIP ::",
        minimal(specs.PORT_PUBLICATION, hostIP="::", target={"address": "fd00:77::2", "port": 80}),
    ),
    ("dual-stack target", minimal(specs.PORT_PUBLICATION, target=DUAL)),
    ("dual-stack target on ::1", minimal(specs.PORT_PUBLICATION, hostIP="::1", target=DUAL)),
    # -p 80, -p 8000-8100:80, -p 80-85: the node assigns the host ports
    ("no hostPort", without_host_port(minimal(specs.PORT_PUBLICATION))),
    (
        "assignFrom a range",
        without_host_port(minimal(specs.PORT_PUBLICATION, assignFrom={"start": 8000, "end": 8100})),
    ),
    (
        "assignFrom a count",
        without_host_port(minimal(specs.PORT_PUBLICATION, assignFrom={"count": 6})),
    ),
]


@apiserver
@pytest.mark.parametrize(("what", "doc"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_docker_forms_are_accepted(
    what: str, doc: dict[str, Any], crds: Any, kubectl: Kubectl
) -> None:
    """0.0.0.0, :: and dual-stack targets pass the server's schema and the agent's parser."""
    parsed(doc)
    result = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(doc))
    assert result.rc == 0, result.stderr


# (subnet, subnet6, accepted): the semantic subnet rules, one table for the agent and the CEL.
SUBNETS: list[tuple[str, str | None, bool]] = [
    ("0.0.0.0/0", None, False),
    ("10.0.0.0/7", None, False),
    ("10.0.0.0/8", None, True),
    ("0.0.0.0/8", None, False),
    ("127.0.0.0/8", None, False),
    ("127.5.0.0/16", None, False),
    ("169.254.0.0/16", None, False),
    ("169.254.7.0/24", None, False),
    ("169.0.0.0/8", None, False),
    ("169.128.0.0/9", None, False),
    ("169.0.0.0/9", None, True),
    ("169.252.0.0/15", None, True),
    ("169.254.0.0/15", None, False),
    ("224.0.0.0/8", None, False),
    ("239.1.0.0/16", None, False),
    ("240.0.0.0/8", None, False),
    ("255.255.255.252/30", None, False),
    ("223.255.255.252/30", None, True),
    ("192.168.0.0/16", None, True),
    ("11.0.0.0/8", None, True),
    ("10.77.0.0/24", "fd00::/8", False),
    ("10.77.0.0/24", "fd00::/16", True),
    ("10.77.0.0/24", "::/0", False),
    ("10.77.0.0/24", "::1/128", False),
    ("10.77.0.0/24", "::ffff:0:0/96", False),
    ("10.77.0.0/24", "0:1::/32", False),
    ("10.77.0.0/24", "fe80::/64", False),
    ("10.77.0.0/24", "febf:1::/32", False),
    ("10.77.0.0/24", "fec0::/64", True),
    ("10.77.0.0/24", "fe8::/64", True),
    ("10.77.0.0/24", "ff02::/64", False),
    ("10.77.0.0/24", "2001:db8::/32", True),
]


def subnet_doc(subnet: str, subnet6: str | None) -> dict[str, Any]:
    return minimal(specs.BRIDGE_NETWORK, subnet=subnet, **({"subnet6": subnet6} if subnet6 else {}))


@pytest.mark.parametrize(("subnet", "subnet6", "accepted"), SUBNETS)
def test_agent_subnet_rules(subnet: str, subnet6: str | None, accepted: bool) -> None:
    """Prefix bounds and reserved ranges (issue 11, case 7: 0.0.0.0/0 was accepted)."""
    result = specs.parse(subnet_doc(subnet, subnet6))
    assert isinstance(result, specs.InvalidResource) is not accepted, result


@apiserver
def test_cel_subnet_rules_are_the_agents(crds: Any, kubectl: Kubectl) -> None:
    """The server's CEL rules give the agent's verdict on every row of the table."""
    for subnet, subnet6, accepted in SUBNETS:
        result = kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(subnet_doc(subnet, subnet6))
        )
        assert (result.rc == 0) is accepted, (subnet, subnet6, result.stderr)


@apiserver
def test_printer_columns(applied_examples: list[dict[str, Any]], kubectl: Kubectl) -> None:
    """kubectl get pp / bn / bpns print the documented columns."""
    header, rows = table(kubectl.ok("get", "pp", "-n", "default"))
    assert header == [
        "NAME",
        "PROTOCOL",
        "HOST IP",
        "PORTS",
        "TO",
        "ASSIGNED",
        "TARGET",
        "TARGET PORT",
        "READY",
        "AGE",
    ]
    dns = next(r for r in rows if r[0] == "dns-range")
    assert dns[1:8] == ["UDP", "", "5300", "5302", "", "192.168.99.3", "5300"]
    header, _ = table(kubectl.ok("get", "pp", "-n", "default", "-o", "wide"))
    assert header[-4:] == ["NETWORK", "LOOPBACK", "READY", "AGE"]
    header, rows = table(kubectl.ok("get", "bn"))
    assert header == ["NAME", "BRIDGE", "SUBNET", "READY", "AGE"]
    assert rows[0][:3] == ["demo", "bp-demo", "192.168.99.0/24"]
    header, _ = table(kubectl.ok("get", "bn", "-o", "wide"))
    assert header == ["NAME", "BRIDGE", "SUBNET", "GATEWAY", "SUBNET6", "ISOLATION", "READY", "AGE"]
    node = "printer-node"
    kubectl.ok("create", "-f", "-", input=json.dumps(nodestate(node)))
    try:
        header, _ = table(kubectl.ok("get", "bpns", node))
        assert header == ["NAME", "APPLIED", "CONFLICTED", "LAST SYNC", "AGE"]
        everything = kubectl.ok("get", "bridgeport", "-A", "-o", "name")
        assert {
            "bridgenetwork.bridgeport.io/demo",
            "portpublication.bridgeport.io/web",
            f"nodestate.bridgeport.io/{node}",
        } <= set(everything.split())
    finally:
        kubectl("delete", "bpns", node, "--wait=false")


def api_message(exc: Any) -> str:
    """The message of a kubernetes.client ApiException's Status body."""
    return str(json.loads(exc.body or "{}").get("message", ""))


# -- NodeState ---------------------------------------------------------------------------------


def nodestate(node: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": API,
        "kind": "NodeState",
        "metadata": {"name": node},
        "spec": {"nodeName": node},
    }
    if status is not None:
        doc["status"] = status
    return doc


def agent_status(n: int = 2) -> dict[str, Any]:
    """NodeState.status exactly as the agent builds it (bridgeport.core.report)."""
    from bridgeport.core.report import Entry, Report
    from bridgeport.core.specs import ResourceRef

    entries = [
        Entry(
            "n",
            ResourceRef(specs.BRIDGE_NETWORK, "", "demo"),
            "0b8e6f0e-0000-4000-8000-000000000001",
            1,
            "Applied",
            "Programmed",
        )
    ]
    entries += [
        Entry(
            "n",
            ResourceRef(specs.PORT_PUBLICATION, "default", f"pp-{i}"),
            f"0b8e6f0e-0000-4000-8000-{i:012d}",
            3,
            "Conflicted",
            "PortTaken",
            "8080/TCP is published by default/web (older)",
        )
        for i in range(n - 1)
    ]
    report = Report(
        node="n",
        agent_version="0.1.0",
        last_sync="2026-01-02T03:04:05.678+00:00",
        last_sync_ms=1.5,
        table_digest="sha256:" + "ab" * 32,
        counts={"Applied": 1, "Conflicted": n - 1, "bridges": 1, "dnat": 0, "proxies": 0},
        entries=tuple(entries),
        errors=("sysctl net.ipv4.ip_forward is 0",),
    )
    return report.status()[0]


@apiserver
def test_nodestate_status_only_through_the_status_subresource(crds: Any, kube_client: Any) -> None:
    """.status sent to the main resource is dropped; the agent's status document is stored whole."""
    from kubernetes import client

    api: Any = client.CustomObjectsApi(kube_client)
    node = "status-node"
    args = ("bridgeport.io", "v1alpha1", "nodestates")
    status = agent_status()
    created = api.create_cluster_custom_object(*args, nodestate(node, status))
    try:
        assert "status" not in created
        patched = api.patch_cluster_custom_object(*args, node, {"status": status})
        assert "status" not in patched
        written = api.patch_cluster_custom_object_status(*args, node, {"status": status})
        assert written["status"] == status  # nothing pruned: the schema knows every field
        # The status subresource ignores spec; the main resource ignores status.
        spec_via_status = api.patch_cluster_custom_object_status(
            *args, node, {"spec": {"nodeName": "other"}, "status": {"agentVersion": "0.2.0"}}
        )
        assert spec_via_status["spec"] == {"nodeName": node}
        assert spec_via_status["status"]["agentVersion"] == "0.2.0"
        bad = copy.deepcopy(status)
        bad["resources"][0]["state"] = "Sleeping"
        with pytest.raises(client.ApiException) as err:
            api.patch_cluster_custom_object_status(*args, node, {"status": bad})
        assert err.value.status == 422
        assert 'Unsupported value: "Sleeping"' in api_message(err.value)
    finally:
        api.delete_cluster_custom_object(*args, node)
    with pytest.raises(client.ApiException) as err:
        api.create_cluster_custom_object(*args, {**nodestate(node), "spec": {"nodeName": "x"}})
    assert err.value.status == 422
    assert "spec.nodeName must equal metadata.name" in api_message(err.value)


@apiserver
def test_nodestate_holds_a_10000_resource_report(crds: Any, kube_client: Any) -> None:
    """No maxItems on status.resources: a node with 10,000 resources can report them all."""
    from kubernetes import client

    api: Any = client.CustomObjectsApi(kube_client)
    node = "big-node"
    args = ("bridgeport.io", "v1alpha1", "nodestates")
    # The compact form (~120 bytes an entry); the whole object must stay under etcd's
    # request limit (1.5 MiB by default).
    resources = [
        {
            "kind": specs.PORT_PUBLICATION,
            "namespace": "default",
            "name": f"pp-{i:05d}",
            "observedGeneration": 1,
            "state": "Applied",
        }
        for i in range(10_000)
    ]
    api.create_cluster_custom_object(*args, nodestate(node))
    try:
        api.patch_cluster_custom_object_status(
            *args, node, {"status": {"counts": {"Applied": 10_000}, "resources": resources}}
        )
        got = api.get_cluster_custom_object(*args, node)
        assert len(got["status"]["resources"]) == 10_000
    finally:
        api.delete_cluster_custom_object(*args, node)


@apiserver
def test_nodestate_holds_a_20000_publication_report(crds: Any, kube_client: Any) -> None:
    """The agent's report of 20,000 Applied publications and 500 problems: every outcome is
    in it (500 entries, 20,000 in the digests), a few dozen KB."""
    from kubernetes import client

    from bridgeport.core.report import Entry, Report
    from bridgeport.core.specs import ResourceRef

    api: Any = client.CustomObjectsApi(kube_client)
    node = "huge-node"
    args = ("bridgeport.io", "v1alpha1", "nodestates")
    entries = tuple(
        Entry(
            node,
            ResourceRef(specs.PORT_PUBLICATION, "default", f"pp-{i:05d}"),
            f"u-{i}",
            1,
            *(("Applied", "Programmed") if i >= 500 else ("Conflicted", "PortTaken")),
            "taken",
        )
        for i in range(20_500)
    )
    status = Report(
        node=node,
        agent_version="0.1.0",
        last_sync="2026-01-02T03:04:05.678+00:00",
        last_sync_ms=1.0,
        table_digest="x",
        counts={"Applied": 20_000, "Conflicted": 500},
        entries=entries,
        labels={"zone": "a"},
    ).status()[0]
    assert len(json.dumps(status)) < 100_000
    api.create_cluster_custom_object(*args, nodestate(node))
    try:
        api.patch_cluster_custom_object_status(*args, node, {"status": status})
        got = api.get_cluster_custom_object(*args, node)["status"]
        assert got["applied"]["count"] == 20_000 and len(got["resources"]) == 500
        assert got == status
    finally:
        api.delete_cluster_custom_object(*args, node)


# -- resource status (the controller's side) ---------------------------------------------------


def condition(type_: str, status: str = "True", reason: str = "AllNodesReady") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "observedGeneration": 1,
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "reason": reason,
        "message": "",
    }


@apiserver
def test_resource_status_accepts_the_controller_shape(
    crds: Any, kubectl: Kubectl, namespace: str
) -> None:
    """Conditions (metav1.Condition, keyed by type), node counts, ready and problemNodes."""
    pp = minimal(specs.PORT_PUBLICATION)
    pp["metadata"]["namespace"] = namespace
    kubectl.ok("create", "-f", "-", input=json.dumps(pp))
    status = {
        "observedGeneration": 1,
        "ready": "2/3",
        "nodes": {"selected": 3, "ready": 2},
        "conditions": [
            condition("Ready", "False", "SomeNodesNotReady"),
            condition("Programmed"),
            condition("Conflicted", "False"),
        ],
        "problemNodes": [
            {
                "node": "node-3",
                "state": "Conflicted",
                "reason": "PortTaken",
                "message": "8080/TCP is published by default/web",
            }
        ],
    }

    def patch(body: dict[str, Any]) -> tuple[int, str]:
        rc, _, err = kubectl(
            "patch",
            "pp",
            "minimal",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": body}),
        )
        return rc, err

    assert patch(status) == (0, "")
    got = kubectl.json("get", "pp", "minimal", "-n", namespace)
    assert got["status"] == status
    header, rows = table(kubectl.ok("get", "pp", "minimal", "-n", namespace))
    assert rows[0][header.index("READY")] == "2/3"
    too_many = [{"node": f"node-{i}", "state": "Failed"} for i in range(17)]
    rc, err = patch({"problemNodes": too_many})
    assert rc != 0
    assert "status.problemNodes: Too many: 17: must have at most 16 items" in err
    no_reason = {k: v for k, v in condition("Ready").items() if k != "reason"}
    rc, err = patch({"conditions": [no_reason]})
    assert rc != 0
    assert "status.conditions[0].reason: Required value" in err
    rc, err = patch({"conditions": [condition("Ready", "Maybe")]})
    assert rc != 0
    assert 'Unsupported value: "Maybe"' in err
    # Assigned host ports, as core.status writes them, and their removal (merge patch null).
    from bridgeport.core.report import Entry
    from bridgeport.core.status import assigned_ports

    ref = specs.ResourceRef(specs.PORT_PUBLICATION, namespace, "minimal")
    assigned = assigned_ports(
        [
            Entry("node-1", ref, "", 1, "Applied", assigned=(40000, 40000)),
            Entry("node-2", ref, "", 1, "Applied", assigned=(40001, 40003)),
        ]
    )
    assert patch(assigned) == (0, "")
    got = kubectl.json("get", "pp", "minimal", "-n", namespace)
    assert got["status"]["assignedPorts"] == assigned["assignedPorts"]
    header, rows = table(kubectl.ok("get", "pp", "minimal", "-n", namespace))
    assert rows[0][header.index("ASSIGNED")] == "2 ports on 2 nodes"
    assert "Assigned Ports" in kubectl.ok("describe", "pp", "minimal", "-n", namespace)
    assert patch({"assignedPort": None, "assignedPorts": None}) == (0, "")
    assert "assignedPorts" not in kubectl.json("get", "pp", "minimal", "-n", namespace)["status"]


# -- the schema against the agent (no cluster) -------------------------------------------------


def test_schema_enums_are_the_agents() -> None:
    """Enum values in the CRDs are the agent's enums, so they cannot drift apart."""

    def enum(crd: str, path: str) -> list[str]:
        return list(schema_at(crd, path)["enum"])

    assert enum(PP_CRD, "spec.protocol") == [p.value for p in specs.Protocol]
    assert enum(PP_CRD, "spec.loopback") == [p.value for p in specs.LoopbackPolicy]
    assert enum(BN_CRD, "spec.isolation") == [i.value for i in specs.Isolation]
    for mode in ("gatewayMode", "gatewayMode6"):
        assert enum(BN_CRD, f"spec.{mode}") == [m.value for m in specs.GatewayMode]
    resources = schema_at(NS_CRD, "status.resources")["items"]["properties"]
    assert resources["state"]["enum"] == [s.value for s in State]
    assert resources["kind"]["enum"] == list(specs.KINDS)
    # Every enum (also the selector operators): each value parses, anything else does not.
    for kind, crd in ((specs.BRIDGE_NETWORK, BN_CRD), (specs.PORT_PUBLICATION, PP_CRD)):
        for path, node in walk(schema_at(crd, "spec")):
            if "enum" not in node:
                continue
            for value in [*node["enum"], "Bogus"]:
                doc = with_value(minimal(kind), path, value)
                invalid = isinstance(specs.parse(doc), specs.InvalidResource)
                assert invalid is (value == "Bogus"), (kind, path, value)


def test_schema_list_bounds_are_the_writers() -> None:
    """maxItems of problemNodes and NodeState errors are the limits the writers cut at."""
    from bridgeport.core.report import MAX_ERRORS
    from bridgeport.core.status import MAX_ASSIGNED_NODES, MAX_PROBLEM_NODES

    for crd in (BN_CRD, PP_CRD):
        assert schema_at(crd, "status.problemNodes")["maxItems"] == MAX_PROBLEM_NODES
    assert schema_at(PP_CRD, "status.assignedPorts")["maxItems"] == MAX_ASSIGNED_NODES
    assert schema_at(NS_CRD, "status.errors")["maxItems"] == MAX_ERRORS
    assert "maxItems" not in schema_at(NS_CRD, "status.resources")


def with_value(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``doc`` with the spec field at ``path`` (``[]`` = first list item) set to ``value``."""
    doc = copy.deepcopy(doc)
    if path == "nodeSelector.matchExpressions[].operator":
        values = ["a"] if value in ("In", "NotIn") else []
        doc["spec"]["nodeSelector"] = {
            "matchExpressions": [{"key": "k", "operator": value, "values": values}]
        }
        return doc
    if path.startswith("gatewayMode") and value == "isolated":
        doc["spec"]["internal"] = True  # the one mode that needs another field
    node = doc["spec"]
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


def test_schema_defaults_are_the_agents() -> None:
    """Each schema default is what the agent assumes when the field is absent."""
    for kind, crd in ((specs.BRIDGE_NETWORK, BN_CRD), (specs.PORT_PUBLICATION, PP_CRD)):
        agent = parsed(minimal(kind))
        defaults = {
            name: prop["default"]
            for name, prop in schema_at(crd, "spec")["properties"].items()
            if "default" in prop
        }
        assert defaults, crd
        for name, default in defaults.items():
            assert getattr(agent, snake(name)) == default, (kind, name)


PORT_FIELDS = ("hostPort", "hostPortEnd", "target.port")
ASSIGN_FIELDS = ("assignFrom.start", "assignFrom.end")  # given together, without hostPort


def test_schema_integer_bounds_are_the_agents() -> None:
    """minimum/maximum of every integer spec field: the agent accepts them, not one beyond."""
    checked = []
    for kind, crd in ((specs.BRIDGE_NETWORK, BN_CRD), (specs.PORT_PUBLICATION, PP_CRD)):
        for path, node in walk(schema_at(crd, "spec")):
            if node.get("type") != "integer":
                continue
            assert "minimum" in node and "maximum" in node, path
            for value, valid in (
                (node["minimum"], True),
                (node["maximum"], True),
                (node["minimum"] - 1, False),
                (node["maximum"] + 1, False),
            ):
                doc = minimal(kind)
                if path.startswith("assignFrom."):
                    del doc["spec"]["hostPort"]
                # One port number for all three keeps the range valid at the bounds.
                group = next((g for g in (PORT_FIELDS, ASSIGN_FIELDS) if path in g), (path,))
                for p in group if valid else (path,):
                    doc = with_value(doc, p, value)
                invalid = isinstance(specs.parse(doc), specs.InvalidResource)
                assert invalid is not valid, (kind, path, value)
            checked.append(path)
    assert sorted(checked) == [
        "assignFrom.count",
        "assignFrom.end",
        "assignFrom.start",
        "hostPort",
        "hostPortEnd",
        "mtu",
        "target.port",
    ]


def ip_samples(rng: random.Random, count: int) -> Iterator[str]:
    """IPv4/IPv6 addresses in every textual form, and near-misses made from them."""
    for _ in range(count):
        v6 = ipaddress.IPv6Address(
            rng.choice(
                [rng.getrandbits(128), rng.getrandbits(16) << rng.choice((0, 16, 64, 112)), 0, 1]
            )
        )
        v4 = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        groups = [g.lstrip("0") or "0" for g in v6.exploded.split(":")]
        i = rng.randrange(8)
        j = rng.randrange(i, 9)
        k = rng.randrange(7)
        forms = [
            v4,
            v6.compressed,
            v6.exploded,
            v6.compressed.upper(),
            ":".join(groups[:i]) + "::" + ":".join(groups[j:]),
            ":".join(groups[:6]) + ":" + v4,
            ":".join(groups[:k]) + "::" + v4,
            "01.2.3.4",
            "1.2.3",
            "::1::",
            ":1::",
        ]
        for form in forms:
            yield form
            chars = list(form)
            pos = rng.randrange(len(chars) + 1)
            chars.insert(pos, rng.choice(":.0a9g/"))
            yield "".join(chars)
            if len(form) > 1:
                yield form[:pos] + form[pos + 1 :]


def python_accepts(text: str, version: int, network: bool = False) -> bool:
    try:
        value: Any = (
            ipaddress.ip_network(text, strict=False) if network else ipaddress.ip_address(text)
        )
    except ValueError:
        return False
    return bool(value.version == version)


def test_ip_patterns_accept_what_python_ipaddress_accepts() -> None:
    """The schema's IP and CIDR patterns agree with ipaddress (as the agent parses them)."""
    bn = schema_at(BN_CRD, "spec")["properties"]
    pp = schema_at(PP_CRD, "spec")["properties"]
    v4, v6 = (re.compile(bn[f]["pattern"]) for f in ("gateway", "gateway6"))
    either = re.compile(pp["hostIP"]["pattern"])
    assert pp["target"]["properties"]["address"]["pattern"] == pp["hostIP"]["pattern"]
    assert bn["hostBinding"]["pattern"] == pp["hostIP"]["pattern"]
    assert bn["egressAddress"]["pattern"] == bn["gateway"]["pattern"]
    assert bn["egressAddress6"]["pattern"] == bn["gateway6"]["pattern"]
    cidr4, cidr6 = (re.compile(bn[f]["pattern"]) for f in ("subnet", "subnet6"))
    rng = random.Random(2028)
    for text in ip_samples(rng, 300):
        is4, is6 = python_accepts(text, 4), python_accepts(text, 6)
        assert (bool(v4.match(text)), bool(v6.match(text)), bool(either.match(text))) == (
            is4,
            is6,
            is4 or is6,
        ), text
        for prefix in ("0", "32", "33", "128", "129"):
            cidr = f"{text}/{prefix}"
            assert bool(cidr4.match(cidr)) == python_accepts(cidr, 4, network=True), cidr
            assert bool(cidr6.match(cidr)) == python_accepts(cidr, 6, network=True), cidr
    # The agent's bridge name and network name patterns are the schema's.
    assert bn["bridge"]["pattern"] == specs.IFNAME.pattern
    assert pp["network"]["pattern"] == specs._DNS_SUBDOMAIN.pattern


def test_every_cel_rule_has_an_invalid_example() -> None:
    """Each BridgeNetwork / PortPublication CEL rule is exercised by a file in examples/invalid."""
    expects = [e for p in INVALID_EXAMPLES for e in InvalidExample.load(p).expect]
    for crd in (BN_CRD, PP_CRD):
        for path, rule in cel_rules(crd):
            assert any(e in rule["message"] or rule["message"] in e for e in expects), (
                f"{crd} {path}: no invalid example for {rule['message']!r}"
            )


# Functions, macros and receiver methods of the CEL environment of Kubernetes 1.28: the standard
# definitions, the strings extension version 0, and Kubernetes' regex/list/URL libraries.
CEL_1_28 = {
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "find",
    "findAll",
    "isSorted",
    "sum",
    "min",
    "max",
    "url",
    "isURL",
}


def test_cel_uses_only_kubernetes_1_28_functions() -> None:
    """No CEL function newer than Kubernetes 1.28 (ip(), cidr(), isIP(), format(), sets, ...)."""
    allowed_keys = {"rule", "message", "messageExpression", "fieldPath", "reason"}
    for crd in crd_manifests():
        for path, rule in cel_rules(crd):
            assert set(rule) <= allowed_keys, (crd, path, rule)
            assert "oldSelf" not in rule["rule"], (crd, path)  # no transition rules
            for expr in (rule["rule"], rule.get("messageExpression", "")):
                code = re.sub(r"'[^']*'", "''", expr)  # drop string literals (regexes)
                used = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", code))
                assert used <= CEL_1_28, (crd, path, used - CEL_1_28)
