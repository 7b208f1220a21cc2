"""deploy/grafana/simultrain-cloud.json: valid, importable, and every metric it queries is one
the cloud's ``GET /metrics`` serves (the coordinator serves none)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from simultrain.cloud.metrics import CloudMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "simultrain-cloud.json"
METRIC = re.compile(r"\bsimultrain_[a-z0-9_]+")
# What a family of each type exposes (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def exposed(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_every_queried_metric_is_served_by_the_cloud() -> None:
    served = exposed(CloudMetrics().registry)
    queried = {
        name
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    variables = json.dumps(dashboard()["templating"])
    queried |= set(METRIC.findall(variables))
    assert queried, "the dashboard queries nothing"
    assert queried <= served, sorted(queried - served)
    # And what the cloud adds for the dashboard is charted.
    for name in ("simultrain_cloud_eval_accuracy", "simultrain_cloud_reconciliations_total"):
        assert name in queried


def test_the_checker_notices_a_metric_that_does_not_exist() -> None:
    assert "simultrain_cloud_master_versoin" not in exposed(CloudMetrics().registry)
    assert "simultrain_cloud_step_seconds_bucket" in exposed(CloudMetrics().registry)


def test_the_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            # Every query is scoped to the chosen clouds.
            assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_the_deploy_docs_point_to_it() -> None:
    assert "deploy/grafana/simultrain-cloud.json" in (ROOT / "docs" / "DEPLOY.md").read_text()
