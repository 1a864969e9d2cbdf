"""The alert rules: valid for Prometheus, and each alert's unit tests (promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "charts" / "bridgeport" / "monitoring" / "alerts.yaml"
TESTS = Path(__file__).parent / "alerts_test.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: run hack/setup.sh (Debian's prometheus)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def alert_names() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_rules_are_valid() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    proc = promtool("test", "rules", str(TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_unit_tested_and_has_a_runbook_section() -> None:
    tested = {
        t["alertname"]
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    runbook = RUNBOOK.read_text()
    for name in alert_names():
        assert name in tested, f"{name} never fires in {TESTS.name}"
        assert f"## {name}\n" in runbook, f"{name} has no section in docs/runbook.md"
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor == rule["alert"].lower()
