"""`bridgeport plan`: what the agent would program, without root or a kernel.

Scenarios: the shipped examples plan cleanly in both formats and match the golden ruleset;
invalid input exits 1 with messages naming resource and field; node IPs and forwarding flags
change the plan; a dual-stack publication is one DNAT per family in JSON; a missing file is
a clear error; the agent refuses a negative worker count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridgeport", "plan", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_examples_plan_as_golden() -> None:
    """The examples render exactly the documented golden ruleset, exit 0."""
    out = plan("-f", "examples", "--node-ip", "192.0.2.1")
    assert out.returncode == 0, out.stderr
    golden = (ROOT / "tests/golden/examples.nft").read_text()
    tables = golden[golden.index("table ip bridgeport") :]
    assert out.stdout.endswith(tables)
    assert "# PortPublication default/web: Applied" in out.stdout


def test_json_format() -> None:
    """--format json carries outcomes, bridges, proxies and the nft text."""
    out = plan(
        "-f",
        "examples/network.yaml",
        "-f",
        "examples/publication.yaml",
        "--format",
        "json",
        "--no-ip-forward",
    )
    data = json.loads(out.stdout)
    assert {o["name"]: o["state"] for o in data["outcomes"]} == {
        "demo": "Applied",
        "dns-range": "Applied",
        "web": "Applied",
        "web-assigned": "Applied",
    }
    first, last = next(o["assignedPorts"] for o in data["outcomes"] if o["name"] == "web-assigned")
    assert first == last and 32768 <= first <= 60999  # the default ephemeral range
    # IPv4-only targets: the wildcard claims IPv4 only, so the proxy binds 0.0.0.0 only.
    assert {p["listen"] for p in data["proxies"]} == {"0.0.0.0"}
    assert "pub_any" in data["nft"]["ip"]
    assert 'tcp . 8080 comment "default/web"' not in data["nft"]["ip"]  # no DNAT element
    assert data["dnats"] == []  # no forwarding: the proxy serves everything


def test_port_range_for_assigned_ports() -> None:
    out = plan(
        "-f",
        "examples/network.yaml",
        "-f",
        "examples/publication.yaml",
        "--port-range",
        "9000-9000",
    )
    assert "# PortPublication default/web-assigned: Applied (Programmed) 9000/TCP (assigned)" in (
        out.stdout
    )
    assert "#   assigned host port(s) 9000" in out.stdout


def test_json_dnats_per_family(tmp_path: Path) -> None:
    """A dual-stack publication is one DNAT per family in --format json, IPv6 bracketed."""
    (tmp_path / "pp.yaml").write_text("""
apiVersion: bridgeport.io/v1alpha1
kind: PortPublication
metadata: {name: web, namespace: default}
spec: {hostPort: 8080, target: {address: 192.168.99.2, address6: "fd00:99::2", port: 80}}
""")
    out = plan("-f", "examples/network.yaml", "-f", str(tmp_path / "pp.yaml"), "--format", "json")
    data = json.loads(out.stdout)
    assert [(d["family"], d["hostIP"], d["target"]) for d in data["dnats"]] == [
        ("IPv4", "", "192.168.99.2:80"),
        ("IPv6", "", "[fd00:99::2]:80"),
    ]
    # Auto's IPv4 loopback listener is widened to 0.0.0.0: it holds what the DNAT captures.
    assert {(p["listen"], p["target"], p["holds"]) for p in data["proxies"]} == {
        ("0.0.0.0", "192.168.99.2:80", True),
        ("::", "[fd00:99::2]:80", True),
    }
    assert data["claims"] == []


def test_invalid_input_exits_1(tmp_path: Path) -> None:
    """A bad port: exit 1, the message names resource and field; the rest is still printed."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
apiVersion: bridgeport.io/v1alpha1
kind: PortPublication
metadata: {name: web, namespace: default}
spec: {hostPort: 8080, target: {address: 192.168.99.2, port: 70000}}
""")
    out = plan("-f", str(bad), "-f", "examples/network.yaml")
    assert out.returncode == 1
    assert (
        "error: PortPublication default/web: spec.target.port: 70000 is not a port (1-65535)"
    ) in out.stderr
    assert "chain from_bp-demo" in out.stdout


def test_unreadable_file(tmp_path: Path) -> None:
    """Broken YAML and a missing file are reported as errors, exit 1."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    out = plan("-f", str(broken), "-f", str(tmp_path / "missing.yaml"))
    assert out.returncode == 1
    assert "broken.yaml: unreadable" in out.stderr and "missing.yaml: unreadable" in out.stderr


def test_agent_rejects_negative_proxy_workers(tmp_path: Path) -> None:
    """`agent --proxy-workers -1` stops before touching anything, with a one-line error."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridgeport",
            "agent",
            "--node-name",
            "n1",
            "--source",
            f"dir:{tmp_path}",
            "--proxy-workers",
            "-1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "error: --proxy-workers must be 0 (one per CPU) or more" in out.stderr
