"""The Grafana dashboard (docs/grafana-dashboard.json) queries only metrics
that /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from presence.server.admin import Collector, Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


def test_dashboard_metrics_exist() -> None:
    """Every presence_* and process_* metric the dashboard queries is
    exported (cluster gauges included), in a format Prometheus parses."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(
        Collector(Metrics(), lambda: 0, lambda: 0, lambda: 1, lambda: True)
    )
    ProcessCollector(registry=registry)
    exported = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    name = re.compile(r"\b(?:presence|process)_[a-z_]+")
    queried: set[str] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            queried.update(name.findall(target["expr"]))
    assert queried
    assert queried - exported == set()
