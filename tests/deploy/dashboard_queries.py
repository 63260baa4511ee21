"""What the monitoring artefacts query, read from the files themselves, for the tests that
check them against the processor and against real Prometheus tools.

Used by ``test_deploy_prometheus.py``, ``test_deploy_grafana.py`` (same folder, imported by
name) and ``tests/integration/test_prometheus_live.py`` (loaded by path). Pure functions over
the repository's files; nothing here starts a process.

* :func:`exported_metric_names` -- every sample name ``processor.obs.metrics.Metrics`` exports
  (counters as ``_total``, histograms as ``_bucket``/``_sum``/``_count``), labelled metrics
  included even before their first label value is used;
* :func:`metric_names` -- the metric names a PromQL expression selects;
* :func:`rule_groups`, :func:`recorded_names`, :func:`alert_names` -- rules.yml;
* :func:`panel_queries` / :func:`substitute` -- the dashboard's panel expressions and their
  Grafana variables replaced by values Prometheus accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules-test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "lstm-stream.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "lstm-stream.yml"

# Values for the dashboard's variables that make a panel query plain PromQL: the interval
# variables become a duration, the multi-value label variables match everything (what
# Grafana sends for "All", the dashboard's allValue).
VARIABLE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
    "instance": ".*",
    "topic": ".*",
}

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}

# Words of PromQL that look like metric names: operators, modifiers, aggregation clauses.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip


def exported_metric_names() -> set[str]:
    """Every sample name of the processor's metrics: a fresh ``Metrics`` on its own
    ``CollectorRegistry``, each family's name with the suffixes of its type (a labelled
    counter that has no child yet exports nothing, but will as soon as it counts), plus
    the sample names the registry lists now. ``_created`` samples are left out (Prometheus
    ignores them unless asked to)."""
    import processor  # noqa: F401  (TF environment defaults before anything imports keras)
    from processor.obs.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        base = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "counter":
            names.add(base)
        else:
            names.update(family.name + s for s in _SUFFIXES[family.type])
        names.update(s.name for s in family.samples if not s.name.endswith("_created"))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, label names,
    label values or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists of aggregations and vector matching
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*+)(?!\s*\()", text):
        word = m.group(1)
        if word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def rule_groups(path: Path = RULES) -> list[dict[str, Any]]:
    """The ``groups`` of a Prometheus rule file."""
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def rules(path: Path = RULES) -> Iterator[dict[str, Any]]:
    """Every rule (recording and alerting) of a rule file, in file order."""
    for group in rule_groups(path):
        yield from group["rules"]


def recorded_names(path: Path = RULES) -> list[str]:
    """The ``record`` names of a rule file, in file order."""
    return [r["record"] for r in rules(path) if "record" in r]


def alert_names(path: Path = RULES) -> list[str]:
    """The ``alert`` names of a rule file, in file order."""
    return [r["alert"] for r in rules(path) if "alert" in r]


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title / refId, expr)`` of every Prometheus target of every panel."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((f"{panel.get('title')} / {target.get('refId')}", target["expr"]))
    return out


def substitute(expr: str) -> str:
    """``expr`` with the dashboard's variables (``$name``, ``${name}``, ``[[name]]``)
    replaced by :data:`VARIABLE_VALUES`; an unknown variable raises ``KeyError``."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return VARIABLE_VALUES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)
