"""The benchmark's PNG plots: throughput over batch size per model, step time over cached
streams, and the latency CDF at the headline batch (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processor.bench.results import find_rows, section_rows


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """Write the PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")

    def plain_log_x(ax: Any) -> None:
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())

    written = []
    tp = section_rows(results, "throughput")
    models = list(dict.fromkeys(r["model"] for r in tp))
    if models:
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rows = find_rows(tp, model=model)
            for method, style in (("engine", "o-"), ("B2", "s--")):
                pts = sorted(
                    (r["batch"], r["msg_per_s_median"])
                    for r in find_rows(rows, method=method)
                    if not r.get("xla")
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=method)
            for r in find_rows(rows, method="engine", xla=True):
                ax.plot([r["batch"]], [r["msg_per_s_median"]], "r*", ms=10, label="engine, XLA")
            for method, color, ls in (("B1", "tab:red", ":"), ("B0", "tab:gray", "-.")):
                rs = find_rows(rows, method=method)
                if rs:
                    best = max(rs, key=lambda r: r["msg_per_s_median"])
                    note = ", fastest variant" if method == "B0" else ""
                    ax.axhline(
                        best["msg_per_s_median"],
                        color=color,
                        ls=ls,
                        label=f"{method} (per message{note})",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            plain_log_x(ax)
            ax.set_xlabel("batch size (streams per step)")
            ax.set_ylabel("messages / s (median-based)")
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_batch.png", dpi=100)
        plt.close(fig)
        written.append("throughput_vs_batch.png")

    cached = [r for r in section_rows(results, "cached_streams") if "skipped" not in r]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if cached:
        xs = [r["cached"] for r in cached]
        p50 = [r["latency_p50_ms"] for r in cached]
        p99 = [r["latency_p99_ms"] for r in cached]
        ax.plot(xs, p50, "o-", label="p50")
        ax.plot(xs, p99, "^--", label="p99")
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.set_title(f"{cached[0]['model']}, batch {cached[0]['batch']}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    ax.set_xlabel("cached streams")
    ax.set_ylabel("engine step time (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "step_time_vs_cached.png", dpi=100)
    plt.close(fig)
    written.append("step_time_vs_cached.png")

    samples = results.get("latency_samples_ms", {})
    names = list(samples)
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4.2), squeeze=False
    )
    for ax, model in zip(axes[0], names or ["none"], strict=True):
        for method, vals in samples.get(model, {}).items():
            if vals:
                xs = sorted(vals)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=method)
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.set_xlabel("latency per call (ms)")
        ax.set_ylabel("fraction of calls")
        hb = results.get("config", {}).get("headline_batch")
        ax.set_title(f"{model} (B2/engine: batch {hb})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=100)
    plt.close(fig)
    written.append("latency_cdf.png")
    return written
