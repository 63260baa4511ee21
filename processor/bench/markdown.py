"""results.md: the run's header (command, machine, reference matmul rate), the goals
table, agreement and models, then every section's markdown
(:mod:`processor.bench.markdown_engine`, :mod:`processor.bench.markdown_kafka`,
:mod:`processor.bench.markdown_host`), the
errors and the notes. A pure function of the results dict."""

from __future__ import annotations

from typing import Any

from processor.bench import markdown_engine as me
from processor.bench import markdown_host as mh
from processor.bench import markdown_kafka as mk
from processor.bench.goals import GOALS_DOC
from processor.bench.results import markdown_table


def markdown(results: dict[str, Any]) -> str:
    """The text of results.md for ``results`` (sections the run lacks are left out)."""
    m = results.get("machine", {})
    mm = results.get("matmul", {})
    quick = " (--quick: indicative only)" if results.get("quick") else ""
    gcs = results.get("gc", {})
    gc_line = (
        f"{gcs['tracked_objects']:,} tracked objects after loading the models; one full "
        f"collection takes {gcs['full_collect_ms']:.0f} ms."
        if "tracked_objects" in gcs
        else "not measured."
    )
    lines = [
        "# lstm-stream benchmark",
        "",
        f"Command: `{results.get('command', '')}`  ",
        f"Started {results.get('started_at', '?')}, wall time "
        f"{results.get('wall_time_s', 0):.0f} s{quick}.  ",
        f"Machine: {m.get('cpu_model')} ({m.get('cores_available')} cores available, flags "
        f"{', '.join(m.get('cpu_flags', []))}), {(m.get('mem_total_bytes') or 0) / 2**30:.0f} "
        f"GiB; TF {m.get('tensorflow')}, Keras {m.get('keras')}, NumPy {m.get('numpy')}.  ",
        f"TF threads: intra-op {m.get('tf_intra_op_threads')}, inter-op "
        f"{m.get('tf_inter_op_threads')}. Load average at start "
        f"{m.get('load_average_at_start')}, at end {results.get('load_average_at_end')} "
        "(the machine is shared; `cores used` below = process CPU time / wall time of the "
        "timed calls).  ",
        f"float32 matmul 1024³ (tf.function): best {mm.get('start', {}).get('best_gflops')} / "
        f"median {mm.get('start', {}).get('median_gflops')} GFLOP/s at start, best "
        f"{mm.get('end', {}).get('best_gflops')} at end; reference "
        f"{mm.get('reference_gflops')} GFLOP/s.  ",
        f"Python GC: {gc_line}",
        "",
        "Rates: `msg/s` = messages per call / median call time (robust to other jobs on the "
        "shared machine); `mean msg/s` = all messages / all call time. Latency is per call: "
        "per message for B0/B1, per batch step for B2/engine.",
        "",
        "## Performance goals",
        "",
        f"The project's performance goals; `{GOALS_DOC}` explains each one by its id (what "
        "is measured, why the threshold matters, how to reproduce it). PASS and MISS are "
        "judged on the figures of this run only; NOT RUN means this run lacks them.",
        "",
    ]
    lines += markdown_table(
        ["id", "goal", "measured", "status", "detail"],
        [
            [f"`{g['id']}`", g["goal"], g["measured"], f"**{g['status']}**", g["detail"]]
            for g in results.get("goals", [])
        ],
    )
    ag = results.get("agreement", {})
    if ag:
        lines += ["## Agreement (same inputs, same weights)", ""]
        rows = []
        for name, a in ag.items():
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in a.get("max_abs_diff", {}).items())
            rows.append(
                [
                    name,
                    f"{a['streams']}x{a['steps']}",
                    diffs,
                    f"{a['tolerance']:.0e}",
                    "ok" if a.get("ok") else "**MISMATCH**",
                ]
            )
        lines += markdown_table(
            ["model", "streams x steps", "max |diff| vs Keras whole-sequence", "tol", ""], rows
        )
    models = results.get("models", {})
    if models:
        lines += ["## Models", ""]
        lines += markdown_table(
            [
                "model",
                "description",
                "FLOPs/msg (engine's count)",
                "not counted",
                "state bytes/stream (f32)",
            ],
            [
                [
                    k,
                    v["description"],
                    f"{v['flops_per_step']:,}",
                    f"{v.get('extra_flops', 0):,}",
                    f"{v['state_bytes_float32']:,}",
                ]
                for k, v in models.items()
            ],
        )
    lines += me.throughput_lines(results)
    lines += me.cached_lines(results)
    lines += me.dtype_lines(results)
    lines += me.catchup_lines(results)
    lines += me.replay_lines(results)
    lines += me.gc_lines(results)
    lines += mk.kafka_lines(results)
    lines += mk.durable_lines(results)
    lines += me.tiers_lines(results)
    if results.get("frames"):
        lines += me.frames_lines(results["frames"])
    if results.get("frames_kafka"):
        lines += mk.frames_kafka_lines(results["frames_kafka"])
    lines += me.breakdown_lines(results)
    lines += mh.host_lines(results)
    errors = results.get("errors", [])
    if errors:
        lines += ["## Errors (sections that failed; the rest of the run went on)", ""]
        lines += [f"- {e['section']}: {e['error']}" for e in errors] + [""]
    notes = results.get("notes", [])
    skipped = results.get("config", {}).get("skipped", [])
    if notes or skipped:
        lines += ["## Notes", ""] + [f"- {n}" for n in [*notes, *skipped]] + [""]
    return "\n".join(lines)
