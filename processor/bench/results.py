"""The results dict as the sections write it and the report reads it: a section's status,
the breakdown's part names, the rows of a section and the lookups on them, and how a figure
prints (numbers and markdown tables)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from typing import Any


class SectionStatus(StrEnum):
    """Whether a section that may be left out (no broker, no batch sizes) ran, as its
    ``status`` in the results spells it."""

    RAN = "ran"
    NOT_RUN = "not_run"


# The parts of an engine step the breakdown times, in report order (see
# processor.bench.breakdown).
BREAKDOWN_PARTS = (
    "process",
    "host_path",
    "compiled_call",
    "bare_step",
    "gather_scatter",
    "gather_scatter_fused",
    "dispatch",
    "matmuls",
)


def section_rows(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The rows of ``section`` (empty when the section wrote none, or not a list)."""
    rows = results.get(section)
    return rows if isinstance(rows, list) else []


def find_rows(rows: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The rows whose values equal every one of ``match``."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def engine_row(rows: Iterable[dict[str, Any]], model: str, batch: Any) -> dict[str, Any] | None:
    """The default engine's row (not the XLA variant) for ``model`` at ``batch``."""
    found = [
        r for r in find_rows(rows, model=model, method="engine", batch=batch) if not r.get("xla")
    ]
    return found[0] if found else None


def rates(row: dict[str, Any] | None) -> tuple[float, float]:
    """``(median-based, mean-based)`` messages/s of ``row`` (NaN without a row)."""
    if not row:
        return (float("nan"), float("nan"))
    return (float(row.get("msg_per_s_median", math.nan)), float(row.get("msg_per_s", math.nan)))


def fmt(v: float, digits: int = 1) -> str:
    """``v`` with thousands separators and ``digits`` decimals; ``n/a`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a markdown table, and a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return [*lines, ""]
