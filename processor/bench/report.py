"""The benchmark's results into verdicts and files: :func:`evaluate_goals` judges every goal
of :data:`processor.bench.goals.GOALS` in order (:mod:`processor.bench.verdicts`,
:mod:`processor.bench.kafka_verdicts`, :mod:`processor.bench.host_verdicts`), and the
writers put results.json, results.md (:mod:`processor.bench.markdown`) and the PNG plots
(:mod:`processor.bench.plots`) into a directory. Pure functions of the results dict,
except the writers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from processor.bench import host_verdicts, kafka_verdicts, verdicts
from processor.bench.markdown import markdown
from processor.bench.plots import plots


def evaluate_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/MISS/NOT RUN for each goal of :data:`~processor.bench.goals.GOALS`, in that
    order, from the figures of this one run. Each entry has ``id``, ``goal`` (the statement
    and what it was measured on), ``threshold``, ``status``, ``measured`` and ``detail``."""
    return [
        verdicts.engine_vs_b1(results),
        verdicts.engine_vs_b0(results),
        verdicts.engine_flops(results),
        verdicts.cached_1m(results),
        verdicts.replay(results),
        kafka_verdicts.kafka(results),
        kafka_verdicts.durable_cost(results),
        kafka_verdicts.exactly_once(results.get("kafka", {})),
        kafka_verdicts.restore(results),
        verdicts.tiers_1m(results),
        verdicts.catchup(results),
        verdicts.seed_frames(results.get("frames", {})),
        kafka_verdicts.frames_kafka(results.get("frames_kafka", {})),
        host_verdicts.host_engine(results.get("host_engine", {})),
        host_verdicts.host_replay(results.get("host_replay", {})),
        host_verdicts.host_kafka(results.get("host_kafka", {})),
        verdicts.no_retrace(results),
    ]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: drops keys starting with '_' (arrays kept for tests), NaN -> None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return _clean(obj.item())
    return obj


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(results), indent=2, sort_keys=False) + "\n")


def write_all(results: dict[str, Any], out: Path) -> None:
    """results.json, results.md and the plots into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(results, out)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(_clean(results)))
