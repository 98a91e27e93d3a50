"""What a transfer evaluation shows: the markdown table, the plot, transfer.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.use._common import figure_png, pyplot, settings_key, write_json
from paramsim.use.transfer.config import TransferConfig


def format_transfer_table(results: Mapping[str, Any]) -> str:
    """Markdown: one row per method, K and selection rule (the primary rule first).

    Baselines are on the same target tasks; both rules pick among the same fine-tuned sources.
    """
    cols = [
        "method",
        "K",
        "rule",
        "tasks",
        "scratch",
        "random source",
        "chosen source",
        "oracle",
        "gain over random (95% CI)",
        "share of oracle gain",
        "Spearman(sim, acc)",
    ]
    head = "| " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for name, entry in results.get("methods", {}).items():
        for k, v in entry["shots"].items():
            base = results["baselines"][k]
            tasks = list(v["chosen"]["per_task"])
            scratch = (
                np.mean([base["scratch"]["per_task"][t] for t in tasks]) if tasks else math.nan
            )
            for rule, rv in rule_views(v):
                g = rv["gain_over_random"]
                lines.append(
                    f"| {name} | {k} | {rule} | {v['n_target_tasks']} | {scratch:.3f} | "
                    f"{v['random_same_tasks']:.3f} | "
                    f"{rv['chosen']['mean']:.3f} | {v['oracle_same_tasks']:.3f} | "
                    f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] | "
                    f"{rv['oracle_gain_captured']:.2f} | {v['spearman']['mean']:.3f} |"
                )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | | | | skipped: {reason} |" + " |" * 6)
    return "\n".join(lines)


def rule_views(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(rule, scores) of one method and K, the primary rule first; old results: one row."""
    rules = entry.get("rules")
    if not rules:
        return [(entry.get("select", "model"), entry)]
    primary = entry.get("select", next(iter(rules)))
    return [(primary, rules[primary])] + [(r, v) for r, v in rules.items() if r != primary]


def plot_transfer(results: Mapping[str, Any]) -> bytes | None:
    """Per-task accuracies (sorted by the random baseline) for each K, methods side by side."""
    methods = results.get("methods", {})
    if not methods:
        return None
    plt = pyplot()
    ks = list(results["baselines"])
    fig, axes = plt.subplots(1, len(ks), figsize=(6.5 * len(ks), 4.2), squeeze=False)
    try:
        for ax, k in zip(axes[0], ks, strict=True):
            base = results["baselines"][k]
            order = sorted(base["random"]["per_task"], key=base["random"]["per_task"].get)
            xs = np.arange(len(order))
            for key, style in (("scratch", ":"), ("random", "--"), ("oracle", "-")):
                ax.plot(
                    xs,
                    [base[key]["per_task"][t] for t in order],
                    style,
                    color="grey" if key != "oracle" else "black",
                    lw=1,
                    label=key,
                )
            for name, entry in methods.items():
                per = entry["shots"].get(k, {}).get("chosen", {}).get("per_task", {})
                pts = [(i, per[t]) for i, t in enumerate(order) if t in per]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True), "o", ms=3.5, alpha=0.8, label=f"chosen by {name}"
                    )
            ax.set_title(f"K = {k} shots per class")
            ax.set_xlabel("target task (sorted by random-source accuracy)")
            ax.set_ylabel("test accuracy after fine-tuning")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        return figure_png(fig)
    finally:
        plt.close(fig)


def write_transfer(
    results: Mapping[str, Any], out_dir: str | Path, key: str | None = None
) -> dict[str, Path]:
    from paramsim.atomic import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(results)
    if key is not None:
        doc["settings_key"] = key
    png = plot_transfer(doc)
    write_json(out / "transfer.json", doc)
    written = {"transfer.json": out / "transfer.json"}
    if png is not None:
        atomic_write(out / "transfer.png", png)
        written["transfer.png"] = out / "transfer.png"
    return written


def transfer_key(zoo, methods: Sequence[str], config: TransferConfig) -> str:
    return settings_key(
        {
            "zoo": str(Path(zoo.path).resolve()),
            "n": len(zoo),
            "methods": list(methods),
            "config": config.to_dict(),
        }
    )
