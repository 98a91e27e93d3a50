"""`evaluate_zoo`: the evaluation loop on a zoo directory (or object): its models, its
tasks, its data set when a method needs one."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.eval.extra import ExtraModels
from paramsim.eval.protocol import ProgressFn, evaluate
from paramsim.eval.splits import index_tasks, make_class_splits, make_splits
from paramsim.features.base import Context, Method


def evaluate_zoo(
    zoo: Any,
    methods: Mapping[str, Method] | Sequence[Method],
    n_splits: int = 5,
    seed: int = 0,
    *,
    skipped: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    extra: ExtraModels | str | Path | None = None,
    holdout: str = "tasks",
    progress: ProgressFn | None = None,
    split_options: Mapping[str, Any] | None = None,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """`evaluate` on a zoo (object or directory) with the given methods.

    `skipped` names methods the caller could not make (e.g. a missing optional package) and
    why; they join the report's skipped rows. `order` is the row order of the report
    (default: the methods, then the skipped ones). `extra` (models or a zoo directory, e.g.
    a group-task zoo) trains learned methods too, under the split's leak guard
    (`paramsim.eval.extra`). `holdout="classes"` holds out classes instead of tasks
    (`make_class_splits`; `split_options` may then name `n_classes_out`).
    """
    if n_splits < 1:
        raise ParamsimError(f"--splits must be at least 1, got {n_splits}")
    named = dict(methods) if isinstance(methods, Mapping) else {m.name: m for m in methods}
    skipped = dict(skipped or {})
    if isinstance(zoo, (str, Path)):
        from paramsim.zoo import open_zoo

        zoo_name = Path(zoo).name
        zoo = open_zoo(zoo)
    else:
        zoo_name = str(getattr(zoo, "path", getattr(zoo, "name", "zoo")))
        zoo_name = Path(zoo_name).name or zoo_name
    model_tasks = [zoo.tasks[int(t)] for t in np.asarray(zoo.task_ids, dtype=np.int64)]
    task_ids, _ = index_tasks(model_tasks)  # "0 vs 1" and "1 vs 0" on one side of a split
    options = dict(split_options or {})
    if holdout == "tasks":
        splits = make_splits(task_ids, n_splits=n_splits, seed=seed, **options)
    elif holdout == "classes":
        splits = make_class_splits(model_tasks, n_splits=n_splits, seed=seed, **options)
    else:
        raise ParamsimError(f"--holdout must be tasks or classes, got {holdout!r}")

    needs_data = any(not getattr(m, "weights_only", True) for m in named.values())
    context = Context(
        dataset=zoo.dataset() if needs_data else None, seed=seed, zoo=getattr(zoo, "path", None)
    )
    t0 = time.perf_counter()
    networks = zoo.networks()
    load_seconds = time.perf_counter() - t0
    if progress:
        for name in skipped:
            for i in range(n_splits):
                progress(name, i)
    if isinstance(extra, (str, Path)):
        extra = extra_from_zoo(extra)
    results = evaluate(
        networks,
        model_tasks,
        named,
        splits,
        context,
        zoo_name=zoo_name,
        progress=progress,
        extra=extra,
        **evaluate_options,
    )
    results["skipped"] = {**skipped, **results["skipped"]}
    results["load_seconds"] = load_seconds
    rows = list(order) if order is not None else [*named, *skipped]
    rank = {n: i for i, n in enumerate(rows)}
    results["method_order"] = sorted(
        list(results["methods"]) + list(results["skipped"]), key=lambda n: rank.get(n, 1e9)
    )
    return results


def extra_from_zoo(paths: str | Path | Sequence[str | Path]) -> ExtraModels:
    """Every model of the zoo(s) at `paths` as extra training models."""
    from paramsim.zoo import open_zoo

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    networks, tasks = [], []
    for path in paths:
        z = open_zoo(path)
        networks += z.networks()
        tasks += [z.tasks[int(t)] for t in z.task_ids]
    source = ", ".join(str(Path(p).resolve()) for p in paths)
    return ExtraModels(networks, tasks, source=source)
