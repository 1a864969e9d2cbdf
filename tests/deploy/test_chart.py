"""The Helm chart (charts/bridgeport): lint, rendering, the values schema, pod security, CRDs.

Everything here runs `helm` only (built once by hack/helm.sh into the cache, ~4 min the first
time), except the one `kube` test that asks the real API server to validate every object.
The RBAC the chart grants is proven by tests/deploy/test_rbac.py.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgeport.cli import parser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bridgeport"
CRDS = REPO / "crds"
HELM_SH = REPO / "hack" / "helm.sh"
RELEASE, NAMESPACE = "bp", "bridgeport-system"


@functools.cache
def helm_binary() -> str:
    """Path of the cached helm (hack/helm.sh builds it on first use)."""
    proc = subprocess.run([str(HELM_SH)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"hack/helm.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def set_args(values: Mapping[str, Any]) -> list[str]:
    """--set-string / --set-json flags for flat dotted keys (strings stay strings)."""
    out: list[str] = []
    for key, value in values.items():
        if isinstance(value, str):
            out += ["--set-string", f"{key}={value}"]
        else:
            out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """`helm template` as a list of objects."""
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values or {})]
    if include_crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def render_text(values: Mapping[str, Any] | None = None, **kw: Any) -> str:
    return yaml.safe_dump_all(render(values, **kw))


def find(objs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        dict(o)
        for o in objs
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def crd_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(CRDS.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


# -- lint and schema ---------------------------------------------------------------------------

ALL_FEATURES = {
    "nodeStatePolicy.enabled": True,
    "metrics.serviceMonitor.enabled": True,
    "agent.sysctls.manage": True,
    "controller.replicas": 2,
}


@pytest.mark.parametrize("values", [{}, ALL_FEATURES], ids=["defaults", "all-features"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), *set_args(values))
    assert "0 chart(s) failed" in proc.stdout
    findings = [ln for ln in proc.stdout.splitlines() if ln.startswith(("[WARNING]", "[ERROR]"))]
    assert findings == []


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("agent.resync", "x", "/agent/resync"),
        ("controller.replicas", "two", "/controller/replicas"),
        ("agent.healthPort", "9103", "/agent/healthPort"),
        ("image.pullPolicy", "Sometimes", "/image/pullPolicy"),
        ("agent.sysctls.manage", "yes", "/agent/sysctls/manage"),
        ("agent.updateStrategy.maxUnavailable", "lots", "/agent/updateStrategy/maxUnavailable"),
        ("agent.resyncSeconds", "30", "resyncSeconds"),  # a typo'd key is not silently ignored
        ("agent.acceptFwmark", "mark", "/agent/acceptFwmark"),
        ("agent.proxyLimits.connectTimeout", "soon", "/agent/proxyLimits/connectTimeout"),
    ],
)
def test_schema_rejects_wrong_values(key: str, value: str, complaint: str) -> None:
    for command in (["template", RELEASE], ["lint"]):
        proc = helm(*command, str(CHART), "--set-string", f"{key}={value}", check=False)
        assert proc.returncode != 0, f"helm {command[0]} accepted {key}={value!r}"
        assert complaint in proc.stdout + proc.stderr


def test_schema_accepts_documented_alternatives() -> None:
    objs = render(
        {
            "agent.updateStrategy.maxUnavailable": "10%",
            "agent.resync": 7.5,
            "agent.metricsPort": 0,
            "controller.peering.enabled": False,
            "agent.acceptFwmark": "0x10000/0x10000",
        }
    )
    ds = find(objs, "DaemonSet")
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--resync=7.5" in args and "--metrics-port=0" in args
    assert "--accept-fwmark=0x10000/0x10000" in args
    assert not [
        a
        for a in find(render(), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--accept-fwmark")
    ]
    assert not [s for s in objs if s["kind"] == "Service" and "agent" in s["metadata"]["name"]]
    dep = find(objs, "Deployment")
    assert "--no-peering" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [o for o in objs if o["kind"] == "ClusterKopfPeering"]


@pytest.mark.parametrize(
    "values",
    [{}, {"agent.proxyLimits.maxConnections": 0}, {"agent.proxyLimits.connectTimeout": 0}],
    ids=["defaults", "no-connections", "no-connect-time"],
)
def test_schema_bounds_the_proxy_limits(values: dict[str, Any]) -> None:
    """Typed values too: 0 connections or a 0 s connect timeout is refused by the schema,
    as the agent's flags refuse it (a chart that renders must give an agent that starts)."""
    proc = helm("template", RELEASE, str(CHART), *set_args(values), check=False)
    assert (proc.returncode == 0) == (not values), proc.stderr


LIMITS = {
    "agent.proxyLimits.maxConnections": 100,
    "agent.proxyLimits.connectTimeout": 2.5,
    "agent.proxyLimits.maxUdpFlows": 50,
}


@pytest.mark.parametrize(
    ("values", "limits"),
    [({}, (4096, 5.0, 4096)), (ALL_FEATURES, (4096, 5.0, 4096)), (LIMITS, (100, 2.5, 50))],
    ids=["defaults", "all-features", "limits"],
)
def test_rendered_agent_args_parse(values: dict[str, Any], limits: tuple[Any, ...]) -> None:
    """Every flag the chart renders is one the agent accepts, with the values the chart says."""
    c = find(render(values), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    args = parser().parse_args(c["args"])
    assert args.command == "agent" and args.source == "kube"
    got = (args.proxy_max_connections, args.proxy_connect_timeout, args.proxy_max_udp_flows)
    assert got == limits


# -- what the defaults render ------------------------------------------------------------------


def test_defaults_render_the_expected_objects() -> None:
    objs = render()
    got = sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", "")) for o in objs
    )
    ns = NAMESPACE
    assert got == sorted(
        [
            ("ServiceAccount", "bp-bridgeport-agent", ns),
            ("ServiceAccount", "bp-bridgeport-controller", ns),
            ("ClusterRole", "bp-bridgeport-agent", ""),
            ("ClusterRole", "bp-bridgeport-controller", ""),
            ("ClusterRoleBinding", "bp-bridgeport-agent", ""),
            ("ClusterRoleBinding", "bp-bridgeport-controller", ""),
            ("Service", "bp-bridgeport-agent-metrics", ns),
            ("Service", "bp-bridgeport-controller-metrics", ns),
            ("DaemonSet", "bp-bridgeport-agent", ns),
            ("Deployment", "bp-bridgeport-controller", ns),
            ("ClusterKopfPeering", "bridgeport-controller", ""),
            ("Pod", "bp-bridgeport-test-agent", ns),  # `helm test` only (a test hook)
        ]
    )
    test_pod = find(objs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    ctx = test_pod["spec"]["containers"][0]["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["readOnlyRootFilesystem"] is True
    assert test_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for binding in (o for o in objs if o["kind"] == "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "namespace": ns, "name": binding["metadata"]["name"]}
        ]


def test_optional_objects_render_behind_their_values() -> None:
    objs = render(ALL_FEATURES)
    monitor = find(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    services = [o for o in objs if o["kind"] == "Service"]
    assert len(services) == 2
    for svc in services:
        assert selected.items() <= svc["metadata"]["labels"].items()
        assert svc["spec"]["clusterIP"] == "None"
    policy = find(objs, "ValidatingAdmissionPolicy")
    binding = find(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert (
        f"system:serviceaccount:{NAMESPACE}:bp-bridgeport-agent"
        in policy["spec"]["matchConditions"][0]["expression"]
    )
    assert find(objs, "Deployment")["spec"]["replicas"] == 2


def test_image_values() -> None:
    objs = render(
        {"image.repository": "registry.example/bp", "image.tag": "dev", "image.pullPolicy": "Never"}
    )
    for kind in ("DaemonSet", "Deployment"):
        (c,) = find(objs, kind)["spec"]["template"]["spec"]["containers"]
        assert (c["image"], c["imagePullPolicy"]) == ("registry.example/bp:dev", "Never")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (c,) = find(render(), "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert c["image"].endswith(f":{chart['appVersion']}")


# -- pod security ------------------------------------------------------------------------------


def test_agent_daemonset_runs_everywhere_with_net_admin_only() -> None:
    ds = find(render(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "bp-bridgeport-agent"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged") is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_BIND_SERVICE"]
    assert sc["runAsUser"] == 0  # capabilities are only effective for root (no ambient caps)
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"
    ]
    assert c["args"][c["args"].index("agent") + 1] == "--source=kube"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--health-port={ports['health']}" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # No host paths unless the agent is asked to manage sysctls.
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]


def test_sysctl_management_mounts_proc_sys_net_writable() -> None:
    ds = find(render({"agent.sysctls.manage": True}), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert vol["hostPath"]["path"] == "/proc/sys/net"
    (c,) = pod["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["mountPath"] == "/host/proc/sys/net" and not mount.get("readOnly")
    assert {"name": "BRIDGEPORT_PROC_SYS_NET", "value": "/host/proc/sys/net"} in c["env"]


def test_controller_is_unprivileged() -> None:
    dep = find(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged") is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["args"][c["args"].index("controller") :][:1] == ["controller"]
    assert "--no-peering" not in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]


# -- RBAC as rendered (proven against the API server in test_rbac.py) --------------------------


def rules(objs: list[dict[str, Any]], name: str) -> set[tuple[str, str, str, str]]:
    out = set()
    for r in find(objs, "ClusterRole", name)["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    for n in r.get("resourceNames") or ["*"]:
                        out.add((g, res, v, n))
    return out


def test_cluster_roles_grant_exactly_what_the_code_uses() -> None:
    objs = render()
    bp = "bridgeport.io"
    assert rules(objs, "bp-bridgeport-agent") == {
        (bp, "portpublications", "list", "*"),
        (bp, "portpublications", "watch", "*"),
        (bp, "bridgenetworks", "list", "*"),
        (bp, "bridgenetworks", "watch", "*"),
        ("", "nodes", "list", "*"),
        ("", "nodes", "watch", "*"),
        (bp, "nodestates", "create", "*"),
        (bp, "nodestates/status", "patch", "*"),
        (bp, "nodestates", "get", "*"),  # its own, at start: the host ports it assigned
    }
    assert rules(objs, "bp-bridgeport-controller") == {
        *(
            (bp, res, verb, "*")
            for res in ("portpublications", "bridgenetworks", "nodestates")
            for verb in ("list", "watch")
        ),
        (bp, "portpublications/status", "patch", "*"),
        (bp, "bridgenetworks/status", "patch", "*"),
        ("events.k8s.io", "events", "create", "*"),
        ("kopf.dev", "clusterkopfpeerings", "list", "*"),
        ("kopf.dev", "clusterkopfpeerings", "watch", "*"),
        ("kopf.dev", "clusterkopfpeerings", "get", "bridgeport-controller"),
        ("kopf.dev", "clusterkopfpeerings", "patch", "bridgeport-controller"),
    }


# -- CRDs: one copy ----------------------------------------------------------------------------


def test_chart_crds_are_the_repository_crds() -> None:
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == CRDS.resolve()
    rendered = [o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"]
    by_name = {o["metadata"]["name"]: o for o in rendered}
    expected = {d["metadata"]["name"]: d for d in crd_docs()}
    assert by_name == expected
    assert "clusterkopfpeerings.kopf.dev" in by_name  # the peering CRD the controller needs


def test_packaged_chart_contains_the_crd_files(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("bridgeport-*.tgz")
    with tarfile.open(tgz) as tar:
        members = {m.name: m for m in tar.getmembers() if m.name.startswith("bridgeport/crds/")}
        assert all(m.isfile() for m in members.values())  # the files, not a dangling symlink
        packaged = {
            Path(name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for name, m in members.items()
        }
    assert packaged == {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}


# -- the real API server accepts every object ----------------------------------------------------


@pytest.mark.apiserver
def test_api_server_accepts_every_rendered_object(control_plane: Any, crds: Any) -> None:
    """Server-side dry run of the full chart (all options but the ServiceMonitor, whose CRD
    belongs to prometheus-operator): schemas, CEL of the admission policy, the peering CR."""
    values = {k: v for k, v in ALL_FEATURES.items() if "serviceMonitor" not in k}
    ns = f"chart-dry-{RELEASE}"
    control_plane.kubectl("create", "namespace", ns)
    try:
        proc = control_plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=helm",
            "-f",
            "-",
            input=render_text(values, namespace=ns),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "ValidatingAdmissionPolicy" not in proc.stderr
        created = [ln for ln in proc.stdout.splitlines() if "(server dry run)" in ln]
        assert len(created) == len(render(values, namespace=ns))
    finally:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.apiserver
def test_pod_security_levels_and_priority_are_admitted(control_plane: Any, crds: Any) -> None:
    """The pod templates, as pods (server-side dry run, so admission runs for real): the
    controller passes Pod Security `restricted`; the agent needs `privileged` (hostNetwork,
    NET_ADMIN) and gets system-node-critical outside kube-system."""
    objs = render()
    pods = {}
    for kind in ("DaemonSet", "Deployment"):
        template = find(objs, kind)["spec"]["template"]
        pods[kind] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": kind.lower(), "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }

    def admit(ns: str, kind: str) -> subprocess.CompletedProcess[str]:
        pod = {**pods[kind], "metadata": {**pods[kind]["metadata"], "namespace": ns}}
        return control_plane.kubectl(  # type: ignore[no-any-return]
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(pod),
            check=False,
        )

    levels = {"restricted": "chart-psa-restricted", "privileged": "chart-psa-privileged"}
    try:
        for level, ns in levels.items():
            control_plane.kubectl("create", "namespace", ns)
            control_plane.kubectl(
                "label", "namespace", ns, f"pod-security.kubernetes.io/enforce={level}"
            )
            for kind in pods:
                sa = pods[kind]["spec"]["serviceAccountName"]
                control_plane.kubectl("create", "serviceaccount", sa, "-n", ns)
        out = admit(levels["restricted"], "Deployment")
        assert out.returncode == 0, out.stderr
        out = admit(levels["restricted"], "DaemonSet")
        assert out.returncode != 0 and "violates PodSecurity" in out.stderr
        for needs in ("hostNetwork", "NET_ADMIN", "runAsNonRoot"):
            assert needs in out.stderr
        out = admit(levels["privileged"], "DaemonSet")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["spec"]["priority"] == 2000001000  # system-node-critical
    finally:
        for ns in levels.values():
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
