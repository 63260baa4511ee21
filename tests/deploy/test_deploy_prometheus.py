"""The Prometheus configuration and rules in deploy/prometheus, checked by ``promtool`` itself
(config syntax with its rule files, rule syntax, the rule unit tests), and against the
processor: the rule tests cover every alert both firing and quiet, and every metric the rules
read is one the processor exports."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import yaml
from dashboard_queries import (
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TEST,
    alert_names,
    exported_metric_names,
    metric_names,
    recorded_names,
    rules,
)


def _promtool(need_tool: Callable[[str], str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def test_promtool_checks_the_config_and_its_rule_files(need_tool: Callable[[str], str]) -> None:
    """``check config`` also loads and checks the rule files the config names (relative to
    the config file, as in the container's /etc/prometheus)."""
    result = _promtool(need_tool, "check", "config", str(PROMETHEUS_CONFIG))
    _ok(result)
    assert "1 rule files found" in result.stdout, result.stdout


def test_promtool_checks_the_rules(need_tool: Callable[[str], str]) -> None:
    result = _promtool(need_tool, "check", "rules", str(RULES))
    _ok(result)
    assert f"{len(list(rules()))} rules found" in result.stdout, result.stdout


def test_promtool_rule_unit_tests_pass(need_tool: Callable[[str], str]) -> None:
    result = _promtool(need_tool, "test", "rules", str(RULES_TEST))
    _ok(result)
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert of rules.yml appears in rules-test.yml at least once with expected alerts
    (it fires) and at least once with none (it stays quiet), and every recording rule's
    value is checked by a promql_expr_test on healthy input."""
    suite: dict[str, Any] = yaml.safe_load(RULES_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    exprs: set[str] = set()
    for group in suite["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        for case in group.get("promql_expr_test", []):
            if case.get("exp_samples"):
                exprs.add(case["expr"])
    alerts = alert_names()
    assert alerts, "rules.yml has no alert"
    assert [a for a in alerts if a not in firing] == [], "alerts never made to fire"
    assert [a for a in alerts if a not in quiet] == [], "alerts never checked quiet"
    assert [r for r in recorded_names() if r not in exprs] == [], "recording rules unchecked"
    unknown = (firing | quiet) - set(alerts)
    assert not unknown, f"rules-test.yml names alerts rules.yml does not have: {unknown}"


def test_rules_read_only_metrics_the_processor_exports() -> None:
    exported = exported_metric_names()
    recorded = set(recorded_names())
    unknown: dict[str, set[str]] = {}
    for rule in rules():
        names = metric_names(rule["expr"]) - recorded - {"up"}
        missing = names - exported
        if missing:
            unknown[rule.get("record") or rule["alert"]] = missing
    assert not unknown, f"rules read metrics the processor does not export: {unknown}"


def test_metric_name_extraction_finds_what_the_rules_select() -> None:
    """The regex behind the export check sees metric names, and only them, in the shapes
    of expression the rules use (so a typo in a metric name cannot hide from it)."""
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(lstm_stream_step_secs_bucket{a="b"}'
        '[5m]))) > 0.5 and on (job) deriv(job:x:sum[10m]) > 0 unless absent(up{job="j"})'
    )
    assert metric_names(expr) == {"lstm_stream_step_secs_bucket", "job:x:sum", "up"}
    assert "lstm_stream_step_secs_bucket" not in exported_metric_names()
