"""The evaluation report: results.json, results.md (one table) and two plots.

Everything is rendered in memory first and each file is then written atomically (a temp
file in the same directory, then `os.replace`), so an interrupted or failing run never
leaves a half-written file behind; at worst an older complete file stays.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.atomic import atomic_write

COLUMNS = (
    ("mAP", "map"),
    ("rank-1", "rank1"),
    ("rank-5", "rank5"),
    ("AUC", "auc"),
    ("relation ρ", "relation_spearman"),
    ("seen-task acc", "classification"),
)


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return "–"
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def method_order(results: Mapping[str, Any]) -> list[str]:
    order = results.get("method_order")
    if order:
        return list(order)
    return list(results.get("methods", {})) + list(results.get("skipped", {}))


def format_table(results: Mapping[str, Any]) -> str:
    """The markdown table: one row per method (skipped ones say why), mean ± std over splits."""
    head = ["method", "weights-only", *[c for c, _ in COLUMNS], "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = results.get("methods", {})
    skipped = results.get("skipped", {})
    for name in method_order(results):
        if name in methods:
            m = methods[name]
            cells = [name, "yes" if m.get("weights_only") else "no"]
            cells += [_cell(m.get(key)) for _, key in COLUMNS]
            cells.append(f"{m.get('seconds', float('nan')):.1f}")
        elif name in skipped:
            reason = str(skipped[name]).replace("|", "/").replace("\n", " ")
            cells = [name, "", f"skipped: {reason}"] + [""] * (len(COLUMNS))
        else:
            continue
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(results: Mapping[str, Any]) -> str:
    p = results.get("protocol", {})
    seeds = f"seed {results.get('seed')}, splits 0..{results.get('splits', 0) - 1}"
    query = (
        "every held-out model queries all other held-out models"
        if p.get("all_vs_all")
        else f"{p.get('n_query')} queries against a gallery of {p.get('n_gallery')}"
    )
    kind = "task"
    if p.get("holdout") == "classes":
        kind = "class"
        held = [d.get("heldout_classes", []) for d in results.get("split_details", [])]
        query += (
            f"; held-out tasks are those touching {p.get('n_heldout_classes')} held-out "
            f"classes ({', '.join('+'.join(map(str, h)) for h in held)} per split), and no "
            "training or validation task touches them"
        )
    parts = [
        f"# Evaluation of {results.get('zoo') or 'models'}",
        "",
        f"{results.get('n_models')} models on {results.get('n_tasks')} tasks; "
        f"{results.get('splits')} random {kind} splits ({seeds}); per split "
        f"{p.get('n_train_tasks')} training, {p.get('n_val_tasks')} validation and "
        f"{p.get('n_test_tasks')} held-out tasks; {query}. "
        "Values are mean ± standard deviation over splits; seconds are the method's total "
        "time over all splits (fit and similarity).",
        "",
        format_table(results),
        "",
        "- mAP, rank-k: retrieval of same-task models among held-out tasks (CMC rank-k).",
        "- AUC: same-task vs different-task pairs of held-out models.",
        "- relation ρ: Spearman rank correlation of task-pair similarity with the number of "
        "shared classes, held-out task pairs.",
        "- seen-task acc: nearest-task-mean classification of withheld models of training "
        "tasks against the training models.",
    ]
    hardest = format_hardest(results)
    if hardest:
        parts += ["", hardest]
    total = results.get("wall_seconds", results.get("total_seconds"))
    if total is not None:
        parts += ["", f"Total time: {total:.1f} s."]
    return "\n".join(parts) + "\n"


def format_hardest(results: Mapping[str, Any], n: int = 5) -> str:
    """The n held-out tasks the best method retrieves worst, with every method's AP on them:
    a low mAP says how much a method confuses, this says which tasks."""
    best = best_method(results)
    methods = results.get("methods", {})
    if best is None or not methods[best].get("task_ap"):
        return ""
    per_task = methods[best]["task_ap"]

    def ap_or_last(task: str) -> tuple[float, str]:  # a null (NaN) mean sorts last
        mean = per_task[task].get("mean")
        return (math.inf if mean is None else mean, task)

    worst = sorted(per_task, key=ap_or_last)[:n]
    names = [m for m in method_order(results) if methods.get(m, {}).get("task_ap")]
    lines = [
        f"Hardest held-out tasks for {best} (mean AP of each task's queries over the splits "
        "that held it out; splits: how many):",
        "",
        "| task | splits | " + " | ".join(names) + " |",
        "|" + "---|" * (len(names) + 2),
    ]
    for task in worst:
        cells = [task, str(per_task[task]["splits"])]
        for name in names:
            ap = methods[name]["task_ap"].get(task, {}).get("mean")
            cells.append("–" if ap is None else f"{ap:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_method(results: Mapping[str, Any]) -> str | None:
    best, score = None, -math.inf
    for name, m in results.get("methods", {}).items():
        v = (m.get("map") or {}).get("mean")
        if v is not None and math.isfinite(v) and v > score:
            best, score = name, v
    return best


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_cmc(results: Mapping[str, Any]) -> bytes | None:
    """CMC curves of all scored methods as PNG bytes (None when nothing to plot)."""
    curves = {n: m.get("cmc") or [] for n, m in results.get("methods", {}).items()}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, c in curves.items():
            ax.plot(np.arange(1, len(c) + 1), c, marker=".", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rank k")
        ax.set_ylabel("queries with a same-task hit in the top k")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"CMC, held-out tasks, mean over {results.get('splits')} splits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        return _figure_bytes(fig)
    finally:
        plt.close(fig)


def plot_relation(results: Mapping[str, Any], method: str | None = None) -> bytes | None:
    """Task-by-task mean similarity of `method` (default: best mAP) next to the truth."""
    method = method or best_method(results)
    if method is None:
        return None
    ex = results["methods"][method].get("task_similarity")
    if not ex:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    sim = np.asarray(ex["similarity"], dtype=np.float64)  # null (NaN) entries become nan
    rel = np.asarray(ex["relation"], dtype=np.float64)
    names = ex["tasks"]
    size = max(5.0, 0.28 * len(names) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    try:
        for ax, mat, title, cmap in (
            (axes[0], sim, f"{method}: mean similarity", "viridis"),
            (axes[1], rel, "ground truth: shared classes", "Greys"),
        ):
            im = ax.imshow(mat, cmap=cmap)
            ax.set_title(title)
            ax.set_xticks(range(len(names)))
            ax.set_yticks(range(len(names)))
            ax.set_xticklabels(names, rotation=90, fontsize=6)
            ax.set_yticklabels(names, fontsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"held-out tasks of split {ex.get('split', 0)}")
        return _figure_bytes(fig)
    finally:
        plt.close(fig)


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, results.md, cmc.png and relation.png into `out_dir`.

    All content is rendered before the first write, so a rendering error writes nothing.
    """
    out = Path(out_dir)
    clean = jsonable(results)
    files: dict[str, bytes | str] = {
        "results.json": json.dumps(clean, indent=1, allow_nan=False) + "\n",
        "results.md": format_markdown(clean),
    }
    cmc = plot_cmc(clean)
    if cmc is not None:
        files["cmc.png"] = cmc
    rel = plot_relation(clean)
    if rel is not None:
        files["relation.png"] = rel
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in files.items():
        atomic_write(out / name, data)
        written[name] = out / name
    return written
