"""The Grafana dashboard and provisioning in deploy/grafana: the dashboard type-checks against
Grafana's own published schema (``@grafana/schema`` with ``tsc``), every panel query parses
as PromQL (``promtool``) and reads only metrics the processor exports, and the provisioning
files point Grafana at the data source the dashboard uses."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from dashboard_queries import (
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    exported_metric_names,
    load_dashboard,
    metric_names,
    panel_queries,
    panels,
    substitute,
)

DATASOURCE_UID = "prometheus"


def _typescript_module(dashboard: dict[str, Any]) -> str:
    return (
        "import type {Dashboard} from '@grafana/schema';\n"
        f"export const d = {json.dumps(dashboard, indent=1)} satisfies Dashboard;\n"
    )


def test_dashboard_satisfies_grafanas_schema(tmp_path: Path, node_modules: Path) -> None:
    """``tsc --strict`` on ``<dashboard JSON> satisfies Dashboard``: unknown keys (object
    literals get excess-property checks), missing required keys and wrong types fail. A
    copy with one misspelled panel key is checked in the same run and must fail, at that
    key only, so a passing check is not a checker that accepts anything."""
    (tmp_path / "node_modules").symlink_to(node_modules, target_is_directory=True)
    dashboard = load_dashboard()
    good = tmp_path / "dashboard.ts"
    good.write_text(_typescript_module(dashboard))
    broken = json.loads(json.dumps(dashboard))
    panel = next(p for p in broken["panels"] if p["type"] != "row")
    panel["gridPoss"] = panel.pop("gridPos")
    bad = tmp_path / "misspelled.ts"
    bad.write_text(_typescript_module(broken))
    tsc = node_modules / "typescript" / "bin" / "tsc"
    result = subprocess.run(
        ["node", str(tsc), "--noEmit", "--strict", "--skipLibCheck",
         "--module", "nodenext", "--moduleResolution", "nodenext", str(good), str(bad)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    assert [e for e in errors if e.startswith("dashboard.ts")] == [], result.stdout
    assert errors, f"the misspelled copy passed tsc:\n{result.stdout}\n{result.stderr}"
    assert all(e.startswith("misspelled.ts") and "gridPoss" in e for e in errors), result.stdout


def test_every_panel_reads_only_exported_metrics() -> None:
    exported = exported_metric_names()
    queries = panel_queries(load_dashboard())
    assert queries
    unknown = {
        where: names
        for where, expr in queries
        if (names := metric_names(substitute(expr)) - exported)
    }
    assert not unknown, f"panels query metrics the processor does not export: {unknown}"


def test_every_panel_query_parses(tmp_path: Path, need_tool: Callable[[str], str]) -> None:
    """The queries, variables substituted, as recording rules for ``promtool check rules``
    (which parses each expression with Prometheus' own parser)."""
    queries = panel_queries(load_dashboard())
    rules = [{"record": f"panel:query_{i}:check", "expr": substitute(expr)}
             for i, (_, expr) in enumerate(queries)]  # fmt: skip
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [need_tool("promtool"), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_panels_use_the_datasource_variable_and_the_rate_interval() -> None:
    """Graphs take rates over ``$__rate_interval`` (fixed windows break at other scrape
    intervals); a stat's instant query totals over the dashboard's range, ``$__range``."""
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == ref, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ref, panel["title"]
            instant = target.get("instant") is True
            assert target.get("range") is not instant, (panel["title"], target["refId"])
            assert not instant or panel["type"] == "stat", (panel["title"], target["refId"])
            window = "[$__range]" if instant else "[$__rate_interval]"
            if "rate(" in target["expr"] or "increase(" in target["expr"]:
                assert window in target["expr"], (panel["title"], target["expr"])
    rows = [p["id"] for p in dashboard["panels"] if p["type"] == "row"]
    ids = rows + [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"panel ids must be unique: {sorted(ids)}"


# Grafana's unit ids of durations.
TIME_UNITS = {"ns", "µs", "ms", "s", "m", "h", "d", "dtdurations", "dtdurationms"}


def _unit(panel: dict[str, Any], ref_id: str) -> str | None:
    """The unit Grafana shows ``ref_id``'s series of ``panel`` in: the panel's default,
    unless an override matching that query (``byFrameRefID``) sets one."""
    unit = panel["fieldConfig"]["defaults"].get("unit")
    for override in panel["fieldConfig"].get("overrides", []):
        props = [p for p in override["properties"] if p["id"] == "unit"]
        if not props:
            continue
        # Only per-query overrides here, so that this function knows every unit shown.
        assert override["matcher"]["id"] == "byFrameRefID", (panel["title"], override)
        if override["matcher"]["options"] == ref_id:
            unit = props[-1]["value"]
    return unit


def test_only_quantiles_of_seconds_histograms_show_as_durations() -> None:
    """Each query's series, defaults and overrides applied, has a time unit exactly when it
    is a quantile of a ``*_seconds`` histogram: counts and rates sharing a panel with
    durations carry their own unit."""
    wrong = {}
    for panel in panels(load_dashboard()):
        for target in panel["targets"]:
            is_duration = bool(
                re.match(r"histogram_quantile\(.*_seconds_bucket\b", target["expr"].strip())
            )
            unit = _unit(panel, target["refId"])
            if (unit in TIME_UNITS) != is_duration:
                wrong[f"{panel['title']} / {target['refId']}"] = unit
    assert not wrong, f"queries shown in the wrong unit: {wrong}"


def test_unit_lookup_sees_a_per_query_override() -> None:
    panel = {
        "title": "t",
        "fieldConfig": {
            "defaults": {"unit": "s"},
            "overrides": [
                {"matcher": {"id": "byFrameRefID", "options": "B"},
                 "properties": [{"id": "decimals", "value": 0}, {"id": "unit", "value": "short"}]},
            ],
        },
    }  # fmt: skip
    assert (_unit(panel, "A"), _unit(panel, "B")) == ("s", "short")


def _raw_counters(expr: str) -> list[str]:
    """The counters (``*_total``) ``expr`` selects other than as the argument of ``rate``,
    ``irate`` or ``increase``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    return [
        m.group()
        for m in re.finditer(r"(?<![\w:])[A-Za-z_:][\w:]*_total\b", text)
        if not re.search(r"\b(?:rate|irate|increase)\(\s*$", text[: m.start()])
    ]


def test_no_panel_shows_a_raw_counter() -> None:
    """Counters restart at 0 with their processor, so a panel showing a sum of counters
    drops when one restarts: every ``*_total`` a panel selects goes through ``rate``,
    ``irate`` or ``increase``."""
    raw = {w: e for w, e in panel_queries(load_dashboard()) if _raw_counters(e)}
    assert not raw, f"panels show counters as they are: {raw}"
    # The check itself: a bare counter is found, one under increase() is not.
    assert _raw_counters('sum(a_total{i=~"x_total"}) / sum(increase(b_total[1m]))') == ["a_total"]


def test_provisioning_points_at_the_dashboard_and_its_datasource() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["uid"] == DATASOURCE_UID
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    # The compose stack mounts deploy/grafana/dashboards there.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD.parent.name == "dashboards"
