"""The chart's dashboard ConfigMap and PrometheusRule: off by default, the tested files when on."""

from __future__ import annotations

import json

import yaml

from tests.deploy.test_chart import CHART, find, render

DASHBOARD = CHART / "monitoring" / "dashboard.json"
ALERTS = CHART / "monitoring" / "alerts.yaml"


def test_off_by_default() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render()}
    assert not any(k == "PrometheusRule" for k, _ in kinds)
    assert ("ConfigMap", "bp-bridgeport-dashboard") not in kinds


def test_dashboard_configmap_in_the_grafana_sidecar_format() -> None:
    objs = render(
        {
            "metrics.dashboard.enabled": True,
            "metrics.dashboard.annotations": {"grafana_folder": "Networking"},
        }
    )
    cm = find(objs, "ConfigMap", "bp-bridgeport-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Networking"}
    assert json.loads(cm["data"]["bridgeport.json"]) == json.loads(DASHBOARD.read_text())


def test_prometheus_rule_carries_the_tested_rules() -> None:
    objs = render(
        {
            "metrics.prometheusRule.enabled": True,
            "metrics.prometheusRule.labels": {"release": "prom"},
        }
    )
    rule = find(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_service_monitor_sets_the_job_the_alerts_select() -> None:
    objs = render({"metrics.serviceMonitor.enabled": True})
    relabel = find(objs, "ServiceMonitor")["spec"]["endpoints"][0]["relabelings"]
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "targetLabel": "job",
        "replacement": "bridgeport-$1",
    } in relabel
