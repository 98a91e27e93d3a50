"""Build a zoo from a recipe as independent shards, resuming where a killed build stopped.

A shard is a list of model plans trained together; it depends on nothing but its plans and
the dataset, so shards could run on different machines and be merged by their rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from paramsim.data import Dataset, load_dataset
from paramsim.errors import ParamsimError
from paramsim.zoo.recipes import Recipe
from paramsim.zoo.store import (
    atomic_save_tensors,
    connect,
    file_sha256,
    tensors_sha256,
)
from paramsim.zoo.trainer import ModelPlan, TaskData, accuracies, train_stacked


@dataclass(frozen=True)
class Shard:
    name: str
    plans: tuple[ModelPlan, ...]


def family_key(plan: ModelPlan) -> tuple:
    """Plans with equal keys can be trained together (narrower ones padded)."""
    a = plan.arch
    return (a.kind, len(a.hidden), a.batchnorm, a.pool_after, plan.batch_size, plan.optimizer)


def plan_shards(plans: list[ModelPlan], shard_size: int) -> list[Shard]:
    """Group plans by trainable family, then cut into shards of similar step counts.

    A shard runs until its longest model is done, so grouping models by their number of
    steps saves the work of models that have already stopped. Each model trains exactly
    as it would alone, so the grouping does not change any result.
    """
    if shard_size < 1:
        raise ParamsimError(f"shard size must be at least 1, not {shard_size}")
    families: dict[tuple, list[ModelPlan]] = {}
    for p in plans:
        families.setdefault(family_key(p), []).append(p)
    shards = []
    for fam in families.values():
        fam = sorted(fam, key=lambda p: (p.steps, p.model_id))
        for start in range(0, len(fam), shard_size):
            chunk = tuple(fam[start : start + shard_size])
            shards.append(Shard(f"shard-{len(shards):05d}.safetensors", chunk))
    return shards


def train_shard(
    shard: Shard,
    recipe: Recipe,
    dataset: Dataset,
    seed: int,
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
):
    """Train a shard; retrain models below the recipe's test accuracy with fresh draws.

    Returns per-model (plan, state_dict, train_acc, test_acc, retrains) in plan order.
    """
    plans = list(shard.plans)
    data = TaskData.build(dataset, {p.task_id: p.task for p in plans})
    results: dict[int, tuple] = {}
    todo = plans
    attempt = 0
    while todo:
        stack = train_stacked(todo, data, device, on_step if attempt == 0 else None)
        tr, te = accuracies(stack, data, "train"), accuracies(stack, data, "test")
        retry = []
        for i, p in enumerate(todo):
            results[p.model_id] = (p, stack.state_dict(i), float(tr[i]), float(te[i]), attempt)
            if te[i] < recipe.min_test_acc and attempt < recipe.max_retrains:
                retry.append(p)
        attempt += 1
        todo = [
            recipe.draw(p.model_id, p.task_id, p.task, p.arch.input_shape, seed, attempt)
            for p in retry
        ]
        # A retrain must stay in the shard's family so it trains with the others.
        todo = [
            new if family_key(new) == family_key(old) else replace(new, arch=old.arch)
            for new, old in zip(todo, retry, strict=True)
        ]
    return [results[p.model_id] for p in plans]


def build_zoo(
    recipe: Recipe,
    out: str | Path,
    seed: int = 0,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build (or resume) the zoo in `out`. Returns the directory."""
    out = Path(out)
    dataset = load_dataset(recipe.dataset, data_dir)
    tasks, plans = recipe.plan(dataset.n_classes, dataset.input_shape, seed)
    if not plans:
        raise ParamsimError("the recipe plans no models; check --tasks and --models-per-task")
    shards = plan_shards(plans, recipe.shard_size)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "recipe": recipe.name,
        "recipe_settings": json.loads(json.dumps(recipe.__dict__, default=list)),
        "dataset": recipe.dataset,
        "data_dir": str(data_dir) if data_dir else None,
        "seed": seed,
        "planned_models": len(plans),
        "format": 1,
    }
    conn = connect(out)
    try:
        _write_meta(conn, out, meta, tasks)
        done = {name for (name,) in conn.execute("SELECT name FROM shards")}
        remaining = [
            s for s in shards if s.name not in done or not (out / "shards" / s.name).is_file()
        ]
        bar = _progress(sum(max(p.steps for p in s.plans) for s in remaining), progress, recipe)
        for shard in remaining:
            start = time.perf_counter()
            results = train_shard(shard, recipe, dataset, seed, device, lambda _t: bar.update(1))
            tensors = {f"{plan.model_id}/{k}": v for plan, sd, *_ in results for k, v in sd.items()}
            path = out / "shards" / shard.name
            atomic_save_tensors(tensors, path, metadata={"zoo_seed": str(seed)})
            digest = file_sha256(path)
            with conn:  # one transaction: the shard exists once its rows are committed
                conn.execute("DELETE FROM models WHERE shard = ?", (shard.name,))
                conn.execute(
                    "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)",
                    (shard.name, digest, len(results), time.perf_counter() - start),
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            p.model_id,
                            p.task_id,
                            json.dumps(p.task.sides),
                            p.arch.to_json(),
                            json.dumps(p.settings()),
                            p.seed,
                            retrains,
                            train_acc,
                            test_acc,
                            shard.name,
                            tensors_sha256(sd),
                        )
                        for p, sd, train_acc, test_acc, retrains in results
                    ],
                )
        bar.close()
    finally:
        conn.close()
    return out


def _write_meta(conn, out: Path, meta: dict, tasks) -> None:
    existing = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if existing:
        keys = ("recipe_settings", "dataset", "seed", "planned_models")
        if any(existing.get(k) != meta[k] for k in keys):
            raise ParamsimError(
                f"{out} holds a zoo built with other settings (recipe {existing.get('recipe')}, "
                f"seed {existing.get('seed')}); use another --out or delete it"
            )
        return
    with conn:
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
        )
        conn.executemany(
            "INSERT INTO tasks VALUES (?, ?, ?)",
            [(i, t.name, json.dumps(t.sides)) for i, t in enumerate(tasks)],
        )


def _progress(total: int, enabled: bool, recipe: Recipe):
    from tqdm.auto import tqdm

    # disable=None: tqdm draws only on a terminal, so logs and pipes stay clean
    return tqdm(
        total=total, disable=None if enabled else True, desc=f"zoo {recipe.name}", unit="step"
    )
