"""What the deploy/ checks need to know about PromQL: which series names the daemon exports (from
its own metrics registry, so a renamed metric breaks the check) and which names a query reads."""

from __future__ import annotations

import re

from prometheus_client.metrics_core import Metric

from monitor.metrics import Metrics

# Series Prometheus itself writes for every scrape target; a rule may read them.
SCRAPE_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*+)(?!\s*\()")


def exported_series(metrics: Metrics | None = None) -> set[str]:
    """Every series name the daemon's registry can expose, whichever labels get used."""
    registry = (metrics or Metrics()).registry
    families: list[Metric] = list(registry.collect())
    return {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and durations aside)."""
    text = _GRAFANA_VAR.sub("", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}
