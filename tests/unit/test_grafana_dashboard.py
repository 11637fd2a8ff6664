"""docs/grafana/ graphs the service's metrics: only names it exports, and all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from event_metrics import telemetry

GRAFANA = Path(__file__).parents[2] / "docs" / "grafana"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Each metric family telemetry.py defines, with the sample names it exposes."""
    families = {}
    for metric in vars(telemetry).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                families[family.name] = {family.name + s for s in SUFFIXES[family.type]}
    return families


def test_the_dashboards_graph_every_exported_metric_and_nothing_else() -> None:
    families = exported()
    assert len(families) >= 10
    names = set().union(*families.values())
    dashboards = sorted(GRAFANA.glob("*.json"))
    assert dashboards, "docs/grafana/ has no dashboard"
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        used = {name for expr in exprs for name in re.findall(r"\bevent_metrics_\w+", expr)}
        assert used <= names, (
            f"{path.name} graphs metrics the service does not export: {used - names}"
        )
        missing = {f for f, samples in families.items() if not samples & used}
        assert not missing, f"{path.name} does not graph {missing}"
