"""The plots of ``bench_end_to_end.py``: time to first token by part per setting, and the measured LM prefill
speed-up against the analytic FLOPs ratio. PNGs, written to a temporary name and renamed."""

from __future__ import annotations

from pathlib import Path

from bench_files import save_figure
from end_to_end_model import LM_NAMES
from end_to_end_targets import SPEEDUP_FRACTION, extrapolated, full_depth, speedups

__all__ = ["group_rows", "plot_speedup", "plot_ttft"]

PARTS = {"tower": ("tower", "tab:blue"), "reduce": ("reduction", "tab:red"), "projector": ("projector", "tab:orange"),
         "lm": ("LM prefill", "tab:green")}


def group_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (geometry, LM, batch size), in the order measured."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["geometry"], row["lm_name"], row["batch"]), []).append(row)
    return groups


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ttft(rows: list[dict], path: Path, title: str) -> None:
    """Stacked bars, one panel per group: tower, reduction, projector and LM prefill (at full depth, extrapolated
    where fewer layers were built), and a tick at the measured TTFT (also at full depth)."""
    plt = _pyplot()
    groups = list(group_rows(rows).items())
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 1.2 + 0.42 * sum(len(g) for _, g in groups)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(g) for _, g in groups]})
    try:
        for ax, ((geometry, lm, batch), group) in zip(axes[:, 0], groups):
            labels = [r["label"] for r in group]
            left = [0.0] * len(group)
            for key, (name, colour) in PARTS.items():
                values = [(full_depth(r, "lm") if key == "lm" else r[key]["median"]) / 1e3 for r in group]
                ax.barh(labels, values, left=left, color=colour, label=name)
                left = [a + b for a, b in zip(left, values)]
            ax.plot([full_depth(r, "ttft") / 1e3 for r in group], labels, "k|", markersize=14,
                    label="measured TTFT (generate)")
            ax.invert_yaxis()
            note = " (LM at full depth, extrapolated)" if extrapolated(group[0]) else ""
            ax.set_title(f"LLaVA-{geometry}, {LM_NAMES[lm]}, batch {batch}{note}", fontsize=9)
            ax.grid(True, axis="x", alpha=0.3)
            ax.tick_params(labelsize=8)
        axes[-1, 0].set_xlabel("seconds to the first token")
        axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def plot_speedup(rows: list[dict], path: Path, title: str) -> None:
    """Measured LM prefill speed-up against the analytic FLOPs ratio (log-log), the line of equality and the
    target line (``SPEEDUP_FRACTION`` x analytic)."""
    plt = _pyplot()
    items = speedups(rows)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    try:
        markers = {"1.5": "o", "1.6": "s"}
        batches = sorted({i["row"]["batch"] for i in items})
        colours = dict(zip(batches, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
        for item in items:
            r = item["row"]
            ax.scatter(item["analytic"], item["measured"], marker=markers[r["geometry"]], color=colours[r["batch"]],
                       s=36)
            ax.annotate(r["label"].replace("prumerge", "pm"), (item["analytic"], item["measured"]), fontsize=6,
                        textcoords="offset points", xytext=(4, 2))
        top = max([2.0] + [max(i["analytic"], i["measured"]) * 1.3 for i in items])
        ax.plot([1, top], [1, top], "k--", linewidth=1, label="measured = analytic")
        ax.plot([1, top], [SPEEDUP_FRACTION, SPEEDUP_FRACTION * top], "r:", linewidth=1,
                label=f"target: {SPEEDUP_FRACTION} x analytic")
        for geometry, marker in markers.items():
            ax.scatter([], [], marker=marker, color="grey", label=f"LLaVA-{geometry}")
        for batch, colour in colours.items():
            ax.scatter([], [], color=colour, label=f"batch {batch}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("analytic LM prefill FLOPs ratio (none / setting)")
        ax.set_ylabel("measured LM prefill speed-up")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
