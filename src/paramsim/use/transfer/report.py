"""What a transfer evaluation shows: the markdown table, the plot, transfer.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.use._common import figure_png, pyplot, settings_key, write_json
from paramsim.use.transfer.config import MATRICES, MATRICES_FILE, TransferConfig


def _f(v: Any, fmt: str = ".3f") -> str:
    """A number for a table; missing or NaN (null once read back from JSON) shows as a dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _ci(g: Mapping[str, Any] | None) -> str:
    if not g:
        return "–"
    return f"{_f(g.get('mean'), '+.3f')} [{_f(g.get('lo'), '+.3f')}, {_f(g.get('hi'), '+.3f')}]"


def format_transfer_table(results: Mapping[str, Any], primary_only: bool = False) -> str:
    """Markdown: one row per method, K and selection rule (the primary rule first).

    Baselines are on the same target tasks; every rule picks among the same fine-tuned
    sources. "vs best estimator" is the paired bootstrap interval of the per-task chosen
    accuracy minus that of the estimator with the best mean at this K.
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
        "val. oracle",
        "gain over random (95% CI)",
        "share of oracle gain",
        "share of val.-oracle gain",
        "top-1 regret",
        "weighted τ",
        "Spearman",
        "vs best estimator (95% CI)",
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
            vs = v.get("vs_best_estimator")
            vs_text = "–" if not vs else f"{_ci(vs)} vs {vs['estimator']}"
            if vs and vs["estimator"] == name:
                vs_text = "(best estimator)"
            views = rule_views(v)
            for rule, rv in views[:1] if primary_only else views:
                lines.append(
                    f"| {name} | {k} | {rule} | {v['n_target_tasks']} | {_f(scratch)} | "
                    f"{_f(v['random_same_tasks'])} | {_f(rv['chosen']['mean'])} | "
                    f"{_f(v['oracle_same_tasks'])} | {_f(v.get('val_oracle_same_tasks'))} | "
                    f"{_ci(rv['gain_over_random'])} | {_f(rv['oracle_gain_captured'], '.2f')} | "
                    f"{_f(rv.get('val_oracle_gain_captured'), '.2f')} | "
                    f"{_f(rv.get('regret'))} | "
                    f"{_f(v.get('weighted_tau', {}).get('mean'))} | "
                    f"{_f(v['spearman']['mean'])} | "
                    f"{vs_text if rule == v.get('select', rule) else '–'} |"
                )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | | | | skipped: {reason} |" + " |" * (len(cols) - 5))
    return "\n".join(lines)


def format_cost_table(results: Mapping[str, Any]) -> str:
    """Markdown: what one selection costs per rule, at each candidate count timed."""
    costs = results.get("costs") or {}
    rules = costs.get("rules", {})
    if not rules:
        return ""
    draw = costs.get("draw", {})
    lines = [
        f"One selection, timed on one draw (K = {draw.get('shots')}, {draw.get('candidates')} "
        "candidates), median of 3; stored models and their embeddings are in memory.",
        "",
        "| rule | kind | candidates | forward passes | ms per selection | ms per 1000 "
        "candidates | + probe training, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    kinds = {n: m.get("kind", "") for n, m in results.get("methods", {}).items()}
    for name, c in rules.items():
        lines.append(
            f"| {name} | {kinds.get(name, '')} | {' / '.join(map(str, c['candidates']))} | "
            f"{' / '.join(map(str, c['forward_passes']))} | "
            f"{' / '.join(_f(v, '.1f') for v in c['ms'])} | "
            f"{_f(c['ms_per_1000_candidates'], '.1f')} | "
            f"{_f(c['probe_ms'], '.1f') if c['probe_ms'] else '–'} |"
        )
    return "\n".join(lines)


def estimator_notes(results: Mapping[str, Any]) -> list[str]:
    """Per estimator that ran, two sentences on what it reads; per combined rule, what it
    combines."""
    from paramsim.use.transfer.estimators import ESTIMATORS

    methods = results.get("methods", {})
    ran = [n for n, m in methods.items() if m.get("kind") == "estimator"]
    notes = [f"- `{n}`: {ESTIMATORS[n].reads}" for n in ran if n in ESTIMATORS]
    for n, m in methods.items():  # hybrids, rankers, histories: what they combine
        if m.get("kind") in ("hybrid", "learned", "history") and m.get("source"):
            notes.append(f"- `{n}` ({m['kind']}): {m['source']}.")
    return notes


def rule_views(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(rule, scores) of one method and K, the primary rule first; old results: one row."""
    rules = entry.get("rules")
    if not rules:
        return [(entry.get("select", "model"), entry)]
    primary = entry.get("select", next(iter(rules)))
    return [(primary, rules[primary])] + [(r, v) for r, v in rules.items() if r != primary]


KIND_COLOURS = {
    "similarity": "tab:blue",
    "learned": "tab:purple",
    "history": "tab:brown",
    "hybrid": "tab:green",
    "estimator": "tab:orange",
}


def plot_transfer(results: Mapping[str, Any]) -> bytes | None:
    """Per K, one row per rule (coloured by kind): the share of the oracle's gain over a
    random source (bar, with the 95% CI of the gain scaled the same way), the share of the
    validation oracle's gain (diamond), and the weighted Kendall tau (right panel)."""
    methods = results.get("methods", {})
    if not methods:
        return None
    plt = pyplot()
    ks = list(results["baselines"])
    names = list(methods)
    height = 1.2 + 0.28 * len(names)
    fig, axes = plt.subplots(len(ks), 2, figsize=(11, height * len(ks)), squeeze=False, sharey=True)
    try:
        for row, k in enumerate(ks):
            share_ax, tau_ax = axes[row]
            ys = np.arange(len(names))[::-1]
            for y, name in zip(ys, names, strict=True):
                v = methods[name]["shots"].get(k)
                if not v:
                    continue
                colour = KIND_COLOURS.get(methods[name].get("kind", ""), "grey")
                share = v.get("oracle_gain_captured")
                head = (v.get("oracle_same_tasks") or math.nan) - (
                    v.get("random_same_tasks") or math.nan
                )
                g = v.get("gain_over_random") or {}
                if share is not None and math.isfinite(share):
                    err = None
                    if head and head > 0 and g.get("lo") is not None:
                        err = [[share - g["lo"] / head], [g["hi"] / head - share]]
                    share_ax.barh(y, share, color=colour, xerr=err, capsize=2, alpha=0.85)
                vshare = v.get("val_oracle_gain_captured")
                if vshare is not None and math.isfinite(vshare):
                    share_ax.plot(vshare, y, "D", color="black", ms=4)
                tau = (v.get("weighted_tau") or {}).get("mean")
                if tau is not None and math.isfinite(tau):
                    tau_ax.barh(y, tau, color=colour, alpha=0.85)
            share_ax.set_yticks(ys, names, fontsize=8)
            share_ax.axvline(0, color="black", lw=0.8)
            share_ax.axvline(1, color="black", lw=0.8, ls=":")
            share_ax.set_title(
                f"K = {k}: share of the oracle's gain (bar) and of the validation oracle's (◆)",
                fontsize=9,
            )
            tau_ax.axvline(0, color="black", lw=0.8)
            tau_ax.set_title(
                f"K = {k}: weighted Kendall τ, score vs fine-tuned accuracy", fontsize=9
            )
            for ax in (share_ax, tau_ax):
                ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        return figure_png(fig)
    finally:
        plt.close(fig)


def write_transfer(
    results: Mapping[str, Any], out_dir: str | Path, key: str | None = None
) -> dict[str, Path]:
    from paramsim.atomic import atomic_path, atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(results)
    matrices = doc.pop(MATRICES, None)
    if key is not None:
        doc["settings_key"] = key
    png = plot_transfer(doc)
    written: dict[str, Path] = {}
    if matrices:  # first: transfer.json (a cache key, the matrices' row labels) commits them
        written[MATRICES_FILE] = out / MATRICES_FILE
        with atomic_path(written[MATRICES_FILE]) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **matrices)
    write_json(out / "transfer.json", doc)
    written = {"transfer.json": out / "transfer.json", **written}
    if png is not None:
        atomic_write(out / "transfer.png", png)
        written["transfer.png"] = out / "transfer.png"
    return written


# raised when the metrics of a stored transfer.json change, so a resumed report rescores
# (2: task-rule ties averaged, constant scores rank as 0; session 23)
METRICS_VERSION = 2


def transfer_key(zoo, methods: Sequence[str], config: TransferConfig) -> str:
    return settings_key(
        {
            "metrics": METRICS_VERSION,
            "zoo": str(Path(zoo.path).resolve()),
            "n": len(zoo),
            "methods": list(methods),
            "config": config.to_dict(),
        }
    )
