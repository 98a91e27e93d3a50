"""Task-relation maps: how a similarity method arranges the tasks of a zoo, next to the truth.

From one model-by-model similarity matrix:

- the task-by-task similarity (mean over the two tasks' models; a task's diagonal leaves out
  each model's similarity to itself), compared with the ground truth (number of shared
  classes, `paramsim.data.relation_matrix`) by Spearman's rho over task pairs;
- a hierarchical clustering of tasks (average linkage on 1 - similarity) with its dendrogram,
  next to the one of the ground truth (distance 2 - shared classes);
- a 2-D map of all models: classical (Torgerson) multidimensional scaling of 1 - similarity,
  which is exact, deterministic and takes milliseconds, next to the same map of the tasks
  from the ground-truth distances.

A learned method given by name is fitted on every task of the zoo first, so its map shows
tasks it has seen; pass a saved model fitted elsewhere to map unseen tasks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.data import canonical_name, relation_matrix
from paramsim.errors import ParamsimError
from paramsim.eval.metrics import task_similarity
from paramsim.features.base import Context
from paramsim.use._common import (
    Similarity,
    figure_png,
    fit_excluding,
    pyplot,
    write_json,
)

TOP_PAIRS = 5


def classical_mds(D: np.ndarray, dims: int = 2) -> np.ndarray:
    """Coordinates whose Euclidean distances best match D (Torgerson's classical MDS)."""
    D = np.asarray(D, dtype=np.float64)
    n = len(D)
    if n == 1:
        return np.zeros((1, dims))
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D**2) @ J
    vals, vecs = np.linalg.eigh(0.5 * (B + B.T))
    order = np.argsort(vals)[::-1][:dims]
    coords = vecs[:, order] * np.sqrt(np.clip(vals[order], 0, None))
    # fix each axis's sign so the picture does not flip between runs or machines
    signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1, signs)
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    return coords


def _linkage(D: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    return linkage(squareform(np.clip(D, 0, None), checks=False), method="average")


def _pairs(sim: np.ndarray, names: Sequence[str], largest: bool) -> list[dict[str, Any]]:
    iu = np.triu_indices(len(names), k=1)
    vals = sim[iu]
    ok = np.flatnonzero(np.isfinite(vals))
    order = ok[np.argsort(-vals[ok] if largest else vals[ok], kind="stable")][:TOP_PAIRS]
    return [
        {"tasks": [names[iu[0][i]], names[iu[1][i]]], "similarity": float(vals[i])} for i in order
    ]


def relate(zoo, sim: Similarity, seed: int = 0, networks: Sequence | None = None) -> dict[str, Any]:
    """The relation results of one similarity method on a zoo (see the module docstring)."""
    from scipy.cluster.hierarchy import cophenet
    from scipy.stats import spearmanr

    started = time.perf_counter()
    tasks = list(zoo.tasks)
    names = [t.name for t in tasks]
    labels = np.asarray(zoo.task_ids, dtype=np.int64)
    if len(tasks) < 3:
        raise ParamsimError(f"a relation map needs at least 3 tasks; {zoo.path} has {len(tasks)}")
    nets = list(networks) if networks is not None else zoo.networks()
    model_tasks = [tasks[int(t)] for t in labels]
    note = sim.source
    if sim.learned and sim.seen_tasks is None:
        sim = fit_excluding(sim, nets, model_tasks, set(), seed, zoo=zoo.path)
        note = f"fitted on all {len(tasks)} tasks of the zoo (the map shows seen tasks)"
    elif sim.learned and sim.seen_tasks:
        seen = len({canonical_name(t) for t in tasks} & set(sim.seen_tasks))
        note = f"{sim.source}; it trained on {seen} of the {len(tasks)} tasks"
    needs_data = not getattr(sim.method, "weights_only", True)
    context = Context(dataset=zoo.dataset() if needs_data else None, seed=seed)
    t0 = time.perf_counter()
    S = np.asarray(sim.method.similarity(nets, context), dtype=np.float64)
    sim_seconds = time.perf_counter() - t0
    S = 0.5 * (S + S.T)

    present, T = task_similarity(S, labels, np.arange(len(nets)))
    if len(present) != len(tasks):
        raise ParamsimError("every task of the zoo needs at least one model")
    truth = relation_matrix(tasks).numpy().astype(np.float64)
    iu = np.triu_indices(len(tasks), k=1)
    x, y = T[iu], truth[iu]
    ok = np.isfinite(x)
    rho = (
        float(spearmanr(x[ok], y[ok]).statistic)
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0
        else float("nan")
    )
    # mean similarity by number of shared classes: the picture in three numbers
    by_shared = {str(int(s)): float(np.nanmean(x[y == s])) for s in np.unique(y) if np.any(y == s)}

    D_task = 1.0 - np.nan_to_num(T, nan=np.nanmin(T))
    D_truth = 2.0 - truth
    np.fill_diagonal(D_truth, 0.0)
    link = _linkage(D_task)
    link_truth = _linkage(D_truth)
    from scipy.spatial.distance import squareform

    coph = float(np.corrcoef(cophenet(link), squareform(D_truth, checks=False))[0, 1])

    D_model = np.clip(1.0 - np.nan_to_num(S, nan=-1.0), 0, None)
    np.fill_diagonal(D_model, 0.0)
    coords = classical_mds(D_model)
    coords_truth = classical_mds(D_truth)

    return {
        "zoo": str(getattr(zoo, "path", "")),
        "method": sim.name,
        "source": note,
        "seed": seed,
        "n_models": len(nets),
        "tasks": names,
        "task_similarity": T,
        "relation": truth,
        "spearman": rho,
        "mean_similarity_by_shared_classes": by_shared,
        "cophenetic_vs_truth": coph,
        "most_related": _pairs(T, names, largest=True),
        "least_related": _pairs(T, names, largest=False),
        "linkage": link,
        "linkage_truth": link_truth,
        "map": {"x": coords[:, 0], "y": coords[:, 1], "task": labels},
        "map_truth": {"x": coords_truth[:, 0], "y": coords_truth[:, 1]},
        "similarity_seconds": sim_seconds,
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- pictures


def _task_colours(n: int) -> np.ndarray:
    plt = pyplot()
    cmap = plt.get_cmap("hsv")
    return cmap(np.arange(n) / max(n, 1) * 0.92)


def plot_matrices(res: Mapping[str, Any]) -> bytes:
    plt = pyplot()
    names = res["tasks"]
    size = max(4.0, 0.12 * len(names) + 3)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size))
    try:
        for ax, mat, title, cmap in (
            (
                axes[0],
                np.asarray(res["task_similarity"], float),
                f"{res['method']}: mean similarity",
                "viridis",
            ),
            (axes[1], np.asarray(res["relation"], float), "ground truth: shared classes", "Greys"),
        ):
            im = ax.imshow(mat, cmap=cmap)
            ax.set_title(title)
            step = max(1, len(names) // 45)
            ax.set_xticks(range(0, len(names), step))
            ax.set_yticks(range(0, len(names), step))
            ax.set_xticklabels(names[::step], rotation=90, fontsize=5)
            ax.set_yticklabels(names[::step], fontsize=5)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"task relation, Spearman rho with the truth = {res['spearman']:.3f}")
        return figure_png(fig)
    finally:
        plt.close(fig)


def plot_dendrograms(res: Mapping[str, Any]) -> bytes:
    from scipy.cluster.hierarchy import dendrogram

    plt = pyplot()
    names = res["tasks"]
    height = max(4.0, 0.13 * len(names) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, height))
    try:
        for ax, link, title in (
            (axes[0], res["linkage"], f"{res['method']}: average linkage on 1 - similarity"),
            (axes[1], res["linkage_truth"], "ground truth: 2 - shared classes"),
        ):
            dendrogram(
                np.asarray(link, float),
                labels=names,
                orientation="left",
                ax=ax,
                leaf_font_size=6,
                color_threshold=0,
                above_threshold_color="#555555",
            )
            ax.set_title(title, fontsize=9)
        fig.suptitle(
            f"cophenetic correlation of the {res['method']} tree with the truth: "
            f"{res['cophenetic_vs_truth']:.3f}",
            fontsize=10,
        )
        return figure_png(fig)
    finally:
        plt.close(fig)


def plot_map(res: Mapping[str, Any]) -> bytes:
    plt = pyplot()
    names = res["tasks"]
    colours = _task_colours(len(names))
    task = np.asarray(res["map"]["task"], dtype=np.int64)
    x, y = np.asarray(res["map"]["x"], float), np.asarray(res["map"]["y"], float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    try:
        ax = axes[0]
        ax.scatter(x, y, c=colours[task], s=10, alpha=0.8, linewidths=0)
        for t, name in enumerate(names):
            sel = task == t
            if sel.any():
                ax.annotate(name, (x[sel].mean(), y[sel].mean()), fontsize=5, ha="center")
        ax.set_title(f"{res['method']}: {len(x)} models, MDS of 1 - similarity", fontsize=9)
        ax = axes[1]
        tx, ty = np.asarray(res["map_truth"]["x"], float), np.asarray(res["map_truth"]["y"], float)
        ax.scatter(tx, ty, c=colours, s=40)
        for t, name in enumerate(names):
            ax.annotate(name, (tx[t], ty[t]), fontsize=5, ha="center", va="bottom")
        ax.set_title("ground truth: tasks, MDS of 2 - shared classes", fontsize=9)
        for a in axes:
            a.set_xticks([])
            a.set_yticks([])
        return figure_png(fig)
    finally:
        plt.close(fig)


def write_relation(
    res: Mapping[str, Any], out_dir: str | Path, key: str | None = None
) -> dict[str, Path]:
    """relation.json and three PNGs, each rendered first and then written atomically."""
    from paramsim.atomic import atomic_write

    out = Path(out_dir)
    pngs = {
        "relation_matrix.png": plot_matrices(res),
        "dendrogram.png": plot_dendrograms(res),
        "map.png": plot_map(res),
    }
    doc = dict(res)
    if key is not None:
        doc["settings_key"] = key
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "relation.json", doc)
    written = {"relation.json": out / "relation.json"}
    for name, data in pngs.items():
        atomic_write(out / name, data)
        written[name] = out / name
    return written


def summary_lines(res: Mapping[str, Any]) -> list[str]:
    """What the CLI prints: rho with the truth and the most and least related task pairs."""
    shared = ", ".join(
        f"{k} shared: {v:.3f}" for k, v in res["mean_similarity_by_shared_classes"].items()
    )
    lines = [
        f"{res['method']} ({res['source']}): Spearman rho with shared classes "
        f"{res['spearman']:.3f} over {len(res['tasks']) * (len(res['tasks']) - 1) // 2} task "
        f"pairs; mean task similarity by shared classes: {shared}",
        "most related:  "
        + "; ".join(f"{'/'.join(p['tasks'])} {p['similarity']:.3f}" for p in res["most_related"]),
        "least related: "
        + "; ".join(f"{'/'.join(p['tasks'])} {p['similarity']:.3f}" for p in res["least_related"]),
    ]
    return lines
