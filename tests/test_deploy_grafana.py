"""deploy/grafana: the dashboard's every query reads only series the daemon's registry exports,
parses as PromQL (promtool), and the dashboard covers what an operator looks for."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import exported_series, series_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "docgen-monitor.json"
# What Grafana puts in place of its own variables; any valid value will do for parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>[^,]+),\s*)?\w+\)$")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # panels inside a collapsed row
    return out


def queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every panel target."""
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def variable_selectors() -> list[str]:
    """The series each query variable reads, from `label_values(selector, label)`."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        assert match and match["selector"], f"variable {var['name']}: {query}"
        out.append(match["selector"])
    return out


def for_prometheus(expr: str) -> str:
    """The query as Grafana sends it, every variable at its widest value."""
    widest = {"$job": ".+", "$instance": ".+", "$account": ".+"}
    for name, value in {**GRAFANA_VARIABLES, **widest}.items():
        expr = expr.replace(name, value)
    return expr


def test_every_query_names_only_series_the_daemon_exports() -> None:
    exported = exported_series()
    seen: set[str] = set()
    for title, expr in queries():
        names = series_names(expr)
        assert names, (title, expr)
        assert names <= exported, (title, names - exported)
        seen |= names
    for selector in variable_selectors():
        assert series_names(selector) <= exported, selector
    assert len(seen) >= 10


def test_the_dashboard_covers_jobs_polling_box_and_notifications() -> None:
    used = {name for _, expr in queries() for name in series_names(expr)}
    for needed in ("box_docgen_jobs", "box_docgen_job_transitions_total",
                   "box_docgen_poll_duration_seconds_bucket",
                   "box_docgen_poll_last_success_timestamp_seconds",
                   "box_docgen_api_requests_total",
                   "box_docgen_api_request_duration_seconds_bucket",
                   "box_docgen_outbox_pending", "box_docgen_outbox_dead",
                   "box_docgen_notifications_total", "box_docgen_events_total"):
        assert needed in used, needed
    exprs = " ".join(expr for _, expr in queries())
    assert 'code="429"' in exprs and "histogram_quantile(0.95" in exprs


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool checks each query as a recording rule: syntax, functions, argument types."""
    rules = [{"record": f"dashboard:query_{i}", "expr": for_prometheus(expr)}
             for i, (_, expr) in enumerate(queries())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_panels_are_laid_out_uniquely_and_use_the_datasource_variable() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    for panel in panels():
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"], panel["title"]
            for target in panel["targets"]:
                assert 'job=~"$job"' in target["expr"], panel["title"]
    assert dashboard()["uid"] == "docgen-monitor"
